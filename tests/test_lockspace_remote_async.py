"""RemoteLockSpace.acquire_async(), against a real ZooKeeper and a real etcd.

Every case runs on both engines (the ``url`` fixture is parametrized over them;
each engine's server starts once for the module). The awaited leases are the
blocking ones (tokens, fencing order, shared neighbours granted together); the
tasks wait on the engine's notifications, not on threads, so hundreds of them
are served in the engine's queue order with the lockspace's bounded pool and
watch thread only; release_owner(), timeouts and cancels at random points
(many rounds) leave no hold, no entry in the engine's queue, no wait, no
thread and no descriptor behind. anyio's asyncio backend works; its trio
backend gets a RuntimeError saying what to do instead.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from coord import Link, RemoteAgent, etcd_missing, start_etcd, start_zookeeper, zookeeper_missing
from lwtest import WAIT
from lwthreads import poll_until
from remote_cases import SESSION, entries, server_fixture

from latchwire import Lease, LockBusy, LockCancelled, LockSpace, LockTimeout, SessionLost
from latchwire.lockspace.remote import RemoteLease, RemoteLockSpace, State

pytestmark = pytest.mark.usefixtures("watchdog")

zk_server = server_fixture("ZooKeeper", "zk", zookeeper_missing, start_zookeeper, "zk_server")
etcd_server = server_fixture("etcd", "etcd", etcd_missing, start_etcd, "etcd_server")

TASKS = 200  # waiting on one resource at once
ROUNDS = 12  # of random cancels and timeouts
ROUND_TASKS = 60
# The threads a lockspace may add while tasks wait, however many: its call pool and
# (etcd) its watch stream's thread.
LOCKSPACE_THREADS = RemoteLockSpace.CALL_THREADS + 1


@pytest.fixture(params=["zk", "etcd"])
def url(request: pytest.FixtureRequest) -> str:
    server = request.getfixturevalue(f"{request.param}_server")
    return f"{request.param}://127.0.0.1:{server.port}/test-{uuid.uuid4().hex}"


@pytest.fixture
def space(url: str) -> Iterator[RemoteLockSpace]:
    with LockSpace(url, session_timeout=SESSION) as opened:
        yield opened


@pytest.fixture
def agents(url: str) -> Iterator[Callable[[], RemoteAgent]]:
    with RemoteAgent.all_killed(url, session_timeout=SESSION) as start_agent:
        yield start_agent


async def queued(space: RemoteLockSpace, name: str, count: int) -> None:
    """Return once name has count entries in the engine's queue (the loop runs meanwhile)."""
    deadline = time.monotonic() + WAIT
    while len(entries(space, name)) != count:
        assert time.monotonic() < deadline, f"{count} entries on {name!r}: {entries(space, name)}"
        await asyncio.sleep(0.005)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_awaited_leases_are_the_blocking_ones(space: RemoteLockSpace,
                                              agents: Callable[[], RemoteAgent]) -> None:
    other = agents()
    first = other.ok("acquire", name="disk", owner="x")
    seen: list[State] = []

    async def main() -> None:
        task = asyncio.create_task(space.acquire_async(
            "disk", "vm-1", listener=lambda _lease, state: seen.append(state)))
        await queued(space, "disk", 2)
        assert not task.done()
        with pytest.raises(RuntimeError):
            await space.acquire_async("disk", "vm-1")  # the same owner awaits it already
        other.ok("release", name="disk", owner="x")
        lease = await asyncio.wait_for(task, WAIT)
        assert isinstance(lease, RemoteLease)
        assert (lease.valid, lease.state, lease.mode) == (True, "held", "exclusive")
        assert lease.token > first["token"]
        assert space.held() == [Lease("disk", "exclusive", ("vm-1",))]
        assert space.queue("disk") == [lease.key]
        with pytest.raises(LockBusy):
            space.acquire("disk", "vm-2")
        assert other.error("acquire", name="disk", owner="y") == "LockBusy"

        # Shared neighbours are granted together; a waiting writer keeps later readers out.
        readers = await asyncio.gather(space.acquire_async("pool", "r1", shared=True),
                                       space.acquire_async("pool", "r2", shared=True))
        assert all(reader.valid and reader.shared for reader in readers)
        writer = asyncio.create_task(space.acquire_async("pool", "w"))
        await queued(space, "pool", 3)
        late = asyncio.create_task(space.acquire_async("pool", "r3", shared=True))
        await queued(space, "pool", 4)
        space.release("pool", "r1")
        space.release("pool", "r2")
        written = await asyncio.wait_for(writer, WAIT)
        assert not late.done()
        space.release("pool", "w")
        read = await asyncio.wait_for(late, WAIT)
        assert read.token > written.token > max(reader.token for reader in readers)
        space.release("pool", "r3")
        space.release("disk", "vm-1")
        assert lease.state == "released"

    asyncio.run(main())
    poll_until(lambda: seen == ["released"], "the listener heard the release", WAIT)
    assert space.held() == [] and entries(space, "disk") == entries(space, "pool") == []


