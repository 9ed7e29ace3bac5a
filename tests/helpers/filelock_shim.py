"""py-filelock's API over latchwire, so that py-filelock's own test suite can judge latchwire.

``tests/test_py_filelock_suite.py`` runs py-filelock's ``tests/test_filelock.py``
(fetched from its sdist at test time, never kept here) with this module standing
in for the ``filelock`` package. It covers what that suite uses of the 3.x API:

- ``FileLock(lock_file, timeout=-1, mode=0o644, thread_local=True, *, blocking=True,
  is_singleton=False)``; ``UnixFileLock`` is the same class;
- ``acquire(timeout=None, poll_interval=0.05, *, poll_intervall=None, blocking=None)``
  returning a context manager that releases, ``release(force=False)``, ``with``,
  use as a decorator, ``is_locked``, ``lock_counter``, ``lock_file``, ``timeout``,
  ``blocking``, ``mode``, ``is_thread_local()``, ``is_singleton``;
- ``Timeout`` (a ``TimeoutError``), and the debug messages on the ``filelock`` logger.

py-filelock's lock is reentrant: an object counts its acquisitions and unlocks
on the last release. latchwire's FileLock is not, so the count is kept here:
the first acquisition of a context makes a *new* ``latchwire.FileLock`` (as
py-filelock opens a new descriptor) and acquires it (``timeout < 0``: waiting in
the kernel as long as it takes; ``0`` or ``blocking=False``: not at all; else up
to ``timeout`` s, with no polling: ``poll_interval`` is accepted and unused);
the last release releases it and drops it. As in py-filelock, a lock object's
state (counter and hold) is per thread unless ``thread_local=False``.

``SoftFileLock`` and ``WindowsFileLock`` exist so the suite imports; acquiring
one raises NotImplementedError (the suite's cases for them are not run).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
import warnings
from types import TracebackType
from typing import Any, ClassVar, cast
from weakref import WeakValueDictionary

import latchwire

__all__ = ["AcquireReturnProxy", "BaseFileLock", "FileLock", "SoftFileLock", "Timeout",
           "UnixFileLock", "WindowsFileLock"]
__version__ = "3.20.0+latchwire"

_LOGGER = logging.getLogger("filelock")


class Timeout(TimeoutError):
    """The lock could not be acquired in time (or at once, when not blocking)."""

    def __init__(self, lock_file: str) -> None:
        super().__init__()
        self._lock_file = lock_file

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self._lock_file,)

    def __str__(self) -> str:
        return f"The file lock '{self._lock_file}' could not be acquired."

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._lock_file!r})"

    @property
    def lock_file(self) -> str:
        return self._lock_file


class AcquireReturnProxy:
    """What ``acquire()`` returns: ``with lock.acquire():`` releases on exit."""

    def __init__(self, lock: BaseFileLock) -> None:
        self.lock = lock

    def __enter__(self) -> BaseFileLock:
        return self.lock

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.lock.release()


class _Context:
    """One lock object's state (or one thread's share of it)."""

    def __init__(self, lock_file: str, timeout: float, mode: int, blocking: bool) -> None:
        self.lock_file = lock_file
        self.timeout = timeout
        self.mode = mode
        self.blocking = blocking
        self.lock_counter = 0
        self.held: latchwire.FileLock | None = None


class _ThreadContext(_Context, threading.local):
    """The state per thread: each thread starts from the constructor's values."""


class _Meta(type):
    """Singletons per lock file and class, and constructor arguments passed on only
    to the parameters a subclass's ``__init__`` has (as py-filelock does)."""

    def __call__(cls, lock_file: str | os.PathLike[str], timeout: float = -1,
                 mode: int = 0o644, thread_local: bool = True, *, blocking: bool = True,
                 is_singleton: bool = False, **kwargs: Any) -> Any:
        instances: WeakValueDictionary[str, BaseFileLock] = cls._instances  # type: ignore[attr-defined]
        if is_singleton and (existing := instances.get(str(lock_file))) is not None:
            given = {"thread_local": (thread_local, existing.is_thread_local()),
                     "timeout": (timeout, existing.timeout), "mode": (mode, existing.mode),
                     "blocking": (blocking, existing.blocking)}
            differing = {k: v for k, v in given.items() if v[0] != v[1]}
            if not differing:
                return existing
            raise ValueError(
                "Singleton lock instances cannot be initialized with differing arguments\n"
                "Non-matching arguments: " + "".join(
                    f"\n\t{name} (existing lock has {have} but {passed} was passed)"
                    for name, (passed, have) in differing.items()))
        offered = {"timeout": timeout, "mode": mode, "thread_local": thread_local,
                   "blocking": blocking, "is_singleton": is_singleton, **kwargs}
        accepted = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
        instance = super().__call__(lock_file, **{k: v for k, v in offered.items()
                                                  if k in accepted})
        if is_singleton:
            instances[str(lock_file)] = instance
        return instance


