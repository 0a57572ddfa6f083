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


def adapter(exchange: str) -> ModuleType:
    mod = ADAPTERS.get(exchange.lower())
    if mod is None:
        raise RecorderError(f"unknown exchange {exchange!r}; known: {', '.join(names())}")
    return importlib.import_module(mod)
