"""The matching core: taker matching against an L2 book, and our resting orders' maker fills.

Shared by the exchange simulator (orders matched against its own book, which
takes the impact: ``deplete=True``) and by execution's paper-fill model
(orders matched against the live top-10 book, which our paper orders do not
move: ``deplete=False``). Kernels are pure functions over preallocated arrays
that return counts; ``MatchingEngine`` at the bottom is the thin Python
wrapper (allocation, argument checks, numpy views of the fills).

Units: prices, quantities, quote amounts and commissions are exact ``int64``
fixed point at ``FIXED_SCALE = 10**8`` (``core.fixedpoint``). Fee rates are
fixed point at the same scale: parts per 10**8 of the amount, so Binance's
``commissionRates`` strings parse straight into them (``"0.00100000"`` ->
``100_000`` = 0.1 %).

Taker matching (``match_taker``)
--------------------------------
The book is two arrays per side, best first (bids descending, asks
ascending), ``n`` levels used; a level whose qty is ``<= 0`` is empty and
skipped (that is what ``deplete`` leaves behind; ``compact_side`` squeezes
them out). A BUY takes asks, a SELL takes bids, always at the LEVEL's price,
best level first.

* MARKET by ``qty``: walks the book until filled. Book side runs out first:
  the rest expires (``OUT_EXPIRED_NO_LIQUIDITY``; with no fill at all when the
  side is empty). ``tif`` is ignored (Binance takes none for MARKET).
* MARKET by ``quoteOrderQty`` (``qty == 0``, ``quote_qty > 0``): spends up to
  ``quote_qty``. At each level it takes ``min(level qty, q)`` where ``q`` is
  the most the remaining quote buys at that price (``floor(rem*1e8/px)``)
  rounded DOWN to ``lot_step``; the quote spent is therefore never more than
  ``quote_qty``. It stops at the first level it cannot take in full: it never
  takes a worse price while a better one still has quantity (a SELL by quote
  could otherwise skip a level to fit one more lot lower down). Ends
  ``OUT_FILLED`` when the budget stopped it, or the book ran out with less
  left than one ``lot_step`` costs at the last price; otherwise (book side ran
  out, or the budget buys less than one lot at the best price)
  ``OUT_EXPIRED_NO_LIQUIDITY``.
* LIMIT: takes every level whose price is at least as good as ``limit_px``
  (buy: ``px <= limit``; sell: ``px >= limit``). The rest: GTC rests
  (``OUT_RESTING``, status NEW or PARTIALLY_FILLED), IOC expires
  (``OUT_EXPIRED_IOC``), FOK is checked first: if the crossing levels hold
  less than ``qty`` nothing trades (``OUT_EXPIRED_FOK``).
* LIMIT_MAKER: if the best opposite level crosses ``limit_px`` Binance rejects
  it (-2010 "Order would immediately match and take.":
  ``OUT_REJECTED_WOULD_TAKE``); otherwise it rests (``OUT_RESTING``).
* ``deplete``: the taken qty is subtracted from the book arrays in place.
* Our own resting orders are not part of the book arrays and never trade
  with our taker orders (no self-trade; Binance's STP would expire one).
* Bad arguments (qty/price <= 0, unknown side/type/tif, quote_qty on a LIMIT,
  both or neither of qty and quote_qty on a MARKET, fills arrays shorter than
  the side's ``n``) return ``OUT_INVALID`` and touch nothing.

Each fill's quote is ``floor(px*qty/1e8)``: exact whenever ``tick * step`` is a
multiple of 1e-8 (most symbols: BTCUSDT is 0.01 x 0.00001 = 1e-7); otherwise
the sub-1e-8 part is truncated per fill, as Binance truncates quote amounts to
the quote precision. An order's quote is the sum of its fills' quotes.
Truncating further to a coarser ``quoteAssetPrecision`` is the caller's job.

Resting orders
--------------
A preallocated table of ``RESTING_ORDER`` records (capacity fixed at
creation; freed slots go on a LIFO free list and are reused). A slot keeps its
last state (FILLED / CANCELED) until reused. Kernels scan slots ``[0, hwm)``
(the high-water mark: the most orders ever resting at once), then serve the
eligible ones from a binary heap in the preallocated scratch, so an event
costs O(hwm + m + fills * log m) for m eligible orders; the table is meant
for tens to low thousands of orders (see scripts/bench_matching.py).

Maker fills are at the order's OWN price, at the maker fee. Priority among our
orders on one side: better price first, then earlier arrival (``seq``); one
event's quantity is shared out in that order and never counted twice.

* ``on_trade``: a public trade (not one of ours). ``buyer_is_maker`` says the
  aggressor SOLD, so only our resting BUYs can be hit (else only SELLs).
  - ``QUEUE_TRADE_THROUGH`` (conservative, default): a buy at P fills only on
    a trade at a price strictly below P (a sell: strictly above), up to the
    trade's qty. A trade at exactly P never fills it (we assume we are last
    in the queue and the queue never empties on prints alone).
  - ``QUEUE_POSITION`` (hftbacktest's RiskAdverseQueueModel, exact integer
    version): ``queue_ahead`` starts as the displayed qty on our side at our
    price when the order rests (our own orders are not in the public book).
    A trade at exactly P is a FIFO sweep of that level: it first consumes the
    public qty ahead of each of our orders (in time order), then fills that
    order with what is left, then moves on. Each order's ``queue_ahead``
    drops by the public qty the trade consumed ahead of it. A trade through
    P fills us up to its qty, like the trade-through model, and sets
    ``queue_ahead`` to 0 (the level was swept). Through-priced orders (better
    price) are served before at-price ones.
* ``on_depth``: our side's level at P now shows ``new_qty``: ``queue_ahead =
  min(queue_ahead, new_qty)``. Why min and not "subtract the decrease": a
  decrease may be cancels behind us (no progress) or ahead of us; min is the
  pessimistic choice that is still consistent (what is displayed is an upper
  bound of what is ahead). It also cannot double count a trade already
  applied by ``on_trade`` (the later depth update shows the same decrease and
  min is idempotent). Increases never move us back. Returns orders changed;
  a depth change never fills (crossing is ``on_top``'s).
* ``on_top``: the public best bid/ask (0 = none). A resting buy at P with
  ``0 < best_ask <= P`` (a sell with ``best_bid >= P``) has been traded
  through: the market moved to or past our price, which cannot happen while
  our order still stands there, so its whole remainder fills at P (maker).
  ``best_ask == P`` counts: an ask at P means no bid is left at P, us
  included. Also a buy at P above the best bid (a sell below the best ask, or
  with no ask) has nothing displayed ahead of it: its queue_ahead becomes 0.
  Caveat for the paper model (``deplete=False``): a GTC LIMIT that took the
  crossing levels and rested its remainder still sees those levels in the
  live book, so the next ``on_top`` fills the remainder; callers that want
  otherwise should not rest such remainders.

Fees
----
Per fill, at the maker or taker rate. ``FEE_NATIVE`` (Binance without BNB):
a BUY pays in the base asset, ``qty * rate``; a SELL pays in the quote
asset, ``quote * rate`` (the fill's quote as above). ``FEE_SEPARATE`` (a fee
asset such as BNB): ``quote * rate`` for both sides, in quote terms, asset
``FEE_ASSET_OTHER`` (converting to the fee asset is the caller's). Rounding:
UP to 1e-8 (``ceil(amount * rate / 1e8)``), so a simulated venue never
charges less than an exact fee; with ``rate == 0`` it is 0.

Integer bounds
--------------
``quote_of(px, qty)`` uses ``core.bars.mul_fixed``, which splits each factor
as ``x = xh*1e8 + xl`` so that no partial product exceeds the result: it is exact for all ``px, qty >= 0`` whose true quote
``px*qty/1e8`` fits int64, i.e. a notional up to 92,233,720,368.54775807
quote units (e.g. 1e6 USDT/BTC x 92,233 BTC). The same holds for sums: an
order's quote, and a commission (rate <= 1e8). ``qty_for_quote(quote, px)``
(``floor(quote*1e8/px)``) is exact for ``quote >= 0`` and ``0 < px <=
9.2e17`` (prices up to 9.2e9 quote units), saturating at ``INT64_MAX // 1e8``
whole units. The kernels do not check these bounds (a division per fill on the
hot path); ``MatchingEngine.submit`` checks ``price*qty`` and the highest
price a fill can have times ``qty`` with Python integers, and raises
``ValueError`` past them.

Allocation: the entry kernels are compiled with ``_nrt=False``, so numba
refuses to compile any of them (or what they call) if it allocated.
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np

from core.bars import mul_fixed
from core.errors import ConfigError
from core.records import (
    FIXED_SCALE,
    INT64_MAX,
    OS_CANCELED,
    OS_EXPIRED,
    OS_FILLED,
    OS_NEW,
    OS_PARTIALLY_FILLED,
    OS_REJECTED,
    OT_LIMIT,
    OT_LIMIT_MAKER,
    OT_MARKET,
    SIDE_BUY,
    SIDE_SELL,
    TIF_FOK,
    TIF_GTC,
    TIF_IOC,
)

# ---------------------------------------------------------------------------
# Constants (integers: they are used inside kernels)
# ---------------------------------------------------------------------------
# Outcome of a taker match / a submit
OUT_FILLED = 1  # fully filled (status FILLED)
OUT_RESTING = 2  # GTC LIMIT / LIMIT_MAKER remainder rests (status NEW or PARTIALLY_FILLED)
OUT_EXPIRED_IOC = 3  # IOC remainder expired, maybe after fills (Binance UNFILLED_IOC_QUANTITY_EXPIRED)
OUT_EXPIRED_FOK = 4  # FOK not fully fillable: nothing traded (Binance UNFILLED_FOK_ORDER_EXPIRED)
OUT_EXPIRED_NO_LIQUIDITY = 5  # MARKET remainder expired: side ran out / empty, or quote < one lot
OUT_REJECTED_WOULD_TAKE = 6  # LIMIT_MAKER would cross: -2010 "Order would immediately match and take."
OUT_REJECTED_DUPLICATE = 7  # submit: order id already resting (-2010 "Duplicate order sent.")
OUT_REJECTED_TABLE_FULL = 8  # submit: the order could rest and no slot is free (like MAX_NUM_ORDERS)
OUT_INVALID = 9  # bad arguments; nothing was touched

OUTCOME_NAMES = {
    OUT_FILLED: "FILLED", OUT_RESTING: "RESTING", OUT_EXPIRED_IOC: "EXPIRED_IOC",
    OUT_EXPIRED_FOK: "EXPIRED_FOK", OUT_EXPIRED_NO_LIQUIDITY: "EXPIRED_NO_LIQUIDITY",
    OUT_REJECTED_WOULD_TAKE: "REJECTED_WOULD_TAKE", OUT_REJECTED_DUPLICATE: "REJECTED_DUPLICATE",
    OUT_REJECTED_TABLE_FULL: "REJECTED_TABLE_FULL", OUT_INVALID: "INVALID",
}

# Queue models (MatchingEngine(queue_model=...), stored in the header)
QUEUE_TRADE_THROUGH = 0  # conservative: fills only on trades through our price
QUEUE_POSITION = 1  # queue_ahead estimate: at-price trades consume it, then fill us

# Fee modes
FEE_NATIVE = 0  # buy pays base (qty*rate), sell pays quote (quote*rate): Binance without BNB
FEE_SEPARATE = 1  # quote*rate for both sides, in a separate fee asset (amount in quote terms)

# Commission asset codes: the values of EXEC_REPORT.commission_asset (core.records)
FEE_ASSET_QUOTE = 0
FEE_ASSET_BASE = 1
FEE_ASSET_OTHER = 2

# rest_order results besides a slot >= 0
REST_TABLE_FULL = -1
REST_INVALID = -2

_S = np.int64(FIXED_SCALE)
_QFQ_WHOLE_MAX = np.int64(INT64_MAX // FIXED_SCALE)  # qty_for_quote saturates at this many whole units
_QUOTE_MAX = INT64_MAX  # largest quote (1e-8 units) the kernels compute exactly

# ---------------------------------------------------------------------------
# Records (this module's own state; declared once here, checked at import)
# ---------------------------------------------------------------------------
RESTING_ORDER = np.dtype([
    ("order_id", np.int64),  # caller's id (client order id); unique among resting orders
    ("price", np.int64),  # limit price, fixed point
    ("qty", np.int64),  # original qty, fixed point
    ("filled", np.int64),  # cumulative filled qty (taker part included)
    ("quote_filled", np.int64),  # cumulative quote of the fills (sum of per-fill floor(px*qty))
    ("commission", np.int64),  # cumulative commission, in the order's commission asset
    ("queue_ahead", np.int64),  # public qty estimated ahead of us at our price (QUEUE_POSITION)
    ("seq", np.int64),  # arrival sequence (time priority), from the header's next_seq
    ("next_free", np.int64),  # free-list link while the slot is free (-1: end)
    ("symbol", np.uint16),  # instrument id
    ("side", np.int8),  # SIDE_BUY / SIDE_SELL
    ("status", np.uint8),  # OS_NEW / OS_PARTIALLY_FILLED while live; OS_FILLED / OS_CANCELED after
    ("live", np.uint8),  # 1 while resting
], align=True)

FILL = np.dtype([
    ("order_id", np.int64),  # the order that traded
    ("px", np.int64),  # fill price (taker: the level's; maker: the order's own)
    ("qty", np.int64),  # fill qty
    ("quote", np.int64),  # floor(px*qty/1e8)
    ("commission", np.int64),  # this fill's commission, rounded up to 1e-8
    ("cum_qty", np.int64),  # the order's filled qty after this fill
    ("cum_quote", np.int64),  # the order's quote after this fill
    ("symbol", np.uint16),  # instrument id
    ("side", np.int8),  # the ORDER's side
    ("is_maker", np.uint8),  # 1 resting-order fill, 0 taker fill
    ("status", np.uint8),  # order status after this fill: OS_PARTIALLY_FILLED / OS_FILLED
    ("commission_asset", np.uint8),  # FEE_ASSET_*
], align=True)

MATCH_HEADER = np.dtype([
    ("queue_model", np.int64),  # QUEUE_*
    ("maker_rate", np.int64),  # maker fee, parts per 1e8
    ("taker_rate", np.int64),  # taker fee, parts per 1e8
    ("fee_mode", np.int64),  # FEE_NATIVE / FEE_SEPARATE
    ("free_head", np.int64),  # first free slot, -1 when full
    ("hwm", np.int64),  # slots [0, hwm) have been used: kernels scan these
    ("n_live", np.int64),  # resting orders
    ("next_seq", np.int64),  # next arrival sequence number
    ("out_full", np.int64),  # events dropped whole because fills_out was too short
], align=True)

for _name, _dt, _size in (("RESTING_ORDER", RESTING_ORDER, 80), ("FILL", FILL, 64), ("MATCH_HEADER", MATCH_HEADER, 72)):
    if _dt.itemsize != _size:
        raise ImportError(f"matching.{_name} layout drifted: itemsize {_dt.itemsize}, expected {_size}")


class MatchState(NamedTuple):
    """The kernels' one state argument: preallocated arrays only (a plain numba tuple type)."""

    orders: np.ndarray  # RESTING_ORDER[capacity]
    hdr: np.ndarray  # MATCH_HEADER[1]
    scratch: np.ndarray  # int64[capacity]: slots of one event's eligible orders, in priority order
    take_px: np.ndarray  # int64[max_levels]: taker fill prices of one submit
    take_qty: np.ndarray  # int64[max_levels]: taker fill qtys of one submit


