# Included by _core.pyx: errors, clocks and deadlines, acquisition sites,
# the fork generation, and the futex wait shared by every in-process lock wait.

# ---------------------------------------------------------------------------
# Errors and clocks

# An OSError for a positive errno; OSError's constructor picks the subclass
# (FileNotFoundError, PermissionError, ...) from the number.
cdef object _oserror(int err, object path=None):
    if path is None:
        return OSError(err, _os.strerror(err))
    return OSError(err, _os.strerror(err), path)


# Seconds on the monotonic clock.
cdef inline double lw_now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline void lw_timespec(double seconds, timespec *ts) noexcept nogil:
    if seconds < 0:
        seconds = 0
    ts.tv_sec = <long>seconds
    ts.tv_nsec = <long>((seconds - <double>ts.tv_sec) * 1e9)


# The absolute monotonic deadline for (blocking, timeout), or -1 for none.
# Raises ValueError for a negative or NaN timeout or a timeout without blocking;
# a timeout beyond LW_FOREVER seconds (or infinite) means none.
cdef double _deadline(bint blocking, object timeout) except -2:
    if timeout is None:
        return -1
    if not blocking:
        raise ValueError("can't specify a timeout for a non-blocking call")
    cdef double t = timeout
    if not t >= 0:
        raise ValueError("timeout must be None or a non-negative number of seconds")
    if t > LW_FOREVER:
        return -1
    return lw_now() + t


# Where the Python code that called into _core stands: its code object, and
# the instruction's byte offset in *lasti (the line is worked out when asked).
cdef inline object _caller_code(int *lasti):
    cdef PyFrameObject *frame = PyEval_GetFrame()
    if frame == NULL:
        lasti[0] = -1
        return None
    lasti[0] = lw_frame_lasti(frame)
    return lw_frame_code(frame)


cdef str _format_site(object code, int lasti):
    if code is None:
        return "<unknown>"
    return f"{code.co_filename}:{PyCode_Addr2Line(<PyCodeObject *>code, lasti)}"


# ---------------------------------------------------------------------------
# fork: a child must never use or release its parent's locks. The generation
# moves on in every child (pthread_atfork, whatever forked it); a record made
# in an earlier generation was inherited and is dead here.

cdef unsigned long lw_fork_generation = 0


cdef void lw_after_fork_child() noexcept nogil:
    global lw_fork_generation
    lw_fork_generation += 1


pthread_atfork(NULL, NULL, lw_after_fork_child)


# ---------------------------------------------------------------------------
# In-process waits

# Sleep while *word still equals seen, until the monotonic deadline (-1: none),
# with the GIL released; a signal handler's exception (KeyboardInterrupt)
# comes out of here. Returns 1 if the deadline has passed, else 0 (woken, the
# word changed, or a signal: the caller looks again). Caller: holds the GIL,
# read seen from *word, and counts itself as a waiter so wakers call futex.
cdef int lw_wait_word(unsigned int *word, unsigned int seen, double deadline) except -1:
    cdef timespec rel
    cdef timespec *relp = NULL
    cdef double left
    cdef int err = 0
    if deadline >= 0:
        left = deadline - lw_now()
        if left <= 0:
            return 1
        lw_timespec(left, &rel)
        relp = &rel
    with nogil:
        if lw_futex_wait(word, seen, relp) < 0:
            err = errno
    if err == EINTR:
        PyErr_CheckSignals()
    return 0
