"""LockSpace against the real kernel, with real processes.

The other parties are real processes: fresh interpreters running a LockSpace on
commands read from a pipe (``Agent``, below), children forked with
multiprocessing's "fork" context where a test needs many workers or a loop of
its own, and a fresh interpreter started with ``pass_fds`` for the hand-over.
Processes and threads meet through pipes and events, never through sleeps;
where a test must know that a waiter is blocked it looks in the kernel (a
``->`` line in /proc/locks for a kernel wait, the thread sitting in
``futex(FUTEX_WAIT)`` for a wait on the in-process record). Every wait is
bounded by WAIT, so a bug fails a test instead of hanging it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import random
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pytest
from lwagent import Agent
from lwfcntl import wait_in_kernel
from lwtest import WAIT, child_env, join_all, need, run_cli
from lwthreads import Worker, wait_in_futex

import latchwire
from latchwire import (
    FileLock,
    Lease,
    LockBusy,
    LockCancelled,
    LockSpace,
    LockTimeout,
    resource_name,
)

# Lockspaces made here use OFD locks even if the run has LATCHWIRE_LOCKS=posix:
# export() and adopt() need them.
pytestmark = pytest.mark.usefixtures("ofd_in_this_process")

PROMPT = 0.5  # "at once": a busy answer, or a grant after the holder went away
TIMEOUT_SLACK = 0.050  # a timed-out acquire returns within 50 ms after its timeout
CTX = multiprocessing.get_context("fork")

# ---------------------------------------------------------------------------
# Helpers


def receive(conn: Connection, what: str, timeout: float = WAIT) -> Any:
    """conn's next message, within timeout."""
    assert conn.poll(timeout), f"no {what} within {timeout} s"
    return conn.recv()


def read_line(stream: Any, what: str) -> str:
    """One line from a child's unbuffered stdout, within WAIT."""
    line = b""
    deadline = time.monotonic() + WAIT
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0 and select.select([stream], [], [], left)[0], f"no {what} in {WAIT} s"
        byte = os.read(stream.fileno(), 1)
        assert byte, f"the child exited before {what}"
        line += byte
    return line.decode()


def read_byte(stream: Any) -> bytes:
    """One byte from a child's unbuffered stdout, within WAIT (b"" if it exited)."""
    assert select.select([stream], [], [], WAIT)[0], f"the child said nothing in {WAIT} s"
    return os.read(stream.fileno(), 1)


def leases(space: LockSpace) -> list[tuple[str, str, list[Any]]]:
    """held() as sorted plain lists, owners sorted (comparable with JSON)."""
    return sorted((lease.name, lease.mode, sorted(lease.owners, key=repr))
                  for lease in space.held())


# ---------------------------------------------------------------------------
# 1. Two processes, one name


def test_second_process_busy_at_once_then_gets_lease_after_kill_9(
        tmp_path: Path, agents: Callable[..., Agent]) -> None:
    """The second process is told "busy" at once; once the first is killed with
    SIGKILL, its waiting acquire is granted promptly (the kernel dropped the lock)."""
    directory = tmp_path / "locks"
    first, second = agents(directory, space=True), agents(directory, space=True)
    assert first.ok("acquire", name="disk") is None
    asked = time.monotonic()
    answer = second.call("acquire", name="disk")
    answered = time.monotonic()
    assert answer.get("error") == "LockBusy", answer
    assert answer["t1"] - answer["t0"] < PROMPT, "busy was not answered at once"
    assert answered - asked < PROMPT

    second.send("acquire", name="disk", wait=True, timeout=WAIT)
    wait_in_kernel(directory / "disk", watch=[second])
    killed = time.monotonic()
    first.proc.kill()
    answer = second.reply()
    assert "error" not in answer, answer
    latency = answer["t1"] - killed
    print(f"\ngranted {latency * 1e3:.1f} ms after kill -9 of the holder")
    assert latency < PROMPT, f"granted {latency:.3f} s after the holder was killed"
    assert first.proc.wait(WAIT) == -9
    assert second.ok("held") == [["disk", "exclusive", [second.pid]]]
    assert second.ok("release", name="disk") is None
    assert os.listdir(directory) == []


