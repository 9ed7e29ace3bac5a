"""A lockspace on etcd (``LockSpace("etcd://HOST:PORT/PREFIX")``), through etcd's JSON gateway.

Needs the ``etcd`` extra (etcd3gw, used only for its raw calls and its watch
stream: its ``Lock`` never waits and leaks a lease per acquisition). The
lockspace holds one etcd lease, its *session*, granted with a TTL of
``session_timeout`` (at least 2 s) and kept alive by a thread every third of
it. Each owner's hold, or wait, on resource ``name`` is one key
``PREFIX/name/ex-<id>`` or ``PREFIX/name/sh-<id>`` put on that lease (in a
transaction that creates it only if absent), holding the owner, host and pid
as JSON. The queue is served in creation-revision order: an exclusive entry is
granted when no entry is ahead of it, a shared one when no exclusive entry is
ahead of it. A waiter waits only for the nearest entry that blocks it to be
deleted; every waiter of the lockspace, blocking or awaited, hears of it from
one watch stream of the deletions under the prefix (one thread, started with
the first wait), and one that saw its entry before the stream began looks
again at once, so a deletion in between is not missed.

The fencing token of a lease is its key's creation revision: etcd orders every
write, and an entry created later on the same resource is granted later.

Partitions and pauses, plainly:

- Entries live as long as the session's etcd lease. When keep-alives fail, the
  leases here are ``"suspended"`` (``valid`` False); once a keep-alive
  succeeds they are ``"held"`` again. When the TTL has run out since the last
  keep-alive that succeeded (counted from when it was sent, so never later
  than etcd counts it), or etcd says the lease is gone, they are ``"lost"``,
  and the next acquisition starts a new session.
- A process paused longer than the TTL learns of the loss as soon as its
  keep-alive thread runs again, without asking etcd, but code already running
  on its behalf may act first. The token is what makes that safe: the guarded
  resource keeps the largest token it has accepted and refuses smaller ones.
- Without a quorum etcd grants nothing; calls give up after the session
  timeout with ``ConnectionError``. A waiting acquisition whose session is
  lost fails with ``SessionLost``.
- ``delete(name)`` checks that nothing is queued, then deletes the resource's
  key: an acquisition with ``autocreate=False`` that slips in between keeps
  its lease on a deleted resource. Resources acquired with ``autocreate``
  have no key of their own: they exist while entries are queued on them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from typing import Any

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception

from latchwire.errors import LockBusy, LockTimeout
from latchwire.lockspace._types import check_name
from latchwire.lockspace.remote import RemoteLockSpace, SessionLost

__all__ = ["EtcdLockSpace"]

_UNREACHABLE = (ConnectionFailedError, ConnectionTimeoutError)
_REMEMBERED = 4096  # deletions the watch stream remembers, for waits that register late


def _b64(text: str) -> str:
    """text as the gateway takes bytes: base64 of its UTF-8."""
    return base64.b64encode(text.encode()).decode()


def _key(kv: dict[str, Any]) -> str:
    """The key of a key-value the gateway returned."""
    return base64.b64decode(kv["key"]).decode()


def _is_exclusive(key: str) -> bool:
    """Whether the entry key is an exclusive request."""
    return key.rsplit("/", 1)[1].startswith("ex-")


class EtcdLockSpace(RemoteLockSpace):
    """A lockspace whose resources are key prefixes under prefix on the etcd at endpoint.

    ``endpoint`` is ``"HOST:PORT"`` (the client URL's, plain HTTP).
    ``session_timeout`` (seconds, rounded up to a whole TTL of at least 2) is
    how long a holder that stopped answering keeps its leases, and the bound on
    every call to etcd; ``connect_timeout`` bounds the first one
    (``ConnectionError``). See the module docstring for the semantics.
    """

    def __init__(self, endpoint: str, prefix: str = "/latchwire", *,
                 session_timeout: float = 10.0, connect_timeout: float = 10.0) -> None:
        if not prefix.startswith("/"):
            raise ValueError(f"prefix {prefix!r} must start with /")
        host, _, port = endpoint.rpartition(":")
        super().__init__()
        self.prefix = prefix.rstrip("/")
        self.endpoint = endpoint
        self.ttl = max(2, math.ceil(session_timeout))
        self.session_timeout = float(self.ttl)
        self.client = Etcd3Client(host=host, port=int(port), timeout=self.ttl / 3,
                                  api_path="/v3/")
        self._lease_mutex = threading.Lock()
        self._lease_id: str | None = None
        self._alive_until = 0.0  # monotonic: the session's lease surely lives until then
        self._closing = threading.Event()
        self._watch_mutex = threading.Lock()
        self._gone: dict[str, list[Callable[[], None]]] = {}  # key -> calls when deleted
        self._watcher: threading.Thread | None = None  # the watch thread, once started
        self._stream: requests.Response | None = None
        self._watch_from = 0  # the revision the watch stream started at
        self._deleted: dict[str, int] = {}  # the latest keys deleted -> at which revision
        self._forgotten = 0  # the latest revision of a deletion no longer in _deleted
        try:
            self._lease(time.monotonic() + connect_timeout)
        except (ConnectionError, LockTimeout) as err:
            self._closing.set()
            raise ConnectionError(f"no etcd at {endpoint} within {connect_timeout} s") from err
        self._keeper = threading.Thread(target=self._keep_alive, daemon=True,
                                        name="latchwire-etcd-keepalive")
        self._keeper.start()

    def __repr__(self) -> str:
        return f"<latchwire EtcdLockSpace etcd://{self.endpoint}{self.prefix}>"

    def path(self, name: str) -> str:
        """The key that stands for resource name; its entries are under it and a slash."""
        return f"{self.prefix}/{check_name(name)}"

    def _post(self, what: str, call: str, body: dict[str, Any],
              deadline: float | None = None) -> dict[str, Any]:
        """The gateway's answer to body posted to call, retried while etcd is out of
        reach; bounded by the session timeout and by deadline (LockTimeout past it),
        ConnectionError if etcd stays out of reach that long."""
        stop = time.monotonic() + self.session_timeout
        if deadline is not None and deadline < stop:
            stop = deadline
        pause = 0.01
        while True:
            try:
                answer: dict[str, Any] = self.client.post(self.client.get_url(call), json=body)
                return answer
            except _UNREACHABLE as err:
                if time.monotonic() + pause >= stop:
                    if stop == deadline:
                        raise LockTimeout(f"timed out: {what}") from err
                    raise ConnectionError(f"no answer from etcd at {self.endpoint} within "
                                          f"{self.session_timeout} s: {what}") from err
                time.sleep(pause)  # a back-off between attempts, not a synchronisation
                pause = min(pause * 2, 0.5)

    # -- the session: one etcd lease, kept alive -------------------------------

    def _lease(self, deadline: float | None) -> str:
        """The session's lease id, granting a new lease if there is none."""
        with self._lease_mutex:
            if self._lease_id is None:
                sent = time.monotonic()
                granted = self._post("grant a lease", "/lease/grant", {"TTL": self.ttl}, deadline)
                self._lease_id = str(granted["ID"])
                self._alive_until = sent + int(granted["TTL"])
            return self._lease_id

    def _keep_alive(self) -> None:
        """The keep-alive thread: refresh the lease every third of its TTL, and say what
        the session's state is."""
        while not self._closing.wait(self.ttl / 3):
            with self._lease_mutex:
                lease_id = self._lease_id
            if lease_id is None:
                continue
            sent = time.monotonic()
            if sent >= self._alive_until:
                self._lose(lease_id)
                continue
            try:
                answer = self.client.post(self.client.get_url("/lease/keepalive"),
                                          json={"ID": lease_id})
            except _UNREACHABLE:
                self._session_changed("suspended")
                continue
            ttl = int(answer.get("result", {}).get("TTL", -1))
            if ttl <= 0:
                self._lose(lease_id)
            else:
                self._alive_until = sent + ttl
                self._session_changed("held")

    def _lose(self, lease_id: str) -> None:
        """The session's lease lease_id has expired (or must be taken for expired): forget
        it, report the loss, and revoke it in case etcd still keeps it."""
        with self._lease_mutex:
            if self._lease_id == lease_id:
                self._lease_id = None
        self._session_changed("lost")
        with contextlib.suppress(Etcd3Exception):  # if unreachable, etcd expires it itself
            self.client.post(self.client.get_url("/kv/lease/revoke"), json={"ID": lease_id})

    # -- the queues ------------------------------------------------------------

    def _enqueue(self, name: str, shared: bool, owner: Hashable, autocreate: bool,
                 deadline: float | None) -> tuple[str, int]:
        """Put owner's entry, on the session's lease, under name's key; (key, create
        revision). A retried put finds its entry made (the key carries a unique id)."""
        key = f"{self.path(name)}/{'sh' if shared else 'ex'}-{uuid.uuid4().hex}"
        absent = {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}
        exists = {"key": _b64(self.path(name)), "target": "CREATE", "result": "GREATER",
                  "create_revision": 0}
        put = {"request_put": {"key": _b64(key), "value": base64.b64encode(
            self._entry_data(owner)).decode(), "lease": self._lease(deadline)}}
        try:
            answer = self._post(f"queue for {name!r}", "/kv/txn",
                                {"compare": [absent] if autocreate else [absent, exists],
                                 "success": [put]}, deadline)
        except Etcd3Exception as err:
            if "lease not found" in str(err):
                raise SessionLost(f"the etcd session expired: queue for {name!r}") from err
            raise
        if answer.get("succeeded"):
            return key, int(answer["header"]["revision"])
        found = self._post(f"look for {key}", "/kv/range", {"key": _b64(key)}, deadline)
        if not found.get("kvs"):
            raise FileNotFoundError(f"no resource {name!r} ({self.path(name)})")
        return key, int(found["kvs"][0]["create_revision"])

    def _blocker(self, name: str, key: str, shared: bool,
                 deadline: float | None) -> tuple[str, int] | None:
        """The nearest entry ahead of key that conflicts with it and the revision it was
        seen at, or None."""
        entries, seen = self._entries(name, deadline)
        if key not in entries:
            raise SessionLost(f"the queue entry {key} is gone: its session expired")
        ahead = entries[:entries.index(key)]
        if shared:
            ahead = [entry for entry in ahead if _is_exclusive(entry)]
        return (ahead[-1], seen) if ahead else None

    def _entries(self, name: str, deadline: float | None = None) -> tuple[list[str], int]:
        """The keys of name's entries in queue order, and the revision they were read at."""
        queue = f"{self.path(name)}/"
        answer = self._post(f"list {name!r}", "/kv/range",
                            {"key": _b64(queue), "range_end": _b64(queue[:-1] + "0"),
                             "keys_only": True, "sort_order": "ASCEND",
                             "sort_target": "CREATE"}, deadline)
        return [_key(kv) for kv in answer.get("kvs", [])], int(answer["header"]["revision"])

    def queue(self, name: str) -> list[str]:
        """The entries (holds and waits, from everywhere) on name, first served first."""
        return self._entries(name)[0]

    def _watch_gone(self, ahead: tuple[str, int], gone: Callable[[], None]
                    ) -> Callable[[], None]:
        """Have the lockspace's watch stream call gone once the entry is deleted; at once
        if the stream has reported its deletion already, or may have (it began after the
        revision the entry was seen at, or that deletion is older than those it
        remembers). The stream is started on first use."""
        key, seen = ahead
        with self._watch_mutex:
            self._gone.setdefault(key, []).append(gone)
            late = (seen + 1 < self._watch_from or seen < self._forgotten
                    or self._deleted.get(key, 0) > seen)
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, daemon=True,
                                                 name="latchwire-etcd-watch")
                self._watcher.start()
        if late:
            gone()

        def stop() -> None:
            with self._watch_mutex:
                calls = self._gone.get(key, [])
                if gone in calls:
                    calls.remove(gone)
                    if not calls:
                        del self._gone[key]

        return stop

    def _watch(self) -> None:
        """The watch thread: one stream of the deletions under the prefix, from the
        revision it was opened at, calling the gone() registered for each key deleted;
        reopened (every registered call made, as something may have been missed) when
        it breaks, until the session is closed."""
        pause = 0.01
        while not self._closing.is_set():
            try:
                stream = self._open_stream()
            except (ConnectionError, LockTimeout, Etcd3Exception, OSError,
                    requests.RequestException, ValueError):
                stream = None
            if stream is not None:
                pause = 0.01
                with self._watch_mutex:
                    everyone = [call for calls in self._gone.values() for call in calls]
                for call in everyone:
                    call()
                with contextlib.suppress(Exception):  # a broken stream, however it breaks
                    self._read_stream(stream)
                stream.close()
            if self._closing.wait(pause):  # a back-off before reopening
                break
            pause = min(pause * 2, 0.5)

    def _open_stream(self) -> requests.Response | None:
        """Open the deletions' watch stream from the current revision on (None if the
        lockspace is closing meanwhile)."""
        queues = f"{self.prefix}/"
        seen = self._post("read the revision", "/kv/range",
                          {"key": _b64(queues), "range_end": _b64(queues[:-1] + "0"),
                           "count_only": True})
        start = int(seen["header"]["revision"]) + 1
        stream = self.client.session.post(self.client.get_url("/watch"), stream=True,
                                          timeout=(self.session_timeout, None), json={
            "create_request": {"key": _b64(queues), "range_end": _b64(queues[:-1] + "0"),
                               "start_revision": start, "filters": ["NOPUT"]}})
        with self._watch_mutex:
            if self._closing.is_set():
                stream.close()
                return None
            self._stream = stream
            self._watch_from = start
        return stream

    def _read_stream(self, stream: requests.Response) -> None:
        """Call the gone() registered for each key the stream reports deleted, until it
        ends."""
        pending = b""
        for chunk in stream.iter_content(chunk_size=None):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                result = json.loads(line).get("result")
                if result is None:  # an error: the stream is over
                    return
                for event in result.get("events", ()):
                    key = _key(event["kv"])
                    revision = int(event["kv"].get("mod_revision", 0))
                    with self._watch_mutex:
                        calls = self._gone.pop(key, [])
                        self._deleted[key] = revision
                        if len(self._deleted) > _REMEMBERED:
                            oldest = next(iter(self._deleted))
                            self._forgotten = max(self._forgotten, self._deleted.pop(oldest))
                    for call in calls:
                        call()

    def _stop_watching(self) -> None:
        """End the watch stream and its thread (the session is closing)."""
        with self._watch_mutex:
            stream, watcher = self._stream, self._watcher
            self._stream = None  # (the stream keeps its connection pool, and its sockets)
        if stream is not None:
            with contextlib.suppress(Exception):  # the socket may be gone already
                raw = stream.raw._fp.fileno()
                dup = socket.fromfd(raw, socket.AF_INET, socket.SOCK_STREAM)
                dup.shutdown(socket.SHUT_RDWR)
                dup.close()
            stream.close()
        if watcher is not None:
            watcher.join()

    def _dequeue(self, key: str) -> None:
        """Delete the entry key (deleting a key already gone is no error)."""
        self._post(f"delete {key}", "/kv/deleterange", {"key": _b64(key)})

    def _drop_resource(self, name: str) -> None:
        """Nothing: an autocreated resource has no key of its own."""

    def create(self, name: str) -> None:
        """Put name's key (on no lease); FileExistsError if it exists."""
        key = _b64(self.path(name))
        answer = self._post(f"create {name!r}", "/kv/txn", {
            "compare": [{"key": key, "target": "CREATE", "result": "EQUAL",
                         "create_revision": 0}],
            "success": [{"request_put": {"key": key, "value": ""}}]})
        if not answer.get("succeeded"):
            raise FileExistsError(f"resource {name!r} exists ({self.path(name)})")

    def delete(self, name: str) -> None:
        """Delete name's key: LockBusy if entries are queued on it, FileNotFoundError if
        it does not exist."""
        if self.queue(name):
            raise LockBusy(f"resource {name!r} is held or awaited", self.path(name))
        answer = self._post(f"delete {name!r}", "/kv/deleterange", {"key": _b64(self.path(name))})
        if not int(answer.get("deleted", 0)):
            raise FileNotFoundError(f"no resource {name!r} ({self.path(name)})")

    def _close_session(self) -> None:
        """Stop the keep-alive and watch threads, revoke the session's lease (its entries
        go too) and close the connections."""
        self._closing.set()
        self._keeper.join()
        self._stop_watching()
        with self._lease_mutex:
            lease_id, self._lease_id = self._lease_id, None
        try:
            if lease_id is not None:
                self._post("revoke the lease", "/kv/lease/revoke", {"ID": lease_id})
        finally:
            self.client.session.close()  # the pooled connections