def alloc_match_state(capacity: int, *, queue_model: int = QUEUE_TRADE_THROUGH, maker_rate: int = 0,
                      taker_rate: int = 0, fee_mode: int = FEE_NATIVE, max_levels: int = 8192) -> MatchState:
    """Allocate and initialise the table (all slots free, linked 0 -> 1 -> ... -> -1)."""
    orders = np.zeros(capacity, dtype=RESTING_ORDER)
    orders["next_free"] = np.arange(1, capacity + 1, dtype=np.int64)
    orders["next_free"][-1] = -1
    hdr = np.zeros(1, dtype=MATCH_HEADER)
    hdr[0]["queue_model"] = queue_model
    hdr[0]["maker_rate"] = maker_rate
    hdr[0]["taker_rate"] = taker_rate
    hdr[0]["fee_mode"] = fee_mode
    hdr[0]["free_head"] = 0
    return MatchState(orders=orders, hdr=hdr, scratch=np.zeros(capacity, np.int64),
                      take_px=np.zeros(max_levels, np.int64), take_qty=np.zeros(max_levels, np.int64))


# ---------------------------------------------------------------------------
# Arithmetic kernels
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True, inline="always")
def quote_of(px, qty):
    """``floor(px*qty/1e8)``: the quote of one fill, exact below the documented bound."""
    whole, _rem = mul_fixed(px, qty)
    return whole


