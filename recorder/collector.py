"""Wires transport + protocol adapter + book engine + sink for one exchange and a set of symbols.

One `Collector` owns the sink and one `Connection` task per group of topics (exchanges cap topics
per connection). A connection receives frames, hands them to the adapter, routes the decoded
messages to per-symbol `Stream`s, and carries out the resync requests the book engine asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import aiohttp

from recorder import exchanges
from recorder.book import NEED_RESYNC, BookSync, Outcome
from recorder.errors import RecorderError
from recorder.model import (
    BOOK,
    CHANNELS,
    CONNECT,
    DISCONNECT,
    ERROR,
    GAP,
    RESYNC,
    STOP,
    SUBSCRIBED,
    TRADES,
    Ack,
    BookMessage,
    Pong,
    ProtocolError,
    TradeBatch,
)
from recorder.storage.sink import ParquetSink, recover
from recorder.symbols import fetch_markets, resolve
from recorder.transport import SendLimiter, backoff_delay, new_session

log = logging.getLogger("recorder")


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Options:
    data_dir: Path = Path("data")
    channels: tuple[str, ...] = CHANNELS
    duration: float | None = None
    ws_url: str | None = None
    rest_url: str | None = None
    flush_interval: float = 60.0  # publish files at least this often (SQL sees data within it)
    max_buffered_rows: int = 1_000_000  # flush early past this many rows in memory
    snapshot_interval: float = 1.0  # book_snapshots cadence
    snapshot_depth: int = 20
    silence_timeout: float = 30.0  # no frame at all for this long: the socket is dead
    ack_timeout: float = 10.0  # resubscribe topics not acknowledged within this
    resync_timeout: float = 5.0  # re-request a snapshot not received within this


class Stream:
    """Per-symbol state: the validated book, trade de-duplication and row buffers."""

    def __init__(self, sink: ParquetSink, exchange: str, user: str, wire: str, stale_is_gap: bool) -> None:
        self.user, self.wire = user, wire
        self.trades = sink.buffer("trades", exchange, user)
        self.events = sink.buffer("events", exchange, user)
        self.snapshots = sink.buffer("book_snapshots", exchange, user)
        self.book = BookSync(sink.buffer("book_updates", exchange, user), stale_is_gap=stale_is_gap)
        self.resync_pending_since: float | None = None
        self.resync_tries = 0
        # Exchanges without trade ids may repeat recent trades on resubscribe: remember the tail.
        self.recent_trades: deque[tuple] = deque(maxlen=2000)
        self.replay_guard: Counter[tuple] | None = None
        self.replay_guard_until = 0
        self.duplicates_dropped = 0
        self.trade_count = 0

    def event(self, channel: str, event: str, detail: str = "", ts: int | None = None) -> None:
        t = ts if ts is not None else now_us()
        self.events.append((t, t, channel, event, detail))

    def snapshot_row(self, depth: int, recv_ts: int | None = None) -> None:
        sync = self.book
        if not sync.valid:
            return
        bids, asks = sync.book.top(depth)
        self.snapshots.append(
            (sync.last_ts or now_us(), recv_ts or sync.last_recv or now_us(), sync.seq, bids, asks)
        )

    def on_trades(self, batch: TradeBatch, recv: int) -> None:
        rows, recent = self.trades, self.recent_trades
        for ts, tid, side, price, amount in batch.trades:
            if tid is None:
                key = (ts, side, price, amount)
                if self.replay_guard is not None and self._is_replayed(key, ts):
                    continue
                recent.append(key)
            rows.append((ts, recv, tid, side, price, amount))
            self.trade_count += 1

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


@dataclass
class Topic:
    name: str
    channel: str
    stream: Stream
    acked: bool = False
    sent_at: float = 0.0


@dataclass
class Connection:
    """One websocket carrying up to the exchange's per-connection topic limit."""

    collector: Collector
    topics: list[Topic]
    index: int
    ws: aiohttp.ClientWebSocketResponse | None = None
    limiter: SendLimiter = field(init=False)
    by_topic: dict[str, Topic] = field(init=False)
    book_by_wire: dict[str, Stream] = field(init=False)
    trades_by_wire: dict[str, Stream] = field(init=False)
    last_recv: float = 0.0
    reconnects: int = 0
    frames: int = 0

    def __post_init__(self) -> None:
        ad = self.collector.adapter
        self.limiter = SendLimiter(*ad.SEND_BUDGET)
        self.by_topic = {t.name: t for t in self.topics}
        self.book_by_wire = {t.stream.wire: t.stream for t in self.topics if t.channel == BOOK}
        self.trades_by_wire = {t.stream.wire: t.stream for t in self.topics if t.channel == TRADES}

    async def send(self, text: str) -> None:
        await self.limiter.acquire()
        if self.ws is not None and not self.ws.closed:
            await self.ws.send_str(text)

    def each_topic_event(self, event: str, detail: str = "") -> None:
        t = now_us()
        for topic in self.topics:
            topic.stream.event(topic.channel, event, detail, t)

    async def run(self) -> None:
        c = self.collector
        attempt = 0
        while not c.stopping.is_set():
            try:
                await c.connect_limiter.acquire()
                async with c.session.ws_connect(
                    c.ws_url, autoping=True, heartbeat=None, max_msg_size=c.adapter.MAX_FRAME_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                ) as ws:
                    self.ws = ws
                    self.each_topic_event(CONNECT, c.ws_url)
                    await self._session(ws)
                    attempt = 0 if self.frames else attempt + 1
                    reason = f"closed by server (code {ws.close_code})"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
                attempt += 1
            finally:
                self.ws = None
            for topic in self.topics:
                topic.acked = False
                if topic.channel == BOOK:
                    topic.stream.book.invalidate()
                    topic.stream.resync_pending_since = None
                else:
                    topic.stream.arm_replay_guard()
            if c.stopping.is_set():
                break
            self.reconnects += 1
            self.each_topic_event(DISCONNECT, reason)
            log.warning("connection %d lost: %s; reconnecting", self.index, reason)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(c.stopping.wait(), backoff_delay(attempt))

    async def _session(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.frames = 0
        self.last_recv = time.monotonic()
        helpers = [asyncio.create_task(self._keepalive(ws))]
        try:
            await self._subscribe([t for t in self.topics])
            await self._receive(ws)
        finally:
            for h in helpers:
                h.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _subscribe(self, topics: list[Topic]) -> None:
        ad = self.collector.adapter
        now = time.monotonic()
        for t in topics:
            t.sent_at = now
        for msg in ad.subscribe_messages([t.name for t in topics]):
            await self.send(msg)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        parse = self.collector.adapter.parse_frame
        on_book, on_other = self._on_book, self._on_other
        trades_by_wire = self.trades_by_wire
        BINARY, TEXT = aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT
        async for frame in ws:
            recv = time.time_ns() // 1000
            self.last_recv = time.monotonic()
            self.frames += 1
            if frame.type is BINARY or frame.type is TEXT:
                for m in parse(frame.data):
                    if type(m) is BookMessage:
                        on_book(m, recv)
                    elif type(m) is TradeBatch:
                        s = trades_by_wire.get(m.symbol)
                        if s is not None:
                            s.on_trades(m, recv)
                    else:
                        on_other(m, recv)
            elif frame.type is aiohttp.WSMsgType.ERROR:
                raise aiohttp.ClientError(f"websocket error: {ws.exception()}")

    def _on_book(self, m: BookMessage, recv: int) -> None:
        s = self.book_by_wire.get(m.symbol)
        if s is None:
            return
        was_valid = s.book.valid
        outcome = s.book.on_message(m, recv)
        if outcome is Outcome.APPLIED or outcome is Outcome.STALE or outcome is Outcome.WAITING:
            return
        if outcome is Outcome.SNAPSHOT:
            s.resync_pending_since, s.resync_tries = None, 0
            if s.book.valid:
                why = "after gap" if not was_valid else "replaces valid book"
                s.event(BOOK, RESYNC, f"snapshot seq={m.seq} {why}", recv)
                s.snapshot_row(self.collector.options.snapshot_depth, recv)
            else:
                s.event(BOOK, ERROR, f"crossed snapshot seq={m.seq}", recv)
                self._request_resync(s)
        elif outcome in NEED_RESYNC:
            if outcome is Outcome.GAP:
                s.event(BOOK, GAP, f"expected seq {s.book.expected}, got {m.seq}", recv)
            else:
                b, a = s.book.book.best_bid(), s.book.book.best_ask()
                s.event(BOOK, ERROR, f"crossed book at seq {m.seq}: bid {b} >= ask {a}", recv)
            self._request_resync(s)

    def _request_resync(self, s: Stream) -> None:
        s.resync_pending_since = time.monotonic()
        s.resync_tries += 1
        t = self.collector.adapter.topic(BOOK, s.wire)
        self.collector.spawn(self.send(self.collector.adapter.snapshot_request(t)))

    def _on_other(self, m, recv: int) -> None:
        if isinstance(m, Ack):
            t = self.by_topic.get(m.topic)
            if t is not None and m.op == "subscribe" and not t.acked:
                t.acked = True
                t.stream.event(t.channel, SUBSCRIBED, m.topic, recv)
        elif isinstance(m, ProtocolError):
            self._on_error(m, recv)
        elif isinstance(m, Pong):
            pass

    def _on_error(self, m: ProtocolError, recv: int) -> None:
        detail = f"{m.code}: {m.message}" if m.code else m.message
        t = self.by_topic.get(m.topic) if m.topic else None
        targets = [t] if t else self.topics
        if m.code in ("decode", "parse"):
            # An undecodable frame may have carried any of our streams' data.
            for topic in targets:
                topic.stream.event(topic.channel, ERROR, detail, recv)
                if topic.channel == BOOK and topic.stream.book.valid:
                    topic.stream.book.invalidate()
                    self._request_resync(topic.stream)
        else:
            # Exchange errors carry no topic: unacked topics get resubscribed by the keepalive loop.
            for topic in targets:
                if not topic.acked:
                    topic.stream.event(topic.channel, ERROR, detail, recv)
        self.collector.errors += 1
        log.warning("connection %d: %s", self.index, detail)

    async def _keepalive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Text pings, the silence watchdog, and retries of unacked subscriptions and resyncs."""
        c, ad, opt = self.collector, self.collector.adapter, self.collector.options
        last_ping = time.monotonic()
        while not ws.closed:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if now - self.last_recv > opt.silence_timeout:
                self.each_topic_event(ERROR, f"no data for {opt.silence_timeout:.0f} s: reconnecting")
                await ws.close()
                return
            if now - last_ping >= ad.PING_INTERVAL:
                last_ping = now
                await self.send(ad.PING)
            stale = [t for t in self.topics if not t.acked and now - t.sent_at > opt.ack_timeout]
            if stale:
                await self._subscribe(stale)
            for t in self.topics:
                s = t.stream
                if t.channel == BOOK and s.resync_pending_since and now - s.resync_pending_since > opt.resync_timeout:
                    if s.resync_tries >= 3:
                        s.event(BOOK, ERROR, "no snapshot after 3 requests: reconnecting")
                        await ws.close()
                        return
                    self._request_resync(s)
            del c


class Collector:
    """Records `symbols` of `exchange` into `options.data_dir` until stopped."""

    def __init__(self, exchange: str, symbols: list[str], options: Options) -> None:
        self.exchange = exchange
        self.requested = symbols
        self.options = options
        self.adapter: ModuleType = exchanges.adapter(exchange)
        self.ws_url = options.ws_url or self.adapter.WS_URL
        self.rest_url = options.rest_url or self.adapter.REST_URL
        self.sink = ParquetSink(options.data_dir, on_error=self._on_write_error)
        self.stopping = asyncio.Event()
        self.connect_limiter = SendLimiter(*self.adapter.CONNECT_BUDGET)
        self.streams: dict[str, Stream] = {}
        self.connections: list[Connection] = []
        self.errors = 0
        self._tasks: set[asyncio.Task] = set()
        self.session: aiohttp.ClientSession
        self.write_errors: list[str] = []

    def spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_write_error(self, message: str) -> None:
        self.write_errors.append(message)
        log.error(message)

    async def prepare(self) -> None:
        """Validate everything that can be wrong before recording: data dir, symbols, endpoint."""
        check_writable(self.options.data_dir)
        recover(self.options.data_dir)
        self.session = new_session()
        try:
            markets = await fetch_markets(self.session, self.adapter, self.rest_url)
            mapping = resolve(self.requested, markets, self.exchange)
        except BaseException:
            await self.session.close()
            raise
        stale_is_gap = getattr(self.adapter, "STALE_IS_GAP", False)
        for user, wire in mapping.items():
            self.streams[user] = Stream(self.sink, self.exchange, user, wire, stale_is_gap)
        topics = [
            Topic(self.adapter.topic(ch, s.wire), ch, s)
            for s in self.streams.values()
            for ch in CHANNELS
            if ch in self.options.channels
        ]
        per = self.adapter.MAX_TOPICS_PER_CONNECTION
        self.connections = [
            Connection(self, topics[i : i + per], n) for n, i in enumerate(range(0, len(topics), per))
        ]

    async def run(self) -> None:
        """Record until `stop()` or the duration ends; always flushes what it has."""
        try:
            conn_tasks = [asyncio.create_task(c.run()) for c in self.connections]
            aux = [asyncio.create_task(self._snapshots()), asyncio.create_task(self._flusher())]
            try:
                if self.options.duration is not None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), self.options.duration)
                else:
                    await self.stopping.wait()
            finally:
                self.stopping.set()
                for t in conn_tasks + aux + list(self._tasks):
                    t.cancel()
                await asyncio.gather(*conn_tasks, *aux, *self._tasks, return_exceptions=True)
        finally:
            t = now_us()
            for s in self.streams.values():
                s.snapshot_row(self.options.snapshot_depth)
                for ch in self.options.channels:
                    s.event(ch, STOP, "clean stop", t)
            await asyncio.to_thread(self.sink.flush)
            await self.session.close()

    def stop(self) -> None:
        self.stopping.set()

    async def _snapshots(self) -> None:
        depth = self.options.snapshot_depth
        while True:
            await asyncio.sleep(self.options.snapshot_interval)
            if BOOK in self.options.channels:
                for s in self.streams.values():
                    s.snapshot_row(depth)

    async def _flusher(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if now - last >= self.options.flush_interval or self.sink.pending_rows() > self.options.max_buffered_rows:
                last = now
                taken = self.sink.take()
                await asyncio.to_thread(self.sink.write, taken)


def check_writable(data_dir: Path) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".write-probe-{time.time_ns()}.tmp"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise RecorderError(f"data dir {str(data_dir)!r} is not writable: {exc.strerror or exc}") from None
