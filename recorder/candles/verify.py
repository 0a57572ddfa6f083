"""Built candles against the exchange's own: matches, mismatches by field, and what is missing where.

Tolerance: two values match when |built - exchange| <= atol + rtol * max(|built|, |exchange|), with
rtol = 1e-9 and atol = 1e-12 by default for every float field (prices and volumes). Prices parsed
from the same decimal string are bit-identical, so this only absorbs float summation order in
volumes; exchanges that round their volumes (BitMart rounds quote volume) need a larger atol.
A field is compared only where the exchange gives it: BitMart klines give no trade count, Peatio's
neither a trade count nor a quote volume.

A verification passes when at least one complete built candle was compared and every complete
built candle has an exchange candle that matches, and no exchange candle with volume lies inside
a time range the recording covers without a built candle there (trades we missed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from recorder import venues
from recorder.candles.intervals import INTERVALS, VERIFY_ATOL, VERIFY_RTOL, TimeLike, parse_time
from recorder.errors import RecorderError
from recorder.instruments import normalize
from recorder.query import connect

FIELDS = ("open", "high", "low", "close", "volume", "quote_volume", "trades")
RTOL = VERIFY_RTOL
ATOL = VERIFY_ATOL


@dataclass(frozen=True, slots=True)
class Mismatch:
    open_time: datetime
    field: str
    built: float
    exchange: float
    complete: bool

    @property
    def difference(self) -> float:
        return self.built - self.exchange


@dataclass
class VerifyResult:
    """Counts per category; `mismatches` lists every differing field of every joined candle."""

    exchange: str
    symbol: str
    interval: str
    start: datetime | None = None
    end: datetime | None = None
    matched: int = 0  # complete built candles equal to the exchange's
    mismatched: int = 0  # complete built candles that differ in at least one field
    incomplete_matched: int = 0  # built over a recording gap, equal anyway
    incomplete_mismatched: int = 0  # built over a recording gap and different (expected)
    missing_exchange: int = 0  # complete built candles with trades that the exchange lacks
    missing_built: int = 0  # exchange candles with volume and no built candle
    missed_in_coverage: int = 0  # ... of which inside a recorded range: trades the recording lost
    empty_both: int = 0  # zero-volume candles on one side, nothing or zero on the other
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def compared(self) -> int:
        return self.matched + self.mismatched

    @property
    def ok(self) -> bool:
        return self.compared > 0 and not (self.mismatched or self.missing_exchange or self.missed_in_coverage)


_JOIN = """
WITH b AS (
    SELECT open_time, open, high, low, close, volume, quote_volume, trades::DOUBLE AS trades, complete
    FROM candles WHERE exchange = $ex AND symbol = $sym AND interval = $iv
      AND open_time >= $lo AND open_time < $hi
), e AS (
    SELECT open_time, open, high, low, close, volume, quote_volume, trades::DOUBLE AS trades
    FROM exchange_candles WHERE exchange = $ex AND symbol = $sym AND interval = $iv
      AND open_time >= $lo AND open_time < $hi
    QUALIFY row_number() OVER (PARTITION BY open_time ORDER BY recv_ts DESC) = 1
)
SELECT coalesce(b.open_time, e.open_time) AS open_time, b.open_time IS NOT NULL AS has_b,
       e.open_time IS NOT NULL AS has_e, coalesce(b.complete, false) AS complete,
       {cols},
       EXISTS (SELECT 1 FROM coverage c WHERE c.exchange = $ex AND c.symbol = $sym AND c.channel = 'trades'
               AND c.start_ts <= coalesce(b.open_time, e.open_time)
               AND coalesce(c.end_ts, now()) >= coalesce(b.open_time, e.open_time) + to_microseconds($width))
         AS covered
