"""Candles from recorded trades: DuckDB aggregation, rebuilt incrementally per UTC date.

`build_candles` turns the `trades` table into the `candles` table. The expensive part (trades ->
OHLCV) is DuckDB SQL; 1s and 1m come from one scan of the trades, coarser intervals are rolled up
from finer candles. What depends on the `events` table (the `complete` flag, `fill` rows) is a
cheap pass over the candles, so a change of coverage never rescans trades.

Incremental state lives in `DATA_DIR/candles/.state/manifest.json` (a dot-dir the tables' glob
never matches): per stream and UTC date, the trade files (name, size, mtime) the candles were
built from, the candle files written, the intervals built and a key of the coverage inputs; plus
each trade file's footer facts and the stream's coverage, so that a re-run reads no footer and
no event twice. A date is then skipped, re-finished (coverage changed), extended (trade files
were only added: only the hours they touch are re-aggregated, from the files overlapping them)
or rebuilt from all its trades. Each touched date's candle partition is replaced crash-safely
(`replace_partition_files`), one file per date.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recorder.errors import RecorderError
from recorder.model import SCHEMAS, TRADES
from recorder.query import COVERAGE_SQL, HIVE_TYPES
from recorder.storage.layout import partition_dir
from recorder.storage.sink import DAY_US, recover, replace_partition_files
from recorder.symbols import normalize

SECOND_US = 1_000_000
INTERVALS: dict[str, int] = {
    "1s": SECOND_US,
    "1m": 60 * SECOND_US,
    "5m": 300 * SECOND_US,
    "15m": 900 * SECOND_US,
    "1h": 3_600 * SECOND_US,
    "4h": 14_400 * SECOND_US,
    "1d": DAY_US,
}
DEFAULT_INTERVALS: tuple[str, ...] = tuple(INTERVALS)
HOUR_US = INTERVALS["1h"]
# Where each interval is rolled up from (1s, and 1m when 1s is not built, come from trades).
ROLLUP_SOURCE = {"1m": "1s", "5m": "1m", "15m": "1m", "1h": "1m", "4h": "1h", "1d": "1h"}
FINE = ("1s", "1m", "5m", "15m", "1h")  # intervals that tile an hour: an appended hour recomputes them
STATE_DIR = ".state"
MANIFEST = "manifest.json"
BUILDER_VERSION = 2  # bump to force a full rebuild when the candle definition changes
DATES_PER_SCAN = 16  # dates aggregated by one DuckDB query (bounds memory on a first build)
WRITERS = max(1, min(4, os.cpu_count() or 1))  # partitions written in parallel
RAW_COLUMNS = ["b", "open", "high", "low", "close", "volume", "quote_volume", "trades", "buy_volume"]
RAW_SCHEMA = pa.schema(
    [(c, pa.int64() if c in ("b", "trades") else pa.float64()) for c in RAW_COLUMNS]
)  # a candle before `complete`/fill: `b` is the open time in epoch us
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Sig = tuple[str, int, int]  # (file name, size, mtime_ns): a trade file as the manifest remembers it
Span = tuple[int, int]  # [start, end) in epoch microseconds


def parse_intervals(spec: str | Iterable[str]) -> tuple[str, ...]:
    """`"1m,1h"` or `["1m", "1h"]` -> ('1m', '1h') ordered by width; unknown names are an error."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in INTERVALS]
    if unknown or not names:
        raise ValueError(f"unknown interval(s) {unknown or names}; known: {', '.join(INTERVALS)}")
    return tuple(iv for iv in INTERVALS if iv in names)


@dataclass
class BuildReport:
    """What a build did, per (exchange, symbol, date): full / append / finish / remove."""

    actions: list[tuple[str, str, str, str]] = field(default_factory=list)
    skipped: int = 0
    rows: int = 0
    seconds: float = 0.0

    def count(self, action: str) -> int:
        return sum(1 for a in self.actions if a[3] == action)


# ---- the entry point --------------------------------------------------------------------------


