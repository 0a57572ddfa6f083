"""Bytes on disk per stored row, per table (zstd), as recorded and after `recorder compact`.

Not a test. Records a `--sim` run with the real `recorder run` command (live files, one per flush
per partition), measures every table, runs the real `recorder compact`, measures again. Each figure
is the files' whole size (footers included) over their rows; the per-column part comes from the
Parquet footers. For comparison, the same rows are re-encoded in memory with the writer options
before issue 12 (zstd 3, dictionary for the low-cardinality strings, everything else PLAIN), file
by file for the live files, partition by partition for the compacted ones; and the CPU that each
option set costs to encode the live files is timed (the flush runs on the recorder's core).

    python benchmarks/bench_disk.py                       # 4 symbols, 2,000 events/s, 30 s
    python benchmarks/bench_disk.py --symbols 20 --seconds 60 --flush-interval 10
    python benchmarks/bench_disk.py --data-dir DIR        # measure a copy of an existing data dir
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recorder.model import DICTIONARY_COLUMNS
from recorder.storage.sink import COMPACT_ZSTD_LEVEL, ROW_GROUP_SIZE, writer_options

OUT = Path(__file__).parent / "out"
TABLES = ("book_updates", "trades", "book_snapshots", "events")


def old_options(columns: list[str]) -> dict:
    """The writer options before issue 12 (live and compacted files alike)."""
    return {
        "compression": "zstd",
        "compression_level": 3,
        "use_dictionary": [c for c in DICTIONARY_COLUMNS if c in columns],
        "row_group_size": ROW_GROUP_SIZE,
    }


def encoded(tbl: pa.Table, options: dict) -> tuple[int, float]:
    """(bytes, CPU seconds) of `tbl` written with `options`, in memory."""
    buf = io.BytesIO()
    t0 = time.process_time()
    pq.write_table(tbl, buf, **options)
    return buf.tell(), time.process_time() - t0


def files_of(root: Path, table: str) -> list[Path]:
    return sorted(p for p in (root / table).rglob("*.parquet") if not p.name.startswith("."))


def measure(root: Path, compacted: bool) -> dict:
    """Per table: files, rows, bytes per row on disk and per column, and the same rows re-encoded
    with the old options (file by file). Live files also get the encode CPU of both option sets."""
    out = {}
    encoded(pa.table({"ts": [1]}), old_options(["ts"]))  # the writer's first use costs start-up
    for table in TABLES:
        files = files_of(root, table)
        rows = size = old = 0
        cpu_now = cpu_old = 0.0
        columns: Counter[str] = Counter()
        for f in files:
            md = pq.read_metadata(f)
            rows += md.num_rows
            size += f.stat().st_size
            for g in range(md.num_row_groups):
                group = md.row_group(g)
                for c in range(group.num_columns):
                    col = group.column(c)
                    columns[col.path_in_schema.split(".")[0]] += col.total_compressed_size
            tbl = pq.read_table(f)
            b, cpu = encoded(tbl, old_options(tbl.column_names))
            old += b
            cpu_old += cpu
            if not compacted:
                _, cpu = encoded(tbl, writer_options(tbl.column_names))
                cpu_now += cpu
        if not rows:
            continue
        entry = {
            "files": len(files),
            "rows": rows,
            "bytes_per_row": round(size / rows, 2),
            "old_options_bytes_per_row": round(old / rows, 2),
            "columns_bytes_per_row": {k: round(v / rows, 2) for k, v in columns.items()},
        }
        if not compacted:
            entry["encode_cpu_us_per_row"] = {
                "old": round(cpu_old / rows * 1e6, 3),
                "now": round(cpu_now / rows * 1e6, 3),
            }
        out[table] = entry
    return out


def describe(root: Path) -> dict:
    """What the simulator's data looks like, as far as compression cares."""
    import recorder

    con = recorder.connect(root)
    book = con.execute(
        """select count(*), count(distinct (symbol, price)), count(distinct amount),
                  count(distinct (symbol, recv_ts)), 0,
                  (select median(hi / lo) from (select max(price) hi, min(price) lo from book_updates
                                                group by symbol))
           from book_updates"""
    ).fetchone()
    trades = con.execute(
        "select count(*), count(distinct (symbol, price)), count(distinct amount), count(distinct ts) from trades"
    ).fetchone()
    return {
        "book_updates": {
            "rows": book[0],
            "distinct_prices": book[1],
            "distinct_amounts": book[2],
            "rows_per_message": round(book[0] / max(1, book[3]), 2),
            "price_max_over_min_per_symbol": round(book[5], 3),
        },
        "trades": {
            "rows": trades[0],
            "distinct_prices": trades[1],
            "distinct_amounts": trades[2],
            "distinct_ts": trades[3],
        },
    }


