"""Shared harness for tests that run the real recorder against the real simulator in-process, for
every venue: functions take the exchange name and the {user symbol: wire id} map of the symbols
recorded (BitMart spot's by default) and use only the venue-neutral simulator API (`SimServer`).

Trades are checked against what the simulator wrote to our sockets, in order: per symbol, the rows
read back in arrival order (files in name order, whose names start with their UTC publish time, then
rows in file order) must be exactly the trades each connection was sent, connection after
connection, minus the post-reconnect replays the README says are dropped; and there must be enough
of them (`MIN_TRADES`) that a periodic loss such as one trade in a hundred cannot hide.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import duckdb

from recorder import connect
from recorder.bookreplay import rebuild_book
from recorder.collector import Collector, Options
from recorder.sim.server import SimServer

SYMBOLS = {"BTC-USDT": "BTC_USDT", "ETH-USDT": "ETH_USDT"}  # BitMart spot's wire ids


async def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def books_valid(c: Collector) -> bool:
    return all(s.book.valid for s in c.streams.values())


async def caught_up(c: Collector, sim: SimServer) -> bool:
    await sim.drain()
    return all(s.book.valid and s.book.seq == sim.truth_seq(sim.market.resolve(s.wire)) for s in c.streams.values())


def options(tmp_path: Path, sim: SimServer, **kw) -> Options:
    return Options(data_dir=tmp_path, ws_url=sim.ws_url, rest_url=sim.rest_url, flush_interval=1.0, **kw)


async def start(collector: Collector) -> asyncio.Task:
    await collector.prepare()
    return asyncio.create_task(collector.run())


async def quiesce(sim: SimServer) -> None:
    """Freeze the market and let what was sent reach the recorder."""
    sim.pause()
    await sim.drain()
    await asyncio.sleep(0.5)  # the recorder reads what is in flight


async def settle(collector: Collector, sim: SimServer, timeout: float = 10) -> None:
    """Freeze the market and wait until the recorder has received everything the simulator sent."""
    sim.pause()
    deadline = time.monotonic() + timeout
    while not await caught_up(collector, sim):
        assert time.monotonic() < deadline, "recorder did not catch up with the simulator"
        await asyncio.sleep(0.05)


async def finish(collector: Collector, sim: SimServer, task: asyncio.Task) -> None:
    """Freeze the market, let the recorder catch up with the truth, stop it cleanly."""
    await settle(collector, sim)
    collector.stop()
    await asyncio.wait_for(task, 10)


def assert_book_matches_truth(
    tmp_path: Path, sim: SimServer, exchange: str = "bitmart", symbols: dict[str, str] = SYMBOLS
) -> None:
    for user, wire in symbols.items():
        version, bids, asks = sim.truth_book(wire)
        rebuilt = rebuild_book(tmp_path, exchange, user)
        assert rebuilt.seq == version
        assert rebuilt.bids == bids
        assert rebuilt.asks == asks


Key = tuple[int, str, float, float]  # (ts in us, side, price, amount): a trade's content, no id on BitMart

# Per symbol, at least this many trades for a check to count: 1-in-100 loss must show several times.
MIN_TRADES = 300


def _key(t) -> Key:  # noqa: ANN001
    return (t.ts_ms * 1000, t.side, t.price_f, t.size_f)


def sent_in_arrival_order(sim: SimServer, wire: str) -> list[Key]:
    """What the recorder must hold for `wire`, in the order it must hold it.

    Each connection's trades in the order that connection was sent them, connection after connection
    (one recorder keeps one live connection per symbol). After a reconnect, a trade whose content equals
    one already kept and whose time is not later than the last kept trade is a replay and is dropped
    (README, "Every trade once"); the first later trade ends that window.
    """
    kept: list[Key] = []
    for conn in sorted(sim.connections, key=lambda c: c.id):
        sent = sim.sent_trades(wire, conn)
        if not sent:
            continue
        guard, until = (Counter(kept), max(k[0] for k in kept)) if kept else (None, 0)
        for t in sent:
            key = _key(t)
            if guard is not None:
                if key[0] > until:
                    guard = None
                elif guard[key] > 0:
                    guard[key] -= 1
                    continue
            kept.append(key)
    return kept


def recorded_in_arrival_order(data_dir: Path, user: str, exchange: str = "bitmart") -> list[Key]:
    """The `trades` rows of one symbol as the recorder received them.

    Not by `recv_ts` (one frame's trades share it, and the wall clock may step): a flush publishes rows
    in arrival order, and file names start with the UTC publish time, so (file name, row number) is the
    arrival order of one live run, across dates too. (Crash recovery publishes older rows later:
    tests/test_crash.py orders by receive time first.)
    """
    files = sorted((Path(data_dir) / "trades" / f"exchange={exchange}" / f"symbol={user}").glob("*/*.parquet"))
    if not files:
        return []
    rows = duckdb.connect().execute(
        "SELECT epoch_us(ts), side, price, amount FROM read_parquet(?, filename = true, "
        "file_row_number = true) ORDER BY parse_filename(filename), file_row_number",
        [[str(f) for f in files]],
    ).fetchall()
    return [tuple(r) for r in rows]


def assert_same_sequence(got: list[Key], want: list[Key], what: str) -> None:
    """Equal lists, or a message that says how they differ (lost, doubled, reordered)."""
    if got == want:
        return
    i = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    missing, extra = Counter(want) - Counter(got), Counter(got) - Counter(want)
    how = f"{missing.total()} missing, {extra.total()} extra" if missing or extra else "same trades, other order"
    raise AssertionError(
        f"{what}: {len(got)} recorded vs {len(want)} sent ({how}); first difference at #{i}: "
        f"recorded {got[i:i + 2]}, sent {want[i:i + 2]}"
    )


def assert_every_sent_trade_once(
    tmp_path: Path,
    sim: SimServer,
    min_trades: int = MIN_TRADES,
    exchange: str = "bitmart",
    symbols: dict[str, str] = SYMBOLS,
) -> None:
    """Every trade the simulator sent is in `trades` once, in the order it was sent, per symbol."""
    con = connect(tmp_path)
    for user, wire in symbols.items():
        want = sent_in_arrival_order(sim, wire)
        assert len(want) >= min_trades, f"{user}: only {len(want)} trades sent, too few to show periodic loss"
        got = recorded_in_arrival_order(tmp_path, user, exchange)
        assert_same_sequence(got, want, user)
        # the view users query holds exactly these rows too
        (n,) = con.execute("select count(*) from trades where symbol = ?", [user]).fetchone()
        assert n == len(got), f"{user}: the trades view has {n} rows, its files {len(got)}"


async def record_trades(sim: SimServer, n: int, timeout: float = 30, symbols: dict[str, str] = SYMBOLS) -> None:
    """Let the market run until the simulator has sent `n` more trades of every symbol."""
    def sent() -> dict[str, int]:
        return {w: sum(len(c.sent_trades.get(w, ())) for c in sim.connections) for w in symbols.values()}

    start = sent()
    await wait_for(lambda: all(v >= start[w] + n for w, v in sent().items()), timeout, f"{n} more trades each")
