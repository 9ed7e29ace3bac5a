# Included by _core.pyx: the lock-order checker's fast path.
#
# Off, an acquisition pays one test of a C flag. On, each thread keeps the
# locks it holds (_Held entries) in a list in its thread-state dict; taking a
# lock checks every (held class, new class) pair against the set of pairs
# already checked, and only a pair never seen goes to latchwire.lockorder,
# which looks for a cycle in the order graph and raises LockOrderError. A
# lock's class is its name, or where it was created; the id comes from
# lockorder on first use and is cached in the lock.
#
# Without the GIL's help: a thread's held list is also changed by other
# threads (a FileLock released in another thread pops its acquirer's entry),
# so every held list is read and changed only under _ld_guard, one C lock for
# all of them (it is taken only while the checker is on, for a few dozen
# instructions). Under it no Python code runs: entries are made before it is
# taken and freed after it is let go of, and _ld_check works on a copy of the
# list (references to its entries in a C array), calling into lockorder with
# the guard free. The sets of pairs seen and of unnestable classes are only
# ever tested and added to, one operation at a time (each atomic on its own,
# with or without a GIL); a pair tested by two threads at once is checked
# twice, which lockorder takes in its stride. Callbacks handed to
# _lockdep_enable are kept alive for good once installed, so a thread that has
# just read one never calls a freed object.

from cpython.exc cimport PyErr_Clear
from cpython.ref cimport PyObject as _LdPyObject

cdef extern from *:
    """
    /* What Cython would check and raise on, called where the caller must first
     * let go of a C lock: the exception stays set for lw_ld_fail to report. */
    #define lw_ld_append(list, item) PyList_Append((list), (item))
    #define lw_ld_delete(list, i) PyList_SetSlice((list), (i), (i) + 1, NULL)
    static inline int lw_ld_fail(void) { return -1; }

    /* Copy list's items into out (room for cap), taking a reference to each:
     * how many there are (nothing copied if more than cap). */
    static Py_ssize_t lw_ld_copy(PyObject *list, PyObject **out, Py_ssize_t cap)
    {
        Py_ssize_t i, n = PyList_GET_SIZE(list);
        if (n > cap)
            return n;
        for (i = 0; i < n; i++) {
            out[i] = PyList_GET_ITEM(list, i);
            Py_INCREF(out[i]);
        }
        return n;
    }
    """
    int lw_ld_append(object list, object item)
    int lw_ld_delete(object list, Py_ssize_t i)
    int lw_ld_fail() except -1
    Py_ssize_t lw_ld_copy(object list, _LdPyObject **out, Py_ssize_t cap)
    _LdPyObject *lw_ld_item "PyList_GET_ITEM"(object list, Py_ssize_t i)
    Py_ssize_t lw_ld_size "PyList_GET_SIZE"(object list)
    void lw_ld_xdecref "Py_XDECREF"(_LdPyObject *o)


cdef extern from "<stdlib.h>" nogil:
    void *lw_ld_malloc "malloc"(size_t size)
    void lw_ld_free "free"(void *p)


# Every held list's contents (and each entry's `read`), see above.
cdef lw_mutex _ld_guard


cdef void _ld_after_fork_child() noexcept nogil:
    lw_mutex_reset(&_ld_guard)


pthread_atfork(NULL, NULL, _ld_after_fork_child)

cdef bint lw_lockdep = False
cdef object _ld_new_edge = None         # lockorder._new_edge(held, cls, site)
cdef object _ld_class_id = None         # lockorder._class_id(key) -> int
cdef object _ld_recursive_read = None   # lockorder._recursive_read(held, site)
cdef object _ld_nested = None           # lockorder._nested(held, site)
cdef set _ld_seen = set()               # held class << 32 | new class, for pairs checked
cdef set _ld_unnestable = set()         # classes of which a thread may hold one lock at a time
cdef str _LD_KEY = "latchwire.lockorder.held"
cdef list _ld_installed = []            # every callback ever installed, kept alive


