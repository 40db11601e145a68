"""Positions and P&L from fills: FIFO, LIFO and weighted average side by side, exact.

One ``pnl_apply`` call per fill updates all three methods of one symbol; the
risk stage picks the one that drives its limits by passing a method id
(``METHOD_FIFO``, ``METHOD_LIFO``, ``METHOD_AVERAGE``) to the summary kernels.
``PnlBook`` at the bottom is the thin Python wrapper (allocation, argument
checks, exact ``Decimal`` snapshots).

Units: prices, quantities and commissions are ``int64`` fixed point at
``FIXED_SCALE = 10**8`` (``core.fixedpoint``), as in ``EXEC_REPORT``. Money
(P&L, cost, fees) is kept in units of 1e-16 quote: ``px * qty`` exactly.

Rules
-----
* Position and lots are signed: buys add, sells subtract. Every lot in a book
  has the sign of the position (stored as a positive qty; the book's sign is
  the position's). A fill moves the position by ``delta``; the part of
  ``delta`` against the position closes lots, the rest (all of it when the
  position is flat or on the same side) opens one lot at the fill price. A
  fill that crosses zero closes every lot and opens the remainder on the
  other side.
* FIFO closes the oldest lots first, LIFO the newest first. The two orders
  need two lot books per symbol (after a partial close they hold different
  lots): FIFO is a ring (push back, pop front), LIFO a stack (push and pop
  back). A new lot at the same price as the newest lot of a book is merged
  into it (exact: the two are adjacent in both orders).
* Weighted average: ``cost`` is the position's cost basis (``avg * |pos|``).
  An increase adds ``px * q`` to it, so the average changes on increases
  only; a decrease of ``q`` takes ``cost * q / |pos|`` away (the average is
  unchanged); closing everything takes all of it.
* Realized P&L of a close of ``q`` at exit price ``x`` against entry ``e``:
  ``(x - e) * q * sign``, ``sign = +1`` closing a long, ``-1`` a short. For
  a book that is ``sign * (x * q - removed cost)``.
* Unrealized at ``mark``: FIFO/LIFO over the open lots,
  ``sum((mark - e_i) * q_i) * sign``; average ``(mark - avg) * pos``. Both are
  ``sign * (mark * |pos| - cost)`` with the method's cost.
* Commission (``commission_asset``, the ``EXEC_REPORT`` codes):
  - ``COMM_QUOTE``: a fee; ``c`` is added to the fees (in quote).
  - ``COMM_BASE``: base the account no longer has, so the base commission
    moves the position: ``delta = side * qty - c`` (a buy of q opens a lot of
    ``q - c``; a sell of q closes ``q + c``), and ``c * px`` is added to the
    fees in quote. ``c <= qty`` is required.
  - ``COMM_OTHER`` (e.g. BNB): ``c`` is added to that asset's fees
    (``fee_asset`` indexes a small per-symbol table); it is converted to quote
    only where a price for the asset is given (``fee_px`` in the kernels,
    ``fee_prices`` in ``PnlBook.snapshot``). Other-asset fees without a price
    are left out of ``fees_quote`` and the net figure (and listed as such).
* Net realized = gross realized - fees in quote.

Exactness and rounding
----------------------
``px * qty`` is a 1e-16-unit amount that overflows ``int64`` for ordinary
trades, so every money accumulator (realized per method, cost per method,
fees in quote) is a 128-bit two's-complement integer kept as two ``uint64``
halves (``*_hi``, ``*_lo``), multiplied with 32-bit limbs and divided with
Knuth/Hacker's Delight 128/64 division (``divlu``). Why not the base-1e8
(whole, remainder) pairs of ``core.bars.mul_fixed``: their sums are bounded
by 9.2e10 quote units, and the average method must divide a cost by a
position, which a base-1e8 pair cannot do without a 128-bit division anyway.

* FIFO and LIFO are EXACT: realized, cost, unrealized and fees are the exact
  rational values (integers in 1e-16 units) until they are reported.
* Average: the cost after a partial decrease is ``cost - round(cost * q /
  |pos|)`` to the nearest 1e-16 unit (half-even), so each partial decrease
  can err by 0.5e-16 quote; closing all, or crossing zero, takes the cost
  exactly and resets the error. The money figures of the average method are
  within 1e-8 of the exact ones after rounding (the issue asks for 1e-8 per
  closing fill; the exact error is below 1e-12 for any realistic sequence).
  The average PRICE is ``cost / |pos|``, so its error is the cost error
  divided by the position: nil for real positions, but a dust position of
  1e-8 can show an average 0.5e-8 off (within the same 1e-8 per closing fill).
* Reporting rounds a value ONCE from its exact 1e-16-unit sum to 1e-8,
  HALF-EVEN (Python's ``round`` of a ``Fraction``, ``Decimal``'s default),
  so net realized is ``round(gross - fees)``, which may differ from
  ``round(gross) - round(fees)`` by 1e-8.

Bounds (checked where it is cheap; see ``pnl_apply``)
----------------------------------------------------
* A fill is refused (``PNL_ERR_RANGE``, counted) when ``px * qty`` reaches
  about 2**100 units (1.27e14 quote: checked in float, which is enough for a
  bound), when ``qty + c`` would overflow, or when the position would leave
  ``[-INT64_MAX, INT64_MAX]``.
* Accumulators are exact while their true values stay below 2**127 units
  (1.7e22 quote). A cost is at most max price * |position| < 2**126; the
  realized and fee sums are not checked: at 1e6 quote per fill they reach the
  bound after about 2**54 fills.
* The raw commission sums (``fee_quote_raw``, ``fee_base_raw``,
  ``fees_other``) are ``int64`` fixed point: exact below 9.2e10 units of
  their asset. Not checked.
* Kernel summaries return ``int64`` 1e-8 units, or ``PNL_NA`` (``INT64_MIN``)
  when the rounded value does not fit or is undefined (``avg_entry`` flat,
  a mark <= 0).

Lot capacity
------------
Each book holds at most ``lot_capacity`` lots per symbol. A fill that would
open a lot in a full book (a new price, same side as the position) is
REFUSED whole: nothing changes in any method, ``refused_lot_full`` of the
symbol is counted and ``PNL_ERR_LOT_FULL`` returned. Merging lots instead
would break exactness, and applying the fill to the average method only would
make the methods disagree on the position. A refused fill leaves the book
behind the account: size the capacity for the most open lots expected (fills
that close, cross zero or repeat the newest price never need a slot) and
treat a refusal as a halt.

State (``PnlState``, one tuple of four preallocated arrays)::

    sym[n_symbols]              PNL_SYMBOL (192 bytes = 3 cache lines): position,
                                trades, FIFO head/count, LIFO count, raw fee sums,
                                refusal counters, then the 128-bit accumulators
    lots[n_symbols, 2, cap]     LOT (px, qty): [:, BOOK_FIFO] ring, [:, BOOK_LIFO] stack
    fees_other[n_symbols, k]    int64: commissions per other asset id, in that asset
    hdr[1]                      PNL_HEADER: fills applied, refusals, bad symbol ids

Kernels are ``_nrt=False`` (no reference counting of the state arrays, and
numba refuses to compile one that allocates); ``pnl_apply`` touches one
symbol's record and lots only. Single writer: one thread applies fills; a
reader on another thread sees torn values.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple

import numba as nb
import numpy as np

from core.fixedpoint import from_decimal, to_fixed
from core.matching import FEE_ASSET_BASE, FEE_ASSET_OTHER, FEE_ASSET_QUOTE
from core.records import FIXED_DECIMALS, FIXED_SCALE, INT64_MAX, SIDE_BUY, SIDE_SELL

# ---------------------------------------------------------------------------
# Constants (integers: used inside kernels)
# ---------------------------------------------------------------------------
METHOD_FIFO = 0
METHOD_LIFO = 1
METHOD_AVERAGE = 2
METHOD_IDS = {"fifo": METHOD_FIFO, "lifo": METHOD_LIFO, "average": METHOD_AVERAGE}
METHOD_NAMES = {v: k for k, v in METHOD_IDS.items()}

BOOK_FIFO = 0  # lots[:, BOOK_FIFO]: ring, oldest at fifo_head
BOOK_LIFO = 1  # lots[:, BOOK_LIFO]: stack, newest at lifo_count - 1

# Commission asset: the values of EXEC_REPORT.commission_asset
COMM_QUOTE = FEE_ASSET_QUOTE  # 0
COMM_BASE = FEE_ASSET_BASE  # 1
COMM_OTHER = FEE_ASSET_OTHER  # 2

# pnl_apply results
PNL_OK = 0
PNL_ERR_INVALID = 1  # bad side / px / qty / commission / asset code / fee asset id: nothing changed
PNL_ERR_LOT_FULL = 2  # the fill would open a lot in a full book: nothing changed
PNL_ERR_RANGE = 3  # beyond the documented bounds: nothing changed
PNL_ERR_SYMBOL = 4  # symbol id outside the state: nothing changed (counted in the header)
STATUS_NAMES = {PNL_OK: "OK", PNL_ERR_INVALID: "INVALID", PNL_ERR_LOT_FULL: "LOT_FULL", PNL_ERR_RANGE: "RANGE",
                PNL_ERR_SYMBOL: "SYMBOL"}

PNL_NA = np.int64(-(2**63))  # summary sentinel: undefined, or does not fit int64 at 1e-8
NOTIONAL_MAX = 2.0**100  # px * qty (1e-16 units) at or above this is refused
UNITS_PER_FIXED = FIXED_SCALE  # 1e-16 units per 1e-8 unit: a money amount is round(units / 1e8) in fixed point

# ---------------------------------------------------------------------------
# Records (this module's own state; declared once here, checked at import)
# ---------------------------------------------------------------------------
LOT = np.dtype([
    ("px", np.int64),  # entry price, fixed point
    ("qty", np.int64),  # open qty, fixed point, > 0 (the sign is the position's)
], align=True)

_ACC = ("fifo_cost", "fifo_real", "lifo_cost", "lifo_real", "avg_cost", "avg_real", "fees")
PNL_SYMBOL = np.dtype([
    ("position", np.int64),  # signed, fixed point (the same for all three methods)
    ("trades", np.int64),  # fills applied
    ("fifo_head", np.int64),  # ring index of the oldest FIFO lot
    ("fifo_count", np.int64),  # FIFO lots
    ("lifo_count", np.int64),  # LIFO lots (stack depth)
    ("fee_quote_raw", np.int64),  # sum of quote commissions, fixed point quote
    ("fee_base_raw", np.int64),  # sum of base commissions, fixed point base
    ("refused_invalid", np.int64),  # fills refused: PNL_ERR_INVALID
    ("refused_lot_full", np.int64),  # fills refused: PNL_ERR_LOT_FULL
    ("refused_range", np.int64),  # fills refused: PNL_ERR_RANGE
    # 128-bit two's-complement accumulators, 1e-16 quote units: value = hi * 2**64 + lo
    ("fifo_cost_hi", np.uint64), ("fifo_cost_lo", np.uint64),  # sum(px * qty) of the open FIFO lots
    ("fifo_real_hi", np.uint64), ("fifo_real_lo", np.uint64),  # FIFO gross realized
    ("lifo_cost_hi", np.uint64), ("lifo_cost_lo", np.uint64),  # sum(px * qty) of the open LIFO lots
    ("lifo_real_hi", np.uint64), ("lifo_real_lo", np.uint64),  # LIFO gross realized
    ("avg_cost_hi", np.uint64), ("avg_cost_lo", np.uint64),  # average cost basis (avg * |position|)
    ("avg_real_hi", np.uint64), ("avg_real_lo", np.uint64),  # average gross realized
    ("fees_hi", np.uint64), ("fees_lo", np.uint64),  # quote fees + base fees * fill price
], align=True)

PNL_HEADER = np.dtype([
    ("applied", np.int64),  # fills applied, all symbols
    ("refused", np.int64),  # fills refused, all symbols (bad symbol ids included)
    ("bad_symbol", np.int64),  # fills refused for a symbol id outside the state
], align=True)

for _name, _dt, _size in (("LOT", LOT, 16), ("PNL_SYMBOL", PNL_SYMBOL, 192), ("PNL_HEADER", PNL_HEADER, 24)):
    if _dt.itemsize != _size:
        raise ImportError(f"pnl.{_name} layout drifted: itemsize {_dt.itemsize}, expected {_size}")
if PNL_SYMBOL.fields["fifo_cost_hi"][1] != 80 or PNL_SYMBOL.fields["fees_lo"][1] != 184:
    raise ImportError("pnl.PNL_SYMBOL layout drifted: accumulators moved")


class PnlState(NamedTuple):
    """The kernels' one state argument: preallocated arrays only (a plain numba tuple type)."""

    sym: np.ndarray  # PNL_SYMBOL[n_symbols]
    lots: np.ndarray  # LOT[n_symbols, 2, lot_capacity]
    fees_other: np.ndarray  # int64[n_symbols, n_fee_assets]
    hdr: np.ndarray  # PNL_HEADER[1]


