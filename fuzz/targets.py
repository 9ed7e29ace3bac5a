"""The fuzz targets: one function per decoder, each fed one datagram's bytes.

A target returns normally when the input was decoded, or refused with the
documented error (``ProtocolError``; ``KeyError`` for an attribute type that is
not there). Any other exception, or an answer that breaks an invariant
checked here (an ``AssertionError``), is a finding: ``run.py`` keeps the input.

To cover a new decoder, write ``def decoder(data: bytes) -> None`` here and
add it to ``TARGETS``.
"""

from __future__ import annotations

import contextlib
import inspect
import struct
from collections.abc import Callable

from latchwire import ProtocolError, genl, netlink, rtnl
from latchwire.errors import NetlinkError
from latchwire.netlink import Attrs, Record

NLMSGHDR = struct.Struct("=IHHII")
MISSING = 0x4000  # above NLA_TYPE_MASK: no attribute ever has this type
NEST_DEPTH = 4  # how deep attrs() tries values as nested attributes

# The family header before the attributes, by message type (linux/rtnetlink.h):
# ifinfomsg, ifaddrmsg, rtmsg, ndmsg; 0 for anything else.
FAMILY_HEADER = {**dict.fromkeys(range(16, 20), 16), **dict.fromkeys(range(20, 24), 8),
                 **dict.fromkeys(range(24, 28), 12), **dict.fromkeys(range(28, 31), 12)}

GETTERS: tuple[Callable[[Attrs, int], object], ...] = (
    Attrs.u8, Attrs.u16, Attrs.u32, Attrs.s32, Attrs.u64, Attrs.str, Attrs.ip, Attrs.mac,
)


def messages(data: bytes) -> list[netlink.Message]:
    """parse(data), checked against the header fields read here independently;
    [] if parse refused the bytes."""
    try:
        msgs = netlink.parse(data)
    except ProtocolError:
        return []
    off = 0
    for msg in msgs:
        length, type, flags, seq, pid = NLMSGHDR.unpack_from(data, off)
        assert (msg.type, msg.flags, msg.seq, msg.pid) == (type, flags, seq, pid)
        assert msg.payload == data[off + NLMSGHDR.size:off + length], (off, length)
        off += (length + 3) & ~3
    assert off >= len(data) > off - 4, (off, len(data))
    return msgs


def parse(data: bytes) -> None:
    """netlink.parse: messages agree with the headers and cover the datagram."""
    messages(data)


def walk(attrs: Attrs, size: int, depth: int) -> None:
    """Read everything attrs offers (values raw and through every typed getter,
    every value tried as a nest down to NEST_DEPTH): only ProtocolError, and
    KeyError for a missing type, may come out; values fit in size bytes."""
    items = attrs.items()
    assert len(items) == len(attrs)
    assert sum(4 + len(value) for _, value in items) <= size
    for t in attrs:
        assert attrs[t] == attrs.get(t) == attrs.all(t)[-1]
        for get in GETTERS:
            with contextlib.suppress(ProtocolError):
                get(attrs, t)
        if depth < NEST_DEPTH:
            with contextlib.suppress(ProtocolError):
                walk(attrs.nested(t), len(attrs[t]), depth + 1)
    assert attrs.get(MISSING) is None and attrs.all(MISSING) == []
    for get in (*GETTERS, Attrs.nested):
        try:
            get(attrs, MISSING)
        except KeyError:
            continue
        raise AssertionError(f"{get.__name__} of a missing attribute did not raise KeyError")


def attrs(data: bytes) -> None:
    """Message.attrs and Attrs: every message's attributes walked to the bottom."""
    for msg in messages(data):
        size = len(msg.payload)
        try:
            found = msg.attrs(FAMILY_HEADER.get(msg.type, 0))
        except ProtocolError:
            continue
        walk(found, size, 0)


def error_of(data: bytes) -> None:
    """netlink.error_of on every message: None or a NetlinkError with a positive
    errno, a text or None, an offset or None; or ProtocolError."""
    for msg in messages(data):
        try:
            error = netlink.error_of(msg)
        except ProtocolError:
            continue
        if error is not None:
            assert isinstance(error, NetlinkError) and (error.errno or 0) > 0, error
            assert error.msg is None or isinstance(error.msg, str), error


def touch(record: Record | rtnl.NextHop) -> None:
    """Read every field of a record (and of its next hops), its repr, hash, key
    and deleted twin: none may raise."""
    for name, _ in inspect.getmembers(type(record), inspect.isdatadescriptor):
        if not name.startswith("_"):
            getattr(record, name)
    repr(record)
    hash(record)
    if isinstance(record, rtnl.NextHop):
        return
    assert record.as_deleted().deleted and record.as_deleted() == record
    assert record.as_deleted().key == record.key
    for hop in getattr(record, "nexthops", ()):
        touch(hop)


def rtnl_decode(data: bytes) -> None:
    """rtnl.decode, the compiled rtnetlink decoder: the records of the datagram, or
    ProtocolError; every field of every record reads; Message.record() of the
    same messages makes the same records."""
    try:
        records = rtnl.decode(data)
    except ProtocolError:
        return
    for record in records:
        touch(record)
    again = [msg.record() for msg in messages(data)]
    assert [r for r in again if r is not None] == records


def genl_family(data: bytes) -> None:
    """genl.header and genl.Family.from_message on every message (rtnetlink's
    RTM_NEWLINK shares nlctrl's type 16): a header and a Family, or ProtocolError."""
    for msg in messages(data):
        try:
            cmd, version = genl.header(msg)
        except ProtocolError:
            continue
        assert 0 <= cmd < 256 and 0 <= version < 256
        try:
            family = genl.Family.from_message(msg)
        except ProtocolError:
            continue
        assert isinstance(family.name, str) and 0 <= family.id < 65536, family
        assert all(isinstance(name, str) for name in family.groups), family


TARGETS: dict[str, Callable[[bytes], None]] = {
    "parse": parse,
    "attrs": attrs,
    "error_of": error_of,
    "rtnl_decode": rtnl_decode,
    "genl_family": genl_family,
}
