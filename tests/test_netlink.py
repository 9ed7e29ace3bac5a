"""latchwire.netlink against the kernel, in private network namespaces.

Every test talks rtnetlink to a real kernel in a namespace of its own making
(``ip netns add lwtest-<random>``): a module-wide one with a veth pair, an
address and 10,000 /32 routes in table 100 (loaded with ``ip -batch``), and a
fresh one for the tests that flood or bloat a namespace. What latchwire reads is
checked against what ``ip -j`` reports, decoded here with ``struct`` and the
UAPI layouts (``linux/rtnetlink.h``, ``linux/if_link.h``), not with
latchwire's own rtnetlink layer.

Covered: dumps that stay exact while the same socket transacts and runs other
dumps in between (copy-on-write), sockets and dumps closed in either order,
abandoned dumps that leave nothing behind, notifications that never leak into a
dump or a transaction's answer and are still delivered afterwards, extended-ACK
errors, ``transact_many``, ``Overrun`` and a resync, a datagram larger than the
receive buffer, signals during a blocking ``recv``, forged messages from other
processes, strict checking, and namespaces by name and by descriptor.

Nothing waits with a sleep: events are awaited with ``recv(timeout=...)`` loops
under a deadline, and a thread blocked in ``recv`` is observed in the kernel
(``/proc/self/task/TID/syscall``). The ``watchdog`` fixture ends the run if a
test hangs anyway.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import os
import platform
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from lwnetns import IP, Churn, Netns, drop_netns, host_links, make_netns
from lwtest import BOUND, WAIT, need
from lwthreads import Worker, busy_thread, wait_in_poll

import latchwire
from latchwire import netlink
from latchwire.netlink import Message, Request, Socket

pytestmark = [pytest.mark.usefixtures("watchdog"), pytest.mark.kernel]

# linux/rtnetlink.h, linux/if_link.h, linux/netlink.h
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
# rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTMSG = struct.Struct("=BBBBBBBBI")
NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLMSGERR = struct.Struct("=i")
IFLA_IFNAME = 3
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFLA_PROP_LIST = 52
IFLA_ALT_IFNAME = 53
RTA_DST = 1
RTA_OIF = 4
RTA_TABLE = 15
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
NLM_F_DUMP_FILTERED = 0x20

TABLE = 100  # the module namespace's 10,000 routes live here
ROUTES = 10_000
ALTNAMES = 490  # 127-character alternative names: a link message of ~66.5 KB


# ---------------------------------------------------------------------------
# Namespaces


@pytest.fixture(scope="module")
def ns() -> Iterator[Netns]:
    """The module's namespace, with 10,000 /32 routes 10.1.x.y in table 100."""
    space = make_netns()
    try:
        space.batch(f"route add {route_prefix(i)} dev veth0 table {TABLE}"
                    for i in range(ROUTES))
        yield space
    finally:
        drop_netns(space)


@pytest.fixture
def fresh_ns() -> Iterator[Netns]:
    """A namespace of the test's own, for tests that flood or bloat it."""
    space = make_netns()
    try:
        yield space
    finally:
        drop_netns(space)


def route_prefix(i: int) -> str:
    return f"10.1.{i >> 8}.{i & 255}/32"


# ---------------------------------------------------------------------------
# Requests and decoding, straight from the UAPI layouts


def link_dump() -> Request:
    return Request(netlink.RTM_GETLINK, header=IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))


def route_dump(table: int = 0) -> Request:
    return Request(netlink.RTM_GETROUTE,
                   header=RTMSG.pack(socket.AF_INET, 0, 0, 0, table, 0, 0, 0, 0))


def getlink(name: str | None = None, index: int = 0) -> Request:
    """RTM_GETLINK of one link, by name or by index."""
    attrs = netlink.attr(IFLA_IFNAME, netlink.string(name)) if name is not None else b""
    return Request(netlink.RTM_GETLINK,
                   header=IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0), attrs=attrs)


def route_request(type: int, prefix: str, oif: int, table: int = TABLE,
                  flags: int = 0) -> Request:
    """RTM_NEWROUTE/RTM_DELROUTE of a unicast route to prefix through link oif.

    The prefix is sent as written, host bits and all (ipaddress is told not to
    fix it).
    """
    net = ipaddress.IPv4Interface(prefix)
    header = RTMSG.pack(socket.AF_INET, net.network.prefixlen, 0, 0,
                        table if table < 256 else 0, RTPROT_STATIC, RT_SCOPE_LINK,
                        RTN_UNICAST, 0)
    attrs = (netlink.attr(RTA_DST, net.ip.packed) + netlink.attr(RTA_OIF, netlink.u32(oif))
             + netlink.attr(RTA_TABLE, netlink.u32(table)))
    return Request(type, flags=flags, header=header, attrs=attrs)


def new_route(prefix: str, oif: int, table: int = TABLE) -> Request:
    return route_request(netlink.RTM_NEWROUTE, prefix, oif, table,
                         netlink.NLM_F_CREATE | netlink.NLM_F_EXCL)


def del_route(prefix: str, oif: int, table: int = TABLE) -> Request:
    return route_request(netlink.RTM_DELROUTE, prefix, oif, table)


def new_bridge(name: str) -> Request:
    """RTM_NEWLINK of a bridge: IFLA_LINKINFO nests IFLA_INFO_KIND."""
    attrs = netlink.attr(IFLA_IFNAME, netlink.string(name)) + netlink.nested(
        IFLA_LINKINFO, [netlink.attr(IFLA_INFO_KIND, netlink.string("bridge"))])
    return Request(netlink.RTM_NEWLINK, flags=netlink.NLM_F_CREATE | netlink.NLM_F_EXCL,
                   header=IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), attrs=attrs)


def route_key(msg: Message) -> tuple[str, int, int]:
    """(prefix, table, type) of an RTM_NEWROUTE/RTM_DELROUTE message."""
    family, dst_len, _, _, table, _, _, rtype, _ = RTMSG.unpack_from(msg.payload)
    assert family == socket.AF_INET
    attrs = msg.attrs(RTMSG.size)
    if RTA_TABLE in attrs:
        table = attrs.u32(RTA_TABLE)
    dst = attrs.ip(RTA_DST) if RTA_DST in attrs else "0.0.0.0"
    return (f"{dst}/{dst_len}", table, rtype)


def link_of(msg: Message) -> tuple[str, int]:
    """(name, index) of an RTM_NEWLINK/RTM_DELLINK message."""
    _, _, index, _, _ = IFINFOMSG.unpack_from(msg.payload)
    return msg.attrs(IFINFOMSG.size).str(IFLA_IFNAME), index


def links_of(msgs: Iterable[Message]) -> dict[str, int]:
    """The links of a link dump, by name; every message must be an RTM_NEWLINK."""
    links = {}
    for msg in msgs:
        assert msg.type == netlink.RTM_NEWLINK, msg
        name, index = link_of(msg)
        assert name not in links, f"{name} twice in one dump"
        links[name] = index
    return links


def routes_of(msgs: Iterable[Message]) -> list[tuple[str, int, int]]:
    """The routes of a route dump, in order; every message must be an RTM_NEWROUTE."""
    routes = []
    for msg in msgs:
        assert msg.type == netlink.RTM_NEWROUTE, msg
        routes.append(route_key(msg))
    return routes