@nb.njit(cache=True, nogil=True)
def qty_for_quote(quote, px):
    """``floor(quote*1e8/px)``: the most qty that ``quote`` buys at ``px`` (``quote >= 0``, ``px > 0``).

    Long division so ``quote*1e8`` never forms: ``quote = a*px + b`` with
    ``b < px``; the result is ``a*1e8 + floor(b*1e8/px)``. The second term is
    one division when ``b*1e8`` fits, else eight decimal digits (``b*10`` fits
    for ``px <= INT64_MAX/10``). Saturates at ``(INT64_MAX // 1e8) * 1e8``.
    """
    a = quote // px
    if a >= _QFQ_WHOLE_MAX:
        return _QFQ_WHOLE_MAX * _S
    b = quote - a * px
    if b <= INT64_MAX // _S:
        return a * _S + (b * _S) // px
    frac = np.int64(0)
    for _ in range(8):
        b *= 10
        d = b // px
        b -= d * px
        frac = frac * 10 + d
    return a * _S + frac


@nb.njit(cache=True, nogil=True)
def commission_of(side, qty, quote, rate, fee_mode):
    """(amount, asset) of one fill's commission, rounded UP to 1e-8 (see the module docstring)."""
    if fee_mode == FEE_SEPARATE:
        base = quote
        asset = FEE_ASSET_OTHER
    elif side == SIDE_BUY:
        base = qty
        asset = FEE_ASSET_BASE
    else:
        base = quote
        asset = FEE_ASSET_QUOTE
    whole, rem = mul_fixed(base, rate)
    if rem > 0:
        whole += 1
    return whole, asset


