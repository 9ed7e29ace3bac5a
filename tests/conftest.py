"""Shared test policy.

Tests that need root, network namespaces or another real-kernel facility ask
for it through ``need()``: elsewhere they skip with the reason, but under
``LATCHWIRE_REQUIRE_KERNEL=1`` (as CI sets) a missing facility is a failure.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_KERNEL = os.environ.get("LATCHWIRE_REQUIRE_KERNEL") == "1"


def need(available: bool, reason: str) -> None:
    """Skip (or, under LATCHWIRE_REQUIRE_KERNEL=1, fail) unless available."""
    if available:
        return
    if REQUIRE_KERNEL:
        pytest.fail(f"LATCHWIRE_REQUIRE_KERNEL=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def root() -> None:
    """The test needs to run as root."""
    need(os.geteuid() == 0, "this test needs root")
