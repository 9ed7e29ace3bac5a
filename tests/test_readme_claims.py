"""What the README says kernel file locks do not give, and how FileLock and LockSpace
meet other lock tools: each claim checked against the kernel and the real tools.

- Deadlocks across processes: the kernel refuses a cycle of classic POSIX waits
  with EDEADLK and lets a cycle of OFD waits sleep (plain fcntl, the oracle);
  two processes of FileLocks in a cycle end by their timeouts in both modes,
  never with EDEADLK, and a waiter refused with EDEADLK under POSIX locks is
  granted once the cycle is broken.
- Order: a waiter already queued in the kernel is overtaken by processes that
  release and take the lock again in a loop.
- Readers and writers: the kernel grants shared locks while another process
  waits for an exclusive one; within one process a waiting exclusive request
  keeps new shared ones out.
- ``LockSpace(autocreate=True)`` deletes a resource file that was there before,
  with its contents, on the last release.
- The close trap inside one process: the last FileLock of a file going, or a
  second name of the file opened, closes a descriptor, and that drops the
  process's own fcntl.lockf, fasteners and oslo.concurrency locks on it.
- Interoperation: lockf, fasteners and oslo.concurrency conflict with FileLock
  (OFD and POSIX mode) both ways; flock(1), py-filelock and portalocker
  (flock(2) locks) do not.
- The path check after a grant: the first two grants of a record walk the path,
  and from the third on one FIONREAD of the inotify watch is the whole check
  (strace), until something moves.

Other processes are Agents (fresh interpreters, ``LATCHWIRE_LOCKS=posix`` where
asked) and children forked with multiprocessing; every wait is bounded.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pytest
from lwagent import Agent
from lwfcntl import fcntl_probe, wait_in_kernel
from lwtest import WAIT, child_env, need, new_lock
from lwthreads import Worker, wait_in_futex

from latchwire import LockBusy, LockSpace

pytestmark = pytest.mark.usefixtures("ofd_in_this_process", "watchdog")

CTX = multiprocessing.get_context("fork")
MODES = [pytest.param(False, id="ofd"), pytest.param(True, id="posix")]


# ---------------------------------------------------------------------------
# The kernel refuses only a POSIX cycle (latchwire checks the others itself)


def _setlk(fd: int, cmd: int, ltype: int) -> None:
    fcntl.fcntl(fd, cmd, struct.pack("hhqqi4x", ltype, 0, 0, 0, 0))


def _hold_then_wait(held: str, wanted: str, cmds: tuple[int, int], holding: Event,
                    go: Event) -> None:
    """In a forked child: lock held, say so, and on go wait (plain fcntl) for wanted;
    exits once granted."""
    fd = os.open(held, os.O_RDWR | os.O_CREAT, 0o600)
    _setlk(fd, cmds[0], fcntl.F_WRLCK)
    holding.set()
    assert go.wait(WAIT)
    other = os.open(wanted, os.O_RDWR | os.O_CREAT, 0o600)
    _setlk(other, cmds[1], fcntl.F_WRLCK)


class _Alarm(Exception):
    pass


@pytest.mark.parametrize("posix", MODES)
def test_the_kernel_refuses_only_a_posix_cycle_with_edeadlk(tmp_path: Path, posix: bool) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    cmds = (fcntl.F_SETLK, fcntl.F_SETLKW) if posix else (fcntl.F_OFD_SETLK, fcntl.F_OFD_SETLKW)
    holding, go = CTX.Event(), CTX.Event()
    child = CTX.Process(target=_hold_then_wait, args=(b, a, cmds, holding, go))
    child.start()
    # Opened after the fork: the child must not share (and keep) a's open file description.
    fd = os.open(a, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _setlk(fd, cmds[0], fcntl.F_WRLCK)
        assert holding.wait(WAIT)
        go.set()
        wait_in_kernel(a, 1, watch=[child.sentinel])  # the child holds b and waits for a
        other = os.open(b, os.O_RDWR)

        def alarm(signo: int, frame: Any) -> None:
            raise _Alarm

        previous = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        try:
            _setlk(other, cmds[1], fcntl.F_WRLCK)  # waits for b: closes the cycle
        except OSError as err:
            outcome = "EDEADLK" if err.errno == errno.EDEADLK else str(err)
        except _Alarm:
            outcome = "still waiting after 0.5 s"
        else:
            outcome = "granted"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert outcome == ("EDEADLK" if posix else "still waiting after 0.5 s")
        os.close(other)
    finally:
        os.close(fd)  # the child is granted a, and exits
        child.join(WAIT)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0


@pytest.mark.parametrize("posix", MODES)
def test_filelocks_in_a_cycle_across_processes_raise_lockdeadlock(
        tmp_path: Path, agents: Callable[..., Agent], posix: bool) -> None:
    """Where the kernel refuses nothing (OFD) and where it refuses with EDEADLK a wait
    latchwire would retry (POSIX locks), the cycle raises LockDeadlock in one of the
    two (the closer, or the first at a re-check), long before any timeout; once that
    one lets go, the other is granted. (tests/test_deadlock.py covers the rest.)"""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    first, second = agents(None, space=True, posix=posix), agents(None, space=True, posix=posix)
    assert first.ok("lockfile", path=a) and second.ok("lockfile", path=b)
    first.send("acquire", name=b, wait=True, timeout=WAIT)
    wait_in_kernel(b, 1, watch=[first])
    second.send("acquire", name=a, wait=True, timeout=WAIT)  # closes the cycle
    ready = multiprocessing.connection.wait([first, second], WAIT)
    assert ready, "nobody raised"
    raiser = ready[0]
    other = second if raiser is first else first
    refused = raiser.reply()  # type: ignore[union-attr]
    assert refused.get("error") == "LockDeadlock" and refused["errno"] == errno.EDEADLK, refused
    assert refused["t1"] - refused["t0"] < WAIT / 2
    raiser.ok("unlockfile", path=a if raiser is first else b)  # type: ignore[union-attr]
    granted = other.reply()
    if granted.get("error") == "LockDeadlock":  # both checks saw the cycle: both raised
        return
    assert granted.get("result", granted) is None, granted  # LockSpace.acquire returns None


# ---------------------------------------------------------------------------
# Not first come, first served


def _loop(path: str, first: bool, holding: Event, go: Event, stop: Event,
          grants: Any) -> None:
    """In a forked child: take and release the lock in a loop until stop, counting the
    grants after go; the first looper holds the lock before go."""
    lock = new_lock(path)
    if first:
        lock.acquire()
        holding.set()
    go.wait(WAIT)
    if not first:
        lock.acquire()
    while not stop.is_set():
        lock.release()
        lock.acquire()
        with grants.get_lock():
            grants.value += 1
    lock.release()


def test_a_queued_waiter_is_overtaken_by_processes_that_loop(
        tmp_path: Path, agents: Callable[..., Agent]) -> None:
    path = str(tmp_path / "lock")
    waiter = agents(path, path)
    overtaken = []
    for _ in range(30):  # a round overtakes the waiter or not, as the scheduler has it
        grants = CTX.Value("q", 0)
        holding, go, stop = CTX.Event(), CTX.Event(), CTX.Event()
        loopers = [CTX.Process(target=_loop, args=(path, i == 0, holding, go, stop, grants))
                   for i in range(3)]
        for proc in loopers:
            proc.start()
        try:
            assert holding.wait(WAIT)
            waiter.send("acquire", timeout=WAIT)
            wait_in_kernel(path, 1, watch=[waiter])  # queued before any looper loops
            go.set()
            assert waiter.reply()["result"] is True
            overtaken.append(grants.value)  # the loopers' grants after the waiter queued
            stop.set()
            waiter.ok("release")
        finally:
            stop.set()
            go.set()
            for proc in loopers:
                proc.join(WAIT)
                if proc.is_alive():
                    proc.kill()
        assert [proc.exitcode for proc in loopers] == [0, 0, 0]
        if overtaken[-1]:
            break
    assert max(overtaken) >= 1, f"the queued waiter was never overtaken: {overtaken}"


# ---------------------------------------------------------------------------
# Readers and writers


def test_shared_locks_are_granted_while_another_process_waits_to_write(
        tmp_path: Path, agents: Callable[..., Agent]) -> None:
    path = str(tmp_path / "lock")
    reader1, reader2, writer = agents(path, path), agents(path, path), agents(path, path)
    assert reader1.ok("acquire", shared=True)
    writer.send("acquire", timeout=WAIT)
    wait_in_kernel(path, 1, watch=[writer])
    # Overlapping readers take turns; the writer waits all along (a release wakes
    # it, and it waits again: it fails the test if it answers instead).
    for holder, other in ((reader2, reader1), (reader1, reader2), (reader2, reader1)):
        assert holder.ok("acquire", blocking=False, shared=True)
        other.ok("release")
        wait_in_kernel(path, 1, watch=[writer])
    reader2.ok("release")
    assert writer.reply()["result"] is True


def test_in_one_process_a_waiting_writer_keeps_new_readers_out(tmp_path: Path) -> None:
    path = str(tmp_path / "lock")
    reader, writer, late = new_lock(path), new_lock(path), new_lock(path)
    reader.acquire(shared=True)
    waiting = Worker(writer.acquire, timeout=WAIT)
    wait_in_futex(waiting)

    def read_late() -> str:
        try:
            late.acquire(blocking=False, shared=True)
        except LockBusy:
            return "LockBusy"
        late.release()
        return "joined"

    assert Worker(read_late).outcome() == "LockBusy"  # another thread: kept out
    # This thread reads already: it joins (waiting behind the writer would deadlock).
    late.acquire(blocking=False, shared=True)
    late.release()
    reader.release()
    assert waiting.outcome() is True
    writer.release()


# ---------------------------------------------------------------------------
# autocreate deletes what was there


def test_autocreate_deletes_a_resource_file_that_was_there_before(tmp_path: Path) -> None:
    space = LockSpace(str(tmp_path / "leases"))
    for name in ("kept", "precious"):
        (tmp_path / "leases" / name).write_text("data that was here first\n")
    space.acquire("kept", autocreate=False)
    space.release("kept")
    assert (tmp_path / "leases" / "kept").read_text() == "data that was here first\n"
    space.acquire("precious")  # autocreate=True, the default
    space.release("precious")
    assert not (tmp_path / "leases" / "precious").exists()


# ---------------------------------------------------------------------------
# The close trap inside one process


def _lockf(path: str) -> Callable[[], None] | None:
    """fcntl.lockf on a descriptor of its own; how to let go, or None if refused."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return lambda: os.close(fd)


