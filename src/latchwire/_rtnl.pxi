# Included by _core.pyx: rtnetlink records (links, addresses, routes,
# neighbours) decoded in one pass over a received datagram.
#
# Each record keeps its fields in a C struct filled straight from the
# message, and makes Python objects (address text, names, lists) only when a
# field is read, so a dump of 100,000 routes costs one small object a route.
# Every length is checked: an attribute of the wrong size, a string without
# room for its NUL, a nested list that overruns its attribute, all raise
# ProtocolError.

from latchwire._cpython cimport PyUnicode_DecodeFSDefault
from libc.string cimport memcmp
from latchwire._posix cimport strnlen

cdef enum:
    IFNAMSIZ_ = 16
    LW_KIND_SIZE = 32           # link kinds and qdisc names ("veth", "fq_codel")
    LW_STATS = 25               # the u64 counters of struct rtnl_link_stats64

    # linux/rtnetlink.h
    RTM_NEWLINK_ = 16
    RTM_DELLINK_ = 17
    RTM_NEWADDR_ = 20
    RTM_DELADDR_ = 21
    RTM_NEWROUTE_ = 24
    RTM_DELROUTE_ = 25
    RTM_NEWNEIGH_ = 28
    RTM_DELNEIGH_ = 29
    NLM_F_REPLACE_ = 0x100


# ---------------------------------------------------------------------------
# Walking attributes

cdef int lw_need_size(int atype, Py_ssize_t vlen, Py_ssize_t size) except -1:
    if vlen != size:
        raise ProtocolError(f"attribute {atype} has {vlen} bytes, not {size}")
    return 0


# Copy a NUL-terminated string value into dst (capacity cap, NUL included).
cdef int lw_copy_str(char *dst, Py_ssize_t cap, const unsigned char *v, Py_ssize_t vlen,
                     int atype) except -1:
    cdef Py_ssize_t n = strnlen(<const char *>v, vlen)
    if n >= cap:
        raise ProtocolError(f"string attribute {atype} of {n} bytes exceeds {cap - 1}")
    memcpy(dst, v, n)
    dst[n] = 0
    return 0


# Copy an IP address value of family's size into dst (16 bytes).
cdef int lw_copy_ip(uint8_t *dst, int family, const unsigned char *v, Py_ssize_t vlen,
                    int atype) except -1:
    cdef Py_ssize_t size = 4 if family == AF_INET_ else 16
    lw_need_size(atype, vlen, size)
    memcpy(dst, v, size)
    return 0


cdef int lw_copy_hwaddr(uint8_t *dst, uint8_t *dlen, const unsigned char *v,
                        Py_ssize_t vlen, int atype) except -1:
    if vlen > LW_HWADDR_SIZE:
        raise ProtocolError(f"link-layer address attribute {atype} has {vlen} bytes")
    memcpy(dst, v, vlen)
    dlen[0] = <uint8_t>vlen
    return 0


# ---------------------------------------------------------------------------
# Text of fields

# A name (link, label, kind) as os.fsdecode reads it: the kernel takes any
# bytes but '/', ':' and blanks, so undecodable bytes become surrogates.
cdef inline object lw_c_text(const char *s):
    return PyUnicode_DecodeFSDefault(s)


cdef int lw_family_ok(int family) except -1:
    if family != AF_INET_ and family != AF_INET6_:
        raise ProtocolError(f"address family {family} is neither AF_INET nor AF_INET6")
    return 0


# ---------------------------------------------------------------------------
# Links

cdef enum:
    LINK_HAS_MTU = 1 << 0
    LINK_HAS_TXQLEN = 1 << 1
    LINK_HAS_MASTER = 1 << 2
    LINK_HAS_LINK = 1 << 3
    LINK_HAS_OPERSTATE = 1 << 4
    LINK_HAS_LINKMODE = 1 << 5
    LINK_HAS_GROUP = 1 << 6
    LINK_HAS_STATS = 1 << 7
    LINK_HAS_NETNSID = 1 << 8
    LINK_HAS_MIN_MTU = 1 << 9
    LINK_HAS_MAX_MTU = 1 << 10
    LINK_HAS_CARRIER = 1 << 11

ctypedef struct lw_link:
    uint32_t has
    int32_t index
    uint32_t flags, mtu, txqlen, master, link, group, min_mtu, max_mtu
    int32_t link_netnsid
    uint16_t type
    uint8_t operstate, linkmode, carrier, addr_len, brd_len
    char name[IFNAMSIZ_]
    char kind[LW_KIND_SIZE]
    char slave_kind[LW_KIND_SIZE]
    char qdisc[LW_KIND_SIZE]
    uint8_t address[LW_HWADDR_SIZE]
    uint8_t broadcast[LW_HWADDR_SIZE]
    uint64_t stats[LW_STATS]        # last: equality ignores counters

