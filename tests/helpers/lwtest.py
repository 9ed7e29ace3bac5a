"""The tests' policy and the small things every test file uses.

``tests/conftest.py`` puts this directory (``tests/helpers``) at the front of
``sys.path`` and has pytest rewrite the asserts of every module in it, so a test
file does ``from lwtest import ...`` (or ``lwagent``, ``lwfcntl``, ``lwthreads``,
``lwlocks``, ``lwnetns``, ``witness``) however pytest was started. One module a
concern:

- ``lwtest``: the policy (``need()``: skip, or fail under
  ``LATCHWIRE_REQUIRE_KERNEL=1``), the bounds every wait uses, and small helpers;
- ``lwagent``: ``Agent``, latchwire in a fresh interpreter driven over pipes;
- ``lwfcntl``: plain-``fcntl`` processes (an oracle independent of latchwire) and
  what ``/proc/locks`` says of kernel waits;
- ``lwthreads``: ``Worker`` threads, and seeing a thread blocked in the kernel;
- ``lwlocks``: the in-process locks' sites, timing judgments and the checker's orders;
- ``witness``: the witness logs of critical sections, and their checkers;
- ``lwnetns``: private network namespaces.

Every wait is bounded, so a bug fails a test instead of hanging it; the
``watchdog`` fixture (``GUARD``) ends the run if a test hangs anyway.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence

import pytest

from latchwire import FileLock

WAIT = 10.0  # the bound on any one wait for another process (Agents, forked children)
BOUND = 5.0  # the bound on a handshake with a Worker thread or an OtherProcess
WATCHDOG = 15.0  # an idle OtherProcess drops its locks and exits after this long
GUARD = 120.0  # the ``watchdog`` fixture dumps every stack and ends the run after this long
LATCHWIRE = [sys.executable, "-m", "latchwire"]
REQUIRE_KERNEL = os.environ.get("LATCHWIRE_REQUIRE_KERNEL") == "1"
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))  # a CPython built without the GIL


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


def here() -> int:
    """The caller's current line number."""
    return sys._getframe(1).f_lineno


def site(line: int) -> str:
    """How latchwire names line of the caller's file: ``FILE:LINE``."""
    return f"{sys._getframe(1).f_code.co_filename}:{line}"


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
