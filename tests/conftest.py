"""Shared test policy and fixtures.

The helpers the test files share are in ``tests/helpers/`` (one module a concern,
listed in ``lwtest.py``'s docstring); this file
puts that directory at the front of ``sys.path`` so that ``from lwtest import``
works however pytest is started (``--import-mode=importlib``, no packages), and
has pytest rewrite lwtest's asserts as it does the tests' own.

Tests that need root or another real-kernel facility ask for it through
``lwtest.need()``, which skips, or fails under ``LATCHWIRE_REQUIRE_KERNEL=1``.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HELPERS = str(Path(__file__).resolve().parent / "helpers")
if HELPERS not in sys.path:
    sys.path.insert(0, HELPERS)
pytest.register_assert_rewrite("lwtest", "lwagent", "lwfcntl", "lwthreads", "lwlocks", "lwnetns",
                               "witness")

from lwagent import Agent  # noqa: E402
from lwfcntl import OtherProcess  # noqa: E402
from lwtest import GUARD, need  # noqa: E402

from latchwire import _core, lockorder  # noqa: E402


@pytest.fixture(scope="module")
def genl_netns() -> Iterator[str]:
    """A fresh network namespace's name (``ip netns add``) for a module's generic
    netlink tests, deleted afterwards."""
    from lwnetns import drop_netns, make_netns

    ns = make_netns([], prefix="lwtest-genl")
    try:
        yield ns.name
    finally:
        drop_netns(ns)


@pytest.fixture
def root() -> None:
    """The test needs to run as root."""
    need(os.geteuid() == 0, "this test needs root")


@pytest.fixture
def ofd_in_this_process() -> Iterator[None]:
    """FileLocks and LockSpaces made in the test process (and its forked children) use
    OFD locks even if the run has LATCHWIRE_LOCKS=posix: export() and adopt() need them,
    and POSIX mode is tested through Agents. A test file opts in with
    ``pytestmark = pytest.mark.usefixtures("ofd_in_this_process")``."""
    posix = os.environ.get("LATCHWIRE_LOCKS") == "posix"
    if posix:
        _core._use_posix_locks(False)
    yield
    if posix:
        _core._use_posix_locks(True)


@pytest.fixture
def watchdog() -> Iterator[None]:
    """A hang (a lost wake-up, a wait that ignores its timeout) ends the run, not stalls it:
    after GUARD seconds faulthandler dumps every thread's stack and exits. A test file opts
    in with ``pytestmark = pytest.mark.usefixtures("watchdog")``."""
    faulthandler.dump_traceback_later(GUARD, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def checker() -> Iterator[None]:
    """The lock-order checker on for the test, knowing no orders; afterwards it forgets
    them again and is off (unless it was on before the test, as LATCHWIRE_LOCKDEP=1
    makes it)."""
    was = lockorder.enabled()
    lockorder.reset()
    lockorder.enable()
    try:
        yield
    finally:
        if not was:
            lockorder.disable()
        lockorder.reset()


@pytest.fixture
def agents() -> Iterator[Callable[..., Agent]]:
    """Start Agents (arguments as Agent's); every one still running at the end is killed."""
    started: list[Agent] = []

    def start(*args: Any, **kwargs: Any) -> Agent:
        agent = Agent(*args, **kwargs)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.kill()


@pytest.fixture
def lockfile(tmp_path: Path) -> str:
    """The path of a lock file (not created) in the test's own directory."""
    return str(tmp_path / "app.lock")


@pytest.fixture
def other(lockfile: str) -> Iterator[OtherProcess]:
    """An OtherProcess (plain fcntl) on lockfile, holding nothing yet; closed afterwards."""
    proc = OtherProcess(lockfile)
    yield proc
    proc.close()
