"""Layers: imports point down only, and light modules stay light.

- What a module loads is checked in a fresh interpreter (`sys.modules` after the import), so a
  heavy import (aiohttp, DuckDB, pandas) cannot creep back into the package faces, the simulator's
  market, the venue adapters or the sans-I/O session.
- `recorder.app` (process wiring) and `recorder.cli` sit on top: no library module imports them.
- Every declared dependency is imported by the package.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "recorder"
HEAVY = ("aiohttp", "duckdb", "pandas", "prometheus_client")


def loaded_after(code: str) -> set[str]:
    """The top-level packages of `HEAVY` in `sys.modules` after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    p = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return set(json.loads(p.stdout.splitlines()[-1])) & set(HEAVY)


@pytest.mark.parametrize(
    ("code", "forbidden"),
    [
        ("import recorder", HEAVY),
        ("import recorder.candles", HEAVY),
        ("import recorder.sim.market", ("aiohttp", "duckdb")),
        ("import recorder.venues.bitmart_spot", ("aiohttp", "duckdb")),
        ("import recorder.venues as v; v.names(); [v.venue(n) for n in v.names()]", ("aiohttp", "duckdb")),
        ("import recorder.session.dispatcher", ("aiohttp", "duckdb")),
        # what `recorder run` loads before it records: DuckDB and pandas would cost ~16 / ~42 MB of RSS;
        # the metrics exporter (prometheus_client, aiohttp's server) only with --metrics-port
        (
            "import recorder.cli, recorder.app.record, recorder.app.console, recorder.collector",
            ("duckdb", "pandas", "prometheus_client"),
        ),
    ],
)
def test_light_modules_load_no_heavy_dependency(code, forbidden):
    assert loaded_after(code) & set(forbidden) == set(), f"`{code}` loads {loaded_after(code)}"


def test_the_lazy_faces_still_give_every_name():
    code = """
import recorder, recorder.candles
import recorder.candles.backfill, recorder.candles.verify  # the submodules first: the names stay functions
from recorder.candles import backfill, verify
import recorder.candles.feed
assert callable(recorder.connect) and recorder.CandlesFeed is recorder.candles.feed.CandlesFeed
assert backfill.__module__ == "recorder.candles.backfill" and verify.__module__ == "recorder.candles.verify"
assert all(getattr(recorder.candles, n) is not None for n in recorder.candles.__all__)
try:
    recorder.nope
except AttributeError:
    pass
else:
    raise AssertionError("recorder.nope")
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; `from recorder import app` counts as recorder.app)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def test_no_library_module_imports_the_app_or_the_cli():
    top = re.compile(r"^recorder\.(app|cli)(\.|$)")
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel == Path("cli.py") or rel.parts[0] == "app":
            continue
        bad = sorted(n for n in imported_modules(path) if top.match(n))
        if bad:
            offenders.append(f"{rel}: {', '.join(bad)}")
    assert offenders == []


def test_every_declared_dependency_is_imported_by_the_package():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower().replace("-", "_") for d in deps}
    imported = {n.split(".")[0] for path in PACKAGE.rglob("*.py") for n in imported_modules(path)}
    assert wanted - imported == set(), "declared but never imported by recorder/"


# The README's architecture section shows this check as a `git grep`; the same pattern, in Python.
WIRE_FACTS = re.compile(
    r'spot/|futures/|"op"|"request"|increase100|/quotation/|9000[0-9]|ms_t|_USDT|bitmart\.com|errorCode'
    r'|STALE_IS_GAP|m\.bids or m\.asks|STEP_MINUTES|SUPPORTED|"bitmart"'
)


def test_no_bitmart_wire_fact_outside_its_adapters_and_front_ends():
    root = Path(__file__).resolve().parent.parent / "recorder"
    own = {*root.glob("venues/bitmart_*.py"), *root.glob("sim/frontends/bitmart_*.py")}
    leaks = [
        f"{p.relative_to(root)}:{n}: {line.strip()}"
        for p in sorted(root.rglob("*.py"))
        if p not in own
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if WIRE_FACTS.search(line)
    ]
    assert leaks == []
