"""Who waits for whom among processes locking files, and the cycles of it.

The kernel looks for deadlocks (``EDEADLK``) among classic POSIX waits only; OFD and
``flock(2)`` waits, and cycles that mix kinds, it sleeps in. latchwire looks for
them itself (``check_wait``), in a thread about to wait for a ``FileLock`` or a
lockspace lease while it holds another, and raises ``LockDeadlock`` instead of
sleeping in a cycle. latchwire._core calls it as the wait begins and, for a wait
in the kernel, again at growing intervals while it lasts.

The graph is of waiting threads, each with the locks it holds, read in two ways:

- latchwire processes write each such wait, with the waiting thread's holds, to
  their *wait board* (``/dev/shm/latchwire-waits.PID``, made at the process's
  first wait; ``_waitboard.pxi``) as it begins, before it is checked: of two
  waits closing a cycle at the same moment, the later check sees the earlier
  wait. Threads waiting behind another thread of their process, or out of the
  kernel for a moment, are on it too. (A thread that holds nothing closes no
  cycle, and its waits are not checked.)
- other processes are read as the kernel shows them: a wait is a thread blocked in
  ``fcntl(F_SETLKW | F_OFD_SETLKW)`` or ``flock(2)`` (``/proc/PID/task/TID/syscall``
  names the call and its arguments, ``/proc/PID/fd/FD`` the file and
  ``/proc/PID/mem`` the ``struct flock``), and it holds whatever its process holds
  (``lock:`` lines in ``/proc/PID/fdinfo/FD``), as in the kernel's own check of
  POSIX waits, where a thread that could still let go of a lock is not told
  apart from the one waiting.

A wait is *for* a hold of another process that conflicts with it: the same file,
ofd and posix locks against each other and flock locks against flock locks,
overlapping bytes, one side exclusive. Before a cycle is reported, each wait on it
is read again and must still be there, so a wait that ended while the graph was
read is not taken for a deadlock. Processes whose /proc files this one may not
read (another user's, without root or under Yama's ptrace restriction) are not
seen; nor are locks a latchwire process takes through other libraries.
"""

from __future__ import annotations

import collections
import contextlib
import os
import struct

from latchwire import _core
from latchwire._procfs import EOF_END, command, granted_locks
from latchwire.errors import LockDeadlock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from typing import NamedTuple

    class _WaitFields(NamedTuple):
        pid: int
        tid: int
        fd: int
        key: str  # "MAJ:MIN:INO", as /proc/locks prints a file
        kind: str  # "ofd", "posix" or "flock"
        exclusive: bool
        start: int
        end: int  # the last byte, inclusive (EOF: -1)
        path: str

    class _HoldFields(NamedTuple):
        pid: int
        key: str
        kind: str
        exclusive: bool
        start: int
        end: int
else:
    _WaitFields = collections.namedtuple(
        "_WaitFields", ("pid", "tid", "fd", "key", "kind", "exclusive", "start", "end", "path"))
    _HoldFields = collections.namedtuple(
        "_HoldFields", ("pid", "key", "kind", "exclusive", "start", "end"))

__all__ = ["Hold", "Wait", "Waiter", "check_wait", "cycles", "describe", "file_key", "find_cycle",
           "holds", "waiters", "waits"]

EOF = EOF_END
F_SETLKW = 7
F_OFD_SETLKW = 38
F_RDLCK, F_WRLCK = 0, 1
LOCK_SH, LOCK_EX, LOCK_NB = 1, 2, 4
# (fcntl, flock) system call numbers, by machine; elsewhere no wait is seen.
_SYSCALLS = {"x86_64": (72, 73), "aarch64": (25, 32)}
# struct flock on LP64: short l_type, short l_whence, (pad), off_t l_start, off_t l_len.
_FLOCK = struct.Struct("=hh4xqq")


