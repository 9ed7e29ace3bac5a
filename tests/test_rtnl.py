"""latchwire.rtnl against the kernel, in private network namespaces.

The module's namespace (``lwtest-rtnl-<hex>``, loaded with one ``ip -batch``)
holds 200 veth pairs (some up, some ports of two bridges, MTUs and queue
lengths all different), addresses of both families (broadcast, labels, finite
lifetimes, a metric), 10,000 IPv4 routes in three tables (gateways, metrics,
protocols, blackhole/unreachable/prohibit, a multipath route, a route MTU),
1,000 IPv6 routes (one multipath, one with a router preference) and a few
neighbour entries. What ``Route`` dumps is compared, field by field, with what
``ip -j`` reports; nothing on the expected side is decoded by latchwire.
Counters and lifetimes, which move on their own, must lie between two ``ip``
readings taken around latchwire's; the other fields must equal an ``ip``
reading that did not change across latchwire's.

Changes made through ``Route`` are checked with ``ip -j``, changes made with
``ip`` must arrive from ``events()`` (and ``events_async()``) in order, and an
Overrun forced with a small receive buffer must be resynced into exactly the
kernel's tables. Fresh namespaces serve the tests that change things.

The decoder is fed malformed messages built with ``struct`` from the UAPI
layouts (``linux/rtnetlink.h``, ``if_link.h``, ``if_addr.h``,
``neighbour.h``), and hypothesis mutates real captured messages and
round-trips the requests ``Route`` builds through ``netlink.parse``.
Nothing sleeps to synchronise: waits are ``recv`` timeouts and polls under a
deadline.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import ipaddress
import os
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lwnetns import IP, Churn, Netns, drop_netns, make_netns
from lwtest import BOUND, WAIT
from lwthreads import Worker, busy_thread, wait_in_poll

from latchwire import _core, netlink, rtnl
from latchwire.errors import NetlinkError, Overrun, ProtocolError
from latchwire.netlink import Message, Request, Socket
from latchwire.rtnl import Address, Link, Neighbour, Record, Resync, RouteEntry

pytestmark = [pytest.mark.usefixtures("watchdog"), pytest.mark.kernel]

AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6
SETTLE = 30.0  # how long a namespace may take to stop changing by itself (links coming up)

# ---------------------------------------------------------------------------
# UAPI layouts and numbers (linux/netlink.h, rtnetlink.h, if_link.h, if_addr.h, neighbour.h)

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
RTATTR = struct.Struct("=HH")  # len, type
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope,
#                                      type, flags
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex
IFA_CACHEINFO = struct.Struct("=IIII")  # prefered, valid, cstamp, tstamp

NLMSG_DONE = 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400

IFLA = dict(ADDRESS=1, BROADCAST=2, IFNAME=3, MTU=4, LINK=5, QDISC=6, MASTER=10, TXQLEN=13,
            OPERSTATE=16, LINKMODE=17, LINKINFO=18, STATS64=23, GROUP=27, NET_NS_FD=28,
            CARRIER=33, LINK_NETNSID=37, MIN_MTU=50, MAX_MTU=51)
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND = 1, 2, 4
VETH_INFO_PEER = 1
IFA = dict(ADDRESS=1, LOCAL=2, LABEL=3, BROADCAST=4, CACHEINFO=6, FLAGS=8, RT_PRIORITY=9,
           PROTO=11)
RTA = dict(DST=1, SRC=2, IIF=3, OIF=4, GATEWAY=5, PRIORITY=6, PREFSRC=7, METRICS=8,
           MULTIPATH=9, TABLE=15, VIA=18, PREF=20, EXPIRES=23)
RTAX_MTU = 2
NDA_DST, NDA_LLADDR = 1, 2
RT_TABLE_MAIN, RT_TABLE_LOCAL = 254, 255
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST = 0, 253, 254
RTN_UNICAST, RTN_LOCAL, RTN_BLACKHOLE = 1, 2, 6
IFF_UP, IFF_RUNNING = 0x1, 0x40

# How ip names the bits it shows (iproute2: print_link_flags, print_rt_flags,
# ifa_flag_data, nud_state_n2a, and the NTF_* booleans).
IFF_NAMES = {"UP": 0x1, "BROADCAST": 0x2, "DEBUG": 0x4, "LOOPBACK": 0x8, "POINTOPOINT": 0x10,
             "NOTRAILERS": 0x20, "NOARP": 0x80, "PROMISC": 0x100, "ALLMULTI": 0x200,
             "MASTER": 0x400, "SLAVE": 0x800, "MULTICAST": 0x1000, "PORTSEL": 0x2000,
             "AUTOMEDIA": 0x4000, "DYNAMIC": 0x8000, "LOWER_UP": 0x10000, "DORMANT": 0x20000,
             "ECHO": 0x40000}
RT_FLAG_NAMES = {"dead": 0x1, "pervasive": 0x2, "onlink": 0x4, "offload": 0x8, "linkdown": 0x10,
                 "unresolved": 0x20, "trap": 0x40, "notify": 0x100, "rt_offload": 0x4000,
                 "rt_trap": 0x8000, "rt_offload_failed": 0x20000000}
IFA_FLAG_NAMES = {"secondary": 0x1, "nodad": 0x2, "optimistic": 0x4, "dadfailed": 0x8,
                  "home": 0x10, "deprecated": 0x20, "tentative": 0x40, "mngtmpaddr": 0x100,
                  "noprefixroute": 0x200, "autojoin": 0x400, "stable-privacy": 0x800}
IFA_F_PERMANENT = 0x80
NUD_NAMES = {"INCOMPLETE": 0x1, "REACHABLE": 0x2, "STALE": 0x4, "DELAY": 0x8, "PROBE": 0x10,
             "FAILED": 0x20, "NOARP": 0x40, "PERMANENT": 0x80}
NTF_NAMES = {"proxy": 0x8, "extern_learn": 0x10, "offload": 0x20, "router": 0x80}
PREF_NAMES = {0: "medium", 1: "high", 3: "low"}  # ICMPV6_ROUTER_PREF_*
LINKMODES = ("DEFAULT", "DORMANT")


def rtattr(type: int, value: bytes) -> bytes:
    """One attribute (struct rtattr and value), padded to 4 bytes."""
    length = RTATTR.size + len(value)
    return RTATTR.pack(length, type) + value + b"\0" * (-length % 4)


def datagram(type: int, body: bytes, flags: int = 0) -> bytes:
    """One netlink message (header, body, padding), as the kernel would send it."""
    length = NLMSGHDR.size + len(body)
    return NLMSGHDR.pack(length, type, flags, 0, 0) + body + b"\0" * (-length % 4)


def datagram_of(msg: Message) -> bytes:
    """The message msg again as the bytes of a datagram of its own."""
    return datagram(msg.type, msg.payload, msg.flags)


def framed(request: Request) -> bytes:
    """The message a Request stands for (header padded, attributes after)."""
    return datagram(request.type, request.header + b"\0" * (-len(request.header) % 4)
                    + request.attrs, request.flags)


def prefix(text: str, family: int) -> str:
    """ip's dst ("default", "10.0.0.1", "10.0.0.0/8") as a network in canonical form."""
    if text == "default":
        text = "0.0.0.0/0" if family == AF_INET else "::/0"
    return str(ipaddress.ip_network(text))


def names_of(bits: int, table: dict[str, int]) -> set[str]:
    """The names table gives to the bits set in bits."""
    return {name for name, bit in table.items() if bits & bit}


# ---------------------------------------------------------------------------
# The module's namespace

PAIRS = 200
TABLE = 100  # 9,000 /32 routes (and a blackhole) live here; 1,000 more are in main
TABLE_BIG = 1000  # a table number beyond rtm_table's 8 bits


def world_lines() -> Iterator[str]:
    """The ip -batch commands that fill the module's namespace."""
    yield "link set lo up"
    yield "link add br0 type bridge"
    yield "link add br1 mtu 1400 type bridge"
    for i in range(PAIRS):
        yield (f"link add v{i}a mtu {1280 + 10 * (i % 50)} txqlen {100 + i} type veth "
               f"peer name v{i}b mtu {1500 + i} txqlen {500 * (i % 3)}")
    for i in range(PAIRS):
        if i % 10 == 0:
            yield f"link set v{i}b master br0"
        elif i % 10 == 5:
            yield f"link set v{i}b master br1"
        if i % 2 == 0:
            yield f"link set v{i}a up"
            yield f"link set v{i}b up"
        elif i % 4 == 1:
            yield f"link set v{i}a up"  # its peer stays down: LOWERLAYERDOWN, M-DOWN
    yield "link set br0 up"
    for i in range(64):
        if i % 2 == 0:
            yield f"addr add 10.{i}.0.1/24 brd + dev v{i}a label v{i}a:lw"
        else:
            yield f"addr add 10.{i}.0.1/24 dev v{i}a"
        yield f"addr add 2001:db8:{i:x}::1/64 dev v{i}a"
    yield "addr add 198.51.100.1/32 dev lo label lo:lw"
    yield "addr add 10.200.0.1/24 dev v2a valid_lft 3600 preferred_lft 1800"
    yield "addr add 10.201.0.1/24 dev v4a metric 50"
    yield "addr add 2001:db8:200::1/64 dev v2a valid_lft 7200 preferred_lft 3600"
    for j in range(9000):
        dst = f"10.128.{j >> 8}.{j & 255}/32"
        if j % 3 == 0:
            yield f"route add {dst} dev v{2 * (j % 8)}a table {TABLE}"
        elif j % 3 == 1:
            yield f"route add {dst} via 10.0.0.2 dev v0a metric {j % 5 * 10} table {TABLE}"
        else:
            yield f"route add {dst} via 10.4.0.2 dev v4a proto 99 table {TABLE}"
    for k in range(997):
        yield f"route add 10.129.{k >> 8}.{k & 255}/32 via 10.2.0.2 dev v2a metric {k % 7}"
    yield f"route add blackhole 10.130.0.0/16 table {TABLE}"
    yield "route add unreachable 10.131.0.0/16"
    yield "route add prohibit 10.132.0.0/16 table 101"
    yield "route add 10.133.0.0/16 dev v4a src 10.4.0.1"
    yield f"route add 10.134.0.0/16 dev v4a proto 42 table {TABLE_BIG}"
    yield "route add 10.135.0.0/16 via 10.4.0.2 dev v4a mtu 1400"
    yield "route add default via 10.0.0.2 dev v0a"
    yield ("route add 10.250.0.0/16 nexthop via 10.0.0.2 dev v0a weight 1 "
           "nexthop via 10.2.0.2 dev v2a weight 3")
    for k in range(997):
        table = f" table {TABLE}" if k % 4 == 0 else ""
        yield (f"route add 2001:db8:ff::{k:x}/128 via 2001:db8::2 dev v0a "
               f"metric {1024 + k % 3}{table}")
    yield "route add 2001:db8:fe::/64 via 2001:db8:2::2 dev v2a pref high"
    yield ("route add 2001:db8:fd::/64 nexthop via 2001:db8::2 dev v0a weight 2 "
           "nexthop via 2001:db8:2::2 dev v2a")
    yield f"route add blackhole 2001:db8:fc::/64 table {TABLE_BIG}"
    yield "neigh add 10.0.0.9 lladdr 02:00:00:00:00:09 dev v0a nud permanent"
    yield "neigh add 10.2.0.9 lladdr 02:00:00:00:02:09 dev v2a nud noarp"
    yield "neigh add 10.0.0.10 lladdr 02:00:00:00:00:0a dev v0a nud stale"
    yield "neigh add 2001:db8::9 lladdr 02:00:00:00:00:19 dev v0a nud permanent"


