"""Peatio/Ranger adapter (`peatio`, preset `altmarkets`): real wire messages from
../shared/protocols/altmarkets.md (tests/venues/fixtures/peatio/) in, records out; texts out."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder import venues
from recorder.errors import RecorderError
from recorder.model import (
    BOOK,
    CONNECT,
    ERROR,
    GAP,
    RESYNC,
    TRADES,
    BookMessage,
    Cause,
    HeldTopics,
    Pong,
    ProtocolError,
    TradeBatch,
)
from recorder.session.book import BookSync, Outcome
from recorder.session.dispatcher import Dispatcher, Topic
from recorder.session.stream import Stream
from recorder.storage.bookrows import BookRows
from recorder.storage.sink import ParquetSink
from recorder.venues import peatio as pt
from recorder.venues.contract import Instrument, RestRequest, Resync, Subscribe, VenueError, Verdict
from recorder.venues.peatio import Altmarkets, Peatio

FIXTURES = Path(__file__).parent / "fixtures" / "peatio"
RECV = 1_767_225_600_000_000

BTC = Instrument("BTC-USDT", "btcusdt")
EURUSD = Instrument("EUR-USD", "eurusd")
EURBTC = Instrument("EUR-BTC", "eurbtc")


def wire(name: str) -> str:
    return (FIXTURES / f"{name}.json").read_text().rstrip("\n")


def parse(text: str | bytes, *insts: Instrument) -> list:
    codec = Peatio().codec(list(insts) or [BTC, EURUSD, EURBTC])
    return codec.parse(codec.decode(text))


# ---- book ------------------------------------------------------------------------------------


def test_snapshot_arrives_on_the_inc_stream_with_sequence_and_no_time():
    assert parse(wire("ob_snap")) == [
        BookMessage(
            "btcusdt", 1, True, None, bids=[(11.0, 2.0), (10.0, 2.0)], asks=[(12.0, 1.0), (14.0, 1.0)]
        )
    ]


def test_single_level_increments_with_empty_amount_meaning_delete():
    assert parse(wire("ob_inc_single_level")) == [
        BookMessage("btcusdt", 1234, False, None, [], [(0.00000099, 2810.1)])
    ]
    assert parse(wire("ob_inc_single_level_delete_empty")) == [
        BookMessage("btcusdt", 1235, False, None, [(0.00000095, 0.0)], [])
    ]


def test_batched_increments_with_zero_meaning_delete():
    assert parse(wire("ob_inc_batched")) == [
        BookMessage("eurusd", 497773, False, None, [], [(1020.0, 0.015)])
    ]
    assert parse(wire("ob_inc_batched_delete_zero")) == [
        BookMessage("eurusd", 497775, False, None, [(1000.0, 0.0)], [])
    ]
    # every spelling of zero deletes, in both shapes; an empty batch carries no level
    for zero in ("0", "0.0", "0.00", "", 0):
        [m] = parse(
            orjson.dumps(
                {"btcusdt.ob-inc": {"asks": [["5.5", zero], ["6", "1"]], "bids": ["5", zero], "sequence": 3}}
            )
        )
        assert m.asks == [(5.5, 0.0), (6.0, 1.0)] and m.bids == [(5.0, 0.0)]
    [m] = parse('{"btcusdt.ob-inc":{"sequence":9,"asks":[]}}')
    assert (m.seq, m.bids, m.asks) == (9, [], [])


def test_key_order_does_not_matter():
    """Rango sorts keys alphabetically, Ruby Ranger keeps Peatio's order (§1.6)."""
    a = parse('{"btcusdt.ob-inc":{"sequence":7,"bids":["1.5","2"]}}')
    b = parse('{"btcusdt.ob-inc":{"bids":["1.5","2"],"sequence":7}}')
    assert a == b == [BookMessage("btcusdt", 7, False, None, [(1.5, 2.0)], [])]


# ---- trades, acks, errors, keepalive -----------------------------------------------------------


