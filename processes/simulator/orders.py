"""The simulator's order side: Binance Spot trading against the simulated book, independent of any transport.

``OrderService.dispatch(op, account, params)`` takes the operation (the WS
API's method names: ``order.place``, ``order.test``, ``order.status``,
``order.cancel``, ``openOrders.cancelAll``, ``openOrders.status``,
``allOrders``, ``myTrades``, ``account.status``,
``account.rateLimits.orders``), the authenticated account (``auth.py``) and
the params as strings (``normalize_params`` turns WS JSON values into
those), and returns a ``Reply(status, body, headers)`` or raises
``auth.BinanceError`` with Binance's code, message and HTTP status. REST maps
its routes onto the same operations (``REST_ROUTES``); weights are
``request_weight``.

Matching
--------
One ``core.matching.MatchingEngine`` per symbol holds every account's resting
orders (ids are the symbol's ``orderId``: increasing from 1). Taker orders
match against the simulator's own book:

* generated market (``GeneratedBook``): the generator's integer ladders. A
  taker fill takes the displayed quantity out of the ladder and is published
  like any generated event: a level change (with its own book update id, so
  diffs stay gap-free and the REST snapshot agrees), a public trade whose id
  is the fill's ``tradeId``, and a bookTicker change. The deepest level of a
  side keeps one lot (the generator never empties a side either).
* replayed market (``ReplayedBook``): a book rebuilt from the replayed
  snapshot and depth diffs. Our taker fills deplete that copy only: the
  replayed streams and snapshots are the recording, byte for byte, and do
  not show our impact; the next recorded update of a level overwrites it.

Resting orders fill as the market trades through them (``on_market``):
public trades -> ``on_trade``, top-of-book changes -> ``on_top``, level changes ->
``on_depth`` (queue-position model only), at the order's own price and the
maker rate (rules in core/matching.py; ``simulator.queue_model``). They are
not shown in the public book. In generated mode each maker fill also prints
a public trade (its ``tradeId``); in replay mode trade ids are the
simulator's own. Orders of different accounts never match each other (each
trades only with the public book), and nothing self-trades.

Balances (``accounts.Ledger``): an accepted order locks what it may spend:
a BUY LIMIT / LIMIT_MAKER ``ceil(price*qty)`` quote (commission is taken
from what a fill brings in, as Binance does without BNB), a SELL its
``quantity`` base, a MARKET BUY by ``quoteOrderQty`` that amount; a MARKET
by ``quantity`` is priced against the book first (a dry-run match) and locks
what it will cost. After each fill of a BUY LIMIT the lock is cut back to
``ceil(price*leaves)`` (a fill at a better price frees the difference); what
is still locked when an order ends (filled, canceled, expired) goes back to
free.

Order rate (``ORDERS``): per account, calendar windows of 10 s and 1 day on
the server clock; every order that passes the filters counts (engine
rejects included), the first fill of an order gives its count back (Binance's
"orders that trade decrement the count"); past a limit -> HTTP 429, -1015.

Events: ``add_listener(account, cb)``; ``cb(event)`` gets Binance-shaped
``executionReport``, ``outboundAccountPosition`` and ``balanceUpdate``
dicts (every documented field; decimals as strings) synchronously, in
exchange order, before the request's reply goes out (Binance's user data
stream may also beat the REST answer). A raising listener is counted and
logged, never propagated.

Not simulated: stop / take-profit / iceberg / trailing / pegged orders (rejected
as Binance does for symbols without them), order lists, cancelReplace /
amend, STP between accounts, the third recvWindow check before matching.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import numpy as np
import orjson

from core.matching import (
    FEE_ASSET_BASE,
    FEE_NATIVE,
    OUT_EXPIRED_FOK,
    OUT_EXPIRED_IOC,
    OUT_EXPIRED_NO_LIQUIDITY,
    OUT_FILLED,
    OUT_REJECTED_TABLE_FULL,
    OUT_REJECTED_WOULD_TAKE,
    OUT_RESTING,
    QUEUE_POSITION,
    QUEUE_TRADE_THROUGH,
    MatchingEngine,
    level_qty_at,
    match_taker,
)
from core.records import (
    FIXED_SCALE,
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
from processes.simulator import market_kernels as mk
from processes.simulator.accounts import FeeConfig, Ledger
from processes.simulator.auth import BinanceError, err_illegal, err_mandatory
from processes.simulator.config import SymbolSpec

log = logging.getLogger("ringtrader.simulator.orders")

S = FIXED_SCALE
QUEUE_MODELS = {"trade_through": QUEUE_TRADE_THROUGH, "queue_position": QUEUE_POSITION}

# Wire names (Binance enums)
SIDES = {"BUY": SIDE_BUY, "SELL": SIDE_SELL}
SIDE_NAMES = {v: k for k, v in SIDES.items()}
TYPES = {"LIMIT": OT_LIMIT, "MARKET": OT_MARKET, "LIMIT_MAKER": OT_LIMIT_MAKER}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
UNSUPPORTED_TYPES = {  # known to Binance, not offered by the simulator's symbols: -2010 with Binance's message
    "STOP_LOSS": "Stop loss orders are not supported for this symbol.",
    "STOP_LOSS_LIMIT": "Stop loss limit orders are not supported for this symbol.",
    "TAKE_PROFIT": "Take profit orders are not supported for this symbol.",
    "TAKE_PROFIT_LIMIT": "Take profit limit orders are not supported for this symbol.",
}
TIFS = {"GTC": TIF_GTC, "IOC": TIF_IOC, "FOK": TIF_FOK}
TIF_NAMES = {v: k for k, v in TIFS.items()}
STATUS_NAMES = {OS_NEW: "NEW", OS_PARTIALLY_FILLED: "PARTIALLY_FILLED", OS_FILLED: "FILLED",
                OS_CANCELED: "CANCELED", OS_REJECTED: "REJECTED", OS_EXPIRED: "EXPIRED"}  # fmt: skip
RESP_TYPES = ("ACK", "RESULT", "FULL")
STP_MODES = ("NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH")
DEFAULT_STP = "EXPIRE_MAKER"
EXPIRY_REASONS = {OUT_EXPIRED_IOC: "UNFILLED_IOC_QUANTITY_EXPIRED", OUT_EXPIRED_FOK: "UNFILLED_FOK_ORDER_EXPIRED",
                  OUT_EXPIRED_NO_LIQUIDITY: "INSUFFICIENT_LIQUIDITY"}  # fmt: skip

# Symbol filters the simulator lists in exchangeInfo and enforces (strings as exchangeInfo spells them)
MAX_PRICE = 1_000_000 * S
MAX_QTY = 9_000 * S
MARKET_MAX_QTY = 100 * S
MAX_NOTIONAL = 9_000_000 * S
ORDER_TYPES = ["LIMIT", "LIMIT_MAKER", "MARKET"]
QUOTE_ASSETS = ("USDT", "USDC", "FDUSD", "BTC", "ETH", "BNB", "EUR")

# Binance's messages
MSG_INSUFFICIENT = "Account has insufficient balance for requested action."
MSG_DUPLICATE = "Duplicate order sent."
MSG_WOULD_TAKE = "Order would immediately match and take."
MSG_UNKNOWN_ORDER = "Unknown order sent."
MSG_NO_SUCH_ORDER = "Order does not exist."
MSG_CANCEL_RESTRICTED = "Order was not canceled due to cancel restrictions."
MSG_CLIENT_ID_MISMATCH = "Client order ID is not correct for this order ID."
DECIMAL_LEGAL = "^([0-9]{1,20})(\\.[0-9]{1,20})?$"
CLIENT_ID_LEGAL = "^[\\.A-Z\\:/a-z0-9_-]{1,36}$"
_DECIMAL_RE = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
_CLIENT_ID_RE = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
_INT_RE = re.compile(r"^[0-9]{1,20}$")

AUTH_PARAMS = frozenset({"timestamp", "recvWindow", "apiKey", "signature"})
PLACE_PARAMS = AUTH_PARAMS | {
    "symbol", "side", "type", "timeInForce", "quantity", "quoteOrderQty", "price", "newClientOrderId",
    "strategyId", "strategyType", "stopPrice", "trailingDelta", "icebergQty", "newOrderRespType",
    "selfTradePreventionMode", "pegPriceType", "pegOffsetValue", "pegOffsetType",
}  # fmt: skip

# Operations, their REST routes and weights
OPS = ("order.place", "order.test", "order.status", "order.cancel", "openOrders.cancelAll", "openOrders.status",
       "allOrders", "myTrades", "account.status", "account.rateLimits.orders")  # fmt: skip
REST_ROUTES = {
    ("POST", "/api/v3/order"): "order.place",
    ("POST", "/api/v3/order/test"): "order.test",
    ("GET", "/api/v3/order"): "order.status",
    ("DELETE", "/api/v3/order"): "order.cancel",
    ("DELETE", "/api/v3/openOrders"): "openOrders.cancelAll",
    ("GET", "/api/v3/openOrders"): "openOrders.status",
    ("GET", "/api/v3/allOrders"): "allOrders",
    ("GET", "/api/v3/myTrades"): "myTrades",
    ("GET", "/api/v3/account"): "account.status",
    ("GET", "/api/v3/rateLimit/order"): "account.rateLimits.orders",
}
ZERO_WEIGHT_ON_SUCCESS = frozenset({"order.place", "order.cancel", "openOrders.cancelAll"})  # since 2026-04-02
ORDER_ENTRY_OPS = ZERO_WEIGHT_ON_SUCCESS  # the operations order faults apply to
HISTORY_LIMIT = 100_000  # closed orders kept per symbol (all accounts); older ones are forgotten (-2013)


def request_weight(op: str, params: Mapping[str, str]) -> int:
    """REQUEST_WEIGHT charged up front (order entry: 0 here, 1 added when it fails: ``ZERO_WEIGHT_ON_SUCCESS``)."""
    if op in ZERO_WEIGHT_ON_SUCCESS:
        return 0
    if op == "order.test":
        return 20 if params.get("computeCommissionRates") == "true" else 1
    if op == "order.status":
        return 4
    if op == "openOrders.status":
        return 6 if params.get("symbol") else 80
    if op == "myTrades":
        return 5 if params.get("orderId") else 20
    if op == "account.rateLimits.orders":
        return 40
    return 20  # allOrders, account.status


class Reply(NamedTuple):
    """What an operation answers: HTTP status (200), the JSON body, extra headers."""

    status: int
    body: Any
    headers: dict[str, str]


def fmt(v: int) -> str:
    """Fixed point -> Binance's 8-decimal string (``150_000_000`` -> ``"1.50000000"``)."""
    if v < 0:
        return "-" + fmt(-v)
    w, f = divmod(v, S)
    return f"{w}.{f:08d}"


