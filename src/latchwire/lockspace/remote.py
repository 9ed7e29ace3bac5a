"""Lockspaces on a coordination engine: what the ZooKeeper and etcd backends share.

A remote lockspace keeps each owner's hold as one entry in the engine's queue
for the resource (an ephemeral sequential znode, an etcd key on a lease), so
holds from this process, other processes and other hosts meet in one place.
This module holds the part that does not depend on the engine: the table of
this process's holds and waits (busy answered from it at once, owners,
``release_owner`` cancelling waits), the wait loop, the lease objects with
their fencing tokens, and the session states reported to them. The engine
modules (``zookeeper``, ``etcd``) supply the queue operations.

Session states, as every lease reports them (``RemoteLease.state``):

- ``"held"``: granted, and the session that carries the entry is connected;
- ``"suspended"``: the connection is down; the entry lives on only until the
  session timeout (TTL) runs out, unless the connection comes back first (back
  to ``"held"``);
- ``"lost"``: the session expired; the engine has deleted the entry and may
  already have granted the resource to someone else. Final;
- ``"released"``: released by its owner. Final.

``valid`` is True only in ``"held"``. A paused or partitioned holder learns of
a loss only when it runs again and hears from the engine, so it may act on a
lease that is already gone: the lease's ``token`` (increasing with every grant
of a resource) is what the guarded resource checks to refuse its late writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

from latchwire import _core
from latchwire.errors import LockBusy, LockCancelled, LockTimeout, SessionLost
from latchwire.lockspace._types import Lease, State, check_name, lease_owner

__all__ = ["Listener", "RemoteLease", "RemoteLockSpace", "SessionLost", "State"]

Listener = Callable[["RemoteLease", State], None]
"""``listener(lease, state)``: told of every state change of a lease, in order, on the
lockspace's own notifier thread (never on the caller's, never with a lockspace lock
held); it must not block for long, and an exception it raises is logged, not passed on."""

_FINAL = ("lost", "released")
_T = TypeVar("_T")
_log = logging.getLogger("latchwire")


class RemoteLease:
    """One owner's grant on a resource of a remote lockspace.

    ``token`` is the fencing token: the entry's creation zxid (ZooKeeper) or
    creation revision (etcd), larger for every later grant of the resource, so
    a resource that remembers the largest token it has seen can refuse a
    holder that lost its lease while paused. ``state`` and ``valid`` say
    whether the lease still stands (see the module docstring); ``listener``,
    if given to ``acquire``, is called as ``listener(lease, state)`` on every
    change, in the lockspace's notifier thread, in order.
    """

    def __init__(self, space: RemoteLockSpace, name: str, owner: Hashable, shared: bool,
                 key: str, token: int, autocreate: bool, listener: Listener | None) -> None:
        self.name = name
        self.owner = owner
        self.shared = shared
        self.key = key  # the engine's entry: a znode path, an etcd key
        self.token = token
        self._autocreate = autocreate  # its resource is deleted by the last release
        self._space = space
        self._listener = listener
        self._state: State = "held"

    @property
    def mode(self) -> str:
        """"shared" or "exclusive"."""
        return "shared" if self.shared else "exclusive"

    @property
    def state(self) -> State:
        """"held", "suspended", "lost" or "released"."""
        return self._state

    @property
    def valid(self) -> bool:
        """True while the lease is granted and its session connected."""
        return self._state == "held"

    def _change(self, state: State) -> None:
        """Move to state (a final state stays) and queue the listener's call.
        Caller: holds the lockspace's table lock."""
        if self._state == state or self._state in _FINAL:
            return
        self._state = state
        if self._listener is not None:
            self._space._notify(self._listener, self, state)

    def __repr__(self) -> str:
        return (f"<RemoteLease {self.name!r} {self.mode} owner={self.owner!r} "
                f"token={self.token} {self._state}>")


