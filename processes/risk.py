"""Risk stage — PASS-THROUGH until the risk issue lands.

PASS-THROUGH: one ORDER_REQUEST per SIGNAL with ``action = ACTION_TRACE_PROBE``
(0: not ORD_NEW/ORD_CANCEL/ORD_CANCEL_ALL, so no venue code acts on it) and
zero quantity, carrying the trace; ``book`` and ``reports`` records are
consumed and only their arrival latency is recorded. Inputs are read in a
fixed priority inside one kernel call per duty cycle (``risk_step``):
reports first, then book, then signals, so execution reports are always
applied before a new signal is approved. Hops: ``signals->risk``, ``book->risk``, ``reports->risk``. The risk
issue replaces the kernel with limits, P&L, stops and the breaker.
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np

from core.latency import nb_record
from core.records import BOOK_EVENT, EXEC_REPORT, ORDER_REQUEST, SIGNAL
from core.topology import ring_hop
from processes.stage import KernelStage, RingWriter, ring_in, ring_out
from processes.stage_kernels import (
    nb_out_publish,
    nb_out_reserve,
    nb_sink_ring,
    nb_trace_bad,
    scratch_publish,
    scratch_ring,
)
from ringbuffers.ring import FULL, H_CAPACITY, nb_available, nb_poll_copy

ACTION_TRACE_PROBE = 0
#: input priority: what risk must know (fills, then the market) before it decides on a signal
PRIORITY = ("reports", "book", "signals")

K_ORDERS = 0
K_TRACE_BAD = 1
K_LOST = 2  # input records overrun before they were read (book under overwrite)
K_OUT_FULL = 3  # cycles that found the orders ring full (the stage then waits with the process's idle)
K_REPORTS = 4
K_BOOK = 5
K_N = 6


class RiskState(NamedTuple):
    next_id: np.ndarray  # int64[1]: next client_order_id
    counters: np.ndarray  # int64[K_N]
    reports: np.ndarray  # EXEC_REPORT[batch]: scratch for one cycle of each input...
    book: np.ndarray  # BOOK_EVENT[batch]
    signals: np.ndarray  # SIGNAL[batch]
    hops: tuple  # latency histograms: (reports->risk, book->risk, signals->risk)


def new_state(batch: int = 256, hops: tuple | None = None) -> RiskState:
    from core.latency import new_hist

    return RiskState(next_id=np.ones(1, np.int64), counters=np.zeros(K_N, np.int64),
                     reports=np.zeros(batch, EXEC_REPORT), book=np.zeros(batch, BOOK_EVENT),
                     signals=np.zeros(batch, SIGNAL), hops=hops or (new_hist(), new_hist(), new_hist()))


@nb.njit(cache=True, nogil=True)
def _probe(s, d, cid):
    d.recv_ns = s.recv_ns
    d.pub_ns = 0
    d.in_pub_ns = s.pub_ns
    d.exch_ms = s.exch_ms
    d.client_order_id = cid
    d.orig_client_order_id = 0
    d.signal_id = s.signal_id
    d.price = 0
    d.qty = 0
    d.stop_px = 0
    d.symbol = s.symbol
    d.side = 0
    d.action = ACTION_TRACE_PROBE
    d.order_type = 0
    d.tif = 0
    d.origin = 0


@nb.njit(cache=True, nogil=True)
def risk_step(state, inputs, orders, max_n):
    """One duty cycle, inputs in ``PRIORITY`` order: every report and book record it can see, then signals.

    Returns the records consumed, or FULL when signals wait for room in the orders ring.
    """
    reports, book, signals = inputs
    c = state.counters
    n, lost, bad = nb_sink_ring(reports, state.reports, max_n, state.hops[0])
    work = n
    c[K_REPORTS] += n
    c[K_LOST] += lost
    c[K_TRACE_BAD] += bad
    n, lost, bad = nb_sink_ring(book, state.book, max_n, state.hops[1])
    work += n
    c[K_BOOK] += n
    c[K_LOST] += lost
    c[K_TRACE_BAD] += bad
    in_ctrl, in_slots, ci = signals
    avail = nb_available(in_ctrl, ci)
    if avail == 0:
        return work
    src = state.signals
    want = avail if avail < src.shape[0] else src.shape[0]
    out_ctrl, out_slots = orders
    seq, m = nb_out_reserve(out_ctrl, want)
    if seq == FULL:
        c[K_OUT_FULL] += 1
        return FULL if work == 0 else work
    n, lost = nb_poll_copy(in_ctrl, in_slots, ci, src[:m])
    mask = out_ctrl[H_CAPACITY] - 1
    cid = state.next_id[0]
    for i in range(n):
        _probe(src[i], out_slots[(seq + i) & mask], cid + i)
    now = nb_out_publish(out_ctrl, out_slots, seq, n)
    for i in range(n):
        nb_record(state.hops[2], now - src[i].pub_ns)
    c[K_TRACE_BAD] += nb_trace_bad(src, n, now)
    state.next_id[0] = cid + n
    c[K_ORDERS] += n
    return work + n


class RiskStage(KernelStage):
    COUNTERS = {"orders": K_ORDERS, "reports_seen": K_REPORTS, "book_seen": K_BOOK, "trace_violations": K_TRACE_BAD,
                "inputs_lost": K_LOST, "orders_full": K_OUT_FULL}

    def __init__(self, config, ctx):
        self.ctx = ctx
        self.inputs = tuple(ring_in(ctx.inputs[r]) for r in PRIORITY)
        self.orders = ring_out(ctx.outputs["orders"])
        self.writer = RingWriter(ctx.outputs["orders"], ctx, scratch=1)  # waits on a full ring (execution is behind)
        self.batch = ctx.process.batch
        self.state = new_state(self.batch, tuple(ctx.latency.hop(ring_hop(r, "risk")).h for r in PRIORITY))

    def step(self) -> int:
        return risk_step(self.state, self.inputs, self.orders, self.batch)


def make_stage(config, ctx) -> RiskStage:
    return RiskStage(config, ctx)


def warm(config) -> None:
    from core.records import BOOK_EVENT, EXEC_REPORT

    ins = tuple(scratch_ring(dt, consumer=True) for dt in (EXEC_REPORT, BOOK_EVENT, SIGNAL))
    for end in ins:
        scratch_publish(end, 1)
    risk_step(new_state(4), ins, scratch_ring(ORDER_REQUEST), 4)
