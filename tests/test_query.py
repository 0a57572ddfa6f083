"""The read side over real Parquet files and real DuckDB: `recorder sql` is read-only, one damaged
file breaks nothing else, machine-readable output is exact, a mistyped data dir is an error.

CLI behaviour is tested through the installed `recorder` command in a subprocess."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import recorder
from recorder.errors import RecorderError
from recorder.model import SCHEMAS

from .processes import RECORDER

T0 = int(datetime(2026, 11, 21, 10, 0, tzinfo=UTC).timestamp() * 1_000_000)
PART = "exchange=bitmart/symbol=BTC-USDT/date=2026-11-21"


def run(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([RECORDER, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def sql_csv(data: Path, query: str, cwd: Path) -> subprocess.CompletedProcess:
    return run("sql", query, "--data-dir", str(data), "--format", "csv", cwd=cwd)


def one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode != 0, p.stdout
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr


def trades_table(n: int, start_us: int = T0, price: float = 100.0) -> pa.Table:
    ts = pa.array([start_us + i * 1_000_000 for i in range(n)], pa.timestamp("us", tz="UTC"))
    return pa.table(
        {
            "ts": ts,
            "recv_ts": ts,
            "trade_id": pa.array([None] * n, pa.string()),
            "side": ["buy" if i % 2 else "sell" for i in range(n)],
            "price": [price + i for i in range(n)],
            "amount": [0.5] * n,
        },
        schema=SCHEMAS["trades"],
    )


def events_table() -> pa.Table:
    """Today's schema (with `cause`); tests/test_coverage.py covers files written before it."""
    ts = pa.array([T0 - 1_000_000, T0 - 500_000], pa.timestamp("us", tz="UTC"))
    return pa.table(
        {
            "ts": ts,
            "recv_ts": ts,
            "channel": ["trades"] * 2,
            "event": ["connect", "subscribed"],
            "detail": ["", ""],
            "cause": ["connect", None],
        },
        schema=SCHEMAS["events"],
    )


def put(root: Path, table: str, rel: str, tbl: pa.Table) -> Path:
    path = root / table / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(tbl, path, compression="zstd")
    return path


def lake(root: Path) -> Path:
    """A small data dir: 10 trades in two files and the stream's events."""
    put(root, "trades", f"{PART}/a.parquet", trades_table(6))
    put(root, "trades", f"{PART}/b.parquet", trades_table(4, T0 + 6_000_000, 200.0))
    put(root, "events", f"{PART}/a.parquet", events_table())
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


# ---- item 3: read-only ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "needle"),
    [
        ("COPY (SELECT * FROM trades) TO '{part}/dup.parquet'", "COPY"),  # counted twice afterwards
        ("COPY (SELECT * FROM trades LIMIT 1) TO '{part}/a.parquet'", "COPY"),  # replaces recorded rows
        ("COPY (SELECT 1 AS a) TO '{part}' (FORMAT parquet, PARTITION_BY (a), OVERWRITE_OR_IGNORE)", "COPY"),
        ("ATTACH '{data}/x.duckdb' AS x", "ATTACH"),
        ("SELECT 1; COPY (SELECT * FROM trades) TO '{part}/dup.parquet'", "COPY"),
        ("EXPLAIN ANALYZE COPY (SELECT * FROM trades) TO '{part}/dup.parquet'", "EXPLAIN"),
        ("SET enable_external_access = true", "SET"),
        ("RESET lock_configuration", "SET"),
        ("EXPORT DATABASE '{data}/export'", "EXPORT"),
        ("CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')", "CREATE"),
        ("INSTALL httpfs", "LOAD"),
        ("PRAGMA enable_profiling", "PRAGMA"),
    ],
)
def test_sql_refuses_to_write_and_leaves_the_data_dir_untouched(tmp_path, sql, needle):
    data = lake(tmp_path / "data")
    before = snapshot(data)
    p = run("sql", sql.format(part=data / "trades" / PART, data=data), "--data-dir", str(data), cwd=tmp_path)
    one_line_error(p, "read-only", needle)
    assert snapshot(data) == before
    assert not list(tmp_path.glob("*.duckdb*"))


def test_write_exports_outside_the_data_dir_only(tmp_path):
    data = lake(tmp_path / "data")
    before = snapshot(data)
    inside = run(
        "sql", f"COPY (SELECT 1 AS a) TO '{data / 'x.csv'}'", "--data-dir", str(data), "--write", cwd=tmp_path
    )
    one_line_error(inside, "never writes into the data dir")
    relative = run("sql", "COPY (SELECT 1 AS a) TO 'x.csv'", "--data-dir", ".", "--write", cwd=data)
    one_line_error(relative, "never writes into the data dir")
    assert snapshot(data) == before
    out = tmp_path / "out.csv"
    ok = run(
        "sql", f"COPY (SELECT count(*) AS n FROM trades) TO '{out}'", "--data-dir", str(data), "--write", cwd=tmp_path
    )
    assert ok.returncode == 0, ok.stderr
    assert out.read_text().split() == ["n", "10"]
    assert snapshot(data) == before