class Wait(_WaitFields):
    """A thread waiting in the kernel for a file lock: pid, tid, fd, key (the file
    as ``MAJ:MIN:INO``), kind ("ofd", "posix" or "flock"), exclusive, start and
    end (the bytes, end inclusive, -1 for EOF) and path."""

    __slots__ = ()


class Hold(_HoldFields):
    """A lock a process holds: pid, key, kind, exclusive, start, end."""

    __slots__ = ()


def file_key(dev: int, ino: int) -> str:
    """The file (st_dev, st_ino) as /proc/locks and fdinfo print it."""
    return f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb", buffering=0) as f:
            return f.read()
    except OSError:
        return None


def _task_wait(pid: int, tid: int, calls: tuple[int, int]) -> Wait | None:
    """The lock tid of pid waits for in the kernel, or None."""
    text = _read(f"/proc/{pid}/task/{tid}/syscall")
    if not text or text[:1] in b"r-":  # "running", or "-1 ..." (not in a system call)
        return None
    fields = text.split()
    nr = int(fields[0])
    if nr not in calls or len(fields) < 4:
        return None
    fd, arg1, arg2 = int(fields[1], 16), int(fields[2], 16), int(fields[3], 16)
    if nr == calls[1]:  # flock(fd, operation)
        if arg1 & LOCK_NB or not arg1 & (LOCK_SH | LOCK_EX):
            return None
        kind, exclusive, start, end = "flock", bool(arg1 & LOCK_EX), 0, EOF
    else:  # fcntl(fd, cmd, struct flock *)
        if arg1 not in (F_SETLKW, F_OFD_SETLKW):
            return None
        kind = "ofd" if arg1 == F_OFD_SETLKW else "posix"
        flock = _read_memory(pid, arg2, _FLOCK.size)
        if flock is None:  # unreadable: taken as the widest wait there could be
            exclusive, start, end = True, 0, EOF
        else:
            ltype, whence, lstart, llen = _FLOCK.unpack(flock)
            if ltype not in (F_RDLCK, F_WRLCK):
                return None
            exclusive = ltype == F_WRLCK
            start, end = _byte_range(whence, lstart, llen)
    try:
        st = os.stat(f"/proc/{pid}/fd/{fd}")
        path = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    return Wait(pid, tid, fd, file_key(st.st_dev, st.st_ino), kind, exclusive, start, end, path)


def _read_memory(pid: int, address: int, size: int) -> bytes | None:
    data = _read_at(f"/proc/{pid}/mem", address, size)
    return data if data is not None and len(data) == size else None


def _byte_range(whence: int, start: int, length: int) -> tuple[int, int]:
    """The bytes [start, end] (end EOF for to the end) a struct flock names;
    the whole file for a range relative to the offset or the end (not known here)."""
    if whence != os.SEEK_SET:
        return 0, EOF
    if length == 0:
        return start, EOF
    if length < 0:
        return max(0, start + length), start - 1
    return start, start + length - 1


def waits(pids: Iterable[int] | None = None) -> list[Wait]:
    """Every wait in the kernel for a file lock, of the processes pids (default: all)."""
    calls = _SYSCALLS.get(os.uname().machine)
    if calls is None:
        return []
    found = []
    for pid in _pids() if pids is None else pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            wait = _task_wait(pid, int(tid), calls)
            if wait is not None:
                found.append(wait)
    return found


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def holds(pid: int) -> list[Hold]:
    """The locks process pid holds, as its fdinfo shows them (a lock held through an
    open file description shared by several descriptors shows once)."""
    found: dict[Hold, None] = {}
    directory = f"/proc/{pid}/fdinfo"
    try:
        fds = os.listdir(directory)
    except OSError:
        return []
    for fd in fds:
        text = _read(f"{directory}/{fd}")
        if text and b"lock:" in text:
            for hold in parse_lock_lines(pid, text.decode(errors="replace")):
                found[hold] = None
    return list(found)


