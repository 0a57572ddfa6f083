"""The recorder's websocket client (RFC 6455, client side): an `asyncio.Protocol` that parses the
frames of each chunk the socket delivers and hands every data message straight to a callback.

Why not aiohttp's client (the recorder's until README "Hot path, tenth pass"; aiohttp still does
REST and the metrics server): its `receive()` costs a coroutine, a future and a message tuple a
frame, plus the receive loop's own lines: ~1.5 µs a frame of a ~10 µs message, measured. Here a
chunk of frames costs one call into the connection (`on_chunk`) and each message one call of
`on_frame` (the dispatcher's C build). Receive times: one clock read a chunk (when the kernel handed
the bytes over), plus 1 µs for each message before it in that chunk, so every message keeps a
receive time of its own, in wire order (the tables' contract: a message's rows share `recv_ts`).

What it does, all of it tested on real sockets (tests/test_websocket.py): ws:// and wss:// (the
system's CA store), the opening handshake checked to the letter (101, Upgrade, Connection,
Sec-WebSocket-Accept; no extension is offered, so none may be answered), fragmented messages, the
server's PING answered (PONG), the close handshake from either side, and every protocol error
closing the socket with its code (1002, 1007, 1009, 1011) and a one-line reason. What it does not:
proxies, redirects, permessage-deflate (the venues compress their own payloads, or not at all).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from recorder import native

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HANDSHAKE_TIMEOUT = 15.0  # seconds for TCP, TLS and the upgrade together
CLOSE_TIMEOUT = 2.0  # seconds to wait for the server's CLOSE after ours
MAX_HEADER_BYTES = 65536
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
NORMAL, PROTOCOL_ERROR, INVALID_DATA, TOO_BIG, INTERNAL = 1000, 1002, 1007, 1009, 1011
NO_STATUS, ABNORMAL = 1005, 1006  # never sent: what a close without a code, or without a CLOSE, reports

_ssl_context: ssl.SSLContext | None = None


class WebSocketError(Exception):
    """The socket was given up: the message says why, in one line (the `disconnect` detail)."""


def _tls() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:  # ~ms to build and load the CA store: once a process
        _ssl_context = ssl.create_default_context()
    return _ssl_context


def accept_key(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept a server must answer to `key` (RFC 6455, 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def mask(payload: bytes, key: bytes) -> bytes:
    """`payload` XOR the repeated 4-byte `key` (what a client does to every frame it sends)."""
    n = len(payload)
    if not n:
        return payload
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + mask(payload, key)


class WebSocket(asyncio.Protocol):
    """One client websocket. `on_frame(recv_us, data)` gets each data message (bytes for binary,
    str for text) with its receive time: the chunk's that completed it, plus 1 µs for each message
    before it in that chunk, and always after the last one's. `on_chunk(recv_us, count)` follows
    each chunk that completed `count` > 0 of them, with the last one's time. `closed` turns True as
    soon as a close begins (ours or the server's); `wait_closed()` returns when the socket is gone, or raises
    `WebSocketError` when it was given up for a protocol error (or re-raises what a callback raised).
    """

    def __init__(
        self,
        on_frame: Callable[[int, bytes | str], object],
        on_chunk: Callable[[int, int], object],
        max_frame_bytes: int,
    ) -> None:
        self.on_frame, self.on_chunk, self.max_frame_bytes = on_frame, on_chunk, max_frame_bytes
        self.closed = False
        self.close_code: int | None = None
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        self._handshake: asyncio.Future[bytes] | None = self._loop.create_future()
        self._parts: list[bytes] = []  # bytes not yet parsed: a partial frame, or all before `start`
        self._have = 0  # their length
        self._need = 0  # the length they must reach before parsing is worth trying again
        self._started = False
        self._ended = False  # the server's CLOSE came: nothing after it is parsed
        self._fragments: list[bytes] = []
        self._fragment_op = 0
        self._fragment_size = 0
        self._last_recv = 0  # the receive time (µs) given to the last message
        self._closing_sent = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # our sends are small and urgent

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.close_code is None:
            self.close_code = ABNORMAL
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(WebSocketError(f"connection lost during the websocket handshake{_why(exc)}"))
        if not self._done.done():
            self._done.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._parts:  # a partial frame waits: join only once it can be whole
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return
            data, self._parts, self._have = b"".join(self._parts), [], 0
        if self._done.done() or self._ended:
            return
        if self._handshake is not None:
            self._on_handshake_bytes(data)
        elif not self._started:
            self._keep(data, 0)
        else:
            try:
                self._frames(data)
            except WebSocketError as exc:
                self._give_up(exc)
            except Exception as exc:  # a callback's bug: the socket goes, the connection reports it
                self._closing(INTERNAL, "")
                self._give_up(exc)

    def _keep(self, data: bytes, need: int) -> None:
        self._parts, self._have, self._need = [data], len(data), need

    # -- frames -------------------------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        """Parse every whole frame of `data`, keep the rest (the hot path: one call a chunk)."""
        recv = time.time_ns() // 1000
        if recv <= self._last_recv:  # every message's receive time is its own (see `WebSocket`)
            recv = self._last_recv + 1
        on_frame, limit = self.on_frame, self.max_frame_bytes
        pos, end, count = 0, len(data), 0
        whole = not self._fragment_op  # no fragmented message is in progress
        try:
            while True:
                if end - pos < 2:
                    if end > pos:
                        self._keep(data[pos:], 2)
                    return
                b0, b1 = data[pos], data[pos + 1]
                n, head = b1 & 0x7F, pos + 2
                if n >= 126:
                    width = 2 if n == 126 else 8
                    if end - head < width:
                        self._keep(data[pos:], 2 + width)
                        return
                    n = int.from_bytes(data[head : head + width], "big")
                    head += width
                if b1 & 0x80:
                    raise WebSocketError(self._closing(PROTOCOL_ERROR, "the server sent a masked frame"))
                if n > limit:
                    raise WebSocketError(self._closing(TOO_BIG, f"frame too large (limit {limit:,} bytes): {n:,} bytes"))
                stop = head + n
                if stop > end:
                    self._keep(data[pos:], stop - pos)
                    return
                if b0 == 0x82 and whole:  # a whole binary message: the venues' common case
                    on_frame(recv + count, data[head:stop])
                    count += 1
                elif b0 == 0x81 and whole:
                    on_frame(recv + count, _text(data[head:stop], self))
                    count += 1
                else:
                    message = self._other(b0, data[head:stop])
                    whole = not self._fragment_op
                    if message is not None:
                        on_frame(recv + count, message)
                        count += 1
                    elif self._ended:
                        return
                pos = stop
        finally:
            if count:
                self._last_recv = recv = recv + count - 1
                self.on_chunk(recv, count)

    def _other(self, b0: int, payload: bytes) -> bytes | str | None:
        """A control frame, a fragment, or a frame with reserved bits: the message it completes, if any."""
        if b0 & 0x70:
            raise WebSocketError(self._closing(PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)"))
        fin, op = b0 & 0x80, b0 & 0x0F
        if op >= CLOSE:
            if not fin or len(payload) > 125:
                raise WebSocketError(self._closing(PROTOCOL_ERROR, "a fragmented or oversized control frame"))
            if op == PING:
                self._write(PONG, payload)
            elif op == CLOSE:
                self._server_close(payload)
            elif op != PONG:
                raise WebSocketError(self._closing(PROTOCOL_ERROR, f"unknown opcode {op:#x}"))
            return None
        if op == CONTINUATION:
            if not self._fragment_op:
                raise WebSocketError(self._closing(PROTOCOL_ERROR, "a continuation frame with no message to continue"))
        elif op in (TEXT, BINARY):
            if self._fragment_op:
                raise WebSocketError(self._closing(PROTOCOL_ERROR, "a new message inside a fragmented one"))
            self._fragment_op, self._fragments, self._fragment_size = op, [], 0
        else:
            raise WebSocketError(self._closing(PROTOCOL_ERROR, f"unknown opcode {op:#x}"))
        self._fragment_size += len(payload)
        if self._fragment_size > self.max_frame_bytes:
            raise WebSocketError(
                self._closing(TOO_BIG, f"frame too large (limit {self.max_frame_bytes:,} bytes): a fragmented message past it")
            )
        self._fragments.append(payload)
        if not fin:
            return None
        whole, op = b"".join(self._fragments), self._fragment_op
        self._fragments, self._fragment_op = [], 0
        return _text(whole, self) if op == TEXT else whole

    def _server_close(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else NO_STATUS
        self.close_code, self.closed, self._ended = code, True, True
        if not self._closing_sent:  # echo it; then TCP goes (the server may close it first)
            self._write(CLOSE, payload[:2])
            self._closing_sent = True
        self._abort()

    # -- giving up ----------------------------------------------------------------------------

    def _closing(self, code: int, why: str) -> str:
        """Send CLOSE `code` (once) and say so after `why`."""
        if not self._closing_sent:
            self._write(CLOSE, code.to_bytes(2, "big"))
            self._closing_sent = True
        self.close_code = code
        return f"{why}; socket closed (code {code})"

    def _give_up(self, exc: BaseException) -> None:
        self.closed = self._ended = True
        if not self._done.done():
            self._done.set_exception(exc)
        self._abort()

    def _abort(self) -> None:
        """Close TCP once what is queued is written; drop it if that takes `CLOSE_TIMEOUT`."""
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()
            self._loop.call_later(CLOSE_TIMEOUT, t.abort)

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(opcode, payload))

    # -- the caller's side --------------------------------------------------------------------

    def start(self) -> None:
        """Deliver frames from here on (those that came with or after the handshake first)."""
        self._started = True
        pending, self._parts, self._have, self._need = b"".join(self._parts), [], 0, 0
        if pending:
            self.data_received(pending)

    async def send_str(self, text: str) -> None:
        if not self.closed:
            self._write(TEXT, text.encode())

    async def close(self, code: int = NORMAL) -> None:
        """Our close handshake: CLOSE, then the server's CLOSE and TCP's end (at most
        `CLOSE_TIMEOUT` later: then TCP is dropped)."""
        if not self.closed:
            self.closed = True
            if not self._closing_sent:
                self._write(CLOSE, code.to_bytes(2, "big"))
                self._closing_sent = True
            self.close_code = code
            timer = self._loop.call_later(CLOSE_TIMEOUT, self._abort)
        else:
            timer = None
        try:
            await asyncio.shield(self._done)
        except Exception:  # the reason is `wait_closed`'s to raise, not ours
            pass
        finally:
            if timer is not None:
                timer.cancel()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._done)

    def abort(self) -> None:
        """Drop the TCP connection at once (no close handshake)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """Leave now, without waiting for an answer: CLOSE (unless one was sent), then TCP."""
        self.closed = True
        if not self._closing_sent:
            self._closing(NORMAL, "")
        self._abort()

    # -- the opening handshake ----------------------------------------------------------------

    def _on_handshake_bytes(self, data: bytes) -> None:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > MAX_HEADER_BYTES:
                self._handshake.set_exception(WebSocketError("websocket handshake: the server's headers never ended"))
                self._abort()
            else:
                self._keep(data, len(data) + 1)
            return
        handshake, self._handshake = self._handshake, None
        if len(data) > end + 4:
            self._keep(data[end + 4 :], 0)  # frames sent with the 101: `start` delivers them
        if not handshake.done():
            handshake.set_result(data[:end])


def _text(payload: bytes, ws: WebSocket) -> str:
    try:
        return payload.decode()
    except UnicodeDecodeError as exc:
        raise WebSocketError(ws._closing(INVALID_DATA, f"a text frame that is not UTF-8 ({exc.reason})")) from None


# The C build of `WebSocket._frames` (`_websocket.pyx`, the same steps; None: the Python alone).
# `python_frames` stays the definition (the tests run both).
WebSocket.python_frames = WebSocket._frames
_NATIVE = native.load("recorder.transport._websocket", Path(__file__).with_name("_websocket.pyx"))
if _NATIVE is not None:
    _NATIVE.setup(WebSocketError, _text)
    WebSocket._frames = _NATIVE.frames

def _why(exc: BaseException | None) -> str:
    return f": {exc}" if exc is not None and str(exc) else ""


def _check_handshake(head: bytes, key: bytes) -> None:
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1."):
        raise WebSocketError(f"websocket handshake: not an HTTP answer ({lines[0][:80]!r})")
    if status[1] != "101":
        raise WebSocketError(f"websocket handshake refused: HTTP {' '.join(status[1:])[:80]}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("upgrade", "").lower() != "websocket":
        raise WebSocketError("websocket handshake: the server did not upgrade to websocket")
    if "upgrade" not in [t.strip().lower() for t in headers.get("connection", "").split(",")]:
        raise WebSocketError("websocket handshake: no 'Connection: Upgrade' in the server's answer")
    if headers.get("sec-websocket-accept", "").encode() != accept_key(key):
        raise WebSocketError("websocket handshake: wrong Sec-WebSocket-Accept (not a websocket server, or a broken proxy)")
    if headers.get("sec-websocket-extensions"):
        raise WebSocketError(f"websocket handshake: an extension we did not offer ({headers['sec-websocket-extensions'][:80]})")


async def connect(
    url: str,
    on_frame: Callable[[int, bytes | str], object],
    on_chunk: Callable[[int, int], object],
    max_frame_bytes: int,
    headers: dict[str, str] | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
    tls: ssl.SSLContext | None = None,
) -> WebSocket:
    """Open `url` (ws:// or wss://) and complete the opening handshake; the caller calls `start()`
    when it is ready for frames. Raises `WebSocketError` (refused or broken handshake, its
    timeout), or OSError (DNS, TCP, TLS). `tls`: the context for wss:// (default: the system's CA
    store, the hostname checked)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise WebSocketError(f"not a websocket URL (ws:// or wss://): {url}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    host = parts.hostname
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16))
    loop = asyncio.get_running_loop()
    ws: WebSocket | None = None
    try:
        async with asyncio.timeout(timeout):
            transport, ws = await loop.create_connection(
                lambda: WebSocket(on_frame, on_chunk, max_frame_bytes),
                host,
                port,
                ssl=(tls or _tls()) if secure else None,
                server_hostname=host if secure else None,
                happy_eyeballs_delay=0.25,
            )
            lines = [
                f"GET {target} HTTP/1.1",
                f"Host: {netloc}",
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key.decode()}",
                "Sec-WebSocket-Version: 13",
                *(f"{k}: {v}" for k, v in (headers or {}).items()),
            ]
            transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            _check_handshake(await ws._handshake, key)
    except TimeoutError:
        if ws is not None:
            ws.abort()
        raise WebSocketError(f"websocket handshake timed out after {timeout:g} s") from None
    except BaseException:
        if ws is not None:
            ws.abort()
        raise
    return ws
