"""rtnetlink records as ``ip -j`` shows them, and as ``ip`` prints them.

Each function turns a record into the dict ``ip -j`` would print for it (same
keys, same value formats, same omissions of default values), so that a
script can switch from parsing ``ip -j`` to ``latchwire ip --json``; the text
forms are one line a record in ``ip``'s layout. ``names`` maps link indexes to
names (for ``dev``, ``master`` and ``link``): a ``Names``, which, like ip,
asks for a link it does not know and calls one that does not exist ``ifN``;
``flags`` maps them to IFF_* flags (for a veth's M-DOWN).

Routes, of which there may be 100,000, are written by the compiled
``RouteFormat`` (``route_format()``), straight to text or JSON, with the names
below; the other records go through dicts.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from latchwire._core import Address, Link, Neighbour, RouteEntry, RouteFormat

__all__ = ["Names", "address_json", "link_json", "neighbour_json", "record_json",
           "route_format", "route_json", "text"]

Json = dict[str, Any]

IFF_UP = 0x1
IFF_RUNNING = 0x40
# linux/if.h's IFF_* in the order ip prints them.
_LINK_FLAGS = (
    (0x8, "LOOPBACK"), (0x2, "BROADCAST"), (0x10, "POINTOPOINT"), (0x1000, "MULTICAST"),
    (0x80, "NOARP"), (0x200, "ALLMULTI"), (0x100, "PROMISC"), (0x400, "MASTER"),
    (0x800, "SLAVE"), (0x4, "DEBUG"), (0x8000, "DYNAMIC"), (0x4000, "AUTOMEDIA"),
    (0x2000, "PORTSEL"), (0x20, "NOTRAILERS"), (0x1, "UP"), (0x10000, "LOWER_UP"),
    (0x20000, "DORMANT"), (0x40000, "ECHO"),
)
_LINK_TYPES = {1: "ether", 772: "loopback", 65534: "none", 776: "sit", 768: "ipip",
               778: "gre", 823: "ip6gre", 769: "tunnel6"}
_LINKMODES = ("DEFAULT", "DORMANT", "TESTING")
_SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
_TABLES = {253: "default", 254: "main", 255: "local"}
_ROUTE_TYPES = ("none", "unicast", "local", "broadcast", "anycast", "multicast",
                "blackhole", "unreachable", "prohibit", "throw", "nat", "xresolve")
_PROTOCOLS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated",
              9: "ra", 10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp",
              15: "ntk", 16: "dhcp", 17: "mrouted", 18: "keepalived", 42: "babel",
              99: "openr", 186: "bgp", 187: "isis", 188: "ospf", 189: "rip", 192: "eigrp"}
# RTNH_F_* and RTM_F_* of rtm_flags / rtnh_flags, as ip names them, in ip's order.
_ROUTE_FLAGS = ((1, "dead"), (4, "onlink"), (2, "pervasive"), (8, "offload"), (64, "trap"),
                (0x100, "notify"), (16, "linkdown"), (32, "unresolved"), (0x4000, "rt_offload"),
                (0x8000, "rt_trap"), (0x20000000, "rt_offload_failed"))
_PREFS = {0: "medium", 1: "high", 3: "low"}
# IFA_F_* that ip -j shows as true-valued keys, in bit order (permanent: see address_info).
_ADDR_FLAGS = ((0x01, "secondary"), (0x02, "nodad"), (0x04, "optimistic"),
               (0x08, "dadfailed"), (0x10, "home"), (0x20, "deprecated"), (0x40, "tentative"),
               (0x80, "permanent"), (0x100, "mngtmpaddr"), (0x200, "noprefixroute"),
               (0x400, "autojoin"), (0x800, "stable-privacy"))
IFA_F_SECONDARY = 0x01
IFA_F_PERMANENT = 0x80
_NUD_STATES = ((0x01, "INCOMPLETE"), (0x02, "REACHABLE"), (0x04, "STALE"), (0x08, "DELAY"),
               (0x10, "PROBE"), (0x20, "FAILED"), (0x40, "NOARP"), (0x80, "PERMANENT"))
NTF_ROUTER = 0x80
_STATS_RX = (("bytes", "rx_bytes"), ("packets", "rx_packets"), ("errors", "rx_errors"),
             ("dropped", "rx_dropped"), ("over_errors", "rx_over_errors"),
             ("multicast", "multicast"))
_STATS_TX = (("bytes", "tx_bytes"), ("packets", "tx_packets"), ("errors", "tx_errors"),
             ("dropped", "tx_dropped"), ("carrier_errors", "tx_carrier_errors"),
             ("collisions", "collisions"))


_ETC = "/etc/iproute2"


class Names(dict[int, str]):
    """Link names by index. A missing one is looked up with ``resolve(index)``
    (the kernel's answer, remembered) and, when that finds nothing, shown as
    ip shows a link that is gone: ``ifN``."""

    def __init__(self, links: Iterable[Link] = (),
                 resolve: Callable[[int], str | None] | None = None) -> None:
        super().__init__((link.index, link.name) for link in links)
        self._resolve = resolve

    def __missing__(self, index: int) -> str:
        name = self._resolve(index) if self._resolve is not None else None
        if name is None:
            return f"if{index}"
        self[index] = name
        return name


def _name(names: Mapping[int, str], index: int) -> str:
    try:
        return names[index]
    except KeyError:
        return f"if{index}"


def _family_name(family: int) -> str:
    return "inet" if family == socket.AF_INET else "inet6"


def _iproute2_names(file: str, known: Mapping[int, str]) -> dict[int, str]:
    """known, with what iproute2's configuration file (rt_tables, rt_dsfield:
    "NUMBER NAME" lines) names, as ip reads them; known alone if it cannot be read."""
    out = dict(known)
    try:
        with open(f"{_ETC}/{file}", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        words = line.split("#", 1)[0].split()
        if len(words) >= 2:
            try:
                out[int(words[0], 0)] = words[1]
            except ValueError:
                continue
    return out


def _names_256(known: Mapping[int, str], hexadecimal: bool = False) -> list[str]:
    return [known.get(i, f"0x{i:02x}" if hexadecimal else str(i)) for i in range(256)]


def route_format(names: Mapping[int, str], as_json: bool, one_table: bool = False
                 ) -> RouteFormat:
    """The compiled writer of routes as ``ip route show`` (or ``ip -j``, with
    as_json) prints them, naming links through names and everything else as ip
    names it (table and TOS names from /etc/iproute2 as well); one_table: the
    routes of one table asked for, whose table ip does not print."""
    types = dict(enumerate(_ROUTE_TYPES))
    return RouteFormat(names, as_json, _names_256(types), _names_256(_PROTOCOLS),
                       _names_256(_SCOPES), _names_256(_PREFS),
                       _names_256(_iproute2_names("rt_dsfield", {}), hexadecimal=True),
                       _iproute2_names("rt_tables", _TABLES), _ROUTE_FLAGS,
                       show_table=not one_table)


def link_flags(link: Link, flags: Mapping[int, int]) -> list[str]:
    """The flags list ip shows for link (NO-CARRIER and M-DOWN included)."""
    out = ["NO-CARRIER"] if link.flags & IFF_UP and not link.flags & IFF_RUNNING else []
    out += [name for bit, name in _LINK_FLAGS if link.flags & bit]
    peer = link.link
    if peer is not None and link.link_netnsid is None and peer in flags \
            and not flags[peer] & IFF_UP:
        out.append("M-DOWN")
    return out


def link_json(link: Link, names: Mapping[int, str], flags: Mapping[int, int]) -> Json:
    """``ip -j -s -d link`` for one link (the fields latchwire decodes)."""
    out: Json = {"ifindex": link.index}
    if link.link is not None and link.link != link.index:
        if link.link_netnsid is None and link.link in names:
            out["link"] = names[link.link]
        else:
            out["link_index"] = link.link
    out["ifname"] = link.name
    out["flags"] = link_flags(link, flags)
    out["mtu"] = link.mtu
    if link.qdisc:
        out["qdisc"] = link.qdisc
    if link.master is not None:
        out["master"] = _name(names, link.master)
    out["operstate"] = link.operstate
    if link.linkmode is not None:
        out["linkmode"] = (_LINKMODES[link.linkmode] if link.linkmode < len(_LINKMODES)
                           else str(link.linkmode))
    if link.group is not None:
        out["group"] = "default" if link.group == 0 else str(link.group)
    if link.txqlen is not None:
        out["txqlen"] = link.txqlen
    out["link_type"] = _LINK_TYPES.get(link.type, str(link.type))
    if link.mac:
        out["address"] = link.mac
        out["broadcast"] = link.broadcast
    if link.link_netnsid is not None:
        out["link_netnsid"] = link.link_netnsid
    if link.min_mtu is not None:
        out["min_mtu"] = link.min_mtu
    if link.max_mtu is not None:
        out["max_mtu"] = link.max_mtu
    if link.kind or link.slave_kind:
        info: Json = {}
        if link.kind:
            info["info_kind"] = link.kind
        if link.slave_kind:
            info["info_slave_kind"] = link.slave_kind
        out["linkinfo"] = info
    stats = link.stats
    if stats is not None:
        out["stats64"] = {"rx": {key: stats[name] for key, name in _STATS_RX},
                          "tx": {key: stats[name] for key, name in _STATS_TX}}
    return out


def address_info(addr: Address) -> Json:
    """One entry of ``ip -j addr``'s addr_info."""
    out: Json = {"family": _family_name(addr.family), "local": addr.local}
    if addr.address != addr.local:
        out["address"] = addr.address
    out["prefixlen"] = addr.prefixlen
    if addr.broadcast is not None:
        out["broadcast"] = addr.broadcast
    out["scope"] = _SCOPES.get(addr.scope, str(addr.scope))
    for bit, name in _ADDR_FLAGS:  # as ip: in bit order, "dynamic" where "permanent" is not
        if bit == IFA_F_PERMANENT:
            if not addr.flags & bit:
                out["dynamic"] = True
        elif addr.flags & bit:
            secondary6 = bit == IFA_F_SECONDARY and addr.family == socket.AF_INET6
            out["temporary" if secondary6 else name] = True
    if addr.label:
        out["label"] = addr.label
    if addr.valid_lft is not None:
        out["valid_life_time"] = addr.valid_lft
        out["preferred_life_time"] = addr.preferred_lft
    return out


