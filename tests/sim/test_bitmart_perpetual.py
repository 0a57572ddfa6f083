"""The BitMart perpetual front-end on the wire, against ../shared/protocols/bitmart.md §4, with a plain
aiohttp client (no recorder code): requests and acks, the depthIncrease window and its version
chain (empty pushes advance it), trades, ticker/funding/depth pushes, errors, REST, rate limits,
faults, and the full-speed tape. Books are rebuilt here from what was received and compared with
the simulator's own truth."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest

from recorder.sim.frontends import bitmart_perpetual as fe
from recorder.sim.frontends.bitmart_perpetual import BitmartPerpSim

pytestmark = pytest.mark.timeout(30)

BTC, ETH = "BTCUSDT", "ETHUSDT"
INC50 = f"futures/depthIncrease50:{BTC}@100ms"
TRADE = f"futures/trade:{BTC}"


@pytest.fixture
async def make_sim() -> AsyncIterator[Any]:
    sims: list[BitmartPerpSim] = []

    async def make(**options: Any) -> BitmartPerpSim:
        options.setdefault("seed", 5)
        options.setdefault("symbols", [BTC, ETH])
        options.setdefault("rate", 200.0)
        sim = BitmartPerpSim(**options)
        sims.append(await sim.start())
        return sim

    yield make
    for sim in sims:
        await sim.stop()


@contextlib.asynccontextmanager
async def connect(sim: BitmartPerpSim) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with aiohttp.ClientSession() as session, session.ws_connect(sim.ws_url, autoping=False) as ws:
        yield ws


async def send(ws: aiohttp.ClientWebSocketResponse, action: str, *args: str) -> None:
    await ws.send_str(orjson.dumps({"action": action, "args": list(args)}).decode())


async def texts(ws: aiohttp.ClientWebSocketResponse, quiet: float = 0.3) -> list[Any]:
    """Every frame (TEXT decoded) until nothing arrived for `quiet` seconds; BINARY fails."""
    out = []
    while True:
        try:
            msg = await ws.receive(timeout=quiet)
        except TimeoutError:
            return out
        assert msg.type is not aiohttp.WSMsgType.BINARY, "the futures socket sends TEXT frames only"
        if msg.type is not aiohttp.WSMsgType.TEXT:
            out.append(msg)
            return out
        out.append(orjson.loads(msg.data))


def of(messages: list[Any], group_prefix: str) -> list[dict]:
    return [
        m for m in messages if isinstance(m, dict) and "data" in m and m["group"].startswith(group_prefix)
    ]


def contracts_to_truth(sim: BitmartPerpSim, wire: str, levels: dict[str, str]) -> dict[float, float]:
    """Contract sizes on the wire -> base units, exactly, as the truth book holds them."""
    size = Decimal(sim.market.spec(wire).contract_size)
    return {float(p): float(Decimal(q) * size) for p, q in levels.items()}


def rebuild(messages: list[dict], wire: str) -> tuple[int, dict[str, str], dict[str, str], int, int]:
    """The documented algorithm (§4.2) over received depthIncrease pushes, in order: a snapshot
    replaces the book, every update must be version + 1 (empty ones included), "0" deletes.
    Returns (version, bids, asks, updates applied, empty updates)."""
    version, bids, asks, applied, empty = -1, {}, {}, 0, 0
    for m in messages:
        d = m["data"]
        if d["symbol"] != wire:
            continue
        if d["type"] == "snapshot":
            version = d["version"]
            bids = {lv["price"]: lv["vol"] for lv in d["bids"]}
            asks = {lv["price"]: lv["vol"] for lv in d["asks"]}
            continue
        assert d["type"] == "update" and version >= 0
        assert d["version"] == version + 1, f"version {version} -> {d['version']}"
        version = d["version"]
        empty += not d["bids"] and not d["asks"]
        applied += 1
        for side, levels in ((bids, d["bids"]), (asks, d["asks"])):
            for lv in levels:
                assert set(lv) == {"price", "vol"} and lv["vol"].isdigit(), lv  # whole contracts
                if lv["vol"] == "0":
                    side.pop(lv["price"], None)
                else:
                    side[lv["price"]] = lv["vol"]
    return version, bids, asks, applied, empty


def assert_window(sim: BitmartPerpSim, wire: str, messages: list[dict], depth: int) -> tuple[int, int]:
    """The rebuilt book is the truth's top `depth` per side, in contracts; returns (applied, empty)."""
    version, bids, asks, applied, empty = rebuild(messages, wire)
    view = sim.market.book(wire)
    want_b, want_a = view.top(depth)
    assert version == sim.truth_seq(view.symbol)
    assert contracts_to_truth(sim, wire, bids) == {float(p): float(s) for p, s in want_b}
    assert contracts_to_truth(sim, wire, asks) == {float(p): float(s) for p, s in want_a}
    assert len(bids) <= depth and len(asks) <= depth
    return applied, empty