def quiet_ipv6(ns: Netns) -> None:
    """No duplicate address detection or router solicitations on links made in ns from
    now on: addresses are final at once and the links send less on their own."""
    assert IP is not None
    keys = [f"net.ipv6.conf.{c}.{k}=0" for c in ("all", "default")
            for k in ("accept_dad", "router_solicitations")]
    subprocess.run([IP, "netns", "exec", ns.name, "sysctl", "-qw", *keys], check=True,
                   capture_output=True, timeout=60)


def new_netns(setup: Iterable[str]) -> Netns:
    """A fresh namespace for this module, IPv6 quieted, then set up with setup."""
    ns = make_netns((), prefix="lwtest-rtnl")
    try:
        quiet_ipv6(ns)
        ns.batch(setup)
    except BaseException:
        drop_netns(ns)
        raise
    return ns


@pytest.fixture(scope="module")
def world() -> Iterator[Netns]:
    """The module's namespace: 200 veth pairs, 10,000 IPv4 and 1,000 IPv6 routes."""
    ns = new_netns(world_lines())
    try:
        yield ns
    finally:
        drop_netns(ns)


SCRATCH_SETUP = ("link set lo up",
                 "link add veth0 type veth peer name veth1",
                 "link set veth0 up",
                 "link set veth1 up",
                 "addr add 192.0.2.1/24 dev veth0",
                 "addr add 2001:db8::1/64 dev veth0")


@pytest.fixture
def scratch() -> Iterator[Netns]:
    """A namespace of the test's own: lo, veth0 (192.0.2.1/24, 2001:db8::1/64) <-> veth1."""
    ns = new_netns(SCRATCH_SETUP)
    try:
        yield ns
    finally:
        drop_netns(ns)


# ---------------------------------------------------------------------------
# Views of the tables: ip's (from its JSON) and latchwire's, in the same terms


class View(NamedTuple):
    """Records in comparable terms: fields that stay put, and counters (or
    lifetimes) that move by themselves, each by the record's identity."""

    fixed: dict[Any, Any]
    moving: dict[Any, dict[str, int]]


def settled(ip_view: Callable[[], View], mine: Callable[[], View], what: str
            ) -> tuple[View, View, View]:
    """ip's view, latchwire's, then ip's again, retaken until ip's fixed fields
    were the same before and after (the namespace had not settled yet)."""
    deadline = time.monotonic() + SETTLE
    while True:
        before, ours, after = ip_view(), mine(), ip_view()
        if before.fixed == after.fixed:
            return before, ours, after
        assert time.monotonic() < deadline, f"{what} kept changing for {SETTLE} s"


def assert_same(expected: dict[Any, Any], actual: dict[Any, Any], what: str) -> None:
    """expected == actual, failing with the first few differences."""
    if expected == actual:
        return
    missing = [k for k in expected if k not in actual][:5]
    extra = [k for k in actual if k not in expected][:5]
    differ = [(k, expected[k], actual[k]) for k in expected
              if k in actual and expected[k] != actual[k]][:5]
    pytest.fail(f"{what}: missing {missing}, extra {extra}, different (ip, latchwire) {differ}")


def assert_between(before: View, ours: View, after: View, rising: bool, what: str) -> None:
    """Each moving number of ours lies between ip's two readings (counters rise,
    lifetimes fall)."""
    for key, numbers in before.moving.items():
        for name, first in numbers.items():
            low, high = (first, after.moving[key][name]) if rising else \
                        (after.moving[key][name], first)
            assert low <= ours.moving[key][name] <= high, \
                f"{what} {key} {name}: {ours.moving[key][name]} not within [{low}, {high}]"


# Links

def ip_links(ns: Netns) -> View:
    """``ip -j -s -s -d -N link``: every link's fields and 64-bit counters."""
    entries = ns.json("-s", "-s", "-d", "-N", "link")
    index_of = {e["ifname"]: e["ifindex"] for e in entries}
    fixed, moving = {}, {}
    for e in entries:
        info = e.get("linkinfo", {})
        peer = index_of[e["link"]] if "link" in e else e.get("link_index")
        fixed[e["ifindex"]] = {
            "name": e["ifname"], "flags": set(e["flags"]), "mtu": e["mtu"],
            "txqlen": e.get("txqlen", 0),  # ip leaves out a queue length of 0
            "operstate": e["operstate"], "linkmode": e["linkmode"],
            "group": int(e["group"]), "qdisc": e.get("qdisc", ""), "type": e["link_type"],
            "mac": e.get("address", ""), "broadcast": e.get("broadcast", ""),
            "master": index_of[e["master"]] if "master" in e else None, "link": peer,
            "link_netnsid": e.get("link_netnsid"), "kind": info.get("info_kind", ""),
            "slave_kind": info.get("info_slave_kind", ""), "min_mtu": e.get("min_mtu"),
            "max_mtu": e.get("max_mtu")}
        moving[e["ifindex"]] = {
            (f"{way}_{name}" if name not in ("multicast", "collisions") else name): value
            for way in ("rx", "tx") for name, value in e["stats64"][way].items()
            if name != "carrier_changes"}  # IFLA_CARRIER_CHANGES, not a stats64 counter
    return View(fixed, moving)


def link_fields(link: Link, up: dict[int, bool]) -> dict[str, Any]:
    """A Link in ip's terms; up says which links are up (for M-DOWN, a lower link down)."""
    flags = names_of(link.flags, IFF_NAMES)
    if link.flags & IFF_UP and not link.flags & IFF_RUNNING:
        flags.add("NO-CARRIER")
    if link.link and not up.get(link.link, False):
        flags.add("M-DOWN")
    return {"name": link.name, "flags": flags, "mtu": link.mtu, "txqlen": link.txqlen,
            "operstate": link.operstate, "linkmode": LINKMODES[link.linkmode or 0],
            "group": link.group, "qdisc": link.qdisc, "type": f"[{link.type}]",
            "mac": link.mac, "broadcast": link.broadcast, "master": link.master,
            "link": link.link, "link_netnsid": link.link_netnsid, "kind": link.kind,
            "slave_kind": link.slave_kind, "min_mtu": link.min_mtu, "max_mtu": link.max_mtu}


def links_view(links: list[Link]) -> View:
    """Links in ip's terms, with their counters as the moving part."""
    up = {link.index: link.up for link in links}
    stats = {link.index: link.stats for link in links}
    return View({link.index: link_fields(link, up) for link in links},
                {index: counters or {} for index, counters in stats.items()})


# Addresses

def ip_addresses(ns: Netns) -> View:
    """``ip -j -N addr``: every address's fields and lifetimes."""
    fixed, moving = {}, {}
    for link in ns.json("-N", "addr"):
        for a in link["addr_info"]:
            family = AF_INET if a["family"] == "inet" else AF_INET6
            key = (family, link["ifindex"], a["local"], a["prefixlen"])
            flags = {name for name in IFA_FLAG_NAMES if name in a}
            if "temporary" in a:  # IFA_F_SECONDARY, as ip names it for IPv6
                flags.add("secondary")
            fixed[key] = {"address": a.get("address", a["local"]),
                          "broadcast": a.get("broadcast"), "label": a.get("label", ""),
                          "scope": int(a["scope"]), "flags": flags,
                          "permanent": "dynamic" not in a, "metric": a.get("metric")}
            moving[key] = {"valid": a["valid_life_time"], "preferred": a["preferred_life_time"]}
    return View(fixed, moving)


def addresses_view(addresses: list[Address]) -> View:
    """Addresses in ip's terms, with their lifetimes as the moving part."""
    fixed, moving = {}, {}
    for a in addresses:
        key = (a.family, a.index, a.local, a.prefixlen)
        fixed[key] = {"address": a.address, "broadcast": a.broadcast, "label": a.label,
                      "scope": a.scope, "flags": names_of(a.flags, IFA_FLAG_NAMES),
                      "permanent": bool(a.flags & IFA_F_PERMANENT), "metric": a.metric}
        assert a.valid_lft is not None and a.preferred_lft is not None
        moving[key] = {"valid": a.valid_lft, "preferred": a.preferred_lft}
    return View(fixed, moving)


# Routes

def ip_routes(ns: Netns, family: int, table: str = "all") -> View:
    """``ip -j -d -N route show table TABLE`` of family: every route's fields, as
    a count of routes with each set of fields."""
    index_of = ns.links()
    flag = "-4" if family == AF_INET else "-6"
    routes: Counter[tuple[tuple[str, Any], ...]] = Counter()
    for e in ns.json(flag, "-d", "-N", "route", "show", "table", table):
        mtu = next((m["mtu"] for m in e.get("metrics", []) if "mtu" in m), None)
        hops = tuple(sorted((h["gateway"], index_of[h["dev"]], h["weight"],
                             frozenset(h["flags"])) for h in e.get("nexthops", [])))
        shown = e.get("table", RT_TABLE_MAIN if table == "main" else table)  # one table: unsaid
        routes[route_fields(family=family, table=int(shown), dst=prefix(e["dst"], family),
                         gateway=e.get("gateway"), oif=index_of.get(e.get("dev", "")),
                         priority=e.get("metric"), protocol=int(e["protocol"]),
                         scope=int(e["scope"]), type=int(e["type"]), prefsrc=e.get("prefsrc"),
                         flags=frozenset(e["flags"]), nexthops=hops, pref=e.get("pref"),
                         mtu=mtu)] += 1
    return View(dict(routes), {})


def route_fields(**fields: Any) -> tuple[tuple[str, Any], ...]:
    """A route's fields as a hashable whole (routes are counted, not keyed: several
    may share any one identity)."""
    return tuple(sorted(fields.items()))


def routes_view(routes: list[RouteEntry]) -> View:
    """Routes in ip's terms, as a count of routes with each set of fields."""
    counted: Counter[tuple[tuple[str, Any], ...]] = Counter()
    for r in routes:
        zero = "0.0.0.0" if r.family == AF_INET else "::"
        hops = tuple(sorted((h.gateway, h.oif, h.weight, frozenset(names_of(h.flags,
                                                                              RT_FLAG_NAMES)))
                            for h in r.nexthops))
        counted[route_fields(family=r.family, table=r.table,
                          dst=str(ipaddress.ip_network(f"{r.dst or zero}/{r.dst_len}")),
                          gateway=r.gateway, oif=r.oif, priority=r.priority,
                          protocol=r.protocol, scope=r.scope, type=r.type, prefsrc=r.prefsrc,
                          flags=frozenset(names_of(r.flags, RT_FLAG_NAMES)), nexthops=hops,
                          pref=None if r.pref is None else PREF_NAMES[r.pref], mtu=r.mtu)] += 1
    return View(dict(counted), {})


# Neighbours

