# cython: language_level=3
"""Compiled kernel-log / XID decoder. Behaviour and documentation: nvsentinel/_xid_py.py (the twin).

C-level choices: the buffer is never split into Python lines. `xid_next_anchor` (xid_scan.h)
finds the next anchor with SIMD compares; only the line around it is parsed, by hand-written
matchers that follow the twin's regular expressions exactly (each comment names the regex it
mirrors, with its backtracking cases). The line's header is read once (`_header`: where the
message starts, who wrote it, the time stamp), and every rule is tried at the message start only:
an anchor later in the message is text the kernel echoed, never an event (the twin's module doc,
"Anchoring", says why). Python objects are made only for lines that become events.
An event (XidEvent, a NamedTuple shared with the twin) is allocated and filled in place and then
untracked from the cyclic GC (namedtuple.h says why both are safe and why they matter). Time
stamps are parsed into a C struct and turned into objects once, for the event.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8
from libc.string cimport memchr, memcmp

from namedtuple cimport nvs_tuple_alloc, nvs_untrack
from xid_scan cimport xid_find, xid_next_anchor, xid_rfind

from nvsentinel import _xid_types as _t
from nvsentinel._xid_types import Location, NvLink5, XidEvent, normalize_pci
from nvsentinel._xid_catalog import default_catalog

__all__ = ["Decoder", "decode_line"]

ctypedef unsigned char uchar


cdef struct Pci:
    unsigned long long domain       # parsed from 4..8 hex digits; 0 when the line had none
    uchar bus0, bus1, dev0, dev1    # the two hex digits of bus and device, as printed
    bint known                      # False: the id was redacted (the event's pci is "")


cdef struct Stamp:
    int clock                       # index into CLOCKS; 0: the line had no time stamp
    double value                    # seconds on that clock
    Py_ssize_t a, b                 # the time text is s[a:b] ...
    bint kmsg                       # ... except for a kmsg header, printed from usec
    unsigned long long usec


cdef struct Head:
    Py_ssize_t msg                  # the kernel message starts at s[msg]; every rule matches there
    bint user                       # a header part names user space: the driver rules (1-5) do not apply
    bint kernel                     # a header part names the kernel: the reset rule (6) does not apply
    Stamp st                        # the line's time stamp (st.clock == NONE: none)


cdef Py_ssize_t MAX_LINE = _t.MAX_LINE_BYTES
cdef int WINDOW = _t.FALLEN_OFF_BUS_WINDOW
cdef str K_XID = _t.KIND_XID
cdef str K_SXID = _t.KIND_SXID
cdef str K_FALLEN = _t.KIND_FALLEN_OFF_BUS
cdef str K_MAPPING = _t.KIND_PCI_MAPPING
cdef str K_RESET = _t.KIND_GPU_RESET
cdef str C_MONOTONIC = _t.CLOCK_MONOTONIC
cdef str C_REALTIME = _t.CLOCK_REALTIME
cdef str C_YEARLESS = _t.CLOCK_YEARLESS
cdef str W_TRUNCATED = _t.WARN_TRUNCATED
cdef str W_154_NO_TARGET = _t.WARN_154_NO_TARGET
cdef str W_154_NO_NAME = _t.WARN_154_NO_NAME
cdef str W_PCI_UNKNOWN = _t.WARN_PCI_UNKNOWN
cdef str CODE_FALLEN = "GPU_FALLEN_OFF_BUS"
cdef str CODE_RESET = "GPU_RESET"
cdef tuple NO_TIME = (None, "", "")
cdef tuple CLOCKS = ("", C_MONOTONIC, C_REALTIME, C_YEARLESS)
cdef enum:                          # Stamp.clock, an index into CLOCKS
    NONE = 0
    MONOTONIC = 1
    REALTIME = 2
    YEARLESS = 3
cdef tuple WARN_PCI_ONLY = (W_PCI_UNKNOWN,)
cdef tuple EMPTY = ()
cdef Py_ssize_t MEMO_LIMIT = 4096
# days before each month in a leap year (BSD syslog stamps have no year; the twin uses 2000)
cdef int[12] LEAP_DAYS_BEFORE = [0, 31, 60, 91, 121, 152, 182, 213, 244, 274, 305, 335]
cdef int[12] DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
cdef double[10] POW10 = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9]
cdef const char *MONTHS = b"JanFebMarAprMayJunJulAugSepOctNovDec"
cdef const char *WEEKDAYS = b"MonTueWedThuFriSatSun"
cdef const char *HEX = b"0123456789abcdef"
# dmesg -x names, tried in this order (twin: _DECODED; local0-7 are matched apart)
cdef const char *FACILITIES = b"kern user mail daemon authpriv auth syslog lpr news uucp cron ftp"
cdef const char *REDACTED = b"redacted"
cdef const char *LEVELS = b"emerg alert crit err warn notice info debug"
cdef unsigned long long USER_FACILITY = 8   # syslog prefix = facility * 8 + level; the kernel's facility is 0
cdef Py_ssize_t N_EVENT = 27         # XidEvent fields


# ---- byte classes and runs ----
cdef inline bint _digit(uchar c) noexcept nogil:
    return c >= c'0' and c <= c'9'


cdef inline bint _hexd(uchar c) noexcept nogil:
    return _digit(c) or (c >= c'a' and c <= c'f') or (c >= c'A' and c <= c'F')


cdef inline bint _alpha(uchar c) noexcept nogil:
    return (c >= c'a' and c <= c'z') or (c >= c'A' and c <= c'Z')


cdef inline bint _alnum(uchar c) noexcept nogil:
    return _digit(c) or _alpha(c)


cdef inline bint _word(uchar c) noexcept nogil:
    return _alnum(c) or c == c'_'


cdef inline bint _uuid_char(uchar c) noexcept nogil:
    return _hexd(c) or c == c'-'


cdef inline bint _space(uchar c) noexcept nogil:
    # bytes.strip() whitespace: space \t \n \v \f \r
    return c == c' ' or (c >= 9 and c <= 13)


cdef inline uchar _lower(uchar c) noexcept nogil:
    if c >= c'A' and c <= c'Z':
        return c + 32    # 32 == ord('a') - ord('A')
    return c


# Length of the run of a byte class at s[i:], counting at most `cap` bytes: a caller that allows
# k bytes passes cap = k + 1, so "longer than allowed" shows as k + 1 (regex {1,k} then fails).
cdef inline Py_ssize_t _run_digits(const uchar *s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t cap) noexcept nogil:
    cdef Py_ssize_t j = i
    while j < n and j - i < cap and _digit(s[j]):
        j += 1
    return j - i


cdef inline Py_ssize_t _run_hex(const uchar *s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t cap) noexcept nogil:
    cdef Py_ssize_t j = i
    while j < n and j - i < cap and _hexd(s[j]):
        j += 1
    return j - i


cdef inline Py_ssize_t _run_word(const uchar *s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t cap) noexcept nogil:
    cdef Py_ssize_t j = i
    while j < n and j - i < cap and _word(s[j]):
        j += 1
    return j - i


cdef inline Py_ssize_t _run_alpha(const uchar *s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t cap) noexcept nogil:
    cdef Py_ssize_t j = i
    while j < n and j - i < cap and _alpha(s[j]):
        j += 1
    return j - i


cdef inline Py_ssize_t _run_uuid(const uchar *s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t cap) noexcept nogil:
    cdef Py_ssize_t j = i
    while j < n and j - i < cap and _uuid_char(s[j]):
        j += 1
    return j - i


cdef inline Py_ssize_t _run_not_comma(const uchar *s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t cap) noexcept nogil:
    cdef Py_ssize_t j = i
    while j < n and j - i < cap and s[j] != c',':
        j += 1
    return j - i


cdef inline Py_ssize_t _skip_spaces(const uchar *s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and s[i] == c' ':
        i += 1
    return i


cdef inline bint _at(const uchar *s, Py_ssize_t i, Py_ssize_t n, const char *lit, Py_ssize_t k) noexcept nogil:
    return i >= 0 and i + k <= n and memcmp(s + i, lit, k) == 0


cdef inline bint _byte_at(const uchar *s, Py_ssize_t i, Py_ssize_t n, uchar c) noexcept nogil:
    return i < n and s[i] == c


cdef inline unsigned long long _dec(const uchar *s, Py_ssize_t i, Py_ssize_t k) noexcept nogil:
    cdef unsigned long long v = 0
    cdef Py_ssize_t j
    for j in range(i, i + k):
        v = v * 10 + (s[j] - c'0')
    return v


cdef inline unsigned long long _hexnum(const uchar *s, Py_ssize_t i, Py_ssize_t k) noexcept nogil:
    cdef unsigned long long v = 0
    cdef Py_ssize_t j
    cdef uchar c
    for j in range(i, i + k):
        c = s[j]
        if c <= c'9':
            v = (v << 4) | (c - c'0')
        else:
            v = (v << 4) | ((c | 0x20) - 87)    # 0x20 lower-cases; ord('a') - 10 == 87
    return v


cdef inline str _text(const uchar *s, Py_ssize_t a, Py_ssize_t b):
    return PyUnicode_DecodeUTF8(<const char *>s + a, b - a, "replace")


cdef str _lower_text(const uchar *s, Py_ssize_t a, Py_ssize_t b):
    # ASCII-only input (a class of letters/digits), lower-cased like bytes.lower()
    cdef bytearray buf = bytearray(s[a:b])
    cdef Py_ssize_t j
    for j in range(b - a):
        buf[j] = _lower(buf[j])
    return buf.decode("ascii")


# ---- PCI ids ----
# _PCI = (?:PCI:)?(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})(?:\.[0-9a-fA-F])?
# Backtracking cannot find another match: with a domain run of 4..8 hex digits before ':', the
# domain-less branch would need ':' at the run's third byte, a hex digit; and a consumed `.f`
# is never given back usefully, since every rule then needs a byte that '.' is not.
cdef Py_ssize_t _parse_pci(const uchar *s, Py_ssize_t i, Py_ssize_t n, Pci *out) noexcept nogil:
    cdef Py_ssize_t j = i, d
    out.known = True
    if _at(s, j, n, b"PCI:", 4):
        j += 4
    d = _run_hex(s, j, n, 9)
    if (4 <= d <= 8 and j + d + 6 <= n and s[j + d] == c':' and _hexd(s[j + d + 1])
            and _hexd(s[j + d + 2]) and s[j + d + 3] == c':' and _hexd(s[j + d + 4])
            and _hexd(s[j + d + 5])):
        out.domain = _hexnum(s, j, d)
        out.bus0 = s[j + d + 1]
        out.bus1 = s[j + d + 2]
        out.dev0 = s[j + d + 4]
        out.dev1 = s[j + d + 5]
        j += d + 6
    elif j + 5 <= n and _hexd(s[j]) and _hexd(s[j + 1]) and s[j + 2] == c':' and _hexd(s[j + 3]) and _hexd(s[j + 4]):
        out.domain = 0
        out.bus0 = s[j]
        out.bus1 = s[j + 1]
        out.dev0 = s[j + 3]
        out.dev1 = s[j + 4]
        j += 5
    else:
        return -1
    if j + 2 <= n and s[j] == c'.' and _hexd(s[j + 1]):
        j += 2
    return j


cdef inline bint _mask_char(uchar c) noexcept nogil:
    return _hexd(c) or c == c':' or c == c'.' or _mask_mark(c)


cdef inline bint _mask_mark(uchar c) noexcept nogil:
    return c == c'x' or c == c'X' or c == c'*' or c == c'#' or c == c'?'


cdef Py_ssize_t _placeholder(const uchar *s, Py_ssize_t j, Py_ssize_t n, uchar close) noexcept nogil:
    # <[^<>()]{1,32}> or \[[^\[\]()]{1,32}\] at s[j] (s[j] is the opening byte) → its end, or -1
    cdef Py_ssize_t k = j + 1
    cdef uchar c
    while k < n and k - j - 1 < 33:
        c = s[k]
        if c == s[j] or c == close or c == c'(' or c == c')':
            break
        k += 1
    if k - j - 1 < 1 or k - j - 1 > 32 or not _byte_at(s, k, n, close):
        return -1
    return k + 1


cdef Py_ssize_t _parse_pci_paren(const uchar *s, Py_ssize_t i, Py_ssize_t n, Pci *out, int alt) noexcept nogil:
    # Inside the parentheses of rules 1 and 2 (twin: _PCI_PAREN), alternative `alt` at s[i:], after
    # an optional "PCI:": 0 the full form (_parse_pci), 1 the short form ([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2})
    # (device 00), 2 a redacted id (out.known = False): a mask of 1..32 of [0-9a-fA-FxX*#?:.] holding
    # one of [xX*#?], <…>, […], or "redacted" in any case. The caller tries them in this order,
    # each with the rule's tail, as the regex backtracks: a form only ends where the tail can start
    # (a byte outside its class), so each yields at most one candidate; the redacted forms differ
    # in their first byte.
    cdef Py_ssize_t j = i, d, r, k
    cdef bint marked
    out.known = alt != 2
    if alt == 0:
        return _parse_pci(s, i, n, out)
    if _at(s, j, n, b"PCI:", 4):
        j += 4
    if alt == 1:
        d = _run_hex(s, j, n, 9)
        if 4 <= d <= 8 and j + d + 3 <= n and s[j + d] == c':' and _hexd(s[j + d + 1]) and _hexd(s[j + d + 2]):
            out.domain = _hexnum(s, j, d)
            out.bus0 = s[j + d + 1]
            out.bus1 = s[j + d + 2]
            out.dev0 = c'0'
            out.dev1 = c'0'
            return j + d + 3
        return -1
    if j >= n:
        return -1
    if s[j] == c'<':
        return _placeholder(s, j, n, c'>')
    if s[j] == c'[':
        return _placeholder(s, j, n, c']')
    if j + 8 <= n and (s[j] | 0x20) == c'r':
        for k in range(8):
            if _lower(s[j + k]) != <uchar>REDACTED[k]:
                return -1
        return j + 8
    r = 0
    marked = False
    while j + r < n and r < 33 and _mask_char(s[j + r]):
        marked = marked or _mask_mark(s[j + r])
        r += 1
    if 1 <= r <= 32 and marked:
        return j + r
    return -1


cdef str _pci_text(Pci *p):
    # "%04x:%c%c:%c%c" with the digits lower-cased (twin: f"{domain:04x}:{bus}:{dev}")
    cdef char buf[24]
    cdef int k = 0, digits = 4, j
    cdef unsigned long long d = p.domain >> 16
    while d:
        digits += 1
        d >>= 4
    for j in range(digits - 1, -1, -1):
        buf[k] = HEX[(p.domain >> (4 * j)) & 15]
        k += 1
    buf[k] = c':'
    buf[k + 1] = _lower(p.bus0)
    buf[k + 2] = _lower(p.bus1)
    buf[k + 3] = c':'
    buf[k + 4] = _lower(p.dev0)
    buf[k + 5] = _lower(p.dev1)
    return PyUnicode_DecodeASCII(buf, k + 6, NULL)


# ---- the line header and its time stamps (twin: _header) ----
cdef inline bint _is_leap(long long y) noexcept nogil:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


cdef inline bint _valid_date(long long y, int m, int d) noexcept nogil:
    cdef int days
    if m < 1 or m > 12 or d < 1:
        return False
    days = 29 if (m == 2 and _is_leap(y)) else DAYS_IN_MONTH[m - 1]
    return d <= days


cdef inline long long _days_from_civil(long long y, int m, int d) noexcept nogil:
    # H. Hinnant's algorithm with floor division, as in the twin
    cdef long long era, yoe, doy, doe
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef inline bint _two(const uchar *s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    return i + 2 <= n and _digit(s[i]) and _digit(s[i + 1])


cdef inline int _val2(const uchar *s, Py_ssize_t i) noexcept nogil:
    return (s[i] - c'0') * 10 + (s[i + 1] - c'0')


cdef inline Py_ssize_t _prio(const uchar *s, Py_ssize_t n, bint *user) noexcept nogil:
    # <(\d{1,3})> at the line start → its length (0: none); user: P >= 8 (facility not the kernel's)
    cdef Py_ssize_t r
    if n > 0 and s[0] == c'<':
        r = _run_digits(s, 1, n, 4)
        if 1 <= r <= 3 and _byte_at(s, 1 + r, n, c'>'):
            user[0] = _dec(s, 1, r) >= USER_FACILITY
            return 2 + r
    return 0


cdef inline Py_ssize_t _name(const uchar *s, Py_ssize_t i, Py_ssize_t n, const char *names) noexcept nogil:
    # length of the first of the space-separated `names` found at s[i:] (0: none)
    cdef Py_ssize_t a = 0, b
    while names[a] != 0:
        b = a
        while names[b] != 0 and names[b] != c' ':
            b += 1
        if _at(s, i, n, names + a, b - a):
            return b - a
        a = b + 1 if names[b] == c' ' else b
    return 0


cdef Py_ssize_t _decoded(const uchar *s, Py_ssize_t n, bint *user) noexcept nogil:
    # dmesg -x: (kern|user|…|authpriv|auth|…|local[0-7]) {0,8}:(emerg|…|debug) {0,8}: → length (0: none)
    # (a facility that is a prefix of another one is tried after it, like the twin's alternation)
    cdef Py_ssize_t k, r
    cdef bint kern
    k = _name(s, 0, n, FACILITIES)
    if k == 0 and _at(s, 0, n, b"local", 5) and n > 5 and s[5] >= c'0' and s[5] <= c'7':
        k = 6
    if k == 0:
        return 0
    r = _skip_spaces(s, k, n)
    if r - k > 8 or not _byte_at(s, r, n, c':'):
        return 0
    kern = k == 4 and memcmp(s, b"kern", 4) == 0
    k = r + 1
    r = _name(s, k, n, LEVELS)
    if r == 0:
        return 0
    k += r
    r = _skip_spaces(s, k, n)
    if r - k > 8 or not _at(s, r, n, b": ", 2):
        return 0
    user[0] = not kern
    return r + 2


cdef inline int _month(const uchar *s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef int m
    if i + 3 > n:
        return 0
    for m in range(12):
        if memcmp(s + i, MONTHS + 3 * m, 3) == 0:
            return m + 1
    return 0


cdef inline bint _weekday(const uchar *s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef int w
    if i + 3 > n:
        return False
    for w in range(7):
        if memcmp(s + i, WEEKDAYS + 3 * w, 3) == 0:
            return True
    return False


cdef inline int _day(const uchar *s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    # ([ \d]\d) → the day, or -1
    if i + 2 > n or not (s[i] == c' ' or _digit(s[i])) or not _digit(s[i + 1]):
        return -1
    return (0 if s[i] == c' ' else (s[i] - c'0') * 10) + (s[i + 1] - c'0')


cdef inline Py_ssize_t _clock(const uchar *s, Py_ssize_t i, Py_ssize_t n, int *hms) noexcept nogil:
    # (\d{2}):(\d{2}):(\d{2}) → end offset, or -1
    if not (_two(s, i, n) and _byte_at(s, i + 2, n, c':') and _two(s, i + 3, n)
            and _byte_at(s, i + 5, n, c':') and _two(s, i + 6, n)):
        return -1
    hms[0] = _val2(s, i)
    hms[1] = _val2(s, i + 3)
    hms[2] = _val2(s, i + 6)
    return i + 8


cdef inline bint _clock_ok(int *hms) noexcept nogil:
    return hms[0] <= 23 and hms[1] <= 59 and hms[2] <= 59


cdef inline double _with_fraction(long long seconds, const uchar *s, Py_ssize_t f, Py_ssize_t k) noexcept nogil:
    # twin: seconds + int(fraction) / 10 ** len(fraction) — both divisions are correctly rounded
    if k == 0:
        return <double>seconds
    return <double>seconds + <double>_dec(s, f, k) / POW10[k]


cdef inline void _set(Stamp *st, int clock, double value, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    st.clock = clock
    st.value = value
    st.a = a
    st.b = b


cdef Py_ssize_t _ts_kmsg(const uchar *s, Py_ssize_t n, Stamp *st, bint *user) noexcept nogil:
    # /dev/kmsg: (\d{1,3}),\d{1,20},(\d{1,15}),[^;]{0,64}; → the offset after ';', or -1
    cdef Py_ssize_t k, r, p, a, j
    p = _run_digits(s, 0, n, 4)
    if 1 <= p <= 3 and _byte_at(s, p, n, c','):
        k = p + 1
        r = _run_digits(s, k, n, 21)
        if 1 <= r <= 20 and _byte_at(s, k + r, n, c','):
            k += r + 1
            r = _run_digits(s, k, n, 16)
            if 1 <= r <= 15 and _byte_at(s, k + r, n, c','):
                a = k + r + 1
                j = a
                while j < n and j - a < 64 and s[j] != c';':
                    j += 1
                if _byte_at(s, j, n, c';'):
                    st.usec = _dec(s, k, r)
                    st.value = <double>st.usec / 1e6
                    st.clock = MONOTONIC
                    st.kmsg = True
                    user[0] = _dec(s, 0, p) >= USER_FACILITY
                    return j + 1
    return -1


cdef Py_ssize_t _ts_iso(const uchar *s, Py_ssize_t k, Py_ssize_t n, Stamp *st) noexcept nogil:
    # ((\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?) and a space
    # → the offset after the space, or -1; st is set only when the date is real
    cdef Py_ssize_t j, r, b, fstart = 0, flen = 0
    cdef long long year, epoch, offset = 0
    cdef int month, day
    cdef int hms[3]
    if not (k + 11 <= n and _digit(s[k]) and _digit(s[k + 1]) and _digit(s[k + 2]) and _digit(s[k + 3])
            and s[k + 4] == c'-' and _two(s, k + 5, n) and s[k + 7] == c'-' and _two(s, k + 8, n)
            and (s[k + 10] == c'T' or s[k + 10] == c' ')):
        return -1
    j = _clock(s, k + 11, n, hms)
    if j < 0:
        return -1
    year = <long long>_dec(s, k, 4)
    month = _val2(s, k + 5)
    day = _val2(s, k + 8)
    if j < n and (s[j] == c'.' or s[j] == c','):
        r = _run_digits(s, j + 1, n, 9)
        if r >= 1:      # a 10th digit then fails the space below, as the regex does
            fstart = j + 1
            flen = r
            j += 1 + r
    if j < n and s[j] == c'Z':
        j += 1
    elif j < n and (s[j] == c'+' or s[j] == c'-') and _two(s, j + 1, n):
        # [+-]\d{2}:?\d{2}: the ':' is given back when two digits do not follow it; a zone that
        # does not fit is not taken, and the space below then fails, as the regex does
        b = j + 3
        if _byte_at(s, b, n, c':') and _two(s, b + 1, n):
            b += 1
        if _two(s, b, n):
            offset = _val2(s, j + 1) * 3600 + _val2(s, b) * 60
            if s[j] == c'-':
                offset = -offset
            j = b + 2
    if not _byte_at(s, j, n, c' '):
        return -1
    if _valid_date(year, month, day) and _clock_ok(hms):
        epoch = _days_from_civil(year, month, day) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
        epoch -= offset
        _set(st, REALTIME, _with_fraction(epoch, s, fstart, flen), k, j)
    return j + 1


cdef Py_ssize_t _ts_bsd(const uchar *s, Py_ssize_t k, Py_ssize_t n, Stamp *st) noexcept nogil:
    # ((Mon) ([ \d]\d) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?) and a space → the offset after the space, or -1
    cdef Py_ssize_t j, r, fstart = 0, flen = 0
    cdef long long epoch
    cdef int month, day
    cdef int hms[3]
    month = _month(s, k, n)
    if not (month and _byte_at(s, k + 3, n, c' ')):
        return -1
    day = _day(s, k + 4, n)
    if day < 0 or not _byte_at(s, k + 6, n, c' '):
        return -1
    j = _clock(s, k + 7, n, hms)
    if j < 0:
        return -1
    if _byte_at(s, j, n, c'.'):
        r = _run_digits(s, j + 1, n, 9)
        if r >= 1:
            fstart = j + 1
            flen = r
            j += 1 + r
    if not _byte_at(s, j, n, c' '):
        return -1
    if _valid_date(2000, month, day) and _clock_ok(hms):
        epoch = (LEAP_DAYS_BEFORE[month - 1] + day - 1) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
        _set(st, YEARLESS, _with_fraction(epoch, s, fstart, flen), k, j)
    return j + 1


cdef Py_ssize_t _ts_dmesg_t(const uchar *s, Py_ssize_t k, Py_ssize_t n, Stamp *st) noexcept nogil:
    # \[((?:Mon|...) (Jan|...) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4}))\] ? → the offset after it, or -1
    cdef Py_ssize_t j
    cdef long long year, epoch
    cdef int month, day
    cdef int hms[3]
    if not (_byte_at(s, k, n, c'[') and _weekday(s, k + 1, n) and _byte_at(s, k + 4, n, c' ')):
        return -1
    month = _month(s, k + 5, n)
    if not (month and _byte_at(s, k + 8, n, c' ')):
        return -1
    day = _day(s, k + 9, n)
    if day < 0 or not _byte_at(s, k + 11, n, c' '):
        return -1
    j = _clock(s, k + 12, n, hms)
    if not (j >= 0 and _byte_at(s, j, n, c' ') and _two(s, j + 1, n) and _two(s, j + 3, n)
            and _byte_at(s, j + 5, n, c']')):
        return -1
    year = <long long>_dec(s, j + 1, 4)
    if _valid_date(year, month, day) and _clock_ok(hms):
        epoch = _days_from_civil(year, month, day) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
        _set(st, REALTIME, <double>epoch, k + 1, j + 5)
    j += 6
    if _byte_at(s, j, n, c' '):
        j += 1
    return j


cdef Py_ssize_t _ts_dmesg(const uchar *s, Py_ssize_t k, Py_ssize_t n, Stamp *st) noexcept nogil:
    # \[ *((\d{1,10})(?:\.(\d{1,9}))?)\] ? → the offset after it, or -1 (st always set)
    cdef Py_ssize_t a, r, f = 0, j
    if not _byte_at(s, k, n, c'['):
        return -1
    a = _skip_spaces(s, k + 1, n)
    r = _run_digits(s, a, n, 11)
    if r < 1 or r > 10:
        return -1
    j = a + r
    if _byte_at(s, j, n, c'.'):
        f = _run_digits(s, j + 1, n, 10)
        if f < 1 or f > 9:
            return -1
        j += 1 + f
    if not _byte_at(s, j, n, c']'):
        return -1
    _set(st, MONOTONIC, _with_fraction(<long long>_dec(s, a, r), s, a + r + 1, f), a, j)
    j += 1
    if _byte_at(s, j, n, c' '):
        j += 1
    return j


cdef Py_ssize_t _tag(const uchar *s, Py_ssize_t k, Py_ssize_t n, bint *kernel) noexcept nogil:
    # ([^ :\[\]]{1,64}(?:\[\d{1,10}\])?): and a space → the offset after the space, or -1;
    # kernel: the tag is exactly "kernel"
    cdef Py_ssize_t j = k, d
    cdef uchar c
    while j < n and j - k < 65:
        c = s[j]
        if c == c' ' or c == c':' or c == c'[' or c == c']':
            break
        j += 1
    if j == k or j - k > 64:
        return -1
    if _byte_at(s, j, n, c'['):
        d = _run_digits(s, j + 1, n, 11)
        if not (1 <= d <= 10 and _byte_at(s, j + 1 + d, n, c']')):
            return -1
        j += 2 + d
    if not _at(s, j, n, b": ", 2):
        return -1
    kernel[0] = j - k == 6 and memcmp(s + k, b"kernel", 6) == 0
    return j + 2


cdef inline Py_ssize_t _host(const uchar *s, Py_ssize_t k, Py_ssize_t n) noexcept nogil:
    # [^ ]{0,254}[^ :] and a space (a host name never ends with ':') → the offset after the space, or -1
    cdef Py_ssize_t j = k
    while j < n and j - k < 256 and s[j] != c' ':
        j += 1
    if j == k or j - k > 255 or s[j - 1] == c':' or not _byte_at(s, j, n, c' '):
        return -1
    return j + 1


cdef inline bint _rule_start(const uchar *s, Py_ssize_t k, Py_ssize_t n) noexcept nogil:
    # NVRM: |SXid \(|nvidia-nvswitch\d{1,4}: SXid \(|GPU reset executed:
    cdef Py_ssize_t r
    if _at(s, k, n, b"NVRM: ", 6) or _at(s, k, n, b"SXid (", 6) or _at(s, k, n, b"GPU reset executed: ", 20):
        return True
    if _at(s, k, n, b"nvidia-nvswitch", 15):
        r = _run_digits(s, k + 15, n, 5)
        return 1 <= r <= 4 and _at(s, k + 15 + r, n, b": SXid (", 8)
    return False


cdef void _header(const uchar *s, Py_ssize_t n, Head *h) noexcept nogil:
    """The header of the line s[0:n] (twin: _header): where the message starts, whether a part names
    user space, whether a part names the kernel, and the time stamp (the first real date among the
    header's stamps)."""
    cdef Py_ssize_t p, j, k
    cdef bint tagged = False, kernel = False, iso
    cdef Stamp d
    h.user = False
    h.kernel = False
    h.st.clock = NONE
    h.st.kmsg = False
    j = _ts_kmsg(s, n, &h.st, &h.user)
    if j >= 0:
        h.kernel = not h.user
        h.msg = j
        return
    p = _prio(s, n, &h.user)
    if p == 0:
        p = _decoded(s, n, &h.user)
    if p > 0:
        h.kernel = not h.user
    j = _ts_iso(s, p, n, &h.st)
    iso = j >= 0
    if j < 0:
        j = _ts_bsd(s, p, n, &h.st)
    if j >= 0:     # a syslog line: [HOST ]TAG: follows, unless the message starts right here
        p = j
        if _rule_start(s, p, n):
            h.msg = p
            return
        j = _tag(s, p, n, &kernel)
        if j >= 0 and iso and not kernel:
            # dmesg --time-format=iso prints no tag, so `input: <any name>` there is a kernel
            # message: after an ISO stamp, a tag without a host must be the kernel's
            j = -1
        if j < 0:
            k = _host(s, p, n)
            if k >= 0:
                j = _tag(s, k, n, &kernel)
        if j >= 0:
            p = j
            tagged = True
            if kernel:
                h.kernel = True
            else:
                h.user = True
    else:
        j = _ts_dmesg_t(s, p, n, &h.st)
        if j >= 0:
            h.msg = j
            return
        if _at(s, p, n, b"kernel: ", 8):
            p += 8
            tagged = True
            h.kernel = True
    d.kmsg = False
    j = _ts_dmesg(s, p, n, &d)
    if j >= 0:
        if h.st.clock == NONE:
            h.st = d
        p = j
        if not tagged:      # journalctl -o short-monotonic: "[ 1108.858286] HOST kernel: "
            k = _host(s, p, n)
            if k >= 0 and _at(s, k, n, b"kernel: ", 8):
                p = k + 8
                h.kernel = True
    h.msg = p


cdef str _usec_text(unsigned long long usec):
    # "%llu.%06llu" of seconds and microseconds, like the twin's f-string
    cdef char buf[40]
    cdef int k = 39
    cdef unsigned long long secs = usec // 1000000, frac = usec % 1000000
    for _ in range(6):
        buf[k] = c'0' + <char>(frac % 10)
        frac //= 10
        k -= 1
    buf[k] = c'.'
    k -= 1
    while True:
        buf[k] = c'0' + <char>(secs % 10)
        secs //= 10
        k -= 1
        if secs == 0:
            break
    return PyUnicode_DecodeASCII(buf + k + 1, 39 - k, NULL)


cdef tuple _stamp_objects(const uchar *s, Stamp *st):
    if st.clock == NONE:
        return NO_TIME
    return (st.value, CLOCKS[st.clock], _usec_text(st.usec) if st.kmsg else _text(s, st.a, st.b))


cdef inline void _put(object t, Py_ssize_t i, object value):
    # PyTuple_SET_ITEM steals a reference
    Py_INCREF(value)
    PyTuple_SET_ITEM(t, i, value)


cdef object _nvlink5(str subcode, str severity, str containment, bint injected, object link,
                     object intr_info, object error_status):
    injected_obj = True if injected else False
    t = nvs_tuple_alloc(NvLink5, 7)
    _put(t, 0, subcode)
    _put(t, 1, severity)
    _put(t, 2, containment)
    _put(t, 3, injected_obj)
    _put(t, 4, link)
    _put(t, 5, intr_info)
    _put(t, 6, error_status)
    nvs_untrack(t)
    return t


cdef object _location(object gpc, object tpc, object sm):
    t = nvs_tuple_alloc(Location, 3)
    _put(t, 0, gpc)
    _put(t, 1, tpc)
    _put(t, 2, sm)
    nvs_untrack(t)
    return t




cdef tuple _registers(unsigned long long *regs, Py_ssize_t count):
    cdef list out = []
    cdef Py_ssize_t k
    for k in range(count):
        out.append(regs[k])
    return tuple(out)


cdef str _device_id(const uchar *s, Py_ssize_t i, Py_ssize_t n):
    # \(PCI ID: ([0-9a-fA-F]{4}:[0-9a-fA-F]{4})\) searched in s[i:n]; lower-cased
    cdef Py_ssize_t k
    while True:
        i = xid_find(s, i, n, b"(PCI ID: ", 9)
        if i < 0:
            return ""
        k = i + 9
        if (k + 10 <= n and _run_hex(s, k, n, 4) == 4 and s[k + 4] == c':'
                and _run_hex(s, k + 5, n, 4) == 4 and s[k + 9] == c')'):
            return _lower_text(s, k, k + 9)
        i += 1


cdef Py_ssize_t _record_fallen_text(const uchar *s, Py_ssize_t n, Head *h) noexcept nogil:
    # twin: _record_fallen_text — a later line of an open record: not from user space, and its
    # message (after the header and indentation) starts with "NVRM: "; "fallen off the bus" in it, or -1
    cdef Py_ssize_t k = h.msg
    if h.user:
        return -1
    while k < n and (s[k] == c' ' or s[k] == c'\t'):
        k += 1
    if not _at(s, k, n, b"NVRM: ", 6):
        return -1
    return xid_find(s, k + 6, n, b"fallen off the bus", 18)


@cython.final
cdef class Decoder:
    """Streaming kernel-log decoder (see nvsentinel._xid_py.Decoder)."""

    # The state lives here, not in a .pxd: setup.py names the module nvsentinel._xid_c from
    # csrc/_xid_c.pyx, and Cython only pairs a .pxd found at nvsentinel/_xid_c.pxd.
    cdef:
        object _catalog             # nvsentinel._xid_catalog.Catalog
        object _classify            # its bound classify()
        dict _classes               # classify() arguments tuple -> Classification (memo)
        dict _by_code               # plain XID error code -> Classification (the common memo)
        dict _codes                 # XID number -> its error code string
        dict _pcis                  # packed PCI id -> its canonical text (hash computed once)
        dict _uuid_by_pci           # canonical PCI id -> GPU UUID
        dict _pci_by_uuid           # GPU UUID -> canonical PCI id
        bytearray _partial          # unfinished last line: at most MAX_LINE_BYTES + 1 bytes
        bint _overflow              # that line was longer (its tail is dropped)
        object _pending_pci         # str: an open fallen-off-the-bus record's PCI id; None: none
        tuple _pending_time         # (timestamp, clock, time_text) of the record's first line
        list _pending_lines         # the record's lines (bytes), first line included
        str _pending_device         # "10de:26b5" once seen in the record, else ""
        bint _pending_truncated     # one of the record's lines was cut
        int _pending_left           # lines still searched for "fallen off the bus"
        unsigned long _pending_gen  # bumped when a record opens (the twin compares identities)

    def __init__(self, catalog=None, pci_to_uuid=None):
        self._catalog = catalog if catalog is not None else default_catalog()
        self._classify = self._catalog.classify
        self._classes = {}
        self._by_code = {}
        self._codes = {}
        self._pcis = {}
        self._uuid_by_pci = {}
        self._pci_by_uuid = {}
        for pci, uuid in (pci_to_uuid or {}).items():
            norm = normalize_pci(pci)
            if norm is None:
                raise ValueError(f"pci_to_uuid: {pci!r} is not a PCI id")
            self._uuid_by_pci[norm] = uuid
            self._pci_by_uuid[uuid] = norm
        self._partial = bytearray()
        self._overflow = False
        self._pending_pci = None
        self._pending_time = NO_TIME
        self._pending_lines = []
        self._pending_device = ""
        self._pending_truncated = False
        self._pending_left = 0
        self._pending_gen = 0

    @property
    def pci_to_uuid(self):
        return dict(self._uuid_by_pci)

    @property
    def catalog(self):
        return self._catalog

    def feed(self, chunk):
        cdef bytes data
        cdef list out = []
        cdef const uchar *s
        cdef Py_ssize_t n, i, last
        cdef const void *hit
        cdef bytes line
        cdef bint overflow
        if isinstance(chunk, str):
            data = (<str>chunk).encode("utf-8", "surrogatepass")
        elif type(chunk) is bytes:
            data = <bytes>chunk
        elif isinstance(chunk, (bytes, bytearray, memoryview)):
            data = bytes(chunk)
        else:
            raise TypeError(f"expected bytes or str, got {type(chunk).__name__}")
        s = <const uchar *>PyBytes_AS_STRING(data)
        n = PyBytes_GET_SIZE(data)
        if n == 0:
            return out
        i = 0
        if len(self._partial) or self._overflow:
            hit = memchr(s, c'\n', n)
            if hit == NULL:
                self._keep(s, n)
                return out
            i = <const uchar *>hit - s
            self._keep(s, i)
            line = bytes(self._partial)
            overflow = self._overflow
            del self._partial[:]
            self._overflow = False
            self._line(<const uchar *>PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line), overflow, out)
            i += 1
        last = n - 1
        while last >= i and s[last] != c'\n':
            last -= 1
        if last >= i:
            self._scan(s + i, last + 1 - i, out)
        self._keep(s + last + 1, n - last - 1)
        return out

    def finish(self):
        cdef list out = []
        cdef bytes line
        cdef bint overflow
        if len(self._partial) or self._overflow:
            line = bytes(self._partial)
            overflow = self._overflow
            del self._partial[:]
            self._overflow = False
            self._line(<const uchar *>PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line), overflow, out)
        self._close_pending()
        return out

    cdef int _close_pending(self) except -1:
        self._pending_pci = None
        self._pending_lines = []
        self._pending_device = ""
        self._pending_truncated = False
        self._pending_left = 0
        return 0

    # ---- lines ----
    cdef int _keep(self, const uchar *s, Py_ssize_t n) except -1:
        cdef Py_ssize_t room
        if self._overflow or n <= 0:
            return 0
        room = MAX_LINE + 1 - len(self._partial)
        if n > room:
            self._partial += s[:room]
            self._overflow = True
        else:
            self._partial += s[:n]
        return 0

    cdef int _scan(self, const uchar *buf, Py_ssize_t n, list out) except -1:
        # buf holds whole lines; the last ends with '\n'
        cdef Py_ssize_t p = 0, c, ls, eol
        cdef const void *hit
        while p < n:
            if self._pending_pci is not None:
                # an open fallen-off-the-bus record: the next lines are read one by one
                hit = memchr(buf + p, c'\n', n - p)
                eol = (<const uchar *>hit - buf) if hit != NULL else n
                self._line(buf + p, eol - p, False, out)
                p = eol + 1
                continue
            c = xid_next_anchor(buf, p, n)
            if c < 0:
                break
            ls = c
            while ls > p and buf[ls - 1] != c'\n':
                ls -= 1
            hit = memchr(buf + c, c'\n', n - c)
            eol = (<const uchar *>hit - buf) if hit != NULL else n
            self._line(buf + ls, eol - ls, False, out)
            p = eol + 1
        return 0

    cdef int _line(self, const uchar *s, Py_ssize_t n, bint overflow, list out) except -1:
        cdef bint truncated, had_pending
        cdef unsigned long gen
        cdef Py_ssize_t at
        cdef Head h
        if overflow:
            if n > MAX_LINE:
                n = MAX_LINE
            truncated = True
        else:
            if n > 0 and s[n - 1] == c'\r':
                n -= 1
            truncated = n > MAX_LINE
            if truncated:
                n = MAX_LINE
        had_pending = self._pending_pci is not None
        gen = self._pending_gen
        _header(s, n, &h)
        event = self._rules(s, n, &h, truncated)
        if self._pending_gen != gen:    # the line opened a new record
            return 0
        if event is not None:
            out.append(event)
        elif had_pending:
            at = _record_fallen_text(s, n, &h)
            if at >= 0:
                self._pending_lines.append(PyBytes_FromStringAndSize(<const char *>s, n))
                event = self._fallen_record(s, n, at, truncated)
                self._close_pending()
                out.append(event)
                return 0
        if had_pending:
            self._pending_lines.append(PyBytes_FromStringAndSize(<const char *>s, n))
            self._pending_truncated = self._pending_truncated or truncated
            if not self._pending_device:
                self._pending_device = _device_id(s, 0, n)
            self._pending_left -= 1
            if self._pending_left == 0:
                self._close_pending()
        return 0

    cdef object _rules(self, const uchar *s, Py_ssize_t n, Head *h, bint truncated):
        # every rule matches at h.msg only (twin: _rules); rules 1-5 never for user space, 6 never for the kernel
        if _at(s, h.msg, n, b"NVRM: ", 6):
            if h.user:
                return None
            event = self._rule_xid(s, n, h, truncated)
            if event is not None:
                return event
            event = self._rule_mapping(s, n, h, truncated)
            if event is not None:
                return event
            event = self._rule_fallen_line(s, n, h, truncated)
            if event is not None:
                return event
            return self._rule_fallen_start(s, n, h, truncated)
        if not h.user:
            event = self._rule_sxid(s, n, h, truncated)
            if event is not None:
                return event
        if h.kernel:    # rule 6 is reset tooling's: never for a line the kernel printed (echoed text)
            return None
        return self._rule_reset(s, n, h, truncated)

    # ---- rule 1: Xid ----
    cdef object _rule_xid(self, const uchar *s, Py_ssize_t n, Head *h, bint truncated):
        # NVRM: Xid \( _PCI_PAREN (?: GPU-I:(\d{1,4}))?(?: GPU-CI:(\d{1,4}))?\): *(\d{1,6})(?!\d),? *
        cdef Py_ssize_t j, r
        cdef Pci pci
        cdef long gpu_i, gpu_ci, xid
        cdef int alt
        if not _at(s, h.msg, n, b"NVRM: Xid (", 11):
            return None
        for alt in range(3):
            j = _parse_pci_paren(s, h.msg + 11, n, &pci, alt)
            if j < 0:
                continue
            gpu_i = -1
            gpu_ci = -1
            # a MIG group with 5+ digits cannot be followed by ')' or ' GPU-CI:': not taking
            # it fails the same way the regex does
            if _at(s, j, n, b" GPU-I:", 7):
                r = _run_digits(s, j + 7, n, 5)
                if 1 <= r <= 4:
                    gpu_i = <long>_dec(s, j + 7, r)
                    j += 7 + r
            if _at(s, j, n, b" GPU-CI:", 8):
                r = _run_digits(s, j + 8, n, 5)
                if 1 <= r <= 4:
                    gpu_ci = <long>_dec(s, j + 8, r)
                    j += 8 + r
            if _at(s, j, n, b"):", 2):
                j = _skip_spaces(s, j + 2, n)
                r = _run_digits(s, j, n, 7)
                if 1 <= r <= 6:
                    xid = <long>_dec(s, j, r)
                    j += r
                    if _byte_at(s, j, n, c','):
                        j += 1
                    j = _skip_spaces(s, j, n)
                    return self._xid_event(s, n, h, j, &pci, xid, gpu_i, gpu_ci, truncated)
        return None

    cdef object _xid_event(self, const uchar *s, Py_ssize_t n, Head *head, Py_ssize_t tail,
                           Pci *pci, long xid, long gpu_i, long gpu_ci, bint truncated):
        cdef Py_ssize_t p = tail, k, r, c, v, h, e, q, to, t, left, right, a, b
        cdef Py_ssize_t cnt = 0
        cdef unsigned long long regs[16]
        cdef bint ok
        cdef long link_value = 0
        cdef Py_ssize_t t1 = 0, t2 = 0, t3 = 0, t4 = 0, sub_a = 0, sev_a = 0, xc_a = 0, inj_a = 0
        pid = None
        process = ""
        channel = None
        location = None
        link = None
        registers = EMPTY
        recovery_action = ""
        recovery_code = None
        nvlink5 = None
        severity = ""
        warning = None
        error_code = self._codes.get(xid)
        if error_code is None:
            error_code = str(xid)
            if len(self._codes) < MEMO_LIMIT:
                self._codes[xid] = error_code

        # (?:pid=([^,]{0,64})(?:, *|\Z))?(?:name=([^,]{0,256})(?:, *|\Z))?
        if _at(s, p, n, b"pid=", 4):
            k = p + 4
            r = _run_not_comma(s, k, n, 65)
            if r <= 64:
                if 1 <= r <= 10 and _run_digits(s, k, n, 11) == r:
                    pid = <long long>_dec(s, k, r)
                p = k + r
                if p < n:
                    p = _skip_spaces(s, p + 1, n)
        if _at(s, p, n, b"name=", 5):
            k = p + 5
            r = _run_not_comma(s, k, n, 257)
            if r <= 256:
                if not ((r == 9 and memcmp(s + k, b"<unknown>", 9) == 0)
                        or (r == 11 and memcmp(s + k, b"'<unknown>'", 11) == 0)):
                    process = _text(s, k, k + r)
                p = k + r
                if p < n:
                    p = _skip_spaces(s, p + 1, n)

        # (?<![0-9A-Za-z])(?:Channel|ChID|Ch) (?:0x)?([0-9a-fA-F]{1,16})(?![0-9A-Za-z])
        # (at most one of the three literals, with its space, fits a position)
        c = p
        while True:
            c = xid_find(s, c, n, b"Ch", 2)
            if c < 0:
                break
            if c == p or not _alnum(s[c - 1]):
                v = -1
                if _at(s, c, n, b"Channel ", 8):
                    v = c + 8
                elif _at(s, c, n, b"ChID ", 5):
                    v = c + 5
                elif _at(s, c, n, b"Ch ", 3):
                    v = c + 3
                if v >= 0:
                    ok = False
                    if _at(s, v, n, b"0x", 2):
                        h = _run_hex(s, v + 2, n, 17)
                        if 1 <= h <= 16 and (v + 2 + h == n or not _alnum(s[v + 2 + h])):
                            channel = _hexnum(s, v + 2, h)
                            ok = True
                    if not ok:
                        h = _run_hex(s, v, n, 17)
                        if 1 <= h <= 16 and (v + h == n or not _alnum(s[v + h])):
                            channel = _hexnum(s, v, h)
                            ok = True
                    if ok:
                        break
            c += 1

        # \(GPC (\d{1,4}), TPC (\d{1,4})(?:, SM (\d{1,4}))?\)
        c = p
        while True:
            c = xid_find(s, c, n, b"(GPC ", 5)
            if c < 0:
                break
            k = c + 5
            r = _run_digits(s, k, n, 5)
            if 1 <= r <= 4 and _at(s, k + r, n, b", TPC ", 6):
                a = k + r + 6
                h = _run_digits(s, a, n, 5)
                if 1 <= h <= 4:
                    e = a + h
                    if _byte_at(s, e, n, c')'):
                        location = _location(<long>_dec(s, k, r), <long>_dec(s, a, h), None)
                        break
                    if _at(s, e, n, b", SM ", 5):
                        q = _run_digits(s, e + 5, n, 5)
                        if 1 <= q <= 4 and _byte_at(s, e + 5 + q, n, c')'):
                            location = _location(<long>_dec(s, k, r), <long>_dec(s, a, h), <long>_dec(s, e + 5, q))
                            break
            c += 1

        if xid == 74:
            # (?<![0-9A-Za-z])link (\d{1,4})(?!\d)(?: ?\((0x[0-9a-fA-F]{1,16}(?:, *0x[0-9a-fA-F]{1,16}){0,15})\))?
            c = p
            while True:
                c = xid_find(s, c, n, b"link ", 5)
                if c < 0:
                    break
                if c == p or not _alnum(s[c - 1]):
                    r = _run_digits(s, c + 5, n, 5)
                    if 1 <= r <= 4:
                        link = <long>_dec(s, c + 5, r)
                        k = c + 5 + r
                        if _byte_at(s, k, n, c' '):
                            k = k + 1 if _byte_at(s, k + 1, n, c'(') else -1
                        elif not _byte_at(s, k, n, c'('):
                            k = -1
                        if k >= 0:
                            q = k + 1
                            cnt = 0
                            ok = False
                            while _at(s, q, n, b"0x", 2):
                                h = _run_hex(s, q + 2, n, 17)
                                if h < 1 or h > 16:
                                    break
                                regs[cnt] = _hexnum(s, q + 2, h)
                                cnt += 1
                                q += 2 + h
                                if _byte_at(s, q, n, c')'):
                                    ok = True
                                    break
                                if not (_byte_at(s, q, n, c',') and cnt < 16):
                                    break
                                q = _skip_spaces(s, q + 1, n)
                            if ok:
                                registers = _registers(regs, cnt)
                        break
                c += 1
        elif xid == 154:
            to = xid_rfind(s, p, n, b" to ", 4)
            if to < 0:
                warning = W_154_NO_TARGET
            else:
                t = to + 4
                if _at(s, t, n, b"0x", 2):
                    h = _run_hex(s, t + 2, n, 16)
                    if h >= 1:
                        recovery_code = _hexnum(s, t + 2, h)
                left = xid_find(s, t, n, b"(", 1)
                right = xid_find(s, left + 1, n, b")", 1) if left >= 0 else -1
                if right >= 0:
                    a = left + 1
                    b = right
                    while a < b and _space(s[a]):
                        a += 1
                    while b > a and _space(s[b - 1]):
                        b -= 1
                    if b > a:
                        recovery_action = _text(s, a, b)
                if not recovery_action:
                    warning = W_154_NO_NAME
        elif 144 <= xid <= 150:
            # ([A-Za-z0-9_]{1,64}) +([A-Za-z]{1,16}) +([A-Za-z0-9_]{1,16}) +([A-Za-z0-9_]{1,16})
            #  +Link +(-?\d{1,4}) +\(0x([0-9a-fA-F]{1,16}) +0x([0-9a-fA-F]{1,16})((?: +0x[0-9a-fA-F]{1,16}){0,14})
            k = p
            ok = False
            sub_a = k
            t1 = _run_word(s, k, n, 65)
            if 1 <= t1 <= 64 and _byte_at(s, k + t1, n, c' '):
                k = _skip_spaces(s, k + t1, n)
                sev_a = k
                t2 = _run_alpha(s, k, n, 17)
                if 1 <= t2 <= 16 and _byte_at(s, k + t2, n, c' '):
                    k = _skip_spaces(s, k + t2, n)
                    xc_a = k
                    t3 = _run_word(s, k, n, 17)
                    if 1 <= t3 <= 16 and _byte_at(s, k + t3, n, c' '):
                        k = _skip_spaces(s, k + t3, n)
                        inj_a = k
                        t4 = _run_word(s, k, n, 17)
                        if 1 <= t4 <= 16 and _byte_at(s, k + t4, n, c' '):
                            k = _skip_spaces(s, k + t4, n)
                            if _at(s, k, n, b"Link ", 5):
                                k = _skip_spaces(s, k + 4, n)
                                a = k
                                if _byte_at(s, k, n, c'-'):
                                    k += 1
                                r = _run_digits(s, k, n, 5)
                                if 1 <= r <= 4 and _byte_at(s, k + r, n, c' '):
                                    link_value = <long>_dec(s, k, r)
                                    if a != k:
                                        link_value = -link_value
                                    k = _skip_spaces(s, k + r, n)
                                    if _at(s, k, n, b"(0x", 3):
                                        h = _run_hex(s, k + 3, n, 17)
                                        if 1 <= h <= 16 and _byte_at(s, k + 3 + h, n, c' '):
                                            regs[0] = _hexnum(s, k + 3, h)
                                            k = _skip_spaces(s, k + 3 + h, n)
                                            if _at(s, k, n, b"0x", 2):
                                                h = _run_hex(s, k + 2, n, 16)
                                                if h >= 1:
                                                    regs[1] = _hexnum(s, k + 2, h)
                                                    k += 2 + h
                                                    cnt = 2
                                                    while cnt < 16:
                                                        q = _skip_spaces(s, k, n)
                                                        if q == k or not _at(s, q, n, b"0x", 2):
                                                            break
                                                        h = _run_hex(s, q + 2, n, 16)
                                                        if h < 1:
                                                            break
                                                        regs[cnt] = _hexnum(s, q + 2, h)
                                                        cnt += 1
                                                        k = q + 2 + h
                                                    ok = True
            if ok:
                severity = _lower_text(s, sev_a, sev_a + t2)
                subcode = _text(s, sub_a, sub_a + t1)
                link = link_value
                registers = _registers(regs, cnt)
                nvlink5 = _nvlink5(
                    subcode,
                    severity,
                    _text(s, xc_a, xc_a + t3),
                    not (t4 == 2 and s[inj_a] == c'i' and s[inj_a + 1] == c'0'),
                    link_value,
                    regs[0],
                    regs[1],
                )
                error_code = f"{xid}.{subcode}"
        if pci.known:
            warns = EMPTY if warning is None else (warning,)
        else:
            warns = WARN_PCI_ONLY if warning is None else (W_PCI_UNKNOWN, warning)
        return self._build(
            K_XID, error_code, xid, self._pci(pci) if pci.known else "", s, n, &head.st, None,
            truncated, "", pid, process, channel,
            _text(s, p, n), gpu_i if gpu_i >= 0 else None, gpu_ci if gpu_ci >= 0 else None,
            location, link, registers, recovery_action, recovery_code, nvlink5, severity, None, "",
            False, warns,
        )

    # ---- rule 2: SXid ----
    cdef object _rule_sxid(self, const uchar *s, Py_ssize_t n, Head *h, bint truncated):
        # (?:nvidia-nvswitch(\d{1,4}): )?SXid \( _PCI_PAREN \): *(\d{1,6})(?!\d),? *
        # then (Fatal|Non-fatal|Nonfatal)(?:, *|\Z) and Link (\d{1,4})(?!\d),? * at the tail
        cdef Py_ssize_t at = h.msg, p, j, r, q
        cdef Pci pci
        cdef long sxid
        cdef int alt
        switch = None
        if _at(s, at, n, b"nvidia-nvswitch", 15):
            # with 5+ digits, or without ": SXid (" after them, the optional prefix is not taken
            # and "SXid (" cannot start at 'n': no match
            r = _run_digits(s, at + 15, n, 5)
            if not (1 <= r <= 4 and _at(s, at + 15 + r, n, b": SXid (", 8)):
                return None
            switch = <long>_dec(s, at + 15, r)
            p = at + 15 + r + 8
        elif _at(s, at, n, b"SXid (", 6):
            p = at + 6
        else:
            return None
        for alt in range(3):
            j = _parse_pci_paren(s, p, n, &pci, alt)
            if j < 0 or not _at(s, j, n, b"):", 2):
                continue
            j = _skip_spaces(s, j + 2, n)
            r = _run_digits(s, j, n, 7)
            if not 1 <= r <= 6:
                continue
            sxid = <long>_dec(s, j, r)
            j += r
            if _byte_at(s, j, n, c','):
                j += 1
            j = _skip_spaces(s, j, n)
            severity = ""
            q = j
            if _at(s, j, n, b"Fatal", 5):
                q = j + 5
                severity = "fatal"
            elif _at(s, j, n, b"Non-fatal", 9):
                q = j + 9
                severity = "nonfatal"
            elif _at(s, j, n, b"Nonfatal", 8):
                q = j + 8
                severity = "nonfatal"
            if severity:
                if q == n:
                    j = q
                elif s[q] == c',':
                    j = _skip_spaces(s, q + 1, n)
                else:
                    severity = ""
            link = None
            if _at(s, j, n, b"Link ", 5):
                r = _run_digits(s, j + 5, n, 5)
                if 1 <= r <= 4:
                    link = <long>_dec(s, j + 5, r)
                    j += 5 + r
                    if _byte_at(s, j, n, c','):
                        j += 1
                    j = _skip_spaces(s, j, n)
            return self._build(
                K_SXID, f"SXID.{sxid}", sxid, self._pci(&pci) if pci.known else "", s, n, &h.st, None,
                truncated, "", None, "", None,
                _text(s, j, n), None, None, None, link, EMPTY, "", None, None, severity,
                switch, "", False, EMPTY if pci.known else WARN_PCI_ONLY,
            )
        return None

    # ---- rule 3: PCI → UUID mapping ----
    cdef object _rule_mapping(self, const uchar *s, Py_ssize_t n, Head *h, bint truncated):
        # NVRM: GPU at _PCI : (GPU-[0-9a-fA-F-]{1,64})
        cdef Py_ssize_t j, r
        cdef Pci pci
        if not _at(s, h.msg, n, b"NVRM: GPU at ", 13):
            return None
        j = _parse_pci(s, h.msg + 13, n, &pci)
        if j >= 0 and _at(s, j, n, b": GPU-", 6):
            r = _run_uuid(s, j + 6, n, 64)
            if r >= 1:
                pci_text = self._pci(&pci)
                uuid = _text(s, j + 2, j + 6 + r)
                self._uuid_by_pci[pci_text] = uuid
                self._pci_by_uuid[uuid] = pci_text
                return self._build(
                    K_MAPPING, "", None, pci_text, s, n, &h.st, None,
                    truncated, uuid, None, "", None,
                    "", None, None, None, None, EMPTY, "", None, None, "", None, "", False, EMPTY,
                )
        return None

    # ---- rule 4: fallen off the bus, one line ----
    cdef object _rule_fallen_line(self, const uchar *s, Py_ssize_t n, Head *h, bint truncated):
        # NVRM: GPU _PCI : GPU has fallen off the bus
        cdef Py_ssize_t j
        cdef Pci pci
        if not _at(s, h.msg, n, b"NVRM: GPU ", 10):
            return None
        j = _parse_pci(s, h.msg + 10, n, &pci)
        if j >= 0 and _at(s, j, n, b": GPU has fallen off the bus", 28):
            return self._build(
                K_FALLEN, CODE_FALLEN, None, self._pci(&pci), s, n, &h.st, None,
                truncated, "", None, "", None,
                _text(s, j + 2, n), None, None, None, None, EMPTY, "", None, None, "", None, "",
                False, EMPTY,
            )
        return None

    # ---- rule 5: fallen off the bus, record ----
    cdef object _rule_fallen_start(self, const uchar *s, Py_ssize_t n, Head *h, bint truncated):
        # NVRM: The NVIDIA GPU _PCI, then "fallen off the bus" later in the line or record
        cdef Py_ssize_t j, f
        cdef Pci pci
        if not _at(s, h.msg, n, b"NVRM: The NVIDIA GPU ", 21):
            return None
        j = _parse_pci(s, h.msg + 21, n, &pci)
        if j < 0:
            return None
        pci_text = self._pci(&pci)
        device = _device_id(s, j, n)
        f = xid_find(s, j, n, b"fallen off the bus", 18)
        if f >= 0:
            return self._build(
                K_FALLEN, CODE_FALLEN, None, pci_text, s, n, &h.st, None,
                truncated, "", None, "", None,
                _text(s, f, n), None, None, None, None, EMPTY, "", None, None, "", None, device,
                False, EMPTY,
            )
        self._pending_pci = pci_text
        self._pending_time = _stamp_objects(s, &h.st)
        self._pending_lines = [PyBytes_FromStringAndSize(<const char *>s, n)]
        self._pending_device = device
        self._pending_truncated = truncated
        self._pending_left = WINDOW
        self._pending_gen += 1
        return None

    # ---- rule 6: GPU reset executed ----
    cdef object _rule_reset(self, const uchar *s, Py_ssize_t n, Head *h, bint truncated):
        # GPU reset executed: (GPU-[0-9a-fA-F-]{1,64}); failed if the rest says so (any case)
        cdef Py_ssize_t at = h.msg, r, e, m
        cdef bint healthy
        if not _at(s, at, n, b"GPU reset executed: GPU-", 24):
            return None
        r = _run_uuid(s, at + 24, n, 64)
        if r < 1:
            return None
        e = at + 24 + r
        rest = bytes(s[e:n]).lower()
        healthy = not (b"success: false" in rest or b"fail" in rest)
        uuid = _text(s, at + 20, e)
        m = e
        while m < n and (s[m] == c',' or s[m] == c' '):
            m += 1
        return self._build(
            K_RESET, CODE_RESET, None, self._pci_by_uuid.get(uuid, ""), s, n, &h.st, None,
            truncated, uuid, None, "", None,
            _text(s, m, n), None, None, None, None, EMPTY, "", None, None, "", None, "",
            healthy, EMPTY,
        )

    cdef object _fallen_record(self, const uchar *s, Py_ssize_t n, Py_ssize_t at, bint truncated):
        cdef bytes raw = b"\n".join(self._pending_lines)
        device = self._pending_device or _device_id(s, 0, n)
        message = _text(s, at, n)
        return self._build(
            K_FALLEN, CODE_FALLEN, None, self._pending_pci, <const uchar *>PyBytes_AS_STRING(raw),
            PyBytes_GET_SIZE(raw), NULL, self._pending_time, self._pending_truncated or truncated, "", None,
            "", None, message, None, None, None, None, EMPTY, "", None, None, "", None, device, False,
            EMPTY,
        )

    # ---- event assembly ----
    cdef str _pci(self, Pci *p):
        key = (p.domain << 32) | (<unsigned long long>_lower(p.bus0) << 24) | (<unsigned long long>_lower(p.bus1) << 16) \
            | (<unsigned long long>_lower(p.dev0) << 8) | _lower(p.dev1)
        found = self._pcis.get(key)
        if found is None:
            found = _pci_text(p)
            if len(self._pcis) < MEMO_LIMIT:
                self._pcis[key] = found
        return found

    cdef object _classification(self, str kind, object xid, str error_code, str recovery_action,
                                object recovery_code, str severity, bint healthy):
        # memo of catalog.classify(); the common case (a plain XID) is keyed by its code alone
        if kind is K_XID and not recovery_action and recovery_code is None and not severity:
            found = self._by_code.get(error_code)
            if found is None:
                found = self._classify(
                    xid, kind=kind, error_code=error_code, recovery_action="", recovery_code=None,
                    severity="", healthy=False,
                )
                if len(self._by_code) < MEMO_LIMIT:
                    self._by_code[error_code] = found
            return found
        key = (kind, xid, error_code, recovery_action, recovery_code, severity, healthy)
        found = self._classes.get(key)
        if found is None:
            found = self._classify(
                xid, kind=kind, error_code=error_code or None, recovery_action=recovery_action,
                recovery_code=recovery_code, severity=severity, healthy=healthy,
            )
            if len(self._classes) < MEMO_LIMIT:
                self._classes[key] = found
        return found

    cdef object _build(self, str kind, str error_code, object xid, str pci, const uchar *s,
                       Py_ssize_t n, Stamp *st, tuple time, bint truncated, str gpu_uuid,
                       object pid, str process, object channel, str message, object gpu_i,
                       object gpu_ci, object location, object link, tuple registers,
                       str recovery_action, object recovery_code, object nvlink5, str severity,
                       object switch, str device_id, bint healthy, tuple warns):
        # s[0:n] is the record; its time stamp is `st` (the header's) unless `time` is given
        cdef tuple warnings
        if time is None:
            if st.clock == NONE:
                ts = None
                clock = ""
                time_text = ""
            else:
                ts = st.value
                clock = CLOCKS[st.clock]
                time_text = _usec_text(st.usec) if st.kmsg else _text(s, st.a, st.b)
        else:
            ts, clock, time_text = time
        if not gpu_uuid and pci and kind is not K_RESET:
            gpu_uuid = self._uuid_by_pci.get(pci, "")
        warnings = (W_TRUNCATED,) + warns if truncated else warns
        classification = self._classification(kind, xid, error_code, recovery_action, recovery_code,
                                              severity, healthy)
        raw = _text(s, 0, n)
        healthy_obj = True if healthy else False
        # every item exists before the tuple does (see namedtuple.h)
        ev = nvs_tuple_alloc(XidEvent, N_EVENT)
        _put(ev, 0, kind)
        _put(ev, 1, error_code)
        _put(ev, 2, xid)
        _put(ev, 3, pci)
        _put(ev, 4, gpu_uuid)
        _put(ev, 5, ts)
        _put(ev, 6, clock)
        _put(ev, 7, time_text)
        _put(ev, 8, pid)
        _put(ev, 9, process)
        _put(ev, 10, channel)
        _put(ev, 11, message)
        _put(ev, 12, gpu_i)
        _put(ev, 13, gpu_ci)
        _put(ev, 14, location)
        _put(ev, 15, link)
        _put(ev, 16, registers)
        _put(ev, 17, recovery_action)
        _put(ev, 18, recovery_code)
        _put(ev, 19, nvlink5)
        _put(ev, 20, severity)
        _put(ev, 21, switch)
        _put(ev, 22, device_id)
        _put(ev, 23, healthy_obj)
        _put(ev, 24, warnings)
        _put(ev, 25, classification)
        _put(ev, 26, raw)
        nvs_untrack(ev)
        return ev


def decode_line(line, *, catalog=None, pci_to_uuid=None):
    """Decode one record (see nvsentinel._xid_py.decode_line)."""
    decoder = Decoder(catalog, pci_to_uuid)
    events = decoder.feed(line)
    events += decoder.finish()
    return events[0] if events else None