def alloc_pnl_state(n_symbols: int, lot_capacity: int, n_fee_assets: int = 8) -> PnlState:
    """Allocate a flat state (no position, no lots, zero P&L) for ``n_symbols``."""
    return PnlState(sym=np.zeros(n_symbols, dtype=PNL_SYMBOL),
                    lots=np.zeros((n_symbols, 2, lot_capacity), dtype=LOT),
                    fees_other=np.zeros((n_symbols, max(1, n_fee_assets)), dtype=np.int64),
                    hdr=np.zeros(1, dtype=PNL_HEADER))


# ---------------------------------------------------------------------------
# 128-bit arithmetic on uint64 halves (numba: every operand must be uint64;
# mixing in an int64 turns the expression into float64)
# ---------------------------------------------------------------------------
_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U32 = np.uint64(32)
_U63 = np.uint64(63)
_U64 = np.uint64(64)
_M32 = np.uint64(0xFFFFFFFF)
_B32 = np.uint64(1 << 32)
_UE8 = np.uint64(FIXED_SCALE)
_UHALF_E8 = np.uint64(FIXED_SCALE // 2)
_UI64_MAX = np.uint64(INT64_MAX)
_I64_MAX = np.int64(INT64_MAX)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def mul64(a, b):
    """Full product of two uint64: ``(hi, lo)``. Four 32x32-bit partial products."""
    a0 = a & _M32
    a1 = a >> _U32
    b0 = b & _M32
    b1 = b >> _U32
    p00 = a0 * b0
    p01 = a0 * b1
    p10 = a1 * b0
    mid = (p00 >> _U32) + (p01 & _M32) + (p10 & _M32)  # < 3 * 2**32
    lo = (p00 & _M32) | (mid << _U32)
    hi = a1 * b1 + (p01 >> _U32) + (p10 >> _U32) + (mid >> _U32)
    return hi, lo


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def add128(ah, al, bh, bl):
    lo = al + bl
    hi = ah + bh
    if lo < al:
        hi += _U1
    return hi, lo


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def sub128(ah, al, bh, bl):
    lo = al - bl
    hi = ah - bh
    if al < bl:
        hi -= _U1
    return hi, lo


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def neg128(h, l):
    lo = (~l) + _U1
    hi = ~h
    if l == _U0:
        hi += _U1
    return hi, lo


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _nlz(x):
    """Leading zero bits of a non-zero uint64 (binary search)."""
    n = _U0
    if x <= np.uint64(0x00000000FFFFFFFF):
        n += np.uint64(32)
        x <<= np.uint64(32)
    if x <= np.uint64(0x0000FFFFFFFFFFFF):
        n += np.uint64(16)
        x <<= np.uint64(16)
    if x <= np.uint64(0x00FFFFFFFFFFFFFF):
        n += np.uint64(8)
        x <<= np.uint64(8)
    if x <= np.uint64(0x0FFFFFFFFFFFFFFF):
        n += np.uint64(4)
        x <<= np.uint64(4)
    if x <= np.uint64(0x3FFFFFFFFFFFFFFF):
        n += np.uint64(2)
        x <<= np.uint64(2)
    if x <= np.uint64(0x7FFFFFFFFFFFFFFF):
        n += np.uint64(1)
    return n


@nb.njit(cache=True, nogil=True, _nrt=False)
def divlu(u1, u0, v):
    """``divmod(u1 * 2**64 + u0, v)`` for uint64 with ``u1 < v`` (the quotient fits 64 bits).

    Hacker's Delight (2nd ed.) divlu: normalise ``v`` so its top bit is set,
    then two 64/32-bit digit estimates, each corrected at most twice.
    """
    s = _nlz(v)
    v = v << s
    vn1 = v >> _U32
    vn0 = v & _M32
    if s > _U0:
        un32 = (u1 << s) | (u0 >> (_U64 - s))
    else:
        un32 = u1
    un10 = u0 << s
    un1 = un10 >> _U32
    un0 = un10 & _M32
    q1 = un32 // vn1
    rhat = un32 - q1 * vn1
    while q1 >= _B32 or q1 * vn0 > _B32 * rhat + un1:
        q1 -= _U1
        rhat += vn1
        if rhat >= _B32:
            break
    un21 = un32 * _B32 + un1 - q1 * v
    q0 = un21 // vn1
    rhat = un21 - q0 * vn1
    while q0 >= _B32 or q0 * vn0 > _B32 * rhat + un0:
        q0 -= _U1
        rhat += vn1
        if rhat >= _B32:
            break
    r = (un21 * _B32 + un0 - q0 * v) >> s
    return q1 * _B32 + q0, r


@nb.njit(cache=True, nogil=True, _nrt=False)
def round_e8(h, l):
    """A signed 128-bit 1e-16-unit amount -> int64 1e-8 units, half-even; ``PNL_NA`` if it does not fit."""
    neg = (h >> _U63) != _U0
    if neg:
        h, l = neg128(h, l)
    if h >= _UE8:
        return PNL_NA
    q, r = divlu(h, l, _UE8)
    if r > _UHALF_E8 or (r == _UHALF_E8 and (q & _U1) != _U0):
        q += _U1
    if q > _UI64_MAX:
        return PNL_NA
    v = np.int64(q)
    return -v if neg else v


# ---------------------------------------------------------------------------
# Lot books
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _close_fifo(lots, sym, head, count, q):
    """Close ``q`` from the oldest FIFO lots. Returns (head, count, removed cost hi, lo)."""
    cap = lots.shape[2]
    rh = _U0
    rl = _U0
    while q > 0 and count > 0:
        lot = lots[sym, BOOK_FIFO, head]
        take = lot.qty if lot.qty < q else q
        ph, pl = mul64(np.uint64(lot.px), np.uint64(take))
        rh, rl = add128(rh, rl, ph, pl)
        lot.qty -= take
        q -= take
        if lot.qty == 0:
            head += 1
            if head == cap:
                head = 0
            count -= 1
    if count == 0:
        head = 0
    return head, count, rh, rl


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _close_lifo(lots, sym, count, q):
    """Close ``q`` from the newest LIFO lots. Returns (count, removed cost hi, lo)."""
    rh = _U0
    rl = _U0
    while q > 0 and count > 0:
        lot = lots[sym, BOOK_LIFO, count - 1]
        take = lot.qty if lot.qty < q else q
        ph, pl = mul64(np.uint64(lot.px), np.uint64(take))
        rh, rl = add128(rh, rl, ph, pl)
        lot.qty -= take
        q -= take
        if lot.qty == 0:
            count -= 1
    return count, rh, rl


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _fifo_back(head, count, cap):
    i = head + count - 1
    return i - cap if i >= cap else i


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _realize(real_h, real_l, sign, px, q, removed_h, removed_l):
    """realized += sign * (px * q - removed)."""
    eh, el = mul64(np.uint64(px), np.uint64(q))
    dh, dl = sub128(eh, el, removed_h, removed_l)
    if sign < 0:
        dh, dl = neg128(dh, dl)
    return add128(real_h, real_l, dh, dl)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _avg_removed(ch, cl, q, abs_pos):
    """``round(cost * q / abs_pos)`` (half-even, 1e-16 units) for ``0 < q < abs_pos``.

    ``cost = a * abs_pos + b`` (``a`` the average price floored to 1e-8, which
    fits 64 bits) so the result is ``a * q + round(b * q / abs_pos)``; both
    divisions have a 64-bit quotient.
    """
    p = np.uint64(abs_pos)
    uq = np.uint64(q)
    a, b = divlu(ch, cl, p)
    fh, fl = mul64(b, uq)
    f, r = divlu(fh, fl, p)
    r2 = r + r
    if r2 > p or (r2 == p and (f & _U1) != _U0):
        f += _U1
    ah, al = mul64(a, uq)
    return add128(ah, al, _U0, f)


# ---------------------------------------------------------------------------
# The fill kernel
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True, _nrt=False)
def _refuse(st, s, code):
    if code == PNL_ERR_INVALID:
        s.refused_invalid += 1
    elif code == PNL_ERR_LOT_FULL:
        s.refused_lot_full += 1
    else:
        s.refused_range += 1
    st.hdr[0].refused += 1
    return code


