"""The Peatio/Ranger simulator, checked the way an independent client sees it.

Everything goes over real loopback sockets, read with a plain aiohttp client and a local book
written here from the protocol notes (../shared/protocols/altmarkets.md, cited as §n) — never with
the recorder's adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import pytest

from recorder.sim.faults import FAULTS
from recorder.sim.frontends.peatio import PeatioSim, decimal

pytestmark = pytest.mark.timeout(30)

BTC, ETH = "btcusdt", "ethusdt"
T0_MS = 1_767_225_600_000  # 2026-01-01


# ---- a tiny independent client ---------------------------------------------------------------------


class LocalBook:
    """§2.3's client algorithm: a snapshot replaces the book; an increment applies iff its sequence is
    last + 1; volumes are absolute, `""` or zero deletes; both increment shapes (§2.2)."""

    def __init__(self) -> None:
        self.seq: int | None = None
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}

    def snapshot(self, body: dict[str, Any]) -> None:
        self.bids = {float(p): float(v) for p, v in body["bids"]}
        self.asks = {float(p): float(v) for p, v in body["asks"]}
        self.seq = body["sequence"]

    def increment(self, body: dict[str, Any]) -> bool:
        """False (nothing applied) unless the sequence is last + 1."""
        if self.seq is None or body["sequence"] != self.seq + 1:
            return False
        for key, side in (("bids", self.bids), ("asks", self.asks)):
            levels = body.get(key)
            if not levels:
                continue
            for p, v in [levels] if isinstance(levels[0], str) else levels:
                if v == "" or float(v) == 0:
                    side.pop(float(p), None)
                else:
                    side[float(p)] = float(v)
        self.seq = body["sequence"]
        return True


class Client:
    """One Ranger connection: sends JSON requests, keeps every frame it received, decoded."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[Any] = []  # decoded TEXT frames (JSON, or the text itself)
        self.other: list[aiohttp.WSMessage] = []  # PING, CLOSE, ...

    async def send(self, doc: Any) -> None:
        await self.ws.send_str(doc if isinstance(doc, str) else orjson.dumps(doc).decode())

    async def subscribe(self, *streams: str, event: str = "subscribe") -> None:
        await self.send({"event": event, "streams": list(streams)})

    async def read(self, quiet: float = 0.3) -> list[Any]:
        """Frames until nothing arrived for `quiet` s (or the socket closed); returns the new ones."""
        start = len(self.frames)
        while True:
            try:
                msg = await self.ws.receive(timeout=quiet)
            except TimeoutError:
                break
            if msg.type is aiohttp.WSMsgType.TEXT:
                try:
                    self.frames.append(orjson.loads(msg.data))
                except orjson.JSONDecodeError:
                    self.frames.append(msg.data)
            else:
                self.other.append(msg)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
        return self.frames[start:]


def keys(frames: list[Any]) -> list[str]:
    return [next(iter(f)) if isinstance(f, dict) else f for f in frames]


def feed(book: LocalBook, frames: list[Any], wire: str) -> list[int]:
    """Apply `wire`'s book frames; returns the sequences of increments that did not apply."""
    refused = []
    for f in frames:
        if not isinstance(f, dict):
            continue
        if f"{wire}.ob-snap" in f:
            book.snapshot(f[f"{wire}.ob-snap"])
        elif f"{wire}.ob-inc" in f and not book.increment(f[f"{wire}.ob-inc"]):
            refused.append(f[f"{wire}.ob-inc"]["sequence"])
    return refused


def assert_truth(sim: PeatioSim, book: LocalBook, wire: str) -> None:
    seq, bids, asks = sim.truth_book(wire)
    assert (book.seq, book.bids, book.asks) == (seq, bids, asks)


@pytest.fixture
async def make_sim() -> AsyncIterator[Any]:
    sims: list[PeatioSim] = []

    async def make(**options: Any) -> PeatioSim:
        options.setdefault("seed", 5)
        options.setdefault("symbols", [BTC, ETH])
        options.setdefault("rate", 100)
        sim = PeatioSim(**options)
        sim.market.clock = lambda c=itertools.count(T0_MS, 7): next(c)
        sims.append(await sim.start())
        return sim

    yield make
    for sim in sims:
        await sim.stop()


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as session, session.ws_connect(url, autoping=False) as ws:
        yield Client(ws)


