# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""BitMart spot's push reader in C: the bytes of a plain market-data push straight to its records.

`bitmart_spot.parse` is the definition and the fallback; this is the C build of its common case,
adopted like the engine's (`recorder.native`: built, and built from this very source). It reads
exactly one layout, the venue's (bitmart.md §2.1, §2.3): `{"data":[...],"table":"..."}` with the
item keys in BitMart's sorted order, JSON whitespace anywhere between tokens, levels and prices as
plain decimal strings, ASCII strings without escapes, integers of at most 18 digits. Anything
else (a key order, an escape, an exponent, a negative or leading-zero number string, a missing
time, an ack, a pong) goes to the Python, which alone decides what it means; so for every payload
this gives the Python's records (tests/venues/test_bitmart_spot_native.py compares the two on the
simulator's tape, on cut and changed pushes, on odd input and on hypothesis' pushes).

Why: the Python way (msgspec structs, whose union's tag comes last, so msgspec skips `data` to find
it and reads it again, then the Python that turns them into records) costs ~15.1k instructions a
push, this ~5.4k; ~16 % of a frame's work in the pipeline (README, "Hot path, eighth pass").

`decode` is `bitmart_spot.decode`'s first step (ISA-L's inflate of a small binary frame) without the
Python function around it; everything else, its errors included, is that Python's.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_Append
from cpython.unicode cimport PyUnicode_DecodeASCII
from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp

from recorder.model import BookMessage, TradeBatch

cdef extern from "Python.h":
    # overflow_exception NULL: past the largest double gives inf, as float() does (None would be raised)
    double PyOS_string_to_double(const char* s, char** endptr, PyObject* overflow_exception) except? -1.0
    void* PyUnicode_DATA(object o)  # an ASCII str's bytes (the only kind `_symbol` stores)

cdef extern from *:
    """
    #ifndef RECORDER_SOURCE_SHA256
    #define RECORDER_SOURCE_SHA256 ""
    #endif
    """
    const char* RECORDER_SOURCE_SHA256

# sha256 of this file when it was compiled (setup.py): `recorder.native` adopts the build only when
# it matches the .pyx beside it
SOURCE_SHA256 = RECORDER_SOURCE_SHA256.decode()

cdef double[23] _POW10
cdef int _i
_POW10[0] = 1.0
for _i in range(1, 23):
    _POW10[_i] = _POW10[_i - 1] * 10.0  # exact: 10^22 is the largest power of ten a double holds exactly

cdef uint64_t _EXACT = (<uint64_t>1) << 53  # integers up to here are doubles exactly
cdef int64_t _MS_MAX = 9_000_000_000_000_000 // 1000  # ms * 1000 stays an int64

cdef object _BUY = "buy", _SELL = "sell"
cdef object _BookMessage = BookMessage, _TradeBatch = TradeBatch  # C globals: no dict lookup a call
cdef object _fallback = None  # bitmart_spot.parse, the definition
cdef object _decode_fallback = None  # bitmart_spot.decode, the definition
cdef object _inflate = None, _inflate_errors = None  # its first step on a small frame (ISA-L's), and its errors
cdef object _wbits = None  # that step's window bits (raw deflate)
cdef Py_ssize_t _small_frame = 0  # frames below this size take that step


cdef struct Cur:
    const unsigned char* p
    const unsigned char* end


cdef inline void _ws(Cur* c) noexcept nogil:
    while c.p < c.end and (c.p[0] == 32 or c.p[0] == 10 or c.p[0] == 13 or c.p[0] == 9):
        c.p += 1


cdef inline bint _lit(Cur* c, const char* s, Py_ssize_t n) noexcept nogil:
    """The token `s` (after any whitespace)."""
    _ws(c)
    if c.end - c.p < n or memcmp(c.p, s, n) != 0:
        return False
    c.p += n
    return True


cdef inline bint _key(Cur* c, const char* s, Py_ssize_t n) noexcept nogil:
    """`s` (a quoted key) and its colon; else the cursor stays where it was, so that the next key
    tried starts there (`"asks""ms_t":…` is no trade)."""
    cdef const unsigned char* at = c.p
    if _lit(c, s, n) and _lit(c, b":", 1):
        return True
    c.p = at
    return False


cdef inline bint _digit(unsigned char ch) noexcept nogil:
    return 48 <= ch <= 57


cdef inline bint _int(Cur* c, int64_t* out) noexcept nogil:
    """A JSON integer of at most 18 digits (no fraction, no exponent: those go to the Python)."""
    cdef int64_t v = 0
    cdef int n = 0
    cdef bint neg = False
    _ws(c)
    if c.p < c.end and c.p[0] == 45:  # -
        neg = True
        c.p += 1
    if c.p >= c.end or not _digit(c.p[0]):
        return False
    if c.p[0] == 48:  # 0: JSON allows no digit after a leading zero
        c.p += 1
    else:
        while c.p < c.end and _digit(c.p[0]):
            if n == 18:
                return False
            v = v * 10 + (c.p[0] - 48)
            n += 1
            c.p += 1
    if c.p < c.end and (_digit(c.p[0]) or c.p[0] == 46 or c.p[0] == 101 or c.p[0] == 69):  # digit . e E
        return False
    out[0] = -v if neg else v
    return True


