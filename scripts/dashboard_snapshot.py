#!/usr/bin/env python
"""A picture of the Grafana dashboard, drawn from a real Prometheus's answers to its panels' queries.

There is no Grafana on the dev hosts, so the README's view of the dashboard is drawn here: the script runs
the system in sim mode trading with the ``every_n`` strategy (orders flow against the local simulator),
starts Debian's ``prometheus`` scraping the metrics endpoint every second, and after ``--seconds`` asks
Prometheus's ``/api/v1/query_range`` every target of every panel of ``config/grafana/ringtrader.json``
exactly as written (``$__rate_interval`` -> 10s, ``$hop`` -> ``--hop``). Each panel is drawn where its
``gridPos`` puts it on Grafana's 24-column grid: ``timeseries`` as lines labelled by the target's
``legendFormat``, ``stat`` as the last value of each series, ``heatmap`` as the rate per latency bucket over
time. Nothing is drawn that Prometheus did not return; an empty panel says "no data".

  scripts/dashboard_snapshot.py --out docs/dashboard.png                 # 90 s run
  scripts/dashboard_snapshot.py --seconds 120 --kill engine --out d.png  # a SIGKILL mid-run (restarts panel)
  scripts/dashboard_snapshot.py --prometheus-url http://127.0.0.1:9090 --out d.png   # an existing server, no run

Needs ``prometheus`` on PATH (``apt-get install prometheus``) unless ``--prometheus-url`` is given, and
matplotlib (the test extra).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "config" / "grafana" / "ringtrader.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trading_config(instance: str, tmp: Path, metrics_port: int) -> dict:
    """config/system.json, moved to free ports and a temp journal, trading with ``every_n`` on BTCUSDT."""
    d = json.loads((ROOT / "config" / "system.json").read_text())
    port = free_port()
    d["instance"] = instance
    d["market_data"]["ws_url"] = f"ws://127.0.0.1:{port}"
    d["market_data"]["rest_url"] = f"http://127.0.0.1:{port}"
    d["simulator"]["port"] = port
    d["metrics"]["port"] = metrics_port
    d["execution"]["journal_dir"] = str(tmp / "journal")
    d["signal"]["strategies"] = [
        {"name": "ticker", "type": "every_n", "symbols": ["BTCUSDT"], "qty": "0.001", "params": {"every": 4}},
        *[s for s in copy.deepcopy(d["signal"]["strategies"]) if s.get("type") != "every_n"],
    ]
    d["risk"].update({"max_orders_per_s": 20, "max_open_orders": 8})
    return d


# ---------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------


def expand(expr: str, hop: str) -> str:
    return expr.replace("$__rate_interval", "10s").replace("$hop", hop)


def legend(fmt: str | None, metric: dict) -> str:
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in metric.items() if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(metric.get(m.group(1), "")), fmt).strip()


def query_range(base: str, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
    r = httpx.get(f"{base}/api/v1/query_range", params={"query": expr, "start": start, "end": end, "step": step},
                  timeout=30)
    r.raise_for_status()
    return r.json()["data"]["result"]


def collect(base: str, dash: dict, hop: str, start: float, end: float) -> list[dict]:
    """Per panel: its type, title, gridPos and ``series`` [(label, [t], [v])] as Prometheus answered."""
    panels = []
    for p in dash["panels"]:
        series = []
        for t in p.get("targets", []):
            for res in query_range(base, expand(t["expr"], hop), start, end):
                ts = [float(a) - start for a, _ in res["values"]]
                vs = [float(b) for _, b in res["values"]]
                series.append((legend(t.get("legendFormat"), res["metric"]), ts, vs))
        panels.append({"type": p["type"], "title": p["title"].replace("$hop", hop), "grid": p["gridPos"],
                       "series": series})
    return panels


# ---------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------


def _le_key(label: str) -> float:
    try:
        return float(label)
    except ValueError:
        return math.inf


def draw(panels: list[dict], path: str, title: str) -> None:
    from matplotlib.figure import Figure

    rows = max(p["grid"]["y"] + p["grid"]["h"] for p in panels)
    fig = Figure(figsize=(16, rows * 0.36), dpi=90)
    gs = fig.add_gridspec(rows, 24, hspace=0.0, wspace=3.0, top=0.97, bottom=0.02, left=0.04, right=0.99)
    for p in panels:
        g = p["grid"]  # the panel's first and last grid rows hold its title and the x tick labels
        ax = fig.add_subplot(gs[g["y"] + 1:g["y"] + g["h"] - 1, g["x"]:g["x"] + g["w"]])
        ax.set_title(p["title"], fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        if not p["series"]:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
            continue
        if p["type"] == "stat":
            ax.set_axis_off()
            text = "\n".join(f"{lab}: {s[-1]:.6g}" if s else f"{lab}: -" for lab, _, s in p["series"][:6])
            ax.text(0.02, 0.5, text, ha="left", va="center", transform=ax.transAxes, fontsize=10,
                    family="monospace")
        elif p["type"] == "heatmap":
            buckets = sorted(p["series"], key=lambda s: _le_key(s[0]))
            times = sorted({t for _, ts, _ in buckets for t in ts})
            col = {t: i for i, t in enumerate(times)}
            grid = [[0.0] * len(times) for _ in buckets]
            for r, (_, ts, vs) in enumerate(buckets):
                prev = [0.0] * len(times)
                if r:  # cumulative buckets -> per bucket
                    prev = [0.0] * len(times)
                    for t, v in zip(buckets[r - 1][1], buckets[r - 1][2]):
                        prev[col[t]] = v
                for t, v in zip(ts, vs):
                    grid[r][col[t]] = max(v - prev[col[t]], 0.0)
            ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                      extent=(times[0], times[-1], 0, len(buckets)))
            step = max(1, len(buckets) // 8)
            ax.set_yticks([i + 0.5 for i in range(0, len(buckets), step)],
                          [_fmt_le(buckets[i][0]) for i in range(0, len(buckets), step)])
        else:
            for lab, ts, vs in p["series"][:12]:
                ax.plot(ts, vs, lw=1.0, label=lab[:40])
            if "latency" in p["title"].lower():
                ax.set_yscale("log")
            ax.legend(fontsize=6, loc="upper left", ncols=2 if len(p["series"]) > 4 else 1)
            ax.grid(alpha=0.3)
    fig.suptitle(title + "  (x: seconds since the first scrape)", fontsize=11)
    fig.savefig(path)


def _fmt_le(le: str) -> str:
    v = _le_key(le)
    if math.isinf(v):
        return "+Inf"
    return f"{v * 1e6:g} us" if v < 1e-3 else f"{v * 1e3:g} ms"


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=90.0, help="run length before the queries (default 90)")
    ap.add_argument("--hop", default="end_to_end", help="the dashboard's $hop variable (default end_to_end)")
    ap.add_argument("--kill", default=None, metavar="PROCESS", help="SIGKILL this worker at half-time")
    ap.add_argument("--prometheus-url", default=None, help="query this server over the last --seconds; no run")
    ap.add_argument("--out", required=True, metavar="PNG")
    args = ap.parse_args(argv)
    dash = json.loads(DASHBOARD.read_text())

    if args.prometheus_url:
        end = time.time()
        panels = collect(args.prometheus_url.rstrip("/"), dash, args.hop, end - args.seconds, end)
        draw(panels, args.out, f"ringtrader dashboard ({args.prometheus_url}, last {args.seconds:g} s)")
        print(f"dashboard_snapshot: wrote {args.out}")
        return 0

    binary = shutil.which("prometheus")
    if not binary:
        print("dashboard_snapshot: no prometheus on PATH (apt-get install prometheus)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="ringtrader-dash-"))
    instance = f"dash-{os.getpid()}"
    mport, pport = free_port(), free_port()
    cfg_path = tmp / "config.json"
    cfg_path.write_text(json.dumps(trading_config(instance, tmp, mport)))
    sup = subprocess.Popen([sys.executable, "-m", "processes.supervisor", "--config", str(cfg_path), "--duration",
                            str(args.seconds + 30), "--quiet-summary"], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    prom = None
    try:
        pids, t_flow = {}, None
        for line in sup.stdout:  # wait for the pipeline to flow (a cold numba cache compiles first)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev.get("worker"), str) and isinstance(ev.get("pid"), int):
                pids[ev["worker"]] = ev["pid"]
            if ev.get("msg") == "event reconciled" or "pipeline flowing" in str(ev.get("msg")):
                t_flow = time.time()
                break
        if t_flow is None:
            print("dashboard_snapshot: the system never started flowing", file=sys.stderr)
            return 1
        (tmp / "prometheus.yml").write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "ringtrader", "static_configs": [{"targets": [f"127.0.0.1:{mport}"]}]}],
        }))
        prom = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{pport}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        start = time.time()
        drain = __import__("threading").Thread(target=lambda: [None for _ in sup.stdout], daemon=True)
        drain.start()
        if args.kill:
            time.sleep(args.seconds / 2)
            if args.kill in pids:
                os.kill(pids[args.kill], signal.SIGKILL)
            time.sleep(args.seconds / 2)
        else:
            time.sleep(args.seconds)
        panels = collect(f"http://127.0.0.1:{pport}", dash, args.hop, start, time.time())
        draw(panels, args.out, f"ringtrader dashboard: config/grafana/ringtrader.json, every panel's query on a real "
                               f"Prometheus, {args.seconds:g} s of a sim run trading every_n"
                               + (f", {args.kill} SIGKILLed at {args.seconds / 2:g} s" if args.kill else ""))
        empty = [p["title"] for p in panels if not p["series"]]
        print(f"dashboard_snapshot: wrote {args.out}; panels without data: {empty or 'none'}")
        return 0
    finally:
        if prom is not None:
            prom.terminate()
            try:
                prom.wait(10)
            except subprocess.TimeoutExpired:
                prom.kill()
        if sup.poll() is None:
            sup.send_signal(signal.SIGINT)
            try:
                sup.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(sup.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
