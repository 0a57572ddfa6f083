"""The `book_updates` buffer as packed records: 41 bytes a row instead of ~260 as a tuple.

Book updates are most of what a recorder holds in memory between two flushes (a busy market writes
a row per price level changed). As tuples each row costs a 7-tuple, two floats and its share of
three ints, all tracked by the garbage collector; here a row is one `struct.pack` appended to a
bytearray, and a flush cuts the records into Arrow columns with numpy, without a per-row step.

It behaves as the list of `BookUpdateRow` tuples it replaces wherever the recorder reads a buffer:
`len`, indexing and slicing (tuples), iteration, `del b[:n]` (shedding), `b[:0] = rows` (rows put
back in front after a failed write) and `b[:] = rows` (replay's filter).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

# seq of a venue that gives none (stored as null); a real sequence number is never -2**63
NULL_SEQ = -(2**63)
_ASK, _SNAP = 1, 2  # bits of a row's flags
# One row: ts, recv_ts, seq, flags, price, amount; native byte order, no padding. One pack a row
# is the cheapest way CPython has to put mixed numbers into a buffer (an array per column costs
# an argument-parsing call per value).
_ROW = struct.Struct("=qqqBdd")
_DTYPE = np.dtype(
    [("ts", "=i8"), ("recv", "=i8"), ("seq", "=i8"), ("flags", "u1"), ("price", "=f8"), ("amount", "=f8")]
)
_SIZE = _ROW.size
_SIDES = np.frombuffer(b"bidask", dtype=np.uint8).reshape(2, 3)  # both sides are 3 bytes long
ROW_BYTES = _SIZE + 4  # + the bytearray's spare capacity
ROW_ERRORS = (struct.error, OverflowError, TypeError, ValueError)  # what `add` raises (adding nothing)
MAX_FINITE = sys.float_info.max  # a number past it is infinite (NaN compares with nothing)
# The levels a snapshot with no level at all is stored with: one bid at price 0 with amount 0, the
# removal of a level no book holds. Replaying `book_updates` by the contract's rule (a snapshot group
# resets the book) then empties the book; without a row the replay kept the levels from before.
EMPTY_BOOK = ((0.0, 0.0),)


class BookRows:
    __slots__ = ("buf",)

    def __init__(self, rows: Iterable[tuple] = ()) -> None:
        self.buf = bytearray()
        for r in rows:
            self.append(r)

    # -- the hot path ------------------------------------------------------------------------

    def add(self, ts: int, recv: int, seq: int | None, snap: bool, bids: list, asks: list) -> None:
        """The rows of one book message: its bids, then its asks. All or nothing: a value out of
        the columns' range (a time or sequence past 64 bits, a price that is no number) or a level
        no book has (a price or amount that is negative, NaN or infinite) raises one of ROW_ERRORS
        and adds no row."""
        buf, pack = self.buf, _ROW.pack
        if seq is None:
            seq = NULL_SEQ
        flag = _SNAP if snap else 0
        k = len(buf)
        try:
            for p, q in bids:
                buf += pack(ts, recv, seq, flag, p, q)
                if not (0.0 <= p <= MAX_FINITE and 0.0 <= q <= MAX_FINITE):
                    raise ValueError(f"book level ({p!r}, {q!r}): not a price and amount")
            flag |= _ASK
            for p, q in asks:
                buf += pack(ts, recv, seq, flag, p, q)
                if not (0.0 <= p <= MAX_FINITE and 0.0 <= q <= MAX_FINITE):
                    raise ValueError(f"book level ({p!r}, {q!r}): not a price and amount")
        except BaseException:
            del buf[k:]
            raise

    def append(self, row: tuple) -> None:
        """One row (ts, recv_ts, seq, is_snapshot, side, price, amount)."""
        ts, recv, seq, snap, side, price, amount = row
        if side not in ("bid", "ask"):
            raise ValueError(f"book side {side!r}")
        level = [(price, amount)]
        self.add(ts, recv, seq, bool(snap), level if side == "bid" else [], level if side == "ask" else [])

    # -- the list a buffer used to be ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.buf) // _SIZE

    def row(self, i: int) -> tuple:
        ts, recv, seq, f, p, q = _ROW.unpack_from(self.buf, i * _SIZE)
        return (ts, recv, None if seq == NULL_SEQ else seq, bool(f & _SNAP), "ask" if f & _ASK else "bid", p, q)

    def __getitem__(self, i: int | slice) -> tuple | list[tuple]:
        if isinstance(i, slice):
            return [self.row(k) for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("book row index out of range")
        return self.row(i)

    def __iter__(self) -> Iterator[tuple]:
        return (self.row(k) for k in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BookRows | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"BookRows({list(self)!r})"

    def __delitem__(self, i: slice) -> None:
        if not isinstance(i, slice) or i.step not in (None, 1) or i.start not in (None, 0):
            raise TypeError("only the oldest rows can be deleted (del rows[:n])")
        n = len(self) if i.stop is None else min(len(self), max(0, i.stop if i.stop >= 0 else len(self) + i.stop))
        del self.buf[: n * _SIZE]

    def __setitem__(self, i: slice, rows: Iterable[tuple]) -> None:
        """`b[:0] = rows` puts rows back in front; `b[:] = rows` replaces every row."""
        if not isinstance(i, slice) or i.step is not None or i.start is not None or i.stop not in (0, None):
            raise TypeError("only b[:0] = rows and b[:] = rows are supported")
        new = rows if isinstance(rows, BookRows) else BookRows(rows)
        if i.stop is None:
            self.buf[:] = new.buf
        else:
            self.buf[:0] = new.buf

    def extend(self, other: Iterable[tuple]) -> None:
        if isinstance(other, BookRows):
            self.buf += other.buf
        else:
            for r in other:
                self.append(r)

    def clear(self) -> None:
        del self.buf[:]

    def detach(self) -> BookRows:
        """Everything buffered, as a new BookRows; this one is empty afterwards (appenders keep it)."""
        out = BookRows()
        out.buf, self.buf = self.buf, bytearray()
        return out

    # -- to Arrow ----------------------------------------------------------------------------------

    def to_table(self, schema: pa.Schema) -> pa.Table:
        """The rows as `schema` (book_updates): each column a copy out of the records (numpy)."""
        n = len(self)
        rec = np.frombuffer(self.buf, dtype=_DTYPE, count=n)
        flags = rec["flags"]
        seq = rec["seq"].copy()
        nulls = seq == NULL_SEQ
        seq_valid = pa.py_buffer(np.packbits(~nulls, bitorder="little")) if nulls.any() else None
        offsets = np.arange(0, 3 * n + 1, 3, dtype=np.int32)
        side = _SIDES[flags & _ASK].tobytes()
        snap = np.packbits((flags & _SNAP) != 0, bitorder="little")
        types = [f.type for f in schema]
        columns = [
            pa.Array.from_buffers(types[0], n, [None, pa.py_buffer(rec["ts"].copy())]),
            pa.Array.from_buffers(types[1], n, [None, pa.py_buffer(rec["recv"].copy())]),
            pa.Array.from_buffers(types[2], n, [seq_valid, pa.py_buffer(seq)]),
            pa.Array.from_buffers(types[3], n, [None, pa.py_buffer(snap)]),
            pa.Array.from_buffers(types[4], n, [None, pa.py_buffer(offsets), pa.py_buffer(side)]),
            pa.Array.from_buffers(types[5], n, [None, pa.py_buffer(rec["price"].copy())]),
            pa.Array.from_buffers(types[6], n, [None, pa.py_buffer(rec["amount"].copy())]),
        ]
        del rec, flags  # views of the buffer: gone before it may be resized
        return pa.Table.from_arrays(columns, schema=schema)