cdef inline int _number(Cur* c, double* out) except -1:
    """A price or amount: a string holding a plain decimal `digits[.digits]`, no sign, no zero
    followed by a digit ("0.5" yes, "05" no), as float() reads it (correctly rounded). 1: read; 0:
    another form (the Python decides)."""
    cdef const unsigned char* start
    cdef uint64_t m = 0
    cdef int digits = 0, frac = 0
    cdef char* end
    if not _lit(c, b'"', 1):
        return 0
    start = c.p
    if c.p >= c.end or not _digit(c.p[0]):
        return 0
    if c.p[0] == 48 and c.p + 1 < c.end and _digit(c.p[1]):
        return 0  # "00012": msgspec refuses it, float() reads it
    while c.p < c.end and _digit(c.p[0]):
        if digits < 19:
            m = m * 10 + (c.p[0] - 48)
        digits += 1
        c.p += 1
    if c.p < c.end and c.p[0] == 46:  # .
        c.p += 1
        if c.p >= c.end or not _digit(c.p[0]):
            return 0
        while c.p < c.end and _digit(c.p[0]):
            if digits < 19:
                m = m * 10 + (c.p[0] - 48)
            digits += 1
            frac += 1
            c.p += 1
    if c.p >= c.end or c.p[0] != 34:  # the closing quote, nothing else
        return 0
    if digits <= 19 and m <= _EXACT and frac <= 22:  # (frac <= digits: the last test guards the table)
        out[0] = <double>m / _POW10[frac]  # both exact, so one correctly rounded division
    else:
        out[0] = PyOS_string_to_double(<const char*>start, &end, NULL)  # float()'s own reading
        if <const unsigned char*>end != c.p:
            return 0
    c.p += 1
    return 1


cdef inline Py_ssize_t _span(Cur* c) noexcept nogil:
    """A string of printable ASCII without escapes: its length, its first byte at `c.p - 1 - length`
    (the cursor is past the closing quote); -1: another form."""
    cdef const unsigned char* start
    if not _lit(c, b'"', 1):
        return -1
    start = c.p
    while c.p < c.end and 32 <= c.p[0] <= 126 and c.p[0] != 34 and c.p[0] != 92:
        c.p += 1
    if c.p >= c.end or c.p[0] != 34:
        return -1
    c.p += 1
    return c.p - 1 - start


cdef list _SYMBOLS = [None] * 4096  # the symbols' str objects, by a hash of their bytes (32 KB: few
# collisions at the ~1,500 markets of a whole venue)


cdef inline object _symbol(Cur* c):
    """A symbol string (as `_span`) as a str, the same object each time; or None."""
    cdef Py_ssize_t n = _span(c)
    cdef const unsigned char* s
    cdef unsigned int h = 0
    cdef Py_ssize_t i
    if n < 0:
        return None
    s = c.p - 1 - n
    for i in range(n):
        h = h * 31 + s[i]
    h &= 4095
    cached = _SYMBOLS[h]
    if cached is not None and len(<str>cached) == n and memcmp(<const char*>PyUnicode_DATA(cached), s, n) == 0:
        return cached
    out = PyUnicode_DecodeASCII(<const char*>s, n, NULL)
    _SYMBOLS[h] = out
    return out


cdef object _levels(Cur* c):
    """`[["price","amount"],...]` as a list of (float, float), or None."""
    cdef double p, q
    out = []
    if not _lit(c, b"[", 1):
        return None
    _ws(c)
    if c.p < c.end and c.p[0] == 93:  # ]
        c.p += 1
        return out
    while True:
        if not _lit(c, b"[", 1) or not _number(c, &p) or not _lit(c, b",", 1) or not _number(c, &q) \
                or not _lit(c, b"]", 1):
            return None
        PyList_Append(out, (p, q))
        _ws(c)
        if c.p < c.end and c.p[0] == 44:  # ,
            c.p += 1
            continue
        if c.p < c.end and c.p[0] == 93:
            c.p += 1
            return out
        return None


cdef object _book_item(Cur* c):
    """The rest of `{"asks":…,"bids":…,"ms_t":…,"symbol":…,"type":…,"version":…}` after `"asks":`."""
    cdef int64_t ms, version
    cdef Py_ssize_t n
    cdef bint snapshot
    asks = _levels(c)
    if asks is None or not _lit(c, b",", 1) or not _key(c, b'"bids"', 6):
        return None
    bids = _levels(c)
    if bids is None or not _lit(c, b",", 1) or not _key(c, b'"ms_t"', 6) or not _int(c, &ms) \
            or not _lit(c, b",", 1) or not _key(c, b'"symbol"', 8):
        return None
    symbol = _symbol(c)
    if symbol is None or not _lit(c, b",", 1) or not _key(c, b'"type"', 6):
        return None
    n = _span(c)
    snapshot = n == 8 and memcmp(c.p - 9, b"snapshot", 8) == 0
    if n < 0 or not _lit(c, b",", 1) or not _key(c, b'"version"', 9) or not _int(c, &version) \
            or not _lit(c, b"}", 1):
        return None
    if ms > _MS_MAX or ms < -_MS_MAX:
        return None
    return _BookMessage(symbol, version, snapshot, ms * 1000, bids, asks)


