"""Book kernels against a dict-based reference book (property tests)."""

from __future__ import annotations

import math
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.book import (
    SET_INSERTED,
    SET_NOOP,
    SET_OVERFLOW,
    SET_REMOVED,
    SET_UPDATED,
    SIDE_ASK,
    SIDE_BID,
    alloc_book,
    book_best,
    book_clear,
    book_depth,
    book_imbalance,
    book_is_crossed,
    book_level_qty,
    book_live_levels,
    book_microprice,
    book_mid,
    book_set_level,
    book_snapshot_append,
    book_snapshot_finish,
    book_top,
)
from core.records import FIXED_SCALE

S = FIXED_SCALE


class RefBook:
    """The obviously-correct book: one dict per side."""

    def __init__(self):
        self.side = ({}, {})

    def set(self, side, px, qty):
        if qty == 0:
            self.side[side].pop(px, None)
        else:
            self.side[side][px] = qty

    def levels(self, side):
        """Best first."""
        return sorted(self.side[side].items(), reverse=(side == SIDE_BID))

    def best(self, side):
        lv = self.levels(side)
        return lv[0] if lv else (0, 0)


def book_levels(keys, qtys, count, sym, side):
    n = int(count[sym, side])
    px = np.zeros(n, np.int64)
    qt = np.zeros(n, np.int64)
    w = book_depth(keys, qtys, count, sym, side, px, qt)
    assert w == book_live_levels(count, sym, side)
    return list(zip(px.tolist(), qt.tolist()))[:w]


def assert_same(keys, qtys, count, sym, ref):
    for side in (SIDE_BID, SIDE_ASK):
        assert book_levels(keys, qtys, count, sym, side) == ref.levels(side)
        assert tuple(int(v) for v in book_best(keys, qtys, count, sym, side)) == ref.best(side)


ops = st.lists(
    st.tuples(st.sampled_from([SIDE_BID, SIDE_ASK]), st.integers(1, 60), st.integers(0, 4)),
    min_size=1, max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_random_updates_and_deletions_match_reference_book(seq):
    keys, qtys, count = alloc_book(2, 128)
    ref = RefBook()
    for side, tick, lots in seq:
        px = 1000 * S + tick * S // 100
        qty = lots * S // 10
        existed = px in ref.side[side]
        r = book_set_level(keys, qtys, count, 1, side, px, qty)
        ref.set(side, px, qty)
        if qty == 0:
            assert r == (SET_REMOVED if existed else SET_NOOP)
        else:
            assert r == (SET_UPDATED if existed else SET_INSERTED)
        assert_same(keys, qtys, count, 1, ref)
        assert book_level_qty(keys, qtys, count, 1, side, px) == qty
    assert count[0].tolist() == [0, 0, 0, 0], "another symbol's book must not be touched"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([SIDE_BID, SIDE_ASK]), st.integers(1, 400), st.integers(1, 9)),
                min_size=1, max_size=400))
def test_full_side_keeps_the_best_levels(seq):
    """Insert/update only into a 16-level side: it holds the 16 best prices ever seen."""
    cap = 16
    keys, qtys, count = alloc_book(1, cap)
    ref = RefBook()
    for side, tick, lots in seq:
        px = tick * S
        r = book_set_level(keys, qtys, count, 0, side, px, lots)
        ref.set(side, px, lots)
        if len(ref.side[side]) > cap:
            assert r in (SET_OVERFLOW, SET_UPDATED)
    for side in (SIDE_BID, SIDE_ASK):
        assert book_levels(keys, qtys, count, 0, side) == ref.levels(side)[:cap]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 300), st.integers(0, 300), st.booleans(), st.randoms(use_true_random=False))
