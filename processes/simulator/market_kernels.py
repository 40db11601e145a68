"""Numba kernels of the simulated market: an exact integer L2 book and its order flow.

The book of one symbol is two tick-indexed ladders over a window of ``N``
ticks (``abs_tick = base + index``); quantities are integer lots (multiples of
the step size). Keeping everything integral makes the book that a client
rebuilds from snapshot + diffs comparable for exact equality.

Invariants the kernel keeps (a test checks them):
- both sides non-empty, ``best_bid < best_ask`` (spread >= 1 tick);
- every non-zero bid lies in ``[best_bid - D + 1, best_bid]`` and every
  non-zero ask in ``[best_ask, best_ask + D - 1]`` (``D`` = depth_levels); a
  level pushed out of that range by a better price is removed, and that removal
  is a book update like any other (so diffs report it with qty 0);
- every change of a level consumes one book update id, in order.

The kernel stops early (returning how many events it did) when the window is
about to overflow, the output arrays are nearly full or it ran out of random
numbers; the Python wrapper re-centres the window / refills and calls again.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

# st: int64 state vector of one symbol book.
ST_BASE = 0  # absolute tick of ladder index 0
ST_BB = 1  # best bid index
ST_BA = 2  # best ask index
ST_UID = 3  # last book update id used
ST_TID = 4  # last trade id used
ST_AID = 5  # last aggregate trade id used
ST_D = 6  # depth levels per side
ST_QMEAN = 7  # mean order size in lots
ST_TOP_BB = 8  # last reported top: bid index, bid qty, ask index, ask qty
ST_TOP_BBQ = 9
ST_TOP_BA = 10
ST_TOP_BAQ = 11
ST_SIZE = 12

# chg rows: one level change (absolute new quantity)
CHG_UID = 0
CHG_SIDE = 1  # SIDE_BID / SIDE_ASK
CHG_PRICE = 2  # absolute ticks
CHG_QTY = 3  # lots, 0 = level removed
CHG_COLS = 4

# trd rows: one trade (one maker fill)
TRD_ID = 0
TRD_PRICE = 1  # absolute ticks
TRD_QTY = 2  # lots
TRD_BUYER_MAKER = 3  # 1 when the taker sold (Binance "m": true)
TRD_AGG = 4  # aggregate trade id: same taker order and same price
TRD_TIME = 5  # trade time, ms since the Unix epoch
TRD_COLS = 6

# top rows: best bid/ask after a change of the top
TOP_UID = 0
TOP_BID = 1  # absolute ticks
TOP_BIDQ = 2
TOP_ASK = 3
TOP_ASKQ = 4
TOP_COLS = 5

SIDE_BID = 0
SIDE_ASK = 1

# counts: outputs of gen_events
CNT_CHG = 0
CNT_TRD = 1
CNT_TOP = 2
CNT_EVENTS = 3  # events attempted (the caller's budget)
CNT_RND = 4  # random numbers consumed
CNT_SIZE = 5

RND_PER_EVENT_MAX = 64  # worst case draws of one event (5 levels x 3 fills x 2 + a few)
CHG_PER_EVENT_MAX = 32  # worst case level changes of one event, trims excluded
MAX_SWEEP_LEVELS = 5  # a taker order walks at most this many levels
NEAR_MEAN_TICKS = 3.0  # mean distance from the top of "near" activity
CANCEL_SEARCH_TICKS = 3  # a cancel looks this far from the drawn price for a level
P_NEAR = 0.85  # share of adds/cancels near the top; the rest spread over the whole depth


@nb.njit(cache=True, inline="always")
def _dist(u1, u2, depth):
    """Distance from the top in ticks: mostly near (exponential), sometimes anywhere in the book."""
    if u1 < P_NEAR:
        return np.int64(-math.log(1.0 - u2) * NEAR_MEAN_TICKS)
    return np.int64(u2 * (depth - 1))


@nb.njit(cache=True, inline="always")
def _qty(u, qmean):
    q = np.int64(-math.log(1.0 - u) * qmean) + 1
    return q


@nb.njit(cache=True)
def _log_top(bid, ask, st, top, n_top):
    bb = st[ST_BB]
    ba = st[ST_BA]
    if bb != st[ST_TOP_BB] or bid[bb] != st[ST_TOP_BBQ] or ba != st[ST_TOP_BA] or ask[ba] != st[ST_TOP_BAQ]:
        st[ST_TOP_BB] = bb
        st[ST_TOP_BBQ] = bid[bb]
        st[ST_TOP_BA] = ba
        st[ST_TOP_BAQ] = ask[ba]
        base = st[ST_BASE]
        top[n_top, TOP_UID] = st[ST_UID]
        top[n_top, TOP_BID] = base + bb
        top[n_top, TOP_BIDQ] = bid[bb]
        top[n_top, TOP_ASK] = base + ba
        top[n_top, TOP_ASKQ] = ask[ba]
        return n_top + 1
    return n_top


@nb.njit(cache=True)
def _log_chg(st, chg, n_chg, side, idx, qty):
    st[ST_UID] += 1
    chg[n_chg, CHG_UID] = st[ST_UID]
    chg[n_chg, CHG_SIDE] = side
    chg[n_chg, CHG_PRICE] = st[ST_BASE] + idx
    chg[n_chg, CHG_QTY] = qty
    return n_chg + 1


@nb.njit(cache=True)
def gen_events(bid, ask, st, fair, p_add, p_cancel, rnd, ev_ms, n_events, chg, trd, top, counts):
    """Generate up to ``n_events`` order-flow events on one book.

    fair: the latent fair price as a (fractional) ladder index; adds cluster
    around it and takers lean towards it, so the book follows the random walk.
    ev_ms[i]: exchange time (ms) of event i. Outputs are appended at
    ``counts[CNT_*]``; returns the number of events done (== counts[CNT_EVENTS]).
    """
    n = bid.shape[0]
    depth = st[ST_D]
    qmean = float(st[ST_QMEAN])
    n_chg = counts[CNT_CHG]
    n_trd = counts[CNT_TRD]
    n_top = counts[CNT_TOP]
    ev = counts[CNT_EVENTS]
    r = counts[CNT_RND]
    while ev < n_events:
        bb = st[ST_BB]
        ba = st[ST_BA]
        # stop before the window, the outputs or the random numbers could overflow
        if bb - depth < 2 or ba + depth > n - 2:
            break
        if n_chg + CHG_PER_EVENT_MAX + (ba - bb) + 2 > chg.shape[0] or n_trd + 16 > trd.shape[0]:
            break
        if n_top + CHG_PER_EVENT_MAX + (ba - bb) + 2 > top.shape[0] or r + RND_PER_EVENT_MAX > rnd.shape[0]:
            break
        t_ms = ev_ms[ev]
        ev += 1
        kind = rnd[r]
        is_bid = rnd[r + 1] < 0.5
        u1 = rnd[r + 2]
        u2 = rnd[r + 3]
        u3 = rnd[r + 4]
        r += 5
        if kind < p_add:
            k = _dist(u1, u2, depth)
            q = _qty(u3, qmean)
            if is_bid:
                anchor = min(np.int64(math.floor(fair)), ba - 1)
                p = anchor - k
                if p <= bb - depth:
                    p = bb - (k % depth)
                bid[p] += q
                n_chg = _log_chg(st, chg, n_chg, SIDE_BID, p, bid[p])
                if p > bb:
                    # a better bid: levels now more than D below the top leave the book
                    for i in range(bb - depth + 1, p - depth + 1):
                        if bid[i] != 0:
                            bid[i] = 0
                            n_chg = _log_chg(st, chg, n_chg, SIDE_BID, i, 0)
                    st[ST_BB] = p
            else:
                anchor = max(np.int64(math.ceil(fair)), bb + 1)
                p = anchor + k
                if p >= ba + depth:
                    p = ba + (k % depth)
                ask[p] += q
                n_chg = _log_chg(st, chg, n_chg, SIDE_ASK, p, ask[p])
                if p < ba:
                    for i in range(p + depth, ba + depth):
                        if ask[i] != 0:
                            ask[i] = 0
                            n_chg = _log_chg(st, chg, n_chg, SIDE_ASK, i, 0)
                    st[ST_BA] = p
        elif kind < p_add + p_cancel:
            k = _dist(u1, u2, depth)
            if is_bid:
                p = bb - k
                if p <= bb - depth:
                    p = bb - (k % depth)
                # look for the order a few ticks around the drawn place; none there = no-op, so
                # cancels scale with how full the book is (an unlimited search would drain it)
                lim = max(p - CANCEL_SEARCH_TICKS, bb - depth + 1)
                while p > lim and bid[p] == 0:
                    p -= 1
                if bid[p] == 0:
                    continue
                have = bid[p]
                left = 0
                if u3 >= 0.5:  # partial cancel half of the time
                    left = have - _qty(rnd[r], qmean)
                    r += 1
                    if left < 0:
                        left = 0
                nxt = p
                if left == 0 and p == bb:
                    nxt = bb - 1
                    while nxt > bb - depth and bid[nxt] == 0:
                        nxt -= 1
                    if nxt <= bb - depth:
                        left = 1 if have > 1 else have  # never empty a side
                        if left == have:
                            continue
                bid[p] = left
                n_chg = _log_chg(st, chg, n_chg, SIDE_BID, p, left)
                if left == 0 and p == bb:
                    st[ST_BB] = nxt
            else:
                p = ba + k
                if p >= ba + depth:
                    p = ba + (k % depth)
                lim = min(p + CANCEL_SEARCH_TICKS, ba + depth - 1)
                while p < lim and ask[p] == 0:
                    p += 1
                if ask[p] == 0:
                    continue
                have = ask[p]
                left = 0
                if u3 >= 0.5:
                    left = have - _qty(rnd[r], qmean)
                    r += 1
                    if left < 0:
                        left = 0
                nxt = p
                if left == 0 and p == ba:
                    nxt = ba + 1
                    while nxt < ba + depth and ask[nxt] == 0:
                        nxt += 1
                    if nxt >= ba + depth:
                        left = 1 if have > 1 else have
                        if left == have:
                            continue
                ask[p] = left
                n_chg = _log_chg(st, chg, n_chg, SIDE_ASK, p, left)
                if left == 0 and p == ba:
                    st[ST_BA] = nxt
        else:
            # a taker order; it leans towards the fair price so the book follows the walk
            mid = 0.5 * (bb + ba)
            p_buy = 0.5 + 0.1 * (fair - mid)
            p_buy = min(0.9, max(0.1, p_buy))
            taker_buys = u1 < p_buy
            want = _qty(u2, qmean)
            for _lvl in range(MAX_SWEEP_LEVELS):
                if want <= 0:
                    break
                if taker_buys:
                    p = st[ST_BA]
                    have = ask[p]
                else:
                    p = st[ST_BB]
                    have = bid[p]
                # next level behind this one (to move the top, and to never empty a side)
                nxt = p
                if taker_buys:
                    nxt = p + 1
                    while nxt < p + depth and ask[nxt] == 0:
                        nxt += 1
                    last = nxt >= p + depth
                else:
                    nxt = p - 1
                    while nxt > p - depth and bid[nxt] == 0:
                        nxt -= 1
                    last = nxt <= p - depth
                take = min(want, have)
                if last and take == have:
                    take = have - 1
                if take <= 0:
                    break
                st[ST_AID] += 1
                # one taker order fills 1-3 maker orders at this price: 1-3 trades, one aggTrade
                uf = rnd[r]
                r += 1
                fills = 1
                if uf < 0.35:
                    fills = 2
                if uf < 0.12:
                    fills = 3
                if fills > take:
                    fills = take
                rest = take
                for f in range(fills):
                    if f == fills - 1:
                        part = rest
                    else:
                        part = np.int64(rest * (0.2 + 0.6 * rnd[r]))
                        r += 1
                        if part < 1:
                            part = 1
                        if part > rest - (fills - 1 - f):
                            part = rest - (fills - 1 - f)
                    rest -= part
                    st[ST_TID] += 1
                    trd[n_trd, TRD_ID] = st[ST_TID]
                    trd[n_trd, TRD_PRICE] = st[ST_BASE] + p
                    trd[n_trd, TRD_QTY] = part
                    trd[n_trd, TRD_BUYER_MAKER] = 0 if taker_buys else 1
                    trd[n_trd, TRD_AGG] = st[ST_AID]
                    trd[n_trd, TRD_TIME] = t_ms
                    n_trd += 1
                    if taker_buys:
                        ask[p] -= part
                        n_chg = _log_chg(st, chg, n_chg, SIDE_ASK, p, ask[p])
                        if ask[p] == 0:
                            st[ST_BA] = nxt
                    else:
                        bid[p] -= part
                        n_chg = _log_chg(st, chg, n_chg, SIDE_BID, p, bid[p])
                        if bid[p] == 0:
                            st[ST_BB] = nxt
                    n_top = _log_top(bid, ask, st, top, n_top)
                    if n_trd + 4 > trd.shape[0]:
                        break
                want -= take
                if take < have or n_trd + 4 > trd.shape[0]:
                    break
        n_top = _log_top(bid, ask, st, top, n_top)
    counts[CNT_CHG] = n_chg
    counts[CNT_TRD] = n_trd
    counts[CNT_TOP] = n_top
    counts[CNT_EVENTS] = ev
    counts[CNT_RND] = r
    return ev


@nb.njit(cache=True)
def snapshot_side(ladder, best, depth, direction, limit, base, out_price, out_qty):
    """Copy up to ``limit`` non-empty levels from ``best`` outwards (direction -1 bids, +1 asks).

    Returns the number of levels written (absolute ticks, lots).
    """
    n = 0
    i = best
    for _ in range(depth):
        if n >= limit:
            break
        if ladder[i] != 0:
            out_price[n] = base + i
            out_qty[n] = ladder[i]
            n += 1
        i += direction
    return n