# ---- ids, listing, subscribe protocol --------------------------------------------------------------


async def test_ids_and_contract_details(make_sim) -> None:
    sim = await make_sim()
    sim.pause()
    assert sim.ws_url.endswith("/api?protocol=1.1")
    assert sim.symbols == [BTC, ETH, "NEWTUSDT"] and sim.trading_symbols == [BTC, ETH]
    assert sim.market.resolve(BTC) == "BTC-USDT"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{sim.rest_url}/contract/public/details") as r:
            assert r.status == 200 and r.headers["X-BM-RateLimit-Limit"] == "12"
            assert r.headers["X-BM-RateLimit-Reset"] == "2" and r.headers["X-BM-RateLimit-Remaining"] == "1"
            doc = await r.json()
        assert doc["code"] == 1000 and doc["message"] == "Ok"
        rows = {row["symbol"]: row for row in doc["data"]["symbols"]}
        assert set(rows) == set(sim.symbols)
        for wire, row in rows.items():
            spec = sim.market.spec(wire)
            assert row["product_type"] == 1 and row["base_currency"] + row["quote_currency"] == wire
            assert row["contract_size"] == spec.lot == spec.contract_size  # sizes are whole contracts
            assert row["price_precision"] == spec.tick and row["vol_precision"] == "1"
            assert row["status"] == ("Trading" if spec.status == "trading" else "Delisted")
            assert isinstance(row["funding_time"], int) and row["funding_time"] % (8 * 3_600_000) == 0
        async with session.get(f"{sim.rest_url}/contract/public/details", params={"symbol": ETH}) as r:
            assert [row["symbol"] for row in (await r.json())["data"]["symbols"]] == [ETH]


async def test_acks_echo_the_request_refusals_and_repeats(make_sim) -> None:
    sim = await make_sim()
    sim.pause()
    async with connect(sim) as ws:
        topics = [INC50, TRADE, f"futures/ticker:{BTC}", f"futures/fundingRate:{BTC}"]
        await send(ws, "subscribe", *topics)
        got = await texts(ws)
        acks = [m for m in got if "success" in m]
        request = {"action": "subscribe", "args": topics}
        assert acks == [
            {"action": "subscribe", "group": t, "success": True, "request": request} for t in topics
        ]
        # a repeated subscribe is acked again, no error (§4.1)
        await send(ws, "subscribe", TRADE)
        assert [m for m in await texts(ws) if "success" in m] == [
            {
                "action": "subscribe",
                "group": TRADE,
                "success": True,
                "request": {"action": "subscribe", "args": [TRADE]},
            }
        ]
        bad = [
            "futures/depthIncrease50:NOPEUSDT@100ms",  # unknown symbol
            "futures/depthIncrease50:NEWTUSDT@100ms",  # listed, not trading: same answer
            f"futures/depthIncrease30:{BTC}@100ms",  # unsupported depth
            f"futures/depthIncrease50:{BTC}@50ms",  # unsupported speed
            f"sfutures/depth50:{BTC}",  # unknown channel
        ]
        await send(ws, "subscribe", *bad)
        refusals = [m for m in await texts(ws) if "success" in m]
        assert [(m["group"], m["success"], m["error"]) for m in refusals] == [
            (t, False, f"Invalid channel: not found {t}") for t in bad
        ]
        # speeds the venue takes: none, @100ms/@200ms, and ccxt's colon form
        ok = [
            f"futures/depthIncrease20:{BTC}",
            f"futures/depthIncrease5:{BTC}@200ms",
            f"futures/depth50:{BTC}:100ms",
        ]
        await send(ws, "subscribe", *ok)
        assert [m["group"] for m in await texts(ws) if m.get("success")] == ok
        sim.fail_next_subscribe()
        await send(ws, "subscribe", f"futures/trade:{ETH}")
        [refused] = [m for m in await texts(ws) if "success" in m]
        assert refused["success"] is False and refused["group"] == f"futures/trade:{ETH}"
        await send(ws, "unsubscribe", TRADE)
        assert [m for m in await texts(ws) if "success" in m] == [
            {
                "action": "unsubscribe",
                "group": TRADE,
                "success": True,
                "request": {"action": "unsubscribe", "args": [TRADE]},
            }
        ]
        assert TRADE not in sim.open_connections[0].topics
        # other actions: the text ccxt recorded from the venue
        await send(ws, "", TRADE)
        [m] = [m for m in await texts(ws) if "success" in m]
        assert m["success"] is False and m["error"] == f"Invalid action [] for group [{TRADE}]"


