# Included by _core.pyx: the in-process locks, Mutex and RWLock.
#
# Nothing in Mutex relies on the GIL for atomicity (free-threaded CPython is a
# target; RWLock, below, still does for now). What each lock's state is, and
# who may change it how, is written above each class; the common parts:
#
# - The lock itself is one 32-bit word changed only by atomic operations
#   (compare-and-swap, exchange). Waiters sleep on a futex word with the GIL
#   released (lw_wait_word): a Mutex's waiters on its lock word, an RWLock's on
#   an event count its wakers bump. A waiter reads that word before it decides
#   and sleeps only while the word still has the value it read, so a change
#   between its decision and its sleep is never missed.
# - Who holds it, and where they took it, is an lw_site: written only by the
#   holder while it holds (one writer at a time, ordered by the lock word), read
#   by any thread (owner, site, repr, error messages). The integers are read as
#   one snapshot with a sequence count (odd while the holder writes; the reader
#   retries until it read the same even count before and after). The site's
#   code object is the one object pointer: the site keeps a strong reference to
#   the latest one, and changes it only when a holder takes the lock from a
#   different code object (a lock taken at one call site, over and over, never
#   touches a reference count). A reader announces itself in `peekers` while it
#   loads the pointer and takes its own reference; a holder that replaced the
#   pointer drops the old reference only once a full fence has shown no peeker
#   in flight (a peek is a few instructions; with the GIL, none is ever in
#   flight while the holder runs). The peeker count carries the fork generation,
#   so a peek cut short by fork() in another thread does not stall the child.
# - Owners are identified by lw_thread_serial(), which no two threads of a
#   process ever share (pthread idents are reused at once).
# - Under an RWLock's C guard no Python code runs: no allocation of Python
#   objects, no reference dropped that could free one, no exception made.
#   Decisions are taken there on C state; messages, allocation and raising
#   come after the unlock.
# - LATCHWIRE_PERTURB=1 pauses at lw_perturb() between each check and the act
#   that depends on it, and around each release of the GIL.

from cpython.ref cimport PyObject

