"""End-to-end recording throughput: simulator at full speed -> `recorder run` -> Parquet.

Not a test. The simulator runs in its own process pinned to core 1 and blasts a pre-encoded tape
(80/20 depth/trade mix, raw-deflate binary frames) as fast as the socket takes it; the real
`recorder run` command runs pinned to core 0. Because the sender only goes as fast as the
receiver reads, the rate is the recorder's. Afterwards the Parquet output is checked against what
the simulator sent: zero lost trades, every depth message stored, zero sequence gaps.

    python benchmarks/bench_record.py --symbols 1 --events 400000
    python benchmarks/bench_record.py --symbols 100 --events 400000
    python benchmarks/bench_record.py --exchange bitmart_perpetual --symbols 1
    python benchmarks/bench_record.py --pairs 5   # five recorder/ccxt.pro pairs and their medians

`--exchange bitmart_perpetual` runs the same against the perpetual simulator's tape (TEXT JSON frames,
sizes in contracts, an empty push after every 64th update): the recorder also subscribes ticker and
funding, and the check adds that every non-empty depthIncrease update sent is stored.

Then, in the same run (spot only; `--no-ccxt` skips it), ccxt.pro's BitMart client (the `bitmart`
package, used as a client, unchanged) gets the same tape from a fresh simulator process with the same
seed and events, pinned to the same core as the recorder: `watch_order_book_for_symbols` and
`watch_trades_for_symbols` over the same symbols until the tape is done. Printed side by side with
the recorder's figures, with the ratios recorder/ccxt, so that every change is judged by them.

`--instructions` runs the recorder under valgrind (cachegrind, no cache model) and reports its machine
instructions a message stored, the whole process (start-up, aiohttp, asyncio, the flush thread): a
figure that does not move with the machine's other load, unlike CPU seconds on a shared VM. Under
valgrind the recorder reads ~30x slower and the sender waits for it (TCP); the run ends once the
recorder has read what the sockets held. Its rates and times are valgrind's: only the count means
anything. `python benchmarks/bench_record.py --instructions --events 100000` takes ~2 min.

`--together` runs both at the same time on core 0 (each with its own simulator on core 1), ccxt first
until it has handled half the tape (past its costlier start), and compares their CPU a message in the
same seconds: the host's load moves both alike, so the ratio holds within 2-10 % across a set of runs
(the sequential pairs' ratio moved 3.2-6.4x in one set of five):

    python benchmarks/bench_record.py --together --symbols 100 --pairs 3

Each run also reports `stop_cpu_s` (the recorder's CPU from SIGTERM to its exit: the last flush of
every buffer to Parquet, which ccxt has no counterpart for) and `steal_s` (seconds the hypervisor
took from core 0 during the run, from /proc/stat: a run that lost time to other guests reads slow).
`BENCH_RECORDER_WRAP="perf record -e cpu-clock -g -o F --"` runs the recorder under a wrapper.

Before a run the recorder package's bytecode is written (`compileall`), as installing a wheel does:
an editable install under PYTHONDONTWRITEBYTECODE=1 (this project's machines) never writes it, so
every `recorder run` would compile its own modules again (~0.44 G instructions, ~0.1 s of start-up
that no installed copy pays; ccxt's venv has its bytecode from pip).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def compile_package() -> None:
    """The recorder's .pyc files, as a wheel install writes them (see the module docstring)."""
    import compileall

    import recorder

    compileall.compile_dir(Path(recorder.__file__).parent, quiet=1)


VALGRIND = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]