async def test_keepalive_errors_and_the_frame_size_cap(make_sim) -> None:
    sim = await make_sim(idle_timeout=1.0)
    sim.pause()
    async with connect(sim) as ws:
        await ws.send_str("ping")  # the text keepalive is refused, the socket stays open
        assert await texts(ws) == [{"success": False, "error": "Invalid message: message must be JSON: ping"}]
        for _ in range(4):  # only the JSON ping keeps the socket past the 1 s idle timeout
            await ws.send_str('{"action":"ping"}')
            [pong] = await texts(ws, quiet=0.4)
            assert set(pong) == {"group", "data"} and pong["group"] == "System"
            assert pong["data"].startswith("pong+") and len(pong["data"]) == len("pong+") + 36
        # 49 topics in ~2 KB pass; 53 (2,186 bytes on the real socket) close it with 1009 (§4.1)
        topics = [f"futures/depthIncrease50:{w}@100ms" for w in (BTC, ETH)] * 30
        frame = orjson.dumps({"action": "subscribe", "args": topics[:49]}).decode()
        assert 1900 < len(frame) < 2048
        await ws.send_str(frame)
        assert len([m for m in await texts(ws) if m.get("success")]) == 49
        frame = orjson.dumps({"action": "subscribe", "args": topics[:53]}).decode()
        assert 2048 < len(frame) < 2186
        await ws.send_str(frame)
        [closed] = await texts(ws)
        assert closed.type is aiohttp.WSMsgType.CLOSE and closed.data == 1009
    async with connect(sim) as ws:  # a silent client is closed after the idle timeout
        [closed] = await texts(ws, quiet=3)
        assert closed.type is aiohttp.WSMsgType.CLOSE


async def test_server_pings_once_after_connect(make_sim, monkeypatch) -> None:
    monkeypatch.setattr(fe, "SERVER_PING_AFTER", 0.5)
    sim = await make_sim()
    sim.pause()
    async with connect(sim) as ws:
        kinds = []
        for _ in range(3):
            with contextlib.suppress(TimeoutError):
                kinds.append((await ws.receive(timeout=1.2)).type)
            await ws.send_str('{"action":"ping"}')
        assert kinds.count(aiohttp.WSMsgType.PING) == 1


# ---- books ------------------------------------------------------------------------------------------


async def test_depth_window_and_version_chain_match_truth(make_sim) -> None:
    """Snapshot on subscribe, then one push per change with version + 1; the 50-level window is kept
    (levels leaving it are deleted, levels entering it are added): rebuilt == truth top 50, in
    contracts. depth5 and depth20 streams share the version and get empty pushes for changes
    outside their window."""
    sim = await make_sim(symbols=[BTC])
    sim.pause()
    for _ in range(50):  # until the market's book is deeper than the window on one side
        sim.step(BTC, 100)
        if max(len(sim.market.book(BTC).bids), len(sim.market.book(BTC).asks)) > 50:
            break
    async with connect(sim) as ws:
        d5, d20 = f"futures/depthIncrease5:{BTC}", f"futures/depthIncrease20:{BTC}@200ms"
        await send(ws, "subscribe", INC50, d5, d20)
        first = await texts(ws)
        [snap] = [m for m in of(first, INC50) if m["data"]["type"] == "snapshot"]
        data = snap["data"]
        assert set(data) == {"symbol", "asks", "bids", "ms_t", "version", "type"}
        view = sim.market.book(BTC)
        assert max(len(view.bids), len(view.asks)) > 50
        assert (len(data["bids"]), len(data["asks"])) == (min(50, len(view.bids)), min(50, len(view.asks)))
        prices = [float(lv["price"]) for lv in data["bids"]]
        assert prices == sorted(prices, reverse=True)  # best first
        sim.step(BTC, 600)
        got = first + await texts(ws)
    for topic, depth in ((INC50, 50), (d5, 5), (d20, 20)):
        pushes = of(got, topic)
        assert all(m["group"] == topic for m in pushes)  # the group as subscribed
        applied, empty = assert_window(sim, BTC, pushes, depth)
        assert applied == 600
        if depth == 5:
            assert empty > 0  # changes outside the top 5: an empty push, one version further