@nb.njit(cache=True, nogil=True, _nrt=False)
def pnl_apply(st, sym, side, px, qty, commission, commission_asset, fee_asset):
    """Apply one fill to FIFO, LIFO and average state of ``sym``. Returns ``PNL_OK`` or a ``PNL_ERR_*``.

    ``side`` SIDE_BUY/SIDE_SELL; ``px``, ``qty`` > 0 and ``commission`` >= 0
    fixed point; ``commission_asset`` COMM_QUOTE/COMM_BASE/COMM_OTHER;
    ``fee_asset`` the other asset's id (``0 <= fee_asset < fees_other.shape[1]``,
    read only for COMM_OTHER). A refused fill changes nothing but its counter.
    """
    if sym < 0 or sym >= st.sym.shape[0]:
        h = st.hdr[0]
        h.bad_symbol += 1
        h.refused += 1
        return PNL_ERR_SYMBOL
    s = st.sym[sym]
    lots = st.lots
    cap = lots.shape[2]
    if (side != SIDE_BUY and side != SIDE_SELL) or px <= 0 or qty <= 0 or commission < 0:
        return _refuse(st, s, PNL_ERR_INVALID)
    base_c = np.int64(0)
    if commission_asset == COMM_BASE:
        if commission > qty:
            return _refuse(st, s, PNL_ERR_INVALID)
        base_c = commission
    elif commission_asset == COMM_OTHER:
        if fee_asset < 0 or fee_asset >= st.fees_other.shape[1]:
            return _refuse(st, s, PNL_ERR_INVALID)
    elif commission_asset != COMM_QUOTE:
        return _refuse(st, s, PNL_ERR_INVALID)
    if np.float64(px) * np.float64(qty) >= NOTIONAL_MAX:
        return _refuse(st, s, PNL_ERR_RANGE)
    # delta = side * qty - base commission
    if side == SIDE_BUY:
        delta = qty - base_c
    else:
        if qty > _I64_MAX - base_c:
            return _refuse(st, s, PNL_ERR_RANGE)
        delta = -(qty + base_c)
    pos = s.position
    abs_pos = pos if pos >= 0 else -pos
    abs_d = delta if delta >= 0 else -delta
    if delta != 0 and (pos == 0 or (pos > 0) == (delta > 0)):
        close_q = np.int64(0)
        open_q = abs_d
        if abs_pos > _I64_MAX - abs_d:
            return _refuse(st, s, PNL_ERR_RANGE)
        # room for a lot in both books (a lot at the newest lot's price merges into it)
        if s.fifo_count == cap and lots[sym, BOOK_FIFO, _fifo_back(s.fifo_head, s.fifo_count, cap)].px != px:
            return _refuse(st, s, PNL_ERR_LOT_FULL)
        if s.lifo_count == cap and lots[sym, BOOK_LIFO, s.lifo_count - 1].px != px:
            return _refuse(st, s, PNL_ERR_LOT_FULL)
    elif abs_d > abs_pos:  # crosses zero: every lot closes, the books are empty when the rest opens
        close_q = abs_pos
        open_q = abs_d - abs_pos
    else:
        close_q = abs_d
        open_q = np.int64(0)

    if close_q > 0:
        sign = 1 if pos > 0 else -1
        # FIFO
        head, count, rh, rl = _close_fifo(lots, sym, s.fifo_head, s.fifo_count, close_q)
        s.fifo_head = head
        s.fifo_count = count
        s.fifo_real_hi, s.fifo_real_lo = _realize(s.fifo_real_hi, s.fifo_real_lo, sign, px, close_q, rh, rl)
        s.fifo_cost_hi, s.fifo_cost_lo = sub128(s.fifo_cost_hi, s.fifo_cost_lo, rh, rl)
        # LIFO
        count, rh, rl = _close_lifo(lots, sym, s.lifo_count, close_q)
        s.lifo_count = count
        s.lifo_real_hi, s.lifo_real_lo = _realize(s.lifo_real_hi, s.lifo_real_lo, sign, px, close_q, rh, rl)
        s.lifo_cost_hi, s.lifo_cost_lo = sub128(s.lifo_cost_hi, s.lifo_cost_lo, rh, rl)
        # average
        if close_q == abs_pos:
            rh = s.avg_cost_hi
            rl = s.avg_cost_lo
        else:
            rh, rl = _avg_removed(s.avg_cost_hi, s.avg_cost_lo, close_q, abs_pos)
        s.avg_real_hi, s.avg_real_lo = _realize(s.avg_real_hi, s.avg_real_lo, sign, px, close_q, rh, rl)
        s.avg_cost_hi, s.avg_cost_lo = sub128(s.avg_cost_hi, s.avg_cost_lo, rh, rl)

    if open_q > 0:
        ch, cl = mul64(np.uint64(px), np.uint64(open_q))
        # FIFO: push back (merge into the newest lot at the same price)
        count = s.fifo_count
        if count > 0 and lots[sym, BOOK_FIFO, _fifo_back(s.fifo_head, count, cap)].px == px:
            lots[sym, BOOK_FIFO, _fifo_back(s.fifo_head, count, cap)].qty += open_q
        else:
            i = s.fifo_head + count
            if i >= cap:
                i -= cap
            lot = lots[sym, BOOK_FIFO, i]
            lot.px = px
            lot.qty = open_q
            s.fifo_count = count + 1
        # LIFO: push
        count = s.lifo_count
        if count > 0 and lots[sym, BOOK_LIFO, count - 1].px == px:
            lots[sym, BOOK_LIFO, count - 1].qty += open_q
        else:
            lot = lots[sym, BOOK_LIFO, count]
            lot.px = px
            lot.qty = open_q
            s.lifo_count = count + 1
        s.fifo_cost_hi, s.fifo_cost_lo = add128(s.fifo_cost_hi, s.fifo_cost_lo, ch, cl)
        s.lifo_cost_hi, s.lifo_cost_lo = add128(s.lifo_cost_hi, s.lifo_cost_lo, ch, cl)
        s.avg_cost_hi, s.avg_cost_lo = add128(s.avg_cost_hi, s.avg_cost_lo, ch, cl)

    s.position = pos + delta
    # fees
    if commission > 0:
        if commission_asset == COMM_QUOTE:
            s.fee_quote_raw += commission
            fh, fl = mul64(np.uint64(commission), _UE8)
            s.fees_hi, s.fees_lo = add128(s.fees_hi, s.fees_lo, fh, fl)
        elif commission_asset == COMM_BASE:
            s.fee_base_raw += commission
            fh, fl = mul64(np.uint64(commission), np.uint64(px))
            s.fees_hi, s.fees_lo = add128(s.fees_hi, s.fees_lo, fh, fl)
        else:
            st.fees_other[sym, fee_asset] += commission
    s.trades += 1
    st.hdr[0].applied += 1
    return PNL_OK


