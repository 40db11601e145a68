"""Paper fills: execution's ``paper`` mode, the venue simulated in-process against the live book.

Orders from risk (ORDER_REQUEST) go in, EXEC_REPORT records come out, the
same records execution writes from the venue's answers and user-data events,
so risk and the supervisor cannot tell the modes apart. Matching is
``core.matching`` (shared with the exchange simulator) against the live
top-10 book, with ``deplete=False``: our paper orders are not the market.
Kernels are pure functions over one preallocated ``PaperState``; the
``PaperExchange`` class at the bottom is the thin Python wrapper (tests,
tools). ``slippage_bps`` is the realized-slippage helper execution uses in
every mode.

Units: prices, quantities, quote amounts, commissions are ``int64`` fixed point
at ``FIXED_SCALE = 10**8``; fee rates are parts per 10**8 (``core.matching``).
Clocks: ``now_ns`` and every ``*_ns`` are CLOCK_MONOTONIC ns of this host
(the caller's clock, injected); ``*_ms`` are exchange ms since the epoch.

Kernels (``_nrt=False``: no allocation, no reference counting)
--------------------------------------------------------------
``paper_on_order(st, order, now_ns, out, k)``  an ORDER_REQUEST arrives
``paper_on_book(st, ev, now_ns, out, k)``      a BOOK_EVENT arrives
``paper_on_timer(st, now_ns, out, k)``         nothing arrived; time passed
Each writes reports to ``out[k:k+n]`` and returns ``n``, or ``-1`` (nothing
read, nothing changed) when ``out`` has too little room from ``k``. A calling
kernel should be ``_nrt=False`` as well: with NRT, every call increfs and
decrefs each of the state's 24 arrays. From Python, ``paper_on_order_at`` /
``paper_on_book_at`` take the record array and an index (a numpy scalar of
the union dtype BOOK_EVENT cannot be passed to numba).

Output room (the caller's guarantee)
------------------------------------
* ``paper_on_order``: 1 slot (it only queues; its one possible report is an
  immediate local reject when the order table is full).
* ``paper_on_book`` / ``paper_on_timer``: ``st.hdr[0].room`` =
  ``capacity + 2 + DEPTH_LEVELS`` slots (``paper_room(st)``). Why: one book
  event fills each live order at most once (``<= capacity`` reports), and one
  activation writes at most ``NEW + DEPTH_LEVELS taker fills + EXPIRED`` =
  ``2 + DEPTH_LEVELS``, or one report per open order for a cancel-all
  (``<= capacity``). With that room the event is always applied whole and at
  least one due request is activated; further due requests are activated
  while the room left covers their worst case, the others stay queued (still
  due: the next call takes them) and ``K_DEFERRED`` counts each stop. Size
  ``out`` at ``room + 12 * in-flight requests`` to never defer.

The latency model
-----------------
Every request (new order, cancel, cancel-all) reaches the paper venue at
``now_ns + latency_ns + jitter`` where ``latency_ns = latency_us * 1000`` and
``jitter`` is uniform in ``[0, jitter_us * 1000]`` from a seeded xorshift64
in the state (deterministic for a seed). Requests keep their order: one
venue connection is one ordered TCP stream, so a request's due time is at
least the previous one's (jitter never lets a cancel overtake its order).
The queue is a FIFO ring of table slots. A due request is activated

* by ``paper_on_timer`` (the stage calls it every duty cycle), and
* by ``paper_on_book``: first every request due at or before the event's
  ``recv_ns`` (it reached the venue before that market change: it sees the
  book as it was), then the event is applied, then those due by ``now_ns``.

So an order matches the book at its activation, not the one at its arrival.

Activation of a new order (what the venue would do, in Binance's order)
----------------------------------------------------------------------
1. Symbol id out of range: EX_REJECTED -1121 ("Invalid symbol.").
2. The symbol's book view is not valid (never synced, or its last top/depth
   was BOOK_INVALID): EX_REJECTED -2010, counted in ``K_REJ_NO_BOOK``.
   Paper-only outcome: the venue would execute, but we have no book to price
   it against, and a fill against a stale book is fiction.
3. LIMIT with a tif other than GTC/IOC/FOK: EX_REJECTED -1115.
4. ``core.filters.check_order`` fails (reference price: the view's mid, else
   the order's ``ref_px``), or the symbol already has MAX_NUM_ORDERS open:
   EX_REJECTED -1013 ("Filter failure: ..."); ``K_REJ_FILTER`` and the per
   reason counts ``st.reasons[F_*]``.
5. ``core.matching.submit_order`` against the view (``deplete=False``).
   LIMIT_MAKER that would take: EX_REJECTED -2010. Otherwise accepted: a venue
   order id (per symbol, from 1), EX_NEW (status NEW), one EX_TRADE per taker
   fill (taker fee), then:
   a GTC/LIMIT_MAKER remainder rests (status NEW / PARTIALLY_FILLED), an IOC
   remainder, a FOK that the crossing levels cannot fill whole, or a MARKET
   the side cannot fill: EX_EXPIRED (status EXPIRED, with the cum values).
   Nothing is checked against balances: insufficient balance (-2010) is not
   modelled (risk's position and notional limits are the guard in paper).

Our fills never consume the displayed book: two MARKET orders in a row both
take the same levels (we are not the market; the next depth snapshot is the
market's, which never saw us). Between BK_DEPTH snapshots a BK_TOP updates
the view's first level: levels better than the new best are dropped, a level
at the new best price takes its qty, a better new best is inserted at the
front (the last level falls off when 10 are shown). The view never crosses
when the tops do not.

Crossed remainders (why two matching tables)
--------------------------------------------
A GTC LIMIT that crossed takes every crossing level and rests its remainder,
but the live book still shows the levels it took. In the plain matching
table the next ``on_top`` would fill the whole remainder at once ("the market
is at or through our price"), although the market never showed that much. So
such a remainder rests in a second table (``st.crossed``) that gets public
trades (a trade through its price fills it, as any resting order) but not
``on_top``. It moves to the main table (``st.match``, with the displayed qty
at its price as queue_ahead, behind our orders already resting there) when
the opposite best no longer crosses its price (the market moved away, or the
side emptied), or when the opposite best is strictly better than the first
level it took (``guard_px``: new liquidity beyond what it consumed); in the
latter case the same top then fills it whole at its own price, as maker.
One public trade is offered to the crossed table first, then what is left of
its qty to the main table: the trade's qty is never counted twice (crossed
remainders are the more aggressive ones; between the two tables the order is
by table, not by price, and under QUEUE_POSITION the main table's at-price
queue sees only the rest of the trade).

Resting orders fill by ``core.matching``'s queue model (``on_trade`` on
BK_TRADE; ``on_top`` on every view change, BK_TOP or BK_DEPTH): maker fills at
the order's own price and the maker fee. With ``QUEUE_POSITION`` every view
change also applies ``on_depth``'s rule to each of our orders on the symbol:
``queue_ahead = min(queue_ahead, displayed qty at its price)`` (0 when its
price is inside the displayed range but not shown). BK_TRADE applies whatever
the book state (a public trade is a fact; its payload does not depend on the
book). An invalid BK_TOP/BK_DEPTH marks the view invalid and is otherwise
ignored. BK_BAR is ignored.

Cancels
-------
``ORD_CANCEL`` (target ``orig_client_order_id`` on its symbol) at activation:
a resting order -> EX_CANCELED (status CANCELED, its cum values); else (filled,
expired, never existed) EX_REJECTED -2011 ("Unknown order sent.") carrying the
cancel request's own ``client_order_id`` and order id -1, so it never closes
a live order in risk. ``ORD_CANCEL_ALL`` (symbol, or 0xFFFF = every symbol):
one EX_CANCELED per resting order, in table slot order; none open: no report
(Binance answers -2011, but a cancel-all from the kill switch is not a
reject to count). ``ORD_DENIED`` and 0 (trace probe) are ignored (0 reports).

Reports
-------
Every field is written. ``client_order_id``: the order's (a cancel reject:
the cancel's). ``order_id``: the venue id, -1 before acceptance. Trace:
``recv_ns`` and ``in_pub_ns`` are the ORDER_REQUEST's ``recv_ns`` and
``pub_ns`` of the order a report is about (for EX_CANCELED: of the cancel
request it answers); ``pub_ns = now_ns`` (the ring publisher stamps it
again). ``exch_ms``: the book event that caused a maker fill, else the last
exchange time seen for the symbol (the venue's transaction time is unknown
in paper). ``trade_id``: per symbol, from 1 (-1 when no trade).
``commission``: per fill, rounded up to 1e-8; asset: a BUY pays the base
(``commission_asset`` 1), a SELL the quote (0) -- Binance without BNB.
``status``: NEW on EX_NEW; PARTIALLY_FILLED / FILLED on EX_TRADE;
CANCELED / EXPIRED / REJECTED on the final ones.

State layout (``PaperState``)
-----------------------------
``hdr`` PAPER_HEADER[1]; ``orders`` PAPER_ORDER[capacity] (pending requests
and live orders; a free list links free slots; the table slot is also the id
the order has in the matching tables, so a FILL finds its order in O(1));
``pend`` int64[capacity] (FIFO ring of slots); ``sy`` SYMBOL_STATE[n_symbols];
``vbp``/``vbq``/``vap``/``vaq`` int64[n_symbols, DEPTH_LEVELS] (the book view,
best first); ``match``/``crossed`` two ``MatchState`` of ``capacity`` orders;
``fills`` FILL[capacity] (scratch); ``filters`` the ``core.filters`` table;
``cnt`` int64[K_N]; ``reasons`` int64[16] (filter rejects by ``F_*``).
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np

from core.errors import ConfigError
from core.filters import F_OK, N_COLS, check_open_orders, check_order
from core.matching import (
    FEE_NATIVE,
    FILL,
    OUT_EXPIRED_FOK,
    OUT_EXPIRED_IOC,
    OUT_EXPIRED_NO_LIQUIDITY,
    OUT_FILLED,
    OUT_REJECTED_WOULD_TAKE,
    OUT_RESTING,
    QUEUE_POSITION,
    QUEUE_TRADE_THROUGH,
    MatchState,
    alloc_match_state,
    cancel_order,
    level_qty_at,
    on_top,
    on_trade,
    rest_order,
    submit_order,
)
from core.records import (
    BK_DEPTH,
    BK_TOP,
    BK_TRADE,
    BOOK_EVENT,
    BOOK_VALID,
    DEPTH_LEVELS,
    EX_CANCELED,
    EX_EXPIRED,
    EX_NEW,
    EX_REJECTED,
    EX_TRADE,
    EXEC_REPORT,
    FIXED_SCALE,
    FLAG_BUYER_MAKER,
    ORD_CANCEL,
    ORD_CANCEL_ALL,
    ORD_NEW,
    ORDER_REQUEST,
    OS_CANCELED,
    OS_EXPIRED,
    OS_FILLED,
    OS_NEW,
    OS_REJECTED,
    OT_LIMIT,
    SIDE_BUY,
    SIDE_SELL,
    TIF_FOK,
    TIF_GTC,
    TIF_IOC,
)

__all__ = [
    "ALL_SYMBOLS", "COUNTER_NAMES", "PAPER_HEADER", "PAPER_ORDER", "PaperExchange", "PaperState", "SYMBOL_STATE",
    "QUEUE_MODELS", "alloc_paper_state", "avg_slippage_bps", "paper_next_due", "paper_on_book", "paper_on_book_at",
    "paper_on_order", "paper_on_order_at", "paper_on_timer", "paper_room", "paper_state_from_config", "slippage_bps",
    "warm",
]  # fmt: skip

# ---------------------------------------------------------------------------
# Constants (integers: used inside kernels)
# ---------------------------------------------------------------------------
ALL_SYMBOLS = 0xFFFF  # ORD_CANCEL_ALL symbol: every symbol

# Binance error codes the paper venue answers with (EXEC_REPORT.reject_code)
ERR_FILTER = -1013  # "Filter failure: <NAME>" (check_order, MAX_NUM_ORDERS)
ERR_TOO_MANY = -1015  # "Too many new orders": the paper order table is full (local, immediate)
ERR_TIF = -1115  # "Invalid timeInForce."
ERR_SYMBOL = -1121  # "Invalid symbol."
ERR_REJECTED = -2010  # NEW_ORDER_REJECTED: LIMIT_MAKER would take; paper: no valid book to price it
ERR_UNKNOWN_ORDER = -2011  # CANCEL_REJECTED "Unknown order sent."

# PAPER_ORDER.state
P_FREE = 0
P_PENDING = 1  # in flight (due at due_ns), or a cancel request in flight
P_RESTING = 2  # accepted and resting in one of the matching tables

NEW_ROOM = 2 + DEPTH_LEVELS  # worst case of one new order's activation: NEW + taker fills + EXPIRED

# Counters (st.cnt)
K_REQUESTS = 0  # ORD_NEW / ORD_CANCEL / ORD_CANCEL_ALL queued
K_IGNORED = 1  # ORD_DENIED, trace probes, unknown actions
K_REJ_FULL = 2  # rejected at once: the order table was full (-1015)
K_ACCEPTED = 3  # EX_NEW
K_REJ_FILTER = 4  # -1013 (filters, MAX_NUM_ORDERS)
K_REJ_WOULD_TAKE = 5  # LIMIT_MAKER would take (-2010)
K_REJ_NO_BOOK = 6  # no valid book at activation (-2010, paper only)
K_REJ_OTHER = 7  # bad symbol (-1121), bad tif (-1115), a matching outcome that should not happen (-1013)
K_TAKER_FILLS = 8
K_MAKER_FILLS = 9
K_EXPIRED = 10
K_CANCELED = 11
K_CANCEL_UNKNOWN = 12  # cancel of an order that is not resting (-2011)
K_DEFERRED = 13  # a due activation waited for the next call (out had too little room left)
K_BOOK_EVENTS = 14
K_INVALID_BOOK = 15  # BK_TOP / BK_DEPTH with state != BOOK_VALID
K_ARMED = 16  # crossed remainders moved to the main table
K_N = 17

COUNTER_NAMES = {
    K_REQUESTS: "requests", K_IGNORED: "ignored", K_REJ_FULL: "rejected_table_full", K_ACCEPTED: "accepted",
    K_REJ_FILTER: "rejected_filter", K_REJ_WOULD_TAKE: "rejected_would_take", K_REJ_NO_BOOK: "rejected_no_book",
    K_REJ_OTHER: "rejected_other", K_TAKER_FILLS: "taker_fills", K_MAKER_FILLS: "maker_fills",
    K_EXPIRED: "expired", K_CANCELED: "canceled", K_CANCEL_UNKNOWN: "cancel_unknown", K_DEFERRED: "deferred",
    K_BOOK_EVENTS: "book_events", K_INVALID_BOOK: "invalid_book_events", K_ARMED: "crossed_armed",
}  # fmt: skip

# ---------------------------------------------------------------------------
# State records (this module's own state; declared once here, checked at import)
# ---------------------------------------------------------------------------
PAPER_ORDER = np.dtype([
    ("client_order_id", np.int64),  # ORDER_REQUEST.client_order_id
    ("orig_client_order_id", np.int64),  # ORD_CANCEL: the order to cancel
    ("order_id", np.int64),  # venue order id once accepted, else -1
    ("recv_ns", np.int64),  # the request's recv_ns (trace)
    ("in_pub_ns", np.int64),  # the request's pub_ns (trace)
    ("due_ns", np.int64),  # CLOCK_MONOTONIC ns it reaches the paper venue
    ("price", np.int64),  # limit price, fixed point (0: MARKET)
    ("qty", np.int64),  # qty, fixed point
    ("ref_px", np.int64),  # arrival mid (the filters' reference price when the view has no mid)
    ("cum_qty", np.int64),  # filled qty so far
    ("cum_quote", np.int64),  # quote of the fills so far (sum of per-fill floor(px*qty))
    ("guard_px", np.int64),  # crossed remainder: the first opposite level it took
    ("mslot", np.int64),  # its slot in the matching table it rests in
    ("next_free", np.int64),  # free-list link while free (-1: end)
    ("symbol", np.uint16),  # instrument id (ALL_SYMBOLS on a cancel-all)
    ("side", np.int8),  # SIDE_*
    ("action", np.uint8),  # ORD_NEW / ORD_CANCEL / ORD_CANCEL_ALL
    ("order_type", np.uint8),  # OT_*
    ("tif", np.uint8),  # TIF_*
    ("state", np.uint8),  # P_*
    ("crossed", np.uint8),  # 1: rests in st.crossed (a crossed GTC remainder), 0: in st.match
], align=True)

PAPER_HEADER = np.dtype([
    ("capacity", np.int64),  # PAPER_ORDER slots
    ("room", np.int64),  # out slots paper_on_book / paper_on_timer need: capacity + NEW_ROOM
    ("latency_ns", np.int64),  # fixed request latency
    ("jitter_ns", np.int64),  # jitter bound: uniform in [0, jitter_ns]
    ("last_due_ns", np.int64),  # due time of the last queued request (requests keep their order)
    ("pend_head", np.int64),  # FIFO ring of slots: first index
    ("n_pend", np.int64),  # requests in flight
    ("free_head", np.int64),  # first free slot, -1 when full
    ("hwm", np.int64),  # slots [0, hwm) have been used: scans stop there
    ("n_open", np.int64),  # resting orders, all symbols
    ("queue_model", np.int64),  # QUEUE_*
    ("last_exch_ms", np.int64),  # the last exchange time seen (any symbol)
    ("rng", np.uint64),  # xorshift64 state (never 0)
], align=True)

SYMBOL_STATE = np.dtype([
    ("n_bid", np.int64),  # view levels shown per side
    ("n_ask", np.int64),
    ("exch_ms", np.int64),  # the last exchange time seen for the symbol
    ("next_order_id", np.int64),  # venue order ids, per symbol
    ("next_trade_id", np.int64),  # venue trade ids, per symbol
    ("n_open", np.int64),  # resting orders
    ("n_crossed", np.int64),  # of which crossed remainders
    ("valid", np.int64),  # 1 while the last BK_TOP/BK_DEPTH was BOOK_VALID
], align=True)

for _name, _dt, _size in (("PAPER_ORDER", PAPER_ORDER, 120), ("PAPER_HEADER", PAPER_HEADER, 104),
                          ("SYMBOL_STATE", SYMBOL_STATE, 64)):
    if _dt.itemsize != _size:
        raise ImportError(f"paper.{_name} layout drifted: itemsize {_dt.itemsize}, expected {_size}")

N_REASONS = 16  # st.reasons: filter rejects by core.filters F_* code


class PaperState(NamedTuple):
    """The kernels' one state argument: preallocated arrays only (see the module docstring)."""

    hdr: np.ndarray  # PAPER_HEADER[1]
    orders: np.ndarray  # PAPER_ORDER[capacity]
    pend: np.ndarray  # int64[capacity]: FIFO ring of slots in flight
    sy: np.ndarray  # SYMBOL_STATE[n_symbols]
    vbp: np.ndarray  # int64[n_symbols, DEPTH_LEVELS]: view bid prices, best first
    vbq: np.ndarray  # bid qtys
    vap: np.ndarray  # ask prices
    vaq: np.ndarray  # ask qtys
    match: MatchState  # resting orders
    crossed: MatchState  # crossed GTC remainders (trades only, no on_top)
    fills: np.ndarray  # FILL[capacity]: scratch of one matching call
    filters: np.ndarray  # int64[n_symbols, N_COLS] (core.filters)
    cnt: np.ndarray  # int64[K_N]
    reasons: np.ndarray  # int64[N_REASONS]


