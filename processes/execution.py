"""Execution stage — PASS-THROUGH until the execution issue lands.

PASS-THROUGH: one EXEC_REPORT per ORDER_REQUEST with ``exec_type =
EXEC_TRACE_PROBE`` (0: not an EX_* venue outcome), carrying the trace; no
order reaches any venue. ``book`` records are consumed for their arrival
latency (orders first: ``PriorityReader``). Hops: ``orders->execution``
(report pub - order pub), ``book->execution`` and ``end_to_end`` (report
pub_ns - recv_ns: frame received to order handed on). The execution issue
replaces the kernel with the WS API / REST client and the paper/sim fill
model.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numba as nb
import numpy as np

from core.records import EXEC_REPORT, ORDER_REQUEST
from core.topology import ring_hop
from processes.stage import PriorityReader, RingWriter, Stage
from processes.stage_kernels import nb_hop, nb_since_recv, nb_sink, nb_trace_bad

EXEC_TRACE_PROBE = 0
PRIORITY = ("orders", "book")

K_REPORTS = 0
K_TRACE_BAD = 1
K_N = 2


class ExecutionState(NamedTuple):
    counters: np.ndarray  # int64[K_N]


def new_state() -> ExecutionState:
    return ExecutionState(counters=np.zeros(K_N, np.int64))


@nb.njit(cache=True, nogil=True)
def execution_kernel(state, src, dst, n, now_ns):
    """One probe EXEC_REPORT per ORDER_REQUEST of ``src[:n]`` into ``dst[:n]`` (every field written, pub_ns 0)."""
    state.counters[K_TRACE_BAD] += nb_trace_bad(src, n, now_ns)
    for i in range(n):
        s = src[i]
        d = dst[i]
        d.recv_ns = s.recv_ns
        d.pub_ns = 0
        d.in_pub_ns = s.pub_ns
        d.exch_ms = 0
        d.client_order_id = s.client_order_id
        d.order_id = -1
        d.trade_id = -1
        d.last_px = 0
        d.last_qty = 0
        d.cum_qty = 0
        d.cum_quote = 0
        d.commission = 0
        d.symbol = s.symbol
        d.side = 0
        d.exec_type = EXEC_TRACE_PROBE
        d.status = 0
        d.is_maker = 0
        d.commission_asset = 0
        d.reject_code = 0
    state.counters[K_REPORTS] += n


class ExecutionStage(Stage):
    def __init__(self, config, ctx):
        self.ctx = ctx
        self.reader = PriorityReader([(r, ctx.inputs[r]) for r in PRIORITY])
        self.out = RingWriter(ctx.outputs["reports"], ctx)
        self.hist = {r: ctx.latency.hop(ring_hop(r, "execution")).h for r in PRIORITY}
        self.e2e = ctx.latency.hop("end_to_end").h
        self.batch = ctx.process.batch
        self.state = new_state()

    def do_work(self) -> int:
        work = 0
        for _ in range(len(PRIORITY)):
            name, p = self.reader.poll(self.batch)
            if name is None:
                break
            done = 0
            try:
                if name == "orders":
                    done = self._orders(p.records)
                else:
                    done = len(p.records)
                    self.state.counters[K_TRACE_BAD] += nb_sink(p.records, done, time.monotonic_ns(),
                                                                self.hist[name])
            finally:
                self.reader.release(done)
            work += done
        return work

    def _orders(self, src) -> int:
        n = len(src)
        moved = 0
        while moved < n:
            dst, direct = self.out.claim(n - moved, 1)
            if dst is None:
                break
            k = min(len(dst), n - moved)
            part = src[moved:moved + k]
            execution_kernel(self.state, part, dst, k, time.monotonic_ns())
            k = self.out.commit(dst, direct, k)
            nb_hop(self.hist["orders"], dst, part, k)
            nb_since_recv(self.e2e, dst, k)
            moved += k
        return moved

    def counters(self) -> dict:
        c = self.state.counters
        return {"reports": int(c[K_REPORTS]), "trace_violations": int(c[K_TRACE_BAD]),
                "reports_full": self.out.full_waits}


def make_stage(config, ctx) -> ExecutionStage:
    return ExecutionStage(config, ctx)


def warm(config) -> None:
    from core.latency import new_hist
    from core.records import BOOK_EVENT

    src = np.zeros(2, ORDER_REQUEST)
    src["recv_ns"], src["in_pub_ns"], src["pub_ns"] = 1, 1, 1
    dst = np.zeros(2, EXEC_REPORT)
    execution_kernel(new_state(), src, dst, 2, 2)
    h = new_hist()
    nb_hop(h, dst, src, 2)
    nb_since_recv(h, dst, 2)
    nb_sink(np.zeros(2, BOOK_EVENT), 2, 2, h)
