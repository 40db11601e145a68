"""Book stage: ``md`` ring in, L2 books + sync + bars, ``book`` ring out.

Per symbol it keeps the L2 book, the Binance diff-depth sync state machine
and the time bars (all in ``core.book_worker_kernels.BookEngine``), and
publishes BOOK_EVENT records: ``BK_TOP`` on every change of the best levels or
of the book state (``state`` says VALID/INVALID, so nothing downstream acts on
an invalid book), ``BK_DEPTH`` top-10 snapshots at ``book.depth_throttle_ms``,
``BK_TRADE`` for every trade and ``BK_BAR`` for every closed bar.

Duty cycle (``do_work`` = one md batch; ``processes.stage``)
-------------------------------------------------------------
1. ``md.poll(batch)``. Under the ``overwrite`` policy a lapped poll reports
   ``lost > 0``: every book is marked INVALID (``REASON_LAPPED``) before the
   records after the gap are processed, and a resync is requested for every
   symbol.
2. ``BookEngine.process_into`` writes the events straight into slots claimed
   from the ``book`` ring through a ``RingWriter`` (claim -> kernel writes ->
   stamp ``pub_ns`` -> commit). When the claim is too short to make progress
   (at the wrap point, or a block ring with one or two free slots) the kernel
   writes into the writer's scratch array, which is copied across the wrap.
   A full ``block`` ring is waited out with the process's idle strategy (the
   md records stay unreleased, so the feed waits in turn): nothing is dropped.
3. Resync requests (``BookEngine.take_resync_requests``) become
   ``{"type": "resync", "symbol": id, "reason": name}`` events; the
   supervisor forwards them to the feed as ``{"type": "resync", "symbol": id}``
   commands. A symbol still INVALID ``RESYNC_RETRY_S`` after its last request
   is asked for again (a lost command, a feed restarted meanwhile, a snapshot
   that kept failing). On a first start the feed snapshots every symbol by
   itself, so the engine's initial requests are not sent; a restarted book
   worker (incarnation > 1) sends them at once, since the feed does not know
   the books are empty.
4. The bar timer (every ``TIMER_PERIOD_NS``): bars must close on their
   boundary by exchange time even when no trade follows. The worker estimates
   exchange time as the newest ``exch_ms`` seen in ``md`` plus the
   CLOCK_MONOTONIC time elapsed since that record was processed, and calls
   ``on_timer`` with it; the kernel closes a bar once that estimate passes its
   end by ``book.bar_watermark_ms``. Why this estimate: it needs no clock
   sync with the exchange (the anchor is the exchange's own timestamp; only
   the local elapsed time is added), it keeps running through a quiet market
   or a dropped connection (a Binance kline closes on time either way), and
   the network delay folded into the anchor only makes bars close a little
   later, which the watermark already allows for. A trade that arrives after
   its bar was closed this way is counted as late (``late_trades``) and not
   added to the closed bar.

Trace: every event carries the causing md record's ``recv_ns`` and
``in_pub_ns`` (its ``pub_ns``); ``pub_ns`` is stamped just before the commit
and the ``md->book`` hop (``pub_ns - in_pub_ns``) is recorded for every event
that has an md cause (timer bars and lap invalidations have none).

Heartbeat counters: ``books_valid`` (symbols VALID now), ``tops``,
``tops_invalid``, ``depth_snapshots``, ``trades``, ``bars_closed``,
``resyncs_requested``, ``lapped``/``md_lost``, ``book_full`` (waits on a full
book ring), ``md_records``, and the engine's per-symbol counters summed
(``applied``, ``chain_breaks``, ``crossed``, ``stale_dropped``, ``buffered``,
``snapshots_applied``, ``reconnects``, ``late_trades``, ``malformed``,
``bar_gaps_capped`` (time jumps over more than ``bar_max_empty_run`` empty
bar intervals: no flat bars emitted, the bars resynchronised; ``core.bars``)...).
"""