def ip_neighbours(ns: Netns) -> View:
    """``ip -j neigh show nud all``: every entry's fields."""
    index_of = ns.links()
    fixed = {}
    for e in ns.json("neigh", "show", "nud", "all"):
        family = AF_INET if ipaddress.ip_address(e["dst"]).version == 4 else AF_INET6
        fixed[(family, index_of[e["dev"]], e["dst"])] = {
            "lladdr": e.get("lladdr"), "state": set(e["state"]),
            "flags": {name for name in NTF_NAMES if name in e}}
    return View(fixed, {})


def neighbours_view(neighbours: list[Neighbour]) -> View:
    """Neighbour entries in ip's terms."""
    return View({(n.family, n.index, n.dst): {
        "lladdr": n.lladdr, "state": names_of(n.state, NUD_NAMES) or {"NONE"},
        "flags": names_of(n.flags, NTF_NAMES)} for n in neighbours}, {})


# ---------------------------------------------------------------------------
# Dumps equal what ip -j reports


def test_world_is_as_big_as_the_issue_asks(world: Netns) -> None:
    with rtnl.Route(world.name) as ip:
        links = ip.links()
        v4 = ip.routes(AF_INET, table="all")
        v6 = ip.routes(AF_INET6, table="all")
    assert sum(link.kind == "veth" for link in links) == 2 * PAIRS
    assert sum(r.table != RT_TABLE_LOCAL for r in v4) >= 10_000
    assert sum(r.table != RT_TABLE_LOCAL and r.dst_len == 128 for r in v6) >= 997


def test_links_equal_ip_field_by_field(world: Netns) -> None:
    with rtnl.Route(world.name) as ip:
        before, ours, after = settled(lambda: ip_links(world), lambda: links_view(ip.links()),
                                      "the links")
    assert_same(before.fixed, ours.fixed, "links")
    for index, counters in ours.moving.items():  # every counter ip shows has a name here
        assert set(before.moving[index]) <= set(counters), index
    assert_between(before, ours, after, rising=True, what="link counter")
    fields = list(ours.fixed.values())
    # The namespace has what the comparison must have seen.
    assert {f["operstate"] for f in fields} >= {"UP", "DOWN", "LOWERLAYERDOWN", "UNKNOWN"}
    assert {f["kind"] for f in fields} == {"", "veth", "bridge"}
    assert sum(f["master"] is not None for f in fields) == PAIRS // 5
    assert sum("M-DOWN" in f["flags"] for f in fields) >= PAIRS // 4
    assert len({f["mtu"] for f in fields}) > 50 and len({f["txqlen"] for f in fields}) > 50


def test_addresses_equal_ip_field_by_field(world: Netns) -> None:
    with rtnl.Route(world.name) as ip:
        before, ours, after = settled(lambda: ip_addresses(world),
                                      lambda: addresses_view(ip.addresses()), "the addresses")
        assert {a.family for a in ip.addresses(AF_INET6)} == {AF_INET6}
    assert_same(before.fixed, ours.fixed, "addresses")
    assert_between(before, ours, after, rising=False, what="address lifetime")
    fields = list(ours.fixed.values())
    assert sum(f["broadcast"] is not None for f in fields) == 32  # the "brd +" ones
    assert sum(f["label"].endswith(":lw") for f in fields) == 33
    assert sum(not f["permanent"] for f in fields) == 2
    assert {f["scope"] for f in fields} == {RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST}


@pytest.mark.parametrize("family", [AF_INET, AF_INET6], ids=["ipv4", "ipv6"])
def test_routes_of_all_tables_equal_ip_field_by_field(world: Netns, family: int) -> None:
    with rtnl.Route(world.name) as ip:
        before, ours, _ = settled(lambda: ip_routes(world, family),
                                  lambda: routes_view(ip.routes(family, table="all")),
                                  "the routes")
    assert_same(before.fixed, ours.fixed, "routes")
    fields = [dict(key) for key in ours.fixed]
    assert sum(ours.fixed.values()) >= (10_000 if family == AF_INET else 1_000)
    assert any(len(f["nexthops"]) == 2 for f in fields)
    assert {f["table"] for f in fields} >= {TABLE, RT_TABLE_MAIN, RT_TABLE_LOCAL, TABLE_BIG}
    if family == AF_INET:
        assert {f["type"] for f in fields} >= {1, 2, 3, 6, 7, 8}
        assert {f["protocol"] for f in fields} >= {2, 3, 42, 99}
        assert any(f["mtu"] == 1400 for f in fields) and any(f["prefsrc"] for f in fields)
    else:
        assert {f["pref"] for f in fields} == {"medium", "high"}


def test_neighbours_equal_ip_field_by_field(world: Netns) -> None:
    with rtnl.Route(world.name) as ip:
        before, ours, _ = settled(lambda: ip_neighbours(world),
                                  lambda: neighbours_view(ip.neighbours()), "the neighbours")
    assert_same(before.fixed, ours.fixed, "neighbours")
    states = [f["state"] for f in ours.fixed.values()]
    assert {"PERMANENT"} in states and {"STALE"} in states and {"NOARP"} in states


def test_route_tables_and_families_select_what_ip_shows(world: Netns) -> None:
    with rtnl.Route(world.name) as ip:
        main = ip.routes()
        assert {r.table for r in main} == {RT_TABLE_MAIN} and {r.family for r in main} == {
            AF_INET}
        assert routes_view(main).fixed == ip_routes(world, AF_INET, "main").fixed
        for table in (TABLE, TABLE_BIG):
            for family in (AF_INET, AF_INET6):
                chosen = ip.routes(family, table=table)
                assert {r.table for r in chosen} == {table}
                assert routes_view(chosen).fixed == ip_routes(world, family, str(table)).fixed
        both = ip.routes(None, table="all")
        assert Counter(r.key for r in both) == Counter(
            r.key for r in ip.routes(AF_INET, "all") + ip.routes(AF_INET6, "all"))
        assert len(ip.routes(None, table=TABLE)) == 9001 + 250
        for bad in ("main", 0, -1, 2**32, 1.5):
            with pytest.raises(ValueError):
                ip.routes(table=bad)  # type: ignore[arg-type]
        for bad_family in (0, socket.AF_PACKET):
            with pytest.raises(ValueError):
                ip.routes(bad_family)
            with pytest.raises(ValueError):
                ip.addresses(bad_family)


