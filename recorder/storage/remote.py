"""Maintenance of a bucket data dir (`s3://bucket/prefix`): `compact` and `candles build`.

Both run the existing local code on a local work directory (a mirror of the objects they need)
and then publish the difference: new objects through the spool's publisher (conditional PUT,
verified), replaced objects deleted. A bucket has no rename, so the replacement is made safe by a
marker object, `<prefix>/.markers/<run>-<rand>.json`, naming the new objects (`outputs`) and the
ones they replace (`inputs`):

1. the marker is written (nothing has changed yet);
2. the outputs are published;
3. the inputs are deleted;
4. the marker is deleted.

Readers (`lake.remote_partition_files`: `sql`, `status`, `recorder.connect()`) honour a marker
they find: with every output there, its inputs are hidden (step 3 is under way or was
interrupted); otherwise its outputs that are there are hidden (step 2 was). So a process killed
at any step leaves the readers neither doubled nor missing rows. The next `compact` or
`candles build` on the bucket settles what it finds (`settle_markers`): finishes a marker whose
outputs are all there, rolls back (deletes the published outputs of) one whose outputs are not
and that is older than `STALE_MARKER` seconds or was left by a dead process of this host. Any
other may belong to a process still publishing: it is left alone, and so are the partitions it
names.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from recorder.errors import RecorderError
from recorder.lake import MARKERS_DIR, PARTITION_KEYS, Skipped, marker_hidden, partition_problem
from recorder.storage.layout import pid_alive, run_id, work_dir
from recorder.storage.objectstore import Publisher, S3Url, _error_line, check_bucket
from recorder.storage.rawlog import SUFFIX

DOWNLOADS = 8  # objects fetched at once
STALE_MARKER = 600.0  # s: a marker without all its outputs older than this belongs to a dead process
MANIFEST_KEY = "candles/.state/manifest.json"


@dataclass(frozen=True, slots=True)
class Obj:
    """An object of the data dir: key relative to the prefix, size, ETag, LastModified (ns)."""

    rel: str
    size: int
    etag: str
    mtime_ns: int


class Bucket:
    """The few object-store calls maintenance needs, each failure a one-line RecorderError."""

    def __init__(self, url: S3Url, endpoint: str | None = None, s3: Any = None) -> None:
        self.url, self.endpoint = url, endpoint
        self.s3 = check_bucket(url, endpoint, s3)  # missing bucket, bad credentials, no endpoint

    def call(self, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.s3, method)(Bucket=self.url.bucket, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise RecorderError(_error_line(exc, self.url, self.endpoint)) from None

    def require_data(self) -> None:
        """Something is under the prefix: a mistyped prefix must not look like an empty recording."""
        if not self.call("list_objects_v2", Prefix=self.url.key(""), MaxKeys=1).get("Contents"):
            raise RecorderError(f"no data dir at {self.url} (nothing under that prefix)")

    def list(self, rel_prefix: str) -> dict[str, Obj]:
        """Every object under `rel_prefix` (relative to the data dir), by relative key."""
        from botocore.exceptions import BotoCoreError, ClientError

        base = self.url.key("")
        out: dict[str, Obj] = {}
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.url.bucket, Prefix=self.url.key(rel_prefix)
            )
            for page in pages:
                for o in page.get("Contents", []):
                    rel = o["Key"][len(base) :]
                    mtime = int(o["LastModified"].timestamp()) * 1_000_000_000
                    out[rel] = Obj(rel, int(o["Size"]), str(o.get("ETag", "")).strip('"'), mtime)
        except (BotoCoreError, ClientError) as exc:
            raise RecorderError(_error_line(exc, self.url, self.endpoint)) from None
        return out

    def list_keys(self, rels: Sequence[str]) -> list[str]:
        """Which of `rels` exist (one listing per distinct directory)."""
        dirs: dict[str, dict[str, Obj]] = {}
        found = []
        for rel in rels:
            d = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
            if d not in dirs:
                dirs[d] = self.list(d)
            if rel in dirs[d]:
                found.append(rel)
        return found

    def get(self, rel: str) -> tuple[bytes, str] | None:
        """An object's bytes and ETag (None if there is none)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            got = self.s3.get_object(Bucket=self.url.bucket, Key=self.url.key(rel))
            return got["Body"].read(), str(got.get("ETag", "")).strip('"')
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise RecorderError(_error_line(exc, self.url, self.endpoint)) from None
        except BotoCoreError as exc:
            raise RecorderError(_error_line(exc, self.url, self.endpoint)) from None

    def download(self, obj: Obj, dest: Path) -> Path:
        """The object as a local file whose size and mtime (= LastModified) are the same on every
        download: the candle builder's manifest and a merged file's lineage name files by them.
        One GET (a transfer manager would add a HEAD per object: most objects are small)."""
        from botocore.exceptions import BotoCoreError, ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            got = self.s3.get_object(Bucket=self.url.bucket, Key=self.url.key(obj.rel))
            with open(dest, "wb") as fh:
                for chunk in got["Body"].iter_chunks(1 << 20):
                    fh.write(chunk)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchKey":  # not "no such bucket"
                raise RecorderError(
                    f"{self.url}: {obj.rel} was deleted while it was read; run again"
                ) from None
            raise RecorderError(_error_line(exc, self.url, self.endpoint)) from None
        except BotoCoreError as exc:
            raise RecorderError(_error_line(exc, self.url, self.endpoint)) from None
        if dest.stat().st_size != obj.size:
            raise RecorderError(f"{self.url}: {obj.rel} changed while it was read; run again")
        os.utime(dest, ns=(obj.mtime_ns, obj.mtime_ns))
        return dest

    def download_all(self, objs: Iterable[Obj], root: Path) -> None:
        """`download` each object to `root / rel`, a few at a time (each is a round trip)."""
        with ThreadPoolExecutor(max_workers=DOWNLOADS) as pool:
            list(pool.map(lambda o: self.download(o, root / o.rel), objs))

    def put(self, rel: str, data: bytes, etag: str | None = None) -> None:
        """Write a small object: a new key (refused if there is one), or with `etag` the object
        of that ETag (refused if someone changed it since it was read)."""
        from botocore.exceptions import ClientError

        cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self.s3.put_object(Bucket=self.url.bucket, Key=self.url.key(rel), Body=data, **cond)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412):
                raise RecorderError(
                    f"{self.url}: {rel} was changed by another process meanwhile; nothing was replaced, run again"
                ) from None
            raise RecorderError(_error_line(exc, self.url, self.endpoint)) from None

    def delete(self, rels: Iterable[str]) -> None:
        rels = list(rels)
        for i in range(0, len(rels), 1000):  # the API's batch limit
            keys = [{"Key": self.url.key(r)} for r in rels[i : i + 1000]]
            got = self.call("delete_objects", Delete={"Objects": keys, "Quiet": True})
            if got.get("Errors"):
                e = got["Errors"][0]
                raise RecorderError(f"{self.url}: cannot delete {e.get('Key')}: {e.get('Code')}")


