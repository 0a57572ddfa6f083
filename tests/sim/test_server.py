"""The venue-neutral simulator server, driven through a tiny made-up venue defined here.

The venue ("toy") has nothing of BitMart: lowercase `basequote` wire ids, JSON TEXT frames only, a
`{"sub": [...]}` request acked with every held topic, an ack at connect time, its own push counter,
server-sent protocol pings, a REST prefix and its own 429 body. If the server needed a BitMart fact,
these tests could not pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from recorder.sim.market import MarketEvent
from recorder.sim.server import Frame, Handler, Periodic, SimConnection, SimServer

pytestmark = pytest.mark.timeout(30)


class ToySim(SimServer):
    ws_path = "/ws"
    ws_extra_paths = ("/ws/",)
    rest_prefix = "/v9"
    client_budget = (5, 10.0)

    def __init__(self, *args: Any, ping_every: float = 0.0, **options: Any) -> None:
        super().__init__(*args, **options)
        self.ping_every = ping_every
        self.counter = dict.fromkeys(self.market.symbols, 0)  # one per book push, like a perpetual
        self.tapes: dict[str, list[str]] = {}

    def wire(self, symbol: str) -> str:
        return symbol.replace("-", "").lower()

    def neutral(self, wire: str) -> str:
        base = wire.removesuffix("usdt")
        return f"{base.upper()}-USDT" if base != wire else wire.upper()

    def truth_seq(self, symbol: str) -> int:
        return self.counter[symbol]

    def on_open(self, conn: SimConnection) -> None:
        conn.push_text(orjson.dumps({"ok": []}).decode())

    def on_text(self, conn: SimConnection, text: str) -> None:
        request = orjson.loads(text)
        for topic in request.get("sub", ()):
            self.add_subscription(conn, topic)
            kind, _, wire = topic.partition(".")
            if kind == "book" and wire in self.tapes:
                self.start_tape(conn, topic, self.tapes[wire], False)
        for topic in request.get("unsub", ()):
            self.drop_subscription(conn, topic)
        conn.push_text(orjson.dumps({"ok": sorted(conn.topics)}).decode())

    def on_market_event(self, event: MarketEvent) -> None:
        wire = self.wire(event.symbol)
        if event.trades:
            frame = orjson.dumps({"t": f"trades.{wire}", "n": len(event.trades)}).decode()
            for conn in self.subscribers(f"trades.{wire}"):
                conn.push_frame(frame, event.trades)
        if self.take_skip(event.symbol):
            return
        self.counter[event.symbol] += 1
        frame = orjson.dumps({"t": f"book.{wire}", "seq": self.counter[event.symbol]}).decode()
        subs = self.subscribers(f"book.{wire}")
        if subs:
            copies = self.copies(event.symbol)
            for conn in subs:
                for _ in range(copies):
                    conn.push_frame(frame)

    def build_tapes(self, events: Iterable[MarketEvent]) -> None:
        for event in events:
            wire = self.wire(event.symbol)
            self.counter[event.symbol] += 1
            frame = orjson.dumps({"t": f"book.{wire}", "seq": self.counter[event.symbol]}).decode()
            self.tapes.setdefault(wire, []).append(frame)

    def periodic(self) -> list[tuple[float, Periodic]]:
        if not self.ping_every:
            return []

        def ping(now: float) -> None:
            for conn in self.open_connections:
                conn.ping(b"toy")

        return [(self.ping_every, ping)]

    def rest_routes(self) -> dict[str, Handler]:
        async def markets(request: web.Request) -> web.Response:
            return web.json_response(self.symbols)

        async def depth(request: web.Request) -> web.Response:
            market = request.match_info["market"]
            if market not in self.listed:
                return web.json_response({"errors": ["no such market"]}, status=422)
            bids, asks = self.market.book(market).top(3)
            return web.json_response({"bids": bids, "asks": asks})

        return {"/markets": markets, "/markets/{market}/depth": depth}

    def rest_limit(self, route: str) -> tuple[int, float] | None:
        return (3, 10.0) if route == "/markets/{market}/depth" else None

    def rate_headers(
        self, route: str, used: int, limit: tuple[int, float] | None, window: float
    ) -> dict[str, str]:
        return {"X-Toy-Used": f"{route} {used}"}

    def too_many_requests(self, headers: dict[str, str]) -> web.Response:
        return web.json_response({"errors": ["slow down"]}, status=429, headers=headers)

    def malformed_frame(self) -> Frame:
        return '{"t": "trades.'


SYMBOLS = ["btcusdt", "ethusdt"]  # wire ids, as a user of the toy venue passes them
BTC = "btcusdt"


@pytest.fixture
async def make_toy() -> AsyncIterator[Any]:
    sims: list[ToySim] = []

    async def make(**options: Any) -> ToySim:
        options.setdefault("seed", 3)
        options.setdefault("symbols", SYMBOLS)
        options.setdefault("include_pre_trade", False)
        sim = ToySim(**options)
        sim.market.clock = lambda c=itertools.count(1_767_225_600_000, 5): next(c)
        sims.append(await sim.start())
        return sim

    yield make
    for sim in sims:
        await sim.stop()


@contextlib.asynccontextmanager
async def connect(sim: ToySim, url: str | None = None) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url or sim.ws_url, autoping=False) as ws,
    ):
        yield ws


async def texts(ws: aiohttp.ClientWebSocketResponse, quiet: float = 0.3) -> list[Any]:
    """Every TEXT frame (decoded) until nothing arrived for `quiet` seconds."""
    out = []
    while True:
        try:
            msg = await ws.receive(timeout=quiet)
        except TimeoutError:
            return out
        if msg.type is not aiohttp.WSMsgType.TEXT:
            out.append(msg.type)
            return out
        out.append(orjson.loads(msg.data))


async def test_ids_acks_subscriptions_and_ground_truth(make_toy) -> None:
    sim = await make_toy(rate=50)
    sim.pause()
    assert sim.ws_url.endswith("/ws") and sim.rest_url.endswith("/v9")
    assert sim.symbols == SYMBOLS == sim.trading_symbols
    assert sim.market.symbols == ["BTC-USDT", "ETH-USDT"] and sim.market.resolve(BTC) == "BTC-USDT"
    async with connect(sim) as ws:
        await ws.send_str(orjson.dumps({"sub": [f"book.{BTC}", f"trades.{BTC}"]}).decode())
        got = await texts(ws)
        assert got == [{"ok": []}, {"ok": [f"book.{BTC}", f"trades.{BTC}"]}]  # connect-time ack first
        events = sim.step(BTC, 40)
        assert {e.symbol for e in events} == {"BTC-USDT"}
        pushes = await texts(ws)
        books = [p["seq"] for p in pushes if p["t"] == f"book.{BTC}"]
        assert books == list(range(1, 41))
        assert sim.truth_book(BTC)[0] == sim.truth_book("BTC-USDT")[0] == 40
        [conn] = sim.open_connections
        sent = sim.sent_trades(BTC, conn)
        assert sent == sim.truth_trades(BTC) and len(sent) == sum(p["n"] for p in pushes if "n" in p) > 0
        assert list(conn.sent_trades) == [BTC]  # keyed by wire id

        sim.skip_version(BTC, 2)
        sim.duplicate_version(BTC, 1)
        sim.step(BTC, 4)
        seqs = [p["seq"] for p in await texts(ws) if p["t"] == f"book.{BTC}"]
        assert seqs == [41, 41, 42]  # two changes never sent, then one sent twice

        await ws.send_str(orjson.dumps({"unsub": [f"book.{BTC}"]}).decode())
        assert await texts(ws) == [{"ok": [f"trades.{BTC}"]}]
        assert [topic for topic, _ in sim.subscriptions()] == [f"trades.{BTC}"]
        assert not sim.subscribers(f"book.{BTC}")
    await asyncio.sleep(0.1)
    assert sim.subscriptions() == [] and sim.open_connections == []


async def test_pacing_pause_resume_and_step(make_toy) -> None:
    sim = await make_toy(rate=200)
    sim.pause()
    await asyncio.sleep(0.05)
    before = sum(sim.market.seq(s) for s in sim.market.symbols)
    await asyncio.sleep(0.3)
    assert sum(sim.market.seq(s) for s in sim.market.symbols) == before, "paused market moved"
    sim.resume()
    started = time.monotonic()
    await asyncio.sleep(0.5)
    sim.pause()
    elapsed = time.monotonic() - started
    generated = sum(sim.market.seq(s) for s in sim.market.symbols) - before
    assert 0 < generated <= 200 * elapsed + 5, "paced at `rate`, never in bursts above it"


async def test_full_speed_replays_text_tapes_and_refuses_steps(make_toy) -> None:
    sim = await make_toy(rate=0, tape_events=300)
    with pytest.raises(RuntimeError):
        sim.step()
    async with connect(sim) as ws:
        await ws.send_str(orjson.dumps({"sub": [f"book.{BTC}"]}).decode())
        await sim.drain()
        got = await texts(ws)
        seqs = [p["seq"] for p in got if isinstance(p, dict) and "seq" in p]
        assert seqs == list(range(1, len(sim.tapes[BTC]) + 1)) and len(seqs) > 100
        [conn] = sim.open_connections
        cursor = conn.tape(f"book.{BTC}")
        assert cursor is not None and cursor.done


async def test_drop_connections_and_malformed_broadcast(make_toy) -> None:
    sim = await make_toy()
    sim.pause()
    async with connect(sim) as a, connect(sim, sim.ws_url + "/") as b:  # the extra path: same endpoint
        await texts(a)
        await texts(b)
        sim.send_malformed_json()
        for ws in (a, b):
            msg = await ws.receive(timeout=2)
            assert msg.type is aiohttp.WSMsgType.TEXT and msg.data == '{"t": "trades.'
        with pytest.raises(NotImplementedError):
            sim.send_invalid_deflate()  # the toy venue sends no compressed frames
        assert sim.drop_connections() == 2
        for ws in (a, b):
            msg = await ws.receive(timeout=2)
            assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)  # no close frame
    assert sim.open_connections == []


async def test_budget_idle_close_and_server_pings(make_toy) -> None:
    sim = await make_toy(idle_timeout=0.6, ping_every=0.1)
    async with connect(sim) as ws:
        for _ in range(6):  # the budget is 5 messages per 10 s
            await ws.send_str("{}")
        got = []
        while True:
            msg = await ws.receive(timeout=2)
            if msg.type is aiohttp.WSMsgType.PING:
                continue
            got.append(msg)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
        assert [m.type for m in got[:-1]] == [aiohttp.WSMsgType.TEXT] * 6  # connect ack + 5 answers
        assert got[-1].type is aiohttp.WSMsgType.CLOSE and got[-1].data == 1008

    async with connect(sim) as ws:
        kinds = []
        while True:  # silent client: pinged, then closed for idleness (a ping it ignores is no traffic)
            msg = await ws.receive(timeout=3)
            kinds.append(msg.type)
            if msg.type is aiohttp.WSMsgType.CLOSE:
                break
        assert aiohttp.WSMsgType.PING in kinds
        assert msg.data == 1000 and msg.extra == "idle timeout"


async def test_rest_prefix_route_windows_and_faults(make_toy) -> None:
    sim = await make_toy()
    sim.pause()
    async with aiohttp.ClientSession() as session:
        seen = []
        for market in ("btcusdt", "ethusdt", "nope", "btcusdt"):
            async with session.get(f"{sim.rest_url}/markets/{market}/depth") as r:
                seen.append((r.status, r.headers["X-Toy-Used"], await r.json()))
        # One window for the route pattern, whatever the market in the path; the 4th is refused.
        assert [s[:2] for s in seen] == [
            (200, "/markets/{market}/depth 1"),
            (200, "/markets/{market}/depth 2"),
            (422, "/markets/{market}/depth 3"),
            (429, "/markets/{market}/depth 4"),
        ]
        assert seen[0][2]["bids"] == sim.market.book("BTC-USDT").top(3)[0]
        assert seen[-1][2] == {"errors": ["slow down"]}
        for _ in range(20):  # a route without a limit is counted, never refused
            async with session.get(f"{sim.rest_url}/markets") as r:
                assert r.status == 200 and await r.json() == sim.symbols
        sim.fail_rest(503)
        sim.fail_rest(429, retry_after=2)
        async with session.get(f"{sim.rest_url}/markets") as r:
            assert r.status == 503 and "503" in await r.text()
        async with session.get(f"{sim.rest_url}/markets") as r:
            assert r.status == 429 and r.headers["Retry-After"] == "2"
            assert await r.json() == {"errors": ["slow down"]}


def test_importing_the_market_loads_no_server() -> None:
    code = (
        "import sys, recorder.sim.market; from recorder.sim import Market; "
        "bad = [m for m in ('recorder.sim.server', 'recorder.sim.frontends') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_client_that_leaves_during_the_handshake_is_no_error(make_toy, caplog) -> None:
    """A client that sends its upgrade request and hangs up before the answer (its own connect
    timeout, say: a recorder under valgrind did) used to make aiohttp log "Error handling request"
    with a traceback from the simulator's handler. Nothing is logged, and the server serves on."""
    import logging
    import socket
    from urllib.parse import urlsplit

    sim = await make_toy(rate=50)
    url = urlsplit(sim.ws_url)
    request = (
        f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    for _ in range(20):  # request and FIN in one go: the server reads both before it answers
        s = socket.create_connection((url.hostname, url.port), timeout=5)
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        s.close()
    await asyncio.sleep(0.5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    async with connect(sim) as ws:  # and it still serves
        assert (await texts(ws))[0] == {"ok": []}