def test_route_batches_stream_what_routes_returns(world: Netns) -> None:
    """route_batches() yields what routes() returns, a received datagram's routes at a
    time, for every family and table choice (the fallback filter of a kernel that does
    not filter by table included); it checks its arguments before any dump, and a stream
    abandoned midway leaves the Route usable."""
    with rtnl.Route(world.name) as ip:
        for family, table in ((AF_INET, None), (AF_INET, TABLE), (AF_INET6, TABLE_BIG),
                              (None, "all"), (None, TABLE)):
            batches = list(ip.route_batches(family, table))
            assert Counter(r for batch in batches for r in batch) == Counter(
                ip.routes(family, table)), (family, table)
        assert len(list(ip.route_batches(AF_INET, "all"))) > 10
        for bad in ("main", 0, -1, 2**32, 1.5):
            with pytest.raises(ValueError):
                ip.route_batches(table=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            ip.route_batches(socket.AF_PACKET)
        stream = ip.route_batches(AF_INET, "all")
        assert next(stream)
        stream.close()
        kernel_filtered = ip.routes(AF_INET, table=TABLE)
        ip._sock.close()  # a non-strict socket: the kernel does not filter, batches do
        ip._sock = Socket(netlink.NETLINK_ROUTE, netns=world.name, strict=False)
        assert Counter(r for batch in ip.route_batches(AF_INET, TABLE) for r in batch) == (
            Counter(kernel_filtered))


def test_the_kernel_filters_table_dumps_and_the_fallback_filters_alike(world: Netns) -> None:
    """On this kernel a strict socket's dump is filtered by table (NLM_F_DUMP_FILTERED);
    a non-strict socket gets every table, and routes() then filters by itself."""
    request = Request(RTM_GETROUTE, header=RTMSG.pack(AF_INET, 0, 0, 0, TABLE, 0, 0, 0, 0),
                      attrs=rtattr(RTA["TABLE"], struct.pack("=I", TABLE)))
    with Socket(netlink.NETLINK_ROUTE, netns=world.name, strict=True) as sock:
        dump = sock.dump(request, decode=True)
        filtered = dump.all()
        assert dump.filtered is True
    with Socket(netlink.NETLINK_ROUTE, netns=world.name, strict=False) as sock:
        dump = sock.dump(request, decode=True)
        unfiltered = dump.all()
        assert dump.filtered is False
    assert {r.table for r in filtered if isinstance(r, RouteEntry)} == {TABLE}
    assert len({r.table for r in unfiltered if isinstance(r, RouteEntry)}) > 1
    with rtnl.Route(world.name) as ip:
        kernel_filtered = ip.routes(AF_INET, table=TABLE)
        ip._sock.close()  # the same Route on a non-strict socket: the unfiltered path
        ip._sock = Socket(netlink.NETLINK_ROUTE, netns=world.name, strict=False)
        assert Counter(ip.routes(AF_INET, table=TABLE)) == Counter(kernel_filtered)
    assert Counter(filtered) == Counter(kernel_filtered)


def test_link_and_index_by_name_and_number(world: Netns) -> None:
    index_of = world.links()
    with rtnl.Route(world.name) as ip:
        assert ip.link("v7a").index == index_of["v7a"] == ip.index("v7a")
        assert ip.link(index_of["br1"]).name == "br1"
        assert ip.index(12345) == 12345
        with pytest.raises(NetlinkError) as missing:
            ip.link("nosuchlink")
        assert missing.value.errno == errno.ENODEV


# ---------------------------------------------------------------------------
# Changes through latchwire appear in ip -j


def ip_addrs_of(ns: Netns, dev: str) -> dict[str, dict[str, Any]]:
    """local/prefixlen -> ip's fields, for every address of dev."""
    (link,) = ns.json("addr", "show", "dev", dev)
    return {f"{a['local']}/{a['prefixlen']}": a for a in link["addr_info"]}


def ip_route_entries(ns: Netns, *selector: str, family: int = AF_INET) -> list[dict[str, Any]]:
    """``ip -j -d -N route show SELECTOR`` of family (every field shown, in numbers)."""
    return list(ns.json("-4" if family == AF_INET else "-6", "-d", "-N", "route", "show",
                        *selector))


def test_address_changes_appear_in_ip(scratch: Netns) -> None:
    with rtnl.Route(scratch.name) as ip:
        ip.add_address("veth0", "198.18.0.1/24", broadcast=True, label="veth0:lw")
        ip.add_address("veth1", "198.18.1.1/24", broadcast="198.18.1.127")
        ip.add_address(ip.index("veth0"), "2001:db8:5::1/64")
        ip.add_address("veth0", "203.0.113.1/32", scope=RT_SCOPE_HOST)
        on0, on1 = ip_addrs_of(scratch, "veth0"), ip_addrs_of(scratch, "veth1")
        assert on0["198.18.0.1/24"]["broadcast"] == "198.18.0.255"
        assert on0["198.18.0.1/24"]["label"] == "veth0:lw"
        assert on1["198.18.1.1/24"]["broadcast"] == "198.18.1.127"
        assert on0["2001:db8:5::1/64"]["family"] == "inet6"
        assert on0["203.0.113.1/32"]["scope"] == "host"
        with pytest.raises(NetlinkError) as twice:
            ip.add_address("veth0", "198.18.0.1/24")
        assert twice.value.errno == errno.EEXIST
        ip.del_address("veth0", "198.18.0.1/24")
        ip.del_address("veth0", "2001:db8:5::1/64")
        on0 = ip_addrs_of(scratch, "veth0")
        assert "198.18.0.1/24" not in on0 and "2001:db8:5::1/64" not in on0
        assert "192.0.2.1/24" in on0 and "2001:db8::1/64" in on0
        with pytest.raises(NetlinkError) as gone:
            ip.del_address("veth0", "198.18.0.1/24")
        assert gone.value.errno == errno.EADDRNOTAVAIL and gone.value.msg


def test_route_changes_appear_in_ip(scratch: Netns) -> None:
    index = dict(scratch.links())
    with rtnl.Route(scratch.name) as ip:
        ip.add_route("10.60.0.0/16", gateway="192.0.2.2", metric=20)
        ip.add_route("10.61.0.0/16", link="veth0", table=200)
        ip.add_route("10.62.0.0/16", link="veth0", prefsrc="192.0.2.1", table=TABLE_BIG)
        ip.add_route("10.63.0.0/16", nexthops=[("192.0.2.2", "veth0", 1),
                                               ("192.0.2.3", index["veth0"], 4)])
        ip.add_route("default", gateway="192.0.2.254")
        ip.add_route("2001:db8:60::/48", gateway="2001:db8::2", metric=300)
        ip.add_route("2001:db8:61::/48", nexthops=[("2001:db8::2", "veth0", 2),
                                                   ("2001:db8::3", "veth0", 1)])
        (gw,) = ip_route_entries(scratch, "10.60.0.0/16")
        assert (gw["gateway"], gw["dev"], gw["metric"], gw["protocol"], gw["scope"]) == (
            "192.0.2.2", "veth0", 20, str(RTPROT_STATIC), str(RT_SCOPE_UNIVERSE))
        (direct,) = ip_route_entries(scratch, "table", "200")
        assert (direct["dst"], direct["dev"], direct["scope"]) == (
            "10.61.0.0/16", "veth0", str(RT_SCOPE_LINK))
        (src,) = ip_route_entries(scratch, "table", str(TABLE_BIG))
        assert (src["dst"], src["prefsrc"]) == ("10.62.0.0/16", "192.0.2.1")
        (multi,) = ip_route_entries(scratch, "10.63.0.0/16")
        assert [(h["gateway"], h["dev"], h["weight"]) for h in multi["nexthops"]] == [
            ("192.0.2.2", "veth0", 1), ("192.0.2.3", "veth0", 4)]
        (default,) = ip_route_entries(scratch, "default")
        assert default["gateway"] == "192.0.2.254"
        (v6,) = ip_route_entries(scratch, "2001:db8:60::/48", family=AF_INET6)
        assert (v6["gateway"], v6["metric"]) == ("2001:db8::2", 300)
        (v6multi,) = ip_route_entries(scratch, "2001:db8:61::/48", family=AF_INET6)
        assert sorted((h["gateway"], h["weight"]) for h in v6multi["nexthops"]) == [
            ("2001:db8::2", 2), ("2001:db8::3", 1)]

        with pytest.raises(NetlinkError) as twice:
            ip.add_route("10.60.0.0/16", gateway="192.0.2.2", metric=20)
        assert twice.value.errno == errno.EEXIST
        ip.add_route("10.60.0.0/16", gateway="192.0.2.3", metric=20, replace=True)
        (replaced,) = ip_route_entries(scratch, "10.60.0.0/16")
        assert replaced["gateway"] == "192.0.2.3"
        ip.add_route("10.64.0.0/16", gateway="192.0.2.9", replace=True)  # replace also creates
        assert len(ip_route_entries(scratch, "10.64.0.0/16")) == 1

        ip.del_route("10.60.0.0/16", metric=20)
        ip.del_route("10.61.0.0/16", table=200)
        ip.del_route("10.62.0.0/16", table=TABLE_BIG)
        ip.del_route("10.63.0.0/16")
        ip.del_route("default", gateway="192.0.2.254")
        ip.del_route("2001:db8:60::/48", gateway="2001:db8::2", link="veth0", metric=300)
        ip.del_route("2001:db8:61::/48")
        for selector in (("10.60.0.0/16",), ("table", "200"), ("table", str(TABLE_BIG)),
                         ("10.63.0.0/16",), ("default",)):
            assert ip_route_entries(scratch, *selector) == []
        for v6prefix in ("2001:db8:60::/48", "2001:db8:61::/48"):
            assert ip_route_entries(scratch, v6prefix, family=AF_INET6) == []
        with pytest.raises(NetlinkError) as gone:
            ip.del_route("10.60.0.0/16", metric=20)
        assert gone.value.errno == errno.ESRCH
        with pytest.raises(ValueError):
            ip.add_route("10.0.0.1/24", link="veth0")  # host bits: refused before sending


def test_link_changes_appear_in_ip(scratch: Netns) -> None:
    def shown(name: str) -> dict[str, Any]:
        (entry,) = scratch.json("-d", "link", "show", name)
        return dict(entry)

    with rtnl.Route(scratch.name) as ip:
        ip.set_link("veth1", up=False)
        assert "UP" not in shown("veth1")["flags"]
        ip.set_link("veth1", mtu=1400, txqlen=77, mac="02:00:00:00:00:42", name="lwren")
        renamed = shown("lwren")
        assert (renamed["mtu"], renamed["txqlen"], renamed["address"]) == (
            1400, 77, "02:00:00:00:00:42")
        ip.set_link("lwren", up=True)
        assert "UP" in shown("lwren")["flags"]

        ip.add_bridge("lwbr0")
        assert shown("lwbr0")["linkinfo"]["info_kind"] == "bridge"
        ip.set_link("lwren", master="lwbr0")
        assert shown("lwren")["master"] == "lwbr0"
        ip.set_link("lwren", master=0)
        assert "master" not in shown("lwren")
        ip.del_link("lwbr0")
        assert "lwbr0" not in scratch.links()


def test_veth_pairs_made_and_deleted(scratch: Netns) -> None:
    with rtnl.Route(scratch.name) as ip:
        ip.add_veth("lwa", "lwb")
        links = {e["ifname"]: e for e in scratch.json("-d", "link")}
        assert links["lwa"]["link"] == "lwb" and links["lwb"]["link"] == "lwa"
        assert links["lwa"]["linkinfo"]["info_kind"] == "veth"
        ip.del_link("lwb")  # either end takes the pair with it
        assert not {"lwa", "lwb"} & set(scratch.links())


def test_veth_peer_made_in_another_namespace(scratch: Netns) -> None:
    other = new_netns(["link set lo up"])
    fd = os.open(other.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with rtnl.Route(scratch.name) as ip, rtnl.Route(fd) as there:
            ip.add_veth("lwhere", "lwthere", peer_netns=fd)
            (here,) = scratch.json("-d", "link", "show", "lwhere")
            (far,) = other.json("-d", "link", "show", "lwthere")
            assert "link_netnsid" in here and "link_netnsid" in far
            assert here["link_index"] == far["ifindex"]
            mine = ip.link("lwhere")
            assert (mine.link, mine.link_netnsid) == (far["ifindex"], here["link_netnsid"])
            assert there.link("lwthere").link == here["ifindex"]
            ip.del_link("lwhere")
            assert "lwthere" not in other.links()
    finally:
        os.close(fd)
        drop_netns(other)


def test_kernel_refusals_carry_errno_and_extended_ack(scratch: Netns) -> None:
    with rtnl.Route(scratch.name) as ip:
        with pytest.raises(NetlinkError) as small:
            ip.set_link("veth0", mtu=10)
        assert small.value.errno == errno.EINVAL and "mtu" in (small.value.msg or "")
        with pytest.raises(NetlinkError) as nodev:
            ip.set_link(99999, up=True)
        assert nodev.value.errno == errno.ENODEV
        with pytest.raises(NetlinkError) as noaddr:
            ip.add_address(99999, "198.18.0.1/24")
        assert noaddr.value.errno == errno.ENODEV and noaddr.value.msg
        with pytest.raises(NetlinkError) as taken:
            ip.add_veth("veth0", "lwpeer")
        assert taken.value.errno == errno.EEXIST
        with pytest.raises(NetlinkError) as unreachable:
            ip.add_route("10.70.0.0/16", gateway="198.51.100.1")
        assert unreachable.value.errno == errno.ENETUNREACH and unreachable.value.msg
    host_bits = Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL,
                        RTMSG.pack(AF_INET, 24, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC,
                                   RT_SCOPE_LINK, RTN_UNICAST, 0),
                        rtattr(RTA["DST"], socket.inet_aton("10.0.0.1"))
                        + rtattr(RTA["OIF"], struct.pack("=I", scratch.links()["veth0"])))
    with Socket(netlink.NETLINK_ROUTE, netns=scratch.name, strict=True) as sock, \
            pytest.raises(NetlinkError) as invalid:
        sock.transact(host_bits, timeout=WAIT)
    assert invalid.value.errno == errno.EINVAL
    assert invalid.value.msg == "Invalid prefix for given prefix length"


# ---------------------------------------------------------------------------
# Events


def describe(event: rtnl.Event, names: dict[int, str]) -> tuple[Any, ...]:
    """An event in terms a test can expect: (kind, deleted, what)."""
    if isinstance(event, Link):
        names.setdefault(event.index, event.name)
        return ("link", event.deleted, event.name)
    if isinstance(event, Address):
        return ("addr", event.deleted, f"{event.local}/{event.prefixlen}",
                names.get(event.index))
    if isinstance(event, RouteEntry):
        return ("route", event.deleted, f"{event.dst}/{event.dst_len}", event.table)
    if isinstance(event, Neighbour):
        return ("neigh", event.deleted, event.dst, names.get(event.index), event.lladdr)
    return ("resync",)


def test_changes_made_with_ip_arrive_as_events_in_order(scratch: Netns) -> None:
    story = [("link", False, "eva"),
             ("addr", False, "198.18.0.1/24", "eva"),
             ("route", False, "198.18.5.0/24", RT_TABLE_MAIN),
             ("addr", False, "2001:db8:77::1/64", "eva"),
             ("neigh", False, "198.18.0.9", "eva", "02:00:00:00:00:99"),
             ("route", True, "198.18.5.0/24", RT_TABLE_MAIN),
             ("neigh", True, "198.18.0.9", "eva", None),  # the kernel drops the lladdr first
             ("addr", True, "198.18.0.1/24", "eva"),
             ("link", True, "eva")]
    with rtnl.Route(scratch.name) as ip:
        events = ip.events(groups=[*rtnl.DEFAULT_GROUPS, "neigh"], timeout=WAIT)
        scratch.batch(["link add eva type veth peer name evb",
                       "addr add 198.18.0.1/24 dev eva",
                       "link set eva up",
                       "link set evb up",
                       "route add 198.18.5.0/24 via 198.18.0.2 dev eva",
                       "addr add 2001:db8:77::1/64 dev eva",
                       "neigh add 198.18.0.9 lladdr 02:00:00:00:00:99 dev eva nud permanent",
                       "route del 198.18.5.0/24",
                       "neigh del 198.18.0.9 dev eva",
                       "addr del 198.18.0.1/24 dev eva",
                       "link del eva"])
        names: dict[int, str] = {}
        seen = []
        for event in events:
            seen.append(describe(event, names))
            if seen[-1] == story[-1]:
                break
        events.close()
    firsts: list[tuple[Any, ...]] = []
    for said in seen:
        if said in story and said not in firsts:
            firsts.append(said)
    assert firsts == story, seen
    assert ("resync",) not in seen


def test_events_reject_unknown_groups_and_time_out(scratch: Netns) -> None:
    with rtnl.Route(scratch.name) as ip:
        with pytest.raises(ValueError, match="nosuchgroup"):
            ip.events(groups=["link", "nosuchgroup"])
        quiet = ip.events(groups=["ipv4_route"], timeout=0.05)
        with pytest.raises(TimeoutError):
            next(quiet)


def burst(ns: Netns, count: int, first: int = 0) -> list[str]:
    """count IPv4 /32 routes 10.80.x.y on veth0, numbered from first, as ip -batch lines."""
    return [f"route add 10.80.{i >> 8}.{i & 255}/32 dev veth0"
            for i in range(first, first + count)]


def keyed(records: Iterable[Record]) -> dict[tuple[type, object], Record]:
    """Records by identity, as an event stream keeps its view."""
    return {(type(r), r.key): r for r in records}


def test_overrun_resyncs_into_exactly_the_kernels_tables(scratch: Netns) -> None:
    scratch.batch(burst(scratch, 400))  # in the tables before the stream starts
    with rtnl.Route(scratch.name, rcvbuf=4096) as ip:
        events = ip.events(groups=["ipv4_route", "ipv4_addr"], timeout=WAIT)
        view = keyed([*ip.routes(AF_INET, "all"), *ip.addresses(AF_INET)])
        # A burst while nobody reads: 3,000 more routes, then 200 of the first 400
        # deleted, 100 given another gateway and an address added: long after the
        # receive buffer overflowed.
        scratch.batch([*burst(scratch, 3000, first=400),
                       *(f"route del 10.80.{i >> 8}.{i & 255}/32" for i in range(200)),
                       *(f"route replace 10.80.{i >> 8}.{i & 255}/32 via 192.0.2.7 dev veth0"
                         for i in range(200, 300)),
                       "addr add 198.18.9.1/24 dev veth1"])
        marker: Resync | None = None
        left = -1
        while left:
            event = next(events)
            if isinstance(event, Resync):
                marker, left = event, event.added + event.changed + event.removed
                continue
            if event.deleted:
                view.pop((type(event), event.key), None)
            else:
                view[(type(event), event.key)] = event
            left -= marker is not None
        events.close()
        assert marker is not None
        # The deletions and replacements came last: the stream can only know them from
        # the resync. A route with another gateway is another route (its key has the
        # gateway): 200 deleted and 100 replaced are removed, the 100 replacements added.
        # Of the additions, at most the few that fit the buffer came before.
        assert (marker.removed, marker.changed) == (300, 0) and marker.added >= 3000
        assert view == keyed([*ip.routes(AF_INET, "all"), *ip.addresses(AF_INET)])
    gateways = Counter(e.get("gateway") for e in ip_route_entries(scratch, "root", "10.80.0.0/16"))
    assert gateways == {None: 3100, "192.0.2.7": 100}


def test_replace_notifications_leave_no_stale_route_behind(scratch: Netns) -> None:
    """A route replaced while the stream reads arrives with ``replaces`` set and
    takes the old one's place in the stream's view: a later resync finds
    nothing of it to remove."""
    scratch.batch(["route add 10.81.0.0/16 via 192.0.2.2 dev veth0"])
    with rtnl.Route(scratch.name, rcvbuf=4096) as ip:
        events = ip.events(groups=["ipv4_route"], timeout=WAIT)
        scratch.batch(["route replace 10.81.0.0/16 via 192.0.2.3 dev veth0"])
        event = next(e for e in events if isinstance(e, RouteEntry) and e.dst == "10.81.0.0")
        assert (event.gateway, event.replaces, event.deleted) == ("192.0.2.3", True, False)
        scratch.batch(burst(scratch, 2000, first=5000))  # overflow: a resync follows
        marker = next(e for e in events if isinstance(e, Resync))
        diffs = [next(events) for _ in range(marker.added + marker.changed + marker.removed)]
        events.close()
        assert not any(r.replaces for r in ip.routes(AF_INET))  # dumped records replace nothing
    assert marker.removed == 0 and marker.changed == 0
    assert all(isinstance(e, RouteEntry) and e.dst_len == 32 for e in diffs)


def test_overrun_without_resync_is_raised(scratch: Netns) -> None:
    with rtnl.Route(scratch.name, rcvbuf=4096) as ip:
        events = ip.events(groups=["ipv4_route"], resync=False, timeout=WAIT)
        scratch.batch(burst(scratch, 2000))
        with pytest.raises(Overrun) as lost:
            for _ in events:
                pass
    assert lost.value.errno == errno.ENOBUFS


def open_fds() -> set[str]:
    """The descriptors this process has open."""
    return set(os.listdir("/proc/self/fd"))


def test_async_events_arrive_without_a_thread_and_aclose_closes(scratch: Netns) -> None:
    async def watch(ip: rtnl.Route) -> RouteEntry:
        fds = open_fds()
        threads = threading.enumerate()
        events = ip.events_async(groups=["ipv4_route"])
        waiting = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0)  # a yield: the task runs to its first wait
        assert not waiting.done()  # nothing has happened yet: it waits on the loop
        scratch.ip("route", "add", "10.90.0.0/16", "via", "192.0.2.2")
        event = await asyncio.wait_for(waiting, WAIT)
        assert threading.enumerate() == threads
        await events.aclose()
        assert open_fds() == fds
        assert isinstance(event, RouteEntry)
        return event

    with rtnl.Route(scratch.name) as ip:
        event = asyncio.run(watch(ip))
    assert (event.dst, event.dst_len, event.gateway, event.deleted) == (
        "10.90.0.0", 16, "192.0.2.2", False)


