# Included by _core.pyx: this process's wait board, a file other processes
# read to see which of its threads wait for which lock while holding what.
#
# The kernel shows a thread blocked in F_OFD_SETLKW, but not what that thread
# holds (OFD locks belong to open file descriptions, and a process's threads
# share them), nor a thread waiting here behind another thread of this
# process, nor one that has left the kernel for a moment (a deadlock re-check,
# a signal). So each wait is written here as it begins and wiped as it ends,
# with the waiting thread's holds and when it began: latchwire.waitgraph reads
# every board to build a graph of threads instead of processes, and
# ``latchwire locks --waiters`` lists the waits in the order they began. A
# process has a board from its first wait on, with every wait of its
# FileLocks and leases on it.
#
# The board is /dev/shm/latchwire-waits.PID: a header (magic, pid, the
# process's start time from /proc/self/stat, so that a reader knows a stale
# board of a dead process whose pid came back, and how many slots are in use
# at most), then LW_BOARD_SLOTS slots of 1024 bytes, each one wait.
# A slot is written with one pwrite(); its sequence number is at both ends,
# so a reader that read it while it changed sees them differ and skips it.
# Without /dev/shm (or its space) there is no board, and the graph reads this
# process as the kernel shows it.

cdef enum:
    LW_BOARD_SLOTS = 256
    LW_BOARD_HOLDS = 39     # holds a slot lists; more and it says overflow
    LW_BOARD_NONE = 0       # lw_board_state: not made yet in this generation
    LW_BOARD_MAKING = 1
    LW_BOARD_READY = 2
    LW_BOARD_FAILED = 3
    LW_KIND_OFD = 0
    LW_KIND_POSIX = 1
    LW_KIND_FLOCK = 2

cdef struct lw_board_hold:
    unsigned long long dev
    unsigned long long ino
    int exclusive
    int kind

# One wait; 1024 bytes (waitgraph.py's _SLOT says the same layout).
cdef struct lw_board_slot:
    unsigned long long seq
    int state               # 1 while the wait lasts
    int tid
    unsigned long long dev
    unsigned long long ino
    int kind
    int exclusive
    long long start
    long long end           # the last byte, inclusive; -1 for EOF
    int nholds
    int overflow            # it holds more than holds lists: take it to hold all
    lw_board_hold holds[39]
    unsigned long long began    # when the wait began, CLOCK_MONOTONIC ns
    char pad[8]
    unsigned long long seq2

cdef struct lw_board_header:
    char magic[8]           # "LWWAITS1"
    unsigned int pid
    unsigned int high       # slots [0, high) may be in use
    unsigned long long starttime
    char pad[40]

cdef lw_mutex lw_board_mu
cdef int lw_board_fd = -1               # (lw_board_mu, once READY)
cdef int lw_board_state = LW_BOARD_NONE
cdef unsigned long long lw_board_seq = 0    # (lw_board_mu)
cdef unsigned int lw_board_high = 0         # (lw_board_mu)
cdef unsigned char lw_board_used[256]       # (lw_board_mu) 1: the slot is taken


# As latchwire.waitgraph reads them.
cdef str _BOARD_DIR = "/dev/shm"
cdef str _BOARD_PREFIX = "latchwire-waits."
cdef bytes _BOARD_MAGIC = b"LWWAITS1"


def _board_location():
    """(directory, file name prefix) of the wait boards: PREFIX + pid in directory."""
    return _BOARD_DIR, _BOARD_PREFIX


# Make this process's board if it has none: 0, or -1 when there is none to be
# had (the caller writes nothing). Caller: holds the GIL and no C mutex.
cdef int _board_ready():
    global lw_board_fd
    cdef lw_board_header header
    cdef int fd
    if lw_load_i(&lw_board_state) == LW_BOARD_READY:
        return 0
    if not lw_cas_i(&lw_board_state, LW_BOARD_NONE, LW_BOARD_MAKING):
        return -1       # failed, or another thread is making it: not this time
    pid = _os.getpid()
    path = f"{_BOARD_DIR}/{_BOARD_PREFIX}{pid}"
    try:
        fd = _os.open("/proc/self/stat", _os.O_RDONLY | _os.O_CLOEXEC)
        try:
            stat = _os.read(fd, 4096)
        finally:
            _os.close(fd)
        starttime = int(stat.rsplit(b")", 1)[1].split()[19])
        fd = _os.open(path, _os.O_RDWR | _os.O_CREAT | _os.O_TRUNC | _os.O_CLOEXEC
                      | _os.O_NOFOLLOW, 0o644)
    except (OSError, ValueError, IndexError):
        lw_store_i(&lw_board_state, LW_BOARD_FAILED)
        return -1
    memset(&header, 0, sizeof(header))
    memcpy(header.magic, <const char *>_BOARD_MAGIC, 8)
    header.pid = <unsigned int>pid
    header.starttime = starttime
    if pwrite(fd, &header, sizeof(header), 0) != sizeof(header):
        close(fd)
        lw_store_i(&lw_board_state, LW_BOARD_FAILED)
        return -1
    import atexit       # a builtin module: no import cost
    atexit.register(_board_remove, path, pid)
    lw_board_fd = fd
    lw_store_i(&lw_board_state, LW_BOARD_READY)
    _board_sweep()
    return 0


