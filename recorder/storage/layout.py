"""Where files live: the hive partition path of a table, and unique, glob-safe file names.

Every file name carries the id of the run (process) that wrote it: `<utc stamp>-<run>-<rand>`,
with run = `<host>_<pid>_<rand>`. Names are unique across processes and hosts, sort by creation
time, and let crash recovery find what a dead run published.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

from recorder.errors import RecorderError

_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"
_RUN: tuple[int, str] | None = None


def run_id() -> str:
    """This process's run id (recomputed after fork)."""
    global _RUN
    if _RUN is None or _RUN[0] != os.getpid():
        _RUN = (os.getpid(), f"{_HOST}_{os.getpid()}_{uuid.uuid4().hex[:8]}")
    return _RUN[1]


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists here (one of another user counts; a pid may be reused,
    so "alive" is the safe answer to any doubt)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


WORK_PREFIX = "recorder-"


def work_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A temp dir for `kind`'s work (`recorder-<kind>-<pid>-...`), gone when the `with` ends. A
    process killed inside one (SIGKILL, OOM) cannot remove it: each new one first removes those of
    processes that are gone (a compaction's can hold a day's partition)."""
    root = Path(tempfile.gettempdir())
    for d in root.glob(f"{WORK_PREFIX}*-*-*"):
        pid = d.name.removeprefix(WORK_PREFIX).split("-")[1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}{kind}-{os.getpid()}-")


def run_of(name: str) -> str | None:
    """The run id inside a file name made by `unique_name` (None for other names)."""
    parts = name.split("-")
    return parts[1] if len(parts) >= 3 else None


def partition_dir(data_dir: str | Path, table: str, exchange: str, symbol: str, date: str) -> Path:
    return Path(data_dir) / table / f"exchange={exchange}" / f"symbol={symbol}" / f"date={date}"


def stamp() -> str:
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1e6) % 1_000_000:06d}"


def unique_name(suffix: str = ".parquet", tag: str | None = None) -> str:
    """`<utc yyyymmddThhmmss.ffffff>-<run>-<tag or random><suffix>`."""
    return f"{stamp()}-{run_id()}-{tag or uuid.uuid4().hex[:12]}{suffix}"


def temp_path(final: Path) -> Path:
    """A name in the same directory that DuckDB's `*.parquet` glob can never match."""
    return final.with_name(f".{final.name}.tmp")


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def check_writable(data_dir: Path) -> None:
    """Create `data_dir` if needed and prove a file can be written there; RecorderError if not."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".write-probe-{time.time_ns()}.tmp"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise RecorderError(f"data dir {str(data_dir)!r} is not writable: {exc.strerror or exc}") from None
