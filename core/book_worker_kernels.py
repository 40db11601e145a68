"""The book worker's hot path: MD_EVENT batches in, BOOK_EVENT records out.

``process_md_batch`` takes a batch of ``md`` ring records for all symbols and
updates, per symbol, the L2 book (``core.book``), the Binance sync state
machine (``core.book_sync``) and the time bars (``core.bars``), writing
BOOK_EVENT records into ``out``:

* ``BK_TOP`` whenever the best bid/ask (price or qty) or the book state
  changes. ``state`` is BOOK_VALID only while the symbol is synced, so a
  consumer never acts on a book that is waiting for a snapshot, has a gap, is
  crossed or was lapped. On an invalid top, ``flags`` bits 8..15 hold the
  REASON_* code (``core.book_sync``).
* ``BK_DEPTH`` (top DEPTH_LEVELS per side) after an applied diff while valid,
  at most once per ``depth_throttle_ns`` of receive time per symbol (0 = every
  applied diff, negative = never), and whenever the book becomes valid.
* ``BK_TRADE`` for every trade / aggTrade, in md order.
* ``BK_BAR`` for every closed bar (``core.bars``), before the trade that closed it.

For BK_TRADE and BK_BAR, ``state`` reports the symbol's book state at that
moment; their payload does not depend on the book.

Trace: every output copies ``recv_ns`` and ``exch_ms`` of the md record that
caused it and sets ``in_pub_ns`` to that record's ``pub_ns``; ``pub_ns`` is
left 0 for the publisher to stamp. Bars closed by the timer carry the timer's
``now_ns`` as ``recv_ns``.

A symbol whose book was invalidated gets ``st.resync[sym] = 1``; the Python
wrapper turns that into a resync command to the feed and clears it.

Convention: every kernel takes ``(state, inputs, outputs)``: ``state`` is
one ``BookState`` (a NamedTuple of preallocated arrays; per-symbol rows are
record dtypes with named fields: ``st.sync[sym].state``, ``st.bars[sym,
iv].high``), then the md records and the output array with its cursor.
``process_md_batch``, ``on_timer`` and ``mark_all_invalid`` compile with
``_nrt=False``: they allocate nothing, and without it numba's reference
counting (an atomic add per array per call or inlined argument, 12 arrays in
the bundle) took more than a third of the per-update time. The ``_nrt``
flag is inherited by everything they call, so no kernel below them may
allocate (``core.book`` sorts a disordered snapshot in place for that reason).

Hot path: the middle levels of a diff being applied (no FLAG_BEGIN/END, same
symbol and ids) go straight to ``core.book.book_set_level_row`` on views
taken once per diff (``_apply_run``); everything else takes the general
per-record path.

Output space: the kernel stops before a record it might not have room for
(it needs 2 free slots per record; a trade that closes many bars resumes
where it stopped) and returns how many md records it consumed, so the caller
publishes ``out[:n_out]`` and calls again with the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import numba as nb
import numpy as np

from core.bars import (
    alloc_bars,
    bar_add_trade,
    bar_advance,
    bar_close_due,
    bar_open_first,
    bar_should_publish,
    bar_write,
)
from core.book import (
    SET_OVERFLOW,
    alloc_book,
    book_clear,
    book_depth,
    book_imbalance,
    book_microprice,
    book_mid,
    book_set_level_row,
    book_snapshot_append,
    book_snapshot_finish,
    book_top,
)
from core.book_sync import (
    ACT_APPLY,
    ACT_BREAK,
    ACT_BUFFER,
    ACT_DROP,
    ACT_NONE,
    COUNTER_NAMES,
    REASON_BUFFER_OVERFLOW,
    REASON_LAPPED,
    REASON_MALFORMED,
    REASON_NAMES,
    REASON_RECONNECT,
    SNAP_IGNORE,
    SNAP_NONE,
    SNAP_STAGE,
    ST_AWAIT_BRIDGE,
    ST_NO_SNAPSHOT,
    ST_SYNCED,
    alloc_sync,
    apply_level,
    sync_decide,
    sync_diff_applied,
    sync_on_break,
    sync_replay_buffer,
    sync_set_invalid,
)
from core.errors import ConfigError
from core.records import (
    BK_BAR,
    BK_DEPTH,
    BK_TOP,
    BK_TRADE,
    BOOK_EVENT,
    concat_records,
    BOOK_INVALID,
    BOOK_VALID,
    DEPTH_LEVELS,
    FLAG_BEGIN,
    FLAG_BUYER_MAKER,
    FLAG_END,
    MD_AGG_TRADE,
    MD_DEPTH_ASK,
    MD_DEPTH_BID,
    MD_DEPTH_NONE,
    MD_SNAP_ASK,
    MD_SNAP_BEGIN,
    MD_SNAP_BID,
    MD_SNAP_END,
    MD_STATUS,
    MD_TICKER_ASK,
    MD_TICKER_BID,
    MD_TRADE,
    STATUS_RECONNECTED,
    STATUS_SNAPSHOT_FAILED,
)

log = logging.getLogger(__name__)

OUT_RESERVE = 2  # output slots one md record may need (top + depth)

# Engine-wide settings and counters: one record each (``st.params[0].watermark_ms``).
BOOK_PARAMS = np.dtype([
    ("depth_throttle_ns", np.int64),  # min recv-time gap between BK_DEPTH per symbol; 0 every diff, <0 never
    ("watermark_ms", np.int64),  # the timer closes a bar this long after its end (exchange clock)
    ("emit_empty", np.int64),  # 1: publish flat bars for intervals without trades
    ("max_empty_run", np.int64),  # a time jump over more empty intervals emits none of them (core.bars)
], align=True)
BOOK_GSTAT = np.dtype([
    ("bad_symbol", np.int64),  # records for a symbol id outside the table
    ("bad_kind", np.int64),  # records of a kind the book does not know
    ("out_full", np.int64),  # calls that stopped early for lack of output space
], align=True)
if BOOK_PARAMS.itemsize != 32 or BOOK_GSTAT.itemsize != 24:
    raise ImportError("BOOK_PARAMS / BOOK_GSTAT layout drifted")

DIAG_COLS = 6  # diag rows: (symbol, u, bid_px, bid_qty, ask_px, ask_qty) after each applied diff


class BookState(NamedTuple):
    """Everything the book kernels keep, as preallocated arrays: the one state argument of every kernel.

    A NamedTuple of arrays (and record arrays) is a plain numba tuple type, so
    kernels taking it load from the disk cache like any other (a jitclass or
    structref would not: numba issues 6522, 9659).
    """

    keys: np.ndarray  # int64[n_sym, 2, levels]: level sort keys (core.book)
    qtys: np.ndarray  # int64[n_sym, 2, levels]: level quantities, 0 = tombstone
    count: np.ndarray  # int64[n_sym, 4]: slots and tombstones per side (core.book)
    sync: np.ndarray  # SYNC_ROW[n_sym] (core.book_sync)
    resync: np.ndarray  # uint8[n_sym]: 1 = the symbol needs a snapshot (the wrapper turns it into a request)
    buf: np.ndarray  # MD_EVENT[n_sym, buffer_capacity]: diffs buffered while waiting for a snapshot
    bars: np.ndarray  # BAR_ROW[n_sym, n_intervals] (core.bars)
    intervals: np.ndarray  # int64[n_intervals]: bar lengths, ms
    params: np.ndarray  # BOOK_PARAMS[1]
    gstat: np.ndarray  # BOOK_GSTAT[1]
    diag: np.ndarray  # int64[rows, DIAG_COLS]: applied-diff log for replay checks (0 rows: off)
    diag_n: np.ndarray  # int64[1]: rows of diag written


def alloc_state(config: "BookConfig", diag_rows: int = 0) -> BookState:
    n = config.n_symbols
    keys, qtys, count = alloc_book(n, config.levels_capacity)
    sync, buf, resync = alloc_sync(n, config.buffer_capacity)
    intervals = np.array(config.bar_intervals_ms, dtype=np.int64)
    params = np.zeros(1, dtype=BOOK_PARAMS)
    dt = config.depth_throttle_ms
    params[0]["depth_throttle_ns"] = -1 if dt < 0 else int(dt * 1_000_000)
    params[0]["watermark_ms"] = config.bar_watermark_ms
    params[0]["emit_empty"] = 1 if config.emit_empty_bars else 0
    params[0]["max_empty_run"] = config.bar_max_empty_run
    return BookState(keys=keys, qtys=qtys, count=count, sync=sync, resync=resync, buf=buf,
                     bars=alloc_bars(n, len(intervals)), intervals=intervals, params=params,
                     gstat=np.zeros(1, dtype=BOOK_GSTAT), diag=np.zeros((diag_rows, DIAG_COLS), np.int64),
                     diag_n=np.zeros(1, np.int64))


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True)
def _header(ev, s, sym, kind, recv_ns, in_pub_ns, exch_ms):
    ev.recv_ns = recv_ns
    ev.pub_ns = 0
    ev.in_pub_ns = in_pub_ns
    ev.exch_ms = exch_ms
    ev.last_update_id = s.book_id
    ev.symbol = sym
    ev.kind = kind
    ev.state = BOOK_VALID if s.state == ST_SYNCED else BOOK_INVALID
    ev.flags = 0
    ev.seq = s.seq
    s.seq += 1
    if kind != BK_DEPTH:
        # The payload is a union over the whole 320 bytes: clear what this kind
        # does not write so no stale bytes from an earlier event leak out.
        for j in range(DEPTH_LEVELS):
            ev.d_bid_px[j] = 0
            ev.d_bid_qty[j] = 0
            ev.d_ask_px[j] = 0
            ev.d_ask_qty[j] = 0


@nb.njit(cache=True, nogil=True)
def _emit_top(st, sym, out, k, recv_ns, in_pub_ns, exch_ms):
    """Publish BK_TOP if the top or the state changed since the last one."""
    s = st.sync[sym]
    bp, bq, ap, aq = book_top(st.keys, st.qtys, st.count, sym)
    state = BOOK_VALID if s.state == ST_SYNCED else BOOK_INVALID
    if state == s.top_state and bp == s.top_bp and bq == s.top_bq and ap == s.top_ap and aq == s.top_aq:
        return k
    ev = out[k]
    _header(ev, s, sym, BK_TOP, recv_ns, in_pub_ns, exch_ms)
    if state == BOOK_INVALID:
        ev.flags = np.uint32(s.reason << 8)
    ev.top_bid_px = bp
    ev.top_bid_qty = bq
    ev.top_ask_px = ap
    ev.top_ask_qty = aq
    s.top_state = state
    s.top_bp = bp
    s.top_bq = bq
    s.top_ap = ap
    s.top_aq = aq
    return k + 1


@nb.njit(cache=True, nogil=True)
def _emit_depth(st, sym, out, k, recv_ns, in_pub_ns, exch_ms, force):
    s = st.sync[sym]
    throttle_ns = st.params[0].depth_throttle_ns
    if s.state != ST_SYNCED or throttle_ns < 0:
        return k
    if not force and recv_ns - s.last_depth_ns < throttle_ns:
        return k
    ev = out[k]
    _header(ev, s, sym, BK_DEPTH, recv_ns, in_pub_ns, exch_ms)
    book_depth(st.keys, st.qtys, st.count, sym, 0, ev.d_bid_px, ev.d_bid_qty)
    book_depth(st.keys, st.qtys, st.count, sym, 1, ev.d_ask_px, ev.d_ask_qty)
    s.last_depth_ns = recv_ns
    return k + 1


@nb.njit(cache=True, nogil=True)
def _abort_diff(st, sym):
    """A diff lost its framing (new FLAG_BEGIN before FLAG_END, or ids changed mid-diff)."""
    s = st.sync[sym]
    s.malformed += 1
    act = s.cur_act
    if act == ACT_APPLY:
        # part of a diff is in the book: it cannot be trusted any more
        sync_set_invalid(st, sym, REASON_MALFORMED)
        s.buf_n = 0
    elif act == ACT_BUFFER:
        s.buf_n = s.cur_start
    s.cur_act = ACT_NONE


@nb.njit(cache=True, nogil=True)
def _close_bars_until(st, sym, t_ms, out, k, recv_ns, in_pub_ns, exch_ms, wm):
    """Close every open bar of ``sym`` that ends at or before ``t_ms - wm``.

    Returns the new output cursor, or -(cursor) - 1 when the output filled
    first (state is consistent: the caller may call again to continue).
    """
    emit_empty = st.params[0].emit_empty != 0
    max_empty = st.params[0].max_empty_run
    intervals = st.intervals
    cap = out.shape[0]
    for iv in range(intervals.shape[0]):
        row = st.bars[sym, iv]
        ival = intervals[iv]
        while bar_close_due(row, ival + wm, t_ms):
            if bar_should_publish(row, emit_empty):
                if cap - k < 2:
                    return -k - 1
                ev = out[k]
                _header(ev, st.sync[sym], sym, BK_BAR, recv_ns, in_pub_ns, exch_ms)
                bar_write(row, ival, ev)
                k += 1
            st.sync[sym].bar_gaps_capped += bar_advance(row, ival, t_ms - wm, emit_empty, max_empty)
    return k


@nb.njit(cache=True, nogil=True)
def _on_trade(st, rec, sym, out, k):
    t_ms = rec.exch_ms
    k2 = _close_bars_until(st, sym, t_ms, out, k, rec.recv_ns, rec.pub_ns, t_ms, 0)
    if k2 < 0:
        return k2
    k = k2
    s = st.sync[sym]
    buyer_maker = (rec.flags & FLAG_BUYER_MAKER) != 0
    first_id = rec.first_id
    last_id = rec.last_id
    if rec.kind == MD_TRADE:
        last_id = first_id
    intervals = st.intervals
    for iv in range(intervals.shape[0]):
        row = st.bars[sym, iv]
        if row.open_ms < 0:
            bar_open_first(row, intervals[iv], t_ms)
        if t_ms < row.open_ms:
            s.late_trades += 1
            continue
        bar_add_trade(row, rec.price, rec.qty, first_id, last_id, buyer_maker)
    s.trades += 1
    ev = out[k]
    _header(ev, s, sym, BK_TRADE, rec.recv_ns, rec.pub_ns, t_ms)
    if buyer_maker:
        ev.flags = FLAG_BUYER_MAKER
    ev.tr_px = rec.price
    ev.tr_qty = rec.qty
    ev.tr_first_id = first_id
    ev.tr_last_id = last_id
    ev.tr_time_ms = t_ms
    return k + 1


@nb.njit(cache=True, nogil=True)
def _on_depth(st, rec, sym, out, k):
    """One diff record on the general path: framing, sync decision, buffer; the end of an applied diff."""
    s = st.sync[sym]
    first_id = rec.first_id
    last_id = rec.last_id
    flags = rec.flags
    if flags & FLAG_BEGIN:
        if s.cur_act != ACT_NONE:
            _abort_diff(st, sym)
            k = _emit_top(st, sym, out, k, rec.recv_ns, rec.pub_ns, rec.exch_ms)
        s.cur_u = first_id
        s.cur_uu = last_id
        if s.state == ST_NO_SNAPSHOT:
            act = ACT_BUFFER
        else:
            act = sync_decide(s, first_id, last_id)
            if act == ACT_BREAK:
                sync_on_break(st, sym)
                s.buf_n = 0  # the buffer restarts with this (breaking) diff
                s.cur_act = ACT_NONE
                k = _emit_top(st, sym, out, k, rec.recv_ns, rec.pub_ns, rec.exch_ms)
                act = ACT_BUFFER  # the breaking diff is the first one the next snapshot needs
            elif act == ACT_DROP:
                s.stale += 1
        s.cur_act = act
        s.cur_start = s.buf_n
    else:
        act = s.cur_act
        if act == ACT_NONE:
            s.malformed += 1  # a fragment of a diff we never saw begin (e.g. after a lap)
            return k
        if first_id != s.cur_u or last_id != s.cur_uu:
            _abort_diff(st, sym)
            return _emit_top(st, sym, out, k, rec.recv_ns, rec.pub_ns, rec.exch_ms)

    if act == ACT_APPLY:
        apply_level(st, sym, rec.kind, rec.price, rec.qty)
    elif act == ACT_BUFFER:
        n = s.buf_n
        if n < st.buf.shape[1]:
            st.buf[sym, n] = rec
            s.buf_n = n + 1
        else:
            # Out of buffer: forget it all and drop the rest of this diff. The
            # next snapshot will then be checked against the next diff, and
            # fetched again if it cannot bridge.
            s.buffer_overflows += 1
            s.buf_n = 0
            s.reason = REASON_BUFFER_OVERFLOW
            s.cur_act = ACT_DROP
            act = ACT_DROP

    if flags & FLAG_END:
        s.cur_act = ACT_NONE
        if act == ACT_APPLY:
            bridging = s.state == ST_AWAIT_BRIDGE
            if sync_diff_applied(st, sym, last_id):
                k = _emit_top(st, sym, out, k, rec.recv_ns, rec.pub_ns, rec.exch_ms)
                k = _emit_depth(st, sym, out, k, rec.recv_ns, rec.pub_ns, rec.exch_ms, bridging)
            else:  # crossed
                s.buf_n = 0
                k = _emit_top(st, sym, out, k, rec.recv_ns, rec.pub_ns, rec.exch_ms)
        elif act == ACT_BUFFER:
            s.buffered += 1
    return k


@nb.njit(cache=True, nogil=True, inline="always")
def _apply_run(st, md, i, n_md, sym):
    """The hot path: apply the middle levels of a diff being applied, from ``md[i]`` on.

    Stops before the first record that is not a plain level of the same diff
    (its FLAG_END record, another symbol, anything else), which then takes the
    general path. Returns the index of that record.
    """
    s = st.sync[sym]
    u0 = s.cur_u
    u1 = s.cur_uu
    cnt = st.count[sym]
    kb = st.keys[sym, 0]
    qb = st.qtys[sym, 0]
    ka = st.keys[sym, 1]
    qa = st.qtys[sym, 1]
    overflows = 0
    while i < n_md:
        r = md[i]
        if r.flags != 0 or r.symbol != sym or r.first_id != u0 or r.last_id != u1:
            break
        kind = r.kind
        if kind == MD_DEPTH_BID:
            res = book_set_level_row(kb, qb, cnt, 0, r.price, r.qty)
        elif kind == MD_DEPTH_ASK:
            res = book_set_level_row(ka, qa, cnt, 1, r.price, r.qty)
        else:
            break
        overflows += res == SET_OVERFLOW
        i += 1
    s.level_overflows += overflows
    return i


@nb.njit(cache=True, nogil=True)
def _on_snapshot(st, rec, sym, out, k):
    s = st.sync[sym]
    kind = rec.kind
    if kind == MD_SNAP_BEGIN:
        state = s.state
        if state == ST_SYNCED or (state == ST_AWAIT_BRIDGE and rec.last_id <= s.book_id):
            s.snap_act = SNAP_IGNORE
            s.snapshots_ignored += 1
            return k
        # A newer snapshot while awaiting the bridge replaces the old one; no
        # diff with u > old L was seen then, so nothing buffered is lost.
        s.state = ST_NO_SNAPSHOT
        s.snap_act = SNAP_STAGE
        s.snap_id = rec.last_id
        book_clear(st.count, sym)
        return k
    act = s.snap_act
    if act == SNAP_NONE or (act == SNAP_STAGE and rec.last_id != s.snap_id):
        s.malformed += 1
        return k
    if act == SNAP_IGNORE:
        if kind == MD_SNAP_END:
            s.snap_act = SNAP_NONE
        return k
    if kind == MD_SNAP_BID or kind == MD_SNAP_ASK:
        side = 0 if kind == MD_SNAP_BID else 1
        if book_snapshot_append(st.keys, st.qtys, st.count, sym, side, rec.price, rec.qty) == SET_OVERFLOW:
            s.level_overflows += 1
        return k
    # MD_SNAP_END: the book is the snapshot; replay what was buffered
    s.snap_act = SNAP_NONE
    book_snapshot_finish(st.keys, st.qtys, st.count, sym)
    s.book_id = rec.last_id
    s.state = ST_AWAIT_BRIDGE
    s.snapshots_applied += 1
    # A diff being buffered right now (snapshot records interleaved inside a
    # diff) is completed by the live path, not replayed half-read.
    if s.cur_act == ACT_BUFFER:
        s.cur_act = ACT_NONE
        s.buf_n = s.cur_start
        s.malformed += 1
    sync_replay_buffer(st, sym)
    k = _emit_top(st, sym, out, k, rec.recv_ns, rec.pub_ns, rec.exch_ms)
    k = _emit_depth(st, sym, out, k, rec.recv_ns, rec.pub_ns, rec.exch_ms, True)
    return k


@nb.njit(cache=True, nogil=True)
def _invalidate_and_publish(st, sym, reason, out, k, recv_ns, in_pub_ns, exch_ms):
    """Invalidate, forget everything buffered or in progress, publish the INVALID top."""
    s = st.sync[sym]
    sync_set_invalid(st, sym, reason)
    s.buf_n = 0
    s.cur_act = ACT_NONE
    s.snap_act = SNAP_NONE
    return _emit_top(st, sym, out, k, recv_ns, in_pub_ns, exch_ms)


@nb.njit(cache=True, nogil=True)
def _on_status(st, rec, sym, out, k):
    """MD_STATUS for one symbol, or for all when ``sym`` is outside the table. -1: no room for the tops."""
    n_sym = st.sync.shape[0]
    lo = sym
    hi = sym + 1
    if sym >= n_sym:  # a status for no particular symbol applies to all
        lo = 0
        hi = n_sym
    if hi - lo > out.shape[0] - k:
        return -1
    code = rec.aux
    for s in range(lo, hi):
        if code == STATUS_RECONNECTED:
            st.sync[s].reconnects += 1
            k = _invalidate_and_publish(st, s, REASON_RECONNECT, out, k, rec.recv_ns, rec.pub_ns, rec.exch_ms)
        elif code == STATUS_SNAPSHOT_FAILED:
            st.sync[s].snapshot_failures += 1  # the feed retries by itself
    return k


@nb.njit(cache=True, nogil=True, _nrt=False)
def process_md_batch(st, md, n_md, out, out_start):
    """Process ``md[:n_md]`` into state ``st``; write BOOK_EVENTs to ``out[out_start:]``.

    Returns ``(consumed, out_end)``: md records fully processed and the output
    cursor. ``consumed < n_md`` only when ``out`` is full; call again with the
    rest after publishing. With ``st.diag`` rows, ``(symbol, u, bid_px,
    bid_qty, ask_px, ask_qty)`` is logged after every applied diff.
    """
    n_sym = st.sync.shape[0]
    cap = out.shape[0]
    gstat = st.gstat[0]
    k = out_start
    i = 0
    while i < n_md:
        if cap - k < OUT_RESERVE:
            gstat.out_full += 1
            return i, k
        rec = md[i]
        sym = np.int64(rec.symbol)
        kind = rec.kind
        if MD_DEPTH_BID <= kind <= MD_DEPTH_NONE and sym < n_sym:
            k = _on_depth(st, rec, sym, out, k)
            i += 1
            if st.sync[sym].cur_act == ACT_APPLY:
                i = _apply_run(st, md, i, n_md, sym)
            continue
        if kind == MD_STATUS:
            k2 = _on_status(st, rec, sym, out, k)
            if k2 < 0:
                gstat.out_full += 1
                return i, k
            k = k2
        elif sym >= n_sym:
            gstat.bad_symbol += 1
        elif kind == MD_TRADE or kind == MD_AGG_TRADE:
            k2 = _on_trade(st, rec, sym, out, k)
            if k2 < 0:
                gstat.out_full += 1
                return i, -k2 - 1
            k = k2
        elif MD_SNAP_BEGIN <= kind <= MD_SNAP_END:
            k = _on_snapshot(st, rec, sym, out, k)
        elif kind == MD_TICKER_BID or kind == MD_TICKER_ASK:
            st.sync[sym].tickers += 1
        else:
            gstat.bad_kind += 1
        i += 1
    return n_md, k


@nb.njit(cache=True, nogil=True, _nrt=False)
def on_timer(st, now_exch_ms, now_ns, out, out_start):
    """Close bars whose interval ended at least ``watermark`` ms before ``now_exch_ms``.

    ``now_exch_ms`` is the caller's estimate of exchange time (ms epoch).
    Returns ``(done, out_end)``; ``done`` is False when ``out`` filled first
    (call again after publishing).
    """
    k = out_start
    wm = st.params[0].watermark_ms
    for sym in range(st.sync.shape[0]):
        k2 = _close_bars_until(st, sym, now_exch_ms, out, k, now_ns, 0, now_exch_ms, wm)
        if k2 < 0:
            st.gstat[0].out_full += 1
            return False, -k2 - 1
        k = k2
    return True, k


@nb.njit(cache=True, nogil=True, _nrt=False)
def mark_all_invalid(st, reason, recv_ns, out, out_start):
    """Invalidate every symbol (lapped md ring, or any reason to distrust all books).

    Buffered diffs are dropped too (records after a lap are missing). Needs
    ``n_symbols`` free output slots; returns the output cursor.
    """
    k = out_start
    for sym in range(st.sync.shape[0]):
        if reason == REASON_LAPPED:
            st.sync[sym].lapped += 1
        k = _invalidate_and_publish(st, sym, reason, out, k, recv_ns, 0, 0)
    return k


# ---------------------------------------------------------------------------
# Python wrapper
# ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class BookConfig:
    """Sizes and behaviour of the book worker's kernels."""

    n_symbols: int  # instruments in the configured table (symbol ids 0..n-1)
    levels_capacity: int = 8192  # price levels kept per side (a 5000-level snapshot must fit)
    buffer_capacity: int = 65536  # md records buffered per symbol while waiting for a snapshot
    bar_intervals_ms: tuple[int, ...] = (1_000, 60_000)  # time bar lengths (1s and 1m)
    bar_watermark_ms: int = 500  # a bar closes by timer this long after its end (exchange clock)
    emit_empty_bars: bool = True  # publish flat zero-volume bars for intervals without trades
    bar_max_empty_run: int = 1440  # a time jump over more empty intervals emits none (a day of 1m bars; core.bars)
    depth_throttle_ms: float = 100.0  # min receive-time gap between BK_DEPTH per symbol; 0 every diff, <0 never

    def __post_init__(self):
        def bad(key, problem):
            raise ConfigError(f"book.{key}", problem)

        if self.n_symbols < 1 or self.n_symbols > 0xFFFE:
            bad("n_symbols", f"must be in 1..65534, got {self.n_symbols}")
        if self.levels_capacity < 5000:
            bad("levels_capacity", f"must be >= 5000 (a full REST snapshot), got {self.levels_capacity}")
        if self.buffer_capacity < 1024:
            bad("buffer_capacity", f"must be >= 1024, got {self.buffer_capacity}")
        if not self.bar_intervals_ms:
            bad("bar_intervals_ms", "must list at least one interval")
        for iv in self.bar_intervals_ms:
            if iv < 1000 or iv % 1000:
                bad("bar_intervals_ms", f"intervals must be whole seconds >= 1000 ms, got {iv}")
        if self.bar_watermark_ms < 0:
            bad("bar_watermark_ms", f"must be >= 0, got {self.bar_watermark_ms}")
        if self.bar_max_empty_run < 0:
            bad("bar_max_empty_run", f"must be >= 0, got {self.bar_max_empty_run}")


