"""`recorder compact`: merge a finished date's small files into one file per partition.

Rows are never lost: the merged file is published before the inputs are removed, through the
sink's crash-safe replacement (a marker file lets `recover()` finish or roll back). Book tables keep
arrival order (replay depends on it); other tables are sorted by exchange time, ties in arrival
order.

A merged file names its inputs in its footer (`recorder.compacted_from`: name, size and mtime of
each, nested when an input was itself merged), so that `candles build`, whose manifest remembers
the trade files it built from, sees that compaction only re-packed rows it has already built and
rebuilds nothing. `candles` is the candle builder's own table (its files are grouped per date for
cheap appends): compaction leaves it alone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recorder.errors import RecorderError
from recorder.lake import Skipped, check_files, partition_problem
from recorder.model import OPTIONAL_COLUMNS, SCHEMAS
from recorder.storage.checkpoint import merge_sources, read_sources, run_is_alive, sources_metadata
from recorder.storage.sink import COMPACT_ZSTD_LEVEL, recover, replace_partition_files

ARRIVAL_ORDER = {"book_updates", "book_snapshots", "events"}
DERIVED = {"candles"}  # managed by the candle builder, never compacted
LINEAGE_KEY = "recorder.compacted_from"
Lineage = list[list]  # [[name, size, mtime_ns, Lineage | None], ...]: a merged file's inputs


@dataclass
class CompactResult:
    partitions: int = 0
    files_in: int = 0
    files_out: int = 0
    rows: int = 0
    skipped: list[Skipped] = field(default_factory=list)  # damaged files left in place, untouched
    today: str = ""  # the UTC date still being written
    today_left: int = 0  # partitions of `today` (or later) with files to merge, left alone: no --include-today

    def passed_over(self, d: str, date: str | None, include_today: bool, files: int) -> bool:
        """Whether a partition of date `d` holding `files` files is not for this run (counted if it
        is today's and has something to merge)."""
        if date:
            return d != date
        if d >= self.today and not include_today:
            self.today_left += files > 1
            return True
        return False


def sort_for_storage(table: str, tbl: pa.Table) -> pa.Table:
    keys = ["recv_ts"] if table in ARRIVAL_ORDER else ["ts", "recv_ts"]
    if table in ("candles", "exchange_candles"):
        keys = ["interval", "open_time"]
    idx = pa.array(range(tbl.num_rows), pa.int64())  # explicit tie-breaker: file order
    keyed = tbl.append_column("__row", idx)
    order = pc.sort_indices(keyed, sort_keys=[(k, "ascending") for k in keys] + [("__row", "ascending")])
    return tbl.take(order)


def compact_partition(directory: Path, table: str, skipped: list[Skipped] | None = None) -> tuple[int, int]:
    """Merge the readable `*.parquet` files of one partition directory. Returns (files in, rows).

    A damaged file (unreadable, wrong schema: see `recorder.lake`) is left where it is, untouched and
    reported in `skipped`: compaction must neither fail on it nor fold it into good data."""
    files = []
    for path, problem in check_files(table, [str(f) for f in sorted(directory.glob("*.parquet"))]).items():
        if problem is None:
            files.append(Path(path))
        elif skipped is not None:
            skipped.append(Skipped(table, path, problem))
    if len(files) <= 1:
        return 0, 0
    inputs = [[f.name, *_stat(f), read_lineage(f)] for f in files]  # before reading: as listed
    parts = [read_conformed(f, table) for f in files]
    merged = sort_for_storage(table, pa.concat_tables(parts))
    meta = {LINEAGE_KEY: orjson.dumps(inputs).decode()}
    sources = merge_sources([read_sources(f) for f in files])
    if sources:  # keep crash recovery's knowledge of what these rows already cover
        meta.update(sources_metadata(sources))
    replace_partition_files(directory, merged.replace_schema_metadata(meta), files, COMPACT_ZSTD_LEVEL)
    return len(files), merged.num_rows


def read_conformed(path: Path, table: str) -> pa.Table:
    """A file's rows with the model's schema: an optional column the file predates
    (`model.OPTIONAL_COLUMNS`, e.g. `events.cause`) is appended as nulls, so files written before
    and after it concatenate (and the merged file has it)."""
    schema = SCHEMAS[table]
    have = set(pq.read_schema(path).names)
    missing = [f for f in schema if f.name not in have and f.name in OPTIONAL_COLUMNS.get(table, ())]
    present = pa.schema([f for f in schema if f not in missing])
    tbl = pq.read_table(path, schema=present)
    for f in missing:
        tbl = tbl.append_column(f, pa.nulls(tbl.num_rows, f.type))
    return tbl.select(schema.names).cast(schema)


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def read_lineage(path: Path) -> Lineage | None:
    """The inputs a merged file was compacted from (None for a file written by a recorder)."""
    raw = (pq.read_metadata(path).metadata or {}).get(LINEAGE_KEY.encode())
    return orjson.loads(raw) if raw else None


def compact_data_dir(
    data_dir: str | Path,
    tables: list[str] | None = None,
    date: str | None = None,
    include_today: bool = False,
) -> CompactResult:
    root = Path(data_dir)
    recover(root, alive=lambda run: run_is_alive(root, run))
    res = CompactResult(today=dt.datetime.now(dt.UTC).date().isoformat())
    unknown = [t for t in tables or [] if t not in SCHEMAS or t in DERIVED]
    if unknown:
        choices = ", ".join(t for t in SCHEMAS if t not in DERIVED)
        raise RecorderError(f"cannot compact table(s) {', '.join(unknown)}; choose from {choices}")
    for table in tables or [t for t in SCHEMAS if t not in DERIVED]:
        for part in sorted((root / table).glob("exchange=*/symbol=*/date=*")):
            if (problem := partition_problem("date", part.name)) is not None:
                res.skipped.append(Skipped(table, str(part), problem))
                continue
            if res.passed_over(part.name.removeprefix("date="), date, include_today,
                               sum(1 for _ in part.glob("*.parquet"))):
                continue
            n, rows = compact_partition(part, table, res.skipped)
            if n:
                res.partitions += 1
                res.files_in += n
                res.files_out += 1
                res.rows += rows
    return res
