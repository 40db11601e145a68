"""Risk kernels: sizing, pre-trade checks, positions and P&L, stops, the circuit breaker.

The risk stage (``processes/risk.py``) calls ``risk_on_report``,
``risk_on_book`` and ``risk_on_signal`` from its one kernel per duty cycle,
reports first, then the book, then signals, so fills are always applied
before a new signal is judged. Everything is integer fixed point (1e-8)
except the analytics ratios (percentages, bps), which are float64.

Trading state (``st.hdr[H_STATE]``)
-----------------------------------
``ACTIVE``: everything allowed. ``REDUCE_ONLY``: only orders that shrink a
position (closes, exits, sells of inventory). ``HALTED``: nothing new; the
breaker or the operator put it there and only an operator command leaves it.

Sizing (``risk.sizing.mode``)
-----------------------------
``fixed_qty``: the signal's target quantity (the strategy's ``qty``), or
``sizing.qty`` when the signal has none. ``fixed_notional``:
``sizing.notional / ref_px``. ``volatility``: ``sizing.risk_per_trade /
(sizing.atr_mult * ATR)`` with the ATR the signal carries (no ATR yet: denied
``no_price``). The quantity is capped at ``max_order_qty`` and at what
``max_position`` leaves, then rounded DOWN to the lot step
(``core.filters.round_qty_down``); a limit price is rounded passively to the
tick. What ends below the venue's minimum quantity or notional is denied
``below_min``. A SELL on Spot needs inventory: it is capped at the long
position (``allow_short`` false, the default), and denied ``no_inventory``
when flat. CLOSE sends the whole position the other way, reduce-only.

Pre-trade checks (one small function each, returning a ``D_*`` reason)
-----------------------------------------------------------------------
State (``halted``, ``reduce_only``); book valid (``book_invalid``) and fresh
(``book_stale``: top older than ``max_staleness_ms``); clock offset within
``max_clock_offset_ms`` (``clock_offset``; execution feeds the offset);
``max_position`` per symbol; notional exposure per symbol and gross
(``max_symbol_notional`` / ``max_gross_notional``: |position| + open orders,
at the mid); ``max_open_positions``; ``max_open_orders``; order rate per
second and per 10 s (``rate_1s`` / ``rate_10s``: a ring of send times; the
10 s cap defaults below the venue's ORDERS limit); price band against the mid
(``price_band``, fat finger); estimated slippage from the book depth
(``slippage``: walk the last BK_DEPTH levels, plus a square-root impact term
``impact_k * sqrt(qty / depth)``); the venue's filters (``filter``:
``core.filters.check_order``). A denial is an ORDER_REQUEST with action
``ORD_DENIED`` and ``reason`` (the journal keeps it, execution ignores it)
and a counter by reason.

Positions and P&L (``core.pnl``)
--------------------------------
Every EX_TRADE report goes through ``pnl_apply`` (FIFO, LIFO and average side
by side); ``risk.pnl_method`` picks the one that drives limits, stops and the
breaker. The mark is the book mid. Open orders are tracked by
client_order_id from the moment risk sends them until a final report.

Stops (evaluated on every top of a symbol with a position)
----------------------------------------------------------
Static stop-loss and take-profit at ``stop_loss_pct`` / ``take_profit_pct``
from the average entry; trailing at ``trailing_stop_pct`` (or
``trailing_stop_abs``) from the best mid since entry. A trigger sends one
reduce-only MARKET exit for the whole position (origin STOP). Exits bypass
the opening limits (position, notional, open positions, band, slippage) but
not the rate limits or HALTED; there is never more than one exit working per
symbol (``exit_working`` until its final report), so never a double exit.

Circuit breaker (``risk.breaker``)
----------------------------------
Trips on daily loss (net P&L since the UTC day began below
``-max_daily_loss``), drawdown from peak equity (``capital`` + P&L) above
``max_drawdown_pct``, ``max_consecutive_rejects`` venue rejects in a row, a
reject rate above ``max_error_rate`` over the last 20 outcomes, the feed
stale for ``feed_stale_ms``, a book invalid for ``book_invalid_ms``, or
``latency_spikes`` consecutive tick-to-order latencies above
``latency_spike_us``. Tripping: HALTED, one ORD_CANCEL_ALL to execution
(origin KILL), an alert (the stage turns ``hdr[H_TRIP]`` into an event).
Only an operator command resets it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba as nb
import numpy as np

from core.filters import F_MIN_NOTIONAL, F_NOTIONAL, F_OK, check_order, round_price, round_qty_down
from core.pnl import (
    PNL_NA,
    PNL_OK,
    alloc_pnl_state,
    pnl_apply,
    pnl_avg_entry,
    pnl_position,
    pnl_total,
)
from core.records import (
    BK_DEPTH,
    BK_TOP,
    BOOK_VALID,
    DEPTH_LEVELS,
    EX_CANCELED,
    EX_EXPIRED,
    EX_NEW,
    EX_REJECTED,
    EX_TRADE,
    FIXED_SCALE,
    ORD_CANCEL_ALL,
    ORD_DENIED,
    ORD_NEW,
    ORIGIN_STRATEGY,
    OS_CANCELED,
    OS_EXPIRED,
    OS_FILLED,
    OS_REJECTED,
    OT_MARKET,
    SIDE_BUY,
    SIDE_CLOSE,
    SIDE_FLAT,
    SIDE_SELL,
)

# trading states
ACTIVE = 0
REDUCE_ONLY = 1
HALTED = 2
STATE_NAMES = ("ACTIVE", "REDUCE_ONLY", "HALTED")

# denial reasons (ORDER_REQUEST.reason of ORD_DENIED records; counters by reason)
D_OK = 0
D_HALTED = 1
D_REDUCE_ONLY = 2
D_BOOK_INVALID = 3
D_BOOK_STALE = 4
D_CLOCK = 5
D_MAX_POSITION = 6
D_SYMBOL_NOTIONAL = 7
D_GROSS_NOTIONAL = 8
D_OPEN_POSITIONS = 9
D_OPEN_ORDERS = 10
D_RATE_1S = 11
D_RATE_10S = 12
D_PRICE_BAND = 13
D_SLIPPAGE = 14
D_BELOW_MIN = 15
D_FILTER = 16
D_NO_INVENTORY = 17
D_NOTHING_TO_CLOSE = 18
D_EXIT_WORKING = 19
D_NO_PRICE = 20
D_TABLE_FULL = 21
D_UNKNOWN_SYMBOL = 22
D_IDS = 23  # no client order id reserved (the journal's id block ran out before housekeeping refilled it)
N_DENY = 24
DENY_NAMES = ("ok", "halted", "reduce_only", "book_invalid", "book_stale", "clock_offset", "max_position",
              "symbol_notional", "gross_notional", "open_positions", "open_orders", "rate_1s", "rate_10s",
              "price_band", "slippage", "below_min", "filter", "no_inventory", "nothing_to_close", "exit_working",
              "no_price", "order_table_full", "unknown_symbol", "ids_exhausted")

# breaker trip reasons (hdr[H_TRIP])
B_NONE = 0
B_DAILY_LOSS = 1
B_DRAWDOWN = 2
B_REJECTS = 3
B_ERROR_RATE = 4
B_FEED_STALE = 5
B_BOOK_INVALID = 6
B_LATENCY = 7
B_PNL = 8  # a fill core.pnl refused: positions no longer match the account
TRIP_NAMES = ("none", "daily_loss", "drawdown", "consecutive_rejects", "error_rate", "feed_stale", "book_invalid",
              "latency_spike", "pnl_refused")

SIZING_FIXED_QTY = 0
SIZING_FIXED_NOTIONAL = 1
SIZING_VOLATILITY = 2

# int64 parameters (lim[L_*]), fixed point where a price/qty/amount
(L_MAX_POSITION, L_MAX_ORDER_QTY, L_MAX_ORDER_NOTIONAL, L_MAX_SYMBOL_NOTIONAL, L_MAX_GROSS_NOTIONAL,
 L_MAX_OPEN_POSITIONS, L_MAX_OPEN_ORDERS, L_MAX_1S, L_MAX_10S, L_STALE_NS, L_MAX_CLOCK_MS, L_SIZING_MODE,
 L_SIZING_QTY, L_SIZING_NOTIONAL, L_RISK_PER_TRADE, L_ORDER_TYPE, L_PNL_METHOD, L_ALLOW_SHORT,
 L_MAX_DAILY_LOSS, L_CAPITAL, L_MAX_REJECTS, L_FEED_STALE_NS, L_BOOK_INVALID_NS, L_LATENCY_NS, L_LATENCY_N,
 L_TRAIL_ABS, L_TIF) = range(27)
N_LIM = 27
# float64 parameters (flim[FL_*])
(FL_PRICE_BAND_PCT, FL_MAX_SLIP_BPS, FL_IMPACT_K, FL_ATR_MULT, FL_LIMIT_OFFSET_BPS, FL_STOP_LOSS_PCT,
 FL_TAKE_PROFIT_PCT, FL_TRAIL_PCT, FL_MAX_DRAWDOWN_PCT, FL_MAX_ERROR_RATE) = range(10)
N_FLIM = 10

# per-symbol state (sy[sym, S_*], int64)
(S_BID, S_BID_QTY, S_ASK, S_ASK_QTY, S_TOP_NS, S_VALID, S_INVALID_SINCE, S_OPEN_ORDERS, S_OPEN_BUY, S_OPEN_SELL,
 S_EXIT_CID, S_BEST, S_DEPTH_SEEN) = range(13)
N_SY = 16

# global header (hdr[H_*], int64)
(H_STATE, H_TRIP, H_NEXT_CID, H_LAST_BOOK_NS, H_CONSEC_REJECTS, H_DAY, H_DAY_START_PNL, H_PEAK_EQUITY,
 H_CLOCK_MS, H_LAT_SPIKES, H_RATE_POS, H_OUTCOMES, H_REJECTS_WINDOW, H_ALERT, H_STARTED_NS, H_CID_END) = range(16)
N_HDR = 16

# open-order table (oo[i, O_*], int64); client_order_id 0 = free slot
O_CID, O_SYM, O_SIDE, O_QTY, O_FILLED, O_EXIT = range(6)
N_OO = 8

# counters (cnt[C_*]); denials by reason in deny[]
(C_SIGNALS, C_APPROVED, C_DENIED, C_EXITS, C_CANCEL_ALL, C_FILLS, C_REJECTS, C_PROBES, C_REPORTS_UNKNOWN,
 C_PNL_REFUSED) = range(10)
N_CNT = 12

RATE_RING = 1024  # send times kept for the 1 s / 10 s windows (max_orders_per_10s must be <= this)
WINDOW = 20  # outcomes in the reject-rate window


class RiskState(NamedTuple):
    lim: np.ndarray  # int64[N_LIM]
    flim: np.ndarray  # float64[N_FLIM]
    filters: np.ndarray  # int64[n_sym, core.filters.N_COLS]
    sy: np.ndarray  # int64[n_sym, N_SY]
    depth: np.ndarray  # int64[n_sym, 4, DEPTH_LEVELS]: bid px, bid qty, ask px, ask qty of the last BK_DEPTH
    oo: np.ndarray  # int64[capacity, N_OO]
    hdr: np.ndarray  # int64[N_HDR]
    rate: np.ndarray  # int64[RATE_RING]: send times (ns) of approved orders, a ring
    cnt: np.ndarray  # int64[N_CNT]
    deny: np.ndarray  # int64[N_DENY]
    trips: np.ndarray  # int64[len(TRIP_NAMES)]
    pnl: tuple  # core.pnl.PnlState
    fee_px: np.ndarray  # int64[n_fee_assets]: fee asset prices in quote (0: unknown) for net P&L


def new_risk_state(lim: np.ndarray, flim: np.ndarray, filters: np.ndarray, *, open_capacity: int = 256,
                   lot_capacity: int = 4096, first_cid: int = 1, cid_end: int = 1 << 62,
                   state: int = ACTIVE) -> RiskState:
    n = filters.shape[0]
    hdr = np.zeros(N_HDR, np.int64)
    hdr[H_STATE] = state
    hdr[H_NEXT_CID] = first_cid
    hdr[H_CID_END] = cid_end  # ids [next, end) are reserved for this process (processes.journal.IdReserver)
    hdr[H_DAY] = -1
    hdr[H_PEAK_EQUITY] = lim[L_CAPITAL]
    sy = np.zeros((n, N_SY), np.int64)
    sy[:, S_INVALID_SINCE] = -1
    return RiskState(lim=lim, flim=flim, filters=filters, sy=sy, depth=np.zeros((n, 4, DEPTH_LEVELS), np.int64),
                     oo=np.zeros((open_capacity, N_OO), np.int64), hdr=hdr, rate=np.zeros(RATE_RING, np.int64),
                     cnt=np.zeros(N_CNT, np.int64), deny=np.zeros(N_DENY, np.int64),
                     trips=np.zeros(len(TRIP_NAMES), np.int64), pnl=alloc_pnl_state(n, lot_capacity),
                     fee_px=np.zeros(8, np.int64))


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _notional(px, qty):
    """px * qty / 1e8 in quote fixed point, for |px|, |qty| well inside int64 (float product, then rounded):
    limits compare against it, so 1e-8 of quote never decides anything."""
    return np.int64(round(float(px) * float(qty) / FIXED_SCALE))


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _mid(sy, sym):
    if sy[sym, S_VALID] == 0 or sy[sym, S_BID] <= 0 or sy[sym, S_ASK] <= 0:
        return np.int64(0)
    return (sy[sym, S_BID] + sy[sym, S_ASK]) // 2


@nb.njit(cache=True, nogil=True, _nrt=False)
def position(st, sym):
    return pnl_position(st.pnl, sym)


@nb.njit(cache=True, nogil=True, _nrt=False)
def total_pnl(st):
    """Net P&L of all symbols by the configured method, marked to the mids (fixed point quote)."""
    tot = np.int64(0)
    m = st.lim[L_PNL_METHOD]
    for s in range(st.sy.shape[0]):
        v = pnl_total(st.pnl, s, m, _mid(st.sy, s), st.fee_px)
        if v != PNL_NA:
            tot += v
    return tot


@nb.njit(cache=True, nogil=True, _nrt=False)
def _open_positions(st):
    k = 0
    for s in range(st.sy.shape[0]):
        if pnl_position(st.pnl, s) != 0:
            k += 1
    return k


@nb.njit(cache=True, nogil=True, _nrt=False)
def _gross_notional(st):
    tot = np.int64(0)
    for s in range(st.sy.shape[0]):
        m = _mid(st.sy, s)
        p = pnl_position(st.pnl, s)
        q = (p if p > 0 else -p) + st.sy[s, S_OPEN_BUY] + st.sy[s, S_OPEN_SELL]
        if m > 0:
            tot += _notional(m, q)
    return tot


@nb.njit(cache=True, nogil=True, _nrt=False)
def _rate_counts(st, now_ns):
    """(orders sent in the last 1 s, in the last 10 s) from the ring of send times."""
    n1 = 0
    n10 = 0
    pos = st.hdr[H_RATE_POS]
    cap = st.rate.shape[0]
    for k in range(cap):
        i = (pos - 1 - k) % cap
        t = st.rate[i]
        if t == 0 or now_ns - t >= 10_000_000_000:
            break
        n10 += 1
        if now_ns - t < 1_000_000_000:
            n1 += 1
    return n1, n10


@nb.njit(cache=True, nogil=True, _nrt=False)
def est_slippage_bps(st, sym, side, qty):
    """Pre-trade estimate for a market order of ``qty``: walk the last depth snapshot from the far side (VWAP
    vs mid, bps) plus ``impact_k * sqrt(qty / depth shown)`` in bps; NaN without depth or mid."""
    m = _mid(st.sy, sym)
    if m <= 0 or st.sy[sym, S_DEPTH_SEEN] == 0 or qty <= 0:
        return np.nan
    px_row = 2 if side == SIDE_BUY else 0
    left = float(qty)
    cost = 0.0
    shown = 0.0
    last_px = 0.0
    for j in range(DEPTH_LEVELS):
        p = float(st.depth[sym, px_row, j])
        q = float(st.depth[sym, px_row + 1, j])
        if p <= 0.0 or q <= 0.0:
            break
        shown += q
        last_px = p
        take = q if q < left else left
        cost += take * p
        left -= take
    if shown <= 0.0:
        return np.nan
    if left > 0.0:  # deeper than shown: the rest at the last shown price
        cost += left * last_px
    vwap = cost / float(qty)
    walk = (vwap - m) / m * 1e4 if side == SIDE_BUY else (m - vwap) / m * 1e4
    return walk + st.flim[FL_IMPACT_K] * math.sqrt(float(qty) / shown) * 1e4


# ---------------------------------------------------------------------------
# the checks: each returns D_OK or a reason
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True, _nrt=False)
def check_state(st, reduce_only):
    s = st.hdr[H_STATE]
    if s == HALTED:
        return D_HALTED
    if s == REDUCE_ONLY and not reduce_only:
        return D_REDUCE_ONLY
    return D_OK


@nb.njit(cache=True, nogil=True, _nrt=False)
def check_book(st, sym, now_ns):
    if st.sy[sym, S_VALID] == 0 or _mid(st.sy, sym) <= 0:
        return D_BOOK_INVALID
    if now_ns - st.sy[sym, S_TOP_NS] > st.lim[L_STALE_NS]:
        return D_BOOK_STALE
    return D_OK


@nb.njit(cache=True, nogil=True, _nrt=False)
def check_clock(st):
    off = st.hdr[H_CLOCK_MS]
    return D_CLOCK if (off if off > 0 else -off) > st.lim[L_MAX_CLOCK_MS] else D_OK


@nb.njit(cache=True, nogil=True, _nrt=False)
def check_position(st, sym, side, qty):
    after = position(st, sym) + (qty if side == SIDE_BUY else -qty)
    pend = st.sy[sym, S_OPEN_BUY] if side == SIDE_BUY else st.sy[sym, S_OPEN_SELL]
    worst = (after + pend) if side == SIDE_BUY else (after - pend)
    return D_MAX_POSITION if (worst if worst > 0 else -worst) > st.lim[L_MAX_POSITION] else D_OK


@nb.njit(cache=True, nogil=True, _nrt=False)
def check_notional(st, sym, qty):
    m = _mid(st.sy, sym)
    p = position(st, sym)
    q = (p if p > 0 else -p) + st.sy[sym, S_OPEN_BUY] + st.sy[sym, S_OPEN_SELL] + qty
    if _notional(m, qty) > st.lim[L_MAX_ORDER_NOTIONAL] or _notional(m, q) > st.lim[L_MAX_SYMBOL_NOTIONAL]:
        return D_SYMBOL_NOTIONAL
    if _gross_notional(st) + _notional(m, qty) > st.lim[L_MAX_GROSS_NOTIONAL]:
        return D_GROSS_NOTIONAL
    return D_OK


@nb.njit(cache=True, nogil=True, _nrt=False)
def check_open_positions(st, sym):
    if position(st, sym) != 0:
        return D_OK  # adds to an open position: not a new one
    return D_OPEN_POSITIONS if _open_positions(st) >= st.lim[L_MAX_OPEN_POSITIONS] else D_OK


@nb.njit(cache=True, nogil=True, _nrt=False)
def check_open_orders(st):
    k = 0
    for i in range(st.oo.shape[0]):
        if st.oo[i, O_CID] != 0:
            k += 1
    return D_OPEN_ORDERS if k >= st.lim[L_MAX_OPEN_ORDERS] else D_OK


@nb.njit(cache=True, nogil=True, _nrt=False)
def check_rate(st, now_ns):
    n1, n10 = _rate_counts(st, now_ns)
    if n1 >= st.lim[L_MAX_1S]:
        return D_RATE_1S
    if n10 >= st.lim[L_MAX_10S]:
        return D_RATE_10S
    return D_OK


@nb.njit(cache=True, nogil=True, _nrt=False)
def check_band(st, sym, price):
    if price == 0:
        return D_OK  # market: no limit price
    m = _mid(st.sy, sym)
    dev = abs(float(price) - float(m)) / float(m) * 100.0
    return D_PRICE_BAND if dev > st.flim[FL_PRICE_BAND_PCT] else D_OK


@nb.njit(cache=True, nogil=True, _nrt=False)
def check_slippage(est_bps, max_bps):
    return D_SLIPPAGE if est_bps == est_bps and est_bps > max_bps else D_OK


# ---------------------------------------------------------------------------
# open orders
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True, _nrt=False)
def _oo_find(st, cid):
    for i in range(st.oo.shape[0]):
        if st.oo[i, O_CID] == cid:
            return i
    return -1


@nb.njit(cache=True, nogil=True, _nrt=False)
def _oo_add(st, cid, sym, side, qty, is_exit):
    i = _oo_find(st, 0)
    if i < 0:
        return False
    st.oo[i, O_CID] = cid
    st.oo[i, O_SYM] = sym
    st.oo[i, O_SIDE] = side
    st.oo[i, O_QTY] = qty
    st.oo[i, O_FILLED] = 0
    st.oo[i, O_EXIT] = 1 if is_exit else 0
    st.sy[sym, S_OPEN_ORDERS] += 1
    if side == SIDE_BUY:
        st.sy[sym, S_OPEN_BUY] += qty
    else:
        st.sy[sym, S_OPEN_SELL] += qty
    return True


@nb.njit(cache=True, nogil=True, _nrt=False)
def _oo_fill(st, i, qty):
    sym = st.oo[i, O_SYM]
    left = st.oo[i, O_QTY] - st.oo[i, O_FILLED]
    q = qty if qty < left else left
    st.oo[i, O_FILLED] += q
    if st.oo[i, O_SIDE] == SIDE_BUY:
        st.sy[sym, S_OPEN_BUY] -= q
    else:
        st.sy[sym, S_OPEN_SELL] -= q


@nb.njit(cache=True, nogil=True, _nrt=False)
def _oo_close(st, i):
    sym = st.oo[i, O_SYM]
    left = st.oo[i, O_QTY] - st.oo[i, O_FILLED]
    if st.oo[i, O_SIDE] == SIDE_BUY:
        st.sy[sym, S_OPEN_BUY] -= left
    else:
        st.sy[sym, S_OPEN_SELL] -= left
    st.sy[sym, S_OPEN_ORDERS] -= 1
    if st.sy[sym, S_EXIT_CID] == st.oo[i, O_CID]:
        st.sy[sym, S_EXIT_CID] = 0
    for j in range(N_OO):
        st.oo[i, j] = 0


@nb.njit(cache=True, nogil=True, _nrt=False)
def restore_order(st, cid, sym, side, qty, filled, is_exit):
    """Restart: an order the journal (or the orders ring) says is open, ``filled`` of ``qty`` done; an exit
    marks its symbol's exit as working again. False when the open-order table is full."""
    if not _oo_add(st, cid, sym, side, qty, is_exit):
        return False
    if filled > 0:
        _oo_fill(st, _oo_find(st, cid), filled)
    if is_exit:
        st.sy[sym, S_EXIT_CID] = cid
    return True


