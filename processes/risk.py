"""Risk stage: signals become sized, checked orders; fills become positions and P&L; stops and the breaker act.

One kernel call per duty cycle (``risk_step``), inputs in ``PRIORITY``
order: every execution report it can see (fills, acks, rejects: positions
and open orders are current before anything is decided), then the book
(mids, depth, staleness, stops), then the breaker's conditions, then the
signals. Every signal gives exactly one ORDER_REQUEST: an approved
``ORD_NEW``, a trace probe passed through (action 0), or an ``ORD_DENIED``
record with the reason (execution never sends it; the journal keeps it).
Stops emit reduce-only exits; a breaker trip emits one ``ORD_CANCEL_ALL``
and an alert event. The rules: ``core/risk_kernels.py``.

Operator commands (``on_command``; the supervisor's control socket and
``scripts/ctl.sh`` send them, the ``halt`` event route too): ``halt``
(HALTED + cancel-all), ``resume`` (ACTIVE; the only way out of a breaker
trip), ``reduce_only``, ``flatten`` (REDUCE_ONLY + an exit for every
position), ``clock_offset`` (``offset_ms``: execution's measurement).

Start and restart: positions and open orders are rebuilt from the journal
(``_restore``): one snapshot of the current epoch's fills and open orders
and of how far the journal got in each ring; intents the journal had not
committed yet are read back from the orders ring (the journal releases only
what it committed, so they are still there), and the reports ring is read
from the journal's mark on, so no fill is applied twice or missed. A
restarted process, or one that found positions or open orders, is
REDUCE_ONLY until execution has reconciled the venue against the journal:
it asks (the ``reconcile`` event, routed to execution) and execution
answers ``reconciled`` (a command here), which returns it to ACTIVE unless
an operator command came in between (the operator's word stands).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numba as nb
import numpy as np

from core import filters as flt
from core.config import RINGS
from core.latency import nb_record
from core.pnl import METHOD_IDS, METHOD_NAMES, PNL_NA, pnl_avg_entry, pnl_position, pnl_realized, pnl_realized_net, pnl_unrealized
from core.records import BOOK_EVENT, EXEC_REPORT, ORDER_REQUEST, ORIGIN_KILL, ORIGIN_OPERATOR, ORIGIN_STOP, SIGNAL
from core.records import OT_LIMIT, OT_MARKET, TIF_GTC, TIF_IOC
from core.risk_kernels import (
    ACTIVE,
    B_LATENCY,
    B_NONE,
    DENY_NAMES,
    H_ALERT,
    H_CID_END,
    H_CLOCK_MS,
    H_LAT_SPIKES,
    H_NEXT_CID,
    H_STARTED_NS,
    H_STATE,
    H_TRIP,
    HALTED,
    N_FLIM,
    N_LIM,
    REDUCE_ONLY,
    STATE_NAMES,
    TRIP_NAMES,
    C_APPROVED,
    C_CANCEL_ALL,
    C_DENIED,
    C_EXITS,
    C_FILLS,
    C_PNL_REFUSED,
    C_PROBES,
    C_REJECTS,
    C_REPORTS_UNKNOWN,
    C_SIGNALS,
    FL_ATR_MULT,
    FL_IMPACT_K,
    FL_LIMIT_OFFSET_BPS,
    FL_MAX_DRAWDOWN_PCT,
    FL_MAX_ERROR_RATE,
    FL_MAX_SLIP_BPS,
    FL_PRICE_BAND_PCT,
    FL_STOP_LOSS_PCT,
    FL_TAKE_PROFIT_PCT,
    FL_TRAIL_PCT,
    L_ALLOW_SHORT,
    L_BOOK_INVALID_NS,
    L_CAPITAL,
    L_FEED_STALE_NS,
    L_LATENCY_N,
    L_LATENCY_NS,
    L_MAX_10S,
    L_MAX_1S,
    L_MAX_CLOCK_MS,
    L_MAX_DAILY_LOSS,
    L_MAX_GROSS_NOTIONAL,
    L_MAX_OPEN_ORDERS,
    L_MAX_OPEN_POSITIONS,
    L_MAX_ORDER_NOTIONAL,
    L_MAX_ORDER_QTY,
    L_MAX_POSITION,
    L_MAX_REJECTS,
    L_MAX_SYMBOL_NOTIONAL,
    L_ORDER_TYPE,
    L_PNL_METHOD,
    L_RISK_PER_TRADE,
    L_SIZING_MODE,
    L_SIZING_NOTIONAL,
    L_SIZING_QTY,
    L_STALE_NS,
    L_TIF,
    L_TRAIL_ABS,
    RiskState,
    breaker_check,
    emit_cancel_all,
    emit_exit,
    new_risk_state,
    position,
    risk_on_book,
    risk_on_report,
    risk_on_signal,
    trip,
)
from core.topology import ring_hop
from processes.stage import KernelStage, RingWriter, ring_in, ring_out
from processes.stage_kernels import (
    nb_cursor,
    nb_out_publish,
    nb_out_reserve,
    nb_trace_bad,
    scratch_publish,
    scratch_ring,
)
from ringbuffers.clock import nb_monotonic_ns
from ringbuffers.ring import FULL, H_CAPACITY, nb_available, nb_poll_copy

log = logging.getLogger("ringtrader.risk")

#: input priority: what risk must know (fills, then the market) before it decides on a signal
PRIORITY = ("reports", "book", "signals")
SIGNAL_CI = RINGS["book"][2].index("signal")  # the signal stage's consumer index on the book ring
ID_BLOCK = 1000  # client order ids reserved per journal transaction
SIZING_MODES = {"fixed_qty": 0, "fixed_notional": 1, "volatility": 2}
ORDER_TYPES = {"market": (OT_MARKET, 0), "limit_ioc": (OT_LIMIT, TIF_IOC), "limit_gtc": (OT_LIMIT, TIF_GTC)}

K_TRACE_BAD = 0
K_LOST = 1
K_OUT_FULL = 2
K_REPORTS = 3
K_BOOK = 4
K_N = 5

# pending work flags (pend[*]): written by inputs, emitted when the orders ring has room
P_CANCEL_ALL = 0  # origin of a cancel-all owed to execution (0: none)
P_N = 1


class StageState(NamedTuple):
    risk: RiskState
    counters: np.ndarray  # int64[K_N]
    pend: np.ndarray  # int64[P_N]
    exits: np.ndarray  # int64[n_sym]: origin of an exit owed for the symbol (0: none)
    reports: np.ndarray  # EXEC_REPORT[batch]: scratch for one cycle of each input...
    book: np.ndarray  # BOOK_EVENT[batch]
    signals: np.ndarray  # SIGNAL[batch]
    hops: tuple  # latency histograms: (reports->risk, book->risk, signals->risk)


def limits(cfg) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's parameter arrays from the ``risk`` section."""
    r = cfg.risk
    lim = np.zeros(N_LIM, np.int64)
    flim = np.zeros(N_FLIM, np.float64)
    otype, tif = ORDER_TYPES[r.order_type]
    for k, v in ((L_MAX_POSITION, r.max_position_size), (L_MAX_ORDER_QTY, r.max_order_qty),
                 (L_MAX_ORDER_NOTIONAL, r.max_order_notional), (L_MAX_SYMBOL_NOTIONAL, r.max_symbol_notional),
                 (L_MAX_GROSS_NOTIONAL, r.max_gross_notional), (L_MAX_OPEN_POSITIONS, r.max_open_positions),
                 (L_MAX_OPEN_ORDERS, r.max_open_orders), (L_MAX_1S, r.max_orders_per_s),
                 (L_MAX_10S, r.max_orders_per_10s), (L_STALE_NS, r.max_staleness_ms * 1_000_000),
                 (L_MAX_CLOCK_MS, r.max_clock_offset_ms), (L_SIZING_MODE, SIZING_MODES[r.sizing_mode]),
                 (L_SIZING_QTY, r.sizing_qty), (L_SIZING_NOTIONAL, r.sizing_notional),
                 (L_RISK_PER_TRADE, r.sizing_risk_per_trade), (L_ORDER_TYPE, otype), (L_TIF, tif),
                 (L_PNL_METHOD, METHOD_IDS[r.pnl_method]), (L_ALLOW_SHORT, int(r.allow_short)),
                 (L_MAX_DAILY_LOSS, r.max_daily_loss), (L_CAPITAL, r.capital),
                 (L_MAX_REJECTS, r.max_consecutive_rejects), (L_FEED_STALE_NS, r.feed_stale_ms * 1_000_000),
                 (L_BOOK_INVALID_NS, r.book_invalid_ms * 1_000_000), (L_LATENCY_NS, r.latency_spike_us * 1000),
                 (L_LATENCY_N, r.latency_spikes), (L_TRAIL_ABS, r.trailing_stop_abs)):
        lim[k] = v
    for k, v in ((FL_PRICE_BAND_PCT, r.price_band_pct), (FL_MAX_SLIP_BPS, r.max_slippage_bps),
                 (FL_IMPACT_K, r.impact_k), (FL_ATR_MULT, r.sizing_atr_mult),
                 (FL_LIMIT_OFFSET_BPS, r.limit_offset_bps), (FL_STOP_LOSS_PCT, r.stop_loss_pct),
                 (FL_TAKE_PROFIT_PCT, r.take_profit_pct), (FL_TRAIL_PCT, r.trailing_stop_pct),
                 (FL_MAX_DRAWDOWN_PCT, r.max_drawdown_pct), (FL_MAX_ERROR_RATE, r.max_error_rate)):
        flim[k] = v
    return lim, flim