#: ``execution.paper_queue_model`` names (core.config) -> QUEUE_*
QUEUE_MODELS = {"trade_through": QUEUE_TRADE_THROUGH, "queue_position": QUEUE_POSITION}


def alloc_paper_state(n_symbols: int, filters_table: np.ndarray, *, capacity: int = 1024, latency_us: int = 0,
                      jitter_us: int = 0, maker_fee: int = 0, taker_fee: int = 0,
                      queue_model: int = QUEUE_TRADE_THROUGH, seed: int = 1, key: str = "paper") -> PaperState:
    """Check the arguments and allocate a state (``PaperExchange`` documents them).

    Raises ``ConfigError`` naming ``<key>.<argument>``: the config path when built from one.
    """
    if not 1 <= n_symbols < ALL_SYMBOLS:
        raise ConfigError(f"{key}.n_symbols", f"must be in 1..{ALL_SYMBOLS - 1}, got {n_symbols}")
    table = np.asarray(filters_table)
    if table.dtype != np.int64 or table.shape != (n_symbols, N_COLS):
        raise ConfigError(f"{key}.filters_table", f"must be int64[{n_symbols}, {N_COLS}] "
                                                  f"(core.filters.build_filter_table), got {table.dtype}"
                                                  f"{list(table.shape)}")
    for name, v in (("latency_us", latency_us), ("jitter_us", jitter_us)):
        if not 0 <= v <= 10**9:
            raise ConfigError(f"{key}.{name}", f"must be in 0..1e9 us, got {v}")
    for name, rate in (("maker_fee", maker_fee), ("taker_fee", taker_fee)):
        if not 0 <= rate <= FIXED_SCALE:
            raise ConfigError(f"{key}.{name}", f"must be in 0..{FIXED_SCALE} (parts per 1e8), got {rate}")
    if queue_model not in (QUEUE_TRADE_THROUGH, QUEUE_POSITION):
        raise ConfigError(f"{key}.queue_model", f"must be QUEUE_TRADE_THROUGH or QUEUE_POSITION, got {queue_model}")
    if capacity < 1:
        raise ConfigError(f"{key}.capacity", f"must be >= 1, got {capacity}")
    orders = np.zeros(capacity, dtype=PAPER_ORDER)
    orders["next_free"] = np.arange(1, capacity + 1, dtype=np.int64)
    orders["next_free"][-1] = -1
    orders["order_id"] = -1
    hdr = np.zeros(1, dtype=PAPER_HEADER)
    h = hdr[0]
    h["capacity"] = capacity
    h["room"] = capacity + NEW_ROOM
    h["latency_ns"] = latency_us * 1000
    h["jitter_ns"] = jitter_us * 1000
    h["queue_model"] = queue_model
    h["free_head"] = 0
    h["rng"] = np.uint64(seed & 0xFFFF_FFFF_FFFF_FFFF) or np.uint64(0x9E37_79B9_7F4A_7C15)
    sy = np.zeros(n_symbols, dtype=SYMBOL_STATE)
    sy["next_order_id"] = 1
    sy["next_trade_id"] = 1

    def match_table():
        return alloc_match_state(capacity, queue_model=queue_model, maker_rate=maker_fee, taker_rate=taker_fee,
                                 fee_mode=FEE_NATIVE, max_levels=DEPTH_LEVELS)

    def view():
        return np.zeros((n_symbols, DEPTH_LEVELS), np.int64)

    return PaperState(hdr=hdr, orders=orders, pend=np.zeros(capacity, np.int64), sy=sy, vbp=view(), vbq=view(),
                      vap=view(), vaq=view(), match=match_table(), crossed=match_table(),
                      fills=np.zeros(max(capacity, DEPTH_LEVELS), FILL), filters=np.ascontiguousarray(table),
                      cnt=np.zeros(K_N, np.int64), reasons=np.zeros(N_REASONS, np.int64))