def assert_exact(routes: list[tuple[str, int, int]], expected: set[tuple[str, int, int]]) -> None:
    """routes are expected, each exactly once."""
    twice = [key for key, n in Counter(routes).items() if n > 1]
    assert not twice, f"{len(twice)} routes more than once, e.g. {twice[:3]}"
    assert set(routes) == expected, (f"missing {sorted(expected - set(routes))[:5]}, "
                                     f"extra {sorted(set(routes) - expected)[:5]}")


def assert_link_reply(reply: Message | None, name: str, index: int) -> None:
    assert reply is not None and reply.type == netlink.RTM_NEWLINK, reply
    assert link_of(reply) == (name, index)


def collect(sock: Socket, done: Callable[[list[Message]], bool],
            timeout: float = WAIT) -> list[Message]:
    """recv() until done(everything received so far); fail after timeout."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            got += sock.recv(timeout=left)
        except TimeoutError:
            raise AssertionError(f"not everything arrived within {timeout} s; got "
                                 f"{[(m.type, m.seq, m.pid) for m in got][:20]}") from None
    return got


def assert_nothing_queued(sock: Socket) -> None:
    """recv(timeout=0) finds nothing: no leftover of anything earlier."""
    with pytest.raises(TimeoutError):
        msgs = sock.recv(timeout=0)
        print("left over:", msgs)


def has_link_event(type: int, name: str) -> Callable[[list[Message]], bool]:
    return lambda msgs: any(m.type == type and link_of(m)[0] == name for m in msgs)


def has_route_event(type: int, prefix: str, table: int = TABLE) -> Callable[[list[Message]], bool]:
    key = (prefix, table, RTN_UNICAST)
    return lambda msgs: any(m.type == type and route_key(m) == key for m in msgs)


# ---------------------------------------------------------------------------
# Dumps, transactions and copy-on-write


def test_route_dump_stays_exact_with_transacts_and_interleaved_dumps(ns: Netns) -> None:
    """A dump of 10,000+ routes yields exactly the routes ``ip`` reports, each once,
    although inside the loop the same socket transacts (RTM_GETLINK by name and by
    index), runs a link dump to its end and a second route dump step by step; every
    one of those answers correctly too."""
    expected = ns.routes()
    assert len(expected) > ROUTES
    links = ns.links()
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        first: list[tuple[str, int, int]] = []
        second: list[tuple[str, int, int]] = []
        link_dump_steps: list[Message] = []
        transacts = 0
        other: Iterator[Message] | None = None
        stepwise: Iterator[Message] | None = None
        with sock.dump(route_dump()) as dump:
            for i, msg in enumerate(dump):
                first += routes_of([msg])
                if i % 997 == 0:
                    assert_link_reply(sock.transact(getlink("veth0")), "veth0", links["veth0"])
                    assert_link_reply(sock.transact(getlink(index=links["lo"])), "lo",
                                      links["lo"])
                    transacts += 2
                if i == 50:
                    assert links_of(sock.dump(link_dump())) == links
                if i == 100:
                    other = sock.dump(link_dump())
                if other is not None:
                    step = next(other, None)
                    if step is not None:
                        link_dump_steps.append(step)
                if i == 1000:
                    stepwise = sock.dump(route_dump())
                if stepwise is not None:
                    step = next(stepwise, None)
                    if step is not None:
                        second += routes_of([step])
        assert stepwise is not None
        second += routes_of(stepwise)
        assert transacts >= 20
        assert_exact(first, expected)
        assert_exact(second, expected)
        assert links_of(link_dump_steps) == links
        assert_nothing_queued(sock)


def test_dumps_carry_one_sequence_number_each(ns: Netns) -> None:
    """Every message of a dump carries the dump's sequence number and the socket's
    port id, and two dumps on one socket use different sequence numbers."""
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        one = list(sock.dump(link_dump()))
        two = list(sock.dump(link_dump()))
        assert len({m.seq for m in one}) == 1 and len({m.seq for m in two}) == 1
        assert one[0].seq != two[0].seq
        assert len({m.pid for m in one + two}) == 1
        assert one[0].pid != 0


@pytest.mark.parametrize("moved", [False, True], ids=["reading-the-socket", "moved-aside"])
def test_closing_the_socket_mid_dump_lets_the_dump_finish(ns: Netns, moved: bool) -> None:
    """Closing the socket in the middle of a dump does not cut the dump short: the
    rest comes whole, whether the dump still read the socket's own descriptor or had
    been moved aside by a transact."""
    expected = ns.routes()
    sock = Socket(netlink.NETLINK_ROUTE, netns=ns.name)
    dump = sock.dump(route_dump())
    got = routes_of(next(dump) for _ in range(1000))
    if moved:
        assert sock.transact(getlink("veth0")) is not None
    sock.close()
    got += routes_of(dump)
    dump.close()
    assert_exact(got, expected)


def test_closing_a_dump_early_leaves_the_socket_clean(ns: Netns) -> None:
    """A dump closed after a few messages yields nothing more, and the socket it ran
    on answers a transact correctly and gives a complete new dump with no leftover
    of the old one."""
    expected = ns.routes()
    links = ns.links()
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        dump = sock.dump(route_dump())
        assert len(routes_of(next(dump) for _ in range(10))) == 10
        dump.close()
        assert list(dump) == []
        assert_link_reply(sock.transact(getlink("veth0")), "veth0", links["veth0"])
        assert_exact(routes_of(sock.dump(route_dump())), expected)
        assert_nothing_queued(sock)


@pytest.mark.parametrize("how", ["break", "with-block", "kept-unfinished"])
def test_abandoned_dump_leaves_no_leftovers(ns: Netns, how: str) -> None:
    """Breaking out of a dump early (the dump collected, or closed by its with-block,
    or still referenced and unfinished) and then transacting and dumping again on the
    same socket gives correct answers and no leftovers; a dump kept aside still
    finishes whole afterwards."""
    expected = ns.routes()
    links = ns.links()
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        kept = None
        if how == "break":
            for i, _ in enumerate(sock.dump(route_dump())):
                if i == 10:
                    break
        elif how == "with-block":
            with sock.dump(route_dump()) as dump:
                for i, _ in enumerate(dump):
                    if i == 10:
                        break
        else:
            kept = sock.dump(route_dump())
            head = routes_of(next(kept) for _ in range(11))
        assert_link_reply(sock.transact(getlink("veth0")), "veth0", links["veth0"])
        assert_exact(routes_of(sock.dump(route_dump())), expected)
        assert links_of(sock.dump(link_dump())) == links
        assert_nothing_queued(sock)
        if kept is not None:
            assert_exact(head + routes_of(kept), expected)


def test_strict_dump_filters_by_table_and_reports_bad_headers(ns: Netns) -> None:
    """strict=True turns on NETLINK_GET_STRICT_CHK: a route dump asking for table 100
    yields exactly that table (flagged NLM_F_DUMP_FILTERED), where a plain socket gets
    every table; a dump header the kernel refuses in strict mode raises NetlinkError
    with the kernel's extended-ACK text."""
    expected = ns.routes()
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name, strict=True) as sock:
        msgs = list(sock.dump(route_dump(table=TABLE)))
        assert all(m.flags & NLM_F_DUMP_FILTERED for m in msgs)
        assert_exact(routes_of(msgs), {r for r in expected if r[1] == TABLE})
        bad = Request(netlink.RTM_GETROUTE,
                      header=RTMSG.pack(socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, 0))
        with pytest.raises(latchwire.NetlinkError) as caught:
            list(sock.dump(bad))
        assert caught.value.errno == errno.EINVAL
        assert caught.value.msg is not None and "header" in caught.value.msg, caught.value.msg
        assert_exact(routes_of(sock.dump(route_dump(table=TABLE))),
                     {r for r in expected if r[1] == TABLE})
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        assert_exact(routes_of(sock.dump(route_dump(table=TABLE))), expected)


