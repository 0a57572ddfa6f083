"""The hot path's optional C build: `recorder/_engine.pyx` (Cython), adopted only when it is the build
of the source beside it.

`session/book.py` (the book engine), `session/dispatcher.py` (the per-frame path) and
`storage/rawlog.py` (the raw log's record buffer) define their classes in Python, and those are
the definition and the fallback. `_engine.pyx` is the C build of their per-message parts, step for
step; where it is built and current, those modules run on it (~2-3 µs a message less,
README "Hot path, fourth pass"). The tests run both builds and compare them.

`ENGINE` is the built module or None: None when it was not built (no C compiler at install time),
when `RECORDER_PURE_PYTHON` is set (to anything but "", 0, false, no, off, any case), or when the build is older than
its .pyx (an edited source not rebuilt: a warning says so once, and the pure build runs; a build
never runs code other than its source's).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from types import ModuleType

PURE_ENV = "RECORDER_PURE_PYTHON"
SOURCE = Path(__file__).with_name("_engine.pyx")
_OFF = ("", "0", "false", "no", "off")  # RECORDER_PURE_PYTHON=false means the C build, as a reader expects


def _load() -> ModuleType | None:
    if os.environ.get(PURE_ENV, "").strip().lower() not in _OFF:
        return None
    try:
        from recorder import _engine
    except ImportError:
        return None
    if SOURCE.exists() and hashlib.sha256(SOURCE.read_bytes()).hexdigest() != _engine.SOURCE_SHA256:
        logging.getLogger("recorder").warning(
            "the compiled hot path is older than %s: running the pure-Python one (rebuild with `pip install -e .`)",
            SOURCE,
        )
        return None
    return _engine


ENGINE = _load()
COMPILED = ENGINE is not None
