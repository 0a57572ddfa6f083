"""SIGINT/SIGTERM as a clean stop of the running event loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable


def install_signal_handlers(stop: Callable[[], object]) -> Callable[[], None]:
    """Make SIGINT and SIGTERM call `stop` on the running loop; returns what puts them back.

    Where the loop cannot take them (Windows, a thread other than the main one) nothing is installed
    and Ctrl-C stays a KeyboardInterrupt."""
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop)
            handled.append(sig)

    def restore() -> None:
        for sig in handled:
            loop.remove_signal_handler(sig)

    return restore