def ceil_quote(px: int, qty: int) -> int:
    """ceil(px*qty/1e8): what a BUY of qty at up to px can cost at most."""
    return -((-px * qty) // S)


def split_symbol(symbol: str) -> tuple[str, str]:
    """(base, quote) by the quote suffix (the simulator's symbols are BASE+QUOTE)."""
    quote = next((q for q in QUOTE_ASSETS if symbol.endswith(q) and len(symbol) > len(q)), "USDT")
    base = symbol[: -len(quote)] if symbol.endswith(quote) else symbol
    return base or symbol, quote


def symbol_filters(spec: SymbolSpec, max_open_orders: int) -> list[dict[str, Any]]:
    """The filters exchangeInfo lists for a symbol, exactly the ones ``OrderService`` enforces."""
    tick, step = fmt(_fx(spec.tick_size)), fmt(_fx(spec.step_size))
    return [
        {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": fmt(MAX_PRICE), "tickSize": tick},
        {"filterType": "LOT_SIZE", "minQty": step, "maxQty": fmt(MAX_QTY), "stepSize": step},
        {"filterType": "NOTIONAL", "minNotional": fmt(_fx(spec.min_notional)), "applyMinToMarket": True,
         "maxNotional": fmt(MAX_NOTIONAL), "applyMaxToMarket": False, "avgPriceMins": 5},
        {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": fmt(MARKET_MAX_QTY),
         "stepSize": "0.00000000"},
        {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": max_open_orders},
    ]  # fmt: skip


def _fx(text: str) -> int:
    from core.fixedpoint import to_fixed

    return to_fixed(text)


def normalize_params(params: Mapping[str, Any]) -> dict[str, str]:
    """WS API JSON params -> the strings REST would carry (bools ``true``/``false``, numbers as written)."""
    out = {}
    for k, v in params.items():
        if v is None:
            continue
        out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
    return out


# ---------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------
@dataclass(slots=True)
class Fill:
    """One execution of one of our orders (a row of myTrades)."""

    trade_id: int
    price: int
    qty: int
    quote: int
    commission: int
    commission_asset: str
    time: int
    is_maker: bool


@dataclass(slots=True)
class Order:
    """One order as the exchange remembers it (open or not)."""

    account: str
    symbol: str
    order_id: int
    client_order_id: str
    side: int  # SIDE_BUY / SIDE_SELL
    type: int  # OT_*
    tif: int  # TIF_* (GTC for MARKET / LIMIT_MAKER, as Binance reports them)
    price: int  # fixed point; 0 for MARKET
    qty: int  # origQty (a MARKET by quoteOrderQty: its executed qty once done)
    quote_qty: int  # origQuoteOrderQty; 0 unless a MARKET by quoteOrderQty
    time: int  # ms, creation (transactTime of the placement)
    stp: str
    strategy_id: int | None = None
    strategy_type: int | None = None
    executed: int = 0
    cum_quote: int = 0
    status: int = OS_NEW
    update_time: int = 0
    working_time: int = 0
    resting: bool = False  # on the (matching engine's) book
    expiry_reason: str = ""
    lock_asset: str = ""
    lock_left: int = 0  # what this order still has locked
    fills: list[Fill] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.status in (OS_NEW, OS_PARTIALLY_FILLED)


@dataclass(slots=True)
class AccountState:
    """Per account: its orders (open and past), client ids, trades, ORDERS counts, listeners."""

    name: str
    open: dict[str, dict[int, Order]] = field(default_factory=dict)  # symbol -> orderId -> order
    history: dict[str, list[int]] = field(default_factory=dict)  # symbol -> its orderIds, ascending
    client_ids: dict[str, dict[str, int]] = field(default_factory=dict)  # symbol -> clientOrderId -> latest orderId
    trades: dict[str, list[tuple[int, Fill]]] = field(default_factory=dict)  # symbol -> (orderId, fill), ascending
    win10: int = -1
    n10: int = 0
    win_day: int = -1
    n_day: int = 0
    listeners: list[Callable[[dict], None]] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Books
# ---------------------------------------------------------------------------
class GeneratedBook:
    """The generator's ``SymbolBook`` as the matching core sees it; our fills come out of its ladders.

    ``arrays()`` copies up to ``depth_levels`` levels a side into fixed point
    (best first; the deepest level a lot short, so a side never empties).
    ``take()`` applies a taker's fills to the ladder the way the generator's
    own takers do (level change + trade + top change, each with the next
    update / trade id) and keeps the rows for ``merge``, which puts them in
    front of the next generated step: the public streams show our impact in
    exchange order, and diffs stay gap-free.
    """

    def __init__(self, book):
        self.book = book
        self.tick = book.tick_fx
        self.step = book.step_fx
        self.depth = int(book.st[mk.ST_D])
        d = self.depth
        self._p = np.zeros(d, np.int64)
        self._q = np.zeros(d, np.int64)
        self.bid_px, self.bid_qty = np.zeros(d, np.int64), np.zeros(d, np.int64)
        self.ask_px, self.ask_qty = np.zeros(d, np.int64), np.zeros(d, np.int64)
        self.pre_chg: list[list[int]] = []  # rows made between steps: go in front of the next step's
        self.pre_trd: list[list[int]] = []
        self.pre_top: list[list[int]] = []
        self.post_trd: list[list[int]] = []  # maker-fill trades made while a step is processed: go after it
        self.stepping = False  # True while on_generated processes a step (maker trades then follow its rows)

    @property
    def max_levels(self) -> int:
        return self.depth

    def _side(self, ladder, best, direction, px_out, qty_out) -> int:
        st = self.book.st
        n = mk.snapshot_side(ladder, int(best), self.depth, direction, self.depth, int(st[mk.ST_BASE]), self._p, self._q)
        np.multiply(self._p[:n], self.tick, out=px_out[:n])
        np.multiply(self._q[:n], self.step, out=qty_out[:n])
        if n:
            qty_out[n - 1] -= self.step  # the reserve lot
        return n

    def arrays(self):
        st = self.book.st
        nb_ = self._side(self.book.bid, st[mk.ST_BB], -1, self.bid_px, self.bid_qty)
        na = self._side(self.book.ask, st[mk.ST_BA], 1, self.ask_px, self.ask_qty)
        return self.bid_px, self.bid_qty, nb_, self.ask_px, self.ask_qty, na

    def best(self) -> tuple[int, int]:
        bb, _, ba, _ = self.book.best()
        return bb * self.tick, ba * self.tick

    def take(self, taker_side: int, fills: list[tuple[int, int]], t_ms: int) -> list[int]:
        """Take (px, qty) fills from the opposite side; returns their public trade ids.

        ``t_ms`` (the order's transactTime, server clock) is not used: public trade
        times stay on the host clock like the generator's own (a clock-skew fault
        moves only the REST clock).
        """
        t_ms = time.time_ns() // 1_000_000
        book, st = self.book, self.book.st
        is_buy = taker_side == SIDE_BUY
        ladder = book.ask if is_buy else book.bid
        side_code = mk.SIDE_ASK if is_buy else mk.SIDE_BID
        ids = []
        for px, qty in fills:
            ticks, lots = px // self.tick, qty // self.step
            base = int(st[mk.ST_BASE])
            idx = ticks - base
            ladder[idx] -= lots
            st[mk.ST_UID] += 1
            self.pre_chg.append([int(st[mk.ST_UID]), side_code, ticks, int(ladder[idx])])
            st[mk.ST_TID] += 1
            st[mk.ST_AID] += 1
            ids.append(int(st[mk.ST_TID]))
            self.pre_trd.append([int(st[mk.ST_TID]), ticks, lots, 0 if is_buy else 1, int(st[mk.ST_AID]), t_ms])
            if ladder[idx] == 0:
                best_key = mk.ST_BA if is_buy else mk.ST_BB
                if int(st[best_key]) == idx:
                    step_dir = 1 if is_buy else -1
                    j = idx + step_dir
                    for _ in range(self.depth):
                        if ladder[j] != 0:
                            break
                        j += step_dir
                    st[best_key] = j
        self._log_top()
        return ids

    def _log_top(self) -> None:
        st, book = self.book.st, self.book
        bb, ba = int(st[mk.ST_BB]), int(st[mk.ST_BA])
        if (bb, int(book.bid[bb]), ba, int(book.ask[ba])) != (int(st[mk.ST_TOP_BB]), int(st[mk.ST_TOP_BBQ]),
                                                                int(st[mk.ST_TOP_BA]), int(st[mk.ST_TOP_BAQ])):
            st[mk.ST_TOP_BB], st[mk.ST_TOP_BBQ], st[mk.ST_TOP_BA], st[mk.ST_TOP_BAQ] = bb, book.bid[bb], ba, book.ask[ba]
            base = int(st[mk.ST_BASE])
            self.pre_top.append([int(st[mk.ST_UID]), base + bb, int(book.bid[bb]), base + ba, int(book.ask[ba])])

    def maker_trade(self, order_side: int, px: int, qty: int, t_ms: int) -> int:
        """A public trade for one of our maker fills (the book does not change: our order was not shown)."""
        t_ms = time.time_ns() // 1_000_000  # host clock, as ``take``
        st = self.book.st
        st[mk.ST_TID] += 1
        st[mk.ST_AID] += 1
        (self.post_trd if self.stepping else self.pre_trd).append([int(st[mk.ST_TID]), px // self.tick, qty // self.step,
                              1 if order_side == SIDE_BUY else 0, int(st[mk.ST_AID]), t_ms])  # fmt: skip
        return int(st[mk.ST_TID])

    def merge(self, flow):
        """The step's flow with our rows in exchange order (pre rows first, post trades last)."""
        if not (self.pre_chg or self.pre_trd or self.pre_top or self.post_trd):
            return flow

        def cat(rows, arr, cols, after=()):
            parts = []
            if rows:
                parts.append(np.asarray(rows, dtype=np.int64).reshape(-1, cols))
            parts.append(arr)
            if after:
                parts.append(np.asarray(after, dtype=np.int64).reshape(-1, cols))
            return np.concatenate(parts) if len(parts) > 1 else arr

        flow.changes = cat(self.pre_chg, flow.changes, mk.CHG_COLS)
        flow.trades = cat(self.pre_trd, flow.trades, mk.TRD_COLS, self.post_trd)
        flow.tops = cat(self.pre_top, flow.tops, mk.TOP_COLS)
        flow.events += len(self.pre_chg) + len(self.pre_trd) + len(self.post_trd)
        flow.last_update_id = self.book.update_id
        self.pre_chg, self.pre_trd, self.pre_top, self.post_trd = [], [], [], []
        return flow


class ReplayedBook:
    """An L2 book rebuilt from replayed frames (recorded snapshot + depth diffs), fixed point.

    Our taker fills deplete this copy only (the replayed streams are the
    recording); a later recorded update of a level sets it again.
    """

    MAX_LEVELS = 5000

    def __init__(self, symbol: str, snapshot: Callable[[str], bytes | None]):
        self.symbol = symbol
        self._snapshot = snapshot
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.last_update_id: int | None = None
        self.depth_stream: str | None = None  # the one depth stream applied (100 ms or 1000 ms diffs)
        # trade ids: unique across runs, as Binance's are (a journal that outlives this simulator keys its
        # fills by (symbol, trade id)): they start at the wall-clock microsecond this book was made
        self.next_trade_id = time.time_ns() // 1000
        n = self.MAX_LEVELS
        self.bid_px, self.bid_qty = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.ask_px, self.ask_qty = np.zeros(n, np.int64), np.zeros(n, np.int64)

    @property
    def max_levels(self) -> int:
        return self.MAX_LEVELS

    def _init(self) -> bool:
        body = self._snapshot(self.symbol)
        if body is None:
            return False
        snap = orjson.loads(body)
        self.bids = {_fx(p): _fx(q) for p, q in snap.get("bids", []) if _fx(q) > 0}
        self.asks = {_fx(p): _fx(q) for p, q in snap.get("asks", []) if _fx(q) > 0}
        self.last_update_id = int(snap.get("lastUpdateId", 0))
        return True

    def on_depth(self, ev: dict) -> None:
        if self.last_update_id is None and not self._init():
            return
        if int(ev.get("u", 0)) <= (self.last_update_id or 0):
            return
        for side, levels in ((self.bids, ev.get("b", ())), (self.asks, ev.get("a", ()))):
            for p, q in levels:
                px, qty = _fx(p), _fx(q)
                if qty > 0:
                    side[px] = qty
                else:
                    side.pop(px, None)
        self.last_update_id = int(ev["u"])

    def arrays(self):
        if self.last_update_id is None:
            self._init()
        n_b = n_a = 0
        for n_max, levels, px_out, qty_out, rev in ((self.MAX_LEVELS, self.bids, self.bid_px, self.bid_qty, True),
                                                    (self.MAX_LEVELS, self.asks, self.ask_px, self.ask_qty, False)):
            keys = sorted(levels, reverse=rev)[:n_max]
            for i, p in enumerate(keys):
                px_out[i] = p
                qty_out[i] = levels[p]
            if rev:
                n_b = len(keys)
            else:
                n_a = len(keys)
        return self.bid_px, self.bid_qty, n_b, self.ask_px, self.ask_qty, n_a

    def best(self) -> tuple[int, int]:
        if self.last_update_id is None:
            self._init()
        return (max(self.bids) if self.bids else 0), (min(self.asks) if self.asks else 0)

    def take(self, taker_side: int, fills: list[tuple[int, int]], t_ms: int) -> list[int]:
        levels = self.asks if taker_side == SIDE_BUY else self.bids
        ids = []
        for px, qty in fills:
            left = levels.get(px, 0) - qty
            if left > 0:
                levels[px] = left
            else:
                levels.pop(px, None)
            ids.append(self.next_trade_id)
            self.next_trade_id += 1
        return ids

    def maker_trade(self, order_side: int, px: int, qty: int, t_ms: int) -> int:
        self.next_trade_id += 1
        return self.next_trade_id - 1


@dataclass
class SymbolVenue:
    """One tradable symbol: filters, assets, its matching engine and book."""

    spec: SymbolSpec
    base: str
    quote: str
    tick: int
    step: int
    min_notional: int
    engine: MatchingEngine
    book: Any  # GeneratedBook | ReplayedBook
    orders: dict[int, Order] = field(default_factory=dict)  # every order, by orderId
    next_order_id: int = 1
    fills_buf: np.ndarray | None = None  # scratch for dry-run matches


# ---------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------
class OrderService:
    """Accounts' orders, balances and events against the simulator's books (see the module docstring)."""

    def __init__(self, *, specs: Iterable[SymbolSpec], books: Mapping[str, Any], ledger: Ledger, accounts: Iterable[str],
                 fees: FeeConfig, clock_ms: Callable[[], int], orders_per_10s: int = 100,
                 orders_per_day: int = 200_000, max_open_orders: int = 200, queue_model: str = "trade_through",
                 seed: int = 42, history_limit: int = HISTORY_LIMIT):  # fmt: skip
        self.ledger = ledger
        self.fees = fees
        self.clock_ms = clock_ms
        self.orders_per_10s = orders_per_10s
        self.orders_per_day = orders_per_day
        self.max_open_orders = max_open_orders
        self.history_limit = history_limit
        self.queue_model = QUEUE_MODELS[queue_model]
        self.accounts: dict[str, AccountState] = {a: AccountState(a) for a in accounts}
        self._rng = random.Random(seed)
        self._exec_id = 0
        self.stats = {"placed": 0, "rejected": 0, "canceled": 0, "taker_fills": 0, "maker_fills": 0,
                      "rate_limited": 0, "listener_errors": 0}  # fmt: skip
        capacity = max(1, max_open_orders * max(1, len(self.accounts)))
        self.venues: dict[str, SymbolVenue] = {}
        for spec in specs:
            book = books.get(spec.symbol)
            if book is None:
                continue
            base, quote = split_symbol(spec.symbol)
            engine = MatchingEngine(capacity, queue_model=self.queue_model, maker_fee=fees.maker, taker_fee=fees.taker,
                                    fee_mode=FEE_NATIVE, max_levels=max(book.max_levels, 16))  # fmt: skip
            self.venues[spec.symbol] = SymbolVenue(
                spec=spec, base=base, quote=quote, tick=_fx(spec.tick_size), step=_fx(spec.step_size),
                min_notional=_fx(spec.min_notional), engine=engine, book=book,
                fills_buf=np.zeros((2, max(book.max_levels, 16)), np.int64),
            )  # fmt: skip

    # -- listeners ----------------------------------------------------------------------------
    def add_listener(self, account: str, cb: Callable[[dict], None]) -> None:
        """Deliver ``account``'s user-data events to ``cb(event_dict)`` (called synchronously; must not block)."""
        self.accounts[account].listeners.append(cb)

    def remove_listener(self, account: str, cb: Callable[[dict], None]) -> None:
        lst = self.accounts[account].listeners
        if cb in lst:
            lst.remove(cb)

    def _emit(self, acct: AccountState, ev: dict) -> None:
        for cb in list(acct.listeners):
            try:
                cb(ev)
            except Exception:  # a listener's bug must not break matching: counted and logged
                self.stats["listener_errors"] += 1
                log.exception("listener of account %r failed on %s", acct.name, ev.get("e"))

    def _emit_position(self, acct: AccountState, now: int) -> None:
        changed = self.ledger.take_changes(acct.name)
        if not changed or not acct.listeners:
            return
        bal = []
        for a in changed:
            free, locked = self.ledger.balance(acct.name, a)
            bal.append({"a": a, "f": fmt(free), "l": fmt(locked)})
        self._emit(acct, {"e": "outboundAccountPosition", "E": now, "u": self.ledger.update_ms[acct.name], "B": bal})

    def _exec_report(self, o: Order, now: int, x: str, *, last_qty: int = 0, last_px: int = 0, last_quote: int = 0,
                     commission: int = 0, commission_asset: str | None = None, trade_id: int = -1,
                     is_maker: bool = False, client_id: str | None = None, orig_client_id: str = "") -> dict:  # fmt: skip
        self._exec_id += 1
        ev = {
            "e": "executionReport", "E": now, "s": o.symbol,
            "c": o.client_order_id if client_id is None else client_id,  # a cancel: the cancel's id
            "S": SIDE_NAMES[o.side], "o": TYPE_NAMES[o.type], "f": TIF_NAMES[o.tif],
            "q": fmt(o.qty), "p": fmt(o.price), "P": "0.00000000", "F": "0.00000000", "g": -1,
            "C": orig_client_id, "x": x, "X": STATUS_NAMES[o.status], "r": "NONE", "i": o.order_id,
            "l": fmt(last_qty), "z": fmt(o.executed), "L": fmt(last_px), "n": fmt(commission), "N": commission_asset,
            "T": now, "t": trade_id, "I": self._exec_id, "w": o.resting and o.is_open, "m": is_maker, "M": False,
            "O": o.time, "Z": fmt(o.cum_quote), "Y": fmt(last_quote), "Q": fmt(o.quote_qty), "W": o.working_time,
            "V": o.stp,
        }  # fmt: skip
        if o.strategy_id is not None:
            ev["j"] = o.strategy_id
        if o.strategy_type is not None:
            ev["J"] = o.strategy_type
        if o.status == OS_EXPIRED and o.expiry_reason:
            ev["eR"] = o.expiry_reason
        return ev

    def _report(self, acct: AccountState, o: Order, now: int, x: str, **kw) -> None:
        if acct.listeners:
            self._emit(acct, self._exec_report(o, now, x, **kw))

    # -- dispatch -----------------------------------------------------------------------------
    def dispatch(self, op: str, account: str, params: Mapping[str, str]) -> Reply:
        """Run one operation for an authenticated account."""
        acct = self.accounts.get(account)
        if acct is None:
            raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.")
        if op not in OPS:
            raise BinanceError(-1020, "This operation is not supported.")
        return getattr(self, "_op_" + op.replace(".", "_"))(acct, params)

    # -- param helpers --------------------------------------------------------------------------
    @staticmethod
    def _only(params: Mapping[str, str], allowed: frozenset[str] | set[str]) -> None:
        unknown = [k for k in params if k not in allowed]
        if unknown:
            n = len(params)
            raise BinanceError(-1104, f"Not all sent parameters were read; read '{n - len(unknown)}' parameter(s) "
                                      f"but was sent '{n}'.")  # fmt: skip

    def _venue(self, params: Mapping[str, str], required: bool = True) -> SymbolVenue | None:
        sym = params.get("symbol")
        if not sym:
            if required:
                raise err_mandatory("symbol")
            return None
        v = self.venues.get(sym)
        if v is None:
            raise BinanceError(-1121, "Invalid symbol.")
        return v

    @staticmethod
    def _decimal(params: Mapping[str, str], name: str) -> int | None:
        raw = params.get(name)
        if raw is None:
            return None
        if raw == "":
            raise BinanceError(-1105, f"Parameter '{name}' was empty.")
        if not _DECIMAL_RE.match(raw):
            raise err_illegal(name, DECIMAL_LEGAL)
        whole, _, frac = raw.partition(".")
        if len(frac.rstrip("0")) > 8:
            raise BinanceError(-1111, f"Parameter '{name}' has too much precision.")
        v = int(whole) * S + int((frac[:8] or "0").ljust(8, "0"))
        if v >= 2**63:
            raise BinanceError(-1108, f"Parameter '{name}' overflowed.")
        return v

    @staticmethod
    def _int(params: Mapping[str, str], name: str) -> int | None:
        raw = params.get(name)
        if raw is None:
            return None
        if not _INT_RE.match(raw) or int(raw) >= 2**63:
            raise err_illegal(name, "^[0-9]{1,20}$")
        return int(raw)

    @staticmethod
    def _client_id(params: Mapping[str, str], name: str) -> str | None:
        raw = params.get(name)
        if raw is None:
            return None
        if raw == "":
            raise BinanceError(-1118 if name == "newClientOrderId" else -1119,
                               "New client order ID was empty." if name == "newClientOrderId"
                               else "Original client order ID was empty.")  # fmt: skip
        if not _CLIENT_ID_RE.match(raw):
            raise err_illegal(name, CLIENT_ID_LEGAL)
        return raw

    def _new_client_id(self) -> str:
        """22 characters like Binance's generated ids (hex here: seeded, and cheap on the order path)."""
        return format(self._rng.getrandbits(88), "022x")

    # -- order entry ----------------------------------------------------------------------------
    def _parse_order(self, acct: AccountState, params: Mapping[str, str], allowed: frozenset[str]):
        self._only(params, allowed)
        venue = self._venue(params)
        side_s, type_s = params.get("side"), params.get("type")
        if not side_s:
            raise err_mandatory("side")
        if not type_s:
            raise err_mandatory("type")
        side = SIDES.get(side_s)
        if side is None:
            raise BinanceError(-1117, "Invalid side.")
        if type_s in UNSUPPORTED_TYPES:
            raise BinanceError(-2010, UNSUPPORTED_TYPES[type_s])
        otype = TYPES.get(type_s)
        if otype is None:
            raise BinanceError(-1116, "Invalid orderType.")
        for name, msg in (("icebergQty", "Iceberg orders are not supported for this symbol."),
                          ("trailingDelta", "Trailing stop orders are not supported for this symbol.")):  # fmt: skip
            if name in params:
                raise BinanceError(-2010, msg)
        if "stopPrice" in params:
            raise BinanceError(-1106, "Parameter 'stopPrice' sent when not required.")
        if any(k in params for k in ("pegPriceType", "pegOffsetValue", "pegOffsetType")):
            raise BinanceError(-1014, "Unsupported order combination.")
        tif_s = params.get("timeInForce")
        price = self._decimal(params, "price")
        qty = self._decimal(params, "quantity")
        quote_qty = self._decimal(params, "quoteOrderQty")
        if otype == OT_LIMIT:
            if not tif_s:
                raise err_mandatory("timeInForce")
            for name, v in (("price", price), ("quantity", qty)):
                if v is None:
                    raise err_mandatory(name)
            if quote_qty is not None:
                raise BinanceError(-1106, "Parameter 'quoteOrderQty' sent when not required.")
        elif otype == OT_LIMIT_MAKER:
            if tif_s is not None:
                raise BinanceError(-1106, "Parameter 'timeInForce' sent when not required.")
            for name, v in (("price", price), ("quantity", qty)):
                if v is None:
                    raise err_mandatory(name)
            if quote_qty is not None:
                raise BinanceError(-1106, "Parameter 'quoteOrderQty' sent when not required.")
        else:  # MARKET
            if tif_s is not None:
                raise BinanceError(-1106, "Parameter 'timeInForce' sent when not required.")
            if price is not None:
                raise BinanceError(-1106, "Parameter 'price' sent when not required.")
            if qty is None and quote_qty is None:
                raise BinanceError(-1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!")
            if qty is not None and quote_qty is not None:
                raise BinanceError(-1128, "Combination of optional parameters invalid.")
        tif = TIF_GTC
        if tif_s is not None:
            tif = TIFS.get(tif_s, 0)
            if not tif:
                raise BinanceError(-1115, "Invalid timeInForce.")
        resp = params.get("newOrderRespType", "FULL" if otype in (OT_LIMIT, OT_MARKET) else "ACK")
        if resp not in RESP_TYPES:
            raise err_illegal("newOrderRespType", ", ".join(RESP_TYPES))
        stp = params.get("selfTradePreventionMode", DEFAULT_STP)
        if stp not in STP_MODES:
            raise BinanceError(-1130, "Data sent for parameter 'selfTradePreventionMode' is not valid.")
        strategy_id = self._int(params, "strategyId")
        strategy_type = self._int(params, "strategyType")
        if strategy_type is not None and strategy_type < 1_000_000:
            raise BinanceError(-1134, "`strategyType` was less than 1000000.")
        client_id = self._client_id(params, "newClientOrderId")
        self._filters(venue, otype, side, price or 0, qty or 0, quote_qty or 0)
        return (venue, side, otype, tif, price or 0, qty or 0, quote_qty or 0, resp, stp, strategy_id, strategy_type,
                client_id)  # fmt: skip

    def _filters(self, v: SymbolVenue, otype: int, side: int, price: int, qty: int, quote_qty: int) -> None:
        def fail(name: str):
            raise BinanceError(-1013, f"Filter failure: {name}")

        if otype != OT_MARKET and (price < v.tick or price > MAX_PRICE or price % v.tick):
            fail("PRICE_FILTER")
        if otype != OT_MARKET or qty:
            if qty < v.step or qty > MAX_QTY or qty % v.step:
                fail("LOT_SIZE")
            if otype == OT_MARKET and qty > MARKET_MAX_QTY:
                fail("MARKET_LOT_SIZE")
        if otype != OT_MARKET:
            notional = price * qty  # 1e-16 units, exact
            if notional < v.min_notional * S or notional > MAX_NOTIONAL * S:
                fail("NOTIONAL")
        elif quote_qty:
            if quote_qty < v.min_notional:
                fail("NOTIONAL")
        else:
            bid, ask = v.book.best()
            ref = (bid + ask) // 2 if bid and ask else bid or ask  # the book's mid stands in for the 5-min average
            if ref and ref * qty < v.min_notional * S:
                fail("NOTIONAL")

    def _count_order(self, acct: AccountState, now: int) -> dict[str, str]:
        """Count one new order in the ORDERS windows (429 -1015 when a limit is reached); the count headers."""
        w10, wd = now // 10_000, now // 86_400_000
        if acct.win10 != w10:
            acct.win10, acct.n10 = w10, 0
        if acct.win_day != wd:
            acct.win_day, acct.n_day = wd, 0
        for n, limit, text, end in ((acct.n_day, self.orders_per_day, "1 DAY", (wd + 1) * 86_400_000),
                                    (acct.n10, self.orders_per_10s, "10 SECOND", (w10 + 1) * 10_000)):  # fmt: skip
            if n >= limit:
                self.stats["rate_limited"] += 1
                raise BinanceError(-1015, f"Too many new orders; current limit is {limit} orders per {text}.", 429,
                                   {"Retry-After": str(max(1, -(-(end - now) // 1000))), **self._count_headers(acct)})
        acct.n10 += 1
        acct.n_day += 1
        return self._count_headers(acct)

    @staticmethod
    def _count_headers(acct: AccountState) -> dict[str, str]:
        return {"X-MBX-ORDER-COUNT-10S": str(acct.n10), "X-MBX-ORDER-COUNT-1D": str(acct.n_day)}

    def _uncount_order(self, acct: AccountState, now: int) -> None:
        """An order traded: its unit of the ORDERS count comes back (in the windows still current)."""
        if acct.win10 == now // 10_000 and acct.n10 > 0:
            acct.n10 -= 1
        if acct.win_day == now // 86_400_000 and acct.n_day > 0:
            acct.n_day -= 1

    def _dry_run(self, v: SymbolVenue, arrays, side: int, qty: int, quote_qty: int) -> tuple[int, int]:
        """(filled qty, filled quote) a MARKET order would get now, without touching the book."""
        bpx, bqty, nb_, apx, aqty, na = arrays
        buf = v.fills_buf
        _, filled, quote, _ = match_taker(bpx, bqty, nb_, apx, aqty, na, side, OT_MARKET, TIF_GTC, 0, qty, quote_qty,
                                          v.step, False, buf[0], buf[1])  # fmt: skip
        return int(filled), int(quote)

    def _op_order_test(self, acct: AccountState, params: Mapping[str, str]) -> Reply:
        parsed = self._parse_order(acct, params, PLACE_PARAMS | {"computeCommissionRates"})
        cc = params.get("computeCommissionRates", "false")
        if cc not in ("true", "false"):
            raise err_illegal("computeCommissionRates", "true, false")
        if cc == "false":
            return Reply(200, {}, {})
        del parsed
        zero = {"maker": "0.00000000", "taker": "0.00000000"}
        return Reply(200, {
            "standardCommissionForOrder": {"maker": fmt(self.fees.maker), "taker": fmt(self.fees.taker)},
            "specialCommissionForOrder": dict(zero),
            "taxCommissionForOrder": dict(zero),
            "discount": {"enabledForAccount": False, "enabledForSymbol": False, "discountAsset": "BNB",
                         "discount": "0.00000000"},
        }, {})  # fmt: skip

    def _op_order_place(self, acct: AccountState, params: Mapping[str, str]) -> Reply:
        (v, side, otype, tif, price, qty, quote_qty, resp, stp, strategy_id, strategy_type,
         client_id) = self._parse_order(acct, params, PLACE_PARAMS)  # fmt: skip
        now = self.clock_ms()
        headers = self._count_order(acct, now)
        try:
            o, arrays = self._accept(acct, v, side, otype, tif, price, qty, quote_qty, stp, client_id, now)
            o.strategy_id, o.strategy_type = strategy_id, strategy_type
            self._execute(acct, v, o, arrays, now)
        except BinanceError as exc:
            self.stats["rejected"] += 1
            exc.headers.update(headers)
            raise
        self.stats["placed"] += 1
        return Reply(200, self._place_body(o, resp, now), headers)

    def _accept(self, acct, v, side, otype, tif, price, qty, quote_qty, stp, client_id, now):
        """Engine-side checks and the balance lock; the order is not matched yet."""
        open_ = acct.open.setdefault(v.spec.symbol, {})
        ids = acct.client_ids.setdefault(v.spec.symbol, {})
        if client_id is not None:
            prev = ids.get(client_id)
            if prev is not None and prev in open_:
                raise BinanceError(-2010, MSG_DUPLICATE)
        else:
            client_id = self._new_client_id()
        if len(open_) >= self.max_open_orders:
            raise BinanceError(-1013, "Filter failure: MAX_NUM_ORDERS")
        arrays = v.book.arrays()
        lock_asset = v.quote if side == SIDE_BUY else v.base
        if otype != OT_MARKET:
            need = ceil_quote(price, qty) if side == SIDE_BUY else qty
        elif side == SIDE_BUY:
            need = quote_qty if quote_qty else self._dry_run(v, arrays, side, qty, 0)[1]
        else:
            need = qty if qty else self._dry_run(v, arrays, side, 0, quote_qty)[0]
        if not self.ledger.lock(acct.name, lock_asset, need, now):
            raise BinanceError(-2010, MSG_INSUFFICIENT)
        o = Order(account=acct.name, symbol=v.spec.symbol, order_id=v.next_order_id, client_order_id=client_id,
                  side=side, type=otype, tif=tif, price=price, qty=qty, quote_qty=quote_qty, time=now, stp=stp,
                  update_time=now, working_time=now, lock_asset=lock_asset, lock_left=need)  # fmt: skip
        return o, arrays

    def _execute(self, acct: AccountState, v: SymbolVenue, o: Order, arrays, now: int) -> None:
        """Match an accepted order: taker fills, then rest / expire; events; the book takes the impact."""
        bpx, bqty, nb_, apx, aqty, na = arrays
        res = v.engine.submit(order_id=o.order_id, symbol=0, side=o.side, order_type=o.type, qty=o.qty,
                              price=o.price, tif=o.tif, quote_qty=o.quote_qty, lot_step=v.step,
                              bid_px=bpx, bid_qty=bqty, n_bid=nb_, ask_px=apx, ask_qty=aqty, n_ask=na,
                              deplete=True)  # fmt: skip
        if res.outcome in (OUT_REJECTED_WOULD_TAKE, OUT_REJECTED_TABLE_FULL) or res.outcome not in (
                OUT_FILLED, OUT_RESTING, OUT_EXPIRED_IOC, OUT_EXPIRED_FOK, OUT_EXPIRED_NO_LIQUIDITY):  # fmt: skip
            self.ledger.release(acct.name, o.lock_asset, o.lock_left, now)
            self.ledger.take_changes(acct.name)  # a lock and its release: nothing to report
            if res.outcome == OUT_REJECTED_WOULD_TAKE:
                raise BinanceError(-2010, MSG_WOULD_TAKE)
            if res.outcome == OUT_REJECTED_TABLE_FULL:
                raise BinanceError(-1013, "Filter failure: MAX_NUM_ORDERS")
            raise BinanceError(-1013, "The request is rejected by the API. (i.e. The request didn't reach the "
                                      "Matching Engine.)")  # fmt: skip
        # the order exists from here on
        v.next_order_id += 1
        if len(v.orders) >= self.history_limit + self.history_limit // 10:
            self._prune(v)
        v.orders[o.order_id] = o
        acct.history.setdefault(o.symbol, []).append(o.order_id)
        acct.client_ids[o.symbol][o.client_order_id] = o.order_id
        f = res.fills
        fills = list(zip(f["px"].tolist(), f["qty"].tolist(), f["quote"].tolist(), f["commission"].tolist(),
                         f["commission_asset"].tolist(), f["status"].tolist()))  # fmt: skip
        o.resting = res.outcome == OUT_RESTING
        if o.resting:
            acct.open[o.symbol][o.order_id] = o
        self._report(acct, o, now, "NEW")
        if fills:
            trade_ids = v.book.take(o.side, [(px, q) for px, q, *_ in fills], now)
            for (px, q, quote, comm, asset_code, status), tid in zip(fills, trade_ids):
                self._fill(acct, v, o, px, q, quote, comm, asset_code, status, tid, False, now)
                self.stats["taker_fills"] += 1
        if res.outcome == OUT_RESTING:
            o.status = OS_PARTIALLY_FILLED if o.executed else OS_NEW
        elif res.outcome == OUT_FILLED:
            o.status = OS_FILLED
        else:
            o.status = OS_EXPIRED
            o.expiry_reason = EXPIRY_REASONS[res.outcome]
            self._report(acct, o, now, "EXPIRED")
        if o.type == OT_MARKET and o.quote_qty:
            o.qty = o.executed
        if not o.is_open:
            self._finish(acct, o, now)
        if fills and v.engine.n_live:
            self._after_impact(v, o.side, arrays, [px for px, *_ in fills], now)
        self._emit_position(acct, now)

    def _prune(self, v: SymbolVenue) -> None:
        """Forget the oldest closed orders of a symbol (and their trades) down to ``history_limit``.

        Binance archives old orders too (-2026); a long simulator run must not
        grow without bound. Open orders are always kept. Amortised O(1) per order.
        """
        excess = len(v.orders) - self.history_limit
        drop = set()
        for oid, o in v.orders.items():  # insertion order = orderId order
            if len(drop) >= excess:
                break
            if not o.is_open:
                drop.add(oid)
        for oid in drop:
            del v.orders[oid]
        sym = v.spec.symbol
        for acct in self.accounts.values():
            if sym in acct.history:
                acct.history[sym] = [i for i in acct.history[sym] if i not in drop]
            ids = acct.client_ids.get(sym, {})
            for cid in [c for c, i in ids.items() if i in drop]:
                del ids[cid]
            if sym in acct.trades:
                acct.trades[sym] = [r for r in acct.trades[sym] if r[0] not in drop]

    def _after_impact(self, v: SymbolVenue, taker_side: int, arrays, prices: list[int], now: int) -> None:
        """Our taker changed the public book: resting orders see the new queue and top."""
        if self.queue_model == QUEUE_POSITION:  # the levels it took from now show less ahead of resting orders
            bpx, bqty, nb_, apx, aqty, na = arrays
            px, qty, n = (apx, aqty, na) if taker_side == SIDE_BUY else (bpx, bqty, nb_)
            for p in prices:
                v.engine.on_depth(0, -taker_side, p, int(level_qty_at(px, qty, n, p)))
        bid, ask = v.book.best()
        self._maker_fills(v, v.engine.on_top(0, bid, ask), now)

    def _fill(self, acct: AccountState, v: SymbolVenue, o: Order, px: int, qty: int, quote: int, comm: int,
              asset_code: int, status: int, trade_id: int, is_maker: bool, now: int) -> None:  # fmt: skip
        """Settle one fill of ``o``: balances, commission, the order's totals, the event."""
        L, a = self.ledger, acct.name
        first = o.executed == 0
        if o.side == SIDE_BUY:
            ok = L.pay_locked(a, v.quote, quote, now)
            L.receive(a, v.base, qty, now)
            o.lock_left -= quote
        else:
            ok = L.pay_locked(a, v.base, qty, now)
            L.receive(a, v.quote, quote, now)
            o.lock_left -= qty
        if not ok:  # the lock always covers a fill: this is a bug, not a market condition
            raise RuntimeError(f"order {o.symbol}#{o.order_id}: the lock does not cover a fill")
        o.executed += qty
        o.cum_quote += quote
        o.update_time = now
        # commission: the fee asset when configured and covered, else native (received asset)
        fee_asset = v.base if asset_code == FEE_ASSET_BASE else v.quote
        fee = comm
        if self.fees.asset:
            alt = self._fee_in_asset(v, quote, self.fees.maker if is_maker else self.fees.taker)
            if alt is not None and L.charge_fee(a, self.fees.asset, alt, now):
                fee_asset, fee = self.fees.asset, alt
            elif not L.charge_fee(a, fee_asset, fee, now):
                raise RuntimeError(f"order {o.symbol}#{o.order_id}: the commission exceeds what the fill brought")
        elif not L.charge_fee(a, fee_asset, fee, now):
            raise RuntimeError(f"order {o.symbol}#{o.order_id}: the commission exceeds what the fill brought")
        if o.side == SIDE_BUY and o.type != OT_MARKET:  # keep locked only what the rest can cost
            excess = o.lock_left - ceil_quote(o.price, o.qty - o.executed)
            if excess > 0:
                L.release(a, v.quote, excess, now)
                o.lock_left -= excess
        fill = Fill(trade_id=trade_id, price=px, qty=qty, quote=quote, commission=fee, commission_asset=fee_asset,
                    time=now, is_maker=is_maker)  # fmt: skip
        o.fills.append(fill)
        acct.trades.setdefault(o.symbol, []).append((o.order_id, fill))
        o.status = status  # the matching core's: PARTIALLY_FILLED, or FILLED on the fill that completes the order
        if status == OS_FILLED and o.type == OT_MARKET and o.quote_qty:
            o.qty = o.executed
        if first:
            self._uncount_order(acct, now)
        self._report(acct, o, now, "TRADE", last_qty=qty, last_px=px, last_quote=quote, commission=fee,
                     commission_asset=fee_asset, trade_id=trade_id, is_maker=is_maker)  # fmt: skip

    def _fee_in_asset(self, v: SymbolVenue, quote: int, rate: int) -> int | None:
        price = self.fees.asset_prices.get(v.quote)
        if not price:
            return None
        in_quote = -((-quote * rate) // S)  # ceil
        return -((-in_quote * S) // price)

    def _finish(self, acct: AccountState, o: Order, now: int) -> None:
        """The order left the book (or never rested): give back what it still has locked."""
        if o.lock_left:
            self.ledger.release(acct.name, o.lock_asset, o.lock_left, now)
            o.lock_left = 0
        o.resting = False
        acct.open.get(o.symbol, {}).pop(o.order_id, None)

    # -- maker side -----------------------------------------------------------------------------
    def _maker_fills(self, v: SymbolVenue, fills: np.ndarray, now: int) -> None:
        if not len(fills):
            return
        rows = list(zip(fills["order_id"].tolist(), fills["px"].tolist(), fills["qty"].tolist(),
                        fills["quote"].tolist(), fills["commission"].tolist(),
                        fills["commission_asset"].tolist(), fills["status"].tolist()))  # fmt: skip
        touched: dict[str, AccountState] = {}
        for oid, px, q, quote, comm, asset_code, status in rows:
            o = v.orders[oid]
            acct = self.accounts[o.account]
            tid = v.book.maker_trade(o.side, px, q, now)
            self._fill(acct, v, o, px, q, quote, comm, asset_code, status, tid, True, now)
            self.stats["maker_fills"] += 1
            if not o.is_open:
                self._finish(acct, o, now)
            touched[acct.name] = acct
        for acct in touched.values():
            self._emit_position(acct, now)

    def on_generated(self, flows: list) -> list:
        """Generator hook: one step's flows -> maker fills of resting orders; our rows merged into the flows."""
        now = self.clock_ms()
        for flow in flows:
            v = self.venues.get(flow.symbol)
            if v is None:
                continue
            eng = v.engine
            v.book.stepping = True
            try:
                if eng.n_live:
                    tick, step = v.tick, v.step
                    if self.queue_model == QUEUE_POSITION and flow.changes.shape[0]:
                        for _uid, side_code, p, q in flow.changes.tolist():
                            eng.on_depth(0, SIDE_BUY if side_code == mk.SIDE_BID else SIDE_SELL, p * tick, q * step)
                    for _tid, p, q, bm, _agg, _t in flow.trades.tolist():
                        if eng.n_live:
                            self._maker_fills(v, eng.on_trade(0, p * tick, q * step, bool(bm)), now)
                    for _u, b, _bq, a, _aq in flow.tops.tolist():
                        if not eng.n_live:
                            break
                        self._maker_fills(v, eng.on_top(0, b * tick, a * tick), now)
            except Exception:  # a bug here must not cost the other symbols their step: counted, logged
                self.stats["hook_errors"] = self.stats.get("hook_errors", 0) + 1
                log.exception("maker fills of %s failed on a generated step", flow.symbol)
            finally:  # whatever happened, our rows reach the streams (a gap in update ids would desync clients)
                v.book.stepping = False
                v.book.merge(flow)
        return flows

    def on_replayed(self, frames: list[tuple[str, bytes]]) -> None:
        """Replay hook (every broadcast batch): keep the books, fill resting orders on trades and tops."""
        now = None
        for stream, raw in frames:
            sym, _, kind = stream.partition("@")
            v = self.venues.get(sym.upper())
            if v is None or not isinstance(v.book, ReplayedBook):
                continue
            if kind.startswith("depth") and kind in ("depth", "depth@100ms"):
                book = v.book
                if book.depth_stream is None:
                    book.depth_stream = kind
                elif book.depth_stream != kind:
                    continue
                try:
                    book.on_depth(orjson.loads(raw))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    log.debug("replayed depth frame not applied: %r", exc)
                    continue
                if v.engine.n_live:
                    now = now or self.clock_ms()
                    bid, ask = book.best()
                    self._maker_fills(v, v.engine.on_top(0, bid, ask), now)
            elif kind == "trade" and v.engine.n_live:
                try:
                    ev = orjson.loads(raw)
                    px, qty, bm = _fx(ev["p"]), _fx(ev["q"]), bool(ev["m"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    log.debug("replayed trade frame not applied: %r", exc)
                    continue
                now = now or self.clock_ms()
                self._maker_fills(v, v.engine.on_trade(0, px, qty, bm), now)

    # -- cancels ----------------------------------------------------------------------------------
    def _find(self, acct: AccountState, v: SymbolVenue, params: Mapping[str, str], not_found: BinanceError) -> Order:
        oid = self._int(params, "orderId")
        cid = self._client_id(params, "origClientOrderId")
        if oid is None and cid is None:
            raise BinanceError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        if oid is not None:
            o = v.orders.get(oid)
            if o is None or o.account != acct.name:
                raise not_found
            if cid is not None and cid != o.client_order_id:
                raise BinanceError(-2039, MSG_CLIENT_ID_MISMATCH) if not_found.code == -2013 else not_found
            return o
        oid = acct.client_ids.get(v.spec.symbol, {}).get(cid)
        if oid is None:
            raise not_found
        return v.orders[oid]

    def _cancel(self, acct: AccountState, v: SymbolVenue, o: Order, cancel_id: str, now: int) -> dict:
        if v.engine.cancel(o.order_id) is None:  # not resting: it filled or expired meanwhile
            raise BinanceError(-2011, MSG_UNKNOWN_ORDER)
        o.status = OS_CANCELED
        o.update_time = now
        self._finish(acct, o, now)
        self.stats["canceled"] += 1
        self._report(acct, o, now, "CANCELED", client_id=cancel_id, orig_client_id=o.client_order_id)
        self._emit_position(acct, now)
        return {
            "symbol": o.symbol, "origClientOrderId": o.client_order_id, "orderId": o.order_id, "orderListId": -1,
            "clientOrderId": cancel_id, "transactTime": now, "price": fmt(o.price), "origQty": fmt(o.qty),
            "executedQty": fmt(o.executed), "origQuoteOrderQty": fmt(o.quote_qty),
            "cummulativeQuoteQty": fmt(o.cum_quote), "status": "CANCELED", "timeInForce": TIF_NAMES[o.tif],
            "type": TYPE_NAMES[o.type], "side": SIDE_NAMES[o.side], "selfTradePreventionMode": o.stp,
            **self._conditional(o),
        }  # fmt: skip

    def _op_order_cancel(self, acct: AccountState, params: Mapping[str, str]) -> Reply:
        self._only(params, AUTH_PARAMS | {"symbol", "orderId", "origClientOrderId", "newClientOrderId",
                                          "cancelRestrictions"})  # fmt: skip
        v = self._venue(params)
        restrict = params.get("cancelRestrictions")
        if restrict is not None and restrict not in ("ONLY_NEW", "ONLY_PARTIALLY_FILLED"):
            raise BinanceError(-1145, "cancelRestrictions has to be either ONLY_NEW or ONLY_PARTIALLY_FILLED.")
        cancel_id = self._client_id(params, "newClientOrderId") or self._new_client_id()
        o = self._find(acct, v, params, BinanceError(-2011, MSG_UNKNOWN_ORDER))
        if not o.is_open:
            raise BinanceError(-2011, MSG_UNKNOWN_ORDER)
        if (restrict == "ONLY_NEW" and o.status != OS_NEW) or (
                restrict == "ONLY_PARTIALLY_FILLED" and o.status != OS_PARTIALLY_FILLED):  # fmt: skip
            raise BinanceError(-2011, MSG_CANCEL_RESTRICTED)
        return Reply(200, self._cancel(acct, v, o, cancel_id, self.clock_ms()), {})

    def _op_openOrders_cancelAll(self, acct: AccountState, params: Mapping[str, str]) -> Reply:
        self._only(params, AUTH_PARAMS | {"symbol"})
        v = self._venue(params)
        open_ = list(acct.open.get(v.spec.symbol, {}).values())
        if not open_:
            raise BinanceError(-2011, MSG_UNKNOWN_ORDER)
        now = self.clock_ms()
        return Reply(200, [self._cancel(acct, v, o, self._new_client_id(), now)
                           for o in sorted(open_, key=lambda o: o.order_id)], {})  # fmt: skip

    # -- queries ----------------------------------------------------------------------------------
    @staticmethod
    def _conditional(o: Order) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if o.strategy_id is not None:
            d["strategyId"] = o.strategy_id
        if o.strategy_type is not None:
            d["strategyType"] = o.strategy_type
        if o.status == OS_EXPIRED and o.expiry_reason:
            d["expiryReason"] = o.expiry_reason
        return d

    def _place_body(self, o: Order, resp: str, now: int) -> dict[str, Any]:
        body: dict[str, Any] = {"symbol": o.symbol, "orderId": o.order_id, "orderListId": -1,
                                "clientOrderId": o.client_order_id, "transactTime": now}  # fmt: skip
        if resp == "ACK":
            return body
        body.update({
            "price": fmt(o.price), "origQty": fmt(o.qty), "executedQty": fmt(o.executed),
            "origQuoteOrderQty": fmt(o.quote_qty), "cummulativeQuoteQty": fmt(o.cum_quote),
            "status": STATUS_NAMES[o.status], "timeInForce": TIF_NAMES[o.tif], "type": TYPE_NAMES[o.type],
            "side": SIDE_NAMES[o.side], "workingTime": o.working_time, "selfTradePreventionMode": o.stp,
            **self._conditional(o),
        })  # fmt: skip
        if resp == "FULL":
            body["fills"] = [{"price": fmt(f.price), "qty": fmt(f.qty), "commission": fmt(f.commission),
                              "commissionAsset": f.commission_asset, "tradeId": f.trade_id}
                             for f in o.fills if not f.is_maker]  # fmt: skip
        return body

    def order_body(self, o: Order) -> dict[str, Any]:
        """``GET /api/v3/order`` / ``order.status`` object."""
        return {
            "symbol": o.symbol, "orderId": o.order_id, "orderListId": -1, "clientOrderId": o.client_order_id,
            "price": fmt(o.price), "origQty": fmt(o.qty), "executedQty": fmt(o.executed),
            "cummulativeQuoteQty": fmt(o.cum_quote), "status": STATUS_NAMES[o.status],
            "timeInForce": TIF_NAMES[o.tif], "type": TYPE_NAMES[o.type], "side": SIDE_NAMES[o.side],
            "stopPrice": "0.00000000", "icebergQty": "0.00000000", "time": o.time, "updateTime": o.update_time,
            "isWorking": True, "workingTime": o.working_time, "origQuoteOrderQty": fmt(o.quote_qty),
            "selfTradePreventionMode": o.stp, **self._conditional(o),
        }  # fmt: skip

    def _op_order_status(self, acct: AccountState, params: Mapping[str, str]) -> Reply:
        self._only(params, AUTH_PARAMS | {"symbol", "orderId", "origClientOrderId"})
        v = self._venue(params)
        o = self._find(acct, v, params, BinanceError(-2013, MSG_NO_SUCH_ORDER))
        return Reply(200, self.order_body(o), {})

    def _op_openOrders_status(self, acct: AccountState, params: Mapping[str, str]) -> Reply:
        self._only(params, AUTH_PARAMS | {"symbol"})
        v = self._venue(params, required=False)
        syms = [v.spec.symbol] if v is not None else sorted(acct.open)
        out = []
        for s in syms:
            out.extend(self.order_body(o) for o in sorted(acct.open.get(s, {}).values(), key=lambda o: o.order_id))
        return Reply(200, out, {})

    def _limit(self, params: Mapping[str, str], default: int = 500, hi: int = 1000) -> int:
        n = self._int(params, "limit")
        if n is None:
            return default
        if n < 1:
            raise BinanceError(-1130, "Data sent for parameter 'limit' is not valid.")
        return min(n, hi)

    def _op_allOrders(self, acct: AccountState, params: Mapping[str, str]) -> Reply:
        self._only(params, AUTH_PARAMS | {"symbol", "orderId", "startTime", "endTime", "limit"})
        v = self._venue(params)
        oid, t0, t1 = self._int(params, "orderId"), self._int(params, "startTime"), self._int(params, "endTime")
        limit = self._limit(params)
        orders = [v.orders[i] for i in acct.history.get(v.spec.symbol, [])]
        if oid is not None:
            orders = [o for o in orders if o.order_id >= oid][:limit]
        else:
            orders = [o for o in orders if (t0 is None or o.time >= t0) and (t1 is None or o.time <= t1)]
            orders = orders[:limit] if t0 is not None else orders[-limit:]
        return Reply(200, [self.order_body(o) for o in orders], {})

    def _op_myTrades(self, acct: AccountState, params: Mapping[str, str]) -> Reply:
        self._only(params, AUTH_PARAMS | {"symbol", "orderId", "startTime", "endTime", "fromId", "limit"})
        v = self._venue(params)
        oid, t0, t1 = self._int(params, "orderId"), self._int(params, "startTime"), self._int(params, "endTime")
        from_id = self._int(params, "fromId")
        limit = self._limit(params)
        rows = acct.trades.get(v.spec.symbol, [])
        if oid is not None:
            rows = [r for r in rows if r[0] == oid]
        rows = [r for r in rows if (t0 is None or r[1].time >= t0) and (t1 is None or r[1].time <= t1)]
        if from_id is not None:
            rows = sorted((r for r in rows if r[1].trade_id >= from_id), key=lambda r: r[1].trade_id)[:limit]
        else:
            rows = rows[:limit] if t0 is not None else rows[-limit:]
        side_of = {}
        out = []
        for order_id, f in rows:
            o = side_of.get(order_id) or v.orders[order_id]
            side_of[order_id] = o
            out.append({
                "symbol": o.symbol, "id": f.trade_id, "orderId": order_id, "orderListId": -1, "price": fmt(f.price),
                "qty": fmt(f.qty), "quoteQty": fmt(f.quote), "commission": fmt(f.commission),
                "commissionAsset": f.commission_asset, "time": f.time, "isBuyer": o.side == SIDE_BUY,
                "isMaker": f.is_maker, "isBestMatch": True,
            })  # fmt: skip
        return Reply(200, out, {})

    def _op_account_status(self, acct: AccountState, params: Mapping[str, str]) -> Reply:
        self._only(params, AUTH_PARAMS | {"omitZeroBalances"})
        omit = params.get("omitZeroBalances", "false")
        if omit not in ("true", "false"):
            raise err_illegal("omitZeroBalances", "true, false")
        bal = []
        for a in self.ledger.assets(acct.name):
            free, locked = self.ledger.balance(acct.name, a)
            if omit == "true" and not free and not locked:
                continue
            bal.append({"asset": a, "free": fmt(free), "locked": fmt(locked)})
        bps = lambda r: int(r * 10_000 // S)  # noqa: E731 - Binance's integer commission fields: units of 0.01 %
        return Reply(200, {
            "makerCommission": bps(self.fees.maker), "takerCommission": bps(self.fees.taker),
            "buyerCommission": 0, "sellerCommission": 0,
            "commissionRates": {"maker": fmt(self.fees.maker), "taker": fmt(self.fees.taker),
                                "buyer": "0.00000000", "seller": "0.00000000"},
            "canTrade": True, "canWithdraw": True, "canDeposit": True, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False,
            "updateTime": self.ledger.update_ms[acct.name], "accountType": "SPOT", "balances": bal,
            "permissions": ["SPOT"], "uid": 1000 + list(self.accounts).index(acct.name),
        }, {})  # fmt: skip

    def rate_limits(self, account: str) -> list[dict[str, Any]]:
        """The ORDERS limits with this account's current counts (``rateLimits`` entries of the WS API)."""
        acct = self.accounts[account]
        now = self.clock_ms()
        n10 = acct.n10 if acct.win10 == now // 10_000 else 0
        nd = acct.n_day if acct.win_day == now // 86_400_000 else 0
        return [
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": self.orders_per_10s,
             "count": n10},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": self.orders_per_day,
             "count": nd},
        ]  # fmt: skip

    def _op_account_rateLimits_orders(self, acct: AccountState, params: Mapping[str, str]) -> Reply:
        self._only(params, AUTH_PARAMS)
        return Reply(200, self.rate_limits(acct.name), {})

    # -- outside the API ----------------------------------------------------------------------------
    def adjust_balance(self, account: str, asset: str, delta: int) -> bool:
        """A deposit / withdrawal from outside: ``balanceUpdate`` + ``outboundAccountPosition`` events."""
        acct = self.accounts[account]
        now = self.clock_ms()
        if not self.ledger.adjust(account, asset, delta, now):
            return False
        if acct.listeners:
            self._emit(acct, {"e": "balanceUpdate", "E": now, "a": asset, "d": fmt(delta), "T": now})
        self._emit_position(acct, now)
        return True

    def summary(self) -> dict[str, Any]:
        """For /sim/stats and /sim/accounts: counters, open orders, balances and the ledger's totals."""
        return {
            **self.stats,
            "open_orders": sum(v.engine.n_live for v in self.venues.values()),
            "accounts": {
                name: {a: {"free": fmt(self.ledger.balance(name, a)[0]), "locked": fmt(self.ledger.balance(name, a)[1])}
                       for a in self.ledger.assets(name)}
                for name in self.accounts
            },
            "totals": {a: {k: fmt(x) for k, x in t.items()} for a, t in self.ledger.totals().items()},
            "conservation_errors": self.ledger.conservation_errors(),
        }  # fmt: skip


def warm() -> None:
    """Compile (or load from numba's cache) every kernel the order side calls, on a throwaway service.

    For ``processes.simulator.worker.warm``: the first order after an install
    then does not wait for the compiler.
    """
    from processes.simulator.accounts import AccountConfig
    from processes.simulator.market import MarketGenerator

    spec = SymbolSpec(symbol="BTCUSDT", tick_size="0.01", step_size="0.00001", start_price="60000.00")
    gen = MarketGenerator([spec], seed=1, rate=20_000, depth_levels=50)
    books = {s: GeneratedBook(b) for s, b in gen.books.items()}
    for model in QUEUE_MODELS:
        svc = OrderService(specs=[spec], books=books, ledger=Ledger([AccountConfig(name="w", balances={
            "USDT": 10**6 * S, "BTC": 10 * S})]), accounts=["w"], fees=FeeConfig(),
            clock_ms=lambda: time.time_ns() // 1_000_000, queue_model=model)  # fmt: skip
        bid, ask = books["BTCUSDT"].best()
        for p in ({"type": "LIMIT", "timeInForce": "GTC", "side": "BUY", "quantity": "0.01", "price": fmt(bid)},
                  {"type": "LIMIT", "timeInForce": "GTC", "side": "SELL", "quantity": "0.01", "price": fmt(ask)},
                  {"type": "MARKET", "side": "BUY", "quoteOrderQty": "100"},
                  {"type": "MARKET", "side": "SELL", "quantity": "0.01"}):  # fmt: skip
            svc.dispatch("order.place", "w", {"symbol": "BTCUSDT", **p})
        for i in range(3):
            svc.on_generated(gen.step(i * 100))
        if svc.accounts["w"].open.get("BTCUSDT"):
            svc.dispatch("openOrders.cancelAll", "w", {"symbol": "BTCUSDT"})
