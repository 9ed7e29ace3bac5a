"""FileLock against the real kernel, with real processes.

The other parties are separate processes: children forked with
multiprocessing's "fork" context (module-level helpers below) for the fork
tests and the many-process loads, and fresh interpreters running
``tests/helpers/lock_agent.py`` (``lwagent.Agent``) where the process must
inherit nothing, or must import latchwire with ``LATCHWIRE_LOCKS=posix``.
Processes meet through pipes, never through sleeps, and every wait is bounded
by WAIT so that a bug fails the test instead of hanging it. Where a test must
know that a process is blocked in the kernel, it reads /proc/locks, whose
``->`` lines are the lock requests waiting.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import multiprocessing
import os
import shutil
import signal
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pytest
from lwagent import Agent
from lwfcntl import wait_in_kernel
from lwtest import WAIT, join_all

from latchwire import FileLock, Holder, LockBusy, LockTimeout, _core
from latchwire.locking import file_holders

# FileLocks made here use OFD locks even if the run has LATCHWIRE_LOCKS=posix;
# POSIX mode is tested through Agents.
pytestmark = pytest.mark.usefixtures("ofd_in_this_process")

CTX = multiprocessing.get_context("fork")
NOBODY = 65534


# ---------------------------------------------------------------------------
# Helpers


def lockfile_of(path: Path) -> Path:
    """The lock file FileLock(path) takes: ``.NAME.~lock~`` beside path."""
    return path.with_name(f".{path.name}.~lock~")


def probe(path: Path, lockfile: Path | None = None, *, shared: bool = False,
          posix: bool = False) -> str:
    """In a fresh process, ``acquire(blocking=False)``: "acquired" or the exception's name."""
    agent = Agent(path, lockfile, posix=posix)
    try:
        answer = agent.call("acquire", blocking=False, shared=shared)
        return "acquired" if answer.get("result") is True else str(answer.get("error", answer))
    finally:
        agent.kill()


def _report_to(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """In a forked child: send back ("returned", value) or ("raised", name, errno, text)."""
    try:
        conn.send(("returned", fn(*args)))
    except BaseException as exc:
        conn.send(("raised", type(exc).__name__, getattr(exc, "errno", None), str(exc)))


def run_forked(fn: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    """Run fn(*args) in a forked child; what _report_to sent back."""
    reader, writer = CTX.Pipe(duplex=False)
    child = CTX.Process(target=_report_to, args=(writer, fn, args))
    child.start()
    writer.close()
    try:
        assert reader.poll(WAIT), f"forked child gave no answer within {WAIT} s"
        result: tuple[Any, ...] = reader.recv()
        return result
    finally:
        child.join(WAIT)
        if child.is_alive():
            child.kill()
            child.join(WAIT)


def ofd_lock_free(fd: int) -> bool:
    """Whether an exclusive OFD lock could be set through fd now (it is not kept)."""
    request = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0))
    return True


# ---------------------------------------------------------------------------
# 1. Mutual exclusion under load


def _count(path: str, cycles: int, start: Event) -> None:
    """Worker: ``cycles`` locked read-increment-write cycles on the counter file at path."""
    lock = FileLock(path)
    if not start.wait(WAIT):
        raise TimeoutError("no start signal")
    for _ in range(cycles):
        lock.acquire(timeout=WAIT)
        try:
            with open(path, "r+") as f:
                value = int(f.read())
                f.seek(0)
                f.write(str(value + 1))
        finally:
            lock.release()


def test_counter_is_exact_under_contention(tmp_path: Path) -> None:
    """8 processes x 2,000 locked increments of one counter file lose no update."""
    counter = tmp_path / "counter"
    counter.write_text("0")
    start = CTX.Event()
    workers = [CTX.Process(target=_count, args=(str(counter), 2000, start)) for _ in range(8)]
    for worker in workers:
        worker.start()
    began = time.monotonic()
    start.set()
    join_all(workers, timeout=60)
    elapsed = time.monotonic() - began
    assert counter.read_text() == "16000", f"lost updates ({elapsed:.1f} s)"