# ---- acks and requests ------------------------------------------------------------------------------


async def test_acks_list_every_held_stream_at_connect_subscribe_and_unsubscribe(make_sim):
    sim = await make_sim()
    sim.pause()
    assert sim.ws_url.endswith("/api/v2/ranger/public") and sim.rest_url.endswith("/api/v2/peatio")
    async with connect(sim.ws_url) as c:
        assert await c.read() == [{"success": {"message": "subscribed", "streams": []}}]  # §1.3
        await c.subscribe(f"{BTC}.trades", f"{ETH}.trades")
        assert await c.read() == [
            {"success": {"message": "subscribed", "streams": [f"{BTC}.trades", f"{ETH}.trades"]}}
        ]
        await c.subscribe(f"{BTC}.ob-inc")
        got = await c.read()
        assert keys(got) == [f"{BTC}.ob-snap", "success"]  # the replay first, then the ack
        assert got[-1]["success"]["streams"] == [f"{BTC}.trades", f"{ETH}.trades", f"{BTC}.ob-inc"]
        await c.subscribe(f"{ETH}.trades", event="unsubscribe")
        assert await c.read() == [
            {"success": {"message": "unsubscribed", "streams": [f"{BTC}.trades", f"{BTC}.ob-inc"]}}
        ]
        await c.subscribe("nope.trades", "global.tickers")  # Ranger routes any name
        (ack,) = await c.read()
        assert ack["success"]["streams"] == [f"{BTC}.trades", f"{BTC}.ob-inc", "nope.trades", "global.tickers"]
    # streams in the URL: repeated, and split on commas (Rango); the older trailing-slash path
    url = f"{sim.ws_url}/?stream={BTC}.ob-inc&stream={ETH}.trades,{BTC}.trades"
    async with connect(url) as c:
        got = await c.read()
        assert keys(got) == [f"{BTC}.ob-snap", "success"]
        assert got[-1]["success"] == {
            "message": "subscribed",
            "streams": [f"{BTC}.ob-inc", f"{ETH}.trades", f"{BTC}.trades"],
        }


async def test_errors_text_ping_and_a_refused_stream(make_sim):
    sim = await make_sim()
    sim.pause()
    async with connect(sim.ws_url) as c:
        await c.read()
        await c.send("ping")
        await c.send("{not json")
        await c.send({"event": "sub", "streams": [f"{BTC}.trades"]})
        await c.send({"event": "subscribe"})
        await c.send({"event": "subscribe", "streams": []})
        await c.send([1, 2])
        got = await c.read()
        assert got[0] == "pong"  # text, not JSON (§1.4)
        assert got[1]["error"].startswith("Could not parse message: ")  # Rango's texts (§1.3)
        assert got[2:] == [
            {"error": "Could not parse Type: Invalid event"},
            {"error": "No streams provided"},
            {"error": "No streams provided"},
            {"error": "Could not parse Type: Invalid event"},
        ]
        sim.fail_next_subscribe()
        await c.subscribe(f"{BTC}.trades", f"{ETH}.trades")
        ack, error = await c.read()
        assert ack["success"]["streams"] == [f"{ETH}.trades"]  # the refused one is not held
        assert f"{BTC}.trades" in error["error"]
    assert [t for _, t in sim.received][:2] == ["ping", "{not json"]


async def test_a_message_of_512_bytes_or_more_closes_the_socket(make_sim):
    sim = await make_sim()
    sim.pause()

    def request(size: int) -> str:
        head = orjson.dumps({"event": "subscribe", "streams": [f"{BTC}.trades", "x"]}).decode()
        return head.replace('"x"', '"' + "x" * (size - len(head) + 1) + '"')

    assert len(request(511)) == 511 and len(request(512)) == 512
    async with connect(sim.ws_url) as c:
        await c.read()
        await c.send(request(511))
        (ack,) = await c.read()
        assert ack["success"]["streams"][0] == f"{BTC}.trades"
        await c.send(request(512))
        await c.send("ping")  # never read: Rango stopped reading
        assert await c.read(quiet=2) == []
        assert c.other[-1].type is aiohttp.WSMsgType.CLOSE and c.other[-1].data == 1009
    assert [len(t) for _, t in sim.received] == [511, 512]  # what broke the limit is recorded too
    async with connect(sim.ws_url) as c:  # binary messages count the same
        await c.read()
        await c.ws.send_bytes(request(600).encode())
        await c.read(quiet=2)
        assert c.other[-1].data == 1009