def test_dump_interrupted_by_a_change_between_reads(fresh_ns: Netns) -> None:
    """A streamed link dump (retries=0) spanning several datagrams, with a link added
    after its first message, ends in DumpInterrupted (the kernel flagged the later
    datagrams NLM_F_DUMP_INTR); the socket then gives a consistent dump."""
    fresh_ns.batch(f"link add lwv{i}a type veth peer name lwv{i}b" for i in range(40))
    try:
        with Socket(netlink.NETLINK_ROUTE, netns=fresh_ns.name) as sock:
            dump = sock.dump(link_dump())
            msgs = [next(dump)]
            fresh_ns.ip("link", "add", "lwintr0", "type", "bridge")
            with pytest.raises(latchwire.DumpInterrupted) as caught:
                msgs.extend(dump)
            assert isinstance(caught.value, latchwire.NetlinkError)
            assert links_of(sock.dump(link_dump(), retries=1)) == fresh_ns.links()
            assert_nothing_queued(sock)
    finally:
        fresh_ns.ip("link", "del", "lwintr0", check=False)


def test_dump_batches_yield_every_datagram_then_the_interruption(fresh_ns: Netns) -> None:
    """Dump.batches(): one list a datagram (several for 80 links); a dump the kernel
    flagged inconsistent (a link added after its first batch) still yields its last
    datagram's messages before DumpInterrupted; a consistent one ends quietly, and the
    socket is usable after both."""
    fresh_ns.batch(f"link add lwb{i}a type veth peer name lwb{i}b" for i in range(40))
    try:
        before = fresh_ns.links()
        with Socket(netlink.NETLINK_ROUTE, netns=fresh_ns.name) as sock:
            whole = list(sock.dump(link_dump()).batches())
            assert len(whole) > 1 and all(whole)
            assert links_of(m for batch in whole for m in batch) == before
            dump = sock.dump(link_dump())
            batches = dump.batches()
            seen = [next(batches)]
            fresh_ns.ip("link", "add", "lwintr1", "type", "bridge")
            with pytest.raises(latchwire.DumpInterrupted):
                seen.extend(batches)
            assert dump.finished
            got = links_of(m for batch in seen for m in batch)
            assert {name: got[name] for name in before} == before  # the last datagram too
            assert links_of(sock.dump(link_dump(), retries=1)) == fresh_ns.links()
            assert_nothing_queued(sock)
    finally:
        fresh_ns.ip("link", "del", "lwintr1", check=False)


def test_dump_retries_under_churn_never_return_an_inconsistent_dump(fresh_ns: Netns) -> None:
    """While another process adds and removes a bridge over and over, link dumps are
    taken one after the other, streamed (retries=0) and with retries=3. Each either
    raises DumpInterrupted or returns a consistent dump: no message flagged
    NLM_F_DUMP_INTR, no link twice (nothing left of a failed attempt), every stable
    link there. Some streamed dumps are interrupted (the churn does hit dumps: about
    2 % of them here), and a dump with retries fails far less often than one without.
    Once the churn stops, a dump is exact."""
    fresh_ns.batch(f"link add lwv{i}a type veth peer name lwv{i}b" for i in range(40))
    stable = fresh_ns.links()
    stop = threading.Event()

    def churn() -> int:
        rounds = 0
        while not stop.is_set():
            fresh_ns.batch(["link add lwchurn0 type bridge", "link del lwchurn0"] * 5)
            rounds += 1
        return rounds

    outcomes: Counter[tuple[int, str]] = Counter()
    with Socket(netlink.NETLINK_ROUTE, netns=fresh_ns.name) as sock:
        worker = Worker(churn)
        try:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                for retries in (0, 3):
                    try:
                        msgs = list(sock.dump(link_dump(), retries=retries))
                    except latchwire.DumpInterrupted:
                        outcomes[retries, "interrupted"] += 1
                        continue
                    outcomes[retries, "consistent"] += 1
                    assert not [m for m in msgs if m.flags & netlink.NLM_F_DUMP_INTR]
                    links = links_of(msgs)
                    assert stable.items() <= links.items()
                    assert set(links) <= {*stable, "lwchurn0"}
        finally:
            stop.set()
            assert worker.outcome(WAIT) > 0
        assert outcomes[0, "interrupted"] > 0, outcomes
        assert outcomes[3, "interrupted"] < outcomes[0, "interrupted"], outcomes
        assert links_of(sock.dump(link_dump(), retries=3)) == fresh_ns.links() == stable
        assert_nothing_queued(sock)


# ---------------------------------------------------------------------------
# Notifications


@pytest.mark.parametrize("join", ["before", "during"])
def test_notifications_never_appear_inside_a_dump(ns: Netns, join: str) -> None:
    """While a route dump runs, links and routes are added and removed from another
    process: the dump holds only RTM_NEWROUTE messages with the dump's own sequence
    number and port id (never a notification, not even a route one), and every
    notification comes afterwards through recv(), in order. The socket joins the
    groups before the dump (the dump runs on a channel of its own) or in the middle
    of it (the dump is moved aside)."""
    expected = ns.routes()
    extra = ("10.250.0.1/32", TABLE, RTN_UNICAST)
    groups = {netlink.RTNLGRP_LINK, netlink.RTNLGRP_IPV4_ROUTE}
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        if join == "before":
            for group in groups:
                sock.join_group(group)
        msgs = []
        try:
            with sock.dump(route_dump()) as dump:
                for i, msg in enumerate(dump):
                    msgs.append(msg)
                    if i == 5:
                        if join == "during":
                            for group in groups:
                                sock.join_group(group)
                        ns.ip("link", "add", "lwdump0", "type", "bridge")
                    elif i == 3000:
                        ns.ip("route", "add", extra[0], "dev", "veth0", "table", str(TABLE))
                        ns.ip("link", "del", "lwdump0")
                    elif i == 6000:
                        ns.ip("route", "del", extra[0], "table", str(TABLE))
        finally:
            ns.ip("link", "del", "lwdump0", check=False)
            ns.ip("route", "del", extra[0], "table", str(TABLE), check=False)
        assert sock.groups == groups
        assert len({(m.seq, m.pid) for m in msgs}) == 1
        routes = routes_of(msgs)
        assert expected <= set(routes) <= expected | {extra}
        assert len(routes) == len(set(routes))

        events = [(netlink.RTM_NEWLINK, "lwdump0"), (netlink.RTM_NEWROUTE, extra[0]),
                  (netlink.RTM_DELLINK, "lwdump0"), (netlink.RTM_DELROUTE, extra[0])]

        def what(m: Message) -> tuple[int, str] | None:
            if m.type in (netlink.RTM_NEWLINK, netlink.RTM_DELLINK):
                return (m.type, link_of(m)[0])
            if m.type in (netlink.RTM_NEWROUTE, netlink.RTM_DELROUTE):
                return (m.type, route_key(m)[0])
            return None

        got = collect(sock, lambda got: events[-1] in [what(m) for m in got])
        seen = [what(m) for m in got]
        assert all(e in seen for e in events), seen
        assert [seen.index(e) for e in events] == sorted(seen.index(e) for e in events), seen