async def test_empty_pushes_advance_the_version_and_request_answers_a_snapshot(make_sim) -> None:
    sim = await make_sim(symbols=[BTC], heartbeat_interval=0.5)
    sim.pause()
    async with connect(sim) as ws:
        await send(ws, "subscribe", INC50)
        got = await texts(ws)
        await asyncio.sleep(1.5)  # a quiet book: empty pushes, each one version further
        got += await texts(ws)
        sim.step(BTC, 20)
        got += await texts(ws)
        pushes = of(got, INC50)
        applied, empty = assert_window(sim, BTC, pushes, 50)
        assert empty >= 2 and applied == empty + 20 and sim.empty_pushes == empty
        sim.heartbeat_interval = 3600.0  # no more empty pushes: the version stays put from here
        # `request`: a snapshot at once on the same group, no ack
        await send(ws, "request", INC50)
        [answer] = [m for m in await texts(ws) if m["data"]["type"] == "snapshot"]
        assert answer["group"] == INC50 and answer["data"]["type"] == "snapshot"
        assert answer["data"]["version"] == sim.truth_seq("BTC-USDT")
        assert_window(sim, BTC, [answer], 50)
        # `request` of the funding channel: one push; of a channel without snapshots: an error
        await send(ws, "request", f"futures/fundingRate:{BTC}", TRADE)
        funding, refused = [m for m in await texts(ws) if not m["group"].startswith("futures/depth")]
        assert funding["group"] == f"futures/fundingRate:{BTC}" and funding["data"]["symbol"] == BTC
        assert refused["success"] is False and refused["group"] == TRADE


async def test_full_book_channels_ccxt_uses(make_sim) -> None:
    """`futures/depth50`: the whole top 50 of one side per message (way 1 bids, 2 asks); depthAll:
    both sides in one; on subscribe and then at a fixed cadence (about once a second)."""
    sim = await make_sim(symbols=[BTC], full_book_interval=0.5)
    sim.pause()
    async with connect(sim) as ws:
        await send(ws, "subscribe", f"futures/depth50:{BTC}", f"futures/depthAll20:{BTC}@100ms")
        got = await texts(ws)
        sim.step(BTC, 30)
        await asyncio.sleep(0.6)
        got += await texts(ws)
    view = sim.market.book(BTC)
    bids, asks = view.top(50)
    *_, last_bid, last_ask = of(got, "futures/depth50")
    assert (last_bid["data"]["way"], last_ask["data"]["way"]) == (1, 2)
    as_truth = lambda levels: contracts_to_truth(sim, BTC, {lv["price"]: lv["vol"] for lv in levels})  # noqa: E731
    assert as_truth(last_bid["data"]["depths"]) == {float(p): float(s) for p, s in bids}
    assert as_truth(last_ask["data"]["depths"]) == {float(p): float(s) for p, s in asks}
    first_all, *_, last_all = of(got, "futures/depthAll20")
    assert set(last_all["data"]) == {"symbol", "asks", "bids", "ms_t"}
    assert as_truth(last_all["data"]["bids"]) == {float(p): float(s) for p, s in bids[:20]}
    assert first_all["data"] != last_all["data"]


# ---- trades ---------------------------------------------------------------------------------------


