# Included by _core.pyx: the one wait in the kernel for a file lock, shared
# by the lock file records (_lockfile.pxi: the claimant's wait for the lock
# file) and the fair queues (_fairqueue.pxi: a waiter's wait for its turn).
#
# The thread blocks in F_OFD_SETLKW (F_SETLKW, flock(2)) with the GIL
# released. Its own wake timer (a POSIX timer aimed at the thread, firing the
# wake signal) interrupts the call at the deadline, at the next deadlock
# re-check, or when cancel() kicks it; between interruptions nothing polls.

# What to wait for: a lock of type on the bytes [start, start + len) of fd
# (len 0: to the end of the file), or with cmd 0 the flock(2) lock of
# operation type (LOCK_SH, LOCK_EX); and how the wait board shows it.
cdef struct lw_kreq:
    int fd
    int cmd                 # F_OFD_SETLKW or F_SETLKW; 0 for flock(2)
    short type              # F_RDLCK or F_WRLCK; LOCK_SH or LOCK_EX for flock(2)
    off_t start
    off_t len
    int kind                # LW_KIND_*, for the board
    bint exclusive
    bint posix              # classic POSIX locks: EDEADLK here may be a false alarm
    bint checked            # checked for deadlock cycles (a lock file's wait, not a queue's)
    dev_t dev
    ino_t ino


# Set a lock of type (F_RDLCK, F_WRLCK, F_UNLCK) on the bytes [start, start +
# len) of fd with cmd; 0 or a positive errno (EACCES comes back as EAGAIN).
cdef int lw_setlk_range(int fd, int cmd, short type, off_t start, off_t len) noexcept nogil:
    cdef flock fl
    memset(&fl, 0, sizeof(fl))
    fl.l_type = type
    fl.l_whence = SEEK_SET
    fl.l_start = start
    fl.l_len = len
    if c_fcntl(fd, cmd, &fl) == 0:
        return 0
    if errno == EACCES:
        return EAGAIN
    return errno


# Wait in the kernel for req: LW_GRANTED, LW_TIMED_OUT at deadline,
# LW_CANCELLED once h.cancel_gen moved past cgen, or a positive errno; raises
# what a signal handler raised, and (req.checked) LockDeadlock when the
# deadlock check (_deadlock.pxi) finds the wait on a cycle, as it begins or at
# a re-check. w.timer, w.in_kernel and w.kicked change under *mu, which
# cancel() takes to kick the wait. Caller: holds the GIL and not *mu; w is
# where cancel() finds this wait (a record's claim, a FileLock's queue wait).
cdef int lw_kernel_wait(lw_mutex *mu, lw_fwait *w, lw_kreq *req, FileLock h,
                        double deadline, unsigned int cgen) except LW_FAILED:
    cdef int signo = lw_wake_signo
    cdef int err, fd = req.fd, cmd = req.cmd
    cdef short ltype = req.type
    cdef off_t start = req.start, length = req.len
    cdef timer_t timer = <timer_t>0
    cdef sigset_t wake_set, old_mask
    cdef bint armed = False, kicked
    cdef double backoff = 0.001
    cdef double recheck = -1.0, interval = LW_DEADLOCK_FIRST
    cdef int slot = -1
    cdef off_t last = -1 if length == 0 else start + length - 1
    if not signo:
        signo = wake_signal()
    err = lw_thread_timer(signo, &timer)
    if err:
        return err
    sigemptyset(&wake_set)
    sigaddset(&wake_set, signo)
    pthread_sigmask(SIG_UNBLOCK, &wake_set, &old_mask)
    lw_lock(mu)
    w.timer = timer
    w.in_kernel = True
    w.kicked = False
    lw_mutex_unlock(mu)
    try:
        if _watch_begin(req.dev, req.ino, start, last, req.kind, req.exclusive, req.checked,
                        h, &slot):
            recheck = lw_now() + interval
        if deadline >= 0 or recheck >= 0:
            err = lw_arm_wake(mu, w, timer, deadline, recheck)
            if err:
                return err
            armed = True
        while True:
            if lw_load_u(&h.cancel_gen) != cgen:
                return LW_CANCELLED
            if deadline >= 0 and lw_now() >= deadline:
                return LW_TIMED_OUT
            if recheck >= 0 and lw_now() >= recheck:
                # Re-armed first: the timer, past its time, fires every
                # LW_REFIRE_NS and would interrupt the check's reads.
                interval = min(interval * 2, LW_DEADLOCK_LAST)
                recheck = lw_now() + interval
                err = lw_arm_wake(mu, w, timer, deadline, recheck)
                if err:
                    return err
                _watch_check(req.dev, req.ino, req.kind, req.exclusive, h, None)
            with nogil:
                if lw_perturb_on:
                    lw_perturb_pause()
                if cmd == 0:
                    err = lw_flock_op(fd, ltype)
                else:
                    err = lw_setlk_range(fd, cmd, ltype, start, length)
                if err == EDEADLOCK and req.posix:
                    # POSIX locks are the process's, so the kernel sees a cycle
                    # whenever another thread here holds what the holder
                    # awaits: it may well end. Try again shortly (the timer
                    # still interrupts the pause).
                    lw_pause(backoff)
                    backoff = backoff * 2 if backoff < 0.032 else backoff
                    err = EINTR
            if err == 0:
                return LW_GRANTED
            if err != EINTR:
                return err
            PyErr_CheckSignals()
    finally:
        lw_lock(mu)
        w.in_kernel = False
        kicked = w.kicked
        lw_mutex_unlock(mu)
        if armed or kicked:
            lw_timer_disarm(timer)
        _board_wipe(slot)
        if sigismember(&old_mask, signo):
            pthread_sigmask(SIG_SETMASK, &old_mask, NULL)


