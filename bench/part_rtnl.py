"""The ``routes`` and ``links`` parts: whole rtnetlink dumps decoded into records by
latchwire.rtnl, against the recv_into floor, ``ip -j ... | json.loads`` and pyroute2.

Each (root and ``ip`` needed) works in a network namespace of its own: it times
Route.routes() (and its awaited twin, AsyncRoute.routes(), beside pyroute2's
AsyncIPRoute) over 10,000 and 100,000 IPv4 routes, or Route.links() over 2,000
veth links, against the recv_into floor of the very request latchwire sends,
``ip -j ... | json.loads`` (a subprocess per dump) and pyroute2, in ms per dump
and µs per record, and traces one untimed call's peak memory against the
records' own size. With ``--quick`` pyroute2 dumps only the 10,000 routes.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Awaitable, Callable, Iterable, Sequence, Sized
from contextlib import ExitStack
from functools import partial
from typing import Any, NamedTuple

from measure import (
    Section,
    Settings,
    add_guard,
    add_scaling,
    compare_sentence,
    optional_import,
    verdict,
)
from measure_dumps import (
    DUMP_BUDGET,
    FLOOR_RECV,
    PYROUTE2_ROUTES,
    RECV_BUFFER,
    Counted,
    Dumper,
    dump_request,
    recv_floor,
    timed_dumps,
)
from netns_setup import (
    BASE_LINKS,
    bench_netns,
    load_routes,
    load_veths,
    netns_capable,
    socket_in_netns,
)

from latchwire import netlink, rtnl
from latchwire.rtnl_async import AsyncRoute

RTNL_ROUTE_COUNTS = (10_000, 100_000)
RTNL_TABLE = 100  # the routes' table; main stays empty, so a dump filters by table
VETH_PAIRS = 1_000
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12
RTA_TABLE = 15
RTNL_BUDGET_QUICK = 4.0  # seconds of measured dumps per contender and size with --quick
# What the floors send: the requests latchwire.rtnl sends for routes(table=RTNL_TABLE)
# (rtmsg for AF_INET in that table, and an RTA_TABLE attribute) and for links().
ROUTES_REQUEST = dump_request(
    netlink.RTM_GETROUTE, struct.pack("=8BI", socket.AF_INET, 0, 0, 0, RTNL_TABLE, 0, 0, 0, 0)
    + struct.pack("=HHI", 8, RTA_TABLE, RTNL_TABLE))
LINKS_REQUEST = dump_request(netlink.RTM_GETLINK, struct.pack("=BxHiII", 0, 0, 0, 0, 0))
LW_ROUTES = "latchwire Route.routes"
LW_ROUTES_READ = "latchwire Route.routes, dst/gateway/oif read"
LW_ASYNC_ROUTES = "latchwire await AsyncRoute.routes"
PYROUTE2_ASYNC_ROUTES = "pyroute2 await AsyncIPRoute.get_routes"
IP_JSON_ROUTES = "ip -j route show | json.loads"
LW_LINKS = "latchwire Route.links"
IP_JSON_LINKS = "ip -j link show | json.loads"
PYROUTE2_LINKS = "pyroute2 get_links"
DECODED_GUARD = 20.0  # a decoded route or link dump, at most this times the recv_into floor
PYROUTE2_GUARD = 10.0  # a decoded route dump, at least this many times faster than pyroute2
MEMORY_GUARD = 4.0  # peak traced during routes(), at most this times the records' own size
# Issue 7's targets for decoded routes, printed beside the figures (nothing fails on them).
ROUTES_FLOOR_TARGET = 3.0  # at most this times the recv_into floor
ROUTES_IP_JSON_TARGET = 5.0  # at least this many times faster than ip -j + json.loads
ROUTES_PYROUTE2_TARGET = 100.0  # at least this many times faster than pyroute2
MEMORY_TARGET = 2.0  # peak at most this times the records' own size
ASYNC_TARGET = 1.3  # issue 19: an awaited route dump within this of the blocking one
ASYNC_GUARD = 3.0  # ... and only a far-off value fails


def rtnl_floor_socket(netns: str, stack: ExitStack) -> socket.socket:
    """socket_in_netns() with NETLINK_GET_STRICT_CHK on, as latchwire.rtnl's sockets are
    (the kernel then filters a route dump by the table asked for); closed by stack."""
    sock = socket_in_netns(netns)
    stack.callback(sock.close)
    sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
    return sock


def records_dump(dump: Callable[[], Sized]) -> Callable[[], Counted]:
    """A dump contender counting the records (or dicts) each dump() returns."""
    def run() -> Counted:
        return Counted(len(dump()), None)
    return run


def awaited(loop: asyncio.AbstractEventLoop, call: Callable[[], Awaitable[Sized]]
            ) -> Callable[[], Counted]:
    """A dump contender awaiting call() on loop (one loop, made once), counted."""
    def run() -> Counted:
        return Counted(len(loop.run_until_complete(call())), None)
    return run


def pyroute2_async_routes(loop: asyncio.AbstractEventLoop, pyroute2: Any, netns: str,
                          stack: ExitStack) -> Callable[[], Awaitable[list[Any]]]:
    """pyroute2's AsyncIPRoute(netns=...) set up on loop (closed by stack): its
    get_routes for the table, gathered into a list as its users do."""
    ipr = pyroute2.AsyncIPRoute(netns=netns)
    loop.run_until_complete(ipr.setup_endpoint())
    stack.callback(ipr.close)

    async def get_routes() -> list[Any]:
        return [r async for r in await ipr.get_routes(family=socket.AF_INET,
                                                      table=RTNL_TABLE)]
    return get_routes


def routes_read(route: rtnl.Route) -> Callable[[], Counted]:
    """Route.routes() with every record's dst, gateway and oif read; counted are the
    routes that read as loaded (a dst and an oif, no gateway)."""
    def dump() -> Counted:
        direct = 0
        for entry in route.routes(table=RTNL_TABLE):
            if entry.dst is not None and entry.gateway is None and entry.oif is not None:
                direct += 1
        return Counted(direct, None)
    return dump


def ip_json(netns: str, *args: str) -> list[Any]:
    """The output of `ip -n netns -j args`, loaded by json.loads."""
    result = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, check=True)
    loaded: list[Any] = json.loads(result.stdout)
    return loaded


class Footprint(NamedTuple):
    """Python's allocations for one call that returns records, traced by tracemalloc."""

    peak: int  # bytes traced at the peak during the call, over what was traced before it
    retained: int  # bytes still traced after the call, its result held
    own: int  # the result's own size: sys.getsizeof of the list and of each record
    records: int


