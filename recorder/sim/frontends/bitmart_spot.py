"""BitMart spot front-end of the simulator: the public WebSocket (`/api?protocol=1.1`) and the public
REST API, on the venue-neutral `SimServer`.

Wire facts follow ../shared/protocols/bitmart.md (§1-§3, §7): wire ids `BASE_QUOTE`, raw-DEFLATE
BINARY pushes, `op` requests with error codes 9xxxx, book versions = a per-symbol base + the market's
change count (heartbeats repeat it), per-endpoint REST limits with `X-BM-RateLimit-*` headers, and the
`{"code","trace","message","data"}` REST envelope. Its public methods take and return wire ids.
"""

from __future__ import annotations

import asyncio
import base64
import random
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from recorder.sim.market import Kline, MarketEvent, SymbolSpec, Trade, format_units, parse_units
from recorder.sim.server import Frame, Handler, Periodic, SimConnection, SimServer, int_param

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
FULL_BOOK_CHANNELS = (*DEPTH_ALL, TICKER, *KLINE_STEPS)  # pushed periodically for changed symbols
INCREASE_DEPTH = 100

MAX_TOPICS_PER_MESSAGE = 20
MAX_TOPICS_PER_CONNECTION = 115
MAX_MESSAGES_PER_WINDOW = 100
MESSAGE_WINDOW_S = 10.0

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
UNLISTED_REST_LIMIT = (100, 1)  # what the headers say for any other path (never enforced)
KLINE_REST_STEPS = frozenset({1, 3, 5, 15, 30, 45, 60, 120, 180, 240, 1440, 10080, 43200})
KLINE_MAX_LIMIT = 200

_TOUCH = "touch"  # conn.state key: {wire id: the bookTicker touch last sent}

Touch = tuple[str, str, str, str]


# ---- frame encoding -------------------------------------------------------------------------------


def deflate(payload: bytes) -> bytes:
    """One independent raw-DEFLATE stream, as every BitMart spot push is.

    memLevel 5 instead of the default 8: same wire format, but zlib's per-stream allocation stays under
    the malloc mmap threshold, which makes a fresh compressor per frame ~10x cheaper (5 µs vs 60 µs).
    """
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS, 5)
    return compressor.compress(payload) + compressor.flush()


def encode_push(table: str, items: list[dict[str, Any]]) -> bytes:
    """A push as BitMart writes it: `data` before `table` (the documented increase100 sample, bitmart.md
    §2.3; keys come sorted, as in the real trade capture of §2.1). Parsers must not care; a decoder
    that looks for `table` first pays for it here as it would on the venue."""
    return deflate(orjson.dumps({"data": items, "table": table}))


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


def trade_message(symbol: str, trades: Sequence[Trade]) -> bytes:
    """`spot/trade` push of `trades` (all of wire id `symbol`)."""
    items = [
        {  # the real capture's order (bitmart.md §2.1): sorted keys
            "ms_t": t.ts_ms,
            "price": t.price,
            "s_t": t.ts_ms // 1000,
            "side": t.side,
            "size": t.size,
            "symbol": symbol,
        }
        for t in trades
    ]
    return encode_push(TRADE, items)


def book_ticker_message(symbol: str, touch: Touch, ms_t: int) -> bytes:
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


def error_text(event: str | None, code: str) -> str:
    body: dict[str, str] = {} if event is None else {"event": event}
    body["errorCode"] = code
    body["errorMessage"] = WS_ERRORS.get(code, "Internal system error")
    return orjson.dumps(body).decode()


def ack_text(op: str, topic: str) -> str:
    return orjson.dumps({"event": op, "topic": topic}).decode()


@dataclass(slots=True)
class _Tape:
    """Full-speed mode: one symbol's pre-encoded history, replayed to each subscriber from the start."""

    snapshot: bytes  # increase100 snapshot of the state before the first update
    depth: list[bytes] = field(default_factory=list)
    trades: list[tuple[bytes, tuple[Trade, ...]]] = field(default_factory=list)
    start_version: int = 0
    end_version: int = 0


# ---- the front-end --------------------------------------------------------------------------------