# ---- replacing objects crash-safely ------------------------------------------------------------


@dataclass
class Replacement:
    """Publish `outputs` (local files under `work`, same relative keys) in place of the objects
    `inputs`, in the marker's four steps (see the module docstring). `run()` does them all; the
    steps are separate methods so that an interruption can be reproduced exactly."""

    bucket: Bucket
    work: Path
    outputs: list[Path]
    inputs: list[str]
    marker: str = field(default_factory=lambda: f"{MARKERS_DIR}/{run_id()}-{uuid.uuid4().hex}.json")

    def rels(self) -> list[str]:
        return [p.relative_to(self.work).as_posix() for p in self.outputs]

    def begin(self) -> None:
        payload = {"outputs": self.rels(), "inputs": self.inputs, "at": time.time()}
        self.bucket.put(self.marker, orjson.dumps(payload))

    def publish(self) -> None:
        pub = Publisher(self.work, self.bucket.url, self.bucket.s3, self.bucket.endpoint)
        for p in self.outputs:
            pub.publish(p)  # conditional PUT, verified, then the local copy goes

    def retire(self) -> None:
        self.bucket.delete(self.inputs)

    def end(self) -> None:
        self.bucket.delete([self.marker])

    def rollback(self) -> None:
        """Undo `publish` (the inputs are untouched until `retire`)."""
        self.bucket.delete(self.rels())
        self.end()

    def claim(self) -> None:
        """After `begin`: back off (marker deleted, one-line error) if another process replaces the
        same inputs, e.g. two `compact` runs at once, which would otherwise both publish a merged
        copy of one partition. Each side writes its marker before it looks, so of two at once at
        least one sees the other's marker, or finds the inputs gone if the other has finished."""
        mine = set(self.inputs)
        others = [
            rel
            for rel, m in read_markers(self.bucket).items()
            if rel != self.marker and mine & set(m.get("inputs", []))
        ]
        if others or len(set(self.bucket.list_keys(self.inputs))) < len(mine):
            self.end()
            part = self.inputs[0].rsplit("/", 1)[0]
            raise RecorderError(
                f"{self.bucket.url}: {part} is being replaced by another process; nothing was replaced, run again"
            )

    def run(self) -> None:
        if not self.outputs and not self.inputs:
            return
        self.begin()
        if self.inputs:
            self.claim()
        self.publish()
        self.retire()
        self.end()


