"""What the asyncio tests share: running a coroutine on a backend (asyncio, or anyio on
asyncio or trio), and counting this process's descriptors."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

from lwtest import need

try:
    import anyio
except ImportError:  # the test extra has it; without it the backend tests say so
    anyio = None

BACKENDS = ["asyncio", "anyio-asyncio", "anyio-trio"]


def run(backend: str, main: Callable[[], Awaitable[Any]]) -> Any:
    """main() on backend: bare asyncio, or anyio on asyncio or on trio."""
    if backend == "asyncio":
        async def wrapped() -> Any:
            return await main()
        return asyncio.run(wrapped())
    need(anyio is not None, "anyio is not installed (the test extra has it)")
    name = backend.removeprefix("anyio-")
    if name == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            need(False, "trio is not installed (the test extra has it)")
    return anyio.run(main, backend=name)


def open_fds(settle: bool = False) -> int:
    """This process's descriptors, but for its one inotify instance (the path watch),
    which a lock record's second grant makes and the process keeps. With settle, the
    garbage of earlier tests is collected first (so that it does not close descriptors
    during the test that counts): take a baseline so, and compare the count at the end,
    without collecting, with ``<=``."""
    if settle:
        gc.collect()
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own, closed since
            count += os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify"
    return count


def fd_numbers() -> set[int]:
    """This process's descriptor numbers."""
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def threads() -> int:
    """This process's threads, as the kernel counts them."""
    return len(os.listdir("/proc/self/task"))


async def cancel_at_random(task: asyncio.Future[Any], rng: random.Random,
                           max_delay: float) -> tuple[str, str]:
    """Cancel task at once, after 1-12 loop turns, or after up to max_delay s (chosen
    at random), and wait for it: (how, outcome), outcome "cancelled", "completed" or
    "timed out" (the call's own timeout)."""
    how = rng.choice(["at once", "turns", "delay"])
    if how == "turns":
        for _ in range(rng.randint(1, 12)):
            await asyncio.sleep(0)
    elif how == "delay":
        await asyncio.sleep(rng.uniform(0, max_delay))
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return how, "cancelled"
    except TimeoutError:
        return how, "timed out"
    return how, "completed"