def paper_state_from_config(execution, filters_table: np.ndarray, *, capacity: int = 1024, jitter_us: int = 0,
                            seed: int = 1) -> PaperState:
    """A state from ``core.config.ExecutionConfig`` (``paper_latency_us``, ``paper_maker_fee``/``paper_taker_fee``
    as decimal text, ``paper_queue_model`` by name) and the filter table of the configured instruments."""
    from core.fixedpoint import to_fixed

    name = execution.paper_queue_model
    if name not in QUEUE_MODELS:
        raise ConfigError("execution.paper_queue_model", f"must be one of {sorted(QUEUE_MODELS)}, got {name!r}")
    table = np.asarray(filters_table)
    return alloc_paper_state(table.shape[0], table, capacity=capacity, latency_us=execution.paper_latency_us,
                             jitter_us=jitter_us, maker_fee=to_fixed(execution.paper_maker_fee),
                             taker_fee=to_fixed(execution.paper_taker_fee), queue_model=QUEUE_MODELS[name],
                             seed=seed, key="execution.paper")


# ---------------------------------------------------------------------------
# Slippage (used by execution in every mode)
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True, _nrt=False)
def slippage_bps(side, fill_px, ref_px):
    """Realized slippage of a fill at ``fill_px`` vs the arrival mid ``ref_px``, in bps; positive = worse.

    A BUY above the mid or a SELL below it is positive. Analytics (float); NaN when ``ref_px <= 0``,
    ``fill_px <= 0`` or the side is not BUY/SELL. The price difference is exact (int64) before the division.
    """
    if ref_px <= 0 or fill_px <= 0:
        return np.nan
    if side == SIDE_BUY:
        d = fill_px - ref_px
    elif side == SIDE_SELL:
        d = ref_px - fill_px
    else:
        return np.nan
    return float(d) * 1e4 / float(ref_px)


