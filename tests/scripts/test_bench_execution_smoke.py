"""scripts/bench_execution.py runs both order transports end to end on tiny settings.

No timing is asserted (benchmarks report speed, tests do not). What is checked
is what a reader of the benchmark relies on: it exits 0 and prints one JSON
object; both transports ran against the simulator; every order sent has its
final report (filled, none rejected); the latency figures exist and are
positive; the baselines were measured once per paced order; and the
simulator process and the temp directory are gone afterwards.

The executor's own REST ``order_to_wire``/``ack_rtt`` samples are lossy by
design of its wire stamp (httpx's trace event fires after a loop yield, often
after the order's final report: see the script's docstring), so for REST the
per-order figures are checked through ``--breakdown``'s stamps, which every
order has; for WS the executor's histograms must have one sample per order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_execution.py"
N = 10
BURST = 3
PCTS = ("p50_us", "p90_us", "p99_us", "max_us")


def _temp_dirs() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("ringtrader-bench-exec-")}


@pytest.fixture(scope="module")
def doc():
    before = _temp_dirs()
    out = subprocess.run([sys.executable, str(SCRIPT), "--orders", str(N), "--rate", "50", "--warmup", "2",
                          "--burst", str(BURST), "--burst-rounds", "1", "--breakdown", "--json"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    d = json.loads(out.stdout)
    assert _temp_dirs() - before == set(), "the benchmark left its temp directory behind"
    return d


def _well_formed(s: dict, what: str) -> None:
    assert s["count"] >= 1, what
    assert s["p50_us"] > 0, what
    assert s["p50_us"] <= s["p90_us"] <= s["p99_us"] <= s["max_us"], (what, s)


def test_both_transports_every_order_final_and_filled(doc):
    assert set(doc["transports"]) == {"ws", "rest"}
    for t, r in doc["transports"].items():
        p = r["paced"]
        assert p["orders"] == p["final"] == p["filled"] == N, (t, p)
        assert p["rejects"] == 0 and p["fills"] >= N, (t, p)
        b = r["burst"]
        assert b["orders"] == b["final"] == b["filled"] == BURST and b["rejects"] == 0, (t, b)
        assert r["counters"]["reconciled"] == 1
        assert r["client"]["api"] == ("WsApiClient" if t == "ws" else "RestClient")


def test_latency_figures_are_positive_and_ordered(doc):
    for t, r in doc["transports"].items():
        p = r["paced"]
        for kind in ("ping", "signed"):
            assert p["baseline"][kind]["count"] == N, (t, kind)
            _well_formed(p["baseline"][kind], f"{t} baseline {kind}")
        bd = r["breakdown"]
        assert bd["orders"] == N, (t, bd)
        for key in ("submit->wire", "submit->ack", "wire->ack"):
            assert bd[key]["count"] == N, (t, key)
            _well_formed(bd[key], f"{t} breakdown {key}")
        if t == "ws":  # the executor's own stamp is synchronous with the send: a sample per order
            for hop in ("order_to_wire", "ack_rtt"):
                assert p[hop]["count"] == N and p["samples_missing"][hop] == 0, (t, hop, p[hop])
                _well_formed(p[hop], f"{t} {hop}")
        else:  # lossy (see the module docstring): what it has is well-formed, the rest is counted
            for hop in ("order_to_wire", "ack_rtt"):
                assert p[hop]["count"] + p["samples_missing"][hop] == N, (t, hop)
                if p[hop]["count"]:
                    _well_formed(p[hop], f"{t} {hop}")
        assert set(r["ratios"]) >= {"ack_rtt/signed_p50", "ack_rtt/ping_p50"}


def test_machine_settings_and_the_simulator_stopped(doc):
    m = doc["machine"]
    assert m["cpu_model"] and m["python"] and m["logical_cpus"] >= 1
    assert doc["settings"]["orders"] == N and doc["settings"]["transports"] == ["ws", "rest"]
    assert doc["simulator"]["exit_code"] is not None
    assert not Path(f"/proc/{doc['simulator']['pid']}").exists(), "the simulator process is still running"


def test_bad_transport_is_refused():
    out = subprocess.run([sys.executable, str(SCRIPT), "--transports", "ws,fix"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "fix" in out.stderr
