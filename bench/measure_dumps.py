"""Timing whole netlink dumps, for the dump, routes and links parts: what a dump
brought (Counted), a dump contender (Dumper), the recv_into floor of a request, and
the interleaved rounds of whole dumps under a time budget (timed_dumps).

A dump longer than a batch is a batch of its own, and a contender gets only as
many rounds as fit its time budget (pyroute2 at 100,000 routes: a few). Dump
batches start after an untimed full garbage collection, so that no contender
pays for the cycles the one before left.
"""

from __future__ import annotations

import gc
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from measure import Row, Settings, Timed, calibrate, interleave

from latchwire import netlink

RECV_BUFFER = 65536  # the floors' receive buffer; the kernel sends dumps in ~32 KiB datagrams
NLMSG_HDRLEN = 16
DONE_SIZE = 20  # an NLMSG_DONE without extended ACK: nlmsghdr and an int
# struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type; flags.
RTMSG_INET = struct.pack("=8BI", socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
NLMSG_LEN_TYPE = struct.Struct("=IH")  # the start of struct nlmsghdr: length, type
DUMP_BUDGET = 25.0  # seconds of measured dumps per contender and route count
FLOOR_RECV = "floor: recv_into"
PYROUTE2_ROUTES = "pyroute2 get_routes"


class Counted(NamedTuple):
    """What one dump brought; None where a contender does not count it."""

    messages: int | None
    nbytes: int | None  # bytes of the route messages, headers included, NLMSG_DONE not
    datagrams: int | None = None


@dataclass(frozen=True)
class Dumper:
    """A dump contender: dump() does one whole dump and says what it brought."""

    name: str
    role: str
    dump: Callable[[], Counted]


def netlink_failure(buf: bytearray, offset: int) -> Exception:
    """The exception for the message at offset, which ends or breaks a dump."""
    length, type_ = NLMSG_LEN_TYPE.unpack_from(buf, offset)
    if type_ in (netlink.NLMSG_ERROR, netlink.NLMSG_DONE) and length >= DONE_SIZE:
        (code,) = struct.unpack_from("=i", buf, offset + NLMSG_HDRLEN)
        if code < 0:
            return OSError(-code, os.strerror(-code))
    return RuntimeError(f"unexpected netlink message type {type_}, length {length}")


def dump_request(msg_type: int = netlink.RTM_GETROUTE, body: bytes = RTMSG_INET) -> bytes:
    """A dump request (NLM_F_DUMP) of msg_type with body (the family header and attributes)
    after its nlmsghdr; by default RTM_GETROUTE for every IPv4 route."""
    return struct.pack("=IHHII", NLMSG_HDRLEN + len(body), msg_type,
                       netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, 1, 0) + body


def recv_floor(sock: socket.socket, request: bytes) -> Callable[[], Counted]:
    """recv_into alone over the dump request asks for: the end is found by looking at each
    datagram's last 20 bytes."""
    buf = bytearray(RECV_BUFFER)
    unpack = NLMSG_LEN_TYPE.unpack_from
    done = (DONE_SIZE, netlink.NLMSG_DONE)

    def dump() -> Counted:
        sock.send(request)
        total = datagrams = 0
        while True:
            size = sock.recv_into(buf)
            datagrams += 1
            total += size
            if unpack(buf, 0)[1] == netlink.NLMSG_ERROR:
                raise netlink_failure(buf, 0)
            if size >= DONE_SIZE and unpack(buf, size - DONE_SIZE) == done:
                return Counted(None, total - DONE_SIZE, datagrams)
    return dump


def counting_loop(dump: Callable[[], Counted], seen: set[Counted]) -> Callable[[int], float]:
    """run(n): n whole dumps; seconds. What each dump brought goes into seen."""
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            seen.add(dump())
        return time.perf_counter() - start
    return run


def spread(k: int, rounds: int) -> set[int]:
    """k of rounds round numbers, evenly spread, the first included."""
    return {i * rounds // k for i in range(k)}


def timed_dumps(s: Settings, contenders: Sequence[Dumper], budget: float
                ) -> tuple[list[Row], dict[str, set[Counted]]]:
    """Time one whole dump per contender, interleaved over s.rounds rounds, in ms per dump;
    also what every dump of each contender brought.

    A warm-up dump each says how long one takes: a dump shorter than a batch is repeated
    to fill one, a longer one is a batch of its own, and a contender runs only in as many
    rounds (spread evenly) as its batches fit in budget seconds. Each batch starts after
    a full garbage collection, untimed: the cyclic garbage a contender leaves behind is
    collected at the next full collection, which would otherwise land in whichever batch
    came next. The collections a contender's own batch triggers are counted.
    """
    seen: dict[str, set[Counted]] = {d.name: set() for d in contenders}
    timed = [Timed(d.name, d.role, counting_loop(d.dump, seen[d.name])) for d in contenders]
    once = {t.name: t.run(1) for t in timed}
    sizes = {t.name: calibrate(t.run, s.batch) if once[t.name] < s.batch else 1 for t in timed}
    schedule = {t.name: spread(max(1, min(s.rounds, int(budget / (once[t.name] *
                                                                 sizes[t.name])))), s.rounds)
                for t in timed}
    calls = dict.fromkeys(once, 0)

    def measure(t: Timed) -> float | None:
        round_number = calls[t.name]
        calls[t.name] += 1
        if round_number not in schedule[t.name]:
            return None
        gc.collect()  # garbage left by the batch before (pyroute2 leaves cycles) is not t's
        return t.run(sizes[t.name]) / sizes[t.name] * 1e3

    samples = interleave(timed, s.rounds, measure)
    rows = [Row(t.name, t.role, [x for x in per if x is not None])
            for t, per in zip(timed, samples, strict=True)]
    return rows, seen
