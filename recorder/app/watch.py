"""`recorder candles watch`: the live candles feed as a table in the terminal (rich Live); off a
terminal (a pipe, a file, a service), one plain line per candle as it closes instead, or one JSON
object per candle with `--log-format json`."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from recorder import output
from recorder.app.console import Printer, json_line, json_logs
from recorder.app.signals import install_signal_handlers
from recorder.app.simulate import start_simulator
from recorder.candles.feed import CandlesFeed
from recorder.candles.live import COLUMNS, Candle


async def watch(
    exchange: str,
    symbol: str,
    interval: str = "1m",
    ws_url: str | None = None,
    rest_url: str | None = None,
    sim: dict | bool | None = None,
    duration: float | None = None,
    rows: int = 15,
    max_candles: int = 500,
    grace: float = 2.0,
    console: Console | None = None,
) -> CandlesFeed:
    """Show the feed's last `rows` candles until SIGINT/SIGTERM or `duration` seconds; returns the feed.

    On a terminal (or a given `console` that is one) a live table; otherwise every candle that
    closes is one plain line (`candle_line`), and at the end the candle still open, marked `open`.

    `sim` (True, or the simulator's options) serves `exchange` from its built-in simulator on 127.0.0.1.
    """
    console = console or output.console()
    simulator = None
    if sim:
        simulator = await start_simulator(exchange, sim)
        ws_url, rest_url = ws_url or simulator.ws_url, rest_url or simulator.rest_url
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    restore_signals = install_signal_handlers(stop.set)
    try:
        feed = CandlesFeed(exchange, symbol, interval, max_candles, ws_url, rest_url, grace)
        await feed.start()
        Printer().print(
            f"watching {feed.exchange} {feed.symbol} {interval} candles "
            f"({'simulator ' if simulator else ''}{ws_url or 'exchange'}); Ctrl-C stops",
            fields={"exchange": feed.exchange, "symbol": feed.symbol, "interval": interval,
                    "ws_url": ws_url, "simulator": bool(simulator)},
        )
        try:
            deadline = None if duration is None else loop.time() + duration
            if console.is_terminal and not json_logs():
                with Live(render(feed, rows), console=console, refresh_per_second=4) as live:
                    while await _tick(stop, deadline, loop):
                        live.update(render(feed, rows))
            else:
                printed = set(list(feed.engine.keys)[:-rows])  # the history: only the last `rows` candles
                while await _tick(stop, deadline, loop):
                    _print_closed(feed, console, printed)
                _print_closed(feed, console, printed, final=True)
        finally:
            await feed.stop()
        return feed
    finally:
        restore_signals()
        if simulator is not None:
            await simulator.stop()


async def _tick(stop: asyncio.Event, deadline: float | None, loop: asyncio.AbstractEventLoop) -> bool:
    """Wait up to 0.25 s; False once stopped or past the deadline."""
    wait = 0.25 if deadline is None else min(0.25, deadline - loop.time())
    if wait <= 0 or stop.is_set():
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), wait)
    return True


def _print_closed(feed: CandlesFeed, console: Console, printed: set, final: bool = False) -> None:
    """Each candle before the open one, once; with `final`, the open one too (marked `open`)."""
    keys = feed.engine.keys
    current = feed.current
    for key in keys:
        bar = feed.engine.bars[key]
        c = bar.candle()
        is_open = current is not None and c.open_time == current.open_time
        if key in printed or (is_open and not final):
            continue
        printed.add(key)
        line = f"{feed.exchange} {feed.symbol} {feed.interval} {candle_line(c, feed.interval, is_open)}"
        if json_logs():  # stdout, as the plain lines: the candles are the command's output
            sys.stdout.write(json_line("info", line, candle_fields(feed, c, is_open)) + "\n")
            sys.stdout.flush()
        else:
            console.print(line, highlight=False, soft_wrap=True)


def candle_fields(feed: CandlesFeed, c: Candle, is_open: bool = False) -> dict[str, Any]:
    """One candle as JSON fields: the feed's columns (`CandlesFeed.df()`'s, numbers as numbers, None
    where the source has none), the open time in ISO-8601 UTC, and `state`: exchange, live, partial,
    or open (the candle still open when the watch stopped)."""
    return {
        "exchange": feed.exchange,
        "symbol": feed.symbol,
        "interval": feed.interval,
        "open_time": f"{c.open_time:%Y-%m-%dT%H:%M:%S}Z",
        **{k: getattr(c, k) for k in COLUMNS},
        "state": "open" if is_open else _state(c),
    }


def candle_line(c: Candle, interval: str, is_open: bool = False) -> str:
    """One candle as plain words: the table's cells, space-separated, the time in full."""
    cells = _cells(c, interval)
    cells[0] = f"{c.open_time:%Y-%m-%dT%H:%M:%S}Z"
    cells[-1] = "open" if is_open else cells[-1]
    return " ".join(cell or "-" for cell in cells)


def render(feed: CandlesFeed, rows: int) -> Table:
    """The last `rows` candles, newest at the bottom; the open candle highlighted, incomplete ones yellow.

    The last column says where a candle comes from: `exchange` (its kline), `live` (the trade stream,
    complete) or `partial` (the trade stream, but the feed missed part of the interval).
    """
    bars = [feed.engine.bars[b] for b in feed.engine.keys[-rows:]]
    day = f" · {bars[-1].candle().open_time:%Y-%m-%d}" if bars and feed.interval != "1d" else ""
    state = "live" if feed.live else "[yellow]reconnecting[/]"
    table = Table(
        title=f"{feed.exchange} {feed.symbol} {feed.interval}{day} UTC · {state}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
    )
    for name in ("time", "open", "high", "low", "close", "volume", "trades", "buy%", "candle"):
        table.add_column(name, justify="left" if name in ("time", "candle") else "right", no_wrap=True)
    current = feed.current
    for bar in bars:
        c = bar.candle()
        is_current = current is not None and c.open_time == current.open_time
        style = "bold reverse" if is_current else ("yellow" if not c.complete else "")
        table.add_row(*_cells(c, feed.interval), style=style)
    s = feed.stats
    table.caption = (
        f"partial: part of the interval unseen · {s.trades:,} live trades · {s.repaired} repaired · "
        f"{feed.reconnects} reconnects · {time.strftime('%H:%M:%S', time.gmtime())} UTC"
    )
    return table


TIME_FORMAT = {"1s": "%H:%M:%S", "1d": "%Y-%m-%d"}


def _cells(c: Candle, interval: str) -> list[str]:
    buy = "" if c.buy_volume is None or not c.volume else f"{100 * c.buy_volume / c.volume:.0f}"
    return [
        f"{c.open_time:{TIME_FORMAT.get(interval, '%H:%M')}}",
        _price(c.open),
        _price(c.high),
        _price(c.low),
        _price(c.close),
        f"{c.volume:.5g}",
        "" if c.trades is None else f"{c.trades:,}",
        buy,
        _state(c),  # the current row is highlighted, not labelled
    ]


def _state(c: Candle) -> str:
    """Where a candle comes from: `exchange` or `live`, or `partial` if the feed missed part of it."""
    return c.source if c.complete else "partial"


def _price(x: float) -> str:
    return f"{x:.10g}"
