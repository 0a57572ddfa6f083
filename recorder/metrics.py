"""Prometheus metrics and `/healthz` for a running recorder (`recorder run --metrics-port`).

Nothing here runs per message: the receive path already keeps the counters (frames per connection,
accepted trades per stream, one count per event row, rows per published buffer, raw-log bytes per
write), and a scrape reads them (`RecorderCollector.collect`). What a counter cannot say is sampled
by one small task (`Watcher`, every `WATCHDOG_TICK`):

- silence: each connection's frame count feeds a `SilenceWatch` of its own, the stale-stream
  watchdog's arithmetic, so `/healthz` judges a silence by the same learned limit
  (`Options.silence_limit`) as the collector does; unlike the connection's watch it outlives a
  reconnect, so a socket that reconnects to a dead server does not look fresh again;
- topics that stay unacknowledged (a subscription refused again and again) and books that stay
  invalid (a resync that does not come), once a second;
- the exchange-to-receive lag: once a second, the newest row of each stream's `trades` and
  `book_updates` buffer, if it is new, gives one sample of `recv_ts - ts` (rows whose venue gives no
  exchange time carry `ts == recv_ts` and are skipped): at most one sample per stream, channel and
  second, whatever the message rate;
- the spool publisher's count of published files, to date the last publish.

Labels: `exchange` and `channel` (or `table`) by default, summed over the markets, so 1,500
markets cost the same few hundred series as two; `per_symbol` (`--metrics-per-symbol`) adds a
`symbol` label to the per-stream families (trades, rows, gaps, resyncs, errors, buffered rows).
Connection-level families carry a `connection` label (one connection holds many markets).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector as PromCollector

from recorder.collector import Collector
from recorder.errors import RecorderError
from recorder.model import BOOK, DISCONNECT, ERROR, GAP, RESYNC, TRADES
from recorder.session.stream import now_us
from recorder.storage.objectstore import Shipper
from recorder.transport.connection import WATCHDOG_TICK, Connection, SilenceWatch

log = logging.getLogger("recorder")

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SAMPLE_INTERVAL = 1.0  # seconds between two looks at each book's validity and each stream's newest rows
TABLES = ("trades", "book_updates", "book_snapshots", "events", "derivative_ticker")  # `Stream.buffers` order
PUBLISH_GRACE = 60.0  # seconds of failed publishing (nothing uploaded) before /healthz says so
HEALTH_LINES = 20  # problems named in a /healthz body (the count is always there)


@dataclass
class MetricsConfig:
    """`--metrics-port` (0: any free port), `--metrics-host`, `--metrics-per-symbol`."""

    port: int
    host: str = "127.0.0.1"
    per_symbol: bool = False


@dataclass
class _ConnWatch:
    """What the watcher remembers of one connection."""

    watch: SilenceWatch
    total: int = 0  # frames seen so far (all sockets)
    last_seen: float = 0.0  # monotonic time of the tick that saw its last new frame (or the start)


@dataclass
class _Lag:
    """A histogram kept by hand (bucket counts of `LAG_BUCKETS`, then +Inf) for one (exchange, channel)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LAG_BUCKETS, seconds)] += 1
        self.total += seconds


