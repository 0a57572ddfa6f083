"""bitmart_perpetual end to end: the real recorder against the real perpetual simulator over
loopback, read back from Parquet with DuckDB and compared with the simulator's own truth (its book
window, the trades and ticker/funding items it wrote to our sockets, the open-interest answers it
served). Sizes travel in contracts; every stored size must be the base-unit truth.
"""

from __future__ import annotations

import asyncio
import calendar
import random
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from recorder import connect
from recorder.bookreplay import rebuild_book
from recorder.collector import Collector
from recorder.errors import RecorderError
from recorder.replay import CRASH_DETAIL, replay
from recorder.sim.frontends.bitmart_perpetual import BitmartPerpSim

from .processes import common_prefix, killed_runs, run_cli, spawn, stop
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

pytestmark = pytest.mark.timeout(90)

EX = "bitmart_perpetual"
PERP = {"BTC-USDT": "BTCUSDT", "ETH-USDT": "ETHUSDT"}  # user symbol -> wire id
TABLES = ("trades", "book_updates", "book_snapshots", "events", "derivative_ticker")
MIN_TRADES = 300


@pytest.fixture
async def perp():
    # ~200 trades/s per symbol; quiet books get an empty push after 0.3 s; tickers every 0.3 s
    s = BitmartPerpSim(
        symbols=list(PERP.values()), seed=7, rate=1000.0, heartbeat_interval=0.3,
        full_book_interval=0.3, funding_interval=0.5,
    )  # fmt: skip
    await s.start(host="127.0.0.1", port=0)
    try:
        yield s
    finally:
        await s.stop()


def quiet_books(sim: BitmartPerpSim) -> None:
    """No more empty pushes: the version stops moving once the market is paused (so the truth read
    after the recorder stopped is the book it was sent)."""
    sim.heartbeat_interval = 1e9


# ---- what the simulator sent, what was stored -------------------------------------------------------

TradeRow = tuple[str, int, str, float, float]  # trade_id, ts us, side, price, amount (base units)


def wire_row(sim: BitmartPerpSim, trade) -> TradeRow:  # noqa: ANN001
    """A sent trade as the recorder must store it, from the item that went on the wire: the id as a
    string, `created_at` (ns) to µs, the side from `m`, contracts x contract size."""
    item = sim.trade_item(trade)
    head, frac = item["created_at"].removesuffix("Z").split(".")
    seconds = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
    amount = Decimal(item["deal_vol"]) * Decimal(sim.market.spec(trade.symbol).contract_size)
    assert amount == Decimal(trade.size)  # the base-unit truth, exactly
    return (str(item["trade_id"]), seconds * 1_000_000 + int(frac[:6]), "sell" if item["m"] else "buy",
            float(item["deal_price"]), float(amount))  # fmt: skip


def sent_rows(sim: BitmartPerpSim, wire: str, conns: list | None = None) -> list[TradeRow]:
    """What these connections (default: all, in order) were sent of `wire`, in send order."""
    conns = sorted(sim.connections, key=lambda c: c.id) if conns is None else conns
    return [wire_row(sim, t) for c in conns for t in sim.sent_trades(wire, c)]


def stored_rows(data: Path, user: str, by_recv: bool = False) -> list[TradeRow]:
    """A symbol's trades in arrival order: file name then row (one live run), or receive time first
    (recovered files are published later than the rows they hold were received)."""
    files = sorted((data / "trades" / f"exchange={EX}" / f"symbol={user}").glob("date=*/*.parquet"))
    if not files:
        return []
    order = "recv_ts, filename, file_row_number" if by_recv else "parse_filename(filename), file_row_number"
    return (
        duckdb.connect()
        .execute(
            "select trade_id, epoch_us(ts), side, price, amount from read_parquet(?, filename = true, "
            f"file_row_number = true) order by {order}",
            [[str(f) for f in files]],
        )
        .fetchall()
    )


def tables(data: Path) -> dict[str, list[tuple]]:
    con = connect(data)
    return {t: con.execute(f"select * exclude (date) from {t} order by all").fetchall() for t in TABLES}


