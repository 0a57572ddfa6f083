"""Network plumbing shared by every exchange: REST with retries, send-rate limits, backoff."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque

import aiohttp
import orjson

from recorder.errors import RecorderError

USER_AGENT = "recorder/0.1 (+market-data recorder)"


class SendLimiter:
    """At most `count` sends per sliding `window` seconds (exchanges disconnect above their cap)."""

    def __init__(self, count: int, window: float) -> None:
        self.count, self.window = count, window
        self._sent: deque[float] = deque()

    async def acquire(self) -> None:
        while True:
            now = time.monotonic()
            while self._sent and now - self._sent[0] >= self.window:
                self._sent.popleft()
            if len(self._sent) < self.count:
                self._sent.append(now)
                return
            await asyncio.sleep(self.window - (now - self._sent[0]) + 0.001)


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter: uniform in [base, min(cap, base * 2**attempt)]."""
    hi = min(cap, base * (2 ** min(attempt, 16)))
    return random.uniform(base, max(base, hi))


def retry_after_seconds(resp: aiohttp.ClientResponse, default: float) -> float:
    value = resp.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


async def get_json(
    session: aiohttp.ClientSession,
    url: str,
    params: dict[str, str | int] | None = None,
    attempts: int = 5,
    timeout: float = 10.0,
) -> dict:
    """GET a JSON document, retrying 429 (honouring Retry-After), 5xx and connection errors."""
    last = ""
    for attempt in range(attempts):
        try:
            async with session.get(url, params=params, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                if resp.status == 429 or resp.status >= 500:
                    last = f"HTTP {resp.status}"
                    await asyncio.sleep(retry_after_seconds(resp, backoff_delay(attempt, 0.5, 8.0)))
                    continue
                body = await resp.read()
                if resp.status != 200:
                    raise RecorderError(f"{url} answered HTTP {resp.status}: {body[:200]!r}")
                return orjson.loads(body)
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            last = f"{type(exc).__name__}: {exc}".rstrip(": ")
            if attempt + 1 < attempts:
                await asyncio.sleep(backoff_delay(attempt, 0.2, 2.0))
        except orjson.JSONDecodeError as exc:
            raise RecorderError(f"{url} returned invalid JSON: {exc}") from None
    raise RecorderError(f"cannot reach {url} ({last})")


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
