"""BitMart spot's C push reader (`recorder/venues/_bitmart_spot.pyx`) is the Python `parse` and
`decode`, only faster: for every payload the codec's `parse` gives the records (or the error) the
Python gives, bit for bit, and for every frame its `decode` the Python's payload (or error); the C
build takes every push of the simulator's tape and hands everything else to the Python; it is
adopted only when it is the build of the source beside it."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder import native
from recorder.venues import bitmart_spot as bs

from .test_bitmart_spot_fast_path import _tape

ROOT = Path(__file__).resolve().parents[2]
C = bs._NATIVE
needs_build = pytest.mark.skipif(
    C is None and not os.environ.get("CI"), reason="the C build of the BitMart spot reader is not built here"
)
pytestmark = needs_build


def _same(raw) -> list:
    """The codec's parse (the C build) and the Python definition agree (repr: -0.0 is not 0.0)."""
    got = bs._Codec().parse(raw)
    assert repr(got) == repr(bs.parse(raw)), raw
    return got


def _payloads(events: int) -> list[bytes]:
    return [zlib.decompress(f, -zlib.MAX_WBITS) for f in _tape(events)]


def test_the_codec_runs_the_c_build_of_its_source() -> None:
    assert C is not None
    assert bs._Codec().parse is C.parse
    assert bs._Codec().decode is C.decode
    assert hashlib.sha256((ROOT / "recorder/venues/_bitmart_spot.pyx").read_bytes()).hexdigest() == C.SOURCE_SHA256


def test_every_tape_push_takes_the_c_way_with_the_pythons_records() -> None:
    payloads = _payloads(3000)
    kinds = set()
    for raw in payloads:
        got = C.read(raw)
        assert got is not None, raw  # every push of the venue's layout
        assert repr(got) == repr(bs._typed(raw)), raw
        kinds.add(type(got[0]).__name__)
    assert kinds == {"BookMessage", "TradeBatch"}


def test_cut_or_changed_pushes_read_as_the_python() -> None:
    """Every prefix of a few real pushes, and every one-byte change of one: never a crash, never a
    record the Python would not give."""
    payloads = _payloads(200)
    book = next(p for p in payloads if b"increase100" in p and b'"asks":[[' in p)
    trade = next(p for p in payloads if b"spot/trade" in p)
    for raw in (book, trade):
        for n in range(len(raw) + 1):
            _same(raw[:n])
        for i in range(len(raw)):
            for b in (b" ", b"0", b"-", b'"', b"\\", b"e", b".", b"\x00", b"\xc3", b"}", b"]", b","):
                _same(raw[:i] + b + raw[i + 1 :])
            for n in range(2, 9):  # a span gone: `"s_t":1,` -> `"s_t""side"`
                _same(raw[:i] + raw[i + n :])
            for token in (b'"ms_t"', b'"asks"', b'"s_t"', b":", b",", b"[", b"{", b'""', b'"x":1,'):
                _same(raw[:i] + token + raw[i:])


WIRE_BOOK = '{"data":[%s],"table":"spot/depth/increase100"}'
BOOK_ITEM = '{"asks":%s,"bids":%s,"ms_t":%s,"symbol":%s,"type":%s,"version":%s}'
WIRE_TRADE = '{"data":[%s],"table":"spot/trade"}'


