"""DuckDB over the data dir: one view per table, plus `coverage` derived from `events`."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from recorder.lake import Skipped, TableFiles, check_data_dir, partition_files, scan_table
from recorder.model import SCHEMAS

HIVE_TYPES = "{'exchange': VARCHAR, 'symbol': VARCHAR, 'date': DATE}"

# When does a stream become valid, and what ends validity. Trades are valid from the subscription
# ack; a book only from the snapshot that (re)starts it, which the recorder logs as `resync`.
# An `error` on the trade stream (an undecodable frame may have carried trades) splits the
# interval at that instant; on the book it invalidates until the next resync. A silence verdict
# (`stale stream`, stamped at the last frame received; older recordings say `no data for`) ends
# both: nothing arrived after it.
COVERAGE_SQL = """
CREATE OR REPLACE VIEW coverage AS
WITH base AS (
    SELECT exchange, symbol, channel, ts, event, detail,
           -- same-instant events: starts before incidents before the end of a connection
           CASE event WHEN 'connect' THEN 0 WHEN 'subscribed' THEN 1 WHEN 'resync' THEN 1
                      WHEN 'gap' THEN 2 WHEN 'error' THEN 2 WHEN 'disconnect' THEN 4 ELSE 5 END AS ord,
           CASE WHEN (channel = 'trades' AND event = 'subscribed')
                  OR (channel = 'book' AND event = 'resync') THEN 1
                WHEN event IN ('connect', 'disconnect', 'gap', 'error', 'stop') THEN 0 END AS up,
           channel = 'trades' AND event = 'error'
               AND NOT coalesce(detail LIKE 'stale stream%' OR detail LIKE '%no data for%', false) AS splits
    FROM events
),
state AS (  -- `before`: was the stream valid just before this row (splitting errors do not change that)
    SELECT *, coalesce(last_value(CASE WHEN splits THEN NULL ELSE up END
                                  IGNORE NULLS) OVER (
                  PARTITION BY exchange, symbol, channel ORDER BY ts, ord
                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
    FROM base
),
marks AS (
    SELECT exchange, symbol, channel, ts, event, detail, ord, up FROM state
    UNION ALL  -- a trade-stream error splits a valid interval at that instant, nothing more
    SELECT exchange, symbol, channel, ts, 'continue', detail, 3, before
    FROM state WHERE splits AND before = 1
),
changes AS (
    SELECT *, lead(ts) OVER w AS next_ts, lead(event) OVER w AS next_event, lead(detail) OVER w AS next_detail
    FROM (
        SELECT *, lag(up) OVER (PARTITION BY exchange, symbol, channel ORDER BY ts, ord) AS p
        FROM marks WHERE up IS NOT NULL
    ) WHERE p IS DISTINCT FROM up
    WINDOW w AS (PARTITION BY exchange, symbol, channel ORDER BY ts, ord)
)
SELECT exchange, symbol, channel,
       ts AS start_ts,
       next_ts AS end_ts,
       event AS start_event,
       coalesce(next_event, 'open') AS end_event,
       next_detail AS end_detail,
       CASE
           WHEN next_event IS NULL THEN NULL
           WHEN next_event = 'gap' THEN 'sequence gap'
           WHEN next_event = 'disconnect' THEN 'disconnect'
           WHEN next_event = 'connect' THEN 'reconnect'
           WHEN next_event = 'stop' AND next_detail LIKE 'crash%' THEN 'crash'
           WHEN next_event = 'stop' THEN 'process stop'
           WHEN next_detail LIKE 'crossed%' THEN 'crossed book'
           WHEN next_detail LIKE 'stale stream%' OR next_detail LIKE '%no data for%' THEN 'stale stream'
           WHEN next_detail LIKE 'disk:%' THEN 'data dropped (disk)'
           WHEN next_detail LIKE 'out-of-order%' THEN 'out-of-order update'
           ELSE 'error'
       END AS end_cause
FROM changes WHERE up = 1
"""


# "Which minutes of BTC-USDT are complete?" in one query:
#     SELECT * FROM completeness('bitmart', 'BTC-USDT', 'trades')            -- 1-minute buckets
#     SELECT * FROM completeness('bitmart', 'BTC-USDT', 'book', INTERVAL 1 hour)
# A bucket is complete when one coverage interval spans all of it (an open interval, still being
# recorded, counts up to now).
COMPLETENESS_SQL = """
CREATE OR REPLACE MACRO completeness(ex, sym, chan, bucket := INTERVAL 1 minute) AS TABLE
WITH cov AS (
    SELECT start_ts, coalesce(end_ts, now()) AS end_ts FROM coverage
    WHERE exchange = ex AND symbol = sym AND channel = chan
),
buckets AS (
    SELECT unnest(generate_series(
        time_bucket(bucket, (SELECT min(start_ts) FROM cov)),
        (SELECT max(end_ts) FROM cov),
        bucket)) AS bucket_start
)
SELECT bucket_start, bucket_start + bucket AS bucket_end,
       EXISTS (SELECT 1 FROM cov WHERE cov.start_ts <= bucket_start AND cov.end_ts >= bucket_start + bucket)
           AS complete
FROM buckets
WHERE bucket_start < (SELECT max(end_ts) FROM cov)
ORDER BY bucket_start
"""


def _empty_select(table: str) -> str:
    cols = []
    for f in SCHEMAS[table]:
        cols.append(f"CAST(NULL AS {_duck_type(f.type)}) AS \"{f.name}\"")
    cols += ["CAST(NULL AS VARCHAR) AS exchange", "CAST(NULL AS VARCHAR) AS symbol", "CAST(NULL AS DATE) AS date"]
    return "SELECT " + ", ".join(cols) + " WHERE false"


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_list(t):
        return "STRUCT(price DOUBLE, amount DOUBLE)[]"
    return "VARCHAR"


def table_glob(data_dir: str | Path, table: str) -> str:
    return str(Path(data_dir) / table / "*" / "*" / "*" / "*.parquet")


def _sql_str(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _table_select(data_dir: Path, table: str, found: TableFiles) -> str:
    """The view's query: the model's columns (so a stray extra column changes nothing) over the
    glob when every file checked out, else over the list of the files that did."""
    if not found.files:
        return _empty_select(table)
    if found.skipped:
        source = "[" + ", ".join(_sql_str(p) for p in found.files) + "]"
    else:  # a glob keeps a long-lived connection right while compaction replaces files
        source = _sql_str(table_glob(data_dir, table))
    # every file has the model's columns and types (lake.schema_problem), so DuckDB can take the
    # schema from one file instead of merging all footers (union_by_name): ~30 % less bind time
    cols = ", ".join(f'"{f.name}"' for f in SCHEMAS[table])
    return (
        f"SELECT {cols}, exchange, symbol, date FROM read_parquet({source}, hive_partitioning = true, "
        f"hive_types = {HIVE_TYPES}, hive_types_autocast = false)"
    )


def create_views(con: duckdb.DuckDBPyConnection, data_dir: str | Path, warn: bool = True) -> list[Skipped]:
    """One view per table over the files that checked out; returns what was skipped (with `warn`,
    each one is also logged as a warning naming the path)."""
    root = check_data_dir(data_dir)
    skipped: list[Skipped] = []
    for table in SCHEMAS:
        found = scan_table(root, table) if warn else partition_files(root, table)
        skipped += found.skipped
        con.execute(f"CREATE OR REPLACE VIEW {table} AS {_table_select(root, table, found)}")
    con.execute(COVERAGE_SQL)
    con.execute(COMPLETENESS_SQL)
    return skipped


def open_views(data_dir: str | Path = "data", warn: bool = True) -> tuple[duckdb.DuckDBPyConnection, list[Skipped]]:
    """`connect`, plus the files and directories that were skipped."""
    root = check_data_dir(data_dir)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con, create_views(con, root, warn)


def connect(data_dir: str | Path = "data") -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per table over `data_dir` (UTC session).

    A missing data dir (or a path that is a file) is an error, not an empty recording. Damaged
    files and stray directories are left out of their table, each with a logged warning.
    """
    return open_views(data_dir)[0]
