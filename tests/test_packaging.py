"""The versions latchwire says it supports agree wherever they are written: requires-python,
the classifiers, the wheels cibuildwheel builds and the README's sentence."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def classifier_versions() -> list[tuple[int, int]]:
    found = []
    for classifier in PROJECT["project"]["classifiers"]:
        m = re.fullmatch(r"Programming Language :: Python :: 3\.(\d+)", classifier)
        if m:
            found.append((3, int(m.group(1))))
    return sorted(found)


def test_classifiers_run_without_a_gap_from_requires_python() -> None:
    m = re.fullmatch(r">=3\.(\d+)", PROJECT["project"]["requires-python"])
    assert m, PROJECT["project"]["requires-python"]
    oldest = (3, int(m.group(1)))
    versions = classifier_versions()
    assert versions, "no Python version classifiers"
    assert versions[0] == oldest, f"requires-python says {oldest}, the classifiers {versions[0]}"
    assert versions == [(3, minor) for minor in range(oldest[1], versions[-1][1] + 1)], versions
    assert sys.version_info[:2] >= oldest, "the suite runs on a Python the project refuses"


def test_cibuildwheel_builds_every_classified_version_and_the_free_threaded_newest() -> None:
    selectors = set(PROJECT["tool"]["cibuildwheel"]["build"].split())
    versions = classifier_versions()
    wanted = {f"cp3{minor}-*" for _, minor in versions} | {f"cp3{versions[-1][1]}t-*"}
    assert selectors == wanted, f"cibuildwheel builds {sorted(selectors)}, wanted {sorted(wanted)}"
    assert "musllinux" not in PROJECT["tool"]["cibuildwheel"].get("skip", "")
    assert any("Free Threading" in c for c in PROJECT["project"]["classifiers"])


def test_readme_names_the_same_range() -> None:
    versions = classifier_versions()
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"CPython (3\.\d+)\u2013(3\.\d+) on Linux", readme)
    assert m, "README does not say which CPython versions are supported"
    said = [tuple(int(p) for p in v.split(".")) for v in m.groups()]
    assert said == [versions[0], versions[-1]], \
        f"README says {m.group(0)!r}, the classifiers {versions}"
