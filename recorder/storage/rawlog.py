"""Raw capture: every frame as received (after inflate), every message sent, every boundary.

One zstd-compressed, append-only log per connection, rotated hourly and by size, under
`DATA_DIR/raw/exchange=<ex>/date=<YYYY-MM-DD>/<unique>.rawlog.zst`. It is the source from which
every table can be re-derived (`recorder replay`). A record is `<recv_us:int64><kind:uint8>
<length:uint32><payload>`, little-endian. The first record of a file is a JSON header describing
the connection (exchange, topics and symbols), so a file replays on its own.

Durability: records reach the compressed stream (and the OS) every `flush_interval` (0.2 s), and are
fsynced every `fsync_interval` (5 s). A killed process loses at most the last 0.2 s; a machine
crash at most the last 5 s. A file cut short (crash) is read up to its last complete record.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import orjson
import zstandard

from recorder.storage.layout import run_id, unique_name

HEADER, FRAME, BADFRAME, SENT, EVENT, TICK = 0, 1, 2, 3, 4, 5
_REC = struct.Struct("<qBI")
SUFFIX = ".rawlog.zst"


def raw_dir(data_dir: str | Path, exchange: str, date: str) -> Path:
    return Path(data_dir) / "raw" / f"exchange={exchange}" / f"date={date}"


class RawLog:
    """Append-only raw capture for one connection. Not thread-safe: use from the event loop."""

    def __init__(
        self,
        data_dir: str | Path,
        exchange: str,
        header: dict,
        connection: int = 0,
        rotate_seconds: float = 3600.0,
        rotate_bytes: int = 512 * 1024 * 1024,
        fsync_interval: float = 5.0,
    ) -> None:
        self.data_dir, self.exchange, self.connection = Path(data_dir), exchange, connection
        self.run = run_id()
        self.header = {**header, "run": self.run, "connection": connection}
        self.part = -1  # rotation index; the first file is part 0
        self.records = 0  # records in the current part (header included)
        self.rotate_seconds, self.rotate_bytes = rotate_seconds, rotate_bytes
        self.fsync_interval = fsync_interval
        self._buf = bytearray()
        self._file: BinaryIO | None = None
        self._stream: zstandard.ZstdCompressionWriter | None = None
        self.path: Path | None = None
        self._opened = 0.0
        self._raw_bytes = 0
        self._last_fsync = 0.0
        self.paths: list[Path] = []

    def _open(self, now_us: int) -> None:
        date = time.strftime("%Y-%m-%d", time.gmtime(now_us / 1e6))
        d = raw_dir(self.data_dir, self.exchange, date)
        d.mkdir(parents=True, exist_ok=True)
        self.part += 1
        self.path = d / unique_name(SUFFIX, tag=f"c{self.connection}p{self.part}")
        self._file = open(self.path, "wb")  # noqa: SIM115 - owned until close()
        self._stream = zstandard.ZstdCompressor(level=3).stream_writer(self._file, closefd=False)
        self._opened = time.monotonic()
        self._raw_bytes = 0
        self.records = 0
        self.paths.append(self.path)
        self.frame(now_us, orjson.dumps({**self.header, "part": self.part}), HEADER)

    @property
    def position(self) -> tuple[int, int]:
        """(part, records): how far this connection's inputs have been captured."""
        return self.part, self.records

    def frame(self, recv_us: int, payload: bytes | str, kind: int = FRAME) -> None:
        if self._stream is None:
            self._open(recv_us)
        data = payload.encode() if isinstance(payload, str) else payload
        self.records += 1
        buf = self._buf
        buf += _REC.pack(recv_us, kind, len(data))
        buf += data

    def sent(self, t: int, text: str) -> None:
        self.frame(t, text, SENT)

    def event(self, t: int, channel: str | None, event: str, detail: str) -> None:
        self.frame(t, orjson.dumps([channel, event, detail]), EVENT)

    def tick(self, t: int) -> None:
        self.frame(t, b"", TICK)

    def flush(self, force_sync: bool = False) -> None:
        """Hand buffered records to the compressed file; rotate and fsync when due."""
        if self._stream is None:
            return
        if self._buf:
            self._raw_bytes += len(self._buf)
            self._stream.write(self._buf)
            self._buf = bytearray()
        self._stream.flush(zstandard.FLUSH_BLOCK)  # decodable up to here, even if we die now
        now = time.monotonic()
        if force_sync or now - self._last_fsync >= self.fsync_interval:
            self._last_fsync = now
            os.fsync(self._file.fileno())
        if now - self._opened >= self.rotate_seconds or self._raw_bytes >= self.rotate_bytes:
            self.close()

    def close(self) -> None:
        if self._stream is None:
            return
        if self._buf:
            self._stream.write(self._buf)
            self._buf = bytearray()
        self._stream.flush(zstandard.FLUSH_FRAME)
        self._stream.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._stream = self._file = None


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