def test_notifications_that_arrive_during_a_transact_are_kept(ns: Netns) -> None:
    """A notification caused by another process (it carries that process's sequence
    number and port id) that is queued while the socket waits for a transact's answer
    is not lost: the transact answers correctly and recv() delivers the notification."""
    links = ns.links()
    prefix = "10.251.0.1/32"
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        sock.join_group(netlink.RTNLGRP_IPV4_ROUTE)
        ns.ip("route", "add", prefix, "dev", "veth0", "table", str(TABLE))
        try:
            assert_link_reply(sock.transact(getlink("veth0")), "veth0", links["veth0"])
            collect(sock, has_route_event(netlink.RTM_NEWROUTE, prefix))
        finally:
            ns.ip("route", "del", prefix, "table", str(TABLE), check=False)


def test_own_change_notification_is_not_taken_for_the_reply(ns: Netns) -> None:
    """A socket in the route group that adds a route gets the bare ACK (None) from
    transact, and the multicast notification of its own change (which carries the
    request's sequence number and the socket's port id) through recv(), not as the
    transact's answer."""
    prefix = "10.252.0.1/32"
    veth0 = ns.links()["veth0"]
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        sock.join_group(netlink.RTNLGRP_IPV4_ROUTE)
        try:
            assert sock.transact(new_route(prefix, veth0)) is None
            collect(sock, has_route_event(netlink.RTM_NEWROUTE, prefix))
            assert sock.transact(del_route(prefix, veth0)) is None
            collect(sock, has_route_event(netlink.RTM_DELROUTE, prefix))
        finally:
            ns.ip("route", "del", prefix, "table", str(TABLE), check=False)


def test_transact_builds_nested_attributes_and_groups_come_and_go(ns: Netns) -> None:
    """A bridge made by a transact (IFLA_LINKINFO nesting IFLA_INFO_KIND) exists for
    ``ip``; the socket in RTNLGRP_LINK is told of it; after leave_group the removal is
    not reported; drain() discards whatever was queued."""
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        sock.join_group(netlink.RTNLGRP_LINK)
        assert sock.groups == {netlink.RTNLGRP_LINK}
        try:
            assert sock.transact(new_bridge("lwnest0")) is None
            assert "lwnest0" in ns.links()
            collect(sock, has_link_event(netlink.RTM_NEWLINK, "lwnest0"))
            ns.ip("link", "set", "lwnest0", "up")
            ns.ip("link", "set", "lwnest0", "down")
            sock.drain()
            assert_nothing_queued(sock)
            sock.leave_group(netlink.RTNLGRP_LINK)
            assert sock.groups == set()
            ns.ip("link", "del", "lwnest0")
            with pytest.raises(TimeoutError):
                sock.recv(timeout=0.2)
        finally:
            ns.ip("link", "del", "lwnest0", check=False)


# ---------------------------------------------------------------------------
# Errors


def test_rejected_request_raises_with_extended_ack_text(ns: Netns) -> None:
    """The kernel refuses 10.0.0.1/24 (host bits set): NetlinkError with errno
    EINVAL and the extended-ACK text; a malformed attribute is reported with the
    kernel's offset of it in the request (from the start of the nlmsghdr)."""
    veth0 = ns.links()["veth0"]
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        with pytest.raises(latchwire.NetlinkError) as caught:
            sock.transact(new_route("10.0.0.1/24", veth0, table=RT_TABLE_MAIN))
        assert caught.value.errno == errno.EINVAL
        assert caught.value.msg is not None and "Invalid prefix" in caught.value.msg
        assert "Invalid prefix" in str(caught.value)

        # RTA_TABLE with 2 bytes instead of 4, after an 8-byte RTA_DST.
        short = Request(netlink.RTM_NEWROUTE, netlink.NLM_F_CREATE,
                        header=RTMSG.pack(socket.AF_INET, 32, 0, 0, RT_TABLE_MAIN,
                                          RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0),
                        attrs=netlink.attr(RTA_DST, socket.inet_aton("10.0.0.9"))
                        + netlink.attr(RTA_TABLE, netlink.u16(3)))
        with pytest.raises(latchwire.NetlinkError) as caught:
            sock.transact(short)
        assert caught.value.errno in (errno.EINVAL, errno.ERANGE)
        assert caught.value.msg
        assert caught.value.offset == NLMSGHDR.size + RTMSG.size + 8

        # And the socket carries on.
        assert_link_reply(sock.transact(getlink("veth0")), "veth0", veth0)


def test_transact_many_answers_each_request_in_order(ns: Netns) -> None:
    """transact_many sends every request before reading any answer, and answers each
    in order: a reply Message, None for a bare ACK, or the NetlinkError (with its
    extended-ACK text) for the ones the kernel refused; one failure does not stop
    the requests after it."""
    links = ns.links()
    veth0 = links["veth0"]
    prefix = "10.9.0.0/24"
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        try:
            answers = sock.transact_many([
                getlink("veth0"),
                getlink("nosuch0"),
                new_route("10.0.0.1/24", veth0),
                new_route(prefix, veth0),
                getlink(index=links["lo"]),
                new_route(prefix, veth0),  # it exists now
                del_route(prefix, veth0),
                del_route(prefix, veth0),  # and now it is gone
            ])
        finally:
            ns.ip("route", "del", prefix, "table", str(TABLE), check=False)
        assert len(answers) == 8
        assert_link_reply(answers[0], "veth0", veth0)  # type: ignore[arg-type]
        assert isinstance(answers[1], latchwire.NetlinkError)
        assert answers[1].errno == errno.ENODEV
        assert isinstance(answers[2], latchwire.NetlinkError)
        assert answers[2].errno == errno.EINVAL and "Invalid prefix" in (answers[2].msg or "")
        assert answers[3] is None
        assert_link_reply(answers[4], "lo", links["lo"])  # type: ignore[arg-type]
        assert isinstance(answers[5], latchwire.NetlinkError)
        assert answers[5].errno == errno.EEXIST
        assert answers[6] is None
        assert isinstance(answers[7], latchwire.NetlinkError)
        assert answers[7].errno == errno.ESRCH
        assert ("10.9.0.0/24", TABLE, RTN_UNICAST) not in ns.routes()
        assert sock.transact_many([]) == []
        assert_nothing_queued(sock)


def test_request_given_as_bytes(ns: Netns) -> None:
    """A request may be the bytes of one whole message (length, sequence number and
    port id left 0): the socket fills them in and the reply answers it."""
    links = ns.links()
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + netlink.attr(
        IFLA_IFNAME, netlink.string("veth0"))
    raw = NLMSGHDR.pack(0, netlink.RTM_GETLINK, 0, 0, 0) + body
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        reply = sock.transact(raw)
        assert_link_reply(reply, "veth0", links["veth0"])
        assert reply is not None and reply.seq != 0 and reply.pid == sock.pid


