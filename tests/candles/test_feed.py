"""The live candles feed against the BitMart spot simulator over loopback, and its rules on their own.

The integration tests compare the feed with candles computed independently from exactly the trades
the simulator sent (`build_candles` over those trades written to Parquet, the simulator's own
klines), so a candle that matches proves the feed bucketed, ordered and summed them right.
"""

from __future__ import annotations

import asyncio
import math
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import recorder
from recorder.candles import build_candles
from recorder.candles import feed as feed_module
from recorder.candles.feed import CandlesFeed
from recorder.candles.live import LiveCandles
from recorder.errors import RecorderError
from recorder.sim import BitmartSpotSim

from .util import built, reference, write_trades

pytestmark = pytest.mark.timeout(30)
BTC = "BTC_USDT"
S = 1_000_000
MIN = 60 * S
RECORDER = Path(sys.executable).parent / "recorder"


# ---- helpers ------------------------------------------------------------------------------------


class Clock:
    """Wall clock shifted to start `lead` seconds before a minute boundary, shared by the simulator
    (its exchange time) and the feed (its wall clock): minute candles close within a test's time."""

    def __init__(self, lead: float) -> None:
        now = time.time()
        self.boundary = (int(now) // 60 + 2) * 60
        self.offset = self.boundary - lead - now

    def seconds(self) -> float:
        return time.time() + self.offset

    def ms(self) -> int:
        return int(self.seconds() * 1000)


async def wait_for(cond, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def collect(feed: CandlesFeed, into: list) -> None:
    async for update in feed:
        into.append((feed.clock(), update))


def us(dt) -> int:  # noqa: ANN001
    """An aware datetime or Timestamp -> epoch microseconds."""
    return pd.Timestamp(dt).value // 1000


def sent_rows(sim: BitmartSpotSim) -> list[tuple]:
    """The trades the simulator wrote to the feed's sockets, as trade rows, in the order sent."""
    return [(t.ts_ms * 1000, t.ts_ms * 1000, None, t.side, t.price_f, t.size_f) for t in sim.sent_trades(BTC)]


def us_index(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out.index = df.index.as_unit("us").asi8
    return out


def closed_complete(feed: CandlesFeed, since: int) -> bool:
    """A closed, complete candle with trades opened at or after `since` (epoch µs)?"""
    df = us_index(feed.candles)
    return bool((df.closed & df.complete & (df.trades > 0) & (df.index >= since)).any())


def assert_same_candles(feed_df: pd.DataFrame, want: pd.DataFrame) -> None:
    """OHLC and trade counts exactly; sums to float rounding (summation order differs)."""
    assert list(feed_df.index) == list(want.index)
    for col in ("open", "high", "low", "close"):
        assert feed_df[col].tolist() == want[col].tolist(), col
    assert feed_df["trades"].astype("int64").tolist() == want["trades"].astype("int64").tolist()
    for col in ("volume", "quote_volume", "buy_volume", "vwap"):
        np.testing.assert_allclose(
            feed_df[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-9, err_msg=col
        )


def truth(sim: BitmartSpotSim, step: int = 1) -> dict[int, tuple]:
    """The simulator's klines as it serves them (flat in gaps), open time us -> o h l c v qv."""
    return {k.open_time * S: k.as_floats()[1:] for k in sim.market.klines(BTC, step, fill_gaps=True)}


def row(df: pd.DataFrame, b: int) -> tuple:
    r = df.loc[b]
    return (r.open, r.high, r.low, r.close, r.volume, r.quote_volume)


# ---- against the simulator ----------------------------------------------------------------------


async def test_live_candles_equal_built_candles_and_close_by_trade_or_time(tmp_path):
    sim = BitmartSpotSim(symbols=[BTC], seed=11, rate=300)
    await sim.start()
    feed = CandlesFeed(
        "bitmart", "btc-usdt", "1s", ws_url=sim.ws_url, rest_url=sim.rest_url, grace=0.3, history=False
    )
    updates: list = []
    consumer = asyncio.create_task(collect(feed, updates))  # iterating before start() is fine
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
    await asyncio.wait_for(consumer, 2)  # `async for` ends when the feed stops

    assert len(rows) > 100
    df = us_index(feed.candles)
    first = rows[0][0] // S * S
    # the same trades through the batch builder (arrival order = file order breaks ties)
    write_trades(tmp_path, rows)
    build_candles(tmp_path, intervals="1s", fill=True)
    want = built(recorder.connect(tmp_path), "1s")
    span = df.loc[first:last]
    assert_same_candles(span, want)
    assert (span.source == "live").all() and span.closed.all()
    assert feed.stats.trades == len(rows) and feed.stats.late_applied == 0
    # complete from the first whole second after the subscription; the seam second is not
    (subscribed, end), *more = feed.coverage
    assert not more and end is not None  # ended by the stop
    seam = int(subscribed.timestamp() * S) // S * S
    assert (span.complete == (span.index > seam)).all()
    # closing: by a later trade (before its end + grace) or, for the last one, by the clock
    closes = {us(u.candle.open_time): t for t, u in updates if u.reason == "close"}
    by_trade = [b for b in span.index[:-1] if closes[b] < (b + S) / S + 0.3]
    assert len(by_trade) >= len(span) // 2
    assert closes[last] >= (last + S) / S + 0.3
    # after the last trade the clock closes watched seconds as flat candles; no trade is invented
    tail = df.loc[last + S :]
    assert (tail.trades == 0).all() and (tail.volume == 0).all() and (tail.close == df.loc[last].close).all()
    # the update stream: every candle's last update is the row in the DataFrame
    final = {us(u.candle.open_time): u.candle for _, u in updates}
    for b, r in df.iterrows():
        c = final[b]
        assert (c.open, c.close, c.trades, c.complete, c.closed) == (
            r.open,
            r.close,
            r.trades,
            r.complete,
            r.closed,
        )
    assert feed.dropped_updates == 0


async def test_backfill_seam_and_repair_from_exchange_klines(monkeypatch):
    monkeypatch.setattr(feed_module, "REPAIR_DELAY", 0.3)
    clock = Clock(lead=2.0)
    sim = BitmartSpotSim(symbols=[BTC], seed=5, rate=200, history_minutes=40)
    sim.market.clock = clock.ms  # exchange time = the shifted clock
    await sim.start()
    feed = CandlesFeed(
        "bitmart", "BTC-USDT", "1m", max_candles=30, ws_url=sim.ws_url, rest_url=sim.rest_url,
        grace=1.0, clock=clock.seconds,
    )  # fmt: skip
    updates: list = []
    m = clock.boundary * S  # the minute that starts while the test runs
    seam = m - MIN  # the minute in which the feed subscribed
    consumer = asyncio.create_task(collect(feed, updates))
    try:
        await feed.start()
        # history: the 29 minutes before the seam (30 with it), exactly the exchange's klines
        df = us_index(feed.candles)
        assert feed.backfilled == 29 and len(df) <= 30
        history = df[df.source == "exchange"]
        assert list(history.index) == list(range(seam - 29 * MIN, seam, MIN))
        klines = truth(sim)
        assert all(row(history, b) == klines[b] for b in history.index)
        assert history.complete.all() and history.closed.all() and history.trades.isna().all()
        await wait_for(lambda: feed.current is not None and us(feed.current.open_time) == m, 5, "minute m")
        # the seam minute closed by the first trade of the next one, well before its end + grace
        seam_close = [(t, u) for t, u in updates if u.reason == "close" and us(u.candle.open_time) == seam]
        assert len(seam_close) == 1
        t, u = seam_close[0]
        assert t < m / S + 1.0 and u.candle.source == "live" and not u.candle.complete
        live_seam_trades = u.candle.trades
        # ... and a moment after its end + grace the exchange's final candle replaced it
        await wait_for(lambda: feed.engine.bars[seam].source == "exchange", 5, "seam repair")
        sim.pause()
        await sim.drain()
        await asyncio.sleep(0.1)
        df = us_index(feed.candles)
        klines = truth(sim)
    finally:
        await feed.stop()
        await sim.stop()
    await asyncio.wait_for(consumer, 2)
    # no trade counted twice: the seam candle is the exchange's, not the exchange's plus the live part
    assert row(df, seam) == klines[seam] and df.loc[seam].complete
    [seam_kline] = [k for k in sim.market.klines(BTC) if k.open_time * S == seam]
    assert 0 < live_seam_trades <= seam_kline.trades  # the feed saw only the part after subscribing
    assert [u.reason for _, u in updates if us(u.candle.open_time) == seam][-1] == "repair"
    assert [u.reason for _, u in updates if u.reason == "backfill"] == ["backfill"] * 29
    assert feed.stats.repaired == 1
    # the current minute is live, complete so far, and equals the exchange's own running candle
    cur = df.loc[m]
    assert cur.source == "live" and cur.complete and not cur.closed
    o, h, low, c, v, qv = klines[m]
    assert (cur.open, cur.high, cur.low, cur.close) == (o, h, low, c)
    assert math.isclose(cur.volume, v, rel_tol=1e-9) and math.isclose(cur.quote_volume, qv, rel_tol=1e-9)
    assert cur.trades == sim.market.current_kline(BTC).trades


async def test_history_survives_reconnect_and_the_gap_is_marked():
    sim = BitmartSpotSim(symbols=[BTC], seed=8, rate=300)
    await sim.start()
    feed = CandlesFeed(
        "bitmart", "BTC-USDT", "1s", ws_url=sim.ws_url, rest_url=sim.rest_url, grace=0.3, history=False
    )
    try:
        await feed.start()
        # a candle with trades closed, complete, before the drop (not a fixed sleep: on a loaded
        # machine two seconds held none), and one after the reconnect
        await wait_for(lambda: closed_complete(feed, 0), 10, "a closed candle before the drop")
        await asyncio.sleep(0.2)  # a later trade closes a candle at once: its end clear of the drop's margin
        before = feed.candles
        assert sim.drop_connections() == 1
        await wait_for(lambda: feed.reconnects >= 1 and feed.live, 10, "reconnect")
        await wait_for(lambda: closed_complete(feed, us(feed.coverage[-1][0])), 10, "a closed candle after it")
        sim.pause()
        await sim.drain()
        rows = sent_rows(sim)
        last = rows[-1][0] // S * S
        await wait_for(lambda: last in feed.engine.bars and feed.engine.bars[last].closed, 3, "time close")
    finally:
        await feed.stop()
        await sim.stop()
    after = feed.candles
    closed_before = before[before.closed]
    assert len(closed_before) >= 1
    pd.testing.assert_frame_equal(after.loc[closed_before.index], closed_before)  # nothing thrown away
    spans = feed.coverage
    lost, back = us(spans[0][1]), us(spans[-1][0])  # the disconnect, the new subscription
    df = us_index(after)
    gap = [b for b in df.index if b < back and b + S > lost]
    assert gap and not df.loc[gap].complete.any()
    # every complete candle equals the candle of the trades sent (trades the sim wrote in its last
    # milliseconds before the reset may never have arrived: those seconds are left out)
    done = df[df.complete & (df.trades > 0) & ((df.index + S <= lost - 50_000) | (df.index >= back))]
    want = reference(rows, S).loc[done.index]
    assert len(done[done.index < lost]) >= 1 and len(done[done.index >= back]) >= 1
    assert_same_candles(done, want)


async def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="interval"):
        CandlesFeed("bitmart", "BTC-USDT", "2m")
    async with BitmartSpotSim(symbols=[BTC], seed=1, rate=10) as sim:
        feed = CandlesFeed("bitmart", "BTC-USDX", ws_url=sim.ws_url, rest_url=sim.rest_url)
        with pytest.raises(RecorderError, match="unknown symbol 'BTC-USDX'.*BTC-USDT"):
            await feed.start()
        assert [u async for u in feed] == []  # a failed start leaves a stopped feed


def test_watch_cli_with_the_simulator_exits_cleanly(tmp_path):
    p = subprocess.run(
        [str(RECORDER), "candles", "watch", "bitmart", "BTC-USDT", "--sim", "--duration", "3", "--sim-rate", "100"],
        cwd=tmp_path, capture_output=True, text=True, timeout=25,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "BTC-USDT 1m" in p.stdout and "exchange" in p.stdout, p.stdout
    assert "Traceback" not in p.stderr


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_watch_cli_ctrl_c_exits_0(tmp_path):
    proc = subprocess.Popen(
        [str(RECORDER), "candles", "watch", "bitmart", "ETH-USDT", "--sim", "--interval", "1s"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        started = ""
        while "watching" not in started:  # the feed is live and the handlers are in place
            assert time.monotonic() < deadline and proc.poll() is None, started
            if select.select([proc.stderr], [], [], 0.5)[0]:
                started += proc.stderr.readline()
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = out.splitlines()  # off a terminal: a line per candle, the open one last (printed at the stop)
    assert lines and all(ln.startswith("bitmart ETH-USDT 1s ") for ln in lines), out
    assert lines[-1].endswith(" open") and "Traceback" not in err


# ---- the rules, without I/O -----------------------------------------------------------------------


def trade(ts: int, price: float, amount: float = 1.0, side: str = "buy") -> tuple:
    return (ts, ts, None, side, price, amount)


def test_ties_on_exchange_time_go_to_arrival_order():
    live = LiveCandles(MIN)
    live.on_event("subscribed", 0)
    live.on_trades([trade(10 * S, 5.0), trade(5 * S, 7.0), trade(5 * S, 6.0), trade(10 * S, 4.0)])
    c = live.current()
    assert (c.open, c.high, c.low, c.close, c.trades) == (7.0, 7.0, 4.0, 4.0, 4)


def test_late_trades_amend_live_candles_but_not_exchange_ones():
    live = LiveCandles(MIN, max_candles=3)
    live.begin(0)
    live.on_event("subscribed", 0)
    live.add_exchange([(-MIN, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0)])  # the exchange's candle before the start
    live.on_trades([trade(1 * S, 10.0), trade(61 * S, 11.0)])  # the second closes the first minute
    [update] = live.on_trades([trade(2 * S, 12.0, 2.0, "sell")])
    assert update.reason == "late" and update.closed
    assert (update.candle.high, update.candle.close, update.candle.volume, update.candle.buy_volume) == (
        12.0,
        12.0,
        3.0,
        1.0,
    )
    assert live.on_trades([trade(-30 * S, 99.0)]) == []  # the exchange already counted it
    live.on_trades([trade(121 * S, 13.0)])  # a third minute: the window (3) is full
    assert live.on_trades([trade(-200 * S, 1.0)]) == []  # older than the window: dropped
    assert (live.stats.late_applied, live.stats.exchange_covered, live.stats.late_dropped) == (1, 1, 1)


def test_closing_by_time_makes_flat_candles_only_where_the_feed_watched():
    live = LiveCandles(MIN, grace=2 * S)
    live.begin(0)
    live.on_event("subscribed", 0)
    live.on_trades([trade(5 * S, 10.0)])
    assert live.tick(MIN + S) == []  # within the grace
    [closed] = live.tick(MIN + 2 * S)
    assert closed.closed and closed.candle.trades == 1 and closed.candle.complete
    live.on_event("disconnect", 150 * S)  # minutes 2.. unwatched after 2:30
    updates = live.tick(6 * MIN)
    assert [(u.candle.open_time.minute, u.candle.trades, u.candle.complete) for u in updates] == [
        (1, 0, True),
        (2, 0, False),
    ]
    assert all(u.candle.close == 10.0 and u.candle.volume == 0 for u in updates)
    assert live.repair_due(6 * MIN + 5 * S, 0) == [2 * MIN, 3 * MIN, 4 * MIN]  # incomplete or missing


# ---- a hung socket (issue 7) ------------------------------------------------------------------------


@pytest.mark.timeout(45)
async def test_hung_socket_turns_the_silent_seconds_incomplete():
    """The socket goes silent (open TCP, no frame, no pong) while the market trades on. Meanwhile the
    clock closes the silent seconds as flat candles, complete so far; the `stale stream` verdict ends
    coverage back at the last frame received, so every candle overlapping the silence turns
    incomplete and those emitted complete are re-emitted (reason `gap`)."""
    clock = Clock(lead=30.0)  # the feed's clock is not the collector's: the verdict's stamp is converted
    sim = BitmartSpotSim(symbols=[BTC], seed=13, rate=300)
    sim.market.clock = clock.ms  # exchange time = the feed's clock
    await sim.start()
    feed = CandlesFeed(
        "bitmart", "BTC-USDT", "1s", ws_url=sim.ws_url, rest_url=sim.rest_url, grace=0.3, history=False,
        clock=clock.seconds,
    )  # fmt: skip
    updates: list = []
    consumer = asyncio.create_task(collect(feed, updates))
    try:
        await feed.start()
        await asyncio.sleep(2.5)  # the watchdog learns a busy rate
        # hang once everything sent has arrived: every trade made from then on is one the feed never sees
        sim.pause()
        await sim.drain()
        await wait_for(lambda: feed.stats.trades == len(sim.sent_trades(BTC)), 3, "the feed to catch up")
        sim.go_dead()
        hung_at = int(clock.seconds() * S)  # the last frame arrived before this
        sim.resume()
        await wait_for(lambda: feed.reconnects >= 1 and feed.live, 25, "the verdict and a reconnect")
        await asyncio.sleep(1.0)
    finally:
        await feed.stop()
        await sim.stop()
        sim.revive()
    await asyncio.wait_for(consumer, 2)

    spans = feed.coverage
    back = us(spans[-1][0])  # the new subscription
    lost = min(hung_at, us(spans[0][1]))  # the silence starts at the last frame received
    sent = {id(t) for t in sim.sent_trades(BTC)}
    unsent = [t.ts_ms * 1000 for t in sim.truth_trades(BTC) if id(t) not in sent]
    missed = [ts for ts in unsent if lost <= ts < back]
    assert len(missed) >= 20, f"the market hardly traded during the silence ({len(missed)} trades)"
    df = us_index(feed.candles)
    hole = [b for b in df.index if b < back and b + S > lost]
    assert len(hole) >= 3, hole
    assert not df.loc[hole].complete.any(), df.loc[hole]
    for b in df.index[df.complete]:
        assert not [ts for ts in missed if b <= ts < b + S], f"complete candle {b} misses undelivered trades"
    # the seconds the clock closed during the silence were emitted complete, then re-emitted incomplete
    emitted_complete = {us(u.candle.open_time) for _, u in updates if u.candle.complete} & set(hole)
    assert len(emitted_complete) >= 2, "no candle closed complete during the silence: the test proves nothing"
    for b in emitted_complete:
        last = [u for _, u in updates if us(u.candle.open_time) == b][-1]
        assert (last.reason, last.candle.complete) == ("gap", False), (b, last)
    # one hole, from the last frame received (not from the verdict) to the new subscription
    assert len(spans) == 2 and hung_at - S < us(spans[0][1]) <= hung_at, spans
