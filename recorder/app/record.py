"""`recorder run`: record until stopped, with a live status table on a terminal and a summary line."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from recorder.app.signals import install_signal_handlers
from recorder.app.simulate import start_simulator
from recorder.collector import Collector, Options, Unwritten
from recorder.errors import RecorderError
from recorder.recovery import recover_data_dir
from recorder.storage.layout import check_writable


async def record(
    exchange: str,
    symbols: list[str],
    opts: Options,
    sim: dict | bool | None = None,
    status: bool = True,
    signals: bool = True,
) -> Collector:
    """Record until SIGINT/SIGTERM or `opts.duration`; returns the finished collector.

    `sim` (True, or the simulator's options such as {"rate": 200, "seed": 1}) starts the built-in
    simulator of `exchange` on 127.0.0.1 and records from it. `signals=False` leaves SIGINT/SIGTERM
    alone (inside a Jupyter kernel, say); stop with `opts.duration` then.
    """
    simulator = None
    if sim:
        simulator = await start_simulator(exchange, sim)
        opts.ws_url = opts.ws_url or simulator.ws_url
        opts.rest_url = opts.rest_url or simulator.rest_url
    restore_signals = None
    try:
        console = Console(stderr=True)
        collector = Collector(exchange, symbols, opts)
        if opts.data_dir is not None:
            await _check_and_recover(opts.data_dir, console)
        await collector.prepare(recovered=True)  # the data dir is checked and recovered once, above
        if signals:
            restore_signals = install_signal_handlers(collector.stop)
        show = status and sys.stderr.isatty()
        console.print(
            f"recording {collector.exchange} {', '.join(collector.streams)} -> {opts.data_dir} "
            f"({'simulator ' if sim else ''}{collector.ws_url})",
            highlight=False,
        )
        if show:
            with Live(_status(collector, time.monotonic()), console=console, refresh_per_second=2) as live:
                updater = asyncio.create_task(_refresh(live, collector))
                try:
                    await collector.run()
                finally:
                    updater.cancel()
        else:
            await collector.run()
        console.print(_summary(collector), highlight=False)
        left = collector.unwritten()
        if left.rows:
            raise RecorderError(unwritten_message(left, opts.data_dir, collector.write_errors[-1]))
        return collector
    finally:
        if restore_signals is not None:
            restore_signals()
        if simulator is not None:
            await simulator.stop()


async def _check_and_recover(data_dir: Path, console: Console) -> None:
    """The data dir is writable, and what crashed runs left in it is recovered from their raw logs."""
    check_writable(data_dir)
    try:
        recovered = await asyncio.to_thread(recover_data_dir, data_dir, console.print)
    except OSError as exc:  # e.g. the disk is still full: nothing is lost, the raw logs stay
        raise RecorderError(
            f"cannot recover crashed run(s) into {data_dir}: {exc.strerror or exc}; "
            "their raw logs are kept and the next start tries again"
        ) from None
    if recovered.runs:
        console.print(f"recovered {recovered.rows:,} rows of {recovered.runs} crashed run(s) from raw logs")


def unwritten_message(u: Unwritten, data_dir: Path | None, why: str) -> str:
    """The one line a stop with unwritten rows ends with: only what is true about getting them back."""
    head = f"{u.rows:,} rows could not be written to {data_dir} ({why})"
    if not u.raw:
        return f"{head}; raw capture was off (--no-raw), so they are lost"
    if not u.lost_rows:
        return f"{head}; they are in the raw log and the next `recorder run` on this data dir recovers them"
    t = u.lost_since or 0
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t / 1e6)) + f".{t // 1000 % 1000:03d}"
    back = u.rows - u.lost_rows
    return (
        f"{head}; the raw log could not be completed either: the {u.lost_rows:,} rows "
        f"({u.lost_trades:,} trades) received since {since} UTC are lost "
        f"({u.raw_records_lost:,} raw records unwritten); the next `recorder run` on this data dir "
        f"recovers the other {back:,} from the raw log"
    )


async def _refresh(live: Live, collector: Collector) -> None:
    start = time.monotonic()
    while True:
        await asyncio.sleep(0.5)
        live.update(_status(collector, start))


def _status(c: Collector, start: float) -> Table:
    t = Table(title=f"recorder · {c.exchange} · {time.monotonic() - start:,.0f} s", expand=False)
    for col in ("symbol", "trades", "book seq", "book", "top of book"):
        t.add_column(col)
    for s in c.streams.values():
        b = s.book.book
        top = f"{b.best_bid()} / {b.best_ask()}" if s.book.valid else "-"
        t.add_row(s.user, f"{s.trade_count:,}", str(s.book.seq or "-"), "valid" if s.book.valid else "syncing", top)
    frames = c.frames
    reconnects = sum(x.reconnects for x in c.connections)
    t.caption = (
        f"frames {frames:,} · reconnects {reconnects} · errors {c.errors} · "
        f"buffered rows {c.sink.pending_rows():,} · files {c.sink.files_written}"
    )
    return t


def _summary(c: Collector) -> str:
    trades = sum(s.trade_count for s in c.streams.values())
    return (
        f"stopped: {trades:,} trades, {c.sink.rows_written:,} rows in {c.sink.files_written} files, "
        f"{sum(x.reconnects for x in c.connections)} reconnects, {c.errors} protocol errors, "
        f"{sum(s.duplicates_dropped for s in c.streams.values())} trades replayed after a reconnect dropped"
    )
