"""Capture a seed corpus for the fuzz targets from the real kernel.

``python fuzz/seed.py [DIR]`` (root, iproute2's ``ip``) makes a private network
namespace with a bridge, a veth pair, IPv4 and IPv6 addresses and routes (a
multipath one among them), then, through ``latchwire.netlink.Socket``, dumps
its links, addresses, routes and neighbours and provokes a few answers
(errors with extended-ACK text, a plain ACK), and writes every datagram the
kernel sent as one file of DIR (default ``build/fuzz/seeds``). The namespace
is deleted afterwards, whatever happened.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from latchwire import genl, netlink
from latchwire.netlink import Message, Request, Socket

IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope,
#                                      type, flags
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
NLMSGHDR = struct.Struct("=IHHII")
RTM_GETNEIGH = 30
RTA_DST = 1
RTA_OIF = 4
TIMEOUT = 5.0  # the bound on each wait for the kernel

SETUP = [
    "link set lo up",
    "link add br0 type bridge",
    "link add veth0 type veth peer name veth1",
    "link set veth1 master br0",
    "link set veth0 up", "link set veth1 up", "link set br0 up",
    "addr add 192.0.2.1/24 dev veth0",
    "addr add 198.51.100.1/24 brd + dev br0 label br0:lw",
    "addr add 2001:db8::1/64 dev veth0 nodad",
    "route add 203.0.113.0/24 via 192.0.2.2 dev veth0 metric 50 proto static",
    "route add 10.9.0.0/16 nexthop via 192.0.2.2 weight 1 nexthop via 198.51.100.2 weight 3",
    "route add 10.8.0.0/16 dev veth0 table 100 src 192.0.2.1",
    "route add blackhole 10.7.0.0/16",
    "route add 2001:db8:1::/48 via 2001:db8::2 dev veth0",
    "neigh add 192.0.2.2 lladdr 02:00:00:00:00:02 dev veth0",
]


def datagram(msgs: list[Message]) -> bytes:
    """The bytes of the datagram msgs were parsed from (padding as zeros)."""
    out = b""
    for msg in msgs:
        body = msg.payload
        out += NLMSGHDR.pack(NLMSGHDR.size + len(body), msg.type, msg.flags, msg.seq,
                             msg.pid) + body + b"\0" * (-len(body) % 4)
    return out


def answers(sock: Socket, request: Request, flags: int) -> Iterator[bytes]:
    """Send request with flags; each datagram of the answer until it ends (a dump's
    NLMSG_DONE, or the NLMSG_ERROR an ACK or error is)."""
    seq = sock.send(request, flags)
    while True:
        msgs = sock.recv(TIMEOUT)
        yield datagram(msgs)
        if any(m.seq == seq and m.type in (netlink.NLMSG_DONE, netlink.NLMSG_ERROR)
               for m in msgs):
            return


def requests() -> Iterator[tuple[Request, int]]:
    """The dumps and transactions whose answers make the seeds."""
    dump = netlink.NLM_F_DUMP
    yield Request(netlink.RTM_GETLINK, header=IFINFOMSG.pack(0, 0, 0, 0, 0)), dump
    yield Request(netlink.RTM_GETADDR, header=IFADDRMSG.pack(0, 0, 0, 0, 0)), dump
    for family in (socket.AF_INET, socket.AF_INET6):
        yield Request(netlink.RTM_GETROUTE, header=RTMSG.pack(family, *[0] * 8)), dump
    yield Request(RTM_GETNEIGH, header=NDMSG.pack(0, 0, 0, 0, 0)), dump
    # Refused with an extended-ACK text: host bits set in the prefix.
    bad_prefix = Request(netlink.RTM_NEWROUTE, netlink.NLM_F_CREATE,
                         RTMSG.pack(socket.AF_INET, 24, 0, 0, 254, 4, 0, 1, 0),
                         netlink.attr(RTA_DST, socket.inet_aton("10.0.0.1"))
                         + netlink.attr(RTA_OIF, netlink.u32(1)))
    yield bad_prefix, netlink.NLM_F_ACK
    # Refused without text (no such link), then a plain ACK (lo set up again).
    yield Request(netlink.RTM_GETLINK, header=IFINFOMSG.pack(0, 0, 99999, 0, 0)), netlink.NLM_F_ACK
    yield Request(netlink.RTM_NEWLINK, header=IFINFOMSG.pack(0, 0, 1, 1, 1)), netlink.NLM_F_ACK


def generic_requests() -> Iterator[tuple[Request, int]]:
    """The generic netlink dumps whose answers make seeds: nlctrl's families."""
    yield genl.request(genl.GENL_ID_CTRL, genl.CTRL_CMD_GETFAMILY), netlink.NLM_F_DUMP


def capture(name: str, out: Path) -> int:
    """Write every datagram of the answers in namespace name to out; how many."""
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for protocol, asked in ((netlink.NETLINK_ROUTE, requests()),
                            (netlink.NETLINK_GENERIC, generic_requests())):
        with Socket(protocol, netns=name) as sock:
            for request, flags in asked:
                for data in answers(sock, request, flags):
                    (out / hashlib.sha1(data).hexdigest()).write_bytes(data)
                    count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", type=Path, default=Path("build/fuzz/seeds"))
    out = parser.parse_args().dir
    name = f"lwfuzz-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=60)
    try:
        subprocess.run(["ip", "-n", name, "-batch", "-"], input="\n".join(SETUP) + "\n",
                       text=True, check=True, timeout=60)
        count = capture(name, out)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=60)
    print(f"{count} datagrams from the kernel written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
