"""`candles build` and `verify` on perpetual data: trades decoded by the bitmart_perpetual adapter from
the simulator's own `futures/trade` pushes (contracts -> base units), candles built from them, and the
venue's klines (contracts -> base units) fetched from the simulator: they must agree."""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp
import pytest
from typer.testing import CliRunner

import recorder
from recorder import venues
from recorder.app.candles import app
from recorder.candles import backfill_async, build_candles, verify
from recorder.model import TradeBatch
from recorder.sim.frontends.bitmart_perpetual import BitmartPerpSim
from tests.candles.util import MIN, write_events, write_trades

pytestmark = pytest.mark.timeout(60)
EX, SYM, BTC = "bitmart_perpetual", "BTC-USDT", "BTCUSDT"


@pytest.fixture
async def sim():
    s = BitmartPerpSim(symbols=[BTC], seed=11, rate=1, history_minutes=600)
    await s.start()
    s.pause()
    yield s
    await s.stop()


async def record(sim: BitmartPerpSim, data_dir) -> None:  # noqa: ANN001
    """The simulator's trade history as the recorder stores it: each event's trades encoded as the
    venue pushes them, decoded by the adapter's codec (instrument from the venue's own market list),
    written with a receive time 2 ms later, covered by `subscribed` ... `stop` events."""
    venue = venues.venue(EX)
    async with (
        aiohttp.ClientSession() as session,
        session.get(sim.rest_url + venue.markets_request().path) as r,
    ):
        listed = venue.parse_markets(await r.json(), venue.markets_request()).instruments
    [inst] = [i for i in listed if i.symbol == SYM]
    assert inst.contract_size == "0.00001"
    codec = venue.codec([inst])
    rows = []
    for _, trades in itertools.groupby(sim.truth_trades(BTC), key=lambda t: t.ts_ms):
        [batch] = codec.parse(codec.decode(sim.trade_frame("BTC-USDT", list(trades))))
        assert isinstance(batch, TradeBatch)
        rows += [(ts, ts + 2000, tid, side, price, amount) for ts, tid, side, price, amount in batch.trades]
    write_trades(data_dir, rows, exchange=EX, symbol=SYM)
    first = rows[0][0]
    write_events(
        data_dir, [(first - MIN, "subscribed"), (time.time_ns() // 1000, "stop")], exchange=EX, symbol=SYM
    )


async def fetch(sim: BitmartPerpSim, data_dir, interval: str) -> None:  # noqa: ANN001
    start = sim.truth_trades(BTC)[0].ts_ms // 1000 - 3600
    await backfill_async(data_dir, EX, SYM, interval, start, rest_url=sim.rest_url)


async def test_built_candles_match_the_venues_klines_in_base_units(sim, tmp_path):
    await record(sim, tmp_path)
    build_candles(tmp_path, intervals="1m,5m,1h")
    for interval in ("1m", "5m", "1h"):
        await fetch(sim, tmp_path, interval)
        result = verify(tmp_path, EX, SYM, interval)
        assert result.ok, (interval, result.mismatches[:3])
        assert result.matched > 0 and result.mismatched == result.missing_exchange == 0
    con = recorder.connect(tmp_path)
    built = con.execute(
        "SELECT epoch(open_time)::BIGINT, volume, trades FROM candles WHERE exchange = ? AND interval = '1m' "
        "AND trades > 0 ORDER BY 1",
        [EX],
    ).fetchall()
    truth = {k.open_time: k for k in sim.market.klines(BTC, 1)}
    assert len(built) > 300
    for t, volume, trades in built:  # base units, the market's own volume
        assert volume == pytest.approx(float(truth[t].volume), rel=1e-12) and trades == truth[t].trades


async def test_cli_build_backfill_verify(sim, tmp_path):
    await record(sim, tmp_path)
    runner = CliRunner()
    built = runner.invoke(app, ["build", "--data-dir", str(tmp_path), "--interval", "1m"])
    assert built.exit_code == 0, built.output
    start = str(sim.truth_trades(BTC)[0].ts_ms // 1000 - 3600)
    args = ["backfill", EX, SYM, "--start", start, "--data-dir", str(tmp_path), "--rest-url", sim.rest_url]
    fetched = await asyncio.to_thread(runner.invoke, app, args)
    assert fetched.exit_code == 0 and "klines of BTC-USDT" in fetched.output, fetched.output
    ok = runner.invoke(app, ["verify", EX, SYM, "--data-dir", str(tmp_path)])
    assert ok.exit_code == 0 and "OK" in ok.output, ok.output
