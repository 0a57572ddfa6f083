# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The C build of `WebSocket._frames` (recorder/transport/websocket.py): a chunk's frames parsed and
handed over, step for step as the Python does it, adopted like the engine's (`recorder.native`:
built, and built from this very source). Only the loop is here: what a frame rarely needs (a
control frame, a fragment, reserved bits, a text's UTF-8 check, keeping a partial frame, an error's
words) is the Python's, called from here. tests/test_websocket.py runs both builds on the same
bytes, cut anywhere, and compares what comes out (messages, their times, what is written back,
the errors).

Why: the Python loop costs ~0.4 µs a frame (header, length, slice, call), a few per cent of a
message's ~6-9 µs (README, "Hot path, tenth pass").
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint64_t

import time

cdef extern from *:
    """
    #ifndef RECORDER_SOURCE_SHA256
    #define RECORDER_SOURCE_SHA256 ""
    #endif
    """
    const char* RECORDER_SOURCE_SHA256

# sha256 of this file when it was compiled (setup.py): `recorder.native` adopts the build only when
# it matches the .pyx beside it
SOURCE_SHA256 = RECORDER_SOURCE_SHA256.decode()

cdef object _time_ns = time.time_ns
cdef object _Error = None  # websocket.WebSocketError
cdef object _text = None  # websocket._text
cdef int _PROTOCOL_ERROR = 1002
cdef int _TOO_BIG = 1009


def setup(error, text):
    """The Python pieces this build raises and calls (set once by websocket.py)."""
    global _Error, _text
    _Error, _text = error, text


def frames(ws, bytes data not None):
    """`WebSocket._frames`: parse every whole frame of `data`, keep the rest."""
    cdef int64_t recv = _time_ns() // 1000
    cdef int64_t last = ws._last_recv
    if recv <= last:
        recv = last + 1
    on_frame = ws.on_frame
    cdef uint64_t limit = ws.max_frame_bytes
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t pos = 0, end = PyBytes_GET_SIZE(data), head, stop, width, i
    cdef int64_t count = 0
    cdef unsigned char b0, b1
    cdef uint64_t n
    cdef bint whole = not ws._fragment_op
    try:
        while True:
            if end - pos < 2:
                if end > pos:
                    ws._keep(data[pos:], 2)
                return
            b0 = p[pos]
            b1 = p[pos + 1]
            n = b1 & 0x7F
            head = pos + 2
            if n >= 126:
                width = 2 if n == 126 else 8
                if end - head < width:
                    ws._keep(data[pos:], 2 + width)
                    return
                n = 0
                for i in range(width):
                    n = (n << 8) | p[head + i]
                head += width
            if b1 & 0x80:
                raise _Error(ws._closing(_PROTOCOL_ERROR, "the server sent a masked frame"))
            if n > limit:
                raise _Error(ws._closing(_TOO_BIG, f"frame too large (limit {int(limit):,} bytes): {int(n):,} bytes"))
            stop = head + <Py_ssize_t>n
            if stop > end:
                ws._keep(data[pos:], stop - pos)
                return
            if b0 == 0x82 and whole:  # a whole binary message: the venues' common case
                on_frame(recv + count, PyBytes_FromStringAndSize(<const char*>p + head, stop - head))
                count += 1
            elif b0 == 0x81 and whole:
                on_frame(recv + count, _text(data[head:stop], ws))
                count += 1
            else:
                message = ws._other(b0, data[head:stop])
                whole = not ws._fragment_op
                if message is not None:
                    on_frame(recv + count, message)
                    count += 1
                elif ws._ended:
                    return
            pos = stop
    finally:
        if count:
            recv = recv + count - 1
            ws._last_recv = recv
            ws.on_chunk(recv, count)