def filter_table(cfg) -> np.ndarray:
    """The venue filters of every instrument (``core.filters`` table).

    From exchangeInfo when the supervisor resolved it at start (``cfg.venue``); otherwise (the synthetic
    source, tests) from the config's values: tick (PRICE_FILTER), lot step (LOT_SIZE and MARKET), min
    notional (MIN_NOTIONAL, applied to MARKET too), every order type allowed.
    """
    if getattr(cfg, "venue", ""):
        return flt.VenueInfo.from_json(cfg.venue).filter_table([i.symbol for i in cfg.instruments])
    t = np.zeros((len(cfg.instruments), flt.N_COLS), np.int64)
    for i, inst in enumerate(cfg.instruments):
        t[i, flt.C_TICK] = inst.tick_size
        t[i, flt.C_STEP] = inst.lot_size
        t[i, flt.C_MKT_STEP] = inst.lot_size
        t[i, flt.C_MKT_ROUND_STEP] = inst.lot_size
        t[i, flt.C_MIN_QTY] = inst.lot_size
        t[i, flt.C_MIN_NOTIONAL] = inst.min_notional
        t[i, flt.C_FLAGS] = (flt.FL_PRICE_FILTER | flt.FL_LOT_SIZE | flt.FL_MIN_NOTIONAL | flt.FL_MIN_NOTIONAL_MKT)
        t[i, flt.C_ORDER_TYPES] = sum(1 << o for o in (1, 2, 3))
    return t