async def test_trades_newest_first_with_ids_m_and_nanosecond_times(make_sim) -> None:
    sim = await make_sim(symbols=[BTC])
    sim.pause()
    async with connect(sim) as ws:
        await send(ws, "subscribe", TRADE)
        await texts(ws)
        events = sim.step(BTC, 400)
        pushes = of(await texts(ws), TRADE)
    [conn] = sim.connections
    sent = sim.sent_trades(BTC, conn)
    assert len(pushes) == sum(1 for e in events if e.trades) and len(sent) > 100
    assert any(len(p["data"]) > 1 for p in pushes)  # sweeps: several fills in one push
    received = []
    for p in pushes:
        items = p["data"]
        assert p["group"] == TRADE
        assert [i["trade_id"] for i in items] == sorted((i["trade_id"] for i in items), reverse=True)
        assert [i["created_at"] for i in items] == sorted((i["created_at"] for i in items), reverse=True)
        received += reversed(items)  # oldest first
    ways = set()
    for item, t in zip(received, sent, strict=True):
        assert set(item) == {"trade_id", "symbol", "deal_price", "deal_vol", "way", "m", "created_at"}
        assert type(item["trade_id"]) is int and item["trade_id"] > 10**15
        assert item["m"] is (t.side == "sell")  # buyer is maker <=> the taker sold
        assert item["deal_price"] == t.price and Decimal(item["deal_vol"]) * Decimal("0.00001") == Decimal(
            t.size
        )
        head, frac = item["created_at"].removesuffix("Z").split(".")
        assert len(frac) == 9 and item["created_at"].endswith("Z")
        stamp = datetime.fromisoformat(head).replace(tzinfo=UTC)
        assert int(stamp.timestamp()) * 1000 + int(frac) // 1_000_000 == t.ts_ms  # within the fill's ms
        assert sim.trade_item(t) == item
        ways.add((item["way"], item["m"]))
    ids = [i["trade_id"] for i in received]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert len({w for w, _ in ways}) == 8 and len(ways) > 8  # `way` is not the taker side


# ---- ticker and funding ---------------------------------------------------------------------------


async def test_ticker_and_funding_pushes(make_sim) -> None:
    sim = await make_sim(full_book_interval=0.2, funding_interval=0.3)
    async with connect(sim) as ws:
        await send(ws, "subscribe", f"futures/ticker:{BTC}", f"futures/fundingRate:{BTC}", "futures/ticker")
        await asyncio.sleep(1.0)
        sim.pause()
        await asyncio.sleep(0.4)  # a ticker and a funding push of the frozen market
        got = await texts(ws, quiet=0.1)
    [conn] = sim.connections
    tickers = of(got, "futures/ticker")
    # data groups carry a speed the client did not send (§4.1)
    assert {m["group"] for m in tickers} == {f"futures/ticker:{BTC}@100ms", f"futures/ticker:{ETH}@100ms"}
    assert len([m for m in tickers if m["data"]["symbol"] == BTC]) >= 8  # own + all-contracts pushes
    fields = {"symbol", "last_price", "volume_24", "range", "mark_price", "index_price", "ask_price",
              "ask_vol", "bid_price", "bid_vol"}  # fmt: skip
    assert all(set(m["data"]) == fields for m in tickers)
    funding = of(got, "futures/fundingRate")
    assert len(funding) >= 3 and all(m["group"] == f"futures/fundingRate:{BTC}" for m in funding)
    for m in funding:
        d = m["data"]
        assert d["fundingTime"] == d["ts"] // 1000 * 1000  # ~ the reply time, as seen on the wire
        assert d["nextFundingTime"] % (8 * 3_600_000) == 0 and d["nextFundingTime"] > d["ts"]
    d = funding[-1]["data"]  # pushed after the pause: the market's derivatives of that moment
    want = sim.market.derivatives(BTC, d["ts"])
    assert (d["fundingRate"], d["nextFundingRate"]) == (want.funding_rate, want.next_funding_rate)
    t = [m for m in tickers if m["data"]["symbol"] == BTC][-1]["data"]
    want = sim.market.derivatives(BTC, sim.market.clock())
    assert (t["mark_price"], t["last_price"]) == (want.mark, sim.market.last_price(BTC))
    # what the simulator says it served is what arrived, in order
    served = [(ch, item) for ch, _, item in sim.served(conn)]
    arrived = [
        (
            "futures/fundingRate" if m["group"].startswith("futures/fundingRate") else "futures/ticker",
            m["data"],
        )
        for m in got
        if isinstance(m, dict) and "data" in m
    ]
    assert served[: len(arrived)] == arrived  # (pushes may follow the last one read)
    last = tickers[-1]["data"]
    if last["symbol"] == BTC:
        bid, ask = sim.truth_book(BTC)[1:]
        assert float(last["bid_price"]) == max(bid) and float(last["ask_price"]) == min(ask)
        assert Decimal(last["bid_vol"]) * Decimal("0.00001") == Decimal(str(bid[max(bid)]))


