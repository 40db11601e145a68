"""The supervisor with real worker processes: flow, orderly stop, crashes, stale segments, start-up failure.

Each test runs ``python -m processes.supervisor`` in its own session (process
group) with a unique instance, and kills the whole group in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from core import records
from core.config import RINGS
from core.topology import HOPS
from ringbuffers.ring import Ring, list_segments, segment_name

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def instance():
    """A unique instance for one supervisor run; whatever it leaves in /dev/shm is removed afterwards.

    Not the shared ``test-`` prefix: a concurrently running pytest session's
    end-of-session sweep treats every new ``ringtrader.test-*`` segment as its
    own leak and unlinks it, which would pull the rings from under a live run.
    """
    name = f"sv-{uuid.uuid4().hex[:10]}"
    yield name
    for seg in list_segments(name):
        os.unlink(os.path.join("/dev/shm", seg))


def small_config(instance: str, **edits) -> dict:
    d = json.loads((ROOT / "config" / "system.json").read_text())
    d["instance"] = instance
    d["market_data"]["source"] = "synthetic"  # these tests run the pipeline without an exchange
    d["market_data"]["synthetic"]["rate_per_s"] = 1000
    d["placement"]["simulator"]["enabled"] = False  # the pass-through pipeline needs no exchange
    for r in d["rings"].values():
        if isinstance(r, dict):
            r["capacity"] = 4096
    # md never wraps during a test: the synthetic feed publishes whole messages through claim(), which stops
    # at a 1-slot claim at the wrap point (see the report on processes/feed.py)
    d["rings"]["md"]["capacity"] = 65536
    d["metrics"]["port"] = 0  # any free port: concurrent runs never collide
    d["supervisor"].update({"ready_timeout_s": 60, "heartbeat_timeout_s": 5, "drain_timeout_s": 2,
                            "stop_timeout_s": 5, "backoff_initial_ms": 50})
    for path, value in edits.items():
        if path == "placement":
            d["placement"] = {**value, "simulator": d["placement"]["simulator"]}
            continue
        node = d
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return d


def split_placement(d: dict | None = None) -> dict:
    """One process per stage (the dedicated host's shape) with the small host's CPUs and backoff idle."""
    base = (d or json.loads((ROOT / "config" / "system.json").read_text()))["placement"]
    proto = {k: v for k, v in base["engine"].items() if k != "stages"}
    return {st: {**proto, "stages": [st]} for st in ("feed", "book", "signal", "risk", "execution")}


class Run:
    """A supervisor process whose JSON log lines are collected as they arrive."""

    def __init__(self, tmp_path: Path, cfg: dict, *args, env=None):
        self.cfg_path = tmp_path / f"cfg-{time.monotonic_ns()}.json"
        self.cfg_path.write_text(json.dumps(cfg))
        self.summary_path = tmp_path / f"summary-{time.monotonic_ns()}.json"
        e = dict(os.environ)
        e.update(env or {})
        self.p = subprocess.Popen(
            [sys.executable, "-m", "processes.supervisor", "--config", str(self.cfg_path),
             "--summary-json", str(self.summary_path), *args],
            cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.events: list[dict] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line)
            if line.startswith("{"):
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    pass

    def wait_event(self, pred, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            evs = self.events[seen:]
            for ev in evs:
                if pred(ev):
                    return ev
            seen += len(evs)
            if self.p.poll() is not None and seen == len(self.events):
                self._t.join(timeout=2)
                for ev in self.events[seen:]:
                    if pred(ev):
                        return ev
                break
            time.sleep(0.05)
        raise AssertionError("event not seen; log tail:\n" + "".join(self.lines[-30:]))

    def wait(self, timeout: float) -> int:
        code = self.p.wait(timeout=timeout)
        self._t.join(timeout=5)
        return code

    def summary(self) -> dict:
        return json.loads(self.summary_path.read_text())

    def kill_group(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def msg(text):
    return lambda ev: ev.get("msg") == text


def attach_monitors(instance: str) -> dict[str, Ring]:
    return {r: Ring.attach(segment_name(instance, r), records.ALL_DTYPES[RINGS[r][0]], "monitor") for r in RINGS}


def recent(ring: Ring, n: int) -> np.ndarray:
    end = ring.published
    start = max(0, end - min(n, ring.capacity // 2))
    idx = np.arange(start, end) & ring.mask
    return ring.slots[idx].copy()


def check_trace_chain(mons: dict[str, Ring]) -> int:
    """Every recent report traces back, hop by hop, to an md record with the same recv_ns. Returns reports checked."""
    # read downstream first: their causes are then certainly already in the upstream windows
    windows = {r: recent(mons[r], 2048 if r != "reports" else 64) for r in ("reports", "orders", "signals", "book", "md")}
    for r, w in windows.items():
        assert len(w), f"ring {r} has no records"
        assert np.all(w["recv_ns"] > 0) and np.all(w["recv_ns"] <= w["pub_ns"]), f"{r}: recv_ns > pub_ns"
        assert np.all(np.diff(w["pub_ns"]) >= 0), f"{r}: pub_ns not monotonic along the ring"
        if "in_pub_ns" in w.dtype.names:
            assert np.all((w["recv_ns"] <= w["in_pub_ns"]) & (w["in_pub_ns"] <= w["pub_ns"])), f"{r}: in_pub_ns out of order"
    chain = ["reports", "orders", "signals", "book", "md"]
    for rep in windows["reports"][:32]:
        rec = rep
        for up in chain[1:]:
            w = windows[up]
            match = w[(w["pub_ns"] == rec["in_pub_ns"]) & (w["recv_ns"] == rec["recv_ns"])]
            assert len(match), f"no {up} record with pub_ns == in_pub_ns {rec['in_pub_ns']} of the {chain[chain.index(up) - 1]} record"
            rec = match[0]
            if up == "md":
                break
    return min(32, len(windows["reports"]))


def wait_flow(mons: dict[str, Ring], at_least: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(m.published >= at_least for m in mons.values()):
            return
        time.sleep(0.05)
    raise AssertionError(f"flow stalled: published {({r: m.published for r, m in mons.items()})}")


def close_all(mons):
    for m in mons.values():
        m.close()


def test_pipeline_flows_survives_a_killed_engine_and_sigterm_shuts_down_cleanly(tmp_path, instance):
    """The default placement (feed + one engine process hosting book, signal, risk, execution), one run:
    flow through all five rings with a consistent trace; kill -9 of the engine under flow -> every stage it
    hosts restarts together and resumes from its ring cursors; SIGTERM -> exit 0, ordered, no segments.
    The spare is off here, so the restart is a fresh spawn (the spare has test_supervisor_restart.py)."""
    run = Run(tmp_path, small_config(instance, **{"supervisor.spare_worker": False}))
    try:
        ready = run.wait_event(msg("all processes ready"), 240)
        assert ready["cold_start_ms"] > 0
        engine = run.wait_event(msg("engine ready"), 5)
        assert engine["stages"] == ["book", "signal", "risk", "execution"]
        mons = attach_monitors(instance)
        try:
            wait_flow(mons, 200, 20)
            assert check_trace_chain(mons) > 0

            os.kill(engine["pid"], signal.SIGKILL)
            back = run.wait_event(lambda ev: ev.get("msg") == "engine ready" and ev.get("incarnation") == 2, 60)
            assert back["pid"] != engine["pid"] and back["recovery_ms"] > 0 and back["via"] == "spawn"
            after = mons["reports"].published
            wait_flow({"reports": mons["reports"]}, after + 200, 30)  # records flow again end to end
            assert check_trace_chain(mons) > 0
        finally:
            close_all(mons)

        t0 = time.monotonic()
        run.p.send_signal(signal.SIGTERM)
        assert run.wait(30) == 0
        assert time.monotonic() - t0 < 15
        assert list_segments(instance) == []
        s = run.summary()
        assert s["placement"] == {"feed": ["feed"], "engine": ["book", "signal", "risk", "execution"]}
        for r in RINGS:
            assert s["rings"][r]["published"] > 0
            # orderly: each ring was drained before its consumers were stopped (inside the engine too)
            assert all(c == s["rings"][r]["published"] for c in s["rings"][r]["consumed"].values()), s["rings"][r]
        for hop in HOPS:
            h = s["latency"][hop]
            assert h["count"] > 0 and 0 <= h["p50_us"] <= h["p99_us"] <= h["max_us"]
        assert all(st["counters"].get("trace_violations", 0) == 0 for st in s["stages"].values())
        assert s["processes"]["engine"]["restarts"] == 1
        assert s["processes"]["engine"]["exit_codes"][0] == -signal.SIGKILL
        assert s["restarts"] == 1 and s["processes"]["feed"]["restarts"] == 0
        assert s["spares"]["started"] == 0  # supervisor.spare_worker false: no spare process at all
        # counters of the killed incarnation were folded in: the book stage counted records before and after
        assert s["stages"]["book"]["counters"]["md_records"] > 0
        # the stop order comes from the topology: producers before consumers
        stops = [ev["worker"] for ev in run.events if ev.get("msg", "").endswith(" stopped") and "worker" in ev]
        assert stops == ["feed", "engine"]
    finally:
        run.kill_group()


def test_next_start_removes_segments_of_a_killed_supervisor(tmp_path, instance):
    cfg = small_config(instance)
    first = Run(tmp_path, cfg)
    try:
        first.wait_event(msg("all processes ready"), 240)
        first.p.send_signal(signal.SIGKILL)
        first.wait(10)
        assert len(list_segments(instance)) == len(RINGS)  # left behind by the killed run
    finally:
        first.kill_group()  # its workers too (they also exit on their own when the parent dies)
    second = Run(tmp_path, cfg, "--duration", "1")
    try:
        ev = second.wait_event(msg("removed 5 stale segments of a killed run"), 60)
        assert sorted(ev["segments"]) == sorted(segment_name(instance, r) for r in RINGS)
        assert second.wait(90) == 0
        assert second.summary()["rings"]["md"]["published"] > 0
        assert list_segments(instance) == []
    finally:
        second.kill_group()


NEVER_READY = '''
import time
def make_stage(config, ctx):
    while not ctx.should_stop():  # never returns, so its process never says ready
        time.sleep(0.01)
'''


def test_worker_that_never_becomes_ready_fails_start_with_a_clear_error(tmp_path, instance):
    (tmp_path / "never_ready_worker.py").write_text(NEVER_READY)
    cfg = small_config(instance, **{"placement.engine.modules": {"signal": "never_ready_worker"},
                                    "supervisor.ready_timeout_s": 4})
    pythonpath = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    run = Run(tmp_path, cfg, env={"PYTHONPATH": pythonpath})
    try:
        assert run.wait(60) == 1
        err = next(ev for ev in run.events if ev.get("msg", "").startswith("process(es) not ready within"))
        assert err["not_ready"] == ["engine"] and err["level"] == "ERROR"
        assert list_segments(instance) == []
    finally:
        run.kill_group()


CRASHING = '''
from processes.stage import Stage

class Crashing(Stage):
    def do_work(self):
        raise RuntimeError("boom: strategy bug")

def make_stage(config, ctx):
    return Crashing()
'''


def test_worker_crashing_too_often_stops_the_system_with_exit_1(tmp_path, instance):
    (tmp_path / "crashing_worker.py").write_text(CRASHING)
    cfg = small_config(instance, **{"placement.engine.modules": {"risk": "crashing_worker"}, "supervisor.max_restarts": 0,
                                    "supervisor.restart_window_s": 60})
    pythonpath = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    run = Run(tmp_path, cfg, env={"PYTHONPATH": pythonpath})
    try:
        assert run.wait(90) == 1
        crash = next(ev for ev in run.events if ev.get("proc") == "engine" and ev.get("level") == "ERROR")
        assert "boom: strategy bug" in crash["exc"]  # the traceback reached the merged log
        assert any("exceeds max_restarts=0" in ev.get("msg", "") for ev in run.events)
        s = run.summary()
        assert s["processes"]["engine"]["restarts"] == 0 and s["exit_code"] == 1
        assert list_segments(instance) == []
    finally:
        run.kill_group()
