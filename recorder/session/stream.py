"""One symbol's state on one exchange: its validated book, trade de-duplication and row buffers."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable

from recorder.model import (
    DEFAULT_CAUSE,
    ERROR,
    TRADES,
    BookSnapshotRow,
    Cause,
    DerivativeTicker,
    DerivativeTickerRow,
    EventRow,
    TradeBatch,
)
from recorder.session.book import BookSync
from recorder.storage.bookrows import MAX_FINITE
from recorder.storage.sink import ParquetSink
from recorder.venues.contract import Instrument, SequencePolicy

RECENT_TRADE_IDS = 10_000  # trade ids remembered per stream to drop a venue's repeats


_MIN_TS, _MAX_TS = -(2**63), 2**63 - 1  # int64 microseconds


def now_us() -> int:
    return time.time_ns() // 1000


class Stream:
    """Per-symbol state: the validated book, trade de-duplication and row buffers."""

    def __init__(self, sink: ParquetSink, exchange: str, inst: Instrument, policy: SequencePolicy) -> None:
        self.inst = inst
        self.user, self.wire = inst.symbol, inst.wire
        self.sink, self.exchange = sink, exchange
        self.trades = sink.buffer("trades", exchange, inst.symbol)
        self.events = sink.buffer("events", exchange, inst.symbol)
        self.snapshots = sink.buffer("book_snapshots", exchange, inst.symbol)
        self.book = BookSync(sink.buffer("book_updates", exchange, inst.symbol), policy)
        self._ticker: list[tuple] | None = None  # derivative_ticker rows, made on first use
        # Venues without trade ids may repeat recent trades on resubscribe: remember the tail.
        self.recent_trades: deque[tuple] = deque(maxlen=2000)
        self.replay_guard: Counter[tuple] | None = None
        self.replay_guard_until = 0
        # Venues with trade ids: the last ids seen, so a trade sent again is dropped.
        self.recent_ids: set[str] = set()
        self.recent_id_order: deque[str] = deque()
        self.duplicates_dropped = 0
        self.event_counts: Counter[tuple[str, str]] = Counter()  # (channel, event): rows, for the metrics
        self.trade_count = 0
        # In-process consumers (the live candles feed): called with each batch of accepted trade
        # rows (ts, recv_ts, trade_id, side, price, amount) and each event row, after buffering.
        self.trade_listeners: list[Callable[[Stream, list[tuple]], None]] = []
        self.event_listeners: list[Callable[[Stream, tuple], None]] = []

    def event(self, channel: str, event: str, detail: str = "", ts: int | None = None, cause: str | None = None) -> None:
        t = ts if ts is not None else now_us()
        row = EventRow(t, t, channel, event, detail, cause if cause is not None else DEFAULT_CAUSE.get(event))
        self.events.append(row)
        self.event_counts[channel, event] += 1
        for fn in self.event_listeners:
            fn(self, row)

    def snapshot_row(self, depth: int, taken_at: int) -> None:
        """A `book_snapshots` row: the validated top-N as of the last applied message.

        `ts` is that message's exchange time; `recv_ts` is when the snapshot was taken.
        """
        sync = self.book
        if not sync.valid:
            return
        bids, asks = sync.book.top(depth)
        self.snapshots.append(BookSnapshotRow(sync.last_ts, taken_at, sync.seq, bids, asks))

    def on_trades(self, batch: TradeBatch, recv: int) -> None:
        rows, recent = self.trades, self.recent_trades
        start = len(rows)
        for ts, tid, side, price, amount in batch.trades:
            if not _MIN_TS <= ts <= _MAX_TS:  # no timestamp column holds it: said, never a broken flush
                self.event(TRADES, ERROR, f"trade with a time no column can hold (ts {ts}): not stored", recv, Cause.DECODE)
                continue
            if not (0.0 < price <= MAX_FINITE and 0.0 < amount <= MAX_FINITE):  # NaN fails too
                self.event(TRADES, ERROR, f"trade with a price or size that is not a positive number (price "
                           f"{price!r}, size {amount!r}, ts {ts}): not stored", recv, Cause.DECODE)
                continue
            if tid is None:
                key = (ts, side, price, amount)
                if self.replay_guard is not None and self._is_replayed(key, ts):
                    continue
                recent.append(key)
            elif self._seen_id(tid):
                continue
            rows.append((ts, recv, tid, side, price, amount))  # a TradeRow
            self.trade_count += 1
        if self.trade_listeners:
            accepted = rows[start:]
            for fn in self.trade_listeners:
                fn(self, accepted)

    def on_ticker(self, m: DerivativeTicker, recv: int) -> None:
        prices = (m.last_price, m.mark_price, m.index_price, m.open_interest)
        rates = (m.funding_rate, m.next_funding_rate)  # may be negative
        if not all(x is None or 0.0 <= x <= MAX_FINITE for x in prices) or not all(
            x is None or -MAX_FINITE <= x <= MAX_FINITE for x in rates
        ):
            self.event(m.channel, ERROR, f"{m.channel} push with a price, open interest or rate that is negative, "
                       f"NaN or infinite (last {m.last_price!r}, mark {m.mark_price!r}, index {m.index_price!r}, funding "
                       f"{m.funding_rate!r}, next {m.next_funding_rate!r}, open interest {m.open_interest!r}): "
                       "not stored", recv, Cause.DECODE)
            return
        if self._ticker is None:
            self._ticker = self.sink.buffer("derivative_ticker", self.exchange, self.user)
        self._ticker.append(
            DerivativeTickerRow(
                m.ts if m.ts is not None else recv,
                recv,
                m.last_price,
                m.mark_price,
                m.index_price,
                m.funding_rate,
                m.next_funding_rate,
                m.next_funding_time,
                m.open_interest,
            )
        )

    @property
    def buffers(self) -> tuple[list[tuple], ...]:
        """Every row buffer of this stream (trades first)."""
        extra = (self._ticker,) if self._ticker is not None else ()
        return (self.trades, self.book.rows, self.snapshots, self.events, *extra)

    def _seen_id(self, tid: str) -> bool:
        if tid in self.recent_ids:
            self.duplicates_dropped += 1
            return True
        self.recent_ids.add(tid)
        order = self.recent_id_order
        order.append(tid)
        if len(order) > RECENT_TRADE_IDS:
            self.recent_ids.discard(order.popleft())
        return False

    def _is_replayed(self, key: tuple, ts: int) -> bool:
        guard = self.replay_guard
        assert guard is not None
        if ts > self.replay_guard_until:
            self.replay_guard = None  # past everything seen before the reconnect
            return False
        if guard.get(key, 0) > 0:
            guard[key] -= 1
            self.duplicates_dropped += 1
            return True
        return False

    def arm_replay_guard(self) -> None:
        if self.recent_trades:
            self.replay_guard = Counter(self.recent_trades)
            self.replay_guard_until = max(k[0] for k in self.recent_trades)
