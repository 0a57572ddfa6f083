"""The one writer: buffers rows per (table, exchange, symbol), publishes Parquet files atomically.

Rows are appended as plain tuples (the cheapest thing the hot path can do) and turned into Arrow
columns only when a file is written. A file appears under its final `*.parquet` name only after it
is completely written and fsynced; before that it lives under a dot-name ending in `.tmp`.
Replacing a partition's files (compaction, candle rebuilds) goes through a marker file so that a
crash at any point leaves either the old files or the new one, never both for good.
"""

from __future__ import annotations

import array
import contextlib
import datetime
import itertools
import operator
import os
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recorder.model import DICTIONARY_COLUMNS, SCHEMAS
from recorder.storage.bookrows import ROW_BYTES as BOOK_ROW_BYTES
from recorder.storage.bookrows import BookRows
from recorder.storage.layout import is_temp, partition_dir, run_id, run_of, temp_path, unique_name

DAY_US = 86_400_000_000
ROW_GROUP_SIZE = 1_000_000
# Physical encodings only (the schemas are the contract's). Timestamps and sequence numbers rise
# almost monotonically and repeat within a message: DELTA_BINARY_PACKED stores them in a few bits and
# costs less CPU than dictionary + zstd on the live flush. Floats stay PLAIN (BYTE_STREAM_SPLIT was
# larger on tick-grid prices). Live files use zstd 3; `compact` rewrites with COMPACT_ZSTD_LEVEL.
DELTA_COLUMNS = ("ts", "recv_ts", "seq", "open_time")
ZSTD_LEVEL = 3
COMPACT_ZSTD_LEVEL = 9
MARKER_PREFIX = ".replace-"
# Bytes of Python objects one buffered row of each table holds, until a written batch of that table
# has been measured (`row_bytes`); deliberately on the high side.
ROW_BYTES_GUESS = {"book_updates": BOOK_ROW_BYTES, "book_snapshots": 6_000, "events": 800}
ROW_BYTES_DEFAULT = 400
SAMPLE_ROWS = 64


def row_bytes(rows: list[tuple]) -> float:
    """Bytes per row of Python objects that `rows` (a short run of consecutive rows) hold.

    Each object is counted once, so values rows share (one message's timestamps, a literal side)
    are spread over them; None, booleans and small ints are process-wide singletons and not
    counted. Plus the buffer list's pointer to each row. Costs microseconds per row: call it on a
    sample, off the hot path.
    """
    seen: set[int] = set()
    total = 0
    stack: list = list(rows)
    while stack:
        o = stack.pop()
        if o is None or o is True or o is False or (type(o) is int and -5 <= o <= 256):
            continue
        if id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, (tuple, list)):
            stack.extend(o)
    return total / max(1, len(rows)) + 8


def rows_to_table(table: str, rows: list[tuple] | BookRows) -> pa.Table:
    schema = SCHEMAS[table]
    if not rows:
        return schema.empty_table()
    if type(rows) is BookRows:
        return rows.to_table(schema)
    if set(map(len, rows)) != {len(schema)}:
        raise ValueError(f"{table} rows must have {len(schema)} values")
    return pa.Table.from_arrays([_column(rows, i, f.type) for i, f in enumerate(schema)], schema=schema)


def _column(rows: list[tuple], i: int, typ: pa.DataType) -> pa.Array:
    """Column `i` of `rows`, read one column at a time: no transposed copy of the whole batch (its
    tuples cost more time and memory than the Arrow columns)."""
    values = list(map(operator.itemgetter(i), rows))
    if typ.id in _FIXED:
        try:
            data = array.array(_FIXED[typ.id], values)
        except TypeError:  # a None among them (or a wrong type): the general way says which
            pass
        else:
            return pa.Array.from_buffers(typ, len(rows), [None, pa.py_buffer(data)])
    return to_arrow(values, typ)


