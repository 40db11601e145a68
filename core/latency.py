"""Mergeable log-linear latency histograms, recordable from numba.

A histogram is one preallocated ``int64`` array (``new_hist()``), so a kernel
can record into it without allocating and two processes' histograms merge by
addition. Layout::

    h[0 : N_BUCKETS]   counts per bucket
    h[I_COUNT]         values recorded
    h[I_SUM]           sum of values (ns)
    h[I_MIN]           smallest value (INT64_MAX when empty)
    h[I_MAX]           largest value (exact, not bucketed)

Buckets are log-linear like HdrHistogram with 5 sub-bucket bits: values below
64 ns are exact, above that each power of two is split into 32 buckets, so a
reported percentile is within 1/32 (3.1 %) above the true value (we report the
bucket's upper edge: a percentile is never understated). Values are
nanoseconds; negative values (a clock that went backwards between cores)
are clamped to 0 and counted as 0.

The wire form (``to_wire``/``from_wire``) is sparse (only non-empty buckets),
small enough for a heartbeat.
"""

from __future__ import annotations

import numba as nb
import numpy as np

SUB_BITS = 5
SUB = 1 << SUB_BITS  # 32 sub-buckets per power of two
N_BUCKETS = SUB * (63 - SUB_BITS + 1) + SUB  # covers every non-negative int64
I_COUNT = N_BUCKETS
I_SUM = N_BUCKETS + 1
I_MIN = N_BUCKETS + 2
I_MAX = N_BUCKETS + 3
HIST_LEN = N_BUCKETS + 4
_INT64_MAX = np.iinfo(np.int64).max


def new_hist() -> np.ndarray:
    h = np.zeros(HIST_LEN, np.int64)
    h[I_MIN] = _INT64_MAX
    return h


@nb.njit(cache=True, inline="always")
def _msb(v):
    """Index of the highest set bit of v > 0."""
    n = 0
    if v >= (1 << 32):
        v >>= 32
        n += 32
    if v >= (1 << 16):
        v >>= 16
        n += 16
    if v >= (1 << 8):
        v >>= 8
        n += 8
    if v >= (1 << 4):
        v >>= 4
        n += 4
    if v >= (1 << 2):
        v >>= 2
        n += 2
    if v >= 2:
        n += 1
    return n


@nb.njit(cache=True, inline="always")
def bucket_of(v):
    """Bucket index of a value v >= 0."""
    if v < 2 * SUB:
        return v
    m = _msb(v)
    return SUB * (m - SUB_BITS + 1) + ((v >> (m - SUB_BITS)) - SUB)


@nb.njit(cache=True)
def bucket_upper(idx):
    """Largest value that falls in bucket ``idx``."""
    if idx < 2 * SUB:
        return idx
    b = idx // SUB
    sub = idx % SUB
    m = b + SUB_BITS - 1
    shift = m - SUB_BITS
    return ((SUB + sub) << shift) + (1 << shift) - 1


@nb.njit(cache=True)
def nb_record(h, v):
    """Record one value (ns) into histogram ``h``."""
    if v < 0:
        v = 0
    h[bucket_of(v)] += 1
    h[I_COUNT] += 1
    h[I_SUM] += v
    if v < h[I_MIN]:
        h[I_MIN] = v
    if v > h[I_MAX]:
        h[I_MAX] = v


@nb.njit(cache=True)
def nb_record_many(h, values):
    """Record every value of an int64 array."""
    for i in range(values.shape[0]):
        nb_record(h, values[i])


@nb.njit(cache=True)
def nb_record_diff(h, later, earlier):
    """Record ``later[i] - earlier[i]`` for every i (two int64 arrays of one length)."""
    for i in range(later.shape[0]):
        nb_record(h, later[i] - earlier[i])


@nb.njit(cache=True)
def nb_merge(dst, src):
    """dst += src (counts and sum added, min/max combined)."""
    for i in range(N_BUCKETS):
        dst[i] += src[i]
    dst[I_COUNT] += src[I_COUNT]
    dst[I_SUM] += src[I_SUM]
    if src[I_MIN] < dst[I_MIN]:
        dst[I_MIN] = src[I_MIN]
    if src[I_MAX] > dst[I_MAX]:
        dst[I_MAX] = src[I_MAX]


_UPPER_NS: np.ndarray | None = None  # bucket_upper of every bucket, built on first use (see cumulative_counts)


def bucket_uppers() -> np.ndarray:
    """``int64[N_BUCKETS]``: the largest value (ns) of every bucket, ascending up to the bucket that holds
    INT64_MAX; the unreachable ones past it are capped at INT64_MAX too. Computed once, with
    ``bucket_upper``'s Python body (Python ints: no overflow, no numba compile)."""
    global _UPPER_NS
    if _UPPER_NS is None:
        up = bucket_upper.py_func
        _UPPER_NS = np.array([min(up(i), _INT64_MAX) for i in range(N_BUCKETS)], np.int64)
    return _UPPER_NS


