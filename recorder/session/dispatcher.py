"""Everything a connection does with what it receives, minus the socket.

Live connections and `recorder replay` drive the same `Dispatcher`: frames and connection-level
events go in (with their recorded times), rows and events come out, and what the session wants
next (a `Resync` of a book, a retry of refused subscriptions) goes to its outbox, `intents`. A live
connection carries the intents out (the venue words them); replay keeps no outbox, since the
answers are already in the log. With a raw log, every input is captured before it is processed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from recorder import native
from recorder.model import (
    BOOK,
    CONNECT,
    DISCONNECT,
    ERROR,
    GAP,
    RESYNC,
    STOP,
    SUBSCRIBED,
    TRADES,
    Ack,
    BookMessage,
    Cause,
    DerivativeTicker,
    HeldTopics,
    ProtocolError,
    TradeBatch,
)
from recorder.session.outcome import APPLIED, NEED_RESYNC, SNAPSHOT, WAITING, Outcome
from recorder.session.outcome import STALE as DROPPED
from recorder.session.stream import Stream
from recorder.storage.rawlog import BADFRAME, RawLog
from recorder.venues.contract import Codec, Intent, RestPoll, Resync, Subscribe, VenueError

log = logging.getLogger("recorder")

STALE = "stale stream"  # how a silence verdict's `error` detail starts (logs from before `cause` say only this)


@dataclass
class Topic:
    """One subscribed wire topic of a connection, with the session's bookkeeping for it."""

    name: str
    channel: str
    stream: Stream
    acked: bool = False
    sent_at: float = 0.0  # monotonic time its last subscribe went out
    resync_since: float | None = None  # a snapshot is awaited since (monotonic), book topics only
    resync_tries: int = 0


@dataclass(frozen=True, slots=True)
class Refused:
    """Session-internal intent: the exchange refused subscriptions still awaiting their ack."""


def _detail(m: ProtocolError) -> str:
    return f"{m.code}: {m.message}" if m.code else m.message


class _Routing:
    """The per-frame path: frame -> decode -> raw log -> parse -> route -> book engine. This is its
    definition and pure-Python build; `_engine.Routing` is its C build (the same steps), which
    `Dispatcher` runs on when the hot path's C build is adopted (`recorder.native`). What a frame
    rarely needs (an undecodable frame, a book outcome other than applied/waiting/dropped, acks,
    errors) is `DispatcherBase`'s Python in both builds."""

    def frame(self, recv: int, frame: bytes | str) -> None:
        try:
            raw = self._decode(frame)
        except self._decode_errors as exc:
            self._undecodable(recv, frame, exc)
            return
        if self.rawlog is not None:
            self.rawlog.frame(recv, raw)
        self.route(self._parse(raw), recv)  # payload(), inlined: this runs once a frame

    def payload(self, recv: int, raw: bytes | str) -> None:
        self.route(self._parse(raw), recv)

    def route(self, records: list, recv: int) -> None:
        trades_by_wire = self.trades_by_wire
        for m in records:
            if type(m) is BookMessage:
                self._on_book(m, recv)
            elif type(m) is TradeBatch:
                s = trades_by_wire.get(m.symbol)
                if s is not None:
                    s.on_trades(m, recv)
            elif type(m) is DerivativeTicker:
                s = self.other.get((m.channel, m.symbol))
                if s is not None:
                    s.on_ticker(m, recv)
            elif type(m) is Ack:
                self._on_ack(m, recv)
            elif type(m) is HeldTopics:
                self._on_held(m, recv)
            elif type(m) is ProtocolError:
                self._on_error(m, recv)

    def _on_book(self, m: BookMessage, recv: int) -> None:
        topic = self.book_by_wire.get(m.symbol)
        if topic is None:
            return
        if m.ts is None:  # the venue gives no event time: the receive time stands in
            m.ts = recv
        s = topic.stream
        was_valid = s.book.valid
        outcome = s.book.on_message(m, recv)
        if outcome is APPLIED or outcome is WAITING or outcome is DROPPED:
            return
        self._book_outcome(topic, m, recv, outcome, was_valid)


