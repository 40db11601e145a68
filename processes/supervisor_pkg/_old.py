"""Supervisor: creates the rings, spawns and pins the workers, watches them, shuts down in order.

``python -m processes.supervisor --config PATH [--duration S] [--summary-json PATH] [--log-file PATH]``

Lifecycle
---------
1. Load the config (``ConfigError`` -> message naming the key, exit 2).
2. Remove segments of this instance left by a killed run (owner pid gone),
   refuse to start if a live run of the same instance holds them, create the
   five rings (``core.config.RINGS``).
3. Spawn the workers with the ``spawn`` start method (the simulator first in
   ``sim`` mode, when ``processes/simulator`` exists and is enabled), pin each
   to its CPUs, apply SCHED_FIFO where configured (mlockall happens inside
   the worker), and wait for every ready event (``supervisor.ready_timeout_s``;
   on timeout: an error naming the workers, orderly exit, code 1).
4. Watch: exit codes (the loop wakes on a worker's exit) and heartbeats. A
   worker that exits, raises or stops heartbeating is restarted after a
   backoff that doubles per recent restart; more than ``max_restarts`` within
   ``restart_window_s`` -> orderly shutdown, exit 1. The replacement is the
   *spare* when one is ready (``supervisor.spare_worker``): a process started
   after the workers were ready, already warmed for every worker
   (``processes.runtime.spare_main``), that only has to pin itself, attach the
   rings and say ready; otherwise a fresh spawn. The next spare starts once no
   worker is (re)starting, so its warm-up never competes with a replacement.
   Metrics (``metrics.enabled``): ``processes.metrics`` serves Prometheus text
   from the ring headers and a view of the workers rebuilt twice a second; a
   port in use is one warning, and the run goes on without metrics.
5. SIGINT/SIGTERM (or ``--duration`` elapsed) -> orderly shutdown in
   pipeline order: feed stops first, ``md`` drains, book stops, ``book``
   drains, signal stops, ``signals``/``orders``/``reports`` drain, then risk,
   execution, simulator; exit 0; every segment unlinked. A second signal
   kills what is left at once (exit 1).
6. Prints a summary (records through each ring, drops/laps/stalls, restarts
   with ``recovery_ms`` = crash detected -> replacement ready and
   ``crash_to_ready_ms`` = exit seen (or last heartbeat of a hung worker) ->
   ready, spares started/used,
   per-hop and end-to-end latency percentiles from the records' trace
   fields); ``--summary-json`` writes it as JSON too.

Log stream: one JSON object per line (``ts`` ISO UTC, ``mono_ns``, ``proc``,
``level``, ``msg``, extras) from the supervisor and every worker, to stdout
and optionally a file.

Exit codes: 0 clean, 1 start-up failure / too many restarts / forced, 2 config error.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.config import PIPELINE, RINGS, SystemConfig, load_config
from core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXIT_OK = 0
EXIT_FAIL = 1
EXIT_CONFIG = 2
_TICK_S = 0.01  # supervisor loop period: events, exit codes, heartbeats
# Heartbeat values that are a current state, not a count: across restarts the
# latest incarnation's value stands instead of the sum.
GAUGES = frozenset({"books_valid", "books", "clients", "connected", "rest_used_weight_1m"})
_VIEW_PERIOD_S = 0.5  # how often the metrics view of the workers (and merged latency) is rebuilt

log = logging.getLogger("ringtrader.supervisor")


# ---------------------------------------------------------------------------
# Log stream
# ---------------------------------------------------------------------------


class LogSink:
    """Writes JSON lines (supervisor's and workers' events) to stdout and/or a file."""

    def __init__(self, stdout: bool = True, path: str | None = None):
        self.stdout = stdout
        self.file = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - lives as long as the run

    def write(self, event: dict) -> None:
        line = json.dumps(event, default=str, separators=(",", ":"))
        if self.stdout:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        if self.file is not None:
            self.file.write(line + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class SinkHandler(logging.Handler):
    """The supervisor's own log records, as ``proc = "supervisor"`` lines."""

    def __init__(self, sink: LogSink):
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        from processes.runtime import _STD_LOG_ATTRS, iso_now

        ev = {"ts": iso_now(record.created), "mono_ns": time.monotonic_ns(), "proc": "supervisor",
              "level": record.levelname, "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _STD_LOG_ATTRS and not k.startswith("_"):
                ev[k] = v
        if record.exc_info:
            import traceback

            ev["exc"] = "".join(traceback.format_exception(*record.exc_info))
        self.sink.write(ev)


# ---------------------------------------------------------------------------
# Worker bookkeeping
# ---------------------------------------------------------------------------



def _fold(totals: dict, stats: dict) -> dict:
    """Add an incarnation's numeric heartbeat counters into ``totals`` (gauges: latest wins)."""
    for k, v in stats.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            totals[k] = v if k in GAUGES else totals.get(k, 0) + v
    return totals

@dataclass
class Worker:
    name: str
    proc: object = None  # multiprocessing Process of the current incarnation
    cmd_q: object = None
    evt_q: object = None
    incarnation: int = 0
    state: str = "new"  # new | starting | running | backoff | stopping | stopped
    started_at: float = 0.0  # monotonic s of the current spawn
    ready_at: float = 0.0
    last_hb: float = 0.0
    next_start: float = 0.0
    down_since: float = 0.0  # when the crash/hang was detected (for recovery time)
    crash_at: float = 0.0  # when it went down: exit seen (sentinel wake-up) or, for a hang, its last heartbeat
    restarts: list = field(default_factory=list)  # monotonic s of each restart
    recovery_ms: list = field(default_factory=list)  # crash detected -> replacement ready (backoff included)
    crash_to_ready_ms: list = field(default_factory=list)  # crash -> replacement ready
    via_spare: int = 0  # restarts served by the pre-warmed spare process
    exits: list = field(default_factory=list)  # exit codes of finished incarnations
    stats: dict = field(default_factory=dict)  # current incarnation's counters
    stats_done: dict = field(default_factory=dict)  # summed counters of finished incarnations
    lat_wire: dict = field(default_factory=dict)  # current incarnation's latency (cumulative)
    lat_done: object = None  # LatencySet merged over finished incarnations
    start_info: dict = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.exitcode is None


@dataclass
class Spare:
    """The pre-started process that becomes a crashed worker's replacement (``runtime.spare_main``)."""

    seq: int
    proc: object
    cmd_q: object
    evt_q: object
    started_at: float
    ready_at: float = 0.0  # 0 while it is still importing and warming
    serves: tuple = ()  # workers it warmed and can become


class Supervisor:
    def __init__(self, cfg: SystemConfig, sink: LogSink):
        from core.latency import LatencySet

        self.cfg = cfg
        self.sink = sink
        self.ctx = mp.get_context("spawn")
        self.rings = {}
        names = [n for n in PIPELINE]
        if self._simulator_wanted():
            names.append("simulator")
        self.workers = {n: Worker(n, lat_done=LatencySet()) for n in names}
        self.stop_signals = 0
        self.exit_code = EXIT_OK
        self.t_start = time.monotonic()
        self.cold_start_ms = None
        self.started = False  # every worker was ready and got the go
        self.flow_s = None  # seconds from the go to the start of shutdown
        self._warned = set()
        self.spare: Spare | None = None
        self.spare_stats = {"enabled": cfg.supervisor.spare_worker, "started": 0, "ready": 0, "used": 0,
                            "failed": 0, "warm_ms": [], "pids": []}
        self._spare_failures = 0  # consecutive spares that died before becoming ready
        self._spare_off = not cfg.supervisor.spare_worker
        self.metrics = None  # processes.metrics.MetricsServer while serving
        self.metrics_port = None  # the port it bound (config port 0 = any free one)
        self.metrics_view: dict = {}  # what the metrics collector reads: replaced whole, never mutated
        self._next_view = 0.0

    # -- setup ------------------------------------------------------------------

    def _simulator_wanted(self) -> bool:
        p = self.cfg.processes["simulator"]
        if self.cfg.mode != "sim" or not p.enabled:
            return False
        try:
            spec = importlib.util.find_spec(p.module)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            log.warning("mode sim: simulator module %s not found; running without it", p.module)
            return False
        return True

    def _on_signal(self, signum, frame) -> None:
        self.stop_signals += 1
        if self.stop_signals >= 2:
            # second signal: stop waiting for anyone
            raise KeyboardInterrupt

    def create_rings(self) -> None:
        from core import records
        from ringbuffers.ring import Ring, list_segments, remove_stale, segment_name

        inst = self.cfg.instance
        removed = remove_stale(inst)
        if removed:
            log.warning("removed %d stale segments of a killed run", len(removed), extra={"segments": removed})
        live = list_segments(inst)
        if live:
            raise RuntimeError(f"instance {inst!r} is already running (live segments: {', '.join(live)}); "
                               f"stop it or set a different \"instance\"")
        for ring, (dtype_name, _producer, consumers) in RINGS.items():
            rc = self.cfg.rings[ring]
            self.rings[ring] = Ring.create(segment_name(inst, ring), records.ALL_DTYPES[dtype_name], rc.capacity,
                                           len(consumers), rc.policy)
        log.info("created rings", extra={"rings": {r: f"{self.cfg.rings[r].capacity}/{self.cfg.rings[r].policy}"
                                                   for r in RINGS}})

    def unlink_rings(self) -> None:
        for ring in self.rings.values():
            ring.unlink()

    # -- spawning -----------------------------------------------------------------

    def spawn(self, w: Worker) -> None:
        from processes.runtime import worker_main
        from ringbuffers.control import ControlQueue

        pcfg = self.cfg.processes[w.name]
        w.incarnation += 1
        w.cmd_q = ControlQueue(max_size_bytes=1 << 16)
        w.evt_q = ControlQueue(max_size_bytes=4 << 20)  # room for log bursts and latency reports
        w.proc = self.ctx.Process(target=worker_main, name=f"ringtrader-{w.name}",
                                  args=(w.name, self.cfg, w.cmd_q, w.evt_q, w.incarnation))
        w.proc.start()
        w.state = "starting"
        w.started_at = time.monotonic()
        w.stats = {}
        w.lat_wire = {}
        self._place(w)
        log.info("spawned %s", w.name, extra={"worker": w.name, "pid": w.proc.pid, "incarnation": w.incarnation,
                                                "cpus": list(pcfg.cpus)})

    def _place(self, w: Worker) -> None:
        """Pin the worker's process to its CPUs and apply its real-time priority (spawned or assigned)."""
        pcfg = self.cfg.processes[w.name]
        try:
            os.sched_setaffinity(w.proc.pid, pcfg.cpus)
        except OSError as exc:
            self._warn_once(f"affinity-{w.name}", f"could not pin {w.name} to CPUs {list(pcfg.cpus)}: {exc}")
        if pcfg.rt_priority is not None:
            try:
                os.sched_setscheduler(w.proc.pid, os.SCHED_FIFO, os.sched_param(pcfg.rt_priority))
            except OSError as exc:
                self._warn_once("rt", f"SCHED_FIFO priority not applied ({exc}); workers run with normal "
                                      "scheduling. Grant CAP_SYS_NICE (or run as root) to use rt_priority.")

    def restart(self, w: Worker) -> None:
        """Replace a crashed worker: by the warmed spare when one is ready for it, else a fresh spawn."""
        sp = self.spare
        if sp is not None and sp.ready_at and w.name in sp.serves and sp.proc.exitcode is None:
            self._assign(w, sp)
            return
        if not self._spare_off and w.name != "simulator":
            why = "none started" if sp is None else ("still warming" if not sp.ready_at else
                                                     f"it cannot serve {w.name}" if w.name not in sp.serves
                                                     else "it exited")
            log.info("no spare ready for %s (%s): spawning a fresh process", w.name, why, extra={"worker": w.name})
        self.spawn(w)

    # -- the spare ------------------------------------------------------------------

    def start_spare(self) -> None:
        from processes.runtime import spare_main
        from ringbuffers.control import ControlQueue

        seq = self.spare_stats["started"] + 1
        cmd_q = ControlQueue(max_size_bytes=1 << 16)
        evt_q = ControlQueue(max_size_bytes=4 << 20)  # becomes the worker's event queue once assigned
        # Not pinned here: it inherits the supervisor's CPUs, so its warm-up stays off cores dedicated to
        # workers; it is pinned to a worker's CPUs when it becomes that worker.
        proc = self.ctx.Process(target=spare_main, name="ringtrader-spare", args=(self.cfg, cmd_q, evt_q, seq))
        proc.start()
        self.spare = Spare(seq, proc, cmd_q, evt_q, time.monotonic())
        self.spare_stats["started"] = seq
        self.spare_stats["pids"].append(proc.pid)
        log.info("spare %d started", seq, extra={"spare": seq, "pid": proc.pid})

    def _pump_spare(self, sp: Spare) -> None:
        while True:
            msgs = sp.evt_q.get_many(timeout=0, max_messages=500)
            if not msgs:
                return
            for m in msgs:
                kind = m.get("type")
                if kind == "spare_ready":
                    sp.ready_at = time.monotonic()
                    sp.serves = tuple(m.get("workers") or ())
                    self._spare_failures = 0
                    self.spare_stats["ready"] += 1
                    self.spare_stats["warm_ms"].append(m.get("warm_ms"))
                    log.info("spare %d ready", sp.seq, extra={"spare": sp.seq, "pid": m.get("pid"),
                                                              "warm_ms": m.get("warm_ms"), "serves": list(sp.serves)})
                elif kind == "log":
                    ev = {"ts": m.pop("ts", None), "mono_ns": m.pop("mono_ns", None), "proc": "spare",
                          "level": m.pop("level", "INFO"), "msg": m.pop("msg", "")}
                    m.pop("type", None)
                    ev.update(m)
                    self.sink.write(ev)

    def _drop_spare(self, sp: Spare) -> None:
        sp.proc.join(timeout=0.1)
        for q in (sp.cmd_q, sp.evt_q):
            q.close()
        self.spare = None

    def _tend_spare(self) -> None:
        """Keep one spare: watch the current one, or start the next once no worker is (re)starting.

        A new spare waits for replacements to be ready: its warm-up would
        otherwise compete with them for the CPUs.
        """
        if self._spare_off:
            return
        sp = self.spare
        if sp is not None:
            self._pump_spare(sp)
            code = sp.proc.exitcode
            if code is not None:
                self._pump_spare(sp)
                self.spare_stats["failed"] += 1
                self._spare_failures += 1
                log.warning("spare %d exited with code %s before it was used", sp.seq, code,
                            extra={"spare": sp.seq, "exitcode": code})
                self._drop_spare(sp)
                if self._spare_failures >= 3:
                    self._spare_off = True
                    log.warning("spare disabled after 3 consecutive failures: restarts spawn fresh processes")
            return
        if self.started and not any(w.state in ("starting", "backoff") for w in self.workers.values()):
            self.start_spare()

    def _assign(self, w: Worker, sp: Spare) -> None:
        self._pump_spare(sp)  # its own events (warm-up logs) before the worker's
        w.incarnation += 1
        w.proc, w.cmd_q, w.evt_q = sp.proc, sp.cmd_q, sp.evt_q
        w.cmd_q.put({"type": "assign", "worker": w.name, "incarnation": w.incarnation})
        w.state = "starting"
        w.started_at = time.monotonic()
        w.stats = {}
        w.lat_wire = {}
        w.via_spare += 1
        self.spare = None
        self.spare_stats["used"] += 1
        self._place(w)
        log.info("assigned spare %d to %s", sp.seq, w.name,
                 extra={"worker": w.name, "pid": w.proc.pid, "incarnation": w.incarnation, "spare": sp.seq,
                        "cpus": list(self.cfg.processes[w.name].cpus)})

    def stop_spare(self) -> None:
        sp = self.spare
        if sp is None:
            return
        if sp.proc.exitcode is None:
            if sp.ready_at:
                sp.cmd_q.put({"type": "shutdown"})
            else:
                sp.proc.terminate()  # still warming, not reading its queue yet: SIGTERM ends it at once
            sp.proc.join(timeout=2)
            if sp.proc.exitcode is None:
                log.warning("spare %d did not stop within 2 s; killing it", sp.seq)
                sp.proc.kill()
                sp.proc.join(timeout=2)
        self._pump_spare(sp)
        log.info("spare %d stopped", sp.seq, extra={"spare": sp.seq, "exitcode": sp.proc.exitcode})
        self._drop_spare(sp)

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg)

    # -- events -------------------------------------------------------------------

    def pump(self, w: Worker) -> None:
        if w.evt_q is None:
            return
        while True:
            msgs = w.evt_q.get_many(timeout=0, max_messages=500)
            if not msgs:
                return
            for m in msgs:
                self.handle(w, m)

    def handle(self, w: Worker, m: dict) -> None:
        kind = m.get("type")
        now = time.monotonic()
        if kind == "log":
            ev = {"ts": m.pop("ts", None), "mono_ns": m.pop("mono_ns", None), "proc": w.name,
                  "level": m.pop("level", "INFO"), "msg": m.pop("msg", "")}
            m.pop("type", None)
            ev.update(m)
            self.sink.write(ev)
        elif kind == "ready":
            w.state = "running"
            w.ready_at = now
            w.last_hb = now
            w.start_info = {k: v for k, v in m.items() if k not in ("type", "mono_ns")}
            extra = {"worker": w.name, "pid": m.get("pid"), "incarnation": w.incarnation,
                     "ready_ms": round((now - w.started_at) * 1000, 1),
                     "via": "spare" if "spare" in m else "spawn"}
            if w.down_since:
                rec = round((now - w.down_since) * 1000, 1)
                c2r = round((now - w.crash_at) * 1000, 1)
                w.recovery_ms.append(rec)
                w.crash_to_ready_ms.append(c2r)
                extra["recovery_ms"] = rec
                extra["crash_to_ready_ms"] = c2r
                w.down_since = w.crash_at = 0.0
            log.info("%s ready", w.name, extra=extra)
            if self.started or w.name == "simulator":
                # a replacement joins the running pipeline at once; the exchange serves before the feed starts
                w.cmd_q.put({"type": "start"})
            mlock = str(m.get("mlock", ""))
            if mlock.startswith("failed"):
                self._warn_once("mlock", f"mlockall not applied ({mlock.split(':', 1)[1].strip()}); worker memory "
                                         "may be paged out. Raise RLIMIT_MEMLOCK or grant CAP_IPC_LOCK.")
        elif kind in ("heartbeat", "final"):
            w.last_hb = now
            w.stats = dict(m.get("stats") or {})
            if "latency" in m:
                w.lat_wire = m["latency"]
        else:
            if kind == "resync":
                # the book asks the feed for a fresh snapshot of one symbol (then logged like any event)
                feed = self.workers.get("feed")
                m["forwarded"] = bool(feed is not None and feed.cmd_q is not None and feed.cmd_q.put_nowait(
                    {"type": "resync", "symbol": m.get("symbol")}))
            ev = {"ts": None, "mono_ns": m.pop("mono_ns", None), "proc": w.name, "level": "INFO",
                  "msg": f"event {kind}"}
            ev.update(m)
            from processes.runtime import iso_now

            ev["ts"] = iso_now()
            self.sink.write(ev)

    def _retire(self, w: Worker) -> None:
        """Fold a finished incarnation's counters and histograms into the totals."""
        from core.latency import LatencySet

        self.pump(w)
        w.lat_done.merge(LatencySet.from_wire(w.lat_wire))
        _fold(w.stats_done, w.stats)
        w.stats, w.lat_wire = {}, {}
        if w.proc is not None:
            w.exits.append(w.proc.exitcode)
            w.proc.join(timeout=0.1)
        for q in (w.cmd_q, w.evt_q):
            if q is not None:
                q.close()
        w.cmd_q = w.evt_q = None

    # -- watching -------------------------------------------------------------------

    def check(self) -> bool:
        """One watch pass. Returns False when the run must end (too many restarts)."""
        sv = self.cfg.supervisor
        now = time.monotonic()
        for w in self.workers.values():
            self.pump(w)
            if w.state in ("starting", "running"):
                code = w.proc.exitcode
                if code is not None:
                    self.pump(w)
                    why = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
                    if not self._crashed(w, why, now, now):
                        return False
                elif w.state == "running" and now - w.last_hb > sv.heartbeat_timeout_s:
                    log.error("%s hung: no heartbeat for %.1f s; killing it", w.name, now - w.last_hb,
                              extra={"worker": w.name})
                    w.proc.kill()
                    w.proc.join(timeout=2)
                    if not self._crashed(w, "hung", now, w.last_hb):
                        return False
                elif w.state == "starting" and w.incarnation > 1 and now - w.started_at > sv.ready_timeout_s:
                    log.error("restarted %s not ready within %.1f s; killing it", w.name, sv.ready_timeout_s)
                    w.proc.kill()
                    w.proc.join(timeout=2)
                    if not self._crashed(w, "never ready", now, now):
                        return False
            elif w.state == "backoff" and now >= w.next_start:
                self.restart(w)
        self._tend_spare()
        return True

    def _crashed(self, w: Worker, why: str, now: float, crash_at: float) -> bool:
        """``now``: when the supervisor detected it; ``crash_at``: when it went down (see ``Worker``)."""
        sv = self.cfg.supervisor
        self._retire(w)
        if not w.down_since:  # a replacement that fails too keeps the first crash's times
            w.down_since = now
            w.crash_at = crash_at
        recent = [t for t in w.restarts if now - t <= sv.restart_window_s] + [now]
        if len(recent) > sv.max_restarts:
            log.error("%s %s; another restart (%d within %.0f s) exceeds max_restarts=%d: shutting down", w.name,
                      why, len(recent), sv.restart_window_s, sv.max_restarts, extra={"worker": w.name})
            w.state = "stopped"
            self.exit_code = EXIT_FAIL
            return False
        w.restarts.append(now)
        delay_ms = min(sv.backoff_initial_ms * (2 ** (len(recent) - 1)), sv.backoff_max_ms)
        w.state = "backoff"
        w.next_start = now + delay_ms / 1000.0
        log.warning("%s %s; restarting in %d ms", w.name, why, delay_ms,
                    extra={"worker": w.name, "restart": len(w.restarts), "delay_ms": delay_ms})
        return True

    def wait_ready(self, names, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            pending = []
            for n in names:
                w = self.workers[n]
                self.pump(w)
                if w.state == "running":
                    continue
                if w.proc.exitcode is not None:
                    self.pump(w)
                    log.error("%s exited with code %s before it was ready", n, w.proc.exitcode,
                              extra={"worker": n})
                    return False
                pending.append(n)
            if not pending:
                return True
            if time.monotonic() > deadline:
                log.error("worker(s) not ready within %.1f s: %s", timeout_s, ", ".join(pending),
                          extra={"not_ready": pending})
                return False
            if self.stop_signals:
                return False
            time.sleep(_TICK_S)

    # -- shutdown -------------------------------------------------------------------

    def drain(self, ring_names, timeout_s: float) -> None:
        """Wait until every live consumer of these rings has read everything published.

        A consumer that is not running (crashed, or failed to start) is not
        waited for: nobody would read for it.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            lagging = {}
            for r in ring_names:
                st = self.rings[r].stats()
                for i, name in enumerate(RINGS[r][2]):
                    w = self.workers[name]
                    lag = st.published - st.consumed[i]
                    if lag > 0 and w.alive and w.state in ("running", "stopping"):
                        lagging[f"{r}/{name}"] = lag
            if not lagging:
                return
            if time.monotonic() > deadline:
                log.warning("rings not drained within %.1f s", timeout_s, extra={"lag": lagging})
                return
            for w in self.workers.values():
                self.pump(w)
            time.sleep(_TICK_S / 5)

    def stop_worker(self, w: Worker) -> None:
        sv = self.cfg.supervisor
        if not w.alive:
            if w.proc is not None and w.state != "stopped":
                self._retire(w)
            w.state = "stopped"
            return
        if w.state != "running":
            # never became ready (start-up failure, or restarting): nothing to hand over, no drain
            w.proc.kill()
            w.proc.join(timeout=2)
            self._retire(w)
            w.state = "stopped"
            log.info("%s killed before it was ready", w.name, extra={"worker": w.name})
            return
        w.state = "stopping"
        w.cmd_q.put({"type": "shutdown"})
        deadline = time.monotonic() + sv.stop_timeout_s
        while w.proc.exitcode is None and time.monotonic() < deadline:
            self.pump(w)
            time.sleep(_TICK_S / 5)
        if w.proc.exitcode is None:
            log.error("%s did not stop within %.1f s; killing it", w.name, sv.stop_timeout_s)
            w.proc.kill()
            w.proc.join(timeout=2)
        self._retire(w)
        w.state = "stopped"
        log.info("%s stopped", w.name, extra={"worker": w.name, "exitcode": w.exits[-1]})

    def shutdown(self) -> None:
        """Orderly: stop producers before their consumers, draining the rings in between."""
        dt = self.cfg.supervisor.drain_timeout_s
        log.info("shutting down in pipeline order")
        self.stop_spare()  # idle, holds no ring: first, so it cannot be assigned or outlive the run
        self.stop_worker(self.workers["feed"])
        self.drain(["md"], dt)
        self.stop_worker(self.workers["book"])
        self.drain(["book"], dt)
        self.stop_worker(self.workers["signal"])
        self.drain(["signals", "orders", "reports"], dt)
        self.stop_worker(self.workers["risk"])
        self.drain(["orders"], dt)
        self.stop_worker(self.workers["execution"])
        if "simulator" in self.workers:
            self.stop_worker(self.workers["simulator"])

    def kill_all(self) -> None:
        if self.spare is not None:
            self.spare.proc.kill()
            self.spare.proc.join(timeout=2)
            self._drop_spare(self.spare)
        for w in self.workers.values():
            if w.alive:
                w.proc.kill()
        for w in self.workers.values():
            if w.proc is not None:
                w.proc.join(timeout=2)
                if w.state != "stopped":
                    self._retire(w)
                    w.state = "stopped"

    def _wait(self, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``, waking at once when a worker process exits.

        The wake-up on the process sentinel is what makes ``crash_at`` the
        crash time (to within scheduling delay) rather than the next tick.
        """
        sentinels = [w.proc.sentinel for w in self.workers.values()
                     if w.state in ("starting", "running") and w.proc is not None]
        if sentinels:
            mp_connection.wait(sentinels, timeout_s)
        else:
            time.sleep(timeout_s)

    # -- metrics ------------------------------------------------------------------------

    def start_metrics(self) -> None:
        """Serve Prometheus metrics when enabled; a bind failure is a warning, the system runs without them."""
        mc = self.cfg.metrics
        if not mc.enabled:
            return
        from processes.metrics import MetricsServer

        self.refresh_view(force=True)
        try:
            self.metrics = MetricsServer(self.cfg.instance, lambda: self.metrics_view, mc.host, mc.port)
        except OSError as exc:
            log.warning("metrics endpoint not started: cannot listen on %s:%d (%s); running without metrics. "
                        "Free the port or set metrics.port (0 = any free port).", mc.host, mc.port, exc,
                        extra={"host": mc.host, "port": mc.port})
            return
        self.metrics_port = self.metrics.port
        log.info("metrics endpoint listening", extra={"host": mc.host, "port": self.metrics.port,
                                                       "url": f"http://{mc.host}:{self.metrics.port}/metrics"})

    def stop_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def refresh_view(self, force: bool = False) -> None:
        """Rebuild what the metrics collector reports about workers (twice a second while serving)."""
        from core.latency import LatencySet

        now = time.monotonic()
        if not force and (self.metrics is None or now < self._next_view):
            return
        self._next_view = now + _VIEW_PERIOD_S
        merged = LatencySet()
        workers = {}
        for w in self.workers.values():
            merged.merge(w.lat_done).merge(LatencySet.from_wire(w.lat_wire))
            workers[w.name] = {"up": w.state == "running" and w.alive, "restarts": len(w.restarts),
                               "last_hb": w.last_hb if w.state == "running" else 0.0,
                               "recovery_ms": w.recovery_ms[-1] if w.recovery_ms else None,
                               "via_spare": w.via_spare}
        sp = self.spare
        self.metrics_view = {"workers": workers, "latency": merged.summary(),
                             "spares": {"started": self.spare_stats["started"], "used": self.spare_stats["used"],
                                        "failed": self.spare_stats["failed"],
                                        "ready": int(sp is not None and bool(sp.ready_at))}}

    # -- summary ----------------------------------------------------------------------

    def summary(self) -> dict:
        from core.latency import LatencySet

        rings = {}
        for name, ring in self.rings.items():
            st = ring.stats()
            consumers = RINGS[name][2]
            rings[name] = {
                "capacity": st.capacity, "policy": st.policy, "published": st.published,
                "consumed": {c: st.consumed[i] for i, c in enumerate(consumers)},
                "drops": sum(st.lost), "laps": sum(st.lapped), "stalls": st.stalls,
            }
        merged = LatencySet()
        workers = {}
        for w in self.workers.values():
            lat = LatencySet().merge(w.lat_done).merge(LatencySet.from_wire(w.lat_wire))
            merged.merge(lat)
            totals = _fold(dict(w.stats_done), w.stats)
            workers[w.name] = {"restarts": len(w.restarts), "recovery_ms": w.recovery_ms,
                               "crash_to_ready_ms": w.crash_to_ready_ms, "restarts_via_spare": w.via_spare,
                               "exit_codes": w.exits, "counters": totals}
        latency = {hop: {k: s[k] for k in ("count", "p50_us", "p90_us", "p99_us", "p999_us", "max_us")}
                   for hop, s in merged.summary().items()}
        return {"instance": self.cfg.instance, "mode": self.cfg.mode, "exit_code": self.exit_code,
                "cold_start_ms": self.cold_start_ms, "flow_s": self.flow_s,
                "run_s": round(time.monotonic() - self.t_start, 3),
                "rings": rings, "workers": workers, "latency": latency,
                "spares": {k: (list(v) if isinstance(v, list) else v) for k, v in self.spare_stats.items()},
                "metrics_port": self.metrics_port}

    # -- main -----------------------------------------------------------------------------

    def run(self, duration_s: float | None = None) -> int:
        os.environ["NUMBA_CACHE_DIR"] = os.path.abspath(os.environ.get("NUMBA_CACHE_DIR") or PROJECT_ROOT / ".numba_cache")
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        forced = False
        try:
            try:
                self.create_rings()
            except Exception as exc:  # noqa: BLE001 - reported, then a clean non-zero exit
                log.error("cannot create rings: %s", exc)
                self.exit_code = EXIT_FAIL
                return self.exit_code
            self.start_metrics()
            timeout = self.cfg.supervisor.ready_timeout_s
            order = (["simulator"] if "simulator" in self.workers else []) + list(reversed(PIPELINE))
            ok = True
            if "simulator" in self.workers:
                self.spawn(self.workers["simulator"])
                ok = self.wait_ready(["simulator"], timeout)
            if ok:
                for n in order[1:] if "simulator" in self.workers else order:
                    self.spawn(self.workers[n])
                ok = self.wait_ready(order, timeout)
            if not ok:
                self.exit_code = EXIT_FAIL if not self.stop_signals else EXIT_OK
                if self.exit_code:
                    log.error("start-up failed; shutting down")
            else:
                self.started = True
                for w in self.workers.values():
                    w.cmd_q.put({"type": "start"})
                self.cold_start_ms = round((time.monotonic() - self.t_start) * 1000, 1)
                log.info("all workers ready", extra={"cold_start_ms": self.cold_start_ms})
                t_ready = time.monotonic()
                while not self.stop_signals:
                    if duration_s is not None and time.monotonic() - t_ready >= duration_s:
                        log.info("duration of %.1f s elapsed", duration_s)
                        break
                    if not self.check():
                        break
                    self.refresh_view()
                    self._wait(_TICK_S)
                self.flow_s = round(time.monotonic() - t_ready, 3)
                if self.stop_signals:
                    log.info("stop requested by signal")
            self.shutdown()
        except KeyboardInterrupt:
            forced = True
            log.error("second stop signal: killing every worker now")
            self.exit_code = EXIT_FAIL
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.kill_all()
            self.final = self.summary()
            self.stop_metrics()  # before the rings go: it reads their headers
            self.unlink_rings()
            for r in self.rings.values():
                r.close()
            if forced:
                self.final["forced"] = True
        return self.exit_code


def format_summary(s: dict) -> str:
    lines = [f"== ringtrader summary: instance {s['instance']} mode {s['mode']} exit {s['exit_code']} "
             f"run {s['run_s']} s cold start {s['cold_start_ms']} ms =="]
    lines.append(f"{'ring':<9}{'published':>11}  {'consumed (per consumer)':<44}{'drops':>7}{'laps':>6}{'stalls':>8}")
    for name, r in s["rings"].items():
        cons = " ".join(f"{c}={n}" for c, n in r["consumed"].items())
        lines.append(f"{name:<9}{r['published']:>11}  {cons:<44}{r['drops']:>7}{r['laps']:>6}{r['stalls']:>8}")
    lines.append("workers: " + ", ".join(f"{n} restarts={w['restarts']}" +
                                         (f" recovery_ms={w['recovery_ms']}" if w["recovery_ms"] else "")
                                         for n, w in s["workers"].items()))
    bk = (s["workers"].get("book") or {}).get("counters") or {}
    if "books_valid" in bk:  # the book worker's state at exit: valid books, what it published, resyncs
        lines.append("book: " + " ".join(f"{k}={bk.get(k, 0)}" for k in (
            "books_valid", "books", "tops", "depth_snapshots", "trades", "bars_closed", "resyncs_requested",
            "chain_breaks", "crossed", "lapped", "stale_dropped")))
    sp = s.get("spares") or {}
    if sp.get("enabled"):
        lines.append(f"spares: started={sp['started']} ready={sp['ready']} used={sp['used']} failed={sp['failed']}"
                     f" warm_ms={sp['warm_ms']}")
    lines.append(f"{'latency (us)':<18}{'count':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'p99.9':>10}{'max':>11}")
    for hop, h in s["latency"].items():
        lines.append(f"{hop:<18}{h['count']:>10}{h['p50_us']:>10.1f}{h['p90_us']:>10.1f}{h['p99_us']:>10.1f}"
                     f"{h['p999_us']:>10.1f}{h['max_us']:>11.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m processes.supervisor", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(PROJECT_ROOT / "config" / "system.json"))
    ap.add_argument("--duration", type=float, default=None, help="run this many seconds, then shut down in order")
    ap.add_argument("--summary-json", default=None, help="also write the exit summary as JSON here")
    ap.add_argument("--log-file", default=None, help="also append the JSON log stream here (overrides logging.file)")
    ap.add_argument("--quiet-summary", action="store_true", help="do not print the text summary")
    args = ap.parse_args(argv)

    sink = LogSink(stdout=True, path=args.log_file)
    root = logging.getLogger()
    root.handlers[:] = [SinkHandler(sink)]
    root.setLevel(logging.INFO)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        log.error("config error: %s", exc, extra={"config": args.config, "key": exc.path})
        sys.stderr.write(f"config error: {exc}\n")
        return EXIT_CONFIG
    root.setLevel(cfg.logging.level)
    if not cfg.logging.stdout or (cfg.logging.file and not args.log_file):
        sink.close()
        sink = LogSink(stdout=cfg.logging.stdout, path=args.log_file or cfg.logging.file)
        root.handlers[:] = [SinkHandler(sink)]
    log.info("starting", extra={"config": cfg.source_path, "instance": cfg.instance, "mode": cfg.mode,
                                "pid": os.getpid()})
    sup = Supervisor(cfg, sink)
    code = sup.run(args.duration)
    summary = sup.final
    log.info("summary", extra={"summary": summary})
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
    if not args.quiet_summary:
        sys.stdout.write(format_summary(summary) + "\n")
        sys.stdout.flush()
    sink.close()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
