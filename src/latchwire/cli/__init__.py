"""The ``latchwire`` command, one module a subcommand::

    latchwire lock [--shared] [--timeout S | --nonblock] [--file] [--close] [--flock]
                   [--fair] PATH -- COMMAND [ARG...]
    latchwire locks [--json] [--waiters] PATH|DIR
    latchwire ip links|addrs|routes|neigh [-4|-6] [--table N|all] [--json] [--netns NAME]
    latchwire monitor [--netns NAME] [--json] [link|addr|route|neigh ...]
    latchwire --version

This module is the command line itself: every option, its help, the exit
statuses (in each subcommand's ``--help``) and the usage errors, which print
one line and exit 2. Each subcommand's module (``lock``, ``locks``, ``ip``,
``monitor``) is imported only when that subcommand runs, so that ``latchwire
lock`` loads neither the netlink layer nor asyncio. ``ip``, ``locks`` and
``monitor`` die of SIGPIPE when their reader goes away (``| head``), quietly,
as ip does; ``lock`` leaves SIGPIPE to COMMAND.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from latchwire import __version__
from latchwire._core import check_timeout
from latchwire.cli._common import fail

TYPE_CHECKING = False  # not typing's: see latchwire.locking
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = ["main"]

AF_INET = 2
AF_INET6 = 10
# The object words of ``latchwire ip`` (latchwire.cli.ip.OBJECTS says what each shows).
_IP_OBJECTS = ("addr", "addrs", "link", "links", "neigh", "neighbours", "route", "routes")

_LOCK_EPILOG = """\
COMMAND inherits the lock, as under flock(1): the open file description that
holds it stays open in COMMAND (and in whatever COMMAND starts without closing
it), and the lock lives until the last of them and latchwire has ended. So a
latchwire killed with SIGKILL (the OOM killer) leaves the lock held by COMMAND.
--close keeps the lock in latchwire alone: COMMAND does not hold it, and it goes
when latchwire does. Classic POSIX locks (LATCHWIRE_LOCKS=posix, or a kernel
without OFD locks) belong to a process and cannot be inherited: they stay with
latchwire, as with --close. SIGTERM and SIGHUP are passed on to COMMAND;
SIGINT and SIGQUIT reach it from the terminal.

--flock also takes a flock(2) lock of the same mode on the lock file, for
programs that lock it with flock(1) or flock(2): OFD and flock locks do not
conflict with each other.

--fair waits in arrival order among fair users of the lock file (latchwire lock
--fair, FileLock(fair=True)): each takes a ticket in the queue file beside it
(LOCKFILE.~queue~) and waits for those ahead. Unfair users still exclude fair
ones, but are not queued and may overtake them.