# ---- REST -------------------------------------------------------------------------------------------


async def get(
    session: aiohttp.ClientSession, sim: BitmartPerpSim, path: str, **params: Any
) -> tuple[int, dict]:
    async with session.get(f"{sim.rest_url}{path}", params=params) as r:
        return r.status, await r.json()


async def test_rest_depth_klines_funding_and_open_interest(make_sim) -> None:
    sim = await make_sim(symbols=[BTC], history_minutes=700, rest_rate_limits=False)
    sim.pause()
    async with aiohttp.ClientSession() as s:
        _, doc = await get(s, sim, "/contract/public/depth", symbol=BTC)
        data = doc["data"]
        assert set(data) == {"asks", "bids", "timestamp", "symbol"} and isinstance(data["timestamp"], int)
        bids, asks = sim.market.book(BTC).top(50)
        for rows, want in ((data["bids"], bids), (data["asks"], asks)):
            assert [(float(p), float(Decimal(q) * Decimal("0.00001"))) for p, q, _ in rows] == [
                (float(p), float(q)) for p, q in want
            ]
            assert [int(c) for *_, c in rows] == list(itertools.accumulate(int(q) for _, q, _ in rows))

        now = sim.market.clock() // 1000
        start = (now - 600 * 60) // 60 * 60
        _, doc = await get(
            s, sim, "/contract/public/kline", symbol=BTC, step=1, start_time=start, end_time=start + 120
        )
        assert [k["timestamp"] for k in doc["data"]] == [
            start,
            start + 60,
            start + 120,
        ]  # both bounds included
        _, doc = await get(
            s, sim, "/contract/public/kline", symbol=BTC, step=1, start_time=start, end_time=now
        )
        rows = doc["data"]
        assert len(rows) == 500 and rows[0]["timestamp"] == start  # at most 500, the oldest
        truth = {k.open_time: k for k in sim.market.klines(BTC, 1, fill_gaps=True, until_s=now)}
        for row in rows:
            k = truth[row["timestamp"]]
            assert [row["open_price"], row["high_price"], row["low_price"], row["close_price"]] == [
                k.open,
                k.high,
                k.low,
                k.close,
            ]
            assert Decimal(row["volume"]) * Decimal("0.00001") == Decimal(k.volume)  # contracts on the wire
        _, doc = await get(
            s, sim, "/contract/public/kline", symbol=BTC, step=60, start_time=start, end_time=now
        )
        assert all(r["timestamp"] % 3600 == 0 for r in doc["data"]) and len(doc["data"]) >= 9

        _, doc = await get(s, sim, "/contract/public/funding-rate", symbol=BTC)
        want = sim.market.derivatives(BTC, doc["data"]["timestamp"])
        assert (doc["data"]["rate_value"], doc["data"]["expected_rate"], doc["data"]["funding_time"]) == (
            want.funding_rate,
            want.next_funding_rate,
            want.next_funding_time_ms,
        )
        _, doc = await get(s, sim, "/contract/public/funding-rate-history", symbol=BTC, limit=3)
        times = [int(r["funding_time"]) for r in doc["data"]["list"]]
        assert times == sorted(times, reverse=True) and times[0] - times[1] == 8 * 3_600_000

        _, doc = await get(s, sim, "/contract/public/open-interest", symbol=BTC)
        data = doc["data"]
        want = sim.market.derivatives(BTC, data["timestamp"])
        assert Decimal(data["open_interest"]) * Decimal("0.00001") == Decimal(want.open_interest)
        assert Decimal(data["open_interest_value"]) == Decimal(want.open_interest) * Decimal(want.mark)
        assert sim.served_rest == [("/contract/public/open-interest", data)]

        _, doc = await get(s, sim, "/system/time")
        assert abs(doc["data"]["server_time"] - sim.market.clock()) < 1000

        status, doc = await get(s, sim, "/contract/public/depth", symbol="NOPEUSDT")
        assert (status, doc["code"]) == (400, 40034)
        status, doc = await get(s, sim, "/contract/public/kline", symbol=BTC, step=1, start_time=start)
        assert (status, doc["code"]) == (400, 49998)  # end_time is required
        status, doc = await get(
            s, sim, "/contract/public/kline", symbol=BTC, step=2, start_time=start, end_time=now
        )
        assert (status, doc["code"]) == (400, 49998)  # not a documented step