def test_hundreds_of_tasks_are_served_in_queue_order_on_a_bounded_number_of_threads(
        url: str) -> None:
    before = threading.active_count()
    with LockSpace(url, session_timeout=SESSION) as space:
        opened = threading.active_count()
        space.acquire("r", "holder")
        served: list[str] = []

        async def one(n: int) -> None:
            lease = await space.acquire_async("r", f"t{n}")
            served.append(lease.key)
            space.release("r", f"t{n}")

        async def main() -> tuple[list[str], int, int]:
            tasks = [asyncio.create_task(one(n)) for n in range(TASKS)]
            await queued(space, "r", TASKS + 1)
            order = space.queue("r")[1:]
            during = peak = threading.active_count()
            space.release("r", "holder")
            while not all(task.done() for task in tasks):
                peak = max(peak, threading.active_count())
                await asyncio.sleep(0.01)
            await asyncio.gather(*tasks)
            return order, during, peak

        order, during, peak = asyncio.run(main())
        print(f"\n{url.split(':')[0]}: {TASKS} tasks; threads {before} before, {opened} "
              f"with the lockspace open, {during} while all waited, {peak} at most")
        assert served == order
        assert peak <= opened + LOCKSPACE_THREADS, (opened, during, peak)
        assert entries(space, "r") == [] and space.held() == []
    poll_until(lambda: threading.active_count() <= before, "the lockspace's threads ended", WAIT)


def test_release_owner_ends_an_awaited_wait(space: RemoteLockSpace,
                                            agents: Callable[[], RemoteAgent]) -> None:
    other = agents()
    other.ok("acquire", name="c", owner="x")
    space.acquire("a", "vm-1")

    async def main() -> None:
        task = asyncio.create_task(space.acquire_async("c", "vm-1"))
        await queued(space, "c", 2)
        assert await asyncio.to_thread(space.release_owner, "vm-1") == ["a"]
        with pytest.raises(LockCancelled):
            await asyncio.wait_for(task, WAIT)

    asyncio.run(main())
    assert len(entries(space, "c")) == 1 and space.held() == []
    assert other.ok("acquire", name="a", owner="y")["valid"]


def test_an_awaited_wait_times_out_without_blocking_the_loop(
        space: RemoteLockSpace, agents: Callable[[], RemoteAgent]) -> None:
    agents().ok("acquire", name="r", owner="x")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def main() -> None:
        ticking = asyncio.create_task(ticker())
        t0 = time.monotonic()
        with pytest.raises(LockTimeout):
            await space.acquire_async("r", "y", timeout=0.3)
        assert time.monotonic() - t0 >= 0.3
        assert ticks > 0  # the loop ran while the task waited
        with pytest.raises(TimeoutError):  # a cancel from outside: asyncio's own timeout
            await asyncio.wait_for(space.acquire_async("r", "z"), 0.3)
        with pytest.raises(ValueError):
            await space.acquire_async("r", "y", timeout=-1)
        ticking.cancel()

    asyncio.run(main())
    assert len(entries(space, "r")) == 1 and space.held() == []


def test_a_lost_session_ends_an_awaited_wait_with_session_lost(url: str) -> None:
    scheme, _, address, prefix = url.split("/", 3)
    link = Link(int(address.rsplit(":", 1)[1]))
    with LockSpace(f"{scheme}//127.0.0.1:{link.port}/{prefix}",
                   session_timeout=SESSION) as cut_off, \
            LockSpace(url, session_timeout=SESSION) as observer:
        observer.acquire("r", "holder")

        async def main() -> None:
            task = asyncio.create_task(cut_off.acquire_async("r", "w"))
            await queued(observer, "r", 2)
            link.cut()  # longer than the session: the engine expires it and its entry
            await asyncio.to_thread(poll_until, lambda: len(entries(observer, "r")) == 1,
                                    "the cut-off session's entry expired", WAIT)
            link.restore()
            # As a blocking wait: SessionLost, or (ZooKeeper) a ConnectionError when a
            # look at the queue or the dequeue met the cut for a whole session timeout.
            with pytest.raises((SessionLost, ConnectionError)):
                await asyncio.wait_for(task, WAIT)

        asyncio.run(main())
        assert cut_off.held() == [] and not cut_off._waits
        assert len(entries(observer, "r")) == 1 and observer.held()


