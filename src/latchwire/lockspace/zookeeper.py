"""A lockspace on ZooKeeper (``LockSpace("zk://HOST:PORT[,HOST:PORT...]/PREFIX")``).

Needs the ``zookeeper`` extra (kazoo). Resource ``name`` is the znode
``PREFIX/name``; each owner's hold, or wait, is one ephemeral sequential znode
under it, ``ex-<id>-<seq>`` or ``sh-<id>-<seq>``, holding the owner, host and
pid as JSON. The queue is served in sequence order: an exclusive entry is
granted when no entry is ahead of it, a shared one when no exclusive entry is
ahead of it. A waiter watches only the nearest entry that blocks it (no herd).

The fencing token of a lease is its znode's creation zxid: ZooKeeper orders
every write, and an entry created later on the same resource is granted later,
so every exclusive grant carries a larger token than any grant before it.

Partitions and pauses, plainly:

- Entries are ephemeral: they live exactly as long as the session that made
  them. While this process cannot reach a ZooKeeper quorum, its leases are
  ``"suspended"`` (``valid`` False); if the connection comes back within the
  session timeout they are ``"held"`` again, otherwise ZooKeeper has expired
  the session, deleted the entries and may have granted the resources to
  others, and the leases are ``"lost"`` the moment this process hears of it.
- A process paused (SIGSTOP, a long GC or swap storm, a frozen VM) longer than
  the session timeout comes back still *believing* it holds its leases until
  its client reconnects and learns the session is gone. Nothing on its side
  can close that window. What makes it safe is the token: the guarded
  resource keeps the largest token it has accepted and refuses anything
  smaller, so the late writes of a holder that lost its lease are rejected.
- On the minority side of a partition no acquisition succeeds (every call
  waits for a quorum, bounded by the session timeout); the majority side
  carries on once the minority's sessions expire.
- Waiting acquisitions survive a short disconnection (their entries stand);
  one whose session expires fails with ``SessionLost``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Hashable, Sequence
from typing import Any, cast

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    SessionExpiredError,
)
from kazoo.retry import KazooRetry, RetryFailedError

from latchwire.errors import LockBusy, LockTimeout
from latchwire.lockspace._types import State, check_name
from latchwire.lockspace.remote import RemoteLockSpace, SessionLost

__all__ = ["ZkLockSpace"]

_STATES: dict[str, State] = {KazooState.CONNECTED: "held", KazooState.SUSPENDED: "suspended",
                             KazooState.LOST: "lost"}


def _nothing() -> None:
    """What stops a ZooKeeper watch: nothing (it fires once, at most)."""


def _sequence(entry: str) -> int:
    """The sequence number ZooKeeper appended to an entry's name."""
    return int(entry.rsplit("-", 1)[1])


