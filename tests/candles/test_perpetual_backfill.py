"""`candles backfill bitmart_perpetual` against the perpetual simulator over loopback: the venue's
`/contract/public/kline` (seconds, both bounds, 500 a page, 12 calls per 2 s), volumes sent in
contracts and stored in base units, the CLI."""

from __future__ import annotations

import asyncio
import time

import pytest
from typer.testing import CliRunner

import recorder
from recorder.app.candles import app
from recorder.candles import backfill_async
from recorder.sim.frontends.bitmart_perpetual import BitmartPerpSim

pytestmark = pytest.mark.timeout(60)
EX, BTC = "bitmart_perpetual", "BTCUSDT"


@pytest.fixture
async def sim():
    """Trade history of 2400 minutes; paused: closed candles never change."""
    s = BitmartPerpSim(symbols=[BTC, "ETHUSDT"], seed=3, rate=1, history_minutes=2400)
    await s.start()
    s.pause()
    yield s
    await s.stop()


def expected(sim: BitmartPerpSim, step: int, lo: int, hi: int) -> dict[int, tuple]:
    """The simulator's klines as it serves them (flat in gaps), base units: open time s -> o h l c v."""
    klines = sim.market.klines(BTC, step, fill_gaps=True, until_s=hi)
    return {k.open_time: k.as_floats()[1:6] for k in klines if lo <= k.open_time < hi}


def stored(data_dir, interval: str) -> dict[int, tuple]:  # noqa: ANN001
    rows = (
        recorder.connect(data_dir)
        .execute(
            "SELECT epoch(open_time)::BIGINT, open, high, low, close, volume, quote_volume, trades "
            "FROM exchange_candles WHERE exchange = ? AND symbol = 'BTC-USDT' AND interval = ? ORDER BY 1",
            [EX, interval],
        )
        .fetchall()
    )
    assert len({r[0] for r in rows}) == len(rows), "duplicate exchange candles"
    assert all(r[6] is None and r[7] is None for r in rows)  # the venue gives no quote volume, no count
    return {r[0]: tuple(r[1:6]) for r in rows}


def minute_range(minutes: int) -> tuple[int, int]:
    hi = int(time.time()) // 60 * 60
    return hi - minutes * 60, hi


async def test_pages_of_500_in_base_units(sim, tmp_path):
    lo, hi = minute_range(2300)  # 5 windows of 500 minutes
    report = await backfill_async(tmp_path, EX, "btc-usdt", "1m", lo, hi, rest_url=sim.rest_url)
    assert report.requests == report.windows == 5 and report.skipped == 0
    want = expected(sim, 1, lo, hi)
    assert len(want) == 2300 and stored(tmp_path, "1m") == want  # volume: contracts x 0.00001
    assert sum(v for *_, v in want.values()) > 0

    lo, hi = lo - lo % 3600, hi - hi % 3600
    await backfill_async(tmp_path, EX, "BTC-USDT", "1h", lo, hi, rest_url=sim.rest_url)
    await backfill_async(tmp_path, EX, "BTC-USDT", "5m", lo, hi, rest_url=sim.rest_url)
    assert stored(tmp_path, "1h") == expected(sim, 60, lo, hi)
    assert stored(tmp_path, "5m") == expected(sim, 5, lo, hi)


async def test_the_rate_limit_and_a_429_are_honoured(sim, tmp_path):
    lo, hi = minute_range(100)
    sim.fail_rest(429, count=2, retry_after=0.3)  # the market list, then the first page
    started = time.monotonic()
    await backfill_async(tmp_path, EX, "BTC-USDT", "1m", lo, hi, rest_url=sim.rest_url)
    assert time.monotonic() - started >= 0.55
    assert stored(tmp_path, "1m") == expected(sim, 1, lo, hi)
    # 14 windows of 500 minutes (mostly before the history: empty pages): the 13th request waits
    # for the venue's 12-per-2-s window
    lo, hi = minute_range(2300)
    started = time.monotonic()
    await backfill_async(tmp_path, EX, "BTC-USDT", "1m", lo - 14 * 500 * 60, lo, rest_url=sim.rest_url)
    assert time.monotonic() - started >= 1.9


async def test_cli_backfill(sim, tmp_path):
    lo, hi = minute_range(600)
    args = ["backfill", EX, "BTC-USDT", "--start", str(lo), "--end", str(hi), "--data-dir", str(tmp_path),
            "--rest-url", sim.rest_url]  # fmt: skip
    out = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert out.exit_code == 0 and "klines of BTC-USDT" in out.output, out.output
    assert stored(tmp_path, "1m") == expected(sim, 1, lo, hi)
