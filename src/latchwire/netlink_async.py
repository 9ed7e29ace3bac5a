"""Netlink on the event loop, without threads: ``AsyncSocket`` and ``AsyncDump``.

``AsyncSocket`` is ``netlink.Socket``'s awaitable twin, and drives the very
same state machines: each call reads its channel with the compiled core's
non-blocking receive (timeout 0) and, when nothing is queued, waits for the
channel's descriptor to turn readable, then reads on. So the copy-on-write
rules are the blocking socket's: a dump in progress keeps its channel when the
caller does anything else on the socket.

Which loop: asyncio (any loop with ``add_reader``: the default one, uvloop),
anyio on its asyncio backend, and trio (or anyio on its trio backend), through
``trio.lowlevel.wait_readable``. Anything else raises RuntimeError.

Cancellation is safe at every await: a call cancelled before it sends
anything sends nothing; a transaction cancelled while its answers are on
their way closes the channel they would come to (the socket takes a fresh
one when next used); a dump cancelled half read is closed, its channel with
it. No thread is started, and no descriptor or reader callback outlives
the call. A timeout (TimeoutError) is not a cancellation: it leaves things as
the blocking twin's does.

One task at a time per channel: two tasks waiting on one channel at once
(two transactions on a socket without groups, say) make the second raise
RuntimeError. A socket that joined groups transacts on a channel of its own, so
one task can wait for notifications while another transacts.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, overload

from latchwire._core import Message, _Channel, check_timeout
from latchwire.errors import NetlinkError
from latchwire.netlink import Dump, Record, Request, Socket, T, _Transaction

__all__ = ["AsyncDump", "AsyncSocket", "wait_readable"]


async def wait_readable(fd: int, timeout: float | None = None) -> None:
    """Until fd is readable (TimeoutError after timeout seconds; None: no limit),
    in the running asyncio loop's reader callbacks or trio's I/O manager.

    RuntimeError when called outside both. On cancellation the reader callback
    is gone before the cancellation propagates.
    """
    import asyncio  # here: a program that never awaits does not load asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        await _trio_wait_readable(fd, timeout)
        return
    waiter = loop.create_future()
    loop.add_reader(fd, _wake, waiter)
    expiry = None if timeout is None else loop.call_later(timeout, _expire, waiter)
    try:
        await waiter
    finally:
        loop.remove_reader(fd)
        if expiry is not None:
            expiry.cancel()


def _wake(waiter: Any) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _expire(waiter: Any) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no netlink message within the timeout"))


async def _trio_wait_readable(fd: int, timeout: float | None) -> None:
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            trio = None
    if trio is None:
        raise RuntimeError("latchwire's netlink awaitables need a running asyncio loop "
                           "(or anyio on asyncio) or trio (or anyio on trio)")
    if timeout is None:
        await trio.lowlevel.wait_readable(fd)
        return
    with trio.move_on_after(timeout) as scope:
        await trio.lowlevel.wait_readable(fd)
    if scope.cancelled_caught:
        raise TimeoutError("no netlink message within the timeout")


_END = object()  # what AsyncDump._next says at the dump's end


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class AsyncSocket:
    """A netlink socket for requests, dumps and multicast, awaited: ``netlink.Socket``
    (same arguments, same copy-on-write dumps) whose waits are awaits.

    Timeouts are checked as the blocking socket's (check_timeout: None, ``inf``
    or more than about 31 years is no limit; NaN or a negative number raises
    ValueError, a non-number TypeError), when the call is made, before
    anything is sent; they bound the same waits. Cancellation and loops: see
    the module. ``close()`` while a task waits on the socket raises RuntimeError
    (cancel the task first).
    """

    def __init__(self, protocol: int, netns: str | int | None = None,
                 rcvbuf: int | None = None, strict: bool = False) -> None:
        self._sock = Socket(protocol, netns, rcvbuf, strict)
        self._waiting: set[_Channel] = set()

    @property
    def socket(self) -> Socket:
        """The blocking socket underneath (for sends, groups and options; not
        for waits while a task of this one waits)."""
        return self._sock

    @property
    def protocol(self) -> int:
        """The netlink protocol (NETLINK_ROUTE, NETLINK_GENERIC, ...)."""
        return self._sock.protocol

    @property
    def groups(self) -> set[int]:
        """The multicast groups joined."""
        return self._sock.groups

    @property
    def pid(self) -> int:
        """The port id the kernel knows this socket by (it changes on copy-on-write)."""
        return self._sock.pid

    def __repr__(self) -> str:
        return repr(self._sock).replace("netlink.Socket", "netlink_async.AsyncSocket")

    async def __aenter__(self) -> AsyncSocket:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def fileno(self) -> int:
        """The current channel's descriptor (readable when a datagram waits)."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket; a dump running on it keeps its channel until it ends.
        RuntimeError while a task waits on one of its channels."""
        if self._waiting:
            raise RuntimeError("a task is waiting on this netlink socket: cancel it "
                               "before closing the socket")
        self._sock.close()

    @classmethod
    def _over(cls, sock: Socket) -> AsyncSocket:
        """An AsyncSocket driving sock (its state, channels and dumps shared)."""
        self = cls.__new__(cls)
        self._sock = sock
        self._waiting = set()
        return self

    def clone(self) -> AsyncSocket:
        """A new socket with the same protocol, namespace and options (no groups)."""
        return AsyncSocket._over(self._sock.clone())

    def send(self, request: Request | bytes, flags: int = 0) -> int:
        """Socket.send (the kernel takes a request at once: nothing to await)."""
        return self._sock.send(request, flags)

    def join_group(self, group: int) -> None:
        """Socket.join_group."""
        self._sock.join_group(group)

    def leave_group(self, group: int) -> None:
        """Socket.leave_group."""
        self._sock.leave_group(group)

    def drain(self) -> None:
        """Socket.drain (it never waits)."""
        self._sock.drain()

    async def _wait(self, chan: _Channel, timeout: float | None) -> None:
        """Until chan is readable; RuntimeError if another task waits on it."""
        if chan in self._waiting:
            raise RuntimeError("another task is waiting on this netlink socket: one task "
                               "at a time per channel (clone() the socket for another)")
        self._waiting.add(chan)
        try:
            await wait_readable(chan.fd, timeout)
        finally:
            self._waiting.discard(chan)

    @overload
    async def recv(self, timeout: float | None = None, decode: Literal[False] = False
                   ) -> list[Message]: ...
    @overload
    async def recv(self, timeout: float | None = None, *, decode: Literal[True]
                   ) -> list[Record]: ...
    async def recv(self, timeout: float | None = None, decode: bool = False
                   ) -> list[Message] | list[Record]:
        """Socket.recv, awaited: the messages (or, with decode, records) of the
        next datagram. TimeoutError if none comes within timeout; Overrun if
        the kernel dropped notifications. A datagram is taken whole or not at
        all, so a cancelled recv loses nothing."""
        deadline = None if (timeout := check_timeout(timeout)) is None else (
            time.monotonic() + timeout)
        sock = self._sock
        while True:
            try:
                if decode:
                    return sock.recv(0, decode=True)
                return sock.recv(0)
            except TimeoutError:
                if deadline is not None and deadline <= time.monotonic():
                    raise
            await self._wait(sock._own(), _remaining(deadline))

    async def transact(self, request: Request | bytes, timeout: float | None = None
                       ) -> Message | None:
        """Socket.transact, awaited: the reply, or None for a bare ACK;
        NetlinkError if the kernel refused, TimeoutError after timeout."""
        (result,) = await self.transact_many([request], timeout)
        if isinstance(result, NetlinkError):
            raise result
        return result

    async def transact_many(self, requests: Sequence[Request | bytes],
                            timeout: float | None = None
                            ) -> list[Message | NetlinkError | None]:
        """Socket.transact_many, awaited (``timeout`` bounds the whole call).
        Cancelled while answers are due, it closes the channel they would come
        to; the socket takes a fresh one when next used."""
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        tx = _Transaction(self._sock, requests)
        try:
            while not tx.done:
                if not tx.read(0):
                    if deadline is not None and deadline <= time.monotonic():
                        raise TimeoutError("no netlink answer within the timeout")
                    await self._wait(tx.chan, _remaining(deadline))
        except TimeoutError:
            raise
        except BaseException:
            if not tx.done:
                self._sock._drop_channel(tx.chan)
            raise
        return tx.results()

    @overload
    def dump(self, request: Request | bytes, retries: int = 0, timeout: float | None = None,
             decode: Literal[False] = False) -> AsyncDump[Message]: ...
    @overload
    def dump(self, request: Request | bytes, retries: int = 0, timeout: float | None = None,
             *, decode: Literal[True]) -> AsyncDump[Record]: ...
    def dump(self, request: Request | bytes, retries: int = 0, timeout: float | None = None,
             decode: bool = False) -> AsyncDump[Message] | AsyncDump[Record]:
        """Socket.dump as an async iterator: the request is sent here (nothing is
        awaited), the messages or records read as they are iterated. With
        retries > 0 the first await reads the dump whole, repeating it while the
        kernel flags it inconsistent. ``timeout`` bounds each wait."""
        timeout = check_timeout(timeout)
        return AsyncDump(self, self._sock._start_dump(request, retries, 0, decode), timeout)


class AsyncDump(Generic[T]):
    """The messages (or decoded records) of one dump, as an async iterator
    (``Dump``'s state machine, read without waiting and awaited between reads);
    ``await all()`` reads the rest, ``batches()`` streams it a datagram at a
    time, ``close()`` abandons it. Cancelled in any await, it is closed: its
    channel (or the socket's, which then takes a fresh one) goes with
    whatever was queued. An ``async with`` block closes it too."""

    def __init__(self, socket: AsyncSocket, dump: Dump[T], timeout: float | None) -> None:
        self._socket = socket
        self._dump: Dump[T] = dump
        self._timeout = timeout
        self._whole = dump._retries == 0  # a dump with retries is read whole first

    def __repr__(self) -> str:
        return repr(self._dump).replace("netlink.Dump", "netlink_async.AsyncDump")

    @property
    def finished(self) -> bool:
        """Whether the dump has ended (read to its end, failed or closed)."""
        return self._dump.finished

    @property
    def filtered(self) -> bool:
        """Whether the kernel applied the request's filter (NLM_F_DUMP_FILTERED)."""
        return self._dump.filtered

    async def _run(self, step: Any) -> Any:
        """step()'s result, calling it again each time the channel had nothing
        (step raises TimeoutError: the Dump reads with timeout 0) once the
        channel is readable. Anything but the timeout of a wait closes the dump."""
        dump = self._dump
        try:
            if not self._whole:
                await self._run_steps(dump._read_whole)
                self._whole = True
            return await self._run_steps(step)
        except TimeoutError:
            raise
        except BaseException:
            dump.close()
            raise

    async def _run_steps(self, step: Any) -> Any:
        dump = self._dump
        while True:
            try:
                return step()
            except TimeoutError:
                if dump._chan is None:
                    raise
            await self._socket._wait(dump._chan, self._timeout)

    def __aiter__(self) -> AsyncDump[T]:
        return self

    async def __anext__(self) -> T:
        dump = self._dump
        if self._whole and dump._pos < len(dump._pending):  # read already: no wait
            item = dump._pending[dump._pos]
            dump._pos += 1
            return item
        item = await self._run(self._next)
        if item is _END:
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]

    def _next(self) -> Any:
        """next(dump), or _END at its end: a StopIteration must not cross a
        coroutine (PEP 479 turns it into a RuntimeError)."""
        try:
            return next(self._dump)
        except StopIteration:
            return _END

    async def all(self) -> list[T]:
        """Everything not yielded yet, read to the dump's end (Dump.all)."""
        return await self._run(self._dump.all)  # type: ignore[no-any-return]

    async def batches(self) -> AsyncIterator[list[T]]:
        """Dump.batches, awaited: one list a received datagram; DumpInterrupted
        after the last one if the kernel flagged a streamed dump."""
        try:
            while (batch := await self._run(self._dump._next_batch)) is not None:
                yield batch
        finally:
            self._dump.close()

    def close(self) -> None:
        """Abandon the dump: its channel is closed with whatever was still queued."""
        self._dump.close()

    async def aclose(self) -> None:
        """close(), for ``contextlib.aclosing`` and the like."""
        self._dump.close()

    async def __aenter__(self) -> AsyncDump[T]:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._dump.close()
