"""How far into the raw log the published Parquet files go, and the live run's lock.

Each file a live run publishes carries, in its Parquet footer, the raw-log position its rows reach
(`recorder.sources`). Crash recovery reads these to re-derive exactly the rows that are missing.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import orjson
import pyarrow.parquet as pq

from recorder.errors import RecorderError
from recorder.storage.layout import run_id

SOURCES_KEY = "recorder.sources"


def runs_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / ".runs"


def sources_metadata(sources: list[dict]) -> dict[str, str]:
    return {SOURCES_KEY: orjson.dumps(sources).decode()}


def read_sources(path: Path) -> list[dict]:
    meta = pq.read_metadata(path).metadata or {}
    raw = meta.get(SOURCES_KEY.encode())
    return orjson.loads(raw) if raw else []


def merge_sources(lists: list[list[dict]]) -> list[dict]:
    """Union of sources, keeping the furthest position per (run, connection) (for compaction)."""
    best: dict[tuple[str, int], dict] = {}
    for sources in lists:
        for s in sources:
            k = (s["run"], s["conn"])
            if k not in best or (s["part"], s["records"]) > (best[k]["part"], best[k]["records"]):
                best[k] = s
    return list(best.values())


class RunLock:
    """The live run's lock: held for the process lifetime; `finish()` marks the run done."""

    def __init__(self, data_dir: str | Path) -> None:
        d = runs_dir(data_dir)
        d.mkdir(parents=True, exist_ok=True)
        self.run = run_id()
        self.path = d / f"{self.run}.lock"
        self.done = d / f"{self.run}.done"
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def finish(self, clean: bool, has_raw: bool = True) -> None:
        """Release the lock. A clean run with raw logs leaves a `.done` marker so recovery skips it;
        an unclean one leaves its lock file for recovery to find."""
        if clean:
            if has_raw:
                self.done.write_bytes(b"")
            self.path.unlink(missing_ok=True)
        os.close(self._fd)


def try_lock(path: Path) -> int | None:
    """An exclusive lock on `path` (fd), or None when another live process holds it."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def run_is_alive(data_dir: str | Path, run: str) -> bool:
    """Whether the process of `run` still holds its lock (same host; flock is not for NFS)."""
    if run == run_id():
        return True
    lock = runs_dir(data_dir) / f"{run}.lock"
    if not lock.exists():
        return False
    fd = try_lock(lock)
    if fd is None:
        return True
    os.close(fd)
    return False


def lock_stream(data_dir: str | Path, exchange: str, symbol: str) -> int:
    """One live recorder per (exchange, symbol) and data dir: two would store the stream twice and
    confuse `coverage`. Returns the held lock's fd; raises RecorderError when another process has it."""
    d = runs_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    fd = try_lock(d / f"stream-{exchange}-{symbol}.lock")
    if fd is None:
        raise RecorderError(f"{symbol} on {exchange} is already being recorded into {data_dir} by another process")
    return fd