def footprint(call: Callable[[], Sequence[object]]) -> Footprint:
    """Trace one call() (untimed: tracing slows allocation)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = call()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    own = sys.getsizeof(result) + sum(sys.getsizeof(r) for r in result)
    return Footprint(peak - before, retained - before, own, len(result))


def add_footprint(section: Section, name: str, fp: Footprint, noun: str) -> None:
    """Conclude on fp, name's memory, against issue 7's target, and guard it."""
    ratio = fp.peak / fp.own
    section.conclusions.append(
        f"{name}, memory of one call ({fp.records:,} {noun}s, tracemalloc): peak "
        f"{fp.peak / 1e6:.2f} MB = {ratio:.2f}x the records' own size ({fp.own / 1e6:.2f} MB: "
        f"the list and the records, {fp.own / fp.records:.0f} bytes a {noun}; still traced "
        f"after the call: {fp.retained / 1e6:.2f} MB); target ≤ {MEMORY_TARGET:g}x: "
        f"{verdict(ratio, MEMORY_TARGET, at_most=True)}")
    add_guard(section, f"{name}: peak memory / records' own size", ratio, MEMORY_GUARD)


def span(values: Iterable[float], form: str) -> str:
    """The values shown with form: one figure if they all show alike, else lowest-highest."""
    shown = sorted(set(values))
    low, high = form.format(shown[0]), form.format(shown[-1])
    return low if low == high else f"{low}-{high}"


def decoded_section(s: Settings, part: str, title: str, contenders: Sequence[Dumper],
                    count: int, noun: str) -> Section:
    """Time one whole dump per contender, interleaved, each of which must bring count
    records; ratios to the recv_into floor, time per record."""
    rows, seen = timed_dumps(s, contenders, RTNL_BUDGET_QUICK if s.quick else DUMP_BUDGET)
    per = f"µs/{noun}"
    section = Section(part, title, "ms/dump", rows, [FLOOR_RECV], columns=[per, "rounds"])
    for row in rows:
        row.details |= {per: row.median * 1e3 / count, "rounds": str(len(row.samples))}
    floor = seen[FLOOR_RECV]
    megabytes = span([c.nbytes / 1e6 for c in floor if c.nbytes is not None], "{:.2f}")
    datagrams = span([c.datagrams for c in floor if c.datagrams is not None], "{:.0f}")
    section.conclusions.append(f"one dump: {count:,} {noun}s, {megabytes} MB in {datagrams} "
                               "datagrams")
    section.conclusions += [f"{row.name}: {section.ratios(row)[FLOOR_RECV]:.2f}x the "
                            "recv_into floor" for row in rows if row.role != "floor"]
    wrong = {name: ", ".join(sorted({str(c.messages) for c in results}))
             for name, results in seen.items()
             if name != FLOOR_RECV and any(c.messages != count for c in results)}
    if wrong:
        section.failed = True
        section.notes.append(f"FAILED: a dump did not bring the {count:,} {noun}s loaded: " +
                             "; ".join(f"{name} brought {n}" for name, n in wrong.items()))
    return section


def faster_sentence(section: Section, name: str, peer: str, target: float) -> str:
    """How many times faster name is than peer, against a target of at least that."""
    speedup = section.row(peer).median / section.row(name).median
    return (f"{name} is {speedup:.1f}x faster than {peer}; target ≥ {target:g}x: "
            f"{verdict(speedup, target, at_most=False)}")


def routes_conclusions(section: Section, count: int) -> None:
    """Issue 7's targets for decoded routes, the cost of reading fields, and the guards."""
    lw = section.row(LW_ROUTES)
    to_floor = section.ratios(lw)[FLOOR_RECV]
    names = {r.name for r in section.rows}
    section.conclusions += [
        f"{LW_ROUTES}: target ≤ {ROUTES_FLOOR_TARGET:g}x the recv_into floor: "
        f"{verdict(to_floor, ROUTES_FLOOR_TARGET, at_most=True)}",
        faster_sentence(section, LW_ROUTES, IP_JSON_ROUTES, ROUTES_IP_JSON_TARGET)]
    add_guard(section, f"{LW_ROUTES} / recv_into floor", to_floor, DECODED_GUARD)
    if PYROUTE2_ROUTES in names:
        section.conclusions.append(faster_sentence(section, LW_ROUTES, PYROUTE2_ROUTES,
                                                    ROUTES_PYROUTE2_TARGET))
        add_guard(section, f"{PYROUTE2_ROUTES} / {LW_ROUTES}",
                  section.row(PYROUTE2_ROUTES).median / lw.median, PYROUTE2_GUARD, at_most=False)
    if LW_ASYNC_ROUTES in names:
        to_blocking = section.row(LW_ASYNC_ROUTES).median / lw.median
        section.conclusions.append(
            f"{LW_ASYNC_ROUTES}: {to_blocking:.2f}x {LW_ROUTES}; target ≤ {ASYNC_TARGET:g}x: "
            f"{verdict(to_blocking, ASYNC_TARGET, at_most=True)}")
        add_guard(section, f"{LW_ASYNC_ROUTES} / {LW_ROUTES}", to_blocking, ASYNC_GUARD)
    if PYROUTE2_ASYNC_ROUTES in names:
        section.conclusions.append(compare_sentence(section.row(LW_ASYNC_ROUTES),
                                                    section.row(PYROUTE2_ASYNC_ROUTES)))
    extra = (section.row(LW_ROUTES_READ).median - lw.median) * 1e3 / count
    section.conclusions.append(
        f"reading dst, gateway and oif of every record adds {extra:.3f} µs a route")