class DispatcherBase:
    """Routes one connection's records to its streams; book outcomes become events and intents.
    (Everything but the per-frame path, which `_Routing` or its C build adds: see `Dispatcher`.)"""

    def __init__(
        self,
        codec: Codec,
        topics: list[Topic],
        depth: int,
        rawlog: RawLog | None,
        live: bool = True,
        polls: tuple[RestPoll, ...] = (),
    ) -> None:
        self.topics = topics
        self.polls = {p.name: p for p in polls}
        self.depth = depth
        self.rawlog = rawlog
        self.live = live  # replay keeps no outbox
        self.intents: list[Intent | Refused] = []
        self._decode, self._decode_errors, self._parse = codec.decode, codec.decode_errors, codec.parse
        self.by_topic = {t.name: t for t in topics}
        self.book_by_wire = {t.stream.wire: t for t in topics if t.channel == BOOK}
        self.trades_by_wire = {t.stream.wire: t.stream for t in topics if t.channel == TRADES}
        self.other = {(t.channel, t.stream.wire): t.stream for t in topics if t.channel not in (BOOK, TRADES)}
        self.errors = 0

    def take_intents(self) -> list[Intent | Refused]:
        out, self.intents = self.intents, []
        return out

    # -- inputs -------------------------------------------------------------------------------

    def _undecodable(self, recv: int, frame: bytes | str, exc: Exception) -> None:
        if self.rawlog is not None:
            self.rawlog.frame(recv, frame, BADFRAME)
        self._on_error(ProtocolError(f"undecodable frame: {exc}", code="decode", kind="decode"), recv)

    def rest(self, recv: int, poll: str, wire: str, doc: object) -> None:
        """A REST poll's answer for one instrument: logged, then routed like a parsed frame."""
        if self.rawlog is not None:
            self.rawlog.rest(recv, poll, wire, doc)
        p = self.polls.get(poll)
        s = self.other.get((p.channel, wire)) if p is not None else None
        if p is None or s is None:
            return
        try:
            records = p.parse(doc, s.inst)
        except (VenueError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            # an answer the venue module cannot read costs that answer only: never the poll, a
            # replay or a crash recovery of this log
            log.warning("unexpected %s answer for %s: %s: %s", poll, wire, type(exc).__name__, exc)
            self.errors += 1
            return
        self.route(records, recv)

    def event(
        self,
        t: int,
        channel: str | None,
        event: str,
        detail: str = "",
        cause: str | None = None,
        topic: str | None = None,
    ) -> None:
        """A connection-level event (connect, disconnect, watchdog error, stop) for its streams, or
        for one topic's stream only."""
        if self.rawlog is not None:
            self.rawlog.event(t, channel, event, detail, cause, topic)
        for tp in self.topics:
            if (channel is None or tp.channel == channel) and (topic is None or tp.name == topic):
                tp.stream.event(tp.channel, event, detail, t, cause)
        if cause == Cause.DELISTED and topic is not None:
            self._retire(topic)  # live and replay alike: nothing of this topic is routed from here on
            return
        if event == ERROR and (cause == Cause.STALE or (cause is None and detail.startswith(STALE))):
            # a silence verdict: validity ended at the last frame, so no snapshot row may claim the
            # book until a new one arrives (here, not in the Connection, so that replay agrees)
            for tp in self.topics:
                if tp.channel == BOOK:
                    tp.stream.book.invalidate()
        if event in (CONNECT, DISCONNECT, STOP):
            for tp in self.topics:
                tp.acked = False
                if tp.channel == BOOK:
                    tp.stream.book.invalidate()
                    tp.resync_since = None
                elif tp.channel == TRADES:
                    tp.stream.arm_replay_guard()

    def _retire(self, name: str) -> None:
        """A delisted market's topic leaves the connection (its header still lists it)."""
        tp = self.by_topic.pop(name, None)
        if tp is None:
            return
        self.topics.remove(tp)  # in place: the Connection holds this list
        key = tp.stream.wire
        if self.book_by_wire.get(key) is tp:
            del self.book_by_wire[key]
        if tp.channel == TRADES and self.trades_by_wire.get(key) is tp.stream:
            del self.trades_by_wire[key]
        self.other.pop((tp.channel, key), None)

    def tick(self, t: int) -> None:
        """The book_snapshots cadence (logged, so replay writes the same snapshot rows)."""
        if self.rawlog is not None:
            self.rawlog.tick(t)
        for topic in self.book_by_wire.values():
            topic.stream.snapshot_row(self.depth, t)

    def resync(self, topic: Topic) -> None:
        """Ask for a fresh snapshot of a book topic (its book is already invalid)."""
        if self.live:
            self.intents.append(Resync(topic.name))

    # -- handling -----------------------------------------------------------------------------

    def _book_outcome(self, topic: Topic, m: BookMessage, recv: int, outcome: Outcome, was_valid: bool) -> None:
        """What a book message that was not simply applied (or waited, or dropped) means."""
        s = topic.stream
        if outcome is SNAPSHOT:
            topic.resync_since, topic.resync_tries = None, 0
            if s.book.valid:
                why = "replaces valid book" if was_valid else "starts book"
                s.event(BOOK, RESYNC, f"snapshot seq={m.seq} {why}", recv)
                s.snapshot_row(self.depth, recv)
            else:
                s.event(BOOK, ERROR, f"crossed snapshot seq={m.seq}", recv, Cause.CROSSED)
                self.resync(topic)
            return
        if outcome in NEED_RESYNC:
            if outcome is Outcome.GAP:
                s.event(BOOK, GAP, f"expected seq {s.book.expected}, got {m.seq}", recv)
            elif outcome is Outcome.CROSSED:
                b, a = s.book.book.best_bid(), s.book.book.best_ask()
                s.event(BOOK, ERROR, f"crossed book at seq {m.seq}: bid {b} >= ask {a}", recv, Cause.CROSSED)
            elif outcome is Outcome.OUT_OF_ORDER:
                detail = f"out-of-order update seq {m.seq} <= local {s.book.seq}: dropped"
                s.event(BOOK, ERROR, detail, recv, Cause.OUT_OF_ORDER)
            elif outcome is Outcome.MALFORMED:
                detail = (f"book message seq {m.seq} has a value no column can hold or a level no book has "
                          f"(a negative, NaN or infinite price or amount; ts {m.ts}): resync")
                s.event(BOOK, ERROR, detail, recv, Cause.DECODE)
            else:
                detail = f"sequence went back to {m.seq} from {s.book.seq} (engine restart?): resync"
                s.event(BOOK, ERROR, detail, recv, Cause.RESTART)
            self.resync(topic)

    def _acked(self, t: Topic, recv: int) -> None:
        if not t.acked:
            t.acked = True
            t.stream.event(t.channel, SUBSCRIBED, t.name, recv)

    def _on_ack(self, m: Ack, recv: int) -> None:
        t = self.by_topic.get(m.topic)
        if t is not None and m.op == "subscribe":
            self._acked(t, recv)

    def _on_held(self, m: HeldTopics, recv: int) -> None:
        """The venue listed every topic the connection holds: those are acked, the others not.

        A valid book whose topic is no longer held gets no more updates: it ends there (an `error`
        event), and the topic is subscribed again. (A book being resynced by unsubscribe + subscribe
        is invalid already: that is the normal way, and says nothing.)"""
        for t in self.topics:
            if t.name in m.topics:
                self._acked(t, recv)
                continue
            t.acked = False
            if t.channel == BOOK and t.stream.book.valid:
                t.stream.book.invalidate()
                detail = f"{t.name} no longer held by the venue: subscribing again"
                t.stream.event(BOOK, ERROR, detail, recv, Cause.EXCHANGE)
                if self.live:
                    self.intents.append(Subscribe((t.name,)))

    def _on_error(self, m: ProtocolError, recv: int) -> None:
        detail = _detail(m)
        t = self.by_topic.get(m.topic) if m.topic else None
        targets = [t] if t else self.topics
        self.errors += 1
        if m.kind == "decode" or m.kind == "parse":
            # An unreadable frame may have carried any of our streams' data.
            for topic in targets:
                topic.stream.event(topic.channel, ERROR, detail, recv, Cause.DECODE)
                if topic.channel == BOOK and topic.stream.book.valid:
                    topic.stream.book.invalidate()
                    self.resync(topic)
        else:
            # A refusal (or an error naming no topic while some await their ack): those topics
            # are subscribed again, after a back-off.
            unacked = [topic for topic in targets if not topic.acked]
            for topic in unacked:
                topic.stream.event(topic.channel, ERROR, detail, recv, Cause.REFUSED)
            if unacked and self.live:
                self.intents.append(Refused())
        log.warning("%s", detail)


class PureDispatcher(DispatcherBase, _Routing):
    """The dispatcher on the pure-Python per-frame path (what `Dispatcher` is without the C build)."""


if native.ENGINE is not None:

    class Dispatcher(DispatcherBase, native.ENGINE.Routing):  # type: ignore[misc,name-defined]
        """The dispatcher on the C build of the per-frame path (`_engine.Routing`)."""

else:
    Dispatcher = PureDispatcher  # type: ignore[misc]
