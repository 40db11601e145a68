#!/usr/bin/env python3
"""The execution journal in figures: orders, fills, P&L by method, slippage, latency, client-id checks.

    .venv/bin/python scripts/report.py --journal PATH [--method fifo|lifo|average] [--json]

Reads a journal written by ``processes/journal.py`` (SQLite, WAL; safe while
the writer runs: it reads a consistent snapshot and takes no write lock).

Sections
--------
* orders: requests by action and state, by origin, denials by reason
  (``core.risk_kernels.DENY_NAMES``), requests sent, orders still open;
* fills: per symbol, count, bought and sold quantity, maker fills,
  commissions by asset; duplicate trade reports ignored, stale reports;
* pnl: per symbol under ``--method`` (default fifo), through core/pnl.py
  (``Journal.positions``) and printed with scripts/pnl_report.py's
  formatting. Commissions in an asset other than base or quote are listed as
  ``OTHER`` and left out of the net figure (the journal does not know their
  price); there is no mark, so no unrealized P&L;
* slippage (bps, positive = worse than the reference): per fill against the
  order's ``ref_px`` (the arrival mid when risk decided); per order, the
  fills' VWAP against ``ref_px``, and that minus risk's pre-trade estimate
  ``est_slip_bps`` (positive = worse than estimated). mean, median, p90;
* latency (ms, CLOCK_MONOTONIC of one host): order to ack = first venue
  answer published - risk published the request; send to ack = the same
  from the send. p50 / p90 / p99, nearest rank;
* checks: duplicate client order ids (must be 0), ids used without a
  reservation (must be 0), ids reserved above the last journaled one.

Exit codes: 0 report written; 2 the journal is missing, not a journal, or
corrupt (one message, no traceback); 3 the report is written but the journal
holds duplicate client order ids.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from core.numba_cache import configure  # noqa: E402

configure()  # before numba is imported: the keyed cache dir

import pnl_report  # noqa: E402  (its formatting: one copy of how P&L is printed)
from core.errors import ConfigError  # noqa: E402
from core.fixedpoint import from_fixed  # noqa: E402
from core.pnl import METHOD_IDS  # noqa: E402
from processes.journal import Journal, JournalError, slippage_bps  # noqa: E402

EXIT_OK = 0
EXIT_BAD_JOURNAL = 2
EXIT_DUPLICATE_IDS = 3


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------
def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least p% of the values at or below it)."""
    if not values:
        return None
    s = sorted(values)
    k = max(1, math.ceil(p / 100 * len(s)))
    return s[k - 1]


def summary(values: list[float], pcts=(50, 90, 99)) -> dict:
    out: dict = {"n": len(values)}
    for p in pcts:
        out[f"p{p}"] = percentile(values, p)
    return out


def slip_summary(values: list[float]) -> dict:
    return {"n": len(values), "mean": statistics.fmean(values) if values else None,
            "median": statistics.median(values) if values else None, "p90": percentile(values, 90)}


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------
def orders_section(j: Journal) -> dict:
    by_state: dict = {}
    for action, state, n in j.query("SELECT coalesce(action, 'UNKNOWN'), state, count(*) FROM orders "
                                    "GROUP BY 1, 2 ORDER BY 1, 2"):
        by_state.setdefault(action, {})[state] = n
    by_origin: dict = {}
    for origin, action, n in j.query("SELECT coalesce(origin, 'UNKNOWN'), coalesce(action, 'UNKNOWN'), count(*) "
                                     "FROM orders GROUP BY 1, 2 ORDER BY 1, 2"):
        by_origin.setdefault(origin, {})[action] = n
    denials = {r: n for r, n in j.query("SELECT reason_name, count(*) FROM orders WHERE action = 'DENIED' "
                                        "GROUP BY 1 ORDER BY 2 DESC, 1")}
    return {"by_state": by_state, "by_origin": by_origin, "denials": denials, "sent": j.orders_sent_count(),
            "open": len(j.open_orders()),
            "rejects": {str(c): n for c, n in j.query("SELECT reject_code, count(*) FROM orders WHERE state = "
                                                      "'REJECTED' GROUP BY 1 ORDER BY 2 DESC")}}