def test_snapshot_then_updates_match_reference(n_bids, n_asks, shuffled, rnd):
    keys, qtys, count = alloc_book(1, 1024)
    # leftovers of an earlier book must vanish on a snapshot
    book_set_level(keys, qtys, count, 0, SIDE_BID, 5 * S, S)
    ref = RefBook()
    bids = [(50_000 * S - i * S // 100, rnd.randint(1, 10**9)) for i in range(n_bids)]
    asks = [(50_000 * S + (i + 1) * S // 100, rnd.randint(1, 10**9)) for i in range(n_asks)]
    for p, q in bids:
        ref.set(SIDE_BID, p, q)
    for p, q in asks:
        ref.set(SIDE_ASK, p, q)
    if shuffled:  # not best-first: the kernel must sort
        rnd.shuffle(bids)
        rnd.shuffle(asks)
    book_clear(count, 0)
    for p, q in bids:
        book_snapshot_append(keys, qtys, count, 0, SIDE_BID, p, q)
    for p, q in asks:
        book_snapshot_append(keys, qtys, count, 0, SIDE_ASK, p, q)
    book_snapshot_finish(keys, qtys, count, 0)
    assert_same(keys, qtys, count, 0, ref)
    for _ in range(200):
        side = rnd.choice((SIDE_BID, SIDE_ASK))
        base = 50_000 * S - S if side == SIDE_BID else 50_000 * S
        px = base + rnd.randint(0, 400) * S // 100
        q = rnd.choice((0, 0, rnd.randint(1, 10**8)))
        book_set_level(keys, qtys, count, 0, side, px, q)
        ref.set(side, px, q)
    assert_same(keys, qtys, count, 0, ref)


def test_5000_level_snapshot_fits_and_updates_near_top_work():
    keys, qtys, count = alloc_book(1, 8192)
    book_clear(count, 0)
    for i in range(5000):
        book_snapshot_append(keys, qtys, count, 0, SIDE_BID, 60_000 * S - i * S, i + 1)
        book_snapshot_append(keys, qtys, count, 0, SIDE_ASK, 60_001 * S + i * S, i + 1)
    book_snapshot_finish(keys, qtys, count, 0)
    assert count[0, :2].tolist() == [5000, 5000]
    assert book_top(keys, qtys, count, 0) == (60_000 * S, 1, 60_001 * S, 1)
    book_set_level(keys, qtys, count, 0, SIDE_BID, 60_000 * S + S // 2, 7)
    book_set_level(keys, qtys, count, 0, SIDE_ASK, 60_001 * S, 0)
    assert book_top(keys, qtys, count, 0) == (60_000 * S + S // 2, 7, 60_002 * S, 2)
    px = np.zeros(3, np.int64)
    qt = np.zeros(3, np.int64)
    assert book_depth(keys, qtys, count, 0, SIDE_BID, px, qt) == 3
    assert px.tolist() == [60_000 * S + S // 2, 60_000 * S, 59_999 * S]
    # the deepest snapshot level is still there
    assert book_level_qty(keys, qtys, count, 0, SIDE_ASK, 65_000 * S) == 5000


def test_depth_pads_with_zeros_and_empty_book_has_zero_top():
    keys, qtys, count = alloc_book(1, 64)
    assert book_top(keys, qtys, count, 0) == (0, 0, 0, 0)
    assert math.isnan(book_mid(keys, qtys, count, 0))
    assert math.isnan(book_microprice(keys, qtys, count, 0))
    assert math.isnan(book_imbalance(keys, qtys, count, 0, 5))
    book_set_level(keys, qtys, count, 0, SIDE_ASK, 10 * S, S)
    px = np.full(4, -1, np.int64)
    qt = np.full(4, -1, np.int64)
    assert book_depth(keys, qtys, count, 0, SIDE_ASK, px, qt) == 1
    assert px.tolist() == [10 * S, 0, 0, 0] and qt.tolist() == [S, 0, 0, 0]
    assert not book_is_crossed(keys, qtys, count, 0)  # one-sided is not crossed


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10**6), st.integers(1, 10**6), st.integers(1, 10**10), st.integers(1, 10**10))
def test_mid_microprice_imbalance_and_crossing(bid_ticks, ask_ticks, bq, aq):
    keys, qtys, count = alloc_book(1, 64)
    bp = bid_ticks * S // 100
    ap = ask_ticks * S // 100
    book_set_level(keys, qtys, count, 0, SIDE_BID, bp, bq)
    book_set_level(keys, qtys, count, 0, SIDE_ASK, ap, aq)
    assert book_is_crossed(keys, qtys, count, 0) == (bp >= ap)
    assert math.isclose(book_mid(keys, qtys, count, 0), (bp + ap) / 2 / S, rel_tol=1e-12)
    micro = (bp * aq + ap * bq) / (aq + bq) / S
    assert math.isclose(book_microprice(keys, qtys, count, 0), micro, rel_tol=1e-9)
    assert math.isclose(book_imbalance(keys, qtys, count, 0, 1), (bq - aq) / (bq + aq), rel_tol=1e-9, abs_tol=1e-12)


def test_imbalance_over_several_levels():
    keys, qtys, count = alloc_book(1, 64)
    rnd = random.Random(7)
    bids = {100 * S - i * S: rnd.randint(1, 100) for i in range(8)}
    asks = {101 * S + i * S: rnd.randint(1, 100) for i in range(8)}
    for p, q in bids.items():
        book_set_level(keys, qtys, count, 0, SIDE_BID, p, q)
    for p, q in asks.items():
        book_set_level(keys, qtys, count, 0, SIDE_ASK, p, q)
    sb = sum(q for p, q in sorted(bids.items(), reverse=True)[:3])
    sa = sum(q for p, q in sorted(asks.items())[:3])
    assert math.isclose(book_imbalance(keys, qtys, count, 0, 3), (sb - sa) / (sb + sa))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.integers(500, 3000), st.floats(0.2, 0.8))
def test_long_churn_with_many_deletes_matches_reference(seed, n_ops, p_delete):
    """Enough churn over 400 prices that deleted levels pile up and get squeezed out."""
    rnd = random.Random(seed)
    keys, qtys, count = alloc_book(1, 512)
    ref = RefBook()
    for _ in range(n_ops):
        side = rnd.randint(0, 1)
        px = rnd.randint(1, 400) * S
        qty = 0 if rnd.random() < p_delete else rnd.randint(1, 10**6)
        book_set_level(keys, qtys, count, 0, side, px, qty)
        ref.set(side, px, qty)
        assert tuple(int(v) for v in book_best(keys, qtys, count, 0, side)) == ref.best(side)
    assert_same(keys, qtys, count, 0, ref)
    assert 0 <= count[0, 2] <= count[0, 0] and 0 <= count[0, 3] <= count[0, 1]
