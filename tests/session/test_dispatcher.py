"""The session is venue-neutral: a venue of another protocol family (Peatio-like acks that list
every held stream, resync by unsubscribe + subscribe, no event time on book messages, restarts)
works through the same Dispatcher and Deadlines with no session code of its own."""

from __future__ import annotations

import orjson
import pytest

from recorder import native
from recorder.model import BOOK, CONNECT, ERROR, TICKER, TRADES, Cause, tables_for
from recorder.session import book, dispatcher
from recorder.session.deadlines import Deadlines
from recorder.session.dispatcher import Refused, Topic
from recorder.session.stream import Stream
from recorder.storage.sink import ParquetSink
from recorder.venues.bitmart_spot import BitmartSpot
from recorder.venues.contract import Instrument, Reconnect, Report, Resync, ResyncPolicy, Subscribe
from tests.session.fake_venue import FakePeatio

RECV = 1_767_225_600_000_000


@pytest.fixture(autouse=True, params=["pure", "compiled"])
def build(request, monkeypatch):
    """Run the test on one build of the per-frame path: `Dispatcher` below is that build's class
    (and its book engine that build's `BookSync`)."""
    if request.param == "compiled":
        if not native.COMPILED:
            pytest.skip("the C build of the hot path is not built here")
        monkeypatch.setitem(globals(), "Dispatcher", dispatcher.Dispatcher)
    else:
        monkeypatch.setitem(globals(), "Dispatcher", dispatcher.PureDispatcher)
        monkeypatch.setattr("recorder.session.stream.BookSync", book.PureBookSync)
    return request.param


Dispatcher = dispatcher.Dispatcher


def session(channels=(TRADES, BOOK), venue=None):
    venue = venue or FakePeatio()
    sink = ParquetSink(None)
    inst = Instrument("BTC-USDT", "btcusdt")
    stream = Stream(sink, venue.name, inst, venue.sequence_policy())
    topics = [Topic(venue.topic(ch, inst), ch, stream) for ch in channels]
    d = Dispatcher(venue.codec([inst]), topics, depth=5, rawlog=None)
    return venue, d, stream, {t.channel: t for t in topics}


def frame(doc) -> str:
    return orjson.dumps(doc).decode()


def events(stream):
    return [(r[2], r[3], r[5]) for r in stream.events]


def test_held_topics_ack_every_held_stream_and_unack_the_others():
    _, d, stream, t = session()
    d.event(RECV, None, CONNECT, "ws://x")
    d.frame(RECV + 1, frame({"success": {"message": "subscribed", "streams": ["btcusdt.trades", "btcusdt.ob-inc"]}}))
    assert t[TRADES].acked and t[BOOK].acked
    assert events(stream)[-2:] == [(TRADES, "subscribed", None), (BOOK, "subscribed", None)]
    # the unsubscribe ack of a resync lists what is still held: the book is not, and no event says so
    d.frame(RECV + 2, frame({"success": {"message": "unsubscribed", "streams": ["btcusdt.trades"]}}))
    assert t[TRADES].acked and not t[BOOK].acked
    n = len(stream.events)
    d.frame(RECV + 3, frame({"success": {"message": "subscribed", "streams": ["btcusdt.trades", "btcusdt.ob-inc"]}}))
    assert t[BOOK].acked and len(stream.events) == n + 1  # acked again: one `subscribed`, trades not repeated


