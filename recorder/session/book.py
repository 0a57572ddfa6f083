"""The one order-book engine for every venue: snapshots, updates, sequence checks, crossed books.

`BookSync` applies `BookMessage`s to an `OrderBook`, appends the `book_updates` rows of every
message it accepts, and tells the caller when the book needs a fresh snapshot. The venue's
`SequencePolicy` decides what a message whose seq is not local + 1 means; the engine asks it only
then, so the hot path pays nothing for it. It never does I/O: the dispatcher turns a `NEED_RESYNC`
into a `Resync` intent, and the venue into its own resync messages.

These classes are the engine's definition and its pure-Python build; where the C build of the same
classes (`recorder/_engine.pyx`) is built and current, `OrderBook` and `BookSync` are that build's
(`recorder.native`; the tests run both and compare them).
"""

from __future__ import annotations

import heapq

from recorder import native
from recorder.model import BookMessage
from recorder.session.outcome import (  # the outcomes live there, shared with the C build
    _BY_VERDICT,
    APPLIED,
    MALFORMED,
    SNAPSHOT,
    STALE,
    WAITING,
    Outcome,
    StrictIncrement,
)
from recorder.storage.bookrows import EMPTY_BOOK, ROW_ERRORS, BookRows
from recorder.venues.contract import SequencePolicy, Verdict

_UNKNOWN = None  # cached best price must be recomputed


class OrderBook:
    """Price -> absolute amount per side, with lazily cached best prices."""

    __slots__ = ("bids", "asks", "_best_bid", "_best_ask")

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self._best_bid: float | None = _UNKNOWN
        self._best_ask: float | None = _UNKNOWN

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()
        self._best_bid = self._best_ask = _UNKNOWN

    def apply(self, bids: list[tuple[float, float]], asks: list[tuple[float, float]]) -> None:
        best = self._best_bid
        side = self.bids
        for p, q in bids:
            if q:
                side[p] = q
                if best is not None and p > best:
                    best = p
            elif side.pop(p, None) is not None and p == best:
                best = _UNKNOWN
        self._best_bid = best
        best = self._best_ask
        side = self.asks
        for p, q in asks:
            if q:
                side[p] = q
                if best is not None and p < best:
                    best = p
            elif side.pop(p, None) is not None and p == best:
                best = _UNKNOWN
        self._best_ask = best

    def best_bid(self) -> float | None:
        if self._best_bid is None and self.bids:
            self._best_bid = max(self.bids)
        return self._best_bid if self.bids else None

    def best_ask(self) -> float | None:
        if self._best_ask is None and self.asks:
            self._best_ask = min(self.asks)
        return self._best_ask if self.asks else None

    def crossed(self) -> bool:
        bids, asks = self.bids, self.asks
        if not bids or not asks:
            return False
        b = self._best_bid  # best_bid() and best_ask(), inlined: this runs once a message
        if b is None:
            b = self._best_bid = max(bids)
        a = self._best_ask
        if a is None:
            a = self._best_ask = min(asks)
        return b >= a

    def top(self, n: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """Best `n` levels per side, best first."""
        return heapq.nlargest(n, self.bids.items()), heapq.nsmallest(n, self.asks.items())


class BookSync:
    """Sequence validation for one symbol's incremental book.

    A snapshot replaces the book; `local + 1` applies (an empty update too: it only advances the
    sequence); anything else is the venue policy's call (drop, gap, out of order, restart). Rows
    of every accepted message go to `rows` as (ts, recv_ts, seq, is_snapshot, side, price, amount),
    the `book_updates` column order.
    """

    __slots__ = (
        "book",
        "rows",
        "seq",
        "valid",
        "policy",
        "last_ts",
        "expected",
        "snapshots",
        "gaps",
    )

    def __init__(self, rows: BookRows, policy: SequencePolicy | None = None) -> None:
        self.book = OrderBook()
        self.rows = rows
        self.seq: int | None = None
        self.valid = False
        self.policy: SequencePolicy = policy if policy is not None else StrictIncrement()
        self.last_ts = 0
        self.expected: int | None = None  # what the failing message should have carried
        self.snapshots = 0
        self.gaps = 0  # sequence gaps and crossed books seen

    def on_message(self, msg: BookMessage, recv_ts: int) -> Outcome:
        if msg.is_snapshot:
            return self._snapshot(msg, recv_ts)
        if not self.valid:
            return WAITING
        seq = msg.seq
        if seq is not None and self.seq is not None and seq != self.seq + 1:
            verdict = self.policy.check(self.seq, msg)
            if verdict is Verdict.DROP:
                return STALE
            self.valid = False
            if verdict is Verdict.GAP:
                self.expected = self.seq + 1
                self.gaps += 1
                return Outcome.GAP
            return _BY_VERDICT[verdict]
        book = self.book
        book.apply(msg.bids, msg.asks)
        self.seq = seq
        self.last_ts = ts = msg.ts
        try:
            self.rows.add(ts, recv_ts, seq, False, msg.bids, msg.asks)  # BookUpdateRows, packed
        except ROW_ERRORS:
            self.valid = False
            return MALFORMED
        if book.crossed():
            self.valid = False
            self.gaps += 1
            return Outcome.CROSSED
        return APPLIED

    def invalidate(self) -> None:
        """The stream broke (disconnect, unsubscribe): wait for a new snapshot."""
        self.valid = False

    def _snapshot(self, msg: BookMessage, recv_ts: int) -> Outcome:
        self.snapshots += 1
        self.book.clear()
        bids, asks = msg.bids, msg.asks
        self.book.apply(bids, asks)
        self.seq = msg.seq
        self.last_ts = msg.ts
        if not bids and not asks:  # an empty book is stored too: one row that removes nothing
            bids = EMPTY_BOOK
        try:
            self.rows.add(msg.ts, recv_ts, msg.seq, True, bids, asks)
        except ROW_ERRORS:
            self.valid = False
            return MALFORMED
        self.valid = not self.book.crossed()
        return SNAPSHOT


# -- the compiled build ---------------------------------------------------------------------------

PureOrderBook, PureBookSync = OrderBook, BookSync  # this file's classes (the pure-Python build)
if native.ENGINE is not None:  # the C build of the same classes (recorder/_engine.pyx)
    OrderBook, BookSync = native.ENGINE.OrderBook, native.ENGINE.BookSync  # type: ignore[misc,assignment]
