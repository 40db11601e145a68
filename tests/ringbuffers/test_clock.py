"""ringbuffers.clock: numba-callable CLOCK_MONOTONIC and calibrated TSC."""

from __future__ import annotations

import time

import numba as nb
import numpy as np
import pytest

from ringbuffers.clock import (
    TscCalibration,
    calibrate_tsc,
    nb_monotonic_ns,
    nb_rdtsc,
    nb_tsc_to_ns,
    tsc_is_invariant,
)


@nb.njit(cache=True)
def _read_monotonic():
    return nb_monotonic_ns()


@nb.njit(cache=True)
def _monotonic_series(out):
    for i in range(out.shape[0]):
        out[i] = nb_monotonic_ns()


@nb.njit(cache=True)
def _tsc_series(out):
    for i in range(out.shape[0]):
        out[i] = nb_rdtsc()


@nb.njit(cache=True)
def _tsc_now_ns(tsc0, ns0, ns_per_tick):
    return nb_tsc_to_ns(nb_rdtsc(), tsc0, ns0, ns_per_tick)


@nb.njit(cache=True)
def _convert(tsc, tsc0, ns0, ns_per_tick):
    return nb_tsc_to_ns(tsc, tsc0, ns0, ns_per_tick)


def test_nb_monotonic_ns_is_the_clock_of_time_monotonic_ns():
    _read_monotonic()  # compile outside the bracket
    before = time.monotonic_ns()
    inside = _read_monotonic()
    after = time.monotonic_ns()
    assert before <= inside <= after


def test_nb_monotonic_ns_never_goes_back_inside_a_kernel():
    out = np.zeros(100_000, np.int64)
    _monotonic_series(out)
    assert (np.diff(out) >= 0).all()
    assert out[-1] > out[0]  # the loop took some time: the clock was read each time, not hoisted


def test_nb_rdtsc_advances():
    out = np.zeros(10_000, np.int64)
    _tsc_series(out)
    assert (np.diff(out) >= 0).all()
    assert out[-1] > out[0]


def test_calibrated_tsc_agrees_with_monotonic_clock():
    cal = calibrate_tsc(0.02)
    assert 0.1 < cal.ghz < 10.0  # a TSC rate of some real CPU
    _tsc_now_ns(cal.tsc0, cal.ns0, cal.ns_per_tick)
    before = time.monotonic_ns()
    converted = _tsc_now_ns(cal.tsc0, cal.ns0, cal.ns_per_tick)
    after = time.monotonic_ns()
    # ~ppm rate error over a few ms plus the anchors' bracket: 20 us is ample.
    slack = 20_000
    assert before - slack <= converted <= after + slack


def test_kernel_and_python_conversions_match():
    cal = TscCalibration(tsc0=1_000_000, ns0=5_000, ns_per_tick=0.5, error_ns=10)
    for tsc in (1_000_000, 1_000_002, 3_000_001, 999_000):
        assert _convert(tsc, cal.tsc0, cal.ns0, cal.ns_per_tick) == cal.to_ns(tsc)
    assert cal.to_ns(1_000_002) == 5_001
    assert cal.ghz == 2.0


def test_calibrate_tsc_rejects_a_non_positive_duration():
    with pytest.raises(ValueError, match="duration_s must be > 0, got 0"):
        calibrate_tsc(0)


def test_tsc_is_invariant_reads_the_cpu_flags(tmp_path):
    good = tmp_path / "good"
    good.write_text("processor\t: 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc rdtscp\n")
    partial = tmp_path / "partial"
    partial.write_text("processor\t: 0\nflags\t\t: fpu tsc constant_tsc\n")
    assert tsc_is_invariant(str(good))
    assert not tsc_is_invariant(str(partial))
    assert not tsc_is_invariant(str(tmp_path / "missing"))
