"""Exchange klines -> the `exchange_candles` table: paginated, rate-limited, resumable, idempotent.

The venue says where its candle history is, how it pages and how fast it may be asked
(`Venue.klines`). The range is cut into fixed windows of one page of candles; a window whose
candles are all already stored is skipped (that is what makes an interrupted run resumable). Fetched rows are merged with the stored rows of the
dates they touch, one row per (interval, open_time), newest fetch wins, and those partitions are
replaced crash-safely: re-running over the same range never duplicates rows. Only closed candles
are fetched: the range ends at the start of the current interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from recorder import instruments, venues
from recorder.candles.intervals import INTERVALS, TimeLike, parse_time
from recorder.candles.state import STATE_DIR, duckdb_session, state_lock
from recorder.errors import RecorderError
from recorder.lake import refuse_remote
from recorder.model import SCHEMAS, ExchangeCandleRow
from recorder.storage.layout import partition_dir
from recorder.storage.sink import recover, replace_partition_files, rows_to_table, split_by_date
from recorder.transport import SendLimiter, get_json, new_session
from recorder.venues.contract import Instrument, Klines, VenueError

TABLE = "exchange_candles"
FLUSH_ROWS = 20_000  # rows buffered before the touched partitions are rewritten


@dataclass
class BackfillReport:
    """What a backfill did: windows fetched or skipped (already stored), rows fetched and stored."""

    exchange: str
    symbol: str
    interval: str
    start: datetime
    end: datetime
    windows: int = 0
    skipped: int = 0
    requests: int = 0
    rows_fetched: int = 0
    partitions: set[str] = field(default_factory=set)
    seconds: float = 0.0


def windows(start_s: int, end_s: int, step_s: int, page: int) -> list[tuple[int, int]]:
    """[start, end) cut into request windows of `page` candles, open times in seconds."""
    span = page * step_s
    return [(t, min(t + span, end_s)) for t in range(start_s, end_s, span)]


def klines_of(exchange: str, interval: str | None = None) -> Klines:
    """The venue's kline endpoint; RecorderError if it has none (or not at `interval`)."""
    venue = venues.venue(exchange)
    kl = venue.klines
    if kl is None:
        have = [n for n in venues.names() if venues.venue(n).klines is not None]
        raise RecorderError(f"{venue.name} serves no klines; backfill supports {', '.join(have)}")
    if interval is not None and interval not in kl.intervals:
        raise RecorderError(f"{venue.name} klines have no interval {interval!r}; use one of {', '.join(kl.intervals)}")
    return kl