def build_candles(
    data_dir: str | Path,
    exchange: str | None = None,
    symbol: str | None = None,
    intervals: Sequence[str] | str = DEFAULT_INTERVALS,
    fill: bool = False,
    on_date: Callable[[str, str, str, str], None] | None = None,
) -> BuildReport:
    """Build or update `candles` from `trades` for every matching stream; returns what was done.

    Idempotent: running it twice in a row does nothing the second time. `intervals` adds to the
    intervals already built for a date (all of them are kept fresh). `fill` writes zero-volume
    candles at the previous close for intervals without trades inside the recorded coverage.
    """
    started = time.perf_counter()
    root = Path(data_dir)
    if not root.is_dir():
        raise RecorderError(f"no data dir at {root}")
    wanted = parse_intervals(intervals)
    exchange = exchange.lower() if exchange else None
    symbol = normalize(symbol) if symbol else None
    report = BuildReport()
    with state_lock(root / "candles" / STATE_DIR):
        recover(root / "candles")
        manifest = Manifest.load(root)
        con = duckdb_session()
        try:
            for stream in discover(root, manifest, exchange, symbol):
                try:
                    StreamBuild(root, con, manifest, stream, wanted, fill, report, on_date).run()
                except (duckdb.IOException, FileNotFoundError):
                    # a trade file vanished under us (compaction replaced it): look again, once
                    [stream] = discover(root, manifest, stream.exchange, stream.symbol)
                    StreamBuild(root, con, manifest, stream, wanted, fill, report, on_date).run()
        finally:
            con.close()
    report.seconds = time.perf_counter() - started
    return report


_DB: list[duckdb.DuckDBPyConnection] = []


def duckdb_session() -> duckdb.DuckDBPyConnection:
    """A fresh session (UTC, no progress bar) on one in-memory DuckDB per process.

    Opening a database costs ~30 ms, a cursor on it ~1 ms; a session's temp tables go with it.
    """
    if not _DB:
        _DB.append(duckdb.connect())
    con = _DB[0].cursor()
    con.execute("SET TimeZone = 'UTC'")
    with contextlib.suppress(duckdb.Error):  # a Jupyter kernel without ipywidgets refuses the setting
        con.execute("SET enable_progress_bar = false")
    return con


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """One writer of a derived table per data dir at a time (a second one waits)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---- what is on disk --------------------------------------------------------------------------


@dataclass
class Stream:
    exchange: str
    symbol: str
    trades: dict[str, list[Sig]]  # date -> trade files, sorted by name (= creation order)

    @property
    def key(self) -> str:
        return f"{self.exchange}/{self.symbol}"


def _parquet_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))


def _sig(path: Path) -> Sig:
    st = path.stat()
    return (path.name, st.st_size, st.st_mtime_ns)


def _hive_value(path: Path, key: str) -> str | None:
    prefix = f"{key}="
    return path.name[len(prefix) :] if path.name.startswith(prefix) else None


def discover(root: Path, manifest: Manifest, exchange: str | None, symbol: str | None) -> list[Stream]:
    """Streams with trades on disk, plus streams the manifest knows (their candles may need removal)."""
    found: dict[str, Stream] = {}
    for ex_dir in sorted((root / TRADES).glob("exchange=*")):
        for sym_dir in sorted(ex_dir.glob("symbol=*")):
            ex, sym = _hive_value(ex_dir, "exchange"), _hive_value(sym_dir, "symbol")
            if (exchange and ex != exchange) or (symbol and sym != symbol) or not ex or not sym:
                continue
            dates = {}
            for date_dir in sorted(sym_dir.glob("date=*")):
                files = _parquet_files(date_dir)
                if files:
                    dates[_hive_value(date_dir, "date")] = [_sig(p) for p in files]
            found[f"{ex}/{sym}"] = Stream(ex, sym, dates)
    for key in list(manifest.streams):
        ex, sym = key.split("/", 1)
        if key not in found and not (exchange and ex != exchange) and not (symbol and sym != symbol):
            found[key] = Stream(ex, sym, {})
    return list(found.values())


class Manifest:
    """The builder's memory (JSON, replaced atomically), per stream:

    `dates`: per UTC date, the trade files the candles were built from, the candle files written,
    the intervals built, the key of the finishing inputs and the date's last close;
    `files`: footer facts of each trade file (rows, ts range, latest recv_ts), read once per file;
    `coverage`: the coverage rows last derived from the stream's events, and which event files.
    """

    def __init__(self, path: Path, streams: dict[str, dict]) -> None:
        self.path = path
        self.streams = streams

    @classmethod
    def load(cls, root: Path) -> Manifest:
        path = root / "candles" / STATE_DIR / MANIFEST
        try:
            doc = orjson.loads(path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            doc = {}
        streams = doc.get("streams", {}) if doc.get("version") == BUILDER_VERSION else {}
        return cls(path, streams)

    def stream(self, key: str) -> dict:
        return self.streams.setdefault(key, {"dates": {}, "files": {}, "coverage": None})

    def entry(self, key: str, day: str) -> dict | None:
        return self.stream(key)["dates"].get(day)

    def update(self, key: str, entries: dict[str, dict | None]) -> None:
        """Set (or, for None, drop) the entries of some dates and save."""
        dates = self.stream(key)["dates"]
        for day, entry in entries.items():
            if entry is None:
                dates.pop(day, None)
            else:
                dates[day] = entry
        self.save()

    def save(self) -> None:
        streams = {k: v for k, v in self.streams.items() if v["dates"]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_bytes(orjson.dumps({"version": BUILDER_VERSION, "streams": streams}))
        os.replace(tmp, self.path)


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What a trade file's footer says: row count, exchange-time range, latest receive time."""

    rows: int
    ts: Span | None  # (min, max) of `ts`, inclusive
    recv_max: int | None

    @classmethod
    def read(cls, path: Path) -> FileFacts:
        meta = pq.read_metadata(path)
        ts, recv = _column_range(meta, "ts"), _column_range(meta, "recv_ts")
        return cls(meta.num_rows, ts, recv[1] if recv else None)


