# Included by _core.pyx: routes written out as iproute2's ``ip route show``
# writes them (text) and ``ip -j route show`` (JSON), from the records' C
# fields, so that ``latchwire ip routes`` keeps up with ip itself on 100,000
# routes without a Python object per field or a dict per route.
#
# The names (route types, protocols, scopes, tables, flags...) are not kept
# here: latchwire.ipjson hands them in, so it stays the one place that says
# what ip calls things. What is kept here is the layout: the order of the
# fields, which ones ip leaves out at their default, and the punctuation
# (ip's text leaves a space after every field but the preference, and starts
# each next hop of a multipath route on a line of its own).

from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport int64_t
from libc.string cimport strlen
from latchwire._cpython cimport PyUnicode_EncodeFSDefault

cdef enum:
    LW_FMT_FLAGS = 16               # at most this many (bit, name) flag names
    RTM_F_CLONED_ = 0x200
    RT_TABLE_MAIN_ = 254
    RTPROT_BOOT_ = 3
    RTN_UNICAST_ = 1


# A growing output buffer (PyMem: the GIL is held throughout).
cdef struct lw_out:
    char *p
    Py_ssize_t n, cap


# Make room for more bytes at the end of o; MemoryError if there is none.
cdef int lw_out_room(lw_out *o, Py_ssize_t more) except -1:
    cdef Py_ssize_t cap = o.cap
    cdef char *p
    if o.n + more <= cap:
        return 0
    cap = max(o.n + more, 2 * cap, 8192)
    p = <char *>PyMem_Realloc(o.p, <size_t>cap)
    if p == NULL:
        raise MemoryError()
    o.p = p
    o.cap = cap
    return 0


cdef inline int lw_put(lw_out *o, const char *s, Py_ssize_t n) except -1:
    if o.n + n > o.cap:
        lw_out_room(o, n)
    memcpy(o.p + o.n, s, n)
    o.n += n
    return 0


cdef inline int lw_puts(lw_out *o, const char *s) except -1:
    return lw_put(o, s, <Py_ssize_t>strlen(s))


