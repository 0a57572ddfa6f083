"""What the candle builder remembers and sees on disk: the manifest, the one-writer lock, the DuckDB
session, the trade files of each stream and their footer facts."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from recorder.candles.intervals import Span, to_us
from recorder.lake import scan_table
from recorder.model import TRADES
from recorder.storage.compact import Lineage, read_lineage

STATE_DIR = ".state"
MANIFEST = "manifest.json"
BUILDER_VERSION = 3  # bump to force a full rebuild when the candle definition changes
SAVE_EVERY = 1.0  # s between two manifest writes during a build
Sig = tuple[str, int, int]  # (file name, size, mtime_ns): a trade file as the manifest remembers it


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


def sql_str(value: object) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


@dataclass
class Stream:
    exchange: str
    symbol: str
    trades: dict[str, list[Sig]]  # date -> trade files, sorted by name (= creation order)

    @property
    def key(self) -> str:
        return f"{self.exchange}/{self.symbol}"


def parquet_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))


def file_sig(path: Path) -> Sig:
    st = path.stat()
    return (path.name, st.st_size, st.st_mtime_ns)


def _hive_value(path: Path, key: str) -> str | None:
    prefix = f"{key}="
    return path.name[len(prefix) :] if path.name.startswith(prefix) else None


def discover(root: Path, manifest: Manifest, exchange: str | None, symbol: str | None) -> list[Stream]:
    """Streams with trades on disk, plus streams the manifest knows (their candles may need removal)."""
    found: dict[str, Stream] = {}
    # the files the `trades` view reads: damaged files and stray dirs are skipped with a warning
    for path in scan_table(root, TRADES, exchange, symbol).files:
        ex, sym = _hive_value(path.parents[2], "exchange"), _hive_value(path.parents[1], "symbol")
        day = _hive_value(path.parent, "date")
        stream = found.setdefault(f"{ex}/{sym}", Stream(str(ex), str(sym), {}))
        stream.trades.setdefault(str(day), []).append(file_sig(path))
    for key in list(manifest.streams):
        ex, sym = key.split("/", 1)
        if key not in found and not (exchange and ex != exchange) and not (symbol and sym != symbol):
            found[key] = Stream(ex, sym, {})
    return list(found.values())


class Manifest:
    """The builder's memory (JSON, replaced atomically), per stream:

    `dates`: per UTC date, the trade files the candles were built from, the intervals built, the
    key of the finishing inputs, the date's last close, the candle files written (`candles`) and
    per file group (see `groups`) its [file or None, finishing key, last close];
    `files`: footer facts of each trade file (rows, ts range, latest recv_ts), read once per file;
    `coverage`: the coverage rows last derived from the stream's events, and which event files.
    """

    def __init__(self, path: Path, streams: dict[str, dict]) -> None:
        self.path = path
        self.streams = streams
        self.saved_at = time.monotonic()  # not before the first SAVE_EVERY s of a build
        self.pending = False

    @classmethod
    def load(cls, root: Path) -> Manifest:
        path = root / "candles" / STATE_DIR / MANIFEST
        try:
            doc = orjson.loads(path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            doc = {}
        streams = doc.get("streams", {}) if doc.get("version") == BUILDER_VERSION else {}
        return cls(path, streams)

    def save_pending(self) -> None:
        if self.pending:
            self.save()

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
        self.save(soon=True)

    def save(self, soon: bool = False) -> None:
        """Write the manifest now, or with `soon` at most every SAVE_EVERY s (`save_pending` writes
        the rest): rewriting the whole manifest after each of hundreds of streams cost quadratic time.
        Published candle files the saved manifest does not list yet only make their date rebuilt."""
        if soon and time.monotonic() - self.saved_at < SAVE_EVERY:
            self.pending = True
            return
        self.saved_at, self.pending = time.monotonic(), False
        streams = {k: v for k, v in self.streams.items() if v["dates"]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_bytes(orjson.dumps({"version": BUILDER_VERSION, "streams": streams}))
        os.replace(tmp, self.path)


def repacked(built: set[Sig], sigs: list[Sig], paths: list[Path]) -> bool:
    """Whether the trade files `sigs` (at `paths`) hold exactly the files `built`, some merged by
    `recorder compact`: a merged file's footer names its inputs (nested when an input was itself
    merged), so only footers of files not in `built` are read. A built file that is still there
    beside a merged copy of it (a compaction caught between publish and delete) is not a re-pack."""
    covered: list[Sig] = []
    for sig, path in zip(sigs, paths, strict=True):
        if sig in built:
            covered.append(sig)
            continue
        try:
            lineage = read_lineage(path)
        except (OSError, pa.ArrowException):
            return False
        if not lineage or not _expand(lineage, built, covered):
            return False
    return len(covered) == len(built) and set(covered) == built


def _expand(lineage: Lineage, built: set[Sig], covered: list[Sig]) -> bool:
    """Add the built files a merged file came from to `covered`; False if it holds any other."""
    for name, size, mtime_ns, inner in lineage:
        sig = (name, size, mtime_ns)
        if sig in built:
            covered.append(sig)
        elif not inner or not _expand(inner, built, covered):
            return False
    return True


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
        a, b = to_us(stats.min), to_us(stats.max)
        lo, hi = (a, b) if lo is None or hi is None else (min(lo, a), max(hi, b))
    return None if lo is None or hi is None else (lo, hi)
