#!/usr/bin/env python3
"""Benchmark: core/pnl.py, ns per fill of ``pnl_apply`` (FIFO, LIFO and average all updated).

    .venv/bin/python scripts/bench_pnl.py [--fills 200000] [--symbols 8] [--repeat 5] [--json]

Rows:

* ``pnl_apply numba loop``: a stream of fills over ``--symbols`` symbols, the
  kernel called from a numba loop (its own cost, as the risk stage will call
  it). The stream is mixed: about half the fills open or add (a new lot: a
  price random walk with a 0.01 tick, so lots rarely merge), the others
  reduce, close or cross zero (one to three lots closed per fill in each of
  FIFO and LIFO, plus the average method's two 128/64 divisions on a partial
  close); a third pay a base commission, a third a quote fee, a third BNB.
* ``pnl_apply closing fills only`` / ``opening fills only``: the two halves
  of that cost, from streams of one kind.
* ``pnl_total numba loop``: the summary a loss limit reads per decision (net
  realized + unrealized at a mark, one method, rounded to 1e-8).
* ``PnlBook.apply_fill``: the Python wrapper per fill (dispatch and checks).

Each run starts from a fresh copy of the state (copied outside the timing).
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.numba_cache import configure  # noqa: E402

configure()  # before numba is imported: the keyed cache dir

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402

from core.pnl import (  # noqa: E402
    COMM_BASE,
    COMM_OTHER,
    COMM_QUOTE,
    METHOD_FIFO,
    PNL_OK,
    PnlBook,
    PnlState,
    alloc_pnl_state,
    pnl_apply,
    pnl_total,
)
from core.records import FIXED_SCALE, SIDE_BUY, SIDE_SELL  # noqa: E402

S = FIXED_SCALE
TICK = S // 100
LOT_CAPACITY = 4096
CLOSE_QTY = 4 * S // 1000  # 0.004


def make_fills(rng: np.random.Generator, n: int, n_symbols: int, kind: str = "mixed"):
    """Arrays (sym, side, px, qty, commission, asset) of a realistic stream for ``kind``.

    mixed: per symbol, the side is chosen against the position with
    probability 0.5 + |pos| / (2 * 20 units) (mean-reverting, so lots stay
    well under LOT_CAPACITY); open / close: every fill adds to / reduces the
    position (close streams start from positions built by ``prefill``).
    """
    sym = rng.integers(0, n_symbols, n).astype(np.int64)
    side = np.empty(n, np.int64)
    px = np.empty(n, np.int64)
    qty = rng.integers(S // 1000, 2 * S, n).astype(np.int64)  # 0.001 .. 2 units
    comm_kind = rng.integers(0, 3, n)
    asset = np.where(comm_kind == 0, COMM_QUOTE, np.where(comm_kind == 1, COMM_BASE, COMM_OTHER)).astype(np.int64)
    comm = np.where(asset == COMM_BASE, qty // 1000, np.where(asset == COMM_QUOTE, 6 * S // 100, S // 100_000))
    comm = comm.astype(np.int64)
    mid = np.full(n_symbols, 60_000 * S, np.int64)
    pos = np.zeros(n_symbols, np.int64)
    u = rng.random(n)
    steps = rng.integers(-3, 4, n) * TICK
    for i in range(n):
        s = sym[i]
        mid[s] += steps[i]
        px[i] = mid[s]
        p = pos[s]
        if kind == "open":
            side[i] = SIDE_BUY
        elif kind == "close":
            side[i] = SIDE_SELL
            qty[i] = CLOSE_QTY
            asset[i] = COMM_QUOTE
        else:
            against = 0.5 + min(0.45, abs(p) / (40 * S))
            if p == 0:
                side[i] = SIDE_BUY if u[i] < 0.5 else SIDE_SELL
            elif u[i] < against:
                side[i] = SIDE_SELL if p > 0 else SIDE_BUY
            else:
                side[i] = SIDE_BUY if p > 0 else SIDE_SELL
        delta = side[i] * qty[i] - (comm[i] if asset[i] == COMM_BASE else 0)
        pos[s] = p + delta
    return sym, side, px, qty, comm, asset


@nb.njit(nogil=True)
def _apply_loop(st, sym, side, px, qty, comm, asset):
    bad = 0
    for i in range(sym.shape[0]):
        if pnl_apply(st, sym[i], side[i], px[i], qty[i], comm[i], asset[i], 0) != PNL_OK:
            bad += 1
    return bad


@nb.njit(nogil=True)
def _total_loop(st, n, n_symbols, marks, fee_px):
    acc = np.int64(0)
    for i in range(n):
        s = i % n_symbols
        acc += pnl_total(st, s, METHOD_FIFO, marks[s] + (i & 7), fee_px)
    return acc


def fresh(template: PnlState) -> PnlState:
    return PnlState(*(a.copy() for a in template))


def timed_apply(template: PnlState, fills, repeat: int) -> tuple[float, int]:
    n = len(fills[0])
    st = fresh(template)
    _apply_loop(st, *fills)  # warm-up (compile)
    runs, bad = [], 0
    for _ in range(repeat):
        st = fresh(template)
        t0 = time.perf_counter_ns()
        bad = _apply_loop(st, *fills)
        runs.append((time.perf_counter_ns() - t0) / n)
    return statistics.median(runs), int(bad)


def run(n_fills: int, n_symbols: int, repeat: int) -> dict:
    rng = np.random.default_rng(7)
    empty = alloc_pnl_state(n_symbols, LOT_CAPACITY)
    rows = {}

    mixed = make_fills(rng, n_fills, n_symbols, "mixed")
    ns, bad = timed_apply(empty, mixed, repeat)
    rows["pnl_apply numba loop (mixed stream, all three methods)"] = {"ns_per_fill": round(ns, 1), "refused": bad}

    n_open = min(n_fills // 4, n_symbols * (LOT_CAPACITY // 2))  # every fill a new lot: stay under capacity
    opens = make_fills(rng, n_open, n_symbols, "open")
    ns, bad = timed_apply(empty, opens, repeat)
    rows["pnl_apply opening fills only"] = {"ns_per_fill": round(ns, 1), "refused": bad}

    # closing: start from long positions of lots of 0.01, then sell CLOSE_QTY (0.004) at a time, so each
    # sell closes 1-2 lots per book and never empties the position
    n_close = min(n_fills // 4, n_symbols * (LOT_CAPACITY - 1) * (S // 100) // CLOSE_QTY // 2)
    built = fresh(empty)
    per_sym = min(LOT_CAPACITY - 1, 2 * (n_close // n_symbols) * CLOSE_QTY // (S // 100) + 16)
    for s in range(n_symbols):
        for k in range(per_sym):
            pnl_apply(built, s, SIDE_BUY, 60_000 * S + k * TICK, S // 100, 0, COMM_QUOTE, 0)
    closes = make_fills(rng, n_close, n_symbols, "close")
    ns, bad = timed_apply(built, closes, repeat)
    rows["pnl_apply closing fills only (1-2 lots per book, avg partial close)"] = {
        "ns_per_fill": round(ns, 1), "refused": bad}

    st = fresh(empty)
    _apply_loop(st, *mixed)
    marks = np.full(n_symbols, 60_000 * S, np.int64)
    fee_px = np.array([600 * S] + [0] * (st.fees_other.shape[1] - 1), np.int64)
    _total_loop(st, 1000, n_symbols, marks, fee_px)
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        _total_loop(st, n_fills, n_symbols, marks, fee_px)
        runs.append((time.perf_counter_ns() - t0) / n_fills)
    rows["pnl_total numba loop (net realized + unrealized, FIFO)"] = {"ns_per_call": round(statistics.median(runs), 1)}

    book = PnlBook(n_symbols, lot_capacity=LOT_CAPACITY)
    k = min(20_000, n_fills)
    args = [(int(mixed[0][i]), int(mixed[1][i]), int(mixed[2][i]), int(mixed[3][i]), int(mixed[4][i]),
             int(mixed[5][i])) for i in range(k)]
    book.apply_fill(*args[0])
    book = PnlBook(n_symbols, lot_capacity=LOT_CAPACITY)
    t0 = time.perf_counter_ns()
    for a in args:
        book.apply_fill(*a)
    rows["PnlBook.apply_fill (Python wrapper)"] = {"ns_per_fill": round((time.perf_counter_ns() - t0) / k, 1)}
    return {"fills": n_fills, "symbols": n_symbols, "repeat": repeat, "lot_capacity": LOT_CAPACITY, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fills", type=int, default=200_000)
    ap.add_argument("--symbols", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args(argv)
    if args.fills < 100 or args.symbols < 1 or args.repeat < 1:
        ap.error("--fills >= 100, --symbols >= 1, --repeat >= 1")
    res = run(args.fills, args.symbols, args.repeat)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"core/pnl.py: {res['fills']} fills over {res['symbols']} symbols, median of {res['repeat']}")
        for name, row in res["rows"].items():
            figs = ", ".join(f"{k}={v}" for k, v in row.items())
            print(f"  {name:<72} {figs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
