"""rtnetlink: links, addresses, routes and neighbours, decoded fast; changes; events.

``Route`` (pyroute2's IPRoute, Open vSwitch's rtnetlink users) talks to the
kernel's routing netlink in one network namespace. Its dumps are decoded by
the compiled core in one pass over each received datagram into light records
(``Link``, ``Address``, ``RouteEntry``, ``Neighbour``) that turn a field into a
Python object only when it is read. Changes are transactions answered with an
ACK or a ``NetlinkError`` carrying the kernel's extended-ACK text. ``events()``
(and ``events_async()``) yield the records of change notifications; after an
``Overrun`` they can resync by dumping again and yielding the differences.

A ``Route`` belongs to one thread at a time, like the ``netlink.Socket`` under it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any, NamedTuple, TypeVar, cast

from latchwire import netlink
from latchwire._core import Address, Link, Neighbour, NextHop, RouteEntry, check_timeout, decode
from latchwire.errors import NetlinkError, Overrun
from latchwire.netlink import (
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    Record,
    Request,
    attr,
    nested,
    string,
    u32,
)

__all__ = [
    "Address", "Event", "Link", "Neighbour", "NextHop", "Record", "Resync", "Route",
    "RouteEntry", "decode",
]

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6

RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255
RTPROT_KERNEL = 2
RTPROT_BOOT = 3
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
RT_SCOPE_NOWHERE = 255
RTN_UNICAST = 1
RTN_LOCAL = 2
IFF_UP = 0x1

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_TXQLEN = 13
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_LABEL = 3
IFA_BROADCAST = 4
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_MULTIPATH = 9
RTA_TABLE = 15

_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope,
#                                       type, flags
_NDMSG = struct.Struct("=BxxxiHBB")  # family, index, state, flags, type
_RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops (weight - 1), ifindex

# Multicast groups by the names events() takes (linux/rtnetlink.h).
GROUPS = {
    "link": netlink.RTNLGRP_LINK,
    "neigh": netlink.RTNLGRP_NEIGH,
    "ipv4_addr": netlink.RTNLGRP_IPV4_IFADDR,
    "ipv4_route": netlink.RTNLGRP_IPV4_ROUTE,
    "ipv6_addr": netlink.RTNLGRP_IPV6_IFADDR,
    "ipv6_route": netlink.RTNLGRP_IPV6_ROUTE,
}
DEFAULT_GROUPS = ("link", "ipv4_addr", "ipv6_addr", "ipv4_route", "ipv6_route")
_RETRIES = 5  # a decoded dump is repeated this often while the kernel flags it inconsistent


class Resync(NamedTuple):
    """In an event stream: notifications were lost (Overrun), the tables were
    dumped again, and the events that follow (``added + changed + removed`` of
    them) are the differences against what the stream had seen."""

    added: int
    changed: int
    removed: int


Event = Link | Address | RouteEntry | Neighbour | Resync
"""What events() yields: a record (``.deleted`` for a removal) or a Resync marker."""

LinkRef = int | str
"""A link by index or by name."""
R = TypeVar("R")


def _family_of(family: int | None) -> Sequence[int]:
    if family is None:
        return (AF_INET, AF_INET6)
    if family not in (AF_INET, AF_INET6):
        raise ValueError(f"family must be AF_INET, AF_INET6 or None, not {family}")
    return (family,)


def _table_id(table: int | str | None) -> int:
    """The table id of a dump: 0 for "all", the main table's for None."""
    if table == "all":
        return 0
    if table is None:
        return RT_TABLE_MAIN
    if isinstance(table, int) and 0 < table < 2**32:
        return table
    raise ValueError(f"table must be None, 'all' or a table number, not {table!r}")


def _route_request(table_id: int) -> Callable[[int], Request]:
    """The dump request of table_id's routes of a family (the table in the
    header when it fits in 8 bits, and in RTA_TABLE unless all, as ip does)."""
    attrs = attr(RTA_TABLE, u32(table_id)) if table_id else b""
    return lambda fam: Request(
        RTM_GETROUTE, header=_RTMSG.pack(fam, 0, 0, 0, table_id if table_id < 256 else 0,
                                         0, 0, 0, 0), attrs=attrs)