def test_book_without_event_time_takes_the_receive_time_and_restart_asks_a_resync():
    venue, d, stream, t = session()
    d.frame(RECV, frame({"btcusdt.ob-snap": {"sequence": 40, "bids": [["10", "1"]], "asks": [["11", "2"]]}}))
    d.frame(RECV + 7, frame({"btcusdt.ob-inc": {"sequence": 41, "bids": [["10", "0"]]}}))
    rows = stream.book.rows
    assert [r[0] for r in rows] == [RECV, RECV, RECV + 7]  # ts = recv_ts: the venue gives no time
    assert [r[0] for r in rows] == [r[1] for r in rows]
    assert stream.book.valid and stream.book.seq == 41
    d.frame(RECV + 9, frame({"btcusdt.ob-inc": {"sequence": 1, "asks": [["11", "3"]]}}))  # engine restarted
    assert not stream.book.valid
    assert events(stream)[-1] == (BOOK, ERROR, Cause.RESTART)
    assert stream.events[-1][4] == "sequence went back to 1 from 41 (engine restart?): resync"
    assert d.take_intents() == [Resync("btcusdt.ob-inc")]
    assert venue.messages(Resync("btcusdt.ob-inc")) == [
        '{"event":"unsubscribe","streams":["btcusdt.ob-inc"]}',
        '{"event":"subscribe","streams":["btcusdt.ob-inc"]}',
    ]


def test_gap_event_and_cause():
    _, d, stream, _ = session()
    d.frame(RECV, frame({"btcusdt.ob-snap": {"sequence": 5, "bids": [["10", "1"]], "asks": [["11", "2"]]}}))
    d.frame(RECV + 1, frame({"btcusdt.ob-inc": {"sequence": 8, "bids": [["10", "2"]]}}))
    assert events(stream)[-1] == (BOOK, "gap", Cause.GAP)
    assert stream.events[-1][4] == "expected seq 6, got 8"
    assert d.take_intents() == [Resync("btcusdt.ob-inc")]


@pytest.mark.parametrize("bad", ["nan", "-1", "inf", "-0.5", "1e999"])
def test_a_level_or_trade_no_market_has_is_an_error_never_a_row(bad):
    """A price or amount that is NaN, infinite or negative (a broken or hostile frame) is not
    stored: the book message is refused whole (an error event, a resync, the book waits for a
    snapshot: nothing of it reached the rows), a trade is dropped with an error event; the rest
    of the stream goes on."""
    _, d, stream, t = session()
    d.frame(RECV, frame({"btcusdt.ob-snap": {"sequence": 5, "bids": [["10", "1"]], "asks": [["11", "2"]]}}))
    n = len(stream.book.rows)
    d.frame(RECV + 1, frame({"btcusdt.ob-inc": {"sequence": 6, "bids": [["9", "3"], [bad, "1"]]}}))
    assert len(stream.book.rows) == n and not stream.book.valid
    assert events(stream)[-1] == (BOOK, ERROR, Cause.DECODE)
    assert "no book has" in stream.events[-1][4]
    assert d.take_intents() == [Resync("btcusdt.ob-inc")]
    d.frame(RECV + 2, frame({"btcusdt.ob-inc": {"sequence": 7, "asks": [["11", bad]]}}))  # waits: not applied
    d.frame(RECV + 3, frame({"btcusdt.ob-snap": {"sequence": 9, "bids": [["10", "1"]], "asks": [["11", "2"]]}}))
    assert stream.book.valid and stream.book.book.bids == {10.0: 1.0} and stream.book.book.asks == {11.0: 2.0}
    d.frame(RECV + 4, frame({"btcusdt.ob-inc": {"sequence": 10, "asks": [["11", bad]]}}))
    assert not stream.book.valid and len(stream.book.rows) == n + 2
    good = {"tid": 1, "taker_type": "buy", "price": "10.5", "amount": "0.1", "date": 1_767_225_600}
    for i, trade in enumerate(({**good, "tid": 2, "price": bad}, {**good, "tid": 3, "amount": bad}, good), 5):
        d.frame(RECV + i, frame({"btcusdt.trades": {"trades": [trade]}}))
    assert [r[2] for r in stream.trades] == ["1"]
    said = [r for r in stream.events if r[2] == TRADES and r[3] == ERROR]
    assert len(said) == 2 and all("not a positive number" in r[4] and r[5] == Cause.DECODE for r in said)