def address_json(addr: Address, names: Mapping[int, str]) -> Json:
    """An address on its own (monitor): its link, then the addr_info entry."""
    return {"ifindex": addr.index, "ifname": _name(names, addr.index), **address_info(addr)}


def route_json(route: RouteEntry, names: Mapping[int, str]) -> Json:
    """``ip -j route show table all`` for one route (written by route_format())."""
    out: Json = json.loads(route_format(names, True).render([route]))
    return out


def neighbour_json(neigh: Neighbour, names: Mapping[int, str]) -> Json:
    """``ip -j neigh`` for one entry."""
    out: Json = {} if neigh.dst is None else {"dst": neigh.dst}  # a bridge FDB entry has none
    out["dev"] = _name(names, neigh.index)
    if neigh.lladdr is not None:
        out["lladdr"] = neigh.lladdr
    if neigh.flags & NTF_ROUTER:
        out["router"] = None
    states = [name for bit, name in _NUD_STATES if neigh.state & bit]
    out["state"] = states or ["NONE"]
    return out


def record_json(record: Link | Address | RouteEntry | Neighbour, names: Mapping[int, str],
                flags: Mapping[int, int]) -> Json:
    """Any record as its ip -j dict, with ``"deleted": true`` for a deletion (as
    ``ip monitor`` marks them)."""
    if isinstance(record, Link):
        out = link_json(record, names, flags)
    elif isinstance(record, Address):
        out = address_json(record, names)
    elif isinstance(record, RouteEntry):
        out = route_json(record, names)
    else:
        out = neighbour_json(record, names)
    if record.deleted:
        out = {"deleted": True, **out}
    return out


