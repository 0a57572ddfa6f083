"""Object storage (`s3://bucket/prefix` data dirs): the local data dir is the spool, the bucket the lake.

The crash-safe local writer stays as it is: files are written and renamed into a local spool
directory. A finished file (a published `*.parquet`, a closed raw log) is then uploaded as one whole
object under the same relative key, never streamed (a failure inside a Parquet writer streaming to
S3 would complete the upload with partial rows). The upload:

- refuses to overwrite: a conditional PUT (`If-None-Match: *`); on a store that does not support
  conditional writes (it answers 501 NotImplemented, or ignores the header), a HEAD before the PUT
  is the fallback, which leaves a race between two writers of the same key (file names are unique
  per process and host, so only a re-upload of the same file meets it);
- is verified: the object's size and MD5 (the ETag of a single-part PUT, and `Content-MD5` makes
  the server check the body) must match the local file;
- then deletes the local copy.

An object already there with the same size and MD5 counts as published (a re-upload after a crash
between the PUT and the delete), so `publish_spool` on start is idempotent. An object there with
different content is an error: the local file stays and nothing is overwritten.

Endpoint and credentials come from the standard AWS environment and config (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, profiles ...); `endpoint` overrides the endpoint (`--s3-endpoint`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recorder.errors import RecorderError
from recorder.storage.layout import is_temp

_SCHEME = re.compile(r"^s3:/+(?P<bucket>[^/]+)(?:/(?P<prefix>.*))?$")


@dataclass(frozen=True, slots=True)
class S3Url:
    bucket: str
    prefix: str  # no leading or trailing slash; "" for the bucket's root

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    @property
    def path(self) -> str:
        """`bucket/prefix` (the form fsspec takes)."""
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def __str__(self) -> str:
        return f"s3://{self.path}"


def parse_s3(data_dir: str | os.PathLike | S3Url | None) -> S3Url | None:
    """The bucket and prefix of an `s3://bucket/prefix` data dir (None for a local path).

    A `Path` folds `s3://b/p` into `s3:/b/p`; both forms are taken.
    """
    if data_dir is None or isinstance(data_dir, S3Url):
        return data_dir
    m = _SCHEME.match(os.fspath(data_dir))
    if m is None:
        return None
    return S3Url(m["bucket"], (m["prefix"] or "").strip("/"))


def default_spool(url: S3Url) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "recorder" / "spool" / url.bucket / (url.prefix or "_root")


def client(endpoint: str | None = None) -> Any:
    import boto3  # heavy: only for s3:// data dirs
    from botocore.config import Config

    cfg = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint or None, config=cfg)


def _error_line(exc: BaseException, url: S3Url, endpoint: str | None) -> str:
    """One clear line for what went wrong talking to the store."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    where = endpoint or os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint"
    if isinstance(exc, NoCredentialsError):
        return f"{url}: no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"
    if isinstance(exc, EndpointConnectionError):
        return f"{url}: cannot reach the object store at {where}"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket", "404") or status == 404:
            return f"{url}: bucket {url.bucket!r} does not exist at {where}"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AccessDenied") or status == 403:
            return f"{url}: access denied to bucket {url.bucket!r} (check the AWS credentials)"
        return f"{url}: the object store answered {code or status}"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{url}: cannot reach the object store at {where} ({first})"


def check_bucket(url: S3Url, endpoint: str | None = None, s3: Any = None) -> Any:
    """The bucket exists and these credentials may list it; returns the client. One-line
    RecorderError for a missing bucket, bad credentials, an unreachable endpoint."""
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = s3 or client(endpoint)
    try:
        s3.head_bucket(Bucket=url.bucket)
        s3.list_objects_v2(Bucket=url.bucket, Prefix=url.key(""), MaxKeys=1)
    except (BotoCoreError, ClientError) as exc:
        raise RecorderError(_error_line(exc, url, endpoint)) from None
    return s3


def _md5(path: Path) -> bytes:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


class ObjectExists(RecorderError):
    """A different object already holds the key: nothing is overwritten, the local file stays."""


class Unreadable(RecorderError):
    """A spool file that is not what its name says (a damaged Parquet file): not published."""


@dataclass
class PublishResult:
    uploaded: int = 0
    already: int = 0  # identical object found: counted as published
    bytes: int = 0