from __future__ import annotations

import time

import numba as nb
import numpy as np

from core.book_worker_kernels import OUT_RESERVE, REASON_LAPPED, BookConfig, BookEngine, md_diff, md_snapshot, md_status, md_trade
from core.latency import nb_record, new_hist
from core.records import BK_BAR, BK_DEPTH, BK_TOP, BK_TRADE, BOOK_EVENT, BOOK_VALID, FIXED_SCALE, MD_EVENT, STATUS_RECONNECTED
from core.book_worker_kernels import process_md_batch
from core.topology import ring_hop
from processes.stage import RingWriter, Stage, ring_in, ring_out
from processes.stage_kernels import nb_out_publish, nb_out_reserve, scratch_publish, scratch_ring
from ringbuffers.ring import FULL, H_CAPACITY, POLICY_BLOCK, nb_poll_end, nb_poll_view

TIMER_PERIOD_NS = 20_000_000  # bar timer: a bar closes at most this long after end + watermark
SLOW_PERIOD_NS = 100_000_000  # resync retries are checked this often
RESYNC_RETRY_S = 5.0  # a symbol still INVALID this long after its last resync request is asked for again
SCRATCH_EVENTS = 4096  # the engine's scratch output (the wrap-point / nearly-full path)

# tally slots (see tally_events)
T_TOPS_INVALID = 0  # BK_* kinds are 1..4 and use their own index
T_N = 8

#: engine totals not reported under their own name: trades are counted as published; lapped per lap, not per symbol
_RENAMED = {"stale": "stale_dropped"}
_NOT_REPORTED = ("trades", "lapped")


# ---------------------------------------------------------------------------
# Kernel
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True)
def tally_events(ev, k, tally, hist):
    """Count ``ev[:k]`` by kind (invalid tops apart) and record ``pub_ns - in_pub_ns`` into ``hist``."""
    for i in range(k):
        e = ev[i]
        kind = e.kind
        tally[kind] += 1
        if kind == BK_TOP and e.state != BOOK_VALID:
            tally[T_TOPS_INVALID] += 1
        if e.in_pub_ns > 0:
            nb_record(hist, e.pub_ns - e.in_pub_ns)


@nb.njit(cache=True, nogil=True)
def book_step(st, md, book, md_buf, ev_buf, max_n, n_sym, n_iv, tally, hist):
    """One duty cycle on a ``block`` md ring, in one call: copy up to ``max_n`` md records out of their slots,
    run the book kernel into ``ev_buf``, publish the events (pub_ns stamped), release the md records consumed.

    Returns ``(md records consumed, events published, newest exch_ms seen)``; consumed is ``FULL`` when the
    book ring has no room for one record's events (nothing is consumed: the stage waits, never drops).
    """
    ctrl, slots, ci = md
    cursor, n = nb_poll_view(ctrl, ci, max_n)
    if n == 0:
        return 0, 0, 0
    if n > md_buf.shape[0]:
        n = md_buf.shape[0]
    mask = ctrl[H_CAPACITY] - 1
    newest = 0
    for k in range(n):  # block policy: the producer cannot reuse a slot before we release it
        md_buf[k] = slots[(cursor + k) & mask]
        if md_buf[k].exch_ms > newest:
            newest = md_buf[k].exch_ms
    out_ctrl, out_slots = book
    need = OUT_RESERVE if OUT_RESERVE > n_sym else n_sym  # a status for all symbols writes one top per symbol
    want = OUT_RESERVE * n + 2 * n_iv
    if want > ev_buf.shape[0]:
        want = ev_buf.shape[0]
    seq, room = nb_out_reserve(out_ctrl, want)
    if seq == FULL or room < need:
        return FULL, 0, newest
    consumed, k = process_md_batch(st, md_buf, n, ev_buf[:room], 0)
    omask = out_ctrl[H_CAPACITY] - 1
    for i in range(k):
        out_slots[(seq + i) & omask] = ev_buf[i]
    now = nb_out_publish(out_ctrl, out_slots, seq, k)
    for i in range(k):
        ev_buf[i].pub_ns = now
    tally_events(ev_buf, k, tally, hist)
    nb_poll_end(ctrl, ci, cursor + consumed)
    return consumed, k, newest


