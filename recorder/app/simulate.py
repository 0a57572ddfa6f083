"""Simulator start-up for the command line: `recorder simulate EXCHANGE`, and `--sim` of `run` and
`candles watch` (the simulator of each venue comes from the registry, `venues.simulator`)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any
from urllib.parse import urlsplit

from recorder import venues
from recorder.app.console import json_line, json_logs
from recorder.app.signals import install_signal_handlers
from recorder.errors import RecorderError

# A simulator that users run for hours: bounded ground-truth logs, some kline history to backfill.
LONG_RUNNING_SIM = {"record_sent": False, "trade_log_limit": 100_000, "history_minutes": 240}


async def start_simulator(exchange: str, sim: dict | bool = True) -> Any:
    """Start `exchange`'s simulator on 127.0.0.1 (a free port) for `--sim`; `sim` is True or its
    options (e.g. {"rate": 200, "seed": 1}). Unknown exchange: the registry's RecorderError."""
    options = {"seed": 0, **LONG_RUNNING_SIM, **(sim if isinstance(sim, dict) else {})}
    simulator = venues.simulator(exchange)(**options)
    await simulator.start(host="127.0.0.1", port=0)
    return simulator


async def simulate_forever(
    exchange: str,
    host: str,
    port: int,
    seed: int,
    rate: float,
    extra_symbols: int,
    faults: list[str] | None = None,
    fault_every: float = 10.0,
) -> None:
    """Serve until SIGINT/SIGTERM. `extra_symbols` > 0 serves that many synthetic symbols instead.

    `faults` (names from `recorder.sim.faults.FAULTS`) are injected round robin every `fault_every` s.
    """
    from recorder.sim.faults import inject_forever

    cls = venues.simulator(exchange)
    sim = cls(symbols=extra_symbols or None, seed=seed, rate=rate, **LONG_RUNNING_SIM)
    try:
        await sim.start(host=host, port=port)
    except OSError as exc:
        raise RecorderError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    listening = listening_line(host, sim.port, sim.ws_url)
    if json_logs():  # --log-format json: one JSON object a line, the URLs as fields
        say(json_line("info", listening, {"ws": sim.ws_url, "rest": sim.rest_url, "host": host, "port": sim.port}))
    else:  # the first line starts with `ws` (scripts read it); then where it really listens
        say(f"ws   {sim.ws_url}\nrest {sim.rest_url}\n{listening}")
    stop = asyncio.Event()
    install_signal_handlers(stop.set)
    injector = None
    if faults:
        line = f"faults: {', '.join(faults)}, one every {fault_every:g} s"
        say(json_line("info", line, {"faults": faults, "every_s": fault_every}) if json_logs() else line)
        injector = asyncio.create_task(
            inject_forever(sim, faults, fault_every, lambda line: say(json_line("info", line) if json_logs() else line), seed)
        )
    try:
        await stop.wait()
    finally:
        if injector is not None:
            injector.cancel()
        await sim.stop()


def say(line: str) -> None:
    print(line, flush=True)


WILDCARDS = ("", "0.0.0.0", "::")


def listening_line(host: str, port: int, ws_url: str) -> str:
    """Where a server bound to `host:port` listens, and the URL other machines can use for a wildcard."""
    if host not in WILDCARDS:
        return f"listening on {host}:{port}"
    reachable = outward_address()
    other = f"; from other machines: {urlsplit(ws_url)._replace(netloc=f'{reachable}:{port}').geturl()}"
    return f"listening on {host or '0.0.0.0'}:{port} (every interface){other if reachable else ''}"


def outward_address() -> str | None:
    """This machine's address on its default route (a UDP `connect` sends nothing), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only the routing table is consulted
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr
