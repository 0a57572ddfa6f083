"""SIGKILL a real recorder process at random moments, many times: nothing unreadable, nothing twice,
and every message that reached the raw log ends up in the tables (checked against a full replay)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recorder import connect
from recorder.replay import CRASH_DETAIL, replay

from .test_cli import RECORDER, free_port, spawn_recording

TABLES = {
    "trades": "ts, recv_ts, side, price, amount",
    "book_updates": "recv_ts, seq, side, price, amount",
    "book_snapshots": "recv_ts, seq",
    "events": "ts, channel, event, detail",
}


@pytest.fixture
def sim_urls():
    port = free_port()
    proc = subprocess.Popen(
        [RECORDER, "simulate", "bitmart", "--port", str(port), "--rate", "400", "--seed", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("ws"), proc.stderr.read()
        yield f"ws://127.0.0.1:{port}/api?protocol=1.1", f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def start_recorder(data: Path, ws: str, rest: str) -> subprocess.Popen:
    return spawn_recording(
        data.parent, "bitmart", "BTC-USDT", "ETH-USDT", "--ws-url", ws, "--rest-url", rest,
        "--data-dir", str(data), "--flush-interval", "1", "-q", data=data,
    )


def test_repeated_sigkill_loses_nothing_and_duplicates_nothing(tmp_path, sim_urls):
    ws, rest = sim_urls
    data = tmp_path / "data"
    rng = random.Random(1234)
    kills = 6
    for _ in range(kills):
        proc = start_recorder(data, ws, rest)
        try:
            time.sleep(rng.uniform(0.3, 3.0))  # lands anywhere relative to the 1 s flushes
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    final = start_recorder(data, ws, rest)  # recovers the last crash on start
    try:
        time.sleep(3)
        final.send_signal(signal.SIGTERM)
        _, err = final.communicate(timeout=30)
    finally:
        if final.poll() is None:
            final.kill()
    assert final.returncode == 0, err
    assert "recovered" in err

    parquet = list(data.rglob("*.parquet"))
    assert parquet
    for f in parquet:
        pq.read_metadata(f)  # every published file is complete and readable
    assert not [p for p in data.rglob("*.tmp")]

    replayed = tmp_path / "replayed"
    replay([data / "raw"], replayed)
    live, ref = connect(data), connect(replayed)
    for table, order in TABLES.items():
        q = f"select * exclude (date) from {table} order by symbol, {order}"
        got, want = live.execute(q).fetchall(), ref.execute(q).fetchall()
        assert want, f"{table} empty"
        assert len(got) == len(want), f"{table}: {len(got)} rows, raw log has {len(want)}"
        assert got == want, table
    crashes = live.execute(
        "select count(distinct ts) from events where event = 'stop' and detail = ?", [CRASH_DETAIL]
    ).fetchone()[0]
    assert crashes == kills
    dup = live.execute(
        "select count(*) from (select ts, recv_ts, symbol, seq, side, price, count(*) c from book_updates "
        "group by all having c > 1)"
    ).fetchone()[0]
    assert dup == 0
