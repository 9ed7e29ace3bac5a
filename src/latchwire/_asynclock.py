"""FileLock's asyncio face: tasks wait on the event loop, not in threads.

The tasks of one event loop that wait for one lock file queue on a gate, in
arrival order. The head of the queue is served in one of two ways:

- the lock is held here by a task that got it through this gate: the head
  waits for that hold to end, which the compiled core reports (the FileLock's
  release callback, _tell_releases) in whatever thread released it; the loop
  then takes the lock for the head without blocking, with no thread involved;
- the lock is held elsewhere (another process, or a thread of this one that is
  not a task of this gate): one helper thread waits in the kernel for the head
  and hands the grant to the loop.

So a gate has at most one helper thread at a time, whatever the number of
waiting tasks, and a hand-off between two tasks of one loop is a release
callback and a future. Each grant changes hands under the ticket's guard: the
task takes it, or the task has given up (cancelled, timed out, the loop gone)
and whoever sees that second releases it. Nothing is ever held with no one to
release it.

This module is imported by the first acquire_async() call, so that a program
that never awaits a lock never loads asyncio.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Generator
from types import TracebackType

from latchwire import _core
from latchwire.errors import LockBusy, LockCancelled, LockTimeout

# The core's FileLock: latchwire.locking's subclass and the lockspaces' leases alike.
FileLock = _core.FileLock

__all__: list[str] = []


class _Ticket:
    """One task's request, from the queue until the task has the lock or gave up."""

    __slots__ = ("abandoned", "deadline", "future", "generation", "granted", "guard", "lock",
                 "shared", "taken", "timer")

    def __init__(self, lock: FileLock, shared: bool, deadline: float | None,
                 future: asyncio.Future[None], generation: int) -> None:
        self.lock = lock
        self.shared = shared
        self.generation = generation  # the lock's cancel_generation: a cancel() since ends it
        self.deadline = deadline  # time.monotonic() deadline, or None
        self.future = future
        self.timer: asyncio.TimerHandle | None = None
        self.guard = threading.Lock()  # granted and abandoned, with the helper thread
        self.granted = False  # the helper thread's wait got the lock for this ticket
        self.abandoned = False  # the task will not take the lock any more
        self.taken = False  # the lock is the task's now (the loop's thread only)