exit status: COMMAND's (128+N if signal N ended it); 1 if the lock is busy
(--nonblock), the wait timed out, or the lock file cannot be opened; 2 for a
usage error; 126 if COMMAND cannot be run; 127 if it is not found.
"""

_LOCKS_EPILOG = """\
columns (tab-separated, after a header line): PATH (the file locked), PID,
MODE (shared or exclusive), KIND and COMMAND (the holder's command line).
KIND is ofd (open file description locks: FileLock, latchwire lock), posix
(classic fcntl/lockf locks) or flock (flock(2): flock(1), latchwire lock
--flock). ofd and posix locks exclude each other; flock locks exclude only
other flock locks. So a flock holder never keeps an ofd or posix lock from
being taken, nor the other way round: a file's ofd and posix holders are listed
first, then its flock holders, and when a file has both, a note on stderr says
they do not conflict. --json gives the same fields (path, pid, mode, kind,
command).

--waiters adds TID, STATE (holds or waits) and, for each wait, QUEUE (its place
among the waits on that file, in the order they began; ? for a process that
does not use latchwire, whose waits show in the kernel only and are listed
last) and WAITED (seconds so far); holders come first, with - there. A fair
lock's waiters (lock --fair, FileLock(fair=True)) behind the first wait in the
queue file, in ticket order: STATE queued. Then one
line for each wait cycle among the waiting threads ("cycle: ..."), which
latchwire breaks with LockDeadlock in the thread that closes it. --json
--waiters gives an object: holders, waiters (with queue, waited and each
waiter's holds) and cycles. Waits of other users' processes are seen only by
root.

exit status: 0 if some process holds a lock (or, with --waiters, waits); 1 if
none does; 2 for a usage error; 3 if neither PATH nor its lock file exists, or
PATH cannot be read.
"""

_IP_EPILOG = """\
exit status: 0; 1 on an error (one line on stderr); 2 for a usage error.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help with the epilogs' lines kept, as wide as the terminal. argparse makes a
    formatter for every add_argument, and its own asks shutil for the width:
    shutil's import (with zlib, bz2, lzma) is a tenth of what latchwire lock costs."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)


def _columns() -> int:
    """The terminal's width, as shutil.get_terminal_size() says it (COLUMNS first)."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _Parser(argparse.ArgumentParser):
    """A parser whose usage errors are one line: what is wrong, and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = _Parser(prog="latchwire", description="latchwire's command line",
                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"latchwire {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    raw = _Formatter

    lock = sub.add_parser("lock", help="run a command holding a file lock",
                          description="Run COMMAND holding the lock FileLock(PATH) takes\n"
                          "(.NAME.~lock~ beside PATH).", epilog=_LOCK_EPILOG, formatter_class=raw)
    lock.add_argument("--shared", "-s", action="store_true", help="take the lock shared")
    wait = lock.add_mutually_exclusive_group()
    wait.add_argument("--timeout", "-w", type=_timeout, metavar="S",
                      help="give up after S seconds (0: try once; inf: wait as long as it "
                      "takes)")
    wait.add_argument("--nonblock", "-n", action="store_true", help="fail at once if busy")
    lock.add_argument("--file", action="store_true",
                      help="lock PATH itself, not .NAME.~lock~ beside it")
    lock.add_argument("--close", "-o", action="store_true",
                      help="COMMAND does not inherit the lock: it is held by latchwire alone")
    lock.add_argument("--flock", action="store_true",
                      help="also take a flock(2) lock, for programs using flock(1)")
    lock.add_argument("--fair", action="store_true",
                      help="wait in arrival order (a queue file, PATH's lock file.~queue~)")
    lock.add_argument("path", metavar="PATH")
    lock.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")

    locks = sub.add_parser("locks", help="list the holders of a lock file, or of a directory's",
                           description="List the processes holding locks on PATH and on\n"
                           "PATH's lock file (.NAME.~lock~), or on every file in DIR.",
                           epilog=_LOCKS_EPILOG, formatter_class=raw)
    locks.add_argument("--json", action="store_true", help="one JSON array (an object with "
                       "--waiters)")
    locks.add_argument("--waiters", "-w", action="store_true",
                       help="also who waits, in the order the waits began, and any cycle")
    locks.add_argument("path", metavar="PATH|DIR")

    ip = sub.add_parser("ip", help="show links, addresses, routes or neighbours, as ip does",
                        description="What ip link/addr/route/neigh show prints; with --json,\n"
                        "what ip -j prints (ip -j -s -d for links).", epilog=_IP_EPILOG,
                        formatter_class=raw)
    ip.add_argument("object", choices=_IP_OBJECTS, metavar="links|addrs|routes|neigh")
    family = ip.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=AF_INET,
                        help="IPv4 only")
    family.add_argument("-6", dest="family", action="store_const", const=AF_INET6,
                        help="IPv6 only")
    ip.add_argument("--table", metavar="N|all", type=_table,
                    help="routes of table N, or of every table (routes only)")
    ip.add_argument("--json", "-j", action="store_true", help="ip -j's JSON")
    ip.add_argument("--netns", "-n", metavar="NAME", help="a namespace under /run/netns")

    monitor = sub.add_parser("monitor", help="print rtnetlink changes as they happen",
                             epilog=_IP_EPILOG, formatter_class=raw)
    monitor.add_argument("objects", nargs="*", metavar="link|addr|route|neigh",
                         help="what to watch (default: link addr route)")
    monitor.add_argument("--json", "-j", action="store_true", help="one JSON object a line")
    monitor.add_argument("--netns", "-n", metavar="NAME", help="a namespace under /run/netns")
    return parser, {"lock": lock, "locks": locks, "ip": ip, "monitor": monitor}


def _timeout(text: str) -> float | None:
    """--timeout's value, read as every latchwire timeout is (None: no limit)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    try:
        return check_timeout(seconds)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from None


def _table(text: str) -> int | str:
    """--table's value: "all" or a table number."""
    if text == "all":
        return text
    if not text.isdigit() or not 0 < int(text) < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'all' nor a table number")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with argv (default: sys.argv[1:]); the exit status.

    What each subcommand does is the package's description above. ``lock`` blocks
    in the kernel for as long as ``--timeout`` allows (forever without it) and then
    for as long as COMMAND runs; usage errors exit 2 through SystemExit.
    """
    parser, subparsers = _parser()
    args = parser.parse_args(argv)
    if args.command == "lock":
        args.argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not args.argv:
            subparsers["lock"].error("no COMMAND given (latchwire lock PATH -- COMMAND [ARG...])")
        from latchwire.cli.lock import run
        return run(args)
    if args.command == "ip" and args.table is not None and args.object not in ("route", "routes"):
        subparsers["ip"].error(f"--table applies to routes only, not to {args.object}")
    # As ip: a reader that goes away (latchwire ip ... | head) ends the process, quietly.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if args.command == "locks":
        from latchwire.cli.locks import run
        return run(args)
    try:
        if args.command == "ip":
            from latchwire.cli.ip import run
        else:
            from latchwire.cli.monitor import run
        return run(args)
    except (OSError, ValueError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
