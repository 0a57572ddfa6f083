"""Other engines read the lake unchanged: a small lake recorded by the real recorder (CLI, against the
simulators: bitmart spot, bitmart_perpetual, built candles and backfilled exchange candles, plus one
`events` file in the schema from before the `cause` column; spot trades and book updates merged by
`recorder compact`) is read by pyarrow, polars and Spark
(local mode), and every table agrees with DuckDB (`recorder.connect`): the rows of each
(exchange, symbol, date) partition, the partition keys taken from the path, `ts` as UTC instants,
the first level of every book snapshot, and `cause` NULL exactly on the old file's rows.

The README's "Reading the lake with other engines" shows the readers below (`read_pyarrow`,
`read_polars`, `read_spark`), and its code block is run as written. One Spark session (local[1], UI
off, bound to 127.0.0.1) starts while the recorders run. Without a Java runtime the Spark part is
skipped (after the others passed); under CI=1 any other reason Spark cannot run fails the test."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from recorder import connect
from recorder.model import SCHEMAS

from .processes import RECORDER

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")

TABLES = list(SCHEMAS)  # trades, book_updates, book_snapshots, events, derivative_ticker, exchange_candles, candles
SPOT = ["BTC-USDT", "ETH-USDT"]
COMPACTED = ("trades", "book_updates")  # merged by `recorder compact` before the engines read them
OLD_EVENTS_FILE = "00000000T000000.000000-old-cause-less.parquet"

# --- the readers (the README shows these) -------------------------------------------------------

# pyarrow: declare the partition types (the directory names are strings, `date` is a date) and the
# table's full schema, so files written before a column existed read as NULL in that column.
PARTITIONS = pa.schema([("exchange", pa.string()), ("symbol", pa.string()), ("date", pa.date32())])


def read_pyarrow(root: Path, table: str) -> pa.Table:
    dataset = ds.dataset(
        root / table,
        format="parquet",
        partitioning=ds.partitioning(PARTITIONS, flavor="hive"),
        schema=pa.unify_schemas([SCHEMAS[table], PARTITIONS]),
    )
    return dataset.to_table()


# polars: scan the *.parquet files three levels down with hive partitioning and typed keys; pass the
# full schema and missing_columns="insert" (polars otherwise takes the schema from the first file).
def read_polars(root: Path, table: str) -> pl.DataFrame:
    return pl.scan_parquet(
        f"{root}/{table}/*/*/*/*.parquet",
        hive_partitioning=True,
        hive_schema={"exchange": pl.String, "symbol": pl.String, "date": pl.Date},
        schema=pl.Schema(pl.from_arrow(SCHEMAS[table].empty_table()).schema),
        missing_columns="insert",
    ).collect()


# Spark: the table's schema given up front (DDL below), partition columns included: no footer is read
# to infer it, `date` is a DATE, and files written before a column existed read as NULL in it.
# (Without a schema, .option("mergeSchema", "true") unions the footers at the cost of a Spark job.)
def read_spark(spark, root: Path, table: str):
    return spark.read.schema(spark_ddl(table)).parquet(str(root / table))


def spark_ddl(table: str) -> str:
    """e.g. events: "ts TIMESTAMP, recv_ts TIMESTAMP, channel STRING, event STRING, detail STRING,
    cause STRING, exchange STRING, symbol STRING, date DATE"."""

    def sql_type(t: pa.DataType) -> str:
        if pa.types.is_timestamp(t):
            return "TIMESTAMP"  # an instant (TIMESTAMP_LTZ), as the files' isAdjustedToUTC timestamps
        if pa.types.is_list(t):
            return "ARRAY<STRUCT<price: DOUBLE, amount: DOUBLE>>"
        return {pa.float64(): "DOUBLE", pa.int64(): "BIGINT", pa.bool_(): "BOOLEAN", pa.string(): "STRING"}[t]

    cols = [f"{f.name} {sql_type(f.type)}" for f in SCHEMAS[table]]
    return ", ".join(cols + ["exchange STRING", "symbol STRING", "date DATE"])


