"""pytest-benchmark: one whole raw route dump of 10,000 IPv4 routes per round.

Run with ``python -m pytest bench/test_bench_netlink.py -q --benchmark-only``
as root (``ip`` from iproute2 needed). A network namespace of the module's own
gets a veth pair and 10,000 routes (10.0.X.Y/32 dev veth0, one ``ip -batch``)
and is deleted afterwards. latchwire iterates ``Socket.dump()`` of
RTM_GETROUTE for AF_INET, counting messages and their bytes, and decodes no
attribute. The floor is a plain Python netlink socket made in the namespace
(a libc ``setns()`` hop around ``socket()``: ``os.setns()`` is Python 3.12+)
that sends the same request and loops ``recv_into`` a preallocated 64 KiB
bytearray, walking every message header up to NLMSG_DONE: nothing written in
Python can do less. For figures to quote, interleaved, with pyroute2 and at
other route counts, use ``bench/compare.py dump``.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from latchwire import netlink

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import bench_netns, load_routes, socket_in_netns  # as compare.py does

ROUTES = 10_000
NLMSG_HDRLEN = 16
RTMSG_INET = struct.pack("=8BI", socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)  # struct rtmsg
NLMSG_LEN_TYPE = struct.Struct("=IH")

T = TypeVar("T")
Benchmark = Callable[[Callable[[], T]], T]  # pytest-benchmark's fixture: runs and returns
Counts = tuple[int, int]  # messages, bytes

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.benchmark(group=f"netlink raw route dump, {ROUTES:,} routes"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: makes a network namespace"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's `ip` command"),
]


@pytest.fixture(scope="module")
def netns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A namespace with a veth pair up and ROUTES routes through it (compare.py's setup)."""
    with bench_netns() as name:
        load_routes(name, 0, ROUTES, tmp_path_factory.mktemp("netlink"))
        yield name


def test_latchwire_dump(benchmark: Benchmark[Counts], netns: str) -> None:
    request = netlink.Request(netlink.RTM_GETROUTE, header=RTMSG_INET)
    with netlink.Socket(netlink.NETLINK_ROUTE, netns=netns) as sock:
        def dump() -> Counts:
            messages = nbytes = 0
            for msg in sock.dump(request):
                messages += 1
                nbytes += NLMSG_HDRLEN + len(msg.payload)
            return messages, nbytes

        messages, nbytes = benchmark(dump)
    assert messages == ROUTES
    assert nbytes >= ROUTES * (NLMSG_HDRLEN + len(RTMSG_INET))


def test_floor_recv_into(benchmark: Benchmark[Counts], netns: str) -> None:
    request = struct.pack("=IHHII", NLMSG_HDRLEN + len(RTMSG_INET), netlink.RTM_GETROUTE,
                          netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, 1, 0) + RTMSG_INET
    buf = bytearray(65536)
    unpack = NLMSG_LEN_TYPE.unpack_from

    def dump(sock: socket.socket) -> Counts:
        sock.send(request)
        messages = nbytes = 0
        while True:
            size = sock.recv_into(buf)
            offset = 0
            while offset < size:
                length, type_ = unpack(buf, offset)
                if type_ <= netlink.NLMSG_DONE or length < NLMSG_HDRLEN:  # NOOP, ERROR, DONE
                    if type_ == netlink.NLMSG_DONE and length >= NLMSG_HDRLEN:
                        return messages, nbytes
                    raise RuntimeError(f"netlink message type {type_}, length {length}")
                messages += 1
                nbytes += length
                offset += (length + 3) & ~3

    with socket_in_netns(netns) as sock:
        messages, nbytes = benchmark(lambda: dump(sock))
    assert messages == ROUTES
    assert nbytes >= ROUTES * (NLMSG_HDRLEN + len(RTMSG_INET))
