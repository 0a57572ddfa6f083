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