def ticker_rows(data: Path, user: str) -> list[tuple]:
    """derivative_ticker rows of one symbol in arrival order (file name, then row)."""
    files = sorted(
        (data / "derivative_ticker" / f"exchange={EX}" / f"symbol={user}").glob("date=*/*.parquet")
    )
    return (
        duckdb.connect()
        .execute(
            "select epoch_us(ts), epoch_us(recv_ts), last_price, mark_price, index_price, funding_rate, "
            "next_funding_rate, epoch_us(next_funding_time), open_interest from read_parquet(?, filename = true, "
            "file_row_number = true) order by parse_filename(filename), file_row_number",
            [[str(f) for f in files]],
        )
        .fetchall()
    )


# ---- recording ----------------------------------------------------------------------------------------


async def test_book_exact_and_every_trade_once_through_gaps_empty_pushes_and_reconnects(tmp_path, perp):
    sim = perp
    c = Collector(EX, list(PERP), options(tmp_path, sim))
    task = await start(c)
    await wait_for(lambda: books_valid(c), 10, "first snapshots")
    assert [i.contract_size for i in c.instruments] == ["0.00001", "0.0001"]  # from the market list
    await asyncio.sleep(0.3)
    btc, eth = c.streams["BTC-USDT"].book, c.streams["ETH-USDT"].book
    sim.skip_version("BTCUSDT")  # a lost push: the recorder must see the gap and `request` a snapshot
    await wait_for(lambda: btc.gaps == 1 and btc.snapshots == 2 and books_valid(c), 10, "resync")
    # a quiet market: empty pushes, each one version further, are applied, not gaps
    sim.pause()
    empties = sim.empty_pushes
    await wait_for(lambda: sim.empty_pushes >= empties + 6, 10, "empty pushes")
    await asyncio.sleep(0.2)
    assert books_valid(c) and btc.seq == sim.truth_seq("BTC-USDT") and btc.gaps == 1
    sim.resume()
    await asyncio.sleep(0.3)
    sim.duplicate_version("ETHUSDT")  # a repeated non-empty update: out of order, resync
    sim.send_stale_version("BTCUSDT")  # a version that went back: out of order, resync
    await wait_for(lambda: btc.snapshots >= 3 and eth.snapshots >= 2 and books_valid(c), 10, "resyncs")
    sim.send_malformed_json()
    await asyncio.sleep(0.3)
    sim.drop_connections()
    await wait_for(lambda: sum(x.reconnects for x in c.connections) >= 1 and books_valid(c), 15, "reconnect")
    await record_trades(sim, MIN_TRADES, symbols=PERP)
    sim.pause()
    quiet_books(sim)
    await finish(c, sim, task)

    assert_book_matches_truth(tmp_path, sim, EX, PERP)  # the 50-level window, in base units
    for user, wire in PERP.items():
        want = sent_rows(sim, wire)
        assert len(want) >= MIN_TRADES
        got = stored_rows(tmp_path, user)
        assert got == want, (
            f"{user}: {len(got)} stored vs {len(want)} sent, first difference at {common_prefix(got, want)}"
        )
        assert len({r[0] for r in got}) == len(got)  # every trade once, by id
        assert {r[2] for r in got} == {"buy", "sell"}
    con = connect(tmp_path)
    kinds = Counter(con.execute("select symbol, channel, event, cause from events").fetchall())
    assert kinds[("BTC-USDT", "book", "gap", "gap")] == 1  # the skipped push only: empty pushes are no gaps
    assert kinds[("ETH-USDT", "book", "gap", "gap")] == 0
    assert kinds[("BTC-USDT", "book", "error", "out_of_order")] == 1  # the stale version
    assert kinds[("ETH-USDT", "book", "error", "out_of_order")] == 1  # the duplicate
    assert kinds[("ETH-USDT", "trades", "error", "decode")] == 1  # the truncated JSON
    assert kinds[("BTC-USDT", "ticker", "disconnect", "disconnect")] == 1
    assert kinds[("BTC-USDT", "book", "resync", None)] >= 4  # first, gap, stale, garbage, reconnect
    # book_snapshots: the validated top 20 in base units, never crossed
    snaps = con.execute(
        "select bids[1].price, asks[1].price, len(bids), len(asks) from book_snapshots"
    ).fetchall()
    assert snaps and all(b < a and nb == na == 20 for b, a, nb, na in snaps)


