"""Client-side pacing shared by every venue: a sliding-window send budget, reconnect backoff."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque


class SendLimiter:
    """At most `count` sends per sliding `window` seconds (exchanges disconnect above their cap).

    Sends go out in the order they asked (first come, first served: a venue's two-message resync
    stays in order behind earlier ones). `reserve` slots of every window are kept for `urgent`
    sends (keepalive pings and probes), which skip the queue: a backlog of subscriptions must never
    delay the ping whose missing answer would declare a healthy socket dead."""

    def __init__(self, count: int, window: float, reserve: int = 0) -> None:
        self.count, self.window = count, window
        self.reserve = min(reserve, max(0, count - 1))
        self._sent: deque[float] = deque()
        self._queue = asyncio.Lock()  # FIFO: waiters are woken in arrival order

    async def acquire(self, urgent: bool = False) -> None:
        if urgent:
            await self._wait(self.count)
            return
        async with self._queue:
            await self._wait(self.count - self.reserve)

    async def _wait(self, cap: int) -> None:
        while True:
            now = time.monotonic()
            while self._sent and now - self._sent[0] >= self.window:
                self._sent.popleft()
            if len(self._sent) < cap:
                self._sent.append(now)
                return
            await asyncio.sleep(self.window - (now - self._sent[len(self._sent) - cap]) + 0.001)


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter: uniform in [base, min(cap, base * 2**attempt)]."""
    hi = min(cap, base * (2 ** min(attempt, 16)))
    return random.uniform(base, max(base, hi))