def stream_socket(events: Iterator[rtnl.Event]) -> Socket:
    """The socket an events() stream reads, reached through its generator's frame."""
    stream = events.gi_frame.f_locals["self"]  # type: ignore[attr-defined]
    assert isinstance(stream, rtnl._EventStream)
    return stream._sock


@pytest.mark.parametrize("resync", [False, True], ids=["raise", "resync"])
def test_enobufs_between_peek_and_read_in_an_event_stream(scratch: Netns,
                                                          resync: bool) -> None:
    """A loss reported to the read that follows a peek (ENOBUFS between the two),
    forced step by step on the stream's socket (smallest receive buffer): an
    address added, the datagram peeked at, 16 more added, most of them dropped.
    Without resync the stream raises Overrun and has ended (its socket closed);
    with it, the stream resyncs: a Resync marker of exactly the 17 addresses it
    had not seen, then those addresses. Never a plain OSError."""
    index = scratch.links()["veth0"]
    added = {f"10.77.0.{i}" for i in range(1, 18)}
    with rtnl.Route(scratch.name) as changer, rtnl.Route(scratch.name, rcvbuf=1) as ip:
        events = ip.events(groups=["ipv4_addr"], resync=resync, timeout=WAIT)
        sock = stream_socket(events)
        changer.add_address(index, "10.77.0.1/32")
        chan = sock._own()
        assert chan.peek(0)
        for address in sorted(added - {"10.77.0.1"}):
            changer.add_address(index, f"{address}/32")
        if not resync:
            with pytest.raises(Overrun) as lost:
                next(events)
            assert lost.value.errno == errno.ENOBUFS
            assert sock._closed
            with pytest.raises(StopIteration):
                next(events)
            return
        marker = next(events)
        assert marker == Resync(added=17, changed=0, removed=0)
        diffs = [next(events) for _ in range(17)]
        events.close()
    assert all(isinstance(e, Address) and not e.deleted for e in diffs), diffs
    assert {e.local for e in diffs if isinstance(e, Address)} == added


STREAM_ROUNDS = {False: 40, True: 6}  # streams, one after the other, by resync
STREAM_ROUND = 0.1  # seconds a resyncing stream is read for


@pytest.mark.parametrize("resync", [False, True], ids=["raise", "resync"])
def test_event_streams_of_a_slow_reader_under_churn(scratch: Netns, resync: bool) -> None:
    """While another process adds and removes addresses and takes a link down and up
    again and again, event streams with a small receive buffer are read slowly (0.5
    ms between events, another thread keeping the GIL busy). Without resync, every
    stream ends with Overrun (and nothing else: no plain OSError, which one loss
    in a hundred or so used to give, no timeout); with it, streams resync, again
    and again, and never end. (The loss between a peek and its read is forced in
    the test above.)"""
    outcomes: Counter[str] = Counter()
    with Churn(scratch) as churn, busy_thread(), \
            rtnl.Route(scratch.name, rcvbuf=4096) as ip:
        for _ in range(STREAM_ROUNDS[resync]):
            events = ip.events(groups=["link", "ipv4_addr"], resync=resync, timeout=BOUND)
            end = time.monotonic() + STREAM_ROUND
            try:
                for event in events:
                    outcomes["Resync" if isinstance(event, Resync) else "event"] += 1
                    if resync and time.monotonic() > end:
                        break
                    time.sleep(0.0005)
            except Overrun as lost:
                assert lost.errno == errno.ENOBUFS
                outcomes["Overrun"] += 1
                with pytest.raises(StopIteration):
                    next(events)
            except Exception as other:
                outcomes[repr(other)] += 1
            finally:
                events.close()
    print(f"resync={resync}: {dict(outcomes)}, {churn.batches} batches")
    if resync:  # how many plain events get through between losses depends on the load
        assert set(outcomes) <= {"event", "Resync"} and outcomes["Resync"] > 0, outcomes
    else:
        assert set(outcomes) <= {"event", "Overrun"}, outcomes
        assert outcomes["Overrun"] == STREAM_ROUNDS[resync], outcomes


BAD_TIMEOUTS = {"nan": (float("nan"), ValueError), "negative": (-0.5, ValueError),
                "string": ("1", TypeError)}


@pytest.mark.parametrize("bad", list(BAD_TIMEOUTS))
def test_route_and_events_refuse_bad_timeouts_at_once(scratch: Netns, bad: str) -> None:
    """Route(timeout=NaN or a negative number) raises ValueError, a string
    TypeError, before any socket is made; events() likewise when it is called,
    before it joins any group (no descriptor left open). NaN used to time out."""
    timeout, error = BAD_TIMEOUTS[bad]
    fds = open_fds()
    with pytest.raises(error, match="timeout"):
        rtnl.Route(scratch.name, timeout=timeout)
    assert open_fds() == fds
    with rtnl.Route(scratch.name) as ip:
        inside = open_fds()
        with pytest.raises(error, match="timeout"):
            ip.events(groups=["link"], timeout=timeout)
        assert open_fds() == inside
    assert open_fds() == fds