@nb.njit(cache=True, nogil=True)
def outcome_status(outcome, filled_qty):
    """The order status (OS_*) an outcome leaves the order in."""
    if outcome == OUT_FILLED:
        return OS_FILLED
    if outcome == OUT_RESTING:
        return OS_PARTIALLY_FILLED if filled_qty > 0 else OS_NEW
    if outcome == OUT_EXPIRED_IOC or outcome == OUT_EXPIRED_FOK or outcome == OUT_EXPIRED_NO_LIQUIDITY:
        return OS_EXPIRED
    return OS_REJECTED


# ---------------------------------------------------------------------------
# Book helpers
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True)
def level_qty_at(px, qty, n, price):
    """The qty shown at ``price`` on one side (0 if no such level)."""
    for i in range(n):
        if px[i] == price:
            return qty[i] if qty[i] > 0 else np.int64(0)
    return np.int64(0)


@nb.njit(cache=True, nogil=True)
def compact_side(px, qty, n):
    """Squeeze out empty (qty <= 0) levels, keeping order; returns the new n."""
    j = 0
    for i in range(n):
        if qty[i] > 0:
            px[j] = px[i]
            qty[j] = qty[i]
            j += 1
    return j


# ---------------------------------------------------------------------------
# Taker matching
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True, inline="always")
def _crosses(side, level_px, limit_px):
    if side == SIDE_BUY:
        return level_px <= limit_px
    return level_px >= limit_px


@nb.njit(cache=True, nogil=True)
def _match_side(px, lq, n, side, order_type, tif, limit_px, qty, quote_qty, lot_step, deplete, fills_px, fills_qty):
    if n < 0 or n > px.shape[0] or n > lq.shape[0] or n > fills_px.shape[0] or n > fills_qty.shape[0]:
        return 0, np.int64(0), np.int64(0), OUT_INVALID
    is_market = order_type == OT_MARKET
    by_quote = is_market and quote_qty > 0
    if is_market:
        if (qty > 0) == (quote_qty > 0) or qty < 0 or quote_qty < 0 or (by_quote and lot_step <= 0):
            return 0, np.int64(0), np.int64(0), OUT_INVALID
    elif order_type == OT_LIMIT or order_type == OT_LIMIT_MAKER:
        if qty <= 0 or limit_px <= 0 or quote_qty != 0:
            return 0, np.int64(0), np.int64(0), OUT_INVALID
        if order_type == OT_LIMIT and tif != TIF_GTC and tif != TIF_IOC and tif != TIF_FOK:
            return 0, np.int64(0), np.int64(0), OUT_INVALID
    else:
        return 0, np.int64(0), np.int64(0), OUT_INVALID

    if order_type == OT_LIMIT_MAKER:
        for i in range(n):
            if lq[i] > 0:
                if _crosses(side, px[i], limit_px):
                    return 0, np.int64(0), np.int64(0), OUT_REJECTED_WOULD_TAKE
                break
        return 0, np.int64(0), np.int64(0), OUT_RESTING

    if order_type == OT_LIMIT and tif == TIF_FOK:
        avail = np.int64(0)
        for i in range(n):
            if lq[i] <= 0:
                continue
            if not _crosses(side, px[i], limit_px):
                break
            avail += lq[i]
            if avail >= qty:
                break
        if avail < qty:
            return 0, np.int64(0), np.int64(0), OUT_EXPIRED_FOK

    k = 0
    filled = np.int64(0)
    quote = np.int64(0)
    rem = qty
    qrem = quote_qty
    budget_stop = False
    last_px = np.int64(0)
    for i in range(n):
        level = lq[i]
        if level <= 0:
            continue
        p = px[i]
        if not is_market and not _crosses(side, p, limit_px):
            break
        if by_quote:
            afford = qty_for_quote(qrem, p)
            afford -= afford % lot_step
            take = level if level < afford else afford
            if take <= 0:
                budget_stop = True
                break
        else:
            take = level if level < rem else rem
        fills_px[k] = p
        fills_qty[k] = take
        k += 1
        filled += take
        q = quote_of(p, take)
        quote += q
        last_px = p
        if deplete:
            lq[i] = level - take
        if by_quote:
            qrem -= q
            if take < level:
                budget_stop = True
                break
        else:
            rem -= take
            if rem == 0:
                break

    if by_quote:
        if k > 0 and (budget_stop or quote_of(last_px, lot_step) > qrem):
            return k, filled, quote, OUT_FILLED
        return k, filled, quote, OUT_EXPIRED_NO_LIQUIDITY
    if rem == 0:
        return k, filled, quote, OUT_FILLED
    if is_market:
        return k, filled, quote, OUT_EXPIRED_NO_LIQUIDITY
    if tif == TIF_GTC:
        return k, filled, quote, OUT_RESTING
    return k, filled, quote, OUT_EXPIRED_IOC


