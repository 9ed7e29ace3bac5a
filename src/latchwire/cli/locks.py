"""``latchwire locks``: who holds the locks of a file, or of a directory's files.

Holders are listed by kind: OFD and classic POSIX locks (which exclude each
other) first, flock(2) locks (which exclude only each other) after them, so
that a flock holder is never read as what keeps an OFD lock from being taken;
``latchwire locks --help`` says the columns and exit statuses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from latchwire._core import QUEUE_SUFFIX
from latchwire.cli._common import printable
from latchwire.locking import FileLock, Holder, file_holders

MISSING = 3  # the exit status when PATH is not there to look at
_COLUMNS = ("PATH", "PID", "MODE", "KIND", "COMMAND")
_BYTE_RANGE = ("ofd", "posix")  # the kinds that conflict with each other (and not with flock)


def run(args: argparse.Namespace) -> int:
    try:
        paths = _paths(args.path)
    except OSError as exc:
        print(f"latchwire: {exc.filename or args.path}: {exc.strerror}", file=sys.stderr)
        return MISSING
    rows: list[tuple[str, Holder]] = []
    mixed = []
    for path in paths:
        holders = sorted(file_holders(path), key=lambda h: (h.kind not in _BYTE_RANGE, h.pid))
        rows += [(path, h) for h in holders]
        if len({h.kind in _BYTE_RANGE for h in holders}) == 2:
            mixed.append(path)
    if args.waiters:
        from latchwire.cli.waiters import show

        found = show(rows, paths, args.json)
    elif args.json:
        print(json.dumps([{"path": path, **h._asdict()} for path, h in rows], indent=2))
        found = bool(rows)
    else:
        print("\t".join(_COLUMNS))
        for path, h in rows:
            print(f"{printable(path)}\t{h.pid}\t{h.mode}\t{h.kind}\t{printable(h.command)}")
        found = bool(rows)
    sys.stdout.flush()
    for path in mixed:
        print(f"latchwire: note: {printable(path)} has flock holders and ofd/posix holders: "
              "flock locks do not conflict with ofd or posix ones", file=sys.stderr)
    return 0 if found else 1


def _paths(path: str) -> list[str]:
    """The files to look at: DIR's regular files, or PATH and its lock file
    (those that exist). OSError (FileNotFoundError) if there is none to look at."""
    if os.path.isdir(path):
        return sorted(entry.path for entry in os.scandir(path)
                      if entry.is_file(follow_symlinks=False)
                      and not entry.name.endswith(QUEUE_SUFFIX))
    found = []
    for candidate in dict.fromkeys([path, FileLock(path).lockfile]):
        try:
            os.lstat(candidate)
        except FileNotFoundError:
            continue
        found.append(candidate)
    if not found:
        lockfile = FileLock(path).lockfile
        raise FileNotFoundError(2, f"No such file or directory (nor lock file {lockfile})",
                                path)
    return found
