"""The latchwire command: lock and locks, run as a user runs them.

Other processes are real ones: flock(1), ``kill -9``, and plain-fcntl probes
(lwfcntl.fcntl_probe) as the oracle of whether an OFD lock is held.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from lwfcntl import fcntl_probe
from lwtest import BOUND, LATCHWIRE, WAIT, need
from lwtest import run_cli as run

from latchwire import FileLock, __version__

FLOCK = shutil.which("flock")


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
    not_executable = tmp_path / "data"
    not_executable.write_text("")
    assert run("lock", str(tmp_path / "x"), "--", str(not_executable)).returncode == 126
    no_command = run("lock", str(tmp_path / "x"))
    assert no_command.returncode == 2  # a usage error
    assert no_command.stderr.splitlines() == [
        "latchwire lock: no COMMAND given (latchwire lock PATH -- COMMAND [ARG...]) "
        "(see latchwire lock --help)"]
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


COLUMNS = ["PATH", "PID", "MODE", "KIND", "COMMAND"]


def test_locks_lists_holders_and_exits_1_when_none(tmp_path: Path) -> None:
    conf = tmp_path / "app.conf"
    holder = FileLock(conf)
    holder.acquire(shared=True)
    holder.release()  # the lock file is there now, and nobody holds it
    none = run("locks", str(conf))
    assert none.returncode == 1
    assert none.stdout.splitlines() == ["\t".join(COLUMNS)]
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
        header, row = in_dir.stdout.splitlines()
        assert header.split("\t") == COLUMNS
        assert row.split("\t")[:4] == [holder.lockfile, str(os.getpid()), "shared",
                                       holder.lock_kind]
    finally:
        holder.release()
    assert run("locks", str(tmp_path)).returncode == 1


def test_locks_on_a_missing_path_is_an_error_of_its_own(tmp_path: Path) -> None:
    """Neither PATH nor its lock file there (a mistyped name, a missing directory): one
    line and exit 3, not 1 as if nobody held it; --help says the statuses."""
    for missing in (tmp_path / "app.conf", tmp_path / "no" / "app.conf"):
        done = run("locks", str(missing))
        assert done.returncode == 3, done
        assert done.stdout == ""
        assert done.stderr.splitlines() == [
            f"latchwire: {missing}: No such file or directory (nor lock file "
            f"{missing.parent / ('.' + missing.name + '.~lock~')})"]
    assert run("locks", "--json", str(tmp_path / "no" / "dir")).returncode == 3
    helped = " ".join(run("locks", "--help").stdout.split())
    assert ("exit status: 0 if some process holds a lock (or, with --waiters, waits); 1 if "
            "none does") in helped
    assert "3 if neither PATH nor its lock file exists" in helped
    assert "PATH (the file locked), PID," in helped


@contextmanager
def flock_holder(path: Path) -> Iterator[int]:
    """flock(1) holding an exclusive flock(2) lock on path for the with-block: its pid."""
    need(FLOCK is not None, "needs util-linux's flock(1)")
    assert FLOCK is not None
    proc = subprocess.Popen([FLOCK, str(path), "sleep", "60"])
    try:
        deadline = time.monotonic() + WAIT
        while subprocess.run([FLOCK, "-n", str(path), "true"], check=False).returncode != 1:
            assert time.monotonic() < deadline, "flock(1) never took its lock"
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=WAIT)


def test_locks_keeps_flock_holders_apart_from_ofd_ones(tmp_path: Path) -> None:
    """A flock(1) holder and an OFD holder of one file at once (they do not conflict):
    the kind column tells them apart, OFD holders come first, and a note on stderr says
    that the flock holder is no conflict of the OFD lock."""
    lockfile = tmp_path / "shared-file"
    lockfile.write_text("")
    holder = FileLock(lockfile, lockfile=lockfile)
    with flock_holder(lockfile) as flock_pid:
        holder.acquire()  # granted: flock(1)'s lock is no OFD lock
        try:
            done = run("locks", str(lockfile))
            rows = json.loads(run("locks", "--json", str(lockfile)).stdout)
        finally:
            holder.release()
    assert done.returncode == 0, done.stderr
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert lines[0] == COLUMNS
    # flock(1) and the sleep it forked share its open file description: both hold it.
    assert lines[1][:4] == [str(lockfile), str(os.getpid()), "exclusive", holder.lock_kind]
    flocks = {int(row[1]): row for row in lines[2:]}
    assert flock_pid in flocks
    assert all(row[:4] == [str(lockfile), str(pid), "exclusive", "flock"]
               for pid, row in flocks.items())
    assert flocks[flock_pid][4].split()[1:] == [str(lockfile), "sleep", "60"]
    assert (rows[0]["pid"], rows[0]["kind"]) == (os.getpid(), holder.lock_kind)
    assert {(r["pid"], r["kind"]) for r in rows[1:]} == {(pid, "flock") for pid in flocks}
    assert done.stderr.splitlines() == [
        f"latchwire: note: {lockfile} has flock holders and ofd/posix holders: flock locks "
        "do not conflict with ofd or posix ones"]


@pytest.mark.parametrize("argv", [["lock"], ["locks"], ["bogus"], ["lock", "x", "--", "true"],
                                  []])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    done = run(*argv[:1], *(["--timeout", "-1"] if argv[1:] else []), *argv[1:])
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1, done.stderr


@pytest.mark.parametrize(("value", "why"), [
    ("-1", "timeout must be None or a non-negative number of seconds"),
    ("nan", "timeout must not be NaN"),
    ("soon", "'soon' is not a number of seconds")])
def test_bad_timeouts_are_one_line_usage_errors(tmp_path: Path, value: str, why: str) -> None:
    """--timeout goes through check_timeout, as every latchwire timeout does: a bad one
    is a usage error of one line (no traceback), and COMMAND does not run."""
    marker = tmp_path / "ran"
    done = run("lock", "--timeout", value, str(tmp_path / "x"), "--", "touch", str(marker))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"latchwire lock: argument --timeout/-w: {why if value == 'soon' else value + ': ' + why}"
        " (see latchwire lock --help)"]
    assert not marker.exists()
    forever = run("lock", "--timeout", "inf", str(tmp_path / "x"), "--", "touch", str(marker))
    assert forever.returncode == 0 and marker.exists()  # inf: wait as long as it takes


def test_version() -> None:
    done = run("--version")
    assert (done.returncode, done.stdout) == (0, f"latchwire {__version__}\n")


@contextmanager
def wrapped(lockfile: Path, *options: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``latchwire lock OPTIONS --file LOCKFILE -- sh -c ...`` with COMMAND running (it
    has said its pid): the wrapper's process and COMMAND's pid; both killed afterwards."""
    ready_r, ready_w = os.pipe()
    proc = subprocess.Popen([*LATCHWIRE, "lock", *options, "--file", str(lockfile), "--",
                             "sh", "-c", f"echo $$ > /dev/fd/{ready_w}; exec sleep 60"],
                            pass_fds=(ready_w,), stderr=subprocess.PIPE)
    os.close(ready_w)
    command = 0
    try:
        said = os.read(ready_r, 64) if select.select([ready_r], [], [], WAIT)[0] else b""
        if not said:
            proc.kill()
            _, err = proc.communicate(timeout=WAIT)
            pytest.fail(f"COMMAND never ran: latchwire lock exited {proc.returncode}: "
                        f"{err.decode().strip()}")
        command = int(said)
        yield proc, command
    finally:
        os.close(ready_r)
        proc.kill()
        proc.wait(timeout=WAIT)
        if command:
            subprocess.run(["kill", "-9", str(command)], capture_output=True, check=False)


