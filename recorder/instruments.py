"""Instruments: user symbols (`BTC-USDT`, any case) <-> the venue's markets, from its own market list."""

from __future__ import annotations

import difflib

import aiohttp

from recorder.errors import RecorderError
from recorder.transport import get_json
from recorder.venues.contract import Instrument, Venue, VenueError

MAX_MARKET_PAGES = 100  # a paging market list longer than this is a misbehaving server


# quote assets a symbol written without its separator (`BTCUSDT`) most likely ends in: for the error's
# hint only, never to read a symbol (longest first: BTCTUSD is BTC-TUSD before BTCT-USD)
_COMMON_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USD", "EUR", "DAI", "BTC", "ETH", "BNB", "TRY")


def _form_error(symbol: str, meant: list[str]) -> RecorderError:
    hint = f"; did you mean {', '.join(meant)}?" if meant else ""
    return RecorderError(f"symbol {symbol!r} is not of the form BASE-QUOTE (e.g. BTC-USDT){hint}")


def normalize(symbol: str) -> str:
    """`BASE-QUOTE`, upper case, from any case and `/` or `_` as the separator. Anything else is
    refused; without a separator (`BTCUSDT`) the error guesses the split at a common quote asset."""
    s = symbol.strip().upper().replace("/", "-").replace("_", "-")
    if s.count("-") != 1 or not all(s.split("-")):
        guess = next((q for q in _COMMON_QUOTES if s.isalnum() and s.endswith(q) and len(s) > len(q)), None)
        raise _form_error(symbol, [f"{s[: -len(guess)]}-{guess}"] if guess else [])
    return s


def resolve(requested: list[str], instruments: list[Instrument], exchange: str) -> list[Instrument]:
    """The instruments of the user's symbols, in their order, once each; unknown ones are refused
    with close matches."""
    by_symbol = {i.symbol: i for i in instruments}
    out: dict[str, Instrument] = {}
    for raw in requested:
        try:
            user = normalize(raw)
        except RecorderError:
            # the venue's own markets it spells, not normalize's guess (none: the venue has no such market)
            raise _form_error(raw, _written_without_separator(raw, instruments)) from None
        inst = by_symbol.get(user)
        if inst is None:
            close = difflib.get_close_matches(user, list(by_symbol), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise RecorderError(f"unknown symbol {raw!r} on {exchange}{hint}")
        out[user] = inst
    return list(out.values())


def _written_without_separator(raw: str, instruments: list[Instrument]) -> list[str]:
    """The markets a symbol with no separator stands for (`BTCUSDT`, BitMart futures' and Peatio's own
    form): those whose wire id or BASE+QUOTE it spells, any case. Named in the error, never taken:
    a run's symbols are BASE-QUOTE, as the data's partitions are."""
    key = raw.strip().upper()
    return sorted(
        {i.symbol for i in instruments if key in (i.wire.upper(), i.symbol.replace("-", ""))}
    )[:3]


async def fetch_instruments(session: aiohttp.ClientSession, venue: Venue, rest_url: str) -> list[Instrument]:
    """Every trading instrument of the venue's market list (following its pages)."""
    base = rest_url.rstrip("/")
    req = venue.markets_request()
    out: list[Instrument] = []
    for _ in range(MAX_MARKET_PAGES):
        doc = await get_json(session, base + req.path, dict(req.params) or None)
        try:
            page = venue.parse_markets(doc, req)
        except (VenueError, KeyError, TypeError, ValueError) as exc:
            raise RecorderError(f"unexpected market list from {rest_url}: {exc}") from None
        out += page.instruments
        if page.next is None:
            return out
        req = page.next
    raise RecorderError(f"market list from {rest_url} has more than {MAX_MARKET_PAGES} pages")
