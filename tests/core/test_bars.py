"""Bar aggregation kernels against a Decimal reference."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from core.bars import mul_fixed
from core.book_worker_kernels import BookConfig, BookEngine, md_trade
from core.records import BK_BAR, FIXED_SCALE

S = FIXED_SCALE
T0 = 1_712_275_200_000  # a minute boundary (2024-04-05 00:00:00 UTC)


def D(v):
    return Decimal(int(v)) / S


def fixed_trunc(d: Decimal) -> int:
    return int((d * S).to_integral_value(rounding="ROUND_FLOOR"))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**15), st.integers(0, 10**17))
def test_quote_of_one_trade_is_exact(p, q):
    assume(p * q // S < 2**62)  # the quote itself fits fixed point
    whole, rem = mul_fixed(p, q)
    assert whole * S + rem == p * q  # p*q is in 1e-16 units
    assert 0 <= rem < S


def reference_bars(trades, interval, emit_empty, until):
    """trades: (id, px, qty, T, buyer_maker) in order. Returns the bars that end by ``until``."""
    bars = {}
    for tid, px, qty, t, bm in trades:
        o = t - t % interval
        b = bars.setdefault(o, dict(open=px, high=px, low=px, close=px, volume=Decimal(0), quote=Decimal(0),
                                    tbb=Decimal(0), tbq=Decimal(0), n=0, first=tid, last=tid))
        b["high"] = max(b["high"], px)
        b["low"] = min(b["low"], px)
        b["close"] = px
        b["volume"] += D(qty)
        b["quote"] += D(px) * D(qty)
        if not bm:
            b["tbb"] += D(qty)
            b["tbq"] += D(px) * D(qty)
        b["n"] += 1
        b["last"] = tid
    out = []
    if not bars:
        return out
    prev = None
    for o in range(min(bars), until - interval + 1, interval):
        if o in bars:
            out.append((o, bars[o]))
            prev = bars[o]["close"]
        elif emit_empty:
            out.append((o, dict(open=prev, high=prev, low=prev, close=prev, volume=Decimal(0), quote=Decimal(0),
                                tbb=Decimal(0), tbq=Decimal(0), n=0, first=-1, last=-1)))
    return out


trade_lists = st.lists(
    st.tuples(st.integers(0, 4000), st.integers(1, 10**12), st.integers(1, 10**11), st.booleans()),
    min_size=1, max_size=120,
)


@settings(max_examples=80, deadline=None)
@given(trade_lists, st.booleans())
def test_bars_equal_the_decimal_reference(raw, emit_empty):
    e = BookEngine(BookConfig(n_symbols=1, bar_intervals_ms=(1000, 60000), emit_empty_bars=emit_empty))
    trades = []
    t = T0 - 1  # the first trade falls in the previous minute
    for i, (dt, px, qty, bm) in enumerate(raw):
        t += dt
        trades.append((10 + i, px, qty, t, bm))
    md = np.concatenate([md_trade(0, tid, px, qty, tt, buyer_maker=bm) for tid, px, qty, tt, bm in trades])
    ev = e.process_all(md)
    until = t + 120_000
    ev = np.concatenate([ev, e.on_timer(until + 500)])  # close everything by timer (500 ms watermark)
    bars = ev[ev["kind"] == BK_BAR]
    for interval in (1000, 60000):
        got = bars[bars["bar_interval_ms"] == interval]
        want = reference_bars(trades, interval, emit_empty, until)
        assert len(got) == len(want)
        for g, (o, w) in zip(got, want):
            assert g["bar_open_ms"] == o and g["bar_close_ms"] == o + interval - 1
            assert (g["bar_open"], g["bar_high"], g["bar_low"], g["bar_close"]) == \
                (w["open"], w["high"], w["low"], w["close"])
            assert D(g["bar_volume"]) == w["volume"]
            assert D(g["bar_taker_buy_base"]) == w["tbb"]
            assert g["bar_quote_volume"] == fixed_trunc(w["quote"])  # exact, truncated at 1e-8
            assert g["bar_taker_buy_quote"] == fixed_trunc(w["tbq"])
            assert (g["bar_trades"], g["bar_first_trade_id"], g["bar_last_trade_id"]) == (w["n"], w["first"], w["last"])
            if w["n"]:
                assert math.isclose(g["bar_vwap"], float(w["quote"] / w["volume"]), rel_tol=1e-12)
            else:
                assert math.isnan(g["bar_vwap"])


def test_timer_closes_bar_only_after_the_watermark():
    e = BookEngine(BookConfig(n_symbols=2, bar_intervals_ms=(60_000,), bar_watermark_ms=500))
    e.process_all(md_trade(1, 7, 100 * S, S, T0 + 10))
    assert len(e.on_timer(T0 + 60_000 + 499)) == 0  # boundary passed, watermark not yet
    ev = e.on_timer(T0 + 60_000 + 500, now_ns=123)
    assert len(ev) == 1
    b = ev[0]
    assert (b["kind"], b["symbol"], b["bar_open_ms"], b["bar_close_ms"], b["bar_trades"]) == \
        (BK_BAR, 1, T0, T0 + 59_999, 1)
    assert b["recv_ns"] == 123
    # a trade that belonged to the closed minute is late: counted, kept out of the bars
    ev = e.process_all(md_trade(1, 8, 101 * S, S, T0 + 59_000))
    assert e.counters(1)["late_trades"] == 1
    later = e.on_timer(T0 + 180_500)
    assert later["bar_volume"].tolist() == [0, 0]  # two empty minutes, nothing of the late trade
    assert later["bar_close"].tolist() == [100 * S, 100 * S]


def test_empty_intervals_are_flat_bars_or_skipped():
    for emit, expect in ((True, [T0, T0 + 1000, T0 + 2000, T0 + 3000]), (False, [T0, T0 + 3000])):
        e = BookEngine(BookConfig(n_symbols=1, bar_intervals_ms=(1000,), emit_empty_bars=emit))
        ev = e.process_all(np.concatenate([md_trade(0, 1, 5 * S, S, T0 + 5), md_trade(0, 2, 6 * S, S, T0 + 3001),
                                           md_trade(0, 3, 7 * S, S, T0 + 4002)]))
        bars = ev[ev["kind"] == BK_BAR]
        assert bars["bar_open_ms"].tolist() == expect
        if emit:
            assert bars[1]["bar_open"] == bars[1]["bar_close"] == 5 * S
            assert bars[1]["bar_first_trade_id"] == -1 and bars[1]["bar_trades"] == 0


def test_agg_trade_counts_every_trade_it_covers():
    e = BookEngine(BookConfig(n_symbols=1, bar_intervals_ms=(60_000,)))
    md = np.concatenate([md_trade(0, 100, 5 * S, 2 * S, T0 + 1, last_id=104),
                         md_trade(0, 105, 6 * S, S, T0 + 2, last_id=105, buyer_maker=True)])
    e.process_all(md)
    b = e.on_timer(T0 + 61_000)
    assert (b[0]["bar_trades"], b[0]["bar_first_trade_id"], b[0]["bar_last_trade_id"]) == (6, 100, 105)
    assert b[0]["bar_taker_buy_base"] == 2 * S and b[0]["bar_taker_buy_quote"] == 10 * S
    assert b[0]["bar_quote_volume"] == 16 * S


def test_bar_closed_by_a_trade_comes_before_that_trade():
    e = BookEngine(BookConfig(n_symbols=1, bar_intervals_ms=(1000,)))
    ev = e.process_all(np.concatenate([md_trade(0, 1, 5 * S, S, T0), md_trade(0, 2, 6 * S, S, T0 + 1000)]))
    assert ev["kind"].tolist()[1:] == [BK_BAR, 3]


# ---------------------------------------------------------------------------
# time jumps: the work is bounded by the bars, never by how far time moved
# ---------------------------------------------------------------------------
def _engine(cap: int = 60) -> BookEngine:
    return BookEngine(BookConfig(n_symbols=1, bar_intervals_ms=(1000, 60_000), bar_max_empty_run=cap))


def test_a_far_future_trade_emits_no_run_of_empty_bars_counts_the_jump_and_resynchronises():
    e = _engine()
    year = 365 * 86_400_000
    ev = e.process_all(np.concatenate([md_trade(0, 1, 5 * S, S, T0 + 5),
                                       md_trade(0, 2, 6 * S, S, T0 + 100 * year)]))  # ~3e9 empty seconds
    bars = ev[ev["kind"] == BK_BAR]
    # only the two bars that had the first trade; none of the 3e9 + 5e7 empty intervals
    assert sorted(bars["bar_interval_ms"].tolist()) == [1000, 60_000]
    assert e.counters(0)["bar_gaps_capped"] == 2  # one jump per interval
    row = e.bars[0]
    assert row["closed"].tolist() == [1, 1], "one step per interval, not one per empty interval"
    t = T0 + 100 * year
    assert row["open_ms"].tolist() == [t - t % 1000, t - t % 60_000]  # the bars continue at the new time
    # and they go on normally from there: the next trade a second later closes the 1 s bar with the jump's trade
    ev = e.process_all(md_trade(0, 3, 7 * S, S, t + 1000))
    b = ev[ev["kind"] == BK_BAR]
    assert len(b) == 1 and (b[0]["bar_open"], b[0]["bar_trades"]) == (6 * S, 1)


def test_a_jump_of_exactly_the_cap_still_emits_its_flat_bars_one_more_emits_none():
    for gap, flat, capped in ((60, 60, 0), (61, 0, 1)):
        e = BookEngine(BookConfig(n_symbols=1, bar_intervals_ms=(1000,), bar_max_empty_run=60))
        ev = e.process_all(np.concatenate([md_trade(0, 1, 5 * S, S, T0 + 5),
                                           md_trade(0, 2, 6 * S, S, T0 + (gap + 1) * 1000 + 5)]))
        bars = ev[ev["kind"] == BK_BAR]
        assert len(bars) == 1 + flat and (bars["bar_trades"][1:] == 0).all()
        assert e.counters(0)["bar_gaps_capped"] == capped


def test_a_timer_far_ahead_is_bounded_too_and_a_quiet_market_by_timer_is_never_capped():
    e = _engine()
    e.process_all(md_trade(0, 1, 5 * S, S, T0 + 5))
    for k in range(1, 181):  # three quiet minutes, the timer every second: flat bars one at a time
        e.on_timer(T0 + k * 1000 + 500)
    assert e.counters(0)["bar_gaps_capped"] == 0
    ev = e.on_timer(T0 + 10**12)  # a clock 30 years ahead
    assert len(ev) <= 2 and e.counters(0)["bar_gaps_capped"] == 2


def test_bar_max_empty_run_must_not_be_negative():
    import pytest

    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="bar_max_empty_run"):
        BookConfig(n_symbols=1, bar_max_empty_run=-1)
