"""The witness log: who was inside which critical section, and when, and the checker that reads it.

A critical section records a line when it begins (after the lock was granted)
and a line when it ends (before the lock is released), into one log file that
every thread and process of a test appends to. The checker reads the log and
reports every *overlap*: two sections open at once on the same resource, one of
them exclusive. It also keeps an exact *counter* per resource, through a file:
an exclusive section reads the counter at entry and writes the next value back
at exit, so two writers inside at once lose or duplicate a count.

The log (``witness.log`` in the witness directory) is opened ``O_APPEND`` and
each record is one ``write()`` of one short line. On a local filesystem such a
write is atomic and appends are totally ordered (the inode lock serialises
them), and a write that begins after another returned lands after it. So the
order of lines in the file is the order of events, across threads and
processes, with no clock involved: a section's entry line is written after its
acquire returned and its exit line before its release began, so if the lock
excludes, one section's exit line comes before the next one's entry line.
An entry line found between another section's entry and exit lines proves that
both held at the moment it was written. Every record also carries
``time.monotonic_ns()`` (the system-wide monotonic clock) for the reports.

Records, one line each, fields separated by single spaces:

    E WRITER N PROCESS PID TID LOCK MODE RESOURCE LABEL T   section N of WRITER begins
    X WRITER N T SEEN AFTER                                 section N of WRITER ends
    K PROCESS T                                             PROCESS is about to be SIGKILLed
    R PROCESS T                                             PROCESS is dead and reaped
    L PROCESS T WHAT                                        a descriptor of the witness's was
                                                            closed under it in PROCESS

WRITER is one thread of one process (``PROCESS.SERIAL``); PROCESS is a tag the
test gives each process (unique for the run, unlike pids); LOCK is the id() of
the lock object; MODE is ``sh`` or ``ex``; SEEN and AFTER are the counter as
the section found it at entry and as it left it (exclusive: the value it wrote;
shared: what it read again at exit).

**Killed processes.** A process killed with SIGKILL leaves a section open: an
entry and no exit. Its kernel lock lives until the process is dead, which is
somewhere between the ``kill()`` call and the moment ``waitpid()`` returns; a
waiter may be granted the lock (and write its entry line) before the killer's
``waitpid()`` has returned. So the killer writes ``K`` *before* ``kill()``, and
the checker closes the process's open sections there: everything that entered
before the ``K`` line entered while the killed section certainly still held.
Sections the process enters after its ``K`` line (it runs on until the signal
lands) are recorded but not checked. After ``waitpid()`` the killer writes
``R``; no record of the process may follow it.

**The exact counter.** Each resource has a file of fixed-width lines
``VALUE SECTION``. An exclusive section reads the last value at entry and
appends ``SEEN+1`` and its own name at exit (``O_APPEND``: a line is never torn,
so two overlapping writers leave two lines with the same value, or a line
whose value does not follow the one before). The check is exact even with
kills: the values must run 1, 2, 3, ... with no repeat or gap; every exclusive
section that wrote its exit line must appear exactly once; a section cut by a
kill may appear once or not at all (it may have died before or after its
write); nothing else may appear. A shared section reads the counter at entry
and at exit: a change means an exclusive section wrote while it held.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

LOG = "witness.log"
COUNTERS = "counters"
WIDTH = 64  # bytes in one counter line: 12-digit value, a space, the section's name, padding, "\n"
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


def _counter_path(directory: Path, resource: str) -> Path:
    """The counter file of resource (any string) in the witness directory."""
    return directory / COUNTERS / hashlib.sha1(resource.encode()).hexdigest()[:20]


def _token(text: str, what: str) -> str:
    """text, refused if it would not be one field of a record."""
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"{what} {text!r} must be non-empty and without whitespace")
    return text


def last_value(fd: int) -> int:
    """The counter's current value: the last line's, 0 for an empty file, -1 if the
    file is not whole lines (which would itself be a failure the checker reports)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    if size % WIDTH:
        return -1
    return int(os.pread(fd, WIDTH, size - WIDTH)[:12])


