"""Network namespaces for the netlink parts: made, filled with routes and veth links by
iproute2's ``ip -batch``, deleted afterwards; a plain Python netlink socket made in
one; and whether this process may make them at all (root and ``ip``).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from latchwire import netlink, rtnl

CLONE_NEWNET = 0x40000000
BASE_LINKS = 3  # lo and the veth pair bench_netns() makes


def ip(*args: str) -> None:
    """Run iproute2's ip; RuntimeError with its message if it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@contextmanager
def bench_netns() -> Iterator[str]:
    """A new network namespace, with a veth pair up in it; deleted on the way out."""
    name = f"lwbench-{os.urandom(4).hex()}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        ip("-n", name, "link", "set", "veth0", "up")
        ip("-n", name, "link", "set", "veth1", "up")
        yield name
    finally:
        result = subprocess.run(["ip", "netns", "delete", name], capture_output=True,
                                text=True, check=False)
        if result.returncode != 0:
            print(f"dump: could not delete network namespace {name}: "
                  f"{result.stderr.strip()}", file=sys.stderr)


def load_routes(netns: str, start: int, stop: int, workdir: Path,
                table: int = rtnl.RT_TABLE_MAIN) -> None:
    """Add routes start..stop-1 (10.X.Y.Z/32 dev veth0, in table) with one ip -batch."""
    batch = workdir / f"routes-{start}-{stop}"
    batch.write_text("".join(f"route add 10.{i >> 16}.{(i >> 8) & 255}.{i & 255}/32 dev veth0 "
                             f"table {table}\n" for i in range(start, stop)))
    ip("-n", netns, "-batch", str(batch))


def socket_in_netns(netns: str) -> socket.socket:
    """A plain Python NETLINK_ROUTE socket made in netns, connected to the kernel.

    This thread hops into the namespace with libc's setns() (os.setns() is
    Python 3.12+), makes the socket and hops back: a socket stays in the
    namespace it was made in, and nothing else runs in between.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(os.path.join("/run/netns", netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_ROUTE)
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back: this thread is lost in "
                              f"namespace {netns}")
    finally:
        os.close(target)
        os.close(home)
    sock.connect((0, 0))
    return sock


def netns_capable(part: str) -> bool:
    """Whether this process can make network namespaces (root and iproute2's `ip`); if
    not, part says it is skipped and why."""
    if os.geteuid() == 0 and shutil.which("ip") is not None:
        return True
    print(f"{part}: skipped: it needs root and iproute2's `ip` (it makes a network "
          "namespace and fills it)\n", file=sys.stderr, flush=True)
    return False


def load_veths(netns: str, pairs: int, workdir: Path) -> None:
    """Add veth pairs lwaN <-> lwbN for N < pairs (left down) with one ip -batch."""
    batch = workdir / f"veths-{pairs}"
    batch.write_text("".join(f"link add lwa{i} type veth peer name lwb{i}\n"
                             for i in range(pairs)))
    ip("-n", netns, "-batch", str(batch))
