"""BitMart USDT-M perpetual front-end of the simulator: the Futures V2 public WebSocket
(`openapi-ws-v2`, `/api?protocol=1.1`) and the futures public REST API (`api-cloud-v2`), on the
venue-neutral `SimServer`.

Wire facts follow ../shared/protocols/bitmart.md §4 (what the notes observed on the wire wins over
the doc where they differ, as the notes say): wire ids `BTCUSDT`; every frame is TEXT JSON, nothing
is compressed; requests are `{"action":..,"args":[..]}` with one ack per topic carrying `success`;
`{"action":"ping"}` is answered in a `System` envelope; sizes are CONTRACTS everywhere (the market's
lot is the contract size, so every size is a whole number of contracts); `depthIncrease` keeps an
N-level window per side whose `version` advances by one on every push, empty pushes included; trade
arrays come newest first with ids, `m` and nanosecond `created_at`. Public methods take and return
wire ids. Where the notes say nothing (error texts of bad requests, REST errors of the futures
host), the choice is written next to the code.

The perpetual market is the spot market's engine with its own random stream (a salted seed), so a
spot and a perpetual simulator started with one seed do not move in lockstep.
"""

from __future__ import annotations

import bisect
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from recorder.sim.frontends.bitmart_spot import rate_headers
from recorder.sim.market import (
    DEFAULT_SPECS,
    Market,
    MarketEvent,
    SymbolSpec,
    Trade,
    format_units,
    parse_units,
)
from recorder.sim.server import Frame, Handler, Periodic, SimConnection, SimServer, int_param

# ---- wire constants -------------------------------------------------------------------------------

TRADE = "futures/trade"
INCREASE = {"futures/depthIncrease5": 5, "futures/depthIncrease20": 20, "futures/depthIncrease50": 50}
DEPTH_ALL = {"futures/depthAll5": 5, "futures/depthAll20": 20, "futures/depthAll50": 50}
DEPTH = {"futures/depth5": 5, "futures/depth20": 20, "futures/depth50": 50}  # one side per message (§4.3)
TICKER = "futures/ticker"
FUNDING = "futures/fundingRate"
BOOK_TICKER = "futures/bookticker"
KLINE_STEPS = {  # klineBin channel -> minutes (§4.8)
    "futures/klineBin1m": 1,
    "futures/klineBin5m": 5,
    "futures/klineBin15m": 15,
    "futures/klineBin30m": 30,
    "futures/klineBin1H": 60,
    "futures/klineBin2H": 120,
    "futures/klineBin4H": 240,
    "futures/klineBin1D": 1440,
    "futures/klineBin1W": 10080,
}
# Channels that take a speed: `@100ms`/`@200ms`, none, or ccxt's `:100ms` the server was seen to accept.
SPEED_CHANNELS = frozenset({*INCREASE, *DEPTH_ALL, *DEPTH, TICKER, BOOK_TICKER})
SPEEDS = ("", "@100ms", "@200ms", ":100ms", ":200ms")
CHANNELS = frozenset({TRADE, TICKER, FUNDING, BOOK_TICKER, *INCREASE, *DEPTH_ALL, *DEPTH, *KLINE_STEPS})
RECORDER_BOOK = "futures/depthIncrease50"  # the recorder's book channel (the one with a full-speed tape)
RECORDER_SPEED = "@100ms"

# A subscribe frame of 2,186 bytes was closed with 1009 while 2,020 passed (BitMart.Net caps at 2048).
MAX_CLIENT_FRAME = 2048
SERVER_PING_AFTER = 54.5  # the server sent one protocol PING ~54.5 s after connect
FUNDING_LIMITS = ("0.0375", "-0.0375")
TAPE_EMPTY_EVERY = 64  # full-speed tapes carry an empty push after every 64th update of a symbol

# REST: per-endpoint (limit, window seconds), per IP (§4.9).
REST_LIMITS: dict[str, tuple[int, int]] = {
    "/system/time": (10, 1),
    "/contract/public/details": (12, 2),
    "/contract/public/depth": (12, 2),
    "/contract/public/kline": (12, 2),
    "/contract/public/funding-rate": (12, 2),
    "/contract/public/funding-rate-history": (12, 2),
    "/contract/public/open-interest": (2, 2),
}
KLINE_REST_STEPS = frozenset({1, 3, 5, 15, 30, 60, 120, 240, 360, 720, 1440, 4320, 10080})
KLINE_MAX_ROWS = 500  # "Single time request size upper limit 500"
DEPTH_REST_LEVELS = 50
FUNDING_HISTORY_MAX = 100

TRADE_ID_BASE = 3_000_000_000_000_000  # real ids are ~3e15 JSON numbers
MARKET_SEED_SALT = 0x9E2F_BA11

_SERVED = "served"  # conn.state key: [(channel, wire, item)] of ticker/funding pushes (ground truth)
_TOUCH = "touch"  # conn.state key: {wire: touch last sent} for bookticker
_PINGED = "pinged"
_TAPES = "tapes"  # conn.state key: the depth tape cursors started on it (for `tape_stats`)


# A contract that is `Trading` but has no order (protocols/bitmart.md §4.2, observed): subscribing
# its depthIncrease stream gives one empty snapshot at version 3, and then nothing; it never trades.
# The market treats its status like pre-trade (no book seeded, never stepped); this front-end lists
# it as Trading and serves it.
QUIET = "quiet"
QUIET_VERSION = 3
OPEN = ("trading", QUIET)  # the statuses listed as `Trading`
QUIET_SPEC = SymbolSpec("QUIET-USDT", "QUIET", "USDT", 4, 0, "1.0000", "10", status=QUIET)


def _topic_channel(topic: str) -> tuple[str, str | None, str]:
    """`channel:SYMBOL[@speed]` -> (channel, wire or None, speed). Not validated."""
    channel, sep, rest = topic.partition(":")
    if not sep:
        return channel, None, ""
    for mark in ("@", ":"):
        sym, found, speed = rest.partition(mark)
        if found:
            return channel, sym, mark + speed
    return channel, rest, ""


