"""Every fault injected for real over a socket: the recorder keeps running, records an `error` or
`gap` event, the book stays exact, and neighbouring valid messages are kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from recorder import connect
from recorder.collector import Collector
from recorder.sim import BitmartSpotSim

from .recording import (
    MIN_TRADES,
    SYMBOLS,
    assert_book_matches_truth,
    assert_every_sent_trade_once,
    books_valid,
    finish,
    options,
    record_trades,
    start,
    wait_for,
)


async def run_fault(tmp_path: Path, sim: BitmartSpotSim, inject, settle, **opts) -> list[tuple]:
    """Record, inject a fault once the books are valid, wait for `settle`, stop; return events.

    Hundreds of trades per symbol on each side of the fault, so that a loss of one trade in a hundred,
    a doubled or a reordered trade fails the order-aware comparison with what the simulator sent.
    """
    c = Collector("bitmart", list(SYMBOLS), options(tmp_path, sim, **opts))
    task = await start(c)
    await wait_for(lambda: books_valid(c), 10, "first snapshots")
    await record_trades(sim, MIN_TRADES // 2)
    before = {u: (s.book.snapshots, s.book.gaps) for u, s in c.streams.items()}
    inject(sim)
    await wait_for(lambda: settle(c, before), 20, "recovery from the fault")
    await record_trades(sim, MIN_TRADES // 2)  # neighbouring messages after the fault
    await finish(c, sim, task)
    assert_book_matches_truth(tmp_path, sim)
    assert_every_sent_trade_once(tmp_path, sim)
    return connect(tmp_path).execute("select symbol, channel, event, detail from events order by ts").fetchall()


def resynced(user: str, n: int = 1):
    return lambda c, before: c.streams[user].book.snapshots >= before[user][0] + n and books_valid(c)


def reconnected(c: Collector, before) -> bool:
    return sum(x.reconnects for x in c.connections) >= 1 and books_valid(c)


def has(events, event: str, channel: str | None = None, text: str = "") -> bool:
    return any(e == event and (channel is None or ch == channel) and text in d for _, ch, e, d in events)


async def test_abrupt_disconnect(tmp_path, sim):
    ev = await run_fault(tmp_path, sim, lambda s: s.drop_connections(), reconnected)
    assert has(ev, "disconnect") and has(ev, "resync", "book", "starts book")


async def test_server_stops_answering(tmp_path, sim):
    def inject(s):
        s.go_dead()

    ev = await run_fault(tmp_path, sim, inject, reconnected)  # a liquid stream: ~3 s, not 30 s
    assert has(ev, "error", text="no data for")
    assert has(ev, "disconnect")


async def test_skipped_version_is_a_gap_and_resyncs(tmp_path, sim):
    ev = await run_fault(tmp_path, sim, lambda s: s.skip_version("BTC_USDT"), resynced("BTC-USDT"))
    assert has(ev, "gap", "book", "expected seq")


async def test_duplicated_version_is_dropped(tmp_path, sim):
    ev = await run_fault(tmp_path, sim, lambda s: s.duplicate_version("ETH_USDT"), resynced("ETH-USDT"))
    assert has(ev, "error", "book", "out-of-order")


async def test_version_going_backwards_is_dropped(tmp_path, sim):
    ev = await run_fault(tmp_path, sim, lambda s: s.send_stale_version("BTC_USDT"), resynced("BTC-USDT"))
    assert has(ev, "error", "book", "out-of-order")


@pytest.mark.parametrize(
    "inject, text",
    [
        (lambda s: s.send_malformed_json(), "undecodable"),
        (lambda s: s.send_invalid_deflate(), "undecodable"),
        (lambda s: s.send_deflate_bomb(), "deflate bomb"),
    ],
    ids=["malformed-json", "invalid-deflate", "deflate-bomb"],
)
async def test_garbage_frames_are_errors_and_books_resync(tmp_path, sim, inject, text):
    ev = await run_fault(tmp_path, sim, inject, resynced("BTC-USDT"))
    assert has(ev, "error", "trades", text) and has(ev, "error", "book", text)


async def test_oversized_frame_drops_the_socket_and_reconnects(tmp_path, sim):
    ev = await run_fault(tmp_path, sim, lambda s: s.send_oversized_frame(6 * 1024 * 1024), reconnected)
    assert has(ev, "disconnect")


async def test_subscribe_error_is_recorded_and_retried(tmp_path, sim):
    c = Collector("bitmart", list(SYMBOLS), options(tmp_path, sim, ack_timeout=1.0))
    sim.fail_next_subscribe(1)
    task = await start(c)
    await wait_for(lambda: books_valid(c) and all(t.acked for x in c.connections for t in x.topics), 15, "retry")
    await record_trades(sim, MIN_TRADES)
    await finish(c, sim, task)
    con = connect(tmp_path)
    ev = con.execute("select symbol, channel, event, detail from events").fetchall()
    assert has(ev, "error", text="90004")
    assert_book_matches_truth(tmp_path, sim)
    assert_every_sent_trade_once(tmp_path, sim)
    # a refused subscription is not coverage: each trade stream is valid from its ack on
    starts = con.execute(
        "select symbol, min(start_ts) from coverage where channel = 'trades' group by all order by all"
    ).fetchall()
    acks = con.execute(
        "select symbol, min(ts) from events where channel = 'trades' and event = 'subscribed' group by all order by all"
    ).fetchall()
    assert starts == acks


async def test_bursty_sending(tmp_path, sim):
    """A burst of thousands of updates at once (paused market stepped in one go)."""

    def burst(s):
        s.pause()
        s.step(count=5000)
        s.resume()

    c = Collector("bitmart", list(SYMBOLS), options(tmp_path, sim))
    task = await start(c)
    await wait_for(lambda: books_valid(c), 10, "first snapshots")
    burst(sim)
    await asyncio.sleep(0.5)
    await finish(c, sim, task)
    assert_book_matches_truth(tmp_path, sim)
    assert_every_sent_trade_once(tmp_path, sim)
    ev = connect(tmp_path).execute("select symbol, channel, event, detail from events").fetchall()
    assert not has(ev, "gap") and not has(ev, "error")


@pytest.mark.parametrize("status, retry_after", [(429, 0.3), (429, None), (500, None)])
async def test_rest_errors_at_start_are_retried(tmp_path, sim, status, retry_after):
    sim.fail_rest(status, count=2, retry_after=retry_after)
    c = Collector("bitmart", list(SYMBOLS), options(tmp_path, sim))
    task = await start(c)
    await wait_for(lambda: books_valid(c), 15, "start after REST errors")
    await record_trades(sim, MIN_TRADES)
    await finish(c, sim, task)
    assert_book_matches_truth(tmp_path, sim)
    assert_every_sent_trade_once(tmp_path, sim)


async def test_market_going_quiet_is_not_a_dead_socket(tmp_path):
    """A liquid stream that suddenly goes silent (no updates, no heartbeats) but whose server still
    answers pings keeps its connection: the watchdog probes before it reconnects."""
    quiet = BitmartSpotSim(symbols=list(SYMBOLS.values()), seed=2, rate=1000.0, heartbeat_interval=1000.0)
    await quiet.start(host="127.0.0.1", port=0)
    try:
        c = Collector("bitmart", list(SYMBOLS), options(tmp_path, quiet))
        task = await start(c)
        await wait_for(lambda: books_valid(c), 10, "first snapshots")
        await record_trades(quiet, MIN_TRADES)  # meanwhile the watchdog learns a busy rate
        quiet.pause()
        await asyncio.sleep(9)  # silent for 3x the watchdog's 3 s floor
        assert sum(x.reconnects for x in c.connections) == 0
        await finish(c, quiet, task)
    finally:
        await quiet.stop()
    assert_book_matches_truth(tmp_path, quiet)
    assert_every_sent_trade_once(tmp_path, quiet)


async def test_a_book_that_gaps_after_every_snapshot_backs_off(tmp_path, sim):
    """A gap right after each snapshot, for 8 s: without a back-off the recorder would resync many
    times a second (the simulator pushes every few ms); with it, four at once, then 1, 2, 4 s apart.
    Afterwards the book heals and is exact."""
    c = Collector("bitmart", list(SYMBOLS), options(tmp_path, sim))
    task = await start(c)
    await wait_for(lambda: books_valid(c), 10, "first snapshots")
    s = c.streams["BTC-USDT"]
    start_snaps, start_gaps = s.book.snapshots, s.book.gaps
    deadline = asyncio.get_running_loop().time() + 8.0
    while asyncio.get_running_loop().time() < deadline:
        if s.book.valid:
            seen = s.book.gaps
            sim.skip_version("BTC_USDT")
            await wait_for(lambda seen=seen: s.book.gaps > seen, 5, "the gap")
        await asyncio.sleep(0.005)
    snaps, gaps = s.book.snapshots - start_snaps, s.book.gaps - start_gaps
    assert gaps >= 6, f"only {gaps} gaps: the fault did not bite"
    assert snaps <= 8, f"{snaps} resyncs in 8 s: no back-off"
    await wait_for(lambda: books_valid(c), 20, "the book after the back-off")
    await finish(c, sim, task)
    assert_book_matches_truth(tmp_path, sim)
