"""The recorder's websocket client (`recorder.transport.websocket`) on real sockets: against a server
written here byte by byte from RFC 6455 (so each test says exactly what goes over the wire), against
an independent server (the `websockets` library), and over TLS. The recording tests drive the same
client against the venue simulators; these pin down the protocol's corners those never reach."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
import time
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder.transport import websocket as wsmod
from recorder.transport.websocket import WebSocket, WebSocketError, connect

from .recording import wait_for
from .test_cli import free_port  # bound, then closed: nothing listens there

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LIMIT = 1000  # max_frame_bytes in these tests


def frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, masked: bool = False) -> bytes:
    """A server frame, built from the RFC's layout (not from the code under test)."""
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, mask_bit | n))
    elif n < 1 << 16:
        head = bytes((b0, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, mask_bit | 127)) + n.to_bytes(8, "big")
    if masked:
        key = b"\x01\x02\x03\x04"
        return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))
    return head + payload


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(opcode, unmasked payload) of the client's next frame; a client frame must be masked and final."""
    b0, b1 = await reader.readexactly(2)
    assert b0 & 0x80 and not b0 & 0x70, f"not a final frame without reserved bits: {b0:#x}"
    assert b1 & 0x80, "a client frame must be masked (RFC 6455, 5.3)"
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    key = await reader.readexactly(4)
    body = await reader.readexactly(n)
    return b0 & 0x0F, bytes(c ^ key[i % 4] for i, c in enumerate(body))