def read_markers(bucket: Bucket) -> dict[str, dict]:
    out = {}
    for rel in sorted(bucket.list(f"{MARKERS_DIR}/")):
        got = bucket.get(rel)
        if got is None:
            continue
        try:
            out[rel] = orjson.loads(got[0])
        except orjson.JSONDecodeError:
            out[rel] = {"outputs": [], "inputs": [], "at": 0}  # torn: written first, so nothing happened
    return out


def _dead_here(marker: str) -> bool:
    """Whether the marker's process ran on this host and is gone (`<host>_<pid>_<rand>-...`): its
    marker need not wait `STALE_MARKER` out. A pid that exists counts as alive (it may be reused)."""
    from recorder.storage.layout import _HOST

    run = marker.rsplit("/", 1)[-1].split("-", 1)[0]
    host, _, rest = run.rpartition("_")[0].rpartition("_")
    if host != _HOST or not rest.isdigit() or run == run_id():
        return False
    return not pid_alive(int(rest))


def settle_markers(bucket: Bucket, stale: float = STALE_MARKER) -> tuple[int, set[str]]:
    """Finish or roll back what killed processes left; returns (markers settled, the keys named
    by markers still in progress, to be left alone)."""
    settled = 0
    busy: set[str] = set()
    for rel, m in read_markers(bucket).items():
        outputs, inputs = list(m.get("outputs", [])), list(m.get("inputs", []))
        there = set(bucket.list_keys(outputs))
        if len(there) == len(set(outputs)):
            bucket.delete(inputs)  # every output is published: finish
        elif time.time() - float(m.get("at", 0)) >= stale or _dead_here(rel):
            bucket.delete(sorted(there))  # a dead process's half-published outputs: roll back
        else:
            busy |= {*outputs, *inputs}
            continue
        bucket.delete([rel])
        settled += 1
    return settled, busy


# ---- partitions of a table in the bucket ------------------------------------------------------


