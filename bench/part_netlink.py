"""The ``dump`` part: one whole raw netlink route dump through latchwire.netlink.Socket,
against plain Python sockets and pyroute2.

It (root and iproute2's ``ip`` needed) makes its own network namespace, loads
1,000, 10,000 and 100,000 IPv4 routes into it, and times one whole route dump
through latchwire.netlink.Socket.dump() against plain Python sockets (recv_into
a preallocated buffer, with and without walking the message headers) and
pyroute2, in ms per dump. Every dump is checked to bring what the header walk
counted.
"""

from __future__ import annotations

import socket
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from typing import Any

from measure import Section, Settings, add_guard, compare_sentence, fmt, optional_import
from measure_dumps import (
    DUMP_BUDGET,
    FLOOR_RECV,
    NLMSG_HDRLEN,
    NLMSG_LEN_TYPE,
    PYROUTE2_ROUTES,
    RECV_BUFFER,
    RTMSG_INET,
    Counted,
    Dumper,
    dump_request,
    netlink_failure,
    recv_floor,
    timed_dumps,
)
from netns_setup import bench_netns, load_routes, netns_capable, socket_in_netns

from latchwire import netlink

ROUTE_COUNTS = (1_000, 10_000, 100_000)
DUMP_BUDGET_QUICK = 8.0
FLOOR_WALK = "floor: recv_into + header walk"
LW_DUMP = "latchwire Socket.dump"
LW_DUMP_COUNT = "latchwire Socket.dump, count only"
# The regression guard's limit (see measure.Guard).
DUMP_GUARD = 20.0  # latchwire route dump, at most this times the recv_into floor


def walk_floor(sock: socket.socket) -> Callable[[], Counted]:
    """recv_into, and every nlmsghdr walked: messages and bytes counted up to NLMSG_DONE."""
    request = dump_request()
    buf = bytearray(RECV_BUFFER)
    unpack = NLMSG_LEN_TYPE.unpack_from
    last_control = netlink.NLMSG_DONE  # types up to this one are NOOP, ERROR and DONE

    def dump() -> Counted:
        sock.send(request)
        messages = nbytes = datagrams = 0
        while True:
            size = sock.recv_into(buf)
            datagrams += 1
            offset = 0
            while offset < size:
                length, type_ = unpack(buf, offset)
                if type_ <= last_control or length < NLMSG_HDRLEN:
                    if type_ == netlink.NLMSG_DONE and length >= NLMSG_HDRLEN:
                        return Counted(messages, nbytes, datagrams)
                    raise netlink_failure(buf, offset)
                messages += 1
                nbytes += length
                offset += (length + 3) & ~3
    return dump


def latchwire_dump(sock: netlink.Socket, count_bytes: bool) -> Callable[[], Counted]:
    """Socket.dump() iterated to the end: each message counted, and its bytes if asked."""
    request = netlink.Request(netlink.RTM_GETROUTE, header=RTMSG_INET)

    def dump_bytes() -> Counted:
        messages = nbytes = 0
        for msg in sock.dump(request):
            messages += 1
            nbytes += NLMSG_HDRLEN + len(msg.payload)
        return Counted(messages, nbytes)

    def dump_count() -> Counted:
        messages = 0
        for _ in sock.dump(request):
            messages += 1
        return Counted(messages, None)
    return dump_bytes if count_bytes else dump_count


def pyroute2_dump(ipr: Any) -> Callable[[], Counted]:
    """pyroute2's get_routes(family=AF_INET): every route decoded; bytes from the headers."""
    def dump() -> Counted:
        routes = ipr.get_routes(family=socket.AF_INET)
        return Counted(len(routes), sum(route["header"]["length"] for route in routes))
    return dump


def dumpers(netns: str, stack: ExitStack, notes: list[str]) -> Iterator[Dumper]:
    """Every contender, its socket made once in netns (closed by stack)."""
    plain = socket_in_netns(netns)
    stack.callback(plain.close)
    yield Dumper(FLOOR_WALK, "floor", walk_floor(plain))
    yield Dumper(FLOOR_RECV, "floor", recv_floor(plain, dump_request()))
    sock = stack.enter_context(netlink.Socket(netlink.NETLINK_ROUTE, netns=netns))
    yield Dumper(LW_DUMP, "latchwire", latchwire_dump(sock, count_bytes=True))
    yield Dumper(LW_DUMP_COUNT, "latchwire", latchwire_dump(sock, count_bytes=False))
    if pyroute2 := optional_import("pyroute2", notes):
        ipr = pyroute2.IPRoute(netns=netns)
        stack.callback(ipr.close)
        yield Dumper(PYROUTE2_ROUTES, "peer", pyroute2_dump(ipr))


