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