SPARK_CONF = {
    "spark.ui.enabled": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.shuffle.partitions": "1",
    "spark.default.parallelism": "1",
    "spark.sql.session.timeZone": "UTC",
    # a few small queries: whole-stage code generation and adaptive execution cost more than they
    # save, and so does the JVM's optimizing compiler (C1 only and the serial collector start ~2x faster)
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.adaptive.enabled": "false",
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
}

# --- the lake --------------------------------------------------------------------------------------


@dataclass
class Lake:
    root: Path
    spark: object | None
    spark_skip: str | None
    old_events_rows: int


def _spawn(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [RECORDER, *args], stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{proc.args} did not finish in {timeout} s:\n{log.read_text()[-2000:]}")
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{log.read_text()[-2000:]}"


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _start_spark(tmp: Path, out: dict) -> None:
    """Sets out["spark"] to a session that has run one small query (the JVM's first query loads
    most of Spark SQL), or out["why"] to why Spark cannot run here. Runs in a thread."""
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        out["why"] = "no Java runtime (java not on PATH, JAVA_HOME unset)"
        return
    try:
        from pyspark.sql import SparkSession
        from pyspark.sql import functions as F
    except ImportError as e:
        out["why"] = f"pyspark not installed ({e}); pip install -e '.[test]'"
        return
    builder = SparkSession.builder.master("local[1]").appName("recorder-test-engines")
    for key, value in {**SPARK_CONF, "spark.local.dir": str(tmp), "spark.sql.warehouse.dir": str(tmp / "wh")}.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # the JVM did not start (Java too old for this pyspark, ...)
        out["why"] = f"Spark did not start: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return
    out["spark"] = spark
    spark.sparkContext.setLogLevel("ERROR")
    warm = tmp / "warm" / "k=a"
    warm.mkdir(parents=True)
    pq.write_table(pa.table({"ts": pa.array([0], pa.timestamp("us", tz="UTC"))}), warm / "x.parquet")
    spark.read.parquet(str(warm.parent)).groupBy("k").agg(F.max(F.unix_micros("ts"))).collect()


def _write_old_events(root: Path) -> int:
    """One `events` file as written before `cause` existed: a copy of a recorded one without the
    column, its times moved a day back, in that earlier date's partition (so it is the first file a
    reader meets)."""
    part = root / "events" / "exchange=bitmart" / "symbol=BTC-USDT"
    src = sorted(part.glob("date=*/*.parquet"))[0]
    t = pq.read_table(src)
    assert "cause" in t.column_names
    t = t.drop_columns(["cause"])
    day = dt.timedelta(days=1)
    for col in ("ts", "recv_ts"):
        t = t.set_column(t.schema.get_field_index(col), col, pc.subtract(t[col], pa.scalar(day)))
    date = t["ts"][0].as_py().date()
    assert all(v.as_py().date() == date for v in t["ts"])
    out = part / f"date={date.isoformat()}" / OLD_EVENTS_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, out, compression="zstd")
    return t.num_rows


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engines")
    root = tmp / "lake"
    logs = tmp / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []
    started: dict = {}
    # Spark starts (and warms up) while the recorders run; the lake is built in the meantime
    spark_thread = threading.Thread(target=_start_spark, args=(tmp / "spark", started), daemon=True)
    spark_thread.start()
    try:
        # the two recordings share the data dir (as several recorders may) and run side by side
        spot = _spawn("run", "bitmart", *SPOT, "--sim", "--duration", "8", "--data-dir", str(root),
                      "--flush-interval", "2", log=logs / "spot.log")
        perp = _spawn("run", "bitmart_perpetual", "BTC-USDT", "--sim", "--duration", "6", "--data-dir", str(root),
                      log=logs / "perp.log")
        sim = _spawn("simulate", "bitmart", "--port", "0", log=logs / "sim.log")
        procs += [spot, perp, sim]
        now = int(time.time())
        backfill = _spawn("candles", "backfill", "bitmart", "BTC-USDT", "--rest-url", _sim_rest_url(logs / "sim.log"),
                          "--data-dir", str(root), "--start", str(now - 3 * 3600), "--end", str(now), "-q",
                          log=logs / "backfill.log")
        procs.append(backfill)
        _finish(backfill, logs / "backfill.log")
        _kill(sim)
        _finish(spot, logs / "spot.log")
        _finish(perp, logs / "perp.log")
        build = _spawn("candles", "build", "--data-dir", str(root), log=logs / "build.log")
        procs.append(build)
        _finish(build, logs / "build.log")
        # spot's trades and book updates as `recorder compact` leaves them (merged files, written with
        # the compaction's encodings): the engines must read those too
        spot_files = lambda t: sorted((root / t / "exchange=bitmart").rglob("*.parquet"))  # noqa: E731
        many = {t: len(spot_files(t)) for t in COMPACTED}
        assert all(n > len(SPOT) for n in many.values()), f"too few files to compact: {many}"
        compact = _spawn("compact", "--data-dir", str(root), "--include-today",
                         *(a for t in COMPACTED for a in ("--table", t)), log=logs / "compact.log")
        procs.append(compact)
        _finish(compact, logs / "compact.log")
        assert {t: len(spot_files(t)) for t in COMPACTED} == dict.fromkeys(COMPACTED, len(SPOT)), many
        old_rows = _write_old_events(root)
        spark_thread.join(120)
        assert not spark_thread.is_alive(), "Spark did not start in 120 s"
        yield Lake(root, started.get("spark"), started.get("why"), old_rows)
    finally:
        for p in procs:
            _kill(p)
        spark_thread.join(120)
        if started.get("spark") is not None:
            started["spark"].stop()


