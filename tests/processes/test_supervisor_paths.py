"""The supervisor's less travelled paths, each through a real ``python -m processes.supervisor`` run.

A hung process is killed and restarted; a replacement that never says ready
is killed and counted as a crash; restart delays double up to the cap and too
many restarts end the run; a second stop signal kills everything at once; a
process that does not stop is killed and a ring that does not drain is
reported, yet the shutdown completes; spares that keep dying are disabled; a
second run of a live instance is refused; a book's resync request reaches the
feed, which answers with a fresh snapshot.

The misbehaving stages are small modules written to ``tmp_path`` and placed
with ``placement.<process>.modules`` (``PYTHONPATH`` points there). Most wrap
the real stage so the pipeline still flows around them. The harness (``Run``,
``small_config``...) is ``test_supervisor.py``'s.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core import records
from core.config import RINGS
from ringbuffers.ring import Ring, list_segments, segment_name

from test_supervisor import Run, attach_monitors, close_all, instance, msg, small_config, wait_flow  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def warm_numba_cache(tmp_path_factory):
    """Load (or compile, once) every kernel of the synthetic pipeline before any run here.

    Several tests use a short ``supervisor.ready_timeout_s`` (it is also the
    deadline of a replacement): with a warm cache the first start takes about a
    second, a cold one a minute or more.
    """
    cfg = tmp_path_factory.mktemp("warm") / "cfg.json"
    cfg.write_text(json.dumps(small_config("sv-warm")))
    subprocess.run([sys.executable, "-m", "core.numba_cache", "--warm", str(cfg)], cwd=ROOT, check=True,
                   timeout=600, stdout=subprocess.DEVNULL)


def with_modules(tmp_path: Path, **modules: str) -> dict:
    """Write stage modules ``name -> source`` into tmp_path; the env that makes them importable."""
    for name, src in modules.items():
        (tmp_path / f"{name}.py").write_text(src)
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}


def starts(prefix: str):
    return lambda ev: ev.get("msg", "").startswith(prefix)


def msgs(run: Run, pred) -> list[dict]:
    return [ev for ev in list(run.events) if pred(ev)]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (read from /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_dead(pids, timeout: float = 10.0) -> list[int]:
    """Wait until none of ``pids`` is alive; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def child_pids(run: Run) -> set[int]:
    """Every process the supervisor reported starting (stage processes and spares)."""
    return {ev["pid"] for ev in run.events if ev.get("proc") == "supervisor" and isinstance(ev.get("pid"), int)
            and (ev.get("msg", "").startswith("spawned ") or re.fullmatch(r"spare \d+ started", ev.get("msg", "")))}


# ---------------------------------------------------------------------------
# 1 + 2: a hung process, then a replacement that never becomes ready
# ---------------------------------------------------------------------------

HANG_THEN_NEVER_READY = '''
import time
from processes.signal import SignalStage, warm  # noqa: F401 - warm: the spare loads the kernel

class HangsOnce(SignalStage):
    calls = 0

    def do_work(self):
        self.calls += 1
        if self.ctx.incarnation == 1 and self.calls == 50:
            self.ctx.log.info("signal: hanging now")
            time.sleep(3600)  # blocks the whole duty cycle: no more heartbeats
        return super().do_work()

def make_stage(config, ctx):
    if ctx.incarnation == 2:
        ctx.log.info("signal: never ready")
        while not ctx.should_stop():  # the replacement never says ready (it leaves if the supervisor dies)
            time.sleep(0.05)
    return HangsOnce(config, ctx)
'''


