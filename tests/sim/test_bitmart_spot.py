"""The synthetic market and the BitMart spot simulator, checked the way an independent client sees them.

Everything goes over real loopback sockets, decoded here with a tiny client written from the protocol
notes (../shared/protocols/bitmart.md) — never with the recorder's own adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recorder.sim import BitmartSpotSim, Market, format_units, parse_units, resolve_specs
from recorder.sim.market import ASK, BID, MAX_LEVELS, SymbolSpec

pytestmark = pytest.mark.timeout(30)

INCREASE = "spot/depth/increase100"
BTC = "BTC_USDT"
ETH = "ETH_USDT"


# ---- a tiny independent client ---------------------------------------------------------------------


def inflate(frame: bytes, max_length: int = 0) -> bytes:
    """Raw DEFLATE, a fresh inflater per frame (what every BitMart client does)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = inflater.decompress(frame, max_length)
    if not max_length:
        out += inflater.flush()
        assert inflater.eof, "frame is not a complete deflate stream"
    return out


class LocalBook:
    """The documented book algorithm: snapshot replaces; update applies iff version == local + 1."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.gaps = 0
        self.dropped = 0

    def apply(self, item: dict[str, Any]) -> bool:
        """False on a gap (the caller must `request` a new snapshot)."""
        version = item["version"]
        if item["type"] == "snapshot":
            self.bids, self.asks = {}, {}
        elif self.version is None or version <= self.version:
            self.dropped += 1
            return True
        elif version > self.version + 1:
            self.gaps += 1
            self.version = None
            return False
        for side, levels in ((self.bids, item["bids"]), (self.asks, item["asks"])):
            for price, size in levels:
                if float(size) == 0:
                    side.pop(float(price), None)
                else:
                    side[float(price)] = float(size)
        self.version = version
        return True


class Client:
    """Sends spot requests, decodes TEXT and BINARY frames, keeps everything it received."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.texts: list[str] = []
        self.pushes: list[dict[str, Any]] = []
        self.books: dict[str, LocalBook] = {}
        self.trades: dict[str, list[dict[str, Any]]] = {}
        self.resync = True

    async def send(self, op: str, *topics: str) -> None:
        await self.ws.send_str(orjson.dumps({"op": op, "args": list(topics)}).decode())

    async def next(self, timeout: float = 3.0) -> tuple[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is aiohttp.WSMsgType.TEXT:
            self.texts.append(msg.data)
            return "text", msg.data
        if msg.type is aiohttp.WSMsgType.BINARY:
            push = orjson.loads(inflate(msg.data))
            self.pushes.append(push)
            await self._route(push)
            return "push", push
        if msg.type is aiohttp.WSMsgType.PONG:
            return "pong", msg.data
        return "closed", msg

    async def _route(self, push: dict[str, Any]) -> None:
        for item in push["data"]:
            if push["table"] == INCREASE:
                book = self.books.setdefault(item["symbol"], LocalBook())
                if not book.apply(item) and self.resync:
                    await self.send("request", f"{INCREASE}:{item['symbol']}")
            elif push["table"] == "spot/trade":
                self.trades.setdefault(item["symbol"], []).append(item)

    async def wait_for(self, predicate: Callable[[str, Any], bool], timeout: float = 3.0) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("expected message did not arrive")
            kind, payload = await self.next(left)
            if predicate(kind, payload):
                return kind, payload
            if kind == "closed":
                raise ConnectionError(f"closed while waiting: {payload}")

    async def wait_text(self, fragment: str, timeout: float = 3.0) -> dict[str, Any]:
        _, text = await self.wait_for(lambda k, p: k == "text" and fragment in p, timeout)
        return orjson.loads(text)

    async def quiesce(self, quiet: float = 0.3, limit: float = 10.0) -> None:
        """Read (and apply) until nothing arrived for `quiet` seconds."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                kind, _ = await self.next(quiet)
            except TimeoutError:
                return
            if kind == "closed":
                return
        raise TimeoutError("the stream never went quiet")

    async def pump(self, seconds: float) -> None:
        """Read (and apply) whatever arrives for `seconds`."""
        with contextlib.suppress(TimeoutError):
            await self.wait_for(lambda k, p: k == "closed", seconds)


def book_of(push: dict[str, Any]) -> dict[str, Any]:
    return push["data"][0]


def is_depth(kind: str, payload: Any, symbol: str = BTC, type_: str | None = None) -> bool:
    if kind != "push" or payload["table"] != INCREASE:
        return False
    item = book_of(payload)
    return item["symbol"] == symbol and (type_ is None or item["type"] == type_)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def make_sim() -> AsyncIterator[Callable[..., Any]]:
    sims: list[BitmartSpotSim] = []

    async def make(**options: Any) -> BitmartSpotSim:
        options.setdefault("seed", 7)
        sim = await BitmartSpotSim(**options).start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.stop()


@contextlib.asynccontextmanager
async def connect(session: aiohttp.ClientSession, sim: BitmartSpotSim, **kw: Any) -> AsyncIterator[Client]:
    kw.setdefault("autoping", False)
    async with session.ws_connect(sim.ws_url, **kw) as ws:
        yield Client(ws)


async def settle(sim: BitmartSpotSim, client: Client) -> None:
    """Freeze the market, let everything in flight arrive and be applied."""
    sim.pause()
    await sim.drain()
    await client.quiesce()


def assert_book_matches(sim: BitmartSpotSim, client: Client, symbol: str) -> None:
    version, bids, asks = sim.truth_book(symbol)
    book = client.books[symbol]
    assert book.version == version
    assert book.bids == bids
    assert book.asks == asks


# ---- market engine ---------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        self.now += 7
        return self.now


def test_market_is_deterministic_per_seed() -> None:
    specs = resolve_specs(None)
    a = Market(specs, seed=3, clock=FakeClock())
    b = Market(specs, seed=3, clock=FakeClock())
    c = Market(specs, seed=4, clock=FakeClock())
    events_a = [(e.symbol, e.changes, e.trades) for e in a.steps(2000)]
    assert events_a == [(e.symbol, e.changes, e.trades) for e in b.steps(2000)]
    assert events_a != [(e.symbol, e.changes, e.trades) for e in c.steps(2000)]


@pytest.mark.parametrize("seed", [0, 1])
def test_market_invariants_and_trade_book_consistency(seed: int) -> None:
    market = Market(resolve_specs(None) + resolve_specs(5), seed=seed, clock=FakeClock())
    books = {s: (dict(market.book(s).bids), dict(market.book(s).asks)) for s in market.symbols}
    trade_events = 0
    last_ts = 0
    for event in market.steps(6_000):
        spec = market.spec(event.symbol)
        bids, asks = books[event.symbol]
        assert event.changes, "every event changes the book"
        assert event.ts_ms >= last_ts
        last_ts = event.ts_ms
        if event.trades:
            trade_events += 1
            side = event.trades[0].side
            consumed = asks if side == "buy" else bids
            prices = [parse_units(t.price, spec.price_decimals) for t in event.trades]
            # A sweep goes from the best level outwards, all at the event's time, all one taker side.
            assert prices == sorted(prices, reverse=side == "sell")
            assert {t.side for t in event.trades} == {side} and {t.ts_ms for t in event.trades} == {
                event.ts_ms
            }
            best = min(consumed, key=float) if side == "buy" else max(consumed, key=float)
            assert event.trades[0].price == best
            changed = {(s, p): q for s, p, q in event.changes}
            for t in event.trades:
                key = (ASK if side == "buy" else BID, t.price)
                before = parse_units(consumed[t.price], spec.size_decimals)
                after = parse_units(changed[key], spec.size_decimals)
                assert before - after == t.size_lots > 0
        for side, price, size in event.changes:
            target = bids if side == BID else asks
            assert format_units(parse_units(price, spec.price_decimals), spec.price_decimals) == price
            if size == "0":
                target.pop(price, None)
            else:
                assert format_units(parse_units(size, spec.size_decimals), spec.size_decimals) == size
                target[price] = size
        view = market.book(event.symbol)
        assert view.bids == bids and view.asks == asks, "changes replay to the truth book"
        assert 0 < len(bids) <= MAX_LEVELS and 0 < len(asks) <= MAX_LEVELS
        assert max(map(float, bids)) < min(map(float, asks)), "book crossed"
    assert 0.17 < trade_events / 6_000 < 0.23


def test_klines_aggregate_the_markets_own_trades() -> None:
    btc = "BTC-USDT"  # the market's own (neutral) id
    market = Market(resolve_specs([btc]), seed=5, clock=FakeClock())
    market.backfill(1_700_000_000_000, 1_700_000_000_000 + 30 * 60_000, 6000)
    trades = market.trades(btc)
    for step in (1, 5, 15):
        klines = market.klines(btc, step)
        assert market.current_kline(btc, step) == klines[-1]
        assert sum(k.trades for k in klines) == len(trades)
        for k in klines:
            inside = [t for t in trades if k.open_time <= t.ts_ms // 1000 < k.open_time + step * 60]
            assert k.open_time % (step * 60) == 0
            assert k.open == inside[0].price and k.close == inside[-1].price
            assert float(k.high) == max(t.price_f for t in inside)
            assert float(k.low) == min(t.price_f for t in inside)
            assert parse_units(k.volume, 5) == sum(t.size_lots for t in inside)
            assert parse_units(k.quote_volume, 7) == sum(t.size_lots * t.price_ticks for t in inside)


@given(st.integers(min_value=-(10**15), max_value=10**15), st.integers(min_value=0, max_value=10))
def test_decimal_formatting_round_trips(units: int, decimals: int) -> None:
    text = format_units(units, decimals)
    assert "e" not in text
    assert parse_units(text, decimals) == units
    if units:
        assert len(text.partition(".")[2]) == decimals


def test_synthetic_symbols_for_benchmarks() -> None:
    specs = resolve_specs(100)
    assert len({s.name for s in specs}) == 100
    market = Market(specs, seed=1, clock=FakeClock())
    list(market.steps(2000))
    for spec in specs[:10]:
        view = market.book(spec.name)
        assert max(map(float, view.bids)) < min(map(float, view.asks))


# ---- WebSocket: subscribe, book and trades ---------------------------------------------------------


async def test_subscribe_acks_snapshot_updates_and_truth(make_sim, session) -> None:
    sim = await make_sim(rate=400.0)
    async with connect(session, sim) as client:
        await client.send("subscribe", f"{INCREASE}:{BTC}", f"spot/trade:{BTC}")
        assert await client.wait_text(INCREASE) == {"event": "subscribe", "topic": f"{INCREASE}:{BTC}"}
        assert await client.wait_text("spot/trade") == {"event": "subscribe", "topic": f"spot/trade:{BTC}"}
        # The snapshot follows its own ack, before the next topic's ack.
        snap = client.pushes[0]
        assert is_depth("push", snap, type_="snapshot")
        item = book_of(snap)
        assert set(item) == {"asks", "bids", "ms_t", "symbol", "type", "version"}
        assert isinstance(item["version"], int) and isinstance(item["ms_t"], int)
        assert all(isinstance(p, str) and isinstance(s, str) for p, s in item["bids"] + item["asks"])
        def changes() -> int:
            return sum(1 for p in client.pushes if is_depth("push", p) and (book_of(p)["asks"] or book_of(p)["bids"]))

        deadline = time.monotonic() + 10  # enough changes to check, however slow the host (~1 s usually)
        while changes() <= 21 and time.monotonic() < deadline:
            await client.pump(0.2)
        await settle(sim, client)
        updates = [book_of(p) for p in client.pushes if p["table"] == INCREASE]
        versions = [u["version"] for u in updates if u["asks"] or u["bids"]]
        assert versions == list(range(versions[0], versions[0] + len(versions))), "version +1 per change"
        assert len(versions) > 20
        assert client.books[BTC].gaps == 0
        assert_book_matches(sim, client, BTC)
        # Every trade the sim logged as sent arrived, field for field, in order.
        conn = sim.open_connections[0]
        sent = sim.sent_trades(BTC, conn)
        got = client.trades[BTC]
        assert len(sent) == len(got) > 0
        for t, g in zip(sent, got, strict=True):
            assert g == {
                "symbol": BTC,
                "side": t.side,
                "price": t.price,
                "size": t.size,
                "s_t": t.ts_ms // 1000,
                "ms_t": t.ts_ms,
            }
        assert sim.sent_trades(BTC) == sent


async def test_frames_are_binary_raw_deflate_and_control_is_text(make_sim, session) -> None:
    sim = await make_sim(rate=300.0)
    async with session.ws_connect(sim.ws_url) as ws:
        await ws.send_str(
            '{"op":"subscribe","args":["spot/trade:ETH_USDT","spot/depth/increase100:ETH_USDT"]}'
        )
        kinds = []
        for _ in range(12):
            msg = await ws.receive(timeout=3)
            kinds.append(msg.type)
            if msg.type is aiohttp.WSMsgType.BINARY:
                with pytest.raises(zlib.error):
                    zlib.decompress(msg.data)  # not zlib-wrapped ...
                push = orjson.loads(zlib.decompress(msg.data, -zlib.MAX_WBITS))  # ... raw deflate
                assert push["table"] in ("spot/trade", INCREASE)
                assert all(item["symbol"] == ETH for item in push["data"])
            else:
                assert msg.type is aiohttp.WSMsgType.TEXT and orjson.loads(msg.data)["event"] == "subscribe"
        assert kinds[:2] == [aiohttp.WSMsgType.TEXT] * 2


async def test_heartbeat_repeats_the_version_while_quiet(make_sim, session) -> None:
    sim = await make_sim(rate=200.0, heartbeat_interval=0.2)
    async with connect(session, sim) as client:
        await client.send("subscribe", f"{INCREASE}:{ETH}")
        await client.pump(0.3)
        sim.pause()
        version = sim.version(ETH)
        _, beat = await client.wait_for(lambda k, p: is_depth(k, p, ETH) and not book_of(p)["asks"], 2)
        item = book_of(beat)
        assert item["type"] == "update" and item["bids"] == [] and item["version"] == version
        _, beat2 = await client.wait_for(lambda k, p: is_depth(k, p, ETH), 2)
        assert book_of(beat2)["version"] == version
        assert_book_matches(sim, client, ETH)


async def test_request_returns_a_fresh_snapshot(make_sim, session) -> None:
    sim = await make_sim(rate=200.0)
    async with connect(session, sim) as client:
        await client.send("subscribe", f"{INCREASE}:{BTC}")
        await client.pump(0.3)
        sim.pause()
        await client.send("request", f"{INCREASE}:{BTC}")
        _, snap = await client.wait_for(lambda k, p: is_depth(k, p, type_="snapshot"))
        version, bids, asks = sim.truth_book_strings(BTC)
        item = book_of(snap)
        assert item["version"] == version
        assert item["bids"] == [list(kv) for kv in bids.items()]
        assert item["asks"] == [list(kv) for kv in asks.items()]
        assert not any("subscribe" in t for t in client.texts[1:]), "no ack for request"


async def test_unsubscribe_acks_and_stops_pushes(make_sim, session) -> None:
    sim = await make_sim(rate=300.0)
    async with connect(session, sim) as client:
        await client.send("subscribe", f"spot/trade:{BTC}", f"spot/trade:{ETH}")
        await client.pump(0.3)
        await client.send("unsubscribe", f"spot/trade:{BTC}")
        assert await client.wait_text("unsubscribe") == {"event": "unsubscribe", "topic": f"spot/trade:{BTC}"}
        client.pushes.clear()
        await client.pump(0.5)
        assert client.pushes and all(i["symbol"] == ETH for p in client.pushes for i in p["data"])


async def test_full_book_ticker_and_kline_channels(make_sim, session) -> None:
    sim = await make_sim(rate=300.0, full_book_interval=0.1)
    async with connect(session, sim) as client:
        topics = [f"spot/depth5:{BTC}", f"spot/depth50:{BTC}", f"spot/ticker:{BTC}", f"spot/kline1m:{BTC}"]
        await client.send("subscribe", *topics)
        await client.wait_for(lambda k, p: len({p["table"] for p in client.pushes}) == 4, 5)
        tables = {p["table"]: p["data"][0] for p in client.pushes}
        assert set(tables) == {"spot/depth5", "spot/depth50", "spot/ticker", "spot/kline1m"}
        d5 = tables["spot/depth5"]
        assert len(d5["bids"]) == len(d5["asks"]) == 5 and d5["symbol"] == BTC
        assert float(d5["bids"][0][0]) < float(d5["asks"][0][0])
        ticker = tables["spot/ticker"]
        assert {"last_price", "bid_px", "ask_px", "base_volume_24h", "ms_t", "s_t"} <= set(ticker)
        candle = tables["spot/kline1m"]["candle"]
        assert (
            isinstance(candle[0], int) and candle[0] % 60 == 0 and all(isinstance(x, str) for x in candle[1:])
        )


def touch_of(item: dict[str, Any]) -> tuple[str, str, str, str]:
    return item["bid_px"], item["bid_sz"], item["ask_px"], item["ask_sz"]


def truth_touch(sim: BitmartSpotSim, symbol: str) -> tuple[str, str, str, str]:
    _, bids, asks = sim.truth_book_strings(symbol)
    best_bid, best_ask = next(iter(bids)), next(iter(asks))
    return best_bid, bids[best_bid], best_ask, asks[best_ask]


async def test_book_ticker_pushes_top_of_book_changes(make_sim, session) -> None:
    sim = await make_sim(rate=300.0, full_book_interval=0.05)
    topic = f"spot/bookTicker:{BTC}"
    async with connect(session, sim) as client:
        await client.send("subscribe", topic)
        assert await client.wait_text('"topic"') == {"event": "subscribe", "topic": topic}
        _, first = await client.wait_for(lambda k, p: k == "push")  # the current touch, on subscribe
        assert first["table"] == "spot/bookTicker" and len(first["data"]) == 1
        item = first["data"][0]
        assert list(item) == ["symbol", "bid_px", "bid_sz", "ask_px", "ask_sz", "ms_t"]
        assert item["symbol"] == BTC and isinstance(item["ms_t"], int)
        assert all(isinstance(item[k], str) for k in ("bid_px", "bid_sz", "ask_px", "ask_sz"))
        assert float(item["bid_px"]) < float(item["ask_px"])
        await client.wait_for(lambda k, p: len(client.pushes) >= 10, 5)
        await settle(sim, client)
        items = [i for p in client.pushes for i in p["data"]]
        assert {p["table"] for p in client.pushes} == {"spot/bookTicker"}
        touches = [touch_of(i) for i in items]
        assert all(a != b for a, b in itertools.pairwise(touches)), "pushed without a top-of-book change"
        assert [i["ms_t"] for i in items] == sorted(i["ms_t"] for i in items)
        assert touches[-1] == truth_touch(sim, BTC)
        # One change at a time while paused: a push iff the touch moved (and then, the new touch).
        last, moved, kept = touches[-1], 0, 0
        for _ in range(60):
            if moved >= 3 and kept >= 3:
                break
            client.pushes.clear()
            sim.step(BTC)
            await client.pump(0.15)
            now = truth_touch(sim, BTC)
            if now == last:
                kept += 1
                assert client.pushes == [], "pushed although the top of book did not change"
            else:
                moved += 1
                assert [touch_of(i) for p in client.pushes for i in p["data"]] == [now]
            last = now
        assert moved >= 3 and kept >= 3, (moved, kept)
        await client.send("unsubscribe", topic)
        assert await client.wait_text("unsubscribe") == {"event": "unsubscribe", "topic": topic}


async def test_pre_trade_symbol_is_listed_and_quiet(make_sim, session) -> None:
    sim = await make_sim(rate=100.0)
    assert "NEWT_USDT" in sim.symbols and "NEWT_USDT" not in sim.trading_symbols
    async with connect(session, sim) as client:
        await client.send("subscribe", f"{INCREASE}:NEWT_USDT")
        _, snap = await client.wait_for(lambda k, p: is_depth(k, p, "NEWT_USDT"))
        assert book_of(snap)["bids"] == book_of(snap)["asks"] == []


# ---- WebSocket: errors and limits --------------------------------------------------------------------


async def test_subscribe_errors(make_sim, session) -> None:
    sim = await make_sim(rate=50.0)
    async with connect(session, sim) as client:

        async def error_for(request: str) -> dict[str, Any]:
            await client.ws.send_str(request)
            return await client.wait_text("errorCode")

        bad_symbol = await error_for('{"op":"subscribe","args":["spot/trade:NOPE_USDT"]}')
        assert bad_symbol == {
            "event": "subscribe",
            "errorCode": "92001",
            "errorMessage": "Invalid symbol param",
        }
        bad_channel = await error_for('{"op":"subscribe","args":["spot/nothing:BTC_USDT"]}')
        assert bad_channel == {
            "event": "subscribe",
            "errorCode": "90004",
            "errorMessage": "Invalid channel param",
        }
        assert (await error_for('{"op":"subscribe","args":["spot/trade"]}'))["errorCode"] == "90004"
        assert (await error_for("{not json"))["errorCode"] == "90001"
        assert (await error_for('{"op":"dance","args":["spot/trade:BTC_USDT"]}'))["errorCode"] == "90002"
        assert (await error_for('{"op":"subscribe","args":"spot/trade:BTC_USDT"}'))["errorCode"] == "90003"
        many = orjson.dumps({"op": "subscribe", "args": [f"spot/kline1m:SYN{i:03d}" for i in range(21)]})
        assert (await error_for(many.decode()))["errorCode"] == "90005"
        await client.send("subscribe", f"spot/trade:{BTC}")
        await client.wait_text('"topic"')
        duplicate = await error_for('{"op":"subscribe","args":["spot/trade:BTC_USDT"]}')
        assert duplicate["errorCode"] == "90008"
        sim.fail_next_subscribe()
        assert (await error_for('{"op":"subscribe","args":["spot/trade:ETH_USDT"]}'))["errorCode"] == "90004"
        await client.send("subscribe", f"spot/trade:{ETH}")
        assert (await client.wait_text('"topic"'))["topic"] == f"spot/trade:{ETH}"


async def test_topic_limit_per_connection(make_sim, session) -> None:
    sim = await make_sim(symbols=40, rate=10.0, include_pre_trade=False)
    channels = ["spot/trade", INCREASE, "spot/ticker"]
    topics = [f"{c}:{s}" for s in sim.symbols for c in channels][:116]
    async with connect(session, sim) as client:
        for i in range(0, len(topics), 20):
            await client.send("subscribe", *topics[i : i + 20])
        errors: list[dict[str, Any]] = []
        acks = 0
        while acks + len(errors) < 116:
            kind, payload = await client.next()
            if kind == "text":
                body = orjson.loads(payload)
                acks += "topic" in body
                if "errorCode" in body:
                    errors.append(body)
        assert acks == 115 and [e["errorCode"] for e in errors] == ["90006"]


async def test_message_rate_limit_closes_the_socket(make_sim, session) -> None:
    sim = await make_sim(rate=10.0)
    async with connect(session, sim) as client:
        for _ in range(101):
            await client.ws.send_str("ping")
        body = await client.wait_text("90007")
        assert body["errorCode"] == "90007"
        kind, _ = await client.wait_for(lambda k, p: k == "closed")
        assert kind == "closed"


# ---- WebSocket: keepalive ---------------------------------------------------------------------------


async def test_text_and_protocol_pings(make_sim, session) -> None:
    sim = await make_sim(rate=10.0)
    async with connect(session, sim) as client:
        await client.ws.send_str("ping")
        assert await client.wait_for(lambda k, p: k == "text" and p == "pong") == ("text", "pong")
        await client.ws.ping(b"hello")
        assert await client.wait_for(lambda k, p: k == "pong") == ("pong", b"hello")


async def test_idle_connections_are_closed_and_pings_keep_them_alive(make_sim, session) -> None:
    sim = await make_sim(rate=50.0, idle_timeout=0.5)
    async with connect(session, sim) as quiet, connect(session, sim) as chatty:
        await quiet.send("subscribe", f"spot/trade:{BTC}")
        await chatty.send("subscribe", f"spot/trade:{BTC}")
        start = time.monotonic()

        async def keep_alive() -> None:  # protocol pings alone keep this one open
            for _ in range(10):
                await chatty.ws.ping()
                await chatty.pump(0.15)

        pinger = asyncio.create_task(keep_alive())
        # Data flowing to the client is not client traffic: the quiet one goes.
        await quiet.wait_for(lambda k, p: k == "closed", 3)
        assert 0.4 < time.monotonic() - start < 2.0
        await pinger
        assert not chatty.ws.closed and time.monotonic() - start > 1.4


# ---- fault injection --------------------------------------------------------------------------------


async def test_skip_duplicate_and_stale_versions_then_resync(make_sim, session) -> None:
    sim = await make_sim(rate=100.0)
    async with connect(session, sim) as client:
        await client.send("subscribe", f"{INCREASE}:{BTC}")
        await client.pump(0.3)
        await settle(sim, client)
        client.resync = False
        v0 = sim.version(BTC)
        sim.skip_version(BTC)
        sim.step(BTC, 2)
        await client.wait_for(lambda k, p: is_depth(k, p) and book_of(p)["version"] == v0 + 2)
        seen = [book_of(p)["version"] for p in client.pushes if is_depth("push", p)]
        assert seen[-1] == v0 + 2 and v0 + 1 not in seen
        assert client.books[BTC].gaps == 1
        # The documented recovery: request, get a snapshot, continue.
        await client.send("request", f"{INCREASE}:{BTC}")
        await client.wait_for(lambda k, p: is_depth(k, p, type_="snapshot"))
        sim.duplicate_version(BTC)
        sim.step(BTC)
        sim.send_stale_version(BTC)
        sim.step(BTC, 3)
        await client.wait_for(lambda k, p: is_depth(k, p) and book_of(p)["version"] == v0 + 6)
        tail = [book_of(p)["version"] for p in client.pushes[-6:]]
        v = v0 + 2
        assert tail == [v, v + 1, v + 1, v - 1, v + 2, v + 3, v + 4][-6:]
        assert client.books[BTC].dropped == 2
        assert_book_matches(sim, client, BTC)


async def test_resyncing_client_survives_random_gaps(make_sim, session) -> None:
    sim = await make_sim(rate=800.0)
    async with connect(session, sim) as client:
        await client.send("subscribe", f"{INCREASE}:{BTC}", f"{INCREASE}:{ETH}")
        for _ in range(5):
            await client.pump(0.1)
            sim.skip_version(BTC)
            sim.send_stale_version(ETH)
        await client.pump(0.2)
        await settle(sim, client)
        assert client.books[BTC].gaps >= 4
        assert_book_matches(sim, client, BTC)
        assert_book_matches(sim, client, ETH)


async def test_drop_connections_resets_without_close_frame(make_sim, session) -> None:
    sim = await make_sim(rate=100.0)
    async with connect(session, sim) as client:
        await client.send("subscribe", f"spot/trade:{BTC}")
        await client.wait_text("topic")
        assert sim.drop_connections() == 1
        _, msg = await client.wait_for(lambda k, p: k == "closed")
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert client.ws.close_code != 1000
    async with connect(session, sim) as again:  # the server itself is fine
        await again.ws.send_str("ping")
        await again.wait_for(lambda k, p: p == "pong")


async def test_dead_server_goes_silent_until_revived(make_sim, session) -> None:
    sim = await make_sim(rate=300.0)
    async with connect(session, sim) as client:
        await client.send("subscribe", f"spot/trade:{BTC}")
        await client.pump(0.2)
        sim.go_dead()
        await client.pump(0.1)
        client.pushes.clear()
        await client.ws.send_str("ping")
        await client.ws.ping()
        await client.pump(0.5)
        assert client.pushes == [] and "pong" not in client.texts
        sim.revive()
        await client.ws.send_str("ping")
        await client.wait_for(lambda k, p: p == "pong")
        await client.wait_for(lambda k, p: k == "push")


async def test_bad_frames(make_sim, session) -> None:
    sim = await make_sim(rate=0.5)
    async with session.ws_connect(sim.ws_url, max_msg_size=0) as ws:
        await ws.send_str('{"op":"subscribe","args":["spot/trade:BTC_USDT"]}')
        await ws.receive(timeout=2)
        sim.send_malformed_json()
        sim.send_invalid_deflate()
        bomb_size = sim.send_deflate_bomb()
        oversized = sim.send_oversized_frame(2 * 1024 * 1024)
        frames = []
        while len(frames) < 4:
            msg = await ws.receive(timeout=3)
            if msg.type is aiohttp.WSMsgType.BINARY:
                frames.append(msg.data)
        malformed, invalid, bomb, big = frames
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(inflate(malformed))
        with pytest.raises(zlib.error):
            inflate(invalid)
        assert len(bomb) == bomb_size < 64 * 1024
        assert len(inflate(bomb, 10 * 1024 * 1024 + 1)) > 10 * 1024 * 1024
        assert len(big) == oversized > 2 * 1024 * 1024
    # A client with aiohttp's default 4 MB limit is disconnected by an oversized frame (1009).
    async with session.ws_connect(sim.ws_url, max_msg_size=1024 * 1024) as ws:
        await ws.send_str("ping")
        await ws.receive(timeout=2)
        sim.send_oversized_frame(2 * 1024 * 1024)
        msg = await ws.receive(timeout=3)
        assert msg.type is aiohttp.WSMsgType.ERROR


# ---- full speed ------------------------------------------------------------------------------------


async def test_full_speed_tape_keeps_the_version_chain(make_sim, session) -> None:
    sim = await make_sim(
        symbols=["BTC_USDT", "ETH_USDT", "SOL_USDT"], rate=0, tape_events=4000, heartbeat_interval=0.2
    )
    with pytest.raises(RuntimeError):
        sim.step()
    async with connect(session, sim) as client:
        topics = [f"{c}:{s}" for s in sim.trading_symbols for c in (INCREASE, "spot/trade")]
        await client.send("subscribe", *topics)
        for _ in topics:
            await client.wait_text('"topic"')
        await sim.drain(10)

        def complete() -> bool:
            books = client.books
            return all(s in books and books[s].version == sim.version(s) for s in sim.trading_symbols)

        await client.wait_for(lambda k, p: complete(), 10)
        frames = sum(1 for p in client.pushes if p["table"] == INCREASE)
        assert frames >= 4000 + 3
        for symbol in sim.trading_symbols:
            assert client.books[symbol].gaps == 0
            assert_book_matches(sim, client, symbol)
            got = [(t["price"], t["size"], t["side"], t["ms_t"]) for t in client.trades[symbol]]
            assert got == [(t.price, t.size, t.side, t.ts_ms) for t in sim.truth_trades(symbol)]
        # Once a connection has the whole tape, heartbeats repeat the tape's last version.
        _, beat = await client.wait_for(lambda k, p: is_depth(k, p) and not book_of(p)["bids"], 2)
        assert book_of(beat)["version"] == sim.version(BTC) and book_of(beat)["asks"] == []
        # A request mid-way (here: at the end) replays the tape from its snapshot: still consistent.
        await client.send("request", f"{INCREASE}:{BTC}")
        await client.wait_for(lambda k, p: is_depth(k, p, type_="snapshot"))
        await sim.drain(10)
        await client.wait_for(lambda k, p: complete(), 10)
        assert_book_matches(sim, client, BTC)


# ---- another client library --------------------------------------------------------------------------


async def test_websockets_library_client(make_sim) -> None:
    websockets = pytest.importorskip("websockets")
    sim = await make_sim(rate=300.0)
    async with websockets.connect(sim.ws_url, compression=None) as ws:
        await ws.send('{"op":"subscribe","args":["spot/depth/increase100:SOL_USDT"]}')
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 2))["topic"] == f"{INCREASE}:SOL_USDT"
        snapshot = orjson.loads(inflate(await asyncio.wait_for(ws.recv(), 2)))
        assert book_of(snapshot)["type"] == "snapshot"
        update = orjson.loads(inflate(await asyncio.wait_for(ws.recv(), 2)))
        assert book_of(update)["version"] == book_of(snapshot)["version"] + 1
        await ws.send("ping")
        while (msg := await asyncio.wait_for(ws.recv(), 2)) != "pong":
            assert isinstance(msg, bytes)


# ---- REST -----------------------------------------------------------------------------------------


async def get(session: aiohttp.ClientSession, sim: BitmartSpotSim, path: str, **params: Any) -> Any:
    async with session.get(sim.rest_url + path, params=params) as response:
        assert response.status == 200, await response.text()
        body = orjson.loads(await response.read())
        assert set(body) == {"code", "trace", "message", "data"}
        assert {"X-BM-RateLimit-Remaining", "X-BM-RateLimit-Limit", "X-BM-RateLimit-Reset"} <= set(
            response.headers
        )
        return body


async def test_rest_reference_endpoints(make_sim, session) -> None:
    sim = await make_sim(rate=100.0)
    before = int(time.time() * 1000)
    body = await get(session, sim, "/system/time")
    assert body["code"] == 1000 and abs(body["data"]["server_time"] - before) < 5000
    service = (await get(session, sim, "/system/service"))["data"]["service"]
    assert {s["service_type"] for s in service} == {"spot", "contract", "account"}
    assert (await get(session, sim, "/spot/v1/symbols"))["data"]["symbols"] == sim.symbols
    currencies = (await get(session, sim, "/spot/v1/currencies"))["data"]["currencies"]
    assert {"BTC", "USDT", "ETH"} <= {c["id"] for c in currencies}
    listed = {c for name in sim.symbols for c in name.split("_")}
    account = (await get(session, sim, "/account/v1/currencies"))["data"]["currencies"]
    assert {c["currency"] for c in account} == listed
    assert all(c["withdraw_enabled"] is True and isinstance(c["withdraw_fee"], str) for c in account)
    only = (await get(session, sim, "/account/v1/currencies", currencies="BTC,ETH"))["data"]["currencies"]
    assert sorted(c["currency"] for c in only) == ["BTC", "ETH"]
    contracts = await get(session, sim, "/contract/public/details")
    assert contracts["code"] == 1000 and contracts["data"] == {"symbols": []}  # spot only: no perpetuals
    details = (await get(session, sim, "/spot/v1/symbols/details"))["data"]["symbols"]
    fields = {
        "symbol",
        "symbol_id",
        "base_currency",
        "quote_currency",
        "quote_increment",
        "base_min_size",
        "price_min_precision",
        "price_max_precision",
        "expiration",
        "min_buy_amount",
        "min_sell_amount",
        "trade_status",
    }
    assert all(set(d) == fields for d in details)
    by_name = {d["symbol"]: d for d in details}
    assert by_name["NEWT_USDT"]["trade_status"] == "pre-trade"
    btc = by_name[BTC]
    assert (btc["base_currency"], btc["quote_currency"], btc["price_max_precision"]) == ("BTC", "USDT", 2)
    assert btc["base_min_size"] == "0.00001000" and btc["trade_status"] == "trading"


async def test_rest_market_data_matches_truth(make_sim, session) -> None:
    sim = await make_sim(rate=200.0)
    await asyncio.sleep(0.5)
    sim.pause()
    books = (await get(session, sim, "/spot/quotation/v3/books", symbol=BTC, limit=50))["data"]
    _, bids, asks = sim.truth_book_strings(BTC)
    assert isinstance(books["ts"], str) and books["symbol"] == BTC
    assert books["bids"] == [list(kv) for kv in bids.items()][:50]
    assert books["asks"] == [list(kv) for kv in asks.items()][:50]
    default = (await get(session, sim, "/spot/quotation/v3/books", symbol=BTC))["data"]
    assert len(default["bids"]) == min(35, len(bids))
    trades = (await get(session, sim, "/spot/quotation/v3/trades", symbol=BTC, limit=5))["data"]
    truth = sim.truth_trades(BTC)[-5:][::-1]
    assert trades == [[BTC, str(t.ts_ms), t.price, t.size, t.side] for t in truth]
    ticker = (await get(session, sim, "/spot/quotation/v3/ticker", symbol=BTC))["data"]
    assert ticker["last"] == sim.truth_trades(BTC)[-1].price
    assert ticker["bid_px"] == next(iter(bids)) and ticker["ask_px"] == next(iter(asks))
    assert isinstance(ticker["ts"], str)
    tickers = (await get(session, sim, "/spot/quotation/v3/tickers"))["data"]
    assert {row[0] for row in tickers} <= set(sim.trading_symbols) and len(tickers[0]) == 13
    bad = await get(session, sim, "/spot/quotation/v3/books", symbol="NOPE_USDT")
    assert bad["code"] == 70002


async def test_rest_klines(make_sim, session) -> None:
    sim = await make_sim(rate=50.0, history_minutes=300, rest_rate_limits=False)
    sim.pause()
    latest = (await get(session, sim, "/spot/quotation/v3/klines", symbol=BTC, step=5, limit=10))["data"]
    # after the request, filled up to now as the endpoint does: a 5-minute boundary passed during the
    # request adds a flat candle to both (the market is paused), never to the answer alone
    truth = sim.market.klines(BTC, 5, fill_gaps=True, until_s=sim.market.clock() // 1000)
    assert len(latest) == 10
    times = [int(row[0]) for row in latest]
    assert times == sorted(times, reverse=True), "latest klines come newest first"
    by_time = {k.open_time: k for k in truth}
    for row in latest:
        k = by_time[int(row[0])]
        assert row == [str(k.open_time), k.open, k.high, k.low, k.close, k.volume, k.quote_volume]
    after = truth[3].open_time
    page = (await get(session, sim, "/spot/quotation/v3/klines", symbol=BTC, step=5, after=after, limit=4))[
        "data"
    ]
    assert [int(r[0]) for r in page] == [k.open_time for k in truth[4:8]]
    both = await get(
        session, sim, "/spot/quotation/v3/lite-klines", symbol=BTC, step=5, after=after, before=after + 901
    )
    assert [int(r[0]) for r in both["data"]] == [after + 300, after + 600, after + 900]
    errors = {
        "70002": {"symbol": "NOPE_USDT"},
        "71004": {"symbol": BTC, "limit": 201},
        "71005": {"symbol": BTC, "step": 7},
        "71003": {"symbol": BTC, "after": 100, "before": 50},
        "71001": {"symbol": BTC, "after": "x"},
    }
    for code, params in errors.items():
        assert (await get(session, sim, "/spot/quotation/v3/klines", **params))["code"] == int(code)


async def test_rest_rate_limit_and_injected_failures(make_sim, session) -> None:
    sim = await make_sim(rate=10.0)
    url = sim.rest_url + "/spot/quotation/v3/klines"
    statuses = []
    for _ in range(11):
        async with session.get(url, params={"symbol": BTC}) as response:
            statuses.append(response.status)
            last_headers, last_body = response.headers, orjson.loads(await response.read())
    assert statuses == [200] * 10 + [429]
    assert last_body["code"] == 30013
    assert last_headers["X-BM-RateLimit-Remaining"] == "11" and last_headers["X-BM-RateLimit-Limit"] == "10"
    assert last_headers["X-BM-RateLimit-Reset"] == "2"

    time_url = sim.rest_url + "/system/time"
    sim.fail_rest(429, count=1, retry_after=1.5)
    sim.fail_rest(429, count=1)
    sim.fail_rest(500, count=2)
    seen = []
    for _ in range(5):
        async with session.get(time_url) as response:
            seen.append((response.status, response.headers.get("Retry-After")))
    assert seen == [(429, "1.5"), (429, None), (500, None), (500, None), (200, None)]


def test_serve_forever_is_cancellable() -> None:
    from recorder.sim import serve_forever

    async def run() -> None:
        loop = asyncio.get_running_loop()
        started: asyncio.Future[BitmartSpotSim] = loop.create_future()
        task = asyncio.create_task(serve_forever(port=0, rate=20, history_minutes=2, started=started))
        sim = await asyncio.wait_for(started, 5)
        async with aiohttp.ClientSession() as s, s.get(sim.rest_url + "/spot/v1/symbols") as r:
            assert r.status == 200
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert sim.open_connections == []

    asyncio.run(run())


def test_symbol_spec_steps() -> None:
    spec = SymbolSpec("X_USDT", "X", "USDT", 3, 0, "1.000", "5")
    assert (spec.tick, spec.lot) == ("0.001", "1")
