"""`--shard I/N`: rendezvous hashing of (exchange, symbol). The union of the shards is every market
exactly once, going from N to N+1 shards moves about 1/(N+1) of the markets (all of them to the new
shard), the hash is stable across processes, and two real recorders `--all --shard 0/2` and `1/2`
against one simulator record every market exactly once between them."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from recorder import venues
from recorder.errors import RecorderError
from recorder.shards import parse_shard, select, shard_of, weight

from .processes import run_cli

pytestmark = pytest.mark.timeout(120)

MARKETS = [f"SYN{i:04d}-USDT" for i in range(1, 1501)]  # BitMart-sized


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16])
def test_union_is_every_market_exactly_once(n: int) -> None:
    parts = [select("bitmart", MARKETS, (i, n)) for i in range(n)]
    assert sorted(m for p in parts for m in p) == sorted(MARKETS)
    # balanced: each shard within 4 standard deviations of the mean (binomial spread)
    mean = len(MARKETS) / n
    assert all(abs(len(p) - mean) <= 4 * (mean * (1 - 1 / n)) ** 0.5 for p in parts)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16])
def test_adding_a_shard_moves_about_one_in_n_plus_one(n: int) -> None:
    before = {m: shard_of("bitmart", m, n) for m in MARKETS}
    after = {m: shard_of("bitmart", m, n + 1) for m in MARKETS}
    moved = [m for m in MARKETS if before[m] != after[m]]
    assert all(after[m] == n for m in moved)  # only to the new shard, never between old ones
    expected = len(MARKETS) / (n + 1)
    assert abs(len(moved) - expected) < 0.2 * expected + 10


def test_stable_hash_and_case() -> None:
    # pinned: a change here re-shards every deployment
    assert weight("bitmart", "BTC-USDT", 0) == weight("BITMART", "btc-usdt", 0)
    code = "from recorder.shards import shard_of; print([shard_of('bitmart', f'S{i}-USDT', 5) for i in range(50)])"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(runs) == 1  # no per-process salt (PYTHONHASHSEED differs between the two)
    assert runs.pop().strip() == str([shard_of("bitmart", f"S{i}-USDT", 5) for i in range(50)])
    # the exchange is part of the key: one symbol on two venues may land on different shards
    assert any(shard_of("bitmart", m, 4) != shard_of("altmarkets", m, 4) for m in MARKETS[:50])


@pytest.mark.parametrize("text", ["2/2", "-1/2", "0/0", "a/b", "1", "1/2/3", ""])
def test_bad_shard_is_one_line(text: str) -> None:
    with pytest.raises(RecorderError, match="--shard must be I/N"):
        parse_shard(text)


def test_parse_shard() -> None:
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard(" 3/8 ") == (3, 8)


async def test_two_shards_record_every_market_once(tmp_path) -> None:
    """Two `recorder run --all --shard i/2` processes against one simulator with 200 markets."""
    sim = venues.simulator("bitmart")(symbols=200, seed=5, rate=50.0, record_sent=False)
    await sim.start(host="127.0.0.1", port=0)
    try:
        common = ("run", "bitmart", "--all", "--ws-url", sim.ws_url, "--rest-url", sim.rest_url,
                  "--channels", "trades", "--duration", "6", "-q")
        results = await asyncio.gather(*(
            run_cli(*common, "--shard", f"{i}/2", "--data-dir", str(tmp_path / f"s{i}"), timeout=90) for i in range(2)
        ))
        for code, err in results:
            assert code == 0, err
        trading = sorted(sim.market.active)
    finally:
        await sim.stop()
    db = duckdb.connect()
    got = []
    for i in range(2):
        rows = db.sql(
            f"SELECT symbol, count(*) FROM read_parquet('{tmp_path}/s{i}/events/**/*.parquet', hive_partitioning=true) "
            "WHERE event = 'subscribed' AND channel = 'trades' GROUP BY symbol"
        ).fetchall()
        assert all(n == 1 for _, n in rows)
        mine = sorted(s for s, _ in rows)
        assert mine == sorted(select("bitmart", trading, (i, 2)))  # each process records its own markets
        assert 0.3 * len(trading) < len(mine) < 0.7 * len(trading)
        got += mine
    assert sorted(got) == trading  # together: every market exactly once


# ---- deploy/: the examples run as written ------------------------------------------------------

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _fake_recorder(tmp_path: Path) -> dict[str, str]:
    """A PATH whose `recorder` prints its arguments, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "recorder"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def test_statefulset_shard_from_pod_ordinal(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    docs = list(yaml.safe_load_all((DEPLOY / "statefulset.yaml").read_text()))
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert int(env["SHARDS"]) == spec["replicas"]  # one shard per pod
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["data"]  # a volume per pod
    assert c["command"] == ["/bin/sh", "-c"] and len(c["args"]) == 1
    assert f"--data-dir {mounts['data']}" in c["args"][0]
    path = _fake_recorder(tmp_path)
    for host, shards, want in [("recorder-0", "4", "0/4"), ("recorder-3", "4", "3/4"),
                               ("my-recorder-12", "16", "12/16"), ("recorder-1", env["SHARDS"], f"1/{env['SHARDS']}")]:
        out = subprocess.run(["sh", "-c", c["args"][0]], env={**path, "HOSTNAME": host, "SHARDS": shards,
                             "EXCHANGE": env["EXCHANGE"]}, capture_output=True, text=True, check=True).stdout.split("\n")
        assert out[:3] == ["run", env["EXCHANGE"], "--all"]
        shard = out[out.index("--shard") + 1]
        assert shard == want and parse_shard(shard) == tuple(int(x) for x in want.split("/"))


def test_systemd_template_unit(tmp_path: Path) -> None:
    text = (DEPLOY / "recorder@.service").read_text()
    assert "--shard %i/${SHARDS}" in text and "StateDirectory=recorder/shard-%i" in text
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    unit = tmp_path / "recorder@.service"  # the real binary instead of /opt/recorder's, else verify says so
    unit.write_text(text.replace("/opt/recorder/bin/recorder", str(Path(sys.executable).parent / "recorder")))
    (tmp_path / "recorder@1.service").symlink_to(unit.name)
    res = subprocess.run([analyze, "verify", str(tmp_path / "recorder@1.service")], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.splitlines()[[ln.startswith("FROM") for ln in text.splitlines()].index(True)] == "FROM python:3.11-slim"
    assert "pip install ." in text and 'ENTRYPOINT ["recorder"]' in text and "USER recorder" in text
    root = DEPLOY.parent
    for line in text.splitlines():  # everything it copies exists (the build context is the repository root)
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (root / src).exists(), src