# ---------------------------------------------------------------------------
# 2. The close trap


def test_closing_descriptors_and_collecting_filelocks_keeps_the_lock(tmp_path: Path) -> None:
    """While thread A holds, thread B opening and closing the lock file, and another
    FileLock of it being tried and collected, never drops A's lock (OFD locks)."""
    data = tmp_path / "data"
    alias = tmp_path / "alias"
    alias.symlink_to(tmp_path, target_is_directory=True)
    lock = FileLock(data)
    lockfile = Path(lock.lockfile)
    assert lockfile == lockfile_of(data)
    held, done = threading.Event(), threading.Event()
    outcomes: list[str] = []

    def thread_a() -> None:
        lock.acquire()
        held.set()
        done.wait(WAIT)
        lock.release()

    def thread_b() -> None:
        os.close(os.open(lockfile, os.O_RDWR))
        with open(lockfile, "rb"):
            pass
        with open(lockfile, "r+b") as f:
            f.read()
        lockfile.read_bytes()
        # The same lock file named directly and through a symlinked directory.
        others = [FileLock(data), FileLock(tmp_path / "x", lockfile=alias / lockfile.name)]
        refs = [weakref.ref(other) for other in others]
        for other in others:
            try:
                other.acquire(blocking=False)
            except LockBusy:
                outcomes.append("LockBusy")
            else:
                outcomes.append("acquired")
                other.release()
        del others, other
        gc.collect()
        outcomes.append("collected" if all(ref() is None for ref in refs) else "alive")

    a = threading.Thread(target=thread_a)
    a.start()
    try:
        assert held.wait(WAIT)
        b = threading.Thread(target=thread_b)
        b.start()
        b.join(WAIT)
        assert outcomes == ["LockBusy", "LockBusy", "collected"]
        assert lock.locked and lock.lock_kind == "ofd"
        assert probe(data) == "LockBusy"
    finally:
        done.set()
        a.join(WAIT)
    assert probe(data) == "acquired"


def test_posix_fallback_other_filelock_collected_keeps_the_lock(
        tmp_path: Path, agents: Callable[..., Agent]) -> None:
    """With LATCHWIRE_LOCKS=posix, a second FileLock tried and collected in another thread
    does not drop the holder's classic POSIX lock (the in-process record protects it)."""
    data = tmp_path / "data"
    holder = agents(data, posix=True)
    assert holder.ok("acquire") is True
    assert holder.state()["kind"] == "posix"
    assert [(h.pid, h.kind) for h in FileLock.holders(data)] == [(holder.pid, "posix")]
    assert holder.ok("second_lock") == "LockBusy"
    assert probe(data, posix=True) == "LockBusy"
    assert probe(data) == "LockBusy"
    assert holder.state()["locked"] is True
    # Control: in this mode a raw close() behind the library's back does drop the
    # lock (the documented trap), so the checks above could have seen it dropped.
    assert holder.ok("raw_open_close") is True
    assert probe(data, posix=True) == "acquired"


def test_posix_fallback_one_record_per_inode_whatever_the_name(tmp_path: Path) -> None:
    """Classic POSIX locks are per process and inode: a FileLock reaching a held lock
    file by another name (a hard link) shares the holder's record, so it is busy
    here, and neither trying nor releasing through that name drops the lock."""
    lockfile, alias = tmp_path / "lock", tmp_path / "alias"
    _core._use_posix_locks(True)
    try:
        holder = FileLock(lockfile, lockfile=lockfile)
        holder.acquire()
        assert holder.lock_kind == "posix"
        os.link(lockfile, alias)
        other = FileLock(alias, lockfile=alias)
        with pytest.raises(LockBusy):
            other.acquire(blocking=False)
        del other
        gc.collect()
        assert probe(lockfile, lockfile) == "LockBusy"
        holder.release()
        again = FileLock(alias, lockfile=alias)
        again.acquire()
        assert probe(lockfile, lockfile) == "LockBusy"
        with pytest.raises(LockBusy):
            holder.acquire(blocking=False)
        again.release()
        assert probe(lockfile, lockfile) == "acquired"
    finally:
        _core._use_posix_locks(False)


