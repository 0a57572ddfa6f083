"""Raw capture: every frame as received (after inflate), every message sent, every boundary.

One zstd-compressed, append-only log per connection, rotated hourly and by size, under
`DATA_DIR/raw/exchange=<ex>/date=<YYYY-MM-DD>/<unique>.rawlog.zst`. It is the source from which
every table can be re-derived (`recorder replay`). A record is `<recv_us:int64><kind:uint8>
<length:uint32><payload>`, little-endian. The first record of a file is a JSON header describing
the connection (exchange, topics and symbols), so a file replays on its own.

Durability: buffered records are appended as one zstd frame (a file is a plain concatenation of
zstd frames, readable by `zstd -d`) every 0.2 s, and fsynced every 5 s. A killed process loses at
most the last 0.2 s; a machine crash at most the last 5 s. A file cut short is read up to its last
complete frame.

A full disk: each open log keeps disk space allocated past its end (`fallocate` with
FALLOC_FL_KEEP_SIZE, Linux; the file size does not change), so appends still land when the disk
fills, a stop included: the raw log, from which every table can be recovered, is the last thing to
run out of space. Closing a log gives the unused reserve back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import zstandard

from recorder import native
from recorder.storage.layout import run_id, unique_name

HEADER, FRAME, BADFRAME, SENT, EVENT, TICK, REST = 0, 1, 2, 3, 4, 5, 6
_REC = struct.Struct("<qBI")
SUFFIX = ".rawlog.zst"
RESERVE_BYTES = 16 * 1024 * 1024  # disk space held past the end of each open log (see module doc)
_MIN_RESERVE = 64 * 1024
_KEEP_SIZE = 0x01  # FALLOC_FL_KEEP_SIZE


def _load_fallocate() -> Callable[[int, int, int, int], int] | None:
    try:  # fallocate64: 64-bit offsets on 32-bit builds too (where plain fallocate takes a 32-bit off_t)
        fn = ctypes.CDLL(None, use_errno=True).fallocate64
    except (OSError, AttributeError):
        return None  # not Linux/glibc: no reserve
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()


def reserve_space(fd: int, offset: int, size: int) -> int:
    """Allocate up to `size` bytes at `offset` without changing the file's size; on a disk too full
    for all of it, as much as fits (halving down to 64 KiB). Returns the bytes reserved."""
    while _fallocate is not None and size >= _MIN_RESERVE:
        if _fallocate(fd, _KEEP_SIZE, offset, size) == 0:
            return size
        if ctypes.get_errno() != errno.ENOSPC:
            return 0  # the file system cannot (EOPNOTSUPP...): no reserve there
        size //= 2
    return 0


def raw_dir(data_dir: str | Path, exchange: str, date: str) -> Path:
    return Path(data_dir) / "raw" / f"exchange={exchange}" / f"date={date}"


class _Records:
    """The raw log's per-frame step (pure-Python build; `_engine.Records` is its C build, which
    `RawLog` runs on where it is adopted: `recorder.native`)."""

    def frame(self, recv_us: int, payload: bytes | str, kind: int = FRAME) -> None:
        """Buffer one record (no I/O here: a full disk must not break the receive path)."""
        if self._need_header:
            self._start_part(recv_us)
        if type(payload) is str:
            payload = payload.encode()
        self.records += 1  # _append(), inlined: this runs once a frame
        self._buffered_records += 1
        buf = self._buf
        buf += _REC.pack(recv_us, kind, len(payload))
        buf += payload


class RawLogBase:
    """Append-only raw capture for one connection. Not thread-safe: use from the event loop.

    Each `flush()` appends the buffered records as one independent zstd frame with a single write;
    a failed write (disk full) is truncated away and its records stay buffered for the next try, so
    the file never holds a record twice or a torn record in the middle.
    """

    def __init__(
        self,
        data_dir: str | Path,
        exchange: str,
        header: dict,
        connection: int = 0,
        rotate_seconds: float = 3600.0,
        rotate_bytes: int = 512 * 1024 * 1024,
        fsync_interval: float = 5.0,
        reserve_bytes: int = RESERVE_BYTES,
    ) -> None:
        self.data_dir, self.exchange, self.connection = Path(data_dir), exchange, connection
        self.run = run_id()
        self.header = {**header, "run": self.run, "connection": connection}
        self.rotate_seconds, self.rotate_bytes = rotate_seconds, rotate_bytes
        self.fsync_interval = fsync_interval
        self.reserve_bytes = reserve_bytes
        self._reserved_end = 0  # the file's space is allocated up to this offset
        # level 1: on market-data records as small as 170 B it compresses as well as 3 (17.3 vs 17.0 B
        # a frame on the BitMart tape) for 0.16 µs a frame less (benchmarks/bench_hotpath.py)
        self._cctx = zstandard.ZstdCompressor(level=1)
        self._buf = bytearray()
        self._fd: int | None = None
        self._size = 0  # bytes in the current file
        self.path: Path | None = None
        self.part = -1  # rotation index; the first file is part 0
        self.records = 0  # records in the current part (header included), buffered ones too
        self._buffered_records = 0
        self._need_header = True  # the next record starts a part (first one, or after close/drop)
        self._part_start_us = 0
        self._opened = 0.0
        self._raw_bytes = 0
        self.bytes_written = 0
        self._last_fsync = 0.0
        self.paths: list[Path] = []

    def _start_part(self, now_us: int) -> None:
        """Begin the next part: its header goes into the buffer; the file is opened by flush()."""
        self._need_header = False
        self.part += 1
        self.records = 0
        self._part_start_us = now_us
        self._opened = time.monotonic()
        self._raw_bytes = 0
        self._append(now_us, HEADER, orjson.dumps({**self.header, "part": self.part}))

    def _open_file(self) -> None:
        date = time.strftime("%Y-%m-%d", time.gmtime(self._part_start_us / 1e6))
        d = raw_dir(self.data_dir, self.exchange, date)
        d.mkdir(parents=True, exist_ok=True)
        path = d / unique_name(SUFFIX, tag=f"c{self.connection}p{self.part}")
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self.path = path
        self._size = self._reserved_end = 0
        self.paths.append(path)
        self._reserve()

    def _reserve(self) -> None:
        """Top the reserve up once less than half of it is left (a failure only means less reserve)."""
        if self._fd is None or self._reserved_end - self._size >= self.reserve_bytes // 2:
            return
        got = reserve_space(self._fd, self._size, self.reserve_bytes)
        if got:
            self._reserved_end = self._size + got

    @property
    def position(self) -> tuple[int, int]:
        """(part, records): how far this connection's inputs have been captured."""
        return self.part, self.records

    @property
    def open_path(self) -> Path | None:
        """The file being appended to (None once closed): not finished, so not to be shipped."""
        return self.path if self._fd is not None else None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    @property
    def buffered_records(self) -> int:
        return self._buffered_records

    @property
    def buffered_since(self) -> int | None:
        """Receive time of the oldest record not yet written (the first one in the buffer)."""
        return _REC.unpack_from(self._buf, 0)[0] if self._buf else None

    def _append(self, t: int, kind: int, data: bytes) -> None:
        self.records += 1
        self._buffered_records += 1
        buf = self._buf
        buf += _REC.pack(t, kind, len(data))
        buf += data

    def sent(self, t: int, text: str) -> None:
        self.frame(t, text, SENT)

    def event(
        self, t: int, channel: str | None, event: str, detail: str, cause: str | None = None, topic: str | None = None
    ) -> None:
        """An EVENT record: `[channel, event, detail, cause, topic]` (format 1 logs hold the first three)."""
        self.frame(t, orjson.dumps([channel, event, detail, cause, topic]), EVENT)

    def rest(self, t: int, poll: str, wire: str, body: object) -> None:
        """A REST answer whose content becomes rows (a venue's poll): `{"poll", "wire", "body"}`."""
        self.frame(t, orjson.dumps({"poll": poll, "wire": wire, "body": body}), REST)

    def tick(self, t: int) -> None:
        self.frame(t, b"", TICK)

    def flush(self) -> None:
        """Append buffered records as one zstd frame; fsync and rotate when due. Raises OSError."""
        if not self._buf and self._fd is None:
            return
        self._write_buffer()
        now = time.monotonic()
        if now - self._last_fsync >= self.fsync_interval:
            self._last_fsync = now
            os.fsync(self._fd)
        if now - self._opened >= self.rotate_seconds or self._raw_bytes >= self.rotate_bytes:
            self.close()

    def sync(self) -> None:
        """Write and fsync now (before tables claim these records: they must survive a power loss)."""
        self._write_buffer()
        if self._fd is not None:
            os.fsync(self._fd)
            self._last_fsync = time.monotonic()

    def _write_buffer(self) -> None:
        if self._buf:
            if self._fd is None:
                self._open_file()
            frame = self._cctx.compress(self._buf)  # read in place: no copy of the buffer
            try:
                written = 0
                while written < len(frame):
                    written += os.write(self._fd, frame[written:])
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)  # no torn frame left behind
                self._reserved_end = self._size  # truncating freed the reserve too: top it up later
                raise
            self._size += len(frame)
            self.bytes_written += len(frame)  # all parts (metrics)
            self._reserve()
            self._raw_bytes += len(self._buf)
            self._buf = bytearray()
            self._buffered_records = 0

    def drop_buffer(self) -> int:
        """Last resort when the disk refuses writes for too long: forget buffered records.

        Positions stay true to the file: the dropped records are un-counted, and a part whose
        header was among them starts again (same part number) with the next record.
        """
        n = len(self._buf)
        self.records -= self._buffered_records
        self._buf = bytearray()
        self._buffered_records = 0
        if self._fd is None:  # the header was dropped too
            self.part -= 1
            self._need_header = True
        return n

    def close(self) -> None:
        """Write what is buffered and close; on OSError the file stays open for a later retry.

        The next record starts a new part.
        """
        self._write_buffer()
        if self._fd is not None:
            os.fsync(self._fd)
            release_reserve(self._fd)
            os.close(self._fd)
            self._fd = None
        self._need_header = True


