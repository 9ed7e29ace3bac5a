"""``latchwire ip``: links, addresses, routes and neighbours as ``ip`` shows them."""

from __future__ import annotations

import argparse
import json

from latchwire import ipjson, rtnl

# The object words latchwire ip takes, and the kind of record each shows.
OBJECTS = {"links": "link", "link": "link", "addrs": "addr", "addr": "addr",
           "routes": "route", "route": "route", "neigh": "neigh", "neighbours": "neigh"}
_NUD_NOARP = 0x40
# The keys ip -j addr shows of a link, before its addr_info.
_ADDR_LINK_KEYS = ("ifindex", "link", "link_index", "ifname", "flags", "mtu", "qdisc", "master",
                   "operstate", "group", "txqlen", "link_type", "address", "broadcast",
                   "link_netnsid")


def names_of(links: list[rtnl.Link]) -> tuple[dict[int, str], dict[int, int]]:
    """The names and IFF_* flags of links, by index."""
    return {link.index: link.name for link in links}, {link.index: link.flags for link in links}


def run(args: argparse.Namespace) -> int:
    kind = OBJECTS[args.object]
    table = args.table
    with rtnl.Route(args.netns) as ip:
        links = ip.links()
        names, flags = names_of(links)
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
