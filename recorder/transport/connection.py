"""One live websocket: connects, reconnects with backoff, receives frames into its `Dispatcher`,
sends what it is handed (in the venue's words, within the venue's send budget), and runs the
timers: keepalive pings, the stale-stream watchdog, and the `Deadlines` of unanswered requests.
It knows no venue's wire format: the venue turns intents into texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from recorder.model import CONNECT, DISCONNECT, ERROR, Cause
from recorder.session.deadlines import Deadlines, ResyncBackoff
from recorder.session.dispatcher import STALE, Dispatcher, Refused
from recorder.session.stream import now_us
from recorder.transport.http import USER_AGENT
from recorder.transport.limits import SendLimiter, backoff_delay
from recorder.transport.websocket import WebSocket, WebSocketError, connect
from recorder.venues.contract import Intent, Reconnect, Report, Resync, Subscribe

if TYPE_CHECKING:
    from recorder.collector import Collector, Options

log = logging.getLogger("recorder")

WATCHDOG_TICK = 0.25  # seconds between the keepalive loop's checks
PROBE, DEAD = "probe", "dead"


class SilenceWatch:
    """The stale-stream watchdog's arithmetic (no I/O), one tick every `WATCHDOG_TICK` seconds.

    It learns the connection's usual frame rate and says when a silence calls for a probe (a ping)
    and when an unanswered probe means a dead socket. The rate is averaged over ~5 s of ticks (a
    plain mean over the first ones, so there is no warm-up) and frozen at the last tick that saw a
    frame: the silence itself must never teach the watchdog that the stream is slow, or a hung
    socket waits ever longer for its verdict. A quiet market answers the probe, and that pong is a
    frame: the rate learned from then on includes the quiet ticks.
    """

    def __init__(self, opt: Options, now: float) -> None:
        self.opt = opt
        self.rate = 0.0  # frames/s, averaged over ticks
        self.usual = 0.0  # `rate` as of the last tick that saw a frame
        self.ticks = 0
        self.seen = 0
        self.last_tick = now
        self.probe_at: float | None = None

    def tick(self, now: float, frames: int, last_frame: float) -> str | None:
        """PROBE, DEAD or None. `frames` counts the connection's frames, `last_frame` is the
        monotonic time of the last one."""
        fresh, self.seen = frames - self.seen, frames
        self.ticks += 1
        self.rate += max(0.1, 1 / self.ticks) * (fresh / max(now - self.last_tick, 1e-3) - self.rate)
        self.last_tick = now
        if fresh:
            self.usual = self.rate
        if now - last_frame <= self.opt.silence_limit(self.usual):
            self.probe_at = None
            return None
        if self.probe_at is None:
            self.probe_at = now
            return PROBE
        return DEAD if now - self.probe_at > self.opt.probe_timeout else None


@dataclass
class Connection:
    """One live websocket carrying up to the venue's per-connection topic limit."""

    collector: Collector
    dispatcher: Dispatcher
    index: int
    ws: WebSocket | None = None
    limiter: SendLimiter = field(init=False)
    deadlines: Deadlines = field(init=False)
    last_recv: float = 0.0  # monotonic time of the watchdog tick that last saw a new frame
    last_frame_us: int = 0  # its receive time (the end of validity if the socket hangs)
    reconnects: int = 0
    frames: int = 0
    frames_before: int = 0  # frames of the earlier sockets (`recorder.metrics` adds `frames`)
    closed_why: str = ""  # set when we close the socket ourselves (the `disconnect` detail)

    def __post_init__(self) -> None:
        c = self.collector
        self.venue = c.venue
        self.limiter = SendLimiter(*self.venue.limits.send_budget, reserve=2)
        self._resyncing: set[str] = set()  # book topics whose resync texts are still queued
        self.resync_backoff = ResyncBackoff()
        self.topics = self.dispatcher.topics
        opt = c.options
        policy = self.venue.resync
        if opt.resync_timeout is not None:  # the user's override of the venue's first wait
            policy = replace(policy, timeout=opt.resync_timeout, max_wait=max(policy.max_wait, opt.resync_timeout))
        self.deadlines = Deadlines(self.topics, policy, opt.ack_timeout, opt.refused_retry)

    async def send(self, text: str, urgent: bool = False, ws: WebSocket | None = None) -> None:
        """Send within the budget; with `ws`, only on that socket (a send queued for a socket that
        has since been replaced is dropped: the new one subscribes afresh)."""
        await self.limiter.acquire(urgent)
        if self.ws is not None and not self.ws.closed and (ws is None or ws is self.ws):
            if self.dispatcher.rawlog is not None:
                self.dispatcher.rawlog.sent(now_us(), text)
            await self.ws.send_str(text)

    async def _send_all(self, texts: list[str], ws: WebSocket | None, topic: str | None = None) -> None:
        try:
            for text in texts:  # in order: a venue's resync may be two messages (unsubscribe, subscribe)
                await self.send(text, ws=ws)
        finally:
            if topic is not None:
                self._resyncing.discard(topic)

    async def _resync(self, i: Resync, ws: WebSocket | None, delay: float) -> None:
        if delay:
            log.warning("connection %d: %s resynced again and again: next resync in %g s", self.index, i.topic, delay)
            try:
                await asyncio.sleep(delay)
            except BaseException:
                self._resyncing.discard(i.topic)
                raise
            self.deadlines.sent(i, time.monotonic())
        await self._send_all(self.venue.messages(i), ws, i.topic)

    def execute(self, intents: list[Intent | Refused]) -> None:
        """Carry out what the session asked for. Sends go out as tasks (the receive loop never
        waits for the send budget); `Reconnect` closes the socket."""
        now = time.monotonic()
        for i in intents:
            if type(i) is Refused:
                self.deadlines.refused(now)
            elif type(i) is Resync:
                if i.topic in self._resyncing:
                    continue  # one resync of a book at a time: its answer settles both
                self._resyncing.add(i.topic)
                delay = self.resync_backoff.delay(i.topic, now)
                if not delay:
                    self.deadlines.sent(i, now)
                self.collector.spawn(self._resync(i, self.ws, delay))
            elif type(i) is Subscribe:
                self.deadlines.sent(i, now)
                self.collector.spawn(self._send_all(self.venue.messages(i), self.ws))
            elif type(i) is Report:
                self.dispatcher.event(now_us(), None, ERROR, i.detail, i.cause, topic=i.topic)
            elif type(i) is Reconnect:
                self.dispatcher.event(now_us(), i.channel, ERROR, i.detail, i.cause)
                self.closed_why = f"closed by us: {i.detail}"
                if self.ws is not None:
                    self.collector.spawn(self.ws.close())

    async def run(self) -> None:
        c, d = self.collector, self.dispatcher
        attempt = 0
        while not c.stopping.is_set():
            ws = None
            try:
                await c.connect_limiter.acquire()
                ws = await connect(
                    c.ws_url, d.frame, self._on_chunk, self.venue.limits.max_frame_bytes, {"User-Agent": USER_AGENT}
                )
                self.ws = ws
                d.event(now_us(), None, CONNECT, c.ws_url)
                await self._session(ws)
                attempt = 0 if self.frames else attempt + 1
                reason = self.closed_why or f"closed by server (code {ws.close_code})"
            except (WebSocketError, TimeoutError, OSError) as exc:
                reason = str(exc) if isinstance(exc, WebSocketError) else f"{type(exc).__name__}: {exc}".rstrip(": ")
                attempt += 1
            except Exception as exc:  # a bug must cost a reconnect, never the connection for good
                log.exception("connection %d: unexpected error", self.index)
                reason = f"internal error: {type(exc).__name__}: {exc}"
                attempt += 1
            finally:
                self.ws = None
                if ws is not None:
                    ws.shutdown()
            if c.stopping.is_set():
                break
            self.reconnects += 1
            d.event(now_us(), None, DISCONNECT, reason)
            log.warning("connection %d lost: %s; reconnecting", self.index, reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(c.stopping.wait(), backoff_delay(attempt))

    async def _session(self, ws: WebSocket) -> None:
        self.frames_before += self.frames
        self.frames, self.closed_why = 0, ""
        self.deadlines.reset()
        self.dispatcher.take_intents()  # what the old socket wanted is moot
        self._resyncing.clear()
        self.last_recv, self.last_frame_us = time.monotonic(), now_us()
        keepalive = asyncio.create_task(self._keepalive(ws))
        try:
            first = Subscribe(tuple(t.name for t in self.topics))
            self.deadlines.sent(first, time.monotonic())
            await self._send_all(self.venue.messages(first), ws)
            await self._receive(ws)
        finally:
            keepalive.cancel()
            await asyncio.gather(keepalive, return_exceptions=True)

    async def _receive(self, ws: WebSocket) -> None:
        """Frames go from the socket's parser to the dispatcher (`on_frame`) and `_on_chunk`
        without this task: it only waits for the socket's end (or the reason it was given up)."""
        ws.start()
        await ws.wait_closed()

    def _on_chunk(self, recv: int, frames: int) -> None:
        """After each chunk of the socket's bytes that held `frames` whole frames."""
        self.frames += frames
        self.last_frame_us = recv
        if self.dispatcher.intents:
            self.execute(self.dispatcher.take_intents())

    async def _keepalive(self, ws: WebSocket) -> None:
        """Pings, the silence watchdog, and what the deadlines say is due."""
        keep, opt = self.venue.keepalive, self.collector.options
        last_ping = time.monotonic()
        watch = SilenceWatch(opt, last_ping)
        seen = self.frames
        while not ws.closed:
            await asyncio.sleep(WATCHDOG_TICK)
            now = time.monotonic()
            if self.frames != seen:  # to a tick's precision, which `dead_within` allows for: no clock per frame
                seen, self.last_recv = self.frames, now
            verdict = watch.tick(now, self.frames, self.last_recv)
            if verdict is PROBE:  # unusually quiet: ask the server whether it is still there
                last_ping = now
                await self.send(keep.ping, urgent=True)
            elif verdict is DEAD:
                await self._declare_dead(ws, now - self.last_recv, watch.usual)
                return
            if now - last_ping >= keep.interval:
                last_ping = now
                await self.send(keep.ping, urgent=True)
            due = self.deadlines.due(now)
            if due:
                self.execute(due)
                if any(type(i) is Reconnect for i in due):
                    return

    async def _declare_dead(self, ws: WebSocket, silent: float, rate: float) -> None:
        """The silence verdict, on every stream of the connection. Validity ends at the last frame
        received, not now: nothing arrived since, so those seconds were never covered. The event is
        stamped back to that frame (in the raw log too, so a replay writes the same row)."""
        detail = (
            f"{STALE}: no data for {silent:.1f} s, no answer to a ping within "
            f"{self.collector.options.probe_timeout:g} s (usual rate {rate:.1f} frames/s): reconnecting"
        )
        self.dispatcher.event(self.last_frame_us, None, ERROR, detail, Cause.STALE)
        log.warning("connection %d: %s", self.index, detail)
        self.closed_why = f"closed by us: {STALE} (no data for {silent:.1f} s)"
        await ws.close()
