"""Every ```python block of README.md runs, so that the README cannot drift (issue 18).

Each block is extracted and run as a script by a fresh interpreter (with the
test's PYTHONPATH, LATCHWIRE_LOCKS unset), with a timeout, in a temporary
working directory that is also its TMPDIR; it must exit 0. Blocks are named by
their heading and their place under it (``file-locks-1``) and ``NEEDS`` says
what each one needs:

- ``PLAIN``: nothing more. Every ``/tmp/`` in the block is rewritten to the
  test's own directory, so that runs side by side do not meet in /tmp.
- ``NETNS``: root; the interpreter runs under ``ip netns exec`` in a private
  namespace made for the test (lwnetns: lo up, a veth pair with MTUs of their
  own and 192.0.2.1/24 on veth0). A block naming ``netns="demo"`` (the
  README's ``ip netns add demo``) gets that namespace's name instead.
- ``ZOOKEEPER``/``ETCD``: a real server, started once for this module as the
  remote lockspace tests start theirs (coord.py); the URL's host part in the
  block (``zk://zk1:2181,.../``, ``etcd://etcd1:2379/``) is rewritten to that
  server's ``127.0.0.1:PORT``.

A block missing from NEEDS fails, and so does an entry no block has; nothing is
skipped silently (a block whose facility is missing skips with the reason, or
fails under LATCHWIRE_REQUIRE_KERNEL=1, like every kernel test). The script is
padded so that its line numbers are README.md's, and it is named README.md, so
a traceback points at the README line. Some blocks' output is checked too
(``CHECKS``): the netlink example must print each link's own MTU.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from coord import Server, etcd_missing, start_etcd, start_zookeeper, zookeeper_missing
from lwnetns import BASIC_SETUP, IP, Netns, drop_netns, make_netns
from lwtest import child_env, need

README = Path(__file__).resolve().parent.parent / "README.md"
TIMEOUT = 60.0  # seconds for one block, ZooKeeper's session set-up included

PLAIN, NETNS, ZOOKEEPER, ETCD = "plain", "netns", "zookeeper", "etcd"

# What each block needs, by id (heading slug and index under the heading).
NEEDS = {
    "file-locks-1": PLAIN,
    "file-locks-2": PLAIN,
    "file-locks-3": PLAIN,
    "lockspaces-1": PLAIN,
    "lockspaces-2": PLAIN,
    "lockspaces-across-hosts-zookeeper-etcd-1": ZOOKEEPER,
    "lockspaces-across-hosts-zookeeper-etcd-2": ETCD,
    "lockspaces-across-hosts-zookeeper-etcd-3": ZOOKEEPER,
    "mutex-rwlock-and-the-lock-order-checker-1": PLAIN,
    "object-registries-1": PLAIN,
    "netlink-sockets-1": NETNS,
    "rtnetlink-and-generic-netlink-1": NETNS,
    "rtnetlink-and-generic-netlink-2": NETNS,
    "netlink-on-the-event-loop-1": NETNS,
}

# Fence languages that are Python under another name: the runner would miss them.
PYTHON_ALIASES = {"py", "python3", "pycon", "ipython", "pyi"}

# What the test namespace holds besides BASIC_SETUP: MTUs that differ from each
# other and from lo's, so that printing one link's MTU beside another shows.
NETNS_SETUP = (*BASIC_SETUP, "link set veth0 mtu 1400", "link set veth1 mtu 1300")


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    id: str
    heading: str
    line: int  # README.md's line number of the block's first line of code
    code: str


def slug(heading: str) -> str:
    """A heading as an id: ``"Mutex, RWLock and ..."`` -> ``"mutex-rwlock-and-..."``."""
    return "-".join(re.findall(r"[a-z0-9]+", heading.lower()))


def readme_blocks(text: str) -> tuple[list[Block], list[str]]:
    """The ```python blocks of a README, and complaints about fences the runner would
    miss (Python under another language name, a fence left open)."""
    blocks: list[Block] = []
    problems: list[str] = []
    counts: dict[str, int] = {}
    heading = "(top)"
    fence: tuple[str, int, str] | None = None  # (language, first code line, indentation)
    code: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("```"):
                lang = stripped[3:].strip().lower()
                if lang in PYTHON_ALIASES:
                    problems.append(f"line {number}: ```{lang} is Python: write ```python")
                fence, code = (lang, number + 1, line[:len(line) - len(line.lstrip())]), []
            elif line.startswith("#"):
                heading = line.lstrip("#").strip()
            continue
        if stripped == "```":
            lang, first, _ = fence
            if lang == "python":
                counts[heading] = counts.get(heading, 0) + 1
                blocks.append(Block(f"{slug(heading)}-{counts[heading]}", heading, first,
                                    "\n".join(code) + "\n"))
            fence = None
            continue
        indent = fence[2]
        code.append(line[len(indent):] if line.startswith(indent) else line)
    if fence is not None:
        problems.append(f"line {fence[1] - 1}: a ``` fence is never closed")
    return blocks, problems


BLOCKS, PROBLEMS = readme_blocks(README.read_text())


# ---------------------------------------------------------------------------
# Servers and namespaces