def answer(key: bytes, status: str = "101 Switching Protocols", accept: bytes | None = None, extra: str = "") -> bytes:
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()) if accept is None else accept
    return (
        f"HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept.decode()}\r\n{extra}\r\n"
    ).encode()


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    return lines[0], headers


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A TCP server on 127.0.0.1 running `handler` per connection; `done` holds what handlers
    reported, `errors` their failures (a test's server-side assertion must fail the test)."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler, self.tls = handler, tls
        self.errors: list[BaseException] = []
        self.finished = asyncio.Event()

    async def __aenter__(self) -> Server:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await self.handler(reader, writer)
            except Exception as exc:
                self.errors.append(exc)
            finally:
                self.finished.set()
                writer.close()

        self.server = await asyncio.start_server(run, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await asyncio.wait_for(self.server.wait_closed(), 5)
        if self.errors:
            raise self.errors[0]

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/path?x=1"


def upgrade(then: Handler, **kw) -> Handler:
    """A handler that accepts the upgrade (checking the client's request), then runs `then`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, headers = await read_request(reader)
        assert line == "GET /path?x=1 HTTP/1.1", line
        assert headers["upgrade"].lower() == "websocket" and "upgrade" in headers["connection"].lower()
        assert headers["sec-websocket-version"] == "13"
        assert len(base64.b64decode(headers["sec-websocket-key"])) == 16
        assert "sec-websocket-extensions" not in headers  # nothing offered: no permessage-deflate
        writer.write(answer(headers["sec-websocket-key"].encode(), **kw))
        await then(reader, writer)

    return handler


class Client:
    """What the client's callbacks saw."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, bytes | str]] = []
        self.chunks: list[tuple[int, int]] = []

    def on_frame(self, recv: int, data: bytes | str) -> None:
        self.messages.append((recv, data))

    def on_chunk(self, recv: int, count: int) -> None:
        self.chunks.append((recv, count))

    async def open(self, url: str, **kw) -> WebSocket:
        ws = await connect(url, self.on_frame, self.on_chunk, LIMIT, {"User-Agent": "test"}, **kw)
        ws.start()
        return ws

    @property
    def data(self) -> list[bytes | str]:
        return [d for _, d in self.messages]


async def test_frames_arrive_whole_in_order_each_with_its_own_receive_time() -> None:
    """Frames sent in the same write as the 101 are delivered after `start`, in order; every
    length encoding (7-bit, 16-bit, 64-bit with a larger limit), text decoded, binary as bytes."""
    big = os.urandom(70_000)

    async def then(reader, writer):
        writer.write(frame(2, b"\x00" * 126) + frame(1, "héllo".encode()) + frame(2, b"") + frame(2, big))
        await writer.drain()
        await reader.read()  # until the client leaves

    async with Server(upgrade(then)) as server:
        c = Client()
        ws = await connect(server.url, c.on_frame, c.on_chunk, 100_000)
        await asyncio.sleep(0.1)
        assert c.messages == [], "frames delivered before start()"
        t0 = time.time_ns() // 1000
        ws.start()
        await wait_for(lambda: len(c.messages) == 4, 5, "the messages")
        assert c.data == [b"\x00" * 126, "héllo", b"", big]
        times = [t for t, _ in c.messages]
        assert times == sorted(set(times)), f"receive times not strictly increasing: {times}"
        assert times[0] >= t0 - 200_000 and times[-1] <= time.time_ns() // 1000 + 10
        assert sum(n for _, n in c.chunks) == 4 and c.chunks[-1][0] == times[-1]
        await ws.close()


async def test_fragments_with_a_ping_between_are_one_message_and_the_ping_is_answered() -> None:
    pongs: list[tuple[int, bytes]] = []

    async def then(reader, writer):
        writer.write(frame(1, b"frag", fin=False) + frame(9, b"are you there"))
        writer.write(frame(0, b"ment", fin=False))
        await writer.drain()
        pongs.append(await read_client_frame(reader))
        writer.write(frame(0, "ed ✓".encode()) + frame(2, b"next"))
        await writer.drain()
        await reader.read()

    async with Server(upgrade(then)) as server:
        c = Client()
        ws = await c.open(server.url)
        await wait_for(lambda: len(c.messages) == 2, 5, "the messages")
        assert c.data == ["fragmented ✓", b"next"]
        assert pongs == [(0xA, b"are you there")]
        await ws.close()


async def test_the_servers_close_is_echoed_and_its_code_reported() -> None:
    echoed: list[tuple[int, bytes]] = []

    async def then(reader, writer):
        writer.write(frame(2, b"last") + frame(8, (1001).to_bytes(2, "big") + b"going away") + frame(2, b"after"))
        await writer.drain()
        echoed.append(await read_client_frame(reader))

    async with Server(upgrade(then)) as server:
        c = Client()
        ws = await c.open(server.url)
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert c.data == [b"last"], "a frame after the server's CLOSE was delivered"
        assert ws.closed and ws.close_code == 1001
        await asyncio.wait_for(server.finished.wait(), 5)
        assert echoed == [(8, (1001).to_bytes(2, "big"))]


async def test_a_dropped_connection_is_reported_as_1006() -> None:
    async def then(reader, writer):
        writer.write(frame(2, b"x"))
        await writer.drain()
        writer.transport.abort()

    async with Server(upgrade(then)) as server:
        c = Client()
        ws = await c.open(server.url)
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert c.data == [b"x"] and ws.close_code == 1006


@pytest.mark.parametrize(
    ("wire", "code", "words"),
    [
        (frame(2, b"hidden", masked=True), 1002, "the server sent a masked frame"),
        (bytes((0x82, 127)) + (10**9).to_bytes(8, "big"), 1009, "frame too large (limit 1,000 bytes): 1,000,000,000 bytes"),
        (frame(2, b"x" * 600, fin=False) + frame(0, b"y" * 600), 1009, "frame too large (limit 1,000 bytes)"),
        (frame(2, b"deflated?", rsv=4), 1002, "reserved bits set"),
        (frame(1, b"\xff\xfe"), 1007, "a text frame that is not UTF-8"),
        (frame(1, b"ok", fin=False) + frame(0, b"\xc3"), 1007, "not UTF-8"),
        (frame(0, b"orphan"), 1002, "a continuation frame with no message to continue"),
        (frame(1, b"a", fin=False) + frame(2, b"b"), 1002, "a new message inside a fragmented one"),
        (frame(3, b"?"), 1002, "unknown opcode 0x3"),
        (frame(9, b"p", fin=False), 1002, "a fragmented or oversized control frame"),
        (frame(9, b"p" * 126), 1002, "a fragmented or oversized control frame"),
    ],
    ids=["masked", "too-big-header", "too-big-fragments", "rsv", "utf8", "utf8-fragments", "orphan-continuation",
         "interleaved-message", "opcode", "fragmented-ping", "long-ping"],
)
async def test_a_protocol_error_closes_with_its_code_and_says_why(wire: bytes, code: int, words: str) -> None:
    """The one-line reason (the `disconnect` detail), the CLOSE code on the wire; frames before
    the bad one are delivered. A too-large length is refused from the header: nothing is buffered."""
    got: list[tuple[int, bytes]] = []

    async def then(reader, writer):
        writer.write(frame(2, b"before") + wire)
        await writer.drain()
        got.append(await read_client_frame(reader))

    async with Server(upgrade(then)) as server:
        c = Client()
        ws = await c.open(server.url)
        with pytest.raises(WebSocketError) as err:
            await asyncio.wait_for(ws.wait_closed(), 5)
        assert words in str(err.value) and str(err.value).endswith(f"socket closed (code {code})"), str(err.value)
        assert "\n" not in str(err.value)
        assert c.data == [b"before"] and ws.closed and ws.close_code == code
        await asyncio.wait_for(server.finished.wait(), 5)
        assert got == [(8, code.to_bytes(2, "big"))]


async def test_a_callback_error_ends_the_socket_and_is_raised_to_the_caller() -> None:
    got: list[tuple[int, bytes]] = []

    async def then(reader, writer):
        writer.write(frame(2, b"boom"))
        await writer.drain()
        got.append(await read_client_frame(reader))

    def on_frame(recv: int, data: bytes | str) -> None:
        raise ValueError(f"cannot handle {data!r}")

    async with Server(upgrade(then)) as server:
        ws = await connect(server.url, on_frame, lambda *_: None, LIMIT)
        ws.start()
        with pytest.raises(ValueError, match="cannot handle b'boom'"):
            await asyncio.wait_for(ws.wait_closed(), 5)
        await asyncio.wait_for(server.finished.wait(), 5)
        assert got == [(8, (1011).to_bytes(2, "big"))]


async def never(reader, writer):
    await reader.read()


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"status": "404 Not Found"}, "websocket handshake refused: HTTP 404 Not Found"),
        ({"accept": b"d3Jvbmc="}, "wrong Sec-WebSocket-Accept"),
        ({"extra": "Sec-WebSocket-Extensions: permessage-deflate\r\n"}, "an extension we did not offer (permessage-deflate)"),
    ],
    ids=["404", "accept", "extension"],
)
async def test_a_broken_handshake_is_refused_in_one_line(kw: dict, words: str) -> None:
    async with Server(upgrade(never, **kw)) as server:
        with pytest.raises(WebSocketError, match=words.replace("(", r"\(").replace(")", r"\)")):
            await Client().open(server.url)


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "websocket handshake: not an HTTP answer ('SSH-2.0-OpenSSH_9.6')"),
        (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n", "websocket handshake: the server did not upgrade to websocket"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "websocket handshake refused: HTTP 200 OK"),
        (b"HTTP/1.1 101 Switching", "connection lost during the websocket handshake"),
    ],
    ids=["not-http", "no-upgrade", "200", "cut"],
)
async def test_a_server_that_is_not_a_websocket_server_is_refused(reply: bytes, words: str) -> None:
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(reply)
        await writer.drain()

    async with Server(handler) as server:
        with pytest.raises(WebSocketError) as err:
            await Client().open(server.url)
        assert str(err.value).startswith(words), str(err.value)


