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

import orjson
import pyarrow as pa

from recorder.storage.layout import unique_name

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
        rotate_seconds: float = 3600.0,
        rotate_bytes: int = 512 * 1024 * 1024,
        fsync_interval: float = 5.0,
    ) -> None:
        self.data_dir, self.exchange, self.header = Path(data_dir), exchange, header
        self.rotate_seconds, self.rotate_bytes = rotate_seconds, rotate_bytes
        self.fsync_interval = fsync_interval
        self._buf = bytearray()
        self._file: pa.OSFile | None = None
        self._stream: pa.CompressedOutputStream | None = None
        self.path: Path | None = None
        self._opened = 0.0
        self._raw_bytes = 0
        self._last_fsync = 0.0
        self.paths: list[Path] = []

    def _open(self, now_us: int) -> None:
        date = time.strftime("%Y-%m-%d", time.gmtime(now_us / 1e6))
        d = raw_dir(self.data_dir, self.exchange, date)
        d.mkdir(parents=True, exist_ok=True)
        self.path = d / unique_name().replace(".parquet", SUFFIX)
        self._file = pa.OSFile(str(self.path), "wb")
        self._stream = pa.CompressedOutputStream(self._file, "zstd")
        self._opened = time.monotonic()
        self._raw_bytes = 0
        self.paths.append(self.path)
        self._append(now_us, HEADER, orjson.dumps(self.header))

    def _append(self, t: int, kind: int, payload: bytes) -> None:
        self._buf += _REC.pack(t, kind, len(payload))
        self._buf += payload

    def frame(self, recv_us: int, payload: bytes | str, kind: int = FRAME) -> None:
        if self._stream is None:
            self._open(recv_us)
        data = payload.encode() if isinstance(payload, str) else payload
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
        self._stream.flush()
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
        self._stream.close()  # closes the file too, writing the zstd epilogue
        self._stream = self._file = None


def read_records(path: str | Path) -> Iterator[tuple[int, int, bytes]]:
    """(time_us, kind, payload) for every complete record; a truncated tail is ignored."""
    data = _read_all(Path(path))
    view = memoryview(data)
    pos, n = 0, len(data)
    while pos + _REC.size <= n:
        t, kind, length = _REC.unpack_from(view, pos)
        end = pos + _REC.size + length
        if end > n:
            break
        yield t, kind, bytes(view[pos + _REC.size : end])
        pos = end


def _read_all(path: Path) -> bytes:
    chunks: list[bytes] = []
    stream = pa.CompressedInputStream(str(path), "zstd")
    try:
        while True:
            chunk = stream.read(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        pass  # cut short by a crash: keep what decoded
    finally:
        stream.close()
    return b"".join(chunks)


def list_logs(paths: list[str | Path]) -> list[Path]:
    """Expand files and directories into raw log files, in time order (names start with a stamp)."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(p.rglob(f"*{SUFFIX}")) if p.is_dir() else [p])
    return sorted(out, key=lambda p: p.name)