def partitions(objs: dict[str, Obj], table: str, skipped: list[Skipped], url: S3Url) -> dict[str, list[Obj]]:
    """The table's `*.parquet` objects by partition directory (`table/exchange=../symbol=../date=..`);
    stray directories are reported in `skipped` and left alone."""
    out: dict[str, list[Obj]] = {}
    bad: set[str] = set()
    for rel, obj in sorted(objs.items()):
        parts = rel.split("/")[1:]
        name = parts[-1]
        if (
            not name.endswith(".parquet")
            or name.startswith(".")
            or any(p.startswith(".") for p in parts[:-1])
        ):
            continue
        problem = (
            "not a partition directory"
            if len(parts) != 4
            else next(
                (p for k, d in zip(PARTITION_KEYS, parts[:3], strict=True) if (p := partition_problem(k, d))),
                None,
            )
        )
        where = "/".join([table, *parts[:-1]])
        if problem is not None:
            if where not in bad:
                bad.add(where)
                skipped.append(Skipped(table, f"{url}/{where}", problem))
            continue
        out.setdefault(where, []).append(obj)
    return out


def _matches(part: str, exchange: str | None, symbol: str | None) -> bool:
    bits = part.split("/")
    return (exchange is None or bits[1] == f"exchange={exchange}") and (
        symbol is None or bits[2] == f"symbol={symbol}"
    )


def visible(bucket: Bucket, objs: dict[str, Obj]) -> dict[str, Obj]:
    """`objs` as the readers see them: without what live markers hide."""
    hidden = marker_hidden(read_markers(bucket).values(), set(objs))
    return {k: v for k, v in objs.items() if k not in hidden}


# ---- compact ----------------------------------------------------------------------------------


def compact_bucket(
    url: S3Url,
    tables: list[str] | None = None,
    date: str | None = None,
    include_today: bool = False,
    endpoint: str | None = None,
):
    """`recorder compact` on a bucket: each finished date's partition of more than one object is
    downloaded, merged by the local `compact_partition` (same order, lineage and recovery
    positions) and replaced by one new object through a marker (`Replacement`)."""
    from recorder.model import SCHEMAS
    from recorder.storage.compact import DERIVED, CompactResult

    unknown = [t for t in tables or [] if t not in SCHEMAS or t in DERIVED]
    if unknown:
        choices = ", ".join(t for t in SCHEMAS if t not in DERIVED)
        raise RecorderError(f"cannot compact table(s) {', '.join(unknown)}; choose from {choices}")
    bucket = Bucket(url, endpoint)
    bucket.require_data()
    _, busy = settle_markers(bucket)
    res = CompactResult(today=dt.datetime.now(dt.UTC).date().isoformat())
    for table in tables or [t for t in SCHEMAS if t not in DERIVED]:
        objs = visible(bucket, bucket.list(f"{table}/"))
        for part, files in sorted(partitions(objs, table, res.skipped, url).items()):
            if res.passed_over(part.rsplit("date=", 1)[1], date, include_today, len(files)):
                continue
            if len(files) <= 1 or any(f.rel in busy for f in files):
                continue
            with work_dir("compact") as tmp:
                rep, rows = merge_partition(bucket, Path(tmp), table, part, files, res.skipped)
                if rep is None:
                    continue
                rep.run()
            res.partitions += 1
            res.files_in += len(rep.inputs)
            res.files_out += len(rep.outputs)
            res.rows += rows
    return res


def merge_partition(
    bucket: Bucket, work: Path, table: str, part: str, files: list[Obj], skipped: list[Skipped]
) -> tuple[Replacement | None, int]:
    """Download one partition's objects into `work` and merge them there with `compact_partition`;
    the replacement to run (None: nothing to merge) and the rows merged. Damaged objects are left
    out (and in the bucket), reported in `skipped`."""
    from recorder.storage.compact import compact_partition

    local = work / part
    bucket.download_all(files, work)
    damaged: list[Skipped] = []
    n, rows = compact_partition(local, table, damaged)
    url = bucket.url
    skipped += [
        Skipped(s.table, f"{url}/{Path(s.path).relative_to(work).as_posix()}", s.reason) for s in damaged
    ]
    if not n:
        return None, 0
    names = {f.rel.rsplit("/", 1)[1] for f in files}
    left = {p.name for p in local.glob("*.parquet")}
    merged = [f.rel for f in files if f.rel.rsplit("/", 1)[1] not in left]
    return Replacement(bucket, work, [local / name for name in sorted(left - names)], merged), rows


