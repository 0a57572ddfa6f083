"""BitMart perpetual adapter: fed the wire messages of ../shared/protocols/bitmart.md §4 (fixtures
under fixtures/bitmart_perpetual/, copied from the notes), as text and as bytes."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recorder import venues
from recorder.errors import RecorderError
from recorder.model import (
    BOOK,
    FUNDING,
    TICKER,
    TRADES,
    Ack,
    BookMessage,
    DerivativeTicker,
    Pong,
    ProtocolError,
    TradeBatch,
)
from recorder.session.book import BookSync, Outcome
from recorder.storage.bookrows import BookRows
from recorder.venues import bitmart_perpetual as bp
from recorder.venues.bitmart_perpetual import BitmartPerpetual
from recorder.venues.contract import Instrument, Resync, Subscribe, VenueError

FIX = Path(__file__).parent / "fixtures" / "bitmart_perpetual"
BTC = Instrument("BTC-USDT", "BTCUSDT", kind="perpetual", contract_size="0.001")
AST = Instrument("ASTEROIDETH-USDT", "ASTEROIDETHUSDT", kind="perpetual", contract_size="1")
VENUE = BitmartPerpetual()


def text(name: str) -> str:
    return (FIX / f"{name}.json").read_text()


def doc(name: str) -> dict:
    return orjson.loads((FIX / f"{name}.json").read_bytes())


def parse(payload: str | bytes | dict, *insts: Instrument) -> list:
    codec = VENUE.codec(insts or (BTC, AST))
    if isinstance(payload, dict):
        payload = orjson.dumps(payload)
    return codec.parse(codec.decode(payload))


# ---------------------------------------------------------------------------------------- book


def test_snapshot_and_update_levels_in_base_units():
    [snap] = parse(text("depth_snapshot"))
    assert isinstance(snap, BookMessage)
    assert (snap.symbol, snap.seq, snap.is_snapshot, snap.ts) == ("BTCUSDT", 980361, True, 1730400086184_000)
    assert snap.asks == [(70391.6, 3.55)] and snap.bids == [(70391.2, 1.335)]  # 3550 and 1335 contracts of 0.001
    [upd] = parse(text("depth_update"))
    assert (upd.seq, upd.is_snapshot, upd.ts) == (980362, False, 1730400086194_000)
    assert upd.bids == [(70391.2, 0.0), (70353.4, 11.435)]  # "0" deletes the level
    assert upd.asks == [(70395.3, 0.341), (70395.4, 0.323)]


def test_bytes_and_text_frames_parse_alike():
    assert parse(text("depth_snapshot_capture_100ms")) == parse(text("depth_snapshot_capture_100ms").encode())
    [m] = parse(text("depth_snapshot_capture_100ms"))
    assert (m.seq, m.bids, m.asks) == (7822754, [(78709.0, 3.437)], [(78723.1, 0.468)])


def test_empty_push_advances_the_version_and_is_applied():
    [empty] = parse(text("depth_update_empty"))
    assert (empty.symbol, empty.seq, empty.is_snapshot, empty.bids, empty.asks) == (
        "ASTEROIDETHUSDT", 2754386, False, [], []
    )
    rows = BookRows()
    sync = BookSync(rows, VENUE.sequence_policy())
    snap = BookMessage("ASTEROIDETHUSDT", 2754385, True, 1, [(1.0, 2.0)], [(2.0, 1.0)])
    assert sync.on_message(snap, 1) is Outcome.SNAPSHOT
    assert sync.on_message(empty, 2) is Outcome.APPLIED and sync.seq == 2754386  # local+1, even empty
    assert sync.on_message(empty, 3) is Outcome.STALE  # the same empty push again: dropped
    again = BookMessage("ASTEROIDETHUSDT", 2754386, False, 4, [(1.0, 3.0)], [])
    assert sync.on_message(again, 4) is Outcome.OUT_OF_ORDER  # non-empty, not advancing
    sync.on_message(snap, 5)
    ahead = BookMessage("ASTEROIDETHUSDT", 2754387, False, 6, [], [])
    assert sync.on_message(ahead, 6) is Outcome.GAP  # an empty push that skips one is a gap too


def test_contract_size_conversion_is_exact():
    inst = Instrument("X-USDT", "XUSDT", kind="perpetual", contract_size="0.1")
    push = {"group": "futures/depthIncrease50:XUSDT@100ms",
            "data": {"symbol": "XUSDT", "asks": [{"price": "1.5", "vol": "3"}], "bids": [], "ms_t": 1, "version": 1,
                     "type": "snapshot"}}
    [m] = parse(push, inst)
    assert 3 * 0.1 != 0.3 and m.asks == [(1.5, 0.3)] and repr(m.asks[0][1]) == "0.3"
    trade = {"group": "futures/trade:XUSDT", "data": [{"trade_id": 7, "symbol": "XUSDT", "deal_price": "1.5",
                                                     "deal_vol": "3", "m": False, "created_at": "2025-01-01T00:00:00Z"}]}
    [b] = parse(trade, inst)
    assert repr(b.trades[0][4]) == "0.3"


@given(vol=st.integers(min_value=0, max_value=10**12), size=st.sampled_from(["0.001", "0.0001", "0.1", "1", "10", "0.00001"]))
def test_sizes_are_the_shortest_decimal_of_contracts_times_size(vol: int, size: str):
    inst = Instrument("X-USDT", "XUSDT", kind="perpetual", contract_size=size)
    push = {"group": "futures/depthIncrease50:XUSDT@100ms",
            "data": {"symbol": "XUSDT", "asks": [], "bids": [{"price": "2", "vol": str(vol)}], "ms_t": 1, "version": 2,
                     "type": "update"}}
    [m] = parse(push, inst)
    assert Decimal(repr(m.bids[0][1])) == Decimal(vol) * Decimal(size)


def test_pushes_for_symbols_not_on_this_connection_and_other_channels_are_skipped():
    assert parse(text("depth_snapshot"), AST) == []
    assert parse(text("trade_doc_sample"), AST) == []
    assert parse(text("ticker"), AST) == []
    assert parse(text("depth_all_not_ours")) == []


# -------------------------------------------------------------------------------------- trades


def test_trades_keep_the_id_as_string_side_from_m_and_ns_to_us():
    [b] = parse(text("trade_capture_with_way"))
    assert isinstance(b, TradeBatch) and b.symbol == "BTCUSDT"
    # way 2 ("buy_open_long sell_close_long") is not the side: m true = the taker sold
    assert b.trades == [(1741630634_656686, "3000000389425121", "sell", 78727.3, 0.31)]
    [d] = parse(text("trade_doc_sample"))
    assert d.trades == [(1677225251_124940, "1409495322", "sell", 117387.58, 1.445)]


def test_taker_buy_when_m_is_false():
    t = doc("trade_capture_with_way")
    t["data"][0]["m"] = False
    [b] = parse(t)
    assert b.trades[0][2] == "buy"


def test_newest_first_arrays_come_out_oldest_first_ties_in_time_order():
    def trade(tid: int, at: str) -> dict:
        return {"trade_id": tid, "symbol": "BTCUSDT", "deal_price": "100", "deal_vol": "1", "way": 1, "m": False,
                "created_at": at}

    newest_first = [
        trade(5, "2025-03-10T18:17:15.000000001Z"),
        trade(4, "2025-03-10T18:17:14.9Z"),
        trade(3, "2025-03-10T18:17:14.656686827Z"),  # same microsecond as 2: newest first too
        trade(2, "2025-03-10T18:17:14.656686001Z"),
        trade(1, "2025-03-10T18:17:14Z"),
    ]
    [b] = parse({"group": "futures/trade:BTCUSDT", "data": newest_first})
    assert [t[1] for t in b.trades] == ["1", "2", "3", "4", "5"]
    assert [t[0] for t in b.trades] == sorted(t[0] for t in b.trades)
    [c] = parse({"group": "futures/trade:BTCUSDT", "data": newest_first[::-1]})
    assert c.trades == b.trades


def test_rfc3339_forms():
    assert bp.rfc3339_us("1970-01-01T00:00:01.5Z") == 1_500_000
    assert bp.rfc3339_us("1970-01-01T00:00:01Z") == 1_000_000
    assert bp.rfc3339_us("1970-01-01T01:00:01.000001+01:00") == 1_000_001
    assert bp.rfc3339_us("2025-03-10T18:17:14.656686827Z") == 1741630634_656686  # truncated, not rounded
    for bad in ["", "2025-03-10", "2025-03-10T18:17:14.Z", "2025-03-10T18:17:14.12aZ", "2025-03-10T18:17:14+0100", "yesterday"]:
        with pytest.raises(ValueError):
            bp.rfc3339_us(bad)


# --------------------------------------------------------------------------- ticker and funding


def test_ticker_row_has_prices_and_no_time():
    [t] = parse(text("ticker"))
    assert t == DerivativeTicker("BTCUSDT", TICKER, None, last_price=97153.6, mark_price=97153.7, index_price=97185.614)


def test_ticker_group_with_a_speed_suffix_is_routed_by_channel_and_symbol():
    d = doc("ticker")
    d["group"] = "futures/ticker:BTCUSDT@100ms"  # BitMart.Net's fixture (§4.1)
    assert parse(d) == parse(text("ticker"))


def test_funding_row():
    [f] = parse(text("funding_rate"))
    assert f == DerivativeTicker(
        "BTCUSDT", FUNDING, 1732525864601_000, funding_rate=0.000098800809, next_funding_rate=0.0000947,
        next_funding_time=1732550400000_000,
    )


# ------------------------------------------------------------------------ acks, errors, pong


def test_acks_name_our_topics():
    assert parse(text("ack_subscribe")) == [Ack("futures/klineBin1m:BTCUSDT", "subscribe")]
    assert parse(text("ack_unsubscribe")) == [Ack("futures/depth50:BTCUSDT", "unsubscribe")]
    book = VENUE.topic(BOOK, BTC)
    ack = {"action": "subscribe", "group": book, "success": True, "request": {"action": "subscribe", "args": [book]}}
    assert parse(ack) == [Ack(book)]
    for spelled in ("futures/depthIncrease50:BTCUSDT", "futures/depthIncrease50:BTCUSDT:100ms"):
        assert parse({**ack, "group": spelled}) == [Ack(book)]
    ticker = VENUE.topic(TICKER, BTC)
    assert parse({**ack, "group": ticker + "@100ms"}) == [Ack(ticker)]
    assert parse({**ack, "action": "request"}) == []  # the snapshot follows


def test_refusals_name_their_topic():
    [e] = parse(text("ack_refused_group_not_exist"))
    assert e == ProtocolError("group [sfutures/depth50:BTCUSDT] not exist", topic="sfutures/depth50:BTCUSDT", kind="refused")
    book = "futures/depthIncrease50:NOPEUSDT@100ms"
    observed = {"action": "subscribe", "group": book, "success": False,
                "request": {"action": "subscribe", "args": [book]}, "error": f"Invalid channel: not found {book}"}
    [e] = parse(observed)
    assert (e.kind, e.topic, e.message) == ("refused", book, f"Invalid channel: not found {book}")
    ccxt = {"action": "", "group": "futures/trade:BTCUSDT", "success": False,
            "request": {"action": "", "args": ["futures/trade:BTCUSDT"]},
            "error": "Invalid action [] for group [futures/trade:BTCUSDT]"}
    [e] = parse(ccxt)
    assert (e.kind, e.topic) == ("refused", "futures/trade:BTCUSDT")


def test_error_without_group_is_an_exchange_error():
    [e] = parse(text("error_not_json"))
    assert e == ProtocolError("Invalid message: message must be JSON: ping", kind="exchange")
    [e] = parse({"success": False})
    assert e.kind == "exchange" and e.message


def test_pong_envelope():
    assert parse(text("pong")) == [Pong()]
    assert parse({"group": "System", "data": "something else"}) == []
    assert VENUE.keepalive.ping == '{"action":"ping"}' and 0 < VENUE.keepalive.interval < 20


def test_junk_becomes_protocol_errors():
    assert parse("{not json")[0].kind == "decode"
    assert parse(b"\xff\xfe")[0].kind == "decode"
    assert parse("[1, 2]")[0].kind == "parse"
    assert parse("null")[0].kind == "parse"
    assert parse({"hello": 1})[0].code == "unexpected"
    bad = [
        {"group": "futures/depthIncrease50:BTCUSDT@100ms", "data": {"symbol": "BTCUSDT", "type": "update"}},
        {"group": "futures/depthIncrease50:BTCUSDT@100ms",
         "data": {**doc("depth_update")["data"], "type": "delta"}},
        {"group": "futures/depthIncrease50:BTCUSDT@100ms",
         "data": {**doc("depth_update")["data"], "asks": [["70395.3", "341"]]}},
        {"group": "futures/depthIncrease50:BTCUSDT@100ms",
         "data": {**doc("depth_update")["data"], "bids": [{"price": "1", "vol": "lots"}]}},
        {"group": "futures/trade:BTCUSDT", "data": [{**doc("trade_doc_sample")["data"][0], "m": "true"}]},
        {"group": "futures/trade:BTCUSDT", "data": [{**doc("trade_doc_sample")["data"][0], "trade_id": 1.5}]},
        {"group": "futures/trade:BTCUSDT", "data": [{**doc("trade_doc_sample")["data"][0], "created_at": 1677225251}]},
        {"group": "futures/fundingRate:BTCUSDT", "data": {**doc("funding_rate")["data"], "fundingRate": "x"}},
        {"group": "futures/ticker:BTCUSDT"},
    ]
    for b in bad:
        out = parse(b)
        assert len(out) == 1 and isinstance(out[0], ProtocolError) and out[0].kind == "parse", b


@given(data=st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_parse_never_raises(data):
    out = parse(data)
    assert isinstance(out, list) and all(isinstance(m, ProtocolError | Pong | Ack) for m in out)


# -------------------------------------------------------------------------------- subscribing


def test_topics():
    assert [VENUE.topic(ch, BTC) for ch in VENUE.channels] == [
        "futures/trade:BTCUSDT",
        "futures/depthIncrease50:BTCUSDT@100ms",
        "futures/ticker:BTCUSDT",
        "futures/fundingRate:BTCUSDT",
    ]
    assert VENUE.default_channels == (TRADES, BOOK, TICKER, FUNDING)


def test_subscribe_texts_fit_the_observed_frame_cap_for_100_topics():
    insts = [Instrument(f"C{i:02d}-USDT", f"COIN{i:02d}USDT", "perpetual", "1") for i in range(25)]
    topics = [VENUE.topic(ch, i) for i in insts for ch in VENUE.channels]
    assert len(topics) == 100 == VENUE.limits.topics_per_connection
    texts = VENUE.messages(Subscribe(tuple(topics)))
    assert all(len(t.encode()) <= 2000 for t in texts)  # 2,186 bytes were closed with 1009 (§4.1)
    docs = [orjson.loads(t) for t in texts]
    assert all(d["action"] == "subscribe" for d in docs)
    assert [a for d in docs for a in d["args"]] == topics
    assert len(texts) == 2  # packed: as many as fit, not one per topic (nor a count cap)
    assert all(len(texts[i]) + 2 + len(docs[i + 1]["args"][0]) + 1 > 2000 for i in range(len(texts) - 1))
    un = [orjson.loads(t) for t in VENUE.unsubscribe(topics)]
    assert all(d["action"] == "unsubscribe" for d in un) and [a for d in un for a in d["args"]] == topics


def test_resync_is_one_request_of_the_depth_topic():
    book = VENUE.topic(BOOK, BTC)
    assert VENUE.messages(Resync(book)) == ['{"action":"request","args":["futures/depthIncrease50:BTCUSDT@100ms"]}']


# ----------------------------------------------------------------------------------------- REST


def _row(**kw) -> dict:
    row = dict(doc("details")["data"]["symbols"][0])
    row.update(kw)
    return row


def test_markets_keep_trading_linear_perpetuals():
    assert VENUE.markets_request().path == "/contract/public/details"
    assert bp.parse_markets(doc("details")).instruments == []  # the documented sample is Delisted
    rows = [
        _row(status="Trading"),
        _row(symbol="ETHUSDT", base_currency="ETH", contract_size="0.01", vol_precision="1", price_precision="0.01",
             status="Trading"),
        _row(symbol="ETHUSDT0628", base_currency="ETH", product_type=2, status="Trading"),  # dated future
        _row(symbol="XRPUSDT", base_currency="XRP", status="Delisted"),
        _row(symbol="BTCUSD", quote_currency="USD", contract_size="100", status="Trading"),  # coin-M: inverse
        _row(symbol="BADUSDT", base_currency="BAD", contract_size="0", status="Trading"),
    ]
    page = VENUE.parse_markets({"code": 1000, "message": "Ok", "data": {"symbols": rows}}, VENUE.markets_request())
    assert page.next is None
    assert page.instruments == [
        Instrument("BTC-USDT", "BTCUSDT", "perpetual", contract_size="0.001", price_tick="0.1", size_step="0.001"),
        Instrument("ETH-USDT", "ETHUSDT", "perpetual", contract_size="0.01", price_tick="0.01", size_step="0.01"),
    ]


def test_markets_duplicate_user_symbols_prefer_base_plus_quote():
    rows = [_row(symbol="BTCUSDT2", status="Trading"), _row(status="Trading"), _row(symbol="BTCUSDT3", status="Trading")]
    [inst] = bp.parse_markets({"code": 1000, "data": {"symbols": rows}}).instruments
    assert inst.wire == "BTCUSDT"


def test_markets_error_envelope():
    with pytest.raises(VenueError, match="30000"):
        bp.parse_markets({"code": 30000, "message": "Not found", "data": {}})


def test_klines_request_and_parse():
    kl = VENUE.klines
    assert kl is not None and set(kl.intervals) == {"1m", "5m", "15m", "1h", "4h", "1d"}
    assert kl.page_limit == 500 and kl.rate_limit == (12, 2.0)
    req = kl.request(BTC, "5m", 1662518100, 1662518100 + 500 * 300)
    assert req.path == "/contract/public/kline"
    assert dict(req.params) == {"symbol": "BTCUSDT", "step": 5, "start_time": 1662518099, "end_time": 1662668099}
    [k] = kl.parse(doc("kline"), BTC, "1m")
    assert (k.open_time_s, k.open, k.high, k.low, k.close) == (1662518160, 100.0, 130.0, 90.0, 120.0)
    assert repr(k.volume) == "941.008" and k.quote_volume is None and k.trades is None
    with pytest.raises(VenueError):
        kl.parse({"code": 30002, "message": "bad symbol"}, BTC, "1m")
    bad = {**doc("kline"), "data": [{**doc("kline")["data"][0], "volume": "n/a"}]}
    with pytest.raises(ValueError):  # what the backfill turns into a one-line error (not a Decimal error)
        kl.parse(bad, BTC, "1m")


def test_open_interest_poll():
    [poll] = VENUE.polls
    assert (poll.name, poll.channel, poll.interval, poll.rate_limit) == ("open_interest", TICKER, 60.0, (2, 2.0))
    req = poll.request(BTC)
    assert (req.path, dict(req.params)) == ("/contract/public/open-interest", {"symbol": "BTCUSDT"})
    answer = {"code": 1000, "message": "Ok", "trace": "t", "data": doc("open_interest_data")}
    [t] = poll.parse(answer, BTC)
    assert t == DerivativeTicker("BTCUSDT", TICKER, 1661239541734_000, open_interest=4134180.87)
    with pytest.raises(VenueError):
        poll.parse({"code": 1000, "data": {**doc("open_interest_data"), "symbol": "ETHUSDT"}}, BTC)
    with pytest.raises(VenueError):
        poll.parse({"code": 30000, "message": "busy"}, BTC)
    with pytest.raises(ValueError):  # the dispatcher logs these and goes on
        poll.parse({"code": 1000, "data": {**doc("open_interest_data"), "open_interest": "?"}}, BTC)


# ------------------------------------------------------------------------------------- registry


def test_registered_with_a_clear_error_until_its_simulator_exists():
    assert "bitmart_perpetual" in venues.names()
    assert isinstance(venues.venue("BITMART_PERPETUAL"), BitmartPerpetual)
    assert VENUE.endpoints.ws_url == "wss://openapi-ws-v2.bitmart.com/api?protocol=1.1"
    assert VENUE.endpoints.rest_url == "https://api-cloud-v2.bitmart.com"
    try:
        sim = venues.simulator("bitmart_perpetual")
    except RecorderError as exc:
        assert str(exc) == "no simulator for 'bitmart_perpetual' yet"
    else:
        assert sim.__name__ == "BitmartPerpSim"


def test_a_sweep_within_one_microsecond_is_stored_in_match_order():
    at = "2025-01-01T00:00:00.123456789Z"
    data = [{"trade_id": str(i), "symbol": "BTCUSDT", "deal_price": str(100 + i), "deal_vol": "1", "m": False,
             "created_at": at} for i in (3, 2, 1)]  # newest first, all in one microsecond
    [b] = parse({"group": "futures/trade:BTCUSDT", "data": data}, BTC)
    assert [(t[1], t[3]) for t in b.trades] == [("1", 101.0), ("2", 102.0), ("3", 103.0)]


@pytest.mark.parametrize("data", [[], None, "x"])
def test_an_open_interest_answer_without_an_object_is_a_venue_error(data):
    with pytest.raises(VenueError):
        bp.OpenInterestPoll().parse({"code": 1000, "message": "Ok", "data": data}, BTC)
