"""genl_async: nlctrl's resolve and families awaited, against their blocking twins (in
the initial namespace and a private one), with the same errors, and safe to cancel."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import threading

import pytest
from lwtest import BOUND

from latchwire import genl, genl_async, netlink
from latchwire.errors import NetlinkError
from latchwire.netlink_async import AsyncSocket

pytestmark = [pytest.mark.usefixtures("watchdog"), pytest.mark.kernel]


def test_awaited_answers_are_the_blocking_ones(genl_netns: str) -> None:
    """families() and resolve() of every family, awaited, equal the blocking calls'
    answers, here and in a namespace (where fewer families show)."""

    async def main() -> None:
        for where in (None, genl_netns):
            blocking = genl.families(netns=where, timeout=BOUND)
            assert await genl_async.families(netns=where, timeout=BOUND) == blocking
            for family in blocking:
                assert await genl_async.resolve(family.name, netns=where,
                                                timeout=BOUND) == family

    asyncio.run(main())


def test_errors_and_sockets_are_the_blocking_ones() -> None:
    """An unknown family is ENOENT naming it; a caller's socket is used and left open;
    one of another protocol, or with a namespace beside it, is refused."""

    async def main() -> None:
        with pytest.raises(NetlinkError, match="no generic netlink family named") as raised:
            await genl_async.resolve("lwnosuchfam", timeout=BOUND)
        assert raised.value.errno == errno.ENOENT
        sock = AsyncSocket(netlink.NETLINK_GENERIC)
        try:
            assert await genl_async.resolve("nlctrl", sock=sock, timeout=BOUND) \
                == genl.resolve("nlctrl", timeout=BOUND)
            assert await genl_async.families(sock=sock, timeout=BOUND)
            with pytest.raises(ValueError, match="not both"):
                await genl_async.resolve("nlctrl", netns="x", sock=sock)
        finally:
            sock.close()
        route = AsyncSocket(netlink.NETLINK_ROUTE)
        try:
            with pytest.raises(ValueError, match="not NETLINK_GENERIC"):
                await genl_async.families(sock=route)
        finally:
            route.close()

    asyncio.run(main())


def test_cancelled_calls_leave_the_socket_whole() -> None:
    """300 resolve/families calls on one socket, each cancelled after a random number of
    loop turns (or let finish): the next call on the socket always gets its own, right
    answer, and no descriptor or thread is left."""
    fds = len(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    rng = random.Random(20)
    expected = genl.families(timeout=BOUND)
    nlctrl = genl.resolve("nlctrl", timeout=BOUND)

    async def main() -> dict[str, int]:
        outcomes = {"cancelled": 0, "done": 0}
        sock = AsyncSocket(netlink.NETLINK_GENERIC)
        try:
            for _ in range(300):
                call = (genl_async.families(sock=sock, timeout=BOUND) if rng.random() < 0.5
                        else genl_async.resolve("nlctrl", sock=sock, timeout=BOUND))
                task = asyncio.ensure_future(call)
                for _ in range(rng.randrange(4)):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    await task
                    outcomes["done"] += 1
                except asyncio.CancelledError:
                    outcomes["cancelled"] += 1
                assert await genl_async.resolve("nlctrl", sock=sock, timeout=BOUND) == nlctrl
            assert await genl_async.families(sock=sock, timeout=BOUND) == expected
        finally:
            sock.close()
        return outcomes

    outcomes = asyncio.run(main())
    print(f"\ncancellation outcomes: {outcomes}")
    assert outcomes["cancelled"] > 0
    assert len(os.listdir("/proc/self/fd")) == fds
    assert threading.active_count() == threads
