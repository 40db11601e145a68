"""scripts/bench_rings.py runs every transport end to end on small counts.

No timing is asserted (benchmarks report speed, tests do not); what is checked
is what a reader of the benchmark relies on: every transport ran, every record
arrived in order and intact, the numbers are well-formed JSON, and nothing is
left in /dev/shm or the temp dir.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
if str(SCRIPTS) not in sys.path:  # spawned children inherit sys.path, so they can import it too
    sys.path.insert(0, str(SCRIPTS))

import bench_rings  # noqa: E402

SMALL = bench_rings.BenchConfig(
    n_latency=1_500,
    n_warmup=100,
    period_ns=50_000,
    n_throughput_numba=40_000,
    n_throughput_python=10_000,
    n_throughput_baseline=1_500,
    batch=64,
    capacity=1024,
    timeout_s=60,
)

JSON_FIELDS = ("name", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "throughput_per_s")


def _bench_leftovers() -> set[str]:
    shm = {n for n in os.listdir("/dev/shm") if n.startswith(f"ringtrader.bench-{os.getpid()}.")}
    tmp = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("ringtrader-bench-")}
    return shm | tmp


@pytest.fixture(scope="module")
def report():
    before = _bench_leftovers()
    rep = bench_rings.run_benchmarks(SMALL)
    yield rep
    assert _bench_leftovers() - before == set(), "bench left segments or temp dirs behind"


def test_every_transport_reports_all_json_fields(report):
    doc = json.loads(json.dumps(report.as_dict()))  # strict JSON round trip
    rows = {r["name"]: r for r in doc["results"]}
    assert set(rows) == set(bench_rings.VARIANT_NAMES)
    for name, row in rows.items():
        for key in JSON_FIELDS[1:]:
            assert isinstance(row[key], float) and math.isfinite(row[key]), (name, key, row[key])
        assert row["p50_us"] <= row["p90_us"] <= row["p99_us"] <= row["p999_us"] <= row["max_us"], name
        assert row["throughput_per_s"] > 0, name
        assert row["latency_records"] == SMALL.n_latency, name
    assert doc["reference"] == "ring-numba/busy_spin"
    assert rows["ring-numba/busy_spin"]["p50_ratio"] == pytest.approx(1.0)
    assert doc["machine"]["cpu_model"] and doc["machine"]["python"] and doc["machine"]["numba"]


def test_every_record_arrived_in_order_and_intact(report):
    for row in report.rows:
        assert row.errors == 0, f"{row.name}: {row.errors} records out of sequence or torn"


def test_table_names_every_transport_and_the_machine(report):
    table = bench_rings.format_table(report)
    for name in bench_rings.VARIANT_NAMES:
        assert name in table
    assert report.machine["kernel"] in table
    assert "targets (measured, not asserted)" in table


def test_unknown_variant_is_refused_with_its_name(capsys):
    with pytest.raises(ValueError, match="nope"):
        bench_rings.BenchConfig(variants=("nope",))
    assert bench_rings.main(["--quick", "--variants", "ring-numba/busy_spin,nope"]) == 2
    assert "nope" in capsys.readouterr().err