cdef object _STAT_NAMES = (
    "rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors", "tx_errors",
    "rx_dropped", "tx_dropped", "multicast", "collisions", "rx_length_errors",
    "rx_over_errors", "rx_crc_errors", "rx_frame_errors", "rx_fifo_errors",
    "rx_missed_errors", "tx_aborted_errors", "tx_carrier_errors", "tx_fifo_errors",
    "tx_heartbeat_errors", "tx_window_errors", "rx_compressed", "tx_compressed",
    "rx_nohandler", "rx_otherhost_dropped")
cdef object _OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING",
                           "DORMANT", "UP")


# IFLA_LINKINFO's kind and port kind into l.
cdef int lw_link_info(lw_link *l, const unsigned char *p, Py_ssize_t off,
                      Py_ssize_t end) except -1:
    cdef int atype
    cdef Py_ssize_t vstart, vlen
    while lw_next_attr(p, &off, end, &atype, &vstart, &vlen):
        if atype == 1:          # IFLA_INFO_KIND
            lw_copy_str(l.kind, LW_KIND_SIZE, p + vstart, vlen, atype)
        elif atype == 4:        # IFLA_INFO_SLAVE_KIND
            lw_copy_str(l.slave_kind, LW_KIND_SIZE, p + vstart, vlen, atype)
    return 0


cdef Link lw_decode_link(const unsigned char *p, Py_ssize_t off, Py_ssize_t end, bint deleted):
    cdef Link rec = Link.__new__(Link)
    cdef lw_link *l = &rec.l
    cdef int atype
    cdef Py_ssize_t vstart, vlen, i
    cdef const unsigned char *v
    if end - off < 16:
        raise ProtocolError(f"an ifinfomsg of {end - off} bytes")
    rec.deleted = deleted
    l.type = rd16(p + off + 2)
    l.index = <int32_t>rd32(p + off + 4)
    l.flags = rd32(p + off + 8)
    off += 16
    while lw_next_attr(p, &off, end, &atype, &vstart, &vlen):
        v = p + vstart
        if atype == 1:          # IFLA_ADDRESS
            lw_copy_hwaddr(l.address, &l.addr_len, v, vlen, atype)
        elif atype == 2:        # IFLA_BROADCAST
            lw_copy_hwaddr(l.broadcast, &l.brd_len, v, vlen, atype)
        elif atype == 3:        # IFLA_IFNAME
            lw_copy_str(l.name, IFNAMSIZ_, v, vlen, atype)
        elif atype == 4:        # IFLA_MTU
            lw_need_size(atype, vlen, 4)
            l.mtu = rd32(v)
            l.has |= LINK_HAS_MTU
        elif atype == 5:        # IFLA_LINK
            lw_need_size(atype, vlen, 4)
            l.link = rd32(v)
            l.has |= LINK_HAS_LINK
        elif atype == 6:        # IFLA_QDISC
            lw_copy_str(l.qdisc, LW_KIND_SIZE, v, vlen, atype)
        elif atype == 10:       # IFLA_MASTER
            lw_need_size(atype, vlen, 4)
            l.master = rd32(v)
            l.has |= LINK_HAS_MASTER
        elif atype == 13:       # IFLA_TXQLEN
            lw_need_size(atype, vlen, 4)
            l.txqlen = rd32(v)
            l.has |= LINK_HAS_TXQLEN
        elif atype == 16:       # IFLA_OPERSTATE
            lw_need_size(atype, vlen, 1)
            l.operstate = v[0]
            l.has |= LINK_HAS_OPERSTATE
        elif atype == 17:       # IFLA_LINKMODE
            lw_need_size(atype, vlen, 1)
            l.linkmode = v[0]
            l.has |= LINK_HAS_LINKMODE
        elif atype == 18:       # IFLA_LINKINFO
            lw_link_info(l, p, vstart, vstart + vlen)
        elif atype == 23:       # IFLA_STATS64: as many counters as this kernel has
            if vlen % 8 or vlen < 8 * 23:
                raise ProtocolError(f"IFLA_STATS64 of {vlen} bytes")
            memcpy(l.stats, v, min(vlen, <Py_ssize_t>sizeof(l.stats)))
            l.has |= LINK_HAS_STATS
        elif atype == 27:       # IFLA_GROUP
            lw_need_size(atype, vlen, 4)
            l.group = rd32(v)
            l.has |= LINK_HAS_GROUP
        elif atype == 33:       # IFLA_CARRIER
            lw_need_size(atype, vlen, 1)
            l.carrier = v[0]
            l.has |= LINK_HAS_CARRIER
        elif atype == 37:       # IFLA_LINK_NETNSID
            lw_need_size(atype, vlen, 4)
            l.link_netnsid = <int32_t>rd32(v)
            l.has |= LINK_HAS_NETNSID
        elif atype == 50:       # IFLA_MIN_MTU
            lw_need_size(atype, vlen, 4)
            l.min_mtu = rd32(v)
            l.has |= LINK_HAS_MIN_MTU
        elif atype == 51:       # IFLA_MAX_MTU
            lw_need_size(atype, vlen, 4)
            l.max_mtu = rd32(v)
            l.has |= LINK_HAS_MAX_MTU
    return rec


