"""The hot path's optional C builds (Cython), each adopted only when it is the build of the source
beside it.

- `recorder/_engine.pyx`: `session/book.py` (the book engine), `session/dispatcher.py` (the per-frame
  path) and `storage/rawlog.py` (the raw log's record buffer) define their classes in Python, and
  those are the definition and the fallback; `_engine.pyx` is the C build of their per-message
  parts, step for step; where it is built and current, those modules run on it (~2-3 µs a message
  less, README "Hot path, fourth pass").
- A venue's own `recorder/venues/_<venue>.pyx` (`venue(__name__, __file__)` in the venue's module): the C
  build of its push reader, the common case of its Python `parse`, which stays the definition and
  takes everything the C build does not (README "Hot path, eighth pass").
- `recorder/transport/_websocket.pyx`: the websocket reader's frame loop (`WebSocket._frames`, whose
  Python stays as `WebSocket.python_frames`; README "Hot path, tenth pass").

The tests run both builds and compare them.

`ENGINE` (and what `venue()` returns) is the built module or None: None when it was not built (no C
compiler at install time), when `RECORDER_PURE_PYTHON` is set (to anything but "", 0, false, no, off,
any case), or when the build is older than its .pyx (an edited source not rebuilt: a warning says so
once, and the pure build runs; a build never runs code other than its source's).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from pathlib import Path
from types import ModuleType

PURE_ENV = "RECORDER_PURE_PYTHON"
SOURCE = Path(__file__).with_name("_engine.pyx")
_OFF = ("", "0", "false", "no", "off")  # RECORDER_PURE_PYTHON=false means the C build, as a reader expects


def load(name: str, source: Path) -> ModuleType | None:
    """The C build `name` of `source`, or None (not built, not wanted, or older than its source)."""
    if os.environ.get(PURE_ENV, "").strip().lower() not in _OFF:
        return None
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    if source.exists() and hashlib.sha256(source.read_bytes()).hexdigest() != module.SOURCE_SHA256:
        logging.getLogger("recorder").warning(
            "the compiled hot path is older than %s: running the pure-Python one (rebuild with `pip install -e .`)",
            source,
        )
        return None
    return module


def venue(module: str, path: str) -> ModuleType | None:
    """The C build of the venue module `module` at `path` (`recorder.venues.x`: `recorder.venues._x`,
    from `_x.pyx` beside it), or None."""
    package, _, leaf = module.rpartition(".")
    return load(f"{package}._{leaf}", Path(path).with_name(f"_{leaf}.pyx"))


ENGINE = load("recorder._engine", SOURCE)
COMPILED = ENGINE is not None
