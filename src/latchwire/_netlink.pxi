# Included by _core.pyx: netlink channels (one kernel socket each) and the
# bounds-checked message and attribute parser.
#
# A _Channel is created in a network namespace by a short setns() hop of the
# calling thread (GIL held, so no Python code runs in between), bound to a
# kernel-chosen port id, and connected to the kernel (port 0), so that the
# kernel refuses unicast from other sockets; multicast from a privileged
# process is still possible, so every datagram whose sender is not the kernel
# is dropped on receipt. Receiving peeks at the datagram's true length and
# sender first (recvmsg with MSG_PEEK|MSG_TRUNC), so a datagram of any size
# comes out whole; the GIL is released only around the socket calls. Every
# receive error becomes an exception in one place (_recv_error): ENOBUFS, the
# kernel's word that notifications were lost, is always an Overrun.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_FromString
from libc.limits cimport INT_MAX
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from latchwire._linux cimport (AF_NETLINK, CLONE_NEWNET, MSG_DONTWAIT, MSG_PEEK, MSG_TRUNC,
                               NETLINK_ADD_MEMBERSHIP, NETLINK_CAP_ACK,
                               NETLINK_DROP_MEMBERSHIP, NETLINK_EXT_ACK,
                               NETLINK_GET_STRICT_CHK, POLLIN, SO_RCVBUF, SO_RCVBUFFORCE,
                               SOCK_CLOEXEC, SOCK_RAW, SOL_NETLINK, SOL_SOCKET, bind, connect,
                               getsockname, msghdr, poll, pollfd, recv, recvmsg, send, setns,
                               setsockopt, sockaddr, sockaddr_nl, socket, socklen_t)
from posix.uio cimport iovec
from latchwire._posix cimport inet_ntop
from latchwire.errors import Overrun, ProtocolError

cdef enum:
    NLMSG_HDRLEN = 16
    NLA_HDRLEN = 4
    NLA_TYPE_MASK = 0x3fff          # ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)
    NL_PEEK_BUFFER = 65536          # datagrams up to this size take one copy
    AF_INET_ = 2
    AF_INET6_ = 10
    LW_HWADDR_SIZE = 32             # MAX_ADDR_LEN
    NLMSG_NOOP_ = 1
    NLMSG_ERROR_ = 2
    NLMSG_DONE_ = 3
    NLM_F_DUMP_INTR_ = 0x10
    NLM_F_DUMP_FILTERED_ = 0x20
    # What a datagram said about the dump it belongs to (recv_into's status).
    LW_DUMP_DONE = 1
    LW_DUMP_INTR = 2
    LW_DUMP_FILTERED = 4


cdef inline Py_ssize_t nl_align(Py_ssize_t n) noexcept nogil:
    return (n + 3) & ~3


# Set an int socket option; 0 or a positive errno.
cdef int lw_setsockopt_int(int fd, int level, int name, int value) noexcept nogil:
    if setsockopt(fd, level, name, &value, sizeof(value)) != 0:
        return errno
    return 0


# A netlink socket of protocol, created in the namespace netns_fd (-1: the
# calling thread's), bound and connected to the kernel; its port id in *pid.
# Returns the descriptor, or -1 with *err a positive errno (nothing left open).
cdef int lw_nl_open(int protocol, int netns_fd, unsigned int *pid, int *err) noexcept nogil:
    cdef int fd, home = -1
    cdef sockaddr_nl addr
    cdef socklen_t addrlen = sizeof(addr)
    if netns_fd >= 0:
        home = open(b"/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        if home < 0 or setns(netns_fd, CLONE_NEWNET) != 0:
            err[0] = errno
            if home >= 0:
                close(home)
            return -1
    fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol)
    err[0] = errno if fd < 0 else 0
    if home >= 0:
        if setns(home, CLONE_NEWNET) != 0:
            abort()     # this thread would stay in another namespace: nothing is safe now
        close(home)
    if fd < 0:
        return -1
    memset(&addr, 0, sizeof(addr))
    addr.nl_family = AF_NETLINK
    if bind(fd, <sockaddr *>&addr, sizeof(addr)) != 0 \
            or getsockname(fd, <sockaddr *>&addr, &addrlen) != 0:
        err[0] = errno
        close(fd)
        return -1
    pid[0] = addr.nl_pid
    memset(&addr, 0, sizeof(addr))
    addr.nl_family = AF_NETLINK     # port 0: the kernel, and only the kernel
    if connect(fd, <sockaddr *>&addr, sizeof(addr)) != 0:
        err[0] = errno
        close(fd)
        return -1
    return fd