@nb.njit(cache=True, nogil=True, _nrt=False)
def avg_slippage_bps(side, cum_quote, cum_qty, ref_px):
    """Slippage of an order's average fill price (``cum_quote / cum_qty``) vs ``ref_px``, bps; NaN: no fills."""
    if cum_qty <= 0 or ref_px <= 0:
        return np.nan
    avg = float(cum_quote) * float(FIXED_SCALE) / float(cum_qty)
    if side == SIDE_BUY:
        return (avg - float(ref_px)) * 1e4 / float(ref_px)
    if side == SIDE_SELL:
        return (float(ref_px) - avg) * 1e4 / float(ref_px)
    return np.nan


# ---------------------------------------------------------------------------
# Table, queue and clock helpers
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True)
def _xorshift(h):
    x = h.rng
    x ^= x << np.uint64(13)
    x ^= x >> np.uint64(7)
    x ^= x << np.uint64(17)
    h.rng = x
    return x


@nb.njit(cache=True, nogil=True)
def _latency(h):
    lat = h.latency_ns
    if h.jitter_ns > 0:
        lat += np.int64(_xorshift(h) % np.uint64(h.jitter_ns + 1))
    return lat


@nb.njit(cache=True, nogil=True)
def _alloc(st):
    h = st.hdr[0]
    s = h.free_head
    if s < 0:
        return -1
    o = st.orders[s]
    h.free_head = o.next_free
    o.next_free = -1
    if s >= h.hwm:
        h.hwm = s + 1
    return s


@nb.njit(cache=True, nogil=True)
def _free(st, s):
    h = st.hdr[0]
    o = st.orders[s]
    o.state = P_FREE
    o.next_free = h.free_head
    h.free_head = s


@nb.njit(cache=True, nogil=True)
def _close(st, s):
    """A resting order left the book (filled / canceled): counts, then its slot is free."""
    h = st.hdr[0]
    o = st.orders[s]
    y = st.sy[o.symbol]
    y.n_open -= 1
    h.n_open -= 1
    if o.crossed != 0:
        y.n_crossed -= 1
    _free(st, s)


@nb.njit(cache=True, nogil=True)
def _exch_ms(st, sym):
    if sym < st.sy.shape[0]:
        return st.sy[sym].exch_ms
    return st.hdr[0].last_exch_ms


# ---------------------------------------------------------------------------
# Report writers (every field, every time)
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True)
def _write(d, o, recv_ns, in_pub_ns, exec_type, status, exch_ms, now_ns, reject_code):
    d.recv_ns = recv_ns
    d.pub_ns = now_ns
    d.in_pub_ns = in_pub_ns
    d.exch_ms = exch_ms
    d.client_order_id = o.client_order_id
    d.order_id = o.order_id
    d.trade_id = -1
    d.last_px = 0
    d.last_qty = 0
    d.cum_qty = o.cum_qty
    d.cum_quote = o.cum_quote
    d.commission = 0
    d.symbol = o.symbol
    d.side = o.side
    d.exec_type = exec_type
    d.status = status
    d.is_maker = 0
    d.commission_asset = 0
    d.reject_code = reject_code


@nb.njit(cache=True, nogil=True)
def _reject(st, s, code, now_ns, out, k):
    """EX_REJECTED for request slot s (never accepted: order id -1); frees the slot."""
    o = st.orders[s]
    o.order_id = -1
    _write(out[k], o, o.recv_ns, o.in_pub_ns, EX_REJECTED, OS_REJECTED, _exch_ms(st, o.symbol), now_ns, code)
    _free(st, s)
    return k + 1


