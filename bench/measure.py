"""What every comparison is measured and reported with: the run's Settings, a Section of
Rows (one per contender), the regression guards, and the timing helpers the parts share.

Interleaving. Every contender of a comparison runs in this one process (or, for
the contended runs, in worker processes forked from it) round-robin: each
round runs each contender for one batch, and the order rotates by one each
round (``interleave``). A slow drift of the machine (frequency scaling, a
neighbour on a shared host) then lands on every contender alike instead of on
whichever ran during it.

Batches and medians. An uncontended contender (a ``Timed``) is first calibrated
(which also warms it up) to a batch of about ``batch`` seconds; each round then
gives one figure per contender, the mean time per operation over its batch
(``per_op_samples``, ``per_op_rows``). A contended round gives one throughput
figure. Reported are the median over the rounds, the figure to quote, and the
minimum.

Floors. Every comparison measures in the same run what the kernel work alone
costs: for file locks, the same fcntl calls on an open descriptor issued from
Python's fcntl module (``python_floor_loop``) and, for the uncontended case,
from a C loop, ``floor_ofd.c``, built with ``cc -O2`` at run time. A ratio to a
floor, or between two contenders measured in the same run, means the same on
any machine; absolute times do not, and nothing here passes or fails on one. A
section whose correctness check fails (a contended run whose shared counter
disagrees with the handoffs counted: mutual exclusion broken) is marked failed,
which makes the exit status 1.

Regression guards. A few ratios of latchwire to a floor or peer of the same
run (and the lock-order checker's extra ns per acquisition) must stay within
limits set well away from what a healthy build measures (each part's
``*_GUARD``, and ``SCALING_GUARD`` here), so that only an order-of-magnitude
regression fails, never machine noise (``Guard``, ``add_guard``,
``add_scaling``). Each guard's value, limit and verdict is printed at the end
and written to the JSON and Markdown; any guard missed makes the exit status 1
too.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TypeVar

F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", 38)
# struct flock for the whole file: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks).
WRLCK = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
UNLCK = struct.pack("hhqqi", fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0)

BARRIER_TIMEOUT = 30.0

T = TypeVar("T")
R = TypeVar("R")
Op = Callable[[], object]


@dataclass(frozen=True)
class Settings:
    """How long to measure, and where to put lock files."""

    quick: bool
    rounds: int  # rounds of uncontended batches
    batch: float  # seconds per uncontended batch
    contended_rounds: int
    duration: float  # seconds per contended round
    workdir: Path

    @classmethod
    def for_run(cls, quick: bool, workdir: Path) -> Settings:
        if quick:
            return cls(quick, rounds=7, batch=0.02, contended_rounds=3, duration=1.0,
                       workdir=workdir)
        return cls(quick, rounds=21, batch=0.05, contended_rounds=5, duration=2.0,
                   workdir=workdir)


@dataclass
class Row:
    """One contender's figures: one sample per round, plus what else was seen."""

    name: str
    role: str  # "floor", "latchwire" or "peer"
    samples: list[float]
    details: dict[str, float | str] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)


@dataclass
class Section:
    """One comparison: its rows, the floors they are divided by, and what to conclude."""

    part: str
    title: str
    unit: str
    rows: list[Row]
    floors: list[str]  # names of the rows every median is divided by
    columns: list[str] = field(default_factory=list)  # Row.details keys shown in the table
    conclusions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: bool = False  # a correctness check failed
    guards: list[Guard] = field(default_factory=list)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def ratios(self, row: Row) -> dict[str, float]:
        """row's median over each floor's median."""
        return {f: row.median / self.row(f).median for f in self.floors}


@dataclass(frozen=True)
class Guard:
    """A regression guard: a ratio (or difference) between figures of the same run, and
    the limit it must keep to. Limits sit 5-10x (at least 1.5x) away from what a healthy
    build measures, so that only an order-of-magnitude regression fails, never noise."""

    section: str  # "part: title" of the section it was measured in
    name: str
    value: float
    limit: float
    at_most: bool  # value must be <= limit (else >= limit)
    unit: str = "x"  # "x" for a ratio, else the unit of a difference

    @property
    def ok(self) -> bool:
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    @property
    def verdict(self) -> str:
        return "ok" if self.ok else "FAILED"

    def describe(self) -> tuple[str, str]:
        """(value, limit) as printed."""
        def show(v: float) -> str:
            return f"{v:.2f}x" if self.unit == "x" else f"{v:+.0f} {self.unit}"
        return show(self.value), ("≤ " if self.at_most else "≥ ") + show(self.limit)


def add_guard(section: Section, name: str, value: float, limit: float, *, at_most: bool = True,
              unit: str = "x") -> None:
    section.guards.append(Guard(f"{section.part}: {section.title}", name, value, limit,
                                at_most, unit))