def _server(name: str, missing: Callable[[], str | None], start: Callable[[Path], Server],
            workdir: Path) -> Iterator[Server]:
    absent = missing()
    need(absent is None, f"{name} cannot be started: {absent}")
    try:
        started = start(workdir)
    except (OSError, RuntimeError, AssertionError) as err:
        need(False, f"{name} did not start: {err}")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ZooKeeper for the module (only started if a block asks for it)."""
    yield from _server("ZooKeeper", zookeeper_missing, start_zookeeper,
                       tmp_path_factory.mktemp("zk"))


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real etcd for the module (only started if a block asks for it)."""
    yield from _server("etcd", etcd_missing, start_etcd, tmp_path_factory.mktemp("etcd"))


@pytest.fixture
def netns() -> Iterator[Netns]:
    ns = make_netns(NETNS_SETUP, prefix="lwtest-readme")
    yield ns
    drop_netns(ns)


def with_server(code: str, scheme: str, server: Server) -> str:
    """code with every ``SCHEME://HOSTS/`` naming server instead (at least one must)."""
    code, count = re.subn(rf"{scheme}://[^/\s\"']+/", f"{scheme}://127.0.0.1:{server.port}/",
                          code)
    assert count, f"the block needs {scheme} but names no {scheme}:// URL"
    return code


# ---------------------------------------------------------------------------
# Output checks


def check_link_mtus(out: str, ns: Netns | None) -> None:
    """The netlink example prints every link with its own MTU, as ``ip`` sees them."""
    assert ns is not None
    printed = dict(line.split() for line in out.splitlines())
    assert printed == {link["ifname"]: str(link["mtu"]) for link in ns.json("link")}


def check_rtnl_dumps(out: str, ns: Netns | None) -> None:
    """The rtnl example prints veth0's route and address, and the nlctrl family."""
    lines = out.splitlines()
    assert "192.0.2.0 24 None veth0" in lines
    assert "veth0 192.0.2.1 24" in lines
    assert lines[-1].startswith("Family(name='nlctrl'")


def check_rtnl_changes(out: str, ns: Netns | None) -> None:
    """The changes made in the namespace are there, as ``ip`` sees them."""
    assert ns is not None
    assert out.split()[:2] == ["br0", "9000"]
    (br0,) = ns.json("link", "show", "br0")
    assert br0["mtu"] == 9000 and "UP" in br0["flags"]
    routes = {(r["dst"], r.get("gateway")) for r in ns.json("-4", "route")}
    assert ("10.1.0.0/16", "10.0.0.2") in routes and ("10.0.0.0/24", None) in routes


def check_object_registry(out: str, ns: Netns | None) -> None:
    """The ObjectList example ends with the object removed."""
    assert out.splitlines()[-1] == "0 None"


def check_awaited_lease(out: str, ns: Netns | None) -> None:
    """The awaited lease comes later with a larger token; the cancelled wait left nothing."""
    assert out.split() == ["True", "1"]


CHECKS: dict[str, Callable[[str, Netns | None], None]] = {
    "netlink-sockets-1": check_link_mtus,
    "rtnetlink-and-generic-netlink-1": check_rtnl_dumps,
    "rtnetlink-and-generic-netlink-2": check_rtnl_changes,
    "object-registries-1": check_object_registry,
    "lockspaces-across-hosts-zookeeper-etcd-3": check_awaited_lease,
}


# ---------------------------------------------------------------------------
# The tests


def test_the_readme_has_python_blocks_and_each_is_accounted_for() -> None:
    assert not PROBLEMS, PROBLEMS
    ids = [block.id for block in BLOCKS]
    assert len(ids) == len(set(ids))
    missing = [i for i in ids if i not in NEEDS]
    stale = [i for i in NEEDS if i not in ids]
    assert not missing, f"README blocks with no entry in NEEDS (say what they need): {missing}"
    assert not stale, f"NEEDS entries that no README block has any more: {stale}"
    assert not set(CHECKS) - set(ids)


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_readme_block_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    needs = NEEDS.get(block.id)
    if needs is None:
        pytest.fail(f"README.md line {block.line} ({block.id}): no entry in NEEDS")
    code = block.code.replace("/tmp/", f"{tmp_path}/")
    argv = [sys.executable, "README.md"]
    ns: Netns | None = None
    if needs == NETNS:
        ns = request.getfixturevalue("netns")
        assert IP is not None
        argv = [IP, "netns", "exec", ns.name, *argv]
        code = code.replace('netns="demo"', f'netns="{ns.name}"')
    elif needs == ZOOKEEPER:
        code = with_server(code, "zk", request.getfixturevalue("zookeeper"))
    elif needs == ETCD:
        code = with_server(code, "etcd", request.getfixturevalue("etcd"))
    else:
        assert needs == PLAIN, needs
    (tmp_path / "README.md").write_text("\n" * (block.line - 1) + code)
    env = child_env()
    env["TMPDIR"] = str(tmp_path)
    try:
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"README.md line {block.line} ({block.id}) ran past {TIMEOUT} s: {exc}")
    assert done.returncode == 0, (
        f"README.md line {block.line} ({block.id}) exited {done.returncode}\n"
        f"--- stderr:\n{done.stderr}\n--- stdout:\n{done.stdout}\n--- as run:\n{code}")
    check = CHECKS.get(block.id)
    if check is not None:
        check(done.stdout, ns)
