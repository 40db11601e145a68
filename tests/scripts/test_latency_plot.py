"""scripts/latency_profile.py --plot / --plot-from, drawn by scripts/_plots.py.

What a user relies on: a result (as ``--json`` prints it) becomes one valid
PNG of a real picture, the same bytes every time for the same data; a saved
result redraws through the CLI without running anything; a CDF built from a
hop's histogram buckets follows the recorded values within the histogram's
1/32 precision; the legend says each placement's idle strategies; a wrong
``--plot-from`` file is one message naming it. No supervisor runs here.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import latency_profile  # noqa: E402  (configures the numba cache before numba loads)

import _plots  # noqa: E402
from core.latency import bucket_of  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STAGES = ("feed", "book", "signal", "risk", "execution")


def hop(p50: float, n: int = 40_000) -> dict:
    return {"count": n, "p50_us": p50, "p90_us": 2 * p50, "p99_us": 3 * p50, "p999_us": 20 * p50,
            "max_us": 50 * p50}


def wire_of(values_ns: list[int]) -> dict:
    """``LatencyHistogram.to_wire`` of these values, built with the same bucket function (no numba compile)."""
    counts: dict[int, int] = {}
    for v in values_ns:
        b = int(bucket_of.py_func(v))
        counts[b] = counts.get(b, 0) + 1
    b = sorted(counts)
    return {"b": b, "c": [counts[i] for i in b], "n": len(values_ns), "s": sum(values_ns), "lo": min(values_ns),
            "hi": max(values_ns)}


def result(with_buckets: bool = False) -> dict:
    """A small result as ``latency_profile.py --json`` prints it: small and split measured, dedicated skipped."""
    small_lat = {"feed": hop(2.4), "md->book": hop(33.8), "book->signal": hop(2.5), "signals->risk": hop(3.1),
                 "orders->execution": hop(2.4), "end_to_end": hop(43.0)}
    small = {"processes": {"feed": ["feed"], "engine": list(STAGES[1:])},
             "idle": {"feed": "backoff", "engine": "futex"}, "latency": small_lat}
    split = {"processes": {s: [s] for s in STAGES}, "idle": {s: "futex" for s in STAGES},
             "latency": {"end_to_end": hop(836.0)}}
    if with_buckets:
        small["latency_hists"] = {h: wire_of([int(s["p50_us"] * 1000) + 37 * i for i in range(2000)])
                                 for h, s in small_lat.items()}
        split["latency_hists"] = {"end_to_end": wire_of([836_000 + 911 * i for i in range(2000)])}
    return {"machine": {"cpu_model": "Test CPU", "logical_cpus": 2, "allowed_cpus": [0, 1],
                        "load_avg_at_start": [0.9, 1.0, 1.1]},
            "created_utc": "2025-01-01 00:00 UTC", "config": "config/system.json", "source": "synthetic",
            "rate_per_s": 2000, "seconds": 20, "engine_idle": {"strategy": "futex"},
            "wake_us": {"strategy": "futex", "p50_us": 11.4},
            "placements": {"small": small, "split": split,
                           "dedicated": {"skipped": "needs the dedicated host's CPUs"}}}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> Path:
    """The crafted result drawn once (a draw takes about a second; the tests share it)."""
    return _plots.plot_result(result(), tmp_path_factory.mktemp("plot") / "lat.png")


def assert_real_picture(path: Path) -> None:
    assert png_size(path) == (1300, 660)  # figsize 13 x 6.6 in at 100 dpi
    assert 20_000 < path.stat().st_size < 200_000  # lines, text and legends, not a blank canvas; README-sized


def test_a_result_becomes_one_png_of_a_real_picture(drawn):
    assert_real_picture(drawn)


def test_a_result_with_bucket_counts_draws_its_cdfs_from_them(tmp_path):
    assert_real_picture(_plots.plot_result(result(with_buckets=True), tmp_path / "lat.png"))


def test_cli_plot_from_redraws_a_saved_result_byte_for_byte(tmp_path, capsys, drawn):
    saved = tmp_path / "lp.json"
    saved.write_text(json.dumps(result()))
    out = tmp_path / "redrawn.png"
    assert latency_profile.main(["--plot-from", str(saved), "--plot", str(out)]) == 0
    assert f"plot: {out}" in capsys.readouterr().err
    assert out.read_bytes() == drawn.read_bytes()  # deterministic given the data: the README picture regenerates


def test_cli_plot_from_a_file_that_is_not_a_result_names_it(tmp_path):
    bad = tmp_path / "summary.json"
    bad.write_text(json.dumps({"latency": {}}))
    with pytest.raises(SystemExit, match=r"summary\.json: no 'placements'"):
        latency_profile.main(["--plot-from", str(bad), "--plot", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


def test_cli_plot_from_without_plot_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        latency_profile.main(["--plot-from", str(tmp_path / "lp.json")])
    assert e.value.code == 2


def test_a_cdf_from_buckets_follows_the_recorded_values_within_one_32nd():
    values = [1_000 + 53 * i for i in range(5_000)]  # ns: 1 us .. 266 us, uniform
    summary = {"count": len(values)}
    xs, ys, from_buckets = _plots.hop_cdf(summary, wire_of(values))
    assert from_buckets
    assert xs == sorted(xs) and ys == sorted(ys)
    for q in (0.5, 0.9, 0.99):
        x_us = next(x for x, y in zip(xs, ys) if y >= q)
        true_us = sorted(values)[int(q * len(values)) - 1] / 1000.0
        assert true_us <= x_us <= true_us * (1 + 1 / 32) + 0.001
    assert xs[-1] == max(values) / 1000.0  # the last bucket's edge is capped at the exact max
    assert ys[-1] == 1.0 - 0.5 / len(values)  # drawn on the logit axis, not at infinity


def test_a_cdf_without_buckets_joins_the_summary_percentiles():
    xs, ys, from_buckets = _plots.hop_cdf(hop(10.0))
    assert not from_buckets
    assert list(zip(xs, ys)) == [(10.0, 0.5), (20.0, 0.9), (30.0, 0.99), (200.0, 0.999)]


def test_the_legend_names_each_placements_processes_and_idle_strategies():
    r = result()
    assert _plots.idle_label(r, r["placements"]["small"]) == "2 procs: feed backoff, engine futex"
    assert _plots.idle_label(r, r["placements"]["split"]) == "5 procs, futex"
    del r["placements"]["small"]["idle"]  # a result saved before rows carried the idle per process
    assert _plots.idle_label(r, r["placements"]["small"]) == "2 procs, engine futex"
