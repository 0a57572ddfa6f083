"""A small venue of another protocol family than BitMart, for session tests without a simulator.

It behaves like openware Peatio/Ranger (../shared/protocols/altmarkets.md): acks list every stream
the connection holds, a resync is unsubscribe + subscribe, book events carry no event time, the
sequence is strictly last + 1 and a backwards one is an engine restart, a quiet market may take
long to send a snapshot (wait with back-off, never reconnect). Plus a derivative-ticker channel, so
the session's routing of `DerivativeTicker` records is covered too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from recorder.model import (
    BOOK,
    TICKER,
    TRADES,
    BookMessage,
    DerivativeTicker,
    HeldTopics,
    Message,
    Pong,
    ProtocolError,
    TradeBatch,
)
from recorder.venues.contract import (
    Endpoints,
    Instrument,
    Keepalive,
    Limits,
    MarketsPage,
    RestRequest,
    ResyncPolicy,
    Venue,
    Verdict,
)


class RestartOnBackwards:
    def check(self, local: int, msg: BookMessage) -> Verdict:
        if msg.seq is not None and msg.seq > local:
            return Verdict.GAP
        return Verdict.RESTART if msg.seq is not None and msg.seq < local else Verdict.OUT_OF_ORDER


class FakeCodec:
    decode_errors: tuple[type[Exception], ...] = ()

    def decode(self, frame: bytes | str) -> bytes | str:
        return frame

    def parse(self, payload: bytes | str) -> list[Message]:
        if payload == "pong":
            return [Pong()]
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return [ProtocolError(f"undecodable frame: {exc}", kind="decode")]
        if "success" in doc:
            return [HeldTopics(frozenset(doc["success"]["streams"]))]
        if "error" in doc:
            return [ProtocolError(doc["error"])]
        out: list[Message] = []
        for key, body in doc.items():
            market, _, kind = key.partition(".")
            if kind in ("ob-snap", "ob-inc"):
                out.append(BookMessage(market, body["sequence"], kind == "ob-snap", None,
                                       [tuple(map(float, x)) for x in body.get("bids", [])],
                                       [tuple(map(float, x)) for x in body.get("asks", [])]))
            elif kind == "trades":
                out.append(TradeBatch(market, [(t["date"] * 1_000_000, str(t["tid"]), t["taker_type"],
                                                float(t["price"]), float(t["amount"])) for t in body["trades"]]))
            elif kind == "tickers":
                out.append(DerivativeTicker(market, TICKER, body.get("at"), mark_price=float(body["mark"])))
        return out


class FakePeatio(Venue):
    name = "fakepeatio"
    endpoints = Endpoints("", "")
    limits = Limits(topics_per_connection=100, send_budget=(40, 12.0), connect_budget=(30, 60.0), max_frame_bytes=1 << 22)
    keepalive = Keepalive("ping", 30.0)
    resync = ResyncPolicy(timeout=5.0, backoff=2.0, max_wait=60.0, max_tries=None, on_exhausted="wait")
    channels = (TRADES, BOOK, TICKER)
    default_channels = (TRADES, BOOK)

    def sequence_policy(self) -> RestartOnBackwards:
        return RestartOnBackwards()

    def markets_request(self) -> RestRequest:
        return RestRequest("/public/markets", {"limit": 2, "page": 1})

    def parse_markets(self, doc: Any, req: RestRequest) -> MarketsPage:
        items, page = doc, int(req.params["page"])
        insts = [Instrument(f"{m['base_unit']}-{m['quote_unit']}".upper(), m["id"]) for m in items if m["state"] == "enabled"]
        more = RestRequest("/public/markets", {"limit": 2, "page": page + 1}) if len(items) == 2 else None
        return MarketsPage(insts, more)

    def topic(self, channel: str, inst: Instrument) -> str:
        return f"{inst.wire}." + {TRADES: "trades", BOOK: "ob-inc", TICKER: "tickers"}[channel]

    def subscribe(self, topics: Sequence[str]) -> list[str]:
        return [orjson.dumps({"event": "subscribe", "streams": list(topics)}).decode()]

    def unsubscribe(self, topics: Sequence[str]) -> list[str]:
        return [orjson.dumps({"event": "unsubscribe", "streams": list(topics)}).decode()]

    def resync_messages(self, topic: str) -> list[str]:
        return [*self.unsubscribe([topic]), *self.subscribe([topic])]

    def codec(self, instruments: Sequence[Instrument]) -> FakeCodec:
        return FakeCodec()


class OpenInterestPoll:
    name = "open_interest"
    channel = TICKER
    interval = 60.0
    rate_limit = (12, 2.0)

    def request(self, inst: Instrument) -> RestRequest:
        return RestRequest("/contract/open-interest", {"symbol": inst.wire})

    def parse(self, doc: Any, inst: Instrument) -> list[Message]:
        return [DerivativeTicker(inst.wire, TICKER, int(doc["timestamp"]) * 1000, open_interest=float(doc["open_interest"]))]


class FakePeatioWithPoll(FakePeatio):
    polls = (OpenInterestPoll(),)
