"""How a date's candles are split into files, so that an append rewrites only what it touched.

1s candles (up to 86,400 rows a date, the bulk of the table) go into one file per block of
`BLOCK_HOURS` hours: group `1s-HH` (HH: the block's first hour). Every other interval of the date (at most ~1,900 rows) goes into one small file: group
`rest`. A group's rows are a pure function of (interval, open time), so two groups never hold the
same candle and replacing one group's file never duplicates or drops another group's rows.

What a group's rows depend on besides its trades is its own `FinishInputs`: the date's coverage
clipped to the group's time range, and the close carried into it (the last close before it).
Its key tells the builder whether a stored group is still right.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from recorder.candles.aggregate import empty_raw
from recorder.candles.intervals import HOUR_US, Span, day_start
from recorder.storage.sink import DAY_US

REST = "rest"  # every interval but 1s, one file per date
SECOND = "1s"
HOURS = DAY_US // HOUR_US
# An append rewrites the 1s blocks it touches (BLOCK_HOURS * 3,600 rows each); a full build writes
# HOURS / BLOCK_HOURS 1s files a date, each replacement costing a few fsyncs. 4 h balances the two.
BLOCK_HOURS = 4
BLOCKS = range(0, HOURS, BLOCK_HOURS)


def hour_group(hour: int) -> str:
    """The 1s group holding the candles of `hour` (0-23)."""
    return f"{SECOND}-{hour // BLOCK_HOURS * BLOCK_HOURS:02d}"


def blocks(hours: Span) -> Span:
    """The 1s blocks' hours [first, end) that cover the hours [hours[0], hours[1])."""
    lo, hi = hours
    return lo // BLOCK_HOURS * BLOCK_HOURS, -(-hi // BLOCK_HOURS) * BLOCK_HOURS


def group_names(intervals: Sequence[str]) -> list[str]:
    """The groups of a date built with `intervals`: `rest` first, then the 1s hours in time order."""
    names = [REST] if any(iv != SECOND for iv in intervals) else []
    if SECOND in intervals:
        names += [hour_group(h) for h in BLOCKS]
    return names


def group_intervals(name: str, intervals: Sequence[str]) -> list[str]:
    return [iv for iv in intervals if iv != SECOND] if name == REST else [SECOND]


def group_span(day: str, name: str) -> Span:
    """[start, end) in epoch us of the open times a group holds."""
    start = day_start(day)
    if name == REST:
        return start, start + DAY_US
    hour = int(name.rsplit("-", 1)[1])
    return start + hour * HOUR_US, start + (hour + BLOCK_HOURS) * HOUR_US


def clip(spans: Sequence[Span], span: Span) -> list[Span]:
    lo, hi = span
    return [(max(s, lo), min(e, hi)) for s, e in spans if s < hi and e > lo]


def split_groups(
    day: str, intervals: Sequence[str], raw: dict[str, pa.Table], hours: Span = (0, HOURS)
) -> dict[str, dict[str, pa.Table]]:
    """Raw candles of a date (per interval, sorted by `b`) per group: `rest` and the 1s blocks that
    start in the hours [hours[0], hours[1]), each of those present even when it has no rows."""
    out: dict[str, dict[str, pa.Table]] = {}
    if any(iv != SECOND for iv in intervals):
        out[REST] = {iv: raw.get(iv, empty_raw()) for iv in intervals if iv != SECOND}
    if SECOND in intervals:
        tbl = raw.get(SECOND, empty_raw())
        edges = day_start(day) + np.arange(HOURS + 1, dtype=np.int64) * HOUR_US
        cut = np.searchsorted(tbl.column("b").to_numpy(), edges)
        for h in range(*hours):
            if h % BLOCK_HOURS == 0:
                end = min(h + BLOCK_HOURS, HOURS)
                out[hour_group(h)] = {SECOND: tbl.slice(int(cut[h]), int(cut[end] - cut[h]))}
    return out