@pytest.mark.parametrize(
    "raw",
    [
        WIRE_BOOK % (BOOK_ITEM % ('[["1.5","2"]]', "[]", "1700000000000", '"BTC_USDT"', '"snapshot"', "7")),
        WIRE_BOOK % (BOOK_ITEM % ('[["1.5","2"]]', "[]", "1700000000000", '"BTC_USDT"', '"snap\\u0073hot"', "7")),
        WIRE_BOOK % (BOOK_ITEM % ('[["1.5","2"]]', "[]", "1700000000000", '"B\\u00c4"', '"update"', "7")),
        WIRE_BOOK % (BOOK_ITEM % ('[["1.5","2"]]', "[]", "1700000000000", '"BÄ"', '"update"', "7")),
        WIRE_BOOK % (BOOK_ITEM % ('[["-0","2"]]', '[["0.0","-1"]]', "1", '"A"', '"update"', "-0")),
        WIRE_BOOK % (BOOK_ITEM % ('[["1e3","2E-2"]]', "[]", "1", '"A"', '"update"', "5")),
        WIRE_BOOK % (BOOK_ITEM % ('[["9007199254740993","0.1000000000000000055511151231257827"]]', "[]", "1",
                                  '"A"', '"update"', "5")),
        WIRE_BOOK % (BOOK_ITEM % ('[["123456789012345678901234567890.5","1"]]', "[]", "1", '"A"', '"update"', "5")),
        # past the largest double (inf, as float() reads it), and below the smallest
        WIRE_BOOK % (BOOK_ITEM % (f'[["{"9" * 400}","1"]]', "[]", "1", '"A"', '"update"', "5")),
        WIRE_BOOK % (BOOK_ITEM % (f'[["1{"0" * 308}","{"1" * 309}.5"]]', "[]", "1", '"A"', '"update"', "5")),
        WIRE_BOOK % (BOOK_ITEM % (f'[["0.{"0" * 400}1","0.{"0" * 320}5"]]', "[]", "1", '"A"', '"update"', "5")),
        WIRE_BOOK % (BOOK_ITEM % ("[]", "[]", "9223372036854775807", '"A"', '"update"', "123456789012345678")),
        WIRE_BOOK % (BOOK_ITEM % ("[]", "[]", "9000000000000001", '"A"', '"update"', "1234567890123456789")),
        WIRE_BOOK % (BOOK_ITEM % ("[]", "[]", "1.0", '"A"', '"update"', "5")),
        WIRE_BOOK % (BOOK_ITEM % ("[]", "[]", '"1"', '"A"', '"update"', "5")),
        WIRE_BOOK % (BOOK_ITEM % ("[]", "[]", "1", '"A"', '"update"', "05")),
        WIRE_BOOK % (BOOK_ITEM % ("[]", "[]", "1", '"A"', '"update"', "5") + "," + BOOK_ITEM % ("[]", "[]", "2", '"B"', '"update"', "6")),
        WIRE_BOOK % "",
        ' \n{ "data" : [ ' + BOOK_ITEM % ('[ [ "1" , "2" ] ]', "[ ]", "1", '"A"', '"update"', "5") + ' ] , "table" : "spot/depth/increase100" } \r\n',
        WIRE_BOOK % (BOOK_ITEM % ("[]", "[]", "1", '"A"', '"update"', "5")) + "x",
        '{"data":[{"asks":[],"bids":[],"ms_t":1,"symbol":"A","type":"update","version":5,"x":1}],"table":"spot/depth/increase100"}',
        '{"data":[{"bids":[],"asks":[],"ms_t":1,"symbol":"A","type":"update","version":5}],"table":"spot/depth/increase100"}',
        '{"data":[{"asks":[],"bids":[],"ms_t":1,"symbol":"A","type":"update","version":5}],"table":"spot/trade"}',
        '{"data":[{"asks":[],"bids":[],"ms_t":1,"symbol":"A","type":"update","version":5}],"table":"spot/depth5"}',
        '{"data":[{"asks":[],"bids":[],"ms_t":1,"symbol":"A","type":"update","version":5}],"table":"spot/depth/increase100","table":"spot/trade"}',
        WIRE_TRADE % '{"ms_t":1,"price":"1","s_t":1,"side":"buy","size":"2","symbol":"A"}',
        WIRE_TRADE % '{"ms_t":1,"price":"1","side":"sell","size":"2","symbol":"A"}',
        WIRE_TRADE % '{"ms_t":1,"price":"1","side":"hold","size":"2","symbol":"A"}',
        WIRE_TRADE % '{"ms_t":1,"price":"1","side":"b\\u0075y","size":"2","symbol":"A"}',
        WIRE_TRADE % '{"ms_t":1,"price":"1","s_t":"x","side":"buy","size":"2","symbol":"A"}',
        WIRE_TRADE % '{"price":"1","s_t":1,"side":"buy","size":"2","symbol":"A"}',
        # a key without its colon must not let the next key be tried from past it (found at review)
        WIRE_TRADE % '{"asks""ms_t":1,"price":"1","side":"buy","size":"1","symbol":"A"}',
        WIRE_TRADE % '{"asks" "ms_t":1,"price":"1","side":"buy","size":"1","symbol":"A"}',
        WIRE_TRADE % '{"ms_t":1,"price":"1","s_t""side":"buy","size":"1","symbol":"A"}',
        WIRE_TRADE % ('{"ms_t":1,"price":"1","side":"buy","size":"2","symbol":"A"},'
                      '{"ms_t":2,"price":"3","side":"sell","size":"4","symbol":"B"},'
                      '{"ms_t":3,"price":"5","side":"buy","size":"6","symbol":"A"}'),
        WIRE_TRADE % ('{"ms_t":1,"price":"1","side":"buy","size":"2","symbol":"A"},'
                      + BOOK_ITEM % ("[]", "[]", "1", '"A"', '"update"', "5")),
        "pong", "ping", '{"event":"subscribe","topic":"spot/trade:A"}', '{"errorCode":"90004","errorMessage":"x"}',
        "", "{", "[]", "null",
    ],
)
def test_odd_pushes_read_as_the_python(raw: str) -> None:
    _same(raw.encode())
    _same(raw)  # a text frame's payload: the Python's


