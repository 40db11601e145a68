#!/usr/bin/env python
"""Latency and CPU profile of the whole system, per placement (a benchmark, not a test).

Runs the real supervisor (``python -m processes.supervisor``) once per
placement and reports, from the records' trace fields, per-hop and
end-to-end latency percentiles (hop names: ``core.topology.HOPS``), plus:

- ``wake_us``: the measured cost of one cross-process wake-up on this host:
  the p50 of a paced ping between two processes with the engine's configured
  idle strategy (``scripts/bench_wake.py``), and for every strategy with
  ``--wake-all``;
- ``ratio``: end_to_end p50 / wake_us p50 per placement. Target on the
  default (small-host) placement: <= 2, i.e. one wake-up plus kernel time
  per tick;
- ``--kill PROCESS``: kill -9 that process halfway and report crash detected
  -> replacement ready (``recovery_ms``) and crash -> ready;
- ``--cpu-rates 2000,50000``: CPU of every process (utime + stime from
  /proc, % of one CPU) with the simulator as the market at those rates and
  with the market paused (rate 0.001 events/s), summed over the system
  (the simulator, the exchange stand-in, is reported apart and not summed).

Placements (``--placements``): ``small`` = the config's own placement
(config/system.json: feed + one engine process); ``split`` = one process
per stage on the same CPUs with the same idle; ``dedicated`` =
config/dedicated-host.json (one isolated core per stage, busy-spin; needs
>= 8 CPUs, skipped otherwise).

  scripts/latency_profile.py --json                                  # small + split, synthetic 2k/s, 20 s
  scripts/latency_profile.py --placements small --kill engine --seconds 20
  scripts/latency_profile.py --placements small --cpu-rates 2000,50000 --seconds 20
  RINGTRADER__PLACEMENT__ENGINE__IDLE__STRATEGY=backoff scripts/latency_profile.py   # env overrides apply
  scripts/latency_profile.py --source sim --placements small --order-every 10 --transport ws   # tick-to-order
  scripts/latency_profile.py --source sim --placements small --order-every 10 --transport rest
  scripts/latency_profile.py --json --plot lat.png                   # also draw it (scripts/_plots.py)
  scripts/latency_profile.py --plot-from lp.json --plot lat.png      # redraw a saved --json result, no run

``--plot PATH``: one PNG with the per-hop latency CDFs of the first
placement and end_to_end per placement with each one's idle strategies
(log x in us; needs matplotlib, in the test extra).

Compare runs only on the same machine under the same load (the load average is printed).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from core.numba_cache import configure, ensure_compiled  # noqa: E402

configure()
from _machine import machine  # noqa: E402  (scripts/ is sys.path[0])
from core.config import STAGES, load_config  # noqa: E402
from core.topology import HOPS, VENUE_HOPS  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAUSED_RATE = 0.001  # events/s: the simulator's "market paused" (its rate must be > 0)


# ---------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------
def placement_config(base: dict, placement: str) -> dict | None:
    d = copy.deepcopy(base)
    if placement == "small":
        return d
    if placement == "split":
        pl = d["placement"]
        proto = next(v for k, v in pl.items() if isinstance(v, dict) and len(v.get("stages", ())) > 1)
        proto = {k: v for k, v in proto.items() if k != "stages"}
        d["placement"] = {st: {**proto, "stages": [st]} for st in STAGES}
        if "simulator" in pl:
            d["placement"]["simulator"] = pl["simulator"]
        return d
    if placement == "dedicated":
        ded = json.loads((ROOT / "config" / "dedicated-host.json").read_text())
        need = {c for p in ded["placement"].values() if isinstance(p, dict) for c in p.get("cpus", [])}
        if not need <= set(os.sched_getaffinity(0)):
            return None
        d["placement"] = ded["placement"]
        return d
    raise SystemExit(f"unknown placement {placement!r} (small, split, dedicated)")


def source_config(d: dict, source: str, rate: float, instance: str) -> dict:
    d = copy.deepcopy(d)
    d["instance"] = instance
    d["metrics"]["enabled"] = False
    if source == "synthetic":
        d["market_data"]["source"] = "synthetic"
        d["market_data"]["synthetic"]["rate_per_s"] = int(rate)
        d["placement"].setdefault("simulator", {"cpus": sorted(os.sched_getaffinity(0))})["enabled"] = False
    else:  # the local simulator as the market, over real sockets
        d["mode"] = "sim"
        d["market_data"]["source"] = "exchange"
        port = _free_port()
        sim = dict(d.get("simulator") or {})
        sim.update(port=port, rate=rate)
        d["simulator"] = sim
        d["market_data"].update(ws_url=f"ws://127.0.0.1:{port}", rest_url=f"http://127.0.0.1:{port}")
        d["placement"].setdefault("simulator", {"cpus": sorted(os.sched_getaffinity(0))})["enabled"] = True
    return d


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# one supervised run
# ---------------------------------------------------------------------------
def _cpu_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = stat.rpartition(")")[2].split()
    return int(f[11]) + int(f[12])  # utime + stime (fields 14 and 15)


def run_once(cfg: dict, seconds: float, kill: str | None = None, cpu_window: tuple[float, float] | None = None,
             scrape_every_s: float = 0.0) -> dict:
    """Run the supervisor on ``cfg``; returns its summary plus what was measured from outside.

    ``scrape_every_s`` > 0: the metrics endpoint is on and scraped that often during the run, as
    Prometheus would (``--metrics-scrape``); the scrape times are returned in ``_scrape_ms``."""
    if scrape_every_s > 0:
        cfg = copy.deepcopy(cfg)
        cfg["metrics"].update(enabled=True, host="127.0.0.1", port=0)
    with tempfile.TemporaryDirectory(prefix="ringtrader-profile-") as tmp:
        cfg_path = Path(tmp) / "profile.json"
        cfg_path.write_text(json.dumps(cfg))
        summary_path = Path(tmp) / "summary.json"
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, "-m", "processes.supervisor", "--config", str(cfg_path),
                              "--duration", str(seconds), "--summary-json", str(summary_path), "--quiet-summary"],
                             cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
        events, warnings = [], []

        def read():
            for line in p.stdout:
                if line.startswith("{"):
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    events.append(ev)
                    if ev.get("level") in ("WARNING", "ERROR"):
                        warnings.append(f"{ev.get('proc')}: {ev.get('msg')}")

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        cpu = None
        killed = None
        scrapes: list[float] = []
        try:
            go = _wait_for(events, p, lambda e: e.get("msg") == "all processes ready", 600)
            if go is not None and cpu_window is not None:
                cpu = _sample_cpu(events, p.pid, *cpu_window)
            if go is not None and scrape_every_s > 0:
                scraper = threading.Thread(target=_scrape_loop, args=(events, p, scrape_every_s, scrapes),
                                           daemon=True)
                scraper.start()
            if go is not None and kill:
                victim = next((e["pid"] for e in reversed(events) if e.get("msg") == f"{kill} ready"), None)
                if victim is None:
                    raise SystemExit(f"no process named {kill!r} in this placement")
                time.sleep(seconds / 2)
                os.kill(victim, signal.SIGKILL)
                killed = victim
            code = p.wait(timeout=seconds + 900)
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            reader.join(timeout=5)
        if code != 0 or not summary_path.exists():
            raise SystemExit(f"supervisor exited with {code}; warnings: {warnings[-10:]}")
        s = json.loads(summary_path.read_text())
        if os.environ.get("RINGTRADER_PROFILE_KEEP"):  # keep every run's full summary and log for a closer look
            keep = Path(os.environ["RINGTRADER_PROFILE_KEEP"])
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"{cfg['instance']}.summary.json").write_text(summary_path.read_text())
            (keep / f"{cfg['instance']}.log.jsonl").write_text("\n".join(json.dumps(e) for e in events))
    s["_wall_s"] = round(time.monotonic() - t0, 2)
    s["_warnings"] = warnings
    s["_cpu"] = cpu
    s["_killed_pid"] = killed
    s["_scrape_ms"] = scrapes
    return s


def _scrape_loop(events: list, p, every_s: float, out: list) -> None:
    """Scrape the run's /metrics every ``every_s`` until it exits; append each scrape's wall time (ms)."""
    import urllib.request

    ev = next((e for e in events if e.get("msg") == "metrics endpoint listening"), None)
    if ev is None:
        return
    url = f"http://127.0.0.1:{ev['port']}/metrics"
    while p.poll() is None:
        t = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                r.read()
            out.append((time.perf_counter() - t) * 1000)
        except OSError:
            pass
        time.sleep(every_s)


def _wait_for(events: list, p, pred, timeout: float):
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline and p.poll() is None:
        for e in events[seen:]:
            if pred(e):
                return e
        seen = len(events)
        time.sleep(0.05)
    return None


def _sample_cpu(events: list, sup_pid: int, skip_s: float, window_s: float) -> dict:
    """CPU % of one CPU per process over ``window_s``, after ``skip_s`` of warm-up."""
    time.sleep(skip_s)
    names = {e["pid"]: e.get("worker") for e in events if e.get("msg", "").startswith("spawned ") and "pid" in e}
    names.update({e["pid"]: "spare" for e in events if e.get("msg", "").startswith("spare ") and "pid" in e
                  and e.get("msg", "").endswith(" started")})
    names[sup_pid] = "supervisor"
    t1 = {pid: _cpu_ticks(pid) for pid in names}
    w1 = time.monotonic()
    time.sleep(window_s)
    t2 = {pid: _cpu_ticks(pid) for pid in names}
    wall = time.monotonic() - w1
    per = {}
    for pid, name in names.items():
        if t1[pid] is None or t2[pid] is None:
            continue
        per[name] = per.get(name, 0.0) + 100.0 * (t2[pid] - t1[pid]) / CLK_TCK / wall
    system = round(sum(v for k, v in per.items() if k != "simulator"), 1)
    return {"per_process_pct": {k: round(v, 1) for k, v in per.items()}, "system_pct": system,
            "window_s": round(wall, 2)}


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------
def wake(strategy: str, params: dict, n: int) -> dict:
    from bench_wake import measure_wake

    return measure_wake(strategy, params, n, 1000)


def _lat(s: dict) -> dict:
    return {h: s["latency"][h] for h in HOPS + VENUE_HOPS if h in s["latency"]}


def trading_config(d: dict, every: int, transport: str) -> dict:
    """``--order-every N``: the ``every_n`` strategy (BUY, then CLOSE, on every Nth top-of-book change of the
    first instrument) beside the trace probe, orders over ``transport``; risk's rate caps raised so the
    strategy's pace, not a denial, sets the order rate."""
    d = copy.deepcopy(d)
    sym = d["instruments"][0]["symbol"]
    d["signal"]["strategies"] = [
        {"name": "every_n", "type": "every_n", "symbols": [sym], "qty": "0.001", "params": {"every": every}},
        {"name": "latency_probe", "type": "trace_probe"}]
    d["risk"].update({"max_orders_per_s": 50, "max_orders_per_10s": 500, "max_open_orders": 16,
                      "max_daily_loss": "100000"})
    d["execution"]["transport"] = transport
    d["execution"]["rate_limit_per_second"] = 50
    return d