@pytest.mark.parametrize("drain", [True, False], ids=["drained", "read-out"])
def test_overrun_is_reported_and_a_resync_dump_works(fresh_ns: Netns, drain: bool) -> None:
    """With a tiny receive buffer and thousands of route notifications unread, recv()
    raises Overrun (a NetlinkError with ENOBUFS). The socket stays usable: a resync
    dump is complete and a transact is answered, whether or not the stale
    notifications still queued were discarded first (drain()) — a transact must not
    wait for a reply the kernel could not queue. Once the stale ones are gone (drained
    or read out), new notifications arrive again.

    The transacts here pass ``timeout=`` (latchwire's own addition to the contract) so
    that a lost reply fails the test instead of hanging the run.
    """
    count = 3000
    veth0 = fresh_ns.links()["veth0"]
    with Socket(netlink.NETLINK_ROUTE, netns=fresh_ns.name, rcvbuf=4096) as sock:
        sock.join_group(netlink.RTNLGRP_IPV4_ROUTE)
        fresh_ns.batch(f"route add 10.3.{i >> 8}.{i & 255}/32 dev veth0" for i in range(count))
        received = 0
        deadline = time.monotonic() + WAIT
        with pytest.raises(latchwire.Overrun) as caught:
            while time.monotonic() < deadline:
                received += len(sock.recv(timeout=1.0))
        assert caught.value.errno == errno.ENOBUFS
        assert isinstance(caught.value, latchwire.NetlinkError)
        assert received < count

        if drain:
            sock.drain()
        assert_exact(routes_of(sock.dump(route_dump())), fresh_ns.routes())
        assert_link_reply(sock.transact(getlink("veth0"), timeout=BOUND), "veth0", veth0)
        if not drain:
            with pytest.raises(TimeoutError):
                while True:
                    sock.recv(timeout=0.2)
        fresh_ns.ip("route", "add", "10.4.0.1/32", "dev", "veth0")
        collect(sock, has_route_event(netlink.RTM_NEWROUTE, "10.4.0.1/32", RT_TABLE_MAIN))
        assert_link_reply(sock.transact(getlink("veth0"), timeout=BOUND), "veth0", veth0)


def test_datagram_larger_than_the_receive_buffer_comes_whole(fresh_ns: Netns) -> None:
    """A link with 490 alternative names of 127 characters makes RTM_NEWLINK messages
    of ~66.5 KB, more than latchwire's first receive buffer (64 KiB): the reply to
    a transact and the notification recv() gets both come whole, every name intact."""
    names = [f"lwalt{i:04d}".ljust(127, "x") for i in range(ALTNAMES)]
    fresh_ns.ip("link", "add", "lwbig0", "type", "bridge")
    fresh_ns.ip("link", "set", "lwbig0", "up")
    fresh_ns.batch(f"link property add dev lwbig0 altname {n}" for n in names[:-1])

    def altnames(msg: Message) -> list[str]:
        assert msg.type == netlink.RTM_NEWLINK
        attrs = msg.attrs(IFINFOMSG.size)
        assert attrs.str(IFLA_IFNAME) == "lwbig0"
        props = attrs.nested(IFLA_PROP_LIST)
        return [v.rstrip(b"\0").decode() for v in props.all(IFLA_ALT_IFNAME)]

    def complete(msgs: list[Message]) -> bool:
        return any(len(m.payload) > 65536 and altnames(m) == names for m in msgs)

    with Socket(netlink.NETLINK_ROUTE, netns=fresh_ns.name) as sock:
        sock.join_group(netlink.RTNLGRP_LINK)
        fresh_ns.ip("link", "property", "add", "dev", "lwbig0", "altname", names[-1])
        for msg in collect(sock, complete):  # and any earlier one is whole too
            if msg.type == netlink.RTM_NEWLINK and link_of(msg)[0] == "lwbig0":
                assert altnames(msg) == names[:len(altnames(msg))]
        reply = sock.transact(getlink("lwbig0"))
        assert reply is not None and len(reply.payload) > 65536
        assert altnames(reply) == names


# ---------------------------------------------------------------------------
# Signals


_BLOCKING = {  # syscalls a thread waiting for a datagram sits in
    "x86_64": {0, 7, 23, 45, 47, 232, 270, 271, 281, 299, 441},
    "aarch64": {22, 63, 72, 73, 207, 212, 243, 441},
}


def wait_blocked_in_recv(tid: int, returned: threading.Event) -> None:
    """Return once thread tid is seen waiting in a receiving syscall 3 times in a row;
    fail after BOUND or if returned is set first."""
    calls = _BLOCKING[platform.machine()]
    deadline = time.monotonic() + BOUND
    streak = 0
    while streak < 3:
        assert not returned.is_set(), "recv returned instead of blocking"
        assert time.monotonic() < deadline, "the thread never blocked in recv"
        try:
            with open(f"/proc/self/task/{tid}/syscall") as f:
                field = f.read().split()[0]
        except (OSError, IndexError):
            field = ""
        streak = streak + 1 if field.isdigit() and int(field) in calls else 0
        time.sleep(0.001)


class Boom(Exception):
    """Raised by a signal handler."""


@pytest.mark.parametrize("timeout", [None, WAIT], ids=["untimed", "timed"])
@pytest.mark.parametrize("handler", ["returns", "raises"])
def test_signal_during_blocking_recv_loses_nothing(ns: Netns, timeout: float | None,
                                                   handler: str) -> None:
    """A signal arriving while recv() blocks runs its Python handler during the wait;
    if the handler returns, recv() keeps waiting and returns the notification caused
    afterwards, and if it raises, recv() ends with that exception and the next recv()
    returns the notification. Nothing is lost either way."""
    need(platform.machine() in _BLOCKING, f"syscall numbers unknown on {platform.machine()}")
    need(threading.current_thread() is threading.main_thread(),
         "signals go to the main thread only, and this test runs in another")
    handled = threading.Event()
    returned = threading.Event()
    may_send = threading.Event()
    main_tid, main_ident = threading.get_native_id(), threading.get_ident()

    def on_signal(signo: int, frame: Any) -> None:
        handled.set()
        if handler == "raises":
            raise Boom

    def poke() -> None:
        try:
            wait_blocked_in_recv(main_tid, returned)
            signal.pthread_kill(main_ident, signal.SIGUSR1)
            assert handled.wait(BOUND), "the handler did not run while recv() waited"
            if handler == "raises":
                assert may_send.wait(BOUND)
                returned.clear()
            wait_blocked_in_recv(main_tid, returned)
            ns.ip("link", "add", "lwsig0", "type", "bridge")
        finally:
            if not returned.wait(BOUND):  # unblock a recv() that lost the notification
                ns.ip("link", "add", "lwsig1", "type", "bridge")

    old = signal.signal(signal.SIGUSR1, on_signal)
    try:
        with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
            sock.join_group(netlink.RTNLGRP_LINK)
            worker = Worker(poke)
            try:
                if handler == "raises":
                    with pytest.raises(Boom):
                        sock.recv(timeout=timeout)
                    returned.set()
                    may_send.set()
                msgs = sock.recv(timeout=timeout)
            finally:
                returned.set()
                worker.join(3 * BOUND)
            worker.outcome()
            assert handled.is_set()
            assert has_link_event(netlink.RTM_NEWLINK, "lwsig0")(msgs), msgs
    finally:
        signal.signal(signal.SIGUSR1, old)
        ns.ip("link", "del", "lwsig0", check=False)
        ns.ip("link", "del", "lwsig1", check=False)


