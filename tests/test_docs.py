"""The documentation's promises: every code block of the README and of docs/ runs, the README is the landing page.

Each fenced ``python`` or ``bash`` block is a test, run in the order of its page: one namespace and one temporary
working folder per page, so a page's blocks build on each other as a reader's session would. A block that starts
with ``>>>`` runs as a doctest (its printed output must match). An HTML comment right above a block, invisible on
the rendered page, says what the block needs (docs/about-these-docs.md describes it)::

    <!-- test
    setup: make_images("photos", 8)       Python run first, in the page's namespace and folder
    replace: --epochs 20 => --steps 2      the same command, smaller, to keep the suite fast
    skip-commands: pip                     commands of a bash block that are left out (installs)
    skip: needs a CUDA GPU                 only compiled (python) or parsed with bash -n (bash)
    -->

``byol-wrap`` commands run in this process through :func:`byol_wrap.job.cli.main`; other commands in a
subprocess. A built site (``docs/_build/html``, which ``.ci/run`` builds first) is checked for its pages,
anchors and images.
"""
from __future__ import annotations

import doctest
import io
import os
import re
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUNNABLE = ("python", "py", "pycon", "bash", "sh", "shell")
README_LIMIT = 12 * 1024


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    marker: Dict[str, List[str]] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def markdown_pages() -> List[Path]:
    pages = [ROOT / "README.md"]
    for path in sorted(DOCS.rglob("*.md")):
        relative = path.relative_to(DOCS).parts
        if relative[0] in ("_build",) or relative[:2] == ("api", "generated"):
            continue
        pages.append(path)
    return pages


def parse_marker(comment: str) -> Dict[str, List[str]]:
    """``<!-- test ... -->`` -> {key: [values]}; a key without a value gets ``[""]``."""
    body = comment.strip()[len("<!--"):-len("-->")].strip()
    assert body.startswith("test"), comment
    body = body[len("test"):]
    marker: Dict[str, List[str]] = {}
    for raw in body.strip().splitlines():
        line = raw.strip()
        if not line:
            continue
        key, _, value = line.partition(":")
        if key.strip() not in ("setup", "replace", "skip", "skip-commands"):
            raise ValueError(f"unknown key {key.strip()!r} in a test marker: {comment!r}")
        marker.setdefault(key.strip(), []).append(value.strip())
    return marker


def code_blocks(path: Path) -> List[Block]:
    """The fenced blocks of a Markdown file, with the test marker just above each (if any)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: List[Block] = []
    i = 0
    pending: Optional[Tuple[int, Dict[str, List[str]]]] = None  # (line after the comment, marker)
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w{}-]*)", line)
        if fence:
            indent, ticks, language = fence.groups()
            start = i
            body: List[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(ticks):
                body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
                i += 1
            marker = pending[1] if pending is not None and pending[0] == start else {}
            blocks.append(Block(path, start + 1, language.lower(), "\n".join(body) + "\n", marker))
            pending = None
            i += 1
            continue
        if line.strip().startswith("<!-- test"):
            comment = [line]
            while not comment[-1].rstrip().endswith("-->"):
                i += 1
                comment.append(lines[i])
            pending = (i + 1, parse_marker("\n".join(comment)))
        i += 1
    return blocks


def runnable_blocks() -> List[Block]:
    return [block for page in markdown_pages() for block in code_blocks(page) if block.language in RUNNABLE]


# --- what the pages' setup lines may call ---------------------------------------------------------------------

def make_images(folder: str, count: int = 8, size: int = 40, seed: int = 0, kind: str = "jpg",
                channels: int = 3) -> str:
    """``count`` small random image files in ``folder`` (created).

    ``kind``: ``"jpg"`` (RGB JPEG), ``"png16"`` (16-bit grayscale PNG) or ``"tif"`` (uint16 TIFF with
    ``channels`` bands, channels last).
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for k in range(count):
        shape = (size, size + k % 3)
        name = os.path.join(folder, f"image_{k:03d}")
        if kind == "jpg":
            Image.fromarray(rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)).save(name + ".jpg", quality=90)
        elif kind == "png16":
            Image.fromarray(rng.integers(0, 65536, size=shape, dtype=np.uint16)).save(name + ".png")
        elif kind == "tif":
            import tifffile

            tifffile.imwrite(name + ".tif", rng.integers(0, 65536, size=(*shape, channels), dtype=np.uint16))
        else:
            raise ValueError(f"kind must be 'jpg', 'png16' or 'tif', got {kind!r}")
    return folder


