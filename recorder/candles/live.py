"""Live candles as a state machine, without I/O: trades, recording events, clock ticks and exchange
klines go in, candle updates come out. `recorder.candles.feed.CandlesFeed` drives it from a live
collector; tests can drive it directly.

The rules (the README states them for users):

- Trades are bucketed on their exchange time (`ts`), never on arrival time. open/close are the
  first/last trade by exchange time, ties in arrival order — the same definition as `build_candles`.
- A bucket closes when a trade of a later bucket arrives, or when the wall clock passes the
  bucket's end plus `grace`. Closing by time invents no trade.
- A bucket without trades that the feed watched (at least partly) becomes a flat candle at the
  previous close with zero volume and `trades == 0`, as the exchange's klines and `build --fill`
  have them; a bucket the feed never watched (before it started, or inside a disconnect) has no
  row unless the exchange's kline fills it (see repair).
- `complete` is true when the trade stream was subscribed and uninterrupted over the whole bucket
  (the coverage rules of the `events` table, `recorder.coverage`: from a `subscribed` ack to the
  next `disconnect`, `connect`, `gap` or `stop`; an `error` splits it; a `stale stream` error, a hung
  socket's verdict, ends it back at the last frame received, its own time). The first live bucket is
  therefore incomplete unless the feed subscribed exactly at its start. A break re-emits the
  candles since its time that were complete, now incomplete, with reason `gap` (the buckets a
  silent socket let close as flat candles among them).
- Exchange klines (`source == "exchange"`) are the exchange's own closed candles: complete, but
  without a trade count or buy volume. A bucket has exactly one source: an exchange candle
  replaces a live candle that is incomplete (or absent), never a complete one, and live trades of
  a bucket held by an exchange candle are not added to it (the exchange already counted them).
  That is the whole backfill/live seam rule: no trade is counted twice.
- A late trade (its bucket already closed) is applied to its live candle, which is re-emitted
  with reason `late`; older than the kept window it is dropped and counted.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from recorder.candles.intervals import EPOCH
from recorder.coverage import transition
from recorder.model import TRADES

if TYPE_CHECKING:  # pandas is imported on first use: `import recorder` stays quick for the CLI
    import pandas as pd

LIVE = "live"
EXCHANGE = "exchange"
REPAIR_TRIES = 3
COLUMNS = [
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trades",
    "vwap",
    "buy_volume",
    "complete",
    "closed",
    "source",
]


@dataclass(frozen=True, slots=True)
class Candle:
    """One candle as the feed shows it. `trades` and `buy_volume` are None for exchange candles."""

    open_time: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float | None  # None: an exchange candle without it (Peatio)
    trades: int | None
    vwap: float | None
    buy_volume: float | None
    complete: bool  # the feed saw every trade of the bucket (or the exchange's own candle)
    closed: bool  # final: its bucket has ended (late trades may still amend a live candle)
    source: str  # "live" (built from the trade stream) or "exchange" (the exchange's kline)


@dataclass(frozen=True, slots=True)
class CandleUpdate:
    """A candle that changed, and why: trade | close | late | gap | backfill | repair."""

    candle: Candle
    reason: str

    @property
    def closed(self) -> bool:
        return self.candle.closed


@dataclass(slots=True)
class _Bar:
    b: int  # open time, epoch us
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    quote_volume: float | None = 0.0
    buy_volume: float | None = 0.0
    trades: int | None = 0
    first_ts: int = 0  # exchange time of the open trade (live candles)
    last_ts: int = 0  # exchange time of the close trade
    source: str = LIVE
    complete: bool = False
    closed: bool = False

    def add(self, ts: int, side: str, price: float, amount: float) -> None:
        if not self.trades:  # a flat candle gets its first trade: it starts from that trade
            self.open = self.high = self.low = self.close = price
            self.first_ts = self.last_ts = ts
            self.trades = self.volume = self.quote_volume = self.buy_volume = 0
        if ts < self.first_ts:  # strictly earlier: a tie keeps the trade that arrived first
            self.open, self.first_ts = price, ts
        if ts >= self.last_ts:  # a tie goes to the trade that arrived last
            self.close, self.last_ts = price, ts
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        self.volume += amount
        self.quote_volume += price * amount
        if side == "buy":
            self.buy_volume += amount
        self.trades += 1

    def candle(self) -> Candle:
        # an exchange candle may have no quote volume (Peatio's klines carry none): then no vwap
        vwap = self.quote_volume / self.volume if self.volume > 0 and self.quote_volume is not None else None
        return Candle(
            EPOCH + timedelta(microseconds=self.b),
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.quote_volume,
            self.trades,
            vwap,
            self.buy_volume,
            self.complete,
            self.closed,
            self.source,
        )


@dataclass
class LiveStats:
    """Counters a user may want to watch (and the tests check)."""

    trades: int = 0  # live trades applied to candles
    late_applied: int = 0  # trades of an already closed bucket, applied to its live candle
    late_dropped: int = 0  # trades older than the kept window
    exchange_covered: int = 0  # live trades of a bucket held by an exchange candle (not added)
    repaired: int = 0  # incomplete or missing buckets replaced by the exchange's candle


@dataclass
class LiveCandles:
    """The last `max_candles` candles of one stream at one interval, `width` in microseconds."""

    width: int
    max_candles: int = 500
    grace: int = 2_000_000  # us after a bucket's end before the wall clock closes it
    bars: dict[int, _Bar] = field(default_factory=dict)
    keys: list[int] = field(default_factory=list)  # open times of `bars`, sorted
    open_from: int | None = None  # buckets at or after this are still open
    spans: list[list[int | None]] = field(default_factory=list)  # coverage [start, end or None]
    stats: LiveStats = field(default_factory=LiveStats)
    repair_tries: dict[int, int] = field(default_factory=dict)

    def bucket(self, t: int) -> int:
        return t // self.width * self.width

    def begin(self, now: int) -> None:
        """Buckets before `now`'s are history: live trades of them count as late."""
        if self.open_from is None:
            self.open_from = self.bucket(now)

    # ---- inputs ---------------------------------------------------------------------------------

    def on_trades(self, rows: Iterable[Sequence]) -> list[CandleUpdate]:
        """Trade rows (ts, recv_ts, trade_id, side, price, amount) in arrival order."""
        out: list[CandleUpdate] = []
        touched: dict[int, str] = {}
        for ts, _recv, _tid, side, price, amount in rows:
            b = ts // self.width * self.width
            if self.open_from is None:
                self.open_from = b
            bar = self.bars.get(b)
            if bar is not None and bar.source == EXCHANGE:
                self.stats.exchange_covered += 1
                continue
            if b >= self.open_from:
                if b > self.open_from:
                    out += self._close_until(b, touched)
                    bar = self.bars.get(b)
                reason = "trade"
            else:
                if bar is None and len(self.keys) >= self.max_candles and b < self.keys[0]:
                    self.stats.late_dropped += 1
                    continue
                self.stats.late_applied += 1
                reason = "late"
            if bar is None:
                bar = self._insert(_Bar(b, price, price, price, price, first_ts=ts, last_ts=ts))
                bar.closed = b < self.open_from
                bar.complete = self.covers(b)
            bar.add(ts, side, price, amount)
            self.stats.trades += 1
            touched.setdefault(b, reason)
        out += [CandleUpdate(self.bars[b].candle(), r) for b, r in touched.items() if b in self.bars]
        return out

    def on_event(self, event: str, t: int, cause: str | None = None, detail: str = "") -> list[CandleUpdate]:
        """A recording event of the trade stream at local time `t` (us), the event's own time: for a
        `stale stream` error that is the last frame received, seconds before the verdict. `cause` is
        its `events.cause` code (`detail` only matters without one: `recorder.coverage.transition`)."""
        last = self.spans[-1] if self.spans else None
        is_open = last is not None and last[1] is None
        what = transition(TRADES, event, cause, detail)
        if what == "start":
            if not is_open:
                self.spans.append([t, None])
            return []
        if what is None or not is_open:
            return []
        assert last is not None
        last[1] = max(t, last[0])
        if what == "split":  # an undecodable frame may have carried trades: a point gap
            self.spans.append([t + 1, None])
        return self._recheck(t)

    def tick(self, now: int) -> list[CandleUpdate]:
        """The wall clock: close every bucket whose end plus `grace` has passed."""
        if self.open_from is None:
            return []
        target = self.bucket(now - self.grace)
        return self._close_until(target, {}) if target > self.open_from else []

    def add_exchange(self, rows: Iterable[Sequence], reason: str = "backfill") -> list[CandleUpdate]:
        """Exchange candles (open_time_us, open, high, low, close, volume, quote_volume), closed ones only."""
        out: list[CandleUpdate] = []
        for b, o, h, low, c, v, qv in rows:
            old = self.bars.get(b)
            if old is not None and old.source == LIVE and old.complete:
                continue  # a complete live candle stays (`verify` compares the two)
            if old is None and len(self.keys) >= self.max_candles and b < self.keys[0]:
                continue
            bar = _Bar(b, o, h, low, c, v, qv, None, None, source=EXCHANGE, complete=True, closed=True)
            if old is None:
                self._insert(bar)
            else:
                self.bars[b] = bar
            if reason == "repair":
                self.stats.repaired += 1
            self.repair_tries.pop(b, None)
            out.append(CandleUpdate(bar.candle(), reason))
        return out

    # ---- queries --------------------------------------------------------------------------------

    def covers(self, b: int) -> bool:
        """The trade stream was subscribed over all of [b, b + width) (an open span counts so far)."""
        end = b + self.width
        return any(s <= b and (e is None or e >= end) for s, e in self.spans)

    def watched(self, b: int) -> bool:
        """The trade stream was subscribed during some part of [b, b + width)."""
        end = b + self.width
        return any(s < end and (e is None or e > b) for s, e in self.spans)

    def current(self) -> Candle | None:
        """The open candle (its bucket has not ended), if it has a trade."""
        bar = self.bars.get(self.open_from) if self.open_from is not None else None
        return bar.candle() if bar is not None and not bar.closed else None

    def repair_due(self, now: int, delay: int) -> list[int]:
        """Closed buckets in the kept window that the exchange's candle should replace: incomplete
        live candles and missing buckets, once their end plus grace plus `delay` has passed."""
        if self.open_from is None or not self.keys:
            return []
        last = min(self.open_from, self.bucket(now - self.grace - delay))
        first = max(self.keys[0], self.open_from - self.max_candles * self.width)
        due = []
        for b in range(first, last, self.width):
            bar = self.bars.get(b)
            if (bar is None or (bar.source == LIVE and not bar.complete)) and self.repair_tries.get(
                b, 0
            ) < REPAIR_TRIES:
                due.append(b)
        return due

    def frame(self) -> pd.DataFrame:
        """The kept candles, indexed by open time (UTC), oldest first."""
        import pandas as pd

        bars = [self.bars[b] for b in self.keys]
        vwap = [
            x.quote_volume / x.volume if x.volume > 0 and x.quote_volume is not None else float("nan")
            for x in bars
        ]
        df = pd.DataFrame(
            {
                "open": pd.Series([x.open for x in bars], dtype="float64"),
                "high": pd.Series([x.high for x in bars], dtype="float64"),
                "low": pd.Series([x.low for x in bars], dtype="float64"),
                "close": pd.Series([x.close for x in bars], dtype="float64"),
                "volume": pd.Series([x.volume for x in bars], dtype="float64"),
                "quote_volume": pd.Series([x.quote_volume for x in bars], dtype="float64"),
                "trades": pd.array([x.trades for x in bars], dtype="Int64"),
                "vwap": pd.Series(vwap, dtype="float64"),
                "buy_volume": pd.Series(
                    [float("nan") if x.buy_volume is None else x.buy_volume for x in bars], dtype="float64"
                ),
                "complete": pd.Series([x.complete for x in bars], dtype="bool"),
                "closed": pd.Series([x.closed for x in bars], dtype="bool"),
                "source": pd.Series([x.source for x in bars], dtype="object"),
            },
            columns=COLUMNS,
        )
        df.index = pd.DatetimeIndex(pd.to_datetime(self.keys, unit="us", utc=True), name="open_time")
        return df

    # ---- internals ------------------------------------------------------------------------------

    def _insert(self, bar: _Bar) -> _Bar:
        self.bars[bar.b] = bar
        bisect.insort(self.keys, bar.b)
        while len(self.keys) > self.max_candles:
            gone = self.keys.pop(0)
            del self.bars[gone]
            self.repair_tries.pop(gone, None)
        if self.spans and self.keys:  # coverage older than the kept window is of no use
            oldest = self.keys[0]
            self.spans[:] = [s for s in self.spans if s[1] is None or s[1] > oldest]
        return bar

    def _close_until(self, target: int, touched: dict[int, str]) -> list[CandleUpdate]:
        """Close every bucket in [open_from, target); watched empty ones become flat candles."""
        assert self.open_from is not None
        out: list[CandleUpdate] = []
        start = self.open_from
        bar = self.bars.get(start)
        if bar is not None and bar.source == LIVE and not bar.closed:
            bar.closed, bar.complete = True, self.covers(start)
            touched.pop(start, None)  # the close update carries the final state
            out.append(CandleUpdate(bar.candle(), "close"))
        # after a long sleep only the kept window can get flat candles
        for b in range(max(start, target - self.max_candles * self.width), target, self.width):
            if b not in self.bars and self.watched(b):
                prev = self._previous_close(b)
                if prev is not None:
                    flat = self._insert(_Bar(b, prev, prev, prev, prev, closed=True))
                    flat.complete = self.covers(b)
                    out.append(CandleUpdate(flat.candle(), "close"))
        self.open_from = target
        return out

    def _previous_close(self, b: int) -> float | None:
        i = bisect.bisect_left(self.keys, b)
        return self.bars[self.keys[i - 1]].close if i > 0 else None

    def _recheck(self, t: int) -> list[CandleUpdate]:
        """Live candles overlapping a coverage break at `t` turn incomplete."""
        out = []
        for b in reversed(self.keys):
            if b + self.width <= t:
                break
            bar = self.bars[b]
            if bar.source == LIVE and bar.complete and not self.covers(b):
                bar.complete = False
                out.append(CandleUpdate(bar.candle(), "gap"))
        return out
