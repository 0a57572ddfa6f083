"""The synthetic market's venue-neutral surface: neutral ids, aliases and the derivatives view."""

from __future__ import annotations

import pytest

from recorder.sim.market import (
    DEFAULT_SPECS,
    FUNDING_PERIOD_MS,
    PRE_TRADE_SPEC,
    Market,
    SymbolSpec,
    parse_units,
    resolve_specs,
    synthetic_specs,
)

T0 = 1_767_225_600_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        self.now += 3
        return self.now


def test_ids_are_neutral_base_quote() -> None:
    assert all(spec.name == f"{spec.base}-{spec.quote}" for spec in (*DEFAULT_SPECS, PRE_TRADE_SPEC))
    assert [s.name for s in synthetic_specs(2)] == ["SYN001-USDT", "SYN002-USDT"]
    [spec] = resolve_specs(["FOO-BTC"])
    assert (spec.name, spec.base, spec.quote, spec.kind, spec.contract_size) == (
        "FOO-BTC",
        "FOO",
        "BTC",
        "spot",
        None,
    )


def test_aliases_resolve_everywhere_and_refuse_ambiguity() -> None:
    market = Market(resolve_specs(None), seed=1, clock=Clock())
    market.alias("BTC_USDT", "BTC-USDT")
    market.alias("BTC-USDT", "BTC-USDT")  # a symbol is its own name
    assert market.resolve("BTC_USDT") == "BTC-USDT" and market.resolve("nope") == "nope"
    event = market.step("BTC_USDT")
    assert event.symbol == "BTC-USDT" and market.seq("BTC_USDT") == market.seq("BTC-USDT") == 1
    assert market.book("BTC_USDT") == market.book("BTC-USDT")
    assert market.spec("BTC_USDT").name == "BTC-USDT"
    with pytest.raises(ValueError):
        market.alias("BTC_USDT", "ETH-USDT")
    with pytest.raises(ValueError):
        market.alias("ETH-USDT", "BTC-USDT")
    with pytest.raises(KeyError):
        market.alias("x", "NOPE-USDT")


def test_derivatives_never_touch_the_market_stream() -> None:
    """Spot output must not depend on whether anyone asks for mark/funding (a perpetual front-end)."""
    plain = Market(resolve_specs(None), seed=9, clock=Clock())
    asked = Market(resolve_specs(None), seed=9, clock=Clock())
    for i in range(500):
        a, b = plain.step(), asked.step()
        assert (a.symbol, a.changes, a.trades) == (b.symbol, b.changes, b.trades)
        if i % 7 == 0:
            asked.derivatives(b.symbol, b.ts_ms)
    assert plain.rng.getstate() == asked.rng.getstate()


def test_derivatives_follow_the_book_and_are_order_independent() -> None:
    perp = SymbolSpec(
        "BTC-USDT", "BTC", "USDT", 1, 3, "64949.0", "0.250", kind="perpetual", contract_size="0.001"
    )
    assert perp.lot == perp.contract_size
    a = Market([perp, *DEFAULT_SPECS[1:3]], seed=4, clock=Clock())
    b = Market([perp, *DEFAULT_SPECS[1:3]], seed=4, clock=Clock())
    list(a.steps(300))
    list(b.steps(300))
    ts = T0 + 5 * 3_600_000
    b.derivatives("ETH-USDT", ts)  # another symbol first: no effect on BTC's view
    state = a.derivatives("BTC-USDT", ts)
    assert b.derivatives("BTC-USDT", ts) == state == a.derivatives("BTC-USDT", ts)
    assert Market([perp], seed=5, clock=Clock()).derivatives("BTC-USDT", ts) != state  # per seed

    bids, asks = a.book("BTC-USDT").top(1)
    assert float(bids[0][0]) <= float(state.mark) <= float(asks[0][0])
    assert abs(float(state.index) / float(state.mark) - 1) < 0.001  # a few basis points
    assert -0.001 < float(state.funding_rate) < 0.001 and -0.001 < float(state.next_funding_rate) < 0.001
    assert (
        state.next_funding_time_ms % FUNDING_PERIOD_MS == 0
        and 0 < state.next_funding_time_ms - ts <= FUNDING_PERIOD_MS
    )
    assert parse_units(state.open_interest, perp.size_decimals) > 0  # whole contracts
    later = a.derivatives("BTC-USDT", ts + 30 * 60_000)
    assert later.index != state.index  # the basis moves with time


def test_activity_weights_skew_the_picks_and_default_draws_as_before() -> None:
    plain = Market(synthetic_specs(20), seed=3, clock=Clock())
    reset = Market(synthetic_specs(20), seed=3, clock=Clock())
    reset.set_activity({"SYN001-USDT": 5.0})
    reset.set_activity(None)
    assert [e.symbol for e in plain.steps(300)] == [e.symbol for e in reset.steps(300)]
    skewed = Market(synthetic_specs(20), seed=3, clock=Clock())
    skewed.set_activity({"SYN001-USDT": 100.0, "SYN002-USDT": 0.0})
    picks = [e.symbol for e in skewed.steps(1_000)]
    assert picks.count("SYN001-USDT") > 700 and "SYN002-USDT" not in picks
