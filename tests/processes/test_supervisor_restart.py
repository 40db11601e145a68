"""Supervisor restarts through the pre-warmed spare process, and the Prometheus endpoint.

Real supervisor runs (``python -m processes.supervisor``) as in
``test_supervisor.py``: the synthetic source, no simulator, a unique instance.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from core.config import RINGS, STAGES, load_config
from processes.supervisor import LogSink, Supervisor
from ringbuffers.ring import list_segments

from test_supervisor import Run, attach_monitors, close_all, instance, msg, small_config, split_placement, wait_flow  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def scrape(url: str) -> dict:
    """``{(metric sample name, ((label, value), ...)): value}`` of one scrape."""
    r = httpx.get(url, timeout=5)
    assert r.status_code == 200
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for smp in fam.samples:
            out[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    return out


def val(m: dict, name: str, **labels) -> float:
    return m[(name, tuple(sorted(labels.items())))]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (read from /proc, no psutil)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_killed_workers_are_replaced_by_the_spare_or_a_spawn_metrics_follow_and_nothing_outlives_the_run(
        tmp_path, instance):  # noqa: F811 - the fixture imported above
    # one process per stage (the dedicated host's shape): two processes can crash independently
    run = Run(tmp_path, small_config(instance, placement=split_placement()))
    try:
        listening = run.wait_event(msg("metrics endpoint listening"), 60)
        url = f"http://127.0.0.1:{listening['port']}/metrics"
        run.wait_event(msg("all processes ready"), 240)
        first = {n: run.wait_event(msg(f"{n} ready"), 5) for n in STAGES}
        spare = run.wait_event(msg("spare 1 ready"), 60)
        assert set(spare["serves"]) == set(STAGES)

        # counters straight from the ring headers, and they move
        m1 = scrape(url)
        time.sleep(1.0)
        m2 = scrape(url)
        for ring, (_dtype, _producer, consumers) in RINGS.items():
            assert val(m2, "ringtrader_ring_published_total", ring=ring) > val(m1, "ringtrader_ring_published_total",
                                                                               ring=ring) > 0
            for c in consumers:
                assert val(m2, "ringtrader_ring_consumed_total", ring=ring, consumer=c) > 0
                assert val(m2, "ringtrader_ring_lag", ring=ring, consumer=c) >= 0
                assert val(m2, "ringtrader_ring_lost_total", ring=ring, consumer=c) == 0
            assert val(m2, "ringtrader_ring_stalls_total", ring=ring) >= 0
        for n in STAGES:
            assert val(m2, "ringtrader_process_up", process=n) == 1
            assert val(m2, "ringtrader_process_restarts_total", process=n) == 0
            assert 0 <= val(m2, "ringtrader_process_heartbeat_age_seconds", process=n) < 5
            assert 0 <= val(m2, "ringtrader_process_idle_ratio", process=n) <= 1
            assert val(m2, "ringtrader_stage_process", stage=n, process=n) == 1
        assert val(m2, "ringtrader_spare_ready") == 1
        assert val(m2, "ringtrader_hop_latency_samples_total", hop="end_to_end") > 0
        assert 0 < val(m2, "ringtrader_hop_latency_quantiles_seconds", hop="end_to_end", quantile="0.5") <= val(
            m2, "ringtrader_hop_latency_quantiles_seconds", hop="end_to_end", quantile="0.99")
        assert val(m2, "ringtrader_hop_latency_seconds_count", hop="end_to_end") == val(
            m2, "ringtrader_hop_latency_seconds_bucket", hop="end_to_end", le="+Inf") > 0
        # the signal stage's decisions by strategy and reason (the probe emits one per book record)
        assert val(m2, "ringtrader_signals_total", strategy="latency_probe", reason="trace_probe") > 0
        assert val(m2, "ringtrader_signal_suppressed_total", strategy="mean_reversion", reason="warmup") >= 0

        mons = attach_monitors(instance)
        try:
            # two crashes at once, one spare: one replacement is the spare, the other a fresh spawn
            t_kill = time.monotonic_ns()
            os.kill(first["book"]["pid"], signal.SIGKILL)
            os.kill(first["signal"]["pid"], signal.SIGKILL)
            back = {n: run.wait_event(lambda ev, n=n: ev.get("msg") == f"{n} ready" and ev.get("incarnation") == 2, 60)
                    for n in ("book", "signal")}
            assert sorted(ev["via"] for ev in back.values()) == ["spare", "spawn"]
            by_spare = next(ev for ev in back.values() if ev["via"] == "spare")
            assert by_spare["pid"] == spare["pid"]  # the warmed process itself became the worker
            assert by_spare["worker"] in (ev["worker"] for ev in run.events if ev.get("msg", "").startswith("assigned spare 1"))
            assert any(ev.get("msg", "").startswith("no spare ready for") for ev in run.events)
            for ev in back.values():
                assert ev["recovery_ms"] > 0 and ev["crash_to_ready_ms"] >= ev["recovery_ms"]
                # crash -> ready as the supervisor saw it fits inside kill -> "ready" logged, as the test saw it
                assert ev["crash_to_ready_ms"] <= (ev["mono_ns"] - t_kill) / 1e6 + 0.2
            after = mons["reports"].published
            wait_flow({"reports": mons["reports"]}, after + 200, 30)  # end to end again
        finally:
            close_all(mons)
        run.wait_event(msg("spare 2 ready"), 60)  # the next spare, started once the replacements were ready
        m3 = scrape(url)
        assert val(m3, "ringtrader_process_restarts_total", process="book") == 1
        assert val(m3, "ringtrader_process_restarts_total", process="signal") == 1
        assert val(m3, "ringtrader_spare_used_total") == 1 and val(m3, "ringtrader_spare_started_total") == 2
        assert val(m3, "ringtrader_ring_published_total", ring="md") > val(m2, "ringtrader_ring_published_total",
                                                                           ring="md")

        run.p.send_signal(signal.SIGTERM)
        assert run.wait(30) == 0
        pids = {ev["pid"] for ev in run.events if isinstance(ev.get("pid"), int) and ev.get("proc") == "supervisor"}
        pids.discard(run.p.pid)
        assert len(pids) >= 2 + len(STAGES) + 1  # processes, replacements and spares were all logged
        deadline = time.monotonic() + 5  # orphans are reaped by init asynchronously
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in pids if alive(p)] == []
        assert list_segments(instance) == []
        try:
            httpx.get(url, timeout=2)
            raise AssertionError("the metrics endpoint still answers after shutdown")
        except httpx.TransportError:
            pass

        s = run.summary()
        assert s["spares"]["started"] == 2 and s["spares"]["used"] == 1 and s["spares"]["failed"] == 0
        assert sum(s["processes"][n]["restarts_via_spare"] for n in ("book", "signal")) == 1
        for n in ("book", "signal"):
            w = s["processes"][n]
            assert w["restarts"] == 1 and len(w["recovery_ms"]) == 1 and len(w["crash_to_ready_ms"]) == 1
        # block rings: the replacements resumed from their consumers' cursors, nothing lost, all drained
        for r in RINGS:
            assert s["rings"][r]["drops"] == 0
            assert all(c == s["rings"][r]["published"] for c in s["rings"][r]["consumed"].values()), s["rings"][r]
        assert "spares: started=2 ready=2 used=1" in "".join(run.lines)  # the text summary shows them
    finally:
        run.kill_group()


def test_metrics_port_in_use_is_one_warning_and_the_supervisor_runs_on_without_metrics(caplog):
    cfg = load_config(ROOT / "config" / "system.json", env={})
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = replace(cfg, instance=f"sv-{uuid.uuid4().hex[:10]}", metrics=replace(cfg.metrics, port=port))
        sup = Supervisor(cfg, LogSink(stdout=False))
        sup.create_rings()
        try:
            with caplog.at_level(logging.WARNING, logger="ringtrader.supervisor"):
                sup.start_metrics()  # returns: the caller goes on to spawn the workers
            warns = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warns) == 1 and f"127.0.0.1:{port}" in warns[0] and "running without metrics" in warns[0]
            assert sup.metrics is None and sup.summary()["metrics_port"] is None
        finally:
            sup.stop_metrics()
            sup.unlink_rings()
    assert list_segments(cfg.instance) == []


PARENT = """
import json, multiprocessing as mp, sys, time
from core.config import load_config
from processes.runtime import spare_main
from ringbuffers.control import ControlQueue

if __name__ == "__main__":
    cfg = load_config(sys.argv[1], env={})
    cmd_q, evt_q = ControlQueue(), ControlQueue()
    p = mp.get_context("spawn").Process(target=spare_main, args=(cfg, cmd_q, evt_q, 1))
    p.start()
    while True:
        m = evt_q.get(timeout=240)  # a cold numba cache compiles every worker's kernels first
        if m is None or m.get("type") == "spare_ready":
            print(json.dumps(m), flush=True)
            break
    time.sleep(120)
"""


def test_spare_warms_every_worker_and_exits_when_its_supervisor_is_killed(tmp_path):
    (tmp_path / "parent.py").write_text(PARENT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py"), str(ROOT / "config" / "system.json")],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready = json.loads(parent.stdout.readline())
        assert ready is not None, "the spare never said ready"
        assert set(ready["workers"]) == {"feed", "engine"} and alive(ready["pid"])
        parent.kill()  # the supervisor dies without a word: SIGKILL, nothing forwarded
        parent.wait(10)
        deadline = time.monotonic() + 10
        while alive(ready["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(ready["pid"]), "the spare outlived its supervisor"
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
