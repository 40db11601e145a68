"""Paper fills (core/paper.py): reports checked against hand-computed references, and a property test against a
plain-Python taker reference.

Book used by the hand-computed cases (BTCUSDT-like: tick 0.01, step 0.001, min notional 5)::

    bids  99.99 x 0.5   99.98 x 1.2   99.90 x 3
    asks 100.01 x 0.3  100.02 x 1.0  100.05 x 2

Taker fee 0.1 %, maker fee 0.075 %. Latency 100 us unless a test says otherwise.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from core.filters import F_LOT_SIZE, F_PRICE_FILTER, SymbolInfo, VenueInfo, build_filter_table
from core.matching import QUEUE_POSITION
from core.paper import (
    ALL_SYMBOLS,
    PaperExchange,
    avg_slippage_bps,
    paper_on_book_at,
    paper_on_order_at,
    paper_on_timer,
    paper_room,
    paper_state_from_config,
    slippage_bps,
)
from core.records import (
    BOOK_EVENT,
    EX_CANCELED,
    EX_EXPIRED,
    EX_NEW,
    EX_REJECTED,
    EX_TRADE,
    EXEC_REPORT,
    ORD_DENIED,
    ORDER_REQUEST,
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
US = 1_000  # ns
T0 = 1_000_000_000  # CLOCK_MONOTONIC ns at the start of every test
LAT = 100 * US
TAKER = 100_000  # 0.1 %
MAKER = 75_000  # 0.075 %
BASE, QUOTE = 1, 0  # commission_asset codes


def fx(x) -> int:
    """Decimal text to fixed point."""
    return int(Decimal(str(x)) * S)


def symbol_info(name: str = "BTCUSDT", *, max_num_orders: int = 0) -> SymbolInfo:
    return SymbolInfo(symbol=name, status="TRADING", base_asset=name[:-4], base_asset_precision=8, quote_asset="USDT",
                      quote_asset_precision=8, order_types=("LIMIT", "LIMIT_MAKER", "MARKET"),
                      filter_types=("PRICE_FILTER", "LOT_SIZE", "NOTIONAL", "MAX_NUM_ORDERS"),
                      tick_size=fx("0.01"), min_price=fx("0.01"), max_price=fx("1000000"), step_size=fx("0.001"),
                      min_qty=fx("0.001"), max_qty=fx("1000"), notional_min=fx("5"),
                      notional_apply_min_to_market=True, max_num_orders=max_num_orders)


def filters(n: int = 1, **kw) -> np.ndarray:
    names = ["BTCUSDT", "ETHUSDT", "SOLUSDT"][:n]
    return build_filter_table(VenueInfo(symbols={s: symbol_info(s, **kw) for s in names}), names)


BIDS = [(fx("99.99"), fx("0.5")), (fx("99.98"), fx("1.2")), (fx("99.90"), fx("3"))]
ASKS = [(fx("100.01"), fx("0.3")), (fx("100.02"), fx("1.0")), (fx("100.05"), fx("2"))]


def exchange(n_symbols: int = 1, *, filters_table=None, latency_us: int = 100, **kw) -> PaperExchange:
    """A paper venue with the test book shown on every symbol (exch_ms 1_700_000_000_000)."""
    table = filters(n_symbols) if filters_table is None else filters_table
    ex = PaperExchange(n_symbols, table, latency_us=latency_us, maker_fee=MAKER, taker_fee=TAKER, **kw)
    for sym in range(n_symbols):
        assert len(ex.depth(sym, BIDS, ASKS, now_ns=T0, exch_ms=1_700_000_000_000)) == 0
    return ex


def place(ex: PaperExchange, t: int, **order) -> np.ndarray:
    """Send an order at t, activate it after the latency; all reports of both calls."""
    order.setdefault("symbol", 0)
    first = ex.new_order(now_ns=t, **order)
    return np.concatenate([first, ex.timer(t + LAT)])


def rows(reports: np.ndarray) -> list[tuple]:
    """(exec_type, status, last_px, last_qty, cum_qty, cum_quote, commission, commission_asset, is_maker)."""
    return [(int(r["exec_type"]), int(r["status"]), int(r["last_px"]), int(r["last_qty"]), int(r["cum_qty"]),
             int(r["cum_quote"]), int(r["commission"]), int(r["commission_asset"]), int(r["is_maker"]))
            for r in reports]


def check_consistency(reports: np.ndarray) -> None:
    """Per client order id: cum_qty is the running sum of last_qty, cum_quote that of floor(px*qty/1e8);
    statuses go NEW -> PARTIALLY_FILLED* -> one final; trade ids per symbol are unique and increasing."""
    by_cid: dict[int, list] = {}
    for r in reports:
        by_cid.setdefault(int(r["client_order_id"]), []).append(r)
    for cid, rs in by_cid.items():
        cum_q = cum_quote = 0
        final = False
        for i, r in enumerate(rs):
            et, status = int(r["exec_type"]), int(r["status"])
            assert not final, f"cid {cid}: a report after the final one"
            if et == EX_NEW:
                assert i == 0 and status == OS_NEW and r["order_id"] > 0 and r["cum_qty"] == 0
            elif et == EX_TRADE:
                cum_q += int(r["last_qty"])
                cum_quote += int(r["last_px"]) * int(r["last_qty"]) // S
                assert r["cum_qty"] == cum_q and r["cum_quote"] == cum_quote
                assert status in (OS_PARTIALLY_FILLED, OS_FILLED) and r["trade_id"] > 0
                final = status == OS_FILLED
            elif et == EX_REJECTED:
                assert status == OS_REJECTED and r["reject_code"] < 0
                final = r["order_id"] == -1
            else:
                assert (et, status) in ((EX_CANCELED, OS_CANCELED), (EX_EXPIRED, OS_EXPIRED))
                assert r["cum_qty"] == cum_q and r["cum_quote"] == cum_quote
                final = True
    for sym in {int(r["symbol"]) for r in reports}:
        tids = [int(r["trade_id"]) for r in reports if r["exec_type"] == EX_TRADE and r["symbol"] == sym]
        assert tids == sorted(set(tids))


# ---------------------------------------------------------------------------
# Taker orders
# ---------------------------------------------------------------------------
def test_market_buy_walks_two_levels_with_taker_fee_in_base():
    ex = exchange()
    r = place(ex, T0, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.5"))
    # 0.3 @ 100.01 = 30.003 USDT, fee 0.3 * 0.001 = 0.0003 BTC; 0.2 @ 100.02 = 20.004 USDT, fee 0.0002 BTC
    assert rows(r) == [
        (EX_NEW, OS_NEW, 0, 0, 0, 0, 0, 0, 0),
        (EX_TRADE, OS_PARTIALLY_FILLED, fx("100.01"), fx("0.3"), fx("0.3"), fx("30.003"), fx("0.0003"), BASE, 0),
        (EX_TRADE, OS_FILLED, fx("100.02"), fx("0.2"), fx("0.5"), fx("50.007"), fx("0.0002"), BASE, 0),
    ]
    assert list(r["order_id"]) == [1, 1, 1] and list(r["trade_id"]) == [-1, 1, 2]
    assert ex.n_open == 0 and ex.n_pending == 0
    check_consistency(r)


def test_market_sell_walks_two_levels_with_taker_fee_in_quote():
    ex = exchange()
    r = place(ex, T0, side=SIDE_SELL, order_type=OT_MARKET, qty=fx("0.7"))
    # 0.5 @ 99.99 = 49.995, fee 0.049995 USDT; 0.2 @ 99.98 = 19.996, fee 0.019996 USDT
    assert rows(r)[1:] == [
        (EX_TRADE, OS_PARTIALLY_FILLED, fx("99.99"), fx("0.5"), fx("0.5"), fx("49.995"), fx("0.049995"), QUOTE, 0),
        (EX_TRADE, OS_FILLED, fx("99.98"), fx("0.2"), fx("0.7"), fx("69.991"), fx("0.019996"), QUOTE, 0),
    ]
    check_consistency(r)


def test_our_fills_do_not_consume_the_displayed_book():
    ex = exchange()
    a = place(ex, T0, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.3"))
    b = place(ex, T0 + 1000 * US, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.3"))
    assert rows(a)[1][2] == rows(b)[1][2] == fx("100.01")
    assert list(b["order_id"]) == [2, 2] and b["trade_id"][1] == 2


def test_market_beyond_the_shown_depth_fills_what_is_shown_then_expires():
    ex = exchange()
    r = place(ex, T0, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("5"))
    assert [x[:2] for x in rows(r)] == [(EX_NEW, OS_NEW), (EX_TRADE, OS_PARTIALLY_FILLED),
                                        (EX_TRADE, OS_PARTIALLY_FILLED), (EX_TRADE, OS_PARTIALLY_FILLED),
                                        (EX_EXPIRED, OS_EXPIRED)]
    assert r[-1]["cum_qty"] == fx("3.3")
    check_consistency(r)


def test_limit_ioc_fills_the_crossing_levels_then_expires():
    ex = exchange()
    r = place(ex, T0, side=SIDE_BUY, order_type=OT_LIMIT, tif=TIF_IOC, price=fx("100.02"), qty=fx("2"))
    # 0.3 @ 100.01 (30.003) + 1.0 @ 100.02 (100.02) = 130.023; the 100.05 level is beyond the limit
    assert rows(r) == [
        (EX_NEW, OS_NEW, 0, 0, 0, 0, 0, 0, 0),
        (EX_TRADE, OS_PARTIALLY_FILLED, fx("100.01"), fx("0.3"), fx("0.3"), fx("30.003"), fx("0.0003"), BASE, 0),
        (EX_TRADE, OS_PARTIALLY_FILLED, fx("100.02"), fx("1.0"), fx("1.3"), fx("130.023"), fx("0.001"), BASE, 0),
        (EX_EXPIRED, OS_EXPIRED, 0, 0, fx("1.3"), fx("130.023"), 0, 0, 0),
    ]
    assert ex.n_open == 0
    check_consistency(r)


def test_fok_that_the_crossing_levels_cannot_fill_expires_without_trades():
    ex = exchange()
    r = place(ex, T0, side=SIDE_BUY, order_type=OT_LIMIT, tif=TIF_FOK, price=fx("100.02"), qty=fx("2"))
    assert rows(r) == [(EX_NEW, OS_NEW, 0, 0, 0, 0, 0, 0, 0), (EX_EXPIRED, OS_EXPIRED, 0, 0, 0, 0, 0, 0, 0)]
    r = place(ex, T0 + 1000 * US, side=SIDE_BUY, order_type=OT_LIMIT, tif=TIF_FOK, price=fx("100.02"),
              qty=fx("1.3"))
    assert [x[:2] for x in rows(r)] == [(EX_NEW, OS_NEW), (EX_TRADE, OS_PARTIALLY_FILLED), (EX_TRADE, OS_FILLED)]


def test_limit_maker_that_would_take_is_rejected_2010_and_one_that_does_not_rests():
    ex = exchange()
    r = place(ex, T0, side=SIDE_BUY, order_type=OT_LIMIT_MAKER, price=fx("100.01"), qty=fx("0.1"))
    assert rows(r) == [(EX_REJECTED, OS_REJECTED, 0, 0, 0, 0, 0, 0, 0)]
    assert r[0]["reject_code"] == -2010 and r[0]["order_id"] == -1
    r = place(ex, T0 + 1000 * US, side=SIDE_BUY, order_type=OT_LIMIT_MAKER, price=fx("100.00"), qty=fx("0.1"))
    assert rows(r) == [(EX_NEW, OS_NEW, 0, 0, 0, 0, 0, 0, 0)]
    assert r[0]["order_id"] == 1  # a rejected order never got a venue id
    assert ex.n_open == 1 and ex.counters["rejected_would_take"] == 1


@pytest.mark.parametrize("price,qty,reason", [
    ("100.00", "0.0005", F_LOT_SIZE),  # below minQty, off the step
    ("100.005", "0.1", F_PRICE_FILTER),  # off the tick
    ("100.00", "0.01", None),  # notional 1.00 < 5: NOTIONAL
])
def test_filter_failure_is_rejected_1013_without_an_order_id(price, qty, reason):
    ex = exchange()
    r = place(ex, T0, side=SIDE_BUY, order_type=OT_LIMIT, tif=TIF_GTC, price=fx(price), qty=fx(qty))
    assert rows(r) == [(EX_REJECTED, OS_REJECTED, 0, 0, 0, 0, 0, 0, 0)]
    assert r[0]["reject_code"] == -1013 and r[0]["order_id"] == -1
    assert ex.counters["rejected_filter"] == 1 and ex.n_open == 0
    if reason is not None:
        assert ex.state.reasons[reason] == 1


def test_max_num_orders_rejects_the_next_order_with_1013():
    ex = exchange(filters_table=filters(max_num_orders=2))
    for i in range(2):
        assert rows(place(ex, T0 + i * 1000 * US, side=SIDE_BUY, order_type=OT_LIMIT, price=fx("99.00"),
                          qty=fx("0.1")))[0][0] == EX_NEW
    r = place(ex, T0 + 5000 * US, side=SIDE_BUY, order_type=OT_LIMIT, price=fx("99.00"), qty=fx("0.1"))
    assert r[0]["exec_type"] == EX_REJECTED and r[0]["reject_code"] == -1013


# ---------------------------------------------------------------------------
# Latency
# ---------------------------------------------------------------------------
def test_an_order_is_not_active_before_its_latency_and_fills_at_the_book_of_activation():
    ex = exchange()
    assert len(ex.new_order(now_ns=T0, symbol=0, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.1"))) == 0
    # the market moves while the order is in flight: the asks at 100.01/100.02 are gone, best ask 100.03
    assert len(ex.top(0, fx("99.99"), fx("0.5"), fx("100.03"), fx("0.4"), now_ns=T0 + 50 * US)) == 0
    assert len(ex.timer(T0 + LAT - 1)) == 0 and ex.n_pending == 1
    r = ex.timer(T0 + LAT)
    assert rows(r)[1] == (EX_TRADE, OS_FILLED, fx("100.03"), fx("0.1"), fx("0.1"), fx("10.003"), fx("0.0001"),
                          BASE, 0)
    assert ex.view(0)[1] == [(fx("100.03"), fx("0.4")), (fx("100.05"), fx("2"))]


def test_an_order_due_before_a_book_event_sees_the_book_before_it():
    ex = exchange()
    ex.new_order(now_ns=T0, symbol=0, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.1"))
    # the event was received after the order became due, but is processed later still: the order goes first
    r = ex.top(0, fx("99.99"), fx("0.5"), fx("100.04"), fx("1"), now_ns=T0 + 2 * LAT, recv_ns=T0 + LAT + 1)
    assert rows(r)[1][2] == fx("100.01")
    # an order due after the event's receive time sees the new book
    ex.new_order(now_ns=T0 + 3 * LAT, symbol=0, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.1"))
    r = ex.top(0, fx("99.99"), fx("0.5"), fx("100.04"), fx("2"), now_ns=T0 + 5 * LAT, recv_ns=T0 + 3 * LAT + 1)
    assert rows(r)[1][2] == fx("100.04")


def test_jitter_is_deterministic_per_seed_and_never_reorders_requests():
    def dues(seed):
        ex = exchange(jitter_us=1000, seed=seed)
        for i in range(50):
            ex.new_order(now_ns=T0 + i, symbol=0, side=SIDE_BUY, order_type=OT_LIMIT, price=fx("99.00"),
                         qty=fx("0.1"))
        return [int(x) for x in ex.state.orders["due_ns"][:50]]  # slots are taken in order 0, 1, ...

    a, b, c = dues(7), dues(7), dues(8)
    assert a == b and a != c
    assert a == sorted(a) and all(T0 + LAT <= d <= T0 + 50 + LAT + 1000 * US for d in a)
    # a cancel sent right after its order is never activated before it
    for seed in range(1, 30):
        ex = exchange(jitter_us=1000, seed=seed)
        ex.new_order(now_ns=T0, symbol=0, side=SIDE_BUY, order_type=OT_LIMIT, price=fx("99.00"), qty=fx("0.1"),
                     client_order_id=77)
        ex.cancel(now_ns=T0 + 1, symbol=0, orig_client_order_id=77)
        r = ex.timer(T0 + 10 * LAT + 2000 * US)
        assert [int(x) for x in r["exec_type"]] == [EX_NEW, EX_CANCELED]


# ---------------------------------------------------------------------------
# Resting orders
# ---------------------------------------------------------------------------
def test_gtc_rests_then_fills_by_trade_through_at_its_own_price_with_maker_fee():
    ex = exchange()
    r = place(ex, T0, side=SIDE_BUY, order_type=OT_LIMIT, price=fx("100.00"), qty=fx("0.4"), client_order_id=5)
    assert rows(r) == [(EX_NEW, OS_NEW, 0, 0, 0, 0, 0, 0, 0)]
    t = T0 + 1000 * US
    # a sell aggressor prints through our price: 0.25 of it fills us at 100.00 (fee 0.25 * 0.00075 = 0.0001875)
    f1 = ex.trade(0, fx("99.99"), fx("0.25"), buyer_is_maker=True, now_ns=t, exch_ms=1_700_000_000_123)
    assert rows(f1) == [(EX_TRADE, OS_PARTIALLY_FILLED, fx("100.00"), fx("0.25"), fx("0.25"), fx("25"),
                         fx("0.0001875"), BASE, 1)]
    assert f1[0]["exch_ms"] == 1_700_000_000_123 and f1[0]["client_order_id"] == 5
    # a print at exactly our price never fills it (trade-through model); a buy aggressor never fills a buy
    assert len(ex.trade(0, fx("100.00"), fx("5"), buyer_is_maker=True, now_ns=t + 1)) == 0
    assert len(ex.trade(0, fx("99.00"), fx("5"), buyer_is_maker=False, now_ns=t + 2)) == 0
    f2 = ex.trade(0, fx("99.98"), fx("1"), buyer_is_maker=True, now_ns=t + 3)
    assert rows(f2) == [(EX_TRADE, OS_FILLED, fx("100.00"), fx("0.15"), fx("0.4"), fx("40"), fx("0.0001125"), BASE, 1)]
    assert ex.n_open == 0
    check_consistency(np.concatenate([r, f1, f2]))


def test_maker_sell_commission_in_quote_is_rounded_up():
    ex = exchange()
    r = place(ex, T0, side=SIDE_SELL, order_type=OT_LIMIT, price=fx("100.03"), qty=fx("0.05"))
    f = ex.trade(0, fx("100.04"), fx("1"), buyer_is_maker=False, now_ns=T0 + 1000 * US)
    # quote 0.05 * 100.03 = 5.0015; fee 5.0015 * 0.00075 = 0.003751125 -> 0.00375113 (up to 1e-8)
    exact = Decimal("5.0015") * Decimal("0.00075")
    assert int((exact * S).to_integral_value(ROUND_CEILING)) == fx("0.00375113")
    assert rows(f) == [(EX_TRADE, OS_FILLED, fx("100.03"), fx("0.05"), fx("0.05"), fx("5.0015"), fx("0.00375113"),
                        QUOTE, 1)]
    check_consistency(np.concatenate([r, f]))


def test_a_top_through_a_resting_price_fills_the_remainder_as_maker():
    ex = exchange()
    place(ex, T0, side=SIDE_SELL, order_type=OT_LIMIT, price=fx("100.03"), qty=fx("0.2"))
    assert len(ex.top(0, fx("100.02"), fx("1"), fx("100.05"), fx("1"), now_ns=T0 + 1000 * US)) == 0
    f = ex.top(0, fx("100.03"), fx("1"), fx("100.05"), fx("1"), now_ns=T0 + 2000 * US)
    assert rows(f) == [(EX_TRADE, OS_FILLED, fx("100.03"), fx("0.2"), fx("0.2"), fx("20.006"), fx("0.0150045"),
                        QUOTE, 1)]


def test_queue_position_model_fills_after_the_displayed_qty_ahead():
    ex = exchange(queue_model=QUEUE_POSITION)
    place(ex, T0, side=SIDE_SELL, order_type=OT_LIMIT, price=fx("100.01"), qty=fx("0.15"))  # 0.3 shown ahead
    t = T0 + 1000 * US
    assert len(ex.trade(0, fx("100.01"), fx("0.2"), buyer_is_maker=False, now_ns=t)) == 0  # 0.1 left ahead
    f = ex.trade(0, fx("100.01"), fx("0.3"), buyer_is_maker=False, now_ns=t + 1)  # 0.1 ahead, then 0.15 ours
    assert rows(f)[0][:4] == (EX_TRADE, OS_FILLED, fx("100.01"), fx("0.15"))
    # the level now shows less than the order thinks is ahead: a depth update moves it up (min rule)
    place(ex, t + 10, side=SIDE_SELL, order_type=OT_LIMIT, price=fx("100.02"), qty=fx("0.5"))  # 1.0 shown ahead
    ex.depth(0, BIDS, [(fx("100.01"), fx("0.3")), (fx("100.02"), fx("0.1"))], now_ns=t + 2 * LAT)
    f = ex.trade(0, fx("100.02"), fx("0.3"), buyer_is_maker=False, now_ns=t + 3 * LAT)
    assert rows(f)[0][2:4] == (fx("100.02"), fx("0.2"))


def test_cancel_of_a_resting_order_and_of_an_unknown_one():
    ex = exchange()
    r = place(ex, T0, side=SIDE_BUY, order_type=OT_LIMIT, price=fx("99.00"), qty=fx("0.2"), client_order_id=11)
    f = ex.trade(0, fx("98.00"), fx("0.05"), buyer_is_maker=True, now_ns=T0 + 1000 * US)
    assert len(ex.cancel(now_ns=T0 + 2000 * US, symbol=0, orig_client_order_id=11, client_order_id=12,
                         recv_ns=T0 + 1999 * US)) == 0
    assert ex.n_open == 1  # the cancel is in flight
    c = ex.timer(T0 + 2000 * US + LAT)
    assert rows(c) == [(EX_CANCELED, OS_CANCELED, 0, 0, fx("0.05"), fx("4.95"), 0, 0, 0)]
    assert c[0]["client_order_id"] == 11 and c[0]["order_id"] == r[0]["order_id"]
    assert c[0]["recv_ns"] == T0 + 1999 * US and c[0]["in_pub_ns"] == T0 + 2000 * US  # the cancel's trace
    assert ex.n_open == 0
    check_consistency(np.concatenate([r, f, c]))
    u = ex.cancel(now_ns=T0 + 3000 * US, symbol=0, orig_client_order_id=11, client_order_id=13)
    u = np.concatenate([u, ex.timer(T0 + 3000 * US + LAT)])
    assert rows(u) == [(EX_REJECTED, OS_REJECTED, 0, 0, 0, 0, 0, 0, 0)]
    assert u[0]["reject_code"] == -2011 and u[0]["client_order_id"] == 13 and u[0]["order_id"] == -1


def test_cancel_all_of_one_symbol_then_of_every_symbol():
    ex = exchange(n_symbols=2)
    t = T0
    for sym, cid in ((0, 1), (0, 2), (1, 3)):
        place(ex, t, symbol=sym, side=SIDE_BUY, order_type=OT_LIMIT, price=fx("99.00"), qty=fx("0.1"),
              client_order_id=cid)
        t += 1000 * US
    assert ex.n_open == 3
    ex.cancel_all(now_ns=t, symbol=0)
    c = ex.timer(t + LAT)
    assert sorted(int(x) for x in c["client_order_id"]) == [1, 2]
    assert all(r["exec_type"] == EX_CANCELED and r["status"] == OS_CANCELED for r in c)
    ex.cancel_all(now_ns=t + 2 * LAT)
    c = ex.timer(t + 3 * LAT)
    assert [int(x) for x in c["client_order_id"]] == [3] and ex.n_open == 0
    ex.cancel_all(now_ns=t + 4 * LAT, symbol=ALL_SYMBOLS)
    assert len(ex.timer(t + 5 * LAT)) == 0  # nothing open: no report


def test_order_ids_are_per_symbol():
    ex = exchange(n_symbols=2)
    a = place(ex, T0, symbol=0, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.1"))
    b = place(ex, T0 + LAT * 2, symbol=1, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.1"))
    assert a[0]["order_id"] == b[0]["order_id"] == 1 and a[1]["trade_id"] == b[1]["trade_id"] == 1


# ---------------------------------------------------------------------------
# Crossed GTC remainders (the live book still shows what they took)
# ---------------------------------------------------------------------------
def test_a_crossing_gtc_takes_rests_and_is_not_filled_again_by_the_levels_it_took():
    ex = exchange()
    r = place(ex, T0, side=SIDE_BUY, order_type=OT_LIMIT, price=fx("100.02"), qty=fx("2"))
    assert [x[:2] for x in rows(r)] == [(EX_NEW, OS_NEW), (EX_TRADE, OS_PARTIALLY_FILLED),
                                        (EX_TRADE, OS_PARTIALLY_FILLED)]
    assert ex.n_open == 1
    t = T0 + 1000 * US
    assert len(ex.top(0, fx("99.99"), fx("0.5"), fx("100.01"), fx("0.3"), now_ns=t)) == 0  # same levels: no fill
    assert len(ex.depth(0, BIDS, ASKS, now_ns=t + 1)) == 0
    # a better ask than the first level it took is new liquidity: the remainder fills at its own price (maker)
    f = ex.top(0, fx("99.99"), fx("0.5"), fx("100.00"), fx("0.1"), now_ns=t + 2)
    assert rows(f) == [(EX_TRADE, OS_FILLED, fx("100.02"), fx("0.7"), fx("2"), fx("200.037"), fx("0.000525"), BASE, 1)]
    check_consistency(np.concatenate([r, f]))


def test_a_crossed_remainder_arms_when_the_market_moves_away_then_fills_on_a_cross():
    ex = exchange()
    place(ex, T0, side=SIDE_BUY, order_type=OT_LIMIT, price=fx("100.02"), qty=fx("2"))
    t = T0 + 1000 * US
    assert len(ex.top(0, fx("99.99"), fx("0.5"), fx("100.03"), fx("1"), now_ns=t)) == 0
    assert ex.counters["crossed_armed"] == 1
    f = ex.top(0, fx("99.99"), fx("0.5"), fx("100.02"), fx("1"), now_ns=t + 1)
    assert rows(f)[0][:5] == (EX_TRADE, OS_FILLED, fx("100.02"), fx("0.7"), fx("2"))


def test_one_public_trade_is_shared_between_crossed_and_plain_resting_orders_never_counted_twice():
    ex = exchange()
    place(ex, T0, side=SIDE_BUY, order_type=OT_LIMIT, price=fx("100.02"), qty=fx("2"), client_order_id=1)  # 0.7 left
    place(ex, T0 + LAT * 2, side=SIDE_BUY, order_type=OT_LIMIT, price=fx("99.99"), qty=fx("0.5"),
          client_order_id=2)
    f = ex.trade(0, fx("99.98"), fx("1"), buyer_is_maker=True, now_ns=T0 + 1000 * US)
    assert [(int(r["client_order_id"]), int(r["last_qty"])) for r in f] == [(1, fx("0.7")), (2, fx("0.3"))]


# ---------------------------------------------------------------------------
# The book view, bad inputs, room
# ---------------------------------------------------------------------------
def test_top_updates_the_first_depth_level_between_snapshots():
    ex = exchange()
    ex.top(0, fx("99.99"), fx("0.7"), fx("100.01"), fx("0.3"), now_ns=T0 + 1)  # qty change at the best
    assert ex.view(0)[0][0] == (fx("99.99"), fx("0.7"))
    ex.top(0, fx("100.00"), fx("0.1"), fx("100.01"), fx("0.3"), now_ns=T0 + 2)  # a better bid in front
    assert ex.view(0)[0] == [(fx("100.00"), fx("0.1")), (fx("99.99"), fx("0.7")), (fx("99.98"), fx("1.2")),
                             (fx("99.90"), fx("3"))]
    ex.top(0, fx("99.98"), fx("1.1"), fx("100.01"), fx("0.3"), now_ns=T0 + 3)  # two better levels gone
    assert ex.view(0)[0] == [(fx("99.98"), fx("1.1")), (fx("99.90"), fx("3"))]
    ex.top(0, fx("99.95"), fx("2"), fx("100.01"), fx("0.3"), now_ns=T0 + 4)  # between levels: replaces the best
    assert ex.view(0)[0] == [(fx("99.95"), fx("2")), (fx("99.90"), fx("3"))]
    ex.top(0, 0, 0, fx("100.01"), fx("0.3"), now_ns=T0 + 5)  # side empty
    assert ex.view(0)[0] == []
    full = [(fx(100 - i), fx("1")) for i in range(10)]
    ex.depth(0, full, ASKS, now_ns=T0 + 6)
    ex.top(0, fx("100.50"), fx("1"), fx("100.60"), fx("0.3"), now_ns=T0 + 7)  # front insert: the last falls off
    bids = ex.view(0)[0]
    assert len(bids) == 10 and bids[0] == (fx("100.50"), fx("1")) and bids[-1] == (fx("92"), fx("1"))
    assert ex.view(0)[1] == [(fx("100.60"), fx("0.3"))]


def test_no_valid_book_rejects_2010_and_invalid_tops_are_ignored():
    ex = PaperExchange(1, filters(), latency_us=100)
    r = place(ex, T0, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.1"))
    assert rows(r)[0][:2] == (EX_REJECTED, OS_REJECTED) and r[0]["reject_code"] == -2010
    ex.depth(0, BIDS, ASKS, now_ns=T0 + 1000 * US)
    ex.top(0, fx("50"), fx("1"), fx("51"), fx("1"), now_ns=T0 + 1001 * US, valid=False)
    assert ex.view(0)[1][0] == ASKS[0]  # not applied
    r = place(ex, T0 + 2000 * US, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.1"))
    assert r[0]["reject_code"] == -2010 and ex.counters["rejected_no_book"] == 2
    ex.top(0, fx("99.99"), fx("0.5"), fx("100.01"), fx("0.3"), now_ns=T0 + 3000 * US)
    r = place(ex, T0 + 4000 * US, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.1"))
    assert r[0]["exec_type"] == EX_NEW


def test_bad_tif_symbol_and_ignored_actions():
    ex = exchange()
    r = place(ex, T0, side=SIDE_BUY, order_type=OT_LIMIT, tif=9, price=fx("99"), qty=fx("0.1"))
    assert r[0]["reject_code"] == -1115
    r = place(ex, T0 + LAT * 2, symbol=5, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.1"))
    assert r[0]["reject_code"] == -1121
    req = np.zeros(1, ORDER_REQUEST)
    req[0]["action"] = ORD_DENIED
    assert len(ex.on_order(req, 0, T0)) == 0
    req[0]["action"] = 0  # trace probe
    assert len(ex.on_order(req, 0, T0)) == 0
    assert ex.counters["ignored"] == 2 and ex.n_pending == 0


def test_a_full_order_table_rejects_at_once_with_1015():
    ex = exchange(capacity=2)
    for i in range(2):
        assert len(ex.new_order(now_ns=T0 + i, symbol=0, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.1"))) == 0
    r = ex.new_order(now_ns=T0 + 2, symbol=0, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.1"))
    assert rows(r) == [(EX_REJECTED, OS_REJECTED, 0, 0, 0, 0, 0, 0, 0)] and r[0]["reject_code"] == -1015
    assert len(ex.timer(T0 + LAT + 2)) == 4  # the two in flight: NEW + FILLED each


def test_too_little_output_room_returns_minus_one_and_consumes_nothing():
    ex = exchange(capacity=8)
    st_ = ex.state
    room = paper_room(st_)
    assert room == 8 + 12
    req = np.zeros(1, ORDER_REQUEST)
    req[0]["action"] = 1
    out = np.zeros(room, EXEC_REPORT)
    assert paper_on_order_at(st_, req, 0, T0, out, room) == -1 and ex.n_pending == 0
    ev = np.zeros(1, BOOK_EVENT)
    assert paper_on_book_at(st_, ev, 0, T0, out, 1) == -1
    assert paper_on_timer(st_, T0, out, 1) == -1
    assert paper_on_timer(st_, T0, out, 0) == 0


def test_activations_beyond_the_room_are_deferred_not_lost():
    ex = exchange(capacity=4)
    for i in range(4):
        ex.new_order(now_ns=T0 + i, symbol=0, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.1"))
    out = np.zeros(paper_room(ex.state), EXEC_REPORT)  # 16: one worst-case activation (12) fits, not two
    n = paper_on_timer(ex.state, T0 + LAT + 10, out, 0)
    # each activation may need 12 slots (NEW + 10 fills + EXPIRED) and writes 2 here: 16, 14, 12 left -> three
    # activations; with 10 left the fourth waits for the next call
    assert n == 6 and ex.counters["deferred"] == 1 and ex.n_pending == 1
    total = n
    while ex.n_pending:
        total += paper_on_timer(ex.state, T0 + LAT + 10, out, 0)
    assert total == 8


def test_report_trace_fields_come_from_the_order():
    ex = exchange()
    ex.new_order(now_ns=T0 + 5, recv_ns=T0 + 1, symbol=0, side=SIDE_BUY, order_type=OT_MARKET, qty=fx("0.1"))
    r = ex.timer(T0 + 5 + LAT)
    assert all(x["recv_ns"] == T0 + 1 and x["in_pub_ns"] == T0 + 5 and x["pub_ns"] == T0 + 5 + LAT for x in r)
    assert all(x["exch_ms"] == 1_700_000_000_000 for x in r)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="paper.latency_us"):
        PaperExchange(1, filters(), latency_us=-1)
    with pytest.raises(ConfigError, match="paper.filters_table"):
        PaperExchange(2, filters(1))
    with pytest.raises(ConfigError, match="paper.taker_fee"):
        PaperExchange(1, filters(), taker_fee=2 * S)


def test_state_from_the_execution_config_parses_fees_and_the_queue_model():
    from core.config import ExecutionConfig

    cfg = ExecutionConfig(paper_latency_us=250, paper_maker_fee="0.00075", paper_taker_fee="0.001",
                          paper_queue_model="queue_position")
    st_ = paper_state_from_config(cfg, filters(2))
    h = st_.hdr[0]
    assert (int(h["latency_ns"]), int(h["queue_model"])) == (250 * US, QUEUE_POSITION)
    assert (int(st_.match.hdr[0]["maker_rate"]), int(st_.match.hdr[0]["taker_rate"])) == (MAKER, TAKER)
    assert st_.sy.shape == (2,)
    with pytest.raises(ConfigError, match="execution.paper_queue_model"):
        paper_state_from_config(ExecutionConfig(paper_queue_model="fifo"), filters(1))
    with pytest.raises(ConfigError, match="execution.paper.latency_us"):
        paper_state_from_config(ExecutionConfig(paper_latency_us=-5), filters(1))


def test_slippage_bps_is_positive_when_worse_than_the_arrival_mid():
    assert slippage_bps(SIDE_BUY, fx("100.02"), fx("100")) == pytest.approx(2.0)
    assert slippage_bps(SIDE_SELL, fx("99.98"), fx("100")) == pytest.approx(2.0)
    assert slippage_bps(SIDE_BUY, fx("99.99"), fx("100")) == pytest.approx(-1.0)
    assert math.isnan(slippage_bps(SIDE_BUY, fx("100"), 0)) and math.isnan(slippage_bps(0, fx("100"), fx("100")))
    # the order of test_market_buy_walks_two_levels: 50.007 / 0.5 = 100.014 vs mid 100.00 -> 1.4 bps
    assert avg_slippage_bps(SIDE_BUY, fx("50.007"), fx("0.5"), fx("100")) == pytest.approx(1.4)
    assert math.isnan(avg_slippage_bps(SIDE_BUY, 0, 0, fx("100")))


# ---------------------------------------------------------------------------
# Property: random books and orders against a plain-Python taker reference
# ---------------------------------------------------------------------------
TICK = fx("0.01")
STEP = fx("0.001")


def ref_taker(bids, asks, side, order_type, tif, limit, qty):
    """[(px, qty)] taker fills and whether the order ends FILLED: the obviously-correct walk of the book."""
    levels = asks if side == SIDE_BUY else bids
    ok = (lambda p: True) if order_type == OT_MARKET else (
        (lambda p: p <= limit) if side == SIDE_BUY else (lambda p: p >= limit))
    crossing = [(p, q) for p, q in levels if ok(p)]
    if order_type == OT_LIMIT_MAKER:
        return [], False
    if order_type == OT_LIMIT and tif == TIF_FOK and sum(q for _, q in crossing) < qty:
        return [], False
    fills, rem = [], qty
    for p, q in crossing:
        if rem == 0:
            break
        t = min(q, rem)
        fills.append((p, t))
        rem -= t
    return fills, rem == 0


@st.composite
def scenario(draw):
    mid = draw(st.integers(5_000, 15_000))  # in ticks
    spread = draw(st.integers(1, 5))
    nb_ = draw(st.integers(0, 10))
    na = draw(st.integers(0, 10))
    bgaps = draw(st.lists(st.integers(1, 4), min_size=nb_, max_size=nb_))
    agaps = draw(st.lists(st.integers(1, 4), min_size=na, max_size=na))
    bids, p = [], mid
    for g in bgaps:
        p -= g
        bids.append((p * TICK, draw(st.integers(1, 3000)) * STEP))
    asks, p = [], mid + spread - 1
    for g in agaps:
        p += g
        asks.append((p * TICK, draw(st.integers(1, 3000)) * STEP))
    orders = []
    for _ in range(draw(st.integers(1, 6))):
        side = draw(st.sampled_from([SIDE_BUY, SIDE_SELL]))
        ot = draw(st.sampled_from([OT_MARKET, OT_LIMIT, OT_LIMIT_MAKER]))
        tif = draw(st.sampled_from([TIF_GTC, TIF_IOC, TIF_FOK]))
        price = (mid + draw(st.integers(-30, 30))) * TICK if ot != OT_MARKET else 0
        qty = draw(st.integers(100, 6000)) * STEP  # mostly above the min notional of 5 (else -1013: also fine)
        orders.append((side, ot, tif, price, qty))
    events = draw(st.lists(st.tuples(st.sampled_from(["trade", "top"]), st.integers(-30, 30), st.integers(1, 3000),
                                     st.booleans()), max_size=12))
    return mid, bids, asks, orders, events


@settings(max_examples=150, deadline=None)
@given(scenario())
def test_property_fills_never_beat_the_limit_never_exceed_qty_and_quote_is_exact(sc):
    mid, bids, asks, orders, events = sc
    ex = PaperExchange(1, filters(), latency_us=10, maker_fee=MAKER, taker_fee=TAKER, capacity=32)
    ex.depth(0, bids, asks, now_ns=T0)
    reports = []
    t = T0
    limits = {}
    for i, (side, ot, tif, price, qty) in enumerate(orders):
        cid = i + 1
        limits[cid] = (side, ot, price, qty)
        ex.new_order(now_ns=t, symbol=0, side=side, order_type=ot, tif=tif, price=price, qty=qty, client_order_id=cid)
        r = ex.timer(t + 10 * US)
        t += 20 * US
        reports.append(r)
        # activation against the view: the taker fills equal the reference walk of the same book
        view_bids, view_asks = ex.view(0)
        if len(r) and r[0]["exec_type"] == EX_NEW:
            taker = [(int(x["last_px"]), int(x["last_qty"])) for x in r if x["exec_type"] == EX_TRADE]
            want, _ = ref_taker(bids, asks, side, ot, tif, price, qty)
            assert taker == want
        elif ot == OT_LIMIT_MAKER and r[0]["reject_code"] != -1013:
            assert r[0]["reject_code"] == -2010
            assert ref_taker(bids, asks, side, OT_LIMIT, TIF_IOC, price, qty)[0]  # it would have taken
        assert (view_bids, view_asks) == (bids, asks)  # a view changed only by the market, never by our fills
    for kind, off, q, flag in events:
        p = (mid + off) * TICK
        if kind == "trade":
            reports.append(ex.trade(0, p, q * STEP, buyer_is_maker=flag, now_ns=t))
        else:
            bid, ask = (p, p + TICK) if flag else (p - TICK, p)
            reports.append(ex.top(0, bid, q * STEP, ask, q * STEP, now_ns=t))
        t += 1000
    allr = np.concatenate(reports)
    check_consistency(allr)
    for cid, (side, ot, price, qty) in limits.items():
        mine = allr[allr["client_order_id"] == cid]
        trades = mine[mine["exec_type"] == EX_TRADE]
        for x in trades:
            if ot != OT_MARKET:
                assert (x["last_px"] <= price) if side == SIDE_BUY else (x["last_px"] >= price)
            assert int(x["last_px"]) * int(x["last_qty"]) % S == 0  # tick x step: the quote is exact
        total = int(trades["last_qty"].sum())
        assert total <= qty
        if len(trades):
            assert int(trades[-1]["cum_quote"]) * S == sum(int(x["last_px"]) * int(x["last_qty"]) for x in trades)
            comm = [int(x["commission"]) for x in trades]
            for x, c in zip(trades, comm):
                rate = MAKER if x["is_maker"] else TAKER
                amount = int(x["last_qty"]) if side == SIDE_BUY else int(x["last_px"]) * int(x["last_qty"]) // S
                assert c == -((-amount * rate) // S)
                assert x["commission_asset"] == (BASE if side == SIDE_BUY else QUOTE)
        finals = [int(s) for s in mine["status"] if s in (OS_FILLED, OS_CANCELED, OS_EXPIRED, OS_REJECTED)]
        assert len(finals) <= 1
        if finals == [OS_FILLED]:
            assert total == qty
