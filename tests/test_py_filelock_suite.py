"""py-filelock's own test suite as an oracle, through a shim of its API over latchwire.

The suite is ``tests/test_filelock.py`` of py-filelock's sdist (FILELOCK, pinned by
its sha256), fetched at test time with pip from PyPI into a cache
(``$LATCHWIRE_TEST_CACHE``, else ``~/.cache/latchwire-tests``) and never committed
here. It runs under pytest in a subprocess, with ``tests/helpers/filelock_shim.py``
installed as the ``filelock`` module, so every ``FileLock`` it makes is a latchwire
FileLock. Its threaded cases are the oracle: many threads on one lock object,
on two, or on a new one per use ("thrashing", the shape that finds races in a
per-process record), each checking that no other thread got in.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

from lwtest import child_env, need

FILELOCK = "3.20.0"
SHA256 = "711e943b4ec6be42e1d4e6690b48dc175c822967466bb31c0c293f34334c13f4"
HELPERS = Path(__file__).resolve().parent / "helpers"
CACHE = Path(os.environ.get("LATCHWIRE_TEST_CACHE", Path.home() / ".cache" / "latchwire-tests"))
ROUNDS = max(1, round(float(os.environ.get("LATCHWIRE_STORM_SCALE", "1")) * 3))

# The cases run (the FileLock parametrisation of each; SoftFileLock's are py-filelock's
# other lock, not shimmed).
THREADED = [
    "test_threaded_shared_lock_obj",
    "test_threaded_lock_different_lock_obj",
    "test_thrashing_with_thread_pool_passing_lock_to_threads",
    "test_thrashing_with_thread_pool_global_lock",
    "test_thrashing_with_thread_pool_lock_recreated_in_each_thread",
    "test_lock_can_be_non_thread_local",
]

# In the subprocess: the shim as ``filelock``, and every case's tmp_path (where the
# suite puts its lock files) with slowed opens, as test_lock_races' lock files have.
_RUN = """
import sys
sys.path.insert(0, sys.argv[1])
import filelock_shim
filelock_shim.install()
import pytest
from slowopen import SlowOpens


class SlowTmpPath:
    @pytest.fixture(autouse=True)
    def _slow_opens(self, tmp_path):
        slow = SlowOpens(tmp_path)
        try:
            yield
        finally:
            slow.close()


sys.exit(pytest.main(sys.argv[2:], plugins=[SlowTmpPath()]))
"""


def suite() -> Path:
    """py-filelock's test_filelock.py from its sdist, fetched into the cache once."""
    target = CACHE / f"filelock-{FILELOCK}" / "test_filelock.py"
    if target.exists():
        return target
    sdist = CACHE / f"filelock-{FILELOCK}.tar.gz"
    if not sdist.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
             "filelock", f"filelock=={FILELOCK}", "-d", str(CACHE)],
            capture_output=True, text=True, timeout=300, check=False)
        need(fetched.returncode == 0 and sdist.exists(),
             f"py-filelock {FILELOCK}'s sdist could not be fetched: {fetched.stderr[-2000:]}")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    assert digest == SHA256, f"{sdist} has sha256 {digest}, not the pinned {SHA256}"
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(f"filelock-{FILELOCK}/tests/test_filelock.py")
        assert member is not None
        text = member.read()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_bytes(text)
    partial.replace(target)
    return target


def run_suite(tmp_path: Path, selection: str) -> dict[str, str]:
    """Run the suite's cases that ``-k selection`` picks through the shim; each case's
    outcome ("passed", "failed", "error" or "skipped") by name."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    report = tmp_path / "report.xml"
    run = subprocess.run(
        [sys.executable, "-c", _RUN, str(HELPERS), str(suite()), "-q", "-p", "no:cacheprovider",
         "-o", "addopts=", "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "t"),
         "-k", selection, f"--junitxml={report}"],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path, env=child_env())
    assert report.exists(), run.stdout + run.stderr
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = {child.tag for child in case} & {"failure", "error", "skipped"}
        outcomes[case.get("name", "?")] = kinds.pop() if kinds else "passed"
    print(run.stdout[-3000:])
    return outcomes


def test_py_filelock_threaded_cases_pass_through_the_shim(tmp_path: Path) -> None:
    """py-filelock's threaded and thrashing cases, ROUNDS times over, all pass. The
    subprocess imports the latchwire this test did (``child_env``)."""
    selection = " or ".join(THREADED)
    expected = {f"{name}[FileLock]" for name in THREADED}
    failed: list[str] = []
    for round_ in range(ROUNDS):
        outcomes = run_suite(tmp_path / f"round-{round_}",
                             f"({selection}) and not SoftFileLock")
        assert set(outcomes) == expected, f"ran {sorted(outcomes)}, not {sorted(expected)}"
        failed += [f"round {round_}: {name} {outcome}"
                   for name, outcome in sorted(outcomes.items()) if outcome != "passed"]
    print(f"\nRACES py-filelock-suite: failed={len(failed)} of {ROUNDS * len(expected)}")
    assert not failed, "\n".join(failed)