def rfc3339_ns(ns: int) -> str:
    """Epoch nanoseconds -> `2025-03-10T18:17:14.656686827Z`."""
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


def encode(group: str, data: Any) -> str:
    return orjson.dumps({"data": data, "group": group}).decode()


# ---- the depth window --------------------------------------------------------------------------


class _Side:
    """One side of a symbol's book in integer units, best first (a mirror of the market's)."""

    __slots__ = ("keys", "levels", "sign")

    def __init__(self, sign: int) -> None:
        self.sign = sign  # -1 for bids (highest first), 1 for asks
        self.levels: dict[int, int] = {}  # price ticks -> size lots (= contracts)
        self.keys: list[int] = []  # sign * ticks, ascending

    def set(self, ticks: int, lots: int) -> None:
        key = self.sign * ticks
        if lots == 0:
            if self.levels.pop(ticks, None) is not None:
                del self.keys[bisect.bisect_left(self.keys, key)]
            return
        if ticks not in self.levels:
            bisect.insort(self.keys, key)
        self.levels[ticks] = lots

    def top(self, depth: int) -> dict[int, int]:
        sign, levels = self.sign, self.levels
        return {sign * k: levels[sign * k] for k in self.keys[:depth]}


@dataclass(slots=True)
class _Book:
    bids: _Side = field(default_factory=lambda: _Side(-1))
    asks: _Side = field(default_factory=lambda: _Side(1))
    seq: int = -1  # the market change count this mirror reflects


def _diff(old: dict[int, int], new: dict[int, int]) -> list[tuple[int, int]]:
    """What turns window `old` into `new`: changed or entering levels, then leaving ones at 0."""
    out = [(p, q) for p, q in new.items() if old.get(p) != q]
    out += [(p, 0) for p in old if p not in new]
    return out


@dataclass(slots=True)
class _Tape:
    """Full-speed mode: one symbol's pre-encoded depthIncrease50 and trade pushes."""

    snapshot: str
    depth: list[str] = field(default_factory=list)
    trades: list[tuple[str, tuple[Trade, ...]]] = field(default_factory=list)
    start_version: int = 0
    end_version: int = 0
    empty_pushes: int = 0


# ---- the front-end --------------------------------------------------------------------------------