class _Op(NamedTuple):
    """A netlink operation a Route method asks of the face driving it (Route
    blocks on it, AsyncRoute awaits it): a dump read whole, sent back as
    (records, filtered), a transaction, sent back as its reply, or a change
    (a transaction whose reply is None: the face's _change does it)."""

    request: Request
    dump: bool
    change: bool = False


# The methods of Route and AsyncRoute, once: generators that yield the
# operations they need and return the method's result, so that the two faces
# differ only in how they wait.
Ops = Generator[_Op, Any, R]


def _dump_families(family: int | None, request: Callable[[int], Request]
                   ) -> Ops[tuple[list[Record], bool]]:
    """A dump of request(fam) for each family asked for (both for None), the
    records one after the other; filtered if the kernel filtered every dump.
    A dump's records are all of the type asked for: the kernel answers a GET
    of one kind with messages of that kind only."""
    records: list[Record] = []
    filtered = True
    for fam in _family_of(family):
        more, more_filtered = yield _Op(request(fam), True)
        records += more
        filtered = filtered and more_filtered
    return records, filtered


def _links() -> Ops[list[Link]]:
    records, _ = yield _Op(Request(RTM_GETLINK, header=_IFINFOMSG.pack(0, 0, 0, 0, 0)), True)
    return cast(list[Link], records)


def _link(link: LinkRef) -> Ops[Link]:
    index, name = (link, b"") if isinstance(link, int) else (0, attr(IFLA_IFNAME,
                                                                      string(link)))
    reply = yield _Op(Request(RTM_GETLINK, header=_IFINFOMSG.pack(0, 0, index, 0, 0),
                              attrs=name), False)
    record = None if reply is None else reply.record()
    if not isinstance(record, Link):
        raise NetlinkError(errno.ENODEV, f"no link {link!r}")
    return record


def _index(link: LinkRef) -> Ops[int]:
    if isinstance(link, int):
        return link
    return (yield from _link(link)).index


def _addresses(family: int | None) -> Ops[list[Address]]:
    records, _ = yield from _dump_families(
        family, lambda fam: Request(RTM_GETADDR, header=_IFADDRMSG.pack(fam, 0, 0, 0, 0)))
    return cast(list[Address], records)


def _in_table(records: list[Any], table_id: int, filtered: bool) -> list[RouteEntry]:
    """The routes of table_id among records (all of them: 0), unless the kernel
    filtered the dump by table already (not every kernel does)."""
    routes = cast(list[RouteEntry], records)
    if table_id and not filtered:
        routes = [r for r in routes if r.table == table_id]
    return routes


def _routes(family: int | None, table: int | str | None) -> Ops[list[RouteEntry]]:
    table_id = _table_id(table)
    records, filtered = yield from _dump_families(family, _route_request(table_id))
    return _in_table(records, table_id, filtered)


def _route_batch_plan(family: int | None, table: int | str | None
                      ) -> tuple[list[Request], int]:
    """route_batches()'s dump requests and table id (the arguments checked now)."""
    table_id = _table_id(table)
    request = _route_request(table_id)
    return [request(fam) for fam in _family_of(family)], table_id


def _neighbours(family: int | None) -> Ops[list[Neighbour]]:
    records, _ = yield from _dump_families(
        family, lambda fam: Request(RTM_GETNEIGH, header=_NDMSG.pack(fam, 0, 0, 0, 0)))
    return cast(list[Neighbour], records)


def _change(request: Request) -> Ops[None]:
    yield _Op(request, False, change=True)


def _add_address(link: LinkRef, address: str, broadcast: str | bool | None,
                 label: str | None, scope: int) -> Ops[None]:
    iface = ipaddress.ip_interface(address)
    family = AF_INET if iface.version == 4 else AF_INET6
    attrs = attr(IFA_LOCAL, iface.ip.packed) + attr(IFA_ADDRESS, iface.ip.packed)
    if broadcast is True:
        broadcast = str(iface.network.broadcast_address)
    if broadcast:
        attrs += attr(IFA_BROADCAST, ipaddress.ip_address(broadcast).packed)
    if label is not None:
        attrs += attr(IFA_LABEL, string(label))
    index = yield from _index(link)
    header = _IFADDRMSG.pack(family, iface.network.prefixlen, 0, scope, index)
    yield from _change(Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, header, attrs))


