# Linux-specific declarations, with C shims only where Cython cannot say it
# (a union member glibc names differently across versions, variadic syscalls).

from posix.signal cimport sigevent
from posix.time cimport timer_t, timespec
from posix.types cimport pid_t
from posix.uio cimport iovec


cdef extern from *  nogil:
    """
    #include <errno.h>
    #include <fcntl.h>
    #include <limits.h>
    #include <pthread.h>
    #include <time.h>
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

    /* Each thread's wake timer (timer_create, aimed at the thread itself with
     * the wake signal), made on its first kernel lock wait and deleted when it
     * exits, so that a wait costs no timer_create/timer_delete of its own. */
    static pthread_key_t lw_timer_key;
    static pthread_once_t lw_timer_once = PTHREAD_ONCE_INIT;
    static __thread timer_t lw_tls_timer;
    static __thread int lw_tls_timer_made;

    static void lw_timer_at_exit(void *unused)
    {
        if (lw_tls_timer_made) {
            timer_delete(lw_tls_timer);
            lw_tls_timer_made = 0;
        }
    }

    static void lw_timer_key_make(void)
    {
        (void) pthread_key_create(&lw_timer_key, lw_timer_at_exit);
    }

    /* *timer = the calling thread's wake timer for signo; 0 or a positive errno. */
    static int lw_thread_timer(int signo, timer_t *timer)
    {
        struct sigevent sev;
        if (!lw_tls_timer_made) {
            (void) pthread_once(&lw_timer_once, lw_timer_key_make);
            lw_sigev_to_thread(&sev, signo, lw_gettid());
            if (timer_create(CLOCK_MONOTONIC, &sev, &lw_tls_timer) != 0)
                return errno;
            lw_tls_timer_made = 1;
            (void) pthread_setspecific(lw_timer_key, (void *) 1);
        }
        *timer = lw_tls_timer;
        return 0;
    }

    /* In a fork child: timers are not inherited, so the copy of the forking
     * thread's is forgotten (a new one is made on first use). */
    static void lw_thread_timer_forget(void)
    {
        lw_tls_timer_made = 0;
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
    int lw_thread_timer(int signo, timer_t *timer)
    void lw_thread_timer_forget()


# Netlink sockets and namespaces.
cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    enum: AF_NETLINK
    enum: SOCK_RAW
    enum: SOCK_CLOEXEC
    enum: SOL_SOCKET
    enum: SO_RCVBUF
    enum: SO_RCVBUFFORCE
    enum: MSG_PEEK
    enum: MSG_TRUNC
    enum: MSG_DONTWAIT
    struct sockaddr:
        sa_family_t sa_family
    int socket(int domain, int type, int protocol)
    int bind(int fd, const sockaddr *addr, socklen_t len)
    int connect(int fd, const sockaddr *addr, socklen_t len)
    int getsockname(int fd, sockaddr *addr, socklen_t *len)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
    ssize_t recv(int fd, void *buf, size_t len, int flags)
    ssize_t send(int fd, const void *buf, size_t len, int flags)
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t recvmsg(int fd, msghdr *msg, int flags)

cdef extern from "<linux/netlink.h>" nogil:
    struct sockaddr_nl:
        sa_family_t nl_family
        unsigned int nl_pid
        unsigned int nl_groups
    enum: SOL_NETLINK
    enum: NETLINK_ADD_MEMBERSHIP
    enum: NETLINK_DROP_MEMBERSHIP
    enum: NETLINK_CAP_ACK
    enum: NETLINK_EXT_ACK
    enum: NETLINK_GET_STRICT_CHK

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    enum: POLLIN
    int poll(pollfd *fds, unsigned long nfds, int timeout)

cdef extern from "<sched.h>" nogil:
    enum: CLONE_NEWNET
    int setns(int fd, int nstype)


# inotify: the cheap signal that a lock file or a directory above it moved.
cdef extern from "<sys/inotify.h>" nogil:
    enum: IN_NONBLOCK
    enum: IN_CLOEXEC
    enum: IN_ATTRIB
    enum: IN_MOVE_SELF
    enum: IN_DELETE_SELF
    enum: IN_IGNORED
    enum: IN_Q_OVERFLOW
    enum: IN_ONLYDIR
    struct inotify_event:
        int wd
        unsigned int mask
        unsigned int cookie
        unsigned int len
    int inotify_init1(int flags)
    int inotify_add_watch(int fd, const char *pathname, unsigned int mask)
    int inotify_rm_watch(int fd, int wd)

cdef extern from "<sys/ioctl.h>" nogil:
    enum: FIONREAD
    int ioctl(int fd, unsigned long request, ...)
