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

A symbol whose book was invalidated gets ``resync[sym] = 1``; the Python
wrapper turns that into a resync command to the feed and clears it.

Output space: the kernel stops before a record it might not have room for
(it needs 2 free slots per record; a trade that closes many bars resumes
where it stopped) and returns how many md records it consumed, so the caller
publishes ``out[:n_out]`` and calls again with the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numba as nb
import numpy as np

from core.bars import (
    B_OPEN_MS,
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
    C_BUF_OVERFLOW,
    C_BUFFERED,
    C_LAPPED,
    C_LATE_TRADES,
    C_LEVEL_OVERFLOW,
    C_MALFORMED,
    C_RECONNECTS,
    C_SNAP_APPLIED,
    C_SNAP_FAILED,
    C_SNAP_IGNORED,
    C_STALE,
    C_TICKERS,
    C_TRADES,
    COUNTER_NAMES,
    REASON_BUFFER_OVERFLOW,
    REASON_LAPPED,
    REASON_MALFORMED,
    REASON_NAMES,
    REASON_RECONNECT,
    S_BOOK_ID,
    S_BUF_N,
    S_CUR_ACT,
    S_CUR_START,
    S_CUR_U,
    S_CUR_UU,
    S_LAST_DEPTH_NS,
    S_REASON,
    S_SEQ,
    S_SNAP_ACT,
    S_SNAP_ID,
    S_STATE,
    S_TOP_AP,
    S_TOP_AQ,
    S_TOP_BP,
    S_TOP_BQ,
    S_TOP_STATE,
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

# params vector
P_DEPTH_THROTTLE_NS = 0
P_WATERMARK_MS = 1
P_EMIT_EMPTY = 2
PARAMS_N = 4

# global (not per-symbol) counters
G_BAD_SYMBOL = 0
G_BAD_KIND = 1
G_OUT_FULL = 2  # calls that stopped early for lack of output space
GSTAT_N = 4

OUT_RESERVE = 2  # output slots one md record may need (top + depth)


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True)
def _header(ev, sync, sym, kind, recv_ns, in_pub_ns, exch_ms):
    ev.recv_ns = recv_ns
    ev.pub_ns = 0
    ev.in_pub_ns = in_pub_ns
    ev.exch_ms = exch_ms
    ev.last_update_id = sync[sym, S_BOOK_ID]
    ev.symbol = sym
    ev.kind = kind
    ev.state = BOOK_VALID if sync[sym, S_STATE] == ST_SYNCED else BOOK_INVALID
    ev.flags = 0
    ev.seq = sync[sym, S_SEQ]
    sync[sym, S_SEQ] += 1
    if kind != BK_DEPTH:
        # The payload is a union over the whole 320 bytes: clear what this kind
        # does not write so no stale bytes from an earlier event leak out.
        for j in range(DEPTH_LEVELS):
            ev.d_bid_px[j] = 0
            ev.d_bid_qty[j] = 0
            ev.d_ask_px[j] = 0
            ev.d_ask_qty[j] = 0


@nb.njit(cache=True, nogil=True)
def _emit_top(out, k, sync, keys, qtys, count, sym, recv_ns, in_pub_ns, exch_ms, force):
    """Publish BK_TOP if the top or the state changed since the last one (or force)."""
    bp, bq, ap, aq = book_top(keys, qtys, count, sym)
    st = BOOK_VALID if sync[sym, S_STATE] == ST_SYNCED else BOOK_INVALID
    if (not force and st == sync[sym, S_TOP_STATE] and bp == sync[sym, S_TOP_BP] and bq == sync[sym, S_TOP_BQ]
            and ap == sync[sym, S_TOP_AP] and aq == sync[sym, S_TOP_AQ]):
        return k
    ev = out[k]
    _header(ev, sync, sym, BK_TOP, recv_ns, in_pub_ns, exch_ms)
    if st == BOOK_INVALID:
        ev.flags = np.uint32(sync[sym, S_REASON] << 8)
    ev.top_bid_px = bp
    ev.top_bid_qty = bq
    ev.top_ask_px = ap
    ev.top_ask_qty = aq
    sync[sym, S_TOP_STATE] = st
    sync[sym, S_TOP_BP] = bp
    sync[sym, S_TOP_BQ] = bq
    sync[sym, S_TOP_AP] = ap
    sync[sym, S_TOP_AQ] = aq
    return k + 1