def running(pid: int) -> bool:
    """Whether pid is a live process (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_9(pid: int) -> None:
    subprocess.run(["kill", "-9", str(pid)], check=True, timeout=BOUND)


def eventually_free(lockfile: Path) -> None:
    deadline = time.monotonic() + WAIT
    while fcntl_probe(str(lockfile)) != "free":
        assert time.monotonic() < deadline, f"{lockfile} is still locked"
        time.sleep(0.01)


def test_command_keeps_the_lock_when_latchwire_is_killed(tmp_path: Path) -> None:
    """By default COMMAND inherits the lock's open file description, as under flock(1):
    the lock outlives a latchwire killed with SIGKILL, and goes when COMMAND does."""
    lockfile = tmp_path / "lockfile"
    with wrapped(lockfile) as (proc, command):
        assert fcntl_probe(str(lockfile)) == "busy"
        kill_9(proc.pid)
        assert proc.wait(timeout=WAIT) == -signal.SIGKILL
        assert running(command)
        assert fcntl_probe(str(lockfile)) == "busy"  # COMMAND holds it now
        assert run("lock", "-n", "--file", str(lockfile), "--", "true").returncode == 1
        held = json.loads(run("locks", "--json", str(lockfile)).stdout)
        assert command in [h["pid"] for h in held]
        kill_9(command)
        eventually_free(lockfile)


def test_close_option_leaves_the_lock_with_latchwire_alone(tmp_path: Path) -> None:
    """--close (flock -o): COMMAND does not hold the lock, so it goes with a latchwire
    killed with SIGKILL while COMMAND runs on."""
    lockfile = tmp_path / "lockfile"
    with wrapped(lockfile, "--close") as (proc, command):
        assert fcntl_probe(str(lockfile)) == "busy"
        held = json.loads(run("locks", "--json", str(lockfile)).stdout)
        assert [h["pid"] for h in held] == [proc.pid]
        kill_9(proc.pid)
        assert proc.wait(timeout=WAIT) == -signal.SIGKILL
        eventually_free(lockfile)
        assert running(command)


def test_flock_option_excludes_flock_1(tmp_path: Path) -> None:
    """--flock also takes a flock(2) lock: flock(1) -n is refused while it holds (and,
    without --flock, is not: OFD and flock locks do not conflict). Needs the compiled
    core's FileLock(flock=True)."""
    need(FLOCK is not None, "needs util-linux's flock(1)")
    assert FLOCK is not None
    lockfile = tmp_path / "lockfile"
    with wrapped(lockfile):
        assert subprocess.run([FLOCK, "-n", str(lockfile), "true"]).returncode == 0
    with wrapped(lockfile, "--flock"):
        assert fcntl_probe(str(lockfile)) == "busy"
        assert subprocess.run([FLOCK, "-n", str(lockfile), "true"]).returncode == 1
    assert subprocess.run([FLOCK, "-n", str(lockfile), "true"]).returncode == 0


def test_flock_lock_is_inherited_too(tmp_path: Path) -> None:
    """--flock without --close: the flock(2) lock is on the same open file description,
    so COMMAND keeps it, as it keeps the OFD lock, when latchwire is killed with SIGKILL."""
    need(FLOCK is not None, "needs util-linux's flock(1)")
    assert FLOCK is not None
    lockfile = tmp_path / "lockfile"
    with wrapped(lockfile, "--flock") as (proc, command):
        kill_9(proc.pid)
        assert proc.wait(timeout=WAIT) == -signal.SIGKILL
        assert running(command)
        assert fcntl_probe(str(lockfile)) == "busy"
        assert subprocess.run([FLOCK, "-n", str(lockfile), "true"]).returncode == 1
        kinds = {(h["pid"], h["kind"]) for h in json.loads(
            run("locks", "--json", str(lockfile)).stdout)}
        assert {(command, "ofd"), (command, "flock")} <= kinds
        kill_9(command)
        eventually_free(lockfile)
    assert subprocess.run([FLOCK, "-n", str(lockfile), "true"]).returncode == 0
