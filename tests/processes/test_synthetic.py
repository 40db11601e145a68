"""The synthetic source: deterministic by seed, a valid Binance-like stream a real book can follow."""

from __future__ import annotations

import numpy as np

from core.records import (FLAG_BEGIN, FLAG_END, MD_DEPTH_ASK, MD_DEPTH_BID, MD_EVENT, MD_SNAP_ASK, MD_SNAP_BEGIN,
                          MD_SNAP_BID, MD_SNAP_END, MD_TRADE)
from processes.synthetic import SyntheticSource


def gen(seed, n=20_000, symbols=2):
    src = SyntheticSource(symbols, rate_per_s=1, seed=seed, depth_levels=10)
    snaps = [src.snapshot(s).copy() for s in range(symbols)]
    out = np.zeros(n, MD_EVENT)
    k = src.generate(out, n)
    return snaps, out[:k], src


def test_same_seed_same_stream_and_different_seed_different_stream():
    _, a, _ = gen(11)
    _, b, _ = gen(11)
    _, c, _ = gen(12)
    cols = ["symbol", "kind", "flags", "first_id", "last_id", "price", "qty"]
    assert all(np.array_equal(a[f], b[f]) for f in cols)
    assert not all(np.array_equal(a[f][:1000], c[f][:1000]) for f in cols)


def test_a_book_built_from_snapshot_and_diffs_chains_never_crosses_and_matches_the_next_snapshot():
    snaps, recs, src = gen(3)
    for sym in range(2):
        snap = snaps[sym]
        assert snap[0]["kind"] == MD_SNAP_BEGIN and snap[-1]["kind"] == MD_SNAP_END
        assert snap[0]["aux"] == len(snap) - 2
        bids = {int(r["price"]): int(r["qty"]) for r in snap if r["kind"] == MD_SNAP_BID}
        asks = {int(r["price"]): int(r["qty"]) for r in snap if r["kind"] == MD_SNAP_ASK}
        last_u = int(snap[0]["last_id"])
        trades = 0
        open_msg = False
        for r in recs[recs["symbol"] == sym]:
            kind = int(r["kind"])
            if kind == MD_TRADE:
                trades += 1
                assert r["flags"] & (FLAG_BEGIN | FLAG_END) == FLAG_BEGIN | FLAG_END
                continue
            if r["flags"] & FLAG_BEGIN:
                assert not open_msg
                assert r["first_id"] == last_u + 1  # every diff chains: U == previous u + 1
                open_msg = True
            side = bids if kind == MD_DEPTH_BID else asks
            assert kind in (MD_DEPTH_BID, MD_DEPTH_ASK)
            if r["qty"]:
                side[int(r["price"])] = int(r["qty"])
            else:
                side.pop(int(r["price"]), None)
            if r["flags"] & FLAG_END:
                open_msg = False
                last_u = int(r["last_id"])
                assert max(bids) < min(asks), "crossed book"
        assert trades > 0
        again = src.snapshot(sym)
        assert int(again[0]["last_id"]) == last_u
        assert bids == {int(r["price"]): int(r["qty"]) for r in again if r["kind"] == MD_SNAP_BID}
        assert asks == {int(r["price"]): int(r["qty"]) for r in again if r["kind"] == MD_SNAP_ASK}


def test_pacing_emits_the_configured_rate():
    now = [0]
    src = SyntheticSource(1, rate_per_s=1000, seed=1, clock=lambda: now[0])
    src.start()
    out = np.zeros(4096, MD_EVENT)
    assert src.poll(out) == 0
    now[0] = 500_000_000  # half a second later: 500 records due
    k = src.poll(out)
    assert 498 <= k <= 500  # whole messages only (1 or 2 records each)
    assert np.all(out["recv_ns"][:k] == now[0])
