"""Candles: OHLCV built from recorded trades, the exchange's own klines, the comparison of both, and
the live feed.

The package face is lazy (PEP 562): each name below imports its module (DuckDB, aiohttp, pandas)
on first use, so `import recorder.candles.intervals` stays light.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recorder.candles.backfill import BackfillReport, backfill, backfill_async
    from recorder.candles.build import DEFAULT_INTERVALS, INTERVALS, BuildReport, build_candles
    from recorder.candles.feed import CandlesFeed
    from recorder.candles.live import Candle, CandleUpdate
    from recorder.candles.verify import Mismatch, VerifyResult, verify

_LAZY = {
    "BackfillReport": "backfill",
    "backfill": "backfill",
    "backfill_async": "backfill",
    "DEFAULT_INTERVALS": "build",
    "INTERVALS": "build",
    "BuildReport": "build",
    "build_candles": "build",
    "CandlesFeed": "feed",
    "Candle": "live",
    "CandleUpdate": "live",
    "Mismatch": "verify",
    "VerifyResult": "verify",
    "verify": "verify",
}
__all__ = [
    "DEFAULT_INTERVALS",
    "INTERVALS",
    "BackfillReport",
    "BuildReport",
    "Candle",
    "CandleUpdate",
    "CandlesFeed",
    "Mismatch",
    "VerifyResult",
    "backfill",
    "backfill_async",
    "build_candles",
    "verify",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


class _Face(types.ModuleType):
    """`recorder.candles.backfill` and `.verify` name the functions, as they did when this face was
    eager: the import system's binding of those submodules on the package is not let through."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Face
