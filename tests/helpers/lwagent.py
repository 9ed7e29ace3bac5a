"""``Agent``: a fresh interpreter running ``lock_agent.py`` (a FileLock or a
LockSpace, on JSON commands), for tests about latchwire in another process."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lwtest import WAIT, child_env

AGENT = Path(__file__).resolve().parent / "lock_agent.py"


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
