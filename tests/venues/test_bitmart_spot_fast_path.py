"""BitMart spot's fast decoding (ISA-L inflate, msgspec typed pushes) gives what the general way
gives: the same payload for every frame, the same records for every plain push, and it steps aside
(None) for anything else so that the general way alone decides what odd input means."""

from __future__ import annotations

import zlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.sim import BitmartSpotSim
from recorder.venues import bitmart_spot as bs


def _general(raw: bytes) -> list:
    return bs.parse_message(orjson.loads(raw))


def _tape(events: int) -> list[bytes]:
    sim = BitmartSpotSim(symbols=2, seed=3, rate=0, tape_events=events, include_pre_trade=False)
    sim.build_tapes(sim.market.steps(events))
    frames = []
    for tape in sim._tapes.values():
        frames += [tape.snapshot, *tape.depth, *(f for f, _ in tape.trades)]
    return frames


def test_tape_frames_inflate_and_parse_as_the_general_way() -> None:
    frames = _tape(3000)
    assert len(frames) > 3000
    for frame in frames:
        raw = bs.inflate(frame)
        assert raw == zlib.decompress(frame, -zlib.MAX_WBITS)
        assert raw.endswith((b',"table":"spot/depth/increase100"}', b',"table":"spot/trade"}')), raw  # as BitMart writes it
        typed = bs._typed(raw)
        assert typed is not None, raw  # every simulator push takes the fast way
        assert typed == _general(raw)


PUSH = b'{"table":"spot/depth/increase100","data":[{"symbol":"A","version":%s,"type":"update","ms_t":%s,"bids":%s,"asks":[]}]}'
TRADE = b'{"table":"spot/trade","data":[{"symbol":"A","side":%s,"price":%s,"size":"2"%s}]}'


def _table_last(raw: bytes) -> bytes:
    """The same push with `table` after `data`, as BitMart writes it."""
    table, data = raw[1:-1].split(b",", 1)  # bytes only: the push need not be valid JSON
    assert table.startswith(b'"table":') and data.startswith(b'"data":') and raw.endswith(b"}"), raw
    return b"{" + data + b"," + table + b"}"


def test_table_last_is_the_same_push() -> None:
    raw = PUSH % (b"5", b"1", b'[["1","2"]]')
    last = _table_last(raw)
    assert orjson.loads(last) == orjson.loads(raw)
    assert bs._typed(last) == bs._typed(raw) == _general(raw)


@pytest.mark.parametrize(
    "raw",
    [
        PUSH % (b'"5"', b"1", b"[]"),  # version as a string: int() reads it
        PUSH % (b"true", b"1", b"[]"),  # a bool is no version for msgspec, int(True) is 1
        PUSH % (b"123456789012345678901", b"1", b"[]"),  # past 64 bits: orjson reads a float
        PUSH % (b"5", b"1", b'[["1","2","3"]]'),  # three values in a level
        PUSH % (b"5", b"1", b'[["x","2"]]'),  # not a number
        PUSH % (b'"1.0"', b"1", b"[]"),  # lax msgspec would read these as a version; int() refuses them
        PUSH % (b'"1e3"', b"1", b"[]"),
        PUSH % (b"5", b'"1"', b"[]"),  # a time as a string: int() reads it
        PUSH % (b"5", b"1", b'[[" 1","2"]]'),  # float() reads these, msgspec does not
        PUSH % (b"5", b"1", b'[["1_0","2"]]'),
        PUSH % (b"5", b"1", b'[["1e400","2"]]'),
        PUSH % (b"5", b"1", b'[["00012","2"]]'),
        TRADE % (b'"hold"', b'"1"', b',"ms_t":1'),
        TRADE % (b'"buy"', b'"1"', b""),  # no time at all
        TRADE % (b'"buy"', b'"1"', b',"ms_t":null'),
        b'{"table":"spot/depth/increase100","data":{}}',
        b'{"event":"subscribe","topic":"spot/trade:A"}',
        b'{"errorCode":"1","errorMessage":"x"}',
        # `table` last: another channel's items under it, or no `data` at all
        b'{"data":[{"symbol":"A","version":5,"type":"update","ms_t":1,"bids":[],"asks":[]}],"table":"spot/trade"}',
        b'{"data":[{"symbol":"A","side":"buy","price":"1","size":"2","ms_t":1}],"table":"spot/depth/increase100"}',
        b'{"table":"spot/depth/increase100"}',
        b'{"data":{},"table":"spot/depth/increase100"}',
        b'{"data":[],"table":"spot/trade"} {"table":"spot/trade"}',  # trailing data
    ],
)
def test_odd_input_steps_aside_to_the_general_way(raw: bytes) -> None:
    for r in ([raw, _table_last(raw)] if raw.startswith(b'{"table":"spot/') and b'"data"' in raw else [raw]):
        assert bs._typed(r) is None, r
        assert repr(bs.parse(r)) == repr(bs.parse(r.decode()))  # and parse() is the general way's answer


