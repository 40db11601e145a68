"""Worker runtime: what every worker process does around its own ``run(config, ctx)``.

The supervisor spawns ``worker_main(name, config, cmd_q, evt_q, incarnation)``
with the ``spawn`` start method. It:

1. arranges to die with the supervisor (``PR_SET_PDEATHSIG`` = SIGTERM, plus a
   parent-pid check), ignores SIGINT (the supervisor coordinates shutdown;
   Ctrl-C reaches the whole process group) and turns SIGTERM into a stop
   request;
2. forwards every ``logging`` record as a JSON event to the supervisor;
3. pins itself to its configured CPUs and applies ``mlockall`` if configured
   (a failure is reported in the ready event; the supervisor warns once);
4. attaches its rings (``ctx.inputs`` as consumer, ``ctx.outputs`` as
   producer; topology in ``core.config.RINGS``);
5. warms the shared numba kernels (ring protocol, latency histograms) on
   private scratch arrays, so the on-disk cache is loaded before ``ready``;
6. imports the worker module and calls ``run(config, ctx)``. The worker warms
   its own kernels, calls ``ctx.ready()`` (which freezes the start-up heap
   out of the GC's sight with ``gc.freeze()``), then loops: poll inputs with
   ``ctx.idle``, process a batch, publish, ``ctx.heartbeat()``, until
   ``ctx.should_stop()``;
7. sends its final counters and latency histograms, and exits 0 — or, if
   ``run`` raised, logs the traceback as an error event and exits 1 (the
   supervisor restarts it).

The spare (``spare_main``): the supervisor keeps one process that has
already done the expensive part of steps 1-6 for *every* pipeline worker
(interpreter start, imports, ``warm_all``: the shared kernels for every ring
dtype and each worker module's optional ``warm(config)``), then waits on its
control queue. On ``{"type": "assign", "worker": name, "incarnation": n}`` it
becomes that worker (``_serve``: pin, attach, ready, run), so a crashed
worker's replacement is ready in milliseconds instead of seconds. A worker
module's ``warm(config)`` loads its numba kernels from the disk cache on
private scratch data and must not touch the pipeline's rings; a module
without one has nothing to load.

Latency convention (hop names used by every worker and the summary):
``feed`` = md.pub_ns - md.recv_ns; ``md->book`` = book.pub_ns - md.pub_ns;
``book->signal``, ``signal->risk``, ``risk->execution`` likewise (output
pub_ns - input pub_ns); ``book->risk``/``book->execution``/``reports->risk`` =
consumption time - pub_ns for inputs that do not produce an output;
``end_to_end`` = last stage pub_ns - recv_ns (the execution report, i.e.
tick to order handed to the venue or fill model).
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

import numpy as np

from core import records
from core.config import RINGS, SystemConfig
from core.latency import LatencyHistogram, LatencySet
from ringbuffers.control import ControlQueue
from ringbuffers.ring import Ring, segment_name

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


class WorkerContext:
    """What ``run(config, ctx)`` receives. See the module docstring for the contract."""

    def __init__(self, name: str, config: SystemConfig, cmd_q: ControlQueue, evt_q: ControlQueue,
                 incarnation: int = 0):
        self.name = name
        self.config = config
        self.instance = config.instance
        self.process = config.processes[name]
        self.incarnation = incarnation
        self.inputs: dict[str, Ring] = {}
        self.outputs: dict[str, Ring] = {}
        self.idle = self.process.idle.make()
        self.log = logging.getLogger(f"ringtrader.{name}")
        self.latency = LatencySet()
        self.stats: dict = {}  # counters the worker keeps; sent with every heartbeat
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

        The supervisor answers ``{"type": "start"}`` when every worker is ready
        (at once, for a restarted worker), so no stage produces into a ring
        whose consumer is still starting. Returns early if a shutdown arrives
        meanwhile (``should_stop()`` is then True). Freezes the start-up heap
        so the GC never scans it again.
        """
        if self._ready_sent:
            return
        self._ready_sent = True
        gc.collect()
        gc.freeze()
        self.event("ready", pid=os.getpid(), incarnation=self.incarnation, **self.start_info)
        while not self._stop:
            for m in self._cmd_q.get_many(timeout=0.05):
                kind = m.get("type")
                if kind == "start":
                    self._next_hb = time.monotonic_ns() + self._hb_interval_ns
                    return
                if kind == "shutdown":
                    self._stop = True
                else:
                    self._pending.append(m)
            if os.getppid() != self._ppid:
                self._stop = True

    def heartbeat(self, **stats) -> None:
        """Cheap when not due; call it every loop iteration. ``stats`` update ``ctx.stats``."""
        now = time.monotonic_ns()
        if now < self._next_hb:
            if stats:
                self.stats.update(stats)
            return
        if stats:
            self.stats.update(stats)
        self._next_hb = now + self._hb_interval_ns
        self._hb_count += 1
        msg = {"type": "heartbeat", "mono_ns": now, "stats": self.stats, "idle_ns": self.idle.idle_ns}
        if self._hb_count % _LATENCY_EVERY == 0:
            msg["latency"] = self.latency.to_wire()
        self._evt_q.put_nowait(msg)

    def final_stats(self) -> None:
        self._evt_q.put({"type": "final", "mono_ns": time.monotonic_ns(), "stats": self.stats,
                         "idle_ns": self.idle.idle_ns, "latency": self.latency.to_wire()}, timeout=1.0)

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
        out, self._pending = self._pending, []
        return out