cdef extern from *:
    """
    #include <errno.h>
    #include <sched.h>
    #include <stdlib.h>
    #include <string.h>

    /* Atomics on unsigned int that _sync.pxd does not offer. */
    static inline int lwm_cas_u(unsigned int *p, unsigned int expected, unsigned int desired)
    {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL,
                                           __ATOMIC_ACQUIRE);
    }

    static inline unsigned int lwm_xchg_u(unsigned int *p, unsigned int v)
    {
        return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL);
    }

    /* Who holds a lock and where they took it (see the top of _mutex.pxi). */
    typedef struct {
        unsigned int seq;        /* even: stable; odd: the holder is writing */
        int lasti;
        int depth;               /* an RWLock's inline reader: its recursive depth */
        unsigned long serial;    /* lw_thread_serial() of the holder, 0: none */
        unsigned long ident;
        PyObject *code;          /* strong; kept after release, replaced on change */
        unsigned long peekers;   /* fork generation << 32 | peeks in flight */
    } lw_site;

    #define LWM_LOW32 0xffffffffUL

    static void lw_site_peek_begin(lw_site *s, unsigned long gen)
    {
        unsigned long g = (gen & LWM_LOW32) << 32;
        unsigned long p = __atomic_load_n(&s->peekers, __ATOMIC_RELAXED), n;
        do
            n = (p & ~LWM_LOW32) == g ? p + 1 : (g | 1);   /* a stale generation: reset */
        while (!__atomic_compare_exchange_n(&s->peekers, &p, n, 0, __ATOMIC_SEQ_CST,
                                            __ATOMIC_RELAXED));
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }

    static void lw_site_peek_end(lw_site *s)
    {
        __atomic_sub_fetch(&s->peekers, 1, __ATOMIC_RELEASE);
    }

    /* Drop the reference to a code object the holder has just unpublished, once
     * no peeker of this generation can still be loading it. */
    static void lw_site_drop(lw_site *s, PyObject *old, unsigned long gen)
    {
        unsigned long g = (gen & LWM_LOW32) << 32, p;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        for (;;) {
            p = __atomic_load_n(&s->peekers, __ATOMIC_SEQ_CST);
            if ((p & ~LWM_LOW32) != g || (p & LWM_LOW32) == 0)
                break;
            sched_yield();
        }
        Py_DECREF(old);
    }

    /* The calling thread (serial, ident) now holds, taken at code/lasti
     * (borrowed). Caller: holds the lock, and so is the site's only writer. */
    static void lw_site_take(lw_site *s, unsigned long serial, unsigned long ident,
                             PyObject *code, int lasti, unsigned long gen)
    {
        PyObject *old = s->code;
        unsigned int seq = s->seq;
        __atomic_store_n(&s->seq, seq + 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
        __atomic_store_n(&s->ident, ident, __ATOMIC_RELAXED);
        __atomic_store_n(&s->lasti, lasti, __ATOMIC_RELAXED);
        __atomic_store_n(&s->depth, 1, __ATOMIC_RELAXED);
        if (code != old) {
            Py_XINCREF(code);
            __atomic_store_n(&s->code, code, __ATOMIC_RELEASE);
        }
        __atomic_store_n(&s->serial, serial, __ATOMIC_RELAXED);
        __atomic_store_n(&s->seq, seq + 2, __ATOMIC_RELEASE);
        if (code != old && old != NULL)
            lw_site_drop(s, old, gen);
    }

    /* The holder lets go (its site stays for the next holder to replace). */
    static inline void lw_site_clear(lw_site *s)
    {
        __atomic_store_n(&s->serial, 0, __ATOMIC_RELEASE);
    }

    static inline void lw_site_set_depth(lw_site *s, int depth)
    {
        __atomic_store_n(&s->depth, depth, __ATOMIC_RELAXED);
    }

    /* The holder's serial (0: none) and, if there is one, *ident, *code (a new
     * reference), *lasti and *depth as that holder wrote them. Any thread. */
    static unsigned long lw_site_get(lw_site *s, unsigned long gen, unsigned long *ident,
                                     PyObject **code, int *lasti, int *depth)
    {
        unsigned int s1, s2;
        unsigned long serial;
        PyObject *c;
        int tries = 0;
        *code = NULL;
        for (;; tries++) {
            s1 = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
            /* Odd: the holder is mid-write; never for long, unless fork() cut it
             * short in another thread (then, after many tries, take what is there). */
            if ((s1 & 1) && tries < 1000) {
                sched_yield();
                continue;
            }
            serial = __atomic_load_n(&s->serial, __ATOMIC_RELAXED);
            if (!serial)
                return 0;
            *ident = __atomic_load_n(&s->ident, __ATOMIC_RELAXED);
            *lasti = __atomic_load_n(&s->lasti, __ATOMIC_RELAXED);
            *depth = __atomic_load_n(&s->depth, __ATOMIC_RELAXED);
            lw_site_peek_begin(s, gen);
            c = __atomic_load_n(&s->code, __ATOMIC_ACQUIRE);
            Py_XINCREF(c);
            lw_site_peek_end(s);
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            s2 = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
            if (s1 == s2 || tries >= 1000) {
                *code = c;
                return serial;
            }
            Py_XDECREF(c);
        }
    }

    static void lw_site_free(lw_site *s)
    {
        Py_CLEAR(s->code);
    }
    """
    bint lwm_cas_u(unsigned int *p, unsigned int expected, unsigned int desired) nogil
    unsigned int lwm_xchg_u(unsigned int *p, unsigned int v) nogil

    ctypedef struct lw_site:
        unsigned long serial
        int depth
    void lw_site_take(lw_site *s, unsigned long serial, unsigned long ident, object code,
                      int lasti, unsigned long gen)
    void lw_site_clear(lw_site *s)
    void lw_site_set_depth(lw_site *s, int depth)
    unsigned long lw_site_get(lw_site *s, unsigned long gen, unsigned long *ident,
                              PyObject **code, int *lasti, int *depth)
    void lw_site_free(lw_site *s)
    void lwm_xdecref "Py_XDECREF"(PyObject *o)
    void lwm_xincref "Py_XINCREF"(PyObject *o)


cdef extern from "<stdlib.h>" nogil:
    void *lwm_malloc "malloc"(size_t size)
    void lwm_free "free"(void *p)


# A new reference as a Python object (None for NULL), which now owns it.
cdef inline object _steal(PyObject *p):
    if p == NULL:
        return None
    cdef object o = <object>p
    Py_DECREF(o)
    return o


# (ident, code, lasti, depth) of the holder recorded in site, or None.
cdef object _site_snapshot(lw_site *site):
    cdef unsigned long ident = 0
    cdef PyObject *code = NULL
    cdef int lasti = 0, depth = 0
    if not lw_site_get(site, lw_fork_generation, &ident, &code, &lasti, &depth):
        return None
    return (ident, _steal(code), lasti, depth)


# (ident, "file:line") of the holder recorded in site, or None.
cdef object _site_owner(lw_site *site):
    snap = _site_snapshot(site)
    if snap is None:
        return None
    return (snap[0], _format_site(snap[1], snap[2]))


# A threading-style timeout's deadline (lw_deadline), without parsing the
# default: -1 is one object in CPython, so `acquire()` pays one comparison.
cdef object _NO_TIMEOUT = -1