def _del_address(link: LinkRef, address: str) -> Ops[None]:
    iface = ipaddress.ip_interface(address)
    family = AF_INET if iface.version == 4 else AF_INET6
    index = yield from _index(link)
    header = _IFADDRMSG.pack(family, iface.network.prefixlen, 0, 0, index)
    yield from _change(Request(RTM_DELADDR, 0, header, attr(IFA_LOCAL, iface.ip.packed)))


def _route_attrs(dst: str, gateway: str | None, link: LinkRef | None, table: int | None,
                 metric: int | None) -> Ops[tuple[int, int, int, bytes]]:
    """(family, dst_len, table, attributes) shared by add_route and del_route."""
    net = ipaddress.ip_network("0.0.0.0/0" if dst == "default" else dst)
    table_id = RT_TABLE_MAIN if table is None else table
    attrs = attr(RTA_TABLE, u32(table_id))
    if net.prefixlen:
        attrs += attr(RTA_DST, net.network_address.packed)
    if gateway is not None:
        attrs += attr(RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
    if link is not None:
        attrs += attr(RTA_OIF, u32((yield from _index(link))))
    if metric is not None:
        attrs += attr(RTA_PRIORITY, u32(metric))
    family = AF_INET if net.version == 4 else AF_INET6
    return family, net.prefixlen, table_id, attrs


def _add_route(dst: str, gateway: str | None, link: LinkRef | None, table: int | None,
               metric: int | None, protocol: int, scope: int | None, type: int,
               prefsrc: str | None, nexthops: Iterable[tuple[str, LinkRef, int]],
               replace: bool) -> Ops[None]:
    family, dst_len, table_id, attrs = yield from _route_attrs(dst, gateway, link, table,
                                                               metric)
    if prefsrc is not None:
        attrs += attr(RTA_PREFSRC, ipaddress.ip_address(prefsrc).packed)
    hops = b""
    for hop_gateway, hop_link, weight in nexthops:
        hop_attrs = attr(RTA_GATEWAY, ipaddress.ip_address(hop_gateway).packed)
        hops += _RTNEXTHOP.pack(_RTNEXTHOP.size + len(hop_attrs), 0, weight - 1,
                                (yield from _index(hop_link))) + hop_attrs
    if hops:
        attrs += attr(RTA_MULTIPATH, hops)
    if scope is None:  # as ip: a route without a gateway is on the link
        direct = gateway is None and not hops and type == RTN_UNICAST
        scope = RT_SCOPE_HOST if type == RTN_LOCAL else (
            RT_SCOPE_LINK if direct and family == AF_INET else RT_SCOPE_UNIVERSE)
    header = _RTMSG.pack(family, dst_len, 0, 0, table_id if table_id < 256 else 0,
                         protocol, scope, type, 0)
    flags = NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
    yield from _change(Request(RTM_NEWROUTE, flags, header, attrs))


def _del_route(dst: str, gateway: str | None, link: LinkRef | None, table: int | None,
               metric: int | None) -> Ops[None]:
    family, dst_len, table_id, attrs = yield from _route_attrs(dst, gateway, link, table,
                                                               metric)
    header = _RTMSG.pack(family, dst_len, 0, 0, table_id if table_id < 256 else 0, 0,
                         RT_SCOPE_NOWHERE, 0, 0)
    yield from _change(Request(RTM_DELROUTE, 0, header, attrs))


def _set_link(link: LinkRef, up: bool | None, mtu: int | None, name: str | None,
              mac: str | None, master: LinkRef | None, txqlen: int | None) -> Ops[None]:
    flags = change = 0
    if up is not None:
        flags, change = (IFF_UP if up else 0), IFF_UP
    attrs = b""
    if mtu is not None:
        attrs += attr(IFLA_MTU, u32(mtu))
    if name is not None:
        attrs += attr(IFLA_IFNAME, string(name))
    if mac is not None:
        attrs += attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
    if master is not None:
        attrs += attr(IFLA_MASTER, u32(0 if master == 0 else (yield from _index(master))))
    if txqlen is not None:
        attrs += attr(IFLA_TXQLEN, u32(txqlen))
    header = _IFINFOMSG.pack(0, 0, (yield from _index(link)), flags, change)
    yield from _change(Request(RTM_NEWLINK, 0, header, attrs))


def _add_link(name: str, kind: str, data: bytes = b"") -> Ops[None]:
    info = attr(IFLA_INFO_KIND, string(kind))
    if data:
        info += nested(IFLA_INFO_DATA, [data])
    attrs = attr(IFLA_IFNAME, string(name)) + nested(IFLA_LINKINFO, [info])
    yield from _change(Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
                               _IFINFOMSG.pack(0, 0, 0, 0, 0), attrs))