@pytest.mark.parametrize("timeout", [float("inf"), 1e300, 2**31 / 1000 + 1],
                         ids=["inf", "1e300", "2^31ms+1s"])
def test_route_and_events_without_a_limit_wait(scratch: Netns, timeout: float) -> None:
    """A Route with timeout=inf, 1e300 or just over 2^31 ms answers its dumps and
    changes, and an events() stream with that timeout waits for the next event
    (seen in poll()) instead of timing out at once, and gets it."""
    with rtnl.Route(scratch.name, timeout=timeout) as ip:
        assert "veth0" in {link.name for link in ip.links()}
        ip.add_route("10.92.0.0/16", gateway="192.0.2.2")
        events = ip.events(groups=["ipv4_route"], timeout=timeout)
        worker = Worker(next, events)
        try:
            wait_in_poll(worker)
            scratch.ip("route", "add", "10.91.0.0/16", "via", "192.0.2.2")
            event = worker.outcome()
        finally:
            scratch.ip("route", "add", "10.93.0.0/16", "via", "192.0.2.2", check=False)
            worker.join()
            events.close()
    assert isinstance(event, RouteEntry)
    assert (event.dst, event.dst_len, event.deleted) == ("10.91.0.0", 16, False)


def test_link_names_that_are_not_utf8_read_as_text(scratch: Netns) -> None:
    """Link names are bytes to the kernel (anything but '/', ':' and spaces); they
    should read as os.fsdecode reads them, as socket.if_nameindex() does."""
    assert IP is not None
    subprocess.run([IP, "-n", scratch.name, "link", "add", os.fsdecode(b"lw\xff"), "type",
                    "veth", "peer", "name", "lwu"], check=True, capture_output=True, timeout=60)
    with rtnl.Route(scratch.name) as ip:
        names = {link.name for link in ip.links()}
    assert os.fsdecode(b"lw\xff") in names


def test_resync_view_keeps_ipv6_routes_that_differ_only_by_link(scratch: Netns) -> None:
    """Every link that is up has its own fe80::/64 route, same table and metric:
    each is a route of its own in a stream's view."""
    scratch.batch(["link add lw2 type veth peer name lw3", "link set lw2 up",
                   "link set lw3 up"])
    with rtnl.Route(scratch.name) as ip:
        routes = [r for r in ip.routes(AF_INET6) if r.dst == "fe80::" and r.dst_len == 64]
    assert len({r.oif for r in routes}) == len(routes) >= 2
    assert len(keyed(routes)) == len(routes)


# ---------------------------------------------------------------------------
# Records

SPECIMEN_SETUP = (
    *SCRATCH_SETUP,
    "link add br0 type bridge",
    "link set veth1 master br0",
    "link set br0 up",
    "addr add 198.18.0.1/24 brd + dev veth0 label veth0:sp",
    "addr add 198.18.1.1/24 dev br0 valid_lft 600 preferred_lft 300",
    "route add 10.1.0.0/16 via 192.0.2.2 dev veth0 metric 7 table 100",
    "route add 10.2.0.0/16 nexthop via 192.0.2.2 dev veth0 weight 2 nexthop via 192.0.2.3 "
    "dev veth0",
    "route add 10.3.0.0/16 via 192.0.2.2 dev veth0 mtu 1300 src 192.0.2.1",
    "route add 2001:db8:1::/48 via 2001:db8::2 dev veth0 pref low",
    "route add 2001:db8:2::/48 nexthop via 2001:db8::2 dev veth0 nexthop via 2001:db8::3 "
    "dev veth0",
    "neigh add 192.0.2.9 lladdr 02:00:00:00:00:09 dev veth0 nud permanent",
    "neigh add 2001:db8::9 lladdr 02:00:00:00:00:19 dev veth0 nud stale")


class Specimens(NamedTuple):
    """Real rtnetlink messages from a small namespace: the raw messages of each
    dump and the records the decoding dumps made of the same tables."""

    messages: list[Message]
    records: list[Record]


def dump_requests() -> list[Request]:
    """Dump requests for every link, address, route and neighbour entry."""
    return [Request(RTM_GETLINK, header=IFINFOMSG.pack(0, 0, 0, 0, 0)),
            Request(RTM_GETADDR, header=IFADDRMSG.pack(0, 0, 0, 0, 0)),
            Request(RTM_GETROUTE, header=RTMSG.pack(AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)),
            Request(RTM_GETROUTE, header=RTMSG.pack(AF_INET6, 0, 0, 0, 0, 0, 0, 0, 0)),
            Request(RTM_GETNEIGH, header=NDMSG.pack(0, 0, 0, 0, 0))]


def capture(sock: Socket) -> Specimens:
    """The raw messages of every dump, and the records of the same dumps decoded,
    taken again until the raw messages were the same before and after (links
    that just came up still send and count a few packets)."""
    def raw() -> list[Message]:
        return [m for r in dump_requests() for m in sock.dump(r, retries=3)]

    deadline = time.monotonic() + SETTLE
    while True:
        before = raw()
        records = [rec for r in dump_requests() for rec in sock.dump(r, retries=3, decode=True)]
        after = raw()
        if [datagram_of(m) for m in before] == [datagram_of(m) for m in after]:
            return Specimens(before, records)
        assert time.monotonic() < deadline, f"the tables kept changing for {SETTLE} s"


@pytest.fixture(scope="module")
def specimens() -> Iterator[Specimens]:
    """Real messages and records of every kind, from a small namespace."""
    ns = new_netns(SPECIMEN_SETUP)
    try:
        with Socket(netlink.NETLINK_ROUTE, netns=ns.name, strict=True) as sock:
            yield capture(sock)
    finally:
        drop_netns(ns)


def test_message_record_and_decode_agree_with_decoded_dumps(specimens: Specimens) -> None:
    from_messages = [m.record() for m in specimens.messages]
    assert None not in from_messages
    assert from_messages == specimens.records
    whole = b"".join(datagram_of(m) for m in specimens.messages)
    assert rtnl.decode(whole) == specimens.records
    assert _core.decode(whole + datagram(NLMSG_DONE, b"\0\0\0\0")) == specimens.records
    kinds = Counter(type(r).__name__ for r in specimens.records)
    assert set(kinds) == {"Link", "Address", "RouteEntry", "Neighbour"}
    multipath = [r for r in specimens.records if isinstance(r, RouteEntry) and r.nexthops]
    assert {r.family for r in multipath} == {AF_INET, AF_INET6}
    assert all(h.gateway and h.gateway_family == r.family for r in multipath
               for h in r.nexthops)
    assert {h.weight for r in multipath for h in r.nexthops} >= {1, 2}


def test_deletions_decode_with_deleted_set(specimens: Specimens) -> None:
    deleted_type = {RTM_NEWLINK: RTM_DELLINK, RTM_NEWADDR: RTM_DELADDR,
                    RTM_NEWROUTE: RTM_DELROUTE, RTM_NEWNEIGH: RTM_DELNEIGH}
    for msg, record in zip(specimens.messages, specimens.records, strict=True):
        (gone,) = rtnl.decode(datagram(deleted_type[msg.type], msg.payload))
        assert gone.deleted and not record.deleted
        assert gone == record and gone.key == record.key
        assert record.as_deleted().deleted and record.as_deleted() == record


def test_record_equality_hash_and_key(specimens: Specimens) -> None:
    records = specimens.records
    again = [m.record() for m in specimens.messages]
    assert all(hash(a) == hash(b) for a, b in zip(records, again, strict=True))
    assert set(records) == set(again) and len(set(records)) == len(records)
    assert len({(type(r), r.key) for r in records}) == len(records)
    for record in records:
        assert record != 0 and record != object()
    links = [r for r in records if isinstance(r, Link)]
    assert all(link.key == link.index for link in links)
    addrs = [r for r in records if isinstance(r, Address)]
    assert all(a.key == (a.family, a.index, a.address, a.prefixlen) for a in addrs)
    routes = [r for r in records if isinstance(r, RouteEntry)]
    assert all(r.key == (r.family, r.table, r.dst, r.dst_len, r.src, r.src_len, r.tos,
                         r.priority, r.oif, r.gateway) for r in routes)
    neighbours = [r for r in records if isinstance(r, Neighbour)]
    assert all(n.key == (n.family, n.index, n.dst) for n in neighbours)


R = TypeVar("R", Link, Address, RouteEntry, Neighbour)


def one(buf: bytes, kind: type[R]) -> R:
    """The single record decode makes of buf, which must be a kind."""
    (record,) = rtnl.decode(buf)
    assert isinstance(record, kind)
    return record


def link_message(mtu: int, rx_packets: int) -> bytes:
    """A link message with an MTU and 64-bit counters (the rest zero)."""
    stats = struct.pack("=25Q", rx_packets, *[0] * 24)
    return datagram(RTM_NEWLINK, IFINFOMSG.pack(0, 1, 7, IFF_UP, 0)
                    + rtattr(IFLA["IFNAME"], b"lw7\0") + rtattr(IFLA["MTU"],
                                                                struct.pack("=I", mtu))
                    + rtattr(IFLA["STATS64"], stats))


def test_link_equality_ignores_counters_but_not_fields() -> None:
    a, b, c = (one(link_message(mtu, n), Link) for mtu, n in ((1500, 1), (1500, 2), (1400, 1)))
    assert a.stats is not None and b.stats is not None
    assert a.stats["rx_packets"] == 1 and b.stats["rx_packets"] == 2
    assert a == b and hash(a) == hash(b)
    assert a != c and c.mtu == 1400 and a.mtu == 1500


# ---------------------------------------------------------------------------
# Malformed messages: ProtocolError, never a crash


def ip4(text: str) -> bytes:
    """An IPv4 address's 4 bytes."""
    return socket.inet_pton(AF_INET, text)


def ip6(text: str) -> bytes:
    """An IPv6 address's 16 bytes."""
    return socket.inet_pton(AF_INET6, text)


LINK_HEADER = IFINFOMSG.pack(0, 1, 3, 0, 0)
ADDR4_HEADER = IFADDRMSG.pack(AF_INET, 24, 0, 0, 3)
ADDR6_HEADER = IFADDRMSG.pack(AF_INET6, 64, 0, 0, 3)
ROUTE4_HEADER = RTMSG.pack(AF_INET, 24, 0, 0, RT_TABLE_MAIN, 4, 0, 1, 0)
ROUTE6_HEADER = RTMSG.pack(AF_INET6, 64, 0, 0, RT_TABLE_MAIN, 4, 0, 1, 0)
NEIGH4_HEADER = NDMSG.pack(AF_INET, 3, 0x80, 0, 1)


def nexthop(length: int, attrs: bytes = b"", index: int = 3) -> bytes:
    """A struct rtnexthop claiming length bytes, then attrs (whatever their real size)."""
    return RTNEXTHOP.pack(length, 0, 0, index) + attrs


def wrong_sizes(type: int, header: bytes, table: dict[str, int], right: dict[str, int]
                ) -> Iterator[tuple[str, bytes]]:
    """For each fixed-size attribute (name: right size): a message with it one
    byte short and one byte long."""
    for name, size in right.items():
        for wrong in (size - 1, size + 1):
            yield f"{name}:{wrong}", datagram(type, header + rtattr(table[name], b"\1" * wrong))