class ZkLockSpace(RemoteLockSpace):
    """A lockspace whose resources are znodes under prefix on the ZooKeeper at hosts.

    ``hosts`` is ``"HOST:PORT,HOST:PORT"`` or a sequence of ``"HOST:PORT"``.
    ``session_timeout`` (seconds, within the server's bounds) is how long a
    holder that stopped answering keeps its leases, and the bound on every
    call to ZooKeeper; ``connect_timeout`` bounds the first connection
    (``ConnectionError``). See the module docstring for the semantics.
    """

    def __init__(self, hosts: str | Sequence[str], prefix: str = "/latchwire", *,
                 session_timeout: float = 10.0, connect_timeout: float = 10.0) -> None:
        if not prefix.startswith("/"):
            raise ValueError(f"prefix {prefix!r} must start with /")
        super().__init__()
        self.prefix = prefix.rstrip("/")
        self.hosts = hosts if isinstance(hosts, str) else ",".join(hosts)
        self.session_timeout = session_timeout
        self.client = KazooClient(hosts=self.hosts, timeout=session_timeout)
        self.client.add_listener(self._on_state)
        try:
            self.client.start(timeout=connect_timeout)
        except self.client.handler.timeout_exception as err:
            self._close_session()
            raise ConnectionError(f"no ZooKeeper at {self.hosts} within {connect_timeout} s"
                                  ) from err

    def __repr__(self) -> str:
        return f"<latchwire ZkLockSpace zk://{self.hosts}{self.prefix}>"

    def path(self, name: str) -> str:
        """The znode that stands for resource name."""
        return f"{self.prefix}/{check_name(name)}"

    def _on_state(self, state: str) -> None:
        """kazoo's session listener (its connection thread): pass the state on."""
        self._session_changed(_STATES[state])

    def _call(self, what: str, attempt: Callable[[float], Any], deadline: float | None = None,
              any_session: bool = False) -> Any:
        """attempt(seconds left)'s result, retried over connection losses (and, if
        any_session, over an expired session, until the client has a new one); bounded by
        the session timeout and by deadline (LockTimeout past it). SessionLost if the
        session expired, ConnectionError if ZooKeeper stays out of reach."""
        stop = time.monotonic() + self.session_timeout
        if deadline is not None and deadline < stop:
            stop = deadline
        retry = KazooRetry(max_tries=-1, delay=0.01, max_delay=0.5, ignore_expire=any_session,
                           deadline=max(0.0, stop - time.monotonic()))
        try:
            return retry(lambda: attempt(max(0.0, stop - time.monotonic())))
        except SessionExpiredError as err:
            raise SessionLost(f"the ZooKeeper session expired: {what}") from err
        except (RetryFailedError, self.client.handler.timeout_exception) as err:
            if stop == deadline:
                raise LockTimeout(f"timed out: {what}") from err
            raise ConnectionError(f"no answer from ZooKeeper at {self.hosts} within "
                                  f"{self.session_timeout} s: {what}") from err

    def _op(self, what: str, method: Callable[..., Any], *args: Any,
            deadline: float | None = None, **kwargs: Any) -> Any:
        """One kazoo call (method is a ``*_async`` one) through ``_call``."""
        return self._call(what, lambda left: method(*args, **kwargs).get(timeout=left), deadline)

    def _enqueue(self, name: str, shared: bool, owner: Hashable, autocreate: bool,
                 deadline: float | None) -> tuple[str, int]:
        """Create owner's ephemeral sequential znode under name's; (path, czxid).

        The znode's name carries a unique id, so a create whose answer was lost
        with the connection is looked for before it is tried again, and one
        that completes after this gave up waiting for it is deleted at once.
        """
        parent = self.path(name)
        tag = f"{'sh' if shared else 'ex'}-{uuid.uuid4().hex}-"
        data = self._entry_data(owner)
        tried = False

        def create(left: float) -> tuple[str, Any]:
            nonlocal tried
            if tried:
                with contextlib.suppress(NoNodeError):
                    for entry in self.client.get_children_async(parent).get(timeout=left):
                        path = f"{parent}/{entry}"
                        if entry.startswith(tag) and \
                                (stat := self.client.exists_async(path).get(timeout=left)):
                            return path, stat
            tried = True
            request = self.client.create_async(f"{parent}/{tag}", data, ephemeral=True,
                                               sequence=True, makepath=autocreate,
                                               include_data=True)
            try:
                return cast(tuple[str, Any], request.get(timeout=left))
            except self.client.handler.timeout_exception:
                request.rawlink(self._delete_late_entry)
                raise

        try:
            path, stat = self._call(f"queue for {name!r}", create, deadline, any_session=True)
        except NoNodeError:
            raise FileNotFoundError(f"no resource {name!r} ({parent})") from None
        return path, int(stat.czxid)

    def _delete_late_entry(self, request: Any) -> None:
        """A create given up on has completed after all: delete what it made."""
        if request.successful():
            self.client.delete_async(request.get()[0])

    def queue(self, name: str, deadline: float | None = None) -> list[str]:
        """The entries (holds and waits, from everywhere) on name, first served first;
        FileNotFoundError if name has no znode."""
        try:
            entries = self._op(f"list {name!r}", self.client.get_children_async,
                               self.path(name), deadline=deadline)
        except NoNodeError:
            raise FileNotFoundError(f"no resource {name!r} ({self.path(name)})") from None
        return [f"{self.path(name)}/{entry}" for entry in sorted(entries, key=_sequence)]

    def _blocker(self, name: str, key: str, shared: bool,
                 deadline: float | None) -> tuple[str, int] | None:
        """The nearest entry ahead of key that conflicts with it, or None."""
        try:
            entries = self.queue(name, deadline)
        except FileNotFoundError:
            entries = []
        if key not in entries:
            raise SessionLost(f"the queue entry {key} is gone: its session expired")
        ahead = entries[:entries.index(key)]
        if shared:
            ahead = [entry for entry in ahead if entry.rsplit("/", 1)[1].startswith("ex-")]
        return (ahead[-1], 0) if ahead else None

    def _watch_gone(self, ahead: tuple[str, int], gone: Callable[[], None]
                    ) -> Callable[[], None]:
        """A one-shot ZooKeeper watch on the entry (kazoo's thread calls gone on any event);
        gone at once if the entry is already gone or the request fails (the caller's next
        look at the queue says why, with retries). Stopping is a no-op: a watch's late
        call is one spurious wake."""
        request = self.client.exists_async(ahead[0], watch=lambda _event: gone())

        def answered(request: Any) -> None:
            if not request.successful() or request.get() is None:
                gone()

        request.rawlink(answered)
        return _nothing

    def _dequeue(self, key: str) -> None:
        """Delete the entry key; one already gone (or gone with its session) is fine."""
        with contextlib.suppress(NoNodeError, SessionLost):
            self._op(f"delete {key}", self.client.delete_async, key)

    def _drop_resource(self, name: str) -> None:
        """Delete name's znode unless entries are queued on it."""
        with contextlib.suppress(NoNodeError, NotEmptyError):
            self._op(f"delete {name!r}", self.client.delete_async, self.path(name))

    def create(self, name: str) -> None:
        """Create name's znode (persistent); FileExistsError if it exists."""
        try:
            self._op(f"create {name!r}", self.client.create_async, self.path(name),
                     makepath=True)
        except NodeExistsError:
            raise FileExistsError(f"resource {name!r} exists ({self.path(name)})") from None

    def delete(self, name: str) -> None:
        """Delete name's znode: LockBusy if entries are queued on it, FileNotFoundError if
        it does not exist."""
        try:
            self._op(f"delete {name!r}", self.client.delete_async, self.path(name))
        except NotEmptyError:
            raise LockBusy(f"resource {name!r} is held or awaited", self.path(name)) from None
        except NoNodeError:
            raise FileNotFoundError(f"no resource {name!r} ({self.path(name)})") from None

    def _close_session(self) -> None:
        """Close the ZooKeeper session (its entries go with it) and the client's threads."""
        self.client.stop()
        self.client.close()

