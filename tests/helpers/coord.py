"""Coordination engines for the remote lockspace tests: real servers, agents, a cuttable link.

- ``start_zookeeper``: Debian's ``zookeeper`` package run on 127.0.0.1 with a
  temporary data directory and a free port, short ticks so that sessions of
  a second or two are allowed; ``start_etcd``: Debian's ``etcd-server`` the
  same way. Each gives a ``Server``.
- ``RemoteAgent``: a fresh interpreter holding ``LockSpace(url)`` and answering
  ``lwagent.Agent``'s JSON commands; this file is its script
  (``python coord.py URL OPTIONS``). Besides the lockspace's methods it knows
  ``lease``, ``await_state`` and ``count`` (below).
- ``Link``: a TCP relay between a client and a server that a test can cut and
  restore, to make a partition without touching the server.

Readiness is a TCP connection accepted (polled with a deadline); nothing sleeps
for synchronisation.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lock_agent import serve
from lwagent import Agent
from lwtest import WAIT, child_env
from lwthreads import poll_until

ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"
START = 30.0  # the bound on a server's start
TICK_MS = 200  # ZooKeeper allows sessions of 2 to 20 ticks: 0.4 s to 4 s here


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class Server:
    """A server process started by a test session: its port, log and stop."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            poll_until(lambda: accepts(port) or self.proc.poll() is not None,
                       f"{argv[0]} accepting on port {port}", START)
        except BaseException:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited ({self.proc.returncode}): "
                               f"{log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        """Stop the server and reap it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)


def zookeeper_missing() -> str | None:
    """Why a ZooKeeper cannot be started here, or None if it can."""
    if shutil.which("java") is None:
        return "no Java runtime (apt-get install default-jre-headless)"
    if not os.path.exists(ZOOKEEPER_JAR):
        return f"no {ZOOKEEPER_JAR} (apt-get install zookeeper)"
    try:
        import kazoo  # noqa: F401
    except ImportError:
        return "kazoo is not installed (pip install 'latchwire[zookeeper]')"
    return None


def start_zookeeper(workdir: Path) -> Server:
    """A standalone ZooKeeper on 127.0.0.1, its data in workdir."""
    port = free_port()
    data = workdir / "data"
    data.mkdir(parents=True)
    config = workdir / "zoo.cfg"
    config.write_text(f"tickTime={TICK_MS}\ndataDir={data}\nclientPort={port}\n"
                      "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
                      "maxClientCnxns=0\n")
    return Server(["java", "-Xmx256m", "-cp", f"{ZOOKEEPER_JAR}:/etc/zookeeper/conf",
                   "org.apache.zookeeper.server.ZooKeeperServerMain", str(config)],
                  port, workdir / "zookeeper.log")


def etcd_missing() -> str | None:
    """Why an etcd cannot be started here, or None if it can."""
    if shutil.which("etcd") is None:
        return "no etcd (apt-get install etcd-server)"
    try:
        import etcd3gw  # noqa: F401
    except ImportError:
        return "etcd3gw is not installed (pip install 'latchwire[etcd]')"
    return None


def start_etcd(workdir: Path) -> Server:
    """A single-member etcd on 127.0.0.1, its data in workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    return Server(["etcd", "--name", "test", "--data-dir", str(workdir / "data"),
                   "--listen-client-urls", client, "--advertise-client-urls", client,
                   "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                   "--initial-cluster", f"test={peer}"],
                  int(client.rsplit(":", 1)[1]), workdir / "etcd.log")


class RemoteAgent(Agent):
    """An ``lwagent.Agent`` whose process holds ``LockSpace(url, **options)`` (this script)."""

    def __init__(self, url: str, **options: float) -> None:
        self.argv = [sys.executable, __file__, url, json.dumps(options)]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=child_env(), bufsize=0)
        self.pid = self.proc.pid
        self._buf = b""


    @staticmethod
    @contextlib.contextmanager
    def all_killed(url: str, **options: float) -> Iterator[Callable[[], RemoteAgent]]:
        """A function starting RemoteAgents on url; on exit every one still running is
        resumed (if stopped) and killed."""
        started: list[RemoteAgent] = []

        def start() -> RemoteAgent:
            agent = RemoteAgent(url, **options)
            started.append(agent)
            return agent

        try:
            yield start
        finally:
            for agent in started:
                if agent.proc.poll() is None:
                    os.kill(agent.pid, signal.SIGCONT)
                agent.kill()


class Link:
    """A TCP relay from a port of its own on 127.0.0.1 to target_port.

    ``cut()`` closes every relayed connection and refuses new ones (the client
    sees its server go away); ``restore()`` accepts again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        """Listen (again) and relay every connection accepted."""
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        """Relay each connection accepted on listener until it is closed."""
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._socks += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        """Copy src to dst until either side ends."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Stop accepting and end every relayed connection."""
        assert self._listener is not None
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (a close would not)
        self._listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


# ---------------------------------------------------------------------------
# The agent's side


def agent_ops(url: str, options: dict[str, float]) -> Callable[[str], Callable[..., Any]]:
    """The commands of an agent holding ``LockSpace(url, **options)``."""
    from latchwire import LockSpace
    from latchwire.lockspace.remote import RemoteLease, State

    space = LockSpace(url, **options)
    leases: dict[tuple[str, str], RemoteLease] = {}
    changed = threading.Condition()

    def on_change(_lease: RemoteLease, _state: State) -> None:
        with changed:
            changed.notify_all()

    def summary(lease: RemoteLease) -> dict[str, Any]:
        return {"token": lease.token, "state": lease.state, "valid": lease.valid,
                "key": lease.key}

    def acquire(name: str, owner: str, **kwargs: Any) -> dict[str, Any]:
        """Acquire and keep the lease; its summary."""
        lease = leases[name, owner] = space.acquire(name, owner, listener=on_change, **kwargs)
        return summary(lease)

    def lease(name: str, owner: str) -> dict[str, Any]:
        """The summary of the lease acquire() kept."""
        return summary(leases[name, owner])

    def await_state(name: str, owner: str, state: str, timeout: float) -> dict[str, Any]:
        """Wait (up to timeout s) until the lease kept reaches state; its summary."""
        held = leases[name, owner]
        with changed:
            if not changed.wait_for(lambda: held.state == state, timeout):
                raise TimeoutError(f"the lease is {held.state}, not {state}, after {timeout} s")
        return summary(held)

    def count(name: str, path: str, cycles: int, owner: str) -> list[int]:
        """cycles times: take name (waiting), add 1 to the count in the file at path and
        write the lease's token beside it, release. The file says ``COUNT TOKEN``; a
        token read that is not smaller than this grant's fails the run. Its tokens."""
        tokens = []
        for _ in range(cycles):
            held = space.acquire(name, owner, wait=True, timeout=WAIT)
            with open(path) as f:
                value, last = map(int, f.read().split())
            if last >= held.token:
                raise AssertionError(f"token {held.token} granted after {last}")
            with open(path, "w") as f:
                f.write(f"{value + 1} {held.token}")
            tokens.append(held.token)
            space.release(name, owner)
        return tokens

    extra: dict[str, Callable[..., Any]] = {"acquire": acquire, "lease": lease,
                                            "await_state": await_state, "count": count}
    return lambda op: extra[op] if op in extra else getattr(space, op)


def main() -> None:
    """Answer lwagent.Agent's commands until stdin closes."""
    serve(agent_ops(sys.argv[1], json.loads(sys.argv[2])))


if __name__ == "__main__":
    main()
