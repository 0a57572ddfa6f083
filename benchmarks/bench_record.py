"""End-to-end recording throughput: simulator at full speed -> `recorder run` -> Parquet.

Not a test. The simulator runs in its own process pinned to core 1 and blasts a pre-encoded tape
(80/20 depth/trade mix, raw-deflate binary frames) as fast as the socket takes it; the real
`recorder run` command runs pinned to core 0. Because the sender only goes as fast as the
receiver reads, the rate is the recorder's. Afterwards the Parquet output is checked against what
the simulator sent: zero lost trades, every depth message stored, zero sequence gaps.

    python benchmarks/bench_record.py --symbols 1 --events 400000
    python benchmarks/bench_record.py --symbols 100 --events 400000
    python benchmarks/bench_record.py --exchange bitmart_perpetual --symbols 1

`--exchange bitmart_perpetual` runs the same against the perpetual simulator's tape (TEXT JSON frames,
sizes in contracts, an empty push after every 64th update): the recorder also subscribes ticker and
funding, and the check adds that every non-empty depthIncrease update sent is stored.
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


def sim_process(conn, symbols: int, events: int, exchange: str = "bitmart") -> None:
    os.sched_setaffinity(0, {1})
    from recorder import venues

    async def main() -> None:
        cls = venues.simulator(exchange)
        sim = cls(symbols=symbols, seed=1, rate=0, tape_events=events, include_pre_trade=False)
        await sim.start(host="127.0.0.1", port=0)
        # user symbols (BASE-QUOTE) are the market's own ids
        conn.send((sim.ws_url, sim.rest_url, [sim.market.resolve(s) for s in sim.trading_symbols]))
        while True:
            await asyncio.sleep(0.2)
            if conn.poll():
                conn.recv()
                trades = sum(len(v) for c in sim.connections for v in c.sent_trades.values())
                frames = sum(c.frames_sent for c in sim.connections)
                report = {"frames": frames, "trades": trades}
                if hasattr(sim, "tape_stats"):  # non-empty depth updates written, from the venue's tapes
                    report["depth_updates"] = sim.tape_stats()["updates_sent"]
                conn.send(report)
                break
            # binary (market data) bytes only: the recorder's keepalive pings and their pongs go on
            # after the tape ends and must not look like data still flowing
            conn.send(("progress", sum(c.bytes_sent for c in sim.connections)))
        await sim.stop()

    asyncio.run(main())


def run(symbols: int, events: int, raw: bool, profile: str | None = None, exchange: str = "bitmart") -> dict:
    parent, child = mp.Pipe()
    proc = mp.Process(target=sim_process, args=(child, symbols, events, exchange), daemon=True)
    proc.start()
    ws_url, rest_url, names = parent.recv()
    users = names[:symbols]
    data = Path(tempfile.mkdtemp(prefix="bench-record-"))
    cmd = [
        "taskset", "-c", "0", sys.executable, "-m", "recorder.cli", "run", exchange, *users,
        "--ws-url", ws_url, "--rest-url", rest_url, "--data-dir", str(data), "-q",
    ]
    if not raw:
        cmd.append("--no-raw")
    rec = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    spy = None
    if profile:  # sample the recorder with py-spy (collapsed stacks), e.g. to find hot spots
        spy = subprocess.Popen(["py-spy", "record", "-r", "200", "-f", "raw", "-o", profile, "--pid", str(rec.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last, still, started = -1, 0.0, time.monotonic()
    while True:  # wait until the simulator has sent the whole tape (data bytes stop moving)
        msg = _recv(parent, rec)
        sent_bytes = msg[1]
        if sent_bytes == last and sent_bytes > 0:
            still += 0.2
            if still >= 2.0:
                break
        else:
            last, still = sent_bytes, 0.0
        if time.monotonic() - started > 600:
            break
    rec.send_signal(signal.SIGTERM)  # stop the recorder first: the simulator closing would log disconnects
    _, status, usage = os.wait4(rec.pid, 0)
    rec.returncode = os.waitstatus_to_exitcode(status)
    parent.send("report")
    while True:
        msg = _recv(parent, rec)
        if isinstance(msg, dict):
            sent = msg
            break
    err = rec.stderr.read()
    if spy is not None:
        spy.wait(30)
    proc.join(10)
    try:
        if rec.returncode != 0:
            raise SystemExit(f"recorder failed: {err}")
        return measure(data, sent, usage, symbols, raw, exchange)
    finally:
        shutil.rmtree(data, ignore_errors=True)  # hundreds of MB per run otherwise left in /tmp


def _recv(parent, rec: subprocess.Popen, timeout: float = 30.0):
    """The simulator reports every 0.2 s: silence for `timeout` is a failed run, said in one line
    (a blocking recv would hang the benchmark for good)."""
    if not parent.poll(timeout):
        if rec.poll() is None:
            rec.kill()
        raise SystemExit(f"the simulator process sent nothing for {timeout:g} s: benchmark run failed")
    return parent.recv()


def measure(data: Path, sent: dict, usage, symbols: int, raw: bool, exchange: str = "bitmart") -> dict:
    import recorder

    con = recorder.connect(data)
    trades = con.execute("select count(*) from trades").fetchone()[0]
    depth_msgs, t0, t1 = con.execute(
        "select count(distinct (symbol, recv_ts, seq)), min(recv_ts), max(recv_ts) from book_updates"
    ).fetchone()
    trade_msgs, tt0, tt1 = con.execute(
        "select count(distinct (symbol, recv_ts)), min(recv_ts), max(recv_ts) from trades"
    ).fetchone()
    gaps = con.execute("select count(*) from events where event in ('gap', 'error', 'disconnect')").fetchone()[0]
    start, end = min(t0, tt0), max(t1, tt1)
    seconds = (end - start).total_seconds()
    msgs = depth_msgs + trade_msgs
    cpu = usage.ru_utime + usage.ru_stime
    lost = sent["trades"] - trades
    extra = {}
    if "depth_updates" in sent:  # every non-empty depth update sent is stored (snapshots apart)
        updates = con.execute(
            "select count(distinct (symbol, recv_ts, seq)) from book_updates where not is_snapshot"
        ).fetchone()[0]
        extra = {"depth_updates_sent": sent["depth_updates"], "depth_updates_stored": updates}
        lost += sent["depth_updates"] - updates
    return {
        "exchange": exchange,
        "symbols": symbols,
        "raw_capture": raw,
        "frames_sent": sent["frames"],
        "messages_stored": msgs,
        "seconds": round(seconds, 2),
        "msg_per_s": round(msgs / seconds),
        "trades_sent": sent["trades"],
        "trades_stored": trades,
        "lost_trades": sent["trades"] - trades,
        **extra,
        "gaps_errors_disconnects": gaps,
        "zero_loss": lost == 0 and gaps == 0,
        "cpu_s": round(cpu, 2),
        "cpu_us_per_msg": round(cpu / msgs * 1e6, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--exchange", default="bitmart", help="bitmart (deflated binary frames) or bitmart_perpetual (text)")
    ap.add_argument("--symbols", type=int, default=1)
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--no-raw", action="store_true", help="disable raw capture")
    ap.add_argument("--profile", metavar="PATH", help="record py-spy collapsed stacks of the recorder here")
    a = ap.parse_args()
    res = run(a.symbols, a.events, not a.no_raw, a.profile, a.exchange)
    OUT.mkdir(exist_ok=True)
    venue = "" if a.exchange == "bitmart" else f"-{a.exchange}"
    (OUT / f"record{venue}-{a.symbols}sym{'-noraw' if a.no_raw else ''}.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
