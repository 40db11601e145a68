#!/usr/bin/env python3
"""Benchmark: the risk kernel's cost per decision, per fill, and the signal->orders hop.

    .venv/bin/python scripts/bench_risk.py [--n 200000] [--no-hop] [--json]

Rows (``--json``: a list of ``{"name", "ns"}``):

* ``risk decision, approved (all checks) + its final report``: ``core.risk_kernels.risk_on_signal``
  from a numba loop on an ACTIVE state with valid, fresh tops and a depth
  snapshot on two symbols: sizing, rounding to the lot, every check (state,
  book, clock, position, notional per symbol and gross, open positions, open
  orders, the 1 s / 10 s rate windows, price band, slippage walk, the venue
  filters) and the ORDER_REQUEST written. Decisions are 250 ms apart in the
  kernel's clock (4/s, under config/system.json's 5/s), so the rate windows
  hold what they would live. Each approved order is then finished by a
  CANCELED report (included) so the open-order table does not fill.
* ``risk decision, denied early (halted)``: the cheapest path.
* ``risk fill report``: ``risk_on_report`` with an EX_TRADE (partial fills of
  one open order): the open-order table plus ``core.pnl.pnl_apply`` (FIFO,
  LIFO, average).
* ``signals->risk hop p50/p99`` (unless ``--no-hop``): from
  ``scripts/latency_profile.py`` (small placement, synthetic source,
  2000 ev/s, 15 s): signal published -> its order published, in µs.

Target (risk issue): <= 1 µs per decision with all checks on. Timing only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from core.numba_cache import configure  # noqa: E402

configure()

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402

from core.config import load_config  # noqa: E402
from core.records import (  # noqa: E402
    BK_DEPTH,
    BK_TOP,
    BOOK_EVENT,
    BOOK_VALID,
    EX_CANCELED,
    EX_TRADE,
    EXEC_REPORT,
    FIXED_SCALE,
    ORDER_REQUEST,
    OS_CANCELED,
    OS_FILLED,
    SIDE_BUY,
    SIGNAL,
)
from core.risk_kernels import H_STATE, HALTED, risk_on_book, risk_on_report, risk_on_signal  # noqa: E402
from processes.risk import new_state  # noqa: E402

X = FIXED_SCALE


@nb.njit(cache=True)
def _book(st, evs, now):
    for i in range(evs.shape[0]):
        risk_on_book(st, evs[i], now)


@nb.njit(cache=True)
def _decide_loop(st, sig, orders, rep, n, t0, step_ns, with_report):
    ok = 0
    for i in range(n):
        now = t0 + i * step_ns
        sig[0].recv_ns = now
        if risk_on_signal(st, sig[0], orders[0], now) == 0:
            ok += 1
        if with_report:
            rep[0].client_order_id = orders[0].client_order_id
            risk_on_report(st, rep[0])
    return ok


@nb.njit(cache=True)
def _fill_loop(st, fill, n):
    for i in range(n):
        fill[0].trade_id = i
        risk_on_report(st, fill[0])


def _state(cfg, t0):
    s = new_state(cfg, 16).risk
    ev = np.zeros(4, BOOK_EVENT)
    for k, (sym, px) in enumerate(((0, 60000.0), (1, 3000.0))):
        t, d = ev[2 * k], ev[2 * k + 1]
        t["kind"], t["symbol"], t["state"] = BK_TOP, sym, BOOK_VALID
        t["top_bid_px"], t["top_ask_px"] = round(px * X), round((px + 0.01) * X)
        t["top_bid_qty"] = t["top_ask_qty"] = 2 * X
        d["kind"], d["symbol"], d["state"] = BK_DEPTH, sym, BOOK_VALID
        for j in range(10):
            d["d_bid_px"][j], d["d_ask_px"][j] = round((px - 0.01 * j) * X), round((px + 0.01 * (j + 1)) * X)
            d["d_bid_qty"][j] = d["d_ask_qty"][j] = X // 2
    ev["recv_ns"] = t0 + 10**15  # fresh for the whole run
    _book(s, ev, np.int64(t0))
    return s


def measure(n: int, repeats: int = 5) -> list[dict]:
    d = json.loads((ROOT / "config" / "system.json").read_text())
    d["risk"].update(max_staleness_ms=10**9, max_open_orders=8, max_position_size="1")
    from core.config import parse_config

    cfg = parse_config(d, host_cpus=None)
    sig = np.zeros(1, SIGNAL)
    sig["side"], sig["target_qty"], sig["strategy"] = SIDE_BUY, 100_000, 1
    orders = np.zeros(1, ORDER_REQUEST)
    cancel = np.zeros(1, EXEC_REPORT)
    cancel["exec_type"], cancel["status"] = EX_CANCELED, OS_CANCELED
    fill = np.zeros(1, EXEC_REPORT)
    fill["exec_type"], fill["status"], fill["side"] = EX_TRADE, OS_FILLED, SIDE_BUY
    fill["last_px"], fill["last_qty"] = 60000 * X, 100_000
    fill["status"] = 2  # PARTIALLY_FILLED: the order stays open, every report is a fill of 0.00001
    fill["last_qty"] = 1000
    t0, step = np.int64(1_000_000_000_000), np.int64(250_000_000)
    rows: dict[str, list[float]] = {k: [] for k in ("decide", "halted", "fill")}
    for r in range(repeats + 1):
        st = _state(cfg, t0)
        a = time.perf_counter_ns()
        ok = _decide_loop(st, sig, orders, cancel, n, t0, step, True)
        decide = (time.perf_counter_ns() - a) / n
        assert ok == n, f"only {ok} of {n} approved: the bench must measure the approved path"
        st = _state(cfg, t0)
        st.hdr[H_STATE] = HALTED
        a = time.perf_counter_ns()
        _decide_loop(st, sig, orders, cancel, n, t0, step, False)
        halted = (time.perf_counter_ns() - a) / n
        st = _state(cfg, t0)
        _decide_loop(st, sig, orders, cancel, 1, t0, step, False)  # one open order to fill
        fill["client_order_id"] = orders[0]["client_order_id"]
        a = time.perf_counter_ns()
        _fill_loop(st, fill, n)
        filled = (time.perf_counter_ns() - a) / n
        if r:
            rows["decide"].append(decide)
            rows["halted"].append(halted)
            rows["fill"].append(filled)
    med = {k: statistics.median(v) for k, v in rows.items()}
    return [
        {"name": "risk decision, approved (all checks) + its final report", "ns": round(med["decide"], 1)},
        {"name": "risk fill report (open order + P&L, three methods)", "ns": round(med["fill"], 1)},
        {"name": "risk decision, denied early (halted)", "ns": round(med["halted"], 1)},
    ]


def hop() -> list[dict]:
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "latency_profile.py"), "--placements", "small",
                        "--seconds", "15", "--json"], capture_output=True, text=True, timeout=900, cwd=ROOT)
    if p.returncode != 0:
        return [{"name": "signals->risk hop", "ns": None, "error": (p.stderr or p.stdout)[-500:]}]
    h = json.loads(p.stdout)["placements"]["small"]["latency"].get("signals->risk") or {}
    return [{"name": "signals->risk hop p50 (us)", "ns": None, "us": h.get("p50_us"), "count": h.get("count")},
            {"name": "signals->risk hop p99 (us)", "ns": None, "us": h.get("p99_us")}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--no-hop", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    load_config(ROOT / "config" / "system.json", host_cpus=None)
    rows = measure(args.n)
    if not args.no_hop:
        rows += hop()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        v = r.get("ns")
        print(f"{r['name']:<58}{'' if v is None else f'{v:>10.1f} ns'}{'  ' + str(r['us']) + ' us' if 'us' in r else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
