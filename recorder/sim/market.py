"""A deterministic synthetic market: per-symbol books, resting orders, taker trades and candles.

It knows no venue. Symbols have neutral ids `BASE-QUOTE` ("BTC-USDT"); simulator front-ends map them to
their wire ids, may register those as aliases (so ground truth can be asked in wire terms), and turn the
market's events into their own messages. Prices and sizes live as integers (ticks and lots) so that
every string it hands out is an exact decimal ("64949.02", "0.00067"), never a float rendering.
Derivatives (mark, index, funding, open interest) are derived from the book without touching the
market's own random stream, so adding a perpetual front-end never changes what spot clients see.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

BID, ASK = "bid", "ask"
BUY, SELL = "buy", "sell"

# Books stay at most this deep, so a 100-level incremental channel always covers the whole book and a
# client that applies every change must end up with exactly the truth.
MAX_LEVELS = 60
# Cancels and sweeps never thin a side below this, so there is always liquidity to trade against.
MIN_LEVELS = 20
# Share of events that are taker trades (the rest are resting-order adds/cancels).
TRADE_SHARE = 0.2

Change = tuple[str, str, str]  # (side 'bid'|'ask', price, new absolute size; "0" = level deleted)


def format_units(units: int, decimals: int) -> str:
    """Exact decimal string of `units` * 10**-decimals ("0" stays "0", the deletion marker)."""
    if units == 0:
        return "0"
    if decimals == 0:
        return str(units)
    sign = "-" if units < 0 else ""
    digits = str(abs(units)).rjust(decimals + 1, "0")
    return f"{sign}{digits[:-decimals]}.{digits[-decimals:]}"


def parse_units(text: str, decimals: int) -> int:
    """Inverse of `format_units`; rejects values finer than the step instead of rounding them."""
    whole, _, frac = text.strip().partition(".")
    if len(frac) > decimals and set(frac[decimals:]) - {"0"}:
        raise ValueError(f"{text!r} has more than {decimals} decimals")
    frac = frac[:decimals].ljust(decimals, "0")
    sign = -1 if whole.startswith("-") else 1
    return sign * int((whole.lstrip("-") or "0") + frac)


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """Static description of one instrument. `name` is its neutral id (`BASE-QUOTE`); the market treats
    it as opaque, so any unique string works.

    For a perpetual (`kind="perpetual"`), `contract_size` is in base units and equals the lot, so book
    and trade sizes in lots are whole contracts.
    """

    name: str
    base: str
    quote: str
    price_decimals: int
    size_decimals: int
    start_price: str
    typical_size: str  # median resting order size, base units
    status: str = "trading"  # "trading", or anything else ("pre-trade", ...): no book seeded, never trades
    kind: str = "spot"  # "spot" | "perpetual"
    contract_size: str | None = None  # perpetuals: base units per contract (= the lot)

    @property
    def tick(self) -> str:
        return format_units(1, self.price_decimals)

    @property
    def lot(self) -> str:
        return format_units(1, self.size_decimals)


@dataclass(frozen=True, slots=True)
class Trade:
    symbol: str
    ts_ms: int
    side: str  # taker side: 'buy' | 'sell'
    price: str
    size: str
    price_ticks: int
    size_lots: int

    @property
    def price_f(self) -> float:
        return float(self.price)

    @property
    def size_f(self) -> float:
        return float(self.size)


@dataclass(slots=True)
class MarketEvent:
    """One market step for one symbol: the book change and the trades that caused it (if any)."""

    symbol: str
    ts_ms: int
    seq: int  # the symbol's change count after this event (front-ends derive versions from it)
    changes: list[Change]
    trades: list[Trade] = field(default_factory=list)

    def split(self) -> tuple[list[list[str]], list[list[str]]]:
        """The changes as (bids, asks), each [[price, size], ...] in change order."""
        bids = [[price, size] for side, price, size in self.changes if side == BID]
        asks = [[price, size] for side, price, size in self.changes if side == ASK]
        return bids, asks


@dataclass(frozen=True, slots=True)
class BookView:
    """A copy of one symbol's book. Bids best (highest) first, asks best (lowest) first."""

    symbol: str
    seq: int  # number of book changes applied so far; front-ends derive their versions from it
    ts_ms: int
    bids: dict[str, str]
    asks: dict[str, str]

    def bids_float(self) -> dict[float, float]:
        return {float(p): float(s) for p, s in self.bids.items()}

    def asks_float(self) -> dict[float, float]:
        return {float(p): float(s) for p, s in self.asks.items()}

    def top(self, depth: int) -> tuple[list[list[str]], list[list[str]]]:
        """(bids, asks) as [[price, size], ...], best first, at most `depth` each."""
        bids = [[p, s] for p, s in list(self.bids.items())[:depth]]
        asks = [[p, s] for p, s in list(self.asks.items())[:depth]]
        return bids, asks


