"""Signal stage — PASS-THROUGH until the signal issue lands.

PASS-THROUGH: one SIGNAL per ``book`` record, SIDE_FLAT with zero target
quantity and reason ``REASON_TRACE_PROBE`` (a trace probe, never a trading
decision), carrying the trace (recv_ns, in_pub_ns = book pub_ns). Records
the ``book->signal`` hop. The signal issue replaces the kernel with
features, indicators and the configured strategy; the stage shape (state
bundle, kernel over a batch, ``RingWriter``) stays.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numba as nb
import numpy as np

from core.records import BOOK_EVENT, SIDE_FLAT, SIGNAL
from core.topology import ring_hop
from processes.stage import RingWriter, Stage
from processes.stage_kernels import nb_hop, nb_trace_bad

REASON_TRACE_PROBE = 0xFFFF  # not a strategy reason: marks pass-through records

# counters (state.counters)
K_SIGNALS = 0
K_TRACE_BAD = 1
K_N = 2


class SignalState(NamedTuple):
    next_id: np.ndarray  # int64[1]: the next signal_id (unique per run, increasing)
    counters: np.ndarray  # int64[K_N]


def new_state() -> SignalState:
    return SignalState(next_id=np.ones(1, np.int64), counters=np.zeros(K_N, np.int64))


@nb.njit(cache=True, nogil=True)
def signal_kernel(state, src, dst, n, now_ns):
    """One probe SIGNAL per book record of ``src[:n]`` into ``dst[:n]`` (every field written, pub_ns 0)."""
    state.counters[K_TRACE_BAD] += nb_trace_bad(src, n, now_ns)
    sid = state.next_id[0]
    for i in range(n):
        s = src[i]
        d = dst[i]
        d.recv_ns = s.recv_ns
        d.pub_ns = 0
        d.in_pub_ns = s.pub_ns
        d.exch_ms = s.exch_ms
        d.signal_id = sid + i
        d.ref_px = 0
        d.target_qty = 0
        d.limit_px = 0
        d.strength = 0.0
        d.symbol = s.symbol
        d.side = SIDE_FLAT
        d.strategy = 0
        d.reason = REASON_TRACE_PROBE
    state.next_id[0] = sid + n
    state.counters[K_SIGNALS] += n


class SignalStage(Stage):
    def __init__(self, config, ctx):
        self.ctx = ctx
        self.book = ctx.inputs["book"]
        self.out = RingWriter(ctx.outputs["signals"], ctx)
        self.hist = ctx.latency.hop(ring_hop("book", "signal")).h
        self.batch = ctx.process.batch
        self.state = new_state()

    def do_work(self) -> int:
        p = self.book.poll(min(self.batch, self.out.ring.capacity))
        src = p.records
        n = len(src)
        moved = 0
        try:
            while moved < n:
                dst, direct = self.out.claim(n - moved, 1)
                if dst is None:
                    break
                k = min(len(dst), n - moved)
                part = src[moved:moved + k]
                signal_kernel(self.state, part, dst, k, time.monotonic_ns())
                k = self.out.commit(dst, direct, k)
                nb_hop(self.hist, dst, part, k)
                moved += k
        finally:
            self.book.release(moved)
        return moved

    def counters(self) -> dict:
        c = self.state.counters
        return {"signals": int(c[K_SIGNALS]), "trace_violations": int(c[K_TRACE_BAD]),
                "signals_full": self.out.full_waits}


def make_stage(config, ctx) -> SignalStage:
    return SignalStage(config, ctx)


def warm(config) -> None:
    """Load the kernel from the disk cache on scratch records (no ring)."""
    src = np.zeros(2, BOOK_EVENT)
    src["recv_ns"], src["in_pub_ns"], src["pub_ns"] = 1, 1, 1
    dst = np.zeros(2, SIGNAL)
    signal_kernel(new_state(), src, dst, 2, 2)
    from core.latency import new_hist

    nb_hop(new_hist(), dst, src, 2)
