"""rtnetlink records as ``ip -j`` shows them, and as ``ip`` prints them.

Each function turns a record into the dict ``ip -j`` would print for it (same
keys, same value formats, same omissions of default values), so that a
script can switch from parsing ``ip -j`` to ``latchwire ip --json``; the text
forms are one line a record in ``ip``'s layout. ``names`` maps link indexes to
names (for ``dev``, ``master`` and ``link``); ``flags`` maps them to IFF_*
flags (for a veth's M-DOWN).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from latchwire._core import Address, Link, Neighbour, NextHop, RouteEntry

__all__ = ["address_json", "link_json", "neighbour_json", "record_json", "route_json", "text"]

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
_ROUTE_TYPES = ("unspec", "unicast", "local", "broadcast", "anycast", "multicast",
                "blackhole", "unreachable", "prohibit", "throw", "nat", "xresolve")
_PROTOCOLS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated",
              9: "ra", 10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp",
              15: "ntk", 16: "dhcp", 17: "mrouted", 18: "keepalived", 42: "babel",
              99: "openr", 186: "bgp", 187: "isis", 188: "ospf", 189: "rip", 192: "eigrp"}
# RTNH_F_* and RTM_F_* of rtm_flags / rtnh_flags, as ip names them.
_ROUTE_FLAGS = ((1, "dead"), (2, "pervasive"), (4, "onlink"), (8, "offload"), (64, "trap"),
                (0x100, "notify"), (16, "linkdown"), (32, "unresolved"),
                (0x20000000, "rt_offload_failed"))
_PREFS = {0: "medium", 1: "high", 3: "low"}
# IFA_F_* that ip -j shows as true-valued keys.
_ADDR_FLAGS = ((0x01, "secondary"), (0x02, "nodad"), (0x04, "optimistic"),
               (0x08, "dadfailed"), (0x10, "home"), (0x20, "deprecated"), (0x40, "tentative"),
               (0x100, "mngtmpaddr"), (0x200, "noprefixroute"), (0x400, "autojoin"),
               (0x800, "stable-privacy"))
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


def _family_name(family: int) -> str:
    return "inet" if family == socket.AF_INET else "inet6"


def _prefix(address: str | None, length: int, family: int) -> str:
    """ip's dst: "default", a bare host address, or address/length."""
    if address is None and length == 0:
        return "default"
    host = 32 if family == socket.AF_INET else 128
    return f"{address}" if length == host else f"{address}/{length}"


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
        out["master"] = names.get(link.master, link.master)
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
    if addr.family == socket.AF_INET6 and not addr.flags & IFA_F_PERMANENT:
        out["dynamic"] = True
    out.update((name, True) for bit, name in _ADDR_FLAGS if addr.flags & bit)
    if addr.label:
        out["label"] = addr.label
    if addr.valid_lft is not None:
        out["valid_life_time"] = addr.valid_lft
        out["preferred_life_time"] = addr.preferred_lft
    return out


def address_json(addr: Address, names: Mapping[int, str]) -> Json:
    """An address on its own (monitor): its link, then the addr_info entry."""
    return {"ifindex": addr.index, "ifname": names.get(addr.index, str(addr.index)),
            **address_info(addr)}


def _nexthop_json(hop: NextHop, names: Mapping[int, str]) -> Json:
    out: Json = {}
    if hop.gateway is not None:
        out["gateway"] = hop.gateway
    out["dev"] = names.get(hop.oif, str(hop.oif))
    out["weight"] = hop.weight
    out["flags"] = [name for bit, name in _ROUTE_FLAGS if hop.flags & bit]
    return out


def route_json(route: RouteEntry, names: Mapping[int, str]) -> Json:
    """``ip -j route show table all`` for one route."""
    out: Json = {}
    if route.type != 1:
        out["type"] = (_ROUTE_TYPES[route.type] if route.type < len(_ROUTE_TYPES)
                       else str(route.type))
    out["dst"] = _prefix(route.dst, route.dst_len, route.family)
    if route.src is not None:
        out["from"] = _prefix(route.src, route.src_len, route.family)
    if route.gateway is not None:
        out["gateway"] = route.gateway
    if route.oif is not None:
        out["dev"] = names.get(route.oif, str(route.oif))
    if route.table != 254:
        out["table"] = _TABLES.get(route.table, str(route.table))
    if route.protocol != 3:
        out["protocol"] = _PROTOCOLS.get(route.protocol, str(route.protocol))
    if route.scope != 0:
        out["scope"] = _SCOPES.get(route.scope, str(route.scope))
    if route.priority is not None:
        out["metric"] = route.priority
    if route.prefsrc is not None:
        out["prefsrc"] = route.prefsrc
    out["flags"] = [name for bit, name in _ROUTE_FLAGS if route.flags & bit]
    if route.mtu is not None:
        out["metrics"] = [{"mtu": route.mtu}]
    if route.nexthops:
        out["nexthops"] = [_nexthop_json(hop, names) for hop in route.nexthops]
    if route.pref is not None:
        out["pref"] = _PREFS.get(route.pref, str(route.pref))
    return out


def neighbour_json(neigh: Neighbour, names: Mapping[int, str]) -> Json:
    """``ip -j neigh`` for one entry."""
    out: Json = {"dst": neigh.dst, "dev": names.get(neigh.index, str(neigh.index))}
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
    """One line in ip's layout for an ip -j dict of kind "link", "addr", "route"
    or "neigh" (a deletion starts with "Deleted ")."""
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
    if kind == "route":
        line = entry["dst"] if entry.get("type") in (None, "unicast") else (
            f"{entry['type']} {entry['dst']}")
        line += _words(entry, ("from", "gateway", "dev", "table", "protocol", "scope",
                               "prefsrc", "metric"),
                       {"gateway": "via", "prefsrc": "src", "protocol": "proto"})
        line += "".join(f" {flag}" for flag in entry["flags"]) + _words(entry, ("pref",), {})
        for hop in entry.get("nexthops", []):
            line += " nexthop" + _words(hop, ("gateway", "dev", "weight"), {"gateway": "via"})
        return head + line
    line = str(entry["dst"]) + _words(entry, ("dev", "lladdr"), {})
    return head + line + " " + ",".join(entry["state"])


def _words(entry: Json, keys: tuple[str, ...], labels: Mapping[str, str]) -> str:
    return "".join(f" {labels.get(key, key)} {entry[key]}" for key in keys if key in entry)
