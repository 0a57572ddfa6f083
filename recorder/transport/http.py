"""REST for every venue: JSON GETs with retries (429 with Retry-After, 5xx, connection errors)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from recorder.errors import RecorderError
from recorder.transport.limits import backoff_delay

USER_AGENT = "recorder/0.1 (+market-data recorder)"


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