def run(
    symbols: int,
    events: int,
    raw: bool,
    profile: str | None = None,
    exchange: str = "bitmart",
    instructions: bool = False,
) -> dict:
    compile_package()
    parent, child = mp.Pipe()
    proc = mp.Process(target=sim_process, args=(child, symbols, events, exchange), daemon=True)
    proc.start()
    ws_url, rest_url, names = _recv(parent, None, 120.0)
    data = Path(tempfile.mkdtemp(prefix="bench-record-"))
    cmd = recorder_command(exchange, names[:symbols], ws_url, rest_url, data, raw, instructions)
    steal0 = steal_s()
    rec = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    spy = None
    if profile:  # sample the recorder with py-spy (collapsed stacks), e.g. to find hot spots
        spy = subprocess.Popen(
            ["py-spy", "record", "-r", "200", "--native", "--threads", "-f", "raw", "-o", profile, "--pid", str(rec.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    last, still, started = -1, 0.0, time.monotonic()
    startup_cpu = None
    while True:  # wait until the simulator has sent the whole tape (data bytes stop moving)
        msg = _recv(parent, rec)
        sent_bytes = msg[1]
        if startup_cpu is None and sent_bytes > 0:  # start-up done: subscribed, data flowing
            startup_cpu = proc_cpu_rss(rec.pid)[0]
        if sent_bytes == last and sent_bytes > 0:
            still += 0.2
            if still >= 2.0:
                if instructions:  # under valgrind the recorder is far behind: let it read the backlog
                    wait_idle(rec.pid)
                break
        else:
            last, still = sent_bytes, 0.0
        if time.monotonic() - started > 600:
            break
    stop_cpu = proc_cpu_rss(rec.pid)[0]  # what the stop costs (the last flush of every buffer) is the rest
    rec.send_signal(signal.SIGTERM)  # stop the recorder first: the simulator closing would log disconnects
    _, status, usage = os.wait4(rec.pid, 0)
    rec.returncode = os.waitstatus_to_exitcode(status)
    sent = _final_report(parent, rec)
    err = rec.stderr.read()
    if spy is not None:
        spy.wait(30)
    proc.join(10)
    try:
        if rec.returncode != 0:
            raise SystemExit(f"recorder failed: {err}")
        res = measure(data, sent, usage, symbols, raw, exchange, startup_cpu or 0.0)
        res["stop_cpu_s"] = round(res["cpu_s"] - stop_cpu, 2)
        res["steal_s"] = round(steal_s() - steal0, 2)
        if instructions:
            m = re.search(r"I\s+refs:\s+([\d,]+)", err)
            if m is None:
                raise SystemExit(f"no instruction count from valgrind: {err[-300:]}")
            refs = int(m.group(1).replace(",", ""))
            res["instructions_per_msg"] = round(refs / res["messages_stored"])
        return res
    finally:
        shutil.rmtree(data, ignore_errors=True)  # hundreds of MB per run otherwise left in /tmp


def recorder_command(
    exchange: str, users: list[str], ws_url: str, rest_url: str, data: Path, raw: bool, instructions: bool = False
) -> list[str]:
    """`recorder run` on core 0 against a simulator, as a user starts it."""
    cmd = [
        "taskset",
        "-c",
        "0",
        *(VALGRIND if instructions else []),
        *os.environ.get("BENCH_RECORDER_WRAP", "").split(),
        sys.executable,
        "-m",
        "recorder.cli",
        "run",
        exchange,
        *users,
        "--ws-url",
        ws_url,
        "--rest-url",
        rest_url,
        "--data-dir",
        str(data),
        "-q",
    ]
    return cmd if raw else [*cmd, "--no-raw"]


def wait_idle(pid: int, limit: float = 900.0) -> None:
    """Until the process's CPU time grows by less than 5 % of a second per second (it has read what
    the sockets hold), at most `limit` s."""
    end = time.monotonic() + limit
    cpu = proc_cpu_rss(pid)[0]
    while time.monotonic() < end:
        time.sleep(1.0)
        now = proc_cpu_rss(pid)[0]
        if now - cpu < 0.05:
            return
        cpu = now


def _final_report(conn, proc: subprocess.Popen | None) -> dict:
    """What a simulator sent in all (frames, trades, ...), asked for once the run is over (progress
    reports still queued are passed over)."""
    conn.send("report")
    while not isinstance(msg := _recv(conn, proc), dict):
        pass
    return msg


def _recv(parent, rec: subprocess.Popen | None, timeout: float = 30.0):
    """The simulator reports every 0.2 s: silence for `timeout` is a failed run, said in one line
    (a blocking recv would hang the benchmark for good)."""
    if not parent.poll(timeout):
        if rec is not None and rec.poll() is None:
            rec.kill()
        raise SystemExit(f"the simulator process sent nothing for {timeout:g} s: benchmark run failed")
    return parent.recv()


def stored_messages(con, lo_us: float | None = None, hi_us: float | None = None) -> int:
    """Messages stored (received between `lo_us` and `hi_us`, µs, if given): a depth message's rows
    share (symbol, recv_ts, seq), a trade message's (symbol, recv_ts)."""
    where = "" if lo_us is None else f" where epoch_us(recv_ts) between {int(lo_us)} and {int(hi_us)}"
    return con.execute(
        f"select (select count(distinct (symbol, recv_ts, seq)) from book_updates{where})"
        f" + (select count(distinct (symbol, recv_ts)) from trades{where})"
    ).fetchone()[0]


def measure(
    data: Path, sent: dict, usage, symbols: int, raw: bool, exchange: str = "bitmart", startup_cpu: float = 0.0
) -> dict:
    import recorder

    con = recorder.connect(data)
    trades = con.execute("select count(*) from trades").fetchone()[0]
    start, end = con.execute(
        "select min(recv_ts), max(recv_ts) from (select recv_ts from book_updates union all select recv_ts from trades)"
    ).fetchone()
    gaps = con.execute(
        "select count(*) from events where event in ('gap', 'error', 'disconnect')"
    ).fetchone()[0]
    seconds = (end - start).total_seconds()
    msgs = stored_messages(con)
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
        # the same without the start-up (imports, market list, connect, subscribe: ~0.9 s on one
        # symbol), which a real run spreads over hours: from the first data byte to the process's
        # exit, so the final Parquet flush and the stop are in it
        "startup_cpu_s": round(startup_cpu, 2),
        "cpu_us_per_msg_after_startup": round((cpu - startup_cpu) / msgs * 1e6, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "context_switches": usage.ru_nvcsw + usage.ru_nivcsw,
        "cpu_user_sys_s": [round(usage.ru_utime, 2), round(usage.ru_stime, 2)],
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }


# ---- ccxt.pro's BitMart client on the same tape --------------------------------------------------


def ccxt_client(ws_url: str, rest_url: str, ids: list[str]) -> None:
    """ccxt.pro's BitMart client as a user runs it (`--ccxt-client`: run by `run_ccxt` in its own
    process pinned to core 0, the recorder's core, with `--ccxt-python`'s interpreter).

    Its base URLs point at the simulator; markets come from the simulator's REST. One shim, the
    same as tests/compat's: each spot trade item gets BitMart's swap-only `m` flag on its way into
    ccxt's handler, because ccxt's spot trade parser raises without it (a ccxt defect pinned in
    tests/compat/test_independent_clients.py) and the first trade frame would end its receive loop.
    Prints a JSON line every 0.2 s (from a thread), and a last one on SIGTERM: data frames handled, time of the first
    and last one (empty book heartbeats, sent after a tape ends, count apart and move neither), trade
    items ccxt parsed, trades `watch_trades` yielded.
    """
    import aiohttp
    from bitmart.ccxt import __version__
    from bitmart.ccxt.pro.bitmart import bitmart

    async def connect() -> Any:
        ex = bitmart({"enableRateLimit": False})
        api = ex.urls["api"]
        api["spot"] = api["swap"] = rest_url  # every host: nothing may leave loopback
        for kind in ("spot", "swap"):
            for access in ("public", "private"):
                api["ws"][kind][access] = ws_url
        await ex.load_markets()
        ex.handle_message = counting(ex.handle_message)
        return ex

    st = {
        "depth": 0,
        "trade_frames": 0,
        "heartbeats": 0,
        "trade_items": 0,
        "trades_seen": 0,
        "book_resolutions": 0,
        "errors": 0,
        "first": None,
        "last": None,
        "versions": f"ccxt {__version__}, aiohttp {aiohttp.__version__}",
    }

    def counting(handle: Callable) -> Callable:
        def counted(client: Any, message: Any) -> Any:
            table = message.get("table") if isinstance(message, dict) else None
            if table == "spot/trade":
                message = {**message, "data": [{**i, "m": i["side"] == "sell"} for i in message["data"]]}
                st["trade_frames"] += 1
                st["trade_items"] += len(message["data"])
            elif table == "spot/depth/increase100":
                data = message["data"]
                if data and data[0].get("type") == "update" and not data[0]["bids"] and not data[0]["asks"]:
                    st["heartbeats"] += 1
                    return handle(client, message)
                st["depth"] += 1
            else:
                return handle(client, message)
            if st["first"] is None:
                st["first"] = time.monotonic()
            result = handle(client, message)
            st["last"] = time.monotonic()
            return result

        return counted

    async def books(ex: Any, symbols: list[str]) -> None:
        while True:
            try:
                await ex.watch_order_book_for_symbols(symbols)
                st["book_resolutions"] += 1
            except Exception as exc:  # noqa: BLE001 - counted: the run goes on as a user's loop would
                st["errors"] += 1
                st["last_error"] = repr(exc)[:300]
                await asyncio.sleep(0.05)

    async def trades(ex: Any, symbols: list[str]) -> None:
        while True:
            try:
                st["trades_seen"] += len(await ex.watch_trades_for_symbols(symbols))
            except Exception as exc:  # noqa: BLE001
                st["errors"] += 1
                st["last_error"] = repr(exc)[:300]
                await asyncio.sleep(0.05)

    def report(stop: threading.Event) -> None:
        # a thread: ccxt drains a backlog in one long callback, during which the loop would stall
        while not stop.is_set():
            # wall time and the process's CPU (every thread): --together takes a window of them
            print(json.dumps({**st, "at": time.time(), "cpu": time.process_time()}), flush=True)
            time.sleep(0.2)

    async def main() -> None:
        # BitMart takes at most 115 topics per connection (the simulator too, error 90006) and ccxt
        # opens one per client: one client per 50 symbols (as the recorder, two connections for 100);
        # ccxt takes at most 20 symbols per watch_*_for_symbols call: one watcher per 20.
        clients = [await connect() for _ in range(0, len(ids), 50)]
        tasks = []
        for n, ex in enumerate(clients):
            symbols = [ex.safe_symbol(i.replace("-", "_")) for i in ids[n * 50 : (n + 1) * 50]]
            for i in range(0, len(symbols), 20):
                tasks += [asyncio.create_task(w(ex, symbols[i : i + 20])) for w in (books, trades)]
        stopped = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
        stop = threading.Event()
        reporter = threading.Thread(target=report, args=(stop,), daemon=True)
        reporter.start()
        try:
            await stopped.wait()
            stop.set()
            reporter.join()
            print(json.dumps({**st, "final": True}), flush=True)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for ex in clients:
                await ex.close()

    asyncio.run(main())


def proc_cpu_rss(pid: int) -> tuple[float, int]:
    """(user+system CPU seconds, peak RSS MB) of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    return cpu, hwm // 1024


class _Lines:
    """The latest JSON line a child process printed (read on a thread: a pipe read blocks)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.latest: dict = {}
        self.history: list[dict] = []  # every line, in order
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                self.latest = json.loads(line)
                self.history.append(self.latest)


def run_ccxt(symbols: int, events: int, python: str) -> dict:
    """The same tape (fresh simulator, same seed and events) into ccxt.pro's client on core 0.

    Done when the simulator's data bytes have stopped for 2 s and the client has handled no data
    frame for 2 s; the rate is data frames handled over the time from the first to the last one
    (the recorder's is messages stored over its first to last receive time). CPU and peak RSS are
    the client process's whole (start-up included, as the recorder's), from /proc at that moment."""
    parent, child = mp.Pipe()
    sim = mp.Process(target=sim_process, args=(child, symbols, events, "bitmart"), daemon=True)
    sim.start()
    ws_url, rest_url, names = _recv(parent, None, 120.0)
    steal0 = steal_s()
    client = subprocess.Popen(ccxt_command(python, ws_url, rest_url, names[:symbols]), stdout=subprocess.PIPE, text=True)
    lines = _Lines(client)
    try:
        last_bytes, last_handled, still, started = -1, -1, 0.0, time.monotonic()
        startup_cpu = None
        while True:
            sent_bytes = _recv(parent, client)[1]
            if startup_cpu is None and sent_bytes > 0:
                startup_cpu = proc_cpu_rss(client.pid)[0]
            if client.poll() is not None:
                raise SystemExit(f"the ccxt client exited ({client.returncode}): benchmark run failed")
            handled = lines.latest.get("depth", 0) + lines.latest.get("trade_frames", 0)
            if sent_bytes == last_bytes and handled == last_handled and handled > 0:
                still += 0.2
                if still >= 2.0:
                    break
            else:
                last_bytes, last_handled, still = sent_bytes, handled, 0.0
            if time.monotonic() - started > 900:
                break
        cpu, rss = proc_cpu_rss(client.pid)
        steal = steal_s() - steal0
        client.send_signal(signal.SIGTERM)
        client.wait(30)
        lines.thread.join(5)
        st = lines.latest
        if not st.get("final"):
            raise SystemExit("the ccxt client sent no final report: benchmark run failed")
        sent = _final_report(parent, None)
    finally:
        if client.poll() is None:
            client.kill()
        sim.join(10)
        if sim.is_alive():
            sim.kill()
    msgs = st["depth"] + st["trade_frames"]
    seconds = st["last"] - st["first"]
    return {
        "client": st["versions"],
        "frames_sent": sent["frames"],
        "data_frames_handled": msgs,
        "empty_heartbeats_handled": st["heartbeats"],
        # the whole tape reached ccxt's handler (else its reader stalled: see the README)
        "complete": st["trade_items"] == sent["trades"],
        "seconds": round(seconds, 2),
        "msg_per_s": round(msgs / seconds),
        "trades_sent": sent["trades"],
        "trades_parsed": st["trade_items"],
        "trades_seen": st["trades_seen"],
        "trades_seen_share": round(st["trades_seen"] / max(1, sent["trades"]), 3),
        "book_resolutions": st["book_resolutions"],
        "errors": st["errors"],
        "last_error": st.get("last_error"),
        "cpu_s": round(cpu, 2),
        "cpu_us_per_msg": round(cpu / msgs * 1e6, 1),
        "startup_cpu_s": round(startup_cpu or 0.0, 2),
        "cpu_us_per_msg_after_startup": round((cpu - (startup_cpu or 0.0)) / msgs * 1e6, 1),
        "peak_rss_mb": rss,
        "steal_s": round(steal, 2),
    }


def ccxt_command(python: str, ws_url: str, rest_url: str, ids: list[str]) -> list[str]:
    return ["taskset", "-c", "0", python, __file__, "--ccxt-client", ws_url, rest_url, *ids]


def _latest(conn, proc: subprocess.Popen) -> Any:
    """A simulator's newest report: waits for one, then takes whatever else is queued."""
    msg = _recv(conn, proc)
    while conn.poll(0):
        msg = conn.recv()
    return msg


SETTLE_S = 1.0  # --together: the window starts this long after the recorder has data (its start-up's tail)
CCXT_LEAD = 0.5  # --together: the recorder starts once ccxt has handled this share of `events` messages


def run_together(symbols: int, events: int, raw: bool, python: str) -> dict:
    """The recorder and ccxt.pro's client at the same time, both on core 0, each with its own
    simulator (same seed and tape) on core 1: one host, one moment, so the ratio does not move with
    the host's load between two runs (the sequential pairs: 3.2-6.4x in one set of five).

    ccxt starts first: its first ~180k messages cost it ~25 % more CPU each than the rest (62-79 µs
    against 51-55 at 100 symbols, alone), so the recorder starts once ccxt has handled CCXT_LEAD x
    events messages, and both are compared in their steady state. The window: from SETTLE_S after
    the recorder has data until its simulator has sent its last byte (ccxt, ~5x slower, is still
    mid-tape). In it, each side's CPU a message: the recorder's messages stored with a receive time
    in the window and its CPU from /proc at both ends; ccxt's data frames handled and its own CPU time
    from its report lines, at their wall times. Both compete for the core, so each rate is its
    share's; the CPU a message is what one message costs each, on the same host in the same seconds:
    the ratio to judge a change by. The recorder's whole tape is then checked for zero loss as in a
    lone run."""
    compile_package()
    sims = []
    for _ in range(2):
        parent, child = mp.Pipe()
        proc = mp.Process(target=sim_process, args=(child, symbols, events, "bitmart"), daemon=True)
        proc.start()
        sims.append((proc, parent))
    (_, conn_a), (_, conn_b) = sims
    ws_a, rest_a, names = _recv(conn_a, None, 120.0)
    ws_b, rest_b, _ = _recv(conn_b, None, 120.0)
    data = Path(tempfile.mkdtemp(prefix="bench-record-"))
    client = subprocess.Popen(
        ccxt_command(python, ws_b, rest_b, names[:symbols]), stdout=subprocess.PIPE, text=True
    )
    lines = _Lines(client)
    rec = None
    polls: list[tuple[float, float, int]] = []  # (wall time, recorder CPU s, recorder's simulator bytes sent)
    try:
        started = time.monotonic()
        while lines.latest.get("depth", 0) + lines.latest.get("trade_frames", 0) < CCXT_LEAD * events:
            _latest(conn_a, client)  # both simulators report every 0.2 s: read, or they block
            _latest(conn_b, client)
            if client.poll() is not None:
                raise SystemExit(f"the ccxt client exited ({client.returncode}): benchmark run failed")
            if time.monotonic() - started > 600:
                raise SystemExit("ccxt did not reach its lead in 600 s: benchmark run failed")
        rec = subprocess.Popen(
            recorder_command("bitmart", names[:symbols], ws_a, rest_a, data, raw), stderr=subprocess.PIPE, text=True
        )
        still, started = 0.0, time.monotonic()
        while True:
            sent_a = _latest(conn_a, rec)[1]
            _latest(conn_b, client)
            polls.append((time.time(), proc_cpu_rss(rec.pid)[0], sent_a))
            for who, p in (("recorder", rec), ("ccxt client", client)):
                if p.poll() is not None:
                    raise SystemExit(f"the {who} exited ({p.returncode}) mid-run: benchmark run failed")
            if len(polls) > 1 and sent_a == polls[-2][2] and sent_a > 0:
                still += 0.2
                if still >= 2.0:
                    break
            else:
                still = 0.0
            if time.monotonic() - started > 900:
                raise SystemExit("the recorder's tape took over 900 s: benchmark run failed")
        rec.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(rec.pid, 0)
        rec.returncode = os.waitstatus_to_exitcode(status)
        client.send_signal(signal.SIGTERM)
        client.wait(30)
        lines.thread.join(5)
        reports = [_final_report(conn, None) for _, conn in sims]
        err = rec.stderr.read()
        if rec.returncode != 0:
            raise SystemExit(f"recorder failed: {err}")
        return _together_figures(data, polls, lines.history, reports[0], usage, symbols, raw)
    finally:
        for p in (rec, client):
            if p is not None and p.poll() is None:
                p.kill()
        for proc, _ in sims:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        shutil.rmtree(data, ignore_errors=True)


def _together_figures(
    data: Path, polls: list[tuple[float, float, int]], ccxt_lines: list[dict], sent: dict, usage, symbols: int, raw: bool
) -> dict:
    import recorder

    def handled(line: dict) -> int:
        return line.get("depth", 0) + line.get("trade_frames", 0)

    flowing = [ln for ln in ccxt_lines if handled(ln) > 0 and "at" in ln]
    first_data = next((w for w, _, b in polls if b > 0), None)
    if not flowing or first_data is None:
        raise SystemExit("--together: one side never had data: benchmark run failed")
    t0 = first_data + SETTLE_S  # ccxt has been flowing for a while (CCXT_LEAD)
    # the recorder's window ends at the last poll before its simulator's bytes stopped moving
    last_moving = max((i for i in range(1, len(polls)) if polls[i][2] != polls[i - 1][2]), default=0)
    inside = [p for p in polls[:last_moving] if p[0] >= t0]
    if len(inside) < 6:
        raise SystemExit("--together: the window is under a second (too few events for both to have data)")
    (w0, cpu0, _), (w1, cpu1, _) = inside[0], inside[-1]
    c = [ln for ln in flowing if w0 <= ln["at"] <= w1]
    if len(c) < 2 or handled(c[-1]) == handled(c[0]):
        raise SystemExit("--together: ccxt handled nothing in the window (its reader stalled): no figure")
    tail = [ln for ln in c if ln["at"] >= c[-1]["at"] - 1.0]
    if handled(tail[-1]) == handled(tail[0]):  # its tape ran out (or it stalled) before the window's end
        raise SystemExit("--together: ccxt stopped before the recorder's tape ended (raise --events): no figure")
    rec_msgs = stored_messages(recorder.connect(data), w0 * 1e6, w1 * 1e6)
    whole = measure(data, sent, usage, symbols, raw)
    ccxt_msgs, ccxt_cpu, ccxt_s = handled(c[-1]) - handled(c[0]), c[-1]["cpu"] - c[0]["cpu"], c[-1]["at"] - c[0]["at"]
    rec_us, ccxt_us = (cpu1 - cpu0) / rec_msgs * 1e6, ccxt_cpu / ccxt_msgs * 1e6
    return {
        "mode": "together",
        "symbols": symbols,
        "window_s": round(w1 - w0, 2),
        "recorder": {
            "messages": rec_msgs,
            "msg_per_s": round(rec_msgs / (w1 - w0)),
            "cpu_us_per_msg": round(rec_us, 2),
            "core_share": round((cpu1 - cpu0) / (w1 - w0), 2),
        },
        "ccxt": {
            "messages": ccxt_msgs,
            "msg_per_s": round(ccxt_msgs / ccxt_s),
            "cpu_us_per_msg": round(ccxt_us, 2),
            "core_share": round(ccxt_cpu / ccxt_s, 2),
            "client": c[-1].get("versions"),
        },
        "ratio_cpu": round(ccxt_us / rec_us, 2),  # ccxt's CPU a message over the recorder's
        "ratio_rate": round((rec_msgs / (w1 - w0)) / (ccxt_msgs / ccxt_s), 2),
        "recorder_whole_tape": {k: whole[k] for k in ("messages_stored", "trades_sent", "trades_stored", "zero_loss")},
        "machine": whole["machine"],
    }


def together_table(r: dict) -> str:
    rec, cc = r["recorder"], r["ccxt"]
    out = [f"together, {r['symbols']} symbol(s), window {r['window_s']} s{'':4}{'recorder':>12}{'ccxt.pro':>12}"]
    for label, key in (("CPU µs per message", "cpu_us_per_msg"), ("messages/s (its share)", "msg_per_s"),
                       ("share of core 0", "core_share"), ("messages in the window", "messages")):  # fmt: skip
        out.append(f"{label:40}{rec[key]:>12}{cc[key]:>12}")
    whole = r["recorder_whole_tape"]
    loss = "0 lost" if whole["zero_loss"] else "LOSS OR GAPS"
    out.append(
        f"ratio: ccxt spends {r['ratio_cpu']:.2f}x the recorder's CPU a message (rates in the window "
        f"{r['ratio_rate']:.2f}x); recorder's whole tape: {whole['trades_stored']}/{whole['trades_sent']} trades, {loss}"
    )
    return "\n".join(out)


def steal_s(core: int = 0) -> float:
    """CPU seconds the hypervisor has taken from `core` (the one both clients are pinned to) since
    boot, from /proc/stat: what it took during a run is time that run's rate lost to other guests."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            return int(line.split()[8]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def table(rec: dict, cc: dict | None) -> str:
    rows = [
        ("messages/s", "msg_per_s"),
        ("CPU µs per message", "cpu_us_per_msg"),
        ("  after start-up", "cpu_us_per_msg_after_startup"),
        ("start-up CPU s", "startup_cpu_s"),
        ("seconds", "seconds"),
        ("trades sent", "trades_sent"),
        ("peak RSS MB", "peak_rss_mb"),
    ]
    out = [f"{'':24}{'recorder':>12}{'ccxt.pro':>12}"]
    for label, key in rows:
        out.append(f"{label:24}{rec[key]:>12}{cc[key] if cc else '-':>12}")
    out.append(f"{'stop CPU s (last flush)':24}{rec.get('stop_cpu_s', '-'):>12}{'-':>12}")
    # the hypervisor's steal from the core both run on: a run that lost time to it reads slow
    out.append(f"{'steal s (host took)':24}{rec.get('steal_s', '-'):>12}{cc.get('steal_s', '-') if cc else '-':>12}")
    out.append(f"{'trades stored / seen':24}{rec['trades_stored']:>12}{cc['trades_seen'] if cc else '-':>12}")
    if "instructions_per_msg" in rec:  # under valgrind: its times and rates are valgrind's, not the recorder's
        out.append(f"{'instructions / message':24}{rec['instructions_per_msg']:>12,}{'-':>12}")
    if cc and not cc["complete"]:
        out.append(
            f"ccxt did NOT get the whole tape ({cc['trades_parsed']} of {cc['trades_sent']} trades reached "
            f"its handler; {cc['client']}): its reader stalled, the ccxt figures are not a rate"
        )
    if cc:
        out.append(
            f"ratio recorder/ccxt: messages/s {rec['msg_per_s'] / cc['msg_per_s']:.2f}x, "
            f"CPU µs per message {rec['cpu_us_per_msg'] / cc['cpu_us_per_msg']:.2f} "
            f"(ccxt/recorder {cc['cpu_us_per_msg'] / rec['cpu_us_per_msg']:.2f}x)"
        )
    return "\n".join(out)


MEDIAN_KEYS = (
    "msg_per_s", "cpu_us_per_msg", "cpu_us_per_msg_after_startup", "peak_rss_mb", "ratio_msg_per_s",
    "instructions_per_msg",
)


def medians(runs: list[dict]) -> dict:
    """The median of each figure over `runs` (the recorder's, ccxt's, and the per-run ratios)."""
    out: dict = {k: statistics.median(r[k] for r in runs) for k in MEDIAN_KEYS if k in runs[0]}
    if "ccxt" in runs[0]:
        out["ccxt_msg_per_s"] = statistics.median(r["ccxt"]["msg_per_s"] for r in runs)
        out["ccxt_cpu_us_per_msg"] = statistics.median(r["ccxt"]["cpu_us_per_msg"] for r in runs)
        out["ccxt_over_recorder_cpu"] = round(
            statistics.median(r["ccxt"]["cpu_us_per_msg"] / r["cpu_us_per_msg"] for r in runs), 2
        )
    out["lost_or_gaps_in_any_run"] = any(not r["zero_loss"] for r in runs)
    return out


def summary(runs: list[dict]) -> str:
    """One line a run, then the medians."""
    m = medians(runs)
    lines = [
        f"{'run':>4}{'msg/s':>10}{'CPU µs/msg':>12}{'ccxt msg/s':>12}{'ccxt µs/msg':>13}{'ratio':>8}{'steal s':>14}"
    ]
    for i, r in enumerate(runs, 1):
        c = r.get("ccxt")
        steal = f"{r.get('steal_s', '-')}/{c.get('steal_s', '-') if c else '-'}"
        lines.append(
            f"{i:>4}{r['msg_per_s']:>10}{r['cpu_us_per_msg']:>12}{c['msg_per_s'] if c else '-':>12}"
            f"{c['cpu_us_per_msg'] if c else '-':>13}{r.get('ratio_msg_per_s', '-'):>8}{steal:>14}"
        )
    tail = "; LOSS OR GAPS in a run" if m["lost_or_gaps_in_any_run"] else "; 0 lost, 0 gaps in every run"
    ccxt = ""
    if "ccxt_msg_per_s" in m:
        ccxt = (
            f"; ccxt.pro {m['ccxt_msg_per_s']:.0f} msg/s, {m['ccxt_cpu_us_per_msg']:.1f} µs/msg; ratio "
            f"{m['ratio_msg_per_s']:.2f}x the rate, {m['ccxt_over_recorder_cpu']:.2f}x less CPU a message"
        )
    if "instructions_per_msg" in m:  # under valgrind only the count means anything
        lines.append(f"medians of {len(runs)}: {m['instructions_per_msg']:,.0f} instructions a message{tail}")
        return "\n".join(lines)
    lines.append(
        f"medians of {len(runs)}: recorder {m['msg_per_s']:.0f} msg/s, {m['cpu_us_per_msg']:.1f} µs/msg "
        f"({m['cpu_us_per_msg_after_startup']:.1f} after start-up){ccxt}{tail}"
    )
    return "\n".join(lines)


def together(a: argparse.Namespace) -> None:
    runs = []
    for i in range(a.pairs):
        r = run_together(a.symbols, a.events, not a.no_raw, a.ccxt_python)
        runs.append(r)
        if a.pairs > 1:
            print(f"run {i + 1} of {a.pairs}:")
        print(json.dumps(r, indent=2))
        print(together_table(r))
    out: dict = runs[0]
    if a.pairs > 1:
        med = {
            "ratio_cpu": statistics.median(r["ratio_cpu"] for r in runs),
            "ratio_rate": statistics.median(r["ratio_rate"] for r in runs),
            "recorder_cpu_us_per_msg": statistics.median(r["recorder"]["cpu_us_per_msg"] for r in runs),
            "ccxt_cpu_us_per_msg": statistics.median(r["ccxt"]["cpu_us_per_msg"] for r in runs),
            "zero_loss_in_every_run": all(r["recorder_whole_tape"]["zero_loss"] for r in runs),
        }
        out = {"runs": runs, "medians": med}
        ratios = ", ".join(f"{r['ratio_cpu']:.2f}" for r in runs)
        print(
            f"medians of {len(runs)} together: recorder {med['recorder_cpu_us_per_msg']:.2f} µs a message, ccxt.pro "
            f"{med['ccxt_cpu_us_per_msg']:.2f}; ccxt/recorder CPU a message {med['ratio_cpu']:.2f}x ({ratios}); "
            f"rates {med['ratio_rate']:.2f}x; {'0 lost, 0 gaps' if med['zero_loss_in_every_run'] else 'LOSS OR GAPS'}"
        )
    OUT.mkdir(exist_ok=True)
    (OUT / f"record-together-{a.symbols}sym{'-noraw' if a.no_raw else ''}.json").write_text(json.dumps(out, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--exchange", default="bitmart", help="bitmart (deflated binary frames) or bitmart_perpetual (text)"
    )
    ap.add_argument("--symbols", type=int, default=1)
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--no-raw", action="store_true", help="disable raw capture")
    ap.add_argument("--profile", metavar="PATH", help="record py-spy collapsed stacks of the recorder here")
    ap.add_argument("--no-ccxt", action="store_true", help="skip ccxt.pro's client on the same tape")
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="run the recorder under valgrind and count its machine instructions a message, whole process "
        "(start-up, aiohttp, the flush thread included): the same to ~1 %% whatever the machine's load; "
        "slow (~40 s of start-up, ~3k msg/s); implies --no-ccxt",
    )
    ap.add_argument(
        "--ccxt-python",
        default=os.environ.get("BENCH_CCXT_PYTHON", sys.executable),
        help="interpreter that runs ccxt's client (a venv with aiohttp < 3.14: see the README)",
    )
    ap.add_argument(
        "--pairs",
        type=int,
        default=1,
        help="run the recorder and ccxt.pro this many times, alternately, and print the medians: one "
        "run's ratio moves with the host's load at the moment each side runs (2.9-5.0x seen in six runs)",
    )
    ap.add_argument(
        "--together",
        action="store_true",
        help="run the recorder and ccxt.pro at the same time on core 0 and compare their CPU a message in "
        "the same seconds (spot only): the ratio the host's load does not move",
    )
    ap.add_argument("--ccxt-client", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.ccxt_client:
        ccxt_client(a.ccxt_client[0], a.ccxt_client[1], a.ccxt_client[2:])
        return
    if a.pairs < 1:
        raise SystemExit("--pairs must be 1 or more")
    if a.together:
        if a.exchange != "bitmart" or a.no_ccxt or a.instructions or a.profile:
            raise SystemExit("--together is BitMart spot against ccxt.pro: no --exchange, --no-ccxt, --instructions or --profile")
        together(a)
        return
    if a.pairs > 1 and a.profile:
        raise SystemExit("--profile takes one run: each run of --pairs would overwrite the last one's stacks")
    with_ccxt = not a.no_ccxt and not a.instructions and a.exchange == "bitmart"
    runs = []
    for i in range(a.pairs):
        load_before = load_average()
        res = run(a.symbols, a.events, not a.no_raw, a.profile, a.exchange, a.instructions)
        cc = None
        if with_ccxt:
            cc = run_ccxt(a.symbols, a.events, a.ccxt_python)
            res["ccxt"] = cc
            res["ratio_msg_per_s"] = round(res["msg_per_s"] / cc["msg_per_s"], 2)
            res["ratio_cpu_us_per_msg"] = round(res["cpu_us_per_msg"] / cc["cpu_us_per_msg"], 2)
        res["load_average"] = {"before": load_before, "after": load_average()}
        runs.append(res)
        if a.pairs > 1:
            print(f"run {i + 1} of {a.pairs}:")
        print(json.dumps(res, indent=2))
        print(table(res, cc))
    out = runs[0] if a.pairs == 1 else {"runs": runs, "medians": medians(runs)}
    OUT.mkdir(exist_ok=True)
    venue = "" if a.exchange == "bitmart" else f"-{a.exchange}"
    (OUT / f"record{venue}-{a.symbols}sym{'-noraw' if a.no_raw else ''}.json").write_text(
        json.dumps(out, indent=2)
    )
    if a.pairs > 1:
        print(summary(runs))


if __name__ == "__main__":
    main()