def fills_section(j: Journal) -> dict:
    by_symbol = {}
    for sym, n, bought, sold, maker in j.query(
            "SELECT symbol, count(*), sum(CASE WHEN side = 'BUY' THEN qty ELSE 0 END), "
            "sum(CASE WHEN side = 'SELL' THEN qty ELSE 0 END), sum(is_maker) FROM fills GROUP BY 1 ORDER BY 1"):
        by_symbol[sym] = {"fills": n, "bought": from_fixed(bought or 0), "sold": from_fixed(sold or 0),
                          "maker": maker, "commission": {}}
    for sym, asset, c in j.query("SELECT symbol, commission_asset, sum(commission) FROM fills GROUP BY 1, 2 "
                                 "ORDER BY 1, 2"):
        if c:
            by_symbol[sym]["commission"][asset] = from_fixed(c)
    notes = dict(j.query("SELECT note, count(*) FROM events WHERE note IS NOT NULL GROUP BY 1"))
    return {"count": sum(v["fills"] for v in by_symbol.values()), "by_symbol": by_symbol,
            "duplicate_reports_ignored": notes.get("duplicate", 0), "stale_reports": notes.get("stale", 0)}


def pnl_section(j: Journal, method: str) -> dict:
    """symbol -> figures in the shape of pnl_report.run(), so its to_json/to_text print them."""
    out = {}
    for sym, snap in j.positions(method).items():
        try:
            base, quote = pnl_report.split_symbol(sym, None)
        except ConfigError:
            base, quote = "base", "quote"
        names = {"quote": quote, "base": base, 0: "OTHER"}
        out[sym] = {
            "base": base, "quote": quote, "position": snap["position"], "avg_entry": snap["avg_entry"],
            "realized_gross": snap["realized_gross"],
            "fees": {names[k]: v for k, v in snap["fees"].items() if v != 0},
            "fees_quote": snap["fees_quote"], "fees_unpriced": [names[k] for k in snap["fees_unpriced"]],
            "realized_net": snap["realized_net"], "unrealized": snap["unrealized"], "trades": snap["trades"],
        }
    return out


def slippage_section(j: Journal) -> dict:
    per_fill = [r[0] for r in j.query("SELECT slip_bps FROM fills WHERE slip_bps IS NOT NULL")]
    per_order, vs_est = [], []
    for side, ref, est, quote_units, qty in j.query(
            "SELECT o.side, o.ref_px, o.est_slip_bps, sum(f.px * f.qty * 1.0), sum(f.qty) FROM orders o "
            "JOIN fills f ON f.client_order_id = o.client_order_id WHERE o.ref_px > 0 GROUP BY o.id"):
        if not qty:
            continue
        s = slippage_bps(side, quote_units / qty, ref)  # the fills' VWAP (float: analytics)
        if s is None:
            continue
        per_order.append(s)
        if est is not None:
            vs_est.append(s - est)
    return {"fills_vs_ref": slip_summary(per_fill), "orders_vs_ref": slip_summary(per_order),
            "orders_vs_estimate": slip_summary(vs_est)}


def latency_section(j: Journal) -> dict:
    o2a = [r[0] / 1e6 for r in j.query("SELECT ack_ns - decided_ns FROM orders WHERE ack_ns IS NOT NULL AND "
                                       "decided_ns IS NOT NULL")]
    s2a = [r[0] / 1e6 for r in j.query("SELECT ack_ns - sent_ns FROM orders WHERE ack_ns IS NOT NULL AND "
                                       "sent_ns IS NOT NULL")]
    return {"order_to_ack_ms": summary(o2a), "send_to_ack_ms": summary(s2a)}


def checks_section(j: Journal) -> dict:
    instances = [r[0] for r in j.query("SELECT DISTINCT instance FROM orders ORDER BY 1")]
    reserved = [r[0].split("/", 1)[1] for r in j.query("SELECT key FROM meta WHERE key LIKE 'cid_hwm/%'")]
    per = {}
    for inst in sorted(set(instances) | set(reserved)):
        ids = j.unjournaled_ids(inst)
        per[inst] = {"id_high_water": j.id_high_water(inst), "max_journaled_id": j.max_cid(inst),
                     "unreserved_ids": j.unreserved_ids(inst), "reserved_unjournaled": len(ids)}
    return {"duplicate_client_ids": j.duplicate_client_ids(), "instances": per}


