"""latchwire.netlink_async against the kernel, in private network namespaces.

Each awaitable of ``AsyncSocket`` (``recv``, ``transact``, ``transact_many``,
``dump`` iterated, read whole, in batches, with retries) is checked against its
blocking twin's results on ``netlink.Socket``, under asyncio and under trio
(both through anyio's ``run``, and asyncio also bare); copy-on-write dumps stay
exact while the same socket transacts; the one-task-per-channel rule, a close
while a task waits, and the call outside any loop raise their RuntimeErrors.

The random-cancellation test cancels each awaitable at random points (before
its task starts, after a few turns of the loop, after a random delay, inside a
dump half read) 1,000 times, and checks afterwards that the socket answers
exactly (no half-read channel), and that no descriptor, thread or reader
callback is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from lwasync import BACKENDS, anyio, cancel_at_random, run, threads
from lwasync import fd_numbers as open_fds
from lwnetns import Netns, drop_netns, make_netns
from lwtest import need

from latchwire import netlink
from latchwire.errors import NetlinkError
from latchwire.netlink import Message, Request, Socket
from latchwire.netlink_async import AsyncDump, AsyncSocket, wait_readable

pytestmark = [pytest.mark.usefixtures("watchdog"), pytest.mark.kernel]

IFINFOMSG = struct.Struct("=BxHiII")
RTMSG = struct.Struct("=BBBBBBBBI")
IFLA_IFNAME = 3
TABLE = 100
ROUTES = 5_000
CANCELS = 1_000

@pytest.fixture(scope="module")
def ns() -> Iterator[Netns]:
    """The module's namespace, with 5,000 /32 routes 10.1.x.y in table 100."""
    space = make_netns()
    try:
        space.batch(f"route add 10.1.{i >> 8}.{i & 255}/32 dev veth0 table {TABLE}"
                    for i in range(ROUTES))
        yield space
    finally:
        drop_netns(space)


def route_dump(table: int = TABLE) -> Request:
    return Request(netlink.RTM_GETROUTE,
                   header=RTMSG.pack(socket.AF_INET, 0, 0, 0, table, 0, 0, 0, 0))


def getlink(name: str) -> Request:
    return Request(netlink.RTM_GETLINK, header=IFINFOMSG.pack(0, 0, 0, 0, 0),
                   attrs=netlink.attr(IFLA_IFNAME, netlink.string(name)))


def table_routes(records: list[Any]) -> list[Any]:
    return sorted(r.key for r in records if r.table == TABLE)


def raw(msgs: list[Message]) -> list[tuple[int, bytes]]:
    return [(m.type, m.payload) for m in msgs]


def blocking_routes(ns: Netns) -> list[Any]:
    with Socket(netlink.NETLINK_ROUTE, ns.name, strict=True) as sock:
        return table_routes(sock.dump(route_dump(), decode=True).all())


# ---------------------------------------------------------------------------
# Each awaitable against its blocking twin


@pytest.mark.parametrize("backend", BACKENDS)
def test_dumps_match_the_blocking_dumps(ns: Netns, backend: str) -> None:
    with Socket(netlink.NETLINK_ROUTE, ns.name, strict=True) as sock:
        want_msgs = raw(sock.dump(route_dump()).all())
        want = table_routes(sock.dump(route_dump(), decode=True).all())
    assert len(want) == ROUTES

    async def main() -> None:
        async with AsyncSocket(netlink.NETLINK_ROUTE, ns.name, strict=True) as asock:
            assert raw([m async for m in asock.dump(route_dump())]) == want_msgs
            assert table_routes(await asock.dump(route_dump(), decode=True).all()) == want
            whole = asock.dump(route_dump(), retries=3, decode=True)
            assert table_routes(await whole.all()) == want and whole.finished
            assert whole.filtered
            got: list[Any] = []
            async for batch in asock.dump(route_dump(), decode=True).batches():
                assert batch
                got += batch
            assert table_routes(got) == want
            items = [r async for r in asock.dump(route_dump(), retries=2, decode=True)]
            assert table_routes(items) == want

    run(backend, main)