def make_labelled(folder: str, classes: int = 2, per_class: int = 4, size: int = 40) -> str:
    """A labelled folder: one subfolder of JPEG files per class."""
    for c in range(classes):
        make_images(os.path.join(folder, f"class_{c}"), per_class, size, seed=c + 1)
    return folder


def make_run(out: str = "runs/digits", steps: int = 3) -> str:
    """A finished, tiny run of the set-up command in ``out`` (for pages that export, evaluate or embed one)."""
    from byol_wrap.job.cli import main

    code = main(["pretrain", "--out", out, "--steps", str(steps), "--batch-size", "32", "--workers", "0",
                 "--no-progress"])
    assert code == 0, f"the tiny run into {out} exited with {code}"
    return out


# --- running a page ---------------------------------------------------------------------------------------------

def apply_replacements(block: Block) -> str:
    text = block.text
    for rule in block.marker.get("replace", []):
        old, sep, new = rule.partition(" => ")
        if not sep:
            raise ValueError(f"{block.where}: replace needs 'OLD => NEW', got {rule!r}")
        if old not in text:
            raise AssertionError(f"{block.where}: the marker replaces {old!r}, which the block no longer contains")
        text = text.replace(old, new)
    return text


def shell_commands(text: str) -> List[List[str]]:
    """A bash block as argv lists: continuation lines joined, comments dropped, ``&&`` chains split."""
    joined = re.sub(r"\\\n", " ", text)
    commands: List[List[str]] = []
    for line in joined.splitlines():
        tokens = shlex.split(line, comments=True)
        if any(token in ("|", ";", ">", ">>", "<", "||") for token in tokens):
            raise ValueError(f"unsupported shell syntax in {line!r}: keep documented commands to && chains")
        current: List[str] = []
        for token in tokens + ["&&"]:
            if token == "&&":
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
    return commands


