"""scripts/soak.py's arithmetic: latency windows from cumulative Prometheus histograms, drift, the verdict."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import soak  # noqa: E402

INF = float("inf")
LES = (1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, INF)


def cum(counts):
    """Cumulative buckets from per-bucket counts."""
    out, c = [], 0
    for le, n in zip(LES, counts):
        c += n
        out.append((le, float(c)))
    return out


def test_window_quantile_reads_the_difference_of_two_scrapes_like_histogram_quantile():
    before = cum([0, 0, 100, 0, 0, 0, 0, 0])  # 100 samples in (2, 5] us
    after = cum([0, 0, 100, 0, 0, 40, 0, 0])  # + 40 in (20, 50] us during the window
    assert soak.window_quantile(None, before, 0.5) == (3.5, 100)  # 2 + 3 * 50/100
    p50, n = soak.window_quantile(before, after, 0.5)
    assert n == 40 and p50 == pytest.approx(35.0)  # the window alone: 20 + 30 * 20/40
    assert soak.window_quantile(after, after, 0.5) == (None, 0)  # nothing new: no figure
    beyond = cum([0, 0, 0, 0, 0, 0, 0, 10])  # all in +Inf: the largest finite bound
    assert soak.window_quantile(None, beyond, 0.99) == (100.0, 10)


def test_a_reset_endpoint_gives_no_window_rather_than_a_negative_one():
    before = cum([0, 0, 100, 0, 0, 0, 0, 0])
    restarted = cum([0, 0, 5, 0, 0, 0, 0, 0])
    assert soak.window_quantile(before, restarted, 0.5) == (None, 0)


def test_parse_hop_buckets_reads_the_exposition():
    text = "\n".join([
        "# HELP ringtrader_hop_latency_seconds Per-hop latency", "# TYPE ringtrader_hop_latency_seconds histogram",
        'ringtrader_hop_latency_seconds_bucket{hop="md->book",le="1e-06"} 1.0',
        'ringtrader_hop_latency_seconds_bucket{hop="md->book",le="+Inf"} 3.0',
        'ringtrader_hop_latency_seconds_count{hop="md->book"} 3.0',
        'ringtrader_hop_latency_seconds_sum{hop="md->book"} 0.5', ""])
    assert soak.parse_hop_buckets(text) == {"md->book": [(1e-6, 1.0), (INF, 3.0)]}


def series(per_window, n=10):
    """Samples 10 s apart whose cumulative histograms add ``per_window(i)`` counts in window i."""
    samples, acc = [], [0] * len(LES)
    for i in range(n):
        if i:
            acc = [a + b for a, b in zip(acc, per_window(i))]
        samples.append({"t": 10.0 * i, "procs": {}, "lat_cum": {"end_to_end": cum(acc)}})
    return samples


def test_drift_pools_each_third_and_judges_only_hops_with_enough_samples():
    steady = series(lambda i: [0, 0, 300, 0, 0, 0, 0, 0])
    d = soak.latency_drift(steady, warmup_s=0)["end_to_end"]
    assert d["checked"] and d["p50_us"]["ratio"] == 1.0 and d["p99_us"]["ratio"] == 1.0
    slower = series(lambda i: [0, 0, 300, 0, 0, 0, 0, 0] if i < 6 else [0, 0, 0, 0, 300, 0, 0, 0])
    d = soak.latency_drift(slower, warmup_s=0)["end_to_end"]
    assert d["p50_us"]["ratio"] > 4  # 3.5 us -> 15 us
    args = SimpleNamespace(max_growth_pct=1.0, max_drift=1.5)
    assert soak.check([], {"end_to_end": d}, args) == [f"end_to_end p50 x{d['p50_us']['ratio']}",
                                                        f"end_to_end p99 x{d['p99_us']['ratio']}"]
    sparse = series(lambda i: [0, 0, 3, 0, 0, 0, 0, 0] if i < 6 else [0, 0, 0, 0, 3, 0, 0, 0])
    d = soak.latency_drift(sparse, warmup_s=0)["end_to_end"]
    assert not d["checked"] and soak.check([], {"end_to_end": d}, args) == []


def test_check_fails_on_rss_growth_of_one_percent():
    args = SimpleNamespace(max_growth_pct=1.0, max_drift=1.5)
    rows = [{"process": "engine#1", "name": "engine", "growth_pct": 0.4, "samples_after_warmup": 300},
            {"process": "feed#2", "name": "feed", "growth_pct": 1.2, "samples_after_warmup": 300},
            {"process": "spare#3", "name": "spare1", "growth_pct": 9.0, "samples_after_warmup": 2},  # too few
            {"process": "simulator#4", "name": "simulator", "growth_pct": 3.0, "samples_after_warmup": 300}]
    assert soak.check(rows, {}, args) == ["feed#2 RSS +1.2 %"]  # the test exchange is reported, not judged
