"""`recorder replay`: re-derives every table from the raw logs, equal to what the simulator sent, and
exactly once: replaying again, or into the recording's own dir (finished or still recording), adds
nothing."""

from __future__ import annotations

from recorder.collector import Collector
from recorder.replay import replay

from .processes import assert_equals_truth, run_cli, sent_each, spawn, stop, table_rows
from .recording import MIN_TRADES, SYMBOLS, books_valid, finish, options, quiesce, start, wait_for


async def test_replay_equals_truth_and_is_exactly_once(tmp_path, sim):
    live = tmp_path / "live"
    c = Collector("bitmart", list(SYMBOLS), options(live, sim))
    task = await start(c)
    await wait_for(lambda: books_valid(c), 10, "first snapshots")
    await wait_for(lambda: sent_each(sim) >= MIN_TRADES // 2, 30, "trades")
    sim.skip_version("ETH_USDT")  # a gap and a resync, replayed from the log too
    sim.send_invalid_deflate()
    await wait_for(lambda: sent_each(sim) >= MIN_TRADES, 30, "trades")
    await finish(c, sim, task)
    assert_equals_truth(live, sim)
    recorded = table_rows(live)

    out = tmp_path / "replayed"
    first = replay([live / "raw"], out)
    assert first.files >= 1 and first.rows > 0
    assert_equals_truth(out, sim)
    assert table_rows(out) == recorded  # a replay into an empty dir: the live rows, row for row

    again = replay([live / "raw"], out)
    assert again.rows == 0 and again.records == first.records
    assert table_rows(out) == recorded

    own = replay([live / "raw"], live)  # into the recording's own dir
    assert own.rows == 0
    assert table_rows(live) == recorded
    assert_equals_truth(live, sim)
    assert not (first.skipped or again.skipped or own.skipped)  # the run is over: nothing skipped


async def test_replay_into_a_running_recordings_dir_adds_nothing(tmp_path, sim):
    data = tmp_path / "data"
    proc = await spawn(data, sim)
    try:
        await wait_for(lambda: sent_each(sim) >= MIN_TRADES // 2, 30, "trades")
        rc, err = await run_cli("replay", str(data / "raw"), "--data-dir", str(data))
        assert rc == 0, err
        assert "skipped" in err and "still recording" in err
        await wait_for(lambda: sent_each(sim) >= MIN_TRADES, 30, "trades")
        await quiesce(sim)
    finally:
        err = await stop(proc)
    assert proc.returncode == 0, err
    assert_equals_truth(data, sim)
    recorded = table_rows(data)
    rc, err = await run_cli("replay", str(data / "raw"), "--data-dir", str(data))  # finished now
    assert rc == 0, err
    assert "-> 0 new rows" in err
    assert table_rows(data) == recorded


def test_only_a_connections_whole_log_counts_as_complete(tmp_path):
    """Replaying one date's folder of a log that goes on in the next must not be taken as the whole
    log (it would add a crash `stop` and mark rows that later parts continue as final)."""
    from recorder.replay import _whole_log

    ex = tmp_path / "raw" / "exchange=bitmart"
    names = {
        ("2026-11-21", 0): "20261121T2330Z-r1-c0p0.rawlog.zst",
        ("2026-11-22", 1): "20261122T0030Z-r1-c0p1.rawlog.zst",
        ("2026-11-22", 9): "20261122T0030Z-r2-c0p0.rawlog.zst",  # another run: not a sibling
    }
    paths = {}
    for (day, key), name in names.items():
        (ex / f"date={day}").mkdir(parents=True, exist_ok=True)
        paths[key] = ex / f"date={day}" / name
        paths[key].write_bytes(b"")
    assert _whole_log([paths[0], paths[1]])
    assert not _whole_log([paths[0]])  # part 1 lies in the next date's folder
    assert not _whole_log([paths[1]])  # does not start at part 0
    assert _whole_log([paths[9]])


async def test_replay_skips_a_damaged_file_in_the_target(tmp_path, sim):
    """A truncated Parquet file in the target dir neither stops a replay (or a recovery, which
    reads the same footers) nor counts as holding rows."""
    data = tmp_path / "data"
    c = Collector("bitmart", list(SYMBOLS), options(data, sim))
    task = await start(c)
    await wait_for(lambda: sent_each(sim) >= MIN_TRADES, 30, "trades")
    await finish(c, sim, task)
    recorded = table_rows(data)
    part = next((data / "trades").glob("*/*/date=*"))
    (part / "zz-damaged.parquet").write_bytes(b"PAR1 truncated")
    res = replay([data / "raw"], data)
    assert res.rows == 0
    assert table_rows(data) == recorded