# ---------------------------------------------------------------------------
# 3. A holder killed with SIGKILL


@pytest.mark.parametrize("timeout", [None, 60.0], ids=["no-timeout", "timeout"])
def test_waiter_gets_lock_soon_after_holder_is_killed(
        tmp_path: Path, agents: Callable[..., Agent], timeout: float | None) -> None:
    """A waiter blocked in the kernel (with or without a deadline timer armed) gets the
    lock within 1 s of the holder's SIGKILL, and nothing stale is left: a fresh process
    then takes it without waiting."""
    data = tmp_path / "data"
    holder = agents(data)
    assert holder.ok("acquire") is True
    waiter = agents(data)
    waiter.send("acquire", timeout=timeout)
    wait_in_kernel(lockfile_of(data), 1, watch=[waiter])
    killed_at = time.monotonic()
    os.kill(holder.pid, signal.SIGKILL)
    granted = waiter.reply()
    assert granted.get("result") is True, granted
    latency = granted["t1"] - killed_at
    print(f"waiter got the lock {latency * 1e3:.2f} ms after SIGKILL")
    assert latency < 1.0, f"waiter got the lock {latency * 1e3:.1f} ms after SIGKILL"
    assert holder.proc.wait(WAIT) == -signal.SIGKILL
    assert waiter.state()["mode"] == "exclusive"
    assert waiter.close() == 0
    assert FileLock.holders(data) == []
    assert probe(data) == "acquired"


# ---------------------------------------------------------------------------
# 4. fork


def _child_of_holder(lock: FileLock) -> dict[str, Any]:
    """In a child forked while the parent holds lock: what the child sees and may do."""
    seen: dict[str, Any] = {"locked": lock.locked, "mode": lock.mode}
    for name in ("release", "remove", "downgrade"):
        try:
            getattr(lock, name)()
        except Exception as exc:
            seen[name] = type(exc).__name__
        else:
            seen[name] = "returned"
    seen["verify"] = lock.verify()
    try:
        lock.acquire(blocking=False)
    except Exception as exc:
        seen["acquire"] = type(exc).__name__
    else:
        seen["acquire"] = "acquired"
        lock.release()
    return seen


def test_forked_child_neither_holds_nor_releases_parents_lock(tmp_path: Path) -> None:
    """A child forked while the parent holds sees the lock unheld, cannot release it
    (RuntimeError), and its exit leaves the parent's lock in force."""
    data = tmp_path / "data"
    lock = FileLock(data)
    lock.acquire()
    try:
        seen = run_forked(_child_of_holder, lock)
        assert seen == ("returned", {
            "locked": False, "mode": None, "release": "RuntimeError", "remove": "RuntimeError",
            "downgrade": "RuntimeError", "verify": False, "acquire": "LockBusy"})
        assert lock.locked and lock.verify()
        assert probe(data) == "LockBusy"
    finally:
        lock.release()
    assert probe(data) == "acquired"


def _child_takes_unheld(lock: FileLock, conn: Connection) -> None:
    """In a child forked while lock was not held: take it, hold until told, release."""
    try:
        lock.acquire(blocking=False)
    except Exception as exc:
        conn.send(type(exc).__name__)
        return
    conn.send(("held", lock.mode))
    if conn.poll(WAIT):
        conn.recv()
    lock.release()
    conn.send("released")


def test_forked_child_can_use_a_filelock_not_held_at_fork(tmp_path: Path) -> None:
    """A FileLock not held at fork is taken normally in the child, on a descriptor of its
    own: while the child holds it, the parent (same object, own record) gets LockBusy."""
    data = tmp_path / "data"
    lock = FileLock(data)
    lock.acquire()
    lock.release()  # the parent's record keeps its descriptor open across the fork
    conn, child_end = CTX.Pipe()
    child = CTX.Process(target=_child_takes_unheld, args=(lock, child_end))
    child.start()
    child_end.close()
    try:
        assert conn.poll(WAIT)
        assert conn.recv() == ("held", "exclusive")
        with pytest.raises(LockBusy):
            lock.acquire(blocking=False)
        assert probe(data) == "LockBusy"
        conn.send("release")
        assert conn.poll(WAIT)
        assert conn.recv() == "released"
    finally:
        join_all([child], WAIT)
    assert lock.acquire(blocking=False)
    lock.release()


