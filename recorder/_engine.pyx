# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The hot path as C types: the same classes and steps as the Python, fewer µs a message.

`session/book.py` (OrderBook, BookSync), `session/dispatcher.py` (`_Routing`: frame -> route -> book)
and `storage/rawlog.py` (`_Records.frame`) are the definition and the pure-Python fallback; this
module is their compiled build, adopted when it is built and matches this source (`recorder.native`).
Every rule here mirrors a line of those; the tests run both builds and compare them
(tests/session/test_engine_build.py), so the two cannot drift unseen.

What C buys over CPython 3.11 here: C fields instead of slot lookups, C calls between the book, the
sync and the row buffer, and the `book_updates` rows packed straight into the buffer's bytearray
(the same 41-byte records as `BookRows.add`, without a `struct.pack` call a row).
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING
from cpython.dict cimport PyDict_Next
from cpython.float cimport PyFloat_CheckExact
from cpython.ref cimport PyObject
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_AsDouble
from cpython.long cimport PyLong_AsLong, PyLong_AsLongLong, PyLong_Check
from cpython.number cimport PyNumber_Index
from libc.float cimport DBL_MAX
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from recorder.session.outcome import (
    APPLIED,
    MALFORMED,
    SNAPSHOT,
    STALE,
    WAITING,
    Outcome,
    StrictIncrement,
    _BY_VERDICT,
)
from recorder.model import Ack, BookMessage, DerivativeTicker, HeldTopics, ProtocolError, TradeBatch
from recorder.storage.bookrows import EMPTY_BOOK, NULL_SEQ, ROW_ERRORS, BookRows, _ROW
from recorder.venues.contract import Verdict

import heapq

cdef extern from *:
    """
    #ifndef RECORDER_SOURCE_SHA256
    #define RECORDER_SOURCE_SHA256 ""
    #endif
    """
    const char* RECORDER_SOURCE_SHA256

# sha256 of this file when it was compiled (set by setup.py): `recorder.native` adopts this build
# only when it matches the .pyx beside it, so a build older than its source never runs
SOURCE_SHA256 = RECORDER_SOURCE_SHA256.decode()

cdef object _GAP = Outcome.GAP
cdef object _CROSSED = Outcome.CROSSED
cdef object _DROP = Verdict.DROP
cdef object _VGAP = Verdict.GAP
cdef object _APPLIED = APPLIED, _SNAPSHOT = SNAPSHOT, _STALE = STALE, _WAITING = WAITING
cdef object _MALFORMED = MALFORMED, _ROW_ERRORS = ROW_ERRORS, _BOOKROWS = BookRows
cdef object _BookMessage = BookMessage, _TradeBatch = TradeBatch, _DerivativeTicker = DerivativeTicker
cdef object _Ack = Ack, _HeldTopics = HeldTopics, _ProtocolError = ProtocolError
cdef int64_t _NULL_SEQ = NULL_SEQ
cdef Py_ssize_t _SIZE = _ROW.size

cdef packed struct Row:  # struct "=qqqBdd": native byte order, no padding (bookrows._ROW)
    int64_t ts
    int64_t recv
    int64_t seq
    uint8_t flags
    double price
    double amount

assert sizeof(Row) == _ROW.size


cdef inline int64_t _q(object x) except? -1:
    """A 'q' field as struct.pack takes it: an int or an __index__ object; OverflowError past 64
    bits, TypeError for anything else (both in ROW_ERRORS)."""
    if not PyLong_Check(x):
        x = PyNumber_Index(x)
    # PyLong_AsLong where a C long is 64 bits: on CPython 3.11 PyLong_AsLongLong reads any int past
    # 2^30 (every microsecond time) through _PyLong_AsByteArray, ~4x the work
    if sizeof(long) == sizeof(int64_t):
        return PyLong_AsLong(x)
    return PyLong_AsLongLong(x)


cdef inline double _d(object x) except? -1.0:
    if type(x) is float:
        return PyFloat_AS_DOUBLE(x)
    return PyFloat_AsDouble(x)


