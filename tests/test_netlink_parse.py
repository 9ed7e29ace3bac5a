"""latchwire.netlink's parser and encoders, without a kernel.

``netlink.parse`` splits a datagram into Messages, ``Message.attrs`` indexes the
attributes after the family header, and ``Attrs`` hands out values raw or typed.
Malformed input of every kind (a truncated header, a length below the header's or
past the end, trailing bytes, an attribute shorter than its own header or longer
than what holds it, bad nesting, a typed read of the wrong size) raises
ProtocolError, never anything else and never a silent truncation. Then
Hypothesis builds random valid datagrams with the public encoders (``attr``,
``nested``, ``u8`` ... ``string``), attributes nested to any depth and repeated,
parses them back and compares every field and every value; and feeds random
bytes to check that nothing but ProtocolError ever comes out.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latchwire import ProtocolError, netlink
from latchwire.netlink import Attrs

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (linux/netlink.h)
NLA = struct.Struct("=HH")  # nla_len, nla_type
NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14


def message(type: int = 16, flags: int = 0, seq: int = 0, pid: int = 0,
            payload: bytes = b"") -> bytes:
    """One netlink message with the payload, padded to 4 bytes."""
    length = NLMSGHDR.size + len(payload)
    return NLMSGHDR.pack(length, type, flags, seq, pid) + payload + b"\0" * (-length % 4)


def raw_attr(length: int, type: int, value: bytes = b"") -> bytes:
    """An attribute header claiming length, then value as is (no padding)."""
    return NLA.pack(length, type) + value


def attrs_of(payload: bytes, hdrlen: int = 0) -> Attrs:
    """The attributes of a message with payload, each value read once."""
    (msg,) = netlink.parse(message(payload=payload))
    attrs = msg.attrs(hdrlen)
    for t in attrs:
        attrs.all(t)
        attrs.get(t)
    return attrs


# ---------------------------------------------------------------------------
# Encoders


def test_encoders_give_native_fixed_size_values() -> None:
    """u8..u64 and s32 pack in native byte order at their sizes; string() adds a NUL."""
    assert netlink.u8(0xAB) == b"\xab"
    assert netlink.u16(0x1234) == struct.pack("=H", 0x1234)
    assert netlink.u32(0xDEADBEEF) == struct.pack("=I", 0xDEADBEEF)
    assert netlink.u64(2**64 - 2) == struct.pack("=Q", 2**64 - 2)
    assert netlink.s32(-5) == struct.pack("=i", -5)
    assert netlink.string("veth0") == b"veth0\0"
    assert netlink.string("") == b"\0"


def test_attr_is_one_aligned_nlattr() -> None:
    """attr() is nla_len (header + value, unpadded), nla_type, value, padding to 4."""
    assert netlink.attr(3, b"abc") == NLA.pack(7, 3) + b"abc\0"
    assert netlink.attr(3, b"abcd") == NLA.pack(8, 3) + b"abcd"
    assert netlink.attr(7, b"") == NLA.pack(4, 7)
    assert netlink.attr(1, b"\x01") == NLA.pack(5, 1) + b"\x01\0\0\0"


def test_nested_wraps_attributes_and_flags_them_nested() -> None:
    """nested() is one attribute holding the given attributes, with NLA_F_NESTED set
    in its type (as the kernel's strict validation wants); parsing masks the flag."""
    inner = [netlink.attr(1, netlink.u32(7)), netlink.attr(2, netlink.string("x"))]
    data = netlink.nested(5, inner)
    length, type = NLA.unpack_from(data)
    assert length == len(data) == NLA.size + len(b"".join(inner))
    assert type == 5 | NLA_F_NESTED
    attrs = attrs_of(data)
    assert list(attrs) == [5]
    assert attrs[5] == b"".join(inner)
    assert attrs.nested(5).u32(1) == 7
    assert attrs.nested(5).str(2) == "x"


# ---------------------------------------------------------------------------
# Messages


def test_parse_splits_messages_and_reads_every_header_field() -> None:
    """Two messages in one datagram (the first of a length not a multiple of 4, so
    padding follows it) come back with type, flags, seq, pid and payload each."""
    data = (message(0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFE, b"abcde")
            + message(netlink.NLMSG_DONE, netlink.NLM_F_MULTI, 1, 2, b"\0\0\0\0"))
    first, second = netlink.parse(data)
    assert (first.type, first.flags, first.seq, first.pid, first.payload) == (
        0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFE, b"abcde")
    assert (second.type, second.flags, second.seq, second.pid, second.payload) == (
        netlink.NLMSG_DONE, netlink.NLM_F_MULTI, 1, 2, b"\0\0\0\0")
    assert netlink.parse(b"") == []
    assert netlink.parse(message())[0].payload == b""


@pytest.mark.parametrize("size", range(1, 16))
def test_truncated_header_is_refused(size: int) -> None:
    """A datagram shorter than one nlmsghdr (1-15 bytes) raises ProtocolError."""
    with pytest.raises(ProtocolError):
        netlink.parse(message(payload=b"12345678")[:size])


@pytest.mark.parametrize("length", [0, 1, 8, 15])
def test_length_below_the_header_is_refused(length: int) -> None:
    """nlmsg_len below 16 (a message shorter than its own header) raises ProtocolError,
    instead of looping forever or reading a header twice."""
    data = NLMSGHDR.pack(length, 16, 0, 0, 0) + b"\0" * 16
    with pytest.raises(ProtocolError):
        netlink.parse(data)


@pytest.mark.parametrize("extra", [1, 4, 100, 2**31, 2**32 - 1])
def test_length_past_the_end_is_refused(extra: int) -> None:
    """nlmsg_len past the end of the datagram (by a little or by nearly 4 GiB) raises
    ProtocolError: no message is cut short silently."""
    data = message(payload=b"abcdefgh")
    data = NLMSGHDR.pack(min(len(data) + extra, 2**32 - 1), 16, 0, 0, 0) + data[16:]
    with pytest.raises(ProtocolError):
        netlink.parse(data)
    with pytest.raises(ProtocolError):
        netlink.parse(message(payload=b"ok") + data)


@pytest.mark.parametrize("size", range(1, 16))
def test_trailing_garbage_is_refused(size: int) -> None:
    """1-15 bytes after the last whole message (too few for a header) raise
    ProtocolError rather than being ignored."""
    with pytest.raises(ProtocolError):
        netlink.parse(message(payload=b"abcd") + b"\xff" * size)


def test_family_header_longer_than_the_payload_is_refused() -> None:
    """attrs(hdrlen) with a family header that does not fit the payload raises
    ProtocolError; one that fits exactly gives no attributes."""
    (msg,) = netlink.parse(message(payload=b"\0" * 12))
    assert len(msg.attrs(12)) == 0
    with pytest.raises(ProtocolError):
        msg.attrs(13)
    with pytest.raises(ProtocolError):
        msg.attrs(16)


# ---------------------------------------------------------------------------
# Attributes


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_attribute_shorter_than_its_header_is_refused(length: int) -> None:
    """nla_len below 4 (zero-length included, which would never advance) raises
    ProtocolError."""
    with pytest.raises(ProtocolError):
        attrs_of(netlink.attr(1, b"ok") + raw_attr(length, 2) + b"\0" * 8)


@pytest.mark.parametrize("extra", [1, 3, 4, 1000])
def test_attribute_past_the_end_is_refused(extra: int) -> None:
    """An attribute whose nla_len runs past the message's end raises ProtocolError."""
    with pytest.raises(ProtocolError):
        attrs_of(netlink.attr(1, b"ok") + raw_attr(8 + extra, 2, b"abcd"))


@pytest.mark.parametrize("size", [1, 2, 3])
def test_truncated_attribute_header_is_refused(size: int) -> None:
    """1-3 bytes after the last attribute (too few for an nlattr) raise ProtocolError."""
    payload = netlink.attr(1, b"abcd") + b"\x05\x00\x01"[:size]
    with pytest.raises(ProtocolError):
        attrs_of(payload)


def test_family_header_then_attributes_start_aligned() -> None:
    """Attributes start after the family header rounded up to 4 bytes."""
    payload = b"\x02\0\0\0\0" + b"\0" * 3 + netlink.attr(9, netlink.u16(77))
    assert attrs_of(payload, 5).u16(9) == 77
    assert attrs_of(payload, 8).u16(9) == 77


def nested_payload(inner: bytes, after: bytes = b"") -> bytes:
    """A payload: attribute 1 holding inner as is, then after."""
    return raw_attr(NLA.size + len(inner), 1 | NLA_F_NESTED, inner) + \
        b"\0" * (-len(inner) % 4) + after


@pytest.mark.parametrize("inner", [
    pytest.param(b"\x01\x02\x03", id="too-short-for-a-header"),
    pytest.param(raw_attr(2, 1) + b"\0\0", id="inner-shorter-than-its-header"),
    pytest.param(raw_attr(12, 1, b"abcd"), id="inner-past-its-parent"),
    pytest.param(netlink.attr(1, b"abcd") + b"\x09\x00", id="trailing-bytes"),
])
def test_bad_nesting_is_refused(inner: bytes) -> None:
    """nested() on an attribute whose contents are not well-formed attributes raises
    ProtocolError, even where the bytes after the parent (here another attribute)
    would have made an inner length look valid; the outer level stays readable."""
    attrs = attrs_of(nested_payload(inner, netlink.attr(2, b"more") * 3))
    assert attrs[2] == b"more"
    with pytest.raises(ProtocolError):
        inner_attrs = attrs.nested(1)
        for t in inner_attrs:
            inner_attrs.all(t)


def test_typed_getters_decode_values() -> None:
    """Each typed getter decodes a value of its own size; str() drops the NUL; ip()
    gives IPv4 and IPv6 text; mac() gives aa:bb:...; types are masked of
    NLA_F_NESTED and NLA_F_NET_BYTEORDER; a missing type is a KeyError (get: None)."""
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    payload = b"".join([
        netlink.attr(1, netlink.u8(200)), netlink.attr(2, netlink.u16(65000)),
        netlink.attr(3, netlink.u32(4_000_000_000)), netlink.attr(4, netlink.u64(2**63 + 5)),
        netlink.attr(5, netlink.s32(-123456)), netlink.attr(6, netlink.string("veth0")),
        netlink.attr(7, socket.inet_aton("192.0.2.1")), netlink.attr(8, v6),
        netlink.attr(9, bytes.fromhex("02005e1000ff")),
        netlink.attr(10 | NLA_F_NET_BYTEORDER, b"\x00\x50"),
    ])
    attrs = attrs_of(payload)
    assert len(attrs) == 10 and list(attrs) == list(range(1, 11))
    assert (attrs.u8(1), attrs.u16(2), attrs.u32(3), attrs.u64(4), attrs.s32(5)) == (
        200, 65000, 4_000_000_000, 2**63 + 5, -123456)
    assert attrs.str(6) == "veth0"
    assert attrs.ip(7) == "192.0.2.1" and attrs.ip(8) == "2001:db8::1"
    assert attrs.mac(9) == "02:00:5e:10:00:ff"
    assert 10 in attrs and attrs[10] == b"\x00\x50"
    assert 11 not in attrs and attrs.get(11) is None
    with pytest.raises(KeyError):
        attrs[11]
    with pytest.raises(KeyError):
        attrs.u32(11)


GETTERS: dict[str, tuple[Callable[[Attrs, int], Any], set[int]]] = {
    "u8": (Attrs.u8, {1}), "u16": (Attrs.u16, {2}), "u32": (Attrs.u32, {4}),
    "s32": (Attrs.s32, {4}), "u64": (Attrs.u64, {8}), "ip": (Attrs.ip, {4, 16}),
    "mac": (Attrs.mac, set(range(33))),  # up to MAX_ADDR_LEN
}


@pytest.mark.parametrize("getter", list(GETTERS))
@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 17, 32, 33, 64])
def test_typed_getter_of_the_wrong_size_is_refused(getter: str, size: int) -> None:
    """A typed getter on an attribute of another size raises ProtocolError instead of
    reading a part of it or past it."""
    get, sizes = GETTERS[getter]
    attrs = attrs_of(netlink.attr(1, bytes(range(1, size + 1))))
    if size in sizes:
        get(attrs, 1)
    else:
        with pytest.raises(ProtocolError):
            get(attrs, 1)