def routes_part(s: Settings) -> list[Section]:
    if not netns_capable("routes"):
        return []
    notes: list[str] = []
    pyroute2 = optional_import("pyroute2", notes)
    sections: list[Section] = []
    with bench_netns() as netns, ExitStack() as stack:
        route = stack.enter_context(rtnl.Route(netns))
        contenders = [
            Dumper(FLOOR_RECV, "floor", recv_floor(rtnl_floor_socket(netns, stack),
                                                   ROUTES_REQUEST)),
            Dumper(LW_ROUTES, "latchwire", records_dump(partial(route.routes,
                                                                table=RTNL_TABLE))),
            Dumper(LW_ROUTES_READ, "latchwire", routes_read(route)),
            Dumper(IP_JSON_ROUTES, "peer", records_dump(partial(
                ip_json, netns, "route", "show", "table", str(RTNL_TABLE))))]
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        aroute = AsyncRoute(netns)
        stack.callback(aroute.close)
        contenders.append(Dumper(LW_ASYNC_ROUTES, "latchwire", awaited(
            loop, partial(aroute.routes, table=RTNL_TABLE))))
        get_routes: Callable[[], list[Any]] | None = None
        if pyroute2:
            ipr = pyroute2.IPRoute(netns=netns)
            stack.callback(ipr.close)
            get_routes = partial(ipr.get_routes, family=socket.AF_INET, table=RTNL_TABLE)
            contenders.append(Dumper(PYROUTE2_ROUTES, "peer", records_dump(get_routes)))
            if hasattr(pyroute2, "AsyncIPRoute"):
                contenders.append(Dumper(PYROUTE2_ASYNC_ROUTES, "peer", awaited(
                    loop, pyroute2_async_routes(loop, pyroute2, netns, stack))))
        loaded = 0
        for count in RTNL_ROUTE_COUNTS:
            load_routes(netns, loaded, count, s.workdir, RTNL_TABLE)
            loaded = count
            if count > RTNL_ROUTE_COUNTS[0]:  # a dump of 100,000 takes it about 10 s
                contenders = [d for d in contenders if d.name != PYROUTE2_ASYNC_ROUTES
                              and (d.name != PYROUTE2_ROUTES or not s.quick)]
            section = decoded_section(s, "routes", f"decoded IPv4 routes, {count:,} routes",
                                      contenders, count, "route")
            routes_conclusions(section, count)
            lw_fp = footprint(partial(route.routes, table=RTNL_TABLE))
            add_footprint(section, LW_ROUTES, lw_fp, "route")
            if get_routes and not s.quick and count == RTNL_ROUTE_COUNTS[0]:
                peer_fp = footprint(get_routes)
                section.conclusions.append(
                    f"{PYROUTE2_ROUTES}, the same: peak {peer_fp.peak / 1e6:.1f} MB, "
                    f"{peer_fp.peak / lw_fp.peak:.0f}x latchwire's")
            sections.append(section)
    add_scaling(sections[0], sections[-1], LW_ROUTES, FLOOR_RECV, per_item="µs/route")
    sections[-1].notes += [*notes, *decoded_notes(s, netns, "route"), (
        "Setup: the routes are 10.X.Y.Z/32 dev veth0 in table "
        f"{RTNL_TABLE}, added with `ip -n NS -batch FILE` and grown from one count to the "
        "next; the main table stays empty. Each contender asks for that table: "
        f"routes(table={RTNL_TABLE}), `ip -j route show table {RTNL_TABLE}`, "
        f"get_routes(family=AF_INET, table={RTNL_TABLE}). '{LW_ROUTES_READ}' also reads "
        "those three fields of every record (their Python objects are made then) and "
        "checks them: the cost of reading a dump, not only of having it."), (
        f"'{LW_ASYNC_ROUTES}': an AsyncRoute(netns=NAME) made once, each dump awaited with "
        "run_until_complete on one asyncio loop made once (its cost per dump included); "
        f"'{PYROUTE2_ASYNC_ROUTES}' likewise, its async generator gathered into a list, "
        f"at {RTNL_ROUTE_COUNTS[0]:,} routes only.")]
    if s.quick and pyroute2:
        sections[-1].notes.append(f"--quick: pyroute2 runs at {RTNL_ROUTE_COUNTS[0]:,} "
                                  "routes only (one dump of 100,000 takes it about 10 s).")
    return sections