def test_symbols_are_shared_objects_and_never_mixed_up() -> None:
    """The reader keeps one str a symbol (4,096 slots by a hash of the bytes): symbols sharing a slot
    get their own text, and the same symbol gives the same object."""
    names = [f"S{i}_USDT" for i in range(10000)]
    for name in names * 2:
        raw = (WIRE_BOOK % (BOOK_ITEM % ("[]", "[]", "1", f'"{name}"', '"update"', "5"))).encode()
        (m,) = C.read(raw)
        assert m.symbol == name
    raw = (WIRE_BOOK % (BOOK_ITEM % ("[]", "[]", "1", '"ONE"', '"update"', "5"))).encode()
    assert C.read(raw)[0].symbol is C.read(raw)[0].symbol


# long ones as integers' digits: hypothesis draws those far faster than 300-420 character texts
_DIGITS = st.one_of(st.text("0123456789", min_size=1, max_size=25), st.integers(10**299, 10**420).map(str))
_DECIMAL = st.one_of(
    _DIGITS,
    st.builds(lambda i, f: f"{i}.{f}", _DIGITS, _DIGITS),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["0", "-0", "-1.5", "1e5", "1.", ".5", "00.1", "1_0", " 1", "nan", "", "0.0000000000000000000001"]),
)
_NUMBER = st.one_of(_DECIMAL.map(lambda s: f'"{s}"'), st.sampled_from(["1", "1.5", "-0", "null", "true"]))
_INT = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["-0", "05", "1.0", "1e3", '"5"', "null", "true", "9223372036854775808"]),
)
_SYMBOL = st.sampled_from(['"BTC_USDT"', '"A"', '""', '"BÄ"', '"B\\u0041"', '"B\\"C"', "1"])
_WS = st.sampled_from(["", "", "", " ", "\n ", "\t"])


@st.composite
def _pushes(draw) -> bytes:
    ws = draw(_WS)
    levels = lambda: "[" + ",".join(  # noqa: E731
        f"[{ws}{p},{q}]" for p, q in draw(st.lists(st.tuples(_NUMBER, _NUMBER), max_size=3))
    ) + "]"
    items = []
    trades = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        if trades:
            fields = [("ms_t", draw(_INT)), ("price", draw(_NUMBER))]
            if draw(st.booleans()):
                fields.append(("s_t", draw(_INT)))
            fields += [("side", draw(st.sampled_from(['"buy"', '"sell"', '"hold"', '"Buy"']))),
                       ("size", draw(_NUMBER)), ("symbol", draw(_SYMBOL))]
        else:
            fields = [("asks", levels()), ("bids", levels()), ("ms_t", draw(_INT)), ("symbol", draw(_SYMBOL)),
                      ("type", draw(st.sampled_from(['"update"', '"snapshot"', '"Snapshot"']))),
                      ("version", draw(_INT))]
        if draw(st.integers(0, 9)) == 0:  # now and then another key order, a missing or an extra key
            fields = draw(st.permutations(fields))[: len(fields) - draw(st.integers(0, 1))]
            if draw(st.booleans()):
                fields.append(("x", "1"))
        items.append("{" + f",{ws}".join(f'"{k}":{ws}{v}' for k, v in fields) + "}")
    table = draw(st.sampled_from(
        ["spot/trade", "spot/depth/increase100"] if draw(st.integers(0, 9)) else ["spot/depth5", "spot/other"]
    ))
    data = f'"data":{ws}[{",".join(items)}]'
    body = f'{data},{ws}"table":"{table}"' if draw(st.integers(0, 9)) else f'"table":"{table}",{data}'
    return f"{ws}{{{body}}}{ws}".encode()


