"""Instrument filters from the venue: ``GET /api/v3/exchangeInfo`` -> exact fixed point -> a numba table.

Three parts, top to bottom:

1. Parsing (Python, at start): ``parse_exchange_info(body, symbols)`` reads
   the exchangeInfo body (Binance's, a recording's or our simulator's) into a
   frozen ``VenueInfo``: per configured symbol its status, assets and
   precisions, order types and every filter we enforce, as exact ``int``
   fixed point (``core.fixedpoint``, scale 1e8), plus the exchange
   ``rateLimits``. ``merge_with_config`` applies the config file's
   ``instruments[]`` on top; ``VenueInfo.to_json``/``from_json`` carry the
   result from the supervisor to the stage processes.
2. The table: ``build_filter_table`` -> ``int64[n_instruments, N_COLS]``, one
   row per instrument id, columns named ``C_*`` (layout below).
3. Kernels (``@njit(_nrt=False)``: pure, no allocation, no reference
   counting): ``round_qty_down``, ``round_price``, ``check_order``,
   ``check_open_orders``, ``cmp_product``. They return values or reason
   codes (``F_*``), never raise: a denial is a record and a metric.

Binance's semantics (source: binance-spot-api-docs ``filters.md``, ``enums.md``,
``rest-api.md``; summary in ../shared/reference/binance-spot-api.md section 4)
--------------------------------------------------------------------------------
``PRICE_FILTER`` (minPrice, maxPrice, tickSize; each disabled when "0"):
    price >= minPrice, price <= maxPrice, price % tickSize == 0. Priced orders
    only (LIMIT, LIMIT_MAKER); a MARKET order has no price. (Older revisions of
    filters.md wrote ``(price - minPrice) % tickSize``; in every recorded
    exchangeInfo minPrice is a multiple of tickSize, so both readings agree.)
``PERCENT_PRICE`` (multiplierUp, multiplierDown, avgPriceMins):
    price <= avgPrice * multiplierUp and price >= avgPrice * multiplierDown,
    where avgPrice is the weighted average over ``avgPriceMins`` minutes (0:
    last price) or, since 2026-05-08, the symbol's reference price when it has
    one. Priced orders only.
``PERCENT_PRICE_BY_SIDE``: the same with bid* multipliers for BUY and ask*
    multipliers for SELL.
``LOT_SIZE`` (minQty, maxQty, stepSize): qty >= minQty, qty <= maxQty,
    qty % stepSize == 0. Applies to MARKET orders by quantity too.
``MARKET_LOT_SIZE``: the same fields, for MARKET orders, *in addition to*
    LOT_SIZE (Binance staff on dev.binance.vision, "Which symbol filter is
    used with a market order"). Real bodies send minQty and stepSize "0"
    (disabled) and a maxQty derived from recent volume.
``MIN_NOTIONAL`` (minNotional, applyToMarket, avgPriceMins):
    price * qty >= minNotional; for MARKET orders only when applyToMarket,
    with the average (reference) price in place of the price.
``NOTIONAL`` (minNotional, applyMinToMarket, maxNotional, applyMaxToMarket,
    avgPriceMins): minNotional <= price * qty <= maxNotional; for MARKET
    orders the minimum only when applyMinToMarket and the maximum only when
    applyMaxToMarket, with the average (reference) price. A symbol may list
    MIN_NOTIONAL, NOTIONAL or both; each is checked under its own name.
``MAX_NUM_ORDERS`` (maxNumOrders): open orders per account on the symbol
    (algo orders included); a new order when that many are open fails.
``MAX_POSITION`` (maxPosition): parsed and put in the table; enforcing it
    needs the account's balances, which is the risk stage's business.
A failure comes back as HTTP 400, code -1013, ``"Filter failure: <NAME>"``;
``FILTER_NAMES`` maps our codes to those names. Where several filters fail
Binance reports one; which one is not documented. ``check_order`` checks in
this order and reports the first: arguments, order type, PRICE_FILTER,
PERCENT_PRICE, PERCENT_PRICE_BY_SIDE, LOT_SIZE, MARKET_LOT_SIZE, MIN_NOTIONAL,
NOTIONAL (min, then max) -- the simulator (``processes/simulator/orders.py``)
checks in the same order.

Zero means disabled everywhere in the table (Binance says so for
PRICE_FILTER; real MARKET_LOT_SIZE bodies use "0" the same way; a zero
maxQty/maxNotional/multiplier would reject everything, so it can only mean
"none"). A filter the symbol does not list has its flag clear.

Reference price (``ref_px`` in ``check_order``): the caller's stand-in for
Binance's average/reference price (the risk stage uses its mid or last
price). ``ref_px <= 0`` means "none": PERCENT_PRICE* and the MARKET notional
checks, which need it, are skipped (the venue still enforces them).

Exact arithmetic
----------------
Prices and quantities are 1e8-scaled ``int64``, so ``price * qty`` is
1e16-scaled and overflows int64 for ordinary orders. Every product comparison
goes through ``cmp_product(a, b, limit)`` = sign(a*b - limit*1e8), built on
the existing exact helpers ``core.bars.mul_fixed`` (split multiplication) and
``core.matching.qty_for_quote`` (long division): when the operands are small
enough that mul_fixed's whole part cannot overflow it decides directly (the
common case: no division); otherwise, with ``lo`` the smaller factor,
``qty_for_quote(limit, lo)`` = floor(limit*1e8/lo) tells whether the larger
one is past the limit, and if it is not, the product is at most ``limit`` and
mul_fixed is exact again. Multipliers
(``"1.2"``, ``"0.8"``, ``"5"``) are fixed point at the same scale, so
``price <= ref * multiplierUp`` is ``cmp_product(ref, up, price) >= 0``: no
float anywhere.

Rounding (``round_qty_down``, ``round_price``)
-----------------------------------------------
Quantities round DOWN to the step (for MARKET orders to a step that is a
multiple of both LOT_SIZE and MARKET_LOT_SIZE steps): never more than asked.
Prices round passively: DOWN for a BUY, UP for a SELL, so the limit is never
worse for us than the strategy's intent (a buy never pays more, a sell never
receives less); the order may then fill less often, never at a worse price.
Neither clamps to min/max: an order outside them is rejected by
``check_order``, not silently resized.

The table (``int64[n, N_COLS]``, C order; one row = ``N_COLS`` * 8 bytes =
3 cache lines, so rows never share a line)::

    col  name                  from
     0   C_TICK                PRICE_FILTER.tickSize
     1   C_MIN_PRICE           PRICE_FILTER.minPrice
     2   C_MAX_PRICE           PRICE_FILTER.maxPrice
     3   C_STEP                LOT_SIZE.stepSize
     4   C_MIN_QTY             LOT_SIZE.minQty
     5   C_MAX_QTY             LOT_SIZE.maxQty
     6   C_MKT_STEP            MARKET_LOT_SIZE.stepSize
     7   C_MKT_MIN_QTY         MARKET_LOT_SIZE.minQty
     8   C_MKT_MAX_QTY         MARKET_LOT_SIZE.maxQty
     9   C_MKT_ROUND_STEP      lcm of the non-zero C_STEP, C_MKT_STEP (MARKET rounding)
    10   C_MIN_NOTIONAL        MIN_NOTIONAL.minNotional
    11   C_NOTIONAL_MIN        NOTIONAL.minNotional
    12   C_NOTIONAL_MAX        NOTIONAL.maxNotional
    13   C_PP_UP               PERCENT_PRICE.multiplierUp (fixed point)
    14   C_PP_DOWN             PERCENT_PRICE.multiplierDown
    15   C_PPS_BID_UP          PERCENT_PRICE_BY_SIDE.bidMultiplierUp
    16   C_PPS_BID_DOWN        PERCENT_PRICE_BY_SIDE.bidMultiplierDown
    17   C_PPS_ASK_UP          PERCENT_PRICE_BY_SIDE.askMultiplierUp
    18   C_PPS_ASK_DOWN        PERCENT_PRICE_BY_SIDE.askMultiplierDown
    19   C_MAX_NUM_ORDERS      MAX_NUM_ORDERS.maxNumOrders (count)
    20   C_MAX_POSITION        MAX_POSITION.maxPosition
    21   C_FLAGS               FL_* bits: which filters exist, the apply*ToMarket booleans
    22   C_ORDER_TYPES         bit (1 << OT_*) per order type the symbol accepts
    23   (reserved, 0)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numba as nb
import numpy as np
import orjson

from core.bars import mul_fixed
from core.errors import ConfigError, FixedPointError
from core.fixedpoint import from_fixed, to_fixed
from core.matching import qty_for_quote
from core.records import CACHE_LINE, FIXED_SCALE, INT64_MAX, OT_LIMIT, OT_LIMIT_MAKER, OT_MARKET, SIDE_BUY, SIDE_SELL

__all__ = [
    "FILTER_NAMES", "REASON_NAMES", "N_COLS", "RateLimit", "SymbolInfo", "VenueInfo", "VenueInfoError",
    "build_filter_table", "check_open_orders", "check_order", "cmp_product", "instruments_with_filters",
    "merge_with_config", "parse_exchange_info", "reason_text", "round_price", "round_qty_down", "warm",
]  # fmt: skip


class VenueInfoError(ConfigError):
    """exchangeInfo cannot serve the configured instruments: a symbol missing or not TRADING, or a malformed body.

    A ``ConfigError`` (the supervisor exits 2: the system cannot start on it); ``path`` names the place in the
    body (``exchangeInfo.symbols[BTCUSDT].filters.LOT_SIZE.stepSize``), ``symbol`` the symbol or "".
    """

    def __init__(self, path: str, problem: str, symbol: str = ""):
        self.symbol = symbol
        super().__init__(path, problem)


# ---------------------------------------------------------------------------
# Wire schema: names as Binance spells them
# ---------------------------------------------------------------------------
STATUS_TRADING = "TRADING"  # symbol status enum: TRADING, END_OF_DAY, HALT, BREAK, CANCEL_ONLY

PRICE_FILTER = "PRICE_FILTER"  # minPrice, maxPrice, tickSize (strings)
PERCENT_PRICE = "PERCENT_PRICE"  # multiplierUp, multiplierDown (strings), avgPriceMins (int)
PERCENT_PRICE_BY_SIDE = "PERCENT_PRICE_BY_SIDE"  # bid/askMultiplierUp/Down (strings), avgPriceMins (int)
LOT_SIZE = "LOT_SIZE"  # minQty, maxQty, stepSize (strings)
MARKET_LOT_SIZE = "MARKET_LOT_SIZE"  # minQty, maxQty, stepSize (strings)
MIN_NOTIONAL = "MIN_NOTIONAL"  # minNotional (string), applyToMarket (bool), avgPriceMins (int)
NOTIONAL = "NOTIONAL"  # minNotional, maxNotional (strings), applyMinToMarket, applyMaxToMarket (bool), avgPriceMins
MAX_NUM_ORDERS = "MAX_NUM_ORDERS"  # maxNumOrders (int)
MAX_POSITION = "MAX_POSITION"  # maxPosition (string)
#: filters this module parses into typed fields
ENFORCED_FILTERS = (PRICE_FILTER, PERCENT_PRICE, PERCENT_PRICE_BY_SIDE, LOT_SIZE, MARKET_LOT_SIZE, MIN_NOTIONAL,
                    NOTIONAL, MAX_NUM_ORDERS, MAX_POSITION)  # fmt: skip
#: documented filters that never concern our orders (no iceberg, algo, trailing, amend or order-list orders):
#: kept raw in ``SymbolInfo.other_filters``, not listed as unknown
IGNORED_FILTERS = ("ICEBERG_PARTS", "MAX_NUM_ALGO_ORDERS", "MAX_NUM_ICEBERG_ORDERS", "TRAILING_DELTA",
                   "MAX_NUM_ORDER_AMENDS", "MAX_NUM_ORDER_LISTS")  # fmt: skip

#: rateLimits[].interval -> milliseconds (enums.md: SECOND, MINUTE, DAY; the header letters also know H)
INTERVAL_MS = {"SECOND": 1_000, "MINUTE": 60_000, "HOUR": 3_600_000, "DAY": 86_400_000}
RL_REQUEST_WEIGHT = "REQUEST_WEIGHT"  # per IP
RL_ORDERS = "ORDERS"  # unfilled order count per account
RL_RAW_REQUESTS = "RAW_REQUESTS"  # per IP, regardless of weight

_ORDER_TYPE_BITS = {"LIMIT": 1 << OT_LIMIT, "MARKET": 1 << OT_MARKET, "LIMIT_MAKER": 1 << OT_LIMIT_MAKER}
JSON_VERSION = 1

# ---------------------------------------------------------------------------
# Reason codes (check_order / check_open_orders)
# ---------------------------------------------------------------------------
F_OK = 0
F_INVALID = 1  # not a filter: unknown instrument id / side / order type, qty <= 0, price <= 0 on a priced order
F_ORDER_TYPE = 2  # not a filter: the symbol's orderTypes lack this type (Binance rejects it before the filters)
F_PRICE_FILTER = 3
F_PERCENT_PRICE = 4
F_PERCENT_PRICE_BY_SIDE = 5
F_LOT_SIZE = 6
F_MARKET_LOT_SIZE = 7
F_MIN_NOTIONAL = 8  # the MIN_NOTIONAL filter
F_NOTIONAL = 9  # the NOTIONAL filter's minimum
F_MAX_NOTIONAL = 10  # the NOTIONAL filter's maximum
F_MAX_NUM_ORDERS = 11

#: code -> the NAME in Binance's ``"Filter failure: <NAME>"`` (filter failures only)
FILTER_NAMES = {
    F_PRICE_FILTER: PRICE_FILTER, F_PERCENT_PRICE: PERCENT_PRICE, F_PERCENT_PRICE_BY_SIDE: PERCENT_PRICE_BY_SIDE,
    F_LOT_SIZE: LOT_SIZE, F_MARKET_LOT_SIZE: MARKET_LOT_SIZE, F_MIN_NOTIONAL: MIN_NOTIONAL, F_NOTIONAL: NOTIONAL,
    F_MAX_NOTIONAL: NOTIONAL, F_MAX_NUM_ORDERS: MAX_NUM_ORDERS,
}  # fmt: skip
#: every non-zero code -> a name for logs and metric labels (unique per code)
REASON_NAMES = {F_INVALID: "INVALID_ORDER", F_ORDER_TYPE: "ORDER_TYPE_NOT_ALLOWED",
                **{c: n for c, n in FILTER_NAMES.items() if c != F_MAX_NOTIONAL}, F_MAX_NOTIONAL: "MAX_NOTIONAL"}


def reason_text(code: int) -> str:
    """``"Filter failure: LOT_SIZE"`` for a filter code (Binance's -1013 message), else the reason's name."""
    code = int(code)
    if code in FILTER_NAMES:
        return f"Filter failure: {FILTER_NAMES[code]}"
    return REASON_NAMES.get(code, "OK" if code == F_OK else f"UNKNOWN_REASON_{code}")


# ---------------------------------------------------------------------------
# Parsed form
# ---------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """One ``exchangeInfo.rateLimits[]`` entry."""

    rate_limit_type: str  # REQUEST_WEIGHT | ORDERS | RAW_REQUESTS (others kept as sent)
    interval: str  # SECOND | MINUTE | HOUR | DAY
    interval_num: int  # the window is interval_num intervals
    limit: int  # most weight / orders / requests per window

    @property
    def window_ms(self) -> int | None:
        """The window length in ms; None for an interval name we do not know."""
        unit = INTERVAL_MS.get(self.interval)
        return None if unit is None else unit * self.interval_num


@dataclass(frozen=True, kw_only=True)
class SymbolInfo:
    """One symbol of exchangeInfo. Prices, quantities, notionals and multipliers: ``int`` fixed point (1e8);
    0 = disabled/absent (see the module docstring). ``filter_types``: the enforced filters the symbol lists."""

    symbol: str  # "BTCUSDT"
    status: str  # TRADING when parsed for trading (anything else is an error)
    base_asset: str  # "BTC"
    base_asset_precision: int  # decimals of the base asset
    quote_asset: str  # "USDT"
    quote_asset_precision: int  # quoteAssetPrecision (quotePrecision in old bodies)
    base_commission_precision: int = 8
    quote_commission_precision: int = 8
    order_types: tuple[str, ...] = ()  # orderTypes as sent: LIMIT, LIMIT_MAKER, MARKET, STOP_LOSS_LIMIT...
    quote_order_qty_market_allowed: bool = False  # MARKET by quoteOrderQty accepted
    is_spot_trading_allowed: bool = True  # recorded only (see parse_exchange_info)
    filter_types: tuple[str, ...] = ()  # enforced filters present, in body order
    # PRICE_FILTER
    min_price: int = 0
    max_price: int = 0
    tick_size: int = 0
    # LOT_SIZE
    min_qty: int = 0
    max_qty: int = 0
    step_size: int = 0
    # MARKET_LOT_SIZE
    market_min_qty: int = 0
    market_max_qty: int = 0
    market_step_size: int = 0
    # MIN_NOTIONAL
    min_notional: int = 0
    min_notional_apply_to_market: bool = False
    min_notional_avg_price_mins: int = 0
    # NOTIONAL
    notional_min: int = 0
    notional_max: int = 0
    notional_apply_min_to_market: bool = False
    notional_apply_max_to_market: bool = False
    notional_avg_price_mins: int = 0
    # PERCENT_PRICE (multipliers fixed point: "1.2" -> 120_000_000)
    multiplier_up: int = 0
    multiplier_down: int = 0
    percent_price_avg_price_mins: int = 0
    # PERCENT_PRICE_BY_SIDE
    bid_multiplier_up: int = 0
    bid_multiplier_down: int = 0
    ask_multiplier_up: int = 0
    ask_multiplier_down: int = 0
    percent_price_by_side_avg_price_mins: int = 0
    # MAX_NUM_ORDERS / MAX_POSITION
    max_num_orders: int = 0  # count; 0 = no limit listed
    max_position: int = 0  # fixed point base units; 0 = none
    other_filters: tuple[dict, ...] = ()  # every other filter object, raw, in body order
    unknown_filter_types: tuple[str, ...] = ()  # filterTypes this module does not know (not an error)
    filters_source: str = "exchangeInfo"  # "exchangeInfo" | "config" (config values merged in)

    def has(self, filter_type: str) -> bool:
        return filter_type in self.filter_types

    @property
    def effective_min_notional(self) -> int:
        """The larger of MIN_NOTIONAL.minNotional and NOTIONAL.minNotional (0: neither)."""
        return max(self.min_notional if self.has(MIN_NOTIONAL) else 0, self.notional_min if self.has(NOTIONAL) else 0)


@dataclass(frozen=True, kw_only=True)
class VenueInfo:
    """What exchangeInfo says about the venue and the configured symbols."""

    symbols: dict  # symbol -> SymbolInfo, in the order asked (after merge_with_config: instrument id order)
    rate_limits: tuple[RateLimit, ...] = ()
    exchange_filters: tuple[dict, ...] = ()  # exchangeFilters, raw (EXCHANGE_MAX_NUM_ORDERS...)
    server_time_ms: int = 0  # serverTime: venue clock, ms since the epoch (0: absent)
    timezone: str = "UTC"

    def symbol(self, name: str) -> SymbolInfo:
        try:
            return self.symbols[name]
        except KeyError:
            raise VenueInfoError("exchangeInfo.symbols", f"has no symbol {name} (have: {', '.join(self.symbols)})",
                                 name) from None

    # -- rate limits --------------------------------------------------------------------------------------------
    def rate_limit(self, rate_limit_type: str, window_ms: int) -> int | None:
        """The limit of that type over exactly that window, None if exchangeInfo lists none."""
        for rl in self.rate_limits:
            if rl.rate_limit_type == rate_limit_type and rl.window_ms == window_ms:
                return rl.limit
        return None

    @property
    def orders_per_second(self) -> int | None:
        return self.rate_limit(RL_ORDERS, 1_000)

    @property
    def orders_per_10s(self) -> int | None:
        return self.rate_limit(RL_ORDERS, 10_000)

    @property
    def orders_per_day(self) -> int | None:
        return self.rate_limit(RL_ORDERS, 86_400_000)

    @property
    def weight_per_minute(self) -> int | None:
        return self.rate_limit(RL_REQUEST_WEIGHT, 60_000)

    @property
    def raw_requests_per_5min(self) -> int | None:
        return self.rate_limit(RL_RAW_REQUESTS, 300_000)

    @property
    def exchange_max_num_orders(self) -> int | None:
        """EXCHANGE_MAX_NUM_ORDERS.maxNumOrders (open orders per account on the whole exchange), if listed."""
        for f in self.exchange_filters:
            if f.get("filterType") == "EXCHANGE_MAX_NUM_ORDERS" and isinstance(f.get("maxNumOrders"), int):
                return f["maxNumOrders"]
        return None

    # -- hand-over ----------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        """A JSON text that ``from_json`` turns back into an equal ``VenueInfo`` (fixed point as integers)."""
        doc = {
            "version": JSON_VERSION,
            "server_time_ms": self.server_time_ms,
            "timezone": self.timezone,
            "rate_limits": [dataclasses.asdict(r) for r in self.rate_limits],
            "exchange_filters": list(self.exchange_filters),
            "symbols": [dataclasses.asdict(s) for s in self.symbols.values()],
        }
        return orjson.dumps(doc).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> "VenueInfo":
        try:
            doc = orjson.loads(text)
            if not isinstance(doc, dict) or doc.get("version") != JSON_VERSION:
                raise ValueError(f"not a VenueInfo JSON of version {JSON_VERSION}")
            fields = {f.name for f in dataclasses.fields(SymbolInfo)}
            symbols = {}
            for s in doc["symbols"]:
                if set(s) != fields:
                    raise ValueError(f"symbol keys differ from SymbolInfo: {sorted(set(s) ^ fields)}")
                s = dict(s)
                for k in ("order_types", "filter_types", "unknown_filter_types", "other_filters"):
                    s[k] = tuple(s[k])
                symbols[s["symbol"]] = SymbolInfo(**s)
            return cls(symbols=symbols, rate_limits=tuple(RateLimit(**r) for r in doc["rate_limits"]),
                       exchange_filters=tuple(doc["exchange_filters"]), server_time_ms=doc["server_time_ms"],
                       timezone=doc["timezone"])  # fmt: skip
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
            raise VenueInfoError("venue_info", f"is not a valid VenueInfo JSON: {exc}") from exc

    def filter_table(self, symbols: Sequence[str] | None = None) -> np.ndarray:
        """``build_filter_table(self, symbols)``; default: every symbol, in ``self.symbols`` order."""
        return build_filter_table(self, list(self.symbols) if symbols is None else symbols)


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------
class _Obj:
    """A JSON object of the body with typed getters whose errors name the path."""

    def __init__(self, data: Any, path: str, symbol: str = ""):
        if not isinstance(data, dict):
            raise VenueInfoError(path, f"must be an object, got {type(data).__name__}", symbol)
        self.data, self.path, self.symbol = data, path, symbol

    def err(self, key: str, problem: str) -> VenueInfoError:
        return VenueInfoError(f"{self.path}.{key}", problem, self.symbol)

    def get(self, key: str, default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.err(key, "is missing")
            return default
        return self.data[key]

    def str(self, key: str, default: Any = ...) -> str:
        v = self.get(key, default)
        if not isinstance(v, str):
            raise self.err(key, f"must be a string, got {v!r}")
        return v

    def int(self, key: str, default: Any = ...) -> int:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise self.err(key, f"must be a non-negative integer, got {v!r}")
        return v

    def bool(self, key: str, default: Any = ...) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise self.err(key, f"must be true or false, got {v!r}")
        return v

    def fixed(self, key: str) -> int:
        """A decimal string (Binance's spelling) or integer -> exact fixed point; never a float."""
        v = self.get(key)
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise self.err(key, f"must be a decimal string, got {v!r}")
        try:
            return to_fixed(str(v))
        except FixedPointError as exc:
            raise self.err(key, f"is not an exact decimal with at most 8 places: {exc}") from exc


def _load_body(body: bytes | str | dict) -> dict:
    if isinstance(body, dict):
        doc = body
    else:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise VenueInfoError("exchangeInfo", f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise VenueInfoError("exchangeInfo", f"body must be a JSON object, got {type(doc).__name__}")
    if "code" in doc and "symbols" not in doc:
        raise VenueInfoError("exchangeInfo", f"the venue answered an error: code {doc.get('code')} {doc.get('msg')!r}")
    if not isinstance(doc.get("symbols"), list):
        raise VenueInfoError("exchangeInfo.symbols",
                             "must be an array of symbol objects (is this an exchangeInfo body?)")  # fmt: skip
    return doc


def _parse_symbol(raw: Any, path: str) -> SymbolInfo:
    o = _Obj(raw, path)
    name = o.str("symbol")
    o.symbol = name
    base_prec = o.int("baseAssetPrecision")
    quote_prec = o.int("quoteAssetPrecision") if "quoteAssetPrecision" in raw else o.int("quotePrecision")
    order_types = o.get("orderTypes")
    if not isinstance(order_types, list) or not all(isinstance(t, str) for t in order_types):
        raise o.err("orderTypes", f"must be an array of strings, got {order_types!r}")
    filters = o.get("filters")
    if not isinstance(filters, list):
        raise o.err("filters", f"must be an array, got {filters!r}")
    kw: dict[str, Any] = {}
    present: list[str] = []
    other: list[dict] = []
    unknown: list[str] = []
    for i, fraw in enumerate(filters):
        fo = _Obj(fraw, f"{path}.filters[{i}]", name)
        ft = fo.str("filterType")
        fo.path = f"{path}.filters.{ft}"
        if ft in ENFORCED_FILTERS:
            if ft in present:
                raise VenueInfoError(fo.path, "is listed twice", name)
            present.append(ft)
        if ft == PRICE_FILTER:
            kw.update(min_price=fo.fixed("minPrice"), max_price=fo.fixed("maxPrice"), tick_size=fo.fixed("tickSize"))
        elif ft == LOT_SIZE:
            kw.update(min_qty=fo.fixed("minQty"), max_qty=fo.fixed("maxQty"), step_size=fo.fixed("stepSize"))
        elif ft == MARKET_LOT_SIZE:
            kw.update(market_min_qty=fo.fixed("minQty"), market_max_qty=fo.fixed("maxQty"),
                      market_step_size=fo.fixed("stepSize"))  # fmt: skip
        elif ft == MIN_NOTIONAL:
            kw.update(min_notional=fo.fixed("minNotional"), min_notional_apply_to_market=fo.bool("applyToMarket"),
                      min_notional_avg_price_mins=fo.int("avgPriceMins"))  # fmt: skip
        elif ft == NOTIONAL:
            kw.update(notional_min=fo.fixed("minNotional"), notional_max=fo.fixed("maxNotional"),
                      notional_apply_min_to_market=fo.bool("applyMinToMarket"),
                      notional_apply_max_to_market=fo.bool("applyMaxToMarket"),
                      notional_avg_price_mins=fo.int("avgPriceMins"))  # fmt: skip
        elif ft == PERCENT_PRICE:
            kw.update(multiplier_up=fo.fixed("multiplierUp"), multiplier_down=fo.fixed("multiplierDown"),
                      percent_price_avg_price_mins=fo.int("avgPriceMins"))  # fmt: skip
        elif ft == PERCENT_PRICE_BY_SIDE:
            kw.update(bid_multiplier_up=fo.fixed("bidMultiplierUp"), bid_multiplier_down=fo.fixed("bidMultiplierDown"),
                      ask_multiplier_up=fo.fixed("askMultiplierUp"), ask_multiplier_down=fo.fixed("askMultiplierDown"),
                      percent_price_by_side_avg_price_mins=fo.int("avgPriceMins"))  # fmt: skip
        elif ft == MAX_NUM_ORDERS:
            kw["max_num_orders"] = fo.int("maxNumOrders")
        elif ft == MAX_POSITION:
            kw["max_position"] = fo.fixed("maxPosition")
        else:
            other.append(dict(fraw))
            if ft not in IGNORED_FILTERS:
                unknown.append(ft)
    return SymbolInfo(
        symbol=name, status=o.str("status"), base_asset=o.str("baseAsset"), base_asset_precision=base_prec,
        quote_asset=o.str("quoteAsset"), quote_asset_precision=quote_prec,
        base_commission_precision=o.int("baseCommissionPrecision", 8),
        quote_commission_precision=o.int("quoteCommissionPrecision", 8),
        order_types=tuple(order_types), quote_order_qty_market_allowed=o.bool("quoteOrderQtyMarketAllowed", False),
        is_spot_trading_allowed=o.bool("isSpotTradingAllowed", True), filter_types=tuple(present),
        other_filters=tuple(other), unknown_filter_types=tuple(unknown), **kw,
    )  # fmt: skip


def _parse_rate_limits(raw: Any) -> tuple[RateLimit, ...]:
    if not isinstance(raw, list):
        raise VenueInfoError("exchangeInfo.rateLimits", f"must be an array, got {type(raw).__name__}")
    out = []
    for i, item in enumerate(raw):
        o = _Obj(item, f"exchangeInfo.rateLimits[{i}]")
        out.append(RateLimit(rate_limit_type=o.str("rateLimitType"), interval=o.str("interval"),
                             interval_num=o.int("intervalNum"), limit=o.int("limit")))  # fmt: skip
    return tuple(out)


def parse_exchange_info(body: bytes | str | dict, symbols: Iterable[str]) -> VenueInfo:
    """Parse an exchangeInfo body for the configured ``symbols`` (others in the body are not looked at).

    Raises ``VenueInfoError`` for a malformed body or an error body, a symbol the body does not list, a symbol
    whose status is not TRADING, and a malformed filter of a configured symbol. ``isSpotTradingAllowed`` is
    recorded, not enforced: leveraged tokens (BTCUPUSDT in the 2021 bodies) say false and still trade on the
    spot order book for accounts with that permission. Unknown filter types are kept raw and listed in
    ``SymbolInfo.unknown_filter_types``.
    """
    doc = _load_body(body)
    wanted = list(dict.fromkeys(symbols))
    index: dict[str, tuple[int, Any]] = {}
    for i, s in enumerate(doc["symbols"]):
        if not isinstance(s, dict) or not isinstance(s.get("symbol"), str):
            raise VenueInfoError(f"exchangeInfo.symbols[{i}]", f"must be an object with a string symbol, got {s!r:.80}")
        index.setdefault(s["symbol"], (i, s))
    out: dict[str, SymbolInfo] = {}
    for name in wanted:
        if name not in index:
            raise VenueInfoError("exchangeInfo.symbols", f"does not list {name} ({len(index)} symbols listed)", name)
        info = _parse_symbol(index[name][1], f"exchangeInfo.symbols[{name}]")
        if info.status != STATUS_TRADING:
            raise VenueInfoError(f"exchangeInfo.symbols[{name}].status",
                                 f"is {info.status}: {name} is not TRADING", name)  # fmt: skip
        out[name] = info
    ex_filters = doc.get("exchangeFilters", [])
    if not isinstance(ex_filters, list) or not all(isinstance(f, dict) for f in ex_filters):
        raise VenueInfoError("exchangeInfo.exchangeFilters", "must be an array of objects")
    server_time = doc.get("serverTime", 0)
    if isinstance(server_time, bool) or not isinstance(server_time, int):
        raise VenueInfoError("exchangeInfo.serverTime", f"must be an integer (ms), got {server_time!r}")
    timezone = doc.get("timezone", "UTC")
    return VenueInfo(symbols=out, rate_limits=_parse_rate_limits(doc.get("rateLimits", [])),
                     exchange_filters=tuple(dict(f) for f in ex_filters), server_time_ms=server_time,
                     timezone=timezone if isinstance(timezone, str) else "UTC")  # fmt: skip


# ---------------------------------------------------------------------------
# Config merge
# ---------------------------------------------------------------------------
def merge_with_config(cfg_instruments: Sequence[Any], info: VenueInfo) -> VenueInfo:
    """The venue's filters with the config file's ``instruments[]`` applied, symbols in instrument id order.

    ``filters: "exchangeInfo"`` instruments take the venue's values. ``filters: "config"`` ones keep the
    file's ``tick_size`` (must be a multiple of PRICE_FILTER.tickSize), ``lot_size`` (must be a multiple of
    LOT_SIZE.stepSize: never finer) and ``min_notional`` (must be at least the venue's minimum; it raises
    MIN_NOTIONAL/NOTIONAL minNotional; "0" means "not set": the venue's stands). Every other venue filter
    still applies. A contradiction raises ``ConfigError`` naming the key (``instruments[0].tick_size``).
    """
    out: dict[str, SymbolInfo] = {}
    for inst in sorted(cfg_instruments, key=lambda i: i.id):
        s = info.symbol(inst.symbol)
        if inst.from_exchange_info:
            out[inst.symbol] = s
            continue
        out[inst.symbol] = _apply_config(inst, s)
    return dataclasses.replace(info, symbols=out)


def _apply_config(inst: Any, s: SymbolInfo) -> SymbolInfo:
    key = f"instruments[{inst.id}]"

    def venue(v: int) -> str:
        return from_fixed(v).rstrip("0").rstrip(".")

    if inst.tick_size <= 0 or inst.lot_size <= 0:
        raise ConfigError(f"{key}.tick_size", "and lot_size must be > 0 for filters \"config\"")
    if s.tick_size and inst.tick_size % s.tick_size:
        raise ConfigError(f"{key}.tick_size", f"{venue(inst.tick_size)} is not a multiple of the venue's "
                                              f"PRICE_FILTER.tickSize {venue(s.tick_size)} for {s.symbol}")
    if s.step_size and inst.lot_size % s.step_size:
        finer = "finer than" if inst.lot_size < s.step_size else "not a multiple of"
        raise ConfigError(f"{key}.lot_size", f"{venue(inst.lot_size)} is {finer} the venue's LOT_SIZE.stepSize "
                                             f"{venue(s.step_size)} for {s.symbol}")
    venue_min = s.effective_min_notional
    if inst.min_notional and inst.min_notional < venue_min:
        raise ConfigError(f"{key}.min_notional", f"{venue(inst.min_notional)} is below the venue's minimum notional "
                                                 f"{venue(venue_min)} for {s.symbol}")
    present = list(s.filter_types)
    kw: dict[str, Any] = {"tick_size": inst.tick_size, "step_size": inst.lot_size, "filters_source": "config"}
    for ft in (PRICE_FILTER, LOT_SIZE):
        if ft not in present:
            present.append(ft)
    if inst.min_notional:
        if s.has(MIN_NOTIONAL):
            kw["min_notional"] = max(s.min_notional, inst.min_notional)
        if s.has(NOTIONAL) or not s.has(MIN_NOTIONAL):
            kw["notional_min"] = max(s.notional_min, inst.min_notional)
            if not s.has(NOTIONAL):  # the venue lists no notional filter: ours applies to MARKET orders too
                present.append(NOTIONAL)
                kw["notional_apply_min_to_market"] = True
    kw["filter_types"] = tuple(present)
    return dataclasses.replace(s, **kw)


def instruments_with_filters(cfg_instruments: Sequence[Any], info: VenueInfo) -> tuple:
    """``core.config.Instrument`` objects with tick_size/lot_size/min_notional from ``info`` (after the merge):
    what code that reads them from the config (feed, synthetic source) should see."""
    out = []
    for inst in cfg_instruments:
        s = info.symbol(inst.symbol)
        out.append(dataclasses.replace(inst, tick_size=s.tick_size, lot_size=s.step_size,
                                       min_notional=s.effective_min_notional))  # fmt: skip
    return tuple(out)


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------
C_TICK = 0
C_MIN_PRICE = 1
C_MAX_PRICE = 2
C_STEP = 3
C_MIN_QTY = 4
C_MAX_QTY = 5
C_MKT_STEP = 6
C_MKT_MIN_QTY = 7
C_MKT_MAX_QTY = 8
C_MKT_ROUND_STEP = 9
C_MIN_NOTIONAL = 10
C_NOTIONAL_MIN = 11
C_NOTIONAL_MAX = 12
C_PP_UP = 13
C_PP_DOWN = 14
C_PPS_BID_UP = 15
C_PPS_BID_DOWN = 16
C_PPS_ASK_UP = 17
C_PPS_ASK_DOWN = 18
C_MAX_NUM_ORDERS = 19
C_MAX_POSITION = 20
C_FLAGS = 21
C_ORDER_TYPES = 22
_USED_COLS = 23
N_COLS = 3 * CACHE_LINE // 8  # 24: a row is 3 whole cache lines
if _USED_COLS > N_COLS:
    raise ImportError(f"filter table columns ({_USED_COLS}) exceed N_COLS ({N_COLS})")

FL_PRICE_FILTER = 1 << 0
FL_LOT_SIZE = 1 << 1
FL_MARKET_LOT_SIZE = 1 << 2
FL_MIN_NOTIONAL = 1 << 3
FL_MIN_NOTIONAL_MKT = 1 << 4  # MIN_NOTIONAL.applyToMarket
FL_NOTIONAL = 1 << 5
FL_NOTIONAL_MIN_MKT = 1 << 6  # NOTIONAL.applyMinToMarket
FL_NOTIONAL_MAX_MKT = 1 << 7  # NOTIONAL.applyMaxToMarket
FL_PERCENT_PRICE = 1 << 8
FL_PERCENT_PRICE_BY_SIDE = 1 << 9
FL_QUOTE_QTY_MKT = 1 << 10  # quoteOrderQtyMarketAllowed


def _row(s: SymbolInfo) -> list[int]:
    r = [0] * N_COLS
    flags = 0
    if s.has(PRICE_FILTER):
        flags |= FL_PRICE_FILTER
        r[C_TICK], r[C_MIN_PRICE], r[C_MAX_PRICE] = s.tick_size, s.min_price, s.max_price
    if s.has(LOT_SIZE):
        flags |= FL_LOT_SIZE
        r[C_STEP], r[C_MIN_QTY], r[C_MAX_QTY] = s.step_size, s.min_qty, s.max_qty
    if s.has(MARKET_LOT_SIZE):
        flags |= FL_MARKET_LOT_SIZE
        r[C_MKT_STEP], r[C_MKT_MIN_QTY], r[C_MKT_MAX_QTY] = s.market_step_size, s.market_min_qty, s.market_max_qty
    steps = [x for x in (r[C_STEP], r[C_MKT_STEP]) if x > 0]
    round_step = math.lcm(*steps) if steps else 0
    if round_step > INT64_MAX:
        raise VenueInfoError(f"exchangeInfo.symbols[{s.symbol}].filters.MARKET_LOT_SIZE.stepSize",
                             "and LOT_SIZE.stepSize have no common multiple within int64", s.symbol)  # fmt: skip
    r[C_MKT_ROUND_STEP] = round_step
    if s.has(MIN_NOTIONAL):
        flags |= FL_MIN_NOTIONAL | (FL_MIN_NOTIONAL_MKT if s.min_notional_apply_to_market else 0)
        r[C_MIN_NOTIONAL] = s.min_notional
    if s.has(NOTIONAL):
        flags |= FL_NOTIONAL | (FL_NOTIONAL_MIN_MKT if s.notional_apply_min_to_market else 0)
        flags |= FL_NOTIONAL_MAX_MKT if s.notional_apply_max_to_market else 0
        r[C_NOTIONAL_MIN], r[C_NOTIONAL_MAX] = s.notional_min, s.notional_max
    if s.has(PERCENT_PRICE):
        flags |= FL_PERCENT_PRICE
        r[C_PP_UP], r[C_PP_DOWN] = s.multiplier_up, s.multiplier_down
    if s.has(PERCENT_PRICE_BY_SIDE):
        flags |= FL_PERCENT_PRICE_BY_SIDE
        r[C_PPS_BID_UP], r[C_PPS_BID_DOWN] = s.bid_multiplier_up, s.bid_multiplier_down
        r[C_PPS_ASK_UP], r[C_PPS_ASK_DOWN] = s.ask_multiplier_up, s.ask_multiplier_down
    if s.quote_order_qty_market_allowed:
        flags |= FL_QUOTE_QTY_MKT
    r[C_MAX_NUM_ORDERS] = s.max_num_orders
    r[C_MAX_POSITION] = s.max_position
    r[C_FLAGS] = flags
    r[C_ORDER_TYPES] = sum(bit for name, bit in _ORDER_TYPE_BITS.items() if name in s.order_types)
    return r


def build_filter_table(info: VenueInfo, symbols: Sequence[str]) -> np.ndarray:
    """``int64[len(symbols), N_COLS]``: row i holds ``symbols[i]``'s filters (pass symbols in instrument id
    order: ``[i.symbol for i in cfg.instruments]``). Raises ``VenueInfoError`` for a symbol ``info`` lacks."""
    table = np.zeros((len(symbols), N_COLS), dtype=np.int64)
    for i, name in enumerate(symbols):
        table[i, :] = _row(info.symbol(name))
    return table


# ---------------------------------------------------------------------------
# Kernels (hot path): pure, no allocation, no NRT. Arguments are fixed point int64 unless said otherwise.
# ---------------------------------------------------------------------------
_S = np.int64(FIXED_SCALE)
_M = np.int64(INT64_MAX)
_WHOLE_MAX = np.int64(INT64_MAX // FIXED_SCALE)  # mul_fixed's whole part fits while (ah+1)*(bh+1) <= this
_FAST_HALF = np.int64(1 << 31)  # both whole parts below: (ah+1)*(bh+1) < 2**62 cannot overflow
_DIV_MAX = np.int64(INT64_MAX // 10)  # core.matching.qty_for_quote is exact for px up to this


@nb.njit(cache=True, nogil=True, _nrt=False)
def cmp_product(a, b, limit):
    """Sign of ``a*b - limit*1e8`` (-1, 0, 1), exact, for ``a, b, limit >= 0`` fixed point (see module doc).

    ``a*b`` is in 1e-16 units, ``limit`` in 1e-8 units: ``cmp_product(px, qty, min_notional) >= 0`` is
    ``px*qty >= min_notional``.
    """
    if a <= 0 or b <= 0:
        return -1 if limit > 0 else 0
    ah = a // _S
    bh = b // _S
    if not (ah < _FAST_HALF and bh < _FAST_HALF and (ah + 1) * (bh + 1) <= _WHOLE_MAX):
        # mul_fixed could overflow. If the smaller factor is <= 1e8 the whole part is <= the larger one: exact.
        # Else, with lo < hi: hi <= floor(limit*1e8/lo) <=> a*b <= limit*1e8, and then the whole part is
        # <= limit: exact. qty_for_quote needs lo <= INT64_MAX/10 (its digit loop multiplies by 10); both
        # factors above that make a*b/1e8 > 8e27, beyond any int64 limit.
        lo = min(a, b)
        if lo > _S:
            if lo > _DIV_MAX or max(a, b) > qty_for_quote(limit, lo):
                return 1
    whole, rem = mul_fixed(a, b)
    if whole < limit:
        return -1
    if whole > limit or rem > 0:
        return 1
    return 0


@nb.njit(cache=True, nogil=True, _nrt=False)
def round_qty_down(table, sym, qty, is_market):
    """``qty`` rounded DOWN to the instrument's step (MARKET: to ``C_MKT_ROUND_STEP``, a multiple of the
    LOT_SIZE and MARKET_LOT_SIZE steps). No step: ``qty`` unchanged. Bad ``sym`` or ``qty <= 0``: 0.
    Does not clamp to min/max (``check_order`` rejects those)."""
    if sym < 0 or sym >= table.shape[0] or qty <= 0:
        return np.int64(0)
    step = table[sym, C_MKT_ROUND_STEP] if is_market else table[sym, C_STEP]
    if step <= 0:
        return np.int64(qty)
    return np.int64(qty - qty % step)


@nb.njit(cache=True, nogil=True, _nrt=False)
def round_price(table, sym, px, side):
    """``px`` on the tick, rounded passively: DOWN for SIDE_BUY, UP for SIDE_SELL (never a worse limit than
    asked). No tick: ``px`` unchanged. Bad ``sym``/``side``, ``px <= 0``, or a sell that cannot round up within
    int64: 0 (``check_order`` rejects a 0 price)."""
    if sym < 0 or sym >= table.shape[0] or px <= 0:
        return np.int64(0)
    tick = table[sym, C_TICK]
    if tick <= 0:
        return np.int64(px)
    r = px % tick
    if r == 0:
        return np.int64(px)
    if side == SIDE_BUY:
        return np.int64(px - r)
    if side == SIDE_SELL:
        if px > _M - (tick - r):
            return np.int64(0)
        return np.int64(px + (tick - r))
    return np.int64(0)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _lot_ok(qty, lo, hi, step):
    if lo > 0 and qty < lo:
        return False
    if hi > 0 and qty > hi:
        return False
    if step > 0 and qty % step != 0:
        return False
    return True


@nb.njit(cache=True, nogil=True, _nrt=False)
def _band_ok(price, ref_px, up, down):
    """price <= ref*up and price >= ref*down (a zero multiplier: that side unbounded)."""
    if up > 0 and cmp_product(ref_px, up, price) < 0:
        return False
    if down > 0 and cmp_product(ref_px, down, price) > 0:
        return False
    return True


@nb.njit(cache=True, nogil=True, _nrt=False)
def check_order(table, sym, side, order_type, price, qty, ref_px):
    """Would Binance's filters accept this new order? ``F_OK`` (0) or the first failing ``F_*`` code.

    ``side``: SIDE_BUY/SIDE_SELL; ``order_type``: OT_LIMIT/OT_LIMIT_MAKER (priced) or OT_MARKET (``price``
    ignored; notional uses ``ref_px``); ``qty``: base quantity (> 0); ``ref_px``: the average/reference price
    (<= 0: none; the checks needing it are skipped). Semantics and check order: module docstring.
    """
    if sym < 0 or sym >= table.shape[0] or qty <= 0 or (side != SIDE_BUY and side != SIDE_SELL):
        return F_INVALID
    if order_type != OT_LIMIT and order_type != OT_MARKET and order_type != OT_LIMIT_MAKER:
        return F_INVALID
    is_market = order_type == OT_MARKET
    if not is_market and price <= 0:
        return F_INVALID
    if (table[sym, C_ORDER_TYPES] >> order_type) & 1 == 0:
        return F_ORDER_TYPE
    flags = table[sym, C_FLAGS]
    if is_market:
        npx = ref_px
    else:
        npx = price
        if flags & FL_PRICE_FILTER:
            lo = table[sym, C_MIN_PRICE]
            hi = table[sym, C_MAX_PRICE]
            tick = table[sym, C_TICK]
            if (lo > 0 and price < lo) or (hi > 0 and price > hi) or (tick > 0 and price % tick != 0):
                return F_PRICE_FILTER
        if ref_px > 0:
            if flags & FL_PERCENT_PRICE:
                if not _band_ok(price, ref_px, table[sym, C_PP_UP], table[sym, C_PP_DOWN]):
                    return F_PERCENT_PRICE
            if flags & FL_PERCENT_PRICE_BY_SIDE:
                if side == SIDE_BUY:
                    ok = _band_ok(price, ref_px, table[sym, C_PPS_BID_UP], table[sym, C_PPS_BID_DOWN])
                else:
                    ok = _band_ok(price, ref_px, table[sym, C_PPS_ASK_UP], table[sym, C_PPS_ASK_DOWN])
                if not ok:
                    return F_PERCENT_PRICE_BY_SIDE
    if flags & FL_LOT_SIZE:
        if not _lot_ok(qty, table[sym, C_MIN_QTY], table[sym, C_MAX_QTY], table[sym, C_STEP]):
            return F_LOT_SIZE
    if is_market and flags & FL_MARKET_LOT_SIZE:
        if not _lot_ok(qty, table[sym, C_MKT_MIN_QTY], table[sym, C_MKT_MAX_QTY], table[sym, C_MKT_STEP]):
            return F_MARKET_LOT_SIZE
    if npx > 0:
        if flags & FL_MIN_NOTIONAL and (not is_market or flags & FL_MIN_NOTIONAL_MKT):
            mn = table[sym, C_MIN_NOTIONAL]
            if mn > 0 and cmp_product(npx, qty, mn) < 0:
                return F_MIN_NOTIONAL
        if flags & FL_NOTIONAL:
            mn = table[sym, C_NOTIONAL_MIN]
            if (not is_market or flags & FL_NOTIONAL_MIN_MKT) and mn > 0 and cmp_product(npx, qty, mn) < 0:
                return F_NOTIONAL
            mx = table[sym, C_NOTIONAL_MAX]
            if (not is_market or flags & FL_NOTIONAL_MAX_MKT) and mx > 0 and cmp_product(npx, qty, mx) > 0:
                return F_MAX_NOTIONAL
    return F_OK


@nb.njit(cache=True, nogil=True, _nrt=False)
def check_open_orders(table, sym, open_orders):
    """MAX_NUM_ORDERS: ``F_MAX_NUM_ORDERS`` when ``open_orders`` (ours, open on the symbol now) already reaches
    maxNumOrders, so one more would be rejected; else ``F_OK``. Bad ``sym``: ``F_INVALID``."""
    if sym < 0 or sym >= table.shape[0]:
        return F_INVALID
    mx = table[sym, C_MAX_NUM_ORDERS]
    if mx > 0 and open_orders >= mx:
        return F_MAX_NUM_ORDERS
    return F_OK


def warm() -> None:
    """Compile (or load from the numba cache) every kernel for int64 arguments: a stage's warm-up hook."""
    t = np.zeros((1, N_COLS), dtype=np.int64)
    i = np.int64(0)
    cmp_product(i, i, i)
    round_qty_down(t, i, i, True)
    round_qty_down(t, i, i, False)
    round_price(t, i, i, i)
    check_order(t, i, i, i, i, i, i)
    check_open_orders(t, i, i)