def test_repeated_attributes() -> None:
    """Repeated attributes: a[t] and get(t) are the last, all(t) every one in order;
    len() counts every attribute and iteration gives each type once."""
    attrs = attrs_of(netlink.attr(7, b"one") + netlink.attr(2, b"x")
                     + netlink.attr(7, b"two") + netlink.attr(7, b"three"))
    assert attrs.all(7) == [b"one", b"two", b"three"]
    assert attrs[7] == attrs.get(7) == b"three"
    assert attrs.all(2) == [b"x"] and attrs.all(3) == []
    assert len(attrs) == 4
    assert sorted(attrs) == [2, 7]


# ---------------------------------------------------------------------------
# Hypothesis: random valid datagrams parse back exactly

Tree = tuple[int, int, bytes] | tuple[int, list["Tree"]]  # leaf: type, flag, value

types = st.integers(1, 0x3FFF)
values = st.one_of(
    st.binary(max_size=40),
    st.integers(0, 255).map(netlink.u8), st.integers(0, 2**16 - 1).map(netlink.u16),
    st.integers(0, 2**32 - 1).map(netlink.u32), st.integers(0, 2**64 - 1).map(netlink.u64),
    st.integers(-(2**31), 2**31 - 1).map(netlink.s32),
    st.text(max_size=20).filter(lambda s: "\0" not in s).map(netlink.string),
)
leaves = st.tuples(st.integers(1, 40) | types, st.sampled_from([0, NLA_F_NET_BYTEORDER]),
                   values)
