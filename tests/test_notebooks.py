"""The notebooks in notebooks/ run top to bottom against one shared simulator recording and draw plots.

One recording (~20 s from the built-in simulator, via the real CLI) is made per test run, even with
several xdist workers, and handed to every notebook through RECORDER_NB_DATA, so 01 skips its own
recording step. Each notebook runs in a
fresh `python3` kernel of this interpreter (checked), headless.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
RECORD_SECONDS = 20
PROBE = "import sys; print(sys.prefix)"  # prepended in memory: which Python the kernel really is


@pytest.fixture(scope="session")
def recording(tmp_path_factory):
    # xdist workers each have a session: the first to take the lock records, the others reuse it
    # (a directory shared by this run's workers only; `xdist_group` is a no-op with pytest 9).
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    data, done = root / "nbdata", root / "nbdata.done"
    with open(root / "nbdata.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held at most as long as the recording below
        if not done.exists():
            subprocess.run(
                [sys.executable, "-m", "recorder.cli", "run", "bitmart", "BTC-USDT", "ETH-USDT", "--sim",
                 "--duration", str(RECORD_SECONDS), "--data-dir", str(data), "-q"],
                check=True, capture_output=True, timeout=RECORD_SECONDS + 40,
            )
            done.touch()
    assert any(data.glob("trades/*/*/*/*.parquet")), "the simulator recording wrote no trades"
    old = os.environ.get("RECORDER_NB_DATA")
    os.environ["RECORDER_NB_DATA"] = str(data)  # the kernels inherit it
    yield data
    if old is None:
        os.environ.pop("RECORDER_NB_DATA", None)
    else:
        os.environ["RECORDER_NB_DATA"] = old


def execute(name: str) -> tuple[list[str], int]:
    """Run a notebook; returns every text output (stdout and text/plain) and the number of PNG images."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(PROBE))
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    texts, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            images += "image/png" in data
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                texts.append(out["text"])
            elif "text/plain" in data:
                texts.append(data["text/plain"])
    assert texts[0].strip() == sys.prefix, "the kernel is not this interpreter"
    return texts, images


@pytest.mark.timeout(180)
def test_01_quickstart(recording):
    texts, images = execute("01_quickstart.ipynb")
    text = "\n".join(texts)
    assert images >= 1
    assert f"reusing the recording in {recording}" in text
    assert "1s candles" in text or "1m candles" in text
    assert any((recording / "candles").glob("*/*/*/*.parquet")), "no candles were built"


@pytest.mark.timeout(180)
def test_02_order_book(recording):
    texts, images = execute("02_order_book.ipynb")
    assert images >= 3  # depth ladder, spread/depth over time, imbalance scatter
    assert "top 20 identical: True" in "\n".join(texts)


@pytest.mark.timeout(180)
def test_03_data_quality(recording):
    texts, images = execute("03_data_quality.ipynb")
    text = "\n".join(texts)
    assert images >= 3  # two timelines, completeness heatmap
    assert "quickstart recording: 0 incidents" in text
    incidents = texts[-1]  # the drill's incident table
    for cause in ("gap", "error", "disconnect"):
        assert cause in incidents


@pytest.mark.timeout(240)
def test_04_perpetual(tmp_path, monkeypatch):
    # its own recording of both venues (spot and perpetual at once, one data dir), made by the notebook
    monkeypatch.setenv("RECORDER_NB_PERP_DATA", str(tmp_path / "perp"))
    monkeypatch.setenv("RECORDER_NB_SECONDS", str(RECORD_SECONDS))
    texts, images = execute("04_perpetual.ipynb")
    text = "\n".join(texts)
    assert images >= 3  # mark vs index with the basis, funding history, spot vs perp mid
    assert f"recorded bitmart and bitmart_perpetual for {RECORD_SECONDS} s" in text
    assert "BTC-USDT: funding pushes 1;" in text and "perp premium over spot" in text