async def test_server_sends_protocol_pings_and_answers_them(make_sim):
    sim = await make_sim(ping_interval=0.1)
    sim.pause()
    async with connect(sim.ws_url) as c:
        kinds = [(await c.ws.receive(timeout=2)).type for _ in range(3)]  # the ack, then pings
        assert kinds == [aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PING]  # §1.4
        await c.ws.ping(b"p")
        msg = await c.ws.receive(timeout=2)
        while msg.type is aiohttp.WSMsgType.PING:
            msg = await c.ws.receive(timeout=2)
        assert msg.type is aiohttp.WSMsgType.PONG and msg.data == b"p"


# ---- the book ---------------------------------------------------------------------------------------


async def test_replay_is_the_cached_snapshot_plus_every_increment_since_then_the_ack(make_sim):
    sim = await make_sim(snapshot_max_period=3600)
    sim.pause()
    async with connect(sim.ws_url) as a, connect(sim.ws_url) as b:
        await a.read()
        await b.read()
        await a.subscribe(f"{BTC}.ob-inc")
        first = await a.read()
        start = first[0][f"{BTC}.ob-snap"]["sequence"]
        assert start > 1000  # as if the engine had been running
        book_a = LocalBook()
        feed(book_a, first, BTC)
        sim.step(BTC, 30)
        got = await a.read()
        seqs = [f[f"{BTC}.ob-inc"]["sequence"] for f in got]
        assert seqs == list(range(start + 1, start + 1 + len(got))) and len(got) >= 30
        assert feed(book_a, got, BTC) == []
        assert_truth(sim, book_a, BTC)
        # a later subscriber: the same cached snapshot, every increment since, then the ack
        await b.subscribe(f"{BTC}.ob-inc")
        replay = await b.read()
        assert keys(replay) == [f"{BTC}.ob-snap", *[f"{BTC}.ob-inc"] * len(got), "success"]
        assert replay[0] == first[0] and replay[1:-1] == got
        book_b = LocalBook()
        assert feed(book_b, replay, BTC) == []
        assert_truth(sim, book_b, BTC)
        # snapshots: <= 301 levels a side, asks ascending, bids descending (§2.1)
        snap = replay[0][f"{BTC}.ob-snap"]
        asks = [float(p) for p, _ in snap["asks"]]
        bids = [float(p) for p, _ in snap["bids"]]
        assert asks == sorted(asks) and bids == sorted(bids, reverse=True) and len(asks) <= 301


async def test_later_snapshots_replace_the_cache_and_are_pushed_to_nobody(make_sim):
    sim = await make_sim(snapshot_min_period=3600, snapshot_max_period=1.0)
    sim.pause()
    async with connect(sim.ws_url + f"?stream={BTC}.ob-inc") as a:
        book = LocalBook()
        sim.step(BTC, 3)  # well within the period: no snapshot
        assert feed(book, await a.read(), BTC) == []
        await asyncio.sleep(1.0)
        sim.step(BTC)  # the engine publishes a snapshot from inside its first increment (§2.3)
        sim.step(BTC, 5)
        got = await a.read()
        assert f"{BTC}.ob-snap" not in keys(got)  # Rango pushes it to nobody
        assert feed(book, got, BTC) == []
        async with connect(sim.ws_url) as b:
            await b.read()
            await b.subscribe(f"{BTC}.ob-inc")
            replay = await b.read()
        snap = replay[0][f"{BTC}.ob-snap"]
        incs = [f[f"{BTC}.ob-inc"] for f in replay[1:-1]]
        # the snapshot has the sequence before the increment it came with, which it already holds
        assert incs[0]["sequence"] == snap["sequence"] + 1
        assert incs == [f[f"{BTC}.ob-inc"] for f in got]  # the 3 steps before it left the cache
        side = "bids" if "bids" in incs[0] else "asks"
        price, amount = incs[0][side]  # the single-level shape (the default)
        assert dict(snap[side]).get(price, "") == amount  # "" deletes: then the level is gone
        late = LocalBook()
        assert feed(late, replay, BTC) == []
        assert_truth(sim, late, BTC)
        assert_truth(sim, book, BTC)


