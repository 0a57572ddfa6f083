"""Temp work dirs (`layout.work_dir`): a process killed inside one cannot remove it, so each new one
removes those of processes that are gone, and never one of a live process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from recorder.storage import layout


def test_a_new_work_dir_removes_those_of_dead_processes_only(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where gettempdir() points
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    dead = tmp_path / f"recorder-compact-{gone.stdout.strip()}-abc123"
    live = tmp_path / f"recorder-sql-{os.getppid()}-def456"  # our parent: alive
    other = tmp_path / "recorder-notes"  # not a work dir: no pid in its name
    for d in (dead, live, other):
        (d / "x").mkdir(parents=True)
    with layout.work_dir("candles") as mine:
        assert mine.startswith(str(tmp_path / f"recorder-candles-{os.getpid()}-"))
        assert not dead.exists() and live.exists() and other.exists()
        with layout.work_dir("replay"):
            kinds = sorted(p.name.split("-")[1] for p in tmp_path.iterdir())
            assert kinds == ["candles", "notes", "replay", "sql"], "its own process's dirs stay"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
