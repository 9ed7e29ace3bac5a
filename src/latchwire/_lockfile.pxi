# Included by _core.pyx: the per-process record of one lock file (_LockFile),
# the kernel lock calls it makes, and its waits. FileLock (_filelock.pxi) is
# its face; a FileLock holds through the record of the inode its path named.
#
# A _LockFile is this process's one open file description of one inode, found
# by the inode (dev, ino) and, as a cache, by the paths opened to it. Its
# invariants hold whenever its mutex (mu) is free:
#
# 1. fd is set when the record is made and closed only when the record dies
#    (or by handover(), once the lock lives on in the descriptor handed out):
#    a descriptor through which the record may hold or be acquiring a kernel
#    lock is never closed. A second descriptor of the inode, opened through
#    another name, is closed at once under OFD locks and parked until the
#    record dies under classic POSIX locks, which any close() would drop; for
#    the same reason a POSIX record stays its inode's record until it dies,
#    even dead.
# 2. Every field marked (mu) changes only with mu held, and nothing decided
#    before mu was let go is acted on after it is taken again without being
#    checked again. mu is taken without holding the GIL while blocked
#    (lw_lock), and no Python code runs while it is held: no allocation of a
#    tracked object, no exception made, no reference dropped that could run
#    code. So the GIL is never needed to make progress, and nothing here
#    depends on it for atomicity.
# 3. kmode is the kernel lock held through fd; the nholders holders (FileLock
#    objects linked through hnext/hprev, each kept alive by a reference the
#    list owns) share it: none, one exclusive, or any number shared.
# 4. The kernel lock is changed outside mu by one thread at a time, the
#    claimant: claim names its waiter while it takes the lock for a first
#    holder (a try, then perhaps a wait in the kernel, then the path check) or
#    converts the sole holder's for upgrade(). Meanwhile nobody joins or waits
#    in the kernel. Only the claimant, or the thread holding mu while claim is
#    NULL, touches the path check's fields (watch, vpath, vepoch, vok).
# 5. Threads that cannot proceed sleep on their own lw_fwait word: queued in
#    arrival order (qhead..qtail, nexclusive of them exclusive), or as the
#    one upgrader. After every change _kick() wakes exactly the waiters that
#    can now proceed and are not woken yet; a waiter that leaves without the
#    lock kicks again, so a wake-up it took is passed on, never lost.
# 6. A grant through the kernel is kept only if the holder's path still names
#    the inode (_check_grant): one FIONREAD of the path watch when nothing
#    moved since the path was last walked, else a walk. A shared request that
#    joins shared holders makes no kernel call and is not checked again: the
#    file was checked when the kernel granted the lock, and a cooperating
#    remover needs the lock exclusively to unlink it.
# 7. dead (mu): the file was removed, or the lock handed over or adopted by
#    another record; it takes no new holders and each FileLock finds its file
#    again. A record made before fork() is dead in the child (generation),
#    where its mu is never taken (another thread may have held it at fork).

cdef enum:
    # Outcomes of an acquisition on a record (positive values are errnos).
    LW_GRANTED = 0
    LW_BUSY_HERE = -1       # held in this process, and the caller would not wait
    LW_BUSY_KERNEL = -2     # held by another process, and the caller would not wait
    LW_TIMED_OUT = -3
    LW_CANCELLED = -4
    LW_SELF_DEADLOCK = -5   # this thread holds it through another FileLock
    LW_HELD_HERE = -6       # this very FileLock holds it already
    LW_MOVED = -7           # the path no longer names the record's inode
    LW_DEAD = -8            # the record takes no holders any more
    LW_READ_ONLY = -9       # an exclusive lock through a read-only descriptor
    LW_UPGRADING = -10      # another upgrade() of this record is waiting
    LW_NOT_HELD = -11
    LW_FAILED = -100        # a Python exception is set
    # What the in-process state lets a request do.
    LW_JOIN = 1
    LW_CLAIM = 2
    LW_WAIT = 3


# One thread waiting on a record, on its own stack; linked while queued.
cdef struct lw_fwait:
    lw_fwait *next
    lw_fwait *prev
    void *lock              # the FileLock waiting (its caller holds a reference)
    unsigned int word       # futex word: 0 asleep, 1 woken
    int mode
    bint queued
    bint in_kernel          # its thread is in F_OFD_SETLKW (the claimant) (mu)
    bint kicked             # cancel() armed its wake timer (mu)
    timer_t timer           # its thread's wake timer, while in_kernel


# ---------------------------------------------------------------------------
# Kernel lock calls

# Set a whole-file lock of type (F_RDLCK, F_WRLCK, F_UNLCK) on fd with cmd;
# 0 or a positive errno. EACCES (POSIX's other "conflict") comes back as EAGAIN.
cdef int lw_setlk(int fd, int cmd, short type) noexcept nogil:
    cdef flock fl
    memset(&fl, 0, sizeof(fl))
    fl.l_type = type
    fl.l_whence = SEEK_SET
    if c_fcntl(fd, cmd, &fl) == 0:
        return 0
    if errno == EACCES:
        return EAGAIN
    return errno


# flock(2) on fd: op is LOCK_SH, LOCK_EX or LOCK_UN, with LOCK_NB not to wait;
# 0 or a positive errno (EWOULDBLOCK comes back as EAGAIN).
cdef int lw_flock_op(int fd, int op) noexcept nogil:
    if lw_flock(fd, op) == 0:
        return 0
    return errno