def parse_lock_lines(pid: int, text: str) -> Iterator[Hold]:
    """The granted locks in /proc/locks-style text, as held by pid."""
    for kind, exclusive, _, file, start, end in granted_locks(text):
        yield Hold(pid, file, kind, exclusive, start, end)


def conflicts(wait: Wait, hold: Hold) -> bool:
    """Whether wait is (in part) for hold: another process's conflicting lock."""
    if hold.pid == wait.pid or hold.key != wait.key:
        return False
    if (wait.kind == "flock") != (hold.kind == "flock"):
        return False  # flock(2) and record locks do not conflict
    if not (wait.exclusive or hold.exclusive):
        return False
    return _overlap(wait.start, wait.end, hold.start, hold.end)


def _overlap(start1: int, end1: int, start2: int, end2: int) -> bool:
    return (end1 == EOF or start2 <= end1) and (end2 == EOF or start1 <= end2)


# ---- the wait boards (latchwire._core's _waitboard.pxi writes them) ----------

BOARD_DIR, BOARD_PREFIX = _core._board_location()
_HEADER = struct.Struct("=8sIIQ40x")
_SLOT = struct.Struct("=QiiQQiiqqii" + "QQii" * 39 + "Q8xQ")
_SLOT_HOLD = 11  # the first hold's field in an unpacked slot
_KIND_NAMES = ("ofd", "posix", "flock")


class Waiter:
    """One waiting thread: its wait, what it holds, and where the wait was seen
    (``("board", pid, slot, seq)`` or ``("kernel", pid, tid)``), to read it again."""

    __slots__ = ("began", "holds", "source", "wait")

    def __init__(self, wait: Wait, holds: Sequence[Hold], source: tuple[object, ...],
                 began: float | None = None) -> None:
        self.wait = wait
        self.holds = holds
        self.source = source
        self.began = began  # time.monotonic() when it began, where its board says


def board_waiters() -> dict[int, list[Waiter]]:
    """The waits on every live process's board, by pid (a process with a board and
    no waits on it has an empty list). Boards of processes gone are removed."""
    try:
        names = [n for n in os.listdir(BOARD_DIR) if n.startswith(BOARD_PREFIX)]
    except OSError:
        return {}
    found: dict[int, list[Waiter]] = {}
    for name in names:
        try:
            pid = int(name[len(BOARD_PREFIX):])
        except ValueError:
            continue
        waiters = _read_board(pid, f"{BOARD_DIR}/{name}")
        if waiters is not None:
            found[pid] = waiters
    return found


