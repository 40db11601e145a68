"""Process runtime: what every process does around its stages (or, for the simulator, its ``run``).

The supervisor spawns ``worker_main(name, config, cmd_q, evt_q, incarnation)``
for each process of the ``placement`` with the ``spawn`` start method. It:

1. arranges to die with the supervisor (``PR_SET_PDEATHSIG`` = SIGTERM, plus a
   parent-pid check), ignores SIGINT (the supervisor coordinates shutdown;
   Ctrl-C reaches the whole process group) and turns SIGTERM into a stop
   request;
2. forwards every ``logging`` record as a JSON event to the supervisor;
3. pins itself to its configured CPUs and applies ``mlockall`` if configured
   (a failure is reported in the ready event; the supervisor warns once);
4. attaches the ring ends of every stage it hosts (``core.topology``): one
   consumer handle per (ring, consuming stage), one producer handle per
   produced ring, even when both ends live in this process;
5. warms the shared numba kernels (ring protocol, latency histograms) and each
   stage module's ``warm(config)``, then builds the stages
   (``make_stage(config, stage_ctx)``, see ``processes.stage``);
6. says ready (``gc.freeze()`` first: the start-up heap is never scanned
   again), waits for the supervisor's go, and runs the duty cycle
   (``run_stages``): every stage's ``do_work`` in pipeline order, the
   stages' housekeeping, routed commands, a heartbeat when due, then the one
   idle strategy of the process with the work done. A stage driven by its
   own event loop (the feed) runs that loop instead (``drive``);
7. on stop, runs the duty cycle until the rings inside the process are
   drained (bounded by ``supervisor.drain_timeout_s``), closes the stages,
   sends the final counters and latency histograms, and exits 0 — or, if a
   stage raised, logs the traceback as an error event and exits 1 (the
   supervisor restarts the whole process; each stage resumes from its ring
   cursors, so ``block`` rings lose nothing).

The spare (``spare_main``): the supervisor keeps one process that has
already done the expensive part of steps 1-5 for *every* process (interpreter
start, imports, ``warm_all``), then waits on its control queue. On
``{"type": "assign", "worker": name, "incarnation": n}`` it becomes that
process (``_serve``: pin, attach, build, ready, run), so a crashed process's
replacement is ready in milliseconds instead of seconds.

Latency hop names: ``core.topology``.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import gc
import importlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback

from core import numba_cache

numba_cache.configure()  # before core.latency / ringbuffers.ring load numba; spawned processes inherit the dir

import numpy as np  # noqa: E402

from core import records  # noqa: E402
from core.config import RINGS, SystemConfig  # noqa: E402
from core.latency import LatencySet  # noqa: E402
from core.topology import consumer_index, process_rings  # noqa: E402
from ringbuffers.control import ControlQueue  # noqa: E402
from ringbuffers.ring import Ring, segment_name  # noqa: E402

EXIT_OK = 0
EXIT_CRASH = 1

_PR_SET_PDEATHSIG = 1
_MCL_CURRENT = 1
_MCL_FUTURE = 2
_CMD_CHECK_NS = 5_000_000  # should_stop() looks at the control queue at most every 5 ms (a check is ~5 us)
_LATENCY_EVERY = 5  # heartbeats between latency-histogram reports (they are larger)

_STD_LOG_ATTRS = set(vars(logging.LogRecord("x", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def iso_now(epoch_s: float | None = None) -> str:
    t = time.time() if epoch_s is None else epoch_s
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class EventLogHandler(logging.Handler):
    """Forwards log records to the supervisor as ``{"type": "log", ...}`` events (never blocks)."""

    def __init__(self, evt_q: ControlQueue):
        super().__init__()
        self.evt_q = evt_q
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = {"type": "log", "ts": iso_now(record.created), "mono_ns": time.monotonic_ns(),
                   "level": record.levelname, "msg": record.getMessage(), "logger": record.name}
            for k, v in vars(record).items():
                if k not in _STD_LOG_ATTRS and not k.startswith("_"):
                    msg[k] = v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
            if record.exc_info:
                msg["exc"] = "".join(traceback.format_exception(*record.exc_info))
            if not self.evt_q.put_nowait(msg):
                self.dropped += 1
        except Exception:  # a log call must never take the worker down
            self.handleError(record)


class ProcessContext:
    """One process's link to the supervisor: control queues, heartbeats, the idle strategy, latency.

    Stage processes hand each stage a ``processes.stage.StageContext`` built
    on this; the simulator's ``run(config, ctx)`` receives it directly.
    """

    def __init__(self, name: str, config: SystemConfig, cmd_q: ControlQueue, evt_q: ControlQueue,
                 incarnation: int = 0):
        self.name = name
        self.config = config
        self.instance = config.instance
        self.process = config.placement[name]
        self.incarnation = incarnation
        self.idle = self.process.idle.make()  # replaced once the rings are attached (the futex idle needs them)
        self.log = logging.getLogger(f"ringtrader.{name}")
        self.latency = LatencySet()
        self.stats: dict = {}  # process-level counters (the simulator's); sent with every heartbeat
        self.stage_counters = None  # callable -> {stage: counters}, set by run_stages
        self.start_info: dict = {}  # reported with the ready event (mlock outcome...)
        self._cmd_q = cmd_q
        self._evt_q = evt_q
        self._stop = False
        self._ppid = os.getppid()
        self._pending: list[dict] = []
        self._hb_interval_ns = config.supervisor.heartbeat_interval_ms * 1_000_000
        self._next_hb = 0
        self._next_cmd = 0
        self._hb_count = 0
        self._ready_sent = False

    # -- to the supervisor ----------------------------------------------------

    def event(self, type: str, **fields) -> bool:  # noqa: A002 - the wire field is called "type"
        """Send one event (JSON-able fields) to the supervisor; False if its queue is full."""
        fields["type"] = type
        fields.setdefault("mono_ns", time.monotonic_ns())
        return self._evt_q.put_nowait(fields)

    def ready(self) -> None:
        """Say ready (once), then wait for the supervisor's go.

        The supervisor answers ``{"type": "start"}`` when every process is
        ready (at once, for a restarted one), so no stage produces into a ring
        whose consumer is still starting. Returns early if a shutdown arrives
        meanwhile (``should_stop()`` is then True). Freezes the start-up heap
        so the GC never scans it again.
        """
        if self._ready_sent:
            return
        self._ready_sent = True
        gc.collect()
        gc.freeze()
        self.event("ready", pid=os.getpid(), incarnation=self.incarnation, stages=list(self.process.stages),
                   **self.start_info)
        started = False
        while not self._stop and not started:
            for m in self._cmd_q.get_many(timeout=0.05):  # keep what follows the go in the same batch
                kind = m.get("type")
                if kind == "start":
                    started = True
                    self._next_hb = 0  # the first heartbeat goes out with the flow
                elif kind == "shutdown":
                    self._stop = True
                else:
                    self._pending.append(m)
            if os.getppid() != self._ppid:
                self._stop = True

    def _heartbeat_msg(self, now: int, kind: str = "heartbeat") -> dict:
        idle = self.idle
        msg = {"type": kind, "mono_ns": now, "stats": self.stats, "idle_ns": idle.idle_ns,
               "idle": {k: getattr(idle, k) for k in ("name", "mode", "waits", "timeouts", "sleeps")
                        if hasattr(idle, k)}}
        if self.stage_counters is not None:
            msg["stages"] = self.stage_counters()
        return msg

    def heartbeat(self, **stats) -> None:
        """Cheap when not due; call it every loop iteration. ``stats`` update ``ctx.stats``."""
        if stats:
            self.stats.update(stats)
        now = time.monotonic_ns()
        if now < self._next_hb:
            return
        self._next_hb = now + self._hb_interval_ns
        self._hb_count += 1
        msg = self._heartbeat_msg(now)
        if self._hb_count % _LATENCY_EVERY == 0:
            msg["latency"] = self.latency.to_wire()
        self._evt_q.put_nowait(msg)

    def final_stats(self) -> None:
        msg = self._heartbeat_msg(time.monotonic_ns(), "final")
        msg["latency"] = self.latency.to_wire()
        self._evt_q.put(msg, timeout=1.0)

    # -- from the supervisor --------------------------------------------------

    def _poll_commands(self) -> None:
        for m in self._cmd_q.get_many(timeout=0):
            if m.get("type") == "shutdown":
                self._stop = True
            else:
                self._pending.append(m)
        if os.getppid() != self._ppid:  # the supervisor died: nobody watches us
            self._stop = True

    def should_stop(self) -> bool:
        """True once a shutdown was requested (cheap: looks at the queue every few ms)."""
        if self._stop:
            return True
        now = time.monotonic_ns()
        if now >= self._next_cmd:
            self._next_cmd = now + _CMD_CHECK_NS
            self._poll_commands()
        return self._stop

    def request_stop(self) -> None:
        self._stop = True

    def commands(self) -> list[dict]:
        """Non-shutdown commands received since the last call (e.g. {"type": "resync", "symbol": 0})."""
        if not self._stop:
            self._poll_commands()
        return self.take_pending()

    def take_pending(self) -> list[dict]:
        """Commands already received (no queue read): the duty cycle's cheap check."""
        if not self._pending:
            return []
        out, self._pending = self._pending, []
        return out


