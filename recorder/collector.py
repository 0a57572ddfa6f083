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
from collections.abc import Callable
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
    ProtocolError,
    TradeBatch,
)
from recorder.storage.checkpoint import RunLock, lock_stream, release, run_is_alive, sources_metadata
from recorder.storage.rawlog import BADFRAME, RESERVE_BYTES, RawLog
from recorder.storage.sink import ParquetSink, recover
from recorder.symbols import fetch_markets, resolve
from recorder.transport import SendLimiter, backoff_delay, new_session

log = logging.getLogger("recorder")


WATCHDOG_TICK = 0.25  # seconds between the keepalive loop's checks
STALE = "stale stream"  # how a silence verdict's `error` detail starts (the `coverage` view ends there)


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Options:
    data_dir: Path | None = Path("data")  # None: keep nothing on disk (an in-process feed)
    channels: tuple[str, ...] = CHANNELS
    duration: float | None = None
    ws_url: str | None = None
    rest_url: str | None = None
    flush_interval: float = 60.0  # publish files at least this often (SQL sees data within it)
    max_buffered_rows: int = 1_000_000  # flush early past this many rows in memory
    snapshot_interval: float = 1.0  # book_snapshots cadence
    snapshot_depth: int = 20
    # Stale-stream watchdog: a connection silent for `silence_factor` times its usual gap between
    # frames (learned from its own rate; at least `min_silence`, at most `silence_timeout`) is asked
    # with a ping; no answer within `probe_timeout` means dead (`silence_limit`, `dead_within`).
    # A market that merely went quiet answers the ping, so it is not mistaken for a dead socket.
    silence_timeout: float = 10.0
    min_silence: float = 2.0
    silence_factor: float = 10.0
    probe_timeout: float = 2.0
    ack_timeout: float = 10.0  # resubscribe topics not acknowledged within this
    # A refused subscription is retried after this, doubling on each refusal in a row (at most
    # `ack_timeout`): a refusal is an answer, there is nothing to wait for.
    refused_retry: float = 1.0
    resync_timeout: float = 5.0  # re-request a snapshot not received within this
    raw: bool = True  # capture every frame to DATA_DIR/raw (the source for `recorder replay`)
    raw_flush_interval: float = 0.2
    raw_reserve_bytes: int = RESERVE_BYTES  # disk held ahead of each raw log, for a disk that fills up
    # While the disk refuses writes, rows and raw records wait in memory up to these caps; past
    # them the oldest are dropped, counted, and recorded as `error` events.
    max_pending_rows: int = 5_000_000
    max_pending_raw_bytes: int = 256 * 1024 * 1024

    def silence_limit(self, rate: float) -> float:
        """Seconds without a frame after which a connection usually receiving `rate` frames/s is probed."""
        usual = self.silence_factor / rate if rate > 0 else self.silence_timeout
        return min(self.silence_timeout, max(self.min_silence, usual))

    def dead_within(self, rate: float) -> float:
        """Bound from a hung connection's last frame to its `stale stream` verdict: the probe goes out
        on the first watchdog tick past `silence_limit`, the verdict on the first tick past
        `probe_timeout` (with the defaults: 4.5 s from 5 frames/s up, 12.5 s for any connection)."""
        return self.silence_limit(rate) + self.probe_timeout + 2 * WATCHDOG_TICK


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
        # In-process consumers (the live candles feed): called with each batch of accepted trade
        # rows (ts, recv_ts, trade_id, side, price, amount) and each event row, after buffering.
        self.trade_listeners: list[Callable[[Stream, list[tuple]], None]] = []
        self.event_listeners: list[Callable[[Stream, tuple], None]] = []

    def event(self, channel: str, event: str, detail: str = "", ts: int | None = None) -> None:
        t = ts if ts is not None else now_us()
        row = (t, t, channel, event, detail)
        self.events.append(row)
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
        self.snapshots.append((sync.last_ts, taken_at, sync.seq, bids, asks))

    def on_trades(self, batch: TradeBatch, recv: int) -> None:
        rows, recent = self.trades, self.recent_trades
        start = len(rows)
        for ts, tid, side, price, amount in batch.trades:
            if tid is None:
                key = (ts, side, price, amount)
                if self.replay_guard is not None and self._is_replayed(key, ts):
                    continue
                recent.append(key)
            rows.append((ts, recv, tid, side, price, amount))
            self.trade_count += 1
        if self.trade_listeners:
            accepted = rows[start:]
            for fn in self.trade_listeners:
                fn(self, accepted)

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
class Unwritten:
    """What a stop left unwritten: `rows` buffered, of which `lost_rows` (`lost_trades` trades) are
    in no raw log either, because raw capture was off or the raw log lacks its last records."""

    rows: int = 0
    raw: bool = True
    lost_rows: int = 0
    lost_trades: int = 0
    raw_records_lost: int = 0
    lost_since: int | None = None  # receive time (µs) from which the raw log is incomplete