@pytest.mark.parametrize("bad", ["nan", "-1", "inf"])
def test_a_ticker_value_no_market_has_is_an_error_never_a_row(bad):
    _, d, stream, _ = session((TRADES, BOOK, TICKER))
    d.frame(RECV, frame({"btcusdt.tickers": {"mark": "10.25"}}))
    d.frame(RECV + 1, frame({"btcusdt.tickers": {"mark": bad}}))
    d.frame(RECV + 2, frame({"btcusdt.tickers": {"mark": "10.5"}}))
    assert [r[3] for r in stream.buffers[-1]] == [10.25, 10.5]
    assert events(stream)[-1] == (TICKER, ERROR, Cause.DECODE) and "NaN or infinite" in stream.events[-1][4]


def test_trades_with_ids_are_kept_once_and_ticker_rows_route_to_derivative_ticker():
    _, d, stream, _ = session((TRADES, BOOK, TICKER))
    trade = {"tid": 7, "taker_type": "buy", "price": "10.5", "amount": "0.1", "date": 1_767_225_600}
    d.frame(RECV, frame({"btcusdt.trades": {"trades": [trade]}}))
    d.frame(RECV + 1, frame({"btcusdt.trades": {"trades": [trade, {**trade, "tid": 8}]}}))  # resubscribe repeats 7
    assert [r[2] for r in stream.trades] == ["7", "8"]
    assert stream.duplicates_dropped == 1
    d.frame(RECV + 2, frame({"btcusdt.tickers": {"mark": "10.25"}}))
    assert stream.buffers[-1] == [(RECV + 2, RECV + 2, None, 10.25, None, None, None, None, None)]
    assert tables_for([TRADES, BOOK, TICKER]) == ("events", "trades", "book_updates", "book_snapshots", "derivative_ticker")


def test_replay_keeps_no_outbox():
    venue = FakePeatio()
    inst = Instrument("BTC-USDT", "btcusdt")
    stream = Stream(ParquetSink(None), venue.name, inst, venue.sequence_policy())
    d = Dispatcher(venue.codec([inst]), [Topic("btcusdt.ob-inc", BOOK, stream)], 5, None, live=False)
    d.frame(RECV, frame({"btcusdt.ob-snap": {"sequence": 5, "bids": [["10", "1"]], "asks": [["11", "2"]]}}))
    d.frame(RECV + 1, frame({"btcusdt.ob-inc": {"sequence": 9}}))
    d.frame(RECV + 2, frame({"error": "nope"}))
    assert d.intents == []


def test_a_refusal_naming_no_topic_refuses_every_unacked_topic():
    _, d, stream, t = session()
    t[TRADES].acked = True
    d.frame(RECV, frame({"error": "too many streams"}))
    assert events(stream) == [(BOOK, ERROR, Cause.REFUSED)]
    assert d.take_intents() == [Refused()]


# ---- deadlines ------------------------------------------------------------------------------


def test_quiet_market_waits_with_backoff_and_reports_but_never_reconnects():
    _, d, _, t = session()
    dl = Deadlines(list(t.values()), FakePeatio.resync, ack_timeout=10.0, refused_retry=1.0)
    dl.sent(Subscribe(tuple(t[c].name for c in (TRADES, BOOK))), 0.0)
    t[TRADES].acked = t[BOOK].acked = True  # acked, but the snapshot does not come
    now, asked = 0.0, []
    while now < 600:
        now += 0.25
        for i in dl.due(now):
            assert not isinstance(i, Reconnect)
            if isinstance(i, Resync):
                dl.sent(i, now)
                asked.append(now)
            else:
                assert isinstance(i, Report) and i.topic == t[BOOK].name and i.cause == Cause.NO_SNAPSHOT
    gaps = [round(b - a, 2) for a, b in zip([0.0, *asked], asked, strict=False)]
    assert gaps[:6] == [5.25, 5.25, 10.25, 20.25, 40.25, 60.25]  # 5 s, doubling, at most 60 s (tick 0.25 s)
    assert len(asked) > 10


