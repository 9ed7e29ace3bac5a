"""latchwire's compiled core.

What must not pay the interpreter, or must talk to the kernel in ways Python's
own modules cannot. One concept per included file:

- _base.pxi: errors, the monotonic clock and deadlines, acquisition sites, the
  fork generation, and the one futex wait every in-process lock wait uses.
- _wakesignal.pxi: the signal that interrupts a thread blocked in the kernel.
- _pathwatch.pxi: the inotify watch that says when a lock file's path must be
  walked again after a grant.
- _lockfile.pxi: the OFD/POSIX lock calls and the per-process record of one
  lock file (an inode), shared by every FileLock whose path leads to it.
- _kernelwait.pxi: the one wait in the kernel for a file lock (deadline,
  cancel, deadlock re-checks).
- _fairqueue.pxi: the ticket queue of fair lock files.
- _filelock.pxi: FileLock, the record's face.
- _lockdep.pxi: the lock-order checker's fast path (latchwire.lockorder has
  the order graph).
- _mutex.pxi: Mutex and RWLock.
- _netlink.pxi: netlink channels (one kernel socket each) and the bounds-checked
  message and attribute parser.
- _rtnl.pxi: rtnetlink records (links, addresses, routes, neighbours) decoded
  in one pass over a received datagram.
- _ipfmt.pxi: routes written out as ip and ip -j print them (RouteFormat), for
  the command line.

The rule for all of them: shared lock state changes under a C lock (an
lw_mutex) or with atomics (_sync.pxd), never because the GIL happens to be held,
so the core is correct on free-threaded CPython too; the GIL is released around
every call that may block (a kernel lock wait, a futex wait, open), and a C lock
is never waited for with the GIL held.
"""

cimport cython
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.errno cimport (EACCES, EAGAIN, EDEADLOCK, EINTR, EINVAL, ELOOP, ENOBUFS, ENOENT, EROFS,
                         errno)
from libc.stdlib cimport abort
from libc.signal cimport SIG_DFL
from libc.string cimport memcpy, memset
from posix.fcntl cimport (F_DUPFD_CLOEXEC, F_GETFL, F_RDLCK, F_SETFD, F_SETLK, F_SETLKW,
                          F_UNLCK, F_WRLCK, FD_CLOEXEC, O_ACCMODE, O_CLOEXEC,
                          O_CREAT, O_NOCTTY, O_NONBLOCK, O_RDONLY, O_RDWR, SEEK_SET,
                          flock, open)
from posix.fcntl cimport fcntl as c_fcntl
from posix.signal cimport (SIG_SETMASK, SIG_UNBLOCK, sigaction, sigaction_t, sigaddset,
                           sigemptyset, sigevent, sigismember, sigset_t)
from posix.stat cimport S_ISREG, fstat, lstat, struct_stat
from posix.time cimport (CLOCK_MONOTONIC, clock_gettime, itimerspec, nanosleep, timer_create,
                         timer_delete, timer_settime, timer_t, timespec)
from posix.types cimport dev_t, ino_t, off_t
from posix.unistd cimport close, pwrite, read, unlink

from latchwire._cpython cimport (PyCodeObject, PyErr_CheckSignals, PyEval_GetFrame,
                                 PyFrameObject, PyCode_Addr2Line, PyThreadState_GetDict,
                                 lw_frame_code, lw_frame_lasti)
from latchwire._linux cimport (F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW, FIONREAD, IN_ATTRIB,
                               IN_CLOEXEC, IN_DELETE_SELF, IN_IGNORED, IN_MOVE_SELF, IN_NONBLOCK,
                               IN_ONLYDIR, IN_Q_OVERFLOW, inotify_add_watch, inotify_event,
                               inotify_init1, inotify_rm_watch, ioctl, lw_futex_wait,
                               lw_futex_wake, lw_gettid, lw_sigev_to_thread, lw_thread_serial,
                               lw_thread_timer, lw_thread_timer_forget)
from latchwire._sync cimport (lw_cas_i, lw_futex_wake_n, lw_inc_u, lw_load_i,
                              lw_load_u, lw_load_ul, lw_mutex, lw_mutex_lock, lw_mutex_reset,
                              lw_mutex_trylock, lw_mutex_unlock, lw_perturb_on,
                              lw_perturb_pause, lw_store_i, lw_store_u, lw_store_ul)
from latchwire._posix cimport (LOCK_EX, LOCK_NB, LOCK_SH, LOCK_UN, O_NOFOLLOW, TIMER_ABSTIME,
                               lw_flock, pthread_atfork, pthread_sigmask)

import os as _os
import _weakref  # the C module: weakref would import collections.abc at every start

from latchwire.errors import LockBusy, LockCancelled, LockTimeout


cdef enum:
    LW_UNLOCKED = 0
    LW_SHARED = 1
    LW_EXCLUSIVE = 2
    # After a timer's first expiry (deadline or cancel), how often it fires
    # again until the waiter has seen it.
    LW_REFIRE_NS = 1000000
    # Timeouts longer than this (about 31 years) are waits without a deadline,
    # so that every deadline fits a timespec.
    LW_FOREVER = 1000000000

cdef object _MODE_NAMES = (None, "shared", "exclusive")


include "_base.pxi"
include "_wakesignal.pxi"
include "_lockdep.pxi"
include "_pathwatch.pxi"
include "_lockfile.pxi"
include "_kernelwait.pxi"
include "_fairqueue.pxi"
include "_filelock.pxi"
include "_waitboard.pxi"
include "_deadlock.pxi"
include "_mutex.pxi"
include "_netlink.pxi"
include "_rtnl.pxi"
include "_ipfmt.pxi"
