"""Crash recovery: finish what a killed recorder left behind, from its raw log, exactly once.

A live run holds a lock file for its lifetime and writes a `.done` marker after its last flush.
Every Parquet file it publishes records in its footer how far into the raw log of its connection
the rows go (`recorder.sources`: run, connection, part, records). A run whose lock is free and that
has no `.done` marker died: its raw log is replayed through the live code path, and rows of each
(table, symbol, date) are kept only past the position already published for it. So every message
that reached the raw log ends up in the tables, and none twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from recorder.replay import ConnectionReplay, Position, group_logs, log_identity
from recorder.storage.checkpoint import read_sources, run_is_alive, runs_dir, sources_metadata, try_lock
from recorder.storage.layout import partition_dir, run_id
from recorder.storage.rawlog import list_logs, read_header
from recorder.storage.sink import DAY_US, ParquetSink, recover

LIVE_TABLES = ("trades", "book_updates", "book_snapshots", "events")


@dataclass
class RecoveryResult:
    runs: int = 0
    rows: int = 0
    files_cleaned: int = 0
    details: list[str] = field(default_factory=list)


def recover_data_dir(data_dir: str | Path, progress: Callable[[str], None] | None = None) -> RecoveryResult:
    """Clean temp leftovers, then recover every dead run's unpublished rows from its raw log."""
    data_dir = Path(data_dir)
    res = RecoveryResult(files_cleaned=recover(data_dir, alive=lambda run: run_is_alive(data_dir, run)))
    logs = list_logs([data_dir / "raw"]) if (data_dir / "raw").exists() else []
    by_run: dict[str, list[Path]] = defaultdict(list)
    for p in logs:
        with contextlib.suppress(ValueError):
            by_run[log_identity(p)[0]].append(p)
    rd = runs_dir(data_dir)
    rd.mkdir(parents=True, exist_ok=True)
    for run, files in sorted(by_run.items()):
        if run == run_id() or (rd / f"{run}.done").exists():
            continue
        lock = rd / f"{run}.lock"
        fd = try_lock(lock)
        if fd is None:
            continue  # alive: another recorder is writing this run right now
        try:
            if progress:
                progress(f"recovering crashed run {run} from {len(files)} raw log file(s)")
            rows = recover_run(data_dir, run, files)
            (rd / f"{run}.done").write_bytes(b"")
            res.runs += 1
            res.rows += rows
            res.details.append(f"{run}: {rows} rows re-derived")
        finally:
            lock.unlink(missing_ok=True)
            os.close(fd)
    for lock in rd.glob("*.lock"):  # dead runs without raw logs (`--no-raw`): nothing to recover
        if lock.stem not in by_run and lock.stem != run_id() and (fd := try_lock(lock)) is not None:
            lock.unlink(missing_ok=True)
            os.close(fd)
    return res


def recover_run(data_dir: Path, run: str, files: list[Path]) -> int:
    sink = ParquetSink(data_dir)
    rows = 0
    for parts in group_logs(files):
        header = read_header(parts[0])
        if header is None:
            continue  # killed before the header reached the disk: nothing was recorded
        exchange, conn = header["exchange"], header["connection"]
        users = sorted({t[2] for t in header["topics"]})
        published = published_positions(data_dir, exchange, users, run, conn)
        # Keys an earlier, interrupted recovery already wrote (crash event included) are dropped
        # after the crash event is made; live-published keys before it.
        live = sorted(((k, pos) for k, (pos, rec) in published.items() if not rec), key=lambda kv: kv[1])
        recovered = [(k, pos) for k, (pos, rec) in published.items() if rec]

        def drop(entries: list, upto: Position, exchange: str = exchange) -> None:
            while entries and entries[0][1] <= upto:
                (table, user, day), _ = entries.pop(0)
                buf = sink.buffer(table, exchange, user)
                buf[:] = [r for r in buf if r[0] // DAY_US != day]

        replay = ConnectionReplay(sink, {})
        replay.run(parts, lambda pos, live=live: drop(live, pos))
        everything = (1 << 62, 0)
        drop(live, everything)  # positions past the log's end: its tail was lost in a machine crash
        replay.finish()
        drop(recovered, everything)
        end = (replay.position[0], replay.position[1] + 1)  # past the crash event
        source = sources_metadata(
            [{"run": run, "conn": conn, "part": end[0], "records": end[1], "recovered": True}]
        )
        written = sink.write(sink.take(), source=lambda key, s=source: s)
        if written is None:
            raise OSError(f"cannot write recovered rows to {data_dir}")
        rows += written
    return rows


def published_positions(
    data_dir: Path, exchange: str, users: list[str], run: str, conn: int
) -> dict[tuple[str, str, int], tuple[Position, bool]]:
    """For each (table, symbol, day number): the furthest raw-log position already in Parquet, and
    whether that file was written by a recovery."""
    out: dict[tuple[str, str, int], tuple[Position, bool]] = {}
    for table in LIVE_TABLES:
        for user in users:
            base = partition_dir(data_dir, table, exchange, user, "x").parent
            for f in base.glob("date=*/*.parquet"):
                for s in read_sources(f):
                    if s["run"] != run or s["conn"] != conn:
                        continue
                    day = _day_number(f.parent.name.removeprefix("date="))
                    key = (table, user, day)
                    pos = (s["part"], s["records"])
                    if key not in out or pos > out[key][0]:
                        out[key] = (pos, bool(s.get("recovered")))
    return out


def _day_number(date: str) -> int:
    return (dt.date.fromisoformat(date) - dt.date(1970, 1, 1)).days