cdef Py_ssize_t _put(bytearray buf, Row* row, object levels, Py_ssize_t at) except -1:
    """One side's levels as rows at `at` (the buffer is already long enough); the next offset."""
    for p, q in levels:
        row.price = _d(p)
        row.amount = _d(q)
        if not (0.0 <= row.price <= DBL_MAX and 0.0 <= row.amount <= DBL_MAX):  # NaN fails too
            raise ValueError(f"book level ({p!r}, {q!r}): not a price and amount")
        memcpy(PyByteArray_AS_STRING(buf) + at, row, _SIZE)
        at += _SIZE
    return at


cdef int _pack(bytearray buf, object ts, object recv, object seq, bint snap, object bids, object asks) except -1:
    """BookRows.add on its bytearray: the message's bids, then its asks; all or nothing."""
    cdef Row row
    cdef Py_ssize_t k = PyByteArray_GET_SIZE(buf)
    cdef Py_ssize_t n = len(bids) + len(asks)
    cdef Py_ssize_t at = k
    if n == 0:
        return 0  # no row: nothing converted (struct.pack is never called either)
    row.ts = _q(ts)
    row.recv = _q(recv)
    row.seq = _NULL_SEQ if seq is None else _q(seq)
    PyByteArray_Resize(buf, k + n * _SIZE)
    try:
        row.flags = 2 if snap else 0
        at = _put(buf, &row, bids, at)
        row.flags |= 1
        _put(buf, &row, asks, at)
    except BaseException:
        PyByteArray_Resize(buf, k)
        raise
    return 0


cdef inline bint _better(object p, object best, bint bid) except -1:
    """p > best for bids, p < best for asks (C doubles when both are floats)."""
    if type(p) is float and type(best) is float:
        if bid:
            return PyFloat_AS_DOUBLE(p) > PyFloat_AS_DOUBLE(best)
        return PyFloat_AS_DOUBLE(p) < PyFloat_AS_DOUBLE(best)
    return p > best if bid else p < best


cdef object _apply_side(dict side, object levels, object best, bint bid):
    """OrderBook.apply for one side: the side's new cached best (None: unknown)."""
    for p, q in levels:
        if q:
            side[p] = q
            if best is not None and _better(p, best, bid):
                best = p
        elif side.pop(p, None) is not None and p == best:
            best = None
    return best


cdef class OrderBook:
    """Price -> absolute amount per side, with lazily cached best prices (book.OrderBook)."""

    cdef public dict bids
    cdef public dict asks
    cdef public object _best_bid
    cdef public object _best_ask

    def __init__(self):
        self.bids = {}
        self.asks = {}
        self._best_bid = None
        self._best_ask = None

    cpdef clear(self):
        self.bids.clear()
        self.asks.clear()
        self._best_bid = self._best_ask = None

    cpdef apply(self, object bids, object asks):
        self._best_bid = _apply_side(self.bids, bids, self._best_bid, True)
        self._best_ask = _apply_side(self.asks, asks, self._best_ask, False)

    def best_bid(self):
        if self._best_bid is None and self.bids:
            self._best_bid = max(self.bids)
        return self._best_bid if self.bids else None

    def best_ask(self):
        if self._best_ask is None and self.asks:
            self._best_ask = min(self.asks)
        return self._best_ask if self.asks else None

    cpdef bint crossed(self) except -1:
        if not self.bids or not self.asks:
            return False
        b = self._best_bid
        if b is None:
            b = self._best_bid = max(self.bids)
        a = self._best_ask
        if a is None:
            a = self._best_ask = min(self.asks)
        if type(a) is float and type(b) is float:
            return PyFloat_AS_DOUBLE(b) >= PyFloat_AS_DOUBLE(a)
        return b >= a

    def top(self, n):
        """Best `n` levels per side, best first: heapq.nlargest/nsmallest of the items, as in
        book.py, found in one pass over each side on C doubles (the book_snapshots cadence calls
        this for every book every second: 10x faster at a few hundred levels). A side with a key
        that is not a plain float, or is NaN, takes heapq's way, whose order is then the answer."""
        bids = _best(self.bids, n, True)
        if bids is None:
            bids = heapq.nlargest(n, self.bids.items())
        asks = _best(self.asks, n, False)
        if asks is None:
            asks = heapq.nsmallest(n, self.asks.items())
        return bids, asks