@dataclass
class Topic:
    name: str
    channel: str
    stream: Stream
    acked: bool = False
    sent_at: float = 0.0


class Dispatcher:
    """Everything a connection does with what it receives, minus the socket.

    Live connections and `recorder replay` drive the same object: frames and connection-level events
    go in (with their recorded times), rows and events come out, and resync requests go to
    `request` (a no-op in replay, where the answers are already in the log). With a raw log, every
    input is captured before it is processed.
    """

    def __init__(self, adapter: ModuleType, topics: list[Topic], depth: int, rawlog: RawLog | None) -> None:
        self.adapter = adapter
        self.topics = topics
        self.depth = depth
        self.rawlog = rawlog
        self.request: Callable[[Stream], None] = lambda s: None
        self.refused: Callable[[], None] = lambda: None  # an exchange error while topics await their ack
        self._decode, self._decode_errors, self._parse = adapter.decode, adapter.DECODE_ERRORS, adapter.parse
        self.by_topic = {t.name: t for t in topics}
        self.book_by_wire = {t.stream.wire: t.stream for t in topics if t.channel == BOOK}
        self.trades_by_wire = {t.stream.wire: t.stream for t in topics if t.channel == TRADES}
        self.errors = 0

    # -- inputs -------------------------------------------------------------------------------

    def frame(self, recv: int, frame: bytes | str) -> None:
        try:
            raw = self._decode(frame)
        except self._decode_errors as exc:
            if self.rawlog is not None:
                self.rawlog.frame(recv, frame, BADFRAME)
            self._on_error(ProtocolError(f"undecodable frame: {exc}", code="decode"), recv)
            return
        if self.rawlog is not None:
            self.rawlog.frame(recv, raw)
        self.payload(recv, raw)

    def payload(self, recv: int, raw: bytes | str) -> None:
        trades_by_wire = self.trades_by_wire
        for m in self._parse(raw):
            if type(m) is BookMessage:
                self._on_book(m, recv)
            elif type(m) is TradeBatch:
                s = trades_by_wire.get(m.symbol)
                if s is not None:
                    s.on_trades(m, recv)
            elif type(m) is Ack:
                self._on_ack(m, recv)
            elif type(m) is ProtocolError:
                self._on_error(m, recv)

    def event(self, t: int, channel: str | None, event: str, detail: str = "") -> None:
        """A connection-level event (connect, disconnect, watchdog error, stop) for its streams."""
        if self.rawlog is not None:
            self.rawlog.event(t, channel, event, detail)
        for topic in self.topics:
            if channel is None or topic.channel == channel:
                topic.stream.event(topic.channel, event, detail, t)
        if event == ERROR and detail.startswith(STALE):
            # a silence verdict: validity ended at the last frame, so no snapshot row may claim the
            # book until a new one arrives (here, not in the Connection, so that replay agrees)
            for topic in self.topics:
                if topic.channel == BOOK:
                    topic.stream.book.invalidate()
        if event in (CONNECT, DISCONNECT, STOP):
            for topic in self.topics:
                topic.acked = False
                if topic.channel == BOOK:
                    topic.stream.book.invalidate()
                    topic.stream.resync_pending_since = None
                else:
                    topic.stream.arm_replay_guard()

    def tick(self, t: int) -> None:
        """The book_snapshots cadence (logged, so replay writes the same snapshot rows)."""
        if self.rawlog is not None:
            self.rawlog.tick(t)
        for topic in self.topics:
            if topic.channel == BOOK:
                topic.stream.snapshot_row(self.depth, t)

    # -- handling -----------------------------------------------------------------------------

    def _on_book(self, m: BookMessage, recv: int) -> None:
        s = self.book_by_wire.get(m.symbol)
        if s is None:
            return
        was_valid = s.book.valid
        outcome = s.book.on_message(m, recv)
        if outcome is Outcome.APPLIED or outcome is Outcome.WAITING:
            return
        if outcome is Outcome.STALE:
            if m.bids or m.asks:  # not a heartbeat: a duplicated or backwards update
                s.book.invalidate()
                s.event(BOOK, ERROR, f"out-of-order update seq {m.seq} <= local {s.book.seq}: dropped", recv)
                self.request(s)
            return
        if outcome is Outcome.SNAPSHOT:
            s.resync_pending_since, s.resync_tries = None, 0
            if s.book.valid:
                why = "replaces valid book" if was_valid else "starts book"
                s.event(BOOK, RESYNC, f"snapshot seq={m.seq} {why}", recv)
                s.snapshot_row(self.depth, recv)
            else:
                s.event(BOOK, ERROR, f"crossed snapshot seq={m.seq}", recv)
                self.request(s)
        elif outcome in NEED_RESYNC:
            if outcome is Outcome.GAP:
                s.event(BOOK, GAP, f"expected seq {s.book.expected}, got {m.seq}", recv)
            else:
                b, a = s.book.book.best_bid(), s.book.book.best_ask()
                s.event(BOOK, ERROR, f"crossed book at seq {m.seq}: bid {b} >= ask {a}", recv)
            self.request(s)

    def _on_ack(self, m: Ack, recv: int) -> None:
        t = self.by_topic.get(m.topic)
        if t is not None and m.op == "subscribe" and not t.acked:
            t.acked = True
            t.stream.event(t.channel, SUBSCRIBED, m.topic, recv)

    def _on_error(self, m: ProtocolError, recv: int) -> None:
        detail = f"{m.code}: {m.message}" if m.code else m.message
        t = self.by_topic.get(m.topic) if m.topic else None
        targets = [t] if t else self.topics
        self.errors += 1
        if m.code in ("decode", "parse"):
            # An undecodable frame may have carried any of our streams' data.
            for topic in targets:
                topic.stream.event(topic.channel, ERROR, detail, recv)
                if topic.channel == BOOK and topic.stream.book.valid:
                    topic.stream.book.invalidate()
                    self.request(topic.stream)
        else:
            # Exchange errors carry no topic: the connection resubscribes what is still unacked.
            unacked = [topic for topic in targets if not topic.acked]
            for topic in unacked:
                topic.stream.event(topic.channel, ERROR, detail, recv)
            if unacked:
                self.refused()
        log.warning("%s", detail)


