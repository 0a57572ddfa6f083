"""What the recorder prints: whole lines and cells when the output is not a terminal (a pipe, a file,
systemd, Docker), one status line per interval, JSON lines that parse (`--log-format json`), the
live table's aggregate and worst streams past 20 markets, and an example in every command's --help.

Every process here writes into pipes: that is the "not a terminal" case. `COLUMNS=40` in their
environment shows that no terminal width, real or assumed, cuts anything.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import typer.main
from rich.console import Console

from recorder import venues
from recorder.app.console import STATUS_ROWS, Monitor, table
from recorder.cli import app
from recorder.collector import Collector, Options

from .processes import RECORDER
from .recording import wait_for

pytestmark = pytest.mark.timeout(120)

NARROW = {"COLUMNS": "40", "LINES": "10"}
WS_URL = re.compile(r"\(simulator (ws://127\.0\.0\.1:\d+/\S+)\)$")


def run(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    return subprocess.run([RECORDER, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**env, **NARROW})


def assert_whole(text: str) -> None:
    """Nothing cut (no ellipsis) and no colour codes."""
    assert "…" not in text, text
    assert "\x1b[" not in text, text


def test_piped_run_prints_whole_lines_and_a_status_line_per_interval(tmp_path):
    p = run("run", "bitmart", "BTC-USDT", "ETH-USDT", "--sim", "--duration", "4.5", "--status-interval", "1",
            "--data-dir", "data", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert_whole(p.stderr)
    lines = p.stderr.splitlines()
    # every line is a whole message: none is the continuation of a wrapped one
    assert all(ln.startswith(("recording ", "status ", "stopped: ", "WARNING ")) for ln in lines), p.stderr
    start = WS_URL.search(lines[0])
    assert lines[0].startswith("recording bitmart BTC-USDT, ETH-USDT -> data") and start, lines[0]
    assert start.group(1).endswith("/api?protocol=1.1")  # the full URL, on the one line
    status = [ln for ln in lines if ln.startswith("status ")]
    assert len(status) >= 3, p.stderr
    last = status[-1]
    assert "2 markets (2 live)" in last and "topics acked 4/4" in last and "connections up 1/1" in last, last
    rate = float(re.search(r" · ([\d,.]+) msg/s", last).group(1).replace(",", ""))
    assert rate > 0, last
    assert re.search(r"lag p50 -?[\d,]+ ms p99 -?[\d,]+ ms", last), last
    assert lines[-1].startswith("stopped: ")


def test_quiet_run_prints_no_status_lines(tmp_path):
    p = run("run", "bitmart", "BTC-USDT", "--sim", "--duration", "2.5", "--status-interval", "0.5", "-q",
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert not [ln for ln in p.stderr.splitlines() if ln.startswith("status ")], p.stderr


def test_status_and_sql_tables_keep_long_names_whole(tmp_path):
    """`recorder status | cat` and `recorder sql ... | cat`: long exchange, symbol and event names
    come out whole (rich assumed 80 columns off a terminal and cut `bitmart` to `bitma…`)."""
    rec = run("run", "bitmart_perpetual", "BTC-USDT", "--sim", "--duration", "3", "-q", "--flush-interval", "1",
              "--data-dir", "data", cwd=tmp_path)
    assert rec.returncode == 0, rec.stderr
    st = run("status", "--data-dir", "data", cwd=tmp_path)
    assert st.returncode == 0, st.stderr
    assert_whole(st.stdout)
    rows = [ln for ln in st.stdout.splitlines() if "bitmart_perpetual" in ln]
    assert rows and all("BTC-USDT" in ln for ln in rows), st.stdout
    assert all(ln.rstrip().endswith("│ stop: clean stop │") for ln in rows), st.stdout  # the last event, whole
    assert min(len(ln) for ln in rows) > 100, st.stdout  # wider than 80 (and COLUMNS=40): not squeezed
    assert "on disk: " in st.stdout
    long_value = "x" * 300
    q = run("sql", f"select exchange, symbol, '{long_value}' as long_value from trades limit 1",
            "--data-dir", "data", cwd=tmp_path)
    assert q.returncode == 0, q.stderr
    assert_whole(q.stdout)
    assert re.search(rf"│ bitmart_perpetual │ BTC-USDT │ {long_value} │", q.stdout), q.stdout


def _json_lines(stderr: str) -> list[dict]:
    docs = []
    for ln in stderr.splitlines():
        doc = json.loads(ln)  # every line, no exception
        assert isinstance(doc, dict) and {"ts", "level", "msg"} <= doc.keys(), ln
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["ts"]), ln
        docs.append(doc)
    return docs


async def test_json_logs_parse_start_status_warnings_and_summary(tmp_path):
    """`--log-format json`: every stderr line is one JSON object, warnings from a dropped connection
    and an unreadable frame included (the simulator runs here and injects them)."""
    sim = venues.simulator("bitmart")(seed=5, rate=50.0, record_sent=False)
    await sim.start(host="127.0.0.1", port=0)
    try:
        proc = await asyncio.create_subprocess_exec(
            RECORDER, "run", "bitmart", "BTC-USDT", "--ws-url", sim.ws_url, "--rest-url", sim.rest_url,
            "--duration", "6", "--status-interval", "1", "--log-format", "json", "--data-dir", str(tmp_path / "d"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **NARROW},
        )
        await wait_for(lambda: sim.open_connections, 30, "the recorder connected")
        await asyncio.sleep(1.5)
        sim.send_malformed_json()
        await asyncio.sleep(0.5)
        sim.drop_connections()
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await sim.stop()
    assert proc.returncode == 0, err
    assert out == b""
    docs = _json_lines(err.decode())
    assert docs[0]["msg"].startswith("recording bitmart BTC-USDT") and docs[0]["ws_url"] == sim.ws_url, docs[0]
    status = [d for d in docs if d["msg"].startswith("status ")]
    assert len(status) >= 3, docs
    assert all(d["level"] == "info" and d["markets"] == 1 and "msg_per_s" in d and "lag_p99_ms" in d for d in status)
    warnings = [d for d in docs if d["level"] == "warning"]
    assert any("connection 0 lost" in d["msg"] for d in warnings), docs
    assert any("undecodable" in d["msg"] or "malformed" in d["msg"] or "truncated" in d["msg"]
               for d in warnings), docs
    assert any(d["reconnects"] >= 1 for d in status), status
    assert docs[-1]["msg"].startswith("stopped: ") and docs[-1]["trades"] > 0, docs[-1]


def test_json_logs_errors_are_one_json_line(tmp_path):
    p = run("run", "bitmart", "NOPE-USDT", "--sim", "--log-format", "json", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    [doc] = _json_lines(p.stderr)
    assert doc["level"] == "error" and "NOPE-USDT" in doc["msg"], doc
    bad = run("run", "bitmart", "BTC-USDT", "--sim", "--log-format", "yaml", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --log-format must be text or json"), bad.stderr


def test_json_logs_of_compact_and_replay(tmp_path):
    rec = run("run", "bitmart", "BTC-USDT", "--sim", "--duration", "2", "-q", "--flush-interval", "0.5",
              "--data-dir", "data", cwd=tmp_path)
    assert rec.returncode == 0, rec.stderr
    c = run("compact", "--data-dir", "data", "--include-today", "--log-format", "json", cwd=tmp_path)
    assert c.returncode == 0, c.stderr
    [done] = [d for d in _json_lines(c.stderr) if d["msg"].startswith("compacted ")]
    assert done["level"] == "info" and done["rows"] > 0 and done["files_in"] > done["files_out"] >= 1, done
    r = run("replay", "data/raw", "--data-dir", "again", "--log-format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    [done] = [d for d in _json_lines(r.stderr) if d["msg"].startswith("replayed ")]
    assert done["rows"] > 0 and done["files"] >= 1, done
    missing = run("replay", "nowhere", "--data-dir", "again", "--log-format", "json", cwd=tmp_path)
    [err] = _json_lines(missing.stderr)
    assert missing.returncode == 2 and err["level"] == "error" and "nowhere" in err["msg"], missing.stderr


async def test_live_table_shows_the_aggregate_and_the_worst_streams():
    """Past `STATUS_ROWS` markets the live table is an aggregate row, the worst streams (here the
    two whose book had a real sequence gap rank first) and a count of the rest."""
    n = 30
    sim = venues.simulator("bitmart")(symbols=n, seed=3, rate=100.0, record_sent=False)
    await sim.start(host="127.0.0.1", port=0)
    try:
        c = Collector("bitmart", [], Options(data_dir=None, ws_url=sim.ws_url, rest_url=sim.rest_url,
                                             all_markets=True))
        await c.prepare()
        assert len(c.streams) == n > STATUS_ROWS
        monitor = Monitor(c)
        task = asyncio.create_task(c.run())
        try:
            await wait_for(lambda: c.subscribed_in is not None, 60, "every topic acknowledged")
            await wait_for(lambda: all(s.book.valid for s in c.streams.values()), 30, "every book valid")
            gapped = sorted(c.streams)[3:5]
            for sym in gapped:
                sim.skip_version(sym, 3)
            await wait_for(lambda: all(c.streams[s].book.gaps >= 1 and c.streams[s].book.valid for s in gapped),
                           30, "the gaps seen and resynced")
            await asyncio.sleep(1.0)
            st = monitor.sample()
            console = Console(width=200, record=True, file=io.StringIO())
            console.print(table(st))
            text = console.export_text()
        finally:
            c.stop()
            await asyncio.wait_for(task, 30)
    finally:
        await sim.stop()
    rows = [ln.replace("┃", "│") for ln in text.splitlines() if ln.startswith(("│", "┃"))]
    cells = [[x.strip() for x in ln.strip("│").split("│")] for ln in rows]
    header = next(i for i, r in enumerate(cells) if r[0] == "symbol")
    body = cells[header + 1:]
    agg, worst, more = body[0], body[1:STATUS_ROWS + 1], body[STATUS_ROWS + 1]
    assert agg[0] == f"all {n}" and agg[1] == f"{n} live", agg
    assert float(agg[2].replace(",", "")) > 0, agg  # msg/s
    assert agg[3].endswith("ms") and agg[4].endswith("ms"), agg  # lag p50, p99
    assert int(agg[5]) >= 2, agg  # the gaps, summed
    assert len(worst) == STATUS_ROWS and all(r[1] == "live" for r in worst), worst
    assert sorted(r[0] for r in worst[:2]) == gapped and all(int(r[5]) >= 1 for r in worst[:2]), worst[:3]
    assert more[0] == f"... {n - STATUS_ROWS} more" and more[1] == f"{n - STATUS_ROWS} live", more
    assert f"topics acked {2 * n}/{2 * n}" in text
    assert re.search(r"│\s+0\s+│\s+up\s+│", text), text  # the connections table


def test_candles_watch_off_a_terminal_prints_one_line_per_candle(tmp_path):
    p = run("candles", "watch", "bitmart", "BTC-USDT", "--sim", "--interval", "1s", "--duration", "4", "--rows", "3",
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert_whole(p.stdout + p.stderr)
    assert re.fullmatch(r"watching bitmart BTC-USDT 1s candles \(simulator ws://127\.0\.0\.1:\d+/api\?protocol=1\.1\);"
                        r" Ctrl-C stops\n", p.stderr), p.stderr
    lines = p.stdout.splitlines()
    candle = r"bitmart BTC-USDT 1s \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ( [\d.e+-]+){5} [\d,]+ (\d+|-) (live|exchange|partial|open)"
    assert len(lines) >= 3 and all(re.fullmatch(candle, ln) for ln in lines), p.stdout
    assert lines[-1].endswith(" open") and not any(ln.endswith(" open") for ln in lines[:-1]), p.stdout
    times = [ln.split()[3] for ln in lines]
    assert times == sorted(set(times)), p.stdout  # each candle once, in order


def test_candles_watch_log_format_json_prints_one_object_per_candle(tmp_path):
    p = run("candles", "watch", "bitmart", "BTC-USDT", "--sim", "--interval", "1s", "--duration", "4", "--rows", "3",
            "--log-format", "JSON", cwd=tmp_path)  # any case, as the other commands
    assert p.returncode == 0, p.stderr
    [start] = [json.loads(ln) for ln in p.stderr.splitlines()]
    assert start["level"] == "info" and start["msg"].startswith("watching bitmart BTC-USDT 1s candles"), start
    assert start["ws_url"].startswith("ws://127.0.0.1:") and start["simulator"] is True, start
    docs = [json.loads(ln) for ln in p.stdout.splitlines()]
    assert len(docs) >= 3, p.stdout
    for d in docs:
        assert (d["exchange"], d["symbol"], d["interval"]) == ("bitmart", "BTC-USDT", "1s"), d
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", d["open_time"]), d
        assert all(type(d[k]) is float for k in ("open", "high", "low", "close")), d  # numbers, not text
        assert d["low"] <= min(d["open"], d["close"]) <= max(d["open"], d["close"]) <= d["high"], d
        assert d["volume"] >= 0 and (d["trades"] is None or d["trades"] >= 0), d
        if d["trades"] == 0:  # a watched second without trades: flat at the previous close
            assert d["volume"] == 0 and d["open"] == d["high"] == d["low"] == d["close"], d
        # the message is the plain line of the same candle
        assert d["msg"].startswith(f"bitmart BTC-USDT 1s {d['open_time']} "), d
        assert d["msg"].endswith(" " + d["state"]) and d["state"] in ("live", "exchange", "partial", "open"), d
    assert docs[-1]["state"] == "open" and docs[-1]["closed"] is False, docs[-1]
    assert all(d["closed"] and d["state"] != "open" for d in docs[:-1]), docs
    times = [d["open_time"] for d in docs]
    assert times == sorted(set(times)), times  # each candle once, in order


def _commands(cmd, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group of the CLI, as the words that name it."""
    out = [path]
    if hasattr(cmd, "commands"):  # a group (typer's own click, or click's)
        for name, sub in cmd.commands.items():
            out += _commands(sub, (*path, name))
    return out


