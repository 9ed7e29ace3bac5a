"""The house rules of the package's layout, checked on its sources.

- Imports run one way: no cycle among latchwire's modules (every import counts, at
  module level, inside a function or under TYPE_CHECKING: each is a dependency).
- The compiled core imports nothing from the package but ``errors``.
- No module grows past about 800 lines outside the compiled core, in the package or in
  bench/ (the runner, its measuring helpers, one module per part, the suites).
- Every public name stays importable from where it used to be.
- ``import latchwire`` (and the ``lock`` command) loads neither asyncio nor the
  netlink layer until they are used.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from lwtest import child_env

import latchwire

PACKAGE = Path(latchwire.__file__).resolve().parent
SOURCES = Path(__file__).resolve().parents[1] / "src" / "latchwire"
BENCH = Path(__file__).resolve().parents[1] / "bench"
HELPERS = Path(__file__).resolve().parent / "helpers"
MAX_LINES = 800


def _modules() -> dict[str, Path]:
    """latchwire's Python modules, by dotted name, from the source tree (or the install)."""
    root = SOURCES if SOURCES.is_dir() else PACKAGE
    # The compiled core is a module too (its imports are test_core_imports_only_errors').
    found = {f"latchwire.{path.stem}": path for path in root.glob("*.pyx")}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The latchwire modules the module name (at path) imports."""
    if path.suffix != ".py":
        return set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1],
                                 *([base] if base else [])])
            # "from latchwire import rtnl" depends on latchwire.rtnl, not on the package.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        edges |= {t for t in targets if t in modules and t != name}
    return edges


def test_no_import_cycle() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "latchwire.lockspace.local" in graph, sorted(graph)  # the walk found the package
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append([*trail[trail.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_walk_sees_a_cycle(tmp_path: Path) -> None:
    """The checker itself: two modules importing each other are a cycle for it."""
    (tmp_path / "a.py").write_text("from latchwire import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from latchwire.a import x\n")
    modules = {"latchwire.a": tmp_path / "a.py", "latchwire.b": tmp_path / "b.py"}
    assert _imports("latchwire.a", modules["latchwire.a"], modules) == {"latchwire.b"}
    assert _imports("latchwire.b", modules["latchwire.b"], modules) == {"latchwire.a"}


def test_core_imports_only_errors() -> None:
    root = SOURCES if SOURCES.is_dir() else PACKAGE
    sources = [*root.glob("_*.pyx"), *root.glob("_*.pxi")]
    assert sources, "the compiled core's sources were not found"
    imported = set()
    for path in sources:
        imported |= set(re.findall(r"^\s*(?:from|import)\s+latchwire\.(\w+)(?!.*cimport)",
                                   path.read_text(), re.M))
    assert imported <= {"errors"}, imported


def test_no_module_over_800_lines() -> None:
    too_long = {name: n for name, path in _modules().items()
                if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert too_long == {}, too_long


@pytest.mark.parametrize(("directory", "landmark"), [(BENCH, "compare.py"),
                                                    (HELPERS, "lwtest.py")],
                         ids=["bench", "test helpers"])
def test_no_bench_or_helper_module_over_800_lines(directory: Path, landmark: str) -> None:
    modules = sorted(directory.glob("*.py"))
    assert directory / landmark in modules, f"{landmark} was not found in {directory}"
    too_long = {path.name: n for path in modules
                if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert too_long == {}, too_long


@pytest.mark.parametrize(("module", "names"), [
    ("latchwire", ["FileLock", "LockSpace", "Lease", "resource_name", "Holder"]),
    ("latchwire.locking", ["FileLock", "LockSpace", "Lease", "resource_name", "file_holders",
                           "Holder", "lease_owner"]),
    ("latchwire.lockspace", ["LockSpace", "Lease", "resource_name", "lease_owner"]),
    ("latchwire.lockspace_remote", ["RemoteLease", "RemoteLockSpace", "SessionLost", "State",
                                    "Listener", "connect", "check_name"]),
    ("latchwire.lockspace.remote", ["RemoteLease", "RemoteLockSpace", "Listener"]),
    ("latchwire.lockspace.url", ["connect"]),
])
def test_public_names_stay_where_they_were(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    missing = [n for n in names if not hasattr(imported, n)]
    assert missing == []
    assert latchwire.locking.LockSpace is latchwire.lockspace.LockSpace is latchwire.LockSpace


@pytest.mark.parametrize(("old", "new", "name"), [
    ("latchwire.lockspace_zk", "latchwire.lockspace.zookeeper", "ZkLockSpace"),
    ("latchwire.lockspace_etcd", "latchwire.lockspace.etcd", "EtcdLockSpace"),
])
def test_engine_modules_stay_where_they_were(old: str, new: str, name: str) -> None:
    """The engines' modules need their optional clients, as before the move."""
    try:
        moved = importlib.import_module(new)
    except ImportError as exc:
        pytest.skip(f"{new} needs its client: {exc}")
    assert getattr(importlib.import_module(old), name) is getattr(moved, name)


# Loaded only once used: what ``import latchwire`` and the lock command must not load.
LAZY = ("asyncio", "dataclasses", "latchwire.netlink", "latchwire.rtnl", "latchwire.genl",
        "latchwire.lockspace")


@pytest.mark.parametrize("imports", ["latchwire", "latchwire.cli, latchwire.cli.lock"],
                         ids=["package", "lock command"])
def test_import_loads_no_asyncio_nor_netlink(imports: str) -> None:
    """A fresh interpreter: importing the package, or what ``latchwire lock``
    runs, and taking FileLock, leaves asyncio, dataclasses, the netlink layer and
    the lockspaces out of sys.modules."""
    code = (f"import sys, {imports}; import latchwire; latchwire.FileLock, latchwire.Mutex; "
            f"print(__import__('json').dumps([m for m in {LAZY!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=child_env(), timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_lazy_names_come_when_asked() -> None:
    """Every name the package exports still comes, from a fresh interpreter: the
    modules as attributes and in from-imports, the lockspace names from the
    package and from latchwire.locking, and dir() lists them."""
    code = ("import latchwire, sys; from latchwire import rtnl, genl; import latchwire.locking; "
            "assert latchwire.rtnl is rtnl and latchwire.genl is genl; "
            "assert latchwire.netlink.Socket and rtnl.Route and 'asyncio' not in sys.modules; "
            "from latchwire.lockspace import LockSpace, Lease, resource_name; "
            "assert latchwire.LockSpace is LockSpace is latchwire.locking.LockSpace; "
            "assert latchwire.Lease is Lease and latchwire.resource_name is resource_name; "
            "assert latchwire.locking.lease_owner and latchwire.locking.Lease is Lease; "
            "assert set(latchwire.__all__) <= set(dir(latchwire)); "
            "assert all(getattr(latchwire, n) is not None for n in latchwire.__all__); "
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=child_env(), timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    with pytest.raises(AttributeError):
        latchwire.no_such_name  # noqa: B018
