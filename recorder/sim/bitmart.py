"""BitMart spot wire front-end for the synthetic market: the public WebSocket (`/api?protocol=1.1`) and the
public REST API, served by one aiohttp app on one loopback port.

Wire facts follow ../shared/protocols/bitmart.md (§1-§3, §7). Besides faithful behaviour it keeps ground
truth (the book behind every version, every trade actually sent to each connection) and offers fault
injection, so tests can check a client against what really happened rather than against its own parsing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import random
import time
import uuid
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from recorder.sim.market import (
    ASK,
    BID,
    PRE_TRADE_SPEC,
    Kline,
    Market,
    MarketEvent,
    SymbolSpec,
    Trade,
    format_units,
    parse_units,
    resolve_specs,
)

# ---- wire constants -------------------------------------------------------------------------------

TRADE = "spot/trade"
INCREASE = "spot/depth/increase100"
TICKER = "spot/ticker"
BOOK_TICKER = "spot/bookTicker"
DEPTH_ALL = {"spot/depth5": 5, "spot/depth20": 20, "spot/depth50": 50}
KLINE_STEPS = {  # WS kline channel -> minutes
    "spot/kline1m": 1,
    "spot/kline3m": 3,
    "spot/kline5m": 5,
    "spot/kline15m": 15,
    "spot/kline30m": 30,
    "spot/kline45m": 45,
    "spot/kline1H": 60,
    "spot/kline2H": 120,
    "spot/kline3H": 180,
    "spot/kline4H": 240,
    "spot/kline1D": 1440,
    "spot/kline1W": 10080,
    "spot/kline1M": 43200,
}
CHANNELS = frozenset({TRADE, INCREASE, TICKER, BOOK_TICKER, *DEPTH_ALL, *KLINE_STEPS})
INCREASE_DEPTH = 100

MAX_TOPICS_PER_MESSAGE = 20
MAX_TOPICS_PER_CONNECTION = 115
MAX_MESSAGES_PER_WINDOW = 100
MESSAGE_WINDOW_S = 10.0
# A client this far behind is dropped, as a real server would rather than buffer without bound.
MAX_BACKLOG = 200_000

WS_ERRORS = {
    "90001": "Invalid message format",
    "90002": "Invalid op param",
    "90003": "Invalid args param",
    "90004": "Invalid channel param",
    "90005": "Topic quantity in single subscription exceeds limit",
    "90006": "Subscribed total topic quantity exceeds limit",
    "90007": "Subscribed message frequency exceeds limit, please try later",
    "90008": "Duplicate subscription",
    "91002": "API KEY not found",
    "92001": "Invalid symbol param",
}

# REST: per-endpoint (limit, window seconds), per IP [DOC-SPOT §Rate Limit].
REST_LIMITS: dict[str, tuple[int, int]] = {
    "/system/time": (10, 1),
    "/system/service": (10, 1),
    "/spot/v1/currencies": (8, 2),
    "/spot/v1/symbols": (8, 2),
    "/spot/v1/symbols/details": (12, 2),
    "/spot/quotation/v3/tickers": (10, 2),
    "/spot/quotation/v3/ticker": (15, 2),
    "/spot/quotation/v3/lite-klines": (15, 2),
    "/spot/quotation/v3/klines": (10, 2),
    "/spot/quotation/v3/books": (15, 2),
    "/spot/quotation/v3/trades": (15, 2),
    # Not in bitmart.md: from ccxt's cost weights (3 = 10/s), i.e. 1/s and 6/s.
    "/account/v1/currencies": (2, 2),
    "/contract/public/details": (12, 2),
}
KLINE_REST_STEPS = frozenset({1, 3, 5, 15, 30, 45, 60, 120, 180, 240, 1440, 10080, 43200})
KLINE_MAX_LIMIT = 200


# ---- frame encoding -------------------------------------------------------------------------------


def deflate(payload: bytes) -> bytes:
    """One independent raw-DEFLATE stream, as every BitMart spot push is.

    memLevel 5 instead of the default 8: same wire format, but zlib's per-stream allocation stays under
    the malloc mmap threshold, which makes a fresh compressor per frame ~10x cheaper (5 µs vs 60 µs).
    """
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS, 5)
    return compressor.compress(payload) + compressor.flush()


def encode_push(table: str, items: list[dict[str, Any]]) -> bytes:
    return deflate(orjson.dumps({"table": table, "data": items}))


def depth_message(
    symbol: str,
    version: int,
    kind: str,
    bids: list[list[str]],
    asks: list[list[str]],
    ms_t: int,
) -> bytes:
    item = {"asks": asks, "bids": bids, "ms_t": ms_t, "symbol": symbol, "type": kind, "version": version}
    return encode_push(INCREASE, [item])


def trade_message(trades: Sequence[Trade]) -> bytes:
    items = [
        {
            "symbol": t.symbol,
            "side": t.side,
            "price": t.price,
            "size": t.size,
            "s_t": t.ts_ms // 1000,
            "ms_t": t.ts_ms,
        }
        for t in trades
    ]
    return encode_push(TRADE, items)


def book_ticker_message(symbol: str, touch: tuple[str, str, str, str], ms_t: int) -> bytes:
    """`spot/bookTicker` (bitmart.md §2.6: fields from the official Go SDK and BitMart.Net, no wire sample)."""
    bid_px, bid_sz, ask_px, ask_sz = touch
    item = {
        "symbol": symbol,
        "bid_px": bid_px,
        "bid_sz": bid_sz,
        "ask_px": ask_px,
        "ask_sz": ask_sz,
        "ms_t": ms_t,
    }
    return encode_push(BOOK_TICKER, [item])


def split_changes(event: MarketEvent) -> tuple[list[list[str]], list[list[str]]]:
    bids = [[price, size] for side, price, size in event.changes if side == BID]
    asks = [[price, size] for side, price, size in event.changes if side == ASK]
    return bids, asks


def error_text(event: str | None, code: str) -> str:
    body: dict[str, str] = {} if event is None else {"event": event}
    body["errorCode"] = code
    body["errorMessage"] = WS_ERRORS.get(code, "Internal system error")
    return orjson.dumps(body).decode()


def ack_text(op: str, topic: str) -> str:
    return orjson.dumps({"event": op, "topic": topic}).decode()


# ---- connections ----------------------------------------------------------------------------------

_BIN, _TEXT, _PONG, _CLOSE = range(4)
_Item = tuple[int, Any, Sequence[Trade] | None]


@dataclass(slots=True)
class _Tape:
    """Full-speed mode: one symbol's pre-encoded history, replayed to each subscriber from the start."""

    snapshot: bytes  # increase100 snapshot of the state before the first update
    depth: list[bytes] = field(default_factory=list)
    trades: list[tuple[bytes, tuple[Trade, ...]]] = field(default_factory=list)
    start_version: int = 0
    end_version: int = 0


