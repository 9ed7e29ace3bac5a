# Synchronisation that does not lean on the GIL: atomics, a futex mutex, and
# the schedule-perturbation pause. C shims, because Cython has no atomics.
#
# The rule these serve (it makes the core correct on free-threaded CPython too):
# every piece of shared lock state is changed under a C lock or with an atomic,
# never "because the GIL is held".

cdef extern from *  nogil:
    """
    #include <limits.h>
    #include <linux/futex.h>
    #include <sched.h>
    #include <sys/syscall.h>
    #include <time.h>
    #include <unistd.h>

    #if defined(__x86_64__) || defined(__i386__)
    #define lw_cpu_relax() __builtin_ia32_pause()
    #elif defined(__aarch64__)
    #define lw_cpu_relax() __asm__ __volatile__("yield")
    #else
    #define lw_cpu_relax() ((void) 0)
    #endif

    /* Atomics on the plain integers Cython declares. Loads acquire, stores
     * release, read-modify-writes are sequentially consistent. */
    #define lw_load_u(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define lw_store_u(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    #define lw_load_i(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define lw_store_i(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    #define lw_load_ul(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define lw_store_ul(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    #define lw_inc_u(p) __atomic_add_fetch((p), 1u, __ATOMIC_SEQ_CST)

    /* 1 if *p was expected and is now desired, else 0 (*p unchanged). */
    static inline int lw_cas_i(int *p, int expected, int desired)
    {
        return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                           __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
    }


    /* A mutex on one futex word (Drepper's three states: 0 free, 1 locked,
     * 2 locked and maybe waited for). Not recursive, no owner; 4 bytes, no
     * destructor, zero-initialised means free. A fork child must reset a mutex
     * another thread may have held (lw_mutex_reset). */
    typedef struct { unsigned int word; } lw_mutex;

    static inline int lw_mutex_trylock(lw_mutex *m)
    {
        unsigned int free_ = 0;
        return __atomic_compare_exchange_n(&m->word, &free_, 1, 0,
                                           __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
    }

    /* Block until m is ours. Caller: not holding the GIL (it may sleep). */
    static inline void lw_mutex_lock(lw_mutex *m)
    {
        int spins;
        if (lw_mutex_trylock(m))
            return;
        /* Critical sections are a few dozen instructions: spin a little first. */
        for (spins = 0; spins < 100; spins++) {
            if (__atomic_load_n(&m->word, __ATOMIC_RELAXED) == 0 && lw_mutex_trylock(m))
                return;
            lw_cpu_relax();
        }
        while (__atomic_exchange_n(&m->word, 2, __ATOMIC_ACQUIRE) != 0)
            syscall(SYS_futex, &m->word, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
    }

    static inline void lw_mutex_unlock(lw_mutex *m)
    {
        if (__atomic_exchange_n(&m->word, 0, __ATOMIC_RELEASE) == 2)
            syscall(SYS_futex, &m->word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    }

    static inline void lw_mutex_reset(lw_mutex *m)
    {
        m->word = 0;
    }

    /* Wake at most n threads sleeping on word. */
    static inline void lw_futex_wake_n(unsigned int *word, int n)
    {
        syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
    }

    /* Schedule perturbation (LATCHWIRE_PERTURB=1): at each call, yield the CPU
     * or sleep 1-20 us, at random, so that another thread runs between a check
     * and the act that depends on it. A per-thread xorshift: no shared state. */
    static int lw_perturb_on;
    static __thread unsigned int lw_perturb_rng;

    static void lw_perturb_pause(void)
    {
        unsigned int x = lw_perturb_rng;
        struct timespec ts;
        if (!x)
            x = (unsigned int) syscall(SYS_gettid) * 2654435761u | 1u;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        lw_perturb_rng = x;
        switch (x % 4) {
        case 0:
            break;
        case 1:
            sched_yield();
            break;
        default:
            ts.tv_sec = 0;
            ts.tv_nsec = 1000 + (long) (x >> 8) % 19000;
            nanosleep(&ts, NULL);
        }
    }
    """
    unsigned int lw_load_u(const unsigned int *p)
    void lw_store_u(unsigned int *p, unsigned int v)
    int lw_load_i(const int *p)
    void lw_store_i(int *p, int v)
    unsigned long lw_load_ul(const unsigned long *p)
    void lw_store_ul(unsigned long *p, unsigned long v)
    unsigned int lw_inc_u(unsigned int *p)
    bint lw_cas_i(int *p, int expected, int desired)

    ctypedef struct lw_mutex:
        unsigned int word
    bint lw_mutex_trylock(lw_mutex *m)
    void lw_mutex_lock(lw_mutex *m)
    void lw_mutex_unlock(lw_mutex *m)
    void lw_mutex_reset(lw_mutex *m)
    void lw_futex_wake_n(unsigned int *word, int n)

    int lw_perturb_on
    void lw_perturb_pause()
