"""Object storage (`s3://bucket/prefix`) against a real S3 API server: moto's threaded server on
127.0.0.1 (a random port), started per test with a fresh bucket and fake credentials."""

from __future__ import annotations

import logging
import re
import threading

import pytest

pytest.importorskip("moto")

BUCKET = "recorder-test"


class RequestLog(logging.Handler):
    """Every request the server answered, as (method, path), from werkzeug's access log."""

    LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP')

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
    import signal
    import time

    import pyarrow.parquet as pq

    from recorder.storage.objectstore import STUB_PREFIX

    from .processes import sent_count, spawn, stop
    from .recording import quiesce
    from .test_crash import assert_trades_match_what_was_sent

    _, c, _ = s3
    spool = tmp_path / "spool"
    where = ("--data-dir", f"s3://{BUCKET}/lake", "--spool", str(spool))
    rng = random.Random(11)
    runs: list[tuple[list, float | None]] = []
    for _ in range(2):
        known = len(sim.connections)
        before = set(_objects(c, "lake/trades/"))
        proc = await spawn(spool, sim, *where)
        deadline = time.monotonic() + 20
        while set(_objects(c, "lake/trades/")) <= before:  # this run's files reach the bucket
            assert time.monotonic() < deadline, "the recorder published nothing"
            await asyncio.sleep(0.1)
        await asyncio.sleep(rng.uniform(0.0, 1.5))  # anywhere relative to the 1 s flushes and uploads
        kill = time.time()
        await stop(proc, signal.SIGKILL)
        runs.append((sim.connections[known:], kill))
    known = len(sim.connections)
    final = await spawn(spool, sim, *where)  # recovers the crashed runs from the spool, publishes them
    try:
        deadline = time.monotonic() + 30
        while sent_count(sim, sim.connections[known:]) < 300 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await quiesce(sim)
    finally:
        err = await stop(final)
    assert final.returncode == 0, err
    assert "published" in err
    runs.append((sim.connections[known:], None))

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
