"""Risk stage — PASS-THROUGH until the risk issue lands.

PASS-THROUGH: one ORDER_REQUEST per SIGNAL with ``action = ACTION_TRACE_PROBE``
(0: not ORD_NEW/ORD_CANCEL/ORD_CANCEL_ALL, so no venue code acts on it) and
zero quantity, carrying the trace; ``book`` and ``reports`` records are
consumed and only their arrival latency is recorded. Inputs are read in a
fixed priority (``PriorityReader``): reports first, then book, then
signals, so execution reports are always applied before a new signal is
approved. Hops: ``signals->risk``, ``book->risk``, ``reports->risk``. The risk
issue replaces the kernel with limits, P&L, stops and the breaker.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numba as nb
import numpy as np

from core.records import ORDER_REQUEST, SIGNAL
from core.topology import ring_hop
from processes.stage import PriorityReader, RingWriter, Stage
from processes.stage_kernels import nb_hop, nb_sink, nb_trace_bad

ACTION_TRACE_PROBE = 0
#: input priority: what risk must know (fills, then the market) before it decides on a signal
PRIORITY = ("reports", "book", "signals")

K_ORDERS = 0
K_TRACE_BAD = 1
K_N = 2


class RiskState(NamedTuple):
    next_id: np.ndarray  # int64[1]: next client_order_id
    counters: np.ndarray  # int64[K_N]


def new_state() -> RiskState:
    return RiskState(next_id=np.ones(1, np.int64), counters=np.zeros(K_N, np.int64))


@nb.njit(cache=True, nogil=True)
def risk_kernel(state, src, dst, n, now_ns):
    """One probe ORDER_REQUEST per SIGNAL of ``src[:n]`` into ``dst[:n]`` (every field written, pub_ns 0)."""
    state.counters[K_TRACE_BAD] += nb_trace_bad(src, n, now_ns)
    cid = state.next_id[0]
    for i in range(n):
        s = src[i]
        d = dst[i]
        d.recv_ns = s.recv_ns
        d.pub_ns = 0
        d.in_pub_ns = s.pub_ns
        d.exch_ms = s.exch_ms
        d.client_order_id = cid + i
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
    state.next_id[0] = cid + n
    state.counters[K_ORDERS] += n


class RiskStage(Stage):
    def __init__(self, config, ctx):
        self.ctx = ctx
        self.reader = PriorityReader([(r, ctx.inputs[r]) for r in PRIORITY])
        self.out = RingWriter(ctx.outputs["orders"], ctx)
        self.hist = {r: ctx.latency.hop(ring_hop(r, "risk")).h for r in PRIORITY}
        self.batch = ctx.process.batch
        self.state = new_state()

    def do_work(self) -> int:
        work = 0
        for _ in range(len(PRIORITY)):  # at most one batch per input per duty cycle, highest priority first
            name, p = self.reader.poll(self.batch)
            if name is None:
                break
            done = 0
            try:
                done = self._signals(p.records) if name == "signals" else self._sink(name, p.records)
            finally:
                self.reader.release(done)
            work += done
            if name == "signals":
                break  # a signal batch is the last thing decided this cycle
        return work

    def _sink(self, name, recs) -> int:
        n = len(recs)
        self.state.counters[K_TRACE_BAD] += nb_sink(recs, n, time.monotonic_ns(), self.hist[name])
        return n

    def _signals(self, src) -> int:
        n = len(src)
        moved = 0
        while moved < n:
            dst, direct = self.out.claim(n - moved, 1)
            if dst is None:
                break
            k = min(len(dst), n - moved)
            part = src[moved:moved + k]
            risk_kernel(self.state, part, dst, k, time.monotonic_ns())
            k = self.out.commit(dst, direct, k)
            nb_hop(self.hist["signals"], dst, part, k)
            moved += k
        return moved

    def counters(self) -> dict:
        c = self.state.counters
        return {"orders": int(c[K_ORDERS]), "trace_violations": int(c[K_TRACE_BAD]),
                "orders_full": self.out.full_waits}


def make_stage(config, ctx) -> RiskStage:
    return RiskStage(config, ctx)


def warm(config) -> None:
    from core.latency import new_hist
    from core.records import BOOK_EVENT, EXEC_REPORT

    src = np.zeros(2, SIGNAL)
    src["recv_ns"], src["in_pub_ns"], src["pub_ns"] = 1, 1, 1
    dst = np.zeros(2, ORDER_REQUEST)
    risk_kernel(new_state(), src, dst, 2, 2)
    h = new_hist()
    nb_hop(h, dst, src, 2)
    for dt in (BOOK_EVENT, EXEC_REPORT):
        nb_sink(np.zeros(2, dt), 2, 2, h)