def text(kind: str, entry: Json) -> str:
    """One line in ip's layout for an ip -j dict of kind "link", "addr" or
    "neigh" (a deletion starts with "Deleted "); routes: route_format()."""
    head = "Deleted " if entry.get("deleted") else ""
    if kind == "link":
        line = (f"{entry['ifindex']}: {entry['ifname']}: <{','.join(entry['flags'])}> "
                f"mtu {entry['mtu']}")
        line += _words(entry, ("master", "operstate"), {"operstate": "state"})
        if "address" in entry:
            line += f" link/{entry['link_type']} {entry['address']}"
        return head + line
    if kind == "addr":
        line = (f"{entry['ifindex']}: {entry['ifname']}    {entry['family']} "
                f"{entry['local']}/{entry['prefixlen']}")
        return head + line + _words(entry, ("broadcast", "scope", "label"),
                                    {"broadcast": "brd"})
    line = " ".join([*([str(entry["dst"])] if "dst" in entry else []), f"dev {entry['dev']}"])
    line += _words(entry, ("lladdr",), {}) + (" router" if "router" in entry else "")
    return head + line + " " + " ".join(entry["state"])


def _words(entry: Json, keys: tuple[str, ...], labels: Mapping[str, str]) -> str:
    return "".join(f" {labels.get(key, key)} {entry[key]}" for key in keys if key in entry)
