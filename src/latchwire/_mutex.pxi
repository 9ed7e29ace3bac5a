# Included by _core.pyx: the in-process locks, Mutex and RWLock.
#
# Nothing here relies on the GIL for atomicity (free-threaded CPython is a
# target). What each lock's state is, and who may change it how, is written
# above each class; the common parts:
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
#   different code object (a lock taken at one call site over and over keeps
#   the one reference). A reader announces itself in `peekers` while it
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
        """Take the lock: True, or False if not free without blocking or in time.

        ``timeout`` is in seconds, as for ``threading.Lock`` (-1: no limit; a
        timeout with ``blocking=False`` is a ValueError, None a TypeError). A wait
        is a futex wait with the GIL released; RuntimeError at once if this thread
        holds the lock, and with the lock-order checker on, LockOrderError before
        waiting on an inconsistent order.
        """
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


# ---------------------------------------------------------------------------
# RWLock

cdef extern from *:
    """
    /* An RWLock's readers other than the inline one: a C array, changed only
     * under the lock's guard (so no Python object is made or freed there). */
    typedef struct {
        unsigned long serial;
        unsigned long ident;
        PyObject *code;          /* strong */
        int lasti;
        int depth;
        int ld;                  /* on the checker's held list */
    } lw_rrec;

    typedef struct {
        lw_rrec *v;
        int n;
        int cap;
    } lw_rrecs;

    static int lw_rrecs_find(const lw_rrecs *r, unsigned long serial)
    {
        int i;
        for (i = 0; i < r->n; i++)
            if (r->v[i].serial == serial)
                return i;
        return -1;
    }

    /* Room for one more record: 0, or ENOMEM. */
    static int lw_rrecs_reserve(lw_rrecs *r)
    {
        lw_rrec *v;
        int cap;
        if (r->n < r->cap)
            return 0;
        cap = r->cap ? 2 * r->cap : 4;
        v = (lw_rrec *) realloc(r->v, (size_t) cap * sizeof *v);
        if (!v)
            return ENOMEM;
        r->v = v;
        r->cap = cap;
        return 0;
    }

    /* Append a record (code borrowed: the record takes its own reference).
     * Caller: reserved room. */
    static void lw_rrecs_add(lw_rrecs *r, unsigned long serial, unsigned long ident,
                             PyObject *code, int lasti, int ld)
    {
        lw_rrec *rec = &r->v[r->n++];
        rec->serial = serial;
        rec->ident = ident;
        Py_XINCREF(code);
        rec->code = code;
        rec->lasti = lasti;
        rec->depth = 1;
        rec->ld = ld;
    }

    /* Remove record i, keeping the others in order; its code reference, which
     * the caller drops once it has let go of the guard. */
    static PyObject *lw_rrecs_remove(lw_rrecs *r, int i)
    {
        PyObject *code = r->v[i].code;
        memmove(&r->v[i], &r->v[i + 1], (size_t) (r->n - i - 1) * sizeof r->v[0]);
        r->n--;
        return code;
    }

    /* Copy the records into out (room for cap), taking a reference to each
     * code: how many there are (nothing copied if more than cap). */
    static int lw_rrecs_copy(const lw_rrecs *r, lw_rrec *out, int cap)
    {
        int i;
        if (r->n > cap)
            return r->n;
        for (i = 0; i < r->n; i++) {
            out[i] = r->v[i];
            Py_XINCREF(out[i].code);
        }
        return r->n;
    }

    static void lw_rrecs_free(lw_rrecs *r)
    {
        int i;
        for (i = 0; i < r->n; i++)
            Py_CLEAR(r->v[i].code);
        free(r->v);
        r->v = NULL;
        r->n = r->cap = 0;
    }
    """
    ctypedef struct lw_rrec:
        unsigned long serial
        unsigned long ident
        PyObject *code
        int lasti
        int depth
        int ld
    ctypedef struct lw_rrecs:
        lw_rrec *v
        int n
    int lw_rrecs_find(const lw_rrecs *r, unsigned long serial)
    int lw_rrecs_reserve(lw_rrecs *r)
    void lw_rrecs_add(lw_rrecs *r, unsigned long serial, unsigned long ident, object code,
                      int lasti, int ld)
    PyObject *lw_rrecs_remove(lw_rrecs *r, int i)
    int lw_rrecs_copy(const lw_rrecs *r, lw_rrec *out, int cap)
    void lw_rrecs_free(lw_rrecs *r)


