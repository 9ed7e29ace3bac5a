# Included by _core.pyx: the lock-order checker's fast path.
#
# Off, an acquisition pays one test of a C flag. On, each thread keeps the
# locks it holds (_Held entries) in a list in its thread-state dict; taking a
# lock checks every (held class, new class) pair against the set of pairs
# already checked, and only a pair never seen goes to latchwire.lockorder,
# which looks for a cycle in the order graph and raises LockOrderError. A
# lock's class is its name, or where it was created; the id comes from
# lockorder on first use and is cached in the lock.

cdef bint lw_lockdep = False
cdef object _ld_new_edge = None         # lockorder._new_edge(held, cls, site)
cdef object _ld_class_id = None         # lockorder._class_id(key) -> int
cdef object _ld_recursive_read = None   # lockorder._recursive_read(held, site)
cdef object _ld_nested = None           # lockorder._nested(held, site)
cdef set _ld_seen = set()               # held class << 32 | new class, for pairs checked
cdef set _ld_unnestable = set()         # classes of which a thread may hold one lock at a time
cdef str _LD_KEY = "latchwire.lockorder.held"


def _lockdep_enable(bint on, new_edge=None, class_id=None, recursive_read=None, nested=None):
    """Turn the checker's fast path on (with lockorder's callbacks) or off."""
    global lw_lockdep, _ld_new_edge, _ld_class_id, _ld_recursive_read, _ld_nested
    if on:
        _ld_new_edge, _ld_class_id = new_edge, class_id
        _ld_recursive_read, _ld_nested = recursive_read, nested
    lw_lockdep = on


def _lockdep_unnestable(int cls):
    """Report a thread taking a lock of class cls while it holds another of it."""
    _ld_unnestable.add(cls)


def lockdep_enabled():
    """Whether the lock-order checker is on (see latchwire.lockorder)."""
    return lw_lockdep


def _lockdep_forget():
    """Forget every pair checked (lockorder.reset())."""
    _ld_seen.clear()


def _lockdep_held():
    """The calling thread's held locks, oldest first."""
    return list(_ld_stack())


@cython.final
@cython.auto_pickle(False)
cdef class _Held:
    """A lock the calling thread holds, as the checker sees it."""
    cdef readonly object lock
    cdef readonly int cls
    cdef readonly bint read
    cdef object code
    cdef int lasti

    @property
    def site(self):
        """``file:line`` where it was taken."""
        return _format_site(self.code, self.lasti)

    def __repr__(self):
        return f"<held {self.lock!r}{' for reading' if self.read else ''} at {self.site}>"


# The calling thread's list of _Held, made on first use.
cdef list _ld_stack():
    cdef dict state = <dict>PyThreadState_GetDict()
    cdef list stack = state.get(_LD_KEY)
    if stack is None:
        stack = state[_LD_KEY] = []
    return stack


# The checker's class id for key (a lock name or creation site).
cdef int _ld_class(object key) except -1:
    return _ld_class_id(key)


# LockOrderError if the calling thread taking lock (class cls; for reading if
# read) now closes a cycle of orders, or takes a writer-preferring RWLock it
# already reads (recursive_read_hazard). Caller: lw_lockdep is on.
cdef int _ld_check(object lock, int cls, bint read, bint recursive_read_hazard) except -1:
    cdef _Held held
    cdef long long pair
    cdef int lasti
    for held in _ld_stack():
        if held.lock is lock:
            if read and held.read and recursive_read_hazard:
                code = _caller_code(&lasti)
                _ld_recursive_read(held, _format_site(code, lasti))
            continue
        if held.cls == cls:
            if cls in _ld_unnestable:
                code = _caller_code(&lasti)
                _ld_nested(held, _format_site(code, lasti))
            continue
        pair = (<long long>held.cls << 32) | cls
        if pair in _ld_seen:
            continue
        code = _caller_code(&lasti)
        _ld_new_edge(held, cls, _format_site(code, lasti))
        _ld_seen.add(pair)
    return 0


# Record that the calling thread now holds lock, taken at code/lasti (the
# site its caller already found); the list it went on, for _ld_pop (which may
# run in another thread, as a FileLock's release may).
cdef list _ld_push(object lock, int cls, bint read, object code, int lasti):
    cdef list stack = _ld_stack()
    cdef _Held held = _Held.__new__(_Held)
    held.lock = lock
    held.cls = cls
    held.read = read
    held.code = code
    held.lasti = lasti
    stack.append(held)
    return stack


# Forget the latest entry of lock (for reading if read) on stack.
cdef void _ld_pop(list stack, object lock, bint read) noexcept:
    cdef Py_ssize_t i
    cdef _Held held
    for i in range(len(stack) - 1, -1, -1):
        held = stack[i]
        if held.lock is lock and held.read == read:
            del stack[i]
            return


# The latest entry of lock on stack is now a hold for reading (read) or not.
cdef void _ld_retag(list stack, object lock, bint read) noexcept:
    cdef Py_ssize_t i
    cdef _Held held
    for i in range(len(stack) - 1, -1, -1):
        held = stack[i]
        if held.lock is lock:
            held.read = read
            return
