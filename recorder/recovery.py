"""Crash recovery: finish what a killed recorder left behind, from its raw log, exactly once.

A live run holds a lock file for its lifetime and writes a `.done` marker after its last flush.
Every Parquet file it publishes records in its footer how far into the raw log of its connection
the rows go (`recorder.sources`: run, connection, part, records). A run whose lock is free and that
has no `.done` marker died: its raw log is replayed through the live code path, and rows of each
(table, symbol, date) are kept only past the position already published for it (the same
re-derivation as `recorder replay`). So every message that reached the raw log ends up in the
tables, and none twice.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from recorder.replay import group_logs, log_identity, rederive
from recorder.storage.checkpoint import run_is_alive, runs_dir, try_lock
from recorder.storage.layout import run_id
from recorder.storage.rawlog import list_logs, release_reserve
from recorder.storage.sink import ParquetSink, recover


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
    if by_run:  # a fresh data dir stays as it is (a start that fails later leaves nothing behind)
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
            for f in files:
                release_reserve(f)  # the disk space a killed run held ahead of its logs
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
    """Re-derive what the dead `run` had not published, connection by connection (`replay.rederive`)."""
    sink = ParquetSink(data_dir)
    return sum(rederive(sink, data_dir, parts, complete=True).rows for parts in group_logs(files))