# ---------------------------------------------------------------------------
# Summary kernels (for the risk stage: one method id picks what drives limits)
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _cost(s, method):
    if method == METHOD_FIFO:
        return s.fifo_cost_hi, s.fifo_cost_lo
    if method == METHOD_LIFO:
        return s.lifo_cost_hi, s.lifo_cost_lo
    return s.avg_cost_hi, s.avg_cost_lo


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _real(s, method):
    if method == METHOD_FIFO:
        return s.fifo_real_hi, s.fifo_real_lo
    if method == METHOD_LIFO:
        return s.lifo_real_hi, s.lifo_real_lo
    return s.avg_real_hi, s.avg_real_lo


@nb.njit(cache=True, nogil=True, _nrt=False)
def pnl_position(st, sym):
    """Signed position, fixed point."""
    return st.sym[sym].position


@nb.njit(cache=True, nogil=True, _nrt=False)
def pnl_realized(st, sym, method):
    """Gross realized P&L of ``method``, fixed point quote (half-even)."""
    h, l = _real(st.sym[sym], method)
    return round_e8(h, l)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _fees_exact(st, sym, fee_px):
    s = st.sym[sym]
    h = s.fees_hi
    l = s.fees_lo
    n = min(st.fees_other.shape[1], fee_px.shape[0])
    for a in range(n):
        c = st.fees_other[sym, a]
        p = fee_px[a]
        if c != 0 and p > 0:
            ph, pl = mul64(np.uint64(c), np.uint64(p))
            h, l = add128(h, l, ph, pl)
    return h, l


