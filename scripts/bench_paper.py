#!/usr/bin/env python3
"""Benchmark: paper fills (core/paper.py), ns per order and per book event.

    .venv/bin/python scripts/bench_paper.py [--orders 100000] [--events 100000] [--repeat 5] [--json]

Rows:

* ``market order, 2-level walk (numba loop)``: one ORDER_REQUEST (MARKET BUY,
  sized to take all of the best ask level and part of the next) through
  ``paper_on_order`` then ``paper_on_timer`` (latency 0, so the timer
  activates it): filters, matching against the 10-level view, EX_NEW + two
  EX_TRADE with fees. Per order, from a numba loop (the stage's own cost).
* ``market order (PaperExchange, python)``: the same through the wrapper
  (dispatch, record set-up, report copies): a tool's cost, not the stage's.
* ``BK_TOP N=...``: a top that changes only the best qtys, with N of our
  orders resting (GTC buys below the book: none crosses), per event. The
  top is merged into the view, then ``on_top`` scans the N orders.
* ``BK_TRADE N=... none eligible``: a public trade by a buying aggressor (only
  our sells could fill; all N are buys): the table scan.
* ``BK_DEPTH N=... queue_position``: a depth snapshot under the
  queue-position model: the view copy plus the queue estimate of each of our
  N orders (``min(queue_ahead, shown)``) and ``on_top``.

Each figure is the median of ``--repeat`` runs after one warm-up run. Timing
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
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from core.numba_cache import configure  # noqa: E402

configure()  # before numba is imported: the keyed cache dir

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402

from _machine import machine  # noqa: E402
from core.filters import N_COLS  # noqa: E402
from core.matching import QUEUE_POSITION, QUEUE_TRADE_THROUGH  # noqa: E402
from core.paper import (  # noqa: E402
    K_TAKER_FILLS,
    PaperExchange,
    alloc_paper_state,
    paper_on_book,
    paper_on_order,
    paper_on_timer,
    paper_room,
)
from core.records import (  # noqa: E402
    BK_DEPTH,
    BK_TOP,
    BK_TRADE,
    BOOK_EVENT,
    BOOK_VALID,
    DEPTH_LEVELS,
    EXEC_REPORT,
    FIXED_SCALE,
    ORD_NEW,
    ORDER_REQUEST,
    OT_LIMIT,
    OT_MARKET,
    SIDE_BUY,
    TIF_GTC,
)

S = FIXED_SCALE
TICK = S // 100
MID = 60_000 * S


def open_filters() -> np.ndarray:
    """A filter table that lets every order through (order types allowed, no filter flags): matching cost only."""
    t = np.zeros((1, N_COLS), np.int64)
    t[0, 22] = (1 << OT_LIMIT) | (1 << OT_MARKET) | (1 << 3)  # C_ORDER_TYPES: LIMIT, MARKET, LIMIT_MAKER
    return t


def depth_event(t_ns: int) -> np.ndarray:
    ev = np.zeros(1, BOOK_EVENT)
    e = ev[0]
    e["kind"] = BK_DEPTH
    e["state"] = BOOK_VALID
    e["recv_ns"] = t_ns
    e["d_bid_px"] = MID - TICK * np.arange(1, DEPTH_LEVELS + 1)
    e["d_ask_px"] = MID + TICK * np.arange(1, DEPTH_LEVELS + 1)
    e["d_bid_qty"] = S // 2
    e["d_ask_qty"] = S // 2
    return ev


@nb.njit(nogil=True, _nrt=False)  # a caller with NRT would incref/decref every array of the state per call
def _order_loop(st, reqs, n, out, clock):
    """n orders at clock[0], clock[0]+1, ... (the paper clock must never go back: requests keep their order)."""
    acc = 0
    t = clock[0]
    for i in range(n):
        r = reqs[i % reqs.shape[0]]
        r.client_order_id = t + i + 1
        acc += paper_on_order(st, r, t + i, out, 0)
        acc += paper_on_timer(st, t + i, out, 0)
    clock[0] = t + n
    return acc


@nb.njit(nogil=True, _nrt=False)  # a caller with NRT would incref/decref every array of the state per call
def _book_loop(st, evs, n, out):
    acc = 0
    m = evs.shape[0]
    for i in range(n):
        acc += paper_on_book(st, evs[i % m], np.int64(i), out, 0)
    return acc


def timed(fn, count: int, repeat: int) -> float:
    fn()  # warm-up (compile, caches)
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        runs.append((time.perf_counter_ns() - t0) / count)
    return statistics.median(runs)


def market_rows(n_orders: int, repeat: int) -> list[tuple[str, float]]:
    st = alloc_paper_state(1, open_filters(), capacity=64, taker_fee=100_000)
    out = np.zeros(paper_room(st), EXEC_REPORT)
    ev = depth_event(0)
    _book_loop(st, ev, 1, out)
    req = np.zeros(1, ORDER_REQUEST)
    req[0]["action"] = ORD_NEW
    req[0]["order_type"] = OT_MARKET
    req[0]["side"] = SIDE_BUY
    req[0]["qty"] = S // 2 + S // 4  # the whole best ask level (0.5) and half of the next
    clock = np.ones(1, np.int64)

    def run():
        before = int(st.cnt[K_TAKER_FILLS])
        _order_loop(st, req, n_orders, out, clock)
        if int(st.cnt[K_TAKER_FILLS]) - before != 2 * n_orders:
            raise RuntimeError("bench orders did not each fill on two levels: the figure would be meaningless")

    rows = [("market order, 2-level walk (numba loop)", timed(run, n_orders, repeat))]
    n_py = min(n_orders, 20_000)
    ex = PaperExchange(1, open_filters(), taker_fee=100_000, capacity=64)
    ex.depth(0, [(MID - TICK * i, S // 2) for i in range(1, 11)], [(MID + TICK * i, S // 2) for i in range(1, 11)],
             now_ns=0)

    def py_orders():
        t = int(clock[0])
        for i in range(t, t + n_py):
            ex.new_order(now_ns=i, symbol=0, side=SIDE_BUY, order_type=OT_MARKET, qty=S // 2 + S // 4)
            ex.timer(i)
        clock[0] = t + n_py

    rows.append(("market order (PaperExchange, python)", timed(py_orders, n_py, repeat)))
    return rows


def resting_state(n_rest: int, queue_model: int):
    st = alloc_paper_state(1, open_filters(), capacity=n_rest + 16, queue_model=queue_model)
    out = np.zeros(paper_room(st), EXEC_REPORT)
    _book_loop(st, depth_event(0), 1, out)
    clock = np.ones(1, np.int64)
    req = np.zeros(1, ORDER_REQUEST)
    r = req[0]
    r["action"] = ORD_NEW
    r["order_type"] = OT_LIMIT
    r["tif"] = TIF_GTC
    r["side"] = SIDE_BUY
    r["qty"] = 10**15  # never completes
    for j in range(n_rest):
        r["client_order_id"] = j + 1
        r["price"] = MID - TICK * (1 + j % DEPTH_LEVELS)  # on the shown bid levels: queue estimates apply
        _order_loop(st, req, 1, out, clock)
    if int(st.hdr[0]["n_open"]) != n_rest:
        raise RuntimeError(f"expected {n_rest} resting orders, got {int(st.hdr[0]['n_open'])}")
    return st, out


def book_rows(n_events: int, repeat: int) -> list[tuple[str, float]]:
    rows = []
    for n_rest in (0, 10, 100, 1000):
        st, out = resting_state(n_rest, QUEUE_TRADE_THROUGH)
        tops = np.zeros(2, BOOK_EVENT)
        for i in range(2):
            tops[i]["kind"] = BK_TOP
            tops[i]["state"] = BOOK_VALID
            tops[i]["top_bid_px"] = MID - TICK
            tops[i]["top_ask_px"] = MID + TICK
            tops[i]["top_bid_qty"] = S // 2 + i
            tops[i]["top_ask_qty"] = S // 2 + i
        n_ev = max(1000, n_events // max(1, n_rest // 10))
        rows.append((f"BK_TOP N={n_rest}", timed(lambda: _book_loop(st, tops, n_ev, out), n_ev, repeat)))
        trades = np.zeros(1, BOOK_EVENT)
        trades[0]["kind"] = BK_TRADE
        trades[0]["state"] = BOOK_VALID
        trades[0]["tr_px"] = MID + TICK
        trades[0]["tr_qty"] = S
        rows.append((f"BK_TRADE N={n_rest} none eligible",
                     timed(lambda: _book_loop(st, trades, n_ev, out), n_ev, repeat)))
        st, out = resting_state(n_rest, QUEUE_POSITION)
        deps = np.concatenate([depth_event(0), depth_event(0)])
        deps[1]["d_bid_qty"] = S // 2 + 1
        rows.append((f"BK_DEPTH N={n_rest} queue_position",
                     timed(lambda: _book_loop(st, deps, n_ev, out), n_ev, repeat)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=100_000, help="orders per timed run")
    ap.add_argument("--events", type=int, default=100_000, help="book events per timed run (fewer for large N)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per row (the median is reported)")
    ap.add_argument("--json", action="store_true", help="print {machine, rows: [{name, ns_per_op}]} as JSON")
    args = ap.parse_args(argv)
    rows = [{"name": n, "ns_per_op": round(v, 1)} for n, v in
            market_rows(args.orders, args.repeat) + book_rows(args.events, args.repeat)]
    if args.json:
        print(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    else:
        width = max(len(r["name"]) for r in rows)
        print(f"{'case':<{width}}  {'ns/op':>10}")
        for r in rows:
            print(f"{r['name']:<{width}}  {r['ns_per_op']:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
