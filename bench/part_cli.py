"""The ``cli`` part: the ``latchwire`` command against the tools it stands in for, whole
processes: ``latchwire ip routes --json`` and ``latchwire ip routes`` against
``ip -j route show`` and ``ip route show`` on 100,000 routes (root and ``ip`` needed),
and ``latchwire lock FILE -- true`` against ``flock FILE true``.

Each contender is a process started and waited for from here, under GNU time
(``/usr/bin/time -f %M``) for its peak resident memory: ru_maxrss survives exec, so a
process spawned straight from this one (large, and forked or vforked) would report this
one's; time is small, and forks. The wall time is measured here, around the spawn and
the wait, time's own start included for every contender alike. Output goes to
/dev/null. The contenders of a section run round-robin in interleaved rounds, rotating
the order; medians are reported. ``python -c pass`` (the interpreter starting and
stopping) and ``python -c "import latchwire"`` are measured beside them: what no Python
command can go under, and what importing the package adds.

``latchwire`` is what the installed ``latchwire`` script runs (``import re, sys; from
latchwire.cli import main; sys.exit(main())``) with the interpreter running this script,
and ``python -m latchwire`` beside it for the lock; bytecode caching is on
(PYTHONDONTWRITEBYTECODE dropped, PYTHONPYCACHEPREFIX in the run's work directory,
filled by an untimed first run), as an installed package has it. Where the package
imports without site (``python -S``, which PYTHONPATH allows), the lock is also timed
so, beside ``python -S -c pass``, and so are the routes: what the command costs
without whatever this machine's site-packages .pth files import at every interpreter
start.

Memory is also read as growth: each command's peak with 100,000 routes less its
peak showing the namespace's two IPv6 routes (``-6``), the part that grows with the
routes (a Python process starts several times larger than ip does).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from measure import Row, Section, Settings, add_guard, interleave, verdict
from netns_setup import bench_netns, load_routes, netns_capable

from latchwire import rtnl

ROUTES = 100_000
ROUNDS, ROUNDS_QUICK = 15, 5
LOCK_ROUNDS, LOCK_ROUNDS_QUICK = 31, 11
PY_PASS = "python -c pass"
PY_IMPORT = 'python -c "import latchwire"'
IP_JSON = "ip -j route show"
IP_TEXT = "ip route show"
LW_JSON = "latchwire ip routes --json"
LW_TEXT = "latchwire ip routes"
FLOCK = "flock FILE true"
LW_LOCK = "latchwire lock FILE -- true"
LW_LOCK_M = "python -m latchwire lock FILE -- true"
PY_PASS_S = "python -S -c pass"
LW_LOCK_S = "latchwire lock FILE -- true, python -S"
# What the installed latchwire script runs (pip's console-script template).
ENTRY = "import re, sys; from latchwire.cli import main; sys.exit(main())"
# Regression guards: well away from what a healthy build measures (about 1.1x ip, a
# growth of well under 1 MB, and lock a few ms over the interpreter), so that only
# going back to dicts per route, holding every route, or loading asyncio and the
# netlink layer for a lock fails (before issue 18: 4.6x / 2.1x ip, +70 MB, +115 ms).
ROUTES_GUARD = 4.0  # latchwire ip routes (text or JSON), at most this times ip's time
GROWTH_GUARD = 16.0  # MB of peak memory from an empty table to 100,000 routes, at most
LOCK_GUARD = 60.0  # ms latchwire lock -- true may take over python -c pass, at most
# Issue 18's targets, printed beside the figures (nothing fails on them).
ROUTES_TARGET = 1.0  # at most ip's time
MEMORY_TARGET = 2.0  # peak memory at most this times ip's
LOCK_TARGET = 30.0  # ms, the whole latchwire lock -- true


@dataclass(frozen=True)
class Command:
    name: str
    role: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Run:
    seconds: float
    maxrss: int  # KiB
    status: int


TIME = "/usr/bin/time"  # GNU time: -f %M is the peak RSS in KiB


def spawn(argv: Sequence[str], env: dict[str, str]) -> Run:
    """Run argv under GNU time with its output to /dev/null: its wall time, its peak RSS
    and its exit status (time gives the command's)."""
    with tempfile.NamedTemporaryFile("r", prefix="lwbench-time-") as out:
        start = time.perf_counter()
        status = subprocess.call([TIME, "-f", "%M", "-o", out.name, *argv],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
        seconds = time.perf_counter() - start
        lines = out.read().split()
    return Run(seconds, int(lines[-1]) if lines else 0, status)


def child_env(workdir: Path) -> dict[str, str]:
    """This environment, with bytecode caching on in a directory of the run's own."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) if p else p
                                            for p in env["PYTHONPATH"].split(os.pathsep))
    return env


def measured(commands: Sequence[Command], rounds: int, env: dict[str, str],
             notes: list[str]) -> list[Row]:
    """Every command once untimed (warming caches), then rounds interleaved runs each;
    a row per command: seconds in ms, peak RSS in MB (median) as a detail."""
    for command in commands:
        spawn(command.argv, env)
    runs = interleave(commands, rounds, lambda c: spawn(c.argv, env))
    rows = []
    for command, results in zip(commands, runs, strict=True):
        failed = sorted({r.status for r in results if r.status != 0})
        if failed:
            notes.append(f"FAILED: {command.name} exited with status {failed}")
        row = Row(command.name, command.role, [r.seconds * 1e3 for r in results])
        row.details["peak RSS MB"] = statistics.median(r.maxrss for r in results) / 1024
        rows.append(row)
    return rows


def peak_mb(argv: Sequence[str], env: dict[str, str]) -> float:
    """Median peak RSS of three runs of argv, in MB."""
    return statistics.median(spawn(argv, env).maxrss for _ in range(3)) / 1024


def identical(ours: Sequence[str], theirs: Sequence[str], env: dict[str, str]) -> bool:
    """Whether both commands print the very same bytes."""
    out = [subprocess.run(argv, capture_output=True, env=env, check=True).stdout
           for argv in (ours, theirs)]
    return out[0] == out[1]


def latchwire(*args: str, site: bool = True) -> tuple[str, ...]:
    """The latchwire command with args, as its installed script runs it."""
    return (sys.executable, *(() if site else ("-S",)), "-c", ENTRY, *args)


def imports_without_site(env: dict[str, str]) -> bool:
    """Whether latchwire's command imports under python -S (PYTHONPATH, not site-packages)."""
    return subprocess.run([sys.executable, "-S", "-c", "import latchwire.cli"], env=env,
                          capture_output=True, check=False).returncode == 0


def routes_sections(s: Settings, env: dict[str, str]) -> list[Section]:
    lw = latchwire("ip", "routes")
    bare = latchwire("ip", "routes", site=False)
    without_site = imports_without_site(env)
    sections = []
    with bench_netns() as netns:
        load_routes(netns, 0, ROUTES, s.workdir, rtnl.RT_TABLE_MAIN)
        for name, ours, ours_s, peer, theirs, args in (
                (LW_JSON, (*lw, "--json"), (*bare, "--json"), IP_JSON, ("ip", "-j"),
                 ("route", "show")),
                (LW_TEXT, lw, bare, IP_TEXT, ("ip",), ("route", "show"))):
            notes: list[str] = []
            commands = [Command(PY_PASS, "floor", (sys.executable, "-c", "pass")),
                        Command(peer, "peer", (*theirs, "-n", netns, *args)),
                        Command(name, "latchwire", (*ours, "--netns", netns))]
            if without_site:
                commands += [Command(PY_PASS_S, "floor", (sys.executable, "-S", "-c", "pass")),
                             Command(f"{name}, python -S", "latchwire",
                                     (*ours_s, "--netns", netns))]
            rows = measured(commands, ROUNDS_QUICK if s.quick else ROUNDS, env, notes)
            section = Section("cli", f"{name}, {ROUTES:,} routes, whole process", "ms",
                              rows, [peer], columns=["peak RSS MB"], notes=notes)
            section.failed = bool(notes)
            if not identical(commands[2].argv, commands[1].argv, env):
                section.failed = True
                section.notes.append(f"FAILED: {name} does not print what {peer} prints")
            else:
                section.conclusions.append(f"{name} prints byte for byte what {peer} prints")
            routes_conclusions(section, name, peer, netns, (*ours, "--netns", netns),
                               (*theirs, "-n", netns, *args), env)
            sections.append(section)
    return sections


def routes_conclusions(section: Section, name: str, peer: str, netns: str,
                       ours: Sequence[str], theirs: Sequence[str], env: dict[str, str]) -> None:
    """Issue 18's targets for time and memory, the memory growth, and the guards."""
    lw, ip, py = section.row(name), section.row(peer), section.row(PY_PASS)
    ratio = lw.median / ip.median
    mem = float(lw.details["peak RSS MB"]) / float(ip.details["peak RSS MB"])
    # The same commands showing the two IPv6 routes: what each takes with next to nothing.
    grown = float(lw.details["peak RSS MB"]) - peak_mb([*ours, "-6"], env)
    ip_grown = float(ip.details["peak RSS MB"]) - peak_mb([theirs[0], "-6", *theirs[1:]], env)
    section.conclusions += [
        f"{name}: {ratio:.2f}x {peer}'s time; target ≤ {ROUTES_TARGET:g}x: "
        f"{verdict(ratio, ROUTES_TARGET, at_most=True)} (the interpreter alone, {PY_PASS}, "
        f"takes {py.median:.1f} ms of it)",
        f"{name}: peak RSS {mem:.1f}x {peer}'s; target ≤ {MEMORY_TARGET:g}x: "
        f"{verdict(mem, MEMORY_TARGET, at_most=True)} ({PY_PASS} alone: "
        f"{float(py.details['peak RSS MB']):.1f} MB)",
        f"peak RSS grown from 2 routes to {ROUTES:,}: {name} {grown:+.1f} MB, "
        f"{peer} {ip_grown:+.1f} MB (routes are written as they arrive, never all held)"]
    if any(row.name == f"{name}, python -S" for row in section.rows):
        bare = section.row(f"{name}, python -S")
        ratio_s = bare.median / ip.median
        section.conclusions.append(
            f"{name}, python -S: {ratio_s:.2f}x {peer}'s time; target ≤ {ROUTES_TARGET:g}x: "
            f"{verdict(ratio_s, ROUTES_TARGET, at_most=True)} ({PY_PASS_S} alone: "
            f"{section.row(PY_PASS_S).median:.1f} ms; peak RSS "
            f"{float(bare.details['peak RSS MB']) / float(ip.details['peak RSS MB']):.1f}x "
            f"{peer}'s)")
    add_guard(section, f"{name} / {peer}", ratio, ROUTES_GUARD)
    add_guard(section, f"{name}: peak RSS growth to {ROUTES:,} routes", grown, GROWTH_GUARD,
              unit="MB")


def lock_section(s: Settings, env: dict[str, str]) -> Section:
    lockfile = s.workdir / "cli-lock"
    lockfile.touch()
    notes: list[str] = []
    lock = ("lock", str(lockfile), "--", "true")
    commands = [Command(PY_PASS, "floor", (sys.executable, "-c", "pass")),
                Command(FLOCK, "peer", ("flock", str(lockfile), "true")),
                Command(PY_IMPORT, "latchwire", (sys.executable, "-c", "import latchwire")),
                Command(LW_LOCK, "latchwire", latchwire(*lock)),
                Command(LW_LOCK_M, "latchwire", (sys.executable, "-m", "latchwire", *lock))]
    without_site = imports_without_site(env)
    if without_site:
        commands += [Command(PY_PASS_S, "floor", (sys.executable, "-S", "-c", "pass")),
                     Command(LW_LOCK_S, "latchwire", latchwire(*lock, site=False))]
    rows = measured(commands, LOCK_ROUNDS_QUICK if s.quick else LOCK_ROUNDS, env, notes)
    section = Section("cli", "lock FILE -- true, whole process", "ms", rows, [PY_PASS],
                      columns=["peak RSS MB"], notes=notes)
    section.failed = bool(notes)
    lw, py, imp = section.row(LW_LOCK), section.row(PY_PASS), section.row(PY_IMPORT)
    over = lw.median - py.median
    section.conclusions += [
        f"{LW_LOCK}: {lw.median:.1f} ms; target ≤ {LOCK_TARGET:g} ms: "
        f"{verdict(lw.median, LOCK_TARGET, at_most=True)}; {over:.1f} ms over the "
        f"interpreter's own start ({PY_PASS}: {py.median:.1f} ms); flock(1): "
        f"{section.row(FLOCK).median:.1f} ms",
        f"import latchwire: {imp.median - py.median:.1f} ms over {PY_PASS}"]
    if without_site:
        bare = section.row(LW_LOCK_S).median
        section.conclusions.append(
            f"{LW_LOCK_S}: {bare:.1f} ms; target ≤ {LOCK_TARGET:g} ms: "
            f"{verdict(bare, LOCK_TARGET, at_most=True)} ({PY_PASS_S}: "
            f"{section.row(PY_PASS_S).median:.1f} ms)")
    else:
        section.notes.append("python -S cannot import latchwire here (it is installed in "
                             "site-packages): the lock is timed with site only.")
    add_guard(section, f"{LW_LOCK} - {PY_PASS}", over, LOCK_GUARD, unit="ms")
    return section


def cli_part(s: Settings) -> list[Section]:
    if shutil.which("flock") is None or not os.access(TIME, os.X_OK):
        print(f"cli: skipped: it needs flock(1) and GNU time ({TIME})\n", file=sys.stderr,
              flush=True)
        return []
    env = child_env(s.workdir)
    sections = [lock_section(s, env)]
    if netns_capable("cli"):
        sections = [*routes_sections(s, env), *sections]
    sections[-1].notes.append(
        "Method: each contender a process, spawned under GNU time and waited for from here, "
        "output to /dev/null; wall time from before the spawn to after the wait, peak RSS "
        "as time reports it; medians over interleaved rounds, after one untimed "
        "run each. latchwire is what its installed script runs, on this interpreter, "
        f"bytecode cached; {PY_PASS} is the interpreter's own start, site included: a .pth "
        "file that imports modules at every start is counted there, and in every latchwire "
        "figure alike.")
    return sections