async def test_both_increment_shapes_with_their_deletes_and_peatio_numbers(make_sim):
    sim = await make_sim(increment_shape={ETH: "batched"}, snapshot_max_period=3600)
    sim.pause()
    assert (sim.increment_shape(BTC), sim.increment_shape("ETH-USDT")) == ("single", "batched")
    async with connect(sim.ws_url + f"?stream={BTC}.ob-inc&stream={ETH}.ob-inc") as c:
        books = {BTC: LocalBook(), ETH: LocalBook()}
        replay = await c.read()
        for w in books:
            feed(books[w], replay, w)
        sim.step(BTC, 200)
        sim.step(ETH, 200)
        got = await c.read()
        single = [f[f"{BTC}.ob-inc"] for f in got if f"{BTC}.ob-inc" in f]
        batched = [f[f"{ETH}.ob-inc"] for f in got if f"{ETH}.ob-inc" in f]
        # single: one level of one side per message, "" deletes (the Ruby engine, §2.2)
        assert all(len(b) == 2 and isinstance((b.get("asks") or b.get("bids"))[0], str) for b in single)
        assert any((b.get("asks") or b.get("bids"))[1] == "" for b in single)
        assert len(single) > 200  # one message per changed level
        # batched: one market event per message, [[p, v], ...], "0" deletes (finex-style, §2.2)
        assert len(batched) == 200 and all(isinstance(lv, list) for b in batched for lv in b.get("bids", []))
        assert any(v == "0" for b in batched for _, v in b.get("bids", []) + b.get("asks", []))
        # numbers as Peatio's BigDecimal#to_s: no trailing zeros, at least one decimal (§2.1)
        amounts = [(b.get("asks") or b.get("bids"))[1] for b in single]
        assert all(a == "" or (a == decimal(a) and "." in a) for a in amounts)
        for w, book in books.items():
            assert feed(book, got, w) == []
            assert_truth(sim, book, w)
        # one key per frame, keys sorted as Rango re-marshals them (§1.6)
        raw = [f for f in got if isinstance(f, dict)]
        assert all(len(f) == 1 for f in raw)
        sim.set_increment_shape(BTC, "batched")  # a switch mid-stream: the chain goes on
        sim.step(BTC, 20)
        more = await c.read()
        assert all(isinstance(f[f"{BTC}.ob-inc"]["asks" if "asks" in f[f"{BTC}.ob-inc"] else "bids"][0], list)
                   for f in more)  # fmt: skip
        assert feed(books[BTC], more, BTC) == []
        assert_truth(sim, books[BTC], BTC)


async def test_engine_restart_sequence_back_to_one_and_new_subscribers_get_its_snapshot(make_sim):
    sim = await make_sim(snapshot_max_period=3600)
    sim.pause()
    async with connect(sim.ws_url + f"?stream={BTC}.ob-inc") as a:
        book = LocalBook()
        feed(book, await a.read(), BTC)
        sim.step(BTC, 10)
        assert feed(book, await a.read(), BTC) == []
        sim.engine_restart(BTC)
        assert sim.sequence(BTC) == 1
        assert await a.read() == []  # connected subscribers are not told
        sim.step(BTC, 3)
        got = await a.read()
        seqs = [f[f"{BTC}.ob-inc"]["sequence"] for f in got]
        assert seqs[0] == 2 and seqs == list(range(2, 2 + len(got)))  # backwards for this client
        assert feed(book, got, BTC) == seqs
        async with connect(sim.ws_url + f"?stream={BTC}.ob-inc") as b:
            replay = await b.read()
        assert replay[0][f"{BTC}.ob-snap"]["sequence"] == 1 and replay[1:-1] == got
        fresh = LocalBook()
        assert feed(fresh, replay, BTC) == []
        assert_truth(sim, fresh, BTC)


