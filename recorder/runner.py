"""Library entry points behind the CLI commands (tests call these directly)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

import duckdb
from rich.console import Console
from rich.live import Live
from rich.table import Table

from recorder import venues
from recorder.collector import Collector, Options, Unwritten, check_writable
from recorder.errors import RecorderError
from recorder.query import open_views
from recorder.recovery import recover_data_dir

# A simulator that users run for hours: bounded ground-truth logs, some kline history to backfill.
LONG_RUNNING_SIM = {"record_sent": False, "trade_log_limit": 100_000, "history_minutes": 240}


def simulator_class(exchange: str):
    """The simulator front-end of `exchange` (unknown exchange: the same clear error as `run`)."""
    return venues.simulator(exchange)


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
    from recorder.cli import install_signal_handlers

    simulator = None
    if sim:
        sim_options = {"seed": 0, **LONG_RUNNING_SIM, **(sim if isinstance(sim, dict) else {})}
        simulator = simulator_class(exchange)(**sim_options)
        await simulator.start(host="127.0.0.1", port=0)
        opts.ws_url = opts.ws_url or simulator.ws_url
        opts.rest_url = opts.rest_url or simulator.rest_url
    try:
        console = Console(stderr=True)
        collector = Collector(exchange, symbols, opts)
        check_writable(opts.data_dir)
        try:
            recovered = await asyncio.to_thread(recover_data_dir, opts.data_dir, console.print)
        except OSError as exc:  # e.g. the disk is still full: nothing is lost, the raw logs stay
            raise RecorderError(
                f"cannot recover crashed run(s) into {opts.data_dir}: {exc.strerror or exc}; "
                "their raw logs are kept and the next start tries again"
            ) from None
        if recovered.runs:
            console.print(f"recovered {recovered.rows:,} rows of {recovered.runs} crashed run(s) from raw logs")
        await collector.prepare()
        if signals:
            install_signal_handlers(collector.stop)
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
        if simulator is not None:
            await simulator.stop()


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


async def simulate_forever(
    exchange: str,
    host: str,
    port: int,
    seed: int,
    rate: float,
    extra_symbols: int,
    faults: list[str] | None = None,
    fault_every: float = 10.0,
) -> None:
    """Serve until SIGINT/SIGTERM. `extra_symbols` > 0 serves that many synthetic symbols instead.

    `faults` (names from `recorder.sim.faults.FAULTS`) are injected round robin every `fault_every` s.
    """
    from recorder.sim.faults import inject_forever

    cls = simulator_class(exchange)
    sim = cls(symbols=extra_symbols or None, seed=seed, rate=rate, **LONG_RUNNING_SIM)
    try:
        await sim.start(host=host, port=port)
    except OSError as exc:
        raise RecorderError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    # the first line starts with `ws` (scripts read it); then where it really listens
    print(f"ws   {sim.ws_url}\nrest {sim.rest_url}\n{listening_line(host, sim.port)}", flush=True)
    stop = asyncio.Event()
    from recorder.cli import install_signal_handlers

    install_signal_handlers(stop.set)
    injector = None
    if faults:
        print(f"faults: {', '.join(faults)}, one every {fault_every:g} s", flush=True)
        injector = asyncio.create_task(
            inject_forever(sim, faults, fault_every, lambda line: print(line, flush=True), seed)
        )
    try:
        await stop.wait()
    finally:
        if injector is not None:
            injector.cancel()
        await sim.stop()


WILDCARDS = ("", "0.0.0.0", "::")


def listening_line(host: str, port: int) -> str:
    """Where a server bound to `host:port` listens, and a URL other machines can use for a wildcard."""
    if host not in WILDCARDS:
        return f"listening on {host}:{port}"
    reachable = outward_address()
    other = f"; from other machines: ws://{reachable}:{port}/api?protocol=1.1" if reachable else ""
    return f"listening on {host or '0.0.0.0'}:{port} (every interface){other}"


def outward_address() -> str | None:
    """This machine's address on its default route (a UDP `connect` sends nothing), if it has one."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only the routing table is consulted
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def run_sql(query: str, data_dir: Path, fmt: str, max_rows: int, write: bool = False) -> None:
    """Run SQL over the data dir's views, read-only (see `recorder.sqlguard`); exact output."""
    import os
    import tempfile

    from recorder import output
    from recorder.lake import check_data_dir
    from recorder.sqlguard import lock_down, vet

    data_dir = Path(os.path.abspath(check_data_dir(data_dir)))  # views and allowed paths agree
    targets = vet(query, data_dir, write)  # refused statements never reach DuckDB
    with tempfile.TemporaryDirectory(prefix="recorder-sql-") as spill:
        con, _ = open_views(data_dir)
        try:
            lock_down(con, data_dir, targets, Path(spill))
            rel = con.sql(query)
            if rel is None:
                return
            if fmt == "csv":
                output.write_csv(con, rel, sys.stdout)
            elif fmt == "json":
                output.write_json(con, rel, sys.stdout)
            else:
                _print_table(con, rel, max_rows)
        except duckdb.Error as exc:
            raise RecorderError(str(exc).splitlines()[0]) from None
        finally:
            con.close()


def _print_table(con: duckdb.DuckDBPyConnection, rel: duckdb.DuckDBPyRelation, max_rows: int) -> None:
    from rich.text import Text

    from recorder import output

    cols, rows, cut = output.table_rows(con, rel, max_rows)
    t = Table(show_lines=False)
    for c in cols:
        t.add_column(Text(c))
    for r in rows:
        t.add_row(*(Text(v) for v in r))  # Text: a value like "[red]" is data, not rich markup
    with contextlib.suppress(BrokenPipeError):
        Console().print(t)
    if cut:  # never drop rows silently
        Console(stderr=True).print(
            f"showing the first {max_rows:,} rows; more were cut (raise --max-rows, or use --format csv/json)",
            highlight=False,
            soft_wrap=True,
        )
