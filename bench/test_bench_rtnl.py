"""pytest-benchmark: whole rtnetlink dumps decoded by latchwire.rtnl, one per round.

Run with ``python -m pytest bench/test_bench_rtnl.py -q --benchmark-only`` as
root (``ip`` from iproute2 needed). Two network namespaces of the module's own
are made with ``bench/netns_setup.py``'s helpers and deleted afterwards: one with
10,000 IPv4 routes (10.0.X.Y/32 dev veth0 in table 100, the main table empty,
one ``ip -batch``), one with 1,000 veth pairs (2,003 links with lo and the
namespace's own pair). latchwire calls ``Route.routes(table=100)`` (also with
every record's dst, gateway and oif read) and ``Route.links()``, which return
records decoded by the compiled core. Each floor is a plain Python netlink
socket made in the namespace, NETLINK_GET_STRICT_CHK on as latchwire's is, that
sends the very request latchwire sends and loops ``recv_into`` a preallocated
64 KiB bytearray up to NLMSG_DONE, decoding nothing. For figures to quote,
interleaved, with ``ip -j`` and pyroute2, at 100,000 routes too, and with
memory, use ``bench/compare.py routes links``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TypeVar

import pytest

from latchwire import rtnl

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "helpers"))
from lwtest import need
from measure_dumps import Counted, recv_floor
from netns_setup import BASE_LINKS, bench_netns, load_routes, load_veths
from part_rtnl import LINKS_REQUEST, ROUTES_REQUEST, RTNL_TABLE, VETH_PAIRS, rtnl_floor_socket

ROUTES = 10_000
LINKS = 2 * VETH_PAIRS + BASE_LINKS
ROUTE_MESSAGE = 52  # bytes of one 10.X.Y.Z/32 route message: nlmsghdr, rtmsg, attributes

T = TypeVar("T")
Benchmark = Callable[[Callable[[], T]], T]  # pytest-benchmark's fixture: runs and returns

pytestmark = pytest.mark.kernel
routes_group = pytest.mark.benchmark(group=f"rtnl route dump, {ROUTES:,} routes")
links_group = pytest.mark.benchmark(group=f"rtnl link dump, {LINKS:,} links")


def need_netns() -> None:
    """Root and iproute2's ip, to make a namespace (skips, or fails where CI requires it)."""
    need(os.geteuid() == 0, "needs root: makes network namespaces")
    need(shutil.which("ip") is not None, "needs iproute2's `ip` command")


@pytest.fixture(scope="module")
def routes_netns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A namespace with ROUTES routes in table RTNL_TABLE (the routes part's setup)."""
    need_netns()
    with bench_netns() as name:
        load_routes(name, 0, ROUTES, tmp_path_factory.mktemp("routes"), RTNL_TABLE)
        yield name


@pytest.fixture(scope="module")
def links_netns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A namespace with VETH_PAIRS veth pairs beside its own (the links part's setup)."""
    need_netns()
    with bench_netns() as name:
        load_veths(name, VETH_PAIRS, tmp_path_factory.mktemp("links"))
        yield name


def floor_dump(benchmark: Benchmark[Counted], netns: str, request: bytes) -> Counted:
    """Benchmark the rtnl parts' recv_into floor for request in netns; the last dump's count."""
    with ExitStack() as stack:
        return benchmark(recv_floor(rtnl_floor_socket(netns, stack), request))


@routes_group
def test_latchwire_routes(benchmark: Benchmark[list[rtnl.RouteEntry]], routes_netns: str
                          ) -> None:
    with rtnl.Route(routes_netns) as route:
        routes = benchmark(lambda: route.routes(table=RTNL_TABLE))
    assert len(routes) == ROUTES
    assert all(r.table == RTNL_TABLE and r.dst_len == 32 for r in routes)


@routes_group
def test_latchwire_routes_fields_read(benchmark: Benchmark[int], routes_netns: str) -> None:
    def read() -> int:
        direct = 0
        for entry in route.routes(table=RTNL_TABLE):
            if entry.dst is not None and entry.gateway is None and entry.oif is not None:
                direct += 1
        return direct

    with rtnl.Route(routes_netns) as route:
        assert benchmark(read) == ROUTES


@routes_group
def test_floor_routes(benchmark: Benchmark[Counted], routes_netns: str) -> None:
    counted = floor_dump(benchmark, routes_netns, ROUTES_REQUEST)
    assert counted.nbytes == ROUTES * ROUTE_MESSAGE


@links_group
def test_latchwire_links(benchmark: Benchmark[list[rtnl.Link]], links_netns: str) -> None:
    with rtnl.Route(links_netns) as route:
        links = benchmark(route.links)
    assert len(links) == LINKS
    assert sum(link.name.startswith("lwa") for link in links) == VETH_PAIRS


@links_group
def test_floor_links(benchmark: Benchmark[Counted], links_netns: str) -> None:
    counted = floor_dump(benchmark, links_netns, LINKS_REQUEST)
    assert counted.nbytes is not None and counted.nbytes > LINKS * ROUTE_MESSAGE
