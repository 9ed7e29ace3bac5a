# Included by _core.pyx: the cheap signal that a lock file, or a directory
# above it, may no longer be where its path says.
#
# After every grant a FileLock must know that its path still names the inode
# it locked: a lock on an unlinked, replaced or moved file guards nothing.
# Walking the path (lstat) after every grant costs as much as the lock itself
# and grows with the path's depth. Instead one inotify instance per process
# watches every lock file a record has open (IN_ATTRIB: its link count changed,
# so it was unlinked, replaced by a rename or linked; IN_MOVE_SELF;
# IN_DELETE_SELF) and every directory above it (the same three). The kernel
# queues those events inside the very system call that moved the file, so a
# grant that comes after it (a remover unlinks, then unlocks; we are granted
# after that) finds the queue non-empty with one FIONREAD. The path is walked
# again only then, or where a watch could not be set up.
#
# Events are consumed (drained) under lw_watch_mu: an event of a lock file
# marks its _Watch dirty; one of a directory, or a lost event (the queue
# overflowed), moves lw_watch_epoch on, which each record compares with the
# epoch it last walked its path in. lw_watch_draining is odd while a drain is
# between reading events and marking them, so that a check which found the
# queue empty only because a drain had just emptied it does not trust marks
# not yet made.
#
# Not seen: a file system mounted over the lock file or a directory above it
# after the path was walked (verify() walks it and sees that).

cdef int lw_inotify_fd = -1         # -1: not made yet; -2: unavailable (paths are walked)
cdef lw_mutex lw_watch_mu           # guards the tables below and draining
cdef unsigned int lw_watch_epoch = 0
cdef unsigned int lw_watch_draining = 0
cdef dict _watched_files = {}       # wd -> _Watch of a lock file (lw_watch_mu)
cdef set _watched_dirs = set()      # wds of watched directories (lw_watch_mu)
cdef dict _dirs_watched_in = {}     # a lock file's directory (bytes) -> epoch its ancestors were watched in

cdef unsigned int LW_FILE_EVENTS = IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF
cdef unsigned int LW_DIR_EVENTS = IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF | IN_ONLYDIR


@cython.final
@cython.auto_pickle(False)
cdef class _Watch:
    """inotify's watch of one lock file (one per inode, shared by its records)."""
    cdef int wd             # -1 once the kernel dropped the watch (IN_IGNORED)
    cdef unsigned int dirty # set by a drain when something happened to the file
    cdef int users          # records relying on it (lw_watch_mu)


# Make the process's inotify instance if it is not made yet; 0 if there is none
# to be had (then every grant walks its path). Caller: holds the GIL.
cdef bint lw_watch_ready() noexcept:
    cdef int fd
    if lw_load_i(&lw_inotify_fd) == -1:
        lw_lock(&lw_watch_mu)
        if lw_inotify_fd == -1:
            fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            lw_store_i(&lw_inotify_fd, fd if fd >= 0 else -2)
        lw_mutex_unlock(&lw_watch_mu)
    return lw_load_i(&lw_inotify_fd) >= 0


# Read every queued event and mark what it concerns. Caller: holds the GIL,
# not lw_watch_mu; the instance exists.
cdef void lw_watch_drain() noexcept:
    cdef char buf[4096]
    cdef ssize_t n, off
    cdef inotify_event *ev
    cdef object found
    lw_lock(&lw_watch_mu)
    lw_inc_u(&lw_watch_draining)
    while True:
        n = read(lw_inotify_fd, buf, sizeof(buf))
        if n < 0 and errno == EINTR:
            continue
        if n <= 0:
            break
        off = 0
        while off + <ssize_t>sizeof(inotify_event) <= n:
            ev = <inotify_event *>(buf + off)
            off += sizeof(inotify_event) + ev.len
            if ev.mask & IN_Q_OVERFLOW:
                lw_inc_u(&lw_watch_epoch)       # events were lost: nothing is known
                continue
            # Dict and set lookups of an int: no Python code runs under the mutex.
            found = _watched_files.get(ev.wd)
            if found is not None:
                lw_store_u(&(<_Watch>found).dirty, 1)
                if ev.mask & IN_IGNORED:
                    (<_Watch>found).wd = -1
                    del _watched_files[ev.wd]
            elif ev.wd in _watched_dirs:
                lw_inc_u(&lw_watch_epoch)
                if ev.mask & IN_IGNORED:
                    _watched_dirs.discard(ev.wd)
    lw_inc_u(&lw_watch_draining)
    lw_mutex_unlock(&lw_watch_mu)