# ---------------------------------------------------------------------------
# 2. Busy in this process: no descriptor


def descriptors_of(path: str) -> list[str]:
    """This process's descriptors open on path (other descriptors may come and go)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                found.append(fd)
        except OSError:  # closed meanwhile (listdir's own descriptor, for one)
            continue
    return sorted(found)


def test_busy_in_process_answers_at_once_without_opening_a_descriptor(
        tmp_path: Path, agents: Callable[..., Agent]) -> None:
    space = LockSpace(tmp_path / "locks")
    space.acquire("disk", owner="A")
    try:
        resource = str(tmp_path / "locks" / "disk")
        before = descriptors_of(resource)
        began = time.monotonic()
        with pytest.raises(LockBusy):
            space.acquire("disk", owner="B")
        with pytest.raises(LockBusy):
            space.acquire("disk", owner="B", shared=True)
        with pytest.raises(LockBusy):
            space.acquire("disk", owner="B", autocreate=False)
        elapsed = time.monotonic() - began
        assert descriptors_of(resource) == before and len(before) == 1, before
        assert elapsed < PROMPT
        assert space.held() == [Lease("disk", "exclusive", ("A",))]
        # A's lock is intact: another process is refused too.
        other = agents(tmp_path / "locks", space=True)
        assert other.error("acquire", name="disk") == "LockBusy"
        assert other.error("acquire", name="disk", shared=True) == "LockBusy"
    finally:
        space.release_owner("A")
    assert space.held() == []


# ---------------------------------------------------------------------------
# 3. Shared owners across threads and processes; release_owner


def test_shared_owners_in_threads_and_processes_and_release_owner(
        tmp_path: Path, agents: Callable[..., Agent]) -> None:
    directory = tmp_path / "locks"
    space = LockSpace(directory)
    plan = {"x": [("disk", True), ("x-only", False)],
            "y": [("disk", True), ("y-only", False)],
            "z": [("disk", True)]}
    barrier = threading.Barrier(len(plan))

    def take(owner: str) -> None:
        barrier.wait(WAIT)
        for name, shared in plan[owner]:
            space.acquire(name, owner=owner, shared=shared)

    workers = [Worker(take, owner) for owner in plan]
    for worker in workers:
        assert worker.join(WAIT).error is None, worker.error
    sharer, rival = agents(directory, space=True), agents(directory, space=True)
    assert sharer.ok("acquire", name="disk", shared=True) is None
    assert leases(space) == [("disk", "shared", ["x", "y", "z"]),
                             ("x-only", "exclusive", ["x"]),
                             ("y-only", "exclusive", ["y"])]
    assert rival.error("acquire", name="disk") == "LockBusy"
    assert rival.error("acquire", name="x-only") == "LockBusy"
    assert rival.error("acquire", name="x-only", shared=True) == "LockBusy"

    assert sorted(space.release_owner("x")) == ["disk", "x-only"]
    assert leases(space) == [("disk", "shared", ["y", "z"]), ("y-only", "exclusive", ["y"])]
    assert rival.ok("acquire", name="x-only") is None  # x's exclusive lease is free
    assert rival.ok("release", name="x-only") is None
    assert rival.error("acquire", name="disk") == "LockBusy"  # y and z still share it
    assert rival.error("acquire", name="y-only") == "LockBusy"

    for name, owner in [("disk", "x"), ("x-only", "x"), ("y-only", "z"), ("nothing", "y")]:
        with pytest.raises(RuntimeError):
            space.release(name, owner=owner)
    assert leases(space) == [("disk", "shared", ["y", "z"]), ("y-only", "exclusive", ["y"])]
    assert space.release_owner("x") == []
    assert sorted(space.release_owner("y")) == ["disk", "y-only"]
    assert space.release_owner("z") == ["disk"]
    assert space.held() == []
    assert rival.ok("acquire", name="y-only") is None


# ---------------------------------------------------------------------------
# 4. Mutual exclusion under load, and no file left behind

CYCLES = 2000
NAMES = [f"res-{i}" for i in range(8)]
LOAD_BOUND = 60.0  # the bound on the whole run (it takes 1-8 s on 2 CPUs, more after heavy I/O)


def _cycle(directory: str, witnesses: str, seed: int, start: Event, conn: Connection) -> None:
    """Worker: CYCLES leases of pseudo-random names, each with a witness file made
    exclusively while held. Sends ("collisions", n), or ("raised", what) on an error."""
    try:
        space = LockSpace(directory)
        rng = random.Random(seed)
        collisions = 0
        if not start.wait(WAIT):
            raise TimeoutError("no start signal")
        for _ in range(CYCLES):
            name = rng.choice(NAMES)
            space.acquire(name, wait=True, timeout=LOAD_BOUND)
            try:
                witness = os.path.join(witnesses, f"{name}.witness")
                try:
                    fd = os.open(witness, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    collisions += 1
                else:
                    os.write(fd, str(os.getpid()).encode())
                    os.close(fd)
                    os.unlink(witness)
            finally:
                space.release(name)
    except BaseException as exc:
        conn.send(("raised", f"{type(exc).__name__}: {exc}"))
    else:
        conn.send(("collisions", collisions))
    conn.close()


def test_four_processes_never_collide_and_leave_no_file(tmp_path: Path) -> None:
    """4 processes x 2,000 waiting acquisitions over 8 auto-created names: never two
    holders of one name (witness files), and every resource file is gone at the end."""
    directory, witnesses = tmp_path / "locks", tmp_path / "witnesses"
    witnesses.mkdir()
    start = CTX.Event()
    pipes = [CTX.Pipe(duplex=False) for _ in range(4)]
    workers = [CTX.Process(target=_cycle, args=(str(directory), str(witnesses), 1000 + i, start,
                                                send))
               for i, (_, send) in enumerate(pipes)]
    for worker in workers:
        worker.start()
    for _, send in pipes:
        send.close()
    began = time.monotonic()
    start.set()
    reports = [receive(recv, f"worker {i}'s report", LOAD_BOUND + WAIT - (time.monotonic() - began))
               for i, (recv, _) in enumerate(pipes)]
    elapsed = time.monotonic() - began
    join_all(workers, timeout=WAIT)
    print(f"\n4 x {CYCLES} cycles in {elapsed:.1f} s")
    assert reports == [("collisions", 0)] * 4
    assert os.listdir(witnesses) == []
    assert os.listdir(directory) == [], "resource files left behind"
    assert elapsed < LOAD_BOUND


# ---------------------------------------------------------------------------
# 5. export / adopt

_SUCCESSOR = r"""
import json, sys
from latchwire import LockSpace

