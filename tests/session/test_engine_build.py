"""The hot path's C build (`recorder/_engine.pyx`) is the Python's, only faster: the book engine
gives the same outcomes, books, counters and `book_updates` bytes for any message sequence, and the
raw log the same records (hypothesis); it is adopted only when it is the build of the source beside
it, and built wherever the README's install ran (CI)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder import native
from recorder.model import BookMessage
from recorder.session import book
from recorder.storage import rawlog
from recorder.storage.bookrows import BookRows
from recorder.venues.bitmart_spot import VersionChain
from recorder.venues.contract import Verdict

ROOT = Path(__file__).resolve().parents[2]
# what `_import_in` prints when the Python build runs
PURE = ["False", "recorder.session.book", "recorder.session.dispatcher", "recorder.storage.rawlog"]
needs_build = pytest.mark.skipif(
    not native.COMPILED and not os.environ.get("CI"), reason="the C build of the book engine is not built here"
)


class BackwardsIsRestart:
    def check(self, local, m):
        return Verdict.GAP if m.seq > local else Verdict.RESTART if m.seq < local else Verdict.OUT_OF_ORDER


POLICIES = {"strict": lambda: None, "version_chain": VersionChain, "restart": BackwardsIsRestart}

# prices on a small grid so that updates hit, delete and cross existing levels; amounts with zeros
# (deletes), -0.0, and levels no book has (nan, inf, negative); now and then an int or a value no
# column holds
_bad = st.sampled_from([float("nan"), float("inf"), -1.0, -0.5])
_price = st.sampled_from([9.0, 9.5, 10.0, 10.5, 11.0, 11.5, 12.0]) | st.just(10) | _bad
_amount = st.sampled_from([0.0, -0.0, 1.0, 2.5, 0.001]) | _bad | st.just(3)
_level = st.tuples(_price, _amount)
_odd = st.sampled_from([None, 2**64, -(2**63) - 1, "7", 1.5])
_message = st.fixed_dictionaries(
    {
        "step": st.sampled_from([1, 1, 1, 1, 0, 2, -1, -5]),  # seq relative to the last one sent
        "snap": st.booleans() | st.just(False),
        "bids": st.lists(_level, max_size=4),
        "asks": st.lists(_level, max_size=4),
        "ts": st.integers(0, 2**40) | _odd,
        "seq_none": st.integers(0, 30).map(lambda x: x == 0),
        "bad_price": st.integers(0, 40).map(lambda x: x == 0),
    }
)


def _state(s) -> tuple:
    b = s.book
    return (
        s.seq, s.valid, s.gaps, s.expected, s.snapshots, s.last_ts,
        repr(b.bids), repr(b.asks), repr(b._best_bid), repr(b._best_ask), bytes(s.rows.buf),
    )  # fmt: skip


def _try(f) -> str:
    try:
        return repr(f())
    except Exception as exc:
        return type(exc).__name__


def _run(cls, policy: str, messages: list[dict]) -> list:
    s = cls(BookRows(), POLICIES[policy]())
    seq, out = 100, []
    for m in messages:
        seq += m["step"]
        bids = list(m["bids"])
        if m["bad_price"]:
            bids.append(("x", 1.0))  # a value no column (and no comparison) holds
        msg = BookMessage("X", None if m["seq_none"] else seq, m["snap"], m["ts"], bids, list(m["asks"]))
        try:
            outcome = s.on_message(msg, 5)
        except Exception as exc:  # both builds must fail alike, and leave the same state
            outcome = type(exc).__name__
        out.append((outcome, _state(s)))
        out.append(tuple(_try(f) for f in (s.book.best_bid, s.book.best_ask, lambda: s.book.top(2))))
    s.invalidate()
    out.append(_state(s))
    return out


@needs_build
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(POLICIES)), st.lists(_message, max_size=25))
def test_the_c_build_does_what_book_py_does(policy, messages) -> None:
    pure = _run(book.PureBookSync, policy, messages)
    compiled = _run(book.BookSync, policy, messages)
    assert compiled == pure


_key = st.floats(-1e6, 1e6, width=64) | st.integers(-5, 5) | st.just(float("nan"))


@needs_build
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_key, st.floats(0, 10)), max_size=60), st.lists(st.tuples(_key, st.floats(0, 10)), max_size=60),
       st.integers(-1, 70))
def test_the_c_top_of_book_is_heapqs(bids, asks, n) -> None:
    """`OrderBook.top` of the C build (one pass on C doubles) gives heapq's answer, the Python
    build's: same items, same order, for any sizes, insertion orders, int keys and NaN keys."""
    books = [cls() for cls in (book.PureOrderBook, book.OrderBook)]
    for b in books:
        b.bids.update(bids)
        b.asks.update(asks)
    pure, compiled = (b.top(n) for b in books)
    assert repr(compiled) == repr(pure)