def profile(args) -> dict:
    ensure_compiled(args.config)  # one process compiles; the measured processes only load (see core.numba_cache)
    base = json.loads(Path(args.config).read_text())
    # environment overrides apply to what the supervisor loads; resolve the engine idle the same way
    resolved = load_config(args.config, host_cpus=None)
    eng = resolved.process_of("book")
    strategy = eng.idle.strategy
    params = {"spins": eng.idle.spins, "yields": eng.idle.yields, "min_sleep_us": eng.idle.min_sleep_us,
              "max_sleep_us": eng.idle.max_sleep_us}
    if strategy == "busy_spin":
        params = {}
    out = {"machine": machine(), "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "config": str(args.config), "source": args.source, "rate_per_s": args.rate,
           "seconds": args.seconds, "engine_idle": {"strategy": strategy, **params},
           "order_every": args.order_every or None, "transport": args.transport if args.order_every else None}
    out["wake_us"] = {"strategy": strategy, **wake(strategy, params, args.wake_n)}
    if args.wake_all:  # every strategy with bench_wake's defaults, the engine's own with its parameters
        from bench_wake import DEFAULT_PARAMS

        out["wake_all"] = {st: wake(st, params if st == strategy else p, args.wake_n)
                           for st, p in DEFAULT_PARAMS.items()}
    out["placements"] = {}
    for name in args.placements.split(","):
        d = placement_config(base, name)
        if d is None:
            out["placements"][name] = {"skipped": "needs the dedicated host's CPUs"}
            continue
        cfg = source_config(d, args.source, args.rate, f"profile-{os.getpid()}-{name}")
        if args.order_every:
            cfg = trading_config(cfg, args.order_every, args.transport)
        s = run_once(cfg, args.seconds, kill=args.kill if name == args.placements.split(",")[0] else None,
                     scrape_every_s=args.metrics_scrape)
        lat = _lat(s)
        e2e = lat.get("end_to_end", {})
        flow = s.get("flow_s") or args.seconds
        row = {"processes": s["placement"], "cold_start_ms": s["cold_start_ms"], "flow_s": flow,
               "end_to_end": {k: e2e.get(k) for k in ("count", "p50_us", "p90_us", "p99_us", "p999_us")},
               "ratio": round(e2e["p50_us"] / out["wake_us"]["p50_us"], 2) if e2e.get("p50_us") else None,
               "latency": lat,
               "idle": {n: p["idle"] for n, p in s["processes"].items() if p["stages"]},
               "throughput_per_s": {r: round(v["published"] / flow, 1) for r, v in s["rings"].items()},
               "idle_fraction": {n: p["idle_fraction"] for n, p in s["processes"].items()},
               "restarts": s["restarts"], "warnings": s["_warnings"][-5:]}
        if s.get("_scrape_ms"):
            ms = sorted(s["_scrape_ms"])
            row["metrics_scrape_ms"] = {"count": len(ms), "p50": round(ms[len(ms) // 2], 2),
                                        "max": round(ms[-1], 2), "every_s": args.metrics_scrape}
        if s.get("latency_hists"):  # per-hop bucket counts, when the supervisor's summary carries them (CDFs)
            row["latency_hists"] = {h: s["latency_hists"][h] for h in lat if h in s["latency_hists"]}
        if s["_killed_pid"]:
            row["kill"] = {"process": args.kill, "recovery_ms": s["processes"][args.kill]["recovery_ms"],
                           "crash_to_ready_ms": s["processes"][args.kill]["crash_to_ready_ms"],
                           "via_spare": s["processes"][args.kill]["restarts_via_spare"]}
        out["placements"][name] = row
    if args.cpu_rates:
        out["cpu"] = {}
        first = args.placements.split(",")[0]
        d = placement_config(base, first)
        window = max(5.0, args.seconds - 8)
        for label, rate in [(str(int(r)), float(r)) for r in args.cpu_rates.split(",")] + [("paused", PAUSED_RATE)]:
            cfg = source_config(d, "sim", rate, f"profile-{os.getpid()}-cpu{label}")
            s = run_once(cfg, args.seconds, cpu_window=(3.0, window))
            row = dict(s["_cpu"] or {})
            row["md_per_s"] = round(s["rings"]["md"]["published"] / (s.get("flow_s") or args.seconds), 1)
            row["placement"] = first
            out["cpu"][label] = row
    out["load_avg_at_end"] = list(os.getloadavg())  # a shared host's neighbours show here (the plot's title)
    return out


def show(r: dict) -> str:
    m = r["machine"]
    w = r["wake_us"]
    out = [f"machine: {m['cpu_model']}; {m['logical_cpus']} CPUs (allowed {m['allowed_cpus']}); kernel {m['kernel']}; "
           f"python {m['python']} numba {m['numba']}; load {m['load_avg_at_start']}",
           f"config {r['config']}  source {r['source']}  rate {r['rate_per_s']}/s  {r['seconds']} s per run",
           f"one wake-up ({w['strategy']}, the engine's idle): p50 {w['p50_us']:.1f} us  p90 {w['p90_us']:.1f}  "
           f"p99 {w['p99_us']:.1f}  consumer CPU {w['cpu_pct']:.1f}%"]
    for st, x in (r.get("wake_all") or {}).items():
        out.append(f"  wake {st:<10} p50 {x['p50_us']:8.1f} us  p90 {x['p90_us']:8.1f}  p99 {x['p99_us']:8.1f}  "
                   f"CPU {x['cpu_pct']:.1f}%")
    for name, row in r["placements"].items():
        if "skipped" in row:
            out.append(f"placement {name}: skipped ({row['skipped']})")
            continue
        e = row["end_to_end"]
        out.append(f"placement {name} {row['processes']}: end_to_end p50 {e['p50_us']:.1f} us  p99 {e['p99_us']:.1f}"
                   f"  ratio to one wake-up {row['ratio']}  restarts {row['restarts']}  idle {row['idle_fraction']}")
        out.append(f"  {'hop (us)':<18}{'count':>9}{'p50':>10}{'p90':>10}{'p99':>10}{'p99.9':>10}{'max':>11}")
        for hop, h in row["latency"].items():
            out.append(f"  {hop:<18}{h['count']:>9}{h['p50_us']:>10.1f}{h['p90_us']:>10.1f}{h['p99_us']:>10.1f}"
                       f"{h['p999_us']:>10.1f}{h['max_us']:>11.1f}")
        if "kill" in row:
            k = row["kill"]
            out.append(f"  kill -9 {k['process']}: recovery {k['recovery_ms']} ms (crash detected -> ready), "
                       f"crash -> ready {k['crash_to_ready_ms']} ms, via spare {k['via_spare']}")
    for label, c in (r.get("cpu") or {}).items():
        out.append(f"cpu @ {label} ev/s (md {c.get('md_per_s')}/s): system {c.get('system_pct')}% of one CPU  "
                   f"{c.get('per_process_pct')}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "config" / "system.json"))
    ap.add_argument("--placements", default="small,split", help="comma list of small, split, dedicated")
    ap.add_argument("--source", default="synthetic", choices=("synthetic", "sim"),
                    help="synthetic: the seeded generator inside the feed; sim: the local simulator over sockets")
    ap.add_argument("--rate", type=float, default=2000, help="market events per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--kill", default=None, help="kill -9 this process halfway (first placement) and time its recovery")
    ap.add_argument("--cpu-rates", default="", help="e.g. 2000,50000: CPU per process from the simulator at these "
                                                    "rates and paused (first placement)")
    ap.add_argument("--wake-n", type=int, default=2000, help="pings for the wake-up measurement")
    ap.add_argument("--wake-all", action="store_true", help="also measure a wake-up for every idle strategy")
    ap.add_argument("--order-every", type=int, default=0, metavar="N",
                    help="trade: the every_n strategy orders on every Nth top-of-book change (needs --source sim); "
                         "adds the tick_to_order, order_to_wire and ack_rtt hops")
    ap.add_argument("--transport", default="ws", choices=("ws", "rest"), help="with --order-every: the order transport")
    ap.add_argument("--metrics-scrape", type=float, default=0.0, metavar="S",
                    help="metrics endpoint on and scraped every S seconds during each run (default off: compare "
                         "runs with and without it); the scrape times are reported")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--plot", default=None, metavar="PNG",
                    help="also draw per-hop latency CDFs and the placement comparison into this PNG")
    ap.add_argument("--plot-from", default=None, metavar="JSON",
                    help="with --plot: draw a saved --json result instead of running anything")
    args = ap.parse_args(argv)
    if args.order_every and args.source != "sim":
        ap.error("--order-every needs --source sim (orders go to the simulator's order side)")
    if args.plot_from and not args.plot:
        ap.error("--plot-from needs --plot PNG (where to draw it)")
    if args.plot:
        import _plots

        _plots.require_matplotlib()  # before a run of minutes, not after it
    if args.plot_from:
        try:
            r = json.loads(Path(args.plot_from).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--plot-from {args.plot_from}: not a readable JSON result ({exc})") from exc
        if not isinstance(r, dict) or not isinstance(r.get("placements"), dict):
            raise SystemExit(f"--plot-from {args.plot_from}: no 'placements' (not a latency_profile.py --json result)")
        sys.stderr.write(f"plot: {_plots.plot_result(r, args.plot)}\n")
        return 0
    r = profile(args)
    sys.stdout.write((json.dumps(r, indent=2) if args.json else show(r)) + "\n")
    if args.plot:
        sys.stderr.write(f"plot: {_plots.plot_result(r, args.plot)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
