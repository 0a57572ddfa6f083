"""The one place that knows each table's columns: Arrow schemas and the normalized record shapes.

Partition keys (exchange, symbol, date) live in the directory path only, never in these schemas.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import msgspec
import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
LEVEL = pa.struct([("price", pa.float64()), ("amount", pa.float64())])

_COMMON = [("ts", TS), ("recv_ts", TS)]

SCHEMAS: dict[str, pa.Schema] = {
    "trades": pa.schema(
        _COMMON
        + [("trade_id", pa.string()), ("side", pa.string()), ("price", pa.float64()), ("amount", pa.float64())]
    ),
    "book_updates": pa.schema(
        _COMMON
        + [
            ("seq", pa.int64()),
            ("is_snapshot", pa.bool_()),
            ("side", pa.string()),
            ("price", pa.float64()),
            ("amount", pa.float64()),
        ]
    ),
    "book_snapshots": pa.schema(
        _COMMON + [("seq", pa.int64()), ("bids", pa.list_(LEVEL)), ("asks", pa.list_(LEVEL))]
    ),
    "events": pa.schema(
        _COMMON
        + [("channel", pa.string()), ("event", pa.string()), ("detail", pa.string()), ("cause", pa.string())]
    ),
    "derivative_ticker": pa.schema(
        _COMMON
        + [
            ("last_price", pa.float64()),
            ("mark_price", pa.float64()),
            ("index_price", pa.float64()),
            ("funding_rate", pa.float64()),
            ("next_funding_rate", pa.float64()),
            ("next_funding_time", TS),
            ("open_interest", pa.float64()),
        ]
    ),
    "exchange_candles": pa.schema(
        _COMMON
        + [
            ("interval", pa.string()),
            ("open_time", TS),
            ("open", pa.float64()),
            ("high", pa.float64()),
            ("low", pa.float64()),
            ("close", pa.float64()),
            ("volume", pa.float64()),
            ("quote_volume", pa.float64()),
            ("trades", pa.int64()),
        ]
    ),
}
SCHEMAS["candles"] = pa.schema(
    list(SCHEMAS["exchange_candles"])
    + [pa.field("vwap", pa.float64()), pa.field("buy_volume", pa.float64()), pa.field("complete", pa.bool_())]
)



# Row shapes, in column order (the sink takes plain tuples; these name the positions). Times are
# int microseconds. The hot path (trades, book updates) appends tuple literals of these shapes;
# everything else builds the named rows. Checked against SCHEMAS at import.
class TradeRow(NamedTuple):
    ts: int
    recv_ts: int
    trade_id: str | None
    side: str
    price: float
    amount: float


class BookUpdateRow(NamedTuple):
    ts: int
    recv_ts: int
    seq: int | None
    is_snapshot: bool
    side: str
    price: float
    amount: float


class BookSnapshotRow(NamedTuple):
    ts: int
    recv_ts: int
    seq: int | None
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]


class EventRow(NamedTuple):
    ts: int
    recv_ts: int
    channel: str
    event: str
    detail: str
    cause: str | None


class DerivativeTickerRow(NamedTuple):
    ts: int
    recv_ts: int
    last_price: float | None
    mark_price: float | None
    index_price: float | None
    funding_rate: float | None
    next_funding_rate: float | None
    next_funding_time: int | None
    open_interest: float | None


class ExchangeCandleRow(NamedTuple):
    ts: int
    recv_ts: int
    interval: str
    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float | None
    trades: int | None


ROWS: dict[str, type[tuple]] = {
    "trades": TradeRow,
    "book_updates": BookUpdateRow,
    "book_snapshots": BookSnapshotRow,
    "events": EventRow,
    "derivative_ticker": DerivativeTickerRow,
    "exchange_candles": ExchangeCandleRow,
}
for _table, _row in ROWS.items():
    assert list(_row._fields) == SCHEMAS[_table].names, _table

# Columns added after files were first written: a file without one reads it as null.
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {"events": ("cause",)}

# Low-cardinality string columns that are worth dictionary encoding in Parquet.
DICTIONARY_COLUMNS = ["side", "channel", "event", "interval", "cause"]

# Event names (the `events.event` column).
CONNECT, SUBSCRIBED, DISCONNECT, GAP, RESYNC, ERROR, STOP = (
    "connect",
    "subscribed",
    "disconnect",
    "gap",
    "resync",
    "error",
    "stop",
)


class Cause:
    """Why an event happened, as a code (the `events.cause` column): what ended a coverage
    interval is read from it, never matched in the free-text `detail`."""

    CONNECT = "connect"
    RECONNECT = "reconnect"
    DISCONNECT = "disconnect"
    STOP = "stop"  # a clean stop
    CRASH = "crash"  # the process died; written by recovery / replay
    GAP = "gap"  # a sequence gap
    CROSSED = "crossed"  # a crossed book or snapshot
    OUT_OF_ORDER = "out_of_order"  # a duplicated or backwards book update
    RESTART = "restart"  # the sequence went back (an engine restart)
    STALE = "stale"  # the stale-stream watchdog's verdict on a silent socket
    DISK = "disk"  # rows or raw records dropped because the disk refused them
    DECODE = "decode"  # a frame that could not be decoded or parsed
    EXCHANGE = "exchange"  # an error the exchange sent
    REFUSED = "refused"  # a subscription the exchange refused
    NO_SNAPSHOT = "no_snapshot"  # a snapshot that never came
    DELISTED = "delisted"  # the venue's market list no longer has the market (a `stop` of its topics)


DEFAULT_CAUSE = {CONNECT: Cause.CONNECT, DISCONNECT: Cause.DISCONNECT, GAP: Cause.GAP, STOP: Cause.STOP}

# Events written before `cause` existed say it only in their detail text (our own words, never
# the venue's): the prefixes that text started with, in the order they were tested.
LEGACY_DETAIL_CAUSES: tuple[tuple[str, str], ...] = (
    ("crash", Cause.CRASH),
    ("crossed", Cause.CROSSED),
    ("stale stream", Cause.STALE),
    ("disk:", Cause.DISK),
    ("out-of-order", Cause.OUT_OF_ORDER),
    ("no snapshot after", Cause.NO_SNAPSHOT),
    ("decode:", Cause.DECODE),
    ("parse:", Cause.DECODE),
)
# ... except for these events, whose name alone said it (a disconnect's reason may quote a verdict).
LEGACY_BY_EVENT = (CONNECT, DISCONNECT, GAP)


def legacy_cause(event: str, detail: str | None) -> str | None:
    """The cause of an event recorded before `cause` existed (raw logs of format 1, Parquet files
    without the column): `recorder.coverage` renders the same rules in SQL."""
    if event in LEGACY_BY_EVENT:
        return DEFAULT_CAUSE[event]
    text = detail or ""
    for prefix, cause in LEGACY_DETAIL_CAUSES:
        if text.startswith(prefix):
            return cause
    if "no data for" in text:  # the first wording of the silence verdict
        return Cause.STALE
    if event == ERROR:
        return Cause.EXCHANGE
    return DEFAULT_CAUSE.get(event)


# Channel names as users write them in --channels, and as the `events.channel` column stores them.
TRADES, BOOK, TICKER, FUNDING = "trades", "book", "ticker", "funding"


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A normalized stream and the tables its rows go to (every channel also writes `events`)."""

    name: str
    tables: tuple[str, ...]
    valid_from: Literal["ack", "snapshot"]  # coverage starts at its `subscribed` or its `resync` event
    count_where: str = "true"  # `recorder status` counts its rows where this holds


