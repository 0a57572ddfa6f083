"""build_candles on real Parquet written by the one writer, read back through the real DuckDB views."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recorder
import recorder.candles.build as build_mod
from recorder.candles import INTERVALS, build_candles
from recorder.candles.build import Aggregator
from recorder.storage import sink
from recorder.storage.layout import partition_dir
from recorder.storage.sink import replace_partition_files, rows_to_table
from tests.candles.util import (
    DAY,
    EX,
    HOUR,
    MIN,
    SYM,
    T0,
    built,
    random_trades,
    reference,
    write_events,
    write_trades,
)

pytestmark = pytest.mark.timeout(60)
SEC = 1_000_000


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.index) == list(want.index)
    for col in ("open", "high", "low", "close", "trades"):
        assert (got[col].to_numpy() == want[col].to_numpy()).all(), col
    for col in ("volume", "quote_volume", "buy_volume", "vwap"):
        np.testing.assert_allclose(got[col].to_numpy(), want[col].to_numpy(), rtol=1e-12, err_msg=col)


@pytest.fixture
def two_days(tmp_path):
    """Two days of trades in several files per day, covered by one subscribed..stop interval."""
    rng = np.random.default_rng(7)
    trades = []
    for lo, hi in [
        (T0, T0 + 10 * HOUR),
        (T0 + 10 * HOUR, T0 + DAY + 5 * HOUR),
        (T0 + DAY + 5 * HOUR, T0 + 2 * DAY),
    ]:
        batch = random_trades(rng, lo, hi, 6000)
        write_trades(tmp_path, batch)
        trades += batch
    write_events(tmp_path, [(T0 - MIN, "subscribed"), (T0 + 2 * DAY + MIN, "stop")])
    return tmp_path, trades


def by_receive_time(trades, width: int) -> pd.Series:  # noqa: ANN001
    """The wrong close: the last trade to arrive in each bucket."""
    df = pd.DataFrame(list(trades), columns=["ts", "recv_ts", "trade_id", "side", "price", "amount"])
    df = df.sort_values("recv_ts", kind="stable")
    return df.groupby(df["ts"] // width * width)["price"].last()


def test_every_interval_matches_an_independent_computation(two_days):
    data_dir, trades = two_days
    # the data can tell exchange time from arrival: late trades, closes that differ by receive time
    assert sum(a[0] > b[0] for a, b in zip(trades, trades[1:], strict=False)) > 100
    for width in (SEC, MIN, HOUR):
        assert (by_receive_time(trades, width) != reference(trades, width)["close"]).sum() >= 10
    report = build_candles(data_dir)
    assert report.count("full") == 2
    con = recorder.connect(data_dir)
    for interval, width in INTERVALS.items():
        got = built(con, interval)
        assert_same(got, reference(trades, width))
        assert got["complete"].all(), interval
        assert (got["ts"] == got.index).all()  # ts is the open time
        days = pd.to_datetime(got.index, unit="us").strftime("%Y-%m-%d")
        assert (got["date"].astype(str).to_numpy() == days.to_numpy()).all()  # each candle in its date
    assert built(con, "1d").index.tolist() == [T0, T0 + DAY]


def test_ties_on_exchange_time_follow_arrival_order(tmp_path):
    t = T0 + 5 * MIN
    # first file: two trades at the very first microsecond of the minute, then one later
    write_trades(
        tmp_path,
        [
            (t, t + 10, None, "buy", 10.0, 1.0),
            (t, t + 10, None, "sell", 11.0, 1.0),
            (t + 30 * SEC, t + 30 * SEC, None, "buy", 12.0, 1.0),
        ],
    )
    # second file, arrived later: ties at the first and at the last exchange time of the minute
    write_trades(
        tmp_path,
        [
            (t, t + 20, None, "buy", 9.0, 1.0),
            (t + 30 * SEC, t + 31 * SEC, None, "buy", 13.0, 1.0),
            (t + 30 * SEC, t + 31 * SEC, None, "sell", 14.0, 1.0),
        ],
    )
    # a late trade with an earlier exchange time: it opens the minute although it arrived last
    write_trades(tmp_path, [(t - 1, t + 40 * SEC, None, "sell", 8.0, 1.0)])
    build_candles(tmp_path, intervals="1s,1m")
    con = recorder.connect(tmp_path)
    one_min = built(con, "1m")
    assert one_min.loc[t - MIN, "close"] == 8.0
    assert (one_min.loc[t, ["open", "close", "high", "low"]].tolist()) == [10.0, 14.0, 14.0, 9.0]
    one_s = built(con, "1s")
    assert one_s.loc[t, ["open", "close"]].tolist() == [10.0, 9.0]
    assert one_s.loc[t + 30 * SEC, ["open", "close"]].tolist() == [12.0, 14.0]
    assert one_s.loc[t + 30 * SEC, "buy_volume"] == 2.0


def candle_rows(con) -> int:  # noqa: ANN001
    dup = con.execute(
        "SELECT count(*) FROM (SELECT interval, open_time FROM candles GROUP BY ALL HAVING count(*) > 1)"
    ).fetchall()[0][0]
    assert dup == 0, "duplicate candles"
    return con.execute("SELECT count(*) FROM candles").fetchall()[0][0]


def candle_files(data_dir, day: str) -> list[str]:  # noqa: ANN001
    return sorted(p.name for p in partition_dir(data_dir, "candles", EX, SYM, day).glob("*.parquet"))


def test_reruns_are_idempotent_and_only_changed_dates_are_redone(two_days, tmp_path_factory):
    data_dir, trades = two_days
    build_candles(data_dir)
    first = candle_rows(recorder.connect(data_dir))
    day1, day2 = candle_files(data_dir, "2024-06-01"), candle_files(data_dir, "2024-06-02")

    again = build_candles(data_dir)
    assert again.actions == [] and again.skipped == 2
    assert candle_rows(recorder.connect(data_dir)) == first
    assert candle_files(data_dir, "2024-06-01") == day1 and candle_files(data_dir, "2024-06-02") == day2

    # one more hour of trades on day 2: only that date is touched, and only the hours it covers
    extra = random_trades(np.random.default_rng(8), T0 + DAY + 20 * HOUR, T0 + DAY + 21 * HOUR, 500)
    write_trades(data_dir, extra)
    report = build_candles(data_dir)
    assert [a[2:] for a in report.actions] == [("2024-06-02", "append")]
    assert candle_files(data_dir, "2024-06-01") == day1
    con = recorder.connect(data_dir)
    candle_rows(con)
    for interval, width in INTERVALS.items():
        assert_same(built(con, interval), reference(trades + extra, width))

    # a rewritten trade file (as compaction does) rebuilds its date from all of its trades
    part = partition_dir(data_dir, "trades", EX, SYM, "2024-06-01")
    old = sorted(part.glob("*.parquet"))
    day_trades = [t for t in trades if t[0] < T0 + DAY]
    replace_partition_files(part, rows_to_table("trades", day_trades), old)
    report = build_candles(data_dir)
    assert [a[2:] for a in report.actions] == [("2024-06-01", "full")]
    con = recorder.connect(data_dir)
    candle_rows(con)
    assert_same(built(con, "1m"), reference(trades + extra, MIN))

    # the same data built from scratch gives the same rows
    fresh = tmp_path_factory.mktemp("fresh")
    shutil.copytree(data_dir / "trades", fresh / "trades")
    shutil.copytree(data_dir / "events", fresh / "events")
    build_candles(fresh)
    a = built(recorder.connect(fresh), "1s").drop(columns=["date"])
    b = built(recorder.connect(data_dir), "1s").drop(columns=["date"])
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12)


def test_intervals_add_up_and_deleted_trades_remove_candles(two_days):
    data_dir, trades = two_days
    build_candles(data_dir, intervals="1m")
    build_candles(data_dir, intervals=["1h"])
    con = recorder.connect(data_dir)
    intervals = con.execute("SELECT DISTINCT interval FROM candles ORDER BY 1").fetchall()
    assert intervals == [("1h",), ("1m",)]
    assert_same(built(con, "1m"), reference(trades, MIN))

    shutil.rmtree(partition_dir(data_dir, "trades", EX, SYM, "2024-06-02"))
    report = build_candles(data_dir)
    assert ("2024-06-02", "remove") in [a[2:] for a in report.actions]
    days = recorder.connect(data_dir).execute("SELECT DISTINCT date::VARCHAR FROM candles").fetchall()
    assert days == [("2024-06-01",)]


def test_candles_lost_behind_the_builders_back_are_rebuilt(two_days):
    data_dir, trades = two_days
    build_candles(data_dir, intervals="1m")
    for p in partition_dir(data_dir, "candles", EX, SYM, "2024-06-01").glob("*.parquet"):
        p.unlink()
    report = build_candles(data_dir, intervals="1m")
    assert [a[2:] for a in report.actions] == [("2024-06-01", "full")]
    assert_same(built(recorder.connect(data_dir), "1m"), reference(trades, MIN))


def test_complete_is_false_where_the_recording_had_a_gap(tmp_path):
    write_trades(
        tmp_path,
        [
            (T0 + m * MIN + 5 * SEC, T0 + m * MIN + 6 * SEC, None, "buy", 100.0 + m, 1.0)
            for m in range(0, 120)
        ],
    )
    build_candles(tmp_path, intervals="1m,1h")
    assert not built(recorder.connect(tmp_path), "1m")["complete"].any()  # no events: nothing known complete

    write_events(
        tmp_path,
        [
            (T0 + 2 * MIN + 30 * SEC, "subscribed"),  # minute 2 starts before the subscription
            (T0 + 50 * MIN + 10 * SEC, "disconnect"),  # minutes 50..52 overlap the gap
            (T0 + 52 * MIN + 20 * SEC, "subscribed"),
        ],
    )  # no stop: still open, known up to the last trade's receive time (minute 119 + 6 s)
    report = build_candles(tmp_path, intervals="1m,1h")
    assert report.count("finish") == 1  # coverage changed, trades did not: no trade rescan
    con = recorder.connect(tmp_path)
    got = built(con, "1m")["complete"]
    minute = (got.index - T0) // MIN
    want = (minute >= 3) & ~minute.isin([50, 51, 52]) & (minute < 119)
    assert (got.to_numpy() == np.asarray(want)).all()
    assert not built(con, "1h")["complete"].any()

    write_events(tmp_path, [(T0 + 3 * HOUR, "stop")])
    build_candles(tmp_path, intervals="1m,1h")
    got = built(recorder.connect(tmp_path), "1m")["complete"]
    assert got.loc[T0 + 119 * MIN]


def test_fill_writes_flat_candles_inside_coverage_only(tmp_path):
    # day 1: trades in minutes 10 and 13; day 2: first trade at 00:03
    write_trades(
        tmp_path,
        [
            (T0 + 10 * MIN, T0 + 10 * MIN, None, "buy", 5.0, 1.0),
            (T0 + 13 * MIN, T0 + 13 * MIN, None, "sell", 7.0, 2.0),
            (T0 + DAY + 3 * MIN, T0 + DAY + 3 * MIN, None, "buy", 8.0, 1.0),
        ],
    )
    write_events(
        tmp_path,
        [
            (T0 + 5 * MIN, "subscribed"),
            (T0 + 20 * MIN, "disconnect"),
            (T0 + DAY - 2 * MIN, "subscribed"),
            (T0 + DAY + 5 * MIN, "stop"),
        ],
    )
    build_candles(tmp_path, intervals="1m,1d", fill=True)
    con = recorder.connect(tmp_path)
    got = built(con, "1m")
    minutes = ((got.index - T0) // MIN).tolist()
    # from the first trade to the disconnect, and the covered minutes around midnight
    assert minutes == list(range(10, 20)) + [1438, 1439] + [1440 + m for m in range(5)]
    flat = got.loc[T0 + 11 * MIN]
    ohlcvn = [flat.open, flat.high, flat.low, flat.close, flat.volume, flat.trades]
    assert ohlcvn == [5.0, 5.0, 5.0, 5.0, 0.0, 0]
    assert pd.isna(flat.vwap) and flat.complete
    assert got.loc[T0 + 14 * MIN, "close"] == 7.0
    assert got.loc[T0 + DAY + 0 * MIN, "close"] == 7.0  # carried over midnight
    assert got.loc[T0 + DAY + 3 * MIN, "close"] == 8.0
    assert got.loc[T0 + 19 * MIN, "complete"]  # coverage ends at the 20:00 disconnect: minute 19 is whole
    days = built(con, "1d")
    assert days["trades"].tolist() == [2, 1] and not days["complete"].any()

    # building again without --fill drops the flat candles without rescanning trades
    report = build_candles(tmp_path, intervals="1m,1d")
    assert {a[3] for a in report.actions} == {"finish"}
    assert built(recorder.connect(tmp_path), "1m")["trades"].min() > 0


def test_fill_without_events_spans_first_to_last_trade(tmp_path):
    write_trades(
        tmp_path,
        [
            (T0 + 2 * MIN, T0 + 2 * MIN, None, "buy", 1.0, 1.0),
            (T0 + 6 * MIN + 1, T0 + 6 * MIN + 1, None, "buy", 2.0, 1.0),
        ],
    )
    build_candles(tmp_path, intervals="1m", fill=True)
    got = built(recorder.connect(tmp_path), "1m")
    assert ((got.index - T0) // MIN).tolist() == [2, 3, 4, 5, 6]
    assert got["close"].tolist() == [1.0, 1.0, 1.0, 1.0, 2.0] and not got["complete"].any()


def test_streams_are_built_separately_and_filters_apply(tmp_path):
    write_trades(tmp_path, [(T0, T0, None, "buy", 1.0, 1.0)], symbol="ETH-USDT")
    write_trades(tmp_path, [(T0, T0, None, "buy", 2.0, 1.0)])
    report = build_candles(tmp_path, symbol="eth_usdt", intervals="1m")
    assert [a[:2] for a in report.actions] == [(EX, "ETH-USDT")]
    build_candles(tmp_path, exchange=EX, intervals="1m")
    con = recorder.connect(tmp_path)
    assert built(con, "1m", symbol="ETH-USDT")["close"].tolist() == [1.0]
    assert built(con, "1m")["close"].tolist() == [2.0]


def test_unknown_interval_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="2m"):
        build_candles(tmp_path, intervals="1m,2m")


def test_a_trade_file_replaced_during_the_build_is_picked_up(two_days, monkeypatch):
    """Compaction may swap trade files between discovery and reading: the build looks again once."""
    data_dir, trades = two_days
    original = Aggregator.from_trades
    calls = []

    def racing(self, files, *args, **kwargs):  # noqa: ANN001, ANN202
        if not calls:
            calls.append(1)
            part = partition_dir(data_dir, "trades", EX, SYM, "2024-06-01")
            old = sorted(part.glob("*.parquet"))
            day = [t for t in trades if t[0] < T0 + DAY]
            replace_partition_files(part, rows_to_table("trades", day), old)
        return original(self, files, *args, **kwargs)

    monkeypatch.setattr(Aggregator, "from_trades", racing)
    build_candles(data_dir, intervals="1m")
    assert_same(built(recorder.connect(data_dir), "1m"), reference(trades, MIN))
    assert build_candles(data_dir, intervals="1m").actions == []


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3 * MIN // 1000),
            st.integers(1, 300),
            st.booleans(),
            st.integers(1, 40),
            st.integers(0, 5 * MIN),
        ),
        min_size=1,
        max_size=60,
    ),
    st.lists(st.integers(1, 59), max_size=3),
)
def test_any_trades_any_file_split_match_the_reference(tmp_path_factory, items, cuts):
    """Exchange times on a coarse ms grid (many ties) in any arrival order, receive times unrelated to
    either (another recorder's clock, compacted files): only exchange time, then file and row order,
    may decide open and close. Rows cut into several files at random."""
    data_dir = tmp_path_factory.mktemp("prop")
    trades = [
        (T0 + DAY - MIN + ms * 1000, T0 + DAY + recv, None, "buy" if buy else "sell", price / 4, size / 8)
        for ms, price, buy, size, recv in items
    ]  # straddles midnight: two dates
    bounds = sorted({0, len(trades), *(c % (len(trades) + 1) for c in cuts)})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        write_trades(data_dir, trades[lo:hi])
    build_candles(data_dir, intervals="1s,1m,1d")
    con = recorder.connect(data_dir)
    for interval in ("1s", "1m", "1d"):
        assert_same(built(con, interval), reference(trades, INTERVALS[interval]))


def test_appends_rewrite_only_touched_groups_and_survive_an_interrupted_replacement(two_days, monkeypatch):
    """A date's candles are several files (1s blocks, the rest); appends replace only the groups they
    touch, twice in a row; a crash between two group replacements is recovered without duplicates."""
    data_dir, trades = two_days
    build_candles(data_dir)
    day2 = "2024-06-02"
    before = set(candle_files(data_dir, day2))
    assert len(before) == 7  # six 4-hour blocks of 1s and the rest

    extras = []
    for hour in (21, 22):  # append twice: hour 21, then hour 22 (same 1s block 20-24)
        extra = random_trades(
            np.random.default_rng(hour), T0 + DAY + hour * HOUR, T0 + DAY + (hour + 1) * HOUR, 300
        )
        write_trades(data_dir, extra)
        extras += extra
        report = build_candles(data_dir)
        assert [a[2:] for a in report.actions] == [(day2, "append")]
        after = set(candle_files(data_dir, day2))
        assert len(before - after) == 2 and len(after) == 7  # the 20-24 block and the rest, nothing else
        before = after
        con = recorder.connect(data_dir)
        candle_rows(con)
        for interval, width in INTERVALS.items():
            assert_same(built(con, interval), reference(trades + extras, width))

    # crash: the first group replacement of the next append completes, the second dies mid-way
    extra = random_trades(np.random.default_rng(3), T0 + DAY + 2 * HOUR, T0 + DAY + 23 * HOUR, 400)
    write_trades(data_dir, extra)
    real = sink.replace_partition_files
    calls = []

    def crashing(directory, tbl, old):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 2:  # the new file is written, the old one not yet removed
            sink.write_parquet_atomic(tbl, directory / "20990101T000000.000000-dead_1_x-crashed.parquet")
            marker = directory / f"{sink.MARKER_PREFIX}dead_1_x-0.json"
            marker.write_bytes(
                b'{"new": "20990101T000000.000000-dead_1_x-crashed.parquet", "old": %s}'
                % str([p.name for p in old]).replace("'", '"').encode()
            )
            raise KeyboardInterrupt
        return real(directory, tbl, old)

    monkeypatch.setattr(build_mod, "replace_partition_files", crashing)
    with pytest.raises(KeyboardInterrupt):
        build_candles(data_dir)
    monkeypatch.setattr(build_mod, "replace_partition_files", real)
    report = build_candles(data_dir)  # recovers the replacement, sees files it did not record: full
    assert [a[2:] for a in report.actions] == [(day2, "full")]
    con = recorder.connect(data_dir)
    candle_rows(con)
    for interval, width in INTERVALS.items():
        assert_same(built(con, interval), reference(trades + extras + extra, width))
    assert build_candles(data_dir).actions == []


# ---- issue 7 (9): compaction and candles do not undo each other ---------------------------------


def all_candles(con) -> pd.DataFrame:  # noqa: ANN001
    return con.execute("SELECT * EXCLUDE (recv_ts) FROM candles ORDER BY interval, open_time").df()


def test_compaction_rebuilds_no_candles_and_leaves_candle_files_alone(two_days):
    """build, compact, build: the second build redoes nothing; a later append stays an append."""
    from recorder.storage.compact import compact_data_dir

    data_dir, trades = two_days
    build_candles(data_dir)
    before = all_candles(recorder.connect(data_dir))
    files = {day: candle_files(data_dir, day) for day in ("2024-06-01", "2024-06-02")}
    assert all(len(f) > 1 for f in files.values())  # grouped files a compaction would have merged

    res = compact_data_dir(data_dir)
    assert res.files_in == 4 and res.files_out == 2  # the two trade partitions, nothing else
    for day in files:
        assert len(list(partition_dir(data_dir, "trades", EX, SYM, day).glob("*.parquet"))) == 1
        assert candle_files(data_dir, day) == files[day]

    again = build_candles(data_dir)
    assert again.actions == [] and again.skipped == 2  # compaction only re-packed built rows
    assert again.rows == 0
    pd.testing.assert_frame_equal(all_candles(recorder.connect(data_dir)), before)

    late = [(T0 + DAY + 20 * HOUR + 5 * SEC, T0 + DAY + 20 * HOUR + 6 * SEC, None, "buy", 99.0, 1.0)]
    write_trades(data_dir, late)
    third = build_candles(data_dir)
    assert [a[2:] for a in third.actions] == [("2024-06-02", "append")]
    con = recorder.connect(data_dir)
    for interval in ("1m", "1d"):
        assert_same(built(con, interval), reference(trades + late, INTERVALS[interval]))

    # a merged file merged again (its footer nests the first merge's inputs): still nothing to do
    assert compact_data_dir(data_dir).files_in == 2
    assert build_candles(data_dir).actions == []


def test_many_small_streams_build_fast_and_exact(tmp_path):
    """200 streams of a few trades (issue 7: 11.7 s, per-stream overhead): each stream's candles are
    still its own and exact, and the build stays far below the old per-stream cost."""
    rng = np.random.default_rng(11)
    streams: dict[str, list] = {}
    for i in range(200):
        sym = f"S{i:03d}-USDT"
        lo = T0 + int(rng.integers(0, 20 * HOUR))
        for _ in range(3):  # three flushes; ties on exchange time across them are common
            batch = random_trades(rng, lo, lo + 4 * HOUR, 2)
            write_trades(tmp_path, batch, symbol=sym)
            streams.setdefault(sym, []).extend(batch)
        write_events(tmp_path, [(T0 - MIN, "subscribed"), (T0 + 2 * DAY, "stop")], symbol=sym)
    report = build_candles(tmp_path)  # its speed is measured by bench_candles.py --many-symbols
    assert report.count("full") == len({(a[1], a[2]) for a in report.actions}) >= 200
    con = recorder.connect(tmp_path)
    counts = dict(con.sql("SELECT symbol, sum(trades) FROM candles WHERE interval = '1d' GROUP BY 1").fetchall())
    assert counts == {sym: len(trades) for sym, trades in streams.items()}  # no stream's trades in another's
    for sym in sorted(streams)[::8]:  # 25 streams compared in full with the independent reference
        for interval in ("1s", "1m", "4h", "1d"):
            assert_same(built(con, interval, symbol=sym), reference(streams[sym], INTERVALS[interval]))
    assert build_candles(tmp_path).actions == []