cdef inline object lw_opt_u32(uint32_t has, uint32_t bit, uint32_t value):
    return value if has & bit else None


@cython.final
@cython.auto_pickle(False)
@cython.freelist(8)
cdef class Link:
    """A network link (interface) as rtnetlink reported it (RTM_NEWLINK/DELLINK).

    Fields the kernel did not send read as None (numbers) or "" (names).
    ``deleted`` is True for a deletion event. Equal links have the same
    fields, counters aside.
    """
    cdef lw_link l
    cdef readonly bint deleted

    def __repr__(self):
        return f"<rtnl.Link {self.index} {self.name!r}{' deleted' if self.deleted else ''}>"

    def __eq__(self, other):
        if not isinstance(other, Link):
            return NotImplemented
        return memcmp(&self.l, &(<Link>other).l, <char *>&self.l.stats - <char *>&self.l) == 0

    def __hash__(self):
        return hash((self.l.index, self.name))

    @property
    def key(self):
        """What identifies the link: its index."""
        return self.l.index

    def as_deleted(self):
        """This link, as a deletion."""
        cdef Link rec = Link.__new__(Link)
        rec.l = self.l
        rec.deleted = True
        return rec

    @property
    def index(self):
        return self.l.index

    @property
    def name(self):
        return lw_c_text(self.l.name)

    @property
    def type(self):
        """The link-layer type (ARPHRD_*)."""
        return self.l.type

    @property
    def flags(self):
        """The IFF_* flags."""
        return self.l.flags

    @property
    def up(self):
        """IFF_UP: administratively up."""
        return bool(self.l.flags & 1)

    @property
    def mtu(self):
        return lw_opt_u32(self.l.has, LINK_HAS_MTU, self.l.mtu)

    @property
    def min_mtu(self):
        return lw_opt_u32(self.l.has, LINK_HAS_MIN_MTU, self.l.min_mtu)

    @property
    def max_mtu(self):
        return lw_opt_u32(self.l.has, LINK_HAS_MAX_MTU, self.l.max_mtu)

    @property
    def txqlen(self):
        return lw_opt_u32(self.l.has, LINK_HAS_TXQLEN, self.l.txqlen)

    @property
    def master(self):
        """The index of the link this one is a port of (a bridge), or None."""
        return lw_opt_u32(self.l.has, LINK_HAS_MASTER, self.l.master)

    @property
    def link(self):
        """The index of the link's lower or peer link (IFLA_LINK), or None."""
        return lw_opt_u32(self.l.has, LINK_HAS_LINK, self.l.link)

    @property
    def link_netnsid(self):
        """The peer namespace's id when the peer lives in another namespace, or None."""
        return self.l.link_netnsid if self.l.has & LINK_HAS_NETNSID else None

    @property
    def group(self):
        return lw_opt_u32(self.l.has, LINK_HAS_GROUP, self.l.group)

    @property
    def carrier(self):
        return bool(self.l.carrier) if self.l.has & LINK_HAS_CARRIER else None

    @property
    def operstate(self):
        """RFC 2863 operational state as ip shows it ("UP", "DOWN", ...), or None."""
        if not self.l.has & LINK_HAS_OPERSTATE:
            return None
        if self.l.operstate < len(_OPERSTATES):
            return _OPERSTATES[self.l.operstate]
        return str(self.l.operstate)

    @property
    def linkmode(self):
        return self.l.linkmode if self.l.has & LINK_HAS_LINKMODE else None

    @property
    def mac(self):
        """The link-layer address as aa:bb:..., or "" if the link has none."""
        return lw_hw_text(self.l.address, self.l.addr_len)

    @property
    def broadcast(self):
        return lw_hw_text(self.l.broadcast, self.l.brd_len)

    @property
    def kind(self):
        """The link kind ("veth", "bridge", ...), or "" for a device without one."""
        return lw_c_text(self.l.kind)

    @property
    def slave_kind(self):
        """The kind of the master it is a port of ("bridge"), or ""."""
        return lw_c_text(self.l.slave_kind)

    @property
    def qdisc(self):
        return lw_c_text(self.l.qdisc)

    @property
    def stats(self):
        """The 64-bit counters (struct rtnl_link_stats64) by name, or None."""
        if not self.l.has & LINK_HAS_STATS:
            return None
        return {name: self.l.stats[i] for i, name in enumerate(_STAT_NAMES)}


