# Included by _core.pyx: the signal that wakes a thread blocked in the kernel.

# ---------------------------------------------------------------------------
# The wake signal

cdef int lw_wake_signo = 0


# The handler's only job is to exist: the signal interrupts a blocking call in
# the thread it is aimed at, which then returns EINTR.
cdef void lw_wake_handler(int signo) noexcept nogil:
    pass


# Install the no-op handler (no SA_RESTART) on signo; 0 or a positive errno.
cdef int lw_install_wake_handler(int signo) noexcept nogil:
    cdef sigaction_t sa
    memset(&sa, 0, sizeof(sa))
    sa.sa_handler = lw_wake_handler
    sigemptyset(&sa.sa_mask)
    sa.sa_flags = 0
    if sigaction(signo, &sa, NULL) != 0:
        return errno
    return 0


def wake_signal():
    """The signal latchwire aims at a thread blocked in a kernel lock wait.

    Chosen on first use: ``LATCHWIRE_SIGNAL`` from the environment if set,
    otherwise the highest real-time signal whose disposition is still the
    default. latchwire installs a handler that does nothing on it (without
    ``SA_RESTART``) and only ever sends it to its own waiting threads, through
    per-wait timers. An application must not install its own handler on it.
    """
    global lw_wake_signo
    if lw_wake_signo:
        return lw_wake_signo
    import signal as _signal
    cdef sigaction_t old
    cdef int signo, err
    chosen = _os.environ.get("LATCHWIRE_SIGNAL")
    if chosen:
        signo = int(chosen)
        if not _signal.SIGRTMIN <= signo <= _signal.SIGRTMAX:
            raise ValueError(f"LATCHWIRE_SIGNAL={chosen} is not a real-time signal")
    else:
        for signo in range(_signal.SIGRTMAX, _signal.SIGRTMIN - 1, -1):
            if sigaction(signo, NULL, &old) == 0 and old.sa_handler == SIG_DFL:
                break
        else:
            raise RuntimeError("no free real-time signal for latchwire's lock waits; "
                               "set LATCHWIRE_SIGNAL")
    err = lw_install_wake_handler(signo)
    if err:
        raise _oserror(err)
    lw_wake_signo = signo
    return signo