def test_the_duckdb_settings_hold_on_their_own(tmp_path):
    """Second layer: even a statement that passed the allow-list cannot write outside the
    allowed paths nor switch the lock off."""
    from recorder.sqlguard import lock_down

    data = lake(tmp_path / "data")
    con = recorder.connect(data)
    lock_down(con, data, [], tmp_path / "spill")
    assert con.sql("SELECT count(*) FROM trades").fetchall() == [(10,)]
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        con.execute(f"COPY (SELECT 1) TO '{tmp_path / 'elsewhere.csv'}'")
    for stmt in ("SET enable_external_access = true", "RESET enable_external_access", "SET lock_configuration = false"):
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute(stmt)
    with pytest.raises(duckdb.Error):
        con.execute(f"ATTACH '{tmp_path / 'x.duckdb'}'")
    assert not (tmp_path / "elsewhere.csv").exists() and not (tmp_path / "x.duckdb").exists()


# ---- item 6: damaged files --------------------------------------------------------------------


def damage(data: Path) -> dict[str, Path]:
    """A truncated file, a wrong-schema file (price as text), a stray `date=notadate` dir and a dir
    without `key=value`, all in `trades`."""
    truncated = put(data, "trades", f"{PART}/c.parquet", trades_table(5, T0 + 20_000_000))
    truncated.write_bytes(truncated.read_bytes()[:-40])
    bad = trades_table(3, T0 + 30_000_000)
    bad = bad.set_column(bad.schema.get_field_index("price"), "price", pa.array(["1.5", "2", "x"]))
    wrong = put(data, "trades", f"{PART}/d.parquet", bad)
    notadate = put(data, "trades", "exchange=bitmart/symbol=BTC-USDT/date=notadate/e.parquet", trades_table(2))
    nokey = put(data, "trades", "exchange=bitmart/stray/date=2026-11-21/f.parquet", trades_table(2))
    return {"truncated": truncated, "wrong": wrong, "notadate": notadate.parent, "nokey": nokey.parents[1]}