def new_state(cfg, batch: int = 256, hops: tuple | None = None, *, first_cid: int = 1, cid_end: int = 1 << 62,
              state: int = ACTIVE) -> StageState:
    from core.latency import new_hist

    lim, flim = limits(cfg)
    n = len(cfg.instruments)
    return StageState(risk=new_risk_state(lim, flim, filter_table(cfg), first_cid=first_cid, cid_end=cid_end,
                                          state=state),
                      counters=np.zeros(K_N, np.int64), pend=np.zeros(P_N, np.int64), exits=np.zeros(n, np.int64),
                      reports=np.zeros(batch, EXEC_REPORT), book=np.zeros(batch, BOOK_EVENT),
                      signals=np.zeros(batch, SIGNAL), hops=hops or (new_hist(), new_hist(), new_hist()))


@nb.njit(cache=True, nogil=True)
def _poll(end, scratch, max_n, hist, counters):
    ctrl, slots, ci = end
    if nb_available(ctrl, ci) == 0:
        return 0
    m = max_n if max_n < scratch.shape[0] else scratch.shape[0]
    n, lost = nb_poll_copy(ctrl, slots, ci, scratch[:m])
    now = nb_monotonic_ns()
    for i in range(n):
        nb_record(hist, now - scratch[i].pub_ns)
    counters[K_LOST] += lost
    counters[K_TRACE_BAD] += nb_trace_bad(scratch, n, now)
    return n


