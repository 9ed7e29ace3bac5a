"""latchwire.rtnl_async.AsyncRoute against the blocking rtnl.Route, in private namespaces.

Every method of ``Route`` has its awaitable twin on ``AsyncRoute``: the test
checks that each twin is there with the same parameters, that the dumps give
what ``Route``'s give (under asyncio, anyio on asyncio and anyio on trio), that
changes made by awaiting appear to the blocking ``Route`` and to ``ip``, that
refusals carry the same errno and extended-ACK text, and that events arrive.
Cancelling every awaitable at random points 1,000 times leaves no descriptor,
thread or reader callback behind, and the AsyncRoute still answers exactly.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from lwasync import BACKENDS, cancel_at_random, run, threads
from lwasync import fd_numbers as open_fds
from lwnetns import Netns, drop_netns, make_netns

from latchwire import rtnl
from latchwire.errors import NetlinkError
from latchwire.rtnl_async import AsyncRoute

pytestmark = [pytest.mark.usefixtures("watchdog"), pytest.mark.kernel]

AF_INET, AF_INET6 = rtnl.AF_INET, rtnl.AF_INET6
TABLE = 100
CANCELS = 1_000

def world_lines() -> Iterator[str]:
    yield "link set lo up"
    for i in range(20):
        yield f"link add va{i} type veth peer name vb{i}"
        yield f"link set va{i} up"
        yield f"addr add 10.200.{i}.1/24 dev va{i}"
        yield f"addr add 2001:db8:{i}::1/64 dev va{i}"
        yield f"neigh add 10.200.{i}.9 lladdr 02:00:00:00:00:{i:02x} dev va{i}"
    for i in range(3_000):
        yield f"route add 10.1.{i >> 8}.{i & 255}/32 dev va0 table {TABLE}"
    for i in range(200):
        yield f"route add 2001:db8:77:{i:x}::/64 dev va1"


@pytest.fixture(scope="module")
def world() -> Iterator[Netns]:
    ns = make_netns(world_lines())
    try:
        yield ns
    finally:
        drop_netns(ns)


@pytest.fixture
def scratch() -> Iterator[Netns]:
    ns = make_netns()
    try:
        yield ns
    finally:
        drop_netns(ns)


def keys(records: list[Any]) -> list[Any]:
    return sorted((type(r).__name__, r.key) for r in records)


def test_every_route_method_has_an_awaitable_twin() -> None:
    public = {name for name in dir(rtnl.Route) if not name.startswith("_")}
    missing = public - set(dir(AsyncRoute))
    assert missing == set()
    for name in public - {"close", "events", "events_async", "route_batches"}:
        method = getattr(AsyncRoute, name)
        assert inspect.iscoroutinefunction(method), name
        blocking = inspect.signature(getattr(rtnl.Route, name))
        awaited = inspect.signature(method)
        assert list(awaited.parameters) == list(blocking.parameters), name
        assert [p.default for p in awaited.parameters.values()] == [
            p.default for p in blocking.parameters.values()], name


@pytest.mark.parametrize("backend", BACKENDS)
def test_dumps_match_the_blocking_route(world: Netns, backend: str) -> None:
    with rtnl.Route(world.name) as ip:
        want = {
            "links": keys(ip.links()),
            "addresses": keys(ip.addresses()),
            "addresses4": keys(ip.addresses(AF_INET)),
            "routes": keys(ip.routes()),
            "routes_table": keys(ip.routes(table=TABLE)),
            "routes_all": keys(ip.routes(None, table="all")),
            "routes6": keys(ip.routes(AF_INET6)),
            "neighbours": keys(ip.neighbours()),
            "batches": keys([r for b in ip.route_batches(table=TABLE) for r in b]),
            "link": ip.link("va3").key,
            "index": ip.index("vb7"),
        }
    assert len(want["routes_table"]) == 3_000

    async def main() -> dict[str, Any]:
        async with AsyncRoute(world.name) as aip:
            batches = [b async for b in aip.route_batches(table=TABLE)]
            assert all(batches)
            return {
                "links": keys(await aip.links()),
                "addresses": keys(await aip.addresses()),
                "addresses4": keys(await aip.addresses(AF_INET)),
                "routes": keys(await aip.routes()),
                "routes_table": keys(await aip.routes(table=TABLE)),
                "routes_all": keys(await aip.routes(None, table="all")),
                "routes6": keys(await aip.routes(AF_INET6)),
                "neighbours": keys(await aip.neighbours()),
                "batches": keys([r for b in batches for r in b]),
                "link": (await aip.link("va3")).key,
                "index": await aip.index("vb7"),
            }

    assert run(backend, main) == want


@pytest.mark.parametrize("backend", ["asyncio", "anyio-trio"])
def test_changes_appear_to_the_blocking_route(scratch: Netns, backend: str) -> None:
    async def main() -> None:
        async with AsyncRoute(scratch.name) as aip:
            await aip.add_bridge("lwbr0")
            await aip.add_veth("lwx0", "lwx1")
            await aip.set_link("lwx0", up=True, mtu=1400, master="lwbr0", txqlen=500)
            await aip.set_link("lwbr0", up=True)
            await aip.add_address("lwbr0", "10.77.0.1/24", broadcast=True, label="lwbr0:a")
            await aip.add_address("lwbr0", "2001:db8:77::1/64")
            await aip.add_route("10.78.0.0/16", gateway="10.77.0.2", metric=30)
            await aip.add_route("10.79.0.0/16", link="lwbr0", table=200)
            await aip.add_route("10.80.0.0/16", nexthops=[("10.77.0.2", "lwbr0", 1),
                                                          ("10.77.0.3", "lwbr0", 3)])
            with pytest.raises(NetlinkError) as twice:
                await aip.add_route("10.78.0.0/16", gateway="10.77.0.2", metric=30)
            with rtnl.Route(scratch.name) as ip:
                with pytest.raises(NetlinkError) as blocked:
                    ip.add_route("10.78.0.0/16", gateway="10.77.0.2", metric=30)
                assert (twice.value.errno, twice.value.msg) == (blocked.value.errno,
                                                                blocked.value.msg)
                bridge = ip.link("lwbr0")
                port = ip.link("lwx0")
                assert (port.mtu, port.master, port.txqlen) == (1400, bridge.index, 500)
                addrs = {(a.address, a.prefixlen) for a in ip.addresses()
                         if a.index == bridge.index}
                assert {("10.77.0.1", 24), ("2001:db8:77::1", 64)} <= addrs
                assert {(r.dst, r.gateway, r.priority) for r in ip.routes()} >= {
                    ("10.78.0.0", "10.77.0.2", 30)}
                assert [r.dst for r in ip.routes(table=200)] == ["10.79.0.0"]
            await aip.del_route("10.78.0.0/16", gateway="10.77.0.2", metric=30)
            await aip.del_route("10.79.0.0/16", table=200)
            await aip.del_address("lwbr0", "10.77.0.1/24")
            await aip.del_link("lwx0")
            await aip.del_link(await aip.index("lwbr0"))
            with pytest.raises(NetlinkError):
                await aip.link("lwbr0")
            with rtnl.Route(scratch.name) as ip:
                names = {link.name for link in ip.links()}
                assert not names & {"lwbr0", "lwx0", "lwx1"}
                assert "10.78.0.0" not in {r.dst for r in ip.routes()}

    run(backend, main)


@pytest.mark.parametrize("backend", ["asyncio", "anyio-trio"])
def test_events_arrive(scratch: Netns, backend: str) -> None:
    async def main() -> None:
        async with AsyncRoute(scratch.name) as aip:
            events = aip.events(groups=["link"], resync=False)
            await aip.add_bridge("lwev0")
            try:
                async for event in events:
                    if isinstance(event, rtnl.Link) and event.name == "lwev0":
                        break
            finally:
                await events.aclose()
            await aip.del_link("lwev0")

    run(backend, main)


# ---------------------------------------------------------------------------
# Cancellation at random points


async def _batches(aip: AsyncRoute) -> None:
    async for _ in aip.route_batches(table=TABLE):
        pass


OPS: list[Callable[[AsyncRoute], Awaitable[Any]]] = [
    lambda aip: aip.routes(table=TABLE),
    lambda aip: aip.links(),
    lambda aip: aip.addresses(),
    lambda aip: aip.neighbours(),
    lambda aip: aip.link("va5"),
    lambda aip: aip.index("vb5"),
    lambda aip: aip.set_link("va5", mtu=1500),
    lambda aip: aip.routes(None, table="all"),
    _batches,
]


def test_random_cancellation_leaves_nothing_behind(world: Netns) -> None:
    with rtnl.Route(world.name) as ip:
        want = keys(ip.routes(table=TABLE))
        want_link = ip.link("va5").key
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    fds, nthreads = open_fds(), threads()
    outcomes: dict[str, int] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        readers = len(loop._selector.get_map())  # type: ignore[attr-defined]
        async with AsyncRoute(world.name) as aip:
            for i in range(CANCELS):
                _, outcome = await cancel_at_random(
                    asyncio.ensure_future(OPS[i % len(OPS)](aip)), rng, 0.005)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                assert (await aip.link("va5")).key == want_link, i
                if i % 50 == 0:
                    assert keys(await aip.routes(table=TABLE)) == want, i
                assert len(loop._selector.get_map()) == readers  # type: ignore[attr-defined]
            assert keys(await aip.routes(table=TABLE)) == want

    asyncio.run(main())
    assert open_fds() == fds
    assert threads() == nthreads
    print("cancellation outcomes", outcomes)
    assert outcomes.get("cancelled", 0) > CANCELS // 4, outcomes
