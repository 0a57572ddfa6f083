"""`recorder replay`: re-derive every table from raw logs through the live code path.

The raw log holds each connection's inputs (frames, connection events, snapshot-cadence ticks) with
their original times, and the same `Dispatcher` the live recorder uses turns them into rows. So a
replay of a recording yields the same rows, and a fixed parser can re-derive history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from recorder import exchanges
from recorder.collector import Dispatcher, Stream, Topic
from recorder.storage.rawlog import BADFRAME, EVENT, FRAME, HEADER, TICK, list_logs, read_records
from recorder.storage.sink import ParquetSink


@dataclass
class ReplayResult:
    files: int = 0
    records: int = 0
    rows: int = 0


def replay(
    paths: list[str | Path],
    data_dir: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Replay raw logs (files or directories, in time order) into the tables under `data_dir`."""
    sink = ParquetSink(data_dir)
    streams: dict[tuple[str, str], Stream] = {}
    res = ReplayResult()
    logs = list_logs(paths)
    for n, path in enumerate(logs):
        d: Dispatcher | None = None
        for t, kind, payload in read_records(path):
            res.records += 1
            if kind == HEADER:
                d = _dispatcher(orjson.loads(payload), sink, streams)
            elif d is None:
                raise ValueError(f"{path}: raw log without header")
            elif kind == FRAME:
                d.payload(t, payload)
            elif kind == EVENT:
                channel, event, detail = orjson.loads(payload)
                d.event(t, channel, event, detail)
            elif kind == TICK:
                d.tick(t)
            elif kind == BADFRAME:
                d.frame(t, payload)
        res.files += 1
        res.rows += sink.flush()
        if progress:
            progress(n + 1, len(logs))
    return res


def _dispatcher(header: dict, sink: ParquetSink, streams: dict[tuple[str, str], Stream]) -> Dispatcher:
    exchange = header["exchange"]
    adapter = exchanges.adapter(exchange)
    topics = []
    for name, channel, user, wire in header["topics"]:
        key = (exchange, user)
        if key not in streams:
            streams[key] = Stream(sink, exchange, user, wire, getattr(adapter, "STALE_IS_GAP", False))
        topics.append(Topic(name, channel, streams[key]))
    return Dispatcher(adapter, topics, header.get("snapshot_depth", 20), rawlog=None)
