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
from lwnetns import BASIC_SETUP, drop_netns, make_netns
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


@pytest.mark.parametrize(("ours", "theirs"), [
    (("routes",), ("route", "show")),
    (("routes", "--table", "all"), ("route", "show", "table", "all")),
    (("routes", "-6", "--table", "all"), ("-6", "route", "show", "table", "all")),
    (("routes", "--table", "100"), ("route", "show", "table", "100")),
    (("routes", "-6", "--table", "7"), ("-6", "route", "show", "table", "7")),
], ids=["main", "all", "all6", "table", "table6"])
@pytest.mark.parametrize("form", ["text", "json"])
def test_routes_print_byte_for_byte_what_ip_prints(ns: str, ours: tuple[str, ...],
                                                   theirs: tuple[str, ...], form: str) -> None:
    """Routes (multipath, blackhole, onlink, metrics, IPv6 preferences, other tables)
    come out as ip prints them, to the byte: text and ip -j's JSON."""
    done = run("ip", *ours, *(["--json"] if form == "json" else []), "--netns", ns)
    assert done.returncode == 0, done.stderr
    expected = ip(ns, *(["-j"] if form == "json" else []), *theirs)
    assert done.stdout.splitlines() == expected.splitlines()
    assert done.stdout == expected


@pytest.mark.parametrize("form", [(), ("--json",)], ids=["text", "json"])
def test_a_closed_pipe_ends_it_quietly_as_ip(form: tuple[str, ...]) -> None:
    """latchwire ip routes | head: no "Broken pipe" message; it dies of SIGPIPE, as ip
    does (the same namespace, the same reader, ip alongside)."""
    lines = [f"route add 10.9.{i >> 8}.{i & 255}/32 dev veth0" for i in range(5000)]
    netns = make_netns([*BASIC_SETUP, *lines])
    try:
        assert IP is not None
        ended = []
        for argv in ([*LATCHWIRE, "ip", "routes", *form, "--netns", netns.name],
                     [IP, *(["-j"] if form else []), "-n", netns.name, "route", "show"]):
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.read(100)  # more than 64 KiB follows: the writer blocks
            proc.stdout.close()
            err = proc.stderr.read()
            ended.append((proc.wait(timeout=BOUND), err))
        assert ended == [(-signal.SIGPIPE, b"")] * 2
    finally:
        drop_netns(netns)


class Lines:
    """A monitoring process's output, read line by line (text)."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.pending = b""  # read but not yet split into lines

    def text(self, timeout: float) -> str | None:
        """The next line, or None if none within timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            chunk = os.read(self.fd, 65536)
            assert chunk, f"monitor ended: {self.proc.stderr.read() if self.proc.stderr else b''!r}"
            self.pending += chunk
        text, self.pending = self.pending.split(b"\n", 1)
        return text.decode()

    def until_text(self, predicate: Any, what: str) -> str:
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            line = self.text(deadline - time.monotonic())
            if line is not None and predicate(line):
                return line
        raise AssertionError(f"{self.proc.args[0]} never printed {what}")

    def stop(self) -> int:
        # SIGTERM, as a supervisor stops it: SIGINT may be ignored by inheritance
        # (a job started in the background of a non-interactive shell).
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=BOUND)


