"""The column-wise book_updates buffer holds exactly the rows the tuple list held: the same Arrow
table and Parquet values, the same list behaviour where the recorder reads a buffer, and a message
it cannot hold adds nothing and sends the book to a resync instead of breaking a later flush."""

from __future__ import annotations

import zlib

import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.model import BOOK, ERROR, SCHEMAS, TRADES, Cause
from recorder.session.dispatcher import Dispatcher, Topic
from recorder.session.stream import Stream
from recorder.storage.bookrows import ROW_ERRORS, BookRows
from recorder.storage.sink import ParquetSink, rows_to_table
from recorder.venues.bitmart_spot import BitmartSpot
from recorder.venues.contract import Instrument, Resync

SCHEMA = SCHEMAS["book_updates"]
_price = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False, width=64) | st.just(-0.0)  # a level
_level = st.tuples(_price, _price)
_message = st.tuples(
    st.integers(-62_135_596_800_000_000, 253_402_300_799_999_999),  # ts: years 1 to 9999 (to_pylist)
    st.integers(0, 253_402_300_799_999_999),  # recv
    st.none() | st.integers(-(2**63) + 1, 2**63 - 1),  # seq (None: the venue gives none)
    st.booleans(),
    st.lists(_level, max_size=4),
    st.lists(_level, max_size=4),
)


def tuples(messages) -> list[tuple]:
    """The rows as the tuple list held them (bids, then asks, of each message)."""
    out = []
    for ts, recv, seq, snap, bids, asks in messages:
        out += [(ts, recv, seq, snap, "bid", p, q) for p, q in bids]
        out += [(ts, recv, seq, snap, "ask", p, q) for p, q in asks]
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(_message, max_size=30))
def test_the_same_rows_and_table_as_the_tuple_list(messages) -> None:
    b = BookRows()
    for m in messages:
        b.add(*m)
    rows = tuples(messages)
    assert len(b) == len(rows)
    assert repr(list(b)) == repr(rows)  # repr: nan and -0.0 compared bit for bit
    if rows:
        assert repr(b[-1]) == repr(rows[-1]) and repr(b[-3:]) == repr(rows[-3:])
    table = b.to_table(SCHEMA)
    assert table.schema == SCHEMA
    assert repr(table.to_pylist()) == repr(rows_to_table("book_updates", rows).to_pylist())


def test_list_behaviour_where_the_recorder_reads_a_buffer() -> None:
    msgs = [(10, 11, 1, True, [(1.0, 2.0)], [(3.0, 4.0)]), (20, 21, None, False, [], [(3.5, 0.0)])]
    b = BookRows()
    for m in msgs:
        b.add(*m)
    rows = tuples(msgs)
    old = b.detach()  # take(): appenders keep the (now empty) buffer
    assert len(b) == 0 and list(old) == rows
    b.add(30, 31, 2, False, [(0.5, 1.0)], [])
    b[:0] = old  # a failed write puts its rows back in front
    assert list(b) == rows + [(30, 31, 2, False, "bid", 0.5, 1.0)]
    del b[:2]  # shedding drops the oldest
    assert list(b) == [rows[2], (30, 31, 2, False, "bid", 0.5, 1.0)]
    b[:] = [r for r in b if r[0] != 30]  # replay's filter
    assert list(b) == [rows[2]] and b == [rows[2]]
    t = b.to_table(SCHEMA)
    b.add(40, 41, 3, False, [(1.0, 1.0)], [])  # growing while Arrow holds a table of it is fine
    assert t.num_rows == 1 and t.column("seq").null_count == 1


