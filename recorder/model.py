"""The one place that knows each table's columns: Arrow schemas and the normalized record shapes.

Partition keys (exchange, symbol, date) live in the directory path only, never in these schemas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    "events": pa.schema(_COMMON + [("channel", pa.string()), ("event", pa.string()), ("detail", pa.string())]),
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

# Low-cardinality string columns that are worth dictionary encoding in Parquet.
DICTIONARY_COLUMNS = ["side", "channel", "event", "interval"]

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
# Channel names as users write them in --channels, and as the `events.channel` column stores them.
TRADES, BOOK = "trades", "book"
CHANNELS = (TRADES, BOOK)


# ---------------------------------------------------------------------------------------------
# Normalized messages that protocol adapters produce. Numbers are parsed once, here at the edge.
# Times are integer microseconds since the epoch (UTC).


@dataclass(slots=True)
class TradeBatch:
    symbol: str  # wire symbol
    # (ts_us, trade_id or None, side 'buy'|'sell', price, amount in base units)
    trades: list[tuple[int, str | None, str, float, float]]


@dataclass(slots=True)
class BookMessage:
    symbol: str  # wire symbol
    seq: int | None
    is_snapshot: bool
    ts: int  # exchange time, us
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]


@dataclass(slots=True)
class TickerMessage:
    symbol: str
    ts: int
    values: dict[str, float | int | None] = field(default_factory=dict)


@dataclass(slots=True)
class Ack:
    topic: str
    op: str = "subscribe"


@dataclass(slots=True)
class ProtocolError:
    """An error the exchange sent (or a frame we could not decode). `topic` when attributable."""

    message: str
    code: str | None = None
    topic: str | None = None


@dataclass(slots=True)
class Pong:
    pass


Message = TradeBatch | BookMessage | TickerMessage | Ack | ProtocolError | Pong