def to_arrow(values: Sequence, typ: pa.DataType) -> pa.Array:
    """One column of Python values as an Arrow array of `typ`, built from its buffers.

    Why not `pa.array`: its first call imports pandas (pyarrow checks every input for a pandas
    object), ~45 MB of RSS the recorder never uses. Numbers go through `array.array` (one C loop,
    exact), strings through their UTF-8 bytes and offsets; None becomes a null. A type this does
    not know falls back to `pa.array`.
    """
    n = len(values)
    validity = None
    if None in values:  # by identity first: cheap for numbers and strings
        validity = _bitmap([v is not None for v in values])
    if typ.id in _FIXED:
        if validity is not None:
            values = [0 if v is None else v for v in values]
        data = array.array(_FIXED[typ.id], values)
        return pa.Array.from_buffers(typ, n, [validity, pa.py_buffer(data)])
    if typ == pa.bool_():
        if validity is not None:
            values = [False if v is None else v for v in values]
        return pa.Array.from_buffers(typ, n, [validity, _bitmap(values)])
    if typ == pa.string():
        if validity is None and n > 64:
            words = set(values)
            if len(words) <= 64:  # a side, a channel: look each value up in a small dictionary
                dictionary = sorted(words)
                index = {w: k for k, w in enumerate(dictionary)}
                indices = array.array("i", list(map(index.__getitem__, values)))
                return pc.take(to_arrow(dictionary, typ), pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(indices)]))
        encoded = [b"" if v is None else v.encode() for v in values]
        offsets = array.array("i", [0])
        offsets.extend(itertools.accumulate(map(len, encoded)))
        if offsets[-1] < 2**31:
            return pa.Array.from_buffers(typ, n, [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])
    if pa.types.is_list(typ) and pa.types.is_struct(typ.value_type) and validity is None:
        lengths = array.array("i", [0])
        lengths.extend(itertools.accumulate(map(len, values)))
        flat = [item for v in values for item in v]
        fields = [to_arrow([item[i] for item in flat], f.type) for i, f in enumerate(typ.value_type)]
        children = pa.StructArray.from_arrays(fields, fields=list(typ.value_type))
        return pa.ListArray.from_arrays(pa.Array.from_buffers(pa.int32(), n + 1, [None, pa.py_buffer(lengths)]), children)
    return pa.array(values, type=typ)


def _bitmap(flags: Sequence) -> pa.Buffer:
    """Arrow's little-endian bit-packed booleans."""
    return pa.py_buffer(np.packbits(np.array(flags, dtype=np.bool_), bitorder="little"))


# Arrow type id -> array.array typecode of the types stored as 8-byte numbers
_FIXED = {pa.int64().id: "q", pa.float64().id: "d", pa.timestamp("us").id: "q"}


def split_by_date(tbl: pa.Table) -> Iterable[tuple[str, pa.Table]]:
    """(YYYY-MM-DD, rows of that UTC date) for each date present, in the table's row order."""
    if tbl.num_rows == 0:
        return
    # Scalars are taken from arrays, never made from Python values: pa.scalar imports pandas.
    days = pc.divide(tbl.column("ts").cast(pa.int64()), _DAY_US)
    lo, hi = pc.min_max(days).values()
    if lo.as_py() == hi.as_py():
        yield _date_str(lo.as_py()), tbl
        return
    unique = pc.unique(days)
    for i, day in enumerate(unique.to_pylist()):
        yield _date_str(day), tbl.filter(pc.equal(days, unique[i]))


def _date_str(day: int) -> str:
    return (_EPOCH + datetime.timedelta(days=day)).isoformat()


_EPOCH = datetime.date(1970, 1, 1)
_DAY_US = to_arrow([DAY_US], pa.int64())[0]


def writer_options(columns: list[str], zstd_level: int = ZSTD_LEVEL) -> dict:
    """`pq.write_table` options for a table with `columns` (benchmarks/bench_disk.py measures them)."""
    return {
        "compression": "zstd",
        "compression_level": zstd_level,
        "use_dictionary": [c for c in DICTIONARY_COLUMNS if c in columns],
        "column_encoding": {c: "DELTA_BINARY_PACKED" for c in DELTA_COLUMNS if c in columns},
        "row_group_size": ROW_GROUP_SIZE,
    }


