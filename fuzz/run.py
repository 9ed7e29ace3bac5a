"""Run latchwire's fuzz targets with atheris, one after the other.

    python fuzz/run.py [TARGET ...] [--seconds N] [--root DIR] [--seeds DIR ...]

Each target (all of ``targets.TARGETS`` by default) runs for N seconds in a
fresh interpreter under libFuzzer, on the corpus ``DIR/corpus/TARGET`` (new
inputs are added there), seeded from ``fuzz/seeds`` and every ``--seeds``
directory (``fuzz/seed.py`` captures more from the kernel). An input that makes
a target fail is written to ``DIR/crashes/TARGET-...``; the exit status is 1 if
any target failed.

latchwire's Python layer is instrumented by atheris. When the ``_core`` that
would be imported was built with ``LATCHWIRE_SANITIZE=...,fuzzer-no-link``
(see the README), the native parser's coverage guides the fuzzer too: each run
then preloads atheris' ASan+libFuzzer runtime, with ``PYTHONMALLOC=malloc``
so that ASan sees every object's memory.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "seeds"
SUPPRESSIONS = HERE / "asan.supp"


def native_instrumentation() -> str:
    """What the _core about to be imported was compiled with: "asan", "coverage"
    (libFuzzer's -fsanitize=fuzzer-no-link alone) or "" (a normal build).
    Looked up without importing it: a sanitized _core needs a preloaded runtime."""
    package = importlib.util.find_spec("latchwire")  # finding a submodule would import it
    cores = [Path(d) / f"_core{suffix}" for d in package.submodule_search_locations or []
             for suffix in importlib.machinery.EXTENSION_SUFFIXES] if package else []
    found = [core for core in cores if core.exists()]
    if not found:
        sys.exit("latchwire._core is not importable: install or build latchwire first")
    image = found[0].read_bytes()
    if b"__asan_init" in image:
        return "asan"
    return "coverage" if b"__sanitizer_cov" in image else ""


def preload_runtime() -> None:
    """For a native-instrumented _core, re-execute this script with atheris'
    ASan+libFuzzer runtime preloaded, which the runs inherit. Leaks are not
    checked (CPython's caches would pass for them); options already in
    ASAN_OPTIONS or UBSAN_OPTIONS win over these defaults."""
    import atheris

    runtime = str(Path(atheris.path()) / "asan_with_fuzzer.so")
    if os.environ.get("LD_PRELOAD") == runtime:
        return
    env = dict(os.environ, LD_PRELOAD=runtime, PYTHONMALLOC="malloc")
    for name, defaults in [("ASAN_OPTIONS", f"detect_leaks=0:suppressions={SUPPRESSIONS}"),
                           ("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")]:
        env[name] = f"{defaults}:{env[name]}" if env.get(name) else defaults
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def work(target: str, libfuzzer_args: list[str]) -> None:
    """In the fuzzing interpreter: instrument latchwire and run one target (libFuzzer
    exits the process when done)."""
    import atheris

    sys.path.insert(0, str(HERE))
    with atheris.instrument_imports(include=["latchwire", "targets"]):
        import targets
    atheris.Setup([sys.argv[0], *libfuzzer_args], targets.TARGETS[target])
    atheris.Fuzz()


def run(target: str, seconds: float, root: Path, seeds: list[Path]) -> tuple[int, str]:
    """Fuzz target for seconds; its exit status and libFuzzer's closing figures."""
    corpus = root / "corpus" / target
    corpus.mkdir(parents=True, exist_ok=True)
    (root / "crashes").mkdir(parents=True, exist_ok=True)
    args = [str(corpus), *[str(s) for s in seeds if s.is_dir()],
            f"-max_total_time={max(1, round(seconds))}", "-timeout=10", "-detect_leaks=0",
            f"-artifact_prefix={root / 'crashes'}/{target}-", "-print_final_stats=1"]
    proc = subprocess.Popen([sys.executable, __file__, "--worker", target, *args],
                            stderr=subprocess.PIPE, text=True, errors="replace")
    assert proc.stderr is not None
    figures = {"runs": "?", "cov": "?", "ft": "?", "corpus": "?"}
    for line in proc.stderr:
        sys.stderr.write(line)
        if m := re.match(r"#\d+\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)", line):
            figures.update(cov=m[1], ft=m[2], corpus=m[3])
        elif m := re.match(r"stat::number_of_executed_units: (\d+)", line):
            figures["runs"] = m[1]
    status = proc.wait()
    return status, " ".join(f"{k}={v}" for k, v in figures.items())


def main() -> int:
    if sys.argv[1:2] == ["--worker"]:  # run() starting one target: --worker TARGET ARGS
        work(sys.argv[2], sys.argv[3:])
        return 0
    native = native_instrumentation()
    if native:
        preload_runtime()
    sys.path.insert(0, str(HERE))
    from targets import TARGETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"some of: {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--seconds", type=float, default=60.0, help="per target (default 60)")
    parser.add_argument("--root", type=Path, default=Path("build/fuzz"),
                        help="corpus and crash directory (default build/fuzz)")
    parser.add_argument("--seeds", type=Path, action="append", default=[],
                        help="another seed directory (repeatable)")
    opts = parser.parse_args()
    unknown = set(opts.targets) - set(TARGETS)
    if unknown:
        parser.error(f"no such target: {', '.join(sorted(unknown))}")
    print(f"native instrumentation of _core: {native or 'none (Python coverage only)'}",
          flush=True)
    results = {t: run(t, opts.seconds, opts.root, [SEEDS, *opts.seeds])
               for t in opts.targets or TARGETS}
    for target, (status, figures) in results.items():
        print(f"{target:10} {'ok' if status == 0 else f'FAILED ({status})':12} {figures}")
    return 1 if any(status for status, _ in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