# ---------------------------------------------------------------------------
# Forged messages

_FORGER = r"""
import socket, sys
port, groups, data = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
s.bind((0, 0))
try:
    s.sendto(data, (port, groups))
except ConnectionRefusedError:
    print("refused")
else:
    print("sent")
"""


def forge(ns: Netns, data: bytes, port: int = 0, groups: int = 0) -> str:
    """Send data from a plain AF_NETLINK socket of another process in ns, to port id
    port or to the multicast groups mask groups: "sent" or "refused"."""
    assert IP is not None
    done = subprocess.run([IP, "netns", "exec", ns.name, sys.executable, "-c", _FORGER,
                           str(port), str(groups), data.hex()],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def forged_newlink(name: str, seq: int = 0, pid: int = 0) -> bytes:
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 999, 0, 0) + netlink.attr(
        IFLA_IFNAME, netlink.string(name))
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), netlink.RTM_NEWLINK, 0, seq, pid) + body


def assert_no_forgery(msgs: list[Message]) -> None:
    forged = [m for m in msgs if m.type == netlink.RTM_NEWLINK and link_of(m)[0] == "forged0"]
    assert not forged, "a forged message was delivered"


@pytest.mark.parametrize("way", ["unicast", "multicast"])
def test_forged_notifications_are_never_delivered(ns: Netns, way: str) -> None:
    """Another process sending a notification to the socket's port id is refused
    (ECONNREFUSED: the socket is connected to the kernel). A privileged process can
    still send to a multicast group the socket joined, and the kernel delivers it;
    only messages from the kernel (sender port 0) are accepted, so the forged
    "notification" never reaches recv(). Real notifications still do."""
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        sock.join_group(netlink.RTNLGRP_LINK)
        if way == "unicast":
            assert forge(ns, forged_newlink("forged0"), port=sock.pid) == "refused"
        else:
            assert forge(ns, forged_newlink("forged0"),
                         groups=1 << (netlink.RTNLGRP_LINK - 1)) == "sent"
        with pytest.raises(TimeoutError):
            assert_no_forgery(sock.recv(timeout=0.2))
        real = f"lwreal-{way[0]}"
        try:
            ns.ip("link", "add", real, "type", "bridge")
            assert_no_forgery(collect(sock, has_link_event(netlink.RTM_NEWLINK, real)))
        finally:
            ns.ip("link", "del", real, check=False)


def test_forged_ack_does_not_answer_a_request(ns: Netns) -> None:
    """Forged ACKs (NLMSG_ERROR 0) for the socket's next sequence numbers, multicast to
    a group it joined by a privileged process, are not taken for the kernel's answer:
    a request the kernel refuses still raises NetlinkError."""
    veth0 = ns.links()["veth0"]
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        sock.join_group(netlink.RTNLGRP_LINK)
        reply = sock.transact(getlink("veth0"))
        assert reply is not None
        acks = b"".join(
            NLMSGHDR.pack(36, netlink.NLMSG_ERROR, 0x100, seq, sock.pid) + NLMSGERR.pack(0)
            + NLMSGHDR.pack(16, netlink.RTM_NEWROUTE, 0x5, seq, sock.pid)
            for seq in range(reply.seq + 1, reply.seq + 65))
        assert forge(ns, acks, groups=1 << (netlink.RTNLGRP_LINK - 1)) == "sent"
        with pytest.raises(latchwire.NetlinkError) as caught:
            sock.transact(new_route("10.0.0.1/24", veth0, table=RT_TABLE_MAIN))
        assert caught.value.errno == errno.EINVAL


# ---------------------------------------------------------------------------
# Namespaces and sockets


def test_netns_by_name_and_by_fd_and_the_thread_stays_home(ns: Netns) -> None:
    """A socket made with netns=NAME or netns=FD sees the namespace's links (veth0
    among them); one made with netns=None sees this process's own; the calling
    thread's namespace is the same afterwards, and the caller's descriptor stays
    open (it is the caller's). A namespace that does not exist raises
    FileNotFoundError."""
    home = os.readlink("/proc/thread-self/ns/net")
    inside = ns.links()
    outside = host_links()
    assert "veth0" in inside and inside != outside
    fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for where in (ns.name, fd):
            with Socket(netlink.NETLINK_ROUTE, netns=where) as sock:
                assert links_of(sock.dump(link_dump())) == inside
                assert os.readlink("/proc/thread-self/ns/net") == home
                with sock.clone() as twin:
                    assert twin.pid != sock.pid
                    assert links_of(twin.dump(link_dump())) == inside
        os.fstat(fd)
    finally:
        os.close(fd)
    with Socket(netlink.NETLINK_ROUTE, netns=None) as sock:
        assert links_of(sock.dump(link_dump())) == outside
    with pytest.raises(FileNotFoundError):
        Socket(netlink.NETLINK_ROUTE, netns=f"lwtest-missing-{secrets.token_hex(4)}")
    assert os.readlink("/proc/thread-self/ns/net") == home


def test_socket_in_a_namespace_leaves_other_threads_alone(ns: Netns) -> None:
    """Sockets made in the namespace from one thread, while another thread makes its
    own in this process's namespace, each see their own namespace's links, and
    neither thread ends up elsewhere."""
    inside = ns.links()
    outside = host_links()

    def make(where: str | None, expected: dict[str, int]) -> str:
        home = os.readlink("/proc/thread-self/ns/net")
        for _ in range(50):
            with Socket(netlink.NETLINK_ROUTE, netns=where) as sock:
                assert links_of(sock.dump(link_dump())) == expected
        assert os.readlink("/proc/thread-self/ns/net") == home
        return home

    workers = [Worker(make, ns.name, inside), Worker(make, None, outside)]
    homes = {w.outcome(4 * BOUND) for w in workers}
    assert homes == {os.readlink("/proc/thread-self/ns/net")}


def test_closed_socket_refuses_work(ns: Netns) -> None:
    """After close() (or the end of its with-block) the socket refuses operations
    with an exception instead of using a stale descriptor; close() twice is fine."""
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        assert sock.pid > 0
    sock.close()
    with pytest.raises((ValueError, OSError)):
        sock.transact(getlink("veth0"))
    with pytest.raises((ValueError, OSError)):
        sock.dump(link_dump())
    with pytest.raises((ValueError, OSError)):
        sock.recv(timeout=0)


# ---------------------------------------------------------------------------
# Pool: thread-safe transactions


def test_pool_serves_threads_with_sockets_of_their_own(ns: Netns) -> None:
    """4 threads x 200 transactions through one Pool: every answer is the one asked
    for (no socket shared between threads), errors come back as NetlinkError, and
    the pool keeps at most `keep` sockets for reuse."""
    links = ns.links()
    pool = netlink.Pool(netlink.NETLINK_ROUTE, netns=ns.name, keep=2)
    borrowed: set[int] = set()
    guard = threading.Lock()

    def work(name: str) -> None:
        for i in range(200):
            with pool.socket() as sock:
                with guard:
                    assert id(sock) not in borrowed, "a socket lent to two threads at once"
                    borrowed.add(id(sock))
                try:
                    assert_link_reply(sock.transact(getlink(name), timeout=BOUND),
                                      name, links[name])
                finally:
                    with guard:
                        borrowed.discard(id(sock))
            if i % 50 == 0:
                with pytest.raises(latchwire.NetlinkError) as refused:
                    pool.transact(getlink("no-such-link"), timeout=BOUND)
                assert refused.value.errno == errno.ENODEV

    workers = [Worker(work, name) for name in ("lo", "veth0", "veth1", "lo")]
    for worker in workers:
        worker.outcome(WAIT)
    assert len(pool._idle) <= 2
    answers = pool.transact_many([getlink("lo"), getlink("no-such-link")], timeout=BOUND)
    assert not isinstance(answers[0], latchwire.NetlinkError), answers[0]
    assert_link_reply(answers[0], "lo", links["lo"])
    assert isinstance(answers[1], latchwire.NetlinkError)
    pool.close()
    with pytest.raises(ValueError):
        pool.transact(getlink("lo"))


