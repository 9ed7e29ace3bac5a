"""What every subcommand of the ``latchwire`` command shares."""

from __future__ import annotations

import sys


def fail(what: str) -> int:
    """Say what went wrong on one line of stderr; the exit status 1."""
    print(f"latchwire: {what}", file=sys.stderr)
    return 1


def printable(text: str) -> str:
    """text with control characters escaped, so that a holder stays on one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