cdef inline int lw_put_bytes(lw_out *o, bytes b) except -1:
    return lw_put(o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cdef int lw_put_u32(lw_out *o, uint32_t v) except -1:
    cdef char digits[10]
    cdef int i = 10
    while True:
        i -= 1
        digits[i] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    return lw_put(o, digits + i, 10 - i)


# An address of family as inet_ntop writes it (as ip does).
cdef int lw_put_ip(lw_out *o, int family, const uint8_t *a) except -1:
    cdef char text[48]
    if family == AF_INET_:
        lw_put_u32(o, a[0])
        lw_put(o, ".", 1)
        lw_put_u32(o, a[1])
        lw_put(o, ".", 1)
        lw_put_u32(o, a[2])
        lw_put(o, ".", 1)
        return lw_put_u32(o, a[3])
    if inet_ntop(family, a, text, sizeof(text)) == NULL:
        raise ProtocolError(f"address of family {family} cannot be shown")
    return lw_puts(o, text)


# bytes s as the inside of a JSON string: quote and backslash escaped, and
# control characters (the rest is written as it is, as ip does).
cdef int lw_put_jtext(lw_out *o, const char *s, Py_ssize_t n) except -1:
    cdef const char *hexd = b"0123456789abcdef"
    cdef Py_ssize_t i
    cdef unsigned char c
    lw_out_room(o, 6 * n)
    for i in range(n):
        c = <unsigned char>s[i]
        if c == 34 or c == 92:              # " and \
            o.p[o.n] = 92
            o.p[o.n + 1] = <char>c
            o.n += 2
        elif c < 32:
            memcpy(o.p + o.n, b"\\u00", 4)
            o.p[o.n + 4] = hexd[c >> 4]
            o.p[o.n + 5] = hexd[c & 15]
            o.n += 6
        else:
            o.p[o.n] = <char>c
            o.n += 1
    return 0


# A name or word: "word" in JSON, word in text.
cdef inline int lw_put_word(lw_out *o, bint json, bytes word) except -1:
    if not json:
        return lw_put_bytes(o, word)
    lw_put(o, "\"", 1)
    lw_put_jtext(o, PyBytes_AS_STRING(word), PyBytes_GET_SIZE(word))
    return lw_put(o, "\"", 1)


@cython.final
@cython.auto_pickle(False)
cdef class RouteFormat:
    """Routes as ``ip route show`` prints them, or as ``ip -j route show`` does.

    ``names`` maps link indexes to names (it is read once a route or next hop
    names a link; a dict subclass's ``__missing__`` may supply the names of
    links it does not have). The other arguments are what ip calls things:
    ``types``, ``protocols``, ``scopes``, ``prefs`` and ``dsfields``, 256
    names each, for rtm_type, rtm_protocol, rtm_scope, RTA_PREF and rtm_tos;
    ``tables`` maps the table numbers that have names to them; ``flags`` is
    the (bit, name) pairs of rtm_flags and next hops' flags, in ip's order.
    ``show_table=False`` leaves the table out, as ip does when it was asked
    for the routes of one table.

    A RouteFormat does not change after ``__init__``: threads may share one
    (each ``render()`` writes into a buffer of its own).
    """
    cdef object names
    cdef readonly bint json
    cdef readonly bint show_table
    cdef tuple types, protocols, scopes, prefs, dsfields
    cdef dict tables
    cdef int nflags
    cdef uint32_t flag_bits[LW_FMT_FLAGS]
    cdef tuple flag_names

    def __init__(self, names, bint json, types, protocols, scopes, prefs, dsfields, tables,
                 flags, *, bint show_table=True):
        cdef int i
        self.names = names
        self.json = json
        self.show_table = show_table
        self.types = _fmt_names(types, "types")
        self.protocols = _fmt_names(protocols, "protocols")
        self.scopes = _fmt_names(scopes, "scopes")
        self.prefs = _fmt_names(prefs, "prefs")
        self.dsfields = _fmt_names(dsfields, "dsfields")
        self.tables = {int(k): str(v).encode() for k, v in dict(tables).items()}
        pairs = [(int(bit), str(name).encode()) for bit, name in flags]
        if len(pairs) > LW_FMT_FLAGS:
            raise ValueError(f"at most {LW_FMT_FLAGS} flag names")
        self.nflags = len(pairs)
        for i in range(self.nflags):
            self.flag_bits[i] = <uint32_t>pairs[i][0]
        self.flag_names = tuple(name for _, name in pairs)

    def render(self, list routes not None):
        """The routes (RouteEntry records) written out: in text one line each
        (a multipath route's next hops on lines of their own), each ending in a
        newline; in JSON the objects separated by commas, without brackets."""
        cdef tuple items = tuple(routes)    # a snapshot: the list may change meanwhile
        cdef _RouteWriter w = _RouteWriter.__new__(_RouteWriter)
        cdef Py_ssize_t i
        w.f = self
        w.json = self.json
        w.last_index = -1
        for i in range(PyTuple_GET_SIZE(items)):
            if w.json and i:
                lw_put(&w.out, ",", 1)
            w._route(<RouteEntry?>PyTuple_GET_ITEM(items, i))
        return PyBytes_FromStringAndSize(w.out.p, w.out.n)


# One render()'s state: its output buffer and the last link it named (most
# routes name the same one); never shared between threads.
@cython.final
@cython.auto_pickle(False)
cdef class _RouteWriter:
    cdef RouteFormat f
    cdef bint json
    cdef lw_out out
    cdef int64_t last_index
    cdef bytes last_name

    def __dealloc__(self):
        PyMem_Free(self.out.p)

    cdef bytes _name(self, uint32_t index):
        if index != self.last_index:
            self.last_name = PyUnicode_EncodeFSDefault(self.f.names[index])
            self.last_index = index
        return self.last_name

    # " key" in text, ,"key": in JSON (the value follows).
    cdef int _key(self, const char *text, const char *json) except -1:
        return lw_puts(&self.out, json if self.json else text)

    cdef int _end(self) except -1:
        # Text ends every field with a space; JSON separates them with commas.
        return 0 if self.json else lw_put(&self.out, " ", 1)

    cdef int _prefix(self, int family, bint has, const uint8_t *a, int length) except -1:
        cdef lw_out *o = &self.out
        if has:
            lw_put_ip(o, family, a)
            if length != (32 if family == AF_INET_ else 128):
                lw_put(o, "/", 1)
                lw_put_u32(o, length)
        elif length:
            lw_put(o, "0/", 2)
            lw_put_u32(o, length)
        else:
            lw_put(o, "default", 7)
        return 0

    cdef int _flags(self, uint32_t flags) except -1:
        cdef lw_out *o = &self.out
        cdef int i
        cdef bint first = True
        if self.json:
            lw_put(o, ",\"flags\":[", 10)
        for i in range(self.f.nflags):
            if flags & self.f.flag_bits[i]:
                if self.json and not first:
                    lw_put(o, ",", 1)
                lw_put_word(o, self.json, <bytes>PyTuple_GET_ITEM(self.f.flag_names, i))
                self._end()
                first = False
        if self.json:
            lw_put(o, "]", 1)
        return 0

    cdef int _route(self, RouteEntry route) except -1:
        cdef lw_route *r = &route.r
        cdef lw_out *o = &self.out
        cdef bint json = self.json
        cdef object table
        lw_out_room(o, 256)
        if json:
            lw_put(o, "{", 1)
            if route.deleted:
                lw_put(o, "\"deleted\":true,", 15)
        elif route.deleted:
            lw_put(o, "Deleted ", 8)
        if r.type != RTN_UNICAST_:
            self._key("", "\"type\":")
            lw_put_word(o, json, <bytes>PyTuple_GET_ITEM(self.f.types, r.type))
            if json:
                lw_put(o, ",", 1)
            else:
                lw_put(o, " ", 1)
        self._key("", "\"dst\":\"")
        self._prefix(r.family, r.has & ROUTE_HAS_DST, r.dst, r.dst_len)
        self._close_str()
        if r.has & ROUTE_HAS_SRC or r.src_len:
            # ip's key for a source length without an address is "src"
            if r.has & ROUTE_HAS_SRC:
                self._key("from ", ",\"from\":\"")
            else:
                self._key("from ", ",\"src\":\"")
            self._prefix(r.family, r.has & ROUTE_HAS_SRC, r.src, r.src_len)
            self._close_str()
        if r.tos:
            self._key("tos ", ",\"tos\":")
            lw_put_word(o, json, <bytes>PyTuple_GET_ITEM(self.f.dsfields, r.tos))
            self._end()
        if r.has & ROUTE_HAS_GATEWAY:
            self._key("via ", ",\"gateway\":\"")
            lw_put_ip(o, r.gw_family, r.gateway)
            self._close_str()
        if r.has & ROUTE_HAS_OIF:
            self._key("dev ", ",\"dev\":")
            lw_put_word(o, json, self._name(r.oif))
            self._end()
        if self.f.show_table and r.table and r.table != RT_TABLE_MAIN_:
            self._key("table ", ",\"table\":")
            table = self.f.tables.get(r.table)
            if table is None:
                if json:
                    lw_put(o, "\"", 1)
                lw_put_u32(o, r.table)
                if json:
                    lw_put(o, "\"", 1)
            else:
                lw_put_word(o, json, <bytes>table)
            self._end()
        if not r.flags & RTM_F_CLONED_:
            if r.protocol != RTPROT_BOOT_:
                self._key("proto ", ",\"protocol\":")
                lw_put_word(o, json, <bytes>PyTuple_GET_ITEM(self.f.protocols, r.protocol))
                self._end()
            if r.scope != 0:
                self._key("scope ", ",\"scope\":")
                lw_put_word(o, json, <bytes>PyTuple_GET_ITEM(self.f.scopes, r.scope))
                self._end()
        if r.has & ROUTE_HAS_PREFSRC:
            self._key("src ", ",\"prefsrc\":\"")
            lw_put_ip(o, r.family, r.prefsrc)
            self._close_str()
        if r.has & ROUTE_HAS_PRIORITY:
            self._key("metric ", ",\"metric\":")
            lw_put_u32(o, r.priority)
            self._end()
        self._flags(r.flags)
        if r.has & ROUTE_HAS_MTU:
            self._key("mtu ", ",\"metrics\":[{\"mtu\":")
            lw_put_u32(o, r.mtu)
            if json:
                lw_put(o, "}]", 2)
            else:
                lw_put(o, " ", 1)
        if r.has & ROUTE_HAS_PREF:
            self._key("pref ", ",\"pref\":")        # the one field ip ends without a space
            lw_put_word(o, json, <bytes>PyTuple_GET_ITEM(self.f.prefs, r.pref))
        if route.nexthops_:
            self._hops(route.nexthops_)
        if json:
            lw_put(o, "}", 1)
        else:
            lw_put(o, "\n", 1)
        return 0

    # The end of a quoted JSON value, or of a text field.
    cdef int _close_str(self) except -1:
        if self.json:
            return lw_put(&self.out, "\"", 1)
        return lw_put(&self.out, " ", 1)

    cdef int _hops(self, tuple hops) except -1:
        cdef lw_out *o = &self.out
        cdef NextHop hop
        cdef Py_ssize_t i
        if self.json:
            lw_put(o, ",\"nexthops\":[", 13)
        for i in range(PyTuple_GET_SIZE(hops)):
            hop = <NextHop>PyTuple_GET_ITEM(hops, i)
            if self.json:
                lw_puts(o, ",{" if i else "{")
            else:
                lw_put(o, "\n\tnexthop ", 10)
            if hop.has_gateway:
                self._key("via ", "\"gateway\":\"")
                lw_put_ip(o, hop.family, hop.gateway_)
                if self.json:
                    lw_put(o, "\",", 2)
                else:
                    lw_put(o, " ", 1)
            self._key("dev ", "\"dev\":")
            lw_put_word(o, self.json, self._name(<uint32_t>hop.oif))
            self._key(" weight ", ",\"weight\":")
            lw_put_u32(o, <uint32_t>hop.weight)
            self._end()
            self._flags(<uint32_t>hop.flags)
            if self.json:
                lw_put(o, "}", 1)
        if self.json:
            lw_put(o, "]", 1)
        return 0


# names: 256 texts, as a tuple of bytes.
cdef tuple _fmt_names(object names, str what):
    cdef tuple out = tuple(str(name).encode() for name in names)
    if len(out) != 256:
        raise ValueError(f"{what}: 256 names, not {len(out)}")
    return out
