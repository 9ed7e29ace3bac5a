"""The ``latchwire`` command.

    latchwire lock [--shared] [--timeout S | --nonblock] [--file] PATH -- COMMAND [ARG...]
    latchwire locks [--json] PATH|DIR

``lock`` takes the same lock as ``FileLock(PATH)`` in a program (``.NAME.~lock~``
beside PATH; ``--file`` locks PATH itself), runs COMMAND holding it, and exits
with COMMAND's status (128+N if a signal N ended it). When the lock is busy
(``--nonblock``), the wait timed out, or the lock file cannot be opened, it
prints one line and exits 1, as flock(1) does. The lock's descriptor is not
inherited: COMMAND cannot release it, and it goes when this process ends.

``locks`` lists the processes holding locks on PATH (and on PATH's lock file),
or on every file in DIR; it exits 1 when there are none.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from latchwire.errors import LockBusy, LockTimeout
from latchwire.locking import FileLock, Holder, file_holders

__all__ = ["main"]

# Signals a supervisor sends to this process, passed on to COMMAND.
_FORWARDED = (signal.SIGTERM, signal.SIGHUP)
# Signals a terminal sends to the whole foreground group: COMMAND gets its own.
_IGNORED = (signal.SIGINT, signal.SIGQUIT)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latchwire", description="latchwire's command line")
    sub = parser.add_subparsers(dest="command", required=True)

    lock = sub.add_parser("lock", help="run a command holding a file lock")
    lock.add_argument("--shared", action="store_true", help="take the lock shared")
    wait = lock.add_mutually_exclusive_group()
    wait.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")
    wait.add_argument("--nonblock", "-n", action="store_true", help="fail at once if busy")
    lock.add_argument("--file", action="store_true",
                      help="lock PATH itself, not .NAME.~lock~ beside it")
    lock.add_argument("path", metavar="PATH")
    lock.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")

    locks = sub.add_parser("locks", help="list the holders of a lock file, or of a directory's")
    locks.add_argument("--json", action="store_true", help="one JSON array")
    locks.add_argument("path", metavar="PATH|DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "lock":
        return _lock(args)
    return _locks(args)


def _fail(what: str) -> int:
    print(f"latchwire: {what}", file=sys.stderr)
    return 1


def _lock(args: argparse.Namespace) -> int:
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        return _fail("lock: no command given (latchwire lock PATH -- COMMAND [ARG...])")
    lock = FileLock(args.path, lockfile=args.path if args.file else None)
    try:
        lock.acquire(blocking=not args.nonblock, timeout=args.timeout, shared=args.shared)
    except LockBusy:
        return _fail(f"{args.path}: lock is held elsewhere")
    except LockTimeout:
        return _fail(f"{args.path}: timed out after {args.timeout:g} s waiting for the lock")
    except OSError as exc:
        return _fail(f"{exc.filename or args.path}: {exc.strerror}")
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
        _fail(f"{command[0]}: command not found")
        return 127
    except PermissionError:
        _fail(f"{command[0]}: permission denied")
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


def _locks(args: argparse.Namespace) -> int:
    rows: list[tuple[str, Holder]] = []
    if os.path.isdir(args.path):
        for entry in sorted(os.scandir(args.path), key=lambda e: e.name):
            if entry.is_file(follow_symlinks=False):
                rows += [(entry.path, h) for h in file_holders(entry.path)]
    else:
        for path in dict.fromkeys([args.path, FileLock(args.path).lockfile]):
            rows += [(path, h) for h in file_holders(path)]
    if args.json:
        print(json.dumps([{"path": path, **h._asdict()} for path, h in rows], indent=2))
    else:
        for path, h in rows:
            print(f"{path}\t{h.pid}\t{h.mode}\t{h.kind}\t{_printable(h.command)}")
    return 0 if rows else 1


def _printable(text: str) -> str:
    """text with control characters escaped, so that a holder stays on one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
