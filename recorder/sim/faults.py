"""Periodic fault injection for a standalone simulator (`recorder simulate --fault ... --fault-every S`).

Users who want to watch the recorder handle a bad exchange name the faults; every S seconds the
next one (round robin) is injected for real on the open sockets, and a line says which. The
faults are the simulator's own fault methods (the same ones the test suite uses).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from recorder.errors import RecorderError

HANG_SECONDS = 5.0  # a hung server answers nothing for this long on the sockets it had


def _symbol(sim, rng: random.Random) -> str:
    """A symbol whose book someone is subscribed to (so the fault is seen), else any."""
    topics = {t for c in sim.open_connections for t in c.topics}
    watched = [s for s in sim.trading_symbols if sim.book_topic(s) in topics]
    return rng.choice(watched or sim.trading_symbols)


def _gap(sim, rng: random.Random) -> str:
    symbol = _symbol(sim, rng)
    sim.skip_version(symbol, 3)
    return f"next 3 book versions of {symbol} are never sent (sequence gap)"


def _duplicate(sim, rng: random.Random) -> str:
    symbol = _symbol(sim, rng)
    sim.duplicate_version(symbol, 2)
    return f"next 2 book updates of {symbol} are sent twice"


def _stale(sim, rng: random.Random) -> str:
    symbol = _symbol(sim, rng)
    sim.send_stale_version(symbol)
    return f"a book update of {symbol} with a version that went backwards"


def _disconnect(sim, rng: random.Random) -> str:
    return f"{sim.drop_connections()} connection(s) reset without a close frame"


def _garbage(sim, rng: random.Random) -> str:
    sim.send_malformed_json()
    return "a frame that inflates to truncated JSON"


def _deflate(sim, rng: random.Random) -> str:
    sim.send_invalid_deflate()
    return "a frame that is not a deflate stream"


def _bomb(sim, rng: random.Random) -> str:
    return f"a deflate bomb ({sim.send_deflate_bomb():,} bytes inflating to 16 MB)"


def _oversized(sim, rng: random.Random) -> str:
    return f"an oversized frame ({sim.send_oversized_frame():,} bytes)"


def _subscribe(sim, rng: random.Random) -> str:
    sim.fail_next_subscribe()
    return "the next subscribed topic is refused"


def _rest429(sim, rng: random.Random) -> str:
    sim.fail_rest(429, count=2, retry_after=1.0)
    return "the next 2 REST requests get 429 with Retry-After: 1"


def _rest5xx(sim, rng: random.Random) -> str:
    sim.fail_rest(503, count=2)
    return "the next 2 REST requests get 503"


def _hang(sim, rng: random.Random) -> str:
    sim.go_dead()
    asyncio.get_running_loop().call_later(HANG_SECONDS, sim.revive)
    return f"open connections go silent (no data, no pong) for {HANG_SECONDS:g} s; new ones are served"


FAULTS: dict[str, Callable[[object, random.Random], str]] = {
    "gap": _gap,
    "duplicate": _duplicate,
    "stale": _stale,
    "disconnect": _disconnect,
    "hang": _hang,
    "garbage": _garbage,
    "deflate": _deflate,
    "bomb": _bomb,
    "oversized": _oversized,
    "subscribe": _subscribe,
    "rest429": _rest429,
    "rest5xx": _rest5xx,
}


def parse_faults(value: str | None) -> list[str]:
    """`gap,disconnect` or `all` -> fault names, in the order given; unknown names are refused."""
    if not value:
        return []
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    if names == ["all"]:
        return list(FAULTS)
    bad = [n for n in names if n not in FAULTS]
    if bad or not names:
        raise RecorderError(
            f"unknown fault(s) {', '.join(bad) or '(none)'}; choose from all, {', '.join(FAULTS)}"
        )
    return names


async def inject_forever(
    sim, names: list[str], every: float, say: Callable[[str], None], seed: int = 0
) -> None:
    """Every `every` seconds inject the next fault of `names` (round robin) and `say` what it was."""
    rng = random.Random(seed)
    i = 0
    while True:
        await asyncio.sleep(every)
        name = names[i % len(names)]
        i += 1
        try:
            say(f"fault {name}: {FAULTS[name](sim, rng)}")
        except NotImplementedError as exc:  # a fault this venue cannot have (no compression...)
            say(f"fault {name}: skipped ({exc})")