space = LockSpace.adopt(json.loads(sys.argv[1]), [int(fd) for fd in sys.argv[2].split(",")])
print(json.dumps(space.held()), flush=True)
assert sys.stdin.readline() == "release\n"
for lease in space.held():
    for owner in lease.owners:
        space.release(lease.name, owner=owner)
print(json.dumps(space.held()), flush=True)
sys.stdin.read()
"""


def _probe_leases(directory: str, modes: dict[str, str], conn: Connection) -> None:
    """Third process: try every lease (exclusive; shared too on exclusive leases) without
    waiting, in a loop, until told "stop"; then one more sweep; report. On "try", take
    each name once and report what happened."""
    space = LockSpace(directory)
    attempts = dict.fromkeys(modes, 0)
    granted: list[str] = []

    def sweep() -> None:
        for name, mode in modes.items():
            for shared in (False, True) if mode == "exclusive" else (False,):
                try:
                    space.acquire(name, owner="prober", shared=shared)
                except LockBusy:
                    attempts[name] += 1
                else:
                    granted.append(name)
                    space.release(name, owner="prober")

    sweep()
    conn.send("looping")
    while not conn.poll(0):
        sweep()
    assert conn.recv() == "stop"
    sweep()
    conn.send((attempts, granted))
    assert conn.poll(WAIT) and conn.recv() == "try"
    outcome = {}
    for name in modes:
        try:
            space.acquire(name, owner="prober")
        except LockBusy:
            outcome[name] = "LockBusy"
        else:
            outcome[name] = "acquired"
            space.release(name, owner="prober")
    conn.send(outcome)


def test_export_adopt_hands_leases_to_a_child_without_a_gap(tmp_path: Path) -> None:
    directory = tmp_path / "locks"
    space = LockSpace(directory)
    space.acquire("vm-disk", owner="vm1")
    space.acquire("shared-disk", owner="vm1", shared=True)
    space.acquire("shared-disk", owner="vm2", shared=True)
    space.acquire("iso", owner=4242, shared=True)
    need(FileLock(directory / "iso", lockfile=directory / "iso").lock_kind == "ofd",
         "export() needs OFD locks")
    expected: list[list[Any]] = [["iso", "shared", [4242]],
                                 ["shared-disk", "shared", ["vm1", "vm2"]],
                                 ["vm-disk", "exclusive", ["vm1"]]]
    assert [list(lease) for lease in leases(space)] == expected
    modes = {name: mode for name, mode, _ in expected}

    here, there = CTX.Pipe()
    prober = CTX.Process(target=_probe_leases, args=(str(directory), modes, there))
    prober.start()
    there.close()
    child: subprocess.Popen[bytes] | None = None
    try:
        assert receive(here, "word that the prober loops") == "looping"
        description, fds = space.export()
        try:
            assert space.held() == []
            assert "0 resources" in repr(space)
            for name in modes:  # never unlocked: the descriptors still hold every lease
                with pytest.raises(LockBusy):
                    space.acquire(name, owner="parent")
            child = subprocess.Popen(
                [sys.executable, "-c", _SUCCESSOR, json.dumps(description),
                 ",".join(map(str, fds))],
                pass_fds=fds, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                env=child_env())
        finally:
            for fd in fds:
                os.close(fd)
        assert child.stdin is not None and child.stdout is not None
        adopted = json.loads(read_line(child.stdout, "the child's held()"))
        assert sorted(adopted) == expected

        here.send("stop")
        attempts, granted = receive(here, "the prober's report")
        assert granted == [], f"a lease was free during the hand-over: {granted}"
        assert all(n >= 3 for n in attempts.values()), attempts

        child.stdin.write(b"release\n")
        assert json.loads(read_line(child.stdout, "the child's release")) == []
        here.send("try")
        assert receive(here, "the prober's try") == dict.fromkeys(modes, "acquired")
        child.stdin.close()
        assert child.wait(WAIT) == 0
        join_all([prober], WAIT)
    finally:
        here.close()
        if child is not None and child.poll() is None:
            child.kill()
            child.wait(WAIT)
        if prober.is_alive():
            prober.kill()
            prober.join(WAIT)
    assert os.listdir(directory) == []


def test_adopt_with_mismatched_descriptors_is_refused_and_takes_nothing(
        tmp_path: Path, agents: Callable[..., Agent]) -> None:
    directory = tmp_path / "locks"
    space = LockSpace(directory)
    space.acquire("a")
    space.acquire("b", shared=True)
    description, fds = space.export()
    extra = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(ValueError):
            LockSpace.adopt(description, fds[:1])
        with pytest.raises(ValueError):
            LockSpace.adopt(description, [*fds, extra])
        with pytest.raises(ValueError):
            LockSpace.adopt(description, [])
        other = agents(directory, space=True)
        assert other.error("acquire", name="a") == "LockBusy"  # still held through fds
        assert other.error("acquire", name="b") == "LockBusy"
        adopted = LockSpace.adopt(description, fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        os.close(extra)
    assert leases(adopted) == [("a", "exclusive", [os.getpid()]),
                               ("b", "shared", [os.getpid()])]
    assert sorted(adopted.release_owner(os.getpid())) == ["a", "b"]
    assert os.listdir(directory) == []


# ---------------------------------------------------------------------------
# 6. Names and directories

BAD_NAMES: list[Any] = ["", ".", "..", "a/b", "/a", "a\0b", 3, b"a", None]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_names_are_refused_and_create_nothing(tmp_path: Path, name: Any) -> None:
    directory = tmp_path / "locks"
    space = LockSpace(directory)
    for call in (lambda: space.acquire(name),
                 lambda: space.acquire(name, shared=True),
                 lambda: space.acquire(name, wait=True, timeout=1),
                 lambda: space.create(name),
                 lambda: space.delete(name),
                 lambda: space.path(name)):
        with pytest.raises(ValueError):
            call()
    assert os.listdir(directory) == []
    assert sorted(os.listdir(tmp_path)) == ["locks"]
    assert space.held() == []


def test_directory_created_0700_and_symlinked_directory_refused(tmp_path: Path) -> None:
    made = tmp_path / "new" / "locks"
    LockSpace(made)
    assert made.is_dir() and made.stat().st_mode & 0o777 == 0o700
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    with pytest.raises(OSError) as refused:
        LockSpace(link)
    assert refused.value.errno == errno.ELOOP
    assert "symbolic link" in str(refused.value)
    assert os.listdir(target) == []
    assert link.is_symlink()


def test_lockspace_none_takes_absolute_paths_and_locks_them_directly(
        tmp_path: Path, agents: Callable[..., Agent]) -> None:
    space = LockSpace(None)
    for name in ["disk.img", "./disk.img", "images/disk.img"]:
        with pytest.raises(ValueError):
            space.acquire(name)
    assert os.listdir(tmp_path) == []
    image = tmp_path / "disk.img"
    image.write_bytes(b"image data")
    space.acquire(str(image))
    other = agents(None, space=True)
    assert space.held() == [Lease(str(image), "exclusive", (os.getpid(),))]
    assert other.error("lockfile", path=str(image)) == "LockBusy"
    assert other.error("lockfile", path=str(image), shared=True) == "LockBusy"
    assert other.error("acquire", name=str(image)) == "LockBusy"
    space.release(str(image))
    assert space.held() == []
    assert other.ok("lockfile", path=str(image)) is True


def test_lockspace_none_release_keeps_the_file_it_locked(tmp_path: Path) -> None:
    """LockSpace(None) locks an existing file (a disk image) with the default arguments:
    the file was not auto-created, so releasing it must not delete it."""
    image = tmp_path / "disk.img"
    image.write_bytes(b"image data")
    space = LockSpace(None)
    space.acquire(str(image))
    space.release(str(image))
    assert image.exists(), "LockSpace(None) deleted the file it locked"
    assert image.read_bytes() == b"image data"


# ---------------------------------------------------------------------------
# 7. Waiting: timeouts, in-process grants, cancellation


def test_wait_timeout_raises_lock_timeout_on_time(
        tmp_path: Path, agents: Callable[..., Agent]) -> None:
    directory = tmp_path / "locks"
    other = agents(directory, space=True)
    assert other.ok("acquire", name="disk") is None
    space = LockSpace(directory)
    for shared in (False, True):
        began = time.monotonic()
        with pytest.raises(LockTimeout):
            space.acquire("disk", owner="vm", shared=shared, wait=True, timeout=0.2)
        elapsed = time.monotonic() - began
        assert 0.2 <= elapsed < 0.2 + TIMEOUT_SLACK, elapsed
        assert "0 resources" in repr(space)  # no trace of the wait
    with pytest.raises(LockBusy):  # not RuntimeError ("already awaits")
        space.acquire("disk", owner="vm")


def test_wait_in_thread_is_granted_when_another_owner_here_releases(tmp_path: Path) -> None:
    space = LockSpace(tmp_path / "locks")
    space.acquire("disk", owner="A")
    waiter = Worker(lambda: space.acquire("disk", owner="B", wait=True, timeout=WAIT))
    wait_in_futex(waiter, WAIT)
    released = time.monotonic()
    space.release("disk", owner="A")
    assert waiter.join(WAIT).error is None, waiter.error
    latency = waiter.ended - released
    print(f"\nin-process wait granted {latency * 1e3:.2f} ms after the release")
    assert latency < 0.1
    assert space.held() == [Lease("disk", "exclusive", ("B",))]
    space.release("disk", owner="B")
    assert os.listdir(tmp_path / "locks") == []


@pytest.mark.parametrize("holder", ["other process", "other owner here"])
def test_release_owner_cancels_a_waiting_acquire(
        tmp_path: Path, agents: Callable[..., Agent], holder: str) -> None:
    directory = tmp_path / "locks"
    space = LockSpace(directory)
    other = agents(directory, space=True)
    if holder == "other process":
        assert other.ok("acquire", name="disk") is None
    else:
        space.acquire("disk", owner="A")
    space.acquire("other", owner="W")
    waiter = Worker(lambda: space.acquire("disk", owner="W", wait=True, timeout=WAIT))
    if holder == "other process":
        wait_in_kernel(directory / "disk")
    else:
        wait_in_futex(waiter, WAIT)
    assert not waiter.done.is_set(), f"the waiter did not wait: {waiter.error!r}"
    cancelled = time.monotonic()
    assert space.release_owner("W") == ["other"]
    assert isinstance(waiter.join(WAIT).error, LockCancelled), waiter.error
    assert waiter.ended - cancelled < 0.1
    expected = [] if holder == "other process" else [Lease("disk", "exclusive", ("A",))]
    assert space.held() == expected
    assert f"{len(expected)} resources" in repr(space)  # no trace of W's wait
    with pytest.raises(LockBusy):  # not RuntimeError ("already awaits")
        space.acquire("disk", owner="W")
    if holder == "other process":
        assert other.ok("release", name="disk") is None
    else:
        space.release("disk", owner="A")
    space.acquire("disk", owner="W")
    assert space.held() == [Lease("disk", "exclusive", ("W",))]
    space.release("disk", owner="W")


@pytest.mark.parametrize("moment", ["before the kernel wait", "after the grant"])
def test_release_owner_during_a_wait_leaves_the_owner_nothing(
        tmp_path: Path, agents: Callable[..., Agent],
        monkeypatch: pytest.MonkeyPatch, moment: str) -> None:
    """release_owner(W) while W's acquire(wait=True) is between its steps.

    W's wait is in the table from when acquire() enters it until the grant is
    recorded; a thread may be preempted anywhere in between. Here W's thread is
    held (by a FileLock subclass standing in for the one LockSpace makes) at one
    such point while another thread calls release_owner(W): once that returns, W
    must hold nothing, and the acquire must end with LockCancelled.
    """
    directory = tmp_path / "locks"
    other = agents(directory, space=True)
    assert other.ok("acquire", name="disk") is None
    paused, resume = threading.Event(), threading.Event()

    class PausingFileLock(latchwire.locking.FileLock):
        def _acquire_detached(self, *args: Any, **kwargs: Any) -> Any:
            blocking = args[0] if args else kwargs.get("blocking", True)
            if blocking and moment == "before the kernel wait":
                paused.set()
                resume.wait(WAIT)
            result = super()._acquire_detached(*args, **kwargs)
            if blocking and moment == "after the grant":
                paused.set()
                resume.wait(WAIT)
            return result

    monkeypatch.setattr(latchwire.lockspace.local, "FileLock", PausingFileLock)
    space = LockSpace(directory)
    waiter = Worker(lambda: space.acquire("disk", owner="W", wait=True, timeout=2))
    if moment == "after the grant":
        wait_in_kernel(directory / "disk")
        assert other.ok("release", name="disk") is None
    try:
        assert paused.wait(WAIT), f"the acquire never reached the pause: {waiter.error!r}"
        assert space.release_owner("W") == []
    finally:
        resume.set()
        waiter.join(WAIT)
    left = space.held()
    space.release_owner("W")
    assert left == [], "W holds a lease after release_owner(W) returned"
    assert isinstance(waiter.error, LockCancelled), waiter.error


# ---------------------------------------------------------------------------
# 8. create / delete


def test_create_and_delete(tmp_path: Path, agents: Callable[..., Agent]) -> None:
    directory = tmp_path / "locks"
    space = LockSpace(directory)
    resource = directory / "vm.lock"
    space.create("vm.lock")
    assert resource.is_file() and resource.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        space.create("vm.lock")

    space.acquire("vm.lock", owner="A", autocreate=False)
    with pytest.raises(LockBusy):
        space.delete("vm.lock")
    space.acquire("shared", owner="A", shared=True)
    with pytest.raises(LockBusy):
        space.delete("shared")
    space.release("shared", owner="A")
    space.release("vm.lock", owner="A")
    assert resource.exists(), "a resource acquired with autocreate=False was deleted"

    other = agents(directory, space=True)
    assert other.ok("acquire", name="vm.lock", autocreate=False) is None
    with pytest.raises(LockBusy):
        space.delete("vm.lock")
    assert resource.exists()
    assert other.ok("release", name="vm.lock") is None
    assert resource.exists()

    space.delete("vm.lock")
    assert not resource.exists()
    with pytest.raises(FileNotFoundError):
        space.delete("vm.lock")
    with pytest.raises(FileNotFoundError):
        space.acquire("vm.lock", autocreate=False)
    with pytest.raises(FileNotFoundError):
        space.acquire("vm.lock", autocreate=False, wait=True, timeout=1)
    assert os.listdir(directory) == []
    assert space.held() == []


# ---------------------------------------------------------------------------
# 9. Auto-created shared resources


def test_auto_created_shared_resource_deleted_by_last_owner_only(
        tmp_path: Path, agents: Callable[..., Agent]) -> None:
    directory = tmp_path / "locks"
    space = LockSpace(directory)
    resource = directory / "disk"
    space.acquire("disk", owner="A", shared=True)
    space.acquire("disk", owner="B", shared=True)
    assert resource.exists()
    space.release("disk", owner="A")
    assert resource.exists()
    space.release("disk", owner="B")
    assert not resource.exists()

    other = agents(directory, space=True)
    assert other.ok("acquire", name="disk", shared=True) is None
    space.acquire("disk", owner="A", shared=True)
    space.acquire("disk", owner="B", shared=True)
    space.release("disk", owner="A")
    began = time.monotonic()
    space.release("disk", owner="B")  # upgrade refused: another process shares it
    assert time.monotonic() - began < PROMPT
    assert space.held() == []
    assert resource.exists(), "deleted while another process still held it"
    assert other.error("lockfile", path=str(resource)) == "LockBusy"  # still shared there
    assert other.ok("release", name="disk") is None  # the last holder anywhere
    assert not resource.exists()


# ---------------------------------------------------------------------------
# 10. The command line


def test_cli_locks_lists_a_lockspace_holder(
        tmp_path: Path, agents: Callable[..., Agent]) -> None:
    directory = tmp_path / "locks"
    space = LockSpace(directory)
    space.create("idle")  # a resource nobody holds: not listed
    holder = agents(directory, space=True)
    assert holder.ok("acquire", name="disk") is None
    assert holder.ok("acquire", name="iso", shared=True) is None
    listed = run_cli("locks", str(directory))
    assert listed.returncode == 0, listed.stderr
    # Rows are the lines that start with a path in the directory (a command line
    # with newlines in it would span lines; see the next test).
    rows = [line.split("\t") for line in listed.stdout.splitlines()
            if line.startswith(f"{directory}/")]
    assert [row[:4] for row in rows] == [
        [str(directory / "disk"), str(holder.pid), "exclusive", "ofd"],
        [str(directory / "iso"), str(holder.pid), "shared", "ofd"]]
    as_json = run_cli("locks", "--json", str(directory))
    assert as_json.returncode == 0, as_json.stderr
    assert [(r["path"], r["pid"], r["mode"]) for r in json.loads(as_json.stdout)] == [
        (str(directory / "disk"), holder.pid, "exclusive"),
        (str(directory / "iso"), holder.pid, "shared")]
    holder.kill()
    assert run_cli("locks", str(directory)).returncode == 1


def test_cli_locks_text_is_one_line_per_holder(tmp_path: Path) -> None:
    """A holder whose command line has newlines in it (python -c with a script) still
    makes one line of five tab-separated fields, under the header line."""
    directory = tmp_path / "locks"
    LockSpace(directory)
    script = ("import os, sys\nfrom latchwire import LockSpace\n"
              f"LockSpace({str(directory)!r}).acquire('disk')\n"
              "os.write(1, b'x')\nsys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, bufsize=0,
                              env=child_env())
    try:
        assert holder.stdout is not None and read_byte(holder.stdout) == b"x"
        listed = run_cli("locks", str(directory))
    finally:
        holder.kill()
        holder.wait(WAIT)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2, lines
    assert lines[0] == "PATH\tPID\tMODE\tKIND\tCOMMAND"
    fields = lines[1].split("\t")
    assert fields[:4] == [str(directory / "disk"), str(holder.pid), "exclusive", "ofd"]
    assert len(fields) == 5, fields


# ---------------------------------------------------------------------------
# 11. resource_name


def test_resource_name_is_sha256_of_the_canonical_path(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    image = images / "a.img"
    image.write_bytes(b"")
    link = tmp_path / "link.img"
    link.symlink_to(image)
    dotted = images / ".." / "images" / "." / "a.img"
    expected = hashlib.sha256(os.path.realpath(image).encode()).hexdigest()
    for path in (image, str(image), link, str(dotted), dotted):
        assert resource_name(path) == expected
        assert resource_name(path) == hashlib.sha256(
            os.path.realpath(path).encode()).hexdigest()
    assert resource_name(images / "b.img") != expected
    space = LockSpace(tmp_path / "locks")
    space.acquire(expected)
    assert (tmp_path / "locks" / expected).exists()
    space.release(expected)


def test_fork_child_starts_with_an_empty_table(tmp_path: Path) -> None:
    """A forked child holds none of its parent's leases: its table is empty and
    usable (even had another thread held the table lock at the fork)."""
    space = LockSpace(tmp_path / "locks")
    space.acquire("disk", owner="vm")
    space._mutex.acquire()  # as if another thread were inside the table at fork time
    try:
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            busy = False
            try:
                space.acquire("disk", owner="child")
            except LockBusy:
                busy = True
            os._exit(0 if busy and space.held() == [] else 1)
    finally:
        space._mutex.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert space.held() == [Lease("disk", "exclusive", ("vm",))]


def test_timeout_without_wait_is_refused(tmp_path: Path) -> None:
    space = LockSpace(tmp_path / "locks")
    with pytest.raises(ValueError):
        space.acquire("disk", timeout=1.0)
    assert space.held() == []
    assert list((tmp_path / "locks").iterdir()) == []


def test_dangling_symlink_as_directory_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "locks"
    link.symlink_to(tmp_path / "missing")
    with pytest.raises(OSError) as refused:
        LockSpace(link)
    assert refused.value.errno == errno.ELOOP
    assert not (tmp_path / "missing").exists()