# ---------------------------------------------------------------------------
# Pass-through plumbing shared by the temporary workers
# ---------------------------------------------------------------------------


def zero(dst: np.ndarray) -> None:
    """Clear claimed slots (they hold a previous lap's record)."""
    dst.view(np.int64)[:] = 0


def trace_violations(src: np.ndarray, now_ns: int) -> int:
    """Records whose trace is not monotonic: recv <= [in_pub <=] pub <= now must hold."""
    bad = (src["recv_ns"] > src["pub_ns"]) | (src["pub_ns"] > now_ns) | (src["recv_ns"] <= 0)
    if "in_pub_ns" in src.dtype.names:
        bad |= (src["in_pub_ns"] < src["recv_ns"]) | (src["in_pub_ns"] > src["pub_ns"])
    return int(np.count_nonzero(bad))


def relay(ctx: WorkerContext, inp: Ring, out: Ring, convert, hop: LatencyHistogram, max_n: int, after=None) -> int:
    """Move up to ``max_n`` records from ``inp`` to ``out`` through ``convert(src, dst)``.

    ``convert`` fills every field of ``dst`` (zeroed) from ``src`` except
    ``pub_ns``, which is stamped here just before the commit. Records that do
    not fit in ``out`` (block policy, full) stay unread in ``inp`` for the
    next call, so nothing is dropped. ``after(src, dst)``, if given, sees each
    published chunk (pub_ns stamped). Returns the records moved.
    """
    p = inp.poll(max_n)
    n = len(p.records)
    if p.lost:
        ctx.stats["lost_" + _ring_key(inp)] = ctx.stats.get("lost_" + _ring_key(inp), 0) + p.lost
    moved = 0
    try:
        while moved < n:
            dst = out.claim(n - moved)
            if dst is None:
                ctx.stats["out_full"] = ctx.stats.get("out_full", 0) + 1
                break
            k = len(dst)
            src = p.records[moved:moved + k]
            zero(dst)
            convert(src, dst)
            now = time.monotonic_ns()
            dst["pub_ns"] = now
            out.commit()
            hop.record_many(now - src["pub_ns"])
            if after is not None:
                after(src, dst)
            bad = trace_violations(src, now)
            if bad:
                ctx.stats["trace_violations"] = ctx.stats.get("trace_violations", 0) + bad
            moved += k
    finally:
        inp.release(moved)
    if moved:
        ctx.stats["records_in"] = ctx.stats.get("records_in", 0) + moved
    return moved


def sink(ctx: WorkerContext, inp: Ring, hop: LatencyHistogram, max_n: int) -> int:
    """Consume up to ``max_n`` records that produce nothing here; records their arrival latency."""
    p = inp.poll(max_n)
    n = len(p.records)
    try:
        if n:
            now = time.monotonic_ns()
            hop.record_many(now - p.records["pub_ns"])
            bad = trace_violations(p.records, now)
            if bad:
                ctx.stats["trace_violations"] = ctx.stats.get("trace_violations", 0) + bad
    finally:
        inp.release()
    if p.lost:
        ctx.stats["lost_" + _ring_key(inp)] = ctx.stats.get("lost_" + _ring_key(inp), 0) + p.lost
    return n


