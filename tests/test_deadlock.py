"""Deadlocks across processes: a wait that would close a cycle raises LockDeadlock.

The parties are real processes: fresh interpreters running lock_agent.py (each a
LockSpace agent taking file locks and leases on command), a plain-``fcntl``
script that knows nothing of latchwire, and forked workers for the loads. A
process is known to wait in the kernel from /proc/locks (``wait_in_kernel``, an
oracle independent of latchwire's own reading of /proc). Latencies are printed
by ``bench/compare.py deadlock``; here every bound is a generous WAIT.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest
from lwagent import Agent
from lwfcntl import wait_in_kernel
from lwtest import WAIT, child_env, join_all
from witness import Witness, check

from latchwire import (
    FileLock,
    LockBusy,
    LockDeadlock,
    LockOrderError,
    LockTimeout,
    _core,
    waitgraph,
)
from latchwire.waitgraph import EOF, Hold, Wait

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    made: list[Agent] = []
    yield made
    for agent in made:
        agent.kill()


def spawn(agents: list[Agent], n: int, directory: Path) -> list[Agent]:
    for _ in range(n):
        agents.append(Agent(directory, space=True))
    return agents


def files(tmp_path: Path, n: int) -> list[str]:
    paths = [str(tmp_path / f"f{i}") for i in range(n)]
    for path in paths:
        Path(path).touch()
    return paths


def close_cycle(agents: list[Agent], paths: list[str], *, wait_each: bool,
                op: str = "lockfile", **args: object) -> list[dict[str, object]]:
    """Agent i holds paths[i] and then waits for paths[i+1] (the last for paths[0]);
    with wait_each, each is seen waiting in the kernel before the next is sent.
    The answers, in agent order; each agent lets go of all it holds once answered."""
    n = len(agents)
    for agent, path in zip(agents, paths, strict=True):
        assert agent.ok(op, **_hold_args(op, path, args)) in (True, None)
    for i, agent in enumerate(agents):
        agent.send(op, **_wait_args(op, paths[(i + 1) % n], args))
        if wait_each and i < n - 1:
            wait_in_kernel(paths[(i + 1) % n], 1, watch=[agent])
    answers: list[dict[str, object] | None] = [None] * n
    pending = set(range(n))
    deadline = time.monotonic() + WAIT
    while pending:
        assert time.monotonic() < deadline, f"agents {sorted(pending)} still waiting: {answers}"
        for i in sorted(pending):
            ready = multiprocessing.connection.wait([agents[i]], 0.01)
            if not ready:
                continue
            answer = agents[i].reply()
            answers[i] = answer
            pending.discard(i)
            # Let go of what it holds, so that the waits behind it end.
            held = [paths[i]] if "error" in answer else [paths[i], paths[(i + 1) % n]]
            for path in held:
                agents[i].ok("unlockfile" if op == "lockfile" else "release",
                             **_release_args(op, path))
    return [a for a in answers if a is not None]


def _hold_args(op: str, path: str, args: dict[str, object]) -> dict[str, object]:
    name = path if op == "lockfile" else os.path.basename(path)
    key = "path" if op == "lockfile" else "name"
    return {key: name, "shared": bool(args.get("hold_shared", False))}


def _wait_args(op: str, path: str, args: dict[str, object]) -> dict[str, object]:
    name = path if op == "lockfile" else os.path.basename(path)
    key = "path" if op == "lockfile" else "name"
    return {key: name, "shared": bool(args.get("wait_shared", False)), "wait": True,
            "timeout": WAIT}


def _release_args(op: str, path: str) -> dict[str, object]:
    return {"path": path} if op == "lockfile" else {"name": os.path.basename(path)}


def check_answers(answers: list[dict[str, object]], agents: list[Agent],
                  paths: list[str]) -> None:
    """At least one LockDeadlock, naming every process and file of the cycle; every
    other wait ended with the lock."""
    raised = [i for i, a in enumerate(answers) if a.get("error") == "LockDeadlock"]
    assert raised, f"nobody raised LockDeadlock: {answers}"
    for i, answer in enumerate(answers):
        if i in raised:
            assert answer["errno"] == errno.EDEADLK
            message = str(answer["message"])
            for agent, path in zip(agents, paths, strict=True):
                assert path in message, (path, message)
                if agent is not agents[i]:
                    assert f"pid {agent.pid} " in message, (agent.pid, message)
        else:
            assert answer.get("error") is None and answer["result"] in (True, None), answer


@pytest.mark.parametrize("n", [2, 3, 4])
def test_closing_a_cycle_raises_in_the_closer(tmp_path: Path, agents: list[Agent],
                                              n: int) -> None:
    """Each joins the cycle after the previous is seen waiting. The last one finds the
    cycle as its wait begins, unless a re-check of an earlier one finds it first
    (the closer's wait is on its board before it checks): either way one raises,
    and every other wait then ends with its lock."""
    paths = files(tmp_path, n)
    spawn(agents, n, tmp_path)
    answers = close_cycle(agents, paths, wait_each=True)
    check_answers(answers, agents, paths)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_a_cycle_closed_at_once_raises(tmp_path: Path, agents: list[Agent], n: int) -> None:
    """Every wait of the cycle sent at the same moment: the checks before waiting may
    all miss it, and the re-checks while waiting find it. Five rounds, fresh files."""
    spawn(agents, n, tmp_path)
    for round_ in range(5):
        directory = tmp_path / f"round{round_}"
        directory.mkdir()
        paths = files(directory, n)
        answers = close_cycle(agents, paths, wait_each=False)
        check_answers(answers, agents, paths)


@pytest.mark.parametrize("n", [2, 3])
def test_lease_cycles_raise(tmp_path: Path, agents: list[Agent], n: int) -> None:
    """Lockspace leases wait in the kernel too, and their cycles are found alike."""
    space = tmp_path / "space"
    space.mkdir()
    paths = files(space, n)
    spawn(agents, n, space)
    answers = close_cycle(agents, paths, wait_each=True, op="acquire")
    check_answers(answers, agents, paths)


def test_shared_holds_waited_on_exclusively_are_a_cycle(tmp_path: Path,
                                                        agents: list[Agent]) -> None:
    paths = files(tmp_path, 2)
    spawn(agents, 2, tmp_path)
    answers = close_cycle(agents, paths, wait_each=True, hold_shared=True)
    check_answers(answers, agents, paths)


def test_shared_waits_on_shared_holds_are_no_cycle(tmp_path: Path, agents: list[Agent]) -> None:
    """Shared requests of files held shared are granted: nothing waits, nothing raises."""
    paths = files(tmp_path, 2)
    spawn(agents, 2, tmp_path)
    for agent, path in zip(agents, paths, strict=True):
        assert agent.ok("lockfile", path=path, shared=True)
    for i, agent in enumerate(agents):
        assert agent.ok("lockfile", path=paths[1 - i], shared=True, wait=True, timeout=WAIT)


def test_two_upgrades_of_one_file_are_a_cycle(tmp_path: Path, agents: list[Agent]) -> None:
    """Both hold the file shared and both upgrade: each waits for the other's shared
    hold. One raises (or both, if each check saw the other's wait) and keeps its
    shared hold, which it then lets go of; the other gets its exclusive lock."""
    (path,) = files(tmp_path, 1)
    spawn(agents, 2, tmp_path)
    for agent in agents:
        assert agent.ok("lockfile", path=path, shared=True)
    agents[0].send("upgradefile", path=path, timeout=WAIT)
    wait_in_kernel(path, 1, watch=[agents[0]])
    agents[1].send("upgradefile", path=path, timeout=WAIT)
    answers: dict[int, dict[str, object]] = {}
    while len(answers) < 2:
        ready = multiprocessing.connection.wait(
            [a for i, a in enumerate(agents) if i not in answers], WAIT)
        assert ready, f"no answer to the upgrades: {answers}"
        for agent in ready:
            i = agents.index(agent)  # type: ignore[arg-type]
            answers[i] = agents[i].reply()
            if answers[i].get("error") == "LockDeadlock":
                assert answers[i]["errno"] == errno.EDEADLK
                assert f"pid {agents[1 - i].pid} " in str(answers[i]["message"])
                agents[i].ok("unlockfile", path=path)  # its shared hold was kept: let go
    raised = [i for i, a in answers.items() if a.get("error") == "LockDeadlock"]
    assert raised, answers
    assert all("error" not in answers[i] for i in answers if i not in raised), answers


_LOCKF = r"""
import fcntl, os, sys
first, second = (os.open(p, os.O_RDWR) for p in sys.argv[1:3])
fcntl.lockf(first, fcntl.LOCK_EX)
print("holding", flush=True)
sys.stdin.readline()
fcntl.lockf(second, fcntl.LOCK_EX)  # blocks: classic POSIX, F_SETLKW
print("got", flush=True)
sys.stdin.readline()
"""


def test_a_cycle_through_a_process_without_latchwire(tmp_path: Path,
                                                     agents: list[Agent]) -> None:
    """A plain fcntl.lockf process (classic POSIX locks, which conflict with OFD ones)
    on the cycle: the kernel checks neither side, latchwire finds it."""
    x, y = files(tmp_path, 2)
    (agent,) = spawn(agents, 1, tmp_path)
    assert agent.ok("lockfile", path=x)
    other = subprocess.Popen([sys.executable, "-c", _LOCKF, y, x], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline() == "holding\n"
        other.stdin.write("go\n")
        other.stdin.flush()
        wait_in_kernel(x, 1)
        answer = agent.call("lockfile", path=y, wait=True, timeout=WAIT)
        assert answer.get("error") == "LockDeadlock", answer
        assert f"pid {other.pid} " in str(answer["message"]) and "posix" in str(answer["message"])
        agent.ok("unlockfile", path=x)
        assert other.stdout.readline() == "got\n"
    finally:
        other.kill()
        other.wait(WAIT)


def test_lockdeadlock_is_a_lock_order_error_with_edeadlk() -> None:
    err = LockDeadlock("deadlock: ...", "/x", ())
    assert isinstance(err, LockOrderError) and isinstance(err, OSError)
    assert err.errno == errno.EDEADLK and err.filename == "/x" and err.cycle == ()


def test_turned_off_a_cycle_is_slept_in(tmp_path: Path, agents: list[Agent]) -> None:
    """LATCHWIRE_DEADLOCK=0 (or _core._check_deadlocks(False)): waits until the timeout,
    as the kernel leaves OFD waits."""
    x, y = files(tmp_path, 2)
    (agent,) = spawn(agents, 1, tmp_path)
    assert agent.ok("lockfile", path=y)
    lock = FileLock(x, lockfile=x)
    lock.acquire(timeout=WAIT)
    agent.send("lockfile", path=x, wait=True, timeout=WAIT)
    try:
        wait_in_kernel(x, 1, watch=[agent])
        _core._check_deadlocks(False)
        try:
            with pytest.raises(LockTimeout):
                FileLock(y, lockfile=y).acquire(timeout=0.2)
        finally:
            _core._check_deadlocks(True)
        # On again: this wait raises, or the agent's re-check finds the cycle first
        # (this wait is on the board before it is checked) and the agent's raises.
        try:
            FileLock(y, lockfile=y).acquire(timeout=2.0)
        except LockDeadlock:
            raised_here = True
        except LockTimeout:
            raised_here = False
    finally:
        lock.release()
    answer = agent.reply()
    assert raised_here or answer.get("error") == "LockDeadlock", (raised_here, answer)


def test_uncontended_locks_never_load_the_check(tmp_path: Path) -> None:
    """The check runs only when a wait in the kernel begins: a process that never
    waits never imports it."""
    script = ("import sys\nfrom latchwire import FileLock\n"
              f"lock = FileLock({str(tmp_path / 'f')!r})\n"
              "for _ in range(1000):\n    lock.acquire(); lock.release()\n"
              "assert 'latchwire.waitgraph' not in sys.modules, 'loaded'\n")
    subprocess.run([sys.executable, "-c", script], check=True, env=child_env(), timeout=WAIT)


def test_a_thread_holding_nothing_closes_no_cycle(tmp_path: Path, agents: list[Agent]) -> None:
    """Another thread of this process holds what the agent waits for; the thread that
    waits holds nothing, so its wait is no cycle (the other thread may let go)."""
    x, y = files(tmp_path, 2)
    (agent,) = spawn(agents, 1, tmp_path)
    assert agent.ok("lockfile", path=y)
    held = FileLock(x, lockfile=x)

    taken = threading.Event()
    done = threading.Event()

    def holder() -> None:
        held.acquire()
        taken.set()
        done.wait(WAIT)
        held.release()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert taken.wait(WAIT)
        agent.send("lockfile", path=x, wait=True, timeout=WAIT)
        wait_in_kernel(x, 1, watch=[agent])
        with pytest.raises(LockTimeout):
            FileLock(y, lockfile=y).acquire(timeout=0.3)
    finally:
        done.set()
        thread.join(WAIT)
    assert "error" not in agent.reply()


# ---- the graph, on given /proc text -----------------------------------------


def test_lock_lines_parse() -> None:
    text = ("pos:\t0\nflags:\t02100002\nlock:\t1: OFDLCK  ADVISORY  WRITE -1 fe:01:42 0 EOF\n"
            "lock:\t2: POSIX  ADVISORY  READ 77 fe:01:43 5 9\n"
            "lock:\t3: FLOCK  ADVISORY  WRITE 77 fe:01:44 0 EOF\n"
            "lock:\t4: -> OFDLCK ADVISORY WRITE -1 fe:01:42 0 EOF\n"
            "lock:\t5: LEASE  ACTIVE    READ 77 fe:01:45 0 EOF\n")
    assert list(waitgraph.parse_lock_lines(9, text)) == [
        Hold(9, "fe:01:42", "ofd", True, 0, EOF), Hold(9, "fe:01:43", "posix", False, 5, 9),
        Hold(9, "fe:01:44", "flock", True, 0, EOF)]


def test_byte_ranges() -> None:
    assert waitgraph._byte_range(os.SEEK_SET, 0, 0) == (0, EOF)
    assert waitgraph._byte_range(os.SEEK_SET, 10, 5) == (10, 14)
    assert waitgraph._byte_range(os.SEEK_SET, 10, -4) == (6, 9)
    assert waitgraph._byte_range(os.SEEK_CUR, 10, 5) == (0, EOF)


def _wait(pid: int, key: str, *, exclusive: bool = True, kind: str = "ofd", start: int = 0,
          end: int = EOF) -> Wait:
    return Wait(pid, pid * 10 + 1, 3, key, kind, exclusive, start, end, f"/f/{key}")


def test_conflicts() -> None:
    hold = Hold(2, "k", "ofd", False, 0, EOF)
    assert waitgraph.conflicts(_wait(1, "k"), hold)
    assert not waitgraph.conflicts(_wait(1, "k", exclusive=False), hold)
    assert not waitgraph.conflicts(_wait(2, "k"), hold)  # its own
    assert not waitgraph.conflicts(_wait(1, "j"), hold)
    assert not waitgraph.conflicts(_wait(1, "k", kind="flock"), hold)
    assert waitgraph.conflicts(_wait(1, "k", kind="posix"), hold)
    ranged = Hold(2, "k", "ofd", True, 10, 19)
    assert not waitgraph.conflicts(_wait(1, "k", start=0, end=9), ranged)
    assert waitgraph.conflicts(_wait(1, "k", start=19, end=19), ranged)
    assert waitgraph.conflicts(_wait(1, "k", start=15, end=EOF), ranged)
    assert not waitgraph.conflicts(_wait(1, "k", start=20, end=EOF), ranged)


def _waiter(wait: Wait, *held: Hold) -> waitgraph.Waiter:
    return waitgraph.Waiter(wait, list(held), ("test",))


def test_find_cycle() -> None:
    me = _waiter(Wait(1, 0, -1, "a", "ofd", True, 0, EOF, "/a"), Hold(1, "z", "ofd", True, 0, EOF))
    two = Hold(2, "a", "ofd", True, 0, EOF)
    three = Hold(3, "b", "ofd", True, 0, EOF)
    # 2 waits for b (3's), 3 for z (mine): a cycle of three.
    cycle = waitgraph.find_cycle(me, [_waiter(_wait(2, "b"), two), _waiter(_wait(3, "z"), three)])
    assert cycle is not None
    assert [(w.pid, h.pid) for w, h in cycle] == [(1, 2), (2, 3), (3, 1)]
    # 3 waits for c instead, which nobody waiting holds: no cycle.
    assert waitgraph.find_cycle(me, [_waiter(_wait(2, "b"), two),
                                     _waiter(_wait(3, "c"), three)]) is None
    # A shared wait on my exclusive hold closes it too; on a shared one of mine it does not.
    shared_wait = _wait(3, "z", exclusive=False)
    assert waitgraph.find_cycle(me, [_waiter(_wait(2, "b"), two),
                                     _waiter(shared_wait, three)]) is not None
    shared_me = _waiter(me.wait, Hold(1, "z", "ofd", False, 0, EOF))
    assert waitgraph.find_cycle(shared_me, [_waiter(_wait(2, "b"), two),
                                            _waiter(shared_wait, three)]) is None


def test_find_cycle_tells_threads_apart() -> None:
    """Process 2's thread 21 holds a but does not wait; its thread 22 waits for b
    (3's) holding nothing; 3 waits for z (mine): no cycle through 2, which can go on."""
    me = _waiter(Wait(1, 0, -1, "a", "ofd", True, 0, EOF, "/a"), Hold(1, "z", "ofd", True, 0, EOF))
    waiting = _waiter(Wait(2, 22, -1, "b", "ofd", True, 0, EOF, "/b"))
    three = _waiter(_wait(3, "z"), Hold(3, "b", "ofd", True, 0, EOF))
    assert waitgraph.find_cycle(me, [waiting, three]) is None
    # Had the waiting thread held a, it would be one.
    holding = _waiter(waiting.wait, Hold(2, "a", "ofd", True, 0, EOF))
    assert waitgraph.find_cycle(me, [holding, three]) is not None


# ---- loads --------------------------------------------------------------------


def _ordered_worker(paths: list[str], seed: int, total: Synchronized[int], wanted: int,
                    out: Connection) -> None:
    """Random subsets taken in one global order (no cycle is possible), each
    request first tried without waiting, until the workers have waited wanted
    times in all while holding a lock; counts those waits and any LockDeadlock."""
    rng = random.Random(seed)
    locks = {p: FileLock(p, lockfile=p) for p in paths}
    waits = deadlocks = 0
    deadline = time.monotonic() + 60
    while total.value < wanted and time.monotonic() < deadline:
        chosen = sorted(rng.sample(paths, rng.randint(1, 3)))
        taken = []
        try:
            for path in chosen:
                shared = rng.random() < 0.3
                try:
                    locks[path].acquire(blocking=False, shared=shared)
                except LockBusy:
                    if taken:  # a wait while holding: one the check looks at
                        waits += 1
                        with total.get_lock():
                            total.value += 1
                    locks[path].acquire(timeout=WAIT, shared=shared)
                taken.append(path)
            time.sleep(rng.random() * 0.001)
        except LockDeadlock:
            deadlocks += 1
        finally:
            for path in reversed(taken):
                locks[path].release()
    out.send((waits, deadlocks))
    out.close()


def test_a_thousand_waits_without_a_cycle_raise_nothing(tmp_path: Path) -> None:
    """Four processes, each holding what it took before while it waits for the next
    (so every wait after the first is checked), in one global order: no LockDeadlock."""
    paths = files(tmp_path, 5)
    total = FORK.Value("i", 0)
    pipes = [FORK.Pipe(duplex=False) for _ in range(4)]
    workers = [FORK.Process(target=_ordered_worker, args=(paths, seed, total, 1000, w))
               for seed, (_, w) in enumerate(pipes)]
    for worker in workers:
        worker.start()
    results = [r.recv() if r.poll(90) else (0, -1) for r, _ in pipes]
    join_all(workers, WAIT)
    assert sum(w for w, _ in results) >= 1000, results
    assert [d for _, d in results] == [0] * len(workers), results


def _random_order_worker(paths: list[str], seed: int, rounds: int, out: Connection) -> None:
    """Random subsets in random orders: cycles happen; each LockDeadlock lets go of
    everything and tries again. Counts rounds done, deadlocks and timeouts."""
    rng = random.Random(seed)
    locks = {p: FileLock(p, lockfile=p) for p in paths}
    done = deadlocks = timeouts = 0
    while done < rounds:
        chosen = rng.sample(paths, rng.randint(2, 3))
        taken = []
        try:
            for path in chosen:
                locks[path].acquire(timeout=5.0, shared=rng.random() < 0.2)
                taken.append(path)
            time.sleep(rng.random() * 0.002)
            done += 1
        except LockDeadlock:
            deadlocks += 1
        except LockTimeout:
            timeouts += 1
        finally:
            for path in reversed(taken):
                locks[path].release()
        if taken != chosen:
            time.sleep(rng.random() * 0.005)
    out.send((done, deadlocks, timeouts))
    out.close()


def test_random_orders_across_six_processes_never_hang(tmp_path: Path) -> None:
    """Six processes take random subsets of four files in random orders: every cycle
    is broken by a LockDeadlock, so no wait reaches its 5 s timeout and all finish."""
    paths = files(tmp_path, 4)
    pipes = [FORK.Pipe(duplex=False) for _ in range(6)]
    workers = [FORK.Process(target=_random_order_worker, args=(paths, 100 + seed, 150, w))
               for seed, (_, w) in enumerate(pipes)]
    start = time.monotonic()
    for worker in workers:
        worker.start()
    results = [r.recv() if r.poll(100) else None for r, _ in pipes]
    join_all(workers, WAIT)
    assert None not in results, results
    assert all(done == 150 for done, _, _ in results), results  # type: ignore[misc]
    assert sum(t for _, _, t in results) == 0, results  # type: ignore[misc]
    assert sum(d for _, d, _ in results) > 0, results  # type: ignore[misc]
    assert time.monotonic() - start < 100


# ---- boards of processes gone, the switch, and a kill storm ------------------


def _board_of(pid: int) -> Path:
    directory, prefix = _core._board_location()
    return Path(directory) / f"{prefix}{pid}"


def _hold_and_wait(x: str, y: str, out: Connection) -> None:
    """In a forked child: hold x, say so, wait for y (until killed)."""
    FileLock(x, lockfile=x).acquire(timeout=WAIT)
    out.send("holding")
    FileLock(y, lockfile=y).acquire(timeout=WAIT)


def test_a_killed_waiters_board_is_not_read_even_unreaped(tmp_path: Path) -> None:
    """A waiter killed with SIGKILL leaves its board claiming a wait and a hold. Dead
    but not reaped yet (a zombie) or reaped, its board is not read (the kernel has
    dropped its locks), and it is removed."""
    x, y = files(tmp_path, 2)
    mine = FileLock(y, lockfile=y)
    mine.acquire(timeout=WAIT)
    try:
        reader, writer = FORK.Pipe(duplex=False)
        child = FORK.Process(target=_hold_and_wait, args=(x, y, writer))
        child.start()
        assert reader.poll(WAIT) and reader.recv() == "holding"
        wait_in_kernel(y, 1, watch=[child.sentinel])
        assert child.pid is not None
        assert child.pid in waitgraph.board_waiters()  # its wait is on its board
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + WAIT
        while waitgraph._running(child.pid) is not None:  # dead, but not reaped: a zombie
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert child.pid not in waitgraph.board_waiters()
        assert not _board_of(child.pid).exists()
        child.join(WAIT)
    finally:
        mine.release()


_SWITCHED_OFF = r"""
import sys
from latchwire import FileLock, LockTimeout
x, y = sys.argv[1:3]
FileLock(x, lockfile=x).acquire()
print("holding", flush=True)
try:
    FileLock(y, lockfile=y).acquire(timeout=float(sys.argv[3]))
except LockTimeout:
    print("timed out", flush=True)
"""


def test_latchwire_deadlock_0_writes_no_board(tmp_path: Path) -> None:
    """Under LATCHWIRE_DEADLOCK=0 a process waiting while it holds a lock writes no
    board (the switch turns off the board and the check together); its wait
    ends at its timeout as any other."""
    x, y = files(tmp_path, 2)
    mine = FileLock(y, lockfile=y)
    mine.acquire(timeout=WAIT)
    env = {**child_env(), "LATCHWIRE_DEADLOCK": "0"}
    child = subprocess.Popen([sys.executable, "-c", _SWITCHED_OFF, x, y, "1.0"], text=True,
                             stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None and child.stdout.readline() == "holding\n"
        wait_in_kernel(y, 1)
        assert not _board_of(child.pid).exists()
        assert child.stdout.readline() == "timed out\n"
    finally:
        mine.release()
        child.kill()
        child.wait(WAIT)


def _storm_worker(paths: list[str], seed: int, tag: str, directory: str, stop: Event,
                  out: Connection) -> None:
    """Random subsets of paths in random orders, each hold a witnessed section, until
    stop; LockDeadlock lets go of everything and tries again. Sends (rounds done,
    deadlocks, timeouts) unless killed first."""
    rng = random.Random(seed)
    witness = Witness(directory, tag)
    writer = witness.writer()
    locks = {p: FileLock(p, lockfile=p) for p in paths}
    done = deadlocks = timeouts = 0
    while not stop.is_set():
        chosen = rng.sample(paths, rng.randint(2, 3))
        with ExitStack() as held:
            try:
                for path in chosen:
                    shared = rng.random() < 0.2
                    locks[path].acquire(timeout=5.0, shared=shared)
                    held.callback(locks[path].release)
                    held.enter_context(writer.section(os.path.basename(path), locks[path],
                                                      shared))
                time.sleep(rng.random() * 0.002)
                done += 1
            except LockDeadlock:
                deadlocks += 1
            except LockTimeout:
                timeouts += 1
    out.send((done, deadlocks, timeouts))
    out.close()


def test_a_kill_storm_in_random_orders_leaves_no_overlap_and_no_stuck_waiter(
        tmp_path: Path) -> None:
    """Six processes in random orders over four files, one killed with SIGKILL (holding,
    waiting or raising) and replaced every 30-100 ms for three seconds: the witness log
    shows no two holders of a file at once, the survivors never time out (every cycle,
    with or without a dead member, is broken), and no board of the dead is left read."""
    (tmp_path / "files").mkdir()
    paths = files(tmp_path / "files", 4)
    directory = tmp_path / "witness"
    witness = Witness(directory)
    stop = FORK.Event()
    serial = iter(range(10_000))
    live: dict[str, tuple[multiprocessing.process.BaseProcess, Connection]] = {}

    def spawn_one() -> None:
        n = next(serial)
        reader, writer = FORK.Pipe(duplex=False)
        proc = FORK.Process(target=_storm_worker,
                            args=(paths, 1000 + n, f"w{n}", str(directory), stop, writer))
        proc.start()
        writer.close()
        live[f"w{n}"] = (proc, reader)

    for _ in range(6):
        spawn_one()
    rng = random.Random(7)
    kills = 0
    dead: list[int] = []
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        time.sleep(rng.uniform(0.03, 0.1))
        tag = rng.choice(sorted(live))
        proc, reader = live.pop(tag)
        witness.killing(tag)
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(WAIT)
        witness.reaped(tag)
        reader.close()
        dead.append(proc.pid)
        kills += 1
        spawn_one()
    stop.set()
    results = [reader.recv() if reader.poll(WAIT) else None for _, reader in live.values()]
    join_all([proc for proc, _ in live.values()], WAIT)
    witness.close()
    report = check(directory)
    assert report.clean, report.summary()
    assert None not in results, results
    assert sum(t for _, _, t in results) == 0, results  # type: ignore[misc]
    assert kills >= 20
    assert sum(r for r, _, _ in results) > 0, results  # type: ignore[misc]
    waitgraph.board_waiters()  # reading the boards removes those of the dead
    assert not [pid for pid in dead if _board_of(pid).exists()]