def test_trades_take_tid_taker_side_and_seconds():
    assert parse(wire("trades")) == [
        TradeBatch("eurbtc", [(1547464388_000_000, "100022", "buy", 0.0002, 0.00015)])
    ]
    assert parse(wire("trades_rango")) == [
        TradeBatch("eurusd", [(1588000798_000_000, "7", "buy", 1020.0, 0.001)])
    ]
    sell = {
        "btcusdt.trades": {
            "trades": [
                {"tid": "3333", "taker_type": "sell", "date": 1234567899, "price": "8772.05", "amount": "0.1"}
            ]
        }
    }
    assert parse(orjson.dumps(sell)) == [
        TradeBatch("btcusdt", [(1234567899_000_000, "3333", "sell", 8772.05, 0.1)])
    ]


def test_acks_list_every_held_stream_after_subscribe_unsubscribe_and_at_connect():
    assert parse(wire("ack_subscribed_lists_every_held_stream")) == [
        HeldTopics(frozenset({"global.tickers", "ethusd.trades", "ethusd.ob-inc"}))
    ]
    assert parse(wire("ack_unsubscribed_lists_what_is_still_held")) == [
        HeldTopics(frozenset({"global.tickers", "ethusd.kline-15m"}))
    ]
    assert parse(wire("ack_at_connect_nothing_held")) == [HeldTopics(frozenset())]
    assert parse('{"success":{"message":"Authenticated."}}') == []  # says nothing about streams


def test_errors_are_exchange_errors_naming_no_topic():
    assert parse(wire("error_rango_text")) == [
        ProtocolError("Could not parse Type: Invalid event", kind="exchange")
    ]
    assert parse(wire("error_ranger_object")) == [ProtocolError("Authentication failed.", kind="exchange")]
    [e] = parse('{"error":["x",1]}')
    assert e.kind == "exchange" and e.message == '["x",1]'


def test_pong_and_a_server_text_ping_are_keepalive():
    assert parse("pong") == [Pong()] and parse(b"pong") == [Pong()] and parse("ping") == [Pong()]
    assert Peatio().keepalive.ping == "ping"


def test_streams_we_do_not_record_and_other_markets_are_ignored():
    assert parse(wire("kline_stream_ignored")) == []
    assert parse(wire("global_tickers_ignored")) == []
    assert parse(wire("ob_snap"), EURUSD) == []  # btcusdt is not this connection's
    assert parse('{"btcusdt.ob-inc":{"asks":"garbage"}}', EURUSD) == []  # nor its broken frames


