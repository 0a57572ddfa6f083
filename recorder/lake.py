"""What a data dir holds that readers can trust: partition directories and readable Parquet files.

One damaged file must not break every query. Readers (the DuckDB views, `recorder status`, the
candle builder) list a table's files here: a partition directory whose name does not parse
(`date=notadate`, a directory without `key=value`) and a file that is not readable Parquet with the
table's columns (truncated, a wrong type such as `price` as a string) are skipped and reported,
never merged. Checking a file reads its footer (~0.1 ms); the verdict is remembered per process by
(path, size, mtime), so a long-lived process pays for each file once.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recorder.checks import parse_utc_date
from recorder.errors import RecorderError
from recorder.model import OPTIONAL_COLUMNS, SCHEMAS

log = logging.getLogger("recorder.lake")

PARTITION_KEYS = ("exchange", "symbol", "date")
_VERDICTS: dict[tuple[str, str, int, int], str | None] = {}  # (table, path, size, mtime_ns) -> problem


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file or directory a reader left out, and why."""

    table: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"skipped {self.path}: {self.reason}"


@dataclass
class TableFiles:
    """A table's usable files (sorted by path) and what was skipped."""

    files: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    exact: bool = False  # a glob of the directory would not be these files (a bucket's live marker)


def check_data_dir(data_dir: str | Path) -> Path:
    """The data dir as a Path; a clear error if it is missing or not a directory (a mistyped path
    must not look like an empty recording)."""
    root = Path(data_dir)
    refuse_remote(data_dir)
    if not root.exists():
        raise RecorderError(f"no data dir at {root} (it does not exist)")
    if not root.is_dir():
        raise RecorderError(f"data dir {root} is not a directory")
    with os.scandir(root) as it:
        names = [e.name for e in it]
    if not _holds_recorder_data(names) and any(_foreign(n) for n in names):
        inner = [n for n in sorted(names)[:200] if _holds_recorder_data(_listing(root / n))]
        raise RecorderError(_not_a_data_dir(str(root), [str(root / n) for n in inner]))
    return root


def _holds_recorder_data(names: Iterable[str]) -> bool:
    """Whether a directory listing has any of the recorder's own entries (a table, raw logs, run
    state, a bucket's markers). An empty directory is an empty data dir; a directory with other
    things only is not one (a path one level off must not look like an empty recording)."""
    return not {os.path.basename(str(n).rstrip("/")) for n in names}.isdisjoint(_DATA_DIR_ENTRIES)


def _listing(path: Path) -> list[str]:
    """A subdirectory's entries; nothing for a file or one that cannot be read (a hint, never an error)."""
    try:
        return os.listdir(path)
    except OSError:
        return []


def _foreign(name: str) -> bool:
    """An entry that makes a directory without recorder entries something else than an empty data
    dir (hidden files such as .DS_Store and a fresh volume's lost+found do not)."""
    return not name.startswith(".") and name != "lost+found"


def _not_a_data_dir(where: str, inner: list[str]) -> str:
    hint = f": did you mean {inner[0]}?" if len(inner) == 1 else (f": data dirs inside: {', '.join(inner[:3])}" if inner else "")
    return f"{where} is not a data dir (none of trades/, book_updates/, events/, raw/ ... in it){hint}"


def refuse_remote(data_dir: str | Path) -> None:
    """A one-line error for a URL data dir given to a command that writes or reads it only as a
    local directory (it must not become a local directory named `s3:`)."""
    if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]+:/", str(data_dir)):  # Path() folds s3://b into s3:/b
        shown = re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]+):/+", r"\1://", str(data_dir))  # as the user wrote it
        raise RecorderError(
            f"data dir {shown}: this command does not support s3:// data dirs yet "
            "(run, sql, status, compact, candles build/verify and recorder.connect() do)"
        )


def partition_problem(key: str, name: str) -> str | None:
    """Why a directory name is not a valid `key=value` partition of that level (None if it is)."""
    prefix = f"{key}="
    if not name.startswith(prefix) or len(name) == len(prefix):
        return f"not a partition directory (expected {key}=...)"
    if key == "date" and parse_utc_date(value := name[len(prefix) :]) is None:
        return f"partition date {value!r} is not a date (YYYY-MM-DD)"
    return None


