"""Candles from recorded trades: DuckDB aggregation, rebuilt incrementally per UTC date.

`build_candles` turns the `trades` table into the `candles` table. The expensive part (trades ->
OHLCV) is DuckDB SQL; 1s and 1m come from one scan of the trades, coarser intervals are rolled up
from finer candles. What depends on the `events` table (the `complete` flag, `fill` rows) is a
cheap pass over the candles, so a change of coverage never rescans trades.

Incremental state lives in `DATA_DIR/candles/.state/manifest.json` (a dot-dir the tables' glob
never matches): per stream and UTC date, the trade files (name, size, mtime) the candles were
built from, the candle files written, the intervals built and a key of the coverage inputs; plus
each trade file's footer facts and the stream's coverage, so that a re-run reads no footer and
no event twice. A date is then skipped, re-finished (coverage changed), extended (trade files
were only added: only the hours they touch are re-aggregated, from the files overlapping them)
or rebuilt from all its trades. Each touched date's candle partition is replaced crash-safely
(`replace_partition_files`), one file per date.

This module plans and publishes; the parts live beside it: `intervals` (widths, UTC date
arithmetic), `state` (manifest, lock, DuckDB session, trade files and their footers), `coverage`
(recorded ranges from `events`), `aggregate` (trades -> raw candles in DuckDB, roll-ups) and
`finish` (raw candles -> `candles` rows: fill and `complete`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recorder import venues
from recorder.candles.aggregate import (
    FINE,
    RAW_COLUMNS,
    Aggregator,
    chain,
    empty_raw,
    rollup_chain,
    rollup_sorted,
    split_days,
)
from recorder.candles.coverage import Coverage, event_rows, event_rows_many, make_coverage
from recorder.candles.finish import FinishInputs, finish_table, last_close, raw_from_candles
from recorder.candles.groups import (
    BLOCK_HOURS,
    REST,
    SECOND,
    blocks,
    clip,
    group_intervals,
    group_names,
    group_span,
    hour_group,
    split_groups,
)
from recorder.candles.intervals import (
    DEFAULT_INTERVALS,
    HOUR_US,
    INTERVALS,
    day_start,
    parse_intervals,
    to_us,
)
from recorder.candles.state import (
    STATE_DIR,
    FileFacts,
    Manifest,
    Sig,
    Stream,
    discover,
    duckdb_session,
    file_sig,
    parquet_files,
    repacked,
    state_lock,
)
from recorder.instruments import normalize
from recorder.lake import check_data_dir, scan_table
from recorder.model import SCHEMAS, TRADES
from recorder.storage.layout import partition_dir, unique_name
from recorder.storage.sink import DAY_US, recover, replace_partition_files, write_parquet_atomic

__all__ = [  # the builder, and names other modules have imported from here
    "DEFAULT_INTERVALS",
    "INTERVALS",
    "STATE_DIR",
    "Aggregator",
    "BuildReport",
    "build_candles",
    "duckdb_session",
    "parse_intervals",
    "state_lock",
]

DATES_PER_SCAN = 16  # dates aggregated by one DuckDB query (bounds memory on a first build)
WRITERS = max(1, min(4, os.cpu_count() or 1))  # partitions written in parallel
PARALLEL_ROWS = 50_000  # candle rows of one publish from which files are written by WRITERS threads
IO_WRITERS = 8  # threads for many small files (fsync-bound, not CPU-bound)
HOLD_STREAMS = 64  # streams whose small outputs are published together


@dataclass
class BuildReport:
    """What a build did, per (exchange, symbol, date): full / append / finish / remove."""

    actions: list[tuple[str, str, str, str]] = field(default_factory=list)
    skipped: int = 0
    rows: int = 0
    seconds: float = 0.0

    def count(self, action: str) -> int:
        return sum(1 for a in self.actions if a[3] == action)


# ---- the entry point --------------------------------------------------------------------------


def build_candles(
    data_dir: str | Path,
    exchange: str | None = None,
    symbol: str | None = None,
    intervals: Sequence[str] | str = DEFAULT_INTERVALS,
    fill: bool = False,
    on_date: Callable[[str, str, str, str], None] | None = None,
) -> BuildReport:
    """Build or update `candles` from `trades` for every matching stream; returns what was done.

    Idempotent: running it twice in a row does nothing the second time. `intervals` adds to the
    intervals already built for a date (all of them are kept fresh). `fill` writes zero-volume
    candles at the previous close for intervals without trades inside the recorded coverage.
    """
    started = time.perf_counter()
    root = check_data_dir(data_dir)  # missing or not a directory: one clear error naming it
    wanted = parse_intervals(intervals)
    exchange = venues.normalize(exchange) if exchange else None
    symbol = normalize(symbol) if symbol else None
    report = BuildReport()
    with state_lock(root / "candles" / STATE_DIR):
        recover(root / "candles")
        manifest = Manifest.load(root)
        con = duckdb_session()
        try:
            streams = discover(root, manifest, exchange, symbol)
            events = EventFiles.scan(root, con, manifest, streams, exchange, symbol)
            publisher = Publisher(hold=HOLD_STREAMS)
            builds = [
                StreamBuild(root, con, manifest, s, wanted, fill, report, on_date, events, publisher)
                for s in streams
            ]
            prefetch_small(builds)
            for build in builds:
                stream = build.stream
                try:
                    build.run()
                except (duckdb.IOException, FileNotFoundError):
                    # a trade file vanished under us (compaction replaced it): look again, once,
                    # after what is waiting is published (the retry plans from the files on disk)
                    publisher.flush()
                    [stream] = discover(root, manifest, stream.exchange, stream.symbol)
                    StreamBuild(root, con, manifest, stream, wanted, fill, report, on_date, events, publisher).run()
            publisher.flush()
        finally:
            con.close()
            manifest.save_pending()
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class EventFiles:
    """Every stream's `events` files from one listing, and the coverage rows of the streams whose
    event files changed since the manifest's copy, derived in one DuckDB pass: with hundreds of
    small streams, a listing and a query per stream cost more than all the work."""

    files: dict[str, list[Path]]
    rows: dict[str, tuple[list[list], int | None]]

    @classmethod
    def scan(
        cls,
        root: Path,
        con: duckdb.DuckDBPyConnection,
        manifest: Manifest,
        streams: list[Stream],
        exchange: str | None,
        symbol: str | None,
    ) -> EventFiles:
        files: dict[str, list[Path]] = {}
        # the files the `events` view reads: damaged ones are skipped with a warning
        for path in scan_table(root, "events", exchange, symbol).files:
            ex, sym = (path.parents[i].name.split("=", 1)[1] for i in (2, 1))
            files.setdefault(f"{ex}/{sym}", []).append(path)
        changed = [
            p
            for st in streams
            for cached in [manifest.streams.get(st.key, {}).get("coverage")]
            if cached is None or cached["events"] != event_sigs(files.get(st.key, []))
            for p in files.get(st.key, [])
        ]
        return cls(files, event_rows_many(con, changed) if changed else {})

    def of(self, key: str) -> tuple[list[Path], list[list], int | None]:
        rows, last_event = self.rows.get(key, ([], None))
        return self.files.get(key, []), rows, last_event


SMALL_STREAM_BYTES = 4 << 20  # trade files of full dates up to this size: aggregated with other streams'
BATCH_BYTES = 256 << 20  # bounds one batched scan


def prefetch_small(builds: list[StreamBuild]) -> None:
    """Aggregate the dates to be built in full of small streams together, a few DuckDB scans for
    all of them (grouped by their finest interval), instead of one query per stream: with hundreds
    of streams of a few trades each, per-query overhead was nearly all of a build's time."""
    groups: dict[str, list[tuple[StreamBuild, list[DatePlan]]]] = {}
    for build in builds:
        full = [p for p in build.all_plans() if p.action == "full"]
        size = sum(s[1] for p in full for s in build.stream.trades.get(p.day, []))
        if full and size <= SMALL_STREAM_BYTES:
            finest = chain([iv for iv in INTERVALS if any(iv in p.intervals for p in full)])[0]
            groups.setdefault(finest, []).append((build, full))
    for finest, members in groups.items():
        batch: list[tuple[StreamBuild, list[DatePlan]]] = []
        size = 0
        for member in [*members, None]:
            if member is not None:
                batch.append(member)
                size += sum(s[1] for p in member[1] for s in member[0].stream.trades.get(p.day, []))
            if len(batch) > 1 and (member is None or size > BATCH_BYTES):
                _prefetch(batch, finest)
                batch, size = [], 0