SCALING_GUARD = 5.0  # a ratio to a floor, at most this many times higher at a larger size


def add_scaling(small: Section, large: Section, guarded: str, floor: str,
                per_item: str | None = None) -> None:
    """One comparison measured at two sizes (more names, more objects): large's conclusions
    say how each contender's median changed from small's, 1.00x being constant time (or,
    with per_item, a Row.details key such as "µs/route", how that cost per item changed,
    1.00x being linear time), and guarded's ratio to floor must not grow more than
    SCALING_GUARD-fold (a guard)."""
    def figure(row: Row) -> float:
        return float(row.details[per_item]) if per_item else row.median

    unit, law = (per_item, "linear") if per_item else (large.unit, "constant")
    large.conclusions.append(f"scaling, from '{small.title}' to this ({unit}; 1.00x is "
                             f"{law} time):")
    for row in large.rows:
        before, after = figure(small.row(row.name)), figure(row)
        large.conclusions.append(f"  {row.name}: {fmt(before)} -> {fmt(after)} "
                                 f"({after / before:.2f}x)")
    growth = large.ratios(large.row(guarded))[floor] / small.ratios(small.row(guarded))[floor]
    add_guard(large, f"{guarded}: growth of its ratio to {floor.removeprefix('floor: ')}",
              growth, SCALING_GUARD)


def interleave(contenders: Sequence[T], rounds: int, measure: Callable[[T], R]) -> list[list[R]]:
    """measure() each contender once per round, rotating the order; results per contender."""
    results: list[list[R]] = [[] for _ in contenders]
    for r in range(rounds):
        for k in range(len(contenders)):
            i = (r + k) % len(contenders)
            results[i].append(measure(contenders[i]))
    return results


def calibrate(run: Callable[[int], float], target: float) -> int:
    """The number of operations run(n) does in about target seconds."""
    n = 1
    while (elapsed := run(n)) < target / 10:
        n *= 10
    return max(1, round(n * target / elapsed))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))]



@dataclass(frozen=True)
class Timed:
    """An uncontended contender: run(n) does n acquire+release pairs, returns seconds."""

    name: str
    role: str
    run: Callable[[int], float]


def per_op_samples(contenders: Sequence[Timed], s: Settings, unit: float) -> list[list[float]]:
    """Each contender's time per operation (times unit) in each of s.rounds interleaved
    rounds, after calibrating it (and so warming it up) to batches of s.batch seconds."""
    sizes = [calibrate(c.run, s.batch) for c in contenders]
    return interleave(range(len(contenders)), s.rounds,
                      lambda i: contenders[i].run(sizes[i]) / sizes[i] * unit)


def per_op_rows(contenders: Sequence[Timed], s: Settings, unit: float,
                rate: str | None = None) -> list[Row]:
    """Each contender's row of per_op_samples(); with rate, a column of that name holding
    operations per second (unit / median)."""
    samples = per_op_samples(contenders, s, unit)
    rows = [Row(c.name, c.role, per_op) for c, per_op in zip(contenders, samples, strict=True)]
    if rate is not None:
        for row in rows:
            row.details[rate] = unit / row.median
    return rows


def pair_loop(acquire: Op, release: Op) -> Callable[[int], float]:
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            acquire()
            release()
        return time.perf_counter() - start
    return run


def with_loop(lock: AbstractContextManager[object]) -> Callable[[int], float]:
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            with lock:
                pass
        return time.perf_counter() - start
    return run


def python_floor_loop(fd: int) -> Callable[[int], float]:
    def run(n: int) -> float:
        call = fcntl.fcntl
        start = time.perf_counter()
        for _ in range(n):
            call(fd, F_OFD_SETLK, WRLCK)
            call(fd, F_OFD_SETLK, UNLCK)
        return time.perf_counter() - start
    return run


def optional_import(name: str, notes: list[str]) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        notes.append(f"{name} skipped: not installed (pip install -e '.[bench]').")
        return None


def compare_sentence(row: Row, peer: Row) -> str:
    ratio = peer.median / row.median
    if 0.95 < ratio < 1.05:
        return f"{row.name} is about as fast as {peer.name} ({ratio:.2f}x)"
    if ratio >= 1:
        return f"{row.name} is {ratio:.1f}x faster than {peer.name}"
    return f"{row.name} is {1 / ratio:.1f}x slower than {peer.name}"


def verdict(value: float, limit: float, at_most: bool) -> str:
    """'met', or by how much value misses limit."""
    if value <= limit if at_most else value >= limit:
        return "met"
    return f"MISSED by {abs(value / limit - 1):.0%}"


def fmt(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