@nb.njit(cache=True, nogil=True)
def _emit_depth(out, k, sync, keys, qtys, count, sym, recv_ns, in_pub_ns, exch_ms, throttle_ns, force):
    if sync[sym, S_STATE] != ST_SYNCED or throttle_ns < 0:
        return k
    if not force and recv_ns - sync[sym, S_LAST_DEPTH_NS] < throttle_ns:
        return k
    ev = out[k]
    _header(ev, sync, sym, BK_DEPTH, recv_ns, in_pub_ns, exch_ms)
    book_depth(keys, qtys, count, sym, 0, ev.d_bid_px, ev.d_bid_qty)
    book_depth(keys, qtys, count, sym, 1, ev.d_ask_px, ev.d_ask_qty)
    sync[sym, S_LAST_DEPTH_NS] = recv_ns
    return k + 1


@nb.njit(cache=True, nogil=True)
def _abort_diff(sync, resync, sym):
    """A diff lost its framing (new FLAG_BEGIN before FLAG_END, or ids changed mid-diff)."""
    sync[sym, C_MALFORMED] += 1
    act = sync[sym, S_CUR_ACT]
    if act == ACT_APPLY:
        # part of a diff is in the book: it cannot be trusted any more
        sync_set_invalid(sync, resync, sym, REASON_MALFORMED)
        sync[sym, S_BUF_N] = 0
    elif act == ACT_BUFFER:
        sync[sym, S_BUF_N] = sync[sym, S_CUR_START]
    sync[sym, S_CUR_ACT] = ACT_NONE


@nb.njit(cache=True, nogil=True)
def _invalidate(sync, resync, sym, reason):
    """Invalidate and forget everything buffered or in progress."""
    sync_set_invalid(sync, resync, sym, reason)
    sync[sym, S_BUF_N] = 0
    sync[sym, S_CUR_ACT] = ACT_NONE


@nb.njit(cache=True, nogil=True)
def _close_bars_until(bars, intervals, params, sync, sym, t_ms, out, k, recv_ns, in_pub_ns, exch_ms, wm):
    """Close every open bar of ``sym`` that ends at or before ``t_ms - wm``.

    Returns the new output cursor, or -(cursor) - 1 when the output filled
    first (state is consistent: the caller may call again to continue).
    """
    emit_empty = params[P_EMIT_EMPTY] != 0
    cap = out.shape[0]
    for iv in range(intervals.shape[0]):
        row = bars[sym, iv]
        ival = intervals[iv]
        while bar_close_due(row, ival + wm, t_ms):
            if bar_should_publish(row, emit_empty):
                if cap - k < 2:
                    return -k - 1
                ev = out[k]
                _header(ev, sync, sym, BK_BAR, recv_ns, in_pub_ns, exch_ms)
                bar_write(row, ival, ev)
                k += 1
            bar_advance(row, ival, t_ms - wm, emit_empty)
    return k


@nb.njit(cache=True, nogil=True)
def _on_trade(rec, sym, sync, bars, intervals, params, out, k):
    t_ms = rec.exch_ms
    k2 = _close_bars_until(bars, intervals, params, sync, sym, t_ms, out, k, rec.recv_ns, rec.pub_ns, t_ms, 0)
    if k2 < 0:
        return k2
    k = k2
    buyer_maker = (rec.flags & FLAG_BUYER_MAKER) != 0
    first_id = rec.first_id
    last_id = rec.last_id
    if rec.kind == MD_TRADE:
        last_id = first_id
    for iv in range(intervals.shape[0]):
        row = bars[sym, iv]
        if row[B_OPEN_MS] < 0:
            bar_open_first(row, intervals[iv], t_ms)
        if t_ms < row[B_OPEN_MS]:
            sync[sym, C_LATE_TRADES] += 1
            continue
        bar_add_trade(row, rec.price, rec.qty, first_id, last_id, buyer_maker)
    sync[sym, C_TRADES] += 1
    ev = out[k]
    _header(ev, sync, sym, BK_TRADE, rec.recv_ns, rec.pub_ns, t_ms)
    if buyer_maker:
        ev.flags = FLAG_BUYER_MAKER
    ev.tr_px = rec.price
    ev.tr_qty = rec.qty
    ev.tr_first_id = first_id
    ev.tr_last_id = last_id
    ev.tr_time_ms = t_ms
    return k + 1


