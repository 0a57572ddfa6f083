"""The installed `recorder` command: clean runs and one-line errors (no tracebacks) on bad input."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .processes import RECORDER


def run(*args: str, cwd: Path, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    return subprocess.run([RECORDER, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr


def spawn_recording(cwd: Path, *args: str, data: Path | None = None, timeout: float = 30) -> subprocess.Popen:
    """Start `recorder run ARGS` and return once it has captured its first frames (a new raw log)."""
    raw = (data or cwd / "data") / "raw"
    before = set(raw.rglob("*.zst"))
    proc = subprocess.Popen(
        [RECORDER, "run", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + timeout
    while not set(raw.rglob("*.zst")) - before:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"recorder did not start: {proc.communicate()[1]}")
        time.sleep(0.05)
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sim_quickstart_records_and_sql_reads(tmp_path):
    p = run("run", "bitmart", "btc-usdt", "--sim", "--duration", "4", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "stopped:" in p.stderr
    q = run("sql", "select count(*) as n from book_updates where symbol = 'BTC-USDT'", "--format", "csv", cwd=tmp_path)
    assert q.returncode == 0, q.stderr
    assert int(q.stdout.splitlines()[1]) > 0
    j = run("sql", "select event from events where channel = 'book' order by ts", "--format", "json", cwd=tmp_path)
    assert '"resync"' in j.stdout and '"stop"' in j.stdout


def test_unknown_exchange(tmp_path):
    assert_one_line_error(run("run", "nope", "BTC-USDT", "--sim", cwd=tmp_path), "unknown exchange 'nope'")


def test_unknown_symbol_names_close_matches(tmp_path):
    p = run("run", "bitmart", "BTC-USDX", "--sim", "--duration", "1", cwd=tmp_path)
    assert_one_line_error(p, "unknown symbol", "BTC-USDT")


def test_unreachable_endpoint(tmp_path):
    port = free_port()
    p = run(
        "run", "bitmart", "BTC-USDT", "--rest-url", f"http://127.0.0.1:{port}",
        "--ws-url", f"ws://127.0.0.1:{port}/api", "--duration", "1", cwd=tmp_path,
    )
    assert_one_line_error(p, "cannot reach")


def test_unwritable_data_dir(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    p = run("run", "bitmart", "BTC-USDT", "--sim", "--data-dir", "afile/data", "--duration", "1", cwd=tmp_path)
    assert_one_line_error(p, "not writable")


def test_bad_sql_is_one_line(tmp_path):
    (tmp_path / "data").mkdir()  # a missing data dir is an error of its own (tests/test_query.py)
    assert_one_line_error(run("sql", "select * from nope", cwd=tmp_path), "nope")


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_sigterm_stops_cleanly_and_flushes(tmp_path):
    proc = spawn_recording(tmp_path, "bitmart", "BTC-USDT", "--sim", "-q")
    try:
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    q = run("sql", "select count(*) from events where event = 'stop'", "--format", "csv", cwd=tmp_path)
    assert q.stdout.splitlines()[1] == "2"


def test_compact_merges_todays_files_without_losing_rows(tmp_path):
    for _ in range(2):  # two runs -> at least two files per partition
        assert run("run", "bitmart", "BTC-USDT", "--sim", "--duration", "2", "-q", cwd=tmp_path).returncode == 0
    count = "select count(*) from book_updates"
    before = run("sql", count, "--format", "csv", cwd=tmp_path).stdout
    parts = list((tmp_path / "data" / "book_updates").glob("*/*/*"))
    assert parts and all(len(list(p.glob("*.parquet"))) >= 2 for p in parts)
    p = run("compact", "--include-today", cwd=tmp_path)
    assert p.returncode == 0 and "compacted" in p.stderr, p.stderr
    assert all(len(list(p.glob("*.parquet"))) == 1 for p in parts)
    assert run("sql", count, "--format", "csv", cwd=tmp_path).stdout == before


def test_a_second_recorder_of_the_same_stream_is_refused(tmp_path):
    """Two recorders of one symbol in one data dir would store it twice: the second one is refused."""
    first = spawn_recording(tmp_path, "bitmart", "BTC-USDT", "--sim", "--duration", "20", "-q")
    try:
        second = run("run", "bitmart", "btc-usdt", "--sim", "--duration", "1", cwd=tmp_path)
        assert_one_line_error(second, "already being recorded")
        other = run("run", "bitmart", "ETH-USDT", "--sim", "--duration", "1", "-q", cwd=tmp_path)
        assert other.returncode == 0, other.stderr  # another symbol may share the data dir
    finally:
        first.terminate()
        first.communicate(timeout=20)


# ---- issue 7 (4, 9): exchange names, option values, the standalone simulator ------------------------


def test_exchange_names_are_stored_lower_case_and_share_the_stream_lock(tmp_path):
    """`BITMART btc_usdt` is the stream `bitmart BTC-USDT`: same lock, same partition, same raw dir."""
    first = spawn_recording(tmp_path, "bitmart", "BTC-USDT", "--sim", "--duration", "20", "-q")
    try:
        second = run("run", "BITMART", "btc_usdt", "--sim", "--duration", "1", "-q", cwd=tmp_path)
        assert_one_line_error(second, "already being recorded")
    finally:
        first.terminate()
        first.communicate(timeout=20)
    p = run("run", " BitMart ", "eth_usdt", "--sim", "--duration", "2", "-q", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    data = tmp_path / "data"
    for table in ("trades", "book_updates", "events", "raw"):
        assert sorted(d.name for d in (data / table).iterdir()) == ["exchange=bitmart"], table
    q = run(
        "sql", "select count(*) from trades where exchange = 'bitmart' and symbol = 'ETH-USDT'",
        "--format", "csv", cwd=tmp_path,
    )
    assert int(q.stdout.splitlines()[1]) > 0, q.stdout + q.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("run", "bitmart", "BTC-USDT", "--sim", "--duration", "0"), "--duration"),
        (("run", "bitmart", "BTC-USDT", "--sim", "--duration", "-5"), "--duration"),
        (("run", "bitmart", "BTC-USDT", "--sim", "--flush-interval", "0"), "--flush-interval"),
        (("run", "bitmart", "BTC-USDT", "--sim", "--flush-interval", "-1"), "--flush-interval"),
        (("run", "bitmart", "BTC-USDT", "--sim", "--sim-rate", "0"), "--sim-rate"),
        (("run", "bitmart", "BTC-USDT", "--sim", "--sim-rate", "-50"), "--sim-rate"),
        (("simulate", "bitmart", "--rate", "-1"), "--rate"),
        (("simulate", "bitmart", "--port", "70000"), "--port"),
        (("simulate", "bitmart", "--port", "-1"), "--port"),
        (("simulate", "bitmart", "--fault", "gap,flood"), "unknown fault(s) flood"),
        (("simulate", "bitmart", "--fault", "gap", "--fault-every", "0"), "--fault-every"),
        (("compact", "--date", "2026-13-45"), "--date '2026-13-45' is not a date"),
        (("compact", "--date", "yesterday"), "YYYY-MM-DD"),
        (("status", "--date", "2026-13-45"), "--date '2026-13-45' is not a date"),
        (("candles", "watch", "bitmart", "BTC-USDT", "--sim", "--duration", "0"), "--duration"),
        (("candles", "watch", "bitmart", "BTC-USDT", "--sim", "--sim-rate", "-1"), "--sim-rate"),
    ],
)
def test_bad_option_values_are_refused_with_one_line(tmp_path, args, needle):
    (tmp_path / "data").mkdir()
    p = run(*args, cwd=tmp_path, timeout=30)
    assert_one_line_error(p, needle)
    assert p.returncode == 2
    assert not any((tmp_path / "data").iterdir())  # refused before anything was started or written


def test_simulate_says_where_it_listens_and_injects_the_faults_asked_for(tmp_path):
    """`--host 0.0.0.0` prints the real listening address; `--fault` faults reach a real recorder."""
    help_text = run("simulate", "--help", cwd=tmp_path).stdout
    assert "--fault" in help_text and "--fault-every" in help_text
    sim = subprocess.Popen(
        [RECORDER, "simulate", "bitmart", "--host", "0.0.0.0", "--port", "0", "--rate", "200",
         "--fault", "garbage,disconnect", "--fault-every", "1.5"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        head = [sim.stdout.readline() for _ in range(3)]
        assert head[0].startswith("ws   ws://127.0.0.1:"), head
        port = int(head[1].rsplit(":", 1)[1])
        assert port > 0
        assert head[2].startswith(f"listening on 0.0.0.0:{port} (every interface)"), head
        rec = run(
            "run", "bitmart", "BTC-USDT", "--ws-url", f"ws://127.0.0.1:{port}/api?protocol=1.1",
            "--rest-url", f"http://127.0.0.1:{port}", "--duration", "6", "-q", cwd=tmp_path,
        )
        assert rec.returncode == 0, rec.stderr
    finally:
        sim.terminate()
        out, _ = sim.communicate(timeout=20)
    assert "fault garbage:" in out and "fault disconnect: 1 connection(s) reset" in out, out
    q = run("sql", "select event, detail from events where channel = 'trades'", "--format", "csv", cwd=tmp_path)
    assert "undecodable frame" in q.stdout, q.stdout
    assert sum(1 for ln in q.stdout.splitlines() if ln.startswith("connect,")) >= 2, q.stdout  # reconnected


def test_help_lists_every_candles_command_and_the_true_row_group_size(tmp_path):
    top = run("--help", cwd=tmp_path).stdout
    assert "build / backfill / verify / watch candles" in top, top
    for command in ("build", "backfill", "verify", "watch"):
        assert f" {command} " in run("candles", "--help", cwd=tmp_path).stdout
    from recorder.storage.sink import ROW_GROUP_SIZE

    compact_help = " ".join(run("compact", "--help", cwd=tmp_path).stdout.split())
    assert f"row groups of up to {ROW_GROUP_SIZE // 1_000_000}M rows" in compact_help, compact_help
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert f"(row groups of up to {ROW_GROUP_SIZE // 1_000_000}M rows)" in readme
    assert "`derivative_ticker`" in readme


# ---- issue 8: one error guard for every command, help from the venue registry -----------------------


@pytest.mark.parametrize(
    "args",
    [
        ("run", "nope", "BTC-USDT", "--sim"),
        ("simulate", "NOPE"),
        ("candles", "build", "--exchange", "nope"),
        ("candles", "backfill", "nope", "BTC-USDT"),
        ("candles", "verify", "nope", "BTC-USDT"),
        ("candles", "watch", "nope", "BTC-USDT", "--sim"),
    ],
)
def test_an_unknown_exchange_is_one_line_in_every_command(tmp_path, args):
    (tmp_path / "data").mkdir()
    p = run(*args, cwd=tmp_path, timeout=30)
    assert_one_line_error(p, "unknown exchange", "known: ")
    assert p.returncode == 2
    assert not any((tmp_path / "data").iterdir())


@pytest.mark.parametrize(
    "args",
    [
        ("candles", "verify", "bitmart", "btcusdt", "--data-dir", "data"),
        ("candles", "backfill", "bitmart", "BTCUSDT", "--data-dir", "data"),
        ("candles", "watch", "bitmart_perpetual", "BTCUSDT", "--sim"),
        ("candles", "build", "--symbol", "BtcUsdt", "--data-dir", "data"),
    ],
)
def test_a_symbol_without_its_separator_gets_a_hint_in_every_command(tmp_path, args):
    """Refused (symbols are BASE-QUOTE), with the likely split named: also where no market list is at
    hand (`recorder run` names the venue's own markets instead: the recording tests)."""
    (tmp_path / "data").mkdir()
    p = run(*args, cwd=tmp_path, timeout=30)
    assert_one_line_error(p, "is not of the form BASE-QUOTE", "did you mean BTC-USDT?")
    assert p.returncode == 2


def test_recorder_debug_shows_the_traceback_the_one_line_hides(tmp_path):
    assert_one_line_error(run("run", "nope", "BTC-USDT", "--sim", cwd=tmp_path), "unknown exchange")
    p = run("run", "nope", "BTC-USDT", "--sim", cwd=tmp_path, env={"RECORDER_DEBUG": "1"})
    assert p.returncode != 0 and "Traceback" in p.stderr and "RecorderError: unknown exchange" in p.stderr
    assert "RECORDER_DEBUG=1" in " ".join(run("--help", cwd=tmp_path).stdout.split())


def test_simulate_takes_the_exchange_and_help_names_every_venue(tmp_path):
    from recorder import venues

    p = run("simulate", cwd=tmp_path)
    assert p.returncode == 2 and "Missing argument" in p.stderr and "Traceback" not in p.stderr
    for command in (("run",), ("simulate",), ("candles", "backfill"), ("candles", "watch")):
        text = " ".join(run(*command, "--help", cwd=tmp_path).stdout.split())
        assert all(name in text for name in venues.names()), (command, text)


def test_a_reader_that_goes_away_early_is_not_an_error(tmp_path):
    """`recorder sql ... | head -1`: no error line, no traceback; the exit status of a SIGPIPE."""
    (tmp_path / "data").mkdir()
    for fmt in ("csv", "json"):
        proc = subprocess.Popen(
            [RECORDER, "sql", "select range from range(2000000)", "--format", fmt],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        proc.stdout.read(10)
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 141, err
        assert err == "", err



def test_a_directory_that_is_not_a_data_dir_is_one_line_in_every_reader(tmp_path):
    """A path one level off must not read as an empty recording: readers say so, and point at a
    data dir inside it; an empty directory (or one with only hidden entries and lost+found) is an empty data dir."""
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("x")
    up = tmp_path / "up"
    (up / "rec" / "trades").mkdir(parents=True)
    (up / "README").write_text("x")
    empty = tmp_path / "empty"  # a fresh volume: nothing but its lost+found and a hidden file
    (empty / "lost+found").mkdir(parents=True)
    (empty / ".DS_Store").write_text("x")
    for args in (["sql", "select 1"], ["status"], ["compact"], ["candles", "build"]):
        p = run(*args, "--data-dir", str(other), cwd=tmp_path)
        assert_one_line_error(p, f"{other} is not a data dir")
        p = run(*args, "--data-dir", str(up), cwd=tmp_path)
        assert_one_line_error(p, f"did you mean {up / 'rec'}?")
    assert sorted(os.listdir(other)) == ["todo.txt"]  # nothing was created in it (no candles/.state)
    p = run("sql", "select 1", "--data-dir", str(empty), cwd=tmp_path)
    assert p.returncode == 0, p.stderr


def test_simulate_log_format_json_gives_the_urls_as_fields(tmp_path):
    import json

    sim = subprocess.Popen(
        [RECORDER, "simulate", "bitmart", "--port", "0", "--log-format", "json", "--fault", "garbage",
         "--fault-every", "0.5"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first, second, third = (json.loads(sim.stdout.readline()) for _ in range(3))
    finally:
        sim.terminate()
        sim.communicate(timeout=20)
    assert first["level"] == "info" and first["port"] > 0
    assert first["ws"].startswith(f"ws://127.0.0.1:{first['port']}/") and first["rest"] == f"http://127.0.0.1:{first['port']}"
    assert second["faults"] == ["garbage"] and second["every_s"] == 0.5
    assert third["msg"].startswith("fault garbage:")