def _column_range(meta: pq.FileMetaData, column: str) -> Span | None:
    """(min, max) of a timestamp column in epoch us from a footer; None if any row group lacks it."""
    idx = meta.schema.names.index(column)
    lo: int | None = None
    hi: int | None = None
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(idx).statistics
        if stats is None or not stats.has_min_max:
            return None
        a, b = _to_us(stats.min), _to_us(stats.max)
        lo, hi = (a, b) if lo is None or hi is None else (min(lo, a), max(hi, b))
    return None if lo is None or hi is None else (lo, hi)


def _to_us(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(microseconds=1)


def day_start(day: str) -> int:
    return _to_us(datetime.fromisoformat(day).replace(tzinfo=UTC))


def day_name(us: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=us // DAY_US)).isoformat()


# ---- coverage: which time ranges of a stream were recorded -------------------------------------


@dataclass
class Coverage:
    """Recorded ranges of a stream's trades and the ranges `fill` may fill.

    `spans` come from the `coverage` view (channel 'trades'); an interval still open (no stop
    event: a running or crashed recorder) ends at the last sign of life (the latest event or
    trade receive time). Without any events, nothing is known complete and fill spans first to
    last trade.
    """

    spans: list[Span]
    has_events: bool
    fill_spans: list[Span]

    def clip(self, day: str) -> tuple[list[Span], list[Span]]:
        lo = day_start(day)
        hi = lo + DAY_US
        cut = [(max(s, lo), min(e, hi)) for s, e in self.spans if s < hi and e > lo]
        fills = [(max(s, lo), min(e, hi)) for s, e in self.fill_spans if s < hi and e > lo]
        return cut, fills

    def fill_days(self) -> set[str]:
        days: set[str] = set()
        for s, e in self.fill_spans:
            days.update(day_name(d * DAY_US) for d in range(s // DAY_US, (e - 1) // DAY_US + 1))
        return days


def event_rows(con: duckdb.DuckDBPyConnection, files: list[Path]) -> tuple[list[list], int | None]:
    """Coverage rows [start, end or None] of the trades channel and the latest event time."""
    file_list = ", ".join(_sql_str(p) for p in files)
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW events AS SELECT * FROM read_parquet([{file_list}], "
        f"hive_partitioning = true, hive_types = {HIVE_TYPES}) WHERE channel = 'trades'"
    )
    con.execute(COVERAGE_SQL.replace("CREATE OR REPLACE VIEW", "CREATE OR REPLACE TEMP VIEW"))
    last_event = con.sql("SELECT epoch_us(max(ts)) FROM events").fetchall()[0][0]
    rows = con.sql("SELECT epoch_us(start_ts), epoch_us(end_ts) FROM coverage ORDER BY start_ts").fetchall()
    return [list(r) for r in rows], last_event


def make_coverage(
    rows: list[list], last_event: int | None, first_ts: int | None, last_ts: int | None, last_recv: int | None
) -> Coverage:
    """Close an open last interval at the last sign of life; without events, fill first to last trade."""
    spans = [(s, e) for s, e in rows if e is not None and e > s]
    if rows and rows[-1][1] is None:
        start = rows[-1][0]
        end = max([start, *(v for v in (last_event, last_recv) if v is not None)])
        spans += [(start, end)] if end > start else []
    if last_event is not None:
        return Coverage(spans, True, spans)
    fill = [(first_ts, last_ts + 1)] if first_ts is not None and last_ts is not None else []
    return Coverage([], False, fill)


# ---- trades -> raw candles (DuckDB) -------------------------------------------------------------

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


def _sql_str(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _ts_literal(us: int) -> str:
    return f"TIMESTAMPTZ {_sql_str((_EPOCH + timedelta(microseconds=us)).isoformat())}"


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


def empty_raw() -> pa.Table:
    return RAW_SCHEMA.empty_table()


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
        file_list = ", ".join(_sql_str(p) for p in files)
        made: list[str] = []
        for iv in chain(targets):
            width = INTERVALS[iv]
            source = ROLLUP_SOURCE.get(iv)
            if source in made:
                sql = f"SELECT * RENAME (bucket AS b) FROM ({_ROLLUP.format(w=width, src=f'raw_{source}')})"
            else:
                key = tie_key(width, len(files), max_rows)
                sql = _FROM_TRADES.format(w=width, key=key, files=file_list, where=where)
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE raw_{iv} AS {sql}")
            made.append(iv)
        return {iv: self.con.sql(f"SELECT * FROM raw_{iv} ORDER BY b").to_arrow_table() for iv in targets}

    def rollup(self, source: pa.Table, interval: str) -> pa.Table:
        self.con.register("rollup_source", source)
        try:
            sql = _ROLLUP.format(w=INTERVALS[interval], src="rollup_source")
            return self.con.sql(f"SELECT * RENAME (bucket AS b) FROM ({sql}) ORDER BY b").to_arrow_table()
        finally:
            self.con.unregister("rollup_source")


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


# ---- raw candles -> the `candles` table: fill and the `complete` flag ---------------------------


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
    parts: list[pa.Table] = []
    for iv in inputs.intervals:
        width = INTERVALS[iv]
        tbl = raw.get(iv, empty_raw())
        if inputs.fill_spans:
            extra = np.setdiff1d(grid(inputs.fill_spans, width), tbl.column("b").to_numpy())
            if extra.size:
                tbl = forward_fill(tbl, extra, inputs.carry)
        b = tbl.column("b").to_numpy()
        complete = complete_mask(b, width, inputs.spans if inputs.has_events else [])
        parts.append(candle_rows(iv, tbl, complete, recv_us))
    return pa.concat_tables(parts) if parts else SCHEMAS["candles"].empty_table()


def candle_rows(interval: str, raw: pa.Table, complete: np.ndarray, recv_us: int) -> pa.Table:
    """Raw candles of one interval in the `candles` schema (`ts` = `open_time`, `recv_ts` = build time)."""
    schema = SCHEMAS["candles"]
    n = raw.num_rows
    ts = raw.column("b").cast(schema.field("ts").type)
    volume = raw.column("volume")
    values = {
        "ts": ts,
        "recv_ts": pa.repeat(pa.scalar(recv_us, pa.int64()), n).cast(schema.field("recv_ts").type),
        "interval": pa.repeat(interval, n),
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


# ---- one stream: plan each date, aggregate, finish, publish -------------------------------------


@dataclass
class DatePlan:
    day: str
    action: str  # full | append | keep | remove | skip
    intervals: list[str] = field(default_factory=list)


class StreamBuild:
    """Brings the candle partitions of one (exchange, symbol) up to date, date by date in order."""

    def __init__(
        self,
        root: Path,
        con: duckdb.DuckDBPyConnection,
        manifest: Manifest,
        stream: Stream,
        wanted: Sequence[str],
        fill: bool,
        report: BuildReport,
        on_date: Callable[[str, str, str, str], None] | None,
    ) -> None:
        self.root, self.manifest, self.stream = root, manifest, stream
        self.wanted, self.fill, self.report, self.on_date = list(wanted), fill, report, on_date
        self.con, self.agg = con, Aggregator(con)
        self.state = manifest.stream(stream.key)
        self.coverage_changed = False
        self.facts: dict[str, list] = {}  # "date/name" -> [size, mtime_ns, rows, min_ts, max_ts, max_recv]
        self.coverage = self.load_coverage()
        self.fill_days = self.coverage.fill_days() if fill else set()
        self.recv_us = _to_us(datetime.now(UTC))

    def run(self) -> None:
        days = set(self.stream.trades) | set(self.state["dates"]) | self.fill_days
        carry: float | None = None
        ordered = sorted(days)
        for i in range(0, len(ordered), DATES_PER_SCAN):
            plans = [self.plan(day) for day in ordered[i : i + DATES_PER_SCAN]]
            raw = self.aggregate(plans)
            outputs = []
            for plan in plans:
                carry, out = self.prepare(plan, raw.pop(plan.day, None), carry)
                if out is not None:
                    outputs.append(out)
            self.publish(outputs)
        present = {f"{day}/{s[0]}" for day, sigs in self.stream.trades.items() for s in sigs}
        facts = {k: v for k, v in {**self.state["files"], **self.facts}.items() if k in present}
        if facts != self.state["files"] or self.coverage_changed:  # remember footers and coverage
            self.state["files"] = facts
            self.manifest.save()

    # -- what the footers and the events say

    def file_facts(self, day: str, sig: Sig) -> FileFacts:
        """A trade file's footer facts, read once and then remembered in the manifest."""
        key = f"{day}/{sig[0]}"
        known = self.facts.get(key) or self.state["files"].get(key)
        if known is None or known[:2] != [sig[1], sig[2]]:
            f = FileFacts.read(self.trade_paths(day, [sig])[0])
            known = [sig[1], sig[2], f.rows, *(f.ts or (None, None)), f.recv_max]
        self.facts[key] = known
        rows, lo, hi, recv = known[2:]
        return FileFacts(rows, None if lo is None else (lo, hi), recv)

    def day_facts(self, day: str) -> list[FileFacts]:
        return [self.file_facts(day, sig) for sig in self.stream.trades.get(day, [])]

    def load_coverage(self) -> Coverage:
        """Coverage rows are re-derived only when the stream's event files changed."""
        directory = self.root / "events" / f"exchange={self.stream.exchange}" / f"symbol={self.stream.symbol}"
        files = [p for d in sorted(directory.glob("date=*")) for p in _parquet_files(d)]
        sigs = [[f"{p.parent.name}/{s[0]}", s[1], s[2]] for p in files for s in [_sig(p)]]
        cached = self.state["coverage"]
        self.coverage_changed = cached is None or cached["events"] != sigs
        if self.coverage_changed:
            rows, last_event = event_rows(self.con, files) if files else ([], None)
            cached = self.state["coverage"] = {"events": sigs, "rows": rows, "last_event": last_event}
        days = sorted(self.stream.trades)
        first = [f.ts[0] for f in self.day_facts(days[0]) if f.ts] if days else []
        tail = self.day_facts(days[-1]) if days else []
        last = [f.ts[1] for f in tail if f.ts]
        recv = [f.recv_max for f in tail if f.recv_max is not None]
        return make_coverage(
            cached["rows"],
            cached["last_event"],
            min(first, default=None),
            max(last, default=None),
            max(recv, default=None),
        )

    # -- planning

    def candle_dir(self, day: str) -> Path:
        return partition_dir(self.root, "candles", self.stream.exchange, self.stream.symbol, day)

    def trade_paths(self, day: str, sigs: Iterable[Sig] | None = None) -> list[Path]:
        directory = partition_dir(self.root, TRADES, self.stream.exchange, self.stream.symbol, day)
        return [directory / s[0] for s in (self.stream.trades.get(day, []) if sigs is None else sigs)]

    def plan(self, day: str) -> DatePlan:
        entry = self.manifest.entry(self.stream.key, day)
        trades = self.stream.trades.get(day, [])
        present = [p.name for p in _parquet_files(self.candle_dir(day))]
        if not trades and day not in self.fill_days:
            return DatePlan(day, "remove" if entry or present else "skip")
        built = entry["intervals"] if entry else []
        intervals = [iv for iv in INTERVALS if iv in self.wanted or iv in built]
        if entry is None or sorted(entry["candles"]) != present or built != intervals:
            return DatePlan(day, "full", intervals)
        old = {tuple(s) for s in entry["trades"]}
        new = set(trades)
        if old == new:
            return DatePlan(day, "keep", intervals)
        # coarse intervals of an extended date are rolled up from a stored fine one
        if old and old < new and any(iv in FINE for iv in intervals):
            return DatePlan(day, "append", intervals)
        return DatePlan(day, "full", intervals)

    # -- aggregation

    def aggregate(self, plans: list[DatePlan]) -> dict[str, dict[str, pa.Table]]:
        """Raw candles for the dates that need trades read: full ones in one query, appends each alone."""
        out: dict[str, dict[str, pa.Table]] = {}
        full = [p for p in plans if p.action == "full"]
        if full:
            intervals = [iv for iv in INTERVALS if any(iv in p.intervals for p in full)]
            files = [f for p in full for f in self.trade_paths(p.day)]
            rows = max((f.rows for p in full for f in self.day_facts(p.day)), default=1)
            by_iv = {iv: split_days(t) for iv, t in self.agg.from_trades(files, intervals, rows).items()}
            for p in full:
                p.intervals = intervals
                out[p.day] = {iv: by_iv[iv].get(p.day, empty_raw()) for iv in intervals}
        for p in plans:
            if p.action == "append":
                raw = self.append(p)
                if raw is None:
                    p.action = "full"
                    rows = max((f.rows for f in self.day_facts(p.day)), default=1)
                    raw = self.agg.from_trades(self.trade_paths(p.day), p.intervals, rows)
                out[p.day] = raw
        return out

    def append(self, plan: DatePlan) -> dict[str, pa.Table] | None:
        """Re-aggregate only the hours the added trade files touch; None when that is not possible."""
        entry = self.manifest.entry(self.stream.key, plan.day)
        old = {tuple(s) for s in entry["trades"]}
        sigs = self.stream.trades[plan.day]
        facts = self.day_facts(plan.day)
        added = [f for s, f in zip(sigs, facts, strict=True) if s not in old]
        if any(f.ts is None for f in facts):
            return None
        start = day_start(plan.day)
        lo = max(start, min(f.ts[0] for f in added) // HOUR_US * HOUR_US)
        hi = min(start + DAY_US, (max(f.ts[1] for f in added) // HOUR_US + 1) * HOUR_US)
        # only files with trades in the touched hours are read (kept in name order for the tie-break)
        overlap = [(s, f) for s, f in zip(sigs, facts, strict=True) if f.ts[0] < hi and f.ts[1] >= lo]
        existing = raw_from_candles(self.read_candles(plan.day))
        fine = [iv for iv in plan.intervals if iv in FINE]
        paths = self.trade_paths(plan.day, [s for s, _ in overlap])
        fresh = self.agg.from_trades(paths, fine, max(f.rows for _, f in overlap), (lo, hi))
        merged: dict[str, pa.Table] = {}
        for iv in fine:
            kept = existing.get(iv, empty_raw())
            b = kept.column("b")
            kept = kept.filter(pc.or_(pc.less(b, lo), pc.greater_equal(b, hi)))
            merged[iv] = pa.concat_tables([kept, fresh[iv]]).sort_by("b")
        for iv in plan.intervals:
            if iv not in FINE:
                merged[iv] = self.agg.rollup(merged[fine[-1]], iv)
        return merged

    def read_candles(self, day: str) -> pa.Table:
        """The stored candles of a date: the columns raw candles keep, sorted by interval and time."""
        columns = ["interval", "open_time", *RAW_COLUMNS[1:]]
        schema = pa.schema([SCHEMAS["candles"].field(c) for c in columns])
        tables = [
            pq.read_table(f, columns=columns, schema=schema) for f in _parquet_files(self.candle_dir(day))
        ]
        return pa.concat_tables(tables) if tables else schema.empty_table()

    # -- finishing and publishing

    def prepare(
        self, plan: DatePlan, raw: dict[str, pa.Table] | None, carry: float | None
    ) -> tuple[float | None, Output | None]:
        """The date's new rows if anything changed, and the close carried into the next date."""
        if plan.action == "skip":
            return carry, None
        if plan.action == "remove":
            return carry, Output(plan.day, "remove", None, None)
        spans, fill_spans = self.coverage.clip(plan.day)
        inputs = FinishInputs(
            spans, self.coverage.has_events, fill_spans if self.fill else [], carry, plan.intervals
        )
        action = plan.action
        if action == "keep":
            entry = self.manifest.entry(self.stream.key, plan.day)
            if entry["finish"] == inputs.key():
                self.report.skipped += 1
                return (carry if entry["last_close"] is None else entry["last_close"]), None
            raw, action = raw_from_candles(self.read_candles(plan.day)), "finish"
        assert raw is not None
        close = last_close(raw)
        entry = {
            "trades": [list(s) for s in self.stream.trades.get(plan.day, [])],
            "intervals": plan.intervals,
            "finish": inputs.key(),
            "last_close": close,
        }
        tbl = finish_table(raw, inputs, self.recv_us)
        return (carry if close is None else close), Output(plan.day, action, tbl, entry)

    def publish(self, outputs: list[Output]) -> None:
        """Replace the partitions (in parallel: Parquet encoding releases the GIL), then the manifest."""

        def write(out: Output) -> Path | None:
            directory = self.candle_dir(out.day)
            tbl = out.table if out.table is not None else SCHEMAS["candles"].empty_table()
            return replace_partition_files(directory, tbl, _parquet_files(directory))

        if len(outputs) > 1:
            with ThreadPoolExecutor(max_workers=WRITERS) as pool:
                written = list(pool.map(write, outputs))
        else:
            written = [write(out) for out in outputs]
        updates: dict[str, dict | None] = {}
        for out, path in zip(outputs, written, strict=True):
            if out.entry is not None:
                out.entry["candles"] = [path.name] if path else []
                self.report.rows += out.table.num_rows if out.table is not None else 0
            updates[out.day] = out.entry
            self.report.actions.append((self.stream.exchange, self.stream.symbol, out.day, out.action))
            if self.on_date:
                self.on_date(self.stream.exchange, self.stream.symbol, out.day, out.action)
        self.manifest.update(self.stream.key, updates)


@dataclass
class Output:
    """A date's new candle rows (None: remove the partition) and its manifest entry."""

    day: str
    action: str
    table: pa.Table | None
    entry: dict | None
