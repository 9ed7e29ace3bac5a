"""latchwire against the other libraries and against the kernel's own cost, side by side.

Usage: ``python bench/compare.py [PART ...] [--quick] [--json FILE] [--markdown FILE]
[--plot PNG]`` (every part when none is named; ``--quick`` for a short run, as CI
runs it; ``--plot`` draws one log-scale bar chart per comparison with matplotlib).

This is the runner: the command line, the registry of parts, and the output (each
section's table as it is measured, then the regression guards; JSON, Markdown and the
chart on request). The exit status is 1 if a regression guard or a correctness check
failed, else 0.

How contenders are measured (interleaved rounds, calibrated batches, medians, floors,
guards) is written, and done, in ``measure.py`` (``measure_dumps.py`` for whole netlink
dumps). Each part is a module of its own beside it, its docstring saying what it
compares against what: ``part_filelock.py``, ``part_lockspace.py``, ``part_locks.py``
(rwlock, alias mutex), ``part_objects.py``, ``part_netlink.py`` (dump) and
``part_rtnl.py`` (routes, links), the last three with the namespaces of
``netns_setup.py``, ``part_deadlock.py`` (deadlock: cycles across processes), ``part_fair.py``
(fair: fair file locks) and
``part_cli.py`` (cli: the command, whole processes). The
pytest-benchmark suites (``test_bench_*.py``) import their workloads from the same
modules.

Parts. Each part is a function that takes the run's ``Settings`` and returns its
``Section``s, registered in ``PARTS`` by one ``Part`` line (name, function, what it
compares); adding a comparison is one new module and one line there. A part
registered under two names runs once.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import part_async_locks
import part_cli
import part_deadlock
import part_fair
import part_filelock
import part_locks
import part_lockspace
import part_netlink
import part_objects
import part_rtnl
from measure import Guard, Section, Settings, fmt

import latchwire
from latchwire import _core

PEERS = ("filelock", "fasteners", "portalocker", "oslo.concurrency", "readerwriterlock",
         "pyroute2")


@dataclass(frozen=True)
class Part:
    """A comparison the runner knows: its name on the command line, the function that
    measures it (the run's Settings in, its Sections out), and what it compares."""

    name: str
    run: Callable[[Settings], list[Section]]
    about: str


PARTS = (
    Part("filelock", part_filelock.filelock_part,
         "FileLock uncontended and across processes, against filelock, fasteners, "
         "portalocker and fcntl floors"),
    Part("lockspace", part_lockspace.lockspace_part,
         "LockSpace acquire+release and busy answers among few and many names, against "
         "oslo.concurrency, filelock and fcntl floors"),
    Part("rwlock", part_locks.rwlock_part,
         "Mutex and RWLock uncontended and across threads, and the lock-order checker, "
         "against threading.Lock, readerwriterlock and fasteners"),
    Part("mutex", part_locks.rwlock_part, "another name for rwlock (run once however named)"),
    Part("objects", part_objects.objects_part,
         "ObjectList lookups and add+remove among few and many objects, against dict + "
         "threading.Lock"),
    Part("dump", part_netlink.dump_part,
         "raw netlink route dumps against recv_into floors and pyroute2 (root and ip)"),
    Part("routes", part_rtnl.routes_part,
         "decoded rtnl route dumps against the recv_into floor, ip -j and pyroute2 "
         "(root and ip)"),
    Part("links", part_rtnl.links_part,
         "a decoded rtnl link dump against the recv_into floor, ip -j and pyroute2 "
         "(root and ip)"),
    Part("async-filelock", part_async_locks.async_filelock_part,
         "FileLock.acquire_async() hand-offs between tasks and a queue of 1,000 tasks, "
         "against asyncio.Lock"),
    Part("deadlock", part_deadlock.deadlock_part,
         "LockDeadlock: from a 2-, 3- or 4-process wait cycle closing to the raise, and "
         "what the check costs a wait"),
    Part("fair", part_fair.fair_part,
         "FileLock(fair=True): four processes contending (throughput, overtakes) against "
         "the unfair lock and filelock, and the queue's uncontended cost"),
    Part("cli", part_cli.cli_part,
         "the latchwire command, whole processes: ip routes (--json) against ip (-j) route "
         "show on 100,000 routes (root and ip), lock FILE -- true against flock(1)"),
)


# ---------------------------------------------------------------------------
# Reporting


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, object]:
    versions = {}
    for name in PEERS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpu_model": cpu_model(),
        "latchwire": latchwire.__version__,
        "latchwire_core": _core.__file__,
        "peers": versions,
    }