# ---------------------------------------------------------------------------
# the breaker
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True, _nrt=False)
def trip(st, reason):
    """HALTED with ``reason`` (first trip wins); returns True when this call tripped it."""
    if st.hdr[H_STATE] == HALTED and st.hdr[H_TRIP] != B_NONE:
        return False
    st.hdr[H_STATE] = HALTED
    st.hdr[H_TRIP] = reason
    st.hdr[H_ALERT] = 1
    st.trips[reason] += 1
    return True


@nb.njit(cache=True, nogil=True, _nrt=False)
def breaker_check(st, now_ns, exch_ms):
    """Evaluate the P&L, feed and book conditions; returns the trip reason or B_NONE."""
    pnl = total_pnl(st)
    day = exch_ms // 86_400_000 if exch_ms > 0 else st.hdr[H_DAY]
    if day != st.hdr[H_DAY]:
        st.hdr[H_DAY] = day
        st.hdr[H_DAY_START_PNL] = pnl
    if st.lim[L_MAX_DAILY_LOSS] > 0 and pnl - st.hdr[H_DAY_START_PNL] < -st.lim[L_MAX_DAILY_LOSS]:
        return B_DAILY_LOSS
    equity = st.lim[L_CAPITAL] + pnl
    if equity > st.hdr[H_PEAK_EQUITY]:
        st.hdr[H_PEAK_EQUITY] = equity
    peak = st.hdr[H_PEAK_EQUITY]
    if peak > 0 and st.flim[FL_MAX_DRAWDOWN_PCT] > 0 and \
            float(peak - equity) / float(peak) * 100.0 > st.flim[FL_MAX_DRAWDOWN_PCT]:
        return B_DRAWDOWN
    if st.hdr[H_STARTED_NS] > 0 and now_ns > 0:
        last = st.hdr[H_LAST_BOOK_NS] if st.hdr[H_LAST_BOOK_NS] > 0 else st.hdr[H_STARTED_NS]
        if st.lim[L_FEED_STALE_NS] > 0 and now_ns - last > st.lim[L_FEED_STALE_NS]:
            return B_FEED_STALE
        for s in range(st.sy.shape[0]):
            since = st.sy[s, S_INVALID_SINCE]
            if st.lim[L_BOOK_INVALID_NS] > 0 and since >= 0 and now_ns - since > st.lim[L_BOOK_INVALID_NS]:
                return B_BOOK_INVALID
    return B_NONE


