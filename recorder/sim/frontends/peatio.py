"""openware Peatio + Ranger front-end of the simulator: the public Ranger WebSocket
(`/api/v2/ranger/public`) and Peatio's public REST API (`/api/v2/peatio/public/...`), on the
venue-neutral `SimServer`. It serves `recorder simulate peatio` and `recorder simulate altmarkets`.

Wire facts follow ../shared/protocols/altmarkets.md (cited as §n). Where the two websocket servers
differ (§8 question 1) it behaves as Go **Rango**: the 512-byte read limit (§1.5), protocol pings
every 54 s (§1.4), `{"error": "<text>"}` errors with Rango's texts (§1.3), JSON keys sorted (§1.6),
and snapshots never pushed to connected subscribers, not even the first one (§2.3).

The model, per market:

- **engine**: `sequence` starts somewhere (as if the engine had been running) and goes up by one per
  published increment (§2.3). An increment carries one level of one side with `""` for a delete
  (the Ruby engine, the default) or, per market, a batch `[[p, v], ...]` of one market event with
  `"0"` for a delete (finex-style, §2.2). Snapshots are published from inside an increment, only
  while the book changes: after `snapshot_max_period` s, or after `snapshot_min_period` s once
  `snapshot_min_increments` increments have accumulated (10/60/20 as Peatio, §2.3); the snapshot
  has the sequence before the increment and already holds its change (the overlap of §2.3).
  `engine_restart` puts the sequence back to 1 and publishes the start snapshot (§2.3).
- **Ranger's cache**: the last snapshot and every increment since. A new `<m>.ob-inc` subscriber
  gets the snapshot, those increments, then the ack (§1.3, §2.3). Increments that come while no
  snapshot is cached are dropped (Rango); a later snapshot only replaces the cache. Subscribing a
  held `-inc` stream again replays again (the notes are silent; a replay is what was asked for).
  Any stream name is accepted and held (Ranger routes names; `<m>.ob-snap` itself gets nothing).
- **REST k-line**: candles only for intervals with trades (the notes are silent; Peatio 2.4+ reads
  them from InfluxDB continuous queries, which write nothing for an empty interval), bounds
  inclusive. Errors are 422 `{"errors": [code]}` (§3); codes other than
  `public.market.doesnt_exist` follow Peatio's naming and are not in the notes.

Faults beyond the server's: `engine_restart` (optionally with its start snapshot lost, so that a
quiet market then has none until its book changes enough), `ranger_restart` (every socket dropped,
every cache emptied), `resend_trades` (trades sent again with their tids), `set_increment_shape`.
`skip_version`/`duplicate_version` act per increment on the way to connected subscribers (the
cache keeps every increment, so a resubscribe heals a gap). No compression: deflate faults raise
NotImplementedError.

Not modelled: Rango's 60 s read deadline counts only pong frames (here any client frame keeps a
socket alive, for `idle_timeout` s); its 256-message outbound buffer (a replay burst would trip
it here, where the writer runs after the burst is queued); private streams and auth.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from aiohttp import web

from recorder.sim.market import MarketEvent, SymbolSpec, Trade, format_units, parse_units
from recorder.sim.server import Frame, Handler, Periodic, SimConnection, SimServer, int_param

# ---- wire constants -------------------------------------------------------------------------------

WS_PATH = "/api/v2/ranger/public"  # §1.1
REST_PREFIX = "/api/v2/peatio"  # §3 "Base URL"
MAX_CLIENT_MESSAGE = 512  # Rango's read limit: a client message of 512 bytes or more closes the socket (§1.5)
PING_PERIOD = 54.0  # Rango's protocol pings (§1.4)
PONG_WAIT = 60.0  # ... and its read deadline

TRADES, OB_INC, OB_SNAP, KLINE = "trades", "ob-inc", "ob-snap", "kline-"
GLOBAL_TICKERS = "global.tickers"
SINGLE, BATCHED = "single", "batched"
Shape = Literal["single", "batched"]

SNAPSHOT_LEVELS = 301  # Ruby's [0..300] (§2.1)
SNAPSHOT_MIN_PERIOD = 10.0  # MIN_PERIOD_TO_SNAPSHOT (§2.3)
SNAPSHOT_MAX_PERIOD = 60.0  # MAX_PERIOD_TO_SNAPSHOT
SNAPSHOT_MIN_INCREMENTS = 20  # MIN_INCREMENT_COUNT_TO_SNAPSHOT
KLINE_EVERY = 2.0  # the k-line cron job (§2.5)
TICKERS_EVERY = 5.0  # the ticker cron job (§2.6)

# WS stream suffix <P> -> REST `period` minutes (§2.5)
KLINE_PERIODS = {
    "1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240, "6h": 360,
    "12h": 720, "1d": 1440, "3d": 4320, "1w": 10080,
}  # fmt: skip
REST_PERIODS = frozenset(KLINE_PERIODS.values())

# Rango's error texts (§1.3)
ERR_PARSE = "Could not parse message: {}"
ERR_EVENT = "Could not parse Type: Invalid event"
ERR_STREAMS = "No streams provided"
# The simulator's own text for a refused subscription (`fail_next_subscribe`): no refusal of a
# public stream is documented, so the text only has to be clear.
ERR_REFUSED = "Could not subscribe: {} (refused by the simulator)"

# REST (§3.8): no limit is published. Peatio deployments answer 429 past theirs; the simulator
# allows Hummingbot's own throttle (30 requests per 12 s) per endpoint.
REST_LIMIT = (30, 12.0)

# Quotes known to the simulator when it must split a wire id given to its constructor (the
# recorder never does this: it reads base_unit/quote_unit, §3.9).
_QUOTES = sorted(
    ["usdt", "usdc", "usds", "tusd", "busd", "btc", "eth", "bnb", "ltc", "doge", "altm", "cro", "roger",
     "usd", "eur", "trx", "xrp"],
    key=len, reverse=True,
)  # fmt: skip


def encode(doc: Any) -> str:
    """One frame as Rango writes it: JSON with its keys sorted (§1.6)."""
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode()


def decimal(text: str) -> str:
    """A decimal string as Peatio writes BigDecimal (`to_s`, "F" format): no trailing zeros, at
    least one decimal (§2.1): "64949.020" -> "64949.02", "5" -> "5.0", "0" -> "0.0"."""
    whole, dot, frac = text.partition(".")
    frac = frac.rstrip("0") if dot else ""
    return f"{whole or '0'}.{frac or '0'}"


def snapshot_frame(wire: str, seq: int, bids: list[list[str]], asks: list[list[str]]) -> str:
    """`<m>.ob-snap`: asks ascending, bids descending, best first (§2.1)."""
    body = {
        "asks": [[decimal(p), decimal(v)] for p, v in asks[:SNAPSHOT_LEVELS]],
        "bids": [[decimal(p), decimal(v)] for p, v in bids[:SNAPSHOT_LEVELS]],
        "sequence": seq,
    }
    return encode({f"{wire}.{OB_SNAP}": body})


def single_increment(wire: str, seq: int, side: str, price: str, size: str) -> str:
    """The Ruby engine's increment: one level of one side, `""` deleting it (§2.2)."""
    amount = "" if size == "0" else decimal(size)
    return encode({f"{wire}.{OB_INC}": {f"{side}s": [decimal(price), amount], "sequence": seq}})


