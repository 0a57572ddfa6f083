"""`--all`: every trading market of a venue against its simulator with hundreds of markets, within
the venue's documented limits (topics per connection, connection attempts), with the time to full
subscription measured; `--quote` narrows the set; SYMBOLs and --all are exclusive."""

from __future__ import annotations

import asyncio
import time

import pytest

from recorder import venues
from recorder.collector import Collector, Options
from recorder.errors import RecorderError

from .processes import run_cli
from .recording import wait_for

pytestmark = pytest.mark.timeout(120)

MARKETS = 300


async def _sim(exchange: str, n: int, **kw):
    sim = venues.simulator(exchange)(symbols=n, seed=3, rate=20.0, record_sent=False, **kw)
    await sim.start(host="127.0.0.1", port=0)
    return sim


@pytest.mark.parametrize("exchange", ["bitmart", "bitmart_perpetual", "altmarkets"])
async def test_all_markets_subscribe_within_limits(exchange: str) -> None:
    sim = await _sim(exchange, MARKETS)
    try:
        opts = Options(data_dir=None, ws_url=sim.ws_url, rest_url=sim.rest_url, all_markets=True)
        c = Collector(exchange, [], opts)
        await c.prepare()
        trading = set(sim.market.active)  # every market but the simulator's pre-trade one
        assert set(c.streams) == trading and len(trading) == MARKETS
        limits = c.venue.limits
        per = [len(x.topics) for x in c.connections]
        assert max(per) <= limits.topics_per_connection
        assert sum(per) == len(c.streams) * len(c.channels)
        assert len(c.connections) == -(-sum(per) // limits.topics_per_connection)  # as few as the cap allows
        # every symbol's topics share one connection (one raw log per market's streams)
        homes = {}
        for x in c.connections:
            for t in x.topics:
                assert homes.setdefault(t.stream.user, x.index) == x.index
        task = asyncio.create_task(c.run())
        t0 = time.monotonic()
        await wait_for(lambda: c.subscribed_in is not None, 60, "every topic acknowledged")
        print(f"{exchange}: {len(c.streams)} markets, {c.topics_total()} topics, {len(c.connections)} "
              f"connections, all subscribed in {c.subscribed_in:.2f} s")
        assert c.topics_acked() == c.topics_total()
        assert time.monotonic() - t0 < 60
        assert all(x.reconnects == 0 for x in c.connections)
        c.stop()
        await asyncio.wait_for(task, 30)
    finally:
        await sim.stop()


async def test_connect_budget_paces_connections() -> None:
    """More connections than the venue's connect budget allows per window: the surplus waits for
    the window instead of being refused (checked on a budget shrunk to 3 per 2 s)."""
    sim = await _sim("bitmart", 300)
    try:
        opts = Options(data_dir=None, ws_url=sim.ws_url, rest_url=sim.rest_url, all_markets=True, channels=("trades",))
        c = Collector("bitmart", [], opts)
        from recorder.transport import SendLimiter

        c.connect_limiter = SendLimiter(3, 2.0)
        await c.prepare()
        assert len(c.connections) == 3  # 300 topics / 115
        c.connect_limiter = SendLimiter(2, 1.5)
        task = asyncio.create_task(c.run())
        await wait_for(lambda: c.subscribed_in is not None, 30, "every topic acknowledged")
        assert c.subscribed_in >= 1.4  # the third connection waited for the window
        c.stop()
        await asyncio.wait_for(task, 30)
    finally:
        await sim.stop()


async def test_quote_filter_and_selection_errors() -> None:
    sim = await _sim("bitmart", None)  # the default catalogue: several quote currencies
    try:
        base = dict(data_dir=None, ws_url=sim.ws_url, rest_url=sim.rest_url)
        c = Collector("bitmart", [], Options(**base, all_markets=True, quotes=("USDT",)))
        c.session = None
        from recorder.instruments import fetch_instruments
        from recorder.transport import new_session

        async with new_session() as session:
            listed = await fetch_instruments(session, c.venue, sim.rest_url)
        quotes = {i.symbol.split("-")[1] for i in listed}
        chosen = c.select(listed)
        assert chosen and {i.symbol.split("-")[1] for i in chosen} == {"USDT"}
        assert len(chosen) == sum(i.symbol.endswith("-USDT") for i in listed)
        with pytest.raises(RecorderError, match="no market of bitmart with quote NOPE"):
            Collector("bitmart", [], Options(**base, all_markets=True, quotes=("NOPE",))).select(listed)
        assert len(quotes) >= 1
    finally:
        await sim.stop()


async def test_cli_symbols_and_all_are_exclusive(tmp_path) -> None:
    code, err = await run_cli("run", "bitmart", "BTC-USDT", "--all", "--data-dir", str(tmp_path), timeout=30)
    assert code != 0 and "not both" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, err = await run_cli("run", "bitmart", "--data-dir", str(tmp_path), timeout=30)
    assert code != 0 and "SYMBOLs or --all" in err and "Traceback" not in err
    code, err = await run_cli("run", "bitmart", "--all", "--shard", "2/2", "--data-dir", str(tmp_path), timeout=30)
    assert code != 0 and "--shard must be I/N" in err and "Traceback" not in err