@nb.njit(cache=True, nogil=True, _nrt=False)
def pnl_fees_quote(st, sym, fee_px):
    """Fees in quote, fixed point (half-even): quote and base fees, plus each other
    asset's commission times ``fee_px[asset]`` (its price in this symbol's quote; <= 0: unknown, left out)."""
    h, l = _fees_exact(st, sym, fee_px)
    return round_e8(h, l)


@nb.njit(cache=True, nogil=True, _nrt=False)
def pnl_realized_net(st, sym, method, fee_px):
    """Gross realized minus fees in quote (``pnl_fees_quote``), rounded once."""
    rh, rl = _real(st.sym[sym], method)
    fh, fl = _fees_exact(st, sym, fee_px)
    h, l = sub128(rh, rl, fh, fl)
    return round_e8(h, l)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _unreal_exact(s, method, mark):
    pos = s.position
    abs_pos = pos if pos >= 0 else -pos
    mh, ml = mul64(np.uint64(mark), np.uint64(abs_pos))
    ch, cl = _cost(s, method)
    h, l = sub128(mh, ml, ch, cl)
    if pos < 0:
        h, l = neg128(h, l)
    return h, l


@nb.njit(cache=True, nogil=True, _nrt=False)
def pnl_unrealized(st, sym, method, mark):
    """Unrealized P&L of ``method`` at ``mark`` (e.g. the book mid), fixed point; 0 flat; ``PNL_NA`` if mark <= 0."""
    s = st.sym[sym]
    if s.position == 0:
        return np.int64(0)
    if mark <= 0:
        return PNL_NA
    h, l = _unreal_exact(s, method, mark)
    return round_e8(h, l)


