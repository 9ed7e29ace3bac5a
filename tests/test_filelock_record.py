"""The per-process record of a lock file: one per inode, what it checks after a grant,
lost locks, read-only lock files, and the values it refuses.

The adversarial side (many threads and processes at once on fresh files, with a witness
log) is in test_lock_races.py; this file pins down the record's rules one at a time,
against the kernel and against plain ``fcntl`` in other processes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import math
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lwagent import Agent
from lwfcntl import OtherProcess
from lwfcntl import fcntl_probe as probe
from lwtest import BOUND, need, new_lock
from lwthreads import Worker, wait_in_futex

import latchwire
from latchwire import FileLock, LockBusy, LockCancelled, LockSpace, LockTimeout

pytestmark = pytest.mark.usefixtures("watchdog", "ofd_in_this_process")


def ofd_read_lock_through(path: str, flags: int) -> bool:
    """Whether a raw OFD read lock can be taken through a descriptor opened with flags."""
    fd = os.open(path, flags)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_RDLCK, 0, 0, 0, 0))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _open_files() -> list[str]:
    """What this process's descriptors lead to."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    return links


# ---------------------------------------------------------------------------
# 1. One record per inode, whatever the name


def test_hard_link_shares_the_record(tmp_path: Path) -> None:
    """A FileLock reaching a held file through a hard link is refused in this process
    ("held in this process", not "by another process"), a blocking wait by the same
    thread raises instead of hanging, and another thread waits on the record, not in
    the kernel, and gets the lock once the first name's holder lets go."""
    lockfile, alias = str(tmp_path / "lock"), str(tmp_path / "alias")
    first = new_lock(lockfile)
    first.acquire()
    os.link(lockfile, alias)
    second = new_lock(alias)
    with pytest.raises(LockBusy, match="in this process"):
        second.acquire(blocking=False)
    with pytest.raises(RuntimeError, match="would deadlock"):
        second.acquire(timeout=BOUND)
    waiter = Worker(second.acquire, timeout=BOUND)
    wait_in_futex(waiter)
    first.release()
    assert waiter.outcome() is True
    assert second.locked and probe(lockfile) == "busy"
    second.release()
    assert probe(alias) == "free"


def test_hard_link_shared_holds_join(tmp_path: Path) -> None:
    """Shared holds through two names of one file coexist in this process and keep
    another process's exclusive lock out until the last one is released."""
    lockfile, alias = str(tmp_path / "lock"), str(tmp_path / "alias")
    a = new_lock(lockfile)
    a.acquire(shared=True)
    os.link(lockfile, alias)
    b = new_lock(alias)
    b.acquire(shared=True, blocking=False)
    assert probe(lockfile) == "busy" and probe(lockfile, "sh") == "free"
    a.release()
    assert probe(lockfile) == "busy"
    b.release()
    assert probe(lockfile) == "free"


def test_per_use_objects_reuse_the_open_file(tmp_path: Path) -> None:
    """FileLock objects made per use find the record the first one opened: the process
    keeps one descriptor of the file, not one per object."""
    lockfile = str(tmp_path / "lock")
    keep = new_lock(lockfile)
    keep.acquire()
    keep.release()

    before = _open_files().count(lockfile)
    for _ in range(100):
        with new_lock(lockfile):
            pass
    assert before == 1 and _open_files().count(lockfile) == 1


# ---------------------------------------------------------------------------
# 2. After a grant: the path must still name the file locked, at every depth


def _move(tmp_path: Path, depth: int, lockfile: Path) -> None:
    """Move the lock file (depth 0) or the directory depth levels above it out of the way."""
    moved = lockfile
    for _ in range(depth):
        moved = moved.parent
    os.rename(moved, moved.with_name(moved.name + ".old"))


@pytest.mark.parametrize("depth", [0, 1, 2, 3], ids=["file", "dir", "grandparent", "great"])
@pytest.mark.parametrize("attempt", [{"blocking": False}, {"timeout": 0.2}],
                         ids=["nonblocking", "timed"])
def test_grant_on_a_moved_file_is_never_kept(
        tmp_path: Path, agents: Callable[..., Agent], depth: int, attempt: dict[str, Any]) -> None:
    """The lock file, or a directory above it, is renamed away after this process has
    locked and released it (its record keeps the old file open and its path checked),
    and another process locks a new file at the same path: acquire() must lock the new
    file (so it is busy), never the old one it still has open."""
    lockfile = tmp_path / "a" / "b" / "c" / "lock"
    lockfile.parent.mkdir(parents=True)
    lock = new_lock(str(lockfile))
    for _ in range(3):      # the path is walked once, then vouched for by the watch
        lock.acquire()
        lock.release()
    _move(tmp_path, depth, lockfile)
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    other = agents(lockfile, lockfile)
    assert other.ok("acquire") is True
    with pytest.raises(LockBusy if "blocking" in attempt else LockTimeout):
        lock.acquire(**attempt)
    assert other.close() == 0
    lock.acquire(blocking=False)
    assert lock.verify() and os.stat(lockfile).st_ino == os.fstat(
        os.open(lockfile, os.O_RDONLY)).st_ino
    lock.release()