def batched_increment(wire: str, seq: int, bids: list[list[str]], asks: list[list[str]]) -> str:
    """A finex-style increment: the levels of one change, `"0"` deleting (§2.2, Rango's msg.txt)."""
    body: dict[str, Any] = {"sequence": seq}
    if asks:
        body["asks"] = [[decimal(p), "0" if v == "0" else decimal(v)] for p, v in asks]
    if bids:
        body["bids"] = [[decimal(p), "0" if v == "0" else decimal(v)] for p, v in bids]
    return encode({f"{wire}.{OB_INC}": body})


def trade_frame(wire: str, tid: int, t: Trade) -> str:
    """`<m>.trades`: one trade per message, `date` in seconds (§2.4)."""
    trade = {
        "tid": tid,
        "taker_type": t.side,
        "date": t.ts_ms // 1000,
        "price": decimal(t.price),
        "amount": decimal(t.size),
    }
    return encode({f"{wire}.{TRADES}": {"trades": [trade]}})


def error_frame(text: str) -> str:
    return encode({"error": text})


def ack_frame(message: str, streams: Iterable[str]) -> str:
    """Every stream the connection holds now, whatever was just asked (§1.3)."""
    return encode({"success": {"message": message, "streams": list(streams)}})


def streams_of_query(values: Iterable[str]) -> list[str]:
    """`?stream=a&stream=b`; Rango also splits one value on commas (§1.2)."""
    return [s for v in values for s in v.split(",") if s]


# ---- per-market state -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Engine:
    """One market's matching engine (its sequence and snapshot cadence) and Ranger's cache of it."""

    seq: int
    shape: Shape = SINGLE
    last_snapshot: float = 0.0  # monotonic time the engine last published a snapshot
    since_snapshot: int = 0  # increments published since
    snapshot: str | None = None  # Ranger's cached ob-snap frame (None: nothing cached)
    increments: list[str] = field(default_factory=list)  # cached ob-inc frames since it


