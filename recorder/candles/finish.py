"""Raw candles -> rows of the `candles` table (forward fill, the `complete` flag), and stored rows back
to raw candles."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from recorder.candles.aggregate import RAW_COLUMNS, RAW_SCHEMA, empty_raw
from recorder.candles.intervals import INTERVALS, Span
from recorder.model import SCHEMAS


def grid(spans: Sequence[Span], width: int) -> np.ndarray:
    """Open times of every bucket of `width` overlapping one of `spans`."""
    parts = [np.arange(s // width * width, e, width, dtype=np.int64) for s, e in spans]
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def complete_mask(b: np.ndarray, width: int, spans: Sequence[Span]) -> np.ndarray:
    """True where [b, b + width) lies inside one span (spans sorted and disjoint)."""
    if not spans or b.size == 0:
        return np.zeros(b.size, bool)
    starts = np.array([s for s, _ in spans], np.int64)
    ends = np.array([e for _, e in spans], np.int64)
    i = np.searchsorted(starts, b, side="right") - 1
    return (i >= 0) & (ends[np.maximum(i, 0)] >= b + width)


def forward_fill(raw: pa.Table, extra: np.ndarray, carry: float | None) -> pa.Table:
    """Add flat zero-volume candles at `extra` open times, priced at the previous close."""
    n, m = raw.num_rows, extra.size
    b = np.concatenate([raw.column("b").to_numpy(), extra])
    order = np.argsort(b, kind="stable")
    is_fill = np.concatenate([np.zeros(n, bool), np.ones(m, bool)])[order]
    close = np.concatenate([raw.column("close").to_numpy(), np.full(m, np.nan)])[order]
    last = np.maximum.accumulate(np.where(np.isnan(close), -1, np.arange(close.size)))
    prev = np.where(last >= 0, close[np.maximum(last, 0)], np.nan if carry is None else carry)
    cols: dict[str, np.ndarray] = {"b": b[order]}
    for c in ("open", "high", "low", "close"):
        cols[c] = np.where(
            is_fill, prev, np.concatenate([raw.column(c).to_numpy(), np.full(m, np.nan)])[order]
        )
    for c in ("volume", "quote_volume", "trades", "buy_volume"):
        values = raw.column(c).to_numpy()
        cols[c] = np.concatenate([values, np.zeros(m, values.dtype)])[order]
    keep = ~(is_fill & np.isnan(prev))  # nothing to fill from before the first trade
    return pa.Table.from_arrays([cols[c][keep] for c in RAW_COLUMNS], schema=RAW_SCHEMA)


@dataclass
class FinishInputs:
    """Everything besides the raw candles that a date's final rows depend on (hashed for the manifest)."""

    spans: list[Span]
    has_events: bool
    fill_spans: list[Span]  # empty unless filling
    carry: float | None  # last close before the date, for fill
    intervals: list[str]

    def key(self) -> str:
        carry = self.carry if self.fill_spans else None
        doc = [self.spans, self.has_events, self.fill_spans, carry, self.intervals]
        return hashlib.sha1(orjson.dumps(doc)).hexdigest()


def finish_table(raw: dict[str, pa.Table], inputs: FinishInputs, recv_us: int) -> pa.Table:
    """The date's rows in the `candles` schema, every interval of `inputs.intervals`."""
    parts: list[tuple[str, pa.Table, np.ndarray]] = []
    for iv in inputs.intervals:
        width = INTERVALS[iv]
        tbl = raw.get(iv, empty_raw())
        if inputs.fill_spans:
            extra = np.setdiff1d(grid(inputs.fill_spans, width), tbl.column("b").to_numpy())
            if extra.size:
                tbl = forward_fill(tbl, extra, inputs.carry)
        if tbl.num_rows == 0:  # most 1s blocks of a small stream: nothing to convert
            continue
        b = tbl.column("b").to_numpy()
        complete = complete_mask(b, width, inputs.spans if inputs.has_events else [])
        parts.append((iv, tbl, complete))
    if not parts:
        return SCHEMAS["candles"].empty_table()
    if len(parts) == 1:
        return candle_rows(*parts[0], recv_us)
    # one conversion for all intervals: per-interval conversions cost more than the rows of a small stream
    interval = pa.array(np.repeat([iv for iv, _, _ in parts], [t.num_rows for _, t, _ in parts]))
    raw_all = pa.concat_tables([t.cast(RAW_SCHEMA) for _, t, _ in parts])
    return candle_rows(interval, raw_all, np.concatenate([c for _, _, c in parts]), recv_us)


def candle_rows(interval: str | pa.Array, raw: pa.Table, complete: np.ndarray, recv_us: int) -> pa.Table:
    """Raw candles of one interval (or of `interval[i]` for row i) in the `candles` schema (`ts` =
    `open_time`, `recv_ts` = build time)."""
    schema = SCHEMAS["candles"]
    n = raw.num_rows
    ts = raw.column("b").cast(schema.field("ts").type)
    volume = raw.column("volume")
    values = {
        "ts": ts,
        "recv_ts": pa.repeat(pa.scalar(recv_us, pa.int64()), n).cast(schema.field("recv_ts").type),
        "interval": pa.repeat(interval, n) if isinstance(interval, str) else interval,
        "open_time": ts,
        "vwap": pc.if_else(pc.greater(volume, 0), pc.divide(raw.column("quote_volume"), volume), None),
        "complete": pa.array(complete, pa.bool_()),
    }
    arrays = [values[f.name] if f.name in values else raw.column(f.name) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def raw_from_candles(tbl: pa.Table) -> dict[str, pa.Table]:
    """Stored candles back to raw form per interval, dropping fill rows (the only rows without trades).

    The builder writes each interval's rows together, in time order; anything else is sorted first.
    """
    tbl = tbl.filter(pc.greater(tbl.column("trades"), 0))
    if tbl.num_rows == 0:
        return {}
    codes = pc.dictionary_encode(tbl.column("interval")).combine_chunks()
    idx = codes.indices.to_numpy()
    cuts = np.flatnonzero(idx[1:] != idx[:-1]) + 1
    b = tbl.column("open_time").cast(pa.int64())
    if len(cuts) + 1 > len(codes.dictionary) or not _runs_sorted(b.to_numpy(), cuts):
        tbl = tbl.sort_by([("interval", "ascending"), ("open_time", "ascending")])
        return raw_from_candles(tbl)
    raw = pa.Table.from_arrays([b] + [tbl.column(c) for c in RAW_COLUMNS[1:]], schema=RAW_SCHEMA)
    starts, ends = np.concatenate([[0], cuts]), np.concatenate([cuts, [len(idx)]])
    names = codes.dictionary.to_pylist()
    return {names[idx[s]]: raw.slice(s, e - s) for s, e in zip(starts, ends, strict=True) if e > s}


def _runs_sorted(b: np.ndarray, cuts: np.ndarray) -> bool:
    rising = np.diff(b) > 0
    rising[cuts - 1] = True  # a new interval may start anywhere
    return bool(rising.all())


def last_close(raw: dict[str, pa.Table]) -> float | None:
    """The close of the date's last trade (any interval's last bucket holds it)."""
    for tbl in raw.values():
        if tbl.num_rows:
            return float(tbl.column("close")[tbl.num_rows - 1].as_py())
    return None
