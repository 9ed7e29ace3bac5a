"""A netlink channel belongs to one thread at a time, and says so: a call made while
another call uses the channel raises RuntimeError instead of sharing its receive buffer
(which, without the GIL or around a GIL release, would hand one thread's datagram to
another, or a closed descriptor's number to the next file opened)."""

from __future__ import annotations

import os
import random
import struct
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from lwnetns import Netns, drop_netns, make_netns
from lwtest import BOUND, WAIT
from lwthreads import Worker, wait_in_poll

from latchwire import _core

NETLINK_ROUTE = 0
RTNLGRP_LINK = 1
RTM_GETLINK = 18
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IN_USE = "in use by another call"


def link_dump(seq: int) -> bytes:
    """RTM_GETLINK dump request: nlmsghdr and an empty ifinfomsg."""
    return struct.pack("=IHHII16x", 32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)


@pytest.fixture
def ns() -> Iterator[Netns]:
    space = make_netns()
    try:
        yield space
    finally:
        drop_netns(space)


def open_in(ns: Netns) -> _core._Channel:
    fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _core._Channel(NETLINK_ROUTE, fd)
    finally:
        os.close(fd)


def test_a_waited_on_channel_refuses_every_call_from_another_thread(ns: Netns) -> None:
    """While one thread waits in recv(), every call of another thread (close included)
    raises RuntimeError at once and changes nothing: the waiter still gets the next
    datagram, and afterwards the channel serves the other thread as usual."""
    chan = open_in(ns)
    chan.membership(RTNLGRP_LINK, True)
    waiter = Worker(chan.recv, timeout=WAIT)
    wait_in_poll(waiter)
    refused = {
        "recv": lambda: chan.recv(timeout=0),
        "peek": lambda: chan.peek(timeout=0),
        "discard": lambda: chan.discard(timeout=0),
        "recv_into": lambda: chan.recv_into([], timeout=0),
        "send": lambda: chan.send(link_dump(1)),
        "membership": lambda: chan.membership(RTNLGRP_LINK, False),
        "close": chan.close,
    }
    for name, call in refused.items():
        with pytest.raises(RuntimeError, match=IN_USE):
            call()
        assert not waiter.done.is_set(), f"{name} from another thread ended the wait"
    assert chan.fd >= 0, "a refused close closed the descriptor"
    ns.ip("link", "add", "lwbr0", "type", "bridge")  # an RTM_NEWLINK for the group
    event = waiter.outcome(BOUND)
    assert event is not None and struct.unpack_from("=H", event, 4)[0] == 16  # RTM_NEWLINK
    chan.send(link_dump(7))
    records: list[object] = []
    assert chan.recv_into(records, timeout=BOUND, seq=7, decode=False) is not None
    assert records, "the channel did not serve the dump after the wait"
    chan.close()
    assert chan.fd == -1


def test_threads_hammering_one_channel_never_share_a_datagram(ns: Netns) -> None:
    """6 threads call recv, peek, discard, recv_into, send and membership on one channel
    at random, with no pause, while another process makes link events. Each call either
    runs alone or is refused with RuntimeError; no datagram comes out torn (every one
    the channel hands out parses, and none is the one peeked by someone else), and the
    channel ends free and working."""
    chan = open_in(ns)
    chan.membership(RTNLGRP_LINK, True)
    stop = threading.Event()
    start = threading.Barrier(6)

    def run(seed: int) -> Counter[str]:
        rng = random.Random(seed)
        seen: Counter[str] = Counter()
        start.wait(BOUND)
        while not stop.is_set():
            op = rng.choice(("recv", "peek", "discard", "recv_into", "send", "membership"))
            try:
                if op == "recv":
                    data = chan.recv(timeout=0)
                    if data is not None:
                        length = struct.unpack_from("=I", data)[0]
                        assert length <= len(data), "a torn datagram"
                elif op == "peek":
                    chan.peek(timeout=0)
                elif op == "discard":
                    chan.discard(timeout=0)
                elif op == "recv_into":
                    chan.recv_into([], timeout=0, decode=rng.random() < 0.5)
                elif op == "send":
                    chan.send(link_dump(rng.randrange(1, 1 << 30)))
                else:
                    chan.membership(RTNLGRP_LINK, True)
                seen[op] += 1
            except RuntimeError as e:
                assert IN_USE in str(e), e
                seen["refused"] += 1
        return seen

    workers = [Worker(run, seed) for seed in range(6)]
    try:
        for i in range(40):
            ns.ip("link", "add", f"lwd{i}", "type", "bridge")
            ns.ip("link", "del", f"lwd{i}")
    finally:
        stop.set()
        totals: Counter[str] = Counter()
        for worker in workers:
            totals += worker.outcome(WAIT)
    assert totals["refused"] > 0, f"the threads never met on the channel: {totals}"
    assert sum(v for k, v in totals.items() if k != "refused") > 1000, totals
    while chan.discard(timeout=0):  # drain what the threads left queued
        pass
    chan.send(link_dump(3))
    records: list[object] = []
    assert chan.recv_into(records, timeout=BOUND, seq=3) is not None
    assert records
    chan.close()
