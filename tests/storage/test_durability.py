"""Durability proofs at the OS interface: every published Parquet file was fsynced before its rename
(and its directory after it), and the raw-log records a file claims were fsynced before it appeared.

`os.fsync` and `os.replace` are wrapped to observe the calls (each calls through to the real one):
this watches what the recorder asks of the OS, it replaces nothing of the recorder.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import orjson
import pyarrow.parquet as pq

from recorder.collector import Collector
from recorder.storage.checkpoint import SOURCES_KEY
from recorder.storage.compact import compact_data_dir
from recorder.storage.rawlog import SUFFIX, read_records

from ..recording import SYMBOLS, books_valid, finish, options, start, wait_for
from ..test_replay import sent_each


class SyncWatch:
    """Records fsyncs (path -> file size, and records for raw logs) and checks each publish."""

    def __init__(self, data: Path, monkeypatch) -> None:
        self.data = data
        self.lock = threading.Lock()  # Parquet files are published from a worker thread
        self.synced: dict[str, int] = {}
        self.raw_records: dict[str, int] = {}
        self.unsynced_dirs: set[str] = set()
        self.published: list[str] = []
        self.problems: list[str] = []
        self._fsync, self._replace = os.fsync, os.replace
        monkeypatch.setattr(os, "fsync", self.fsync)
        monkeypatch.setattr(os, "replace", self.replace)

    def fsync(self, fd: int) -> None:
        self._fsync(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        with self.lock:
            self.synced[path] = os.fstat(fd).st_size
            self.unsynced_dirs.discard(path)
            if path.endswith(SUFFIX):
                self.raw_records[path] = sum(1 for _ in read_records(path))

    def replace(self, src, dst, **kw) -> None:
        if str(dst).endswith(".parquet"):
            self.check(os.path.realpath(src), os.path.realpath(dst))
        self._replace(src, dst, **kw)
        if str(dst).endswith(".parquet"):
            with self.lock:
                self.unsynced_dirs.add(os.path.dirname(os.path.realpath(dst)))

    def check(self, src: str, dst: str) -> None:
        with self.lock:
            self.published.append(dst)
            if self.synced.get(src) != os.stat(src).st_size:
                self.problems.append(f"{dst}: renamed into place without an fsync of its final content")
            meta = pq.read_metadata(src).metadata or {}
            for s in orjson.loads(meta.get(SOURCES_KEY.encode(), b"[]")):
                if s.get("recovered"):
                    continue
                logs = list(self.data.glob(f"raw/*/*/*-{s['run']}-c{s['conn']}p{s['part']}{SUFFIX}"))
                done = max((self.raw_records.get(str(p.resolve()), 0) for p in logs), default=0)
                if done < s["records"]:
                    self.problems.append(
                        f"{dst}: claims {s['records']} raw records of part {s['part']}, only {done} fsynced"
                    )


async def test_every_published_file_and_claimed_raw_record_was_fsynced(tmp_path, sim, monkeypatch):
    data = tmp_path / "data"
    watch = SyncWatch(data, monkeypatch)
    c = Collector("bitmart", list(SYMBOLS), options(data, sim))
    task = await start(c)
    await wait_for(lambda: books_valid(c), 10, "first snapshots")
    await wait_for(lambda: c.sink.files_written >= 12 and sent_each(sim) >= 100, 30, "several flushes")
    await finish(c, sim, task)
    live = len(watch.published)
    assert not watch.unsynced_dirs, f"directories not fsynced after a rename: {sorted(watch.unsynced_dirs)[:3]}"
    compact_data_dir(data, include_today=True)  # merged files are published the same way
    assert live >= 12 and len(watch.published) > live
    assert not watch.problems, "\n".join(watch.problems[:5])
    assert not watch.unsynced_dirs, f"directories not fsynced after a rename: {sorted(watch.unsynced_dirs)[:3]}"