class _LoopWake:
    """A threading.Event's set/clear for a task: set() from any thread wakes wait() in
    the loop (through call_soon_threadsafe), without a thread of its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._flag = False
        self._waiting: asyncio.Future[None] | None = None

    def set(self) -> None:
        """Wake the wait (now or the next one); from any thread."""
        self._flag = True
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(self._fire)

    def clear(self) -> None:
        self._flag = False

    def _fire(self) -> None:
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Return once set (since the last clear) or after timeout s."""
        if self._flag:
            return
        self._waiting = self._loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._waiting), timeout)
        except TimeoutError:
            pass
        finally:
            self._waiting = None


async def _through_cancels(done: asyncio.Future[Any]) -> bool:
    """Wait until done is done, through any cancel of the task; whether one came."""
    cancelled = False
    while not done.done():
        try:
            await asyncio.wait((done,))
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


class _Wait:
    """One owner's acquisition in progress: woken by the engine, a cancel or a lost session."""

    def __init__(self, wake: threading.Event | _LoopWake) -> None:
        self.wake = wake
        self.cancelled = False
        self.lost = False
        self.ahead: tuple[str, int] = ("", 0)  # the entry waited for, as _blocker gave it


class RemoteLockSpace(ABC):
    """The local lockspace's API over a coordination engine's queues.

    ``acquire`` (and ``acquire_async``, its face on an asyncio loop) returns a
    ``RemoteLease``; everything else is as in the local ``LockSpace``. Every
    blocking call is bounded: a wait by its ``timeout``, a call to the engine
    by the session timeout (``ConnectionError`` if the
    engine stays out of reach that long). A lockspace is used from one
    process: make it after ``fork()``, not before. ``close()`` (or ``with``)
    releases what is held and ends the session.
    """

    CALL_THREADS = 4
    """The bound on the threads of the pool awaited acquisitions make their engine round
    trips on (one pool per lockspace, however many tasks wait)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._holds: dict[str, dict[Hashable, RemoteLease]] = {}
        self._waits: dict[tuple[str, Hashable], _Wait] = {}
        self._session: State = "held"
        self._calls: queue.SimpleQueue[tuple[Listener, RemoteLease, State] | None] = \
            queue.SimpleQueue()
        self._notifier = threading.Thread(target=self._deliver, name="latchwire-lease-notifier",
                                          daemon=True)
        self._notifier.start()

    # -- the engine's part -------------------------------------------------

    @abstractmethod
    def _enqueue(self, name: str, shared: bool, owner: Hashable, autocreate: bool,
                 deadline: float | None) -> tuple[str, int]:
        """Add owner's entry at the tail of name's queue: (key, fencing token).
        FileNotFoundError if name does not exist and not autocreate."""

    @abstractmethod
    def _blocker(self, name: str, key: str, shared: bool,
                 deadline: float | None) -> tuple[str, int] | None:
        """The entry that key must wait for (the nearest conflicting one ahead) and the
        engine's revision it was seen at (0 where the engine has none), or None if key is
        granted. SessionLost if key is gone."""

    @abstractmethod
    def queue(self, name: str) -> list[str]:
        """The entries (holds and waits, from everywhere) on name, first served first."""

    @abstractmethod
    def _watch_gone(self, ahead: tuple[str, int], gone: Callable[[], None]
                    ) -> Callable[[], None]:
        """Call gone() (from the engine's thread, at least once, maybe spuriously: the
        caller looks again) once the entry ahead (as _blocker gave it) is gone;
        without blocking. Returns what stops the watching (gone may still be called)."""

    def _wait_gone(self, ahead: tuple[str, int], wake: threading.Event,
                   timeout: float | None) -> None:
        """Return once the entry ahead (as _blocker gave it) is gone, wake is set, or
        timeout s have passed."""
        stop = self._watch_gone(ahead, wake.set)
        try:
            wake.wait(timeout)
        finally:
            stop()

    @abstractmethod
    def _dequeue(self, key: str) -> None:
        """Delete the entry key, if it still exists."""

    @abstractmethod
    def _drop_resource(self, name: str) -> None:
        """Delete name's resource if no entry is queued on it (an autocreated one's end)."""

    @abstractmethod
    def create(self, name: str) -> None:
        """Create the resource; FileExistsError if it exists."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Delete the resource: LockBusy if anyone holds or awaits it, FileNotFoundError
        if it does not exist."""

    @abstractmethod
    def _close_session(self) -> None:
        """End the engine session (its remaining entries go with it)."""

    @staticmethod
    def _entry_data(owner: Hashable) -> bytes:
        """What an entry says about its owner, for people reading the engine's data."""
        return json.dumps({"owner": repr(owner), "host": socket.gethostname(),
                           "pid": os.getpid()}).encode()

    # -- session states, reported by the engine ------------------------------

    def _session_changed(self, state: State) -> None:
        """The engine's session is now "held" (connected), "suspended" or "lost".

        Every lease follows; on "lost", every wait is woken and fails with
        SessionLost. Called from the engine's thread; never blocks on the engine.
        """
        with self._mutex:
            self._session = "held" if state == "lost" else state  # a new session comes next
            for holds in self._holds.values():
                for lease in holds.values():
                    lease._change(state)
            if state == "lost":
                for waiter in self._waits.values():
                    waiter.lost = True
                    waiter.wake.set()

    def _notify(self, listener: Listener, lease: RemoteLease, state: State) -> None:
        """Queue listener(lease, state) for the notifier thread."""
        self._calls.put((listener, lease, state))

    def _deliver(self) -> None:
        """The notifier thread: make the listener calls in order, until None."""
        while (call := self._calls.get()) is not None:
            listener, lease, state = call
            try:
                listener(lease, state)
            except Exception:
                _log.exception("lease listener %r failed", listener)

    # -- the lockspace API ---------------------------------------------------

    def acquire(self, name: str, owner: Hashable = None, shared: bool = False,
                wait: bool = False, timeout: float | None = None, autocreate: bool = True,
                listener: Listener | None = None) -> RemoteLease:
        """Take name for owner (default: this process's id); the lease.

        Busy (held exclusively, or held at all for an exclusive request, by
        anyone anywhere, or awaited ahead of this request) raises LockBusy at
        once, unless ``wait``: then this waits its turn in the engine's queue
        (first come, first served; shared requests next to each other are
        granted together), up to ``timeout`` seconds (LockTimeout).
        ``release_owner(owner)`` meanwhile ends the wait with LockCancelled; a
        session expiring ends it with SessionLost. A missing resource is
        created if ``autocreate`` (and deleted again on its last release);
        otherwise FileNotFoundError. RuntimeError if owner already holds or
        awaits name here.
        """
        if timeout is not None and not wait:
            raise ValueError("a timeout needs wait=True")
        wake = threading.Event()
        owner, deadline, waiter = self._begin(name, owner, shared, wait, timeout, wake)
        lease = None
        try:
            key, token = self._enqueue(name, shared, owner, autocreate, deadline)
            try:
                while (left := self._turn(name, key, shared, wait, deadline, waiter)) != 0:
                    self._wait_gone(waiter.ahead, wake, left)
            except BaseException:
                self._dequeue(key)
                raise
            lease = RemoteLease(self, name, owner, shared, key, token, autocreate, listener)
        finally:
            granted = self._settle(name, owner, waiter, lease)
        if not granted:  # release_owner() or a lost session came with the grant
            self._dequeue(key)
            self._raise_ended(waiter, name)
        return lease

    async def acquire_async(self, name: str, owner: Hashable = None, shared: bool = False,
                            timeout: float | None = None, autocreate: bool = True,
                            listener: Listener | None = None) -> RemoteLease:
        """``acquire(name, owner, shared, wait=True, timeout, autocreate, listener)``
        without blocking the event loop; the lease.

        The wait is on the engine's own notification (a ZooKeeper watch, the
        lockspace's one etcd watch stream), which resolves the task's future
        through ``loop.call_soon_threadsafe``: no thread per waiting task. The
        engine's round trips (queueing, reading the queue, dequeueing) run on
        the lockspace's pool of at most ``CALL_THREADS`` threads, started on
        first use and ended by ``close()``. A task cancelled at any point leaves
        no entry in the engine's queue and no lease: a request under way is let
        finish and then undone, a grant that crosses the cancel is released.
        ``release_owner()`` ends the wait with LockCancelled, a lost session
        with SessionLost, as for a blocking wait. asyncio only (anyio's asyncio
        backend included): RuntimeError elsewhere.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "acquire_async() needs a running asyncio event loop (anyio's asyncio "
                "backend is one); under trio, wait in a thread instead: await "
                "trio.to_thread.run_sync(functools.partial(space.acquire, name, wait=True))"
            ) from None
        wake = _LoopWake(loop)
        owner, deadline, waiter = self._begin(name, owner, shared, True, timeout, wake)
        key = None
        lease = None
        try:
            try:
                key, token = await self._off_loop(self._enqueue, name, shared, owner,
                                                  autocreate, deadline,
                                                  undo=lambda made: self._dequeue(made[0]))
                while (left := await self._off_loop(self._turn, name, key, shared, True,
                                                    deadline, waiter)) != 0:
                    stop = self._watch_gone(waiter.ahead, wake.set)
                    try:
                        await wake.wait(left)
                    finally:
                        stop()
            except BaseException:
                if key is not None:
                    await self._off_loop_surely(self._dequeue, key)
                raise
            lease = RemoteLease(self, name, owner, shared, key, token, autocreate, listener)
        finally:
            granted = self._settle(name, owner, waiter, lease)
        if not granted:  # release_owner() or a lost session came with the grant
            await self._off_loop_surely(self._dequeue, key)
            self._raise_ended(waiter, name)
        return lease

    def _begin(self, name: str, owner: Hashable, shared: bool, wait: bool,
               timeout: float | None, wake: threading.Event | _LoopWake
               ) -> tuple[Hashable, float | None, _Wait]:
        """Register owner's acquisition of name (woken through wake): the owner, the
        deadline and the wait, which the caller ends with _settle. LockBusy at once if
        held here and not wait; RuntimeError if owner already holds or awaits name."""
        check_name(name)
        owner = lease_owner(owner)
        timeout = _core.check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._mutex:
            holds = self._holds.get(name, {})
            mine = holds.get(owner)
            if (mine is not None and mine.state not in _FINAL) or (name, owner) in self._waits:
                raise RuntimeError(f"{owner!r} already holds or awaits {name!r}")
            others = [lease.owner for lease in holds.values()
                      if lease.state not in _FINAL and not (shared and lease.shared)]
            if others and not wait:
                raise LockBusy(f"{name!r} is held here by {tuple(others)}")
            waiter = self._waits[(name, owner)] = _Wait(wake)
        return owner, deadline, waiter

    def _settle(self, name: str, owner: Hashable, waiter: _Wait,
                lease: RemoteLease | None) -> bool:
        """End the wait _begin registered; record lease (if granted: not None) unless
        release_owner() or a lost session came first. Whether it was recorded."""
        with self._mutex:
            del self._waits[(name, owner)]
            if lease is None or waiter.cancelled or waiter.lost:
                return False
            lease._state = self._session
            self._holds.setdefault(name, {})[owner] = lease
            return True

    def _turn(self, name: str, key: str, shared: bool, wait: bool, deadline: float | None,
              waiter: _Wait) -> float | None:
        """One look at key's place in the queue: 0 once it is granted, else the seconds
        left to wait (None: no bound) for waiter.ahead, the entry it waits for;
        LockBusy (not wait), LockTimeout, LockCancelled or SessionLost instead. The
        caller waits (if asked to) and asks again, and deletes key if this raises."""
        waiter.wake.clear()
        self._raise_ended(waiter, name)
        blocker = self._blocker(name, key, shared, deadline)
        if blocker is None:
            return 0
        if not wait:
            raise LockBusy(f"{name!r} is held or awaited ({blocker[0]})")
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise LockTimeout(f"{name!r} still held or awaited ({blocker[0]})")
        waiter.ahead = blocker
        return left

    def _calls_pool(self) -> ThreadPoolExecutor:
        """The pool the awaited acquisitions make their round trips to the engine on."""
        with self._mutex:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.CALL_THREADS,
                                                thread_name_prefix="latchwire-remote-call")
            return self._pool

    async def _off_loop(self, call: Callable[..., _T], *args: Any,
                        undo: Callable[[_T], object] | None = None) -> _T:
        """call(*args) on the pool, the loop running meanwhile. A cancel lets the call
        finish (a round trip cannot be taken back half-way) and then undo(its result),
        if it succeeded, before it goes on."""
        done = asyncio.wrap_future(self._calls_pool().submit(call, *args))
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            await _through_cancels(done)
            if done.exception() is None and undo is not None:  # (an error is dropped)
                await _through_cancels(asyncio.wrap_future(
                    self._calls_pool().submit(undo, done.result())))
            raise

    async def _off_loop_surely(self, call: Callable[..., object], *args: Any) -> None:
        """call(*args) on the pool, waited for through any cancel, which is passed on
        after it; call's exception, if it raised."""
        done = asyncio.wrap_future(self._calls_pool().submit(call, *args))
        if await _through_cancels(done):
            raise asyncio.CancelledError
        done.result()

    @staticmethod
    def _raise_ended(waiter: _Wait, name: str) -> None:
        """LockCancelled or SessionLost if the wait was ended from outside."""
        if waiter.cancelled:
            raise LockCancelled(f"the owner's leases were released while it waited for {name!r}")
        if waiter.lost:
            raise SessionLost(f"the session expired while waiting for {name!r}")

    def release(self, name: str, owner: Hashable = None) -> None:
        """Release owner's hold on name (deleting an autocreated resource on the last
        release). A lease already lost is only forgotten: its loss was reported.
        RuntimeError if owner does not hold name."""
        owner = lease_owner(owner)
        with self._mutex:
            lease = self._holds.get(name, {}).pop(owner, None)
            if lease is None:
                raise RuntimeError(f"{owner!r} does not hold {name!r}")
            last = not self._holds[name]
            if last:
                del self._holds[name]
            live = lease.state != "lost"
            lease._change("released")
        if live:
            self._dequeue(lease.key)
            if last and lease._autocreate:
                self._drop_resource(name)

    def release_owner(self, owner: Hashable) -> list[str]:
        """Release everything owner holds and cancel its waits; the names released."""
        with self._mutex:
            names = [name for name, holds in self._holds.items() if owner in holds]
            for (_name, waiting), waiter in self._waits.items():
                if waiting == owner:
                    waiter.cancelled = True
                    waiter.wake.set()
        for name in names:
            self.release(name, owner)
        return names

    def held(self) -> list[Lease]:
        """The resources held here (leases not lost or released), with mode and owners."""
        with self._mutex:
            found = []
            for name, holds in self._holds.items():
                live = [lease for lease in holds.values() if lease.state not in _FINAL]
                if live:
                    mode = "shared" if live[0].shared else "exclusive"
                    found.append(Lease(name, mode, tuple(lease.owner for lease in live)))
            return found

    def close(self) -> None:
        """Release every lease held here, end the session and the notifier thread."""
        with self._mutex:
            holds = [(name, owner) for name, leases in self._holds.items() for owner in leases]
        for name, owner in holds:
            self.release(name, owner)
        with self._mutex:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()
        self._close_session()
        self._calls.put(None)
        self._notifier.join()

    def __enter__(self) -> RemoteLockSpace:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