# ---------------------------------------------------------------------------
# Every ENOBUFS is an Overrun

IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
IFA_ADDRESS = 1
IFA_LOCAL = 2


def address_request(type: int, address: str, index: int) -> Request:
    """RTM_NEWADDR/RTM_DELADDR of the IPv4 address/32 on link index."""
    packed = socket.inet_aton(address)
    flags = netlink.NLM_F_CREATE | netlink.NLM_F_EXCL if type == netlink.RTM_NEWADDR else 0
    return Request(type, flags, IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, index),
                   netlink.attr(IFA_LOCAL, packed) + netlink.attr(IFA_ADDRESS, packed))


def address_of(msg: Message) -> str:
    """The address an RTM_NEWADDR/RTM_DELADDR message is about."""
    assert msg.type in (netlink.RTM_NEWADDR, netlink.RTM_DELADDR), msg
    return msg.attrs(IFADDRMSG.size).ip(IFA_LOCAL)


# Each way a datagram peeked at is then read: (the socket, its channel) -> what it gives.
TAKES: dict[str, Callable[[Socket, Any], object]] = {
    "Socket.recv": lambda sock, chan: sock.recv(timeout=0),
    "Socket.recv-decode": lambda sock, chan: sock.recv(timeout=0, decode=True),
    "channel.recv": lambda sock, chan: chan.recv(0),
    "channel.discard": lambda sock, chan: chan.discard(0),
    "channel.recv_into-records": lambda sock, chan: chan.recv_into([], 0, None, True),
    "channel.recv_into-messages": lambda sock, chan: chan.recv_into([], 0, None, False),
    "channel.recv_into-dump": lambda sock, chan: chan.recv_into([], 0, 1, True),
}


@pytest.mark.parametrize("take", list(TAKES))
def test_enobufs_between_peek_and_read_is_an_overrun(fresh_ns: Netns, take: str) -> None:
    """The kernel reports lost notifications (ENOBUFS) once, to whichever receive
    comes next, before any datagram: a notification dropped after the channel
    peeked at a datagram and before it reads it makes the read fail. Forced step
    by step in RTNLGRP_IPV4_IFADDR with the smallest receive buffer (2304 bytes,
    two or three notifications): an address added (one notification queued), the
    channel peeks at it (``peek()``: it stays queued, a second peek looks no
    further), 16 more added (each notification is queued or dropped before the
    kernel ACKs the change), then the datagram is read, each way there is: Overrun
    (ENOBUFS), never a plain OSError. The datagram peeked is still queued and comes
    next, whole; once the stale ones are read out, notifications arrive again.
    Twice on one socket."""
    index = fresh_ns.links()["veth0"]
    with Socket(netlink.NETLINK_ROUTE, netns=fresh_ns.name) as changer, \
            Socket(netlink.NETLINK_ROUTE, netns=fresh_ns.name, rcvbuf=1) as sock:
        sock.join_group(netlink.RTNLGRP_IPV4_IFADDR)
        chan = sock._own()
        for round in range(2):
            first = f"10.77.{round}.1"
            assert changer.transact(address_request(netlink.RTM_NEWADDR, first, index),
                                    timeout=BOUND) is None
            length = chan.peek(0)
            assert length is not None and chan.peek(0) == length
            for i in range(2, 18):
                changer.transact(address_request(netlink.RTM_NEWADDR, f"10.77.{round}.{i}",
                                                 index), timeout=BOUND)
            with pytest.raises(latchwire.Overrun) as caught:
                TAKES[take](sock, chan)
            assert caught.value.errno == errno.ENOBUFS
            (msg,) = sock.recv(timeout=0)
            assert (msg.type, address_of(msg)) == (netlink.RTM_NEWADDR, first)
            assert NLMSGHDR.size + len(msg.payload) == length
            with pytest.raises(TimeoutError):
                while True:  # the few that fitted, then nothing: the losses were reported
                    assert msg.type == netlink.RTM_NEWADDR
                    (msg,) = sock.recv(timeout=0)
            again = f"10.77.{round}.100"
            changer.transact(address_request(netlink.RTM_NEWADDR, again, index), timeout=BOUND)
            (msg,) = sock.recv(timeout=BOUND)
            assert address_of(msg) == again


# Each way of reading notifications, slowly: (the socket, its channel) -> what it gives.
SLOW_READS: dict[str, Callable[[Socket, Any], object]] = {
    "Socket.recv": lambda sock, chan: sock.recv(timeout=BOUND),
    "Socket.recv-decode": lambda sock, chan: sock.recv(timeout=BOUND, decode=True),
    "channel.recv_into-messages": lambda sock, chan: chan.recv_into([], BOUND, None, False),
    "channel.recv_into-dump": lambda sock, chan: chan.recv_into([], BOUND, 1, True),
    "channel.discard": lambda sock, chan: chan.discard(BOUND),
}
CHURN_ROUNDS = 8  # sockets, one after the other
CHURN_ROUND = 0.1  # seconds each reads for


@pytest.mark.parametrize("read", list(SLOW_READS))
def test_a_slow_reader_under_churn_sees_only_overruns(fresh_ns: Netns, read: str) -> None:
    """While another process adds and removes addresses and takes a link down and up
    again and again, sockets with a small receive buffer in RTNLGRP_LINK and
    RTNLGRP_IPV4_IFADDR read slowly, each way there is: 0.5 ms between reads, and
    another thread keeps the GIL busy, so that after each socket call the reader
    waits for it (which is when a loss can come between a peek and its read). The
    kernel drops notifications all the time (1 to 3 Overruns a round), and what
    comes out is a read or an Overrun, never anything else: not a plain
    OSError(ENOBUFS), which a loss reported to the read after a peek used to give
    (about one loss in a hundred here, so this may miss it: the test above forces
    it), nor a timeout."""
    outcomes: Counter[str] = Counter()
    per_round = []
    with Churn(fresh_ns) as churn, busy_thread():
        for _ in range(CHURN_ROUNDS):
            overruns = outcomes["Overrun"]
            with Socket(netlink.NETLINK_ROUTE, netns=fresh_ns.name, rcvbuf=4096) as sock:
                sock.join_group(netlink.RTNLGRP_LINK)
                sock.join_group(netlink.RTNLGRP_IPV4_IFADDR)
                chan = sock._own()
                end = time.monotonic() + CHURN_ROUND
                while time.monotonic() < end:
                    try:
                        SLOW_READS[read](sock, chan)
                        outcomes["read"] += 1
                    except latchwire.Overrun as lost:
                        assert lost.errno == errno.ENOBUFS
                        outcomes["Overrun"] += 1
                    except Exception as other:
                        outcomes[repr(other)] += 1
                    time.sleep(0.0005)
            per_round.append(outcomes["Overrun"] - overruns)
    print(f"{read}: {dict(outcomes)}, Overruns by round {per_round}, {churn.batches} batches")
    assert set(outcomes) == {"read", "Overrun"}, outcomes