def table(section: Section) -> tuple[list[str], list[list[str]]]:
    """The header and cells of section's table."""
    header = ["contender", f"median {section.unit}", "min",
              *(f"/ {f.removeprefix('floor: ')}" for f in section.floors), *section.columns]
    cells = [[r.name, fmt(r.median), fmt(r.min),
              *(f"{v:.2f}" for v in section.ratios(r).values()),
              *(fmt(r.details[d]) for d in section.columns)]
             for r in section.rows]
    return header, cells


def render_text(section: Section) -> str:
    header, cells = table(section)
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]

    def line(fields: list[str]) -> str:
        return "  ".join(f.ljust(w) if i == 0 else f.rjust(w)
                         for i, (f, w) in enumerate(zip(fields, widths, strict=True)))

    out = [f"== {section.part}: {section.title} ==", line(header),
           line(["-" * w for w in widths]), *(line(c) for c in cells), ""]
    out += [f"  {c}" for c in section.conclusions]
    out += [f"  note: {n}" for n in section.notes]
    return "\n".join(out) + "\n"


def guard_table(sections: list[Section]) -> tuple[list[str], list[list[str]]]:
    """The header and cells of the regression guards' table, every section's."""
    header = ["guard", "measured in", "value", "limit", "verdict"]
    cells = [[g.name, g.section, *g.describe(), g.verdict]
             for sec in sections for g in sec.guards]
    return header, cells


def render_guards(sections: list[Section]) -> str:
    header, cells = guard_table(sections)
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]

    def line(fields: list[str]) -> str:
        return "  ".join(f.ljust(w) if i < 2 else f.rjust(w)
                         for i, (f, w) in enumerate(zip(fields, widths, strict=True)))

    if cells:
        out = ["== regression guards (ratios within this run; only a far-off value fails) ==",
               line(header), line(["-" * w for w in widths]), *(line(c) for c in cells), ""]
    else:
        out = ["== regression guards: none measured ==", ""]
    out += [f"  correctness check FAILED: {sec.part}: {sec.title}"
            for sec in sections if sec.failed]
    return "\n".join(out) + "\n"


def render_markdown(sections: list[Section], info: dict[str, object]) -> str:
    out = ["# latchwire benchmarks", "",
           f"{info['cpu_model']}, {info['nproc']} CPUs, Linux {info['kernel']}, {info['python']}",
           ""]
    header, cells = guard_table(sections)
    if cells:
        out += ["## Regression guards", "",
                "| " + " | ".join(header) + " |",
                "|" + "|".join([":---", ":---", "---:", "---:", ":---"]) + "|",
                *("| " + " | ".join(c) + " |" for c in cells), ""]
    out += [f"- correctness check FAILED: {sec.part}: {sec.title}"
            for sec in sections if sec.failed]
    for section in sections:
        header, cells = table(section)
        out += [f"## {section.part}: {section.title}", "",
                "| " + " | ".join(header) + " |",
                "|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|",
                *("| " + " | ".join(c) + " |" for c in cells), ""]
        out += [f"- {c}" for c in section.conclusions]
        out += [f"- *{n}*" for n in section.notes]
        out.append("")
    return "\n".join(out)


def to_json(sections: list[Section], info: dict[str, object], s: Settings) -> dict[str, object]:
    return {
        "machine": info,
        "settings": {"quick": s.quick, "rounds": s.rounds, "batch_s": s.batch,
                     "contended_rounds": s.contended_rounds, "duration_s": s.duration},
        "sections": [{
            "part": sec.part,
            "title": sec.title,
            "floors": sec.floors,
            "contenders": {r.name: {
                "role": r.role,
                "unit": sec.unit,
                "median": r.median,
                "min": r.min,
                "samples": r.samples,
                "ratio_vs_floor": sec.ratios(r),
                "details": r.details,
            } for r in sec.rows},
            "conclusions": sec.conclusions,
            "notes": sec.notes,
            "failed": sec.failed,
            "guards": [guard_json(g) for g in sec.guards],
        } for sec in sections],
        "guards": [guard_json(g) for sec in sections for g in sec.guards],
        "ok": passed(sections),
    }


def guard_json(g: Guard) -> dict[str, object]:
    return {"name": g.name, "section": g.section, "value": g.value, "limit": g.limit,
            "at_most": g.at_most, "unit": g.unit, "ok": g.ok}


def passed(sections: list[Section]) -> bool:
    """No correctness check failed and every regression guard held."""
    return not any(sec.failed or not all(g.ok for g in sec.guards) for sec in sections)