# ---------------------------------------------------------------------------
# order records
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True, _nrt=False)
def _order(d, st, recv_ns, in_pub_ns, exch_ms, signal_id, sym, side, action, order_type, tif, price, qty, origin,
           reason, strategy, reduce_only, ref_px, slip):
    d.recv_ns = recv_ns
    d.pub_ns = 0
    d.in_pub_ns = in_pub_ns
    d.exch_ms = exch_ms
    if action == ORD_DENIED or action == 0:  # a denial or a trace probe: no venue order, no id
        d.client_order_id = 0
    else:
        d.client_order_id = st.hdr[H_NEXT_CID]
        st.hdr[H_NEXT_CID] += 1
    d.orig_client_order_id = 0
    d.signal_id = signal_id
    d.price = price
    d.qty = qty
    d.stop_px = 0
    d.symbol = sym
    d.side = side
    d.action = action
    d.order_type = order_type
    d.tif = tif
    d.origin = origin
    d.reason = reason
    d.strategy = strategy
    d.reduce_only = 1 if reduce_only else 0
    d.ref_px = ref_px
    d.est_slip_bps = slip
    return d.client_order_id


@nb.njit(cache=True, nogil=True, _nrt=False)
def _sent(st, now_ns):
    st.rate[st.hdr[H_RATE_POS] % st.rate.shape[0]] = now_ns
    st.hdr[H_RATE_POS] = (st.hdr[H_RATE_POS] + 1) % st.rate.shape[0]


