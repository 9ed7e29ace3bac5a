"""The ``latchwire`` command: one module a subcommand.

    latchwire lock [--shared] [--timeout S | --nonblock] [--file] PATH -- COMMAND [ARG...]
    latchwire locks [--json] PATH|DIR
    latchwire ip links|addrs|routes|neigh [-4|-6] [--table N|all] [--json] [--netns NAME]
    latchwire monitor [--netns NAME] [--json] [link|addr|route|neigh ...]

``lock`` takes the same lock as ``FileLock(PATH)`` in a program (``.NAME.~lock~``
beside PATH; ``--file`` locks PATH itself), runs COMMAND holding it, and exits
with COMMAND's status (128+N if a signal N ended it). When the lock is busy
(``--nonblock``), the wait timed out, or the lock file cannot be opened, it
prints one line and exits 1, as flock(1) does. The lock's descriptor is not
inherited: COMMAND cannot release it, and it goes when this process ends.

``locks`` lists the processes holding locks on PATH (and on PATH's lock file),
or on every file in DIR; it exits 1 when there are none.

``ip`` shows what ``ip link/addr/route/neigh show`` shows, read through
latchwire's rtnetlink decoder; with ``--json`` in ``ip -j``'s format (same keys
and value formats), so scripts can switch. Routes are IPv4 of the main table
unless ``-6`` says otherwise (``--table all``: both families, as ip).
``monitor`` prints changes as they happen (one JSON object a line with ``--json``; deletions carry
``"deleted": true``), and after lost notifications a resync line and the
differences. Errors print one line and exit 1.

This module is the command line itself (every option and its help); each
subcommand's module (``lock``, ``locks``, ``ip``, ``monitor``) is imported only
when that subcommand runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from latchwire.cli._common import fail

__all__ = ["main"]

AF_INET = 2
AF_INET6 = 10
# The object words of ``latchwire ip`` (latchwire.cli.ip.OBJECTS says what each shows).
_IP_OBJECTS = ("addr", "addrs", "link", "links", "neigh", "neighbours", "route", "routes")


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

    ip = sub.add_parser("ip", help="show links, addresses, routes or neighbours, as ip does")
    ip.add_argument("object", choices=_IP_OBJECTS, metavar="links|addrs|routes|neigh")
    family = ip.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=AF_INET,
                        help="IPv4 only")
    family.add_argument("-6", dest="family", action="store_const", const=AF_INET6,
                        help="IPv6 only")
    ip.add_argument("--table", metavar="N|all", type=_table,
                    help="routes of table N, or of every table")
    ip.add_argument("--json", "-j", action="store_true", help="ip -j's JSON")
    ip.add_argument("--netns", "-n", metavar="NAME", help="a namespace under /run/netns")

    monitor = sub.add_parser("monitor", help="print rtnetlink changes as they happen")
    monitor.add_argument("objects", nargs="*", metavar="link|addr|route|neigh",
                         help="what to watch (default: link addr route)")
    monitor.add_argument("--json", "-j", action="store_true", help="one JSON object a line")
    monitor.add_argument("--netns", "-n", metavar="NAME", help="a namespace under /run/netns")
    return parser


def _table(text: str) -> int | str:
    """--table's value: "all" or a table number."""
    if text == "all":
        return text
    if not text.isdigit() or not 0 < int(text) < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'all' nor a table number")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "lock":
        from latchwire.cli.lock import run
        return run(args)
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