# ---------------------------------------------------------------------------
# 5. Symbolic links


@pytest.mark.parametrize("target_exists", [True, False], ids=["target", "missing-target"])
@pytest.mark.parametrize("naming", ["lockfile", "default"])
def test_symlink_at_lock_path_is_refused_and_target_untouched(
        tmp_path: Path, target_exists: bool, naming: str) -> None:
    """A symbolic link where the lock file goes is refused with ELOOP by acquire();
    the file it points to is neither created nor modified nor locked."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "target"
    if target_exists:
        target.write_bytes(b"precious\n")
        os.utime(target, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
        before = target.stat()
    if naming == "lockfile":
        link = tmp_path / "lock"
        lock = FileLock(tmp_path / "data", lockfile=link)
    else:
        link = lockfile_of(tmp_path / "data")
        lock = FileLock(tmp_path / "data")
    link.symlink_to(target)
    for kwargs in ({}, {"blocking": False}, {"shared": True}):
        with pytest.raises(OSError) as info:
            lock.acquire(**kwargs)
        assert info.value.errno == errno.ELOOP, (kwargs, info.value)
        assert not lock.locked
    assert link.is_symlink() and os.readlink(link) == str(target)
    if target_exists:
        after = target.stat()
        assert target.read_bytes() == b"precious\n"
        assert (after.st_ino, after.st_size, after.st_mtime_ns, after.st_mode) == (
            before.st_ino, before.st_size, before.st_mtime_ns, before.st_mode)
        assert file_holders(target) == []
    else:
        assert not os.path.lexists(target)
    assert sorted(p.name for p in elsewhere.iterdir()) == (["target"] if target_exists else [])


# ---------------------------------------------------------------------------
# 6. The lock file unlinked or replaced while held


@pytest.mark.parametrize("how", ["unlink", "rename"])
def test_unlinked_or_replaced_lock_file_is_noticed_and_new_file_taken(
        tmp_path: Path, how: str) -> None:
    """verify() turns False (and the hold is dropped) once the path no longer names the
    inode held; the next acquire() locks the file now at the path."""
    lockfile = tmp_path / "lock"
    lock = FileLock(lockfile, lockfile=lockfile)
    lock.acquire()
    assert lock.verify() is True
    old_ino = lockfile.stat().st_ino
    old_fd = os.open(lockfile, os.O_RDWR)  # another description of the old inode
    try:
        assert not ofd_lock_free(old_fd)
        if how == "unlink":
            lockfile.unlink()
            new_ino = None
        else:
            replacement = tmp_path / "replacement"
            replacement.write_bytes(b"")
            new_ino = replacement.stat().st_ino
            os.rename(replacement, lockfile)
        assert lock.verify() is False
        assert lock.locked is False and lock.mode is None
        assert ofd_lock_free(old_fd), "the lock on the old inode was not released"
    finally:
        os.close(old_fd)
    lock.acquire()
    try:
        st = lockfile.stat()
        assert st.st_ino != old_ino
        if new_ino is not None:
            assert st.st_ino == new_ino
        assert lock.verify() is True
        assert [(h.pid, h.mode, h.kind) for h in file_holders(lock.lockfile)] == [
            (os.getpid(), "exclusive", "ofd")]
        assert probe(lockfile, lockfile) == "LockBusy"
    finally:
        lock.release()
    assert probe(lockfile, lockfile) == "acquired"


@pytest.mark.parametrize("attempt", [{"blocking": False}, {"timeout": 0.5}],
                         ids=["nonblocking", "timeout"])
def test_lock_file_moved_away_while_not_held_is_not_granted(
        tmp_path: Path, agents: Callable[..., Agent], attempt: dict[str, Any]) -> None:
    """The lock file is moved away (so it keeps a link) while this process holds nothing,
    and another process locks the new file at the path: acquire() must not grant a lock
    on the old file, which no longer guards the path (DESIGN: after the kernel grants,
    the inode held is checked against the path)."""
    lockfile = tmp_path / "lock"
    lock = FileLock(lockfile, lockfile=lockfile)
    lock.acquire()
    lock.release()  # the record keeps its descriptor of this inode open
    os.rename(lockfile, tmp_path / "lock.old")
    other = agents(lockfile, lockfile)
    assert other.ok("acquire") is True  # creates and locks a new file at the path
    try:
        granted = lock.acquire(**attempt)
    except (LockBusy, LockTimeout) as exc:
        assert isinstance(exc, LockBusy if "blocking" in attempt else LockTimeout), exc
    else:
        still_named = lock.verify()  # drops the hold if it is on the old file
        if lock.locked:
            lock.release()
        pytest.fail(f"acquire({attempt}) returned {granted} while process {other.pid} holds "
                    f"the file at {lockfile}; verify() then said {still_named}")
    assert other.close() == 0
    lock.acquire(blocking=False)
    try:
        assert lock.verify() is True
        assert [(h.pid, h.mode) for h in file_holders(lockfile)] == [(os.getpid(), "exclusive")]
    finally:
        lock.release()


# ---------------------------------------------------------------------------
# 7. remove() with processes waiting


def _remove_rounds(lockfile: str, witness: str, rounds: int, holding: Event | None,
                   go: Event | None, conn: Connection) -> None:
    """Worker: rounds of acquire, O_EXCL witness file, remove(). With ``holding`` (the
    first worker), it signals once it holds in round 0 and waits for ``go`` there."""
    lock = FileLock(lockfile, lockfile=lockfile)
    clashes = unverified = 0
    for i in range(rounds):
        lock.acquire(timeout=WAIT)
        try:
            fd = os.open(witness, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            clashes += 1
            fd = -1
        if i == 0 and holding is not None and go is not None:
            holding.set()
            if not go.wait(WAIT):
                raise TimeoutError("no go signal")
        if fd >= 0:
            os.sched_yield()  # hold briefly
            os.close(fd)
            os.unlink(witness)
        if lock.verify():
            lock.remove()
        else:
            unverified += 1
    conn.send({"clashes": clashes, "unverified": unverified, "rounds": rounds})


def test_remove_hands_over_to_waiters_without_two_holders(tmp_path: Path) -> None:
    """A holder that remove()s while three processes wait, and every later holder doing
    the same, never lets two processes hold at once (an O_EXCL witness file proves it)."""
    lockfile = tmp_path / "lock"
    witness = tmp_path / "witness"
    rounds = 200
    holding, go = CTX.Event(), CTX.Event()
    reader, writer = CTX.Pipe(duplex=False)
    first = CTX.Process(target=_remove_rounds,
                        args=(str(lockfile), str(witness), rounds, holding, go, writer))
    workers = [first]
    try:
        first.start()
        assert holding.wait(WAIT)
        for _ in range(3):
            workers.append(CTX.Process(target=_remove_rounds,
                                       args=(str(lockfile), str(witness), rounds, None, None,
                                             writer)))
            workers[-1].start()
        writer.close()
        wait_in_kernel(lockfile, 3, watch=[w.sentinel for w in workers])
        go.set()
        reports: list[dict[str, int]] = []
        deadline = time.monotonic() + 60
        while len(reports) < len(workers) and reader.poll(max(0.0, deadline - time.monotonic())):
            reports.append(reader.recv())
    finally:
        go.set()
        join_all(workers, timeout=60)
    assert len(reports) == len(workers)
    assert sum(r["clashes"] for r in reports) == 0, reports
    assert sum(r["unverified"] for r in reports) == 0, reports
    assert sum(r["rounds"] for r in reports) == rounds * len(workers)
    assert not witness.exists()


# ---------------------------------------------------------------------------
# 8. Shared holders and an exclusive waiter


def test_shared_holders_coexist_and_exclusive_waits_for_the_last(
        tmp_path: Path, agents: Callable[..., Agent]) -> None:
    """Two processes hold shared at once; a third's exclusive acquire blocks in the kernel
    until the last shared holder has released, and is granted only after that."""
    data = tmp_path / "data"
    lockfile = lockfile_of(data)
    a, b, c = agents(data), agents(data), agents(data)
    assert a.ok("acquire", shared=True) is True
    assert b.ok("acquire", blocking=False, shared=True) is True  # while a holds
    assert a.state()["mode"] == "shared"  # and a still holds with b in
    assert b.state()["mode"] == "shared"
    assert sorted((h.pid, h.mode) for h in FileLock.holders(data)) == sorted(
        [(a.pid, "shared"), (b.pid, "shared")])

    c.send("acquire")
    wait_in_kernel(lockfile, 1, watch=[c])
    a.ok("release")
    # One shared holder left: c must still be waiting (it fails here if it answers).
    wait_in_kernel(lockfile, 1, watch=[c])
    last_release = b.call("release")
    assert last_release.get("result") is None and "error" not in last_release, last_release
    granted = c.reply()
    assert granted.get("result") is True, granted
    assert granted["t1"] > last_release["t0"], "exclusive granted before the last release began"
    assert [(h.pid, h.mode) for h in FileLock.holders(data)] == [(c.pid, "exclusive")]


# ---------------------------------------------------------------------------
# 9. Interoperation with fcntl.lockf


def test_lockf_holder_excludes_filelock(tmp_path: Path, agents: Callable[..., Agent]) -> None:
    """A plain fcntl.lockf(LOCK_EX) holder in another process makes acquire() LockBusy."""
    lockfile = tmp_path / "lock"
    other = agents(lockfile, lockfile)
    assert other.ok("lockf") is True
    lock = FileLock(lockfile, lockfile=lockfile)
    with pytest.raises(LockBusy):
        lock.acquire(blocking=False)
    with pytest.raises(LockBusy):
        lock.acquire(blocking=False, shared=True)
    assert other.ok("unlockf") is True
    assert lock.acquire(blocking=False)
    lock.release()


@pytest.mark.parametrize("shared", [False, True], ids=["exclusive", "shared"])
def test_filelock_holder_makes_lockf_fail(
        tmp_path: Path, agents: Callable[..., Agent], shared: bool) -> None:
    """While latchwire holds (either mode), fcntl.lockf(LOCK_EX|LOCK_NB) in another
    process fails with EAGAIN or EACCES."""
    lockfile = tmp_path / "lock"
    lock = FileLock(lockfile, lockfile=lockfile)
    lock.acquire(shared=shared)
    other = agents(lockfile, lockfile)
    try:
        refused = other.call("lockf", blocking=False)
        assert refused.get("errno") in (errno.EAGAIN, errno.EACCES), refused
    finally:
        lock.release()
    assert other.ok("lockf", blocking=False) is True


# ---------------------------------------------------------------------------
# 10. Bad lock file paths


def test_directory_as_lock_file_is_refused_by_acquire(tmp_path: Path) -> None:
    """A directory where the lock file goes: acquire() raises IsADirectoryError."""
    directory = tmp_path / "adir"
    directory.mkdir()
    lock = FileLock(tmp_path / "data", lockfile=directory)
    with pytest.raises(IsADirectoryError):
        lock.acquire()
    assert not lock.locked
    assert list(directory.iterdir()) == []


def test_lock_file_in_missing_directory_is_refused_and_nothing_created(tmp_path: Path) -> None:
    """A lock file in a directory that does not exist: FileNotFoundError, nothing created."""
    lock = FileLock(tmp_path / "data", lockfile=tmp_path / "missing" / "lock")
    assert list(tmp_path.iterdir()) == []  # construction touched nothing
    with pytest.raises(FileNotFoundError):
        lock.acquire()
    with pytest.raises(FileNotFoundError):
        lock.acquire(blocking=False, shared=True)
    assert not lock.locked
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A root-owned 0755 directory every user can reach (tmp_path's parents are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="latchwire-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _acquire_as_nobody(lockfile: str) -> list[str]:
    """As uid/gid 65534: the directory is readable, then construct and acquire."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    listing = os.listdir(os.path.dirname(lockfile))  # searchable and readable, not writable
    lock = FileLock(lockfile, lockfile=lockfile)
    if os.path.lexists(lockfile):
        raise AssertionError("construction created the lock file")
    lock.acquire(blocking=False)
    return listing


