"""Exact text for query results: `recorder sql --format csv|json|table`.

Values never pass through pandas or a float they did not start as: DECIMAL keeps its digits,
HUGEINT and integer sums stay integers of any size, DOUBLE prints its shortest round-trip repr.
Times are rendered by DuckDB in the (locked) UTC session: TIMESTAMPTZ as ISO-8601 with `+00:00`,
TIMESTAMP without an offset, nanoseconds kept, `infinity` as itself. NULL is an empty CSV field
(an empty string is `""`) and JSON `null`; NaN and infinities are `nan`/`inf`/`-inf` in CSV and
the strings "NaN"/"Infinity"/"-Infinity" in JSON (JSON numbers cannot hold them). Nested values
(LIST, STRUCT, MAP, ARRAY) are DuckDB's own JSON (`to_json`), embedded as JSON in `json` output.

`console()` is the rich Console every command prints tables and lines with: whole cells and
unbroken lines when the output is not a terminal.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, TextIO

import orjson
from rich.console import Console

if TYPE_CHECKING:  # `recorder run` prints through console() below: DuckDB is not imported for it
    import duckdb

WIDE = 100_000  # columns a console assumes when it writes to no terminal: nothing is wrapped or cut
BATCH = 10_000  # rows fetched at a time: output streams, memory stays flat
_ISO = "%Y-%m-%dT%H:%M:%S.%f"

# How DuckDB renders a column before it reaches Python, by type id; `{c}` is the quoted column.
_IN_DUCKDB = {
    "timestamp with time zone": f"CASE WHEN isfinite({{c}}) THEN strftime({{c}}, '{_ISO}+00:00') "
    "ELSE CAST({c} AS VARCHAR) END",
    "timestamp": f"CASE WHEN isfinite({{c}}) THEN strftime({{c}}, '{_ISO}') ELSE CAST({{c}} AS VARCHAR) END",
    "timestamp_ms": f"strftime({{c}}, '{_ISO}')",
    "timestamp_s": f"strftime({{c}}, '{_ISO}')",
    "timestamp_ns": "CASE WHEN isfinite({c}) THEN strftime({c}, '%Y-%m-%dT%H:%M:%S.%n') "
    "ELSE CAST({c} AS VARCHAR) END",
    "list": "CAST(to_json({c}) AS VARCHAR)",
    "struct": "CAST(to_json({c}) AS VARCHAR)",
    "map": "CAST(to_json({c}) AS VARCHAR)",
    "array": "CAST(to_json({c}) AS VARCHAR)",
    "union": "CAST(to_json({c}) AS VARCHAR)",
}
_NESTED = {"list", "struct", "map", "array", "union"}
_NUMBER_TEXT = {"float"}  # rendered by DuckDB (shortest float32 repr), still a number in JSON
_TEXT_TYPES = {
    "varchar",
    "date",
    "time",
    "time with time zone",
    "time_ns",
    "interval",
    "uuid",
    "blob",
    "bit",
    "enum",
}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def prepare(rel: duckdb.DuckDBPyRelation) -> tuple[duckdb.DuckDBPyRelation, list[str]]:
    """The relation with every column DuckDB must render turned into text, and each column's kind:
    `number`, `text`, `json` (nested, already JSON) or `value` (a Python value to format here)."""
    exprs, kinds = [], []
    for i, (name, typ) in enumerate(zip(rel.columns, rel.types, strict=True), start=1):
        # columns by position: a result may repeat a name (`SELECT 1 AS a, 2 AS a`, joins)
        tid, col, alias = typ.id, f"#{i}", _quote(name)
        if tid in _IN_DUCKDB:
            exprs.append(_IN_DUCKDB[tid].format(c=col) + f" AS {alias}")
            kinds.append("json" if tid in _NESTED else "text")
        elif tid in _NUMBER_TEXT:
            exprs.append(f"CAST({col} AS VARCHAR) AS {alias}")
            kinds.append("number")
        elif tid in _TEXT_TYPES or tid.startswith("enum"):
            exprs.append(f"CAST({col} AS VARCHAR) AS {alias}")
            kinds.append("text")
        else:
            exprs.append(f"{col} AS {alias}")
            kinds.append("value")
    return rel.project(", ".join(exprs)), kinds


def rows(con: duckdb.DuckDBPyConnection, rel: duckdb.DuckDBPyRelation) -> Iterator[tuple]:
    """Result rows, fetched in batches (a relation keeps no result between fetches: run its SQL
    once on a cursor of the same database)."""
    cur = con.cursor()
    try:
        cur.execute(rel.sql_query())
        while batch := cur.fetchmany(BATCH):
            yield from batch
    finally:
        cur.close()


def _number(v: object) -> str:
    """Exact text of a Python number (None for NaN and infinities)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, Decimal):
        return format(v, "f") if v.is_finite() else None
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else None
    return None


