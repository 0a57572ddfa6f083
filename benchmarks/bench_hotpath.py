"""The recorder's per-frame work in one process, without sockets: where each microsecond goes.

Not a test. The BitMart spot simulator's pre-encoded tape (the frames `bench_record.py` sends over a
socket, raw-deflate binary, interleaved 64 frames per topic as the simulator sends them) is fed to
a real collector's dispatcher: inflate, decode, book engine, row buffers, raw log (zstd, written to
disk) and Parquet files (written every `--flush-every` frames, in this thread), all the real code.
Each stage is then timed alone on the same frames, so the table says what a frame costs where.
The socket and aiohttp's reader are not in it (bench_record.py measures the whole process; a bare
aiohttp reader costs about 2 µs a frame when it reads big batches).

On this project's VM even one process's CPU time moves by 10-30 % from run to run (the host's other
guests), so `--instructions` counts instead: the pipeline's machine instructions a frame under
valgrind (cachegrind without its cache model; two runs of this script, with and without the
pipeline, and their difference over the frames). The count moves by up to ~2 k (3 %) from run to
run (seen 51.6-53.6 k on the same tree: temp paths, run ids and clock values reach the raw log and
Parquet, and the hash seed; a fixed PYTHONHASHSEED did not steady it), so compare a few runs of
each; it does not see cache misses or branch mispredictions (inflate's biggest cost), so changes are
judged on it first and on bench_record.py's CPU per message second. The stage table divides the
work by timing each stage alone on the same frames; alone they run on cold lists, so they read a
little high and "the rest" (by difference) a little low.

    python benchmarks/bench_hotpath.py                 # 1 symbol, 200k events
    python benchmarks/bench_hotpath.py --symbols 100 --events 400000
    python benchmarks/bench_hotpath.py --instructions  # needs valgrind; 20k events, ~1 min
"""

from __future__ import annotations

import argparse
import gc
import re
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import repeat
from pathlib import Path


class Tape(list):
    """The frames, and `owner[i]`: the index (in `symbols`) of the market frame i belongs to."""

    owner: list[int]

    def head(self, n: int) -> Tape:
        out = Tape(self[:n])
        out.owner = self.owner[:n]
        return out


def tape(symbols: int, events: int) -> tuple[Tape, list[str]]:
    """The simulator's frames in its sending order (snapshots, then 64 frames per topic in turn),
    and its market ids (the user symbols)."""
    from recorder.sim.frontends.bitmart_spot import BitmartSpotSim

    sim = BitmartSpotSim(symbols=symbols, seed=1, rate=0, tape_events=events, include_pre_trade=False)
    sim.build_tapes(sim.market.steps(events))
    tapes = list(sim._tapes.values())
    out = Tape(t.snapshot for t in tapes)
    out.owner = list(range(len(tapes)))
    cursors = [t.depth for t in tapes] + [[f for f, _ in t.trades] for t in tapes]
    index = [0] * len(cursors)
    while True:
        moved = False
        for i, frames in enumerate(cursors):
            chunk = frames[index[i] : index[i] + 64]
            if chunk:
                out.extend(chunk)
                out.owner.extend([i % len(tapes)] * len(chunk))
                index[i] += len(chunk)
                moved = True
        if not moved:
            return out, list(sim._tapes)


def collector(symbols: list[str], data: Path, raw: bool):
    """A real collector's connections (115 topics each: 57 markets), not connected, and for each
    market the dispatcher of the connection that holds it."""
    from recorder.collector import Collector, Options
    from recorder.venues.contract import Instrument

    c = Collector("bitmart", symbols, Options(data_dir=data, raw=raw, ws_url="ws://x", rest_url="http://x"))
    c.instruments = [Instrument(s, s.replace("-", "_")) for s in symbols]
    conns = c._open(c.instruments)
    holder = {wire: conn.dispatcher for conn in conns for wire in conn.dispatcher.book_by_wire}
    return c, conns, [holder[i.wire] for i in c.instruments]


