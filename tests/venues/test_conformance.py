"""Every registered venue keeps the contract (recorder/venues/contract.py). Runs for each venue in
the registry, so a new venue module is checked without a line here."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder import venues
from recorder.candles.intervals import INTERVALS
from recorder.errors import RecorderError
from recorder.model import CHANNEL_SPECS, ProtocolError
from recorder.venues.contract import Instrument, Resync, Subscribe, Venue

NAMES = venues.names()


@pytest.fixture(params=NAMES)
def venue(request) -> Venue:
    return venues.venue(request.param)


def insts(n: int) -> list[Instrument]:
    return [Instrument(f"C{i:03d}-USDT", f"C{i:03d}USDT".lower()) for i in range(n)]


def test_registry_names_are_lower_case_and_resolve_in_any_case():
    assert NAMES and all(n == n.lower() == n.strip() for n in NAMES)
    for n in NAMES:
        assert venues.venue(n.upper()).name == n
        assert venues.canonical(f" {n.upper()} ") == n
    with pytest.raises(RecorderError, match="unknown exchange 'nope'; known: "):
        venues.venue("nope")


def test_channels_are_normalized_channels(venue):
    assert venue.channels and set(venue.default_channels) <= set(venue.channels) <= set(CHANNEL_SPECS)


def test_subscribe_covers_every_topic_once_in_order_and_resync_says_something(venue):
    topics = [venue.topic(ch, i) for i in insts(150) for ch in venue.channels]
    assert len(set(topics)) == len(topics)  # one topic per (channel, instrument)
    texts = venue.messages(Subscribe(tuple(topics)))
    assert texts and all(isinstance(t, str) for t in texts)
    named = [t for text in texts for t in _topics_in(text, topics)]
    assert named == topics
    book = [venue.topic("book", i) for i in insts(1)][0]
    assert venue.messages(Resync(book)) and all(book in text for text in venue.messages(Resync(book)))
    assert venue.unsubscribe([book]) and all(book in text for text in venue.unsubscribe([book]))


def _topics_in(text: str, known: list[str]) -> list[str]:
    doc = orjson.loads(text)
    found = [v for v in _strings(doc) if v in set(known)]
    return found


def _strings(doc) -> list[str]:
    if isinstance(doc, str):
        return [doc]
    if isinstance(doc, dict):
        return [s for v in doc.values() for s in _strings(v)]
    if isinstance(doc, list):
        return [s for v in doc for s in _strings(v)]
    return []


def test_limits_and_endpoints_are_sane(venue):
    lim = venue.limits
    assert lim.topics_per_connection >= len(venue.channels)
    assert lim.send_budget[0] > 0 and lim.send_budget[1] > 0
    assert lim.connect_budget[0] > 0 and lim.max_frame_bytes >= 64 * 1024
    assert venue.keepalive.interval > 0 and venue.keepalive.ping
    assert venue.markets_request().path.startswith("/")
    assert venue.resync.timeout > 0


def test_klines_intervals_are_candle_intervals(venue):
    if venue.klines is None:
        pytest.skip(f"{venue.name} serves no klines")
    assert set(venue.klines.intervals) <= set(INTERVALS)
    req = venue.klines.request(insts(1)[0], next(iter(venue.klines.intervals)), 0, 60)
    assert req.path.startswith("/")


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300)), name=st.sampled_from(NAMES))
def test_codec_never_raises_on_junk(data, name):
    """A frame either fails to decode with one of the codec's declared errors, or parses into
    records; parse never raises (what it cannot read is a ProtocolError)."""
    codec = venues.venue(name).codec(insts(2))
    try:
        payload = codec.decode(data)
    except codec.decode_errors:
        return
    out = codec.parse(payload)
    assert isinstance(out, list)
    for m in out:
        if isinstance(m, ProtocolError):
            assert m.kind in ("decode", "parse", "refused", "exchange")


def test_contract_sizes_convert_exactly():
    from decimal import Decimal

    from recorder.venues.units import base_amount

    assert 3 * 0.1 != 0.3  # what multiplying floats would store
    assert repr(base_amount("3", Decimal("0.1"))) == "0.3"
    assert base_amount("7", None) == 7.0
    assert repr(base_amount("123", Decimal("0.0001"))) == "0.0123"


def test_a_bad_decimal_is_a_value_error():
    from decimal import Decimal

    from recorder.venues.units import base_amount

    with pytest.raises(ValueError, match="not a decimal amount"):
        base_amount("1.2.3", Decimal("0.1"))