def _ring_key(ring: Ring) -> str:
    return ring.name.rpartition(".")[2]


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


def attach_rings(ctx: WorkerContext) -> None:
    """Attach ``ctx`` to every ring the topology gives its worker."""
    for ring, (dtype_name, producer, consumers) in RINGS.items():
        dtype = records.ALL_DTYPES[dtype_name]
        seg = segment_name(ctx.instance, ring)
        cap = ctx.config.rings[ring].capacity
        if producer == ctx.name:
            ctx.outputs[ring] = Ring.attach(seg, dtype, "producer")
            ctx.outputs[ring].expect_capacity(cap)
        if ctx.name in consumers:
            ctx.inputs[ring] = Ring.attach(seg, dtype, consumers.index(ctx.name))
            ctx.inputs[ring].expect_capacity(cap)


def warm_kernels(dtypes=()) -> None:
    """Load (or compile once into NUMBA_CACHE_DIR) the shared kernels, on scratch arrays only.

    Ring kernels are specialised per record dtype: only ``dtypes`` (the
    worker's own rings) are warmed, which keeps a restart fast.
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


def worker_main(name: str, config: SystemConfig, cmd_q: ControlQueue, evt_q: ControlQueue, incarnation: int = 0):
    """Entry point of a spawned worker process (see module docstring). Exits 0 or 1."""
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
    """Steps 3-7 of the module docstring for worker ``name``; returns the exit code."""
    ctx = WorkerContext(name, config, cmd_q, evt_q, incarnation)
    ctx.start_info.update(start_info or {})
    signal.signal(signal.SIGTERM, lambda *_: ctx.request_stop())
    code = EXIT_CRASH
    try:
        pcfg = ctx.process
        try:
            os.sched_setaffinity(0, pcfg.cpus)
        except OSError as exc:
            ctx.start_info["affinity"] = f"failed: {exc}"
        if pcfg.mlockall:
            ctx.start_info["mlock"] = _mlockall()
        module = importlib.import_module(pcfg.module)
        run = getattr(module, "run", None)
        if run is None:
            raise AttributeError(f"worker module {pcfg.module} has no run(config, ctx)")
        if name != "simulator":
            attach_rings(ctx)
            warm_kernels({r.dtype for r in list(ctx.inputs.values()) + list(ctx.outputs.values())})
        ctx.start_info["startup_ms"] = round((time.monotonic_ns() - t0) / 1e6, 1)
        run(config, ctx)
        code = EXIT_OK
    except Exception:
        ctx.log.exception("worker %s crashed", name)
    finally:
        try:
            ctx.final_stats()
        except Exception:  # the supervisor may be gone; exiting matters more
            pass
        for r in list(ctx.inputs.values()) + list(ctx.outputs.values()):
            r.close()
        logging.shutdown()
    return code


# ---------------------------------------------------------------------------
# The spare: a process warmed for every worker, waiting to become one
# ---------------------------------------------------------------------------

_SPARE_POLL_S = 0.05  # the spare's wait loop period: assignment latency is the queue wake-up, not this


def warm_all(config: SystemConfig) -> tuple[list[str], dict[str, str]]:
    """Import every pipeline worker module and warm its kernels, touching no ring.

    Calls the optional module-level ``warm(config)`` of each worker module (a
    module without one is fine: it has nothing to load) and the shared ring /
    latency kernels for every ring dtype. Returns ``(servable, problems)``:
    the workers this process can become, and ``{worker: reason}`` for those
    whose module failed to import or warm (the supervisor spawns those afresh,
    where the same problem is reported as that worker's crash).
    """
    from core.config import PIPELINE

    warm_kernels({records.ALL_DTYPES[spec[0]] for spec in RINGS.values()})
    servable, problems = [], {}
    for name in PIPELINE:
        mod_name = config.processes[name].module
        try:
            module = importlib.import_module(mod_name)
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