@dataclass(frozen=True, slots=True)
class Kline:
    open_time: int  # seconds
    open: str
    high: str
    low: str
    close: str
    volume: str  # base units
    quote_volume: str
    trades: int

    def as_floats(self) -> tuple[int, float, float, float, float, float, float]:
        return (
            self.open_time,
            float(self.open),
            float(self.high),
            float(self.low),
            float(self.close),
            float(self.volume),
            float(self.quote_volume),
        )


@dataclass(frozen=True, slots=True)
class Stats24h:
    open: str
    high: str
    low: str
    last: str
    base_volume: str
    quote_volume: str
    fluctuation: str  # (last - open) / open, 5 decimals


@dataclass(frozen=True, slots=True)
class DerivState:
    """Derivatives view of one symbol at one time (exact decimal strings, like everything else here)."""

    mark: str
    index: str
    funding_rate: str  # the rate of the current funding period
    next_funding_rate: str  # the expected rate of the next one
    next_funding_time_ms: int
    open_interest: str  # base units, a whole number of lots (contracts when the lot is the contract size)


# Derivatives: funding every 8 h; rates have 8 decimals.
FUNDING_PERIOD_MS = 8 * 3_600_000
RATE_DECIMALS = 8


class _DerivParams:
    """Per-symbol constants of the derivatives view, drawn once from the symbol's own random stream."""

    __slots__ = (
        "basis_bp",
        "basis_period_ms",
        "basis_phase",
        "base_rate",
        "oi_lots",
        "oi_period_ms",
        "oi_phase",
    )

    def __init__(self, rng: random.Random, typical_lots: int) -> None:
        self.basis_bp = rng.uniform(1.0, 8.0)  # index vs mark amplitude, basis points
        self.basis_period_ms = rng.randint(20, 120) * 60_000
        self.basis_phase = rng.uniform(0.0, 2 * math.pi)
        self.base_rate = rng.uniform(0.00005, 0.00015)
        self.oi_lots = typical_lots * rng.randint(2_000, 20_000)
        self.oi_period_ms = rng.randint(2, 12) * 3_600_000
        self.oi_phase = rng.uniform(0.0, 2 * math.pi)


class WallClock:
    """Milliseconds since the epoch, never going backwards (several events may share a ms)."""

    def __init__(self) -> None:
        self._last = 0

    def __call__(self) -> int:
        now = time.time_ns() // 1_000_000
        if now > self._last:
            self._last = now
        return self._last


class _Candle:
    """One 1-minute candle in integer units; coarser steps are aggregated from these."""

    __slots__ = ("open", "high", "low", "close", "volume", "quote_volume", "trades")

    def __init__(self, price: int) -> None:
        self.open = self.high = self.low = self.close = price
        self.volume = self.quote_volume = self.trades = 0

    def add(self, price: int, lots: int) -> None:
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.close = price
        self.volume += lots
        self.quote_volume += price * lots
        self.trades += 1

    def merge(self, other: _Candle) -> None:
        self.high = max(self.high, other.high)
        self.low = min(self.low, other.low)
        self.close = other.close
        self.volume += other.volume
        self.quote_volume += other.quote_volume
        self.trades += other.trades