def test_one_damaged_file_breaks_no_other_query(tmp_path):
    data = lake(tmp_path / "data")
    bad = damage(data)
    ev = run("sql", "SELECT count(*) AS n FROM events", "--data-dir", str(data), "--format", "csv", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert ev.stdout.split() == ["n", "2"]
    for path in bad.values():
        assert str(path) in ev.stderr  # every skip is a warning that names the path
    tr = sql_csv(data, "SELECT count(*) AS n, typeof(any_value(price)) AS t, sum(price) AS s FROM trades", tmp_path)
    assert tr.returncode == 0, tr.stderr
    assert tr.stdout.splitlines()[1] == f"10,DOUBLE,{sum(range(100, 106)) + sum(range(200, 204))}.0"
    st = run("status", "--data-dir", str(data), "--date", "2026-11-21", cwd=tmp_path)
    assert st.returncode == 0, st.stderr
    flat = "".join(st.stdout.split())  # a table cell may wrap; the listing must name each path
    for path in bad.values():
        assert "".join(str(path).split()) in flat, st.stdout
    assert "wrongschema:column'price'isstring" in flat


def test_connect_skips_damaged_files_with_warnings(tmp_path, caplog):
    data = lake(tmp_path / "data")
    bad = damage(data)
    with caplog.at_level(logging.WARNING, logger="recorder"):
        con = recorder.connect(data)
    assert con.sql("SELECT count(*), typeof(any_value(price)) FROM trades").fetchall() == [(10, "DOUBLE")]
    assert con.sql("SELECT count(*) FROM coverage").fetchall() == [(1,)]
    for path in bad.values():
        assert any(str(path) in r.getMessage() for r in caplog.records), path


def test_candle_build_ignores_damaged_trade_files(tmp_path):
    data = lake(tmp_path / "data")
    bad = damage(data)
    b = run("candles", "build", "--data-dir", str(data), "--interval", "1m", cwd=tmp_path)
    assert b.returncode == 0, b.stderr
    for path in (bad["truncated"], bad["wrong"]):
        assert str(path) in b.stderr
    q = sql_csv(data, "SELECT sum(trades) AS n, max(high) AS hi FROM candles WHERE interval = '1m'", tmp_path)
    assert q.returncode == 0, q.stderr
    assert q.stdout.splitlines()[1] == "10,203.0"


def test_compact_leaves_damaged_files_alone_and_merges_the_rest(tmp_path):
    data = lake(tmp_path / "data")
    bad = damage(data)
    damaged = {p: p.read_bytes() for p in (bad["truncated"], bad["wrong"])}
    c = run("compact", "--data-dir", str(data), cwd=tmp_path)
    assert c.returncode == 0, c.stderr
    for path in [*damaged, bad["notadate"]]:
        assert str(path) in c.stderr  # each one named, on a warning line
    assert "compacted 1 partitions: 2 files -> 1, 10 rows" in c.stderr
    for path, content in damaged.items():
        assert path.read_bytes() == content  # neither merged nor deleted
    assert len([p for p in (data / "trades" / PART).glob("*.parquet") if p not in damaged]) == 1
    q = run("sql", "SELECT count(*) AS n FROM trades", "--data-dir", str(data), "--format", "csv", cwd=tmp_path)
    assert q.stdout.split() == ["n", "10"]
    one_line_error(run("compact", "--data-dir", str(tmp_path / "nope"), cwd=tmp_path), "does not exist")


def test_compact_says_when_it_left_todays_partitions_alone(tmp_path):
    """A careless `compact` right after a recording: today's partition is still being written, so it
    is left alone, and the command says so (and how to include it) instead of a bare "0 partitions"."""
    today = datetime.now(UTC)
    start = int(today.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1_000_000)
    part = f"exchange=bitmart/symbol=BTC-USDT/date={today.date().isoformat()}"
    data = lake(tmp_path / "data")
    put(data, "trades", f"{part}/a.parquet", trades_table(3, start))
    put(data, "trades", f"{part}/b.parquet", trades_table(2, start + 3_000_000))
    put(data, "events", f"{part}/a.parquet", events_table())  # one file: nothing to merge, not counted
    c = run("compact", "--data-dir", str(data), cwd=tmp_path)
    assert c.returncode == 0, c.stderr
    assert "compacted 1 partitions: 2 files -> 1, 10 rows" in c.stderr  # the finished date
    assert f"left alone 1 partitions of today with files to merge ({today.date().isoformat()}" in c.stderr
    assert "--include-today" in c.stderr
    assert len(list((data / "trades" / part).glob("*.parquet"))) == 2
    c = run("compact", "--data-dir", str(data), "--include-today", cwd=tmp_path)
    assert c.returncode == 0 and "compacted 1 partitions: 2 files -> 1, 5 rows" in c.stderr, c.stderr
    assert "left alone" not in c.stderr
    c = run("compact", "--data-dir", str(data), "--date", "2026-11-21", cwd=tmp_path)  # a date named: no hint
    assert c.returncode == 0 and "left alone" not in c.stderr, c.stderr


def test_book_rebuild_skips_damaged_files(tmp_path, caplog):
    from recorder.bookreplay import rebuild_book

    ts = pa.array([T0] * 3, pa.timestamp("us", tz="UTC"))
    book = pa.table(
        {"ts": ts, "recv_ts": ts, "seq": [1, 1, 1], "is_snapshot": [True] * 3, "side": ["bid", "bid", "ask"],
         "price": [99.0, 98.0, 101.0], "amount": [1.0, 2.0, 3.0]},
        schema=SCHEMAS["book_updates"],
    )
    put(tmp_path, "book_updates", f"{PART}/a.parquet", book)
    garbage = tmp_path / "book_updates" / PART / "b.parquet"
    garbage.write_bytes(b"not parquet at all")
    with caplog.at_level(logging.WARNING, logger="recorder"):
        rebuilt = rebuild_book(tmp_path, "bitmart", "BTC-USDT")
    assert rebuilt.top() == ([(99.0, 1.0), (98.0, 2.0)], [(101.0, 3.0)])
    assert any(str(garbage) in r.getMessage() for r in caplog.records)


# ---- item 7: exact output ---------------------------------------------------------------------

EXACT = (
    "SELECT 1.10::DECIMAL(18,2) AS d, 123456789012345678901234567890.123::DECIMAL(38,3) AS big, "
    "sum(1::HUGEINT) AS s, (2::HUGEINT << 100) AS h, sum(x) AS si, 0.1::DOUBLE AS f, "
    "TIMESTAMPTZ '2026-11-21 10:00:00.123456+00' AS ts, NULL::INTEGER AS nul, '' AS empty, 'a,b' AS comma "
    "FROM range(3) t(x)"
)


def test_csv_and_json_are_exact(tmp_path):
    (tmp_path / "data").mkdir()
    c = run("sql", EXACT, "--data-dir", "data", "--format", "csv", cwd=tmp_path)
    assert c.returncode == 0, c.stderr
    header, row = c.stdout.splitlines()
    assert header == "d,big,s,h,si,f,ts,nul,empty,comma"
    assert row == (
        '1.10,123456789012345678901234567890.123,3,2535301200456458802993406410752,3,0.1,'
        '2026-11-21T10:00:00.123456+00:00,,"","a,b"'
    )
    assert next(csv.reader(io.StringIO(row)))[8] == ""
    j = run("sql", EXACT, "--data-dir", "data", "--format", "json", cwd=tmp_path)
    assert j.returncode == 0, j.stderr
    assert '"h":2535301200456458802993406410752' in j.stdout and '"d":1.10' in j.stdout
    [obj] = json.loads(j.stdout, parse_float=str, parse_int=str)
    assert obj == {
        "d": "1.10",
        "big": "123456789012345678901234567890.123",
        "s": "3",
        "h": "2535301200456458802993406410752",
        "si": "3",
        "f": "0.1",
        "ts": "2026-11-21T10:00:00.123456+00:00",
        "nul": None,
        "empty": "",
        "comma": "a,b",
    }
    # JSON has no NaN or infinity, also inside nested values; numbers keep their digits
    nested = "SELECT ['nan'::DOUBLE, 1.5, 'inf'::DOUBLE] AS l, {'h': 2::HUGEINT << 100} AS s, 'nan'::DOUBLE AS n"
    k = run("sql", nested, "--data-dir", "data", "--format", "json", cwd=tmp_path)
    [obj] = json.loads(k.stdout, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON output"))
    assert obj == {"l": ["NaN", 1.5, "Infinity"], "s": {"h": 2**101}, "n": "NaN"}
    # a result may repeat a column name (joins): each column keeps its own values
    twice = "SELECT 1.5::DECIMAL(4,2) AS a, 2 AS a, TIMESTAMPTZ '2026-11-21 00:00:00+00' AS t, DATE '2026-11-22' AS t"
    r = run("sql", twice, "--data-dir", "data", "--format", "csv", cwd=tmp_path)
    assert r.stdout.splitlines() == ["a,a,t,t", "1.50,2,2026-11-21T00:00:00.000000+00:00,2026-11-22"]


def test_recorded_sums_are_integers_in_csv(tmp_path):
    data = lake(tmp_path / "data")
    c = sql_csv(data, "SELECT sum(CASE WHEN side = 'buy' THEN 1 ELSE 0 END) AS buys, count(*) AS n FROM trades", tmp_path)
    assert c.returncode == 0, c.stderr
    assert c.stdout.splitlines() == ["buys,n", "5,10"]


def test_max_rows_says_when_rows_were_cut(tmp_path):
    (tmp_path / "data").mkdir()
    cut = run("sql", "SELECT * FROM range(5)", "--data-dir", "data", "--max-rows", "3", cwd=tmp_path)
    assert cut.returncode == 0, cut.stderr
    assert "first 3 rows" in cut.stderr and "cut" in cut.stderr
    whole = run("sql", "SELECT * FROM range(3)", "--data-dir", "data", "--max-rows", "3", cwd=tmp_path)
    assert whole.returncode == 0 and "cut" not in whole.stderr


def test_table_format_shows_values_verbatim(tmp_path):
    """A recorded string that looks like terminal markup is shown as it is, not interpreted."""
    (tmp_path / "data").mkdir()
    t = run("sql", "SELECT '[bold]x[/bold]' AS detail, 1.10::DECIMAL(4,2) AS d", "--data-dir", "data", cwd=tmp_path)
    assert t.returncode == 0, t.stderr
    assert "[bold]x[/bold]" in t.stdout and "1.10" in t.stdout


# ---- item 8: a mistyped data dir --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "file"])
@pytest.mark.parametrize(
    "args",
    [
        ("sql", "SELECT count(*) FROM trades"),
        ("status",),
        ("candles", "verify", "bitmart", "BTC-USDT"),
    ],
)
def test_a_mistyped_data_dir_is_an_error(tmp_path, kind, args):
    path = tmp_path / "dta"
    if kind == "file":
        path.write_text("not a dir")
    p = run(*args, "--data-dir", str(path), cwd=tmp_path)
    one_line_error(p, str(path))
    assert p.returncode == 2
    assert [q.name for q in tmp_path.iterdir()] == ([] if kind == "missing" else ["dta"])


def test_connect_refuses_a_mistyped_data_dir(tmp_path):
    with pytest.raises(RecorderError, match="does not exist"):
        recorder.connect(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(RecorderError, match="not a directory"):
        recorder.connect(tmp_path / "f")
    # not an empty local dir named s3: (connect() reads buckets: tests/test_s3.py; the commands
    # that do not yet say so)
    from recorder.lake import check_data_dir

    with pytest.raises(RecorderError, match="does not support s3:// data dirs yet"):
        check_data_dir("s3://bucket/prefix")