async def test_a_trading_contract_with_no_order_is_stored_as_an_empty_book(tmp_path):
    """The quiet contract (listed `Trading`, no order: one empty snapshot at version 3, then nothing
    on its book, no trade; protocols/bitmart.md §4.2) over real sockets, next to a busy one: its
    book is valid from that snapshot and stays so, `book_updates` holds the one empty-snapshot row
    (which rebuilds an empty book), every `book_snapshots` row is empty, no error or gap, and it
    costs the connection nothing (no reconnect)."""
    from recorder.sim.frontends.bitmart_perpetual import QUIET_VERSION

    sim = BitmartPerpSim(symbols=["BTCUSDT", "QUIETUSDT"], seed=3, rate=300.0, heartbeat_interval=0.3,
                         full_book_interval=0.3, funding_interval=0.5)  # fmt: skip
    await sim.start(host="127.0.0.1", port=0)
    try:
        c = Collector(EX, ["BTC-USDT", "QUIET-USDT"], options(tmp_path, sim, snapshot_interval=0.2))
        task = await start(c)
        await wait_for(lambda: books_valid(c), 10, "both snapshots")
        quiet = c.streams["QUIET-USDT"].book
        assert quiet.seq == QUIET_VERSION and not quiet.book.bids and not quiet.book.asks
        await record_trades(sim, 100, symbols={"BTC-USDT": "BTCUSDT"})  # the heartbeats went by too
        assert quiet.valid and quiet.seq == QUIET_VERSION and quiet.snapshots == 1
        sim.pause()
        quiet_books(sim)
        await finish(c, sim, task)
        assert sum(x.reconnects for x in c.connections) == 0
    finally:
        await sim.stop()
    con = connect(tmp_path)
    rows = con.execute(
        "select is_snapshot, seq, side, price, amount from book_updates where symbol = 'QUIET-USDT'"
    ).fetchall()
    assert rows == [(True, QUIET_VERSION, "bid", 0.0, 0.0)]
    rebuilt = rebuild_book(tmp_path, EX, "QUIET-USDT")
    assert rebuilt.seq == QUIET_VERSION and rebuilt.bids == {} and rebuilt.asks == {}
    snaps = con.execute("select seq, len(bids), len(asks) from book_snapshots where symbol = 'QUIET-USDT'").fetchall()
    assert len(snaps) >= 3 and set(snaps) == {(QUIET_VERSION, 0, 0)}
    assert con.execute("select count(*) from trades where symbol = 'QUIET-USDT'").fetchone() == (0,)
    bad = con.execute(
        "select channel, event, detail from events where symbol = 'QUIET-USDT' and event in ('error', 'gap', 'disconnect')"
    ).fetchall()
    assert bad == []
    [(start_event, end_cause)] = con.execute(
        "select start_event, end_cause from coverage where symbol = 'QUIET-USDT' and channel = 'book'"
    ).fetchall()
    assert (start_event, end_cause) == ("resync", "process stop")  # valid from its snapshot to the stop