@pytest.mark.parametrize("how", ["unlink", "replace"])
def test_file_removed_between_grants_is_noticed_without_waiting(
        tmp_path: Path, how: str) -> None:
    """Another process removes the lock file while holding it (the cooperating
    remover's protocol: unlink or rename over, then unlock); our next uncontended
    acquire(), which waits for nothing, takes the new file."""
    lockfile = str(tmp_path / "lock")
    lock = new_lock(lockfile)
    lock.acquire()
    lock.release()
    script = (f"import fcntl, os, struct, sys; p = {lockfile!r}\n"
              "fd = os.open(p, os.O_RDWR)\n"
              "fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0,0,0,0))\n"
              + ("os.unlink(p)\n" if how == "unlink" else
                 "open(p + '.new', 'w').close(); os.rename(p + '.new', p)\n"))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=BOUND * 2)
    assert any(link.endswith("(deleted)") for link in _open_files()), \
        "the record should still have the old file open"
    lock.acquire(blocking=False)
    try:
        assert lock.verify()
        assert probe(lockfile) == "busy"
    finally:
        lock.release()


# ---------------------------------------------------------------------------
# 3. Lost locks


def test_lost_lock_releases_quietly(tmp_path: Path) -> None:
    """verify() finds the file unlinked: the hold is dropped as lost; release() and
    leaving the with block succeed once; a second release is an error again."""
    lockfile = str(tmp_path / "lock")
    lock = new_lock(lockfile)
    with lock:
        os.unlink(lockfile)
        assert lock.verify() is False
        assert not lock.locked and lock.lost and lock.mode is None
        assert "lost" in repr(lock)
    assert not lock.lost
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()
    lock.acquire()      # a new file
    assert lock.verify() and not lock.lost
    lock.release()


def test_lost_shared_lock_leaves_the_other_shared_holder(tmp_path: Path) -> None:
    """One of two shared holders loses the (replaced) file; the other still holds
    through the record and releases normally."""
    lockfile = str(tmp_path / "lock")
    a, b = new_lock(lockfile), new_lock(lockfile)
    a.acquire(shared=True)
    b.acquire(shared=True)
    Path(lockfile + ".new").touch()
    os.rename(lockfile + ".new", lockfile)
    assert a.verify() is False and a.lost
    assert b.locked and b.mode == "shared"
    a.release()
    b.release()
    with a:
        assert a.verify()


