"""The sink builds Arrow columns from buffers, not with pa.array: same bytes, and no pandas import.

pa.array (and pa.scalar) import pandas on first use, ~45 MB of RSS a recorder never needs; the
sink's own conversion must give exactly what pa.array gives, down to the buffers and the Parquet
file, for every table's column types, with nulls and awkward values.
"""

from __future__ import annotations

import io
import math
import random
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recorder.model import SCHEMAS
from recorder.storage.sink import DAY_US, rows_to_table, split_by_date, writer_options


def _value(rng: random.Random, t: pa.DataType, nulls: bool) -> object:
    if nulls and rng.random() < 0.2:
        return None
    if pa.types.is_timestamp(t) or t == pa.int64():
        return rng.choice([0, -1, 2**63 - 1, -(2**63), rng.randrange(-(2**62), 2**62), 1_796_000_000_000_000])
    if t == pa.float64():
        return rng.choice([0.0, -0.0, math.inf, -math.inf, math.nan, rng.random() * 1e6, 5e-324, 3])
    if t == pa.bool_():
        return rng.random() < 0.5
    if t == pa.string():
        return rng.choice(["", "bid", "ask", "é漢字🙂", "x" * rng.randrange(100), "\x00"])
    if pa.types.is_list(t):
        return [(_value(rng, pa.float64(), False), _value(rng, pa.float64(), False)) for _ in range(rng.randrange(4))]
    raise AssertionError(f"no generator for {t}")


def _parquet(tbl: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(tbl, out, **writer_options(tbl.column_names))
    return out.getvalue()


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_columns_are_those_of_pa_array(table: str) -> None:
    schema = SCHEMAS[table]
    rng = random.Random(table)
    for trial in range(12):
        nulls = trial % 2 == 1
        rows = [
            tuple(_value(rng, f.type, nulls and not pa.types.is_list(f.type)) for f in schema)
            for _ in range(rng.choice([1, 3, 64, 500]))
        ]
        ours = rows_to_table(table, rows)
        ours.validate(full=True)
        columns = zip(*rows, strict=True)
        theirs = pa.Table.from_arrays(
            [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
        )
        for a, b, f in zip(ours.columns, theirs.columns, schema, strict=True):
            a, b = a.combine_chunks(), b.combine_chunks()
            assert a.type == b.type and a.null_count == b.null_count, f.name
            assert [x and x.to_pybytes() for x in a.buffers()] == [x and x.to_pybytes() for x in b.buffers()], f.name
        assert _parquet(ours) == _parquet(theirs)


def test_low_cardinality_strings_are_those_of_pa_array() -> None:
    """book_updates' side, events' channel: few words, looked up in a dictionary."""
    rng = random.Random(7)
    rows = [(i, i, i, False, rng.choice(["bid", "ask"]), 1.0, 2.0) for i in range(1000)]
    rows += [(i, i, i, True, rng.choice(["é漢字🙂", "", "x"]), 1.0, 2.0) for i in range(100)]
    ours = rows_to_table("book_updates", rows).column("side").combine_chunks()
    theirs = pa.array([r[4] for r in rows], type=pa.string())
    assert [x and x.to_pybytes() for x in ours.buffers()] == [x and x.to_pybytes() for x in theirs.buffers()]
    assert ours.to_pylist() == [r[4] for r in rows]


def test_split_by_date_keeps_row_order_per_date() -> None:
    days = [20000, 20001, 20000, 20002, 19999]
    tbl = rows_to_table("trades", [(d * DAY_US + i, 1, None, "buy", float(i), 1.0) for i, d in enumerate(days)])
    got = {date: part.column("price").to_pylist() for date, part in split_by_date(tbl)}
    assert got == {"2024-10-04": [0.0, 2.0], "2024-10-05": [1.0], "2024-10-06": [3.0], "2024-10-03": [4.0]}


def test_writing_every_table_imports_no_pandas(tmp_path) -> None:
    code = f"""
import sys
from recorder.model import SCHEMAS
from recorder.storage.sink import ParquetSink
sink = ParquetSink({str(tmp_path)!r})
row = {{"trades": (1, 2, None, "buy", 1.0, 2.0), "book_updates": (1, 2, 3, False, "bid", 1.0, 2.0),
        "book_snapshots": (1, 2, 3, [(1.0, 2.0)], []), "events": (1, 2, "book", "gap", "x", None)}}
for table, r in row.items():
    sink.buffer(table, "bitmart", "BTC-USDT").append(r)
sink.buffer("derivative_ticker", "bitmart", "BTC-USDT").append((1, 2) + (None,) * 7)
assert sink.flush() == 5
print("pandas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