def _add_veth(name: str, peer: str, peer_netns: int | None) -> Ops[None]:
    peer_attrs = attr(IFLA_IFNAME, string(peer))
    if peer_netns is not None:
        peer_attrs += attr(IFLA_NET_NS_FD, u32(peer_netns))
    yield from _add_link(name, "veth", attr(VETH_INFO_PEER, _IFINFOMSG.pack(0, 0, 0, 0, 0)
                                            + peer_attrs))


def _del_link(link: LinkRef) -> Ops[None]:
    yield from _change(Request(RTM_DELLINK, 0, _IFINFOMSG.pack(0, 0, (yield from _index(link)),
                                                                0, 0)))


class Route:
    """rtnetlink in one network namespace: dumps, changes and events.

    ``netns`` is a namespace name under /run/netns, a namespace descriptor, or
    None for the caller's. Dumps retry while the kernel flags them
    inconsistent (``DumpInterrupted`` after 5 tries); changes raise
    ``NetlinkError`` with the kernel's errno and extended-ACK text. ``timeout``
    bounds every wait of every call (TimeoutError); None, ``inf`` or more than
    about 31 years is no limit, and NaN, a negative number (ValueError) or a
    non-number (TypeError) is refused here, before any socket is made.
    """

    def __init__(self, netns: str | int | None = None, rcvbuf: int | None = None,
                 timeout: float | None = 10.0) -> None:
        self.netns = netns
        self.timeout = check_timeout(timeout)
        self._rcvbuf = rcvbuf
        self._sock = netlink.Socket(netlink.NETLINK_ROUTE, netns=netns, rcvbuf=rcvbuf,
                                    strict=True)

    def __enter__(self) -> Route:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close its netlink socket; a dump still running keeps its own channel until it
        ends. Closing again does nothing."""
        self._sock.close()

    def _run(self, ops: Generator[_Op, Any, R]) -> R:
        """What ops (a method's generator of netlink operations) returns, its
        dumps and transactions done here, blocking."""
        sock = self._sock
        try:
            op = next(ops)
            while True:
                if op.dump:
                    dump = sock.dump(op.request, retries=_RETRIES, timeout=self.timeout,
                                     decode=True)
                    op = ops.send((dump.all(), dump.filtered))
                elif op.change:
                    self._change(op.request)
                    op = ops.send(None)
                else:
                    op = ops.send(sock.transact(op.request, self.timeout))
        except StopIteration as stop:
            return cast(R, stop.value)

    # -- dumps ---------------------------------------------------------------

    def links(self) -> list[Link]:
        """Every link."""
        return self._run(_links())

    def link(self, link: LinkRef) -> Link:
        """One link by index or name; NetlinkError ENODEV if there is none."""
        return self._run(_link(link))

    def index(self, link: LinkRef) -> int:
        """The index of a link given by index or name."""
        return self._run(_index(link))

    def addresses(self, family: int | None = None) -> list[Address]:
        """Every address of family (AF_INET, AF_INET6, or None for both)."""
        return self._run(_addresses(family))

    def routes(self, family: int | None = AF_INET, table: int | str | None = None
               ) -> list[RouteEntry]:
        """The routes of family (AF_INET, AF_INET6, or None for both) in table:
        None for the main table (as ``ip route``), a table number, or "all"."""
        return self._run(_routes(family, table))

    def route_batches(self, family: int | None = AF_INET, table: int | str | None = None
                      ) -> Generator[list[RouteEntry], None, None]:
        """routes(), streamed: one list of routes a received datagram, so that
        100,000 routes can be written out without holding them all. A dump
        read in part cannot be repeated: one the kernel flagged inconsistent
        raises DumpInterrupted after its last batch (``ip`` warns and goes on).
        The arguments are checked here, before any dump starts."""
        return self._route_batches(*_route_batch_plan(family, table))

    def _route_batches(self, requests: Sequence[Request], table_id: int
                       ) -> Generator[list[RouteEntry], None, None]:
        for request in requests:
            dump = self._sock.dump(request, timeout=self.timeout, decode=True)
            with dump:
                for batch in dump.batches():
                    yield _in_table(batch, table_id, dump.filtered)

    def neighbours(self, family: int | None = None) -> list[Neighbour]:
        """Every neighbour (ARP and NDP) entry of family (None for both)."""
        return self._run(_neighbours(family))

    # -- changes -------------------------------------------------------------

    def _change(self, request: Request) -> None:
        """Make the change request asks for (NetlinkError if the kernel refuses)."""
        self._sock.transact(request, self.timeout)

    def add_address(self, link: LinkRef, address: str, broadcast: str | bool | None = None,
                    label: str | None = None, scope: int = RT_SCOPE_UNIVERSE) -> None:
        """Add address ("10.0.0.1/24", "2001:db8::1/64") to link. broadcast=True
        sets the IPv4 broadcast address from the prefix (``ip addr ... brd +``)."""
        self._run(_add_address(link, address, broadcast, label, scope))

    def del_address(self, link: LinkRef, address: str) -> None:
        """Remove address ("10.0.0.1/24") from link."""
        self._run(_del_address(link, address))

    def add_route(self, dst: str, gateway: str | None = None, link: LinkRef | None = None,
                  table: int | None = None, metric: int | None = None,
                  protocol: int = RTPROT_STATIC, scope: int | None = None,
                  type: int = RTN_UNICAST, prefsrc: str | None = None,
                  nexthops: Iterable[tuple[str, LinkRef, int]] = (),
                  replace: bool = False) -> None:
        """Add a route to dst ("10.1.0.0/16" or "default") via gateway and/or
        link, in table (main by default). nexthops gives a multipath route as
        (gateway, link, weight) triples. replace=True replaces an existing route
        (``ip route replace``) instead of failing with EEXIST."""
        self._run(_add_route(dst, gateway, link, table, metric, protocol, scope, type, prefsrc,
                             nexthops, replace))

    def del_route(self, dst: str, gateway: str | None = None, link: LinkRef | None = None,
                  table: int | None = None, metric: int | None = None) -> None:
        """Remove the route to dst from table (main by default); gateway, link
        and metric narrow the match when several routes have that prefix."""
        self._run(_del_route(dst, gateway, link, table, metric))

    def set_link(self, link: LinkRef, up: bool | None = None, mtu: int | None = None,
                 name: str | None = None, mac: str | None = None,
                 master: LinkRef | None = None, txqlen: int | None = None) -> None:
        """Change a link: administratively up or down, MTU, name, MAC address,
        master (a bridge; 0 detaches it), transmit queue length."""
        self._run(_set_link(link, up, mtu, name, mac, master, txqlen))

    def add_veth(self, name: str, peer: str, peer_netns: int | None = None) -> None:
        """Create a veth pair name <-> peer; peer_netns (a namespace descriptor)
        puts the peer in another namespace."""
        self._run(_add_veth(name, peer, peer_netns))

    def add_bridge(self, name: str) -> None:
        """Create a bridge."""
        self._run(_add_link(name, "bridge"))

    def del_link(self, link: LinkRef) -> None:
        """Delete a link (a veth pair goes with either end)."""
        self._run(_del_link(link))

    # -- events --------------------------------------------------------------

    def events(self, groups: Iterable[str] = DEFAULT_GROUPS, resync: bool = True,
               timeout: float | None = None) -> Generator[Event, None, None]:
        """The records of change notifications, as they come; deletions have
        ``deleted`` set. TimeoutError if none comes within timeout (checked
        here, as Route's: None, ``inf`` or more than about 31 years is no limit).

        The groups are joined before this returns, so no change made after the
        call is missed. Notifications the kernel had to drop for want of room
        in the receive buffer (ENOBUFS, whichever receive it is reported to:
        an Overrun) are dealt with as resync says. With resync, the stream
        dumps the tables again and yields a Resync marker, then the
        differences against what it had seen: removed records (as deletions),
        new and changed ones, and goes on. Without it, the stream raises
        Overrun, which ends it (its socket is closed): what was lost can only
        be learnt from a dump, so a caller that goes on starts a new stream
        and dumps. The stream's socket closes with the iterator.
        """
        timeout = check_timeout(timeout)
        return _EventStream(self, groups, resync).run(timeout)

    def events_async(self, groups: Iterable[str] = DEFAULT_GROUPS, resync: bool = True
                     ) -> AsyncGenerator[Event, None]:
        """events() for asyncio (or trio): waits through the running loop's reader
        callbacks (no thread), without a timeout of its own (bound a wait with
        ``asyncio.wait_for``). A resync's dump runs in the loop; it is short
        (about 70 ms for 100,000 routes). An overrun as for events(): with
        resync=False, Overrun ends the stream."""
        return _EventStream(self, groups, resync).run_async()


class _View:
    """What an event stream has seen: records by (class, key), and routes also
    by the part of their key an ``ip route replace`` matches (``key[:8]``), so
    that a route that replaces others (``replaces``) drops them."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self.records: dict[tuple[type, object], Record] = {}
        self._routes: dict[tuple[object, ...], set[tuple[type, object]]] = {}
        for record in records:
            self.apply(record)

    def apply(self, record: Record) -> None:
        """Take in a notification (or a dumped record)."""
        key = (type(record), record.key)
        if record.deleted:
            self._drop(key)
            return
        if isinstance(record, RouteEntry):
            if record.replaces:
                for old in list(self._routes.get(record.key[:8], ())):
                    self._drop(old)
            self._routes.setdefault(record.key[:8], set()).add(key)
        self.records[key] = record

    def _drop(self, key: tuple[type, object]) -> None:
        record = self.records.pop(key, None)
        if isinstance(record, RouteEntry):
            slot = self._routes[record.key[:8]]
            slot.discard(key)
            if not slot:
                del self._routes[record.key[:8]]


class _EventStream:
    """A socket joined to rtnetlink groups, and, for resyncs, a _View of the
    records it has seen."""

    def __init__(self, route: Route, groups: Iterable[str], resync: bool) -> None:
        names = list(groups)
        unknown = [g for g in names if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown rtnetlink groups {unknown}; known: {sorted(GROUPS)}")
        self._route = route
        self._names = names
        self._sock = netlink.Socket(netlink.NETLINK_ROUTE, netns=route.netns,
                                    rcvbuf=route._rcvbuf, strict=True)
        self._seen: _View | None = None
        try:
            for name in names:
                self._sock.join_group(GROUPS[name])
            if resync:  # joined first: a change during this dump still arrives
                self._seen = self._snapshot()
        except BaseException:
            self._sock.close()
            raise

    def run(self, timeout: float | None) -> Generator[Event, None, None]:
        """The events, batch by batch; the socket closes with the iterator."""
        try:
            while True:
                yield from self.next_batch(timeout)
        finally:
            self._sock.close()

    async def run_async(self) -> AsyncGenerator[Event, None]:
        """run() on the event loop (asyncio or trio), woken by the descriptor."""
        from latchwire.netlink_async import wait_readable  # here: asyncio loads on use

        try:
            while True:
                try:
                    batch = self.next_batch(0)
                except TimeoutError:
                    await wait_readable(self._sock.fileno())
                    continue
                for event in batch:
                    yield event
        finally:
            self._sock.close()

    def _snapshot(self) -> _View:
        """What the kernel has now, in the groups this stream watches."""
        records: list[Record] = []
        route = self._route
        if "link" in self._names:
            records += route.links()
        if "neigh" in self._names:
            records += route.neighbours()
        for family, addr_group, route_group in ((AF_INET, "ipv4_addr", "ipv4_route"),
                                                (AF_INET6, "ipv6_addr", "ipv6_route")):
            if addr_group in self._names:
                records += route.addresses(family)
            if route_group in self._names:
                records += route.routes(family, table="all")
        return _View(records)

    def next_batch(self, timeout: float | None) -> list[Event]:
        """The events of the next datagram (TimeoutError if none; timeout checked
        by the caller), or, after an Overrun, a Resync and the differences
        (without resync, the Overrun is raised)."""
        try:
            records = self._sock.recv(timeout, decode=True)
        except Overrun:
            if self._seen is None:
                raise
            return self._resync()
        if self._seen is not None:
            for record in records:
                self._seen.apply(record)
        return list(records)

    def _resync(self) -> list[Event]:
        assert self._seen is not None
        self._sock.drain()  # what is still queued is older than the dump below
        view = self._snapshot()
        seen, fresh = self._seen.records, view.records
        removed = [old.as_deleted() for key, old in seen.items() if key not in fresh]
        added = [new for key, new in fresh.items() if key not in seen]
        changed = [new for key, new in fresh.items() if key in seen and seen[key] != new]
        self._seen = view
        return [Resync(len(added), len(changed), len(removed)), *removed, *added, *changed]
