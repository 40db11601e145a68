"""Every record dtype of the pipeline, declared once.

No other module builds a dtype: rings, kernels and tests import these. Each
dtype is ``align=True`` (or has explicit offsets), its itemsize is a multiple of
64 bytes (one cache line), and the layout is checked at import time, so two
processes built from different sources refuse to talk rather than misread.

Fixed point
-----------
Prices and quantities are exact ``int64`` with ONE global scale,
``FIXED_SCALE = 10**8`` (8 decimals, the most any Binance Spot price, quantity
or commission carries). ``"42999.80"`` is ``4_299_980_000_000``. The largest
quantity Binance sends (it caps overflowing depth at 92,233,720,368.54775807)
is exactly ``INT64_MAX`` at this scale. Conversions go through
``core.fixedpoint`` and never through a float. Floats appear only in analytics
fields (VWAP, signal strength) and are named so.

Clocks
------
``*_ns`` fields are CLOCK_MONOTONIC nanoseconds on this host
(``time.monotonic_ns()``). ``*_ms`` fields are exchange milliseconds since the
Unix epoch as the exchange sent them.

Trace
-----
Every record starts with ``recv_ns`` (the feed received the originating
frame) and ``pub_ns`` (the current stage published this record). Records
downstream of ``md`` also carry ``in_pub_ns``: the ``pub_ns`` of the input
record that caused them, so every hop can be measured from records alone.
"""

from __future__ import annotations

import numpy as np

import ringbuffers.numba_records  # noqa: F401  (record types mangle deterministically: see that module)

CACHE_LINE = 64
FIXED_SCALE = 10**8
FIXED_DECIMALS = 8
INT64_MAX = np.iinfo(np.int64).max

# ---------------------------------------------------------------------------
# Market event (ring ``md``, feed -> book). 64 bytes: one depth level, one
# snapshot level, one trade, one side of a bookTicker, or a stream status.
# A depth diff of n levels becomes n records (a diff with no level becomes one
# MD_DEPTH_NONE record) framed by FLAG_BEGIN on the first and FLAG_END on the
# last; a snapshot is MD_SNAP_BEGIN, its levels, MD_SNAP_END.
# ---------------------------------------------------------------------------
MD_DEPTH_BID = 1  # diff level, bid side; first_id=U, last_id=u
MD_DEPTH_ASK = 2  # diff level, ask side
MD_DEPTH_NONE = 3  # diff that carried no level at all (keeps the U/u chain)
MD_SNAP_BEGIN = 4  # REST snapshot begins; last_id=lastUpdateId, aux=levels that follow
MD_SNAP_BID = 5  # snapshot level, bid side; last_id=lastUpdateId
MD_SNAP_ASK = 6  # snapshot level, ask side
MD_SNAP_END = 7  # snapshot complete; last_id=lastUpdateId
MD_TRADE = 8  # @trade: first_id=last_id=t, exch_ms=T
MD_AGG_TRADE = 9  # @aggTrade: first_id=f, last_id=l, exch_ms=T, aux=low 32 bits of a
MD_TICKER_BID = 10  # @bookTicker bid side; last_id=u
MD_TICKER_ASK = 11  # @bookTicker ask side; last_id=u
MD_STATUS = 12  # stream status for a symbol (aux = STATUS_* code)
MD_KIND_MAX = 12

# flags (bit set)
FLAG_BEGIN = 1  # first record of one exchange message
FLAG_END = 2  # last record of one exchange message
FLAG_BUYER_MAKER = 4  # trade: buyer was the maker (aggressor sold)

# MD_STATUS codes (aux)
STATUS_RECONNECTED = 1  # transport was re-established: books must resync
STATUS_SNAPSHOT_FAILED = 2  # REST snapshot could not be fetched (will retry)