cdef bint _trade_item(Cur* c, dict by_symbol) except -1:
    """The rest of `{"ms_t":…,"price":…[,"s_t":…],"side":…,"size":…,"symbol":…}` after `"ms_t":`,
    added to its symbol's batch. False: another form."""
    cdef int64_t ms, s_t
    cdef double price, size
    cdef Py_ssize_t n
    if not _int(c, &ms) or not _lit(c, b",", 1) or not _key(c, b'"price"', 7) or not _number(c, &price) \
            or not _lit(c, b",", 1):
        return False
    if _key(c, b'"s_t"', 5):  # the time in seconds as well: ms_t wins, as in the Python
        if not _int(c, &s_t) or not _lit(c, b",", 1):
            return False
    if not _key(c, b'"side"', 6):
        return False
    n = _span(c)
    if n == 3 and memcmp(c.p - 4, b"buy", 3) == 0:
        side = _BUY
    elif n == 4 and memcmp(c.p - 5, b"sell", 4) == 0:
        side = _SELL
    else:
        return False
    if not _lit(c, b",", 1) or not _key(c, b'"size"', 6) or not _number(c, &size) \
            or not _lit(c, b",", 1) or not _key(c, b'"symbol"', 8):
        return False
    symbol = _symbol(c)
    if symbol is None or not _lit(c, b"}", 1):
        return False
    if ms > _MS_MAX or ms < -_MS_MAX:
        return False
    batch = by_symbol.get(symbol)
    if batch is None:
        batch = by_symbol[symbol] = _TradeBatch(symbol, [])
    PyList_Append(batch.trades, (ms * 1000, None, side, price, size))
    return True


def read(raw):
    """The records of a plain push in BitMart's layout, or None (anything else: the Python decides)."""
    cdef Cur c
    cdef int kind = 0  # 1 book, 2 trades
    if type(raw) is not bytes:
        return None
    c.p = <const unsigned char*>PyBytes_AS_STRING(raw)
    c.end = c.p + PyBytes_GET_SIZE(raw)
    if not _lit(&c, b"{", 1) or not _key(&c, b'"data"', 6) or not _lit(&c, b"[", 1):
        return None
    books = by_symbol = None
    while True:
        if not _lit(&c, b"{", 1):
            return None
        if kind != 2 and _key(&c, b'"asks"', 6):
            kind = 1
            m = _book_item(&c)
            if m is None:
                return None
            if books is None:
                books = [m]
            else:
                PyList_Append(books, m)
        elif kind != 1 and _key(&c, b'"ms_t"', 6):
            kind = 2
            if by_symbol is None:
                by_symbol = {}
            if not _trade_item(&c, by_symbol):
                return None
        else:
            return None
        if _lit(&c, b",", 1):
            continue
        if _lit(&c, b"]", 1):
            break
        return None
    if not _lit(&c, b",", 1) or not _key(&c, b'"table"', 7):
        return None
    if kind == 1:
        if not _lit(&c, b'"spot/depth/increase100"', 24):
            return None
    elif not _lit(&c, b'"spot/trade"', 12):
        return None
    if not _lit(&c, b"}", 1):
        return None
    _ws(&c)
    if c.p != c.end:
        return None
    return books if kind == 1 else list(by_symbol.values())


def set_fallback(parse, decode, inflate, wbits, inflate_errors, small_frame):
    """The Python definitions: `parse` (below) hands what `read` does not take to `parse`, and
    `decode` (below) to `decode` whatever is not a bytes frame shorter than `small_frame` that
    `inflate(frame, wbits)` (the Python decode's own first step, its names passed here so that the
    rule has one source) reads without one of `inflate_errors`."""
    global _fallback, _decode_fallback, _inflate, _wbits, _inflate_errors, _small_frame
    _fallback, _decode_fallback = parse, decode
    _inflate, _wbits, _inflate_errors, _small_frame = inflate, wbits, inflate_errors, small_frame


def decode(frame):
    """`bitmart_spot.decode` without its Python function around the common case (~0.6-0.8k
    instructions a frame): a small binary frame (every real push) takes the Python's first step,
    here; anything else, an error of that step included, is the Python's, which then does that step
    again and decides."""
    if type(frame) is bytes and PyBytes_GET_SIZE(frame) < _small_frame:
        try:
            return _inflate(frame, _wbits)
        except _inflate_errors:
            pass
    return _decode_fallback(frame)


def parse(raw):
    """`bitmart_spot.parse`: `read`, else the Python."""
    records = read(raw)
    if records is None:
        return _fallback(raw)
    return records