# ---------------------------------------------------------------------------
# Chart

ROLE_COLOURS = {"floor": "#9e9e9e", "latchwire": "#1f77b4", "peer": "#ff7f0e"}


def plot(sections: list[Section], info: dict[str, object], path: Path) -> None:
    """One horizontal bar chart per section, median per contender, log scale."""
    import matplotlib  # only with --plot: not needed otherwise

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not sections:
        raise SystemExit("--plot: nothing was measured")
    columns = 2 if len(sections) > 1 else 1
    grid = [sections[i:i + columns] for i in range(0, len(sections), columns)]
    heights = [max(len(sec.rows) for sec in line) * 0.32 + 1.3 for line in grid]
    fig, axes = plt.subplots(len(grid), columns, squeeze=False,
                             figsize=(9.5 * columns, sum(heights) + 0.8),
                             gridspec_kw={"height_ratios": heights})
    for line, ax_line in zip(grid, axes, strict=True):
        for k, ax in enumerate(ax_line):
            if k >= len(line):
                ax.set_visible(False)
                continue
            sec = line[k]
            rows = sec.rows[::-1]  # first row on top
            medians = [r.median for r in rows]
            bars = ax.barh(range(len(rows)), medians,
                           color=[ROLE_COLOURS.get(r.role, "#cccccc") for r in rows])
            ax.set_xscale("log")
            ax.set_yticks(range(len(rows)), [r.name for r in rows], fontsize=8)
            for tick, r in zip(ax.get_yticklabels(), rows, strict=True):
                if r.role == "latchwire":
                    tick.set_fontweight("bold")
            ax.bar_label(bars, [fmt(m) for m in medians], padding=3, fontsize=7)
            ax.set_xlim(min(medians) / 2, max(medians) * 4)
            better = "higher" if sec.unit.endswith("/s") else "lower"
            ax.set_xlabel(f"median {sec.unit}, log scale ({better} is better)", fontsize=8)
            ax.tick_params(axis="x", which="both", labelsize=7)
            ax.set_title(f"{sec.part}: {sec.title}", fontsize=9, loc="left")
            ax.grid(axis="x", which="major", alpha=0.3)
    fig.legend(handles=[Patch(color=c, label=role) for role, c in ROLE_COLOURS.items()],
               loc="upper right", ncols=3, fontsize=9, frameon=False)
    fig.suptitle(f"latchwire against peers and floors: {info['cpu_model']}, "
                 f"{info['usable_cpus']} CPUs, Linux {info['kernel']}, {info['python']}",
                 x=0.01, ha="left", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (sum(heights) + 0.8)))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parts_help() -> str:
    """The parts and what each compares, for --help."""
    return "parts:\n" + "\n".join(
        textwrap.fill(part.about, 79, initial_indent=f"  {part.name:<11}",
                      subsequent_indent=" " * 13, break_on_hyphens=False)
        for part in PARTS)


def main(argv: Sequence[str] | None = None) -> int:
    by_name = {part.name: part for part in PARTS}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=parts_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", metavar="PART",
                        help=f"what to compare: {', '.join(by_name)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    parser.add_argument("--markdown", type=Path, metavar="FILE",
                        help="write the results as a Markdown table")
    parser.add_argument("--plot", type=Path, metavar="PNG",
                        help="draw a chart of the results, one panel per comparison "
                             "(needs matplotlib)")
    args = parser.parse_args(argv)
    if unknown := [p for p in args.parts if p not in by_name]:
        parser.error(f"unknown part {', '.join(map(repr, unknown))}; "
                     f"known parts: {', '.join(by_name)}")

    info = machine()
    print(f"{info['cpu_model']}, {info['nproc']} CPUs, Linux {info['kernel']}, "
          f"{info['python']}, latchwire {info['latchwire']}\n", flush=True)
    sections: list[Section] = []
    with tempfile.TemporaryDirectory(prefix="latchwire-bench-") as tmp:
        s = Settings.for_run(args.quick, Path(tmp))
        for run in dict.fromkeys(by_name[p].run for p in args.parts or by_name):  # aliases once
            for section in run(s):
                print(render_text(section), flush=True)
                sections.append(section)
    print(render_guards(sections), flush=True)
    if args.json:
        results = to_json(sections, info, s)
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    if args.markdown:
        args.markdown.write_text(render_markdown(sections, info))
    if args.plot:
        plot(sections, info, args.plot)
    ok = passed(sections)
    print("bench: all guards and checks held" if ok else
          "bench: FAILED: a regression guard or a correctness check (see above)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
