"""FileLock(flock=True): a flock(2) lock beside the OFD lock, for files shared with
flock-based tools.

On a local filesystem OFD locks and flock(2) locks do not conflict (FACTS), so
flock(1), Python's filelock and portalocker are granted while a plain FileLock holds.
With ``flock=True`` a hold also takes a flock(2) lock of the same mode; the tests
here hold it against the real tools (util-linux flock(1), filelock, portalocker) and
against another process using ``fcntl.flock`` directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import filelock
import portalocker
import pytest
from lwfcntl import fcntl_probe as probe
from lwfcntl import wait_in_kernel
from lwtest import BOUND
from lwthreads import Worker

from latchwire import FileLock, LockBusy, LockCancelled, LockTimeout

pytestmark = pytest.mark.usefixtures("watchdog", "ofd_in_this_process")

_FLOCKER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_SH if sys.argv[2] == "sh" else fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


class Flocker:
    """Another process holding a flock(2) lock (plain fcntl.flock) until closed."""

    def __init__(self, path: str, mode: str = "ex") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _FLOCKER, path, mode],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "held"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(BOUND)


@pytest.fixture
def flocker(lockfile: str) -> Iterator[Flocker]:
    """Another process holding lockfile with an exclusive flock(2) lock."""
    other = Flocker(lockfile)
    yield other
    if other.proc.poll() is None:
        other.close()


def flock_tool(path: str, *args: str) -> int:
    """util-linux flock(1) -n [args] path true: 0 if it got the lock, 1 if not."""
    return subprocess.run(["flock", "-n", *args, path, "true"], timeout=BOUND).returncode


def test_plain_filelock_does_not_keep_flock_tools_out(lockfile: str) -> None:
    """The fact flock=True exists for: an OFD hold and a flock(2) hold coexist."""
    with FileLock(lockfile, lockfile=lockfile):
        assert flock_tool(lockfile) == 0


@pytest.mark.parametrize("shared", [False, True], ids=["exclusive", "shared"])
def test_flock_tools_are_kept_out(lockfile: str, shared: bool) -> None:
    """flock(1), Python's filelock and portalocker (all flock(2)) are refused while a
    flock=True hold has the file; a shared hold admits flock(1) -s. Both locks go with
    the release."""
    lock = FileLock(lockfile, lockfile=lockfile, flock=True)
    lock.acquire(shared=shared)
    try:
        assert flock_tool(lockfile) == 1
        assert flock_tool(lockfile, "-s") == (0 if shared else 1)
        with pytest.raises(filelock.Timeout):
            filelock.FileLock(lockfile).acquire(timeout=0)
        with pytest.raises(portalocker.exceptions.LockException):
            portalocker.Lock(lockfile, timeout=0, fail_when_locked=True).acquire()
        assert probe(lockfile, "sh") == ("free" if shared else "busy")
    finally:
        lock.release()
    assert flock_tool(lockfile) == 0 and probe(lockfile) == "free"


def test_busy_or_timed_out_flock_side_leaves_nothing_held(lockfile: str,
                                                          flocker: Flocker) -> None:
    """While another process holds the flock(2) lock, a flock=True acquire is busy
    (or times out), and the OFD lock it took first is let go again."""
    lock = FileLock(lockfile, lockfile=lockfile, flock=True)
    with pytest.raises(LockBusy, match="another process"):
        lock.acquire(blocking=False)
    assert not lock.locked and probe(lockfile) == "free"
    with pytest.raises(LockTimeout):
        lock.acquire(timeout=0.1)
    assert not lock.locked and probe(lockfile) == "free"
    with FileLock(lockfile, lockfile=lockfile):     # without flock=True: no conflict
        pass


def test_flock_wait_is_in_the_kernel_and_ends_on_release_or_cancel(
        lockfile: str, flocker: Flocker) -> None:
    """A blocking flock=True acquire waits in flock(2) itself (a waiter the kernel
    lists), holding the OFD lock meanwhile; cancel() ends the wait and lets the OFD
    lock go; a second wait is granted when the other process lets go."""
    lock = FileLock(lockfile, lockfile=lockfile, flock=True)
    waiter = Worker(lock.acquire, timeout=BOUND * 4)
    wait_in_kernel(lockfile)
    assert probe(lockfile) == "busy"        # the OFD lock, taken first
    lock.cancel()
    with pytest.raises(LockCancelled):
        waiter.outcome()
    assert probe(lockfile) == "free"
    waiter = Worker(lock.acquire, timeout=BOUND * 4)
    wait_in_kernel(lockfile)
    flocker.close()
    assert waiter.outcome() is True
    assert flock_tool(lockfile) == 1
    lock.release()
    assert flock_tool(lockfile) == 0


def test_shared_holds_share_the_flock_side(lockfile: str) -> None:
    """Shared flock=True holds in one process share one flock(2) lock, which goes
    with the last of them; a shared flock=True request joins plain shared holders by
    taking the flock(2) lock itself, or is busy if another process has it."""
    plain, a, b = (FileLock(lockfile, lockfile=lockfile, flock=f) for f in (False, True, True))
    plain.acquire(shared=True)
    assert flock_tool(lockfile) == 0
    a.acquire(shared=True, blocking=False)
    b.acquire(shared=True, blocking=False)
    assert flock_tool(lockfile) == 1 and flock_tool(lockfile, "-s") == 0
    a.release()
    plain.release()
    assert flock_tool(lockfile) == 1
    b.release()
    assert flock_tool(lockfile) == 0
    plain.acquire(shared=True)
    other = Flocker(lockfile)
    try:
        with pytest.raises(LockBusy):
            a.acquire(shared=True, blocking=False)
    finally:
        other.close()
        plain.release()


def test_downgrade_keeps_the_flock_side_exclusive_and_upgrade_converts_it(
        lockfile: str) -> None:
    """flock(2) converts by letting go and taking again, so downgrade() (which never
    waits and never lets go) keeps the flock(2) lock exclusive until the release;
    upgrade() of a shared hold converts the flock(2) lock after the OFD one."""
    lock = FileLock(lockfile, lockfile=lockfile, flock=True)
    lock.acquire()
    lock.downgrade()
    assert probe(lockfile, "sh") == "free" and flock_tool(lockfile, "-s") == 1
    lock.release()
    lock.acquire(shared=True)
    assert flock_tool(lockfile, "-s") == 0
    lock.upgrade(timeout=BOUND)
    assert probe(lockfile, "sh") == "busy" and flock_tool(lockfile, "-s") == 1
    lock.release()
    assert flock_tool(lockfile) == 0


def test_failed_flock_upgrade_keeps_the_shared_hold(lockfile: str) -> None:
    """An upgrade() refused on the flock(2) side (another process shares it) keeps
    the OFD lock shared, and the shared flock(2) lock is taken again."""
    lock = FileLock(lockfile, lockfile=lockfile, flock=True)
    lock.acquire(shared=True)
    other = Flocker(lockfile, "sh")
    try:
        with pytest.raises(LockBusy):
            lock.upgrade(blocking=False)
        assert lock.mode == "shared" and probe(lockfile, "sh") == "free"
        assert flock_tool(lockfile) == 1      # still shared-locked: by us and the other
    finally:
        other.close()
    assert flock_tool(lockfile) == 1        # ours alone now
    lock.release()
    assert flock_tool(lockfile) == 0


def test_handover_carries_the_flock_side(tmp_path: Path) -> None:
    """handover() gives away the open file description, and the flock(2) lock lives
    in it too: a child adopting it with flock=True holds both, and its release frees
    both."""
    lockfile = str(tmp_path / "lock")
    lock = FileLock(lockfile, lockfile=lockfile, flock=True)
    lock.acquire()
    fd = lock.handover()
    assert flock_tool(lockfile) == 1
    child = (f"import latchwire, os\nl = latchwire.FileLock({lockfile!r}, lockfile={lockfile!r},"
             f" flock=True)\nl.adopt({fd})\nassert l.locked\nl.release()\n"
             f"assert os.system('flock -n {lockfile} true') == 0\n")
    os.set_inheritable(fd, True)
    subprocess.run([sys.executable, "-c", child], pass_fds=[fd], check=True, timeout=BOUND * 2)
    os.close(fd)
    assert flock_tool(lockfile) == 0 and probe(lockfile) == "free"


def test_flock_holder_of_this_process_is_listed_as_flock(lockfile: str) -> None:
    """FileLock.holders() tells the two locks of a flock=True hold apart."""
    with FileLock(lockfile, lockfile=lockfile, flock=True):
        kinds = sorted((h.pid, h.kind) for h in FileLock.holders(lockfile, lockfile))
    assert kinds == [(os.getpid(), "flock"), (os.getpid(), "ofd")]