trees = st.recursive(
    leaves, lambda children: st.tuples(st.integers(1, 40) | types,
                                       st.lists(children, max_size=6)),
    max_leaves=25)


def encode(node: Tree) -> bytes:
    if len(node) == 3:
        type, flag, value = node
        return netlink.attr(type | flag, value)
    type, children = node
    return netlink.nested(type, [encode(c) for c in children])


def value_of(node: Tree) -> bytes:
    """The value bytes attribute node carries (for a nest: its children, encoded)."""
    if len(node) == 3:
        return node[2]
    return b"".join(encode(c) for c in node[1])


def check(attrs: Attrs, nodes: list[Tree]) -> None:
    """attrs holds exactly nodes: every value, repeated ones in order, nests checked
    to the bottom through nested()."""
    assert len(attrs) == len(nodes)
    by_type: dict[int, list[Tree]] = {}
    for node in nodes:
        by_type.setdefault(node[0], []).append(node)
    assert sorted(attrs) == sorted(by_type)
    for type, same in by_type.items():
        assert type in attrs
        assert attrs.all(type) == [value_of(n) for n in same]
        last = same[-1]
        assert attrs[type] == attrs.get(type) == value_of(last)
        if len(last) == 2:
            check(attrs.nested(type), last[1])
        else:
            value = last[2]
            for getter, (get, sizes) in GETTERS.items():
                if len(value) in sizes:
                    expected = {"u8": "=B", "u16": "=H", "u32": "=I", "s32": "=i",
                                "u64": "=Q"}.get(getter)
                    if expected is not None:
                        assert get(attrs, type) == struct.unpack(expected, value)[0]
                else:
                    with pytest.raises(ProtocolError):
                        get(attrs, type)


