"""Writer: atomic publish, date partitions, crash leftovers, compaction that never loses a row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow.parquet as pq

from recorder import connect
from recorder.storage.compact import compact_data_dir
from recorder.storage.sink import MARKER_PREFIX, ParquetSink, recover

DAY = 86_400_000_000
T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z


def trade(i: int, ts: int) -> tuple:
    return (ts, ts + 5, None, "buy" if i % 2 else "sell", 100.0 + i, 0.5)


def test_rows_split_by_utc_date_and_readable_by_duckdb(tmp_path):
    sink = ParquetSink(tmp_path)
    buf = sink.buffer("trades", "bitmart", "BTC-USDT")
    buf.extend(trade(i, T0 + i * 3_600_000_000) for i in range(5))  # crosses midnight UTC
    assert sink.flush() == 5
    dates = sorted(p.name for p in (tmp_path / "trades/exchange=bitmart/symbol=BTC-USDT").iterdir())
    assert dates == ["date=2023-11-14", "date=2023-11-15"]
    con = connect(tmp_path)
    got = con.execute("select count(*), count(distinct date), min(price) from trades where symbol='BTC-USDT'").fetchone()
    assert got == (5, 2, 100.0)
    f = next((tmp_path / "trades").rglob("*.parquet"))
    meta = pq.ParquetFile(f).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert "exchange" not in pq.read_schema(f).names  # partition keys only in the path


def test_failed_write_keeps_rows_for_the_next_flush(tmp_path):
    errors: list[str] = []
    sink = ParquetSink(tmp_path / "d", on_error=errors.append)
    (tmp_path / "d").mkdir()
    sink.buffer("trades", "bitmart", "BTC-USDT").extend(trade(i, T0 + i) for i in range(3))
    os.chmod(tmp_path / "d", 0o500)
    try:
        if os.access(tmp_path / "d", os.W_OK):  # running as root: permissions do not bite
            (tmp_path / "d" / "trades").write_text("a file where a directory must go")
        assert sink.flush() == 0
    finally:
        os.chmod(tmp_path / "d", 0o700)
        (tmp_path / "d" / "trades").unlink(missing_ok=True)
    assert errors and "cannot write to" in errors[0]
    assert sink.pending_rows() == 3
    assert sink.flush() == 3
    assert connect(tmp_path / "d").execute("select count(*) from trades").fetchone() == (3,)


def test_empty_data_dir_gives_typed_empty_views(tmp_path):
    con = connect(tmp_path)
    assert con.execute("select count(*) from book_updates").fetchone() == (0,)
    cols = [c[0] for c in con.execute("describe trades").fetchall()]
    assert cols[:6] == ["ts", "recv_ts", "trade_id", "side", "price", "amount"]
    assert con.execute("select * from coverage").fetchall() == []


def test_compaction_merges_sorts_and_loses_nothing(tmp_path):
    sink = ParquetSink(tmp_path)
    for k in range(4):
        sink.buffer("trades", "bitmart", "BTC-USDT").extend(trade(i, T0 - DAY + (i * 7919 + k) % 50_000) for i in range(30))
        sink.flush()
    before = connect(tmp_path).execute("select ts, price from trades order by all").fetchall()
    res = compact_data_dir(tmp_path)
    assert (res.files_in, res.files_out, res.rows) == (4, 1, 120)
    files = list((tmp_path / "trades").rglob("*.parquet"))
    assert len(files) == 1
    ts = pq.read_table(files[0]).column("ts").to_pylist()
    assert ts == sorted(ts)
    assert connect(tmp_path).execute("select ts, price from trades order by all").fetchall() == before


def test_recover_finishes_an_interrupted_replacement(tmp_path):
    sink = ParquetSink(tmp_path)
    for _ in range(2):
        sink.buffer("trades", "bitmart", "BTC-USDT").extend(trade(i, T0 - DAY + i) for i in range(10))
        sink.flush()
    part = next((tmp_path / "trades").rglob("date=*"))
    old = sorted(part.glob("*.parquet"))
    # Simulate a crash after the merged file was published but before the inputs were removed.
    import pyarrow as pa

    from recorder.storage.compact import sort_for_storage
    from recorder.storage.sink import write_parquet_atomic

    merged = sort_for_storage("trades", pa.concat_tables([pq.read_table(f) for f in old]))
    new = write_parquet_atomic(merged, part / "merged.parquet")
    marker = {"new": "merged.parquet", "old": [f.name for f in old]}
    (part / f"{MARKER_PREFIX}x.json").write_text(json.dumps(marker))
    (part / ".half-written.parquet.tmp").write_bytes(b"PAR1 torn")
    assert recover(tmp_path) == 2
    assert sorted(p.name for p in part.iterdir()) == [new.name]
    assert connect(tmp_path).execute("select count(*) from trades").fetchone() == (20,)


def test_reader_never_sees_a_partial_file_while_writer_runs(tmp_path):
    """A DuckDB reader polling during many publishes never fails on a half-written file."""
    code = (
        "import sys; from recorder.storage.sink import ParquetSink\n"
        f"s = ParquetSink({str(tmp_path)!r})\n"
        "for k in range(40):\n"
        "    s.buffer('trades','bitmart','BTC-USDT').extend((1700000000000000+k*1000+i, 0, None, 'buy', 1.0, 2.0) for i in range(20000))\n"
        "    s.flush()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    seen = 0
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if any((tmp_path / "trades").rglob("*.parquet")):
                n = connect(tmp_path).execute("select count(*) from trades").fetchone()[0]
                assert n % 20000 == 0
                seen += 1
    finally:
        proc.kill() if proc.poll() is None else None
        proc.wait()
    assert proc.returncode == 0
    assert connect(tmp_path).execute("select count(*) from trades").fetchone() == (800_000,)


def test_failure_on_the_second_date_of_a_flush_takes_back_the_first(tmp_path):
    """A flush spanning midnight is all or nothing: no row is published twice after a retry."""
    errors: list[str] = []
    sink = ParquetSink(tmp_path, on_error=errors.append)
    sink.buffer("trades", "bitmart", "BTC-USDT").extend(trade(i, T0 + i * 3_600_000_000) for i in range(5))
    blocker = tmp_path / "trades/exchange=bitmart/symbol=BTC-USDT/date=2023-11-15"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the second date's directory must go")
    assert sink.flush() == 0 and errors
    assert not list((tmp_path / "trades").rglob("*.parquet"))  # the first date's file was taken back
    blocker.unlink()
    assert sink.flush() == 5
    con = connect(tmp_path)
    assert con.execute("select count(*), count(distinct ts) from trades").fetchone() == (5, 5)


def book_rows(n: int, t0: int = T0) -> list[tuple]:
    """Rows as the hot path appends them: a message's levels share its timestamps and sequence."""
    rows = []
    for i in range(n // 4):
        ts, recv, seq = t0 + i * 1000, t0 + i * 1000 + 7, 10_000 + i
        for side in ("bid", "bid", "ask", "ask"):
            rows.append((ts, recv, seq, False, side, 100.0 + (i % 97) * 0.01, 0.5 + i % 13))
    return rows


def test_buffered_bytes_estimate_follows_the_memory_rows_really_hold(tmp_path):
    import tracemalloc

    sink = ParquetSink(tmp_path)
    buf = sink.buffer("book_updates", "bitmart", "BTC-USDT")
    buf.extend(book_rows(2_000))
    assert sink.buffered_bytes() > 0  # a guess before anything was written
    assert sink.flush() == 2_000  # measures the table's bytes per row
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        buf.extend(book_rows(100_000, T0 + 10**9))
        real = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    estimate = sink.buffered_bytes()
    assert 0.8 * real < estimate < 1.3 * real, (estimate, real)
    sink.take()
    assert sink.buffered_bytes() == 0


def test_take_largest_takes_the_biggest_buffers_and_leaves_the_tail(tmp_path):
    sink = ParquetSink(tmp_path)
    big = sink.buffer("book_updates", "bitmart", "BTC-USDT")
    mid = sink.buffer("book_updates", "bitmart", "ETH-USDT")
    tail = [sink.buffer("trades", "bitmart", f"T{i}-USDT") for i in range(5)]
    big.extend(book_rows(4_000))
    mid.extend(book_rows(400))
    for b in tail:
        b.extend(trade(i, T0 + i) for i in range(3))
    small = sink.buffered_bytes() - len(big) * sink.row_bytes["book_updates"]
    taken = sink.take_largest(small)  # exactly what is left once the biggest is gone
    assert list(taken) == [("book_updates", "bitmart", "BTC-USDT")]
    assert len(taken[("book_updates", "bitmart", "BTC-USDT")]) == 4_000
    assert big == [] and sink.buffer("book_updates", "bitmart", "BTC-USDT") is big  # appenders keep their list
    assert len(mid) == 400 and all(len(b) == 3 for b in tail)
    assert set(sink.take_largest(0)) == {("book_updates", "bitmart", "ETH-USDT")} | {
        ("trades", "bitmart", f"T{i}-USDT") for i in range(5)
    }
    assert sink.buffered_bytes() == 0 and sink.take_largest(0) == {}
    assert sink.write(taken) == 4_000
