"""`recorder run`: record until stopped, with a live status table on a terminal and a summary line."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live

from recorder.app.console import STATUS_ROWS as STATUS_ROWS  # rows of the live table (tests read it)
from recorder.app.console import Monitor, Printer, json_logs, live_table, status_lines, table
from recorder.app.console import settings as console_settings
from recorder.app.signals import install_signal_handlers
from recorder.app.simulate import start_simulator
from recorder.collector import Collector, Options, Unwritten
from recorder.errors import RecorderError
from recorder.recovery import recover_data_dir
from recorder.storage.checkpoint import RunLock
from recorder.storage.layout import check_writable
from recorder.storage.objectstore import S3Url, Shipper, open_spool, parse_s3

if TYPE_CHECKING:  # loaded only with --metrics-port: prometheus_client and aiohttp's server cost start-up
    from recorder.metrics import Exporter, MetricsConfig


async def record(
    exchange: str,
    symbols: list[str],
    opts: Options,
    sim: dict | bool | None = None,
    status: bool = True,
    signals: bool = True,
    spool: Path | None = None,
    s3_endpoint: str | None = None,
    metrics: MetricsConfig | None = None,
) -> Collector:
    """Record until SIGINT/SIGTERM or `opts.duration`; returns the finished collector.

    `sim` (True, or the simulator's options such as {"rate": 200, "seed": 1}) starts the built-in
    simulator of `exchange` on 127.0.0.1 and records from it. `signals=False` leaves SIGINT/SIGTERM
    alone (inside a Jupyter kernel, say); stop with `opts.duration` then.

    An `s3://bucket/prefix` data dir records into a local spool (`spool`, default
    `~/.cache/recorder/spool/<bucket>/<prefix>`) whose finished files are published to the bucket
    (`recorder.storage.objectstore`); the bucket is checked before anything starts.
    `metrics` serves /metrics and /healthz while recording (`recorder.metrics`).
    """
    shipper = None
    url = parse_s3(opts.data_dir)
    if url is not None:
        shipper = await asyncio.to_thread(open_spool, url, spool, s3_endpoint)
        opts.data_dir = shipper.spool
    simulator = None
    if sim:
        simulator = await start_simulator(exchange, sim)
        opts.ws_url = opts.ws_url or simulator.ws_url
        opts.rest_url = opts.rest_url or simulator.rest_url
    restore_signals = None
    exporter: Exporter | None = None
    try:
        console = Printer()  # lines on stderr, whole (or JSON lines: --log-format json)
        collector = Collector(exchange, symbols, opts)
        exporter = await _serve_metrics(metrics, [collector], shipper, console)
        if opts.data_dir is not None:
            await _check_and_recover(opts.data_dir, console)
        await collector.prepare(recovered=True)  # the data dir is checked and recovered once, above
        if shipper is not None:
            shipper.on_error = lambda msg: console.print(f"cannot publish to {url}: {msg}", level="warning")
            shipper.open_logs = collector.open_raw_logs
            shipper.start()  # first: what a crashed run left in the spool (recovered above)
        if signals:
            restore_signals = install_signal_handlers(collector.stop)
        show = status and sys.stderr.isatty() and not json_logs()
        dest = f"{url} (spool {opts.data_dir})" if url is not None else opts.data_dir  # a bucket: both
        console.print(
            f"recording {collector.exchange} {_markets(collector)} -> {dest} "
            f"({'simulator ' if sim else ''}{collector.ws_url})",
            fields={"exchange": collector.exchange, "markets": len(collector.streams),
                    "data_dir": str(url) if url is not None else opts.data_dir,
                    **({"spool": str(opts.data_dir)} if url is not None else {}),
                    "ws_url": collector.ws_url, "simulator": bool(sim)},
        )
        steady_gc()
        await _with_status(console, [collector], status, show, collector.run())
        console.print(_summary(collector), fields=_summary_fields(collector))
        if shipper is not None:
            done, shipper = shipper, None
            await _close_spool(done, url, console)
        left = collector.unwritten()
        if left.rows:
            raise RecorderError(unwritten_message(left, opts.data_dir, collector.write_errors[-1]))
        return collector
    finally:
        if exporter is not None:
            await exporter.stop()
        if restore_signals is not None:
            restore_signals()
        if simulator is not None:
            await simulator.stop()
        if shipper is not None:  # a failed start or an error: what is finished still goes up
            await asyncio.to_thread(shipper.close)


async def record_many(
    plans: list, sim: dict | bool | None = None, status: bool = True, metrics: MetricsConfig | None = None
) -> list[Collector]:
    """`recorder run --config`: one Collector per plan (`recorder.config.Plan`), sharing nothing but
    the data dir (checked and recovered once), the signal handling and the status display; all stop
    together (SIGINT/SIGTERM or the duration)."""
    dirs = {str(p.options.data_dir) for p in plans}
    if len(dirs) != 1:
        raise RecorderError("every recording of a config shares one data dir")
    data_dir = plans[0].options.data_dir
    if parse_s3(data_dir) is not None:
        raise RecorderError("--config records into a local data dir only (s3:// is for single-exchange runs)")
    console = Printer()
    simulators, collectors, prepared = [], [], []
    lock = None
    restore_signals = None
    exporter: Exporter | None = None
    try:
        for p in plans:
            if sim:
                simulators.append(await start_simulator(p.exchange, sim))
                p.options.ws_url = p.options.ws_url or simulators[-1].ws_url
                p.options.rest_url = p.options.rest_url or simulators[-1].rest_url
            collectors.append(Collector(p.exchange, p.symbols, p.options))
        exporter = await _serve_metrics(metrics, collectors, None, console)
        await _check_and_recover(data_dir, console)
        lock = RunLock(data_dir)  # one run (one process): its raw logs are told apart by exchange
        for c in collectors:
            c.lock, c.owns_lock = lock, False
        for c in collectors:
            await c.prepare(recovered=True)
            prepared.append(c)
        restore_signals = install_signal_handlers(lambda: [c.stop() for c in collectors])
        for c in collectors:
            console.print(
                f"recording {c.exchange} {_markets(c)} -> {data_dir} ({'simulator ' if sim else ''}{c.ws_url})",
                highlight=False,
            )
        steady_gc()
        runs = asyncio.gather(*(c.run() for c in collectors))
        prepared = []  # run() cleans up after itself from here on
        await _with_status(console, collectors, status, status and sys.stderr.isatty() and not json_logs(), runs)
        for c in collectors:
            console.print(f"{c.exchange} {_summary(c)}", fields=_summary_fields(c))
        for c in collectors:
            left = c.unwritten()
            if left.rows:
                raise RecorderError(unwritten_message(left, data_dir, c.write_errors[-1]))
        return collectors
    finally:
        if exporter is not None:
            await exporter.stop()
        for c in prepared:  # a later one failed to start: stop those already prepared, cleanly
            c.stop()
            await c.run()
        if lock is not None:
            clean = all(c.sink.pending_rows() == 0 and not c.write_errors for c in collectors)
            lock.finish(clean=clean, has_raw=any(c.options.raw for c in collectors))
        if restore_signals is not None:
            restore_signals()
        for s in simulators:
            await s.stop()


def steady_gc() -> None:
    """Once start-up is done, before the first frame: what start-up made (modules, market lists,
    books) leaves the cyclic collector's sight for good (`gc.freeze`), and the youngest generation is
    collected every 50,000 allocations instead of 700. A frame allocates a dozen short-lived objects
    (structs, records, lists) that reference counting frees on its own; the collector only finds
    garbage in reference cycles, which the per-frame path does not make, so its frequent passes
    over the survivors were pure cost: 0.7-1.9 µs CPU a message (README, "Hot path, third pass")."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def _with_status(console: Printer, collectors: list[Collector], status: bool, show: bool, run) -> None:
    """Await `run` with the live table (`show`, a terminal), else one status line per interval
    (`status`), else silently (`recorder.app.console`)."""
    monitors = [Monitor(c) for c in collectors]
    if show:
        first = Group(*(table(m.sample()) for m in monitors))
        with Live(first, console=console.rich, auto_refresh=False) as live:  # live_table refreshes it
            updater = asyncio.create_task(live_table(live, monitors))
            try:
                await run
            finally:
                updater.cancel()
    elif status:
        updater = asyncio.create_task(status_lines(console, monitors, console_settings.status_interval))
        try:
            await run
        finally:
            updater.cancel()
    else:
        await run


async def _serve_metrics(
    metrics: MetricsConfig | None, collectors: list[Collector], shipper: Shipper | None, console: Printer
) -> Exporter | None:
    """/metrics and /healthz when asked (`--metrics-port`); the exporter's modules are imported only then."""
    if metrics is None:
        return None
    from recorder.metrics import serve_metrics

    return await serve_metrics(metrics, collectors, shipper, lambda s, f: console.print(s, fields=f))


async def _close_spool(shipper: Shipper, url: S3Url, console: Console) -> None:
    """Publish what is left; files the store did not take stay in the spool for the next start."""
    left = await asyncio.to_thread(shipper.close)
    res = shipper.publisher.result
    console.print(f"published {res.uploaded:,} files ({res.bytes / 1e6:,.1f} MB) to {url}", highlight=False)
    if left:
        why = shipper.errors[-1] if shipper.errors else "unknown error"
        raise RecorderError(
            f"{len(left):,} finished files could not be published to {url} ({why}); they are kept in "
            f"the spool {shipper.spool} and the next `recorder run` with this data dir and spool publishes them"
        )


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


def _markets(c: Collector) -> str:
    names = list(c.streams)
    if len(names) <= 10:
        return ", ".join(names)
    return f"{len(names):,} markets ({', '.join(names[:5])}, ...) on {len(c.connections)} connections"


def _status(c: Collector, start: float) -> Group:
    """The live table of one collector as of now (`recorder.app.console.table`)."""
    return table(Monitor(c, start).sample())


def _summary(c: Collector) -> str:
    trades = sum(s.trade_count for s in c.streams.values())
    return (
        f"stopped: {trades:,} trades, {c.sink.rows_written:,} rows in {c.sink.files_written} files, "
        f"{sum(x.reconnects for x in c.connections)} reconnects, {c.errors} protocol errors, "
        f"{sum(s.duplicates_dropped for s in c.streams.values())} trades replayed after a reconnect dropped"
        + (f"; {_n(c.topics_total(), 'topic')} of {_n(len(c.streams), 'market')} on "
           f"{_n(len(c.connections), 'connection')} all subscribed {c.subscribed_in:.1f} s after start"
           if c.subscribed_in is not None else "")
    )


def _summary_fields(c: Collector) -> dict:
    return {"exchange": c.exchange, "trades": sum(s.trade_count for s in c.streams.values()),
            "rows": c.sink.rows_written, "files": c.sink.files_written, "errors": c.errors,
            "reconnects": sum(x.reconnects for x in c.connections)}


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")