def _same_type(got: pa.DataType, want: pa.DataType) -> bool:
    """Type equality up to dictionary encoding, nullability and list item names."""
    if pa.types.is_dictionary(got):
        got = got.value_type
    if pa.types.is_list(want):
        return (pa.types.is_list(got) or pa.types.is_large_list(got)) and _same_type(
            got.value_type, want.value_type
        )
    if pa.types.is_struct(want):
        if not pa.types.is_struct(got) or got.num_fields != want.num_fields:
            return False
        return all(
            got.field(i).name == want.field(i).name and _same_type(got.field(i).type, want.field(i).type)
            for i in range(want.num_fields)
        )
    return got.equals(want)


def schema_problem(schema: pa.Schema, table: str) -> str | None:
    """Why a file's schema cannot be part of `table` (None if it can): every column of the model
    with the model's type (a column added since, `OPTIONAL_COLUMNS`, may be missing: readers take
    it as null), and no partition key inside the file."""
    optional = OPTIONAL_COLUMNS.get(table, ())
    for f in SCHEMAS[table]:
        i = schema.get_field_index(f.name)
        if i < 0:
            if f.name in optional:
                continue
            return f"wrong schema: no column {f.name!r}"
        got = schema.field(i).type
        if not _same_type(got, f.type):
            return f"wrong schema: column {f.name!r} is {got}, expected {f.type}"
    inside = [k for k in PARTITION_KEYS if schema.get_field_index(k) >= 0]
    if inside:
        return f"wrong schema: partition column {inside[0]!r} inside the file"
    return None


def _file_problem(table: str, path: str) -> str | None:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:  # truncated, not Parquet, unreadable
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"not readable Parquet ({first})"
    return schema_problem(schema, table)


def check_files(table: str, paths: list[str]) -> dict[str, str | None]:
    """The problem with each file (None: usable), reading only footers not seen before."""
    out: dict[str, str | None] = {}
    todo: list[tuple[str, tuple[str, str, int, int]]] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as exc:
            out[p] = f"cannot stat ({exc.strerror})"
            continue
        key = (table, p, st.st_size, st.st_mtime_ns)
        if key in _VERDICTS:
            out[p] = _VERDICTS[key]
        else:
            todo.append((p, key))
    # one thread: most of a footer read is Python-side work under the GIL (a pool measured slower)
    verdicts = [_file_problem(table, p) for p, _ in todo]
    for (p, key), verdict in zip(todo, verdicts, strict=True):
        _VERDICTS[key] = verdict
        out[p] = verdict
    return out


