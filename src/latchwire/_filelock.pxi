# Included by _core.pyx: kernel file locks and FileLock.
#
# - For one lock file, at most one thread waits in the kernel at a time
#   (_LockFile.kwaiter); every other thread of the process waits on the
#   record's futex word (_LockFile.seq) and is woken whenever the record changes.
# - Waking a thread blocked in F_OFD_SETLKW takes a signal: each kernel wait
#   creates a POSIX timer aimed at its own thread (SIGEV_THREAD_ID) carrying the
#   wake signal, whose handler does nothing but make the call return EINTR. The
#   timer fires at the deadline, or at once when another thread cancels, and
#   then every millisecond until the waiter has noticed, which closes the race
#   of a signal arriving just before the thread entered the call.

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


# *same = 1 if path (not followed) names the inode (dev, ino); 0 or a positive
# errno (a missing path is *same = 0, not an error). The check made after
# every grant: while a descriptor of the inode is open its number cannot be
# reused, so equal numbers mean the very file held.
cdef int lw_path_names(const char *path, dev_t dev, ino_t ino, int *same) noexcept nogil:
    cdef struct_stat st
    same[0] = 0
    if lstat(path, &st) != 0:
        return 0 if errno == ENOENT else errno
    same[0] = st.st_dev == dev and st.st_ino == ino
    return 0


cdef bint lw_use_ofd = _os.environ.get("LATCHWIRE_LOCKS", "ofd") != "posix"


def _use_posix_locks(bint posix):
    """Make records created from now on use classic POSIX locks (for tests)."""
    global lw_use_ofd
    lw_use_ofd = not posix


cdef object _records = _weakref.WeakValueDictionary()
cdef object _posix_inodes = _weakref.WeakValueDictionary()   # (dev, ino) -> record


class _SameFile(Exception):
    """Internal: the file opened is already open in this process under another record."""

    def __init__(self, record):
        self.record = record


# The process's record for lockfile, made if there is none in this generation.
cdef _LockFile _record_for(str lockfile, int create_mode):
    cdef _LockFile rec = _records.get(lockfile)
    if rec is None or rec.generation != lw_fork_generation:
        rec = _LockFile(lockfile, create_mode)
        _records[lockfile] = rec
    return rec


def _after_fork_in_child():
    """Close the descriptors of inherited records; they are dead in a child."""
    cdef _LockFile rec
    for rec in list(_records.values()):
        rec._forget_inherited()
    _records.clear()


_os.register_at_fork(after_in_child=_after_fork_in_child)


