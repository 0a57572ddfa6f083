"""Fixtures shared by the recorder's integration tests."""

from __future__ import annotations

import pytest

from recorder.sim.bitmart import BitmartSpotSim

from .recording import SYMBOLS


@pytest.fixture
async def sim():
    # ~225 trades/s per symbol: the hundreds of trades a test needs take about a second
    s = BitmartSpotSim(symbols=list(SYMBOLS.values()), seed=7, rate=1000.0, heartbeat_interval=0.3)
    await s.start(host="127.0.0.1", port=0)
    try:
        yield s
    finally:
        await s.stop()