@nb.njit(cache=True, nogil=True)
def _emit_fills(st, n, exch_ms, now_ns, out, k):
    """``st.fills[:n]`` -> EX_TRADE reports; a resting order whose fill completes it is closed."""
    for j in range(n):
        f = st.fills[j]
        s = f.order_id
        o = st.orders[s]
        y = st.sy[o.symbol]
        o.cum_qty = f.cum_qty
        o.cum_quote = f.cum_quote
        d = out[k]
        _write(d, o, o.recv_ns, o.in_pub_ns, EX_TRADE, f.status, exch_ms, now_ns, 0)
        d.trade_id = y.next_trade_id
        y.next_trade_id += 1
        d.last_px = f.px
        d.last_qty = f.qty
        d.commission = f.commission
        d.commission_asset = f.commission_asset
        d.is_maker = f.is_maker
        k += 1
        if f.is_maker != 0:
            st.cnt[K_MAKER_FILLS] += 1
        else:
            st.cnt[K_TAKER_FILLS] += 1
        if f.status == OS_FILLED and o.state == P_RESTING:
            _close(st, s)
    return k


# ---------------------------------------------------------------------------
# The book view
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True)
def _count_levels(px, qty):
    n = 0
    for i in range(px.shape[0]):
        if px[i] <= 0 or qty[i] <= 0:
            break
        n += 1
    return n


@nb.njit(cache=True, nogil=True)
def _merge_best(px, qty, n, p, q, is_bid):
    """A new best level (p, q) on one side of the view (best first); returns the new level count.

    Levels better than ``p`` are gone; a level at ``p`` takes ``q``; otherwise ``p`` goes in front (the last
    level falls off when the side is full). ``p <= 0`` (side empty) clears the side.
    """
    if p <= 0 or q <= 0:
        for i in range(n):
            px[i] = 0
            qty[i] = 0
        return 0
    d = 0
    while d < n and (px[d] > p if is_bid else px[d] < p):
        d += 1
    if d < n and px[d] == p:  # drop d levels in front, update the one at p
        qty[d] = q
        shift = d
        start = 0
    else:  # drop d levels, insert one: net shift d - 1 (right by one when d == 0)
        shift = d - 1
        start = 1
    if shift > 0:
        for i in range(start, n - shift):
            px[i] = px[i + shift]
            qty[i] = qty[i + shift]
        for i in range(n - shift, n):
            px[i] = 0
            qty[i] = 0
        n -= shift
    elif shift < 0:
        last = n if n < px.shape[0] else px.shape[0] - 1
        for i in range(last, 0, -1):
            px[i] = px[i - 1]
            qty[i] = qty[i - 1]
        n = last + 1
    if start == 1:
        px[0] = p
        qty[0] = q
    return n


@nb.njit(cache=True, nogil=True)
def _queue_from_view(st, sym):
    """QUEUE_POSITION: each of our orders on ``sym`` sees at most the displayed qty at its price."""
    h = st.hdr[0]
    y = st.sy[sym]
    for t in range(h.hwm):
        o = st.orders[t]
        if o.state != P_RESTING or o.symbol != sym:
            continue
        if o.side == SIDE_BUY:
            px = st.vbp[sym]
            qty = st.vbq[sym]
            n = y.n_bid
            inside = n > 0 and o.price >= px[n - 1]
        else:
            px = st.vap[sym]
            qty = st.vaq[sym]
            n = y.n_ask
            inside = n > 0 and o.price <= px[n - 1]
        if not inside:
            continue
        shown = level_qty_at(px, qty, n, o.price)
        r = st.crossed.orders[o.mslot] if o.crossed != 0 else st.match.orders[o.mslot]
        if r.queue_ahead > shown:  # core.matching.on_depth's rule, per order (no table scan per level)
            r.queue_ahead = shown


@nb.njit(cache=True, nogil=True)
def _arm(st, t):
    """Move crossed remainder t to the main table (the displayed qty at its price is ahead of it)."""
    o = st.orders[t]
    sym = o.symbol
    r = st.crossed.orders[o.mslot]
    filled = r.filled
    quote = r.quote_filled
    comm = r.commission
    cancel_order(st.crossed, t)
    if o.side == SIDE_BUY:
        ahead = level_qty_at(st.vbp[sym], st.vbq[sym], st.sy[sym].n_bid, o.price)
    else:
        ahead = level_qty_at(st.vap[sym], st.vaq[sym], st.sy[sym].n_ask, o.price)
    o.mslot = rest_order(st.match, t, sym, o.side, o.price, o.qty, filled, quote, comm, ahead)
    o.crossed = 0
    st.sy[sym].n_crossed -= 1
    st.cnt[K_ARMED] += 1


@nb.njit(cache=True, nogil=True)
def _view_changed(st, sym, exch_ms, now_ns, out, k):
    """The view of ``sym`` changed: queue estimates, crossings (on_top), crossed remainders to arm."""
    y = st.sy[sym]
    if y.n_open == 0:
        return k
    bb = st.vbp[sym, 0] if y.n_bid > 0 else np.int64(0)
    ba = st.vap[sym, 0] if y.n_ask > 0 else np.int64(0)
    if st.hdr[0].queue_model == QUEUE_POSITION:
        _queue_from_view(st, sym)
    n = on_top(st.match, sym, bb, ba, st.fills)
    if n > 0:
        k = _emit_fills(st, n, exch_ms, now_ns, out, k)
    if y.n_crossed > 0:
        moved = 0
        for t in range(st.hdr[0].hwm):
            o = st.orders[t]
            if o.state != P_RESTING or o.crossed == 0 or o.symbol != sym:
                continue
            if o.side == SIDE_BUY:
                go = ba <= 0 or ba > o.price or ba < o.guard_px
            else:
                go = bb <= 0 or bb < o.price or bb > o.guard_px
            if go:
                _arm(st, t)
                moved += 1
        if moved > 0:  # idempotent for the others: they were served by this same top above
            n = on_top(st.match, sym, bb, ba, st.fills)
            k = _emit_fills(st, n, exch_ms, now_ns, out, k)
    return k


