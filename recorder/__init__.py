"""recorder: market-data recorder and candles feed for crypto exchanges.

The package face is lazy (PEP 562): `recorder.connect` and `recorder.CandlesFeed` import DuckDB,
aiohttp and pandas on first use, so `import recorder.sim.market` or `import recorder.venues` stays
light. `tests/test_layers.py` checks it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recorder.candles.feed import CandlesFeed
    from recorder.query import connect

__all__ = ["CandlesFeed", "connect"]
__version__ = "0.1.0"

_LAZY = {"CandlesFeed": "recorder.candles.feed", "connect": "recorder.query"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here again
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