MD_EVENT = np.dtype(
    [
        ("recv_ns", "<i8"),  # CLOCK_MONOTONIC ns the feed received the frame
        ("pub_ns", "<i8"),  # CLOCK_MONOTONIC ns the feed published this record
        ("exch_ms", "<i8"),  # exchange time, ms epoch (E for depth, T for trades)
        ("first_id", "<i8"),  # depth U / trade id / aggTrade f / snapshot lastUpdateId
        ("last_id", "<i8"),  # depth u / trade id / aggTrade l / snapshot lastUpdateId / ticker u
        ("price", "<i8"),  # fixed point, FIXED_SCALE
        ("qty", "<i8"),  # fixed point, FIXED_SCALE; absolute level qty, 0 removes
        ("symbol", "<u2"),  # instrument id (index into the configured instrument table)
        ("kind", "u1"),  # MD_* kind
        ("flags", "u1"),  # FLAG_* bits
        ("aux", "<u4"),  # kind-specific: snapshot level count, status code, agg id low bits
    ],
    align=True,
)

# ---------------------------------------------------------------------------
# Book event (ring ``book``, book -> signal, risk, execution). A tagged union:
# a 64-byte header shared by all kinds, then a kind-specific payload that
# overlaps. Field names carry the kind's prefix (top_, tr_, bar_, d_).
# ---------------------------------------------------------------------------
BK_TOP = 1  # best bid/ask changed (or the book state changed)
BK_DEPTH = 2  # top-N depth snapshot (throttled)
BK_TRADE = 3  # a trade, forwarded in book order
BK_BAR = 4  # a closed time bar

BOOK_INVALID = 0  # never act on it: waiting for snapshot, gap, crossed, lapped
BOOK_VALID = 1

DEPTH_LEVELS = 10

_BOOK_HEADER = [
    ("recv_ns", "<i8", 0),  # ns the feed received the originating frame
    ("pub_ns", "<i8", 8),  # ns the book worker published this record
    ("in_pub_ns", "<i8", 16),  # pub_ns of the md record that caused it
    ("exch_ms", "<i8", 24),  # exchange time of the cause, ms epoch
    ("last_update_id", "<i8", 32),  # book update id after applying the cause
    ("symbol", "<u2", 40),  # instrument id
    ("kind", "u1", 42),  # BK_* kind
    ("state", "u1", 43),  # BOOK_VALID / BOOK_INVALID
    ("flags", "<u4", 44),  # FLAG_* bits (trade: FLAG_BUYER_MAKER)
    ("seq", "<i8", 48),  # per-symbol book event sequence number
]
_BOOK_PAYLOAD = [
    # BK_TOP
    ("top_bid_px", "<i8", 64),  # best bid price, fixed point (0 if none)
    ("top_bid_qty", "<i8", 72),  # best bid qty
    ("top_ask_px", "<i8", 80),  # best ask price (0 if none)
    ("top_ask_qty", "<i8", 88),  # best ask qty
    # BK_TRADE
    ("tr_px", "<i8", 64),  # trade price
    ("tr_qty", "<i8", 72),  # trade qty
    ("tr_first_id", "<i8", 80),  # trade id (aggTrade: first trade id)
    ("tr_last_id", "<i8", 88),  # trade id (aggTrade: last trade id)
    ("tr_time_ms", "<i8", 96),  # trade time T, ms epoch
    # BK_BAR
    ("bar_open_ms", "<i8", 64),  # bar open time, ms epoch (inclusive)
    ("bar_close_ms", "<i8", 72),  # bar close time, ms epoch (open + interval - 1, as Binance)
    ("bar_open", "<i8", 80),  # first trade price
    ("bar_high", "<i8", 88),  # highest trade price
    ("bar_low", "<i8", 96),  # lowest trade price
    ("bar_close", "<i8", 104),  # last trade price
    ("bar_volume", "<i8", 112),  # base volume, fixed point
    ("bar_quote_volume", "<i8", 120),  # quote volume sum(p*q), fixed point, exact (truncated at 1e-8)
    ("bar_taker_buy_base", "<i8", 128),  # base volume where the taker bought
    ("bar_taker_buy_quote", "<i8", 136),  # quote volume where the taker bought
    ("bar_trades", "<i8", 144),  # number of trades (Binance kline n)
    ("bar_first_trade_id", "<i8", 152),  # first trade id (-1 when empty)
    ("bar_last_trade_id", "<i8", 160),  # last trade id (-1 when empty)
    ("bar_vwap", "<f8", 168),  # analytics: quote_volume / volume (NaN when empty)
    ("bar_interval_ms", "<i8", 176),  # bar length in ms
    # BK_DEPTH (best first; unused levels are 0)
    ("d_bid_px", "<i8", (DEPTH_LEVELS,), 64),
    ("d_bid_qty", "<i8", (DEPTH_LEVELS,), 64 + 8 * DEPTH_LEVELS),
    ("d_ask_px", "<i8", (DEPTH_LEVELS,), 64 + 16 * DEPTH_LEVELS),
    ("d_ask_qty", "<i8", (DEPTH_LEVELS,), 64 + 24 * DEPTH_LEVELS),
]