messages = st.tuples(
    st.integers(0, 2**16 - 1), st.integers(0, 2**16 - 1),
    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
    st.binary(max_size=20), st.lists(trees, max_size=8))


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, min_size=1, max_size=4))
def test_random_valid_datagrams_parse_back_exactly(
        specs: list[tuple[int, int, int, int, bytes, list[Tree]]]) -> None:
    """Datagrams of 1-4 messages with random header fields, a family header of 0-20
    bytes and random attributes (repeated, nested, byte-order-flagged) built with the
    encoders parse back to the same fields, payloads and values."""
    data = b""
    for type, flags, seq, pid, header, nodes in specs:
        payload = header + b"\0" * (-len(header) % 4) + b"".join(encode(n) for n in nodes)
        data += message(type, flags, seq, pid, payload)
    msgs = netlink.parse(data)
    assert len(msgs) == len(specs)
    for msg, (type, flags, seq, pid, header, nodes) in zip(msgs, specs, strict=True):
        assert (msg.type, msg.flags, msg.seq, msg.pid) == (type, flags, seq, pid)
        assert msg.payload[:len(header)] == header
        check(msg.attrs(len(header)), nodes)


def walk(attrs: Attrs, depth: int = 0) -> None:
    """Read every value of attrs, and try every one as a nest."""
    for t in attrs:
        attrs.all(t)
        for get, _ in GETTERS.values():
            with contextlib.suppress(ProtocolError):
                get(attrs, t)
        if depth < 3:
            try:
                inner = attrs.nested(t)
            except ProtocolError:
                continue
            walk(inner, depth + 1)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 24))
