"""Candles for the Peatio venue (`altmarkets`) against the Peatio simulator over loopback: the k-line
backfill (period in minutes, seconds range, only intervals with trades), build and verify agreeing,
and the live `CandlesFeed`.

Peatio's trades carry their time in whole seconds (`date`) and its klines no quote volume and no
trade count; the simulator's own klines (from millisecond trade times) are the reference.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import recorder
from recorder.candles import backfill_async, build_candles, verify
from recorder.candles import feed as feed_module
from recorder.candles.feed import CandlesFeed
from recorder.errors import RecorderError
from recorder.model import TradeBatch
from recorder.sim.frontends.peatio import PeatioSim, trade_frame
from recorder.venues import venue
from recorder.venues.contract import Instrument

from .util import built, reference, write_events, write_trades

pytestmark = pytest.mark.timeout(90)

EX, SYM, BTC = "altmarkets", "BTC-USDT", "btcusdt"
S = 1_000_000
MIN = 60 * S
RECORDER = Path(sys.executable).parent / "recorder"


@pytest.fixture
async def sim():
    """Trade history of 1,500 minutes (two pages of 1m klines), paused: closed candles never change."""
    s = PeatioSim(symbols=[BTC, "ethusdt"], seed=3, rate=1, history_minutes=1500)
    await s.start()
    s.pause()
    yield s
    await s.stop()


def klines(sim: PeatioSim, minutes: int, lo: int, hi: int) -> dict[int, tuple]:
    """The simulator's klines (only intervals with trades), open time s -> (o, h, l, c, v)."""
    return {
        k.open_time: k.as_floats()[1:6] for k in sim.market.klines(BTC, minutes) if lo <= k.open_time < hi
    }


def stored(data_dir: Path, interval: str) -> dict[int, tuple]:
    rows = (
        recorder.connect(data_dir)
        .execute(
            "SELECT epoch(open_time)::BIGINT, open, high, low, close, volume, quote_volume, trades "
            "FROM exchange_candles WHERE exchange = ? AND symbol = ? AND interval = ? ORDER BY 1",
            [EX, SYM, interval],
        )
        .fetchall()
    )
    assert len({r[0] for r in rows}) == len(rows), "duplicate exchange candles"
    assert all(r[6] is None and r[7] is None for r in rows)  # Peatio klines: no quote volume, no count
    return {r[0]: tuple(r[1:6]) for r in rows}


def minute_range(minutes: int) -> tuple[int, int]:
    hi = int(time.time()) // 60 * 60
    return hi - minutes * 60, hi


def recorded_rows(sim: PeatioSim) -> list[tuple]:
    """The simulator's trades as the recorder stores them: each `<m>.trades` frame the simulator
    would send, read by the adapter's codec (time from `date` seconds, id from `tid`), received 2 ms
    after the trade."""
    codec = venue(EX).codec([Instrument(SYM, BTC)])
    rows = []
    for t in sim.truth_trades(BTC):
        (batch,) = codec.parse(trade_frame(BTC, sim.trade_id(t), t))
        assert type(batch) is TradeBatch
        rows += [(ts, t.ts_ms * 1000 + 2000, tid, side, p, a) for ts, tid, side, p, a in batch.trades]
    return rows


async def test_backfill_pages_k_line_by_period_and_stores_exactly_its_candles(sim, tmp_path):
    lo, hi = minute_range(1400)  # two windows of 1,000 minutes
    report = await backfill_async(tmp_path, EX, "btc-usdt", "1m", lo, hi, rest_url=sim.rest_url)
    assert report.requests == report.windows == 2
    want = klines(sim, 1, lo, hi)
    assert 1000 < len(want) < 1400  # minutes without trades have no Peatio candle
    assert stored(tmp_path, "1m") == want
    lo_h, hi_h = lo - lo % 3600, hi - hi % 3600
    await backfill_async(tmp_path, EX, SYM, "1h", lo_h, hi_h, rest_url=sim.rest_url)
    await backfill_async(tmp_path, EX, SYM, "5m", lo_h, hi_h, rest_url=sim.rest_url)
    assert stored(tmp_path, "1h") == klines(sim, 60, lo_h, hi_h)
    assert stored(tmp_path, "5m") == klines(sim, 5, lo_h, hi_h)
    # a re-run over an overlapping range adds nothing twice (windows with empty minutes are asked again)
    again = await backfill_async(tmp_path, EX, SYM, "1m", lo + 600 * 60, hi, rest_url=sim.rest_url)
    assert again.windows == 1
    assert stored(tmp_path, "1m") == want