async def test_derivative_ticker_rows_are_what_the_simulator_served(tmp_path, perp):
    sim = perp
    c = Collector(EX, list(PERP), options(tmp_path, sim))
    task = await start(c)
    await wait_for(lambda: books_valid(c), 10, "first snapshots")
    await asyncio.sleep(2.0)
    sim.pause()
    quiet_books(sim)
    await finish(c, sim, task)

    conns = sorted(sim.connections, key=lambda x: x.id)  # the start-up probe, then the recording one

    def served_items(channel: str, wire: str) -> list[dict]:
        return [i for conn in conns for ch, w, i in sim.served(conn, channel) if w == wire]

    for user, wire in PERP.items():
        size = Decimal(sim.market.spec(wire).contract_size)
        rows = ticker_rows(tmp_path, user)
        tickers = [r for r in rows if r[2] is not None]
        funding = [r for r in rows if r[5] is not None]
        interest = [r for r in rows if r[8] is not None]
        assert len(tickers) + len(funding) + len(interest) == len(rows)  # one kind of row per message
        # futures/ticker: last, mark, index; no time in the push, so ts is the receive time
        served = served_items("futures/ticker", wire)
        want = [(float(i["last_price"]), float(i["mark_price"]), float(i["index_price"])) for i in served]
        got = [r[2:5] for r in tickers]
        assert got == want[: len(got)] and len(want) - len(got) <= 1  # (at most one in flight at the stop)
        assert len(got) >= 5 and all(r[0] == r[1] and r[5:] == (None,) * 4 for r in tickers)
        # futures/fundingRate: current and predicted rate, the settlement time, at the push's `ts`
        served = served_items("futures/fundingRate", wire)
        want = [
            (
                i["ts"] * 1000,
                float(i["fundingRate"]),
                float(i["nextFundingRate"]),
                i["nextFundingTime"] * 1000,
            )
            for i in served
        ]
        got = [(r[0], r[5], r[6], r[7]) for r in funding]
        assert got == want[: len(got)] and len(want) - len(got) <= 1 and len(got) >= 3
        assert all(r[2:5] == (None,) * 3 and r[8] is None for r in funding)
        # open interest from the REST poll, contracts -> base units, at the answer's timestamp
        answers = [d for route, d in sim.served_rest if d["symbol"] == wire]
        want = [(d["timestamp"] * 1000, float(Decimal(d["open_interest"]) * size)) for d in answers]
        assert [(r[0], r[8]) for r in interest] == want and len(want) == 1  # polled once a minute


async def test_unknown_symbols_and_refused_subscriptions_are_clear(tmp_path, perp):
    sim = perp
    for bad in ("BTC-USDX", "NEWT-USDT"):  # NEWT: listed, not trading
        c = Collector(EX, [bad], options(tmp_path, sim))
        with pytest.raises(
            RecorderError, match=f"^unknown symbol '{bad}' on bitmart_perpetual; did you mean .*BTC-USDT"
        ):
            await c.prepare()
    for wire in ("BTCUSDT", "btcusdt"):  # BitMart futures' own form: named, not guessed into a run
        with pytest.raises(
            RecorderError, match=f"^symbol '{wire}' is not of the form BASE-QUOTE .*; did you mean BTC-USDT\\?$"
        ):
            await Collector(EX, [wire], options(tmp_path, sim)).prepare()
    with pytest.raises(RecorderError, match="not of the form BASE-QUOTE \\(e.g. BTC-USDT\\)$"):  # no such market
        await Collector(EX, ["ZZZUSDT"], options(tmp_path, sim)).prepare()
    rc, err = await run_cli("run", EX, "BTC-USDX", "--ws-url", sim.ws_url, "--rest-url", sim.rest_url,
                            "--data-dir", str(tmp_path / "cli"), "-q")  # fmt: skip
    assert (
        rc != 0
        and err.strip().count("\n") == 0
        and "unknown symbol 'BTC-USDX'" in err
        and "Traceback" not in err
    )

    sim.fail_next_subscribe()  # the first topic of the first subscribe is refused, then retried
    c = Collector(EX, ["BTC-USDT"], options(tmp_path, sim, refused_retry=0.3))
    task = await start(c)
    await wait_for(
        lambda: books_valid(c) and all(t.acked for x in c.connections for t in x.topics), 10, "all acked"
    )
    await record_trades(sim, 20, symbols={"BTC-USDT": "BTCUSDT"})
    sim.pause()
    quiet_books(sim)
    await finish(c, sim, task)
    con = connect(tmp_path)
    refused = con.execute(
        "select channel, detail from events where event = 'error' and cause = 'refused'"
    ).fetchall()
    assert refused == [("trades", "Invalid channel: not found futures/trade:BTCUSDT")]
    subscribed = con.execute(
        "select channel, count(*) from events where event = 'subscribed' group by all"
    ).fetchall()
    assert dict(subscribed) == {"trades": 1, "book": 1, "ticker": 1, "funding": 1}
    assert stored_rows(tmp_path, "BTC-USDT") == sent_rows(sim, "BTCUSDT")


