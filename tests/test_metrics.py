"""Prometheus metrics and /healthz, scraped over HTTP from a real recorder recording the simulator
over real sockets: the counts equal what the Parquet tables, the events and the raw logs hold after
injected gaps and a forced disconnect; /healthz turns 503 when the simulator goes silent (and when
the disk refuses writes) and 200 again when it recovers."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recorder import connect
from recorder.collector import Collector
from recorder.errors import RecorderError
from recorder.metrics import Exporter
from recorder.storage.rawlog import BADFRAME, FRAME, read_records

from .processes import RECORDER
from .recording import (
    SYMBOLS,
    books_valid,
    finish,
    options,
    record_trades,
    settle,
    start,
    wait_for,
)
from .test_disk_full import fill, small_disk  # noqa: F401 (a fixture: a real small tmpfs)
from .test_s3 import BUCKET, _objects
from .test_s3 import s3 as s3  # a fixture: moto's S3 server on 127.0.0.1

Samples = list[tuple[str, dict[str, str], float]]


async def scrape(port: int) -> Samples:
    """GET /metrics, parsed by prometheus_client's own parser: (sample name, labels, value)."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    return [(x.name, x.labels, x.value) for fam in text_string_to_metric_families(text) for x in fam.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == w for k, w in labels.items()))


def has_sample(samples: Samples, name: str) -> bool:
    return any(n == name for n, _, _ in samples)


async def healthz(port: int) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
        return r.status, await r.json()


