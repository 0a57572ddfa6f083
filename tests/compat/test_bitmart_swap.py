"""ccxt's BitMart client (`bitmart.ccxt`, ccxt.pro) in swap mode, unchanged, against the perpetual
simulator: markets, the order book (ccxt keeps it from `futures/depth50` full-book pushes, one side
per message), trades (`futures/trade`, newest-first arrays it reverses), the ticker (`futures/ticker`)
and funding, over its own aiohttp sockets and protocol-PING keepalive; plus the futures REST calls it
makes. ccxt loads spot and swap markets together, from two hosts, as in production: the spot host is
the spot simulator, the futures host the perpetual one. Only base URLs are changed; everything is
compared with the simulators' truth (ccxt keeps swap sizes in contracts, as the venue sends them).
Wire facts: shared/protocols/bitmart.md §4.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest

from recorder.sim import BitmartSpotSim
from recorder.sim.frontends.bitmart_perpetual import BitmartPerpSim

pytestmark = pytest.mark.timeout(30)

BTC = "BTCUSDT"
SWAP = "BTC/USDT:USDT"


@pytest.fixture
def ccxt_bitmart() -> type:
    return pytest.importorskip("bitmart.ccxt.pro.bitmart").bitmart


def leaves(tree: Any) -> Iterator[Any]:
    if isinstance(tree, dict):
        for value in tree.values():
            yield from leaves(value)
    else:
        yield tree


@contextlib.asynccontextmanager
async def sims(**perp_options: Any) -> AsyncIterator[tuple[BitmartSpotSim, BitmartPerpSim]]:
    spot = BitmartSpotSim(symbols=["BTC_USDT"], seed=2, rate=50.0)
    perp_options.setdefault("rate", 200.0)
    perp = BitmartPerpSim(symbols=[BTC, "ETHUSDT"], seed=3, history_minutes=60, **perp_options)
    await spot.start()
    try:
        await perp.start()
        try:
            yield spot, perp
        finally:
            await perp.stop()
    finally:
        await spot.stop()


@contextlib.asynccontextmanager
async def ccxt_swap(
    cls: type, spot: BitmartSpotSim, perp: BitmartPerpSim, **config: Any
) -> AsyncIterator[Any]:
    exchange = cls({"enableRateLimit": False, "options": {"defaultType": "swap"}, **config})
    exchange.urls["api"]["spot"] = spot.rest_url  # spot/* and account/* paths
    exchange.urls["api"]["swap"] = perp.rest_url  # contract/* and system/* paths
    for access in ("public", "private"):
        exchange.urls["api"]["ws"]["spot"][access] = spot.ws_url
        exchange.urls["api"]["ws"]["swap"][access] = perp.ws_url
    loopback = (spot.rest_url, spot.ws_url, perp.rest_url, perp.ws_url)
    assert all(url in loopback for url in leaves(exchange.urls["api"])), exchange.urls["api"]
    try:
        markets = await exchange.load_markets()
        swaps = {m["id"]: m for m in markets.values() if m["swap"]}
        assert set(swaps) == set(perp.symbols)
        for wire, m in swaps.items():
            spec = perp.market.spec(wire)
            assert m["symbol"] == f"{spec.base}/{spec.quote}:USDT" and m["linear"] and m["contract"]
            assert m["contractSize"] == float(spec.contract_size)
            assert m["precision"]["price"] == float(spec.tick) and m["precision"]["amount"] == 1
            assert m["active"] is (spec.status == "trading")  # NEWT is listed, not trading
        assert sorted(m["id"] for m in markets.values() if m["spot"]) == sorted(spot.symbols)  # the spot host
        yield exchange
    finally:
        await exchange.close()


def in_contracts(perp: BitmartPerpSim, levels: dict[float, float]) -> list[tuple[float, float]]:
    size = Decimal(perp.market.spec(BTC).contract_size)
    return [(p, float(Decimal(str(q)) / size)) for p, q in levels.items()]


async def test_ccxt_swap_rest_matches_the_simulator(ccxt_bitmart: type) -> None:
    async with sims() as (spot, perp), ccxt_swap(ccxt_bitmart, spot, perp) as ex:
        perp.pause()
        before = perp.market.clock()
        assert before <= await ex.fetch_time() <= perp.market.clock()  # the futures host's /system/time

        _, bids, asks = perp.truth_book(BTC)
        book = await ex.fetch_order_book(SWAP)
        assert [tuple(lv[:2]) for lv in book["bids"]] == sorted(in_contracts(perp, bids), reverse=True)
        assert [tuple(lv[:2]) for lv in book["asks"]] == sorted(in_contracts(perp, asks))

        ticker = await ex.fetch_ticker(SWAP)  # from the contract details
        deriv = perp.market.derivatives(BTC, perp.market.clock())
        assert ticker["last"] == float(perp.market.last_price(BTC))
        assert ticker["indexPrice"] == float(deriv.index)

        since = (perp.market.clock() // 60_000 - 40) * 60_000
        candles = await ex.fetch_ohlcv(SWAP, "1m", since=since, limit=30)
        truth = {k.open_time * 1000: k for k in perp.market.klines(BTC, 1, fill_gaps=True)}
        assert len(candles) == 30 and candles[0][0] == since
        size = Decimal(perp.market.spec(BTC).contract_size)
        for t, o, h, low, c, v in candles:
            k = truth[t]
            assert (o, h, low, c) == tuple(map(float, (k.open, k.high, k.low, k.close)))
            assert v == float(Decimal(k.volume) / size)  # contracts, as the venue serves them

        funding = await ex.fetch_funding_rate(SWAP)
        deriv = perp.market.derivatives(BTC, funding["timestamp"])
        assert funding["fundingRate"] == float(deriv.next_funding_rate)  # ccxt reads `expected_rate`
        assert funding["previousFundingRate"] == float(deriv.funding_rate)
        assert funding["fundingTimestamp"] == deriv.next_funding_time_ms
        interest = await ex.fetch_open_interest(SWAP)
        deriv = perp.market.derivatives(BTC, interest["timestamp"])
        assert interest["openInterestAmount"] == float(Decimal(deriv.open_interest) / size)


async def test_ccxt_watch_order_book_from_depth50_and_keeps_alive(ccxt_bitmart: type) -> None:
    """ccxt keeps the swap book from `futures/depth50` (whole side per message). After a pause it
    equals the truth's top 50 in contracts. The socket outlives the idle timeout on ccxt's protocol
    PINGs only."""
    async with (
        sims(full_book_interval=0.1, idle_timeout=0.8) as (spot, perp),
        ccxt_swap(ccxt_bitmart, spot, perp, streaming={"keepAlive": 250}) as ex,
    ):
        started, updates = time.monotonic(), 0
        while time.monotonic() - started < 1.6:
            # (between a bids message and its asks message ccxt's book mixes two moments)
            await asyncio.wait_for(ex.watch_order_book(SWAP), 2)
            updates += 1
        assert updates >= 8
        [conn] = [c for c in perp.connections if not c.closed]
        assert conn.topics == {f"futures/depth50:{BTC}"}
        perp.pause()
        _, bids, asks = perp.truth_book(BTC)
        want = (dict(in_contracts(perp, bids)), dict(in_contracts(perp, asks)))
        deadline = time.monotonic() + 3
        while True:  # a book changed since the last push gets one more within full_book_interval
            book = await asyncio.wait_for(ex.watch_order_book(SWAP), 2)
            got = (dict(map(tuple, book["bids"])), dict(map(tuple, book["asks"])))
            if got == want or time.monotonic() > deadline:
                break
        assert got == want, "ccxt's book differs from the simulator's depth-50 truth"


async def test_ccxt_watch_trades_ticker_and_funding(ccxt_bitmart: type) -> None:
    async with (
        sims(full_book_interval=0.2, funding_interval=0.3) as (spot, perp),
        ccxt_swap(ccxt_bitmart, spot, perp) as ex,
    ):
        resolved = 0
        while resolved < 60:  # each resolution returns the new trades
            resolved += len(await asyncio.wait_for(ex.watch_trades(SWAP), 3))
        ticker = await asyncio.wait_for(ex.watch_ticker(SWAP), 3)
        funding = await asyncio.wait_for(ex.watch_funding_rate(SWAP), 3)
        perp.pause()
        await perp.drain()
        await asyncio.sleep(0.2)
        [conn] = [c for c in perp.connections if not c.closed]
        sent = perp.sent_trades(BTC, conn)
        trades = list(ex.trades[SWAP])
        want = []
        for t in sent:
            item = perp.trade_item(t)
            want.append((str(item["trade_id"]), t.ts_ms, t.side, t.price_f, float(item["deal_vol"])))
        got = [(t["id"], t["timestamp"], t["side"], t["price"], t["amount"]) for t in trades]
        assert len(got) >= 60 and got == want  # oldest first, side from `m`, amounts in contracts

        served = {(ch, tuple(sorted(i.items()))) for ch, _, i in perp.served(conn)}
        info = ticker["info"]
        assert ("futures/ticker", tuple(sorted(info.items()))) in served
        assert (ticker["last"], ticker["markPrice"], ticker["indexPrice"]) == (
            float(info["last_price"]),
            float(info["mark_price"]),
            float(info["index_price"]),
        )
        assert (ticker["bid"], ticker["ask"]) == (float(info["bid_price"]), float(info["ask_price"]))
        assert ("futures/fundingRate", tuple(sorted(funding["info"].items()))) in served
        assert funding["fundingRate"] == float(funding["info"]["fundingRate"])
        assert funding["nextFundingTimestamp"] == funding["info"]["nextFundingTime"]