def test_every_command_help_shows_an_example(tmp_path):
    commands = _commands(typer.main.get_command(app))
    assert ("run",) in commands and ("candles", "watch") in commands and len(commands) >= 12
    for path in commands:
        p = run(*path, "--help", cwd=tmp_path, timeout=30)
        assert p.returncode == 0, (path, p.stderr)
        text = " ".join(p.stdout.split())
        # an example is a full command line of this very command
        assert "Examples:" in text and f"recorder {' '.join(path)}".strip() + " " in text.split("Examples:", 1)[1], (
            path, p.stdout)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_log_reader_that_goes_away_does_not_stop_the_recording(tmp_path, fmt):
    """`recorder run ... 2>&1 | head -1`: the pipe closes after the first line; the recorder records
    on to its --duration, exits 0, and its data is all there."""
    import time

    from recorder import connect

    data = tmp_path / "data"
    started = time.monotonic()
    proc = subprocess.Popen(
        [RECORDER, "run", "bitmart", "BTC-USDT", "--sim", "--duration", "5", "--data-dir", str(data),
         "--status-interval", "1", "--log-format", fmt],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr.readline()  # the start-up line, then the reader is gone
        proc.stderr.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert time.monotonic() - started >= 5, "stopped before its duration"
    con = connect(data)
    assert con.execute("select count(*) from events where event = 'stop' and cause = 'stop'").fetchone()[0] >= 1
    assert con.execute("select count(*) from trades").fetchone()[0] > 0