# ---------------------------------------------------------------------------
# Timeouts

INT_MAX = 2**31 - 1
# Timeouts that must not end a wait early, and what the core passes to poll() for
# them: -1 (no limit) or INT_MAX ms (a wait of 24.8 days, then the deadline looked at
# again).
NO_LIMIT = {"inf": (math.inf, -1), "1e300": (1e300, -1), "1e10": (1e10, -1),
            "2^31ms+1s": (2**31 / 1000 + 1, INT_MAX), "1e9": (1e9, INT_MAX)}
# Every way to wait for a notification: (the socket, its channel, timeout) -> what came.
WAITS: dict[str, Callable[[Socket, Any, float], object]] = {
    "Socket.recv": lambda sock, chan, t: sock.recv(timeout=t),
    "Socket.recv-decode": lambda sock, chan, t: sock.recv(timeout=t, decode=True),
    "channel.recv": lambda sock, chan, t: chan.recv(t),
    "channel.peek": lambda sock, chan, t: chan.peek(t),
    "channel.discard": lambda sock, chan, t: chan.discard(t),
    "channel.recv_into": lambda sock, chan, t: chan.recv_into([], t, None, False),
}


@pytest.mark.parametrize("limit", list(NO_LIMIT))
@pytest.mark.parametrize("wait", list(WAITS))
def test_waits_without_a_limit_wait(ns: Netns, wait: str, limit: str) -> None:
    """A wait for a notification with timeout=inf, 1e300, 1e10, just over 2^31 ms or
    1e9 s (about 31 years) waits (it used to time out at once): the thread is seen
    in poll() with -1 (no limit) or INT_MAX ms (a chunk; the deadline is looked at
    again after it), still there a while later (0.2 s, for inf), and it gets the
    notification of an address added then."""
    timeout, poll_ms = NO_LIMIT[limit]
    index = ns.links()["veth0"]
    address = "10.78.0.1"
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as changer, \
            Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        sock.join_group(netlink.RTNLGRP_IPV4_IFADDR)
        chan = sock._own()
        worker = Worker(WAITS[wait], sock, chan, timeout)
        try:
            seen = wait_in_poll(worker)
            if platform.machine() == "x86_64":
                assert seen == poll_ms
            if limit == "inf":
                assert not worker.done.wait(0.2), worker.error
            changer.transact(address_request(netlink.RTM_NEWADDR, address, index),
                             timeout=BOUND)
            got = worker.outcome()
        finally:  # the address goes; a wait still blocked gets a notification and ends
            changer.transact_many([address_request(netlink.RTM_NEWADDR, address, index),
                                   address_request(netlink.RTM_DELADDR, address, index)],
                                  timeout=BOUND)
            worker.join()
        if wait in ("Socket.recv", "Socket.recv-decode"):
            assert isinstance(got, list) and len(got) == 1, got
        elif wait == "channel.recv_into":
            assert got == (0, None)
        else:
            assert got


# Timeouts every wait refuses, and what it raises.
BAD_TIMEOUTS = {"nan": (math.nan, ValueError), "negative": (-0.5, ValueError),
                "-inf": (-math.inf, ValueError), "string": ("1", TypeError),
                "list": ([1], TypeError)}
# Every netlink entry point that waits: (the socket, a pool, timeout) -> the call.
ENTRIES: dict[str, Callable[[Socket, netlink.Pool, Any], object]] = {
    "Socket.recv": lambda sock, pool, t: sock.recv(timeout=t),
    "Socket.recv-decode": lambda sock, pool, t: sock.recv(timeout=t, decode=True),
    "Socket.transact": lambda sock, pool, t: sock.transact(getlink("veth0"), timeout=t),
    "Socket.transact_many": lambda sock, pool, t: sock.transact_many([getlink("veth0")],
                                                                    timeout=t),
    "Socket.dump": lambda sock, pool, t: sock.dump(link_dump(), timeout=t),
    "Socket.dump-retries": lambda sock, pool, t: sock.dump(link_dump(), retries=2, timeout=t),
    "Dump": lambda sock, pool, t: netlink.Dump(sock, sock._new_channel(joined=False),
                                               link_dump(), 0, t, owned=True),
    "Pool.transact": lambda sock, pool, t: pool.transact(getlink("veth0"), timeout=t),
    "Pool.transact_many": lambda sock, pool, t: pool.transact_many([getlink("veth0")],
                                                                  timeout=t),
    "channel.peek": lambda sock, pool, t: sock._own().peek(t),
    "channel.recv": lambda sock, pool, t: sock._own().recv(t),
    "channel.discard": lambda sock, pool, t: sock._own().discard(t),
    "channel.recv_into": lambda sock, pool, t: sock._own().recv_into([], t),
}


@pytest.mark.parametrize("bad", list(BAD_TIMEOUTS))
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_bad_timeouts_are_refused_before_anything_is_sent(ns: Netns, entry: str,
                                                          bad: str) -> None:
    """NaN, a negative number and -inf raise ValueError, a string or a list
    TypeError, from every call that waits, at once: nothing was sent (no answer
    queued), no socket borrowed from a pool, and the socket still works. NaN used
    to time out instead, as if it were 0."""
    timeout, error = BAD_TIMEOUTS[bad]
    links = ns.links()
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        pool = netlink.Pool(netlink.NETLINK_ROUTE, netns=ns.name)
        try:
            with pytest.raises(error, match="timeout"):
                ENTRIES[entry](sock, pool, timeout)
            assert pool._idle == []
        finally:
            pool.close()
        assert_nothing_queued(sock)
        assert_link_reply(sock.transact(getlink("veth0"), timeout=BOUND), "veth0",
                          links["veth0"])


@pytest.mark.parametrize("limit", list(NO_LIMIT))
def test_calls_without_a_limit_are_answered(ns: Netns, limit: str) -> None:
    """Transactions, dumps and a pool's transactions with a timeout beyond any limit
    (inf, 1e300, ...) are answered as without one: they used to time out at once
    whenever the answer was not queued yet."""
    timeout, _ = NO_LIMIT[limit]
    links = ns.links()
    with Socket(netlink.NETLINK_ROUTE, netns=ns.name) as sock:
        assert_link_reply(sock.transact(getlink("veth0"), timeout=timeout), "veth0",
                          links["veth0"])
        (reply,) = sock.transact_many([getlink("lo")], timeout=timeout)
        assert_link_reply(reply, "lo", links["lo"])  # type: ignore[arg-type]
        assert links_of(sock.dump(link_dump(), timeout=timeout)) == links
        assert links_of(sock.dump(link_dump(), retries=2, timeout=timeout)) == links
        pool = netlink.Pool(netlink.NETLINK_ROUTE, netns=ns.name)
        try:
            assert_link_reply(pool.transact(getlink("veth1"), timeout=timeout), "veth1",
                              links["veth1"])
            (reply,) = pool.transact_many([getlink("veth0")], timeout=timeout)
            assert_link_reply(reply, "veth0", links["veth0"])  # type: ignore[arg-type]
        finally:
            pool.close()
