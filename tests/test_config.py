"""`recorder run --config FILE`: several exchanges and symbol sets in one process. The committed
example loads and records from the simulators; every mistake is one line naming file and place."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from recorder.collector import Options
from recorder.config import load
from recorder.errors import RecorderError

from .processes import run_cli

pytestmark = pytest.mark.timeout(120)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "recorder.toml"


def _load(tmp_path: Path, text: str, shard=None):
    f = tmp_path / "r.toml"
    f.write_text(text)
    return load(f, Options(data_dir=tmp_path / "data"), shard)


def test_example_loads() -> None:
    plans = load(EXAMPLE, Options(), None)
    assert [p.exchange for p in plans] == ["bitmart", "bitmart_perpetual", "altmarkets"]
    assert plans[0].options.all_markets and plans[0].options.quotes == ("USDT",) and plans[0].symbols == []
    assert plans[1].symbols == ["BTC-USDT", "ETH-USDT"] and not plans[1].options.all_markets
    assert plans[2].options.channels == ("trades",)
    assert all(p.options.market_refresh == 600 for p in plans)


def test_defaults_and_shard(tmp_path: Path) -> None:
    plans = _load(tmp_path, '[[record]]\nexchange = "BitMart"\nall = true\n\n'
                            '[[record]]\nexchange = "altmarkets"\nsymbols = "btc-usdt,eth-usdt"\nshard = "1/3"\n',
                  shard=(0, 2))
    assert plans[0].exchange == "bitmart" and plans[0].options.shard == (0, 2)  # --shard for those without one
    assert plans[1].options.shard == (1, 3) and plans[1].symbols == ["btc-usdt", "eth-usdt"]
    assert plans[0].options.data_dir == tmp_path / "data"  # --data-dir when the file sets none


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('datadir = "x"\n[[record]]\nexchange = "bitmart"\nall = true\n', "unknown key(s) datadir"),
        ('[[record]]\nexchange = "bitmart"\nall = true\nsymbol = ["A-B"]\n', "record[1]: unknown key(s) symbol"),
        ('[[record]]\nexchange = "nope"\nall = true\n', "record[1]: unknown exchange 'nope'"),
        ('[[record]]\nexchange = "bitmart"\nall = true\nshard = "3/3"\n', "record[1]: --shard must be I/N"),
        ('[[record]]\nexchange = "bitmart"\nall = true\nsymbols = ["BTC-USDT"]\n', "not both"),
        ('[[record]]\nexchange = "bitmart"\n', "give symbols = [...] or all = true"),
        ('[[record]]\nall = true\n', "missing exchange"),
        ('[[record]]\nexchange = "bitmart"\nall = "yes"\n', "all must be a bool"),
        ('[[record]]\nexchange = "bitmart"\nall = true\nchannels = ["candles"]\n', "record[1]: bitmart offers"),
        ('[[record]]\nexchange = "bitmart"\nall = true\nmarket_refresh = 0\n', "positive number"),
        ('[[record]]\nexchange = "bitmart"\nall = true\n[[record]]\nexchange = "bitmart"\nsymbols = ["A-B"]\n',
         "record[2]: bitmart is already recorded by record[1]"),
        ('flush_interval = 5\n', "at least one [[record]]"),
        ('[[record]\n', "not valid TOML"),
    ],
)
def test_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RecorderError) as exc:
        _load(tmp_path, text)
    assert message in str(exc.value) and "\n" not in str(exc.value) and str(exc.value).startswith(str(tmp_path))


async def test_cli_records_the_example_from_simulators(tmp_path: Path) -> None:
    code, err = await run_cli("run", "--config", str(EXAMPLE), "--sim", "--duration", "4", "--data-dir",
                              str(tmp_path), "-q", timeout=90)
    assert code == 0, err
    got = dict(duckdb.connect().execute(
        f"SELECT exchange, count(DISTINCT symbol) FROM read_parquet('{tmp_path}/events/**/*.parquet', "
        "hive_partitioning = true) WHERE event = 'subscribed' GROUP BY exchange").fetchall())
    assert set(got) == {"bitmart", "bitmart_perpetual", "altmarkets"}
    assert got["bitmart_perpetual"] == 2 and got["altmarkets"] == 1 and got["bitmart"] >= 2
    assert len(list((tmp_path / ".runs").glob("*.done"))) == 1  # one process, one run, cleanly finished
    assert not list((tmp_path / ".runs").glob("*.lock"))


async def test_cli_config_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[record]]\nexchange = "bitmart"\nall = true\nquotes = ["USDT"]\n')
    code, err = await run_cli("run", "--config", str(bad), "--data-dir", str(tmp_path), timeout=30)
    assert code != 0 and "unknown key(s) quotes" in err and "Traceback" not in err
    code, err = await run_cli("run", "bitmart", "--config", str(EXAMPLE), timeout=30)
    assert code != 0 and "give no EXCHANGE" in err and "Traceback" not in err
    code, err = await run_cli("run", "--config", str(tmp_path / "missing.toml"), timeout=30)
    assert code != 0 and "cannot read config" in err and "Traceback" not in err
