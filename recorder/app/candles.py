"""`recorder candles ...`: the candles typer sub-app, thin commands over build_candles, backfill,
verify and the terminal watch.

In app/, not candles/: it uses the process wiring (the one error guard, the terminal watch), and the
library package `recorder.candles` never imports `recorder.app`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from recorder import checks, output, venues
from recorder.app.guard import DEBUG_HELP, examples, run_guarded
from recorder.candles.intervals import DEFAULT_INTERVALS, INTERVALS, VERIFY_ATOL, VERIFY_RTOL, parse_intervals

if TYPE_CHECKING:
    from recorder.candles.verify import VerifyResult

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Candles: build them from recorded trades, backfill the exchange's own, verify one against the other, "
    "watch them live.",
    epilog=examples("recorder candles build", "recorder candles watch bitmart BTC-USDT") + "\n\n" + DEBUG_HELP,
)
out = output.console()  # off a terminal: whole cells and lines

DATA_DIR = typer.Option(Path("data"), "--data-dir", help="the recorder's data dir")
EXCHANGES = f"one of: {', '.join(venues.names())}"
KLINE_INTERVALS = "; ".join(
    f"{n}: {' '.join(v.klines.intervals)}" for n in venues.names() if (v := venues.venue(n)).klines is not None
)
# The candles library raises ValueError for a bad interval, count or time: bad input, not a bug.
BAD_INPUT = (ValueError,)


@app.command(epilog=examples("recorder candles build --data-dir data --interval 1m,1h"))
def build(
    data_dir: Path = DATA_DIR,
    exchange: str | None = typer.Option(None, "--exchange", help="only this exchange"),
    symbol: str | None = typer.Option(None, "--symbol", help="only this symbol (BASE-QUOTE)"),
    interval: str = typer.Option(",".join(DEFAULT_INTERVALS), "--interval", help="comma list of intervals"),
    fill: bool = typer.Option(False, "--fill", help="write flat zero-volume candles where no trade happened"),
) -> None:
    """Aggregate recorded trades into the `candles` table (incremental: only changed dates are redone)."""
    from recorder.candles.build import build_candles
    from recorder.storage.objectstore import parse_s3

    def go():
        ex = exchange and venues.canonical(exchange)
        if (url := parse_s3(data_dir)) is not None:  # a bucket: built in a temp mirror, then published
            from recorder.storage.remote import build_candles_bucket

            return build_candles_bucket(url, ex, symbol, parse_intervals(interval), fill=fill)
        return build_candles(data_dir, ex, symbol, parse_intervals(interval), fill=fill)

    report = run_guarded(go, BAD_INPUT)
    counts = Counter(a[3] for a in report.actions)
    done = ", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "nothing to do"
    out.print(
        f"candles: {done}; {report.skipped} date(s) unchanged; {report.rows:,} rows written "
        f"in {report.seconds:.2f} s",
        highlight=False,
    )


@app.command(epilog=examples("recorder candles backfill bitmart BTC-USDT --interval 1m"))
def backfill(
    exchange: str = typer.Argument(..., help=EXCHANGES),
    symbol: str = typer.Argument(..., help="BASE-QUOTE, e.g. BTC-USDT"),
    interval: str = typer.Option("1m", "--interval", help=f"one of the venue's kline intervals ({KLINE_INTERVALS})"),
    start: str | None = typer.Option(
        None, "--start", help="ISO time or epoch seconds (default: end - 1 day)"
    ),
    end: str | None = typer.Option(None, "--end", help="ISO time or epoch seconds (default: now)"),
    data_dir: Path = DATA_DIR,
    rest_url: str | None = typer.Option(None, "--rest-url", help="override the REST base URL"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Fetch the exchange's own klines into `exchange_candles` (resumable; re-runs add no duplicates)."""
    from recorder.candles.backfill import backfill as run_backfill

    report = run_guarded(
        lambda: run_backfill(data_dir, exchange, symbol, interval, start, end, rest_url, progress=not quiet),
        BAD_INPUT,
    )
    out.print(
        f"exchange_candles: {report.rows_fetched:,} {interval} klines of {report.symbol} "
        f"from {report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} UTC; "
        f"{report.requests} request(s), {report.skipped}/{report.windows} window(s) already stored; "
        f"{report.seconds:.1f} s",
        highlight=False,
    )