class Publisher:
    """Uploads finished files of `spool` to `url` (same relative key), verified, then deletes them."""

    def __init__(self, spool: str | Path, url: S3Url, s3: Any = None, endpoint: str | None = None) -> None:
        self.spool, self.url = Path(spool), url
        self.endpoint = endpoint
        self.s3 = s3 or client(endpoint)
        self.conditional = True  # False once the store refused If-None-Match: HEAD before PUT
        self.result = PublishResult()

    def key_of(self, path: Path) -> str:
        return self.url.key(path.relative_to(self.spool).as_posix())

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.s3.head_object(Bucket=self.url.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise

    @staticmethod
    def _same(head: dict, size: int, md5: bytes) -> bool:
        return head.get("ContentLength") == size and head.get("ETag", "").strip('"') == md5.hex()

    def publish(self, path: str | Path) -> bool:
        """Upload one finished file, verify it, delete it locally. True if it was uploaded now,
        False if an identical object was already there. Raises ObjectExists for a different object,
        RecorderError when the store cannot be used (the local file stays for the next try)."""
        from botocore.exceptions import BotoCoreError, ClientError

        path = Path(path)
        key = self.key_of(path)
        size = path.stat().st_size
        md5 = _md5(path)
        try:
            uploaded = self._put(path, key, size, md5)
            head = self._head(key)
        except (BotoCoreError, ClientError) as exc:
            raise RecorderError(_error_line(exc, self.url, self.endpoint)) from None
        if head is None or not self._same(head, size, md5):
            raise RecorderError(f"{self.url}: {key} did not verify after upload (size or MD5 differ)")
        path.unlink()
        if uploaded:
            self.result.uploaded += 1
            self.result.bytes += size
        else:
            self.result.already += 1
        return uploaded

    def _put(self, path: Path, key: str, size: int, md5: bytes) -> bool:
        from botocore.exceptions import ClientError

        if not self.conditional:
            head = self._head(key)
            if head is not None:
                return self._existing(head, key, size, md5)
        args = {"Bucket": self.url.bucket, "Key": key, "ContentMD5": base64.b64encode(md5).decode()}
        if self.conditional:
            args["IfNoneMatch"] = "*"
        try:
            with open(path, "rb") as fh:
                self.s3.put_object(Body=fh, **args)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code")
            if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                head = self._head(key)
                if head is None:
                    raise  # a concurrent delete: let the next try decide
                return self._existing(head, key, size, md5)
            if self.conditional and (status == 501 or code == "NotImplemented"):
                self.conditional = False  # this store has no conditional writes: HEAD before PUT
                return self._put(path, key, size, md5)
            raise
        return True

    def _existing(self, head: dict, key: str, size: int, md5: bytes) -> bool:
        if self._same(head, size, md5):
            return False
        raise ObjectExists(f"{self.url}: {key} already exists with different content; not overwritten")

    def publish_spool(self) -> PublishResult:
        """Publish every finished file left in the spool (a start after a crash); temp files, dot
        files and directories (`.runs`, `.state`) are not data and stay."""
        for path in finished_files(self.spool):
            self.publish(path)
        return self.result


def finished_files(spool: Path) -> list[Path]:
    out = []
    for dirpath, dirs, files in os.walk(spool):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            p = Path(dirpath) / name
            if name.startswith(".") or is_temp(p):
                continue
            if name.endswith(".parquet") or name.endswith(".rawlog.zst"):
                out.append(p)
    return out


# --- the spool of a recording: what is finished, what the bucket already holds ------------------

STUB_PREFIX = ".published-"


def stub_path(directory: Path, run: str) -> Path:
    """The spool's record of how far `run`'s files published from `directory` go (see `remember`)."""
    return directory / f"{STUB_PREFIX}{run}.parquet"


def remember(path: Path) -> None:
    """Before a published Parquet file leaves the spool, keep its raw-log position.

    Crash recovery re-derives a dead run's rows from its raw log past the furthest position a
    published file's footer records (`replay.published_positions`, reading the data dir's footers).
    With a bucket, those files are gone from the spool: a zero-row file with the same schema and the
    merged positions (`.published-<run>.parquet`, one per partition directory and run; a dot-name,
    so never shipped) keeps them where recovery looks. Removed once the run is done (`forget_done`).
    """
    import pyarrow.parquet as pq

    from recorder.storage.checkpoint import SOURCES_KEY, merge_sources, read_sources, sources_metadata
    from recorder.storage.layout import run_of, temp_path

    def footer(p: Path, what: str) -> list[dict]:
        try:
            return read_sources(p)
        except ValueError as exc:  # pyarrow's ArrowInvalid: a damaged file
            raise Unreadable(f"{p}: not a readable Parquet file ({exc}); {what}") from None

    sources = footer(path, "kept in the spool, not published")
    run = run_of(path.name)
    if not sources or run is None:
        return
    stub = stub_path(path.parent, run)
    if stub.exists():  # ours, and damaged: the positions it kept are unknown, so nothing of its run goes up
        old = footer(stub, f"it keeps the positions {run}'s published files reached, so {path.name} stays in the spool")
        sources = merge_sources([old, sources])
    schema = pq.read_schema(path)
    meta = dict(schema.metadata or {})
    meta[SOURCES_KEY.encode()] = sources_metadata(sources)[SOURCES_KEY].encode()
    tmp = temp_path(stub)
    with open(tmp, "wb") as fh:
        pq.write_table(schema.with_metadata(meta).empty_table(), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, stub)


def _run_done(spool: Path, run: str) -> bool:
    from recorder.storage.checkpoint import runs_dir

    return (runs_dir(spool) / f"{run}.done").exists()


def forget_done(spool: Path) -> int:
    """Remove the position stubs of runs that are over (clean stop or recovered)."""
    n = 0
    for dirpath, dirs, files in os.walk(spool):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(STUB_PREFIX) and name.endswith(".parquet"):
                run = name.removeprefix(STUB_PREFIX).removesuffix(".parquet")
                if _run_done(spool, run):
                    with contextlib.suppress(FileNotFoundError):
                        (Path(dirpath) / name).unlink()
                        n += 1
    return n


class Shipper:
    """Publishes a live recording's spool in a background thread, every `interval` seconds.

    Parquet files appear in the spool only complete (atomic rename), so any `*.parquet` there is
    finished. A raw log is shipped only once closed: one of this run that no connection holds open
    (`open_logs()`, read after listing, so a log opened meanwhile is not listed), or one of a run
    that is over (`.runs/<run>.done`; a crashed run's logs stay until recovery has used them).

    Two kinds of failure. The store failing (unreachable, an error answer, a file that did not
    verify) stops the sweep: every later file would meet it too; they all stay for the next sweep.
    A file the store refuses for good (`ObjectExists`: its key holds other content), or a damaged
    Parquet file (`Unreadable`), is set aside in `refused` and the sweep goes on, so one such file
    does not hold back the rest; it stays in the spool, is tried again every `retry_refused` seconds
    (an operator may have removed the other object), and /healthz names it until it goes up.
    """

    def __init__(
        self,
        publisher: Publisher,
        open_logs: Callable[[], set[Path]] = set,
        interval: float = 1.0,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.publisher = publisher
        self.spool = publisher.spool
        self.open_logs = open_logs
        self.interval = interval
        self.on_error = on_error
        self.errors: list[str] = []  # distinct messages, in order (each reported once)
        self.failures = 0  # failed sweeps (every one, not only new messages)
        self.failing_since: float | None = None  # monotonic time of the first failure since a success
        # files set aside (the store refused them for good, or damaged): why, and when (monotonic)
        self.refused: dict[Path, tuple[str, float]] = {}
        self.retry_refused = 60.0  # seconds before a refused file is tried again
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def sweep(self) -> int:
        """Publish what is finished now; returns the files published. A store that fails stops
        this sweep (the files stay in the spool for the next one); a file it refuses for good is set
        aside and the sweep goes on. Each distinct error is reported once."""
        from recorder.storage.layout import run_id, run_of

        with self._lock:
            files = finished_files(self.spool)
            held = {p.resolve() for p in self.open_logs()}
            me = run_id()
            n = 0
            now = time.monotonic()
            for gone in set(self.refused).difference(files):  # removed from the spool meanwhile
                del self.refused[gone]
            for p in files:
                if p in self.refused and now - self.refused[p][1] < self.retry_refused:
                    continue
                if p.name.endswith(".rawlog.zst"):
                    run = run_of(p.name)
                    if p.resolve() in held or run is None:
                        continue
                    if run != me and not _run_done(self.spool, run):
                        continue
                try:
                    if p.name.endswith(".parquet"):
                        remember(p)  # Unreadable for a damaged file (or position stub)
                    self.publisher.publish(p)
                    n += 1
                    self.failing_since = None
                    self.refused.pop(p, None)
                except FileNotFoundError:
                    continue
                except (ObjectExists, Unreadable) as exc:  # this file only: the rest go on
                    self.failures += 1
                    if p not in self.refused:  # said once, not at every retry
                        self._report(str(exc))
                    self.refused[p] = (str(exc), now)
                except (RecorderError, OSError) as exc:  # the store: the rest would fail too
                    self.failures += 1
                    if self.failing_since is None:
                        self.failing_since = time.monotonic()
                    self._report(str(exc) if isinstance(exc, RecorderError) else f"{p}: {exc}")
                    break
            return n

    def _report(self, msg: str) -> None:
        if not self.errors or self.errors[-1] != msg:
            self.errors.append(msg)
            if self.on_error is not None:
                self.on_error(msg)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="recorder-s3-publish", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sweep()
            self._stop.wait(self.interval)

    def close(self) -> list[Path]:
        """Stop the thread, publish what is left, drop the stubs of finished runs; returns the
        files still in the spool (the store refused or failed them: the next start retries)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sweep()
        forget_done(self.spool)
        return finished_files(self.spool)


def open_spool(url: S3Url, spool: str | Path | None, endpoint: str | None = None) -> Shipper:
    """For `recorder run --data-dir s3://...`: check the bucket (one-line errors), create the spool."""
    s3 = check_bucket(url, endpoint)
    root = Path(spool) if spool is not None else default_spool(url)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecorderError(f"spool {root} is not writable: {exc.strerror or exc}") from None
    return Shipper(Publisher(root, url, s3, endpoint))