# ---- candles build ----------------------------------------------------------------------------


def mirror(
    bucket: Bucket, root: Path, tables: Sequence[str], exchange: str | None, symbol: str | None
) -> set[str]:
    """Download the visible objects of `tables` (optionally one exchange / symbol) under `root`;
    returns their relative keys."""
    wanted: list[Obj] = []
    for table in tables:
        objs = visible(bucket, bucket.list(f"{table}/"))
        for part, files in partitions(objs, table, [], bucket.url).items():
            if _matches(part, exchange, symbol):
                wanted += files
    bucket.download_all(wanted, root)
    return {f.rel for f in wanted}


def build_candles_bucket(
    url: S3Url,
    exchange: str | None = None,
    symbol: str | None = None,
    intervals: Sequence[str] | str | None = None,
    fill: bool = False,
    endpoint: str | None = None,
):
    """`recorder candles build` on a bucket: the stream's trades, events and candles and the
    builder's manifest are mirrored into a temp dir, the local builder runs there (incremental, as
    on a directory: mirrored files keep size and LastModified as mtime, so an unchanged date is
    skipped), then the candle objects it wrote are published and those it replaced deleted
    (`Replacement`), and the manifest is written back only if nobody changed it meanwhile (its
    ETag; a concurrent build makes this one roll back and say so)."""
    from recorder import venues
    from recorder.candles.build import DEFAULT_INTERVALS, build_candles
    from recorder.instruments import normalize

    exchange = venues.normalize(exchange) if exchange else None
    symbol = normalize(symbol) if symbol else None
    bucket = Bucket(url, endpoint)
    bucket.require_data()
    settle_markers(bucket)
    with work_dir("candles") as tmp:
        root = Path(tmp)
        mirror(bucket, root, ["trades", "events"], exchange, symbol)
        before = mirror(bucket, root, ["candles"], exchange, symbol)
        manifest = bucket.get(MANIFEST_KEY)
        path = root / MANIFEST_KEY
        path.parent.mkdir(parents=True, exist_ok=True)
        if manifest is not None:
            path.write_bytes(manifest[0])
        report = build_candles(root, exchange, symbol, intervals or DEFAULT_INTERVALS, fill=fill)
        after = {
            p.relative_to(root).as_posix()
            for p in (root / "candles").glob("*/*/*/*.parquet")
            if not p.name.startswith(".")
        }
        new = path.read_bytes() if path.exists() else None
        if after == before and (new is None or (manifest is not None and new == manifest[0])):
            return report  # nothing changed: no object written
        rep = Replacement(
            bucket, root, [root / rel for rel in sorted(after - before)], sorted(before - after)
        )
        files = bool(rep.outputs or rep.inputs)  # else only the manifest changed (footer facts)
        if files:
            rep.begin()
            rep.publish()
        if new is not None:
            try:
                bucket.put(MANIFEST_KEY, new, manifest[1] if manifest is not None else None)
            except RecorderError:
                if files:
                    rep.rollback()
                raise
        if files:
            rep.retire()
            rep.end()
    return report


def fetch_raw(url: S3Url, root: Path, endpoint: str | None = None) -> Path:
    """`recorder replay s3://bucket/prefix/raw/...`: the raw logs under the URL (one log, or a folder
    of them), downloaded under `root` by their keys, so that `raw/exchange=../date=../` stays the
    layout replay reads (a connection's parts side by side). Returns the URL's local path."""
    bucket = Bucket(S3Url(url.bucket, ""), endpoint)
    folder = url.prefix.rstrip("/") + "/"
    wanted = [
        o for o in bucket.list(url.prefix).values()
        if (o.rel == url.prefix or o.rel.startswith(folder)) and o.rel.endswith(SUFFIX)
    ]  # fmt: skip
    if not wanted:
        raise RecorderError(f"no raw logs at {url}")
    bucket.download_all(wanted, root)
    return root / url.prefix