cdef object _best(dict side, Py_ssize_t n, bint high):
    """The `n` best (price, amount) items of a side, best first; None when a key is not a plain
    float or is NaN. Keeps the best so far sorted in C arrays (insertion: n is small)."""
    cdef Py_ssize_t pos = 0, k = 0, i
    cdef PyObject* key
    cdef PyObject* value
    cdef double p
    if n > len(side):
        n = len(side)
    if n <= 0:
        return []
    cdef double* px = <double*> malloc(n * sizeof(double))
    cdef PyObject** keys = <PyObject**> malloc(n * sizeof(PyObject*))
    cdef PyObject** vals = <PyObject**> malloc(n * sizeof(PyObject*))
    if px == NULL or keys == NULL or vals == NULL:
        free(px)
        free(keys)
        free(vals)
        raise MemoryError()
    try:
        while PyDict_Next(side, &pos, &key, &value):  # borrowed: no Python code runs in this loop
            if not PyFloat_CheckExact(<object>key):
                return None
            p = PyFloat_AS_DOUBLE(<object>key)
            if p != p:
                return None
            if k == n:
                if (p <= px[n - 1]) if high else (p >= px[n - 1]):
                    continue
                i = n - 1
            else:
                i = k
                k += 1
            while i > 0 and ((px[i - 1] < p) if high else (px[i - 1] > p)):
                px[i] = px[i - 1]
                keys[i] = keys[i - 1]
                vals[i] = vals[i - 1]
                i -= 1
            px[i] = p
            keys[i] = key
            vals[i] = value
        return [(<object>keys[i], <object>vals[i]) for i in range(k)]
    finally:
        free(px)
        free(keys)
        free(vals)


cdef class BookSync:
    """Sequence validation for one symbol's incremental book (book.BookSync)."""

    cdef public OrderBook book
    cdef public object rows
    cdef public object seq
    cdef public bint valid
    cdef public object policy
    cdef public object last_ts
    cdef public object expected
    cdef public object snapshots
    cdef public object gaps

    def __init__(self, rows, policy=None):
        self.book = OrderBook()
        self.rows = rows
        self.seq = None
        self.valid = False
        self.policy = policy if policy is not None else StrictIncrement()
        self.last_ts = 0
        self.expected = None
        self.snapshots = 0
        self.gaps = 0

    cdef int _add(self, object ts, object recv_ts, object seq, bint snap, object bids, object asks) except -1:
        rows = self.rows
        if type(rows) is _BOOKROWS:
            _pack(rows.buf, ts, recv_ts, seq, snap, bids, asks)
        else:
            rows.add(ts, recv_ts, seq, snap, bids, asks)
        return 0

    def on_message(self, msg, recv_ts):
        return self._on_message(msg, recv_ts)

    cdef object _on_message(self, object msg, object recv_ts):
        if msg.is_snapshot:
            return self._snapshot(msg, recv_ts)
        if not self.valid:
            return _WAITING
        seq = msg.seq
        local = self.seq
        if seq is not None and local is not None and seq != local + 1:
            verdict = self.policy.check(local, msg)
            if verdict is _DROP:
                return _STALE
            self.valid = False
            if verdict is _VGAP:
                self.expected = local + 1
                self.gaps += 1
                return _GAP
            return _BY_VERDICT[verdict]
        bids, asks = msg.bids, msg.asks
        book = self.book
        book.apply(bids, asks)
        self.seq = seq
        self.last_ts = ts = msg.ts
        try:
            self._add(ts, recv_ts, seq, False, bids, asks)
        except _ROW_ERRORS:
            self.valid = False
            return _MALFORMED
        if book.crossed():
            self.valid = False
            self.gaps += 1
            return _CROSSED
        return _APPLIED

    def invalidate(self):
        """The stream broke (disconnect, unsubscribe): wait for a new snapshot."""
        self.valid = False

    def _snapshot(self, msg, recv_ts):
        self.snapshots += 1
        self.book.clear()
        bids, asks = msg.bids, msg.asks
        self.book.apply(bids, asks)
        self.seq = msg.seq
        self.last_ts = msg.ts
        if not bids and not asks:  # an empty book is stored too: one row that removes nothing
            bids = EMPTY_BOOK
        try:
            self._add(msg.ts, recv_ts, msg.seq, True, bids, asks)
        except _ROW_ERRORS:
            self.valid = False
            return _MALFORMED
        self.valid = not self.book.crossed()
        return _SNAPSHOT