# ---------------------------------------------------------------------------
# Addresses

cdef enum:
    ADDR_HAS_ADDRESS = 1 << 0
    ADDR_HAS_LOCAL = 1 << 1
    ADDR_HAS_BROADCAST = 1 << 2
    ADDR_HAS_CACHEINFO = 1 << 3
    ADDR_HAS_PROTO = 1 << 4
    ADDR_HAS_PRIORITY = 1 << 5

ctypedef struct lw_addr:
    uint32_t has, flags, index, valid, preferred, priority
    uint8_t family, prefixlen, scope, proto
    uint8_t address[16]
    uint8_t local[16]
    uint8_t broadcast[16]
    char label[IFNAMSIZ_]


cdef Address lw_decode_addr(const unsigned char *p, Py_ssize_t off, Py_ssize_t end,
                            bint deleted):
    cdef Address rec = Address.__new__(Address)
    cdef lw_addr *a = &rec.a
    cdef int atype
    cdef Py_ssize_t vstart, vlen
    cdef const unsigned char *v
    if end - off < 8:
        raise ProtocolError(f"an ifaddrmsg of {end - off} bytes")
    rec.deleted = deleted
    a.family = p[off]
    lw_family_ok(a.family)
    a.prefixlen = p[off + 1]
    a.flags = p[off + 2]
    a.scope = p[off + 3]
    a.index = rd32(p + off + 4)
    off += 8
    while lw_next_attr(p, &off, end, &atype, &vstart, &vlen):
        v = p + vstart
        if atype == 1:          # IFA_ADDRESS
            lw_copy_ip(a.address, a.family, v, vlen, atype)
            a.has |= ADDR_HAS_ADDRESS
        elif atype == 2:        # IFA_LOCAL
            lw_copy_ip(a.local, a.family, v, vlen, atype)
            a.has |= ADDR_HAS_LOCAL
        elif atype == 3:        # IFA_LABEL
            lw_copy_str(a.label, IFNAMSIZ_, v, vlen, atype)
        elif atype == 4:        # IFA_BROADCAST
            lw_copy_ip(a.broadcast, a.family, v, vlen, atype)
            a.has |= ADDR_HAS_BROADCAST
        elif atype == 6:        # IFA_CACHEINFO: preferred, valid, created, updated
            lw_need_size(atype, vlen, 16)
            a.preferred = rd32(v)
            a.valid = rd32(v + 4)
            a.has |= ADDR_HAS_CACHEINFO
        elif atype == 8:        # IFA_FLAGS: all 32 bits (ifa_flags has the low 8)
            lw_need_size(atype, vlen, 4)
            a.flags = rd32(v)
        elif atype == 9:        # IFA_RT_PRIORITY
            lw_need_size(atype, vlen, 4)
            a.priority = rd32(v)
            a.has |= ADDR_HAS_PRIORITY
        elif atype == 11:       # IFA_PROTO
            lw_need_size(atype, vlen, 1)
            a.proto = v[0]
            a.has |= ADDR_HAS_PROTO
    return rec


@cython.final
@cython.auto_pickle(False)
@cython.freelist(8)
cdef class Address:
    """An interface address as rtnetlink reported it (RTM_NEWADDR/DELADDR).

    ``address`` is the prefix address (IFA_ADDRESS) and ``local`` the
    interface's own (IFA_LOCAL); they differ only on point-to-point links.
    """
    cdef lw_addr a
    cdef readonly bint deleted

    def __repr__(self):
        return (f"<rtnl.Address {self.address}/{self.a.prefixlen} index={self.a.index}"
                f"{' deleted' if self.deleted else ''}>")

    def __eq__(self, other):
        if not isinstance(other, Address):
            return NotImplemented
        return memcmp(&self.a, &(<Address>other).a, sizeof(lw_addr)) == 0

    def __hash__(self):
        return hash(self.key)

    @property
    def key(self):
        """What identifies the address: (family, index, address, prefixlen)."""
        return (self.a.family, self.a.index, self.address, self.a.prefixlen)

    def as_deleted(self):
        """This address, as a deletion."""
        cdef Address rec = Address.__new__(Address)
        rec.a = self.a
        rec.deleted = True
        return rec

    @property
    def family(self):
        return self.a.family

    @property
    def index(self):
        return self.a.index

    @property
    def prefixlen(self):
        return self.a.prefixlen

    @property
    def address(self):
        if self.a.has & ADDR_HAS_ADDRESS:
            return lw_ip_text(self.a.family, self.a.address)
        return self.local

    @property
    def local(self):
        if self.a.has & ADDR_HAS_LOCAL:
            return lw_ip_text(self.a.family, self.a.local)
        return lw_ip_text(self.a.family, self.a.address) if self.a.has & ADDR_HAS_ADDRESS else None

    @property
    def broadcast(self):
        return lw_ip_text(self.a.family, self.a.broadcast) if self.a.has & ADDR_HAS_BROADCAST else None

    @property
    def label(self):
        return lw_c_text(self.a.label)

    @property
    def scope(self):
        """RT_SCOPE_*: 0 global (universe), 253 link, 254 host."""
        return self.a.scope

    @property
    def flags(self):
        """The IFA_F_* flags (all 32 bits)."""
        return self.a.flags

    @property
    def valid_lft(self):
        """Seconds of validity left (0xffffffff: forever), or None."""
        return self.a.valid if self.a.has & ADDR_HAS_CACHEINFO else None

    @property
    def preferred_lft(self):
        return self.a.preferred if self.a.has & ADDR_HAS_CACHEINFO else None

    @property
    def proto(self):
        return self.a.proto if self.a.has & ADDR_HAS_PROTO else None

    @property
    def metric(self):
        """The prefix route's metric (IFA_RT_PRIORITY), or None."""
        return self.a.priority if self.a.has & ADDR_HAS_PRIORITY else None