@pytest.mark.kernel
def test_unwritable_lock_path_is_refused_and_nothing_created(
        root: None, public_dir: Path) -> None:
    """An unprivileged process locking in a root-owned 0755 directory: acquire() raises
    PermissionError and creates nothing."""
    lockfile = public_dir / "lock"
    result = run_forked(_acquire_as_nobody, str(lockfile))
    assert result[:3] == ("raised", "PermissionError", errno.EACCES), result
    assert list(public_dir.iterdir()) == []


# ---------------------------------------------------------------------------
# 11. Who holds a lock


@pytest.mark.parametrize("posix", [False, True], ids=["ofd", "posix"])
def test_holders_lists_each_holder_process(
        tmp_path: Path, agents: Callable[..., Agent], posix: bool) -> None:
    """holders() names every holder process with its mode, lock kind and command line,
    OFD holders (pid -1 in /proc/locks) included, and nobody once they have exited."""
    data = tmp_path / "data"
    kind = "posix" if posix else "ofd"

    holder = agents(data, posix=posix)
    assert holder.ok("acquire") is True
    assert holder.state()["kind"] == kind
    assert FileLock.holders(data) == [
        Holder(holder.pid, "exclusive", kind, " ".join(holder.argv))]
    assert file_holders(lockfile_of(data)) == FileLock.holders(data)
    assert holder.close() == 0
    assert FileLock.holders(data) == []

    readers = [agents(data, posix=posix) for _ in range(2)]
    for reader in readers:
        assert reader.ok("acquire", blocking=False, shared=True) is True
    assert sorted(FileLock.holders(data)) == sorted(
        Holder(r.pid, "shared", kind, " ".join(r.argv)) for r in readers)
    for reader in readers:
        assert reader.close() == 0
    assert FileLock.holders(data) == []


