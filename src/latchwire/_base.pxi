# Included by _core.pyx: errors, clocks and deadlines, acquisition sites,
# the fork generation, and the futex wait shared by every in-process lock wait.

# ---------------------------------------------------------------------------
# Errors and clocks

cdef double _TIMEOUT_MAX = __import__("_thread").TIMEOUT_MAX  # threading's, without importing it

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


# The one place every blocking call's timeout is read. The seconds the call
# may wait, or -1 for no limit: None is no limit (with threading_style, -1 is,
# as for threading.Lock, and None is refused); inf, and anything beyond
# LW_FOREVER seconds (about 31 years), is no limit too, so that every deadline
# fits a timespec and a poll(). Raises TypeError for what is not a real
# number, ValueError for NaN, a negative number, or a timeout given to a call
# that does not block; with threading_style, OverflowError beyond
# threading.TIMEOUT_MAX, as threading.Lock does.
cdef double lw_timeout(object timeout, bint blocking=True,
                       bint threading_style=False) except -2:
    cdef double t
    if timeout is None and not threading_style:
        return -1
    try:
        t = timeout
    except TypeError:
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}") \
            from None
    if threading_style and t == -1:
        return -1
    if not blocking:
        raise ValueError("can't specify a timeout for a non-blocking call")
    if t != t:
        raise ValueError("timeout must not be NaN")
    if t < 0:
        raise ValueError("timeout must be None or a non-negative number of seconds"
                         if not threading_style else
                         "timeout value must be a non-negative number")
    if threading_style and t > _TIMEOUT_MAX:
        raise OverflowError("timeout value is too large")
    if t > LW_FOREVER:
        return -1
    return t


# The absolute monotonic deadline for a timeout argument (see lw_timeout), or
# -1 for none.
cdef double lw_deadline(object timeout, bint blocking=True,
                        bint threading_style=False) except -2:
    cdef double t = lw_timeout(timeout, blocking, threading_style)
    return -1 if t < 0 else lw_now() + t


def check_timeout(timeout, bint blocking=True):
    """A blocking call's ``timeout`` argument, checked: None for no limit, else seconds.

    The same rules as every wait in latchwire: None, ``inf`` and anything
    beyond about 31 years is no limit; NaN, a negative number, or a timeout for
    a call that does not block raise ValueError; a non-number TypeError. For
    the Python layers (lockspaces, netlink sockets, asyncio faces).
    """
    cdef double t = lw_timeout(timeout, blocking)
    return None if t < 0 else t


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
# Schedule perturbation: LATCHWIRE_PERTURB=1 makes every call below yield or
# sleep a few microseconds at random, with the GIL released so that another
# Python thread can run there. Called wherever the core releases the GIL and
# between every check and the act that depends on it; one C flag test when off.

lw_perturb_on = _os.environ.get("LATCHWIRE_PERTURB", "") not in ("", "0")


cdef inline void lw_perturb() noexcept:
    if lw_perturb_on:
        with nogil:
            lw_perturb_pause()


def perturbing():
    """Whether schedule perturbation (``LATCHWIRE_PERTURB=1``) is on."""
    return bool(lw_perturb_on)


# ---------------------------------------------------------------------------
# C mutexes taken from Python-facing code

# Take m, with the GIL held on entry: try at once, and only if it is busy
# release the GIL to block for it (never block on a lock while holding the
# GIL: its holder may need the GIL to finish).
cdef inline void lw_lock(lw_mutex *m) noexcept:
    if not lw_mutex_trylock(m):
        with nogil:
            lw_mutex_lock(m)


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
        if lw_perturb_on:
            lw_perturb_pause()
        if lw_futex_wait(word, seen, relp) < 0:
            err = errno
    if err == EINTR:
        PyErr_CheckSignals()
    return 0
