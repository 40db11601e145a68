"""Kernels every stage shares: hop latency and trace checks over a batch of records.

Pure functions over ring slots (any record dtype with ``recv_ns``,
``pub_ns`` and ``in_pub_ns``) and a latency histogram (``core.latency``);
one call per batch, no allocation.
"""

from __future__ import annotations

import numba as nb

from core.latency import nb_record


@nb.njit(cache=True, nogil=True)
def nb_trace_bad(src, n, now_ns):
    """Records of ``src[:n]`` whose trace is not monotonic: recv <= in_pub <= pub <= now must hold."""
    bad = 0
    for i in range(n):
        r = src[i]
        if r.recv_ns <= 0 or r.recv_ns > r.pub_ns or r.pub_ns > now_ns or r.in_pub_ns < r.recv_ns \
                or r.in_pub_ns > r.pub_ns:
            bad += 1
    return bad


@nb.njit(cache=True, nogil=True)
def nb_sink(src, n, now_ns, hist):
    """Consume ``src[:n]`` that cause no output here: record ``now - pub_ns``; returns trace violations."""
    for i in range(n):
        nb_record(hist, now_ns - src[i].pub_ns)
    return nb_trace_bad(src, n, now_ns)


@nb.njit(cache=True, nogil=True)
def nb_hop(hist, dst, src, k):
    """Record ``dst[i].pub_ns - src[i].pub_ns`` for the first ``k`` (output, cause) pairs."""
    for i in range(k):
        nb_record(hist, dst[i].pub_ns - src[i].pub_ns)


@nb.njit(cache=True, nogil=True)
def nb_since_recv(hist, dst, k):
    """Record ``pub_ns - recv_ns`` of ``dst[:k]`` (end to end: tick received -> this record published)."""
    for i in range(k):
        nb_record(hist, dst[i].pub_ns - dst[i].recv_ns)
