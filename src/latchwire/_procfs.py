"""What /proc says of processes and their file locks, read the one way both
``latchwire.locking`` (who holds a lock file) and ``latchwire.waitgraph`` (who waits
for whom) read it."""

from __future__ import annotations

from collections.abc import Iterator

EOF_END = -1  # a lock's last byte when it runs to the end of the file
KINDS = {"OFDLCK": "ofd", "POSIX": "posix", "FLOCK": "flock"}


def command(pid: int) -> str:
    """pid's command line, its arguments joined by spaces ("" if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def granted_locks(text: str) -> Iterator[tuple[str, bool, int, str, int, int]]:
    """(kind, exclusive, pid, file, start, end) of each granted lock in /proc/locks
    or fdinfo text ("1: POSIX ADVISORY WRITE 1234 fe:00:42 0 EOF", after "lock:" in
    fdinfo): kind "ofd", "posix" or "flock", the file as MAJ:MIN:INO, the bytes from
    start to end inclusive (end EOF_END: to the end). Waiting requests ("->") and
    leases are skipped."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "lock:":
            fields = fields[1:]
        if len(fields) < 8 or fields[1] == "->":
            continue
        kind = KINDS.get(fields[1])
        if kind is None:
            continue
        try:
            pid, start = int(fields[4]), int(fields[6])
            end = EOF_END if fields[7] == "EOF" else int(fields[7])
        except ValueError:
            continue
        yield kind, fields[3] == "WRITE", pid, fields[5], start, end