# ---------------------------------------------------------------------------
# Routes

cdef enum:
    ROUTE_HAS_DST = 1 << 0
    ROUTE_HAS_SRC = 1 << 1
    ROUTE_HAS_GATEWAY = 1 << 2
    ROUTE_HAS_PREFSRC = 1 << 3
    ROUTE_HAS_OIF = 1 << 4
    ROUTE_HAS_IIF = 1 << 5
    ROUTE_HAS_PRIORITY = 1 << 6
    ROUTE_HAS_PREF = 1 << 7
    ROUTE_HAS_MTU = 1 << 8
    ROUTE_HAS_EXPIRES = 1 << 9

ctypedef struct lw_route:
    uint32_t has, table, flags, oif, iif, priority, mtu, expires
    uint8_t family, dst_len, src_len, tos, protocol, scope, type, pref, gw_family
    uint8_t dst[16]
    uint8_t src[16]
    uint8_t gateway[16]
    uint8_t prefsrc[16]


# A gateway given as RTA_VIA (struct rtvia: family, then the address).
cdef int lw_copy_via(uint8_t *dst, uint8_t *family, const unsigned char *v,
                     Py_ssize_t vlen) except -1:
    if vlen < 2:
        raise ProtocolError(f"RTA_VIA of {vlen} bytes")
    cdef uint16_t via_family = rd16(v)
    lw_family_ok(via_family)
    lw_copy_ip(dst, via_family, v + 2, vlen - 2, 18)
    family[0] = <uint8_t>via_family
    return 0


# RTA_METRICS: only RTAX_MTU is kept.
cdef int lw_route_metrics(lw_route *r, const unsigned char *p, Py_ssize_t off,
                          Py_ssize_t end) except -1:
    cdef int atype
    cdef Py_ssize_t vstart, vlen
    while lw_next_attr(p, &off, end, &atype, &vstart, &vlen):
        if atype == 2:          # RTAX_MTU
            lw_need_size(atype, vlen, 4)
            r.mtu = rd32(p + vstart)
            r.has |= ROUTE_HAS_MTU
    return 0


# RTA_MULTIPATH: struct rtnexthop entries, each followed by its attributes.
cdef tuple lw_route_nexthops(int family, const unsigned char *p, Py_ssize_t off,
                            Py_ssize_t end):
    cdef list hops = []
    cdef NextHop hop
    cdef uint16_t length
    cdef Py_ssize_t aoff, vstart, vlen
    cdef int atype
    while off < end:
        if end - off < 8:
            raise ProtocolError(f"truncated rtnexthop: {end - off} bytes at offset {off}")
        length = rd16(p + off)
        if length < 8 or length > end - off:
            raise ProtocolError(f"rtnexthop length {length} at offset {off} does not fit the "
                                f"{end - off} bytes left")
        hop = NextHop.__new__(NextHop)
        hop.flags = p[off + 2]
        hop.weight = p[off + 3] + 1
        hop.oif = rd32(p + off + 4)
        hop.family = <uint8_t>family
        aoff = off + 8
        while lw_next_attr(p, &aoff, off + length, &atype, &vstart, &vlen):
            if atype == 5:      # RTA_GATEWAY
                lw_copy_ip(hop.gateway_, family, p + vstart, vlen, atype)
                hop.has_gateway = True
            elif atype == 18:   # RTA_VIA
                lw_copy_via(hop.gateway_, &hop.family, p + vstart, vlen)
                hop.has_gateway = True
        hops.append(hop)
        off += nl_align(length)
    return tuple(hops)