_SPECIAL_CSV = {"nan": "nan", "inf": "inf", "-inf": "-inf", "infinity": "inf", "-infinity": "-inf"}
_SPECIAL_JSON = {
    "nan": '"NaN"',
    "inf": '"Infinity"',
    "-inf": '"-Infinity"',
    "infinity": '"Infinity"',
    "-infinity": '"-Infinity"',
}


def csv_text(v: object, kind: str) -> str:
    """A value as CSV text before quoting ('' for NULL)."""
    if v is None:
        return ""
    if kind in ("text", "json"):
        return str(v)
    if kind == "number":
        return _SPECIAL_CSV.get(str(v).lower(), str(v))
    n = _number(v)
    if n is not None:
        return n
    if isinstance(v, float | Decimal):
        return _SPECIAL_CSV[str(v).lower().replace("infinity", "inf")]
    return str(v)


class _Raw(str):
    """A number exactly as DuckDB wrote it."""


def _nested_json(text: str) -> str:
    """DuckDB's `to_json` writes NaN and infinities as bare tokens, which JSON has not: re-emit
    them as strings, every number keeping its digits."""
    if "NaN" not in text and "Infinity" not in text:
        return text
    value = json.loads(text, parse_float=_Raw, parse_int=_Raw, parse_constant=str)
    return _dump(value)


def _dump(v: object) -> str:
    if isinstance(v, _Raw):
        return str(v)
    if isinstance(v, dict):
        return "{" + ",".join(orjson.dumps(k).decode() + ":" + _dump(x) for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_dump(x) for x in v) + "]"
    return orjson.dumps(v).decode()  # str, bool, None


def json_text(v: object, kind: str) -> str:
    if v is None:
        return "null"
    if kind == "json":
        return _nested_json(str(v))
    if kind == "text":
        return orjson.dumps(str(v)).decode()
    if kind == "number":
        return _SPECIAL_JSON.get(str(v).lower(), str(v))
    n = _number(v)
    if n is not None:
        return n
    if isinstance(v, float | Decimal):
        return _SPECIAL_JSON[str(v).lower().replace("infinity", "inf")]
    return orjson.dumps(str(v)).decode()


def _csv_field(text: str, is_null: bool) -> str:
    if is_null:
        return ""
    if text == "" or any(ch in text for ch in ',"\r\n') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def write_csv(con: duckdb.DuckDBPyConnection, rel: duckdb.DuckDBPyRelation, out: TextIO) -> int:
    """Header and every row as RFC 4180 CSV; returns the row count."""
    rel, kinds = prepare(rel)
    out.write(",".join(_csv_field(c, False) for c in rel.columns) + "\n")
    n = 0
    for r in rows(con, rel):
        out.write(
            ",".join(_csv_field(csv_text(v, k), v is None) for v, k in zip(r, kinds, strict=True)) + "\n"
        )
        n += 1
    return n


def write_json(con: duckdb.DuckDBPyConnection, rel: duckdb.DuckDBPyRelation, out: TextIO) -> int:
    """A JSON array of objects, one per row, streamed; returns the row count."""
    rel, kinds = prepare(rel)
    keys = [orjson.dumps(c).decode() + ":" for c in rel.columns]
    n = 0
    out.write("[")
    for r in rows(con, rel):
        body = ",".join(key + json_text(v, k) for key, v, k in zip(keys, r, kinds, strict=True))
        out.write(("," if n else "") + "{" + body + "}")
        n += 1
    out.write("]\n")
    return n


def table_rows(
    con: duckdb.DuckDBPyConnection, rel: duckdb.DuckDBPyRelation, max_rows: int
) -> tuple[list[str], list[list[str]], bool]:
    """Column names, up to `max_rows` rows as text (NULL as ''), and whether more rows were cut."""
    rel, kinds = prepare(rel)
    got = [
        [csv_text(v, k) for v, k in zip(r, kinds, strict=True)] for r in rows(con, rel.limit(max_rows + 1))
    ]
    return rel.columns, got[:max_rows], len(got) > max_rows


def console(stderr: bool = False, file: TextIO | None = None) -> Console:
    """A rich Console for the recorder's own output. On a terminal, rich's defaults. Anywhere else
    (a pipe, a file, systemd, Docker) rich would assume 80 columns and cut table cells (`bitma…`)
    or break lines mid-URL: this one is as wide as any line and never soft-wraps, so each line and
    each cell comes out whole (and, as rich does off a terminal, without colour codes)."""
    stream = file if file is not None else (sys.stderr if stderr else sys.stdout)
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream: treat it as no terminal
        tty = False
    if tty:
        return Console(stderr=stderr, file=file)
    return Console(stderr=stderr, file=file, width=WIDE, soft_wrap=True, color_system=None)
