"""``latchwire locks``: who holds the locks of a file, or of a directory's files."""

from __future__ import annotations

import argparse
import json
import os

from latchwire.locking import FileLock, Holder, file_holders


def run(args: argparse.Namespace) -> int:
    rows: list[tuple[str, Holder]] = []
    if os.path.isdir(args.path):
        for entry in sorted(os.scandir(args.path), key=lambda e: e.name):
            if entry.is_file(follow_symlinks=False):
                rows += [(entry.path, h) for h in file_holders(entry.path)]
    else:
        for path in dict.fromkeys([args.path, FileLock(args.path).lockfile]):
            rows += [(path, h) for h in file_holders(path)]
    if args.json:
        print(json.dumps([{"path": path, **h._asdict()} for path, h in rows], indent=2))
    else:
        for path, h in rows:
            print(f"{path}\t{h.pid}\t{h.mode}\t{h.kind}\t{_printable(h.command)}")
    return 0 if rows else 1


def _printable(text: str) -> str:
    """text with control characters escaped, so that a holder stays on one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
