"""`recorder replay`: re-derive every table from raw logs through the live code path.

The raw log holds each connection's inputs (frames, connection events, snapshot-cadence ticks) with
their original times, and the same `Dispatcher` the live recorder uses turns them into rows. So a
replay of a recording yields the same rows, and a fixed parser can re-derive history. A log that
ends without the recorder's clean `stop` gets a `stop` event "crash" at its last record, the same
row crash recovery writes.

Exactly once: every Parquet file records in its footer how far into which connection's raw log its
rows go (`recorder.sources`), live files and re-derived ones alike. A replay keeps, per (table,
symbol, date), only the rows past the position already published in the target data dir, so
replaying into a dir that holds these rows already (the recording's own, or an earlier replay)
adds nothing twice. Crash recovery is this same re-derivation for the runs that died.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from recorder import venues
from recorder.lake import check_files, partition_problem, refuse_remote
from recorder.model import CHANNEL_SPECS, STOP, Cause, legacy_cause, tables_for
from recorder.session.dispatcher import Dispatcher, Topic
from recorder.session.stream import Stream
from recorder.storage.checkpoint import (
    lock_held,
    read_sources,
    release,
    remove_if_empty,
    runs_dir,
    sources_metadata,
    try_lock,
)
from recorder.storage.layout import partition_dir
from recorder.storage.rawlog import (
    BADFRAME,
    EVENT,
    FRAME,
    HEADER,
    REST,
    SUFFIX,
    TICK,
    list_logs,
    read_header,
    read_records,
)
from recorder.storage.sink import DAY_US, ParquetSink
from recorder.venues.contract import Instrument

CRASH_DETAIL = "crash: the recording ended without a clean stop (rows re-derived from the raw log)"
_LOG_NAME = re.compile(r"^[^-]+-(?P<run>[^-]+)-c(?P<conn>\d+)p(?P<part>\d+)" + re.escape(SUFFIX) + "$")

Position = tuple[int, int]  # (part, records read in that part, header included)


def header_tables(header: dict) -> tuple[str, ...]:
    """The tables a connection's rows go to, from its raw-log header (format 1 headers name no
    channels: their topics do)."""
    channels = header.get("channels") or sorted({t[1] for t in header["topics"]})
    return tables_for(c for c in channels if c in CHANNEL_SPECS)


_EVERYTHING: Position = (1 << 62, 0)


@dataclass
class ReplayResult:
    files: int = 0
    records: int = 0
    rows: int = 0
    skipped: list[str] = field(default_factory=list)  # why a connection's logs were not replayed


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
            self.dispatcher.event(self.last_t + 1, None, STOP, CRASH_DETAIL, Cause.CRASH)

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
            channel, event, detail, *more = orjson.loads(payload)  # format 2 adds cause, topic
            cause, topic = (more + [None, None])[:2]
            d.event(t, channel, event, detail, cause if more else legacy_cause(event, detail), topic)
            self.clean_stop = event == STOP
        elif kind == TICK:
            d.tick(t)
        elif kind == BADFRAME:
            d.frame(t, payload)
        elif kind == REST:
            doc = orjson.loads(payload)
            d.rest(t, doc["poll"], doc["wire"], doc["body"])

    def _dispatcher(self, header: dict) -> Dispatcher:
        exchange = venues.canonical(header["exchange"])  # logs of older runs may say `BITMART`
        venue = venues.venue(header.get("venue", exchange))
        # the instruments of the live run (contract sizes included), not today's market list
        listed = {d["symbol"]: Instrument.from_header(d) for d in header.get("instruments", ())}
        topics, used = [], {}
        for name, channel, user, wire in header["topics"]:
            inst = used[user] = listed.get(user) or used.get(user) or Instrument(user, wire)
            key = (exchange, user)
            if key not in self.streams:
                self.streams[key] = Stream(self.sink, exchange, inst, venue.sequence_policy())
            topics.append(Topic(name, channel, self.streams[key]))
        codec = venue.codec(list(used.values()))
        depth = header.get("snapshot_depth", 20)
        return Dispatcher(codec, topics, depth, rawlog=None, live=False, polls=venue.polls)


def replay(
    paths: list[str | Path],
    data_dir: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Replay raw logs (files or directories) into the tables under `data_dir`, exactly once.

    Logs of a run that is still recording into `data_dir` are skipped: that run publishes its
    rows itself (and recovery finishes them if it dies). A run still recording elsewhere is
    replayed as far as its log goes, without a crash `stop`; a later replay continues from there.
    """
    refuse_remote(data_dir)
    data_dir = Path(data_dir)
    sink = ParquetSink(data_dir)
    res = ReplayResult()
    groups = group_logs(list_logs(list(paths)))
    for n, parts in enumerate(groups):
        run = log_identity(parts[0])[0]
        source = _recording_dir(parts[0])
        # before we take the lock ourselves; and only a connection's whole log is complete: replaying
        # one date's folder must neither invent a crash nor mark rows that later parts continue
        complete = (source is None or not lock_held(source, run)) and _whole_log(parts)
        with _run_lock(data_dir, run) as free:
            if not free:
                res.skipped.append(f"{run}: still recording into {data_dir} (it publishes these rows itself)")
            else:
                r = rederive(sink, data_dir, parts, complete)
                res.files += len(parts)
                res.records += r.records
                res.rows += r.rows
        if progress:
            progress(n + 1, len(groups))
    return res