async def test_rest_rate_limits_and_faults(make_sim) -> None:
    sim = await make_sim(symbols=[BTC])
    sim.pause()
    async with aiohttp.ClientSession() as s:
        seen = []
        for _ in range(3):
            async with s.get(f"{sim.rest_url}/contract/public/open-interest", params={"symbol": BTC}) as r:
                seen.append(
                    (r.status, r.headers["X-BM-RateLimit-Remaining"], r.headers["X-BM-RateLimit-Limit"])
                )
                body = await r.json()
        assert seen == [(200, "1", "2"), (200, "2", "2"), (429, "3", "2")]  # 2 per 2 s (§4.9)
        assert body["code"] == 30013
        for _ in range(12):
            async with s.get(f"{sim.rest_url}/contract/public/depth", params={"symbol": BTC}) as r:
                assert r.status == 200
        async with s.get(f"{sim.rest_url}/contract/public/depth", params={"symbol": BTC}) as r:
            assert r.status == 429  # 12 per 2 s
        sim.fail_rest(503)
        sim.fail_rest(429, retry_after=1)
        async with s.get(f"{sim.rest_url}/system/time") as r:
            assert r.status == 503
        async with s.get(f"{sim.rest_url}/system/time") as r:
            assert r.status == 429 and r.headers["Retry-After"] == "1" and (await r.json())["code"] == 30013


# ---- faults and full speed -------------------------------------------------------------------------


async def test_faults_are_text_frames(make_sim) -> None:
    sim = await make_sim(symbols=[BTC])
    sim.pause()
    async with connect(sim) as ws:
        await send(ws, "subscribe", INC50)
        await texts(ws)
        version = sim.truth_seq("BTC-USDT")
        sim.send_stale_version(BTC, back=2)
        [stale] = await texts(ws)
        assert stale["group"] == INC50 and stale["data"]["version"] == version - 2
        [level] = stale["data"]["bids"]
        assert level["price"] not in sim.market.book(BTC).bids  # applying it would corrupt the book
        sim.send_malformed_json()
        msg = await ws.receive(timeout=2)
        assert msg.type is aiohttp.WSMsgType.TEXT
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(msg.data)
        size = sim.send_oversized_frame(100_000)
        msg = await ws.receive(timeout=2)
        assert msg.type is aiohttp.WSMsgType.TEXT and abs(len(msg.data) - size) == 0 and size >= 99_000
        for fault in (sim.send_invalid_deflate, sim.send_deflate_bomb):
            with pytest.raises(NotImplementedError):
                fault()  # nothing is compressed on this socket
        sim.skip_version(BTC, 2)
        sim.duplicate_version(BTC, 1)
        sim.step(BTC, 4)
        versions = [m["data"]["version"] for m in of(await texts(ws), INC50)]
        assert versions == [version + 3, version + 3, version + 4]  # two never sent, then one twice
        assert sim.drop_connections() == 1


async def test_full_speed_tape(make_sim) -> None:
    sim = await make_sim(symbols=[BTC, ETH], rate=0, tape_events=3000, include_pre_trade=False)
    with pytest.raises(RuntimeError):
        sim.step()
    async with connect(sim) as ws:
        await send(ws, "subscribe", INC50, TRADE)
        await sim.drain()
        got = await texts(ws)
    applied, empty = assert_window(sim, BTC, of(got, INC50), 50)  # the end of the tape is the truth
    tape = sim._tapes["BTC-USDT"]
    assert empty >= tape.empty_pushes >= 10 and applied == len(tape.depth)
    assert sim.tape_stats() == {"updates_sent": applied - tape.empty_pushes, "empty_sent": tape.empty_pushes}
    [conn] = sim.connections
    sent = sim.sent_trades(BTC, conn)
    assert sent and [i["trade_id"] for p in of(got, TRADE) for i in reversed(p["data"])] == [
        sim.trade_item(t)["trade_id"] for t in sent
    ]