# ---------------------------------------------------------------------------
# Configuration and warm-up
# ---------------------------------------------------------------------------
def book_config(config) -> BookConfig:
    """The kernels' ``BookConfig`` from the system config's ``book`` section and instrument table."""
    b = config.book
    return BookConfig(n_symbols=len(config.instruments), levels_capacity=b.levels_capacity,
                      buffer_capacity=b.buffer_capacity, bar_intervals_ms=tuple(b.bar_intervals_ms),
                      bar_watermark_ms=b.bar_watermark_ms, emit_empty_bars=b.emit_empty_bars,
                      depth_throttle_ms=b.depth_throttle_ms)


def _warm_batch() -> np.ndarray:
    """md records that drive every kernel path: buffer, snapshot + bridge, apply, trades over a bar, reconnect."""
    px, q = 100 * FIXED_SCALE, FIXED_SCALE
    t0 = 1_700_000_059_000
    return np.concatenate([
        md_diff(0, 11, 11, bids=[(px, q)]),  # buffered: no snapshot yet
        md_snapshot(0, 10, bids=[(px - 1, q)], asks=[(px + 1, q)]),  # replays the buffered diff: bridged, VALID
        md_diff(0, 12, 12, asks=[(px + 2, q)]),  # applied
        md_trade(0, 1, px, q, t0),
        md_trade(0, 2, px, q, t0 + 1500, last_id=3),  # closes the first 1 s bar
        md_status(0, STATUS_RECONNECTED),
    ])


def warm(config) -> None:
    """Load (or compile once into NUMBA_CACHE_DIR) every book kernel on a throwaway engine; touches no ring.

    Called before ``ctx.ready()`` and by the supervisor's spare process
    (``processes.runtime.warm_all``).
    """
    cfg = book_config(config)
    small = BookConfig(n_symbols=max(1, min(cfg.n_symbols, 2)), levels_capacity=5000, buffer_capacity=1024,
                       bar_intervals_ms=cfg.bar_intervals_ms, bar_watermark_ms=cfg.bar_watermark_ms,
                       emit_empty_bars=cfg.emit_empty_bars, depth_throttle_ms=cfg.depth_throttle_ms)
    eng = BookEngine(small, out_capacity=64)
    # The engine's entry points on an array of the ring's record dtype: the stage calls them on ring slots and
    # on its writer's scratch, both 1-D C-contiguous BOOK_EVENT arrays, so one signature covers both.
    out = np.zeros(64, BOOK_EVENT)
    tally, hist = np.zeros(T_N, np.int64), new_hist()
    md = _warm_batch()
    i = 0
    while i < len(md):
        consumed, k = eng.process_into(md[i:], len(md) - i, out, 0)
        out["pub_ns"][:k] = 1
        tally_events(out, k, tally, hist)
        i += consumed
    md_end, book_end = scratch_ring(MD_EVENT, 64, consumer=True), scratch_ring(BOOK_EVENT, 64)
    md_end[1][: len(md)] = md
    scratch_publish(md_end, len(md))
    book_step(eng.book_state, md_end, book_end, np.zeros(8, MD_EVENT), np.zeros(64, BOOK_EVENT), 8, 2, 2, tally, hist)
    eng.timer_into(1_700_000_200_000, 1, out, 0)
    eng.invalidate_all_into(REASON_LAPPED, 1, out, 0)
    eng.take_resync_requests()


