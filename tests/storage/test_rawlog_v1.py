"""Raw logs written before the venue contract (header format 1: no venue, channels or instruments;
EVENT records of three fields) still replay and recover. The fixture is 199 records cut from a
recording made by the code of e4eb01a (2 symbols, connect, subscribe, trades, depth, acks, ticks,
clean stop); that code's replay of it gave the counts asserted here."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson

import recorder
from recorder.recovery import recover_data_dir
from recorder.replay import replay
from recorder.storage.rawlog import EVENT, HEADER, read_records

FIXTURE = Path(__file__).parent / "fixtures" / "v1-bitmart.rawlog.zst"
NAME = "20261201T164922.649542-vm_27535_5b2c1d12-c0p0.rawlog.zst"  # replay reads run/conn/part from it
BASE_COUNTS = {"trades": 70, "book_updates": 345, "book_snapshots": 6, "events": 14, "coverage": 4}


def place(data: Path) -> Path:
    d = data / "raw" / "exchange=bitmart" / "date=2026-12-01"
    d.mkdir(parents=True)
    shutil.copy(FIXTURE, d / NAME)
    return d / NAME


def counts(data: Path) -> dict[str, int]:
    con = recorder.connect(data)
    return {t: con.sql(f"select count(*) from {t}").fetchall()[0][0] for t in BASE_COUNTS}


def rows(data: Path, table: str) -> list[tuple]:
    return recorder.connect(data).sql(f"select * exclude (date) from {table} order by all").fetchall()


def test_the_fixture_is_format_1():
    recs = list(read_records(FIXTURE))
    header = orjson.loads(recs[0][2])
    assert recs[0][1] == HEADER and header["format"] == 1 and "instruments" not in header
    assert all(len(orjson.loads(p)) == 3 for _, k, p in recs if k == EVENT)


def test_a_format_1_log_replays_and_recovers_to_the_same_rows(tmp_path):
    src = place(tmp_path / "rec")
    res = replay([src], tmp_path / "replayed")
    assert res.rows == sum(v for k, v in BASE_COUNTS.items() if k != "coverage")
    assert counts(tmp_path / "replayed") == BASE_COUNTS
    place(tmp_path / "dead")  # a run that never finished: recovery re-derives it at the next start
    assert recover_data_dir(tmp_path / "dead").runs == 1
    for table in ("trades", "book_updates", "book_snapshots", "events"):
        assert rows(tmp_path / "dead", table) == rows(tmp_path / "replayed", table)
    con = recorder.connect(tmp_path / "replayed")
    # events of a format-1 log get their cause from the old detail text
    assert sorted(set(con.sql("select event, cause from events").fetchall()), key=str) == sorted(
        {("connect", "connect"), ("subscribed", None), ("resync", None), ("stop", "stop")}, key=str
    )
    assert {r[0] for r in con.sql("select end_cause from coverage").fetchall()} == {"process stop"}