class BitmartPerpSim(SimServer):
    """Simulated BitMart USDT-M perpetual futures (public market data) on 127.0.0.1.

    Options are `SimServer`'s, plus `funding_interval` (seconds between `futures/fundingRate` pushes;
    the doc says every minute). `full_book_interval` (here 1 s by default: the notes saw about one
    push a second) paces ticker, depth, depthAll, bookticker and klineBin pushes;
    `heartbeat_interval` is how long a book may stay quiet before its depthIncrease streams get an
    empty push (which advances the version). Each market event is one depthIncrease push (the
    documented 100 ms cadence at most, not the ~1 s aggregation the notes observed), so a test
    sees many versions quickly.

    Ground truth besides the server's: `truth_book` is the depthIncrease50 window (50 levels per
    side, base units); `trade_item(trade)` is a trade as it went on the wire; `served(conn)` lists
    the ticker and funding items pushed to a connection; `served_rest` the open-interest answers.
    Faults are the server's; `send_stale_version` sends a depthIncrease50 update whose version went
    back; the deflate faults do not exist here (nothing is compressed); refused subscriptions get the
    venue's `Invalid channel: not found` error ack; injected 429s carry code 30013.
    """

    ws_path = "/api"
    ws_query = "protocol=1.1"
    ws_max_message = MAX_CLIENT_FRAME

    def __init__(
        self,
        symbols: Sequence[str | SymbolSpec] | int | None = None,
        seed: int = 0,
        *args: Any,
        funding_interval: float = 60.0,
        **options: Any,
    ) -> None:
        """Same arguments as `SimServer`; `symbols` may be wire ids (`BTCUSDT`)."""
        if options.get("market") is None:
            specs = self.resolve_symbols(symbols, seed, options.pop("include_pre_trade", True))
            options["market"] = Market(
                specs, seed=seed ^ MARKET_SEED_SALT, trade_log_limit=options.pop("trade_log_limit", None)
            )
        options.setdefault("full_book_interval", 1.0)  # ~1 push/s on ticker and book channels (§4.2)
        super().__init__(symbols, seed, *args, **options)
        self.funding_interval = funding_interval
        rng = random.Random(seed ^ 0xF07)
        self._rng = rng
        self._wire_of = {name: wire for wire, name in self.listed.items()}
        self._version = {name: rng.randint(1_000_000, 9_000_000) for name in self.market.symbols}
        for name in self.market.symbols:
            if self.market.spec(name).status == QUIET:
                self._version[name] = QUIET_VERSION  # as observed: one empty snapshot at version 3
        self._next_trade_id = TRADE_ID_BASE + rng.randint(0, 10**12)
        self._books: dict[str, _Book] = {}
        self._windows: dict[
            str, dict[int, tuple[dict[int, int], dict[int, int]]]
        ] = {}  # symbol -> depth -> window
        self._active: dict[str, dict[str, int]] = {}  # symbol -> depthIncrease topic -> depth
        self._tapes: dict[str, _Tape] = {}
        self._last_beat: dict[str, float] = {}
        self._trade_items: dict[int, tuple[Trade, dict[str, Any]]] = {}  # id(trade) -> (trade, wire item)
        self.served_rest: list[tuple[str, dict[str, Any]]] = []  # (route, data) of open-interest answers
        self.empty_pushes = 0  # empty depthIncrease updates sent (live mode)

    # ---- ids and sequence numbers ---------------------------------------------------------------

    def wire(self, symbol: str) -> str:
        return symbol.replace("-", "")

    def neutral(self, wire: str) -> str:
        if "-" in wire:
            return wire
        for quote in ("USDT", "USDC", "BTC", "ETH"):
            if wire.endswith(quote) and len(wire) > len(quote):
                return f"{wire[: -len(quote)]}-{quote}"
        return wire

    def resolve_symbols(
        self, symbols: Sequence[str | SymbolSpec] | int | None, seed: int, include_pre_trade: bool
    ) -> list[SymbolSpec]:
        """Perpetuals whose contract size is the lot, so every size is a whole number of contracts.
        The default catalogue is the USDT-quoted part of the spot one, plus the pre-trade symbol and
        `QUIET_SPEC` (a `Trading` contract with no order, §4.2); `QUIET-USDT` by name is that one."""
        if symbols is None:
            symbols = [*(s for s in DEFAULT_SPECS if s.quote == "USDT"), QUIET_SPEC]
        elif not isinstance(symbols, int):
            symbols = [QUIET_SPEC if self.neutral(s) == QUIET_SPEC.name else s for s in symbols]
        specs = super().resolve_symbols(symbols, seed, include_pre_trade)
        return [replace(s, kind="perpetual", contract_size=s.lot) for s in specs]

    def open(self, symbol: str) -> bool:
        """Listed as `Trading`: a trading market, or the quiet contract (open, with no order)."""
        return self.market.spec(symbol).status in OPEN

    def book_topic(self, wire: str) -> str:
        return f"{RECORDER_BOOK}:{wire}{RECORDER_SPEED}"

    def truth_seq(self, symbol: str) -> int:
        return self._version[symbol]

    def version(self, symbol: str) -> int:
        """The current book version of `symbol` (in full-speed mode: the version at the tape's end)."""
        return self._version[self.market.resolve(symbol)]

    def truth_book(self, symbol: str) -> tuple[int, dict[float, float], dict[float, float]]:
        """The depthIncrease50 window (what a client of the stream can know), sizes in base units."""
        view = self.market.book(symbol)
        bids, asks = view.top(INCREASE[RECORDER_BOOK])
        return (
            self.truth_seq(view.symbol),
            {float(p): float(s) for p, s in bids},
            {float(p): float(s) for p, s in asks},
        )

    def truth_book_strings(self, symbol: str) -> tuple[int, dict[str, str], dict[str, str]]:
        view = self.market.book(symbol)
        bids, asks = view.top(INCREASE[RECORDER_BOOK])
        return self.truth_seq(view.symbol), dict(map(tuple, bids)), dict(map(tuple, asks))

    def trade_item(self, trade: Trade) -> dict[str, Any]:
        """A trade as it went on the wire (`trade_id`, `deal_vol` in contracts, `m`, `created_at`...).
        Kept only with `record_sent` (the default)."""
        return self._trade_items[id(trade)][1]

    def tape_stats(self) -> dict[str, int]:
        """Full-speed mode: depthIncrease50 tape frames written so far, over every connection:
        `updates_sent` (non-empty updates) and `empty_sent` (empty pushes)."""
        every = TAPE_EMPTY_EVERY + 1  # frame k of a tape is an empty push when k % every == every - 1
        written = [c.index for conn in self.connections for c in conn.state.get(_TAPES, ())]
        empty = sum(n // every for n in written)
        return {"updates_sent": sum(written) - empty, "empty_sent": empty}

    def served(
        self, conn: SimConnection, channel: str | None = None
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """(channel, wire id, item) of every ticker / fundingRate item queued to `conn`, in order."""
        return [s for s in conn.state.get(_SERVED, ()) if channel is None or s[0] == channel]

    def contracts(self, symbol: str, size: str) -> str:
        """A base-unit size string of `symbol` as a number of contracts."""
        return str(parse_units(size, self.market.spec(symbol).size_decimals))

    # ---- the book mirror and its windows ----------------------------------------------------------

    def _book(self, symbol: str) -> _Book:
        """The mirror of `symbol`'s book, rebuilt from the market if it missed changes (history)."""
        book = self._books.get(symbol)
        seq = self.market.seq(symbol)
        if book is None or book.seq != seq:
            book = self._books[symbol] = _Book(seq=seq)
            spec = self.market.spec(symbol)
            view = self.market.book(symbol)
            for side, levels in ((book.bids, view.bids), (book.asks, view.asks)):
                for p, s in levels.items():
                    side.set(parse_units(p, spec.price_decimals), parse_units(s, spec.size_decimals))
        return book

    def _apply(self, event: MarketEvent) -> tuple[bool, bool]:
        """Bring the mirror to after `event`; which sides (bids, asks) it touched."""
        book = self._books.get(event.symbol)
        if book is None or book.seq != event.seq - 1:
            self._book(event.symbol)  # rebuilt as of now (the event included)
            return True, True
        spec = self.market.spec(event.symbol)
        pd, sd = spec.price_decimals, spec.size_decimals
        bid = ask = False
        for side, price, size in event.changes:
            if side == "bid":
                book.bids.set(parse_units(price, pd), parse_units(size, sd))
                bid = True
            else:
                book.asks.set(parse_units(price, pd), parse_units(size, sd))
                ask = True
        book.seq = event.seq
        return bid, ask

    def _window(self, symbol: str, depth: int) -> tuple[dict[int, int], dict[int, int]]:
        """The current `depth`-level window of `symbol` (tracked from now on)."""
        windows = self._windows.setdefault(symbol, {})
        window = windows.get(depth)
        if window is None:
            book = self._book(symbol)
            window = windows[depth] = (book.bids.top(depth), book.asks.top(depth))
        return window

    def _advance_windows(self, symbol: str, bid: bool, ask: bool) -> dict[int, tuple[list, list]]:
        """Move every tracked window of `symbol` to the mirror's state: depth -> (bid, ask) changes."""
        windows = self._windows.get(symbol)
        if not windows:
            return {}
        book = self._books[symbol]
        out: dict[int, tuple[list, list]] = {}
        for depth, (old_b, old_a) in list(windows.items()):
            new_b = book.bids.top(depth) if bid else old_b
            new_a = book.asks.top(depth) if ask else old_a
            out[depth] = (_diff(old_b, new_b) if bid else [], _diff(old_a, new_a) if ask else [])
            windows[depth] = (new_b, new_a)
        return out

    def _levels(self, symbol: str, levels: Iterable[tuple[int, int]]) -> list[dict[str, str]]:
        pd = self.market.spec(symbol).price_decimals
        return [{"price": format_units(p, pd), "vol": str(q)} for p, q in levels]

    def _depth_item(
        self, symbol: str, kind: str, version: int, bids: Iterable, asks: Iterable, ms_t: int
    ) -> dict:
        return {
            "symbol": self._wire_of[symbol],
            "asks": self._levels(symbol, asks),
            "bids": self._levels(symbol, bids),
            "ms_t": ms_t,
            "version": version,
            "type": kind,
        }

    def _live_increase_topics(self, symbol: str) -> dict[str, int]:
        """depthIncrease topics of `symbol` with subscribers (forgetting windows nobody watches)."""
        active = self._active.get(symbol)
        if not active:
            return {}
        for topic in [t for t in active if not self.subscribers(t)]:
            del active[topic]
        windows = self._windows.get(symbol)
        if windows:
            depths = set(active.values())
            for depth in [d for d in windows if d not in depths]:
                del windows[depth]
        return active

    # ---- market events ----------------------------------------------------------------------------

    def trade_frame(self, symbol: str, trades: Sequence[Trade]) -> str:
        """One `futures/trade` push of `trades` (one event's, of market id `symbol`), newest first
        (§4.5), with the next trade ids: what a subscriber is sent (tests also encode history)."""
        wire = self._wire_of[symbol]
        items = []
        for i, t in enumerate(trades):
            tid = self._next_trade_id
            self._next_trade_id += 1
            # Each fill its own nanosecond stamp inside the event's millisecond, in match order.
            ns = t.ts_ms * 1_000_000 + i * 1000 + tid * 7919 % 1000
            item = {
                "trade_id": tid,
                "symbol": wire,
                "deal_price": t.price,
                "deal_vol": str(t.size_lots),
                "way": 1 + tid % 8,  # open/close combination: not the taker side (§4.5)
                "m": t.side == "sell",  # buyer is maker <=> the taker sold
                "created_at": rfc3339_ns(ns),
            }
            if self.record_sent:
                self._trade_items[id(t)] = (t, item)
            items.append(item)
        items.reverse()
        return encode(f"{TRADE}:{wire}", items)

    def on_market_event(self, event: MarketEvent) -> None:
        symbol = event.symbol
        wire = self._wire_of[symbol]
        if event.trades:
            subs = self.subscribers(f"{TRADE}:{wire}")
            if subs:
                frame = self.trade_frame(symbol, event.trades)
                for conn in subs:
                    conn.push_frame(frame, event.trades)  # logged as sent once written
            else:
                self._next_trade_id += len(event.trades)  # ids are the venue's: they advance unseen
        bid, ask = self._apply(event)
        self._version[symbol] += 1
        version = self._version[symbol]
        changes = self._advance_windows(symbol, bid, ask)
        if self.take_skip(symbol):
            return
        topics = self._live_increase_topics(symbol)
        if not topics:
            return
        copies = self.copies(symbol)
        for topic, depth in topics.items():
            bids, asks = changes.get(depth, ((), ()))
            frame = encode(topic, self._depth_item(symbol, "update", version, bids, asks, event.ts_ms))
            for conn in self.subscribers(topic):
                for _ in range(copies):
                    conn.push_text(frame)

    def build_tapes(self, events: Iterable[MarketEvent]) -> None:
        """Pre-encode the depthIncrease50 snapshot, every update (with an empty push after every
        `TAPE_EMPTY_EVERY`th) and every trade push, so that sending costs only the socket."""
        depth = INCREASE[RECORDER_BOOK]
        clock = self.market.clock
        for symbol in self.market.active:
            bids, asks = self._window(symbol, depth)
            version = self._version[symbol]
            item = self._depth_item(symbol, "snapshot", version, bids.items(), asks.items(), clock())
            snapshot = encode(self.book_topic(self._wire_of[symbol]), item)
            self._tapes[symbol] = _Tape(snapshot, start_version=version, end_version=version)
        for event in events:
            symbol = event.symbol
            tape = self._tapes[symbol]
            topic = self.book_topic(self._wire_of[symbol])
            if event.trades:
                tape.trades.append((self.trade_frame(symbol, event.trades), tuple(event.trades)))
            bid, ask = self._apply(event)
            bids, asks = self._advance_windows(symbol, bid, ask)[depth]
            self._version[symbol] += 1
            item = self._depth_item(symbol, "update", self._version[symbol], bids, asks, event.ts_ms)
            tape.depth.append(encode(topic, item))
            if len(tape.depth) % (TAPE_EMPTY_EVERY + 1) == TAPE_EMPTY_EVERY:
                self._version[symbol] += 1
                item = self._depth_item(symbol, "update", self._version[symbol], (), (), event.ts_ms)
                tape.depth.append(encode(topic, item))
                tape.empty_pushes += 1
            tape.end_version = self._version[symbol]

    # ---- requests -------------------------------------------------------------------------------

    def on_text(self, conn: SimConnection, text: str) -> None:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            conn.push_text(_error_text(f"Invalid message: message must be JSON: {text}"))
            return
        if not isinstance(request, dict):
            conn.push_text(_error_text(f"Invalid message: {text}"))  # not in the notes: our wording
            return
        action, args = request.get("action"), request.get("args")
        if action == "ping":
            pong = uuid.UUID(int=self._rng.getrandbits(128), version=4)
            conn.push_text(orjson.dumps({"group": "System", "data": f"pong+{pong}"}).decode())
            return
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            # not in the notes: our wording, in the venue's failure shape
            echo = {"action": action, "args": args}
            conn.push_text(_error_text("Invalid args", action=action, request=echo))
            return
        echo = {"action": action, "args": args}
        if action == "subscribe":
            self._subscribe(conn, args, echo)
        elif action == "unsubscribe":
            self._unsubscribe(conn, args, echo)
        elif action == "request":
            self._request(conn, args, echo)
        else:  # ccxt recorded this text for an empty action
            for topic in args:
                conn.push_text(
                    _refusal(action, topic, echo, f"Invalid action [{action}] for group [{topic}]")
                )

    def on_binary(self, conn: SimConnection, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        conn.push_text(_error_text(f"Invalid message: message must be JSON: {text}"))

    def on_drop_topic(self, conn: SimConnection, topic: str) -> None:
        channel, wire, _ = _topic_channel(topic)
        if channel == BOOK_TICKER and wire is not None:
            touch_sent = conn.state.get(_TOUCH)
            if touch_sent:
                touch_sent.pop(wire, None)

    def _check(self, topic: str) -> str | None:
        """The market id a topic names (`""` for the all-contracts ticker), None if the venue has no
        such group (unknown channel, symbol not trading, bad depth or speed)."""
        channel, wire, speed = _topic_channel(topic)
        if channel not in CHANNELS:
            return None
        if speed and (channel not in SPEED_CHANNELS or speed not in SPEEDS):
            return None
        if wire is None:
            return "" if channel == TICKER else None
        symbol = self.listed.get(wire)
        if symbol is None or not self.open(symbol):
            return None  # delisted symbols get the same answer as unknown ones
        return symbol

    def _subscribe(self, conn: SimConnection, topics: list[str], echo: dict) -> None:
        for topic in topics:
            symbol = self._check(topic)
            if symbol is None or self.take_subscribe_failure():
                conn.push_text(_refusal("subscribe", topic, echo, f"Invalid channel: not found {topic}"))
                continue
            # a topic already held is acked again, without an error (§4.1)
            self.add_subscription(conn, topic)
            conn.push_text(_ack("subscribe", topic, echo))
            self._initial_push(conn, topic, symbol)

    def _unsubscribe(self, conn: SimConnection, topics: list[str], echo: dict) -> None:
        for topic in topics:
            if self._check(topic) is None:
                conn.push_text(_refusal("unsubscribe", topic, echo, f"Invalid channel: not found {topic}"))
                continue
            self.drop_subscription(conn, topic)
            conn.push_text(_ack("unsubscribe", topic, echo))

    def _request(self, conn: SimConnection, topics: list[str], echo: dict) -> None:
        """A snapshot of a depthIncrease topic, or one fundingRate push, at once on the same group
        (no ack). Other channels: the venue's invalid-action text (our choice)."""
        for topic in topics:
            symbol = self._check(topic)
            if symbol is None:
                conn.push_text(_refusal("request", topic, echo, f"Invalid channel: not found {topic}"))
                continue
            channel, _, _ = _topic_channel(topic)
            if channel in INCREASE and symbol:
                self._send_snapshot(conn, topic, symbol, restart_tape=topic in conn.topics)
            elif channel == FUNDING and symbol:
                self._push_funding(symbol, (conn,), self.market.clock())
            else:
                conn.push_text(
                    _refusal("request", topic, echo, f"Invalid action [request] for group [{topic}]")
                )

    def _initial_push(self, conn: SimConnection, topic: str, symbol: str) -> None:
        channel, _, _ = _topic_channel(topic)
        now = self.market.clock()
        if channel in INCREASE:
            self._active.setdefault(symbol, {})[topic] = INCREASE[channel]
            self._send_snapshot(conn, topic, symbol, restart_tape=True)
        elif channel == TRADE:
            tape = self._tapes.get(symbol)
            if tape is not None:
                self.start_tape(conn, topic, tape.trades, True)
        elif channel == TICKER:
            for s in [symbol] if symbol else self.market.active:
                self._push_ticker(s, topic, (conn,), now)
        elif channel == FUNDING:
            self._push_funding(symbol, (conn,), now)
        elif channel == BOOK_TICKER:
            self._push_book_ticker(symbol, topic, (conn,))
        else:
            for frame in self._full_book_frames(topic, channel, symbol, now):
                conn.push_text(frame)

    def _send_snapshot(self, conn: SimConnection, topic: str, symbol: str, restart_tape: bool) -> None:
        tape = self._tapes.get(symbol)
        if tape is not None and topic == self.book_topic(self._wire_of[symbol]):
            conn.push_text(tape.snapshot)
            if restart_tape:
                self.start_tape(conn, topic, tape.depth, False)
                conn.state.setdefault(_TAPES, []).append(conn.tape(topic))  # outlives the subscription
            return
        channel, _, _ = _topic_channel(topic)
        bids, asks = self._window(symbol, INCREASE[channel])
        version = self._version[symbol]
        item = self._depth_item(symbol, "snapshot", version, bids.items(), asks.items(), self.market.clock())
        conn.push_text(encode(topic, item))

    # ---- periodic pushes ------------------------------------------------------------------------

    def periodic(self) -> list[tuple[float, Periodic]]:
        loops: list[tuple[float, Periodic]] = [
            (self.full_book_interval, self._full_book_pushes),
            (self.funding_interval, self._funding_pushes),
            (1.0, self._server_pings),
        ]
        if not self.full_speed:
            loops.append((max(0.01, min(1.0, self.heartbeat_interval / 4)), self._heartbeats))
        return loops

    def _heartbeats(self, now: float) -> None:
        """An empty depthIncrease update, advancing the version, for books quiet for a while."""
        for symbol in list(self._active):
            topics = self._live_increase_topics(symbol)
            if not topics or self.market.spec(symbol).status == QUIET:  # its snapshot, "and then nothing"
                continue
            if (
                now - max(self.last_change.get(symbol, 0.0), self._last_beat.get(symbol, 0.0))
                < self.heartbeat_interval
            ):
                continue
            self._last_beat[symbol] = now
            self._version[symbol] += 1
            ms_t = self.market.clock()
            for topic in topics:
                frame = encode(topic, self._depth_item(symbol, "update", self._version[symbol], (), (), ms_t))
                for conn in self.subscribers(topic):
                    conn.push_text(frame)
                    self.empty_pushes += 1

    def _server_pings(self, now: float) -> None:
        for conn in self.open_connections:
            if not conn.state.get(_PINGED) and now - conn.opened_at >= SERVER_PING_AFTER:
                conn.state[_PINGED] = True
                conn.ping()

    def _full_book_pushes(self, now: float) -> None:
        """Every round: tickers, and the whole top N of depth/depthAll (fixed-cadence channels, pushed
        whether or not the book moved); klineBin and bookticker pushes for symbols that changed."""
        ms_t = self.market.clock()
        changed = set(self.take_changed())
        for topic, subs in self.subscriptions():
            channel, wire, _ = _topic_channel(topic)
            if channel == TICKER:
                for symbol in [self.listed[wire]] if wire else self.market.active:
                    self._push_ticker(symbol, topic, subs, ms_t)
            elif wire is None:
                continue
            elif channel in DEPTH or channel in DEPTH_ALL:
                for frame in self._full_book_frames(topic, channel, self.listed[wire], ms_t):
                    for conn in subs:
                        conn.push_text(frame)
            elif self.listed[wire] not in changed:
                continue
            elif channel == BOOK_TICKER:
                self._push_book_ticker(self.listed[wire], topic, subs)
            elif channel in KLINE_STEPS:
                for frame in self._full_book_frames(topic, channel, self.listed[wire], ms_t):
                    for conn in subs:
                        conn.push_text(frame)

    def _full_book_frames(self, topic: str, channel: str, symbol: str, ms_t: int) -> list[str]:
        wire = self._wire_of[symbol]
        if channel in KLINE_STEPS:
            k = self.market.current_kline(symbol, KLINE_STEPS[channel])
            if k is None:
                return []
            item = {
                "o": k.open,
                "h": k.high,
                "l": k.low,
                "c": k.close,
                "v": self.contracts(symbol, k.volume),
                "ts": k.open_time,
            }
            return [encode(topic, {"symbol": wire, "items": [item]})]
        depth = DEPTH.get(channel) or DEPTH_ALL[channel]
        book = self._book(symbol)
        bids, asks = book.bids.top(depth).items(), book.asks.top(depth).items()
        if channel in DEPTH_ALL:
            data = {
                "symbol": wire,
                "asks": self._levels(symbol, asks),
                "bids": self._levels(symbol, bids),
                "ms_t": ms_t,
            }
            return [encode(topic, data)]
        return [  # the legacy depth channel: one side per message, way 1 = bids, 2 = asks
            encode(topic, {"symbol": wire, "way": 1, "depths": self._levels(symbol, bids), "ms_t": ms_t}),
            encode(topic, {"symbol": wire, "way": 2, "depths": self._levels(symbol, asks), "ms_t": ms_t}),
        ]

    def _record(self, conn: SimConnection, channel: str, wire: str, item: dict[str, Any]) -> None:
        if self.record_sent and not conn.closed:  # a closed connection's pushes are dropped
            conn.state.setdefault(_SERVED, []).append((channel, wire, item))

    def _touch(self, symbol: str) -> tuple[str, str, str, str]:
        book = self._book(symbol)
        pd = self.market.spec(symbol).price_decimals
        bid, bid_q = next(iter(book.bids.top(1).items()), (0, 0))
        ask, ask_q = next(iter(book.asks.top(1).items()), (0, 0))
        return format_units(bid, pd), str(bid_q), format_units(ask, pd), str(ask_q)

    def ticker_item(self, symbol: str, ms_t: int) -> dict[str, str]:
        """The `futures/ticker` data of `symbol` now (mark and index from the market's derivatives)."""
        deriv = self.market.derivatives(symbol, ms_t)
        stats = self.market.stats_24h(symbol, ms_t)
        bid, bid_q, ask, ask_q = self._touch(symbol)
        return {
            "symbol": self._wire_of[symbol],
            "last_price": self.market.last_price(symbol),
            "volume_24": self.contracts(symbol, stats.base_volume),
            "range": stats.fluctuation,
            "mark_price": deriv.mark,
            "index_price": deriv.index,
            "ask_price": ask,
            "ask_vol": ask_q,
            "bid_price": bid,
            "bid_vol": bid_q,
        }

    def _push_ticker(self, symbol: str, topic: str, subs: Iterable[SimConnection], ms_t: int) -> None:
        # Data groups carry a speed the client may not have sent (§4.1): `futures/ticker:X@100ms`.
        _, wire, speed = _topic_channel(topic)
        wire = self._wire_of[symbol]
        item = self.ticker_item(symbol, ms_t)
        frame = encode(f"{TICKER}:{wire}{speed if speed.startswith('@') else '@100ms'}", item)
        for conn in subs:
            conn.push_text(frame)
            self._record(conn, TICKER, wire, item)

    def funding_item(self, symbol: str, ms_t: int) -> dict[str, Any]:
        """The `futures/fundingRate` data of `symbol` at `ms_t`: `fundingTime` is the reply time (to the
        second) and `nextFundingTime` the settlement, as seen on the wire (§4.7)."""
        deriv = self.market.derivatives(symbol, ms_t)
        return {
            "symbol": self._wire_of[symbol],
            "fundingRate": deriv.funding_rate,
            "fundingTime": ms_t // 1000 * 1000,
            "nextFundingRate": deriv.next_funding_rate,
            "nextFundingTime": deriv.next_funding_time_ms,
            "funding_upper_limit": FUNDING_LIMITS[0],
            "funding_lower_limit": FUNDING_LIMITS[1],
            "ts": ms_t,
        }

    def _push_funding(self, symbol: str, subs: Iterable[SimConnection], ms_t: int) -> None:
        wire = self._wire_of[symbol]
        item = self.funding_item(symbol, ms_t)
        frame = encode(f"{FUNDING}:{wire}", item)
        for conn in subs:
            conn.push_text(frame)
            self._record(conn, FUNDING, wire, item)

    def _funding_pushes(self, now: float) -> None:
        ms_t = self.market.clock()
        for topic, subs in self.subscriptions():
            channel, wire, _ = _topic_channel(topic)
            if channel == FUNDING and wire is not None:
                self._push_funding(self.listed[wire], subs, ms_t)

    def _push_book_ticker(self, symbol: str, topic: str, subs: Iterable[SimConnection]) -> None:
        """The best bid/ask to each of `subs` that was not sent exactly this touch last."""
        wire = self._wire_of[symbol]
        touch = self._touch(symbol)
        frame: str | None = None
        for conn in subs:
            touch_sent: dict[str, tuple] = conn.state.setdefault(_TOUCH, {})
            if touch_sent.get(wire) == touch:
                continue
            if frame is None:
                bid, bid_q, ask, ask_q = touch
                item = {
                    "symbol": wire,
                    "best_bid_price": bid,
                    "best_bid_vol": bid_q,
                    "best_ask_price": ask,
                    "best_ask_vol": ask_q,
                    "ms_t": self.market.clock(),
                }
                frame = encode(topic, item)
            touch_sent[wire] = touch
            conn.push_text(frame)

    # ---- fault frames -----------------------------------------------------------------------------

    def stale_update(self, symbol: str, back: int) -> tuple[str, Frame]:
        """A depthIncrease50 update `back` versions old carrying a bid level absent from the book."""
        book = self._book(symbol)
        pd = self.market.spec(symbol).price_decimals
        best = next(iter(book.bids.top(1)), 10)
        price = best - 1
        while price in book.bids.levels and price > 1:
            price -= 1
        wire = self._wire_of[symbol]
        topic = self.book_topic(wire)
        item = {
            "symbol": wire,
            "asks": [],
            "bids": [{"price": format_units(price, pd), "vol": "1"}],
            "ms_t": self.market.clock(),
            "version": self._version[symbol] - back,
            "type": "update",
        }
        return topic, encode(topic, item)

    def malformed_frame(self) -> Frame:
        """A TEXT frame that is not JSON (truncated)."""
        return '{"data":[{"trade_id":3000000389425121,"symbol":"BTCUS'

    def oversized_frame(self, size: int) -> Frame:
        """A TEXT frame of about `size` bytes of valid JSON on a channel nobody asked for."""
        return encode("futures/notice", {"pad": "x" * max(0, size - 40)})

    # ---- REST -----------------------------------------------------------------------------------

    def rest_routes(self) -> dict[str, Handler]:
        return {
            "/system/time": self._rest_time,
            "/contract/public/details": self._rest_details,
            "/contract/public/depth": self._rest_depth,
            "/contract/public/kline": self._rest_kline,
            "/contract/public/funding-rate": self._rest_funding_rate,
            "/contract/public/funding-rate-history": self._rest_funding_history,
            "/contract/public/open-interest": self._rest_open_interest,
        }

    def rest_limit(self, route: str) -> tuple[int, float] | None:
        return REST_LIMITS.get(route)

    def rate_headers(
        self, route: str, used: int, limit: tuple[int, float] | None, window: float
    ) -> dict[str, str]:
        return rate_headers(used, limit)  # as on the spot host (§3.1)

    def too_many_requests(self, headers: dict[str, str]) -> web.Response:
        return _envelope(None, headers, code=30013, message="Request too many requests", status=429)

    async def _rest_time(self, request: web.Request) -> web.Response:
        return _envelope({"server_time": self.market.clock()})

    def _details(self, spec: SymbolSpec, now: int) -> dict[str, Any]:
        symbol = spec.name
        trading = spec.status in OPEN
        deriv = self.market.derivatives(symbol, now)
        stats = self.market.stats_24h(symbol, now)
        oi = deriv.open_interest
        return {
            "symbol": self._wire_of[symbol],
            "product_type": 1,
            "open_timestamp": 1594080000123,
            "expire_timestamp": 0,
            "settle_timestamp": 0,
            "base_currency": spec.base,
            "quote_currency": spec.quote,
            "last_price": self.market.last_price(symbol),
            "volume_24h": self.contracts(symbol, stats.base_volume),
            "turnover_24h": stats.quote_volume,
            "index_price": deriv.index,
            "index_name": self._wire_of[symbol],
            "contract_size": spec.contract_size,
            "min_leverage": "1",
            "max_leverage": "100",
            "price_precision": spec.tick,  # a tick size, not a count of decimals
            "vol_precision": "1",  # contracts
            "max_volume": "500000",
            "market_max_volume": "500000",
            "min_volume": "1",
            "funding_rate": deriv.funding_rate,
            "expected_funding_rate": deriv.next_funding_rate,
            "open_interest": self.contracts(symbol, oi),
            "open_interest_value": _plain(Decimal(oi) * Decimal(deriv.mark)),
            "high_24h": stats.high,
            "low_24h": stats.low,
            "change_24h": stats.fluctuation,
            "funding_interval_hours": 8,
            "funding_time": deriv.next_funding_time_ms,
            # the notes know `Trading` and `Delisted` only: a listed symbol that is not trading is the latter
            "status": "Trading" if trading else "Delisted",
            "delist_time": 0 if trading else now // 1000,
        }

    async def _rest_details(self, request: web.Request) -> web.Response:
        """Every contract, or the one named by `symbol` (an unknown one: an empty list, our choice)."""
        now = self.market.clock()
        wanted = request.query.get("symbol")
        rows = [
            self._details(spec, now)
            for spec in self.market.specs.values()
            if wanted is None or self._wire_of[spec.name] == wanted
        ]
        return _envelope({"symbols": rows})

    def _symbol_param(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        """(market id, None) for a listed `symbol`, else (None, an error answer). The futures host's
        errors are not in the notes: 49998 INVALID_PARAMETER is the one ccxt saw on the wire, 40034
        "This contract is not found" is from the futures error table ccxt carries (both HTTP 400)."""
        wire = request.query.get("symbol")
        if not wire:
            return None, _envelope(None, code=49998, message="INVALID_PARAMETER", status=400)
        symbol = self.listed.get(wire)
        if symbol is None:
            return None, _envelope(None, code=40034, message="This contract is not found", status=400)
        return symbol, None

    async def _rest_depth(self, request: web.Request) -> web.Response:
        """Up to 50 levels per side as [price, contracts, cumulative contracts]; `timestamp` a number."""
        symbol, error = self._symbol_param(request)
        if symbol is None:
            return error  # type: ignore[return-value]
        book = self._book(symbol)
        pd = self.market.spec(symbol).price_decimals

        def side(levels: dict[int, int]) -> list[list[str]]:
            out, total = [], 0
            for p, q in levels.items():
                total += q
                out.append([format_units(p, pd), str(q), str(total)])
            return out

        data = {
            "asks": side(book.asks.top(DEPTH_REST_LEVELS)),
            "bids": side(book.bids.top(DEPTH_REST_LEVELS)),
            "timestamp": self.market.clock(),
            "symbol": self._wire_of[symbol],
        }
        return _envelope(data)

    async def _rest_kline(self, request: web.Request) -> web.Response:
        """Candles with `start_time <= timestamp <= end_time` (seconds, both required), oldest first,
        at most 500 (the oldest), volume in contracts; minutes without trades are flat candles at the
        previous close. Bounds inclusive and the cut at the oldest 500 are our choices (the notes do
        not say)."""
        symbol, error = self._symbol_param(request)
        if symbol is None:
            return error  # type: ignore[return-value]
        step = int_param(request, "step", 1)
        start = int_param(request, "start_time", None)
        end = int_param(request, "end_time", None)
        if step not in KLINE_REST_STEPS or start is None or end is None or start > end:
            return _envelope(None, code=49998, message="INVALID_PARAMETER", status=400)
        now_s = self.market.clock() // 1000
        klines = self.market.klines(symbol, step, fill_gaps=True, until_s=now_s)
        rows = [k for k in klines if start <= k.open_time <= end][:KLINE_MAX_ROWS]
        data = [
            {
                "timestamp": k.open_time,
                "open_price": k.open,
                "close_price": k.close,
                "high_price": k.high,
                "low_price": k.low,
                "volume": self.contracts(symbol, k.volume),
            }
            for k in rows
        ]
        return _envelope(data)

    async def _rest_funding_rate(self, request: web.Request) -> web.Response:
        symbol, error = self._symbol_param(request)
        if symbol is None:
            return error  # type: ignore[return-value]
        now = self.market.clock()
        deriv = self.market.derivatives(symbol, now)
        data = {
            "timestamp": now,
            "symbol": self._wire_of[symbol],
            "rate_value": deriv.funding_rate,
            "expected_rate": deriv.next_funding_rate,
            "funding_time": deriv.next_funding_time_ms,
            "funding_upper_limit": FUNDING_LIMITS[0],
            "funding_lower_limit": FUNDING_LIMITS[1],
        }
        return _envelope(data)

    async def _rest_funding_history(self, request: web.Request) -> web.Response:
        """The last `limit` (≤ 100) settlements, newest first, each the rate the market gives for its time."""
        symbol, error = self._symbol_param(request)
        if symbol is None:
            return error  # type: ignore[return-value]
        limit = int_param(request, "limit", FUNDING_HISTORY_MAX)
        if limit is None or not 1 <= limit <= FUNDING_HISTORY_MAX:
            return _envelope(None, code=49998, message="INVALID_PARAMETER", status=400)
        wire = self._wire_of[symbol]
        last = self.market.derivatives(symbol, self.market.clock()).next_funding_time_ms
        period = 8 * 3_600_000
        rows = []
        for k in range(1, limit + 1):
            t = last - k * period
            rows.append(
                {
                    "symbol": wire,
                    "funding_rate": self.market.derivatives(symbol, t).funding_rate,
                    "funding_time": str(t),
                }
            )
        return _envelope({"list": rows})

    async def _rest_open_interest(self, request: web.Request) -> web.Response:
        """Open interest in contracts; its value is contracts x size x mark."""
        symbol, error = self._symbol_param(request)
        if symbol is None:
            return error  # type: ignore[return-value]
        now = self.market.clock()
        deriv = self.market.derivatives(symbol, now)
        data = {
            "timestamp": now,
            "symbol": self._wire_of[symbol],
            "open_interest": self.contracts(symbol, deriv.open_interest),
            "open_interest_value": _plain(Decimal(deriv.open_interest) * Decimal(deriv.mark)),
        }
        if self.record_sent:
            self.served_rest.append(("/contract/public/open-interest", data))
        return _envelope(data)


# ---- messages -------------------------------------------------------------------------------------


def _ack(action: str, topic: str, request: dict) -> str:
    return orjson.dumps({"action": action, "group": topic, "success": True, "request": request}).decode()


def _refusal(action: Any, topic: str, request: dict, error: str) -> str:
    body = {"action": action, "group": topic, "success": False, "request": request, "error": error}
    return orjson.dumps(body).decode()


def _error_text(error: str, **fields: Any) -> str:
    return orjson.dumps({**fields, "success": False, "error": error}).decode()


def _plain(d: Decimal) -> str:
    return format(d.normalize(), "f")


def _envelope(
    data: Any,
    headers: dict[str, str] | None = None,
    *,
    code: int = 1000,
    message: str = "Ok",
    status: int = 200,
) -> web.Response:
    body = {"code": code, "message": message, "trace": str(uuid.uuid4()), "data": data}
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


# ---- standalone ---------------------------------------------------------------------------------


async def start_bitmart_perpetual(
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 0,
    rate: float = 50.0,
    symbols: Sequence[str | SymbolSpec] | int | None = None,
    **options: Any,
) -> BitmartPerpSim:
    """Start a simulator and return it (the caller stops it)."""
    sim = BitmartPerpSim(symbols, seed=seed, rate=rate, **options)
    return await sim.start(host, port)


__all__ = ["BitmartPerpSim", "encode", "rfc3339_ns", "start_bitmart_perpetual"]
