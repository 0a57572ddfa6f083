"""`recorder replay`: re-derives every table from the raw logs, equal to what the simulator sent, and
exactly once: replaying again, or into the recording's own dir (finished or still recording), adds
nothing."""

from __future__ import annotations

import asyncio

from recorder import connect
from recorder.bookreplay import rebuild_book
from recorder.collector import Collector
from recorder.replay import replay

from .recording import SYMBOLS, books_valid, finish, options, start, wait_for
from .test_crash import TABLES, run_cli, sent_to, spawn, stop, stored_trades

MIN_TRADES = 300  # per symbol: a loss of one trade in a hundred must show


def table_rows(data) -> dict[str, list[tuple]]:
    con = connect(data)
    return {
        t: con.execute(f"select * exclude (date) from {t} order by symbol, {order}").fetchall()
        for t, order in TABLES.items()
    }


def assert_equals_truth(data, sim) -> None:
    """Trades exactly as sent, in order; books exactly the simulator's."""
    for user, wire in SYMBOLS.items():
        sent = sent_to(sim, wire, sim.connections)
        assert len(sent) >= MIN_TRADES, f"{user}: only {len(sent)} trades sent"
        got = stored_trades(data, user)
        assert got == sent, f"{user}: {len(got)} stored vs {len(sent)} sent, first difference at " + str(
            next((i for i, (a, b) in enumerate(zip(got, sent, strict=False)) if a != b), min(len(got), len(sent)))
        )
        version, bids, asks = sim.truth_book(wire)
        book = rebuild_book(data, "bitmart", user)
        assert (book.seq, book.bids, book.asks) == (version, bids, asks), user


def sent_each(sim) -> int:
    return min(len(sent_to(sim, w, sim.connections)) for w in SYMBOLS.values())


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
        sim.pause()
        await sim.drain()
        await asyncio.sleep(0.5)  # the recorder reads what is in flight
    finally:
        err = await stop(proc)
    assert proc.returncode == 0, err
    assert_equals_truth(data, sim)
    recorded = table_rows(data)
    rc, err = await run_cli("replay", str(data / "raw"), "--data-dir", str(data))  # finished now
    assert rc == 0, err
    assert "-> 0 new rows" in err
    assert table_rows(data) == recorded
