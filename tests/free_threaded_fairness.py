"""64 threads on one Mutex: nobody starves (issue 20's bar for free-threaded CPython).

Not a ``test_*.py`` file, so the default run does not collect it: CI's free-threaded
step runs it by name with ``PYTHON_GIL=0``. With the GIL, the interpreter's own
switching decides which of 64 spinning threads runs at all (in a 2-second window some
get no turn, on any lock), so the lock's fairness cannot be seen there.
"""

from __future__ import annotations

import sys
import threading
import time

from lwtest import BOUND, FREE_THREADED

from latchwire import Mutex


def slowest_rate(lock: threading.Lock | Mutex, threads: int, seconds: float) -> float:
    """Acquisitions per second of the thread that got lock least, threads looping on it."""
    got = [0] * threads
    go, stop = threading.Event(), threading.Event()

    def loop(i: int) -> None:
        go.wait(BOUND)
        while not stop.is_set():
            with lock:
                got[i] += 1

    # All started and waiting before any loops: a thread started while 60 others spin
    # waits seconds for the GIL just to say it has started.
    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    go.set()
    time.sleep(seconds)  # the measurement's duration, not a handshake
    stop.set()
    for w in workers:
        w.join(BOUND)
    assert not any(w.is_alive() for w in workers)
    return min(got) / seconds


def test_sixty_four_threads_nobody_starves() -> None:
    assert FREE_THREADED and not sys._is_gil_enabled(), "run this with the GIL off"
    """64 threads looping on one Mutex: the slowest gets it at least a tenth as often
    as the slowest of 64 threads looping on a threading.Lock, measured beside it."""
    seconds = 2.0
    reference = slowest_rate(threading.Lock(), 64, seconds)
    ours = slowest_rate(Mutex(), 64, seconds)
    print(f"slowest of 64: latchwire Mutex {ours:.0f}/s, threading.Lock {reference:.0f}/s "
          f"({'free-threaded' if FREE_THREADED else 'with the GIL'}, {sys.version.split()[0]})")
    assert ours * 10 >= reference, (ours, reference)