def test_hung_process_is_killed_and_a_replacement_that_never_gets_ready_is_killed_too(tmp_path, instance):
    """Incarnation 1 of the engine blocks in do_work after the go: its heartbeats stop, the supervisor
    says it hung, kills it and restarts it. Incarnation 2 blocks in make_stage: after ready_timeout_s it is
    killed and counted as a crash (the next delay doubles). Incarnation 3 runs and records flow again."""
    env = with_modules(tmp_path, hang_signal=HANG_THEN_NEVER_READY)
    ready_timeout = 12.0  # the first start must fit too: about a second with the warm cache (fixture above)
    cfg = small_config(instance, **{"placement.engine.modules": {"signal": "hang_signal"},
                                    "supervisor.heartbeat_interval_ms": 100, "supervisor.heartbeat_timeout_s": 3,
                                    "supervisor.ready_timeout_s": ready_timeout})
    run = Run(tmp_path, cfg, env=env)
    try:
        run.wait_event(msg("all processes ready"), 120)
        first = run.wait_event(lambda ev: ev.get("msg") == "engine ready" and ev.get("incarnation") == 1, 5)
        run.wait_event(lambda ev: ev.get("proc") == "engine" and ev.get("msg") == "signal: hanging now", 30)

        hung = run.wait_event(starts("engine hung: no heartbeat for "), 60)
        assert hung["level"] == "ERROR" and hung["worker"] == "engine"
        silent_s = float(re.search(r"for ([\d.]+) s", hung["msg"]).group(1))
        assert silent_s >= 3.0  # killed only after heartbeat_timeout_s of silence
        again = run.wait_event(msg("engine hung; restarting in 50 ms"), 10)
        assert again["delay_ms"] == 50 and again["restart"] == 1
        assert wait_dead([first["pid"]]) == [], "the hung process was not killed"

        run.wait_event(lambda ev: ev.get("proc") == "engine" and ev.get("msg") == "signal: never ready", 60)
        never = run.wait_event(msg(f"restarted engine not ready within {ready_timeout:.1f} s; killing it"),
                               ready_timeout + 60)
        assert never["level"] == "ERROR"
        second = run.wait_event(msg("engine never ready; restarting in 100 ms"), 10)
        assert second["delay_ms"] == 100 and second["restart"] == 2  # counted as a crash: the delay doubled
        stuck_pid = next(ev["pid"] for ev in run.events if ev.get("proc") == "supervisor" and ev.get("incarnation") == 2
                         and ev.get("msg") in ("spawned engine", "assigned spare 1 to engine"))
        assert wait_dead([stuck_pid]) == [], "the never-ready replacement was not killed"

        third = run.wait_event(lambda ev: ev.get("msg") == "engine ready" and ev.get("incarnation") == 3, 60)
        assert third["pid"] not in (first["pid"], stuck_pid)
        # one outage, from the hang to the third incarnation: it spans the whole never-ready wait, and the
        # crash time is the hung process's last heartbeat, at least heartbeat_timeout_s before it was seen
        assert third["recovery_ms"] >= ready_timeout * 1000
        assert third["crash_to_ready_ms"] - third["recovery_ms"] >= 3000 - 1
        mons = attach_monitors(instance)
        try:
            wait_flow({"reports": mons["reports"]}, mons["reports"].published + 200, 30)  # flowing again
        finally:
            close_all(mons)

        run.p.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0
        s = run.summary()
        eng = s["processes"]["engine"]
        assert eng["restarts"] == 2 and eng["exit_codes"] == [-signal.SIGKILL, -signal.SIGKILL, 0]
        assert eng["recovery_ms"] == [third["recovery_ms"]]
        assert list_segments(instance) == []
    finally:
        run.kill_group()


# ---------------------------------------------------------------------------
# 3: backoff growth and the restart window
# ---------------------------------------------------------------------------

CRASH_AFTER_GO = '''
from processes.stage import Stage

class CrashesAtOnce(Stage):
    def do_work(self):
        raise RuntimeError("boom after the go")

def make_stage(config, ctx):
    return CrashesAtOnce()
'''