async def test_replay_of_the_raw_log_reproduces_every_perp_table(tmp_path, perp):
    sim = perp
    live = tmp_path / "live"
    c = Collector(EX, list(PERP), options(live, sim))
    task = await start(c)
    await wait_for(lambda: books_valid(c), 10, "first snapshots")
    await asyncio.sleep(0.5)
    sim.skip_version("ETHUSDT")
    sim.send_malformed_json()
    await asyncio.sleep(1.5)
    sim.pause()
    quiet_books(sim)
    await finish(c, sim, task)

    out = tmp_path / "replayed"
    res = replay([live / "raw"], out)
    assert res.files >= 1 and res.rows > 0
    a, b = tables(live), tables(out)
    for t in TABLES:
        assert a[t], f"live {t} is empty"
        assert a[t] == b[t], t


# ---- crash recovery: real `recorder run` processes, killed -------------------------------------------------


async def test_sigkill_recovery_and_replay_rederive_every_perp_table(tmp_path, perp):
    sim = perp
    data = tmp_path / "data"
    rng = random.Random(99)
    def start():
        return spawn(data, sim, exchange=EX, symbols=list(PERP))

    runs = await killed_runs(sim, 4, start, lambda: asyncio.sleep(rng.uniform(0.5, 2.5)))  # anywhere vs 1 s flushes
    known = len(sim.connections)
    final = await start()  # recovers the killed runs from their raw logs on start
    try:
        deadline = time.monotonic() + 30
        while min(len(sent_rows(sim, w, sim.connections[known:])) for w in PERP.values()) < MIN_TRADES:
            assert time.monotonic() < deadline, "too few trades"
            await asyncio.sleep(0.1)
        quiet_books(sim)
        await quiesce(sim)
    finally:
        err = await stop(final)
    assert final.returncode == 0, err
    runs.append((sim.connections[known:], None))

    for f in data.rglob("*.parquet"):
        pq.read_metadata(f)  # every published file is complete
    assert not list(data.rglob("*.tmp"))
    for user, wire in PERP.items():
        stored = stored_rows(data, user, by_recv=True)
        assert len({r[0] for r in stored}) == len(stored), f"{user}: a trade id stored twice"
        pos = 0
        for k, (conns, kill) in enumerate(runs):
            sent = sent_rows(sim, wire, conns)
            n = common_prefix(stored[pos:], sent)
            lost = sent[n:]
            if kill is None:
                assert not lost, f"{user}, clean last run: {len(lost)} of {len(sent)} trades missing"
            else:  # only the raw log's durability window before a kill may be missing
                early = [t for t in lost if t[1] < (kill - 2.0) * 1e6]
                assert not early, f"{user}, run {k}: {len(early)} trades sent > 2 s before the kill missing"
            pos += n
        assert pos == len(stored), f"{user}: {len(stored) - pos} stored trades were never sent"
        version, bids, asks = sim.truth_book(wire)
        book = rebuild_book(data, EX, user)
        assert (book.seq, book.bids, book.asks) == (version, bids, asks), user

    # the tables (recovered + live) equal a full replay of the raw logs, derivative_ticker included
    replayed = tmp_path / "replayed"
    replay([data / "raw"], replayed)
    live, ref = tables(data), tables(replayed)
    for t in TABLES:
        assert ref[t], f"{t} empty"
        assert live[t] == ref[t], f"{t}: {len(live[t])} rows, the raw logs give {len(ref[t])}"
    con = connect(data)
    crashes = con.execute(
        "select count(distinct ts) from events where event = 'stop' and detail = ?", [CRASH_DETAIL]
    )
    assert crashes.fetchone()[0] == len(runs) - 1
    rc, err = await run_cli("replay", str(data / "raw"), "--data-dir", str(data))  # nothing left to add
    assert rc == 0, err
    assert err.strip() and all(line.strip() for line in err.splitlines()), err  # no progress residue on a pipe
    assert tables(data) == live