@nb.njit(cache=True, nogil=True, inline="always")
def _on_depth(rec, sym, sync, resync, buf, keys, qtys, count, params, out, k, diag, diag_n):
    kind = rec.kind
    first_id = rec.first_id
    last_id = rec.last_id
    flags = rec.flags
    if flags & FLAG_BEGIN:
        if sync[sym, S_CUR_ACT] != ACT_NONE:
            _abort_diff(sync, resync, sym)
            k = _emit_top(out, k, sync, keys, qtys, count, sym, rec.recv_ns, rec.pub_ns, rec.exch_ms, False)
        sync[sym, S_CUR_U] = first_id
        sync[sym, S_CUR_UU] = last_id
        if sync[sym, S_STATE] == ST_NO_SNAPSHOT:
            act = ACT_BUFFER
        else:
            act = sync_decide(sync, sym, first_id, last_id)
            if act == ACT_BREAK:
                sync_on_break(sync, resync, sym)
                sync[sym, S_BUF_N] = 0  # the buffer restarts with this (breaking) diff
                sync[sym, S_CUR_ACT] = ACT_NONE
                k = _emit_top(out, k, sync, keys, qtys, count, sym, rec.recv_ns, rec.pub_ns, rec.exch_ms, False)
                act = ACT_BUFFER  # the breaking diff is the first one the next snapshot needs
            elif act == ACT_DROP:
                sync[sym, C_STALE] += 1
        sync[sym, S_CUR_ACT] = act
        sync[sym, S_CUR_START] = sync[sym, S_BUF_N]
    else:
        act = sync[sym, S_CUR_ACT]
        if act == ACT_NONE:
            sync[sym, C_MALFORMED] += 1  # a fragment of a diff we never saw begin (e.g. after a lap)
            return k
        if first_id != sync[sym, S_CUR_U] or last_id != sync[sym, S_CUR_UU]:
            _abort_diff(sync, resync, sym)
            return _emit_top(out, k, sync, keys, qtys, count, sym, rec.recv_ns, rec.pub_ns, rec.exch_ms, False)

    if act == ACT_APPLY:
        apply_level(keys, qtys, count, sync, sym, kind, rec.price, rec.qty)
    elif act == ACT_BUFFER:
        n = sync[sym, S_BUF_N]
        if n < buf.shape[1]:
            buf[sym, n] = rec
            sync[sym, S_BUF_N] = n + 1
        else:
            # Out of buffer: forget it all and drop the rest of this diff. The
            # next snapshot will then be checked against the next diff, and
            # fetched again if it cannot bridge.
            sync[sym, C_BUF_OVERFLOW] += 1
            sync[sym, S_BUF_N] = 0
            sync[sym, S_REASON] = REASON_BUFFER_OVERFLOW
            sync[sym, S_CUR_ACT] = ACT_DROP
            act = ACT_DROP

    if flags & FLAG_END:
        sync[sym, S_CUR_ACT] = ACT_NONE
        if act == ACT_APPLY:
            bridging = sync[sym, S_STATE] == ST_AWAIT_BRIDGE
            if sync_diff_applied(sync, resync, keys, qtys, count, sym, last_id, diag, diag_n):
                k = _emit_top(out, k, sync, keys, qtys, count, sym, rec.recv_ns, rec.pub_ns, rec.exch_ms, False)
                k = _emit_depth(out, k, sync, keys, qtys, count, sym, rec.recv_ns, rec.pub_ns, rec.exch_ms,
                                params[P_DEPTH_THROTTLE_NS], bridging)
            else:  # crossed
                sync[sym, S_BUF_N] = 0
                k = _emit_top(out, k, sync, keys, qtys, count, sym, rec.recv_ns, rec.pub_ns, rec.exch_ms, False)
        elif act == ACT_BUFFER:
            sync[sym, C_BUFFERED] += 1
    return k