class Watcher:
    """The sampled state the counters cannot give: silences, books invalid for long, lag, publishes."""

    def __init__(self, collectors: list[Collector], shipper: Shipper | None = None) -> None:
        self.collectors = collectors
        self.shipper = shipper
        self.conns: dict[int, _ConnWatch] = {}  # id(Connection) ->
        self.invalid_since: dict[int, float] = {}  # id(Topic) -> monotonic time first seen unacked / invalid
        self.lag: dict[tuple[str, str], _Lag] = {}
        self._last_rows: dict[tuple[int, int], tuple] = {}  # (id(stream), buffer index) -> newest row sampled
        self._last_sample = 0.0
        self.published = 0
        self.last_publish: float | None = None  # wall time the publisher's count last grew

    def conn(self, c: Collector, x: Connection, now: float) -> _ConnWatch:
        """The connection's watch; one first seen now starts its silence now (not at process start:
        preparing 1,500 markets takes a while, and no socket was silent then)."""
        w = self.conns.get(id(x))
        if w is None:
            w = self.conns[id(x)] = _ConnWatch(SilenceWatch(c.options, now), last_seen=now)
        return w

    def tick(self, now: float) -> None:
        for c in self.collectors:
            for x in list(c.connections):
                w = self.conn(c, x, now)
                total = x.frames_before + x.frames
                if total != w.total:
                    w.total, w.last_seen = total, now
                w.watch.tick(now, total, w.last_seen)
        if now - self._last_sample >= SAMPLE_INTERVAL:
            self._last_sample = now
            self._sample_topics(now)
            self._sample_lag()
        if self.shipper is not None:
            res = self.shipper.publisher.result
            n = res.uploaded + res.already
            if n != self.published:
                self.published, self.last_publish = n, time.time()

    def _sample_topics(self, now: float) -> None:
        """Topics unacknowledged (a subscription refused or unanswered) or, for a book, invalid,
        since when, to a `SAMPLE_INTERVAL`."""
        invalid = self.invalid_since
        for c in self.collectors:
            for x in list(c.connections):
                for tp in list(x.topics):
                    if tp.acked and (tp.channel != BOOK or tp.stream.book.valid):
                        invalid.pop(id(tp), None)
                    else:
                        invalid.setdefault(id(tp), now)

    def _sample_lag(self) -> None:
        last = self._last_rows
        for c in self.collectors:
            for s in list(c.streams.values()):
                for i, channel, rows in ((0, TRADES, s.trades), (1, BOOK, s.book.rows)):
                    if not rows:
                        continue
                    row = rows[-1]
                    key = (id(s), i)
                    if last.get(key) == row:  # the same newest row: nothing new (book rows are made on reading)
                        continue
                    last[key] = row
                    ts, recv = row[0], row[1]
                    if ts != recv:  # equal: the venue gave no exchange time
                        lag = self.lag.get((c.exchange, channel))
                        if lag is None:
                            lag = self.lag[(c.exchange, channel)] = _Lag()
                        lag.observe((recv - ts) / 1e6)

    def limit(self, c: Collector, x: Connection, now: float) -> float:
        """The connection's learned silence limit (seconds), as the collector's watchdog computes it."""
        return c.options.silence_limit(self.conn(c, x, now).watch.usual)

    def problems(self, now: float) -> list[str]:
        """Why the recorder is not healthy (empty: healthy). A stream is unhealthy once it has had no
        frame for longer than its connection's learned silence limit plus the probe's timeout, or once a
        topic of it has gone unacknowledged (refused, say, while heartbeats keep the socket alive) or its
        book invalid for longer than that limit; a collector is while
        its disk refuses writes, or while it has no stream yet (starting)."""
        out = []
        sh = self.shipper
        if sh is not None and sh.failing_since is not None and now - sh.failing_since > PUBLISH_GRACE:
            why = sh.errors[-1] if sh.errors else "failed"
            out.append(f"publishing to {sh.publisher.url} failing for {now - sh.failing_since:.0f} s "
                       f"(files wait in the spool {sh.spool}): {why}")
        refused = list(sh.refused.values()) if sh is not None else []  # one C call: the shipper's thread writes it
        if refused:
            first, _ = refused[0]
            more = f" and {len(refused) - 1} more" if len(refused) > 1 else ""
            out.append(f"{len(refused)} file(s) refused by {sh.publisher.url}, kept in the spool {sh.spool}: "
                       f"{first}{more}")
        for c in self.collectors:
            if not c.connections:
                out.append(f"{c.exchange}: starting (no stream subscribed yet)")
            if c.disk_refusing_since is not None:
                why = c.write_errors[-1] if c.write_errors else "write failed"
                out.append(f"{c.exchange}: disk refusing writes for {now - c.disk_refusing_since:.1f} s ({why})")
            for x in list(c.connections):
                if not x.topics:  # every market of it delisted
                    continue
                limit = self.limit(c, x, now)
                silent = now - self.conn(c, x, now).last_seen
                # past its limit a quiet connection is probed with a ping, whose answer is a frame:
                # silent only when that answer is overdue too (the watchdog's own `dead` verdict)
                if silent > limit + c.options.probe_timeout:
                    names = sorted({tp.stream.user for tp in x.topics})
                    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                    out.append(f"{c.exchange} connection {x.index} ({shown}): no data for {silent:.1f} s "
                               f"(its silence limit {limit:.1f} s + {c.options.probe_timeout:g} s for a ping's answer)")
                    continue
                for tp in x.topics:
                    since = self.invalid_since.get(id(tp))
                    if since is not None and now - since > limit:
                        what = "not valid" if tp.channel == BOOK and tp.acked else "not subscribed"
                        out.append(f"{c.exchange} {tp.stream.user} {tp.channel}: {what} for {now - since:.1f} s "
                                   f"(its silence limit {limit:.1f} s)")
        return out


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class RecorderCollector(PromCollector):
    """Reads the recorder's own counters at scrape time (prometheus_client's custom-collector API)."""

    def __init__(self, watcher: Watcher, per_symbol: bool = False) -> None:
        self.w = watcher
        self.per_symbol = per_symbol

    def collect(self) -> Iterator[Metric]:
        yield from self._streams()
        yield from self._connections()
        yield from self._storage()
        yield from self._lag()
        problems = self.w.problems(time.monotonic())
        g = _gauge("recorder_healthy", "1 when /healthz answers 200, else 0", [])
        g.add_metric([], 0 if problems else 1)
        yield g
        g = _gauge("recorder_health_problems", "streams (and disks) /healthz reports as unhealthy", [])
        g.add_metric([], len(problems))
        yield g

    def _streams(self) -> Iterator[Metric]:
        per = self.per_symbol
        sym = ["symbol"] if per else []
        ch, tb = ["exchange", *sym, "channel"], ["exchange", *sym, "table"]
        trades = _counter("recorder_trades", "trades accepted (rows of `trades`; repeats dropped)", ["exchange", *sym])
        dups = _counter("recorder_duplicate_trades_dropped", "trades a venue sent again after a reconnect, dropped",
                        ["exchange", *sym])
        events = {
            GAP: _counter("recorder_gaps", "sequence gaps (`gap` events)", ch),
            RESYNC: _counter("recorder_resyncs", "book snapshots taken, first ones included (`resync` events)", ch),
            ERROR: _counter("recorder_errors", "`error` events (decode, refused, crossed, stale stream, disk...)", ch),
            DISCONNECT: _counter("recorder_stream_disconnects", "`disconnect` events (one per stream per reconnect)",
                                 ch),
        }
        written = _counter("recorder_rows_written", "rows in published Parquet files", tb)
        buffered = _gauge("recorder_buffered_rows", "rows in memory, not yet in a file", tb)
        valid = _gauge("recorder_books_valid", "books validated and in sync", ["exchange"])
        markets = _gauge("recorder_markets", "markets recorded", ["exchange"])
        for c in self.w.collectors:
            ex, done = c.exchange, c.sink.written_by_key
            streams = list(c.streams.values())
            valid.add_metric([ex], sum(s.book.valid for s in streams))
            markets.add_metric([ex], len(streams))
            if per:  # one sample per market (and channel or table): no summing
                for s in streams:
                    trades.add_metric([ex, s.user], s.trade_count)
                    dups.add_metric([ex, s.user], s.duplicates_dropped)
                    for (channel, event), n in list(s.event_counts.items()):
                        if event in events:
                            events[event].add_metric([ex, s.user, channel or ""], n)
                    for table, rows in zip(TABLES, s.buffers, strict=False):
                        buffered.add_metric([ex, s.user, table], len(rows))
                        written.add_metric([ex, s.user, table], done.get((table, ex, s.user), 0))
                continue
            trades.add_metric([ex], sum(s.trade_count for s in streams))
            dups.add_metric([ex], sum(s.duplicates_dropped for s in streams))
            for channel in c.channels:  # a stream's events always name its channel
                for event, fam in events.items():
                    key = (channel, event)
                    fam.add_metric([ex, channel], sum(s.event_counts.get(key, 0) for s in streams))
            bufs = [s.buffers for s in streams]
            for i, table in enumerate(TABLES):
                lists = [b[i] for b in bufs if len(b) > i]  # derivative_ticker: only streams that have it
                if lists:
                    buffered.add_metric([ex, table], sum(map(len, lists)))
                    written.add_metric([ex, table], sum(done.get((table, ex, s.user), 0) for s in streams))
        yield from (trades, dups, *events.values(), written, buffered, valid, markets)

    def _connections(self) -> Iterator[Metric]:
        lab = ["exchange", "connection"]
        msgs = _counter("recorder_messages", "websocket frames received (a frame may carry several markets)", lab)
        rec = _counter("recorder_reconnects", "reconnects of the connection", lab)
        perr = _counter("recorder_protocol_errors", "frames or answers the venue module could not read or that "
                        "reported an error", lab)
        age = _gauge("recorder_last_message_age_seconds", "seconds since the connection's last frame", lab)
        limit = _gauge("recorder_silence_limit_seconds", "the connection's learned silence limit (/healthz)", lab)
        up = _gauge("recorder_connection_up", "1 while the websocket is open", lab)
        topics = _gauge("recorder_topics_acked", "subscribed topics the venue acknowledged", lab)
        now = time.monotonic()
        for c in self.w.collectors:
            for x in list(c.connections):
                labels = [c.exchange, str(x.index)]
                w = self.w.conn(c, x, now)
                msgs.add_metric(labels, x.frames_before + x.frames)
                rec.add_metric(labels, x.reconnects)
                perr.add_metric(labels, x.dispatcher.errors)
                age.add_metric(labels, now - w.last_seen)
                limit.add_metric(labels, self.w.limit(c, x, now))
                up.add_metric(labels, int(x.ws is not None and not x.ws.closed))
                topics.add_metric(labels, sum(tp.acked for tp in x.topics))
        yield from (msgs, rec, perr, age, limit, up, topics)

    def _storage(self) -> Iterator[Metric]:
        ex = ["exchange"]
        files = _counter("recorder_files_written", "Parquet files published into the data dir (or spool)", ex)
        nbytes = _gauge("recorder_buffered_bytes", "estimated memory of the buffered rows", ex)
        raw = _counter("recorder_raw_log_bytes", "bytes written to raw logs (zstd)", ex)
        rawbuf = _gauge("recorder_raw_log_buffered_bytes", "raw-log bytes in memory, not yet written", ex)
        pauses = _counter("recorder_disk_full_pauses", "times the disk started refusing writes (rows wait in memory)", ex)
        refusing = _gauge("recorder_disk_refusing_writes", "1 while the disk refuses writes", ex)
        dropped = _counter("recorder_rows_dropped", "buffered rows dropped past the memory cap while the disk "
                           "refused writes", ex)
        for c in self.w.collectors:
            logs = [x.dispatcher.rawlog for x in list(c.connections) if x.dispatcher.rawlog is not None]
            files.add_metric([c.exchange], c.sink.files_written)
            nbytes.add_metric([c.exchange], c.sink.buffered_bytes())
            raw.add_metric([c.exchange], sum(r.bytes_written for r in logs))
            rawbuf.add_metric([c.exchange], sum(r.buffered_bytes for r in logs))
            pauses.add_metric([c.exchange], c.disk_pauses)
            refusing.add_metric([c.exchange], int(c.disk_refusing_since is not None))
            dropped.add_metric([c.exchange], c.dropped_rows)
        yield from (files, nbytes, raw, rawbuf, pauses, refusing, dropped)
        shipper = self.w.shipper
        if shipper is not None:
            res = shipper.publisher.result
            pub = _counter("recorder_files_published", "files uploaded to the object store (or found there)", [])
            pub.add_metric([], res.uploaded + res.already)
            pbytes = _counter("recorder_published_bytes", "bytes uploaded to the object store", [])
            pbytes.add_metric([], res.bytes)
            perr = _counter("recorder_publish_errors", "failed publishing attempts (a failing store stops "
                            "the sweep; a file refused for good is set aside)", [])
            perr.add_metric([], shipper.failures)
            refused = _gauge("recorder_publish_refused_files", "files the object store refused for good (their "
                             "key holds other content, or a damaged file): kept in the spool, tried again once a minute", [])
            refused.add_metric([], len(shipper.refused))
            yield from (pub, pbytes, perr, refused)
            if self.w.last_publish is not None:
                age = _gauge("recorder_last_publish_age_seconds", "seconds since a file was last published "
                             f"(to a {WATCHDOG_TICK:g} s tick)", [])
                age.add_metric([], max(0.0, time.time() - self.w.last_publish))
                yield age

    def _lag(self) -> Iterator[Metric]:
        h = HistogramMetricFamily(
            "recorder_receive_lag_seconds",
            f"receive time minus exchange time, sampled: the newest row of each stream and channel, "
            f"at most once per {SAMPLE_INTERVAL:g} s",
            labels=["exchange", "channel"],
        )
        for (exchange, channel), lag in sorted(self.w.lag.items()):
            cum, buckets = 0, []
            for bound, n in zip((*LAG_BUCKETS, float("inf")), lag.counts, strict=True):
                cum += n
                buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cum))
            h.add_metric([exchange, channel], buckets, lag.total)
        yield h