class _File:
    """A file of the witness's, by path, whose descriptor is checked before each use.

    The code under test may close a descriptor it does not own (a number it had
    closed already, now reused by the witness). Then the file is opened again and
    ``checked()`` says so, so that the record still gets written and the loss is
    itself recorded (an ``L`` record), instead of the log silently losing a line.
    """

    def __init__(self, path: Path, flags: int) -> None:
        self.path = path
        self.flags = flags
        self._reopen = threading.Lock()
        self.fd, self._key = self._open()

    def _open(self) -> tuple[int, tuple[int, int]]:
        fd = os.open(self.path, self.flags, 0o600)
        st = os.fstat(fd)
        return fd, (st.st_dev, st.st_ino)

    def _ours(self, fd: int) -> bool:
        try:
            st = os.fstat(fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._key

    def checked(self) -> tuple[int, bool]:
        """The descriptor, and whether it had to be opened again (it was not ours any more)."""
        fd = self.fd
        if self._ours(fd):
            return fd, False
        with self._reopen:
            if self.fd == fd:
                self.fd, self._key = self._open()
            return self.fd, True

    def close(self) -> None:
        """Close the descriptor, unless it has become someone else's."""
        if self._ours(self.fd):
            os.close(self.fd)


class Witness:
    """The witness log of one test, as one process writes to it.

    ``Witness(directory, process)`` opens (creating) ``directory/witness.log``;
    process is this process's tag, unique for the run (``"main"`` for the test
    process; a worker gets its own, and a respawned one a new one). Make one in
    every process (after fork too), and one ``writer()`` per thread.
    """

    def __init__(self, directory: str | os.PathLike[str], process: str = "main") -> None:
        self.directory = Path(directory)
        self.process = _token(process, "process tag")
        (self.directory / COUNTERS).mkdir(parents=True, exist_ok=True)
        self._log = _File(self.directory / LOG, _FLAGS)
        self._serial = itertools.count(1)
        self._serial_lock = threading.Lock()

    def writer(self) -> Writer:
        """A new writer: the records of one thread (a writer is not shared between threads)."""
        with self._serial_lock:
            serial = next(self._serial)
        return Writer(self, f"{self.process}.{serial}")

    def write(self, line: str) -> None:
        """Append one record (a whole line) in one write."""
        data = line.encode()
        fd, lost = self._log.checked()
        if lost:
            self.lost("the-log")
        if os.write(fd, data) != len(data):
            raise OSError(f"short write to the witness log: {line!r}")

    def lost(self, what: str) -> None:
        """Record that a descriptor of the witness's (of what: no whitespace) was closed
        under it."""
        fd, _ = self._log.checked()
        os.write(fd, f"L {self.process} {time.monotonic_ns()} {what}\n".encode())

    def killing(self, process: str) -> None:
        """Record that process is about to be SIGKILLed: call it just before kill()."""
        self.write(f"K {_token(process, 'process tag')} {time.monotonic_ns()}\n")

    def reaped(self, process: str) -> None:
        """Record that process is dead: call it after waitpid() returned for it."""
        self.write(f"R {_token(process, 'process tag')} {time.monotonic_ns()}\n")

    def close(self) -> None:
        self._log.close()

    def __enter__(self) -> Witness:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Writer:
    """The records of one thread: ``with writer.section(resource, lock, shared):``."""

    def __init__(self, witness: Witness, name: str) -> None:
        self.witness = witness
        self.name = name
        self.sections = 0

    def section(self, resource: str, lock: object, shared: bool = False,
                label: str = "-") -> Section:
        """A critical section on resource, to be entered right after lock was granted
        and left right before it is released. label (no whitespace) goes into the
        record for the reports, e.g. the lease owner."""
        self.sections += 1
        return Section(self, self.sections, _token(resource, "resource"), id(lock), shared,
                       _token(label, "label"))


class Section:
    """One critical section: an entry record and the counter read on entry, the
    counter step and an exit record on exit (the exit record also when the body or
    the counter step raised)."""

    def __init__(self, writer: Writer, number: int, resource: str, lock_id: int, shared: bool,
                 label: str) -> None:
        self.writer = writer
        self.number = number
        self.resource = resource
        self.lock_id = lock_id
        self.shared = shared
        self.label = label
        self.seen = 0
        self._counter: _File | None = None

    @property
    def name(self) -> str:
        return f"{self.writer.name}#{self.number}"

    def _counter_fd(self) -> int:
        assert self._counter is not None
        fd, lost = self._counter.checked()
        if lost:
            self.writer.witness.lost(f"the-counter-of-{self.resource}")
        return fd

    def __enter__(self) -> Section:
        witness = self.writer.witness
        mode = "sh" if self.shared else "ex"
        witness.write(f"E {self.writer.name} {self.number} {witness.process} {os.getpid()} "
                      f"{threading.get_native_id()} {self.lock_id} {mode} {self.resource} "
                      f"{self.label} {time.monotonic_ns()}\n")
        try:
            self._counter = _File(_counter_path(witness.directory, self.resource),
                                  os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC)
            self.seen = last_value(self._counter_fd())
        except BaseException:
            self.__exit__(None, None, None)  # the entry record is out: so must the exit be
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        after = -1  # the counter step failed
        try:
            if self._counter is None:
                pass
            elif self.shared:
                after = last_value(self._counter_fd())
            else:
                line = f"{self.seen + 1:012d} {self.name}".ljust(WIDTH - 1) + "\n"
                if len(line) != WIDTH:
                    raise ValueError(f"section name too long for a counter line: {self.name}")
                os.write(self._counter_fd(), line.encode())
                after = self.seen + 1
        finally:
            if self._counter is not None:
                self._counter.close()
            self.writer.witness.write(f"X {self.writer.name} {self.number} "
                                      f"{time.monotonic_ns()} {self.seen} {after}\n")


# ---------------------------------------------------------------------------
# The checker


@dataclass
class Entry:
    """A section as the log tells it."""

    name: str  # WRITER#N
    process: str
    pid: int
    tid: int
    lock_id: int
    shared: bool
    resource: str
    label: str
    entered: int  # monotonic ns
    line: int  # of its entry record, 1-based
    exited: int | None = None  # monotonic ns of its exit record
    cut: bool = False  # open when its process was killed
    unchecked: bool = False  # entered after its process's K record
    seen: int = 0
    after: int = 0

    def __str__(self) -> str:
        mode = "shared" if self.shared else "exclusive"
        span = "open" if self.exited is None else f"{(self.exited - self.entered) / 1e3:.1f} us"
        return (f"{self.name} ({mode}, pid {self.pid} tid {self.tid}, lock {self.lock_id:#x}, "
                f"{self.label}, line {self.line}, {span})")


@dataclass
class Overlap:
    """Two sections open at once on one resource, at least one exclusive: ``second``
    entered (log line ``line``) while ``first`` was open."""

    resource: str
    first: Entry
    second: Entry
    line: int

    def __str__(self) -> str:
        gap = (self.second.entered - self.first.entered) / 1e3
        return (f"{self.resource}: {self.second} entered {gap:.1f} us after {self.first} "
                f"had, before it left")


@dataclass
class Report:
    """What the checker found. ``clean`` when there is nothing to report."""

    sections: int = 0  # entered, checked or not
    completed: int = 0  # with an exit record
    cut: int = 0  # open when their process was killed
    cut_counted: int = 0  # of those, how many had written their counter line
    unchecked: int = 0  # entered after their process's K record
    kills: int = 0
    resources: int = 0
    overlaps: list[Overlap] = field(default_factory=list)
    counter_errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # a log that cannot be right

    @property
    def clean(self) -> bool:
        return not (self.overlaps or self.counter_errors or self.problems)

    def summary(self, limit: int = 8) -> str:
        """A few lines: the totals, then up to limit of each kind of finding."""
        lines = [f"{self.sections} sections on {self.resources} resources: "
                 f"{self.completed} completed, {self.cut} cut by {self.kills} kills "
                 f"({self.cut_counted} of those had counted), {self.unchecked} unchecked; "
                 f"{len(self.overlaps)} overlaps, {len(self.counter_errors)} counter mismatches, "
                 f"{len(self.problems)} log problems"]
        for title, items in (("overlap", self.overlaps), ("counter", self.counter_errors),
                             ("log", self.problems)):
            lines += [f"  {title}: {item}" for item in items[:limit]]
            if len(items) > limit:
                lines.append(f"  ... {len(items) - limit} more of {title}")
        return "\n".join(lines)


def check(directory: str | os.PathLike[str]) -> Report:
    """Read the witness log and the counters in directory; every overlap and mismatch."""
    directory = Path(directory)
    report = Report()
    entries: dict[str, Entry] = {}
    open_on: dict[str, dict[str, Entry]] = {}  # resource -> sections open there, by name
    dying: set[str] = set()  # processes with a K record
    dead: set[str] = set()  # processes with an R record
    last_number: dict[str, int] = {}  # writer -> its last section number

    with open(directory / LOG, encoding="ascii") as f:
        lines = f.read().split("\n")
    if lines[-1] != "":
        report.problems.append(f"the log does not end with a whole line: {lines[-1]!r}")
    for lineno, line in enumerate(lines[:-1], 1):
        fields = line.split(" ")
        kind = fields[0]
        if kind == "E" and len(fields) == 11:
            writer, number, process = fields[1], int(fields[2]), fields[3]
            name = f"{writer}#{number}"
            if process in dead:
                report.problems.append(f"line {lineno}: {name} entered after {process} was reaped")
            if number != last_number.get(writer, 0) + 1:
                report.problems.append(f"line {lineno}: {name} follows section "
                                       f"{last_number.get(writer, 0)} of {writer}")
            last_number[writer] = number
            entry = Entry(name, process, int(fields[4]), int(fields[5]), int(fields[6]),
                          fields[7] == "sh", fields[8], fields[9], int(fields[10]), lineno,
                          unchecked=process in dying)
            entries[name] = entry
            if entry.unchecked:
                continue
            here = open_on.setdefault(entry.resource, {})
            for other in here.values():
                if not (entry.shared and other.shared):
                    report.overlaps.append(Overlap(entry.resource, other, entry, lineno))
            here[name] = entry
        elif kind == "X" and len(fields) == 6:
            name = f"{fields[1]}#{fields[2]}"
            entry_or_none = entries.get(name)
            if entry_or_none is None or entry_or_none.exited is not None:
                report.problems.append(f"line {lineno}: exit of {name}, which is not open")
                continue
            entry = entry_or_none
            if entry.process in dead:
                report.problems.append(f"line {lineno}: {name} left after {entry.process} "
                                       "was reaped")
            entry.exited, entry.seen, entry.after = int(fields[3]), int(fields[4]), int(fields[5])
            open_on.get(entry.resource, {}).pop(name, None)
        elif kind == "K" and len(fields) == 3:
            dying.add(fields[1])
            report.kills += 1
            for here in open_on.values():
                for name in [n for n, e in here.items() if e.process == fields[1]]:
                    here.pop(name).cut = True
        elif kind == "L" and len(fields) == 4:
            report.problems.append(f"line {lineno}: in {fields[1]}, {fields[3]} was closed "
                                   "under the witness (a descriptor closed by code that "
                                   "did not own it?)")
        elif kind == "R" and len(fields) == 3:
            if fields[1] not in dying:
                report.problems.append(f"line {lineno}: {fields[1]} reaped without a K record")
            dead.add(fields[1])
        else:
            report.problems.append(f"line {lineno}: malformed record {line!r}")

    for entry in entries.values():
        report.sections += 1
        report.completed += entry.exited is not None
        report.unchecked += entry.unchecked
        if entry.exited is None and not entry.cut and entry.process not in dying:
            report.problems.append(f"{entry} never left, and its process was not killed")
    by_resource: dict[str, list[Entry]] = {}
    for entry in entries.values():
        by_resource.setdefault(entry.resource, []).append(entry)
    report.resources = len(by_resource)
    for resource, sections in by_resource.items():
        _check_counter(directory, resource, sections, report)
    return report


def _check_counter(directory: Path, resource: str, sections: list[Entry], report: Report) -> None:
    """Compare resource's counter file with its sections: see the module docstring."""
    path = _counter_path(directory, resource)
    data = path.read_bytes() if path.exists() else b""
    if len(data) % WIDTH:
        report.counter_errors.append(f"{resource}: counter file of {len(data)} bytes is not "
                                     f"whole {WIDTH}-byte lines")
        return
    exclusive = {e.name: e for e in sections if not e.shared}
    counted: dict[str, int] = {}
    previous = 0
    for i in range(len(data) // WIDTH):
        value_text, _, name = data[i * WIDTH:(i + 1) * WIDTH].decode().rstrip().partition(" ")
        value = int(value_text)
        if value != previous + 1:  # judged against the line before, so one slip counts once
            report.counter_errors.append(
                f"{resource}: line {i + 1} of the counter holds {value} after {previous} "
                f"(written by {name}, which had read {value - 1} on entry)")
        previous = value
        if name in counted:
            report.counter_errors.append(f"{resource}: {name} counted twice")
        counted[name] = value
        entry = exclusive.get(name)
        if entry is None:
            report.counter_errors.append(f"{resource}: {name} counted, but it is not an "
                                         "exclusive section of this resource")
        elif entry.exited is not None and entry.after != value:
            report.counter_errors.append(f"{resource}: {name} wrote {entry.after}, the counter "
                                         f"has {value} for it")
    for entry in exclusive.values():
        if entry.exited is not None and entry.name not in counted:
            report.counter_errors.append(f"{resource}: {entry} completed but is not counted")
        if entry.exited is None and entry.cut:
            report.cut += 1
            report.cut_counted += entry.name in counted
    for entry in sections:
        if entry.shared and entry.exited is not None and entry.seen != entry.after:
            report.counter_errors.append(f"{resource}: the counter went from {entry.seen} to "
                                         f"{entry.after} while {entry} held it shared")
        if entry.shared and entry.exited is None and entry.cut:
            report.cut += 1


class MemoryWitness:
    """In-process witness: entries to and exits from the critical sections of several
    locks, checked for overlaps.

    For the thread locks (Mutex, RWLock): every event is one ``list.append`` with no
    I/O, so the locks' own timing, not the log's, decides the interleavings; the
    file-based ``Witness`` above serves processes and file locks.

    Each thread calls ``enter(lock, mode)`` right after its acquire returned and
    ``exit(lock, mode)`` right before it releases (mode "x", exclusive, or "s", shared),
    ``downgrade(lock)`` right before it turns an exclusive hold into a shared one (which
    it then exits as "s"). Every event is
    one ``list.append`` (atomic), so the log's order is the order in which they happened
    and, if the locks exclude as they promise, ``check()`` replaying it never sees an
    exclusive holder beside anyone else.
    """

    def __init__(self) -> None:
        self.log: list[tuple[int, str, int]] = []

    def enter(self, lock: int, mode: str) -> None:
        self.log.append((lock, "enter " + mode, threading.get_ident()))

    def exit(self, lock: int, mode: str) -> None:
        self.log.append((lock, "exit " + mode, threading.get_ident()))

    def downgrade(self, lock: int) -> None:
        self.log.append((lock, "downgrade", threading.get_ident()))

    def check(self) -> int:
        """Replay the log; fail at the first overlap. How many sections it saw."""
        writer: dict[int, int] = {}
        readers: dict[int, Counter[int]] = {}
        sections = 0
        for n, (lock, event, thread) in enumerate(self.log):
            inside = readers.setdefault(lock, Counter())
            where = f"event {n} of {len(self.log)}: thread {thread} {event} lock {lock}"
            if event == "enter x":
                assert lock not in writer and not inside, \
                    f"{where} while writer {writer.get(lock)} and readers {dict(inside)} hold it"
                writer[lock] = thread
                sections += 1
            elif event == "enter s":
                assert lock not in writer, f"{where} while {writer[lock]} writes"
                inside[thread] += 1
                sections += 1
            elif event == "downgrade":
                assert writer.get(lock) == thread and not inside, \
                    f"{where} while writer {writer.get(lock)} and readers {dict(inside)} hold it"
                del writer[lock]
                inside[thread] += 1
            elif event == "exit x":
                assert writer.get(lock) == thread, f"{where}, held by {writer.get(lock)}"
                del writer[lock]
            else:
                assert inside[thread] > 0, f"{where} without a read hold"
                inside[thread] -= 1
                if not inside[thread]:
                    del inside[thread]
        assert not writer and not any(readers.values()), f"still inside: {writer} {readers}"
        return sections