class BitmartSpotSim(SimServer):
    """Simulated BitMart spot exchange (public market data) on 127.0.0.1.

    Options are `SimServer`'s. In full-speed mode (`rate=0`) versions chain from each topic's snapshot
    to the end of the tape. Besides the server's faults: `send_stale_version` sends an increase100
    update whose version went back; `send_malformed_json`, `send_invalid_deflate`, `send_deflate_bomb`
    and `send_oversized_frame` send BINARY frames; refused subscriptions answer 90004; injected 429s
    carry code 30013.
    """

    ws_path = "/api"
    ws_query = "protocol=1.1"
    client_budget = (MAX_MESSAGES_PER_WINDOW, MESSAGE_WINDOW_S)

    def __init__(self, *args: Any, **options: Any) -> None:
        """Same arguments as `SimServer`; `symbols` may be wire ids (`BTC_USDT`)."""
        super().__init__(*args, **options)
        rng = random.Random(self.seed ^ 0xB1D)
        self._rng = rng
        # The exchange's book version per symbol (shared by all connections) = base + changes so far.
        self._version_base = {name: rng.randint(1_000_000, 9_000_000) for name in self.market.symbols}
        self._symbol_ids = {name: 1024 + i for i, name in enumerate(self.market.symbols)}
        self._wire_of = {name: wire for wire, name in self.listed.items()}
        self._tapes: dict[str, _Tape] = {}
        self._last_beat: dict[str, float] = {}  # market id -> monotonic time of its last heartbeat

    # ---- ids and sequence numbers ---------------------------------------------------------------

    def wire(self, symbol: str) -> str:
        return symbol.replace("-", "_")

    def neutral(self, wire: str) -> str:
        return wire.replace("_", "-")

    def book_topic(self, wire: str) -> str:
        return f"{INCREASE}:{wire}"

    def truth_seq(self, symbol: str) -> int:
        return self._version_base[symbol] + self.market.seq(symbol)

    def version(self, symbol: str) -> int:
        """The current book version of `symbol` (in full-speed mode: the version at the tape's end)."""
        return self.truth_seq(self.market.resolve(symbol))

    # ---- market events ----------------------------------------------------------------------------

    def on_market_event(self, event: MarketEvent) -> None:
        symbol = event.symbol
        wire = self._wire_of[symbol]
        if event.trades:
            subs = self.subscribers(f"{TRADE}:{wire}")
            if subs:
                frame = trade_message(wire, event.trades)
                for conn in subs:
                    conn.push_binary(frame, event.trades)
        if self.take_skip(symbol):
            return
        subs = self.subscribers(f"{INCREASE}:{wire}")
        if not subs:
            return
        bids, asks = event.split()
        version = self._version_base[symbol] + event.seq
        frame = depth_message(wire, version, "update", bids, asks, event.ts_ms)
        copies = self.copies(symbol)
        for conn in subs:
            for _ in range(copies):
                conn.push_binary(frame)

    def build_tapes(self, events: Iterable[MarketEvent]) -> None:
        """Pre-encode the snapshots, then every event, so that sending costs only the socket."""
        clock = self.market.clock
        for symbol in self.market.symbols:
            view = self.market.book(symbol)
            bids, asks = view.top(INCREASE_DEPTH)
            version = self.truth_seq(symbol)
            snapshot = depth_message(self._wire_of[symbol], version, "snapshot", bids, asks, clock())
            self._tapes[symbol] = _Tape(snapshot, start_version=version, end_version=version)
        for event in events:
            tape = self._tapes[event.symbol]
            wire = self._wire_of[event.symbol]
            if event.trades:
                tape.trades.append((trade_message(wire, event.trades), tuple(event.trades)))
            bids, asks = event.split()
            tape.end_version = self._version_base[event.symbol] + event.seq
            tape.depth.append(depth_message(wire, tape.end_version, "update", bids, asks, event.ts_ms))

    # ---- requests -------------------------------------------------------------------------------

    def on_text(self, conn: SimConnection, text: str) -> None:
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

    def on_binary(self, conn: SimConnection, data: bytes) -> None:
        conn.push_text(error_text(None, "90001"))

    def on_over_budget(self, conn: SimConnection) -> None:
        conn.push_text(error_text(None, "90007"))
        super().on_over_budget(conn)

    def on_drop_topic(self, conn: SimConnection, topic: str) -> None:
        channel, _, wire = topic.partition(":")
        if channel == BOOK_TICKER:
            touch_sent = conn.state.get(_TOUCH)
            if touch_sent:
                touch_sent.pop(wire, None)

    def _check_topic(self, topic: str) -> tuple[str | None, str, str]:
        """(error code or None, channel, wire symbol)."""
        channel, sep, wire = topic.partition(":")
        if not sep or channel not in CHANNELS:
            return "90004", channel, wire
        if wire not in self.listed:
            return "92001", channel, wire
        return None, channel, wire

    def _subscribe(self, conn: SimConnection, topics: list[str]) -> None:
        if len(topics) > MAX_TOPICS_PER_MESSAGE:
            conn.push_text(error_text("subscribe", "90005"))
            return
        for topic in topics:
            code, channel, wire = self._check_topic(topic)
            if code is None and self.take_subscribe_failure():
                code = "90004"
            if code is None and topic in conn.topics:
                code = "90008"
            if code is None and len(conn.topics) >= MAX_TOPICS_PER_CONNECTION:
                code = "90006"
            if code is not None:
                conn.push_text(error_text("subscribe", code))
                continue
            self.add_subscription(conn, topic)
            conn.push_text(ack_text("subscribe", topic))
            self._initial_push(conn, channel, self.listed[wire])

    def _unsubscribe(self, conn: SimConnection, topics: list[str]) -> None:
        for topic in topics:
            code, _, _ = self._check_topic(topic)
            if code is not None:
                conn.push_text(error_text("unsubscribe", code))
                continue
            self.drop_subscription(conn, topic)
            conn.push_text(ack_text("unsubscribe", topic))

    def _request(self, conn: SimConnection, topics: list[str]) -> None:
        for topic in topics:
            code, channel, wire = self._check_topic(topic)
            if code is None and channel != INCREASE:
                code = "90004"  # `request` exists for the incremental depth channel only
            if code is not None:
                conn.push_text(error_text("request", code))
                continue
            self._send_snapshot(conn, self.listed[wire], restart_tape=topic in conn.topics)

    def _initial_push(self, conn: SimConnection, channel: str, symbol: str) -> None:
        if channel == INCREASE:
            self._send_snapshot(conn, symbol, restart_tape=True)
        elif channel == TRADE:
            if self.full_speed and symbol in self._tapes:
                self.start_tape(conn, f"{TRADE}:{self._wire_of[symbol]}", self._tapes[symbol].trades, True)
        elif channel == BOOK_TICKER:
            if not self.full_speed:
                self._push_book_ticker(symbol, (conn,))
        elif not self.full_speed:
            frame = self._full_book_frame(channel, symbol)
            if frame is not None:
                conn.push_binary(frame)

    def _send_snapshot(self, conn: SimConnection, symbol: str, restart_tape: bool) -> None:
        wire = self._wire_of[symbol]
        tape = self._tapes.get(symbol)
        if tape is not None:
            conn.push_binary(tape.snapshot)
            if restart_tape:
                self.start_tape(conn, f"{INCREASE}:{wire}", tape.depth, False)
            return
        view = self.market.book(symbol)
        bids, asks = view.top(INCREASE_DEPTH)
        ms_t = self.market.clock()
        conn.push_binary(depth_message(wire, self.truth_seq(symbol), "snapshot", bids, asks, ms_t))

    # ---- periodic pushes ------------------------------------------------------------------------

    def periodic(self) -> list[tuple[float, Periodic]]:
        loops: list[tuple[float, Periodic]] = [
            (max(0.01, min(1.0, self.heartbeat_interval / 4)), self._heartbeats)
        ]
        if not self.full_speed:
            loops.append((self.full_book_interval, self._full_book_pushes))
        return loops

    def _heartbeats(self, now: float) -> None:
        """Empty increase100 updates repeating the current version for symbols quiet for a while."""
        for topic, subs in self.subscriptions():
            channel, _, wire = topic.partition(":")
            if channel != INCREASE:
                continue
            symbol = self.listed[wire]
            if symbol in self._tapes:
                self._tape_heartbeats(symbol, topic, subs, now)
            elif (
                now - max(self.last_change[symbol], self._last_beat.get(symbol, 0.0))
                >= self.heartbeat_interval
            ):
                self._last_beat[symbol] = now
                frame = depth_message(wire, self.truth_seq(symbol), "update", [], [], self.market.clock())
                for conn in subs:
                    conn.push_binary(frame)

    def _tape_heartbeats(self, symbol: str, topic: str, subs: set[SimConnection], now: float) -> None:
        # Per connection: each replays the tape at its own pace, so only one that finished it may get
        # a heartbeat (with the tape's last version).
        tape = self._tapes[symbol]
        frame: bytes | None = None
        for conn in subs:
            cursor = conn.tape(topic)
            if cursor is None or not cursor.done:
                continue
            if now - cursor.last_push >= self.heartbeat_interval:
                cursor.last_push = now
                if frame is None:
                    wire = self._wire_of[symbol]
                    frame = depth_message(wire, tape.end_version, "update", [], [], self.market.clock())
                conn.push_binary(frame)

    def _full_book_pushes(self, now: float) -> None:
        """depth5/20/50, ticker and kline pushes for symbols that changed, every `full_book_interval`;
        bookTicker pushes for those whose top of book changed since the subscriber's last push."""
        for symbol in self.take_changed():
            wire = self._wire_of[symbol]
            subs = self.subscribers(f"{BOOK_TICKER}:{wire}")
            if subs:
                self._push_book_ticker(symbol, subs)
            for channel in FULL_BOOK_CHANNELS:
                subs = self.subscribers(f"{channel}:{wire}")
                if not subs:
                    continue
                frame = self._full_book_frame(channel, symbol)
                if frame is None:
                    continue
                for conn in subs:
                    conn.push_binary(frame)

    def _full_book_frame(self, channel: str, symbol: str) -> bytes | None:
        ms_t = self.market.clock()
        wire = self._wire_of[symbol]
        if channel in DEPTH_ALL:
            bids, asks = self.market.book(symbol).top(DEPTH_ALL[channel])
            return encode_push(channel, [{"asks": asks, "bids": bids, "symbol": wire, "ms_t": ms_t}])
        if channel == TICKER:
            return encode_push(TICKER, [self._ticker_item(symbol, ms_t)])
        k = self.market.current_kline(symbol, KLINE_STEPS[channel])
        if k is None:
            return None
        candle = [k.open_time, k.open, k.high, k.low, k.close, k.volume]
        return encode_push(channel, [{"candle": candle, "symbol": wire}])

    def _push_book_ticker(self, symbol: str, subs: Iterable[SimConnection]) -> None:
        """The current best bid/ask to each of `subs` that was not sent exactly this touch last."""
        wire = self._wire_of[symbol]
        touch = self._touch(symbol)
        frame: bytes | None = None
        for conn in subs:
            touch_sent: dict[str, Touch] = conn.state.setdefault(_TOUCH, {})
            if touch_sent.get(wire) == touch:
                continue
            if frame is None:
                frame = book_ticker_message(wire, touch, self.market.clock())
            touch_sent[wire] = touch
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
            "symbol": self._wire_of[symbol],
        }

    def _touch(self, symbol: str) -> Touch:
        bids, asks = self.market.book(symbol).top(1)
        bid = bids[0] if bids else ["0", "0"]
        ask = asks[0] if asks else ["0", "0"]
        return bid[0], bid[1], ask[0], ask[1]

    # ---- fault frames -----------------------------------------------------------------------------

    def stale_update(self, symbol: str, back: int) -> tuple[str, Frame]:
        view = self.market.book(symbol)
        spec = self.market.spec(symbol)
        best_bid = parse_units(next(iter(view.bids)), spec.price_decimals) if view.bids else 10
        price = best_bid - 1
        while format_units(price, spec.price_decimals) in view.bids and price > 1:
            price -= 1
        bogus = [[format_units(price, spec.price_decimals), spec.lot]]
        wire = self._wire_of[symbol]
        version = self.truth_seq(symbol) - back
        frame = depth_message(wire, version, "update", bogus, [], self.market.clock())
        return f"{INCREASE}:{wire}", frame

    def malformed_frame(self) -> Frame:
        """A BINARY frame that inflates fine but is not JSON (truncated)."""
        return deflate(b'{"data":[{"ms_t":1,"price":"1","s_t":0,"side":"buy","size":"1","symbol":"BTC_US')

    def invalid_compressed_frame(self) -> bytes:
        """A BINARY frame that is not a raw-deflate stream (block type 3 is reserved)."""
        return b"\x07\xffnot a deflate stream"

    def compression_bomb(self, size: int) -> bytes:
        head, tail = b'{"data":[', b'],"table":"spot/trade"}'
        return deflate(head + b" " * (size - len(head) - len(tail)) + tail)

    def oversized_frame(self, size: int) -> Frame:
        """A BINARY frame of about `size` bytes on the wire (incompressible)."""
        pad = base64.b64encode(self._rng.randbytes(size)).decode()
        return deflate(orjson.dumps({"data": [{"pad": pad, "symbol": ""}], "table": "spot/notice"}))

    # ---- REST -----------------------------------------------------------------------------------

    def rest_routes(self) -> dict[str, Handler]:
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

    def rest_limit(self, route: str) -> tuple[int, float] | None:
        return REST_LIMITS.get(route)

    def rate_headers(
        self, route: str, used: int, limit: tuple[int, float] | None, window: float
    ) -> dict[str, str]:
        return rate_headers(used, limit)

    def too_many_requests(self, headers: dict[str, str]) -> web.Response:
        return _envelope(None, headers, code=30013, message="Request too many requests", status=429)

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
        return _envelope({"symbols": self.symbols})

    async def _rest_details(self, request: web.Request) -> web.Response:
        return _envelope({"symbols": [self._details(spec) for spec in self.market.specs.values()]})

    def _details(self, spec: SymbolSpec) -> dict[str, Any]:
        step = _fixed(spec.lot, 8)
        # Minimum notional: 5 quote units for USDT pairs, as on the real venue.
        min_amount = "5.00000000" if spec.quote == "USDT" else "0.00010000"
        return {
            "symbol": self._wire_of[spec.name],
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
        """(market id, None) for a listed `symbol` parameter, else (None, error response)."""
        wire = request.query.get("symbol")
        if not wire:
            return None, _envelope(None, code=70001, message="request param can not be null")
        symbol = self.listed.get(wire)
        if symbol is None:
            return None, _envelope(None, code=70002, message="symbol is invalid")
        return symbol, None

    async def _rest_books(self, request: web.Request) -> web.Response:
        symbol, error = self._symbol_param(request)
        if symbol is None:
            return error  # type: ignore[return-value]
        limit = int_param(request, "limit", 35)
        if limit is None or limit < 1:
            return _envelope(None, code=70001, message="limit is invalid")
        bids, asks = self.market.book(symbol).top(min(limit, 50))
        data = {"ts": str(self.market.clock()), "symbol": self._wire_of[symbol], "asks": asks, "bids": bids}
        return _envelope(data, message="success")

    async def _rest_trades(self, request: web.Request) -> web.Response:
        symbol, error = self._symbol_param(request)
        if symbol is None:
            return error  # type: ignore[return-value]
        limit = int_param(request, "limit", 50)
        if limit is None or limit < 1:
            return _envelope(None, code=70001, message="limit is invalid")
        wire = self._wire_of[symbol]
        recent = self.market.recent_trades(symbol, min(limit, 50))
        rows = [[wire, str(t.ts_ms), t.price, t.size, t.side] for t in reversed(recent)]
        return _envelope(rows, message="success")

    def _ticker_fields(self, symbol: str) -> dict[str, str]:
        now = self.market.clock()
        stats = self.market.stats_24h(symbol, now)
        bid_px, bid_sz, ask_px, ask_sz = self._touch(symbol)
        return {
            "symbol": self._wire_of[symbol],
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
        step = int_param(request, "step", 1)
        if step not in KLINE_REST_STEPS:
            return _envelope(None, code=71005, message="request step error")
        limit = int_param(request, "limit", 100)
        if limit is None or not 1 <= limit <= KLINE_MAX_LIMIT:
            return _envelope(None, code=71004, message="request kline count limit")
        after = int_param(request, "after", None)
        before = int_param(request, "before", None)
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


def rate_headers(used: int, limit: tuple[int, float] | None) -> dict[str, str]:
    """BitMart's rate-limit headers (spot and futures hosts alike): `Remaining` is the used count (sic)."""
    count, seconds = limit if limit is not None else UNLISTED_REST_LIMIT
    return {
        "X-BM-RateLimit-Remaining": str(used),
        "X-BM-RateLimit-Limit": str(count),
        "X-BM-RateLimit-Reset": str(seconds),
        "X-BM-RateLimit-Mode": "IP",
    }


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
    sim = BitmartSpotSim(symbols, seed=seed, rate=rate, history_minutes=history_minutes, **options)
    await sim.serve(host, port, started)


__all__ = [
    "BitmartSpotSim",
    "SimConnection",
    "deflate",
    "encode_push",
    "select_klines",
    "serve_forever",
    "start_bitmart_spot",
]