@nb.njit(cache=True, nogil=True)
def _book_until(state, book, end_seq, now):
    """Apply book records below ring sequence ``end_seq`` (those available); returns (records, max exch_ms)."""
    ctrl, slots, ci = book
    st = state.risk
    c = state.counters
    total = 0
    exch_ms = 0
    while True:
        cur = nb_cursor(ctrl, ci)
        want = end_seq - cur
        if want <= 0:
            break
        if want > state.book.shape[0]:
            want = state.book.shape[0]
        n, lost = nb_poll_copy(ctrl, slots, ci, state.book[:want])
        c[K_LOST] += lost
        if n == 0:
            break
        t = nb_monotonic_ns()
        for i in range(n):
            ev = state.book[i]
            nb_record(state.hops[1], t - ev.pub_ns)
            if ev.exch_ms > exch_ms:
                exch_ms = ev.exch_ms
            if risk_on_book(st, ev, now):
                state.exits[ev.symbol] = ORIGIN_STOP
        c[K_TRACE_BAD] += nb_trace_bad(state.book, n, t)
        c[K_BOOK] += n
        total += n
    return total, exch_ms


@nb.njit(cache=True, nogil=True)
def risk_step(state, inputs, orders, max_n, signal_ci):
    """One duty cycle (see the module docstring). Returns records consumed, or FULL when signals (or owed
    exits / cancel-all) wait for room in the orders ring.

    The book is applied in step with the signals: before deciding on a signal, every book record up to the
    one that caused it (``SIGNAL.book_seq``); after the signals, the book only up to what the signal stage
    has finished (its cursor on the book ring, ``signal_ci``: it moves the cursor after publishing the
    signals those records caused). So risk decides on exactly the book the signal saw, whatever the
    placement and timing.
    """
    reports, book, signals = inputs
    st = state.risk
    c = state.counters
    now = nb_monotonic_ns()
    if st.hdr[H_STARTED_NS] == 0:
        st.hdr[H_STARTED_NS] = now
    n = _poll(reports, state.reports, max_n, state.hops[0], c)
    work = n
    c[K_REPORTS] += n
    for i in range(n):
        why = risk_on_report(st, state.reports[i])
        if why != B_NONE and trip(st, why):
            state.pend[P_CANCEL_ALL] = ORIGIN_KILL
    b_ctrl = book[0]
    watermark = nb_cursor(b_ctrl, signal_ci)  # before reading the signals ring (acquire): see above
    in_ctrl, in_slots, ci = signals
    avail = nb_available(in_ctrl, ci)
    want = avail if avail < state.signals.shape[0] else state.signals.shape[0]
    n_sym = state.exits.shape[0]
    out_ctrl, out_slots = orders
    seq, room = nb_out_reserve(out_ctrl, want + 1 + n_sym)  # each signal, a cancel-all, an exit per symbol
    if seq == FULL or room < 1 + n_sym:
        c[K_OUT_FULL] += 1
        return FULL if work == 0 else work
    mask = out_ctrl[H_CAPACITY] - 1
    m = room - 1 - n_sym
    if m > want:
        m = want
    k = 0
    exch_ms = 0
    n = 0
    if m > 0:
        n, lost = nb_poll_copy(in_ctrl, in_slots, ci, state.signals[:m])
        c[K_LOST] += lost
        for i in range(n):
            s = state.signals[i]
            nb_, xm = _book_until(state, book, s.book_seq + 1, now)
            work += nb_
            if xm > exch_ms:
                exch_ms = xm
            risk_on_signal(st, s, out_slots[(seq + k) & mask], now)
            k += 1
    # the book up to the watermark, but never past the next signal still unread (a batch may stop short)
    limit = watermark
    if nb_available(in_ctrl, ci) > 0:
        nxt = in_slots[nb_cursor(in_ctrl, ci) & (in_ctrl[H_CAPACITY] - 1)].book_seq + 1
        if nxt < limit:
            limit = nxt
    nb_, xm = _book_until(state, book, limit, now)
    work += nb_
    if xm > exch_ms:
        exch_ms = xm
    why = breaker_check(st, now, exch_ms)
    if why == B_NONE and st.lim[L_LATENCY_NS] > 0 and st.hdr[H_LAT_SPIKES] >= st.lim[L_LATENCY_N]:
        why = B_LATENCY
    if why != B_NONE and trip(st, why):
        state.pend[P_CANCEL_ALL] = ORIGIN_KILL
    if state.pend[P_CANCEL_ALL] != 0:
        emit_cancel_all(st, out_slots[(seq + k) & mask], now, state.pend[P_CANCEL_ALL])
        state.pend[P_CANCEL_ALL] = 0
        k += 1
    for sym in range(n_sym):
        origin = state.exits[sym]
        if origin != 0:
            state.exits[sym] = 0
            if emit_exit(st, out_slots[(seq + k) & mask], sym, now, now, now, exch_ms, origin):
                k += 1
    if k > 0:
        pub = nb_out_publish(out_ctrl, out_slots, seq, k)
        for i in range(n):
            nb_record(state.hops[2], pub - state.signals[i].pub_ns)
        c[K_TRACE_BAD] += nb_trace_bad(state.signals, n, pub)
    return work + n + (1 if k > n else 0)