@app.command(epilog=examples("recorder candles verify bitmart BTC-USDT --interval 1m"))
def verify(
    exchange: str = typer.Argument(..., help=EXCHANGES),
    symbol: str = typer.Argument(..., help="BASE-QUOTE"),
    interval: str = typer.Option("1m", "--interval"),
    start: str | None = typer.Option(None, "--start", help="default: first stored exchange candle"),
    end: str | None = typer.Option(None, "--end", help="default: after the last stored exchange candle"),
    data_dir: Path = DATA_DIR,
    rtol: float = typer.Option(VERIFY_RTOL, "--rtol", help="relative tolerance for float fields"),
    atol: float = typer.Option(VERIFY_ATOL, "--atol", help="absolute tolerance for float fields"),
    show: int = typer.Option(20, "--show", help="list at most this many mismatching fields"),
) -> None:
    """Compare built candles with exchange candles; exit 0 only if every complete built candle matches."""
    from recorder.candles.verify import verify as run_verify

    result = run_guarded(
        lambda: run_verify(data_dir, venues.canonical(exchange), symbol, interval, start, end, rtol, atol), BAD_INPUT
    )
    out.print(_summary(result))
    if result.mismatches and show > 0:
        out.print(_mismatch_table(result, show))
    verdict = "[green]OK[/]" if result.ok else "[red]FAILED[/]"
    if result.compared == 0:
        verdict += " (no complete built candle overlaps the exchange candles: build and backfill first)"
    out.print(f"verify {result.exchange} {result.symbol} {interval}: {verdict}")
    raise typer.Exit(0 if result.ok else 1)


@app.command(
    epilog=examples(
        "recorder candles watch bitmart BTC-USDT --sim --interval 1s",
        "recorder candles watch bitmart BTC-USDT --log-format json | jq -c 'select(.closed)'",
    )
)
def watch(
    exchange: str = typer.Argument(..., help=EXCHANGES),
    symbol: str = typer.Argument(..., help="BASE-QUOTE, e.g. BTC-USDT"),
    interval: str = typer.Option("1m", "--interval", help=" ".join(INTERVALS)),
    rows: int = typer.Option(15, "--rows", help="candles shown"),
    max_candles: int = typer.Option(500, "--max-candles", help="candles kept (and backfilled on start)"),
    grace: float = typer.Option(
        2.0, "--grace", help="seconds after a bucket's end before it closes without a trade"
    ),
    duration: float | None = typer.Option(None, "--duration", help="stop after this many seconds"),
    sim: bool = typer.Option(False, "--sim", help="watch the built-in simulator on 127.0.0.1"),
    sim_rate: float = typer.Option(50.0, "--sim-rate", help="with --sim: market events per second"),
    ws_url: str | None = typer.Option(None, "--ws-url", help="override the public websocket URL"),
    rest_url: str | None = typer.Option(None, "--rest-url", help="override the REST base URL"),
    log_format: str = typer.Option(
        "text", "--log-format", help="text, or json: one JSON object per candle on stdout, per message on stderr"
    ),
) -> None:
    """Live candles in the terminal: history from the exchange's klines, then live trades (Ctrl-C exits).

    Off a terminal (a pipe, a file, a service) one line per candle as it closes instead of the table;
    with --log-format json that line is a JSON object (terminal or not)."""
    sim_options = {"rate": sim_rate} if sim else None

    def go() -> None:
        from recorder.app import console
        from recorder.app.watch import watch as run_watch

        console.configure(log_format)

        checks.positive(duration, "--duration")  # 0 or less would stop before the first candle
        checks.positive(sim_rate, "--sim-rate", "events per second")
        asyncio.run(
            run_watch(exchange, symbol, interval, ws_url, rest_url, sim_options, duration, rows, max_candles, grace)
        )

    run_guarded(go, BAD_INPUT, interrupted=0)  # Ctrl-C is how a watch ends, even at start-up


def _summary(r: VerifyResult) -> Table:
    span = f"{r.start:%Y-%m-%d %H:%M} .. {r.end:%Y-%m-%d %H:%M} UTC" if r.start and r.end else "no data"
    table = Table(title=f"{r.exchange} {r.symbol} {r.interval} candles, {span}", show_header=True)
    table.add_column("category")
    table.add_column("candles", justify="right")
    rows = [
        ("complete, match", r.matched, "green"),
        ("complete, mismatch", r.mismatched, "red"),
        ("complete, missing on the exchange", r.missing_exchange, "red"),
        ("exchange only, inside recorded coverage", r.missed_in_coverage, "red"),
        ("exchange only, outside coverage", r.missing_built - r.missed_in_coverage, "yellow"),
        ("incomplete (recording gap), match", r.incomplete_matched, "dim"),
        ("incomplete (recording gap), mismatch", r.incomplete_mismatched, "yellow"),
        ("empty on one side", r.empty_both, "dim"),
    ]
    for label, count, style in rows:
        table.add_row(label, f"{count:,}", style=style if count else "dim")
    return table


def _mismatch_table(r: VerifyResult, limit: int) -> Table:
    table = Table(title=f"mismatches (first {min(limit, len(r.mismatches))} of {len(r.mismatches)})")
    for name in ("open time (UTC)", "field", "built", "exchange", "difference", "complete"):
        table.add_column(name, justify="right" if name in ("built", "exchange", "difference") else "left")
    for m in r.mismatches[:limit]:
        table.add_row(
            f"{m.open_time:%Y-%m-%d %H:%M:%S}",
            m.field,
            f"{m.built:.10g}",
            f"{m.exchange:.10g}",
            f"{m.difference:+.3g}",
            "yes" if m.complete else "no",
        )
    return table
