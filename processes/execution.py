"""Execution stage — PASS-THROUGH until the execution issue lands.

PASS-THROUGH: one EXEC_REPORT per ORDER_REQUEST with ``exec_type =
EXEC_TRACE_PROBE`` (0: not an EX_* venue outcome), carrying the trace; no
order reaches any venue. ``book`` records are consumed for their arrival
latency (orders first, in one kernel call per duty cycle: ``execution_step``). Hops: ``orders->execution``
(report pub - order pub), ``book->execution`` and ``end_to_end`` (report
pub_ns - recv_ns: frame received to order handed on). The execution issue
replaces the kernel with the WS API / REST client and the paper/sim fill
model.
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np

from core.latency import nb_record
from core.records import BOOK_EVENT, EXEC_REPORT, ORDER_REQUEST
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

EXEC_TRACE_PROBE = 0
PRIORITY = ("orders", "book")

K_REPORTS = 0
K_TRACE_BAD = 1
K_LOST = 2
K_OUT_FULL = 3
K_BOOK = 4
K_N = 5


class ExecutionState(NamedTuple):
    counters: np.ndarray  # int64[K_N]
    orders: np.ndarray  # ORDER_REQUEST[batch]: scratch for one cycle
    book: np.ndarray  # BOOK_EVENT[batch]
    hops: tuple  # latency histograms: (orders->execution, book->execution, end_to_end)


def new_state(batch: int = 256, hops: tuple | None = None) -> ExecutionState:
    from core.latency import new_hist

    return ExecutionState(counters=np.zeros(K_N, np.int64), orders=np.zeros(batch, ORDER_REQUEST),
                          book=np.zeros(batch, BOOK_EVENT), hops=hops or (new_hist(), new_hist(), new_hist()))


@nb.njit(cache=True, nogil=True)
def _probe(s, d):
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


@nb.njit(cache=True, nogil=True)
def execution_step(state, inputs, reports, max_n):
    """One duty cycle, orders first (``PRIORITY``), then the book. Returns records consumed, or FULL."""
    orders, book = inputs
    c = state.counters
    work = 0
    in_ctrl, in_slots, ci = orders
    avail = nb_available(in_ctrl, ci)
    if avail > 0:
        src = state.orders
        want = avail if avail < src.shape[0] else src.shape[0]
        out_ctrl, out_slots = reports
        seq, m = nb_out_reserve(out_ctrl, want)
        if seq == FULL:
            c[K_OUT_FULL] += 1
            return FULL
        n, lost = nb_poll_copy(in_ctrl, in_slots, ci, src[:m])
        mask = out_ctrl[H_CAPACITY] - 1
        for i in range(n):
            _probe(src[i], out_slots[(seq + i) & mask])
        now = nb_out_publish(out_ctrl, out_slots, seq, n)
        for i in range(n):
            nb_record(state.hops[0], now - src[i].pub_ns)
            nb_record(state.hops[2], now - src[i].recv_ns)  # end to end: tick received -> report published
        c[K_TRACE_BAD] += nb_trace_bad(src, n, now)
        c[K_REPORTS] += n
        work += n
    n, lost, bad = nb_sink_ring(book, state.book, max_n, state.hops[1])
    c[K_BOOK] += n
    c[K_LOST] += lost
    c[K_TRACE_BAD] += bad
    return work + n


class ExecutionStage(KernelStage):
    COUNTERS = {"reports": K_REPORTS, "book_seen": K_BOOK, "trace_violations": K_TRACE_BAD, "inputs_lost": K_LOST,
                "reports_full": K_OUT_FULL}

    def __init__(self, config, ctx):
        self.ctx = ctx
        self.config = config
        self.inputs = tuple(ring_in(ctx.inputs[r]) for r in PRIORITY)
        self.reports = ring_out(ctx.outputs["reports"])
        self.writer = RingWriter(ctx.outputs["reports"], ctx, scratch=1)  # waits on a full ring (risk is behind)
        self.batch = ctx.process.batch
        hops = (ring_hop("orders", "execution"), ring_hop("book", "execution"), "end_to_end")
        self.state = new_state(self.batch, tuple(ctx.latency.hop(h).h for h in hops))

        self.journal_writer = None
        self._journal_thread = None
        self._journal_stop = None

    def on_start(self) -> None:
        """Start the journal: a consumer of the orders and reports rings on its own thread (processes/journal.py),
        off this duty cycle."""
        import threading

        from core.config import RINGS
        from processes.journal import Journal, JournalWriter, journal_path

        path = journal_path(self.config)
        path.parent.mkdir(parents=True, exist_ok=True)
        journal = Journal(path, instance=self.config.instance,
                          symbols=[i.symbol for i in self.config.instruments])
        self.journal_writer = JournalWriter.attach(
            journal, self.config.instance, orders_consumer=RINGS["orders"][2].index("journal"),
            reports_consumer=RINGS["reports"][2].index("journal"), idle_s=0.005)
        self._journal_stop = threading.Event()
        self._journal_thread = threading.Thread(target=self.journal_writer.run, args=(self._journal_stop,),
                                                name="journal", daemon=True)
        self._journal_thread.start()

    def on_close(self) -> None:
        """Stop the journal after it drained both rings (what execution published before this is journaled)."""
        if self._journal_thread is not None:
            self._journal_stop.set()
            self._journal_thread.join(10)
            self.journal_writer.close()
            self.journal_writer.journal.close()
            self._journal_thread = None

    def counters(self) -> dict:
        out = super().counters()
        if self.journal_writer is not None:
            out.update({f"journal_{k}": int(v) for k, v in self.journal_writer.stats.items()})
        return out

    def step(self) -> int:
        return execution_step(self.state, self.inputs, self.reports, self.batch)


def make_stage(config, ctx) -> ExecutionStage:
    return ExecutionStage(config, ctx)


def warm(config) -> None:
    ins = tuple(scratch_ring(dt, consumer=True) for dt in (ORDER_REQUEST, BOOK_EVENT))
    for end in ins:
        scratch_publish(end, 1)
    execution_step(new_state(4), ins, scratch_ring(EXEC_REPORT), 4)
