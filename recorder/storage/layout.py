"""Where files live: the hive partition path of a table, and unique, glob-safe file names."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

_HOST = socket.gethostname().replace("-", "_").replace(".", "_")[:32] or "host"


def partition_dir(data_dir: str | Path, table: str, exchange: str, symbol: str, date: str) -> Path:
    return Path(data_dir) / table / f"exchange={exchange}" / f"symbol={symbol}" / f"date={date}"


def unique_name(prefix: str = "") -> str:
    """A file name unique across processes and hosts, sortable by creation time.

    `<utc yyyymmddThhmmss.ffffff>-<host>-<pid>-<random>.parquet`
    """
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1e6) % 1_000_000:06d}"
    return f"{prefix}{stamp}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}.parquet"


def temp_path(final: Path) -> Path:
    """A name in the same directory that DuckDB's `*.parquet` glob can never match."""
    return final.with_name(f".{final.name}.tmp")


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")