@nb.njit(cache=True, nogil=True, _nrt=False)
def match_taker(bid_px, bid_qty, n_bid, ask_px, ask_qty, n_ask, side, order_type, tif, limit_px, qty, quote_qty,
                lot_step, deplete, fills_px, fills_qty):
    """Match one taker order against an L2 book (see the module docstring for the rules).

    Writes fill prices and qtys to ``fills_px[:n]``, ``fills_qty[:n]`` (they
    must hold at least the side's ``n`` levels). ``qty`` 0 with ``quote_qty >
    0`` is a MARKET order by quoteOrderQty; ``lot_step`` is used only by
    those. With ``deplete`` the book arrays lose the taken qty.
    Returns ``(n_fills, filled_qty, filled_quote, outcome)``.
    """
    if side == SIDE_BUY:
        return _match_side(ask_px, ask_qty, n_ask, side, order_type, tif, limit_px, qty, quote_qty, lot_step,
                           deplete, fills_px, fills_qty)
    if side == SIDE_SELL:
        return _match_side(bid_px, bid_qty, n_bid, side, order_type, tif, limit_px, qty, quote_qty, lot_step,
                           deplete, fills_px, fills_qty)
    return 0, np.int64(0), np.int64(0), OUT_INVALID


# ---------------------------------------------------------------------------
# Resting orders
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True)
def find_order(st, order_id):
    """Slot of the resting order ``order_id``, or -1."""
    orders = st.orders
    for s in range(st.hdr[0].hwm):
        if orders[s].live != 0 and orders[s].order_id == order_id:
            return s
    return -1


@nb.njit(cache=True, nogil=True)
def _free_slot(st, s):
    h = st.hdr[0]
    o = st.orders[s]
    o.live = 0
    o.next_free = h.free_head
    h.free_head = s
    h.n_live -= 1


@nb.njit(cache=True, nogil=True, _nrt=False)
def rest_order(st, order_id, symbol, side, price, qty, filled, quote_filled, commission, queue_ahead):
    """Put an order on the table (it arrives now: time priority after every resting order).

    ``filled``/``quote_filled``/``commission`` carry a taker part already
    traded; ``queue_ahead`` is the displayed qty on our side at ``price``.
    Returns the slot, ``REST_TABLE_FULL`` or ``REST_INVALID`` (bad side,
    price/qty <= 0, nothing left to rest). Does not check duplicate ids
    (``submit_order`` does).
    """
    if (side != SIDE_BUY and side != SIDE_SELL) or price <= 0 or qty <= 0 or filled < 0 or filled >= qty:
        return REST_INVALID
    h = st.hdr[0]
    s = h.free_head
    if s < 0:
        return REST_TABLE_FULL
    o = st.orders[s]
    h.free_head = o.next_free
    o.order_id = order_id
    o.price = price
    o.qty = qty
    o.filled = filled
    o.quote_filled = quote_filled
    o.commission = commission
    o.queue_ahead = queue_ahead if queue_ahead > 0 else 0
    o.seq = h.next_seq
    h.next_seq += 1
    o.next_free = -1
    o.symbol = symbol
    o.side = side
    o.status = OS_PARTIALLY_FILLED if filled > 0 else OS_NEW
    o.live = 1
    if s >= h.hwm:
        h.hwm = s + 1
    h.n_live += 1
    return s


@nb.njit(cache=True, nogil=True, _nrt=False)
def cancel_order(st, order_id):
    """Cancel a resting order: status CANCELED, slot freed (its record stays readable). Slot or -1."""
    s = find_order(st, order_id)
    if s >= 0:
        st.orders[s].status = OS_CANCELED
        _free_slot(st, s)
    return s


@nb.njit(cache=True, nogil=True, inline="always")
def _ahead(orders, a, b, side):
    """True if slot a has priority over slot b (same side): better price, then earlier arrival."""
    pa = orders[a].price
    pb = orders[b].price
    if pa != pb:
        return pa > pb if side == SIDE_BUY else pa < pb
    return orders[a].seq < orders[b].seq