def _read_board(pid: int, path: str) -> list[Waiter] | None:
    """The waits on pid's board at path, or None if it is not pid's (stale, or
    written by another user)."""
    data = _read(path)
    if data is None or len(data) < _HEADER.size:
        return None
    magic, board_pid, high, starttime = _HEADER.unpack_from(data)
    if magic != b"LWWAITS1" or board_pid != pid:
        return None
    if not _alive(pid, starttime, path):
        return None
    waiters = []
    for index in range(min(high, (len(data) - _HEADER.size) // _SLOT.size)):
        offset = _HEADER.size + index * _SLOT.size
        waiter = _slot_waiter(pid, index, _SLOT.unpack_from(data, offset))
        if waiter is not None:
            waiters.append(waiter)
    return waiters


def _alive(pid: int, starttime: int, path: str) -> bool:
    """Whether the board at path is of the live process pid that made it; a stale
    one (its process gone or a zombie, whose locks the kernel has dropped, or the
    pid another's now) is removed if it may be."""
    alive = _running(pid) == starttime
    try:
        owner_ok = alive and os.stat(path).st_uid == os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return False
    if not alive:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return owner_ok


def _running(pid: int) -> int | None:
    """pid's start time (in clock ticks after boot) if it runs, None if it is gone or
    a zombie (dead, not yet reaped: it holds no lock and waits for none)."""
    stat = _read(f"/proc/{pid}/stat")
    try:
        fields = stat.rsplit(b")", 1)[1].split() if stat else []
        return None if not fields or fields[0] in (b"Z", b"X") else int(fields[19])
    except (ValueError, IndexError):
        return None


def _slot_waiter(pid: int, index: int, fields: tuple[int, ...]) -> Waiter | None:
    seq, state, tid, dev, ino, kind, exclusive, start, end, nholds, overflow = fields[:11]
    if state != 1 or seq == 0 or seq != fields[-1] or not 0 <= kind < 3:
        return None
    held = []
    for i in range(min(nholds, 39)):
        hdev, hino, hexclusive, hkind = fields[_SLOT_HOLD + 4 * i:_SLOT_HOLD + 4 * i + 4]
        if 0 <= hkind < 3:
            held.append(Hold(pid, file_key(hdev, hino), _KIND_NAMES[hkind], bool(hexclusive),
                             0, EOF))
    if overflow:  # more than a slot lists: take it to hold whatever its process holds
        held += holds(pid)
    wait = Wait(pid, tid, -1, file_key(dev, ino), _KIND_NAMES[kind], bool(exclusive), start,
                end, _board_path(pid, dev, ino))
    return Waiter(wait, held, ("board", pid, index, seq), fields[-2] / 1e9)


def _board_path(pid: int, dev: int, ino: int) -> str:
    """A name of the file (dev, ino) open in pid, for messages ("?" if none is seen)."""
    directory = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(directory)
    except OSError:
        return "?"
    for fd in fds:
        try:
            st = os.stat(f"{directory}/{fd}")
            if st.st_dev == dev and st.st_ino == ino:
                return os.readlink(f"{directory}/{fd}")
        except OSError:
            continue
    return "?"


# ---- the graph ------------------------------------------------------------------


def waiters(skip: int | None = None) -> list[Waiter]:
    """Every waiting thread there is to see (but those of process skip): from the
    boards, thread by thread with each thread's own holds; from the kernel, for
    processes without a board, with their whole process's holds."""
    boards = board_waiters()
    found = [w for pid, ws in boards.items() if pid != skip for w in ws]
    kernel = [w for w in waits(p for p in _pids() if p not in boards and p != skip)]
    process_holds = {pid: holds(pid) for pid in {w.pid for w in kernel}}
    found += [Waiter(w, process_holds[w.pid], ("kernel", w.pid, w.tid)) for w in kernel]
    return found


def find_cycle(mine: Waiter, others: Sequence[Waiter]) -> list[tuple[Wait, Hold]] | None:
    """The shortest cycle of waits from mine back to it: each waiter waits for a
    hold of the next; a list of (wait, the hold it waits for), mine's first; or None."""
    via: dict[int, tuple[int, Hold]] = {}  # waiter index -> (the waiter before it, the hold)
    frontier = [-1]  # -1: mine
    everyone = list(others)
    while frontier:
        nxt = []
        for index in frontier:
            wait = mine.wait if index < 0 else everyone[index].wait
            hold = next((h for h in mine.holds if conflicts(wait, h)), None) \
                if index >= 0 else None
            if hold is not None:
                return _path(via, mine, everyone, index, hold)
            for other, waiter in enumerate(everyone):
                if other in via or waiter.wait.pid == wait.pid:
                    continue
                hold = next((h for h in waiter.holds if conflicts(wait, h)), None)
                if hold is not None:
                    via[other] = (index, hold)
                    nxt.append(other)
        frontier = nxt
    return None


def _path(via: dict[int, tuple[int, Hold]], mine: Waiter, everyone: Sequence[Waiter],
          last: int, closing: Hold) -> list[tuple[Wait, Hold]]:
    edges = [(everyone[last].wait, closing)]
    index = last
    while index >= 0:
        before, hold = via[index]
        edges.append((mine.wait if before < 0 else everyone[before].wait, hold))
        index = before
    edges.reverse()
    return edges


def check_wait(dev: int, ino: int, exclusive: bool, kind: str, path: str,
               own: Sequence[tuple[int, int, bool, str]]) -> None:
    """Raise LockDeadlock if the calling thread, about to wait (or waiting) for the
    lock of kind and mode on the file (dev, ino) at path, would wait in a cycle;
    own: what the thread holds, as (dev, ino, exclusive, kind) (whole files).

    Called by latchwire._core when a wait begins (after writing it to this
    process's board) and while a wait in the kernel lasts. Its cost: listing the
    boards and reading each, and the syscall file of every thread of every process
    without a board (and their fdinfo, for those that wait)."""
    me = os.getpid()
    mine = Waiter(Wait(me, 0, -1, file_key(dev, ino), kind, exclusive, 0, EOF, path),
                  [Hold(me, file_key(d, i), k, bool(x), 0, EOF) for d, i, x, k in own], ())
    if not mine.holds:
        return  # holding nothing, it closes no cycle
    others = waiters(skip=me)
    if not others:
        return
    cycle = find_cycle(mine, others)
    if cycle is None:
        return
    sources = {id(w.wait): w.source for w in others}
    if not all(_still_there(sources[id(wait)]) for wait, _ in cycle[1:]):
        return
    raise LockDeadlock(describe(cycle), path, tuple(cycle))


def _still_there(source: tuple[object, ...]) -> bool:
    """Whether the wait seen at source is still there, unchanged."""
    if source[0] == "kernel":
        pid, tid = int(source[1]), int(source[2])  # type: ignore[call-overload]
        calls = _SYSCALLS.get(os.uname().machine)
        return calls is not None and _task_wait(pid, tid, calls) is not None
    pid, index, seq = (int(x) for x in source[1:])  # type: ignore[call-overload]
    data = _read_at(f"{BOARD_DIR}/{BOARD_PREFIX}{pid}", _HEADER.size + index * _SLOT.size,
                    _SLOT.size)
    if data is None or len(data) != _SLOT.size:
        return False
    fields = _SLOT.unpack(data)
    return bool(fields[1] == 1 and fields[0] == seq == fields[-1]) and _running(pid) is not None


def _read_at(path: str, offset: int, size: int) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.pread(fd, size, offset)
    except OSError:
        return None
    finally:
        os.close(fd)


def cycles(everyone: Sequence[Waiter]) -> list[list[tuple[Wait, Hold]]]:
    """Every cycle among these waiters, each once (as found from its first waiter)."""
    found: list[list[tuple[Wait, Hold]]] = []
    seen: set[frozenset[tuple[int, int]]] = set()
    for waiter in everyone:
        if not waiter.holds:
            continue
        cycle = find_cycle(waiter, [w for w in everyone if w is not waiter])
        if cycle is None:
            continue
        members = frozenset((wait.pid, wait.tid) for wait, _ in cycle)
        if members not in seen:
            seen.add(members)
            found.append(cycle)
    return found


def describe(cycle: Sequence[tuple[Wait, Hold]], here: bool = True) -> str:
    """A cycle in words: who waits for which lock held by whom, around it; with
    here, its first wait is the calling thread's ("this thread")."""
    me = cycle[0][0].pid if here else -1
    parts = []
    for wait, hold in cycle:
        mode = "exclusive" if wait.exclusive else "shared"
        held_mode = "exclusive" if hold.exclusive else "shared"
        who = "this thread" if here and wait.tid == 0 else _who(wait.pid, wait.tid)
        holder = "this thread" if hold.pid == me else f"pid {hold.pid} ({_command(hold.pid)})"
        parts.append(f"{who} waits for {wait.kind} {mode} on {wait.path}, "
                     f"held {held_mode} by {holder}")
    return "deadlock: " + "; ".join(parts)


def _who(pid: int, tid: int) -> str:
    thread = "" if tid == pid else f" thread {tid}"
    return f"pid {pid}{thread} ({_command(pid)})"


def _command(pid: int) -> str:
    return command(pid)[:80] or "?"
