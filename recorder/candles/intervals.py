"""Candle intervals and the time arithmetic the candle modules share (epoch microseconds, UTC dates)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

from recorder.errors import RecorderError
from recorder.storage.sink import DAY_US

SECOND_US = 1_000_000
INTERVALS: dict[str, int] = {
    "1s": SECOND_US,
    "1m": 60 * SECOND_US,
    "5m": 300 * SECOND_US,
    "15m": 900 * SECOND_US,
    "1h": 3_600 * SECOND_US,
    "4h": 14_400 * SECOND_US,
    "1d": DAY_US,
}
DEFAULT_INTERVALS: tuple[str, ...] = tuple(INTERVALS)
HOUR_US = INTERVALS["1h"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Span = tuple[int, int]  # [start, end) in epoch microseconds
TimeLike = str | int | float | datetime
# `candles verify` tolerances for float fields: values parsed from the same decimal string are
# bit-identical, so these only absorb float summation order.
VERIFY_RTOL = 1e-9
VERIFY_ATOL = 1e-12


def parse_time(value: TimeLike) -> datetime:
    """ISO date or datetime (naive = UTC), epoch seconds, or a datetime -> aware UTC datetime."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    text = value.strip()
    if text.lstrip("-").replace(".", "", 1).isdigit():
        return datetime.fromtimestamp(float(text), UTC)
    try:
        return parse_time(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise RecorderError(
            f"cannot read time {value!r}: use ISO 8601 (2024-05-01T12:00) or epoch seconds"
        ) from None


def parse_intervals(spec: str | Iterable[str]) -> tuple[str, ...]:
    """`"1m,1h"` or `["1m", "1h"]` -> ('1m', '1h') ordered by width; unknown names are an error."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in INTERVALS]
    if unknown or not names:
        raise ValueError(f"unknown interval(s) {unknown or names}; known: {', '.join(INTERVALS)}")
    return tuple(iv for iv in INTERVALS if iv in names)


def to_us(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // timedelta(microseconds=1)


def day_start(day: str) -> int:
    return to_us(datetime.fromisoformat(day).replace(tzinfo=UTC))


def day_name(us: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=us // DAY_US)).isoformat()
