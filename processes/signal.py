"""Signal stage — PASS-THROUGH until the signal issue lands.

PASS-THROUGH: one SIGNAL per ``book`` record, SIDE_FLAT with zero target
quantity and reason ``REASON_TRACE_PROBE`` (a trace probe, never a trading
decision), carrying the trace (recv_ns, in_pub_ns = book pub_ns). Records
the ``book->signal`` hop. The signal issue replaces the kernel with
features, indicators and the configured strategy; the stage shape (state
bundle, kernel over a batch, ``RingWriter``) stays.
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np

from core.latency import nb_record
from core.records import BOOK_EVENT, SIDE_FLAT, SIGNAL
from core.topology import ring_hop
from processes.stage import KernelStage, RingWriter, ring_in, ring_out
from processes.stage_kernels import nb_out_publish, nb_out_reserve, nb_trace_bad, scratch_publish, scratch_ring
from ringbuffers.ring import FULL, H_CAPACITY, nb_available, nb_poll_copy

REASON_TRACE_PROBE = 0xFFFF  # not a strategy reason: marks pass-through records

# counters (state.counters)
K_SIGNALS = 0
K_TRACE_BAD = 1
K_LOST = 2  # book records overrun before they were read (overwrite policy)
K_OUT_FULL = 3  # cycles that found the signals ring full (the stage then waits with the process's idle)
K_N = 4


class SignalState(NamedTuple):
    next_id: np.ndarray  # int64[1]: the next signal_id (unique per run, increasing)
    counters: np.ndarray  # int64[K_N]
    scratch: np.ndarray  # BOOK_EVENT[batch]: the records of one cycle
    hop: np.ndarray  # latency histogram of book->signal (core.latency)


def new_state(batch: int = 256, hop: np.ndarray | None = None) -> SignalState:
    from core.latency import new_hist

    return SignalState(next_id=np.ones(1, np.int64), counters=np.zeros(K_N, np.int64),
                       scratch=np.zeros(batch, BOOK_EVENT), hop=new_hist() if hop is None else hop)


@nb.njit(cache=True, nogil=True)
def _probe(s, d, sid):
    d.recv_ns = s.recv_ns
    d.pub_ns = 0
    d.in_pub_ns = s.pub_ns
    d.exch_ms = s.exch_ms
    d.signal_id = sid
    d.ref_px = 0
    d.target_qty = 0
    d.limit_px = 0
    d.strength = 0.0
    d.symbol = s.symbol
    d.side = SIDE_FLAT
    d.strategy = 0
    d.reason = REASON_TRACE_PROBE


@nb.njit(cache=True, nogil=True)
def signal_step(state, book, signals):
    """One duty cycle: book records in, one probe SIGNAL each out. Returns records consumed, or FULL."""
    in_ctrl, in_slots, ci = book
    out_ctrl, out_slots = signals
    avail = nb_available(in_ctrl, ci)
    if avail == 0:
        return 0
    want = avail if avail < state.scratch.shape[0] else state.scratch.shape[0]
    seq, m = nb_out_reserve(out_ctrl, want)
    if seq == FULL:
        state.counters[K_OUT_FULL] += 1
        return FULL
    src = state.scratch
    n, lost = nb_poll_copy(in_ctrl, in_slots, ci, src[:m])
    state.counters[K_LOST] += lost
    mask = out_ctrl[H_CAPACITY] - 1
    sid = state.next_id[0]
    for i in range(n):
        _probe(src[i], out_slots[(seq + i) & mask], sid + i)
    now = nb_out_publish(out_ctrl, out_slots, seq, n)
    for i in range(n):
        nb_record(state.hop, now - src[i].pub_ns)
    state.counters[K_TRACE_BAD] += nb_trace_bad(src, n, now)
    state.next_id[0] = sid + n
    state.counters[K_SIGNALS] += n
    return n


class SignalStage(KernelStage):
    COUNTERS = {"signals": K_SIGNALS, "trace_violations": K_TRACE_BAD, "book_lost": K_LOST,
                "signals_full": K_OUT_FULL}

    def __init__(self, config, ctx):
        self.ctx = ctx
        self.book = ring_in(ctx.inputs["book"])
        self.writer = RingWriter(ctx.outputs["signals"], ctx, scratch=1)  # waits on a full ring (risk is behind)
        self.signals = ring_out(ctx.outputs["signals"])
        self.state = new_state(ctx.process.batch, ctx.latency.hop(ring_hop("book", "signal")).h)

    def step(self) -> int:
        return signal_step(self.state, self.book, self.signals)


def make_stage(config, ctx) -> SignalStage:
    return SignalStage(config, ctx)


def warm(config) -> None:
    """Load the kernel from the disk cache on a scratch ring pair (no pipeline ring)."""
    book, signals = scratch_ring(BOOK_EVENT, consumer=True), scratch_ring(SIGNAL)
    scratch_publish(book, 1)
    signal_step(new_state(4), book, signals)