@settings(max_examples=1500, deadline=None)  # ~6 ms an example (nested draws): ~10 s
@given(raw=_pushes())
def test_any_push_reads_as_the_python_bit_for_bit(raw: bytes) -> None:
    _same(raw)


def _decoded(frame) -> tuple:
    """What a decode gives: its payload, or its exception's type and words."""
    try:
        return ("ok", bs._Codec().decode(frame))
    except Exception as exc:  # noqa: BLE001 - the two builds must fail alike, whatever the error
        return (type(exc), str(exc))


def _same_frame(frame) -> None:
    """The codec's decode (the C build) and the Python definition agree, errors included."""
    got = _decoded(frame)
    try:
        want = ("ok", bs.decode(frame))
    except Exception as exc:  # noqa: BLE001
        want = (type(exc), str(exc))
    assert got == want, frame[:60]


def test_every_tape_frame_decodes_as_the_python() -> None:
    frames = _tape(3000)
    for frame in frames:
        assert _decoded(frame) == ("ok", zlib.decompress(frame, -zlib.MAX_WBITS))


def _deflated(payload: bytes, wbits: int) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return c.compress(payload) + c.flush()


def test_odd_frames_decode_as_the_python() -> None:
    """Whatever is not a small raw-deflate frame that ISA-L reads (a broken stream, a zlib or gzip
    wrapper, a frame at the size the Python caps, a deflate bomb, other types) is the Python's:
    the same payload or the same error, worded the same."""
    frame = _tape(10)[0]
    big = random.Random(1).randbytes(20_000)  # incompressible: a deflated frame past _SMALL_FRAME
    cases = [
        b"", b"\x00", b"garbage", frame[:-3], frame[:1], frame + b"trailing", bytes([frame[0] ^ 0xFF]) + frame[1:],
        _deflated(b'{"data":[],"table":"spot/trade"}', zlib.MAX_WBITS),  # zlib header
        _deflated(b'{"data":[],"table":"spot/trade"}', 16 + zlib.MAX_WBITS),  # gzip header
        _deflated(big, -zlib.MAX_WBITS),  # an ordinary frame, but not a small one
        _deflated(b"\x00" * (2 * bs.MAX_INFLATED_BYTES), -zlib.MAX_WBITS),  # past the cap (a deflate bomb)
        bytearray(frame), memoryview(frame), "a text frame",
    ]
    assert len(cases[9]) >= bs._SMALL_FRAME > len(frame)
    with pytest.raises(ValueError, match="deflate bomb"):
        bs.decode(cases[10])  # ISA-L would inflate it all: only the Python's way caps it
    for case in cases:
        _same_frame(case)
    for i in range(len(frame)):  # every byte of a real frame changed, and every prefix
        _same_frame(frame[:i] + bytes([frame[i] ^ 0x55]) + frame[i + 1 :])
        _same_frame(frame[:i])


def test_a_reader_build_older_than_its_source_is_not_adopted(tmp_path) -> None:
    """Edit the venue's .pyx without rebuilding: the codec runs the Python parse and decode and says
    why, once; RECORDER_PURE_PYTHON=1 runs the Python too."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "recorder", tree / "recorder", ignore=shutil.ignore_patterns("__pycache__"))
    code = ("from recorder.venues import bitmart_spot as b; "
            "print(b._NATIVE is None, b._Codec().parse is b.parse, b._Codec().decode is b.decode)")

    def run(**extra: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        env.pop(native.PURE_ENV, None)
        return subprocess.run([sys.executable, "-c", code], cwd=tree, env={**env, **extra}, capture_output=True,
                              text=True, timeout=60)

    assert run().stdout.split() == ["False", "False", "False"]
    assert run(**{native.PURE_ENV: "1"}).stdout.split() == ["True", "True", "True"]  # the Python on purpose
    pyx = tree / "recorder" / "venues" / "_bitmart_spot.pyx"
    pyx.write_text(pyx.read_text() + "\n# edited after the build\n")
    stale = run()
    assert stale.returncode == 0, stale.stderr
    assert stale.stdout.split() == ["True", "True", "True"]
    assert "older than" in stale.stderr and "_bitmart_spot.pyx" in stale.stderr
    assert len(stale.stderr.strip().splitlines()) == 1
