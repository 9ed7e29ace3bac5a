"""The lockspace on ZooKeeper, against a real ZooKeeper with real processes.

The session starts Debian's ZooKeeper on 127.0.0.1 (``coord.start_zookeeper``)
and stops it at the end; each test works under a prefix of its own. The cases
every engine shares are in ``remote_cases`` (imported below, run here against
ZooKeeper); this file adds what is ZooKeeper's own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from coord import Server, start_zookeeper, zookeeper_missing
from lwtest import WAIT
from remote_cases import *  # noqa: F403  (the shared cases, collected here)
from remote_cases import SESSION, engine_fixtures

from latchwire import LockBusy, LockSpace

if TYPE_CHECKING:  # kazoo is imported only once a test makes a lockspace
    from latchwire.lockspace.zookeeper import ZkLockSpace

pytestmark = pytest.mark.usefixtures("watchdog")


server, url, space, agents = engine_fixtures("ZooKeeper", "zk", zookeeper_missing,
                                             start_zookeeper)


def test_url_and_factory_give_the_zookeeper_lockspace(server: Server, url: str) -> None:
    from latchwire.lockspace.zookeeper import ZkLockSpace

    with LockSpace(url, session_timeout=SESSION) as by_url, \
            LockSpace.zookeeper([f"127.0.0.1:{server.port}"], "/" + url.split("/", 3)[3],
                                session_timeout=SESSION) as by_factory:
        assert isinstance(by_url, ZkLockSpace) and isinstance(by_factory, ZkLockSpace)
        by_url.acquire("r", "a")
        with pytest.raises(LockBusy):
            by_factory.acquire("r", "b")


def test_the_local_lockspace_imports_no_coordination_client(tmp_path: Path) -> None:
    code = ("import sys, latchwire; s = latchwire.LockSpace(sys.argv[1]); s.acquire('x'); "
            "s.release('x'); assert not {'kazoo', 'etcd3gw'} & set(sys.modules), 'imported'")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=WAIT)


def test_an_autocreated_resource_znode_goes_with_its_last_release(space: ZkLockSpace) -> None:
    space.acquire("auto", "a", shared=True)
    space.acquire("auto", "b", shared=True)
    space.release("auto", "a")
    assert space.client.exists(space.path("auto")) is not None
    space.release("auto", "b")
    assert space.client.exists(space.path("auto")) is None
    space.create("made")
    space.acquire("made", autocreate=False)
    space.release("made")
    assert space.client.exists(space.path("made")) is not None