cdef inline double _deadline(object timeout, bint blocking) except -2:
    if timeout is _NO_TIMEOUT:
        return -1
    return lw_deadline(timeout, blocking, True)


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
    # The lock is `state`, a futex mutex in Drepper's three states: 0 free,
    # 1 held, 2 held and maybe waited for. Taking it is a compare-and-swap from
    # 0 to 1; a waiter exchanges 2 in (it holds the lock if the old value was 0)
    # and sleeps while the word is 2. Releasing exchanges 0 in and, if the old
    # value was 2, wakes one waiter: a woken waiter always exchanges 2 in again
    # before it looks at its deadline, so either it takes the lock or the word is
    # 2 again and the next release wakes another; a wake-up is never swallowed
    # by a waiter that gives up. `own` (an lw_site) says who holds it: written by
    # the holder after taking the word and cleared before letting go of it. Only
    # the holder touches ld_stack.
    cdef readonly object name
    cdef unsigned int state
    cdef lw_site own
    cdef object made_code               # where it was created (its class, if unnamed)
    cdef int made_lasti
    cdef int ld_cls                     # the checker's class id, -1 until needed
    cdef list ld_stack                  # the held list it is on, while the checker is on
    cdef object __weakref__

    def __init__(self, name=None):
        self.name = name
        self.made_code = _caller_code(&self.made_lasti)
        self.ld_cls = -1

    def __dealloc__(self):
        lw_site_free(&self.own)

    def __repr__(self):
        owner = _site_snapshot(&self.own)
        state = f"held by thread {owner[0]}" if owner is not None else "unlocked"
        return f"<latchwire.Mutex {self.name or self.lockclass!r} {state}>"

    @property
    def lockclass(self):
        """The lock-order checker's class for this lock."""
        return _class_key(self.name, self.made_code, self.made_lasti)

    cdef int _checker_class(self) except -1:
        cdef int cls = lw_load_i(&self.ld_cls)
        if cls < 0:
            cls = _ld_class(self.lockclass)
            lw_store_i(&self.ld_cls, cls)
        return cls

    cdef inline bint _acquire(self, bint blocking, double deadline) except -1:
        cdef unsigned long me = lw_thread_serial()
        if lw_lockdep and blocking:
            _ld_check(self, self._checker_class(), False, False)
        if not lwm_cas_u(&self.state, 0, 1) and not self._contended(me, blocking, deadline):
            return False
        self._took(me)
        return True

    # The word was not free. Wait for it (unless not blocking): True once held,
    # False on timeout. RuntimeError if this thread holds it.
    cdef bint _contended(self, unsigned long me, bint blocking, double deadline) except -1:
        cdef int timed_out = 0
        if not blocking:
            return False
        if lw_load_ul(&self.own.serial) == me:   # only this thread ever writes `me` there
            raise RuntimeError(f"{self!r} is already held by this thread (taken at "
                               f"{self.site}); a Mutex is not reentrant")
        while True:
            lw_perturb()
            if lwm_xchg_u(&self.state, 2) == 0:
                return True
            if timed_out:
                return False
            timed_out = lw_wait_word(&self.state, 2, deadline)

    cdef inline int _took(self, unsigned long me) except -1:
        cdef int lasti
        lw_perturb()
        code = _caller_code(&lasti)
        lw_site_take(&self.own, me, PyThread_get_thread_ident(), code, lasti,
                     lw_fork_generation)
        if lw_lockdep:
            self.ld_stack = _ld_push(self, self._checker_class(), False, code, lasti)
        return 0

    cdef inline int _release(self) except -1:
        if lw_load_ul(&self.own.serial) != lw_thread_serial():
            self._refuse_release()
        if self.ld_stack is not None:
            _ld_pop(self.ld_stack, self, False)
            self.ld_stack = None
        lw_site_clear(&self.own)
        lw_perturb()
        if lwm_xchg_u(&self.state, 0) == 2:
            lw_futex_wake_n(&self.state, 1)
        return 0

    cdef int _refuse_release(self) except -1:
        owner = _site_owner(&self.own)
        if owner is None:
            raise RuntimeError("release unlocked lock")
        raise RuntimeError(f"{self!r} is held by thread {owner[0]} (taken at {owner[1]}), "
                           "not by this thread")

    def acquire(self, bint blocking=True, timeout=-1):
        """Take the lock: True, or False if not free without blocking or in time."""
        return self._acquire(blocking, _deadline(timeout, blocking))

    def release(self):
        """Release the lock. RuntimeError unless this thread holds it."""
        self._release()

    def locked(self):
        """Whether some thread holds the lock."""
        return lw_load_u(&self.state) != 0

    def __enter__(self):
        return self._acquire(True, -1)

    def __exit__(self, exc_type, exc, tb):
        self._release()

    @property
    def owner(self):
        """``(thread ident, "file:line")`` of the holder, or None."""
        return _site_owner(&self.own)

    @property
    def site(self):
        """``file:line`` where the holder took the lock, or None."""
        owner = _site_owner(&self.own)
        return owner[1] if owner is not None else None


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
        return self._acquire_read(blocking, _deadline(timeout, blocking))

    def acquire_write(self, bint blocking=True, timeout=-1):
        """Take the write hold: True, or False if not possible without blocking or in time."""
        return self._acquire_write(blocking, _deadline(timeout, blocking))

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