class BookEngine:
    """Owns the kernel state (one ``BookState``) for all symbols and drives the kernels.

    Not thread-safe; one per book worker. ``process`` and ``on_timer`` return
    the BOOK_EVENT slice written to ``out`` (pub_ns still 0); the ``*_into``
    entry points write into the caller's array (ring slots, a scratch array).
    """

    def __init__(self, config: BookConfig, out_capacity: int = 4096):
        self.config = config
        n = config.n_symbols
        if out_capacity < max(OUT_RESERVE, n):  # mark_all_invalid writes one event per symbol
            raise ConfigError("book.out_capacity", f"must be >= {max(OUT_RESERVE, n)}, got {out_capacity}")
        self.book_state = alloc_state(config)  # the kernels' one state argument
        self.out = np.zeros(out_capacity, dtype=BOOK_EVENT)

    # the state's arrays, by name (tests, tools, the stage's sizing)
    @property
    def sync(self) -> np.ndarray:
        return self.book_state.sync

    @property
    def resync(self) -> np.ndarray:
        return self.book_state.resync

    @property
    def intervals(self) -> np.ndarray:
        return self.book_state.intervals

    @property
    def bars(self) -> np.ndarray:
        return self.book_state.bars

    @property
    def count(self) -> np.ndarray:
        return self.book_state.count

    def process(self, md: np.ndarray, *, diag: np.ndarray | None = None,
                diag_n: np.ndarray | None = None) -> tuple[int, np.ndarray]:
        """Process as much of ``md`` as fits; returns (consumed, events written).

        ``diag`` (int64[rows, 6]) with its cursor ``diag_n`` (int64[1]) logs
        ``(symbol, u, bid_px, bid_qty, ask_px, ask_qty)`` after every applied diff.
        """
        st = self.book_state
        if diag is not None:
            st = st._replace(diag=diag, diag_n=diag_n)
        consumed, k = process_md_batch(st, md, len(md), self.out, 0)
        return consumed, self.out[:k]

    def process_all(self, md: np.ndarray, **kw) -> np.ndarray:
        """Process all of ``md``, returning a copy of every event (tests, replay)."""
        parts = []
        i = 0
        while i < len(md):
            c, ev = self.process(md[i:], **kw)
            parts.append(ev.copy())
            i += c
        return concat_records(parts, BOOK_EVENT)

    def on_timer(self, now_exch_ms: int, now_ns: int = 0) -> np.ndarray:
        """Close due bars; returns a copy of every event written."""
        parts = []
        while True:
            done, k = on_timer(self.book_state, np.int64(now_exch_ms), np.int64(now_ns), self.out, 0)
            parts.append(self.out[:k].copy())
            if done:
                return concat_records(parts, BOOK_EVENT)

    def mark_all_invalid(self, reason: int, recv_ns: int = 0) -> np.ndarray:
        """Invalidate every book (lapped ring, reconnect); returns the BK_TOP events."""
        k = mark_all_invalid(self.book_state, np.int64(reason), np.int64(recv_ns), self.out, 0)
        names = REASON_NAMES.get(reason, str(reason))
        log.warning("all books invalidated (%s): resync requested for %d symbols", names, self.config.n_symbols)
        return self.out[:k].copy()

    # -- the stage's entry points: write into a caller's array (ring slots or scratch) --------------------------

    def process_into(self, md: np.ndarray, n: int, dst: np.ndarray, start: int) -> tuple[int, int]:
        """Process up to ``n`` records of ``md`` into ``dst[start:]``: (records consumed, events written)."""
        consumed, k = process_md_batch(self.book_state, md, n, dst, start)
        return int(consumed), int(k)

    def timer_into(self, now_exch_ms: int, now_ns: int, dst: np.ndarray, start: int) -> tuple[bool, int]:
        """Close due bars into ``dst[start:]``: (all due bars closed, events written)."""
        done, k = on_timer(self.book_state, np.int64(now_exch_ms), np.int64(now_ns), dst, start)
        return bool(done), int(k)

    def invalidate_all_into(self, reason: int, now_ns: int, dst: np.ndarray, start: int) -> int:
        """Invalidate every book, one BK_TOP per symbol into ``dst[start:]``; returns events written."""
        return int(mark_all_invalid(self.book_state, np.int64(reason), np.int64(now_ns), dst, start))

    def reason_name(self, sym: int) -> str:
        return REASON_NAMES.get(int(self.book_state.sync[sym]["reason"]), "unknown")

    def invalid_mask(self) -> np.ndarray:
        return self.book_state.sync["state"] != ST_SYNCED

    def books_valid(self) -> int:
        return int(np.count_nonzero(self.book_state.sync["state"] == ST_SYNCED))

    def totals(self) -> dict[str, int]:
        """Per-symbol counters summed over symbols, plus the global ones."""
        sync = self.book_state.sync
        t = {name: int(sync[name].sum()) for name in COUNTER_NAMES}
        t["bad_symbol"] = int(self.book_state.gstat[0]["bad_symbol"])
        t["bad_kind"] = int(self.book_state.gstat[0]["bad_kind"])
        return t

    def take_resync_requests(self) -> list[int]:
        """Symbols that need a fresh snapshot; clears the flags."""
        resync = self.book_state.resync
        syms = np.flatnonzero(resync).tolist()
        resync[:] = 0
        return syms

    def is_valid(self, sym: int) -> bool:
        return int(self.book_state.sync[sym]["state"]) == ST_SYNCED

    def state(self, sym: int) -> int:
        """The symbol's ST_* sync state."""
        return int(self.book_state.sync[sym]["state"])

    def book_id(self, sym: int) -> int:
        return int(self.book_state.sync[sym]["book_id"])

    def top(self, sym: int) -> tuple[int, int, int, int]:
        """(bid_px, bid_qty, ask_px, ask_qty) fixed point; 0 for an empty side."""
        st = self.book_state
        return tuple(int(v) for v in book_top(st.keys, st.qtys, st.count, sym))

    def depth(self, sym: int, levels: int = DEPTH_LEVELS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        st = self.book_state
        bp = np.zeros(levels, np.int64)
        bq = np.zeros(levels, np.int64)
        ap = np.zeros(levels, np.int64)
        aq = np.zeros(levels, np.int64)
        book_depth(st.keys, st.qtys, st.count, sym, 0, bp, bq)
        book_depth(st.keys, st.qtys, st.count, sym, 1, ap, aq)
        return bp, bq, ap, aq

    def mid(self, sym: int) -> float:
        st = self.book_state
        return float(book_mid(st.keys, st.qtys, st.count, sym))

    def microprice(self, sym: int) -> float:
        st = self.book_state
        return float(book_microprice(st.keys, st.qtys, st.count, sym))

    def imbalance(self, sym: int, levels: int = 1) -> float:
        st = self.book_state
        return float(book_imbalance(st.keys, st.qtys, st.count, sym, levels))

    def counters(self, sym: int) -> dict[str, int]:
        row = self.book_state.sync[sym]
        return {name: int(row[name]) for name in COUNTER_NAMES}

    def global_counters(self) -> dict[str, int]:
        g = self.book_state.gstat[0]
        return {"bad_symbol": int(g["bad_symbol"]), "bad_kind": int(g["bad_kind"]), "out_full": int(g["out_full"])}


__all__ = [
    "BookConfig", "BookEngine", "BookState", "alloc_state", "BOOK_PARAMS", "BOOK_GSTAT", "DIAG_COLS", "OUT_RESERVE",
    "md_diff", "md_snapshot", "md_trade", "md_status", "process_md_batch", "on_timer", "mark_all_invalid",
    "REASON_LAPPED", "REASON_RECONNECT",
]


# ---------------------------------------------------------------------------
# MD_EVENT builders (tests, benchmarks, tools): the exact framing the feed uses
# ---------------------------------------------------------------------------
def md_diff(sym: int, first_id: int, last_id: int, bids=(), asks=(), *, recv_ns: int = 0,
            exch_ms: int = 0) -> np.ndarray:
    """One depth diff as MD_EVENT records: levels (px, qty) fixed point; none -> MD_DEPTH_NONE."""
    from core.records import MD_EVENT

    n = len(bids) + len(asks)
    rec = np.zeros(max(n, 1), dtype=MD_EVENT)
    rec["symbol"] = sym
    rec["first_id"] = first_id
    rec["last_id"] = last_id
    rec["recv_ns"] = recv_ns
    rec["exch_ms"] = exch_ms
    if n == 0:
        rec["kind"] = MD_DEPTH_NONE
    else:
        levels = [(MD_DEPTH_BID, p, q) for p, q in bids] + [(MD_DEPTH_ASK, p, q) for p, q in asks]
        for i, (kind, p, q) in enumerate(levels):
            rec[i]["kind"] = kind
            rec[i]["price"] = p
            rec[i]["qty"] = q
    rec[0]["flags"] |= FLAG_BEGIN
    rec[-1]["flags"] |= FLAG_END
    return rec


def md_snapshot(sym: int, last_update_id: int, bids=(), asks=(), *, recv_ns: int = 0) -> np.ndarray:
    """A REST snapshot as MD_SNAP_BEGIN, levels (best first), MD_SNAP_END."""
    from core.records import MD_EVENT

    rec = np.zeros(len(bids) + len(asks) + 2, dtype=MD_EVENT)
    rec["symbol"] = sym
    rec["first_id"] = last_update_id
    rec["last_id"] = last_update_id
    rec["recv_ns"] = recv_ns
    rec[0]["kind"] = MD_SNAP_BEGIN
    rec[0]["aux"] = len(bids) + len(asks)
    i = 1
    for kind, levels in ((MD_SNAP_BID, bids), (MD_SNAP_ASK, asks)):
        for p, q in levels:
            rec[i]["kind"] = kind
            rec[i]["price"] = p
            rec[i]["qty"] = q
            i += 1
    rec[-1]["kind"] = MD_SNAP_END
    return rec


def md_trade(sym: int, trade_id: int, px: int, qty: int, time_ms: int, *, buyer_maker: bool = False,
             last_id: int | None = None, recv_ns: int = 0) -> np.ndarray:
    """A trade (or, with ``last_id``, an aggTrade covering trade ids trade_id..last_id)."""
    from core.records import MD_EVENT

    rec = np.zeros(1, dtype=MD_EVENT)
    rec["symbol"] = sym
    rec["kind"] = MD_TRADE if last_id is None else MD_AGG_TRADE
    rec["first_id"] = trade_id
    rec["last_id"] = trade_id if last_id is None else last_id
    rec["price"] = px
    rec["qty"] = qty
    rec["exch_ms"] = time_ms
    rec["recv_ns"] = recv_ns
    rec["flags"] = FLAG_BEGIN | FLAG_END | (FLAG_BUYER_MAKER if buyer_maker else 0)
    return rec


def md_status(sym: int, code: int, *, recv_ns: int = 0) -> np.ndarray:
    """A stream status record (STATUS_RECONNECTED / STATUS_SNAPSHOT_FAILED)."""
    from core.records import MD_EVENT

    rec = np.zeros(1, dtype=MD_EVENT)
    rec["symbol"] = sym
    rec["kind"] = MD_STATUS
    rec["aux"] = code
    rec["recv_ns"] = recv_ns
    rec["flags"] = FLAG_BEGIN | FLAG_END
    return rec
