"""One definition of coverage (`recorder.coverage`), with the cause as a code.

- The SQL view and its Python twin (`transition`, used by the live candles) agree on random event
  sequences, causes and legacy (NULL-cause) rows mixed.
- For what the recorder writes (with or without `cause`), the view is byte-identical to the view
  before causes existed (frozen below from e4eb01a).
- Files written before `events.cause` existed, next to new ones in one partition, work everywhere:
  `recorder.connect()`, `recorder status`, `recorder candles build`, `recorder compact`.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recorder
from recorder import coverage
from recorder.candles.live import LiveCandles
from recorder.coverage import ORDER, ORDER_OTHER, coverage_sql, end_cause, transition
from recorder.lake import schema_problem
from recorder.model import CHANNEL_SPECS, SCHEMAS, Cause, legacy_cause
from recorder.status import status_query

from .processes import RECORDER

TS = pa.timestamp("us", tz="UTC")
S = 1_000_000
T0 = int(datetime(2026, 11, 20, 10, 0, tzinfo=UTC).timestamp() * S)
DAY = "2026-11-20"
PART = f"exchange=bitmart/symbol=BTC-USDT/date={DAY}"
CRASH = "crash: the recording ended without a clean stop (rows re-derived from the raw log)"
STALE_DETAIL = (
    "stale stream: no data for 5.2 s, no answer to a ping within 3 s (usual rate 4.0 frames/s): reconnecting"
)

# The coverage view before `events.cause` existed (e4eb01a:recorder/query.py), reading `old_events`:
# the reference for "byte-identical".
OLD_COVERAGE_SQL = """
CREATE OR REPLACE VIEW old_coverage AS
WITH base AS (
    SELECT exchange, symbol, channel, ts, event, detail,
           -- same-instant events: starts before incidents before the end of a connection
           CASE event WHEN 'connect' THEN 0 WHEN 'subscribed' THEN 1 WHEN 'resync' THEN 1
                      WHEN 'gap' THEN 2 WHEN 'error' THEN 2 WHEN 'disconnect' THEN 4 ELSE 5 END AS ord,
           CASE WHEN (channel = 'trades' AND event = 'subscribed')
                  OR (channel = 'book' AND event = 'resync') THEN 1
                WHEN event IN ('connect', 'disconnect', 'gap', 'error', 'stop') THEN 0 END AS up,
           channel = 'trades' AND event = 'error'
               AND NOT coalesce(detail LIKE 'stale stream%' OR detail LIKE '%no data for%', false) AS splits
    FROM old_events
),
state AS (  -- `before`: was the stream valid just before this row (splitting errors do not change that)
    SELECT *, coalesce(last_value(CASE WHEN splits THEN NULL ELSE up END
                                  IGNORE NULLS) OVER (
                  PARTITION BY exchange, symbol, channel ORDER BY ts, ord
                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
    FROM base
),
marks AS (
    SELECT exchange, symbol, channel, ts, event, detail, ord, up FROM state
    UNION ALL  -- a trade-stream error splits a valid interval at that instant, nothing more
    SELECT exchange, symbol, channel, ts, 'continue', detail, 3, before
    FROM state WHERE splits AND before = 1
),
changes AS (
    SELECT *, lead(ts) OVER w AS next_ts, lead(event) OVER w AS next_event, lead(detail) OVER w AS next_detail
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
       CASE
           WHEN next_event IS NULL THEN NULL
           WHEN next_event = 'gap' THEN 'sequence gap'
           WHEN next_event = 'disconnect' THEN 'disconnect'
           WHEN next_event = 'connect' THEN 'reconnect'
           WHEN next_event = 'stop' AND next_detail LIKE 'crash%' THEN 'crash'
           WHEN next_event = 'stop' THEN 'process stop'
           WHEN next_detail LIKE 'crossed%' THEN 'crossed book'
           WHEN next_detail LIKE 'stale stream%' OR next_detail LIKE '%no data for%' THEN 'stale stream'
           WHEN next_detail LIKE 'disk:%' THEN 'data dropped (disk)'
           WHEN next_detail LIKE 'out-of-order%' THEN 'out-of-order update'
           ELSE 'error'
       END AS end_cause
FROM changes WHERE up = 1
"""


# ---- helpers -----------------------------------------------------------------------------------

Event = tuple[str, str, int, str, str | None, str | None]  # symbol, channel, ts, event, detail, cause


def ordered(events: list[Event]) -> list[Event]:
    """Sorted as the view orders them, keeping only the first event of each (symbol, channel, ts,
    same-instant rank): the view's order among exact ties is unspecified (as it always was)."""
    seen: set[tuple] = set()
    out = []
    for e in sorted(events, key=lambda e: (e[0], e[1], e[2], ORDER.get(e[3], ORDER_OTHER))):
        key = (e[0], e[1], e[2], ORDER.get(e[3], ORDER_OTHER))
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def events_arrow(events: list[Event]) -> pa.Table:
    cols = {
        "exchange": pa.array(["x"] * len(events), pa.string()),
        "symbol": pa.array([e[0] for e in events], pa.string()),
        "channel": pa.array([e[1] for e in events], pa.string()),
        "ts": pa.array([e[2] for e in events], TS),
        "event": pa.array([e[3] for e in events], pa.string()),
        "detail": pa.array([e[4] for e in events], pa.string()),
        "cause": pa.array([e[5] for e in events], pa.string()),
    }
    return pa.table(cols)


COLUMNS = (
    "symbol, channel, epoch_us(start_ts), epoch_us(end_ts), start_event, end_event, end_detail, end_cause"
)


def view_rows(con: duckdb.DuckDBPyConnection, events: list[Event]) -> list[tuple]:
    """The coverage view's rows over `events`, sorted as `reference` sorts them."""
    tbl = events_arrow(events)
    con.register("events", tbl)
    con.register("old_events", tbl)  # the old view reads no `cause`
    return sorted(con.execute(f"SELECT {COLUMNS} FROM coverage").fetchall(), key=repr)


def reference(events: list[Event]) -> list[tuple]:
    """The view's rows, computed in Python from the twin `transition` and `end_cause`."""
    out = []
    open_: dict[tuple[str, str], tuple[int, str]] = {}
    for sym, ch, ts, event, detail, cause in ordered(events):
        what = transition(ch, event, cause, detail)
        cur = open_.get((sym, ch))
        if what == "start" and cur is None:
            open_[(sym, ch)] = (ts, event)
        elif what in ("end", "split") and cur is not None:
            code = cause if cause is not None else legacy_cause(event, detail)
            out.append((sym, ch, cur[0], ts, cur[1], event, detail, end_cause(code)))
            if what == "split":
                open_[(sym, ch)] = (ts, "continue")
            else:
                del open_[(sym, ch)]
    out += [(sym, ch, s, None, ev, "open", None, None) for (sym, ch), (s, ev) in open_.items()]
    return sorted(out, key=repr)


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    c.register("events", events_arrow([]))
    c.register("old_events", events_arrow([]))
    c.execute(coverage_sql())
    c.execute(OLD_COVERAGE_SQL)
    return c


# ---- the view and its Python twin agree ----------------------------------------------------------

# repeated entries weight the draw towards what makes intervals (starts, splits, stale verdicts)
CHANNELS = ["trades", "trades", "book", "book", *CHANNEL_SPECS, "unknown"]
EVENTS = [
    "connect",
    "subscribed",
    "subscribed",
    "resync",
    "resync",
    "gap",
    "error",
    "error",
    "error",
    "disconnect",
    "stop",
    "note",
]
CODES = [v for k, v in vars(Cause).items() if not k.startswith("_")]
CAUSES = [None, None, None, Cause.STALE, Cause.STALE, *CODES, "some_new_code"]
DETAILS = [
    None,
    "",
    "crash: the recording ended",
    "crossed book at seq 5: bid 2 >= ask 1",
    STALE_DETAIL,
    "closed by us: stale stream (no data for 5.2 s)",
    "no data for 30 s",
    "disk: dropped 10 buffered rows",
    "out-of-order update seq 5 <= local 6: dropped",
    "no snapshot after 3 tries",
    "decode: bad deflate",
    "parse: bad json",
    "90004: Invalid channel param",
    "clean stop",
]


def any_event(symbols: list[str], channels: list[str]) -> st.SearchStrategy:
    return st.tuples(
        st.sampled_from(symbols),
        st.sampled_from(channels),
        st.integers(0, 2),  # seconds after the previous event
        st.sampled_from(EVENTS),
        st.sampled_from(DETAILS),
        st.sampled_from(CAUSES),
    )


def timed(raw: list[tuple]) -> list[Event]:
    t, out = T0, []
    for sym, ch, dt, event, detail, cause in raw:
        t += dt * S
        out.append((sym, ch, t, event, detail, cause))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(any_event(["A", "A", "B"], CHANNELS), max_size=40)
    | st.lists(any_event(["A"], ["trades"]), max_size=30)
)
def test_the_view_and_the_python_twin_agree(con, raw):
    events = ordered(timed(raw))
    assert view_rows(con, events) == reference(events)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(any_event(["A"], ["trades"]), max_size=30))
def test_live_candles_follow_the_view(con, raw):
    """The live candles' spans of the trade stream are the view's intervals (a split's new interval
    starts 1 us after the error, so that the error's instant is in neither)."""
    events = ordered(timed(raw))
    live = LiveCandles(60 * S)
    for _sym, _ch, ts, event, detail, cause in events:
        live.on_event(event, ts, cause, detail or "")
    want = []
    for _sym, _ch, s, e, start_event, *_ in view_rows(con, events):
        s += 1 if start_event == "continue" else 0
        want.append([s, None if e is None else max(e, s)])
    assert live.spans == sorted(want, key=lambda x: (x[0], x[1] is None, x[1] or 0))  # in time order


def test_the_rules_on_a_written_out_case(con):
    """Each rule once, expected rows written out (not derived from the twin)."""
    t = [T0 + i * S for i in range(10)]
    events = [
        ("A", "trades", t[0], "connect", "u", "connect"),
        ("A", "trades", t[0], "subscribed", "", None),  # same instant: connect first, then the ack
        ("A", "trades", t[1], "resync", "", None),  # not a start on an ack channel
        ("A", "trades", t[2], "error", "decode: x", "decode"),  # splits
        ("A", "trades", t[2], "stop", "clean stop", "stop"),  # same instant: after the split
        ("A", "book", t[0], "subscribed", "", None),  # not a start on a snapshot channel
        ("A", "book", t[1], "resync", "", None),
        ("A", "book", t[2], "error", "decode: x", "decode"),  # ends: a book needs a new snapshot
        ("A", "book", t[3], "resync", "", None),
        ("A", "book", t[4], "error", "went back", "restart"),
        ("A", "ticker", t[1], "subscribed", "", None),  # a derivative channel starts at its ack
        ("A", "ticker", t[3], "error", "x", "stale"),  # a silence verdict ends, never splits
        ("A", "ticker", t[4], "subscribed", "", None),
        ("A", "ticker", t[5], "error", "no data for 9 s", None),  # the same, recorded without a cause
        ("A", "funding", t[1], "subscribed", "", None),  # still open
        ("A", "unknown", t[1], "subscribed", "", None),  # not in the catalog: never covered
    ]
    assert view_rows(con, events) == [
        ("A", "book", t[1], t[2], "resync", "error", "decode: x", "error"),
        ("A", "book", t[3], t[4], "resync", "error", "went back", "sequence restart"),
        ("A", "funding", t[1], None, "subscribed", "open", None, None),
        ("A", "ticker", t[1], t[3], "subscribed", "error", "x", "stale stream"),
        ("A", "ticker", t[4], t[5], "subscribed", "error", "no data for 9 s", "stale stream"),
        ("A", "trades", t[0], t[2], "subscribed", "error", "decode: x", "error"),
        ("A", "trades", t[2], t[2], "continue", "stop", "clean stop", "process stop"),
    ]
    assert reference(events) == view_rows(con, events)


def test_the_legacy_mapping_in_sql_is_legacy_cause(con):
    """Rows without a cause: the SQL derives the same code from the detail as `model.legacy_cause`."""
    sql = "SELECT " + coverage._legacy_cause_sql("e", "d") + " FROM (SELECT ? AS e, ? AS d)"
    for event in EVENTS:
        for detail in DETAILS:
            assert con.execute(sql, [event, detail]).fetchall()[0][0] == legacy_cause(event, detail), (
                event,
                detail,
            )


# ---- the view is what it was before causes -------------------------------------------------------

STARTS = {
    "ack": [("subscribed", "BTC_USDT.trades", None)],
    "snapshot": [("resync", "snapshot seq=5 starts book", None)],
}
ANY_CHANNEL = [
    ("connect", "ws://127.0.0.1:41234/api?protocol=1.1", Cause.CONNECT),
    ("disconnect", "closed by server (code 1006)", Cause.DISCONNECT),
    ("disconnect", "closed by us: stale stream (no data for 5.2 s)", Cause.DISCONNECT),
    ("error", STALE_DETAIL, Cause.STALE),
    ("error", "disk: dropped 1,000 buffered rows (data dir not writable)", Cause.DISK),
    ("error", "decode: invalid deflate stream", Cause.DECODE),
    ("error", "90004: Invalid channel param", Cause.REFUSED),
    ("error", "30000: the exchange is busy", Cause.EXCHANGE),
    ("stop", "clean stop", Cause.STOP),
    ("stop", CRASH, Cause.CRASH),
]
BOOK_ONLY = [
    ("resync", "snapshot seq=9 replaces valid book", None),
    ("gap", "expected seq 5, got 7", Cause.GAP),
    ("error", "crossed book at seq 5: bid 2.0 >= ask 1.0", Cause.CROSSED),
    ("error", "crossed snapshot seq=5", Cause.CROSSED),
    ("error", "out-of-order update seq 5 <= local 6: dropped", Cause.OUT_OF_ORDER),
    ("error", "no snapshot after 3 tries: reconnecting", Cause.NO_SNAPSHOT),
]
# what the recorder writes on each channel (a sequence restart is new: the old view said 'error')
WRITTEN = {
    "trades": STARTS["ack"] + STARTS["ack"] + ANY_CHANNEL,
    "book": STARTS["snapshot"] + BOOK_ONLY + ANY_CHANNEL,
}

written_event = st.sampled_from(["trades", "book"]).flatmap(
    lambda ch: st.tuples(
        st.sampled_from(["A", "B"]),
        st.just(ch),
        st.integers(0, 2),
        st.sampled_from(WRITTEN[ch]),
        st.booleans(),
    )
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(written_event, max_size=40))
def test_the_view_is_byte_identical_to_the_view_before_causes(con, raw):
    """With each event's cause as the recorder writes it, or without (files written before the
    column existed), in any mix: the same rows as the old view on the same events."""
    events = ordered(
        timed(
            [(sym, ch, dt, ev, det, cause if keep else None) for sym, ch, dt, (ev, det, cause), keep in raw]
        )
    )
    tbl = events_arrow(events)
    con.register("events", tbl)
    con.register("old_events", tbl)
    new = con.execute("SELECT * FROM coverage ORDER BY ALL").fetchall()
    assert new == con.execute("SELECT * FROM old_coverage ORDER BY ALL").fetchall()


# the end_cause texts are part of the view's contract: spelled out here, not imported
END_CAUSES = [
    ("gap", Cause.GAP, "sequence gap"),
    ("disconnect", Cause.DISCONNECT, "disconnect"),
    ("connect", Cause.CONNECT, "reconnect"),
    ("connect", Cause.RECONNECT, "reconnect"),
    ("stop", Cause.CRASH, "crash"),
    ("stop", Cause.STOP, "process stop"),
    ("error", Cause.CROSSED, "crossed book"),
    ("error", Cause.STALE, "stale stream"),
    ("error", Cause.DISK, "data dropped (disk)"),
    ("error", Cause.OUT_OF_ORDER, "out-of-order update"),
    ("error", Cause.RESTART, "sequence restart"),
    ("error", Cause.DECODE, "error"),
    ("error", Cause.EXCHANGE, "error"),
    ("error", Cause.REFUSED, "error"),
    ("error", Cause.NO_SNAPSHOT, "error"),
]


@pytest.mark.parametrize(("event", "cause", "text"), END_CAUSES)
def test_end_cause_is_read_from_the_cause_code(con, event, cause, text):
    """The detail says nothing here: only the code can give the text."""
    events = [("A", "book", T0, "resync", "", None), ("A", "book", T0 + S, event, "whatever", cause)]
    rows = view_rows(con, events)
    assert [r[-1] for r in rows] == [text]
    assert end_cause(cause) == text


# ---- files written before `events.cause` -------------------------------------------------------

PLAN = [  # (seconds after T0, channel or None for both, event, detail, cause)
    (0, None, "connect", "ws://127.0.0.1:41234/api", Cause.CONNECT),
    (1, "trades", "subscribed", "BTC_USDT.trades", None),
    (2, "book", "resync", "snapshot seq=1 starts book", None),
    (60, None, "error", "decode: invalid deflate stream", Cause.DECODE),
    (62, "book", "resync", "snapshot seq=90 starts book", None),
    (120, "book", "gap", "expected seq 150, got 152", Cause.GAP),
    (121, "book", "resync", "snapshot seq=152 starts book", None),
    (180, None, "disconnect", "closed by server (code 1006)", Cause.DISCONNECT),
    # ---- old file above, new file below
    (181, None, "connect", "ws://127.0.0.1:41234/api", Cause.CONNECT),
    (182, "trades", "subscribed", "BTC_USDT.trades", None),
    (183, "book", "resync", "snapshot seq=300 starts book", None),
    (240, "book", "error", "crossed book at seq 400: bid 2.0 >= ask 1.0", Cause.CROSSED),
    (241, "book", "resync", "snapshot seq=401 starts book", None),
    (300, None, "error", STALE_DETAIL, Cause.STALE),
    (305, None, "disconnect", "closed by us: stale stream (no data for 5.2 s)", Cause.DISCONNECT),
    (306, None, "connect", "ws://127.0.0.1:41234/api", Cause.CONNECT),
    (307, "trades", "subscribed", "BTC_USDT.trades", None),
    (308, "book", "resync", "snapshot seq=500 starts book", None),
    (3600, None, "stop", "clean stop", Cause.STOP),
]
OLD_ROWS = sum(1 if ch else 2 for sec, ch, *_ in PLAN if sec <= 180)  # rows in the old file


def plan_rows() -> list[tuple]:
    rows = []
    for sec, channel, event, detail, cause in PLAN:
        t = T0 + sec * S
        rows += [(t, t, ch, event, detail, cause) for ch in ([channel] if channel else ["trades", "book"])]
    return rows


def events_file(rows: list[tuple], with_cause: bool) -> pa.Table:
    schema = SCHEMAS["events"]
    if not with_cause:
        schema = schema.remove(schema.get_field_index("cause"))
    return pa.table([pa.array([r[i] for r in rows], f.type) for i, f in enumerate(schema)], schema=schema)


def put(root: Path, table: str, name: str, tbl: pa.Table) -> None:
    path = root / table / PART / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(tbl, path)


def data_dir(root: Path, old: bool) -> Path:
    """The plan's events in two files (the first without `cause` when `old`) and a trade a minute."""
    rows = plan_rows()
    put(root, "events", "a.parquet", events_file(rows[:OLD_ROWS], with_cause=not old))
    put(root, "events", "b.parquet", events_file(rows[OLD_ROWS:], with_cause=True))
    ts = [T0 + i * 20 * S + 7 for i in range(180)]
    trades = pa.table(
        [ts, ts, [None] * 180, ["buy", "sell"] * 90, [100.0 + i for i in range(180)], [0.5] * 180],
        schema=SCHEMAS["trades"],
    )
    put(root, "trades", "a.parquet", trades)
    return root


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([RECORDER, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_schema_check_lets_the_optional_column_be_missing():
    events = SCHEMAS["events"]
    assert schema_problem(events.remove(events.get_field_index("cause")), "events") is None
    assert "'detail'" in schema_problem(events.remove(events.get_field_index("detail")), "events")
    wrong = events.set(events.get_field_index("cause"), pa.field("cause", pa.int64()))
    assert "'cause'" in schema_problem(wrong, "events")


def test_old_schema_events_next_to_new_ones_work_everywhere(tmp_path):
    mixed, new = data_dir(tmp_path / "mixed", old=True), data_dir(tmp_path / "new", old=False)
    q = "SELECT * FROM coverage ORDER BY ALL"
    want = recorder.connect(new).execute(q).fetchall()
    assert {r[-1] for r in want} == {
        "error", "sequence gap", "disconnect", "crossed book", "stale stream", "process stop"
    }  # fmt: skip

    c = recorder.connect(mixed)
    assert c.execute(q).fetchall() == want
    assert c.execute("SELECT count(*) FILTER (WHERE cause IS NULL), count(*) FROM events").fetchone() == (
        OLD_ROWS + sum(1 for r in plan_rows()[OLD_ROWS:] if r[5] is None),
        len(plan_rows()),
    )

    status = run("status", "--date", DAY, "--data-dir", str(mixed), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "trades" in status.stdout and "book" in status.stdout
    from recorder.status import status_report

    assert status_report(mixed, DAY)[:2] == status_report(new, DAY)[:2]

    q_candles = "SELECT interval, open_time, complete FROM candles ORDER BY ALL"
    for d in (mixed, new):
        build = run("candles", "build", "--data-dir", str(d), "--interval", "1m", cwd=tmp_path)
        assert build.returncode == 0, build.stderr
    built = recorder.connect(mixed).execute(q_candles).fetchall()
    assert built == recorder.connect(new).execute(q_candles).fetchall()
    assert {r[2] for r in built} == {True, False}

    compact = run("compact", "--data-dir", str(mixed), "--date", DAY, cwd=tmp_path)
    assert compact.returncode == 0, compact.stderr
    files = list((mixed / "events" / PART).glob("*.parquet"))
    assert len(files) == 1 and "cause" in pq.read_schema(files[0]).names
    c = recorder.connect(mixed)
    assert c.execute(q).fetchall() == want
    assert c.execute("SELECT count(*) FROM events WHERE cause IS NULL").fetchone()[0] >= OLD_ROWS


def test_a_view_over_old_files_only_has_the_column_and_reads_new_files_written_later(tmp_path):
    """A long-lived connection opened when no file had `cause` reads it once a new file has it."""
    rows = plan_rows()
    put(tmp_path, "events", "a.parquet", events_file(rows[:OLD_ROWS], with_cause=False))
    c = recorder.connect(tmp_path)
    assert c.execute("SELECT count(*), count(cause) FROM events").fetchone() == (OLD_ROWS, 0)
    put(tmp_path, "events", "b.parquet", events_file(rows[OLD_ROWS:], with_cause=True))
    n_new = sum(1 for r in rows[OLD_ROWS:] if r[5] is not None)
    assert c.execute("SELECT count(*), count(cause) FROM events").fetchone() == (len(rows), n_new)


# ---- status: per-channel volume from the catalog -------------------------------------------------


def test_status_counts_each_catalog_channel_from_its_table(tmp_path):
    """ticker and funding share `derivative_ticker`: each counts the rows its filter keeps, and
    their coverage starts at the ack, like trades (no code names them)."""
    sql, params = status_query(DAY)
    assert sql.count("?") == len(params) == 2 + len(CHANNEL_SPECS)
    rows = []
    for ch in ("ticker", "funding"):
        rows += [
            (T0, T0, ch, "subscribed", f"{ch} topic", None),
            (T0 + 600 * S, T0 + 600 * S, ch, "stop", "clean stop", "stop"),
        ]
    put(tmp_path, "events", "a.parquet", events_file(rows, with_cause=True))
    n = 7
    ts = [T0 + i * S for i in range(n)]
    nothing = [None] * n
    prices = [100.0 if i < 4 else None for i in range(n)]  # 4 ticker rows
    rates = [None if i < 4 else 0.0001 for i in range(n)]  # 3 funding rows
    tbl = pa.table(
        [ts, ts, prices, nothing, nothing, rates, nothing, nothing, nothing],
        schema=SCHEMAS["derivative_ticker"],
    )
    put(tmp_path, "derivative_ticker", "a.parquet", tbl)
    from recorder.status import status_report

    cols, got, _ = status_report(tmp_path, DAY)
    by = {r[cols.index("channel")]: r for r in got}
    assert by["ticker"][cols.index("rows")] == 4
    assert by["funding"][cols.index("rows")] == 3
    assert by["ticker"][cols.index("covered %")] == by["funding"][cols.index("covered %")] == 100.0