def test_restart_delays_double_up_to_the_cap_and_too_many_restarts_in_the_window_exit_1(tmp_path, instance):
    env = with_modules(tmp_path, crash_after_go=CRASH_AFTER_GO)
    cfg = small_config(instance, **{"placement.engine.modules": {"risk": "crash_after_go"},
                                    "supervisor.spare_worker": False, "supervisor.max_restarts": 4,
                                    "supervisor.restart_window_s": 120, "supervisor.backoff_initial_ms": 50,
                                    "supervisor.backoff_max_ms": 300})
    run = Run(tmp_path, cfg, env=env)
    try:
        assert run.wait(180) == 1
        restarts = msgs(run, starts("engine exited with code 1; restarting in "))
        assert [ev["delay_ms"] for ev in restarts] == [50, 100, 200, 300]  # doubling, capped at backoff_max_ms
        assert [ev["restart"] for ev in restarts] == [1, 2, 3, 4]
        assert all(ev["msg"] == f"engine exited with code 1; restarting in {ev['delay_ms']} ms" for ev in restarts)
        # every crash was the stage's exception after the go, reported with its traceback
        crashes = msgs(run, lambda ev: ev.get("proc") == "engine" and ev.get("msg") == "engine crashed")
        assert len(crashes) == 5 and all("boom after the go" in ev["exc"] for ev in crashes)
        # the delays were waited: each respawn came at least (about) its delay after the restart was decided
        spawns = {ev["incarnation"]: ev for ev in msgs(run, msg("spawned engine"))}
        assert sorted(spawns) == [1, 2, 3, 4, 5]
        waited = [(spawns[i + 2]["mono_ns"] - ev["mono_ns"]) / 1e6 for i, ev in enumerate(restarts)]
        assert sum(waited) >= 0.5 * sum(ev["delay_ms"] for ev in restarts), waited
        last = run.wait_event(starts("engine exited with code 1; another restart"), 1)
        assert last["level"] == "ERROR"
        assert last["msg"].endswith("another restart (5 within 120 s) exceeds max_restarts=4: shutting down")
        s = run.summary()
        assert s["exit_code"] == 1 and s["processes"]["engine"]["restarts"] == 4
        assert s["processes"]["engine"]["exit_codes"] == [1] * 5
        assert list_segments(instance) == []
    finally:
        run.kill_group()


# ---------------------------------------------------------------------------
# 4: a second signal forces the kill
# ---------------------------------------------------------------------------

SLOW_CLOSE = '''
import time
from processes.signal import SignalStage, warm  # noqa: F401

class SlowClose(SignalStage):
    def on_close(self):
        self.ctx.log.info("signal: closing slowly")
        time.sleep(3600)

def make_stage(config, ctx):
    return SlowClose(config, ctx)
'''


def test_second_stop_signal_during_a_slow_shutdown_kills_everything_and_exits_1(tmp_path, instance):
    env = with_modules(tmp_path, slow_close=SLOW_CLOSE)
    cfg = small_config(instance, **{"placement.engine.modules": {"signal": "slow_close"},
                                    "supervisor.stop_timeout_s": 300})  # the orderly stop would wait for ages
    run = Run(tmp_path, cfg, env=env)
    try:
        run.wait_event(msg("all processes ready"), 120)
        run.wait_event(msg("spare 1 ready"), 60)  # a spare exists too: it must not outlive the run either
        mons = attach_monitors(instance)
        try:
            wait_flow(mons, 100, 30)
        finally:
            close_all(mons)
        run.p.send_signal(signal.SIGTERM)
        run.wait_event(msg("feed stopped"), 30)
        run.wait_event(lambda ev: ev.get("proc") == "engine" and ev.get("msg") == "signal: closing slowly", 30)
        assert run.p.poll() is None  # stuck in the orderly stop, waiting for the engine
        run.p.send_signal(signal.SIGTERM)
        assert run.wait(60) == 1
        forced = run.wait_event(msg("second stop signal: killing every process now"), 1)
        assert forced["level"] == "ERROR"
        assert not msgs(run, starts("engine did not stop within"))  # the signal ended it, not the stop timeout
        s = run.summary()
        assert s["forced"] is True and s["exit_code"] == 1
        assert s["processes"]["engine"]["exit_codes"] == [-signal.SIGKILL]
        assert list_segments(instance) == []
        pids = child_pids(run)
        assert len(pids) >= 3  # feed, engine, spare 1
        assert wait_dead(pids) == [], "a process outlived the forced stop"
    finally:
        run.kill_group()


# ---------------------------------------------------------------------------
# 5 + 6: the stop timeout and the drain timeout, in one slow shutdown
# ---------------------------------------------------------------------------

STUCK_BOOK = '''
import time
from processes.book import BookStage, warm  # noqa: F401

class Stuck(BookStage):
    """Reads some md, then stops reading (still heartbeating); its close never returns."""

    stuck = False

    def do_work(self):
        if self.md_records >= 300:
            if not self.stuck:
                self.stuck = True
                self.ctx.log.info("book: stopped consuming")
            return 0
        return super().do_work()

    def on_close(self):
        self.ctx.log.info("book: closing forever")
        time.sleep(3600)

def make_stage(config, ctx):
    return Stuck(config, ctx)
'''


