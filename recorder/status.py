"""`recorder status`: a day's coverage and data volume per stream, from the data dir alone.

"covered %" is the share of the stream's recorded span that day (first event to last event, or to
now while a coverage interval is open) during which its data was continuous and valid.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from recorder.lake import Skipped
from recorder.model import CHANNEL_SPECS
from recorder.query import open_views
from recorder.storage.objectstore import parse_s3

STATUS_TEMPLATE = """
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
vol AS ({vol}
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


def status_query(day: str) -> tuple[str, list[str]]:
    """The status SQL for `day` and its parameters, built together: the two `?` of `day`, then the
    `vol` CTE, one branch per catalog channel (its first table's rows that day where the channel's
    filter holds: channels may share a table), each with its own `?`."""
    params = [day, day]
    branches = []
    for spec in CHANNEL_SPECS.values():
        channel = "'" + spec.name.replace("'", "''") + "'"
        branches.append(
            f"SELECT exchange, symbol, {channel} AS channel, count(*) AS rows FROM {spec.tables[0]} "
            f"WHERE date = CAST(? AS DATE) AND ({spec.count_where}) GROUP BY ALL"
        )
        params.append(day)
    vol = "\n    " + "\n    UNION ALL\n    ".join(branches)
    return STATUS_TEMPLATE.format(vol=vol), params


def status_report(data_dir: str | Path, date: str | None = None) -> tuple[list[str], list[tuple], list[Skipped]]:
    """Column names and one row per (exchange, symbol, channel) recorded on `date` (UTC, default
    today), plus the damaged files and stray directories the views left out."""
    day = date or dt.datetime.now(dt.UTC).date().isoformat()
    con, skipped = open_views(data_dir, warn=False)  # the caller lists them
    try:
        rel = con.execute(*status_query(day))
        cols = [d[0] for d in rel.description]
        return cols, rel.fetchall(), skipped
    finally:
        con.close()


def disk_usage(data_dir: str | Path) -> dict[str, int]:
    """Bytes on disk (or in the bucket) per top-level table directory (raw logs included)."""
    out: dict[str, int] = {}
    url = parse_s3(data_dir)
    if url is not None:  # a bucket: object sizes per table, from one listing
        from recorder.lake import s3_filesystem

        for key, info in s3_filesystem().find(url.path, detail=True).items():
            top = key[len(url.path) + 1 :].split("/", 1)[0]
            if not top.startswith("."):
                out[top] = out.get(top, 0) + int(info.get("size") or 0)
        return dict(sorted(out.items()))
    root = Path(data_dir)
    if root.exists():
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            out[d.name] = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    return out