@cython.final
@cython.auto_pickle(False)
cdef class _LockFile:
    """One lock file's open file description in this process, and who holds it here.

    All FileLock objects for one lock file share this record, so the process
    opens the file once and never closes a descriptor of it while a lock is
    held (the close trap of classic POSIX locks), and so that threads of this
    process exclude each other here before they meet in the kernel.
    """
    cdef readonly str path
    cdef bytes bpath
    cdef int create_mode
    cdef int fd
    cdef readonly bint posix  # classic POSIX locks: OFD locks were refused or not asked for
    cdef int kmode            # what the kernel lock held through fd is
    cdef bint stale           # fd's inode is no longer at path: reopen before locking
    cdef dev_t dev            # fd's inode
    cdef ino_t ino
    cdef list parked          # descriptors of fd's inode that must not be closed yet
    cdef unsigned long generation
    cdef list holders         # the FileLock objects holding, oldest first
    cdef FileLock upgrader    # a holder waiting here to upgrade, or None
    cdef FileLock kwaiter     # the holder-to-be whose thread waits in the kernel, or None
    cdef timer_t ktimer       # kwaiter's wake timer
    cdef unsigned int seq     # futex word: bumped whenever a waiter might now proceed
    cdef int nwaiters         # threads sleeping on seq
    cdef object __weakref__

    def __cinit__(self, str path, int create_mode):
        self.path = path
        self.bpath = _os.fsencode(path)
        self.create_mode = create_mode
        self.fd = -1
        self.posix = not lw_use_ofd
        self.generation = lw_fork_generation
        self.holders = []
        self.parked = []

    def __dealloc__(self):
        # Nothing is held: a record is kept alive while anything holds it.
        if self.fd >= 0:
            close(self.fd)
        if self.parked is not None:     # the collector may have cleared it
            for fd in self.parked:
                close(fd)

    # Open the lock file (creating it if create) in place of any descriptor
    # held before. Caller: no lock is held through the old one. Raises OSError.
    cdef int _open(self, bint create) except -1:
        cdef const char *cpath = self.bpath
        cdef int flags = O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK
        cdef int fd, err = 0
        if create:
            flags |= O_CREAT
        cdef struct_stat st
        with nogil:
            fd = open(cpath, flags, self.create_mode)
            if fd < 0:
                err = errno
            elif fstat(fd, &st) != 0:
                err = errno
                close(fd)
        if err == ELOOP:
            raise OSError(ELOOP, "refusing to lock through a symbolic link", self.path)
        if err:
            raise _oserror(err, self.path)
        if not S_ISREG(st.st_mode):
            close(fd)
            raise OSError(EINVAL, "lock file is not a regular file", self.path)
        if self.posix:
            self._claim_inode(fd, st.st_dev, st.st_ino)
        if self.fd >= 0:
            close(self.fd)
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.stale = False
        return 0

    # Classic POSIX locks are the process's, per inode, and any close() of the
    # inode drops them: one record per inode, whatever name it was reached by.
    # If another live record has (dev, ino) open, fd joins its parked
    # descriptors (closing it could drop that record's locks) and _SameFile
    # tells the FileLock to use that record instead.
    cdef int _claim_inode(self, int fd, dev_t dev, ino_t ino) except -1:
        cdef _LockFile other = _posix_inodes.get((dev, ino))
        if other is not None and other is not self and other.fd >= 0 \
                and other.generation == lw_fork_generation:
            other.parked.append(fd)
            raise _SameFile(other)
        _posix_inodes[dev, ino] = self
        return 0

    cdef inline int _cmd(self, bint wait) noexcept:
        if self.posix:
            return F_SETLKW if wait else F_SETLK
        return F_OFD_SETLKW if wait else F_OFD_SETLK

    # Try to lock the file in mode without waiting: 0 (kmode is mode) or EAGAIN.
    # Opens the file first if it is not open or stale.
    # Caller: nothing in this process holds the file (kmode LW_UNLOCKED).
    cdef int _kernel_try(self, int mode, bint create) except -1:
        cdef int err
        cdef short ltype = F_RDLCK if mode == LW_SHARED else F_WRLCK
        while True:
            if self.fd < 0 or self.stale:
                self._open(create)
            err = lw_setlk(self.fd, self._cmd(False), ltype)
            if err == EINVAL and not self.posix:
                self.posix = True       # OFD locks refused: this kernel predates them
                self.stale = True       # reopen, so the inode is claimed as POSIX needs
                continue
            if err == EAGAIN:
                return EAGAIN
            if err:
                raise _oserror(err, self.path)
            self.kmode = mode
            return 0

    # Whether the path still names the inode held; a positive errno raises.
    cdef bint _at_path(self) except -1:
        cdef int same = 0
        cdef int err = lw_path_names(self.bpath, self.dev, self.ino, &same)
        if err:
            raise _oserror(err, self.path)
        return same

    # Wait in the kernel until the lock in mode is granted through fd; raises
    # LockTimeout at deadline, LockCancelled once h is cancelled past cgen,
    # whatever a signal handler raised, or OSError. On return kmode is mode.
    # Caller: kwaiter is None and the in-process state lets h have mode.
    cdef int _kernel_wait(self, FileLock h, int mode, double deadline,
                          unsigned int cgen) except -1:
        cdef int signo = wake_signal()
        cdef sigevent sev
        cdef timer_t timer = 0
        cdef itimerspec its
        cdef sigset_t wake_set, old_mask
        cdef int err, fd = self.fd, cmd = self._cmd(True)
        cdef short ltype = F_RDLCK if mode == LW_SHARED else F_WRLCK

        lw_sigev_to_thread(&sev, signo, lw_gettid())
        if timer_create(CLOCK_MONOTONIC, &sev, &timer) != 0:
            raise _oserror(errno)
        if deadline >= 0:
            memset(&its, 0, sizeof(its))
            lw_timespec(deadline, &its.it_value)
            its.it_interval.tv_nsec = LW_REFIRE_NS
            if timer_settime(timer, TIMER_ABSTIME, &its, NULL) != 0:
                err = errno
                timer_delete(timer)
                raise _oserror(err)
        sigemptyset(&wake_set)
        sigaddset(&wake_set, signo)
        pthread_sigmask(SIG_UNBLOCK, &wake_set, &old_mask)
        self.kwaiter = h
        self.ktimer = timer
        try:
            while True:
                if h.cancel_gen != cgen:
                    raise LockCancelled("lock wait cancelled", self.path)
                if deadline >= 0 and lw_now() >= deadline:
                    raise LockTimeout("timed out waiting for the lock", self.path)
                with nogil:
                    err = lw_setlk(fd, cmd, ltype)
                if err == 0:
                    self.kmode = mode
                    return 0
                if err != EINTR:
                    raise _oserror(err, self.path)
                PyErr_CheckSignals()
        finally:
            self.kwaiter = None
            timer_delete(timer)
            pthread_sigmask(SIG_SETMASK, &old_mask, NULL)
            self._wake_waiters()

    # Sleep until the record changes, deadline passes or h is cancelled past
    # cgen; raises LockTimeout, LockCancelled or what a signal handler raised.
    # The caller re-examines the record after every return.
    cdef int _wait_here(self, FileLock h, double deadline, unsigned int cgen) except -1:
        cdef int timed_out
        if h.cancel_gen != cgen:
            raise LockCancelled("lock wait cancelled", self.path)
        self.nwaiters += 1
        try:
            timed_out = lw_wait_word(&self.seq, self.seq, deadline)
        finally:
            self.nwaiters -= 1
        if timed_out:
            raise LockTimeout("timed out waiting for the lock", self.path)
        return 0

    cdef inline void _wake_waiters(self) noexcept:
        self.seq += 1
        if self.nwaiters:
            lw_futex_wake(&self.seq)

    # Whether the in-process state lets a new holder have mode now.
    cdef inline bint _admits(self, int mode) noexcept:
        if self.kwaiter is not None:
            return False
        if not self.holders:
            return True
        return mode == LW_SHARED and self.kmode == LW_SHARED and self.upgrader is None

    # Raise RuntimeError if a holder other than h, taken by this very thread,
    # stands in h's way: waiting for it would never end.
    cdef int _refuse_self_deadlock(self, FileLock h) except -1:
        cdef unsigned long me = lw_thread_serial()
        cdef FileLock other
        for other in self.holders:
            if other is not h and other.serial == me:
                raise RuntimeError(
                    f"{self.path} is held by this thread through another FileLock "
                    f"(taken at {other.site}); waiting for it would deadlock")
        return 0

    # Give h a hold in mode; raises LockBusy (not blocking), LockTimeout, or
    # LockCancelled once h.cancel_gen has moved past cgen.
    cdef int _acquire(self, FileLock h, int mode, bint blocking, double deadline,
                      bint detached, unsigned int cgen) except -1:
        cdef bint here
        while True:
            if self._admits(mode):
                if self.kmode == LW_UNLOCKED:
                    if self._kernel_try(mode, h.create) == EAGAIN:
                        if not blocking:
                            raise LockBusy("lock is held by another process", self.path)
                        self._kernel_wait(h, mode, deadline, cgen)
                    # The file may have been unlinked, replaced or moved away
                    # since it was opened: a lock on it would guard nothing.
                    try:
                        here = self._at_path()
                    except BaseException:
                        self._unlock()
                        raise
                    if not here:
                        self._unlock()
                        self.stale = True
                        continue
                self._grant(h, mode, detached)
                return 0
            if not blocking:
                raise LockBusy("lock is held in this process", self.path)
            self._refuse_self_deadlock(h)
            self._wait_here(h, deadline, cgen)

    cdef int _grant(self, FileLock h, int mode, bint detached) except -1:
        if not self.holders:
            Py_INCREF(self)     # a held record (and its holders) outlives every reference
        self.holders.append(h)
        h.hold = mode
        h.site_code = _caller_code(&h.site_lasti)
        if detached:
            h.thread = h.serial = 0
        else:
            h.thread = PyThread_get_thread_ident()
            h.serial = lw_thread_serial()
            if lw_lockdep:
                h.ld_stack = _ld_push(h, h._checker_class(), False, h.site_code, h.site_lasti)
        return 0

    # h no longer holds: off its thread's held list, if the checker put it on one.
    cdef inline void _unheld(self, FileLock h) noexcept:
        h.hold = LW_UNLOCKED
        h.site_code = None
        if h.ld_stack is not None:
            _ld_pop(h.ld_stack, h, False)
            h.ld_stack = None

    # Unlock the kernel lock held through fd; kmode becomes LW_UNLOCKED.
    cdef int _unlock(self) except -1:
        cdef int err = lw_setlk(self.fd, self._cmd(False), F_UNLCK)
        if err:
            raise _oserror(err, self.path)
        self.kmode = LW_UNLOCKED
        return 0

    # Drop h's hold; the kernel lock goes when the last holder leaves.
    cdef int _release(self, FileLock h) except -1:
        if self.upgrader is h or self.kwaiter is h:
            raise RuntimeError(f"{self.path}: this FileLock is waiting to upgrade in another "
                               "thread; cancel() that wait before releasing")
        if h.hold == LW_EXCLUSIVE or len(self.holders) == 1:
            self._unlock()
        self.holders.remove(h)
        self._unheld(h)
        if not self.holders:
            Py_DECREF(self)     # h still references self: this never frees it
        self._wake_waiters()
        return 0

    # Convert h's shared hold to exclusive without letting go of it.
    cdef int _upgrade(self, FileLock h, bint blocking, double deadline) except -1:
        cdef unsigned int cgen = h.cancel_gen
        cdef int err
        if self.upgrader is not None:
            raise RuntimeError(f"{self.path}: another FileLock in this process is already "
                               "upgrading; two upgrades would wait for each other forever")
        while len(self.holders) > 1 or self.kwaiter is not None:
            if not blocking:
                raise LockBusy("lock is shared with other holders in this process", self.path)
            self._refuse_self_deadlock(h)
            self.upgrader = h
            try:
                self._wait_here(h, deadline, cgen)
            finally:
                self.upgrader = None
        # The kernel converts an OFD or POSIX lock in place: the shared lock
        # stays held while the exclusive one is waited for, and on failure.
        err = lw_setlk(self.fd, self._cmd(False), F_WRLCK)
        if err == 0:
            self.kmode = LW_EXCLUSIVE
        elif err != EAGAIN:
            raise _oserror(err, self.path)
        elif not blocking:
            raise LockBusy("lock is shared with another process", self.path)
        else:
            self._kernel_wait(h, LW_EXCLUSIVE, deadline, cgen)
        h.hold = LW_EXCLUSIVE
        return 0

    cdef int _downgrade(self, FileLock h) except -1:
        cdef int err = lw_setlk(self.fd, self._cmd(False), F_RDLCK)
        if err:
            raise _oserror(err, self.path)
        self.kmode = LW_SHARED
        h.hold = LW_SHARED
        self._wake_waiters()
        return 0

    # Whether the path still names the inode held; if not, h's hold is dropped
    # (it guards nothing) and the file will be reopened by the next acquire.
    cdef bint _verify(self, FileLock h) except -1:
        if self._at_path():
            return True
        self._release(h)
        self.stale = True
        return False

    # Unlink the lock file while h holds it exclusively, then release: anyone
    # granted the dead inode afterwards sees it gone and moves to a new file.
    cdef int _remove(self, FileLock h) except -1:
        if self._at_path() and unlink(self.bpath) != 0:
            raise _oserror(errno, self.path)
        self._release(h)
        self.stale = True
        return 0

    # Give the kernel lock away: a new descriptor (the caller's) of the open
    # file description that holds it, and every hold here dropped without
    # unlocking. Caller: some FileLock holds the record; OFD locks only.
    cdef int _handover(self) except -1:
        cdef FileLock h
        cdef int fd
        if self.posix:
            raise OSError(EINVAL, "classic POSIX locks belong to a process and cannot be "
                          "handed over", self.path)
        if self.kwaiter is not None or self.upgrader is not None:
            raise RuntimeError(f"{self.path}: a thread is waiting on this lock; cancel it first")
        fd = c_fcntl(self.fd, F_DUPFD_CLOEXEC, 0)
        if fd < 0:
            raise _oserror(errno, self.path)
        for h in self.holders:
            self._unheld(h)
        self.holders.clear()
        Py_DECREF(self)         # the caller's FileLock still references self
        close(self.fd)          # the lock lives on through fd
        self.fd = -1
        self.kmode = LW_UNLOCKED
        self._wake_waiters()
        return fd

    # Take over fd, a descriptor of this lock file whose open file description
    # holds the lock in mode (handed over by _handover), as h's hold. The
    # record takes ownership of fd. Caller: nothing here holds the record.
    cdef int _adopt(self, FileLock h, int fd, int mode) except -1:
        cdef struct_stat st
        cdef int same = 0, err = 0
        if self.holders or self.kwaiter is not None:
            raise RuntimeError(f"{self.path} is already held in this process")
        if self.posix:
            raise OSError(EINVAL, "classic POSIX locks cannot be adopted", self.path)
        if fstat(fd, &st) != 0:
            raise _oserror(errno, self.path)
        err = lw_path_names(self.bpath, st.st_dev, st.st_ino, &same)
        if err:
            raise _oserror(err, self.path)
        if not same:
            raise ValueError(f"descriptor {fd} is not the lock file {self.path}")
        if c_fcntl(fd, F_SETFD, FD_CLOEXEC) != 0:
            raise _oserror(errno, self.path)
        if self.fd >= 0:
            close(self.fd)
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.stale = False
        self.kmode = mode
        self._grant(h, mode, True)
        return 0

    cdef void _cancel(self, FileLock h) noexcept:
        cdef itimerspec its
        if self.kwaiter is h:
            memset(&its, 0, sizeof(its))
            its.it_value.tv_nsec = 1
            its.it_interval.tv_nsec = LW_REFIRE_NS
            timer_settime(self.ktimer, 0, &its, NULL)
        self._wake_waiters()

    def _forget_inherited(self):
        """In a fork child: close the inherited descriptor and drop the holds.

        Closing it cannot release the parent's lock: an OFD lock lives while the
        parent's descriptor does, and a POSIX lock belongs to the parent process.
        """
        if self.generation == lw_fork_generation:
            return
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
        if self.holders:
            self.holders.clear()
            Py_DECREF(self)