#: the name the simulator's ``run(config, ctx)`` and older tests know
WorkerContext = ProcessContext


# ---------------------------------------------------------------------------
# Process entry
# ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the parent-pid check in should_stop() still catches it


def _mlockall() -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(_MCL_CURRENT | _MCL_FUTURE) == 0:
        return "ok"
    err = ctypes.get_errno()
    return f"failed: {os.strerror(err)} (errno {err})"


def attach_stage_rings(ctx: ProcessContext) -> dict:
    """Attach every ring end of the process's stages; returns ``{stage: StageContext}``."""
    from processes.stage import StageContext

    pr = process_rings(ctx.config, ctx.name)
    sctxs = {st: StageContext(st, ctx) for st in ctx.process.stages}
    for ring, stage in pr.inputs:
        dtype = records.ALL_DTYPES[RINGS[ring][0]]
        r = Ring.attach(segment_name(ctx.instance, ring), dtype, consumer_index(ring, stage))
        r.expect_capacity(ctx.config.rings[ring].capacity)
        sctxs[stage].inputs[ring] = r
    for ring, stage in pr.outputs:
        dtype = records.ALL_DTYPES[RINGS[ring][0]]
        r = Ring.attach(segment_name(ctx.instance, ring), dtype, "producer")
        r.expect_capacity(ctx.config.rings[ring].capacity)
        sctxs[stage].outputs[ring] = r
    for sc in sctxs.values():
        for r in list(sc.inputs.values()) + list(sc.outputs.values()):
            r.prefault()  # no page fault (and no RSS creep) on the first lap of a ring
    external = [sctxs[st].inputs[ring] for ring, st in pr.inputs if ring in pr.external]
    ctx.idle = ctx.process.idle.make(external)
    return sctxs


