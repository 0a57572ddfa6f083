"""The one definition of coverage: when a recorded stream's data was continuous and valid.

Coverage is derived from the `events` table alone, per (exchange, symbol, channel), by these rules:

- **Start.** A channel becomes valid at the event its catalog entry names
  (`model.CHANNEL_SPECS[ch].valid_from`): `subscribed` (the subscription ack) for 'ack' channels
  such as trades, `resync` (the snapshot that (re)starts a book) for 'snapshot' channels.
- **End.** `connect`, `disconnect`, `gap`, `error` and `stop` end validity until the next start.
- **Split.** An `error` on an 'ack' channel (an undecodable frame may have carried its data) only
  splits a valid interval at that instant: the interval ends there and a new one starts at once
  (start event `continue`). A silence verdict (cause `stale`, stamped at the last frame received)
  is the exception: nothing arrived after it, so it ends coverage on every channel.
- **Same instant.** Events with equal `ts` are ordered connect, then starts (`subscribed`,
  `resync`), then incidents (`gap`, `error`), then a split's `continue`, then `disconnect`, then
  anything else (`stop`).
- **Why it ended.** `end_cause` is a fixed text per `events.cause` code (`CAUSE_TEXT`) of the event
  that ended the interval. Rows written before `cause` existed have it NULL: their code is derived
  from the event name and detail text (`model.legacy_cause`, rendered in SQL by `_legacy_cause_sql`).

`coverage_sql()` generates the `coverage` view from these tables, `transition()` is its Python twin
for in-process consumers (the live candles), and `COMPLETENESS_SQL` answers "which buckets are
complete" over the view. tests/test_coverage.py checks that the view and the twin agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from recorder.model import (
    CHANNEL_SPECS,
    CONNECT,
    DEFAULT_CAUSE,
    DISCONNECT,
    ERROR,
    GAP,
    LEGACY_BY_EVENT,
    LEGACY_DETAIL_CAUSES,
    RESYNC,
    STOP,
    SUBSCRIBED,
    Cause,
    legacy_cause,
)

Transition = Literal["start", "end", "split"]

# The event that starts each channel's validity.
VALID_FROM_EVENT = {"ack": SUBSCRIBED, "snapshot": RESYNC}
VALID_FROM = {c.name: VALID_FROM_EVENT[c.valid_from] for c in CHANNEL_SPECS.values()}
ENDS = (CONNECT, DISCONNECT, GAP, ERROR, STOP)
CONTINUE = "continue"  # the start event of the interval that follows a split
# Same-instant order: starts before incidents before the end of a connection.
ORDER = {CONNECT: 0, SUBSCRIBED: 1, RESYNC: 1, GAP: 2, ERROR: 2, CONTINUE: 3, DISCONNECT: 4}
ORDER_OTHER = 5

# `coverage.end_cause`: what ended the interval, in words (texts are part of the view's contract).
CAUSE_TEXT = {
    Cause.GAP: "sequence gap",
    Cause.DISCONNECT: "disconnect",
    Cause.CONNECT: "reconnect",
    Cause.RECONNECT: "reconnect",
    Cause.CRASH: "crash",
    Cause.STOP: "process stop",
    Cause.CROSSED: "crossed book",
    Cause.STALE: "stale stream",
    Cause.DISK: "data dropped (disk)",
    Cause.OUT_OF_ORDER: "out-of-order update",
    Cause.RESTART: "sequence restart",
    Cause.DELISTED: "market delisted",
}
CAUSE_TEXT_OTHER = "error"  # decode, exchange, refused, no_snapshot, and any code not listed


def splits(channel: str | None, event: str, cause: str | None) -> bool:
    """An `error` that only splits the channel's interval (a point gap), rather than ending it."""
    spec = CHANNEL_SPECS.get(channel) if channel is not None else None
    return event == ERROR and spec is not None and spec.valid_from == "ack" and cause != Cause.STALE


def transition(
    channel: str | None, event: str, cause: str | None, detail: str | None = None
) -> Transition | None:
    """What `event` does to the channel's coverage: 'start', 'end', 'split' or None (nothing).

    `cause` is the event's `events.cause`; when it is None (an event recorded before causes
    existed) it is derived from `detail` as the view does."""
    if channel is not None and event == VALID_FROM.get(channel):
        return "start"
    if event not in ENDS:
        return None
    if cause is None:
        cause = legacy_cause(event, detail)
    return "split" if splits(channel, event, cause) else "end"


def end_cause(cause: str | None) -> str:
    """The `end_cause` text of an interval ended by an event with this cause code."""
    return CAUSE_TEXT.get(cause, CAUSE_TEXT_OTHER) if cause is not None else CAUSE_TEXT_OTHER


# ---- SQL ---------------------------------------------------------------------------------------


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _in(column: str, values: Iterable[str]) -> str:
    values = list(values)
    return f"{column} IN ({', '.join(_lit(v) for v in values)})" if values else "false"


def _channels(valid_from: str) -> list[str]:
    return [c.name for c in CHANNEL_SPECS.values() if c.valid_from == valid_from]