def write_parquet_atomic(tbl: pa.Table, final: Path, zstd_level: int = ZSTD_LEVEL) -> Path:
    """Write `tbl` to `final` so that no reader ever sees a partial file under that name."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(tbl, fh, **writer_options(tbl.column_names, zstd_level))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(final.parent)
    return final


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_partition_files(
    directory: Path, tbl: pa.Table, old: list[Path], zstd_level: int = ZSTD_LEVEL
) -> Path | None:
    """Publish `tbl` as one new file in `directory` and remove `old`, crash-safely.

    A marker naming the new file and the old ones is written first; `recover()` finishes or rolls
    back an interrupted replacement. Between the rename and the deletes a concurrent reader can
    see both (rows twice) for a few milliseconds.
    """
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / unique_name()
    marker = directory / f"{MARKER_PREFIX}{run_id()}-{uuid.uuid4().hex}.json"
    payload = {"new": final.name if tbl.num_rows else None, "old": [p.name for p in old]}
    marker.write_bytes(orjson.dumps(payload))
    _fsync_dir(directory)
    if tbl.num_rows:
        write_parquet_atomic(tbl, final, zstd_level)
    for p in old:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    marker.unlink()
    _fsync_dir(directory)
    return final if tbl.num_rows else None


def recover(data_dir: str | Path, alive: Callable[[str], bool] = lambda run: False) -> int:
    """Finish or roll back what crashed processes left: interrupted replacements and temp files.

    Leftovers of runs for which `alive(run)` holds belong to a live process and are left alone.
    Returns the number of things cleaned up.
    """
    cleaned = 0
    root = Path(data_dir)
    if not root.exists():
        return 0
    for dirpath, _dirs, files in os.walk(root):
        d = Path(dirpath)
        for name in sorted(files):
            if name.startswith(MARKER_PREFIX) and not alive(name.removeprefix(MARKER_PREFIX).split("-")[0]):
                cleaned += _finish_replacement(d / name)
        for name in files:
            p = d / name
            if is_temp(p) and not alive(run_of(name.lstrip(".")) or ""):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    cleaned += 1
    return cleaned


def _finish_replacement(marker: Path) -> int:
    try:
        payload = orjson.loads(marker.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        payload = {"new": "", "old": []}  # torn marker: written before anything else, so nothing happened
    new = payload.get("new")
    if new is None or (marker.parent / new).exists():
        # the new file is published (or there was none): the old ones must go
        for name in payload.get("old", []):
            with contextlib.suppress(FileNotFoundError):
                (marker.parent / name).unlink()
    marker.unlink(missing_ok=True)
    return 1


class ParquetSink:
    """Buffers rows in memory per (table, exchange, symbol) and writes them as Parquet files.

    `buffer()` hands out a plain list to append row tuples to (schema column order, times as int
    microseconds). `flush()` publishes everything buffered, one file per partition and date. The
    caller decides when (the collector flushes every `flush_interval` seconds, everything past
    `max_buffered_rows`, and the biggest buffers first past `max_buffered_bytes`). A failed write
    (disk full, permissions) puts the rows back so that nothing is lost, and reports through
    `on_error`.

    `buffered_bytes()` estimates the memory the buffers hold without touching a row: rows times a
    per-table size per row, measured on a sample of each batch written (`row_bytes`).
    """

    def __init__(self, data_dir: str | Path | None, on_error: Callable[[str], None] | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None  # None: discard rows
        self.on_error = on_error
        self._buffers: dict[tuple[str, str, str], list[tuple]] = {}
        self._lock = threading.Lock()  # flushes may run in a worker thread
        self.files_written = 0
        self.rows_written = 0
        self.written_by_key: Counter[tuple[str, str, str]] = Counter()  # rows per buffer, for the metrics
        self.row_bytes = {t: float(ROW_BYTES_GUESS.get(t, ROW_BYTES_DEFAULT)) for t in SCHEMAS}

    def buffer(self, table: str, exchange: str, symbol: str) -> list[tuple]:
        key = (table, exchange, symbol)
        buf = self._buffers.get(key)
        if buf is None:
            if table not in SCHEMAS:
                raise KeyError(f"unknown table {table!r}")
            buf = self._buffers[key] = BookRows() if table == "book_updates" else []  # type: ignore[assignment]
        return buf

    def pending_rows(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    def buffered_bytes(self) -> float:
        """Estimated bytes the buffered rows hold (rows × the table's measured bytes per row)."""
        size = self.row_bytes
        return sum(len(buf) * size[key[0]] for key, buf in self._buffers.items())

    def take(self, keys: Iterable[tuple[str, str, str]] | None = None) -> dict[tuple[str, str, str], list[tuple]]:
        """Swap out everything buffered, or the buffers of `keys` (cheap; call from the thread that appends)."""
        taken: dict[tuple[str, str, str], list[tuple]] = {}
        for key in self._buffers if keys is None else keys:
            buf = self._buffers[key]
            if buf:
                if type(buf) is BookRows:
                    taken[key] = buf.detach()  # type: ignore[assignment]
                else:
                    taken[key] = buf[:]
                    buf.clear()  # keep the list object (appenders hold it); clear() frees its capacity
        return taken

    def take_largest(self, keep_bytes: float) -> dict[tuple[str, str, str], list[tuple]]:
        """Swap out the biggest buffers until at most `keep_bytes` (estimated) stay buffered.

        Liquid markets go to disk early; the long tail waits for the regular flush instead of
        turning into thousands of tiny files.
        """
        size = self.row_bytes
        sized = sorted(((len(buf) * size[key[0]], key) for key, buf in self._buffers.items() if buf), reverse=True)
        left = sum(n for n, _ in sized)
        keys = []
        for n, key in sized:
            if left <= keep_bytes:
                break
            keys.append(key)
            left -= n
        return self.take(keys)

    def write(
        self,
        taken: dict[tuple[str, str, str], list[tuple]],
        source: Callable[[tuple[str, str, str]], dict[str, str]] | None = None,
    ) -> int | None:
        """Write what `take()` returned, all or nothing. Safe to run in a worker thread.

        `source(key)` gives key-value metadata stored in each file's footer (crash recovery uses it
        to know which inputs a file already contains). Returns the rows written, or None when a
        write failed: then the files of this call are removed again and every row is put back.
        """
        written: list[Path] = []
        rows_written = 0
        if self.data_dir is None:
            return sum(len(rows) for rows in taken.values())
        counters = (self.files_written, self.rows_written)
        measured: dict[str, tuple[int, float]] = {}
        with self._lock:
            try:
                for key, rows in taken.items():
                    table, exchange, symbol = key
                    if type(rows) is not BookRows and len(rows) > measured.get(table, (0, 0.0))[0]:
                        mid = max(0, len(rows) // 2 - SAMPLE_ROWS // 2)  # the biggest batch of each table
                        measured[table] = (len(rows), row_bytes(rows[mid : mid + SAMPLE_ROWS]))
                    tbl = rows_to_table(table, rows)
                    if source is not None:
                        tbl = tbl.replace_schema_metadata(source(key))
                    self.write_table(table, exchange, symbol, tbl, published=written)
                    rows_written += len(rows)
            except OSError as exc:
                for p in written:
                    with contextlib.suppress(OSError):
                        p.unlink()
                self.files_written, self.rows_written = counters
                for key, rows in taken.items():
                    self.buffer(*key)[:0] = rows  # back in front: order is kept
                msg = f"cannot write to {self.data_dir}: {exc.strerror or exc}"
                if self.on_error is None:
                    raise
                self.on_error(msg)
                return None
        for key, rows in taken.items():
            self.written_by_key[key] += len(rows)
        for table, (_, size) in measured.items():
            self.row_bytes[table] = size
        return rows_written

    def flush(self) -> int:
        return self.write(self.take()) or 0

    def write_table(
        self, table: str, exchange: str, symbol: str, tbl: pa.Table, published: list[Path] | None = None
    ) -> list[Path]:
        """Publish an Arrow table now (one file per UTC date of `ts`).

        Each published path is appended to `published` at once, so a caller can take back exactly
        what reached the disk when a later date's file fails.
        """
        paths = published if published is not None else []
        for date, part in split_by_date(tbl):
            final = partition_dir(self.data_dir, table, exchange, symbol, date) / unique_name()
            paths.append(write_parquet_atomic(part, final))
            self.files_written += 1
            self.rows_written += part.num_rows
        return paths
