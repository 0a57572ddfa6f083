"""Built candles against the simulator's klines: a matching recording, then deliberately broken ones."""

from __future__ import annotations

import asyncio
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import recorder
from recorder.app.candles import app
from recorder.candles import backfill_async, build_candles, verify
from recorder.sim import BitmartSpotSim
from recorder.storage.layout import partition_dir
from recorder.storage.sink import replace_partition_files
from tests.candles.util import EX, MIN, SYM, write_events, write_trades

pytestmark = pytest.mark.timeout(60)
BTC = "BTC_USDT"


@pytest.fixture
async def sim():
    s = BitmartSpotSim(symbols=[BTC], seed=11, rate=1, history_minutes=600)
    await s.start()
    s.pause()
    yield s
    await s.stop()


def record(sim: BitmartSpotSim, data_dir, skip_minute: int | None = None) -> int:  # noqa: ANN001
    """Write the simulator's trades as the recorder would (recv 2 ms later), covered by events.

    Returns the first trade's minute (epoch us). `skip_minute` drops that minute's trades (a loss
    the recording did not notice).
    """
    trades = [
        t for t in sim.truth_trades(BTC) if skip_minute is None or t.ts_ms * 1000 // MIN * MIN != skip_minute
    ]
    write_trades(
        data_dir,
        [
            (t.ts_ms * 1000, t.ts_ms * 1000 + 2000, None, t.side, float(t.price), float(t.size))
            for t in trades
        ],
    )
    first = trades[0].ts_ms * 1000
    write_events(data_dir, [(first - MIN, "subscribed"), (time.time_ns() // 1000, "stop")])
    return first // MIN * MIN


async def fetch(sim: BitmartSpotSim, data_dir, interval: str) -> None:  # noqa: ANN001
    start = sim.truth_trades(BTC)[0].ts_ms // 1000 - 3600
    await backfill_async(data_dir, "bitmart", "BTC-USDT", interval, start, rest_url=sim.rest_url)


def complete_count(data_dir, interval: str) -> int:  # noqa: ANN001
    con = recorder.connect(data_dir)
    return con.execute(
        "SELECT count(*) FROM candles c WHERE interval = ? AND complete AND open_time IN "
        "(SELECT open_time FROM exchange_candles e WHERE e.interval = c.interval)",
        [interval],
    ).fetchall()[0][0]


async def test_every_complete_candle_matches_the_simulators_klines(sim, tmp_path):
    record(sim, tmp_path)
    build_candles(tmp_path, intervals="1m,5m,1h")
    for interval in ("1m", "5m", "1h"):
        await fetch(sim, tmp_path, interval)
        result = verify(tmp_path, EX, SYM, interval)
        assert result.ok, (interval, result.mismatches[:3])
        assert result.matched == complete_count(tmp_path, interval) > 0
        assert result.mismatched == result.missing_exchange == result.missed_in_coverage == 0
        assert result.incomplete_mismatched == 0
    result = verify(tmp_path, EX, SYM, "1m")
    assert result.matched > 500 and result.empty_both > 0  # the exchange serves flat candles in quiet minutes

    build_candles(tmp_path, intervals="1m", fill=True)  # ours are flat too now: every minute compares
    filled = verify(tmp_path, EX, SYM, "1m")
    assert filled.ok and filled.empty_both == 0 and filled.matched > result.matched


def rewrite(data_dir, table: str, day: str, change) -> None:  # noqa: ANN001
    """Replace a partition's rows by `change(rows)`, crash-safely like any rewrite."""
    directory = partition_dir(data_dir, table, EX, SYM, day)
    old = sorted(directory.glob("*.parquet"))
    rows = pa.concat_tables([pq.read_table(p) for p in old])
    replace_partition_files(directory, change(rows), old)


def busy_minute(data_dir) -> tuple[int, str]:  # noqa: ANN001
    con = recorder.connect(data_dir)
    t, day = con.execute(
        "SELECT epoch_us(open_time), date::VARCHAR FROM candles WHERE interval = '1m' AND complete "
        "AND trades > 1 ORDER BY open_time LIMIT 1 OFFSET 20"
    ).fetchall()[0]
    return t, day


def at(rows: pa.Table, t: int) -> pa.Array:
    return pc.and_(pc.equal(rows["interval"], "1m"), pc.equal(rows["open_time"].cast(pa.int64()), t))


async def test_corrupted_candles_are_reported_by_field_and_fail(sim, tmp_path):
    record(sim, tmp_path)
    build_candles(tmp_path, intervals="1m")
    await fetch(sim, tmp_path, "1m")
    t, day = busy_minute(tmp_path)

    def nudge_close(rows: pa.Table) -> pa.Table:
        close = pc.if_else(at(rows, t), pc.add(rows["close"], 0.01), rows["close"])
        return rows.set_column(rows.schema.get_field_index("close"), "close", close)

    rewrite(tmp_path, "candles", day, nudge_close)
    result = verify(tmp_path, EX, SYM, "1m")
    assert not result.ok and result.mismatched == 1
    [m] = result.mismatches
    assert m.field == "close" and m.complete and m.difference == pytest.approx(0.01)
    assert m.open_time.timestamp() * 1_000_000 == t

    runner = CliRunner()
    out = runner.invoke(app, ["verify", EX, SYM, "--data-dir", str(tmp_path)])
    assert out.exit_code == 1, out.output
    assert "close" in out.output and "FAILED" in out.output

    # a tiny difference in volume is float noise, not a mismatch; a candle the exchange lacks is
    def drop_and_jiggle(rows: pa.Table) -> pa.Table:
        volume = pc.multiply(rows["volume"], 1 + 1e-13)
        rows = rows.set_column(rows.schema.get_field_index("volume"), "volume", volume)
        return rows.filter(pc.invert(at(rows, t + MIN)))

    rewrite(tmp_path, "exchange_candles", day, drop_and_jiggle)
    result = verify(tmp_path, EX, SYM, "1m")
    assert result.mismatched == 1 and result.missing_exchange == 1


async def test_trades_lost_inside_coverage_fail_verification(sim, tmp_path):
    lost = sim.truth_trades(BTC)[100].ts_ms * 1000 // MIN * MIN
    record(sim, tmp_path, skip_minute=lost)
    build_candles(tmp_path, intervals="1m")
    await fetch(sim, tmp_path, "1m")
    result = verify(tmp_path, EX, SYM, "1m")
    assert not result.ok and result.missed_in_coverage == 1


async def test_cli_build_backfill_verify(sim, tmp_path):
    record(sim, tmp_path)
    runner = CliRunner()
    built = runner.invoke(app, ["build", "--data-dir", str(tmp_path), "--interval", "1m,5m"])
    assert built.exit_code == 0 and " full;" in built.output, built.output
    start = str(sim.truth_trades(BTC)[0].ts_ms // 1000 - 3600)
    args = [
        "backfill",
        EX,
        "BTC-USDT",
        "--start",
        start,
        "--data-dir",
        str(tmp_path),
        "--rest-url",
        sim.rest_url,
    ]
    fetched = await asyncio.to_thread(runner.invoke, app, args)
    assert fetched.exit_code == 0 and "klines of BTC-USDT" in fetched.output, fetched.output
    ok = runner.invoke(app, ["verify", EX, SYM, "--data-dir", str(tmp_path)])
    assert ok.exit_code == 0 and "OK" in ok.output, ok.output
    nothing = runner.invoke(app, ["verify", EX, SYM, "--interval", "1h", "--data-dir", str(tmp_path)])
    assert nothing.exit_code == 1 and "build and backfill first" in nothing.output
    bad = runner.invoke(app, ["build", "--data-dir", str(tmp_path), "--interval", "7m"])
    assert bad.exit_code == 2 and "7m" in bad.output
