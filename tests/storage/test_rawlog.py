"""Raw log: buffering never does I/O, a refused open or write keeps every record for the retry."""

from __future__ import annotations

import time

import pytest

from recorder import native
from recorder.storage import rawlog
from recorder.storage.rawlog import EVENT, FRAME, HEADER, raw_dir, read_records


@pytest.fixture(autouse=True, params=["pure", "compiled"])
def build(request, monkeypatch):
    """Run the test on one build of the per-frame step: `RawLog` below is that build's class."""
    if request.param == "compiled" and not native.COMPILED:
        pytest.skip("the C build of the hot path is not built here")
    monkeypatch.setitem(globals(), "RawLog", rawlog.RawLog if request.param == "compiled" else rawlog.PureRawLog)
    return request.param


RawLog = rawlog.RawLog


def test_disk_refusing_the_file_keeps_records_until_it_can(tmp_path):
    log = RawLog(tmp_path, "bitmart", {"topics": []}, connection=0)
    now = int(time.time() * 1e6)
    day = time.strftime("%Y-%m-%d", time.gmtime(now / 1e6))
    blocker = raw_dir(tmp_path, "bitmart", day)
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the date directory must go")
    log.frame(now, b'{"a":1}')  # no I/O here: must not raise
    log.event(now + 1, None, "connect", "x")
    try:
        log.flush()
        raise AssertionError("flush should have failed")
    except OSError:
        pass
    assert log.position == (0, 3)
    blocker.unlink()
    log.frame(now + 2, b'{"b":2}')
    log.close()
    records = list(read_records(log.paths[0]))
    assert [k for _, k, _ in records] == [HEADER, FRAME, EVENT, FRAME]
    assert log.position == (0, 4)


def test_rotation_starts_a_new_part_with_its_own_header(tmp_path):
    log = RawLog(tmp_path, "bitmart", {"topics": []}, connection=3, rotate_seconds=0.0)
    now = int(time.time() * 1e6)
    log.frame(now, b"1")
    log.flush()  # rotation due at once: closes part 0
    log.frame(now + 1, b"2")
    log.close()
    assert len(log.paths) == 2 and "c3p0" in log.paths[0].name and "c3p1" in log.paths[1].name
    for path, payload in zip(log.paths, (b"1", b"2"), strict=True):
        kinds = [(k, p) for _, k, p in read_records(path)]
        assert kinds[0][0] == HEADER and kinds[1] == (FRAME, payload)