def cumulative_counts(h: np.ndarray, bounds_ns) -> np.ndarray:
    """``int64[len(bounds_ns)]``: for each upper bound (ns, ascending), the values recorded in buckets whose
    upper edge is <= the bound: Prometheus ``le`` buckets.

    A bucket that straddles a bound (its values run from below the bound to
    above it) counts under the first bound >= its upper edge, never under the
    bound it straddles: the share at or below a bound is never overstated (as
    ``percentile`` never understates a value), and every value at or below
    ``bound * 31 / 32`` is counted under it (a bucket is at most 1/32 of its
    values wide). The +Inf bucket is ``h[I_COUNT]``.
    """
    bounds = np.asarray(bounds_ns, np.int64)
    if len(bounds) > 1 and np.any(np.diff(bounds) <= 0):
        raise ValueError(f"bounds_ns must be strictly ascending, got {bounds.tolist()}")
    n_at_or_below = np.searchsorted(bucket_uppers(), bounds, side="right")  # buckets wholly <= each bound
    cum = np.cumsum(h[:N_BUCKETS])
    return np.where(n_at_or_below > 0, cum[np.maximum(n_at_or_below - 1, 0)], 0).astype(np.int64)


def percentile(h: np.ndarray, q: float) -> int:
    """Value (ns) at percentile ``q`` in [0, 100]: upper edge of its bucket, capped at the exact max. 0 if empty."""
    count = int(h[I_COUNT])
    if count == 0:
        return 0
    rank = max(1, int(np.ceil(q / 100.0 * count)))
    cum = np.cumsum(h[:N_BUCKETS])
    idx = int(np.searchsorted(cum, rank))
    return min(int(bucket_upper(idx)), int(h[I_MAX]))


class LatencyHistogram:
    """A named histogram with a Python API around the array (``.h``, pass it to kernels)."""

    __slots__ = ("h",)

    def __init__(self, h: np.ndarray | None = None):
        self.h = new_hist() if h is None else h

    @property
    def count(self) -> int:
        return int(self.h[I_COUNT])

    def record(self, v_ns: int) -> None:
        nb_record(self.h, v_ns)

    def record_many(self, values_ns: np.ndarray) -> None:
        if len(values_ns):
            nb_record_many(self.h, np.ascontiguousarray(values_ns, dtype=np.int64))

    def merge(self, other: "LatencyHistogram") -> "LatencyHistogram":
        nb_merge(self.h, other.h)
        return self

    def percentile_ns(self, q: float) -> int:
        return percentile(self.h, q)

    def summary(self) -> dict:
        """count, mean/percentiles/max in microseconds (p50_us, p90_us, p99_us, p999_us, max_us)."""
        n = self.count
        us = lambda ns: round(ns / 1000.0, 3)  # noqa: E731
        return {
            "count": n,
            "mean_us": us(float(self.h[I_SUM]) / n) if n else 0.0,
            "min_us": us(int(self.h[I_MIN])) if n else 0.0,
            "p50_us": us(self.percentile_ns(50)),
            "p90_us": us(self.percentile_ns(90)),
            "p99_us": us(self.percentile_ns(99)),
            "p999_us": us(self.percentile_ns(99.9)),
            "max_us": us(int(self.h[I_MAX])) if n else 0.0,
        }

    def to_wire(self) -> dict:
        idx = np.flatnonzero(self.h[:N_BUCKETS])
        return {"b": idx.tolist(), "c": self.h[idx].tolist(),
                "n": int(self.h[I_COUNT]), "s": int(self.h[I_SUM]),
                "lo": int(self.h[I_MIN]), "hi": int(self.h[I_MAX])}

    @classmethod
    def from_wire(cls, w: dict) -> "LatencyHistogram":
        h = new_hist()
        b = np.asarray(w["b"], np.int64)
        if len(b) and (b.min() < 0 or b.max() >= N_BUCKETS):
            raise ValueError(f"latency histogram bucket out of range 0..{N_BUCKETS - 1}")
        h[b] = np.asarray(w["c"], np.int64)
        h[I_COUNT] = w["n"]
        h[I_SUM] = w["s"]
        h[I_MIN] = w["lo"]
        h[I_MAX] = w["hi"]
        return cls(h)


class LatencySet:
    """Per-hop histograms of one worker: ``hop(name)`` creates on first use."""

    def __init__(self):
        self.hists: dict[str, LatencyHistogram] = {}

    def hop(self, name: str) -> LatencyHistogram:
        h = self.hists.get(name)
        if h is None:
            h = self.hists[name] = LatencyHistogram()
        return h

    def to_wire(self) -> dict:
        return {k: v.to_wire() for k, v in self.hists.items() if v.count}

    @classmethod
    def from_wire(cls, w: dict) -> "LatencySet":
        s = cls()
        for k, v in w.items():
            s.hists[k] = LatencyHistogram.from_wire(v)
        return s

    def merge(self, other: "LatencySet") -> "LatencySet":
        for k, v in other.hists.items():
            self.hop(k).merge(v)
        return self

    def summary(self) -> dict:
        return {k: v.summary() for k, v in sorted(self.hists.items())}
