"""The lockspace on etcd, against a real etcd with real processes.

The module starts Debian's etcd on 127.0.0.1 (``coord.start_etcd``) and stops
it at the end; each test works under a prefix of its own. The cases every
engine shares are in ``remote_cases`` (imported below, run here against etcd);
this file adds what is etcd's own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from coord import RemoteAgent, Server, etcd_missing, start_etcd
from lwtest import need
from remote_cases import *  # noqa: F403  (the shared cases, collected here)
from remote_cases import SESSION

from latchwire import LockBusy, LockSpace
from latchwire.lockspace_remote import RemoteLockSpace

pytestmark = pytest.mark.usefixtures("watchdog")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An etcd for this file's tests (skipped, or failed under CI, if it cannot start)."""
    missing = etcd_missing()
    need(missing is None, f"etcd cannot be started: {missing}")
    try:
        started = start_etcd(tmp_path_factory.mktemp("etcd"))
    except (OSError, RuntimeError, AssertionError) as err:
        need(False, f"etcd did not start: {err}")
    yield started
    started.stop()


@pytest.fixture
def url(server: Server) -> str:
    """An etcd:// URL with a prefix of the test's own."""
    return f"etcd://127.0.0.1:{server.port}/test-{uuid.uuid4().hex}"


@pytest.fixture
def space(url: str) -> Iterator[RemoteLockSpace]:
    """This process's lockspace on url."""
    with LockSpace(url, session_timeout=SESSION) as opened:
        yield opened


@pytest.fixture
def agents(url: str) -> Iterator[Callable[[], RemoteAgent]]:
    """Start RemoteAgents on url; every one still running at the end is killed."""
    with RemoteAgent.all_killed(url, session_timeout=SESSION) as start:
        yield start


def test_url_and_factory_give_the_etcd_lockspace(server: Server, url: str) -> None:
    from latchwire.lockspace_etcd import EtcdLockSpace

    with LockSpace(url, session_timeout=SESSION) as by_url, \
            LockSpace.etcd(f"127.0.0.1:{server.port}", "/" + url.split("/", 3)[3],
                           session_timeout=SESSION) as by_factory:
        assert isinstance(by_url, EtcdLockSpace) and isinstance(by_factory, EtcdLockSpace)
        by_url.acquire("r", "a")
        with pytest.raises(LockBusy):
            by_factory.acquire("r", "b")