def test_bitmart_policy_asks_three_times_then_reconnects():
    _, d, _, t = session(venue=BitmartSpot())
    book = t[BOOK]
    dl = Deadlines([book], BitmartSpot.resync, ack_timeout=10.0, refused_retry=1.0)
    dl.sent(Subscribe((book.name,)), 0.0)
    book.acked = True
    now, out = 0.0, []
    while now < 60 and not any(isinstance(i, Reconnect) for i in out):
        now += 0.25
        out = dl.due(now)
        for i in out:
            if isinstance(i, Resync):
                dl.sent(i, now)
    assert book.resync_tries == 3
    assert out[-1] == Reconnect(BOOK, "no snapshot after 3 requests", Cause.NO_SNAPSHOT)
    assert 20.0 < now <= 21.0


def test_snapshot_clears_the_wait():
    venue, d, stream, t = session()
    dl = Deadlines(list(t.values()), venue.resync, ack_timeout=10.0, refused_retry=1.0)
    dl.sent(Subscribe((t[BOOK].name,)), 0.0)
    d.frame(RECV, frame({"btcusdt.ob-snap": {"sequence": 5, "bids": [["10", "1"]], "asks": [["11", "2"]]}}))
    t[BOOK].acked = True
    assert dl.due(100.0) == [Subscribe((t[TRADES].name,))]  # trades never subscribed/acked: due; book is not


@pytest.mark.parametrize("policy", [ResyncPolicy(), FakePeatio.resync])
def test_refusals_back_off_and_reset_once_everything_is_acked(policy):
    _, d, _, t = session()
    topics = list(t.values())
    dl = Deadlines(topics, policy, ack_timeout=10.0, refused_retry=1.0)
    dl.sent(Subscribe(tuple(x.name for x in topics)), 0.0)
    dl.refused(0.1)
    dl.refused(0.2)  # same burst: one retry
    assert dl.due(1.0) == []
    assert dl.due(1.1) == [Subscribe(tuple(x.name for x in topics))]
    dl.sent(Subscribe(tuple(x.name for x in topics)), 1.1)
    dl.refused(1.2)
    assert dl.due(3.1) == [] and dl.due(3.2) == [Subscribe(tuple(x.name for x in topics))]  # 2 s now
    for x in topics:
        x.acked = True
    dl.due(3.3)
    assert dl.refusals == 0


def test_unacked_subscription_is_sent_again_after_the_ack_timeout():
    _, d, _, t = session()
    dl = Deadlines(list(t.values()), ResyncPolicy(), ack_timeout=10.0, refused_retry=1.0)
    dl.sent(Subscribe((t[TRADES].name, t[BOOK].name)), 0.0)
    t[BOOK].acked = True
    assert not [i for i in dl.due(10.0) if isinstance(i, Subscribe)]
    assert [i for i in dl.due(10.25) if isinstance(i, Subscribe)] == [Subscribe((t[TRADES].name,))]


def test_rest_poll_answers_are_logged_raw_and_become_rows(tmp_path):
    from recorder.storage.rawlog import REST, RawLog, read_records
    from tests.session.fake_venue import FakePeatioWithPoll

    venue = FakePeatioWithPoll()
    inst = Instrument("BTC-USDT", "btcusdt")
    stream = Stream(ParquetSink(None), venue.name, inst, venue.sequence_policy())
    raw = RawLog(tmp_path, venue.name, {"exchange": venue.name, "topics": []})
    d = Dispatcher(venue.codec([inst]), [Topic("btcusdt.tickers", TICKER, stream)], 5, raw, polls=venue.polls)
    d.rest(RECV, "open_interest", "btcusdt", {"timestamp": 1_767_225_600_123, "open_interest": "1234.5"})
    d.rest(RECV + 1, "open_interest", "btcusdt", {"nonsense": 1})  # unreadable: logged, no row
    assert stream.buffers[-1] == [(1_767_225_600_123_000, RECV, None, None, None, None, None, None, 1234.5)]
    assert d.errors == 1
    raw.close()
    recs = [(t, p) for f in tmp_path.rglob("*.rawlog.zst") for t, k, p in read_records(f) if k == REST]
    assert [orjson.loads(p)["body"] for _, p in recs] == [
        {"timestamp": 1_767_225_600_123, "open_interest": "1234.5"}, {"nonsense": 1}]


