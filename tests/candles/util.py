"""Test helpers: write trades and events the way the recorder does, and an independent candle reference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recorder.model import DEFAULT_CAUSE, TRADES
from recorder.storage.sink import ParquetSink, rows_to_table

EX, SYM = "bitmart", "BTC-USDT"
MIN = 60_000_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_717_200_000_000_000 // DAY * DAY  # 2024-06-01 00:00 UTC in us

Trade = tuple[int, int, str | None, str, float, float]  # ts, recv_ts, trade_id, side, price, amount


def write_trades(data_dir: Path, rows: Sequence[Trade], exchange: str = EX, symbol: str = SYM) -> list[Path]:
    """One file per UTC date of the rows, published by the one writer."""
    return ParquetSink(data_dir).write_table(TRADES, exchange, symbol, rows_to_table(TRADES, list(rows)))


def write_events(
    data_dir: Path, events: Sequence[tuple[int, str]], exchange: str = EX, symbol: str = SYM
) -> None:
    """(ts, event) on the trades channel, e.g. (T0, 'subscribed'), (T0 + DAY, 'stop'), with the
    cause the recorder writes for it (files without `cause`: tests/test_coverage.py)."""
    rows = [(ts, ts, TRADES, event, "", DEFAULT_CAUSE.get(event)) for ts, event in events]
    ParquetSink(data_dir).write_table("events", exchange, symbol, rows_to_table("events", rows))


def random_trades(
    rng: np.random.Generator, start: int, end: int, n: int, ms: bool = True, late: float = 0.05
) -> list[Trade]:
    """Trades in arrival order, as a recorder would write them; exchange times in [start, end).

    Arrival order is NOT exchange order: most trades arrive a few ms after their exchange time, a
    fraction `late` of them up to two minutes late (after trades that happened later, often in a later
    candle). So a builder that orders by receive time, or by position in the files, gets open and
    close wrong. Exchange times at ms resolution, so that ties are common.
    """
    ts = np.sort(rng.integers(start, end, n))
    if ms:
        ts = ts // 1000 * 1000
    delay = 1000 + rng.integers(0, 5000, n)
    is_late = rng.random(n) < late
    delay[is_late] += rng.integers(1_000_000, 120_000_000, int(is_late.sum()))
    recv = ts + delay
    order = np.argsort(recv, kind="stable")  # the order frames reached the recorder
    price = np.round(100 + np.cumsum(rng.normal(0, 0.05, n)), 2)
    amount = np.round(rng.exponential(0.5, n) + 0.001, 4)
    side = np.where(rng.random(n) < 0.5, "buy", "sell")
    return [
        (int(ts[i]), int(recv[i]), None, str(side[i]), float(price[i]), float(amount[i])) for i in order
    ]


def reference(trades: Sequence[Trade], width_us: int) -> pd.DataFrame:
    """Candles computed the plain way, with pandas: `trades` is in arrival order (the order the rows
    were written: file after file, row after row); a stable sort by exchange time keeps arrival order
    among ties (README: "ties in arrival order"). `recv_ts` plays no part."""
    df = pd.DataFrame(list(trades), columns=["ts", "recv_ts", "trade_id", "side", "price", "amount"])
    df = df.sort_values("ts", kind="stable")
    df["b"] = df["ts"] // width_us * width_us
    df["qv"] = df["price"] * df["amount"]
    df["buy"] = np.where(df["side"] == "buy", df["amount"], 0.0)
    g = df.groupby("b", sort=True)
    out = pd.DataFrame(
        {
            "open": g["price"].first(),
            "high": g["price"].max(),
            "low": g["price"].min(),
            "close": g["price"].last(),
            "volume": g["amount"].sum(),
            "quote_volume": g["qv"].sum(),
            "trades": g["price"].size(),
            "buy_volume": g["buy"].sum(),
        }
    )
    out["vwap"] = out["quote_volume"] / out["volume"]
    return out


def built(con, interval: str, exchange: str = EX, symbol: str = SYM) -> pd.DataFrame:  # noqa: ANN001
    """The candles table of one stream and interval, indexed by open time in epoch us."""
    df = con.execute(
        "SELECT epoch_us(open_time) AS b, open, high, low, close, volume, quote_volume, trades, vwap, "
        "buy_volume, complete, epoch_us(ts) AS ts, date FROM candles "
        "WHERE exchange = ? AND symbol = ? AND interval = ? ORDER BY b",
        [exchange, symbol, interval],
    ).df()
    return df.set_index("b")