# Whether nothing has happened to the file w watches, nor to a directory above
# it, since epoch: one FIONREAD. False when unsure. Caller: holds the GIL.
cdef inline bint lw_watch_quiet(_Watch w, unsigned int epoch) noexcept:
    cdef int queued = 0
    cdef unsigned int seen = lw_load_u(&lw_watch_draining)
    if w is None or seen & 1 or w.wd < 0:
        return False
    if ioctl(lw_inotify_fd, FIONREAD, &queued) != 0 or queued:
        return False
    return (not lw_load_u(&w.dirty) and lw_load_u(&lw_watch_epoch) == epoch
            and lw_load_u(&lw_watch_draining) == seen)


# The watch of the file open as fd (one per inode), set up if need be and
# counted as used by one more record; None if it cannot be had.
# Caller: holds the GIL, not lw_watch_mu.
cdef _Watch lw_watch_file(int fd):
    cdef bytes proc = f"/proc/self/fd/{fd}".encode()
    cdef _Watch w
    cdef int wd = inotify_add_watch(lw_inotify_fd, proc, LW_FILE_EVENTS)
    if wd < 0:
        return None
    key = wd
    fresh = _Watch.__new__(_Watch)
    lw_lock(&lw_watch_mu)
    w = _watched_files.get(key)
    if w is None:
        w = fresh
        w.wd = wd
        _watched_files[key] = w
    w.users += 1
    lw_mutex_unlock(&lw_watch_mu)
    return w


# A record no longer relies on w; the last one removes the kernel's watch.
# Caller: holds the GIL, not lw_watch_mu.
cdef void lw_watch_unuse(_Watch w) noexcept:
    cdef int wd = -1
    lw_lock(&lw_watch_mu)
    w.users -= 1
    if w.users == 0 and w.wd >= 0:
        wd = w.wd
        w.wd = -1
        if _watched_files.get(wd) is w:
            del _watched_files[wd]
    lw_mutex_unlock(&lw_watch_mu)
    if wd >= 0:
        inotify_rm_watch(lw_inotify_fd, wd)


# Watch every directory above the lock file at path, once per epoch; False if
# one cannot be watched. Caller: holds the GIL, not lw_watch_mu.
cdef bint lw_watch_dirs(bytes path, unsigned int epoch) noexcept:
    cdef bytes directory = _os.path.dirname(path)
    cdef bytes d = directory
    cdef int wd
    if _dirs_watched_in.get(directory) == epoch:
        return True
    while d and d != b"/":
        wd = inotify_add_watch(lw_inotify_fd, d, LW_DIR_EVENTS)
        if wd < 0:
            return False
        key = wd
        lw_lock(&lw_watch_mu)
        _watched_dirs.add(key)
        lw_mutex_unlock(&lw_watch_mu)
        d = _os.path.dirname(d)
    _dirs_watched_in[directory] = epoch
    return True


def _after_fork_watches():
    """In a fork child: the parent's inotify instance (shared with it) is not ours."""
    global lw_inotify_fd
    _watched_files.clear()
    _watched_dirs.clear()
    _dirs_watched_in.clear()


# The C half of the fork reset, run in the child before any Python code:
# the instance is shared with the parent (events read here would be lost to
# it), and lw_watch_mu may have been held by a thread that does not exist here.
cdef void lw_watch_after_fork_child() noexcept nogil:
    global lw_inotify_fd, lw_watch_draining
    if lw_inotify_fd >= 0:
        close(lw_inotify_fd)
    lw_inotify_fd = -1
    lw_watch_draining = 0
    lw_mutex_reset(&lw_watch_mu)