@nb.njit(cache=True, nogil=True)
def _sift_down(orders, heap, root, end, side):
    """Restore the heap property below ``root`` in ``heap[:end]`` (the top has the highest priority)."""
    while True:
        child = 2 * root + 1
        if child >= end:
            return
        if child + 1 < end and _ahead(orders, heap[child + 1], heap[child], side):
            child += 1
        if not _ahead(orders, heap[child], heap[root], side):
            return
        t = heap[root]
        heap[root] = heap[child]
        heap[child] = t
        root = child


@nb.njit(cache=True, nogil=True)
def _heapify(orders, heap, m, side):
    for root in range((m - 2) // 2, -1, -1):
        _sift_down(orders, heap, root, m, side)


@nb.njit(cache=True, nogil=True)
def _heap_pop(orders, heap, m, side):
    """Remove and return the highest-priority slot of ``heap[:m]``; ``heap[:m-1]`` stays a heap."""
    top = heap[0]
    heap[0] = heap[m - 1]
    _sift_down(orders, heap, 0, m - 1, side)
    return top


@nb.njit(cache=True, nogil=True)
def _write_fill(fill, order_id, symbol, side, px, qty, quote, commission, asset, cum_qty, cum_quote, is_maker,
                status):
    fill.order_id = order_id
    fill.px = px
    fill.qty = qty
    fill.quote = quote
    fill.commission = commission
    fill.commission_asset = asset
    fill.cum_qty = cum_qty
    fill.cum_quote = cum_quote
    fill.symbol = symbol
    fill.side = side
    fill.is_maker = is_maker
    fill.status = status


@nb.njit(cache=True, nogil=True)
def _maker_fill(st, s, take, fills_out, k):
    """Fill ``take`` of resting slot s at its own price (maker); write fills_out[k]; free it when done."""
    h = st.hdr[0]
    o = st.orders[s]
    q = quote_of(o.price, take)
    comm, asset = commission_of(o.side, take, q, h.maker_rate, h.fee_mode)
    o.filled += take
    o.quote_filled += q
    o.commission += comm
    done = o.filled >= o.qty
    o.status = OS_FILLED if done else OS_PARTIALLY_FILLED
    _write_fill(fills_out[k], o.order_id, o.symbol, o.side, o.price, take, q, comm, asset, o.filled,
                o.quote_filled, 1, o.status)
    if done:
        _free_slot(st, s)
    return k + 1


@nb.njit(cache=True, nogil=True, _nrt=False)
def on_trade(st, symbol, trade_px, trade_qty, buyer_is_maker, fills_out):
    """A public trade: maker fills of our resting orders into ``fills_out``; returns how many.

    Rules in the module docstring (queue models, priority, sharing the trade's
    qty). If ``fills_out`` is shorter than the number of eligible orders the
    event is dropped whole (nothing changes), ``hdr.out_full`` counts it and 0
    is returned: size it to the table's capacity to make that impossible.
    """
    if trade_qty <= 0 or trade_px <= 0:
        return 0
    h = st.hdr[0]
    orders = st.orders
    scratch = st.scratch
    by_queue = h.queue_model == QUEUE_POSITION
    side = SIDE_BUY if buyer_is_maker else SIDE_SELL
    m = 0
    for s in range(h.hwm):
        o = orders[s]
        if o.live == 0 or o.side != side or o.symbol != symbol:
            continue
        p = o.price
        through = p > trade_px if side == SIDE_BUY else p < trade_px
        if through or (by_queue and p == trade_px):
            scratch[m] = s
            m += 1
    if m == 0:
        return 0
    if m > fills_out.shape[0]:
        h.out_full += 1
        return 0
    # Serve in priority order (a heap: O(m + fills * log m)) while the trade has qty left.
    _heapify(orders, scratch, m, side)
    rem = trade_qty
    pub = np.int64(0)  # public qty at trade_px this trade consumed so far (ahead of the order at hand)
    k = 0
    while m > 0 and rem > 0:
        s = _heap_pop(orders, scratch, m, side)
        m -= 1
        o = orders[s]
        if o.price != trade_px:  # traded through: the level was swept
            o.queue_ahead = 0
        else:
            need = o.queue_ahead - pub
            if need > 0:
                t = need if need < rem else rem
                pub += t
                rem -= t
            qa = o.queue_ahead - pub
            o.queue_ahead = qa if qa > 0 else 0
        leaves = o.qty - o.filled
        take = leaves if leaves < rem else rem
        if take > 0:
            rem -= take
            k = _maker_fill(st, s, take, fills_out, k)
    # The trade is used up: the others only see the public qty it consumed ahead of them (order-free).
    for j in range(m):
        o = orders[scratch[j]]
        if o.price != trade_px:
            o.queue_ahead = 0
        else:
            qa = o.queue_ahead - pub
            o.queue_ahead = qa if qa > 0 else 0
    return k


@nb.njit(cache=True, nogil=True, _nrt=False)
def on_depth(st, symbol, side, px, new_qty):
    """Our side's level at ``px`` now shows ``new_qty``: queue_ahead = min(queue_ahead, new_qty).

    ``side`` is the side of the level (SIDE_BUY: a bid level). Returns the
    number of orders whose queue_ahead dropped. Never fills.
    """
    h = st.hdr[0]
    orders = st.orders
    nq = new_qty if new_qty > 0 else 0
    n = 0
    for s in range(h.hwm):
        o = orders[s]
        if o.live != 0 and o.price == px and o.side == side and o.symbol == symbol and o.queue_ahead > nq:
            o.queue_ahead = nq
            n += 1
    return n


@nb.njit(cache=True, nogil=True)
def _top_side(st, symbol, side, best_bid, best_ask, fills_out, k):
    h = st.hdr[0]
    orders = st.orders
    scratch = st.scratch
    m = 0
    for s in range(h.hwm):
        o = orders[s]
        if o.live == 0 or o.side != side or o.symbol != symbol:
            continue
        p = o.price
        if side == SIDE_BUY:
            crossed = best_ask > 0 and best_ask <= p
            if best_bid < p:
                o.queue_ahead = 0
        else:
            crossed = best_bid > 0 and best_bid >= p
            if best_ask <= 0 or best_ask > p:
                o.queue_ahead = 0
        if crossed:
            scratch[m] = s
            m += 1
    if k + m > fills_out.shape[0]:
        h.out_full += 1
        return k
    _heapify(orders, scratch, m, side)
    while m > 0:
        s = _heap_pop(orders, scratch, m, side)
        m -= 1
        k = _maker_fill(st, s, orders[s].qty - orders[s].filled, fills_out, k)
    return k


@nb.njit(cache=True, nogil=True, _nrt=False)
def on_top(st, symbol, best_bid, best_ask, fills_out):
    """The public best bid/ask (0 = none): our orders the market moved through fill whole at their price.

    Buys first, then sells, each in priority order. Returns fills written.
    """
    k = _top_side(st, symbol, SIDE_BUY, best_bid, best_ask, fills_out, 0)
    return _top_side(st, symbol, SIDE_SELL, best_bid, best_ask, fills_out, k)


@nb.njit(cache=True, nogil=True, _nrt=False)
def submit_order(st, bid_px, bid_qty, n_bid, ask_px, ask_qty, n_ask, order_id, symbol, side, order_type, tif,
                 limit_px, qty, quote_qty, lot_step, deplete, fills_out):
    """A new order: taker match against the book, taker fills (with fees) into ``fills_out``, rest the rest.

    Rejects before matching: an ``order_id`` already resting
    (``OUT_REJECTED_DUPLICATE``); no free slot for an order that could rest (GTC
    LIMIT, LIMIT_MAKER: ``OUT_REJECTED_TABLE_FULL``); ``fills_out`` or the
    state's taker scratch shorter than the opposite side's ``n``
    (``OUT_INVALID``). A resting remainder records the displayed qty on its
    own side at its price as queue_ahead.
    Returns ``(n_fills, outcome, slot, filled_qty, filled_quote, commission)`` (slot -1 unless it
    rests; commission: the sum of the taker fills').
    """
    h = st.hdr[0]
    n_opp = n_ask if side == SIDE_BUY else n_bid
    zero = np.int64(0)
    if n_opp > fills_out.shape[0] or n_opp > st.take_px.shape[0]:
        return 0, OUT_INVALID, -1, zero, zero, zero
    if find_order(st, order_id) >= 0:
        return 0, OUT_REJECTED_DUPLICATE, -1, zero, zero, zero
    may_rest = order_type == OT_LIMIT_MAKER or (order_type == OT_LIMIT and tif == TIF_GTC)
    if may_rest and h.free_head < 0:
        return 0, OUT_REJECTED_TABLE_FULL, -1, zero, zero, zero
    n, filled, quote, outcome = match_taker(bid_px, bid_qty, n_bid, ask_px, ask_qty, n_ask, side, order_type, tif,
                                            limit_px, qty, quote_qty, lot_step, deplete, st.take_px, st.take_qty)
    cum_q = np.int64(0)
    cum_quote = np.int64(0)
    cum_comm = np.int64(0)
    for j in range(n):
        p = st.take_px[j]
        t = st.take_qty[j]
        q = quote_of(p, t)
        comm, asset = commission_of(side, t, q, h.taker_rate, h.fee_mode)
        cum_q += t
        cum_quote += q
        cum_comm += comm
        last = j == n - 1
        status = OS_FILLED if (last and outcome == OUT_FILLED) else OS_PARTIALLY_FILLED
        _write_fill(fills_out[j], order_id, symbol, side, p, t, q, comm, asset, cum_q, cum_quote, 0, status)
    slot = -1
    if outcome == OUT_RESTING:
        if side == SIDE_BUY:
            ahead = level_qty_at(bid_px, bid_qty, n_bid, limit_px)
        else:
            ahead = level_qty_at(ask_px, ask_qty, n_ask, limit_px)
        slot = rest_order(st, order_id, symbol, side, limit_px, qty, filled, quote, cum_comm, ahead)
    return n, outcome, slot, filled, quote, cum_comm


# ---------------------------------------------------------------------------
# Python wrapper
# ---------------------------------------------------------------------------
class SubmitResult(NamedTuple):
    outcome: int  # OUT_*
    status: int  # OS_* the order is in after the submit
    fills: np.ndarray  # FILL view of the taker fills (valid until the next call: copy to keep)
    filled_qty: int
    filled_quote: int
    commission: int  # sum of the taker fills' commissions
    slot: int  # table slot when it rests, else -1


def _side_arrays(px, qty, n):
    px = np.ascontiguousarray(px, dtype=np.int64) if px is not None else np.zeros(0, np.int64)
    qty = np.ascontiguousarray(qty, dtype=np.int64) if qty is not None else np.zeros(0, np.int64)
    if px.ndim != 1 or px.shape != qty.shape:
        raise ValueError(f"book side arrays must be 1-D and of equal length, got {px.shape} and {qty.shape}")
    if n is None:
        n = int(np.count_nonzero(px))
    if not 0 <= n <= len(px):
        raise ValueError(f"n must be in 0..{len(px)}, got {n}")
    return px, qty, n


class MatchingEngine:
    """Owns one ``MatchState`` and drives the kernels. Not thread-safe.

    Fee rates are parts per 1e8 (``to_fixed("0.001")`` = 0.1 %). Book sides
    are passed as (px, qty) arrays, best first, with ``n`` levels used (default:
    the count of non-zero prices, which fits BOOK_EVENT's zero-padded depth).
    With ``deplete=True`` the arrays are modified in place, so pass int64
    contiguous arrays you own. Returned fills are views into one buffer that
    the next call overwrites.
    """

    def __init__(self, capacity: int = 1024, *, queue_model: int = QUEUE_TRADE_THROUGH, maker_fee: int = 0,
                 taker_fee: int = 0, fee_mode: int = FEE_NATIVE, max_levels: int = 8192):
        if capacity < 1:
            raise ConfigError("matching.capacity", f"must be >= 1, got {capacity}")
        if queue_model not in (QUEUE_TRADE_THROUGH, QUEUE_POSITION):
            raise ConfigError("matching.queue_model",
                              f"must be QUEUE_TRADE_THROUGH or QUEUE_POSITION, got {queue_model}")
        for key, rate in (("maker_fee", maker_fee), ("taker_fee", taker_fee)):
            if not 0 <= rate <= FIXED_SCALE:
                raise ConfigError(f"matching.{key}", f"must be in 0..{FIXED_SCALE} (parts per 1e8), got {rate}")
        if fee_mode not in (FEE_NATIVE, FEE_SEPARATE):
            raise ConfigError("matching.fee_mode", f"must be FEE_NATIVE or FEE_SEPARATE, got {fee_mode}")
        if max_levels < 1:
            raise ConfigError("matching.max_levels", f"must be >= 1, got {max_levels}")
        self.capacity = capacity
        self.state = alloc_match_state(capacity, queue_model=queue_model, maker_rate=maker_fee, taker_rate=taker_fee,
                                       fee_mode=fee_mode, max_levels=max_levels)
        self._fills = np.zeros(max(capacity, max_levels), dtype=FILL)

    @property
    def orders(self) -> np.ndarray:
        """The whole table (RESTING_ORDER[capacity]); ``live == 1`` marks resting orders."""
        return self.state.orders

    @property
    def header(self) -> np.ndarray:
        return self.state.hdr[0]

    @property
    def n_live(self) -> int:
        return int(self.state.hdr[0]["n_live"])

    def open_orders(self, symbol: int | None = None) -> np.ndarray:
        """A copy of the resting orders (optionally of one symbol), in slot order."""
        o = self.state.orders
        mask = o["live"] == 1
        if symbol is not None:
            mask &= o["symbol"] == symbol
        return o[mask].copy()

    def order(self, order_id: int) -> np.void | None:
        """A copy of the resting order's record, or None."""
        s = find_order(self.state, order_id)
        return None if s < 0 else self.state.orders[s].copy()

    def submit(self, *, order_id: int, symbol: int, side: int, order_type: int, qty: int = 0, price: int = 0,
               tif: int = TIF_GTC, quote_qty: int = 0, lot_step: int = 1,
               bid_px=None, bid_qty=None, ask_px=None, ask_qty=None, n_bid: int | None = None,
               n_ask: int | None = None, deplete: bool = False) -> SubmitResult:
        """Match a new order against the book and rest its GTC remainder (see ``submit_order``)."""
        bpx, bqty, nb_ = _side_arrays(bid_px, bid_qty, n_bid)
        apx, aqty, na_ = _side_arrays(ask_px, ask_qty, n_ask)
        # the highest price a fill can have: the worst ask (last), the best bid (first)
        top = (int(apx[na_ - 1]) if na_ else 0) if side == SIDE_BUY else (int(bpx[0]) if nb_ else 0)
        for what, p in (("price", price), ("book price", top)):
            if p > 0 and qty > 0 and int(p) * int(qty) // FIXED_SCALE > _QUOTE_MAX:
                raise ValueError(f"{what} {p} x qty {qty}: quote exceeds the int64 fixed-point range")
        n, outcome, slot, filled, quote, comm = submit_order(
            self.state, bpx, bqty, nb_, apx, aqty, na_, order_id, symbol, side, order_type, tif, price, qty,
            quote_qty, lot_step, bool(deplete), self._fills)
        return SubmitResult(outcome=int(outcome), status=int(outcome_status.py_func(outcome, filled)),
                            fills=self._fills[:n], filled_qty=int(filled), filled_quote=int(quote),
                            commission=int(comm), slot=int(slot))

    def cancel(self, order_id: int) -> np.void | None:
        """Cancel a resting order; returns a copy of its final record (status CANCELED), or None if unknown."""
        s = cancel_order(self.state, order_id)
        return None if s < 0 else self.state.orders[s].copy()

    def on_trade(self, symbol: int, px: int, qty: int, buyer_is_maker: bool) -> np.ndarray:
        """A public trade; returns the maker fills (FILL view)."""
        n = on_trade(self.state, symbol, px, qty, bool(buyer_is_maker), self._fills)
        return self._fills[:n]

    def on_depth(self, symbol: int, side: int, px: int, new_qty: int) -> int:
        """A level on ``side`` at ``px`` now shows ``new_qty``; returns orders whose queue_ahead dropped."""
        return int(on_depth(self.state, symbol, side, px, new_qty))

    def on_top(self, symbol: int, best_bid: int, best_ask: int) -> np.ndarray:
        """The public best bid/ask (0 = none); returns the maker fills of orders crossed (FILL view)."""
        n = on_top(self.state, symbol, best_bid, best_ask, self._fills)
        return self._fills[:n]