def test_undrained_ring_is_reported_a_process_that_does_not_stop_is_killed_and_the_run_exits_0(tmp_path, instance):
    """The book stops consuming md while the feed keeps publishing, and its on_close hangs. SIGTERM: the feed
    stops, md is not drained within drain_timeout_s (a warning with the lag), the engine is told to stop
    anyway, does not exit in time and is killed; the shutdown completes with exit 0 and no segment left."""
    env = with_modules(tmp_path, stuck_book=STUCK_BOOK)
    cfg = small_config(instance, **{"placement.engine.modules": {"book": "stuck_book"},
                                    "supervisor.spare_worker": False, "supervisor.stop_timeout_s": 2,
                                    "supervisor.drain_timeout_s": 2})
    run = Run(tmp_path, cfg, env=env)
    try:
        run.wait_event(msg("all processes ready"), 120)
        engine = run.wait_event(msg("engine ready"), 5)
        run.wait_event(lambda ev: ev.get("proc") == "engine" and ev.get("msg") == "book: stopped consuming", 60)
        mons = attach_monitors(instance)
        try:
            wait_flow({"md": mons["md"]}, mons["md"].published + 100, 30)  # the feed keeps publishing
        finally:
            close_all(mons)
        run.p.send_signal(signal.SIGTERM)
        assert run.wait(90) == 0

        order = [ev.get("msg") for ev in run.events]
        drain = run.wait_event(msg("rings not drained within 2.0 s"), 1)
        assert drain["level"] == "WARNING"
        assert list(drain["lag"]) == ["md/book"] and drain["lag"]["md/book"] > 0
        # the engine waits stop_timeout_s plus drain_timeout_s: it hosts several stages and drains the rings
        # between them before it exits
        killed = run.wait_event(msg("engine did not stop within 4.0 s; killing it"), 1)
        assert killed["level"] == "ERROR"
        assert order.index("feed stopped") < order.index(drain["msg"]) < order.index(killed["msg"])
        assert run.wait_event(msg("engine stopped"), 1)["exitcode"] == -signal.SIGKILL
        assert msgs(run, lambda ev: ev.get("proc") == "engine" and ev.get("msg") == "book: closing forever")

        s = run.summary()
        md = s["rings"]["md"]
        assert md["published"] - md["consumed"]["book"] == drain["lag"]["md/book"]  # the feed stopped first
        assert s["exit_code"] == 0 and "forced" not in s
        assert s["processes"]["engine"]["exit_codes"] == [-signal.SIGKILL]
        assert s["processes"]["feed"]["exit_codes"] == [0]
        assert list_segments(instance) == []
        assert wait_dead([engine["pid"]]) == []
    finally:
        run.kill_group()


# ---------------------------------------------------------------------------
# 7: the spare is disabled after it keeps failing
# ---------------------------------------------------------------------------

SPARE_EXITS_FEED = '''
import multiprocessing
import os
from processes.feed import make_stage  # noqa: F401
from processes.feed import warm as _warm

def warm(config):
    if multiprocessing.current_process().name == "ringtrader-spare":
        os._exit(3)  # the spare dies while warming, before it says ready
    _warm(config)
'''


def test_spare_is_disabled_after_three_failures_and_a_later_crash_is_served_by_a_fresh_spawn(tmp_path, instance):
    env = with_modules(tmp_path, spare_exits_feed=SPARE_EXITS_FEED)
    cfg = small_config(instance, **{"placement.feed.modules": {"feed": "spare_exits_feed"},
                                    "supervisor.spare_worker": True})
    run = Run(tmp_path, cfg, env=env)
    try:
        run.wait_event(msg("all processes ready"), 120)
        engine = run.wait_event(msg("engine ready"), 5)
        off = run.wait_event(msg("spare disabled after 3 consecutive failures: restarts spawn fresh processes"), 120)
        assert off["level"] == "WARNING"
        exits = msgs(run, starts("spare "))
        failed = [ev for ev in exits if ev["msg"].endswith("before it was used")]
        assert [(ev["spare"], ev["exitcode"]) for ev in failed] == [(1, 3), (2, 3), (3, 3)]
        assert not msgs(run, lambda ev: re.fullmatch(r"spare \d+ ready", ev.get("msg", "")))

        os.kill(engine["pid"], signal.SIGKILL)
        back = run.wait_event(lambda ev: ev.get("msg") == "engine ready" and ev.get("incarnation") == 2, 60)
        assert back["via"] == "spawn" and back["pid"] != engine["pid"]
        mons = attach_monitors(instance)
        try:
            wait_flow({"reports": mons["reports"]}, mons["reports"].published + 100, 30)
        finally:
            close_all(mons)
        run.p.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0
        # disabled means no further spare at all, even once nothing is restarting; and no "no spare ready" notice
        assert not msgs(run, msg("spare 4 started"))
        assert not msgs(run, starts("no spare ready for"))
        s = run.summary()
        assert {k: s["spares"][k] for k in ("started", "ready", "used", "failed")} == \
            {"started": 3, "ready": 0, "used": 0, "failed": 3}
        assert s["processes"]["engine"]["restarts"] == 1 and s["processes"]["engine"]["restarts_via_spare"] == 0
        assert list_segments(instance) == []
    finally:
        run.kill_group()


