"""The exit summary (text and JSON) and the live view the metrics endpoint reads.

Both come from the topology: rings with their consumers by stage, processes
with their restarts and idle fraction, stages with their counters, latency
per hop in ``core.topology.HOPS`` order.
"""

from __future__ import annotations

import time

from core.config import RINGS
from core.latency import LatencySet
from core.topology import HOPS, VENUE_HOPS

VIEW_PERIOD_S = 0.5  # how often the metrics view of the processes (and merged latency) is rebuilt


def _idle_fraction(p) -> float | None:
    """Share of its running time a stage process spent in its idle strategy.

    None for the simulator, and for a process that never used its idle
    strategy: the feed on a socket sleeps in epoll, which the strategy does not
    see, so 0% would read as "always busy".
    """
    return round(min(1.0, p.idle_ns / p.flow_ns), 4) if p.flow_ns > 0 and p.stages and p.idle_ns else None


def merged_latency(procs) -> LatencySet:
    merged = LatencySet()
    for p in procs.values():
        merged.merge(p.lat_done).merge(LatencySet.from_wire(p.lat_wire))
    return merged


def ordered_hops(summary: dict) -> dict:
    order = {h: i for i, h in enumerate(HOPS + VENUE_HOPS)}
    return dict(sorted(summary.items(), key=lambda kv: order.get(kv[0], len(order))))


def build_view(sup) -> dict:
    """What the metrics collector reports (``processes.metrics``): replaced whole, never mutated.

    ``latency_hists`` holds the merged per-hop ``core.latency`` arrays (fresh
    copies, ordered like ``latency``); ``signal``/``risk``/``execution``/
    ``feed`` the stages' counters; ``pnl_method`` the method risk's P&L
    counters are in.
    """
    procs = {}
    for p in sup.procs.values():
        procs[p.name] = {"up": p.state == "running" and p.alive, "restarts": len(p.restarts),
                         "last_hb": p.last_hb if p.state == "running" else 0.0,
                         "recovery_ms": p.recovery_ms[-1] if p.recovery_ms else None,
                         "via_spare": p.via_spare, "stages": list(p.stages), "idle_fraction": _idle_fraction(p)}
    sp = sup.spare

    def counters(stage: str) -> dict:
        return next((p.stage_counters(stage) for p in sup.procs.values() if stage in p.stages), {})

    merged = merged_latency(sup.procs)
    latency = ordered_hops(merged.summary())
    return {"processes": procs, "latency": latency,
            "latency_hists": {hop: merged.hists[hop].h for hop in latency},
            "signal": counters("signal"), "risk": counters("risk"), "execution": counters("execution"),
            "feed": counters("feed"), "book": counters("book"), "pnl_method": sup.cfg.risk.pnl_method,
            "spares": {"started": sup.spare_stats["started"], "used": sup.spare_stats["used"],
                       "failed": sup.spare_stats["failed"], "ready": int(sp is not None and bool(sp.ready_at))}}