def dump_section(s: Settings, contenders: Sequence[Dumper], count: int,
                 notes: list[str]) -> Section:
    """Time one whole dump of count routes per contender, interleaved."""
    rows, seen = timed_dumps(s, contenders, DUMP_BUDGET_QUICK if s.quick else DUMP_BUDGET)
    section = Section("dump", f"raw IPv4 route dump, {count:,} routes", "ms/dump", rows,
                      [FLOOR_WALK, FLOOR_RECV],
                      columns=["Mmsg/s", "MB/s", "µs/route", "rounds"], notes=list(notes))

    # Every dump of every contender must have brought the same messages and bytes (those
    # it counts) as the header walk; how the kernel cut a dump into datagrams may vary.
    walked = seen[FLOOR_WALK]
    messages, nbytes = next(iter(walked))[:2]
    assert messages is not None and nbytes is not None
    mismatched = [name for name, results in seen.items()
                  if any(c.messages not in (None, messages) or c.nbytes not in (None, nbytes)
                         for c in results)]
    cuts = sorted({c.datagrams for c in walked | seen[FLOOR_RECV] if c.datagrams is not None})
    datagrams = f"{cuts[0]}" if len(cuts) == 1 else f"{cuts[0]}-{cuts[-1]}"
    for row in rows:
        seconds = row.median / 1e3
        row.details |= {"Mmsg/s": messages / seconds / 1e6, "MB/s": nbytes / seconds / 1e6,
                        "µs/route": seconds * 1e6 / messages, "rounds": str(len(row.samples))}
    section.conclusions.append(
        f"one dump: {messages:,} messages, {nbytes / 1e6:.2f} MB, in {datagrams} datagrams "
        f"(~{nbytes / statistics.mean(cuts) / 1024:.1f} KiB each)")
    if messages != count:
        section.conclusions.append(f"{messages:,} messages for {count:,} routes added")
    for row in rows:
        if row.role != "floor":
            ratios = section.ratios(row)
            section.conclusions.append(
                f"{row.name}: {ratios[FLOOR_WALK]:.2f}x the recv_into + header walk floor, "
                f"{ratios[FLOOR_RECV]:.2f}x recv_into alone")
    lw = section.row(LW_DUMP)
    add_guard(section, f"{LW_DUMP} / recv_into floor", section.ratios(lw)[FLOOR_RECV],
              DUMP_GUARD)
    section.conclusions += [compare_sentence(lw, r) for r in rows if r.role == "peer"]
    if mismatched:
        section.failed = True
        section.notes.append("FAILED: the dumps did not all bring the same: " + "; ".join(
            f"{name}: {', '.join(map(str, seen[name]))}" for name in mismatched))
    return section


def dump_part(s: Settings) -> list[Section]:
    if not netns_capable("dump"):
        return []
    notes: list[str] = []
    sections: list[Section] = []
    with bench_netns() as netns, ExitStack() as stack:
        contenders = list(dumpers(netns, stack, notes))
        loaded = 0
        for count in ROUTE_COUNTS:
            load_routes(netns, loaded, count, s.workdir)
            loaded = count
            sections.append(dump_section(s, contenders, count, notes))
    budget = DUMP_BUDGET_QUICK if s.quick else DUMP_BUDGET
    last = sections[-1]
    counts = " / ".join(f"{c:,}" for c in ROUTE_COUNTS)
    for row in sections[0].rows:
        per_route = [float(sec.row(row.name).details["µs/route"]) for sec in sections]
        growth = per_route[-1] / per_route[0]
        last.conclusions.append(
            f"scaling, {row.name}: {' / '.join(fmt(x) for x in per_route)} µs per route at "
            f"{counts} routes ({growth:.2f}x from the fewest to the most; 1.00 is linear)")
    last.notes += [
        f"Setup: a network namespace of its own ({netns}, deleted at the end) with a veth "
        "pair up; the routes are 10.X.Y.Z/32 dev veth0 in the main table, added with "
        "`ip -n NS -batch FILE` and grown from one count to the next. No IPv4 address is "
        "configured, so the AF_INET dump brings exactly those routes.",
        "Floors: a plain Python socket.socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE) made in "
        "the namespace by a libc setns() hop of this thread around socket() (os.setns() is "
        "Python 3.12+; the socket then lives here, measured in the same rounds as the "
        "others), connected to the kernel; it sends the same RTM_GETROUTE + rtmsg(AF_INET) "
        f"dump request and loops recv_into() a preallocated {RECV_BUFFER // 1024} KiB "
        "bytearray. 'recv_into' finds NLMSG_DONE by looking at the last 20 bytes of each "
        "datagram: the kernel's work and the copies. 'recv_into + header walk' also walks "
        "every nlmsghdr (struct unpack_from of length and type) counting messages and bytes "
        "until NLMSG_DONE: the least any library written in Python must do. Ratios are to "
        "both.",
        "latchwire: one Socket(NETLINK_ROUTE, netns=NAME) made once; each dump iterates "
        "sock.dump(Request(RTM_GETROUTE, header=rtmsg(AF_INET))) to the end, counting "
        "messages and their bytes (16 + len(msg.payload)); 'count only' never touches "
        "payload. No attribute is decoded.",
        "pyroute2: IPRoute(netns=NAME) made once (its defaults: multicast groups joined, "
        "1 MiB receive buffer; the namespace is quiet), get_routes(family=AF_INET), which "
        "decodes every message into nested dicts, as its users pay; bytes summed from the "
        "decoded headers. get_routes(table=254) runs the same dump and filters in Python. "
        "Its raw route_dumps(fmt='raw') is not used: in pyroute2 0.9.7 it returned the first "
        "datagram only (72 of 1,000 routes).",
        f"Each contender made a warm-up dump first; a dump longer than the batch "
        f"({s.batch * 1e3:.0f} ms) is a batch of its own, and each contender runs in as many "
        f"of the {s.rounds} interleaved rounds as its dumps fit in {budget:g} s, spread "
        "evenly ('rounds' column): pyroute2 gets few at 100,000 routes, so its figures "
        "there are from fewer dumps. Every dump is checked to bring what the header walk "
        "counted. Mmsg/s and MB/s are per median dump.",
    ]
    return sections
