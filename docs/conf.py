"""Sphinx configuration of latchwire's reference site (``docs/build.sh`` builds it).

Offline by design: no intersphinx, no theme or asset fetched at build time. The
API pages are autodoc over the importable package (the compiled core carries its
signatures through Cython's ``embedsignature``); the guides include the README's
sections, so the README stays the one copy of that text.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx

import latchwire

project = "latchwire"
author = "latchwire's authors"
copyright = "latchwire's authors"
release = latchwire.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "check_api_coverage.py", "build.sh"]
templates_path: list[str] = []

html_theme = "alabaster"
html_title = f"latchwire {release}"
html_theme_options = {"description": "Locking and netlink for Linux system daemons",
                      "fixed_sidebar": True}
html_static_path: list[str] = []

myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
suppress_warnings: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Every public member is listed, with a docstring or without one
# (check_api_coverage.py then finds a member missing only if autodoc missed it).
autodoc_default_options = {"show-inheritance": True, "undoc-members": True}
# The documented name of a class is its public one (latchwire.FileLock), not
# the module it happens to be defined in.
add_module_names = True

# Nitpicky (-n) without intersphinx: a reference to the standard library cannot
# resolve offline, and private names (a leading underscore anywhere in the
# dotted path, or a module's TypeVar) are deliberately not documented. Anything
# else that does not resolve is an error.
_STDLIB = r"(abc|asyncio|collections\.abc|contextlib|enum|ipaddress|os|pathlib|socket|types|typing)"
nitpick_ignore_regex = [
    ("py:class", _STDLIB + r"\.\w+"),
    ("py:(class|obj)", r"latchwire(\.\w+)*\._\w+(\.\w+)*"),
    ("py:(class|obj)", r"latchwire\.(netlink|objects)\.T"),
]


def _public_bases(app: Sphinx, name: str, obj: object, options: Any,
                  bases: list[type]) -> None:
    """Show a class's public bases: a private base (latchwire._core.FileLock)
    gives way to its own bases, and ``object`` is left out."""
    out: list[type] = []
    todo = list(bases)
    while todo:
        base = todo.pop(0)
        if base is object:
            continue
        if any(part.startswith("_") for part in base.__module__.split(".")) and \
                base.__module__.startswith("latchwire"):
            todo[:0] = list(base.__bases__)
            continue
        out.append(base)
    bases[:] = out


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-bases", _public_bases)
