"""Worker processes for the kill storm: loops on FileLocks of one file, forked and killed.

    python storm_worker.py WITNESS_DIR LOCKFILE

runs a *fork server*: a fresh interpreter (it inherits nothing from the test
but the environment, so ``LATCHWIRE_LOCKS=posix`` is honoured), single-threaded,
that imports latchwire once and then forks workers on command, so a respawn
costs a fork, not an interpreter start. It reads one command a line on stdin
and answers each with one line on stdout:

    spawn TAG THREADS SEED [FAIR]  ->  spawned TAG PID
                            a worker with THREADS threads (FAIR 1: fair FileLocks)
    kill TAG                ->  killed TAG STATUS   K record, SIGKILL, waitpid, R record
    stop TAG                ->  stopped TAG STATUS  it finishes its sections and exits
                                                    (STATUS "hung" if it had not within STOP s)

A worker's threads each run ``churn()`` on their own FileLocks of LOCKFILE,
recording every critical section in the witness log (``witness.py``) under the
worker's TAG; a worker's errors go to stderr as they happen, and make its exit
status 1. When stdin closes, the server kills every worker still running and
exits; a worker whose server is gone exits too (its stop pipe reads end-of-file).

``WorkerPool`` (below) is the test's side of it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from witness import Witness, Writer

from latchwire import FileLock, LockBusy, LockCancelled, LockTimeout

HERE = Path(__file__).resolve()
LONG = 30.0  # the timeout of a "blocking" acquire: only a lost wake-up or a deadlock reaches it
STOP = 60.0  # how long a worker told to stop may take to finish its sections
REPLY = 60.0  # the bound on any one answer of the server


def attempt(lock: FileLock, how: str, shared: bool, rng: random.Random) -> str:
    """Acquire lock in one of three ways: "wait" (up to LONG), "timeout" (up to 2 ms)
    or "nonblocking". "held", or why not: "busy", "timeout", "cancelled". A LONG
    wait that times out raises AssertionError: only a lost wake-up or a deadlock
    gets there."""
    try:
        if how == "wait":
            try:
                lock.acquire(timeout=LONG, shared=shared)
            except LockTimeout:
                raise AssertionError(f"a wait of {LONG} s timed out: a lost wake-up "
                                     "or a deadlock") from None
        elif how == "timeout":
            lock.acquire(timeout=rng.random() * 0.002, shared=shared)
        else:
            lock.acquire(blocking=False, shared=shared)
    except LockBusy:
        return "busy"
    except LockTimeout:
        return "timeout"
    except LockCancelled:
        return "cancelled"
    return "held"


def churn(writer: Writer, lockfile: str, resource: str, rng: random.Random,
          stop: threading.Event, errors: list[str], slot: list[FileLock | None] | None = None,
          reuse: float = 0.2, remove: float = 0.03,
          fair: bool = False) -> collections.Counter[str]:
    """Loop until stop: take a FileLock of lockfile (a new object per use, but for a
    ``reuse`` fraction of uses); ``attempt()`` it, waiting half the time, a timeout
    or not waiting otherwise, a quarter of the time shared; hold it for a witnessed
    section of up to a millisecond; release (or, for a ``remove`` fraction of the
    exclusive holds, ``remove()``: unlink the file while holding it, so that the next
    acquire anywhere creates it anew); drop it; half the time pause up to a millisecond.
    With ``fair``, the FileLocks are fair ones (``FileLock(fair=True)``).

    ``slot[0]`` is the lock in use, for a canceller thread to cancel(). Returns the
    outcomes counted ("held", "busy", "timeout", "cancelled", "error"); the
    traceback of each error (any other exception) goes to errors, and the loop
    goes on with a new FileLock (the old one released first if still held, so that
    one error does not leave a hold behind to fail every later acquisition).
    """
    outcomes: collections.Counter[str] = collections.Counter()
    lock: FileLock | None = None
    while not stop.is_set():
        if lock is None:
            lock = FileLock(lockfile, lockfile=lockfile, fair=fair)
        if slot is not None:
            slot[0] = lock
        shared = rng.random() < 0.25
        how = rng.choice(["wait", "wait", "timeout", "nonblocking"])
        try:
            outcome = attempt(lock, how, shared, rng)
            if outcome == "held":
                removes = not shared and rng.random() < remove
                try:
                    with writer.section(resource, lock, shared):
                        if rng.random() < 0.5:
                            time.sleep(rng.random() * 0.001)
                finally:
                    if removes:
                        lock.remove()
                    else:
                        lock.release()
        except Exception:
            errors.append(traceback.format_exc())
            if lock.locked:  # let go of what the failed call left held, if it can be
                with contextlib.suppress(Exception):
                    lock.release()
            outcome, lock = "error", None
        outcomes[outcome] += 1
        # Nothing keeps a FileLock not kept for reuse: when no thread has one, the
        # process's record of the file goes, and the next acquire makes it anew.
        if slot is not None:
            slot[0] = None
        if rng.random() >= reuse:
            lock = None
        if rng.random() < 0.5:
            time.sleep(rng.random() * 0.001)
    return outcomes


# ---------------------------------------------------------------------------
# The worker, in a forked child


class _Told(list[str]):
    """A list of failures, each also written to stderr as it is added: a worker that is
    killed later has reported them already."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def append(self, text: str) -> None:
        super().append(text)
        os.write(2, f"worker {self.tag} (pid {os.getpid()}): {text}\n".encode())


