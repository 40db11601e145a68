"""Execution stage: orders in, execution reports out; the journal beside it.

Modes (``mode`` in the config), one stage, the same EXEC_REPORT records:

* ``paper``: fills simulated in-process by ``core/paper.py`` (the matching
  core of ``core/matching.py`` against the live book's tops and depth, with a
  latency model, the queue model and fees): one kernel per duty cycle
  (``paper_step``) polls the orders (then the book), runs the paper venue and
  publishes its reports. Hops: ``orders->execution``, ``book->execution``,
  ``end_to_end`` (tick received -> the order's first report published).
* ``sim`` / ``live``: orders go to the venue (the local simulator, or
  Binance) over one WebSocket API session on a thread of this stage
  (``processes/venue_exec.py``: signed, rate-limited, exactly once, reports
  from the user-data stream); the duty cycle's kernel (``venue_step``)
  answers trace probes in place (the end-to-end trace never waits on
  Python) and copies venue orders out for the venue thread; the stage then
  publishes the reports that came back. Without a venue (the synthetic
  source, or sim with the simulator disabled) orders get trace-probe reports
  only (``execution_step``) and nothing trades.

Every mode runs the journal (``processes/journal.py``): a consumer of the
orders and reports rings on a thread of this stage, off the duty cycle.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numba as nb
import numpy as np

from core.latency import nb_record, nb_record_many
from core.paper import paper_on_book, paper_on_order, paper_on_timer
from core.records import BOOK_EVENT, EX_NEW, EXEC_REPORT, ORDER_REQUEST
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
from ringbuffers.clock import nb_monotonic_ns
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


@nb.njit(cache=True, nogil=True)
def venue_step(state, inputs, reports, max_n, venue_out):
    """sim/live, the duty cycle's kernel part: trace probes are answered in place (as ``execution_step``: the
    end-to-end trace never waits on Python), venue orders (new, cancel, cancel-all) are copied to
    ``venue_out`` for the venue thread; then the book. Returns (records consumed or FULL, orders copied)."""
    orders, book = inputs
    c = state.counters
    work = 0
    k = 0
    in_ctrl, in_slots, ci = orders
    avail = nb_available(in_ctrl, ci)
    if avail > 0:
        src = state.orders
        want = avail if avail < src.shape[0] else src.shape[0]
        if want > venue_out.shape[0]:
            want = venue_out.shape[0]
        out_ctrl, out_slots = reports
        seq, m = nb_out_reserve(out_ctrl, want)
        if seq == FULL:
            c[K_OUT_FULL] += 1
            return FULL, 0
        n, lost = nb_poll_copy(in_ctrl, in_slots, ci, src[:m])
        mask = out_ctrl[H_CAPACITY] - 1
        p = 0
        for i in range(n):
            if src[i].action == 0:
                _probe(src[i], out_slots[(seq + p) & mask])
                p += 1
            else:
                venue_out[k] = src[i]
                k += 1
        now = nb_out_publish(out_ctrl, out_slots, seq, p)
        for i in range(n):
            nb_record(state.hops[0], now - src[i].pub_ns)
            if src[i].action == 0:
                nb_record(state.hops[2], now - src[i].recv_ns)
        c[K_TRACE_BAD] += nb_trace_bad(src, n, now)
        c[K_REPORTS] += p
        c[K_LOST] += lost
        work += n
    n, lost, bad = nb_sink_ring(book, state.book, max_n, state.hops[1])
    c[K_BOOK] += n
    c[K_LOST] += lost
    c[K_TRACE_BAD] += bad
    return work + n, k


# ---------------------------------------------------------------------------
# paper mode
# ---------------------------------------------------------------------------
PAPER_CAPACITY = 256  # paper orders live at once (resting + in flight)
PAPER_OUT = 4096  # reports one duty cycle can make (scratch), >= the paper kernels' room


class PaperExecState(NamedTuple):
    counters: np.ndarray  # int64[K_N]
    orders: np.ndarray  # ORDER_REQUEST[batch]
    book: np.ndarray  # BOOK_EVENT[batch]
    out: np.ndarray  # EXEC_REPORT[PAPER_OUT]: the reports of one cycle before they go to the ring
    hops: tuple  # (orders->execution, book->execution, end_to_end)
    paper: tuple  # core.paper.PaperState


def new_paper_state(config, batch: int = 256, hops: tuple | None = None) -> PaperExecState:
    from core.latency import new_hist
    from core.paper import paper_state_from_config
    from processes.risk import filter_table

    return PaperExecState(counters=np.zeros(K_N, np.int64), orders=np.zeros(batch, ORDER_REQUEST),
                          book=np.zeros(batch, BOOK_EVENT), out=np.zeros(PAPER_OUT, EXEC_REPORT),
                          hops=hops or (new_hist(), new_hist(), new_hist()),
                          paper=paper_state_from_config(config.execution, filter_table(config),
                                                        capacity=PAPER_CAPACITY))


@nb.njit(cache=True, nogil=True)
def paper_step(state, inputs, reports, max_n):
    """One duty cycle in paper mode: orders (queued with their latency), the book (activations and fills), the
    timer; the reports made are published in one batch. Returns records consumed, or FULL when the reports
    ring has no room for the worst case of this cycle (nothing is read then)."""
    orders, book = inputs
    c = state.counters
    st = state.paper
    room_ev = st.hdr[0].room
    out_ctrl, out_slots = reports
    seq, room = nb_out_reserve(out_ctrl, state.out.shape[0])
    if seq == FULL or room < room_ev + 1:
        c[K_OUT_FULL] += 1
        return FULL
    cap = room if room < state.out.shape[0] else state.out.shape[0]
    out = state.out[:cap]
    now = nb_monotonic_ns()
    k = 0
    work = 0
    o_ctrl, o_slots, o_ci = orders
    if nb_available(o_ctrl, o_ci) > 0:
        m = cap - room_ev  # each order needs 1 slot; leave the book/timer their room
        if m > state.orders.shape[0]:
            m = state.orders.shape[0]
        if m > max_n:
            m = max_n
        n, lost = nb_poll_copy(o_ctrl, o_slots, o_ci, state.orders[:m])
        c[K_LOST] += lost
        for i in range(n):
            nb_record(state.hops[0], now - state.orders[i].pub_ns)
            r = paper_on_order(st, state.orders[i], now, out, k)
            if r > 0:
                k += r
        c[K_TRACE_BAD] += nb_trace_bad(state.orders, n, now)
        work += n
    b_ctrl, b_slots, b_ci = book
    while nb_available(b_ctrl, b_ci) > 0 and cap - k >= room_ev and work < max_n:
        m = (cap - k) // room_ev
        if m > state.book.shape[0]:
            m = state.book.shape[0]
        n, lost = nb_poll_copy(b_ctrl, b_slots, b_ci, state.book[:m])
        c[K_LOST] += lost
        t = nb_monotonic_ns()
        for i in range(n):
            nb_record(state.hops[1], t - state.book[i].pub_ns)
            r = paper_on_book(st, state.book[i], t, out, k)
            if r > 0:
                k += r
        c[K_TRACE_BAD] += nb_trace_bad(state.book, n, t)
        c[K_BOOK] += n
        work += n
        if n == 0:
            break
    if cap - k >= room_ev:
        r = paper_on_timer(st, nb_monotonic_ns(), out, k)
        if r > 0:
            k += r
    if k > 0:
        mask = out_ctrl[H_CAPACITY] - 1
        for i in range(k):
            out_slots[(seq + i) & mask] = out[i]
        pub = nb_out_publish(out_ctrl, out_slots, seq, k)
        for i in range(k):
            r = out[i]
            if r.recv_ns > 0 and r.exec_type == EX_NEW:
                nb_record(state.hops[2], pub - r.recv_ns)  # end to end: tick received -> the order's first report
        c[K_REPORTS] += k
    return work


def has_venue(config) -> bool:
    """sim with the simulator running, or live, on exchange market data: orders go to a venue. Otherwise (the
    synthetic source, the simulator disabled: latency profiling, placement tests) there is none, and orders
    get trace-probe reports only (nothing trades)."""
    if config.market_data.source != "exchange":
        return False
    return config.mode == "live" or (config.mode == "sim" and config.simulator_enabled)


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
        self.paper = config.mode == "paper"
        self.venue = None
        if has_venue(config):
            from processes.venue_exec import VenueExecutor

            from core.topology import VENUE_HOPS

            self.venue = VenueExecutor(config, hists=tuple(ctx.latency.hop(h).h for h in VENUE_HOPS))
        if self.paper:
            self.state = new_paper_state(config, self.batch, tuple(ctx.latency.hop(h).h for h in hops))
        else:
            self.state = new_state(self.batch, tuple(ctx.latency.hop(h).h for h in hops))
        self._vout = np.zeros(self.batch, ORDER_REQUEST)  # venue orders of one duty cycle (venue_step)
        self._clock_next = 0.0
        self._clock_sent = None  # the last clock offset (ms) sent to risk

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
        lost = self._recover(journal)
        if self.venue is not None:
            self.venue.note_sent = self.journal_writer.note_sent
            self.venue.start()
        else:
            if lost:  # no venue keeps orders across a restart here (paper's book died with the process)
                self._expire(lost)
            self.ctx.event("reconciled", reason="no venue to reconcile" if not self.paper else "paper venue")

    def _recover(self, journal) -> list[dict]:
        """Start (and restart): let the journal catch up with what is in the rings (it releases only what it
        committed, so a crash left the rest there), then load what it believes open. Returns the open
        orders that will not come through the orders ring again (venue mode: loaded into the venue
        executor, settled by its start reconciliation)."""
        from core.records import ORD_NEW
        from ringbuffers.ring import P_PUBLISH

        w = self.journal_writer
        heads = (int(w.orders.ctrl[P_PUBLISH]), int(w.reports.ctrl[P_PUBLISH]))
        deadline = time.monotonic() + 5.0
        while (w.orders.cursor < heads[0] or w.reports.cursor < heads[1]) and time.monotonic() < deadline:
            time.sleep(0.002)
        if w.orders.cursor < heads[0] or w.reports.cursor < heads[1]:
            import logging

            logging.getLogger("ringtrader.execution").error(
                "the journal did not catch up with the rings in 5 s: open orders may be incomplete")
        ring = self.ctx.inputs["orders"]
        cur, head = ring.cursor, int(ring.ctrl[P_PUBLISH])
        skip = {int(ring.slots[q & (ring.capacity - 1)]["client_order_id"]) for q in range(cur, head)
                if int(ring.slots[q & (ring.capacity - 1)]["action"]) == ORD_NEW}
        if self.venue is not None:
            self.venue.load_journal(journal, skip_cids=skip)
            return []
        return [o for o in journal.open_orders() if o["cid"] not in skip and o["qty"] is not None]

    def _expire(self, lost: list[dict]) -> None:
        """Open orders of this epoch that no venue holds any more: EXPIRED reports, so risk and the journal
        close them."""
        import logging

        from core.records import EX_EXPIRED, OS_EXPIRED

        sym_id = {i.symbol: k for k, i in enumerate(self.config.instruments)}
        recs = np.zeros(len(lost), EXEC_REPORT)
        for d, o in zip(recs, lost):
            d["client_order_id"], d["symbol"] = o["cid"], sym_id.get(o["symbol"], 0)
            d["side"] = 1 if o["side"] == "BUY" else 2
            d["exec_type"], d["status"], d["cum_qty"] = EX_EXPIRED, OS_EXPIRED, o["cum_qty"] or 0
            d["order_id"], d["trade_id"], d["reject_code"] = -1, -1, -2013
        self.writer.publish(recs)
        logging.getLogger("ringtrader.execution").warning(
            "%d open order(s) from before the restart are gone with the in-process venue: expired", len(lost))

    def on_command(self, cmd: dict) -> bool:
        if cmd.get("type") != "reconcile":
            return False
        if self.venue is not None:
            self.venue.request_reconcile(str(cmd.get("reason", "requested")))
        else:
            self.ctx.event("reconciled", reason="no venue to reconcile" if not self.paper else "paper venue")
        return True

    def on_close(self) -> None:
        """On shutdown: cancel our open orders or leave them (``execution.on_shutdown``), check the journal's
        positions against the venue's balances, then stop the journal after it drained both rings (what
        execution published before this is journaled)."""
        if self.venue is not None:
            self._close_venue()
        if self._journal_thread is not None:
            self._journal_stop.set()
            self._journal_thread.join(10)
            self.journal_writer.close()
            self.journal_writer.journal.close()
            self._journal_thread = None

    def _close_venue(self) -> None:
        import logging

        from processes.journal import Journal

        lg = logging.getLogger("ringtrader.execution")
        v = self.venue
        try:
            if self.config.execution.on_shutdown == "cancel" and v.orders:
                n = len(v.orders)
                v.call(v._cancel_all, 10.0)
                deadline = time.monotonic() + 2.0
                while v.orders and time.monotonic() < deadline:  # their CANCELED events
                    time.sleep(0.01)
                lg.info("shutdown: cancel-all of %d open order(s) (%d left)", n, len(v.orders))
            self._publish_reports(v.take_reports())
            deadline = time.monotonic() + 2.0  # the journal commits what was just published
            w = self.journal_writer
            from ringbuffers.ring import P_PUBLISH

            while w.reports.cursor < int(w.reports.ctrl[P_PUBLISH]) and time.monotonic() < deadline:
                time.sleep(0.005)
            with Journal(w.journal.path, instance=self.config.instance, create=False) as j:
                v.position_check = v.call(lambda: v.check_positions(j), 10.0) or {}
        except Exception as exc:  # noqa: BLE001 - a shutdown check never fails the shutdown
            lg.error("shutdown venue checks failed: %s", exc)
            v.position_check = {"checked": False, "why": repr(exc)}
        v.close()

    def counters(self) -> dict:
        out = super().counters()
        if self.journal_writer is not None:
            out.update({f"journal_{k}": int(v) for k, v in self.journal_writer.stats.items()})
        if self.venue is not None:
            out.update(self.venue.counters())
        elif self.journal_writer is not None:
            out["reconciled"] = 1  # no venue holds our orders (paper, pass-through): the journal was the truth
        if self.paper:
            from core.paper import COUNTER_NAMES

            pc = self.state.paper.cnt
            out.update({f"paper_{name}": int(pc[i]) for i, name in COUNTER_NAMES.items()})
        return out

    def step(self) -> int:
        if self.paper:
            return paper_step(self.state, self.inputs, self.reports, self.batch)
        if self.venue is not None:
            return self._venue_step()
        return execution_step(self.state, self.inputs, self.reports, self.batch)

    def _venue_step(self) -> int:
        """Probes answered by the kernel (``venue_step``); venue orders handed to the venue thread; the reports
        it made published."""
        v = self.venue
        n, k = venue_step(self.state, self.inputs, self.reports, self.batch, self._vout)
        if n == FULL:
            return FULL
        for r in self._vout[:k]:
            v.submit({"action": int(r["action"]), "client_order_id": int(r["client_order_id"]),
                      "orig_client_order_id": int(r["orig_client_order_id"]), "symbol": int(r["symbol"]),
                      "side": int(r["side"]), "order_type": int(r["order_type"]), "tif": int(r["tif"]),
                      "price": int(r["price"]), "qty": int(r["qty"]), "recv_ns": int(r["recv_ns"]),
                      "pub_ns": int(r["pub_ns"]), "ref_px": int(r["ref_px"])})
        out = v.take_reports()
        if out:
            self._publish_reports(out)
        for typ, fields in self._drain_events():
            self.ctx.event(typ, **fields)
        t = time.monotonic()
        if t >= self._clock_next:  # the venue clock's offset, an input to risk (its clock_offset check)
            self._clock_next = t + 1.0
            off = v.clock_offset_ms()
            if off is not None and off != self._clock_sent:
                self._clock_sent = off
                self.ctx.event("clock_offset", offset_ms=off)
        return n + len(out)

    def _publish_reports(self, out: list) -> None:
        """The venue thread's reports (dicts of EXEC_REPORT fields) into the reports ring; end to end is the
        tick received -> the order's first answer published."""
        if not out:
            return
        recs = np.zeros(len(out), EXEC_REPORT)
        names = set(EXEC_REPORT.names)
        for d, r in zip(recs, out):
            for k, val in r.items():
                if k in names:
                    d[k] = val
        self.writer.publish(recs)
        now = time.monotonic_ns()
        e2e = recs["recv_ns"][(recs["recv_ns"] > 0) & (recs["exec_type"] == EX_NEW)]
        if len(e2e):
            nb_record_many(self.state.hops[2], (now - e2e).astype(np.int64))
        self.state.counters[K_REPORTS] += len(recs)

    def _drain_events(self):
        v = self.venue
        while v.events:
            yield v.events.popleft()


def make_stage(config, ctx) -> ExecutionStage:
    return ExecutionStage(config, ctx)


def warm(config) -> None:
    ins = tuple(scratch_ring(dt, consumer=True) for dt in (ORDER_REQUEST, BOOK_EVENT))
    for end in ins:
        scratch_publish(end, 1)
    execution_step(new_state(4), ins, scratch_ring(EXEC_REPORT), 4)
    from processes.journal import warm_positions

    warm_positions()  # the position check at shutdown
    if config is not None and has_venue(config):
        ins = tuple(scratch_ring(dt, consumer=True) for dt in (ORDER_REQUEST, BOOK_EVENT))
        for end in ins:
            scratch_publish(end, 1)
        venue_step(new_state(4), ins, scratch_ring(EXEC_REPORT), 4, np.zeros(4, ORDER_REQUEST))
    if config is not None and config.mode == "paper":
        from core.paper import warm as paper_warm

        paper_warm()
        ins = tuple(scratch_ring(dt, consumer=True) for dt in (ORDER_REQUEST, BOOK_EVENT))
        for end in ins:
            scratch_publish(end, 1)
        paper_step(new_paper_state(config, 4), ins, scratch_ring(EXEC_REPORT, capacity=PAPER_OUT), 4)