def _legacy_cause_sql(event: str, detail: str) -> str:
    """LEGACY: the cause code of an event written before `events.cause` existed (its `cause` is
    NULL), from its name and detail text: `model.legacy_cause` in SQL (tests/test_coverage.py checks
    the two agree). Only rows of files written before the column was added take this branch."""
    whens = [f"WHEN {event} = {_lit(e)} THEN {_lit(DEFAULT_CAUSE[e])}" for e in LEGACY_BY_EVENT]
    whens += [f"WHEN starts_with({detail}, {_lit(p)}) THEN {_lit(c)}" for p, c in LEGACY_DETAIL_CAUSES]
    whens.append(f"WHEN contains({detail}, 'no data for') THEN {_lit(Cause.STALE)}")
    whens.append(f"WHEN {event} = {_lit(ERROR)} THEN {_lit(Cause.EXCHANGE)}")
    whens += [
        f"WHEN {event} = {_lit(e)} THEN {_lit(c)}"
        for e, c in DEFAULT_CAUSE.items()
        if e not in LEGACY_BY_EVENT
    ]
    return "CASE " + "\n                         ".join(whens) + " END"


def _end_cause_sql(cause: str) -> str:
    whens = " ".join(f"WHEN {_lit(code)} THEN {_lit(text)}" for code, text in CAUSE_TEXT.items())
    return f"CASE {cause} {whens} ELSE {_lit(CAUSE_TEXT_OTHER)} END"


def coverage_sql(events: str = "events", view: str = "VIEW") -> str:
    """`CREATE OR REPLACE <view> coverage` over the table or view `events` (with `exchange`,
    `symbol`, `channel`, `ts`, `event`, `detail`, `cause`): one row per valid interval, with
    start_ts, end_ts (NULL: still open), start_event, end_event ('open' while open), end_detail and
    end_cause."""
    order = " ".join(f"WHEN {_lit(e)} THEN {n}" for e, n in ORDER.items())
    starts = " OR ".join(
        f"({_in('channel', _channels(kind))} AND event = {_lit(ev)})" for kind, ev in VALID_FROM_EVENT.items()
    )
    return f"""
CREATE OR REPLACE {view} coverage AS
WITH coded AS (  -- the cause code of every event (derived from the detail text for old files)
    SELECT exchange, symbol, channel, ts, event, detail,
           coalesce(cause, {_legacy_cause_sql("event", "detail")}) AS code
    FROM {events}
),
base AS (
    SELECT *,
           CASE event {order} ELSE {ORDER_OTHER} END AS ord,
           CASE WHEN {starts} THEN 1
                WHEN {_in("event", ENDS)} THEN 0 END AS up,
           {_in("channel", _channels("ack"))} AND event = {_lit(ERROR)}
               AND code IS DISTINCT FROM {_lit(Cause.STALE)} AS splits
    FROM coded
),
state AS (  -- `before`: was the stream valid just before this row (splitting errors do not change that)
    SELECT *, coalesce(last_value(CASE WHEN splits THEN NULL ELSE up END
                                  IGNORE NULLS) OVER (
                  PARTITION BY exchange, symbol, channel ORDER BY ts, ord
                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
    FROM base
),
marks AS (
    SELECT exchange, symbol, channel, ts, event, detail, code, ord, up FROM state
    UNION ALL  -- a splitting error splits a valid interval at that instant, nothing more
    SELECT exchange, symbol, channel, ts, {_lit(CONTINUE)}, detail, code, {ORDER[CONTINUE]}, before
    FROM state WHERE splits AND before = 1
),
changes AS (
    SELECT *, lead(ts) OVER w AS next_ts, lead(event) OVER w AS next_event, lead(detail) OVER w AS next_detail,
           lead(code) OVER w AS next_code
    FROM (
        SELECT *, lag(up) OVER (PARTITION BY exchange, symbol, channel ORDER BY ts, ord) AS p
        FROM marks WHERE up IS NOT NULL
    ) WHERE p IS DISTINCT FROM up
    WINDOW w AS (PARTITION BY exchange, symbol, channel ORDER BY ts, ord)
)
SELECT exchange, symbol, channel,
       ts AS start_ts,
       next_ts AS end_ts,
       event AS start_event,
       coalesce(next_event, 'open') AS end_event,
       next_detail AS end_detail,
       CASE WHEN next_event IS NULL THEN NULL ELSE {_end_cause_sql("next_code")} END AS end_cause
FROM changes WHERE up = 1
"""


COVERAGE_SQL = coverage_sql()

# "Which minutes of BTC-USDT are complete?" in one query:
#     SELECT * FROM completeness('<exchange>', 'BTC-USDT', 'trades')            -- 1-minute buckets
#     SELECT * FROM completeness('<exchange>', 'BTC-USDT', 'book', INTERVAL 1 hour)
# A bucket is complete when one coverage interval spans all of it (an open interval, still being
# recorded, counts up to now).
COMPLETENESS_SQL = """
CREATE OR REPLACE MACRO completeness(ex, sym, chan, bucket := INTERVAL 1 minute) AS TABLE
WITH cov AS (
    SELECT start_ts, coalesce(end_ts, now()) AS end_ts FROM coverage
    WHERE exchange = ex AND symbol = sym AND channel = chan
),
buckets AS (
    SELECT unnest(generate_series(
        time_bucket(bucket, (SELECT min(start_ts) FROM cov)),
        (SELECT max(end_ts) FROM cov),
        bucket)) AS bucket_start
)
SELECT bucket_start, bucket_start + bucket AS bucket_end,
       EXISTS (SELECT 1 FROM cov WHERE cov.start_ts <= bucket_start AND cov.end_ts >= bucket_start + bucket)
           AS complete
FROM buckets
WHERE bucket_start < (SELECT max(end_ts) FROM cov)
ORDER BY bucket_start
"""
