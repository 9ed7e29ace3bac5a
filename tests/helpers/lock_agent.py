"""A separate process that takes file locks on command, for the process tests.

    python lock_agent.py PATH [LOCKFILE]
    python lock_agent.py --space [DIRECTORY]

The first form makes ``FileLock(PATH, lockfile=LOCKFILE)``; the second makes
``LockSpace(DIRECTORY)`` (``LockSpace(None)`` without DIRECTORY). The agent then
reads one JSON command a line on stdin and answers each with one JSON line on
stdout::

    {"op": "acquire", "blocking": true, "timeout": null, "shared": false}
    -> {"result": true, "t0": ..., "t1": ...}
    -> {"error": "LockBusy", "errno": 11, "message": "...", "t0": ..., "t1": ...}

A FileLock agent's commands are in ``filelock_ops`` below. A LockSpace agent's
are the LockSpace's methods, called by name with the command's other keys as
keyword arguments, and ``lockfile``/``unlockfile`` (a FileLock of a path locking
the path itself, not through the lockspace).

``t0``/``t1`` are ``time.monotonic()`` when the command started and ended (the
clock is system-wide, so they compare with the test's own readings). The agent
exits when stdin closes; its locks go with it. It is a script run by a fresh
interpreter, so it inherits nothing from the test process but the environment
(``LATCHWIRE_LOCKS=posix`` is honoured as latchwire is imported here).
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import latchwire
from latchwire import FileLock, LockSpace


def filelock_ops(path: str, lockfile: str | None) -> Callable[[str], Callable[..., Any]]:
    """The commands of an agent holding ``FileLock(path, lockfile=lockfile)``."""
    lock = FileLock(path, lockfile=lockfile)
    lockf_fds: list[int] = []

    def second_lock() -> str:
        """In a new thread: another FileLock of the same file tries, then is collected."""
        outcome: list[str] = []

        def attempt() -> None:
            other = FileLock(path, lockfile=lockfile)
            try:
                other.acquire(blocking=False)
            except latchwire.LockBusy:
                outcome.append("LockBusy")
            else:
                outcome.append("acquired")
                other.release()
            del other
            gc.collect()

        thread = threading.Thread(target=attempt)
        thread.start()
        thread.join(10)
        return outcome[0] if outcome else "no answer"

    def raw_open_close() -> bool:
        """Open and close the lock file behind the library's back (the close trap)."""
        os.close(os.open(lock.lockfile, os.O_RDONLY))
        with open(lock.lockfile, "rb"):
            pass
        return True

    def lockf(blocking: bool = True) -> bool:
        """A plain fcntl.lockf(LOCK_EX) holder on a descriptor of its own."""
        fd = os.open(lock.lockfile, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError:
            os.close(fd)
            raise
        lockf_fds.append(fd)
        return True

    def unlockf() -> bool:
        while lockf_fds:
            os.close(lockf_fds.pop())
        return True

    def state() -> dict[str, Any]:
        return {"pid": os.getpid(), "locked": lock.locked, "mode": lock.mode,
                "kind": lock.lock_kind, "lockfile": lock.lockfile}

    ops: dict[str, Callable[..., Any]] = {
        "acquire": lock.acquire,
        "release": lock.release,
        "upgrade": lock.upgrade,
        "downgrade": lock.downgrade,
        "verify": lock.verify,
        "remove": lock.remove,
        "state": state,
        "second_lock": second_lock,
        "raw_open_close": raw_open_close,
        "lockf": lockf,
        "unlockf": unlockf,
    }
    return ops.__getitem__


def lockspace_ops(directory: str | None) -> Callable[[str], Callable[..., Any]]:
    """The commands of an agent with ``LockSpace(directory)``."""
    space = LockSpace(directory)
    files: dict[str, FileLock] = {}

    def lockfile(path: str, shared: bool = False, wait: bool = False,
                 timeout: float | None = None) -> bool:
        """FileLock(path, lockfile=path), not through the lockspace; without waiting
        unless wait (then up to timeout seconds)."""
        lock = files[path] if path in files else FileLock(path, lockfile=path)
        result = lock.acquire(blocking=wait, timeout=timeout, shared=shared)
        files[path] = lock
        return result

    def upgradefile(path: str, timeout: float | None = None) -> bool:
        """Upgrade what lockfile(path, shared=True) took."""
        return files[path].upgrade(timeout=timeout)

    def unlockfile(path: str) -> None:
        """Release what lockfile(path) took."""
        files.pop(path).release()

    extra: dict[str, Callable[..., Any]] = {"lockfile": lockfile, "unlockfile": unlockfile,
                                            "upgradefile": upgradefile}
    return lambda op: extra[op] if op in extra else getattr(space, op)


def main() -> None:
    """Make the lock the command line asks for, then answer commands until stdin closes."""
    if sys.argv[1] == "--space":
        op_named = lockspace_ops(sys.argv[2] if len(sys.argv) > 2 else None)
    else:
        op_named = filelock_ops(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    serve(op_named)


def serve(op_named: Callable[[str], Callable[..., Any]]) -> None:
    """Answer lwagent.Agent's commands (one JSON object a line: "op" and its
    arguments) until stdin closes: the result or the error, with the times the
    call began and ended."""
    while line := sys.stdin.buffer.readline():
        command = json.loads(line)
        op = command.pop("op")
        t0 = time.monotonic()
        try:
            reply: dict[str, Any] = {"result": op_named(op)(**command)}
        except Exception as exc:
            reply = {"error": type(exc).__name__, "errno": getattr(exc, "errno", None),
                     "message": str(exc)}
        reply.update(t0=t0, t1=time.monotonic())
        sys.stdout.write(json.dumps(reply, default=repr) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
