"""Maintenance of a bucket data dir against a real S3 API server (moto's threaded server, the
fixtures of test_s3): `compact` and `candles build` on `s3://...`, and what a killed replacement
leaves for readers."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading

import pytest

pytest.importorskip("moto")

from . import test_s3 as base  # noqa: E402
from .processes import RECORDER  # noqa: E402
from .test_s3 import BUCKET, _objects  # noqa: E402

s3, lake = base.s3, base.lake  # the S3 server and the recorded lake, fixtures shared with test_s3

TABLES = ("trades", "book_updates", "book_snapshots", "events")


def _rec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RECORDER, *args], capture_output=True, text=True, timeout=120)


def _rows(data_dir) -> dict[str, list]:
    """Every row of the recorded tables, sorted: a multiset to compare lakes by."""
    from recorder import connect

    con = connect(data_dir)
    try:
        return {t: con.execute(f"select * from {t} order by all").fetchall() for t in TABLES}
    finally:
        con.close()


def _parquet(c, table: str) -> dict[str, int]:
    return {k: v for k, v in _objects(c, f"lake/{table}/").items() if k.endswith(".parquet")}


def _partitions(keys) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in keys:
        part = k.rsplit("/", 1)[0]
        out[part] = out.get(part, 0) + 1
    return out


def test_compact_on_a_bucket_merges_each_partition_and_keeps_every_row(lake, s3):
    local, url, _ = lake
    _, c, _ = s3
    before = {t: _parquet(c, t) for t in TABLES}
    assert max(_partitions(before["trades"]).values()) > 1, "the recording left several files per partition"
    want = _rows(local)
    assert _rows(url) == want

    p = _rec("compact", "--data-dir", url, "--include-today")
    assert p.returncode == 0, p.stderr
    assert "compacted" in p.stderr and " 0 partitions" not in p.stderr

    after = {t: _parquet(c, t) for t in TABLES}
    for t in TABLES:
        assert set(_partitions(after[t])) == set(_partitions(before[t])), t
        assert set(_partitions(after[t]).values()) == {1}, f"{t}: one object per partition"
        assert not set(after[t]) & {k for k, n in before[t].items()}, f"{t}: every input replaced"
    assert _rows(url) == want, "same rows, none doubled or lost"
    assert not _objects(c, "lake/.markers/"), "no marker left"
    p = _rec("compact", "--data-dir", url, "--include-today")
    assert p.returncode == 0 and "compacted 0 partitions" in p.stderr, p.stderr


def _begin_compaction(url: str, table: str = "trades"):
    """The real steps of `compact_bucket` for the biggest partition of `table`, up to (not including)
    running the replacement: the bucket, the replacement and its temp work dir."""
    import tempfile
    from pathlib import Path

    from recorder.storage.objectstore import parse_s3
    from recorder.storage.remote import Bucket, merge_partition, partitions

    bucket = Bucket(parse_s3(url))
    parts = partitions(bucket.list(f"{table}/"), table, [], bucket.url)
    part, files = max(sorted(parts.items()), key=lambda kv: len(kv[1]))  # the most objects
    tmp = tempfile.TemporaryDirectory(prefix="recorder-test-")
    rep, rows = merge_partition(bucket, Path(tmp.name), table, part, files, [])
    assert rep is not None and rows > 0 and len(rep.inputs) == len(files) > 1
    return bucket, rep, tmp


def test_a_compaction_killed_after_publishing_hides_its_inputs_and_the_next_compact_finishes_it(lake, s3):
    local, url, _ = lake
    _, c, _ = s3
    want = _rows(local)
    bucket, rep, tmp = _begin_compaction(url)
    with tmp:
        rep.begin()
        rep.publish()  # ... and the process dies: the merged object and its inputs are both there
    [output] = rep.rels()
    keys = set(_objects(c, "lake/"))
    assert f"lake/{output}" in keys and all(f"lake/{k}" in keys for k in rep.inputs)
    assert _objects(c, "lake/.markers/")
    assert _rows(url) == want, "the marker hides the inputs: no row twice"
    p = _rec("sql", "select count(*) from trades", "--data-dir", url, "--format", "csv")
    assert p.returncode == 0 and p.stdout.split() == ["count_star()", str(len(want["trades"]))], p.stderr

    p = _rec("compact", "--data-dir", url, "--include-today", "--table", "trades")
    assert p.returncode == 0, p.stderr
    keys = set(_objects(c, "lake/"))
    assert f"lake/{output}" in keys and not any(f"lake/{k}" in keys for k in rep.inputs), "finished"
    assert not _objects(c, "lake/.markers/")
    assert set(_partitions(_parquet(c, "trades")).values()) == {1}
    assert _rows(url) == want


def test_two_compactions_of_one_partition_at_once_never_double_its_rows(lake, s3):
    """Two `recorder compact` runs on one bucket (an overlapping cron): both merge the same partition;
    the second to replace it must back off (its inputs are gone, or named by the other's marker)."""
    from recorder.errors import RecorderError

    local, url, _ = lake
    _, c, _ = s3
    want = _rows(local)
    _, a, tmp_a = _begin_compaction(url)
    _, b, tmp_b = _begin_compaction(url)
    with tmp_a, tmp_b:
        a.run()  # the first finishes: its inputs are deleted
        with pytest.raises(RecorderError, match="another process"):
            b.run()
    assert _rows(url) == want, "no row twice"
    assert not _objects(c, "lake/.markers/")

    _, a, tmp_a = _begin_compaction(url, "book_updates")
    _, b, tmp_b = _begin_compaction(url, "book_updates")
    with tmp_a, tmp_b:
        a.begin()  # the first is under way (its marker is there)
        with pytest.raises(RecorderError, match="another process"):
            b.run()
        a.publish()
        a.retire()
        a.end()
    assert _rows(url) == want, "no row twice"
    assert not _objects(c, "lake/.markers/")


def test_an_object_deleted_under_a_reader_is_said_so_not_a_missing_bucket(s3, tmp_path):
    from recorder.errors import RecorderError
    from recorder.storage.objectstore import parse_s3
    from recorder.storage.remote import Bucket, Obj

    bucket = Bucket(parse_s3(f"s3://{BUCKET}/lake"))
    with pytest.raises(RecorderError, match=r"trades/x\.parquet was deleted while it was read; run again"):
        bucket.download(Obj("trades/x.parquet", 10, "e", 0), tmp_path / "x.parquet")


def test_a_compaction_killed_before_publishing_changes_nothing_and_is_rolled_back(lake, s3):
    from recorder.storage.remote import settle_markers

    local, url, _ = lake
    _, c, _ = s3
    want = _rows(local)
    bucket, rep, tmp = _begin_compaction(url)
    with tmp:
        rep.begin()  # the marker only: the process dies before the merged object is published
    assert _rows(url) == want
    # a young marker may be a compaction still running elsewhere: its partition is left alone
    p = _rec("compact", "--data-dir", url, "--include-today", "--table", "trades")
    assert p.returncode == 0, p.stderr
    assert all(f"lake/{k}" in set(_objects(c, "lake/")) for k in rep.inputs)
    assert _rows(url) == want
    # once stale, it is rolled back: the marker goes, the inputs stay until a compaction merges them
    assert settle_markers(bucket, stale=0) == (1, set())
    assert not _objects(c, "lake/.markers/")
    assert all(f"lake/{k}" in set(_objects(c, "lake/")) for k in rep.inputs)
    assert _rows(url) == want


def test_half_published_outputs_of_a_dead_replacement_are_hidden_then_deleted(lake, s3):
    """A replacement with two outputs (as a candle build has) killed after the first: readers
    hide that output (its inputs are still there), and settling deletes it."""
    import shutil

    from recorder.storage.remote import settle_markers

    local, url, _ = lake
    _, c, _ = s3
    want = _rows(local)
    bucket, rep, tmp = _begin_compaction(url)
    with tmp:
        second = rep.outputs[0].with_name("x-" + rep.outputs[0].name)
        shutil.copy(rep.outputs[0], second)
        rep.outputs.append(second)
        rep.begin()
        rep.outputs.pop()  # publish only the first
        rep.publish()
        rep.outputs.append(second)
    [first, _] = rep.rels()
    assert f"lake/{first}" in _objects(c, "lake/")
    assert _rows(url) == want, "the published half is hidden"
    assert settle_markers(bucket, stale=0)[0] == 1
    assert f"lake/{first}" not in _objects(c, "lake/") and not _objects(c, "lake/.markers/")
    assert _rows(url) == want


class Hold(logging.Handler):
    """Holds the server's answer to the first request matching `method` and `path` (a regex) until
    released: werkzeug logs a request as it sends the answer's headers, so the client waits, and
    the test kills it there, right after the server has done what it asked."""

    def __init__(self, method: str, path: str) -> None:
        super().__init__()
        self.method, self.path = method, re.compile(path)
        self.hit, self.resume = threading.Event(), threading.Event()

    def handle(self, record: logging.LogRecord) -> bool:  # no handler lock: other requests go on
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        m = base.RequestLog.LINE.search(record.getMessage())
        if m and not self.hit.is_set() and m["method"] == self.method and self.path.search(m["path"]):
            self.hit.set()
            self.resume.wait(30)


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", r"/\.markers/"), ("PUT", r"/trades/.*\.parquet"), ("POST", r"\?delete")],
    ids=["after-the-marker", "after-publishing", "after-deleting"],
)
def test_compact_sigkilled_mid_replacement_leaves_readers_right_and_the_next_run_finishes(
    lake, s3, method, path, tmp_path
):
    """A real `recorder compact` process SIGKILLed right after the server stored its marker, its
    merged object (before the inputs are deleted: both are in the bucket), or the deletion of the
    inputs (the marker stays): readers see every row once, and the next `compact` settles the dead
    process's marker at once (same host, pid gone) and finishes the job."""
    import signal

    local, url, _ = lake
    _, c, _ = s3
    want = _rows(local)
    base_trades = _parquet(c, "trades")
    hold = Hold(method, path)
    wz = logging.getLogger("werkzeug")
    wz.addHandler(hold)
    temp = tmp_path / "tmp"  # the processes' temp dir: what the killed one leaves there is seen
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    try:
        proc = subprocess.Popen(
            [RECORDER, "compact", "--data-dir", url, "--include-today", "--table", "trades"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        try:
            assert hold.hit.wait(60), "the compaction reached the step"
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            hold.resume.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    finally:
        wz.removeHandler(hold)
    assert proc.returncode == -signal.SIGKILL
    assert _objects(c, "lake/.markers/"), "killed mid-replacement: its marker is there"
    if "trades" in path:  # the merged object and all its inputs are there: the marker hides the inputs
        assert (
            set(_parquet(c, "trades")) > set(base_trades)
            and len(_parquet(c, "trades")) == len(base_trades) + 1
        )
    assert _rows(url) == want, "no row twice, none missing"
    assert [d.name.split("-")[1] for d in temp.iterdir()] == ["compact"], "the killed one's work dir"

    p = subprocess.run([RECORDER, "compact", "--data-dir", url, "--include-today", "--table", "trades"],
                       capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert not list(temp.iterdir()), "the next compact removed the dead one's work dir, and its own"
    assert not _objects(c, "lake/.markers/")
    assert set(_partitions(_parquet(c, "trades")).values()) == {1}
    assert _rows(url) == want


def test_compact_on_a_missing_bucket_or_prefix_is_a_one_line_error(s3, tmp_path):
    for args, msg in (
        (["compact", "--data-dir", "s3://no-such-bucket/x"], "bucket 'no-such-bucket' does not exist"),
        (["compact", "--data-dir", f"s3://{BUCKET}/typo"], "no data dir at s3://"),
        (
            ["compact", "--data-dir", f"s3://{BUCKET}/x", "--table", "candles"],
            "cannot compact table(s) candles",
        ),
        (
            ["candles", "build", "--data-dir", "s3://no-such-bucket/x"],
            "bucket 'no-such-bucket' does not exist",
        ),
    ):
        p = subprocess.run([RECORDER, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        assert p.returncode != 0 and msg in p.stderr and len(lines) == 1, (args, p.stderr)
    assert not list(tmp_path.glob("s3*")), "no local directory named s3:"


# --- candles on a bucket -------------------------------------------------------------------------

# sums of floats are rounded: DuckDB's parallel aggregation may add them in another order each run
CANDLE_COLUMNS = (
    "exchange, symbol, date, interval, open_time, open, high, low, close, round(volume, 9), trades, complete"
)


def _candles(data_dir) -> list:
    from recorder import connect

    con = connect(data_dir)
    try:
        return con.execute(f"select {CANDLE_COLUMNS} from candles order by all").fetchall()
    finally:
        con.close()


def test_candles_build_on_a_bucket_equals_a_local_build_and_a_second_build_writes_nothing(lake, s3, tmp_path):
    import shutil

    local, url, _ = lake
    _, c, _ = s3
    copy = tmp_path / "copy"
    shutil.copytree(local, copy)
    p = _rec("candles", "build", "--data-dir", str(copy), "--interval", "1s,1m")
    assert p.returncode == 0, p.stderr
    want = _candles(copy)
    assert want

    p = _rec("candles", "build", "--data-dir", url, "--interval", "1s,1m")
    assert p.returncode == 0, p.stderr
    assert _candles(url) == want
    objects = {k: (o["ETag"], o["LastModified"]) for k, o in _listing(c).items()}
    assert any(k.startswith("lake/candles/") and k.endswith(".parquet") for k in objects)
    assert "lake/candles/.state/manifest.json" in objects
    assert not _objects(c, "lake/.markers/")

    p = _rec("candles", "build", "--data-dir", url, "--interval", "1s,1m")
    assert p.returncode == 0, p.stderr
    assert "nothing to do" in p.stdout, p.stdout
    assert {k: (o["ETag"], o["LastModified"]) for k, o in _listing(c).items()} == objects, "no object written"

    # compaction only re-packs trades the candles were built from: nothing is rebuilt
    assert _rec("compact", "--data-dir", url, "--include-today").returncode == 0
    candles = {k for k in _objects(c, "lake/candles/") if k.endswith(".parquet")}
    p = _rec("candles", "build", "--data-dir", url, "--interval", "1s,1m")
    assert p.returncode == 0 and "nothing to do" in p.stdout, p.stdout
    assert {k for k in _objects(c, "lake/candles/") if k.endswith(".parquet")} == candles
    assert _candles(url) == want


def _listing(c) -> dict[str, dict]:
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="lake/"):
        for o in page.get("Contents", []):
            out[o["Key"]] = o
    return out


def test_candles_build_on_a_bucket_replaces_what_new_trades_change(lake, s3, tmp_path):
    """More trades published after a build: the next build publishes new candle objects, deletes
    the ones they replace, and equals a local build of the same trades."""
    import shutil

    from recorder.storage.objectstore import Publisher, parse_s3

    local, url, _ = lake
    _, c, _ = s3
    assert _rec("candles", "build", "--data-dir", url, "--interval", "1s,1m").returncode == 0
    first = {k for k in _objects(c, "lake/candles/") if k.endswith(".parquet")}
    # a second recording into the same lake (the same day's partitions)
    more = tmp_path / "more"
    p = _rec("run", "bitmart", "BTC-USDT", "--sim", "--sim-rate", "200", "--sim-seed", "3", "--duration", "2",
             "--flush-interval", "1", "--data-dir", str(more), "-q")  # fmt: skip
    assert p.returncode == 0, p.stderr
    spool = tmp_path / "spool2"
    shutil.copytree(more, spool)
    Publisher(spool, parse_s3(url), c).publish_spool()
    shutil.copytree(more, local, dirs_exist_ok=True)
    p = _rec("candles", "build", "--data-dir", url, "--interval", "1s,1m")
    assert p.returncode == 0, p.stderr
    assert "nothing to do" not in p.stdout
    now = {k for k in _objects(c, "lake/candles/") if k.endswith(".parquet")}
    assert now != first and now - first, "new candle objects"
    assert first - now, "the replaced ones are gone"
    assert _rec("candles", "build", "--data-dir", str(local), "--interval", "1s,1m").returncode == 0
    assert _candles(url) == _candles(local)


def test_candles_verify_reads_the_bucket(lake, s3, tmp_path):
    """Exchange candles equal to the built ones (made from them, published to the bucket): verify
    over the bucket compares them and passes."""
    import pyarrow.parquet as pq

    from recorder.model import SCHEMAS
    from recorder.storage.objectstore import Publisher, parse_s3
    from recorder.storage.sink import write_parquet_atomic

    local, url, _ = lake
    _, c, _ = s3
    assert _rec("candles", "build", "--data-dir", url, "--interval", "1s").returncode == 0
    spool = tmp_path / "spool3"
    for key in [k for k in _objects(c, "lake/candles/") if k.endswith(".parquet")]:
        if "symbol=BTC-USDT" not in key:
            continue
        src = tmp_path / "c.parquet"
        src.write_bytes(c.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        tbl = pq.read_table(src).select(SCHEMAS["exchange_candles"].names).cast(SCHEMAS["exchange_candles"])
        rel = key.removeprefix("lake/candles/").replace("/", "_")
        write_parquet_atomic(
            tbl, spool / "exchange_candles/exchange=bitmart/symbol=BTC-USDT" / key.split("/")[-2] / rel
        )
    Publisher(spool, parse_s3(url), c).publish_spool()
    p = _rec("candles", "verify", "bitmart", "BTC-USDT", "--interval", "1s", "--data-dir", url)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "OK" in p.stdout and "no complete built candle" not in p.stdout


def test_the_candle_manifest_is_written_back_only_if_nobody_changed_it(s3):
    """Two builds on one bucket: the second to write the manifest finds another ETag and fails with
    one line (its published candles are then rolled back by the builder); a first build's manifest
    may not overwrite one that appeared meanwhile."""
    from recorder.errors import RecorderError
    from recorder.storage.objectstore import parse_s3
    from recorder.storage.remote import MANIFEST_KEY, Bucket

    _, c, _ = s3
    c.put_object(Bucket=BUCKET, Key="lake/x", Body=b"x")
    bucket = Bucket(parse_s3(f"s3://{BUCKET}/lake"))
    bucket.put(MANIFEST_KEY, b'{"a": 1}')
    with pytest.raises(RecorderError, match="changed by another process meanwhile") as e:
        bucket.put(MANIFEST_KEY, b'{"b": 2}')  # a first build: there was no manifest when it began
    assert "\n" not in str(e.value)
    data, etag = bucket.get(MANIFEST_KEY)
    bucket.put(MANIFEST_KEY, b'{"c": 3}', etag)  # the build that read it
    with pytest.raises(RecorderError, match="changed by another process meanwhile"):
        bucket.put(MANIFEST_KEY, b'{"d": 4}', etag)  # a concurrent one that read the same
    assert bucket.get(MANIFEST_KEY)[0] == b'{"c": 3}'


def test_a_candles_build_that_loses_the_manifest_race_rolls_back_its_objects(lake, s3):
    """Another build writes the manifest while this one publishes (held by the server at its first
    candle object): this one's manifest write is refused, it deletes what it published and says so
    in one line; the bucket is as the other build left it."""
    local, url, _ = lake
    _, c, _ = s3
    before = set(_objects(c, "lake/"))
    hold = Hold("PUT", r"/candles/exchange=.*\.parquet")
    wz = logging.getLogger("werkzeug")
    wz.addHandler(hold)
    try:
        proc = subprocess.Popen(
            [RECORDER, "candles", "build", "--data-dir", url, "--interval", "1s"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert hold.hit.wait(60), "the build reached its first candle object"
            c.put_object(Bucket=BUCKET, Key="lake/candles/.state/manifest.json", Body=b'{"other": 1}')
        finally:
            hold.resume.set()
        out, err = proc.communicate(timeout=60)
    finally:
        wz.removeHandler(hold)
    assert proc.returncode != 0 and "changed by another process meanwhile" in err, (out, err)
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert set(_objects(c, "lake/")) == before | {"lake/candles/.state/manifest.json"}, "rolled back"
    assert (
        c.get_object(Bucket=BUCKET, Key="lake/candles/.state/manifest.json")["Body"].read() == b'{"other": 1}'
    )
