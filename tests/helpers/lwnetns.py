"""Private network namespaces for the netlink and rtnetlink tests.

A ``Netns`` is made with ``ip netns add lwtest-...`` and driven with ``ip -n
NAME``: single commands, ``-batch`` files (thousands of changes in one ``ip``
process) and ``-j`` output, which is the oracle the tests check latchwire
against. ``make_netns`` skips (or, under ``LATCHWIRE_REQUIRE_KERNEL=1``, fails)
where namespaces cannot be made; ``drop_netns`` removes one. ``Churn`` keeps a
namespace changing from another thread, for the tests about lost notifications.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from lwtest import WAIT, need
from lwthreads import Worker

IP = shutil.which("ip")
RT_TABLE_MAIN = 254
RTN_UNICAST = 1

# What make_netns sets up unless told otherwise: lo up, veth0/veth1 up, 192.0.2.1/24 on veth0.
BASIC_SETUP = ("link set lo up",
               "link add veth0 type veth peer name veth1",
               "link set veth0 up",
               "link set veth1 up",
               "addr add 192.0.2.1/24 dev veth0")


class Netns:
    """A network namespace made with ``ip netns add``, driven with ``ip -n NAME``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"

    def ip(self, *args: str, check: bool = True) -> str:
        """Run ``ip -n NAME ARGS``; its output (fail on an error unless not check)."""
        assert IP is not None
        done = subprocess.run([IP, "-n", self.name, *args], capture_output=True, text=True,
                              timeout=60, check=False)
        if check:
            assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr.strip()}"
        return done.stdout

    def json(self, *args: str) -> Any:
        """The parsed output of ``ip -n NAME -j ARGS``."""
        return json.loads(self.ip("-j", *args))

    def batch(self, lines: Iterable[str]) -> None:
        """Run ip commands (one a line, without ``ip``) with ``ip -n NAME -batch``."""
        path = Path(f"/tmp/{self.name}-{secrets.token_hex(4)}.batch")
        path.write_text("".join(line + "\n" for line in lines))
        try:
            self.ip("-batch", str(path))
        finally:
            path.unlink()

    def routes(self) -> set[tuple[str, int, int]]:
        """Every IPv4 route of every table, as ``ip`` sees it: (prefix, table, type)."""
        return ip_routes(json.loads(self.ip("-4", "-N", "-j", "route", "show", "table", "all")))

    def links(self) -> dict[str, int]:
        """Every link's name and index, as ``ip`` sees them."""
        return {link["ifname"]: link["ifindex"] for link in json.loads(self.ip("-j", "link"))}


# Link and address changes on BASIC_SETUP's veth pair that undo themselves: 16
# addresses (each with its routes) come and go, veth1 goes down and up again.
LINK_ADDR_CHURN = (*(f"addr add 10.66.{i}.1/24 dev veth0" for i in range(16)),
                   "link set veth1 down",
                   "link set veth1 up",
                   *(f"addr del 10.66.{i}.1/24 dev veth0" for i in range(16)))


class Churn:
    """For the with-block, another thread runs ``ip -batch`` of lines in ns again
    and again: a steady stream of notifications, from another process. The lines
    must undo themselves; ``batches`` is how many ran, once the block has ended."""

    def __init__(self, ns: Netns, lines: Sequence[str] = LINK_ADDR_CHURN) -> None:
        self._ns = ns
        self._lines = list(lines)
        self._stop = threading.Event()
        self._worker: Worker | None = None
        self.batches = 0

    def _run(self) -> int:
        batches = 0
        while not self._stop.is_set():
            self._ns.batch(self._lines)
            batches += 1
        return batches

    def __enter__(self) -> Churn:
        self._worker = Worker(self._run)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        assert self._worker is not None
        self.batches = self._worker.outcome(WAIT)


def ip_routes(entries: list[dict[str, Any]]) -> set[tuple[str, int, int]]:
    """(prefix, table, type) of each entry of ``ip -4 -N -j route show``."""
    routes = set()
    for entry in entries:
        dst = entry["dst"]
        prefix = "0.0.0.0/0" if dst == "default" else dst if "/" in dst else dst + "/32"
        routes.add((prefix, int(entry.get("table", RT_TABLE_MAIN)),
                    int(entry.get("type", RTN_UNICAST))))
    return routes


def host_links() -> dict[str, int]:
    """The links of this process's own namespace, as ``ip`` sees them."""
    assert IP is not None
    out = subprocess.run([IP, "-j", "link"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return {link["ifname"]: link["ifindex"] for link in json.loads(out)}


def make_netns(setup: Iterable[str] = BASIC_SETUP, prefix: str = "lwtest") -> Netns:
    """A new namespace ``PREFIX-<random hex>``, set up with the ip commands setup
    (run as one batch); skips without root or ip."""
    need(os.geteuid() == 0 and IP is not None, "netlink namespace tests need root and ip")
    ns = Netns(f"{prefix}-{secrets.token_hex(4)}")
    assert IP is not None
    made = subprocess.run([IP, "netns", "add", ns.name], capture_output=True, text=True,
                          timeout=60, check=False)
    need(made.returncode == 0, f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        lines = list(setup)
        if lines:
            ns.batch(lines)
    except BaseException:
        drop_netns(ns)
        raise
    return ns


def drop_netns(ns: Netns) -> None:
    """Remove the namespace (its links go with it)."""
    assert IP is not None
    subprocess.run([IP, "netns", "del", ns.name], capture_output=True, timeout=60, check=False)