async def fetch_klines(
    session: aiohttp.ClientSession,
    exchange: str,
    rest_url: str,
    inst: Instrument,
    interval: str,
    lo: int,
    hi: int,
) -> list[tuple]:
    """One request: the exchange's klines with open time in [lo, hi) seconds (at most one page).

    Rows are `exchange_candles` tuples (ts, recv_ts, interval, open_time, open, high, low, close,
    volume, quote_volume, trades), times in epoch microseconds, sorted by open time. Shared by
    `backfill` and the live feed (`recorder.candles.feed`).
    """
    kl = klines_of(exchange, interval)
    req = kl.request(inst, interval, lo, hi)
    doc = await get_json(session, rest_url.rstrip("/") + req.path, dict(req.params))
    try:
        candles = kl.parse(doc, inst, interval)
    except VenueError as exc:
        raise RecorderError(f"{exchange} {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise RecorderError(f"{exchange} klines: unexpected answer ({type(exc).__name__}: {exc})") from None
    recv_us = time.time_ns() // 1000
    step_s = INTERVALS[interval] // 1_000_000
    rows = []
    for k in candles:
        t = k.open_time_s
        if lo <= t < hi and t % step_s == 0:
            us = t * 1_000_000
            rows.append(
                ExchangeCandleRow(us, recv_us, interval, us, k.open, k.high, k.low, k.close, k.volume, k.quote_volume, k.trades)
            )
    rows.sort(key=lambda r: r[0])
    return rows


def backfill(
    data_dir: str | Path,
    exchange: str,
    symbol: str,
    interval: str = "1m",
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    rest_url: str | None = None,
    rate_limit: tuple[int, float] | None = None,
    progress: bool = False,
) -> BackfillReport:
    """Fetch the exchange's `interval` klines over [start, end) into `exchange_candles` (sync wrapper)."""
    return asyncio.run(
        backfill_async(data_dir, exchange, symbol, interval, start, end, rest_url, rate_limit, progress)
    )


async def backfill_async(
    data_dir: str | Path,
    exchange: str,
    symbol: str,
    interval: str = "1m",
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    rest_url: str | None = None,
    rate_limit: tuple[int, float] | None = None,
    progress: bool = False,
) -> BackfillReport:
    """Fetch the exchange's `interval` klines over [start, end) into `exchange_candles`.

    `start` defaults to one day before `end`, `end` to now; both are rounded down to the interval.
    """
    refuse_remote(data_dir)
    job = _Job.create(data_dir, exchange, symbol, interval, start, end, rest_url)
    limiter = SendLimiter(*(rate_limit or klines_of(job.exchange).rate_limit))
    started = time.perf_counter()
    async with new_session() as session:
        job.inst = await resolve_instrument(session, job.exchange, job.rest_url, job.symbol)
        with state_lock(job.root / TABLE / STATE_DIR), _bar(progress, len(job.windows)) as bar:
            recover(job.root / TABLE)
            await job.run(session, limiter, bar)
    job.report.seconds = time.perf_counter() - started
    return job.report


async def resolve_instrument(session: aiohttp.ClientSession, exchange: str, rest_url: str, symbol: str) -> Instrument:
    venue = venues.venue(exchange)
    listed = await instruments.fetch_instruments(session, venue, rest_url)
    return instruments.resolve([symbol], listed, venue.name)[0]


@contextlib.contextmanager
def _bar(enabled: bool, total: int) -> Iterator[Progress | None]:
    err = Console(stderr=True)
    if not enabled or not err.is_terminal:  # a log or a pipe gets the summary line, not a bar
        yield None
        return
    columns = [TextColumn("klines"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=False) as bar:
        bar.add_task("klines", total=total)
        yield bar


@dataclass
class _Job:
    root: Path
    exchange: str
    symbol: str
    interval: str
    rest_url: str
    windows: list[tuple[int, int]]
    report: BackfillReport
    inst: Instrument | None = None
    buffer: list[tuple] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        data_dir: str | Path,
        exchange: str,
        symbol: str,
        interval: str,
        start: TimeLike | None,
        end: TimeLike | None,
        rest_url: str | None,
    ) -> _Job:
        exchange = venues.canonical(exchange)
        kl = klines_of(exchange, interval)
        step_s = INTERVALS[interval] // 1_000_000
        now_s = int(time.time())
        end_s = int(parse_time(end).timestamp()) if end is not None else now_s
        end_s = min(end_s, now_s) // step_s * step_s  # closed candles only
        start_s = int(parse_time(start).timestamp()) if start is not None else end_s - 86_400
        start_s = start_s // step_s * step_s
        if start_s >= end_s:
            raise RecorderError("empty range: --start must be before --end (and before the current interval)")
        user = instruments.normalize(symbol)
        report = BackfillReport(
            exchange, user, interval, datetime.fromtimestamp(start_s, UTC), datetime.fromtimestamp(end_s, UTC)
        )
        url = (rest_url or venues.venue(exchange).endpoints.rest_url).rstrip("/")
        return cls(Path(data_dir), exchange, user, interval, url, windows(start_s, end_s, step_s, kl.page_limit), report)

    @property
    def step_s(self) -> int:
        return INTERVALS[self.interval] // 1_000_000

    async def run(self, session: aiohttp.ClientSession, limiter: SendLimiter, bar: Progress | None) -> None:
        stored = self.stored_open_times()
        try:
            for lo, hi in self.windows:
                self.report.windows += 1
                if all(t in stored for t in range(lo, hi, self.step_s)):
                    self.report.skipped += 1
                else:
                    await limiter.acquire()
                    self.buffer += await self.fetch(session, lo, hi)
                    if len(self.buffer) >= FLUSH_ROWS:
                        self.flush()
                if bar is not None:
                    bar.advance(bar.task_ids[0])
        finally:  # keep what was fetched, even on Ctrl-C or an error: the next run resumes from there
            self.flush()

    async def fetch(self, session: aiohttp.ClientSession, lo: int, hi: int) -> list[tuple]:
        """One page: rows with open time in [lo, hi), as `exchange_candles` row tuples."""
        self.report.requests += 1
        assert self.inst is not None
        rows = await fetch_klines(session, self.exchange, self.rest_url, self.inst, self.interval, lo, hi)
        self.report.rows_fetched += len(rows)
        return rows

    def stored_open_times(self) -> set[int]:
        """Open times (s) of this interval already in exchange_candles over the job's range."""
        if not self.windows:
            return set()
        base = self.root / TABLE / f"exchange={self.exchange}" / f"symbol={self.symbol}"
        files = sorted(str(p) for p in base.glob("date=*/*.parquet"))
        if not files:
            return set()
        lo, hi = self.windows[0][0], self.windows[-1][1]
        con = duckdb_session()
        try:
            rows = con.execute(
                "SELECT DISTINCT epoch(open_time)::BIGINT FROM read_parquet(?, hive_partitioning = false) "
                "WHERE interval = ? AND open_time >= to_timestamp(?) AND open_time < to_timestamp(?)",
                [files, self.interval, lo, hi],
            ).fetchall()
        finally:
            con.close()
        return {r[0] for r in rows}

    def flush(self) -> None:
        if not self.buffer:
            return
        fresh = rows_to_table(TABLE, self.buffer)
        self.buffer = []
        for day, part in split_by_date(fresh):
            merge_partition(partition_dir(self.root, TABLE, self.exchange, self.symbol, day), part)
            self.report.partitions.add(day)


def merge_partition(directory: Path, fresh: pa.Table) -> None:
    """Replace a partition's files by their rows plus `fresh`, one row per (interval, open_time)."""
    old = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))
    con = duckdb_session()
    try:
        con.register("fresh", fresh)
        source = "SELECT * FROM fresh"
        if old:
            source += " UNION ALL BY NAME SELECT * FROM read_parquet(?, hive_partitioning = false)"
        merged = con.sql(
            f"SELECT * FROM ({source}) "
            "QUALIFY row_number() OVER (PARTITION BY interval, open_time ORDER BY recv_ts DESC) = 1 "
            "ORDER BY interval, open_time",
            params=[[str(p) for p in old]] if old else None,
        ).to_arrow_table()
    finally:
        con.close()
    replace_partition_files(directory, merged.select(SCHEMAS[TABLE].names).cast(SCHEMAS[TABLE]), old)