def test_junk_becomes_protocol_errors_attributed_when_possible():
    [e] = parse("{not json")
    assert (e.kind, e.code) == ("decode", "decode")
    [e] = parse("[1, 2]")
    assert (e.kind, e.code) == ("parse", "unexpected")
    for body in (
        '{"asks":["1"],"sequence":2}',
        '{"asks":[["1","2","3"]],"sequence":2}',
        '{"bids":["1","2"]}',
        '{"bids":["1","2"],"sequence":1.5}',
        '{"bids":[["1","2"],"34"],"sequence":2}',
        '{"bids":["x","2"],"sequence":2}',
    ):
        for key in ("btcusdt.ob-inc", "btcusdt.ob-snap"):
            [e] = parse(f'{{"{key}":{body}}}')
            assert (e.kind, e.code, e.topic) == ("parse", "parse", "btcusdt.ob-inc"), (key, body)
    for trade in (
        {"tid": 1, "taker_type": "bid", "date": 1, "price": "1", "amount": "1"},
        {"tid": None, "taker_type": "buy", "date": 1, "price": "1", "amount": "1"},
        {"taker_type": "buy", "date": 1, "price": "1", "amount": "1"},
    ):
        [e] = parse(orjson.dumps({"btcusdt.trades": {"trades": [trade]}}))
        assert (e.kind, e.topic) == ("parse", "btcusdt.trades")
    # an ack we cannot read: what is held is unknown, so unacked topics are retried (kind exchange)
    for doc in ('{"success":"subscribed"}', '{"success":{"streams":"btcusdt.trades"}}'):
        [e] = parse(doc)
        assert (e.kind, e.code, e.topic) == ("exchange", "parse", None)
    [e] = parse('{"hello":1}')
    assert (e.kind, e.code) == ("exchange", "unexpected")
    [e] = parse("{}")
    assert e.code == "unexpected"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.sampled_from(["", "0", "1.5", "x", "buy"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "asks",
                    "bids",
                    "sequence",
                    "trades",
                    "tid",
                    "taker_type",
                    "date",
                    "price",
                    "amount",
                    "streams",
                    "message",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(["btcusdt.ob-inc", "btcusdt.ob-snap", "btcusdt.trades", "success", "error", "x"]),
    body=json_values,
)
def test_structured_junk_never_raises(key, body):
    out = parse(json.dumps({key: body}))  # json: integers past 64 bits too
    assert all(isinstance(m, (BookMessage, TradeBatch, HeldTopics, ProtocolError)) for m in out)


# ---- texts we send ---------------------------------------------------------------------------


def market_ids(n: int) -> list[Instrument]:
    return [Instrument(f"TOKEN{i:03d}-USDT", f"token{i:03d}usdt") for i in range(n)]


def test_every_text_is_under_512_bytes_and_covers_every_topic_once_in_order():
    v = Peatio()
    topics = [v.topic(ch, i) for i in market_ids(100) for ch in v.channels]
    assert topics[:2] == ["token000usdt.trades", "token000usdt.ob-inc"]
    for texts, event in ((v.subscribe(topics), "subscribe"), (v.unsubscribe(topics), "unsubscribe")):
        assert len(texts) > 1 and all(len(t.encode()) < 512 for t in texts)
        docs = [orjson.loads(t) for t in texts]
        assert all(d["event"] == event for d in docs)
        assert [s for d in docs for s in d["streams"]] == topics
        assert all(
            len(orjson.dumps({"event": event, "streams": [*docs[k]["streams"], docs[k + 1]["streams"][0]]}))
            >= 512
            for k in range(len(docs) - 1)
        )  # each message as full as the limit allows
    assert all(len(t.encode()) < 512 for t in v.messages(Subscribe(tuple(topics))))
    for t in topics:
        assert all(len(x.encode()) < 512 for x in v.resync_messages(t))


def test_resync_is_unsubscribe_then_subscribe_of_that_one_topic():
    assert Peatio().messages(Resync("btcusdt.ob-inc")) == [
        '{"event":"unsubscribe","streams":["btcusdt.ob-inc"]}',
        '{"event":"subscribe","streams":["btcusdt.ob-inc"]}',
    ]
    assert Peatio().topic(TRADES, BTC) == "btcusdt.trades" and Peatio().topic(BOOK, BTC) == "btcusdt.ob-inc"


# ---- markets ---------------------------------------------------------------------------------


def market(id_: str, base: str, quote: str, state: str = "enabled", **kw) -> dict:
    return {
        "id": id_,
        "name": f"{base}/{quote}".upper(),
        "base_unit": base,
        "quote_unit": quote,
        "state": state,
        **kw,
    }


def test_markets_request_and_the_documented_market():
    req = Peatio().markets_request()
    assert req == RestRequest("/public/markets", {"limit": 1000, "page": 1})
    page = Peatio().parse_markets(orjson.loads(wire("markets")), req)
    assert page.next is None
    assert page.instruments == [Instrument("BTC-USDT", "btcusdt", "spot", None, "0.01", "0.00000001")]


def test_markets_are_enabled_only_and_named_from_their_own_units_never_a_suffix():
    doc = [
        market("rogerbtc", "roger", "btc", price_precision=8, amount_precision=0),
        market("abcusdtusdt", "abcusdt", "usdt"),  # a suffix guess would split it wrongly
        market("eth.usdt-x", "eth", "usdt"),
        market("dogeusdt", "doge", "usdt", "disabled"),
        market("ltcbtc", "ltc", "btc", "hidden"),
    ]
    insts = Peatio().parse_markets(doc, Peatio().markets_request()).instruments
    assert [(i.symbol, i.wire) for i in insts] == [
        ("ROGER-BTC", "rogerbtc"),
        ("ABCUSDT-USDT", "abcusdtusdt"),
        ("ETH-USDT", "eth.usdt-x"),
    ]
    assert (insts[0].price_tick, insts[0].size_step) == ("0.00000001", "1")
    assert (insts[1].price_tick, insts[1].size_step) == (None, None)
    assert all(i.kind == "spot" and i.contract_size is None for i in insts)


def test_a_full_page_asks_for_the_next_one():
    v = Peatio()
    full = [market(f"c{i}usdt", f"c{i}", "usdt") for i in range(1000)]
    page1 = v.parse_markets(full, v.markets_request())
    assert len(page1.instruments) == 1000 and page1.next == RestRequest(
        "/public/markets", {"limit": 1000, "page": 2}
    )
    page2 = v.parse_markets(full, page1.next)
    assert page2.next == RestRequest("/public/markets", {"limit": 1000, "page": 3})
    assert v.parse_markets(full[:999], page2.next).next is None
    assert v.parse_markets([], page2.next) == pt.MarketsPage([])
    # the body carries no page number: without the request, a full page cannot be continued
    with pytest.raises(VenueError, match="fills a page of 1000"):
        v.parse_markets(full)
    assert v.parse_markets(full[:3]).next is None


def test_market_list_errors():
    with pytest.raises(VenueError, match=r"public\.market\.doesnt_exist"):
        Peatio().parse_markets(orjson.loads(wire("error_rest_market_doesnt_exist")))
    with pytest.raises(VenueError):
        Peatio().parse_markets({"data": []})
    with pytest.raises(KeyError):
        Peatio().parse_markets([{"id": "btcusdt", "state": "enabled"}])


# ---- klines ----------------------------------------------------------------------------------


def test_klines_request_period_minutes_and_seconds_range():
    kl = Peatio().klines
    assert set(kl.intervals) == {"1m", "5m", "15m", "1h", "4h", "1d"}
    assert kl.intervals["4h"] == 240 and kl.intervals["1d"] == 1440
    req = kl.request(
        BTC, "1h", 1_700_000_000 - 1_700_000_000 % 3600, 1_700_000_000 - 1_700_000_000 % 3600 + 3600 * 1000
    )
    assert req.path == "/public/markets/btcusdt/k-line"
    assert req.params == {
        "period": 60,
        "time_from": 1699999200,
        "time_to": 1699999200 + 3_600_000 - 1,
        "limit": 1000,
    }
    assert kl.page_limit == 1000 and kl.rate_limit == (30, 12.0)


def test_klines_parse_rows_numbers_or_strings_and_the_error_envelope():
    kl = Peatio().klines
    [k] = kl.parse(orjson.loads(wire("klines")), BTC, "1m")
    assert (k.open_time_s, k.open, k.high, k.low, k.close, k.volume) == (
        1537370580,
        0.0839,
        0.0921,
        0.0781,
        0.0845,
        0.5895,
    )
    assert (k.quote_volume, k.trades) == (None, None)
    [k] = kl.parse(orjson.loads(wire("klines_strings")), BTC, "5m")
    assert (k.open_time_s, k.open, k.volume) == (1549638900, 0.007, 0.0)
    assert kl.parse([], BTC, "1m") == []
    with pytest.raises(VenueError, match=r"public\.market\.doesnt_exist"):
        kl.parse(orjson.loads(wire("error_rest_market_doesnt_exist")), BTC, "1m")
    with pytest.raises(VenueError):
        kl.parse({"error": "nope"}, BTC, "1m")
    with pytest.raises(ValueError):
        kl.parse([[1, 2, 3]], BTC, "1m")


# ---- the sequence rule, alone and through the session ------------------------------------------


def inc(seq: int, **sides) -> BookMessage:
    # ts 1: the dispatcher gives a message without an event time its receive time before the book
    return BookMessage("btcusdt", seq, False, 1, sides.get("bids", []), sides.get("asks", []))


def test_sequence_policy_verdicts():
    p = Peatio().sequence_policy()
    assert p.check(10, inc(12)) is Verdict.GAP
    assert p.check(10, inc(1)) is Verdict.RESTART  # the engine restarted: the sequence begins again
    assert p.check(10, inc(9)) is Verdict.RESTART
    assert p.check(10, inc(10)) is Verdict.OUT_OF_ORDER
    assert p.check(10, inc(10, asks=[(1.0, 1.0)])) is Verdict.OUT_OF_ORDER
    rows = BookRows()
    b = BookSync(rows, p)
    b.on_message(BookMessage("btcusdt", 5, True, 1, [(10.0, 1.0)], [(11.0, 1.0)]), 1)
    assert b.on_message(inc(6, bids=[(10.0, 0.0)]), 2) is Outcome.APPLIED
    assert b.on_message(inc(6), 3) is Outcome.OUT_OF_ORDER


def session(*channels: str) -> tuple[Dispatcher, Stream, dict[str, Topic]]:
    v = venues.venue("altmarkets")
    stream = Stream(ParquetSink(None), v.name, BTC, v.sequence_policy())
    topics = [Topic(v.topic(ch, BTC), ch, stream) for ch in channels or v.default_channels]
    return Dispatcher(v.codec([BTC]), topics, depth=5, rawlog=None), stream, {t.channel: t for t in topics}


def test_exact_book_through_both_shapes_a_gap_and_a_restart_with_receive_times():
    d, s, t = session()
    d.event(RECV, None, CONNECT, "ws://x")
    d.frame(RECV + 1, wire("ack_at_connect_nothing_held"))
    d.frame(RECV + 2, wire("ob_snap"))  # seq 1: asks 12, 14; bids 11, 10
    d.frame(RECV + 3, '{"btcusdt.ob-inc":{"asks":["13.0","0.5"],"sequence":2}}')
    d.frame(RECV + 4, '{"btcusdt.ob-inc":{"bids":["10.0",""],"sequence":3}}')
    d.frame(RECV + 5, '{"btcusdt.ob-inc":{"asks":[["14.0","0"],["15.0","3"]],"sequence":4}}')
    d.frame(RECV + 6, '{"success":{"message":"subscribed","streams":["btcusdt.ob-inc","btcusdt.trades"]}}')
    book = s.book.book
    assert book.bids == {11.0: 2.0} and book.asks == {12.0: 1.0, 13.0: 0.5, 15.0: 3.0}
    assert s.book.valid and s.book.seq == 4 and t[BOOK].acked and t[TRADES].acked
    assert all(r[0] == r[1] for r in s.book.rows)  # ts = the receive time
    d.frame(RECV + 7, '{"btcusdt.ob-inc":{"asks":["12.0","2"],"sequence":6}}')
    assert not s.book.valid and s.events[-1][3] == GAP
    assert d.take_intents() == [Resync("btcusdt.ob-inc")]
    d.frame(RECV + 8, '{"success":{"message":"unsubscribed","streams":["btcusdt.trades"]}}')
    assert not t[BOOK].acked and t[TRADES].acked
    d.frame(RECV + 9, '{"btcusdt.ob-snap":{"asks":[["12.5","1"]],"bids":[["11.5","1"]],"sequence":9}}')
    assert s.book.valid and s.events[-1][3] == RESYNC
    d.frame(RECV + 10, '{"btcusdt.ob-inc":{"bids":["11.0","1"],"sequence":2}}')  # the engine restarted
    assert not s.book.valid and (s.events[-1][3], s.events[-1][5]) == (ERROR, Cause.RESTART)
    assert d.take_intents() == [Resync("btcusdt.ob-inc")]
    d.frame(
        RECV + 11,
        '{"btcusdt.trades":{"trades":[{"tid":7,"taker_type":"sell","date":1767225601,"price":"11.2","amount":"0.3"}]}}',
    )
    assert s.trades == [(1767225601_000_000, RECV + 11, "7", "sell", 11.2, 0.3)]


# ---- registry, presets -------------------------------------------------------------------------


def test_peatio_is_generic_and_altmarkets_is_a_preset_with_documented_urls():
    assert {"peatio", "altmarkets"} <= set(venues.names())
    p, a = venues.venue("peatio"), venues.venue("ALTMARKETS")
    assert type(p) is Peatio and type(a) is Altmarkets
    assert (p.endpoints.ws_url, p.endpoints.rest_url) == ("", "")
    assert a.endpoints.ws_url == "wss://v2.altmarkets.io/api/v2/ranger/public"
    assert (
        a.endpoints.rest_url == "https://v2.altmarkets.io/api/v2/peatio"
    )  # paths are relative to /api/v2/peatio
    assert (p.name, a.name) == ("peatio", "altmarkets")
    assert a.resync.max_tries is None and a.resync.on_exhausted == "wait" and a.resync.wait(10) == 60.0


def test_simulator_is_a_clear_error_until_the_front_end_exists():
    if importlib.util.find_spec("recorder.sim.frontends.peatio") is not None:
        assert isinstance(venues.simulator("peatio"), type)
        return
    for name in ("peatio", "altmarkets"):
        with pytest.raises(RecorderError, match=r"^no simulator for 'peatio' yet$"):
            venues.simulator(name)