cdef RouteEntry lw_decode_route(const unsigned char *p, Py_ssize_t off, Py_ssize_t end,
                                bint deleted):
    cdef RouteEntry rec = RouteEntry.__new__(RouteEntry)
    cdef lw_route *r = &rec.r
    cdef int atype
    cdef Py_ssize_t vstart, vlen
    cdef const unsigned char *v
    if end - off < 12:
        raise ProtocolError(f"an rtmsg of {end - off} bytes")
    rec.deleted = deleted
    r.family = p[off]
    lw_family_ok(r.family)
    r.gw_family = r.family
    r.dst_len = p[off + 1]
    r.src_len = p[off + 2]
    r.tos = p[off + 3]
    r.table = p[off + 4]
    r.protocol = p[off + 5]
    r.scope = p[off + 6]
    r.type = p[off + 7]
    r.flags = rd32(p + off + 8)
    off += 12
    while lw_next_attr(p, &off, end, &atype, &vstart, &vlen):
        v = p + vstart
        if atype == 1:          # RTA_DST
            lw_copy_ip(r.dst, r.family, v, vlen, atype)
            r.has |= ROUTE_HAS_DST
        elif atype == 2:        # RTA_SRC
            lw_copy_ip(r.src, r.family, v, vlen, atype)
            r.has |= ROUTE_HAS_SRC
        elif atype == 3:        # RTA_IIF
            lw_need_size(atype, vlen, 4)
            r.iif = rd32(v)
            r.has |= ROUTE_HAS_IIF
        elif atype == 4:        # RTA_OIF
            lw_need_size(atype, vlen, 4)
            r.oif = rd32(v)
            r.has |= ROUTE_HAS_OIF
        elif atype == 5:        # RTA_GATEWAY
            lw_copy_ip(r.gateway, r.family, v, vlen, atype)
            r.has |= ROUTE_HAS_GATEWAY
        elif atype == 6:        # RTA_PRIORITY
            lw_need_size(atype, vlen, 4)
            r.priority = rd32(v)
            r.has |= ROUTE_HAS_PRIORITY
        elif atype == 7:        # RTA_PREFSRC
            lw_copy_ip(r.prefsrc, r.family, v, vlen, atype)
            r.has |= ROUTE_HAS_PREFSRC
        elif atype == 8:        # RTA_METRICS
            lw_route_metrics(r, p, vstart, vstart + vlen)
        elif atype == 9:        # RTA_MULTIPATH
            rec.nexthops_ = lw_route_nexthops(r.family, p, vstart, vstart + vlen)
        elif atype == 15:       # RTA_TABLE: the full 32-bit table id
            lw_need_size(atype, vlen, 4)
            r.table = rd32(v)
        elif atype == 18:       # RTA_VIA
            lw_copy_via(r.gateway, &r.gw_family, v, vlen)
            r.has |= ROUTE_HAS_GATEWAY
        elif atype == 20:       # RTA_PREF
            lw_need_size(atype, vlen, 1)
            r.pref = v[0]
            r.has |= ROUTE_HAS_PREF
        elif atype == 23:       # RTA_EXPIRES
            lw_need_size(atype, vlen, 4)
            r.expires = rd32(v)
            r.has |= ROUTE_HAS_EXPIRES
    return rec


@cython.final
@cython.auto_pickle(False)
@cython.freelist(4)
cdef class NextHop:
    """One next hop of a multipath route."""
    cdef readonly int oif
    cdef readonly int weight
    cdef readonly int flags
    cdef uint8_t family
    cdef bint has_gateway
    cdef uint8_t gateway_[16]

    def __repr__(self):
        return f"<rtnl.NextHop via {self.gateway} oif={self.oif} weight={self.weight}>"

    def __eq__(self, other):
        if not isinstance(other, NextHop):
            return NotImplemented
        return self._fields() == (<NextHop>other)._fields()

    def __hash__(self):
        return hash(self._fields())

    cdef tuple _fields(self):
        return (self.oif, self.weight, self.flags, self.gateway)

    @property
    def gateway(self):
        return lw_ip_text(self.family, self.gateway_) if self.has_gateway else None

    @property
    def gateway_family(self):
        return self.family


