"""The build: the compiled core is the module in use, and its stubs match it."""

from __future__ import annotations

import importlib.machinery
import subprocess
import sys

import latchwire
from latchwire import _core


def test_core_is_compiled_extension() -> None:
    assert isinstance(_core.__loader__, importlib.machinery.ExtensionFileLoader)
    assert _core.__file__ is not None
    assert _core.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), _core.__file__
    assert latchwire.FileLock.__mro__[1] is _core.FileLock


def test_stubs_match_core() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "latchwire._core"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