cdef inline int lw_flock_mode(int mode) noexcept nogil:
    return LOCK_SH if mode == LW_SHARED else LOCK_EX


# *same = 1 if path (not followed) names the inode (dev, ino); 0 or a positive
# errno (a missing path is *same = 0, not an error). While a descriptor of the
# inode is open its number cannot be reused, so equal numbers mean that file.
cdef int lw_path_names(const char *path, dev_t dev, ino_t ino, int *same) noexcept nogil:
    cdef struct_stat st
    same[0] = 0
    if lstat(path, &st) != 0:
        return 0 if errno == ENOENT else errno
    same[0] = st.st_dev == dev and st.st_ino == ino
    return 0


cdef unsigned int lw_record_wakes = 0    # waiters woken so far, for the tests


def _record_wakes():
    """How many times a thread waiting on a lock file record has been woken (tests)."""
    return lw_load_u(&lw_record_wakes)


cdef int lw_use_ofd = _os.environ.get("LATCHWIRE_LOCKS", "ofd") != "posix"


def _use_posix_locks(bint posix):
    """Make records created from now on use classic POSIX locks (for tests)."""
    global lw_use_ofd
    lw_store_i(&lw_use_ofd, not posix)


# ---------------------------------------------------------------------------
# The tables: records by inode, and by the paths last opened to them. Values
# are weak references; lw_table_mu guards every lookup-then-change, during
# which only dict operations on objects made beforehand run (rule 2).

cdef lw_mutex lw_table_mu
cdef dict _by_inode = {}        # (dev, ino) -> weakref to _LockFile
cdef dict _by_path = {}         # lock file path -> weakref to _LockFile


# The live record table holds under key (made in this generation, not
# dead), or None.
cdef _LockFile _table_get(dict table, object key):
    cdef object ref
    cdef _LockFile rec = None
    lw_lock(&lw_table_mu)
    ref = table.get(key)
    if ref is not None:
        rec = ref()
    lw_mutex_unlock(&lw_table_mu)
    if rec is not None and (rec.generation != lw_load_ul(&lw_fork_generation)
                            or lw_load_i(&rec.dead)):
        return None
    return rec


# Enter that path leads to rec. Caller: holds lw_table_mu.
cdef inline void _table_name(_LockFile rec, str path) noexcept:
    _by_path[path] = rec.wref
    rec.names.append(path)      # a resize allocates no tracked object


# Forget that path leads to rec (it no longer does, or rec is dead), and a dead
# OFD record's inode (a POSIX one stays the inode's until it dies: see
# _record_open).
cdef void _table_forget(str path, _LockFile rec) noexcept:
    lw_lock(&lw_table_mu)
    if _by_path.get(path) is rec.wref:
        del _by_path[path]
    if lw_load_i(&rec.dead) and not lw_load_i(&rec.posix) \
            and _by_inode.get(rec.ikey) is rec.wref:
        del _by_inode[rec.ikey]
    lw_mutex_unlock(&lw_table_mu)


# The record of the file at lockfile (bpath, its bytes), opened now: created
# with create_mode if create; opened read-only if for_shared and this process
# may only read it. If the inode is open here already, its record. Raises
# OSError (ELOOP for a symbolic link, EINVAL for what is not a regular file).
cdef _LockFile _record_open(str lockfile, bytes bpath, bint create, int create_mode,
                            bint for_shared):
    cdef const char *cpath = bpath
    cdef int flags = O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK
    cdef int fd, err = 0
    cdef bint rdonly = False
    cdef struct_stat st
    cdef _LockFile fresh, found = None
    cdef object ref = None
    cdef bint reuse
    if create:
        flags |= O_CREAT
    with nogil:
        if lw_perturb_on:
            lw_perturb_pause()
        fd = open(cpath, flags, create_mode)
        if fd < 0:
            err = errno
            if for_shared and (err == EACCES or err == EROFS):
                fd = open(cpath, (flags & ~O_RDWR) | O_RDONLY, create_mode)
                err = errno if fd < 0 else 0
                rdonly = fd >= 0
        if fd >= 0 and fstat(fd, &st) != 0:
            err = errno
            close(fd)
            fd = -1
    if err == ELOOP:
        raise OSError(ELOOP, "refusing to lock through a symbolic link", lockfile)
    if err:
        raise _oserror(err, lockfile)
    if not S_ISREG(st.st_mode):
        close(fd)
        raise OSError(EINVAL, "lock file is not a regular file", lockfile)
    fresh = _LockFile.__new__(_LockFile, lockfile, fd, st.st_dev, st.st_ino, rdonly)
    lw_perturb()
    # Nothing bound under the mutex may drop a last reference (rule 2).
    lw_lock(&lw_table_mu)
    ref = _by_inode.get(fresh.ikey)
    if ref is not None:
        found = ref()
    while ref is not None and found is None:
        # The inode's record is dying: its weak reference is dead, but its
        # descriptors are not closed yet (__dealloc__ closes them, then leaves the
        # tables). Under POSIX locks that close() would drop every lock this
        # process takes on the inode meanwhile, so wait for it to finish, in
        # either mode (the window is a few instructions, unless the GIL is off).
        lw_mutex_unlock(&lw_table_mu)
        lw_wait_dying_record()
        lw_lock(&lw_table_mu)
        ref = _by_inode.get(fresh.ikey)
        if ref is not None:
            found = ref()
    # A dead record is replaced, but under POSIX locks never while it lives: there
    # any close() of the inode drops every lock the process has on it, so one
    # record owns all of its descriptors. (Such a record died because its inode
    # lost its last name; an open that raced with the unlink finds LW_DEAD there
    # and looks again.)
    reuse = found is not None and found.generation == lw_fork_generation \
        and (not lw_load_i(&found.dead) or lw_load_i(&found.posix))
    if not reuse:
        _by_inode[fresh.ikey] = fresh.wref
    _table_name(found if reuse else fresh, lockfile)
    lw_mutex_unlock(&lw_table_mu)
    if not reuse:
        return fresh
    fresh.fd = -1               # fd is found's inode's: found decides its fate
    found._take_duplicate(fd)
    return found