@nb.njit(cache=True, nogil=True, _nrt=False)
def emit_cancel_all(st, d, now_ns, origin):
    """One ORD_CANCEL_ALL (symbol 0xFFFF = every symbol) for execution."""
    _order(d, st, now_ns, now_ns, 0, 0, 0xFFFF, SIDE_FLAT, ORD_CANCEL_ALL, 0, 0, 0, 0, origin, 0, 0, True, 0, np.nan)
    st.cnt[C_CANCEL_ALL] += 1


@nb.njit(cache=True, nogil=True, _nrt=False)
def emit_exit(st, d, sym, now_ns, recv_ns, in_pub_ns, exch_ms, origin):
    """A reduce-only MARKET order for the whole position of ``sym``; False when none can go (flat, an exit
    already working, halted, rate, below the lot) — then nothing is written."""
    pos = position(st, sym)
    if pos == 0 or st.sy[sym, S_EXIT_CID] != 0 or st.hdr[H_STATE] == HALTED:
        return False
    if st.hdr[H_NEXT_CID] >= st.hdr[H_CID_END]:
        st.deny[D_IDS] += 1
        return False
    if check_rate(st, now_ns) != D_OK:
        return False
    side = SIDE_SELL if pos > 0 else SIDE_BUY
    qty = round_qty_down(st.filters, sym, pos if pos > 0 else -pos, True)
    if qty <= 0:
        return False
    m = _mid(st.sy, sym)
    cid = _order(d, st, recv_ns, in_pub_ns, exch_ms, 0, sym, side, ORD_NEW, OT_MARKET, 0, 0, qty, origin, 0, 0,
                 True, m, est_slippage_bps(st, sym, side, qty))
    if not _oo_add(st, cid, sym, side, qty, True):
        st.deny[D_TABLE_FULL] += 1
        return False
    st.sy[sym, S_EXIT_CID] = cid
    _sent(st, now_ns)
    st.cnt[C_EXITS] += 1
    return True


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True, _nrt=False)
def risk_on_report(st, r):
    """Apply one EXEC_REPORT: fills to P&L and the open-order table, final states free the slot; counts
    venue rejects for the breaker. Returns a trip reason (B_NONE when none)."""
    i = _oo_find(st, r.client_order_id) if r.client_order_id != 0 else -1
    et = r.exec_type
    if et == 0:
        st.cnt[C_PROBES] += 1  # the pass-through execution's trace probe: no venue outcome
        return B_NONE
    if et == EX_TRADE:
        code = pnl_apply(st.pnl, r.symbol, r.side, r.last_px, r.last_qty, r.commission, r.commission_asset, 0)
        st.cnt[C_FILLS] += 1
        if i >= 0:
            _oo_fill(st, i, r.last_qty)
        if code != PNL_OK:
            st.cnt[C_PNL_REFUSED] += 1
            return B_PNL
    if et == EX_REJECTED:
        st.cnt[C_REJECTS] += 1
        st.hdr[H_CONSEC_REJECTS] += 1
        st.hdr[H_REJECTS_WINDOW] += 1
    elif et == EX_NEW or et == EX_TRADE:
        st.hdr[H_CONSEC_REJECTS] = 0
    if et == EX_NEW or et == EX_REJECTED:
        st.hdr[H_OUTCOMES] += 1
    if i < 0:
        if et != EX_TRADE:
            st.cnt[C_REPORTS_UNKNOWN] += 1
    elif r.status == OS_FILLED or r.status == OS_CANCELED or r.status == OS_REJECTED or r.status == OS_EXPIRED \
            or et == EX_CANCELED or et == EX_REJECTED or et == EX_EXPIRED:
        _oo_close(st, i)
    if st.lim[L_MAX_REJECTS] > 0 and st.hdr[H_CONSEC_REJECTS] >= st.lim[L_MAX_REJECTS]:
        return B_REJECTS
    if st.hdr[H_OUTCOMES] >= WINDOW:
        rate = float(st.hdr[H_REJECTS_WINDOW]) / float(st.hdr[H_OUTCOMES])
        st.hdr[H_OUTCOMES] = 0
        st.hdr[H_REJECTS_WINDOW] = 0
        if st.flim[FL_MAX_ERROR_RATE] > 0 and rate > st.flim[FL_MAX_ERROR_RATE]:
            return B_ERROR_RATE
    return B_NONE


