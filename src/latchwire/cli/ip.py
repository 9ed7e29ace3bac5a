"""``latchwire ip``: links, addresses, routes and neighbours as ``ip`` shows them.

Routes are streamed: each received datagram's routes are written out by the
compiled ``RouteFormat`` and dropped before the next is read, so 100,000 routes
cost what one datagram's do, in time per route and in memory. Links, addresses
and neighbours (hundreds, not hundreds of thousands) go through ipjson's dicts.
"""

from __future__ import annotations

import argparse
import json
import sys

from latchwire import ipjson, rtnl
from latchwire.errors import DumpInterrupted, NetlinkError

# The object words latchwire ip takes, and the kind of record each shows.
OBJECTS = {"links": "link", "link": "link", "addrs": "addr", "addr": "addr",
           "routes": "route", "route": "route", "neigh": "neigh", "neighbours": "neigh"}
_NUD_NOARP = 0x40
# The keys ip -j addr shows of a link, before its addr_info.
_ADDR_LINK_KEYS = ("ifindex", "link", "link_index", "ifname", "flags", "mtu", "qdisc", "master",
                   "operstate", "group", "txqlen", "link_type", "address", "broadcast",
                   "link_netnsid")
# What ip says of a dump the kernel flagged inconsistent (and goes on, as here).
INTERRUPTED = "Dump was interrupted and may be inconsistent."


def link_names(ip: rtnl.Route, links: list[rtnl.Link]) -> ipjson.Names:
    """The names of links by index; one not among them is asked of the kernel,
    as ip asks (a link made since the dump), and is ifN if it is gone."""
    def resolve(index: int) -> str | None:
        try:
            return ip.link(index).name
        except NetlinkError:
            return None

    return ipjson.Names(links, resolve)


def run(args: argparse.Namespace) -> int:
    kind = OBJECTS[args.object]
    with rtnl.Route(args.netns) as ip:
        links = ip.links()
        names = link_names(ip, links)
        if kind == "route":
            return _routes(ip, args, names)
        flags = {link.index: link.flags for link in links}
        entries: list[ipjson.Json]
        if kind == "link":
            entries = [ipjson.link_json(link, names, flags) for link in links]
        elif kind == "addr":
            entries = _addr_entries(links, ip.addresses(args.family), names, flags,
                                    args.family is not None)
        else:  # as ip, without the NOARP pseudo-entries (multicast, broadcast)
            entries = [ipjson.neighbour_json(neigh, names)
                       for neigh in ip.neighbours(args.family) if neigh.state != _NUD_NOARP]
    if args.json:
        print(json.dumps(entries, separators=(",", ":")))
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


def _routes(ip: rtnl.Route, args: argparse.Namespace, names: ipjson.Names) -> int:
    """Write the routes out as they arrive (as ip: every family for --table
    all, else IPv4 unless -6). A dump the kernel flagged inconsistent is
    written whole and warned about, as ip does."""
    family = args.family or (None if args.table == "all" else rtnl.AF_INET)
    families = (rtnl.AF_INET, rtnl.AF_INET6) if family is None else (family,)
    fmt = ipjson.route_format(names, args.json, one_table=isinstance(args.table, int))
    out = sys.stdout.buffer
    interrupted = False
    first = True
    if args.json:
        out.write(b"[")
    for fam in families:
        try:
            for batch in ip.route_batches(fam, args.table):
                if not batch:
                    continue
                if args.json and not first:
                    out.write(b",")
                out.write(fmt.render(batch))
                first = False
        except DumpInterrupted:
            interrupted = True
    if args.json:
        out.write(b"]\n")
    out.flush()
    if interrupted:
        print(INTERRUPTED, file=sys.stderr)
    return 0


def _addr_entries(links: list[rtnl.Link], addresses: list[rtnl.Address], names: ipjson.Names,
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
