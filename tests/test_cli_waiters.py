"""``latchwire locks --waiters``: holders, the waits in the order they began, and cycles.

The waiters are real processes: lock_agent.py agents (latchwire, on their wait
boards) and plain-``fcntl`` scripts that know nothing of latchwire (seen in the
kernel only). A wait is known to have begun from /proc/locks (``wait_in_kernel``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from lwagent import Agent
from lwfcntl import wait_in_kernel
from lwtest import WAIT, child_env
from lwtest import run_cli as run

# Holds FIRST (an OFD lock), says so, and on a line from stdin waits for SECOND.
_FCNTL = r"""
import fcntl, os, struct, sys
def lock(path, cmd):
    fd = os.open(path, os.O_RDWR)
    fcntl.fcntl(fd, cmd, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
    return fd
if sys.argv[1] != "-":
    lock(sys.argv[1], fcntl.F_OFD_SETLK)
print("holding", flush=True)
sys.stdin.readline()
lock(sys.argv[2], fcntl.F_OFD_SETLKW)
print("got", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def spawned() -> Iterator[list[Agent | subprocess.Popen[str]]]:
    made: list[Agent | subprocess.Popen[str]] = []
    yield made
    for each in made:
        if isinstance(each, Agent):
            each.kill()
        else:
            each.kill()
            each.wait(WAIT)


def fcntl_waiter(spawned: list[Agent | subprocess.Popen[str]], first: str,
                 second: str) -> subprocess.Popen[str]:
    """A plain-fcntl process holding first ("-": nothing), then waiting for second."""
    proc = subprocess.Popen([sys.executable, "-c", _FCNTL, first, second], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env())
    spawned.append(proc)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == "holding\n"
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return proc


def test_waiters_are_listed_in_the_order_their_waits_began(
        tmp_path: Path, spawned: list[Agent | subprocess.Popen[str]]) -> None:
    path = str(tmp_path / "f")
    Path(path).touch()
    holder, first, second = (Agent(tmp_path, space=True) for _ in range(3))
    spawned += [holder, first, second]
    assert holder.ok("lockfile", path=path)
    first.send("lockfile", path=path, wait=True, timeout=WAIT)
    wait_in_kernel(path, 1, watch=[first])
    second.send("lockfile", path=path, wait=True, timeout=WAIT, shared=True)
    wait_in_kernel(path, 2, watch=[first, second])
    plain = fcntl_waiter(spawned, "-", path)  # not latchwire: its place is not known
    wait_in_kernel(path, 3, watch=[first, second])

    done = run("locks", "--waiters", path)
    assert done.returncode == 0, done
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert lines[0] == ["PATH", "PID", "TID", "STATE", "QUEUE", "MODE", "KIND", "WAITED",
                        "COMMAND"]
    rows = [(int(r[1]), r[2], r[3], r[4], r[5], r[6]) for r in lines[1:]]
    assert rows == [
        (holder.pid, "-", "holds", "-", "exclusive", "ofd"),
        (first.pid, str(first.pid), "waits", "1", "exclusive", "ofd"),
        (second.pid, str(second.pid), "waits", "2", "shared", "ofd"),
        (plain.pid, str(plain.pid), "waits", "?", "exclusive", "ofd")], done.stdout
    assert all(r[0] == path for r in lines[1:])
    assert float(lines[2][7]) >= float(lines[3][7]) >= 0  # the first has waited longer
    assert lines[4][7] == "?"
    assert "lock_agent.py" in lines[2][8]

    shown = json.loads(run("locks", "--waiters", "--json", path).stdout)
    assert [h["pid"] for h in shown["holders"]] == [holder.pid]
    assert [(w["pid"], w["queue"], w["mode"]) for w in shown["waiters"]] == [
        (first.pid, 1, "exclusive"), (second.pid, 2, "shared"), (plain.pid, None, "exclusive")]
    assert shown["waiters"][0]["holds"] == [] and shown["cycles"] == []

    holder.ok("unlockfile", path=path)  # the first gets it, then (released) the others
    assert "error" not in first.reply()
    first.ok("unlockfile", path=path)
    assert "error" not in second.reply()


def test_a_cycle_of_processes_that_do_not_check_is_shown(
        tmp_path: Path, spawned: list[Agent | subprocess.Popen[str]]) -> None:
    """Two plain-fcntl processes in an OFD cycle sleep in it (the kernel refuses
    nothing): --waiters shows the cycle, naming both."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    Path(a).touch()
    Path(b).touch()
    procs = []
    for mine, theirs in ((a, b), (b, a)):
        proc = subprocess.Popen([sys.executable, "-c", _FCNTL, mine, theirs], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env())
        spawned.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "holding\n"
        procs.append(proc)
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    wait_in_kernel(a, 1)
    wait_in_kernel(b, 1)
    done = run("locks", "--waiters", str(tmp_path))
    assert done.returncode == 0, done
    cycles = [line for line in done.stdout.splitlines() if line.startswith("cycle: ")]
    assert len(cycles) == 1, done.stdout
    for proc in procs:
        assert f"pid {proc.pid} " in cycles[0]
    assert a in cycles[0] and b in cycles[0]
    shown = json.loads(run("locks", "--waiters", "--json", str(tmp_path)).stdout)
    assert len(shown["cycles"]) == 1
    assert {edge["pid"] for edge in shown["cycles"][0]} == {p.pid for p in procs}


def test_without_waiters_nothing_changes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.touch()
    done = run("locks", "--waiters", str(path))
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "PATH\tPID\tTID\tSTATE\tQUEUE\tMODE\tKIND\tWAITED\tCOMMAND"]
