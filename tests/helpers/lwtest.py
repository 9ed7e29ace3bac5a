"""Helpers shared by latchwire's test files.

``tests/conftest.py`` puts this directory at the front of ``sys.path`` (and has
pytest rewrite the asserts here), so a test file does ``from lwtest import ...``
whether pytest is started from the repository or from anywhere else. The
fixtures built on these helpers are in ``tests/conftest.py``.

The other parties the tests meet:

- ``Agent``: a fresh interpreter running ``lock_agent.py`` (a FileLock or a
  LockSpace, on JSON commands), for tests about latchwire in another process;
- ``OtherProcess``: a small script holding OFD locks with plain ``fcntl``, an
  oracle independent of latchwire, with ``fcntl_probe`` for a one-off look and
  ``Prober`` for many looks from one process;
- ``Worker``: a thread running one call, for tests about waits in this process.

Whether a waiter is blocked is observed in the kernel, never guessed from a
sleep: a ``->`` line in /proc/locks for a kernel wait (``kernel_waiters``,
``wait_in_kernel``), the thread sitting in ``futex(FUTEX_WAIT)`` for a wait on
latchwire's in-process record (``in_futex_wait``, ``wait_in_futex``) or on a
Mutex or RWLock (``wait_until_blocked``, which also serves ``interrupted_in_main``),
the thread sitting in ``poll()`` for a netlink wait (``wait_in_poll``, which also
reads the timeout the core passed to poll).
Every wait is bounded, so a bug fails a test instead of hanging it; the
``watchdog`` fixture (``GUARD``) ends the run if a test hangs anyway.

For the in-process locks (Mutex, RWLock, the lock-order checker): ``here`` and
``site`` name a place as latchwire does, ``timeout_overshoots`` and
``assert_on_time`` judge timed-out acquires; ``timed_out_waits`` and
``assert_timely_as_reference`` judge them against threading.Lock's timed waits
measured beside them, ``wake_latency`` and ``assert_woken_as_reference`` a
waiter's wake-up against threading.Lock's, and ``assert_at_once`` a call that
must not wait; ``pairs`` lists the orders the checker has seen.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import platform
import random
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from latchwire import FileLock, lockorder

AGENT = Path(__file__).resolve().parent / "lock_agent.py"
WAIT = 10.0  # the bound on any one wait for another process (Agents, forked children)
BOUND = 5.0  # the bound on a handshake with a Worker thread or an OtherProcess
WATCHDOG = 15.0  # an idle OtherProcess drops its locks and exits after this long
GUARD = 120.0  # the ``watchdog`` fixture dumps every stack and ends the run after this long
LATCHWIRE = [sys.executable, "-m", "latchwire"]
REQUIRE_KERNEL = os.environ.get("LATCHWIRE_REQUIRE_KERNEL") == "1"


# ---------------------------------------------------------------------------
# Test policy


def need(available: bool, reason: str) -> None:
    """Skip (or, under LATCHWIRE_REQUIRE_KERNEL=1, fail) unless available.

    Tests that need root, network namespaces or another real-kernel facility ask
    for it through ``need()``: elsewhere they skip with the reason, but under
    ``LATCHWIRE_REQUIRE_KERNEL=1`` (as CI sets) a missing facility is a failure.
    """
    if available:
        return
    if REQUIRE_KERNEL:
        pytest.fail(f"LATCHWIRE_REQUIRE_KERNEL=1 but {reason}")
    pytest.skip(reason)


def new_lock(lockfile: str) -> FileLock:
    """A FileLock that locks the file lockfile itself."""
    return FileLock(lockfile, lockfile=lockfile)


def child_env() -> dict[str, str]:
    """os.environ without LATCHWIRE_LOCKS (a child started with it picks its lock kind
    itself), and with PYTHONPATH's entries made absolute: a child started in another
    directory imports the same latchwire as the test (``PYTHONPATH=src`` would
    otherwise find nothing there, and fall back to whatever is installed)."""
    env = {k: v for k, v in os.environ.items() if k != "LATCHWIRE_LOCKS"}
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(entry) if entry else entry
                                            for entry in env["PYTHONPATH"].split(os.pathsep))
    return env


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``python -m latchwire ARGS`` as a user runs it; its status and output."""
    return subprocess.run([*LATCHWIRE, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


# ---------------------------------------------------------------------------
# Agent: latchwire in a fresh interpreter


class Agent:
    """A fresh interpreter running lock_agent.py, driven over pipes.

    ``Agent(path, lockfile)`` holds ``FileLock(path, lockfile=lockfile)``;
    ``Agent(directory, space=True)`` holds ``LockSpace(directory)`` (None:
    ``LockSpace(None)``). Each command is one JSON line (see lock_agent.py); the
    answer is ``{"result": ...}`` or ``{"error": "LockBusy", ...}``, with
    ``t0``/``t1``, ``time.monotonic()`` around the call (the clock is
    system-wide). The agent imports latchwire with LATCHWIRE_LOCKS unset, or set
    to ``posix`` with ``posix=True``. It exits when its stdin closes, its locks
    with it.
    """

    def __init__(self, path: Path | None, lockfile: Path | None = None, *,
                 space: bool = False, posix: bool = False) -> None:
        env = child_env()
        if posix:
            env["LATCHWIRE_LOCKS"] = "posix"
        self.argv = [sys.executable, str(AGENT)]
        if space:
            self.argv.append("--space")
        elif path is None:
            raise ValueError("a FileLock agent needs a path")
        self.argv += [str(p) for p in (path, lockfile) if p is not None]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, bufsize=0)
        self.pid = self.proc.pid
        self._buf = b""

    def fileno(self) -> int:
        """The agent's answers: readable once it has said something."""
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def send(self, op: str, **args: Any) -> None:
        """Start a command without waiting for its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")

    def reply(self, timeout: float = WAIT) -> dict[str, Any]:
        """The answer to the oldest command not yet answered."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self], [], [], left)[0]:
                raise AssertionError(f"agent {self.pid} gave no answer within {timeout} s")
            chunk = os.read(self.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"agent {self.pid} exited (status {self.proc.wait(WAIT)})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Run a command; its answer, whether it succeeded or failed."""
        self.send(op, **args)
        return self.reply()

    def ok(self, op: str, **args: Any) -> Any:
        """Run a command that must succeed; its result."""
        answer = self.call(op, **args)
        assert "error" not in answer, f"agent {self.pid}: {op}({args}) failed: {answer}"
        return answer["result"]

    def error(self, op: str, **args: Any) -> str:
        """Run a command that must fail; the name of the exception it raised."""
        answer = self.call(op, **args)
        assert "error" in answer, f"agent {self.pid}: {op}({args}) did not fail: {answer}"
        return str(answer["error"])

    def state(self) -> dict[str, Any]:
        """pid, locked, mode, kind and lockfile of a FileLock agent's lock."""
        result: dict[str, Any] = self.ok("state")
        return result

    def close(self) -> int:
        """Close its stdin (it exits, its locks with it); its exit status."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(WAIT)

    def kill(self) -> None:
        """Kill it if it still runs, reap it and close the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


# ---------------------------------------------------------------------------
# OtherProcess: OFD locks with plain fcntl, not latchwire

_OTHER = r"""
import fcntl, os, select, struct, sys, time

path, watchdog = sys.argv[1], float(sys.argv[2])
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
types = {"ex": fcntl.F_WRLCK, "sh": fcntl.F_RDLCK}


def setlock(ltype):
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", ltype, 0, 0, 0, 0))


def reply(text):
    os.write(1, (text + "\n").encode())


reply("ready")
buf = b""
while select.select([0], [], [], watchdog)[0]:
    data = os.read(0, 4096)
    if not data:
        break
    buf += data
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        cmd, _, arg = line.decode().partition(" ")
        if cmd == "lock":
            try:
                setlock(types[arg])
            except OSError:
                reply("busy")
            else:
                reply("ok")
        elif cmd == "unlock":
            setlock(fcntl.F_UNLCK)
            reply(repr(time.monotonic()))
"""

_PROBE = r"""
import fcntl, os, struct, sys

fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
ltype = fcntl.F_WRLCK if sys.argv[2] == "ex" else fcntl.F_RDLCK
try:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", ltype, 0, 0, 0, 0))
except OSError:
    print("busy")
else:
    print("free")
"""


class _Script:
    """A small Python script in another process, driven over pipes: one command line
    in, one reply line out. It says "ready" first; left idle for WATCHDOG seconds
    it exits."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args, str(WATCHDOG)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        )
        self._buf = b""
        assert self.reply() == "ready"

    def send(self, line: str) -> None:
        """Send one command line without waiting for the reply."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    def reply(self, timeout: float = BOUND) -> str:
        """The reply to the oldest command not yet answered."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError("the other process did not answer in time")
            data = os.read(fd, 4096)
            if not data:
                raise AssertionError("the other process exited")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        """Close its stdin so it exits (its locks with it); kill it if it lingers."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class OtherProcess(_Script):
    """Another process that locks and unlocks one file when told to, over a pipe.

    It replies to every command, so ``lock()`` and ``unlock()`` return once it
    has acted; ``send("unlock")`` then ``reply()`` split an unlock so the caller
    can act while it happens. Left idle for WATCHDOG seconds it exits, dropping
    its locks.
    """

    def __init__(self, path: str) -> None:
        super().__init__(_OTHER, path)

    def lock(self, mode: str = "ex") -> None:
        """Take the lock (non-blocking); it must be free for the other process."""
        self.send(f"lock {mode}")
        answer = self.reply()
        assert answer == "ok", f"the other process could not lock ({answer})"

    def unlock(self) -> float:
        """Drop the lock; returns the monotonic time at which it was dropped."""
        self.send("unlock")
        return float(self.reply())


_PROBER = r"""
import errno, fcntl, os, select, struct, sys

watchdog = float(sys.argv[1])
types = {"ex": fcntl.F_WRLCK, "sh": fcntl.F_RDLCK}


def try_lock(path, mode):
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return "missing"
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", types[mode], 0, 0, 0, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return "busy"
        raise
    else:
        return "free"
    finally:
        os.close(fd)  # the only descriptor of its open file description: any lock goes


os.write(1, b"ready\n")
buf = b""
while select.select([0], [], [], watchdog)[0]:
    data = os.read(0, 65536)
    if not data:
        break
    buf += data
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        mode, path = line.decode().split(" ", 1)
        os.write(1, (try_lock(path, mode) + "\n").encode())
"""


class Prober(_Script):
    """Another process that, on each ``probe(path)``, tries to take an OFD lock on
    path with plain ``fcntl`` (``F_OFD_SETLK``, never waiting) and lets go of it at
    once: "free" if it got it, "busy" if not, "missing" if there is no such file.
    An oracle independent of latchwire, cheap enough to ask from inside every
    critical section; any thread may call it (one probe at a time)."""

    def __init__(self) -> None:
        super().__init__(_PROBER)
        self._turn = threading.Lock()

    def probe(self, path: str | Path, mode: str = "ex") -> str:
        with self._turn:
            self.send(f"{mode} {path}")
            return self.reply()


def fcntl_probe(path: str, mode: str = "ex") -> str:
    """"free" or "busy": whether a fresh process could take an OFD lock in mode now."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, path, mode],
        capture_output=True, text=True, timeout=BOUND * 2, check=True,
    )
    return out.stdout.strip()


# ---------------------------------------------------------------------------
# Threads


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


# ---------------------------------------------------------------------------
# In-process locks: sites, timeouts, the lock-order checker


def here() -> int:
    """The caller's current line number."""
    return sys._getframe(1).f_lineno


def site(line: int) -> str:
    """How latchwire names line of the caller's file: ``FILE:LINE``."""
    return f"{sys._getframe(1).f_code.co_filename}:{line}"


def timeout_overshoots(acquire: Callable[..., bool], timeout: float = 0.05,
                       rounds: int = 7) -> list[float]:
    """Call acquire(timeout=timeout) rounds times on a lock held elsewhere; how late each was.

    Each call must return False, and never before the timeout; the overshoots
    are in seconds.
    """
    overshoots = []
    for _ in range(rounds):
        t0 = time.monotonic()
        got = acquire(timeout=timeout)
        elapsed = time.monotonic() - t0
        assert got is False
        assert elapsed >= timeout, f"returned after {elapsed:.6f} s, before the timeout"
        overshoots.append(elapsed - timeout)
    return overshoots


def assert_on_time(overshoots: Sequence[float], median: float = 0.002,
                   worst: float = 0.05) -> None:
    """Fail unless the median overshoot is within median s and the largest within worst s.

    Judged by the median because this VM has multi-ms scheduling hiccups that
    threading.Lock's own timed waits show too; the worst bound still catches a
    lost wake-up or a polling wait.
    """
    report = ", ".join(f"{x * 1000:.3f}" for x in overshoots)
    assert statistics.median(overshoots) <= median, f"overshoots (ms): {report}"
    assert max(overshoots) <= worst, f"overshoots (ms): {report}"


def timed_out_waits(acquire: Callable[..., bool], timeout: float = 0.05,
                    rounds: int = 9) -> tuple[list[float], list[float]]:
    """Timed-out acquires, each round beside the same wait on threading.Lock: (overshoots,
    reference overshoots).

    Each round calls acquire(timeout=timeout) on a lock held elsewhere and
    ``threading.Lock.acquire(timeout=timeout)`` on a Lock this thread holds (the
    reference, which times out alike), in alternating order, so that both see the same
    load. Each call must return False, never before the timeout; the overshoots are in
    seconds.
    """
    reference = threading.Lock()
    reference.acquire()
    try:
        waits: tuple[list[float], list[float]] = ([], [])
        for i in range(rounds):
            for which in ((0, 1) if i % 2 else (1, 0)):
                waits[which].extend(timeout_overshoots(
                    acquire if which == 0 else reference.acquire, timeout, 1))
        return waits
    finally:
        reference.release()


def assert_timely_as_reference(overshoots: Sequence[float], reference: Sequence[float],
                               timeout: float) -> None:
    """Fail unless timed-out waits end about as promptly as threading.Lock's beside them.

    The median overshoot may be up to twice the reference's plus 2 ms, the worst up to
    the reference's worst plus 5 timeouts: a loaded machine delays both alike (the
    thread that timed out waits for a CPU and for the GIL), while a regression (a polling
    wait, a deadline misread, a wait that outlives its timeout) shows on its own.
    """
    report = (", ".join(f"{x * 1000:.3f}" for x in overshoots) + " ms; threading.Lock: "
              + ", ".join(f"{x * 1000:.3f}" for x in reference) + " ms")
    assert statistics.median(overshoots) <= 2 * statistics.median(reference) + 0.002, report
    assert max(overshoots) <= max(reference) + 5 * timeout, report


def wake_latency(lock: Any, *, sem_wait: bool = False) -> float:
    """Seconds from lock.release() here to a thread blocked in lock.acquire() running on.

    This thread takes lock, a Worker blocks acquiring it (seen in the kernel), this
    thread releases it; the Worker takes it, lets it go and ends.
    """
    assert lock.acquire(timeout=BOUND)

    def take() -> None:
        lock.acquire()  # untimed, as wait_until_blocked recognises it (a lost wake: a hang)
        lock.release()

    worker = Worker(take)
    try:
        wait_until_blocked(worker.tid, worker.done, sem_wait=sem_wait)
    finally:
        released = time.monotonic()
        lock.release()
    worker.outcome()
    return worker.ended - released


def assert_woken_as_reference(latency: float, reference: float) -> None:
    """Fail unless a waiter ran on after the release about as soon as threading.Lock's.

    ``reference`` is ``wake_latency(threading.Lock(), sem_wait=True)`` measured in the
    same test. The bound, 20 times the reference plus half a second, is what only a
    lost wake-up breaks (the waiter then sleeps until its own timeout, if any).
    """
    assert latency <= 20 * reference + 0.5, \
        f"woken {latency * 1000:.3f} ms after the release (threading.Lock: " \
        f"{reference * 1000:.3f} ms)"


def assert_at_once(elapsed: float, instead: float, what: str) -> None:
    """Fail unless a call that must not wait took well under the wait it would have made.

    ``instead`` is how long the call would have taken had it waited (its timeout, or
    how long the other thread holds the lock); the bound is a fifth of it. No reference
    is measured: the alternative is a wait of seconds, and a loaded machine's stalls are
    orders of magnitude shorter.
    """
    assert elapsed < instead / 5, f"{what} took {elapsed:.3f} s: it waited"


class Witness:
    """Entries to and exits from the critical sections of several locks, checked for overlaps.

    Each thread calls ``enter(lock, mode)`` right after its acquire returned and
    ``exit(lock, mode)`` right before it releases (mode "x", exclusive, or "s", shared),
    ``downgrade(lock)`` right before it turns an exclusive hold into a shared one (which
    it then exits as "s"). Every event is
    one ``list.append`` (atomic), so the log's order is the order in which they happened
    and, if the locks exclude as they promise, ``check()`` replaying it never sees an
    exclusive holder beside anyone else.
    """

    def __init__(self) -> None:
        self.log: list[tuple[int, str, int]] = []

    def enter(self, lock: int, mode: str) -> None:
        self.log.append((lock, "enter " + mode, threading.get_ident()))

    def exit(self, lock: int, mode: str) -> None:
        self.log.append((lock, "exit " + mode, threading.get_ident()))

    def downgrade(self, lock: int) -> None:
        self.log.append((lock, "downgrade", threading.get_ident()))

    def check(self) -> int:
        """Replay the log; fail at the first overlap. How many sections it saw."""
        writer: dict[int, int] = {}
        readers: dict[int, Counter[int]] = {}
        sections = 0
        for n, (lock, event, thread) in enumerate(self.log):
            inside = readers.setdefault(lock, Counter())
            where = f"event {n} of {len(self.log)}: thread {thread} {event} lock {lock}"
            if event == "enter x":
                assert lock not in writer and not inside, \
                    f"{where} while writer {writer.get(lock)} and readers {dict(inside)} hold it"
                writer[lock] = thread
                sections += 1
            elif event == "enter s":
                assert lock not in writer, f"{where} while {writer[lock]} writes"
                inside[thread] += 1
                sections += 1
            elif event == "downgrade":
                assert writer.get(lock) == thread and not inside, \
                    f"{where} while writer {writer.get(lock)} and readers {dict(inside)} hold it"
                del writer[lock]
                inside[thread] += 1
            elif event == "exit x":
                assert writer.get(lock) == thread, f"{where}, held by {writer.get(lock)}"
                del writer[lock]
            else:
                assert inside[thread] > 0, f"{where} without a read hold"
                inside[thread] -= 1
                if not inside[thread]:
                    del inside[thread]
        assert not writer and not any(readers.values()), f"still inside: {writer} {readers}"
        return sections


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


def pairs() -> set[tuple[str, str]]:
    """The orders the lock-order checker has seen, as (first class, then class)."""
    return {(order.first, order.then) for order in lockorder.orders()}


# ---------------------------------------------------------------------------
# Kernel waits (/proc/locks)


def inode_key(path: str | Path) -> str:
    """How /proc/locks names path's inode: ``MAJOR:MINOR:INODE``."""
    st = os.stat(path)
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"


def kernel_waiters(path: str | Path) -> int:
    """How many lock requests wait in the kernel on the file at path now (/proc/locks)."""
    key = inode_key(path)
    with open("/proc/locks") as f:
        table = [line.split() for line in f]
    # "2: -> OFDLCK ADVISORY WRITE -1 fe:00:1234 0 EOF" is a request waiting.
    return sum(1 for fields in table if fields[1:2] == ["->"] and fields[6:7] == [key])


def wait_in_kernel(path: str | Path, count: int = 1, watch: Sequence[Agent | int] = (),
                   timeout: float = WAIT) -> None:
    """Return once ``count`` lock requests wait in the kernel on the file at path.

    The kernel gives no notice of that, so /proc/locks is read until timeout
    runs out (a path not there yet has no waiters). Meanwhile ``watch`` (agents'
    answers, process sentinels) is watched, and a process that answers or ends
    instead of blocking fails the test at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            waiting = kernel_waiters(path)
        except FileNotFoundError:
            waiting = 0
        if waiting >= count:
            return
        if watch:
            ready = select.select(list(watch), [], [], 0.002)[0]
            if ready:
                said = [r.reply() if isinstance(r, Agent) else f"process ended ({r})"
                        for r in ready]
                pytest.fail(f"expected {count} waiters on {path}, but instead: {said}")
        else:
            time.sleep(0.0005)
        if time.monotonic() > deadline:
            pytest.fail(f"only {waiting} of {count} requests waiting on {path} after {timeout} s")


# ---------------------------------------------------------------------------
# Processes


def join_all(processes: Sequence[multiprocessing.process.BaseProcess], timeout: float) -> None:
    """Join every process within timeout in all; kill and fail on a straggler."""
    deadline = time.monotonic() + timeout
    for proc in processes:
        proc.join(max(0.0, deadline - time.monotonic()))
    stragglers = [proc.pid for proc in processes if proc.is_alive()]
    for proc in processes:
        if proc.is_alive():
            proc.kill()
            proc.join(WAIT)
    assert not stragglers, f"processes {stragglers} still running after {timeout} s"
    assert [proc.exitcode for proc in processes] == [0] * len(processes)