# Take the datagram at the head of fd's queue without waiting: copy its first
# size bytes to buf (buf NULL, size 0: copy nothing), drop it from the queue,
# and put its whole length in *length. 0, or a positive errno: EAGAIN if none
# is queued, ENOBUFS if the kernel dropped notifications since the last
# receive (reported once, the datagram still queued).
cdef int lw_nl_take(int fd, void *buf, size_t size, Py_ssize_t *length) noexcept nogil:
    cdef ssize_t got = recv(fd, buf, size, MSG_TRUNC | MSG_DONTWAIT)
    if got < 0:
        return errno
    length[0] = got
    return 0


# The exception for a receive that failed with the positive errno err: Overrun
# for ENOBUFS (notifications were lost), whichever call reported it; else the
# OSError for err.
cdef object _recv_error(int err):
    if err == ENOBUFS:
        return Overrun(ENOBUFS, "netlink notifications were lost: resync")
    return _oserror(err)


# poll()'s timeout for a wait until the monotonic deadline (-1: none): -1, or
# milliseconds rounded up, at most INT_MAX (a longer wait is made of several);
# 0 once the deadline has passed.
cdef inline int lw_poll_ms(double deadline) noexcept nogil:
    cdef double left
    cdef int ms
    if deadline < 0:
        return -1
    left = (deadline - lw_now()) * 1000
    if left <= 0:
        return 0
    if left >= INT_MAX:
        return INT_MAX
    ms = <int>left
    return ms + 1 if ms < left else ms