PROBE, DEAD = "probe", "dead"


class SilenceWatch:
    """The stale-stream watchdog's arithmetic (no I/O), one tick every `WATCHDOG_TICK` seconds.

    It learns the connection's usual frame rate and says when a silence calls for a probe (a ping)
    and when an unanswered probe means a dead socket. The rate is averaged over ~5 s of ticks (a
    plain mean over the first ones, so there is no warm-up) and frozen at the last tick that saw a
    frame: the silence itself must never teach the watchdog that the stream is slow, or a hung
    socket waits ever longer for its verdict. A quiet market answers the probe, and that pong is a
    frame: the rate learned from then on includes the quiet ticks.
    """

    def __init__(self, opt: Options, now: float) -> None:
        self.opt = opt
        self.rate = 0.0  # frames/s, averaged over ticks
        self.usual = 0.0  # `rate` as of the last tick that saw a frame
        self.ticks = 0
        self.seen = 0
        self.last_tick = now
        self.probe_at: float | None = None

    def tick(self, now: float, frames: int, last_frame: float) -> str | None:
        """PROBE, DEAD or None. `frames` counts the connection's frames, `last_frame` is the
        monotonic time of the last one."""
        fresh, self.seen = frames - self.seen, frames
        self.ticks += 1
        self.rate += max(0.1, 1 / self.ticks) * (fresh / max(now - self.last_tick, 1e-3) - self.rate)
        self.last_tick = now
        if fresh:
            self.usual = self.rate
        if now - last_frame <= self.opt.silence_limit(self.usual):
            self.probe_at = None
            return None
        if self.probe_at is None:
            self.probe_at = now
            return PROBE
        return DEAD if now - self.probe_at > self.opt.probe_timeout else None


class SocketFault(aiohttp.ClientError):
    """The websocket layer gave up on the connection; the message says why, in words."""


