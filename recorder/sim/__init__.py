"""Exchange simulators: one synthetic market engine (`market`) with thin wire front-ends per protocol."""

from __future__ import annotations

from recorder.sim.bitmart import BitmartSpotSim, SimConnection, serve_forever, start_bitmart_spot
from recorder.sim.market import (
    DEFAULT_SPECS,
    PRE_TRADE_SPEC,
    BookView,
    Kline,
    Market,
    MarketEvent,
    Stats24h,
    SymbolSpec,
    Trade,
    WallClock,
    format_units,
    parse_units,
    resolve_specs,
    synthetic_specs,
)

__all__ = [
    "DEFAULT_SPECS",
    "PRE_TRADE_SPEC",
    "BitmartSpotSim",
    "BookView",
    "Kline",
    "Market",
    "MarketEvent",
    "SimConnection",
    "Stats24h",
    "SymbolSpec",
    "Trade",
    "WallClock",
    "format_units",
    "parse_units",
    "resolve_specs",
    "serve_forever",
    "start_bitmart_spot",
    "synthetic_specs",
]
