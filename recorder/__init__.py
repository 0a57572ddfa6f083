"""recorder: market-data recorder and candles feed for crypto exchanges."""

from __future__ import annotations

from recorder.candles.feed import CandlesFeed
from recorder.query import connect

__all__ = ["CandlesFeed", "connect"]
__version__ = "0.1.0"