# ---------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------
class BookStage(Stage):
    """The book stage around a ``BookEngine`` (see the module docstring)."""

    def __init__(self, config, ctx, engine: BookEngine | None = None):
        self.ctx = ctx
        if engine is None:
            engine = BookEngine(book_config(config), out_capacity=64)
        self.engine = engine
        self.md = ctx.inputs["md"]
        self.n_sym = self.engine.config.n_symbols
        self.batch = ctx.process.batch
        # one event scratch for both paths: book_step's output and the writer's wrap-point copy (never both at once)
        scratch = max(SCRATCH_EVENTS, OUT_RESERVE * self.batch + 8 * self.n_sym)
        self.out = RingWriter(ctx.outputs["book"], ctx, scratch=scratch)
        self.block = self.out.block
        self.hist = ctx.latency.hop(ring_hop("md", "book")).h
        # a block md ring (the default) is read in one kernel call per cycle (book_step); under overwrite the
        # Python path below validates each poll and detects a lap
        self.fused = self.md.policy == POLICY_BLOCK
        self.md_end, self.book_end = ring_in(self.md), ring_out(ctx.outputs["book"])
        self.md_buf = np.zeros(self.batch, self.md.dtype)
        self.ev_buf = self.out.scratch
        self.tally = np.zeros(T_N, np.int64)
        self.n_iv = len(self.engine.intervals)
        self.exch_anchor_ms = 0  # newest exch_ms seen in md...
        self.exch_anchor_ns = 0  # ...and the CLOCK_MONOTONIC ns it was processed at
        self.next_timer = 0
        self.next_slow = 0
        self.laps = 0
        self.lost = 0
        self.md_records = 0
        self.resyncs_requested = 0
        self.resync_pending: set[int] = set()  # symbols whose request is still to be sent
        self.resync_sent_at = np.full(self.n_sym, time.monotonic())  # last request (or start), monotonic s
        if ctx.incarnation > 1:
            # a restarted book has empty books and the feed does not know it
            self.resync_pending.update(self.engine.take_resync_requests())
        else:
            self.engine.take_resync_requests()  # the feed snapshots every symbol at its own start

    @property
    def stopping(self) -> bool:
        return self.out.stopping

    def on_start(self) -> None:
        self.resync_sent_at[:] = time.monotonic()  # the retry clock starts with the flow, not with the warm-up
        self.ctx.log.info("book stage: %d symbols, bars %s ms, watermark %d ms, depth throttle %s ms, %s book ring",
                          self.n_sym, list(self.ctx.config.book.bar_intervals_ms),
                          self.ctx.config.book.bar_watermark_ms, self.ctx.config.book.depth_throttle_ms,
                          "block" if self.block else "overwrite")

    def _publish(self, dst, direct: bool, k: int) -> None:
        k = self.out.commit(dst, direct, k)
        if k:
            tally_events(dst, k, self.tally, self.hist)

    # -- the duty cycle -------------------------------------------------------------

    def do_work(self) -> int:
        """Poll one md batch, process and publish it. Returns the md records consumed."""
        if self.fused:
            consumed, k, newest = book_step(self.engine.book_state, self.md_end, self.book_end, self.md_buf,
                                            self.ev_buf, self.batch, self.n_sym, self.n_iv, self.tally, self.hist)
            if consumed == FULL:
                self.out.wait()  # the book ring is full: wait for the slowest consumer, never drop
                return 0
            if newest > self.exch_anchor_ms:
                self.exch_anchor_ms, self.exch_anchor_ns = newest, time.monotonic_ns()
            self.md_records += consumed
            return consumed
        if self.md.lag() == 0:  # the common idle case, without building a poll (a lapped ring shows a lag too)
            return 0
        p = self.md.poll(self.batch)
        recs = p.records
        n = len(recs)
        i = 0
        try:
            if p.lost:
                self._lapped(p.lost)
            if n:
                now = time.monotonic_ns()
                newest = int(recs["exch_ms"].max())
                if newest > self.exch_anchor_ms:
                    self.exch_anchor_ms, self.exch_anchor_ns = newest, now
                e = self.engine
                while i < n and not self.stopping:
                    # need: a status for all symbols is one record that writes one top per symbol
                    dst, direct = self.out.claim(OUT_RESERVE * (n - i) + 2 * self.n_iv, max(OUT_RESERVE, self.n_sym))
                    if dst is None:
                        break
                    consumed, k = e.process_into(recs[i:], n - i, dst, 0)
                    self._publish(dst, direct, k)
                    i += consumed
        finally:
            self.md.release(i)
        self.md_records += i
        return i

    def _lapped(self, lost: int) -> None:
        """The md ring overran us: every book missed records it cannot get back."""
        self.laps += 1
        self.lost += lost
        self.ctx.log.warning("md ring lapped: %d records lost; every book is INVALID until resynced", lost,
                             extra={"lost": lost})
        dst, direct = self.out.claim(self.n_sym, self.n_sym)
        if dst is None:
            return
        k = self.engine.invalidate_all_into(REASON_LAPPED, time.monotonic_ns(), dst, 0)
        self._publish(dst, direct, k)

    def timer(self, now_ns: int) -> None:
        """Close bars that ended (by estimated exchange time) more than the watermark ago."""
        if not self.exch_anchor_ms:
            return
        est = self.exch_anchor_ms + (now_ns - self.exch_anchor_ns) // 1_000_000
        done = False
        while not done and not self.stopping:
            dst, direct = self.out.claim(2 * self.n_sym * self.n_iv + 2, 2)
            if dst is None:
                return
            done, k = self.engine.timer_into(est, now_ns, dst, 0)
            self._publish(dst, direct, k)

    def resyncs(self) -> None:
        """Turn the engine's resync flags into events for the feed (via the supervisor); retry stale ones."""
        e = self.engine
        if e.resync.any():
            self.resync_pending.update(e.take_resync_requests())
        if not self.resync_pending:
            return
        now = time.monotonic()
        for sym in sorted(self.resync_pending):
            if not self.ctx.event("resync", symbol=sym, reason=e.reason_name(sym)):
                return  # the event queue is full: try again next pass
            self.resync_pending.discard(sym)
            self.resync_sent_at[sym] = now
            self.resyncs_requested += 1

    def _retry_resyncs(self) -> None:
        now = time.monotonic()
        late = np.flatnonzero(self.engine.invalid_mask() & (now - self.resync_sent_at > RESYNC_RETRY_S)).tolist()
        if late:
            self.ctx.log.warning("%d books still INVALID %.0f s after their resync request: asking again", len(late),
                                 RESYNC_RETRY_S, extra={"symbols": late})
            self.resync_pending.update(late)
            self.resync_sent_at[late] = now

    def counters(self) -> dict:
        e = self.engine
        s = {_RENAMED.get(k, k): v for k, v in e.totals().items() if k not in _NOT_REPORTED}
        t = self.tally
        s.update(books=self.n_sym, books_valid=e.books_valid(),
                 tops=int(t[BK_TOP]), tops_invalid=int(t[T_TOPS_INVALID]), depth_snapshots=int(t[BK_DEPTH]),
                 trades=int(t[BK_TRADE]), bars_closed=int(t[BK_BAR]), resyncs_requested=self.resyncs_requested,
                 lapped=self.laps, md_lost=self.lost, md_records=self.md_records, book_full=self.out.full_waits)
        return s

    def housekeeping(self, now_ns: int) -> None:
        """Timer, resync requests and retries: cheap when nothing is due."""
        if now_ns >= self.next_timer:
            self.next_timer = now_ns + TIMER_PERIOD_NS
            self.timer(now_ns)
        if self.resync_pending or self.engine.resync.any():
            self.resyncs()
        if now_ns >= self.next_slow:
            self.next_slow = now_ns + SLOW_PERIOD_NS
            self._retry_resyncs()


def make_stage(config, ctx) -> BookStage:
    return BookStage(config, ctx)