# ---------------------------------------------------------------------------
# 8 + 9: a book's resync request reaches the feed; a second run of the instance is refused
# ---------------------------------------------------------------------------

RESYNC_BOOK = '''
from processes.book import BookStage, warm  # noqa: F401

class AsksOnce(BookStage):
    asked = False

    def do_work(self):
        n = super().do_work()
        if not self.asked and self.md_records >= 200:
            self.asked = self.ctx.event("resync", symbol=0, reason="test")
        return n

def make_stage(config, ctx):
    return AsksOnce(config, ctx)
'''


def snap_begins(md: Ring, symbol: int) -> np.ndarray:
    """pub_ns of every MD_SNAP_BEGIN of ``symbol`` published so far (md never wraps in these runs)."""
    n = md.published
    assert n < md.capacity
    recs = md.slots[:n]
    sel = (recs["kind"] == records.MD_SNAP_BEGIN) & (recs["symbol"] == symbol)
    return recs["pub_ns"][sel].copy()


def test_resync_request_is_forwarded_to_the_feed_and_a_second_run_of_the_instance_is_refused(tmp_path, instance):
    env = with_modules(tmp_path, resync_book=RESYNC_BOOK)
    cfg = small_config(instance, **{"placement.engine.modules": {"book": "resync_book"},
                                    "supervisor.spare_worker": False})
    run = Run(tmp_path, cfg, env=env)
    try:
        run.wait_event(msg("all processes ready"), 120)
        md = Ring.attach(segment_name(instance, "md"), records.ALL_DTYPES[RINGS["md"][0]], "monitor")
        try:
            ev = run.wait_event(lambda e: e.get("msg") == "event resync" and e.get("reason") == "test", 60)
            assert ev["proc"] == "engine" and ev["stage"] == "book" and ev["symbol"] == 0
            assert ev["forwarded"] is True and ev["to"] == "feed"
            # the feed answers with a fresh snapshot of symbol 0, published after the request
            deadline = time.monotonic() + 30
            while len(snap_begins(md, 0)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            snaps = snap_begins(md, 0)
            assert len(snaps) == 2 and snaps[1] > ev["mono_ns"], snaps
            assert len(snap_begins(md, 1)) == 1  # only the symbol asked for

            # a second supervisor for the same instance is refused and touches nothing
            segs = list_segments(instance)
            assert len(segs) == len(RINGS)
            second = Run(tmp_path, cfg, env=env)
            try:
                assert second.wait(90) == 1
                err = second.wait_event(starts("cannot create rings: "), 1)
                assert err["level"] == "ERROR"
                assert f"instance '{instance}' is already running" in err["msg"]
                assert not msgs(second, starts("spawned "))
            finally:
                second.kill_group()
            assert list_segments(instance) == segs
            assert run.p.poll() is None
            wait_flow({"md": md}, md.published + 200, 30)  # the first run keeps flowing
            mons = attach_monitors(instance)
            try:
                wait_flow({"reports": mons["reports"]}, mons["reports"].published + 100, 30)
            finally:
                close_all(mons)
        finally:
            md.close()
        run.p.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0
        assert [e.get("reason") for e in msgs(run, msg("event resync"))] == ["test"]  # no other resync happened
        assert not msgs(run, lambda e: e.get("level") == "ERROR")
        s = run.summary()
        assert s["exit_code"] == 0 and s["restarts"] == 0
        assert s["stages"]["book"]["counters"]["books_valid"] == 2
        assert list_segments(instance) == []
    finally:
        run.kill_group()
