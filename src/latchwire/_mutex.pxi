# Included by _core.pyx: the in-process locks, Mutex and RWLock.
#
# Their state is guarded by the GIL: the fast path is a few field tests and
# stores with it held. A thread that must wait sleeps on the lock's futex word
# (seq) with the GIL released, and whoever changes the lock in a way a waiter
# may care about bumps seq and, if anyone sleeps, wakes them all (each looks
# again). Owners are identified by lw_thread_serial(), which no two threads of
# a process ever share (pthread idents are reused at once).

# The checker's class key for a lock: its name, or where it was created.
cdef object _class_key(object name, object code, int lasti):
    return name if name is not None else _format_site(code, lasti)


@cython.auto_pickle(False)
cdef class Mutex:
    """A non-reentrant mutual-exclusion lock with ``threading.Lock``'s interface.

    ``acquire(blocking=True, timeout=-1)`` returns True, or False when it could
    not have the lock without blocking or within ``timeout`` seconds. Unlike
    ``threading.Lock`` it knows its owner: only the thread that holds it may
    release it (RuntimeError naming the holder otherwise), a blocking acquire by
    the holder raises RuntimeError instead of deadlocking, and ``owner`` says
    which thread took it and where. The GIL is released only while waiting;
    a signal handler's exception (KeyboardInterrupt) ends a wait.

    ``name`` gives the lock-order checker its class (locks of one name are one
    class); unnamed locks are classed by where they were created.
    """
    cdef readonly object name
    cdef unsigned long owner_serial     # lw_thread_serial() of the holder, 0 if free
    cdef unsigned long owner_ident
    cdef object site_code
    cdef int site_lasti
    cdef unsigned int seq
    cdef int nwaiters
    cdef object made_code               # where it was created (its class, if unnamed)
    cdef int made_lasti
    cdef int ld_cls                     # the checker's class id, -1 until needed
    cdef list ld_stack                  # the held list it is on, while the checker is on
    cdef object __weakref__

    def __init__(self, name=None):
        self.name = name
        self.made_code = _caller_code(&self.made_lasti)
        self.ld_cls = -1

    def __repr__(self):
        state = f"held by thread {self.owner_ident}" if self.owner_serial else "unlocked"
        return f"<latchwire.Mutex {self.name or self.lockclass!r} {state}>"

    @property
    def lockclass(self):
        """The lock-order checker's class for this lock."""
        return _class_key(self.name, self.made_code, self.made_lasti)

    cdef int _checker_class(self) except -1:
        if self.ld_cls < 0:
            self.ld_cls = _ld_class(self.lockclass)
        return self.ld_cls

    def acquire(self, bint blocking=True, timeout=-1):
        """Take the lock: True, or False if not free without blocking or in time."""
        cdef unsigned long me = lw_thread_serial()
        cdef double deadline = lw_deadline(timeout, blocking, True)
        if lw_lockdep and blocking:
            _ld_check(self, self._checker_class(), False, False)
        if self.owner_serial:
            if not blocking:
                return False
            if self.owner_serial == me:
                raise RuntimeError(f"{self!r} is already held by this thread (taken at "
                                   f"{self.site}); a Mutex is not reentrant")
            while self.owner_serial:
                self.nwaiters += 1
                try:
                    if lw_wait_word(&self.seq, self.seq, deadline) and self.owner_serial:
                        return False
                finally:
                    self.nwaiters -= 1
        self.owner_serial = me
        self.owner_ident = PyThread_get_thread_ident()
        self.site_code = _caller_code(&self.site_lasti)
        if lw_lockdep:
            self.ld_stack = _ld_push(self, self._checker_class(), False, self.site_code,
                                     self.site_lasti)
        return True

    def release(self):
        """Release the lock. RuntimeError unless this thread holds it."""
        if self.owner_serial != lw_thread_serial():
            if not self.owner_serial:
                raise RuntimeError("release unlocked lock")
            raise RuntimeError(f"{self!r} is held by thread {self.owner_ident} (taken at "
                               f"{self.site}), not by this thread")
        self.owner_serial = self.owner_ident = 0
        self.site_code = None
        if self.ld_stack is not None:
            _ld_pop(self.ld_stack, self, False)
            self.ld_stack = None
        self.seq += 1
        if self.nwaiters:
            lw_futex_wake(&self.seq)

    def locked(self):
        """Whether some thread holds the lock."""
        return self.owner_serial != 0

    def __enter__(self):
        return self.acquire()

    def __exit__(self, exc_type, exc, tb):
        self.release()

    @property
    def owner(self):
        """``(thread ident, "file:line")`` of the holder, or None."""
        return (self.owner_ident, self.site) if self.owner_serial else None

    @property
    def site(self):
        """``file:line`` where the holder took the lock, or None."""
        return _format_site(self.site_code, self.site_lasti) if self.owner_serial else None