def test_random_cancels_and_timeouts_leave_no_entry_no_hold_no_thread_no_descriptor(
        url: str, agents: Callable[[], RemoteAgent]) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    names = ("r0", "r1", "r2")
    other = agents()  # takes r0 from another process for a part of every round
    before, fds = threading.active_count(), open_fds()
    with LockSpace(url, session_timeout=SESSION) as space:
        opened = threading.active_count()
        peak = opened
        outcomes: dict[str, int] = {"granted": 0, "cancelled": 0, "timed out": 0}

        async def one(n: int, name: str, shared: bool, timeout: float | None) -> None:
            await space.acquire_async(name, f"o{n}", shared=shared, timeout=timeout)
            try:
                await asyncio.sleep(rng.random() * 0.005)  # a cancel may come here too
            finally:
                space.release(name, f"o{n}")

        async def round_(r: int) -> None:
            nonlocal peak
            other.ok("acquire", name="r0", owner="x")
            tasks = []
            for n in range(ROUND_TASKS):
                timeout = rng.choice((None, None, 0.0, rng.random() * 0.05))
                tasks.append(asyncio.create_task(one(r * ROUND_TASKS + n, rng.choice(names),
                                                     rng.random() < 0.3, timeout)))
                if rng.random() < 0.3:
                    await asyncio.sleep(0)
            doomed = rng.sample(tasks, ROUND_TASKS * 2 // 3)
            release_at = rng.randrange(len(doomed))
            for k, task in enumerate(doomed):
                if k == release_at:
                    other.ok("release", name="r0", owner="x")
                await asyncio.sleep(rng.choice((0, 0, rng.random() * 0.01)))
                task.cancel()
                peak = max(peak, threading.active_count())
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException) and not isinstance(
                        result, (asyncio.CancelledError, LockTimeout)):
                    raise result
                outcomes["granted" if result is None else "cancelled"
                         if isinstance(result, asyncio.CancelledError) else "timed out"] += 1
            for name in names:
                assert entries(space, name) == [], (seed, r, name)
            assert space.held() == [] and not space._waits, (seed, r)

        async def main() -> None:
            for r in range(ROUNDS):
                await round_(r)

        asyncio.run(main())
        print(f"\n{url.split(':')[0]}: {ROUNDS} rounds of {ROUND_TASKS} tasks (seed {seed}): "
              f"{outcomes}; threads {before} before, {opened} open, {peak} at most")
        assert peak <= opened + LOCKSPACE_THREADS, (seed, opened, peak)
        assert outcomes["cancelled"] > 0 and outcomes["granted"] > 0, outcomes
    poll_until(lambda: threading.active_count() <= before, "the lockspace's threads ended", WAIT)
    poll_until(lambda: open_fds() <= fds, f"{fds} descriptors open again", WAIT)


def test_anyio_on_asyncio_works_and_trio_gets_a_clear_error(
        space: RemoteLockSpace, agents: Callable[[], RemoteAgent]) -> None:
    anyio = pytest.importorskip("anyio")
    other = agents()
    other.ok("acquire", name="r", owner="x")

    async def on_asyncio() -> None:
        with anyio.move_on_after(0.2) as scope:  # anyio's cancel: no entry left behind
            await space.acquire_async("r", "y")
        assert scope.cancelled_caught
        assert len(entries(space, "r")) == 1
        got: list[RemoteLease] = []

        async def take(owner: str) -> None:
            got.append(await space.acquire_async("r", owner))
            space.release("r", owner)

        async with anyio.create_task_group() as group:
            group.start_soon(take, "y")
            await queued(space, "r", 2)
            group.start_soon(take, "z")
            await queued(space, "r", 3)
            other.ok("release", name="r", owner="x")
        assert [lease.owner for lease in got] == ["y", "z"]
        assert got[0].token < got[1].token

    async def on_trio() -> str:
        try:
            await space.acquire_async("r", "t")
        except RuntimeError as err:
            return str(err)
        return "no error"

    anyio.run(on_asyncio, backend="asyncio")
    assert "trio.to_thread.run_sync" in anyio.run(on_trio, backend="trio")
    assert space.held() == [] and entries(space, "r") == []
