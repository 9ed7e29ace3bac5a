"""``AsyncRoute``: every method of ``rtnl.Route``, awaited on the event loop.

The methods are Route's own (one generator of netlink operations per method,
in rtnl): Route blocks on each operation, AsyncRoute awaits it on an
``AsyncSocket`` over the same socket, so requests, decoding and errors are
identical and only the waiting differs. Loops, cancellation and the one-task
rule are netlink_async's: a call cancelled at any await leaves no half-read
channel, no thread and no descriptor behind.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import cast

from latchwire import rtnl
from latchwire._core import Address, Link, Neighbour, RouteEntry
from latchwire.netlink import Request
from latchwire.netlink_async import AsyncSocket
from latchwire.rtnl import (
    AF_INET,
    DEFAULT_GROUPS,
    RT_SCOPE_UNIVERSE,
    RTN_UNICAST,
    RTPROT_STATIC,
    Event,
    LinkRef,
    Ops,
    R,
)

__all__ = ["AsyncRoute"]


class AsyncRoute:
    """rtnetlink in one network namespace, awaited: ``rtnl.Route``'s arguments,
    methods and errors, each method a coroutine (``route_batches`` and
    ``events`` async iterators). ``timeout`` bounds every wait of every call
    (TimeoutError), checked as Route's. For asyncio (and anyio on it) and trio
    (and anyio on it); see netlink_async. One task at a time per AsyncRoute
    (RuntimeError for a second one waiting at once); event streams have sockets
    of their own.
    """

    def __init__(self, netns: str | int | None = None, rcvbuf: int | None = None,
                 timeout: float | None = 10.0) -> None:
        self._route = rtnl.Route(netns, rcvbuf, timeout)
        self._sock = AsyncSocket._over(self._route._sock)

    @property
    def netns(self) -> str | int | None:
        """The namespace given (None: the caller's)."""
        return self._route.netns

    @property
    def timeout(self) -> float | None:
        """The bound of every wait, checked."""
        return self._route.timeout

    @property
    def route(self) -> rtnl.Route:
        """The blocking Route over the same socket (for code that may block)."""
        return self._route

    async def __aenter__(self) -> AsyncRoute:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Route.close (RuntimeError while a task waits on the socket)."""
        self._sock.close()

    async def _run(self, ops: Ops[R]) -> R:
        """What ops returns, its dumps and transactions awaited."""
        sock, timeout = self._sock, self._route.timeout
        try:
            op = next(ops)
            while True:
                if op.dump:
                    dump = sock.dump(op.request, retries=rtnl._RETRIES, timeout=timeout,
                                     decode=True)
                    records = await dump.all()
                    op = ops.send((records, dump.filtered))
                elif op.change:
                    await self._change(op.request)
                    op = ops.send(None)
                else:
                    op = ops.send(await sock.transact(op.request, timeout))
        except StopIteration as stop:
            return cast(R, stop.value)
        finally:
            ops.close()

    # -- dumps ---------------------------------------------------------------

    async def links(self) -> list[Link]:
        """Route.links, awaited."""
        return await self._run(rtnl._links())

    async def link(self, link: LinkRef) -> Link:
        """Route.link, awaited."""
        return await self._run(rtnl._link(link))

    async def index(self, link: LinkRef) -> int:
        """Route.index, awaited."""
        return await self._run(rtnl._index(link))

    async def addresses(self, family: int | None = None) -> list[Address]:
        """Route.addresses, awaited."""
        return await self._run(rtnl._addresses(family))

    async def routes(self, family: int | None = AF_INET, table: int | str | None = None
                     ) -> list[RouteEntry]:
        """Route.routes, awaited."""
        return await self._run(rtnl._routes(family, table))

    def route_batches(self, family: int | None = AF_INET, table: int | str | None = None
                      ) -> AsyncIterator[list[RouteEntry]]:
        """Route.route_batches as an async iterator (arguments checked here)."""
        return self._route_batches(*rtnl._route_batch_plan(family, table))

    async def _route_batches(self, requests: Sequence[Request], table_id: int
                             ) -> AsyncIterator[list[RouteEntry]]:
        for request in requests:
            dump = self._sock.dump(request, timeout=self._route.timeout, decode=True)
            async with dump:
                async for batch in dump.batches():
                    yield rtnl._in_table(batch, table_id, dump.filtered)

    async def neighbours(self, family: int | None = None) -> list[Neighbour]:
        """Route.neighbours, awaited."""
        return await self._run(rtnl._neighbours(family))

    # -- changes -------------------------------------------------------------

    async def _change(self, request: Request) -> None:
        """Make the change request asks for (NetlinkError if the kernel refuses)."""
        await self._sock.transact(request, self._route.timeout)

    async def add_address(self, link: LinkRef, address: str,
                          broadcast: str | bool | None = None, label: str | None = None,
                          scope: int = RT_SCOPE_UNIVERSE) -> None:
        """Route.add_address, awaited."""
        await self._run(rtnl._add_address(link, address, broadcast, label, scope))

    async def del_address(self, link: LinkRef, address: str) -> None:
        """Route.del_address, awaited."""
        await self._run(rtnl._del_address(link, address))

    async def add_route(self, dst: str, gateway: str | None = None,
                        link: LinkRef | None = None, table: int | None = None,
                        metric: int | None = None, protocol: int = RTPROT_STATIC,
                        scope: int | None = None, type: int = RTN_UNICAST,
                        prefsrc: str | None = None,
                        nexthops: Iterable[tuple[str, LinkRef, int]] = (),
                        replace: bool = False) -> None:
        """Route.add_route, awaited."""
        await self._run(rtnl._add_route(dst, gateway, link, table, metric, protocol, scope,
                                        type, prefsrc, nexthops, replace))

    async def del_route(self, dst: str, gateway: str | None = None,
                        link: LinkRef | None = None, table: int | None = None,
                        metric: int | None = None) -> None:
        """Route.del_route, awaited."""
        await self._run(rtnl._del_route(dst, gateway, link, table, metric))

    async def set_link(self, link: LinkRef, up: bool | None = None, mtu: int | None = None,
                       name: str | None = None, mac: str | None = None,
                       master: LinkRef | None = None, txqlen: int | None = None) -> None:
        """Route.set_link, awaited."""
        await self._run(rtnl._set_link(link, up, mtu, name, mac, master, txqlen))

    async def add_veth(self, name: str, peer: str, peer_netns: int | None = None) -> None:
        """Route.add_veth, awaited."""
        await self._run(rtnl._add_veth(name, peer, peer_netns))

    async def add_bridge(self, name: str) -> None:
        """Route.add_bridge, awaited."""
        await self._run(rtnl._add_link(name, "bridge"))

    async def del_link(self, link: LinkRef) -> None:
        """Route.del_link, awaited."""
        await self._run(rtnl._del_link(link))

    # -- events --------------------------------------------------------------

    def events(self, groups: Iterable[str] = DEFAULT_GROUPS, resync: bool = True
               ) -> AsyncGenerator[Event, None]:
        """Route.events_async: the records of change notifications, awaited (no
        timeout of its own: bound a wait with the loop's). The groups are joined
        and, with resync, the tables read before this returns; a resync after an
        Overrun dumps in the loop, blocking it briefly."""
        return self._route.events_async(groups, resync)

    def events_async(self, groups: Iterable[str] = DEFAULT_GROUPS, resync: bool = True
                     ) -> AsyncGenerator[Event, None]:
        """events() (Route's name for it)."""
        return self.events(groups, resync)
