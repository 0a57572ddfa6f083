"""`--shard I/N`: which process records which market, with no coordinator.

Rendezvous (highest-random-weight) hashing: every shard index scores every (exchange, symbol) with
a stable hash (blake2b, never Python's per-process salted `hash()`), and the market belongs to the
shard with the highest score. Each process computes its own set from the market list alone; going
from N to N+1 shards moves only the markets whose new top score is shard N's, about 1/(N+1) of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from recorder.errors import RecorderError


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N; RecorderError otherwise (one line)."""
    try:
        i, n = (int(p) for p in text.strip().split("/"))
    except ValueError:
        raise RecorderError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), not {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise RecorderError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), not {text!r}")
    return i, n


def weight(exchange: str, symbol: str, shard: int) -> int:
    """The score of `shard` for a market: stable across processes, hosts and Python versions."""
    key = f"{exchange.lower()}\x00{symbol.upper()}\x00{shard}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def shard_of(exchange: str, symbol: str, count: int) -> int:
    """The shard (0..count-1) that records `symbol` of `exchange`."""
    return max(range(count), key=lambda i: (weight(exchange, symbol, i), -i))


def select(exchange: str, symbols: Iterable[str], shard: tuple[int, int] | None) -> list[str]:
    """The symbols of `symbols` that shard `shard` = (I, N) records, in their order (None: all)."""
    if shard is None:
        return list(symbols)
    i, n = shard
    return [s for s in symbols if shard_of(exchange, s, n) == i]