async def test_a_quiet_market_after_a_restart_has_no_snapshot_until_its_book_changes(make_sim):
    sim = await make_sim(snapshot_min_period=0.2, snapshot_max_period=1.5, snapshot_min_increments=5)
    sim.pause()
    async with connect(sim.ws_url + f"?stream={BTC}.ob-inc&stream={ETH}.ob-inc") as a:
        await a.read()
        sim.engine_restart(BTC, snapshot=False)  # its start snapshot never reached Ranger
        async with connect(sim.ws_url + f"?stream={BTC}.ob-inc&stream={ETH}.ob-inc") as b:
            got = await b.read()
            assert keys(got) == [f"{ETH}.ob-snap", "success"]  # acked, but no BTC snapshot
            assert f"{BTC}.ob-inc" in got[-1]["success"]["streams"]
            await asyncio.sleep(0.3)
            sim.step(BTC, 3)  # too soon and too few for the engine to publish one: dropped (§2.3)
            assert await b.read() == [] and await a.read() == []
            await asyncio.sleep(1.2)
            sim.step(BTC, 3)  # the snapshot comes with the first of these: cached, pushed to nobody
            incs = await b.read()
            assert keys(incs) and set(keys(incs)) == {f"{BTC}.ob-inc"}
            await b.subscribe(f"{BTC}.ob-inc", event="unsubscribe")
            await b.read()
            await b.subscribe(f"{BTC}.ob-inc")  # a resubscribe gets it
            replay = await b.read()
            assert keys(replay)[0] == f"{BTC}.ob-snap"
            book = LocalBook()
            assert feed(book, replay, BTC) == []
            assert_truth(sim, book, BTC)
    # a Ranger restart: every socket cut, nothing cached, sequences go on
    seq = sim.sequence(ETH)
    async with connect(sim.ws_url + f"?stream={ETH}.ob-inc") as c:
        await c.read()
        assert sim.ranger_restart() == 1
        await c.read()
        assert c.other and c.other[-1].type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    async with connect(sim.ws_url + f"?stream={ETH}.ob-inc") as c:
        assert keys(await c.read()) == ["success"]
    assert sim.sequence(ETH) == seq


# ---- trades -----------------------------------------------------------------------------------------


async def test_trades_one_per_message_with_tid_taker_side_and_seconds(make_sim):
    sim = await make_sim(history_minutes=30)
    sim.pause()
    async with connect(sim.ws_url + f"?stream={BTC}.trades") as c:
        await c.read()
        events = sim.step(BTC, 300)
        got = [f[f"{BTC}.trades"]["trades"] for f in await c.read()]
    assert all(len(t) == 1 for t in got)  # one trade per message (§2.4)
    trades = [t[0] for t in got]
    sent = [t for e in events for t in e.trades]
    assert len(trades) == len(sent) > 20
    for wire_trade, t in zip(trades, sent, strict=True):
        assert wire_trade == {
            "tid": sim.trade_id(t),
            "taker_type": t.side,
            "date": t.ts_ms // 1000,
            "price": decimal(t.price),
            "amount": decimal(t.size),
        }
    tids = [t["tid"] for t in trades]
    history = sim.truth_trades(BTC)[: -len(sent)]
    assert tids == sorted(tids) and len(set(tids)) == len(tids)
    assert max(sim.trade_id(t) for t in history) < tids[0]  # history was traded before
    # resend_trades: the same tids again (a client drops them by tid)
    async with connect(sim.ws_url + f"?stream={BTC}.trades") as c:
        await c.read()
        sim.resend_trades(BTC, 3)
        again = [f[f"{BTC}.trades"]["trades"][0]["tid"] for f in await c.read()]
    assert again == tids[-3:]


# ---- faults -----------------------------------------------------------------------------------------


