"""The one order-book engine for every exchange: snapshots, updates, sequence checks, crossed books.

`BookSync` applies `BookMessage`s to an `OrderBook`, appends the `book_updates` rows of every
message it accepts, and tells the caller when the book needs a fresh snapshot. It never does I/O:
the collector turns a `NEED_RESYNC` into the exchange's own resync request.
"""

from __future__ import annotations

import heapq
from enum import Enum

from recorder.model import BookMessage

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
        b, a = self.best_bid(), self.best_ask()
        return b is not None and a is not None and b >= a

    def top(self, n: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """Best `n` levels per side, best first."""
        return heapq.nlargest(n, self.bids.items()), heapq.nsmallest(n, self.asks.items())


class Outcome(Enum):
    APPLIED = "applied"  # rows were appended
    SNAPSHOT = "snapshot"  # a snapshot replaced the book (rows appended)
    STALE = "stale"  # seq <= local (e.g. BitMart spot heartbeat): dropped, nothing to write
    WAITING = "waiting"  # no valid book yet: dropped until the next snapshot
    GAP = "gap"  # seq jumped: book invalid, resync needed
    CROSSED = "crossed"  # applying left best bid >= best ask: book invalid, resync needed


NEED_RESYNC = (Outcome.GAP, Outcome.CROSSED)


class BookSync:
    """Sequence validation for one symbol's incremental book.

    Rules (BitMart spot/futures): a snapshot replaces the book; `seq <= local` is dropped;
    `local + 1` applies; anything else is a gap. With `stale_is_gap` (Peatio), a sequence that
    does not advance by exactly one is always a gap. Rows of every accepted message go to `rows`
    as (ts, recv_ts, seq, is_snapshot, side, price, amount), the `book_updates` column order.
    """

    __slots__ = (
        "book",
        "rows",
        "seq",
        "valid",
        "stale_is_gap",
        "last_ts",
        "last_recv",
        "expected",
        "snapshots",
        "gaps",
    )

    def __init__(self, rows: list[tuple], stale_is_gap: bool = False) -> None:
        self.book = OrderBook()
        self.rows = rows
        self.seq: int | None = None
        self.valid = False
        self.stale_is_gap = stale_is_gap
        self.last_ts = 0
        self.last_recv = 0
        self.expected: int | None = None  # what the failing message should have carried
        self.snapshots = 0
        self.gaps = 0  # sequence gaps and crossed books seen

    def on_message(self, msg: BookMessage, recv_ts: int) -> Outcome:
        if msg.is_snapshot:
            self._snapshot(msg, recv_ts)
            return Outcome.SNAPSHOT
        if not self.valid:
            return Outcome.WAITING
        seq = msg.seq
        if seq is not None and self.seq is not None:
            if seq <= self.seq and not self.stale_is_gap:
                return Outcome.STALE
            if seq != self.seq + 1:
                self.expected = self.seq + 1
                self.valid = False
                self.gaps += 1
                return Outcome.GAP
        self.book.apply(msg.bids, msg.asks)
        self.seq = seq
        self._emit(msg, recv_ts, False)
        if self.book.crossed():
            self.valid = False
            self.gaps += 1
            return Outcome.CROSSED
        return Outcome.APPLIED

    def invalidate(self) -> None:
        """The stream broke (disconnect, unsubscribe): wait for a new snapshot."""
        self.valid = False

    def _snapshot(self, msg: BookMessage, recv_ts: int) -> None:
        self.snapshots += 1
        self.book.clear()
        self.book.apply(msg.bids, msg.asks)
        self.seq = msg.seq
        self.valid = not self.book.crossed()
        self._emit(msg, recv_ts, True)

    def _emit(self, msg: BookMessage, recv_ts: int, snap: bool) -> None:
        ts, seq, rows = msg.ts, msg.seq, self.rows
        self.last_ts, self.last_recv = ts, recv_ts
        for p, q in msg.bids:
            rows.append((ts, recv_ts, seq, snap, "bid", p, q))
        for p, q in msg.asks:
            rows.append((ts, recv_ts, seq, snap, "ask", p, q))