class _Gate:
    """The tasks of one event loop waiting for one lock file. Everything but the
    tickets' guarded fields is touched in the loop's thread only."""

    def __init__(self, loop: asyncio.AbstractEventLoop, lockfile: str) -> None:
        self.loop = loop
        self.lockfile = lockfile
        self.thread_id = threading.get_ident()
        self.queue: collections.deque[_Ticket] = collections.deque()
        self.holders: set[FileLock] = set()  # holds granted through this gate, not yet ended
        self.pending: dict[FileLock, int] = {}  # tickets queued or served, by their lock
        self.serving: _Ticket | None = None  # the ticket a helper thread waits for
        self.helper: threading.Thread | None = None
        self.pumping = False

    def idle(self) -> bool:
        return not self.queue and not self.holders and self.serving is None

    # ---- the loop's side ------------------------------------------------

    def try_now(self, lock: FileLock, shared: bool, generation: int) -> bool:
        """Take the lock for a task at once if nobody queues ahead of it."""
        if self.queue or self.serving is not None:
            return False
        if lock.cancel_generation != generation:
            raise _cancelled(lock)
        try:
            lock._acquire_detached(False, None, shared)
        except LockBusy:
            return False
        self._hold(lock)
        return True

    def enqueue(self, lock: FileLock, shared: bool, timeout: float | None,
                generation: int) -> _Ticket:
        deadline = None if timeout is None else time.monotonic() + timeout
        ticket = _Ticket(lock, shared, deadline, self.loop.create_future(), generation)
        if timeout is not None:
            ticket.timer = self.loop.call_later(timeout, self._expire, ticket)
        self.pending[lock] = self.pending.get(lock, 0) + 1
        _link(lock, self)
        self.queue.append(ticket)
        self.pump()
        return ticket

    def _retire(self, ticket: _Ticket) -> None:
        """ticket left the queue (or the helper): its lock is no longer waited for here."""
        left = self.pending[ticket.lock] - 1
        if left:
            self.pending[ticket.lock] = left
        else:
            del self.pending[ticket.lock]
            self._unlink_if_done(ticket.lock)

    def _unlink_if_done(self, lock: FileLock) -> None:
        if lock not in self.holders and lock not in self.pending and _gate_of.get(lock) is self:
            del _gate_of[lock]

    def pump(self) -> None:
        """Serve the queue's head while it can be served: grant it at once, leave it
        to a hold of this gate to end, or give it to a helper thread."""
        if self.pumping:
            return
        self.pumping = True
        try:
            while self.queue and self.serving is None:
                ticket = self.queue.popleft()
                if ticket.future.done():  # cancelled or timed out while queued
                    self._retire(ticket)
                    continue
                if ticket.lock.cancel_generation != ticket.generation:
                    self._settle(ticket, _cancelled(ticket.lock))
                    self._retire(ticket)
                    continue
                try:
                    ticket.lock._acquire_detached(False, None, ticket.shared)
                except LockBusy:
                    if self.holders:
                        self.queue.appendleft(ticket)
                        return  # one of them will end, and pump again
                    self._serve(ticket)
                    return
                except BaseException as exc:
                    self._settle(ticket, exc)
                    self._retire(ticket)
                    continue
                self._hold(ticket.lock)
                ticket.taken = True
                self._settle(ticket, None)
                self._retire(ticket)
        finally:
            self.pumping = False
            self._forget_if_idle()

    def _hold(self, lock: FileLock) -> None:
        self.holders.add(lock)
        _link(lock, self)

    def _settle(self, ticket: _Ticket, exc: BaseException | None) -> None:
        self._stop_timer(ticket)
        if exc is None:
            ticket.future.set_result(None)
        else:
            ticket.future.set_exception(exc)

    @staticmethod
    def _stop_timer(ticket: _Ticket) -> None:
        # The timer's handle holds the ticket: unlinked, they make no cycle.
        if ticket.timer is not None:
            ticket.timer.cancel()
            ticket.timer = None

    def _expire(self, ticket: _Ticket) -> None:
        ticket.timer = None
        if not ticket.future.done() and ticket is not self.serving:
            ticket.future.set_exception(LockTimeout(
                f"{self.lockfile}: not acquired within the timeout", self.lockfile))
            self.pump()

    def hold_changed(self, lock: FileLock) -> None:
        """A hold of this gate ended or was downgraded, or lock was cancelled (the
        core's callback), in the loop's thread, or in any thread once the loop is
        closed (its tasks are gone: nobody is served any more, and the gate is
        forgotten when nothing is held)."""
        if not lock.locked:
            self.holders.discard(lock)
            self._unlink_if_done(lock)
        if self.loop.is_closed():
            self._forget_if_idle()
            return
        if lock in self.pending:  # cancel() ends its queued waits (pump retires them)
            for ticket in self.queue:
                if ticket.lock is lock and not ticket.future.done() \
                        and lock.cancel_generation != ticket.generation:
                    self._settle(ticket, _cancelled(lock))
        self.pump()

    def abandon(self, ticket: _Ticket) -> None:
        """The task gives up: when this returns, the ticket holds nothing."""
        self._stop_timer(ticket)
        with ticket.guard:
            ticket.abandoned = True
            if ticket.granted:  # the helper's grant reached neither the task nor a release
                ticket.granted = False
                ticket.lock.release()
        if ticket is self.serving:
            ticket.lock.cancel()
            if self.helper is not None:
                self.helper.join()  # sub-millisecond: the cancelled wait returns at once
        elif ticket.taken:  # granted, but the task was cancelled before it resumed
            ticket.taken = False
            ticket.lock.release()
        self.pump()

    def _forget_if_idle(self) -> None:
        if self.idle():
            with _gates_guard:
                gates = _gates.get(self.loop)
                if gates is not None and gates.get(self.lockfile) is self:
                    del gates[self.lockfile]
                    if not gates:
                        del _gates[self.loop]

    # ---- the helper thread ----------------------------------------------

    def _serve(self, ticket: _Ticket) -> None:
        self._stop_timer(ticket)  # the helper's wait takes what is left of the timeout
        timeout = None if ticket.deadline is None else max(0.0, ticket.deadline
                                                           - time.monotonic())
        self.serving = ticket
        # The ticket's generation, read when the task asked: any cancel() since (the
        # task's abandon(), another's) reaches the wait, even before it has begun.
        self.helper = threading.Thread(target=self._wait,
                                       args=(ticket, timeout, ticket.generation),
                                       name=f"latchwire-wait {self.lockfile}", daemon=True)
        self.helper.start()

    def _wait(self, ticket: _Ticket, timeout: float | None, generation: int) -> None:
        exc: BaseException | None = None
        try:
            ticket.lock._acquire_detached(True, timeout, ticket.shared, generation)
        except BaseException as e:
            # Without this thread's frames: they hold the ticket, whose future will
            # hold the exception (a cycle that would keep the lock file open until
            # the next garbage collection).
            exc = e.with_traceback(None)
        else:
            with ticket.guard:
                if ticket.abandoned:
                    ticket.lock.release()
                else:
                    ticket.granted = True
        try:
            self.loop.call_soon_threadsafe(self._served, ticket, exc)
        except RuntimeError:  # the loop is closed: nobody will take the grant
            with ticket.guard:
                ticket.abandoned = True
                if ticket.granted:
                    ticket.granted = False
                    ticket.lock.release()
            # No loop thread touches the gate any more: retire the ticket from here.
            self.serving = None
            self._retire(ticket)

    def _served(self, ticket: _Ticket, exc: BaseException | None) -> None:
        """The helper's wait for ticket ended (in the loop's thread)."""
        if self.serving is ticket:
            self.serving = None
            self.helper = None
            self._retire(ticket)
        with ticket.guard:
            taken = ticket.granted and not ticket.abandoned
            ticket.granted = False
        if taken:  # the task's, even if it was cancelled meanwhile: its abandon() releases
            self._hold(ticket.lock)
            ticket.taken = True
            if not ticket.future.done():
                ticket.future.set_result(None)
        elif exc is not None and not ticket.future.done():
            ticket.future.set_exception(exc)
        self.pump()


