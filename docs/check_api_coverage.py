"""Check that a built reference site documents latchwire's whole public API.

    python docs/check_api_coverage.py [HTML_DIR]      (default: docs/_build/html)

Reads the site's ``objects.inv`` (Sphinx's inventory of every object it
documents) and imports the latchwire on ``sys.path``. Every public module
(``latchwire`` and each submodule with no ``_``-prefixed part in its name) must
be documented as a module, and every name of its ``__all__`` must be documented
either under that name or, for a re-export, as the same object under another
name (``latchwire.locking.FileLock`` is ``latchwire.FileLock``). Names are
looked up with ``getattr``, so attributes the package provides lazily count
like the others. For every documented class, each public attribute it (or a
private base of it, such as the compiled ``latchwire._core.FileLock``) defines
must be documented as a member too. Exits 1 listing what is missing.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import zlib
from pathlib import Path
from types import ModuleType

PACKAGE = "latchwire"
# Roles whose entries name a Python object that can be imported and compared.
_OBJECT_ROLES = {"py:class", "py:exception", "py:function", "py:data", "py:method",
                 "py:attribute", "py:property", "py:module"}
# Values that are equal by identity for reasons that say nothing of documentation.
_SCALARS = (bool, int, float, str, bytes, type(None))


def read_inventory(path: Path) -> dict[str, set[str]]:
    """Sphinx's objects.inv (version 2) as {object name: {domain:role, ...}}."""
    data = path.read_bytes()
    lines = data.split(b"\n", 4)
    if len(lines) < 5 or not lines[0].startswith(b"# Sphinx inventory version 2"):
        raise SystemExit(f"{path}: not a version 2 Sphinx inventory")
    entries: dict[str, set[str]] = {}
    for line in zlib.decompress(lines[4]).decode().splitlines():
        # name domain:role priority uri dispname; the name may contain spaces.
        head, _, _ = line.rpartition(" ")  # drop dispname
        head, _, _ = head.rpartition(" ")  # drop uri
        head, _, _ = head.rpartition(" ")  # drop priority
        name, _, role = head.rpartition(" ")
        entries.setdefault(name, set()).add(role)
    return entries


def public_modules() -> list[str]:
    """latchwire and every submodule whose dotted name has no part starting with '_'."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def public_names(module: ModuleType) -> list[str]:
    """The module's __all__, or else the public names it defines itself."""
    declared = getattr(module, "__all__", None)
    if declared is not None:
        return list(declared)
    return sorted(name for name, value in vars(module).items()
                  if not name.startswith("_") and not isinstance(value, ModuleType)
                  and getattr(value, "__module__", None) == module.__name__)


def resolve(name: str) -> object:
    """The object a dotted name leads to: the longest importable module prefix, then getattr."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def documented_objects(inventory: dict[str, set[str]]) -> dict[int, tuple[object, list[str]]]:
    """id(object) -> (object, the names it is documented under), for the inventory's objects
    (autodoc also records a re-exported object's canonical name: latchwire.locking.FileLock)."""
    found: dict[int, tuple[object, list[str]]] = {}
    for name, roles in sorted(inventory.items()):
        if not name.startswith(PACKAGE) or not roles & _OBJECT_ROLES:
            continue
        try:
            obj = resolve(name)
        except (ImportError, AttributeError):
            continue
        if not isinstance(obj, _SCALARS):
            found.setdefault(id(obj), (obj, []))[1].append(name)
    return found


def class_members(cls: type) -> list[str]:
    """The public attributes cls defines, itself or through a private latchwire base."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is cls or (klass.__module__.startswith(PACKAGE + ".")
                            and any(p.startswith("_") for p in klass.__module__.split("."))):
            names.update(n for n in vars(klass) if not n.startswith("_"))
    return sorted(names)


def missing_names(inventory: dict[str, set[str]]) -> list[str]:
    """Every public module, name and class member the inventory does not document."""
    missing: list[str] = []
    documented = documented_objects(inventory)
    classes: dict[str, tuple[type, list[str]]] = {}
    for modname in public_modules():
        module = importlib.import_module(modname)
        if "py:module" not in inventory.get(modname, set()):
            missing.append(f"{modname} (module)")
        for name in public_names(module):
            full = f"{modname}.{name}"
            try:
                obj = getattr(module, name)
            except AttributeError:
                missing.append(f"{full} (in __all__ but not an attribute)")
                continue
            if isinstance(obj, ModuleType):
                if "py:module" not in inventory.get(obj.__name__, set()):
                    missing.append(f"{full} (module {obj.__name__})")
                continue
            names = documented[id(obj)][1] if id(obj) in documented else []
            if full in inventory and full not in names:
                names = [full, *names]
            if not names or (isinstance(obj, _SCALARS) and full not in inventory):
                missing.append(full)
                continue
            if isinstance(obj, type):
                names = sorted(names, key=lambda n: (any(p.startswith("_") for p in n.split(".")),
                                                     n.count("."), n))
                classes[names[0]] = (obj, names)
    # A member counts under any of the names its class is documented under.
    for first, (cls, names) in sorted(classes.items()):
        missing.extend(f"{first}.{member} (member)" for member in class_members(cls)
                       if not any(f"{name}.{member}" in inventory for name in names))
    return missing


def main(argv: list[str]) -> int:
    html = Path(argv[1] if len(argv) > 1 else "docs/_build/html")
    inventory_path = html / "objects.inv"
    if not inventory_path.is_file():
        print(f"{inventory_path}: no inventory (build the site first)", file=sys.stderr)
        return 1
    inventory = read_inventory(inventory_path)
    missing = missing_names(inventory)
    if missing:
        print(f"{len(missing)} public names are not in the reference site ({html}):",
              file=sys.stderr)
        for name in missing:
            print(f"  {name}", file=sys.stderr)
        return 1
    modules = public_modules()
    print(f"API coverage: every public name of {len(modules)} modules is documented "
          f"({sum(len(r) for r in inventory.values())} objects in {inventory_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
