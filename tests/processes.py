"""Helpers for tests that run the recorder CLI as subprocesses against an in-process simulator.

The recorders are real `recorder` processes; what they stored is compared with the simulator's own
truth (what it wrote to each socket), which lives in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import duckdb

from recorder import connect
from recorder.bookreplay import rebuild_book
from recorder.sim import BitmartSpotSim

from .recording import MIN_TRADES, SYMBOLS, Key, quiesce

RECORDER = shutil.which("recorder", path=str(Path(sys.executable).parent)) or "recorder"

TABLES = {
    "trades": "ts, recv_ts, side, price, amount",
    "book_updates": "recv_ts, seq, side, price, amount",
    "book_snapshots": "recv_ts, seq",
    "events": "ts, channel, event, detail",
}


async def _communicate(proc: asyncio.subprocess.Process, timeout: float) -> str:
    """Wait for the process to exit (bounded; killed on timeout); returns its stderr."""
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return err.decode()


async def spawn(
    data: Path, sim, *extra: str, exchange: str = "bitmart", symbols: list[str] | None = None, timeout: float = 30,
) -> asyncio.subprocess.Process:
    """`recorder run exchange symbols` (default: bitmart SYMBOLS) from `sim` into `data`; returns once it
    captures frames (a new raw log)."""
    raw = data / "raw"
    before = set(raw.rglob("*.zst"))
    proc = await asyncio.create_subprocess_exec(
        RECORDER, "run", exchange, *(list(SYMBOLS) if symbols is None else symbols),
        "--ws-url", sim.ws_url, "--rest-url", sim.rest_url,
        "--data-dir", str(data), "--flush-interval", "1", "-q", *extra,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not set(raw.rglob("*.zst")) - before:
        if proc.returncode is not None or time.monotonic() > deadline:
            await stop(proc, signal.SIGKILL)
            raise AssertionError(f"recorder did not start: {(await proc.stderr.read()).decode()}")
        await asyncio.sleep(0.05)
    return proc


Run = tuple[list, float | None]  # one recorder process's simulator connections, wall time of its SIGKILL


async def killed_runs(
    sim, count: int, start: Callable[[], Awaitable[asyncio.subprocess.Process]], pause: Callable[[], Awaitable[None]],
) -> list[Run]:
    """`count` recorder processes, one after another: each started (`start`), left to record for
    `pause`, then SIGKILLed. Returns each run's connections and the time of its kill."""
    runs: list[Run] = []
    for _ in range(count):
        known = len(sim.connections)
        proc = await start()
        await pause()
        kill = time.time()
        await stop(proc, signal.SIGKILL)
        runs.append((sim.connections[known:], kill))
    return runs


async def clean_run(sim, start: Callable[[], Awaitable[asyncio.subprocess.Process]], trades: int = 300) -> tuple[Run, str]:
    """A recorder process (`start`) that records until each symbol was sent `trades` trades on its
    connections (bounded), the market freezes, and it stops cleanly. Returns its run and stderr."""
    known = len(sim.connections)
    proc = await start()
    try:
        deadline = time.monotonic() + 30
        while sent_count(sim, sim.connections[known:]) < trades and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await quiesce(sim)
    finally:
        err = await stop(proc)
    assert proc.returncode == 0, err
    return (sim.connections[known:], None), err


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM, timeout: float = 30) -> str:
    """Signal the recorder and wait for it (bounded); returns its stderr."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    return await _communicate(proc, timeout)


async def run_cli(*args: str, timeout: float = 60) -> tuple[int, str]:
    """`recorder *args` to completion (bounded); returns its exit code and stderr."""
    proc = await asyncio.create_subprocess_exec(
        RECORDER, *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    err = await _communicate(proc, timeout)
    return proc.returncode, err


def sent_to(sim: BitmartSpotSim, wire: str, conns: list) -> list[Key]:
    """What the simulator wrote to these connections (one recorder process's), in send order."""
    return [(t.ts_ms * 1000, t.side, t.price_f, t.size_f) for c in conns for t in sim.sent_trades(wire, c)]


def sent_count(sim: BitmartSpotSim, conns: list) -> int:
    """The fewest trades any symbol was sent on these connections."""
    return min(len(sent_to(sim, wire, conns)) for wire in SYMBOLS.values())


def sent_each(sim: BitmartSpotSim) -> int:
    """The fewest trades any symbol was sent, over all connections so far."""
    return sent_count(sim, sim.connections)


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
    """How many leading items `a` and `b` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def table_rows(data: Path) -> dict[str, list[tuple]]:
    """Every table's rows, in a fixed order."""
    con = connect(data)
    return {
        t: con.execute(f"select * exclude (date) from {t} order by symbol, {order}").fetchall()
        for t, order in TABLES.items()
    }


def assert_equals_truth(data: Path, sim: BitmartSpotSim) -> None:
    """Trades exactly as sent, in order; books exactly the simulator's."""
    for user, wire in SYMBOLS.items():
        sent = sent_to(sim, wire, sim.connections)
        assert len(sent) >= MIN_TRADES, f"{user}: only {len(sent)} trades sent"
        got = stored_trades(data, user)
        assert got == sent, f"{user}: {len(got)} stored vs {len(sent)} sent, first difference at " + str(
            common_prefix(got, sent)
        )
        version, bids, asks = sim.truth_book(wire)
        book = rebuild_book(data, "bitmart", user)
        assert (book.seq, book.bids, book.asks) == (version, bids, asks), user