async def test_a_silent_server_times_the_handshake_out() -> None:
    async with Server(never) as server:
        start = time.monotonic()
        with pytest.raises(WebSocketError, match=r"websocket handshake timed out after 0.5 s"):
            await Client().open(server.url, timeout=0.5)
        assert time.monotonic() - start < 3


async def test_not_a_websocket_url_and_nothing_listening() -> None:
    with pytest.raises(WebSocketError, match="not a websocket URL"):
        await Client().open("https://127.0.0.1/ws")
    with pytest.raises(OSError):
        await Client().open(f"ws://127.0.0.1:{free_port()}/")


@pytest.mark.parametrize("length", [0, 5, 125, 126, 65535, 65536])
async def test_what_we_send_is_masked_and_framed_for_every_length(length: int) -> None:
    got: list[tuple[int, bytes]] = []
    text = ("aé" * length)[:length]

    async def then(reader, writer):
        got.append(await read_client_frame(reader))

    async with Server(upgrade(then)) as server:
        ws = await Client().open(server.url)
        await ws.send_str(text)
        await asyncio.wait_for(server.finished.wait(), 5)
        await ws.close()
    assert got == [(1, text.encode())]


async def test_our_close_waits_for_the_servers_then_ends() -> None:
    got: list[tuple[int, bytes]] = []

    async def answers(reader, writer):
        got.append(await read_client_frame(reader))
        writer.write(frame(8, got[-1][1]))
        await writer.drain()
        await reader.read()

    async with Server(upgrade(answers)) as server:
        ws = await Client().open(server.url)
        start = time.monotonic()
        await asyncio.wait_for(ws.close(), 5)
        assert time.monotonic() - start < 1 and ws.closed and ws.close_code == 1000
        await ws.wait_closed()  # a clean close: nothing to raise
    assert got == [(8, (1000).to_bytes(2, "big"))]

    async with Server(upgrade(never)) as server:  # no answer: TCP goes after CLOSE_TIMEOUT
        ws = await Client().open(server.url)
        start = time.monotonic()
        await asyncio.wait_for(ws.close(), wsmod.CLOSE_TIMEOUT + 3)
        assert wsmod.CLOSE_TIMEOUT - 0.1 <= time.monotonic() - start < wsmod.CLOSE_TIMEOUT + 2


