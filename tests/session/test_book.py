"""Book engine: sequence policies (BitMart's version chain, the strict default, a restart rule),
gaps, crossed books, replayable rows. Every test runs on both builds of the engine: `book.py`'s
pure-Python classes and their C build (`_engine.pyx`), which `book.py` adopts when built."""

from __future__ import annotations

import pytest

from recorder import native
from recorder.model import BookMessage
from recorder.session import book
from recorder.session.book import Outcome
from recorder.storage.bookrows import BookRows
from recorder.venues.bitmart_spot import VersionChain
from recorder.venues.contract import Verdict


@pytest.fixture(autouse=True, params=["pure", "compiled"])
def engine(request, monkeypatch):
    """Run the test on one build: `BookSync` below is that build's class."""
    if request.param == "compiled":
        if not native.COMPILED:
            pytest.skip("the C build of the hot path is not built here")
        cls = book.BookSync
    else:
        cls = book.PureBookSync
    monkeypatch.setitem(globals(), "BookSync", cls)
    return cls


BookSync = book.BookSync


def msg(seq, bids=(), asks=(), snap=False, ts=1):
    return BookMessage("X", seq, snap, ts, list(bids), list(asks))


def test_version_chain_snapshot_apply_stale_gap():
    rows = BookRows()
    s = BookSync(rows, VersionChain())
    assert s.on_message(msg(5, [(10.0, 1.0)], [(11.0, 1.0)]), 0) is Outcome.WAITING
    assert s.on_message(msg(4, [(10.0, 1.0)], [(11.0, 2.0)], snap=True), 0) is Outcome.SNAPSHOT
    assert s.on_message(msg(4), 0) is Outcome.STALE  # heartbeat repeats the version
    assert s.on_message(msg(5, [(10.0, 0.0), (9.0, 3.0)]), 0) is Outcome.APPLIED
    assert s.book.bids == {9.0: 3.0} and s.book.best_bid() == 9.0
    assert s.on_message(msg(7, [(9.5, 1.0)]), 0) is Outcome.GAP
    assert not s.valid and s.expected == 6
    assert s.on_message(msg(8, [(9.5, 1.0)]), 0) is Outcome.WAITING
    assert s.book.bids == {9.0: 3.0}  # nothing applied while invalid
    assert [r[2] for r in rows] == [4, 4, 5, 5]
    assert [r[3] for r in rows] == [True, True, False, False]


def test_crossed_update_invalidates():
    s = BookSync(BookRows())
    s.on_message(msg(1, [(10.0, 1.0)], [(11.0, 1.0)], snap=True), 0)
    assert s.on_message(msg(2, [(11.0, 1.0)]), 0) is Outcome.CROSSED
    assert not s.valid


def test_best_prices_follow_deletes_and_inserts():
    s = BookSync(BookRows())
    s.on_message(msg(1, [(10.0, 1.0), (9.0, 1.0)], [(11.0, 1.0), (12.0, 1.0)], snap=True), 0)
    s.on_message(msg(2, [(10.0, 0.0)], [(11.0, 0.0), (10.5, 2.0)]), 0)
    assert s.book.best_bid() == 9.0 and s.book.best_ask() == 10.5
    assert s.book.top(1) == ([(9.0, 1.0)], [(10.5, 2.0)])


def test_version_chain_duplicated_update_is_out_of_order_and_empty_push_drops():
    s = BookSync(BookRows(), VersionChain())
    s.on_message(msg(3, [(1.0, 1.0)], [(2.0, 1.0)], snap=True), 0)
    assert s.on_message(msg(4, [], []), 0) is Outcome.APPLIED  # an empty push that advances: no rows, seq moves
    assert s.seq == 4 and s.valid
    assert s.on_message(msg(4, [], []), 0) is Outcome.STALE  # repeated empty push (heartbeat)
    assert s.on_message(msg(4, [(1.5, 1.0)]), 0) is Outcome.OUT_OF_ORDER
    assert not s.valid and s.gaps == 0  # not a gap: nothing was skipped


