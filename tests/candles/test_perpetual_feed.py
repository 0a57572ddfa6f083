"""`CandlesFeed("bitmart_perpetual", ...)` live against the perpetual simulator: candles from the
`futures/trade` pushes (contracts -> base units) equal the batch builder's over exactly the trades
sent, and the history comes from the venue's klines in base units."""

from __future__ import annotations

import asyncio
import calendar
import time

import pytest

import recorder
from recorder.candles import build_candles
from recorder.candles.feed import CandlesFeed
from recorder.sim.frontends.bitmart_perpetual import BitmartPerpSim

from .test_feed import assert_same_candles, collect, us_index, wait_for
from .util import built, write_trades

pytestmark = pytest.mark.timeout(30)
EX, BTC = "bitmart_perpetual", "BTCUSDT"
S = 1_000_000


def sent_rows(sim: BitmartPerpSim) -> list[tuple]:
    """The trades written to the feed's sockets as trade rows, from the wire items: the id, created_at
    to µs, the side from `m`, contracts x contract size."""
    rows = []
    for t in sim.sent_trades(BTC):
        item = sim.trade_item(t)
        head, frac = item["created_at"].removesuffix("Z").split(".")
        ts = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) * S + int(frac[:6])
        rows.append((ts, ts, str(item["trade_id"]), "sell" if item["m"] else "buy", t.price_f, t.size_f))
    return rows


async def test_live_candles_equal_built_candles(tmp_path):
    sim = BitmartPerpSim(symbols=[BTC], seed=11, rate=300)
    await sim.start()
    feed = CandlesFeed(
        EX, "btc-usdt", "1s", ws_url=sim.ws_url, rest_url=sim.rest_url, grace=0.3, history=False
    )
    updates: list = []
    consumer = asyncio.create_task(collect(feed, updates))
    try:
        await feed.start()
        assert feed.live
        await asyncio.sleep(2.5)
        sim.pause()
        await sim.drain()
        rows = sent_rows(sim)
        last = rows[-1][0] // S * S
        await wait_for(lambda: last in feed.engine.bars and feed.engine.bars[last].closed, 3, "time close")
    finally:
        await feed.stop()
        await sim.stop()
    await asyncio.wait_for(consumer, 2)

    assert len(rows) > 100
    df = us_index(feed.candles)
    first = rows[0][0] // S * S
    write_trades(tmp_path, rows, exchange=EX)
    build_candles(tmp_path, intervals="1s", fill=True)
    want = built(recorder.connect(tmp_path), "1s", exchange=EX)
    assert_same_candles(df.loc[first:last], want)
    assert feed.stats.trades == len(rows) and feed.dropped_updates == 0


async def test_history_from_the_venues_klines_in_base_units():
    sim = BitmartPerpSim(symbols=[BTC], seed=5, rate=50, history_minutes=40)
    await sim.start()
    feed = CandlesFeed(EX, "BTC-USDT", "1m", max_candles=20, ws_url=sim.ws_url, rest_url=sim.rest_url)
    try:
        await feed.start()
        df = us_index(feed.candles)
    finally:
        await feed.stop()
        await sim.stop()
    history = df[df.source == "exchange"]
    assert feed.backfilled == len(history) >= 18
    klines = {k.open_time * S: k.as_floats()[1:6] for k in sim.market.klines(BTC, 1, fill_gaps=True)}
    for b, r in history.iterrows():
        assert (r.open, r.high, r.low, r.close, r.volume) == klines[b]  # volume: contracts x 0.00001
    assert history.volume.sum() > 0 and history.trades.isna().all()