@nb.njit(cache=True, nogil=True, _nrt=False)
def pnl_total(st, sym, method, mark, fee_px):
    """Net realized + unrealized at ``mark``, rounded once (what a loss limit compares)."""
    s = st.sym[sym]
    rh, rl = _real(s, method)
    fh, fl = _fees_exact(st, sym, fee_px)
    h, l = sub128(rh, rl, fh, fl)
    if s.position != 0:
        if mark <= 0:
            return PNL_NA
        uh, ul = _unreal_exact(s, method, mark)
        h, l = add128(h, l, uh, ul)
    return round_e8(h, l)


@nb.njit(cache=True, nogil=True, _nrt=False)
def pnl_avg_entry(st, sym, method):
    """Average entry price of ``method`` (FIFO/LIFO: the qty-weighted price of the open lots), half-even;
    ``PNL_NA`` when flat."""
    s = st.sym[sym]
    pos = s.position
    if pos == 0:
        return PNL_NA
    abs_pos = np.uint64(pos if pos > 0 else -pos)
    ch, cl = _cost(s, method)
    q, r = divlu(ch, cl, abs_pos)
    r2 = r + r
    if r2 > abs_pos or (r2 == abs_pos and (q & _U1) != _U0):
        q += _U1
    return np.int64(q)


