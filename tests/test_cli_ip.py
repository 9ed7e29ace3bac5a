"""``latchwire ip`` and ``latchwire monitor`` against ``ip`` itself, in a private namespace.

The namespace holds a veth pair (one end up in a bridge, its peer down), a
bridge with IPv4 and IPv6 addresses, routes with a gateway and metric, a
multipath route, a blackhole route, an IPv6 route in table 7, and a permanent
neighbour entry. DAD is off and no link has carrier, so nothing changes
between latchwire's reading and ip's. Every entry latchwire prints must match
ip -j's entry for the same object field by field, wherever both have the field.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from lwtest import BOUND, LATCHWIRE, need
from lwtest import run_cli as run

pytestmark = pytest.mark.kernel

IP = shutil.which("ip")

SETUP = """\
link add lwbr0 type bridge
link add lwva type veth peer name lwvb
link set lwva master lwbr0
link set lwva up
link set lwbr0 up
link set lo up
addr add 10.1.0.1/24 brd + dev lwbr0 label lwbr0:a
addr add 2001:db8::1/64 dev lwbr0 nodad
route add 10.2.0.0/16 via 10.1.0.2 dev lwbr0 metric 5 onlink
route add 10.3.0.0/16 nexthop via 10.1.0.2 dev lwbr0 weight 2 onlink \
    nexthop via 10.1.0.3 dev lwbr0 onlink
