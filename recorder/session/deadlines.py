"""When a connection must act again on something it asked for and got no answer to (pure: the
clock is passed in, so it is tested without sockets).

- a subscription not acknowledged within `ack_timeout` is sent again;
- refused subscriptions are sent again after `refused_retry`, doubling per refusal in a row (at most
  `ack_timeout`): a refusal is an answer, there is nothing to wait for;
- a snapshot asked for (on subscribe, or by a `Resync`) and not received is asked for again after
  the venue's `ResyncPolicy.wait(tries)`; after `max_tries` the venue either reconnects
  (`Reconnect`) or keeps waiting, saying so in `events` each time (`Report`);
- a book resynced again and again in quick succession (a venue whose cached snapshot keeps replaying
  the same gap, a feed that keeps crossing) backs off (`ResyncBackoff`) instead of resubscribing as
  fast as the send budget allows.
"""

from __future__ import annotations

from collections.abc import Sequence

from recorder.model import BOOK, Cause
from recorder.session.dispatcher import Topic
from recorder.venues.contract import Intent, Reconnect, Report, Resync, ResyncPolicy, Subscribe


class Deadlines:
    def __init__(self, topics: Sequence[Topic], policy: ResyncPolicy, ack_timeout: float, refused_retry: float) -> None:
        self.topics = list(topics)
        self.by_name = {t.name: t for t in self.topics}
        self.policy = policy
        self.ack_timeout, self.refused_retry = ack_timeout, refused_retry
        self.refusals = 0  # refusals in a row (each doubles the retry delay)
        self.retry_at: float | None = None
        self.refused_at = 0.0

    def reset(self) -> None:
        """A new socket: everything is subscribed afresh, a retry of the old one's refusals is moot."""
        self.refusals, self.retry_at = 0, None

    def sent(self, intent: Intent, now: float) -> None:
        if isinstance(intent, Subscribe):
            for name in intent.topics:
                t = self.by_name[name]
                t.sent_at = now
                if t.channel == BOOK and not t.stream.book.valid and t.resync_since is None:
                    # the subscription's snapshot is due: ask for one if it does not come (a wait
                    # already running keeps its count, so its back-off goes on)
                    t.resync_since, t.resync_tries = now, 0
        elif isinstance(intent, Resync):
            t = self.by_name[intent.topic]
            t.sent_at = now  # a venue may resync by subscribing again: its ack is due from now
            t.resync_since = now
            t.resync_tries += 1

    def refused(self, now: float) -> None:
        """The exchange refused subscriptions: one retry per burst of refusals."""
        if self.retry_at is not None:
            return
        self.retry_at = now + min(self.ack_timeout, self.refused_retry * 2**self.refusals)
        self.refused_at = now
        self.refusals += 1

    def due(self, now: float) -> list[Intent]:
        out: list[Intent] = []
        if self.refusals and all(t.acked for t in self.topics):
            self.refusals = 0
        retry: list[str] = []
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            # those unacked by now that were sent before the refusal (acks come in order)
            retry = [t.name for t in self.topics if not t.acked and t.sent_at <= self.refused_at]
            if retry:
                out.append(Subscribe(tuple(retry)))
        stale = [t.name for t in self.topics if not t.acked and now - t.sent_at > self.ack_timeout and t.name not in retry]
        if stale:
            out.append(Subscribe(tuple(stale)))
        p = self.policy
        for t in self.topics:
            since = t.resync_since
            if t.channel != BOOK or since is None or now - since <= p.wait(t.resync_tries):
                continue
            if p.max_tries is not None and t.resync_tries >= p.max_tries:
                if p.on_exhausted == "reconnect":
                    return [*out, Reconnect(BOOK, f"no snapshot after {t.resync_tries} requests", Cause.NO_SNAPSHOT)]
                t.resync_since = now  # keep waiting, no more requests: say so again after the next wait
                out.append(Report(t.name, f"no snapshot after {t.resync_tries} requests: waiting", Cause.NO_SNAPSHOT))
                continue
            out.append(Resync(t.name))
            if p.on_exhausted == "wait" and t.resync_tries:
                wait = p.wait(t.resync_tries + 1)
                out.append(Report(t.name, f"no snapshot after {t.resync_tries} requests: asking again, waiting {wait:g} s", Cause.NO_SNAPSHOT))
        return out


class ResyncBackoff:
    """How long a book's resync waits before it is sent. A resync requested within `window` seconds
    of the same book's previous one goes one level up; past `free` levels each waits twice as long
    as the one before (`first`, 2×`first`, ... at most `max_delay`). A book `window` seconds without
    a resync starts again at level 0. The book stays invalid (and its coverage says so) meanwhile."""

    def __init__(self, free: int = 4, window: float = 10.0, first: float = 1.0, max_delay: float = 60.0) -> None:
        self.free, self.window, self.first, self.max_delay = free, window, first, max_delay
        self.level: dict[str, int] = {}
        self.last: dict[str, float] = {}  # when the topic's previous resync is (was) sent

    def delay(self, topic: str, now: float) -> float:
        level = self.level.get(topic, 0) + 1 if now - self.last.get(topic, -1e18) <= self.window else 0
        wait = 0.0 if level < self.free else min(self.max_delay, self.first * 2 ** (level - self.free))
        self.level[topic], self.last[topic] = level, now + wait
        return wait