def test_a_message_it_cannot_hold_adds_nothing() -> None:
    b = BookRows()
    b.add(1, 2, 3, False, [(1.0, 1.0)], [])
    for bad in ((2**63, 2, 3), (1, 2, 2**64), (1, 2, -(2**70))):
        with pytest.raises(ROW_ERRORS):
            b.add(*bad, False, [(1.0, 1.0), (2.0, 2.0)], [(3.0, 3.0)])
    assert list(b) == [(1, 2, 3, False, "bid", 1.0, 1.0)]
    assert len(b.buf) == 41
    with pytest.raises(ROW_ERRORS):
        b.add(5, 5, 5, False, [(1.0, 1.0)], [("x", 1.0)])  # not a number: nothing of it either
    assert len(b) == 1
    for level in ((float("nan"), 1.0), (1.0, float("nan")), (float("inf"), 1.0), (1.0, -1.0), (-2.0, 0.0)):
        with pytest.raises(ROW_ERRORS):  # a level no book has: nothing of the message
            b.add(5, 5, 5, False, [(1.0, 1.0)], [level])
    assert len(b) == 1


def _push(version: int, ms_t: int, kind: str = "update") -> bytes:
    doc = {"table": "spot/depth/increase100", "data": [
        {"symbol": "BTC_USDT", "version": version, "type": kind, "ms_t": ms_t,
         "bids": [["100", "1"]], "asks": [["101", "2"]]}]}
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(orjson.dumps(doc)) + c.flush()


def test_an_event_time_past_64_bits_resyncs_the_book_and_the_flush_still_writes(tmp_path) -> None:
    """ms_t * 1000 past int64 (a hostile or broken push) is no row: the book is resynced with an
    `error` event, and every other row reaches Parquet (before, it broke the flush of them all)."""
    venue, inst = BitmartSpot(), Instrument("BTC-USDT", "BTC_USDT")
    sink = ParquetSink(tmp_path)
    stream = Stream(sink, "bitmart", inst, venue.sequence_policy())
    topic = Topic(venue.topic(BOOK, inst), BOOK, stream)
    d = Dispatcher(venue.codec([inst]), [topic], depth=5, rawlog=None)
    t0 = 1_767_225_600_000_000
    d.frame(t0, _push(100, t0 // 1000, "snapshot"))
    d.frame(t0 + 1, _push(101, t0 // 1000 + 1))
    d.frame(t0 + 2, _push(102, 2**62))  # in int64 as ms, not as µs
    assert not stream.book.valid and d.take_intents() == [Resync(topic.name)]
    assert [(e[2], e[3], e[5]) for e in stream.events][-1] == (BOOK, ERROR, Cause.DECODE)
    d.frame(t0 + 3, _push(103, t0 // 1000 + 3, "snapshot"))
    assert stream.book.valid
    others = len(stream.events) + len(stream.snapshots)
    assert sink.flush() == 6 + others  # book rows, events, snapshot rows: the flush did not break
    got = pq.read_table(next((tmp_path / "book_updates").rglob("*.parquet"))).column("seq").to_pylist()
    assert got == [100, 100, 101, 101, 103, 103]


def test_a_trade_time_past_64_bits_is_an_error_event_and_the_other_trades_are_written(tmp_path) -> None:
    venue, inst = BitmartSpot(), Instrument("BTC-USDT", "BTC_USDT")
    sink = ParquetSink(tmp_path)
    stream = Stream(sink, "bitmart", inst, venue.sequence_policy())
    d = Dispatcher(venue.codec([inst]), [Topic(venue.topic(TRADES, inst), TRADES, stream)], depth=5, rawlog=None)
    t0 = 1_767_225_600_000_000
    items = [{"symbol": "BTC_USDT", "side": "buy", "price": "1", "size": "2", "ms_t": ms}
             for ms in (t0 // 1000, 2**62, t0 // 1000 + 1)]
    d.frame(t0, orjson.dumps({"table": "spot/trade", "data": items}).decode())
    assert [(e[2], e[3], e[5]) for e in stream.events] == [(TRADES, ERROR, Cause.DECODE)]
    assert sink.flush() == 3  # two trades and the event
    got = pq.read_table(next((tmp_path / "trades").rglob("*.parquet"))).column("ts").cast("int64").to_pylist()
    assert got == [t0, t0 + 1000]