class Page:
    """One page's namespace and working folder; blocks run in order, each once."""

    def __init__(self, path: Path, folder: Path) -> None:
        self.blocks = [b for b in code_blocks(path) if b.language in RUNNABLE]
        self.folder = folder
        self.namespace: Dict[str, Any] = {"__name__": "__docs__", "torch": torch, "make_images": make_images,
                                          "make_labelled": make_labelled, "make_run": make_run}
        self.done: Dict[int, Optional[BaseException]] = {}

    def run_until(self, index: int) -> None:
        for k in range(index + 1):
            if k not in self.done:
                try:
                    self.run(self.blocks[k])
                    self.done[k] = None
                except BaseException as error:  # noqa: B036 - recorded, raised for the block's own test
                    self.done[k] = error
        error = self.done[index]
        if error is not None:
            raise error

    def run(self, block: Block) -> None:
        previous = os.getcwd()
        os.chdir(self.folder)
        try:
            torch.manual_seed(0)
            for line in block.marker.get("setup", []):
                exec(compile(line, f"{block.where} (setup)", "exec"), self.namespace)
            text = apply_replacements(block)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if block.language in ("python", "py", "pycon"):
                    self.run_python(block, text)
                else:
                    self.run_bash(block, text)
            # an example shows clean use: no warning of byol-wrap's own (deprecated paths, misuse, ranges)
            ours = [w for w in caught if w.category.__module__.startswith("byol_wrap")
                    or "byol_wrap" in str(w.message).split(" ")[0] or os.sep + "byol_wrap" + os.sep in w.filename]
            assert not ours, f"{block.where}: the example warns: " + "; ".join(
                f"{w.category.__name__}: {w.message}" for w in ours)
        finally:
            os.chdir(previous)

    def run_python(self, block: Block, text: str) -> None:
        if text.lstrip().startswith(">>>"):
            test = doctest.DocTestParser().get_doctest(text, self.namespace, block.where, str(block.path), block.line)
            runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
            report = io.StringIO()
            if "skip" in block.marker:
                for example in test.examples:
                    compile(example.source, block.where, "exec")
                return
            runner.run(test, out=report.write)
            assert runner.failures == 0, f"{block.where}: the doctest's output differs:\n{report.getvalue()}"
            return
        code = compile(text, block.where, "exec")
        if "skip" not in block.marker:
            exec(code, self.namespace)

    def run_bash(self, block: Block, text: str) -> None:
        if "skip" in block.marker:
            parsed = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
            assert parsed.returncode == 0, f"{block.where}: bash -n: {parsed.stderr}"
            return
        skipped = set(" ".join(block.marker.get("skip-commands", [])).split())
        for argv in shell_commands(text):
            env = dict(os.environ)
            while argv and re.match(r"^[A-Za-z_]\w*=", argv[0]):
                name, _, value = argv.pop(0).partition("=")
                env[name] = value
            if not argv or argv[0] in skipped:
                continue
            if argv[0] == "pip" or argv[:3] == ["python", "-m", "pip"]:
                raise AssertionError(f"{block.where}: installs packages; mark the block (skip-commands: pip)")
            if argv[0] == "byol-wrap" or argv[:3] == ["python", "-m", "byol_wrap"]:
                from byol_wrap.job.cli import main

                arguments = argv[1:] if argv[0] == "byol-wrap" else argv[3:]
                code = main(arguments)
                assert code == 0, f"{block.where}: {' '.join(argv)} exited with {code}"
                continue
            if argv[0] == "python":
                argv[0] = sys.executable
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, (f"{block.where}: {' '.join(argv)} exited with {done.returncode}:\n"
                                          f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


_PAGES: Dict[Path, Page] = {}


@pytest.fixture(scope="session")
def pages_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docs_examples")


BLOCKS = runnable_blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_documented_example_runs(block: Block, pages_folder: Path) -> None:
    page = _PAGES.get(block.path)
    if page is None:
        folder = pages_folder / str(block.path.relative_to(ROOT)).replace(os.sep, "_")
        folder.mkdir()
        page = _PAGES[block.path] = Page(block.path, folder)
    index = next(k for k, b in enumerate(page.blocks) if b.line == block.line)
    page.run_until(index)


# --- the README as the landing page -----------------------------------------------------------------------------

def readme_bash_blocks() -> List[Block]:
    return [b for b in code_blocks(ROOT / "README.md") if b.language == "bash"]


def test_readme_is_short() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes, more than {README_LIMIT}: move paragraphs to docs/"


def test_readme_setup_commands_come_first_and_ci_runs_the_test_command() -> None:
    first, second = (b.text.strip() for b in readme_bash_blocks()[:2])
    assert first.endswith("byol-wrap pretrain --out runs/digits") and 'pip install -e ".[train]"' in first, first
    assert second.endswith("python -m pytest -q") and 'pip install -e ".[test]"' in second, second
    test_command = second.split("&&")[-1].strip()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci, f".ci/run must run the README's test command {test_command!r} verbatim"
    assert any(line.startswith("sphinx-build -W") for line in ci), ".ci/run must build the docs with -W"


def test_readme_links_into_the_site_resolve() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(((?!https?:|#)[^)\s]+)\)", text)
    assert any(t.startswith("docs/") for t in targets), "the README links into the site"
    for target in targets:
        path, _, anchor = target.partition("#")
        assert (ROOT / path).exists(), f"README links to {path}, which does not exist"
        if anchor and path.endswith(".md"):
            headings = re.findall(r"^#{1,3} (.+)$", (ROOT / path).read_text(encoding="utf-8"), flags=re.M)
            slugs = {slug(h) for h in headings}
            assert anchor in slugs, f"README links to {target}: no such heading (have {sorted(slugs)})"


def slug(heading: str) -> str:
    """GitHub's and MyST's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


# --- the built site ---------------------------------------------------------------------------------------------

HTML = DOCS / "_build" / "html"
SITE_PAGES = ["index", "get-started", "pretrain", "library", "backbones", "channels", "scaling-out",
              "checks-and-resume", "migrating", "defaults", "recipes", "benchmarks", "dependencies", "cli",
              "about-these-docs", "api/index", "changelog"]


@pytest.mark.skipif(not (HTML / "index.html").exists(), reason="the site is not built (.ci/run builds it first)")
def test_built_site_has_pages_navigation_code_tables_and_images() -> None:
    index = (HTML / "index.html").read_text(encoding="utf-8")
    for page in SITE_PAGES:
        html = HTML / f"{page}.html"
        assert html.exists(), f"the built site lacks {page}.html"
        if page != "index":
            assert f'href="{page}.html"' in index, f"the navigation does not link {page}.html"
    pretrain = (HTML / "pretrain.html").read_text(encoding="utf-8")
    for anchor in ("resume", "export-and-embed", "load-the-encoder-into-timm-or-torchvision"):
        assert f'id="{anchor}"' in pretrain, f"pretrain.html lacks the anchor #{anchor}"
    assert 'class="highlight-bash' in pretrain and 'class="highlight-python' in pretrain
    assert "<table" in pretrain
    for source in re.findall(r'<img[^>]+src="([^"]+)"', pretrain + (HTML / "benchmarks.html").read_text()):
        assert (HTML / source).exists(), f"an image of the site is missing: {source}"
    api = (HTML / "api" / "index.html").read_text(encoding="utf-8")
    assert "byol_wrap.core.byol.BYOL" in api
    assert (HTML / "api" / "generated" / "byol_wrap.core.byol.html").exists()
