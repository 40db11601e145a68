"""Matching core: taker matching, resting orders' maker fills, fees; kernels against Decimal/dict references."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from core.matching import (
    FEE_ASSET_BASE,
    FEE_ASSET_OTHER,
    FEE_ASSET_QUOTE,
    FEE_NATIVE,
    FEE_SEPARATE,
    OUT_EXPIRED_FOK,
    OUT_EXPIRED_IOC,
    OUT_EXPIRED_NO_LIQUIDITY,
    OUT_FILLED,
    OUT_INVALID,
    OUT_REJECTED_DUPLICATE,
    OUT_REJECTED_TABLE_FULL,
    OUT_REJECTED_WOULD_TAKE,
    OUT_RESTING,
    QUEUE_POSITION,
    QUEUE_TRADE_THROUGH,
    REST_INVALID,
    REST_TABLE_FULL,
    FILL,
    MatchingEngine,
    commission_of,
    compact_side,
    match_taker,
    on_trade,
    qty_for_quote,
    quote_of,
    rest_order,
)
from core.records import (
    BOOK_EVENT,
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

S = 10**8
I64 = np.int64


def px(x) -> int:
    """Decimal text / number to fixed point (test helper)."""
    return int(Decimal(str(x)) * S)


def book(bids=(), asks=()):
    """(bid_px, bid_qty, ask_px, ask_qty) int64 arrays from [(px, qty)] lists in units."""
    def side(levels):
        return (np.array([px(p) for p, _ in levels], I64), np.array([px(q) for _, q in levels], I64))
    bp, bq = side(bids)
    ap, aq = side(asks)
    return bp, bq, ap, aq


def taker(bk, side, order_type, *, tif=TIF_GTC, limit=0, qty=0, quote_qty=0, lot_step=1, deplete=False):
    """Call the kernel directly; returns (fills [(px, qty)], filled, quote, outcome)."""
    bp, bq, ap, aq = bk
    cap = max(len(bp), len(ap), 1)
    fp, fq = np.zeros(cap, I64), np.zeros(cap, I64)
    n, filled, quote, outcome = match_taker(bp, bq, len(bp), ap, aq, len(ap), side, order_type, tif, limit, qty,
                                            quote_qty, lot_step, deplete, fp, fq)
    return [(int(fp[i]), int(fq[i])) for i in range(n)], int(filled), int(quote), int(outcome)


ASKS = [("100", "1"), ("101", "2"), ("102", "3")]
BIDS = [("99", "1"), ("98", "2"), ("97", "3")]


# ---------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**15), st.integers(0, 10**17))
def test_quote_of_is_floor_of_exact_product(p, q):
    if p * q // S > INT64_MAX:
        return
    assert quote_of(p, q) == p * q // S


def test_quote_of_exact_at_the_documented_bound():
    # largest notional: px*qty/1e8 == INT64_MAX exactly representable
    p = 10**6 * S  # 1,000,000 quote per base
    q = INT64_MAX * S // p  # the most qty whose quote fits
    assert quote_of(p, q) == p * q // S <= INT64_MAX


@settings(max_examples=400, deadline=None)
@given(st.integers(0, INT64_MAX), st.integers(1, INT64_MAX // 10))
def test_qty_for_quote_is_floor_division(quote, p):
    exact = quote * S // p
    got = qty_for_quote(quote, p)
    assert got == min(exact, (INT64_MAX // S) * S)


def test_qty_for_quote_long_division_path_for_high_prices():
    p = 123_456_789 * S + 7  # a price above 922 quote units: b*1e8 may not fit
    quote = 5 * p + (p - 1)
    assert qty_for_quote(quote, p) == quote * S // p


# ---------------------------------------------------------------------------
# Taker matching on crafted books
# ---------------------------------------------------------------------------
def test_market_buy_walks_levels_at_each_level_price():
    fills, filled, quote, out = taker(book(BIDS, ASKS), SIDE_BUY, OT_MARKET, qty=px("3.5"))
    assert fills == [(px(100), px(1)), (px(101), px(2)), (px(102), px("0.5"))]
    assert (filled, out) == (px("3.5"), OUT_FILLED)
    assert quote == px(100 + 202 + 51)


def test_market_sell_walks_bids_best_first():
    fills, filled, quote, out = taker(book(BIDS, ASKS), SIDE_SELL, OT_MARKET, qty=px(2))
    assert fills == [(px(99), px(1)), (px(98), px(1))]
    assert (filled, quote, out) == (px(2), px(99 + 98), OUT_FILLED)


def test_market_larger_than_book_expires_the_rest():
    fills, filled, _, out = taker(book(BIDS, ASKS), SIDE_BUY, OT_MARKET, qty=px(10))
    assert len(fills) == 3 and filled == px(6)
    assert out == OUT_EXPIRED_NO_LIQUIDITY


def test_market_on_empty_side_expires_with_no_fill():
    fills, filled, quote, out = taker(book(BIDS, []), SIDE_BUY, OT_MARKET, qty=px(1))
    assert (fills, filled, quote, out) == ([], 0, 0, OUT_EXPIRED_NO_LIQUIDITY)
    fills, _, _, out = taker(book([], ASKS), SIDE_SELL, OT_MARKET, quote_qty=px(50), lot_step=px("0.01"))
    assert (fills, out) == ([], OUT_EXPIRED_NO_LIQUIDITY)


def test_market_buy_by_quote_rounds_each_fill_down_to_lot_step():
    # 150 USDT: 1 @ 100 (100 spent), then 50/101 = 0.4950.. -> 0.49 @ 101 = 49.49
    fills, filled, quote, out = taker(book(BIDS, ASKS), SIDE_BUY, OT_MARKET, quote_qty=px(150), lot_step=px("0.01"))
    assert fills == [(px(100), px(1)), (px(101), px("0.49"))]
    assert (filled, quote, out) == (px("1.49"), px("149.49"), OUT_FILLED)


def test_market_sell_by_quote_stops_at_first_level_it_cannot_take_whole():
    # 150 quote: 1 @ 99 (99), then 51/98 = 0.5204 -> 0.52 @ 98; it never skips to 97 for a last lot
    fills, filled, quote, out = taker(book(BIDS, ASKS), SIDE_SELL, OT_MARKET, quote_qty=px(150), lot_step=px("0.01"))
    assert fills == [(px(99), px(1)), (px(98), px("0.52"))]
    assert quote == px("149.96") and quote <= px(150)
    assert out == OUT_FILLED


def test_market_by_quote_below_one_lot_expires_with_nothing():
    fills, _, _, out = taker(book(BIDS, ASKS), SIDE_BUY, OT_MARKET, quote_qty=px("0.5"), lot_step=px("0.01"))
    assert (fills, out) == ([], OUT_EXPIRED_NO_LIQUIDITY)


def test_market_by_quote_exhausting_the_book_expires_unless_dust_is_left():
    fills, filled, quote, out = taker(book(BIDS, ASKS), SIDE_BUY, OT_MARKET, quote_qty=px(1000), lot_step=px("0.01"))
    assert filled == px(6) and quote == px(100 + 202 + 306) and out == OUT_EXPIRED_NO_LIQUIDITY
    # exactly the book's value: nothing left, FILLED
    _, _, quote, out = taker(book(BIDS, ASKS), SIDE_BUY, OT_MARKET, quote_qty=px(608), lot_step=px("0.01"))
    assert (quote, out) == (px(608), OUT_FILLED)


def test_limit_gtc_crosses_partially_then_rests():
    eng = MatchingEngine(8)
    bp, bq, ap, aq = book(BIDS + [("101", "4")], ASKS)  # a bid level at 101 is only there to check queue_ahead
    r = eng.submit(order_id=7, symbol=3, side=SIDE_BUY, order_type=OT_LIMIT, tif=TIF_GTC, price=px(101), qty=px(5),
                   bid_px=bp, bid_qty=bq, ask_px=ap, ask_qty=aq)
    assert r.outcome == OUT_RESTING and r.status == OS_PARTIALLY_FILLED
    assert [(int(f["px"]), int(f["qty"])) for f in r.fills] == [(px(100), px(1)), (px(101), px(2))]
    assert list(r.fills["status"]) == [OS_PARTIALLY_FILLED, OS_PARTIALLY_FILLED]
    assert list(r.fills["is_maker"]) == [0, 0]
    o = eng.order(7)
    assert (o["price"], o["qty"], o["filled"], o["quote_filled"]) == (px(101), px(5), px(3), px(302))
    assert o["status"] == OS_PARTIALLY_FILLED and o["symbol"] == 3 and o["queue_ahead"] == px(4)


def test_limit_ioc_crosses_partially_then_expires():
    fills, filled, _, out = taker(book(BIDS, ASKS), SIDE_BUY, OT_LIMIT, tif=TIF_IOC, limit=px(101), qty=px(5))
    assert fills == [(px(100), px(1)), (px(101), px(2))]
    assert (filled, out) == (px(3), OUT_EXPIRED_IOC)
    eng = MatchingEngine(4)
    bp, bq, ap, aq = book(BIDS, ASKS)
    r = eng.submit(order_id=1, symbol=0, side=SIDE_SELL, order_type=OT_LIMIT, tif=TIF_IOC, price=px(100), qty=px(1),
                   bid_px=bp, bid_qty=bq, ask_px=ap, ask_qty=aq)
    assert (r.outcome, r.status, len(r.fills), eng.n_live) == (OUT_EXPIRED_IOC, OS_EXPIRED, 0, 0)


def test_limit_not_crossing_gtc_rests_with_no_fill():
    fills, _, _, out = taker(book(BIDS, ASKS), SIDE_SELL, OT_LIMIT, limit=px("99.5"), qty=px(1))
    assert (fills, out) == ([], OUT_RESTING)


def test_fok_fillable_fills_completely():
    fills, filled, _, out = taker(book(BIDS, ASKS), SIDE_BUY, OT_LIMIT, tif=TIF_FOK, limit=px(101), qty=px(3))
    assert fills == [(px(100), px(1)), (px(101), px(2))]
    assert (filled, out) == (px(3), OUT_FILLED)


def test_fok_not_fillable_trades_nothing_and_leaves_the_book():
    bk = book(BIDS, ASKS)
    before = bk[3].copy()
    fills, filled, quote, out = taker(bk, SIDE_BUY, OT_LIMIT, tif=TIF_FOK, limit=px(101), qty=px("3.01"), deplete=True)
    assert (fills, filled, quote, out) == ([], 0, 0, OUT_EXPIRED_FOK)
    assert np.array_equal(bk[3], before)


def test_limit_maker_that_would_cross_is_rejected():
    eng = MatchingEngine(4)
    bp, bq, ap, aq = book(BIDS, ASKS)
    r = eng.submit(order_id=1, symbol=0, side=SIDE_BUY, order_type=OT_LIMIT_MAKER, price=px(100), qty=px(1),
                   bid_px=bp, bid_qty=bq, ask_px=ap, ask_qty=aq)
    assert (r.outcome, r.status, len(r.fills), r.slot, eng.n_live) == (OUT_REJECTED_WOULD_TAKE, OS_REJECTED, 0, -1, 0)
    assert np.array_equal(aq, book(BIDS, ASKS)[3])


def test_limit_maker_not_crossing_rests_behind_the_displayed_level():
    eng = MatchingEngine(4)
    bp, bq, ap, aq = book(BIDS, ASKS)
    r = eng.submit(order_id=1, symbol=0, side=SIDE_SELL, order_type=OT_LIMIT_MAKER, price=px(101), qty=px(1),
                   bid_px=bp, bid_qty=bq, ask_px=ap, ask_qty=aq)
    assert (r.outcome, r.status, len(r.fills)) == (OUT_RESTING, OS_NEW, 0)
    assert eng.order(1)["queue_ahead"] == px(2)


def test_depleted_levels_are_skipped_and_compacted():
    bk = book(BIDS, ASKS)
    taker(bk, SIDE_BUY, OT_MARKET, qty=px("1.5"), deplete=True)
    assert list(bk[3]) == [0, px("1.5"), px(3)]
    fills, *_ = taker(bk, SIDE_BUY, OT_MARKET, qty=px(1), deplete=True)
    assert fills == [(px(101), px(1))]  # the emptied level at 100 is skipped
    n = compact_side(bk[2], bk[3], 3)
    assert n == 2 and list(bk[2][:n]) == [px(101), px(102)] and list(bk[3][:n]) == [px("0.5"), px(3)]


def test_without_deplete_the_book_is_untouched():
    bk = book(BIDS, ASKS)
    taker(bk, SIDE_BUY, OT_MARKET, qty=px(5))
    taker(bk, SIDE_SELL, OT_MARKET, qty=px(5))
    ref = book(BIDS, ASKS)
    assert all(np.array_equal(a, b) for a, b in zip(bk, ref))


@pytest.mark.parametrize("kw", [
    dict(side=0, order_type=OT_MARKET, qty=S),  # unknown side
    dict(side=SIDE_BUY, order_type=9, qty=S),  # unknown type
    dict(side=SIDE_BUY, order_type=OT_MARKET, qty=S, quote_qty=S),  # both qty and quote
    dict(side=SIDE_BUY, order_type=OT_MARKET),  # neither
    dict(side=SIDE_BUY, order_type=OT_LIMIT, limit=px(100), qty=0),
    dict(side=SIDE_BUY, order_type=OT_LIMIT, limit=0, qty=S),
    dict(side=SIDE_BUY, order_type=OT_LIMIT, limit=px(100), qty=S, tif=7),
    dict(side=SIDE_BUY, order_type=OT_LIMIT, limit=px(100), qty=S, quote_qty=S),
    dict(side=SIDE_BUY, order_type=OT_MARKET, quote_qty=S, lot_step=0),
])
def test_bad_arguments_are_invalid_and_touch_nothing(kw):
    bk = book(BIDS, ASKS)
    kw = dict(kw)
    fills, filled, _, out = taker(bk, kw.pop("side"), kw.pop("order_type"), deplete=True, **kw)
    assert (fills, filled, out) == ([], 0, OUT_INVALID)
    assert all(np.array_equal(a, b) for a, b in zip(bk, book(BIDS, ASKS)))


def test_fills_array_shorter_than_the_book_side_is_invalid():
    bp, bq, ap, aq = book(BIDS, ASKS)
    f = np.zeros(2, I64)
    out = match_taker(bp, bq, 3, ap, aq, 3, SIDE_BUY, OT_MARKET, TIF_GTC, 0, S, 0, 1, False, f, f.copy())
    assert out[3] == OUT_INVALID


def test_submit_rejects_duplicate_id_and_full_table():
    eng = MatchingEngine(1)
    bp, bq, ap, aq = book(BIDS, ASKS)
    kw = dict(symbol=0, side=SIDE_BUY, order_type=OT_LIMIT, price=px(90), qty=S, bid_px=bp, bid_qty=bq, ask_px=ap,
              ask_qty=aq)
    assert eng.submit(order_id=1, **kw).outcome == OUT_RESTING
    assert eng.submit(order_id=1, **kw).outcome == OUT_REJECTED_DUPLICATE
    r = eng.submit(order_id=2, **kw)
    assert (r.outcome, r.status) == (OUT_REJECTED_TABLE_FULL, OS_REJECTED)
    # an order that cannot rest does not need a slot
    assert eng.submit(order_id=3, **{**kw, "order_type": OT_MARKET, "price": 0}).outcome == OUT_FILLED


def test_submit_refuses_a_notional_beyond_int64():
    eng = MatchingEngine(1)
    bp, bq, ap, aq = book(BIDS, ASKS)
    with pytest.raises(ValueError, match="quote exceeds"):
        eng.submit(order_id=1, symbol=0, side=SIDE_BUY, order_type=OT_LIMIT, price=10**7 * S, qty=10**6 * S,
                   bid_px=bp, bid_qty=bq, ask_px=ap, ask_qty=aq)


def test_engine_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="matching.capacity"):
        MatchingEngine(0)
    with pytest.raises(ConfigError, match="matching.queue_model"):
        MatchingEngine(4, queue_model=5)
    with pytest.raises(ConfigError, match="matching.taker_fee"):
        MatchingEngine(4, taker_fee=-1)


# ---------------------------------------------------------------------------
# Fees
# ---------------------------------------------------------------------------
def test_taker_fees_buy_in_base_sell_in_quote_rounded_up():
    eng = MatchingEngine(4, taker_fee=px("0.001"), maker_fee=px("0.0002"))
    bp, bq, ap, aq = book(BIDS, [("100", "1"), ("101.5", "0.00000333")])
    r = eng.submit(order_id=1, symbol=0, side=SIDE_BUY, order_type=OT_MARKET, qty=px("1.00000333"),
                   bid_px=bp, bid_qty=bq, ask_px=ap, ask_qty=aq)
    assert list(r.fills["commission_asset"]) == [FEE_ASSET_BASE, FEE_ASSET_BASE]
    assert list(r.fills["commission"]) == [px("0.001"), 1]  # 0.00000333*0.001 = 3.33e-9 -> 1e-8
    r = eng.submit(order_id=2, symbol=0, side=SIDE_SELL, order_type=OT_MARKET, qty=px("1.5"),
                   bid_px=bp, bid_qty=bq, ask_px=ap, ask_qty=aq)
    assert list(r.fills["commission_asset"]) == [FEE_ASSET_QUOTE, FEE_ASSET_QUOTE]
    assert list(r.fills["commission"]) == [px("0.099"), px("0.049")]
    assert r.commission == px("0.148")


def test_separate_fee_asset_charges_quote_terms_for_both_sides():
    eng = MatchingEngine(4, taker_fee=px("0.00075"), fee_mode=FEE_SEPARATE)
    bp, bq, ap, aq = book(BIDS, ASKS)
    r = eng.submit(order_id=1, symbol=0, side=SIDE_BUY, order_type=OT_MARKET, qty=px(1),
                   bid_px=bp, bid_qty=bq, ask_px=ap, ask_qty=aq)
    assert (r.fills[0]["commission"], r.fills[0]["commission_asset"]) == (px("0.075"), FEE_ASSET_OTHER)


def test_maker_fee_applies_to_resting_fills():
    eng = MatchingEngine(4, taker_fee=px("0.001"), maker_fee=px("0.0002"))
    bp, bq, ap, aq = book(BIDS, ASKS)
    eng.submit(order_id=1, symbol=0, side=SIDE_SELL, order_type=OT_LIMIT, price=px(103), qty=px(2),
               bid_px=bp, bid_qty=bq, ask_px=ap, ask_qty=aq)
    f = eng.on_trade(0, px(104), px(1), False)
    assert (f[0]["px"], f[0]["is_maker"], f[0]["commission"], f[0]["commission_asset"]) == \
        (px(103), 1, px("0.0206"), FEE_ASSET_QUOTE)
    assert eng.order(1)["commission"] == px("0.0206")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([SIDE_BUY, SIDE_SELL]), st.integers(0, 10**13), st.integers(0, 10**15),
       st.integers(0, S), st.sampled_from([FEE_NATIVE, FEE_SEPARATE]))
def test_commission_is_ceil_of_amount_times_rate(side, qty, quote, rate, mode):
    amount, asset = commission_of(side, qty, quote, rate, mode)
    base = qty if (mode == FEE_NATIVE and side == SIDE_BUY) else quote
    exact = Decimal(base) * Decimal(rate) / S
    assert amount == int(exact.to_integral_value(rounding=ROUND_CEILING))
    want = FEE_ASSET_OTHER if mode == FEE_SEPARATE else (FEE_ASSET_BASE if side == SIDE_BUY else FEE_ASSET_QUOTE)
    assert asset == want


# ---------------------------------------------------------------------------
# Resting orders: queue models, on_top, priority, cancel
# ---------------------------------------------------------------------------
def rest(eng, oid, side, price, qty, *, symbol=0, bids=BIDS, asks=()):
    bp, bq, ap, aq = book(bids, asks)
    r = eng.submit(order_id=oid, symbol=symbol, side=side, order_type=OT_LIMIT_MAKER, price=px(price), qty=px(qty),
                   bid_px=bp, bid_qty=bq, ask_px=ap, ask_qty=aq)
    assert r.outcome == OUT_RESTING
    return r


def fills_of(f):
    return [(int(x["order_id"]), int(x["px"]), int(x["qty"])) for x in f]


def test_trade_through_model_ignores_trades_at_our_price():
    eng = MatchingEngine(8)  # QUEUE_TRADE_THROUGH is the default
    rest(eng, 1, SIDE_BUY, 99, 1)
    assert len(eng.on_trade(0, px(99), px(100), True)) == 0
    assert eng.order(1)["filled"] == 0


def test_trade_through_model_fills_on_trades_through_our_price_up_to_trade_qty():
    eng = MatchingEngine(8)
    rest(eng, 1, SIDE_BUY, 99, 1)
    assert fills_of(eng.on_trade(0, px("98.5"), px("0.4"), True)) == [(1, px(99), px("0.4"))]  # at OUR price
    f = eng.on_trade(0, px(98), px(5), True)
    assert fills_of(f) == [(1, px(99), px("0.6"))] and f[0]["status"] == OS_FILLED
    assert eng.order(1) is None and eng.n_live == 0


def test_only_the_aggressors_opposite_side_can_fill():
    eng = MatchingEngine(8)
    rest(eng, 1, SIDE_BUY, 99, 1)
    assert len(eng.on_trade(0, px(98), px(5), False)) == 0  # an aggressive BUY at 98 cannot hit our bid
    rest(eng, 2, SIDE_SELL, 101, 1, asks=ASKS)
    assert len(eng.on_trade(0, px(102), px(5), True)) == 0  # an aggressive SELL cannot lift our ask
    assert fills_of(eng.on_trade(0, px(102), px(5), False)) == [(2, px(101), px(1))]


def test_other_symbols_do_not_fill():
    eng = MatchingEngine(8)
    rest(eng, 1, SIDE_BUY, 99, 1, symbol=2)
    assert len(eng.on_trade(1, px(90), px(5), True)) == 0
    assert len(eng.on_top(1, px(80), px(90))) == 0
    assert len(eng.on_trade(2, px(90), px(5), True)) == 1


def test_queue_position_consumes_queue_ahead_before_filling_us():
    eng = MatchingEngine(8, queue_model=QUEUE_POSITION)
    rest(eng, 1, SIDE_BUY, 99, 2)  # displayed 1 at 99 ahead of us
    assert eng.order(1)["queue_ahead"] == px(1)
    assert len(eng.on_trade(0, px(99), px("0.6"), True)) == 0
    assert eng.order(1)["queue_ahead"] == px("0.4")
    assert fills_of(eng.on_trade(0, px(99), px(1), True)) == [(1, px(99), px("0.6"))]
    assert eng.order(1)["queue_ahead"] == 0
    assert fills_of(eng.on_trade(0, px(99), px(3), True)) == [(1, px(99), px("1.4"))]


def test_queue_position_depth_decrease_advances_us_and_increase_does_not():
    eng = MatchingEngine(8, queue_model=QUEUE_POSITION)
    rest(eng, 1, SIDE_BUY, 98, 1)  # 2 ahead
    assert eng.on_depth(0, SIDE_BUY, px(98), px(5)) == 0
    assert eng.order(1)["queue_ahead"] == px(2)
    assert eng.on_depth(0, SIDE_BUY, px(98), px("0.5")) == 1  # cancels: at most 0.5 can be ahead now
    assert eng.order(1)["queue_ahead"] == px("0.5")
    assert eng.on_depth(0, SIDE_SELL, px(98), 0) == 0  # other side: no effect
    assert fills_of(eng.on_trade(0, px(98), px(1), True)) == [(1, px(98), px("0.5"))]


def test_queue_position_trade_through_fills_and_clears_queue():
    eng = MatchingEngine(8, queue_model=QUEUE_POSITION)
    rest(eng, 1, SIDE_BUY, 98, 1)
    assert fills_of(eng.on_trade(0, px(97), px("0.3"), True)) == [(1, px(98), px("0.3"))]
    assert eng.order(1)["queue_ahead"] == 0


def test_queue_position_two_of_ours_at_one_price_fifo_sweep():
    eng = MatchingEngine(8, queue_model=QUEUE_POSITION)
    rest(eng, 1, SIDE_BUY, 98, 1)  # queue: [public 2][A 1]
    rest(eng, 2, SIDE_BUY, 98, 1, bids=[("98", "3")])  # queue: [public 2][A 1][public 1][B 1]
    # 3.5 traded at 98: 2 public, A fills 1, 0.5 of the public between A and B
    f = eng.on_trade(0, px(98), px("3.5"), True)
    assert fills_of(f) == [(1, px(98), px(1))]
    assert eng.order(2)["queue_ahead"] == px("0.5")
    assert fills_of(eng.on_trade(0, px(98), px(1), True)) == [(2, px(98), px("0.5"))]


def test_price_time_priority_shares_one_trade_without_double_counting():
    eng = MatchingEngine(8)
    rest(eng, 1, SIDE_BUY, 97, 1)
    rest(eng, 2, SIDE_BUY, 98, 1)
    rest(eng, 3, SIDE_BUY, 97, 1)
    rest(eng, 4, SIDE_BUY, 99, 1)
    f = eng.on_trade(0, px(96), px("2.5"), True)
    assert fills_of(f) == [(4, px(99), px(1)), (2, px(98), px(1)), (1, px(97), px("0.5"))]
    assert int(f["qty"].sum()) == px("2.5")
    f = eng.on_trade(0, px(96), px(1), True)
    assert fills_of(f) == [(1, px(97), px("0.5")), (3, px(97), px("0.5"))]


def test_on_top_crossing_fills_whole_remainder_at_our_price():
    eng = MatchingEngine(8, maker_fee=px("0.001"))
    rest(eng, 1, SIDE_BUY, 99, 2)
    rest(eng, 2, SIDE_SELL, 101, 1, asks=ASKS)
    assert len(eng.on_top(0, px(99), px(100))) == 0
    f = eng.on_top(0, px(98), px(99))  # the ask came down to our bid
    assert fills_of(f) == [(1, px(99), px(2))] and f[0]["is_maker"] == 1 and f[0]["status"] == OS_FILLED
    assert len(eng.on_top(0, 0, 0)) == 0  # no sides: nothing crosses
    assert fills_of(eng.on_top(0, px("101.5"), px(102))) == [(2, px(101), px(1))]
    assert eng.n_live == 0


def test_on_top_clears_queue_ahead_when_our_price_is_the_best():
    eng = MatchingEngine(8, queue_model=QUEUE_POSITION)
    rest(eng, 1, SIDE_BUY, 98, 1)
    eng.on_top(0, px(99), px(100))
    assert eng.order(1)["queue_ahead"] == px(2)
    eng.on_top(0, px("97.5"), px(100))
    assert eng.order(1)["queue_ahead"] == 0


def test_cancel_stops_fills_and_frees_the_slot():
    eng = MatchingEngine(1)
    rest(eng, 1, SIDE_BUY, 99, 1)
    rec = eng.cancel(1)
    assert rec["status"] == OS_CANCELED and rec["live"] == 0
    assert eng.cancel(1) is None
    assert len(eng.on_trade(0, px(90), px(5), True)) == 0
    rest(eng, 2, SIDE_BUY, 99, 1)  # the one slot is reused
    assert eng.n_live == 1


def test_rest_order_kernel_reports_full_and_invalid():
    eng = MatchingEngine(1)
    st_ = eng.state
    assert rest_order(st_, 1, 0, SIDE_BUY, 0, S, 0, 0, 0, 0) == REST_INVALID
    assert rest_order(st_, 1, 0, SIDE_BUY, S, S, S, 0, 0, 0) == REST_INVALID  # nothing left to rest
    assert rest_order(st_, 1, 0, SIDE_BUY, S, S, 0, 0, 0, 0) == 0
    assert rest_order(st_, 2, 0, SIDE_BUY, S, S, 0, 0, 0, 0) == REST_TABLE_FULL


def test_on_trade_with_too_short_fills_out_drops_the_event_and_counts_it():
    eng = MatchingEngine(4)
    rest(eng, 1, SIDE_BUY, 99, 1)
    rest(eng, 2, SIDE_BUY, 98, 1)
    short = np.zeros(1, FILL)
    assert on_trade(eng.state, 0, px(90), px(5), True, short) == 0
    assert eng.header["out_full"] == 1
    assert eng.order(1)["filled"] == 0 and eng.order(2)["filled"] == 0


def test_zero_padded_depth_arrays_use_their_nonzero_levels():
    ev = np.zeros(1, BOOK_EVENT)[0]  # BK_DEPTH payload: 10 levels, unused ones 0
    ev["d_ask_px"][:2] = [px(100), px(101)]
    ev["d_ask_qty"][:2] = [px(1), px(1)]
    eng = MatchingEngine(4)
    r = eng.submit(order_id=1, symbol=0, side=SIDE_BUY, order_type=OT_MARKET, qty=px(3), bid_px=ev["d_bid_px"],
                   bid_qty=ev["d_bid_qty"], ask_px=ev["d_ask_px"], ask_qty=ev["d_ask_qty"])
    assert (r.filled_qty, r.outcome, r.status) == (px(2), OUT_EXPIRED_NO_LIQUIDITY, OS_EXPIRED)


def test_partially_filled_taker_then_maker_fills_accumulate():
    eng = MatchingEngine(4)
    bp, bq, ap, aq = book(BIDS, ASKS)
    eng.submit(order_id=5, symbol=0, side=SIDE_BUY, order_type=OT_LIMIT, price=px(100), qty=px(3),
               bid_px=bp, bid_qty=bq, ask_px=ap, ask_qty=aq)
    f = eng.on_trade(0, px("99.5"), px(10), True)
    assert (f[0]["qty"], f[0]["cum_qty"], f[0]["cum_quote"], f[0]["status"]) == (px(2), px(3), px(300), OS_FILLED)


# ---------------------------------------------------------------------------
# Property tests: taker matching against a Decimal reference
# ---------------------------------------------------------------------------
def D(v) -> Decimal:
    return Decimal(int(v)) / S


def ref_taker(levels, side, otype, tif, limit, qty, quote_qty, lot):
    """The obviously-correct matcher, in Decimal. levels: [(px, qty)] of the opposite side, best first.

    Returns (fills [(Decimal px, Decimal qty)], outcome).
    """
    lv = [(D(p), D(q)) for p, q in levels if q > 0]
    lim, want, budget, step = D(limit), D(qty), D(quote_qty), D(lot)

    def crosses(p):
        return otype == OT_MARKET or (p <= lim if side == SIDE_BUY else p >= lim)

    def q8(x):  # truncate to 1e-8
        return x.quantize(Decimal("1e-8"), rounding=ROUND_FLOOR)

    if otype == OT_LIMIT_MAKER:
        return [], (OUT_REJECTED_WOULD_TAKE if lv and crosses(lv[0][0]) else OUT_RESTING)
    if otype == OT_LIMIT and tif == TIF_FOK and sum(q for p, q in lv if crosses(p)) < want:
        return [], OUT_EXPIRED_FOK
    fills = []
    budget_stop = False
    for p, q in lv:
        if not crosses(p):
            break
        if quote_qty:
            with localcontext() as ctx:
                ctx.prec = 100  # exact enough: the floor of a ratio of 20-digit numbers is right at 100 digits
                afford = (budget / p / step).to_integral_value(rounding=ROUND_FLOOR) * step
            take = min(q, afford)
            if take <= 0:
                budget_stop = True
                break
            fills.append((p, take))
            budget -= q8(p * take)
            if take < q:
                budget_stop = True
                break
        else:
            take = min(q, want - sum(f[1] for f in fills))
            fills.append((p, take))
            if sum(f[1] for f in fills) == want:
                break
    filled = sum(f[1] for f in fills)
    if quote_qty:
        dust = bool(fills) and q8(fills[-1][0] * step) > budget
        return fills, (OUT_FILLED if fills and (budget_stop or dust) else OUT_EXPIRED_NO_LIQUIDITY)
    if filled == want:
        return fills, OUT_FILLED
    if otype == OT_MARKET:
        return fills, OUT_EXPIRED_NO_LIQUIDITY
    return fills, {TIF_GTC: OUT_RESTING, TIF_IOC: OUT_EXPIRED_IOC}[tif]


levels_st = st.lists(st.tuples(st.integers(1, 4), st.integers(0, 500)), min_size=0, max_size=12)


@st.composite
def taker_case(draw):
    """A random book on a tick/step grid and an order sized and priced near it."""
    tick = draw(st.sampled_from([1, 100, 10**6, 10**8]))
    step = draw(st.sampled_from([1, 10**3, 10**5, 10**8]))
    mid = draw(st.integers(10**4, 10**7)) * tick
    asks, p = [], mid
    for g, q in draw(levels_st):
        p += g * tick
        asks.append((p, q * step))
    bids, p = [], mid
    for g, q in draw(levels_st):
        p -= g * tick
        bids.append((p, q * step))
    side = draw(st.sampled_from([SIDE_BUY, SIDE_SELL]))
    otype = draw(st.sampled_from([OT_MARKET, OT_MARKET, OT_LIMIT, OT_LIMIT, OT_LIMIT, OT_LIMIT_MAKER]))
    tif = draw(st.sampled_from([TIF_GTC, TIF_IOC, TIF_FOK]))
    opp = asks if side == SIDE_BUY else bids
    if opp and draw(st.booleans()):  # at a level's price, or a tick either side of it
        limit = draw(st.sampled_from(opp))[0] + draw(st.integers(-1, 1)) * tick
    else:
        limit = mid + draw(st.integers(-20, 20)) * tick
    total = sum(q for _, q in opp)
    qty = max(step, total * draw(st.integers(1, 1500)) // 1000 // step * step)
    quote_qty = 0
    if otype == OT_MARKET and draw(st.booleans()):
        qty = 0
        value = sum(p * q // S for p, q in opp) or mid
        quote_qty = max(1, value * draw(st.integers(1, 1500)) // 1000)
    return bids, asks, side, otype, tif, max(limit, tick), qty, quote_qty, step


def _arrays(levels):
    return np.array([p for p, _ in levels], I64), np.array([q for _, q in levels], I64)


@settings(max_examples=400, deadline=None)
@given(taker_case(), st.booleans())
def test_taker_matches_decimal_reference_and_conserves(case, deplete):
    bids, asks, side, otype, tif, limit, qty, quote_qty, lot = case
    bp, bq = _arrays(bids)
    ap, aq = _arrays(asks)
    opp = asks if side == SIDE_BUY else bids
    opp_qty_before = (aq if side == SIDE_BUY else bq).copy()
    fills, filled, quote, out = taker((bp, bq, ap, aq), side, otype, tif=tif, limit=limit, qty=qty,
                                      quote_qty=quote_qty, lot_step=lot, deplete=deplete)
    ref_fills, ref_outcome = ref_taker(opp, side, otype, tif, limit, qty, quote_qty, lot)
    assert [(D(p), D(q)) for p, q in fills] == ref_fills
    assert out == ref_outcome
    if out == OUT_EXPIRED_FOK:
        assert not fills
    # conservation
    assert filled == sum(q for _, q in fills)
    assert quote == sum(p * q // S for p, q in fills)
    if quote_qty == 0:
        assert filled <= qty
    else:
        assert quote <= quote_qty
        assert all(q % lot == 0 for _, q in fills)
    for p, _ in fills:
        if otype == OT_LIMIT:
            assert (p <= limit) if side == SIDE_BUY else (p >= limit)
    exact = sum(D(p) * D(q) for p, q in fills)
    assert 0 <= exact * S - quote < max(len(fills), 1)  # truncation only, < 1e-8 per fill
    after = aq if side == SIDE_BUY else bq
    depleted = int(opp_qty_before.sum() - after.sum())
    assert depleted == (filled if deplete else 0)
    assert all(after >= 0)

    # the engine's submit: the same fills, each with its taker commission by the rule
    rate = px("0.00075")
    eng = MatchingEngine(4, taker_fee=rate)
    bp, bq = _arrays(bids)
    ap, aq = _arrays(asks)
    r = eng.submit(order_id=1, symbol=0, side=side, order_type=otype, tif=tif, price=limit, qty=qty,
                   quote_qty=quote_qty, lot_step=lot, bid_px=bp, bid_qty=bq, ask_px=ap, ask_qty=aq,
                   n_bid=len(bp), n_ask=len(ap))
    assert [(int(f["px"]), int(f["qty"])) for f in r.fills] == fills and r.outcome == out
    for f in r.fills:
        base = f["qty"] if side == SIDE_BUY else f["quote"]
        assert f["commission"] == -(-int(base) * rate // S)
        assert f["quote"] == int(f["px"]) * int(f["qty"]) // S
    assert r.filled_quote == quote and (r.slot >= 0) == (out == OUT_RESTING)


# ---------------------------------------------------------------------------
# Property tests: resting orders against a dict reference
# ---------------------------------------------------------------------------
class RefMaker:
    """Dict-based reference of the maker rules in the module docstring."""

    def __init__(self, model, rate):
        self.model, self.rate, self.orders, self.seq = model, rate, {}, 0

    def rest(self, oid, side, price, qty, ahead):
        self.orders[oid] = dict(side=side, price=price, qty=qty, filled=0, qa=ahead, seq=self.seq)
        self.seq += 1

    def _fill(self, oid, take, out):
        o = self.orders[oid]
        o["filled"] += take
        quote = o["price"] * take // S
        base = take if o["side"] == SIDE_BUY else quote
        comm = -(-base * self.rate // S)
        out.append((oid, o["price"], take, comm))
        if o["filled"] == o["qty"]:
            del self.orders[oid]

    def _prio(self, side):
        def key(item):
            oid, o = item
            return (-o["price"] if side == SIDE_BUY else o["price"], o["seq"])
        return key

    def trade(self, tpx, tqty, buyer_is_maker):
        side = SIDE_BUY if buyer_is_maker else SIDE_SELL
        out = []
        elig = []
        for oid, o in self.orders.items():
            if o["side"] != side:
                continue
            through = o["price"] > tpx if side == SIDE_BUY else o["price"] < tpx
            if through or (self.model == QUEUE_POSITION and o["price"] == tpx):
                elig.append((oid, o))
        rem, public = tqty, 0
        for oid, o in sorted(elig, key=self._prio(side)):
            if o["price"] != tpx:
                o["qa"] = 0
            else:
                consume = min(rem, max(o["qa"] - public, 0))
                public += consume
                rem -= consume
                o["qa"] = max(o["qa"] - public, 0)
            take = min(rem, o["qty"] - o["filled"])
            if take > 0:
                rem -= take
                self._fill(oid, take, out)
        return out

    def depth(self, side, price, qty):
        for o in self.orders.values():
            if o["side"] == side and o["price"] == price:
                o["qa"] = min(o["qa"], qty)

    def top(self, bid, ask):
        out = []
        for side in (SIDE_BUY, SIDE_SELL):
            crossed = []
            for oid, o in self.orders.items():
                if o["side"] != side:
                    continue
                p = o["price"]
                if side == SIDE_BUY:
                    if bid < p:
                        o["qa"] = 0
                    if 0 < ask <= p:
                        crossed.append((oid, o))
                else:
                    if ask <= 0 or ask > p:
                        o["qa"] = 0
                    if bid > 0 and bid >= p:
                        crossed.append((oid, o))
            for oid, o in sorted(crossed, key=self._prio(side)):
                self._fill(oid, o["qty"] - o["filled"], out)
        return out


_rest_op = st.tuples(st.just("rest"), st.sampled_from([SIDE_BUY, SIDE_SELL]), st.integers(95, 105),
                     st.integers(1, 20), st.integers(0, 20))
_trade_op = st.tuples(st.just("trade"), st.integers(93, 107), st.integers(1, 40), st.booleans())
op_st = st.one_of(
    _rest_op, _rest_op, _trade_op, _trade_op, _trade_op,
    st.tuples(st.just("depth"), st.sampled_from([SIDE_BUY, SIDE_SELL]), st.integers(95, 105), st.integers(0, 20)),
    # a public top of book: usually a sane spread, sometimes a side missing (0)
    st.builds(lambda b, spread, miss: ("top", 0 if miss == 1 else b, 0 if miss == 2 else b + spread),
              st.integers(92, 108), st.integers(1, 6), st.integers(0, 6)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([QUEUE_TRADE_THROUGH, QUEUE_POSITION]), st.lists(op_st, min_size=20, max_size=80))
def test_maker_fills_match_dict_reference_and_conserve(model, ops):
    rate = px("0.0002")
    eng = MatchingEngine(32, queue_model=model, maker_fee=rate)
    ref = RefMaker(model, rate)
    tick, lot = px("0.01"), px("0.001")
    oid = 0
    for op in ops:
        if op[0] == "rest":
            _, side, p, q, shown = op
            price, qty, ahead = p * tick * 100, q * lot, shown * lot
            same = (np.array([price], I64), np.array([ahead], I64))
            empty = (np.zeros(0, I64), np.zeros(0, I64))
            b, a = (same, empty) if side == SIDE_BUY else (empty, same)
            r = eng.submit(order_id=oid, symbol=0, side=side, order_type=OT_LIMIT_MAKER, price=price, qty=qty,
                           bid_px=b[0], bid_qty=b[1], ask_px=a[0], ask_qty=a[1], n_bid=len(b[0]), n_ask=len(a[0]))
            assert r.outcome == OUT_RESTING
            ref.rest(oid, side, price, qty, ahead)
            oid += 1
            got, want = [], []
        elif op[0] == "trade":
            _, p, q, bim = op
            f = eng.on_trade(0, p * tick * 100, q * lot, bim)
            got = [(int(x["order_id"]), int(x["px"]), int(x["qty"]), int(x["commission"])) for x in f]
            want = ref.trade(p * tick * 100, q * lot, bim)
            assert sum(x[2] for x in got) <= q * lot  # one trade never fills more than it printed
            for x in f:  # through-trades only in trade-through mode; never at a worse price
                if model == QUEUE_TRADE_THROUGH:
                    assert (x["px"] > p * tick * 100) if x["side"] == SIDE_BUY else (x["px"] < p * tick * 100)
        elif op[0] == "depth":
            _, side, p, q = op
            eng.on_depth(0, side, p * tick * 100, q * lot)
            ref.depth(side, p * tick * 100, q * lot)
            got, want = [], []
        elif op[0] == "top":
            _, b, a = op
            f = eng.on_top(0, b * tick * 100, a * tick * 100)
            got = [(int(x["order_id"]), int(x["px"]), int(x["qty"]), int(x["commission"])) for x in f]
            want = ref.top(b * tick * 100, a * tick * 100)
        else:
            rec = eng.cancel(op[1])
            assert (rec is not None) == (op[1] in ref.orders)
            ref.orders.pop(op[1], None)
            got, want = [], []
        assert got == want
        live = eng.open_orders()
        assert {int(o["order_id"]): (int(o["filled"]), int(o["queue_ahead"])) for o in live} == \
            {k: (v["filled"], v["qa"]) for k, v in ref.orders.items()}
        assert all(0 <= o["filled"] < o["qty"] for o in live)
        # prices are whole units here, so every fill's quote is exact and the sum is too
        assert all(o["quote_filled"] == int(o["price"]) * int(o["filled"]) // S for o in live)