# Arm w's wake timer (timer) for the deadline or the re-check, whichever
# comes first (either -1: none), unless cancel() has kicked it: 0 or an
# errno. Caller: the waiter in lw_kernel_wait, without *mu.
cdef int lw_arm_wake(lw_mutex *mu, lw_fwait *w, timer_t timer, double deadline,
                     double recheck) noexcept:
    cdef itimerspec its
    cdef double when = deadline
    cdef int err = 0
    if when < 0 or (0 <= recheck < when):
        when = recheck
    memset(&its, 0, sizeof(its))
    lw_timespec(when, &its.it_value)
    its.it_interval.tv_nsec = LW_REFIRE_NS
    lw_lock(mu)
    if not w.kicked and timer_settime(timer, TIMER_ABSTIME, &its, NULL) != 0:
        err = errno
    lw_mutex_unlock(mu)
    return err


# Kick a wait in lw_kernel_wait (cancel()): its timer fires now and every
# LW_REFIRE_NS until the waiter has seen it. Caller: holds the wait's mutex.
cdef inline void lw_kernel_wait_kick(lw_fwait *w) noexcept:
    if w.in_kernel:
        lw_timer_kick(w.timer)
        w.kicked = True


# Arm timer to fire now and every LW_REFIRE_NS until disarmed (it wakes a
# thread in F_OFD_SETLKW, even one that was about to enter it).
cdef inline void lw_timer_kick(timer_t timer) noexcept nogil:
    cdef itimerspec its
    memset(&its, 0, sizeof(its))
    its.it_value.tv_nsec = 1
    its.it_interval.tv_nsec = LW_REFIRE_NS
    timer_settime(timer, 0, &its, NULL)


# Sleep for seconds (a signal cuts it short).
cdef inline void lw_pause(double seconds) noexcept nogil:
    cdef timespec ts
    lw_timespec(seconds, &ts)
    nanosleep(&ts, NULL)


cdef inline void lw_timer_disarm(timer_t timer) noexcept nogil:
    cdef itimerspec its
    memset(&its, 0, sizeof(its))
    timer_settime(timer, 0, &its, NULL)