@cython.final
@cython.auto_pickle(False)
@cython.freelist(8)
@cython.no_gc   # holds only a tuple of NextHops, which hold nothing: no cycle can pass through
cdef class RouteEntry:
    """A route as rtnetlink reported it (RTM_NEWROUTE/DELROUTE).

    Addresses are text; ``dst`` is None for a default route (dst_len 0).
    Absent numbers read as None. ``nexthops`` is the tuple of a multipath
    route's next hops (empty otherwise). ``replaces`` marks a notification that the route
    took the place of those with the same ``key[:8]`` (``ip route replace``).
    """
    cdef lw_route r
    cdef tuple nexthops_
    cdef readonly bint deleted
    # A notification that this route took the place of the routes with the
    # same destination, source, table, tos and metric (NLM_F_REPLACE).
    cdef readonly bint replaces

    def __repr__(self):
        return (f"<rtnl.RouteEntry {self.dst or 'default'}/{self.r.dst_len} table={self.r.table}"
                f"{' deleted' if self.deleted else ''}>")

    def __eq__(self, other):
        if not isinstance(other, RouteEntry):
            return NotImplemented
        return (memcmp(&self.r, &(<RouteEntry>other).r, sizeof(lw_route)) == 0
                and self.nexthops == (<RouteEntry>other).nexthops)

    def __hash__(self):
        return hash(self.key)

    @property
    def key(self):
        """What tells the route from every other in the kernel: (family, table,
        dst, dst_len, src, src_len, tos, priority, oif, gateway). The device and
        gateway count because routes to one prefix may differ only by them
        (IPv6 routes on several links, ``ip route append``)."""
        return (self.r.family, self.r.table, self.dst, self.r.dst_len, self.src,
                self.r.src_len, self.r.tos, self.priority, self.oif, self.gateway)

    def as_deleted(self):
        """This route, as a deletion."""
        cdef RouteEntry rec = RouteEntry.__new__(RouteEntry)
        rec.r = self.r
        rec.nexthops_ = self.nexthops_
        rec.deleted = True
        return rec

    @property
    def family(self):
        return self.r.family

    @property
    def dst(self):
        return lw_ip_text(self.r.family, self.r.dst) if self.r.has & ROUTE_HAS_DST else None

    @property
    def dst_len(self):
        return self.r.dst_len

    @property
    def src(self):
        return lw_ip_text(self.r.family, self.r.src) if self.r.has & ROUTE_HAS_SRC else None

    @property
    def src_len(self):
        return self.r.src_len

    @property
    def gateway(self):
        if self.r.has & ROUTE_HAS_GATEWAY:
            return lw_ip_text(self.r.gw_family, self.r.gateway)
        return None

    @property
    def gateway_family(self):
        """The gateway's family: differs from family for an IPv4 route via IPv6."""
        return self.r.gw_family

    @property
    def prefsrc(self):
        if self.r.has & ROUTE_HAS_PREFSRC:
            return lw_ip_text(self.r.family, self.r.prefsrc)
        return None

    @property
    def oif(self):
        return lw_opt_u32(self.r.has, ROUTE_HAS_OIF, self.r.oif)

    @property
    def iif(self):
        return lw_opt_u32(self.r.has, ROUTE_HAS_IIF, self.r.iif)

    @property
    def table(self):
        return self.r.table

    @property
    def protocol(self):
        """RTPROT_*: 2 kernel, 3 boot, 4 static, ..."""
        return self.r.protocol

    @property
    def scope(self):
        return self.r.scope

    @property
    def type(self):
        """RTN_*: 1 unicast, 2 local, 3 broadcast, ..."""
        return self.r.type

    @property
    def tos(self):
        return self.r.tos

    @property
    def flags(self):
        """rtm_flags: RTNH_F_* and RTM_F_*."""
        return self.r.flags

    @property
    def priority(self):
        """The metric, or None."""
        return lw_opt_u32(self.r.has, ROUTE_HAS_PRIORITY, self.r.priority)

    @property
    def pref(self):
        """IPv6 router preference (ICMPV6_ROUTER_PREF_*), or None."""
        return self.r.pref if self.r.has & ROUTE_HAS_PREF else None

    @property
    def mtu(self):
        """The route's MTU metric, or None."""
        return lw_opt_u32(self.r.has, ROUTE_HAS_MTU, self.r.mtu)

    @property
    def expires(self):
        return lw_opt_u32(self.r.has, ROUTE_HAS_EXPIRES, self.r.expires)

    @property
    def nexthops(self):
        return self.nexthops_ if self.nexthops_ is not None else ()


# ---------------------------------------------------------------------------
# Neighbours

ctypedef struct lw_neigh:
    uint32_t index
    uint16_t state
    uint8_t family, dst_family, flags, type, lladdr_len, has_dst, has_lladdr
    uint8_t dst[16]
    uint8_t lladdr[LW_HWADDR_SIZE]


