"""Wires a venue + its instruments + sessions + connections + sink + raw logs for one exchange.

One `Collector` owns the sink and one `Connection` per group of topics (venues cap topics per
connection). It resolves the user's symbols into the venue's instruments once, at start, and
writes them into each raw log's header, so a replay re-derives exactly what the live run wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from recorder import shards, venues
from recorder.errors import RecorderError
from recorder.instruments import fetch_instruments, normalize, resolve
from recorder.model import BOOK, ERROR, STOP, TRADES, Cause
from recorder.session.dispatcher import STALE, Dispatcher, Topic
from recorder.session.stream import Stream, now_us
from recorder.storage.checkpoint import RunLock, lock_stream, release, run_is_alive, sources_metadata
from recorder.storage.layout import check_writable
from recorder.storage.rawlog import RESERVE_BYTES, RawLog
from recorder.storage.sink import ParquetSink, recover
from recorder.transport import USER_AGENT, SendLimiter, get_json, new_session
from recorder.transport.connection import WATCHDOG_TICK, Connection
from recorder.transport.websocket import WebSocketError, connect
from recorder.venues.contract import Instrument, RestPoll, Resync

__all__ = ["STALE", "Collector", "Connection", "Dispatcher", "Options", "Stream", "Topic", "Unwritten", "now_us"]

log = logging.getLogger("recorder")


def _ignore(*_: object) -> None:
    pass


@dataclass
class Options:
    data_dir: Path | None = Path("data")  # None: keep nothing on disk (an in-process feed)
    channels: tuple[str, ...] | None = None  # None: the venue's default channels
    duration: float | None = None
    ws_url: str | None = None
    rest_url: str | None = None
    flush_interval: float = 60.0  # publish files at least this often (SQL sees data within it)
    max_buffered_rows: int = 1_000_000  # flush everything early past this many rows in memory
    # Flush the biggest buffers early (down to half of it) past this estimate of their memory
    max_buffered_bytes: int = 64 * 1024 * 1024
    snapshot_interval: float = 1.0  # book_snapshots cadence
    snapshot_depth: int = 20
    # Stale-stream watchdog: a connection silent for `silence_factor` times its usual gap between
    # frames (learned from its own rate; at least `min_silence`, at most `silence_timeout`) is asked
    # with a ping; no answer within `probe_timeout` means dead (`silence_limit`, `dead_within`).
    # A market that merely went quiet answers the ping, so it is not mistaken for a dead socket.
    silence_timeout: float = 10.0
    min_silence: float = 2.0
    silence_factor: float = 10.0
    probe_timeout: float = 2.0
    ack_timeout: float = 10.0  # resubscribe topics not acknowledged within this
    # A refused subscription is retried after this, doubling on each refusal in a row (at most
    # `ack_timeout`): a refusal is an answer, there is nothing to wait for.
    refused_retry: float = 1.0
    resync_timeout: float | None = None  # re-request a snapshot not received within this (None: the venue's)
    raw: bool = True  # capture every frame to DATA_DIR/raw (the source for `recorder replay`)
    raw_flush_interval: float = 0.2
    raw_reserve_bytes: int = RESERVE_BYTES  # disk held ahead of each raw log, for a disk that fills up
    # While the disk refuses writes, rows and raw records wait in memory up to these caps; past
    # them the oldest are dropped, counted, and recorded as `error` events.
    max_pending_rows: int = 5_000_000
    max_pending_raw_bytes: int = 256 * 1024 * 1024
    # The selection: the collector's `symbols`, or every trading market (`all_markets`), narrowed to
    # these quote currencies (empty: any) and to this shard (I, N) of `recorder.shards`.
    all_markets: bool = False
    quotes: tuple[str, ...] = ()
    shard: tuple[int, int] | None = None
    market_refresh: float = 600.0  # seconds between two reads of the market list (new / delisted markets)

    def silence_limit(self, rate: float) -> float:
        """Seconds without a frame after which a connection usually receiving `rate` frames/s is probed."""
        usual = self.silence_factor / rate if rate > 0 else self.silence_timeout
        return min(self.silence_timeout, max(self.min_silence, usual))

    def dead_within(self, rate: float) -> float:
        """Bound from a hung connection's last frame to its `stale stream` verdict: the probe goes out
        on the first watchdog tick past `silence_limit`, the verdict on the first tick past
        `probe_timeout` (with the defaults: 4.5 s from 5 frames/s up, 12.5 s for any connection)."""
        return self.silence_limit(rate) + self.probe_timeout + 2 * WATCHDOG_TICK


@dataclass
class Unwritten:
    """What a stop left unwritten: `rows` buffered, of which `lost_rows` (`lost_trades` trades) are
    in no raw log either, because raw capture was off or the raw log lacks its last records."""

    rows: int = 0
    raw: bool = True
    lost_rows: int = 0
    lost_trades: int = 0
    raw_records_lost: int = 0
    lost_since: int | None = None  # receive time (µs) from which the raw log is incomplete


class Collector:
    """Records `symbols` of `exchange` into `options.data_dir` until stopped."""

    def __init__(self, exchange: str, symbols: list[str], options: Options) -> None:
        self.exchange = venues.canonical(exchange)  # partitions, locks and raw headers: lower-case
        self.requested = symbols
        self.options = options
        self.venue = venues.venue(exchange)
        self.channels = channels_of(self.venue.name, options.channels)
        self.ws_url = options.ws_url or self.venue.endpoints.ws_url
        self.rest_url = options.rest_url or self.venue.endpoints.rest_url
        if not self.ws_url or not self.rest_url:
            raise RecorderError(f"{self.exchange} has no default URLs: pass --ws-url and --rest-url")
        self.instruments: list[Instrument] = []
        self.sink = ParquetSink(options.data_dir, on_error=self._on_write_error)
        self.stopping = asyncio.Event()
        self.connect_limiter = SendLimiter(*self.venue.limits.connect_budget)
        self.streams: dict[str, Stream] = {}
        self.connections: list[Connection] = []
        self._tasks: set[asyncio.Task] = set()
        self.session: aiohttp.ClientSession
        self.write_errors: list[str] = []
        self.dropped_rows = 0
        self.dropped_raw_bytes = 0
        self.lock: RunLock | None = None
        self.owns_lock = True  # False: the caller shares one run lock between collectors and finishes it
        self._inflight: asyncio.Future | None = None
        self._stream_locks: list[tuple[Path, int]] = []  # held for the process lifetime
        self._last_disk_warning = -1e9
        self.disk_refusing_since: float | None = None  # monotonic; cleared by the next table write that lands
        self.disk_pauses = 0  # episodes of a disk refusing writes (`recorder.metrics`)
        self.subscribed_in: float | None = None  # seconds from run() to every topic acknowledged
        self._delisted: dict[str, Connection] = {}  # delisted market -> the connection that held it

    def spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_write_error(self, message: str) -> None:
        self._disk_trouble(message)

    async def prepare(self, recovered: bool = False) -> None:
        """Validate everything that can be wrong before recording: data dir, symbols, endpoint.

        `recovered`: the caller has already checked the data dir is writable and recovered it
        (`recorder.app.record` does, with crash recovery from raw logs); else both happen here."""
        data_dir = self.options.data_dir
        if data_dir is None:
            self.options.raw = False
        else:
            if not recovered:
                check_writable(data_dir)
                recover(data_dir, alive=lambda run: run_is_alive(data_dir, run))
            if self.lock is None:  # else the process's run lock, shared by its collectors (--config)
                self.lock = RunLock(data_dir)
        self.session = new_session()
        try:
            listed = await fetch_instruments(self.session, self.venue, self.rest_url)
            self.instruments = self.select(listed)
            if data_dir is not None:
                for inst in self.instruments:  # one by one: a refused lock must not leak those already held
                    self._stream_locks.append(lock_stream(data_dir, self.exchange, inst.symbol))
            await self._probe_websocket()
        except BaseException:
            self._release_stream_locks()
            if self.lock is not None and self.owns_lock:  # nothing was recorded: leave no lock file behind
                self.lock.abandon()
                self.lock = None
            await self.session.close()
            raise
        self._open(self.instruments)

    def _open(self, instruments: list[Instrument]) -> list[Connection]:
        """Streams for `instruments` on new connections of their own (each with its raw log, whose
        header lists exactly its topics: a connection's topic set never grows)."""
        new = []
        for inst in instruments:
            self.streams[inst.symbol] = Stream(self.sink, self.exchange, inst, self.venue.sequence_policy())
            new.append(self.streams[inst.symbol])
        opened = []
        for group in self._topic_groups(new):
            n = len(self.connections)
            rawlog = None
            if self.options.raw:
                rawlog = RawLog(
                    self.options.data_dir, self.exchange, self._raw_header(group), connection=n,
                    reserve_bytes=self.options.raw_reserve_bytes,
                )
            codec = self.venue.codec([t.stream.inst for t in group])
            d = Dispatcher(codec, group, self.options.snapshot_depth, rawlog, polls=self.venue.polls)
            self.connections.append(Connection(self, d, n))
            opened.append(self.connections[-1])
        return opened

    def select(self, listed: list[Instrument], strict: bool = True) -> list[Instrument]:
        """The instruments this process records, from the venue's market list: the user's symbols
        (unknown ones refused; skipped when not `strict`, as a refresh does for a delisted one) or
        every listed market, then the quote filter, then the shard."""
        opt = self.options
        requested = self.requested
        if not strict:
            known = {i.symbol for i in listed}
            requested = [r for r in requested if normalize(r) in known]
        chosen = listed if opt.all_markets else resolve(requested, listed, self.exchange)
        if opt.quotes:
            chosen = [i for i in chosen if i.symbol.split("-")[1] in opt.quotes]
        mine = set(shards.select(self.exchange, [i.symbol for i in chosen], opt.shard))
        chosen = list({i.symbol: i for i in chosen if i.symbol in mine}.values())
        if not chosen:
            what = "no market" if opt.all_markets else "none of the symbols"
            quote = f" with quote {'/'.join(opt.quotes)}" if opt.quotes else ""
            shard = f" in shard {opt.shard[0]}/{opt.shard[1]}" if opt.shard else ""
            raise RecorderError(f"{what} of {self.exchange}{quote}{shard} to record")
        return chosen

    def _topic_groups(self, streams: list[Stream]) -> list[list[Topic]]:
        """Topics per connection, within the exchange's cap; a symbol's topics share a connection."""
        per = self.venue.limits.topics_per_connection
        groups: list[list[Topic]] = [[]]
        for s in streams:
            mine = [Topic(self.venue.topic(ch, s.inst), ch, s) for ch in self.channels]
            if len(groups[-1]) + len(mine) > per:
                groups.append([])
            groups[-1].extend(mine)
        return groups

    async def _probe_websocket(self) -> None:
        """Fail at start-up, not in a reconnect loop, when the websocket endpoint is unreachable."""
        await self.connect_limiter.acquire()  # a connection attempt like any other: within the budget
        try:
            ws = await connect(self.ws_url, _ignore, _ignore, self.venue.limits.max_frame_bytes, {"User-Agent": USER_AGENT})
        except (WebSocketError, TimeoutError, OSError) as exc:
            why = str(exc) if isinstance(exc, WebSocketError) else f"{type(exc).__name__}: {exc}".rstrip(": ")
            raise RecorderError(f"cannot reach websocket {self.ws_url} ({why})") from None
        ws.start()  # so that the server's CLOSE is read: the close handshake ends at once
        await ws.close()

    def _raw_header(self, group: list[Topic]) -> dict:
        """Everything a replay needs to re-derive this connection's rows on its own (format 2)."""
        return {
            "format": 2,
            "exchange": self.exchange,
            "venue": self.venue.name,
            "ws_url": self.ws_url,
            "snapshot_depth": self.options.snapshot_depth,
            "channels": list(self.channels),
            "topics": [[t.name, t.channel, t.stream.user, t.stream.wire] for t in group],
            "instruments": [s.inst.to_header() for s in dict.fromkeys(t.stream for t in group)],
        }

    async def run(self) -> None:
        """Record until `stop()` or the duration ends; always flushes what it has."""
        try:
            conn_tasks = [asyncio.create_task(c.run()) for c in self.connections]
            aux = [asyncio.create_task(self._snapshots()), asyncio.create_task(self._flusher())]
            aux.append(asyncio.create_task(self._time_subscription()))
            aux.append(asyncio.create_task(self._refresh_markets()))
            aux += [asyncio.create_task(self._poll(p)) for p in self.venue.polls if p.channel in self.channels]
            if self.options.raw:
                aux.append(asyncio.create_task(self._raw_flusher()))
            try:
                if self.options.duration is not None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), self.options.duration)
                else:
                    await self.stopping.wait()
            finally:
                self.stopping.set()
                for t in conn_tasks + aux + list(self._tasks):
                    t.cancel()
                await asyncio.gather(*conn_tasks, *aux, *self._tasks, return_exceptions=True)
        finally:
            if self._inflight is not None:
                await asyncio.gather(self._inflight, return_exceptions=True)
            t = now_us()
            for conn in self.connections:
                conn.dispatcher.tick(t)
                conn.dispatcher.event(t, None, STOP, "clean stop")
            written = await self._flush()
            for conn in self.connections:
                if conn.dispatcher.rawlog is not None:
                    try:
                        conn.dispatcher.rawlog.close()
                    except OSError as exc:
                        written = None
                        self._disk_trouble(f"cannot close raw log: {exc.strerror or exc}")
            if self.lock is not None and self.owns_lock:
                clean = written is not None and self.sink.pending_rows() == 0
                self.lock.finish(clean=clean, has_raw=self.options.raw)
            self._release_stream_locks()
            await self.session.close()

    def stop(self) -> None:
        self.stopping.set()

    def _release_stream_locks(self) -> None:
        for path, fd in self._stream_locks:
            release(path, fd)  # deleted while held: a stopped recorder leaves no lock file
        self._stream_locks = []

    async def _time_subscription(self) -> None:
        """Measures the time from `run()` to every topic acknowledged at once (`subscribed_in`)."""
        start = time.monotonic()
        while self.topics_acked() < self.topics_total():
            await asyncio.sleep(0.05)
        self.subscribed_in = time.monotonic() - start
        log.info("%s: all %d topics on %d connections subscribed in %.1f s", self.exchange,
                 self.topics_total(), len(self.connections), self.subscribed_in)

    async def _refresh_markets(self) -> None:
        """Every `market_refresh` s, the market list again: markets newly in the selection get
        streams on new connections (opened within the connect budget); markets no longer listed get
        a `stop` event (cause `delisted`, in the raw log too) and are unsubscribed."""
        while True:
            await asyncio.sleep(self.options.market_refresh)
            try:
                listed = await fetch_instruments(self.session, self.venue, self.rest_url)
            except (RecorderError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("%s: market list refresh failed: %s; keeping the current markets", self.exchange, exc)
                continue
            if not listed:  # an empty list is a broken answer, not every market delisted at once
                continue
            try:
                chosen = {i.symbol: i for i in self.select(listed, strict=False)}
            except RecorderError:  # none of ours is listed any more
                chosen = {}
            live = {sym for sym in self.streams if sym not in self._delisted}
            for sym in sorted(live - chosen.keys()):
                self._delist(sym)
            added = [inst for sym, inst in chosen.items() if sym not in live]
            if added:
                self._add(added)

    def _add(self, added: list[Instrument]) -> None:
        if self.options.data_dir is not None:
            for inst in added:
                if inst.symbol not in self._delisted:  # a relisted market's lock is still held
                    self._stream_locks.append(lock_stream(self.options.data_dir, self.exchange, inst.symbol))
        for inst in added:
            self._delisted.pop(inst.symbol, None)
        opened = self._open(added)
        log.info("%s: %d new market(s) listed (%s); %d new connection(s)", self.exchange, len(added),
                 ", ".join(i.symbol for i in added[:5]) + (", ..." if len(added) > 5 else ""), len(opened))
        for conn in opened:
            self.spawn(conn.run())

    def _delist(self, symbol: str) -> None:
        """The venue no longer lists `symbol`: its coverage ends (a `stop` event, cause `delisted`,
        also in the raw log so a replay ends it at the same point) and its topics are unsubscribed."""
        t = now_us()
        for conn in self.connections:
            mine = [tp for tp in conn.topics if tp.stream.user == symbol]
            if not mine:
                continue
            for tp in mine:
                conn.dispatcher.event(t, tp.channel, STOP, "market delisted", Cause.DELISTED, topic=tp.name)
                if tp in conn.deadlines.topics:
                    conn.deadlines.topics.remove(tp)
            self._delisted[symbol] = conn
            if conn.ws is not None and not conn.ws.closed:
                self.spawn(conn._send_all(self.venue.unsubscribe([tp.name for tp in mine]), conn.ws))
        log.info("%s: %s delisted; stopped recording it", self.exchange, symbol)

    def topics_total(self) -> int:
        return sum(len(c.topics) for c in self.connections)

    def topics_acked(self) -> int:
        return sum(t.acked for c in self.connections for t in c.topics)

    @property
    def errors(self) -> int:
        return sum(c.dispatcher.errors for c in self.connections)

    @property
    def frames(self) -> int:
        return sum(c.frames for c in self.connections)

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(self.options.snapshot_interval)
            if BOOK in self.channels:
                t = now_us()
                for conn in self.connections:
                    conn.dispatcher.tick(t)

    async def _poll(self, poll: RestPoll) -> None:
        """A venue's REST poll: every `poll.interval` s, each instrument of its channel, paced by the
        venue's REST budget; answers go through the instrument's connection (logged, replayable)."""
        limiter = SendLimiter(*poll.rate_limit)
        base = self.rest_url.rstrip("/")
        while True:
            for conn in self.connections:
                for t in [t for t in conn.topics if t.channel == poll.channel]:
                    req = poll.request(t.stream.inst)
                    await limiter.acquire()
                    try:
                        doc = await get_json(self.session, base + req.path, dict(req.params) or None)
                        conn.dispatcher.rest(now_us(), poll.name, t.stream.wire, doc)
                    except (RecorderError, aiohttp.ClientError, TimeoutError) as exc:
                        log.warning("%s %s: %s", poll.name, t.stream.user, exc)
                    except Exception:  # a bug costs this answer, never the poll for the rest of the run
                        log.exception("%s %s: unexpected error", poll.name, t.stream.user)
            await asyncio.sleep(poll.interval)

    async def _raw_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.options.raw_flush_interval)
            for conn in self.connections:
                self._flush_raw(conn)

    def _flush_raw(self, conn: Connection, sync: bool = False) -> bool:
        raw = conn.dispatcher.rawlog
        if raw is None:
            return True
        try:
            raw.sync() if sync else raw.flush()
        except OSError as exc:
            self._disk_trouble(f"cannot write raw log: {exc.strerror or exc}")
            if raw.buffered_bytes > self.options.max_pending_raw_bytes:
                n = raw.drop_buffer()
                detail = f"disk: dropped {n:,} bytes of raw log ({exc.strerror})"
                conn.dispatcher.event(now_us(), None, ERROR, detail, Cause.DISK)
                self.dropped_raw_bytes += n
            return False
        return True

    def _disk_trouble(self, message: str) -> None:
        self.write_errors.append(message)
        if self.disk_refusing_since is None:
            self.disk_refusing_since, self.disk_pauses = time.monotonic(), self.disk_pauses + 1
        now = time.monotonic()
        if now - self._last_disk_warning > 10:
            self._last_disk_warning = now
            log.error("%s; keeping data in memory and retrying", message)

    async def _flusher(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if now - last >= self.options.flush_interval or self.sink.pending_rows() > self.options.max_buffered_rows:
                last = now
                await self._flush()
            elif self.sink.buffered_bytes() > self.options.max_buffered_bytes:
                await self._flush(keep_bytes=self.options.max_buffered_bytes / 2)

    async def _flush(self, keep_bytes: float | None = None) -> int | None:
        """Publish everything buffered (or the biggest buffers until at most `keep_bytes` stay);
        each file records the raw-log position its rows reach.

        Returns the rows written, or None when the disk refused (rows stay buffered, up to a cap).
        """
        sources: dict[str, dict[str, str]] = {}
        for conn in self.connections:
            raw = conn.dispatcher.rawlog
            if raw is None:
                continue
            if not self._flush_raw(conn, sync=True):  # the raw log must always be ahead of the tables
                self._shed_rows()
                return None
            part, records = raw.position
            meta = sources_metadata([{"run": raw.run, "conn": conn.index, "part": part, "records": records}])
            for t in conn.topics:
                sources[t.stream.user] = meta
            for sym, holder in self._delisted.items():  # its last rows (the stop event) still need a source
                if holder is conn and sym not in sources:
                    sources[sym] = meta
        taken = self.sink.take() if keep_bytes is None else self.sink.take_largest(keep_bytes)
        source = (lambda key: sources[key[2]]) if sources else None
        self._inflight = asyncio.ensure_future(asyncio.to_thread(self.sink.write, taken, source))
        # shielded: cancelling the flusher at stop must not orphan a write that may put rows back
        written = await asyncio.shield(self._inflight)
        if written is None:
            self._shed_rows()
        else:
            self.disk_refusing_since = None
        return written

    def open_raw_logs(self) -> set[Path]:
        """The raw-log parts the connections hold open now: not finished, so not to be published
        (`objectstore.Shipper.open_logs`; called from the publishing thread, hence the list copy)."""
        return {p for x in list(self.connections) if x.dispatcher.rawlog and (p := x.dispatcher.rawlog.open_path)}

    def unwritten(self) -> Unwritten:
        """After `run()`: the rows still buffered, and how many of them the raw log cannot bring back.

        A raw log that could not be completed (disk full at stop) lacks every record from its oldest
        unwritten one on; rows received from then on (`recv_ts`, column 1 of every table) are lost.
        """
        res = Unwritten(rows=self.sink.pending_rows(), raw=self.options.raw)
        for conn in self.connections:
            raw = conn.dispatcher.rawlog
            since = raw.buffered_since if raw is not None and raw.buffered_records else None
            if raw is not None and since is None:
                continue
            res.raw_records_lost += raw.buffered_records if raw is not None else 0
            if since is not None:
                res.lost_since = since if res.lost_since is None else min(res.lost_since, since)
            for stream in {t.stream for t in conn.topics}:
                for rows in stream.buffers:
                    n = sum(1 for r in rows if since is None or r[1] >= since)
                    res.lost_rows += n
                    res.lost_trades += n if rows is stream.trades else 0
        return res

    def _shed_rows(self) -> None:
        """Past the memory cap, drop the oldest buffered rows of the biggest streams (counted, logged)."""
        excess = self.sink.pending_rows() - self.options.max_pending_rows
        if excess <= 0:
            return
        t = now_us()
        for s in sorted(self.streams.values(), key=lambda s: -len(s.book.rows)):
            for rows, channel in ((s.book.rows, BOOK), (s.trades, TRADES)):
                n = min(excess, len(rows))
                if n <= 0:
                    continue
                del rows[:n]
                excess -= n
                self.dropped_rows += n
                s.event(channel, ERROR, f"disk: dropped {n:,} buffered rows (data dir not writable)", t, Cause.DISK)
                if channel == BOOK:
                    s.book.invalidate()  # the stored book has a hole now: resync
                    for conn in self.connections:
                        topic = conn.dispatcher.book_by_wire.get(s.wire)
                        if topic is not None and topic.stream is s:
                            conn.execute([Resync(topic.name)])


def channels_of(exchange: str, chosen: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """The channels to record, in the venue's order; RecorderError for one the venue does not offer."""
    venue = venues.venue(exchange)
    if chosen is None:
        return venue.default_channels
    bad = [c for c in chosen if c not in venue.channels]
    if bad or not chosen:
        raise RecorderError(f"{venue.name} offers {', '.join(venue.channels)}; not {', '.join(map(repr, bad)) or 'none'}")
    return tuple(c for c in venue.channels if c in chosen)
