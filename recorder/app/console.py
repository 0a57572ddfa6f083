"""What `recorder run` shows while it records: a live table on a terminal, one plain status line per
interval anywhere else (systemd, Docker, a pipe), and every line as JSON with `--log-format json`.

Everything here is computed when the display refreshes, from state the recorder already holds (row
buffers, counters, topic flags): nothing is added to the per-message path. Rates are differences of
counters between two refreshes; lag (exchange time to receive time) comes from the newest rows
received since the previous refresh, at most `SAMPLE` per stream, so a refresh costs the same at
10 or 50,000 messages per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from recorder import output
from recorder.errors import RecorderError
from recorder.model import BOOK, ERROR, Cause

if TYPE_CHECKING:
    from recorder.collector import Collector
    from recorder.session.stream import Stream

LOG_FORMATS = ("text", "json")
STATUS_ROWS = 20  # past this many streams the table shows an aggregate row and the worst streams only
CONNECTION_ROWS = 20  # likewise for connections
SAMPLE = 64  # newest rows per buffer and refresh that lag is computed from (fewer past 300 streams)
SAMPLE_BUDGET = 20_000  # rows per refresh over all streams, at most
NAMED = 5  # streams named in a status line's "not live" and "behind" lists

# Worst first: how a stream that is not recording normally is ranked in the table.
STATES = ("down", "refused", "silent", "resyncing", "syncing", "subscribing", "connecting", "delisted", "live")
_RANK = {s: i for i, s in enumerate(STATES)}


@dataclass
class _Settings:
    log_format: str = "text"
    status_interval: float = 10.0


settings = _Settings()


def configure(log_format: str = "text", status_interval: float = 10.0) -> None:
    """Set how this process prints (`--log-format`, `--status-interval`); `json` also turns the
    `logging` records (warnings from connections, the disk, polls) into JSON lines on stderr."""
    log_format = log_format.lower()  # as exchange names and symbols: any case
    if log_format not in LOG_FORMATS:
        raise RecorderError(f"--log-format must be text or json, not {log_format!r}")
    if not status_interval > 0:
        raise RecorderError(f"--status-interval must be a positive number of seconds, not {status_interval:g}")
    settings.log_format, settings.status_interval = log_format, status_interval
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter("%(levelname)s %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)


def json_logs() -> bool:
    return settings.log_format == "json"


def json_line(level: str, msg: str, fields: dict[str, Any] | None = None, ts: float | None = None) -> str:
    """One log line as a JSON object: `ts` (UTC, ISO-8601), `level`, `msg`, then the fields."""
    when = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    doc: dict[str, Any] = {"ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "level": level, "msg": msg}
    for k, v in (fields or {}).items():
        doc.setdefault(k, v)
    return json.dumps(doc, default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """`logging` records as `json_line`s; a traceback is a field (one line still: JSON escapes it)."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {"logger": record.name}
        if record.exc_info:
            fields["traceback"] = self.formatException(record.exc_info)
        return json_line(record.levelname.lower(), record.getMessage(), fields, record.created)


class Printer:
    """Where `recorder run` says things (start-up, recovery, status lines, summary): a line on stderr,
    never wrapped or cut however narrow the terminal (or absent one), or a JSON line.

    `print` takes rich's keyword arguments too, so it stands in wherever a Console's print did."""

    def __init__(self) -> None:
        self.rich = output.console(stderr=True)
        self.rich.on_broken_pipe = self._gone  # type: ignore[method-assign]  # rich's own would exit

    def print(self, msg: object = "", *, level: str = "info", fields: dict[str, Any] | None = None, **_rich: Any) -> None:
        if json_logs():
            try:
                sys.stderr.write(json_line(level, str(msg), fields) + "\n")
                sys.stderr.flush()
            except BrokenPipeError:
                self._gone()
        else:
            self.rich.print(msg if not isinstance(msg, str) else Text(msg), soft_wrap=True, highlight=False)

    def _gone(self) -> None:
        """The reader of the log went away (`| head -1`, a log shipper that died): a recorder goes on
        recording, and what it would have said from then on goes to /dev/null."""
        self.rich.quiet = True
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stderr.fileno())
            os.close(devnull)


