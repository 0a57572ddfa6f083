"""Benchmark: 10M trades in Parquet -> candles, against bare DuckDB and pandas on the same files.

    python benchmarks/bench_candles.py [--trades 10000000] [--days 4] [--repeat 3] [--data-dir DIR]
    python benchmarks/bench_candles.py --many-symbols 200 [--repeat 3]

Generates synthetic trades in the contract layout (hourly files through the one writer; taker
orders of 1-4 fills sharing a millisecond, so ties on exchange time are common), covered by
`subscribed`/`stop` events, then times (best of --repeat, warm page cache):

  full build, all 7 intervals   build_candles() on an empty candles table, Parquet written
  full build, 1m only           the same with intervals=("1m",)
  bare DuckDB 1m                time_bucket group-by (arg_min/arg_max on ts) into Arrow
  pandas 1m                     read_parquet + resample('1min') ohlc/sum/count
  incremental, +1 hour          build_candles() after one more hourly file lands in the last date
  no-op rebuild                 build_candles() with nothing changed

`--many-symbols N` times only the per-stream overhead instead: N symbols with 6 trades each (three
files of two trades, as three flushes write them, plus their events), full build and no-op rebuild.

Prints a table and writes the figures as JSON to benchmarks/out/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recorder.candles.build import build_candles  # noqa: E402
from recorder.model import SCHEMAS  # noqa: E402
from recorder.storage.sink import ParquetSink, rows_to_table  # noqa: E402

EX, SYM = "bitmart", "BTC-USDT"
HOUR_US = 3_600_000_000
START_US = 1_717_200_000_000_000 // 86_400_000_000 * 86_400_000_000  # 2024-06-01 00:00 UTC
ALL = ("1s", "1m", "5m", "15m", "1h", "4h", "1d")
NO_1S = ALL[1:]
OUT = Path(__file__).resolve().parent / "out"


def synthetic_hour(rng: np.random.Generator, hour: int, n: int, price0: float) -> tuple[pa.Table, float]:
    """`n` trades in one hour: taker orders at ms times, each walking 1-4 price levels."""
    fills = np.minimum(rng.geometric(0.55, n), 4)
    orders = int(np.searchsorted(np.cumsum(fills), n)) + 1
    fills = fills[:orders]
    fills[-1] -= fills.sum() - n
    t0 = START_US + hour * HOUR_US
    ts_ms = np.sort(rng.integers(t0 // 1000, (t0 + HOUR_US) // 1000, orders))
    side_buy = rng.random(orders) < 0.5
    mid = price0 + np.cumsum(rng.normal(0, 0.8, orders))
    ts = np.repeat(ts_ms * 1000, fills)
    level = np.arange(fills.sum()) - np.repeat(np.cumsum(fills) - fills, fills)  # 0.. within an order
    buy = np.repeat(side_buy, fills)
    price = np.round(np.repeat(mid, fills) + np.where(buy, level, -level) * 0.01, 2)
    amount = np.round(rng.exponential(0.02, ts.size) + 0.00001, 5)
    recv = ts + np.repeat(rng.integers(3_000, 40_000, orders), fills)
    schema = SCHEMAS["trades"]
    tbl = pa.Table.from_arrays(
        [
            pa.array(ts).cast(schema.field("ts").type),
            pa.array(recv).cast(schema.field("recv_ts").type),
            pa.nulls(ts.size, pa.string()),
            pa.array(np.where(buy, "buy", "sell")),
            pa.array(price),
            pa.array(amount),
        ],
        schema=schema,
    )
    return tbl, float(mid[-1])


def generate(data_dir: Path, trades: int, days: int, seed: int = 1) -> pa.Table:
    """`trades` over all hours but the last of the last day; returns that held-back hour (same size)."""
    rng = np.random.default_rng(seed)
    sink = ParquetSink(data_dir)
    hours = days * 24
    per_hour = -(-trades // (hours - 1))
    price = 65_000.0
    for hour in range(hours - 1):
        tbl, price = synthetic_hour(rng, hour, per_hour, price)
        sink.write_table("trades", EX, SYM, tbl)
    last, _ = synthetic_hour(rng, hours - 1, per_hour, price)
    events = [(START_US - 60_000_000, "subscribed"), (START_US + hours * HOUR_US + 1, "stop")]
    rows = [(t, t, "trades", e, "") for t, e in events]
    sink.write_table("events", EX, SYM, rows_to_table("events", rows))
    return last


def reset_candles(data_dir: Path) -> None:
    shutil.rmtree(data_dir / "candles", ignore_errors=True)


def bare_duckdb(data_dir: Path) -> None:
    glob = str(data_dir / "trades" / "*" / "*" / "*" / "*.parquet")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.sql(
        "SELECT time_bucket(INTERVAL 1 minute, ts) AS t, arg_min(price, ts) AS open, max(price) AS high, "
        "min(price) AS low, arg_max(price, ts) AS close, sum(amount) AS volume, "
        f"sum(price * amount) AS quote_volume, count(*) AS trades FROM read_parquet('{glob}') GROUP BY 1"
    ).to_arrow_table()
    con.close()


def pandas_resample(data_dir: Path) -> None:
    df = pd.read_parquet(
        data_dir / "trades" / f"exchange={EX}" / f"symbol={SYM}", columns=["ts", "price", "amount"]
    )
    df["qv"] = df["price"] * df["amount"]
    r = df.set_index("ts").sort_index(kind="stable").resample("1min")
    ohlc = r["price"].ohlc()
    ohlc["volume"] = r["amount"].sum()
    ohlc["quote_volume"] = r["qv"].sum()
    ohlc["trades"] = r["price"].count()


class Steps:
    """The timed steps; each takes the data dir and returns (seconds, what the build did)."""

    def __init__(self, data_dir: Path, extra: pa.Table) -> None:
        self.data_dir, self.extra = data_dir, extra

    def full(self, intervals: tuple[str, ...]) -> tuple[float, str]:
        reset_candles(self.data_dir)
        return timed(lambda: build_candles(self.data_dir, intervals=intervals))

    def incremental(self, intervals: tuple[str, ...]) -> tuple[float, str]:
        """A build after one more hourly file lands (taken out again afterwards)."""
        build_candles(self.data_dir, intervals=intervals)  # the base state, without the extra hour
        [path] = ParquetSink(self.data_dir).write_table("trades", EX, SYM, self.extra)
        try:
            return timed(lambda: build_candles(self.data_dir, intervals=intervals))
        finally:
            path.unlink()

    def noop(self) -> tuple[float, str]:
        build_candles(self.data_dir)
        return timed(lambda: build_candles(self.data_dir))

    def table(self) -> dict[str, Callable[[], tuple[float, str]]]:
        return {
            "full build, all 7 intervals": lambda: self.full(ALL),
            "full build, 1m only": lambda: self.full(("1m",)),
            "bare DuckDB time_bucket 1m": lambda: timed(lambda: bare_duckdb(self.data_dir)),
            "pandas read_parquet + resample 1m": lambda: timed(lambda: pandas_resample(self.data_dir)),
            "incremental, +1 hour of trades": lambda: self.incremental(ALL),
            "no-op rebuild": self.noop,
            "full build, 6 intervals (no 1s)": lambda: self.full(NO_1S),
            "incremental, +1 hour, no 1s": lambda: self.incremental(NO_1S),
        }


def timed(fn: Callable[[], object]) -> tuple[float, str]:
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    actions = ",".join(sorted({a[3] for a in result.actions})) if hasattr(result, "actions") else ""
    return seconds, actions


def measure(steps: Steps, repeat: int) -> tuple[dict[str, float], dict[str, str]]:
    """Best of `repeat` rounds; every round runs every step once, so load spikes hit all steps alike."""
    times: dict[str, list[float]] = {}
    did: dict[str, str] = {}
    for _ in range(repeat):
        for name, step in steps.table().items():
            seconds, did[name] = step()
            times.setdefault(name, []).append(seconds)
    return {name: min(t) for name, t in times.items()}, did


def generate_many(data_dir: Path, symbols: int, seed: int = 1) -> int:
    """`symbols` streams of one hour with 6 trades each, written as 3 flushes; returns the trade count."""
    rng = np.random.default_rng(seed)
    sink = ParquetSink(data_dir)
    n = 0
    for i in range(symbols):
        sym = f"S{i:04d}-USDT"
        for flush in range(3):
            t = START_US + flush * 20 * 60_000_000 + np.sort(rng.integers(0, 20 * 60_000_000, 2))
            rows = [(int(x), int(x) + 5_000, None, "buy", 10.0 + i, 0.5) for x in t]
            sink.write_table("trades", EX, sym, rows_to_table("trades", rows))
            n += len(rows)
        events = [(START_US - 60_000_000, "subscribed"), (START_US + HOUR_US, "stop")]
        sink.write_table("events", EX, sym, rows_to_table("events", [(t, t, "trades", e, "") for t, e in events]))
    return n


def many_symbols(symbols: int, repeat: int) -> None:
    """Full build and no-op rebuild of many tiny streams: the per-stream, per-date overhead."""
    data_dir = Path(tempfile.mkdtemp(prefix="bench-candles-many-"))
    try:
        n = generate_many(data_dir, symbols)
        full, noop = [], []
        for _ in range(repeat):
            reset_candles(data_dir)
            full.append(timed(lambda: build_candles(data_dir))[0])
            noop.append(timed(lambda: build_candles(data_dir))[0])
        print(f"{symbols} symbols, {n:,} trades, best of {repeat}: full build {min(full):.2f} s, "
              f"no-op rebuild {min(noop):.3f} s")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trades", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, help="keep the generated data here (default: a temp dir)")
    parser.add_argument("--many-symbols", type=int, help="time only N tiny streams (per-stream overhead)")
    args = parser.parse_args()
    if args.many_symbols:
        many_symbols(args.many_symbols, args.repeat)
        return

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-candles-"))
    try:
        started = time.perf_counter()
        extra = generate(data_dir, args.trades, args.days)
        generated = time.perf_counter() - started
        con = duckdb.connect()
        n = con.sql(f"SELECT count(*) FROM read_parquet('{data_dir}/trades/*/*/*/*.parquet')").fetchall()
        con.close()
        build_candles(data_dir)  # warm the page cache and the imports
        figures, did = measure(Steps(data_dir, extra), args.repeat)
        report(figures, n[0][0], args, generated, did["incremental, +1 hour of trades"], data_dir)
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)


def report(
    figures: dict[str, float],
    n: int,
    args: argparse.Namespace,
    generated: float,
    actions: str,
    data_dir: Path,
) -> None:
    full, one_m = figures["full build, all 7 intervals"], figures["full build, 1m only"]
    bare, inc = figures["bare DuckDB time_bucket 1m"], figures["incremental, +1 hour of trades"]
    no_1s = figures["incremental, +1 hour, no 1s"] / figures["full build, 6 intervals (no 1s)"]
    checks = {
        "all 7 intervals < 2 s": full < 2.0,
        "1m within 1.3x of bare DuckDB": one_m <= 1.3 * bare,
        "incremental < 10 % of full build": inc < 0.1 * full,
    }
    print(
        f"\n{n:,} trades over {args.days} day(s) in {data_dir} (generated in {generated:.1f} s); "
        f"{os.cpu_count()} cores; best of {args.repeat}\n"
    )
    print(f"{'step':<38}{'seconds':>9}")
    for name, secs in figures.items():
        print(f"{name:<38}{secs:>9.3f}")
    print(
        f"\n1m build / bare DuckDB: {one_m / bare:.2f}x   incremental / full: {100 * inc / full:.1f} % "
        f"(without 1s: {100 * no_1s:.1f} %; the incremental run did: {actions})"
    )
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {name}")
    OUT.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    doc = {
        "when": stamp,
        "trades": n,
        "days": args.days,
        "repeat": args.repeat,
        "cores": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "seconds": figures,
        "ratios": {
            "1m_vs_bare_duckdb": one_m / bare,
            "incremental_vs_full": inc / full,
            "incremental_vs_full_no_1s": no_1s,
        },
        "targets_met": checks,
        "incremental_actions": actions,
    }
    path = OUT / f"bench_candles-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