@dataclass(slots=True)
class _Cursor:
    frames: list[Any]
    is_trade: bool
    index: int = 0
    last_push: float = 0.0  # loop time of the last frame or heartbeat (for tape heartbeats)


@dataclass(eq=False)
class SimConnection:
    """Server side of one client WebSocket, with what it was sent (ground truth per connection)."""

    id: int
    ws: web.WebSocketResponse
    request: web.Request
    opened_at: float
    topics: set[str] = field(default_factory=set)
    sent_trades: dict[str, list[Trade]] = field(default_factory=dict)
    frames_sent: int = 0
    bytes_sent: int = 0
    closed: bool = False
    last_rx: float = 0.0
    dead: bool = False
    _out: deque[_Item] = field(default_factory=deque)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _alive: asyncio.Event = field(default_factory=asyncio.Event)
    _recent: deque[float] = field(default_factory=deque)
    _cursors: dict[str, _Cursor] = field(default_factory=dict)
    _touch_sent: dict[str, tuple[str, str, str, str]] = field(default_factory=dict)  # bookTicker, per symbol

    def push(self, kind: int, payload: Any, trades: Sequence[Trade] | None = None) -> None:
        if self.closed:
            return
        if len(self._out) >= MAX_BACKLOG:
            self.abort()  # a consumer this slow is cut off, as the exchange would
            return
        self._out.append((kind, payload, trades))
        self._wake.set()

    def push_text(self, text: str) -> None:
        self.push(_TEXT, text)

    def push_binary(self, frame: bytes, trades: Sequence[Trade] | None = None) -> None:
        self.push(_BIN, frame, trades)

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


# ---- the simulator --------------------------------------------------------------------------------