# Each loop's gates, by lock file path (loops in other threads use the table too). A
# gate is forgotten once idle, and every gate of a loop once the loop is closed.
_gates: dict[asyncio.AbstractEventLoop, dict[str, _Gate]] = {}
_gates_guard = threading.Lock()


def _gate(loop: asyncio.AbstractEventLoop, lockfile: str) -> _Gate:
    with _gates_guard:
        for closed in [other for other in _gates if other.is_closed()]:
            del _gates[closed]
        gates = _gates.setdefault(loop, {})
        gate = gates.get(lockfile)
        if gate is None:
            gate = gates[lockfile] = _Gate(loop, lockfile)
        return gate


# The gate each FileLock queued on or held through one is on (the loop's threads add
# and remove entries; the core's callback reads them in any thread).
_gate_of: dict[FileLock, _Gate] = {}


def _link(lock: FileLock, gate: _Gate) -> None:
    _gate_of[lock] = gate
    lock._tell_releases()


def _cancelled(lock: FileLock) -> LockCancelled:
    return LockCancelled("lock wait cancelled", lock.lockfile)


def _hold_changed(lock: FileLock) -> None:
    """The core's callback, in the thread that released, downgraded or cancelled."""
    gate = _gate_of.get(lock)
    if gate is None:
        return
    if threading.get_ident() == gate.thread_id or gate.loop.is_closed():
        gate.hold_changed(lock)
        return
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there any more
        gate.loop.call_soon_threadsafe(gate.hold_changed, lock)


_core._set_release_callback(_hold_changed)


class _AsyncAcquire:
    """What ``FileLock.acquire_async()`` returns: an async context manager and an awaitable."""

    __slots__ = ("_generation", "_lock", "_shared", "_timeout")

    def __init__(self, lock: FileLock, timeout: float | None, shared: bool,
                 generation: int | None = None) -> None:
        self._lock = lock
        self._timeout = timeout
        self._shared = shared
        # With a generation (a cancel_generation read earlier, as LockSpace reads it
        # when it registers a wait), any cancel() since then ends this wait too.
        self._generation = generation

    def __await__(self) -> Generator[object, None, FileLock]:
        return self._acquire().__await__()

    async def __aenter__(self) -> FileLock:
        return await self._acquire()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._lock.release()

    async def _acquire(self) -> FileLock:
        lock = self._lock
        generation = lock.cancel_generation if self._generation is None else self._generation
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "acquire_async() needs a running asyncio event loop (anyio's asyncio "
                "backend is one); under trio, wait in a thread instead: "
                "await trio.to_thread.run_sync(lock.acquire)") from None
        gate = _gate(loop, lock.lockfile)
        try:
            if gate.try_now(lock, self._shared, generation):
                return lock
        except BaseException:
            gate._forget_if_idle()
            raise
        ticket = gate.enqueue(lock, self._shared, self._timeout, generation)
        try:
            await ticket.future
        except asyncio.CancelledError:
            gate.abandon(ticket)
            raise
        except BaseException:
            # The exception's traceback holds this frame: let it not hold the ticket,
            # whose future holds the exception (a cycle, kept until a collection).
            del ticket
            raise
        return lock