@cython.final
@cython.auto_pickle(False)
cdef class _Channel:
    """One netlink socket: created in a namespace, connected to the kernel.

    Owned by one thread at a time (the netlink.Socket using it), and that is
    enforced rather than assumed: a call made while another call is using the
    channel (another thread's, or a signal handler's during a wait) raises
    RuntimeError instead of sharing the receive buffer, on any build. Every wait
    takes a timeout checked as every latchwire wait's is (check_timeout): None,
    inf or more than about 31 years is no limit; NaN or a negative number is a
    ValueError, a non-number a TypeError.

    Whatever receive reports ENOBUFS (the peek, the read after it, the drop of
    a datagram), it is raised as Overrun: the kernel reports a loss once,
    before any datagram, so it can come between a peek and the read that
    follows, the datagram peeked staying queued for the next call.
    """
    cdef readonly int fd
    cdef readonly unsigned int pid
    cdef bytearray peekbuf     # reused receive buffer: the start of the datagram peeked
    cdef Py_ssize_t peeked     # that datagram's length, until it is taken; -1: none peeked
    cdef int busy              # 1 while a call uses the channel (lw_cas_i; never the GIL)

    def __cinit__(self, int protocol, int netns_fd=-1, int rcvbuf=0, bint strict=False):
        cdef int err = 0
        self.fd = -1
        self.peeked = -1
        with nogil:
            self.fd = lw_nl_open(protocol, netns_fd, &self.pid, &err)
        if self.fd < 0:
            raise _oserror(err)
        # Errors with the kernel's text and offset, and without the request echoed.
        err = lw_setsockopt_int(self.fd, SOL_NETLINK, NETLINK_EXT_ACK, 1)
        if not err:
            err = lw_setsockopt_int(self.fd, SOL_NETLINK, NETLINK_CAP_ACK, 1)
        if not err and strict:
            err = lw_setsockopt_int(self.fd, SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        if not err and rcvbuf > 0:
            err = lw_setsockopt_int(self.fd, SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            if err:
                err = lw_setsockopt_int(self.fd, SOL_SOCKET, SO_RCVBUF, rcvbuf)
        if err:
            self.close()
            raise _oserror(err)
        self.peekbuf = bytearray(NL_PEEK_BUFFER)

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)

    def close(self):
        """Close the socket (idempotent). RuntimeError while another call uses it:
        closing a descriptor another thread waits on would hand its number to
        the next file opened."""
        self._enter(False)
        self.peeked = -1
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
        self._leave()

    # Claim the channel for one call (released by _leave, which the caller
    # must reach on every path). RuntimeError if another call holds it;
    # ValueError (unclaimed again) if must_be_open and the channel is closed.
    cdef int _enter(self, bint must_be_open=True) except -1:
        if not lw_cas_i(&self.busy, 0, 1):
            raise RuntimeError("this netlink socket is in use by another call: a Socket "
                               "belongs to one thread at a time (netlink.Pool hands one "
                               "to each thread)")
        if must_be_open and self.fd < 0:
            lw_store_i(&self.busy, 0)
            raise ValueError("netlink channel is closed")
        return 0

    cdef inline void _leave(self) noexcept:
        lw_store_i(&self.busy, 0)

    def membership(self, int group, bint join):
        """Join (or leave) multicast group number group."""
        self._enter()
        cdef int err = lw_setsockopt_int(self.fd, SOL_NETLINK,
                                         NETLINK_ADD_MEMBERSHIP if join
                                         else NETLINK_DROP_MEMBERSHIP, group)
        self._leave()
        if err:
            raise _oserror(err)

    def send(self, const unsigned char[::1] data):
        """Send one datagram to the kernel (blocking only while the socket is full)."""
        if data.shape[0] == 0:
            raise ValueError("an empty datagram")
        self._enter()
        try:
            self._send(data)
        finally:
            self._leave()

    cdef int _send(self, const unsigned char[::1] data) except -1:
        cdef ssize_t n
        cdef int err = 0
        while True:
            with nogil:
                if lw_perturb_on:
                    lw_perturb_pause()
                n = send(self.fd, &data[0], data.shape[0], 0)
                if n < 0:
                    err = errno
            if n >= 0:
                return 0
            if err != EINTR:
                raise _oserror(err)
            PyErr_CheckSignals()

    # Wait until the monotonic deadline (-1: none; now: do not wait) for a
    # datagram from the kernel and peek at it: its length, with its first
    # NL_PEEK_BUFFER bytes in self.peekbuf, or -1 if none came. A datagram
    # peeked already and not yet taken is the answer at once. Datagrams from
    # any other sender are dropped; Overrun on ENOBUFS; a signal handler's
    # exception ends the wait. Caller: has claimed the channel (_enter).
    cdef Py_ssize_t _peek(self, double deadline) except -2:
        if self.peeked >= 0:
            return self.peeked
        cdef pollfd pfd
        cdef Py_ssize_t n, forged
        cdef int rc, wait_ms, err
        cdef sockaddr_nl sender
        cdef iovec iov
        cdef msghdr hdr
        cdef char *buf = self.peekbuf
        while True:
            memset(&hdr, 0, sizeof(hdr))
            iov.iov_base = buf
            iov.iov_len = NL_PEEK_BUFFER
            hdr.msg_name = &sender
            hdr.msg_namelen = sizeof(sender)
            hdr.msg_iov = &iov
            hdr.msg_iovlen = 1
            with nogil:
                if lw_perturb_on:
                    lw_perturb_pause()
                n = recvmsg(self.fd, &hdr, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT)
                err = errno if n < 0 else 0
                if n >= 0 and sender.nl_pid != 0:   # not the kernel: forged, dropped
                    n = -1
                    err = lw_nl_take(self.fd, NULL, 0, &forged)
                    if err == 0 or err == EAGAIN:
                        err = EINTR                 # look again
            if n >= 0:
                self.peeked = n
                return n
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            if err != EAGAIN:
                raise _recv_error(err)
            wait_ms = lw_poll_ms(deadline)
            if wait_ms == 0:
                return -1
            pfd.fd = self.fd
            pfd.events = POLLIN
            with nogil:
                if lw_perturb_on:
                    lw_perturb_pause()
                rc = poll(&pfd, 1, wait_ms)
                err = errno if rc < 0 else 0
            if rc < 0 and err == EINTR:
                PyErr_CheckSignals()
            elif rc < 0:
                raise _recv_error(err)

    # Take the datagram _peek saw (self.peeked bytes) off the queue, copying
    # it to buf (its size: the datagram's length) or, with buf NULL, copying
    # nothing. Overrun if the kernel reports a loss now (the datagram then
    # stays queued, to be peeked again).
    cdef int _consume(self, char *buf) except -1:
        cdef Py_ssize_t want = self.peeked, got = 0
        cdef int err
        self.peeked = -1
        while True:
            with nogil:
                if lw_perturb_on:
                    lw_perturb_pause()
                err = lw_nl_take(self.fd, buf, want if buf != NULL else 0, &got)
            if err == 0:
                break
            if err != EINTR:
                raise _recv_error(err)
            PyErr_CheckSignals()
        if got != want:
            raise ProtocolError(f"the datagram read ({got} bytes) is not the one peeked "
                                f"({want} bytes): is someone else reading this socket?")
        return 0

    # Consume the datagram _peek saw (n bytes) as bytes: copied from
    # self.peekbuf when it fits there, else read whole into a bytes object of
    # its size.
    cdef bytes _take(self, Py_ssize_t n):
        cdef bytes data
        if n <= NL_PEEK_BUFFER:
            data = PyBytes_FromStringAndSize(<char *>self.peekbuf, n)
            self._consume(NULL)
            return data
        data = PyBytes_FromStringAndSize(NULL, n)
        self._consume(PyBytes_AS_STRING(data))
        return data

    def peek(self, timeout=None):
        """The length of the next datagram from the kernel, which stays queued
        (the next recv, discard or recv_into takes it without waiting), or None
        if none came within timeout (0: do not wait). Overrun as recv()."""
        cdef double deadline = lw_deadline(timeout)
        cdef Py_ssize_t n
        self._enter()
        try:
            n = self._peek(deadline)
        finally:
            self._leave()
        return None if n < 0 else n

    def recv(self, timeout=None):
        """The next datagram from the kernel, whole, or None if none came within
        timeout (0: do not wait). Datagrams from any other sender are dropped.

        Overrun (ENOBUFS) if the kernel had to drop messages for this socket;
        the socket stays usable. A signal handler's exception ends a wait.
        """
        cdef double deadline = lw_deadline(timeout)
        cdef Py_ssize_t n
        self._enter()
        try:
            n = self._peek(deadline)
            return None if n < 0 else self._take(n)
        finally:
            self._leave()

    def discard(self, timeout=None):
        """Drop the next datagram unread (nothing is copied); False if none came
        within timeout. Overrun as recv()."""
        cdef double deadline = lw_deadline(timeout)
        self._enter()
        try:
            if self._peek(deadline) < 0:
                return False
            self._consume(NULL)
            return True
        finally:
            self._leave()

    def recv_into(self, list out not None, timeout=None, seq=None, bint decode=True):
        """Receive the next datagram and append its contents to out: the
        rtnetlink records (decode) or the Messages. With seq, only the messages
        of that sequence number and this channel's port id count (a dump's).

        None if nothing came within timeout; else (status, error): status has
        bit 1 for the end of a dump, 2 for NLM_F_DUMP_INTR, 4 for
        NLM_F_DUMP_FILTERED; error is the Message of an NLMSG_ERROR or of an
        NLMSG_DONE carrying an error, which ends the datagram's walk. Overrun
        as recv().
        """
        cdef double deadline = lw_deadline(timeout)
        cdef long long want = -1 if seq is None else <unsigned int>seq
        cdef Py_ssize_t n
        cdef bytes data
        cdef char *peeked = self.peekbuf
        self._enter()
        try:
            n = self._peek(deadline)
            if n < 0:
                return None
            if decode and n <= NL_PEEK_BUFFER:     # records own no bytes: decode in place
                self._consume(NULL)
                return lw_walk(<const unsigned char *>peeked, n, None, want, self.pid, decode,
                               out)
            data = self._take(n)
        finally:
            self._leave()
        return lw_walk(<const unsigned char *>PyBytes_AS_STRING(data), n, data, want, self.pid,
                       decode, out)


# ---------------------------------------------------------------------------
# Messages and attributes

cdef inline uint16_t rd16(const unsigned char *p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef inline uint32_t rd32(const unsigned char *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


# Whether a message starts at *off of p[0:n]: 1 with its length in *length, 0
# at the end; ProtocolError if its header or length does not fit.
cdef inline int lw_next_msg(const unsigned char *p, Py_ssize_t *off, Py_ssize_t n,
                            Py_ssize_t *length) except -1:
    cdef Py_ssize_t at = off[0]
    cdef uint32_t mlen
    if at >= n:
        return 0
    if n - at < NLMSG_HDRLEN:
        raise ProtocolError(f"truncated netlink header: {n - at} bytes at offset {at}")
    mlen = rd32(p + at)
    if mlen < NLMSG_HDRLEN or mlen > n - at:
        raise ProtocolError(f"netlink message length {mlen} at offset {at} does not fit "
                            f"the {n - at} bytes left")
    length[0] = mlen
    return 1


def parse(bytes buf not None):
    """Split a received datagram into Messages; ProtocolError if it is malformed.

    Every length is checked against the buffer: a truncated header, a length
    below the header's or past the end, or trailing bytes that are no message
    raise ProtocolError, never read outside buf.
    """
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf), off = 0, length
    cdef list msgs = []
    while lw_next_msg(p, &off, n, &length):
        msgs.append(lw_message(buf, p, off, length))
        off += nl_align(length)
    return msgs


# A Message for the message at off (length bytes, header checked) of owner,
# or, with no owner, of a copy of p[off:off+length].
cdef Message lw_message(bytes owner, const unsigned char *p, Py_ssize_t off,
                        Py_ssize_t length):
    if owner is None:
        owner = PyBytes_FromStringAndSize(<const char *>p + off, length)
        off = 0
    p = <const unsigned char *>PyBytes_AS_STRING(owner)
    cdef Message msg = Message.__new__(Message)
    msg.buf = owner
    msg.start = off + NLMSG_HDRLEN
    msg.end = off + length
    msg.type = rd16(p + off + 4)
    msg.flags = rd16(p + off + 6)
    msg.seq = rd32(p + off + 8)
    msg.pid = rd32(p + off + 12)
    return msg


# Walk the datagram p[0:n], appending to out every message (decode false) or
# the record of every rtnetlink message (decode true; other types are
# skipped). owner is the datagram's bytes, or None when p is a reused buffer.
# With seq >= 0 only messages with that sequence number and port id count.
# Returns (status, error): status has LW_DUMP_* bits; error is the Message of
# an NLMSG_ERROR, or of an NLMSG_DONE that carries an error, which ends the walk.
cdef tuple lw_walk(const unsigned char *p, Py_ssize_t n, bytes owner, long long seq,
                   unsigned int pid, bint decode, list out):
    cdef Py_ssize_t off = 0, length
    cdef int status = 0, mtype, mflags
    cdef object record
    while lw_next_msg(p, &off, n, &length):
        if seq >= 0 and (rd32(p + off + 8) != seq or rd32(p + off + 12) != pid):
            off += nl_align(length)
            continue            # not this dump's: a leftover of something earlier
        mtype = rd16(p + off + 4)
        mflags = rd16(p + off + 6)
        if mflags & NLM_F_DUMP_INTR_:
            status |= LW_DUMP_INTR
        if mflags & NLM_F_DUMP_FILTERED_:
            status |= LW_DUMP_FILTERED
        if mtype == NLMSG_DONE_:
            status |= LW_DUMP_DONE
            if length >= NLMSG_HDRLEN + 4 and <int32_t>rd32(p + off + NLMSG_HDRLEN) < 0:
                return status, lw_message(owner, p, off, length)
            return status, None
        if mtype == NLMSG_ERROR_:
            return status | LW_DUMP_DONE, lw_message(owner, p, off, length)
        if not decode:
            out.append(lw_message(owner, p, off, length))
        elif mtype != NLMSG_NOOP_:
            record = lw_decode_record(mtype, mflags, p, off + NLMSG_HDRLEN, off + length)
            if record is not None:
                out.append(record)
        off += nl_align(length)
    return status, None


@cython.final
@cython.auto_pickle(False)
cdef class Message:
    """One netlink message of a received buffer (parse() makes them)."""
    cdef readonly int type
    cdef readonly int flags
    cdef readonly unsigned int seq
    cdef readonly unsigned int pid
    cdef bytes buf
    cdef Py_ssize_t start, end       # the payload, after the 16-byte header

    def __repr__(self):
        return (f"<netlink.Message type={self.type} flags={self.flags:#x} seq={self.seq} "
                f"pid={self.pid} {self.end - self.start} bytes>")

    @property
    def payload(self):
        """The bytes after the netlink header."""
        return self.buf[self.start:self.end]

    def attrs(self, Py_ssize_t hdrlen=0):
        """The attributes after hdrlen bytes of family header; ProtocolError if malformed."""
        if hdrlen < 0 or nl_align(hdrlen) > self.end - self.start:
            raise ProtocolError(f"family header of {hdrlen} bytes does not fit a "
                                f"{self.end - self.start}-byte payload")
        return _attrs(self.buf, self.start + nl_align(hdrlen), self.end)

    def record(self):
        """The rtnetlink record (Link, Address, RouteEntry, Neighbour) this
        message carries, or None for another type; ProtocolError if malformed."""
        return lw_decode_record(self.type, self.flags,
                                <const unsigned char *>PyBytes_AS_STRING(self.buf),
                                self.start, self.end)


# The next attribute of p[*off:end]: 1 with its type and value span, 0 at the
# end; ProtocolError if the attribute header or length does not fit.
cdef inline int lw_next_attr(const unsigned char *p, Py_ssize_t *off, Py_ssize_t end,
                             int *atype, Py_ssize_t *vstart, Py_ssize_t *vlen) except -1:
    cdef Py_ssize_t at = off[0]
    cdef uint16_t length
    if at >= end:
        return 0
    if end - at < NLA_HDRLEN:
        raise ProtocolError(f"truncated attribute header: {end - at} bytes at offset {at}")
    length = rd16(p + at)
    if length < NLA_HDRLEN or length > end - at:
        raise ProtocolError(f"attribute length {length} at offset {at} does not fit the "
                            f"{end - at} bytes left")
    atype[0] = rd16(p + at + 2) & NLA_TYPE_MASK
    vstart[0] = at + NLA_HDRLEN
    vlen[0] = length - NLA_HDRLEN
    off[0] = at + nl_align(length)
    return 1


# An address of family (AF_INET: 4 bytes, else 16) as text.
cdef object lw_ip_text(int family, const uint8_t *a):
    cdef char text[48]
    if inet_ntop(family, a, text, sizeof(text)) == NULL:
        raise ProtocolError(f"address of family {family} cannot be shown")
    return PyUnicode_FromString(text)


# A link-layer address of n bytes (at most LW_HWADDR_SIZE) as aa:bb:...; "" for none.
cdef object lw_hw_text(const uint8_t *a, int n):
    cdef char text[3 * LW_HWADDR_SIZE]
    cdef const char *digits = b"0123456789abcdef"
    cdef int i
    if n == 0:
        return ""
    for i in range(n):
        text[3 * i] = digits[a[i] >> 4]
        text[3 * i + 1] = digits[a[i] & 15]
        text[3 * i + 2] = b":"
    text[3 * n - 1] = 0
    return PyUnicode_FromString(text)


# The attributes of buf[start:end], checked and indexed.
cdef Attrs _attrs(bytes buf, Py_ssize_t start, Py_ssize_t end):
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t off = start, vstart, vlen
    cdef int atype
    cdef Attrs attrs = Attrs.__new__(Attrs)
    attrs.buf = buf
    attrs.spans = []
    attrs.index = {}
    while lw_next_attr(p, &off, end, &atype, &vstart, &vlen):
        span = (atype, vstart, vstart + vlen)
        attrs.spans.append(span)
        attrs.index[atype] = span
    return attrs


@cython.final
@cython.auto_pickle(False)
cdef class Attrs:
    """The attributes of a message (or of a nested attribute): type -> value bytes.

    ``a[t]`` is the last attribute of type t (KeyError if none); ``a.all(t)``
    every one, in order. Types have NLA_F_NESTED and NLA_F_NET_BYTEORDER masked
    off. The typed getters raise ProtocolError when the value has the wrong size.
    """
    cdef bytes buf
    cdef list spans            # (type, start, end) in order
    cdef dict index            # type -> its last span

    def __len__(self):
        return len(self.spans)

    def __contains__(self, t):
        return t in self.index

    def __iter__(self):
        return iter(self.index)

    def __repr__(self):
        return f"<netlink.Attrs {sorted(self.index)}>"

    cdef tuple _span(self, int t):
        span = self.index.get(t)
        if span is None:
            raise KeyError(t)
        return span

    def __getitem__(self, int t):
        cdef tuple span = self._span(t)
        return self.buf[span[1]:span[2]]

    def get(self, int t, default=None):
        """The value of attribute t, or default."""
        span = self.index.get(t)
        return default if span is None else self.buf[span[1]:span[2]]

    def all(self, int t):
        """The values of every attribute of type t, in order."""
        return [self.buf[s[1]:s[2]] for s in self.spans if s[0] == t]

    def items(self):
        """(type, value) of every attribute, in order."""
        return [(s[0], self.buf[s[1]:s[2]]) for s in self.spans]

    cdef const unsigned char *_sized(self, int t, Py_ssize_t size) except NULL:
        cdef tuple span = self._span(t)
        cdef Py_ssize_t start = span[1], end = span[2]
        if end - start != size:
            raise ProtocolError(f"attribute {t} has {end - start} bytes, not {size}")
        return <const unsigned char *>PyBytes_AS_STRING(self.buf) + start

    def u8(self, int t):
        """Attribute t as an unsigned 8-bit integer, in host byte order; KeyError if absent,
        ProtocolError unless its value is exactly 1 byte."""
        return self._sized(t, 1)[0]

    def u16(self, int t):
        """Attribute t as an unsigned 16-bit integer, in host byte order; KeyError if absent,
        ProtocolError unless its value is exactly 2 bytes."""
        return rd16(self._sized(t, 2))

    def u32(self, int t):
        """Attribute t as an unsigned 32-bit integer, in host byte order; KeyError if absent,
        ProtocolError unless its value is exactly 4 bytes."""
        return rd32(self._sized(t, 4))

    def s32(self, int t):
        """Attribute t as an signed 32-bit integer, in host byte order; KeyError if absent,
        ProtocolError unless its value is exactly 4 bytes."""
        return <int32_t>rd32(self._sized(t, 4))

    def u64(self, int t):
        """Attribute t as an unsigned 64-bit integer, in host byte order; KeyError if absent,
        ProtocolError unless its value is exactly 8 bytes."""
        cdef uint64_t v
        memcpy(&v, self._sized(t, 8), 8)
        return v

    def str(self, int t):
        """A string attribute, without its terminating NUL (UTF-8, errors replaced)."""
        cdef bytes value = self[t]
        return value.split(b"\0", 1)[0].decode("utf-8", "replace")

    def ip(self, int t):
        """An IPv4 or IPv6 address attribute, as text."""
        cdef tuple span = self._span(t)
        cdef Py_ssize_t size = <Py_ssize_t>span[2] - <Py_ssize_t>span[1]
        if size != 4 and size != 16:
            raise ProtocolError(f"attribute {t} has {size} bytes: no IP address")
        return lw_ip_text(AF_INET_ if size == 4 else AF_INET6_,
                          <const uint8_t *>PyBytes_AS_STRING(self.buf) + <Py_ssize_t>span[1])

    def mac(self, int t):
        """A link-layer address attribute as aa:bb:cc:... (at most 32 bytes, MAX_ADDR_LEN)."""
        cdef tuple span = self._span(t)
        cdef Py_ssize_t size = <Py_ssize_t>span[2] - <Py_ssize_t>span[1]
        if size > LW_HWADDR_SIZE:
            raise ProtocolError(f"attribute {t} has {size} bytes: no link-layer address")
        return lw_hw_text(<const uint8_t *>PyBytes_AS_STRING(self.buf) + <Py_ssize_t>span[1],
                          <int>size)

    def nested(self, int t):
        """The attributes nested in attribute t."""
        cdef tuple span = self._span(t)
        return _attrs(self.buf, span[1], span[2])
