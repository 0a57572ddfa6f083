"""Candles: OHLCV built from recorded trades, the exchange's own klines, the comparison of both, and
the live feed."""

from __future__ import annotations

from recorder.candles.backfill import BackfillReport, backfill, backfill_async
from recorder.candles.build import DEFAULT_INTERVALS, INTERVALS, BuildReport, build_candles
from recorder.candles.feed import CandlesFeed
from recorder.candles.live import Candle, CandleUpdate
from recorder.candles.verify import Mismatch, VerifyResult, verify

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
