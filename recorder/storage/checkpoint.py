"""How far into the raw log the published Parquet files go, and the live run's lock.

Each file a live run publishes carries, in its Parquet footer, the raw-log position its rows reach
(`recorder.sources`). Crash recovery reads these to re-derive exactly the rows that are missing.
"""

from __future__ import annotations

import contextlib
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
        fd = try_lock(self.path)
        if fd is None:
            raise RecorderError(f"run {self.run} is already locked in {d}")
        self._fd = fd

    def finish(self, clean: bool, has_raw: bool = True) -> None:
        """Release the lock. A clean run with raw logs leaves a `.done` marker so recovery skips it;
        an unclean one leaves its lock file for recovery to find."""
        if clean:
            if has_raw:
                self.done.write_bytes(b"")
            self.path.unlink(missing_ok=True)
        os.close(self._fd)

    def abandon(self) -> None:
        """A start that failed before recording anything: leave no trace of this run."""
        release(self.path, self._fd)
        remove_if_empty(self.path.parent)


def try_lock(path: Path) -> int | None:
    """An exclusive lock on `path` (fd), or None when another live process holds it.

    Lock files may be deleted by their holder (`release`), so a lock taken on a file that was
    unlinked meanwhile is worthless: check that the path still names the locked inode, else retry.
    """
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def release(path: Path, fd: int) -> None:
    """Delete a lock file while still holding it (safe with `try_lock`'s inode check), then unlock."""
    path.unlink(missing_ok=True)
    os.close(fd)


def remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):
        directory.rmdir()


def run_is_alive(data_dir: str | Path, run: str) -> bool:
    """Whether the process of `run` still holds its lock (same host; flock is not for NFS)."""
    return run == run_id() or lock_held(data_dir, run)


def lock_held(data_dir: str | Path, run: str) -> bool:
    """Whether some process (this one included) holds the lock of `run` in `data_dir` right now."""
    lock = runs_dir(data_dir) / f"{run}.lock"
    if not lock.exists():
        return False
    fd = try_lock(lock)
    if fd is None:
        return True
    os.close(fd)
    return False


def lock_stream(data_dir: str | Path, exchange: str, symbol: str) -> tuple[Path, int]:
    """One live recorder per (exchange, symbol) and data dir: two would store the stream twice and
    confuse `coverage`. Returns the held lock (path, fd) for `release`; raises RecorderError when
    another process has it."""
    d = runs_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"stream-{exchange}-{symbol}.lock"
    fd = try_lock(path)
    if fd is None:
        raise RecorderError(f"{symbol} on {exchange} is already being recorded into {data_dir} by another process")
    return path, fd