def run_pipeline(frames: Tape, symbols: list[str], raw: bool, flush_every: int) -> tuple[float, float, int]:
    """CPU seconds for the whole pipeline over `frames`, of which in Parquet writes, and the rows
    written."""
    data = Path(tempfile.mkdtemp(prefix="bench-hotpath-"))
    try:
        c, conns, by_market = collector(symbols, data, raw)
        rawlogs = [conn.dispatcher.rawlog for conn in conns if raw]
        owner = [by_market[i] for i in frames.owner]  # each frame's dispatcher
        raw_every = max(1, flush_every // 25)  # the raw log flushes 5x a second, tables every ~5 s
        rows, writing = 0, 0.0

        def flush() -> None:
            nonlocal rows, writing
            for rawlog in rawlogs:
                rawlog.sync()
            w0 = time.process_time()
            rows += c.sink.write(c.sink.take()) or 0
            writing += time.process_time() - w0

        recv = time.time_ns() // 1000
        gc.collect()
        t0 = time.process_time()
        # one connection (≤ 57 markets): the loop the figures in the README were measured with
        pairs = zip(repeat(owner[0]), frames) if len(conns) == 1 else zip(owner, frames, strict=True)
        for n, (d, f) in enumerate(pairs, 1):
            d.frame(recv + n, f)
            if n % raw_every == 0:
                for rawlog in rawlogs:
                    rawlog.flush()
            if n % flush_every == 0:
                flush()
        flush()
        for rawlog in rawlogs:
            rawlog.close()
        return time.process_time() - t0, writing, rows
    finally:
        shutil.rmtree(data, ignore_errors=True)


def instructions(symbols: int, events: int) -> float:
    """The pipeline's instructions a frame: valgrind runs of this script without and with it."""
    counts = []
    for child in ("setup", "pipeline"):
        cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
               sys.executable, __file__, "--symbols", str(symbols), "--events", str(events), "--child", child]
        err = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
        m = re.search(r"I\s+refs:\s+([\d,]+)", err)
        if m is None:
            raise SystemExit(f"no instruction count from valgrind: {err[-300:]}")
        counts.append(int(m.group(1).replace(",", "")))
    return (counts[1] - counts[0]) / len(tape(symbols, events)[0])


def timed(fn, items) -> float:
    gc.collect()
    t0 = time.process_time()
    for x in items:
        fn(x)
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=1)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--flush-every", type=int, default=250_000, help="frames between two Parquet flushes")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for each figure")
    ap.add_argument("--whole", action="store_true", help="only the whole pipeline (A/B runs of two trees)")
    ap.add_argument("--instructions", action="store_true", help="instructions a frame, under valgrind")
    ap.add_argument("--child", choices=["setup", "pipeline"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.instructions:
        events = a.events if a.events != 200_000 else 20_000
        print(f"{instructions(a.symbols, events):,.0f} instructions a frame ({a.symbols} symbol(s), {events:,} events)")
        return

    from recorder.venues import bitmart_spot as spot

    frames, symbols = tape(a.symbols, a.events)
    if a.child:  # under valgrind: imports and set-up (one Parquet write of each table), then the pipeline
        run_pipeline(frames.head(200), symbols, True, 10**9)
        if a.child == "pipeline":
            run_pipeline(frames, symbols, True, 10**9)
        return
    n = len(frames)
    if a.whole:
        print(f"{min(run_pipeline(frames, symbols, True, a.flush_every)[0] for _ in range(a.repeat)) / n * 1e6:.2f}")
        return
    payloads = [spot.decode(f) for f in frames]
    best = lambda f: min(f() for _ in range(a.repeat))  # noqa: E731

    inflate = best(lambda: timed(spot.decode, frames))
    parse = best(lambda: timed(spot.parse, payloads))
    runs = [run_pipeline(frames, symbols, True, a.flush_every) for _ in range(a.repeat)]
    whole, writing, rows = min(runs)
    whole_noraw = min(run_pipeline(frames, symbols, False, a.flush_every)[0] for _ in range(a.repeat))

    us = lambda s: s / n * 1e6  # noqa: E731
    print(f"{n:,} frames, {a.symbols} symbol(s), {rows:,} rows ({rows / n:.2f} a frame)")
    print(f"{'stage':<44}{'µs/frame':>10}")
    table = [
        ("inflate (decode)", us(inflate)),
        ("parse (typed JSON -> records)", us(parse)),
        ("routing, book engine, row buffers (the rest)", us(whole_noraw - writing - inflate - parse)),
        ("raw log: buffer, zstd, write (by difference)", us(whole - whole_noraw)),
        ("Parquet: Arrow columns, encode, write", us(writing)),
        ("whole pipeline, raw log on", us(whole)),
        ("whole pipeline, raw log off", us(whole_noraw)),
    ]
    for name, v in table:
        print(f"{name:<44}{v:>10.2f}")


if __name__ == "__main__":
    main()