@nb.njit(cache=True, nogil=True)
def _on_snapshot(rec, sym, sync, resync, buf, keys, qtys, count, params, out, k, diag, diag_n):
    kind = rec.kind
    if kind == MD_SNAP_BEGIN:
        st = sync[sym, S_STATE]
        if st == ST_SYNCED or (st == ST_AWAIT_BRIDGE and rec.last_id <= sync[sym, S_BOOK_ID]):
            sync[sym, S_SNAP_ACT] = SNAP_IGNORE
            sync[sym, C_SNAP_IGNORED] += 1
            return k
        # A newer snapshot while awaiting the bridge replaces the old one; no
        # diff with u > old L was seen then, so nothing buffered is lost.
        sync[sym, S_STATE] = ST_NO_SNAPSHOT
        sync[sym, S_SNAP_ACT] = SNAP_STAGE
        sync[sym, S_SNAP_ID] = rec.last_id
        book_clear(count, sym)
        return k
    act = sync[sym, S_SNAP_ACT]
    if act == SNAP_NONE or (act == SNAP_STAGE and rec.last_id != sync[sym, S_SNAP_ID]):
        sync[sym, C_MALFORMED] += 1
        return k
    if act == SNAP_IGNORE:
        if kind == MD_SNAP_END:
            sync[sym, S_SNAP_ACT] = SNAP_NONE
        return k
    if kind == MD_SNAP_BID or kind == MD_SNAP_ASK:
        side = 0 if kind == MD_SNAP_BID else 1
        if book_snapshot_append(keys, qtys, count, sym, side, rec.price, rec.qty) == SET_OVERFLOW:
            sync[sym, C_LEVEL_OVERFLOW] += 1
        return k
    # MD_SNAP_END: the book is the snapshot; replay what was buffered
    sync[sym, S_SNAP_ACT] = SNAP_NONE
    book_snapshot_finish(keys, qtys, count, sym)
    sync[sym, S_BOOK_ID] = rec.last_id
    sync[sym, S_STATE] = ST_AWAIT_BRIDGE
    sync[sym, C_SNAP_APPLIED] += 1
    # A diff being buffered right now (snapshot records interleaved inside a
    # diff) is completed by the live path, not replayed half-read.
    in_progress = sync[sym, S_CUR_ACT] == ACT_BUFFER
    if in_progress:
        sync[sym, S_CUR_ACT] = ACT_NONE
        sync[sym, S_BUF_N] = sync[sym, S_CUR_START]
        sync[sym, C_MALFORMED] += 1
    sync_replay_buffer(sync, resync, buf, keys, qtys, count, sym, diag, diag_n)
    k = _emit_top(out, k, sync, keys, qtys, count, sym, rec.recv_ns, rec.pub_ns, rec.exch_ms, False)
    k = _emit_depth(out, k, sync, keys, qtys, count, sym, rec.recv_ns, rec.pub_ns, rec.exch_ms,
                    params[P_DEPTH_THROTTLE_NS], True)
    return k


@nb.njit(cache=True, nogil=True)
def _invalidate_and_publish(sync, resync, keys, qtys, count, sym, reason, out, k, recv_ns, in_pub_ns, exch_ms):
    _invalidate(sync, resync, sym, reason)
    sync[sym, S_SNAP_ACT] = SNAP_NONE
    return _emit_top(out, k, sync, keys, qtys, count, sym, recv_ns, in_pub_ns, exch_ms, False)