def links_part(s: Settings) -> list[Section]:
    if not netns_capable("links"):
        return []
    notes: list[str] = []
    pyroute2 = optional_import("pyroute2", notes)
    count = 2 * VETH_PAIRS + BASE_LINKS
    with bench_netns() as netns, ExitStack() as stack:
        load_veths(netns, VETH_PAIRS, s.workdir)
        route = stack.enter_context(rtnl.Route(netns))
        contenders = [
            Dumper(FLOOR_RECV, "floor", recv_floor(rtnl_floor_socket(netns, stack),
                                                   LINKS_REQUEST)),
            Dumper(LW_LINKS, "latchwire", records_dump(route.links)),
            Dumper(IP_JSON_LINKS, "peer", records_dump(partial(ip_json, netns, "link",
                                                               "show")))]
        if pyroute2:
            ipr = pyroute2.IPRoute(netns=netns)
            stack.callback(ipr.close)
            contenders.append(Dumper(PYROUTE2_LINKS, "peer", records_dump(ipr.get_links)))
        section = decoded_section(s, "links", f"decoded links, {count:,} links", contenders,
                                  count, "link")
        lw = section.row(LW_LINKS)
        add_guard(section, f"{LW_LINKS} / recv_into floor", section.ratios(lw)[FLOOR_RECV],
                  DECODED_GUARD)
        section.conclusions += [compare_sentence(lw, r) for r in section.rows
                                if r.role == "peer"]
        add_footprint(section, LW_LINKS, footprint(route.links), "link")
    section.notes += [*notes, *decoded_notes(s, netns, "link"), (
        f"Setup: {VETH_PAIRS:,} veth pairs (left down) added with one `ip -n NS -batch FILE`, "
        f"beside lo and the namespace's own veth pair: {count:,} links, each with its 64-bit "
        "statistics. Each contender sends its own request: latchwire and the floor an "
        "RTM_GETLINK dump with a bare ifinfomsg, ip and pyroute2 theirs (ip asks for VF "
        "information too, which veths do not have).")]
    return [section]


