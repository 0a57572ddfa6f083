"""BitMart USDT-M perpetual futures, Futures V2 WS + REST (`bitmart_perpetual`), sans-I/O.

Every push, ack, error and pong is a TEXT JSON frame. Sizes on the wire (book `vol`, trade
`deal_vol`, kline `volume`, open interest) are in CONTRACTS: the codec, built per connection with its
instruments, converts them to base units exactly with each contract's size. Every BitMart futures
wire fact the recorder uses lives in this module. See ../shared/protocols/bitmart.md §4 (and §5.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from recorder.errors import RecorderError
from recorder.model import (
    BOOK,
    FUNDING,
    TICKER,
    TRADES,
    Ack,
    BookMessage,
    DerivativeTicker,
    Message,
    Pong,
    ProtocolError,
    TradeBatch,
)
from recorder.venues.bitmart_spot import VersionChain
from recorder.venues.contract import (
    Codec,
    Endpoints,
    Instrument,
    Keepalive,
    Kline,
    Limits,
    MarketsPage,
    RestRequest,
    Venue,
    VenueEntry,
    VenueError,
)
from recorder.venues.units import PARSE_ERRORS, base_amount, clip, malformed, undecodable

NAME = "bitmart_perpetual"
WS_URL = "wss://openapi-ws-v2.bitmart.com/api?protocol=1.1"
REST_URL = "https://api-cloud-v2.bitmart.com"
MARKETS_PATH = "/contract/public/details"
KLINES_PATH = "/contract/public/kline"
OPEN_INTEREST_PATH = "/contract/public/open-interest"

TRADE_CHANNEL = "futures/trade"
BOOK_CHANNEL = "futures/depthIncrease50"
BOOK_SPEED = "@100ms"
TICKER_CHANNEL = "futures/ticker"
FUNDING_CHANNEL = "futures/fundingRate"
CHANNEL_OF = {TRADES: TRADE_CHANNEL, BOOK: BOOK_CHANNEL, TICKER: TICKER_CHANNEL, FUNDING: FUNDING_CHANNEL}
SUFFIX_OF = {BOOK: BOOK_SPEED}
_OURS = {wire: ch for ch, wire in CHANNEL_OF.items()}

# Limits (§4.1). Documented: 4096-byte subscribe payloads, 500 connections per IP. Observed: a
# 2,186-byte subscribe frame was closed with 1009 while 2,020 bytes passed (BitMart.Net caps at
# 2048), and 100 topics on one socket worked. No per-message topic count, message rate or connect
# rate is documented for futures: the spot socket's (§1.5) are kept as a conservative budget.
MAX_SUBSCRIBE_BYTES = 2000
MAX_TOPICS_PER_CONNECTION = 100
SEND_BUDGET = (80, 10.0)  # messages, seconds
CONNECT_BUDGET = (30, 60.0)  # connection attempts per minute
MAX_FRAME_BYTES = 4 * 1024 * 1024  # a depth50 snapshot is a few KB
PING = '{"action":"ping"}'  # text `ping` is refused on this socket (§4.1)
PING_INTERVAL = 10.0  # the server closes after 20 s without traffic

# ------------------------------------------------------------------------------------- requests


def topic(channel: str, wire_symbol: str) -> str:
    return f"{CHANNEL_OF[channel]}:{wire_symbol}{SUFFIX_OF.get(channel, '')}"


def canonical_topic(group: str) -> str:
    """Our spelling of a `group` the server names: acks echo the request, but data groups may carry
    a speed we did not send (`futures/ticker:X@100ms`), and ccxt saw `:100ms` accepted (§4.1)."""
    prefix, sep, rest = group.partition(":")
    channel = _OURS.get(prefix)
    if channel is None or not sep:
        return group
    symbol = rest.split("@", 1)[0].split(":", 1)[0]
    return topic(channel, symbol) if symbol else group


def _request(action: str, args: list[str]) -> str:
    return orjson.dumps({"action": action, "args": args}).decode()


def subscribe_messages(topics: Sequence[str], action: str = "subscribe") -> list[str]:
    """As many topics per message as fit in MAX_SUBSCRIBE_BYTES, in order (a topic alone too long
    for it still goes out, alone)."""
    out: list[str] = []
    chunk: list[str] = []
    for t in topics:
        if chunk and len(_request(action, [*chunk, t]).encode()) > MAX_SUBSCRIBE_BYTES:
            out.append(_request(action, chunk))
            chunk = []
        chunk.append(t)
    if chunk:
        out.append(_request(action, chunk))
    return out


def snapshot_request(t: str) -> str:
    """A fresh snapshot of a depthIncrease topic: answered at once on the same group (§4.2)."""
    return _request("request", [t])


# ------------------------------------------------------------------------------------- decoding

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def rfc3339_us(s: str) -> int:
    """`2025-03-10T18:17:14.656686827Z` -> epoch microseconds (nanoseconds truncated)."""
    if not isinstance(s, str):
        raise TypeError(f"time {s!r} is not a string")
    head, dot, rest = s.partition(".")
    frac = ""
    if dot:
        n = 0
        while n < len(rest) and rest[n] in "0123456789":
            n += 1
        frac, tz = rest[:n], rest[n:]
        if not frac:
            raise ValueError(f"time {s!r}: empty fraction")
    else:
        tz = ""
        if head[-1:] in ("Z", "z"):
            head, tz = head[:-1], "Z"
        elif len(head) > 19 and head[-6] in "+-":
            head, tz = head[:-6], head[-6:]
    if tz in ("Z", "z", ""):
        tz = "+00:00"  # RFC3339 UTC; a time without an offset is read as UTC
    elif not (len(tz) == 6 and tz[0] in "+-" and tz[3] == ":" and (tz[1:3] + tz[4:]).isdigit()):
        raise ValueError(f"time {s!r}: offset {tz!r}")
    if len(head) != 19 or head[10] not in "Tt ":
        raise ValueError(f"time {s!r} is not RFC3339")
    dt = datetime.fromisoformat(head + tz)
    return (dt - _EPOCH) // _SECOND * 1_000_000 + (int(frac[:6].ljust(6, "0")) if frac else 0)


def _num(x: Any) -> str | int:
    """A wire number (a JSON string as documented; a JSON number tolerated) for `base_amount`."""
    t = type(x)
    if t is str or t is int:
        return x
    if t is float:
        return repr(x)
    raise TypeError(f"not a number: {x!r}")


def _rest_amount(x: Any, size: Decimal | None) -> float:
    """`base_amount` for REST answers, whose callers expect ValueError (not Decimal's errors)."""
    try:
        return base_amount(_num(x), size)
    except ArithmeticError:
        raise ValueError(f"not a decimal number: {x!r}") from None


def _int(x: Any) -> int:
    if type(x) is int:
        return x
    if type(x) is str and x.isascii() and x.isdigit():
        return int(x)
    raise ValueError(f"not an integer: {x!r}")


def _opt_float(d: dict, key: str) -> float | None:
    v = d.get(key)
    return None if v is None or v == "" else float(v)


def decode(frame: bytes | str) -> bytes | str:
    """Text frames pass through (no compression on this socket: §4.1); bytes are parsed as JSON too."""
    if isinstance(frame, bytearray | memoryview):
        return bytes(frame)
    return frame


class PerpCodec:
    """Frames of one connection -> records; sizes converted with its instruments' contract sizes.

    A push for a symbol this connection was not built for is skipped: its contract size is unknown
    (and the session would drop it anyway), e.g. the all-contracts `futures/ticker`."""

    decode_errors: tuple[type[Exception], ...] = ()

    def __init__(self, instruments: Sequence[Instrument]) -> None:
        self.sizes: dict[str, Decimal | None] = {i.wire: i.size_multiplier for i in instruments}
        self.decode = decode

    def parse(self, payload: bytes | str) -> list[Message]:
        """One payload -> records. Never raises: what cannot be read becomes a ProtocolError."""
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return [undecodable(exc, payload)]
        try:
            if type(doc) is not dict:
                raise TypeError(f"a JSON {type(doc).__name__}, not an object")
            return self.parse_message(doc)
        except PARSE_ERRORS as exc:
            return [malformed(exc, payload)]

    def parse_message(self, doc: dict) -> list[Message]:
        group = doc.get("group")
        if "success" in doc:
            return _reply(doc, group)
        if type(group) is str:
            channel = group.split(":", 1)[0]
            data = doc["data"]
            if channel == BOOK_CHANNEL:
                return self._books(data)
            if channel == TRADE_CHANNEL:
                return self._trades(data)
            if channel == TICKER_CHANNEL:
                return self._tickers(data)
            if channel == FUNDING_CHANNEL:
                return self._funding(data)
            if group == "System":
                return [Pong()] if isinstance(data, str) and data.startswith("pong") else []
            return []  # a channel we did not ask for
        return [ProtocolError(f"unexpected message: {clip(orjson.dumps(doc))}", code="unexpected")]

    # -- pushes --------------------------------------------------------------------------------

    def _books(self, data: dict | list) -> list[Message]:
        out: list[Message] = []
        for d in data if type(data) is list else [data]:
            sym = d["symbol"]
            if sym not in self.sizes:
                continue
            size = self.sizes[sym]
            kind = d["type"]
            if kind != "snapshot" and kind != "update":
                raise ValueError(f"depth type {kind!r}")
            ms = d.get("ms_t")
            out.append(
                BookMessage(
                    symbol=sym,
                    seq=_int(d["version"]),
                    is_snapshot=kind == "snapshot",
                    ts=None if ms is None else _int(ms) * 1000,
                    bids=[(float(lv["price"]), base_amount(_num(lv["vol"]), size)) for lv in d["bids"]],
                    asks=[(float(lv["price"]), base_amount(_num(lv["vol"]), size)) for lv in d["asks"]],
                )
            )
        return out

    def _trades(self, data: list | dict) -> list[Message]:
        by_symbol: dict[str, list[tuple[int, str | None, str, float, float]]] = {}
        for t in data if type(data) is list else [data]:
            sym = t["symbol"]
            if sym not in self.sizes:
                continue
            m = t["m"]
            if m is not True and m is not False:
                raise ValueError(f"trade m {m!r}")  # true: the buyer was the maker, the taker sold
            tid = t["trade_id"]
            if type(tid) is not int and type(tid) is not str:
                raise TypeError(f"trade_id {tid!r}")
            row = (
                rfc3339_us(t["created_at"]),
                str(tid),
                "sell" if m else "buy",
                float(t["deal_price"]),
                base_amount(_num(t["deal_vol"]), self.sizes[sym]),
            )
            by_symbol.setdefault(sym, []).append(row)
        out: list[Message] = []
        for sym, rows in by_symbol.items():
            if all(r[1].isdigit() for r in rows):
                # trade ids rise in match order: within one microsecond (a sweep) they alone say it
                rows.sort(key=_ts_then_id)
            else:
                if rows[0][0] > rows[-1][0]:
                    rows.reverse()  # arrays come newest first (§4.5): oldest first, ties kept in time order
                rows.sort(key=_ts)
            out.append(TradeBatch(sym, rows))
        return out

    def _tickers(self, data: dict | list) -> list[Message]:
        out: list[Message] = []
        for d in data if type(data) is list else [data]:
            sym = d["symbol"]
            if sym not in self.sizes:
                continue
            ms = d.get("ms_t")  # the documented push has no time: the session stamps it
            out.append(
                DerivativeTicker(
                    sym,
                    TICKER,
                    None if ms is None else _int(ms) * 1000,
                    last_price=_opt_float(d, "last_price"),
                    mark_price=_opt_float(d, "mark_price"),
                    index_price=_opt_float(d, "index_price"),
                )
            )
        return out

    def _funding(self, data: dict | list) -> list[Message]:
        out: list[Message] = []
        for d in data if type(data) is list else [data]:
            sym = d["symbol"]
            if sym not in self.sizes:
                continue
            nxt = d.get("nextFundingTime")  # the settlement as seen on the wire (§4.7), ms
            ts = d.get("ts")
            out.append(
                DerivativeTicker(
                    sym,
                    FUNDING,
                    None if ts is None else _int(ts) * 1000,
                    funding_rate=_opt_float(d, "fundingRate"),
                    next_funding_rate=_opt_float(d, "nextFundingRate"),
                    next_funding_time=None if nxt is None else _int(nxt) * 1000,
                )
            )
        return out


def _ts(row: tuple) -> int:
    return row[0]


def _ts_then_id(row: tuple) -> tuple[int, int]:
    return row[0], int(row[1])


def _reply(doc: dict, group: Any) -> list[Message]:
    """`{"action":..,"group":T,"success":..}` acks and `{"success":false,"error":..}` errors (§4.1)."""
    action = doc.get("action")
    named = canonical_topic(group) if type(group) is str and group else None
    if doc["success"] is True:
        if named is not None and (action == "subscribe" or action == "unsubscribe"):
            return [Ack(named, action)]
        if action == "ping":
            return [Pong()]
        return []  # a `request` answered (its snapshot follows), or an action we do not send
    error = doc.get("error")
    text = str(error) if error not in (None, "") else f"{action or 'request'} failed: {clip(orjson.dumps(doc))}"
    if named is not None:
        return [ProtocolError(text, topic=named, kind="refused")]
    return [ProtocolError(text, kind="exchange")]


# ----------------------------------------------------------------------------------------- REST


def _check_envelope(doc: Any, what: str) -> Any:
    if not isinstance(doc, dict):
        raise VenueError(f"{what} error: unexpected answer {clip(str(doc))}")
    if str(doc.get("code")) != "1000":
        raise VenueError(f"{what} error {doc.get('code')}: {doc.get('message')}")
    return doc["data"]


def _positive(x: Any) -> Decimal | None:
    try:
        d = Decimal(str(x))
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() and d > 0 else None


def parse_markets(doc: Any) -> MarketsPage:
    """`/contract/public/details` -> the perpetuals that are trading (`BTC-USDT` <-> `BTCUSDT`).

    Kept: `product_type == 1` (perpetual), `status == "Trading"`, a positive `contract_size`, and not
    coin-margined (quote `USD`): an inverse contract's size is in quote units, so contracts -> base
    would need a price (§5.1). Should two rows name the same BASE-QUOTE, the one whose id is
    BASE+QUOTE wins, else the first."""
    data = _check_envelope(doc, "markets")
    out: dict[str, Instrument] = {}
    for s in data["symbols"]:
        if str(s.get("product_type")) != "1" or s.get("status") != "Trading":
            continue
        base, quote = str(s["base_currency"]).upper(), str(s["quote_currency"]).upper()
        size = _positive(s.get("contract_size"))
        if quote == "USD" or size is None:
            continue
        wire = s["symbol"]
        user = f"{base}-{quote}"
        if user in out and (out[user].wire == base + quote or wire != base + quote):
            continue
        tick = s.get("price_precision")  # a tick size, not a count of decimals (§4.9)
        step = _positive(s.get("vol_precision"))  # in contracts: stored in base units, like every size
        out[user] = Instrument(
            user,
            wire,
            kind="perpetual",
            contract_size=str(s["contract_size"]),
            price_tick=None if tick is None else str(tick),
            size_step=None if step is None else _plain(step * size),
        )
    return MarketsPage(list(out.values()))


def _plain(d: Decimal) -> str:
    """A decimal without exponent or trailing zeros: 1 * 0.0010 -> '0.001'."""
    return format(d.normalize(), "f")


class BitmartPerpKlines:
    """`GET /contract/public/kline`: `step` in minutes, `start_time`/`end_time` in seconds (both
    required), at most 500 rows a call, 12 calls per 2 s per IP (§4.9). `volume` is in contracts;
    no quote volume, no trade count."""

    intervals = {"1m": 1, "5m": 5, "15m": 15, "1h": 60, "4h": 240, "1d": 1440}
    page_limit = 500
    rate_limit = (12, 2.0)

    def request(self, inst: Instrument, interval: str, lo_s: int, hi_s: int) -> RestRequest:
        params = {
            "symbol": inst.wire,
            "step": self.intervals[interval],
            # one second inside the window on both ends: [lo, hi) whether the bounds are strict or not
            "start_time": max(0, lo_s - 1),
            "end_time": max(0, hi_s - 1),
        }
        return RestRequest(KLINES_PATH, params)

    def parse(self, doc: Any, inst: Instrument, interval: str) -> list[Kline]:
        data = _check_envelope(doc, "klines")
        size = inst.size_multiplier
        out = []
        for k in data or []:
            out.append(
                Kline(
                    int(k["timestamp"]),
                    float(k["open_price"]),
                    float(k["high_price"]),
                    float(k["low_price"]),
                    float(k["close_price"]),
                    _rest_amount(k["volume"], size),
                    None,
                    None,
                )
            )
        return out


class OpenInterestPoll:
    """No push carries open interest (§4.6): `GET /contract/public/open-interest?symbol=` once a
    minute per instrument, 2 calls per 2 s per IP (§4.9). `open_interest` is in contracts (the
    sample's 4,134,180,870 cannot be BTC; its `open_interest_value` is contracts x size x price)."""

    name = "open_interest"
    channel = TICKER
    interval = 60.0
    rate_limit = (2, 2.0)

    def request(self, inst: Instrument) -> RestRequest:
        return RestRequest(OPEN_INTEREST_PATH, {"symbol": inst.wire})

    def parse(self, doc: Any, inst: Instrument) -> list[Message]:
        data = _check_envelope(doc, "open interest")
        if not isinstance(data, dict):
            raise VenueError(f"open interest answer without an object: {data!r:.100}")
        sym = data.get("symbol", inst.wire)
        if sym != inst.wire:
            raise VenueError(f"open interest of {sym!r} in the answer for {inst.wire!r}")
        ms = data.get("timestamp")
        return [
            DerivativeTicker(
                inst.wire,
                TICKER,
                None if ms is None else _int(ms) * 1000,
                open_interest=_rest_amount(data["open_interest"], inst.size_multiplier),
            )
        ]


# ---------------------------------------------------------------------------------------- venue


class BitmartPerpetual(Venue):
    name = NAME
    endpoints = Endpoints(WS_URL, REST_URL)
    limits = Limits(
        topics_per_connection=MAX_TOPICS_PER_CONNECTION,
        send_budget=SEND_BUDGET,
        connect_budget=CONNECT_BUDGET,
        max_frame_bytes=MAX_FRAME_BYTES,
    )
    keepalive = Keepalive(PING, PING_INTERVAL)
    channels = (TRADES, BOOK, TICKER, FUNDING)
    default_channels = (TRADES, BOOK, TICKER, FUNDING)
    klines = BitmartPerpKlines()
    polls = (OpenInterestPoll(),)

    def sequence_policy(self) -> VersionChain:
        # +1 per push, empty pushes included (§4.2): local+1 applies even an empty one (the engine
        # does that); an empty one not advancing is dropped; a non-empty one is out of order.
        return VersionChain()

    def markets_request(self) -> RestRequest:
        return RestRequest(MARKETS_PATH)

    def parse_markets(self, doc: Any, req: RestRequest) -> MarketsPage:
        return parse_markets(doc)

    def topic(self, channel: str, inst: Instrument) -> str:
        return topic(channel, inst.wire)

    def subscribe(self, topics: Sequence[str]) -> list[str]:
        return subscribe_messages(topics)

    def unsubscribe(self, topics: Sequence[str]) -> list[str]:
        return subscribe_messages(topics, action="unsubscribe")

    def resync_messages(self, topic: str) -> list[str]:
        return [snapshot_request(topic)]

    def codec(self, instruments: Sequence[Instrument]) -> Codec:
        return PerpCodec(instruments)


_SIM_MODULE = "recorder.sim.frontends.bitmart_perpetual"


def _simulator() -> type:
    try:
        from recorder.sim.frontends.bitmart_perpetual import BitmartPerpSim
    except ImportError as exc:
        # only "it is not written yet"; an import failing inside an existing front-end is a bug to show
        if exc.name not in (_SIM_MODULE, "recorder.sim.frontends"):
            raise
        raise RecorderError(f"no simulator for {NAME!r} yet") from None
    return BitmartPerpSim


ENTRIES = (VenueEntry(NAME, BitmartPerpetual, _simulator),)