@cython.final
@cython.no_gc_clear
@cython.auto_pickle(False)
cdef class _LockFile:
    """One inode's open file description in this process, and who holds it here.

    All FileLock objects whose paths lead to one inode share this record, so
    the process opens the file once, never closes a descriptor of it while a
    lock may be held through it (the close trap of classic POSIX locks), and
    its threads exclude each other here before they meet in the kernel.
    """
    cdef lw_mutex mu
    cdef readonly str path      # the name it was first opened by
    cdef int fd
    cdef dev_t dev
    cdef ino_t ino
    cdef readonly bint rdonly   # opened read-only: shared locks only
    cdef int posix              # classic POSIX locks (mu)
    cdef unsigned long generation
    cdef int dead               # (mu)
    cdef int kmode              # (mu)
    cdef int fmode              # the flock(2) lock held through fd, for flock=True holders (mu)
    cdef void *holders          # first holder, a FileLock (mu)
    cdef int nholders           # (mu)
    cdef lw_fwait *claim        # (mu)
    cdef lw_fwait *upgrader     # (mu)
    cdef lw_fwait *qhead        # (mu)
    cdef lw_fwait *qtail        # (mu)
    cdef int nexclusive         # queued exclusive waiters (mu)
    cdef _Watch watch           # the claimant's: the path watch of this inode
    cdef bytes vpath            # the claimant's: the path last walked, ...
    cdef unsigned int vepoch    # ... in this watch epoch, ...
    cdef bint vok               # ... and whether the watch may vouch for it since
    cdef unsigned int walks     # the claimant's: how often the path was walked
    cdef list parked            # descriptors of the inode to close when it dies (mu)
    cdef list names             # the paths the tables may know it by (lw_table_mu)
    cdef readonly object ikey   # (dev, ino)
    cdef object wref            # a weak reference to self, as the tables hold it
    cdef object __weakref__

    def __cinit__(self, str path, int fd, dev_t dev, ino_t ino, bint rdonly):
        self.path = path
        self.fd = fd
        self.dev = dev
        self.ino = ino
        self.rdonly = rdonly
        self.posix = not lw_load_i(&lw_use_ofd)
        self.generation = lw_load_ul(&lw_fork_generation)
        self.parked = []
        self.names = []
        self.ikey = (dev, ino)
        self.wref = _weakref.ref(self)

    def __dealloc__(self):
        # Nothing holds it: a holder keeps its record alive through its FileLock.
        # Under POSIX locks no other record of the inode lives (see _record_open).
        # The descriptors are closed before the record leaves the tables: until
        # it has, a record opened for the inode waits (_record_open), so a POSIX
        # lock it takes cannot be dropped by these close() calls.
        cdef int fd
        if self.fd >= 0:
            close(self.fd)
        for fd in self.parked:
            close(fd)
        if self.generation == lw_fork_generation:
            _table_drop(self)
            if self.watch is not None:
                lw_watch_unuse(self.watch)

    @property
    def lock_kind(self):
        return "posix" if lw_load_i(&self.posix) else "ofd"

    # fd is another descriptor of this inode, opened here through another
    # name: close it, or under POSIX locks keep it until the record dies.
    cdef void _take_duplicate(self, int fd) noexcept:
        lw_lock(&self.mu)
        if self.posix:
            self.parked.append(fd)      # a resize allocates no tracked object
            fd = -1
        lw_mutex_unlock(&self.mu)
        if fd >= 0:
            close(fd)

    cdef inline int _cmd(self, bint wait) noexcept:
        if self.posix:
            return F_SETLKW if wait else F_SETLK
        return F_OFD_SETLKW if wait else F_OFD_SETLK

    # Let go of the kernel locks held through fd: the flock(2) one first (it was
    # taken last), then the OFD or POSIX one. 0 or a positive errno (nothing
    # changed then). Caller: holds mu, or is the claimant.
    cdef int _unlock_kernel(self) noexcept:
        cdef int err
        if self.fmode:
            err = lw_flock_op(self.fd, LOCK_UN)
            if err:
                return err
            self.fmode = LW_UNLOCKED
        err = lw_setlk(self.fd, self._cmd(False), F_UNLCK)
        if not err:
            self.kmode = LW_UNLOCKED
        return err

    # ---- waiters (mu) ----------------------------------------------------

    cdef inline void _enqueue(self, lw_fwait *w) noexcept:
        w.next = NULL
        w.prev = self.qtail
        if self.qtail != NULL:
            self.qtail.next = w
        else:
            self.qhead = w
        self.qtail = w
        w.queued = True
        if w.mode == LW_EXCLUSIVE:
            self.nexclusive += 1

    cdef inline void _dequeue(self, lw_fwait *w) noexcept:
        if not w.queued:
            return
        if w.prev != NULL:
            w.prev.next = w.next
        else:
            self.qhead = w.next
        if w.next != NULL:
            w.next.prev = w.prev
        else:
            self.qtail = w.prev
        w.queued = False
        if w.mode == LW_EXCLUSIVE:
            self.nexclusive -= 1

    # Wake w unless it is awake already. Its stack frame cannot go while mu is held.
    cdef inline void _signal(self, lw_fwait *w) noexcept:
        if not w.word:
            lw_store_u(&w.word, 1)
            lw_futex_wake_n(&w.word, 1)
            lw_inc_u(&lw_record_wakes)

    # Wake the waiters the state now lets proceed (invariant 5).
    cdef inline void _kick(self) noexcept:
        if self.qhead != NULL or self.upgrader != NULL:
            self._wake_some()

    cdef void _wake_some(self) noexcept:
        cdef lw_fwait *w
        if self.dead:
            w = self.qhead
            while w != NULL:
                self._signal(w)
                w = w.next
            if self.upgrader != NULL:
                self._signal(self.upgrader)
            return
        if self.claim != NULL:
            return
        if self.upgrader != NULL:
            if self.nholders == 1:
                self._signal(self.upgrader)
            return
        if self.nholders == 0:
            if self.qhead != NULL:
                self._signal(self.qhead)
            return
        if self.kmode == LW_SHARED and self.nexclusive == 0:
            w = self.qhead
            while w != NULL:
                self._signal(w)
                w = w.next

    # What the in-process state lets a request for mode do now (LW_JOIN,
    # LW_CLAIM or LW_WAIT). Writers are preferred here: nobody joins a shared
    # hold while an exclusive request waits.
    cdef inline int _admission(self, int mode) noexcept:
        if self.claim != NULL or self.upgrader != NULL:
            return LW_WAIT
        if self.nholders == 0:
            return LW_CLAIM
        if mode == LW_SHARED and self.kmode == LW_SHARED and self.nexclusive == 0:
            return LW_JOIN
        return LW_WAIT

    # ---- holders (mu) ----------------------------------------------------

    # h holds in mode from now on, unless it holds already (through another
    # record: then NULL, and nothing changed); the list's reference keeps it
    # alive. Returns the site of h's previous hold, with a reference for the
    # caller to drop once mu is free (code objects take weak references, whose
    # callbacks run code).
    cdef void *_add_holder(self, FileLock h, int mode, bint detached, object code,
                           int lasti) noexcept:
        cdef void *old_site = <void *>h.site_code
        if not lw_cas_i(&h.hold, LW_UNLOCKED, mode):
            return NULL
        Py_INCREF(h.site_code)
        Py_INCREF(h)
        h.hprev = NULL
        h.hnext = self.holders
        if self.holders != NULL:
            (<FileLock>self.holders).hprev = <void *>h
        self.holders = <void *>h
        self.nholders += 1
        h.lost = False
        h.grants += 1
        h.site_code = code              # the old one lives on in old_site
        h.site_lasti = lasti
        if detached:
            h.thread = h.serial = 0
        else:
            h.thread = PyThread_get_thread_ident()
            h.serial = lw_thread_serial()
        return old_site

    # h no longer holds (its reference is the caller's to drop, after mu).
    cdef void _remove_holder(self, FileLock h) noexcept:
        if h.hprev != NULL:
            (<FileLock>h.hprev).hnext = h.hnext
        else:
            self.holders = h.hnext
        if h.hnext != NULL:
            (<FileLock>h.hnext).hprev = h.hprev
        h.hnext = h.hprev = NULL
        self.nholders -= 1
        lw_store_i(&h.hold, LW_UNLOCKED)

    # Whether a holder other than h was taken by the calling thread.
    cdef bint _held_by_this_thread(self, FileLock h) noexcept:
        cdef unsigned long me = lw_thread_serial()
        cdef void *p = self.holders
        while p != NULL:
            if p != <void *>h and (<FileLock>p).serial == me:
                return True
            p = (<FileLock>p).hnext
        return False

    # Where the calling thread took a hold other than h's, for an error message.
    cdef str _site_of_this_thread(self, FileLock h):
        cdef unsigned long me = lw_thread_serial()
        cdef void *p
        cdef object code = None
        cdef int lasti = 0
        lw_lock(&self.mu)
        p = self.holders
        while p != NULL:
            if p != <void *>h and (<FileLock>p).serial == me:
                code = (<FileLock>p).site_code
                lasti = (<FileLock>p).site_lasti
                break
            p = (<FileLock>p).hnext
        lw_mutex_unlock(&self.mu)
        return _format_site(code, lasti)

    # ---- acquisition -----------------------------------------------------

    # Give h a hold in mode, or say why not: an LW_ outcome or a positive errno;
    # *grant is the hold's number (h.grants) on LW_GRANTED. code/lasti: where
    # it is taken. Raises what a signal handler raised, or OSError from the
    # path check. Caller: holds the GIL and a reference to h; h's record is self.
    cdef int _acquire(self, FileLock h, int mode, bint blocking, double deadline,
                      bint detached, unsigned int cgen, object code, int lasti,
                      unsigned int *grant) except LW_FAILED:
        cdef lw_fwait w
        cdef int out, slot = -1
        cdef void *old_site = NULL
        memset(&w, 0, sizeof(w))
        w.lock = <void *>h
        w.mode = mode
        lw_lock(&self.mu)
        try:
            while True:
                if self.dead:
                    out = LW_DEAD
                    break
                if lw_load_u(&h.cancel_gen) != cgen:
                    out = LW_CANCELLED
                    break
                if h.hold:
                    out = LW_HELD_HERE
                    break
                out = self._admission(mode)
                if out == LW_WAIT and mode == LW_SHARED and self.kmode == LW_SHARED \
                        and self.nholders and self.claim == NULL and self.upgrader == NULL \
                        and self._held_by_this_thread(h):
                    out = LW_JOIN       # it reads already: waiting behind a writer would deadlock
                if out == LW_JOIN and h.flock and not self.fmode:
                    # The holders took no flock(2) lock: take one, if it is free.
                    if lw_flock_op(self.fd, LOCK_SH | LOCK_NB) == 0:
                        self.fmode = LW_SHARED
                    else:
                        out = LW_WAIT
                if out == LW_JOIN:
                    old_site = self._add_holder(h, mode, detached, code, lasti)
                    out = LW_GRANTED if old_site != NULL else LW_HELD_HERE
                    break
                if out == LW_CLAIM:
                    self._dequeue(&w)
                    if self.rdonly and mode == LW_EXCLUSIVE:
                        out = LW_READ_ONLY
                        break
                    out = self._claim_lock(&w, h, mode, blocking, deadline, cgen)
                    if out == LW_GRANTED:
                        old_site = self._add_holder(h, mode, detached, code, lasti)
                        if old_site == NULL:    # held through another record meanwhile
                            self._unlock_kernel()
                            out = LW_HELD_HERE
                    break
                # Wait here, for the holders or the claimant of this process.
                if not blocking:
                    out = LW_BUSY_HERE
                    break
                if self._held_by_this_thread(h):
                    out = LW_SELF_DEADLOCK
                    break
                if deadline >= 0 and lw_now() >= deadline:
                    out = LW_TIMED_OUT
                    break
                if not w.queued:
                    self._enqueue(&w)
                w.word = 0
                lw_mutex_unlock(&self.mu)
                try:
                    _watch_begin(self.dev, self.ino, 0, -1, _lock_kind(self, False),
                                 mode == LW_EXCLUSIVE, True, h, &slot)
                    lw_wait_word(&w.word, 0, deadline)
                finally:
                    _board_wipe(slot)   # a claim next writes its own (see _kernel_wait)
                    slot = -1
                    lw_lock(&self.mu)
                lw_perturb()
            grant[0] = h.grants
        finally:
            self._dequeue(&w)
            self._kick()
            lw_mutex_unlock(&self.mu)
        if old_site != NULL:
            Py_DECREF(<object>old_site)
        return out

    # Take the kernel lock in mode for a first holder, and keep it only if h's
    # path still names the inode. Caller: holds mu, nholders is 0 and claim
    # NULL; returns with mu held and claim NULL again, kmode set on
    # LW_GRANTED (the caller adds the holder); raises with mu held and
    # nothing locked.
    cdef int _claim_lock(self, lw_fwait *w, FileLock h, int mode, bint blocking,
                         double deadline, unsigned int cgen) except LW_FAILED:
        cdef short ltype = F_RDLCK if mode == LW_SHARED else F_WRLCK
        cdef int err, out
        cdef bint waited, granted, checked
        while True:
            err = lw_setlk(self.fd, self._cmd(False), ltype)
            if err == EINVAL and not self.posix:
                self.posix = True       # this kernel predates OFD locks
                lw_store_i(&lw_use_ofd, False)
                continue
            break
        if err and err != EAGAIN:
            return err
        if err == EAGAIN and not blocking:
            return LW_BUSY_KERNEL
        checked = False
        if err == 0 and self.vok and (h.bpath is self.vpath or h.bpath == self.vpath) \
                and lw_watch_quiet(self.watch, self.vepoch):
            # The fast path: one FIONREAD vouched for the path.
            if not h.flock:
                self.kmode = mode
                return LW_GRANTED
            err = lw_flock_op(self.fd, lw_flock_mode(mode) | LOCK_NB)
            if err == 0:
                self.kmode = self.fmode = mode
                return LW_GRANTED
            if err != EAGAIN or not blocking:
                lw_setlk(self.fd, self._cmd(False), F_UNLCK)
                return LW_BUSY_KERNEL if err == EAGAIN else err
            checked = True              # wait for the flock(2) lock below
            err = 0
        waited = err == EAGAIN
        granted = not waited
        self.claim = w
        lw_mutex_unlock(&self.mu)
        lw_perturb()
        try:
            out = LW_GRANTED
            if waited:
                out = self._kernel_wait(w, h, ltype, deadline, cgen, False)
                granted = out == LW_GRANTED
            if granted and not checked:
                out = self._check_grant(h)  # unlocks itself if the file moved
                granted = out == LW_GRANTED
            if granted and h.flock:
                out = self._flock_take(w, h, mode, blocking, deadline, cgen)
        except BaseException:
            if granted:             # granted, then a check or wait failed: let go of it
                self._unlock_kernel()
            lw_lock(&self.mu)
            self.claim = NULL
            self.kmode = LW_UNLOCKED
            raise
        if granted and out != LW_GRANTED:
            self._unlock_kernel()   # the flock(2) lock was not had
        lw_lock(&self.mu)
        self.claim = NULL
        if out == LW_GRANTED:
            self.kmode = mode
        else:
            self.kmode = LW_UNLOCKED
            if out == LW_DEAD:
                self.dead = True
        return out

    # Take the flock(2) lock of mode through fd as well, after the OFD or POSIX
    # one: LW_GRANTED (fmode set), LW_BUSY_KERNEL, or as _kernel_wait. Caller:
    # the claimant, without mu.
    cdef int _flock_take(self, lw_fwait *w, FileLock h, int mode, bint blocking,
                         double deadline, unsigned int cgen) except LW_FAILED:
        cdef int err = lw_flock_op(self.fd, lw_flock_mode(mode) | LOCK_NB)
        if err == EAGAIN:
            if not blocking:
                return LW_BUSY_KERNEL
            err = self._kernel_wait(w, h, lw_flock_mode(mode), deadline, cgen, True)
        if err == 0:
            self.fmode = mode
        return err

    # Keep the lock just granted through fd only if h's path names the inode:
    # LW_GRANTED, or (unlocked again) LW_MOVED, or LW_DEAD when the inode has
    # no name left. The watch vouches for the path if nothing moved since it
    # was last walked; otherwise it is walked (and the watch set up again).
    # Caller: the claimant, without mu. Raises OSError if the walk fails.
    cdef int _check_grant(self, FileLock h) except LW_FAILED:
        cdef const char *cpath = h.bpath
        cdef unsigned int epoch = 0
        cdef bint watched = False
        cdef int err, same = 0
        cdef struct_stat st
        if self.vok and (h.bpath is self.vpath or h.bpath == self.vpath) \
                and lw_watch_quiet(self.watch, self.vepoch):
            return LW_GRANTED
        # Watch first, then walk: whatever moves after the walk shows in the watch.
        # A record's first walk sets up no watch: most records that live for one
        # grant (a lockspace's leases) never come back, and a watch costs two
        # system calls to make and to drop.
        self.walks += 1
        if self.walks > 1 and lw_watch_ready():
            lw_watch_drain()
            if self.watch is None or self.watch.wd < 0:
                if self.watch is not None:
                    lw_watch_unuse(self.watch)
                self.watch = lw_watch_file(self.fd)
            if self.watch is not None:
                lw_store_u(&self.watch.dirty, 0)
                epoch = lw_load_u(&lw_watch_epoch)
                watched = lw_watch_dirs(h.bpath, epoch)
        with nogil:
            if lw_perturb_on:
                lw_perturb_pause()
            err = lw_path_names(cpath, self.dev, self.ino, &same)
        if err:
            raise _oserror(err, h.lockfile)
        if same:
            self.vpath = h.bpath
            self.vepoch = epoch
            self.vok = watched
            return LW_GRANTED
        self.vok = False
        lw_setlk(self.fd, self._cmd(False), F_UNLCK)
        if fstat(self.fd, &st) == 0 and st.st_nlink == 0:
            return LW_DEAD
        return LW_MOVED

    # Wait in the kernel for the lock of type ltype through fd (with use_flock,
    # the flock(2) lock of operation ltype, LOCK_SH or LOCK_EX): as
    # lw_kernel_wait (_kernelwait.pxi), checked for deadlocks. Caller: the
    # claimant (w is claim), without mu.
    cdef int _kernel_wait(self, lw_fwait *w, FileLock h, short ltype, double deadline,
                          unsigned int cgen, bint use_flock) except LW_FAILED:
        cdef lw_kreq req
        memset(&req, 0, sizeof(req))
        req.fd = self.fd
        req.cmd = 0 if use_flock else self._cmd(True)
        req.type = ltype
        req.kind = _lock_kind(self, use_flock)
        req.exclusive = ltype == (LOCK_EX if use_flock else F_WRLCK)
        req.posix = self.posix and not use_flock
        req.checked = True
        req.dev = self.dev
        req.ino = self.ino
        return lw_kernel_wait(&self.mu, w, &req, h, deadline, cgen)

    # ---- changes by a holder --------------------------------------------

    # Drop h's hold; the kernel lock goes with the last holder. 0, LW_NOT_HELD,
    # LW_UPGRADING or a positive errno. On 0, *stack is the checker's held list
    # the hold was on (with a reference), or NULL. Caller: holds a reference to
    # h; on 0 lets go of the hold's own reference and of *stack (h._released()).
    cdef int _release(self, FileLock h, bint lost, void **stack) noexcept:
        cdef int err = 0
        stack[0] = NULL
        lw_lock(&self.mu)
        if not h.hold:
            err = LW_NOT_HELD
        elif (self.upgrader != NULL and self.upgrader.lock == <void *>h) \
                or (self.claim != NULL and self.claim.lock == <void *>h):
            err = LW_UPGRADING
        else:
            if h.hold == LW_EXCLUSIVE or self.nholders == 1:
                err = self._unlock_kernel()
            if not err:
                self._remove_holder(h)
                h.lost = lost
                if h.ld_stack is not None:  # handed to the caller, with a reference
                    Py_INCREF(h.ld_stack)
                    stack[0] = <void *>h.ld_stack
                    h.ld_stack = None
                self._kick()
        lw_mutex_unlock(&self.mu)
        return err

    # Convert h's shared hold into an exclusive one without letting go of it:
    # 0 or an outcome as _acquire's. Caller: holds a reference to h.
    cdef int _upgrade(self, FileLock h, bint blocking, double deadline) except LW_FAILED:
        cdef lw_fwait w
        cdef unsigned int cgen = lw_load_u(&h.cancel_gen)
        cdef int out
        memset(&w, 0, sizeof(w))
        w.lock = <void *>h
        w.mode = LW_EXCLUSIVE
        lw_lock(&self.mu)
        try:
            while True:
                if h.hold != LW_SHARED:
                    out = LW_NOT_HELD
                    break
                if self.upgrader != NULL and self.upgrader != &w:
                    out = LW_UPGRADING
                    break
                if lw_load_u(&h.cancel_gen) != cgen:
                    out = LW_CANCELLED
                    break
                if self.nholders == 1 and self.claim == NULL:
                    if self.upgrader == &w:
                        self.upgrader = NULL
                    out = self._convert(&w, h, blocking, deadline, cgen)
                    break
                if not blocking:
                    out = LW_BUSY_HERE
                    break
                if self._held_by_this_thread(h):
                    out = LW_SELF_DEADLOCK
                    break
                if deadline >= 0 and lw_now() >= deadline:
                    out = LW_TIMED_OUT
                    break
                self.upgrader = &w      # nobody joins meanwhile
                w.word = 0
                lw_mutex_unlock(&self.mu)
                try:
                    lw_wait_word(&w.word, 0, deadline)
                finally:
                    lw_lock(&self.mu)
                lw_perturb()
        finally:
            if self.upgrader == &w:
                self.upgrader = NULL
            self._kick()
            lw_mutex_unlock(&self.mu)
        return out

    # The kernel side of an upgrade: the kernel converts an OFD or POSIX lock
    # in place, so the shared lock stays held while the exclusive one is waited
    # for, and if that fails. Caller: holds mu, h is the sole holder, claim is
    # NULL; returns (or raises) with mu held.
    cdef int _convert(self, lw_fwait *w, FileLock h, bint blocking, double deadline,
                      unsigned int cgen) except LW_FAILED:
        cdef int out
        cdef int err = lw_setlk(self.fd, self._cmd(False), F_WRLCK)
        if err == 0:
            out = LW_GRANTED
        elif err != EAGAIN:
            return err
        elif not blocking:
            return LW_BUSY_KERNEL
        else:
            self.claim = w
            lw_mutex_unlock(&self.mu)
            try:
                out = self._kernel_wait(w, h, F_WRLCK, deadline, cgen, False)
            finally:
                lw_lock(&self.mu)
                self.claim = NULL
        if out == LW_GRANTED and self.fmode == LW_SHARED:
            out = self._flock_convert(w, h, blocking, deadline, cgen)
            if out != LW_GRANTED:   # back to where it was; never waits
                lw_setlk(self.fd, self._cmd(False), F_RDLCK)
        if out == LW_GRANTED:
            self.kmode = LW_EXCLUSIVE
            lw_store_i(&h.hold, LW_EXCLUSIVE)
        return out

    # The flock(2) side of an upgrade. flock(2) converts by letting go and
    # taking again, so a failed conversion may cost the shared flock(2) lock;
    # it is taken again if it is free (fmode says whether it was). Caller:
    # holds mu, the OFD or POSIX lock is exclusive already, claim is NULL;
    # returns (or raises) with mu held.
    cdef int _flock_convert(self, lw_fwait *w, FileLock h, bint blocking, double deadline,
                            unsigned int cgen) except LW_FAILED:
        cdef int out = lw_flock_op(self.fd, LOCK_EX | LOCK_NB)
        if out == EAGAIN:
            if not blocking:
                out = LW_BUSY_KERNEL
            else:
                self.claim = w
                lw_mutex_unlock(&self.mu)
                try:
                    out = self._kernel_wait(w, h, LOCK_EX, deadline, cgen, True)
                finally:
                    lw_lock(&self.mu)
                    self.claim = NULL
        if out == LW_GRANTED:
            self.fmode = LW_EXCLUSIVE
        elif lw_flock_op(self.fd, LOCK_SH | LOCK_NB) != 0:
            self.fmode = LW_UNLOCKED
        return out

    # Turn h's exclusive hold into a shared one: 0, LW_NOT_HELD or an errno.
    cdef int _downgrade(self, FileLock h) noexcept:
        cdef int err = LW_NOT_HELD
        lw_lock(&self.mu)
        if h.hold == LW_EXCLUSIVE:
            err = lw_setlk(self.fd, self._cmd(False), F_RDLCK)
            if not err:
                self.kmode = LW_SHARED
                lw_store_i(&h.hold, LW_SHARED)
                self._kick()
        lw_mutex_unlock(&self.mu)
        return err

    # Whether h's path still names the inode; raises OSError if it cannot be
    # walked. Caller: h holds (it walks the path, not fd).
    cdef bint _at_path(self, FileLock h) except -1:
        cdef const char *cpath = h.bpath
        cdef int err, same = 0
        with nogil:
            err = lw_path_names(cpath, self.dev, self.ino, &same)
        if err:
            raise _oserror(err, h.lockfile)
        return same

    # The file is gone or moved while h held it: drop h's hold as lost (it
    # guards nothing), and let nobody new in if the inode has no name left.
    # 0 (*stack as _release's) or as _release.
    cdef int _lose(self, FileLock h, void **stack) noexcept:
        cdef struct_stat st
        cdef int err = self._release(h, True, stack)
        if err == 0 and fstat(self.fd, &st) == 0 and st.st_nlink == 0:
            lw_lock(&self.mu)
            self.dead = True
            self._kick()
            lw_mutex_unlock(&self.mu)
        return err

    # Unlink the path while h holds the file exclusively, then release: anyone
    # granted the dead inode afterwards sees it gone and moves to a new file.
    # 0 (*stack as _release's) or as _release; raises OSError if the unlink fails.
    cdef int _remove(self, FileLock h, void **stack) except LW_FAILED:
        cdef int err
        if self._at_path(h) and unlink(h.bpath) != 0:
            raise _oserror(errno, h.lockfile)
        lw_lock(&self.mu)
        self.dead = True        # the waiters here must find the new file
        lw_mutex_unlock(&self.mu)
        return self._release(h, False, stack)

    # Give the kernel lock away: return a new descriptor (the caller's) of the
    # open file description that holds it, with every hold here dropped
    # without unlocking; the record is dead from then on. The holders'
    # references are appended to dropped, for the caller to let go of.
    # Raises OSError (POSIX locks, dup failure) or RuntimeError (a wait here).
    cdef int _handover(self, list dropped) except -1:
        cdef int fd = -1, err = 0
        cdef void *p
        cdef FileLock h
        if self.posix:
            raise OSError(EINVAL, "classic POSIX locks belong to a process and cannot be "
                          "handed over", self.path)
        lw_lock(&self.mu)
        if self.claim != NULL or self.upgrader != NULL or self.qhead != NULL:
            err = -1
        else:
            fd = c_fcntl(self.fd, F_DUPFD_CLOEXEC, 0)
            if fd < 0:
                err = errno
        if err == 0:
            while self.holders != NULL:
                p = self.holders
                self._remove_holder(<FileLock>p)
                dropped.append(<FileLock>p)     # takes over the list's reference
                Py_DECREF(<FileLock>p)          # (append added one)
            close(self.fd)                      # the lock lives on through fd
            self.fd = -1
            self.kmode = LW_UNLOCKED
            self.dead = True
            self._kick()
        lw_mutex_unlock(&self.mu)
        if err == -1:
            raise RuntimeError(f"{self.path}: a thread is waiting on this lock; cancel it first")
        if err:
            raise _oserror(err, self.path)
        return fd

    # The record is no longer the one for its inode: nobody new gets in.
    # 0, or LW_HELD_HERE if something holds or claims it.
    cdef int _retire(self) noexcept:
        cdef int out = 0
        lw_lock(&self.mu)
        if self.nholders or self.claim != NULL:
            out = LW_HELD_HERE
        else:
            self.dead = True
            self._kick()
        lw_mutex_unlock(&self.mu)
        return out

    # Wake h's waits on this record: cancel() has moved h.cancel_gen on.
    cdef void _cancel(self, FileLock h) noexcept:
        cdef lw_fwait *w
        lw_lock(&self.mu)
        if self.claim != NULL and self.claim.lock == <void *>h:
            lw_kernel_wait_kick(self.claim)
        if self.upgrader != NULL and self.upgrader.lock == <void *>h:
            self._signal(self.upgrader)
        w = self.qhead
        while w != NULL:
            if w.lock == <void *>h:
                self._signal(w)
            w = w.next
        lw_mutex_unlock(&self.mu)

    # In a fork child: close the inherited descriptors and drop the holds (the
    # parent's). Closing cannot release the parent's lock: an OFD lock lives
    # while the parent's descriptor does, and a POSIX lock is the parent's.
    # mu is not taken: a thread that no longer exists may have held it.
    cdef void _forget_inherited(self) noexcept:
        cdef void *p
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
        for fd in self.parked:
            close(fd)
        self.parked = []
        while self.holders != NULL:
            p = self.holders
            self._remove_holder(<FileLock>p)
            Py_DECREF(<FileLock>p)
        self.qhead = self.qtail = self.claim = self.upgrader = NULL
        lw_mutex_reset(&self.mu)


