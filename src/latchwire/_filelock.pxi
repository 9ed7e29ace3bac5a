# Included by _core.pyx: FileLock, the face of the per-process lock file
# records (_lockfile.pxi).
#
# A FileLock names a lock file by path. It keeps the record of the inode that
# path last led to (rec, guarded by hmu: another thread may cancel() or read
# it), and finds the file again when that record turns out dead or the path
# no longer names its inode. Its hold (hold, lost, the holders' links, the
# site, the checker's entry) is part of the record's state: it changes under
# the record's mu.

cdef object _release_callback = None     # set once, before any FileLock asks for it


def _set_release_callback(callback):
    """The function told of the hold changes of FileLocks that asked with
    _tell_releases() (called with the FileLock; what it raises is reported as
    unraisable, never by the release). Set once by latchwire's asyncio face."""
    global _release_callback
    _release_callback = callback


# Tell the callback that lock's hold ended or was downgraded, or that lock was
# cancelled. Caller: holds the GIL and no record's mu.
cdef void _tell_hold_changed(FileLock lock) noexcept:
    cdef object callback = _release_callback
    if callback is not None:
        callback(lock)


@cython.auto_pickle(False)
cdef class FileLock:
    """An exclusive or shared lock on one long-lived lock file.

    ``FileLock(path)`` locks ``.NAME.~lock~`` beside ``path`` (the Open vSwitch
    convention; ``path`` itself is never opened); ``FileLock(path,
    lockfile=other)`` locks ``other`` directly. The lock file is opened with
    ``O_NOFOLLOW`` (a symbolic link there is refused), created with
    ``create_mode`` if missing (with ``create=False``, acquire() raises
    FileNotFoundError instead), and kept open between acquisitions. A lock
    file this process may only read is opened read-only: shared locks work
    through it, exclusive ones raise PermissionError.

    OFD locks do not conflict with ``flock(2)`` locks (``flock(1)``, Python's
    filelock and portalocker use those). With ``flock=True`` a hold also takes a
    ``flock(2)`` lock of the same mode, after the OFD lock (released before it),
    so such tools are kept out too. flock(2) converts by letting go and taking
    again: ``downgrade()`` keeps the flock(2) lock exclusive until the release,
    and ``upgrade()`` converts it after the OFD lock, so a failed upgrade may
    leave the hold without its shared flock(2) lock if another process took the
    file meanwhile. A shared request joining this process's holders that took
    no flock(2) lock waits for them to leave if the flock(2) lock is not free.

    A hold belongs to this object, not to a thread: any thread may release it.
    Acquiring an object that already holds raises RuntimeError at once (it is
    not reentrant), as does a blocking acquisition that would wait for a hold
    the same thread has through another object. All objects whose paths lead
    to one file (hard links included) share one record in a process: a hold
    through one excludes the others (shared holds coexist), and closing or
    collecting any of them never drops a lock that is held. A held FileLock
    is kept alive until released.

    Kernel open-file-description locks are used (classic POSIX locks on kernels
    without them, or with LATCHWIRE_LOCKS=posix). A grant from the kernel is
    kept only if the path still names the inode locked: the path is walked
    (``lstat``) unless the record's inotify watch of the file and its
    directories vouches, with one FIONREAD, that nothing moved since the last
    walk (the watch is set up at the record's second grant and vouches from
    the third). A lock found on an unlinked, replaced or moved file is dropped
    and taken again on the file now at the path. ``verify()`` walks the path;
    if the file is gone it drops the hold as *lost*: ``locked`` turns False,
    ``lost`` True, and ``release()`` (or leaving a ``with`` block) then
    succeeds quietly.

    The kernel serves waiters in no particular order and grants shared locks
    while another process waits for an exclusive one. With ``fair=True``
    waiters are served in arrival order, across threads and processes: each
    takes a ticket in a queue file beside the lock file (``queuefile``,
    ``LOCKFILE.~queue~``, created with ``create_mode``) and waits in the kernel
    for those ahead of it; adjacent shared requests are granted together, and
    a waiting exclusive one keeps later shared ones out. The queue orders and
    never excludes: users of the file that do not queue (unfair FileLocks,
    ``lockf``) exclude fair ones as always but may overtake them; among
    themselves fair users are served in order. ``upgrade()`` converts in
    place, never queued. A fair lock's ``remove()`` also removes the queue
    file, unless waiters are queued in it. A wait that would close a cycle of
    processes raises LockDeadlock (see acquire()). The record's descriptor is closed when
    the last FileLock referring to it goes, which drops any classic POSIX lock
    (fcntl.lockf) this process holds on the file.
    """
    cdef readonly str path
    cdef readonly str lockfile
    cdef bytes bpath
    cdef lw_mutex hmu
    cdef _LockFile rec                # (hmu) the record of the inode lockfile led to, or None
    cdef bint create
    cdef int create_mode
    cdef readonly bint flock          # also take a flock(2) lock of the same mode
    cdef readonly bint fair           # wait in the fair queue (_fairqueue.pxi)
    cdef bytes qpath                  # the queue file, for fair
    cdef lw_fwait *qwaits             # (hmu) this object's waits in its queue, linked
    cdef int hold                     # (rec.mu) LW_SHARED or LW_EXCLUSIVE while holding; set
                                      # by a compare-and-swap from 0, so that two threads
                                      # acquiring one object through two records (its path
                                      # moved meanwhile) cannot both hold
    cdef bint lost                    # (rec.mu) the last hold ended with the file gone
    cdef unsigned int grants          # (rec.mu) holds granted so far
    cdef void *hnext                  # (rec.mu) the record's other holders
    cdef void *hprev
    cdef unsigned long thread         # (rec.mu) the acquiring thread's ident, 0 if detached
    cdef unsigned long serial         # (rec.mu) its lw_thread_serial(), 0 if detached
    cdef object site_code             # (rec.mu) where the hold was taken
    cdef int site_lasti
    cdef unsigned int cancel_gen      # atomic: cancel() calls so far
    cdef int tell_releases            # atomic: 1 once _tell_releases() asked for the callback
    cdef readonly object lockclass    # the lock-order checker's class
    cdef int ld_cls
    cdef list ld_stack                # (rec.mu) the held list the checker put the hold on

    def __init__(self, path, lockfile=None, *, bint create=True, int create_mode=0o600,
                 bint flock=False, bint fair=False):
        path = _lock_path(path, "path")
        if not 0 <= create_mode <= 0o777:
            raise ValueError(f"create_mode {create_mode:#o} is not a set of permission bits "
                             "(0 to 0o777)")
        path = _os.path.realpath(path)
        if lockfile is None:
            head, tail = _os.path.split(path)
            lockfile = _os.path.join(head, f".{tail}.~lock~")
        else:
            head, tail = _os.path.split(_os.path.abspath(_lock_path(lockfile, "lockfile")))
            if not tail:
                raise ValueError(f"lockfile {lockfile!r} names a directory")
            lockfile = _os.path.join(_os.path.realpath(head), tail)
        self._setup(path, lockfile, create, create_mode, lockfile, fair)
        self.flock = flock

    @classmethod
    def _canonical(cls, str lockfile, bint create=True, lockclass=None, bint fair=False):
        """A FileLock on lockfile itself, a path already canonical (as a LockSpace
        makes them): FileLock(lockfile, lockfile=lockfile, fair=fair) without its
        realpath calls; lockclass is its checker class (default: lockfile)."""
        cdef FileLock lock = cls.__new__(cls)
        lock._setup(lockfile, lockfile, create, 0o600,
                    lockfile if lockclass is None else lockclass, fair)
        return lock

    cdef void _setup(self, str path, str lockfile, bint create, int create_mode,
                     object lockclass, bint fair):
        self.path = path
        self.lockfile = lockfile
        self.bpath = _os.fsencode(lockfile)
        self.fair = fair
        if fair:
            self.qpath = self.bpath + LW_QUEUE_SUFFIX
        self.create = create
        self.create_mode = create_mode
        self.lockclass = lockclass
        self.ld_cls = -1
        self.rec = _table_get(_by_path, lockfile)

    cdef int _checker_class(self) except -1:
        if self.ld_cls < 0:
            self.ld_cls = _ld_class(self.lockclass)
        return self.ld_cls

    def __repr__(self):
        state = self.mode or ("lost" if self.lost else "unlocked")
        return f"<latchwire.FileLock {self.lockfile!r} {state}>"

    # ---- the record ------------------------------------------------------

    cdef inline _LockFile _rec(self):
        cdef _LockFile rec
        lw_lock(&self.hmu)
        rec = self.rec
        lw_mutex_unlock(&self.hmu)
        return rec

    cdef void _set_rec(self, _LockFile rec) noexcept:
        cdef _LockFile old
        lw_lock(&self.hmu)
        old = self.rec
        self.rec = rec
        lw_mutex_unlock(&self.hmu)
        # (old's last reference may go here, outside hmu)

    # The record to acquire through: the one kept if it is alive, else the
    # one the path leads to now (opening the file if this process has not).
    cdef _LockFile _record(self, bint for_shared):
        cdef _LockFile rec = self._rec()
        if rec is not None:
            if rec.generation == lw_load_ul(&lw_fork_generation):
                if not lw_load_i(&rec.dead):
                    return rec
            else:
                lw_store_i(&self.hold, LW_UNLOCKED)     # what it held is the parent's
        rec = _table_get(_by_path, self.lockfile)
        if rec is None:
            rec = _record_open(self.lockfile, self.bpath, self.create, self.create_mode,
                               for_shared)
        self._set_rec(rec)
        return rec

    # The record this object holds through in this process, or RuntimeError.
    cdef _LockFile _held(self):
        cdef _LockFile rec = self._rec()
        if rec is not None and rec.generation != lw_load_ul(&lw_fork_generation) \
                and lw_load_i(&self.hold):
            raise RuntimeError(f"{self.lockfile}: this lock was inherited across fork(); "
                               "it belongs to the parent process")
        if rec is None or not self.locked:
            raise RuntimeError(f"{self.lockfile} is not held by this FileLock")
        return rec

    # ---- acquiring -------------------------------------------------------

    cdef int _acquire(self, int mode, bint blocking, double deadline, bint detached,
                      unsigned int cgen) except -1:
        cdef _LockFile rec
        cdef int out, lasti = 0
        cdef unsigned int grant = 0
        if lw_lockdep and blocking:
            _ld_check(self, self._checker_class(), mode == LW_SHARED, False)
        code = _caller_code(&lasti)
        if self.fair:
            rec = self._take_fair(mode, blocking, deadline, detached, cgen, code, lasti, &grant)
        else:
            rec = self._take(mode, blocking, deadline, detached, cgen, code, lasti, &grant,
                             False)
        if lw_lockdep and not detached:
            self._checker_push(rec, grant, code, lasti)
        return 0

    # Take the hold through the record the path leads to, and again through the
    # next one after each move: that record (*grant as _LockFile._acquire's), or
    # with busy_ok None if the lock is busy; raises otherwise.
    cdef _LockFile _take(self, int mode, bint blocking, double deadline, bint detached,
                         unsigned int cgen, object code, int lasti, unsigned int *grant,
                         bint busy_ok):
        cdef _LockFile rec
        cdef int out
        while True:
            rec = self._record(mode == LW_SHARED)
            out = rec._acquire(self, mode, blocking, deadline, detached, cgen, code, lasti,
                               grant)
            if out == LW_GRANTED:
                return rec
            if busy_ok and (out == LW_BUSY_HERE or out == LW_BUSY_KERNEL):
                return None
            if out != LW_MOVED and out != LW_DEAD:
                raise self._failure(out, rec)
            _table_forget(self.lockfile, rec)     # the path leads elsewhere now
            self._set_rec(None)
            lw_perturb()

    # _take through the fair queue: with a ticket, in turn (blocking), or at
    # once if nobody is queued ahead and the lock is free. The ticket is taken
    # first, even when nobody waits, so that an arrival is seen by every later
    # one as early as possible; it is kept until the lock file's lock is
    # granted (across moves of the file), and given back whatever happens.
    cdef _LockFile _take_fair(self, int mode, bint blocking, double deadline, bint detached,
                              unsigned int cgen, object code, int lasti, unsigned int *grant):
        cdef lw_fqueue q
        cdef const char *qpath = self.qpath
        cdef int err, busy = 0, create_mode = self.create_mode
        cdef bint for_shared = mode == LW_SHARED
        cdef struct_stat st
        q.fd = q.slot = -1
        q.ticket = 0
        if not self.create and lstat(self.bpath, &st) != 0:
            raise _oserror(errno, self.lockfile)    # the queue would outlive a missing file
        if blocking and for_shared and self._reads_here():
            # It reads already: queueing behind a writer would deadlock.
            return self._take(mode, True, deadline, detached, cgen, code, lasti, grant, False)
        with nogil:
            err = lw_fq_open(&q, qpath, create_mode, for_shared)
        if err:
            raise self._queue_error(err)
        try:
            if not blocking:
                err = lw_fq_busy(&q, mode, &busy)
                if err:
                    raise self._queue_error(err)
                if busy:
                    raise LockBusy("waiters are queued for the lock", self.lockfile)
            else:
                self._queue(&q, mode, deadline, cgen)
            return self._take(mode, blocking, deadline, detached, cgen, code, lasti, grant,
                              False)
        finally:
            lw_fq_close(&q)

    cdef object _queue_error(self, int err):
        if err == ELOOP:
            return OSError(ELOOP, "refusing to queue through a symbolic link",
                           _os.fsdecode(self.qpath))
        if err == EINVAL:
            return OSError(EINVAL, "the queue file is not a regular file (or this kernel has "
                           "no OFD locks)", _os.fsdecode(self.qpath))
        return _oserror(err, _os.fsdecode(self.qpath))

    # Whether the calling thread holds this object's file shared through
    # another FileLock.
    cdef bint _reads_here(self) noexcept:
        cdef _LockFile rec = self._rec()
        cdef bint reads
        if rec is None or rec.generation != lw_load_ul(&lw_fork_generation):
            return False
        lw_lock(&rec.mu)
        reads = rec.kmode == LW_SHARED and rec._held_by_this_thread(self)
        lw_mutex_unlock(&rec.mu)
        return reads

    # Take a ticket in q for mode and wait for its turn: every waiter ahead
    # has moved on (for a shared request, every exclusive one). Returns with
    # q.ticket held, or raises LockTimeout, LockCancelled or OSError (q is the
    # caller's to close).
    cdef int _queue(self, lw_fqueue *q, int mode, double deadline,
                    unsigned int cgen) except -1:
        cdef short ltype = F_WRLCK if mode == LW_EXCLUSIVE else F_RDLCK
        cdef const char *qpath = self.qpath
        cdef int err, out, same = 0, create_mode = self.create_mode
        cdef bint for_shared = mode == LW_SHARED
        cdef off_t t
        cdef flock conflict
        while True:
            t = lw_fq_clock()
            err = lw_fq_take(q, mode, t, &conflict)
            if err == EAGAIN and conflict.l_start == 0:
                # remove() is unlinking the queue: wait for it, then open it again.
                out = self._queue_wait(q, F_RDLCK, 0, 1, deadline, cgen)
                if out != LW_GRANTED:
                    raise self._failure(out, None)
            elif err == EAGAIN and (conflict.l_len == 0 or
                                    conflict.l_start + conflict.l_len > t + LW_FQ_AHEAD):
                # A lock over tickets not given out yet is no waiter's: wait for
                # it to go rather than try again and again.
                out = self._queue_wait(q, ltype, t, 1, deadline, cgen)
                if out != LW_GRANTED:
                    raise self._failure(out, None)
                q.ticket = t
            elif err == EAGAIN:
                continue            # a ticket of the same instant: take the next one
            elif err:
                raise self._queue_error(err)
            if q.ticket:
                err = lw_path_names(qpath, q.dev, q.ino, &same)
                if err:
                    raise self._queue_error(err)
                if same:
                    break
            # The queue file was removed or replaced: join the one at the path.
            with nogil:
                lw_fq_close(q)
                err = lw_fq_open(q, qpath, create_mode, for_shared)
            if err:
                raise self._queue_error(err)
        err = lw_setlk_range(q.fd, F_OFD_SETLK, ltype, 1, q.ticket - 1)
        if err == EAGAIN:
            out = self._queue_wait(q, ltype, 1, q.ticket - 1, deadline, cgen)
            if out != LW_GRANTED:
                raise self._failure(out, None)
        elif err:
            raise self._queue_error(err)
        lw_setlk_range(q.fd, F_OFD_SETLK, F_UNLCK, 1, q.ticket - 1)
        return 0

    # Wait in the kernel for a lock of ltype on bytes [start, start + length)
    # of q's queue file: as lw_kernel_wait; cancel() finds it on qwaits.
    cdef int _queue_wait(self, lw_fqueue *q, short ltype, off_t start, off_t length,
                         double deadline, unsigned int cgen) except LW_FAILED:
        cdef lw_fwait w
        cdef lw_kreq req
        memset(&w, 0, sizeof(w))
        memset(&req, 0, sizeof(req))
        w.lock = <void *>self
        req.fd = q.fd
        req.cmd = F_OFD_SETLKW
        req.type = ltype
        req.start = start
        req.len = length
        req.kind = LW_KIND_OFD
        req.exclusive = ltype == F_WRLCK
        req.dev = q.dev
        req.ino = q.ino
        lw_lock(&self.hmu)
        w.next = self.qwaits
        if w.next != NULL:
            w.next.prev = &w
        self.qwaits = &w
        lw_mutex_unlock(&self.hmu)
        try:
            return lw_kernel_wait(&self.hmu, &w, &req, self, deadline, cgen)
        finally:
            lw_lock(&self.hmu)
            if w.prev != NULL:
                w.prev.next = w.next
            else:
                self.qwaits = w.next
            if w.next != NULL:
                w.next.prev = w.prev
            lw_mutex_unlock(&self.hmu)

    # Put the hold numbered grant on the calling thread's held list, unless it
    # was released meanwhile (by another thread).
    cdef int _checker_push(self, _LockFile rec, unsigned int grant, object code,
                           int lasti) except -1:
        cdef list stack = _ld_push(self, self._checker_class(), False, code, lasti)
        cdef bint kept = False
        lw_lock(&rec.mu)
        if self.hold and self.grants == grant and self.ld_stack is None:
            self.ld_stack = stack           # replaces None: frees nothing
            kept = True
        lw_mutex_unlock(&rec.mu)
        if not kept:
            _ld_pop(stack, self, False)
        return 0

    cdef object _failure(self, int out, _LockFile rec):
        if out == LW_BUSY_HERE:
            return LockBusy("lock is held in this process", self.lockfile)
        if out == LW_BUSY_KERNEL:
            return LockBusy("lock is held by another process", self.lockfile)
        if out == LW_TIMED_OUT:
            return LockTimeout("timed out waiting for the lock", self.lockfile)
        if out == LW_CANCELLED:
            return LockCancelled("lock wait cancelled", self.lockfile)
        if out == LW_HELD_HERE:
            return RuntimeError(f"{self.lockfile} is already held by this FileLock (taken at "
                                f"{self.site}); FileLock is not reentrant")
        if out == LW_SELF_DEADLOCK:
            return RuntimeError(f"{self.lockfile} is held by this thread through another "
                                f"FileLock (taken at {rec._site_of_this_thread(self)}); "
                                "waiting for it would deadlock")
        if out == LW_READ_ONLY:
            return PermissionError(EACCES, "the lock file is open read-only (this process may "
                                   "not write it): only shared locks can be taken",
                                   self.lockfile)
        if out == LW_UPGRADING:
            return RuntimeError(f"{self.lockfile}: this FileLock is upgrading in another "
                                "thread; cancel() that wait first")
        if out == LW_NOT_HELD:
            return RuntimeError(f"{self.lockfile} is not held by this FileLock")
        return _oserror(out, self.lockfile)

    def acquire(self, bint blocking=True, timeout=None, bint shared=False):
        """Take the lock (exclusive unless ``shared``); return True.

        ``timeout=None`` waits in the kernel as long as it takes; a number of
        seconds raises LockTimeout after that long. ``blocking=False`` raises
        LockBusy at once if the lock is held elsewhere. Another thread's
        ``cancel()`` makes a waiting call raise LockCancelled. A wait that
        would close a cycle of processes, each waiting for a lock the next
        holds, raises LockDeadlock (nothing taken) instead of sleeping in it.
        """
        self._acquire(LW_SHARED if shared else LW_EXCLUSIVE, blocking,
                      -1 if timeout is None else lw_deadline(timeout, blocking), False,
                      lw_load_u(&self.cancel_gen))
        return True

    def _acquire_detached(self, bint blocking=True, timeout=None, bint shared=False,
                          cancel_generation=None):
        """acquire() for a hold that belongs to no thread (asyncio's, a lockspace's).

        With ``cancel_generation`` (a value of ``cancel_generation`` read
        earlier), any cancel() since that read cancels this call too.
        """
        self._acquire(LW_SHARED if shared else LW_EXCLUSIVE, blocking,
                      lw_deadline(timeout, blocking), True,
                      lw_load_u(&self.cancel_gen) if cancel_generation is None
                      else cancel_generation)
        return True

    @property
    def cancel_generation(self):
        """How many times cancel() was called: see ``_acquire_detached``."""
        return lw_load_u(&self.cancel_gen)

    def shared(self, timeout=None):
        """``with lock.shared(timeout=None):`` holds the lock shared for the block."""
        return _SharedHold(self, timeout)

    # ---- releasing -------------------------------------------------------

    # Release this object's hold (lost: as lost, verify()'s). A lost lock's
    # release succeeds quietly once; anything else not held is RuntimeError.
    cdef int _release_hold(self, bint lost) except -1:
        cdef _LockFile rec = self._rec()
        cdef void *stack = NULL
        cdef int out
        if rec is None or rec.generation != lw_load_ul(&lw_fork_generation):
            out = LW_NOT_HELD if rec is None or not lw_load_i(&self.hold) else LW_FAILED
        else:
            out = rec._release(self, lost, &stack)
        if out == LW_GRANTED:
            self._released(stack)
            return 0
        if out == LW_NOT_HELD and self.lost:
            self.lost = False
            return 0
        if out == LW_FAILED:
            self._held()        # raises: inherited across fork()
        raise self._failure(out, rec)

    # After the record let go of this object's hold: take its entry off the
    # checker's held list stack (a reference, or NULL), and drop the reference
    # the holders' list had.
    cdef void _released(self, void *stack) noexcept:
        if stack != NULL:
            _ld_pop(<list>stack, self, False)
            Py_DECREF(<list>stack)
        if lw_load_i(&self.tell_releases):
            _tell_hold_changed(self)
        Py_DECREF(self)

    def _tell_releases(self):
        """From now on, each end of this object's hold (a release, verify()
        finding it lost, remove(), handover()), each downgrade() and each
        cancel() calls the callback set with _set_release_callback, in the
        thread that did it, after the record changed (the asyncio face hands
        the lock on so, and ends queued waits that cancel() cancels)."""
        lw_store_i(&self.tell_releases, 1)

    def release(self):
        """Release this object's hold. RuntimeError if it holds nothing here
        (but a lost lock, see verify(), is released quietly)."""
        self._release_hold(False)

    def __enter__(self):
        self._acquire(LW_EXCLUSIVE, True, -1, False, lw_load_u(&self.cancel_gen))
        return self

    def __exit__(self, exc_type, exc, tb):
        self._release_hold(False)

    # ---- changing a hold -------------------------------------------------

    def upgrade(self, bint blocking=True, timeout=None):
        """Turn a shared hold into an exclusive one, atomically.

        The shared lock is kept while waiting and if the upgrade fails
        (LockBusy, LockTimeout, LockCancelled, LockDeadlock: two processes
        upgrading the same file wait for each other). RuntimeError if another object
        in this process is already upgrading the same file.
        """
        cdef double deadline = lw_deadline(timeout, blocking)
        cdef _LockFile rec = self._held()
        cdef int out
        if self.hold != LW_SHARED:
            raise RuntimeError(f"{self.lockfile}: upgrade() needs a shared hold")
        if rec.rdonly:
            raise self._failure(LW_READ_ONLY, rec)
        out = rec._upgrade(self, blocking, deadline)
        if out == LW_BUSY_HERE:
            raise LockBusy("lock is shared with other holders in this process", self.lockfile)
        if out == LW_BUSY_KERNEL:
            raise LockBusy("lock is shared with another process", self.lockfile)
        if out == LW_UPGRADING:
            raise RuntimeError(f"{self.lockfile}: another FileLock in this process is already "
                               "upgrading; two upgrades would wait for each other forever")
        if out != LW_GRANTED:
            raise self._failure(out, rec)

    def downgrade(self):
        """Turn an exclusive hold into a shared one, atomically; never waits."""
        cdef _LockFile rec = self._held()
        cdef int out
        if self.hold != LW_EXCLUSIVE:
            raise RuntimeError(f"{self.lockfile}: downgrade() needs an exclusive hold")
        out = rec._downgrade(self)
        if out:
            raise self._failure(out, rec)
        if lw_load_i(&self.tell_releases):
            _tell_hold_changed(self)

    def verify(self):
        """True if the lock is held and the lock file's path still names it.

        False if it is not held, or if the file was unlinked or replaced since:
        then the hold is dropped as lost (``locked`` turns False, ``lost``
        True; a release() then succeeds quietly) and the next acquire takes
        the file now at the path.
        """
        cdef _LockFile rec = self._rec()
        cdef void *stack = NULL
        cdef int out
        if rec is None or not self.locked:
            return False
        if rec._at_path(self):
            return True
        out = rec._lose(self, &stack)
        _table_forget(self.lockfile, rec)
        if out == LW_GRANTED:
            self._released(stack)
        elif out != LW_NOT_HELD:
            raise self._failure(out, rec)
        return False

    @property
    def lost(self):
        """True once verify() found the file gone and dropped the hold, until
        the next acquire or release."""
        return bool(self.lost)

    def remove(self):
        """Unlink the lock file while holding it exclusively, then release.

        Processes granted the old file afterwards notice and retry on a new one.
        """
        cdef _LockFile rec = self._held()
        cdef void *stack = NULL
        cdef int out
        cdef const char *qpath
        if self.hold != LW_EXCLUSIVE:
            raise RuntimeError(f"{self.lockfile}: remove() needs an exclusive hold")
        if self.fair:
            qpath = self.qpath
            with nogil:
                lw_fq_remove(qpath)     # unless waiters are queued in it
        out = rec._remove(self, &stack)
        _table_forget(self.lockfile, rec)
        if out != LW_GRANTED:
            raise self._failure(out, rec)
        self._released(stack)

    def handover(self):
        """Hand the lock to a successor process: return a descriptor that holds it.

        The kernel lock belongs to the open file description, which the returned
        descriptor (close-on-exec; the caller owns it) keeps alive: pass it to a
        child (``pass_fds``, SCM_RIGHTS) or across ``exec``, where ``adopt()``
        takes it back. Every hold on this lock file in this process ends, but
        the lock is never released in between: it is released only when the
        last descriptor of that description is closed. OFD locks only.
        """
        cdef _LockFile rec = self._held()
        cdef list dropped = []
        cdef FileLock h
        cdef int fd = rec._handover(dropped)
        _table_forget(self.lockfile, rec)
        for h in dropped:           # the record is dead: nothing changes their holds now
            stack, h.ld_stack = h.ld_stack, None
            if stack is not None:
                Py_INCREF(stack)
            h._released(<void *>stack if stack is not None else NULL)
        return fd

    def adopt(self, int fd, bint shared=False):
        """Hold the lock through ``fd``, a descriptor from ``handover()``.

        This object takes ownership of fd (it is set close-on-exec). ValueError
        if fd is not this lock file; RuntimeError if the file is already held in
        this process. The hold belongs to no thread.
        """
        if self.locked:
            raise RuntimeError(f"{self.lockfile} is already held by this FileLock")
        self._set_rec(_record_adopt(self, fd, LW_SHARED if shared else LW_EXCLUSIVE))

    def cancel(self):
        """Make every acquire (or upgrade) of this object now waiting raise LockCancelled.

        Safe from any thread; waits that start after the call are unaffected.
        """
        cdef _LockFile rec
        cdef lw_fwait *w
        lw_inc_u(&self.cancel_gen)
        lw_lock(&self.hmu)
        w = self.qwaits
        while w != NULL:
            lw_kernel_wait_kick(w)
            w = w.next
        lw_mutex_unlock(&self.hmu)
        rec = self._rec()
        if rec is not None and rec.generation == lw_load_ul(&lw_fork_generation):
            rec._cancel(self)
        if lw_load_i(&self.tell_releases):
            _tell_hold_changed(self)    # an asyncio wait queued in a loop ends too

    # ---- state -----------------------------------------------------------

    @property
    def locked(self):
        """Whether this object holds the lock (in either mode) in this process."""
        cdef _LockFile rec
        if not lw_load_i(&self.hold):
            return False
        rec = self._rec()
        return rec is not None and rec.generation == lw_load_ul(&lw_fork_generation)

    @property
    def mode(self):
        """``"shared"``, ``"exclusive"`` or None."""
        cdef int hold = lw_load_i(&self.hold)
        return _MODE_NAMES[hold] if hold and self.locked else None

    @property
    def owner_thread(self):
        """The ident of the thread that acquired the hold (None if unheld or asyncio's)."""
        cdef unsigned long thread = lw_load_ul(&self.thread)
        return thread if thread and self.locked else None

    @property
    def site(self):
        """``file:line`` where the hold was taken, or None."""
        cdef _LockFile rec = self._rec()
        cdef object code
        cdef int lasti
        if rec is None or not self.locked:
            return None
        lw_lock(&rec.mu)
        code = self.site_code
        lasti = self.site_lasti
        lw_mutex_unlock(&rec.mu)
        return _format_site(code, lasti)

    @property
    def queuefile(self):
        """The fair queue's file (``LOCKFILE.~queue~``), or None for an unfair lock."""
        return _os.fsdecode(self.qpath) if self.fair else None

    @property
    def lock_kind(self):
        """``"ofd"`` or ``"posix"``: the kernel locks this file's record uses."""
        cdef _LockFile rec = self._rec()
        if rec is None:
            return "ofd" if lw_load_i(&lw_use_ofd) else "posix"
        return rec.lock_kind


