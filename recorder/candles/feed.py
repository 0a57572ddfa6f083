"""The live candles feed: history from the exchange's klines, then candles from the live trade stream,
kept as a pandas DataFrame and offered as an async stream of updates.

    async with CandlesFeed(EXCHANGE, "BTC-USDT", "1m") as feed:  # any venue with a trade stream
        print(feed.candles.tail())            # history (exchange klines) + live candles
        async for update in feed:             # CandleUpdate(candle, reason); update.closed
            ...

The candle rules (exchange-time buckets, closing, flat candles, `complete`, the backfill/live seam,
late trades) are those of `recorder.candles.live`; this module only wires them to a `Collector`
(which reconnects by itself, with backoff) and to the exchange's kline REST endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import aiohttp

from recorder import venues
from recorder.candles.backfill import fetch_klines, windows
from recorder.candles.intervals import EPOCH, INTERVALS
from recorder.candles.live import Candle, CandleUpdate, LiveCandles, LiveStats
from recorder.collector import Collector, Options, now_us
from recorder.coverage import transition
from recorder.errors import RecorderError
from recorder.instruments import normalize
from recorder.model import TRADES
from recorder.transport import SendLimiter, new_session
from recorder.venues.contract import Instrument

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("recorder")

REPAIR_DELAY = 3.0  # s after a bucket's end + grace before asking the exchange for its final candle
REPAIR_RETRY = 5.0  # s between repair attempts that left buckets unresolved
_END = object()


def _utc(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


class CandlesFeed:
    """Live OHLCV candles of one symbol at one interval (`1s 1m 5m 15m 1h 4h 1d`).

    On `start()` it connects to the trade stream, then (with `history`) fills the window of
    `max_candles` buckets that ends with the current one from the exchange's klines (the buckets the
    exchange has closed); from then on trades update the current candle. `grace` seconds after a bucket's end (exchange time, read against the local clock) the
    bucket closes even without a later trade. With `repair`, a closed candle that is incomplete
    (the first, partial one, or one overlapping a disconnect) and a bucket missed during a
    disconnect are replaced by the exchange's own candle a few seconds after they close.
    `1s` has no exchange klines: no history, no repair.

    `clock` (seconds since the epoch) is the wall clock used to close buckets and to time the
    recording events; tests pass the simulator's clock.
    """

    def __init__(
        self,
        exchange: str,
        symbol: str,
        interval: str = "1m",
        max_candles: int = 500,
        ws_url: str | None = None,
        rest_url: str | None = None,
        grace: float = 2.0,
        history: bool = True,
        *,
        repair: bool = True,
        clock: Callable[[], float] = time.time,
        queue_size: int = 10_000,
        start_timeout: float = 10.0,
    ) -> None:
        if interval not in INTERVALS:
            raise ValueError(f"unknown interval {interval!r}; known: {', '.join(INTERVALS)}")
        if max_candles < 1:
            raise ValueError("max_candles must be at least 1")
        if grace < 0:
            raise ValueError("grace must not be negative")
        self.exchange = venues.normalize(exchange)
        self.symbol = normalize(symbol)
        self.interval = interval
        self.max_candles = max_candles
        self.ws_url, self.rest_url = ws_url, rest_url
        self.grace = grace
        self.history, self.repair = history, repair
        self.clock = clock
        self.queue_size = queue_size
        self.start_timeout = start_timeout
        self.engine = LiveCandles(INTERVALS[interval], max_candles, int(grace * 1e6))
        self.klines = venues.venue(self.exchange).klines  # unknown exchange: RecorderError here
        # the exchange serves klines of this interval
        self.has_klines = self.klines is not None and interval in self.klines.intervals
        self.dropped_updates = 0  # updates a slow `async for` consumer never saw (oldest dropped)
        self.backfilled = 0
        self._collector: Collector | None = None
        self._inst: Instrument | None = None
        self._session: aiohttp.ClientSession | None = None
        self._limiter = SendLimiter(*(self.klines.rate_limit if self.klines is not None else (1, 1.0)))
        self._run: asyncio.Task | None = None
        self._clock_task: asyncio.Task | None = None
        self._repairing: asyncio.Task | None = None
        self._next_repair = 0.0
        self._queues: set[asyncio.Queue] = set()
        self._live = asyncio.Event()
        self._started = self._stopped = False

    # ---- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> CandlesFeed:
        """Connect, subscribe, load history; returns once the feed is live (or `start_timeout` passed).

        Bad input (unknown exchange or symbol, unreachable endpoint) raises `RecorderError`.
        """
        if self._started:
            raise RuntimeError("CandlesFeed.start() called twice")
        self._started = True
        options = Options(
            data_dir=None,
            channels=(TRADES,),
            raw=False,
            ws_url=self.ws_url,
            rest_url=self.rest_url,
            flush_interval=1.0,  # nothing is written; this only bounds the discarded buffer
        )
        try:
            collector = Collector(self.exchange, [self.symbol], options)
            await collector.prepare()
            self._collector = collector
            stream = collector.streams[self.symbol]
            self._inst = stream.inst
            stream.trade_listeners.append(self._on_trades)
            stream.event_listeners.append(self._on_event)
            self.engine.begin(self._now())
            self._session = new_session()
            self._run = asyncio.create_task(collector.run())
            self._run.add_done_callback(self._on_collector_done)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._live.wait(), self.start_timeout)
            if self.history and self.has_klines:
                await self._backfill()
        except BaseException:
            await self.stop()
            raise
        self._clock_task = asyncio.create_task(self._clock_loop())
        return self

    async def stop(self) -> None:
        """Disconnect and end every `async for` over the feed. The candles stay readable."""
        if self._stopped:
            return
        self._stopped = True
        helpers = [t for t in (self._clock_task, self._repairing) if t is not None]
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if self._collector is not None:
            self._collector.stop()
        if self._run is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._run, 10)
        if self._session is not None:
            await self._session.close()
        for q in self._queues:
            self._put(q, _END)

    async def __aenter__(self) -> CandlesFeed:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- what users read ----------------------------------------------------------------------------

    @property
    def candles(self) -> pd.DataFrame:
        """The last `max_candles` candles indexed by `open_time` (UTC), oldest first: open high low close
        volume quote_volume trades vwap buy_volume complete closed source ("exchange" | "live")."""
        return self.engine.frame()

    @property
    def current(self) -> Candle | None:
        """The candle of the bucket still open, once it has a trade."""
        return self.engine.current()

    @property
    def stats(self) -> LiveStats:
        return self.engine.stats

    @property
    def live(self) -> bool:
        """The trade stream is subscribed right now."""
        return self._live.is_set()

    @property
    def coverage(self) -> list[tuple[datetime, datetime | None]]:
        """When the trade stream was subscribed (local clock), within the kept window: [start, end);
        None: still live. A disconnect, error or gap ends a span, a hung socket's at its last frame;
        candles overlapping a hole are incomplete."""
        return [(_utc(s), None if e is None else _utc(e)) for s, e in self.engine.spans if s is not None]

    @property
    def reconnects(self) -> int:
        return sum(c.reconnects for c in self._collector.connections) if self._collector else 0

    def __aiter__(self) -> AsyncIterator[CandleUpdate]:
        return self.updates()

    async def updates(self) -> AsyncIterator[CandleUpdate]:
        """Every candle change from now on, until the feed stops. A consumer that falls more than
        `queue_size` updates behind loses the oldest ones (counted in `dropped_updates`)."""
        if self._stopped:
            return
        q: asyncio.Queue = asyncio.Queue(self.queue_size)
        self._queues.add(q)
        try:
            while (item := await q.get()) is not _END:
                yield item
        finally:
            self._queues.discard(q)

    # ---- inputs from the collector (called synchronously as frames are processed) ----------------

    # A bug here must not take the connection down with it: it is logged, and the feed goes on.

    def _on_trades(self, _stream: object, rows: list[tuple]) -> None:
        try:
            self._publish(self.engine.on_trades(rows))
        except Exception:
            log.exception("candles feed %s %s: trades not applied", self.exchange, self.symbol)

    def _on_event(self, _stream: object, row: tuple) -> None:
        ts, _recv, channel, event, detail, cause = row
        if channel != TRADES:
            return
        what = transition(channel, event, cause, detail)
        if what == "start":
            self._live.set()
        elif what == "end":
            self._live.clear()
        try:  # the event's own time on the feed's clock (the one `tick` reads): about its delivery,
            # but a `stale stream` verdict is stamped back at the last frame, seconds earlier
            t = self._now() - max(0, now_us() - ts)
            self._publish(self.engine.on_event(event, t, cause, detail))
        except Exception:
            log.exception("candles feed %s %s: event not applied", self.exchange, self.symbol)

    def _on_collector_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "candles feed %s %s: collector stopped: %r", self.exchange, self.symbol, task.exception()
            )

    # ---- time, history and repair -------------------------------------------------------------------

    def _now(self) -> int:
        return int(self.clock() * 1_000_000)

    async def _clock_loop(self) -> None:
        period = min(0.5, INTERVALS[self.interval] / 4e6)
        while True:
            await asyncio.sleep(period)
            try:
                self._on_clock(self._now())
            except Exception:
                log.exception("candles feed %s %s: clock tick failed", self.exchange, self.symbol)

    def _on_clock(self, now: int) -> None:
        self._publish(self.engine.tick(now))
        if not (self.repair and self.has_klines) or time.monotonic() < self._next_repair:
            return
        if self._repairing is None or self._repairing.done():
            due = self.engine.repair_due(now, int(REPAIR_DELAY * 1e6))
            if due:
                self._repairing = asyncio.create_task(self._repair(due))

    async def _backfill(self) -> None:
        """The candles the exchange has closed (their end + grace has passed) in the window of
        `max_candles` buckets that ends with the current one."""
        now = self._now()
        hi = self.engine.bucket(now - self.engine.grace)
        rows = await self._fetch(self.engine.bucket(now) - (self.max_candles - 1) * self.engine.width, hi)
        self.backfilled = len(rows)
        self._publish(self.engine.add_exchange(rows, "backfill"))

    async def _repair(self, due: list[int]) -> None:
        for b in due:
            self.engine.repair_tries[b] = self.engine.repair_tries.get(b, 0) + 1
        wanted = set(due)
        try:
            rows = await self._fetch(due[0], due[-1] + self.engine.width)
        except (RecorderError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning(
                "candles feed %s %s: cannot fetch klines to repair: %s", self.exchange, self.symbol, exc
            )
            rows = []
        self._publish(self.engine.add_exchange([r for r in rows if r[0] in wanted], "repair"))
        if wanted - {r[0] for r in rows}:  # the exchange had no candle (yet) for some: not so soon again
            self._next_repair = time.monotonic() + REPAIR_RETRY

    async def _fetch(self, lo_us: int, hi_us: int) -> list[tuple]:
        """Exchange candles (open_time_us, o, h, l, c, volume, quote_volume) with open time in [lo, hi)."""
        assert self._session is not None and self._collector is not None
        assert self.klines is not None and self._inst is not None
        step_s = INTERVALS[self.interval] // 1_000_000
        out: list[tuple] = []
        for a, z in windows(lo_us // 1_000_000, hi_us // 1_000_000, step_s, self.klines.page_limit):
            await self._limiter.acquire()
            rows = await fetch_klines(
                self._session, self.exchange, self._collector.rest_url, self._inst, self.interval, a, z
            )
            out += [(r[3], *r[4:10]) for r in rows]
        return out

    # ---- output ---------------------------------------------------------------------------------------

    def _publish(self, updates: list[CandleUpdate]) -> None:
        for q in self._queues:
            for u in updates:
                self._put(q, u)

    def _put(self, q: asyncio.Queue, item: object) -> None:
        if q.full():
            q.get_nowait()
            self.dropped_updates += 1
        q.put_nowait(item)