async def test_wss_checks_the_certificate(tmp_path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def then(reader, writer):
        writer.write(frame(2, b"secret"))
        await writer.drain()
        await reader.read()

    async with Server(upgrade(then), tls=server_ctx) as server:
        c = Client()
        ws = await c.open(server.url, tls=client_ctx)
        await wait_for(lambda: c.data == [b"secret"], 5, "the messages")
        await ws.close()
        with pytest.raises(ssl.SSLCertVerificationError):  # the system's CA store does not know this CA
            await Client().open(server.url)


async def test_an_independent_server_the_websockets_library() -> None:
    """Frames, a fragmented message, a ping (its pong), our text, the server's close code."""
    from websockets.asyncio.server import serve

    seen: list[object] = []

    async def handler(conn):
        await conn.send(b"\x01binary")
        await conn.send(["frag", "mented"])  # an iterable: one message in fragments
        pong = await conn.ping(b"hi")
        seen.append(await asyncio.wait_for(pong, 5))
        seen.append(await asyncio.wait_for(conn.recv(), 5))
        await conn.close(1001, "bye")

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        c = Client()
        ws = await c.open(f"ws://127.0.0.1:{port}/")
        await wait_for(lambda: len(c.messages) == 2, 5, "the messages")
        await ws.send_str("from the recorder")
        await asyncio.wait_for(ws.wait_closed(), 5)
    assert c.data == [b"\x01binary", "fragmented"]
    assert seen[1] == "from the recorder" and isinstance(seen[0], float)
    assert ws.close_code == 1001


class _Transport(asyncio.Transport):
    """Records what the protocol writes (the chunking test feeds bytes directly)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name, default=None):
        return default


BIG = os.urandom(70_000)
STREAM = (
    frame(2, b"a" * 3)
    + frame(1, "t\u00e9xt".encode(), fin=False)
    + frame(9, b"ping")
    + frame(0, b" more")
    + frame(2, b"b" * 300)
    + frame(2, BIG)
    + frame(10, b"pong")
    + frame(2, b"")
)


# Both builds of the frame loop: the Python definition and, where built, its C build (`_websocket.pyx`)
BUILDS = {"python": WebSocket.python_frames}
if wsmod._NATIVE is not None:
    BUILDS["c"] = wsmod._NATIVE.frames


def test_the_c_build_is_there_where_the_readme_install_ran() -> None:
    if not os.environ.get("CI") and "c" not in BUILDS:
        pytest.skip("the C build of the frame loop is not built here")
    assert "c" in BUILDS and WebSocket._frames is BUILDS["c"]


def feed(build: str, chunks: list[bytes], limit: int = 100_000) -> tuple[list, list, bytes, str | None]:
    """What one build makes of `chunks` fed in order as they came off a socket: the messages, how
    many each chunk completed (their receive times checked: strictly increasing, a chunk's 1 µs
    apart), what it wrote back (unmasked), and the error's words."""

    async def run() -> tuple[list, list, bytes, str | None]:
        c = Client()
        ws = type("W", (WebSocket,), {"_frames": BUILDS[build]})(c.on_frame, c.on_chunk, limit)
        t = _Transport()
        ws.connection_made(t)
        ws._handshake = None  # as after the 101
        ws.start()
        sizes = []  # messages each chunk completed
        for chunk in chunks:
            had = len(c.messages)
            ws.data_received(chunk)
            sizes.append(len(c.messages) - had)
        error = None
        if ws._done.done():
            exc = ws._done.exception()
            error = f"{type(exc).__name__}: {exc}" if exc is not None else None
        times, i = [t for t, _ in c.messages], 0
        assert times == sorted(set(times)), "receive times not strictly increasing"
        for n in sizes:  # a chunk's messages: its time, then 1 µs apart
            assert times[i : i + n] == list(range(times[i], times[i] + n)) if n else True
            i += n
        assert [n for _, n in c.chunks] == [n for n in sizes if n]
        return c.data, sizes, unmask_all(bytes(t.written)), error

    return asyncio.run(run())


def unmask_all(written: bytes) -> bytes:
    """The client's frames with their random masks taken off (so two runs compare equal)."""
    out, pos = bytearray(), 0
    while pos < len(written):
        b0, b1 = written[pos], written[pos + 1]
        n, head = b1 & 0x7F, pos + 2
        if n >= 126:
            width = 2 if n == 126 else 8
            n, head = int.from_bytes(written[head : head + width], "big"), head + width
        key = written[head : head + 4]
        out += bytes((b0,)) + n.to_bytes(8, "big") + bytes(c ^ key[i % 4] for i, c in enumerate(written[head + 4 : head + 4 + n]))
        pos = head + 4 + n
    return bytes(out)


def cut(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_chunking_of_the_stream_gives_the_same_messages(cuts: list[int]) -> None:
    """However TCP splits the bytes (a header, a length, a payload cut anywhere), the same
    messages come out, in order, once each, from both builds."""
    for build in BUILDS:
        data, _, written, error = feed(build, cut(STREAM, cuts))
        assert data == [b"aaa", "téxt more", b"b" * 300, BIG, b""], build
        assert written == bytes((0x8A,)) + (4).to_bytes(8, "big") + b"ping" and error is None, build


BAD = [
    frame(2, b"m", masked=True),
    bytes((0x82, 127)) + (2**64 - 1).to_bytes(8, "big"),
    frame(2, b"x" * 1001),
    frame(1, b"\xff"),
    frame(2, b"r", rsv=2),
    frame(0, b"c"),
    frame(7, b""),
    frame(1, b"a", fin=False) + frame(1, b"b"),
    frame(2, b"a", fin=False) + frame(9, b"p") + frame(2, b"b"),
    frame(8, (4000).to_bytes(2, "big")) + frame(2, b"never"),
]
_good = st.sampled_from(
    [frame(2, b"q" * 5), frame(1, b"t"), frame(2, b"w" * 130), frame(9, b"hi"), frame(10, b""),
     frame(2, b"f", fin=False) + frame(0, b"g"), frame(1, b"f", fin=False) + frame(9, b"") + frame(0, b"h"),
     frame(2, b"")]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_good, max_size=6), st.sampled_from(BAD) | st.none(), st.lists(_good, max_size=3),
       st.lists(st.integers(min_value=0), max_size=8))
def test_both_builds_agree_on_any_stream(before: list[bytes], bad: bytes | None, after: list[bytes], cuts: list[int]) -> None:
    """Messages, their relative receive times, the frames written back and the error, the same
    from the C build as from the Python definition, for good and bad streams cut anywhere."""
    if len(BUILDS) < 2:
        pytest.skip("the C build of the frame loop is not built here")
    stream = b"".join(before) + (bad or b"") + b"".join(after)
    chunks = cut(stream, cuts)
    py = feed("python", chunks, limit=1000)
    c = feed("c", chunks, limit=1000)
    assert c == py
    if bad is not None and bad is not BAD[-1]:
        assert py[3] is not None and "socket closed (code" in py[3]


async def test_every_recorded_message_keeps_a_receive_time_of_its_own(tmp_path, sim) -> None:
    """Through the whole recorder: messages that came in one read get the read's time plus 1 µs
    each, so a book message's rows are still the only rows with their (symbol, recv_ts)."""
    from recorder import connect as open_lake
    from recorder.collector import Collector

    from .recording import SYMBOLS, books_valid, finish, options, start

    c = Collector("bitmart", list(SYMBOLS), options(tmp_path, sim))
    task = await start(c)
    await wait_for(lambda: books_valid(c), 10, "first snapshots")
    await asyncio.sleep(1.5)
    await finish(c, sim, task)
    con = open_lake(tmp_path)
    shared = con.execute(
        "select count(*) from (select symbol, recv_ts from book_updates group by all having count(distinct seq) > 1)"
    ).fetchone()[0]
    assert shared == 0, f"{shared} receive times carry rows of more than one book message"
    (messages, one_us_apart) = con.execute(
        "select count(*), count(*) filter (where gap = 1) from (select epoch_us(recv_ts) - lag(epoch_us(recv_ts)) "
        "over (order by epoch_us(recv_ts)) as gap from (select distinct symbol, recv_ts, seq from book_updates))"
    ).fetchone()
    assert messages > 100
    assert one_us_apart > 0, "no read held two messages: the test proves nothing"
