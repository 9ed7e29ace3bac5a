"""Threads in tests: ``Worker`` runs one call in a thread and records how it ended,
and a thread's wait is observed in the kernel, never guessed from a sleep: sitting
in ``futex(FUTEX_WAIT)`` for a wait on latchwire's in-process record
(``in_futex_wait``, ``wait_in_futex``) or on a Mutex or RWLock
(``wait_until_blocked``, which also serves ``interrupted_in_main``), sitting in
``poll()`` for a netlink wait (``wait_in_poll``, which also reads the timeout the
core passed to poll). ``Interrupter`` sends signals to the main thread while it
waits; ``busy_thread`` keeps the GIL busy."""

from __future__ import annotations

import contextlib
import platform
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from lwtest import BOUND, here, need


class Worker:
    """Runs fn(*args, **kwargs) in a daemon thread and records how it ended.

    The thread has started when the constructor returns. ``tid`` is its native
    id (for /proc), ``ident`` its threading ident, ``cpu`` the CPU time it used,
    ``ended`` the monotonic time right after fn returned or raised, ``done`` is
    set then, and ``result`` or ``error`` says how (``outcome()`` gives both at
    once). ``thread_name`` names the thread (the lock-order checker's reports
    name threads); every other keyword goes to fn.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, thread_name: str | None = None,
                 **kwargs: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.ended = 0.0
        self.tid = 0
        self.ident = 0
        self.cpu = 0.0
        self.started = threading.Event()
        self.done = threading.Event()
        self._call = (fn, args, kwargs)
        self.thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self.thread.start()
        assert self.started.wait(BOUND), "the thread did not start"

    def _run(self) -> None:
        fn, args, kwargs = self._call
        self.tid = threading.get_native_id()
        self.ident = threading.get_ident()
        self.started.set()
        cpu = time.thread_time()
        try:
            self.result = fn(*args, **kwargs)
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended = time.monotonic()
            self.cpu = time.thread_time() - cpu
            self.done.set()

    def join(self, timeout: float = BOUND) -> Worker:
        """Wait until fn has ended (fail after timeout); the Worker, to read the outcome."""
        assert self.done.wait(timeout), "the thread is still blocked"
        self.thread.join(BOUND)
        return self

    def outcome(self, timeout: float = BOUND) -> Any:
        """fn's result once it has ended (its exception re-raised); fail after timeout."""
        self.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


@contextlib.contextmanager


def busy_thread() -> Iterator[None]:
    """For the with-block, another thread computes in Python without a pause: a
    thread that lets the GIL go (as latchwire's core does around every socket call)
    waits up to the switch interval (5 ms) to have it back. The slow reader of a
    daemon whose other threads are busy."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    spinner = Worker(spin)
    try:
        yield
    finally:
        stop.set()
        spinner.outcome()


def poll_until(condition: Callable[[], bool], what: str, timeout: float = BOUND) -> None:
    """Return once condition() holds (checked every 0.5 ms); fail after timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.0005)


_FUTEX = {"x86_64": 202, "aarch64": 98}  # the futex syscall's number


def futex_word(tid: int, sem_wait: bool = False) -> str | None:
    """The futex word thread tid of this process sleeps on in futex(FUTEX_WAIT), else None.

    latchwire's waits (a lock file's in-process record, a Mutex, an RWLock) use
    FUTEX_WAIT. Python's own locks and conditions wait with FUTEX_WAIT_BITSET:
    with ``sem_wait`` an untimed one counts too (threading.Lock's untimed
    acquire, a sem_wait). The interpreter's GIL wait is a condition wait with a
    timeout (FUTEX_WAIT_BITSET, 5 ms), so it is never mistaken for a lock wait.
    The word's address (as /proc/self/task/TID/syscall shows it) tells one wait
    from the next; None also where the futex syscall number is unknown.
    """
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != str(_FUTEX.get(platform.machine())):
        return None
    op = int(fields[2], 16) & 0x7F
    if op == 0 or (sem_wait and op == 9 and int(fields[4], 16) == 0):
        return fields[1]
    return None


def in_futex_wait(tid: int) -> bool:
    """Whether thread tid of this process sleeps in futex(FUTEX_WAIT): latchwire's record.

    Python's own locks and conditions wait with FUTEX_WAIT_BITSET, so this singles
    out the wait on a lock file's in-process record.
    """
    nr = _FUTEX.get(platform.machine())
    need(nr is not None, f"futex syscall number unknown on {platform.machine()}")
    return futex_word(tid) is not None


def wait_in_futex(worker: Worker, timeout: float = BOUND) -> None:
    """Return once worker's thread waits on the in-process record; fail if it ends instead."""
    poll_until(lambda: in_futex_wait(worker.tid) or worker.done.is_set(),
               "the thread waits on the in-process record", timeout)
    assert not worker.done.is_set(), f"the thread did not wait: {worker.error!r}"


def wait_until_blocked(tid: int, returned: threading.Event, timeout: float = BOUND,
                       sem_wait: bool = False) -> None:
    """Return once thread tid sleeps in a lock wait; fail if returned is set first.

    The wait is ``futex_word(tid, sem_wait)``, seen on the same word on 3 polls in
    a row (1 ms apart), so a brief pthread-mutex wait inside the interpreter does
    not count. Stricter than ``wait_in_futex``, and for any thread (the main one
    too), not only a Worker. Needs a known futex syscall number (need()).
    """
    need(platform.machine() in _FUTEX, f"futex syscall number unknown on {platform.machine()}")
    deadline = time.monotonic() + timeout
    last, streak = None, 0
    while streak < 3:
        assert not returned.is_set(), "the call returned instead of blocking"
        assert time.monotonic() < deadline, "the thread never blocked on the lock"
        word = futex_word(tid, sem_wait)
        streak = streak + 1 if word is not None and word == last else int(word is not None)
        last = word
        time.sleep(0.001)


