# Linux-specific declarations, with C shims only where Cython cannot say it
# (a union member glibc names differently across versions, variadic syscalls).

from posix.signal cimport sigevent
from posix.time cimport timespec
from posix.types cimport pid_t


cdef extern from *  nogil:
    """
    #include <fcntl.h>
    #include <limits.h>
    #include <linux/futex.h>
    #include <signal.h>
    #include <string.h>
    #include <sys/syscall.h>
    #include <unistd.h>

    /* glibc before 2.20 (manylinux2014 builds) lacks the OFD commands. */
    #ifndef F_OFD_GETLK
    #define F_OFD_GETLK 36
    #define F_OFD_SETLK 37
    #define F_OFD_SETLKW 38
    #endif
    #ifndef SIGEV_THREAD_ID
    #define SIGEV_THREAD_ID 4
    #endif

    /* Fill *sev so that a timer signals signo to thread tid only. */
    static inline void lw_sigev_to_thread(struct sigevent *sev, int signo, pid_t tid)
    {
        memset(sev, 0, sizeof *sev);
        sev->sigev_notify = SIGEV_THREAD_ID;
        sev->sigev_signo = signo;
    #ifdef sigev_notify_thread_id
        sev->sigev_notify_thread_id = tid;
    #else
        sev->_sigev_un._tid = tid;
    #endif
    }

    static inline pid_t lw_gettid(void)
    {
        return (pid_t) syscall(SYS_gettid);
    }

    /* Sleep while *word == val, at most *rel (NULL: no limit); -1 with errno
     * EAGAIN (word changed), ETIMEDOUT or EINTR (a signal handler ran). */
    static inline int lw_futex_wait(unsigned int *word, unsigned int val,
                                    const struct timespec *rel)
    {
        return (int) syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, val, rel, NULL, 0);
    }

    /* Wake every thread sleeping on word. */
    static inline void lw_futex_wake(unsigned int *word)
    {
        syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    }

    /* A number for the calling thread that no other thread of the process
     * ever had (pthread_self() values are reused as soon as a thread exits). */
    static __thread unsigned long lw_tls_serial;
    static unsigned long lw_serial_next;

    static inline unsigned long lw_thread_serial(void)
    {
        if (!lw_tls_serial)
            lw_tls_serial = __atomic_add_fetch(&lw_serial_next, 1, __ATOMIC_RELAXED);
        return lw_tls_serial;
    }
    """
    enum: F_OFD_GETLK
    enum: F_OFD_SETLK
    enum: F_OFD_SETLKW
    void lw_sigev_to_thread(sigevent *sev, int signo, pid_t tid)
    pid_t lw_gettid()
    int lw_futex_wait(unsigned int *word, unsigned int val, const timespec *rel)
    void lw_futex_wake(unsigned int *word)
    unsigned long lw_thread_serial()