# ---------------------------------------------------------------------------
# 4. Read-only lock files


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(writable dir, the same dir bind-mounted read-only): a lock file there can only
    be opened for reading, even by root."""
    need(os.geteuid() == 0, "bind mounts need root")
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (rw / "lock").touch()
    made = subprocess.run(["mount", "--bind", str(rw), str(ro)], capture_output=True, check=False)
    need(made.returncode == 0, f"cannot bind-mount: {made.stderr!r}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        yield rw, ro
    finally:
        gc.collect()    # a record of the file in a traceback's frame keeps it open
        if subprocess.run(["umount", str(ro)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(ro)], check=True)
            pytest.fail("the read-only view was still in use: something kept the file open")


def test_shared_lock_on_a_read_only_file(read_only_view: tuple[Path, Path],
                                        agents: Callable[..., Agent]) -> None:
    """A file this process may only read: a raw OFD read lock and flock(1) -s work
    through it, and so does a shared FileLock, which excludes an exclusive one taken
    through the writable name in another process; an exclusive FileLock there is a
    PermissionError."""
    rw, ro = read_only_view
    with pytest.raises(OSError) as refused:
        os.open(ro / "lock", os.O_RDWR)
    assert refused.value.errno == errno.EROFS
    assert ofd_read_lock_through(str(ro / "lock"), os.O_RDONLY)
    assert subprocess.run(["flock", "-s", "-n", str(ro / "lock"), "true"],
                          timeout=BOUND).returncode == 0
    lock = new_lock(str(ro / "lock"))
    lock.acquire(shared=True)
    try:
        assert lock.mode == "shared" and lock.verify()
        writer = agents(rw / "lock", rw / "lock")
        assert writer.error("acquire", blocking=False) == "LockBusy"
        assert probe(str(rw / "lock"), "sh") == "free"
        with pytest.raises(PermissionError, match="read-only"):
            lock.upgrade(blocking=False)
    finally:
        lock.release()
    with pytest.raises(PermissionError, match="read-only"):
        new_lock(str(ro / "lock")).acquire(blocking=False)
    assert writer.ok("acquire", blocking=False) is True


# ---------------------------------------------------------------------------
# 5. Values refused, and nothing left behind


@pytest.mark.parametrize("args", [("",), ("/tmp/x", ""), ("/tmp/a\0b",), ("/tmp/x", "/tmp/l\0k"),
                                  (b"",)],
                         ids=["empty path", "empty lockfile", "NUL path", "NUL lockfile",
                              "empty bytes"])
def test_bad_paths_are_refused(args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        FileLock(*args)


@pytest.mark.parametrize("mode", [-1, 0o4600, 0o2600, 0o1600, 0o10000])
def test_create_mode_must_be_permission_bits(tmp_path: Path, mode: int) -> None:
    with pytest.raises(ValueError, match="permission bits"):
        FileLock(tmp_path / "x", create_mode=mode)
    assert list(tmp_path.iterdir()) == []


def test_create_mode_is_used(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "x", create_mode=0o640)
    old = os.umask(0)
    try:
        with lock:
            assert os.stat(lock.lockfile).st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


BAD_TIMEOUTS = [(math.nan, ValueError), (-1.0, ValueError), (-math.inf, ValueError),
                ("1", TypeError), (object(), TypeError)]


@pytest.mark.parametrize(("timeout", "error"), BAD_TIMEOUTS,
                         ids=["nan", "negative", "-inf", "str", "object"])
def test_bad_timeouts_everywhere(tmp_path: Path, timeout: Any, error: type[Exception]) -> None:
    """Every blocking call of FileLock and LockSpace refuses the same bad timeouts the
    same way (one helper reads them all), and takes nothing."""
    lock = new_lock(str(tmp_path / "lock"))
    with pytest.raises(error):
        lock.acquire(timeout=timeout)
    with pytest.raises(error), lock.shared(timeout=timeout):
        pass
    with pytest.raises(error):
        lock.acquire_async(timeout=timeout)
    lock.acquire(shared=True)
    with pytest.raises(error):
        lock.upgrade(timeout=timeout)
    assert lock.mode == "shared"
    lock.release()
    space = LockSpace(tmp_path / "space")
    with pytest.raises(error):
        space.acquire("r", wait=True, timeout=timeout)
    assert space.held() == [] and probe(str(tmp_path / "lock")) == "free"
    assert latchwire._core.check_timeout(None) is None


@pytest.mark.parametrize("timeout", [math.inf, 1e300, 2.0**31 / 1000 + 1, 1e10],
                         ids=["inf", "1e300", "2^31ms", "1e10"])
def test_huge_timeouts_wait_without_a_limit(lockfile: str, other: OtherProcess,
                                            timeout: float) -> None:
    """A timeout beyond any deadline the kernel could keep waits as long as it takes
    (it neither times out at once nor overflows): the wait ends by cancel()."""
    other.lock()
    lock = new_lock(lockfile)
    waiter = Worker(lock.acquire, timeout=timeout)
    assert not waiter.done.wait(0.3), waiter.error
    lock.cancel()
    with pytest.raises(LockCancelled):
        waiter.outcome()


def test_errors_construct_without_arguments() -> None:
    """Like their OSError bases, the lock errors can be made bare (as tests and
    re-raising code do), and keep their errno."""
    for cls, number in ((latchwire.LockBusy, errno.EAGAIN),
                        (latchwire.LockTimeout, errno.ETIMEDOUT),
                        (latchwire.LockCancelled, errno.EINTR)):
        exc = cls()
        assert exc.errno == number and str(exc)


def test_unhashable_owner_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    space = LockSpace(tmp_path / "space")
    with pytest.raises(TypeError, match="hashable"):
        space.acquire("r", owner=["not", "hashable"])
    with pytest.raises(TypeError, match="hashable"):
        space.acquire("r", owner={}, wait=True, timeout=1)
    assert space.held() == []
    description, fds = space.export()
    assert description["leases"] == [] and fds == []
    space.acquire("r", owner="ok")
    space.release("r", owner="ok")


# ---------------------------------------------------------------------------
# 6. Threads of one record: who is woken


def test_a_release_wakes_only_the_waiter_that_can_proceed(tmp_path: Path) -> None:
    """Eight threads wait for an exclusive hold in this process; each takes it and
    lets go at once, so one release hands over to the next. Each waiter is woken once,
    when it can proceed: eight wake-ups. Waking every waiter at every change would make
    36 (8 + 7 + ... + 1), each a thread that takes the GIL only to sleep again."""
    lockfile = str(tmp_path / "lock")
    holder = new_lock(lockfile)
    holder.acquire()
    count = 8

    def wait_then_pass_on() -> None:
        lock = new_lock(lockfile)
        lock.acquire(timeout=BOUND * 4)
        lock.release()

    waiters = [Worker(wait_then_pass_on) for _ in range(count)]
    for w in waiters:
        wait_in_futex(w)
    before = latchwire._core._record_wakes()
    holder.release()
    for w in waiters:
        w.outcome()
    woken = latchwire._core._record_wakes() - before
    assert count <= woken <= count + 2, woken
