"""Fixtures shared by the recorder's integration tests, and how many xdist workers run them."""

from __future__ import annotations

import os

import pytest

from recorder.sim import BitmartSpotSim

from .recording import SYMBOLS


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per core, at least two (most tests wait on sockets and timers, not CPU);
    RECORDER_TEST_WORKERS overrides."""
    return int(os.environ.get("RECORDER_TEST_WORKERS", 0)) or max(2, os.cpu_count() or 1)


@pytest.fixture
async def sim():
    # ~225 trades/s per symbol: the hundreds of trades a test needs take about a second
    s = BitmartSpotSim(symbols=list(SYMBOLS.values()), seed=7, rate=1000.0, heartbeat_interval=0.3)
    await s.start(host="127.0.0.1", port=0)
    try:
        yield s
    finally:
        await s.stop()