def _sim_rest_url(log: Path, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"^rest (http://127\.0\.0\.1:\d+)", log.read_text(), re.M)
        if m:
            return m.group(1)
        time.sleep(0.1)
    pytest.fail(f"the simulator printed no rest URL:\n{log.read_text()}")


# --- what DuckDB says --------------------------------------------------------------------------------

Key = tuple[str, str, str]  # exchange, symbol, date (ISO)


@dataclass
class Facts:
    """What one engine read of one table."""

    partitions: dict[Key, int]  # rows per (exchange, symbol, date)
    ts_range: tuple[int, int]  # min and max `ts` in microseconds since the epoch (UTC)
    null_cause: int | None = None  # events: rows whose cause is NULL
    first_levels: list[tuple] | None = None  # book_snapshots: (exchange, symbol, ts, seq, bid0, ask0, depth)


def _micros(value: dt.datetime) -> int:
    assert value.tzinfo is not None and value.utcoffset() == dt.timedelta(0), value
    return (value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def _level(s) -> tuple | None:
    return None if s is None else (s["price"], s["amount"])


def duckdb_facts(root: Path) -> dict[str, Facts]:
    con = connect(root)
    out = {}
    for table in TABLES:
        rows = con.execute(f"SELECT exchange, symbol, CAST(date AS VARCHAR), count(*) FROM {table} GROUP BY ALL").fetchall()
        lo, hi = con.execute(f"SELECT epoch_us(min(ts)), epoch_us(max(ts)) FROM {table}").fetchone()
        facts = Facts({(e, s, d): n for e, s, d, n in rows}, (lo, hi))
        tz = con.execute(f"SELECT typeof(ts) FROM {table} LIMIT 1").fetchone()[0]
        assert tz == "TIMESTAMP WITH TIME ZONE", (table, tz)
        if table == "events":
            facts.null_cause = con.execute("SELECT count(*) FROM events WHERE cause IS NULL").fetchone()[0]
        if table == "book_snapshots":
            facts.first_levels = sorted(
                (e, s, ts, seq, _level(b), _level(a), nb, na)
                for e, s, ts, seq, b, a, nb, na in con.execute(
                    "SELECT exchange, symbol, epoch_us(ts), seq, bids[1], asks[1], len(bids), len(asks) FROM book_snapshots"
                ).fetchall()
            )
        out[table] = facts
    return out


@pytest.fixture(scope="module")
def truth(lake) -> dict[str, Facts]:
    facts = duckdb_facts(lake.root)
    # the lake holds what the test is about: every table has rows, both venues, the old events file
    for table in TABLES:
        assert facts[table].partitions, f"{table} is empty"
    assert {k[0] for k in facts["trades"].partitions} == {"bitmart", "bitmart_perpetual"}
    assert {k[0] for k in facts["derivative_ticker"].partitions} == {"bitmart_perpetual"}
    assert len({k[2] for k in facts["events"].partitions}) >= 2  # the old file's earlier date
    assert facts["events"].null_cause >= lake.old_events_rows > 0
    assert facts["book_snapshots"].first_levels[0][4] is not None
    return facts


def _check(engine: str, table: str, got: Facts, want: Facts) -> None:
    assert got.partitions == want.partitions, f"{engine} {table}: rows per partition differ from DuckDB"
    assert got.ts_range == want.ts_range, f"{engine} {table}: ts range differs from DuckDB"
    if want.null_cause is not None:
        assert got.null_cause == want.null_cause, f"{engine} {table}: NULL cause rows differ"
    if want.first_levels is not None:
        assert got.first_levels == want.first_levels, f"{engine} {table}: snapshot first levels differ"


# --- the engines -------------------------------------------------------------------------------------


def check_pyarrow(lake: Lake, truth: dict[str, Facts]) -> None:
    for table in TABLES:
        t = read_pyarrow(lake.root, table)
        assert t.schema.field("ts").type == pa.timestamp("us", tz="UTC")
        assert t.schema.field("date").type == pa.date32()
        keys = t.group_by(["exchange", "symbol", "date"]).aggregate([([], "count_all")]).to_pylist()
        ts = t["ts"]
        got = Facts(
            {(r["exchange"], r["symbol"], r["date"].isoformat()): r["count_all"] for r in keys},
            (_micros(pc.min(ts).as_py()), _micros(pc.max(ts).as_py())),
        )
        if table == "events":
            got.null_cause = t["cause"].null_count
        if table == "book_snapshots":
            got.first_levels = sorted(
                (r["exchange"], r["symbol"], _micros(r["ts"]), r["seq"], _level((r["bids"] or [None])[0]),
                 _level((r["asks"] or [None])[0]), len(r["bids"]), len(r["asks"]))
                for r in t.select(["exchange", "symbol", "ts", "seq", "bids", "asks"]).to_pylist()
            )
        _check("pyarrow", table, got, truth[table])


def check_polars(lake: Lake, truth: dict[str, Facts]) -> None:
    for table in TABLES:
        df = read_polars(lake.root, table)
        assert df.schema["ts"] == pl.Datetime("us", "UTC")
        assert df.schema["date"] == pl.Date
        keys = df.group_by("exchange", "symbol", "date").len().rows()
        got = Facts(
            {(e, s, d.isoformat()): n for e, s, d, n in keys},
            (_micros(df["ts"].min()), _micros(df["ts"].max())),
        )
        if table == "events":
            got.null_cause = df["cause"].null_count()
        if table == "book_snapshots":
            got.first_levels = sorted(
                (r["exchange"], r["symbol"], _micros(r["ts"]), r["seq"], _level((r["bids"] or [None])[0]),
                 _level((r["asks"] or [None])[0]), len(r["bids"]), len(r["asks"]))
                for r in df.select("exchange", "symbol", "ts", "seq", "bids", "asks").iter_rows(named=True)
            )
        _check("polars", table, got, truth[table])


def check_spark(lake: Lake, truth: dict[str, Facts]) -> None:
    from pyspark.sql import functions as F
    from pyspark.sql.types import DateType, StringType, TimestampType

    spark = lake.spark
    for table in TABLES:
        df = read_spark(spark, lake.root, table)
        types = {f.name: f.dataType for f in df.schema.fields}
        assert set(types) == set(SCHEMAS[table].names) | {"exchange", "symbol", "date"}, (table, sorted(types))
        assert types["ts"] == TimestampType(), (table, types["ts"])  # an instant (TIMESTAMP_LTZ)
        assert (types["exchange"], types["symbol"], types["date"]) == (StringType(), StringType(), DateType())
        # one job per table: rows, ts range (and NULL causes) per partition
        aggs = [F.count(F.lit(1)).alias("n"), F.min(F.unix_micros("ts")).alias("lo"), F.max(F.unix_micros("ts")).alias("hi")]
        if table == "events":
            aggs.append(F.count_if(F.col("cause").isNull()).alias("null_cause"))
        keys = df.groupBy("exchange", "symbol", "date").agg(*aggs).collect()
        got = Facts(
            {(r["exchange"], r["symbol"], r["date"].isoformat()): r["n"] for r in keys},
            (min(r["lo"] for r in keys), max(r["hi"] for r in keys)),
        )
        if table == "events":
            got.null_cause = sum(r["null_cause"] for r in keys)
        if table == "book_snapshots":
            rows = df.select(
                "exchange", "symbol", F.unix_micros("ts").alias("us"), "seq",
                F.get(F.col("bids"), 0).alias("b"), F.get(F.col("asks"), 0).alias("a"),
                F.size("bids").alias("nb"), F.size("asks").alias("na"),
            ).collect()
            got.first_levels = sorted(
                (r["exchange"], r["symbol"], r["us"], r["seq"], _level(r["b"]), _level(r["a"]), r["nb"], r["na"])
                for r in rows
            )
        _check("spark", table, got, truth[table])
    # the other way to meet old files, without a schema: mergeSchema unions the files' footers
    merged = spark.read.option("mergeSchema", "true").parquet(str(lake.root / "events"))
    assert "cause" in merged.columns
    assert merged.filter(F.col("cause").isNull()).count() == truth["events"].null_cause


def _readme_block() -> str:
    """The Python block of the README's "Reading the lake with other engines" section."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("\n## Reading the lake with other engines\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def check_readme_block(lake: Lake, truth: dict[str, Facts]) -> None:
    """The README's block runs as written (the Spark part only where Spark runs) and reads the
    `events` table, old file included, as DuckDB does."""
    block = _readme_block()
    want = sum(truth["events"].partitions.values())
    if lake.spark is None:
        block = block.split("# Spark", 1)[0]
    ns = {"root": str(lake.root), "table": "events", "spark": lake.spark}
    exec(compile(block, "README.md", "exec"), ns)
    trades_by_symbol: dict[str, int] = {}
    for (_, symbol, _), n in truth["trades"].partitions.items():
        trades_by_symbol[symbol] = trades_by_symbol.get(symbol, 0) + n
    assert dict(ns["counts"]) == trades_by_symbol
    assert ns["t"].num_rows == ns["df"].height == want
    assert ns["t"]["cause"].null_count == ns["df"]["cause"].null_count() == truth["events"].null_cause
    if lake.spark is not None:
        assert ns["sdf"].schema.simpleString() == lake.spark.read.schema(spark_ddl("events")).parquet(
            str(lake.root / "events")).schema.simpleString()
        for sdf in (ns["sdf"], ns["merged"]):
            assert sdf.count() == want
            assert sdf.filter(sdf["cause"].isNull()).count() == truth["events"].null_cause


def check_files_in_progress(lake: Lake, truth: dict[str, Facts]) -> None:
    """A file still being written lives under a dot-name ending in `.tmp`: pyarrow and Spark skip
    names starting with '.' or '_', polars' *.parquet glob does not match it."""
    part = next((lake.root / "trades").glob("exchange=*/symbol=*/date=*"))
    partial = part / ".20991231T000000.000000-host-1-inprogress.parquet.tmp"
    partial.write_bytes(b"PAR1 half written")
    try:
        want = sum(truth["trades"].partitions.values())
        assert read_pyarrow(lake.root, "trades").num_rows == want
        assert read_polars(lake.root, "trades").height == want
        if lake.spark is not None:
            assert read_spark(lake.spark, lake.root, "trades").count() == want
    finally:
        partial.unlink()


def test_engines_read_the_lake_like_duckdb(lake, truth):
    """One test rather than one per engine: pytest-xdist may run a module's tests on two workers,
    and each would record its own lake and start its own JVM."""
    check_pyarrow(lake, truth)
    check_polars(lake, truth)
    check_readme_block(lake, truth)
    check_files_in_progress(lake, truth)
    if lake.spark is None:
        if os.environ.get("CI") and "no Java runtime" not in lake.spark_skip:
            pytest.fail(f"{lake.spark_skip}: CI must run the Spark part")
        pytest.skip(f"Spark part: {lake.spark_skip} (pyarrow, polars and the README block passed)")
    check_spark(lake, truth)
