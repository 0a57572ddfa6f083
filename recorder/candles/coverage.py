"""Which time ranges of a stream's trades were recorded, from its `events` (as the `coverage` view)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from recorder.candles.intervals import Span, day_name, day_start
from recorder.candles.state import sql_str
from recorder.coverage import coverage_sql
from recorder.model import TRADES
from recorder.query import files_select
from recorder.storage.sink import DAY_US


@dataclass
class Coverage:
    """Recorded ranges of a stream's trades and the ranges `fill` may fill.

    `spans` come from the `coverage` view (channel 'trades'); an interval still open (no stop
    event: a running or crashed recorder) ends at the last sign of life (the latest event or
    trade receive time). Without any events, nothing is known complete and fill spans first to
    last trade.
    """

    spans: list[Span]
    has_events: bool
    fill_spans: list[Span]

    def clip(self, day: str) -> tuple[list[Span], list[Span]]:
        lo = day_start(day)
        hi = lo + DAY_US
        cut = [(max(s, lo), min(e, hi)) for s, e in self.spans if s < hi and e > lo]
        fills = [(max(s, lo), min(e, hi)) for s, e in self.fill_spans if s < hi and e > lo]
        return cut, fills

    def fill_days(self) -> set[str]:
        days: set[str] = set()
        for s, e in self.fill_spans:
            days.update(day_name(d * DAY_US) for d in range(s // DAY_US, (e - 1) // DAY_US + 1))
        return days


def event_rows(con: duckdb.DuckDBPyConnection, files: list[Path]) -> tuple[list[list], int | None]:
    """Coverage rows [start, end or None] of one stream's trades channel and the latest event time."""
    found = event_rows_many(con, files)
    return next(iter(found.values())) if found else ([], None)


def event_rows_many(
    con: duckdb.DuckDBPyConnection, files: list[Path]
) -> dict[str, tuple[list[list], int | None]]:
    """Coverage rows and latest event time of the trades channel of every stream in `files`, in one
    pass, keyed "exchange/symbol" (a stream whose files hold no trades-channel event is absent):
    per-query overhead, not work, dominates many small streams."""
    # files written before `events.cause` existed read it as NULL (the view's legacy branch)
    trades_events = f"{files_select('events', files)} WHERE channel = {sql_str(TRADES)}"
    con.execute(f"CREATE OR REPLACE TEMP VIEW events AS {trades_events}")
    con.execute(coverage_sql(view="TEMP VIEW"))
    out: dict[str, tuple[list[list], int | None]] = {}
    for ex, sym, last in con.sql("SELECT exchange, symbol, epoch_us(max(ts)) FROM events GROUP BY ALL").fetchall():
        out[f"{ex}/{sym}"] = ([], last)
    rows = con.sql(
        "SELECT exchange, symbol, epoch_us(start_ts), epoch_us(end_ts) FROM coverage "
        "ORDER BY exchange, symbol, start_ts"
    ).fetchall()
    for ex, sym, start, end in rows:
        out[f"{ex}/{sym}"][0].append([start, end])
    return out


def make_coverage(
    rows: list[list], last_event: int | None, first_ts: int | None, last_ts: int | None, last_recv: int | None
) -> Coverage:
    """Close an open last interval at the last sign of life; without events, fill first to last trade."""
    spans = [(s, e) for s, e in rows if e is not None and e > s]
    if rows and rows[-1][1] is None:
        start = rows[-1][0]
        end = max([start, *(v for v in (last_event, last_recv) if v is not None)])
        spans += [(start, end)] if end > start else []
    if last_event is not None:
        return Coverage(spans, True, spans)
    fill = [(first_ts, last_ts + 1)] if first_ts is not None and last_ts is not None else []
    return Coverage([], False, fill)