# ---------------------------------------------------------------------------
# Activation (a request reaches the paper venue)
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True)
def _activate_new(st, s, now_ns, out, k):
    o = st.orders[s]
    sym = o.symbol
    if sym >= st.sy.shape[0]:
        st.cnt[K_REJ_OTHER] += 1
        return _reject(st, s, ERR_SYMBOL, now_ns, out, k)
    y = st.sy[sym]
    if y.valid == 0:
        st.cnt[K_REJ_NO_BOOK] += 1
        return _reject(st, s, ERR_REJECTED, now_ns, out, k)
    if o.order_type == OT_LIMIT and o.tif != TIF_GTC and o.tif != TIF_IOC and o.tif != TIF_FOK:
        st.cnt[K_REJ_OTHER] += 1
        return _reject(st, s, ERR_TIF, now_ns, out, k)
    bp = st.vbp[sym]
    bq = st.vbq[sym]
    ap = st.vap[sym]
    aq = st.vaq[sym]
    n_bid = y.n_bid
    n_ask = y.n_ask
    ref = (bp[0] + ap[0]) // 2 if n_bid > 0 and n_ask > 0 else o.ref_px
    f = check_order(st.filters, sym, o.side, o.order_type, o.price, o.qty, ref)
    if f == F_OK:
        f = check_open_orders(st.filters, sym, y.n_open)
    if f != F_OK:
        st.cnt[K_REJ_FILTER] += 1
        st.reasons[f if f < N_REASONS else N_REASONS - 1] += 1
        return _reject(st, s, ERR_FILTER, now_ns, out, k)
    crossing = False
    if o.order_type == OT_LIMIT and o.tif == TIF_GTC:
        if o.side == SIDE_BUY:
            crossing = n_ask > 0 and ap[0] <= o.price
        else:
            crossing = n_bid > 0 and bp[0] >= o.price
    tbl = st.crossed if crossing else st.match
    n, outcome, mslot, filled, quote, _comm = submit_order(tbl, bp, bq, n_bid, ap, aq, n_ask, s, sym, o.side,
                                                           o.order_type, o.tif, o.price, o.qty, 0, 1, False,
                                                           st.fills)
    if outcome == OUT_REJECTED_WOULD_TAKE:
        st.cnt[K_REJ_WOULD_TAKE] += 1
        return _reject(st, s, ERR_REJECTED, now_ns, out, k)
    if outcome != OUT_FILLED and outcome != OUT_RESTING and outcome != OUT_EXPIRED_IOC \
            and outcome != OUT_EXPIRED_FOK and outcome != OUT_EXPIRED_NO_LIQUIDITY:
        st.cnt[K_REJ_OTHER] += 1  # OUT_INVALID / table full / duplicate: cannot happen with checked requests
        return _reject(st, s, ERR_FILTER, now_ns, out, k)
    ex = y.exch_ms
    o.order_id = y.next_order_id
    y.next_order_id += 1
    o.cum_qty = 0
    o.cum_quote = 0
    st.cnt[K_ACCEPTED] += 1
    _write(out[k], o, o.recv_ns, o.in_pub_ns, EX_NEW, OS_NEW, ex, now_ns, 0)
    k += 1
    guard = st.fills[0].px if n > 0 else np.int64(0)
    k = _emit_fills(st, n, ex, now_ns, out, k)  # o is not resting yet: nothing is closed here
    o.cum_qty = filled
    o.cum_quote = quote
    if outcome == OUT_RESTING:
        h = st.hdr[0]
        o.state = P_RESTING
        o.mslot = mslot
        o.crossed = 1 if crossing else 0
        o.guard_px = guard if n > 0 else o.price
        y.n_open += 1
        h.n_open += 1
        if crossing:
            y.n_crossed += 1
    elif outcome == OUT_FILLED:
        _free(st, s)
    else:
        st.cnt[K_EXPIRED] += 1
        _write(out[k], o, o.recv_ns, o.in_pub_ns, EX_EXPIRED, OS_EXPIRED, ex, now_ns, 0)
        k += 1
        _free(st, s)
    return k


@nb.njit(cache=True, nogil=True)
def _cancel_resting(st, t, c, now_ns, out, k):
    """Cancel resting order t on behalf of request c: EX_CANCELED (the request's trace), slot freed."""
    o = st.orders[t]
    cancel_order(st.crossed if o.crossed != 0 else st.match, t)
    _write(out[k], o, c.recv_ns, c.in_pub_ns, EX_CANCELED, OS_CANCELED, _exch_ms(st, o.symbol), now_ns, 0)
    st.cnt[K_CANCELED] += 1
    _close(st, t)
    return k + 1


@nb.njit(cache=True, nogil=True)
def _activate_cancel(st, s, now_ns, out, k):
    c = st.orders[s]
    sym = c.symbol
    if sym >= st.sy.shape[0]:
        st.cnt[K_REJ_OTHER] += 1
        return _reject(st, s, ERR_SYMBOL, now_ns, out, k)
    target = c.orig_client_order_id
    for t in range(st.hdr[0].hwm):
        o = st.orders[t]
        if o.state == P_RESTING and o.client_order_id == target and o.symbol == sym:
            k = _cancel_resting(st, t, c, now_ns, out, k)
            _free(st, s)
            return k
    st.cnt[K_CANCEL_UNKNOWN] += 1
    return _reject(st, s, ERR_UNKNOWN_ORDER, now_ns, out, k)


@nb.njit(cache=True, nogil=True)
def _activate_cancel_all(st, s, now_ns, out, k):
    c = st.orders[s]
    sym = c.symbol
    if sym != ALL_SYMBOLS and sym >= st.sy.shape[0]:
        st.cnt[K_REJ_OTHER] += 1
        return _reject(st, s, ERR_SYMBOL, now_ns, out, k)
    for t in range(st.hdr[0].hwm):
        o = st.orders[t]
        if o.state == P_RESTING and (sym == ALL_SYMBOLS or o.symbol == sym):
            k = _cancel_resting(st, t, c, now_ns, out, k)
    _free(st, s)
    return k


@nb.njit(cache=True, nogil=True)
def _need(st, o):
    """Worst-case reports of activating request o."""
    if o.action == ORD_NEW:
        return NEW_ROOM
    if o.action == ORD_CANCEL_ALL:
        if o.symbol == ALL_SYMBOLS:
            return st.hdr[0].n_open
        if o.symbol < st.sy.shape[0]:
            return st.sy[o.symbol].n_open
    return 1


@nb.njit(cache=True, nogil=True, inline="always")
def _due(st, limit_ns):
    """True when the first queued request is due by ``limit_ns`` (checked before calling ``_activate_due``:
    a call that passes the whole state costs ~20 ns here, more than the check)."""
    h = st.hdr[0]
    return h.n_pend > 0 and st.orders[st.pend[h.pend_head]].due_ns <= limit_ns


@nb.njit(cache=True, nogil=True)
def _activate_due(st, limit_ns, reserve, now_ns, out, k):
    """Activate queued requests due at or before ``limit_ns`` (in order) while ``out`` keeps ``reserve``."""
    h = st.hdr[0]
    cap = h.capacity
    while h.n_pend > 0:
        s = st.pend[h.pend_head]
        o = st.orders[s]
        if o.due_ns > limit_ns:
            break
        if out.shape[0] - k - reserve < _need(st, o):
            st.cnt[K_DEFERRED] += 1
            break
        h.pend_head = (h.pend_head + 1) % cap
        h.n_pend -= 1
        a = o.action
        if a == ORD_NEW:
            k = _activate_new(st, s, now_ns, out, k)
        elif a == ORD_CANCEL:
            k = _activate_cancel(st, s, now_ns, out, k)
        else:
            k = _activate_cancel_all(st, s, now_ns, out, k)
    return k