cdef class Routing:
    """dispatcher._Routing's C build: the per-frame path (frame -> decode -> raw log -> parse -> route
    -> book engine), step for step. `dispatcher.Dispatcher` is a Python class on this base: what a
    frame rarely needs (`_undecodable`, `_book_outcome`, `_on_ack`, `_on_held`, `_on_error`) is its
    Python, shared by both builds."""

    cdef public object rawlog
    cdef public dict book_by_wire
    cdef public dict trades_by_wire
    cdef public dict other
    cdef public object _decode
    cdef public object _decode_errors
    cdef public object _parse

    def frame(self, recv, frame):
        try:
            raw = self._decode(frame)
        except self._decode_errors as exc:
            self._undecodable(recv, frame, exc)
            return
        rawlog = self.rawlog
        if rawlog is not None:
            rawlog.frame(recv, raw)
        self._route(self._parse(raw), recv)

    def payload(self, recv, raw):
        self._route(self._parse(raw), recv)

    def route(self, records, recv):
        self._route(records, recv)

    def _on_book(self, m, recv):
        self._book(m, recv)

    cdef int _route(self, object records, object recv) except -1:
        for m in records:
            t = type(m)
            if t is _BookMessage:
                self._book(m, recv)
            elif t is _TradeBatch:
                s = self.trades_by_wire.get(m.symbol)
                if s is not None:
                    s.on_trades(m, recv)
            elif t is _DerivativeTicker:
                s = self.other.get((m.channel, m.symbol))
                if s is not None:
                    s.on_ticker(m, recv)
            elif t is _Ack:
                self._on_ack(m, recv)
            elif t is _HeldTopics:
                self._on_held(m, recv)
            elif t is _ProtocolError:
                self._on_error(m, recv)
        return 0

    cdef int _book(self, object m, object recv) except -1:
        topic = self.book_by_wire.get(m.symbol)
        if topic is None:
            return 0
        if m.ts is None:  # the venue gives no event time: the receive time stands in
            m.ts = recv
        b = topic.stream.book
        if type(b) is BookSync:
            was_valid = (<BookSync>b).valid
            outcome = (<BookSync>b)._on_message(m, recv)
        else:
            was_valid = b.valid
            outcome = b.on_message(m, recv)
        if outcome is _APPLIED or outcome is _WAITING or outcome is _STALE:
            return 0
        self._book_outcome(topic, m, recv, outcome, was_valid)
        return 0


# -- the raw log's record buffer (storage/rawlog.py, `_Records`) ----------------------------------

cdef int64_t _FRAME = 1  # rawlog.FRAME
RECORD_HEADER_BYTES = 13  # rawlog._REC: "<qBI"


cdef inline void _le(char* out, uint64_t v, int n) noexcept:
    cdef int i
    for i in range(n):
        out[i] = <char>(v & 0xFF)
        v >>= 8


cdef class Records:
    """rawlog._Records's C build: one record `<recv_us:int64><kind:uint8><length:uint32><payload>`,
    little-endian, appended to the buffer. `RawLog` is a Python class on this base."""

    cdef public bytearray _buf
    cdef public object records
    cdef public object _buffered_records
    cdef public bint _need_header

    def frame(self, recv_us, payload, kind=_FRAME):
        """Buffer one record (no I/O here: a full disk must not break the receive path)."""
        cdef int64_t t
        cdef int64_t k
        cdef Py_ssize_t n, at
        cdef char* base
        if self._need_header:
            self._start_part(recv_us)
        if type(payload) is str:
            payload = (<str>payload).encode()
        self.records += 1
        self._buffered_records += 1
        t = _q(recv_us)
        k = _q(kind)
        n = len(payload)
        if k < 0 or k > 255 or n > 0xFFFFFFFF:
            raise OverflowError("raw record kind or length out of range")
        buf = self._buf
        at = PyByteArray_GET_SIZE(buf)
        direct = type(payload) is bytes  # else (bytearray, memoryview) appended by the buffer protocol
        PyByteArray_Resize(buf, at + 13 + (n if direct else 0))
        base = PyByteArray_AS_STRING(buf) + at
        _le(base, <uint64_t>t, 8)
        base[8] = <char>k
        _le(base + 9, <uint64_t>n, 4)
        if direct:
            memcpy(base + 13, PyBytes_AS_STRING(payload), n)
        else:
            buf += payload