@nb.njit(cache=True, nogil=True, _nrt=False)
def stop_triggered(st, sym):
    """True when the position of ``sym`` hit its stop-loss, take-profit or trailing stop at the current mid."""
    pos = position(st, sym)
    m = _mid(st.sy, sym)
    if pos == 0 or m <= 0:
        return False
    entry = pnl_avg_entry(st.pnl, sym, st.lim[L_PNL_METHOD])
    if entry == PNL_NA or entry <= 0:
        return False
    best = st.sy[sym, S_BEST]
    if best == 0 or (pos > 0 and m > best) or (pos < 0 and m < best):
        st.sy[sym, S_BEST] = m
        best = m
    move = (float(m) - float(entry)) / float(entry) * 100.0 * (1.0 if pos > 0 else -1.0)
    sl = st.flim[FL_STOP_LOSS_PCT]
    tp = st.flim[FL_TAKE_PROFIT_PCT]
    if sl > 0 and move <= -sl:
        return True
    if tp > 0 and move >= tp:
        return True
    back = float(best - m) if pos > 0 else float(m - best)  # how far the mid came back from its best
    tr = st.flim[FL_TRAIL_PCT]
    if tr > 0 and back / float(best) * 100.0 >= tr:
        return True
    ta = st.lim[L_TRAIL_ABS]
    if ta > 0 and back >= float(ta):
        return True
    return False