def _lockdep_enable(bint on, new_edge=None, class_id=None, recursive_read=None, nested=None):
    """Turn the checker's fast path on (with lockorder's callbacks) or off."""
    global lw_lockdep, _ld_new_edge, _ld_class_id, _ld_recursive_read, _ld_nested
    if on:
        for fn in (new_edge, class_id, recursive_read, nested):
            if not any(fn is kept for kept in _ld_installed):
                _ld_installed.append(fn)
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
    cdef _LdPyObject *small[16]
    cdef _LdPyObject **items = small
    cdef Py_ssize_t i, n = _ld_copy(_ld_stack(), &items, 16)
    try:
        return [<object>items[i] for i in range(n)]
    finally:
        _ld_release_copy(items, small, n)


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


# A copy of stack's entries, each with a reference of its own, in *items
# (the caller's room for cap, or a malloc'd array if that is too small); how
# many. The caller gives them back with _ld_release_copy.
cdef Py_ssize_t _ld_copy(list stack, _LdPyObject ***items, Py_ssize_t cap) except -1:
    cdef Py_ssize_t n
    cdef _LdPyObject **room = items[0]
    while True:
        lw_lock(&_ld_guard)
        n = lw_ld_copy(stack, room, cap)
        lw_mutex_unlock(&_ld_guard)
        if n <= cap:
            items[0] = room
            return n
        if cap > 16:
            lw_ld_free(room)
        cap = n + 8
        room = <_LdPyObject **>lw_ld_malloc(cap * sizeof(_LdPyObject *))
        if room == NULL:
            items[0] = NULL
            raise MemoryError()


cdef void _ld_release_copy(_LdPyObject **items, _LdPyObject **small, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    if items == NULL:
        return
    for i in range(n):
        lw_ld_xdecref(items[i])
    if items != small:
        lw_ld_free(items)


# The checker's class id for key (a lock name or creation site).
cdef int _ld_class(object key) except -1:
    return _ld_class_id(key)


# LockOrderError if the calling thread taking lock (class cls; for reading if
# read) now closes a cycle of orders, or takes a writer-preferring RWLock it
# already reads (recursive_read_hazard). Caller: lw_lockdep is on.
cdef int _ld_check(object lock, int cls, bint read, bint recursive_read_hazard) except -1:
    cdef _LdPyObject *small[16]
    cdef _LdPyObject **items = small
    cdef Py_ssize_t i, n = 0
    cdef _Held held
    cdef long long pair
    cdef int lasti
    n = _ld_copy(_ld_stack(), &items, 16)
    try:
        for i in range(n):
            held = <_Held>items[i]
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
    finally:
        held = None
        _ld_release_copy(items, small, n)
    return 0


# Record that the calling thread now holds lock, taken at code/lasti (the
# site its caller already found); the list it went on, for _ld_pop (which may
# run in another thread, as a FileLock's release may).
cdef list _ld_push(object lock, int cls, bint read, object code, int lasti):
    cdef list stack = _ld_stack()
    cdef _Held held = _Held.__new__(_Held)
    cdef int err
    held.lock = lock
    held.cls = cls
    held.read = read
    held.code = code
    held.lasti = lasti
    lw_lock(&_ld_guard)
    err = lw_ld_append(stack, held)     # may grow the list (memory, never Python code)
    lw_mutex_unlock(&_ld_guard)
    if err < 0:
        lw_ld_fail()
    return stack


# Forget the latest entry of lock (for reading if read) on stack. Any thread.
# The entry is freed here, after the guard is let go of: a caller holding a C
# lock of its own should call this after unlocking that too.
cdef void _ld_pop(list stack, object lock, bint read) noexcept:
    cdef Py_ssize_t i
    cdef _Held held
    cdef _Held gone = None               # keeps the entry alive until the guard is free
    cdef int err = 0
    lw_lock(&_ld_guard)
    for i in range(lw_ld_size(stack) - 1, -1, -1):
        held = <_Held>lw_ld_item(stack, i)
        if held.lock is lock and held.read == read:
            gone = held
            err = lw_ld_delete(stack, i)
            break
    lw_mutex_unlock(&_ld_guard)
    if err < 0:                          # out of memory shrinking the list: the entry stays
        PyErr_Clear()


# The latest entry of lock on stack is now a hold for reading (read) or not.
cdef void _ld_retag(list stack, object lock, bint read) noexcept:
    cdef Py_ssize_t i
    cdef _Held held
    lw_lock(&_ld_guard)
    for i in range(lw_ld_size(stack) - 1, -1, -1):
        held = <_Held>lw_ld_item(stack, i)
        if held.lock is lock:
            held.read = read
            break
    lw_mutex_unlock(&_ld_guard)
