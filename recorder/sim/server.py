"""The venue-neutral half of every exchange simulator: one aiohttp app (a WebSocket endpoint and REST
routes) on one loopback port, driven by a synthetic `Market`.

`SimServer` owns what every venue shares: connections and their send queues, pacing (live at `rate`
events per second, or full speed from pre-encoded tapes), subscriptions, ground truth (the book behind
every sequence number, the trades actually written to each connection), the fault-injection mechanisms,
the per-endpoint REST rate-limit windows and REST fault middleware, idle close, and start/stop/pause/
resume/step. A front-end (`recorder.sim.frontends.<venue>`) subclasses it and supplies only wire facts
through the hooks below: symbol ids, topic names, message encoding, op parsing, error codes, its own
sequence counters, REST routes and the bytes of each fault frame.

Public methods take and return the front-end's wire ids (a market id works too); the market inside
keeps neutral `BASE-QUOTE` ids, and each wire id is registered as an alias of its market id.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from aiohttp import WSMsgType, web

from recorder.sim.market import (
    PRE_TRADE_SPEC,
    Kline,
    Market,
    MarketEvent,
    SymbolSpec,
    Trade,
    resolve_specs,
)

Frame = bytes | str  # bytes go out as BINARY frames, str as TEXT frames
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Periodic = Callable[[float], None]  # called with time.monotonic()

# Kinds of queued items.
BIN, TEXT, PONG, PING, CLOSE, OVERSIZED = range(6)
_Item = tuple[int, Any, Sequence[Trade] | None]

# A client this far behind is dropped, as a real server would rather than buffer without bound.
MAX_BACKLOG = 200_000
_NOBODY: frozenset[SimConnection] = frozenset()


# ---- connections ----------------------------------------------------------------------------------


@dataclass(slots=True)
class TapeCursor:
    """Full-speed mode: one connection's position in one topic's pre-encoded frames."""

    frames: Sequence[Any]  # Frame, or (Frame, trades) for a trade tape
    is_trade: bool
    index: int = 0
    last_push: float = 0.0  # loop time of the last frame or heartbeat (for tape heartbeats)

    @property
    def done(self) -> bool:
        return self.index >= len(self.frames)


@dataclass(eq=False)
class SimConnection:
    """Server side of one client WebSocket, with what it was sent (ground truth per connection)."""

    id: int
    ws: web.WebSocketResponse
    request: web.Request
    opened_at: float
    topics: set[str] = field(default_factory=set)
    sent_trades: dict[str, list[Trade]] = field(default_factory=dict)  # wire id -> trades written
    # Trades written behind an oversized frame: the client's reader stops at that frame (it closes the
    # socket), so what follows is lost in flight, as on the real venue; not `sent_trades`.
    unread_trades: dict[str, list[Trade]] = field(default_factory=dict)
    unreadable: bool = False  # an oversized frame went out on it
    frames_sent: int = 0
    bytes_sent: int = 0
    closed: bool = False
    last_rx: float = 0.0
    dead: bool = False
    state: dict[str, Any] = field(default_factory=dict)  # the front-end's per-connection state
    _out: deque[_Item] = field(default_factory=deque)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _alive: asyncio.Event = field(default_factory=asyncio.Event)
    _recent: deque[float] = field(default_factory=deque)
    _cursors: dict[str, TapeCursor] = field(default_factory=dict)

    def push(self, kind: int, payload: Any, trades: Sequence[Trade] | None = None) -> None:
        if self.closed:
            return
        if len(self._out) >= MAX_BACKLOG:
            self.abort()  # a consumer this slow is cut off, as the exchange would
            return
        self._out.append((kind, payload, trades))
        self._wake.set()

    def push_text(self, text: str) -> None:
        self.push(TEXT, text)

    def push_binary(self, frame: bytes, trades: Sequence[Trade] | None = None) -> None:
        self.push(BIN, frame, trades)

    def push_frame(self, frame: Frame, trades: Sequence[Trade] | None = None) -> None:
        """A BINARY frame for bytes, a TEXT frame for str; `trades` are logged once it is written."""
        self.push(BIN if isinstance(frame, bytes) else TEXT, frame, trades)

    def ping(self, payload: bytes = b"") -> None:
        """A protocol PING (for venues whose server pings its clients)."""
        self.push(PING, payload)

    def close_with(self, code: int) -> None:
        """Close with `code` once everything queued before it is written."""
        self.push(CLOSE, code)

    def tape(self, topic: str) -> TapeCursor | None:
        return self._cursors.get(topic)

    @property
    def backlog(self) -> int:
        return len(self._out)

    def abort(self) -> None:
        """Cut the TCP connection without a close frame."""
        self.closed = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()
        self._wake.set()
        self._alive.set()


# ---- the server -----------------------------------------------------------------------------------


class SimServer(abc.ABC):
    """A simulated exchange (public market data) on 127.0.0.1; subclasses are the venues' front-ends.

    `rate` is market events per second over all symbols; `rate=0` is full-speed mode, where
    `tape_events` events are generated and encoded at start (`build_tapes`) and blasted to each
    subscriber as fast as its socket takes them.

    Ground truth: `truth_book`, `truth_trades`, `truth_klines`, `sent_trades`, `connections`.
    Faults: `skip_version`, `duplicate_version`, `send_stale_version` (live mode only), `drop_connections`,
    `go_dead`/`revive`, `send_malformed_json`, `send_invalid_deflate`, `send_deflate_bomb`,
    `send_oversized_frame`, `fail_next_subscribe`, `fail_rest`.
    """

    ws_path: ClassVar[str] = "/api"
    ws_extra_paths: ClassVar[tuple[str, ...]] = ()  # more paths of the same endpoint (e.g. a trailing "/")
    ws_query: ClassVar[str] = ""  # appended to `ws_url` after "?"
    ws_compress: ClassVar[bool] = False  # permessage-deflate (off: frames are sent as the venue encodes them)
    ws_max_message: ClassVar[int] = 1 << 20  # larger client messages close the socket (1009)
    rest_prefix: ClassVar[str] = ""  # REST routes live under it, and `rest_url` ends with it
    # (messages, seconds): a client sending more TEXT messages within the window gets `on_over_budget`.
    client_budget: ClassVar[tuple[int, float] | None] = None

    def __init__(
        self,
        symbols: Sequence[str | SymbolSpec] | int | None = None,
        seed: int = 0,
        rate: float = 50.0,
        idle_timeout: float = 20.0,
        heartbeat_interval: float = 5.0,
        *,
        market: Market | None = None,
        tape_events: int = 100_000,
        history_minutes: int = 0,
        full_book_interval: float = 0.5,
        include_pre_trade: bool = True,
        rest_rate_limits: bool = True,
        record_sent: bool = True,
        trade_log_limit: int | None = None,
    ) -> None:
        """`symbols` are wire ids, market ids or specs (None: the default catalogue; an int: that many
        synthetic symbols). `market` serves an existing market instead (then `symbols`,
        `include_pre_trade` and `trade_log_limit` are not used); its events reach only the server that
        generates them, so two running servers do not share one market live. `record_sent=False` and a
        `trade_log_limit` bound memory for long standalone runs; tests keep the defaults (complete
        ground truth)."""
        self.seed = seed
        if market is None:
            specs = self.resolve_symbols(symbols, seed, include_pre_trade)
            market = Market(specs, seed=seed, trade_log_limit=trade_log_limit)
        self.market = market
        # wire id -> market id, in market order; each wire id is an alias of its symbol in the market.
        self.listed = {self.wire(name): name for name in market.symbols}
        for wire, name in self.listed.items():
            market.alias(wire, name)
        self.record_sent = record_sent
        self.rate = rate
        self.idle_timeout = idle_timeout
        self.heartbeat_interval = heartbeat_interval
        self.tape_events = tape_events
        self.history_minutes = history_minutes
        self.full_book_interval = full_book_interval
        self.rest_rate_limits = rest_rate_limits
        self.connections: list[SimConnection] = []
        self.last_change: dict[str, float] = {}  # market id -> monotonic time of its last event
        self._ids = itertools.count(1)
        self._subs: dict[str, set[SimConnection]] = {}
        self._changed: dict[str, None] = {}  # market ids changed since `take_changed` (ordered set)
        self._paused = asyncio.Event()
        self._paused.set()  # set = running
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._host = "127.0.0.1"
        # Fault injection state.
        self._skip: dict[str, int] = {}
        self._duplicate: dict[str, int] = {}
        self._fail_subscribe = 0
        self._dead_new = False
        self._rest_faults: deque[tuple[int, float | None]] = deque()
        self._rest_windows: dict[str, tuple[float, int]] = {}

    # ---- hooks a front-end implements -------------------------------------------------------------

    @abc.abstractmethod
    def wire(self, symbol: str) -> str:
        """The wire id of market id `symbol`."""

    @abc.abstractmethod
    def neutral(self, wire: str) -> str:
        """The market id a wire id names (used for the constructor's `symbols`; a market id passes)."""

    def resolve_symbols(
        self, symbols: Sequence[str | SymbolSpec] | int | None, seed: int, include_pre_trade: bool
    ) -> list[SymbolSpec]:
        """The specs of a new market (a perpetual front-end overrides this to set `kind`, `contract_size`)."""
        if isinstance(symbols, int) or symbols is None:
            specs = resolve_specs(symbols, seed)
        else:
            specs = resolve_specs(
                [s if isinstance(s, SymbolSpec) else self.neutral(s) for s in symbols], seed
            )
        if include_pre_trade and all(spec.name != PRE_TRADE_SPEC.name for spec in specs):
            specs.append(PRE_TRADE_SPEC)
        return specs

    def on_open(self, conn: SimConnection) -> None:  # noqa: B027 (optional hook)
        """A client connected (a venue that acks at connect time pushes it here)."""

    @abc.abstractmethod
    def on_text(self, conn: SimConnection, text: str) -> None:
        """A TEXT message from a live connection, within its budget."""

    def on_binary(self, conn: SimConnection, data: bytes) -> None:  # noqa: B027 (optional hook)
        """A BINARY message from a live connection."""

    def on_over_budget(self, conn: SimConnection) -> None:
        """The client exceeded `client_budget`."""
        conn.close_with(1008)

    def on_drop_topic(self, conn: SimConnection, topic: str) -> None:  # noqa: B027 (optional hook)
        """`topic` left `conn` (unsubscribe or close): forget any per-topic `conn.state`."""

    @abc.abstractmethod
    def on_market_event(self, event: MarketEvent) -> None:
        """Push one market event to its subscribers (live mode; the front-end keeps its own counters)."""

    def periodic(self) -> list[tuple[float, Periodic]]:
        """(period in seconds, callback) pairs the server runs while started (heartbeats, snapshots...)."""
        return []

    def build_tapes(self, events: Iterable[MarketEvent]) -> None:
        """Full-speed mode: encode `events` (a lazy stream of `tape_events`) for `start_tape`."""
        raise NotImplementedError(f"{type(self).__name__} has no full-speed mode")

    def book_topic(self, wire: str) -> str | None:
        """The wire topic of `wire`'s incremental book (fault injection picks a watched book)."""
        return None

    @abc.abstractmethod
    def truth_seq(self, symbol: str) -> int:
        """The venue's current sequence number (version) of market id `symbol`'s book."""

    @abc.abstractmethod
    def rest_routes(self) -> dict[str, Handler]:
        """GET routes, relative to `rest_prefix` (aiohttp patterns such as `/markets/{market}` work)."""

    def rest_limit(self, route: str) -> tuple[int, float] | None:
        """(requests, window seconds) enforced on `route`; None: counted in 1 s windows, never refused."""
        return None

    def rate_headers(
        self, route: str, used: int, limit: tuple[int, float] | None, window: float
    ) -> dict[str, str]:
        """Headers of every REST response on `route` (`used`: requests in the current window)."""
        return {}

    def too_many_requests(self, headers: dict[str, str]) -> web.Response:
        """The response to a request over its limit, or to an injected 429."""
        return web.Response(status=429, text="Too Many Requests", headers=headers)

    def stale_update(self, symbol: str, back: int) -> tuple[str, Frame]:
        """(topic, frame): a book update of `symbol` whose sequence went `back` steps backwards."""
        raise NotImplementedError(f"{type(self).__name__} has no stale-update fault")

    def malformed_frame(self) -> Frame:
        """A frame that decodes (decompresses) fine but is not valid JSON."""
        raise NotImplementedError(f"{type(self).__name__} has no malformed-frame fault")

    def invalid_compressed_frame(self) -> bytes | None:
        """A frame that does not decompress; None: this venue sends no compressed frames."""
        return None

    def compression_bomb(self, size: int) -> bytes | None:
        """A small frame decompressing to `size` bytes of valid JSON; None: not applicable."""
        return None

    def oversized_frame(self, size: int) -> Frame:
        """A frame of about `size` bytes on the wire."""
        raise NotImplementedError(f"{type(self).__name__} has no oversized-frame fault")

    # ---- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def ws_url(self) -> str:
        query = f"?{self.ws_query}" if self.ws_query else ""
        return f"ws://{self._host}:{self._port}{self.ws_path}{query}"

    @property
    def rest_url(self) -> str:
        return f"http://{self._host}:{self._port}{self.rest_prefix}"

    @property
    def symbols(self) -> list[str]:
        """Every listed symbol (wire ids), including a pre-trade one."""
        return list(self.listed)

    @property
    def trading_symbols(self) -> list[str]:
        return [self.wire(name) for name in self.market.active]

    @property
    def full_speed(self) -> bool:
        return self.rate <= 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Self:
        if self.history_minutes > 0:
            now = self.market.clock()
            per_symbol = self.history_minutes * 10  # ~2 trades a minute: enough for klines
            self.market.backfill(
                now - self.history_minutes * 60_000, now, per_symbol * len(self.market.active)
            )
        if self.full_speed:
            self.build_tapes(self.market.steps(self.tape_events))
        app = web.Application()
        app.middlewares.append(self._rest_middleware)
        for path in (self.ws_path, *self.ws_extra_paths):
            app.router.add_get(path, self._ws_handler)
        for path, handler in self.rest_routes().items():
            app.router.add_get(self.rest_prefix + path, handler)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        # A wildcard bind is still reached through loopback by local clients.
        self._host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        self.last_change = dict.fromkeys(self.market.symbols, time.monotonic())
        self._tasks = [asyncio.create_task(self._every(period, fn)) for period, fn in self.periodic()]
        self._tasks.append(asyncio.create_task(self._idle_loop()))
        if not self.full_speed:
            self._tasks.append(asyncio.create_task(self._market_loop()))
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        live = [c for c in self.connections if not c.closed]
        if live:
            await asyncio.gather(*(self._close(c, 1001, b"server stopping") for c in live))
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def serve(
        self, host: str = "127.0.0.1", port: int = 0, started: asyncio.Future[Any] | None = None
    ) -> None:
        """Start, run until cancelled, stop; `started` gets the server once it listens."""
        await self.start(host, port)
        if started is not None and not started.done():
            started.set_result(self)
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _every(self, period: float, fn: Periodic) -> None:
        while True:
            await asyncio.sleep(period)
            fn(time.monotonic())

    # ---- market generation ----------------------------------------------------------------------

    def pause(self) -> None:
        """Freeze the market (heartbeats, pings and requests still work)."""
        self._paused.clear()

    def resume(self) -> None:
        self._paused.set()

    @property
    def paused(self) -> bool:
        return not self._paused.is_set()

    def step(self, symbol: str | None = None, count: int = 1) -> list[MarketEvent]:
        """Generate and broadcast `count` events now, even while paused (deterministic tests)."""
        if self.full_speed:
            raise RuntimeError(
                "full-speed mode replays a pre-built tape; live steps would break its sequence numbers"
            )
        name = None if symbol is None else self.market.resolve(symbol)
        events = [self.market.step(name) for _ in range(count)]
        for event in events:
            self._emit(event)
        return events

    async def _market_loop(self) -> None:
        tick = max(0.005, min(0.05, 1.0 / self.rate))
        last = time.monotonic()
        carry = 0.0
        while True:
            await asyncio.sleep(tick)
            if not self._paused.is_set():
                await self._paused.wait()
                last = time.monotonic()
                continue
            now = time.monotonic()
            # At most 20 ms worth per wake-up: beyond what one core can generate, the rate
            # degrades instead of starving the senders (and never bursts after a stall).
            carry = min(carry + (now - last) * self.rate, max(1.0, 0.02 * self.rate))
            last = now
            for _ in range(int(carry)):
                self._emit(self.market.step())
            carry -= int(carry)

    def _emit(self, event: MarketEvent) -> None:
        symbol = event.symbol
        self.last_change[symbol] = time.monotonic()
        self._changed[symbol] = None
        self.on_market_event(event)

    # ---- services for front-ends ----------------------------------------------------------------

    def subscribers(self, topic: str) -> set[SimConnection] | frozenset[SimConnection]:
        """The connections subscribed to `topic` (do not modify)."""
        return self._subs.get(topic, _NOBODY)

    def subscriptions(self) -> list[tuple[str, set[SimConnection]]]:
        """Every (topic, subscribers) with at least one subscriber, in first-subscription order."""
        return list(self._subs.items())

    def add_subscription(self, conn: SimConnection, topic: str) -> None:
        conn.topics.add(topic)
        self._subs.setdefault(topic, set()).add(conn)

    def drop_subscription(self, conn: SimConnection, topic: str) -> None:
        conn.topics.discard(topic)
        conn._cursors.pop(topic, None)
        self.on_drop_topic(conn, topic)
        subs = self._subs.get(topic)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self._subs[topic]

    def take_changed(self) -> list[str]:
        """Market ids that changed since the last call, in order of first change (one consumer per
        server; another can compare `last_change` with the time of its own last run)."""
        changed, self._changed = self._changed, {}
        return list(changed)

    def take_skip(self, symbol: str) -> bool:
        """True if this book change of market id `symbol` must not be sent (`skip_version`)."""
        if self._skip.get(symbol):
            self._skip[symbol] -= 1  # applied to the truth, never sent: clients see a gap
            return True
        return False

    def copies(self, symbol: str) -> int:
        """How many times to send this book update of `symbol` (2 while `duplicate_version` is pending)."""
        if self._duplicate.get(symbol):
            self._duplicate[symbol] -= 1
            return 2
        return 1

    def take_subscribe_failure(self) -> bool:
        """True if the topic being subscribed must be refused (`fail_next_subscribe`)."""
        if self._fail_subscribe > 0:
            self._fail_subscribe -= 1
            return True
        return False

    def start_tape(self, conn: SimConnection, topic: str, frames: Sequence[Any], is_trade: bool) -> None:
        """Full-speed mode: (re)play `frames` to `conn` from the start; a trade tape holds (frame, trades)."""
        conn._cursors[topic] = TapeCursor(frames, is_trade)

    def broadcast(self, frame: Frame) -> None:
        """`frame` to every open connection."""
        for conn in self.open_connections:
            conn.push_frame(frame)

    # ---- ground truth -----------------------------------------------------------------------------

    def truth_book(self, symbol: str) -> tuple[int, dict[float, float], dict[float, float]]:
        view = self.market.book(symbol)
        return self.truth_seq(view.symbol), view.bids_float(), view.asks_float()

    def truth_book_strings(self, symbol: str) -> tuple[int, dict[str, str], dict[str, str]]:
        view = self.market.book(symbol)
        return self.truth_seq(view.symbol), view.bids, view.asks

    def truth_trades(self, symbol: str) -> list[Trade]:
        """Every trade the market generated for `symbol`, sent or not (`Trade.symbol` is the market id)."""
        return self.market.trades(symbol)

    def truth_klines(self, symbol: str, step_minutes: int = 1) -> list[Kline]:
        return self.market.klines(symbol, step_minutes)

    def sent_trades(self, symbol: str, conn: SimConnection | None = None) -> list[Trade]:
        """Trades actually written to `conn` (or to any connection), in market order."""
        wire = self.wire(self.market.resolve(symbol))
        if conn is not None:
            return list(conn.sent_trades.get(wire, ()))
        sent = {id(t) for c in self.connections for t in c.sent_trades.get(wire, ())}
        return [t for t in self.market.trades(symbol) if id(t) in sent]

    @property
    def open_connections(self) -> list[SimConnection]:
        return [c for c in self.connections if not c.closed]

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until every open connection has written out what is queued for it."""
        deadline = time.monotonic() + timeout
        while any(c._out or self._tape_pending(c) for c in self.open_connections if not c.dead):
            if time.monotonic() > deadline:
                raise TimeoutError("connections did not drain")
            await asyncio.sleep(0.005)

    # ---- fault injection ------------------------------------------------------------------------

    def skip_version(self, symbol: str, count: int = 1) -> None:
        """The next `count` changes of `symbol` reach the truth book but are never sent."""
        name = self.market.resolve(symbol)
        self._skip[name] = self._skip.get(name, 0) + count

    def duplicate_version(self, symbol: str, count: int = 1) -> None:
        """The next `count` updates of `symbol` are each sent twice."""
        name = self.market.resolve(symbol)
        self._duplicate[name] = self._duplicate.get(name, 0) + count

    def send_stale_version(self, symbol: str, back: int = 2) -> None:
        """Send, now, an update whose sequence went backwards, carrying a level absent from the truth.

        A client that applies it instead of dropping it ends up with a book that differs from the truth.
        """
        topic, frame = self.stale_update(self.market.resolve(symbol), back)
        for conn in self.subscribers(topic):
            conn.push_frame(frame)

    def drop_connections(self) -> int:
        """Abort every open connection (TCP reset, no close frame). Returns how many were dropped."""
        live = self.open_connections
        for conn in live:
            conn.abort()
        return len(live)

    def go_dead(self, new_connections: bool = False) -> None:
        """Open connections stop sending anything and stop answering pings (a hung server).

        With `new_connections`, sockets accepted from now on are dead too.
        """
        for conn in self.open_connections:
            conn.dead = True
            conn._alive.clear()
        self._dead_new = new_connections

    def revive(self) -> None:
        self._dead_new = False
        for conn in self.connections:
            conn.dead = False
            conn._alive.set()

    def send_malformed_json(self) -> None:
        """A frame that decodes fine but is not JSON (truncated)."""
        self.broadcast(self.malformed_frame())

    def send_invalid_deflate(self) -> None:
        """A frame that does not decompress."""
        self.broadcast(self._compressed_fault(self.invalid_compressed_frame()))

    def send_deflate_bomb(self, inflated_size: int = 16 * 1024 * 1024) -> int:
        """A small frame decompressing to `inflated_size` bytes of valid JSON. Returns its size."""
        frame = self._compressed_fault(self.compression_bomb(inflated_size))
        self.broadcast(frame)
        return len(frame)

    def send_oversized_frame(self, size: int = 8 * 1024 * 1024) -> int:
        """A frame of about `size` bytes on the wire. Returns its size."""
        frame = self.oversized_frame(size)
        for conn in self.open_connections:
            conn.push(OVERSIZED, frame)
        return len(frame)

    def fail_next_subscribe(self, count: int = 1) -> None:
        """The next `count` subscribed topics (any connection) are refused."""
        self._fail_subscribe += count

    def accept_subscribes(self) -> None:
        """Subscriptions are taken again: what `fail_next_subscribe` still had to refuse is forgotten."""
        self._fail_subscribe = 0

    def fail_rest(self, status: int = 429, count: int = 1, retry_after: float | None = None) -> None:
        """The next `count` REST requests fail with `status` (429 answers as `too_many_requests`)."""
        self._rest_faults.extend([(status, retry_after)] * count)

    def _compressed_fault(self, frame: bytes | None) -> bytes:
        if frame is None:
            raise NotImplementedError(f"{type(self).__name__} sends no compressed frames")
        return frame

    # ---- WebSocket ------------------------------------------------------------------------------

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        # autoping=False: protocol PINGs are answered here, so they count as client traffic and go
        # silent when the server is "dead".
        ws = web.WebSocketResponse(
            autoping=False, compress=self.ws_compress, timeout=2.0, max_msg_size=self.ws_max_message
        )
        try:
            await ws.prepare(request)
        except ConnectionError:  # the client left during the handshake (its own timeout, say): no one to serve
            return web.Response()  # whose write meets the closed transport too, which aiohttp takes quietly
        conn = SimConnection(
            next(self._ids), ws, request, opened_at=time.monotonic(), last_rx=time.monotonic()
        )
        conn.dead = self._dead_new
        if not conn.dead:
            conn._alive.set()
        self.connections.append(conn)
        sender = asyncio.create_task(self._sender(conn))
        try:
            self.on_open(conn)
            async for msg in ws:
                conn.last_rx = time.monotonic()
                if conn.dead:
                    continue
                if msg.type is WSMsgType.TEXT:
                    if not self._over_budget(conn):
                        self.on_text(conn, msg.data)
                elif msg.type is WSMsgType.PING:
                    conn.push(PONG, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    self.on_binary(conn, msg.data)
        finally:
            conn.closed = True
            for topic in list(conn.topics):
                self.drop_subscription(conn, topic)
            if not self.record_sent:
                self.connections.remove(conn)  # nothing to keep for ground truth
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        return ws

    def _over_budget(self, conn: SimConnection) -> bool:
        """Count a client message in its window; past `client_budget`, `on_over_budget` and True."""
        if self.client_budget is None:
            return False
        limit, window = self.client_budget
        now = time.monotonic()
        recent = conn._recent
        recent.append(now)
        while recent and recent[0] < now - window:
            recent.popleft()
        if len(recent) > limit:
            self.on_over_budget(conn)
            return True
        return False

    async def _idle_loop(self) -> None:
        """Close sockets without client traffic for `idle_timeout`."""
        period = max(0.01, min(1.0, self.idle_timeout / 10))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in self.open_connections:
                if not conn.dead and now - conn.last_rx > self.idle_timeout:
                    # Directly, not through the queue: a client that stopped reading must go too.
                    conn.closed = True
                    closer = asyncio.create_task(self._close(conn, 1000, b"idle timeout"))
                    self._closers.add(closer)
                    closer.add_done_callback(self._closers.discard)

    # ---- sending --------------------------------------------------------------------------------

    async def _sender(self, conn: SimConnection) -> None:
        """The only writer of `conn`: queued frames first, then (full-speed mode) the tapes."""
        ws = conn.ws
        try:
            while not conn.closed:
                if conn.dead:
                    await conn._alive.wait()
                    continue
                if conn._out:
                    if await self._send_queued(conn, ws):
                        return
                elif self._tape_pending(conn):
                    await self._send_tape(conn, ws)
                else:
                    conn._wake.clear()
                    await conn._wake.wait()
        except (ConnectionError, RuntimeError):
            conn.closed = True

    async def _send_queued(self, conn: SimConnection, ws: web.WebSocketResponse) -> bool:
        """Write up to a batch of queued items; True once the connection is closed."""
        out = conn._out
        for _ in range(256):
            if not out or conn.dead or conn.closed:
                break
            kind, payload, trades = out.popleft()
            if kind == BIN:
                await ws.send_bytes(payload)
                conn.bytes_sent += len(payload)
                if trades:
                    self._log_trades(conn, trades)
            elif kind == TEXT:
                await ws.send_str(payload)
                if trades:
                    self._log_trades(conn, trades)
            elif kind == OVERSIZED:
                conn.unreadable = True  # before the write: a client may close as soon as it reads it
                await (ws.send_bytes(payload) if isinstance(payload, bytes) else ws.send_str(payload))
                conn.bytes_sent += len(payload)
            elif kind == PONG:
                await ws.pong(payload)
            elif kind == PING:
                await ws.ping(payload)
            else:
                await self._close(conn, payload, b"")
                return True
            conn.frames_sent += 1
        # Yield so that the handler and other connections get a turn: writes rarely suspend.
        await asyncio.sleep(0)
        return conn.closed

    def _log_trades(self, conn: SimConnection, trades: Sequence[Trade]) -> None:
        if not self.record_sent:
            return
        wire = self.wire(trades[0].symbol)
        logs = conn.unread_trades if conn.unreadable else conn.sent_trades
        log = logs.get(wire)
        if log is None:
            log = logs[wire] = []
        log.extend(trades)

    @staticmethod
    def _tape_pending(conn: SimConnection) -> bool:
        return any(c.index < len(c.frames) for c in conn._cursors.values())

    async def _send_tape(self, conn: SimConnection, ws: web.WebSocketResponse) -> None:
        """One round-robin pass over the connection's topics, a batch of frames each."""
        now = time.monotonic()
        for cursor in list(conn._cursors.values()):
            end = min(len(cursor.frames), cursor.index + 64)
            while cursor.index < end:
                if conn._out or conn.dead or conn.closed:
                    return  # control frames (acks, pongs, snapshots) go first
                item = cursor.frames[cursor.index]
                cursor.index += 1
                frame, trades = item if cursor.is_trade else (item, None)
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)
                if trades:
                    self._log_trades(conn, trades)
                conn.frames_sent += 1
                conn.bytes_sent += len(frame)
            cursor.last_push = now
            await asyncio.sleep(0)

    async def _close(self, conn: SimConnection, code: int, message: bytes = b"") -> None:
        conn.closed = True
        conn._wake.set()
        try:
            await asyncio.wait_for(conn.ws.close(code=code, message=message), 2.0)
        except (TimeoutError, ConnectionError, RuntimeError):
            conn.abort()

    # ---- REST -----------------------------------------------------------------------------------

    def _route(self, request: web.Request) -> str:
        """The route pattern a request matched, relative to `rest_prefix` (its path if none matched)."""
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else request.path
        return path.removeprefix(self.rest_prefix)

    @web.middleware
    async def _rest_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == self.ws_path or request.path in self.ws_extra_paths:
            return await handler(request)
        route = self._route(request)
        limit = self.rest_limit(route)
        used, window = self._count_request(route, limit)
        headers = self.rate_headers(route, used, limit, window)
        if self._rest_faults:
            status, retry_after = self._rest_faults.popleft()
            return self._fault_response(status, retry_after, headers)
        if self.rest_rate_limits and limit is not None and used > limit[0]:
            return self.too_many_requests(headers)
        response = await handler(request)
        response.headers.update(headers)
        return response

    def _count_request(self, route: str, limit: tuple[int, float] | None) -> tuple[int, float]:
        """Count the request in its route's fixed window: (requests so far in it, window seconds)."""
        window = limit[1] if limit is not None else 1.0
        now = time.monotonic()
        start, used = self._rest_windows.get(route, (now, 0))
        if now - start >= window:
            start, used = now, 0
        used += 1
        self._rest_windows[route] = (start, used)
        return used, window

    def _fault_response(
        self, status: int, retry_after: float | None, headers: dict[str, str]
    ) -> web.Response:
        if retry_after is not None:
            headers = {**headers, "Retry-After": f"{retry_after:g}"}
        if status == 429:
            return self.too_many_requests(headers)
        # Gateways answer 5xx with non-JSON bodies; a client must not assume the venue's envelope.
        return web.Response(status=status, text=f"<html><body>{status} Error</body></html>", headers=headers)


def int_param(request: web.Request, name: str, default: int | None) -> int | None:
    """Query parameter `name` as an int: `default` when absent, None when not an integer."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        return None


__all__ = [
    "BIN",
    "CLOSE",
    "MAX_BACKLOG",
    "PING",
    "PONG",
    "TEXT",
    "Frame",
    "Handler",
    "Periodic",
    "SimConnection",
    "SimServer",
    "TapeCursor",
    "int_param",
]
