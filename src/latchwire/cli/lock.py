"""``latchwire lock``: run a command holding a file lock, as flock(1) does.

COMMAND inherits the lock unless ``--close``: once the kernel has granted it,
the FileLock hands its open file description over (``FileLock.handover()``),
and this process keeps that descriptor, made inheritable, open while COMMAND
runs with its own copy. An OFD lock lives while any descriptor of its open file
description is open, so the lock outlives a latchwire killed with SIGKILL, as
flock(1)'s does, and goes when the last holder ends. With ``--close`` (flock
-o) the FileLock keeps it, close-on-exec, and it goes with this process.
Classic POSIX locks belong to a process, so they are kept as with ``--close``.

COMMAND is started with posix_spawn, not subprocess: this is on the path of
every ``latchwire lock`` and should cost what flock(1) costs, not an import of
subprocess and its helpers.
"""

from __future__ import annotations

import argparse
import os
import signal

from latchwire.cli._common import fail
from latchwire.errors import LockBusy, LockTimeout
from latchwire.locking import FileLock

# Signals a supervisor sends to this process, passed on to COMMAND.
_FORWARDED = (signal.SIGTERM, signal.SIGHUP)
# Signals a terminal sends to the whole foreground group: COMMAND gets its own.
_IGNORED = (signal.SIGINT, signal.SIGQUIT)
# What Python ignores at startup, and a program started by it should not.
_DEFAULTED = (signal.SIGPIPE, signal.SIGXFSZ)


def run(args: argparse.Namespace) -> int:
    """args.argv is COMMAND (main has checked that there is one)."""
    lock = FileLock(args.path, lockfile=args.path if args.file else None, flock=args.flock,
                    fair=args.fair)
    try:
        lock.acquire(blocking=not args.nonblock, timeout=args.timeout, shared=args.shared)
    except LockBusy:
        return fail(f"{args.path}: lock is held elsewhere")
    except LockTimeout:
        return fail(f"{args.path}: timed out after {args.timeout:g} s waiting for the lock")
    except OSError as exc:
        return fail(f"{exc.filename or args.path}: {exc.strerror}")
    if args.close or lock.lock_kind != "ofd":
        try:
            return _run(args.argv, None)
        finally:
            lock.release()
    fd = lock.handover()  # the lock is never free in between: fd's description holds it
    try:
        return _run(args.argv, fd)
    finally:
        os.close(fd)


def _run(command: list[str], inherit: int | None) -> int:
    """Run command to its end (inheriting descriptor inherit, and every other
    one not close-on-exec, as under flock(1)), passing on supervisor signals;
    its shell-style status."""
    if inherit is not None:
        os.set_inheritable(inherit, True)
    try:
        pid = os.posix_spawnp(command[0], command, os.environ, setsigdef=_DEFAULTED)
    except (FileNotFoundError, NotADirectoryError):
        fail(f"{command[0]}: command not found")
        return 127
    except OSError as exc:
        fail(f"{command[0]}: {exc.strerror}")
        return 126
    running = True

    def forward(signo: int, _frame: object) -> None:
        if running:  # never to a pid reaped already, which may be another process's now
            os.kill(pid, signo)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    previous.update({sig: signal.signal(sig, signal.SIG_IGN) for sig in _IGNORED})
    try:
        _, status = os.waitpid(pid, 0)  # retried after a forwarded signal (PEP 475)
        running = False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
