#!/usr/bin/env python
"""Latency profile of the whole pipeline on the synthetic source (a benchmark, not a test).

Runs the real supervisor and workers (``python -m processes.supervisor``) with
``market_data.source = synthetic`` at ``--rate`` records/s for ``--seconds``,
then prints per-hop and end-to-end latency percentiles (p50/p90/p99/p99.9/max,
from the records' trace fields), throughput, cold start time, and the machine.
``--kill WORKER`` kill -9s that worker halfway through and reports the time
from the crash being detected to its replacement being ready.

  scripts/latency_profile.py --rate 2000 --seconds 20
  scripts/latency_profile.py --config config/dedicated-host.json --rate 50000 --seconds 30 --json
  RINGTRADER__PROCESSES__BOOK__IDLE__MAX_SLEEP_US=200 scripts/latency_profile.py   # env overrides apply

The placement (CPUs, idle strategies) comes from the config; compare runs
only on the same machine under the same load (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _machine import machine  # scripts/ is sys.path[0]

ROOT = Path(__file__).resolve().parents[1]
HOPS = ("feed", "md->book", "book->signal", "signal->risk", "risk->execution", "end_to_end",
        "book->risk", "book->execution", "reports->risk")


def profile(args) -> dict:
    cfg = json.loads(Path(args.config).read_text())
    cfg["instance"] = f"profile-{os.getpid()}"
    cfg["market_data"]["source"] = "synthetic"
    cfg["market_data"]["synthetic"]["rate_per_s"] = args.rate
    cfg.setdefault("processes", {}).setdefault("simulator", {"cpus": [0]})["enabled"] = False
    info = {"machine": machine(), "config": str(args.config), "rate_per_s": args.rate, "seconds": args.seconds}
    with tempfile.TemporaryDirectory(prefix="ringtrader-profile-") as tmp:
        cfg_path = Path(tmp) / "profile.json"
        cfg_path.write_text(json.dumps(cfg))
        summary_path = Path(tmp) / "summary.json"
        env = dict(os.environ)
        env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, "-m", "processes.supervisor", "--config", str(cfg_path),
                              "--duration", str(args.seconds), "--summary-json", str(summary_path), "--quiet-summary"],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
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
        try:
            if args.kill:
                victim = None
                deadline = time.monotonic() + 300
                while victim is None and time.monotonic() < deadline and p.poll() is None:
                    ready = [e for e in events if e.get("msg") == "all workers ready"]
                    mine = [e for e in events if e.get("msg") == f"{args.kill} ready"]
                    if ready and mine:
                        victim = mine[-1]["pid"]
                    time.sleep(0.05)
                if victim is not None:
                    time.sleep(args.seconds / 2)
                    os.kill(victim, signal.SIGKILL)
            code = p.wait(timeout=args.seconds + 600)
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            reader.join(timeout=5)
        info["wall_s"] = round(time.monotonic() - t0, 2)
        if code != 0 or not summary_path.exists():
            raise SystemExit(f"supervisor exited with {code}; warnings: {warnings[-10:]}")
        s = json.loads(summary_path.read_text())
    flow = s.get("flow_s") or args.seconds
    info["cold_start_ms"] = s["cold_start_ms"]
    info["flow_s"] = flow
    info["throughput_per_s"] = {r: round(v["published"] / flow, 1) for r, v in s["rings"].items()}
    info["rings"] = s["rings"]
    info["latency"] = {h: s["latency"][h] for h in HOPS if h in s["latency"]}
    info["restarts"] = {n: w["restarts"] for n, w in s["workers"].items()}
    info["recovery_ms"] = {n: w["recovery_ms"] for n, w in s["workers"].items() if w["recovery_ms"]}
    info["warnings"] = warnings
    return info


def show(r: dict) -> str:
    m = r["machine"]
    out = [f"machine: {m['cpu_model']}; {m['logical_cpus']} CPUs (allowed {m['allowed_cpus']}); kernel {m['kernel']}; "
           f"python {m['python']} numpy {m['numpy']} numba {m['numba']}; load {m['load_avg_at_start']}",
           f"config {r['config']}  rate {r['rate_per_s']}/s  flow {r['flow_s']} s  cold start {r['cold_start_ms']} ms",
           "throughput (records/s): " + "  ".join(f"{k}={v}" for k, v in r["throughput_per_s"].items()),
           f"{'hop (us)':<17}{'count':>9}{'p50':>10}{'p90':>10}{'p99':>10}{'p99.9':>10}{'max':>11}"]
    for hop, h in r["latency"].items():
        out.append(f"{hop:<17}{h['count']:>9}{h['p50_us']:>10.1f}{h['p90_us']:>10.1f}{h['p99_us']:>10.1f}"
                   f"{h['p999_us']:>10.1f}{h['max_us']:>11.1f}")
    drops = {k: (v["drops"], v["laps"], v["stalls"]) for k, v in r["rings"].items() if v["drops"] or v["stalls"]}
    out.append(f"drops/laps/stalls: {drops or 'none'}")
    if r["recovery_ms"]:
        out.append(f"crash detected -> replacement ready (ms): {r['recovery_ms']}")
    if r["warnings"]:
        out.append("warnings: " + "; ".join(r["warnings"][-5:]))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "config" / "system.json"))
    ap.add_argument("--rate", type=int, default=2000, help="synthetic market events per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--kill", default=None, help="kill -9 this worker halfway and measure its recovery")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    r = profile(args)
    sys.stdout.write((json.dumps(r, indent=2) if args.json else show(r)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