def error_line(message: str, console: Console) -> None:
    """The one `error:` line a command ends with (a JSON line with `--log-format json`)."""
    if json_logs():
        sys.stderr.write(json_line("error", message) + "\n")
        sys.stderr.flush()
    else:
        console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)


# -- the numbers -----------------------------------------------------------------------------------


@dataclass
class StreamStatus:
    symbol: str
    state: str = "connecting"
    msg_s: float | None = None  # trades + book updates per second since the previous refresh
    lag_p50: float | None = None  # ms, exchange time to receive time
    lag_p99: float | None = None
    gaps: int = 0  # sequence gaps and crossed books
    trades: int = 0
    seq: int | None = None
    book: object = field(default=None, repr=False)  # the stream's BookSync: top of book for shown rows only


@dataclass
class Status:
    """One refresh of one collector: every stream, worst first, and the totals."""

    exchange: str
    elapsed: float
    streams: list[StreamStatus]  # worst first
    states: Counter = field(default_factory=Counter)
    msg_s: float | None = None
    frames_s: float | None = None
    lag_p50: float | None = None
    lag_p99: float | None = None
    gaps: int = 0
    trades: int = 0
    frames: int = 0
    topics_acked: int = 0
    topics_total: int = 0
    connections_up: int = 0
    connections: int = 0
    reconnects: int = 0
    errors: int = 0
    buffered_rows: int = 0
    files: int = 0
    books_valid: int = 0
    subscribed_in: float | None = None
    conn_rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # worst first

    def fields(self) -> dict[str, Any]:
        """The status line's numbers, for a JSON log line."""
        return {
            "exchange": self.exchange,
            "elapsed_s": round(self.elapsed, 1),
            "markets": len(self.streams),
            "states": dict(self.states),
            "msg_per_s": _round(self.msg_s),
            "frames_per_s": _round(self.frames_s),
            "lag_p50_ms": _round(self.lag_p50),
            "lag_p99_ms": _round(self.lag_p99),
            "gaps": self.gaps,
            "trades": self.trades,
            "topics_acked": self.topics_acked,
            "topics_total": self.topics_total,
            "connections_up": self.connections_up,
            "connections": self.connections,
            "reconnects": self.reconnects,
            "errors": self.errors,
            "buffered_rows": self.buffered_rows,
            "files": self.files,
            "not_live": [{"symbol": s.symbol, "state": s.state} for s in self.streams if s.state != "live"][:50],
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values.sort()
    return values[min(len(values) - 1, int(q * len(values)))]


@dataclass
class _Seen:
    """A stream's counters at the previous refresh."""

    trades: int = 0
    book_rows: int = 0
    change: tuple = ()
    changed_at: float = 0.0
    msg_s: float | None = None
    lag: tuple[float | None, float | None] = (None, None)
    refused: bool = False
    events: int = 0


class Monitor:
    """Turns one collector's state into a `Status` at each refresh (remembers the previous one)."""

    def __init__(self, collector: Collector, start: float | None = None) -> None:
        self.c = collector
        self.start = time.monotonic() if start is None else start
        self.last = time.monotonic()
        self.seen: dict[str, _Seen] = {}
        self.frames = {x.index: x.frames for x in collector.connections}
        self.frames_s: float | None = None
        for sym, s in collector.streams.items():
            self.seen[sym] = _Seen(s.trade_count, len(s.book.rows), self._change(s), self.last)

    @staticmethod
    def _change(s: Stream) -> tuple:
        """What moves when market data arrives (not the snapshot cadence, not events)."""
        b = s.book
        return s.trade_count, b.seq, b.last_ts, b.snapshots

    def sample(self) -> Status:
        c, now = self.c, time.monotonic()
        dt = now - self.last
        self.last = now
        silent_after = max(c.options.silence_timeout, 2 * dt)
        topics: dict[str, list] = {}
        up = {x.index: x.ws is not None and not x.ws.closed for x in c.connections}
        for x in c.connections:
            for tp in x.topics:
                topics.setdefault(tp.stream.user, []).append((x, tp))
        delisted = getattr(c, "_delisted", {})  # the collector's record of markets no longer listed
        per = max(4, min(SAMPLE, SAMPLE_BUDGET // max(1, len(c.streams))))
        all_lags: list[float] = []
        rows: list[StreamStatus] = []
        for sym, s in c.streams.items():
            seen = self.seen.setdefault(sym, _Seen(changed_at=now))
            lags = self._lags(s, seen, per)
            msgs = (s.trade_count - seen.trades) + self._book_updates(s, seen, per)
            if dt >= 0.05:
                alpha = min(1.0, dt / 5.0)  # smooth over ~5 s: a 0.5 s refresh would flicker
                rate = msgs / dt
                seen.msg_s = rate if seen.msg_s is None else seen.msg_s + alpha * (rate - seen.msg_s)
            seen.trades, seen.book_rows = s.trade_count, len(s.book.rows)
            change = self._change(s)
            if change != seen.change:
                seen.change, seen.changed_at = change, now
            if lags:
                all_lags.extend(lags)
                seen.lag = (_pct(lags, 0.5), _pct(lags, 0.99))
            self._scan_events(s, seen)
            st = StreamStatus(sym, msg_s=seen.msg_s, gaps=s.book.gaps, trades=s.trade_count, seq=s.book.seq)
            st.lag_p50, st.lag_p99 = seen.lag
            st.state = self._state(s, topics.get(sym, []), sym in delisted, seen, now - seen.changed_at > silent_after, up)
            st.book = s.book
            rows.append(st)
        rows.sort(key=_badness)
        out = Status(c.exchange, now - self.start, rows)
        out.states = Counter(r.state for r in rows)
        rates = [r.msg_s for r in rows if r.msg_s is not None]
        out.msg_s = sum(rates) if rates else None
        out.lag_p50, out.lag_p99 = _pct(all_lags, 0.5), _pct(all_lags, 0.99)
        out.gaps = sum(r.gaps for r in rows)
        out.trades = sum(r.trades for r in rows)
        out.books_valid = sum(s.book.valid for s in c.streams.values())
        self._connections(out, dt)
        out.topics_acked, out.topics_total = c.topics_acked(), c.topics_total()
        out.errors, out.buffered_rows, out.files = c.errors, c.sink.pending_rows(), c.sink.files_written
        out.subscribed_in = c.subscribed_in
        return out

    @staticmethod
    def _lags(s: Stream, seen: _Seen, per: int) -> list[float]:
        """Exchange-to-receive lag (ms) of the newest trades and book updates since the last refresh."""
        lags = []
        new_trades = min(per, s.trade_count - seen.trades, len(s.trades))
        if new_trades > 0:
            lags += [(r[1] - r[0]) / 1000 for r in s.trades[-new_trades:]]
        rows = s.book.rows
        new = len(rows) - seen.book_rows if len(rows) >= seen.book_rows else len(rows)  # shorter: flushed
        if new > 0:
            last = None
            for r in rows[-min(per, new):]:
                if r[2] != last or r[2] is None:  # one per update, not one per price level
                    last = r[2]
                    lags.append((r[1] - r[0]) / 1000)
        return lags

    @staticmethod
    def _book_updates(s: Stream, seen: _Seen, per: int) -> int:
        """Book updates since the last refresh: new rows over rows per update in the newest `per`
        (a flush in between empties the buffer: the rows before it are not counted, once a flush)."""
        rows = s.book.rows
        new = len(rows) - seen.book_rows if len(rows) >= seen.book_rows else len(rows)
        if new <= 0:
            return 0
        tail = rows[-min(per, new):]
        updates = len({(r[1], r[2]) for r in tail})
        return round(new * updates / len(tail))

    @staticmethod
    def _scan_events(s: Stream, seen: _Seen) -> None:
        """A refusal leaves an `error` event (cause `refused`) and the topic unacknowledged; any
        later event of the stream (an ack, a snapshot) ends that state."""
        n = len(s.events)
        if n == seen.events:
            return
        new = n - seen.events if n > seen.events else n
        seen.events = n
        for row in s.events[-min(new, 8):]:
            if row[3] == ERROR and row[5] == Cause.REFUSED:
                seen.refused = True
            elif row[3] != ERROR:
                seen.refused = False

    @staticmethod
    def _state(s: Stream, topics: list, delisted: bool, seen: _Seen, quiet: bool, up: dict) -> str:
        if delisted:
            return "delisted"
        acked, book = True, False
        for x, tp in topics:
            if not up[x.index]:
                return "down" if x.reconnects else "connecting"
            acked = acked and tp.acked
            book = book or tp.channel == BOOK
        if not acked:
            return "refused" if seen.refused else "subscribing"
        if book and not s.book.valid:
            return "resyncing" if s.book.snapshots else "syncing"
        return "silent" if quiet else "live"

    def _connections(self, out: Status, dt: float) -> None:
        frames, conn_rows = 0, []
        for x in self.c.connections:
            prev = self.frames.get(x.index, 0)
            frames += x.frames - prev if x.frames >= prev else x.frames  # fewer: a new socket counts afresh
            self.frames[x.index] = x.frames
            up = x.ws is not None and not x.ws.closed
            acked = sum(tp.acked for tp in x.topics)
            out.connections_up += up
            out.reconnects += x.reconnects
            out.frames += x.frames
            rank = (up, acked == len(x.topics), x.index)
            conn_rows.append((rank, (str(x.index), "up" if up else "down", f"{acked}/{len(x.topics)}",
                                     str(x.reconnects), f"{x.frames:,}")))
        out.connections = len(self.c.connections)
        if dt >= 0.05:
            self.frames_s = frames / dt
        out.frames_s = self.frames_s
        out.conn_rows = [r for _, r in sorted(conn_rows, key=lambda r: r[0])]
        if len(out.conn_rows) <= CONNECTION_ROWS:
            out.conn_rows.sort(key=lambda r: int(r[0]))


BEHIND_MS = 1000.0  # a lag p99 past this ranks a live stream before any count of gaps


def _badness(s: StreamStatus) -> tuple:
    """Not live first (worst state first), then those more than `BEHIND_MS` behind (most first),
    then the most gaps, then the most behind: a few ms of lag is noise next to a gap."""
    lag = s.lag_p99 if s.lag_p99 is not None else float("-inf")
    return (_RANK.get(s.state, 0), -(lag if lag >= BEHIND_MS else 0.0), -s.gaps, -lag, s.symbol)


# -- the words -------------------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f} ms" if abs(x) < 10_000 else f"{x / 1000:,.1f} s"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}" if x < 10 else f"{x:,.0f}"


def _top(sync) -> str:
    if sync is None or not sync.valid:
        return "-"
    return f"{sync.book.best_bid()} / {sync.book.best_ask()}"


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _states(counts: Counter) -> str:
    return ", ".join(f"{counts[s]:,} {s}" for s in STATES if counts.get(s))


def table(st: Status, rows: int = STATUS_ROWS) -> Group:
    """The live table: every stream, or (past `rows` streams) an aggregate row and the worst `rows`;
    then the connections (the worst `CONNECTION_ROWS` past that many)."""
    t = Table(title=f"recorder · {st.exchange} · {st.elapsed:,.0f} s", expand=False)
    for col in ("symbol", "state", "msg/s", "lag p50", "lag p99", "gaps", "trades", "book seq", "top of book"):
        t.add_column(col, no_wrap=True, justify="right" if col in ("msg/s", "lag p50", "lag p99", "gaps", "trades") else "left")
    shown = st.streams
    if len(shown) > rows:
        t.add_row(f"all {len(shown):,}", _states(st.states), _rate(st.msg_s), _ms(st.lag_p50), _ms(st.lag_p99),
                  f"{st.gaps:,}", f"{st.trades:,}", "", "", style="bold", end_section=True)
        shown = shown[:rows]
    else:
        shown = sorted(shown, key=lambda s: s.symbol)
    for s in shown:
        style = "" if s.state == "live" else "yellow"
        t.add_row(s.symbol, Text(s.state, style=style), _rate(s.msg_s), _ms(s.lag_p50), _ms(s.lag_p99),
                  f"{s.gaps:,}", f"{s.trades:,}", str(s.seq or "-"), _top(s.book))
    if len(st.streams) > len(shown):
        rest = Counter(s.state for s in st.streams[len(shown):])
        t.add_row(f"... {len(st.streams) - len(shown):,} more", _states(rest), "", "", "", "", "", "", "")
    full = f"all subscribed in {st.subscribed_in:.1f} s" if st.subscribed_in is not None else "subscribing"
    t.caption = (
        f"{len(st.streams):,} markets · books valid {st.books_valid:,}"
        f" · topics acked {st.topics_acked:,}/{st.topics_total:,} ({full}) · frames {st.frames:,} "
        f"({_rate(st.frames_s)}/s) · reconnects {st.reconnects} · errors {st.errors} · "
        f"buffered rows {st.buffered_rows:,} · files {st.files}"
    )
    conns = Table(title="connections", expand=False)
    for col in ("conn", "state", "topics acked", "reconnects", "frames"):
        conns.add_column(col, no_wrap=True)
    for r in st.conn_rows[:CONNECTION_ROWS]:
        conns.add_row(*r)
    if len(st.conn_rows) > CONNECTION_ROWS:
        conns.add_row(f"... {len(st.conn_rows) - CONNECTION_ROWS:,} more", "", "", "", "")
    return Group(t, conns)


def line(st: Status) -> str:
    """The one plain status line of an interval (no table, no colour): totals, then the streams
    that are not live and the ones most behind, by name."""
    parts = [
        f"status {st.exchange} {st.elapsed:,.0f} s: {_n(len(st.streams), 'market')} ({_states(st.states)})",
        f"{_rate(st.msg_s)} msg/s",
        f"lag p50 {_ms(st.lag_p50)} p99 {_ms(st.lag_p99)}",
        f"gaps {st.gaps:,}",
        f"trades {st.trades:,}",
        f"topics acked {st.topics_acked:,}/{st.topics_total:,}",
        f"connections up {st.connections_up}/{st.connections}",
        f"reconnects {st.reconnects}",
        f"errors {st.errors}",
        f"buffered rows {st.buffered_rows:,}",
        f"files {st.files}",
    ]
    bad = [s for s in st.streams if s.state != "live"]
    if bad:
        more = f" (+{len(bad) - NAMED:,} more)" if len(bad) > NAMED else ""
        parts.append("not live: " + ", ".join(f"{s.symbol} {s.state}" for s in bad[:NAMED]) + more)
    behind = sorted((s for s in st.streams if s.lag_p99 is not None), key=lambda s: -(s.lag_p99 or 0))[:NAMED]
    if len(st.streams) > 1 and behind:
        parts.append("most behind: " + ", ".join(f"{s.symbol} p99 {_ms(s.lag_p99)}" for s in behind))
    return " · ".join(parts)


# -- the loops -------------------------------------------------------------------------------------


async def status_lines(printer: Printer, monitors: list[Monitor], interval: float) -> None:
    """Print one status line per collector every `interval` seconds (until cancelled)."""
    while True:
        await asyncio.sleep(interval)
        for m in monitors:
            if m.c.stopping.is_set():  # sockets are closing: the summary line follows
                continue
            st = m.sample()
            printer.print(line(st), fields=st.fields())


async def live_table(live, monitors: list[Monitor], period: float = 0.5, share: float = 0.05) -> None:
    """Refresh a rich `Live` (made with auto_refresh=False) with every collector's table until
    cancelled: every `period` s, or less often when a refresh costs more than `share` of the time
    (thousands of markets on a busy machine): the display never takes the recorder's CPU."""
    wait = period
    while True:
        await asyncio.sleep(wait)
        if any(m.c.stopping.is_set() for m in monitors):  # keep the last frame from before the stop
            continue
        t0 = time.perf_counter()
        live.update(Group(*(table(m.sample()) for m in monitors)), refresh=True)
        wait = max(period, (time.perf_counter() - t0) / share)