# Remove the boards of processes that are gone. A process that ends through
# _exit() (a fork child of multiprocessing, one killed) leaves its board
# behind; each new board sweeps, so they do not pile up. (A board whose pid
# came back to another process is left to the readers, which compare start
# times.)
cdef void _board_sweep():
    try:
        names = _os.listdir(_BOARD_DIR)
    except OSError:
        return
    for name in names:
        if not name.startswith(_BOARD_PREFIX) or not name[len(_BOARD_PREFIX):].isdigit():
            continue
        if _os.path.exists(f"/proc/{name[len(_BOARD_PREFIX):]}"):
            continue
        try:
            _os.unlink(f"{_BOARD_DIR}/{name}")
        except OSError:
            pass


# In a fork child (alone in it): the parent's board is not the child's.
cdef void _board_after_fork_child() noexcept nogil:
    global lw_board_fd, lw_board_high
    if lw_board_fd >= 0:
        close(lw_board_fd)
    lw_board_fd = -1
    lw_board_high = 0
    memset(lw_board_used, 0, sizeof(lw_board_used))
    lw_mutex_reset(&lw_board_mu)
    lw_store_i(&lw_board_state, LW_BOARD_NONE)


pthread_atfork(NULL, NULL, _board_after_fork_child)


def _board_remove(path, pid):
    """At exit: remove this process's board (not a fork child's parent's)."""
    if _os.getpid() == pid:
        try:
            _os.unlink(path)
        except OSError:
            pass


# Write the wait of the calling thread for the lock of kind (LW_KIND_*) and
# mode on the bytes start..end (inclusive, -1: to the end) of (dev, ino) to a
# free slot, with holds (what _thread_holds() gave):
# the slot's number, or -1 if nothing was written. Caller: holds the GIL and
# no C mutex; wipes the slot with _board_wipe() when the wait ends.
cdef int _board_write(dev_t dev, ino_t ino, off_t start, off_t end, int kind, bint exclusive,
                      list holds):
    global lw_board_seq, lw_board_high
    cdef lw_board_slot slot
    cdef int i, n = 0, index = -1
    if _board_ready() != 0:
        return -1
    memset(&slot, 0, sizeof(slot))
    slot.state = 1
    slot.tid = lw_gettid()
    slot.dev = dev
    slot.ino = ino
    slot.kind = kind
    slot.exclusive = exclusive
    slot.start = start
    slot.end = end
    slot.began = <unsigned long long>(lw_now() * 1e9)
    for hold in holds:
        if n == LW_BOARD_HOLDS:
            slot.overflow = 1
            break
        slot.holds[n].dev = hold[0]
        slot.holds[n].ino = hold[1]
        slot.holds[n].exclusive = hold[2]
        slot.holds[n].kind = _KIND_NUMBERS[hold[3]]
        n += 1
    slot.nholds = n
    lw_lock(&lw_board_mu)
    for i in range(LW_BOARD_SLOTS):
        if not lw_board_used[i]:
            index = i
            lw_board_used[i] = 1
            break
    if index >= 0:
        lw_board_seq += 1
        slot.seq = slot.seq2 = lw_board_seq
        if <unsigned int>index >= lw_board_high:
            lw_board_high = index + 1
            pwrite(lw_board_fd, &lw_board_high, sizeof(lw_board_high), 12)  # header.high
    lw_mutex_unlock(&lw_board_mu)
    if index < 0:
        return -1
    if pwrite(lw_board_fd, &slot, sizeof(slot),
              <off_t>(sizeof(lw_board_header) + index * sizeof(slot))) != sizeof(slot):
        _board_wipe(index)
        return -1
    return index


cdef object _KIND_NUMBERS = {"ofd": LW_KIND_OFD, "posix": LW_KIND_POSIX, "flock": LW_KIND_FLOCK}


# The wait in slot index (-1: none) has ended: wipe it and free the slot.
# Caller: the thread that wrote it.
cdef void _board_wipe(int index) noexcept:
    cdef unsigned long long zero[2]
    if index < 0 or lw_board_fd < 0:
        return
    zero[0] = zero[1] = 0
    pwrite(lw_board_fd, zero, sizeof(zero),
           <off_t>(sizeof(lw_board_header) + index * sizeof(lw_board_slot)))
    lw_lock(&lw_board_mu)
    lw_board_used[index] = 0
    lw_mutex_unlock(&lw_board_mu)