def decoded_notes(s: Settings, netns: str, noun: str) -> list[str]:
    """How the routes and links parts measure, said in their last section."""
    budget = RTNL_BUDGET_QUICK if s.quick else DUMP_BUDGET
    return [
        f"Floor: a plain Python socket.socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE) made in "
        f"the namespace ({netns}, deleted at the end) by a libc setns() hop, with "
        "NETLINK_GET_STRICT_CHK on as latchwire.rtnl's sockets have it, connected to the "
        "kernel; it sends the very request latchwire sends and loops recv_into() a "
        f"preallocated {RECV_BUFFER // 1024} KiB bytearray up to NLMSG_DONE: the kernel's "
        "work and the copies, nothing decoded.",
        "latchwire: one rtnl.Route(netns=NAME) made once; a dump is one call, which returns "
        f"a list of {noun} records decoded by the compiled core in one pass (C fields; a "
        "field's Python object is made when it is read).",
        "ip -j: `ip -n NAME -j ...` run as a subprocess for each dump (fork and exec, its own "
        "dump, JSON printed) and its output given to json.loads: what a script that shells "
        "out pays. pyroute2: IPRoute(netns=NAME) made once, its dump decoded into nested "
        "dicts, as its users get them.",
        "Memory: one more call, untimed, under tracemalloc: the peak of Python's "
        "allocations during it against sys.getsizeof of the returned list and records. "
        "Buffers allocated beforehand (the socket's receive buffer) and the kernel's socket "
        "memory are not counted.",
        "Each contender made a warm-up dump first; a dump shorter than the batch "
        f"({s.batch * 1e3:.0f} ms) is repeated to fill one, a longer one is a batch of its "
        f"own, and each contender runs in as many of the {s.rounds} interleaved rounds as "
        f"its batches fit in {budget:g} s ('rounds' column). Every dump is checked to bring "
        f"every {noun} loaded.",
    ]
