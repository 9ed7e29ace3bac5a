"""Sphinx configuration of latchwire's reference site (``docs/build.sh`` builds it).

Offline by design: no intersphinx, no theme or asset fetched at build time. The
API pages are autodoc over the importable package (the compiled core carries its
signatures through Cython's ``embedsignature``); the guides include the README's
sections, so the README stays the one copy of that text.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
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
_STDLIB = (r"(abc|argparse|asyncio|collections\.abc|contextlib|enum|ipaddress|os|pathlib|socket"
           r"|types|typing)")
nitpick_ignore_regex = [
    ("py:class", _STDLIB + r"\.\w+"),
    ("py:(class|obj)", r"latchwire(\.\w+)*\._\w+(\.\w+)*"),
    ("py:(class|obj)", r"latchwire\.(netlink|objects)\.T"),
    ("py:(class|obj)", r"_\w+"),  # the stub's own private names, unqualified
]


def _public_bases(app: Sphinx, name: str, obj: object, options: Any,
                  bases: list[type]) -> None:
    """Show a class's public bases: a private base (latchwire._core.FileLock)
    gives way to its own bases."""
    out: list[type] = []
    todo = list(bases)
    while todo:
        base = todo.pop(0)
        if base in out:
            continue
        if any(part.startswith("_") for part in base.__module__.split(".")) and \
                base.__module__.startswith("latchwire"):
            todo[:0] = list(base.__bases__)
            continue
        out.append(base)
    bases[:] = out or [object]


def _stub_signatures() -> dict[str, tuple[str, str | None]]:
    """Signatures from latchwire/_core.pyi (hand-written, checked by stubtest), by
    qualified name: ``FileLock`` (its __init__), ``FileLock.acquire``, ``parse``.

    Cython's embedsignature gives the compiled functions signatures without the
    stub's types, and the compiled classes none (a slot's docstring cannot
    carry one); the stub is where the typed ones are written."""
    import latchwire._core

    stub = Path(latchwire._core.__file__).with_name("_core.pyi")
    tree = ast.parse(stub.read_text(encoding="utf-8"))
    found: dict[str, tuple[str, str | None]] = {}

    def add(qualname: str, func: ast.FunctionDef, drop_first: bool) -> None:
        if any(ast.unparse(d) in ("overload", "typing.overload") for d in func.decorator_list):
            found[qualname] = ("", None)  # several signatures: keep the docstring's
            return
        args = func.args
        if drop_first:
            args = ast.arguments(posonlyargs=args.posonlyargs[1:], args=args.args[1:],
                                 vararg=args.vararg, kwonlyargs=args.kwonlyargs,
                                 kw_defaults=args.kw_defaults, kwarg=args.kwarg,
                                 defaults=args.defaults) if not args.posonlyargs else \
                ast.arguments(posonlyargs=args.posonlyargs[1:], args=args.args,
                              vararg=args.vararg, kwonlyargs=args.kwonlyargs,
                              kw_defaults=args.kw_defaults, kwarg=args.kwarg,
                              defaults=args.defaults)
        returns = _plain(ast.unparse(func.returns)) if func.returns is not None else None
        found.setdefault(qualname, (_plain(f"({ast.unparse(args)})"), returns))

    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            add(node.name, node, False)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if not isinstance(item, ast.FunctionDef):
                    continue
                decorators = {ast.unparse(d) for d in item.decorator_list}
                if decorators & {"property"} or any(d.endswith(".setter") for d in decorators):
                    continue
                if item.name == "__init__":
                    add(node.name, item, True)
                elif not item.name.startswith("_"):
                    add(f"{node.name}.{item.name}", item, "staticmethod" not in decorators)
    return found


def _plain(text: str) -> str:
    """The stub's ``builtins.str`` (it has a method called str) as plain ``str``."""
    return re.sub(r"\bbuiltins\.", "", text)


_STUB: dict[str, tuple[str, str | None]] = {}


def _stub(key: str) -> tuple[str, str | None]:
    if not _STUB:
        _STUB.update(_stub_signatures())
    return _STUB.get(key, ("", None))


def _core_class(obj: object) -> type | None:
    """The compiled class obj is, or derives from (latchwire.FileLock: _core.FileLock)."""
    return next((c for c in getattr(obj, "__mro__", ()) if c.__module__ == "latchwire._core"),
                None)


_AUTOCLASS = re.compile(r"^(\s*\.\. auto(?:class|exception):: )([\w.]+)[ \t]*$", re.MULTILINE)


def _class_signatures(app: Sphinx, docname: str, source: list[str]) -> None:
    """Give ``.. autoclass:: NAME`` of a compiled class the stub's __init__ signature.

    A compiled class has no signature autodoc can find (Cython cannot put one
    on a slot), and the autodoc-process-signature event cannot add one where
    there is none in every Sphinx version, so the directive gets it written in,
    as if by hand, before the page is parsed."""
    def fill(match: re.Match[str]) -> str:
        current = re.findall(r"^\.\. (?:currentmodule|module):: (\S+)", source[0][:match.start()],
                             re.MULTILINE)
        name = match[2] if "." in match[2] or not current else f"{current[-1]}.{match[2]}"
        module, _, attr = name.rpartition(".")
        try:
            core = _core_class(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            return match[0]
        sig = _stub(core.__qualname__)[0] if core is not None else ""
        return f"{match[1]}{match[2]}{sig}" if sig else match[0]

    source[0] = _AUTOCLASS.sub(fill, source[0])


def _core_signature(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                    signature: str | None, return_annotation: str | None
                    ) -> tuple[str | None, str | None] | None:
    """The stub's typed signature for a compiled function or method (its embedded one,
    from Cython's embedsignature, has no types where the .pyx has none)."""
    if signature is None or what not in ("function", "method"):
        return None
    if getattr(obj, "__module__", None) != "latchwire._core" and \
            type(obj).__name__ != "method_descriptor":
        return None
    sig, returns = _stub(getattr(obj, "__qualname__", ""))
    return (sig, returns) if sig else None


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-process-signature", _core_signature)
    app.connect("source-read", _class_signatures)