# The bits of an RWLock's state word.
cdef enum:
    RW_W = 1        # a writer holds it
    RW_F = 2        # a reader holds it through the inline record (rsite)
    RW_P = 4        # writers wait, and the lock prefers writers: new readers wait too
    RW_S = 8        # a thread may sleep on the word: whoever frees something wakes all
    RW_N1 = 16      # one reader in the overflow records (the count is state >> 4)
    RW_READERS = ~(RW_W | RW_P | RW_S)      # F and the overflow count

# Held only to reset an RWLock's guard in a fork child (see RWLock._lock_guard).
cdef lw_mutex _rw_fork_guard


cdef void _rw_after_fork_child() noexcept nogil:
    lw_mutex_reset(&_rw_fork_guard)


pthread_atfork(NULL, NULL, _rw_after_fork_child)


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
    # State and invariants.
    #
    # `state` (RW_* bits) is the lock. It changes only by compare-and-swap.
    # W: a writer holds; F: a reader holds through the inline record; state >> 4:
    # readers in the overflow records; P: writers wait and the lock prefers
    # writers; S: someone may sleep. Invariants: W excludes F and the overflow
    # count (a writer takes W only from a word with neither; a reader adds
    # itself only to a word without W); P is set exactly while writers_waiting
    # > 0 on a writer-preferring lock; only a waiter holding the guard sets S;
    # whoever clears W, clears the last reader or clears P with S set clears S
    # in the same compare-and-swap and then wakes every sleeper (each looks
    # again). Sleepers sleep on `seq`, an event count each wake bumps: a waiter
    # sets S, reads seq, checks the word is still what it decided on (else it
    # decides again), lets go of the guard and sleeps while seq is unchanged.
    # So a wake between its decision and its sleep is never missed, even if the
    # word comes back to the same value meanwhile (as it may around a
    # downgrade(), whose epoch is not in the word).
    #
    # Fast paths, without the guard: a read or write on a word that is 0 (but
    # for S) is one compare-and-swap (F or W in), its release one more; the
    # inline reader's recursive reads touch only its own record. Everything else
    # takes `guard` (an lw_mutex), which serialises the slow paths and guards
    # writers_waiting, epoch and the overflow records; the word still changes
    # only by compare-and-swap there, since the fast paths do not take the guard.
    #
    # A new reader is kept out while W is set or, when P is set, while no
    # downgrade() came since it arrived: `epoch` (guard) counts downgrades, and a
    # reader notes it on arrival, so the readers waiting at a downgrade get in
    # past the waiting writer and later ones do not. downgrade() bumps epoch and
    # swaps W for F in one compare-and-swap, under the guard.
    #
    # Records: `wsite` is the writer (written by it while it holds W), `rsite`
    # the inline reader (written by it while F is its own; depth is its
    # recursion, which only it changes). Other readers have an lw_rrec in
    # `others`, a C array under the guard: finding, adding or removing one makes
    # or frees no Python object (a removed record's code reference is dropped
    # after the unlock). A thread is a reader iff rsite.serial is its serial
    # (only it ever writes that value there) or it has a record in `others`.
    cdef readonly object name
    cdef readonly bint prefer_writers
    cdef unsigned int state
    cdef unsigned int seq               # the futex word sleepers wait on: bumped by each wake
    cdef lw_mutex guard
    cdef int writers_waiting            # guard
    cdef unsigned long epoch            # guard: bumped by each downgrade()
    cdef unsigned long fork_gen         # the fork generation the guard belongs to
    cdef lw_rrecs others                # guard
    cdef lw_site wsite
    cdef lw_site rsite
    cdef object made_code
    cdef int made_lasti
    cdef int ld_cls
    cdef list w_ld_stack                # the writer's held list (only it touches this)
    cdef list r_ld_stack                # the inline reader's (only it touches this)
    cdef _ReadHold read_hold
    cdef _WriteHold write_hold
    cdef object __weakref__

    def __cinit__(self):
        self.fork_gen = lw_fork_generation

    def __init__(self, name=None, *, bint prefer_writers=True):
        self.name = name
        self.prefer_writers = prefer_writers
        self.made_code = _caller_code(&self.made_lasti)
        self.ld_cls = -1
        self.read_hold = _ReadHold.__new__(_ReadHold)
        self.read_hold.rw = self
        self.write_hold = _WriteHold.__new__(_WriteHold)
        self.write_hold.rw = self

    def __dealloc__(self):
        lw_rrecs_free(&self.others)
        lw_site_free(&self.wsite)
        lw_site_free(&self.rsite)

    def __repr__(self):
        cdef unsigned int s = lw_load_u(&self.state)
        writer = _site_snapshot(&self.wsite) if s & RW_W else None
        if writer is not None:
            state = f"written by thread {writer[0]}"
        else:
            state = f"{((s & RW_F) != 0) + (s >> 4)} readers"
        return f"<latchwire.RWLock {self.name or self.lockclass!r} {state}>"

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

    # Take the guard. In a fork child, first reset it (another thread of the
    # parent may have held it at the fork) and forget the parent's waiting
    # writers and sleepers, none of which exists here.
    cdef inline void _lock_guard(self) noexcept:
        if lw_load_ul(&self.fork_gen) != lw_fork_generation:
            self._after_fork()
        lw_lock(&self.guard)

    cdef void _after_fork(self) noexcept:
        cdef unsigned int s
        lw_lock(&_rw_fork_guard)
        if lw_load_ul(&self.fork_gen) != lw_fork_generation:
            lw_mutex_reset(&self.guard)
            self.writers_waiting = 0
            s = lw_load_u(&self.state)
            while not lwm_cas_u(&self.state, s, s & ~(RW_P | RW_S)):
                s = lw_load_u(&self.state)
            lw_store_ul(&self.fork_gen, lw_fork_generation)
        lw_mutex_unlock(&_rw_fork_guard)

    cdef inline void _unlock_guard(self) noexcept:
        lw_mutex_unlock(&self.guard)

    # Sleep until the next wake or the deadline: 1 if the deadline passed, 0 to
    # decide again (the guard is taken again in both cases), or -1 at once, with
    # the guard still held, if the word is no longer `decided` (S set in it).
    # Caller: holds the guard, and decided to wait on the word `decided`.
    cdef int _sleep(self, unsigned int decided, double deadline) except -2:
        cdef unsigned int seen
        cdef int timed_out
        # Without a GIL other threads run between the decision and here; with it,
        # only perturbation lets them (a pause under the guard only makes others
        # wait for it: no Python code runs in this thread meanwhile).
        lw_perturb()
        seen = lw_load_u(&self.seq)
        # S is in the word and only a waiter under the guard sets it, so from here
        # every change that frees something clears S and bumps seq past `seen`.
        if lw_load_u(&self.state) != decided:
            return -1
        self._unlock_guard()
        try:
            timed_out = lw_wait_word(&self.seq, seen, deadline)
        finally:
            lw_perturb()
            self._lock_guard()
        return timed_out

    # Change the word by clearing `clear` and adding `add` (modulo 2**32); if S
    # was set and the change frees something (wake_always, or no reader left),
    # clear S too: then the caller must wake every sleeper (_wake), after letting
    # go of the guard if it holds it. Any thread, guard or not.
    cdef inline bint _change(self, unsigned int clear, unsigned int add,
                             bint wake_always) noexcept:
        cdef unsigned int s, ns
        cdef bint wake
        while True:
            s = lw_load_u(&self.state)
            ns = (s & ~clear) + add
            wake = (s & RW_S) != 0 and (wake_always or (ns & RW_READERS) == 0)
            if wake:
                ns &= ~RW_S
            if lwm_cas_u(&self.state, s, ns):
                return wake

    cdef inline void _wake(self) noexcept:
        lw_inc_u(&self.seq)
        lw_futex_wake(&self.seq)

    # ---- reading

    cdef bint _acquire_read(self, bint blocking, double deadline) except -1:
        cdef unsigned long me = lw_thread_serial()
        cdef unsigned int s
        cdef int depth
        if lw_lockdep and blocking:
            _ld_check(self, self._checker_class(), True, self.prefer_writers)
        if lw_load_ul(&self.rsite.serial) == me:       # a recursive read, inline
            if lw_load_u(&self.state) & RW_P:
                self._refuse_recursive_read(_site_snapshot(&self.rsite))
            depth = self.rsite.depth + 1
            lw_site_set_depth(&self.rsite, depth)
            return True
        s = lw_load_u(&self.state)
        lw_perturb()
        if (s & ~RW_S) == 0 and lwm_cas_u(&self.state, s, s | RW_F):
            self._took_inline(me)
            return True
        return self._acquire_read_slow(me, blocking, deadline)

    cdef int _took_inline(self, unsigned long me) except -1:
        cdef int lasti
        lw_perturb()
        code = _caller_code(&lasti)
        lw_site_take(&self.rsite, me, PyThread_get_thread_ident(), code, lasti,
                     lw_fork_generation)
        if lw_lockdep:
            self.r_ld_stack = _ld_push(self, self._checker_class(), True, code, lasti)
        return 0

    cdef int _refuse_recursive_read(self, object snap) except -1:
        since = _format_site(snap[1], snap[2]) if snap is not None else "<unknown>"
        raise RuntimeError(f"{self!r}: this thread reads it already (since {since}) and a "
                           "writer waits: reading it again would deadlock")

    cdef bint _acquire_read_slow(self, unsigned long me, bint blocking,
                                 double deadline) except -1:
        cdef unsigned int s
        cdef unsigned long arrived
        cdef unsigned long ident = PyThread_get_thread_ident()
        cdef int i, lasti, timed_out = 0, err
        cdef bint inline = False, ld = False
        cdef PyObject *recode
        code = _caller_code(&lasti)
        self._lock_guard()
        i = lw_rrecs_find(&self.others, me)
        if i >= 0:                                      # a recursive read, in the records
            if lw_load_u(&self.state) & RW_P:
                recode = self.others.v[i].code
                lwm_xincref(recode)
                lasti = self.others.v[i].lasti
                self._unlock_guard()
                self._refuse_recursive_read((ident, _steal(recode), lasti, 0))
            self.others.v[i].depth += 1
            self._unlock_guard()
            return True
        if lw_load_ul(&self.wsite.serial) == me:
            self._unlock_guard()
            raise RuntimeError(f"{self!r} is held for writing by this thread; "
                               "use downgrade() to read")
        arrived = self.epoch
        while True:
            s = lw_load_u(&self.state)
            if s & RW_W or (s & RW_P and arrived == self.epoch):
                if not blocking or timed_out:
                    self._unlock_guard()
                    return False
                if not s & RW_S:
                    if not lwm_cas_u(&self.state, s, s | RW_S):
                        continue
                    s |= RW_S
                # A KeyboardInterrupt leaves with the guard held: nothing to undo.
                try:
                    if self._sleep(s, deadline) == 1:
                        timed_out = 1
                except BaseException:
                    self._unlock_guard()
                    raise
                continue
            if not s & RW_F:
                if lwm_cas_u(&self.state, s, s | RW_F):
                    inline = True
                    break
                continue
            err = lw_rrecs_reserve(&self.others)
            if err:
                self._unlock_guard()
                raise MemoryError("no memory for another reader of an RWLock")
            if lwm_cas_u(&self.state, s, s + RW_N1):
                ld = lw_lockdep
                lw_rrecs_add(&self.others, me, ident, code, lasti, ld)
                break
        self._unlock_guard()
        if inline:
            self._took_inline(me)
        elif ld:
            _ld_push(self, self._checker_class(), True, code, lasti)
        return True

    cdef int _release_read(self) except -1:
        cdef unsigned long me = lw_thread_serial()
        cdef int depth, i, ld
        cdef bint wake
        cdef PyObject *code
        if lw_load_ul(&self.rsite.serial) == me:
            depth = self.rsite.depth
            if depth > 1:
                lw_site_set_depth(&self.rsite, depth - 1)
                return 0
            if self.r_ld_stack is not None:
                _ld_pop(self.r_ld_stack, self, True)
                self.r_ld_stack = None
            lw_site_clear(&self.rsite)
            lw_perturb()
            if self._change(RW_F, 0, False):
                self._wake()
            return 0
        self._lock_guard()
        i = lw_rrecs_find(&self.others, me)
        if i < 0:
            self._unlock_guard()
            raise RuntimeError(f"{self!r} is not held for reading by this thread")
        if self.others.v[i].depth > 1:
            self.others.v[i].depth -= 1
            self._unlock_guard()
            return 0
        ld = self.others.v[i].ld
        code = lw_rrecs_remove(&self.others, i)
        wake = self._change(0, <unsigned int>0 - RW_N1, False)
        self._unlock_guard()
        if wake:
            self._wake()
        lwm_xdecref(code)
        if ld:
            _ld_pop(_ld_stack(), self, True)
        return 0

    # ---- writing

    cdef bint _acquire_write(self, bint blocking, double deadline) except -1:
        cdef unsigned long me = lw_thread_serial()
        cdef unsigned int s
        if lw_lockdep and blocking:
            _ld_check(self, self._checker_class(), False, False)
        s = lw_load_u(&self.state)
        lw_perturb()
        if (s & ~RW_S) == 0 and lwm_cas_u(&self.state, s, s | RW_W):
            self._took_write(me)
            return True
        if not self._acquire_write_slow(me, blocking, deadline):
            return False
        self._took_write(me)
        return True

    cdef int _took_write(self, unsigned long me) except -1:
        cdef int lasti
        lw_perturb()
        code = _caller_code(&lasti)
        lw_site_take(&self.wsite, me, PyThread_get_thread_ident(), code, lasti,
                     lw_fork_generation)
        if lw_lockdep:
            self.w_ld_stack = _ld_push(self, self._checker_class(), False, code, lasti)
        return 0

    # The word was not free: True once W is this thread's, False if not blocking
    # or out of time.
    cdef bint _acquire_write_slow(self, unsigned long me, bint blocking,
                                  double deadline) except -1:
        cdef unsigned int s, ns
        cdef int timed_out = 0
        cdef bint counted = False, mine
        if lw_load_ul(&self.wsite.serial) == me:
            if not blocking:
                return False
            raise RuntimeError(f"{self!r} is already held for writing by this thread (taken "
                               f"at {self.site}); an RWLock is not reentrant")
        self._lock_guard()
        mine = lw_load_ul(&self.rsite.serial) == me or lw_rrecs_find(&self.others, me) >= 0
        if mine:
            self._unlock_guard()
            if not blocking:
                return False
            raise RuntimeError(f"{self!r} is held for reading by this thread: waiting to "
                               "write would deadlock (release the read hold first)")
        while True:
            s = lw_load_u(&self.state)
            if not s & (RW_W | RW_READERS):
                ns = s | RW_W
                if counted and self.writers_waiting == 1:
                    ns &= ~RW_P                         # no writer waits any more
                if lwm_cas_u(&self.state, s, ns):
                    if counted:
                        self.writers_waiting -= 1
                    break
                continue
            if not blocking or timed_out:
                self._stop_waiting(counted)
                return False
            if not counted:
                counted = True
                self.writers_waiting += 1
            ns = s | RW_S
            if self.prefer_writers:
                ns |= RW_P
            if ns != s and not lwm_cas_u(&self.state, s, ns):
                continue
            try:
                if self._sleep(ns, deadline) == 1:
                    timed_out = 1
            except BaseException:
                self._stop_waiting(True)
                raise
        self._unlock_guard()
        return True

    # A writer that counted itself as waiting (if counted) gives up: the last
    # one clears P, which lets the readers it held back in. Caller: holds the
    # guard, which this lets go of.
    cdef void _stop_waiting(self, bint counted) noexcept:
        cdef bint wake = False
        if counted:
            self.writers_waiting -= 1
            if self.writers_waiting == 0 and lw_load_u(&self.state) & RW_P:
                wake = self._change(RW_P, 0, True)
        self._unlock_guard()
        if wake:
            self._wake()

    cdef int _release_write(self) except -1:
        if lw_load_ul(&self.wsite.serial) != lw_thread_serial():
            writer = _site_owner(&self.wsite)
            if writer is None:
                raise RuntimeError(f"{self!r} is not held for writing")
            raise RuntimeError(f"{self!r} is held for writing by thread {writer[0]} "
                               f"(taken at {writer[1]}), not by this thread")
        if self.w_ld_stack is not None:
            _ld_pop(self.w_ld_stack, self, False)
            self.w_ld_stack = None
        lw_site_clear(&self.wsite)
        lw_perturb()
        if self._change(RW_W, 0, True):
            self._wake()
        return 0

    def acquire_read(self, bint blocking=True, timeout=-1):
        """Take a read hold: True, or False if not possible without blocking or in time.

        ``timeout`` is in seconds, as for ``threading.Lock`` (-1: no limit); waits
        with the GIL released. Writer-preferring, a thread that already reads while
        a writer waits gets RuntimeError at once (waiting would deadlock).
        """
        return self._acquire_read(blocking, _deadline(timeout, blocking))

    def acquire_write(self, bint blocking=True, timeout=-1):
        """Take the write hold: True, or False if not possible without blocking or in time.

        ``timeout`` is in seconds, as for ``threading.Lock`` (-1: no limit); waits
        with the GIL released, keeping new readers out meanwhile (unless
        ``prefer_writers=False``). RuntimeError at once if this thread already
        holds the lock for writing.
        """
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
        cdef bint wake
        if lw_load_ul(&self.wsite.serial) != me:
            raise RuntimeError(f"{self!r} is not held for writing by this thread")
        snap = _site_snapshot(&self.wsite)
        # While W is held no reader can take the inline record: fill it in first.
        lw_site_take(&self.rsite, me, snap[0], snap[1], snap[2], lw_fork_generation)
        if self.w_ld_stack is not None:  # the same hold, now for reading: it keeps its place
            _ld_retag(self.w_ld_stack, self, True)
            self.r_ld_stack = self.w_ld_stack
            self.w_ld_stack = None
        lw_site_clear(&self.wsite)
        lw_perturb()
        self._lock_guard()
        self.epoch += 1
        wake = self._change(RW_W, RW_F, True)
        self._unlock_guard()
        if wake:
            self._wake()

    @property
    def writer(self):
        """``(thread ident, "file:line")`` of the writer, or None."""
        return _site_owner(&self.wsite)

    @property
    def site(self):
        """``file:line`` where the writer took the lock, or None."""
        writer = _site_owner(&self.wsite)
        return writer[1] if writer is not None else None

    @property
    def readers(self):
        """``[(thread ident, "file:line", depth), ...]`` of the readers."""
        cdef lw_rrec *copy = NULL
        cdef int n, i, cap
        holds = []
        inline = _site_snapshot(&self.rsite)
        if inline is not None:
            holds.append((inline[0], _format_site(inline[1], inline[2]), inline[3]))
        cap = 0
        while True:
            self._lock_guard()
            n = lw_rrecs_copy(&self.others, copy, cap)
            self._unlock_guard()
            if n <= cap:
                break
            lwm_free(copy)
            cap = n + 4
            copy = <lw_rrec *>lwm_malloc(cap * sizeof(lw_rrec))
            if copy == NULL:
                raise MemoryError()
        try:
            for i in range(n):
                holds.append((copy[i].ident, _format_site(<object>copy[i].code
                                                          if copy[i].code != NULL else None,
                                                          copy[i].lasti), copy[i].depth))
        finally:
            for i in range(n):
                lwm_xdecref(copy[i].code)
            lwm_free(copy)
        return holds


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