async def wait_health(port: int, status: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got, body = await healthz(port)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"/healthz stayed {got} ({body}), expected {status}"
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def exported(c: Collector, shipper=None):
    """The collector recording and its exporter serving on a free port; yields (port, the collector's
    task); stops both at the end (bounded: the collector's own stop)."""
    exporter = Exporter([c], shipper)
    port = await exporter.start(port=0)
    task = await start(c)
    try:
        yield port, task
    finally:
        c.stop()
        await asyncio.gather(task, return_exceptions=True)
        await exporter.stop()


def raw_frames(data: Path) -> int:
    """Frames the raw logs hold (each received frame is one record, readable or not)."""
    return sum(1 for p in (data / "raw").rglob("*.zst") for _, kind, _ in read_records(p) if kind in (FRAME, BADFRAME))


def flushed(c: Collector) -> bool:
    """No trade or book row in memory, and no write of them still in flight."""
    idle = c._inflight is None or c._inflight.done()
    return idle and not any(s.trades or s.book.rows for s in c.streams.values())


async def test_scraped_counts_equal_what_was_stored(tmp_path, sim):
    """Two gaps and a disconnect, then the counters of a mid-run scrape (market paused, everything
    flushed) against the tables, and a scrape after the stop against the raw logs and files. One
    exporter sums over markets (the default), one has a symbol label: they agree."""
    c = Collector("bitmart", list(SYMBOLS), options(tmp_path, sim))
    agg, per = Exporter([c]), Exporter([c], per_symbol=True)
    port, port_per = await agg.start(port=0), await per.start(port=0)
    task = await start(c)
    try:
        await wait_for(lambda: books_valid(c), 10, "first snapshots")
        await record_trades(sim, 100)
        for wire, user in (("BTC_USDT", "BTC-USDT"), ("ETH_USDT", "ETH-USDT")):
            gaps = c.streams[user].book.gaps
            sim.skip_version(wire)
            await wait_for(lambda u=user, g=gaps: c.streams[u].book.gaps > g and books_valid(c), 15, "gap + resync")
        sim.drop_connections()
        await wait_for(lambda: sum(x.reconnects for x in c.connections) == 1 and books_valid(c), 20, "reconnect")
        await record_trades(sim, 100)
        await settle(c, sim)  # market paused, recorder caught up (heartbeats still flow)
        await wait_for(lambda: flushed(c), 10, "a flush of every trade and book row")
        mid, mid_per = await scrape(port), await scrape(port_per)
        c.stop()
        await asyncio.wait_for(task, 20)
        end = await scrape(port)
    finally:
        c.stop()
        await asyncio.gather(task, return_exceptions=True)
        await agg.stop()
        await per.stop()

    con = connect(tmp_path)

    def events(event: str, symbol: str | None = None) -> int:
        q = "select count(*) from events where event = ?" + (" and symbol = ?" if symbol else "")
        return con.execute(q, [event, symbol] if symbol else [event]).fetchone()[0]

    def rows(table: str, symbol: str | None = None) -> int:
        q = f"select count(*) from {table}" + (" where symbol = ?" if symbol else "")
        return con.execute(q, [symbol] if symbol else []).fetchone()[0]

    assert value(mid, "recorder_gaps_total", channel="book") == events("gap") == 2
    assert value(mid, "recorder_resyncs_total") == events("resync") >= 6  # 2 first books, 2 gaps, 2 after reconnect
    assert value(mid, "recorder_errors_total") == events("error")
    assert value(mid, "recorder_stream_disconnects_total") == events("disconnect") == 4  # 2 markets x 2 channels
    assert value(mid, "recorder_reconnects_total", exchange="bitmart", connection="0") == 1
    assert value(mid, "recorder_trades_total") == rows("trades") >= 400
    assert value(mid, "recorder_rows_written_total", table="trades") == rows("trades")
    assert value(mid, "recorder_rows_written_total", table="book_updates") == rows("book_updates") > 0
    assert value(mid, "recorder_buffered_rows", table="trades") == 0
    assert value(mid, "recorder_books_valid") == 2 and value(mid, "recorder_healthy") == 1
    for user in SYMBOLS:
        assert value(mid_per, "recorder_gaps_total", symbol=user, channel="book") == events("gap", user) == 1
        assert value(mid_per, "recorder_trades_total", symbol=user) == rows("trades", user)
        assert value(mid_per, "recorder_rows_written_total", symbol=user, table="book_updates") == rows(
            "book_updates", user)
    for name in ("recorder_gaps_total", "recorder_resyncs_total", "recorder_trades_total", "recorder_rows_written_total"):
        assert value(mid_per, name) == value(mid, name), name
    assert not any("symbol" in lab for _, lab, _ in mid)  # the default: no per-market series

    # exchange-to-receive lag: sampled, every sample within the histogram, on localhost well under 1 s
    for channel in ("trades", "book"):
        n = value(mid, "recorder_receive_lag_seconds_count", channel=channel)
        assert n > 0
        assert value(mid, "recorder_receive_lag_seconds_bucket", channel=channel, le="+Inf") == n
        assert value(mid, "recorder_receive_lag_seconds_bucket", channel=channel, le="1") == n
        assert 0 <= value(mid, "recorder_receive_lag_seconds_sum", channel=channel) < n

    # after the stop: every frame received is one raw-log record; bytes and files are those on disk
    assert 0 < value(mid, "recorder_messages_total") <= value(end, "recorder_messages_total") == raw_frames(tmp_path)
    logs = list((tmp_path / "raw").rglob("*.zst"))
    assert value(end, "recorder_raw_log_bytes_total") == sum(p.stat().st_size for p in logs) > 0
    assert value(end, "recorder_files_written_total") == len(list(tmp_path.rglob("*.parquet")))
    assert value(end, "process_resident_memory_bytes") > 10e6 and has_sample(end, "process_cpu_seconds_total")

    # deploy/grafana-dashboard.json queries only series the recorder serves (the s3 ones: with a spool)
    dashboard = (Path(__file__).parents[1] / "deploy" / "grafana-dashboard.json").read_text()
    queried = set(re.findall(r"\b((?:recorder|process)_[a-z_]+)", dashboard))
    served = {n for n, _, _ in end} | {"recorder_files_published_total", "recorder_last_publish_age_seconds"}
    assert queried and queried <= served, queried - served


async def test_healthz_flips_when_the_simulator_goes_silent_and_back(tmp_path, sim):
    c = Collector("bitmart", list(SYMBOLS), options(tmp_path, sim))
    async with exported(c) as (port, task):
        await wait_for(lambda: books_valid(c), 10, "first snapshots")
        await record_trades(sim, 100)  # the watcher learns a busy stream: a short silence limit
        body = await wait_health(port, 200, 10)
        assert body["status"] == "ok" and body["streams"] == 2
        limit = value(await scrape(port), "recorder_silence_limit_seconds")
        assert 0 < limit < 5

        sim.go_dead(new_connections=True)  # no frames, no pongs, also on the sockets it accepts next
        assert (await healthz(port))[0] == 200  # silent for less than its limit: still healthy
        went = time.monotonic()
        body = await wait_health(port, 503, 15)
        # not before its own limit and the unanswered ping's timeout (to a watcher tick)
        assert time.monotonic() - went >= limit + c.options.probe_timeout - 0.3
        assert body["status"] == "unhealthy" and "no data for" in body["why"][0]
        assert "BTC-USDT" in body["why"][0] and "ETH-USDT" in body["why"][0]
        m = await scrape(port)
        assert value(m, "recorder_healthy") == 0 and value(m, "recorder_health_problems") >= 1
        await wait_for(lambda: sum(x.reconnects for x in c.connections) >= 1, 20, "the collector's own verdict")
        assert (await healthz(port))[0] == 503

        sim.revive()
        body = await wait_health(port, 200, 30)
        assert body["why"] == []
        await wait_for(lambda: books_valid(c), 10, "books after the recovery")
        await finish(c, sim, task)
    ev = connect(tmp_path).execute("select count(*) from events where event = 'error' and detail like 'stale stream%'")
    assert ev.fetchone()[0] >= 2  # the collector saw the same silence (both markets)


async def test_healthz_turns_503_while_the_disk_refuses_writes(tmp_path, sim, small_disk):  # noqa: F811
    """The tables' disk full for real (a small tmpfs): 503 and a disk-full pause while Parquet writes
    fail, 200 again once a write lands."""
    data = tmp_path / "data"
    disk = small_disk("data/trades")
    c = Collector("bitmart", list(SYMBOLS), options(data, sim))
    async with exported(c) as (port, task):
        await wait_for(lambda: books_valid(c), 10, "first snapshots")
        await wait_health(port, 200, 10)
        ballast = fill(disk)
        body = await wait_health(port, 503, 15)
        assert any("disk refusing writes" in w for w in body["why"]), body
        m = await scrape(port)
        assert value(m, "recorder_disk_refusing_writes") == 1 and value(m, "recorder_disk_full_pauses_total") == 1
        ballast.unlink()
        await wait_health(port, 200, 15)
        m = await scrape(port)
        assert value(m, "recorder_disk_refusing_writes") == 0 and value(m, "recorder_disk_full_pauses_total") == 1
        await finish(c, sim, task)
    assert c.sink.pending_rows() == 0


async def test_run_metrics_port_serves_while_recording(tmp_path, sim):
    """`recorder run --metrics-port 0` prints the port it took; /metrics and /healthz answer there
    during the run; a bad port is one clear line."""
    proc = await asyncio.create_subprocess_exec(
        RECORDER, "run", "bitmart", *SYMBOLS, "--ws-url", sim.ws_url, "--rest-url", sim.rest_url,
        "--data-dir", str(tmp_path), "--duration", "8", "-q", "--metrics-port", "0",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), max(0.1, deadline - time.monotonic()))).decode()
            assert line, "recorder exited without printing its metrics port"
            if m := re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line):
                port = int(m[1])
        deadline = time.monotonic() + 15
        while value(m := await scrape(port), "recorder_messages_total") == 0:
            assert time.monotonic() < deadline, "no frame counted"
            await asyncio.sleep(0.1)
        assert value(m, "recorder_markets", exchange="bitmart") == 2
        await wait_health(port, 200, 10)
        err = (await asyncio.wait_for(proc.stderr.read(), 30)).decode()
        assert await asyncio.wait_for(proc.wait(), 10) == 0, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    bad = await asyncio.create_subprocess_exec(
        RECORDER, "run", "bitmart", "BTC-USDT", "--sim", "--metrics-port", "70000", "--data-dir", str(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(bad.communicate(), 30)
    assert bad.returncode != 0 and "--metrics-port must be 0 (a free port) to 65535" in err.decode()
    assert "Traceback" not in err.decode()


async def test_port_in_use_is_one_clear_error():
    first = Exporter([])
    port = await first.start(port=0)
    try:
        with pytest.raises(RecorderError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            await Exporter([]).start(port=port)
        status, body = await healthz(port)
        assert status == 200 and body["streams"] == 0  # nothing subscribed: nothing silent
    finally:
        await first.stop()


async def test_healthz_says_when_a_subscription_keeps_being_refused(tmp_path):
    """Trades only, every subscription refused: the socket stays alive (the refusals and the pings'
    answers are frames), so only the topic's missing acknowledgement says the stream is not
    recorded. /healthz turns 503 naming it, and 200 once the exchange takes the subscription."""
    from recorder.sim import BitmartSpotSim

    async with BitmartSpotSim(symbols=["BTC_USDT"], seed=5, rate=20) as sim:
        sim.fail_next_subscribe(10_000)
        c = Collector("bitmart", ["BTC-USDT"], options(tmp_path, sim, channels=("trades",), refused_retry=0.2))
        async with exported(c) as (port, _):
            body = await wait_health(port, 503, 20)
            assert any("BTC-USDT trades: not subscribed" in w for w in body["why"]), body
            assert not any("no data for" in w for w in body["why"]), body  # the socket is alive
            sim.accept_subscribes()  # the exchange takes it again
            body = await wait_health(port, 200, 20)
            assert body["why"] == []
            await wait_for(lambda: c.topics_acked() == 1, 5, "the subscription acknowledged")


async def test_a_quiet_market_stays_healthy(tmp_path):
    """A market trading once every few seconds: the connection crosses its silence limit between
    trades, the watchdog's ping is answered, and /healthz never says 503 for it."""
    from recorder.sim import BitmartSpotSim

    async with BitmartSpotSim(symbols=["BTC_USDT"], seed=3, rate=0.3) as sim:
        c = Collector("bitmart", ["BTC-USDT"], options(tmp_path, sim))
        async with exported(c) as (port, _):
            await wait_for(lambda: books_valid(c), 10, "first snapshot")
            await wait_health(port, 200, 10)
            codes, bodies = [], []
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:
                code, body = await healthz(port)
                codes.append(code)
                bodies.append(body)
                await asyncio.sleep(0.25)
            assert set(codes) == {200}, [b["why"] for b in bodies if b["why"]][:3]
            assert sum(x.reconnects for x in c.connections) == 0


async def test_healthz_says_when_publishing_to_the_bucket_keeps_failing(tmp_path, s3, monkeypatch):
    """Recording into a bucket that goes away: files wait in the spool, every failed attempt is
    counted, and past the grace /healthz is 503 naming the bucket; when it is back, 200 again."""
    import recorder.metrics
    from recorder.sim import BitmartSpotSim
    from recorder.storage.objectstore import finished_files, open_spool, parse_s3

    monkeypatch.setattr(recorder.metrics, "PUBLISH_GRACE", 1.0)  # the default is a minute
    _, client, _ = s3
    shipper = open_spool(parse_s3(f"s3://{BUCKET}/lake"), tmp_path / "spool")
    shipper.interval = 0.2
    async with BitmartSpotSim(symbols=["BTC_USDT"], seed=4, rate=50) as sim:
        c = Collector("bitmart", ["BTC-USDT"], options(shipper.spool, sim))
        shipper.open_logs = c.open_raw_logs  # as `recorder run` wires it: an open raw log is not finished
        try:
            async with exported(c, shipper) as (port, _):
                shipper.start()
                await wait_for(lambda: _objects(client, "lake/trades/"), 20, "a first published file")
                await wait_health(port, 200, 10)
                for key in _objects(client):
                    client.delete_object(Bucket=BUCKET, Key=key)
                client.delete_bucket(Bucket=BUCKET)
                body = await wait_health(port, 503, 20)
                assert any(f"publishing to s3://{BUCKET}/lake failing" in w for w in body["why"]), body
                failed = value(await scrape(port), "recorder_publish_errors_total")
                await asyncio.sleep(1.0)
                assert value(await scrape(port), "recorder_publish_errors_total") > failed  # every attempt
                client.create_bucket(Bucket=BUCKET)
                await wait_health(port, 200, 20)
        finally:
            await asyncio.to_thread(shipper.close)  # what waits in the spool goes up now
    assert _objects(client, "lake/trades/") and not finished_files(shipper.spool), "the spool went up at the end"


def test_the_metrics_line_in_json_logs_carries_the_port(tmp_path):
    """`--metrics-port 0 --log-format JSON` (any case): a script finds the port as a field."""
    import json

    p = subprocess.run(
        [RECORDER, "run", "bitmart", "BTC-USDT", "--sim", "--duration", "2", "--data-dir", str(tmp_path / "d"),
         "--metrics-port", "0", "--log-format", "JSON"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    lines = [json.loads(line) for line in p.stderr.splitlines()]
    first = next(x for x in lines if x["msg"].startswith("metrics on"))
    assert isinstance(first["port"], int) and first["port"] > 0
    assert first["healthz_url"] == f"http://127.0.0.1:{first['port']}/healthz"


async def test_a_file_the_bucket_refuses_is_set_aside_and_the_rest_still_go_up(tmp_path, s3):
    """A spool file whose key already holds other content (or a damaged Parquet file) used to stop
    every sweep at itself, holding back every file sorted after it. Now it is set aside: the later
    file is published, the refused ones stay in the spool and are not tried again, each is reported
    once, and /healthz and `recorder_publish_refused_files` say so until a retry publishes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recorder.storage.objectstore import Publisher, Shipper, parse_s3

    _, client, log = s3
    spool = tmp_path / "spool"
    part = "exchange=bitmart/symbol=BTC-USDT/date=2024-01-01"
    taken = spool / "book_updates" / part / "a.parquet"  # sorts first: its key holds other content
    damaged = spool / "book_updates" / part / "b.parquet"  # not Parquet at all
    later = spool / "trades" / part / "c.parquet"
    for f in (taken, damaged, later):
        f.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"x": [1, 2]}), taken)
    damaged.write_bytes(b"not parquet")
    pq.write_table(pa.table({"x": [3]}), later)
    client.put_object(Bucket=BUCKET, Key=f"lake/book_updates/{part}/a.parquet", Body=b"someone else's")
    said: list[str] = []
    shipper = Shipper(Publisher(spool, parse_s3(f"s3://{BUCKET}/lake"), client), on_error=said.append)
    assert shipper.sweep() == 1
    assert f"lake/trades/{part}/c.parquet" in _objects(client) and not later.exists()
    assert taken.exists() and damaged.exists(), "nothing refused leaves the spool"
    assert set(shipper.refused) == {taken, damaged}
    assert "already exists with different content" in shipper.refused[taken][0]
    assert "not a readable Parquet file" in shipper.refused[damaged][0]
    assert len(said) == 2 and all("\n" not in s for s in said)
    log.clear()
    assert shipper.sweep() == 0
    assert not [r for r in log.requests if "a.parquet" in r[1]], "a refused file is not tried again"
    assert len(said) == 2, "each refusal is reported once"
    assert client.get_object(Bucket=BUCKET, Key=f"lake/book_updates/{part}/a.parquet")["Body"].read() == (
        b"someone else's"
    ), "nothing overwritten"
    exporter = Exporter([], shipper)
    port = await exporter.start(port=0)
    try:
        status, body = await healthz(port)
        assert status == 503
        assert any("2 file(s) refused" in w and "a.parquet" in w for w in body["why"]), body
        assert value(await scrape(port), "recorder_publish_refused_files") == 2
        # the operator removes the other object and the damaged file: the next retry publishes, and
        # /healthz is 200 again without a restart
        shipper.retry_refused = 0.0
        assert shipper.sweep() == 0 and len(said) == 2, "a retry refused again is not said again"
        client.delete_object(Bucket=BUCKET, Key=f"lake/book_updates/{part}/a.parquet")
        damaged.unlink()
        assert shipper.sweep() == 1 and not taken.exists() and shipper.refused == {}
        status, body = await healthz(port)
        assert status == 200, body
        assert value(await scrape(port), "recorder_publish_refused_files") == 0
    finally:
        await exporter.stop()
    # a damaged position stub (the spool's record of how far a run's published files went) holds back
    # that run's files in its directory, and the message names the stub, not the data file
    from recorder.storage.checkpoint import sources_metadata
    from recorder.storage.objectstore import stub_path

    run = "host_1_abcdef12"
    mine = spool / "trades" / part / f"20240101T000000.000000-{run}-0a0b0c0d0e0f.parquet"
    table = pa.table({"x": [4]})
    pq.write_table(table.replace_schema_metadata(sources_metadata([{"run": run, "conn": 0, "part": 0,
                                                                    "records": 9}])), mine)  # fmt: skip
    stub_path(mine.parent, run).write_bytes(b"damaged")
    assert shipper.sweep() == 0 and mine.exists()
    assert "keeps the positions" in shipper.refused[mine][0] and ".published-" in shipper.refused[mine][0]