def describe_ws_error(exc: BaseException | None, adapter: ModuleType) -> str:
    """The `disconnect` detail for a websocket-level error (an oversized frame names the limit)."""
    if isinstance(exc, aiohttp.WebSocketError) and exc.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
        return f"frame too large (limit {adapter.MAX_FRAME_BYTES:,} bytes): {exc}; socket closed (code 1009)"
    return f"websocket error: {exc!r}" if exc is not None else "websocket error (no detail from aiohttp)"


@dataclass
class Connection:
    """One live websocket carrying up to the exchange's per-connection topic limit."""

    collector: Collector
    dispatcher: Dispatcher
    index: int
    ws: aiohttp.ClientWebSocketResponse | None = None
    limiter: SendLimiter = field(init=False)
    last_recv: float = 0.0  # monotonic time of the watchdog tick that last saw a new frame
    last_frame_us: int = 0  # its receive time (the end of validity if the socket hangs)
    reconnects: int = 0
    frames: int = 0
    refusals: int = 0  # subscription refusals in a row (each doubles the retry delay)
    retry_pending: bool = False
    closed_why: str = ""  # set when we close the socket ourselves (the `disconnect` detail)

    def __post_init__(self) -> None:
        self.limiter = SendLimiter(*self.collector.adapter.SEND_BUDGET)
        self.topics = self.dispatcher.topics
        self.dispatcher.request = self._request_resync
        self.dispatcher.refused = self._on_refused

    async def send(self, text: str) -> None:
        await self.limiter.acquire()
        if self.ws is not None and not self.ws.closed:
            if self.dispatcher.rawlog is not None:
                self.dispatcher.rawlog.sent(now_us(), text)
            await self.ws.send_str(text)

    async def run(self) -> None:
        c, d = self.collector, self.dispatcher
        attempt = 0
        while not c.stopping.is_set():
            try:
                await c.connect_limiter.acquire()
                async with c.session.ws_connect(
                    c.ws_url,
                    autoping=True,
                    heartbeat=None,
                    max_msg_size=c.adapter.MAX_FRAME_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                ) as ws:
                    self.ws = ws
                    d.event(now_us(), None, CONNECT, c.ws_url)
                    await self._session(ws)
                    attempt = 0 if self.frames else attempt + 1
                    reason = self.closed_why or f"closed by server (code {ws.close_code})"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
                if isinstance(exc, SocketFault):
                    reason = str(exc)
                attempt += 1
            except Exception as exc:  # a bug must cost a reconnect, never the connection for good
                log.exception("connection %d: unexpected error", self.index)
                reason = f"internal error: {type(exc).__name__}: {exc}"
                attempt += 1
            finally:
                self.ws = None
            if c.stopping.is_set():
                break
            self.reconnects += 1
            d.event(now_us(), None, DISCONNECT, reason)
            log.warning("connection %d lost: %s; reconnecting", self.index, reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(c.stopping.wait(), backoff_delay(attempt))

    async def _session(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.frames, self.closed_why = 0, ""
        self.refusals, self.retry_pending = 0, False  # a retry of the old socket's refusals is moot
        self.last_recv, self.last_frame_us = time.monotonic(), now_us()
        keepalive = asyncio.create_task(self._keepalive(ws))
        try:
            await self._subscribe(self.topics)
            await self._receive(ws)
        finally:
            keepalive.cancel()
            await asyncio.gather(keepalive, return_exceptions=True)

    async def _subscribe(self, topics: list[Topic]) -> None:
        now = time.monotonic()
        for t in topics:
            t.sent_at = now
            if t.channel == BOOK and not t.stream.book.valid:
                # the subscription's snapshot is due: request one if it does not come
                t.stream.resync_pending_since, t.stream.resync_tries = now, 0
        for msg in self.collector.adapter.subscribe_messages([t.name for t in topics]):
            await self.send(msg)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        on_frame = self.dispatcher.frame
        BINARY, TEXT = aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT
        async for msg in ws:
            if msg.type is BINARY or msg.type is TEXT:
                self.frames += 1
                self.last_frame_us = recv = time.time_ns() // 1000
                on_frame(recv, msg.data)
            elif msg.type is aiohttp.WSMsgType.ERROR:
                # aiohttp hands the error over as the message's data, not always as ws.exception()
                raise SocketFault(describe_ws_error(msg.data or ws.exception(), self.collector.adapter))

    def _request_resync(self, s: Stream) -> None:
        s.resync_pending_since = time.monotonic()
        s.resync_tries += 1
        ad = self.collector.adapter
        self.collector.spawn(self.send(ad.snapshot_request(ad.topic(BOOK, s.wire))))

    async def _keepalive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Text pings, the silence watchdog, and retries of unacked subscriptions and resyncs."""
        ad, opt = self.collector.adapter, self.collector.options
        last_ping = time.monotonic()
        watch = SilenceWatch(opt, last_ping)
        seen = self.frames
        while not ws.closed:
            await asyncio.sleep(WATCHDOG_TICK)
            now = time.monotonic()
            if self.frames != seen:  # to a tick's precision, which `dead_within` allows for: no clock per frame
                seen, self.last_recv = self.frames, now
            verdict = watch.tick(now, self.frames, self.last_recv)
            if verdict is PROBE:  # unusually quiet: ask the server whether it is still there
                last_ping = now
                await self.send(ad.PING)
            elif verdict is DEAD:
                await self._declare_dead(ws, now - self.last_recv, watch.usual)
                return
            if now - last_ping >= ad.PING_INTERVAL:
                last_ping = now
                await self.send(ad.PING)
            if self.refusals and all(t.acked for t in self.topics):
                self.refusals = 0
            stale = [t for t in self.topics if not t.acked and now - t.sent_at > opt.ack_timeout]
            if stale:
                await self._subscribe(stale)
            for t in self.topics:
                s = t.stream
                pending = s.resync_pending_since
                if t.channel == BOOK and pending and now - pending > opt.resync_timeout:
                    if s.resync_tries >= 3:
                        self.dispatcher.event(now_us(), BOOK, ERROR, "no snapshot after 3 requests")
                        self.closed_why = "closed by us: no snapshot after 3 requests"
                        await ws.close()
                        return
                    self._request_resync(s)

    async def _declare_dead(self, ws: aiohttp.ClientWebSocketResponse, silent: float, rate: float) -> None:
        """The silence verdict, on every stream of the connection. Validity ends at the last frame
        received, not now: nothing arrived since, so those seconds were never covered. The event is
        stamped back to that frame (in the raw log too, so a replay writes the same row)."""
        detail = (
            f"{STALE}: no data for {silent:.1f} s, no answer to a ping within "
            f"{self.collector.options.probe_timeout:g} s (usual rate {rate:.1f} frames/s): reconnecting"
        )
        self.dispatcher.event(self.last_frame_us, None, ERROR, detail)
        log.warning("connection %d: %s", self.index, detail)
        self.closed_why = f"closed by us: {STALE} (no data for {silent:.1f} s)"
        await ws.close()

    def _on_refused(self) -> None:
        """The exchange refused a subscription: retry soon, backing off while refusals go on.

        A BitMart refusal names no topic, so the retry takes the topics still unacked by then that
        were sent before the refusal (their acks, if any, come in order and have arrived)."""
        if self.retry_pending or self.ws is None:
            return  # one retry per burst of refusals
        opt = self.collector.options
        delay = min(opt.ack_timeout, opt.refused_retry * 2**self.refusals)
        self.refusals += 1
        self.retry_pending = True
        self.collector.spawn(self._retry_refused(self.ws, time.monotonic(), delay))

    async def _retry_refused(self, ws: aiohttp.ClientWebSocketResponse, refused_at: float, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            if self.ws is not ws or ws.closed:
                return  # reconnected since: everything was subscribed afresh
            todo = [t for t in self.topics if not t.acked and t.sent_at <= refused_at]
            if todo:
                await self._subscribe(todo)
        finally:
            if self.ws is ws:  # a new socket has its own flag (reset in `_session`)
                self.retry_pending = False


class Collector:
    """Records `symbols` of `exchange` into `options.data_dir` until stopped."""

    def __init__(self, exchange: str, symbols: list[str], options: Options) -> None:
        self.exchange = exchanges.canonical(exchange)  # partitions, locks and raw headers: lower-case
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
        self._tasks: set[asyncio.Task] = set()
        self.session: aiohttp.ClientSession
        self.write_errors: list[str] = []
        self.dropped_rows = 0
        self.dropped_raw_bytes = 0
        self.lock: RunLock | None = None
        self._inflight: asyncio.Future | None = None
        self._stream_locks: list[tuple[Path, int]] = []  # held for the process lifetime
        self._last_disk_warning = -1e9

    def spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_write_error(self, message: str) -> None:
        self._disk_trouble(message)

    async def prepare(self) -> None:
        """Validate everything that can be wrong before recording: data dir, symbols, endpoint."""
        data_dir = self.options.data_dir
        if data_dir is None:
            self.options.raw = False
        else:
            check_writable(data_dir)
            self.lock = RunLock(data_dir)
            recover(data_dir, alive=lambda run: run_is_alive(data_dir, run))
        self.session = new_session()
        try:
            markets = await fetch_markets(self.session, self.adapter, self.rest_url)
            mapping = resolve(self.requested, markets, self.exchange)
            if data_dir is not None:
                for user in mapping:  # one by one: a refused lock must not leak those already held
                    self._stream_locks.append(lock_stream(data_dir, self.exchange, user))
            await self._probe_websocket()
        except BaseException:
            self._release_stream_locks()
            if self.lock is not None:  # nothing was recorded: leave no lock file behind
                self.lock.abandon()
                self.lock = None
            await self.session.close()
            raise
        stale_is_gap = getattr(self.adapter, "STALE_IS_GAP", False)
        for user, wire in mapping.items():
            self.streams[user] = Stream(self.sink, self.exchange, user, wire, stale_is_gap)
        for n, group in enumerate(self._topic_groups()):
            rawlog = None
            if self.options.raw:
                rawlog = RawLog(
                    self.options.data_dir, self.exchange, self._raw_header(group), connection=n,
                    reserve_bytes=self.options.raw_reserve_bytes,
                )
            d = Dispatcher(self.adapter, group, self.options.snapshot_depth, rawlog)
            self.connections.append(Connection(self, d, n))

    def _topic_groups(self) -> list[list[Topic]]:
        """Topics per connection, within the exchange's cap; a symbol's topics share a connection."""
        per = self.adapter.MAX_TOPICS_PER_CONNECTION
        groups: list[list[Topic]] = [[]]
        for s in self.streams.values():
            mine = [Topic(self.adapter.topic(ch, s.wire), ch, s) for ch in CHANNELS if ch in self.options.channels]
            if len(groups[-1]) + len(mine) > per:
                groups.append([])
            groups[-1].extend(mine)
        return groups

    async def _probe_websocket(self) -> None:
        """Fail at start-up, not in a reconnect loop, when the websocket endpoint is unreachable."""
        try:
            async with self.session.ws_connect(self.ws_url, timeout=aiohttp.ClientWSTimeout(ws_close=2.0)):
                pass
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RecorderError(f"cannot reach websocket {self.ws_url} ({type(exc).__name__}: {exc})") from None

    def _raw_header(self, group: list[Topic]) -> dict:
        return {
            "format": 1,
            "exchange": self.exchange,
            "ws_url": self.ws_url,
            "snapshot_depth": self.options.snapshot_depth,
            "topics": [[t.name, t.channel, t.stream.user, t.stream.wire] for t in group],
        }

    async def run(self) -> None:
        """Record until `stop()` or the duration ends; always flushes what it has."""
        try:
            conn_tasks = [asyncio.create_task(c.run()) for c in self.connections]
            aux = [asyncio.create_task(self._snapshots()), asyncio.create_task(self._flusher())]
            if self.options.raw:
                aux.append(asyncio.create_task(self._raw_flusher()))
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
            if self._inflight is not None:
                await asyncio.gather(self._inflight, return_exceptions=True)
            t = now_us()
            for conn in self.connections:
                conn.dispatcher.tick(t)
                conn.dispatcher.event(t, None, STOP, "clean stop")
            written = await self._flush()
            for conn in self.connections:
                if conn.dispatcher.rawlog is not None:
                    try:
                        conn.dispatcher.rawlog.close()
                    except OSError as exc:
                        written = None
                        self._disk_trouble(f"cannot close raw log: {exc.strerror or exc}")
            if self.lock is not None:
                clean = written is not None and self.sink.pending_rows() == 0
                self.lock.finish(clean=clean, has_raw=self.options.raw)
            self._release_stream_locks()
            await self.session.close()

    def stop(self) -> None:
        self.stopping.set()

    def _release_stream_locks(self) -> None:
        for path, fd in self._stream_locks:
            release(path, fd)  # deleted while held: a stopped recorder leaves no lock file
        self._stream_locks = []

    @property
    def errors(self) -> int:
        return sum(c.dispatcher.errors for c in self.connections)

    @property
    def frames(self) -> int:
        return sum(c.frames for c in self.connections)

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(self.options.snapshot_interval)
            if BOOK in self.options.channels:
                t = now_us()
                for conn in self.connections:
                    conn.dispatcher.tick(t)

    async def _raw_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.options.raw_flush_interval)
            for conn in self.connections:
                self._flush_raw(conn)

    def _flush_raw(self, conn: Connection, sync: bool = False) -> bool:
        raw = conn.dispatcher.rawlog
        if raw is None:
            return True
        try:
            raw.sync() if sync else raw.flush()
        except OSError as exc:
            self._disk_trouble(f"cannot write raw log: {exc.strerror or exc}")
            if raw.buffered_bytes > self.options.max_pending_raw_bytes:
                n = raw.drop_buffer()
                conn.dispatcher.event(now_us(), None, ERROR, f"disk: dropped {n:,} bytes of raw log ({exc.strerror})")
                self.dropped_raw_bytes += n
            return False
        return True

    def _disk_trouble(self, message: str) -> None:
        self.write_errors.append(message)
        now = time.monotonic()
        if now - self._last_disk_warning > 10:
            self._last_disk_warning = now
            log.error("%s; keeping data in memory and retrying", message)

    async def _flusher(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if now - last >= self.options.flush_interval or self.sink.pending_rows() > self.options.max_buffered_rows:
                last = now
                await self._flush()

    async def _flush(self) -> int | None:
        """Publish everything buffered; each file records the raw-log position its rows reach.

        Returns the rows written, or None when the disk refused (rows stay buffered, up to a cap).
        """
        sources: dict[str, dict[str, str]] = {}
        for conn in self.connections:
            raw = conn.dispatcher.rawlog
            if raw is None:
                continue
            if not self._flush_raw(conn, sync=True):  # the raw log must always be ahead of the tables
                self._shed_rows()
                return None
            part, records = raw.position
            meta = sources_metadata([{"run": raw.run, "conn": conn.index, "part": part, "records": records}])
            for t in conn.topics:
                sources[t.stream.user] = meta
        taken = self.sink.take()
        source = (lambda key: sources[key[2]]) if sources else None
        self._inflight = asyncio.ensure_future(asyncio.to_thread(self.sink.write, taken, source))
        # shielded: cancelling the flusher at stop must not orphan a write that may put rows back
        written = await asyncio.shield(self._inflight)
        if written is None:
            self._shed_rows()
        return written

    def unwritten(self) -> Unwritten:
        """After `run()`: the rows still buffered, and how many of them the raw log cannot bring back.

        A raw log that could not be completed (disk full at stop) lacks every record from its oldest
        unwritten one on; rows received from then on (`recv_ts`, column 1 of every table) are lost.
        """
        res = Unwritten(rows=self.sink.pending_rows(), raw=self.options.raw)
        for conn in self.connections:
            raw = conn.dispatcher.rawlog
            since = raw.buffered_since if raw is not None and raw.buffered_records else None
            if raw is not None and since is None:
                continue
            res.raw_records_lost += raw.buffered_records if raw is not None else 0
            if since is not None:
                res.lost_since = since if res.lost_since is None else min(res.lost_since, since)
            for stream in {t.stream for t in conn.topics}:
                for rows in (stream.trades, stream.book.rows, stream.snapshots, stream.events):
                    n = sum(1 for r in rows if since is None or r[1] >= since)
                    res.lost_rows += n
                    res.lost_trades += n if rows is stream.trades else 0
        return res

    def _shed_rows(self) -> None:
        """Past the memory cap, drop the oldest buffered rows of the biggest streams (counted, logged)."""
        excess = self.sink.pending_rows() - self.options.max_pending_rows
        if excess <= 0:
            return
        t = now_us()
        for s in sorted(self.streams.values(), key=lambda s: -len(s.book.rows)):
            for rows, channel in ((s.book.rows, BOOK), (s.trades, TRADES)):
                n = min(excess, len(rows))
                if n <= 0:
                    continue
                del rows[:n]
                excess -= n
                self.dropped_rows += n
                s.event(channel, ERROR, f"disk: dropped {n:,} buffered rows (data dir not writable)", t)
                if channel == BOOK:
                    s.book.invalidate()  # the stored book has a hole now: resync
                    for conn in self.connections:
                        if s in conn.dispatcher.book_by_wire.values():
                            conn.dispatcher.request(s)


def check_writable(data_dir: Path) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".write-probe-{time.time_ns()}.tmp"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise RecorderError(f"data dir {str(data_dir)!r} is not writable: {exc.strerror or exc}") from None