# ---------------------------------------------------------------------------
# 12. upgrade() and downgrade() between processes


def test_upgrade_and_downgrade_between_processes(
        tmp_path: Path, agents: Callable[..., Agent]) -> None:
    """A failed upgrade keeps the shared hold; a blocking upgrade waits for the other
    shared holder to leave; a downgrade lets another process share without a release."""
    data = tmp_path / "data"
    lockfile = lockfile_of(data)
    a, b = agents(data), agents(data)
    assert a.ok("acquire", shared=True) is True
    assert b.ok("acquire", shared=True) is True

    assert a.error("upgrade", blocking=False) == "LockBusy"
    assert a.state()["mode"] == "shared"
    # a's shared lock is still in the kernel: b can neither upgrade nor be joined
    # by an exclusive holder, while another shared holder still gets in.
    assert b.error("upgrade", blocking=False) == "LockBusy"
    assert b.state()["mode"] == "shared"
    assert probe(data) == "LockBusy"
    assert probe(data, shared=True) == "acquired"
    assert sorted((h.pid, h.mode) for h in FileLock.holders(data)) == sorted(
        [(a.pid, "shared"), (b.pid, "shared")])

    a.send("upgrade")
    wait_in_kernel(lockfile, 1, watch=[a])
    released = b.call("release")
    assert "error" not in released, released
    upgraded = a.reply()
    assert "error" not in upgraded, upgraded
    assert upgraded["t1"] > released["t0"]
    assert a.state()["mode"] == "exclusive"
    assert b.error("acquire", blocking=False, shared=True) == "LockBusy"

    assert a.ok("downgrade") is None
    assert a.state()["mode"] == "shared"
    assert b.ok("acquire", blocking=False, shared=True) is True
    assert a.state()["mode"] == "shared"
    assert sorted((h.pid, h.mode) for h in FileLock.holders(data)) == sorted(
        [(a.pid, "shared"), (b.pid, "shared")])
    assert probe(data) == "LockBusy"