def test_random_bytes_raise_nothing_but_protocol_error(data: bytes, hdrlen: int) -> None:
    """Whatever the bytes, parse() and everything reachable from its messages either
    work or raise ProtocolError; nothing else comes out, nothing crashes."""
    try:
        msgs = netlink.parse(data)
    except ProtocolError:
        return
    for msg in msgs:
        assert len(msg.payload) <= len(data) - 16
        try:
            attrs = msg.attrs(hdrlen)
        except ProtocolError:
            continue
        with contextlib.suppress(ProtocolError):
            walk(attrs)


@settings(max_examples=300, deadline=None)
@given(st.lists(trees, min_size=1, max_size=6), st.data())
def test_random_truncations_raise_protocol_error(nodes: list[Tree], data: Any) -> None:
    """A valid datagram whose nlmsg_len is raised past the end raises ProtocolError;
    a message whose last attribute is cut (nlmsg_len lowered into it) either parses to
    attributes that all lie inside the message or raises ProtocolError."""
    payload = b"".join(encode(n) for n in nodes)
    whole = message(payload=payload)
    longer = NLMSGHDR.pack(len(whole) + data.draw(st.integers(1, 64)), 16, 0, 0, 0) + whole[16:]
    with pytest.raises(ProtocolError):
        netlink.parse(longer)
    cut = data.draw(st.integers(0, len(payload)))
    short = NLMSGHDR.pack(16 + cut, 16, 0, 0, 0) + payload[:cut]
    (msg,) = netlink.parse(short)
    assert msg.payload == payload[:cut]
    try:
        attrs = msg.attrs(0)
    except ProtocolError:
        return
    total = sum(4 + len(v) + (-len(v) % 4) for t in attrs for v in attrs.all(t))
    assert total - cut < 4  # the last attribute's padding may be past a cut


# ---------------------------------------------------------------------------
# Inputs the fuzzer (fuzz/run.py) found, each kept as it was found


@pytest.mark.parametrize("data", [
    # error_of target: an NLMSG_DONE whose error code is INT_MIN. Negated, it is
    # no C int, and NetlinkError's strerror raised OverflowError.
    pytest.param(bytes.fromhex("1400000003000200010000909f37000000000080"), id="done-int-min"),
])
def test_fuzzer_finding_error_code_outside_errno_range(data: bytes) -> None:
    """An error code below -MAX_ERRNO (4095) is malformed: ProtocolError, for an
    NLMSG_DONE and an NLMSG_ERROR alike, while -4095 is still an errno."""
    (msg,) = netlink.parse(data)
    with pytest.raises(ProtocolError):
        netlink.error_of(msg)
    for code, type in [(-(2**31), netlink.NLMSG_ERROR), (-4096, netlink.NLMSG_DONE)]:
        (msg,) = netlink.parse(message(type, payload=struct.pack("=i", code) + b"\0" * 16))
        with pytest.raises(ProtocolError):
            netlink.error_of(msg)
    (msg,) = netlink.parse(message(netlink.NLMSG_ERROR, payload=struct.pack("=i", -4095)
                                   + b"\0" * 16))
    error = netlink.error_of(msg)
    assert error is not None and error.errno == 4095