def build_summary(sup) -> dict:
    rings = {}
    for name, ring in sup.rings.items():
        st = ring.stats()
        consumers = RINGS[name][2]
        rings[name] = {
            "capacity": st.capacity, "policy": st.policy, "published": st.published,
            "consumed": {c: st.consumed[i] for i, c in enumerate(consumers)},
            "drops": sum(st.lost), "laps": sum(st.lapped), "stalls": st.stalls,
        }
    processes, stages = {}, {}
    for p in sup.procs.values():
        processes[p.name] = {"stages": list(p.stages), "restarts": len(p.restarts), "recovery_ms": p.recovery_ms,
                             "crash_to_ready_ms": p.crash_to_ready_ms, "restarts_via_spare": p.via_spare,
                             "exit_codes": p.exits, "idle_fraction": _idle_fraction(p), "counters": p.counters(),
                             "cpus": list(sup.cfg.placement[p.name].cpus),
                             "idle": sup.cfg.placement[p.name].idle.strategy, "idle_info": p.idle_info}
        for st in p.stages:
            stages[st] = {"process": p.name, "counters": p.stage_counters(st)}
    merged = merged_latency(sup.procs)
    latency = {hop: {k: s[k] for k in ("count", "p50_us", "p90_us", "p99_us", "p999_us", "max_us")}
               for hop, s in ordered_hops(merged.summary()).items()}
    ex = (stages.get("execution") or {}).get("counters") or {}
    paper_rejects = sum(v for k, v in ex.items() if k.startswith("paper_rejected_"))
    execution = {"orders_sent": ex.get("venue_sent", ex.get("paper_requests", 0)),
                 "fills": ex.get("venue_fills", ex.get("paper_taker_fills", 0) + ex.get("paper_maker_fills", 0)),
                 "rejects": ex.get("venue_rejects", paper_rejects), "unknown_outcomes": ex.get("venue_unknown_outcomes", 0),
                 "adopted": ex.get("venue_adopted", 0), "duplicate_client_ids": _duplicate_client_ids(sup),
                 "reconciled": bool(ex.get("reconciled", 0)), "journal_orders": ex.get("journal_orders", 0),
                 "journal_reports": ex.get("journal_reports", 0),
                 "positions_checked": bool(ex.get("positions_checked", 0)),
                 "position_mismatches": ex.get("position_mismatches")}
    return {"instance": sup.cfg.instance, "execution": execution, "mode": sup.cfg.mode, "exit_code": sup.exit_code,
            "cold_start_ms": sup.cold_start_ms, "cold_cache": sup.cold_cache, "flow_s": sup.flow_s,
            "run_s": round(time.monotonic() - sup.t_start, 3),
            "placement": {n: list(p.stages) for n, p in sup.cfg.placement.items() if p.stages},
            "rings": rings, "processes": processes, "stages": stages, "latency": latency,
            # the merged histograms themselves (core.latency wire form: sparse bucket counts), for CDFs
            "latency_hists": ordered_hops(merged.to_wire()),
            "restarts": sum(len(p.restarts) for p in sup.procs.values()),
            "spares": {k: (list(v) if isinstance(v, list) else v) for k, v in sup.spare_stats.items()},
            "metrics_port": sup.metrics_port}


def _duplicate_client_ids(sup) -> int | None:
    """Client order ids the journal saw twice (must be 0); None when there is no journal to read."""
    try:
        from processes.journal import Journal, journal_path

        path = journal_path(sup.cfg)
        if not path.exists():
            return None
        j = Journal(path)
        try:
            return int(j.duplicate_client_ids())
        finally:
            j.close()
    except Exception:  # noqa: BLE001 - a summary never fails on the journal
        return None


