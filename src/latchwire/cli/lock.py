"""``latchwire lock``: run a command holding a file lock."""

from __future__ import annotations

import argparse
import signal
import subprocess

from latchwire.cli._common import fail
from latchwire.errors import LockBusy, LockTimeout
from latchwire.locking import FileLock

# Signals a supervisor sends to this process, passed on to COMMAND.
_FORWARDED = (signal.SIGTERM, signal.SIGHUP)
# Signals a terminal sends to the whole foreground group: COMMAND gets its own.
_IGNORED = (signal.SIGINT, signal.SIGQUIT)


def run(args: argparse.Namespace) -> int:
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        return fail("lock: no command given (latchwire lock PATH -- COMMAND [ARG...])")
    lock = FileLock(args.path, lockfile=args.path if args.file else None)
    try:
        lock.acquire(blocking=not args.nonblock, timeout=args.timeout, shared=args.shared)
    except LockBusy:
        return fail(f"{args.path}: lock is held elsewhere")
    except LockTimeout:
        return fail(f"{args.path}: timed out after {args.timeout:g} s waiting for the lock")
    except OSError as exc:
        return fail(f"{exc.filename or args.path}: {exc.strerror}")
    try:
        return _run(command)
    finally:
        lock.release()


def _run(command: list[str]) -> int:
    """Run command to its end, passing on supervisor signals; its shell-style status."""
    try:
        # COMMAND inherits every descriptor, as under flock(1), but the lock's
        # (close-on-exec): it cannot release the lock, nor outlive us holding it.
        child = subprocess.Popen(command, close_fds=False)
    except FileNotFoundError:
        fail(f"{command[0]}: command not found")
        return 127
    except PermissionError:
        fail(f"{command[0]}: permission denied")
        return 126
    previous = {sig: signal.signal(sig, lambda signo, _frame: child.send_signal(signo))
                for sig in _FORWARDED}
    previous.update({sig: signal.signal(sig, signal.SIG_IGN) for sig in _IGNORED})
    try:
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - status if status < 0 else status
