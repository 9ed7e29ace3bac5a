# POSIX declarations Cython's own posix/*.pxd do not carry.

from posix.signal cimport sigset_t


cdef extern from "<signal.h>" nogil:
    int pthread_sigmask(int how, const sigset_t *set, sigset_t *oldset)

cdef extern from "<pthread.h>" nogil:
    int pthread_atfork(void (*prepare)() noexcept nogil,
                       void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)

cdef extern from "<time.h>" nogil:
    enum: TIMER_ABSTIME

cdef extern from "<fcntl.h>" nogil:
    enum: O_NOFOLLOW

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, unsigned int size)

cdef extern from "<string.h>" nogil:
    size_t strnlen(const char *s, size_t maxlen)

cdef extern from "<sys/file.h>" nogil:
    enum: LOCK_SH
    enum: LOCK_EX
    enum: LOCK_NB
    enum: LOCK_UN
    int lw_flock "flock"(int fd, int operation)
