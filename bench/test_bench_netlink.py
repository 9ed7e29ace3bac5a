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
Python can do less. Both dumps are the ``dump`` part's (``bench/part_netlink.py``).
For figures to quote, interleaved, with pyroute2 and at other route counts, use
``bench/compare.py dump``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from latchwire import netlink

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "helpers"))
from lwtest import need
from measure_dumps import NLMSG_HDRLEN, RTMSG_INET, Counted
from netns_setup import bench_netns, load_routes, socket_in_netns
from part_netlink import latchwire_dump, walk_floor

ROUTES = 10_000

T = TypeVar("T")
Benchmark = Callable[[Callable[[], T]], T]  # pytest-benchmark's fixture: runs and returns

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.benchmark(group=f"netlink raw route dump, {ROUTES:,} routes"),
]


@pytest.fixture(scope="module")
def netns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A namespace with a veth pair up and ROUTES routes through it (the dump part's setup)."""
    need(os.geteuid() == 0, "needs root: makes a network namespace")
    need(shutil.which("ip") is not None, "needs iproute2's `ip` command")
    with bench_netns() as name:
        load_routes(name, 0, ROUTES, tmp_path_factory.mktemp("netlink"))
        yield name


def check(counted: Counted) -> None:
    """A whole dump: every route, each message at least a header and an rtmsg."""
    assert counted.messages == ROUTES
    assert counted.nbytes is not None
    assert counted.nbytes >= ROUTES * (NLMSG_HDRLEN + len(RTMSG_INET))


def test_latchwire_dump(benchmark: Benchmark[Counted], netns: str) -> None:
    with netlink.Socket(netlink.NETLINK_ROUTE, netns=netns) as sock:
        check(benchmark(latchwire_dump(sock, count_bytes=True)))


def test_floor_recv_into(benchmark: Benchmark[Counted], netns: str) -> None:
    with socket_in_netns(netns) as sock:
        check(benchmark(walk_floor(sock)))
