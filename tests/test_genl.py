"""latchwire.genl against the real kernel's nlctrl.

The oracle is iproute2's ``genl`` tool: ``genl ctrl list`` and ``genl ctrl get
name X`` print what nlctrl says about each family, and every field it prints
(id, version, header size, max attribute, operation ids and flags, multicast
group names and ids) must match what ``genl.resolve`` and ``genl.families``
decode. Namespace tests make their own namespace (``ip netns add
lwtest-genl-<random>``), removed afterwards; there the kernel shows only the
families that support namespaces, and ``ip netns exec NS genl`` is the oracle.
Group membership is read back from the kernel's own table, /proc/net/netlink.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from lwtest import BOUND, need

from latchwire import genl, netlink
from latchwire.errors import NetlinkError, ProtocolError
from latchwire.netlink import Message, Socket

pytestmark = [pytest.mark.usefixtures("watchdog"), pytest.mark.kernel]

GENL = shutil.which("genl")
IP = shutil.which("ip")
NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
GENL_MAX_ID = 1023  # linux/genetlink.h: no family can have a larger id


# ---------------------------------------------------------------------------
# The oracle: iproute2's genl


@dataclass
class Listed:
    """A family as ``genl ctrl`` prints it. An operation's flags are None where the
    tool leaves them out: it prints them only for families of version 2 or more."""

    name: str
    id: int = -1
    version: int = -1
    hdrsize: int = -1
    maxattr: int = -1
    operations: list[tuple[int, int | None]] = field(default_factory=list)
    groups: dict[str, int] = field(default_factory=dict)


FAMILY_LINE = re.compile(r"ID: 0x([0-9a-f]+)\s+Version: 0x([0-9a-f]+)\s+"
                         r"header size: (\d+)\s+max attribs: (\d+)$")
OPERATION_LINE = re.compile(r"#\d+:\s+ID-0x([0-9a-f]+)$")
FLAGS_LINE = re.compile(r"Capabilities \(0x([0-9a-f]+)\):$")
GROUP_LINE = re.compile(r"#\d+:\s+ID-0x([0-9a-f]+)\s+name: (\S+)$")


def genl_ctrl(*args: str, prefix: Sequence[str] = ()) -> dict[str, Listed]:
    """Run ``genl ctrl ARGS`` (after the command prefix, e.g. ``ip netns exec NS``)
    and parse what it prints: family name -> Listed."""
    need(GENL is not None, "iproute2's genl tool is not installed")
    assert GENL is not None
    done = subprocess.run([*prefix, GENL, "ctrl", *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, f"genl ctrl {' '.join(args)}: {done.stderr.strip()}"
    listed: dict[str, Listed] = {}
    current: Listed | None = None
    for line in done.stdout.splitlines():
        text = line.strip()
        if text.startswith("Name: "):
            current = listed[text[6:]] = Listed(text[6:])
            continue
        if not text or text in ("commands supported:", "multicast groups:") \
                or text.startswith("can ") or text.startswith("requires "):
            continue
        assert current is not None, f"genl printed {line!r} before any family"
        if m := FAMILY_LINE.match(text):
            current.id, current.version = int(m[1], 16), int(m[2], 16)
            current.hdrsize, current.maxattr = int(m[3]), int(m[4])
        elif m := GROUP_LINE.match(text):
            current.groups[m[2]] = int(m[1], 16)
        elif m := OPERATION_LINE.match(text):
            current.operations.append((int(m[1], 16), None))
        elif m := FLAGS_LINE.match(text):
            op_id, _ = current.operations[-1]
            current.operations[-1] = (op_id, int(m[1], 16))
        else:
            raise AssertionError(f"genl printed a line this parser does not know: {line!r}")
    return listed


def assert_same(family: genl.Family, listed: Listed) -> None:
    """Fail unless family matches everything genl printed about it, field by field."""
    assert (family.name, family.id, family.version, family.hdrsize, family.maxattr) == (
        listed.name, listed.id, listed.version, listed.hdrsize, listed.maxattr)
    assert [op.id for op in family.operations] == [op_id for op_id, _ in listed.operations]
    if family.version >= 2:
        assert [(op.id, op.flags) for op in family.operations] == listed.operations
    else:
        assert all(flags is None for _, flags in listed.operations)
    assert family.groups == listed.groups


def resolve_present(name: str) -> genl.Family:
    """genl.resolve(name); the test is skipped if this kernel has no such family."""
    try:
        return genl.resolve(name, timeout=BOUND)
    except NetlinkError as err:
        if err.errno != errno.ENOENT:
            raise
        pytest.skip(f"this kernel has no {name} generic netlink family")


# ---------------------------------------------------------------------------
# Resolution


def test_nlctrl_resolves_to_its_fixed_id_with_the_notify_group() -> None:
    nlctrl = genl.resolve("nlctrl", timeout=BOUND)
    assert nlctrl.name == "nlctrl"
    assert nlctrl.id == genl.GENL_ID_CTRL == 16
    assert nlctrl.groups["notify"] == genl.GENL_ID_CTRL  # nlctrl's group has a fixed id too
    getfamily = {op.id: op.flags for op in nlctrl.operations}[genl.CTRL_CMD_GETFAMILY]
    assert getfamily & genl.GENL_CMD_CAP_DO and getfamily & genl.GENL_CMD_CAP_DUMP


@pytest.mark.parametrize("name", ["nlctrl", "ethtool", "devlink"])
def test_resolve_matches_genl_ctrl_get(name: str) -> None:
    family = resolve_present(name)
    assert_same(family, genl_ctrl("get", "name", name)[name])


def test_families_match_genl_ctrl_list() -> None:
    found = genl.families(timeout=BOUND)
    listed = genl_ctrl("list")
    assert {(f.name, f.id) for f in found} == {(x.name, x.id) for x in listed.values()}
    for family in found:
        assert_same(family, listed[family.name])
    assert len(set(found)) == len(found)  # records are hashable, and all differ
    # The comparison covered operation flags (printed for version >= 2) and groups.
    assert any(f.version >= 2 and f.operations for f in found)
    assert any(f.groups for f in found)


def test_each_family_resolves_by_name_to_its_dump_entry() -> None:
    with Socket(netlink.NETLINK_GENERIC) as sock:
        for family in genl.families(sock=sock, timeout=BOUND):
            assert genl.resolve(family.name, sock=sock, timeout=BOUND) == family


def test_unknown_family_is_enoent_naming_it() -> None:
    name = f"lwtest-{secrets.token_hex(4)}"
    with pytest.raises(NetlinkError) as raised:
        genl.resolve(name, timeout=BOUND)
    assert raised.value.errno == errno.ENOENT
    assert repr(name) in str(raised.value)


def test_a_name_too_long_for_a_family_is_refused_by_the_kernel() -> None:
    with pytest.raises(NetlinkError) as raised:
        genl.resolve("x" * genl.GENL_NAMSIZ, timeout=BOUND)
    assert raised.value.errno == errno.EINVAL
    assert raised.value.msg  # the kernel's policy says why (extended ACK)


def test_a_callers_socket_is_used_and_left_open() -> None:
    with Socket(netlink.NETLINK_GENERIC) as sock:
        assert genl.resolve("nlctrl", sock=sock, timeout=BOUND).id == genl.GENL_ID_CTRL
        assert genl.families(sock=sock, timeout=BOUND)
        assert genl.resolve("nlctrl", sock=sock, timeout=BOUND).id == genl.GENL_ID_CTRL


def test_a_socket_of_another_protocol_or_with_a_namespace_is_refused() -> None:
    with Socket(netlink.NETLINK_ROUTE) as route, pytest.raises(ValueError, match="GENERIC"):
        genl.resolve("nlctrl", sock=route)
    with Socket(netlink.NETLINK_GENERIC) as sock, pytest.raises(ValueError, match="not both"):
        genl.families(netns="lwtest-none", sock=sock)


# ---------------------------------------------------------------------------
# Requests and headers


def test_request_carries_the_family_id_command_and_version() -> None:
    family = genl.Family("demo", 40, 3, 0, 7, (), {})
    req = genl.request(family, 5, attrs=netlink.attr(1, netlink.u32(9)), flags=netlink.NLM_F_ECHO)
    assert (req.type, req.flags, req.header) == (40, netlink.NLM_F_ECHO, bytes([5, 3, 0, 0]))
    assert req.attrs == netlink.attr(1, netlink.u32(9))
    assert genl.request(family, 5, version=1).header == bytes([5, 1, 0, 0])
    assert genl.request(41, 6).header == bytes([6, 1, 0, 0])  # a bare id: version 1


@pytest.mark.parametrize("name", ["nlctrl", "ethtool"])
def test_getfamily_by_id_round_trips(name: str) -> None:
    nlctrl = genl.resolve("nlctrl", timeout=BOUND)
    family = resolve_present(name)
    with Socket(netlink.NETLINK_GENERIC) as sock:
        reply = sock.transact(genl.request(nlctrl, genl.CTRL_CMD_GETFAMILY,
                                           netlink.attr(genl.CTRL_ATTR_FAMILY_ID,
                                                        netlink.u16(family.id))), BOUND)
    assert reply is not None
    assert reply.type == genl.GENL_ID_CTRL
    assert genl.header(reply) == (genl.CTRL_CMD_NEWFAMILY, nlctrl.version)
    assert genl.Family.from_message(reply) == family


def test_getfamily_by_an_unused_id_is_enoent() -> None:
    nlctrl = genl.resolve("nlctrl", timeout=BOUND)
    with Socket(netlink.NETLINK_GENERIC) as sock, pytest.raises(NetlinkError) as raised:
        sock.transact(genl.request(nlctrl, genl.CTRL_CMD_GETFAMILY,
                                   netlink.attr(genl.CTRL_ATTR_FAMILY_ID,
                                                netlink.u16(GENL_MAX_ID))), BOUND)
    assert raised.value.errno == errno.ENOENT


def test_a_dump_built_with_request_gives_the_families() -> None:
    with Socket(netlink.NETLINK_GENERIC) as sock:
        dumped = [genl.Family.from_message(msg) for msg in
                  sock.dump(genl.request(genl.GENL_ID_CTRL, genl.CTRL_CMD_GETFAMILY),
                            timeout=BOUND)]
    assert dumped == genl.families(timeout=BOUND)


# ---------------------------------------------------------------------------
# Malformed messages


def message(payload: bytes, type: int = genl.GENL_ID_CTRL) -> Message:
    """A received-style Message of type carrying payload."""
    (msg,) = netlink.parse(NLMSGHDR.pack(NLMSGHDR.size + len(payload), type, 0, 1, 0) + payload)
    return msg


def family_message(cmd: int = genl.CTRL_CMD_NEWFAMILY, drop: int = -1,
                   id_value: bytes = netlink.u16(30), type: int = genl.GENL_ID_CTRL) -> Message:
    """An nlctrl family message for "demo" (id 30, version 2), without attribute drop."""
    attrs = {
        genl.CTRL_ATTR_FAMILY_ID: id_value,
        genl.CTRL_ATTR_FAMILY_NAME: netlink.string("demo"),
        genl.CTRL_ATTR_VERSION: netlink.u32(2),
        genl.CTRL_ATTR_HDRSIZE: netlink.u32(0),
        genl.CTRL_ATTR_MAXATTR: netlink.u32(4),
    }
    body = b"".join(netlink.attr(t, v) for t, v in attrs.items() if t != drop)
    return message(genl.GENLMSGHDR.pack(cmd, 2, 0) + body, type)


def test_header_reads_cmd_and_version() -> None:
    assert genl.header(message(bytes([7, 2, 0, 0]))) == (7, 2)


@pytest.mark.parametrize("size", range(genl.GENL_HDRLEN))
def test_header_of_a_truncated_genlmsghdr_is_a_protocol_error(size: int) -> None:
    with pytest.raises(ProtocolError, match="genlmsghdr"):
        genl.header(message(bytes([3, 2, 0, 0])[:size]))


def test_a_minimal_family_message_decodes() -> None:
    assert genl.Family.from_message(family_message()) == genl.Family("demo", 30, 2, 0, 4, (), {})


@pytest.mark.parametrize("attr", [genl.CTRL_ATTR_FAMILY_ID, genl.CTRL_ATTR_FAMILY_NAME,
                                  genl.CTRL_ATTR_VERSION, genl.CTRL_ATTR_HDRSIZE,
                                  genl.CTRL_ATTR_MAXATTR])
def test_a_family_message_without_a_field_is_a_protocol_error(attr: int) -> None:
    with pytest.raises(ProtocolError, match=f"without attribute {attr}"):
        genl.Family.from_message(family_message(drop=attr))


def test_family_messages_of_the_wrong_kind_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="not nlctrl"):
        genl.Family.from_message(family_message(type=genl.GENL_ID_CTRL + 1))
    with pytest.raises(ProtocolError, match="does not describe a family"):
        genl.Family.from_message(family_message(cmd=genl.CTRL_CMD_GETFAMILY))
    with pytest.raises(ProtocolError, match="bytes"):
        genl.Family.from_message(family_message(id_value=netlink.u32(30)))


def test_every_truncation_of_a_real_reply_is_a_protocol_error_or_a_family() -> None:
    """Cut the kernel's own description of nlctrl short at every byte: the decoder
    either raises ProtocolError or (cut at the end of an attribute that leaves
    every required field) decodes a family; nothing else escapes."""
    with Socket(netlink.NETLINK_GENERIC) as sock:
        reply = sock.transact(genl.request(genl.GENL_ID_CTRL, genl.CTRL_CMD_GETFAMILY,
                                           netlink.attr(genl.CTRL_ATTR_FAMILY_NAME,
                                                        netlink.string("nlctrl"))), BOUND)
    assert reply is not None
    refused = 0
    for size in range(len(reply.payload)):
        try:
            genl.Family.from_message(message(reply.payload[:size]))
        except ProtocolError:
            refused += 1
    assert refused >= genl.GENL_HDRLEN  # at least every cut inside the genlmsghdr
    assert genl.Family.from_message(message(reply.payload)) == genl.Family.from_message(reply)


# ---------------------------------------------------------------------------
# Namespaces and multicast groups


def test_families_in_a_namespace_match_genl_there(genl_netns: str) -> None:
    """Outside the initial namespace the kernel shows only the families that support
    namespaces: what genl.families(netns=...) sees must be what genl sees run there."""
    assert IP is not None
    inside = genl.families(netns=genl_netns, timeout=BOUND)
    listed = genl_ctrl("list", prefix=[IP, "netns", "exec", genl_netns])
    assert {(f.name, f.id) for f in inside} == {(x.name, x.id) for x in listed.values()}
    for family in inside:
        assert_same(family, listed[family.name])
    host = {family.name: family for family in genl.families(timeout=BOUND)}
    assert all(host[family.name] == family for family in inside)  # ids are global
    for name in host.keys() - {family.name for family in inside}:
        with pytest.raises(NetlinkError) as raised:
            genl.resolve(name, netns=genl_netns, timeout=BOUND)
        assert raised.value.errno == errno.ENOENT


def test_resolve_in_a_namespace_by_name_and_by_descriptor(genl_netns: str) -> None:
    nlctrl = genl.resolve("nlctrl", timeout=BOUND)
    assert genl.resolve("nlctrl", netns=genl_netns, timeout=BOUND) == nlctrl
    fd = os.open(f"/run/netns/{genl_netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert genl.resolve("nlctrl", netns=fd, timeout=BOUND) == nlctrl
        os.fstat(fd)  # the caller's descriptor is still open
    finally:
        os.close(fd)


def test_a_missing_namespace_is_file_not_found() -> None:
    with pytest.raises(FileNotFoundError):
        genl.resolve("nlctrl", netns=f"lwtest-genl-missing-{secrets.token_hex(4)}")


def kernel_groups(pid: int) -> int:
    """The first 32 multicast groups (bit g-1 for group g) of the generic netlink
    socket with port id pid, from the kernel's /proc/net/netlink."""
    with open("/proc/net/netlink") as f:
        rows = [line.split() for line in f][1:]
    (groups,) = [int(row[3], 16) for row in rows
                 if int(row[1]) == netlink.NETLINK_GENERIC and int(row[2]) == pid]
    return groups


def test_joining_a_resolved_group_shows_in_the_kernel_table() -> None:
    notify = genl.resolve("nlctrl", timeout=BOUND).groups["notify"]
    assert notify <= 32  # within what /proc/net/netlink shows
    with Socket(netlink.NETLINK_GENERIC) as sock:
        assert kernel_groups(sock.pid) == 0
        sock.join_group(notify)
        assert kernel_groups(sock.pid) == 1 << (notify - 1)
        # A member socket still resolves (its transactions use a group-free channel).
        assert genl.resolve("nlctrl", sock=sock, timeout=BOUND).groups["notify"] == notify
        sock.leave_group(notify)
        assert kernel_groups(sock.pid) == 0