def record(data: Path, symbols: int, rate: float, seconds: float, flush: float) -> None:
    cmd = [
        sys.executable,
        "-m",
        "recorder.cli",
        "run",
        "bitmart",
        "--all",
        "--sim",
        "--sim-symbols",
        str(symbols),
        "--sim-rate",
        str(rate),
        "--duration",
        str(seconds),
        "--flush-interval",
        str(flush),
        "--data-dir",
        str(data),
        "--no-raw",
        "-q",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if proc.returncode != 0:
        raise SystemExit(f"recorder run failed: {proc.stderr.strip()[-400:]}")


def compact(data: Path) -> float:
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "recorder.cli", "compact", "--data-dir", str(data), "--include-today"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"recorder compact failed: {proc.stderr.strip()[-400:]}")
    return time.monotonic() - t0


def print_table(res: dict) -> None:
    print(
        f"{'table':16}{'rows':>10}{'live B/row':>12}{'(old opts)':>12}{'compacted':>11}{'(old opts)':>12}"
        f"{'live encode µs/row now/old':>30}"
    )
    for table in TABLES:
        live, comp = res["live"].get(table), res["compacted"].get(table)
        if not live:
            continue
        cpu = live["encode_cpu_us_per_row"]
        print(
            f"{table:16}{live['rows']:>10}{live['bytes_per_row']:>12}{live['old_options_bytes_per_row']:>12}"
            f"{comp['bytes_per_row']:>11}{comp['old_options_bytes_per_row']:>12}"
            f"{cpu['now']:>18} / {cpu['old']}"
        )
    for table in ("book_updates", "trades"):
        cols = res["compacted"][table]["columns_bytes_per_row"]
        print(f"{table} compacted, per column: " + ", ".join(f"{k} {v}" for k, v in cols.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=4)
    ap.add_argument("--rate", type=float, default=2000.0, help="simulator market events per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--flush-interval", type=float, default=5.0, help="the recorder's (live files' size)")
    ap.add_argument("--data-dir", type=Path, help="measure a copy of this data dir instead of recording")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-disk-"))
    data = tmp / "data"
    try:
        if a.data_dir:
            shutil.copytree(a.data_dir, data, ignore=shutil.ignore_patterns("raw"))
        else:
            record(data, a.symbols, a.rate, a.seconds, a.flush_interval)
        res = {
            "source": str(a.data_dir)
            if a.data_dir
            else f"--sim, {a.symbols} symbols, {a.rate:g} events/s, {a.seconds:g} s, flush every {a.flush_interval:g} s",
            "live": measure(data, compacted=False),
            "data": describe(data),
        }
        res["compact_seconds"] = round(compact(data), 2)
        res["compacted"] = measure(data, compacted=True)
        res["compact_zstd_level"] = COMPACT_ZSTD_LEVEL
        res["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        res["machine"] = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
        # a sanity check that compaction kept every row
        for table, live in res["live"].items():
            assert res["compacted"][table]["rows"] == live["rows"], table
        OUT.mkdir(exist_ok=True)
        (OUT / "disk.json").write_text(json.dumps(res, indent=2))
        print(json.dumps(res["data"], indent=2))
        print_table(res)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
