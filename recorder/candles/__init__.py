"""Candles: OHLCV built from recorded trades, the exchange's own klines, and the comparison of both."""

from __future__ import annotations

from recorder.candles.backfill import BackfillReport, backfill, backfill_async
from recorder.candles.build import DEFAULT_INTERVALS, INTERVALS, BuildReport, build_candles
from recorder.candles.verify import Mismatch, VerifyResult, verify

__all__ = [
    "DEFAULT_INTERVALS",
    "INTERVALS",
    "BackfillReport",
    "BuildReport",
    "Mismatch",
    "VerifyResult",
    "backfill",
    "backfill_async",
    "build_candles",
    "verify",
]