def build(j: Journal, method: str, integrity: str | None = None) -> dict:
    counts = {t: j.query(f"SELECT count(*) FROM {t}")[0][0] for t in ("orders", "fills", "events")}
    return {"journal": {"path": str(j.path), "integrity": integrity or j.integrity_check(), **counts},
            "orders": orders_section(j), "fills": fills_section(j), "method": method, "pnl": pnl_section(j, method),
            "slippage_bps": slippage_section(j), "latency": latency_section(j), "checks": checks_section(j)}


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
def to_json(rep: dict) -> dict:
    out = dict(rep)
    out["pnl"] = pnl_report.to_json(rep["pnl"])
    return out


def _f(v, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def to_text(rep: dict) -> str:
    jn = rep["journal"]
    lines = [f"journal {jn['path']}  (integrity {jn['integrity']}; {jn['orders']} orders, {jn['fills']} fills, "
             f"{jn['events']} events)", "", "orders"]
    o = rep["orders"]
    for action, states in o["by_state"].items():
        lines.append(f"  {action:<12}" + ", ".join(f"{s} {n}" for s, n in states.items()))
    lines.append("  by origin   " + "; ".join(f"{org}: " + ", ".join(f"{a} {n}" for a, n in acts.items())
                                            for org, acts in o["by_origin"].items()))
    lines.append("  denials     " + (", ".join(f"{r} {n}" for r, n in o["denials"].items()) or "none"))
    lines.append(f"  sent {o['sent']}, open {o['open']}, rejects by code: "
                 + (", ".join(f"{c} {n}" for c, n in o["rejects"].items()) or "none"))
    f = rep["fills"]
    lines += ["", f"fills {f['count']} (duplicate reports ignored {f['duplicate_reports_ignored']}, "
                  f"stale reports {f['stale_reports']})"]
    for sym, v in f["by_symbol"].items():
        comm = ", ".join(f"{c} {a}" for a, c in v["commission"].items()) or "none"
        lines.append(f"  {sym:<12}{v['fills']} fills, bought {v['bought']}, sold {v['sold']}, maker {v['maker']}, "
                     f"commission {comm}")
    lines += ["", f"pnl ({rep['method']})"]
    lines.append(pnl_report.to_text(rep["pnl"], rep["method"], {}) if rep["pnl"] else "  no fills")
    lines += ["", "slippage (bps, positive = worse)"]
    for k, label in (("fills_vs_ref", "fill vs ref_px"), ("orders_vs_ref", "order VWAP vs ref_px"),
                     ("orders_vs_estimate", "order vs estimate")):
        s = rep["slippage_bps"][k]
        lines.append(f"  {label:<22}n {s['n']}, mean {_f(s['mean'])}, median {_f(s['median'])}, p90 {_f(s['p90'])}")
    lines += ["", "latency (ms)"]
    for k, label in (("order_to_ack_ms", "order to ack"), ("send_to_ack_ms", "send to ack")):
        s = rep["latency"][k]
        lines.append(f"  {label:<22}n {s['n']}, p50 {_f(s['p50'])}, p90 {_f(s['p90'])}, p99 {_f(s['p99'])}")
    c = rep["checks"]
    lines += ["", "checks", f"  duplicate client ids  {c['duplicate_client_ids']}"
                            + ("" if c["duplicate_client_ids"] == 0 else "  <-- MUST BE 0")]
    for inst, v in c["instances"].items():
        lines.append(f"  {inst}: high water {v['id_high_water']}, max journaled {v['max_journaled_id']}, "
                     f"unreserved {v['unreserved_ids']}, reserved not journaled {v['reserved_unjournaled']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--journal", required=True, type=Path, help="the journal database (execution.journal_dir)")
    ap.add_argument("--method", default="fifo", choices=sorted(METHOD_IDS), help="P&L lot matching / cost method")
    ap.add_argument("--json", action="store_true", help="one JSON object")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with Journal(args.journal, create=False) as j:
            integrity = j.integrity_check()
            if integrity != "ok":
                raise JournalError(f"journal {args.journal}: integrity check failed: {integrity}")
            rep = build(j, args.method, integrity)
    except JournalError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return EXIT_BAD_JOURNAL
    if args.json:
        print(json.dumps(to_json(rep), indent=1, default=str))
    else:
        print(to_text(rep))
    if rep["checks"]["duplicate_client_ids"]:
        print(f"report: {rep['checks']['duplicate_client_ids']} duplicate client order id(s) in the journal",
              file=sys.stderr)
        return EXIT_DUPLICATE_IDS
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
