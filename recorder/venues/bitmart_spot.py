"""BitMart spot WS v3 + REST v3 (`bitmart`), sans-I/O: frames in, normalized messages out.

Market-data pushes are BINARY frames, each an independent raw-deflate stream; acks, errors and
`pong` are TEXT. Every BitMart spot wire fact the recorder uses lives in this module. See
../shared/protocols/bitmart.md §1-§3.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any

import msgspec
import orjson
from isal.isal_zlib import IsalError
from isal.isal_zlib import decompress as isal_decompress

from recorder import native
from recorder.model import (
    BOOK,
    TRADES,
    Ack,
    BookMessage,
    Message,
    Pong,
    ProtocolError,
    TradeBatch,
)
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
    Verdict,
)
from recorder.venues.units import PARSE_ERRORS, clip, malformed, undecodable

NAME = "bitmart"
WS_URL = "wss://ws-manager-compress.bitmart.com/api?protocol=1.1"
REST_URL = "https://api-cloud.bitmart.com"
MARKETS_PATH = "/spot/v1/symbols/details"

TRADE_CHANNEL = "spot/trade"
BOOK_CHANNEL = "spot/depth/increase100"
CHANNEL_OF = {TRADES: TRADE_CHANNEL, BOOK: BOOK_CHANNEL}

# Documented limits (§1.5). The send budget keeps a margin under the 100 messages / 10 s cap.
MAX_TOPICS_PER_MESSAGE = 20
MAX_TOPICS_PER_CONNECTION = 115
MAX_SUBSCRIBE_BYTES = 4096
SEND_BUDGET = (80, 10.0)  # messages, seconds
PING_INTERVAL = 10.0  # the server closes after 20 s without traffic
MAX_INFLATED_BYTES = 8 * 1024 * 1024  # deflate-bomb cap: no real push comes near this
MAX_FRAME_BYTES = 4 * 1024 * 1024  # larger frames are refused by the websocket layer
CONNECT_BUDGET = (30, 60.0)  # connection attempts per minute per IP

PING = "ping"


def topic(channel: str, wire_symbol: str) -> str:
    return f"{CHANNEL_OF[channel]}:{wire_symbol}"


def subscribe_messages(topics: list[str], op: str = "subscribe") -> list[str]:
    """Requests for `topics`, at most 20 per message and under the 4096-byte payload cap."""
    out: list[str] = []
    chunk: list[str] = []
    for t in topics:
        if chunk and (
            len(chunk) == MAX_TOPICS_PER_MESSAGE
            or len(_request(op, [*chunk, t])) > MAX_SUBSCRIBE_BYTES
        ):
            out.append(_request(op, chunk))
            chunk = []
        chunk.append(t)
    if chunk:
        out.append(_request(op, chunk))
    return out


def snapshot_request(t: str) -> str:
    return _request("request", [t])


def _request(op: str, args: list[str]) -> str:
    return orjson.dumps({"op": op, "args": args}).decode()


# ------------------------------------------------------------------------------------- decoding


# Deflate cannot expand more than ~1032:1, so frames below this size cannot exceed the cap and
# take the faster one-shot path.
_SMALL_FRAME = MAX_INFLATED_BYTES // 1100


def inflate(data: bytes) -> bytes:
    """One frame = one independent raw-deflate stream. Raises ValueError past the size cap.

    BitMart documents raw deflate; a zlib- or gzip-wrapped stream is accepted too (servers that
    speak the protocol less strictly), at the cost of a second attempt only for such frames.

    Small frames (every real push) go through ISA-L's inflate first: ~0.7 µs cheaper per frame
    than zlib's. Whatever ISA-L refuses is handed to zlib, so that zlib alone decides what is an
    error and words it. (ISA-L's streaming object keeps no `unconsumed_tail`, so the size cap of
    large frames stays zlib's.)
    """
    if len(data) < _SMALL_FRAME:
        try:
            return isal_decompress(data, -zlib.MAX_WBITS)
        except IsalError:
            pass
    return _inflate_zlib(data)


def _inflate_zlib(data: bytes) -> bytes:
    """`inflate` without ISA-L: zlib alone decides what is an error, and caps big frames."""
    try:
        return _inflate(data, -zlib.MAX_WBITS)
    except zlib.error:
        if data[:1] in (b"\x78", b"\x1f"):  # zlib / gzip header
            return _inflate(data, 32 + zlib.MAX_WBITS)
        raise


def _inflate(data: bytes, wbits: int) -> bytes:
    if len(data) < _SMALL_FRAME:
        return zlib.decompress(data, wbits)
    d = zlib.decompressobj(wbits)
    out = d.decompress(data, MAX_INFLATED_BYTES)
    if d.unconsumed_tail:
        raise ValueError(f"frame inflates past {MAX_INFLATED_BYTES} bytes (deflate bomb?)")
    return out + d.flush()


def decode(frame: bytes | str) -> bytes | str:
    """The frame's payload: binary frames are inflated, text passes through.

    Raises ValueError (or zlib.error) for an invalid deflate stream or one past the size cap.
    """
    if type(frame) is bytes:  # inflate(), its ISA-L step inlined: this runs once a frame
        if len(frame) < _SMALL_FRAME:
            try:
                return isal_decompress(frame, -zlib.MAX_WBITS)
            except IsalError:
                pass
        return _inflate_zlib(frame)  # not inflate(): ISA-L has had its try
    if isinstance(frame, bytearray | memoryview):
        return inflate(bytes(frame))
    return frame


DECODE_ERRORS = (zlib.error, ValueError)
_KEEPALIVE_TEXTS = frozenset(["pong", b"pong", "ping", b"ping"])


# Where the C build is adopted (`_NATIVE`, below), pushes in the venue's own layout never come here:
# it reads them straight to records and hands this module only what it does not take.
# Typed decoding of the two market-data pushes straight into structs (msgspec): no dict per item
# and no float() per number, ~1.5 µs a message less than orjson + dict lookups. Lax mode reads the
# wire's decimal strings as floats in C. It takes only the plain shape; anything else (other
# messages, odd or bad input) goes the general way below, which alone decides what such input
# means, so both ways give the same records for every payload. Where lax reading and float()
# could part (" 1", "1_0", "+1", ".5", "00012", "1e400", full-width digits) msgspec refuses and the
# general way reads it. "-0" is the one string both accept with another sign: msgspec reads it as
# the integer 0 (0.0), float() as -0.0; the general way reads it as msgspec does (`_num`), so that
# both ways write the same bits.
# Integers stay strict: lax mode would read "1.0" or "1e3" as a version, which int() refuses, so a
# string arrives as a str and sends the push the general way.
_Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | str  # orjson reads these ints exactly


# Fields in the wire's order (sorted keys, bitmart.md §2.1 and §2.3): msgspec tries the field after
# the last one matched first (~0.5k instructions a push less than another order, on the tape).
# BitMart writes `table` after `data`, so the union skips over `data` to find its tag first: ~0.5k
# instructions a push on the tape (~1 % of a message), too little for a second decoder per channel
# (README, "Hot path, seventh pass").
class _BookItem(msgspec.Struct):
    asks: list[tuple[float, float]]
    bids: list[tuple[float, float]]
    ms_t: _Int
    symbol: str
    type: str
    version: _Int


class _BookPush(msgspec.Struct, tag_field="table", tag=BOOK_CHANNEL):
    data: list[_BookItem]


class _TradeItem(msgspec.Struct, kw_only=True):
    ms_t: _Int | msgspec.UnsetType = msgspec.UNSET
    price: float
    s_t: _Int | msgspec.UnsetType = msgspec.UNSET
    side: str
    size: float
    symbol: str


class _TradePush(msgspec.Struct, tag_field="table", tag=TRADE_CHANNEL):
    data: list[_TradeItem]


_PUSH = msgspec.json.Decoder(_BookPush | _TradePush, strict=False)
_PUSH_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)


def _typed(raw: bytes | str) -> list[Message] | None:
    """The records of a plain market-data push, or None: not one (the general way decides)."""
    try:
        push = _PUSH.decode(raw)
    except _PUSH_ERRORS:
        return None
    if type(push) is _BookPush:
        out: list[Message] = []
        for i in push.data:
            seq, ms = i.version, i.ms_t
            if type(seq) is not int or type(ms) is not int:
                return None
            # the decoded lists of (price, size) tuples are the record's own: nothing is copied
            out.append(BookMessage(i.symbol, seq, i.type == "snapshot", ms * 1000, i.bids, i.asks))
        return out
    by_symbol: dict[str, TradeBatch] = {}
    for t in push.data:
        ms, s = t.ms_t, t.s_t
        if type(ms) is int:
            ts = ms * 1000
        elif ms is msgspec.UNSET and type(s) is int:
            ts = s * 1_000_000
        else:
            return None
        side = t.side
        if side != "buy" and side != "sell":
            return None
        batch = by_symbol.get(t.symbol)
        if batch is None:
            batch = by_symbol[t.symbol] = TradeBatch(t.symbol, [])
        batch.trades.append((ts, None, side, t.price, t.size))
    return list(by_symbol.values())


def parse(raw: bytes | str) -> list[Message]:
    """Decode one payload into messages. Never raises: bad input becomes ProtocolError."""
    # our pong, or a server's own text ping (nothing to answer); the length first: a set lookup
    # hashes the whole payload, and every market-data push is longer
    if len(raw) == 4 and raw in _KEEPALIVE_TEXTS:
        return [Pong()]
    records = _typed(raw)
    if records is not None:
        return records
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return [undecodable(exc, raw)]
    try:
        return parse_message(doc)
    except PARSE_ERRORS as exc:
        return [malformed(exc, raw)]


def parse_frame(frame: bytes | str) -> list[Message]:
    """decode() then parse(); a frame that cannot be inflated becomes a ProtocolError."""
    try:
        raw = decode(frame)
    except DECODE_ERRORS as exc:
        return [ProtocolError(f"undecodable frame: {exc}", code="decode", kind="decode")]
    return parse(raw)


def parse_message(doc: dict) -> list[Message]:
    table = doc.get("table")
    if table == BOOK_CHANNEL:
        return [_book(item) for item in doc["data"]]
    if table == TRADE_CHANNEL:
        return _trades(doc["data"])
    if "errorCode" in doc:
        return [
            ProtocolError(
                str(doc.get("errorMessage", "")), code=str(doc["errorCode"]), topic=_error_topic(doc)
            )
        ]
    event = doc.get("event")
    if event in ("subscribe", "unsubscribe") and "topic" in doc:
        return [Ack(doc["topic"], event)]
    if table is not None:
        return []  # a channel we did not ask for: ignore
    return [ProtocolError(f"unexpected message: {clip(orjson.dumps(doc))}", code="unexpected")]


def _error_topic(doc: dict) -> str | None:
    t = doc.get("topic")
    return t if isinstance(t, str) else None


def _num(x: object) -> float:
    """A wire number as a float; the string "-0" is +0.0, as the typed way reads it (see `_typed`)."""
    return 0.0 if x == "-0" else float(x)  # type: ignore[arg-type]


def _levels(rows: list) -> list[tuple[float, float]]:
    return [(_num(p), _num(q)) for p, q in rows]


def _book(item: dict) -> BookMessage:
    return BookMessage(
        symbol=item["symbol"],
        seq=int(item["version"]),
        is_snapshot=item["type"] == "snapshot",
        ts=int(item["ms_t"]) * 1000,
        bids=_levels(item["bids"]),
        asks=_levels(item["asks"]),
    )


def _trades(data: list) -> list[Message]:
    by_symbol: dict[str, TradeBatch] = {}
    for t in data:
        ts = int(t["ms_t"]) * 1000 if "ms_t" in t else int(t["s_t"]) * 1_000_000
        side = t["side"]
        if side not in ("buy", "sell"):
            raise ValueError(f"trade side {side!r}")
        batch = by_symbol.get(t["symbol"])
        if batch is None:
            batch = by_symbol[t["symbol"]] = TradeBatch(t["symbol"], [])
        batch.trades.append((ts, None, side, _num(t["price"]), _num(t["size"])))
    return list(by_symbol.values())


# ----------------------------------------------------------------------------------------- REST


def parse_markets(doc: dict) -> MarketsPage:
    """`/spot/v1/symbols/details` -> the instruments that are trading (`BTC-USDT` <-> `BTC_USDT`)."""
    _check_envelope(doc)
    out: list[Instrument] = []
    for s in doc["data"]["symbols"]:
        if s.get("trade_status", "trading") != "trading":
            continue
        user = f"{s['base_currency']}-{s['quote_currency']}".upper()
        decimals = s.get("price_max_precision")  # tick = 10^-price_max_precision (§2 of the notes)
        tick = str(Decimal(1).scaleb(-int(decimals))) if decimals is not None else None
        step = s.get("base_min_size")
        out.append(Instrument(user, s["symbol"], price_tick=tick, size_step=None if step is None else str(step)))
    return MarketsPage(out)


def _check_envelope(doc: dict) -> None:
    if str(doc.get("code")) != "1000":
        raise VenueError(f"exchange error {doc.get('code')}: {doc.get('message')}")


# --------------------------------------------------------------------------------------- klines

KLINES_PATH = "/spot/quotation/v3/klines"


class BitmartSpotKlines:
    """`GET /spot/quotation/v3/klines`: `step` in minutes, `after`/`before` in seconds, at most 200
    rows a call, 10 calls per 2 s per IP. No trade count."""

    intervals = {"1m": 1, "5m": 5, "15m": 15, "1h": 60, "4h": 240, "1d": 1440}
    page_limit = 200
    rate_limit = (10, 2.0)

    def request(self, inst: Instrument, interval: str, lo_s: int, hi_s: int) -> RestRequest:
        params = {
            "symbol": inst.wire,
            "step": self.intervals[interval],
            "after": lo_s - 1,  # works whether the exchange treats after/before as strict or not
            "before": hi_s - 1,
            "limit": self.page_limit,
        }
        return RestRequest(KLINES_PATH, params)

    def parse(self, doc: Any, inst: Instrument, interval: str) -> list[Kline]:
        if not isinstance(doc, dict) or doc.get("code") != 1000:
            code, message = (doc.get("code"), doc.get("message")) if isinstance(doc, dict) else (None, doc)
            raise VenueError(f"klines error {code}: {message}")
        out = []
        for item in doc.get("data") or []:
            o, h, low, c, v, qv = (float(x) for x in item[1:7])
            out.append(Kline(int(item[0]), o, h, low, c, v, qv, None))
        return out


# ---------------------------------------------------------------------------------------- venue


class VersionChain:
    """BitMart's book rule: the version advances by one per update; a heartbeat repeats the
    current version with no levels (dropped); a non-empty update that does not advance was
    duplicated or came out of order."""

    def check(self, local: int, msg: BookMessage) -> Verdict:
        if msg.seq is not None and msg.seq > local:
            return Verdict.GAP
        if not (msg.bids or msg.asks):
            return Verdict.DROP
        return Verdict.OUT_OF_ORDER


# The C build of `parse`'s common case (`_bitmart_spot.pyx`: the push's bytes straight to records,
# no msgspec structs in between), handing everything else to `parse`, and of `decode`'s (ISA-L's
# call without a Python frame); None: the Python alone.
_NATIVE = native.venue(__name__, __file__)
if _NATIVE is not None:
    _NATIVE.set_fallback(parse, decode, isal_decompress, -zlib.MAX_WBITS, IsalError, _SMALL_FRAME)


class _Codec:
    decode_errors = DECODE_ERRORS

    def __init__(self) -> None:
        self.decode = decode if _NATIVE is None else _NATIVE.decode
        self.parse = parse if _NATIVE is None else _NATIVE.parse


class BitmartSpot(Venue):
    name = "bitmart"
    endpoints = Endpoints(WS_URL, REST_URL)
    limits = Limits(
        topics_per_connection=MAX_TOPICS_PER_CONNECTION,
        send_budget=SEND_BUDGET,
        connect_budget=CONNECT_BUDGET,
        max_frame_bytes=MAX_FRAME_BYTES,
    )
    keepalive = Keepalive(PING, PING_INTERVAL)
    channels = (TRADES, BOOK)
    default_channels = (TRADES, BOOK)
    klines = BitmartSpotKlines()

    def sequence_policy(self) -> VersionChain:
        return VersionChain()

    def markets_request(self) -> RestRequest:
        return RestRequest(MARKETS_PATH)

    def parse_markets(self, doc: Any, req: RestRequest) -> MarketsPage:
        return parse_markets(doc)

    def topic(self, channel: str, inst: Instrument) -> str:
        return topic(channel, inst.wire)

    def subscribe(self, topics: Sequence[str]) -> list[str]:
        return subscribe_messages(list(topics))

    def unsubscribe(self, topics: Sequence[str]) -> list[str]:
        return subscribe_messages(list(topics), op="unsubscribe")

    def resync_messages(self, topic: str) -> list[str]:
        return [snapshot_request(topic)]

    def codec(self, instruments: Sequence[Instrument]) -> Codec:
        return _Codec()


def _simulator() -> type:
    from recorder.sim import BitmartSpotSim

    return BitmartSpotSim


ENTRIES = (VenueEntry("bitmart", BitmartSpot, _simulator),)
