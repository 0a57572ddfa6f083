"""A full disk, for real: a small tmpfs (root only; in CI, where `CI` is set, not being able to make one
fails instead of skipping). Parquet writes fail with ENOSPC, rows wait in memory and land once space
returns; the raw log completes into the disk space it holds in reserve; a disk still full at stop ends
with an error that says exactly what the next run gets back, and the next run gets back exactly that
(checked against what the simulator sent)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recorder.app.record import record
from recorder.collector import Collector
from recorder.errors import RecorderError
from recorder.replay import replay

from .processes import assert_equals_truth, run_cli, sent_each, sent_to, spawn, stop, stored_trades
from .recording import MIN_TRADES, SYMBOLS, books_valid, finish, options, quiesce, start, wait_for


@pytest.fixture
def small_disk(tmp_path):
    """`mount(rel, size)`: a tmpfs of `size` at `tmp_path / rel`; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(rel: str, size: str = "2m") -> Path:
        path = tmp_path / rel
        path.mkdir(parents=True, exist_ok=True)
        ok = os.geteuid() == 0 and shutil.which("mount") and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode == 0
        if not ok:
            why = "needs root and tmpfs to make a small disk"
            if os.environ.get("CI"):
                pytest.fail(f"{why}: CI must run this test")
            pytest.skip(why)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path) -> Path:
    ballast = disk / "ballast"
    with open(ballast, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return ballast


async def test_parquet_write_failure_waits_in_memory_and_loses_nothing(tmp_path, sim, small_disk):
    """Only the tables' disk is full (the raw log's is not): the Parquet writes themselves fail."""
    data = tmp_path / "data"
    trades_disk = small_disk("data/trades")
    c = Collector("bitmart", list(SYMBOLS), options(data, sim))
    task = await start(c)
    try:
        await wait_for(lambda: books_valid(c), 10, "first snapshots")
        ballast = fill(trades_disk)
        await wait_for(lambda: any("cannot write to" in e for e in c.write_errors), 10, "a failed Parquet write")
        assert not [e for e in c.write_errors if "raw log" in e]
        await wait_for(lambda: sent_each(sim) >= MIN_TRADES, 30, "trades")
        assert c.sink.pending_rows() > 0
        ballast.unlink()  # space again: the retry must publish everything
        await finish(c, sim, task)
    finally:
        c.stop()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)
    assert c.sink.pending_rows() == 0 and c.dropped_rows == 0
    assert_equals_truth(data, sim)
    for f in data.rglob("*.parquet"):
        pq.read_metadata(f)


@pytest.mark.parametrize("full", ["trades", "all"])
async def test_full_disk_at_stop_loses_nothing_that_reached_the_recorder(tmp_path, sim, small_disk, full):
    """`trades`: only the tables' disk is full. `all`: the raw log's disk is full too, but each raw
    log holds disk space in reserve, so it is completed at stop anyway. Either way the error says the
    rows are in the raw log, and the next run recovers every trade the simulator sent."""
    data = tmp_path / "data"
    disk = small_disk("data/trades" if full == "trades" else "data")
    known = len(sim.connections)
    proc = await spawn(data, sim)
    try:
        await wait_for(lambda: sent_each(sim) >= 50, 30, "trades")
        ballast = fill(disk)
        await wait_for(lambda: sent_each(sim) >= MIN_TRADES, 30, "trades")
        await quiesce(sim)
    finally:
        err = await stop(proc)
    assert proc.returncode == 2, err
    line = " ".join(err.split())  # rich wraps long lines
    assert re.search(r"error: [\d,]+ rows could not be written", line), err
    assert "they are in the raw log and the next `recorder run` on this data dir recovers them" in line
    ballast.unlink()
    await assert_next_run_recovers(tmp_path, data, sim, sim.connections[known:], lost_trades=0)


async def test_full_disk_beyond_the_raw_reserve_says_exactly_what_is_lost(tmp_path, sim, small_disk):
    """No raw reserve: the raw log cannot be completed at stop. The error names how many rows and
    trades are lost; the next run recovers exactly the others (every trade the raw log holds)."""
    data = small_disk("data")
    opts = options(data, sim, duration=8.0, raw_reserve_bytes=0)
    task = asyncio.create_task(record("bitmart", list(SYMBOLS), opts, status=False, signals=False))
    try:
        await wait_for(lambda: sent_each(sim) >= 50, 30, "trades")
        ballast = fill(data)
        await wait_for(lambda: sent_each(sim) >= MIN_TRADES, 30, "trades")
        sim.pause()
        await sim.drain()
        with pytest.raises(RecorderError) as stopped:
            await asyncio.wait_for(task, 30)  # stops after `duration`
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    line = str(stopped.value)
    m = re.search(r"raw log could not be completed either: the ([\d,]+) rows \(([\d,]+) trades\)", line)
    assert m, line
    lost_trades = int(m[2].replace(",", ""))
    assert lost_trades > 0  # the raw log really lacks trades: the test proves something
    ballast.unlink()
    await assert_next_run_recovers(tmp_path, data, sim, sim.connections, lost_trades)


async def assert_next_run_recovers(tmp_path: Path, data: Path, sim, run1: list, lost_trades: int) -> None:
    """The next `recorder run` recovers every trade the raw log holds, in order, and exactly
    `lost_trades` of what the simulator sent to the first run are missing (at its end)."""
    first = {user: len(sent_to(sim, wire, run1)) for user, wire in SYMBOLS.items()}
    rc, err = await run_cli("run", "bitmart", *SYMBOLS, "--ws-url", sim.ws_url, "--rest-url", sim.rest_url,
                            "--data-dir", str(data), "--duration", "1", "-q")
    assert rc == 0, err
    assert "recovered" in err
    replayed = tmp_path / "replayed"
    replay([data / "raw"], replayed)
    missing = 0
    for user, wire in SYMBOLS.items():
        sent, got = sent_to(sim, wire, run1)[: first[user]], stored_trades(data, user)
        assert got == sent[: len(got)], f"{user}: stored trades are not what was sent, in order"
        assert got == stored_trades(replayed, user), f"{user}: the raw log holds trades the tables lack"
        missing += len(sent) - len(got)
    assert missing == lost_trades  # the error said exactly what would not come back