def _whole_log(parts: list[Path]) -> bool:
    """Are `parts` every part of their connection's log that lies beside them (all `date=` folders
    of the raw dir's exchange folder), from part 0 on?"""
    run, conn, _ = log_identity(parts[0])
    siblings = set()
    for p in parts[0].parent.parent.glob(f"*/*{SUFFIX}"):
        with contextlib.suppress(ValueError):
            if log_identity(p)[:2] == (run, conn):
                siblings.add(p.resolve())
    given = {p.resolve() for p in parts}
    return log_identity(parts[0])[2] == 0 and siblings <= given


@dataclass
class Rederived:
    records: int = 0
    rows: int = 0


def rederive(sink: ParquetSink, data_dir: Path, parts: list[Path], complete: bool) -> Rederived:
    """Replay one connection's log parts and publish the rows `data_dir` does not hold yet.

    `complete`: the log will not grow (its run is over), so a log without a clean stop ends with
    the crash `stop` event, and the files written are marked `recovered`: a later re-derivation of
    the same log drops those keys whole (crash event included). Otherwise positions are exact and a
    later replay continues past them. Raises OSError when the rows cannot be written.
    """
    header = read_header(parts[0])
    if header is None:
        return Rederived()  # killed before the header reached the disk: nothing was recorded
    run, conn = log_identity(parts[0])[:2]
    exchange = venues.canonical(header["exchange"])
    users = sorted({t[2] for t in header["topics"]})
    published = published_positions(data_dir, exchange, users, run, conn, header)
    # Keys written by an earlier complete re-derivation are dropped after the crash event is made;
    # live-published keys as soon as the replay passes their position.
    live = sorted(((k, pos) for k, (pos, rec) in published.items() if not rec), key=lambda kv: kv[1])
    recovered = [(k, pos) for k, (pos, rec) in published.items() if rec]

    def drop(entries: list, upto: Position) -> None:
        while entries and entries[0][1] <= upto:
            (table, user, day), _ = entries.pop(0)
            buf = sink.buffer(table, exchange, user)
            buf[:] = [r for r in buf if r[0] // DAY_US != day]

    r = ConnectionReplay(sink, {})
    r.run(parts, lambda pos: drop(live, pos))
    drop(live, _EVERYTHING)  # positions past the log's end: its tail was lost in a machine crash
    if complete:
        r.finish()
        drop(recovered, _EVERYTHING)
    end = (r.position[0], r.position[1] + 1) if complete else r.position  # +1: past the crash event
    meta = sources_metadata([{"run": run, "conn": conn, "part": end[0], "records": end[1], "recovered": complete}])
    written = sink.write(sink.take(), source=lambda key: meta)
    if written is None:
        raise OSError(f"cannot write re-derived rows to {data_dir}")
    return Rederived(r.records, written)


def published_positions(
    data_dir: Path, exchange: str, users: list[str], run: str, conn: int, header: dict
) -> dict[tuple[str, str, int], tuple[Position, bool]]:
    """For each (table, symbol, day number): the furthest raw-log position already in Parquet, and
    whether that file was written by a complete re-derivation (recovery or replay)."""
    out: dict[tuple[str, str, int], tuple[Position, bool]] = {}
    for table in header_tables(header):
        for user in users:
            base = partition_dir(data_dir, table, exchange, user, "x").parent
            listed = [str(f) for f in base.glob("date=*/*.parquet") if partition_problem("date", f.parent.name) is None]
            # a damaged file holds no rows any reader sees: its positions do not count (and it must
            # not stop a start or a replay)
            for f in (Path(p) for p, problem in check_files(table, listed).items() if problem is None):
                for s in read_sources(f):
                    if s["run"] != run or s["conn"] != conn:
                        continue
                    day = (dt.date.fromisoformat(f.parent.name.removeprefix("date=")) - dt.date(1970, 1, 1)).days
                    key = (table, user, day)
                    pos = (s["part"], s["records"])
                    if key not in out or pos > out[key][0]:
                        out[key] = (pos, bool(s.get("recovered")))
    return out


@contextlib.contextmanager
def _run_lock(data_dir: Path, run: str) -> Iterator[bool]:
    """Hold `run`'s lock in `data_dir` (False: a live process has it, recording or recovering it),
    so that a recorder starting meanwhile cannot recover the same rows at the same time."""
    rd = runs_dir(data_dir)
    rd.mkdir(parents=True, exist_ok=True)
    path = rd / f"{run}.lock"
    existed = path.exists()
    fd = try_lock(path)
    try:
        yield fd is not None
    finally:
        if fd is not None and existed:
            os.close(fd)  # a dead run's lock file stays, as recovery expects to find it
        elif fd is not None:
            release(path, fd)
        remove_if_empty(rd)


def _recording_dir(log: Path) -> Path | None:
    """The data dir a raw log was recorded into (`DATA_DIR/raw/exchange=../date=../log`), if any."""
    for parent in log.resolve().parents:
        if parent.name == "raw":
            return parent.parent
    return None