def _fasteners(path: str) -> Callable[[], None] | None:
    import fasteners

    lock = fasteners.InterProcessLock(path)
    return lock.release if lock.acquire(blocking=False) else None


def _oslo(path: str) -> Callable[[], None] | None:
    from oslo_concurrency import lockutils

    lock = lockutils.external_lock(os.path.basename(path), lock_path=os.path.dirname(path))
    assert os.fsdecode(lock.path) == path
    return lock.release if lock.acquire(blocking=False) else None


def _flock_tool(path: str) -> Callable[[], None] | None:
    """flock(1) holding path while a command runs (until its stdin closes)."""
    need(shutil.which("flock") is not None, "flock(1) is not installed (util-linux)")
    proc = subprocess.Popen(["flock", "-n", path, "-c", "echo held; exec cat"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    if proc.stdout.readline().strip() != "held":
        assert proc.wait(WAIT) == 1
        return None
    stdin = proc.stdin

    def release() -> None:
        stdin.close()
        assert proc.wait(WAIT) == 0

    return release


def _py_filelock(path: str) -> Callable[[], None] | None:
    import filelock

    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return None
    return lock.release


def _portalocker(path: str) -> Callable[[], None] | None:
    import portalocker

    f = open(path, "a")  # noqa: SIM115  (closed by the release returned)
    try:
        portalocker.lock(f, portalocker.LOCK_EX | portalocker.LOCK_NB)
    except portalocker.exceptions.LockException:
        f.close()
        return None
    return f.close


POSIX_TOOLS = {"lockf": _lockf, "fasteners": _fasteners, "oslo": _oslo}
FLOCK_TOOLS = {"flock(1)": _flock_tool, "py-filelock": _py_filelock, "portalocker": _portalocker}


@pytest.mark.parametrize("tool", POSIX_TOOLS)
def test_the_last_filelock_of_a_file_going_drops_this_process_posix_lock(
        tmp_path: Path, tool: str) -> None:
    path = str(tmp_path / "lock")
    release = POSIX_TOOLS[tool](path)
    assert release is not None and fcntl_probe(path) == "busy"
    first = new_lock(path)
    with pytest.raises(LockBusy):  # the tool's lock conflicts with FileLock's OFD lock
        first.acquire(blocking=False)  # ... and the file is open here from now on
    second = new_lock(path)  # made while the file is open: it shares the record
    del first
    gc.collect()
    assert fcntl_probe(path) == "busy"  # second keeps the record and its descriptor
    del second
    gc.collect()
    assert fcntl_probe(path) == "free"  # closed with the record: the tool's lock is gone
    release()


@pytest.mark.parametrize("tool", POSIX_TOOLS)
def test_opening_the_file_by_a_second_name_drops_this_process_posix_lock(
        tmp_path: Path, tool: str) -> None:
    path, link = str(tmp_path / "lock"), str(tmp_path / "link")
    release = POSIX_TOOLS[tool](path)
    assert release is not None
    os.link(path, link)
    first = new_lock(path)
    with pytest.raises(LockBusy):
        first.acquire(blocking=False)
    assert fcntl_probe(path) == "busy"
    by_link = new_lock(link)
    by_link.acquire(blocking=False)  # the descriptor opened by link was closed: lock gone
    assert first.locked is False and by_link.locked
    by_link.release()
    release()


@pytest.mark.parametrize("posix", MODES)
@pytest.mark.parametrize("tool", [*POSIX_TOOLS, *FLOCK_TOOLS])
def test_posix_lock_tools_conflict_with_filelock_and_flock_tools_do_not(
        tmp_path: Path, agents: Callable[..., Agent], tool: str, posix: bool) -> None:
    path = str(tmp_path / "lock")
    take = {**POSIX_TOOLS, **FLOCK_TOOLS}[tool]
    conflicts = tool in POSIX_TOOLS
    agent = agents(path, path, posix=posix)
    assert agent.state()["kind"] == ("posix" if posix else "ofd")
    assert agent.ok("acquire", blocking=False)
    release = take(path)
    assert (release is None) == conflicts, f"{tool} while a FileLock holds"
    if release is not None:
        release()
    agent.ok("release")
    release = take(path)
    assert release is not None
    answer = agent.call("acquire", blocking=False)
    assert answer.get("error" if conflicts else "result") == ("LockBusy" if conflicts else True)
    release()


# ---------------------------------------------------------------------------
# The path check after a grant

_WALKS = r"""
import os, sys
from latchwire import FileLock

path = sys.argv[1]
lock = FileLock(path, lockfile=path)
for grant in range(5):
    os.write(1, b"grant %d\n" % grant)
    lock.acquire()
    lock.release()
os.write(1, b"replaced\n")
os.rename(path, path + ".old")
open(path, "w").close()
lock.acquire()
lock.release()
os.write(1, b"end\n")
"""

# System calls an interpreter may make at any time, or the perturbation switch adds.
_INCIDENTAL = {"brk", "mmap", "munmap", "mremap", "madvise", "mprotect", "sched_yield",
               "nanosleep", "clock_nanosleep"}


def test_grants_walk_the_path_twice_then_one_fionread_vouches(tmp_path: Path) -> None:
    need(shutil.which("strace") is not None, "strace is not installed")
    path, trace = str(tmp_path / "lock"), tmp_path / "trace"
    (tmp_path / "walks.py").write_text(_WALKS)
    done = subprocess.run(["strace", "-qq", "-o", str(trace), sys.executable,
                           str(tmp_path / "walks.py"), path],
                          capture_output=True, text=True, env=child_env(), timeout=WAIT * 3,
                          check=False)
    need(done.returncode == 0 or "ptrace" not in done.stderr, f"strace: {done.stderr}")
    assert done.returncode == 0, done.stderr
    segments: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in trace.read_text().splitlines():
        marker = re.match(r'write\(1, "([a-z]+(?: \d)?)\\n"', line)
        if marker:
            current = segments.setdefault(marker.group(1), [])
        elif current is not None and line.split("(", 1)[0] not in _INCIDENTAL:
            current.append(line)

    def walks(calls: list[str]) -> int:
        return sum(1 for c in calls if re.match(
            rf'(newfstatat|fstatat64|lstat|statx)\(AT_FDCWD, "{re.escape(path)}"', c))

    first, second = segments["grant 0"], segments["grant 1"]
    assert walks(first) == 1 and not any("inotify_add_watch" in c or "FIONREAD" in c
                                         for c in first), first
    assert walks(second) == 1 and any(c.startswith("inotify_add_watch") for c in second), second
    for grant in (2, 3, 4):
        calls = segments[f"grant {grant}"]
        assert [c.split("(", 1)[0] for c in calls] == ["fcntl", "ioctl", "fcntl"], calls
        assert "F_WRLCK" in calls[0] and "FIONREAD" in calls[1] and "F_UNLCK" in calls[2]
    assert walks(segments["replaced"]) >= 1  # the watch saw the rename: walked, new file taken


# ---------------------------------------------------------------------------
# The tool helpers' own contract


def test_tool_helpers_refuse_when_the_file_is_held_their_own_way(tmp_path: Path) -> None:
    """The tools' helpers above say None when the lock is held by the same kind of
    lock in another process (so a None above means a conflict, not a broken helper)."""
    path = str(tmp_path / "lock")
    for name, take in {**POSIX_TOOLS, **FLOCK_TOOLS}.items():
        kind = "lockf" if name in POSIX_TOOLS else "flock"
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
             f"fcntl.{kind}(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
             path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdin is not None
        try:
            assert holder.stdout.readline().strip() == "held"
            assert take(path) is None, name
        finally:
            holder.stdin.close()
            holder.wait(WAIT)
