"""The ``latchwire`` command.

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
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from latchwire import ipjson, rtnl
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

    ip = sub.add_parser("ip", help="show links, addresses, routes or neighbours, as ip does")
    ip.add_argument("object", choices=sorted(_IP_OBJECTS), metavar="links|addrs|routes|neigh")
    family = ip.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=rtnl.AF_INET,
                        help="IPv4 only")
    family.add_argument("-6", dest="family", action="store_const", const=rtnl.AF_INET6,
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with argv (default: sys.argv[1:]); the exit status.

    What each subcommand does is the module's description above. ``lock`` blocks
    in the kernel for as long as ``--timeout`` allows (forever without it) and then
    for as long as COMMAND runs; argparse's own errors exit 2 through SystemExit.
    """
    args = _parser().parse_args(argv)
    if args.command == "lock":
        return _lock(args)
    if args.command == "locks":
        return _locks(args)
    try:
        return _ip(args) if args.command == "ip" else _monitor(args)
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


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


_IP_OBJECTS = {"links": "link", "link": "link", "addrs": "addr", "addr": "addr",
               "routes": "route", "route": "route", "neigh": "neigh", "neighbours": "neigh"}
_MONITOR_GROUPS = {"link": ("link",), "addr": ("ipv4_addr", "ipv6_addr"),
                   "route": ("ipv4_route", "ipv6_route"), "neigh": ("neigh",)}
_NUD_NOARP = 0x40
# The keys ip -j addr shows of a link, before its addr_info.
_ADDR_LINK_KEYS = ("ifindex", "link", "link_index", "ifname", "flags", "mtu", "qdisc", "master",
                   "operstate", "group", "txqlen", "link_type", "address", "broadcast",
                   "link_netnsid")


def _table(text: str) -> int | str:
    """--table's value: "all" or a table number."""
    if text == "all":
        return text
    if not text.isdigit() or not 0 < int(text) < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'all' nor a table number")
    return int(text)


def _names(links: list[rtnl.Link]) -> tuple[dict[int, str], dict[int, int]]:
    return {link.index: link.name for link in links}, {link.index: link.flags for link in links}


def _ip(args: argparse.Namespace) -> int:
    kind = _IP_OBJECTS[args.object]
    table = args.table
    with rtnl.Route(args.netns) as ip:
        links = ip.links()
        names, flags = _names(links)
        entries: list[ipjson.Json]
        if kind == "link":
            entries = [ipjson.link_json(link, names, flags) for link in links]
        elif kind == "addr":
            entries = _addr_entries(links, ip.addresses(args.family), names, flags,
                                    args.family is not None)
        elif kind == "route":
            # As ip: every family for every table, else IPv4 unless -6.
            family = args.family or (None if table == "all" else rtnl.AF_INET)
            entries = [ipjson.route_json(route, names) for route in ip.routes(family, table)]
        else:  # as ip, without the NOARP pseudo-entries (multicast, broadcast)
            entries = [ipjson.neighbour_json(neigh, names)
                       for neigh in ip.neighbours(args.family) if neigh.state != _NUD_NOARP]
    if args.json:
        print(json.dumps(entries))
    elif kind == "addr":
        for entry in entries:
            print(ipjson.text("link", entry))
            for info in entry["addr_info"]:
                print(ipjson.text("addr", {"ifindex": entry["ifindex"],
                                           "ifname": entry["ifname"], **info}))
    else:
        for entry in entries:
            print(ipjson.text(kind, entry))
    return 0


def _addr_entries(links: list[rtnl.Link], addresses: list[rtnl.Address], names: dict[int, str],
                  flags: dict[int, int], only_with: bool) -> list[ipjson.Json]:
    """ip -j addr: each link (those with an address, when a family was asked
    for) with its addresses in addr_info."""
    by_link: dict[int, list[ipjson.Json]] = {}
    for addr in addresses:
        by_link.setdefault(addr.index, []).append(ipjson.address_info(addr))
    entries = []
    for link in links:
        if only_with and link.index not in by_link:
            continue
        full = ipjson.link_json(link, names, flags)
        entry = {key: full[key] for key in _ADDR_LINK_KEYS if key in full}
        entry["addr_info"] = by_link.get(link.index, [])
        entries.append(entry)
    return entries


def _monitor(args: argparse.Namespace) -> int:
    objects = args.objects or ["link", "addr", "route"]
    unknown = sorted(set(objects) - _MONITOR_GROUPS.keys())
    if unknown:
        raise ValueError(f"monitor: unknown objects {unknown}; choose from "
                         f"{sorted(_MONITOR_GROUPS)}")
    groups = [group for obj in objects for group in _MONITOR_GROUPS[obj]]
    with rtnl.Route(args.netns) as ip:
        names, flags = _names(ip.links())
        for event in ip.events(groups, resync=True):
            if isinstance(event, rtnl.Resync):
                counts = {"added": event.added, "changed": event.changed,
                          "removed": event.removed}
                print(json.dumps({"resync": counts}) if args.json else
                      "Resync: notifications were lost; differences follow "
                      f"({event.added} added, {event.changed} changed, {event.removed} removed)",
                      flush=True)
                continue
            if isinstance(event, rtnl.Link):
                if event.deleted:
                    names.pop(event.index, None)
                    flags.pop(event.index, None)
                else:
                    names[event.index] = event.name
                    flags[event.index] = event.flags
            entry = ipjson.record_json(event, names, flags)
            print(json.dumps(entry) if args.json else ipjson.text(_kind_of(event), entry),
                  flush=True)
    return 0


def _kind_of(record: rtnl.Record) -> str:
    return {rtnl.Link: "link", rtnl.Address: "addr", rtnl.RouteEntry: "route",
            rtnl.Neighbour: "neigh"}[type(record)]