@cython.final
@cython.auto_pickle(False)
cdef class _Reader:
    """One thread's read hold of an RWLock (count: its recursive depth)."""
    cdef unsigned long serial           # lw_thread_serial() of the reader, 0 if unused
    cdef unsigned long ident
    cdef int count
    cdef object code
    cdef int lasti
    cdef list ld_stack


@cython.auto_pickle(False)
cdef class RWLock:
    """A reader-writer lock: many readers at once, or one writer.

    Writer-preferring by default: once a writer waits, new readers wait behind
    it, so a steady stream of readers cannot starve writers. A thread that
    already reads may read again (recursively) while no writer waits; with a
    writer waiting that would deadlock (the writer waits for this thread), so
    it raises RuntimeError at once. ``RWLock(prefer_writers=False)`` admits
    readers whenever no writer holds the lock (readers never wait for waiting
    writers, and may starve them).

    ``acquire_read``/``acquire_write`` take ``threading.Lock``'s (blocking,
    timeout) arguments and return True or False; ``read()`` and ``write()`` are
    context managers. Holds belong to threads: only a holder may release.
    ``downgrade()`` turns the write hold into a read hold without letting go,
    and lets in the readers that were waiting (writers stay out).
    """
    cdef readonly object name
    cdef readonly bint prefer_writers
    cdef unsigned long writer_serial     # 0 if no writer holds it
    cdef unsigned long writer_ident
    cdef object site_code
    cdef int site_lasti
    cdef _Reader first                  # one reader kept inline: no allocation, no dict
    cdef dict others                    # lw_thread_serial() -> _Reader, the other readers
    cdef int nreaders                   # reader threads
    cdef int writers_waiting
    cdef unsigned long epoch            # bumped by each downgrade()
    cdef unsigned int seq
    cdef int nwaiters
    cdef object made_code
    cdef int made_lasti
    cdef int ld_cls
    cdef list ld_stack
    cdef _ReadHold read_hold
    cdef _WriteHold write_hold
    cdef object __weakref__

    def __init__(self, name=None, *, bint prefer_writers=True):
        self.name = name
        self.prefer_writers = prefer_writers
        self.first = _Reader.__new__(_Reader)
        self.others = {}
        self.made_code = _caller_code(&self.made_lasti)
        self.ld_cls = -1
        self.read_hold = _ReadHold.__new__(_ReadHold)
        self.read_hold.rw = self
        self.write_hold = _WriteHold.__new__(_WriteHold)
        self.write_hold.rw = self

    def __repr__(self):
        if self.writer_serial:
            state = f"written by thread {self.writer_ident}"
        else:
            state = f"{self.nreaders} readers"
        return f"<latchwire.RWLock {self.name or self.lockclass!r} {state}>"

    @property
    def lockclass(self):
        """The lock-order checker's class for this lock."""
        return _class_key(self.name, self.made_code, self.made_lasti)

    cdef int _checker_class(self) except -1:
        if self.ld_cls < 0:
            self.ld_cls = _ld_class(self.lockclass)
        return self.ld_cls

    cdef inline void _changed(self) noexcept:
        self.seq += 1
        if self.nwaiters:
            lw_futex_wake(&self.seq)

    # Whether a new reader that arrived in epoch must wait: a writer holds the
    # lock, or (preferring writers) one waits, unless a downgrade() came since
    # the reader arrived, which lets the readers then waiting in.
    cdef inline bint _keeps_out_reader(self, unsigned long arrived) noexcept:
        return self.writer_serial != 0 or (self.prefer_writers and self.writers_waiting > 0
                                           and arrived == self.epoch)

    # Sleep until the lock changes or deadline; 1 if the deadline passed.
    cdef int _wait(self, double deadline) except -1:
        self.nwaiters += 1
        try:
            return lw_wait_word(&self.seq, self.seq, deadline)
        finally:
            self.nwaiters -= 1

    # This thread's read hold, or None.
    cdef inline _Reader _reader_of(self, unsigned long me):
        if self.first.serial == me:
            return self.first
        if self.others:
            return self.others.get(me)
        return None

    # A read hold for this thread (me), counted once; the caller fills it in.
    cdef _Reader _add_reader(self, unsigned long me):
        cdef _Reader reader = self.first
        if reader.serial:
            reader = _Reader.__new__(_Reader)
            self.others[me] = reader
        reader.serial = me
        reader.count = 1
        self.nreaders += 1
        return reader

    cdef bint _acquire_read(self, bint blocking, double deadline) except -1:
        cdef unsigned long me = lw_thread_serial()
        cdef _Reader reader = self._reader_of(me)
        cdef unsigned long arrived = self.epoch
        if lw_lockdep and blocking:
            _ld_check(self, self._checker_class(), True, self.prefer_writers)
        if reader is not None:
            if self.writers_waiting and self.prefer_writers:
                raise RuntimeError(f"{self!r}: this thread reads it already (since "
                                   f"{_format_site(reader.code, reader.lasti)}) and a writer "
                                   "waits: reading it again would deadlock")
            reader.count += 1
            return True
        if self.writer_serial == me:
            raise RuntimeError(f"{self!r} is held for writing by this thread; "
                               "use downgrade() to read")
        while self._keeps_out_reader(arrived):
            if not blocking or (self._wait(deadline) and self._keeps_out_reader(arrived)):
                return False
        reader = self._add_reader(me)
        reader.ident = PyThread_get_thread_ident()
        reader.code = _caller_code(&reader.lasti)
        if lw_lockdep:
            reader.ld_stack = _ld_push(self, self._checker_class(), True, reader.code,
                                       reader.lasti)
        return True

    cdef bint _acquire_write(self, bint blocking, double deadline) except -1:
        cdef unsigned long me = lw_thread_serial()
        if lw_lockdep and blocking:
            _ld_check(self, self._checker_class(), False, False)
        if self.writer_serial == me:
            if not blocking:
                return False
            raise RuntimeError(f"{self!r} is already held for writing by this thread (taken "
                               f"at {self.site}); an RWLock is not reentrant")
        if self._reader_of(me) is not None:
            if not blocking:
                return False
            raise RuntimeError(f"{self!r} is held for reading by this thread: waiting to "
                               "write would deadlock (release the read hold first)")
        if self.writer_serial or self.nreaders:
            if not blocking:
                return False
            self.writers_waiting += 1
            try:
                while self.writer_serial or self.nreaders:
                    if self._wait(deadline) and (self.writer_serial or self.nreaders):
                        return False
            finally:
                self.writers_waiting -= 1
                if not self.writers_waiting:
                    self._changed()     # readers held back by this writer may go
        self.writer_serial = me
        self.writer_ident = PyThread_get_thread_ident()
        self.site_code = _caller_code(&self.site_lasti)
        if lw_lockdep:
            self.ld_stack = _ld_push(self, self._checker_class(), False, self.site_code,
                                     self.site_lasti)
        return True

    cdef int _release_read(self) except -1:
        cdef unsigned long me = lw_thread_serial()
        cdef _Reader reader = self._reader_of(me)
        if reader is None:
            raise RuntimeError(f"{self!r} is not held for reading by this thread")
        reader.count -= 1
        if reader.count:
            return 0
        if reader.ld_stack is not None:
            _ld_pop(reader.ld_stack, self, True)
            reader.ld_stack = None
        if reader is self.first:
            reader.serial = 0
            reader.code = None
        else:
            del self.others[me]
        self.nreaders -= 1
        if not self.nreaders:
            self._changed()
        return 0

    cdef int _release_write(self) except -1:
        if self.writer_serial != lw_thread_serial():
            if not self.writer_serial:
                raise RuntimeError(f"{self!r} is not held for writing")
            raise RuntimeError(f"{self!r} is held for writing by thread {self.writer_ident} "
                               f"(taken at {self.site}), not by this thread")
        self.writer_serial = self.writer_ident = 0
        self.site_code = None
        if self.ld_stack is not None:
            _ld_pop(self.ld_stack, self, False)
            self.ld_stack = None
        self._changed()
        return 0

    def acquire_read(self, bint blocking=True, timeout=-1):
        """Take a read hold: True, or False if not possible without blocking or in time."""
        return self._acquire_read(blocking, lw_deadline(timeout, blocking, True))

    def acquire_write(self, bint blocking=True, timeout=-1):
        """Take the write hold: True, or False if not possible without blocking or in time."""
        return self._acquire_write(blocking, lw_deadline(timeout, blocking, True))

    def release_read(self):
        """Release this thread's read hold (one level of it)."""
        self._release_read()

    def release_write(self):
        """Release this thread's write hold."""
        self._release_write()

    def read(self):
        """``with rw.read():`` reads for the block."""
        return self.read_hold

    def write(self):
        """``with rw.write():`` writes for the block."""
        return self.write_hold

    def downgrade(self):
        """Turn this thread's write hold into a read hold, atomically.

        Readers waiting at this moment get in; writers stay out until every
        reader (this thread included) has released.
        """
        cdef unsigned long me = lw_thread_serial()
        cdef _Reader reader
        if self.writer_serial != me:
            raise RuntimeError(f"{self!r} is not held for writing by this thread")
        reader = self._add_reader(me)
        reader.ident = self.writer_ident
        reader.code = self.site_code
        reader.lasti = self.site_lasti
        if self.ld_stack is not None:    # the same hold, now for reading: it keeps its place
            _ld_retag(self.ld_stack, self, True)
            reader.ld_stack = self.ld_stack
            self.ld_stack = None
        self.writer_serial = self.writer_ident = 0
        self.site_code = None
        self.epoch += 1
        self._changed()

    @property
    def writer(self):
        """``(thread ident, "file:line")`` of the writer, or None."""
        return (self.writer_ident, self.site) if self.writer_serial else None

    @property
    def site(self):
        """``file:line`` where the writer took the lock, or None."""
        return _format_site(self.site_code, self.site_lasti) if self.writer_serial else None

    @property
    def readers(self):
        """``[(thread ident, "file:line", depth), ...]`` of the readers."""
        cdef _Reader r
        cdef list holds = [self.first] if self.first.serial else []
        holds.extend(self.others.values())
        return [(r.ident, _format_site(r.code, r.lasti), r.count) for r in holds]


@cython.final
@cython.auto_pickle(False)
cdef class _ReadHold:
    """``RWLock.read()``: a context manager holding a read lock."""
    cdef RWLock rw

    def __enter__(self):
        self.rw._acquire_read(True, -1)
        return self.rw

    def __exit__(self, exc_type, exc, tb):
        self.rw._release_read()


@cython.final
@cython.auto_pickle(False)
cdef class _WriteHold:
    """``RWLock.write()``: a context manager holding the write lock."""
    cdef RWLock rw

    def __enter__(self):
        self.rw._acquire_write(True, -1)
        return self.rw

    def __exit__(self, exc_type, exc, tb):
        self.rw._release_write()
