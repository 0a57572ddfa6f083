"""`--all`: every trading market of a venue against its simulator with hundreds of markets, within
the venue's documented limits (topics per connection, connection attempts), with the time to full
subscription measured; `--quote` narrows the set; SYMBOLs and --all are exclusive."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import re
import time

import pytest
from rich.console import Console

from recorder import connect, venues
from recorder.app.record import STATUS_ROWS, _status
from recorder.collector import Collector, Options
from recorder.errors import RecorderError
from recorder.replay import replay

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
        # the live status: per-connection health, and the busiest symbols only
        console = Console(width=160, record=True, file=io.StringIO())
        console.print(_status(c, time.monotonic()))
        text = console.export_text()
        for x in c.connections:
            assert re.search(rf"\b{x.index}\s+│\s+up\s+│\s+{len(x.topics)}/{len(x.topics)}\s+│\s+0\s", text), text
        assert f"topics acked {c.topics_total():,}/{c.topics_total():,}" in text
        assert f"... {len(c.streams) - STATUS_ROWS:,} more" in text
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

        c.connect_limiter = SendLimiter(3, 2.0)  # the start-up probe is one attempt of the budget too
        await c.prepare()
        assert len(c.connections) == 3  # 300 topics / 115
        assert len(c.connect_limiter._sent) == 1
        task = asyncio.create_task(c.run())
        await wait_for(lambda: c.subscribed_in is not None, 30, "every topic acknowledged")
        assert c.subscribed_in >= 1.5  # probe + 2 connections filled the 2 s window: the third waited for it
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


def _listing(sim, name: str, trading: bool) -> None:
    """List a market as trading on the simulator, or take it off (its REST status, its market events)."""
    m = sim.market
    m.specs[name] = dataclasses.replace(m.specs[name], status="trading" if trading else "pre-trade")
    if trading:
        m.active.append(name)
    else:
        m.active.remove(name)


@pytest.mark.parametrize("exchange", ["bitmart", "bitmart_perpetual", "altmarkets"])
async def test_market_refresh_adds_listed_and_stops_delisted(tmp_path, exchange: str) -> None:
    """A market listed mid-run is subscribed on a new connection; a delisted one gets a `stop` event
    (cause `delisted`) that ends its coverage, is unsubscribed, and writes nothing more; a replay of
    the raw logs writes the same events."""
    sim = await _sim(exchange, 20)
    newcomer, leaver = "SYN020-USDT", "SYN001-USDT"
    _listing(sim, newcomer, False)  # not trading (so not in the recorder's market list) yet
    try:
        opts = Options(data_dir=tmp_path / "live", ws_url=sim.ws_url, rest_url=sim.rest_url, all_markets=True,
                       market_refresh=0.5, flush_interval=1.0)
        c = Collector(exchange, [], opts)
        await c.prepare()
        assert newcomer not in c.streams and len(c.connections) == 1
        task = asyncio.create_task(c.run())
        await wait_for(lambda: c.subscribed_in is not None, 30, "every topic acknowledged")
        _listing(sim, newcomer, True)
        _listing(sim, leaver, False)
        await wait_for(lambda: newcomer in c.streams and c.topics_acked() == c.topics_total() == len(c.channels) * 19
                       and leaver in c._delisted, 30, "the newcomer subscribed and the leaver stopped")
        assert len(c.connections) == 2  # the newcomer on a connection of its own
        await asyncio.sleep(1.5)  # more refreshes: nothing changes twice
        channels = sorted(c.channels)
        c.stop()
        await asyncio.wait_for(task, 30)
    finally:
        await sim.stop()
    db = connect(tmp_path / "live")
    stops = db.execute(
        f"SELECT channel, detail, cause FROM events WHERE symbol = '{leaver}' AND event = 'stop' ORDER BY channel"
    ).fetchall()
    assert stops == [(ch, "market delisted", "delisted") for ch in channels]
    last = db.execute(f"SELECT max(recv_ts) FROM trades WHERE symbol = '{leaver}'").fetchone()[0]
    stop_ts = db.execute(f"SELECT min(ts) FROM events WHERE symbol = '{leaver}' AND event = 'stop'").fetchone()[0]
    assert last is None or last <= stop_ts
    ends = db.execute(
        f"SELECT channel, arg_max(end_cause, start_ts) FROM coverage WHERE symbol = '{leaver}' GROUP BY channel"
    ).fetchall()
    assert ends and ("trades", "market delisted") in ends and all(e == "market delisted" for _, e in ends)
    assert db.execute(f"SELECT count(*) FROM events WHERE symbol = '{newcomer}' AND event = 'subscribed'").fetchone()[0] >= 1
    # replay: the same events from the raw logs (both connections' headers)
    replay([tmp_path / "live" / "raw"], tmp_path / "replayed")
    q = "SELECT symbol, channel, event, detail, cause FROM events WHERE event <> 'stop' OR cause = 'delisted' ORDER BY ALL"
    assert connect(tmp_path / "replayed").execute(q).fetchall() == db.execute(q).fetchall()


async def test_refresh_with_symbols_stops_only_the_delisted_one(tmp_path) -> None:
    """With SYMBOLs, a refresh that no longer finds one of them stops that one only (the others go
    on), and a market not asked for is never added."""
    sim = await _sim("bitmart", 5)
    try:
        opts = Options(data_dir=tmp_path, ws_url=sim.ws_url, rest_url=sim.rest_url, market_refresh=0.3,
                       channels=("trades",))
        c = Collector("bitmart", ["SYN001-USDT", "syn002-usdt"], opts)
        await c.prepare()
        task = asyncio.create_task(c.run())
        await wait_for(lambda: c.subscribed_in is not None, 30, "every topic acknowledged")
        _listing(sim, "SYN002-USDT", False)
        await wait_for(lambda: "SYN002-USDT" in c._delisted, 30, "SYN002 stopped")
        await asyncio.sleep(1.0)  # a few more refreshes
        assert set(c.streams) == {"SYN001-USDT", "SYN002-USDT"} and list(c._delisted) == ["SYN002-USDT"]
        assert c.topics_acked() == c.topics_total() == 1 and len(c.connections) == 1
        c.stop()
        await asyncio.wait_for(task, 30)
    finally:
        await sim.stop()


async def test_relisted_market_is_recorded_again(tmp_path) -> None:
    """Delisted, then listed again: its coverage ends 'market delisted' and starts again on a new
    connection; replay agrees."""
    sim = await _sim("bitmart", 5)
    name = "SYN001-USDT"
    try:
        opts = Options(data_dir=tmp_path / "live", ws_url=sim.ws_url, rest_url=sim.rest_url, all_markets=True,
                       market_refresh=0.3, channels=("trades",))
        c = Collector("bitmart", [], opts)
        await c.prepare()
        task = asyncio.create_task(c.run())
        await wait_for(lambda: c.subscribed_in is not None, 30, "every topic acknowledged")
        _listing(sim, name, False)
        await wait_for(lambda: name in c._delisted, 30, "delisted")
        _listing(sim, name, True)
        await wait_for(lambda: name not in c._delisted and c.topics_acked() == c.topics_total() == 5, 30, "relisted")
        assert len(c.connections) == 2
        c.stop()
        await asyncio.wait_for(task, 30)
    finally:
        await sim.stop()
    db = connect(tmp_path / "live")
    got = db.execute(
        f"SELECT event, cause FROM events WHERE symbol = '{name}' AND event IN ('subscribed', 'stop') ORDER BY ts"
    ).fetchall()
    assert got[:3] == [("subscribed", None), ("stop", "delisted"), ("subscribed", None)], got
    ends = [r[0] for r in db.execute(f"SELECT end_cause FROM coverage WHERE symbol = '{name}' ORDER BY start_ts").fetchall()]
    assert ends[0] == "market delisted" and len(ends) == 2
    replay([tmp_path / "live" / "raw"], tmp_path / "replayed")
    q = "SELECT symbol, channel, event, detail, cause FROM events WHERE event <> 'stop' OR cause = 'delisted' ORDER BY ALL"
    assert connect(tmp_path / "replayed").execute(q).fetchall() == db.execute(q).fetchall()