async def test_gap_duplicate_stale_and_shared_fault_injection(make_sim):
    sim = await make_sim(snapshot_max_period=3600)
    sim.pause()
    async with connect(sim.ws_url + f"?stream={BTC}.ob-inc&stream={BTC}.trades") as c:
        book = LocalBook()
        feed(book, await c.read(), BTC)
        start = sim.sequence(BTC)
        sim.skip_version(BTC, 2)  # per increment: two sequence numbers never reach us
        sim.duplicate_version(BTC, 1)
        sim.step(BTC, 5)
        seqs = [f[f"{BTC}.ob-inc"]["sequence"] for f in await c.read() if f"{BTC}.ob-inc" in f]
        assert seqs[:3] == [start + 3, start + 3, start + 4]
        sim.send_stale_version(BTC, back=2)
        (stale,) = await c.read()
        assert stale[f"{BTC}.ob-inc"]["sequence"] == sim.sequence(BTC) - 2
        assert sim.book_topic(BTC) == f"{BTC}.ob-inc"
        rng = random.Random(1)
        assert "btcusdt" in FAULTS["gap"](sim, rng)  # the shared injector finds the watched book
        assert FAULTS["garbage"](sim, rng)
        (garbage,) = await c.read()
        assert isinstance(garbage, str) and garbage.startswith('{"btcusdt.trades"')
        size = sim.send_oversized_frame(100_000)
        assert size >= 100_000
        (big,) = await c.read()
        assert list(big) == ["global.tickers"]
        for name in ("deflate", "bomb"):  # no compression on Ranger (§1.6)
            with pytest.raises(NotImplementedError):
                FAULTS[name](sim, rng)


async def test_full_speed_replays_the_snapshot_and_the_whole_tape(make_sim):
    sim = await make_sim(rate=0, tape_events=400, increment_shape={ETH: "batched"})
    async with connect(sim.ws_url + f"?stream={BTC}.ob-inc&stream={ETH}.ob-inc&stream={BTC}.trades") as c:
        await sim.drain()
        got = await c.read(quiet=0.5)
    for w in (BTC, ETH):
        book = LocalBook()
        assert feed(book, got, w) == []
        assert_truth(sim, book, w)
    tids = [f[f"{BTC}.trades"]["trades"][0]["tid"] for f in got if f"{BTC}.trades" in f]
    assert tids == [sim.trade_id(t) for t in sim.truth_trades(BTC)] and tids


# ---- REST -------------------------------------------------------------------------------------------


async def get(session: aiohttp.ClientSession, sim: PeatioSim, path: str, **params: Any) -> tuple[int, Any, Any]:
    async with session.get(sim.rest_url + path, params=params) as r:
        return r.status, r.headers, await r.json()


async def test_rest_markets_pages_states_units_and_precisions(make_sim):
    sim = await make_sim(symbols=None)  # the default catalogue and a listed, not yet trading, symbol
    sim.pause()
    async with aiohttp.ClientSession() as s:
        status, headers, everything = await get(s, sim, "/public/markets")
        assert status == 200 and headers["Total"] == "7" and headers["Per-Page"] == "100"
        btc = everything[0]
        assert btc == {
            "id": "btcusdt", "name": "BTC/USDT", "base_unit": "btc", "quote_unit": "usdt",
            "min_price": "0.01", "max_price": "0.0", "min_amount": "0.00001",
            "amount_precision": 5, "price_precision": 2, "state": "enabled",
        }  # fmt: skip
        assert {m["id"]: m["state"] for m in everything}["newtusdt"] == "hidden"
        pages = [(await get(s, sim, "/public/markets", limit=3, page=p))[2] for p in (1, 2, 3, 4)]
        assert [len(p) for p in pages] == [3, 3, 1, 0] and sum(pages, []) == everything
        _, headers, _ = await get(s, sim, "/public/markets", limit=3, page=2)
        assert (headers["Per-Page"], headers["Page"]) == ("3", "2")
        _, _, eth_quoted = await get(s, sim, "/public/markets", quote_unit="eth")
        assert [m["id"] for m in eth_quoted] == ["bmxeth"]
        for bad in ({"limit": 0}, {"limit": 1001}, {"limit": "x"}, {"page": 0}):
            status, _, body = await get(s, sim, "/public/markets", **bad)
            assert status == 422 and body["errors"][0].startswith("public.pagination.")


