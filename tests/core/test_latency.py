"""Latency histograms: percentiles within the bucket precision, exact merge, lossless wire form."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.latency import SUB, LatencyHistogram, LatencySet, bucket_of, bucket_upper


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**62))
def test_every_value_falls_in_a_bucket_whose_upper_edge_is_within_one_32nd(v):
    up = bucket_upper(bucket_of(v))
    assert v <= up <= v + max(v // SUB, 0) + 1


def test_percentiles_never_understate_and_stay_within_bucket_precision():
    rng = np.random.default_rng(5)
    values = rng.lognormal(mean=9, sigma=1.2, size=50_000).astype(np.int64)  # ~ 8 us median, long tail
    h = LatencyHistogram()
    h.record_many(values)
    for q in (50, 90, 99, 99.9):
        exact = int(np.sort(values)[int(np.ceil(q / 100 * len(values))) - 1])
        got = h.percentile_ns(q)
        assert exact <= got <= exact + exact // SUB + 1, (q, exact, got)
    assert h.percentile_ns(100) == values.max() and h.count == len(values)


def test_merge_of_parts_equals_the_whole_and_survives_the_wire():
    rng = np.random.default_rng(6)
    a, b = rng.integers(0, 10**6, 1000), rng.integers(0, 10**9, 1000)
    whole = LatencyHistogram()
    whole.record_many(np.concatenate([a, b]))
    s1, s2 = LatencySet(), LatencySet()
    s1.hop("x").record_many(a)
    s2.hop("x").record_many(b)
    merged = LatencySet.from_wire(s1.to_wire()).merge(LatencySet.from_wire(s2.to_wire()))
    assert np.array_equal(merged.hop("x").h, whole.h)
    assert merged.summary()["x"] == whole.summary()


def test_negative_differences_count_as_zero_not_as_garbage():
    h = LatencyHistogram()
    h.record_many(np.array([-5, 3], np.int64))
    assert h.count == 2 and h.percentile_ns(50) == 0 and h.percentile_ns(100) == 3