class Monitor(Lines):
    """``latchwire monitor --json`` in a namespace, read event by event."""

    def __init__(self, ns: str, *objects: str) -> None:
        super().__init__([*LATCHWIRE, "monitor", "--json", "--netns", ns, *objects])

    def line(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None if none within timeout."""
        text = self.text(timeout)
        if text is None:
            return None
        event: dict[str, Any] = json.loads(text)
        return event

    def until(self, predicate: Any, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            event = self.line(deadline - time.monotonic())
            if event is not None and predicate(event):
                return event
        raise AssertionError(f"monitor never printed {what}")


def listening(monitors: list[Lines], change: Any) -> int:
    """Make changes (change(i) for i = 0, 1, ...) until every monitor has printed a
    line: they all listen from then on (none says when it starts to). How many."""
    deadline = time.monotonic() + BOUND
    heard = [False] * len(monitors)
    attempt = 0
    while not all(heard):
        assert time.monotonic() < deadline, "a monitor printed nothing"
        change(attempt)
        attempt += 1
        pause = time.monotonic() + 0.5
        for i, monitor in enumerate(monitors):
            while monitor.text(max(0.0, pause - time.monotonic())) is not None:
                heard[i] = True
    return attempt


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


def test_monitor_names_a_bridge_fdb_entry_before_its_link_as_ip(ns: str) -> None:
    """A bridge's own FDB entry (an AF_BRIDGE neighbour) is announced before the bridge's
    RTM_NEWLINK: it is printed with the bridge's name, asked of the kernel as ip asks,
    and without a dst (it has none): as ip -j -f bridge neigh shows the entry, and as
    ip monitor prints it."""
    assert IP is not None
    ours, ours_text = Monitor(ns, "neigh"), Lines([*LATCHWIRE, "monitor", "--netns", ns, "neigh"])
    theirs = Lines([IP, "-n", ns, "monitor", "neigh"])
    made = 0
    try:
        made = listening([ours, ours_text, theirs],
                         lambda i: ip(ns, "link", "add", f"lwfdb{i}", "type", "bridge"))
        ip(ns, "link", "add", "lwfdbx", "type", "bridge")
        mac = json.loads(ip(ns, "-j", "link", "show", "lwfdbx"))[0]["address"]
        event = ours.until(lambda e: e.get("lladdr") == mac, "the bridge's FDB entry")
        shown = [e for e in json.loads(ip(ns, "-j", "-f", "bridge", "neigh", "show"))
                 if e.get("lladdr") == mac]
        assert event == {"dev": "lwfdbx", "lladdr": mac, "state": ["PERMANENT"]}
        assert shown == [event]
        mine = ours_text.until_text(lambda line: mac in line, "the bridge's FDB entry")
        expected = theirs.until_text(lambda line: mac in line, "the bridge's FDB entry")
        assert mine.split() == expected.split() == ["dev", "lwfdbx", "lladdr", mac, "PERMANENT"]
    finally:
        for monitor in (ours, ours_text, theirs):
            monitor.stop()
        for name in ["lwfdbx", *(f"lwfdb{i}" for i in range(made))]:
            subprocess.run([IP, "-n", ns, "link", "del", name], check=False,
                           capture_output=True, timeout=30)


def test_addresses_with_a_finite_lifetime_are_dynamic_as_ip_says(ns: str) -> None:
    """ip -j marks an address without IFA_F_PERMANENT (one given a lifetime) "dynamic",
    IPv4 or IPv6: so do latchwire monitor and latchwire ip addrs, with every other key
    ip -j gives (life times counted down by the time ip reads them)."""
    monitor = Monitor(ns, "addr")
    added: list[str] = []

    def add(address: str) -> None:
        nodad = ["nodad"] if ":" in address else []  # no DAD: its flags stay as they are
        ip(ns, "addr", "add", address, "dev", "lwbr0", "valid_lft", "1000", "preferred_lft", "500",
           *nodad)
        added.append(address)

    try:
        listening([monitor], lambda i: add(f"10.99.{i}.1/24"))
        for address, local in (("10.98.0.1/24", "10.98.0.1"), ("2001:db8:98::1/64",
                                                               "2001:db8:98::1")):
            add(address)
            event = monitor.until(lambda e, local=local: e.get("local") == local, address)
            listed = {i["local"]: i for e in latchwire_json(ns, "addrs") if e["ifname"] == "lwbr0"
                      for i in e["addr_info"]}[local]
            theirs = [i for e in json.loads(ip(ns, "-j", "addr", "show", "dev", "lwbr0"))
                      for i in e["addr_info"] if i["local"] == local]
            assert len(theirs) == 1
            for ours in (listed, {k: v for k, v in event.items() if k not in ("ifindex",
                                                                               "ifname")}):
                assert ours["dynamic"] is True
                assert ours.keys() == theirs[0].keys()
                for key, value in theirs[0].items():
                    if key.endswith("life_time"):
                        assert 0 <= value <= ours[key] <= {"valid": 1000, "preferred": 500}[
                            key.split("_")[0]]
                    else:
                        assert ours[key] == value, key
    finally:
        monitor.stop()
        for address in added:
            subprocess.run([IP or "ip", "-n", ns, "addr", "del", address, "dev", "lwbr0"],
                           check=False, capture_output=True, timeout=30)