def malformed() -> Iterator[tuple[str, bytes]]:
    """(what, datagram) pairs that the decoder must refuse."""
    yield "short netlink header", b"\x14\0\0\0\x10\0"
    yield "nlmsg_len below the header", NLMSGHDR.pack(8, RTM_NEWLINK, 0, 0, 0)
    yield "nlmsg_len past the buffer", NLMSGHDR.pack(64, RTM_NEWLINK, 0, 0, 0) + LINK_HEADER
    yield "short ifinfomsg", datagram(RTM_NEWLINK, LINK_HEADER[:15])
    yield "short ifaddrmsg", datagram(RTM_NEWADDR, ADDR4_HEADER[:7])
    yield "short rtmsg", datagram(RTM_NEWROUTE, ROUTE4_HEADER[:11])
    yield "short ndmsg", datagram(RTM_NEWNEIGH, NEIGH4_HEADER[:11])
    yield "short attribute header", datagram(RTM_NEWLINK, LINK_HEADER + b"\x08\0\x03")
    yield "attribute length below its header", datagram(RTM_NEWLINK, LINK_HEADER
                                                        + RTATTR.pack(3, 3) + b"\0" * 4)
    yield "attribute past the message", datagram(RTM_NEWLINK, LINK_HEADER
                                                 + RTATTR.pack(40, 3) + b"lw\0\0")
    yield from wrong_sizes(RTM_NEWLINK, LINK_HEADER, IFLA, {
        "MTU": 4, "LINK": 4, "MASTER": 4, "TXQLEN": 4, "OPERSTATE": 1, "LINKMODE": 1,
        "GROUP": 4, "CARRIER": 1, "LINK_NETNSID": 4, "MIN_MTU": 4, "MAX_MTU": 4})
    yield "IFLA_STATS64 not in u64s", datagram(RTM_NEWLINK, LINK_HEADER
                                               + rtattr(IFLA["STATS64"], b"\0" * 201))
    yield "IFLA_STATS64 too short", datagram(RTM_NEWLINK, LINK_HEADER
                                             + rtattr(IFLA["STATS64"], b"\0" * 176))
    yield "IFLA_ADDRESS too long", datagram(RTM_NEWLINK, LINK_HEADER
                                            + rtattr(IFLA["ADDRESS"], b"\1" * 33))
    yield "IFLA_BROADCAST too long", datagram(RTM_NEWLINK, LINK_HEADER
                                              + rtattr(IFLA["BROADCAST"], b"\1" * 33))
    yield "IFLA_IFNAME without room for its NUL", datagram(
        RTM_NEWLINK, LINK_HEADER + rtattr(IFLA["IFNAME"], b"a" * 16))
    yield "IFLA_QDISC too long", datagram(RTM_NEWLINK, LINK_HEADER
                                          + rtattr(IFLA["QDISC"], b"q" * 40 + b"\0"))
    yield "IFLA_INFO_KIND too long", datagram(RTM_NEWLINK, LINK_HEADER + rtattr(
        IFLA["LINKINFO"], rtattr(IFLA_INFO_KIND, b"k" * 32 + b"\0")))
    yield "IFLA_INFO_SLAVE_KIND too long", datagram(RTM_NEWLINK, LINK_HEADER + rtattr(
        IFLA["LINKINFO"], rtattr(IFLA_INFO_SLAVE_KIND, b"k" * 40)))
    yield "IFLA_LINKINFO nest overrun", datagram(RTM_NEWLINK, LINK_HEADER + rtattr(
        IFLA["LINKINFO"], RTATTR.pack(20, IFLA_INFO_KIND) + b"veth"))
    for header, family_size in ((ADDR4_HEADER, 4), (ADDR6_HEADER, 16)):
        for name in ("ADDRESS", "LOCAL", "BROADCAST"):
            for wrong in (family_size - 1, 20 - family_size):
                yield f"IFA_{name}:{wrong}", datagram(RTM_NEWADDR, header
                                                      + rtattr(IFA[name], b"\1" * wrong))
    yield from wrong_sizes(RTM_NEWADDR, ADDR4_HEADER, IFA, {
        "CACHEINFO": 16, "FLAGS": 4, "RT_PRIORITY": 4, "PROTO": 1})
    yield "IFA_LABEL without room", datagram(RTM_NEWADDR, ADDR4_HEADER
                                             + rtattr(IFA["LABEL"], b"l" * 16))
    yield "address family 7", datagram(RTM_NEWADDR, IFADDRMSG.pack(7, 24, 0, 0, 3))
    for header, family_size in ((ROUTE4_HEADER, 4), (ROUTE6_HEADER, 16)):
        for name in ("DST", "SRC", "GATEWAY", "PREFSRC"):
            for wrong in (family_size - 1, 20 - family_size):
                yield f"RTA_{name}:{wrong}", datagram(RTM_NEWROUTE, header
                                                      + rtattr(RTA[name], b"\1" * wrong))
    yield from wrong_sizes(RTM_NEWROUTE, ROUTE4_HEADER, RTA, {
        "IIF": 4, "OIF": 4, "PRIORITY": 4, "TABLE": 4, "PREF": 1, "EXPIRES": 4})
    yield "route family 0", datagram(RTM_NEWROUTE, RTMSG.pack(0, 0, 0, 0, 254, 4, 0, 1, 0))
    yield "RTA_VIA of 1 byte", datagram(RTM_NEWROUTE, ROUTE4_HEADER + rtattr(RTA["VIA"], b"\2"))
    yield "RTA_VIA of family 7", datagram(RTM_NEWROUTE, ROUTE4_HEADER
                                          + rtattr(RTA["VIA"], b"\7\0" + ip4("10.0.0.1")))
    yield "RTA_VIA IPv6 of 4 bytes", datagram(RTM_NEWROUTE, ROUTE4_HEADER + rtattr(
        RTA["VIA"], struct.pack("=H", AF_INET6) + ip4("10.0.0.1")))
    yield "RTAX_MTU of 3 bytes", datagram(RTM_NEWROUTE, ROUTE4_HEADER + rtattr(
        RTA["METRICS"], rtattr(RTAX_MTU, b"\0" * 3)))
    yield "RTA_METRICS nest overrun", datagram(RTM_NEWROUTE, ROUTE4_HEADER + rtattr(
        RTA["METRICS"], RTATTR.pack(12, RTAX_MTU) + b"\0" * 4))
    yield "rtnexthop truncated", datagram(RTM_NEWROUTE, ROUTE4_HEADER + rtattr(
        RTA["MULTIPATH"], nexthop(8)[:6]))
    yield "rtnh_len below its header", datagram(RTM_NEWROUTE, ROUTE4_HEADER + rtattr(
        RTA["MULTIPATH"], nexthop(4) + b"\0" * 4))
    yield "rtnh_len past RTA_MULTIPATH", datagram(RTM_NEWROUTE, ROUTE4_HEADER + rtattr(
        RTA["MULTIPATH"], nexthop(24, rtattr(RTA["GATEWAY"], ip4("10.0.0.1")))))
    yield "nexthop gateway of 16 bytes in IPv4", datagram(RTM_NEWROUTE, ROUTE4_HEADER + rtattr(
        RTA["MULTIPATH"], nexthop(28, rtattr(RTA["GATEWAY"], ip6("2001:db8::1")))))
    yield "nexthop attribute overrun", datagram(RTM_NEWROUTE, ROUTE4_HEADER + rtattr(
        RTA["MULTIPATH"], nexthop(12, RTATTR.pack(8, RTA["GATEWAY"]))))
    yield "nexthop RTA_VIA of family 7", datagram(RTM_NEWROUTE, ROUTE4_HEADER + rtattr(
        RTA["MULTIPATH"], nexthop(16, rtattr(RTA["VIA"], b"\7\0\0\0"))))
    yield "NDA_DST of 5 bytes", datagram(RTM_NEWNEIGH, NEIGH4_HEADER
                                         + rtattr(NDA_DST, b"\1" * 5))
    yield "NDA_DST of 5 bytes, family 7", datagram(RTM_NEWNEIGH, NDMSG.pack(7, 3, 0x80, 0, 1)
                                                   + rtattr(NDA_DST, b"\1" * 5))
    yield "NDA_LLADDR too long", datagram(RTM_NEWNEIGH, NEIGH4_HEADER
                                          + rtattr(NDA_LLADDR, b"\1" * 33))


MALFORMED = list(malformed())


@pytest.mark.parametrize("what,buf", MALFORMED, ids=[what for what, _ in MALFORMED])
def test_malformed_messages_raise_protocol_error(what: str, buf: bytes) -> None:
    with pytest.raises(ProtocolError):
        rtnl.decode(buf)
    good = datagram(RTM_NEWROUTE, ROUTE4_HEADER + rtattr(RTA["DST"], ip4("10.0.0.0")))
    with pytest.raises(ProtocolError):  # after a good message too: no partial answer
        rtnl.decode(good + buf)
    try:
        messages = netlink.parse(buf)
    except ProtocolError:
        return  # the framing itself is bad
    with pytest.raises(ProtocolError):
        for msg in messages:
            msg.record()


def test_well_formed_edges_decode() -> None:
    """The limits themselves are accepted: a 15-character name, a 32-byte hardware
    address, no attributes at all, an unknown attribute, other message types."""
    link = one(datagram(RTM_NEWLINK, LINK_HEADER + rtattr(IFLA["IFNAME"], b"a" * 15 + b"\0")
                        + rtattr(IFLA["ADDRESS"], bytes(range(32))) + rtattr(999, b"whatever")),
               Link)
    assert link.name == "a" * 15 and link.mac.count(":") == 31 and link.mtu is None
    route = one(datagram(RTM_NEWROUTE, ROUTE4_HEADER), RouteEntry)
    assert (route.dst, route.gateway, route.oif, route.nexthops) == (None, None, None, ())
    via = one(datagram(RTM_NEWROUTE, ROUTE4_HEADER + rtattr(
        RTA["VIA"], struct.pack("=H", AF_INET6) + ip6("fe80::1"))), RouteEntry)
    assert (via.gateway, via.gateway_family) == ("fe80::1", AF_INET6)
    assert rtnl.decode(datagram(NLMSG_DONE, b"\0" * 4) + datagram(RTM_GETLINK, LINK_HEADER)) == []
    fdb = one(datagram(RTM_NEWNEIGH, NDMSG.pack(socket.AF_BRIDGE, 3, 0x80, 0, 1)
                       + rtattr(NDA_DST, ip6("2001:db8::7"))), Neighbour)
    assert (fdb.family, fdb.dst) == (socket.AF_BRIDGE, "2001:db8::7")  # a VXLAN remote


# ---------------------------------------------------------------------------
# Hypothesis: mutations of real messages, round-trips of requests


def touch(record: Record) -> None:
    """Read every field of record (and of its next hops), its repr and its hash,
    as a caller would."""
    for target in (record, *getattr(record, "nexthops", [])):
        for name, _ in inspect.getmembers(type(target), inspect.isdatadescriptor):
            if not name.startswith("_"):
                getattr(target, name)
        repr(target)
        hash(target)


