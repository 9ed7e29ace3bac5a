"""The remote lockspace's behaviour, the same on every engine, for each engine's test file.

A test file imports these cases (``from remote_cases import *``) and defines the
fixtures they take: ``server`` (the engine's server for the run), ``url`` (a
URL with a prefix of the test's own), ``space`` (this process's lockspace on
url) and ``agents`` (starts ``RemoteAgent``s on url). Other holders are fresh
interpreters with sessions of their own. A process is known to be queued when
its entry is seen in the engine (``await_entries``); loss and grants are
awaited through the agents' answers and lease listeners; nothing sleeps to
synchronise. Sessions last SESSION seconds, so expiry tests finish in seconds.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from coord import Link, RemoteAgent, Server, free_port
from lwtest import WAIT, need
from lwthreads import Worker, poll_until

from latchwire import Lease, LockBusy, LockCancelled, LockSpace, LockTimeout
from latchwire.lockspace.remote import RemoteLease, RemoteLockSpace, State

SESSION = 2.0  # seconds: the session timeout of every lockspace in the tests
PROMPT = 0.5  # "at once": a busy answer, or a grant after a release


def engine_fixtures(engine: str, scheme: str, missing: Callable[[], str | None],
                    start: Callable[[Path], Server]) -> tuple[Any, ...]:
    """The fixtures a test file of one engine needs, for it to assign at module level:
    ``server`` (the engine, started once for the module: skipped, or failed under CI,
    if it cannot start), ``url`` (a URL with a prefix of the test's own), ``space``
    (this process's lockspace on url) and ``agents`` (RemoteAgents on url; every one
    still running at the end is killed)."""

    server = server_fixture(engine, scheme, missing, start)

    @pytest.fixture(name="url")
    def url(server: Server) -> str:
        return f"{scheme}://127.0.0.1:{server.port}/test-{uuid.uuid4().hex}"

    @pytest.fixture(name="space")
    def space(url: str) -> Iterator[RemoteLockSpace]:
        with LockSpace(url, session_timeout=SESSION) as opened:
            yield opened

    @pytest.fixture(name="agents")
    def agents(url: str) -> Iterator[Callable[[], RemoteAgent]]:
        with RemoteAgent.all_killed(url, session_timeout=SESSION) as start_agent:
            yield start_agent

    return server, url, space, agents


def server_fixture(engine: str, scheme: str, missing: Callable[[], str | None],
                   start: Callable[[Path], Server], name: str = "server") -> Any:
    """A module's fixture (named name) that starts the engine once for the module:
    skipped, or failed under CI, if it cannot start."""

    @pytest.fixture(scope="module", name=name)
    def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
        absent = missing()
        need(absent is None, f"{engine} cannot be started: {absent}")
        try:
            started = start(tmp_path_factory.mktemp(scheme))
        except (OSError, RuntimeError, AssertionError) as err:
            need(False, f"{engine} did not start: {err}")
        yield started
        started.stop()

    return server


def entries(space: RemoteLockSpace, name: str) -> list[str]:
    """The queue entries (holds and waits, from everywhere) on name; none if name is gone."""
    try:
        return space.queue(name)
    except FileNotFoundError:
        return []


def await_entries(space: RemoteLockSpace, name: str, count: int) -> None:
    """Return once name has count queue entries in the engine."""
    poll_until(lambda: len(entries(space, name)) == count, f"{count} entries on {name!r}", WAIT)


def test_no_server_is_a_connection_error_within_the_connect_timeout(url: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(ConnectionError):
        LockSpace(f"{url.split(':')[0]}://127.0.0.1:{free_port()}/x", connect_timeout=0.5)
    assert time.monotonic() - t0 < 0.5 + PROMPT


def test_busy_at_once_across_processes(space: RemoteLockSpace,
                                       agents: Callable[[], RemoteAgent]) -> None:
    holder, other = agents(), agents()
    lease = holder.ok("acquire", name="disk", owner="vm-1")
    assert lease["state"] == "held" and lease["valid"]
    for shared in (False, True):
        answer = other.call("acquire", name="disk", owner="vm-2", shared=shared)
        assert answer["error"] == "LockBusy" and answer["t1"] - answer["t0"] < PROMPT
        t0 = time.monotonic()
        with pytest.raises(LockBusy):
            space.acquire("disk", "vm-3", shared=shared)
        assert time.monotonic() - t0 < PROMPT
    assert len(entries(space, "disk")) == 1  # a busy answer leaves no entry behind
    holder.ok("release", name="disk", owner="vm-1")
    assert space.acquire("disk", "vm-3").valid


def test_shared_owners_here_and_elsewhere(space: RemoteLockSpace,
                                          agents: Callable[[], RemoteAgent]) -> None:
    other = agents()
    space.acquire("pool", "vm-1", shared=True)
    space.acquire("pool", "vm-2", shared=True)
    other.ok("acquire", name="pool", owner="vm-3", shared=True)
    assert space.held() == [Lease("pool", "shared", ("vm-1", "vm-2"))]
    with pytest.raises(LockBusy):
        space.acquire("pool", "vm-4")
    assert other.error("acquire", name="pool", owner="vm-5") == "LockBusy"
    space.release("pool", "vm-1")
    space.release("pool", "vm-2")
    assert space.held() == []
    with pytest.raises(RuntimeError):
        space.release("pool", "vm-2")
    other.ok("release", name="pool", owner="vm-3")
    assert space.acquire("pool", "vm-4").mode == "exclusive"


def test_a_shared_request_queues_behind_a_waiting_exclusive_one(
        space: RemoteLockSpace, agents: Callable[[], RemoteAgent]) -> None:
    reader = agents()
    reader.ok("acquire", name="db", owner="r1", shared=True)
    writer = Worker(space.acquire, "db", "w", wait=True, timeout=WAIT)
    await_entries(space, "db", 2)
    with pytest.raises(LockBusy):  # no starving the writer: the reader waits its turn
        space.acquire("db", "r2", shared=True)
    late_reader = Worker(space.acquire, "db", "r2", shared=True, wait=True, timeout=WAIT)
    await_entries(space, "db", 3)
    reader.ok("release", name="db", owner="r1")
    written: RemoteLease = writer.outcome(WAIT)
    assert not late_reader.done.is_set()
    space.release("db", "w")
    read: RemoteLease = late_reader.outcome(WAIT)
    assert read.token > written.token


def test_release_owner_releases_everything_and_cancels_its_waits(
        space: RemoteLockSpace, agents: Callable[[], RemoteAgent]) -> None:
    other = agents()
    space.acquire("a", "vm-1")
    space.acquire("b", "vm-1", shared=True)
    space.acquire("b", "vm-2", shared=True)
    other.ok("acquire", name="c", owner="x")
    waiter = Worker(space.acquire, "c", "vm-1", wait=True, timeout=WAIT)
    await_entries(space, "c", 2)
    assert sorted(space.release_owner("vm-1")) == ["a", "b"]
    with pytest.raises(LockCancelled):
        waiter.outcome(WAIT)
    assert len(entries(space, "c")) == 1
    assert space.held() == [Lease("b", "shared", ("vm-2",))]
    assert other.ok("acquire", name="a", owner="y")["valid"]


def test_a_wait_times_out_and_leaves_no_entry(space: RemoteLockSpace,
                                              agents: Callable[[], RemoteAgent]) -> None:
    agents().ok("acquire", name="r", owner="x")
    t0 = time.monotonic()
    with pytest.raises(LockTimeout):
        space.acquire("r", "y", wait=True, timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 0.3 + PROMPT
    assert len(entries(space, "r")) == 1
    with pytest.raises(ValueError):
        space.acquire("r", "y", timeout=1)



def test_a_killed_holder_loses_its_lease_after_the_session_timeout(
        space: RemoteLockSpace, agents: Callable[[], RemoteAgent]) -> None:
    holder, waiter = agents(), agents()
    first = holder.ok("acquire", name="r", owner="h")
    waiter.send("acquire", name="r", owner="w", wait=True, timeout=WAIT)
    await_entries(space, "r", 2)
    killed = time.monotonic()
    holder.proc.kill()
    granted = waiter.reply()
    assert "error" not in granted, granted
    # Closing the TCP connection does not end a session: the lease outlives the
    # holder until ZooKeeper expires the session.
    assert SESSION / 3 <= granted["t1"] - killed <= SESSION + 3
    assert granted["result"]["token"] > first["token"]


def test_a_paused_holder_sees_its_lease_lost_and_its_token_is_fenced(
        space: RemoteLockSpace, agents: Callable[[], RemoteAgent]) -> None:
    holder, waiter = agents(), agents()
    paused = holder.ok("acquire", name="r", owner="h")
    waiter.send("acquire", name="r", owner="w", wait=True, timeout=WAIT)
    await_entries(space, "r", 2)
    os.kill(holder.pid, signal.SIGSTOP)
    granted = waiter.reply()
    os.kill(holder.pid, signal.SIGCONT)
    assert "error" not in granted, granted
    lost = holder.ok("await_state", name="r", owner="h", state="lost", timeout=WAIT)
    assert not lost["valid"]
    assert paused["token"] < granted["result"]["token"]
    # What the token is for: a store that keeps the largest token it accepted
    # refuses the paused holder's late write.
    store = FencedStore()
    store.write(granted["result"]["token"], "new holder")
    assert not store.write(paused["token"], "late write")
    assert store.value == "new holder"
    holder.ok("release", name="r", owner="h")  # a lost lease is only forgotten
    assert len(entries(space, "r")) == 1


class FencedStore:
    """A resource that accepts a write only with a token no smaller than any it accepted."""

    def __init__(self) -> None:
        self.token = -1
        self.value = ""

    def write(self, token: int, value: str) -> bool:
        """Store value if token is current; whether it was stored."""
        if token < self.token:
            return False
        self.token, self.value = token, value
        return True


def test_a_partition_suspends_the_lease_then_loses_it(server: Server, url: str) -> None:
    link = Link(server.port)
    seen: list[State] = []
    changed = threading.Condition()

    def on_change(_lease: RemoteLease, state: State) -> None:
        with changed:
            seen.append(state)
            changed.notify_all()

    def await_state(lease: RemoteLease, state: State) -> None:
        with changed:
            assert changed.wait_for(lambda: lease.state == state, WAIT), (lease, seen)

    scheme, _, _, prefix = url.split("/", 3)
    with LockSpace(f"{scheme}//127.0.0.1:{link.port}/{prefix}",
                   session_timeout=SESSION) as cut_off, \
            LockSpace(url, session_timeout=SESSION) as observer:
        lease = cut_off.acquire("r", "a", listener=on_change)
        link.cut()  # shorter than the session: suspended, then held again
        await_state(lease, "suspended")
        assert not lease.valid
        link.restore()
        await_state(lease, "held")
        assert lease.valid
        link.cut()  # longer than the session: ZooKeeper expires it and grants the next
        await_state(lease, "suspended")
        taken = observer.acquire("r", "b", wait=True, timeout=WAIT)
        link.restore()
        await_state(lease, "lost")
        assert seen == ["suspended", "held", "suspended", "lost"]
        assert taken.token > lease.token
        assert cut_off.held() == []
        cut_off.release("r", "a")
        assert cut_off.acquire("other", "a").valid  # a new session serves new leases


def test_four_processes_200_cycles_on_a_counter(space: RemoteLockSpace, tmp_path: Path,
                                                agents: Callable[[], RemoteAgent]) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0 -1")
    workers = [agents() for _ in range(4)]
    for n, agent in enumerate(workers):
        agent.send("count", name="counter", path=str(counter), cycles=200, owner=f"w{n}")
    tokens = []
    for agent in workers:
        answer = agent.reply(120)
        assert "error" not in answer, answer
        tokens += answer["result"]
    assert counter.read_text().split()[0] == "800"
    assert len(set(tokens)) == 800
    assert entries(space, "counter") == []


def test_names_owners_and_resources(space: RemoteLockSpace) -> None:
    for bad in ("", "a/b", "..", "x\0"):
        with pytest.raises(ValueError):
            space.acquire(bad)
    first = space.acquire("auto")
    with pytest.raises(RuntimeError):
        space.acquire("auto")  # the same owner (this pid) again
    space.release("auto")
    assert first.state == "released" and not first.valid
    with pytest.raises(FileNotFoundError):
        space.acquire("made", autocreate=False)
    space.create("made")
    with pytest.raises(FileExistsError):
        space.create("made")
    space.acquire("made", "vm-1", autocreate=False)
    with pytest.raises(LockBusy):
        space.delete("made")
    space.release("made", "vm-1")
    space.acquire("made", "vm-2", autocreate=False)  # created: it stays
    space.release("made", "vm-2")
    space.delete("made")
    with pytest.raises(FileNotFoundError):
        space.delete("made")
    with pytest.raises(FileNotFoundError):
        space.acquire("made", autocreate=False)


__all__ = [name for name in dir() if name.startswith("test_")]
