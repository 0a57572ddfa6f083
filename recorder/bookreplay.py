"""Rebuild an order book from the `book_updates` table, the way any user of the data would.

Rows are replayed in file order (date, file name, row number); a snapshot group (consecutive
`is_snapshot` rows of one message: same `recv_ts` and `seq`) resets the book first.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from recorder.lake import check_data_dir, scan_table
from recorder.query import HIVE_TYPES


@dataclass
class ReplayedBook:
    seq: int | None = None
    ts: dt.datetime | None = None
    bids: dict[float, float] = field(default_factory=dict)
    asks: dict[float, float] = field(default_factory=dict)

    def top(self, n: int = 20) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        return (
            sorted(self.bids.items(), reverse=True)[:n],
            sorted(self.asks.items())[:n],
        )


def rebuild_book(
    data_dir: str | Path, exchange: str, symbol: str, until: dt.datetime | None = None
) -> ReplayedBook:
    """The book as of `until` (received at or before it; default: everything) for one stream."""
    # the stream's files the `book_updates` view reads: damaged ones are skipped with a warning
    files = scan_table(check_data_dir(data_dir), "book_updates", exchange, symbol).files
    if not files:
        return ReplayedBook()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    where = "exchange = ? AND symbol = ?" + (" AND recv_ts <= ?" if until else "")
    params: list = [[str(f) for f in files], exchange, symbol] + ([until] if until else [])
    tbl = con.sql(
        f"""SELECT recv_ts, ts, seq, is_snapshot, side, price, amount
            FROM read_parquet(?, hive_partitioning = true, hive_types = {HIVE_TYPES},
                              filename = true, file_row_number = true)
            WHERE {where}
            ORDER BY date, filename, file_row_number""",
        params=params,
    ).to_arrow_table()
    return replay_rows(tbl.to_pydict())


def replay_rows(cols: dict[str, list]) -> ReplayedBook:
    book = ReplayedBook()
    prev_key = None
    for recv, ts, seq, snap, side, price, amount in zip(
        cols["recv_ts"], cols["ts"], cols["seq"], cols["is_snapshot"], cols["side"], cols["price"],
        cols["amount"], strict=True,
    ):
        key = (recv, seq, snap)
        if snap and key != prev_key:
            book.bids.clear()
            book.asks.clear()
        prev_key = key
        levels = book.bids if side == "bid" else book.asks
        if amount:
            levels[price] = amount
        else:
            levels.pop(price, None)
        book.seq, book.ts = seq, ts
    return book
