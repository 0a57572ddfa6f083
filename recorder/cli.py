"""The `recorder` command line: thin typer commands over library functions.

Process wiring (recording with a status table, the simulator, SQL output, the candles sub-app, the
error guard) lives in `recorder/app/`, imported inside the commands; library modules import neither.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from recorder import checks, output, venues
from recorder.app.candles import app as candles_app
from recorder.app.guard import DEBUG_HELP, examples, fail, run_guarded
from recorder.errors import RecorderError
from recorder.sim.faults import FAULTS, parse_faults

# Every command's --help ends with examples (tests/test_console.py runs through them all).
EXAMPLES = {
    "run": examples(
        "recorder run bitmart BTC-USDT --sim --duration 20",
        "recorder run bitmart BTC-USDT ETH-USDT --data-dir data",
        "recorder run bitmart --all --quote USDT --log-format json",
    ),
    "simulate": examples("recorder simulate bitmart --port 8765 --rate 200", "recorder simulate altmarkets --port 0 --log-format json"),
    "sql": examples(
        'recorder sql "select side, count(*) from trades group by side"',
        'recorder sql "select * from events" --format csv > events.csv',
    ),
    "compact": examples("recorder compact --data-dir data --date 2026-11-30"),
    "replay": examples("recorder replay data/raw --data-dir rebuilt"),
    "status": examples("recorder status --data-dir data", "recorder status --date 2026-11-30 | cat"),
}
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Record exchange market data into Parquet, query it with DuckDB, build candles.",
    epilog=examples("recorder run bitmart BTC-USDT --sim --duration 20", 'recorder sql "select count(*) from trades"')
    + "\n\n" + DEBUG_HELP,
)
app.add_typer(candles_app, name="candles", help="build / backfill / verify / watch candles")
err = output.console(stderr=True)
EXCHANGES = f"one of: {', '.join(venues.names())} (any case)"
CHANNELS = "; ".join(f"{n}: {','.join(venues.venue(n).channels)}" for n in venues.names())


def _channels(exchange: str, value: str | None) -> tuple[str, ...] | None:
    """--channels, checked against what the venue offers (None: the venue's default channels)."""
    from recorder.collector import channels_of

    if value is None:
        return None
    return channels_of(exchange, tuple(c.strip().lower() for c in value.split(",") if c.strip()))


def quote_list(values: list[str]) -> tuple[str, ...]:
    """--quote USDT --quote btc,eth -> ('USDT', 'BTC', 'ETH')."""
    return tuple(dict.fromkeys(q.strip().upper() for v in values for q in v.split(",") if q.strip()))


@app.command(epilog=EXAMPLES["run"])
def run(
    exchange: str | None = typer.Argument(None, help=EXCHANGES + " (not with --config)"),
    symbols: list[str] | None = typer.Argument(None, help="BASE-QUOTE, e.g. BTC-USDT (or --all)"),
    config: Path | None = typer.Option(
        None, "--config", help="TOML file: several exchanges / symbol sets in one process (examples/recorder.toml)"
    ),
    all_markets: bool = typer.Option(False, "--all", help="every trading market of EXCHANGE (instead of SYMBOLs)"),
    quote: list[str] = typer.Option([], "--quote", help="only markets quoted in these (repeatable or comma list)"),
    shard: str | None = typer.Option(None, "--shard", help="I/N: only this shard's markets (rendezvous hashing)"),
    market_refresh: float = typer.Option(
        600.0, "--market-refresh", help="re-read the market list this often (s): new markets are added, delisted ones stop"
    ),
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="where Parquet goes"),
    channels: str | None = typer.Option(
        None, "--channels", help=f"comma list of the venue's channels (default: its default set; {CHANNELS})"
    ),
    duration: float | None = typer.Option(None, "--duration", help="stop cleanly after this many seconds"),
    sim: bool = typer.Option(False, "--sim", help="record from the built-in simulator on 127.0.0.1"),
    sim_rate: float = typer.Option(50.0, "--sim-rate", help="with --sim: market events per second"),
    sim_seed: int = typer.Option(0, "--sim-seed", help="with --sim: the simulator's random seed"),
    sim_symbols: int = typer.Option(0, "--sim-symbols", help="with --sim: serve this many synthetic markets"),
    ws_url: str | None = typer.Option(None, "--ws-url", help="override the public websocket URL"),
    rest_url: str | None = typer.Option(None, "--rest-url", help="override the REST base URL"),
    flush_interval: float = typer.Option(60.0, "--flush-interval", help="publish files at least this often (s)"),
    raw: bool = typer.Option(True, "--raw/--no-raw", help="capture raw frames under DATA_DIR/raw"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no live status"),
    spool: Path | None = typer.Option(
        None, "--spool", help="with --data-dir s3://...: the local spool (default ~/.cache/recorder/spool/...)"
    ),
    s3_endpoint: str | None = typer.Option(None, "--s3-endpoint", help="S3-compatible endpoint URL"),
    log_format: str = typer.Option(
        "text", "--log-format", help="text, or json: every line on stderr one JSON object (ts, level, msg, fields)"
    ),
    status_interval: float = typer.Option(
        10.0, "--status-interval", help="off a terminal (or with --log-format json): one status line this often (s)"
    ),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", help="serve Prometheus /metrics and /healthz on this port (0: a free one, printed)"
    ),
    metrics_host: str = typer.Option("127.0.0.1", "--metrics-host", help="with --metrics-port: listen address"),
    metrics_per_symbol: bool = typer.Option(
        False, "--metrics-per-symbol", help="with --metrics-port: a symbol label on per-market series"
    ),
) -> None:
    """Record trades and the exact order book of SYMBOLS (or --all markets) on EXCHANGE.

    On a terminal a live table shows every stream (past 20: the totals and the worst streams);
    anywhere else, one plain status line per --status-interval."""
    from recorder.app.record import record
    from recorder.collector import Options
    from recorder.shards import parse_shard

    def go() -> None:
        from recorder.app import console

        console.configure(log_format, status_interval)  # first: every line after it in the chosen format
        # 0 or a negative would stop at once / flush in a busy loop / stall the simulator
        checks.positive(duration, "--duration")
        checks.positive(flush_interval, "--flush-interval")
        checks.positive(sim_rate, "--sim-rate", "events per second")
        checks.positive(market_refresh, "--market-refresh")
        if sim_symbols < 0:
            fail(f"--sim-symbols must be 0 (the default set) or more, not {sim_symbols}")
        sim_options = {"rate": sim_rate, "seed": sim_seed} if sim else None
        if metrics_port is not None and not 0 <= metrics_port <= 65535:
            fail(f"--metrics-port must be 0 (a free port) to 65535, not {metrics_port}")
        metrics = None
        if metrics_port is not None:  # prometheus_client and aiohttp's server load only then
            from recorder.metrics import MetricsConfig

            metrics = MetricsConfig(metrics_port, metrics_host, metrics_per_symbol)
        if sim_options is not None and sim_symbols:
            sim_options["symbols"] = sim_symbols
        if config is not None:
            from recorder import config as config_file
            from recorder.app.record import record_many

            if exchange or symbols or all_markets or quote or channels or ws_url or rest_url:
                fail("--config names the exchanges and markets: give no EXCHANGE, SYMBOLs, --all, --quote, "
                     "--channels, --ws-url or --rest-url with it")
            base = Options(data_dir=data_dir, duration=duration, flush_interval=flush_interval, raw=raw,
                           market_refresh=market_refresh)
            plans = config_file.load(config, base, parse_shard(shard) if shard is not None else None)
            asyncio.run(record_many(plans, sim=sim_options, status=not quiet, metrics=metrics))
            return
        if exchange is None:
            fail("give EXCHANGE and SYMBOLs (or --all), or --config FILE")
        if all_markets == bool(symbols):
            fail("give SYMBOLs or --all, not both" if all_markets else "give SYMBOLs or --all (every market)")
        opts = Options(
            all_markets=all_markets,
            quotes=quote_list(quote),
            shard=parse_shard(shard) if shard is not None else None,
            market_refresh=market_refresh,
            data_dir=data_dir,
            channels=_channels(exchange, channels),
            duration=duration,
            ws_url=ws_url,
            rest_url=rest_url,
            flush_interval=flush_interval,
            raw=raw,
        )
        asyncio.run(record(exchange, list(symbols or []), opts, sim=sim_options, status=not quiet, spool=spool, s3_endpoint=s3_endpoint,
                           metrics=metrics))

    run_guarded(go)


