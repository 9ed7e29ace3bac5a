# Included by _core.pyx: the queue of a fair lock file (FileLock(fair=True)).
#
# Kernel file locks are granted in no particular order. A fair lock orders
# its waiters in a second file beside the lock file, NAME.~queue~, with
# byte-range OFD locks, each waiter through a descriptor of its own: a waiter
# locks one byte, its ticket, at the monotonic clock's nanoseconds when it
# arrives (exclusively for an exclusive request, shared for a shared one),
# then waits in the kernel for a lock of its own mode on every byte before
# its ticket: an exclusive waiter until every earlier waiter has moved on, a
# shared one until every earlier exclusive one has. Then it takes the lock
# file's lock as any FileLock does (waiting there only for its holders and
# for unfair users), and gives its ticket back once granted: the next waiter
# moves up to wait for the lock file itself. So adjacent shared waiters go
# together, and a waiting exclusive one keeps later shared ones out.
#
# The queue orders; it never excludes. The lock file's lock is what two
# holders cannot share, so a queue file removed, garbled or locked by a
# stranger can delay or reorder waiters, never let two hold. A waiter killed
# gives its ticket back with its descriptor (the kernel drops OFD locks as
# the open file description closes), so the queue never sticks.
#
# Byte 0 is never a ticket. FileLock.remove() unlinks the queue file only if
# it can lock all of it at once (no waiter in it); a waiter refused its
# ticket by that lock waits for byte 0, then opens the file at the path again.

cdef bytes LW_QUEUE_SUFFIX = b".~queue~"
QUEUE_SUFFIX = ".~queue~"       # a fair lock's queue file is its lock file's path + this

cdef enum:
    LW_FQ_FDS = 64          # queue descriptors a fork child can find and close
    # A conflicting lock reaching this far (ns) past the clock is no waiter's.
    LW_FQ_AHEAD = 1000000000


# One fair wait's place in the queue, on its caller's stack.
cdef struct lw_fqueue:
    int fd                  # this wait's own descriptor of the queue file, or -1
    int slot                # its entry in lw_fq_fds, or -1
    off_t ticket            # the byte it holds, or 0
    dev_t dev
    ino_t ino


# The queue descriptors open in this process, which a fork child closes
# before anything else runs there: a copy of one would keep its ticket, and
# so the queue, waiting as long as the child lives.
cdef lw_mutex lw_fq_mu
cdef int lw_fq_fds[LW_FQ_FDS]       # (lw_fq_mu) fd + 1; 0: free


# The monotonic clock in nanoseconds, plus 2: a ticket (byte 0 is the guard,
# and byte 1 begins the bytes before every ticket).
cdef inline off_t lw_fq_clock() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <off_t>ts.tv_sec * 1000000000 + ts.tv_nsec + 2


# Open the queue file qpath for q (created with create_mode if missing, and
# read-only for a shared request where this process may only read it):
# 0 or a positive errno (ELOOP for a symbolic link, EINVAL for what is not a
# regular file). Caller: q.fd is -1.
cdef int lw_fq_open(lw_fqueue *q, const char *qpath, int create_mode,
                    bint for_shared) noexcept nogil:
    cdef int flags = O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK
    cdef int fd, err, i
    cdef struct_stat st
    fd = open(qpath, flags, create_mode)
    if fd < 0 and for_shared and (errno == EACCES or errno == EROFS):
        fd = open(qpath, (flags & ~(O_RDWR | O_CREAT)) | O_RDONLY)
    if fd < 0:
        return errno
    if fstat(fd, &st) != 0:
        err = errno
        close(fd)
        return err
    if not S_ISREG(st.st_mode):
        close(fd)
        return EINVAL
    q.fd = fd
    q.dev = st.st_dev
    q.ino = st.st_ino
    q.ticket = 0
    q.slot = -1
    lw_mutex_lock(&lw_fq_mu)
    for i in range(LW_FQ_FDS):
        if lw_fq_fds[i] == 0:
            lw_fq_fds[i] = fd + 1
            q.slot = i
            break
    lw_mutex_unlock(&lw_fq_mu)
    return 0


# Leave the queue: give back q's ticket (and anything else its descriptor
# locks; a fork child may share the description) and close it.
cdef void lw_fq_close(lw_fqueue *q) noexcept nogil:
    if q.fd < 0:
        return
    lw_setlk_range(q.fd, F_OFD_SETLK, F_UNLCK, 0, 0)
    if q.slot >= 0:
        lw_mutex_lock(&lw_fq_mu)
        lw_fq_fds[q.slot] = 0
        lw_mutex_unlock(&lw_fq_mu)
        q.slot = -1
    close(q.fd)
    q.fd = -1
    q.ticket = 0


# *busy = 1 if a waiter in q's queue is ahead of a request for mode arriving
# now (any waiter for an exclusive request, an exclusive one for a shared
# request); 0 or a positive errno.
cdef int lw_fq_busy(lw_fqueue *q, int mode, int *busy) noexcept nogil:
    cdef flock fl
    memset(&fl, 0, sizeof(fl))
    fl.l_type = F_WRLCK if mode == LW_EXCLUSIVE else F_RDLCK
    fl.l_whence = SEEK_SET
    fl.l_start = 1
    busy[0] = 0
    if c_fcntl(q.fd, F_OFD_GETLK, &fl) != 0:
        return errno
    busy[0] = fl.l_type != F_UNLCK
    return 0


# Lock ticket t for a request of mode, without waiting: 0 (q.ticket is t),
# or EAGAIN with the lock in the way in *conflict, or a positive errno.
cdef int lw_fq_take(lw_fqueue *q, int mode, off_t t, flock *conflict) noexcept nogil:
    cdef short ltype = F_WRLCK if mode == LW_EXCLUSIVE else F_RDLCK
    cdef int err = lw_setlk_range(q.fd, F_OFD_SETLK, ltype, t, 1)
    if err == 0:
        q.ticket = t
        return 0
    if err == EAGAIN:
        memset(conflict, 0, sizeof(conflict[0]))
        conflict.l_type = ltype
        conflict.l_whence = SEEK_SET
        conflict.l_start = t
        conflict.l_len = 1
        if c_fcntl(q.fd, F_OFD_GETLK, conflict) != 0:
            return errno
        if conflict.l_type == F_UNLCK:      # gone meanwhile: as good as a same-time ticket
            conflict.l_start = t
            conflict.l_len = 1
    return err


# Unlink the queue file at qpath if no waiter is in it (FileLock.remove()):
# lock all of it without waiting, check the path still names it, unlink,
# close. Best effort: nothing is reported.
cdef void lw_fq_remove(const char *qpath) noexcept nogil:
    cdef int same = 0
    cdef struct_stat st
    cdef int fd = open(qpath, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK)
    if fd < 0:
        return
    if lw_setlk_range(fd, F_OFD_SETLK, F_WRLCK, 0, 0) == 0 and fstat(fd, &st) == 0 \
            and lw_path_names(qpath, st.st_dev, st.st_ino, &same) == 0 and same:
        unlink(qpath)
    close(fd)


# In a fork child, before any Python code: close the queue descriptors.
cdef void lw_fq_after_fork_child() noexcept nogil:
    cdef int i
    lw_mutex_reset(&lw_fq_mu)
    for i in range(LW_FQ_FDS):
        if lw_fq_fds[i]:
            close(lw_fq_fds[i] - 1)
            lw_fq_fds[i] = 0


pthread_atfork(NULL, NULL, lw_fq_after_fork_child)
