"""The venue contract: everything one exchange's wire protocol must tell the recorder, in one place.

A venue module (one per exchange under `recorder/venues/`) subclasses `Venue` and fills in its
URLs, limits, keepalive, channels -> wire topics, subscribe/unsubscribe/resync messages, the codec
(frame -> normalized records), the book's sequence rule, the market list -> `Instrument`s, and the
kline endpoint. It is sans-I/O: no sockets, no clock, no files. Everything else in the recorder
(session, transport, storage, candles, replay) is venue-neutral and asks the venue.

The session speaks to a venue in *intents* (`Subscribe`, `Resync`): what it wants, never how. The
venue turns an intent into the texts to send (`Venue.messages`): BitMart asks for a snapshot with
one `request` op, Peatio by unsubscribing and subscribing again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import Any, ClassVar, Literal, Protocol

from recorder.model import BookMessage, Message

Frame = bytes | str
Kind = Literal["spot", "perpetual"]


@dataclass(frozen=True, slots=True)
class Endpoints:
    ws_url: str  # "" = no default (a generic venue whose users must pass --ws-url)
    rest_url: str


@dataclass(frozen=True, slots=True)
class Limits:
    topics_per_connection: int
    send_budget: tuple[int, float]  # client messages per sliding window (count, seconds)
    connect_budget: tuple[int, float]  # connection attempts per window
    max_frame_bytes: int  # the largest frame the websocket layer accepts


@dataclass(frozen=True, slots=True)
class Keepalive:
    ping: str  # text sent every `interval` and as the silence probe (its answer is a `Pong`)
    interval: float  # protocol-level PINGs from the server are always answered by aiohttp


@dataclass(frozen=True, slots=True)
class ResyncPolicy:
    """How long the session waits for a snapshot it asked for, and what it does when none comes."""

    timeout: float = 5.0  # the first wait
    backoff: float = 1.0  # each retry waits `backoff` times longer...
    max_wait: float = 5.0  # ...up to this
    max_tries: int | None = 3  # requests before `on_exhausted` (None: retry for ever)
    on_exhausted: Literal["reconnect", "wait"] = "reconnect"

    def wait(self, tries: int) -> float:
        """Seconds to wait for the snapshot after the `tries`-th request."""
        return min(self.max_wait, self.timeout * self.backoff ** max(0, tries - 1))


class Verdict(Enum):
    """A sequence policy's answer for a book message whose seq is not local + 1."""

    DROP = "drop"  # nothing to do (a heartbeat that repeats the version, a duplicated empty push)
    OUT_OF_ORDER = "out_of_order"  # a duplicated or backwards update: error event, resync
    GAP = "gap"  # seq > local + 1: gap event, resync
    RESTART = "restart"  # the sequence went back (an engine restart): error event, resync


class SequencePolicy(Protocol):
    """A venue's book sequence rule. The book engine asks it only when `seq != local + 1`."""

    def check(self, local: int, msg: BookMessage) -> Verdict: ...


@dataclass(frozen=True, slots=True)
class Instrument:
    """One market as the venue lists it, resolved once at start and kept in the raw-log header."""

    symbol: str  # user form BASE-QUOTE: the partition key and lock key
    wire: str  # the venue's own id for it (its case and separator)
    kind: Kind = "spot"
    contract_size: str | None = None  # decimal string: base units per contract (None: sizes are base units)
    price_tick: str | None = None  # informative
    size_step: str | None = None  # informative

    def to_header(self) -> dict[str, str | None]:
        return {
            "symbol": self.symbol,
            "wire": self.wire,
            "kind": self.kind,
            "contract_size": self.contract_size,
            "price_tick": self.price_tick,
            "size_step": self.size_step,
        }

    @classmethod
    def from_header(cls, d: Mapping[str, Any]) -> Instrument:
        return cls(
            symbol=d["symbol"],
            wire=d["wire"],
            kind=d.get("kind", "spot"),
            contract_size=d.get("contract_size"),
            price_tick=d.get("price_tick"),
            size_step=d.get("size_step"),
        )

    @property
    def size_multiplier(self) -> Decimal | None:
        return Decimal(self.contract_size) if self.contract_size is not None else None