class BaseFileLock(contextlib.ContextDecorator, metaclass=_Meta):
    """py-filelock's lock object, holding a latchwire FileLock while acquired."""

    _instances: ClassVar[WeakValueDictionary[str, BaseFileLock]] = WeakValueDictionary()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._instances = WeakValueDictionary()

    def __init__(self, lock_file: str | os.PathLike[str], timeout: float = -1,
                 mode: int = 0o644, thread_local: bool = True, *, blocking: bool = True,
                 is_singleton: bool = False) -> None:
        self._is_thread_local = thread_local
        self._is_singleton = is_singleton
        context = _ThreadContext if thread_local else _Context
        self._context: _Context = context(os.fspath(lock_file), timeout, mode, blocking)

    def is_thread_local(self) -> bool:
        return self._is_thread_local

    @property
    def is_singleton(self) -> bool:
        return self._is_singleton

    @property
    def lock_file(self) -> str:
        return self._context.lock_file

    @property
    def timeout(self) -> float:
        return self._context.timeout

    @timeout.setter
    def timeout(self, value: float | str) -> None:
        self._context.timeout = float(value)

    @property
    def blocking(self) -> bool:
        return self._context.blocking

    @blocking.setter
    def blocking(self, value: bool) -> None:
        self._context.blocking = value

    @property
    def mode(self) -> int:
        return self._context.mode

    @property
    def is_locked(self) -> bool:
        return self._context.held is not None

    @property
    def lock_counter(self) -> int:
        return self._context.lock_counter

    def _take(self, timeout: float, blocking: bool) -> latchwire.FileLock:
        """A new latchwire FileLock of the lock file, acquired; Timeout if not."""
        path = self.lock_file
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        lock = latchwire.FileLock(path, lockfile=path, create_mode=self._context.mode)
        try:
            if not blocking or timeout == 0:
                lock.acquire(blocking=False)
            elif timeout < 0:
                lock.acquire()
            else:
                lock.acquire(timeout=timeout)
        except latchwire.LockBusy:
            _LOGGER.debug("Failed to immediately acquire lock %s on %s", id(self), path)
            raise Timeout(path) from None
        except latchwire.LockTimeout:
            _LOGGER.debug("Timeout on acquiring lock %s on %s", id(self), path)
            raise Timeout(path) from None
        return lock

    def acquire(self, timeout: float | None = None, poll_interval: float = 0.05, *,
                poll_intervall: float | None = None,
                blocking: bool | None = None) -> AcquireReturnProxy:
        context = self._context
        if timeout is None:
            timeout = context.timeout
        if blocking is None:
            blocking = context.blocking
        if poll_intervall is not None:
            warnings.warn("use poll_interval instead of poll_intervall", DeprecationWarning,
                          stacklevel=2)
        context.lock_counter += 1
        try:
            if context.held is None:
                _LOGGER.debug("Attempting to acquire lock %s on %s", id(self), self.lock_file)
                context.held = self._take(timeout, blocking)
            _LOGGER.debug("Lock %s acquired on %s", id(self), self.lock_file)
        except BaseException:
            context.lock_counter = max(0, context.lock_counter - 1)
            raise
        return AcquireReturnProxy(self)

    def release(self, force: bool = False) -> None:
        context = self._context
        if context.held is None:
            return
        context.lock_counter -= 1
        if context.lock_counter == 0 or force:
            _LOGGER.debug("Attempting to release lock %s on %s", id(self), self.lock_file)
            held, context.held = context.held, None
            context.lock_counter = 0
            held.release()
            _LOGGER.debug("Lock %s released on %s", id(self), self.lock_file)

    def __enter__(self) -> BaseFileLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(AttributeError):  # a constructor that raised
            self.release(force=True)


class FileLock(BaseFileLock):
    """The lock: latchwire's FileLock on ``lock_file`` itself."""


UnixFileLock = FileLock


class _NotShimmed(BaseFileLock):
    def _take(self, timeout: float, blocking: bool) -> latchwire.FileLock:
        raise NotImplementedError(f"{type(self).__name__} is not shimmed over latchwire")


class SoftFileLock(_NotShimmed):
    """Not provided (py-filelock's lock-file-exists lock)."""


class WindowsFileLock(_NotShimmed):
    """Not provided."""


def install() -> None:
    """Make ``import filelock`` (and ``from filelock import ...``) give this module."""
    import sys
    sys.modules["filelock"] = cast(Any, sys.modules[__name__])