@app.command(epilog=EXAMPLES["simulate"])
def simulate(
    exchange: str = typer.Argument(..., help=EXCHANGES),
    port: int = typer.Option(8765, "--port", help="TCP port (0: any free port; the real one is printed)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    seed: int = typer.Option(0, "--seed"),
    rate: float = typer.Option(50.0, "--rate", help="market events per second (0 = full speed)"),
    symbols: int = typer.Option(0, "--symbols", help="serve this many synthetic symbols instead of the default set"),
    fault: str | None = typer.Option(
        None,
        "--fault",
        help="inject these faults, round robin, for real on the open sockets: comma list of all, "
        + ", ".join(FAULTS),
    ),
    fault_every: float = typer.Option(10.0, "--fault-every", help="seconds between two injected faults"),
    log_format: str = typer.Option(
        "text", "--log-format", help="text, or json: every line (URLs, faults, logs) one JSON object"
    ),
) -> None:
    """Run an exchange simulator standalone (prints its ws and rest URLs and where it listens)."""
    from recorder.app.simulate import simulate_forever

    def go() -> None:
        from recorder.app import console

        console.configure(log_format)
        checks.tcp_port(port)
        checks.non_negative(rate, "--rate", "full speed")
        checks.positive(fault_every, "--fault-every")
        if symbols < 0:
            raise RecorderError(f"--symbols must be 0 (the default set) or more, not {symbols}")
        faults = parse_faults(fault)
        asyncio.run(simulate_forever(exchange, host, port, seed, rate, symbols, faults, fault_every))

    run_guarded(go)


@app.command(epilog=EXAMPLES["sql"])
def sql(
    query: str = typer.Argument(..., help="DuckDB SQL over the views trades, book_updates, ..."),
    data_dir: Path = typer.Option(Path("data"), "--data-dir"),
    fmt: str = typer.Option("table", "--format", help="table|csv|json"),
    limit: int = typer.Option(1000, "--max-rows", help="rows shown in table format (a cut is said on stderr)"),
    write: bool = typer.Option(
        False, "--write", help="also allow COPY ... TO / EXPORT DATABASE to a path outside the data dir"
    ),
) -> None:
    """Run DuckDB SQL over the data dir's views (read-only: nothing in the data dir changes)."""
    from recorder.app.sql import run_sql

    if fmt not in ("table", "csv", "json"):
        fail("--format must be table, csv or json")
    if limit < 1:
        fail("--max-rows must be 1 or more")
    run_guarded(lambda: run_sql(query, data_dir, fmt, limit, write=write))


@app.command(epilog=EXAMPLES["compact"])
def compact(
    data_dir: Path = typer.Option(Path("data"), "--data-dir"),
    table: list[str] = typer.Option([], "--table", help="only these tables (repeatable)"),
    date: str | None = typer.Option(None, "--date", help="only this UTC date (YYYY-MM-DD)"),
    include_today: bool = typer.Option(False, "--include-today", help="also compact today's (unfinished) date"),
    log_format: str = typer.Option("text", "--log-format", help="text, or json: one JSON object per stderr line"),
) -> None:
    """Merge a finished date's small files into one file per partition (row groups of up to 1M rows).

    Built candles stay valid (`candles build` sees that only rows it built were re-packed); the
    `candles` table itself is left alone."""
    from recorder.storage.compact import compact_data_dir

    def go() -> None:
        from recorder.app import console
        from recorder.lake import check_data_dir
        from recorder.storage.objectstore import parse_s3

        console.configure(log_format)
        out = console.Printer()
        day = checks.utc_date(date)
        if (url := parse_s3(data_dir)) is not None:  # a bucket: merged in a temp dir, replaced by marker
            from recorder.storage.remote import compact_bucket

            res = compact_bucket(url, tables=table or None, date=day, include_today=include_today)
        else:
            check_data_dir(data_dir)
            res = compact_data_dir(data_dir, tables=table or None, date=day, include_today=include_today)
        out.print(f"compacted {res.partitions} partitions: {res.files_in} files -> {res.files_out}, {res.rows} rows",
                  fields={"partitions": res.partitions, "files_in": res.files_in, "files_out": res.files_out,
                          "rows": res.rows, "today_left": res.today_left})
        if res.today_left:  # a careless `compact` on a fresh recording would otherwise look broken
            out.print(f"left alone {res.today_left} partitions of today with files to merge ({res.today}, still "
                      "being written); --include-today compacts them too", fields={"today_left": res.today_left, "today": res.today})
        for s in res.skipped:  # left in place: one greppable line each
            out.print(f"warning: left alone {s.path}: {s.reason}", level="warning",
                      fields={"path": s.path, "reason": s.reason})

    run_guarded(go)


@app.command(epilog=EXAMPLES["replay"])
def replay(
    raw: list[Path] = typer.Argument(
        ..., help="raw log files or directories (e.g. data/raw), local or s3://bucket/prefix/raw/..."
    ),
    data_dir: Path = typer.Option(..., "--data-dir", help="where the re-derived tables go"),
    log_format: str = typer.Option("text", "--log-format", help="text, or json: one JSON object per stderr line"),
) -> None:
    """Re-derive every table from raw logs, through the same code path as live recording.

    Idempotent: rows the data dir already holds from these logs (a recording's own dir, an earlier
    replay) are not written again; logs of a run still recording into the data dir are skipped."""
    from rich.progress import Progress

    from recorder.replay import replay as replay_logs

    def go() -> None:
        import contextlib

        from recorder.app import console
        from recorder.storage.layout import work_dir
        from recorder.storage.objectstore import parse_s3

        console.configure(log_format)
        out = console.Printer()
        missing = [str(p) for p in raw if parse_s3(p) is None and not p.exists()]
        if missing:
            fail(f"no such raw log: {', '.join(missing)}")
        with contextlib.ExitStack() as stack:
            local = list(raw)
            if any(parse_s3(p) for p in raw):  # raw logs in a bucket: downloaded to a temp dir first
                from recorder.lake import refuse_remote
                from recorder.storage.remote import fetch_raw

                refuse_remote(data_dir)  # before any download
                tmp = Path(stack.enter_context(work_dir("replay")))
                local = [fetch_raw(url, tmp) if (url := parse_s3(p)) else p for p in raw]
            with Progress(console=err, transient=True, disable=console.json_logs() or not err.is_terminal) as bar:
                task = bar.add_task("replaying", total=None)
                res = replay_logs(
                    local, data_dir, progress=lambda n, total: bar.update(task, completed=n, total=total)
                )
        for why in res.skipped:
            out.print(f"skipped {why}", level="warning")
        out.print(
            f"replayed {res.files} raw log file(s), {res.records:,} records -> {res.rows:,} new rows in {data_dir} "
            "(rows already there are not written again)",
            fields={"files": res.files, "records": res.records, "rows": res.rows, "data_dir": data_dir},
        )

    run_guarded(go)


@app.command(epilog=EXAMPLES["status"])
def status(
    data_dir: Path = typer.Option(Path("data"), "--data-dir"),
    date: str | None = typer.Option(None, "--date", help="UTC date (default today)"),
) -> None:
    """Today's coverage (share of time with continuous valid data) and volume per stream."""
    from rich.table import Table
    from rich.text import Text

    from recorder.status import disk_usage, status_report

    def go() -> None:
        from recorder.checks import utc_date

        cols, rows, skipped = status_report(data_dir, utc_date(date))
        t = Table(*cols, title=Text(f"recorder status · {data_dir} · {date or 'today (UTC)'}"))
        for r in rows:  # Text: a detail like "[Errno 28]" is data, not rich markup
            t.add_row(*(Text("" if v is None else str(v)) for v in r))
        out = output.console()  # off a terminal: whole cells, however long a name (not `bitma…`)
        out.print(t)
        usage = ", ".join(f"{k} {v / 1e6:,.1f} MB" for k, v in disk_usage(data_dir).items())
        out.print(f"on disk: {usage or 'nothing yet'}")
        if skipped:  # plain lines: a path must stay one greppable line however narrow the terminal
            print(f"left out of every query ({len(skipped)} damaged files or stray directories):")
            for s in skipped:
                print(f"  {s.table}: {s.path}: {s.reason}")

    run_guarded(go)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
