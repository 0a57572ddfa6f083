"""Object storage (`s3://bucket/prefix`) against a real S3 API server: moto's threaded server on
127.0.0.1 (a random port), started per test with a fresh bucket and fake credentials."""

from __future__ import annotations

import logging
import os
import re
import threading

import pytest

pytest.importorskip("moto")

BUCKET = "recorder-test"


class RequestLog(logging.Handler):
    """Every request the server answered, as (method, path), from werkzeug's access log."""

    LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)*(?P<method>[A-Z]+) (?P<path>\S+) HTTP')  # colour codes too

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        m = self.LINE.search(record.getMessage())
        if m:
            with self._lock:
                self.requests.append((m["method"], m["path"]))

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()


@pytest.fixture
def s3(monkeypatch):
    """(endpoint URL, boto3 client, request log) with bucket `BUCKET` created; AWS_* env set."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    log = RequestLog()
    wz = logging.getLogger("werkzeug")
    wz.addHandler(log)
    old_level = wz.level
    wz.setLevel(logging.INFO)
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        from recorder.storage.objectstore import client

        c = client()
        # the server's state is process-wide (moto's backends): start from an empty store
        import urllib.request

        urllib.request.urlopen(
            urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10
        )
        c.create_bucket(Bucket=BUCKET)
        log.clear()
        yield endpoint, c, log
    finally:
        wz.removeHandler(log)
        wz.setLevel(old_level)
        server.stop()


def _objects(c, prefix=""):
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["Size"]
    return out


def test_the_fixture_serves_a_bucket(s3):
    endpoint, c, log = s3
    assert endpoint.startswith("http://127.0.0.1:")
    c.put_object(Bucket=BUCKET, Key="a", Body=b"x")
    assert _objects(c) == {"a": 1}
    assert ("PUT", f"/{BUCKET}/a") in log.requests


# --- publishing the spool ---------------------------------------------------------------------


def _spool_file(spool, rel, data):
    p = spool / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_publish_uploads_verifies_and_deletes_the_local_copy(s3, tmp_path):
    from recorder.storage.objectstore import Publisher, parse_s3

    _, c, _ = s3
    url = parse_s3(f"s3://{BUCKET}/lake/")
    rel = "trades/exchange=bitmart/symbol=BTC-USDT/date=2024-01-01/a.parquet"
    f = _spool_file(tmp_path, rel, b"PAR1 rows PAR1")
    assert Publisher(tmp_path, url, c).publish(f) is True
    assert not f.exists()
    assert c.get_object(Bucket=BUCKET, Key=f"lake/{rel}")["Body"].read() == b"PAR1 rows PAR1"


def test_publish_never_overwrites_and_an_identical_object_counts_as_published(s3, tmp_path):
    from recorder.storage.objectstore import ObjectExists, Publisher, parse_s3

    _, c, log = s3
    url = parse_s3(f"s3://{BUCKET}/p")
    pub = Publisher(tmp_path, url, c)
    c.put_object(Bucket=BUCKET, Key="p/t/x.parquet", Body=b"other")
    f = _spool_file(tmp_path, "t/x.parquet", b"mine")
    with pytest.raises(ObjectExists, match="already exists with different content"):
        pub.publish(f)
    assert f.exists() and c.get_object(Bucket=BUCKET, Key="p/t/x.parquet")["Body"].read() == b"other"
    # a crash between the PUT and the local delete: the re-upload finds its own object
    c.put_object(Bucket=BUCKET, Key="p/t/y.parquet", Body=b"same")
    g = _spool_file(tmp_path, "t/y.parquet", b"same")
    assert pub.publish(g) is False and not g.exists()
    assert pub.result.already == 1 and pub.result.uploaded == 0
    assert any(m == "PUT" for m, _ in log.requests)


def test_without_conditional_writes_a_head_comes_before_the_put(s3, tmp_path):
    """A store that answers 501 to If-None-Match: the publisher falls back to HEAD-before-PUT."""
    from botocore.exceptions import ClientError

    from recorder.storage.objectstore import ObjectExists, Publisher, parse_s3

    _, c, _ = s3

    class NoConditional:
        def __init__(self, real):
            self.real = real

        def put_object(self, **kw):
            if "IfNoneMatch" in kw:
                raise ClientError(
                    {"Error": {"Code": "NotImplemented"}, "ResponseMetadata": {"HTTPStatusCode": 501}},
                    "PutObject",
                )
            return self.real.put_object(**kw)

        def __getattr__(self, name):
            return getattr(self.real, name)

    pub = Publisher(tmp_path, parse_s3(f"s3://{BUCKET}/p"), NoConditional(c))
    assert pub.publish(_spool_file(tmp_path, "t/a.parquet", b"a")) is True
    assert pub.conditional is False
    c.put_object(Bucket=BUCKET, Key="p/t/b.parquet", Body=b"theirs")
    with pytest.raises(ObjectExists):
        pub.publish(_spool_file(tmp_path, "t/b.parquet", b"mine"))
    assert c.get_object(Bucket=BUCKET, Key="p/t/b.parquet")["Body"].read() == b"theirs"


def test_publish_spool_ships_finished_files_only_and_is_idempotent(s3, tmp_path):
    from recorder.storage.objectstore import Publisher, parse_s3

    _, c, _ = s3
    url = parse_s3(f"s3://{BUCKET}/p")
    done = [
        _spool_file(tmp_path, "trades/exchange=e/symbol=A-B/date=2024-01-01/1.parquet", b"1"),
        _spool_file(tmp_path, "raw/exchange=e/date=2024-01-01/r.rawlog.zst", b"r"),
    ]
    stay = [
        _spool_file(tmp_path, "trades/exchange=e/symbol=A-B/date=2024-01-01/.2.parquet.tmp", b"half"),
        _spool_file(tmp_path, ".runs/run.lock", b""),
    ]
    res = Publisher(tmp_path, url, c).publish_spool()
    assert res.uploaded == 2
    assert not any(p.exists() for p in done) and all(p.exists() for p in stay)
    assert set(_objects(c)) == {
        "p/trades/exchange=e/symbol=A-B/date=2024-01-01/1.parquet",
        "p/raw/exchange=e/date=2024-01-01/r.rawlog.zst",
    }
    assert Publisher(tmp_path, url, c).publish_spool().uploaded == 0


def test_bucket_problems_are_one_line_errors(s3, monkeypatch):
    from recorder.errors import RecorderError
    from recorder.storage.objectstore import check_bucket, parse_s3

    endpoint, _, _ = s3
    check_bucket(parse_s3(f"s3://{BUCKET}/p"))
    with pytest.raises(RecorderError, match="bucket 'no-such-bucket' does not exist"):
        check_bucket(parse_s3("s3://no-such-bucket/p"))
    with pytest.raises(RecorderError, match="cannot reach the object store at http://127.0.0.1:9") as e:
        check_bucket(parse_s3(f"s3://{BUCKET}/p"), endpoint="http://127.0.0.1:9")
    assert "\n" not in str(e.value)


def test_bad_credentials_are_a_one_line_error(s3, monkeypatch):
    """moto accepts any key unless told to check them (its IAM mode): the error mapping is checked
    on the answer a real S3 gives."""
    from botocore.exceptions import ClientError

    from recorder.errors import RecorderError
    from recorder.storage.objectstore import check_bucket, parse_s3

    class Denied:
        def head_bucket(self, **kw):
            raise ClientError(
                {
                    "Error": {"Code": "403", "Message": "Forbidden"},
                    "ResponseMetadata": {"HTTPStatusCode": 403},
                },
                "HeadBucket",
            )

    with pytest.raises(RecorderError, match="access denied to bucket 'b-x' .check the AWS credentials"):
        check_bucket(parse_s3("s3://b-x/p"), s3=Denied())


def test_parse_s3_takes_the_form_a_path_folds_it_into():
    from pathlib import Path

    from recorder.storage.objectstore import parse_s3

    assert parse_s3("s3://b/p/q/").path == "b/p/q"
    assert parse_s3(Path("s3://b/p")) == parse_s3("s3://b/p")
    assert str(parse_s3("s3://b")) == "s3://b" and parse_s3("s3://b").key("x") == "x"
    assert parse_s3("data") is None and parse_s3("/tmp/s3:/x") is None


# --- recording into a bucket ------------------------------------------------------------------


def _download(c, prefix: str, dest):
    """The bucket's objects under `prefix` as local files (a mirror to check with local tools)."""
    keys = _objects(c, prefix + "/")
    for key in keys:
        p = dest / key.removeprefix(prefix + "/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(c.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    return keys


async def test_sigkill_while_recording_into_a_bucket_loses_nothing_and_doubles_nothing(s3, sim, tmp_path):
    """`recorder run --data-dir s3://...` SIGKILLed mid-run, twice, then a clean run: every object
    is readable, the spool is empty, and the trades in the bucket are what the simulator sent, in
    order, none twice (the local crash test's check, on a mirror of the bucket)."""
    import asyncio
    import random
    import time

    import pyarrow.parquet as pq

    from recorder.storage.objectstore import STUB_PREFIX

    from .processes import clean_run, killed_runs, spawn
    from .test_crash import assert_trades_match_what_was_sent

    _, c, _ = s3
    spool = tmp_path / "spool"
    where = ("--data-dir", f"s3://{BUCKET}/lake", "--spool", str(spool))
    rng = random.Random(11)
    before: set[str] = set()

    async def start():
        before.clear()
        before.update(_objects(c, "lake/trades/"))
        return await spawn(spool, sim, *where)

    async def pause():
        deadline = time.monotonic() + 20
        while set(_objects(c, "lake/trades/")) <= before:  # this run's files reach the bucket
            assert time.monotonic() < deadline, "the recorder published nothing"
            await asyncio.sleep(0.1)
        await asyncio.sleep(rng.uniform(0.0, 1.5))  # anywhere relative to the 1 s flushes and uploads

    runs = await killed_runs(sim, 2, start, pause)
    # the last run recovers the crashed runs from the spool and publishes them
    last, err = await clean_run(sim, lambda: spawn(spool, sim, *where))
    assert "published" in err
    runs.append(last)

    left = [p for p in spool.rglob("*") if p.is_file() and ".runs" not in p.parts]
    assert left == [], f"left in the spool: {left}"
    mirror = tmp_path / "mirror"
    keys = _download(c, "lake", mirror)
    assert not [k for k in keys if k.rsplit("/", 1)[-1].startswith(".")], "a temp file or stub was published"
    assert sum(k.endswith(".rawlog.zst") for k in keys) >= 3, "raw logs are shipped"
    for f in mirror.rglob("*.parquet"):
        pq.read_metadata(f)
    assert_trades_match_what_was_sent(mirror, sim, runs)
    assert not list(mirror.rglob(f"{STUB_PREFIX}*"))


# --- reading a bucket: DuckDB through s3fs, no extension download ---------------------------------


@pytest.fixture
def lake(s3, tmp_path):
    """A small real recording (two symbols, every table) at tmp/local and, the same files, in the
    bucket under `lake/` (published from a copy of it as a spool)."""
    import shutil
    import subprocess

    from recorder.storage.objectstore import Publisher, parse_s3

    from .processes import RECORDER

    local = tmp_path / "local"
    p = subprocess.run(
        [RECORDER, "run", "bitmart", "BTC-USDT", "ETH-USDT", "--sim", "--sim-rate", "200", "--duration", "3",
         "--flush-interval", "1", "--data-dir", str(local), "-q"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    spool = tmp_path / "spool"
    shutil.copytree(local, spool)
    endpoint, c, log = s3
    Publisher(spool, parse_s3(f"s3://{BUCKET}/lake"), c).publish_spool()
    log.clear()
    return local, f"s3://{BUCKET}/lake", log


def test_connect_over_a_bucket_gives_the_same_views_as_the_directory(lake):
    from recorder import connect
    from recorder.model import SCHEMAS

    local, url, _ = lake
    a, b = connect(local), connect(url)
    for table in [*SCHEMAS, "coverage"]:
        q = f"select * from {table} order by all"
        assert a.execute(q).fetchall() == b.execute(q).fetchall(), table
    assert b.execute("select count(*) from trades").fetchone()[0] > 0
    q = "select * from completeness('bitmart', 'BTC-USDT', 'trades', bucket := interval 1 second) order by all"
    assert a.execute(q).fetchall() == b.execute(q).fetchall()
    assert b.execute(q).fetchall()
    ext = b.execute(
        "select count(*) from duckdb_extensions() where extension_name = 'httpfs' and loaded"
    ).fetchone()
    assert ext == (0,), "httpfs must not be needed (or loaded)"


def test_a_query_for_one_symbol_and_date_reads_only_that_partition(lake):
    """Counted by the server's request log: no GET or HEAD of any other partition's object."""
    from recorder import connect

    local, url, log = lake
    day = connect(local).execute("select max(date)::varchar from trades").fetchone()[0]
    con = connect(url)  # a fresh connection: DuckDB caches what it has read of remote files
    log.clear()
    n = con.execute(
        "select count(*) from trades where symbol = 'BTC-USDT' and date = ?::date", [day]
    ).fetchone()[0]
    assert n > 0
    reads = [p for m, p in log.requests if m in ("GET", "HEAD") and ".parquet" in p]
    assert reads, "the partition was read"
    mine = f"/trades/exchange=bitmart/symbol=BTC-USDT/date={day}/"
    assert [p for p in reads if mine not in p] == []
    others = {p for m, p in log.requests if "ETH-USDT" in p or ("/trades/" not in p and ".parquet" in p)}
    assert others == set()


def test_recorder_sql_over_a_bucket_is_read_only(lake, tmp_path):
    import subprocess

    from .processes import RECORDER

    local, url, _ = lake

    def sql(q, *extra):
        return subprocess.run(
            [RECORDER, "sql", q, "--data-dir", url, "--format", "csv", *extra],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    p = sql("select symbol, count(*) > 0 as any from trades group by all order by all")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["symbol,any", "BTC-USDT,true", "ETH-USDT,true"]
    for q in (
        f"copy (select 1) to '{url}/trades/x.parquet'",
        "select * from read_parquet('s3://recorder-test/elsewhere/*.parquet')",
        "select * from read_csv('/etc/hostname')",
    ):
        p = sql(q)
        assert p.returncode != 0 and p.stderr.count("\n") == 1, (q, p.stderr)
    p = sql(f"copy (select 1) to '{url}/x.csv'", "--write")
    assert p.returncode != 0 and "local paths only" in p.stderr
    out = tmp_path / "out.csv"
    p = sql(f"copy (select count(*) from trades) to '{out}'", "--write")
    assert p.returncode == 0, p.stderr
    assert out.read_text().strip().splitlines()[-1].isdigit()


def test_recorder_status_over_a_bucket(lake):
    import subprocess

    from .processes import RECORDER

    local, url, _ = lake
    env = {**os.environ, "COLUMNS": "250"}
    p = subprocess.run([RECORDER, "status", "--data-dir", url], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert "BTC-USDT" in p.stdout and "ETH-USDT" in p.stdout
    assert "trades" in p.stdout.split("on disk:")[1] and "raw" in p.stdout.split("on disk:")[1]
    # the bucket's root is no data dir: one line, naming the data dir inside it
    p = subprocess.run([RECORDER, "status", "--data-dir", url.rsplit("/", 1)[0]], capture_output=True, text=True,
                       timeout=60, env=env)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode != 0 and len(lines) == 1 and "is not a data dir" in p.stderr and url in p.stderr, p.stderr


def test_a_missing_bucket_or_prefix_and_unsupported_commands_are_one_line_errors(s3, tmp_path):
    import subprocess

    from .processes import RECORDER

    for args, msg in (
        (["sql", "select 1", "--data-dir", "s3://no-such-bucket/x"], "does not exist"),
        (["sql", "select 1", "--data-dir", f"s3://{BUCKET}/typo"], "no data dir at s3://"),
        (["compact", "--data-dir", "s3://no-such-bucket/x"], "bucket 'no-such-bucket' does not exist"),
        (["candles", "build", "--data-dir", f"s3://{BUCKET}/typo"], "no data dir at s3://"),
        (["candles", "backfill", "bitmart", "BTC-USDT", "--data-dir", f"s3://{BUCKET}/lake",
          "--rest-url", "http://127.0.0.1:9"], "does not support s3:// data dirs yet"),
        (["replay", str(tmp_path), "--data-dir", f"s3://{BUCKET}/lake"],
         f"data dir s3://{BUCKET}/lake: this command does not support s3:// data dirs yet"),
        (["replay", f"s3://{BUCKET}/lake/raw", "--data-dir", str(tmp_path / "out")], "no raw logs at s3://"),
        (["replay", "s3://no-such-bucket/raw", "--data-dir", str(tmp_path / "out")], "does not exist"),
        (["run", "bitmart", "BTC-USDT", "--sim", "--data-dir", "s3://no-such-bucket/x", "--spool", str(tmp_path)],
         "bucket 'no-such-bucket' does not exist"),
        (["run", "bitmart", "BTC-USDT", "--sim", "--data-dir", f"s3://{BUCKET}/x", "--spool", str(tmp_path),
          "--s3-endpoint", "http://127.0.0.1:9"], "cannot reach the object store at http://127.0.0.1:9"),
    ):  # fmt: skip
        p = subprocess.run([RECORDER, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        assert p.returncode != 0 and msg in p.stderr and len(lines) == 1, (args, p.stderr)
    assert not list(tmp_path.glob("s3*")), "no local directory named s3:"


def test_recording_into_a_bucket_says_the_bucket_and_the_spool(s3, tmp_path):
    """The start line names where the data goes (the bucket), not only the local spool."""
    import json
    import subprocess

    from .processes import RECORDER

    url, spool = f"s3://{BUCKET}/x", tmp_path / "spool"
    args = ["run", "bitmart", "BTC-USDT", "--sim", "--duration", "1", "--data-dir", url, "--spool", str(spool)]
    p = subprocess.run([RECORDER, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"recording bitmart BTC-USDT -> {url} (spool {spool})" in p.stderr, p.stderr
    p = subprocess.run([RECORDER, *args, "--log-format", "json"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    first = json.loads(p.stderr.splitlines()[0])
    assert first["data_dir"] == url and first["spool"] == str(spool), first


def test_replay_reads_raw_logs_from_the_bucket(lake, tmp_path):
    """`recorder replay s3://.../raw --data-dir DIR` re-derives the same tables as a replay of the
    local copy of those raw logs (downloaded with their raw/exchange=/date= layout)."""
    import subprocess

    from recorder import connect
    from recorder.model import SCHEMAS

    from .processes import RECORDER

    local, url, _ = lake
    for src, out in ((f"{url}/raw", tmp_path / "from-bucket"), (str(local / "raw"), tmp_path / "from-disk")):
        p = subprocess.run([RECORDER, "replay", src, "--data-dir", str(out)], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert "replayed" in p.stderr
    a, b = connect(tmp_path / "from-bucket"), connect(tmp_path / "from-disk")
    for table in SCHEMAS:
        if table in ("candles", "exchange_candles"):
            continue
        q = f"select * exclude (date) from {table} order by all"
        assert a.execute(q).fetchall() == b.execute(q).fetchall(), table
    assert a.execute("select count(*) from trades").fetchone()[0] > 0