# ---------------------------------------------------------------------------
# Entry kernels
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True, _nrt=False)
def paper_on_order(st, order, now_ns, out, k):
    """An ORDER_REQUEST ``order`` arrives at ``now_ns``: queue it (latency). Returns reports written.

    Needs 1 slot in ``out`` from ``k`` (else -1, nothing read). 0 reports normally; 1 (EX_REJECTED -1015,
    immediate) when the order table is full. ORD_DENIED, trace probes (0) and unknown actions: 0, ignored.
    """
    if out.shape[0] - k < 1:
        return -1
    a = order.action
    if a != ORD_NEW and a != ORD_CANCEL and a != ORD_CANCEL_ALL:
        st.cnt[K_IGNORED] += 1
        return 0
    h = st.hdr[0]
    s = _alloc(st)
    if s < 0:
        st.cnt[K_REJ_FULL] += 1
        d = out[k]
        d.recv_ns = order.recv_ns
        d.pub_ns = now_ns
        d.in_pub_ns = order.pub_ns
        d.exch_ms = h.last_exch_ms
        d.client_order_id = order.client_order_id
        d.order_id = -1
        d.trade_id = -1
        d.last_px = 0
        d.last_qty = 0
        d.cum_qty = 0
        d.cum_quote = 0
        d.commission = 0
        d.symbol = order.symbol
        d.side = order.side
        d.exec_type = EX_REJECTED
        d.status = OS_REJECTED
        d.is_maker = 0
        d.commission_asset = 0
        d.reject_code = ERR_TOO_MANY
        return 1
    o = st.orders[s]
    o.client_order_id = order.client_order_id
    o.orig_client_order_id = order.orig_client_order_id
    o.order_id = -1
    o.recv_ns = order.recv_ns
    o.in_pub_ns = order.pub_ns
    o.price = order.price
    o.qty = order.qty
    o.ref_px = order.ref_px
    o.cum_qty = 0
    o.cum_quote = 0
    o.guard_px = 0
    o.mslot = -1
    o.symbol = order.symbol
    o.side = order.side
    o.action = a
    o.order_type = order.order_type
    o.tif = order.tif
    o.state = P_PENDING
    o.crossed = 0
    due = now_ns + _latency(h)
    if due < h.last_due_ns:
        due = h.last_due_ns
    h.last_due_ns = due
    o.due_ns = due
    st.pend[(h.pend_head + h.n_pend) % h.capacity] = s
    h.n_pend += 1
    st.cnt[K_REQUESTS] += 1
    return 0


@nb.njit(cache=True, nogil=True, _nrt=False)
def paper_on_book(st, ev, now_ns, out, k):
    """A BOOK_EVENT ``ev`` arrives at ``now_ns``: activations due before it, the event, activations due now.

    Needs ``st.hdr[0].room`` slots in ``out`` from ``k`` (else -1, nothing read). Returns reports written.
    """
    h = st.hdr[0]
    if out.shape[0] - k < h.room:
        return -1
    k0 = k
    cap = h.capacity
    before = ev.recv_ns if ev.recv_ns < now_ns else now_ns
    if _due(st, before):
        k = _activate_due(st, before, cap, now_ns, out, k)
    st.cnt[K_BOOK_EVENTS] += 1
    sym = ev.symbol
    if sym < st.sy.shape[0]:
        y = st.sy[sym]
        kind = ev.kind
        if kind == BK_TRADE:
            y.exch_ms = ev.exch_ms
            h.last_exch_ms = ev.exch_ms
            if y.n_open > 0:
                rem = ev.tr_qty
                bm = (ev.flags & FLAG_BUYER_MAKER) != 0
                if y.n_crossed > 0:  # crossed remainders first, then what is left of the trade
                    n = on_trade(st.crossed, sym, ev.tr_px, rem, bm, st.fills)
                    for j in range(n):
                        rem -= st.fills[j].qty
                    if n > 0:
                        k = _emit_fills(st, n, ev.exch_ms, now_ns, out, k)
                if rem > 0:
                    n = on_trade(st.match, sym, ev.tr_px, rem, bm, st.fills)
                    if n > 0:
                        k = _emit_fills(st, n, ev.exch_ms, now_ns, out, k)
        elif kind == BK_TOP or kind == BK_DEPTH:
            if ev.state != BOOK_VALID:
                y.valid = 0
                st.cnt[K_INVALID_BOOK] += 1
            else:
                y.exch_ms = ev.exch_ms
                h.last_exch_ms = ev.exch_ms
                if kind == BK_DEPTH:
                    bp = st.vbp[sym]
                    bq = st.vbq[sym]
                    ap = st.vap[sym]
                    aq = st.vaq[sym]
                    for i in range(DEPTH_LEVELS):
                        bp[i] = ev.d_bid_px[i]
                        bq[i] = ev.d_bid_qty[i]
                        ap[i] = ev.d_ask_px[i]
                        aq[i] = ev.d_ask_qty[i]
                    y.n_bid = _count_levels(bp, bq)
                    y.n_ask = _count_levels(ap, aq)
                else:
                    y.n_bid = _merge_best(st.vbp[sym], st.vbq[sym], y.n_bid, ev.top_bid_px, ev.top_bid_qty, True)
                    y.n_ask = _merge_best(st.vap[sym], st.vaq[sym], y.n_ask, ev.top_ask_px, ev.top_ask_qty, False)
                y.valid = 1
                if y.n_open > 0:
                    k = _view_changed(st, sym, ev.exch_ms, now_ns, out, k)
    if _due(st, now_ns):
        k = _activate_due(st, now_ns, 0, now_ns, out, k)
    return k - k0


@nb.njit(cache=True, nogil=True, _nrt=False)
def paper_on_timer(st, now_ns, out, k):
    """Activate requests whose latency elapsed by ``now_ns``. Needs ``st.hdr[0].room`` slots (else -1)."""
    h = st.hdr[0]
    if out.shape[0] - k < h.room:
        return -1
    if not _due(st, now_ns):
        return 0
    return _activate_due(st, now_ns, 0, now_ns, out, k) - k


@nb.njit(cache=True, nogil=True, _nrt=False)
def paper_next_due(st):
    """CLOCK_MONOTONIC ns the next queued request is due, or -1 when none is in flight (a stage's sleep bound)."""
    h = st.hdr[0]
    if h.n_pend == 0:
        return np.int64(-1)
    return st.orders[st.pend[h.pend_head]].due_ns


@nb.njit(cache=True, nogil=True, _nrt=False)
def paper_on_order_at(st, orders, i, now_ns, out, k):
    """``paper_on_order`` for ``orders[i]`` (a record argument from Python: numpy scalars of these dtypes do
    not cross into numba)."""
    return paper_on_order(st, orders[i], now_ns, out, k)


@nb.njit(cache=True, nogil=True, _nrt=False)
def paper_on_book_at(st, events, i, now_ns, out, k):
    """``paper_on_book`` for ``events[i]`` (BOOK_EVENT is a union dtype: only arrays of it cross into numba)."""
    return paper_on_book(st, events[i], now_ns, out, k)


def paper_room(st: PaperState) -> int:
    """Slots ``paper_on_book`` / ``paper_on_timer`` need in ``out`` from ``k``."""
    return int(st.hdr[0]["room"])