class _Frozen:
    """Metric families already collected, in the shape `generate_latest` reads."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class Exporter:
    """`/metrics` and `/healthz` on one port, served by aiohttp in the recorder's own event loop."""

    def __init__(self, collectors: list[Collector], shipper: Shipper | None = None, per_symbol: bool = False) -> None:
        self.watcher = Watcher(collectors, shipper)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RecorderCollector(self.watcher, per_symbol))
        ProcessCollector(registry=self.registry)  # RSS, CPU seconds, open fds (Linux /proc)
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on `host:port` (0: a free port); returns the port."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise RecorderError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        self.port = self._runner.addresses[0][1]
        self._task = asyncio.create_task(self._watch())
        return self.port

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _watch(self) -> None:
        while True:
            try:
                self.watcher.tick(time.monotonic())
            except Exception:  # a bug here must cost a sample, never the recording or the endpoint
                log.exception("metrics watcher")
            await asyncio.sleep(WATCHDOG_TICK)

    async def _metrics(self, request: web.Request) -> web.Response:
        """The recorder's state is read here, in its own loop (no lock needed, nothing changes under
        the read); turning the samples into text, most of a scrape's cost, runs in a thread."""
        families = list(self.registry.collect())
        body = await asyncio.to_thread(generate_latest, _Frozen(families))  # type: ignore[arg-type]
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        problems = self.watcher.problems(time.monotonic())
        body = {
            "status": "unhealthy" if problems else "ok",
            "problems": len(problems),
            "why": problems[:HEALTH_LINES],
            "streams": sum(len(c.streams) for c in self.watcher.collectors),
            "time_us": now_us(),
        }
        return web.Response(status=503 if problems else 200, text=json.dumps(body), content_type="application/json")


async def serve_metrics(
    config: MetricsConfig | None,
    collectors: list[Collector],
    shipper: Shipper | None = None,
    say: Callable[[str, dict], object] = lambda msg, fields: print(msg),
) -> Exporter | None:
    """`recorder run --metrics-port`: start the exporter (None without a config) and say where
    (`say(message, fields)`: a JSON log line carries the port and URLs as fields)."""
    if config is None:
        return None
    exporter = Exporter(collectors, shipper, config.per_symbol)
    port = await exporter.start(config.host, config.port)
    url = f"http://{config.host}:{port}"
    say(f"metrics on {url}/metrics (health: /healthz)", {"port": port, "metrics_url": f"{url}/metrics",
                                                          "healthz_url": f"{url}/healthz"})
    return exporter
