"""`recorder status`: a day's coverage and data volume per stream, from the data dir alone.

"covered %" is the share of the stream's recorded span that day (first event to last event, or to
now while a coverage interval is open) during which its data was continuous and valid.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from recorder.lake import Skipped
from recorder.query import open_views

STATUS_SQL = """
WITH day AS (SELECT CAST(? AS TIMESTAMPTZ) AS d0, CAST(? AS TIMESTAMPTZ) + INTERVAL 1 day AS d1),
cov AS (
    SELECT exchange, symbol, channel,
           greatest(start_ts, d0) AS s, least(coalesce(end_ts, now()), d1, now()) AS e
    FROM coverage, day
    WHERE start_ts < d1 AND coalesce(end_ts, now()) > d0
),
ev AS (
    SELECT exchange, symbol, channel, min(ts) AS first_ts, max(ts) AS last_ts,
           count(*) FILTER (WHERE event IN ('gap', 'disconnect', 'error')) AS incidents,
           arg_max(event || coalesce(': ' || nullif(detail, ''), ''), ts) AS last_event
    FROM events, day WHERE ts >= d0 AND ts < d1 GROUP BY ALL
),
covered AS (
    SELECT exchange, symbol, channel, sum(epoch(e) - epoch(s)) AS secs, max(e) AS span_end
    FROM cov WHERE e > s GROUP BY ALL
),
vol AS (
    SELECT exchange, symbol, 'trades' AS channel, count(*) AS rows FROM trades WHERE date = CAST(? AS DATE) GROUP BY ALL
    UNION ALL
    SELECT exchange, symbol, 'book', count(*) FROM book_updates WHERE date = CAST(? AS DATE) GROUP BY ALL
)
SELECT ev.exchange, ev.symbol, ev.channel,
       strftime(ev.first_ts, '%H:%M:%S') AS "from", strftime(greatest(ev.last_ts, covered.span_end), '%H:%M:%S') AS "to",
       round(100 * coalesce(covered.secs, 0)
             / nullif(epoch(greatest(ev.last_ts, covered.span_end)) - epoch(ev.first_ts), 0), 2) AS "covered %",
       ev.incidents, coalesce(vol.rows, 0) AS rows, ev.last_event
FROM ev
LEFT JOIN covered USING (exchange, symbol, channel)
LEFT JOIN vol USING (exchange, symbol, channel)
ORDER BY ALL
"""


def status_report(data_dir: str | Path, date: str | None = None) -> tuple[list[str], list[tuple], list[Skipped]]:
    """Column names and one row per (exchange, symbol, channel) recorded on `date` (UTC, default
    today), plus the damaged files and stray directories the views left out."""
    day = date or dt.datetime.now(dt.UTC).date().isoformat()
    con, skipped = open_views(data_dir, warn=False)  # the caller lists them
    try:
        rel = con.execute(STATUS_SQL, [day, day, day, day])
        cols = [d[0] for d in rel.description]
        return cols, rel.fetchall(), skipped
    finally:
        con.close()


def disk_usage(data_dir: str | Path) -> dict[str, int]:
    """Bytes on disk per top-level table directory (raw logs included)."""
    out: dict[str, int] = {}
    root = Path(data_dir)
    if root.exists():
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            out[d.name] = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    return out
