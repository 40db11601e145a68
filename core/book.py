"""L2 order-book kernels: one book per symbol in preallocated sorted arrays.

Layout (one set of arrays for all symbols, allocated once by the caller)::

    keys[n_symbols, 2, capacity]  int64   sort key of each stored slot
    qtys[n_symbols, 2, capacity]  int64   level quantity, fixed point; 0 = tombstone
    count[n_symbols, 4]           int64   [bid slots, ask slots, bid tombstones, ask tombstones]

    side 0 = bids: key =  price   (ascending; best bid = highest = last)
    side 1 = asks: key = -price   (ascending; best ask = lowest  = last)

Both sides are sorted ascending by key with the BEST level at the END
(index ``count - 1``), so updates at the top shift little, a 5000-level REST
snapshot fits, and every lookup is a binary search over exact integer price
keys (with a short linear scan at the top first). Negating ask prices lets
one code path serve both sides.

Measured on the recorded Binance streams, the average update lands ~170
levels from the top and half of them delete or re-add a level, so a plain
sorted array spends its time shifting. Deletes therefore leave a TOMBSTONE
(qty 0, key kept): the same price coming back is an O(log n) write, and a
new price reuses a tombstone next to it or shifts only up to the nearest one
(at most ``_GAP_SCAN`` slots away). The best slot is always live (trailing
tombstones are trimmed on delete), so best bid/ask stays O(1); tombstones are
squeezed out when they outnumber live levels or when the side is full.

When a side is full, a level worse than every stored level is dropped (the
exchange's snapshot is only complete near the top anyway) and a better one
evicts the worst stored level; both are reported as ``SET_OVERFLOW`` so the
caller can count them. Capacity comes from config and should exceed the
snapshot depth (5000) with room for the book to widen.

Kernels are pure functions over these arrays returning codes or values; the
analytics (mid, microprice, imbalance) return float64 in price units because
floats are for analytics only.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba.core import cgutils
from numba.extending import intrinsic

from core.records import FIXED_SCALE

SIDE_BID = 0
SIDE_ASK = 1

_GAP_SCAN = 32  # how far an insert looks for a tombstone to shift into

# book_set_level result codes
SET_NOOP = 0  # removal of a level that was not there (normal on Binance)
SET_UPDATED = 1  # existing level got a new quantity
SET_INSERTED = 2  # new level
SET_REMOVED = 3  # level removed (qty 0)
SET_OVERFLOW = 4  # side full: the update or the worst stored level was dropped

# snapshot finalisation result codes
SNAP_OK = 0
SNAP_SORTED = 1  # levels did not arrive best-first and had to be sorted


def alloc_book(n_symbols: int, capacity: int):
    """Allocate (keys, qtys, count) for ``n_symbols`` books of ``capacity`` levels per side."""
    keys = np.zeros((n_symbols, 2, capacity), dtype=np.int64)
    qtys = np.zeros((n_symbols, 2, capacity), dtype=np.int64)
    count = np.zeros((n_symbols, 4), dtype=np.int64)
    return keys, qtys, count


@nb.njit(cache=True, nogil=True, inline="always")
def side_key(side, px):
    """Sort key of price ``px`` on ``side`` (asks are negated so best is largest)."""
    return px if side == SIDE_BID else -px


@nb.njit(cache=True, nogil=True, inline="always")
def _lower_bound(k, n, key):
    """First index i in k[:n] with k[i] >= key (n if none).

    Starts with a short scan from the top because that is where updates land;
    falls back to binary search for deep levels.
    """
    # fast path: the few levels at the top of the book (end of the array)
    lo_scan = n - 8 if n > 8 else 0
    if n > 0 and k[lo_scan] <= key:
        i = n
        while i > lo_scan and k[i - 1] >= key:
            i -= 1
        return i
    # branchless binary search over k[:lo_scan] (the compare becomes a
    # conditional move: deep updates are common and their branches random)
    if lo_scan == 0:
        return 0
    base = 0
    length = lo_scan
    while length > 1:
        half = length >> 1
        base = base + half if k[base + half - 1] < key else base
        length -= half
    return base + 1 if k[base] < key else base


@nb.njit(cache=True, nogil=True)
def _compact(k, q, n):
    """Squeeze tombstones out of k[:n]/q[:n]; returns the new n."""
    m = 0
    for j in range(n):
        if q[j] != 0:
            k[m] = k[j]
            q[m] = q[j]
            m += 1
    return m


_SHORT_SHIFT = 16  # shorter moves are a plain loop; longer ones one memmove


@intrinsic
def _memmove_slots(typingctx, a, dst, src, n):
    """a[dst:dst+n] = a[src:src+n] for a 1-D contiguous array (overlap allowed): LLVM's memmove.

    A numba loop over ``a[j] = a[j - 1]`` stays a scalar loop (the index
    wrap-around check hides the idiom from LLVM); the recorded streams shift
    ~280 slots on a deep insert.
    """
    sig = nb.types.void(a, nb.types.intp, nb.types.intp, nb.types.intp)

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        dptr = builder.gep(ary.data, [args[1]])
        sptr = builder.gep(ary.data, [args[2]])
        cgutils.raw_memmove(builder, dptr, sptr, args[3], context.get_abi_sizeof(ary.data.type.pointee))

    return sig, codegen


@nb.njit(cache=True, nogil=True, inline="always")
def _shift_up(a, i, end):
    """a[i+1:end+1] = a[i:end] (overlapping)."""
    if end - i > _SHORT_SHIFT:
        _memmove_slots(a, i + 1, i, end - i)
        return
    j = end
    while j > i:
        a[j] = a[j - 1]
        j -= 1


@nb.njit(cache=True, nogil=True, inline="always")
def _shift_down(a, lo, hi):
    """a[lo:hi] = a[lo+1:hi+1] (overlapping)."""
    if hi - lo > _SHORT_SHIFT:
        _memmove_slots(a, lo, lo + 1, hi - lo)
        return
    for j in range(lo, hi):
        a[j] = a[j + 1]


@nb.njit(cache=True, nogil=True, inline="always")
def _insert_at(k, q, i, end, key, qty):
    """Move k/q[i:end] one slot up (slot ``end`` is free or a tombstone) and put the level at ``i``."""
    _shift_up(k, i, end)
    _shift_up(q, i, end)
    k[i] = key
    q[i] = qty


@nb.njit(cache=True, nogil=True, _nrt=False)
def book_set_level(keys, qtys, count, sym, side, px, qty):
    """Set the absolute quantity of one level; ``qty == 0`` removes it. Returns SET_*."""
    return book_set_level_row(keys[sym, side], qtys[sym, side], count[sym], side, px, qty)


@nb.njit(cache=True, nogil=True, inline="always")
def book_set_level_row(k, q, cnt, side, px, qty):
    """``book_set_level`` on one side's arrays ``k = keys[sym, side]``, ``q = qtys[sym, side]`` and
    ``cnt = count[sym]`` (callers that apply many levels of one symbol take the views once)."""
    n = cnt[side]
    cap = k.shape[0]
    key = side_key(side, px)
    i = _lower_bound(k, n, key)
    found = i < n and k[i] == key
    if qty == 0:
        if not found or q[i] == 0:
            return SET_NOOP
        q[i] = 0
        if i == n - 1:
            # keep the best slot live: drop trailing tombstones
            while n > 0 and q[n - 1] == 0:
                n -= 1
            cnt[2 + side] -= (cnt[side] - 1) - n  # interior tombstones passed over
            cnt[side] = n
        else:
            cnt[2 + side] += 1
        return SET_REMOVED
    if found:
        if q[i] == 0:
            q[i] = qty
            cnt[2 + side] -= 1
            return SET_INSERTED
        q[i] = qty
        return SET_UPDATED
    # a new price between k[i-1] and k[i]
    if i > 0 and q[i - 1] == 0:  # reuse the tombstone right below
        k[i - 1] = key
        q[i - 1] = qty
        cnt[2 + side] -= 1
        return SET_INSERTED
    if cnt[2 + side] > 0:
        # shift only as far as the nearest tombstone, if one is close
        hi = i + _GAP_SCAN if i + _GAP_SCAN < n else n
        lo = i - 1 - _GAP_SCAN if i - 1 - _GAP_SCAN > 0 else 0
        up = i
        down = i - 2
        while up < hi or down >= lo:
            if up < hi:
                if q[up] == 0:
                    _insert_at(k, q, i, up, key, qty)  # the tombstone at ``up`` is overwritten
                    cnt[2 + side] -= 1
                    return SET_INSERTED
                up += 1
            if down >= lo:
                if q[down] == 0:
                    # move k[down+1:i] one slot down, new level at i-1
                    _shift_down(k, down, i - 1)
                    _shift_down(q, down, i - 1)
                    k[i - 1] = key
                    q[i - 1] = qty
                    cnt[2 + side] -= 1
                    return SET_INSERTED
                down -= 1
    if n == cap and cnt[2 + side] > 0:
        n = _compact(k, q, n)
        cnt[side] = n
        cnt[2 + side] = 0
        i = _lower_bound(k, n, key)
    if n < cap:
        _insert_at(k, q, i, n, key, qty)
        cnt[side] = n + 1
        # many tombstones make every scan longer: squeeze them out now and then
        t = cnt[2 + side]
        if t > 64 and 2 * t > n:
            cnt[side] = _compact(k, q, n + 1)
            cnt[2 + side] = 0
        return SET_INSERTED
    # full and no tombstone: index 0 is the worst stored level
    if i == 0:
        return SET_OVERFLOW  # worse than everything we keep: drop the update
    _shift_down(k, 0, i - 1)
    _shift_down(q, 0, i - 1)
    k[i - 1] = key
    q[i - 1] = qty
    return SET_OVERFLOW


@nb.njit(cache=True, nogil=True)
def book_clear(count, sym):
    count[sym, 0] = 0
    count[sym, 1] = 0
    count[sym, 2] = 0
    count[sym, 3] = 0


@nb.njit(cache=True, nogil=True)
def book_live_levels(count, sym, side):
    """Live levels on ``side`` (stored slots minus tombstones)."""
    return count[sym, side] - count[sym, 2 + side]


@nb.njit(cache=True, nogil=True)
def book_snapshot_append(keys, qtys, count, sym, side, px, qty):
    """Stage one snapshot level (call between book_clear and book_snapshot_finish).

    Levels are appended in arrival order; Binance sends them best-first, so
    ``book_snapshot_finish`` only has to reverse them. Returns SET_INSERTED,
    SET_NOOP for a zero quantity, or SET_OVERFLOW when the side is full (the
    best-first order means the kept levels are the best ones).
    """
    if qty <= 0:
        return SET_NOOP
    n = count[sym, side]
    if n >= keys.shape[2]:
        return SET_OVERFLOW
    keys[sym, side, n] = side_key(side, px)
    qtys[sym, side, n] = qty
    count[sym, side] = n + 1
    return SET_INSERTED


@nb.njit(cache=True, nogil=True)
def _finish_side(k, q, n):
    """Reverse best-first staged levels into ascending order; sort if they were not."""
    i = 0
    j = n - 1
    while i < j:
        t = k[i]
        k[i] = k[j]
        k[j] = t
        t = q[i]
        q[i] = q[j]
        q[j] = t
        i += 1
        j -= 1
    ordered = True
    for m in range(1, n):
        if k[m] <= k[m - 1]:
            ordered = False
            break
    if ordered:
        return n, SNAP_OK
    # Rare path (levels not best-first or duplicated): a stable sort in place
    # (binary insertion; allocation-free so the worker's kernels can run
    # without NRT reference counting), then the last of equal keys wins.
    for t in range(1, n):
        key = k[t]
        qty = q[t]
        lo = 0
        hi = t
        while lo < hi:  # first index in k[:t] with k > key: equal keys keep their order
            mid = (lo + hi) >> 1
            if k[mid] <= key:
                lo = mid + 1
            else:
                hi = mid
        if lo < t:
            _shift_up(k, lo, t)
            _shift_up(q, lo, t)
            k[lo] = key
            q[lo] = qty
    m = 0
    for t in range(n):
        if m > 0 and k[t] == k[m - 1]:
            q[m - 1] = q[t]
        else:
            k[m] = k[t]
            q[m] = q[t]
            m += 1
    return m, SNAP_SORTED


@nb.njit(cache=True, nogil=True)
def book_snapshot_finish(keys, qtys, count, sym):
    """Turn staged snapshot levels into a sorted book. Returns SNAP_OK or SNAP_SORTED."""
    res = SNAP_OK
    for side in range(2):
        n, r = _finish_side(keys[sym, side], qtys[sym, side], count[sym, side])
        count[sym, side] = n
        if r != SNAP_OK:
            res = r
    return res


@nb.njit(cache=True, nogil=True)
def book_best(keys, qtys, count, sym, side):
    """(price, qty) of the best level on ``side``; (0, 0) when the side is empty."""
    n = count[sym, side]
    if n == 0:
        return np.int64(0), np.int64(0)
    key = keys[sym, side, n - 1]
    return (key if side == SIDE_BID else -key), qtys[sym, side, n - 1]


@nb.njit(cache=True, nogil=True)
def book_top(keys, qtys, count, sym):
    """(bid_px, bid_qty, ask_px, ask_qty); empty sides are 0."""
    bp, bq = book_best(keys, qtys, count, sym, SIDE_BID)
    ap, aq = book_best(keys, qtys, count, sym, SIDE_ASK)
    return bp, bq, ap, aq


@nb.njit(cache=True, nogil=True)
def book_is_crossed(keys, qtys, count, sym):
    """True when both sides exist and best bid >= best ask (locked counts as crossed:
    Binance Spot matches immediately, so a locked book means we missed an update)."""
    if count[sym, 0] == 0 or count[sym, 1] == 0:
        return False
    return keys[sym, 0, count[sym, 0] - 1] >= -keys[sym, 1, count[sym, 1] - 1]


@nb.njit(cache=True, nogil=True)
def book_depth(keys, qtys, count, sym, side, out_px, out_qty):
    """Copy up to len(out_px) levels of ``side``, best first; unused slots are 0.

    Returns the number of levels written.
    """
    n = count[sym, side]
    m = out_px.shape[0]
    w = 0
    j = n - 1
    while w < m and j >= 0:
        qv = qtys[sym, side, j]
        if qv != 0:
            key = keys[sym, side, j]
            out_px[w] = key if side == SIDE_BID else -key
            out_qty[w] = qv
            w += 1
        j -= 1
    for i in range(w, m):
        out_px[i] = 0
        out_qty[i] = 0
    return w


@nb.njit(cache=True, nogil=True)
def book_mid(keys, qtys, count, sym):
    """Mid price in price units (float64 analytics); NaN if a side is empty."""
    bp, bq, ap, aq = book_top(keys, qtys, count, sym)
    if bq == 0 or aq == 0:
        return np.nan
    return (bp + ap) / (2.0 * FIXED_SCALE)


@nb.njit(cache=True, nogil=True)
def book_microprice(keys, qtys, count, sym):
    """Size-weighted mid: (bid*ask_qty + ask*bid_qty) / (bid_qty + ask_qty), price units."""
    bp, bq, ap, aq = book_top(keys, qtys, count, sym)
    if bq == 0 or aq == 0:
        return np.nan
    fb = float(bq)
    fa = float(aq)
    return (bp * fa + ap * fb) / ((fa + fb) * FIXED_SCALE)


@nb.njit(cache=True, nogil=True)
def book_imbalance(keys, qtys, count, sym, levels):
    """(bid_qty - ask_qty) / (bid_qty + ask_qty) over the top ``levels`` of each side.

    In [-1, 1]; NaN when both sides are empty.
    """
    sb = 0.0
    sa = 0.0
    for side in range(2):
        j = count[sym, side] - 1
        seen = 0
        tot = 0.0
        while seen < levels and j >= 0:
            qv = qtys[sym, side, j]
            if qv != 0:
                tot += qv
                seen += 1
            j -= 1
        if side == 0:
            sb = tot
        else:
            sa = tot
    if sb + sa == 0.0:
        return np.nan
    return (sb - sa) / (sb + sa)


@nb.njit(cache=True, nogil=True)
def book_level_qty(keys, qtys, count, sym, side, px):
    """Quantity at price ``px`` (0 if absent)."""
    key = side_key(side, px)
    n = count[sym, side]
    i = _lower_bound(keys[sym, side], n, key)
    if i < n and keys[sym, side, i] == key:
        return qtys[sym, side, i]
    return np.int64(0)