class RiskStage(KernelStage):
    COUNTERS = {"reports_seen": K_REPORTS, "book_seen": K_BOOK, "trace_violations": K_TRACE_BAD,
                "inputs_lost": K_LOST, "orders_full": K_OUT_FULL}

    def __init__(self, config, ctx):
        self.ctx = ctx
        self.config = config
        self.symbols = [i.symbol for i in config.instruments]
        self.inputs = tuple(ring_in(ctx.inputs[r]) for r in PRIORITY)
        self.orders = ring_out(ctx.outputs["orders"])
        self.writer = RingWriter(ctx.outputs["orders"], ctx, scratch=1)  # waits on a full ring (execution is behind)
        self.batch = ctx.process.batch
        restarted = getattr(ctx, "incarnation", 1) > 1
        # client order ids: blocks reserved durably in the journal before any is used, so an id is never
        # reused across restarts and spare takeovers (processes.journal.IdReserver)
        from processes.journal import IdReserver, journal_path

        path = journal_path(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.ids = IdReserver(path, config.instance, block=ID_BLOCK)
        first, end = self.ids.reserve_block()
        self.state = new_state(config, self.batch, tuple(ctx.latency.hop(ring_hop(r, "risk")).h for r in PRIORITY),
                               first_cid=first, cid_end=end)
        self.restored = self._restore(path)
        # REDUCE_ONLY until execution says the venue was reconciled (its "reconciled" event) when there is
        # anything to reconcile: a restart, or positions / open orders carried over from the journal
        self.awaiting_reconcile = restarted or bool(self.restored["positions"] or self.restored["open_orders"])
        if self.awaiting_reconcile:
            self.state.risk.hdr[H_STATE] = REDUCE_ONLY
            log.warning("risk %s with %d position(s) and %d open order(s) from the journal: REDUCE_ONLY until "
                        "execution has reconciled them with the venue", "restarted" if restarted else "started",
                        self.restored["positions"], self.restored["open_orders"], extra=dict(self.restored))

    def on_start(self) -> None:
        if self.awaiting_reconcile:
            self.ctx.event("reconcile", reason="risk restarted")  # routed to execution: it answers "reconciled"

    def _restore(self, path) -> dict:
        """Rebuild positions and open orders from the journal and the rings (see the module docstring).

        One journal snapshot (``Journal.recovery``) gives this epoch's fills, the orders it believes open,
        and the seq up to which it committed each ring. Fills go through ``pnl_apply`` in journal order;
        open orders into the open-order table (with what is filled). Intents this stage published that the
        journal had not committed are still in the orders ring (the journal releases only what it
        committed): they are read from there. The reports ring is then read from the journal's mark on, so
        every report is applied exactly once: the ones below the mark are in the snapshot."""
        from core.pnl import COMM_BASE, COMM_OTHER, COMM_QUOTE, STATUS_NAMES, pnl_apply
        from core.records import ORD_NEW, ORIGIN_STRATEGY, SIDE_BUY, SIDE_SELL
        from core.risk_kernels import restore_order
        from processes.journal import Journal
        from ringbuffers.ring import C_CURSOR, P_PUBLISH, consumer_word

        st = self.state.risk
        out = {"fills": 0, "positions": 0, "open_orders": 0, "skipped": 0, "ring_intents": 0}
        rep_ring = self.ctx.inputs.get("reports")
        ord_ring = self.ctx.outputs.get("orders")
        ji_o = RINGS["orders"][2].index("journal")
        ji_r = RINGS["reports"][2].index("journal")
        if rep_ring is None or ord_ring is None or not path.exists() or ord_ring.consumers <= ji_o \
                or rep_ring.consumers <= ji_r:  # no journal behind these rings (a test's private rings)
            return out
        octrl = ord_ring.ctrl
        # intents published and maybe not journaled: from the journal's cursor (it protects them) to the head
        o_start = int(octrl[consumer_word(ji_o, C_CURSOR)])
        o_head = int(octrl[P_PUBLISH])
        backlog = [ord_ring.slots[q & (ord_ring.capacity - 1)].copy() for q in range(o_start, o_head)]
        cids = [int(r["client_order_id"]) for r in backlog if int(r["action"]) == ORD_NEW]
        with Journal(path, instance=self.config.instance, create=False) as j:
            snap = j.recovery({"orders": ord_ring.token, "reports": rep_ring.token}, cids=cids)
        sym_id = {s: i for i, s in enumerate(self.symbols)}
        comm = {"QUOTE": COMM_QUOTE, "BASE": COMM_BASE, "OTHER": COMM_OTHER}
        for f in snap["fills"]:
            s = sym_id.get(f["symbol"])
            side = SIDE_BUY if f["side"] == "BUY" else SIDE_SELL if f["side"] == "SELL" else 0
            if s is None or not side:
                out["skipped"] += 1
                log.error("journal fill %s trade %s: not an instrument of this config (or no side): its position "
                          "is not managed here", f["symbol"], f["trade_id"])
                continue
            code = pnl_apply(st.pnl, s, side, f["px"], f["qty"], f["commission"], comm.get(f["commission_asset"],
                                                                                         COMM_OTHER), 0)
            if code != 0:
                st.cnt[C_PNL_REFUSED] += 1
                log.error("journal fill %s trade %s refused by core.pnl (%s)", f["symbol"], f["trade_id"],
                          STATUS_NAMES[int(code)])
            out["fills"] += 1

        def is_exit(origin, reduce_only) -> bool:
            return bool(reduce_only) or origin not in (None, "STRATEGY", ORIGIN_STRATEGY)

        seen = set()
        for o in snap["open_orders"]:
            s = sym_id.get(o["symbol"])
            if o["qty"] is None or s is None:  # a row made by a report before its intent: the intent decides
                continue
            side = SIDE_BUY if o["side"] == "BUY" else SIDE_SELL
            if restore_order(st, o["cid"], s, side, o["qty"], o["cum_qty"] or 0, is_exit(o["origin"], o["reduce_only"])):
                out["open_orders"] += 1
                seen.add(o["cid"])
        o_mark = snap["marks"]["orders"]
        first_new = o_mark if o_mark is not None else o_start
        for q, r in zip(range(o_start, o_head), backlog):
            cid = int(r["client_order_id"])
            if q < first_new or int(r["action"]) != ORD_NEW or cid in seen:
                continue
            rank, cum = snap["states"].get(cid, (0, 0))
            if rank >= 4:  # its final report was journaled before its intent
                continue
            if restore_order(st, cid, int(r["symbol"]), int(r["side"]), int(r["qty"]), cum or 0,
                             is_exit(int(r["origin"]), int(r["reduce_only"]))):
                out["ring_intents"] += 1
                out["open_orders"] += 1
        # reports: from the journal's mark on (below it: in the snapshot)
        rctrl = rep_ring.ctrl
        mark = snap["marks"]["reports"]
        j_cur = int(rctrl[consumer_word(ji_r, C_CURSOR)])
        own = int(rctrl[consumer_word(rep_ring.consumer_index, C_CURSOR)])
        start = mark if mark is not None else j_cur
        if start < min(j_cur, own):  # the journal released past its commits (a write backlog): not protected
            log.error("the journal is behind its reports cursor (a write backlog?): reports %d..%d are taken as "
                      "applied; reconciliation with the venue covers them", start, min(j_cur, own))
            start = min(j_cur, own)
        rctrl[consumer_word(rep_ring.consumer_index, C_CURSOR)] = start
        out["positions"] = sum(1 for s in range(len(self.symbols)) if position(st, s) != 0)
        out["reports_from"] = start
        out["reports_rewound"] = own - start
        if out["fills"] or out["open_orders"]:
            log.info("risk rebuilt %d fill(s), %d position(s), %d open order(s) (%d from the orders ring) from the "
                     "journal; reports resume at seq %d (%+d)", out["fills"], out["positions"], out["open_orders"],
                     out["ring_intents"], start, start - own)
        return out

    def step(self) -> int:
        n = risk_step(self.state, self.inputs, self.orders, self.batch, SIGNAL_CI)
        hdr = self.state.risk.hdr
        if hdr[H_CID_END] - hdr[H_NEXT_CID] < ID_BLOCK // 4:  # refill before the block runs out
            first, end = self.ids.reserve_block()
            if first == hdr[H_CID_END]:
                hdr[H_CID_END] = end  # contiguous: extend
            else:  # another reserver took ids in between: skip to the new block (ids stay unique)
                hdr[H_NEXT_CID], hdr[H_CID_END] = first, end
        if hdr[H_ALERT]:
            hdr[H_ALERT] = 0
            why = TRIP_NAMES[int(hdr[H_TRIP])]
            log.error("circuit breaker tripped: %s; HALTED, cancel-all sent", why, extra={"trip": why})
            self.ctx.event("alert", kind="circuit_breaker", reason=why, state=STATE_NAMES[int(hdr[H_STATE])])
        return n

    def on_command(self, cmd: dict) -> bool:
        st = self.state.risk
        t = cmd.get("type")
        if t == "halt":
            st.hdr[H_STATE] = HALTED
            self.state.pend[0] = ORIGIN_OPERATOR
        elif t == "resume":
            st.hdr[H_STATE] = ACTIVE
            st.hdr[H_TRIP] = B_NONE
            st.hdr[H_LAT_SPIKES] = 0
        elif t == "reduce_only":
            st.hdr[H_STATE] = REDUCE_ONLY
        elif t == "flatten":
            if st.hdr[H_STATE] != HALTED:
                st.hdr[H_STATE] = REDUCE_ONLY
            for s in range(len(self.symbols)):
                if pnl_position(st.pnl, s) != 0:
                    self.state.exits[s] = ORIGIN_OPERATOR
        elif t == "clock_offset":
            st.hdr[H_CLOCK_MS] = int(cmd.get("offset_ms", 0))
            return True
        elif t == "reconciled":  # execution has reconciled the venue with the journal
            if not self.awaiting_reconcile:
                return True
            self.awaiting_reconcile = False
            if st.hdr[H_STATE] == REDUCE_ONLY:
                st.hdr[H_STATE] = ACTIVE
            log.info("execution reconciled the venue: state %s", STATE_NAMES[int(st.hdr[H_STATE])],
                     extra={"command": t})
            return True
        else:
            return False
        if cmd.get("origin") == "operator" or t in ("halt", "resume"):
            self.awaiting_reconcile = False  # the operator's word stands over the automatic return to ACTIVE
        log.info("operator command %s: state %s", t, STATE_NAMES[int(st.hdr[H_STATE])], extra={"command": t})
        return True

    def counters(self) -> dict:
        st = self.state.risk
        out = super().counters()
        cnt = st.cnt
        out.update(state=int(st.hdr[H_STATE]), trip=int(st.hdr[H_TRIP]), signals=int(cnt[C_SIGNALS]),
                   approved=int(cnt[C_APPROVED]), denied=int(cnt[C_DENIED]), exits=int(cnt[C_EXITS]),
                   cancel_all=int(cnt[C_CANCEL_ALL]), fills=int(cnt[C_FILLS]), rejects=int(cnt[C_REJECTS]),
                   probes=int(cnt[C_PROBES]), reports_unknown=int(cnt[C_REPORTS_UNKNOWN]),
                   pnl_refused=int(cnt[C_PNL_REFUSED]))
        for i, name in enumerate(DENY_NAMES):
            if i and st.deny[i]:
                out[f"denied.{name}"] = int(st.deny[i])
        for i, name in enumerate(TRIP_NAMES):
            if i:
                out[f"trips.{name}"] = int(st.trips[i])
        method = int(st.lim[L_PNL_METHOD])
        for s, sym in enumerate(self.symbols):
            mid = int((st.sy[s, 0] + st.sy[s, 2]) // 2) if st.sy[s, 5] else 0
            pos = int(pnl_position(st.pnl, s))
            vals = {"position": pos, "realized": int(pnl_realized(st.pnl, s, method)),
                    "realized_net": int(pnl_realized_net(st.pnl, s, method, st.fee_px)),
                    "unrealized": int(pnl_unrealized(st.pnl, s, method, mid)) if mid else 0,
                    "avg_entry": int(pnl_avg_entry(st.pnl, s, method)) if pos else 0}
            for k, v in vals.items():
                out[f"{k}.{sym}"] = 0 if v == PNL_NA else v
            if mid:
                out[f"mark.{sym}"] = mid
            for m, mname in METHOD_NAMES.items():  # all three methods, side by side (the metrics)
                for k, v in (("realized", pnl_realized(st.pnl, s, m)),
                             ("realized_net", pnl_realized_net(st.pnl, s, m, st.fee_px)),
                             ("unrealized", pnl_unrealized(st.pnl, s, m, mid) if mid else 0)):
                    out[f"pnl.{mname}.{k}.{sym}"] = 0 if v == PNL_NA else int(v)
        return out


    def on_close(self) -> None:
        self.ids.close()


def make_stage(config, ctx) -> RiskStage:
    return RiskStage(config, ctx)


def warm(config) -> None:
    flt.warm()
    ins = tuple(scratch_ring(dt, consumer=True) for dt in (EXEC_REPORT, BOOK_EVENT, SIGNAL))
    for end in ins:
        scratch_publish(end, 1)
    ins[2][1]["side"][0] = 1
    risk_step(new_state(config, 4), ins, scratch_ring(ORDER_REQUEST, capacity=8), 4, 0)
    st = new_state(config, 4)
    position(st.risk, 0)
    from processes.journal import warm_positions

    warm_positions()  # a restarted risk stage rebuilds its positions from the journal's fills
