"""User symbols (`BTC-USDT`, any case) <-> wire ids, from the exchange's own market list."""

from __future__ import annotations

import difflib

import aiohttp

from recorder.errors import RecorderError
from recorder.transport import get_json


def normalize(symbol: str) -> str:
    s = symbol.strip().upper().replace("/", "-").replace("_", "-")
    if s.count("-") != 1 or not all(s.split("-")):
        raise RecorderError(f"symbol {symbol!r} is not of the form BASE-QUOTE (e.g. BTC-USDT)")
    return s


def resolve(requested: list[str], markets: dict[str, str], exchange: str) -> dict[str, str]:
    """Map user symbols to wire ids; reject unknown ones naming close matches."""
    out: dict[str, str] = {}
    for raw in requested:
        user = normalize(raw)
        wire = markets.get(user)
        if wire is None:
            close = difflib.get_close_matches(user, list(markets), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise RecorderError(f"unknown symbol {raw!r} on {exchange}{hint}")
        out[user] = wire
    return out


async def fetch_markets(session: aiohttp.ClientSession, adapter, rest_url: str) -> dict[str, str]:
    doc = await get_json(session, rest_url.rstrip("/") + adapter.MARKETS_PATH)
    try:
        return adapter.parse_markets(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise RecorderError(f"unexpected market list from {rest_url}: {exc}") from None
