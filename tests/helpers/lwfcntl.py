"""Kernel file locks seen without latchwire: other processes that lock with plain
``fcntl`` (``OtherProcess`` when told to, ``Prober`` answering many probes,
``fcntl_probe`` for a one-off look), and what ``/proc/locks`` says of kernel waits
(a ``->`` line per blocked waiter: ``kernel_waiters``, ``wait_in_kernel``)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from lwtest import BOUND, WAIT, WATCHDOG

if TYPE_CHECKING:
    from lwagent import Agent


_OTHER = r"""
import fcntl, os, select, struct, sys, time

path, watchdog = sys.argv[1], float(sys.argv[2])
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
types = {"ex": fcntl.F_WRLCK, "sh": fcntl.F_RDLCK}


def setlock(ltype):
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", ltype, 0, 0, 0, 0))


def reply(text):
    os.write(1, (text + "\n").encode())


reply("ready")
buf = b""
while select.select([0], [], [], watchdog)[0]:
    data = os.read(0, 4096)
    if not data:
        break
    buf += data
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        cmd, _, arg = line.decode().partition(" ")
        if cmd == "lock":
            try:
                setlock(types[arg])
            except OSError:
                reply("busy")
            else:
                reply("ok")
        elif cmd == "unlock":
            setlock(fcntl.F_UNLCK)
            reply(repr(time.monotonic()))
"""


_PROBE = r"""
import fcntl, os, struct, sys

fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
ltype = fcntl.F_WRLCK if sys.argv[2] == "ex" else fcntl.F_RDLCK
try:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", ltype, 0, 0, 0, 0))
except OSError:
    print("busy")
else:
    print("free")
"""


class _Script:
    """A small Python script in another process, driven over pipes: one command line
    in, one reply line out. It says "ready" first; left idle for WATCHDOG seconds
    it exits."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args, str(WATCHDOG)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        )
        self._buf = b""
        assert self.reply() == "ready"

    def send(self, line: str) -> None:
        """Send one command line without waiting for the reply."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    def reply(self, timeout: float = BOUND) -> str:
        """The reply to the oldest command not yet answered."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError("the other process did not answer in time")
            data = os.read(fd, 4096)
            if not data:
                raise AssertionError("the other process exited")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        """Close its stdin so it exits (its locks with it); kill it if it lingers."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class OtherProcess(_Script):
    """Another process that locks and unlocks one file when told to, over a pipe.

    It replies to every command, so ``lock()`` and ``unlock()`` return once it
    has acted; ``send("unlock")`` then ``reply()`` split an unlock so the caller
    can act while it happens. Left idle for WATCHDOG seconds it exits, dropping
    its locks.
    """

    def __init__(self, path: str) -> None:
        super().__init__(_OTHER, path)

    def lock(self, mode: str = "ex") -> None:
        """Take the lock (non-blocking); it must be free for the other process."""
        self.send(f"lock {mode}")
        answer = self.reply()
        assert answer == "ok", f"the other process could not lock ({answer})"

    def unlock(self) -> float:
        """Drop the lock; returns the monotonic time at which it was dropped."""
        self.send("unlock")
        return float(self.reply())


_PROBER = r"""
import errno, fcntl, os, select, struct, sys

watchdog = float(sys.argv[1])
types = {"ex": fcntl.F_WRLCK, "sh": fcntl.F_RDLCK}


def try_lock(path, mode):
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return "missing"
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", types[mode], 0, 0, 0, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return "busy"
        raise
    else:
        return "free"
    finally:
        os.close(fd)  # the only descriptor of its open file description: any lock goes


os.write(1, b"ready\n")
buf = b""
while select.select([0], [], [], watchdog)[0]:
    data = os.read(0, 65536)
    if not data:
        break
    buf += data
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        mode, path = line.decode().split(" ", 1)
        os.write(1, (try_lock(path, mode) + "\n").encode())
"""


class Prober(_Script):
    """Another process that, on each ``probe(path)``, tries to take an OFD lock on
    path with plain ``fcntl`` (``F_OFD_SETLK``, never waiting) and lets go of it at
    once: "free" if it got it, "busy" if not, "missing" if there is no such file.
    An oracle independent of latchwire, cheap enough to ask from inside every
    critical section; any thread may call it (one probe at a time)."""

    def __init__(self) -> None:
        super().__init__(_PROBER)
        self._turn = threading.Lock()

    def probe(self, path: str | Path, mode: str = "ex") -> str:
        with self._turn:
            self.send(f"{mode} {path}")
            return self.reply()


def fcntl_probe(path: str, mode: str = "ex") -> str:
    """"free" or "busy": whether a fresh process could take an OFD lock in mode now."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, path, mode],
        capture_output=True, text=True, timeout=BOUND * 2, check=True,
    )
    return out.stdout.strip()


def inode_key(path: str | Path) -> str:
    """How /proc/locks names path's inode: ``MAJOR:MINOR:INODE``."""
    st = os.stat(path)
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"


def kernel_waiters(path: str | Path) -> int:
    """How many lock requests wait in the kernel on the file at path now (/proc/locks)."""
    key = inode_key(path)
    with open("/proc/locks") as f:
        table = [line.split() for line in f]
    # "2: -> OFDLCK ADVISORY WRITE -1 fe:00:1234 0 EOF" is a request waiting.
    return sum(1 for fields in table if fields[1:2] == ["->"] and fields[6:7] == [key])


def wait_in_kernel(path: str | Path, count: int = 1, watch: Sequence[Agent | int] = (),
                   timeout: float = WAIT) -> None:
    """Return once ``count`` lock requests wait in the kernel on the file at path.

    The kernel gives no notice of that, so /proc/locks is read until timeout
    runs out (a path not there yet has no waiters). Meanwhile ``watch`` (agents'
    answers, process sentinels) is watched, and a process that answers or ends
    instead of blocking fails the test at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            waiting = kernel_waiters(path)
        except FileNotFoundError:
            waiting = 0
        if waiting >= count:
            return
        if watch:
            ready = select.select(list(watch), [], [], 0.002)[0]
            if ready:
                said = [f"process ended ({r})" if isinstance(r, int) else r.reply()
                        for r in ready]
                pytest.fail(f"expected {count} waiters on {path}, but instead: {said}")
        else:
            time.sleep(0.0005)
        if time.monotonic() > deadline:
            pytest.fail(f"only {waiting} of {count} requests waiting on {path} after {timeout} s")