async def test_rest_depth_trades_tickers_timestamp_and_errors(make_sim):
    sim = await make_sim(history_minutes=20)
    sim.pause()
    async with aiohttp.ClientSession() as s:
        status, _, depth = await get(s, sim, f"/public/markets/{BTC}/depth", limit=5)
        _, bids, asks = sim.truth_book_strings(BTC)
        assert status == 200 and set(depth) == {"timestamp", "asks", "bids"}
        assert depth["asks"] == [[decimal(p), decimal(v)] for p, v in list(asks.items())[:5]]  # ascending
        assert depth["bids"] == [[decimal(p), decimal(v)] for p, v in list(bids.items())[:5]]  # descending
        assert isinstance(depth["timestamp"], int) and depth["timestamp"] < 10**10  # seconds
        _, _, trades = await get(s, sim, f"/public/markets/{BTC}/trades", limit=4)
        last = sim.truth_trades(BTC)[-4:][::-1]  # newest first (§3.3)
        assert [(t["id"], t["created_at"], t["taker_type"], t["market"]) for t in trades] == [
            (sim.trade_id(t), t.ts_ms // 1000, t.side, BTC) for t in last
        ]
        assert float(trades[0]["total"]) == pytest.approx(float(trades[0]["price"]) * float(trades[0]["amount"]))
        _, _, one = await get(s, sim, f"/public/markets/{BTC}/tickers")
        assert set(one) == {"at", "ticker"} and one["ticker"]["vol"] == one["ticker"]["volume"]
        assert all(isinstance(v, str) for v in one["ticker"].values())
        _, _, every = await get(s, sim, "/public/markets/tickers")
        assert set(every) == {BTC, ETH} and "vol" not in every[BTC]["ticker"]
        _, _, stamp = await get(s, sim, "/public/timestamp")
        assert isinstance(stamp, str) and datetime.fromisoformat(stamp).utcoffset().total_seconds() == 0
        for path in ("/public/markets/nope/depth", "/public/markets/nope/trades", "/public/markets/nope/k-line"):
            status, _, body = await get(s, sim, path)
            assert (status, body) == (422, {"errors": ["public.market.doesnt_exist"]})
        status, _, body = await get(s, sim, "/public/markets/newtusdt/depth")  # hidden is active (§3)
        assert status == 200 and body["asks"] == []


async def test_rest_klines_period_minutes_time_range_and_limit(make_sim):
    sim = await make_sim(history_minutes=300)
    sim.pause()
    candles = sim.market.klines(BTC, 5)  # only intervals that had trades
    assert len(candles) > 40
    row = lambda k: [k.open_time, *map(float, (k.open, k.high, k.low, k.close, k.volume))]  # noqa: E731
    async with aiohttp.ClientSession() as s:
        lo, hi = candles[3].open_time, candles[30].open_time
        _, _, both = await get(s, sim, f"/public/markets/{BTC}/k-line", period=5, time_from=lo, time_to=hi, limit=2)
        assert both == [row(k) for k in candles[3:31]]  # both times: inclusive, `limit` ignored
        _, _, start = await get(s, sim, f"/public/markets/{BTC}/k-line", period=5, time_from=lo, limit=4)
        assert start == [row(k) for k in candles[3:7]]
        _, _, last = await get(s, sim, f"/public/markets/{BTC}/k-line", period=5)
        assert last == [row(k) for k in candles[-30:]]  # the last 30 by default, oldest first
        _, _, hourly = await get(s, sim, f"/public/markets/{BTC}/k-line", period=60, limit=1000)
        assert hourly == [row(k) for k in sim.market.klines(BTC, 60)]
        for bad, code in (({"period": 3}, "invalid_period"), ({"period": "x"}, "non_integer_period"),
                          ({"limit": 0}, "invalid_limit"), ({"time_from": "y"}, "non_integer_time_from")):  # fmt: skip
            status, _, body = await get(s, sim, f"/public/markets/{BTC}/k-line", **bad)
            assert (status, body) == (422, {"errors": [f"public.k_line.{code}"]})


async def test_rest_rate_limit_per_endpoint_and_injected_faults(make_sim):
    sim = await make_sim()
    sim.pause()
    async with aiohttp.ClientSession() as s:
        statuses = [(await get(s, sim, f"/public/markets/{BTC}/depth"))[0] for _ in range(30)]
        assert statuses == [200] * 30
        async with s.get(sim.rest_url + f"/public/markets/{ETH}/depth") as r:
            assert r.status == 429  # one window for the route, whatever the market
        assert (await get(s, sim, "/public/markets"))[0] == 200  # another endpoint, another window
        sim.fail_rest(503)
        async with s.get(sim.rest_url + "/public/markets") as r:
            assert r.status == 503
