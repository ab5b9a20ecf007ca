"""The package's two layers (issue 22): the library never imports the job; old module paths still work."""
import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "byol_wrap"


def _imported_modules(path: Path):
    """Every module a file imports, relative imports resolved against its package."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.module or ""


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").rglob("*.py")), ids=lambda p: p.name)
def test_the_library_imports_only_torch_torchvision_kornia_and_itself(path):
    allowed_third_party = {"torch", "torchvision", "kornia", "numpy"}  # numpy: only for RNG state, always with torch
    if path.name == "optim.py":
        allowed_third_party.add("timm")  # LARS, imported inside lars_optimizer only when asked for
    offending = []
    for module in _imported_modules(path):
        top = module.split(".")[0]
        ours_outside_core = top == "byol_wrap" and module != "byol_wrap" and not module.startswith("byol_wrap.core")
        foreign = top != "byol_wrap" and top not in allowed_third_party and top not in sys.stdlib_module_names
        if ours_outside_core or foreign:
            offending.append(module)
    assert not offending, f"{path.name} imports {offending}"


def test_importing_the_library_loads_no_job_module():
    code = ("import sys, byol_wrap, byol_wrap.core.byol, byol_wrap.core.augment; "
            "print([m for m in sys.modules if m.startswith('byol_wrap.job')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


@pytest.mark.parametrize("old, new", [("byol_wrap.augment", "byol_wrap.core.augment"),
                                      ("byol_wrap.ema", "byol_wrap.core.ema"),
                                      ("byol_wrap.data", "byol_wrap.job.data"),
                                      ("byol_wrap.train", "byol_wrap.job.train")])
def test_old_module_paths_import_the_new_module_with_a_deprecation_warning(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_old_from_import_of_a_name_still_works():
    sys.modules.pop("byol_wrap.loss", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from byol_wrap.loss import byol_loss
    from byol_wrap.core.loss import byol_loss as new
    assert byol_loss is new


def test_module_sizes():
    too_long = {}
    for path in PACKAGE.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        limit = 400 if path.parent.name == "data" else 600
        if lines > limit:
            too_long[str(path.relative_to(PACKAGE))] = (lines, limit)
    assert not too_long, too_long


@pytest.mark.parametrize("module", ["run.py", "run_setup.py"])
def test_no_method_of_the_run_is_longer_than_a_screen(module):
    tree = ast.parse((PACKAGE / "job" / module).read_text())
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in ("Run", "RunSetup")]
    assert classes
    long = {f.name: f.end_lineno - f.lineno + 1 for c in classes for f in c.body if isinstance(f, ast.FunctionDef)
            and f.end_lineno - f.lineno + 1 > 60}
    assert not long, long