class SymbolBook:
    """Mutable state of one symbol: integer book, trade tape and 1-minute candles."""

    def __init__(self, spec: SymbolSpec, rng: random.Random) -> None:
        self.spec = spec
        self.bids: dict[int, int] = {}  # price ticks -> size lots
        self.asks: dict[int, int] = {}
        self.trades: list[Trade] = []
        self.candles: dict[int, _Candle] = {}  # minute open time (s) -> candle
        self.seq = 0
        self.ts_ms = 0
        mid = parse_units(spec.start_price, spec.price_decimals)
        # A level spacing of ~1 bp keeps 60 levels within a realistic ~1 % of the price.
        self.spacing = max(1, round(mid * 1e-4 / 2))
        self.typical_lots = max(1, parse_units(spec.typical_size, spec.size_decimals))
        self.target = float(mid)
        self.last_price = mid
        if spec.status == "trading":
            self._seed_book(mid, rng)

    def _seed_book(self, mid: int, rng: random.Random) -> None:
        half = max(1, self.spacing // 2)
        bid, ask = mid - half, mid + half
        for _ in range(40):
            self.bids[bid] = self.random_size(rng)
            self.asks[ask] = self.random_size(rng)
            bid -= rng.randint(1, 2 * self.spacing)
            ask += rng.randint(1, 2 * self.spacing)

    def random_size(self, rng: random.Random) -> int:
        return max(1, int(self.typical_lots * math.exp(rng.gauss(0.0, 0.8))))

    def best_bid(self) -> int | None:
        return max(self.bids) if self.bids else None

    def best_ask(self) -> int | None:
        return min(self.asks) if self.asks else None

    def mid(self) -> float:
        bid, ask = self.best_bid(), self.best_ask()
        if bid is None or ask is None:
            return self.target
        return (bid + ask) / 2

    def side(self, side: str) -> dict[int, int]:
        return self.bids if side == BID else self.asks

    def sorted_prices(self, side: str) -> list[int]:
        """Best first."""
        return sorted(self.side(side), reverse=side == BID)


class Market:
    """Several symbols advancing one random event at a time; the source of truth for every front-end."""

    def __init__(
        self,
        specs: Sequence[SymbolSpec],
        seed: int = 0,
        clock: Callable[[], int] | None = None,
        trade_share: float = TRADE_SHARE,
        trade_log_limit: int | None = None,
    ) -> None:
        """`trade_log_limit` bounds the kept trades per symbol for long runs (candles stay complete)."""
        if not specs:
            raise ValueError("a market needs at least one symbol")
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = clock or WallClock()
        self.trade_share = trade_share
        self.trade_log_limit = trade_log_limit
        self.specs = {spec.name: spec for spec in specs}
        self._books = {spec.name: SymbolBook(spec, self.rng) for spec in specs}
        # Pre-trade symbols are listed but have no market activity.
        self.active = [name for name, spec in self.specs.items() if spec.status == "trading"]
        self._last_ts = 0
        self._aliases: dict[str, str] = {}
        self._deriv: dict[str, _DerivParams] = {}
        self._activity: list[float] | None = None  # cumulative weights over `active`; None: uniform

    # ---- names ----------------------------------------------------------------------------------

    def alias(self, alias: str, symbol: str) -> None:
        """Let `alias` (a front-end's wire id) stand for `symbol` wherever this market takes a symbol."""
        if symbol not in self.specs:
            raise KeyError(symbol)
        if alias == symbol:
            return
        if alias in self.specs or self._aliases.get(alias, symbol) != symbol:
            raise ValueError(f"{alias!r} already names another symbol")
        self._aliases[alias] = symbol

    def resolve(self, name: str) -> str:
        """The symbol that `name` (a symbol or an alias) stands for; unknown names come back unchanged."""
        return self._aliases.get(name, name)

    # ---- driving the market -------------------------------------------------------------------

    @property
    def symbols(self) -> list[str]:
        return list(self.specs)

    def set_activity(self, weights: dict[str, float] | None) -> None:
        """Make a random step pick symbol `s` with probability proportional to `weights[s]` (symbols
        not named: 1.0); None: uniform again. Never set, the market draws exactly as it always did."""
        if weights is None:
            self._activity = None
            return
        acc, cum = 0.0, []
        for name in self.active:
            acc += weights.get(self.resolve(name), 1.0)
            cum.append(acc)
        self._activity = cum

    def step(self, symbol: str | None = None, ts_ms: int | None = None) -> MarketEvent:
        """Advance one symbol (random if not given) by one event and return what changed."""
        if symbol is not None:
            name = self._aliases.get(symbol, symbol)
        elif self._activity is None:
            name = self.rng.choice(self.active)
        else:
            name = self.rng.choices(self.active, cum_weights=self._activity)[0]
        book = self._books[name]
        if book.spec.status != "trading":
            raise ValueError(f"{name} is not trading")
        ts = self._next_ts(ts_ms)
        book.target += self.rng.gauss(0.0, 0.4 * book.spacing) + 0.05 * (book.mid() - book.target)
        changes: dict[tuple[str, int], int] = {}
        trades: list[Trade] = []
        if self.rng.random() < self.trade_share:
            self._take(book, ts, changes, trades)
        else:
            self._rest(book, changes)
        self._enforce_depth(book, changes)
        book.seq += 1
        book.ts_ms = ts
        dec = book.spec.price_decimals
        sdec = book.spec.size_decimals
        out = [(side, format_units(p, dec), format_units(size, sdec)) for (side, p), size in changes.items()]
        return MarketEvent(name, ts, book.seq, out, trades)

    def steps(self, n: int) -> Iterable[MarketEvent]:
        for _ in range(n):
            yield self.step()

    def backfill(self, start_ms: int, end_ms: int, events: int) -> None:
        """Generate `events` past events spread evenly over [start_ms, end_ms) (trade history for klines)."""
        for i in range(events):
            self.step(ts_ms=start_ms + (end_ms - start_ms) * i // max(1, events))

    def _next_ts(self, ts_ms: int | None) -> int:
        ts = self.clock() if ts_ms is None else ts_ms
        # Keep time monotonic per market even if a caller's clock jumps back.
        self._last_ts = max(self._last_ts, ts)
        return self._last_ts

    def _rest(self, book: SymbolBook, changes: dict[tuple[str, int], int]) -> None:
        """A resting order is added, or an existing one (partly) cancelled, near the touch."""
        side = BID if self.rng.random() < 0.5 else ASK
        levels = book.side(side)
        if self.rng.random() < 0.6 or len(levels) <= MIN_LEVELS:
            price = self._quote_price(book, side)
            levels[price] = levels.get(price, 0) + book.random_size(self.rng)
            changes[(side, price)] = levels[price]
            return
        prices = book.sorted_prices(side)[:10]
        price = prices[min(len(prices) - 1, int(self.rng.expovariate(0.5)))]
        reduced = levels[price] * self.rng.randint(1, 9) // 10
        if reduced == 0 or self.rng.random() < 0.5:
            del levels[price]
            changes[(side, price)] = 0
        else:
            levels[price] = reduced
            changes[(side, price)] = reduced

    def _quote_price(self, book: SymbolBook, side: str) -> int:
        """A price near the (drifting) target on `side` that cannot cross the opposite touch."""
        depth = int(self.rng.expovariate(1 / book.spacing)) if self.rng.random() < 0.7 else 0
        half = max(1, book.spacing // 2)
        if side == BID:
            best_ask = book.best_ask()
            price = max(1, round(book.target) - half - depth)
            return min(price, best_ask - 1) if best_ask is not None else price
        best_bid = book.best_bid()
        price = round(book.target) + half + depth
        return max(price, best_bid + 1) if best_bid is not None else price

    def _take(
        self, book: SymbolBook, ts: int, changes: dict[tuple[str, int], int], trades: list[Trade]
    ) -> None:
        """A taker order sweeps the opposite side from its best level outwards."""
        drift = (book.target - book.mid()) / (4 * book.spacing)
        taker = BUY if self.rng.random() < 0.5 + max(-0.3, min(0.3, drift)) else SELL
        side = ASK if taker == BUY else BID
        levels = book.side(side)
        remaining = max(1, int(book.typical_lots * math.exp(self.rng.gauss(0.0, 1.0))))
        spec = book.spec
        for price in book.sorted_prices(side):
            # The first level is always hit (every event changes the book); refills follow in
            # _enforce_depth if the sweep thinned the side.
            if trades and (remaining <= 0 or len(levels) <= MIN_LEVELS):
                break
            filled = min(remaining, levels[price])
            remaining -= filled
            left = levels[price] - filled
            if left:
                levels[price] = left
            else:
                del levels[price]
            changes[(side, price)] = left
            trade = Trade(
                spec.name,
                ts,
                taker,
                format_units(price, spec.price_decimals),
                format_units(filled, spec.size_decimals),
                price,
                filled,
            )
            trades.append(trade)
            self._record(book, trade)

    def _record(self, book: SymbolBook, trade: Trade) -> None:
        book.trades.append(trade)
        limit = self.trade_log_limit
        if limit is not None and len(book.trades) > 2 * limit:
            del book.trades[:-limit]  # amortised: trim in halves, not per trade
        book.last_price = trade.price_ticks
        minute = trade.ts_ms // 60_000 * 60
        candle = book.candles.get(minute)
        if candle is None:
            candle = book.candles[minute] = _Candle(trade.price_ticks)
        candle.add(trade.price_ticks, trade.size_lots)

    def _enforce_depth(self, book: SymbolBook, changes: dict[tuple[str, int], int]) -> None:
        """Cap each side at MAX_LEVELS (drop the farthest) and refill thin sides far from the touch."""
        for side in (BID, ASK):
            levels = book.side(side)
            sign = -1 if side == BID else 1
            while len(levels) > MAX_LEVELS:
                worst = min(levels) if side == BID else max(levels)
                del levels[worst]
                changes[(side, worst)] = 0
            while len(levels) < MIN_LEVELS:
                far = (min(levels) if side == BID else max(levels)) if levels else round(book.target)
                price = far + sign * self.rng.randint(1, 2 * book.spacing)
                if price < 1:  # a bid side cannot extend below zero; leave it thin
                    break
                levels[price] = book.random_size(self.rng)
                changes[(side, price)] = levels[price]

    # ---- ground truth ---------------------------------------------------------------------------

    def _book(self, symbol: str) -> SymbolBook:
        return self._books[self._aliases.get(symbol, symbol)]

    def spec(self, symbol: str) -> SymbolSpec:
        return self._book(symbol).spec

    def seq(self, symbol: str) -> int:
        return self._book(symbol).seq

    def book(self, symbol: str) -> BookView:
        state = self._book(symbol)
        dec, sdec = state.spec.price_decimals, state.spec.size_decimals
        bids = {format_units(p, dec): format_units(state.bids[p], sdec) for p in state.sorted_prices(BID)}
        asks = {format_units(p, dec): format_units(state.asks[p], sdec) for p in state.sorted_prices(ASK)}
        return BookView(state.spec.name, state.seq, state.ts_ms, bids, asks)

    def trades(self, symbol: str) -> list[Trade]:
        return list(self._book(symbol).trades)

    def recent_trades(self, symbol: str, count: int) -> list[Trade]:
        """The last `count` trades, oldest first."""
        return self._book(symbol).trades[-count:] if count > 0 else []

    def last_price(self, symbol: str) -> str:
        state = self._book(symbol)
        return format_units(state.last_price, state.spec.price_decimals)

    def klines(
        self,
        symbol: str,
        step_minutes: int = 1,
        fill_gaps: bool = False,
        until_s: int | None = None,
    ) -> list[Kline]:
        """OHLCV candles from this market's own trades, oldest first, open times in seconds.

        With `fill_gaps`, intervals without trades between the first candle and `until_s` (or the last
        candle) become flat candles at the previous close with zero volume, as exchanges serve them.
        """
        state = self._book(symbol)
        width = step_minutes * 60
        merged: dict[int, _Candle] = {}
        for minute in sorted(state.candles):
            candle = state.candles[minute]
            bucket = minute // width * width
            if bucket in merged:
                merged[bucket].merge(candle)
            else:
                merged[bucket] = _copy(candle)
        if fill_gaps and merged:
            last = max(merged) if until_s is None else max(max(merged), until_s // width * width)
            close = None
            for t in range(min(merged), last + 1, width):
                if t in merged:
                    close = merged[t].close
                elif close is not None:
                    merged[t] = _Candle(close)
        return [self._kline(state.spec, t, merged[t]) for t in sorted(merged)]

    def current_kline(self, symbol: str, step_minutes: int = 1) -> Kline | None:
        """The latest (possibly still open) candle of `step_minutes`, without scanning the history."""
        state = self._book(symbol)
        if not state.candles:
            return None
        width = step_minutes * 60
        bucket = max(state.candles) // width * width
        merged: _Candle | None = None
        for minute in sorted(m for m in state.candles if m >= bucket):
            if merged is None:
                merged = _copy(state.candles[minute])
            else:
                merged.merge(state.candles[minute])
        assert merged is not None
        return self._kline(state.spec, bucket, merged)

    @staticmethod
    def _kline(spec: SymbolSpec, t: int, c: _Candle) -> Kline:
        pd, sd = spec.price_decimals, spec.size_decimals
        return Kline(
            t,
            format_units(c.open, pd),
            format_units(c.high, pd),
            format_units(c.low, pd),
            format_units(c.close, pd),
            format_units(c.volume, sd) if c.volume else "0",
            format_units(c.quote_volume, pd + sd) if c.quote_volume else "0",
            c.trades,
        )

    def stats_24h(self, symbol: str, now_ms: int) -> Stats24h:
        """Rolling 24 h ticker statistics from the 1-minute candles."""
        state = self._book(symbol)
        spec = state.spec
        since = now_ms // 1000 - 86_400
        window = [state.candles[m] for m in sorted(m for m in state.candles if m >= since)]
        last = state.last_price
        if window:
            open_ = window[0].open
            high = max(c.high for c in window)
            low = min(c.low for c in window)
        else:
            open_ = high = low = last
        volume = sum(c.volume for c in window)
        quote = sum(c.quote_volume for c in window)
        pd, sd = spec.price_decimals, spec.size_decimals
        fluct = round((last - open_) * 100_000 / open_) if open_ else 0
        return Stats24h(
            format_units(open_, pd),
            format_units(high, pd),
            format_units(low, pd),
            format_units(last, pd),
            format_units(volume, sd) if volume else "0",
            format_units(quote, pd + sd) if quote else "0",
            format_units(fluct, 5) if fluct else "0",
        )

    def derivatives(self, symbol: str, ts_ms: int) -> DerivState:
        """Mark, index, funding and open interest of `symbol` at `ts_ms`.

        A function of the book mid, `ts_ms` and per-symbol constants drawn once from a separate
        `random.Random(f"{seed}:{symbol}:deriv")`: it never draws from the market's own stream (spot
        output stays the same whether or not anyone asks), and the order of calls does not matter.
        The mark is the mid on the tick grid; the index oscillates a few basis points around it; the
        funding rate is a per-symbol base rate plus the premium of mark over index.
        """
        state = self._book(symbol)
        spec = state.spec
        params = self._deriv.get(spec.name)
        if params is None:
            rng = random.Random(f"{self.seed}:{spec.name}:deriv")
            params = self._deriv[spec.name] = _DerivParams(rng, state.typical_lots)
        mark = max(1, round(state.mid()))

        def index_at(t: int) -> int:
            angle = 2 * math.pi * t / params.basis_period_ms + params.basis_phase
            return max(1, round(mark * (1 - params.basis_bp * 1e-4 * math.sin(angle))))

        def rate_at(t: int) -> int:
            index = index_at(t)
            premium = (mark - index) / index
            rate = params.base_rate + max(-0.0005, min(0.0005, premium / 8))
            return round(rate * 10**RATE_DECIMALS)

        next_funding = (ts_ms // FUNDING_PERIOD_MS + 1) * FUNDING_PERIOD_MS
        angle = 2 * math.pi * ts_ms / params.oi_period_ms + params.oi_phase
        oi_lots = max(1, round(params.oi_lots * (1 + 0.25 * math.sin(angle))))
        pd = spec.price_decimals
        return DerivState(
            format_units(mark, pd),
            format_units(index_at(ts_ms), pd),
            format_units(rate_at(ts_ms), RATE_DECIMALS),
            format_units(rate_at(next_funding), RATE_DECIMALS),
            next_funding,
            format_units(oi_lots, spec.size_decimals),
        )


def _copy(candle: _Candle) -> _Candle:
    out = _Candle(candle.open)
    out.merge(candle)
    return out


# ---- symbol catalogues ----------------------------------------------------------------------------

DEFAULT_SPECS: tuple[SymbolSpec, ...] = (
    SymbolSpec("BTC-USDT", "BTC", "USDT", 2, 5, "64949.02", "0.25"),
    SymbolSpec("ETH-USDT", "ETH", "USDT", 2, 4, "3421.55", "2.5"),
    SymbolSpec("SOL-USDT", "SOL", "USDT", 3, 3, "145.320", "40"),
    SymbolSpec("XRP-USDT", "XRP", "USDT", 5, 1, "0.52341", "5000"),
    SymbolSpec("DOGE-USDT", "DOGE", "USDT", 6, 0, "0.123456", "20000"),
    SymbolSpec("BMX-ETH", "BMX", "ETH", 8, 2, "0.00008123", "1500"),
)
# Listed in the market list but not tradable yet: a recorder must filter it out.
PRE_TRADE_SPEC = SymbolSpec("NEWT-USDT", "NEWT", "USDT", 4, 2, "1.0000", "100", status="pre-trade")


def synthetic_specs(count: int, quote: str = "USDT", seed: int = 0) -> list[SymbolSpec]:
    """`count` made-up trading symbols (SYN001-USDT, ...) with varied prices and precisions."""
    rng = random.Random(seed ^ 0x5EED)
    specs = []
    for i in range(1, count + 1):
        magnitude = rng.randint(-4, 4)  # prices from ~0.0001 to ~10,000
        price_dec = max(0, 4 - magnitude)
        size_dec = max(0, min(6, magnitude + 2))
        start = parse_units(f"{rng.uniform(1, 9.99) * 10**magnitude:.{price_dec}f}", price_dec)
        typical = format_units(max(1, round(1000 / 10**magnitude * 10**size_dec)), size_dec)
        specs.append(
            SymbolSpec(
                f"SYN{i:03d}-{quote}",
                f"SYN{i:03d}",
                quote,
                price_dec,
                size_dec,
                format_units(max(start, 100), price_dec),
                typical,
            )
        )
    return specs


def resolve_specs(symbols: Sequence[str | SymbolSpec] | int | None, seed: int = 0) -> list[SymbolSpec]:
    """Known names use DEFAULT_SPECS, unknown `BASE-QUOTE` names get synthetic specs, an int asks for N
    synthetic ones."""
    if symbols is None:
        return list(DEFAULT_SPECS)
    if isinstance(symbols, int):
        return synthetic_specs(symbols, seed=seed)
    known = {spec.name: spec for spec in (*DEFAULT_SPECS, PRE_TRADE_SPEC)}
    out: list[SymbolSpec] = []
    extra = iter(synthetic_specs(len(symbols), seed=seed))
    for item in symbols:
        if isinstance(item, SymbolSpec):
            out.append(item)
        elif item in known:
            out.append(known[item])
        else:
            template = next(extra)
            base, _, quote = item.partition("-")
            out.append(
                SymbolSpec(
                    item,
                    base,
                    quote or "USDT",
                    template.price_decimals,
                    template.size_decimals,
                    template.start_price,
                    template.typical_size,
                )
            )
    return out
