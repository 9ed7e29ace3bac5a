# Included by _core.pyx: the deadlock check of waits. The graph and its
# cycles are latchwire.waitgraph's (Python: it reads /proc and the wait
# boards, and runs only when a wait begins, never on an uncontended path);
# this is what a wait tells it and the other processes: the lock it waits
# for and what the waiting thread holds (_waitboard.pxi).
#
# Every wait is written to the board as it begins. A thread that holds no lock
# file closes no cycle, so its waits are not checked; one that holds some is
# checked once its wait is on the board: of two waits closing a cycle at the
# same moment, each is written before it checks, so the later check sees the
# other. A wait in the kernel is checked again
# LW_DEADLOCK_FIRST seconds into it and at doubling intervals up to
# LW_DEADLOCK_LAST, for cycles through processes that do not use latchwire
# (whose waits show in the kernel only, and which check nothing).

cdef double LW_DEADLOCK_FIRST = 0.01
cdef double LW_DEADLOCK_LAST = 1.0

# 1 while waits are written to the board and checked (LATCHWIRE_DEADLOCK=0
# turns both off).
cdef int lw_deadlock_on = _os.environ.get("LATCHWIRE_DEADLOCK", "1") != "0"
cdef object _deadlock_check = None    # what latchwire.locking gave _set_deadlock_check()
cdef object _KIND_NAMES = ("ofd", "posix", "flock")


def _check_deadlocks(bint on):
    """Turn the deadlock check of waits on or off (the tests' switch)."""
    lw_store_i(&lw_deadlock_on, on)


def _set_deadlock_check(check):
    """Make check (latchwire.waitgraph.check_wait's signature) the deadlock check of
    every wait. latchwire.locking sets one that imports latchwire.waitgraph when
    first called: the core imports nothing of the layers above it. The checks set
    are module functions, alive as long as their modules, so a thread that read the
    one being replaced never calls a freed object."""
    global _deadlock_check
    _deadlock_check = check


# What the calling thread holds, for the check: (dev, ino, exclusive, kind) of
# every lock file with a holder taken by this thread or by none (an asyncio
# hold or a lease, which this thread's event loop or owner would let go of),
# twice if a flock(2) lock is held too. Caller: holds the GIL and no record's mu.
cdef list _thread_holds():
    cdef unsigned long me = lw_thread_serial()
    cdef unsigned long generation = lw_load_ul(&lw_fork_generation)
    cdef list out = []
    cdef _LockFile rec
    cdef void *p
    cdef bint mine
    cdef int kmode, fmode
    for ref in list(_by_inode.values()):    # one dict operation: no table mutex needed
        rec = ref()
        if rec is None or rec.generation != generation:
            continue
        mine = False
        lw_lock(&rec.mu)
        p = rec.holders
        while p != NULL and not mine:
            mine = (<FileLock>p).serial == me or (<FileLock>p).serial == 0
            p = (<FileLock>p).hnext
        kmode = rec.kmode
        fmode = rec.fmode
        lw_mutex_unlock(&rec.mu)
        if not mine:
            continue
        if kmode != LW_UNLOCKED:
            out.append((rec.dev, rec.ino, kmode == LW_EXCLUSIVE,
                        "posix" if rec.posix else "ofd"))
        if fmode != LW_UNLOCKED:
            out.append((rec.dev, rec.ino, fmode == LW_EXCLUSIVE, "flock"))
    return out


# A wait of the calling thread for the lock (of kind, LW_KIND_*, and mode) on
# the bytes start..end (inclusive, -1: to the end) of the file (dev, ino)
# begins: write it to the board (slot[0]: its slot, -1 if the board had no
# room or there is none) and, if check (a lock file's wait, not a fair
# queue's), check it. 1 if it is checked and the thread holds a lock file (the
# wait should be re-checked while it lasts), else 0; raises LockDeadlock
# (nothing left on the board) if it would close a cycle. Caller: holds the GIL
# and no record's mu; _board_wipe(slot[0]) when the wait ends.
cdef int _watch_begin(dev_t dev, ino_t ino, off_t start, off_t end, int kind,
                      bint exclusive, bint check, FileLock h, int *slot) except -1:
    cdef list holds
    slot[0] = -1
    if not lw_load_i(&lw_deadlock_on):
        return 0
    holds = _thread_holds()
    slot[0] = _board_write(dev, ino, start, end, kind, exclusive, holds)
    if not holds or not check:
        return 0
    try:
        _watch_check(dev, ino, kind, exclusive, h, holds)
    except BaseException:
        _board_wipe(slot[0])
        slot[0] = -1
        raise
    return 1


# Raise LockDeadlock if the wait would close a cycle (holds: what the thread
# holds, or None to read it again), as the check set says (none: nothing is
# checked). Caller: as _watch_begin's.
cdef int _watch_check(dev_t dev, ino_t ino, int kind, bint exclusive, FileLock h,
                      list holds) except -1:
    cdef object check = _deadlock_check
    if check is None:
        return 0
    if holds is None:
        holds = _thread_holds()
    check(dev, ino, exclusive, _KIND_NAMES[kind], h.lockfile, holds)
    return 0


# The kind of rec's kernel lock (LW_KIND_*); with use_flock, its flock(2) lock.
cdef inline int _lock_kind(_LockFile rec, bint use_flock) noexcept:
    if use_flock:
        return LW_KIND_FLOCK
    return LW_KIND_POSIX if rec.posix else LW_KIND_OFD
