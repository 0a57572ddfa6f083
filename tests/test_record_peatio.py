"""End to end for the Peatio/Ranger venue (`altmarkets`, and the generic `peatio`): the real recorder
against the real simulator over loopback, checked against the simulator's truth.

What a user reads back from Parquet with DuckDB is compared with the simulator's own book and with
the trades it wrote to our sockets, after gaps, engine restarts, a quiet market without a snapshot,
resent trades, garbage, reconnects and SIGKILLs.

Trades: Peatio's carry ids (`tid`), so the harness's content-keyed trade check
(`recording.sent_in_arrival_order` drops post-reconnect repeats by content and millisecond time,
BitMart's rule) does not fit: here every `tid` the simulator wrote must be in `trades` exactly once,
in the order it was first written, and nothing else.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

from recorder import connect
from recorder.bookreplay import rebuild_book
from recorder.collector import Collector, Options
from recorder.errors import RecorderError
from recorder.instruments import fetch_instruments
from recorder.replay import CRASH_DETAIL, replay
from recorder.sim.frontends.peatio import MAX_CLIENT_MESSAGE, PeatioSim
from recorder.transport import new_session
from recorder.venues import venue

from .processes import TABLES, killed_runs, run_cli, spawn, stop
from .recording import (
    assert_book_matches_truth,
    books_valid,
    finish,
    options,
    quiesce,
    record_trades,
    start,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

EX = "altmarkets"
SYMBOLS = {"BTC-USDT": "btcusdt", "ETH-USDT": "ethusdt"}  # user symbol -> Peatio market id
MIN_TRADES = 300  # per symbol: a loss of one trade in a hundred must show several times


@pytest.fixture
async def sim():
    # ETH's engine sends batched increments ("0" deletes), BTC's the Ruby engine's single levels
    # ("" deletes); snapshots every 1-3 s keep Ranger's replay short while the market moves
    s = PeatioSim(
        symbols=list(SYMBOLS.values()),
        seed=7,
        rate=1000.0,
        increment_shape={"ethusdt": "batched"},
        snapshot_min_period=1.0,
        snapshot_max_period=3.0,
    )
    await s.start(host="127.0.0.1", port=0)
    try:
        yield s
    finally:
        await s.stop()


# ---- trades by tid ------------------------------------------------------------------------------------


def sent_tids(sim: PeatioSim, wire: str, conns: list | None = None) -> list[str]:
    """Every tid the simulator wrote to these connections (all: None), in the order first written,
    once each (connection after connection: one recorder holds one live connection at a time)."""
    out: dict[str, None] = {}
    for conn in sorted(sim.connections if conns is None else conns, key=lambda c: c.id):
        for t in sim.sent_trades(wire, conn):
            out.setdefault(str(sim.trade_id(t)), None)
    return list(out)


def sent_trade_rows(sim: PeatioSim, wire: str) -> dict[str, tuple]:
    """tid -> the row the recorder must store: (ts in us from `date` seconds, side, price, amount)."""
    return {
        str(sim.trade_id(t)): ((t.ts_ms // 1000) * 1_000_000, t.side, t.price_f, t.size_f)
        for conn in sim.connections
        for t in sim.sent_trades(wire, conn)
    }


def stored_trades(data_dir: Path, user: str, by_receive_time: bool = False) -> list[tuple]:
    """(trade_id, ts us, side, price, amount) of one symbol in arrival order: files in name order
    (names start with their publish time), rows in file order; or, across crash recovery (which
    publishes older rows later), by receive time first."""
    files = sorted((data_dir / "trades" / f"exchange={EX}" / f"symbol={user}").glob("date=*/*.parquet"))
    if not files:
        return []
    order = (
        "recv_ts, filename, file_row_number"
        if by_receive_time
        else "parse_filename(filename), file_row_number"
    )
    return (
        duckdb.connect()
        .execute(
            "SELECT trade_id, epoch_us(ts), side, price, amount FROM read_parquet(?, filename = true, "
            f"file_row_number = true) ORDER BY {order}",
            [[str(f) for f in files]],
        )
        .fetchall()
    )


def assert_every_trade_once_by_tid(data_dir: Path, sim: PeatioSim, min_trades: int = MIN_TRADES) -> None:
    con = connect(data_dir)
    for user, wire in SYMBOLS.items():
        want = sent_tids(sim, wire)
        assert len(want) >= min_trades, f"{user}: only {len(want)} trades sent"
        stored = stored_trades(data_dir, user)
        got = [r[0] for r in stored]
        dup = [tid for tid, n in Counter(got).items() if n > 1]
        assert not dup, f"{user}: tids stored twice: {dup[:5]}"
        missing = set(want) - set(got)
        assert not missing, f"{user}: {len(missing)} sent trades missing, e.g. {sorted(missing)[:3]}"
        assert got == want, f"{user}: stored tids not in the order they were sent (or not sent)"
        rows = sent_trade_rows(sim, wire)
        assert all(tuple(r[1:]) == rows[r[0]] for r in stored), (
            f"{user}: a stored trade differs from the sent one"
        )
        (n,) = con.execute(
            "select count(*) from trades where exchange = ? and symbol = ?", [EX, user]
        ).fetchone()
        assert n == len(got)


def assert_no_client_message_of_512_bytes(sim: PeatioSim) -> None:
    sizes = [len(text.encode()) for _, text in sim.received]
    assert sizes and max(sizes) < MAX_CLIENT_MESSAGE, max(sizes)


# ---- the book, trades and events through every fault ------------------------------------------------


async def test_exact_book_both_shapes_through_gap_restart_garbage_and_reconnects(tmp_path, sim):
    live = tmp_path / "live"
    c = Collector(EX, list(SYMBOLS), options(live, sim))
    task = await start(c)
    await wait_for(lambda: books_valid(c), 10, "first snapshots")
    await asyncio.sleep(0.5)
    btc, eth = c.streams["BTC-USDT"].book, c.streams["ETH-USDT"].book

    sim.skip_version("btcusdt")  # a lost increment: gap, then unsubscribe + subscribe
    await wait_for(
        lambda: btc.gaps == 1 and btc.snapshots == 2 and books_valid(c), 10, "resync after the gap"
    )
    await asyncio.sleep(0.3)
    sim.engine_restart("ethusdt")  # the next increment is sequence 2: backwards for the recorder
    await wait_for(lambda: eth.snapshots == 2 and books_valid(c), 10, "resync after the engine restart")
    assert eth.seq is not None and eth.seq < 10_000  # the restarted engine's numbering
    sim.duplicate_version("btcusdt")  # the same sequence twice: out of order, resync
    await wait_for(lambda: btc.snapshots == 3 and books_valid(c), 10, "resync after a duplicate")
    await asyncio.sleep(0.3)
    sim.resend_trades("btcusdt", 5)  # the same tids again: dropped
    sim.resend_trades("ethusdt", 5)
    sim.send_malformed_json()
    await asyncio.sleep(0.3)
    sim.drop_connections()
    await wait_for(lambda: sum(x.reconnects for x in c.connections) >= 1 and books_valid(c), 15, "reconnect")
    await record_trades(sim, 200, symbols=SYMBOLS)  # hundreds of trades: periodic loss must show
    await finish(c, sim, task)

    assert_book_matches_truth(live, sim, EX, SYMBOLS)
    assert_every_trade_once_by_tid(live, sim)
    assert sum(s.duplicates_dropped for s in c.streams.values()) >= 10
    assert_no_client_message_of_512_bytes(sim)
    # resyncs were unsubscribe then subscribe of that one stream, never a reconnect
    sent = [t for _, t in sim.received]
    assert '{"event":"unsubscribe","streams":["btcusdt.ob-inc"]}' in sent
    assert sent.count('{"event":"subscribe","streams":["ethusdt.ob-inc"]}') >= 1
    assert len(sim.connections) == 3  # the start-up probe, the first, the one after the drop

    con = connect(live)
    events = con.execute("select symbol, channel, event, cause from events").fetchall()
    kinds = Counter(events)
    assert kinds[("BTC-USDT", "book", "gap", "gap")] == 1
    assert kinds[("ETH-USDT", "book", "error", "restart")] == 1
    assert kinds[("BTC-USDT", "book", "error", "out_of_order")] >= 1
    assert kinds[("BTC-USDT", "book", "resync", None)] >= 4  # initial, gap, duplicate, reconnect
    assert kinds[("ETH-USDT", "book", "resync", None)] >= 3  # initial, restart, reconnect
    assert kinds[("ETH-USDT", "trades", "error", "decode")] >= 1  # the malformed frame
    assert kinds[("BTC-USDT", "trades", "disconnect", "disconnect")] == 1
    # book times are the receive times (the wire has none)
    assert con.execute("select count(*) from book_updates where ts <> recv_ts").fetchone() == (0,)
    snaps = con.execute("select bids[1].price, asks[1].price from book_snapshots").fetchall()
    assert snaps and all(b < a for b, a in snaps)

    # the raw log re-derives every table exactly
    out = tmp_path / "replayed"
    res = replay([live / "raw"], out)
    assert res.files >= 1 and res.rows > 0
    a, b = connect(live), connect(out)
    for table, order in TABLES.items():
        q = f"select * exclude (date) from {table} order by symbol, {order}"
        rows_a, rows_b = a.execute(q).fetchall(), b.execute(q).fetchall()
        assert rows_a, f"live {table} is empty"
        assert rows_a == rows_b, table


async def test_a_quiet_market_without_a_snapshot_backs_off_and_says_so_never_reconnects(tmp_path):
    sim = PeatioSim(
        symbols=list(SYMBOLS.values()), seed=3, rate=400.0, snapshot_min_period=0.5, snapshot_max_period=1.0
    )
    await sim.start()
    try:
        c = Collector(EX, list(SYMBOLS), options(tmp_path, sim, resync_timeout=0.5))
        task = await start(c)
        await wait_for(lambda: books_valid(c), 10, "first snapshots")
        btc = c.streams["BTC-USDT"].book
        sim.pause()  # a quiet market
        await sim.drain()
        sim.engine_restart("btcusdt", snapshot=False)  # its start snapshot never reached Ranger
        sim.drop_connections()
        eth = c.streams["ETH-USDT"].book
        await wait_for(lambda: c.connections[0].reconnects == 1 and eth.valid, 10, "ETH after the reconnect")
        connects = len(sim.connections)
        assert connects == 3  # the start-up probe, the first, the one after the drop
        await asyncio.sleep(4.0)  # asks after 0.5, 1, 2 s: three requests, each said in `events`
        assert not btc.valid
        resubscribes = [t for _, t in sim.received].count(
            '{"event":"subscribe","streams":["btcusdt.ob-inc"]}'
        )
        assert resubscribes >= 3
        sim.resume()  # the book changes: the engine publishes a snapshot, the next request gets it
        await wait_for(lambda: btc.valid, 20, "BTC snapshot once the market moves")
        await record_trades(sim, 50, symbols=SYMBOLS)
        await finish(c, sim, task)
        assert len(sim.connections) == connects  # never a reconnect loop
    finally:
        await sim.stop()
    con = connect(tmp_path)
    reports = [d for (d,) in con.execute(
        "select detail from events where symbol = 'BTC-USDT' and channel = 'book' and cause = 'no_snapshot' "
        "order by ts"
    ).fetchall()]  # fmt: skip
    assert len(reports) >= 3 and all("no snapshot after" in d and "waiting" in d for d in reports)
    waits = [float(d.rsplit("waiting ", 1)[1].split(" s")[0]) for d in reports]
    assert waits == sorted(waits) and waits[-1] > waits[0]  # backing off
    assert con.execute(
        "select count(*) from events where event = 'connect' and symbol = 'BTC-USDT' and channel = 'book'"
    ).fetchone() == (2,)
    assert_book_matches_truth(tmp_path, sim, EX, SYMBOLS)
    assert_no_client_message_of_512_bytes(sim)


# ---- clear errors -------------------------------------------------------------------------------------


async def test_unknown_hidden_and_refused_are_clear(tmp_path, sim):
    with pytest.raises(
        RecorderError, match=r"unknown symbol 'BTC-USDX' on altmarkets; did you mean BTC-USDT"
    ):
        await Collector(EX, ["BTC-USDX"], options(tmp_path, sim)).prepare()
    with pytest.raises(RecorderError, match=r"not of the form BASE-QUOTE .*; did you mean BTC-USDT\?$"):
        await Collector(EX, ["btcusdt"], options(tmp_path, sim)).prepare()  # Peatio's own market id
    with pytest.raises(RecorderError, match="NEWT-USDT"):  # listed, hidden: not trading
        await Collector(EX, ["NEWT-USDT"], options(tmp_path, sim)).prepare()
    with pytest.raises(RecorderError, match="^peatio has no default URLs: pass --ws-url and --rest-url$"):
        Collector("peatio", ["BTC-USDT"], Options(data_dir=tmp_path))
    # a refused stream: an error event, then subscribed again after a back-off
    sim.fail_next_subscribe()
    c = Collector("peatio", ["BTC-USDT"], options(tmp_path / "p", sim, refused_retry=0.3))
    task = await start(c)
    await wait_for(
        lambda: books_valid(c) and all(t.acked for x in c.connections for t in x.topics), 10, "retry"
    )
    c.stop()
    await asyncio.wait_for(task, 10)
    events = (
        connect(tmp_path / "p")
        .execute("select channel, event, cause, detail from events where exchange = 'peatio' order by ts")
        .fetchall()
    )
    refused = [e for e in events if e[2] == "refused"]
    assert len(refused) == 1 and "btcusdt.trades" in refused[0][3] and refused[0][0] == "trades"
    assert [e[:2] for e in events].count(("trades", "subscribed")) == 1


async def test_market_list_pages_are_followed(tmp_path):
    """1,001 markets and a hidden one: the adapter asks 1,000 a page, reads two, keeps the enabled."""
    sim = PeatioSim(symbols=1001, seed=1, rate=1)
    await sim.start()
    try:
        sim.pause()
        session = new_session()
        try:
            listed = await fetch_instruments(session, venue(EX), sim.rest_url)
        finally:
            await session.close()
        # page 1: SYN001..SYN1000 (all enabled); page 2: SYN1001 and the hidden NEWT-USDT
        assert len(listed) == 1001 and listed[0].symbol == "SYN001-USDT" and listed[0].wire == "syn001usdt"
        assert all(i.symbol != "NEWT-USDT" for i in listed)
        assert listed[0].price_tick is not None
    finally:
        await sim.stop()


async def test_many_markets_subscribe_in_messages_under_512_bytes_over_several_connections(tmp_path):
    sim = PeatioSim(symbols=60, seed=4, rate=300.0)
    await sim.start()
    try:
        users = [w.upper().replace("USDT", "-USDT") for w in sim.trading_symbols]
        c = Collector(EX, users, options(tmp_path, sim))
        task = await start(c)
        assert len(c.connections) == 2  # 120 streams, 100 a connection
        await wait_for(lambda: books_valid(c), 20, "all 60 books")
        c.stop()
        await asyncio.wait_for(task, 10)
    finally:
        await sim.stop()
    assert_no_client_message_of_512_bytes(sim)
    subscribes = [orjson.loads(t) for _, t in sim.received if t.startswith('{"event":"subscribe"')]
    streams = [s for m in subscribes for s in m["streams"]]
    assert len(subscribes) > 2 and sorted(streams) == sorted(f"{w}.{k}" for w in sim.trading_symbols
                                                               for k in ("trades", "ob-inc"))  # fmt: skip


# ---- crash recovery ---------------------------------------------------------------------------------


async def test_sigkill_then_recovery_and_replay_lose_and_double_nothing(tmp_path, sim):
    data = tmp_path / "data"
    rng = random.Random(10)
    def start():
        return spawn(data, sim, exchange=EX, symbols=list(SYMBOLS))

    runs = await killed_runs(sim, 3, start, lambda: asyncio.sleep(rng.uniform(0.5, 2.5)))  # anywhere vs 1 s flushes
    known = len(sim.connections)
    final = await start()  # recovers the crashes from their raw logs on start
    try:
        deadline = time.monotonic() + 30
        while min(len(sent_tids(sim, w, sim.connections[known:])) for w in SYMBOLS.values()) < MIN_TRADES:
            assert time.monotonic() < deadline, "too few trades"
            await asyncio.sleep(0.1)
        await quiesce(sim)
    finally:
        err = await stop(final)
    assert final.returncode == 0, err
    runs.append((sim.connections[known:], None))

    for f in data.rglob("*.parquet"):
        pq.read_metadata(f)  # every published file is complete
    assert not list(data.rglob("*.tmp"))
    for user, wire in SYMBOLS.items():
        stored = [r[0] for r in stored_trades(data, user, by_receive_time=True)]
        assert len(stored) == len(set(stored)), f"{user}: a tid stored twice"
        pos = 0
        for k, (conns, kill) in enumerate(runs):
            sent = sent_tids(sim, wire, conns)
            n = next((i for i, (x, y) in enumerate(zip(stored[pos:], sent, strict=False)) if x != y), None)
            n = min(len(sent), len(stored) - pos) if n is None else n
            lost = sent[n:]
            if kill is None:
                assert not lost, f"{user}, clean last run: {len(lost)} of {len(sent)} trades missing"
            else:  # a killed run may lack only its last 2 s (the raw log's durability window)
                times = {
                    str(sim.trade_id(t)): t.ts_ms / 1000 for c in conns for t in sim.sent_trades(wire, c)
                }
                early = [tid for tid in lost if times[tid] < kill - 2.0]
                assert not early, (
                    f"{user}, run {k}: {len(early)} trades sent before the kill's last 2 s missing"
                )
            pos += n
        assert pos == len(stored), f"{user}: {len(stored) - pos} stored trades were never sent"
        version, bids, asks = sim.truth_book(wire)
        book = rebuild_book(data, EX, user)
        assert (book.seq, book.bids, book.asks) == (version, bids, asks), user

    replayed = tmp_path / "replayed"
    rc, err = await run_cli("replay", str(data / "raw"), "--data-dir", str(replayed))
    assert rc == 0, err
    live, ref = connect(data), connect(replayed)
    for table, order in TABLES.items():
        q = f"select * exclude (date) from {table} order by symbol, {order}"
        got, want = live.execute(q).fetchall(), ref.execute(q).fetchall()
        assert want, f"{table} empty"
        assert got == want, table
    crashes = live.execute(
        "select count(distinct ts) from events where event = 'stop' and detail = ?", [CRASH_DETAIL]
    ).fetchone()[0]
    assert crashes == 3
    assert_no_client_message_of_512_bytes(sim)