@pytest.mark.parametrize("backend", BACKENDS)
def test_transactions_match_the_blocking_ones(ns: Netns, backend: str) -> None:
    with Socket(netlink.NETLINK_ROUTE, ns.name) as sock:
        want = sock.transact(getlink("veth0"))
        assert want is not None
        with pytest.raises(NetlinkError) as blocked:
            sock.transact(getlink("nosuchlink"))
        many = sock.transact_many([getlink("veth1"), getlink("nosuchlink"), getlink("lo")])

    async def main() -> None:
        async with AsyncSocket(netlink.NETLINK_ROUTE, ns.name) as asock:
            got = await asock.transact(getlink("veth0"), timeout=10)
            assert got is not None and got.payload == want.payload
            with pytest.raises(NetlinkError) as awaited:
                await asock.transact(getlink("nosuchlink"))
            assert (awaited.value.errno, awaited.value.msg) == (blocked.value.errno,
                                                                blocked.value.msg)
            answers = await asock.transact_many(
                [getlink("veth1"), getlink("nosuchlink"), getlink("lo")])
            assert [type(a) for a in answers] == [type(a) for a in many]
            assert [a.payload if isinstance(a, Message) else a.errno
                    for a in answers] == [a.payload if isinstance(a, Message) else a.errno
                                          for a in many]
            assert await asock.transact_many([]) == []

    run(backend, main)


@pytest.mark.parametrize("backend", BACKENDS)
def test_recv_gets_notifications_and_times_out(ns: Netns, backend: str) -> None:
    async def main() -> None:
        async with AsyncSocket(netlink.NETLINK_ROUTE, ns.name) as asock:
            asock.join_group(netlink.RTNLGRP_LINK)
            with pytest.raises(TimeoutError):
                await asock.recv(timeout=0)
            with pytest.raises(TimeoutError):
                await asock.recv(timeout=0.02)
            # A change made on the socket itself: its notification is multicast to it.
            bridge = Request(netlink.RTM_NEWLINK, netlink.NLM_F_CREATE | netlink.NLM_F_EXCL,
                             IFINFOMSG.pack(0, 0, 0, 0, 0),
                             netlink.attr(IFLA_IFNAME, netlink.string("lwabr0"))
                             + netlink.nested(18, [netlink.attr(1, netlink.string("bridge"))]))
            assert await asock.transact(bridge) is None
            index = None
            while index is None:
                index = next((r.index for r in await asock.recv(timeout=10, decode=True)
                              if r.name == "lwabr0"), None)
            await asock.transact(Request(netlink.RTM_DELLINK, 0,
                                         IFINFOMSG.pack(0, 0, index, 0, 0)))
            while True:  # the deletion's notification comes too
                msgs = await asock.recv(timeout=10)
                if any(m.type == netlink.RTM_DELLINK for m in msgs):
                    break

    run(backend, main)


def test_a_dump_keeps_its_channel_while_the_socket_transacts(ns: Netns) -> None:
    """Copy-on-write, awaited: a dump half read, transactions and other dumps on
    the same socket in between, and every dump still exact."""
    want = blocking_routes(ns)

    async def main() -> None:
        async with AsyncSocket(netlink.NETLINK_ROUTE, ns.name, strict=True) as asock:
            first = asock.dump(route_dump(), decode=True)
            got = [await first.__anext__() for _ in range(100)]
            pid = asock.pid  # copy on write: the socket took a fresh channel
            reply = await asock.transact(getlink("lo"))
            assert reply is not None and reply.record().name == "lo"
            second = asock.dump(route_dump(), decode=True)
            assert table_routes(await second.all()) == want
            got += [r async for r in first]
            assert table_routes(got) == want
            assert asock.pid == pid

    asyncio.run(main())


def test_calls_check_their_timeouts_before_sending(ns: Netns) -> None:
    async def main() -> None:
        async with AsyncSocket(netlink.NETLINK_ROUTE, ns.name) as asock:
            for bad in (-1, math.nan):
                with pytest.raises(ValueError):
                    await asock.recv(bad)
                with pytest.raises(ValueError):
                    await asock.transact(getlink("lo"), bad)
                with pytest.raises(ValueError):
                    asock.dump(route_dump(), timeout=bad)
            with pytest.raises(TypeError):
                await asock.transact_many([getlink("lo")], "1")  # type: ignore[arg-type]
            asock.socket.drain()
            assert asock.socket._chan is not None
            assert asock.socket._chan.recv(0) is None  # nothing was sent

    asyncio.run(main())


def test_one_task_per_channel_and_no_close_under_a_waiter(ns: Netns) -> None:
    async def main() -> None:
        async with AsyncSocket(netlink.NETLINK_ROUTE, ns.name) as asock:
            asock.join_group(netlink.RTNLGRP_LINK)
            waiter = asyncio.ensure_future(asock.recv())
            await asyncio.sleep(0.01)
            with pytest.raises(RuntimeError, match="another task"):
                await asock.recv(timeout=1)
            with pytest.raises(RuntimeError, match="cancel it"):
                asock.close()
            # A socket with groups transacts on a channel of its own: no conflict.
            assert await asock.transact(getlink("lo")) is not None
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter

    asyncio.run(main())