def format_summary(s: dict) -> str:
    lines = [f"== ringtrader summary: instance {s['instance']} mode {s['mode']} exit {s['exit_code']} "
             f"run {s['run_s']} s cold start {s['cold_start_ms']} ms"
             f"{' (numba cache was cold: kernels compiled)' if s.get('cold_cache') else ''} =="]
    lines.append("placement: " + "  ".join(f"{n}=[{','.join(st)}]" for n, st in s.get("placement", {}).items()))
    lines.append(f"{'ring':<9}{'published':>11}  {'consumed (per consumer)':<44}{'drops':>7}{'laps':>6}{'stalls':>8}")
    for name, r in s["rings"].items():
        cons = " ".join(f"{c}={n}" for c, n in r["consumed"].items())
        lines.append(f"{name:<9}{r['published']:>11}  {cons:<44}{r['drops']:>7}{r['laps']:>6}{r['stalls']:>8}")
    lines.append(f"restarts: {s.get('restarts', 0)}  processes: " + ", ".join(
        f"{n} restarts={p['restarts']}" + (f" recovery_ms={p['recovery_ms']}" if p["recovery_ms"] else "")
        + (f" idle={p['idle_fraction']:.0%}" if p.get("idle_fraction") is not None else "")
        for n, p in s["processes"].items()))
    bk = (s["stages"].get("book") or {}).get("counters") or {}
    if "books_valid" in bk:  # the book stage's state at exit: valid books, what it published, resyncs
        lines.append("book: " + " ".join(f"{k}={bk.get(k, 0)}" for k in (
            "books_valid", "books", "tops", "depth_snapshots", "trades", "bars_closed", "resyncs_requested",
            "chain_breaks", "crossed", "lapped", "stale_dropped")))
    sg = (s["stages"].get("signal") or {}).get("counters") or {}
    if "read" in sg:  # the signal stage: signals by strategy and reason, suppressions by strategy and reason
        lines.append(f"signal: read={sg.get('read', 0)} bars={sg.get('bars', 0)} signals={sg.get('signals', 0)}")
        by: dict[str, list[str]] = {}
        for key, v in sg.items():
            parts = key.split(".")
            if len(parts) == 3 and parts[0] in ("signals", "suppressed"):
                by.setdefault(parts[1], []).append(f"{'-' if parts[0] == 'suppressed' else ''}{parts[2]}={v}")
        for strat, items in by.items():
            sig = [i for i in items if not i.startswith("-")]
            sup = [i[1:] for i in items if i.startswith("-")]
            lines.append(f"  {strat}: signals " + " ".join(sig) + ("  suppressed " + " ".join(sup) if sup else ""))
    rk = (s["stages"].get("risk") or {}).get("counters") or {}
    if "approved" in rk:  # the risk stage: decisions, denials by reason, positions and P&L per instrument
        from core.risk_kernels import STATE_NAMES, TRIP_NAMES

        state = STATE_NAMES[rk.get("state", 0)] if rk.get("state", 0) < len(STATE_NAMES) else rk.get("state")
        trip = rk.get("trip", 0)
        lines.append(f"risk: state={state}{f' (breaker: {TRIP_NAMES[trip]})' if trip else ''} "
                     + " ".join(f"{k}={rk.get(k, 0)}" for k in ("signals", "approved", "denied", "exits",
                                                                   "cancel_all", "fills", "rejects")))
        denied = {k.split(".", 1)[1]: v for k, v in rk.items() if k.startswith("denied.")}
        if denied:
            lines.append("  denied by reason: " + " ".join(f"{k}={v}" for k, v in sorted(denied.items())))
        syms = sorted({k.split(".", 1)[1] for k in rk if k.startswith("position.")})
        for sym in syms:
            def fx(key):
                v = rk.get(f"{key}.{sym}", 0)
                return f"{v / 1e8:.8f}".rstrip("0").rstrip(".") if v else "0"
            lines.append(f"  {sym}: position={fx('position')} avg_entry={fx('avg_entry')} "
                         f"realized={fx('realized')} net={fx('realized_net')} unrealized={fx('unrealized')}")
    ex = s.get("execution") or {}
    if ex:
        lines.append("execution: " + " ".join(f"{k}={ex.get(k)}" for k in (
            "orders_sent", "fills", "rejects", "unknown_outcomes", "adopted", "duplicate_client_ids", "reconciled",
            "journal_orders", "journal_reports", "positions_checked", "position_mismatches")))
    sp = s.get("spares") or {}
    if sp.get("enabled"):
        lines.append(f"spares: started={sp['started']} ready={sp['ready']} used={sp['used']} failed={sp['failed']}"
                     f" warm_ms={sp['warm_ms']}")
    lines.append(f"{'latency (us)':<18}{'count':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'p99.9':>10}{'max':>11}")
    for hop, h in s["latency"].items():
        lines.append(f"{hop:<18}{h['count']:>10}{h['p50_us']:>10.1f}{h['p90_us']:>10.1f}{h['p99_us']:>10.1f}"
                     f"{h['p999_us']:>10.1f}{h['max_us']:>11.1f}")
    return "\n".join(lines)