_record = st.tuples(
    st.integers(0, 2**62),
    st.binary(max_size=300) | st.text(max_size=40) | st.binary(max_size=20).map(bytearray),
    st.sampled_from([rawlog.FRAME, rawlog.BADFRAME, rawlog.SENT, rawlog.EVENT]),
)


@needs_build
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_record, max_size=40), st.integers(0, 40))
def test_the_raw_log_records_the_same_bytes(tmp_path, records, flush_at) -> None:
    """The same records, counters and positions from both builds, and files that read back alike."""
    logs = {cls: cls(tmp_path / cls.__name__, "bitmart", {"topics": []}) for cls in (rawlog.PureRawLog, rawlog.RawLog)}
    seen = {}
    for cls, log in logs.items():
        for i, (t, payload, kind) in enumerate(records):
            if i == flush_at:
                log.flush()
            log.frame(t, payload, kind)
        seen[cls] = (bytes(log._buf), log.records, log.buffered_records, log.position, log.buffered_since)
        log.close()
        back = [rawlog.read_records(p) for p in log.paths]
        seen[cls] += ([(t, k, bytes(p)) for r in back for t, k, p in r if k != rawlog.HEADER],)
    pure, compiled = seen.values()
    assert compiled == pure
    assert [r[2] for r in pure[-1]] == [p.encode() if isinstance(p, str) else bytes(p) for _, p, _ in records]


@needs_build
def test_the_c_build_is_adopted_and_is_the_build_of_its_source() -> None:
    """Wherever the README's install ran (CI included), the C build runs, and it is the build of the
    .pyx in the tree (a stale build would not be adopted: next test)."""
    assert native.COMPILED
    assert book.BookSync is not book.PureBookSync
    from recorder import _engine

    pyx = ROOT / "recorder" / "_engine.pyx"
    assert hashlib.sha256(pyx.read_bytes()).hexdigest() == _engine.SOURCE_SHA256


def _import_in(tree: Path, env: dict) -> subprocess.CompletedProcess:
    code = (
        "from recorder import native; from recorder.session import book, dispatcher; from recorder.storage import rawlog; "
        "print(native.COMPILED, book.BookSync.__module__, dispatcher.Dispatcher.__mro__[2].__module__, "
        "rawlog.RawLog.__mro__[2].__module__)"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_build
def test_a_build_older_than_its_source_is_not_adopted(tmp_path) -> None:
    """Edit the .pyx without rebuilding: the package runs book.py's classes and says why, once."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "recorder", tree / "recorder", ignore=shutil.ignore_patterns("__pycache__"))
    fresh = _import_in(tree, {})
    assert fresh.stdout.split() == ["True", *["recorder._engine"] * 3], fresh.stderr
    pyx = tree / "recorder" / "_engine.pyx"
    pyx.write_text(pyx.read_text() + "\n# edited after the build\n")
    stale = _import_in(tree, {})
    assert stale.returncode == 0, stale.stderr
    assert stale.stdout.split() == PURE
    assert "older than" in stale.stderr and "pip install -e ." in stale.stderr
    assert len(stale.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("value", "pure"), [("1", True), ("yes", True), ("0", False), ("False", False), (" off ", False)])
def test_recorder_pure_python_selects_the_python_build(value, pure) -> None:
    r = _import_in(ROOT, {native.PURE_ENV: value})
    assert r.returncode == 0, r.stderr
    if pure:
        assert r.stdout.split() == PURE
    elif native.COMPILED:
        assert r.stdout.split() == ["True", *["recorder._engine"] * 3]