# A path argument as a str, refused if empty or holding a NUL (the kernel
# would see a shorter name), with what in the message.
cdef str _lock_path(object value, str what):
    cdef str path = _os.fsdecode(_os.fspath(value))
    if not path:
        raise ValueError(f"{what} must not be empty")
    if "\0" in path:
        raise ValueError(f"{what} {path!r} contains a NUL character")
    return path


# The record of a lock handed over as fd (see FileLock.handover), taking fd,
# with h granted the hold in mode. A record of the same inode here, not held,
# is retired. Raises RuntimeError if one is held here, ValueError if fd is
# not the file h's path names, OSError otherwise.
cdef _LockFile _record_adopt(FileLock h, int fd, int mode):
    cdef struct_stat st
    cdef int same = 0, err, flags, lasti = 0
    cdef _LockFile old, rec
    cdef void *old_site
    if not lw_load_i(&lw_use_ofd):
        raise OSError(EINVAL, "classic POSIX locks cannot be adopted", h.lockfile)
    if fstat(fd, &st) != 0:
        raise _oserror(errno, h.lockfile)
    old = _table_get(_by_inode, (st.st_dev, st.st_ino))
    if old is not None and old._retire():
        raise RuntimeError(f"{h.lockfile} is already held in this process")
    err = lw_path_names(h.bpath, st.st_dev, st.st_ino, &same)
    if err:
        raise _oserror(err, h.lockfile)
    if not same:
        raise ValueError(f"descriptor {fd} is not the lock file {h.lockfile}")
    flags = c_fcntl(fd, F_GETFL)
    if flags < 0 or c_fcntl(fd, F_SETFD, FD_CLOEXEC) != 0:
        raise _oserror(errno, h.lockfile)
    rec = _LockFile.__new__(_LockFile, h.lockfile, fd, st.st_dev, st.st_ino,
                            (flags & O_ACCMODE) == O_RDONLY)
    code = _caller_code(&lasti)
    lw_lock(&rec.mu)
    rec.kmode = mode
    if h.flock:                 # the description handed over holds that too
        rec.fmode = mode
    old_site = rec._add_holder(h, mode, True, code, lasti)
    lw_mutex_unlock(&rec.mu)
    if old_site == NULL:
        rec.fd = -1             # not taken: the descriptor stays the caller's
        raise RuntimeError(f"{h.lockfile} is already held by this FileLock")
    Py_DECREF(<object>old_site)
    lw_lock(&lw_table_mu)
    _by_inode[rec.ikey] = rec.wref
    _by_path[h.lockfile] = rec.wref
    lw_mutex_unlock(&lw_table_mu)
    return rec


@cython.final
@cython.auto_pickle(False)
cdef class _SharedHold:
    """What ``FileLock.shared()`` returns: a context manager holding the lock shared."""
    cdef FileLock lock
    cdef object timeout

    def __cinit__(self, FileLock lock, timeout):
        self.lock = lock
        self.timeout = timeout

    def __enter__(self):
        self.lock._acquire(LW_SHARED, True, lw_deadline(self.timeout, True), False,
                           lw_load_u(&self.lock.cancel_gen))
        return self.lock

    def __exit__(self, exc_type, exc, tb):
        self.lock._release_hold(False)
