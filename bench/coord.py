"""The remote lockspaces against kazoo's own Lock (the floor), from one run.

    python bench/coord.py [--quick]

Starts Debian's ZooKeeper and etcd on 127.0.0.1 (as the tests do, with
``tests/helpers/coord.py``) and measures, one contender after the other:

- acquire+release latency on one resource, uncontended (median of single
  cycles): kazoo's ``Lock`` used directly, latchwire on ZooKeeper
  (``autocreate=False``, and with the default autocreate), latchwire on etcd;
- handoffs per second: 4 processes taking turns on one resource (each cycle
  waits for the lease, then releases it), counted over the whole run.

Ratios are against kazoo's Lock measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "helpers"))

from coord import start_etcd, start_zookeeper

from latchwire import LockSpace

PROCESSES = 4


def kazoo_cycle(hosts: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """One acquire+release of kazoo's Lock on /bench-kazoo/r, and the cleanup."""
    from kazoo.client import KazooClient

    client = KazooClient(hosts=hosts)
    client.start(timeout=10)
    lock = client.Lock("/bench-kazoo/r")

    def cycle() -> None:
        lock.acquire(timeout=10)
        lock.release()

    return cycle, lambda: (client.stop(), client.close())


def latchwire_cycle(url: str, autocreate: bool) -> tuple[Callable[[], None], Callable[[], None]]:
    """One acquire+release of the resource "r" of LockSpace(url), and the cleanup."""
    space = LockSpace(url)
    if not autocreate:
        with contextlib.suppress(FileExistsError):
            space.create("r")

    def cycle() -> None:
        space.acquire("r", wait=True, timeout=10, autocreate=autocreate)
        space.release("r")

    return cycle, space.close


def contender(kind: str, target: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """The cycle of a contender: "kazoo" on hosts target, else latchwire on URL target."""
    if kind == "kazoo":
        return kazoo_cycle(target)
    return latchwire_cycle(target, autocreate=kind == "latchwire autocreate")


def latency(kind: str, target: str, rounds: int) -> float:
    """The median of rounds acquire+release cycles, in ms (after 10 warm-up cycles)."""
    cycle, close = contender(kind, target)
    try:
        for _ in range(10):
            cycle()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            cycle()
            times.append(time.perf_counter() - t0)
    finally:
        close()
    return statistics.median(times) * 1000


def handoff_worker(kind: str, target: str, cycles: int, start: Barrier) -> None:
    """A contending process: cycles acquire+release cycles, begun together with the others."""
    cycle, close = contender(kind, target)
    start.wait(60)
    for _ in range(cycles):
        cycle()
    start.wait(600)
    close()


def handoffs(kind: str, target: str, cycles: int) -> float:
    """Handoffs per second among PROCESSES processes doing cycles cycles each."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES + 1)
    procs = [ctx.Process(target=handoff_worker, args=(kind, target, cycles, start))
             for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    start.wait(60)
    t0 = time.perf_counter()
    start.wait(600)
    elapsed = time.perf_counter() - t0
    for proc in procs:
        proc.join(60)
        if proc.exitcode != 0:
            raise RuntimeError(f"a {kind} worker failed ({proc.exitcode})")
    return PROCESSES * cycles / elapsed


def main() -> None:
    """Start the servers, measure every contender, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about a minute)")
    args = parser.parse_args()
    rounds, cycles = (100, 50) if args.quick else (500, 200)
    with tempfile.TemporaryDirectory() as work:
        zookeeper = start_zookeeper(Path(work) / "zk")
        etcd = start_etcd(Path(work) / "etcd")
        try:
            hosts = f"127.0.0.1:{zookeeper.port}"
            contenders = [
                ("kazoo Lock (floor)", "kazoo", hosts),
                ("latchwire zk", "latchwire", f"zk://{hosts}/bench"),
                ("latchwire zk, autocreate", "latchwire autocreate", f"zk://{hosts}/bench-auto"),
                ("latchwire etcd", "latchwire", f"etcd://127.0.0.1:{etcd.port}/bench"),
            ]
            rows = [(label, latency(kind, target, rounds), handoffs(kind, target, cycles))
                    for label, kind, target in contenders]
        finally:
            zookeeper.stop()
            etcd.stop()
    floor_ms, floor_rate = rows[0][1], rows[0][2]
    print(f"acquire+release median of {rounds}; handoffs: {PROCESSES} processes x {cycles}")
    print(f"{'':28} {'ms':>7} {'x floor':>8} {'handoffs/s':>11} {'x floor':>8}")
    for label, ms, rate in rows:
        print(f"{label:28} {ms:7.2f} {ms / floor_ms:8.2f} {rate:11.0f} {rate / floor_rate:8.2f}")


if __name__ == "__main__":
    main()