def _cache_aligned(fields) -> np.dtype:
    """An aligned struct dtype padded at the end to a whole number of cache lines."""
    dt = np.dtype(fields, align=True)
    size = -(-dt.itemsize // CACHE_LINE) * CACHE_LINE
    return np.dtype({"names": list(dt.names), "formats": [dt.fields[n][0] for n in dt.names],
                     "offsets": [dt.fields[n][1] for n in dt.names], "itemsize": size}, align=True)


def _union_dtype(fields, itemsize):
    names, formats, offsets = [], [], []
    for f in fields:
        names.append(f[0])
        formats.append((f[1], f[2]) if len(f) == 4 else f[1])
        offsets.append(f[-1])
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": itemsize})


BOOK_EVENT = _union_dtype(_BOOK_HEADER + _BOOK_PAYLOAD, 64 + 32 * DEPTH_LEVELS)

# ---------------------------------------------------------------------------
# Signal (ring ``signals``, signal -> risk). 128 bytes.
# ---------------------------------------------------------------------------
SIDE_BUY = 1
SIDE_SELL = -1
SIDE_FLAT = 0  # no direction: trace probes only
SIDE_CLOSE = 2  # signal: close (flatten) what the strategy entered; never an order side

# SIGNAL.trigger
TRIGGER_BAR = 1  # a closed bar of signal.features.bar_interval_ms
TRIGGER_TOP = 2  # a top-of-book change (throttled by signal.update_interval_ms)
TRIGGER_EVENT = 3  # any book record (trace probes)

SIGNAL = _cache_aligned(
    [
        ("recv_ns", "<i8"),  # ns the feed received the originating frame
        ("pub_ns", "<i8"),  # ns the signal worker published this record
        ("in_pub_ns", "<i8"),  # pub_ns of the book record that caused it
        ("exch_ms", "<i8"),  # exchange time of the cause, ms epoch
        ("signal_id", "<i8"),  # unique per run, increasing
        ("ref_px", "<i8"),  # reference price (mid or last) when decided, fixed point
        ("target_qty", "<i8"),  # desired quantity (fixed point, >= 0)
        ("limit_px", "<i8"),  # suggested limit price, 0 = market
        ("strength", "<f8"),  # analytics: model score / rule strength in [-1, 1], signed like the side
        ("symbol", "<u2"),  # instrument id
        ("side", "i1"),  # SIDE_BUY / SIDE_SELL / SIDE_CLOSE (SIDE_FLAT: trace probe)
        ("strategy", "u1"),  # strategy id: position in signal.strategies + 1
        ("reason", "<u4"),  # reason code (core.strategies.R_*)
        ("confidence", "<f8"),  # analytics: in [0, 1] (core.strategies documents it per strategy)
        ("model_id", "<u4"),  # crc32 of the model file (0: no model)
        ("trigger", "u1"),  # TRIGGER_*
        ("atr", "<f8"),  # analytics: the symbol's ATR feature when decided (NaN: not warm); risk's volatility sizing
        ("book_seq", "<i8"),  # sequence on the book ring of the record that caused it: risk applies the book up
                              # to it before deciding, so its view is the signal's whatever the placement
    ],
)

# ---------------------------------------------------------------------------
# Order request (ring ``orders``, risk -> execution). 128 bytes.
# ---------------------------------------------------------------------------
ORD_NEW = 1
ORD_CANCEL = 2
ORD_CANCEL_ALL = 3
ORD_DENIED = 4  # risk said no: a record of the decision (reason = core.risk_kernels.D_*), never sent to a venue

ORIGIN_STRATEGY = 0
ORIGIN_STOP = 1  # a stop-loss / take-profit / trailing exit
ORIGIN_KILL = 2  # the kill switch / circuit breaker (cancel-all, flatten)
ORIGIN_OPERATOR = 3  # an operator command (ctl.sh)

OT_LIMIT = 1
OT_MARKET = 2
OT_LIMIT_MAKER = 3

TIF_GTC = 1
TIF_IOC = 2
TIF_FOK = 3

ORDER_REQUEST = _cache_aligned(
    [
        ("recv_ns", "<i8"),  # ns the feed received the originating frame
        ("pub_ns", "<i8"),  # ns the risk worker published this record
        ("in_pub_ns", "<i8"),  # pub_ns of the signal that caused it
        ("exch_ms", "<i8"),  # exchange time of the cause, ms epoch
        ("client_order_id", "<i8"),  # unique per instance; sent as "<instance>-<id>"
        ("orig_client_order_id", "<i8"),  # ORD_CANCEL: the order to cancel
        ("signal_id", "<i8"),  # the signal it came from (0 = stop / kill switch)
        ("price", "<i8"),  # limit price, fixed point (0 for market)
        ("qty", "<i8"),  # quantity, fixed point
        ("stop_px", "<i8"),  # stop price, fixed point (0 = none)
        ("symbol", "<u2"),  # instrument id
        ("side", "i1"),  # SIDE_BUY / SIDE_SELL
        ("action", "u1"),  # ORD_NEW / ORD_CANCEL / ORD_CANCEL_ALL
        ("order_type", "u1"),  # OT_*
        ("tif", "u1"),  # TIF_*
        ("origin", "u1"),  # ORIGIN_*
        ("reason", "<u2"),  # ORD_DENIED: the risk check that denied it (core.risk_kernels.D_*); else 0
        ("strategy", "u1"),  # the signal's strategy id (0: not from a strategy)
        ("reduce_only", "u1"),  # 1: may only reduce the position (exits, closes, flatten)
        ("ref_px", "<i8"),  # arrival mid when risk decided, fixed point (slippage reference)
        ("est_slip_bps", "<f8"),  # risk's pre-trade slippage estimate vs ref_px, bps (NaN: no depth)
    ],
)

# ---------------------------------------------------------------------------
# Execution report (ring ``reports``, execution -> risk, supervisor). 128 bytes.
# ---------------------------------------------------------------------------
EX_NEW = 1  # accepted by the venue
EX_TRADE = 2  # (partial) fill
EX_CANCELED = 3
EX_REJECTED = 4
EX_EXPIRED = 5

OS_NEW = 1
OS_PARTIALLY_FILLED = 2
OS_FILLED = 3
OS_CANCELED = 4
OS_REJECTED = 5
OS_EXPIRED = 6

EXEC_REPORT = _cache_aligned(
    [
        ("recv_ns", "<i8"),  # ns the feed received the frame behind the order (0 for venue-originated)
        ("pub_ns", "<i8"),  # ns the execution worker published this record
        ("in_pub_ns", "<i8"),  # pub_ns of the order request it answers
        ("exch_ms", "<i8"),  # venue transaction time, ms epoch
        ("client_order_id", "<i8"),  # our id
        ("order_id", "<i8"),  # venue order id (-1 unknown)
        ("trade_id", "<i8"),  # venue trade id (-1 if no trade)
        ("last_px", "<i8"),  # last fill price, fixed point
        ("last_qty", "<i8"),  # last fill qty, fixed point
        ("cum_qty", "<i8"),  # cumulative filled qty
        ("cum_quote", "<i8"),  # cumulative quote qty
        ("commission", "<i8"),  # commission of this fill, fixed point, in commission_asset
        ("symbol", "<u2"),  # instrument id
        ("side", "i1"),  # SIDE_BUY / SIDE_SELL
        ("exec_type", "u1"),  # EX_*
        ("status", "u1"),  # OS_*
        ("is_maker", "u1"),  # 1 if the fill was on the maker side
        ("commission_asset", "u1"),  # 0 quote, 1 base, 2 other (fee asset)
        ("reject_code", "<i4"),  # venue error code (e.g. -2010) or 0
    ],
)

# ---------------------------------------------------------------------------
# Bench / stress record: sequence and checksum, used by tests and benchmarks.
# ---------------------------------------------------------------------------
BENCH = np.dtype(
    [
        ("recv_ns", "<i8"),  # ns the producer created it
        ("pub_ns", "<i8"),  # ns the producer published it
        ("seq", "<i8"),  # producer sequence number, from 0
        ("payload", "<i8", (4,)),  # derived from seq (see checksum)
        ("checksum", "<i8"),  # xor of seq and payload; a torn record fails it
    ],
    align=True,
)

ALL_DTYPES = {
    "MD_EVENT": MD_EVENT,
    "BOOK_EVENT": BOOK_EVENT,
    "SIGNAL": SIGNAL,
    "ORDER_REQUEST": ORDER_REQUEST,
    "EXEC_REPORT": EXEC_REPORT,
    "BENCH": BENCH,
}

# ---------------------------------------------------------------------------
# Import-time layout checks: a change here is a wire change between processes.
# ---------------------------------------------------------------------------
_EXPECTED = {
    "MD_EVENT": (64, {"recv_ns": 0, "pub_ns": 8, "exch_ms": 16, "first_id": 24, "last_id": 32,
                      "price": 40, "qty": 48, "symbol": 56, "kind": 58, "flags": 59, "aux": 60}),
    "BOOK_EVENT": (384, {"recv_ns": 0, "pub_ns": 8, "in_pub_ns": 16, "last_update_id": 32,
                         "symbol": 40, "kind": 42, "state": 43, "top_bid_px": 64, "top_ask_qty": 88,
                         "bar_vwap": 168, "d_ask_qty": 304}),
    "SIGNAL": (128, {"recv_ns": 0, "pub_ns": 8, "in_pub_ns": 16, "symbol": 72, "side": 74, "reason": 76,
                     "confidence": 80, "model_id": 88, "trigger": 92, "atr": 96, "book_seq": 104}),
    "ORDER_REQUEST": (128, {"recv_ns": 0, "pub_ns": 8, "in_pub_ns": 16, "client_order_id": 32,
                            "symbol": 80, "side": 82, "origin": 86, "reason": 88, "ref_px": 96,
                            "est_slip_bps": 104}),
    "EXEC_REPORT": (128, {"recv_ns": 0, "pub_ns": 8, "in_pub_ns": 16, "client_order_id": 32,
                          "symbol": 96, "reject_code": 104}),
    "BENCH": (64, {"recv_ns": 0, "pub_ns": 8, "seq": 16, "checksum": 56}),
}


def _check_layouts() -> None:
    for name, (size, offsets) in _EXPECTED.items():
        dt = ALL_DTYPES[name]
        if dt.itemsize != size or dt.itemsize % CACHE_LINE:
            raise ImportError(f"records.{name}: itemsize {dt.itemsize}, expected {size} (multiple of {CACHE_LINE})")
        for field, off in offsets.items():
            got = dt.fields[field][1]
            if got != off:
                raise ImportError(f"records.{name}.{field}: offset {got}, expected {off}")


_check_layouts()


def concat_records(parts, dtype: np.dtype) -> np.ndarray:
    """``np.concatenate`` for record arrays that keeps ``dtype`` exactly.

    numpy's concatenate canonicalises a struct dtype: it drops the trailing
    cache-line padding (SIGNAL becomes 96 bytes) and un-overlaps a union
    (BOOK_EVENT becomes 568 bytes), so the result no longer equals the ring's
    dtype and a kernel compiled for the ring type would be recompiled for it.
    """
    parts = [p for p in parts if len(p)]
    out = np.zeros(sum(len(p) for p in parts), dtype)  # field by field: padding bytes are zero, not garbage
    i = 0
    for p in parts:
        out[i:i + len(p)] = p
        i += len(p)
    return out


def dtype_name(dt: np.dtype) -> str:
    """The records.py name of a dtype, or a description of it if it is not ours."""
    for name, known in ALL_DTYPES.items():
        if known == dt:
            return name
    return f"<unknown dtype itemsize={dt.itemsize}>"