def test_strict_default_rule_repeat_is_out_of_order_ahead_is_gap():
    s = BookSync(BookRows())
    s.on_message(msg(3, [(1.0, 1.0)], [(2.0, 1.0)], snap=True), 0)
    assert s.on_message(msg(3), 0) is Outcome.OUT_OF_ORDER
    s.on_message(msg(3, [(1.0, 1.0)], [(2.0, 1.0)], snap=True), 0)
    assert s.on_message(msg(5), 0) is Outcome.GAP and s.expected == 4


class BackwardsIsRestart:
    def check(self, local, m):
        return Verdict.GAP if m.seq > local else Verdict.RESTART if m.seq < local else Verdict.OUT_OF_ORDER


def test_policy_restart_verdict():
    s = BookSync(BookRows(), BackwardsIsRestart())
    s.on_message(msg(30, [(1.0, 1.0)], [(2.0, 1.0)], snap=True), 0)
    assert s.on_message(msg(2, [(1.0, 2.0)]), 0) is Outcome.RESTART
    assert not s.valid
    assert s.book.bids == {1.0: 1.0}  # nothing applied


def test_an_empty_snapshot_is_stored_and_a_replay_of_the_rows_empties_the_book(tmp_path):
    """A venue sends an empty snapshot for a book with no order (BitMart's perpetual does, protocols/
    bitmart.md §4.2): the rows say so (one bid at price 0, amount 0: a removal of nothing), so that
    replaying `book_updates` by the contract's rule gives the empty book, not the levels before it."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    from recorder.bookreplay import rebuild_book
    from recorder.model import SCHEMAS

    t0 = int(dt.datetime(2026, 12, 2, tzinfo=dt.UTC).timestamp() * 1_000_000)
    rows = BookRows()
    s = BookSync(rows, VersionChain())
    assert s.on_message(msg(1, [(10.0, 1.0)], [(11.0, 2.0)], snap=True, ts=t0), t0 + 1) is Outcome.SNAPSHOT
    assert s.on_message(msg(2, [(9.0, 3.0)], ts=t0 + 5), t0 + 6) is Outcome.APPLIED
    assert s.on_message(msg(2, [], []), t0 + 8) is Outcome.STALE  # an empty update: still no row
    assert s.on_message(msg(7, snap=True, ts=t0 + 10), t0 + 11) is Outcome.SNAPSHOT
    assert s.valid and s.seq == 7 and s.book.bids == {} and s.book.asks == {}
    assert s.book.best_bid() is None and s.book.best_ask() is None
    assert list(rows)[3:] == [(t0 + 10, t0 + 11, 7, True, "bid", 0.0, 0.0)]
    assert s.on_message(msg(8, [], [(12.0, 1.0)], ts=t0 + 20), t0 + 21) is Outcome.APPLIED  # the book refills

    cols = list(zip(*rows, strict=True))
    us = pa.timestamp("us", tz="UTC")
    table = pa.table(
        {"ts": pa.array(cols[0], us), "recv_ts": pa.array(cols[1], us), "seq": cols[2], "is_snapshot": cols[3],
         "side": cols[4], "price": cols[5], "amount": cols[6]},
        schema=SCHEMAS["book_updates"],
    )
    part = tmp_path / "book_updates" / "exchange=bitmart/symbol=BTC-USDT/date=2026-12-02"
    part.mkdir(parents=True)
    pq.write_table(table, part / "a.parquet")

    def at(recv: int) -> tuple:
        return rebuild_book(tmp_path, "bitmart", "BTC-USDT", dt.datetime.fromtimestamp(recv / 1e6, dt.UTC)).top()

    assert at(t0 + 6) == ([(10.0, 1.0), (9.0, 3.0)], [(11.0, 2.0)])
    assert at(t0 + 11) == ([], [])  # before: the replay kept the two bids and the ask
    assert at(t0 + 21) == ([], [(12.0, 1.0)])
