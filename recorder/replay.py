"""`recorder replay`: re-derive every table from raw logs through the live code path.

The raw log holds each connection's inputs (frames, connection events, snapshot-cadence ticks) with
their original times, and the same `Dispatcher` the live recorder uses turns them into rows. So a
replay of a recording yields the same rows, and a fixed parser can re-derive history. A log that
ends without the recorder's clean `stop` gets a `stop` event "crash" at its last record, the same
row crash recovery writes.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from recorder import exchanges
from recorder.collector import Dispatcher, Stream, Topic
from recorder.model import STOP
from recorder.storage.rawlog import BADFRAME, EVENT, FRAME, HEADER, SUFFIX, TICK, list_logs, read_records
from recorder.storage.sink import ParquetSink

CRASH_DETAIL = "crash: the recording ended without a clean stop (rows re-derived from the raw log)"
_LOG_NAME = re.compile(r"^[^-]+-(?P<run>[^-]+)-c(?P<conn>\d+)p(?P<part>\d+)" + re.escape(SUFFIX) + "$")

Position = tuple[int, int]  # (part, records read in that part, header included)


@dataclass
class ReplayResult:
    files: int = 0
    records: int = 0
    rows: int = 0


def log_identity(path: Path) -> tuple[str, int, int]:
    """(run, connection, part) from a raw log's file name."""
    m = _LOG_NAME.match(path.name)
    if not m:
        raise ValueError(f"{path.name}: not a raw log name")
    return m["run"], int(m["conn"]), int(m["part"])


def group_logs(paths: list[Path]) -> list[list[Path]]:
    """Raw logs grouped per (run, connection), parts in order; groups in time order."""
    groups: dict[tuple[str, int], list[Path]] = defaultdict(list)
    for p in paths:
        run, conn, _ = log_identity(p)
        groups[(run, conn)].append(p)
    ordered = [sorted(g, key=lambda p: log_identity(p)[2]) for g in groups.values()]
    return sorted(ordered, key=lambda g: g[0].name)


class ConnectionReplay:
    """Feeds one connection's raw log parts, in order, through a `Dispatcher`."""

    def __init__(self, sink: ParquetSink, streams: dict[tuple[str, str], Stream]) -> None:
        self.sink, self.streams = sink, streams
        self.dispatcher: Dispatcher | None = None
        self.header: dict = {}
        self.position: Position = (0, 0)
        self.records = 0
        self.last_t = 0
        self.clean_stop = False

    def run(self, parts: list[Path], on_position: Callable[[Position], None] | None = None) -> None:
        for path in parts:
            part = log_identity(path)[2]
            for n, (t, kind, payload) in enumerate(read_records(path), start=1):
                self._record(t, kind, payload)
                self.position = (part, n)
                if on_position is not None:
                    on_position(self.position)

    def finish(self) -> None:
        """After the last part: a log without the recorder's clean stop gets a crash `stop`, 1 µs
        after its last record (so it orders after whatever that record caused)."""
        if self.dispatcher is not None and not self.clean_stop and self.last_t:
            self.dispatcher.event(self.last_t + 1, None, STOP, CRASH_DETAIL)

    def _record(self, t: int, kind: int, payload: bytes) -> None:
        self.records += 1
        d = self.dispatcher
        if kind == HEADER:
            if d is None:
                self.header = orjson.loads(payload)
                self.dispatcher = self._dispatcher(self.header)
            return
        if d is None:
            raise ValueError("raw log without header")
        self.last_t = t
        if kind == FRAME:
            d.payload(t, payload)
        elif kind == EVENT:
            channel, event, detail = orjson.loads(payload)
            d.event(t, channel, event, detail)
            self.clean_stop = event == STOP
        elif kind == TICK:
            d.tick(t)
        elif kind == BADFRAME:
            d.frame(t, payload)

    def _dispatcher(self, header: dict) -> Dispatcher:
        exchange = exchanges.canonical(header["exchange"])  # logs of older runs may say `BITMART`
        adapter = exchanges.adapter(exchange)
        topics = []
        for name, channel, user, wire in header["topics"]:
            key = (exchange, user)
            if key not in self.streams:
                self.streams[key] = Stream(self.sink, exchange, user, wire, getattr(adapter, "STALE_IS_GAP", False))
            topics.append(Topic(name, channel, self.streams[key]))
        return Dispatcher(adapter, topics, header.get("snapshot_depth", 20), rawlog=None)


def replay(
    paths: list[str | Path],
    data_dir: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Replay raw logs (files or directories) into the tables under `data_dir`."""
    sink = ParquetSink(data_dir)
    res = ReplayResult()
    groups = group_logs(list_logs(list(paths)))
    for n, parts in enumerate(groups):
        streams: dict[tuple[str, str], Stream] = {}
        r = ConnectionReplay(sink, streams)
        r.run(parts)
        r.finish()
        res.files += len(parts)
        res.records += r.records
        res.rows += sink.flush()
        if progress:
            progress(n + 1, len(groups))
    return res
