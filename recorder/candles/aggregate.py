"""Trades -> raw OHLCV candles with DuckDB: one scan of the trades for the finest intervals, roll-ups
for the coarser ones."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from recorder.candles.intervals import EPOCH, INTERVALS, Span, day_name
from recorder.candles.state import sql_str
from recorder.storage.sink import DAY_US

# Where each interval is rolled up from (1s, and 1m when 1s is not built, come from trades).
ROLLUP_SOURCE = {"1m": "1s", "5m": "1m", "15m": "1m", "1h": "1m", "4h": "1h", "1d": "1h"}
FINE = ("1s", "1m", "5m", "15m", "1h")  # intervals that tile an hour: an appended hour recomputes them
RAW_COLUMNS = ["b", "open", "high", "low", "close", "volume", "quote_volume", "trades", "buy_volume"]
RAW_SCHEMA = pa.schema(
    [(c, pa.int64() if c in ("b", "trades") else pa.float64()) for c in RAW_COLUMNS]
)  # a candle before `complete`/fill: `b` is the open time in epoch us

# Ties on exchange time go to arrival order: file (names sort by creation) then row; the recorder
# writes trades in the order it received them. Packed into one BIGINT when the bits fit (the key only
# compares trades of one bucket, so the time part is the offset inside the bucket), else a struct.
PACKED_KEY = "((epoch_us(ts) % {w}) << {shift}) + (file_index::BIGINT << {row_bits}) + file_row_number"
STRUCT_KEY = "(ts, file_index, file_row_number)"
_FROM_TRADES = """
SELECT epoch_us(ts) // {w} * {w} AS b,
       arg_min(price, {key}) AS open, max(price) AS high, min(price) AS low,
       arg_max(price, {key}) AS close,
       sum(amount) AS volume, sum(price * amount) AS quote_volume, count(*)::BIGINT AS trades,
       coalesce(sum(amount) FILTER (WHERE side = 'buy'), 0) AS buy_volume
FROM read_parquet([{files}], file_row_number = true, hive_partitioning = false)
{where}
GROUP BY 1
"""
# Sub-buckets are unique per bucket, so the first/last by open time are exact.
_ROLLUP = """
SELECT b // {w} * {w} AS bucket,
       arg_min(open, b) AS open, max(high) AS high, min(low) AS low, arg_max(close, b) AS close,
       sum(volume) AS volume, sum(quote_volume) AS quote_volume, sum(trades)::BIGINT AS trades,
       sum(buy_volume) AS buy_volume