FROM b FULL OUTER JOIN e ON b.open_time = e.open_time
ORDER BY 1
"""


def verify(
    data_dir: str | Path,
    exchange: str,
    symbol: str,
    interval: str = "1m",
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> VerifyResult:
    """Compare `candles` with `exchange_candles` of one stream and interval over [start, end).

    Without bounds the range is that of the stored exchange candles of this interval.
    """
    if interval not in INTERVALS:
        raise RecorderError(f"unknown interval {interval!r}; known: {', '.join(INTERVALS)}")
    sym = normalize(symbol)
    exchange = venues.normalize(exchange)
    result = VerifyResult(exchange, sym, interval)
    con = connect(data_dir)
    try:
        lo, hi = _bounds(con, exchange, sym, interval, start, end)
        result.start, result.end = lo, hi
        if lo is None or hi is None:
            return result
        cols = ", ".join(f"b.{f} AS b_{f}, e.{f} AS e_{f}" for f in FIELDS)
        params = {
            "ex": exchange,
            "sym": sym,
            "iv": interval,
            "lo": lo,
            "hi": hi,
            "width": INTERVALS[interval],
        }
        joined = con.sql(_JOIN.format(cols=cols), params=params).to_arrow_table()
    finally:
        con.close()
    _classify(result, joined, rtol, atol)
    return result


def _bounds(
    con: duckdb.DuckDBPyConnection,
    exchange: str,
    sym: str,
    interval: str,
    start: TimeLike | None,
    end: TimeLike | None,
) -> tuple[datetime | None, datetime | None]:
    """The requested range; missing bounds come from the stored exchange candles."""
    lo = parse_time(start) if start is not None else None
    hi = parse_time(end) if end is not None else None
    if lo is None or hi is None:
        first, last = con.execute(
            "SELECT min(open_time), max(open_time) FROM exchange_candles "
            "WHERE exchange = ? AND symbol = ? AND interval = ?",
            [exchange, sym, interval],
        ).fetchall()[0]
        if first is None:
            return lo, hi
        lo = lo or parse_time(first)
        hi = hi or parse_time(last) + timedelta(microseconds=INTERVALS[interval])
    return lo, hi


def _classify(result: VerifyResult, joined: pa.Table, rtol: float, atol: float) -> None:
    col = {
        n: joined.column(n).to_numpy(zero_copy_only=False) for n in joined.column_names if n != "open_time"
    }
    has_b, has_e, complete = col["has_b"], col["has_e"], col["complete"]
    both = has_b & has_e
    equal = np.ones(len(has_b), bool)
    for f in FIELDS:
        b, e = col[f"b_{f}"].astype(float), col[f"e_{f}"].astype(float)
        given = both & ~np.isnan(e)  # a field the exchange's klines do not carry is not compared
        if f == "trades":
            diff = given & (b != e)
        else:
            diff = given & ~(np.abs(b - e) <= atol + rtol * np.maximum(np.abs(b), np.abs(e)))
        equal &= ~diff
        for i in np.flatnonzero(diff):
            t = joined.column("open_time")[int(i)].as_py()
            result.mismatches.append(Mismatch(t, f, float(b[i]), float(e[i]), bool(complete[i])))
    b_volume, e_volume = col["b_volume"].astype(float), col["e_volume"].astype(float)
    result.matched = int(np.sum(both & complete & equal))
    result.mismatched = int(np.sum(both & complete & ~equal))
    result.incomplete_matched = int(np.sum(both & ~complete & equal))
    result.incomplete_mismatched = int(np.sum(both & ~complete & ~equal))
    b_only, e_only = has_b & ~has_e, has_e & ~has_b
    result.missing_exchange = int(np.sum(b_only & complete & (b_volume > 0)))
    result.missing_built = int(np.sum(e_only & (e_volume > 0)))
    result.missed_in_coverage = int(np.sum(e_only & (e_volume > 0) & col["covered"]))
    result.empty_both = int(np.sum((b_only & ~(b_volume > 0)) | (e_only & ~(e_volume > 0))))
