#!/usr/bin/env python3
"""Benchmark: the matching core (core/matching.py), ns per order and per public trade.

    .venv/bin/python scripts/bench_matching.py [--orders 200000] [--trades 20000] [--repeat 5] [--json]

Rows:

* ``match_taker ...`` : MARKET orders against a 20-level book (tick 0.01,
  level qty 0.1..2), sized to walk 1, 2 or 3 levels (a third each, buys and
  sells alternating), ``deplete=False`` so every order sees the same book.
  ``numba loop``: the kernel called from a numba loop (its own cost);
  ``python call``: called once per order from Python (dispatch included).
* ``submit_order numba loop``: the same orders through the engine kernel
  (taker fills with fees written as FILL records; nothing rests).
* ``MatchingEngine.submit``: the Python wrapper, per order.
* ``on_trade N=... all eligible``: N resting buys spread over 10 prices
  (QUEUE_POSITION); each public trade prints 1e-8 below all of them with
  qty 1e-8, so every order is eligible and sorted, and the best one gets a
  1e-8 fill (the orders are too large to complete).
* ``on_trade N=... none eligible``: the same table, trades by a buying
  aggressor (only our sells could fill; we have none): the scan alone.

Each figure is the median of ``--repeat`` runs, after one warm-up run. Timing
only: nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.numba_cache import configure  # noqa: E402

configure()  # before numba is imported: the keyed cache dir

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402

from core.matching import (  # noqa: E402
    FILL,
    QUEUE_POSITION,
    MatchingEngine,
    match_taker,
    on_trade,
    rest_order,
    submit_order,
)
from core.records import FIXED_SCALE, OT_MARKET, SIDE_BUY, SIDE_SELL, TIF_GTC  # noqa: E402

S = FIXED_SCALE
LEVELS = 20


def make_book(rng: np.random.Generator):
    tick = S // 100
    mid = 60_000 * S
    ask_px = mid + tick * np.arange(1, LEVELS + 1, dtype=np.int64)
    bid_px = mid - tick * np.arange(1, LEVELS + 1, dtype=np.int64)
    ask_qty = rng.integers(10, 200, LEVELS).astype(np.int64) * (S // 100)
    bid_qty = rng.integers(10, 200, LEVELS).astype(np.int64) * (S // 100)
    return bid_px, bid_qty, ask_px, ask_qty


def make_orders(rng: np.random.Generator, n: int, bid_qty, ask_qty):
    """(sides, qtys): each order walks 1, 2 or 3 levels of its opposite side."""
    sides = np.where(np.arange(n) % 2 == 0, SIDE_BUY, SIDE_SELL).astype(np.int64)
    walk = rng.integers(1, 4, n)
    qtys = np.empty(n, np.int64)
    for i in range(n):
        q = ask_qty if sides[i] == SIDE_BUY else bid_qty
        # all of the first walk-1 levels and part of the next one
        qtys[i] = int(q[: walk[i] - 1].sum()) + max(1, int(q[walk[i] - 1]) // 2)
    return sides, qtys


@nb.njit(nogil=True)
def _taker_loop(bid_px, bid_qty, ask_px, ask_qty, sides, qtys, fp, fq):
    acc = np.int64(0)
    for i in range(sides.shape[0]):
        n, filled, quote, out = match_taker(bid_px, bid_qty, bid_px.shape[0], ask_px, ask_qty, ask_px.shape[0],
                                            sides[i], OT_MARKET, TIF_GTC, 0, qtys[i], 0, 1, False, fp, fq)
        acc += filled + n + out
    return acc


@nb.njit(nogil=True)
def _submit_loop(st, bid_px, bid_qty, ask_px, ask_qty, sides, qtys, fills):
    acc = np.int64(0)
    for i in range(sides.shape[0]):
        n, out, _slot, _f, _q, _c = submit_order(st, bid_px, bid_qty, bid_px.shape[0], ask_px, ask_qty,
                                                 ask_px.shape[0], i, 0, sides[i], OT_MARKET, TIF_GTC, 0, qtys[i], 0,
                                                 1, False, fills)
        acc += n + out
    return acc


@nb.njit(nogil=True)
def _trade_loop(st, n_trades, px, buyer_is_maker, fills):
    acc = np.int64(0)
    for _ in range(n_trades):
        acc += on_trade(st, 0, px, 1, buyer_is_maker, fills)
    return acc


def timed(fn, count: int, repeat: int) -> float:
    fn()  # warm-up (compile, caches)
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        runs.append((time.perf_counter_ns() - t0) / count)
    return statistics.median(runs)


def run(n_orders: int, n_trades: int, repeat: int) -> list[dict]:
    rng = np.random.default_rng(7)
    bid_px, bid_qty, ask_px, ask_qty = make_book(rng)
    sides, qtys = make_orders(rng, n_orders, bid_qty, ask_qty)
    fp = np.zeros(LEVELS, np.int64)
    fq = np.zeros(LEVELS, np.int64)
    rows = []

    def add(name, ns):
        rows.append({"name": name, "ns_per_op": round(ns, 1)})

    add("match_taker numba loop (20 levels, walk 1-3)",
        timed(lambda: _taker_loop(bid_px, bid_qty, ask_px, ask_qty, sides, qtys, fp, fq), n_orders, repeat))

    n_py = min(n_orders, 50_000)

    def py_taker():
        for i in range(n_py):
            match_taker(bid_px, bid_qty, LEVELS, ask_px, ask_qty, LEVELS, int(sides[i]), OT_MARKET, TIF_GTC, 0,
                        int(qtys[i]), 0, 1, False, fp, fq)

    add("match_taker python call", timed(py_taker, n_py, repeat))

    eng = MatchingEngine(64, taker_fee=100_000, max_levels=LEVELS)
    fills = np.zeros(LEVELS, FILL)
    add("submit_order numba loop (fees, FILL records)",
        timed(lambda: _submit_loop(eng.state, bid_px, bid_qty, ask_px, ask_qty, sides, qtys, fills), n_orders,
              repeat))

    n_sub = min(n_orders, 20_000)

    def py_submit():
        for i in range(n_sub):
            eng.submit(order_id=i, symbol=0, side=int(sides[i]), order_type=OT_MARKET, qty=int(qtys[i]),
                       bid_px=bid_px, bid_qty=bid_qty, ask_px=ask_px, ask_qty=ask_qty, n_bid=LEVELS, n_ask=LEVELS)

    add("MatchingEngine.submit (python)", timed(py_submit, n_sub, repeat))

    for n_rest in (1, 10, 100, 1000):
        eng = MatchingEngine(n_rest, queue_model=QUEUE_POSITION)
        st = eng.state
        prices = 60_000 * S - (S // 100) * rng.integers(0, 10, n_rest)
        for j in range(n_rest):
            rest_order(st, j, 0, SIDE_BUY, int(prices[j]), 10**15, 0, 0, 0, 10 * S)
        low = int(prices.min()) - 1
        fills = np.zeros(n_rest, FILL)
        n_tr = max(200, n_trades // max(1, n_rest // 10))
        add(f"on_trade N={n_rest} all eligible",
            timed(lambda: _trade_loop(st, n_tr, low, True, fills), n_tr, repeat))
        add(f"on_trade N={n_rest} none eligible",
            timed(lambda: _trade_loop(st, n_trades, low, False, fills), n_trades, repeat))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=200_000, help="taker orders per timed run")
    ap.add_argument("--trades", type=int, default=20_000, help="public trades per timed run")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per row (the median is reported)")
    ap.add_argument("--json", action="store_true", help="print rows {name, ns_per_op} as JSON")
    args = ap.parse_args(argv)
    rows = run(args.orders, args.trades, args.repeat)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["name"]) for r in rows)
        print(f"{'case':<{width}}  {'ns/op':>10}")
        for r in rows:
            print(f"{r['name']:<{width}}  {r['ns_per_op']:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
