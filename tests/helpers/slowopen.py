"""Slow opens: another process holds each open() of a file in one directory for a while.

    python slowopen.py DIRECTORY LOW HIGH SHARE

marks DIRECTORY with a fanotify permission event on open (``FAN_OPEN_PERM`` on
its files, root only) and answers each one "allow", at once for a 1 - SHARE
fraction of them and otherwise after a random LOW-HIGH seconds, each on its own
clock (opens that began together end together). It says "ready" on stdout once
the mark is in place and stops when stdin closes; when it is gone, the kernel
lets every open it held go on.

A race in which one thread acts on a check made before it released the GIL
around ``open()`` needs another thread to run in that gap. Opening an existing
file takes a microsecond or two, less than it takes a woken thread to get a CPU
and the GIL on a loaded machine, so such a race is lost for hours, then hit in
a burst: delaying opens, as a slow or network filesystem does, makes it show
on any load. The delays change nothing else: a correct lock must hold under them.

``SlowOpens`` (below) is the test's side of it.
"""

from __future__ import annotations

import ctypes
import heapq
import os
import random
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
FAN_CLASS_CONTENT = 0x04
FAN_CLOEXEC = 0x01
FAN_MARK_ADD = 0x01
FAN_OPEN_PERM = 0x00010000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ALLOW = 0x01
AT_FDCWD = -100
_EVENT = struct.Struct("IBBHQii")  # struct fanotify_event_metadata
_RESPONSE = struct.Struct("iI")  # struct fanotify_response


def _fanotify(directory: str) -> int:
    """A fanotify descriptor with directory's files marked for permission on open;
    OSError if the kernel or our privileges refuse."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                   ctypes.c_char_p]
    fan = libc.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, os.O_RDONLY | os.O_CLOEXEC)
    if fan < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fanotify_init: {os.strerror(err)}")
    if libc.fanotify_mark(fan, FAN_MARK_ADD, FAN_OPEN_PERM | FAN_EVENT_ON_CHILD, AT_FDCWD,
                          os.fsencode(directory)) != 0:
        err = ctypes.get_errno()
        os.close(fan)
        raise OSError(err, f"fanotify_mark: {os.strerror(err)}", directory)
    return fan


def serve(directory: str, low: float, high: float, share: float) -> None:
    """Hold the opens in directory (see the module docstring) until stdin closes."""
    try:
        fan = _fanotify(directory)
    except OSError as exc:
        os.write(1, f"refused {exc}\n".encode())
        return
    os.write(1, b"ready\n")
    rng = random.Random(os.getpid())
    due: list[tuple[float, int]] = []  # (when to allow, the event's descriptor)
    while True:
        wait = None if not due else max(0.0, due[0][0] - time.monotonic())
        ready = select.select([fan, 0], [], [], wait)[0]
        if 0 in ready and not os.read(0, 4096):
            break
        if fan in ready:
            data = os.read(fan, 65536)
            now = time.monotonic()
            offset = 0
            while offset < len(data):
                length, _, _, _, _, fd, _ = _EVENT.unpack_from(data, offset)
                offset += length
                hold = rng.uniform(low, high) if rng.random() < share else 0.0
                heapq.heappush(due, (now + hold, fd))
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, fd = heapq.heappop(due)
            os.write(fan, _RESPONSE.pack(fd, FAN_ALLOW))
            os.close(fd)
    for _, fd in due:
        os.write(fan, _RESPONSE.pack(fd, FAN_ALLOW))
        os.close(fd)


class SlowOpens:
    """``with SlowOpens(directory):`` every open of a file directly in directory, by
    any process, is held for 0.1-1 ms half of the time. ``refused`` says why not,
    when the kernel or our privileges do not allow it (then nothing is slowed)."""

    def __init__(self, directory: Path, low: float = 0.0001, high: float = 0.001,
                 share: float = 0.5) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), str(directory), str(low), str(high), str(share)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        answer = self.proc.stdout.readline().decode().strip() if ready else "no answer"
        self.refused = None if answer == "ready" else answer
        if self.refused:
            self.close()

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # its fanotify descriptor closes: the opens held go on
            self.proc.wait(30)
        self.proc.stdout.close()

    def __enter__(self) -> SlowOpens:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
