"""Client-side pacing shared by every venue: a sliding-window send budget, reconnect backoff."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque


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
