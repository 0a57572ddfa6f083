"""End to end: the real recorder against the real simulator over loopback, checked against its truth.

The simulator's ground truth (its own book and the trades it wrote to our sockets) is compared with
what a user would read back from Parquet with DuckDB, after injected gaps, disconnects and garbage.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from recorder import connect
from recorder.collector import Collector
from recorder.replay import replay
from recorder.sim import BitmartSpotSim

from .recording import (
    SYMBOLS,
    assert_book_matches_truth,
    assert_every_sent_trade_once,
    books_valid,
    finish,
    options,
    record_trades,
    start,
    wait_for,
)


async def test_book_exact_and_trades_once_through_gaps_disconnects_and_garbage(tmp_path, sim):
    c = Collector("bitmart", list(SYMBOLS), options(tmp_path, sim))
    task = await start(c)
    await wait_for(lambda: books_valid(c), 10, "first snapshots")
    await asyncio.sleep(0.5)

    btc = c.streams["BTC-USDT"].book
    sim.skip_version("BTC_USDT")  # a lost update: the recorder must see the gap and resync
    await wait_for(lambda: btc.gaps == 1 and btc.snapshots == 2 and books_valid(c), 10, "resync")
    await asyncio.sleep(0.3)
    sim.send_malformed_json()
    sim.send_invalid_deflate()
    await asyncio.sleep(0.3)
    sim.drop_connections()
    await wait_for(lambda: sum(x.reconnects for x in c.connections) >= 1 and books_valid(c), 15, "reconnect")
    await record_trades(sim, 200)  # hundreds of trades: periodic loss must show
    await finish(c, sim, task)

    assert_book_matches_truth(tmp_path, sim)
    assert_every_sent_trade_once(tmp_path, sim)

    con = connect(tmp_path)
    events = con.execute(
        "select symbol, channel, event, detail from events order by ts"
    ).fetchall()
    kinds = Counter((s, ch, e) for s, ch, e, _ in events)
    assert kinds[("BTC-USDT", "book", "gap")] >= 1
    assert kinds[("BTC-USDT", "book", "resync")] >= 3  # initial, after gap, after reconnect
    assert kinds[("ETH-USDT", "book", "disconnect")] == 1
    assert kinds[("ETH-USDT", "trades", "error")] >= 2  # malformed JSON + invalid deflate
    assert kinds[("BTC-USDT", "trades", "stop")] == 1
    # coverage: continuous valid intervals and why each ended; complete seconds in one query
    cov = set(con.execute("select symbol, channel, end_cause from coverage").fetchall())
    assert {("BTC-USDT", "book", "sequence gap"), ("ETH-USDT", "trades", "disconnect"),
            ("ETH-USDT", "trades", "process stop")} <= cov
    complete = [b for (b,) in con.execute(
        "select complete from completeness('bitmart', 'BTC-USDT', 'book', INTERVAL 100 millisecond)").fetchall()]
    assert True in complete and False in complete[1:-1]
    # book_snapshots: the validated top 20, best first, never crossed
    snaps = con.execute(
        "select bids[1].price, asks[1].price, len(bids), len(asks) from book_snapshots"
    ).fetchall()
    assert snaps and all(b < a and nb <= 20 and na <= 20 for b, a, nb, na in snaps)


async def test_replay_of_raw_log_reproduces_every_table(tmp_path, sim):
    live = tmp_path / "live"
    c = Collector("bitmart", list(SYMBOLS), options(live, sim))
    task = await start(c)
    await wait_for(lambda: books_valid(c), 10, "first snapshots")
    await asyncio.sleep(0.4)
    sim.skip_version("ETH_USDT")
    sim.send_invalid_deflate()
    await asyncio.sleep(0.6)
    await finish(c, sim, task)

    out = tmp_path / "replayed"
    res = replay([live / "raw"], out)
    assert res.files >= 1 and res.rows > 0
    a, b = connect(live), connect(out)
    for table, order in [
        ("trades", "ts, recv_ts, price, amount, side"),
        ("book_updates", "recv_ts, seq, side, price, amount"),
        ("book_snapshots", "recv_ts, seq"),
        ("events", "ts, channel, event, detail"),
    ]:
        q = f"select * exclude (date) from {table} order by symbol, {order}"
        rows_a, rows_b = a.execute(q).fetchall(), b.execute(q).fetchall()
        assert rows_a, f"live {table} is empty"
        assert rows_a == rows_b, table


async def test_many_symbols_open_several_connections(tmp_path):
    many = BitmartSpotSim(symbols=70, seed=3, rate=200.0)
    await many.start(host="127.0.0.1", port=0)
    try:
        users = [w.replace("_", "-") for w in many.trading_symbols][:70]
        c = Collector("bitmart", users, options(tmp_path, many))
        task = await start(c)
        assert len(c.connections) == 2  # 140 topics > 115 per connection
        assert all(len(x.topics) <= 115 for x in c.connections)
        await wait_for(lambda: books_valid(c), 20, "all 70 books")
        c.stop()
        await asyncio.wait_for(task, 10)
    finally:
        await many.stop()
    con = connect(tmp_path)
    assert con.execute("select count(distinct symbol) from events where event = 'subscribed'").fetchone() == (70,)