# ---------------------------------------------------------------------------
# Python wrapper
# ---------------------------------------------------------------------------
class PaperExchange:
    """Owns one ``PaperState`` and drives the kernels; for tests and tools. Not thread-safe.

    ``filters_table``: ``core.filters.build_filter_table`` (int64[n_symbols, N_COLS]). Fees: parts per 1e8
    (``to_fixed("0.001")`` = 0.1 %). ``latency_us`` fixed request latency, ``jitter_us`` its uniform jitter
    bound (xorshift seeded by ``seed``). ``capacity``: orders resting plus requests in flight. Each call returns
    a copy of the reports it produced (EXEC_REPORT array).
    """

    def __init__(self, n_symbols: int, filters_table: np.ndarray, *, latency_us: int = 0, maker_fee: int = 0,
                 taker_fee: int = 0, queue_model: int = QUEUE_TRADE_THROUGH, seed: int = 1, jitter_us: int = 0,
                 capacity: int = 1024):
        self.n_symbols = n_symbols
        self.state = alloc_paper_state(n_symbols, filters_table, capacity=capacity, latency_us=latency_us,
                                       jitter_us=jitter_us, maker_fee=maker_fee, taker_fee=taker_fee,
                                       queue_model=queue_model, seed=seed)
        self._out = np.zeros(paper_room(self.state) + NEW_ROOM * capacity, EXEC_REPORT)
        self._req = np.zeros(1, ORDER_REQUEST)
        self._ev = np.zeros(1, BOOK_EVENT)
        self._next_cid = 1

    # -- raw records ---------------------------------------------------------------------------------------------
    def on_order(self, orders: np.ndarray, i: int, now_ns: int) -> np.ndarray:
        """``orders[i]`` (an ORDER_REQUEST array) arrives at ``now_ns``."""
        n = paper_on_order_at(self.state, orders, i, np.int64(now_ns), self._out, 0)
        return self._out[:n].copy()

    def on_book(self, events: np.ndarray, i: int, now_ns: int) -> np.ndarray:
        """``events[i]`` (a BOOK_EVENT array) arrives at ``now_ns``."""
        n = paper_on_book_at(self.state, events, i, np.int64(now_ns), self._out, 0)
        return self._out[:n].copy()

    def on_timer(self, now_ns: int) -> np.ndarray:
        n = paper_on_timer(self.state, np.int64(now_ns), self._out, 0)
        return self._out[:n].copy()

    # -- requests ------------------------------------------------------------------------------------------------
    def _send(self, now_ns: int, recv_ns: int | None, **fields) -> np.ndarray:
        r = self._req
        r[0] = 0
        r[0]["recv_ns"] = now_ns if recv_ns is None else recv_ns
        r[0]["pub_ns"] = now_ns
        for name, v in fields.items():
            r[0][name] = v
        return self.on_order(r, 0, now_ns)

    def new_cid(self) -> int:
        cid = self._next_cid
        self._next_cid += 1
        return cid

    def new_order(self, *, now_ns: int, symbol: int, side: int, order_type: int, qty: int, price: int = 0,
                  tif: int = TIF_GTC, client_order_id: int | None = None, ref_px: int = 0,
                  recv_ns: int | None = None) -> np.ndarray:
        cid = self.new_cid() if client_order_id is None else client_order_id
        return self._send(now_ns, recv_ns, action=ORD_NEW, client_order_id=cid, symbol=symbol, side=side,
                          order_type=order_type, tif=tif, price=price, qty=qty, ref_px=ref_px)

    def cancel(self, *, now_ns: int, symbol: int, orig_client_order_id: int, client_order_id: int | None = None,
               recv_ns: int | None = None) -> np.ndarray:
        cid = self.new_cid() if client_order_id is None else client_order_id
        return self._send(now_ns, recv_ns, action=ORD_CANCEL, client_order_id=cid, symbol=symbol,
                          orig_client_order_id=orig_client_order_id)

    def cancel_all(self, *, now_ns: int, symbol: int = ALL_SYMBOLS, recv_ns: int | None = None) -> np.ndarray:
        return self._send(now_ns, recv_ns, action=ORD_CANCEL_ALL, client_order_id=self.new_cid(), symbol=symbol)

    # -- market data ---------------------------------------------------------------------------------------------
    def _event(self, kind: int, symbol: int, now_ns: int, exch_ms: int, recv_ns: int | None, valid: bool,
               **fields) -> np.ndarray:
        e = self._ev
        e[0] = 0
        e[0]["kind"] = kind
        e[0]["symbol"] = symbol
        e[0]["state"] = BOOK_VALID if valid else 0
        e[0]["exch_ms"] = exch_ms
        e[0]["recv_ns"] = now_ns if recv_ns is None else recv_ns
        e[0]["pub_ns"] = now_ns
        for name, v in fields.items():
            e[0][name] = v
        return self.on_book(e, 0, now_ns)

    def top(self, symbol: int, bid_px: int, bid_qty: int, ask_px: int, ask_qty: int, *, now_ns: int,
            exch_ms: int = 0, recv_ns: int | None = None, valid: bool = True) -> np.ndarray:
        return self._event(BK_TOP, symbol, now_ns, exch_ms, recv_ns, valid, top_bid_px=bid_px, top_bid_qty=bid_qty,
                           top_ask_px=ask_px, top_ask_qty=ask_qty)

    def depth(self, symbol: int, bids, asks, *, now_ns: int, exch_ms: int = 0, recv_ns: int | None = None,
              valid: bool = True) -> np.ndarray:
        """``bids``/``asks``: [(px, qty)] best first (fixed point), at most DEPTH_LEVELS each."""
        def arr(levels, i):
            a = np.zeros(DEPTH_LEVELS, np.int64)
            for j, lv in enumerate(levels):
                a[j] = lv[i]
            return a

        return self._event(BK_DEPTH, symbol, now_ns, exch_ms, recv_ns, valid, d_bid_px=arr(bids, 0),
                           d_bid_qty=arr(bids, 1), d_ask_px=arr(asks, 0), d_ask_qty=arr(asks, 1))

    def trade(self, symbol: int, px: int, qty: int, *, buyer_is_maker: bool, now_ns: int, exch_ms: int = 0,
              recv_ns: int | None = None) -> np.ndarray:
        return self._event(BK_TRADE, symbol, now_ns, exch_ms, recv_ns, True, tr_px=px, tr_qty=qty,
                           tr_time_ms=exch_ms, flags=FLAG_BUYER_MAKER if buyer_is_maker else 0)

    def timer(self, now_ns: int) -> np.ndarray:
        return self.on_timer(now_ns)

    # -- inspection ----------------------------------------------------------------------------------------------
    @property
    def counters(self) -> dict[str, int]:
        return {name: int(self.state.cnt[i]) for i, name in COUNTER_NAMES.items()}

    @property
    def n_open(self) -> int:
        return int(self.state.hdr[0]["n_open"])

    @property
    def n_pending(self) -> int:
        return int(self.state.hdr[0]["n_pend"])

    def open_orders(self, symbol: int | None = None) -> np.ndarray:
        """A copy of the resting orders' PAPER_ORDER records (optionally of one symbol), in slot order."""
        o = self.state.orders
        mask = o["state"] == P_RESTING
        if symbol is not None:
            mask &= o["symbol"] == symbol
        return o[mask].copy()

    def view(self, symbol: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The book view of ``symbol``: (bids, asks) as [(px, qty)] best first."""
        y = self.state.sy[symbol]
        st = self.state
        bids = [(int(st.vbp[symbol, i]), int(st.vbq[symbol, i])) for i in range(int(y["n_bid"]))]
        asks = [(int(st.vap[symbol, i]), int(st.vaq[symbol, i])) for i in range(int(y["n_ask"]))]
        return bids, asks


def warm() -> None:
    """Compile (or load from the numba cache) the entry kernels for the ring record types: a stage's warm-up."""
    st = alloc_paper_state(1, np.zeros((1, N_COLS), np.int64), capacity=4)
    out = np.zeros(paper_room(st), EXEC_REPORT)
    req = np.zeros(1, ORDER_REQUEST)
    ev = np.zeros(1, BOOK_EVENT)
    paper_on_order_at(st, req, 0, np.int64(0), out, 0)
    paper_on_book_at(st, ev, 0, np.int64(0), out, 0)
    paper_on_timer(st, np.int64(0), out, 0)
    paper_next_due(st)
    slippage_bps(np.int64(1), np.int64(1), np.int64(1))
    avg_slippage_bps(np.int64(1), np.int64(1), np.int64(1), np.int64(1))