async def test_backfill_retries_429_and_names_close_matches(sim, tmp_path):
    lo, hi = minute_range(100)
    sim.fail_rest(429, count=2, retry_after=0.2)
    await backfill_async(tmp_path, EX, SYM, "1m", lo, hi, rest_url=sim.rest_url)
    assert stored(tmp_path, "1m") == klines(sim, 1, lo, hi)
    with pytest.raises(RecorderError, match="did you mean BTC-USDT"):
        await backfill_async(tmp_path, EX, "BTC-USDX", "1m", rest_url=sim.rest_url)
    with pytest.raises(RecorderError, match="1m"):  # Peatio has no 1s klines
        await backfill_async(tmp_path, EX, SYM, "1s", rest_url=sim.rest_url)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(RECORDER), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


async def test_cli_backfill_build_and_verify_agree(sim, tmp_path):
    rows = recorded_rows(sim)
    assert len(rows) > 2000 and all(r[0] % S == 0 for r in rows)  # whole seconds
    write_trades(tmp_path, rows, EX, SYM)
    first = rows[0][0]
    write_events(tmp_path, [(first - MIN, "subscribed"), (time.time_ns() // 1000, "stop")], EX, SYM)
    data = str(tmp_path)
    p = await asyncio.to_thread(
        cli, "candles", "build", "--data-dir", data, "--interval", "1m,5m,1h", cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr
    start = str(first // S - 3600)
    for interval in ("1m", "5m", "1h"):
        args = ("candles", "backfill", EX, SYM, "--interval", interval, "--start", start, "-q")
        p = await asyncio.to_thread(cli, *args, "--data-dir", data, "--rest-url", sim.rest_url, cwd=tmp_path)
        assert p.returncode == 0 and f"klines of {SYM}" in p.stdout, p.stdout + p.stderr
        p = await asyncio.to_thread(cli, "candles", "verify", EX, SYM, "--interval", interval, "--data-dir", data,
                                    cwd=tmp_path)  # fmt: skip
        assert p.returncode == 0 and "OK" in p.stdout, p.stdout
        result = verify(tmp_path, EX, SYM, interval)
        assert result.ok and result.matched > 10 and result.missed_in_coverage == 0, interval
        assert result.mismatched == result.missing_exchange == 0
    # a lost minute of trades inside the coverage fails verification
    lost = sorted({r[0] // MIN * MIN for r in rows})[len(rows) // 200]
    other = tmp_path / "lost"
    write_trades(other, [r for r in rows if r[0] // MIN * MIN != lost], EX, SYM)
    write_events(other, [(first - MIN, "subscribed"), (time.time_ns() // 1000, "stop")], EX, SYM)
    for args in (("candles", "build", "--data-dir", str(other)),
                 ("candles", "backfill", EX, SYM, "--start", start, "-q", "--data-dir", str(other),
                  "--rest-url", sim.rest_url)):  # fmt: skip
        assert (await asyncio.to_thread(cli, *args, cwd=tmp_path)).returncode == 0
    p = await asyncio.to_thread(cli, "candles", "verify", EX, SYM, "--data-dir", str(other), cwd=tmp_path)
    assert p.returncode == 1 and "FAILED" in p.stdout, p.stdout


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
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def us_index(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out.index = df.index.as_unit("us").asi8
    return out


async def test_live_feed_history_live_minute_and_seam_repair(monkeypatch):
    # Peatio serves no candle for a minute without trades: the feed asks for those (REPAIR_TRIES
    # times, REPAIR_RETRY apart) before it gives up on them; short delays keep the test short
    monkeypatch.setattr(feed_module, "REPAIR_DELAY", 0.3)
    monkeypatch.setattr(feed_module, "REPAIR_RETRY", 0.3)
    clock = Clock(lead=2.0)
    sim = PeatioSim(symbols=[BTC], seed=5, rate=200, history_minutes=40)
    sim.market.clock = clock.ms  # exchange time = the shifted clock
    await sim.start()
    feed = CandlesFeed(
        EX,
        SYM,
        "1m",
        max_candles=30,
        ws_url=sim.ws_url,
        rest_url=sim.rest_url,
        grace=1.0,
        clock=clock.seconds,
    )
    m = clock.boundary * S  # the minute that starts while the test runs
    seam = m - MIN  # the minute in which the feed subscribed
    try:
        await feed.start()
        assert feed.live
        df = us_index(feed.candles)
        history = df[df.source == "exchange"]
        want = {b * S: v for b, v in klines(sim, 1, 0, seam // S).items()}
        assert 0 < feed.backfilled <= 29 and list(history.index) == sorted(
            b for b in want if b >= seam - 29 * MIN
        )
        assert all(
            tuple(history.loc[b, ["open", "high", "low", "close", "volume"]]) == want[b]
            for b in history.index
        )
        assert history.trades.isna().all() and history.quote_volume.isna().all()  # not in Peatio klines
        await wait_for(
            lambda: feed.current is not None and feed.current.open_time.timestamp() * S == m, 5, "minute m"
        )
        await wait_for(lambda: feed.engine.bars[seam].source == "exchange", 5, "the seam minute repaired")
        empty = [b for b in range(seam - 29 * MIN, seam, MIN) if b not in want]  # no trades, no candle
        await asyncio.sleep(1.0)
        sim.pause()
        await sim.drain()
        await asyncio.sleep(0.2)
        df = us_index(feed.candles)
    finally:
        await feed.stop()
        await sim.stop()
    assert not set(empty) & set(df.index)  # never invented
    assert all(feed.engine.repair_tries[b] == 3 for b in empty)
    k = {x.open_time * S: x for x in sim.market.klines(BTC, 1)}
    assert tuple(df.loc[seam, ["open", "high", "low", "close", "volume"]]) == k[seam].as_floats()[1:6]
    # the current minute is live, complete so far, and equals the exchange's own running candle
    cur = df.loc[m]
    assert cur.source == "live" and cur.complete and not cur.closed
    assert (cur.open, cur.high, cur.low, cur.close) == k[m].as_floats()[1:5]
    assert math.isclose(cur.volume, float(k[m].volume), rel_tol=1e-9) and cur.trades == k[m].trades


async def test_live_feed_one_second_candles_from_whole_second_trades(tmp_path):
    sim = PeatioSim(symbols=[BTC], seed=11, rate=300)
    await sim.start()
    feed = CandlesFeed(EX, SYM, "1s", ws_url=sim.ws_url, rest_url=sim.rest_url, grace=0.3, history=False)
    try:
        await feed.start()
        await asyncio.sleep(3.0)
        sim.pause()
        await sim.drain()
        sent = sim.sent_trades(BTC)
        last = sent[-1].ts_ms // 1000 * S
        await wait_for(lambda: last in feed.engine.bars and feed.engine.bars[last].closed, 3, "time close")
    finally:
        await feed.stop()
        await sim.stop()
    rows = [(t.ts_ms // 1000 * S, 0, str(sim.trade_id(t)), t.side, t.price_f, t.size_f) for t in sent]
    assert len(rows) > 100
    df = us_index(feed.candles)
    span = df.loc[rows[0][0] : last]
    want = reference(rows, S).loc[span.index.intersection(reference(rows, S).index)]
    traded = span[span.trades > 0]
    assert list(traded.index) == list(want.index)
    for col in ("open", "high", "low", "close"):
        assert traded[col].tolist() == want[col].tolist(), col
    assert traded.trades.astype("int64").tolist() == want.trades.astype("int64").tolist()
    assert feed.stats.trades == len(rows)
    write_trades(tmp_path, rows, EX, SYM)  # the batch builder agrees on the same trades
    build_candles(tmp_path, intervals="1s")
    b = built(recorder.connect(tmp_path), "1s", EX, SYM)
    assert b.loc[want.index, "close"].tolist() == want.close.tolist()