class PureRawLog(RawLogBase, _Records):
    """The raw log on the pure-Python per-frame step (what `RawLog` is without the C build)."""


if native.ENGINE is not None:

    class RawLog(RawLogBase, native.ENGINE.Records):  # type: ignore[misc,name-defined]
        """The raw log on the C build of its per-frame step (`_engine.Records`)."""

else:
    RawLog = PureRawLog  # type: ignore[misc]


def release_reserve(fd_or_path: int | str | Path) -> None:
    """Free the space a log holds past its end (also for logs of crashed runs): truncating to the
    current size drops the blocks beyond it."""
    with contextlib.suppress(OSError):
        if isinstance(fd_or_path, int):
            os.ftruncate(fd_or_path, os.fstat(fd_or_path).st_size)
        else:
            os.truncate(fd_or_path, os.stat(fd_or_path).st_size)


def read_records(path: str | Path) -> Iterator[tuple[int, int, bytes]]:
    """(time_us, kind, payload) for every complete record; a truncated tail is ignored."""
    buf = b""
    for chunk in _decompressed_chunks(Path(path)):
        buf = buf + chunk if buf else chunk
        pos, n = 0, len(buf)
        while pos + _REC.size <= n:
            t, kind, length = _REC.unpack_from(buf, pos)
            end = pos + _REC.size + length
            if end > n:
                break
            yield t, kind, buf[pos + _REC.size : end]
            pos = end
        buf = buf[pos:]


def _decompressed_chunks(path: Path) -> Iterator[bytes]:
    """Decompress frame after frame; a stream cut short by a crash yields what it holds."""
    d = zstandard.ZstdDecompressor().decompressobj()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            while chunk:
                try:
                    out = d.decompress(chunk)
                except zstandard.ZstdError:
                    return  # corrupt tail: keep what decoded before it
                if out:
                    yield out
                chunk = d.unused_data if d.eof else b""
                if d.eof:
                    d = zstandard.ZstdDecompressor().decompressobj()


def read_header(path: str | Path) -> dict | None:
    for _t, kind, payload in read_records(path):
        return orjson.loads(payload) if kind == HEADER else None
    return None


def list_logs(paths: list[str | Path]) -> list[Path]:
    """Expand files and directories into raw log files, in time order (names start with a stamp)."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(p.rglob(f"*{SUFFIX}")) if p.is_dir() else [p])
    return sorted(out, key=lambda p: p.name)