route add blackhole 10.4.0.0/16
route add 10.5.0.0/16 dev lwbr0 table 100 proto static
route add 2001:db8:5::/48 via 2001:db8::2 dev lwbr0 table 7 onlink
neigh add 10.1.0.9 lladdr 02:00:00:00:00:09 dev lwbr0 nud permanent
"""


def ip(ns: str, *args: str) -> str:
    assert IP is not None
    done = subprocess.run([IP, "-n", ns, *args], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    need(os.geteuid() == 0 and IP is not None, "needs root and iproute2's ip")
    name = f"lwtest-cliip-{secrets.token_hex(4)}"
    subprocess.run([IP, "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run([IP, "netns", "exec", name, "sysctl", "-q", "-w",
                        "net.ipv6.conf.all.accept_dad=0",
                        "net.ipv6.conf.default.accept_dad=0"], check=True, timeout=30)
        batch = f"/tmp/{name}.batch"
        with open(batch, "w") as f:
            f.write(SETUP)
        try:
            ip(name, "-batch", batch)
        finally:
            os.unlink(batch)
        yield name
    finally:
        subprocess.run([IP, "netns", "del", name], check=False, timeout=30)


def latchwire_json(ns: str, *args: str) -> list[dict[str, Any]]:
    done = run("ip", *args, "--json", "--netns", ns)
    assert done.returncode == 0, done.stderr
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


def assert_same_fields(ours: dict[str, Any], theirs: dict[str, Any], where: str,
                       counters: tuple[str, ...] = ()) -> int:
    """Every key both have holds the same value (nested dicts and lists of dicts
    compared the same way; counters may only have grown by ip's later reading).
    Returns how many leaf fields were compared."""
    compared = 0
    for key in ours.keys() & theirs.keys():
        a, b = ours[key], theirs[key]
        if isinstance(a, dict) and isinstance(b, dict):
            compared += assert_same_fields(a, b, f"{where}.{key}", counters)
        elif isinstance(a, list) and a and isinstance(a[0], dict):
            assert len(a) == len(b), f"{where}.{key}: {a} != {b}"
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                compared += assert_same_fields(x, y, f"{where}.{key}[{i}]", counters)
        elif key in counters:
            assert a <= b, f"{where}.{key}: {a} > {b}"
            compared += 1
        else:
            assert a == b, f"{where}.{key}: latchwire {a!r}, ip {b!r}"
            compared += 1
    return compared


def by(entries: list[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    table = {tuple(e.get(k) for k in keys): e for e in entries}
    assert len(table) == len(entries), f"entries not unique by {keys}"
    return table


@pytest.mark.parametrize(("ours", "theirs", "keys"), [
    (("links",), ("-s", "-d", "link", "show"), ("ifindex",)),
    (("addrs",), ("addr", "show"), ("ifindex",)),
    (("addrs", "-4"), ("-4", "addr", "show"), ("ifindex",)),
    (("addrs", "-6"), ("-6", "addr", "show"), ("ifindex",)),
    (("routes",), ("route", "show"), ("type", "dst", "table", "metric")),
    (("routes", "--table", "all"), ("route", "show", "table", "all"),
     ("type", "dst", "table", "metric")),
    (("routes", "-6", "--table", "all"), ("-6", "route", "show", "table", "all"),
     ("type", "dst", "table", "metric", "dev")),
    (("routes", "--table", "100"), ("route", "show", "table", "100"), ("dst",)),
    (("neigh",), ("neigh", "show"), ("dst", "dev")),
], ids=["links", "addrs", "addrs-4", "addrs-6", "routes", "routes-all", "routes6-all",
        "routes-table", "neigh"])
def test_json_matches_ip_j_field_by_field(ns: str, ours: tuple[str, ...],
                                          theirs: tuple[str, ...], keys: tuple[str, ...]
                                          ) -> None:
    mine = latchwire_json(ns, *ours)
    expected = json.loads(ip(ns, "-j", *theirs))
    assert mine, "latchwire printed nothing"
    mine_by, expected_by = by(mine, *keys), by(expected, *keys)
    assert mine_by.keys() == expected_by.keys()
    compared = sum(assert_same_fields(mine_by[k], expected_by[k], f"{ours}{k}",
                                      counters=("bytes", "packets", "dropped", "multicast"))
                   for k in mine_by)
    assert compared >= 3 * len(mine)


def test_fields_ip_shows_are_all_there(ns: str) -> None:
    """The fields the issue names are present, under ip's names."""
    links = {e["ifname"]: e for e in latchwire_json(ns, "links")}
    assert links["lwva"]["master"] == "lwbr0" and links["lwva"]["link"] == "lwvb"
    assert links["lwva"]["linkinfo"] == {"info_kind": "veth", "info_slave_kind": "bridge"}
    assert {"mtu", "operstate", "address", "txqlen", "stats64", "flags"} <= links["lwva"].keys()
    routes = {e["dst"]: e for e in latchwire_json(ns, "routes")}
    assert routes["10.2.0.0/16"]["gateway"] == "10.1.0.2"
    assert routes["10.2.0.0/16"]["metric"] == 5
    assert [h["weight"] for h in routes["10.3.0.0/16"]["nexthops"]] == [2, 1]
    assert routes["10.4.0.0/16"]["type"] == "blackhole"
    addrs = {e["ifname"]: e for e in latchwire_json(ns, "addrs", "-4")}
    (info,) = addrs["lwbr0"]["addr_info"]
    assert (info["local"], info["prefixlen"], info["broadcast"], info["label"]) == (
        "10.1.0.1", 24, "10.1.0.255", "lwbr0:a")


def test_text_output_matches_ip_lines(ns: str) -> None:
    """Single-path routes print as ip prints them (whitespace aside)."""
    done = run("ip", "routes", "--netns", ns)
    assert done.returncode == 0, done.stderr
    ours = {" ".join(line.split()) for line in done.stdout.splitlines()
            if "nexthop" not in line}
    theirs = {" ".join(line.split()) for line in ip(ns, "route", "show").splitlines()
              if line.strip() and not line.startswith(("\t", "10.3.0.0/16"))}
    assert ours == theirs


def test_errors_exit_1_with_one_line() -> None:
    done = run("ip", "links", "--netns", f"lwtest-missing-{secrets.token_hex(4)}")
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and "No such file" in done.stderr
    bad_table = run("ip", "routes", "--table=-3")
    assert bad_table.returncode == 2 and "neither 'all' nor a table number" in bad_table.stderr


class Monitor:
    """``latchwire monitor --json`` in a namespace, read line by line."""

    def __init__(self, ns: str, *objects: str) -> None:
        self.proc = subprocess.Popen([*LATCHWIRE, "monitor", "--json", "--netns", ns, *objects],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.pending = b""  # read but not yet split into lines

    def line(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None if none within timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            chunk = os.read(self.fd, 65536)
            assert chunk, f"monitor ended: {self.proc.stderr.read() if self.proc.stderr else b''!r}"
            self.pending += chunk
        text, self.pending = self.pending.split(b"\n", 1)
        event: dict[str, Any] = json.loads(text)
        return event

    def until(self, predicate: Any, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            event = self.line(deadline - time.monotonic())
            if event is not None and predicate(event):
                return event
        raise AssertionError(f"monitor never printed {what}")

    def stop(self) -> int:
        # SIGTERM, as a supervisor stops it: SIGINT may be ignored by inheritance
        # (a job started in the background of a non-interactive shell).
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=BOUND)


def test_monitor_prints_changes_made_with_ip(ns: str) -> None:
    monitor = Monitor(ns, "link", "addr", "route")
    try:
        # It prints nothing until something changes: make changes until it is
        # listening (its first line), without guessing how long start-up takes.
        deadline = time.monotonic() + BOUND
        seen = None
        attempt = 0
        while seen is None and time.monotonic() < deadline:
            ip(ns, "link", "add", f"lwmon{attempt}", "type", "bridge")
            seen = monitor.line(0.5)
            attempt += 1
        assert seen is not None, "monitor printed nothing"
        ip(ns, "link", "add", "lwmonx", "type", "bridge")
        link = monitor.until(lambda e: e.get("ifname") == "lwmonx", "the new link")
        expected = json.loads(ip(ns, "-j", "link", "show", "lwmonx"))[0]
        assert assert_same_fields(link, expected, "lwmonx") >= 8
        ip(ns, "addr", "add", "10.77.0.1/24", "dev", "lwmonx")
        addr = monitor.until(lambda e: e.get("local") == "10.77.0.1", "the new address")
        assert (addr["ifname"], addr["prefixlen"], addr["family"]) == ("lwmonx", 24, "inet")
        ip(ns, "link", "set", "lwmonx", "up")
        ip(ns, "route", "add", "10.78.0.0/16", "via", "10.77.0.2", "dev", "lwmonx", "onlink")
        route = monitor.until(lambda e: e.get("dst") == "10.78.0.0/16", "the new route")
        assert (route["gateway"], route["dev"]) == ("10.77.0.2", "lwmonx")
        ip(ns, "link", "del", "lwmonx")
        gone = monitor.until(lambda e: e.get("ifname") == "lwmonx" and e.get("deleted"),
                             "the link's deletion")
        assert gone["deleted"] is True
    finally:
        status = monitor.stop()
        for i in range(attempt):
            subprocess.run([IP or "ip", "-n", ns, "link", "del", f"lwmon{i}"], check=False,
                           capture_output=True, timeout=30)
    assert status == -signal.SIGTERM
