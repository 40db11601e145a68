"""scripts/bench_wake.py measures one wake-up per idle strategy, end to end on tiny counts.

No timing is asserted (benchmarks report speed, tests do not): every strategy
ran across two processes, every record arrived, the numbers are well-formed,
and the JSON that ``latency_profile.py`` and readers rely on has its fields.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
if str(SCRIPTS) not in sys.path:  # spawned children inherit sys.path, so they can import it too
    sys.path.insert(0, str(SCRIPTS))

import bench_wake  # noqa: E402

FIELDS = ("p50_us", "p90_us", "p99_us", "max_us", "cpu_pct")


@pytest.mark.parametrize("strategy", bench_wake.STRATEGIES)
def test_measure_wake_returns_every_record_and_the_documented_fields(strategy):
    res = bench_wake.measure_wake(strategy, bench_wake.DEFAULT_PARAMS[strategy], n=40, period_us=2000,
                                  cpus=bench_wake.default_cpus())
    assert res["strategy"] == strategy and res["received"] == 40
    for key in FIELDS:
        assert isinstance(res[key], float) and math.isfinite(res[key]) and res[key] >= 0, key
    assert res["p50_us"] <= res["p90_us"] <= res["p99_us"] <= res["max_us"]
    if strategy == "futex":
        assert res["waits"] > 0  # it did sleep on the ring, not just spin


def test_measure_wake_restores_the_callers_cpu_affinity():
    before = os.sched_getaffinity(0)
    bench_wake.measure_wake("busy_spin", {}, n=5, period_us=1000, cpus=bench_wake.default_cpus())
    assert os.sched_getaffinity(0) == before


def test_cli_json_has_one_row_per_strategy():
    out = subprocess.run([sys.executable, str(SCRIPTS / "bench_wake.py"), "--n", "20", "--period-us", "1000", "--json"],
                         capture_output=True, text=True, check=True, timeout=300)
    doc = json.loads(out.stdout)
    assert [r["strategy"] for r in doc["rows"]] == list(bench_wake.STRATEGIES)
    for row in doc["rows"]:
        assert row["received"] == 20 and all(key in row for key in FIELDS)
    assert doc["rows"][1]["params"] == bench_wake.DEFAULT_PARAMS["backoff"]


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown strategy 'nap'"):
        bench_wake.measure_wake("nap", {}, n=1, period_us=1000)
