"""The websocket reader alone: client CPU a frame, the recorder's reader against aiohttp's `receive()`.

A server process on core 1 writes N binary frames of SIZE bytes (pre-built, in batches) over
loopback as fast as the client reads; the client on core 0 counts them with a no-op handler, so
the figure is the reader's own cost a frame (socket reads, frame parsing, the call a frame), not the
recorder's. Each client runs in its own process, alternated `--rounds` times.

    python benchmarks/bench_websocket.py                 # 1M frames of 150 bytes, 2 rounds
    RECORDER_PURE_PYTHON=1 python benchmarks/bench_websocket.py   # the frame loop's Python build

README, "Hot path, tenth pass".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import subprocess
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def serve(n: int, size: int) -> None:
    payload = os.urandom(size)
    head = bytes((0x82, size)) if size < 126 else bytes((0x82, 126)) + size.to_bytes(2, "big")
    batch = (head + payload) * 1000

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(v.split(b":", 1)[1].strip() for v in request.split(b"\r\n") if v.lower().startswith(b"sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        for _ in range(n // 1000):
            writer.write(batch)
            await writer.drain()
        writer.write(b"\x88\x02\x03\xe8")  # CLOSE 1000
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)


async def client(kind: str, port: int) -> tuple[int, float]:
    count = 0

    def on_frame(recv: int, data: bytes | str) -> None:
        nonlocal count
        count += 1

    url = f"ws://127.0.0.1:{port}/"
    start = time.process_time()
    if kind == "aiohttp":
        import aiohttp

        async with aiohttp.ClientSession() as s, s.ws_connect(url, max_msg_size=4 << 20) as ws:
            receive, clock = ws.receive, time.time_ns
            data_types = (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT)
            while True:  # the recorder's loop before the tenth pass
                msg = await receive()
                if msg.type in data_types:
                    on_frame(clock() // 1000, msg.data)
                else:
                    break
    else:
        from recorder.transport.websocket import connect

        ws = await connect(url, on_frame, lambda recv, n: None, 4 << 20)
        ws.start()
        await ws.wait_closed()
    return count, time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        asyncio.run(serve(a.frames, a.size))
        return
    if a.client:
        n, cpu = asyncio.run(client(a.client, a.port))
        print(f"{n} {cpu}")
        return
    from recorder.transport import websocket

    build = "C" if websocket._NATIVE is not None else "Python"
    me = [sys.executable, __file__, "--frames", str(a.frames), "--size", str(a.size)]
    for _ in range(a.rounds):
        for kind in ("aiohttp", "recorder"):
            server = subprocess.Popen(["taskset", "-c", "1", *me, "--serve"], stdout=subprocess.PIPE, text=True)
            try:
                port = server.stdout.readline().strip()
                out = subprocess.run(["taskset", "-c", "0", *me, "--client", kind, "--port", port],
                                     capture_output=True, text=True, timeout=600, check=True).stdout.split()
            finally:
                server.kill()
                server.wait()
            n, cpu = int(out[0]), float(out[1])
            if n != a.frames:
                raise SystemExit(f"{kind}: {n} frames of {a.frames}")
            label = kind if kind == "aiohttp" else f"recorder ({build} frame loop)"
            print(f"{label:32} {cpu / n * 1e6:6.2f} µs a frame ({n:,} frames of {a.size} bytes, {cpu:.2f} s CPU)")


if __name__ == "__main__":
    main()