@st.composite
def mutated(draw: st.DrawFn, messages: list[bytes]) -> bytes:
    """A real message with a few bytes changed, cut short, or grown."""
    buf = bytearray(draw(st.sampled_from(messages)))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["byte", "u16", "cut", "grow"]))
        at = draw(st.integers(0, max(0, len(buf) - 1)))
        if how == "byte" and buf:
            buf[at] = draw(st.integers(0, 255))
        elif how == "u16" and len(buf) >= 2:
            at = min(at, len(buf) - 2)
            buf[at:at + 2] = struct.pack("=H", draw(st.sampled_from([0, 1, 3, 4, 7, 8, 255,
                                                                     0xFFFF])))
        elif how == "cut":
            del buf[at:]
        else:
            buf[at:at] = draw(st.binary(max_size=12))
    return bytes(buf)


@settings(max_examples=600, deadline=None)
@given(data=st.data())
def test_mutated_real_messages_give_records_or_protocol_error(specimens: Specimens,
                                                              data: st.DataObject) -> None:
    buf = data.draw(mutated([datagram_of(m) for m in specimens.messages]))
    try:
        records = rtnl.decode(buf)
    except ProtocolError:
        records = None
    if records is not None:
        for record in records:
            touch(record)
        assert [r for m in netlink.parse(buf) if (r := m.record()) is not None] == records


class Recorder(rtnl.Route):
    """A Route that keeps the requests of its changes instead of sending them."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Request] = []

    def _change(self, request: Request) -> None:
        self.sent.append(request)


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    """One Recorder for the module (hypothesis runs many examples on it)."""
    route = Recorder()
    try:
        yield route
    finally:
        route.close()


def sent(route: Recorder) -> tuple[Message, Request]:
    """The last request route made, parsed back by netlink.parse."""
    request = route.sent.pop()
    (msg,) = netlink.parse(framed(request))
    return msg, request


def nested_attrs(value: bytes, header: int) -> _core.Attrs:
    """The attributes after a header of header bytes in value, read by netlink.parse."""
    (msg,) = netlink.parse(datagram(0x7FFF, value))
    return msg.attrs(header)


indexes = st.integers(1, 2**31 - 1)
names = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=15)
v4_interfaces = st.builds(ipaddress.IPv4Interface, st.tuples(
    st.integers(0, 2**32 - 1), st.integers(0, 32)))
v6_interfaces = st.builds(ipaddress.IPv6Interface, st.tuples(
    st.integers(0, 2**128 - 1), st.integers(0, 128)))
interfaces = st.one_of(v4_interfaces, v6_interfaces)


@settings(max_examples=200, deadline=None)
@given(iface=interfaces, index=indexes, label=st.none() | names,
       scope=st.sampled_from([0, 200, 253, 254]), brd=st.booleans())
def test_address_requests_parse_back(recorder: Recorder, iface: Any, index: int,
                                     label: str | None, scope: int, brd: bool) -> None:
    broadcast = brd and iface.version == 4
    recorder.add_address(index, str(iface), broadcast=broadcast, label=label, scope=scope)
    msg, _ = sent(recorder)
    family = AF_INET if iface.version == 4 else AF_INET6
    assert (msg.type, msg.flags) == (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)
    assert IFADDRMSG.unpack_from(msg.payload) == (family, iface.network.prefixlen, 0, scope,
                                                  index)
    attrs = msg.attrs(IFADDRMSG.size)
    assert attrs[IFA["LOCAL"]] == attrs[IFA["ADDRESS"]] == iface.ip.packed
    assert attrs.get(IFA["BROADCAST"]) == (
        iface.network.broadcast_address.packed if broadcast else None)
    assert (attrs.str(IFA["LABEL"]) if IFA["LABEL"] in attrs else None) == label
    recorder.del_address(index, str(iface))
    msg, _ = sent(recorder)
    assert msg.type == RTM_DELADDR
    assert IFADDRMSG.unpack_from(msg.payload)[4] == index
    assert msg.attrs(IFADDRMSG.size).items() == [(IFA["LOCAL"], iface.ip.packed)]


def gateways_for(network: Any) -> st.SearchStrategy[str]:
    """Addresses of network's family, as text."""
    if network.version == 4:
        return st.integers(1, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
    return st.integers(1, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@st.composite
def route_args(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments for add_route: any prefix, gateways of its family, maybe a
    link, table, metric, preferred source, next hops, replace."""
    network = draw(interfaces).network
    gateway = gateways_for(network)
    default = network.prefixlen == 0 and network.version == 4  # "default" is IPv4's
    args: dict[str, Any] = {"dst": "default" if default else str(network)}
    args["gateway"] = draw(st.none() | gateway)
    args["link"] = draw(st.none() | indexes)
    args["table"] = draw(st.none() | st.integers(1, 2**32 - 1))
    args["metric"] = draw(st.none() | st.integers(0, 2**32 - 1))
    args["protocol"] = draw(st.integers(0, 255))
    args["type"] = draw(st.sampled_from([RTN_UNICAST, RTN_LOCAL, RTN_BLACKHOLE]))
    args["prefsrc"] = draw(st.none() | gateway)
    args["nexthops"] = draw(st.lists(st.tuples(gateway, indexes, st.integers(1, 256)),
                                     max_size=4))
    args["replace"] = draw(st.booleans())
    return args


@settings(max_examples=300, deadline=None)
@given(args=route_args())
def test_route_requests_parse_back(recorder: Recorder, args: dict[str, Any]) -> None:
    recorder.add_route(**args)
    msg, _ = sent(recorder)
    network = ipaddress.ip_network("0.0.0.0/0" if args["dst"] == "default" else args["dst"])
    family = AF_INET if network.version == 4 else AF_INET6
    table = args["table"] or RT_TABLE_MAIN
    assert msg.type == RTM_NEWROUTE
    assert msg.flags == NLM_F_CREATE | (NLM_F_REPLACE if args["replace"] else NLM_F_EXCL)
    fam, dst_len, src_len, tos, rtm_table, protocol, scope, rtype, flags = RTMSG.unpack_from(
        msg.payload)
    assert (fam, dst_len, src_len, tos, protocol, rtype, flags) == (
        family, network.prefixlen, 0, 0, args["protocol"], args["type"], 0)
    assert rtm_table == (table if table < 256 else 0)
    direct = args["gateway"] is None and not args["nexthops"] and args["type"] == RTN_UNICAST
    assert scope == (RT_SCOPE_HOST if args["type"] == RTN_LOCAL else RT_SCOPE_LINK
                     if direct and family == AF_INET else RT_SCOPE_UNIVERSE)  # as ip sets it
    attrs = msg.attrs(RTMSG.size)
    assert attrs.u32(RTA["TABLE"]) == table
    assert attrs.get(RTA["DST"]) == (network.network_address.packed if network.prefixlen
                                     else None)
    expect = {"GATEWAY": args["gateway"] and ipaddress.ip_address(args["gateway"]).packed,
              "PREFSRC": args["prefsrc"] and ipaddress.ip_address(args["prefsrc"]).packed,
              "OIF": None if args["link"] is None else struct.pack("=I", args["link"]),
              "PRIORITY": None if args["metric"] is None else struct.pack("=I", args["metric"])}
    for name, value in expect.items():
        assert attrs.get(RTA[name]) == value, name
    hops = []
    if RTA["MULTIPATH"] in attrs:
        value = attrs[RTA["MULTIPATH"]]
        while value:
            length, hop_flags, hop_count, index = RTNEXTHOP.unpack_from(value)
            gateway = nested_attrs(value[:length], RTNEXTHOP.size)[RTA["GATEWAY"]]
            hops.append((str(ipaddress.ip_address(gateway)), index, hop_count + 1))
            assert hop_flags == 0
            value = value[(length + 3) & ~3:]
    assert hops == [(str(ipaddress.ip_address(g)), i, w) for g, i, w in args["nexthops"]]
    recorder.del_route(args["dst"], args["gateway"], args["link"], args["table"],
                       args["metric"])
    deleted, _ = sent(recorder)
    assert deleted.type == RTM_DELROUTE
    assert {t: v for t, v in deleted.attrs(RTMSG.size).items()} == {
        t: v for t, v in attrs.items() if t in (RTA["TABLE"], RTA["DST"], RTA["GATEWAY"],
                                                RTA["OIF"], RTA["PRIORITY"])}


@settings(max_examples=200, deadline=None)
@given(index=indexes, up=st.none() | st.booleans(), mtu=st.none() | st.integers(0, 2**32 - 1),
       name=st.none() | names, mac=st.none() | st.binary(min_size=6, max_size=6),
       master=st.none() | st.just(0) | indexes, txqlen=st.none() | st.integers(0, 2**32 - 1))
def test_set_link_requests_parse_back(recorder: Recorder, index: int, up: bool | None,
                                      mtu: int | None, name: str | None, mac: bytes | None,
                                      master: int | None, txqlen: int | None) -> None:
    recorder.set_link(index, up=up, mtu=mtu, name=name, mac=None if mac is None else mac.hex(":"),
                      master=master, txqlen=txqlen)
    msg, _ = sent(recorder)
    assert (msg.type, msg.flags) == (RTM_NEWLINK, 0)
    assert IFINFOMSG.unpack_from(msg.payload) == (
        0, 0, index, IFF_UP if up else 0, 0 if up is None else IFF_UP)
    attrs = msg.attrs(IFINFOMSG.size)
    u32 = {"MTU": mtu, "MASTER": master, "TXQLEN": txqlen}
    for field, value in u32.items():
        assert (attrs.u32(IFLA[field]) if IFLA[field] in attrs else None) == value, field
    assert (attrs.str(IFLA["IFNAME"]) if IFLA["IFNAME"] in attrs else None) == name
    assert attrs.get(IFLA["ADDRESS"]) == mac


@settings(max_examples=100, deadline=None)
@given(name=names, peer=names, peer_netns=st.none() | st.integers(0, 2**31 - 1),
       index=indexes)
def test_link_creation_requests_parse_back(recorder: Recorder, name: str, peer: str,
                                           peer_netns: int | None, index: int) -> None:
    recorder.add_veth(name, peer, peer_netns=peer_netns)
    msg, _ = sent(recorder)
    assert (msg.type, msg.flags) == (RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
    attrs = msg.attrs(IFINFOMSG.size)
    assert attrs.str(IFLA["IFNAME"]) == name
    info = attrs.nested(IFLA["LINKINFO"])
    assert info.str(IFLA_INFO_KIND) == "veth"
    peer_info = nested_attrs(info.nested(IFLA_INFO_DATA)[VETH_INFO_PEER], IFINFOMSG.size)
    assert peer_info.str(IFLA["IFNAME"]) == peer
    assert (peer_info.u32(IFLA["NET_NS_FD"]) if IFLA["NET_NS_FD"] in peer_info
            else None) == peer_netns
    recorder.add_bridge(name)
    msg, _ = sent(recorder)
    bridge = msg.attrs(IFINFOMSG.size)
    assert bridge.str(IFLA["IFNAME"]) == name
    assert bridge.nested(IFLA["LINKINFO"]).items() == [(IFLA_INFO_KIND, b"bridge\0")]
    recorder.del_link(index)
    msg, _ = sent(recorder)
    assert msg.type == RTM_DELLINK and IFINFOMSG.unpack_from(msg.payload)[2] == index
    assert msg.attrs(IFINFOMSG.size).items() == []
