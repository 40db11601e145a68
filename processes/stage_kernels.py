"""Kernels every stage shares: hop latency and trace checks over a batch of records.

Pure functions over ring slots (any record dtype with ``recv_ns``,
``pub_ns`` and ``in_pub_ns``) and a latency histogram (``core.latency``);
one call per batch, no allocation.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from core.latency import nb_record
from ringbuffers.atomics import load_acquire
from ringbuffers.clock import nb_monotonic_ns
from ringbuffers.ring import (
    FULL,
    H_CAPACITY,
    H_CONSUMERS,
    H_POLICY,
    P_GATE,
    P_PUBLISH,
    P_STALLS,
    POLICY_BLOCK,
    C_CURSOR,
    _cword,
    WORD,
    nb_available,
    nb_min_consumer_cursor,
    nb_notify,
    nb_poll_copy,
    nb_publish_begin,
    nb_publish_end,
    records_offset,
)


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


# ---------------------------------------------------------------------------
# Ring ends inside a stage kernel: one numba call per stage per duty cycle
# ---------------------------------------------------------------------------
# A stage kernel takes its input ends as ``(ctrl, slots, consumer index)`` and
# its output ends as ``(ctrl, slots)`` (``processes.stage.ring_in`` /
# ``ring_out``), so polling, the work, stamping ``pub_ns``, publishing and the
# hop latency are one call (~1 us of dispatch) instead of a dozen Python-level
# ring operations. The memory-ordering protocol is the ring's own
# (``ringbuffers.ring``: acquire/release atomics, ``nb_notify`` for futex
# sleepers).

@nb.njit(cache=True, nogil=True)
def nb_out_reserve(ctrl, want):
    """Producer: ``(first seq, n)`` with ``1 <= n <= want`` free slots, or ``(FULL, 0)`` when a block ring is full.

    Nothing becomes visible until ``nb_out_publish``; publishing fewer than
    ``n`` is allowed (block rings only: every output ring of a relay stage
    carries orders or their causes and is ``block``, see ``core.config``).
    """
    cap = ctrl[H_CAPACITY]
    n = want if want < cap else cap
    if ctrl[H_POLICY] == POLICY_BLOCK:
        seq = ctrl[P_PUBLISH]
        free = cap - (seq - ctrl[P_GATE])
        if free < n:
            ctrl[P_GATE] = nb_min_consumer_cursor(ctrl)
            free = cap - (seq - ctrl[P_GATE])
            if free <= 0:
                ctrl[P_STALLS] += 1
                return FULL, 0
            if free < n:
                n = free
    return nb_publish_begin(ctrl, n), n


@nb.njit(cache=True, nogil=True)
def nb_out_publish(ctrl, slots, seq, n):
    """Stamp ``pub_ns`` (CLOCK_MONOTONIC, now) on slots ``seq..seq+n``, publish them, wake futex sleepers.

    Returns the stamp.
    """
    mask = ctrl[H_CAPACITY] - 1
    now = nb_monotonic_ns()
    for i in range(n):
        slots[(seq + i) & mask].pub_ns = now
    nb_publish_end(ctrl, seq + n)
    nb_notify(ctrl)
    return now


@nb.njit(cache=True, nogil=True)
def nb_sink_ring(end, scratch, max_n, hist):
    """Consume up to ``max_n`` records of an input that causes no output here.

    Records ``now - pub_ns`` per record into ``hist``. Returns ``(records,
    lost, trace violations)``; ``lost`` > 0 only under ``overwrite`` (lapped).
    """
    ctrl, slots, ci = end
    if nb_available(ctrl, ci) == 0:
        return 0, 0, 0
    m = max_n if max_n < scratch.shape[0] else scratch.shape[0]
    n, lost = nb_poll_copy(ctrl, slots, ci, scratch[:m])
    now = nb_monotonic_ns()
    for i in range(n):
        nb_record(hist, now - scratch[i].pub_ns)
    return n, lost, nb_trace_bad(scratch, n, now)


@nb.njit(cache=True, nogil=True)
def nb_cursor(ctrl, ci):
    """Consumer ``ci``'s cursor (acquire): every record below it was fully handled by that consumer, including
    whatever it published before moving the cursor (``nb_peek_copy`` + ``nb_poll_end``)."""
    return load_acquire(ctrl, _cword(ci, C_CURSOR))


@nb.njit(cache=True, nogil=True)
def nb_peek_copy(ctrl, slots, ci, out):
    """Copy up to ``len(out)`` records for consumer ``ci`` WITHOUT moving its cursor: ``(first seq, count)``.

    The caller moves the cursor with ``ringbuffers.ring.nb_poll_end(ctrl, ci, first + count)`` once it has
    published everything those records caused, so another stage reading this cursor (``nb_cursor``) knows
    those outputs are visible. ``block`` rings only: a producer never overwrites unread slots there, so
    the copy cannot tear (the rings the signal stage reads this way are ``block``: core.config)."""
    mask = ctrl[H_CAPACITY] - 1
    cursor = ctrl[_cword(ci, C_CURSOR)]
    n = load_acquire(ctrl, P_PUBLISH) - cursor
    if n > out.shape[0]:
        n = out.shape[0]
    for k in range(n):
        out[k] = slots[(cursor + k) & mask]
    return cursor, n


def scratch_ring(dtype, capacity: int = 4, consumer: bool = False) -> tuple:
    """A private ring header + slots with the shapes and types of a real ring end: for ``warm(config)``.

    Stage kernels are compiled (or loaded from the disk cache) for these
    exact argument types, so warming on a scratch ring covers the calls on the
    shared-memory rings without touching them.
    """
    ctrl = np.zeros(records_offset(1) // WORD, np.int64)
    ctrl[H_CAPACITY] = capacity
    ctrl[H_CONSUMERS] = 1
    ctrl[H_POLICY] = POLICY_BLOCK
    slots = np.zeros(capacity, dtype)
    return (ctrl, slots, np.int64(0)) if consumer else (ctrl, slots)


def scratch_publish(end: tuple, n: int, stamp_ns: int = 1) -> None:
    """Make the first ``n`` slots of a scratch ring readable, with a valid trace."""
    ctrl, slots = end[0], end[1]
    for f in ("recv_ns", "in_pub_ns", "pub_ns"):
        if f in slots.dtype.names:
            slots[f][:n] = stamp_ns
    ctrl[P_PUBLISH] += n
