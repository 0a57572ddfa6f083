"""Full-size recording: every market of a BitMart-sized venue at skewed live rates, for minutes.

Not a test. The BitMart spot simulator (its own process, pinned to core 1) lists `--symbols`
synthetic markets (BitMart lists about 1,500 spot markets) and generates market events live at
skewed rates (`Market.set_activity`): `--liquid` markets push every 100 ms (10 events/s each), the
next `--mid` ones every 2 s, and the long tail `--tail-per-min` times a minute. The real
`recorder run bitmart` command (pinned to core 0, default options: 60 s flushes, raw capture on)
records every market, both channels (trades and the increase100 book). Every second the recorder's
RSS and CPU time are sampled from /proc. At the end the market is frozen, the recorder gets two
seconds to read what is in flight, the simulator's books and sent trades are taken as the truth,
and the recorder is stopped (SIGTERM). Checks: every trade sent is stored once, every book rebuilt
from `book_updates` equals the simulator's book at its final version, no gap/error/disconnect
events.

    python benchmarks/bench_full.py                       # 1,500 markets, 180 s
    python benchmarks/bench_full.py --symbols 100 --liquid 5 --mid 20 --seconds 120
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
TICK = os.sysconf("SC_CLK_TCK")


def activity(names: list[str], liquid: int, mid: int, tail_per_min: float) -> dict[str, float]:
    """Events per second per market: the first `liquid` every 100 ms, the next `mid` every 2 s, the rest
    `tail_per_min` a minute."""
    rates = {}
    for i, name in enumerate(names):
        rates[name] = 10.0 if i < liquid else 0.5 if i < liquid + mid else tail_per_min / 60
    return rates


def sim_process(conn, symbols: int, liquid: int, mid: int, tail_per_min: float) -> None:
    os.sched_setaffinity(0, {1})
    from recorder import venues

    async def main() -> None:
        cls = venues.simulator("bitmart")
        sim = cls(symbols=symbols, seed=1, rate=1.0, include_pre_trade=False)
        users = [sim.market.resolve(s) for s in sim.trading_symbols]
        rates = activity(users, liquid, mid, tail_per_min)
        sim.rate = sum(rates.values())
        sim.market.set_activity(rates)
        await sim.start(host="127.0.0.1", port=0)
        conn.send((sim.ws_url, sim.rest_url, users, sim.rate))
        while not conn.poll(0.2):
            await asyncio.sleep(0.2)
        conn.recv()
        sim.pause()  # freeze the market; the recorder reads what is in flight
        await sim.drain()
        await asyncio.sleep(2.0)
        books = {}
        for user in users:
            seq, bids, asks = sim.truth_book(user)
            books[user] = (seq, bids, asks)
        trades = sum(len(v) for c in sim.connections for v in c.sent_trades.values())
        frames = sum(c.frames_sent for c in sim.connections)
        conn.send({"books": books, "trades": trades, "frames": frames, "connections": len(sim.connections)})
        conn.recv()
        await sim.stop()

    asyncio.run(main())


def proc_sample(pid: int) -> tuple[float, int]:
    """(CPU seconds so far, RSS bytes) of process `pid`."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    with open(f"/proc/{pid}/statm") as fh:
        rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def run(symbols: int, seconds: float, liquid: int, mid: int, tail_per_min: float, warmup: float) -> dict:
    parent, child = mp.Pipe()
    proc = mp.Process(target=sim_process, args=(child, symbols, liquid, mid, tail_per_min), daemon=True)
    proc.start()
    ws_url, rest_url, users, rate = parent.recv()
    data = Path(tempfile.mkdtemp(prefix="bench-full-"))
    cmd = [
        "taskset", "-c", "0", sys.executable, "-m", "recorder.cli", "run", "bitmart", "--all",
        "--ws-url", ws_url, "--rest-url", rest_url, "--data-dir", str(data), "-q",
    ]
    load_before = os.getloadavg()
    started = time.monotonic()
    rec = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    samples = []  # (seconds since start, cpu seconds, rss bytes)
    while time.monotonic() - started < seconds:
        time.sleep(1.0)
        if rec.poll() is not None:
            raise SystemExit(f"recorder exited early: {rec.stderr.read()}")
        samples.append((time.monotonic() - started, *proc_sample(rec.pid)))
    parent.send("freeze")
    truth = parent.recv()
    rec.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(rec.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    load_after = os.getloadavg()
    err = rec.stderr.read()
    parent.send("stop")
    proc.join(10)
    if code != 0:
        raise SystemExit(f"recorder failed ({code}): {err}")
    try:
        return measure(data, truth, usage, samples, users, rate, seconds, warmup, (load_before, load_after), err)
    finally:
        shutil.rmtree(data, ignore_errors=True)  # a few minutes of 1,500 markets otherwise left in /tmp


def measure(data, truth, usage, samples, users, rate, seconds, warmup, loads, err) -> dict:
    import duckdb

    import recorder
    from recorder.bookreplay import replay_rows
    from recorder.query import HIVE_TYPES

    con = recorder.connect(data)
    trades = con.execute("select count(*) from trades").fetchone()[0]
    dup = con.execute(
        "select count(*) - count(distinct (symbol, ts, side, price, amount, recv_ts)) from trades"
    ).fetchone()[0]
    updates = con.execute("select count(*) from book_updates").fetchone()[0]
    snaps = con.execute("select count(*) from book_snapshots").fetchone()[0]
    bad = con.execute("select count(*) from events where event in ('gap', 'error', 'disconnect')").fetchone()[0]
    files = sum(1 for _ in data.rglob("*.parquet"))
    # every book rebuilt the way `recorder.bookreplay.rebuild_book` does (file order), in one query
    cols = duckdb.sql(
        f"""SELECT symbol, recv_ts, ts, seq, is_snapshot, side, price, amount
            FROM read_parquet('{data}/book_updates/*/*/*/*.parquet', hive_partitioning = true,
                              hive_types = {HIVE_TYPES}, filename = true, file_row_number = true)
            ORDER BY symbol, date, filename, file_row_number"""
    ).to_arrow_table().to_pydict()
    spans: dict[str, list[int]] = {}
    for i, sym in enumerate(cols["symbol"]):
        spans.setdefault(sym, [i, i])[1] = i + 1
    invalid = []
    for user in users:
        seq, bids, asks = truth["books"][user]
        lo, hi = spans.get(user, (0, 0))
        book = replay_rows({k: v[lo:hi] for k, v in cols.items() if k != "symbol"})
        if book.seq != seq or book.bids != bids or book.asks != asks:
            invalid.append(user)
    steady = [s for s in samples if s[0] >= warmup]
    cpu_pct = 100 * (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0]) if len(steady) > 1 else None
    return {
        "markets": len(users),
        "event_rate_per_s": round(rate, 1),
        "seconds": seconds,
        "sim_connections": truth["connections"],
        "frames_sent": truth["frames"],
        "trades_sent": truth["trades"],
        "trades_stored": trades,
        "lost_trades": truth["trades"] - trades,
        "duplicate_trades": dup,
        "book_updates_rows": updates,
        "book_snapshot_rows": snaps,
        "parquet_files": files,
        "books_invalid": len(invalid),
        "invalid_examples": invalid[:5],
        "gaps_errors_disconnects": bad,
        f"cpu_pct_one_core_after_{warmup:g}s": round(cpu_pct, 1) if cpu_pct is not None else None,
        "cpu_s_total": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "rss_mb_at": {f"{int(t)}s": round(r / 2**20) for t, _, r in samples[:: max(1, len(samples) // 12)]},
        "load_avg_1m_before_after": [round(loads[0][0], 2), round(loads[1][0], 2)],
        "stderr_tail": err[-500:],
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=1500)
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--liquid", type=int, default=20, help="markets pushing every 100 ms")
    ap.add_argument("--mid", type=int, default=200, help="markets pushing every 2 s")
    ap.add_argument("--tail-per-min", type=float, default=3.0, help="events a minute of every other market")
    ap.add_argument("--warmup", type=float, default=30, help="seconds left out of the CPU figure (subscribing)")
    a = ap.parse_args()
    res = run(a.symbols, a.seconds, a.liquid, a.mid, a.tail_per_min, a.warmup)
    OUT.mkdir(exist_ok=True)
    (OUT / f"full-{a.symbols}sym.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
