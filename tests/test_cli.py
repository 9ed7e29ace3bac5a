"""The latchwire command: lock and locks, run as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from lwtest import LATCHWIRE
from lwtest import run_cli as run

from latchwire import FileLock


def test_lock_runs_command_holding_lock_and_returns_its_status(tmp_path: Path) -> None:
    """COMMAND runs while the lock is held (seen from inside) and its status comes back."""
    conf = tmp_path / "app.conf"
    probe = (f"import latchwire, sys; l = latchwire.FileLock({str(conf)!r}); "
             "sys.exit(0 if not l.acquire(blocking=False) else 9)")
    # The probe exits 9 if it could take the lock, i.e. if lock did not hold it.
    result = run("lock", str(conf), "--", sys.executable, "-c",
                 f"import subprocess, sys; r = subprocess.run([sys.executable, '-c', {probe!r}]); "
                 "print('probe', r.returncode); sys.exit(7)")
    assert result.returncode == 7, result.stderr
    assert "probe 1" in result.stdout, result.stdout + result.stderr  # LockBusy -> exit 1
    assert "lock is held elsewhere" not in result.stderr
    assert FileLock(conf).acquire(blocking=False)  # released afterwards


def test_lock_busy_and_timeout_exit_1_with_one_line(tmp_path: Path) -> None:
    conf = tmp_path / "app.conf"
    holder = FileLock(conf)
    holder.acquire()
    try:
        busy = run("lock", "--nonblock", str(conf), "--", "true")
        assert busy.returncode == 1
        assert busy.stderr.strip().splitlines() == [f"latchwire: {conf}: lock is held elsewhere"]
        timed = run("lock", "--timeout", "0.05", str(conf), "--", "true")
        assert timed.returncode == 1
        assert len(timed.stderr.strip().splitlines()) == 1
        assert "timed out after 0.05 s" in timed.stderr
        shared = run("lock", "--shared", "--nonblock", str(conf), "--", "true")
        assert shared.returncode == 1
    finally:
        holder.release()


def test_lock_shared_coexists_with_shared_holder(tmp_path: Path) -> None:
    conf = tmp_path / "app.conf"
    holder = FileLock(conf)
    holder.acquire(shared=True)
    try:
        assert run("lock", "--shared", "--nonblock", str(conf), "--", "true").returncode == 0
    finally:
        holder.release()


def test_lock_file_option_locks_path_itself(tmp_path: Path) -> None:
    target = tmp_path / "data"
    holder = FileLock(target, lockfile=target)
    holder.acquire()
    try:
        assert run("lock", "-n", "--file", str(target), "--", "true").returncode == 1
        assert run("lock", "-n", str(target), "--", "true").returncode == 0  # .data.~lock~ is free
    finally:
        holder.release()


def test_lock_status_of_command_killed_by_signal(tmp_path: Path) -> None:
    result = run("lock", str(tmp_path / "x"), "--", "sh", "-c", "kill -TERM $$")
    assert result.returncode == 128 + signal.SIGTERM


def test_lock_missing_command_and_bad_paths(tmp_path: Path) -> None:
    assert run("lock", str(tmp_path / "x"), "--", str(tmp_path / "nope")).returncode == 127
    assert run("lock", str(tmp_path / "x")).returncode == 1
    missing = run("lock", "--file", str(tmp_path / "no" / "dir"), "--", "true")
    assert missing.returncode == 1
    assert "No such file or directory" in missing.stderr
    assert not (tmp_path / "no").exists()


def test_lock_forwards_sigterm_to_command(tmp_path: Path) -> None:
    """A supervisor's SIGTERM to latchwire reaches COMMAND; the lock goes with it."""
    conf = tmp_path / "app.conf"
    ready_r, ready_w = os.pipe()
    proc = subprocess.Popen(
        [*LATCHWIRE, "lock", str(conf), "--", sys.executable, "-c",
         f"import os, time; os.write({ready_w}, b'x'); time.sleep(60)"],
        pass_fds=(ready_w,),
    )
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"x"  # COMMAND runs, so the lock is held
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        os.close(ready_r)
        proc.kill()
    assert FileLock(conf).acquire(blocking=False)


def test_locks_lists_holders_and_exits_1_when_none(tmp_path: Path) -> None:
    conf = tmp_path / "app.conf"
    assert run("locks", str(conf)).returncode == 1
    holder = FileLock(conf)
    holder.acquire(shared=True)
    try:
        listed = run("locks", "--json", str(conf))
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [(r["path"], r["pid"], r["mode"], r["kind"]) for r in rows] == [
            (holder.lockfile, os.getpid(), "shared", holder.lock_kind)]
        assert "pytest" in rows[0]["command"] or sys.executable in rows[0]["command"]
        in_dir = run("locks", str(tmp_path))
        assert in_dir.returncode == 0
        assert in_dir.stdout.split("\t")[:3] == [holder.lockfile, str(os.getpid()), "shared"]
    finally:
        holder.release()
    assert run("locks", str(tmp_path)).returncode == 1


@pytest.mark.parametrize("argv", [["lock"], ["locks"], ["bogus"]])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    assert run(*argv).returncode == 2