@nb.njit(cache=True, nogil=True)
def process_md_batch(md, n_md, keys, qtys, count, sync, resync, buf, bars, intervals, params, gstat,
                     out, out_start, diag, diag_n):
    """Process ``md[:n_md]``; write BOOK_EVENTs to ``out[out_start:]``.

    Returns ``(consumed, out_end)``: md records fully processed and the output
    cursor. ``consumed < n_md`` only when ``out`` is full; call again with the
    rest after publishing. ``diag`` (int64[k, 6], may have 0 rows) receives
    ``(symbol, u, bid_px, bid_qty, ask_px, ask_qty)`` after every applied diff,
    with ``diag_n[0]`` as its cursor (replay checks; the worker passes 0 rows).
    """
    n_sym = sync.shape[0]
    cap = out.shape[0]
    k = out_start
    for i in range(n_md):
        if cap - k < OUT_RESERVE:
            gstat[G_OUT_FULL] += 1
            return i, k
        rec = md[i]
        sym = np.int64(rec.symbol)
        kind = rec.kind
        if kind == MD_STATUS:
            code = rec.aux
            lo = sym
            hi = sym + 1
            if sym >= n_sym:  # a status for no particular symbol applies to all
                lo = 0
                hi = n_sym
            if hi - lo > cap - k:
                gstat[G_OUT_FULL] += 1
                return i, k
            for s in range(lo, hi):
                if code == STATUS_RECONNECTED:
                    sync[s, C_RECONNECTS] += 1
                    k = _invalidate_and_publish(sync, resync, keys, qtys, count, s, REASON_RECONNECT,
                                                out, k, rec.recv_ns, rec.pub_ns, rec.exch_ms)
                elif code == STATUS_SNAPSHOT_FAILED:
                    sync[s, C_SNAP_FAILED] += 1  # the feed retries by itself
            continue
        if sym >= n_sym:
            gstat[G_BAD_SYMBOL] += 1
            continue
        if kind == MD_DEPTH_BID or kind == MD_DEPTH_ASK or kind == MD_DEPTH_NONE:
            k = _on_depth(rec, sym, sync, resync, buf, keys, qtys, count, params, out, k, diag, diag_n)
        elif kind == MD_TRADE or kind == MD_AGG_TRADE:
            k2 = _on_trade(rec, sym, sync, bars, intervals, params, out, k)
            if k2 < 0:
                gstat[G_OUT_FULL] += 1
                return i, -k2 - 1
            k = k2
        elif MD_SNAP_BEGIN <= kind <= MD_SNAP_END:
            k = _on_snapshot(rec, sym, sync, resync, buf, keys, qtys, count, params, out, k, diag, diag_n)
        elif kind == MD_TICKER_BID or kind == MD_TICKER_ASK:
            sync[sym, C_TICKERS] += 1
        else:
            gstat[G_BAD_KIND] += 1
    return n_md, k


@nb.njit(cache=True, nogil=True)
def on_timer(now_exch_ms, now_ns, sync, bars, intervals, params, gstat, out, out_start):
    """Close bars whose interval ended at least ``watermark`` ms before ``now_exch_ms``.

    ``now_exch_ms`` is the caller's estimate of exchange time (ms epoch).
    Returns ``(done, out_end)``; ``done`` is False when ``out`` filled first
    (call again after publishing).
    """
    k = out_start
    wm = params[P_WATERMARK_MS]
    for sym in range(sync.shape[0]):
        k2 = _close_bars_until(bars, intervals, params, sync, sym, now_exch_ms, out, k, now_ns, 0, now_exch_ms, wm)
        if k2 < 0:
            gstat[G_OUT_FULL] += 1
            return False, -k2 - 1
        k = k2
    return True, k


@nb.njit(cache=True, nogil=True)
def mark_all_invalid(reason, recv_ns, keys, qtys, count, sync, resync, out, out_start):
    """Invalidate every symbol (lapped md ring, or any reason to distrust all books).

    Buffered diffs are dropped too (records after a lap are missing). Needs
    ``n_symbols`` free output slots; returns the output cursor.
    """
    k = out_start
    for sym in range(sync.shape[0]):
        if reason == REASON_LAPPED:
            sync[sym, C_LAPPED] += 1
        k = _invalidate_and_publish(sync, resync, keys, qtys, count, sym, reason, out, k, recv_ns, 0, 0)
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