@nb.njit(cache=True, nogil=True, _nrt=False)
def risk_on_book(st, ev, now_ns):
    """Tops and depth for the mids, staleness, slippage and stops. Returns True when a stop wants an exit for
    ``ev.symbol`` (the caller emits it with ``emit_exit`` when it has room)."""
    sym = ev.symbol
    if sym >= st.sy.shape[0]:
        return False
    st.hdr[H_LAST_BOOK_NS] = now_ns
    if ev.kind == BK_TOP:
        valid = ev.state == BOOK_VALID and ev.top_bid_px > 0 and ev.top_ask_px > 0
        st.sy[sym, S_BID] = ev.top_bid_px
        st.sy[sym, S_BID_QTY] = ev.top_bid_qty
        st.sy[sym, S_ASK] = ev.top_ask_px
        st.sy[sym, S_ASK_QTY] = ev.top_ask_qty
        st.sy[sym, S_TOP_NS] = ev.recv_ns
        st.sy[sym, S_VALID] = 1 if valid else 0
        if valid:
            st.sy[sym, S_INVALID_SINCE] = -1
        elif st.sy[sym, S_INVALID_SINCE] < 0:
            st.sy[sym, S_INVALID_SINCE] = now_ns
        if valid and position(st, sym) != 0 and st.sy[sym, S_EXIT_CID] == 0:
            return stop_triggered(st, sym)
        if position(st, sym) == 0:
            st.sy[sym, S_BEST] = 0
    elif ev.kind == BK_DEPTH and ev.state == BOOK_VALID:
        for j in range(DEPTH_LEVELS):
            st.depth[sym, 0, j] = ev.d_bid_px[j]
            st.depth[sym, 1, j] = ev.d_bid_qty[j]
            st.depth[sym, 2, j] = ev.d_ask_px[j]
            st.depth[sym, 3, j] = ev.d_ask_qty[j]
        st.sy[sym, S_DEPTH_SEEN] = 1
    return False


