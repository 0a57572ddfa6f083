"""The exchanges the recorder speaks, by Hummingbot connector id, and their protocol adapters."""

from __future__ import annotations

import importlib
from types import ModuleType

from recorder.errors import RecorderError

ADAPTERS = {
    "bitmart": "recorder.protocols.bitmart_spot",
}


def names() -> list[str]:
    return sorted(ADAPTERS)


def normalize(exchange: str) -> str:
    """The stored form of an exchange name: case-insensitive on input, always lower-case on disk.

    Partitions (`exchange=...`), per-stream locks and raw-log headers all use this form, so
    `BITMART` and `bitmart` are one exchange to every query, lock and replay."""
    return exchange.strip().lower()


def canonical(exchange: str) -> str:
    """`normalize(exchange)`, refusing names the recorder does not speak."""
    name = normalize(exchange)
    if name not in ADAPTERS:
        raise RecorderError(f"unknown exchange {exchange!r}; known: {', '.join(names())}")
    return name


def adapter(exchange: str) -> ModuleType:
    return importlib.import_module(ADAPTERS[canonical(exchange)])