# poll() as /proc/self/task/TID/syscall shows it: its number, and the field with its
# timeout in ms (x86_64); aarch64 has only ppoll, whose timeout is a pointer.


_POLL = {"x86_64": (7, 3), "aarch64": (73, None)}


def poll_timeout(tid: int) -> int | None:
    """The timeout thread tid of this process passed to the poll() it sits in
    (ms, -1 for none; 0 where /proc does not show it), or None if it is in no poll()."""
    nr, field = _POLL.get(platform.machine(), (None, None))
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return None
    if nr is None or not fields or fields[0] != str(nr):
        return None
    if field is None or len(fields) <= field:
        return 0
    ms = int(fields[field], 16) & 0xFFFFFFFF
    return ms - (1 << 32) if ms & 0x80000000 else ms


def wait_in_poll(worker: Worker, timeout: float = BOUND) -> int:
    """Once worker's thread is seen in poll() on 3 polls in a row (1 ms apart),
    with the same timeout, that timeout (see poll_timeout); fail if the thread
    ends first. Needs a known poll syscall number (need())."""
    need(platform.machine() in _POLL, f"poll syscall number unknown on {platform.machine()}")
    deadline = time.monotonic() + timeout
    last, streak = None, 0
    while streak < 3:
        assert not worker.done.is_set(), (
            f"the call returned instead of waiting: {worker.error!r} {worker.result!r}")
        assert time.monotonic() < deadline, "the thread never waited in poll()"
        ms = poll_timeout(worker.tid)
        streak = streak + 1 if ms is not None and ms == last else int(ms is not None)
        last = ms
        time.sleep(0.001)
    assert last is not None
    return last


def interrupted_in_main(call: Callable[[], Any], give_up: Callable[[], None],
                        sem_wait: bool = False) -> str:
    """Call call() in the main thread while a helper thread sends it SIGINT; what happened.

    The helper waits until the main thread is seen blocked (``wait_until_blocked``
    with ``sem_wait``), then sends SIGINT every 20 ms until call returns, for at
    most BOUND s; if call has still not returned then, give_up() must end its wait.
    KeyboardInterrupt is raised only from inside call, never from other code of
    the test. The answer: "KeyboardInterrupt", or "returned <value>". Skips
    outside the main thread (signals go to the main thread only); fails unless
    at least one SIGINT was sent.
    """
    need(threading.current_thread() is threading.main_thread(),
         "signals go to the main thread only, and this test runs in another")
    main_tid, main_ident = threading.get_native_id(), threading.get_ident()
    returned = threading.Event()
    line = [0]

    def on_sigint(signo: int, frame: Any) -> None:
        # KeyboardInterrupt only from inside the call, never from the test's own code.
        if frame is not None and frame.f_code.co_filename == __file__ \
                and frame.f_lineno == line[0]:
            raise KeyboardInterrupt

    def interrupt() -> int:
        sent = 0
        try:
            wait_until_blocked(main_tid, returned, sem_wait=sem_wait)
            deadline = time.monotonic() + BOUND
            while not returned.is_set() and time.monotonic() < deadline:
                signal.pthread_kill(main_ident, signal.SIGINT)
                sent += 1
                returned.wait(0.02)
        finally:
            if not returned.is_set():  # never interrupted: let the call end (and fail)
                give_up()
        return sent

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        helper = Worker(interrupt, thread_name="interrupter")
        try:
            line[0] = here() + 1
            outcome = f"returned {call()!r}"
        except KeyboardInterrupt:
            outcome = "KeyboardInterrupt"
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a late repeat must not hit pytest
            returned.set()
            helper.join()
    finally:
        signal.signal(signal.SIGINT, old)
    assert helper.outcome() >= 1
    return outcome


class Interrupted(Exception):
    """What ``Interrupter`` raises in the main thread, from inside a lock wait."""


class Interrupter:
    """Sends SIGUSR1 to the main thread at random moments (every 0.5-3 ms) while active.

    The handler raises ``Interrupted`` only while ``armed`` is set (the main thread
    sets it around a lock call), so the exception comes out of the wait (latchwire
    runs signal handlers when its futex wait returns EINTR) or just before or after
    the call: the caller finds out from the lock whether it holds it. ``sent`` counts
    the signals. A context manager; main thread only (need()).
    """

    def __init__(self, seed: int = 0) -> None:
        need(threading.current_thread() is threading.main_thread(),
             "signals go to the main thread only, and this test runs in another")
        self.armed = False
        self.sent = 0
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._old: Any = None
        self._worker: Worker | None = None

    def _handler(self, signo: int, frame: Any) -> None:
        if self.armed:
            self.armed = False
            raise Interrupted

    def _send(self, ident: int) -> None:
        while not self._stop.wait(self._rng.uniform(0.0005, 0.003)):
            signal.pthread_kill(ident, signal.SIGUSR1)
            self.sent += 1

    def __enter__(self) -> Interrupter:
        self._old = signal.signal(signal.SIGUSR1, self._handler)
        self._worker = Worker(self._send, threading.get_ident(), thread_name="interrupter")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._worker is not None
        self._worker.join()
        self.armed = False
        signal.signal(signal.SIGUSR1, self._old)