def warm_kernels(dtypes=()) -> None:
    """Load (or compile once into NUMBA_CACHE_DIR) the shared kernels, on scratch arrays only.

    Ring kernels are specialised per record dtype: only ``dtypes`` (the
    process's own rings) are warmed, which keeps a restart fast.
    """
    from core.latency import new_hist, nb_merge, nb_record_diff, nb_record_many
    from ringbuffers import ring as rb

    h = new_hist()
    v = np.arange(4, dtype=np.int64)
    nb_record_many(h, v)
    nb_record_diff(h, v, v)
    nb_merge(h, new_hist())
    cons = 1
    ctrl = np.zeros(rb.records_offset(cons) // rb.WORD, np.int64)
    ctrl[rb.H_CAPACITY] = 4
    ctrl[rb.H_CONSUMERS] = cons
    for dtype in dtypes:
        ctrl[rb.P_PUBLISH:] = 0
        slots = np.zeros(4, dtype)
        rb.nb_publish_copy(ctrl, slots, np.zeros(1, dtype))
        rb.nb_poll_copy(ctrl, slots, 0, np.zeros(1, dtype))
    rb.nb_spin_for_data(ctrl, 0, 1)
    rb.nb_poll_view(ctrl, 0, 1)
    rb.nb_poll_end(ctrl, 0, ctrl[rb.P_PUBLISH])


def run_stages(ctx: ProcessContext, stages: list) -> None:
    """The duty cycle (Agrona's ``AgentRunner`` over a ``CompositeAgent``): see the module docstring."""
    ctx.stage_counters = lambda: {s.name: s.counters() for s in stages}
    ctx.ready()
    if ctx.should_stop():
        return
    for s in stages:
        s.on_start()
    try:
        if len(stages) == 1 and hasattr(stages[0], "drive"):
            stages[0].drive()  # an event-loop stage: it serves heartbeats and commands from its loop
            return
        idle = ctx.idle
        by_name = {s.name: s for s in stages}
        while not ctx.should_stop():
            work = 0
            for s in stages:
                work += s.do_work()
            now = time.monotonic_ns()
            for s in stages:
                s.housekeeping(now)
            if ctx._pending:
                _dispatch(ctx, stages, by_name, ctx.take_pending())
            ctx.heartbeat()
            idle.idle(work)
        _drain_internal(ctx, stages)
    finally:
        for s in reversed(stages):
            try:
                s.on_close()
            except Exception:  # noqa: BLE001 - one stage's close must not skip the others'
                ctx.log.exception("%s: on_close failed", s.name)


def _dispatch(ctx: ProcessContext, stages, by_name: dict, cmds: list[dict]) -> None:
    for cmd in cmds:
        target = by_name.get(cmd.get("stage"))
        handled = target.on_command(cmd) if target is not None else any(s.on_command(cmd) for s in stages)
        if not handled:
            ctx.log.warning("%s: unknown command %r ignored", ctx.name, cmd.get("type"), extra={"command": cmd})


def _drain_internal(ctx: ProcessContext, stages) -> None:
    """After a stop: keep cycling until the rings between this process's own stages are empty (bounded)."""
    if len(stages) < 2:
        return
    deadline = time.monotonic() + ctx.config.supervisor.drain_timeout_s
    while time.monotonic() < deadline:
        if sum(s.do_work() for s in stages) == 0:
            return


def build_stages(ctx: ProcessContext) -> tuple[list, list]:
    """Import, warm and build the process's stages (steps 4-5 of the module docstring).

    Returns ``(stages, rings)``: every ring end attached, for closing at exit
    even when a stage failed to build.
    """
    sctxs = attach_stage_rings(ctx)
    rings = [r for sc in sctxs.values() for r in list(sc.inputs.values()) + list(sc.outputs.values())]
    warm_kernels({r.dtype for r in rings})
    stages = []
    try:
        for st in ctx.process.stages:
            mod_name = ctx.process.stage_module(st)
            module = importlib.import_module(mod_name)
            make = getattr(module, "make_stage", None)
            if make is None:
                raise AttributeError(f"stage module {mod_name} has no make_stage(config, ctx)")
            warm = getattr(module, "warm", None)
            if callable(warm):
                warm(ctx.config)
            stage = make(ctx.config, sctxs[st])
            stage.name = st
            stages.append(stage)
    except BaseException:
        for r in rings:
            r.close()
        raise
    return stages, rings


def worker_main(name: str, config: SystemConfig, cmd_q: ControlQueue, evt_q: ControlQueue, incarnation: int = 0):
    """Entry point of a spawned process (see module docstring). Exits 0 or 1."""
    t0 = time.monotonic_ns()
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _log_to(evt_q, config)
    sys.exit(_serve(name, config, cmd_q, evt_q, incarnation, t0))


def _log_to(evt_q: ControlQueue, config: SystemConfig) -> None:
    root = logging.getLogger()
    root.handlers[:] = [EventLogHandler(evt_q)]
    root.setLevel(config.logging.level)


def _serve(name: str, config: SystemConfig, cmd_q: ControlQueue, evt_q: ControlQueue, incarnation: int,
           t0: int, start_info: dict | None = None) -> int:
    """Steps 3-7 of the module docstring for process ``name``; returns the exit code."""
    ctx = ProcessContext(name, config, cmd_q, evt_q, incarnation)
    ctx.start_info.update(start_info or {})
    signal.signal(signal.SIGTERM, lambda *_: ctx.request_stop())
    code = EXIT_CRASH
    rings: list = []
    try:
        pcfg = ctx.process
        try:
            os.sched_setaffinity(0, pcfg.cpus)
        except OSError as exc:
            ctx.start_info["affinity"] = f"failed: {exc}"
        if pcfg.mlockall:
            ctx.start_info["mlock"] = _mlockall()
        if pcfg.stages:
            stages, rings = build_stages(ctx)
            ctx.start_info["startup_ms"] = round((time.monotonic_ns() - t0) / 1e6, 1)
            run_stages(ctx, stages)
        else:
            module = importlib.import_module(pcfg.module)
            run = getattr(module, "run", None)
            if run is None:
                raise AttributeError(f"module {pcfg.module} has no run(config, ctx)")
            ctx.start_info["startup_ms"] = round((time.monotonic_ns() - t0) / 1e6, 1)
            run(config, ctx)
        code = EXIT_OK
    except Exception:
        ctx.log.exception("%s crashed", name)
    finally:
        try:
            ctx.final_stats()
        except Exception:  # the supervisor may be gone; exiting matters more
            pass
        for r in rings:
            r.close()
        logging.shutdown()
    return code


# ---------------------------------------------------------------------------
# The spare: a process warmed for every worker, waiting to become one
# ---------------------------------------------------------------------------

_SPARE_POLL_S = 0.05  # the spare's wait loop period: assignment latency is the queue wake-up, not this


def warm_all(config: SystemConfig) -> tuple[list[str], dict[str, str]]:
    """Import every stage module of every process and warm its kernels, touching no ring.

    Calls the optional module-level ``warm(config)`` of each stage module (a
    module without one is fine: it has nothing to load) and the shared ring /
    latency kernels for every ring dtype. Returns ``(servable, problems)``:
    the processes this one can become, and ``{process: reason}`` for those
    with a stage module that failed to import or warm (the supervisor spawns
    those afresh, where the same problem is reported as that process's crash).
    """
    warm_kernels({records.ALL_DTYPES[spec[0]] for spec in RINGS.values()})
    servable, problems = [], {}
    for name, pcfg in config.placement.items():
        if not pcfg.stages:
            continue  # the simulator: not served by the spare
        try:
            for st in pcfg.stages:
                module = importlib.import_module(pcfg.stage_module(st))
                warm = getattr(module, "warm", None)
                if callable(warm):
                    warm(config)
        except Exception as exc:  # noqa: BLE001 - reported to the supervisor, the spare serves the others
            problems[name] = f"{type(exc).__name__}: {exc}"
            continue
        servable.append(name)
    return servable, problems


def spare_main(config: SystemConfig, cmd_q: ControlQueue, evt_q: ControlQueue, spare_id: int = 0):
    """Entry point of the supervisor's spare process.

    Warms every worker (``warm_all``), freezes the warmed heap out of the
    GC's sight, says ``{"type": "spare_ready", "workers": [...]}`` and blocks on
    ``cmd_q`` until one of:

    - ``{"type": "assign", "worker": name, "incarnation": n}``: becomes that
      worker (pins itself, attaches the rings, says ready...: ``_serve``);
    - ``{"type": "shutdown"}`` or SIGTERM: exits 0;
    - the supervisor dies (``PR_SET_PDEATHSIG`` sends SIGTERM; the parent-pid
      check covers a kernel without prctl): exits 0.
    """
    t0 = time.monotonic_ns()
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_now)  # holds nothing to hand over: leave at once, even mid-warm-up
    _log_to(evt_q, config)
    log = logging.getLogger("ringtrader.spare")
    parent = mp.parent_process()  # the supervisor's pid as spawn recorded it: catches a death before the prctl
    ppid = parent.pid if parent is not None else os.getppid()
    try:
        servable, problems = warm_all(config)
    except Exception:  # noqa: BLE001 - a spare that cannot warm is useless; the supervisor spawns instead
        log.exception("spare %d: warm-up failed", spare_id)
        logging.shutdown()
        sys.exit(EXIT_CRASH)
    warm_ms = round((time.monotonic_ns() - t0) / 1e6, 1)
    for name, why in problems.items():
        log.warning("spare %d cannot serve %s: %s", spare_id, name, why, extra={"worker": name})
    gc.collect()
    gc.freeze()  # the imported modules and compiled kernels are never garbage: keep them out of every collection
    evt_q.put({"type": "spare_ready", "pid": os.getpid(), "spare": spare_id, "workers": servable,
               "warm_ms": warm_ms, "mono_ns": time.monotonic_ns()})
    while os.getppid() == ppid:
        for m in cmd_q.get_many(timeout=_SPARE_POLL_S):
            kind = m.get("type")
            if kind == "assign":
                t_assign = time.monotonic_ns()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # _serve installs the worker's own handler
                info = {"spare": spare_id, "spare_warm_ms": warm_ms}
                sys.exit(_serve(m["worker"], config, cmd_q, evt_q, int(m["incarnation"]), t_assign, info))
            if kind == "shutdown":
                logging.shutdown()
                sys.exit(EXIT_OK)
            log.warning("spare %d: unexpected command %r ignored", spare_id, kind)
    logging.shutdown()  # the supervisor is gone: nobody can assign us
    sys.exit(EXIT_OK)


def _exit_now(*_):
    raise SystemExit(EXIT_OK)