FROM {src}
GROUP BY 1
"""


def _ts_literal(us: int) -> str:
    return f"TIMESTAMPTZ {sql_str((EPOCH + timedelta(microseconds=us)).isoformat())}"


def tie_key(width: int, n_files: int, max_rows: int) -> str:
    row_bits = max(1, (max_rows - 1).bit_length())
    shift = row_bits + max(1, (n_files - 1).bit_length())
    if (width - 1).bit_length() + shift <= 62:
        return PACKED_KEY.format(w=width, shift=shift, row_bits=row_bits)
    return STRUCT_KEY


def chain(targets: Iterable[str]) -> list[str]:
    """The targets plus the intervals they roll up from, finest first (1s only if asked for)."""
    need = set(targets)
    for coarse in ("1d", "4h", "1h", "15m", "5m"):
        if coarse in need:
            need.add(ROLLUP_SOURCE[coarse])
    return [iv for iv in INTERVALS if iv in need]


_EMPTY_RAW = RAW_SCHEMA.empty_table()  # tables are immutable: one empty table serves every caller


def empty_raw() -> pa.Table:
    return _EMPTY_RAW


class Aggregator:
    """Trades -> OHLCV per interval with DuckDB; each interval after the first is a roll-up."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def from_trades(
        self, files: Sequence[Path], targets: Iterable[str], max_rows: int, ts_range: Span | None = None
    ) -> dict[str, pa.Table]:
        """Raw candles of `targets` from `files` (in arrival order); `max_rows`: rows of the largest file."""
        targets = list(targets)
        if not files:
            return {iv: empty_raw() for iv in targets}
        where = ""
        if ts_range is not None:  # a plain comparison on `ts` lets DuckDB skip row groups by statistics
            where = f"WHERE ts >= {_ts_literal(ts_range[0])} AND ts < {_ts_literal(ts_range[1])}"
        file_list = ", ".join(sql_str(p) for p in files)
        # One DuckDB query for the finest interval; the coarser ones are rolled up in numpy from its
        # sorted rows: a statement costs ~5 ms of overhead, which dominated builds of many small streams.
        order = chain(targets)
        width = INTERVALS[order[0]]
        key = tie_key(width, len(files), max_rows)
        sql = _FROM_TRADES.format(w=width, key=key, files=file_list, where=where)
        finest = self.con.sql(f"{sql} ORDER BY b").to_arrow_table().cast(RAW_SCHEMA)
        made = rollup_chain(finest, order[0], order)
        return {iv: made[iv] for iv in targets}


    def by_owner(self, files: Sequence[Path], owners: Sequence[int], interval: str) -> dict[int, pa.Table]:
        """Raw candles of `interval` per owner from one scan of many owners' files (each owner's in
        arrival order, contiguous): one query for many small streams instead of one each."""
        width = INTERVALS[interval]
        file_list = ", ".join(sql_str(p) for p in files)
        owner_of = "[" + ", ".join(str(o) for o in owners) + "][file_index::BIGINT + 1]"
        sql = _FROM_TRADES.format(w=width, key=STRUCT_KEY, files=file_list, where="")
        sql = sql.replace("SELECT ", f"SELECT {owner_of} AS owner, ", 1).replace("GROUP BY 1", "GROUP BY 1, 2")
        tbl = self.con.sql(f"{sql} ORDER BY owner, b").to_arrow_table()
        owner = tbl.column("owner").to_numpy()
        tbl = tbl.drop_columns(["owner"]).cast(RAW_SCHEMA)
        cuts = np.flatnonzero(np.diff(owner)) + 1
        starts, ends = np.concatenate([[0], cuts]), np.concatenate([cuts, [len(owner)]])
        return {int(owner[a]): tbl.slice(a, z - a) for a, z in zip(starts, ends, strict=True)}


def rollup_sorted(source: pa.Table, width: int) -> pa.Table:
    """`_ROLLUP` in numpy for raw candles sorted by `b` (unique): the few rows an append touches,
    where a DuckDB query would cost more in overhead than in work."""
    if source.num_rows == 0:
        return empty_raw()
    col = {c: source.column(c).to_numpy() for c in RAW_COLUMNS}
    bucket = col["b"] // width * width
    starts = np.concatenate([[0], np.flatnonzero(np.diff(bucket)) + 1])
    ends = np.append(starts[1:], bucket.size) - 1
    out = {
        "b": bucket[starts],
        "open": col["open"][starts],
        "high": np.maximum.reduceat(col["high"], starts),
        "low": np.minimum.reduceat(col["low"], starts),
        "close": col["close"][ends],
    }
    for c in ("volume", "quote_volume", "trades", "buy_volume"):
        out[c] = np.add.reduceat(col[c], starts)
    return pa.Table.from_arrays([out[c] for c in RAW_COLUMNS], schema=RAW_SCHEMA)


def rollup_chain(finest: pa.Table, interval: str, targets: Iterable[str]) -> dict[str, pa.Table]:
    """`targets` rolled up in numpy from raw candles of `interval`, each from its `ROLLUP_SOURCE`
    when that is at hand, else from the coarsest finer one made so far."""
    made = {interval: finest}
    for iv in INTERVALS:
        if iv in targets and iv not in made:
            source = ROLLUP_SOURCE.get(iv)
            if source not in made:
                source = [m for m in made if INTERVALS[m] < INTERVALS[iv]][-1]
            made[iv] = rollup_sorted(made[source], INTERVALS[iv])
    return made


def split_days(tbl: pa.Table) -> dict[str, pa.Table]:
    """Rows of a raw candle table (sorted by `b`) grouped by the UTC date of `b`."""
    if tbl.num_rows == 0:
        return {}
    b = tbl.column("b").to_numpy()
    days = b // DAY_US
    cuts = np.flatnonzero(np.diff(days)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(b)]])
    return {day_name(int(days[s]) * DAY_US): tbl.slice(s, e - s) for s, e in zip(starts, ends, strict=True)}