def test_plain_trades_group_by_symbol_like_the_general_way() -> None:
    raw = (
        b'{"table":"spot/trade","data":[{"symbol":"A","side":"buy","price":"1","size":"2","ms_t":1},'
        b'{"symbol":"B","side":"sell","price":"1.5","size":"2","s_t":7},'
        b'{"symbol":"A","side":"buy","price":"3","size":"2","ms_t":2}]}'
    )
    assert bs._typed(raw) == _general(raw)
    assert [(b.symbol, len(b.trades)) for b in bs._typed(raw)] == [("A", 2), ("B", 1)]


def test_bad_deflate_keeps_zlibs_error_and_big_frames_keep_the_cap() -> None:
    with pytest.raises(zlib.error, match="invalid block type"):
        bs.inflate(b"\x07\xffnot a deflate stream")
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = c.compress(b" " * 2 * bs.MAX_INFLATED_BYTES) + c.flush()
    assert len(bomb) >= bs._SMALL_FRAME
    with pytest.raises(ValueError, match="deflate bomb"):
        bs.inflate(bomb)


# Every way a number can be written that the two readers might read differently
_NUMBERS = [
    '"1"', '"-0"', '"-0.0"', '"0"', '"-0e0"', '"1.50"', '"1e5"', '"1E-5"', '"nan"', '"NaN"', '"inf"',
    '"-Infinity"', '"1e400"', '"1e-400"', '" 1"', '"1 "', '"+1"', '".5"', '"5."', '"00012"', '"1_0"',
    '"0x10"', '""', '"\\u0031"', '"\uff11"', '"123456789012345678901234567890"', '"9007199254740993"',
    "1", "-0", "-0.0", "1.5", "1e400", "123456789012345678901", "true", "null", '"true"', "[]",
]
_INTS = ["5", "-5", '"5"', '"1.0"', '"1e3"', "1.0", "1.5", "1e3", "true", "null", '" 5"', '"05"', '"-0"',
         "9223372036854775807", "9223372036854775808", "-9223372036854775809"]


@settings(max_examples=3000, deadline=None)
@given(
    version=st.sampled_from(_INTS),
    ms=st.sampled_from(_INTS),
    levels=st.lists(st.tuples(st.sampled_from(_NUMBERS), st.sampled_from(_NUMBERS)), max_size=3),
    trade_time=st.sampled_from(['"ms_t":%s', '"s_t":%s', '"ms_t":%s,"s_t":1', '"x":%s']),
)
def test_any_push_reads_as_the_general_way_bit_for_bit(version, ms, levels, trade_time) -> None:
    """The fast way gives the general way's records (repr: -0.0 is not 0.0 here) or steps aside."""
    bids = "[" + ",".join(f"[{p},{q}]" for p, q in levels) + "]"
    book = PUSH % (version.encode(), ms.encode(), bids.encode())
    price, size = (levels[0] if levels else ('"1"', '"2"'))
    item = f'"symbol":"A","side":"buy","price":{price},"size":{size},{trade_time % ms}'
    trade = ('{"table":"spot/trade","data":[{' + item + "}]}").encode()
    for raw in (book, trade, _table_last(book), _table_last(trade)):
        typed = bs._typed(raw)
        if typed is not None:
            assert repr(typed) == repr(_general(raw)), raw
        got = bs.parse(raw)  # and parse() answers as the general way does: its records, or its error
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            assert [m.code for m in got] == ["decode"], raw
            continue
        try:
            expected = bs.parse_message(doc)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError):
            assert [m.code for m in got] == ["parse"], raw
            continue
        assert repr(got) == repr(expected), raw
