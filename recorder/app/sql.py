"""`recorder sql`: DuckDB SQL over the data dir's views, read-only, printed exactly."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import duckdb
from rich.table import Table
from rich.text import Text

from recorder import output
from recorder.errors import RecorderError
from recorder.lake import check_data_dir
from recorder.query import open_views
from recorder.sqlguard import lock_down, vet
from recorder.storage.layout import work_dir
from recorder.storage.objectstore import parse_s3


def run_sql(query: str, data_dir: Path, fmt: str, max_rows: int, write: bool = False) -> None:
    """Run SQL over the data dir's views, read-only (see `recorder.sqlguard`); exact output."""
    url = parse_s3(data_dir)
    if url is None:
        data_dir = Path(os.path.abspath(check_data_dir(data_dir)))  # views and allowed paths agree
    targets = vet(query, data_dir, write)  # refused statements never reach DuckDB
    with work_dir("sql") as spill:
        con, _ = open_views(url or data_dir)
        try:
            lock_down(con, url or data_dir, targets, Path(spill))
            rel = con.sql(query)
            if rel is None:
                return
            if fmt == "csv":
                output.write_csv(con, rel, sys.stdout)
            elif fmt == "json":
                output.write_json(con, rel, sys.stdout)
            else:
                _print_table(con, rel, max_rows)
        except duckdb.Error as exc:
            raise RecorderError(str(exc).splitlines()[0]) from None
        finally:
            con.close()


def _print_table(con: duckdb.DuckDBPyConnection, rel: duckdb.DuckDBPyRelation, max_rows: int) -> None:
    cols, rows, cut = output.table_rows(con, rel, max_rows)
    t = Table(show_lines=False)
    for c in cols:
        t.add_column(Text(c))
    for r in rows:
        t.add_row(*(Text(v) for v in r))  # Text: a value like "[red]" is data, not rich markup
    with contextlib.suppress(BrokenPipeError):
        output.console().print(t)  # off a terminal: whole cells
    if cut:  # never drop rows silently
        output.console(stderr=True).print(
            f"showing the first {max_rows:,} rows; more were cut (raise --max-rows, or use --format csv/json)",
            highlight=False,
            soft_wrap=True,
        )
