"""Validation of command-line values: a bad value is one clear `RecorderError` line, never a raw
exception from deep inside (DuckDB's cast error, a socket's OverflowError) and never silently
nothing (a `--date` that matches no partition)."""

from __future__ import annotations

import datetime as dt
import math

from recorder.errors import RecorderError


def parse_utc_date(text: str) -> dt.date | None:
    """The date of a `YYYY-MM-DD` string as partitions spell it, else None (`fromisoformat` alone
    also takes 20261121 and 2026-W47-6: partitions never do)."""
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        return None
    return day if len(text) == 10 else None


def utc_date(value: str | None, option: str = "--date") -> str | None:
    """A UTC date `YYYY-MM-DD` as the partitions spell it (None passes through).

    Used by `status`, `compact` and anything else that takes a `--date`."""
    if value is None:
        return None
    day = parse_utc_date(value.strip())
    if day is None:
        raise RecorderError(f"{option} {value!r} is not a date: use YYYY-MM-DD (UTC), e.g. 2026-11-21")
    return day.isoformat()


def positive(value: float | None, option: str, unit: str = "seconds") -> float | None:
    """A finite number > 0 (None passes through: the option was not given)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise RecorderError(f"{option} must be a positive number of {unit}, not {value:g}")
    return value


def non_negative(value: float, option: str, meaning_of_zero: str) -> float:
    """A finite number >= 0, where 0 has a documented meaning (said in the error)."""
    if not (math.isfinite(value) and value >= 0):
        raise RecorderError(f"{option} must be 0 ({meaning_of_zero}) or more, not {value:g}")
    return value


def tcp_port(value: int, option: str = "--port") -> int:
    """0 (any free port) .. 65535."""
    if not 0 <= value <= 65535:
        raise RecorderError(f"{option} must be between 0 (any free port) and 65535, not {value}")
    return value
