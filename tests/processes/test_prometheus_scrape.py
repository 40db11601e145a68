"""A real Prometheus (Debian's ``prometheus``) scrapes a trading run every second.

The system runs in sim mode against the local simulator with the ``every_n`` strategy trading, for about
25 s; a Prometheus server on 127.0.0.1 scrapes the supervisor's ``/metrics`` every second. Through
Prometheus's HTTP API the test checks that every family the endpoint exposes was ingested, that the
families an operator needs are among them, that ``rate(...)`` of the flow counters is above 0, and that
every panel query of the Grafana dashboard (config/grafana/ringtrader.json) returns data.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from test_restart_recovery import ROOT, trading_config
from test_supervisor import Run, msg

#: families that must be there in a trading sim run (a subset of processes/metrics.py's table)
REQUIRED = {
    "ringtrader_ring_published_total", "ringtrader_ring_consumed_total", "ringtrader_ring_lag",
    "ringtrader_process_up", "ringtrader_process_restarts_total", "ringtrader_process_idle_ratio",
    "ringtrader_hop_latency_seconds", "ringtrader_hop_latency_quantiles_seconds",
    "ringtrader_signals_total", "ringtrader_risk_decisions_total", "ringtrader_risk_denials_total",
    "ringtrader_risk_state", "ringtrader_risk_breaker_trips_total", "ringtrader_position_base",
    "ringtrader_exposure_quote", "ringtrader_pnl_realized_quote", "ringtrader_pnl_unrealized_quote",
    "ringtrader_orders_sent_total", "ringtrader_fills_total", "ringtrader_order_rejects_total",
    "ringtrader_venue_clock_offset_seconds", "ringtrader_venue_weight_used",
}
#: counters that must move while the system trades
FLOWING = ("ringtrader_ring_published_total", "ringtrader_ring_consumed_total", "ringtrader_signals_total",
           "ringtrader_orders_sent_total", "ringtrader_fills_total", "ringtrader_hop_latency_seconds_count")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(base: str, q: str) -> list:
    r = httpx.get(f"{base}/api/v1/query", params={"query": q}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


def test_a_real_prometheus_scrapes_every_family_and_the_flow_counters_move(tmp_path, instance):
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus package is needed (.ci/run installs it: apt-get install prometheus)"
    mport = _free_port()
    cfg = trading_config(instance, tmp_path / "journal", every=3)
    cfg["metrics"]["port"] = mport
    run = Run(tmp_path, cfg, "--duration", "30")
    prom = None
    try:
        run.wait_event(msg("metrics endpoint listening"), 60)
        pport = _free_port()
        (tmp_path / "prometheus.yml").write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "ringtrader", "static_configs": [{"targets": [f"127.0.0.1:{mport}"]}]}],
        }))
        prom = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{pport}"],
                                stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"))
        base = f"http://127.0.0.1:{pport}"
        run.wait_event(lambda e: e.get("msg") == "event reconciled", 240)
        time.sleep(18.0)  # ~18 scrapes while the strategy trades
        assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
        up = _query(base, 'up{job="ringtrader"}')
        assert up and up[0]["value"][1] == "1", up
        exposed = {f.name for f in text_string_to_metric_families(  # (a family without samples has no series)
            httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=10).text) if f.samples}
        names = {r["metric"]["__name__"] for r in _query(base, '{__name__=~"ringtrader_.+"}')}
        ingested = {n for n in exposed if any(x == n or x.startswith(n + "_") for x in names)}
        assert exposed - ingested == set(), f"families Prometheus did not ingest: {sorted(exposed - ingested)}"
        missing = {n for n in REQUIRED if not any(x == n or x.startswith(n + "_") for x in names)}
        assert missing == set(), f"required families absent: {sorted(missing)}"
        for counter in FLOWING:
            res = _query(base, f"sum(rate({counter}[10s]))")
            assert res and float(res[0]["value"][1]) > 0, f"rate({counter}) is not above 0: {res}"
        # every panel of the Grafana dashboard has data (its variables as Grafana would fill them)
        dash = json.loads((ROOT / "config" / "grafana" / "ringtrader.json").read_text())
        empty = []
        for panel in dash["panels"]:
            for t in panel["targets"]:
                q = t["expr"].replace("$__rate_interval", "10s").replace("$hop", "end_to_end")
                if not _query(base, q):
                    empty.append((panel["title"], q))
        assert empty == [], f"dashboard queries without data: {empty}"
        assert run.wait(120) == 0
    finally:
        if prom is not None:
            prom.terminate()
            try:
                prom.wait(10)
            except subprocess.TimeoutExpired:
                prom.kill()
        run.kill_group()