class BitmartSpotSim:
    """Simulated BitMart spot exchange (public market data) on 127.0.0.1.

    `rate` is market events per second over all symbols; `rate=0` is full-speed mode, where
    `tape_events` events are generated and encoded at start and blasted to each subscriber as fast as
    its socket takes them (versions chain from each topic's snapshot to the end of the tape).

    Ground truth: `truth_book`, `truth_trades`, `truth_klines`, `sent_trades`, `connections`.
    Faults: `skip_version`, `duplicate_version`, `send_stale_version` (live mode only), `drop_connections`,
    `go_dead`/`revive`, `send_malformed_json`, `send_invalid_deflate`, `send_deflate_bomb`,
    `send_oversized_frame`, `fail_next_subscribe`, `fail_rest`.
    """

    def __init__(
        self,
        symbols: Sequence[str | SymbolSpec] | int | None = None,
        seed: int = 0,
        rate: float = 50.0,
        idle_timeout: float = 20.0,
        heartbeat_interval: float = 5.0,
        *,
        tape_events: int = 100_000,
        history_minutes: int = 0,
        full_book_interval: float = 0.5,
        include_pre_trade: bool = True,
        rest_rate_limits: bool = True,
        record_sent: bool = True,
        trade_log_limit: int | None = None,
    ) -> None:
        """`record_sent=False` and a `trade_log_limit` bound memory for long standalone runs; tests keep
        the defaults (complete ground truth)."""
        specs = resolve_specs(symbols, seed)
        if include_pre_trade and all(spec.name != PRE_TRADE_SPEC.name for spec in specs):
            specs.append(PRE_TRADE_SPEC)
        self.market = Market(specs, seed=seed, trade_log_limit=trade_log_limit)
        self.record_sent = record_sent
        self.rate = rate
        self.idle_timeout = idle_timeout
        self.heartbeat_interval = heartbeat_interval
        self.tape_events = tape_events
        self.history_minutes = history_minutes
        self.full_book_interval = full_book_interval
        self.rest_rate_limits = rest_rate_limits
        rng = random.Random(seed ^ 0xB1D)
        self._rng = rng
        # The exchange's book version per symbol (shared by all connections) = base + changes so far.
        self._version_base = {name: rng.randint(1_000_000, 9_000_000) for name in self.market.symbols}
        self._symbol_ids = {name: 1024 + i for i, name in enumerate(self.market.symbols)}
        self.connections: list[SimConnection] = []
        self._ids = itertools.count(1)
        self._subs: dict[str, set[SimConnection]] = {}
        self._last_change: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._tapes: dict[str, _Tape] = {}
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

    # ---- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def ws_url(self) -> str:
        return f"ws://{self._host}:{self._port}/api?protocol=1.1"

    @property
    def rest_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def symbols(self) -> list[str]:
        """Every listed symbol, including the pre-trade one."""
        return self.market.symbols

    @property
    def trading_symbols(self) -> list[str]:
        return list(self.market.active)

    @property
    def full_speed(self) -> bool:
        return self.rate <= 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> BitmartSpotSim:
        if self.history_minutes > 0:
            now = self.market.clock()
            per_symbol = self.history_minutes * 10  # ~2 trades a minute: enough for klines
            self.market.backfill(
                now - self.history_minutes * 60_000, now, per_symbol * len(self.market.active)
            )
        if self.full_speed:
            self._build_tapes()
        app = web.Application()
        app.middlewares.append(self._rest_middleware)
        app.router.add_get("/api", self._ws_handler)
        for path, handler in self._rest_routes().items():
            app.router.add_get(path, handler)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        # A wildcard bind is still reached through loopback by local clients.
        self._host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        now = time.monotonic()
        self._last_change = dict.fromkeys(self.market.symbols, now)
        self._tasks = [asyncio.create_task(self._heartbeat_loop()), asyncio.create_task(self._idle_loop())]
        if not self.full_speed:
            self._tasks += [
                asyncio.create_task(self._market_loop()),
                asyncio.create_task(self._full_book_loop()),
            ]
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

    async def __aenter__(self) -> BitmartSpotSim:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

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
                "full-speed mode replays a pre-built tape; live steps would break its versions"
            )
        events = [self.market.step(symbol) for _ in range(count)]
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
        self._last_change[symbol] = time.monotonic()
        self._dirty.add(symbol)
        if event.trades:
            subs = self._subs.get(f"{TRADE}:{symbol}")
            if subs:
                frame = trade_message(event.trades)
                for conn in subs:
                    conn.push_binary(frame, event.trades)
        if self._skip.get(symbol):
            self._skip[symbol] -= 1  # applied to the truth, never sent: clients see a version gap
            return
        subs = self._subs.get(f"{INCREASE}:{symbol}")
        if not subs:
            return
        bids, asks = split_changes(event)
        version = self._version_base[symbol] + event.seq
        frame = depth_message(symbol, version, "update", bids, asks, event.ts_ms)
        copies = 1
        if self._duplicate.get(symbol):
            self._duplicate[symbol] -= 1
            copies = 2
        for conn in subs:
            for _ in range(copies):
                conn.push_binary(frame)

    # ---- ground truth -----------------------------------------------------------------------------

    def version(self, symbol: str) -> int:
        """The current book version of `symbol` (in full-speed mode: the version at the tape's end)."""
        return self._version_base[symbol] + self.market.seq(symbol)

    def truth_book(self, symbol: str) -> tuple[int, dict[float, float], dict[float, float]]:
        view = self.market.book(symbol)
        return self._version_base[symbol] + view.seq, view.bids_float(), view.asks_float()

    def truth_book_strings(self, symbol: str) -> tuple[int, dict[str, str], dict[str, str]]:
        view = self.market.book(symbol)
        return self._version_base[symbol] + view.seq, view.bids, view.asks

    def truth_trades(self, symbol: str) -> list[Trade]:
        """Every trade the market generated for `symbol`, sent or not."""
        return self.market.trades(symbol)

    def truth_klines(self, symbol: str, step_minutes: int = 1) -> list[Kline]:
        return self.market.klines(symbol, step_minutes)

    def sent_trades(self, symbol: str, conn: SimConnection | None = None) -> list[Trade]:
        """Trades actually written to `conn` (or to any connection), in market order."""
        if conn is not None:
            return list(conn.sent_trades.get(symbol, ()))
        sent = {id(t) for c in self.connections for t in c.sent_trades.get(symbol, ())}
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
        self._skip[symbol] = self._skip.get(symbol, 0) + count

    def duplicate_version(self, symbol: str, count: int = 1) -> None:
        """The next `count` updates of `symbol` are each sent twice."""
        self._duplicate[symbol] = self._duplicate.get(symbol, 0) + count

    def send_stale_version(self, symbol: str, back: int = 2) -> None:
        """Send, now, an update whose version went backwards, carrying a level absent from the truth.

        A client that applies it instead of dropping it ends up with a book that differs from the truth.
        """
        view = self.market.book(symbol)
        spec = self.market.spec(symbol)
        best_bid = parse_units(next(iter(view.bids)), spec.price_decimals) if view.bids else 10
        price = best_bid - 1
        while format_units(price, spec.price_decimals) in view.bids and price > 1:
            price -= 1
        bogus = [[format_units(price, spec.price_decimals), spec.lot]]
        frame = depth_message(symbol, self.version(symbol) - back, "update", bogus, [], self.market.clock())
        for conn in self._subs.get(f"{INCREASE}:{symbol}", ()):
            conn.push_binary(frame)

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
        """A BINARY frame that inflates fine but is not JSON (truncated)."""
        self._broadcast(deflate(b'{"table":"spot/trade","data":[{"symbol":"BTC_US'))

    def send_invalid_deflate(self) -> None:
        """A BINARY frame that is not a raw-deflate stream (block type 3 is reserved)."""
        self._broadcast(b"\x07\xffnot a deflate stream")

    def send_deflate_bomb(self, inflated_size: int = 16 * 1024 * 1024) -> int:
        """A small BINARY frame inflating to `inflated_size` bytes of valid JSON. Returns its size."""
        head, tail = b'{"table":"spot/trade","data":[', b"]}"
        frame = deflate(head + b" " * (inflated_size - len(head) - len(tail)) + tail)
        self._broadcast(frame)
        return len(frame)

    def send_oversized_frame(self, size: int = 8 * 1024 * 1024) -> int:
        """A BINARY frame of about `size` bytes on the wire (incompressible). Returns its size."""
        pad = base64.b64encode(self._rng.randbytes(size)).decode()
        frame = deflate(orjson.dumps({"table": "spot/notice", "data": [{"symbol": "", "pad": pad}]}))
        self._broadcast(frame)
        return len(frame)

    def fail_next_subscribe(self, count: int = 1) -> None:
        """The next `count` subscribed topics (any connection) are refused with 90004."""
        self._fail_subscribe += count

    def fail_rest(self, status: int = 429, count: int = 1, retry_after: float | None = None) -> None:
        """The next `count` REST requests fail with `status` (429 carries code 30013)."""
        self._rest_faults.extend([(status, retry_after)] * count)

    def _broadcast(self, frame: bytes) -> None:
        for conn in self.open_connections:
            conn.push_binary(frame)

    # ---- WebSocket ------------------------------------------------------------------------------

    async def _ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        # autoping=False: protocol PINGs are answered here, so they count as client traffic and go
        # silent when the server is "dead". compress=False: pushes are already raw-deflated.
        ws = web.WebSocketResponse(autoping=False, compress=False, timeout=2.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        conn = SimConnection(
            next(self._ids), ws, request, opened_at=time.monotonic(), last_rx=time.monotonic()
        )
        conn.dead = self._dead_new
        if not conn.dead:
            conn._alive.set()
        self.connections.append(conn)
        sender = asyncio.create_task(self._sender(conn))
        try:
            async for msg in ws:
                conn.last_rx = time.monotonic()
                if msg.type is WSMsgType.TEXT:
                    self._on_text(conn, msg.data)
                elif msg.type is WSMsgType.PING:
                    if not conn.dead:
                        conn.push(_PONG, msg.data)
                elif msg.type is WSMsgType.BINARY and not conn.dead:
                    conn.push_text(error_text(None, "90001"))
        finally:
            conn.closed = True
            self._unsubscribe_all(conn)
            if not self.record_sent:
                self.connections.remove(conn)  # nothing to keep for ground truth
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        return ws

    def _on_text(self, conn: SimConnection, text: str) -> None:
        if conn.dead:
            return
        now = time.monotonic()
        conn._recent.append(now)
        while conn._recent and conn._recent[0] < now - MESSAGE_WINDOW_S:
            conn._recent.popleft()
        if len(conn._recent) > MAX_MESSAGES_PER_WINDOW:
            conn.push_text(error_text(None, "90007"))
            conn.push(_CLOSE, 1008)
            return
        if text == "ping":
            conn.push_text("pong")
            return
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            conn.push_text(error_text(None, "90001"))
            return
        if not isinstance(request, dict):
            conn.push_text(error_text(None, "90001"))
            return
        op, args = request.get("op"), request.get("args")
        if op not in ("subscribe", "unsubscribe", "request", "login"):
            conn.push_text(error_text(op if isinstance(op, str) else None, "90002"))
        elif op == "login":
            conn.push_text(error_text(op, "91002"))
        elif not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            conn.push_text(error_text(op, "90003"))
        elif op == "subscribe":
            self._subscribe(conn, args)
        elif op == "unsubscribe":
            self._unsubscribe(conn, args)
        else:
            self._request(conn, args)

    def _check_topic(self, topic: str) -> tuple[str | None, str, str]:
        """(error code or None, channel, symbol)."""
        channel, sep, symbol = topic.partition(":")
        if not sep or channel not in CHANNELS:
            return "90004", channel, symbol
        if symbol not in self.market.specs:
            return "92001", channel, symbol
        return None, channel, symbol

    def _subscribe(self, conn: SimConnection, topics: list[str]) -> None:
        if len(topics) > MAX_TOPICS_PER_MESSAGE:
            conn.push_text(error_text("subscribe", "90005"))
            return
        for topic in topics:
            code, channel, symbol = self._check_topic(topic)
            if code is None and self._fail_subscribe > 0:
                self._fail_subscribe -= 1
                code = "90004"
            if code is None and topic in conn.topics:
                code = "90008"
            if code is None and len(conn.topics) >= MAX_TOPICS_PER_CONNECTION:
                code = "90006"
            if code is not None:
                conn.push_text(error_text("subscribe", code))
                continue
            conn.topics.add(topic)
            self._subs.setdefault(topic, set()).add(conn)
            conn.push_text(ack_text("subscribe", topic))
            self._initial_push(conn, channel, symbol)

    def _unsubscribe(self, conn: SimConnection, topics: list[str]) -> None:
        for topic in topics:
            code, _, _ = self._check_topic(topic)
            if code is not None:
                conn.push_text(error_text("unsubscribe", code))
                continue
            self._drop_topic(conn, topic)
            conn.push_text(ack_text("unsubscribe", topic))

    def _request(self, conn: SimConnection, topics: list[str]) -> None:
        for topic in topics:
            code, channel, symbol = self._check_topic(topic)
            if code is None and channel != INCREASE:
                code = "90004"  # `request` exists for the incremental depth channel only
            if code is not None:
                conn.push_text(error_text("request", code))
                continue
            self._send_snapshot(conn, symbol, restart_tape=topic in conn.topics)

    def _drop_topic(self, conn: SimConnection, topic: str) -> None:
        conn.topics.discard(topic)
        conn._cursors.pop(topic, None)
        channel, _, symbol = topic.partition(":")
        if channel == BOOK_TICKER:
            conn._touch_sent.pop(symbol, None)
        subs = self._subs.get(topic)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self._subs[topic]

    def _unsubscribe_all(self, conn: SimConnection) -> None:
        for topic in list(conn.topics):
            self._drop_topic(conn, topic)

    def _initial_push(self, conn: SimConnection, channel: str, symbol: str) -> None:
        if channel == INCREASE:
            self._send_snapshot(conn, symbol, restart_tape=True)
        elif channel == TRADE:
            if self.full_speed and symbol in self._tapes:
                conn._cursors[f"{TRADE}:{symbol}"] = _Cursor(self._tapes[symbol].trades, True)
        elif channel == BOOK_TICKER:
            if not self.full_speed:
                self._push_book_ticker(symbol, (conn,))
        elif not self.full_speed:
            frame = self._full_book_frame(channel, symbol)
            if frame is not None:
                conn.push_binary(frame)

    def _send_snapshot(self, conn: SimConnection, symbol: str, restart_tape: bool) -> None:
        tape = self._tapes.get(symbol)
        if tape is not None:
            conn.push_binary(tape.snapshot)
            if restart_tape:
                conn._cursors[f"{INCREASE}:{symbol}"] = _Cursor(tape.depth, False)
            return
        view = self.market.book(symbol)
        bids, asks = view.top(INCREASE_DEPTH)
        ms_t = self.market.clock()
        conn.push_binary(depth_message(symbol, self.version(symbol), "snapshot", bids, asks, ms_t))

    # ---- periodic pushes ------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Empty increase100 updates repeating the current version for symbols quiet for a while."""
        period = max(0.01, min(1.0, self.heartbeat_interval / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for topic, subs in list(self._subs.items()):
                channel, _, symbol = topic.partition(":")
                if channel != INCREASE:
                    continue
                if symbol in self._tapes:
                    self._tape_heartbeats(symbol, topic, subs, now)
                elif now - self._last_change[symbol] >= self.heartbeat_interval:
                    self._last_change[symbol] = now
                    frame = depth_message(symbol, self.version(symbol), "update", [], [], self.market.clock())
                    for conn in subs:
                        conn.push_binary(frame)

    def _tape_heartbeats(self, symbol: str, topic: str, subs: set[SimConnection], now: float) -> None:
        # Per connection: each replays the tape at its own pace, so only one that finished it may get
        # a heartbeat (with the tape's last version).
        tape = self._tapes[symbol]
        frame: bytes | None = None
        for conn in subs:
            cursor = conn._cursors.get(topic)
            if cursor is None or cursor.index < len(cursor.frames):
                continue
            if now - cursor.last_push >= self.heartbeat_interval:
                cursor.last_push = now
                if frame is None:
                    frame = depth_message(symbol, tape.end_version, "update", [], [], self.market.clock())
                conn.push_binary(frame)

    async def _full_book_loop(self) -> None:
        """depth5/20/50, ticker and kline pushes for symbols that changed, every `full_book_interval`;
        bookTicker pushes for those whose top of book changed since the subscriber's last push."""
        while True:
            await asyncio.sleep(self.full_book_interval)
            dirty, self._dirty = self._dirty, set()
            for symbol in dirty:
                subs = self._subs.get(f"{BOOK_TICKER}:{symbol}")
                if subs:
                    self._push_book_ticker(symbol, subs)
                for channel in (*DEPTH_ALL, TICKER, *KLINE_STEPS):
                    subs = self._subs.get(f"{channel}:{symbol}")
                    if not subs:
                        continue
                    frame = self._full_book_frame(channel, symbol)
                    if frame is None:
                        continue
                    for conn in subs:
                        conn.push_binary(frame)

    def _full_book_frame(self, channel: str, symbol: str) -> bytes | None:
        ms_t = self.market.clock()
        if channel in DEPTH_ALL:
            bids, asks = self.market.book(symbol).top(DEPTH_ALL[channel])
            return encode_push(channel, [{"asks": asks, "bids": bids, "symbol": symbol, "ms_t": ms_t}])
        if channel == TICKER:
            return encode_push(TICKER, [self._ticker_item(symbol, ms_t)])
        k = self.market.current_kline(symbol, KLINE_STEPS[channel])
        if k is None:
            return None
        candle = [k.open_time, k.open, k.high, k.low, k.close, k.volume]
        return encode_push(channel, [{"candle": candle, "symbol": symbol}])

    def _push_book_ticker(self, symbol: str, subs: Iterable[SimConnection]) -> None:
        """The current best bid/ask to each of `subs` that was not sent exactly this touch last."""
        touch = self._touch(symbol)
        frame: bytes | None = None
        for conn in subs:
            if conn._touch_sent.get(symbol) == touch:
                continue
            if frame is None:
                frame = book_ticker_message(symbol, touch, self.market.clock())
            conn._touch_sent[symbol] = touch
            conn.push_binary(frame)

    def _ticker_item(self, symbol: str, ms_t: int) -> dict[str, Any]:
        stats = self.market.stats_24h(symbol, ms_t)
        bid_px, bid_sz, ask_px, ask_sz = self._touch(symbol)
        return {
            "ask_px": ask_px,
            "ask_sz": ask_sz,
            "base_volume_24h": stats.base_volume,
            "bid_px": bid_px,
            "bid_sz": bid_sz,
            "fluctuation": stats.fluctuation,
            "high_24h": stats.high,
            "last_price": stats.last,
            "low_24h": stats.low,
            "ms_t": ms_t,
            "open_24h": stats.open,
            "quote_volume_24h": stats.quote_volume,
            "s_t": ms_t // 1000,
            "symbol": symbol,
        }

    def _touch(self, symbol: str) -> tuple[str, str, str, str]:
        bids, asks = self.market.book(symbol).top(1)
        bid = bids[0] if bids else ["0", "0"]
        ask = asks[0] if asks else ["0", "0"]
        return bid[0], bid[1], ask[0], ask[1]

    async def _idle_loop(self) -> None:
        """Close sockets without client traffic for `idle_timeout` (the exchange's 20 s rule)."""
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
        """The only writer of `conn`: queued frames first, then (full-speed mode) the tape."""
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
            if kind == _BIN:
                await ws.send_bytes(payload)
                conn.bytes_sent += len(payload)
                if trades:
                    self._log_trades(conn, trades)
            elif kind == _TEXT:
                await ws.send_str(payload)
            elif kind == _PONG:
                await ws.pong(payload)
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
        symbol = trades[0].symbol
        log = conn.sent_trades.get(symbol)
        if log is None:
            log = conn.sent_trades[symbol] = []
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
                if cursor.is_trade:
                    frame, trades = item
                    await ws.send_bytes(frame)
                    self._log_trades(conn, trades)
                else:
                    frame = item
                    await ws.send_bytes(frame)
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

    # ---- full-speed tapes -----------------------------------------------------------------------

    def _build_tapes(self) -> None:
        """Pre-generate and pre-encode `tape_events` events so that sending costs only the socket."""
        clock = self.market.clock
        for symbol in self.market.symbols:
            view = self.market.book(symbol)
            bids, asks = view.top(INCREASE_DEPTH)
            version = self.version(symbol)
            snapshot = depth_message(symbol, version, "snapshot", bids, asks, clock())
            self._tapes[symbol] = _Tape(snapshot, start_version=version, end_version=version)
        for event in self.market.steps(self.tape_events):
            tape = self._tapes[event.symbol]
            if event.trades:
                tape.trades.append((trade_message(event.trades), tuple(event.trades)))
            bids, asks = split_changes(event)
            tape.end_version = self._version_base[event.symbol] + event.seq
            tape.depth.append(
                depth_message(event.symbol, tape.end_version, "update", bids, asks, event.ts_ms)
            )

    # ---- REST -----------------------------------------------------------------------------------

    def _rest_routes(self) -> dict[str, Any]:
        return {
            "/system/time": self._rest_time,
            "/system/service": self._rest_service,
            "/spot/v1/currencies": self._rest_currencies,
            "/spot/v1/symbols": self._rest_symbols,
            "/spot/v1/symbols/details": self._rest_details,
            "/spot/quotation/v3/books": self._rest_books,
            "/spot/quotation/v3/trades": self._rest_trades,
            "/spot/quotation/v3/ticker": self._rest_ticker,
            "/spot/quotation/v3/tickers": self._rest_tickers,
            "/spot/quotation/v3/klines": self._rest_klines,
            "/spot/quotation/v3/lite-klines": self._rest_klines,
            "/account/v1/currencies": self._rest_account_currencies,
            # Futures host (api-cloud-v2) in production; ccxt's load_markets() fetches it too.
            "/contract/public/details": self._rest_contract_details,
        }

    @web.middleware
    async def _rest_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/api":
            return await handler(request)
        headers = self._rate_headers(request.path)
        if self._rest_faults:
            status, retry_after = self._rest_faults.popleft()
            return self._fault_response(status, retry_after, headers)
        limit = REST_LIMITS.get(request.path)
        if (
            self.rest_rate_limits
            and limit is not None
            and int(headers["X-BM-RateLimit-Remaining"]) > limit[0]
        ):
            return _envelope(None, headers, code=30013, message="Request too many requests", status=429)
        response = await handler(request)
        response.headers.update(headers)
        return response

    def _rate_headers(self, path: str) -> dict[str, str]:
        """Count the request in its endpoint's fixed window; `Remaining` is the used count (sic)."""
        limit, window = REST_LIMITS.get(path, (100, 1))
        now = time.monotonic()
        start, used = self._rest_windows.get(path, (now, 0))
        if now - start >= window:
            start, used = now, 0
        used += 1
        self._rest_windows[path] = (start, used)
        return {
            "X-BM-RateLimit-Remaining": str(used),
            "X-BM-RateLimit-Limit": str(limit),
            "X-BM-RateLimit-Reset": str(window),
            "X-BM-RateLimit-Mode": "IP",
        }

    @staticmethod
    def _fault_response(status: int, retry_after: float | None, headers: dict[str, str]) -> web.Response:
        if retry_after is not None:
            headers = {**headers, "Retry-After": f"{retry_after:g}"}
        if status == 429:
            return _envelope(None, headers, code=30013, message="Request too many requests", status=429)
        # Gateways answer 5xx with non-JSON bodies; a client must not assume the envelope.
        return web.Response(status=status, text=f"<html><body>{status} Error</body></html>", headers=headers)

    async def _rest_time(self, request: web.Request) -> web.Response:
        return _envelope({"server_time": self.market.clock()})

    async def _rest_service(self, request: web.Request) -> web.Response:
        now = self.market.clock()
        services = [
            {
                "title": f"{kind.title()} API Stop",
                "service_type": kind,
                "status": "2",
                "start_time": now - 86_400_000,
                "end_time": now - 82_800_000,
            }
            for kind in ("spot", "contract", "account")
        ]
        return _envelope({"service": services})

    async def _rest_currencies(self, request: web.Request) -> web.Response:
        names = dict.fromkeys(c for spec in self.market.specs.values() for c in (spec.base, spec.quote))
        currencies = [
            {"id": name, "name": name, "withdraw_enabled": True, "deposit_enabled": True} for name in names
        ]
        return _envelope({"currencies": currencies})

    async def _rest_account_currencies(self, request: web.Request) -> web.Response:
        """Public currency list (one row per currency and network), filtered by `currencies=A,B` (≤ 20)."""
        names = list(dict.fromkeys(c for spec in self.market.specs.values() for c in (spec.base, spec.quote)))
        wanted = request.query.get("currencies")
        if wanted is not None:
            asked = [c.strip() for c in wanted.split(",") if c.strip()]
            if not asked or len(asked) > 20:
                return _envelope(None, code=70001, message="currencies is invalid")
            names = [n for n in names if n in asked]
        currencies = [
            {
                "currency": name,
                "name": name,
                "recharge_minsize": "0.00000001",
                "contract_address": None,
                "network": name,
                "withdraw_enabled": True,
                "deposit_enabled": True,
                "withdraw_minsize": "0.001",
                "withdraw_minfee": "0.0001",
                "withdraw_fee_estimate": "0.0001",
                "withdraw_fee": "0.0001",
            }
            for name in names
        ]
        return _envelope({"currencies": currencies})

    async def _rest_contract_details(self, request: web.Request) -> web.Response:
        """Contract details: the spot simulator lists no perpetuals, so `symbols` is empty (for any
        `symbol` filter too)."""
        return _envelope({"symbols": []}, message="Ok")

    async def _rest_symbols(self, request: web.Request) -> web.Response:
        return _envelope({"symbols": self.market.symbols})

    async def _rest_details(self, request: web.Request) -> web.Response:
        return _envelope({"symbols": [self._details(spec) for spec in self.market.specs.values()]})

    def _details(self, spec: SymbolSpec) -> dict[str, Any]:
        step = _fixed(spec.lot, 8)
        # Minimum notional: 5 quote units for USDT pairs, as on the real venue.
        min_amount = "5.00000000" if spec.quote == "USDT" else "0.00010000"
        return {
            "symbol": spec.name,
            "symbol_id": self._symbol_ids[spec.name],
            "base_currency": spec.base,
            "quote_currency": spec.quote,
            "quote_increment": step,
            "base_min_size": step,
            "price_min_precision": max(0, spec.price_decimals - 2),
            "price_max_precision": spec.price_decimals,
            "expiration": "NA",
            "min_buy_amount": min_amount,
            "min_sell_amount": min_amount,
            "trade_status": spec.status,
        }

    def _symbol_param(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        symbol = request.query.get("symbol")
        if not symbol:
            return None, _envelope(None, code=70001, message="request param can not be null")
        if symbol not in self.market.specs:
            return None, _envelope(None, code=70002, message="symbol is invalid")
        return symbol, None

    async def _rest_books(self, request: web.Request) -> web.Response:
        symbol, error = self._symbol_param(request)
        if symbol is None:
            return error  # type: ignore[return-value]
        limit = _int_param(request, "limit", 35)
        if limit is None or limit < 1:
            return _envelope(None, code=70001, message="limit is invalid")
        bids, asks = self.market.book(symbol).top(min(limit, 50))
        data = {"ts": str(self.market.clock()), "symbol": symbol, "asks": asks, "bids": bids}
        return _envelope(data, message="success")

    async def _rest_trades(self, request: web.Request) -> web.Response:
        symbol, error = self._symbol_param(request)
        if symbol is None:
            return error  # type: ignore[return-value]
        limit = _int_param(request, "limit", 50)
        if limit is None or limit < 1:
            return _envelope(None, code=70001, message="limit is invalid")
        recent = self.market.recent_trades(symbol, min(limit, 50))
        rows = [[t.symbol, str(t.ts_ms), t.price, t.size, t.side] for t in reversed(recent)]
        return _envelope(rows, message="success")

    def _ticker_fields(self, symbol: str) -> dict[str, str]:
        now = self.market.clock()
        stats = self.market.stats_24h(symbol, now)
        bid_px, bid_sz, ask_px, ask_sz = self._touch(symbol)
        return {
            "symbol": symbol,
            "last": stats.last,
            "v_24h": stats.base_volume,
            "qv_24h": stats.quote_volume,
            "open_24h": stats.open,
            "high_24h": stats.high,
            "low_24h": stats.low,
            "fluctuation": stats.fluctuation,
            "bid_px": bid_px,
            "bid_sz": bid_sz,
            "ask_px": ask_px,
            "ask_sz": ask_sz,
            "ts": str(now),
        }

    async def _rest_ticker(self, request: web.Request) -> web.Response:
        symbol, error = self._symbol_param(request)
        if symbol is None:
            return error  # type: ignore[return-value]
        return _envelope(self._ticker_fields(symbol), message="success")

    async def _rest_tickers(self, request: web.Request) -> web.Response:
        rows = []
        for symbol in self.market.active:
            fields = self._ticker_fields(symbol)
            if fields["v_24h"] != "0":  # the venue lists pairs with 24 h volume only
                rows.append(list(fields.values()))
        return _envelope(rows, message="success")

    async def _rest_klines(self, request: web.Request) -> web.Response:
        symbol, error = self._symbol_param(request)
        if symbol is None:
            return error  # type: ignore[return-value]
        step = _int_param(request, "step", 1)
        if step not in KLINE_REST_STEPS:
            return _envelope(None, code=71005, message="request step error")
        limit = _int_param(request, "limit", 100)
        if limit is None or not 1 <= limit <= KLINE_MAX_LIMIT:
            return _envelope(None, code=71004, message="request kline count limit")
        after = _int_param(request, "after", None)
        before = _int_param(request, "before", None)
        if "after" in request.query and after is None:
            return _envelope(None, code=71001, message="after is invalid")
        if "before" in request.query and before is None:
            return _envelope(None, code=71002, message="before is invalid")
        if after is not None and before is not None and after >= before:
            return _envelope(None, code=71003, message="request after or before is invalid")
        now_s = self.market.clock() // 1000
        klines = self.market.klines(symbol, step, fill_gaps=True, until_s=now_s)
        rows = select_klines(klines, after, before, limit)
        data = [[str(k.open_time), k.open, k.high, k.low, k.close, k.volume, k.quote_volume] for k in rows]
        return _envelope(data, message="success")


def select_klines(klines: list[Kline], after: int | None, before: int | None, limit: int) -> list[Kline]:
    """Open times strictly inside (after, before). With `after`: the oldest `limit`, oldest first (as in
    a captured response); otherwise the newest `limit`, newest first (as in the doc sample)."""
    rows = [
        k
        for k in klines
        if (after is None or k.open_time > after) and (before is None or k.open_time < before)
    ]
    if after is not None:
        return rows[:limit]
    return list(reversed(rows[-limit:]))


def _int_param(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        return None


def _fixed(decimal: str, places: int) -> str:
    """'0.001' -> '0.00100000' (the details endpoint pads to 8 decimals)."""
    whole, _, frac = decimal.partition(".")
    return f"{whole}.{frac.ljust(places, '0')[:places]}"


def _envelope(
    data: Any,
    headers: dict[str, str] | None = None,
    *,
    code: int = 1000,
    message: str = "OK",
    status: int = 200,
) -> web.Response:
    body = {
        "code": code,
        "trace": str(uuid.uuid4()),
        "message": message,
        "data": {} if data is None else data,
    }
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


# ---- standalone ---------------------------------------------------------------------------------


async def start_bitmart_spot(
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 0,
    rate: float = 50.0,
    symbols: Sequence[str | SymbolSpec] | int | None = None,
    **options: Any,
) -> BitmartSpotSim:
    """Start a simulator and return it (the caller stops it)."""
    sim = BitmartSpotSim(symbols, seed=seed, rate=rate, **options)
    return await sim.start(host, port)


async def serve_forever(
    host: str = "127.0.0.1",
    port: int = 8765,
    seed: int = 0,
    rate: float = 50.0,
    symbols: Sequence[str | SymbolSpec] | int | None = None,
    history_minutes: int = 240,
    started: asyncio.Future[BitmartSpotSim] | None = None,
    **options: Any,
) -> None:
    """Run a simulator until cancelled (for `recorder simulate bitmart`); `started` gets the sim once up."""
    options.setdefault("record_sent", False)
    options.setdefault("trade_log_limit", 100_000)
    sim = await start_bitmart_spot(
        host, port, seed, rate, symbols, history_minutes=history_minutes, **options
    )
    if started is not None and not started.done():
        started.set_result(sim)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


__all__ = [
    "BitmartSpotSim",
    "SimConnection",
    "deflate",
    "encode_push",
    "select_klines",
    "serve_forever",
    "start_bitmart_spot",
]