cdef Neighbour lw_decode_neigh(const unsigned char *p, Py_ssize_t off, Py_ssize_t end,
                               bint deleted):
    cdef Neighbour rec = Neighbour.__new__(Neighbour)
    cdef lw_neigh *n = &rec.n
    cdef int atype
    cdef Py_ssize_t vstart, vlen
    if end - off < 12:
        raise ProtocolError(f"an ndmsg of {end - off} bytes")
    rec.deleted = deleted
    n.family = p[off]
    n.index = rd32(p + off + 4)
    n.state = rd16(p + off + 8)
    n.flags = p[off + 10]
    n.type = p[off + 11]
    off += 12
    while lw_next_attr(p, &off, end, &atype, &vstart, &vlen):
        if atype == 1:          # NDA_DST; a bridge FDB entry's (VXLAN remote) is IPv4 or IPv6
            if n.family == AF_INET_ or n.family == AF_INET6_:
                n.dst_family = n.family
            elif vlen == 4 or vlen == 16:
                n.dst_family = AF_INET_ if vlen == 4 else AF_INET6_
            else:
                raise ProtocolError(f"NDA_DST of {vlen} bytes in a family {n.family} entry")
            lw_copy_ip(n.dst, n.dst_family, p + vstart, vlen, atype)
            n.has_dst = 1
        elif atype == 2:        # NDA_LLADDR
            lw_copy_hwaddr(n.lladdr, &n.lladdr_len, p + vstart, vlen, atype)
            n.has_lladdr = 1
    return rec


@cython.final
@cython.auto_pickle(False)
@cython.freelist(8)
cdef class Neighbour:
    """A neighbour (ARP/NDP) entry as rtnetlink reported it (RTM_NEWNEIGH/DELNEIGH)."""
    cdef lw_neigh n
    cdef readonly bint deleted

    def __repr__(self):
        return f"<rtnl.Neighbour {self.dst} index={self.n.index}>"

    def __eq__(self, other):
        if not isinstance(other, Neighbour):
            return NotImplemented
        return memcmp(&self.n, &(<Neighbour>other).n, sizeof(lw_neigh)) == 0

    def __hash__(self):
        return hash(self.key)

    @property
    def key(self):
        """What identifies the entry: (family, index, dst)."""
        return (self.n.family, self.n.index, self.dst)

    def as_deleted(self):
        """This entry, as a deletion."""
        cdef Neighbour rec = Neighbour.__new__(Neighbour)
        rec.n = self.n
        rec.deleted = True
        return rec

    @property
    def family(self):
        return self.n.family

    @property
    def index(self):
        return self.n.index

    @property
    def state(self):
        """The NUD_* state bits."""
        return self.n.state

    @property
    def flags(self):
        """The NTF_* flags."""
        return self.n.flags

    @property
    def type(self):
        return self.n.type

    @property
    def dst(self):
        return lw_ip_text(self.n.dst_family, self.n.dst) if self.n.has_dst else None

    @property
    def lladdr(self):
        return lw_hw_text(self.n.lladdr, self.n.lladdr_len) if self.n.has_lladdr else None


# ---------------------------------------------------------------------------
# Walking a datagram

# The record of one rtnetlink message (type mtype, flags mflags, payload
# p[off:end]), or None for a message type that has none.
cdef object lw_decode_record(int mtype, int mflags, const unsigned char *p, Py_ssize_t off,
                             Py_ssize_t end):
    cdef RouteEntry route
    if mtype == RTM_NEWROUTE_ or mtype == RTM_DELROUTE_:
        route = lw_decode_route(p, off, end, mtype == RTM_DELROUTE_)
        route.replaces = mtype == RTM_NEWROUTE_ and (mflags & NLM_F_REPLACE_) != 0
        return route
    if mtype == RTM_NEWLINK_ or mtype == RTM_DELLINK_:
        return lw_decode_link(p, off, end, mtype == RTM_DELLINK_)
    if mtype == RTM_NEWADDR_ or mtype == RTM_DELADDR_:
        return lw_decode_addr(p, off, end, mtype == RTM_DELADDR_)
    if mtype == RTM_NEWNEIGH_ or mtype == RTM_DELNEIGH_:
        return lw_decode_neigh(p, off, end, mtype == RTM_DELNEIGH_)
    return None


def decode(bytes buf not None):
    """The records (Link, Address, RouteEntry, Neighbour) of every rtnetlink
    message in buf, in order; other message types are skipped.

    ProtocolError if any message or attribute is malformed.
    """
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t off = 0, length, n = PyBytes_GET_SIZE(buf)
    cdef list out = []
    cdef object record
    while lw_next_msg(p, &off, n, &length):
        record = lw_decode_record(rd16(p + off + 4), rd16(p + off + 6), p, off + NLMSG_HDRLEN,
                                  off + length)
        if record is not None:
            out.append(record)
        off += nl_align(length)
    return out
