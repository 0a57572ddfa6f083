"""backfill against the BitMart spot simulator over loopback: pagination, limits, 429, resume, merge."""

from __future__ import annotations

import asyncio
import time

import pytest

import recorder
from recorder.candles import backfill_async
from recorder.errors import RecorderError
from recorder.sim import BitmartSpotSim

pytestmark = pytest.mark.timeout(60)
BTC = "BTC_USDT"


@pytest.fixture
async def sim(request):
    """Two symbols with trade history (1000 minutes unless marked); paused: closed candles never change."""
    marker = request.node.get_closest_marker("history")
    s = BitmartSpotSim(
        symbols=[BTC, "ETH_USDT"], seed=3, rate=1, history_minutes=marker.args[0] if marker else 1000
    )
    await s.start()
    s.pause()
    yield s
    await s.stop()


def expected(sim: BitmartSpotSim, step: int, lo: int, hi: int) -> dict[int, tuple]:
    """The simulator's own klines (as it serves them: flat candles in gaps), open time s -> floats."""
    klines = sim.market.klines(BTC, step, fill_gaps=True, until_s=hi)
    return {k.open_time: k.as_floats()[1:] for k in klines if lo <= k.open_time < hi}


def stored(data_dir, interval: str) -> dict[int, tuple]:  # noqa: ANN001
    con = recorder.connect(data_dir)
    rows = con.execute(
        "SELECT epoch(open_time)::BIGINT, open, high, low, close, volume, quote_volume, trades, epoch_us(ts) "
        "FROM exchange_candles WHERE exchange = 'bitmart' AND symbol = 'BTC-USDT' AND interval = ? "
        "ORDER BY 1",
        [interval],
    ).fetchall()
    assert len({r[0] for r in rows}) == len(rows), "duplicate exchange candles"
    assert all(r[7] is None and r[8] == r[0] * 1_000_000 for r in rows)  # no trade count; ts = open time
    return {r[0]: tuple(r[1:7]) for r in rows}


def minute_range(minutes: int, back: int = 0) -> tuple[int, int]:
    hi = int(time.time()) // 60 * 60 - back * 60
    return hi - minutes * 60, hi


@pytest.mark.history(2400)
async def test_pages_through_the_range_within_the_rate_limit(sim, tmp_path):
    lo, hi = minute_range(2300)  # 12 windows of 200 minutes
    started = time.monotonic()
    report = await backfill_async(tmp_path, "bitmart", "btc-usdt", "1m", lo, hi, rest_url=sim.rest_url)
    elapsed = time.monotonic() - started
    assert report.requests == report.windows == 12 and report.skipped == 0
    assert elapsed >= 1.9  # the 11th request waits for the 10-per-2-s window
    want = expected(sim, 1, lo, hi)
    assert len(want) == 2300
    assert stored(tmp_path, "1m") == want


@pytest.mark.history(2400)
async def test_coarser_steps(sim, tmp_path):
    lo, hi = minute_range(2000)
    lo -= lo % 3600
    hi -= hi % 3600
    await backfill_async(tmp_path, "bitmart", "BTC-USDT", "1h", lo, hi, rest_url=sim.rest_url)
    await backfill_async(tmp_path, "bitmart", "BTC-USDT", "5m", lo, hi, rest_url=sim.rest_url)
    assert stored(tmp_path, "1h") == expected(sim, 60, lo, hi)
    assert stored(tmp_path, "5m") == expected(sim, 5, lo, hi)


async def test_http_429_is_retried_honouring_retry_after(sim, tmp_path):
    lo, hi = minute_range(500)
    sim.fail_rest(429, count=3, retry_after=0.3)
    started = time.monotonic()
    report = await backfill_async(tmp_path, "bitmart", "BTC-USDT", "1m", lo, hi, rest_url=sim.rest_url)
    assert time.monotonic() - started >= 0.85
    assert report.requests == 3
    assert stored(tmp_path, "1m") == expected(sim, 1, lo, hi)


async def test_server_errors_are_retried(sim, tmp_path):
    lo, hi = minute_range(100)
    sim.fail_rest(503, count=2, retry_after=0.05)
    await backfill_async(tmp_path, "bitmart", "BTC-USDT", "1m", lo, hi, rest_url=sim.rest_url)
    assert stored(tmp_path, "1m") == expected(sim, 1, lo, hi)


async def test_an_interrupted_backfill_resumes_where_it_stopped(sim, tmp_path):
    lo, hi = minute_range(1000)  # 5 windows
    # 2 requests per 30 s: the run fetches two windows, then waits; cancel it there
    task = asyncio.create_task(
        backfill_async(
            tmp_path, "bitmart", "BTC-USDT", "1m", lo, hi, rest_url=sim.rest_url, rate_limit=(2, 30.0)
        )
    )
    await asyncio.sleep(1.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(stored(tmp_path, "1m")) == 400  # what was fetched before the interruption is kept

    report = await backfill_async(tmp_path, "bitmart", "BTC-USDT", "1m", lo, hi, rest_url=sim.rest_url)
    assert (report.windows, report.skipped, report.requests) == (5, 2, 3)
    assert stored(tmp_path, "1m") == expected(sim, 1, lo, hi)

    again = await backfill_async(tmp_path, "bitmart", "BTC-USDT", "1m", lo, hi, rest_url=sim.rest_url)
    assert again.requests == 0 and again.skipped == 5


async def test_overlapping_runs_merge_without_duplicates(sim, tmp_path):
    lo, hi = minute_range(600, back=300)
    await backfill_async(tmp_path, "bitmart", "BTC-USDT", "1m", lo, hi, rest_url=sim.rest_url)
    lo2, hi2 = lo + 150 * 60, hi + 300 * 60  # windows from lo2: stored, stored, half stored, new
    report = await backfill_async(tmp_path, "bitmart", "BTC-USDT", "1m", lo2, hi2, rest_url=sim.rest_url)
    assert report.skipped == 2 and report.requests == 2
    assert stored(tmp_path, "1m") == expected(sim, 1, lo, hi2)
    files = list((tmp_path / "exchange_candles").rglob("*.parquet"))
    assert len(files) == len({f.parent for f in files})  # one file per date partition


async def test_unknown_symbol_names_close_matches(sim, tmp_path):
    with pytest.raises(RecorderError, match="BTC-USDT"):
        await backfill_async(tmp_path, "bitmart", "BTC-USDX", "1m", rest_url=sim.rest_url)
    with pytest.raises(RecorderError, match="NEWT"):  # listed but not trading
        await backfill_async(tmp_path, "bitmart", "NEWT-USDT", "1m", rest_url=sim.rest_url)


async def test_bad_arguments_are_rejected_before_any_request(tmp_path):
    with pytest.raises(RecorderError, match="1m"):
        await backfill_async(tmp_path, "bitmart", "BTC-USDT", "1s", rest_url="http://127.0.0.1:9")
    with pytest.raises(RecorderError, match="unknown exchange .kraken.; known: "):
        await backfill_async(tmp_path, "kraken", "BTC-USDT", "1m", rest_url="http://127.0.0.1:9")
    with pytest.raises(RecorderError, match="empty range"):
        await backfill_async(tmp_path, "bitmart", "BTC-USDT", "1m", "2024-01-02", "2024-01-01")
