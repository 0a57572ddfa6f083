"""BitMart spot adapter: fed real wire messages (from ../shared/protocols/bitmart.md) as bytes."""

from __future__ import annotations

import zlib
from decimal import Decimal

import orjson
from hypothesis import given
from hypothesis import strategies as st

from recorder.model import Ack, BookMessage, Pong, ProtocolError, TradeBatch
from recorder.venues import bitmart_spot as bm
from recorder.venues.bitmart_spot import BitmartSpot
from recorder.venues.contract import Instrument


def deflate(obj: dict | bytes) -> bytes:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(raw) + c.flush()


SNAPSHOT = {
    "data": [
        {
            "asks": [["23200", "0.69959"], ["28000.00", "0.20000"]],
            "bids": [["23105", "1.80114"]],
            "ms_t": 1698292343610,
            "symbol": "BTC_USDT",
            "type": "snapshot",
            "version": 4,
        }
    ],
    "table": "spot/depth/increase100",
}
TRADES = {
    "table": "spot/trade",
    "data": [
        {"symbol": "ETH_USDT", "price": "162.12", "side": "buy", "size": "11.085", "s_t": 1542337219, "ms_t": 1542337219120},
        {"ms_t": 1709552020997, "price": "64949.02", "s_t": 1709552020, "side": "sell", "size": "0.00067", "symbol": "BTC_USDT"},
    ],
}


def test_snapshot_binary_frame_parses_levels_and_version():
    [m] = bm.parse_frame(deflate(SNAPSHOT))
    assert isinstance(m, BookMessage)
    assert (m.symbol, m.seq, m.is_snapshot, m.ts) == ("BTC_USDT", 4, True, 1698292343610_000)
    assert m.asks == [(23200.0, 0.69959), (28000.0, 0.2)]
    assert m.bids == [(23105.0, 1.80114)]


def test_trades_are_grouped_per_symbol_with_taker_side_and_no_id():
    batches = bm.parse_frame(deflate(TRADES))
    assert [b.symbol for b in batches] == ["ETH_USDT", "BTC_USDT"]
    assert isinstance(batches[1], TradeBatch)
    assert batches[1].trades == [(1709552020997_000, None, "sell", 64949.02, 0.00067)]


def test_text_acks_errors_and_pong():
    assert bm.parse_frame('{"event":"subscribe","topic":"spot/trade:BTC_USDT"}') == [Ack("spot/trade:BTC_USDT")]
    assert bm.parse_frame('{"topic":"spot/kline1m:BTC_USDT","event":"subscribe"}')[0].topic == "spot/kline1m:BTC_USDT"
    [e] = bm.parse_frame('{"event":"subscribe","errorCode":"90004","errorMessage":"Invalid channel param"}')
    assert isinstance(e, ProtocolError) and e.code == "90004" and "Invalid channel" in e.message
    assert bm.parse_frame("pong") == [Pong()]


def test_zlib_and_gzip_wrapped_frames_are_accepted_too():
    import gzip

    raw = orjson.dumps(TRADES)
    assert bm.parse_frame(zlib.compress(raw)) == bm.parse_frame(deflate(TRADES))
    assert bm.parse_frame(gzip.compress(raw)) == bm.parse_frame(deflate(TRADES))


def test_garbage_becomes_errors_not_exceptions():
    assert bm.parse_frame(b"\x00\x01not deflate")[0].code == "decode"
    assert bm.parse_frame(b"\x00\x01not deflate")[0].kind == "decode"
    assert bm.parse_frame(deflate(b"{not json"))[0].code == "decode"
    bad = {"table": "spot/depth/increase100", "data": [{"symbol": "BTC_USDT", "type": "update"}]}
    assert bm.parse_frame(deflate(bad))[0].code == "parse"
    assert bm.parse_frame(deflate(bad))[0].kind == "parse"


def test_deflate_bomb_is_capped():
    bomb = deflate(b"[" + b" " * (bm.MAX_INFLATED_BYTES + 10) + b"]")
    assert len(bomb) < 100_000
    [e] = bm.parse_frame(bomb)
    assert isinstance(e, ProtocolError) and "deflate bomb" in e.message


def test_subscribe_messages_respect_20_topics_and_4096_bytes():
    topics = [bm.topic("trades", f"SYM{i:03d}_USDT") for i in range(115)]
    msgs = bm.subscribe_messages(topics)
    args = [orjson.loads(m)["args"] for m in msgs]
    assert all(len(a) <= 20 for a in args) and all(len(m) <= 4096 for m in msgs)
    assert [t for a in args for t in a] == topics
    long = [bm.topic("book", "X" * 400 + f"{i}_USDT") for i in range(20)]
    assert all(len(m) <= 4096 for m in bm.subscribe_messages(long))


def test_markets_map_only_trading_symbols():
    doc = {
        "code": 1000,
        "data": {
            "symbols": [
                {"symbol": "BTC_USDT", "base_currency": "BTC", "quote_currency": "USDT", "trade_status": "trading",
                 "price_max_precision": 2, "base_min_size": "0.00001"},
                {"symbol": "NEW_USDT", "base_currency": "NEW", "quote_currency": "USDT", "trade_status": "pre-trade"},
            ]
        },
    }
    page = bm.parse_markets(doc)
    assert page.next is None
    assert page.instruments == [Instrument("BTC-USDT", "BTC_USDT", price_tick="0.01", size_step="0.00001")]
    assert [i.symbol for i in BitmartSpot().parse_markets(doc, BitmartSpot().markets_request()).instruments] == ["BTC-USDT"]


decimals = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("10000000"), places=8, allow_nan=False)


@given(price=decimals, size=decimals)
def test_decimal_strings_round_trip_through_float(price: Decimal, size: Decimal):
    """The shortest repr of the parsed float equals the exchange's decimal value."""
    msg = {"table": "spot/trade", "data": [{"symbol": "A_B", "price": str(price), "side": "buy", "size": f"{size:f}", "ms_t": 1}]}
    [b] = bm.parse_frame(deflate(msg))
    _, _, _, p, q = b.trades[0]
    assert Decimal(repr(p)) == price and Decimal(repr(q)) == size


@given(payload=st.binary(max_size=2000))
def test_any_bytes_are_inflated_or_rejected_cleanly(payload: bytes):
    out = bm.parse_frame(deflate(payload))
    assert all(isinstance(m, (ProtocolError, BookMessage, TradeBatch, Ack, Pong)) for m in out)
    garbled = bm.parse_frame(payload)
    assert isinstance(garbled, list)
