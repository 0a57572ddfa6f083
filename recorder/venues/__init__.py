"""The venues the recorder speaks, by Hummingbot connector id: a registry built from the modules of
this package (each lists its `ENTRIES`), so adding a venue adds a module and touches nothing here.

`contract.py` defines what a venue module provides; `units.py` holds the conversions they share.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from recorder.errors import RecorderError
from recorder.venues.contract import Venue, VenueEntry

_NOT_VENUES = {"contract", "units"}


@cache
def _entries() -> dict[str, VenueEntry]:
    out: dict[str, VenueEntry] = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name in _NOT_VENUES or mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        if not hasattr(module, "ENTRIES"):  # a venue module that forgot to register must not vanish
            raise RuntimeError(f"{module.__name__} lists no ENTRIES (not a venue? add it to _NOT_VENUES)")
        for entry in module.ENTRIES:
            if entry.name in out:
                raise RuntimeError(f"venue {entry.name!r} registered twice")
            out[entry.name] = entry
    return out


def names() -> list[str]:
    return sorted(_entries())


def normalize(exchange: str) -> str:
    """The stored form of an exchange name: case-insensitive on input, always lower-case on disk.

    Partitions (`exchange=...`), per-stream locks and raw-log headers all use this form, so
    `BITMART` and `bitmart` are one exchange to every query, lock and replay."""
    return exchange.strip().lower()


def canonical(exchange: str) -> str:
    """`normalize(exchange)`, refusing names the recorder does not speak."""
    name = normalize(exchange)
    if name not in _entries():
        raise RecorderError(f"unknown exchange {exchange!r}; known: {', '.join(names())}")
    return name


@cache
def venue(exchange: str) -> Venue:
    """The venue adapter of `exchange` (any case); RecorderError naming the known ones if unknown."""
    return _entries()[canonical(exchange)].venue()


def simulator(exchange: str) -> type:
    """The simulator front-end class of `exchange`."""
    entry = _entries()[canonical(exchange)]
    if entry.simulator is None:
        raise RecorderError(f"no simulator for {entry.name!r} yet")
    return entry.simulator()
