"""recorder: market-data recorder and candles feed for crypto exchanges."""

from __future__ import annotations

from recorder.query import connect

__all__ = ["connect"]
__version__ = "0.1.0"
