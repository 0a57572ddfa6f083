"""openware Peatio REST + Ranger WebSocket (`peatio`, and the preset `altmarkets`), sans-I/O.

Every Peatio/Ranger wire fact the recorder uses lives in this module; see
../shared/protocols/altmarkets.md (cited as §n below). Frames are uncompressed text JSON objects
with exactly one key: a stream name (`<market>.trades`, `<market>.ob-snap`, `<market>.ob-inc`, ...),
`success` or `error` (§1.6). Nothing on the wire says what time a book event happened, so book
messages carry `ts=None` and the session stamps them with the receive time.

`peatio` has no default URLs: point it at any Peatio venue with
`--ws-url wss://HOST/api/v2/ranger/public --rest-url https://HOST/api/v2/peatio` (the REST base
includes `/api/v2/peatio`; paths below are relative to it, §3). `altmarkets` is the same protocol
with AltMarkets' documented URLs as defaults (§1.1, §3), each overridable the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import orjson

from recorder.errors import RecorderError
from recorder.model import BOOK, TRADES, BookMessage, HeldTopics, Message, Pong, ProtocolError, TradeBatch
from recorder.venues.contract import (
    Codec,
    Endpoints,
    Instrument,
    Keepalive,
    Kline,
    Limits,
    MarketsPage,
    RestRequest,
    ResyncPolicy,
    Venue,
    VenueEntry,
    VenueError,
    Verdict,
)
from recorder.venues.units import PARSE_ERRORS, clip, malformed, undecodable

ALTMARKETS_WS_URL = "wss://v2.altmarkets.io/api/v2/ranger/public"  # §1.1 (Hummingbot >= 2021-03)
ALTMARKETS_REST_URL = "https://v2.altmarkets.io/api/v2/peatio"  # §3 "Base URL"

TRADES_STREAM = "trades"
BOOK_STREAM = "ob-inc"  # the snapshot arrives on it as `<m>.ob-snap`; never subscribe ob-snap (§1.2)
SNAPSHOT_KEY = "ob-snap"
STREAM_OF = {TRADES: TRADES_STREAM, BOOK: BOOK_STREAM}

# Limits (§1.5). Rango refuses client messages over 512 bytes (its read limit kills the socket),
# Ruby Ranger has none: every text we send stays under it.
MAX_MESSAGE_BYTES = 511
SEND_BUDGET = (40, 12.0)  # under Hummingbot's 50 subscribe/unsubscribe per 12 s
CONNECT_BUDGET = (20, 60.0)  # nothing published: a modest pace for a WAF that answers 403 (§3.8, §6)
TOPICS_PER_CONNECTION = 100  # nothing published; keeps the replay burst of one socket small (§1.5)
MAX_FRAME_BYTES = 1 << 20  # the largest push is a snapshot of <= 301 levels per side (§2.1)
PING = "ping"  # text `ping` -> text `pong` (§1.4); protocol pings are answered by aiohttp
PING_INTERVAL = 30.0

MARKETS_PATH = "/public/markets"
MARKETS_PAGE_LIMIT = 1000  # the largest `limit` /public/markets accepts (§3.1)


def topic(channel: str, wire: str) -> str:
    return f"{wire}.{STREAM_OF[channel]}"


def stream_messages(topics: Sequence[str], event: str = "subscribe") -> list[str]:
    """`{"event": ..., "streams": [...]}` texts for `topics`, in order, each under 512 bytes
    (§1.5). A single topic too long for one message (no real market id is) still goes alone."""
    out: list[str] = []
    chunk: list[str] = []
    for t in topics:
        if chunk and len(_request(event, [*chunk, t])) > MAX_MESSAGE_BYTES:
            out.append(_request(event, chunk).decode())
            chunk = []
        chunk.append(t)
    if chunk:
        out.append(_request(event, chunk).decode())
    return out


def _request(event: str, streams: list[str]) -> bytes:
    return orjson.dumps({"event": event, "streams": streams})


def resync_messages(t: str) -> list[str]:
    """Ranger sends a fresh snapshot (its cached one plus the increments since) only to a new
    subscriber: unsubscribe, then subscribe again, in this order (§2.3 step 4)."""
    return [*stream_messages([t], "unsubscribe"), *stream_messages([t])]


# ------------------------------------------------------------------------------------- decoding

_KEEPALIVE_TEXTS = frozenset(["pong", b"pong", "ping", b"ping"])  # our pong; a server's text ping


def decode(frame: bytes | str) -> bytes | str:
    """Ranger frames are uncompressed (§1.6): the payload is the frame."""
    if isinstance(frame, bytearray | memoryview):
        return bytes(frame)
    return frame


class _Codec:
    """Frames of one connection -> records, for the markets it was bound to (frames of other
    markets' streams are ignored, so a malformed one cannot disturb ours)."""

    decode_errors: tuple[type[Exception], ...] = ()

    def __init__(self, instruments: Sequence[Instrument]) -> None:
        self.markets = frozenset(i.wire for i in instruments)
        self.decode = decode

    def parse(self, payload: bytes | str) -> list[Message]:
        """One payload -> records. Never raises: what cannot be read becomes a ProtocolError."""
        if len(payload) == 4 and payload in _KEEPALIVE_TEXTS:  # the length first: no hash of a push
            return [Pong()]
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return [undecodable(exc, payload)]
        if type(doc) is not dict:
            return [ProtocolError(f"unexpected message: {clip(payload)}", code="unexpected", kind="parse")]
        if not doc:
            return [ProtocolError("unexpected message: {}", code="unexpected")]
        out: list[Message] = []
        for key, body in doc.items():  # exactly one key on the wire (§1.6); never rely on it
            try:
                out += self._entry(key, body)
            except PARSE_ERRORS as exc:
                out.append(_malformed(key, exc, payload))
        return out

    def _entry(self, key: str, body: Any) -> list[Message]:
        market, dot, stream = key.rpartition(".")
        if not dot:
            if key == "success":
                return _ack(body)
            if key == "error":
                return [ProtocolError(_error_text(body), kind="exchange")]
            return [
                ProtocolError(
                    f"unexpected message key {key!r}: {clip(orjson.dumps(body))}", code="unexpected"
                )
            ]
        if market not in self.markets:
            return []  # global.tickers, another market's stream: not ours
        if stream in (BOOK_STREAM, SNAPSHOT_KEY):
            return [_book(market, body, stream == SNAPSHOT_KEY)]
        if stream == TRADES_STREAM:
            return _trades(market, body)
        return []  # kline-*, or a stream we do not record


def _malformed(key: str, exc: Exception, payload: bytes | str) -> ProtocolError:
    market, dot, stream = key.rpartition(".")
    if not dot:  # an ack or error we cannot read: what we hold is unknown, retry the unacked ones
        return malformed(exc, payload, kind="exchange")
    return malformed(exc, payload, topic=f"{market}.{BOOK_STREAM}" if stream == SNAPSHOT_KEY else key)


def _ack(body: Any) -> list[Message]:
    """`{"success":{"message":"subscribed"|"unsubscribed","streams":[...]}}` lists every stream the
    connection holds now, after a subscribe, an unsubscribe and at connect time (§1.3)."""
    if type(body) is not dict:
        raise TypeError(f"success {body!r}")
    if "streams" not in body:
        return []  # a success that says nothing about streams
    streams = body["streams"]
    if type(streams) is not list or not all(isinstance(s, str) for s in streams):
        raise TypeError(f"success streams {streams!r}")
    return [HeldTopics(frozenset(streams))]


def _error_text(body: Any) -> str:
    """Rango: `{"error":"<text>"}`; Ranger's auth errors: `{"error":{"message":...}}` (§1.3)."""
    if isinstance(body, str):
        return body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return orjson.dumps(body).decode()


def _seq(v: Any) -> int:
    if type(v) is int:
        return v
    if isinstance(v, str) and v.isdigit():
        return int(v)
    raise TypeError(f"sequence {v!r}")


def _amount(v: Any) -> float:
    """Absolute volume; `""` (the Ruby engine's delete, §2.2) and any zero spelling delete."""
    return 0.0 if v == "" else float(v)


def _levels(v: Any) -> list[tuple[float, float]]:
    """Both increment shapes (§2.2): one level `[price, amount]` (the Ruby engine) or a batch
    `[[price, amount], ...]` (finex-style engines, and every snapshot)."""
    if v is None or v == []:
        return []
    if type(v) is not list:
        raise TypeError(f"levels {v!r}")
    if type(v[0]) is not list:
        p, q = v
        return [(float(p), _amount(q))]
    out = []
    for row in v:
        if type(row) is not list:
            raise TypeError(f"level {row!r}")
        p, q = row
        out.append((float(p), _amount(q)))
    return out


def _book(market: str, body: dict, snapshot: bool) -> BookMessage:
    return BookMessage(
        symbol=market,
        seq=_seq(body["sequence"]),
        is_snapshot=snapshot,
        ts=None,  # no event time on the wire (§2.1): the session fills the receive time
        bids=_levels(body.get("bids")),
        asks=_levels(body.get("asks")),
    )


def _trades(market: str, body: dict) -> list[Message]:
    """`{"trades":[{"tid","taker_type","date","price","amount"}]}` (§2.4): date in seconds,
    taker_type the taker's side, amount in base units."""
    out = []
    for t in body["trades"]:
        side = t["taker_type"]
        if side != "buy" and side != "sell":
            raise ValueError(f"taker_type {side!r}")
        tid = t["tid"]
        if type(tid) is not int and not (isinstance(tid, str) and tid):
            raise TypeError(f"tid {tid!r}")
        out.append((_seq(t["date"]) * 1_000_000, str(tid), side, float(t["price"]), float(t["amount"])))
    return [TradeBatch(market, out)] if out else []


# ----------------------------------------------------------------------------------------- REST


def _errors(doc: Any) -> None:
    """Peatio's error answer `{"errors":[...]}` (§3), or Hummingbot's broader `error` (§3)."""
    if isinstance(doc, dict):
        errs = doc.get("errors", doc.get("error"))
        raise VenueError(
            f"exchange error: {_error_text(errs) if errs is not None else clip(orjson.dumps(doc))}"
        )


def _tick(precision: Any) -> str | None:
    """`10^-precision` as a plain decimal string (8 -> "0.00000001")."""
    if precision is None:
        return None
    return format(Decimal(1).scaleb(-int(precision)), "f")


def markets_request(page: int = 1) -> RestRequest:
    return RestRequest(MARKETS_PATH, {"limit": MARKETS_PAGE_LIMIT, "page": page})


def parse_markets(doc: Any, req: RestRequest | None = None) -> MarketsPage:
    """One page of `GET /public/markets` (§3.1, a bare array): its enabled markets, `BTC-USDT`
    from the market's own `base_unit`/`quote_unit` (never by guessing a suffix, §3.9), and the next
    page while this one is full.

    Which page `doc` is, only the request that fetched it says (the body carries no page number,
    Peatio puts it in a header): without `req`, a full page cannot be continued and is refused."""
    _errors(doc)
    if type(doc) is not list:
        raise TypeError(f"market list is a {type(doc).__name__}, not a list")
    out: list[Instrument] = []
    for m in doc:
        if m["state"] != "enabled":
            continue
        out.append(
            Instrument(
                f"{m['base_unit']}-{m['quote_unit']}".upper(),
                m["id"],
                kind="spot",
                price_tick=_tick(m.get("price_precision")),
                size_step=_tick(m.get("amount_precision")),
            )
        )
    limit = int(req.params.get("limit", 100)) if req is not None else MARKETS_PAGE_LIMIT
    if len(doc) < limit:
        return MarketsPage(out)
    if req is None:
        raise VenueError(f"market list fills a page of {limit}: cannot tell which page to ask next")
    return MarketsPage(out, markets_request(int(req.params.get("page", 1)) + 1))


# --------------------------------------------------------------------------------------- klines


class PeatioKlines:
    """`GET /public/markets/{m}/k-line` (§3.5): `period` in minutes, `time_from`/`time_to` in
    seconds; with both given the server ignores `limit` and returns the candles opening in the
    range, oldest first, as `[t, o, h, l, c, v]` (numbers in 2.4+, strings before). No quote volume,
    no trade count."""

    intervals = {"1m": 1, "5m": 5, "15m": 15, "1h": 60, "4h": 240, "1d": 1440}  # §2.5 ∩ our candles
    page_limit = 1000  # our choice: the server caps nothing when both times are given
    rate_limit = (30, 12.0)  # Hummingbot's last throttle for every HTTP endpoint (§3.8)

    def request(self, inst: Instrument, interval: str, lo_s: int, hi_s: int) -> RestRequest:
        params = {
            "period": self.intervals[interval],
            "time_from": lo_s,
            # candles open on multiples of the period, so hi-1 is right whether the server's bound
            # on the open time is `<` or `<=`
            "time_to": hi_s - 1,
            "limit": self.page_limit,  # ignored with both times; bounds a server that does not
        }
        return RestRequest(f"/public/markets/{inst.wire}/k-line", params)

    def parse(self, doc: Any, inst: Instrument, interval: str) -> list[Kline]:
        _errors(doc)
        if type(doc) is not list:
            raise VenueError(f"klines: unexpected answer {clip(orjson.dumps(doc))}")
        out = []
        for row in doc:
            t, o, h, low, c, v = row
            out.append(Kline(int(t), float(o), float(h), float(low), float(c), float(v), None, None))
        return out


# ---------------------------------------------------------------------------------------- venue


class SequenceRestarts:
    """Peatio's book rule (§2.3): every increment is last + 1. Asked only when it is not: ahead is
    a gap, behind is an engine restart (the sequence starts again at 1), equal is a duplicate."""

    def check(self, local: int, msg: BookMessage) -> Verdict:
        seq = msg.seq
        if seq is None or seq == local:
            return Verdict.OUT_OF_ORDER
        return Verdict.GAP if seq > local else Verdict.RESTART


class Peatio(Venue):
    name = "peatio"
    endpoints = Endpoints("", "")  # a generic venue: --ws-url and --rest-url are required
    limits = Limits(
        topics_per_connection=TOPICS_PER_CONNECTION,
        send_budget=SEND_BUDGET,
        connect_budget=CONNECT_BUDGET,
        max_frame_bytes=MAX_FRAME_BYTES,
    )
    keepalive = Keepalive(PING, PING_INTERVAL)
    # A quiet market may have no snapshot cached at all (after a Rango restart, until its book
    # changes, §2.3): ask again with back-off for ever, never reconnect for it.
    resync = ResyncPolicy(timeout=5.0, backoff=2.0, max_wait=60.0, max_tries=None, on_exhausted="wait")
    channels = (TRADES, BOOK)
    default_channels = (TRADES, BOOK)
    klines = PeatioKlines()

    def sequence_policy(self) -> SequenceRestarts:
        return SequenceRestarts()

    def markets_request(self) -> RestRequest:
        return markets_request()

    def parse_markets(self, doc: Any, req: RestRequest | None = None) -> MarketsPage:
        return parse_markets(doc, req)

    def topic(self, channel: str, inst: Instrument) -> str:
        return topic(channel, inst.wire)

    def subscribe(self, topics: Sequence[str]) -> list[str]:
        return stream_messages(topics)

    def unsubscribe(self, topics: Sequence[str]) -> list[str]:
        return stream_messages(topics, "unsubscribe")

    def resync_messages(self, topic: str) -> list[str]:
        return resync_messages(topic)

    def codec(self, instruments: Sequence[Instrument]) -> Codec:
        return _Codec(instruments)


class Altmarkets(Peatio):
    """AltMarkets (Hummingbot's `altmarkets`): Peatio with its documented URLs (§1.1, §3). The
    venue itself appears defunct (§5); its data is partitioned as `exchange=altmarkets`."""

    name = "altmarkets"
    endpoints = Endpoints(ALTMARKETS_WS_URL, ALTMARKETS_REST_URL)


_SIM_MODULE = "recorder.sim.frontends.peatio"


def _simulator() -> type:
    try:
        from recorder.sim.frontends.peatio import PeatioSim
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name not in (_SIM_MODULE, None):
            raise  # the front-end exists but something it imports is missing: show that
        raise RecorderError("no simulator for 'peatio' yet") from None
    return PeatioSim


ENTRIES = (VenueEntry("peatio", Peatio, _simulator), VenueEntry("altmarkets", Altmarkets, _simulator))
