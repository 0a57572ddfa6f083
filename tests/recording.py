"""Shared harness for tests that run the real recorder against the real simulator in-process."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from recorder import connect
from recorder.bookreplay import rebuild_book
from recorder.collector import Collector, Options
from recorder.sim.bitmart import BitmartSpotSim

SYMBOLS = {"BTC-USDT": "BTC_USDT", "ETH-USDT": "ETH_USDT"}


async def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def books_valid(c: Collector) -> bool:
    return all(s.book.valid for s in c.streams.values())


async def caught_up(c: Collector, sim: BitmartSpotSim) -> bool:
    await sim.drain()
    return all(s.book.valid and s.book.seq == sim.version(s.wire) for s in c.streams.values())


def options(tmp_path: Path, sim: BitmartSpotSim, **kw) -> Options:
    return Options(data_dir=tmp_path, ws_url=sim.ws_url, rest_url=sim.rest_url, flush_interval=1.0, **kw)


async def start(collector: Collector) -> asyncio.Task:
    await collector.prepare()
    return asyncio.create_task(collector.run())


async def finish(collector: Collector, sim: BitmartSpotSim, task: asyncio.Task) -> None:
    """Freeze the market, let the recorder catch up with the truth, stop it cleanly."""
    sim.pause()
    deadline = time.monotonic() + 10
    while not await caught_up(collector, sim):
        assert time.monotonic() < deadline, "recorder did not catch up with the simulator"
        await asyncio.sleep(0.05)
    collector.stop()
    await asyncio.wait_for(task, 10)


def assert_book_matches_truth(tmp_path: Path, sim: BitmartSpotSim) -> None:
    for user, wire in SYMBOLS.items():
        version, bids, asks = sim.truth_book(wire)
        rebuilt = rebuild_book(tmp_path, "bitmart", user)
        assert rebuilt.seq == version
        assert rebuilt.bids == bids
        assert rebuilt.asks == asks


def assert_every_sent_trade_once(tmp_path: Path, sim: BitmartSpotSim) -> None:
    con = connect(tmp_path)
    for user, wire in SYMBOLS.items():
        sent = Counter(
            (t.ts_ms * 1000, t.side, t.price_f, t.size_f) for t in sim.sent_trades(wire)
        )
        rows = con.execute(
            "select epoch_us(ts), side, price, amount from trades where symbol = ?", [user]
        ).fetchall()
        assert sent, "the simulator sent no trades: the test proves nothing"
        assert Counter(rows) == sent