@nb.njit(cache=True, nogil=True, _nrt=False)
def _size(st, s, sym, side, ref):
    """Unrounded quantity for an opening order (0: cannot size)."""
    mode = st.lim[L_SIZING_MODE]
    if mode == SIZING_FIXED_NOTIONAL:
        return np.int64(float(st.lim[L_SIZING_NOTIONAL]) / float(ref) * FIXED_SCALE)
    if mode == SIZING_VOLATILITY:
        atr = s.atr
        if not (atr == atr) or atr <= 0.0:
            return np.int64(0)
        risk = float(st.lim[L_RISK_PER_TRADE]) / FIXED_SCALE
        return np.int64(risk / (st.flim[FL_ATR_MULT] * atr) * FIXED_SCALE)
    return s.target_qty if s.target_qty > 0 else st.lim[L_SIZING_QTY]


@nb.njit(cache=True, nogil=True, _nrt=False)
def risk_on_signal(st, s, d, now_ns):
    """Judge one SIGNAL; writes exactly one ORDER_REQUEST into ``d`` (approved ORD_NEW, a trace probe, or
    ORD_DENIED with its reason) and returns the reason (D_OK when approved)."""
    st.cnt[C_SIGNALS] += 1
    sym = s.symbol
    if s.side == SIDE_FLAT:  # a trace probe: passes through as a probe order (action 0), never to a venue
        _order(d, st, s.recv_ns, s.pub_ns, s.exch_ms, s.signal_id, sym, 0, 0, 0, 0, 0, 0, ORIGIN_STRATEGY, 0,
               s.strategy, False, 0, np.nan)
        st.cnt[C_PROBES] += 1
        return D_OK
    reason = D_OK
    side = s.side
    qty = np.int64(0)
    price = np.int64(0)
    reduce_only = False
    ref = np.int64(0)
    slip = np.nan
    if sym >= st.sy.shape[0]:
        reason = D_UNKNOWN_SYMBOL
        sym = 0
    else:
        ref = _mid(st.sy, sym)
        pos = position(st, sym)
        if side == SIDE_CLOSE:
            reduce_only = True
            if pos == 0:
                reason = D_NOTHING_TO_CLOSE
            else:
                side = SIDE_SELL if pos > 0 else SIDE_BUY
                qty = pos if pos > 0 else -pos
        elif side == SIDE_SELL and st.lim[L_ALLOW_SHORT] == 0:
            if pos <= 0:
                reason = D_NO_INVENTORY
            else:
                reduce_only = True
                qty = pos
        elif side == SIDE_BUY and pos < 0:
            reduce_only = True
            qty = -pos
        if reason == D_OK:
            reason = check_state(st, reduce_only)
        if reason == D_OK:
            reason = check_book(st, sym, now_ns)
        if reason == D_OK:
            reason = check_clock(st)
        if reason == D_OK and reduce_only and st.sy[sym, S_EXIT_CID] != 0:
            reason = D_EXIT_WORKING
        if reason == D_OK and not reduce_only:
            q0 = _size(st, s, sym, side, ref)
            if q0 <= 0:
                reason = D_NO_PRICE
            else:
                if q0 > st.lim[L_MAX_ORDER_QTY]:
                    q0 = st.lim[L_MAX_ORDER_QTY]
                qty = q0
        if reason == D_OK:
            is_mkt = st.lim[L_ORDER_TYPE] == OT_MARKET
            qty = round_qty_down(st.filters, sym, qty, is_mkt)
            if not is_mkt:
                off = st.flim[FL_LIMIT_OFFSET_BPS] / 1e4
                raw = float(ref) * (1.0 + off) if side == SIDE_BUY else float(ref) * (1.0 - off)
                price = round_price(st.filters, sym, np.int64(raw), side)
            if qty <= 0:
                reason = D_BELOW_MIN
        if reason == D_OK and not reduce_only:
            reason = check_position(st, sym, side, qty)
            if reason == D_OK:
                reason = check_notional(st, sym, qty)
            if reason == D_OK:
                reason = check_open_positions(st, sym)
        if reason == D_OK:
            reason = check_open_orders(st)
        if reason == D_OK:
            reason = check_rate(st, now_ns)
        if reason == D_OK and not reduce_only:
            reason = check_band(st, sym, price)
        if reason == D_OK:
            slip = est_slippage_bps(st, sym, side, qty)
            if not reduce_only:
                reason = check_slippage(slip, st.flim[FL_MAX_SLIP_BPS])
        if reason == D_OK and st.hdr[H_NEXT_CID] >= st.hdr[H_CID_END]:
            reason = D_IDS
        if reason == D_OK:
            otype = st.lim[L_ORDER_TYPE]
            f = check_order(st.filters, sym, side, otype, price, qty, ref)
            if f != F_OK:  # under the venue's minimum quantity or notional is "below_min"; any other filter
                reason = D_BELOW_MIN if qty <= 0 or f == F_MIN_NOTIONAL or f == F_NOTIONAL else D_FILTER
    if reason != D_OK:
        _order(d, st, s.recv_ns, s.pub_ns, s.exch_ms, s.signal_id, sym, side if side != SIDE_CLOSE else 0,
               ORD_DENIED, 0, 0, price, qty, ORIGIN_STRATEGY, reason, s.strategy, reduce_only, ref, slip)
        st.cnt[C_DENIED] += 1
        st.deny[reason] += 1
        return reason
    otype = st.lim[L_ORDER_TYPE]
    tif = 0 if otype == OT_MARKET else st.lim[L_TIF]
    cid = _order(d, st, s.recv_ns, s.pub_ns, s.exch_ms, s.signal_id, sym, side, ORD_NEW, otype, tif, price, qty,
                 ORIGIN_STRATEGY, 0, s.strategy, reduce_only, ref, slip)
    if not _oo_add(st, cid, sym, side, qty, reduce_only):
        d.action = ORD_DENIED
        d.reason = D_TABLE_FULL
        d.client_order_id = 0
        st.cnt[C_DENIED] += 1
        st.deny[D_TABLE_FULL] += 1
        return D_TABLE_FULL
    if reduce_only:
        st.sy[sym, S_EXIT_CID] = cid
    _sent(st, now_ns)
    st.cnt[C_APPROVED] += 1
    lat = now_ns - s.recv_ns
    if st.lim[L_LATENCY_NS] > 0 and lat > st.lim[L_LATENCY_NS]:
        st.hdr[H_LAT_SPIKES] += 1
    else:
        st.hdr[H_LAT_SPIKES] = 0
    return D_OK