@dataclass(slots=True)
class _Tape:
    """Full-speed mode: one market's pre-encoded history (its snapshot, then every increment)."""

    snapshot: str
    increments: list[str] = field(default_factory=list)
    trades: list[tuple[str, tuple[Trade, ...]]] = field(default_factory=list)


_STREAMS = "streams"  # conn.state key: the streams a connection holds, in subscription order
_CLOSING = "closing"  # conn.state key: the client broke the read limit, nothing more is read


class PeatioSim(SimServer):
    """Simulated Peatio/Ranger venue (public market data) on 127.0.0.1.

    Options are `SimServer`'s, plus: `increment_shape` ("single", "batched", or a map of symbol ->
    shape), the snapshot cadence (`snapshot_min_period`, `snapshot_max_period`,
    `snapshot_min_increments`) and `ping_interval` (server protocol pings; 0: none). `symbols` may
    be wire ids (`btcusdt`). Ground truth adds `trade_id(trade)` and `received` (every client
    message, as (connection id, text)).
    """

    ws_path = WS_PATH
    ws_extra_paths = (WS_PATH + "/",)  # the older trailing-slash URL and BaseApp's `/?stream=` (§1.1, §1.2)
    # Rango's 512-byte read limit is enforced in `on_text`/`on_binary`, not by aiohttp, so that the
    # message that broke it is recorded in `received` too (the socket closes the same way, 1009).
    ws_max_message = 1 << 20
    rest_prefix = REST_PREFIX

    def __init__(
        self,
        symbols: Sequence[str | SymbolSpec] | int | None = None,
        seed: int = 0,
        rate: float = 50.0,
        idle_timeout: float = PONG_WAIT,
        heartbeat_interval: float = 5.0,
        *,
        increment_shape: Shape | Mapping[str, Shape] = SINGLE,
        snapshot_min_period: float = SNAPSHOT_MIN_PERIOD,
        snapshot_max_period: float = SNAPSHOT_MAX_PERIOD,
        snapshot_min_increments: int = SNAPSHOT_MIN_INCREMENTS,
        ping_interval: float = PING_PERIOD,
        **options: Any,
    ) -> None:
        super().__init__(symbols, seed, rate, idle_timeout, heartbeat_interval, **options)
        rng = random.Random(self.seed ^ 0x9EA7)
        self._rng = rng
        self._wire_of = {name: wire for wire, name in self.listed.items()}
        self.snapshot_min_period = snapshot_min_period
        self.snapshot_max_period = snapshot_max_period
        self.snapshot_min_increments = snapshot_min_increments
        self.ping_interval = ping_interval
        # As if each engine had been running: sequences well past 1, trade ids global to the venue.
        self._seq_base = {name: rng.randint(1_000, 900_000) for name in self.market.symbols}
        self._engines: dict[str, _Engine] = {}
        shapes = increment_shape if isinstance(increment_shape, Mapping) else {}
        default = increment_shape if isinstance(increment_shape, str) else SINGLE
        self._shapes = {name: default for name in self.market.symbols}
        for symbol, shape in shapes.items():
            self._shapes[self.market.resolve(symbol)] = shape
        self._next_tid = rng.randint(1_000_000, 9_000_000)
        self._tids: dict[int, tuple[Trade, int]] = {}  # id(trade) -> (trade, tid): keeps it alive
        self._tid_order: deque[int] = deque()
        self._history_named = False
        self._tapes: dict[str, _Tape] = {}
        self.received: list[tuple[int, str]] = []

    # ---- ids and sequence numbers ---------------------------------------------------------------

    def wire(self, symbol: str) -> str:
        """`BTC-USDT` -> `btcusdt` (§3.9)."""
        return symbol.replace("-", "").lower()

    def neutral(self, wire: str) -> str:
        if "-" in wire:
            return wire.upper()
        low = wire.lower()
        for quote in _QUOTES:
            if low.endswith(quote) and len(low) > len(quote):
                return f"{low[: -len(quote)].upper()}-{quote.upper()}"
        raise ValueError(f"cannot tell the base from the quote in {wire!r}: name it BASE-QUOTE")

    def book_topic(self, wire: str) -> str:
        return f"{wire}.{OB_INC}"

    def truth_seq(self, symbol: str) -> int:
        return self._engine(symbol).seq

    def sequence(self, symbol: str) -> int:
        """The engine's current sequence of `symbol` (a wire or market id)."""
        return self.truth_seq(self.market.resolve(symbol))

    def trade_id(self, trade: Trade) -> int:
        """The `tid` the venue gave `trade` (REST `id`)."""
        self._name_history()
        known = self._tids.get(id(trade))
        if known is None or known[0] is not trade:
            return self._new_tid(trade)
        return known[1]

    def increment_shape(self, symbol: str) -> Shape:
        return self._shapes[self.market.resolve(symbol)]

    def set_increment_shape(self, symbol: str, shape: Shape) -> None:
        """From now on `symbol`'s increments have `shape` (a test's switch; a real engine has one)."""
        if shape not in (SINGLE, BATCHED):
            raise ValueError(f"shape {shape!r}")
        name = self.market.resolve(symbol)
        self._shapes[name] = shape
        if name in self._engines:
            self._engines[name].shape = shape

    def _engine(self, symbol: str) -> _Engine:
        """The engine of market id `symbol`; the first use starts it, with its start snapshot."""
        e = self._engines.get(symbol)
        if e is None:
            e = self._engines[symbol] = _Engine(self._seq_base[symbol], self._shapes[symbol])
            self._publish_snapshot(symbol, e)
        return e

    def _new_tid(self, trade: Trade) -> int:
        tid = self._next_tid
        self._next_tid += 1
        self._tids[id(trade)] = (trade, tid)
        order = self._tid_order
        order.append(id(trade))
        limit = self.market.trade_log_limit
        if limit is not None and len(order) > 4 * limit * len(self.market.symbols):
            for _ in range(len(order) // 2):  # the market forgot these trades too
                self._tids.pop(order.popleft(), None)
        return tid

    def _name_history(self) -> None:
        """Trade ids for the trades the market holds before the first is sent or asked for (its
        `history_minutes`, and the trades of the event being sent), in time order."""
        if self._history_named:
            return
        self._history_named = True
        history = sorted(
            (t for name in self.market.symbols for t in self.market.trades(name)), key=lambda t: t.ts_ms
        )
        for t in history:
            if id(t) not in self._tids:
                self._new_tid(t)

    # ---- the engine and Ranger's cache ------------------------------------------------------------

    def _publish_snapshot(self, symbol: str, e: _Engine) -> None:
        """The engine publishes a snapshot of the book as it is now; Ranger caches it in place of
        the old one and its increments, and pushes it to nobody (Rango, §2.3)."""
        e.last_snapshot = time.monotonic()
        e.since_snapshot = 0
        bids, asks = self.market.book(symbol).top(SNAPSHOT_LEVELS)
        e.snapshot = snapshot_frame(self._wire_of[symbol], e.seq, bids, asks)
        e.increments = []

    def _snapshot_due(self, e: _Engine, now: float) -> bool:
        elapsed = now - e.last_snapshot
        return elapsed >= self.snapshot_max_period or (
            e.since_snapshot >= self.snapshot_min_increments and elapsed > self.snapshot_min_period
        )

    def _publish_increment(self, symbol: str, e: _Engine, encode_at: Any) -> None:
        """One `publish_increment` of the engine: maybe a snapshot first (with the sequence before
        this increment, the change already in it), then the increment; Ranger caches it (or drops
        it, with no snapshot cached) and passes it to the subscribers."""
        if self._snapshot_due(e, time.monotonic()):
            self._publish_snapshot(symbol, e)
        e.seq += 1
        e.since_snapshot += 1
        frame = encode_at(e.seq)
        if e.snapshot is None:
            return  # "No snapshot received before the increment" (§2.3)
        e.increments.append(frame)
        if self.take_skip(symbol):
            return
        subs = self.subscribers(f"{self._wire_of[symbol]}.{OB_INC}")
        if not subs:
            return
        copies = self.copies(symbol)
        for conn in subs:
            for _ in range(copies):
                conn.push_text(frame)

    def engine_restart(self, symbol: str, snapshot: bool = True) -> None:
        """`symbol`'s matching engine restarts: its sequence goes back to 1 and it publishes its start
        snapshot (§2.3), which replaces Ranger's cache; connected subscribers are not told (the next
        increment, sequence 2, goes backwards for them). With `snapshot=False` that snapshot never
        reaches Ranger (Ranger was restarting too): the cache is empty, increments are dropped, and
        new subscribers get no snapshot until the engine publishes its next one, which takes book
        changes (a quiet market has none for as long as it stays quiet)."""
        name = self.market.resolve(symbol)
        e = self._engine(name)
        e.seq = 1
        self._publish_snapshot(name, e)
        if not snapshot:
            e.snapshot, e.increments = None, []

    def ranger_restart(self) -> int:
        """Ranger restarts: every socket is cut and every cache is empty, until each engine
        publishes its next snapshot (§2.3: after a Rango restart a quiet market has none). Sequences
        go on. Returns how many connections were dropped."""
        for e in self._engines.values():
            e.snapshot, e.increments = None, []
        return self.drop_connections()

    def resend_trades(self, symbol: str, count: int = 1) -> None:
        """The last `count` trades of `symbol` are sent again, with their tids, to its trade
        subscribers (not a documented Ranger behaviour: a client must drop them by tid all the same)."""
        name = self.market.resolve(symbol)
        wire = self._wire_of[name]
        subs = self.subscribers(f"{wire}.{TRADES}")
        for t in self.market.recent_trades(name, count):
            frame = trade_frame(wire, self.trade_id(t), t)
            for conn in subs:
                conn.push_frame(frame, (t,))

    # ---- market events ----------------------------------------------------------------------------

    def on_market_event(self, event: MarketEvent) -> None:
        symbol = event.symbol
        wire = self._wire_of[symbol]
        e = self._engine(symbol)
        if event.trades:
            subs = self.subscribers(f"{wire}.{TRADES}")
            for t in event.trades:
                tid = self.trade_id(t)
                if subs:
                    frame = trade_frame(wire, tid, t)
                    for conn in subs:
                        conn.push_frame(frame, (t,))
        if e.shape == SINGLE:
            for side, price, size in event.changes:
                self._publish_increment(
                    symbol, e, lambda seq, s=side, p=price, v=size: single_increment(wire, seq, s, p, v)
                )
        else:
            bids, asks = event.split()
            self._publish_increment(symbol, e, lambda seq: batched_increment(wire, seq, bids, asks))

    def build_tapes(self, events: Iterable[MarketEvent]) -> None:
        """Full-speed mode: each market's start snapshot, then every increment and trade, encoded once;
        a subscriber gets the snapshot and the whole tape (the cache of a Ranger that never lost one)."""
        self._name_history()
        for symbol in self.market.symbols:
            e = self._engine(symbol)
            assert e.snapshot is not None
            self._tapes[symbol] = _Tape(e.snapshot)
        for event in events:
            symbol = event.symbol
            wire, e, tape = self._wire_of[symbol], self._engines[symbol], self._tapes[symbol]
            for t in event.trades:
                tape.trades.append((trade_frame(wire, self.trade_id(t), t), (t,)))
            if e.shape == SINGLE:
                for side, price, size in event.changes:
                    e.seq += 1
                    tape.increments.append(single_increment(wire, e.seq, side, price, size))
            else:
                e.seq += 1
                bids, asks = event.split()
                tape.increments.append(batched_increment(wire, e.seq, bids, asks))

    # ---- requests -------------------------------------------------------------------------------

    def on_open(self, conn: SimConnection) -> None:
        """Streams in the URL are subscribed at connect time, and acked: with none, an empty ack (§1.3)."""
        self._subscribe(conn, streams_of_query(conn.request.query.getall("stream", [])))

    def on_text(self, conn: SimConnection, text: str) -> None:
        if conn.state.get(_CLOSING):
            return  # Rango stopped reading this socket
        if self.record_sent:
            self.received.append((conn.id, text))
        if len(text.encode()) >= MAX_CLIENT_MESSAGE:
            conn.state[_CLOSING] = True
            conn.close_with(1009)  # gorilla's read limit: "message too big" (§1.5)
            return
        if text == "ping":  # Rango: text `ping` -> text `pong`, not JSON (§1.4)
            conn.push_text("pong")
            return
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            conn.push_text(error_frame(ERR_PARSE.format(exc)))
            return
        event = request.get("event") if isinstance(request, dict) else None
        if event not in ("subscribe", "unsubscribe"):
            conn.push_text(error_frame(ERR_EVENT))
            return
        streams = request.get("streams")
        if not isinstance(streams, list) or not streams or not all(isinstance(s, str) and s for s in streams):
            conn.push_text(error_frame(ERR_STREAMS))
            return
        if event == "subscribe":
            self._subscribe(conn, streams)
        else:
            self._unsubscribe(conn, streams)

    def on_binary(self, conn: SimConnection, data: bytes) -> None:
        """Rango reads any message as text (the limit counts bytes either way)."""
        if len(data) >= MAX_CLIENT_MESSAGE and not conn.state.get(_CLOSING):
            if self.record_sent:
                self.received.append((conn.id, data.decode("utf-8", "replace")))
            conn.state[_CLOSING] = True
            conn.close_with(1009)
            return
        self.on_text(conn, data.decode("utf-8", "replace"))

    def on_drop_topic(self, conn: SimConnection, topic: str) -> None:
        held: dict[str, None] | None = conn.state.get(_STREAMS)
        if held is not None:
            held.pop(topic, None)

    def _held(self, conn: SimConnection) -> dict[str, None]:
        return conn.state.setdefault(_STREAMS, {})

    def _subscribe(self, conn: SimConnection, streams: list[str]) -> None:
        """Each `-inc` stream gets the cached snapshot and increments first, then the ack (§1.3)."""
        held = self._held(conn)
        refused = []
        for stream in dict.fromkeys(streams):
            if self.take_subscribe_failure():
                refused.append(stream)
                continue
            held[stream] = None
            self.add_subscription(conn, stream)
            self._initial_push(conn, stream)
        conn.push_text(ack_frame("subscribed", held))
        for stream in refused:
            conn.push_text(error_frame(ERR_REFUSED.format(stream)))

    def _unsubscribe(self, conn: SimConnection, streams: list[str]) -> None:
        for stream in streams:
            if stream in conn.topics:
                self.drop_subscription(conn, stream)
        conn.push_text(ack_frame("unsubscribed", self._held(conn)))

    def _initial_push(self, conn: SimConnection, stream: str) -> None:
        """Ranger routes any stream name; only an `-inc` stream of a listed market gets a replay."""
        wire, _, kind = stream.rpartition(".")
        symbol = self.listed.get(wire)
        if symbol is None:
            return
        tape = self._tapes.get(symbol)
        if kind == OB_INC:
            if tape is not None:
                conn.push_text(tape.snapshot)
                self.start_tape(conn, stream, tape.increments, False)
                return
            e = self._engine(symbol)
            if e.snapshot is not None:
                conn.push_text(e.snapshot)
                for frame in e.increments:
                    conn.push_text(frame)
        elif kind == TRADES and tape is not None:
            self.start_tape(conn, stream, tape.trades, True)

    # ---- periodic pushes ------------------------------------------------------------------------

    def periodic(self) -> list[tuple[float, Periodic]]:
        loops: list[tuple[float, Periodic]] = []
        if self.ping_interval > 0:
            loops.append((self.ping_interval, self._ping))
        if not self.full_speed:
            loops += [(KLINE_EVERY, self._kline_pushes), (TICKERS_EVERY, self._ticker_pushes)]
        return loops

    def _ping(self, now: float) -> None:
        for conn in self.open_connections:
            conn.ping()

    def _kline_pushes(self, now: float) -> None:
        """The latest candle of every subscribed `<m>.kline-<P>`, changed or not (§2.5)."""
        for topic, subs in self.subscriptions():
            wire, _, kind = topic.rpartition(".")
            minutes = KLINE_PERIODS.get(kind.removeprefix(KLINE)) if kind.startswith(KLINE) else None
            symbol = self.listed.get(wire)
            if minutes is None or symbol is None:
                continue
            k = self.market.current_kline(symbol, minutes)
            if k is None:
                continue
            frame = encode({topic: [k.open_time, *map(float, (k.open, k.high, k.low, k.close, k.volume))]})
            for conn in subs:
                conn.push_text(frame)

    def _ticker_pushes(self, now: float) -> None:
        """`global.tickers`: every market's flat ticker, all values strings (2.4-2.6, §2.6)."""
        subs = self.subscribers(GLOBAL_TICKERS)
        if not subs:
            return
        frame = encode({GLOBAL_TICKERS: {self._wire_of[s]: self._ticker(s) for s in self.market.active}})
        for conn in subs:
            conn.push_text(frame)

    def _ticker(self, symbol: str, at: int | None = None) -> dict[str, str]:
        now_ms = self.market.clock()
        stats = self.market.stats_24h(symbol, now_ms)
        spec = self.market.spec(symbol)
        base, quote = float(stats.base_volume), float(stats.quote_volume)
        avg = format(quote / base, f".{spec.price_decimals}f") if base else "0"
        change = float(stats.fluctuation) * 100
        return {
            "at": str(now_ms // 1000 if at is None else at),
            "avg_price": decimal(avg),
            "high": decimal(stats.high),
            "last": decimal(stats.last),
            "low": decimal(stats.low),
            "open": decimal(stats.open),
            "price_change_percent": f"{change:+.2f}%",
            "volume": decimal(stats.quote_volume),  # quote volume (sum of totals)
            "amount": decimal(stats.base_volume),  # base volume
        }

    # ---- fault frames -----------------------------------------------------------------------------

    def stale_update(self, symbol: str, back: int) -> tuple[str, Frame]:
        """An increment whose sequence went `back` steps backwards, adding a bid level absent from
        the truth, in the market's shape."""
        view = self.market.book(symbol)
        spec = self.market.spec(symbol)
        best = next(iter(view.bids), spec.tick)
        units = parse_units(best, spec.price_decimals) - 1
        while format_units(units, spec.price_decimals) in view.bids and units > 1:
            units -= 1
        price = format_units(units, spec.price_decimals)
        wire = self._wire_of[symbol]
        seq = self._engine(symbol).seq - back
        if self._shapes[symbol] == SINGLE:
            frame = single_increment(wire, seq, "bid", price, spec.lot)
        else:
            frame = batched_increment(wire, seq, [[price, spec.lot]], [])
        return f"{wire}.{OB_INC}", frame

    def malformed_frame(self) -> Frame:
        """A TEXT frame that is not JSON (truncated)."""
        wire = next(iter(self.listed))
        return '{"' + wire + '.trades":{"trades":[{"tid":'

    def oversized_frame(self, size: int) -> Frame:
        """A TEXT frame of about `size` bytes: valid JSON, one key, as Ranger frames are."""
        pad = "".join(self._rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(min(size, 64)))
        pad = (pad * (size // len(pad) + 1))[:size]
        return encode({GLOBAL_TICKERS: {"pad": pad}})

    # ---- REST -----------------------------------------------------------------------------------

    def rest_routes(self) -> dict[str, Handler]:
        return {
            "/public/markets": self._rest_markets,
            "/public/markets/tickers": self._rest_tickers,
            "/public/markets/{market}/tickers": self._rest_ticker,
            "/public/markets/{market}/depth": self._rest_depth,
            "/public/markets/{market}/trades": self._rest_trades,
            "/public/markets/{market}/k-line": self._rest_klines,
            "/public/timestamp": self._rest_timestamp,
        }

    def rest_limit(self, route: str) -> tuple[int, float] | None:
        return REST_LIMIT

    def _market_row(self, spec: SymbolSpec) -> dict[str, Any]:
        """A `/public/markets` entry (§3.1): a listed symbol that does not trade yet is `hidden`."""
        return {
            "id": self._wire_of[spec.name],
            "name": f"{spec.base}/{spec.quote}",
            "base_unit": spec.base.lower(),
            "quote_unit": spec.quote.lower(),
            "min_price": decimal(spec.tick),
            "max_price": "0.0",
            "min_amount": decimal(spec.lot),
            "amount_precision": spec.size_decimals,
            "price_precision": spec.price_decimals,
            "state": "enabled" if spec.status == "trading" else "hidden",
        }

    async def _rest_markets(self, request: web.Request) -> web.Response:
        """Paged by `limit` (1-1000, default 100) and `page`, with `Total`/`Per-Page`/`Page` headers;
        filtered by `base_unit`/`quote_unit`; `order_by` id|position, `ordering` asc|desc (§3.1)."""
        limit = int_param(request, "limit", 100)
        page = int_param(request, "page", 1)
        if limit is None:
            return _errors("public.pagination.non_integer_limit")
        if not 1 <= limit <= 1000:
            return _errors("public.pagination.invalid_limit")
        if page is None:
            return _errors("public.pagination.non_integer_page")
        if page < 1:
            return _errors("public.pagination.invalid_page")
        rows = [self._market_row(spec) for spec in self.market.specs.values()]
        for unit in ("base_unit", "quote_unit"):
            wanted = request.query.get(unit)
            if wanted is not None:
                rows = [r for r in rows if r[unit] == wanted.lower()]
        if request.query.get("order_by") == "id":
            rows.sort(key=lambda r: r["id"])
        if request.query.get("ordering") == "desc":
            rows.reverse()
        headers = {"Total": str(len(rows)), "Per-Page": str(limit), "Page": str(page)}
        return _json(rows[(page - 1) * limit : page * limit], headers)

    def _market(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        """(market id, None) for an active market in the path (enabled or hidden), else a 422 (§3)."""
        symbol = self.listed.get(request.match_info["market"])
        if symbol is None:
            return None, _errors("public.market.doesnt_exist")
        return symbol, None

    async def _rest_depth(self, request: web.Request) -> web.Response:
        """`{"timestamp", "asks", "bids"}`: asks ascending, bids descending, no sequence (§3.2)."""
        symbol, error = self._market(request)
        if symbol is None:
            return error  # type: ignore[return-value]
        limit = int_param(request, "limit", 300)
        if limit is None:
            return _errors("public.market_depth.non_integer_limit")
        if not 1 <= limit <= 1000:
            return _errors("public.market_depth.invalid_limit")
        bids, asks = self.market.book(symbol).top(limit)
        return _json(
            {
                "timestamp": self.market.clock() // 1000,
                "asks": [[decimal(p), decimal(v)] for p, v in asks],
                "bids": [[decimal(p), decimal(v)] for p, v in bids],
            }
        )

    async def _rest_trades(self, request: web.Request) -> web.Response:
        """Newest first; `timestamp` and `order_by` accepted and ignored; `created_at` in seconds (§3.3)."""
        symbol, error = self._market(request)
        if symbol is None:
            return error  # type: ignore[return-value]
        limit = int_param(request, "limit", 100)
        if limit is None:
            return _errors("public.trade.non_integer_limit")
        if not 1 <= limit <= 1000:
            return _errors("public.trade.invalid_limit")
        spec = self.market.spec(symbol)
        wire = self._wire_of[symbol]
        rows = [
            {
                "id": self.trade_id(t),
                "price": decimal(t.price),
                "amount": decimal(t.size),
                "total": decimal(
                    format_units(t.price_ticks * t.size_lots, spec.price_decimals + spec.size_decimals)
                ),
                "market": wire,
                "created_at": t.ts_ms // 1000,
                "taker_type": t.side,
            }
            for t in reversed(self.market.recent_trades(symbol, limit))
        ]
        return _json(rows)

    async def _rest_ticker(self, request: web.Request) -> web.Response:
        """`{"at", "ticker"}`, values strings, `vol` an alias of `volume` (§3.6)."""
        symbol, error = self._market(request)
        if symbol is None:
            return error  # type: ignore[return-value]
        at = self.market.clock() // 1000
        ticker = self._ticker(symbol, at)
        del ticker["at"]
        ticker["vol"] = ticker["volume"]
        return _json({"at": at, "ticker": ticker})

    async def _rest_tickers(self, request: web.Request) -> web.Response:
        """Every market: `{"<id>": {"at", "ticker"}}`, without `vol` (the 2.6 cron cache, §3.6)."""
        at = self.market.clock() // 1000
        out = {}
        for symbol in self.market.active:
            ticker = self._ticker(symbol, at)
            del ticker["at"]
            out[self._wire_of[symbol]] = {"at": at, "ticker": ticker}
        return _json(out)

    async def _rest_timestamp(self, request: web.Request) -> web.Response:
        """An ISO-8601 JSON string, despite its description (§3.7)."""
        now = datetime.fromtimestamp(self.market.clock() // 1000, UTC)
        return _json(now.isoformat())

    async def _rest_klines(self, request: web.Request) -> web.Response:
        """`[t, o, h, l, c, v]` numbers, oldest first, `period` in minutes (§3.5). With both
        `time_from` and `time_to` (seconds, inclusive) `limit` is ignored; with `time_from` only, the
        first `limit` from it; otherwise the last `limit` (up to `time_to`). Only intervals with
        trades have a candle (Peatio's candles come from InfluxDB continuous queries, which write
        nothing for an empty interval); the current candle is included, still open."""
        symbol, error = self._market(request)
        if symbol is None:
            return error  # type: ignore[return-value]
        period = int_param(request, "period", 1)
        if period is None:
            return _errors("public.k_line.non_integer_period")
        if period not in REST_PERIODS:
            return _errors("public.k_line.invalid_period")
        time_from = int_param(request, "time_from", None)
        time_to = int_param(request, "time_to", None)
        if "time_from" in request.query and time_from is None:
            return _errors("public.k_line.non_integer_time_from")
        if "time_to" in request.query and time_to is None:
            return _errors("public.k_line.non_integer_time_to")
        limit = int_param(request, "limit", 30)
        if limit is None:
            return _errors("public.k_line.non_integer_limit")
        if not 1 <= limit <= 10_000:
            return _errors("public.k_line.invalid_limit")
        rows = [
            k
            for k in self.market.klines(symbol, period)
            if (time_from is None or k.open_time >= time_from) and (time_to is None or k.open_time <= time_to)
        ]
        if time_from is None or time_to is None:
            rows = rows[:limit] if time_from is not None else rows[-limit:]
        return _json(
            [
                [k.open_time, float(k.open), float(k.high), float(k.low), float(k.close), float(k.volume)]
                for k in rows
            ]
        )


def _json(doc: Any, headers: Mapping[str, str] | None = None, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(doc), status=status, content_type="application/json", headers=headers
    )


def _errors(*codes: str, status: int = 422) -> web.Response:
    """Peatio's error answer (§3)."""
    return _json({"errors": list(codes)}, status=status)


# ---- standalone ---------------------------------------------------------------------------------


__all__ = [
    "PeatioSim",
    "batched_increment",
    "decimal",
    "single_increment",
    "snapshot_frame",
    "trade_frame",
]
