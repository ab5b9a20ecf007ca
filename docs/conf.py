"""Sphinx configuration of the byol-wrap documentation site.

Build it from the repository root (warnings are errors, every cross-reference checked):

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -n -b html docs docs/_build/html

Sphinx with the Furo theme and MyST: the tools of the projects our users know (kornia and LightlyTrain build
their sites the same way), the docstrings rendered by autodoc and napoleon, and the pages written in Markdown
that reads the same on GitHub. ``docs/about-these-docs.md`` says more.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # document this checkout, not another installed copy

import byol_wrap  # noqa: E402

project = "byol-wrap"
author = "the byol-wrap authors"
copyright = "the byol-wrap authors, MIT licence"
version = release = byol_wrap.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: heading anchors so that [text](page.md#a-heading) links are checked; ::: fences for admonitions
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# Every internal reference must resolve (-n on the command line does the same).
nitpicky = True
# Names of other projects: no intersphinx (the build needs no network), so their references are not checked.
_EXTERNAL = (r"(torch|torchvision|kornia|timm|numpy|np|PIL|matplotlib|tqdm|sklearn|lightning|accelerate|argparse"
             r"|os|io|pathlib|collections|typing|typing_extensions|types|numbers|random|contextlib|enum|abc"
             r"|warnings|json|_io)")
nitpick_ignore_regex = [
    (r"py:.*", _EXTERNAL + r"(\..*)?"),
    (r"py:.*", r"(Tensor|Module|Parameter|Optimizer|LRScheduler|Dataset|DataLoader|Generator|Path|PathLike"
               r"|ndarray|device|dtype|nn\..*)"),
]
# Pages that other work is writing: listed in index.md's navigation, left out of it until their file exists, so
# the site builds before and after they land (no stub pages to merge over).
PENDING_PAGES = ("domain-imagery", "domain-imagery-command", "cache-and-loader", "evaluate-and-export",
                 "security-and-reliability", "threads-and-moving-average")

autosummary_generate = True
# One home per object: a package documents what it defines, not what it re-exports from its modules.
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"byol-wrap {release}"
html_static_path: list = []
html_theme_options = {
    "source_directory": "docs/",
    "navigation_with_keys": True,
}
pygments_style = "sphinx"
pygments_dark_style = "monokai"


def _import_object(name):
    """The Python object a dotted name stands for, or None."""
    import importlib

    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attribute in parts[cut:]:
                value = getattr(value, attribute)
        except AttributeError:
            return None
        return value
    return None


def _home(value):
    """``module.qualname`` of the place an object is defined (a module's own name for a module)."""
    import types

    if value is None:
        return None
    if isinstance(value, types.ModuleType):
        return value.__name__
    owner, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    return f"{owner}.{qualname}" if owner and qualname else None


def _resolve_by_python_name(app, env, node, contnode):
    """Resolve a docstring's short or lazy reference (``BYOL``, ``byol_wrap.pretrain``) to its documented home.

    A name is looked up where the docstring stands (its module and class), then as an absolute name; the object
    found is linked at the place it is documented (``module.qualname``). An object that exists but has no entry
    of its own (a module constant, a private helper) is shown as code without a link. A name that is not there
    at all stays a warning, which fails the build.
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    domain = env.get_domain("py")
    objects = domain.objects
    candidates = []
    module, cls = node.get("py:module"), node.get("py:class")
    if module:
        if cls:
            candidates.append(f"{module}.{cls}.{target}")
        candidates.append(f"{module}.{target}")
        if cls:  # a class documented where it is re-exported: look where it is defined too
            owner = _import_object(f"{module}.{cls}")
            if getattr(owner, "__module__", None):
                candidates += [f"{owner.__module__}.{owner.__qualname__}.{target}", f"{owner.__module__}.{target}"]
    candidates.append(target)
    found = None
    for name in candidates:
        found = _import_object(name)
        if found is not None:
            break
    if found is None:
        # a name documented in a sibling module (``load_digits`` from ``data.sources``): the one entry ending so
        # (a package that re-exports it documents it too: then the defining module's entry wins)
        matches = [name for name in objects if name.endswith("." + target)]
        homes = {_home(_import_object(name)) for name in matches} & set(objects)
        if len(matches) == 1 or len(homes) == 1:
            home = matches[0] if len(matches) == 1 else homes.pop()
            entry = objects[home]
            from sphinx.util.nodes import make_refnode

            return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, home)
        # a name some module of the package defines without documenting it (an exception without a docstring)
        import sys

        if any(getattr(module, target, None) is not None for name, module in list(sys.modules.items())
               if name.startswith("byol_wrap.") and module is not None and "." not in target):
            return contnode
        return None
    home = _home(found)
    if home and home in objects:
        entry = objects[home]
        from sphinx.util.nodes import make_refnode

        return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, home)
    return contnode


_LISTING_SECTIONS = ("API:", "Specs:")


def _listing_sections_as_code(app, what, name, obj, options, lines):
    """Module docstrings list their API in aligned columns under ``API:`` / ``Specs:``: show them as code."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip() in _LISTING_SECTIONS and i + 1 < len(lines) and lines[i + 1].startswith((" ", "\t")):
            lines[i] = lines[i].rstrip() + ":"
            lines.insert(i + 1, "")


def _looks_like_prose(text):
    """``"The report (the JSON's content)"`` is prose; ``"Tuple[int, int] | None"`` is a type."""
    import re

    previous = None
    while previous != text:  # drop bracketed parts, innermost first
        previous, text = text, re.sub(r"\[[^\[\]]*\]", "", text)
    return bool(re.search(r"\s", text.replace(" | ", "|").strip()))


def _prose_stays_prose(app, what, name, obj, options, lines):
    """napoleon reads ``words: more words`` as ``type: description``; put its split back where the "type" is prose.

    A constant's ``#:`` comment or a property's first line ("The channel count of the decoded images (None
    without a pixel format: RGB)") and a Returns line ("The report (the JSON's content): ...") are prose; the
    types come from the annotations.
    """
    for i, line in enumerate(lines):
        for field, target in ((":type: ", None), (":rtype: ", ":returns: ")):
            if not line.startswith(field):
                continue
            head = line[len(field):]
            if target is None and what not in ("data", "attribute", "property"):
                continue
            if target is not None and not _looks_like_prose(head):
                continue
            del lines[i]
            while lines and not lines[-1].strip():
                lines.pop()
            if target is None:
                first = next((k for k, text in enumerate(lines) if text.strip()), None)
                if first is None:
                    lines.append(head)
                else:
                    lines[first] = f"{head}: {lines[first].lstrip()}"
            else:
                k = next((k for k, text in enumerate(lines) if text.startswith(target)), None)
                if k is None:
                    lines.append(f"{target}{head}")
                else:
                    lines[k] = f"{target}{head}: {lines[k][len(target):]}"
            return _prose_stays_prose(app, what, name, obj, options, lines)


def _cli_help_directive():
    """``{cli-help} pretrain``: the subcommand's ``--help``, as the installed parser prints it (never stale)."""
    from docutils import nodes
    from sphinx.util.docutils import SphinxDirective

    class CliHelp(SphinxDirective):
        required_arguments = 1

        def run(self):
            from byol_wrap.job.cli import build_parser

            saved = os.environ.get("COLUMNS")
            os.environ["COLUMNS"] = "90"  # argparse wraps at the terminal's width; the page shows about 88
            try:
                parser = build_parser()
                if self.arguments[0] == "byol-wrap":
                    text = parser.format_help()
                else:
                    commands = next(a for a in parser._actions if a.dest == "command")
                    text = commands.choices[self.arguments[0]].format_help()
            finally:
                if saved is None:
                    del os.environ["COLUMNS"]
                else:
                    os.environ["COLUMNS"] = saved
            block = nodes.literal_block(text, text)
            block["language"] = "text"
            return [block]

    return CliHelp


def _drop_pending_pages(app, docname, source):
    if docname != "index":
        return
    missing = {name for name in PENDING_PAGES if not os.path.exists(os.path.join(app.srcdir, name + ".md"))}
    source[0] = "\n".join(line for line in source[0].splitlines() if line.strip() not in missing) + "\n"


def _always_reread_index(app, env, added, changed, removed):
    return ["index"]  # its navigation depends on which pending pages exist


def setup(app):
    app.connect("source-read", _drop_pending_pages)
    app.connect("env-get-outdated", _always_reread_index)
    app.add_directive("cli-help", _cli_help_directive())
    app.connect("missing-reference", _resolve_by_python_name)
    app.connect("autodoc-process-docstring", _listing_sections_as_code, priority=400)  # before napoleon
    app.connect("autodoc-process-docstring", _prose_stays_prose, priority=600)  # after napoleon
