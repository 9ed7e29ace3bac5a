"""Generic netlink: family resolution through nlctrl, and genl messages.

A generic netlink family (``ethtool``, ``devlink``, ``nl80211``, ...) is known by
a name; the kernel gives it a message type number (its id), a version,
operations and multicast groups when it registers. ``resolve(name)`` asks the
kernel's controller family, ``nlctrl``, for one family and ``families()`` dumps
them all. ``request()`` builds a message for a resolved family (a generic
netlink header, ``struct genlmsghdr``, after the netlink header) to send with
``netlink.Socket.transact`` or ``dump``, and ``header()`` reads that header back
from a received message.

Family ids and group numbers are the same in every network namespace, but
outside the initial one the kernel shows only the families that support
namespaces (on Linux 6.18, for instance, ``ethtool`` and ``nlctrl`` but not
``thermal`` or ``VFS_DQUOT``): there the others are ENOENT.

Constants and layouts are those of ``linux/genetlink.h``.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field

from latchwire import netlink
from latchwire.errors import NetlinkError, ProtocolError
from latchwire.netlink import Attrs, Message, Request, Socket

__all__ = ["Family", "Operation", "families", "header", "request", "resolve"]

GENLMSGHDR = struct.Struct("=BBH")  # struct genlmsghdr: cmd, version, reserved
GENL_HDRLEN = GENLMSGHDR.size
GENL_NAMSIZ = 16  # a family name's size, NUL included

GENL_ID_CTRL = 16  # nlctrl's fixed id (NLMSG_MIN_TYPE)

# struct genl_ops flags, as CTRL_ATTR_OP_FLAGS reports them
GENL_ADMIN_PERM = 0x01
GENL_CMD_CAP_DO = 0x02
GENL_CMD_CAP_DUMP = 0x04
GENL_CMD_CAP_HASPOL = 0x08
GENL_UNS_ADMIN_PERM = 0x10

CTRL_CMD_UNSPEC = 0
CTRL_CMD_NEWFAMILY = 1
CTRL_CMD_DELFAMILY = 2
CTRL_CMD_GETFAMILY = 3
CTRL_CMD_NEWOPS = 4
CTRL_CMD_DELOPS = 5
CTRL_CMD_GETOPS = 6
CTRL_CMD_NEWMCAST_GRP = 7
CTRL_CMD_DELMCAST_GRP = 8
CTRL_CMD_GETMCAST_GRP = 9
CTRL_CMD_GETPOLICY = 10

CTRL_ATTR_UNSPEC = 0
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_VERSION = 3
CTRL_ATTR_HDRSIZE = 4
CTRL_ATTR_MAXATTR = 5
CTRL_ATTR_OPS = 6
CTRL_ATTR_MCAST_GROUPS = 7
CTRL_ATTR_POLICY = 8
CTRL_ATTR_OP_POLICY = 9
CTRL_ATTR_OP = 10

CTRL_ATTR_OP_UNSPEC = 0
CTRL_ATTR_OP_ID = 1
CTRL_ATTR_OP_FLAGS = 2

CTRL_ATTR_MCAST_GRP_UNSPEC = 0
CTRL_ATTR_MCAST_GRP_NAME = 1
CTRL_ATTR_MCAST_GRP_ID = 2


@dataclass(frozen=True)
class Operation:
    """One command a family serves: its number and GENL_* flags (GENL_CMD_CAP_DO, ...)."""

    id: int
    flags: int


@dataclass(frozen=True)
class Family:
    """A generic netlink family as nlctrl describes it.

    ``id`` is the netlink message type its messages carry; ``groups`` maps each
    multicast group's name to the number ``Socket.join_group`` takes.
    """

    name: str
    id: int
    version: int
    hdrsize: int
    maxattr: int
    operations: tuple[Operation, ...]
    groups: dict[str, int] = field(hash=False)

    @classmethod
    def from_message(cls, msg: Message) -> Family:
        """The family an nlctrl message describes: a CTRL_CMD_GETFAMILY reply or dump
        item, or a NEWFAMILY/DELFAMILY notification of nlctrl's "notify" group.

        ProtocolError if msg is no such message or lacks a field the kernel always sends.
        """
        if msg.type != GENL_ID_CTRL:
            raise ProtocolError(f"message type {msg.type} is not nlctrl's ({GENL_ID_CTRL})")
        cmd, _ = header(msg)
        if cmd not in (CTRL_CMD_NEWFAMILY, CTRL_CMD_DELFAMILY):
            raise ProtocolError(f"nlctrl command {cmd} does not describe a family")
        attrs = msg.attrs(GENL_HDRLEN)
        try:
            return cls(
                name=attrs.str(CTRL_ATTR_FAMILY_NAME),
                id=attrs.u16(CTRL_ATTR_FAMILY_ID),
                version=attrs.u32(CTRL_ATTR_VERSION),
                hdrsize=attrs.u32(CTRL_ATTR_HDRSIZE),
                maxattr=attrs.u32(CTRL_ATTR_MAXATTR),
                operations=tuple(Operation(op.u32(CTRL_ATTR_OP_ID), op.u32(CTRL_ATTR_OP_FLAGS))
                                 for op in _entries(attrs, CTRL_ATTR_OPS)),
                groups={group.str(CTRL_ATTR_MCAST_GRP_NAME): group.u32(CTRL_ATTR_MCAST_GRP_ID)
                        for group in _entries(attrs, CTRL_ATTR_MCAST_GROUPS)},
            )
        except KeyError as missing:
            raise ProtocolError(f"an nlctrl family message without attribute {missing}"
                                ) from None


def _entries(attrs: Attrs, t: int) -> list[Attrs]:
    """The entries of the nested list in attribute t (entry i is attribute i), in
    order; none if attrs has no attribute t."""
    if t not in attrs:
        return []
    entries = attrs.nested(t)
    return [entries.nested(i) for i in entries]


def header(msg: Message) -> tuple[int, int]:
    """(cmd, version) from the generic netlink header of msg; ProtocolError if too short."""
    payload = msg.payload
    if len(payload) < GENL_HDRLEN:
        raise ProtocolError(f"a generic netlink message of {len(payload)} bytes has no "
                            f"genlmsghdr ({GENL_HDRLEN} bytes)")
    cmd, version, _ = GENLMSGHDR.unpack_from(payload)
    return cmd, version


def request(family: Family | int, cmd: int, attrs: bytes = b"", flags: int = 0,
            version: int | None = None) -> Request:
    """A request for command cmd of family (a resolved Family, or a bare id), with attrs.

    ``version`` defaults to the Family's own, or 1 for a bare id. The socket
    fills in the rest of the netlink header, as for any ``netlink.Request``.
    """
    if isinstance(family, Family):
        msg_type, default_version = family.id, family.version
    else:
        msg_type, default_version = family, 1
    return Request(msg_type, flags=flags, attrs=attrs,
                   header=GENLMSGHDR.pack(cmd, default_version if version is None else version,
                                          0))


def _generic_socket(netns: str | int | None, sock: Socket | None) -> Socket:
    """The NETLINK_GENERIC socket to ask nlctrl through: sock, or a new one in netns.

    ValueError if sock is of another protocol, or comes with a netns too.
    """
    if sock is None:
        return Socket(netlink.NETLINK_GENERIC, netns=netns)
    if netns is not None:
        raise ValueError("pass either a socket or a namespace, not both")
    if sock.protocol != netlink.NETLINK_GENERIC:
        raise ValueError(f"a netlink socket of protocol {sock.protocol} is not NETLINK_GENERIC")
    return sock


def resolve(name: str, netns: str | int | None = None, sock: Socket | None = None,
            timeout: float | None = None) -> Family:
    """The family called name, from nlctrl (CTRL_CMD_GETFAMILY).

    Asked through sock (a NETLINK_GENERIC ``netlink.Socket``, left open) or a
    socket made for the call in namespace netns (a name under /run/netns or a
    namespace descriptor) and closed after. ``timeout`` bounds the wait for the
    kernel's answer (TimeoutError). NetlinkError with errno ENOENT, naming the
    family, if the kernel has no such family (its module may not be loaded, or,
    outside the initial namespace, it may not support namespaces); any other
    refusal (EINVAL for a name of GENL_NAMSIZ bytes or more) as the kernel's
    NetlinkError.
    """
    own = _generic_socket(netns, sock)
    try:
        reply = own.transact(_resolve_request(name), timeout)
    except NetlinkError as err:
        raise _resolve_error(name, err) from None
    finally:
        if own is not sock:
            own.close()
    return _resolved(name, reply)


def _resolve_request(name: str) -> Request:
    """The CTRL_CMD_GETFAMILY request for the family called name."""
    return request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY,
                   netlink.attr(CTRL_ATTR_FAMILY_NAME, netlink.string(name)))


def _resolve_error(name: str, err: NetlinkError) -> NetlinkError:
    """What resolve raises for nlctrl's refusal err: ENOENT names the family."""
    if err.errno != errno.ENOENT:
        return err
    return NetlinkError(errno.ENOENT, f"no generic netlink family named {name!r}", err.offset)


def _resolved(name: str, reply: Message | None) -> Family:
    """The Family of nlctrl's reply to _resolve_request(name)."""
    if reply is None:
        raise ProtocolError(f"nlctrl answered the request for family {name!r} with a bare ACK")
    return Family.from_message(reply)


def families(netns: str | int | None = None, sock: Socket | None = None,
             timeout: float | None = None) -> list[Family]:
    """Every family the kernel shows, in nlctrl's order (a CTRL_CMD_GETFAMILY dump):
    outside the initial namespace, only those that support namespaces.

    ``netns``, ``sock`` and ``timeout`` (per wait) as for ``resolve``; the dump
    is read whole and repeated if the kernel flags it inconsistent.
    """
    own = _generic_socket(netns, sock)
    try:
        return [Family.from_message(msg) for msg in
                own.dump(_families_request(), retries=3, timeout=timeout)]
    finally:
        if own is not sock:
            own.close()


def _families_request() -> Request:
    """The CTRL_CMD_GETFAMILY dump request of every family."""
    return request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY)