def test_outside_any_loop_is_a_clear_error() -> None:
    r, w = os.pipe()
    try:
        coro = wait_readable(r)
        with pytest.raises(RuntimeError, match="asyncio"):
            coro.send(None)
    finally:
        os.close(r)
        os.close(w)


# ---------------------------------------------------------------------------
# Cancellation at random points


async def _op_dump_all(asock: AsyncSocket, log: list[AsyncDump[Any]]) -> None:
    dump = asock.dump(route_dump(), decode=True)
    log.append(dump)
    await dump.all()


async def _op_dump_iter(asock: AsyncSocket, log: list[AsyncDump[Any]]) -> None:
    dump = asock.dump(route_dump(), decode=True)
    log.append(dump)
    async for _ in dump:
        pass


async def _op_dump_retries(asock: AsyncSocket, log: list[AsyncDump[Any]]) -> None:
    dump = asock.dump(route_dump(), retries=2)
    log.append(dump)
    await dump.all()


async def _op_batches(asock: AsyncSocket, log: list[AsyncDump[Any]]) -> None:
    dump = asock.dump(route_dump(), decode=True)
    log.append(dump)
    async for _ in dump.batches():
        pass


async def _op_transact(asock: AsyncSocket, log: list[AsyncDump[Any]]) -> None:
    await asock.transact(getlink("veth0"))


async def _op_transact_many(asock: AsyncSocket, log: list[AsyncDump[Any]]) -> None:
    await asock.transact_many([getlink("veth0"), getlink("nosuch"), getlink("lo")] * 20)


async def _op_recv(asock: AsyncSocket, log: list[AsyncDump[Any]]) -> None:
    await asock.recv(timeout=0.001 * random.randint(0, 3))


OPS = [_op_dump_all, _op_dump_iter, _op_dump_retries, _op_batches, _op_transact,
       _op_transact_many, _op_recv]


async def _cancel_at_random(asock: AsyncSocket, op: Any, rng: random.Random) -> str:
    """op in a task, cancelled at a random point; what happened to it."""
    log: list[AsyncDump[Any]] = []
    how, outcome = await cancel_at_random(asyncio.ensure_future(op(asock, log)), rng, 0.004)
    for dump in log:
        assert dump.finished, (op.__name__, how, outcome)  # cancelled or read: closed
    return outcome


def test_random_cancellation_leaves_nothing_behind(ns: Netns) -> None:
    want = blocking_routes(ns)
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    fds, nthreads = open_fds(), threads()
    outcomes: dict[str, int] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        readers = len(loop._selector.get_map())  # type: ignore[attr-defined]
        async with AsyncSocket(netlink.NETLINK_ROUTE, ns.name, strict=True) as asock:
            for i in range(CANCELS):
                op = OPS[i % len(OPS)]
                outcome = await _cancel_at_random(asock, op, rng)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                # No half-read channel: the next answers are exactly the right ones.
                reply = await asock.transact(getlink("lo"), timeout=10)
                assert reply is not None and reply.record().name == "lo", (i, op.__name__)
                if i % 50 == 0:
                    got = await asock.dump(route_dump(), decode=True, timeout=10).all()
                    assert table_routes(got) == want, (i, op.__name__)
                assert not asock._waiting
                assert len(loop._selector.get_map()) == readers  # type: ignore[attr-defined]
            assert table_routes(await asock.dump(route_dump(), decode=True).all()) == want
        assert len(loop._selector.get_map()) == readers  # type: ignore[attr-defined]

    asyncio.run(main())
    assert open_fds() == fds
    assert threads() == nthreads
    print("cancellation outcomes", outcomes)
    assert outcomes.get("cancelled", 0) > CANCELS // 4, outcomes


def test_cancellation_under_trio_leaves_nothing_behind(ns: Netns) -> None:
    need(anyio is not None, "anyio is not installed (the test extra has it)")
    want = blocking_routes(ns)
    fds, nthreads = open_fds(), threads()
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))

    async def main() -> None:
        async with AsyncSocket(netlink.NETLINK_ROUTE, ns.name, strict=True) as asock:
            for i in range(200):
                log: list[AsyncDump[Any]] = []
                with anyio.move_on_after(rng.uniform(0, 0.004)), \
                        contextlib.suppress(TimeoutError):  # _op_recv's own timeout
                    await OPS[i % len(OPS)](asock, log)
                for dump in log:
                    assert dump.finished
                reply = await asock.transact(getlink("lo"), timeout=10)
                assert reply is not None and reply.record().name == "lo"
            assert table_routes(await asock.dump(route_dump(), decode=True).all()) == want

    run("anyio-trio", main)
    assert open_fds() == fds
    assert threads() == nthreads