# ---------------------------------------------------------------------------
# Python wrapper
# ---------------------------------------------------------------------------
def _i128(hi, lo) -> int:
    v = (int(hi) << 64) | int(lo)
    return v - (1 << 128) if v >= 1 << 127 else v


_E16 = Fraction(1, FIXED_SCALE * FIXED_SCALE)
_Q8 = Decimal(1).scaleb(-FIXED_DECIMALS)


def round_half_even_e8(value: Fraction) -> Decimal:
    """An exact amount -> ``Decimal`` with 8 decimals, half-even (the rule of every reported figure)."""
    return Decimal(round(value * FIXED_SCALE)).scaleb(-FIXED_DECIMALS)


def _fixed(value, what: str) -> int:
    """int (already fixed point), decimal text or Decimal -> fixed point int."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a fixed-point int, decimal text or Decimal, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        return to_fixed(value)
    if isinstance(value, Decimal):
        return from_decimal(value)
    raise ValueError(f"{what} must be a fixed-point int, decimal text or Decimal, got {value!r}")


class PnlBook:
    """Positions and P&L of ``n_symbols`` under FIFO, LIFO and weighted average at once. Not thread-safe.

    Amounts given to it are fixed-point ints, decimal text (``"0.015"``) or
    ``Decimal``; amounts it returns are exact ``Decimal`` (8 decimals,
    half-even) or ``Fraction`` (``exact``).
    """

    def __init__(self, n_symbols: int, lot_capacity: int = 1024, n_fee_assets: int = 8):
        for key, v in (("n_symbols", n_symbols), ("lot_capacity", lot_capacity), ("n_fee_assets", n_fee_assets)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"pnl.{key} must be an int >= 1, got {v!r}")
        self.n_symbols = n_symbols
        self.lot_capacity = lot_capacity
        self.n_fee_assets = n_fee_assets
        self.state = alloc_pnl_state(n_symbols, lot_capacity, n_fee_assets)

    def _check_symbol(self, symbol: int) -> None:
        if isinstance(symbol, bool) or not isinstance(symbol, (int, np.integer)) or not 0 <= symbol < self.n_symbols:
            raise ValueError(f"symbol must be in 0..{self.n_symbols - 1}, got {symbol!r}")

    def apply_fill(self, symbol: int, side: int, px, qty, commission=0, commission_asset: int = COMM_QUOTE, *,
                   fee_asset_id: int = 0) -> int:
        """Apply one fill; returns ``PNL_OK``, ``PNL_ERR_LOT_FULL`` or ``PNL_ERR_RANGE`` (counted, nothing changed).

        Misuse (bad symbol, side, non-positive px/qty, negative commission, a
        base commission above qty, unknown asset code, fee asset id out of
        range) raises ``ValueError`` naming the value.
        """
        self._check_symbol(symbol)
        if side not in (SIDE_BUY, SIDE_SELL):
            raise ValueError(f"side must be SIDE_BUY ({SIDE_BUY}) or SIDE_SELL ({SIDE_SELL}), got {side!r}")
        px, qty, commission = _fixed(px, "px"), _fixed(qty, "qty"), _fixed(commission, "commission")
        if px <= 0 or qty <= 0:
            raise ValueError(f"px and qty must be > 0, got px={px} qty={qty}")
        if not 0 <= commission <= INT64_MAX or px > INT64_MAX or qty > INT64_MAX:
            raise ValueError(f"px, qty, commission must be int64 fixed point >= 0, got {px}, {qty}, {commission}")
        if commission_asset not in (COMM_QUOTE, COMM_BASE, COMM_OTHER):
            raise ValueError(f"commission_asset must be COMM_QUOTE/BASE/OTHER (0/1/2), got {commission_asset!r}")
        if commission_asset == COMM_BASE and commission > qty:
            raise ValueError(f"a base commission cannot exceed the fill qty: commission={commission} qty={qty}")
        if commission_asset == COMM_OTHER and not 0 <= fee_asset_id < self.n_fee_assets:
            raise ValueError(f"fee_asset_id must be in 0..{self.n_fee_assets - 1}, got {fee_asset_id!r}")
        return int(pnl_apply(self.state, symbol, side, px, qty, commission, commission_asset, fee_asset_id))

    def lots(self, symbol: int, method: int) -> list[tuple[int, int]]:
        """Open lots of the FIFO or LIFO book as (px, signed qty), oldest first."""
        self._check_symbol(symbol)
        s = self.state.sym[symbol]
        sign = -1 if s["position"] < 0 else 1
        cap = self.lot_capacity
        if method == METHOD_FIFO:
            head, n = int(s["fifo_head"]), int(s["fifo_count"])
            book = self.state.lots[symbol, BOOK_FIFO]
            idx = [(head + i) % cap for i in range(n)]
        elif method == METHOD_LIFO:
            book = self.state.lots[symbol, BOOK_LIFO]
            idx = range(int(s["lifo_count"]))
        else:
            raise ValueError(f"lots exist for METHOD_FIFO and METHOD_LIFO only, got {method!r}")
        return [(int(book[i]["px"]), sign * int(book[i]["qty"])) for i in idx]

    def counters(self, symbol: int) -> dict:
        self._check_symbol(symbol)
        s = self.state.sym[symbol]
        return {"trades": int(s["trades"]), "refused_invalid": int(s["refused_invalid"]),
                "refused_lot_full": int(s["refused_lot_full"]), "refused_range": int(s["refused_range"])}

    def exact(self, symbol: int, method: int | str, mark=None, fee_prices: dict | None = None) -> dict:
        """The exact figures as ``Fraction`` (quote units; position and prices as plain quantities).

        ``fee_prices``: other fee asset id -> its price in this symbol's quote
        (fixed-point int, text or Decimal). Keys: position, cost,
        avg_entry (None flat), realized_gross, fees_quote, fees_unpriced
        (asset ids left out of fees_quote), realized_net, unrealized (None
        without ``mark``), fees (``"quote"``, ``"base"`` and each other asset
        id with a non-zero amount, in that asset).
        """
        self._check_symbol(symbol)
        method = METHOD_IDS.get(method, method) if isinstance(method, str) else method
        if method not in METHOD_NAMES:
            raise ValueError(f"method must be METHOD_FIFO/LIFO/AVERAGE (0/1/2) or its name, got {method!r}")
        s = self.state.sym[symbol]
        pos = int(s["position"])
        name = {METHOD_FIFO: "fifo", METHOD_LIFO: "lifo", METHOD_AVERAGE: "avg"}[method]
        cost = _i128(s[f"{name}_cost_hi"], s[f"{name}_cost_lo"])
        real = _i128(s[f"{name}_real_hi"], s[f"{name}_real_lo"])
        fees_units = _i128(s["fees_hi"], s["fees_lo"])
        fees = {"quote": Fraction(int(s["fee_quote_raw"]), FIXED_SCALE),
                "base": Fraction(int(s["fee_base_raw"]), FIXED_SCALE)}
        unpriced = []
        prices = {}
        for k, v in (fee_prices or {}).items():
            prices[int(k)] = _fixed(v, f"fee price of asset {k}")
        for a in range(self.n_fee_assets):
            c = int(self.state.fees_other[symbol, a])
            if c:
                fees[a] = Fraction(c, FIXED_SCALE)
                if prices.get(a, 0) > 0:
                    fees_units += c * prices[a]
                else:
                    unpriced.append(a)
        out = {
            "position": Fraction(pos, FIXED_SCALE),
            "cost": cost * _E16,
            "avg_entry": Fraction(cost, abs(pos)) / FIXED_SCALE if pos else None,
            "realized_gross": real * _E16,
            "fees": fees,
            "fees_quote": fees_units * _E16,
            "fees_unpriced": unpriced,
            "realized_net": (real - fees_units) * _E16,
            "unrealized": None,
        }
        if mark is not None:
            m = _fixed(mark, "mark")
            if m <= 0:
                raise ValueError(f"mark must be > 0, got {mark!r}")
            sign = -1 if pos < 0 else 1
            out["unrealized"] = sign * (m * abs(pos) - cost) * _E16
        return out

    def snapshot(self, symbol: int, method: int | str, mark=None, fee_prices: dict | None = None) -> dict:
        """``exact`` rounded half-even to 8 decimals, as ``Decimal`` (None where undefined), plus
        ``method`` (name), ``trades``, ``open_lots`` (FIFO/LIFO; None for average) and the refusal counters."""
        method = METHOD_IDS.get(method, method) if isinstance(method, str) else method
        ex = self.exact(symbol, method, mark, fee_prices)
        r = round_half_even_e8
        out = {k: (r(v) if isinstance(v, Fraction) else v) for k, v in ex.items() if k != "fees"}
        out["fees"] = {k: r(v) for k, v in ex["fees"].items()}
        out["method"] = METHOD_NAMES[method]
        s = self.state.sym[symbol]
        out["open_lots"] = (int(s["fifo_count"]) if method == METHOD_FIFO
                            else int(s["lifo_count"]) if method == METHOD_LIFO else None)
        out.update(self.counters(symbol))
        return out


__all__ = [
    "BOOK_FIFO", "BOOK_LIFO", "COMM_BASE", "COMM_OTHER", "COMM_QUOTE", "LOT", "METHOD_AVERAGE", "METHOD_FIFO",
    "METHOD_IDS", "METHOD_LIFO", "METHOD_NAMES", "NOTIONAL_MAX", "PNL_ERR_INVALID", "PNL_ERR_LOT_FULL",
    "PNL_ERR_RANGE", "PNL_ERR_SYMBOL", "PNL_HEADER", "PNL_NA", "PNL_OK", "PNL_SYMBOL", "PnlBook", "PnlState",
    "STATUS_NAMES", "add128", "alloc_pnl_state", "divlu", "mul64", "neg128", "pnl_apply", "pnl_avg_entry",
    "pnl_fees_quote", "pnl_position", "pnl_realized", "pnl_realized_net", "pnl_total", "pnl_unrealized",
    "round_e8", "round_half_even_e8", "sub128",
]