def _prefetch(batch: list[tuple[StreamBuild, list[DatePlan]]], finest: str) -> None:
    files: list[Path] = []
    owners: list[int] = []
    for i, (build, full) in enumerate(batch):
        paths = [f for p in full for f in build.trade_paths(p.day)]
        files += paths
        owners += [i] * len(paths)
    raw = batch[0][0].agg.by_owner(files, owners, finest)
    for i, (build, full) in enumerate(batch):
        days = split_days(raw[i]) if i in raw else {}
        build.prefetched = (finest, {p.day: days.get(p.day, empty_raw()) for p in full})


def event_sigs(files: list[Path]) -> list[list]:
    return [[f"{p.parent.name}/{s[0]}", s[1], s[2]] for p in files for s in [file_sig(p)]]


# ---- one stream: plan each date, aggregate, finish, publish -------------------------------------


@dataclass
class DatePlan:
    day: str
    action: str  # full | append | keep | remove | skip
    intervals: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)  # the candle files on disk


class StreamBuild:
    """Brings the candle partitions of one (exchange, symbol) up to date, date by date in order."""

    def __init__(
        self,
        root: Path,
        con: duckdb.DuckDBPyConnection,
        manifest: Manifest,
        stream: Stream,
        wanted: Sequence[str],
        fill: bool,
        report: BuildReport,
        on_date: Callable[[str, str, str, str], None] | None,
        events: EventFiles | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        self.root, self.manifest, self.stream = root, manifest, stream
        self.events = events
        self.publisher = publisher
        self.planned: dict[str, DatePlan] = {}
        # (finest interval, raw candles per day) of the dates to be built in full, from `prefetch_small`
        self.prefetched: tuple[str, dict[str, pa.Table]] | None = None
        self.wanted, self.fill, self.report, self.on_date = list(wanted), fill, report, on_date
        self.con, self.agg = con, Aggregator(con)
        self.state = manifest.stream(stream.key)
        self.coverage_changed = False
        self.relabelled = False  # dates whose trade files were only re-packed by compaction
        self.facts: dict[str, list] = {}  # "date/name" -> [size, mtime_ns, rows, min_ts, max_ts, max_recv]
        self.coverage = self.load_coverage()
        self.fill_days = self.coverage.fill_days() if fill else set()
        self.recv_us = to_us(datetime.now(UTC))

    def days(self) -> list[str]:
        return sorted(set(self.stream.trades) | set(self.state["dates"]) | self.fill_days)

    def all_plans(self) -> list[DatePlan]:
        """Every date's plan, made once (before any of the stream's dates is published)."""
        for day in self.days():
            if day not in self.planned:
                self.planned[day] = self.plan(day)
        return list(self.planned.values())

    def run(self) -> None:
        carry: float | None = None
        ordered = self.days()
        for i in range(0, len(ordered), DATES_PER_SCAN):
            plans = [self.planned.get(day) or self.plan(day) for day in ordered[i : i + DATES_PER_SCAN]]
            raw = self.aggregate(plans)
            outputs = []
            for plan in plans:
                carry, out = self.prepare(plan, raw.pop(plan.day, None), carry)
                if out is not None:
                    outputs.append(out)
            self.publish(outputs)
        present = {f"{day}/{s[0]}" for day, sigs in self.stream.trades.items() for s in sigs}
        facts = {k: v for k, v in {**self.state["files"], **self.facts}.items() if k in present}
        if facts != self.state["files"] or self.coverage_changed or self.relabelled:  # footers, coverage
            self.state["files"] = facts
            self.manifest.save(soon=True)

    # -- what the footers and the events say

    def file_facts(self, day: str, sig: Sig) -> FileFacts:
        """A trade file's footer facts, read once and then remembered in the manifest."""
        key = f"{day}/{sig[0]}"
        known = self.facts.get(key) or self.state["files"].get(key)
        if known is None or known[:2] != [sig[1], sig[2]]:
            f = FileFacts.read(self.trade_paths(day, [sig])[0])
            known = [sig[1], sig[2], f.rows, *(f.ts or (None, None)), f.recv_max]
        self.facts[key] = known
        rows, lo, hi, recv = known[2:]
        return FileFacts(rows, None if lo is None else (lo, hi), recv)

    def day_facts(self, day: str) -> list[FileFacts]:
        return [self.file_facts(day, sig) for sig in self.stream.trades.get(day, [])]

    def load_coverage(self) -> Coverage:
        """Coverage rows are re-derived only when the stream's event files changed."""
        events = self.events or EventFiles.scan(
            self.root, self.con, self.manifest, [self.stream], self.stream.exchange, self.stream.symbol
        )
        files, rows, last_event = events.of(self.stream.key)
        sigs = event_sigs(files)
        cached = self.state["coverage"]
        self.coverage_changed = cached is None or cached["events"] != sigs
        if self.coverage_changed:
            if files and not rows and last_event is None:  # changed after the batched pass
                rows, last_event = event_rows(self.con, files)
            cached = self.state["coverage"] = {"events": sigs, "rows": rows, "last_event": last_event}
        days = sorted(self.stream.trades)
        first = [f.ts[0] for f in self.day_facts(days[0]) if f.ts] if days else []
        tail = self.day_facts(days[-1]) if days else []
        last = [f.ts[1] for f in tail if f.ts]
        recv = [f.recv_max for f in tail if f.recv_max is not None]
        return make_coverage(
            cached["rows"],
            cached["last_event"],
            min(first, default=None),
            max(last, default=None),
            max(recv, default=None),
        )

    # -- planning

    def candle_dir(self, day: str) -> Path:
        return partition_dir(self.root, "candles", self.stream.exchange, self.stream.symbol, day)

    def trade_paths(self, day: str, sigs: Iterable[Sig] | None = None) -> list[Path]:
        directory = partition_dir(self.root, TRADES, self.stream.exchange, self.stream.symbol, day)
        return [directory / s[0] for s in (self.stream.trades.get(day, []) if sigs is None else sigs)]

    def plan(self, day: str) -> DatePlan:
        entry = self.manifest.entry(self.stream.key, day)
        trades = self.stream.trades.get(day, [])
        present = [p.name for p in parquet_files(self.candle_dir(day))]
        if not trades and day not in self.fill_days:
            return DatePlan(day, "remove" if entry or present else "skip", present=present)
        built = entry["intervals"] if entry else []
        intervals = [iv for iv in INTERVALS if iv in self.wanted or iv in built]
        if entry is None or sorted(entry["candles"]) != present or built != intervals:
            return DatePlan(day, "full", intervals, present)
        old = {tuple(s) for s in entry["trades"]}
        new = set(trades)
        if old != new and repacked(old, trades, self.trade_paths(day)):
            # `recorder compact` merged files this date was built from, and nothing else: same rows
            entry["trades"] = [list(s) for s in trades]
            self.relabelled = True
            old = new
        if old == new:
            return DatePlan(day, "keep", intervals, present)
        # an extended date's 4h/1d are rolled up from a stored fine interval other than 1s
        fine = [iv for iv in intervals if iv in FINE]
        rolls = all(iv in FINE for iv in intervals) or any(iv != SECOND for iv in fine)
        if old and old < new and fine and rolls:
            return DatePlan(day, "append", intervals, present)
        return DatePlan(day, "full", intervals, present)

    # -- aggregation

    def aggregate(self, plans: list[DatePlan]) -> dict[str, dict[str, dict[str, pa.Table]]]:
        """New raw candles per date and group: full dates in one query, appends each alone."""
        out: dict[str, dict[str, dict[str, pa.Table]]] = {}
        full = [p for p in plans if p.action == "full"]
        if full:
            intervals = [iv for iv in INTERVALS if any(iv in p.intervals for p in full)]
            if self.prefetched is not None and all(p.day in self.prefetched[1] for p in full):
                finest, days = self.prefetched  # finer than (or as fine as) this chunk needs
                made = {p.day: rollup_chain(days[p.day], finest, chain(intervals)) for p in full}
                by_iv = {iv: {day: m[iv] for day, m in made.items()} for iv in intervals}
            else:
                files = [f for p in full for f in self.trade_paths(p.day)]
                rows = max((f.rows for p in full for f in self.day_facts(p.day)), default=1)
                by_iv = {iv: split_days(t) for iv, t in self.agg.from_trades(files, intervals, rows).items()}
            for p in full:
                p.intervals = intervals
                raw = {iv: by_iv[iv].get(p.day, empty_raw()) for iv in intervals}
                out[p.day] = split_groups(p.day, intervals, raw)
        for p in plans:
            if p.action == "append":
                groups = self.append(p)
                if groups is None:
                    p.action = "full"
                    rows = max((f.rows for f in self.day_facts(p.day)), default=1)
                    raw = self.agg.from_trades(self.trade_paths(p.day), p.intervals, rows)
                    groups = split_groups(p.day, p.intervals, raw)
                out[p.day] = groups
        return out

    def append(self, plan: DatePlan) -> dict[str, dict[str, pa.Table]] | None:
        """Re-aggregate only the hours the added trade files touch; None when that is not possible.

        Returns the groups whose raw candles changed: the touched 1s hours and `rest` (all of the
        date's other intervals, merged from its stored file and the fresh hours)."""
        entry = self.manifest.entry(self.stream.key, plan.day)
        old = {tuple(s) for s in entry["trades"]}
        sigs = self.stream.trades[plan.day]
        facts = self.day_facts(plan.day)
        added = [f for s, f in zip(sigs, facts, strict=True) if s not in old]
        if any(f.ts is None for f in facts) or not added:
            return None
        start = day_start(plan.day)
        lo = max(start, min(f.ts[0] for f in added) // HOUR_US * HOUR_US)
        hi = min(start + DAY_US, (max(f.ts[1] for f in added) // HOUR_US + 1) * HOUR_US)
        if lo >= hi:
            return None
        # only files with trades in the touched hours are read (kept in name order for the tie-break)
        overlap = [(s, f) for s, f in zip(sigs, facts, strict=True) if f.ts[0] < hi and f.ts[1] >= lo]
        fine = [iv for iv in plan.intervals if iv in FINE]
        paths = self.trade_paths(plan.day, [s for s, _ in overlap])
        # one DuckDB scan for the finest interval; the few rows above it are rolled up in numpy
        finest = self.agg.from_trades(paths, fine[:1], max(f.rows for _, f in overlap), (lo, hi))[fine[0]]
        merged = rollup_chain(finest, fine[0], fine)
        hours = blocks(((lo - start) // HOUR_US, (hi - start) // HOUR_US))
        if SECOND in fine:  # the touched 1s blocks: their stored rows outside the touched hours stay
            stored = [
                self.read_group(plan.day, entry["groups"].get(hour_group(h)))
                for h in range(*hours, BLOCK_HOURS)
            ]
            merged[SECOND] = merge(stored, SECOND, merged[SECOND], lo, hi)
        rest = [iv for iv in plan.intervals if iv != SECOND]
        if rest:
            existing = [self.read_group(plan.day, entry["groups"].get(REST))]
            for iv in fine:
                if iv != SECOND:
                    merged[iv] = merge(existing, iv, merged[iv], lo, hi)
            # 4h, 1d: from the whole date's 1h, or the coarsest fine interval but 1s (`plan` made sure)
            source = [iv for iv in fine if iv != SECOND][-1]
            for iv in rest:
                if iv not in FINE:
                    merged[iv] = rollup_sorted(merged[source], INTERVALS[iv])
        return split_groups(plan.day, plan.intervals, merged, hours)

    def read_group(self, day: str, group: list | None) -> dict[str, pa.Table]:
        """The raw candles a stored group file holds (none without a file)."""
        if group is None or group[0] is None:
            return {}
        columns = ["interval", "open_time", *RAW_COLUMNS[1:]]
        schema = pa.schema([SCHEMAS["candles"].field(c) for c in columns])
        return raw_from_candles(
            pq.read_table(self.candle_dir(day) / group[0], columns=columns, schema=schema)
        )

    # -- finishing and publishing

    def prepare(
        self, plan: DatePlan, fresh: dict[str, dict[str, pa.Table]] | None, carry: float | None
    ) -> tuple[float | None, Output | None]:
        """The date's changed groups if anything changed, and the close carried into the next date.

        Groups with new raw candles are finished from them; the others keep their file unless their
        finishing inputs changed (coverage, or the close carried into them), then they are
        re-finished from their stored rows. A stored group is never read otherwise."""
        if plan.action == "skip":
            return carry, None
        if plan.action == "remove":
            return carry, Output(plan.day, "remove", extras=list(plan.present))
        spans, fill_spans = self.coverage.clip(plan.day)
        fills = fill_spans if self.fill else []
        has_events = self.coverage.has_events
        day_key = FinishInputs(spans, has_events, fills, carry, plan.intervals).key()
        entry = self.manifest.entry(self.stream.key, plan.day)
        action = plan.action
        if action == "keep":
            if entry["finish"] == day_key:
                self.report.skipped += 1
                return (carry if entry["last_close"] is None else entry["last_close"]), None
            action = "finish"
        previous: dict[str, list] = entry.get("groups", {}) if entry else {}
        reusable = previous if action != "full" else {}
        fresh = fresh or {}
        out = Output(plan.day, action)
        running, hours_close = carry, None  # the close carried into the next 1s hour
        for name in group_names(plan.intervals):
            span = group_span(plan.day, name)
            inputs = FinishInputs(
                clip(spans, span),
                has_events,
                clip(fills, span),
                carry if name == REST else running,
                group_intervals(name, plan.intervals),
            )
            key = inputs.key()
            old = reusable.get(name)
            if name in fresh or old is None or old[1] != key:
                raw = fresh[name] if name in fresh else self.read_group(plan.day, old)
                out.writes[name] = finish_table(raw, inputs, self.recv_us)
                out.groups[name] = [None, key, last_close(raw)]
            else:
                out.groups[name] = old
            if name != REST and out.groups[name][2] is not None:
                running = hours_close = out.groups[name][2]
        close = out.groups[REST][2] if REST in out.groups else hours_close
        present = set(plan.present)
        out.old = {n: previous[n][0] for n in out.writes if (previous.get(n) or [None])[0] in present}
        kept = {g[0] for n, g in out.groups.items() if n not in out.writes and g[0]}
        out.extras = sorted(present - set(out.old.values()) - kept)
        out.entry = {
            "trades": [list(s) for s in self.stream.trades.get(plan.day, [])],
            "intervals": plan.intervals,
            "finish": day_key,
            "last_close": close,
        }
        return (carry if close is None else close), out

    def publish(self, outputs: list[Output]) -> None:
        """Replace the changed group files, then the manifest (through the build's `Publisher`,
        which may hold them back to write them together with other streams')."""
        if self.publisher is not None:
            self.publisher.add(self, outputs)
        else:
            Publisher().add(self, outputs).flush()

    def jobs(self, outputs: list[Output]) -> tuple[list[Job], list[Job]]:
        """The file replacements of `outputs`: those that must go first, and the others.

        Each group file is replaced on its own by `replace_partition_files`, crash-safely; groups
        never share a candle, so no mix of replaced and not yet replaced groups holds a row twice.
        Files the manifest does not know (an earlier layout, a crashed run's) go with the first
        write of their date, before any other group of it is written. A crash before the manifest
        is saved leaves files the manifest does not list: the next run rebuilds that date in full.
        """
        first: list[Job] = []
        rest: list[Job] = []
        for out in outputs:
            directory = self.candle_dir(out.day)
            extras = [directory / name for name in out.extras]
            jobs = [
                Job(out, directory, name, tbl, [directory / out.old[name]] if name in out.old else [])
                for name, tbl in out.writes.items()
            ]
            if extras:
                if jobs:
                    jobs[0].old += extras
                else:
                    jobs = [Job(out, directory, None, SCHEMAS["candles"].empty_table(), extras)]
                first.append(jobs.pop(0))
            rest += [j for j in jobs if j.table.num_rows or j.old]
        return first, rest

    def record(self, outputs: list[Output]) -> None:
        """After the files of `outputs` are replaced: the manifest and the report."""
        updates: dict[str, dict | None] = {}
        for out in outputs:
            if out.entry is not None:
                out.entry["groups"] = out.groups
                out.entry["candles"] = sorted(g[0] for g in out.groups.values() if g[0])
                self.report.rows += sum(t.num_rows for t in out.writes.values())
            updates[out.day] = out.entry
            self.report.actions.append((self.stream.exchange, self.stream.symbol, out.day, out.action))
            if self.on_date:
                self.on_date(self.stream.exchange, self.stream.symbol, out.day, out.action)
        self.manifest.update(self.stream.key, updates)


class Publisher:
    """Writes the changed candle files of several streams together: files in parallel threads
    (Parquet encoding and fsync release the GIL; with hundreds of small streams, one fsync after
    another was most of a build), then each stream's manifest entries. Streams never share a
    directory, so holding one stream's files back changes nothing for another."""

    def __init__(self, hold: int = 1) -> None:
        self.hold = hold  # publish once this many streams' outputs are waiting
        self.waiting: list[tuple[StreamBuild, list[Output]]] = []

    def add(self, build: StreamBuild, outputs: list[Output]) -> Publisher:
        if outputs:
            self.waiting.append((build, outputs))
        if len(self.waiting) >= self.hold:
            self.flush()
        return self

    def flush(self) -> None:
        waiting, self.waiting = self.waiting, []
        phases: tuple[list[Job], list[Job]] = ([], [])
        for build, outputs in waiting:
            first, rest = build.jobs(outputs)
            phases[0].extend(first)
            phases[1].extend(rest)
        for phase in phases:
            rows = sum(j.table.num_rows for j in phase)
            if len(phase) > 1 and (rows > PARALLEL_ROWS or len(waiting) > 1):
                with ThreadPoolExecutor(max_workers=WRITERS if rows > PARALLEL_ROWS else IO_WRITERS) as pool:
                    list(pool.map(Job.run, phase))
            else:  # threads would cost more than they save
                for job in phase:
                    job.run()
        for build, outputs in waiting:
            build.record(outputs)


def merge(stored: list[dict[str, pa.Table]], interval: str, fresh: pa.Table, lo: int, hi: int) -> pa.Table:
    """Stored raw candles of `interval` outside [lo, hi) with the fresh ones inside, sorted by `b`."""
    kept = [g[interval] for g in stored if interval in g]
    if not kept:
        return fresh
    old = pa.concat_tables(kept)
    b = old.column("b")
    old = old.filter(pc.or_(pc.less(b, lo), pc.greater_equal(b, hi)))
    return pa.concat_tables([old, fresh]).sort_by("b")


@dataclass
class Job:
    """One group file of a date to replace (name None: only remove `old`)."""

    out: Output
    directory: Path
    name: str | None
    table: pa.Table
    old: list[Path]

    def run(self) -> None:
        if self.old:
            path = replace_partition_files(self.directory, self.table, self.old)
        else:  # nothing to replace: a crash leaves at worst a file the manifest does not list, which
            # the next build removes (see `publish`), so the marker and its two fsyncs are not needed
            path = write_parquet_atomic(self.table, self.directory / unique_name()) if self.table.num_rows else None
        if self.name is not None:
            self.out.groups[self.name][0] = path.name if path else None


@dataclass
class Output:
    """A date's changed groups: new rows per group (`writes`), every group's manifest record
    [file, finish key, last close] (`groups`), the stored files they replace (`old`), files to
    remove besides (`extras`) and the date's manifest entry (None: the date is removed)."""

    day: str
    action: str
    writes: dict[str, pa.Table] = field(default_factory=dict)
    groups: dict[str, list] = field(default_factory=dict)
    old: dict[str, str] = field(default_factory=dict)
    extras: list[str] = field(default_factory=list)
    entry: dict | None = None