@dataclass(frozen=True, slots=True)
class RestRequest:
    path: str  # appended to the REST base URL
    params: Mapping[str, str | int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MarketsPage:
    instruments: list[Instrument]  # markets that are trading now
    next: RestRequest | None = None  # the next page, for venues that page their market list


# ---- session intents: what the session wants; the venue says it in its own words ----------------


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe these topics (the first time, after an ack timeout, after a refusal)."""

    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Resync:
    """This book topic needs a fresh snapshot."""

    topic: str


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Give up on this socket: written as an `error` event on `channel` (None: every channel)."""

    channel: str | None
    detail: str
    cause: str


@dataclass(frozen=True, slots=True)
class Report:
    """Say something in `events` without acting (a snapshot still awaited, retrying)."""

    topic: str
    detail: str
    cause: str


Intent = Subscribe | Resync | Reconnect | Report


class Codec(Protocol):
    """Frames -> normalized records, bound once per connection to its instruments. The hot path."""

    decode_errors: tuple[type[Exception], ...]

    def decode(self, frame: Frame) -> bytes | str:
        """The frame's payload (inflated, ...). Raises one of `decode_errors` for a bad frame."""
        ...

    def parse(self, payload: bytes | str) -> list[Message]:
        """Never raises: what cannot be read becomes a `ProtocolError`."""
        ...


class Klines(Protocol):
    """A venue's candle history endpoint."""

    intervals: Mapping[str, str | int]  # our interval name ('1m') -> the venue's parameter value
    page_limit: int  # candles per request
    rate_limit: tuple[int, float]  # requests per window (per IP)

    def request(self, inst: Instrument, interval: str, lo_s: int, hi_s: int) -> RestRequest:
        """The request for candles opening in [lo_s, hi_s) (at most `page_limit` of them)."""
        ...

    def parse(self, doc: Any, inst: Instrument, interval: str) -> list[Kline]:
        """Closed candles of the answer, sizes in base units. Raises `VenueError` for an error answer."""
        ...


@dataclass(frozen=True, slots=True)
class Kline:
    open_time_s: int
    open: float
    high: float
    low: float
    close: float
    volume: float  # base units
    quote_volume: float | None
    trades: int | None


class RestPoll(Protocol):
    """A slow REST timer whose answers become records (e.g. open interest a venue pushes nowhere).

    The collector asks every `interval` seconds per instrument of the poll's `channel`; answers
    are logged raw (replay re-derives the same rows) and routed like parsed frames."""

    name: str
    channel: str
    interval: float  # seconds between rounds
    rate_limit: tuple[int, float]  # requests per window for this endpoint

    def request(self, inst: Instrument) -> RestRequest: ...

    def parse(self, doc: Any, inst: Instrument) -> list[Message]:
        """Records of the answer; raises VenueError (or KeyError/TypeError/ValueError) on one it cannot read."""
        ...


class VenueError(ValueError):
    """An answer the venue's docs call an error. Callers turn it into a one-line RecorderError."""


class Venue:
    """Base class of every venue adapter. Subclasses set the class attributes and the methods that
    raise NotImplementedError; the others have defaults that fit most venues."""

    name: ClassVar[str]  # the registry name and partition name, lower-case
    endpoints: ClassVar[Endpoints]
    limits: ClassVar[Limits]
    keepalive: ClassVar[Keepalive]
    resync: ClassVar[ResyncPolicy] = ResyncPolicy()
    channels: ClassVar[tuple[str, ...]]  # offered channels, in subscribe order
    default_channels: ClassVar[tuple[str, ...]]
    klines: ClassVar[Klines | None] = None
    polls: ClassVar[tuple[RestPoll, ...]] = ()

    def sequence_policy(self) -> SequencePolicy:
        raise NotImplementedError

    def markets_request(self) -> RestRequest:
        raise NotImplementedError

    def parse_markets(self, doc: Any, req: RestRequest) -> MarketsPage:
        """The trading instruments of a market-list answer to `req` (so a paging venue knows which
        page it read). Raises VenueError, KeyError, TypeError or ValueError on an answer it cannot read."""
        raise NotImplementedError

    def topic(self, channel: str, inst: Instrument) -> str:
        raise NotImplementedError

    def subscribe(self, topics: Sequence[str]) -> list[str]:
        """Subscribe texts for `topics`, within the venue's per-message limits, in order."""
        raise NotImplementedError

    def unsubscribe(self, topics: Sequence[str]) -> list[str]:
        raise NotImplementedError

    def resync_messages(self, topic: str) -> list[str]:
        """The texts that get a fresh snapshot of one book topic, sent in this order."""
        raise NotImplementedError

    def codec(self, instruments: Sequence[Instrument]) -> Codec:
        raise NotImplementedError

    def messages(self, intent: Subscribe | Resync) -> list[str]:
        """An intent in the venue's words."""
        if isinstance(intent, Subscribe):
            return self.subscribe(intent.topics)
        return self.resync_messages(intent.topic)


@dataclass(frozen=True, slots=True)
class VenueEntry:
    """A registry row: a name users type, the venue adapter, and its simulator front-end.

    A venue module lists its entries in `ENTRIES`; presets of one protocol with other URLs are
    simply more entries. `simulator` is imported only when asked for (aiohttp.web is not cheap)."""

    name: str
    venue: Callable[[], Venue]
    simulator: Callable[[], type] | None = None