def test_a_valid_book_the_venue_stops_holding_ends_and_is_subscribed_again():
    _, d, stream, t = session()
    d.frame(RECV, frame({"success": {"message": "subscribed", "streams": ["btcusdt.trades", "btcusdt.ob-inc"]}}))
    d.frame(RECV + 1, frame({"btcusdt.ob-snap": {"sequence": 5, "bids": [["10", "1"]], "asks": [["11", "2"]]}}))
    d.take_intents()
    assert stream.book.valid
    d.frame(RECV + 2, frame({"success": {"message": "unsubscribed", "streams": ["btcusdt.trades"]}}))
    assert not stream.book.valid and not t[BOOK].acked
    assert events(stream)[-1] == (BOOK, ERROR, Cause.EXCHANGE)
    assert d.take_intents() == [Subscribe(("btcusdt.ob-inc",))]
    # our own resync (book already invalid) unsubscribes quietly
    n = len(stream.events)
    d.frame(RECV + 3, frame({"success": {"message": "unsubscribed", "streams": ["btcusdt.trades"]}}))
    assert len(stream.events) == n and d.take_intents() == []


def test_a_resync_by_resubscribing_is_not_taken_for_an_ack_timeout_and_keeps_its_back_off():
    venue, d, _, t = session()
    book = t[BOOK]
    dl = Deadlines([book], venue.resync, ack_timeout=10.0, refused_retry=1.0)
    dl.sent(Subscribe((book.name,)), 0.0)
    book.acked = True
    dl.sent(Resync(book.name), 100.0)  # sends unsubscribe + subscribe
    book.acked = False  # the unsubscribe's ack came, the subscribe's not yet
    assert dl.due(100.25) == []
    dl.sent(Subscribe((book.name,)), 100.5)  # a resubscribe meanwhile keeps the count
    assert book.resync_tries == 1


def test_unreadable_poll_answers_cost_the_answer_only():
    from tests.session.fake_venue import FakePeatioWithPoll

    venue = FakePeatioWithPoll()
    inst = Instrument("BTC-USDT", "btcusdt")
    stream = Stream(ParquetSink(None), venue.name, inst, venue.sequence_policy())
    d = Dispatcher(venue.codec([inst]), [Topic("btcusdt.tickers", TICKER, stream)], 5, None, polls=venue.polls)
    for doc in ([], None, "x", {"timestamp": "t"}):
        d.rest(RECV, "open_interest", "btcusdt", doc)
    assert d.errors == 4
    assert len(stream.buffers) == 4  # trades, book updates, snapshots, events: no ticker row was ever made


async def test_send_limiter_is_first_come_first_served_and_keeps_a_reserve_for_urgent_sends():
    import asyncio

    from recorder.transport.limits import SendLimiter

    lim = SendLimiter(3, 0.3, reserve=1)
    order: list[str] = []

    async def send(name: str, urgent: bool = False) -> None:
        await lim.acquire(urgent)
        order.append(name)

    tasks = [asyncio.create_task(send(f"m{i}")) for i in range(5)]
    await asyncio.sleep(0.05)
    assert order == ["m0", "m1"]  # 2 of 3 slots: one is kept for pings
    await send("ping", urgent=True)  # does not wait behind the queue
    assert order == ["m0", "m1", "ping"]
    await asyncio.wait_for(asyncio.gather(*tasks), 3)
    assert order == ["m0", "m1", "ping", "m2", "m3", "m4"]
