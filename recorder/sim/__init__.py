"""Exchange simulators: one synthetic market (`market`), one venue-neutral server (`server`) and a thin
wire front-end per venue (`frontends`).

Names load lazily (PEP 562), so `import recorder.sim.market` pulls in neither aiohttp nor duckdb.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_MODULES = {
    "BitmartSpotSim": "recorder.sim.frontends.bitmart_spot",
    "serve_forever": "recorder.sim.frontends.bitmart_spot",
    "start_bitmart_spot": "recorder.sim.frontends.bitmart_spot",
    "SimConnection": "recorder.sim.server",
    "SimServer": "recorder.sim.server",
    "DEFAULT_SPECS": "recorder.sim.market",
    "PRE_TRADE_SPEC": "recorder.sim.market",
    "BookView": "recorder.sim.market",
    "DerivState": "recorder.sim.market",
    "Kline": "recorder.sim.market",
    "Market": "recorder.sim.market",
    "MarketEvent": "recorder.sim.market",
    "Stats24h": "recorder.sim.market",
    "SymbolSpec": "recorder.sim.market",
    "Trade": "recorder.sim.market",
    "WallClock": "recorder.sim.market",
    "format_units": "recorder.sim.market",
    "parse_units": "recorder.sim.market",
    "resolve_specs": "recorder.sim.market",
    "synthetic_specs": "recorder.sim.market",
}

if TYPE_CHECKING:
    from recorder.sim.frontends.bitmart_spot import BitmartSpotSim, serve_forever, start_bitmart_spot
    from recorder.sim.market import (
        DEFAULT_SPECS,
        PRE_TRADE_SPEC,
        BookView,
        DerivState,
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
    from recorder.sim.server import SimConnection, SimServer


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES})


__all__ = [
    "DEFAULT_SPECS",
    "PRE_TRADE_SPEC",
    "BitmartSpotSim",
    "BookView",
    "DerivState",
    "Kline",
    "Market",
    "MarketEvent",
    "SimConnection",
    "SimServer",
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