@cython.auto_pickle(False)
cdef class FileLock:
    """An exclusive or shared lock on one long-lived lock file.

    ``FileLock(path)`` locks ``.NAME.~lock~`` beside ``path`` (the Open vSwitch
    convention; ``path`` itself is never opened); ``FileLock(path,
    lockfile=other)`` locks ``other`` directly. The lock file is opened with
    ``O_NOFOLLOW`` (a symbolic link there is refused), created with
    ``create_mode`` if missing (with ``create=False``, acquire() raises
    FileNotFoundError instead), and kept open between acquisitions.

    A hold belongs to this object, not to a thread: any thread may release it.
    Acquiring an object that already holds raises RuntimeError at once (it is
    not reentrant), as does a blocking acquisition that would wait for a hold
    the same thread has through another object. All objects for one lock file
    in a process share one record: a hold through one excludes the others
    (shared holds coexist), and closing or collecting any of them never drops a
    lock that is held. A held FileLock is kept alive until released.

    Kernel open-file-description locks are used (classic POSIX locks on kernels
    without them). After every grant the inode is checked for links; after a
    wait, and in verify(), the path is checked to name the inode held. A lock
    found on a dead inode is dropped and taken again on the file now at the path.
    """
    cdef readonly str path
    cdef readonly str lockfile
    cdef _LockFile rec
    cdef int hold
    cdef unsigned long thread         # the acquiring thread's ident, 0 if detached
    cdef unsigned long serial         # its lw_thread_serial(), 0 if detached
    cdef object site_code
    cdef int site_lasti
    cdef unsigned int cancel_gen
    cdef bint create
    cdef readonly object lockclass  # the lock-order checker's class
    cdef int ld_cls
    cdef list ld_stack

    def __init__(self, path, lockfile=None, *, bint create=True, int create_mode=0o600):
        path = _os.path.realpath(_os.fsdecode(_os.fspath(path)))
        if lockfile is None:
            head, tail = _os.path.split(path)
            lockfile = _os.path.join(head, f".{tail}.~lock~")
        else:
            head, tail = _os.path.split(_os.path.abspath(_os.fsdecode(_os.fspath(lockfile))))
            lockfile = _os.path.join(_os.path.realpath(head), tail)
        self.path = path
        self.lockfile = lockfile
        self.create = create
        self.lockclass = lockfile
        self.ld_cls = -1
        self.rec = _record_for(lockfile, create_mode)

    @classmethod
    def _canonical(cls, str lockfile, bint create=True, lockclass=None):
        """A FileLock on lockfile itself, a path already canonical (as a LockSpace
        makes them): FileLock(lockfile, lockfile=lockfile) without its realpath
        calls; lockclass is its checker class (default: lockfile)."""
        cdef FileLock lock = cls.__new__(cls)
        lock.path = lock.lockfile = lockfile
        lock.create = create
        lock.lockclass = lockfile if lockclass is None else lockclass
        lock.ld_cls = -1
        lock.rec = _record_for(lockfile, 0o600)
        return lock

    cdef int _checker_class(self) except -1:
        if self.ld_cls < 0:
            self.ld_cls = _ld_class(self.lockclass)
        return self.ld_cls

    def __repr__(self):
        state = _MODE_NAMES[self.hold] if self.locked else "unlocked"
        return f"<latchwire.FileLock {self.lockfile!r} {state}>"

    cdef int _acquire(self, int mode, bint blocking, double deadline, bint detached,
                      unsigned int cgen) except -1:
        if self.rec.generation != lw_fork_generation:
            self.hold = LW_UNLOCKED     # whatever was held belongs to the parent
            self.rec = _record_for(self.lockfile, self.rec.create_mode)
        elif self.hold:
            raise RuntimeError(f"{self.lockfile} is already held by this FileLock "
                               f"(taken at {self.site}); FileLock is not reentrant")
        if lw_lockdep and blocking:
            _ld_check(self, self._checker_class(), mode == LW_SHARED, False)
        try:
            return self.rec._acquire(self, mode, blocking, deadline, detached, cgen)
        except _SameFile as same:
            self.rec = same.record
            return self.rec._acquire(self, mode, blocking, deadline, detached, cgen)

    # The record, if this object holds a lock through it in this process.
    cdef _LockFile _held(self):
        if self.rec.generation != lw_fork_generation:
            raise RuntimeError(f"{self.lockfile}: this lock was inherited across fork(); "
                               "it belongs to the parent process")
        if not self.hold:
            raise RuntimeError(f"{self.lockfile} is not held by this FileLock")
        return self.rec

    def acquire(self, bint blocking=True, timeout=None, bint shared=False):
        """Take the lock (exclusive unless ``shared``); return True.

        ``timeout=None`` waits in the kernel as long as it takes; a number of
        seconds raises LockTimeout after that long. ``blocking=False`` raises
        LockBusy at once if the lock is held elsewhere. Another thread's
        ``cancel()`` makes a waiting call raise LockCancelled.
        """
        self._acquire(LW_SHARED if shared else LW_EXCLUSIVE, blocking,
                      lw_deadline(timeout, blocking), False, self.cancel_gen)
        return True

    def _acquire_detached(self, bint blocking=True, timeout=None, bint shared=False,
                          cancel_generation=None):
        """acquire() for a hold that belongs to no thread (asyncio's, a lockspace's).

        With ``cancel_generation`` (a value of ``cancel_generation`` read
        earlier), any cancel() since that read cancels this call too.
        """
        self._acquire(LW_SHARED if shared else LW_EXCLUSIVE, blocking,
                      lw_deadline(timeout, blocking), True,
                      self.cancel_gen if cancel_generation is None else cancel_generation)
        return True

    @property
    def cancel_generation(self):
        """How many times cancel() was called: see ``_acquire_detached``."""
        return self.cancel_gen

    def shared(self, timeout=None):
        """``with lock.shared(timeout=None):`` holds the lock shared for the block."""
        return _SharedHold(self, timeout)

    def release(self):
        """Release this object's hold. RuntimeError if it holds nothing here."""
        self._held()._release(self)

    def __enter__(self):
        self._acquire(LW_EXCLUSIVE, True, -1, False, self.cancel_gen)
        return self

    def __exit__(self, exc_type, exc, tb):
        self._held()._release(self)

    def upgrade(self, bint blocking=True, timeout=None):
        """Turn a shared hold into an exclusive one, atomically.

        The shared lock is kept while waiting and if the upgrade fails
        (LockBusy, LockTimeout, LockCancelled). RuntimeError if another object
        in this process is already upgrading the same file.
        """
        cdef _LockFile rec = self._held()
        if self.hold != LW_SHARED:
            raise RuntimeError(f"{self.lockfile}: upgrade() needs a shared hold")
        rec._upgrade(self, blocking, lw_deadline(timeout, blocking))

    def downgrade(self):
        """Turn an exclusive hold into a shared one, atomically; never waits."""
        cdef _LockFile rec = self._held()
        if self.hold != LW_EXCLUSIVE:
            raise RuntimeError(f"{self.lockfile}: downgrade() needs an exclusive hold")
        rec._downgrade(self)

    def verify(self):
        """True if the lock is held and the lock file's path still names it.

        False if it is not held, or if the file was unlinked or replaced since:
        then the hold is dropped (``locked`` turns False) and the next acquire
        takes the file now at the path.
        """
        if not self.locked:
            return False
        return self.rec._verify(self)

    def remove(self):
        """Unlink the lock file while holding it exclusively, then release.

        Processes granted the old file afterwards notice and retry on a new one.
        """
        cdef _LockFile rec = self._held()
        if self.hold != LW_EXCLUSIVE:
            raise RuntimeError(f"{self.lockfile}: remove() needs an exclusive hold")
        rec._remove(self)

    def handover(self):
        """Hand the lock to a successor process: return a descriptor that holds it.

        The kernel lock belongs to the open file description, which the returned
        descriptor (close-on-exec; the caller owns it) keeps alive: pass it to a
        child (``pass_fds``, SCM_RIGHTS) or across ``exec``, where ``adopt()``
        takes it back. Every hold on this lock file in this process ends, but
        the lock is never released in between: it is released only when the
        last descriptor of that description is closed. OFD locks only.
        """
        self._held()
        return self.rec._handover()

    def adopt(self, int fd, bint shared=False):
        """Hold the lock through ``fd``, a descriptor from ``handover()``.

        This object takes ownership of fd (it is set close-on-exec). ValueError
        if fd is not this lock file; RuntimeError if the file is already held in
        this process. The hold belongs to no thread.
        """
        if self.rec.generation != lw_fork_generation:
            self.rec = _record_for(self.lockfile, self.rec.create_mode)
        elif self.hold:
            raise RuntimeError(f"{self.lockfile} is already held by this FileLock")
        self.rec._adopt(self, fd, LW_SHARED if shared else LW_EXCLUSIVE)

    def cancel(self):
        """Make every acquire (or upgrade) of this object now waiting raise LockCancelled.

        Safe from any thread; waits that start after the call are unaffected.
        """
        self.cancel_gen += 1
        self.rec._cancel(self)

    @property
    def locked(self):
        """Whether this object holds the lock (in either mode) in this process."""
        return self.hold != LW_UNLOCKED and self.rec.generation == lw_fork_generation

    @property
    def mode(self):
        """``"shared"``, ``"exclusive"`` or None."""
        return _MODE_NAMES[self.hold] if self.locked else None

    @property
    def owner_thread(self):
        """The ident of the thread that acquired the hold (None if unheld or asyncio's)."""
        return self.thread if self.locked and self.thread else None

    @property
    def site(self):
        """``file:line`` where the hold was taken, or None."""
        return _format_site(self.site_code, self.site_lasti) if self.locked else None

    @property
    def lock_kind(self):
        """``"ofd"`` or ``"posix"``: the kernel locks this file's record uses."""
        return "posix" if self.rec.posix else "ofd"


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
                           self.lock.cancel_gen)
        return self.lock

    def __exit__(self, exc_type, exc, tb):
        self.lock._held()._release(self.lock)
