"""`recorder run --config recorder.toml`: several venues and symbol sets in one process.

```toml
data_dir = "data"            # shared by every recording below (optional; else --data-dir)
flush_interval = 60          # optional, seconds
market_refresh = 600         # optional, seconds

[[record]]
exchange = "bitmart_perpetual"
all = true                   # every trading market ...
quote = ["USDT"]             # ... quoted in these
shard = "0/2"                # optional (else --shard, if given)

[[record]]
exchange = "altmarkets"
symbols = ["BTC-USDT", "ETH-USDT"]
channels = ["trades"]        # optional: the venue's default set
```

Every error is one line naming the file and the place (`recorder.toml: record[2]: ...`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from recorder import venues
from recorder.errors import RecorderError
from recorder.shards import parse_shard

TOP_KEYS = {"data_dir", "flush_interval", "market_refresh", "record"}
RECORD_KEYS = {"exchange", "symbols", "all", "quote", "shard", "channels", "ws_url", "rest_url", "market_refresh"}


@dataclass
class Plan:
    """One recording of a config: an exchange, its selection, its options."""

    exchange: str
    symbols: list[str]
    options: Any  # recorder.collector.Options (imported lazily: the CLI stays light)


def load(path: Path, base: Any, shard: tuple[int, int] | None = None) -> list[Plan]:
    """The recordings of the TOML file at `path`; `base` (Options) gives every default the file
    does not set, `shard` the shard of entries without their own. RecorderError: one line."""
    from recorder.collector import channels_of

    def bad(msg: str) -> RecorderError:
        return RecorderError(f"{path}: {msg}")

    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise RecorderError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise bad(f"not valid TOML ({exc})") from None
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise bad(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(TOP_KEYS))}")
    top: dict[str, Any] = {}
    if "data_dir" in doc:
        top["data_dir"] = _typed(doc, "data_dir", str, bad, "")
        top["data_dir"] = Path(top["data_dir"]) if "://" not in top["data_dir"] else top["data_dir"]
    for key in ("flush_interval", "market_refresh"):
        if key in doc:
            top[key] = _positive(doc, key, bad, "")
    entries = doc.get("record")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise bad("needs at least one [[record]] table (exchange = ..., symbols = [...] or all = true)")
    plans = []
    for n, e in enumerate(entries, 1):
        where = f"record[{n}]: "
        unknown = sorted(set(e) - RECORD_KEYS)
        if unknown:
            raise bad(f"{where}unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(RECORD_KEYS))}")
        if "exchange" not in e:
            raise bad(f"{where}missing exchange (one of {', '.join(venues.names())})")
        try:
            exchange = venues.canonical(_typed(e, "exchange", str, bad, where))
            venues.venue(exchange)
        except RecorderError as exc:
            raise bad(f"{where}{exc}") from None
        symbols = _strings(e, "symbols", bad, where)
        every = _typed(e, "all", bool, bad, where) if "all" in e else False
        if every == bool(symbols):
            raise bad(f"{where}give symbols = [...] or all = true, not both" if every else
                      f"{where}give symbols = [...] or all = true")
        opts: dict[str, Any] = dict(top, all_markets=every)
        opts["quotes"] = tuple(dict.fromkeys(q.strip().upper() for q in _strings(e, "quote", bad, where)))
        try:
            opts["shard"] = parse_shard(_typed(e, "shard", str, bad, where)) if "shard" in e else shard
            if "channels" in e:
                opts["channels"] = channels_of(exchange, [c.lower() for c in _strings(e, "channels", bad, where)])
        except RecorderError as exc:
            raise bad(f"{where}{exc}") from None
        for key in ("ws_url", "rest_url"):
            if key in e:
                opts[key] = _typed(e, key, str, bad, where)
        if "market_refresh" in e:
            opts["market_refresh"] = _positive(e, "market_refresh", bad, where)
        plans.append(Plan(exchange, symbols, replace(base, **opts)))
    seen: dict[tuple, int] = {}
    for n, p in enumerate(plans, 1):  # the same exchange twice would record its markets twice
        key = (p.exchange, p.options.ws_url)
        if key in seen:
            raise bad(f"record[{n}]: {p.exchange} is already recorded by record[{seen[key]}]; merge the two")
        seen[key] = n
    return plans


def _typed(d: dict, key: str, kind: type, bad, where: str) -> Any:
    v = d[key]
    if not isinstance(v, kind) or (kind is not bool and isinstance(v, bool)):
        raise bad(f"{where}{key} must be a {kind.__name__}, not {v!r}")
    return v


def _positive(d: dict, key: str, bad, where: str) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
        raise bad(f"{where}{key} must be a positive number of seconds, not {v!r}")
    return float(v)


def _strings(d: dict, key: str, bad, where: str) -> list[str]:
    v = d.get(key, [])
    if isinstance(v, str):
        v = [s for s in v.split(",") if s.strip()]
    if not isinstance(v, list) or not all(isinstance(s, str) and s.strip() for s in v):
        raise bad(f"{where}{key} must be a list of strings, not {v!r}")
    return [s.strip() for s in v]
