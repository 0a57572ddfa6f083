"""Run and stream locks: a start that fails leaves no lock file behind; a stopped recorder neither."""

from __future__ import annotations

import pytest

from ..test_cli import assert_one_line_error, free_port, run


@pytest.mark.parametrize(
    "args, needle",
    [
        (["NOPE-USDT"], "unknown symbol"),  # fails after the run lock was taken
        (["BTC-USDT", "--ws-url", "ws://127.0.0.1:{port}/api"], "cannot reach websocket"),  # after stream locks
    ],
)
def test_failed_start_leaves_no_lock_in_a_new_data_dir(tmp_path, args, needle):
    data = tmp_path / "fresh"
    args = [a.format(port=free_port()) for a in args]
    p = run("run", "bitmart", *args, "--sim", "--data-dir", str(data), "-q", cwd=tmp_path)
    assert_one_line_error(p, needle)
    left = [str(f.relative_to(data)) for f in data.rglob("*")] if data.exists() else []
    assert not [f for f in left if f.endswith(".lock")], left
    assert not left, f"a failed start left {left}"


def test_clean_stop_leaves_no_stream_lock(tmp_path):
    data = tmp_path / "data"
    p = run("run", "bitmart", "BTC-USDT", "--sim", "--duration", "1", "--data-dir", str(data), "-q", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert not list((data / ".runs").glob("*.lock")), sorted((data / ".runs").iterdir())