def _work(directory: str, lockfile: str, tag: str, threads: int, seed: int, stop_fd: int,
          fair: bool) -> int:
    """A worker's life: threads churning until stop_fd reads end-of-file; its exit status."""
    witness = Witness(directory, tag)
    stop = threading.Event()
    failures = _Told(tag)

    def run(i: int) -> None:
        try:
            churn(witness.writer(), lockfile, os.path.basename(lockfile),
                  random.Random(seed * 1000 + i), stop, failures, fair=fair)
        except BaseException:
            failures.append(traceback.format_exc())

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    # Until told to stop, or the server is gone (which closes the pipe too).
    select.select([stop_fd], [], [], None)
    stop.set()
    deadline = time.monotonic() + STOP
    for thread in workers:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in workers):
        failures.append(f"a thread was still running {STOP} s after the stop")
    return 1 if failures else 0


# ---------------------------------------------------------------------------
# The fork server


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal{os.WTERMSIG(status)}"
    return str(os.WEXITSTATUS(status))


def serve(directory: str, lockfile: str) -> None:
    """Answer spawn, kill and stop until stdin closes (see the module docstring)."""
    witness = Witness(directory, "server")
    workers: dict[str, tuple[int, int]] = {}  # tag -> (pid, write end of its stop pipe)

    def reply(text: str) -> None:
        os.write(1, (text + "\n").encode())

    def spawn(tag: str, threads: str, seed: str, fair: str = "0") -> str:
        stop_r, stop_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                # Only the server talks to the test; and a worker must not keep the
                # other workers' stop pipes open, or closing them would not stop them.
                devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, 0)
                os.dup2(devnull, 1)
                for _, other in workers.values():
                    os.close(other)
                os.close(stop_w)
                status = _work(directory, lockfile, tag, int(threads), int(seed), stop_r,
                               fair == "1")
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        os.close(stop_r)
        workers[tag] = (pid, stop_w)
        return f"spawned {tag} {pid}"

    def kill(tag: str) -> str:
        pid, stop_w = workers.pop(tag)
        witness.killing(tag)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        witness.reaped(tag)
        os.close(stop_w)
        return f"killed {tag} {_status(status)}"

    def stop(tag: str) -> str:
        pid, stop_w = workers.pop(tag)
        os.close(stop_w)
        deadline = time.monotonic() + STOP + 5
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return f"stopped {tag} {_status(status)}"
            if time.monotonic() > deadline:
                witness.killing(tag)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                witness.reaped(tag)
                return f"stopped {tag} hung"
            time.sleep(0.005)

    commands: dict[str, Callable[..., str]] = {"spawn": spawn, "kill": kill, "stop": stop}
    reply("ready")
    try:
        for line in sys.stdin:
            op, *args = line.split()
            reply(commands[op](*args))
    finally:
        for tag in list(workers):
            kill(tag)


# ---------------------------------------------------------------------------
# The test's side


class WorkerPool:
    """The fork server, driven from the test: ``spawn()`` a worker, ``kill()`` or
    ``stop()`` it by tag. ``posix=True`` starts it with ``LATCHWIRE_LOCKS=posix``.
    Its stderr (and its workers') goes to ``stderr_path``, read by ``errors()``."""

    def __init__(self, directory: Path, lockfile: str, stderr_path: Path, *,
                 posix: bool = False) -> None:
        from lwtest import child_env

        env = child_env()
        if posix:
            env["LATCHWIRE_LOCKS"] = "posix"
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 - open for the server's life
        self.proc = subprocess.Popen([sys.executable, str(HERE), str(directory), lockfile],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=env, bufsize=0)
        self._buf = b""
        self._serial = 0
        self.running: list[str] = []
        assert self._reply() == "ready"

    def _reply(self) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + REPLY
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"the worker server gave no answer within {REPLY} s")
            data = os.read(fd, 4096)
            if not data:
                raise AssertionError(f"the worker server exited: {self.errors()}")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def _call(self, *words: object) -> list[str]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((" ".join(map(str, words)) + "\n").encode())
        return self._reply().split()

    def spawn(self, threads: int, seed: int, fair: bool = False) -> str:
        """Start a worker with threads threads (with fair FileLocks if fair); its tag."""
        self._serial += 1
        tag = f"w{self._serial}"
        answer = self._call("spawn", tag, threads, seed, int(fair))
        assert answer[:2] == ["spawned", tag], answer
        self.running.append(tag)
        return tag

    def kill(self, tag: str) -> str:
        """SIGKILL the worker (K record before, R record after); its wait status."""
        self.running.remove(tag)
        answer = self._call("kill", tag)
        assert answer[:2] == ["killed", tag], answer
        return answer[2]

    def stop(self, tag: str) -> str:
        """Let the worker finish its sections and exit; its exit status ("0" if all went well)."""
        self.running.remove(tag)
        answer = self._call("stop", tag)
        assert answer[:2] == ["stopped", tag], answer
        return answer[2]

    def errors(self) -> str:
        """What the server and its workers wrote on stderr."""
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        """Close stdin (the server kills any worker left and exits); wait for it."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(REPLY)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(REPLY)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
