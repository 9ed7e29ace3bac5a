"""Netlink sockets: transactions, dumps and multicast on one socket object.

``Socket`` carries requests, dumps and multicast notifications at once, with
Open vSwitch's copy-on-write rules: a dump reads the socket's kernel channel
until the caller does anything else on the socket, and then keeps that channel
for itself while the socket takes a fresh one; a dump on a socket that joined
multicast groups, or that already has a dump running, runs on a channel of its
own. So a dump never sees a notification, a transaction never sees a dump's
messages, and several dumps can run interleaved on one socket.

Each channel is connected to the kernel, which therefore refuses datagrams
from any other sender. Receiving, and the parsing of messages and attributes,
happen in the compiled core with every length checked (``ProtocolError``).

A ``Socket`` (and its dumps) belongs to one thread at a time.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, NamedTuple, TypeVar, overload

from latchwire._core import (
    Address,
    Attrs,
    Link,
    Message,
    Neighbour,
    RouteEntry,
    _Channel,
    check_timeout,
    parse,
)
from latchwire.errors import DumpInterrupted, NetlinkError, Overrun, ProtocolError

__all__ = [
    "Attrs", "Dump", "Message", "Pool", "Request", "Socket", "attr", "nested", "parse", "s32",
    "string", "u8", "u16", "u32", "u64",
]

NETLINK_ROUTE = 0
NETLINK_GENERIC = 16

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_ECHO = 0x08
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP_FILTERED = 0x20
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_ATOMIC = 0x400
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLM_F_CAPPED = 0x100  # on an error: the request was not echoed
NLM_F_ACK_TLVS = 0x200  # on an error: extended-ACK attributes follow

NLMSGERR_ATTR_MSG = 1
NLMSGERR_ATTR_OFFS = 2

# What _Channel.recv_into says of a datagram of a dump.
_DUMP_DONE = 1
_DUMP_INTR = 2
_DUMP_FILTERED = 4

Record = Link | Address | RouteEntry | Neighbour
"""An rtnetlink record, as the compiled decoder makes them."""
T = TypeVar("T", Message, Record)

# rtnetlink message types and groups (linux/rtnetlink.h) used across the package.
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTNLGRP_LINK = 1
RTNLGRP_NEIGH = 3
RTNLGRP_IPV4_IFADDR = 5
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV6_IFADDR = 9
RTNLGRP_IPV6_ROUTE = 11

_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_ATTR = struct.Struct("=HH")  # struct nlattr
NLA_F_NESTED = 1 << 15


def _align(n: int) -> int:
    return (n + 3) & ~3


# ---------------------------------------------------------------------------
# Building requests


def u8(value: int) -> bytes:
    """An unsigned 8-bit attribute value, in host byte order (struct.error if out of range)."""
    return struct.pack("=B", value)


def u16(value: int) -> bytes:
    """An unsigned 16-bit attribute value, in host byte order (struct.error if out of range)."""
    return struct.pack("=H", value)


def u32(value: int) -> bytes:
    """An unsigned 32-bit attribute value, in host byte order (struct.error if out of range)."""
    return struct.pack("=I", value)


def u64(value: int) -> bytes:
    """An unsigned 64-bit attribute value, in host byte order (struct.error if out of range)."""
    return struct.pack("=Q", value)


def s32(value: int) -> bytes:
    """A signed 32-bit attribute value, in host byte order (struct.error if out of range)."""
    return struct.pack("=i", value)


def string(value: str) -> bytes:
    """A NUL-terminated string value."""
    return value.encode() + b"\0"


def attr(type: int, value: bytes) -> bytes:
    """One attribute (struct nlattr and value), padded to 4 bytes."""
    length = _ATTR.size + len(value)
    return _ATTR.pack(length, type) + value + b"\0" * (_align(length) - length)


def nested(type: int, attrs: Iterable[bytes]) -> bytes:
    """An attribute nesting the attributes attrs (NLA_F_NESTED set)."""
    return attr(type | NLA_F_NESTED, b"".join(attrs))


class Request(NamedTuple):
    """A request: message type, flags, the family header, then attributes
    (an immutable named tuple).

    The socket fills in the length, sequence number and port id, and sets
    NLM_F_REQUEST (plus NLM_F_ACK for transactions, NLM_F_DUMP for dumps).
    """

    type: int
    flags: int = 0
    header: bytes = b""
    attrs: bytes = b""


def _frame(request: Request | bytes, seq: int, pid: int, flags: int) -> bytes:
    """The datagram for request: header filled in, flags added."""
    if isinstance(request, Request):
        body = request.header + b"\0" * (_align(len(request.header)) - len(request.header))
        body += request.attrs
        return _HEADER.pack(_HEADER.size + len(body), request.type,
                            request.flags | flags | NLM_F_REQUEST, seq, pid) + body
    if len(request) < _HEADER.size:
        raise ProtocolError(f"a request of {len(request)} bytes has no netlink header")
    _, type, old_flags, _, _ = _HEADER.unpack_from(request)
    return _HEADER.pack(len(request), type, old_flags | flags | NLM_F_REQUEST, seq,
                        pid) + bytes(request[_HEADER.size:])


def error_of(msg: Message) -> NetlinkError | None:
    """The NetlinkError an NLMSG_ERROR (or a dump's NLMSG_DONE) carries, or None
    for an ACK (or a dump that ended well)."""
    payload = msg.payload
    if len(payload) < 4:
        if msg.type == NLMSG_DONE:
            return None
        raise ProtocolError(f"an NLMSG_ERROR of {len(payload)} bytes")
    (code,) = struct.unpack_from("=i", payload)
    if code >= 0:
        return None
    if code < -4095:  # the kernel's errnos are 1..MAX_ERRNO (linux/err.h)
        raise ProtocolError(f"error code {code} is no errno")
    text: str | None = None
    offset: int | None = None
    if msg.flags & NLM_F_ACK_TLVS:
        # The TLVs follow the code, after the echoed request on an NLMSG_ERROR.
        start = 4
        if msg.type == NLMSG_ERROR:
            if len(payload) < 4 + _HEADER.size:
                raise ProtocolError(f"an NLMSG_ERROR of {len(payload)} bytes with TLVs")
            start += _HEADER.size if msg.flags & NLM_F_CAPPED else _align(
                _HEADER.unpack_from(payload, 4)[0])
        tlvs = msg.attrs(start)
        if NLMSGERR_ATTR_MSG in tlvs:
            text = tlvs.str(NLMSGERR_ATTR_MSG)
        if NLMSGERR_ATTR_OFFS in tlvs:
            offset = tlvs.u32(NLMSGERR_ATTR_OFFS)
    return NetlinkError(-code, text, offset)


# ---------------------------------------------------------------------------
# Sockets and dumps


class Socket:
    """A netlink socket for requests, dumps and multicast, with copy-on-write dumps.

    ``netns`` is a namespace name under /run/netns or a namespace file
    descriptor (duplicated: the caller keeps its own); the socket is made
    there by a short hop of the calling thread. ``rcvbuf`` sets the receive
    buffer size; ``strict`` turns on NETLINK_GET_STRICT_CHK. Owned by one
    thread at a time.

    Every wait takes ``timeout`` in seconds: None, ``inf`` or more than about 31
    years is no limit; NaN or a negative number raises ValueError and a
    non-number TypeError, when the call is made (before anything is sent).
    Whichever receive the kernel reports ENOBUFS to (notifications were lost),
    it comes out as ``Overrun``.
    """

    def __init__(self, protocol: int, netns: str | int | None = None,
                 rcvbuf: int | None = None, strict: bool = False) -> None:
        self.protocol = protocol
        self._netns_fd = -1
        if isinstance(netns, str):
            self._netns_fd = os.open(os.path.join("/run/netns", netns),
                                     os.O_RDONLY | os.O_CLOEXEC)
        elif netns is not None:
            self._netns_fd = os.dup(netns)
        self._rcvbuf = rcvbuf or 0
        self._strict = strict
        self.groups: set[int] = set()
        self._seqs = itertools.count(1)
        self._dump: Dump[Any] | None = None  # the dump reading self._chan, if any
        self._chan: _Channel | None = None
        self._tx: _Channel | None = None  # transactions' own channel, once groups are joined
        self._closed = False
        try:
            self._chan = self._new_channel(joined=True)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pid={self.pid}"
        return f"<netlink.Socket protocol={self.protocol} {state}>"

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _new_channel(self, joined: bool) -> _Channel:
        """A fresh kernel channel with this socket's options (and groups, if joined)."""
        chan = _Channel(self.protocol, self._netns_fd, self._rcvbuf, self._strict)
        if joined:
            for group in self.groups:
                chan.membership(group, True)
        return chan

    def _own(self) -> _Channel:
        """The channel for an operation on the socket. A dump reading it keeps it
        (it closes it when done) and the socket takes a fresh one: copy on write."""
        if self._closed:
            raise ValueError("netlink socket is closed")
        dump, self._dump = self._dump, None
        if dump is not None and not dump.finished:
            dump._keep_channel()
            self._chan = None
        if self._chan is None:
            self._chan = self._new_channel(joined=True)
        return self._chan

    @property
    def pid(self) -> int:
        """The port id the kernel knows this socket by (it changes on copy-on-write)."""
        return self._own().pid

    def fileno(self) -> int:
        """The current channel's descriptor (readable when a datagram waits)."""
        return self._own().fd

    def close(self) -> None:
        """Close the socket; a dump running on it keeps its channel until it ends."""
        if self._closed:
            return
        if self._dump is not None and not self._dump.finished:
            self._dump._keep_channel()
        elif self._chan is not None:
            self._chan.close()
        if self._tx is not None:
            self._tx.close()
        self._chan = self._tx = None
        self._dump = None
        self._closed = True
        if self._netns_fd >= 0:
            os.close(self._netns_fd)
            self._netns_fd = -1

    def clone(self) -> Socket:
        """A new socket with the same protocol, namespace and options (no groups)."""
        return Socket(self.protocol, self._netns_fd if self._netns_fd >= 0 else None,
                      self._rcvbuf or None, self._strict)

    def send(self, request: Request | bytes, flags: int = 0) -> int:
        """Send request (with flags added); its sequence number."""
        chan = self._own()
        seq = next(self._seqs)
        chan.send(_frame(request, seq, chan.pid, flags))
        return seq

    @overload
    def recv(self, timeout: float | None = None, decode: Literal[False] = False
             ) -> list[Message]: ...
    @overload
    def recv(self, timeout: float | None = None, *, decode: Literal[True]) -> list[Record]: ...
    def recv(self, timeout: float | None = None, decode: bool = False
             ) -> list[Message] | list[Record]:
        """The messages of the next datagram: notifications, or answers to send().

        With decode, the rtnetlink records the datagram carries instead (other
        message types skipped; an error the kernel answered is raised).
        TimeoutError if none comes within timeout (0: do not wait); Overrun
        if the kernel dropped notifications (the socket stays usable).
        """
        timeout = check_timeout(timeout)
        chan = self._own()
        if not decode:
            buf = chan.recv(timeout)
            if buf is None:
                raise TimeoutError("no netlink message within the timeout")
            return parse(buf)
        records: list[Record] = []
        answer = chan.recv_into(records, timeout, None, True)
        if answer is None:
            raise TimeoutError("no netlink message within the timeout")
        error = None if answer[1] is None else error_of(answer[1])
        if error is not None:
            raise error
        return records

    def drain(self) -> None:
        """Discard every notification queued for the socket."""
        chan = self._own()
        while True:
            try:
                if not chan.discard(0):
                    return
            except Overrun:
                continue  # what was lost was to be discarded anyway

    def join_group(self, group: int) -> None:
        """Receive the notifications of multicast group number group."""
        self._own().membership(group, True)
        self.groups.add(group)

    def leave_group(self, group: int) -> None:
        """Stop receiving multicast group number group (notifications already queued stay)."""
        self._own().membership(group, False)
        self.groups.discard(group)

    def transact(self, request: Request | bytes, timeout: float | None = None) -> Message | None:
        """Send request with NLM_F_ACK; the reply message, or None for a bare ACK.

        NetlinkError (errno, extended-ACK text and offset) if the kernel refused;
        TimeoutError if no answer came within timeout (for the whole call);
        Overrun if the kernel could not queue the answer.
        """
        (result,) = self.transact_many([request], timeout)
        if isinstance(result, NetlinkError):
            raise result
        return result

    def _transaction_channel(self) -> _Channel:
        """The channel transactions use: the socket's own, or, once it has joined
        groups, one without any, where no notification can crowd out or pass
        for an answer (a notification of the caller's own change carries its
        sequence number and port id)."""
        if not self.groups:
            return self._own()
        if self._closed:
            raise ValueError("netlink socket is closed")
        if self._tx is None:
            self._tx = self._new_channel(joined=False)
        return self._tx

    def transact_many(self, requests: Sequence[Request | bytes], timeout: float | None = None
                      ) -> list[Message | NetlinkError | None]:
        """Send every request, then collect every answer in one pass: for each, its
        reply, None for a bare ACK, or the NetlinkError the kernel answered.
        ``timeout`` bounds the whole call; errors as transact()."""
        timeout = check_timeout(timeout)
        tx = _Transaction(self, requests)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not tx.done:
            if not tx.read(None if deadline is None
                           else max(0.0, deadline - time.monotonic())):
                raise TimeoutError("no netlink answer within the timeout")
        return tx.results()

    def _drop_channel(self, chan: _Channel) -> None:
        """Close chan, a channel of the socket that a call left half read (a
        cancelled await): the socket takes a fresh one when next used. Only for
        the transactions' channel or a socket without groups (a fresh channel
        would miss the notifications queued on the old one)."""
        if chan is self._tx:
            self._tx = None
        elif chan is self._chan:
            self._chan = None
        chan.close()

    @overload
    def dump(self, request: Request | bytes, retries: int = 0, timeout: float | None = None,
             decode: Literal[False] = False) -> Dump[Message]: ...
    @overload
    def dump(self, request: Request | bytes, retries: int = 0, timeout: float | None = None,
             *, decode: Literal[True]) -> Dump[Record]: ...
    def dump(self, request: Request | bytes, retries: int = 0, timeout: float | None = None,
             decode: bool = False) -> Dump[Message] | Dump[Record]:
        """Dump: an iterator of the kernel's messages for request (NLM_F_DUMP added),
        or, with decode, of the rtnetlink records the compiled decoder makes of them.

        ``timeout`` bounds each wait for the kernel's next datagram (TimeoutError).

        With retries > 0 the dump is read whole before anything is yielded and
        repeated, up to retries times, while the kernel flags it inconsistent
        (NLM_F_DUMP_INTR); DumpInterrupted if it still is. With retries=0 the
        messages stream, and DumpInterrupted comes at the end if flagged.
        """
        dump = self._start_dump(request, retries, check_timeout(timeout), decode)
        if retries > 0:
            dump._read_whole()
        return dump

    def _start_dump(self, request: Request | bytes, retries: int, timeout: float | None,
                    decode: bool) -> Dump[Any]:
        """A dump of request, sent and not read yet, on the socket's channel (copy
        on write) or, with groups joined or a dump running, on a channel of its own."""
        running = self._dump is not None and not self._dump.finished
        if self.groups or running:
            if self._closed:
                raise ValueError("netlink socket is closed")
            return Dump(self, self._new_channel(joined=False), request, retries, timeout,
                        owned=True, decode=decode)
        dump: Dump[Any] = Dump(self, self._own(), request, retries, timeout, owned=False,
                               decode=decode)
        self._dump = dump
        return dump


class _Transaction:
    """Requests sent with NLM_F_ACK on a socket's transaction channel, and their
    answers as they are read, one datagram a read(): the one state machine of
    Socket.transact_many and of its awaitable twin (which reads with timeout 0
    and waits for the descriptor between reads)."""

    def __init__(self, socket: Socket, requests: Sequence[Request | bytes]) -> None:
        chan = self.chan = socket._transaction_channel()
        self._seqs: list[int] = []
        seqs = self._seqs
        for request in requests:
            seqs.append(next(socket._seqs))
            chan.send(_frame(request, seqs[-1], chan.pid, NLM_F_ACK))
        self._first = seqs[0] if seqs else 0
        self._last = seqs[-1] if seqs else 0
        self._answers: dict[int, Message | NetlinkError | None] = {}
        self._replies: dict[int, Message] = {}
        self.done = not seqs

    def read(self, timeout: float | None) -> bool:
        """Take in the next datagram; False if none came within timeout (0: do not wait)."""
        buf = self.chan.recv(timeout)
        if buf is None:
            return False
        pid, first, last = self.chan.pid, self._first, self._last
        for msg in parse(buf):
            if msg.pid != pid or not first <= msg.seq <= last:
                continue  # a stray answer to something earlier: not ours
            if msg.type == NLMSG_ERROR:
                error = error_of(msg)
                self._answers[msg.seq] = error if error is not None else self._replies.get(
                    msg.seq)
            elif msg.type != NLMSG_DONE:
                self._replies[msg.seq] = msg
        self.done = len(self._answers) == len(self._seqs)
        return True

    def results(self) -> list[Message | NetlinkError | None]:
        """Every answer, in the order of the requests (once done)."""
        return [self._answers[seq] for seq in self._seqs]


class Dump(Generic[T]):
    """The messages (or decoded records) of one dump, as an iterator; ``close()``
    abandons it, ``all()`` reads the rest at once.

    It reads either the socket's own channel (until the socket needs it back,
    see Socket) or a channel of its own, which it closes when done. An
    abandoned dump leaves nothing behind: its channel is closed, leftovers and
    all. The compiled core keeps only this dump's messages (its sequence
    number and port id) and decodes them in the same pass.
    """

    def __init__(self, socket: Socket, chan: _Channel, request: Request | bytes,
                 retries: int, timeout: float | None, owned: bool, decode: bool = False) -> None:
        timeout = check_timeout(timeout)  # checked once, here: it bounds each wait
        self._socket = socket
        self._chan: _Channel | None = chan
        self._owned = owned
        self._request = request
        self._retries = retries
        self._timeout = timeout
        self._decode = decode
        self._pending: list[T] = []
        self._pos = 0  # _pending[:_pos] were yielded
        self.finished = False
        self.filtered = False  # the kernel applied the request's filter (NLM_F_DUMP_FILTERED)
        self._attempts = 0  # repeats of an inconsistent dump so far (retries > 0)
        self._start()

    def __repr__(self) -> str:
        return f"<netlink.Dump seq={self._seq} {'finished' if self.finished else 'running'}>"

    def _start(self) -> None:
        assert self._chan is not None
        self._seq = next(self._socket._seqs)
        self._interrupted = False
        self._done = False
        self._chan.send(_frame(self._request, self._seq, self._chan.pid, NLM_F_DUMP))

    def _keep_channel(self) -> None:
        """The socket lets this dump keep the channel it reads: close it when done."""
        self._owned = True

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._pos == len(self._pending):
            self._pending.clear()
            self._pos = 0
            while not self._pending:
                if self._done or self.finished:
                    self._finish()
                    raise StopIteration
                self._fill()
        item = self._pending[self._pos]
        self._pos += 1
        return item

    def all(self) -> list[T]:
        """Everything the dump has not yielded yet, read to its end; the dump is
        then finished."""
        while not self._done and not self.finished:
            self._fill()
        rest = self._pending[self._pos:] if self._pos else self._pending
        self._pending = []
        self._pos = 0
        self._finish()
        return rest

    def batches(self) -> Iterator[list[T]]:
        """The rest of the dump, one list a received datagram (what was read but
        not yielded yet comes first): for writing a large dump out without
        holding all of it. Each list is the caller's; the dump is finished once
        the iterator is exhausted. With retries=0, DumpInterrupted comes at the
        end if the kernel flagged the dump, after the last batch."""
        while (batch := self._next_batch()) is not None:
            yield batch

    def _next_batch(self) -> list[T] | None:
        """The next list batches() yields, or None at the end. Resumable: a
        TimeoutError (no datagram within the dump's timeout) leaves the dump
        where it was, for the next call to go on from."""
        while True:
            if self._pos < len(self._pending):
                rest = self._pending[self._pos:] if self._pos else self._pending
                self._pending = []
                self._pos = 0
                return rest
            if self._done or self.finished:
                if self._interrupted and self._retries == 0 and not self.finished:
                    self._done_interrupted()
                self._finish()
                return None
            self._fill(keep_interrupted=True)

    def _fill(self, keep_interrupted: bool = False) -> None:
        """Read the next datagram of the dump into _pending (the core keeps this
        dump's messages only, and stops at its end or at an error); a streamed
        dump that ended inconsistent raises DumpInterrupted unless keep_interrupted
        (the caller raises it once it has taken the last datagram's records).
        TimeoutError if none came within the dump's timeout, the dump unchanged:
        a dump made with timeout 0 never waits, and its awaitable face waits for
        the descriptor and calls again (every caller of _fill is resumable)."""
        assert self._chan is not None
        answer = self._chan.recv_into(self._pending, self._timeout, self._seq, self._decode)
        if answer is None:
            raise TimeoutError("no dump message within the timeout")
        status, error_msg = answer
        if status & _DUMP_INTR:
            self._interrupted = True
        if status & _DUMP_FILTERED:
            self.filtered = True
        if status & _DUMP_DONE:
            self._done = True
            if error_msg is not None:
                self._finish()
                error = error_of(error_msg)
                raise error if error is not None else ProtocolError("an ACK inside a dump")
        if self._done and self._interrupted and self._retries == 0 and not keep_interrupted:
            self._done_interrupted()

    def _done_interrupted(self) -> None:
        """A streamed dump ended inconsistent: what was yielded may be stale."""
        self._finish()
        raise DumpInterrupted(errno.EINTR,
                              "the dump changed while it ran (NLM_F_DUMP_INTR): dump again")

    def _read_whole(self) -> None:
        """Read the dump to its end, repeating it while the kernel flags it
        inconsistent (resumable after a TimeoutError, as _fill)."""
        while not self.finished:
            while not self._done:
                self._fill()
            if not self._interrupted:
                return
            if self._attempts == self._retries:
                self._done_interrupted()
            self._attempts += 1
            self._pending.clear()
            self._start()

    def _finish(self) -> None:
        """End the dump: nothing more is yielded; an owned channel is closed."""
        self._pending = []
        self._pos = 0
        if self.finished:
            return
        self.finished = True
        if self._owned and self._chan is not None:
            self._chan.close()
        self._chan = None

    def close(self) -> None:
        """Abandon the dump: its channel is closed with whatever was still queued."""
        if not self.finished and not self._owned and self._socket._dump is self:
            self._socket._dump = None
            self._socket._chan = None  # the socket opens a fresh channel when next used
            self._owned = True
        self._finish()

    def __enter__(self) -> Dump[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "finished", True):  # an __init__ that raised made nothing
            self.close()


class Pool:
    """Thread-safe transactions by handing out sockets (Open vSwitch's nl_pool).

    Each transaction borrows an idle socket (or makes one), so threads never
    share a socket; sockets are kept for reuse, up to ``keep`` of them.
    """

    def __init__(self, protocol: int, netns: str | int | None = None,
                 rcvbuf: int | None = None, strict: bool = False, keep: int = 16) -> None:
        self._args = (protocol, netns, rcvbuf, strict)
        self._keep = keep
        self._idle: list[Socket] = []
        self._guard = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def socket(self) -> Iterator[Socket]:
        """A socket for the calling thread alone, for the with-block."""
        with self._guard:
            if self._closed:
                raise ValueError("netlink pool is closed")
            sock = self._idle.pop() if self._idle else None
        if sock is None:
            sock = Socket(*self._args)
        try:
            yield sock
        finally:
            with self._guard:
                keep = not self._closed and len(self._idle) < self._keep
                if keep:
                    sock.drain()
                    self._idle.append(sock)
            if not keep:
                sock.close()

    def transact(self, request: Request | bytes, timeout: float | None = None) -> Message | None:
        """Socket.transact on a borrowed socket."""
        timeout = check_timeout(timeout)
        with self.socket() as sock:
            return sock.transact(request, timeout)

    def transact_many(self, requests: Sequence[Request | bytes], timeout: float | None = None
                      ) -> list[Message | NetlinkError | None]:
        """Socket.transact_many on a borrowed socket."""
        timeout = check_timeout(timeout)
        with self.socket() as sock:
            return sock.transact_many(requests, timeout)

    def close(self) -> None:
        """Close the idle sockets; borrowed ones close when given back."""
        with self._guard:
            self._closed = True
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()