class BookEngine:
    """Owns the kernel state for all symbols and drives the kernels.

    Not thread-safe; one per book worker. ``process`` and ``on_timer`` return
    the BOOK_EVENT slice written to ``out`` (pub_ns still 0).
    """

    def __init__(self, config: BookConfig, out_capacity: int = 4096):
        self.config = config
        n = config.n_symbols
        self.keys, self.qtys, self.count = alloc_book(n, config.levels_capacity)
        self.sync, self.buf, self.resync = alloc_sync(n, config.buffer_capacity)
        self.intervals = np.array(config.bar_intervals_ms, dtype=np.int64)
        self.bars = alloc_bars(n, len(self.intervals))
        self.params = np.zeros(PARAMS_N, dtype=np.int64)
        dt = config.depth_throttle_ms
        self.params[P_DEPTH_THROTTLE_NS] = -1 if dt < 0 else int(dt * 1_000_000)
        self.params[P_WATERMARK_MS] = config.bar_watermark_ms
        self.params[P_EMIT_EMPTY] = 1 if config.emit_empty_bars else 0
        self.gstat = np.zeros(GSTAT_N, dtype=np.int64)
        if out_capacity < max(OUT_RESERVE, n):  # mark_all_invalid writes one event per symbol
            raise ConfigError("book.out_capacity", f"must be >= {max(OUT_RESERVE, n)}, got {out_capacity}")
        self.out = np.zeros(out_capacity, dtype=BOOK_EVENT)
        self._no_diag = np.zeros((0, 6), dtype=np.int64)
        self._diag_n = np.zeros(1, dtype=np.int64)

    def process(self, md: np.ndarray, *, diag: np.ndarray | None = None,
                diag_n: np.ndarray | None = None) -> tuple[int, np.ndarray]:
        """Process as much of ``md`` as fits; returns (consumed, events written)."""
        consumed, k = process_md_batch(md, len(md), self.keys, self.qtys, self.count, self.sync, self.resync,
                                       self.buf, self.bars, self.intervals, self.params, self.gstat, self.out, 0,
                                       self._no_diag if diag is None else diag,
                                       self._diag_n if diag_n is None else diag_n)
        return consumed, self.out[:k]

    def process_all(self, md: np.ndarray, **kw) -> np.ndarray:
        """Process all of ``md``, returning a copy of every event (tests, replay)."""
        parts = []
        i = 0
        while i < len(md):
            c, ev = self.process(md[i:], **kw)
            parts.append(ev.copy())
            i += c
        return np.concatenate(parts) if parts else np.zeros(0, BOOK_EVENT)

    def on_timer(self, now_exch_ms: int, now_ns: int = 0) -> np.ndarray:
        """Close due bars; returns a copy of every event written."""
        parts = []
        while True:
            done, k = on_timer(np.int64(now_exch_ms), np.int64(now_ns), self.sync, self.bars, self.intervals,
                               self.params, self.gstat, self.out, 0)
            parts.append(self.out[:k].copy())
            if done:
                return np.concatenate(parts)

    def mark_all_invalid(self, reason: int, recv_ns: int = 0) -> np.ndarray:
        """Invalidate every book (lapped ring, reconnect); returns the BK_TOP events."""
        k = mark_all_invalid(np.int64(reason), np.int64(recv_ns), self.keys, self.qtys, self.count,
                             self.sync, self.resync, self.out, 0)
        names = REASON_NAMES.get(reason, str(reason))
        log.warning("all books invalidated (%s): resync requested for %d symbols", names, self.config.n_symbols)
        return self.out[:k].copy()

    # -- the stage's entry points: write into a caller's array (ring slots or scratch) --------------------------

    def process_into(self, md: np.ndarray, n: int, dst: np.ndarray, start: int) -> tuple[int, int]:
        """Process up to ``n`` records of ``md`` into ``dst[start:]``: (records consumed, events written)."""
        consumed, k = process_md_batch(md, n, self.keys, self.qtys, self.count, self.sync, self.resync, self.buf,
                                       self.bars, self.intervals, self.params, self.gstat, dst, start,
                                       self._no_diag, self._diag_n)
        return int(consumed), int(k)

    def timer_into(self, now_exch_ms: int, now_ns: int, dst: np.ndarray, start: int) -> tuple[bool, int]:
        """Close due bars into ``dst[start:]``: (all due bars closed, events written)."""
        done, k = on_timer(np.int64(now_exch_ms), np.int64(now_ns), self.sync, self.bars, self.intervals,
                           self.params, self.gstat, dst, start)
        return bool(done), int(k)

    def invalidate_all_into(self, reason: int, now_ns: int, dst: np.ndarray, start: int) -> int:
        """Invalidate every book, one BK_TOP per symbol into ``dst[start:]``; returns events written."""
        return int(mark_all_invalid(np.int64(reason), np.int64(now_ns), self.keys, self.qtys, self.count,
                                    self.sync, self.resync, dst, start))

    def reason_name(self, sym: int) -> str:
        return REASON_NAMES.get(int(self.sync[sym, S_REASON]), "unknown")

    def invalid_mask(self) -> np.ndarray:
        return self.sync[:, S_STATE] != ST_SYNCED

    def books_valid(self) -> int:
        return int(np.count_nonzero(self.sync[:, S_STATE] == ST_SYNCED))

    def totals(self) -> dict[str, int]:
        """Per-symbol counters summed over symbols, plus the global ones."""
        t = {name: int(self.sync[:, col].sum()) for name, col in COUNTER_NAMES.items()}
        t["bad_symbol"] = int(self.gstat[G_BAD_SYMBOL])
        t["bad_kind"] = int(self.gstat[G_BAD_KIND])
        return t

    def take_resync_requests(self) -> list[int]:
        """Symbols that need a fresh snapshot; clears the flags."""
        syms = np.flatnonzero(self.resync).tolist()
        self.resync[:] = 0
        return syms

    def is_valid(self, sym: int) -> bool:
        return int(self.sync[sym, S_STATE]) == ST_SYNCED

    def state(self, sym: int) -> int:
        return int(self.sync[sym, S_STATE])

    def book_id(self, sym: int) -> int:
        return int(self.sync[sym, S_BOOK_ID])

    def top(self, sym: int) -> tuple[int, int, int, int]:
        """(bid_px, bid_qty, ask_px, ask_qty) fixed point; 0 for an empty side."""
        return tuple(int(v) for v in book_top(self.keys, self.qtys, self.count, sym))

    def depth(self, sym: int, levels: int = DEPTH_LEVELS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        bp = np.zeros(levels, np.int64)
        bq = np.zeros(levels, np.int64)
        ap = np.zeros(levels, np.int64)
        aq = np.zeros(levels, np.int64)
        book_depth(self.keys, self.qtys, self.count, sym, 0, bp, bq)
        book_depth(self.keys, self.qtys, self.count, sym, 1, ap, aq)
        return bp, bq, ap, aq

    def mid(self, sym: int) -> float:
        return float(book_mid(self.keys, self.qtys, self.count, sym))

    def microprice(self, sym: int) -> float:
        return float(book_microprice(self.keys, self.qtys, self.count, sym))

    def imbalance(self, sym: int, levels: int = 1) -> float:
        return float(book_imbalance(self.keys, self.qtys, self.count, sym, levels))

    def counters(self, sym: int) -> dict[str, int]:
        return {name: int(self.sync[sym, col]) for name, col in COUNTER_NAMES.items()}

    def global_counters(self) -> dict[str, int]:
        return {"bad_symbol": int(self.gstat[G_BAD_SYMBOL]), "bad_kind": int(self.gstat[G_BAD_KIND]),
                "out_full": int(self.gstat[G_OUT_FULL])}


__all__ = [
    "BookConfig", "BookEngine", "md_diff", "md_snapshot", "md_trade", "md_status", "process_md_batch", "on_timer", "mark_all_invalid",
    "P_DEPTH_THROTTLE_NS", "P_WATERMARK_MS", "P_EMIT_EMPTY", "PARAMS_N", "GSTAT_N", "OUT_RESERVE",
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