CHANNEL_SPECS: dict[str, ChannelSpec] = {
    TRADES: ChannelSpec(TRADES, ("trades",), "ack"),
    BOOK: ChannelSpec(BOOK, ("book_updates", "book_snapshots"), "snapshot"),
    TICKER: ChannelSpec(
        TICKER, ("derivative_ticker",), "ack", "coalesce(last_price, mark_price, index_price, open_interest) IS NOT NULL"
    ),
    FUNDING: ChannelSpec(FUNDING, ("derivative_ticker",), "ack", "coalesce(funding_rate, next_funding_rate) IS NOT NULL"),
}


def tables_for(channels: Iterable[str]) -> tuple[str, ...]:
    """The tables that recording `channels` writes: `events`, then each channel's, in catalog order."""
    wanted = set(channels)
    out = ["events"]
    for spec in CHANNEL_SPECS.values():
        if spec.name in wanted:
            out += [t for t in spec.tables if t not in out]
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Normalized messages that venue codecs produce. Numbers are parsed once, here at the edge.
# Times are integer microseconds since the epoch (UTC). Symbols are wire ids.


# The two per-frame records are msgspec structs: built in C (~120 ns a message against ~270 for a
# slots dataclass), otherwise the same (fields by position or name, mutable, ==, repr).


class TradeBatch(msgspec.Struct):
    symbol: str  # wire symbol
    # (ts_us, trade_id or None, side 'buy'|'sell', price, amount in base units)
    trades: list[tuple[int, str | None, str, float, float]]


class BookMessage(msgspec.Struct):
    symbol: str  # wire symbol
    seq: int | None
    is_snapshot: bool
    ts: int | None  # exchange time, us; None: the venue gives none (the session fills the receive time)
    bids: list[tuple[float, float]]  # absolute amounts in base units; 0 deletes the level
    asks: list[tuple[float, float]]


@dataclass(slots=True)
class DerivativeTicker:
    """One `derivative_ticker` row (fields the push does not carry are None)."""

    symbol: str  # wire symbol
    channel: str  # TICKER or FUNDING
    ts: int | None  # None: the receive time
    last_price: float | None = None
    mark_price: float | None = None
    index_price: float | None = None
    funding_rate: float | None = None
    next_funding_rate: float | None = None
    next_funding_time: int | None = None  # us
    open_interest: float | None = None  # base units


@dataclass(slots=True)
class Ack:
    """One topic acknowledged."""

    topic: str
    op: Literal["subscribe", "unsubscribe"] = "subscribe"


@dataclass(slots=True)
class HeldTopics:
    """The venue's ack lists every topic the connection holds now (Peatio): the others are not held."""

    topics: frozenset[str]


@dataclass(slots=True)
class ProtocolError:
    """An error the exchange sent, or a frame we could not read. `topic` when attributable.

    `kind` is what the session acts on: `decode`/`parse` (a frame lost: its books resync),
    `refused` (a subscription of `topic` refused), `exchange` (an error naming no topic: every
    topic still unacknowledged counts as refused). `code` is the venue's own, only ever printed."""

    message: str
    code: str | None = None
    topic: str | None = None
    kind: Literal["decode", "parse", "refused", "exchange"] = "exchange"


@dataclass(slots=True)
class Pong:
    pass


Message = TradeBatch | BookMessage | DerivativeTicker | Ack | HeldTopics | ProtocolError | Pong
