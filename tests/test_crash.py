"""SIGKILL a real recorder process at random moments, many times: nothing unreadable, nothing twice,
and every trade the simulator sent is in the tables in the order it was sent, except the last moments
before each kill (the raw log's durability window); the tables also equal a full replay of the raw logs.

The helpers here compare with the simulator's own truth (what it wrote to each socket), run in this
test's event loop, while the recorders are real `recorder run` subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from recorder import connect
from recorder.bookreplay import rebuild_book
from recorder.replay import CRASH_DETAIL, replay
from recorder.sim.bitmart import BitmartSpotSim

from .recording import SYMBOLS
from .test_cli import RECORDER

TABLES = {
    "trades": "ts, recv_ts, side, price, amount",
    "book_updates": "recv_ts, seq, side, price, amount",
    "book_snapshots": "recv_ts, seq",
    "events": "ts, channel, event, detail",
}

Key = tuple[int, str, float, float]  # a trade's content: (ts in us, side, price, amount)


def sent_to(sim: BitmartSpotSim, wire: str, conns: list) -> list[Key]:
    """What the simulator wrote to these connections (one recorder process's), in send order."""
    return [(t.ts_ms * 1000, t.side, t.price_f, t.size_f) for c in conns for t in sim.sent_trades(wire, c)]


def sent_count(sim: BitmartSpotSim, conns: list) -> int:
    return min(len(sent_to(sim, wire, conns)) for wire in SYMBOLS.values())


def stored_trades(data: Path, user: str) -> list[Key]:
    """A symbol's trades in arrival order: by receive time (recovered files are written later than
    the rows they hold were received), then file and row order (one frame's trades share recv_ts)."""
    files = sorted((data / "trades" / "exchange=bitmart" / f"symbol={user}").glob("date=*/*.parquet"))
    if not files:
        return []
    return duckdb.connect().execute(
        "select epoch_us(ts), side, price, amount from read_parquet(?, filename = true, file_row_number = true) "
        "order by recv_ts, filename, file_row_number",
        [[str(f) for f in files]],
    ).fetchall()


def common_prefix(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


async def spawn(data: Path, sim: BitmartSpotSim, *extra: str, timeout: float = 30) -> asyncio.subprocess.Process:
    """`recorder run` of SYMBOLS from `sim` into `data`; returns once it captures frames (a new raw log)."""
    raw = data / "raw"
    before = set(raw.rglob("*.zst"))
    proc = await asyncio.create_subprocess_exec(
        RECORDER, "run", "bitmart", *SYMBOLS, "--ws-url", sim.ws_url, "--rest-url", sim.rest_url,
        "--data-dir", str(data), "--flush-interval", "1", "-q", *extra,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    while not set(raw.rglob("*.zst")) - before:
        if proc.returncode is not None or time.monotonic() > deadline:
            await stop(proc, signal.SIGKILL)
            raise AssertionError(f"recorder did not start: {(await proc.stderr.read()).decode()}")
        await asyncio.sleep(0.05)
    return proc


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM, timeout: float = 30) -> str:
    """Signal the recorder and wait for it (bounded); returns its stderr."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return err.decode()


async def run_cli(*args: str, timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        RECORDER, *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, err.decode()


async def test_repeated_sigkill_loses_nothing_and_duplicates_nothing(tmp_path, sim):
    data = tmp_path / "data"
    rng = random.Random(1234)
    runs: list[tuple[list, float | None]] = []  # each process's sim connections, wall time of its SIGKILL
    for _ in range(6):
        known = len(sim.connections)
        proc = await spawn(data, sim)
        await asyncio.sleep(rng.uniform(0.3, 3.0))  # lands anywhere relative to the 1 s flushes
        kill = time.time()
        await stop(proc, signal.SIGKILL)
        runs.append((sim.connections[known:], kill))
    # A replay into the recording's own dir re-derives the dead runs, as recovery would: the next
    # run's recovery must then find nothing left to add.
    rc, err = await run_cli("replay", str(data / "raw"), "--data-dir", str(data))
    assert rc == 0, err
    known = len(sim.connections)
    final = await spawn(data, sim)  # recovers the crashes (here: already replayed) on start
    try:
        # enough trades in one process that losing one in a hundred cannot hide
        deadline = time.monotonic() + 30
        while sent_count(sim, sim.connections[known:]) < 300 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        sim.pause()
        await sim.drain()
        await asyncio.sleep(0.5)  # the recorder reads what is in flight
    finally:
        err = await stop(final)
    assert final.returncode == 0, err
    runs.append((sim.connections[known:], None))

    parquet = list(data.rglob("*.parquet"))
    assert parquet
    for f in parquet:
        pq.read_metadata(f)  # every published file is complete and readable
    assert not [p for p in data.rglob("*.tmp")]
    assert_trades_match_what_was_sent(data, sim, runs)
    for user, wire in SYMBOLS.items():
        version, bids, asks = sim.truth_book(wire)
        book = rebuild_book(data, "bitmart", user)
        assert (book.seq, book.bids, book.asks) == (version, bids, asks), user

    replayed = tmp_path / "replayed"
    replay([data / "raw"], replayed)
    live, ref = connect(data), connect(replayed)
    for table, order in TABLES.items():
        q = f"select * exclude (date) from {table} order by symbol, {order}"
        got, want = live.execute(q).fetchall(), ref.execute(q).fetchall()
        assert want, f"{table} empty"
        assert len(got) == len(want), f"{table}: {len(got)} rows, raw log has {len(want)}"
        assert got == want, table
    crashes = live.execute(
        "select count(distinct ts) from events where event = 'stop' and detail = ?", [CRASH_DETAIL]
    ).fetchone()[0]
    assert crashes == len(runs) - 1
    dup = live.execute(
        "select count(*) from (select ts, recv_ts, symbol, seq, side, price, count(*) c from book_updates "
        "group by all having c > 1)"
    ).fetchone()[0]
    assert dup == 0


def assert_trades_match_what_was_sent(data: Path, sim: BitmartSpotSim, runs: list[tuple[list, float | None]]) -> None:
    """Run after run, the stored trades are what that run's connections were sent, in order; a killed
    run may lack only trades of its last 2 s (raw records reach the OS every 0.2 s; the rest is slack
    for frames still in flight, or unread by a recorder starved of CPU on a busy machine)."""
    for user, wire in SYMBOLS.items():
        stored = stored_trades(data, user)
        assert len(sent_to(sim, wire, runs[-1][0])) >= 300, f"{user}: too few trades to show periodic loss"
        pos = 0
        for k, (conns, kill) in enumerate(runs):
            sent = sent_to(sim, wire, conns)
            n = common_prefix(stored[pos:], sent)
            lost = sent[n:]
            if kill is None:
                assert not lost, f"{user}, clean last run: {len(lost)} of {len(sent)} sent trades missing or changed"
            else:
                early = [t for t in lost if t[0] < (kill - 2.0) * 1e6]
                assert not early, (
                    f"{user}, run {k}: {len(early)} trades sent more than 2 s before the kill are missing "
                    f"or out of order (first: #{n} of {len(sent)}, {early[0]})"
                )
            pos += n
        assert pos == len(stored), f"{user}: {len(stored) - pos} stored trades were never sent (or doubled)"