def _subdirs(path: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted((e for e in it if e.is_dir()), key=lambda e: e.name)
    except OSError:
        return []


def _parquet_entries(path: str) -> list[os.DirEntry]:
    # DuckDB's `*.parquet` glob matches dot-names too; the sink's temporary names end in `.tmp`
    try:
        with os.scandir(path) as it:
            return sorted((e for e in it if e.name.endswith(".parquet")), key=lambda e: e.name)
    except OSError:
        return []


def _holds_parquet(path: str, depth: int) -> bool:
    """Would the views' `*/*/*/*.parquet` glob find a file `depth` levels below `path`?"""
    if depth == 0:
        return bool(_parquet_entries(path))
    return any(_holds_parquet(d.path, depth - 1) for d in _subdirs(path))


def partition_files(
    root: Path, table: str, exchange: str | None = None, symbol: str | None = None
) -> TableFiles:
    """Every Parquet file of `table` under valid partition directories (optionally one exchange /
    symbol), with skipped directories and files; nothing is logged here (see `scan_table`)."""
    out = TableFiles()
    candidates: list[str] = []
    wanted = (exchange, symbol, None)

    def walk(path: str, level: int) -> None:
        for d in _subdirs(path):
            problem = partition_problem(PARTITION_KEYS[level], d.name)
            if problem is not None:
                # an empty dot-dir (the candle builder's `.state`) is none of the readers' business
                if not d.name.startswith(".") or _holds_parquet(d.path, 2 - level):
                    out.skipped.append(Skipped(table, d.path, problem))
                continue
            if wanted[level] is not None and d.name != f"{PARTITION_KEYS[level]}={wanted[level]}":
                continue
            if level < 2:
                walk(d.path, level + 1)
                continue
            for e in _parquet_entries(d.path):
                if e.is_file():
                    candidates.append(e.path)
                else:
                    out.skipped.append(Skipped(table, e.path, "not a regular file"))

    walk(str(root / table), 0)
    for p, problem in check_files(table, candidates).items():
        if problem is None:
            out.files.append(Path(p))
        else:
            out.skipped.append(Skipped(table, p, problem))
    out.files.sort()
    return out


def scan_table(root: Path, table: str, exchange: str | None = None, symbol: str | None = None) -> TableFiles:
    """`partition_files`, with one warning per skipped file or directory (it names the path)."""
    found = partition_files(root, table, exchange, symbol)
    for s in found.skipped:
        log.warning("%s: %s", table, s)
    return found


# --- a bucket as the data dir (`s3://bucket/prefix`) -------------------------------------------


def s3_filesystem(endpoint: str | None = None):
    """An fsspec S3 filesystem (s3fs) for DuckDB's `register_filesystem`: DuckDB reads the bucket
    through Python, so no extension (httpfs) is downloaded, and nothing is needed offline.
    Endpoint and credentials: the standard AWS environment/config (`AWS_ENDPOINT_URL` ...)."""
    import s3fs  # heavy: only for s3:// data dirs

    kwargs = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    return s3fs.S3FileSystem(skip_instance_cache=True, **kwargs)


def check_remote(url, fs) -> None:
    """The bucket is usable (one-line errors) and holds something under the prefix: a mistyped
    prefix must not look like an empty recording."""
    from recorder.storage.objectstore import check_bucket

    check_bucket(url)
    try:
        found = fs.ls(url.path, detail=False)
    except FileNotFoundError:
        found = []
    if not found:
        raise RecorderError(f"no data dir at {url} (nothing under that prefix)")
    if not _holds_recorder_data(found):
        inner = []
        for path in sorted(found)[:50]:
            try:
                if _holds_recorder_data(fs.ls(path, detail=False)):
                    inner.append(f"s3://{path.rstrip('/')}")
            except (FileNotFoundError, NotADirectoryError):
                continue
        raise RecorderError(_not_a_data_dir(str(url), inner))


MARKERS_DIR = ".markers"  # a bucket's replacement markers (see recorder.storage.remote)
_DATA_DIR_ENTRIES = {*SCHEMAS, "raw", ".runs", MARKERS_DIR}


def marker_hidden(markers: Iterable[dict], present: set[str]) -> set[str]:
    """The keys that live replacement markers hide from readers, among `present` (keys relative to
    the data dir): a marker's inputs once every one of its outputs is there (the old objects are
    being deleted), else its outputs that are there (they are being published, or were when the
    process died). Either way no row is seen twice or missed."""
    hidden: set[str] = set()
    for m in markers:
        outputs = set(m.get("outputs", []))
        if outputs <= present:
            hidden.update(m.get("inputs", []))
        else:
            hidden |= outputs & present
    return hidden


def remote_markers(fs, url) -> list[dict]:
    """The live replacement markers of a bucket data dir (a torn or vanished one is none)."""
    import orjson

    try:
        keys = sorted(fs.find(f"{url.path}/{MARKERS_DIR}"))
    except FileNotFoundError:
        return []
    out = []
    for key in keys:
        try:
            out.append(orjson.loads(fs.cat_file(key)))
        except (FileNotFoundError, orjson.JSONDecodeError):
            continue
    return out


def remote_partition_files(fs, url, table: str) -> TableFiles:
    """`partition_files` for a bucket: the table's `*.parquet` objects under valid partition
    directories (one listing), less what a live replacement marker hides (`marker_hidden`; listed
    after the objects, so a replacement finished in between hides nothing it should not). Files
    are `s3://` URLs (str). Footers are not checked here (that would read every object at each
    connect): objects are only ever published whole and verified."""
    out = TableFiles()
    base = f"{url.path}/{table}"
    try:
        keys = sorted(fs.find(base))
    except FileNotFoundError:
        keys = []
    root = f"{url.path}/"
    hidden = marker_hidden(remote_markers(fs, url), {k[len(root) :] for k in keys})
    if hidden:
        out.exact = True
        keys = [k for k in keys if k[len(root) :] not in hidden]
    bad: set[str] = set()
    for key in keys:
        parts = key[len(base) + 1 :].split("/")
        name = parts[-1]
        if not name.endswith(".parquet") or name.startswith("."):
            continue
        if len(parts) != 4:
            where = "/".join(parts[:-1])
            if where not in bad:
                bad.add(where)
                out.skipped.append(Skipped(table, f"s3://{base}/{where}", "not a partition directory"))
            continue
        problem = next(
            (p for k, d in zip(PARTITION_KEYS, parts[:3], strict=True) if (p := partition_problem(k, d))),
            None,
        )
        if problem is not None:
            if "/".join(parts[:3]) not in bad:
                bad.add("/".join(parts[:3]))
                out.skipped.append(Skipped(table, f"s3://{base}/{'/'.join(parts[:3])}", problem))
            continue
        out.files.append(f"s3://{key}")  # type: ignore[arg-type]
    return out
