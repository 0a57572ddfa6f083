"""Shared configuration of the candles tests."""

from __future__ import annotations


def pytest_configure(config):  # noqa: ANN001, ANN201
    config.addinivalue_line("markers", "history(minutes): trade history the simulator starts with")