# A dying record leaves the tables (its weak references are dead already).
# Pause while a dying record finishes closing (see _record_open): one sleep of
# 20 us, the GIL released. Caller: holds the GIL, not lw_table_mu.
cdef void lw_wait_dying_record() noexcept:
    cdef timespec ts
    ts.tv_sec = 0
    ts.tv_nsec = 20000
    with nogil:
        nanosleep(&ts, NULL)


cdef void _table_drop(_LockFile rec) noexcept:
    lw_lock(&lw_table_mu)
    if _by_inode.get(rec.ikey) is rec.wref:
        del _by_inode[rec.ikey]
    for name in rec.names:
        if _by_path.get(name) is rec.wref:
            del _by_path[name]
    lw_mutex_unlock(&lw_table_mu)


def _after_fork_in_child():
    """Close the descriptors of inherited records; they are dead in a child."""
    cdef _LockFile rec
    for ref in list(_by_inode.values()):
        rec = ref()
        if rec is not None:
            rec._forget_inherited()
    _by_inode.clear()
    _by_path.clear()
    _after_fork_watches()


_os.register_at_fork(after_in_child=_after_fork_in_child)


# The C half, before any Python code runs in the child: mutexes a vanished
# thread may have held, the wake timer (timers are not inherited), the watch.
cdef void lw_lockfile_after_fork_child() noexcept nogil:
    lw_mutex_reset(&lw_table_mu)
    lw_thread_timer_forget()
    lw_watch_after_fork_child()


pthread_atfork(NULL, NULL, lw_lockfile_after_fork_child)
