"""The ``Supervisor``: rings, processes, the go, the watch loop, and the run's end (see the package doc)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import subprocess
import time

from core.config import RINGS, SIMULATOR, SystemConfig
from core.topology import stage_processes
from processes.supervisor.sdnotify import SdNotifier
from processes.supervisor.shutdown import ShutdownMixin
from processes.supervisor.spare import SpareMixin
from processes.supervisor.state import Proc
from processes.supervisor.summary import VIEW_PERIOD_S, build_summary, build_view
from processes.supervisor.watch import TICK_S, WatchMixin

log = logging.getLogger("ringtrader.supervisor")
EXIT_OK = 0
EXIT_FAIL = 1
EXIT_CONFIG = 2


class Supervisor(SpareMixin, WatchMixin, ShutdownMixin):
    def __init__(self, cfg: SystemConfig, sink, status=None):
        from core.latency import LatencySet

        self.cfg = cfg
        self.sink = sink
        self.status = status  # statusview.StatusTable when the live table is drawn (cli.py decides)
        self.ctx = mp.get_context("spawn")
        self.rings = {}
        names = stage_processes(cfg)
        if self._simulator_wanted():
            names.append(SIMULATOR)
        self.procs = {n: Proc(n, stages=cfg.placement[n].stages, lat_done=LatencySet()) for n in names}
        self.stop_signals = 0
        self.exit_code = EXIT_OK
        self.t_start = time.monotonic()
        self.cold_start_ms = None
        self.cold_cache = False  # the numba cache was empty at start: every kernel was compiled
        self.started = False  # every process was ready and got the go
        self.t_go = None  # monotonic s of the go (the status table's rates since start)
        self.resync_seen: dict = {}  # book symbol id -> monotonic s of its last resync request (status table)
        self.flow_s = None  # seconds from the go to the start of shutdown
        self.final: dict = {}
        self._warned = set()
        self.spare = None
        self.spare_stats = {"enabled": cfg.supervisor.spare_worker, "started": 0, "ready": 0, "used": 0,
                            "failed": 0, "warm_ms": [], "pids": []}
        self._spare_failures = 0  # consecutive spares that died before becoming ready
        self._spare_off = not cfg.supervisor.spare_worker
        self.metrics = None  # processes.metrics.MetricsServer while serving
        self.metrics_port = None  # the port it bound (config port 0 = any free one)
        self.metrics_view: dict = {}  # what the metrics collector reads: replaced whole, never mutated
        self.view_at = 0.0  # monotonic s it was built (the status table reuses it while fresh)
        self._next_view = 0.0
        self.operator_state = None  # the operator's last halt / reduce-only (re-sent to a restarted risk process)
        self.control = None  # processes.supervisor.control.OperatorControl while the operator's socket is served
        self.alerter = None  # processes.supervisor.alerts.WebhookAlerter when alerts.webhook_url is set
        self.sd = SdNotifier()  # READY/WATCHDOG/STATUS/STOPPING to systemd; inert without NOTIFY_SOCKET

    # -- setup ------------------------------------------------------------------

    def _simulator_wanted(self) -> bool:
        import importlib.util

        if not self.cfg.simulator_enabled:
            return False
        mod = self.cfg.placement[SIMULATOR].module
        try:
            spec = importlib.util.find_spec(mod)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            log.warning("mode sim: simulator module %s not found; running without it", mod)
            return False
        return True

    def _on_signal(self, signum, frame) -> None:
        self.stop_signals += 1
        if self.stop_signals >= 2:
            raise KeyboardInterrupt  # second signal: stop waiting for anyone

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

    def _begin_incarnation(self, p: Proc) -> None:
        p.state = "starting"
        p.started_at = time.monotonic()
        p.go_at = 0.0
        p.stats, p.stage_stats, p.lat_wire = {}, {}, {}
        p.idle_ns = p.flow_ns = 0

    def spawn(self, p: Proc) -> None:
        from processes.runtime import worker_main
        from ringbuffers.control import ControlQueue

        pcfg = self.cfg.placement[p.name]
        p.incarnation += 1
        p.cmd_q = ControlQueue(max_size_bytes=1 << 16)
        p.evt_q = ControlQueue(max_size_bytes=4 << 20)  # room for log bursts and latency reports
        p.proc = self.ctx.Process(target=worker_main, name=f"ringtrader-{p.name}",
                                  args=(p.name, self.cfg, p.cmd_q, p.evt_q, p.incarnation))
        p.proc.start()
        self._begin_incarnation(p)
        self._place(p)
        log.info("spawned %s", p.name, extra={"worker": p.name, "stages": list(p.stages), "pid": p.proc.pid,
                                               "incarnation": p.incarnation, "cpus": list(pcfg.cpus)})

    def _place(self, p: Proc) -> None:
        """Pin the process to its CPUs and apply its real-time priority (spawned or assigned)."""
        pcfg = self.cfg.placement[p.name]
        try:
            os.sched_setaffinity(p.proc.pid, pcfg.cpus)
        except OSError as exc:
            self._warn_once(f"affinity-{p.name}", f"could not pin {p.name} to CPUs {list(pcfg.cpus)}: {exc}")
        if pcfg.rt_priority is not None:
            try:
                os.sched_setscheduler(p.proc.pid, os.SCHED_FIFO, os.sched_param(pcfg.rt_priority))
            except OSError as exc:
                self._warn_once("rt", f"SCHED_FIFO priority not applied ({exc}); processes run with normal "
                                      "scheduling. Grant CAP_SYS_NICE (or run as root) to use rt_priority.")

    def restart(self, p: Proc) -> None:
        """Replace a crashed process: by the warmed spare when one is ready for it, else a fresh spawn."""
        sp = self._spare_for(p)
        if sp is not None:
            self._assign(p, sp)
        else:
            self.spawn(p)

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg)

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

    def start_alerts(self) -> None:
        """Alert webhooks (``alerts.webhook_url``): every ``alert`` event is posted off the watch loop."""
        ac = self.cfg.alerts
        if not ac.webhook_url:
            return
        from processes.supervisor.alerts import WebhookAlerter

        self.alerter = WebhookAlerter(ac.webhook_url, instance=self.cfg.instance, fmt=ac.format,
                                      timeout_s=ac.timeout_s, retries=ac.retries)
        log.info("alert webhook configured", extra={"format": ac.format})  # the URL may hold a token: not logged

    def stop_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def refresh_view(self, force: bool = False) -> None:
        """Rebuild the view every ``VIEW_PERIOD_S`` while the metrics endpoint or the status table reads it."""
        now = time.monotonic()
        if not force and ((self.metrics is None and self.status is None) or now < self._next_view):
            return
        self._next_view = now + VIEW_PERIOD_S
        self.metrics_view = build_view(self)
        self.view_at = now

    def stop_status(self) -> None:
        """Stop drawing the status table (the last frame stays on the terminal); log what it cost."""
        if self.status is None:
            return
        st = self.status.close()
        self.status = None
        if st["frames"]:
            log.info("status table: %d frames, snapshot + render p50 %s ms, max %s ms", st["frames"],
                     st["cost_ms_p50"], st["cost_ms_max"], extra={"status_table": st})

    def summary(self) -> dict:
        return build_summary(self)

    # -- operator control ---------------------------------------------------------------------

    def start_control(self) -> bool:
        """Serve the operator's socket (``control.py``). False (logged) when it cannot: a system whose kill
        switch is missing, or answers another system's operator, does not start."""
        from processes.supervisor.control import ControlError, OperatorControl

        self.control = OperatorControl(self)
        try:
            self.control.start()
        except ControlError as exc:
            log.error("control socket not started: %s", exc,
                      extra={"socket": self.control.path, "key": "supervisor.control_socket"})
            return False
        return True

    def stop_control(self) -> None:
        """Close the socket and remove its file (every exit path)."""
        if self.control is not None:
            self.control.close()
            self.control = None

    # -- main -----------------------------------------------------------------------------

    def _start(self) -> bool:
        """Spawn the simulator (when wanted) and then every stage process, last stage first; wait for ready."""
        from core import numba_cache

        timeout = self.cfg.supervisor.ready_timeout_s
        # Kernels are compiled by one process before any other starts: numba's cache is not safe against
        # several processes compiling overloads of one function at once (see core.numba_cache.ensure_compiled).
        if self.cfg.source_path and not numba_cache.is_complete():
            self.sd.phase("compiling numba kernels (first start after an install or an upgrade)", timeout)
            try:
                self.cold_cache, took = numba_cache.ensure_compiled(
                    self.cfg.source_path, timeout,
                    log=lambda msg: log.info(msg, extra={"cache": os.environ.get("NUMBA_CACHE_DIR")}))
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                log.error("%s", exc)
                return False
            log.info("numba kernels compiled in %.1f s", took, extra={"compile_s": round(took, 1)})
            self._record_compile_s(took)
        elif not numba_cache.is_warm():  # a config built in memory (tests): the processes compile what they need
            self.cold_cache = True
            log.info(numba_cache.cold_start_message(), extra={"cache": os.environ.get("NUMBA_CACHE_DIR")})
        if SIMULATOR in self.procs:
            self.sd.phase("waiting for the simulator", timeout)
            self.spawn(self.procs[SIMULATOR])
            if not self.wait_ready([SIMULATOR], timeout):
                return False
        if not self._resolve_venue():
            return False
        self._journal_epoch()
        order = list(reversed(stage_processes(self.cfg)))
        self.sd.phase(f"waiting for {len(order)} processes to be ready", timeout)
        for n in order:
            self.spawn(self.procs[n])
        return self.wait_ready(order, timeout)

    def _journal_epoch(self) -> None:
        """A venue account that starts fresh every run (paper trading; the simulator this supervisor starts)
        begins a new journal epoch: positions and open orders of earlier runs are not this account's
        (processes/journal.py, "Epochs and restarts"). Binance accounts persist: so does the epoch."""
        fresh = self.cfg.mode == "paper" or (self.cfg.mode == "sim" and SIMULATOR in self.procs)
        if not fresh:
            return
        from processes.journal import Journal, JournalError, journal_path

        path = journal_path(self.cfg)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with Journal(path, instance=self.cfg.instance) as j:
                ep = j.new_epoch(f"{self.cfg.mode} run: a fresh venue account")
            log.info("journal epoch %d: %s", ep["n"], ep["reason"], extra={"journal": str(path)})
        except (JournalError, OSError) as exc:  # the execution stage reports an unusable journal itself
            log.error("cannot start a journal epoch in %s: %s", path, exc)

    def _resolve_venue(self, attempts: int = 3) -> bool:
        """exchangeInfo of the configured symbols from the venue (simulator or Binance), merged with the config
        (``core.filters``), handed to every stage process in ``cfg.venue``. An unlisted or non-TRADING symbol,
        or a file value that contradicts the venue, stops the start (exit 2); an unreachable venue, exit 1.
        The synthetic source has no venue: the config's filters stand."""
        import dataclasses
        import json as _json

        import httpx

        from core.errors import ConfigError
        from core.filters import instruments_with_filters, merge_with_config, parse_exchange_info

        if self.cfg.market_data.source != "exchange":
            return True
        symbols = [i.symbol for i in self.cfg.instruments]
        url = self.cfg.market_data.rest_url.rstrip("/") + "/api/v3/exchangeInfo"
        params = {"symbols": _json.dumps(symbols, separators=(",", ":"))}
        body, err = None, None
        for i in range(attempts):
            try:
                r = httpx.get(url, params=params, timeout=10.0)
                if r.status_code == 200:
                    body = r.content
                    break
                err = f"HTTP {r.status_code}: {r.text[:200]}"
                if r.status_code == 400:  # Binance answers an unknown symbol with -1121: no retry helps
                    break
            except httpx.HTTPError as exc:
                err = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5 * (i + 1))
        try:
            if body is None:
                if err and err.startswith("HTTP 400"):
                    raise ConfigError("instruments", f"the venue refused the symbols {symbols}: {err}")
                log.error("cannot fetch exchangeInfo from %s: %s", url, err)
                return False
            info = merge_with_config(self.cfg.instruments, parse_exchange_info(body, symbols))
        except ConfigError as exc:
            log.error("venue check failed: %s", exc, extra={"key": exc.path})
            self.exit_code = EXIT_CONFIG
            self._venue_failed = True
            return False
        self.cfg = dataclasses.replace(self.cfg, venue=info.to_json(),
                                       instruments=instruments_with_filters(self.cfg.instruments, info))
        log.info("instrument filters from the venue", extra={"symbols": {
            s.symbol: {"tick": s.tick_size, "step": s.step_size, "min_notional": s.effective_min_notional}
            for s in (info.symbol(x) for x in symbols)}})
        return True

    @staticmethod
    def _record_compile_s(seconds: float) -> None:
        """The next cold start's estimate ("~N s")."""
        from core import numba_cache

        try:
            (numba_cache.cache_base() / numba_cache.COMPILE_ESTIMATE_FILE).write_text(f"{seconds:.0f}\n")
        except OSError:
            pass

    def run(self, duration_s: float | None = None) -> int:
        from core import numba_cache

        numba_cache.configure()  # children inherit it; a no-op when the CLI already did it
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
            self.start_alerts()
            if not self.start_control():
                self.exit_code = EXIT_FAIL
                return self.exit_code
            if not self._start():
                self.exit_code = EXIT_CONFIG if getattr(self, "_venue_failed", False) else (
                    EXIT_FAIL if not self.stop_signals else EXIT_OK)
                if self.exit_code:
                    log.error("start-up failed; shutting down")
            else:
                self.started = True
                now = time.monotonic()
                self.t_go = now
                for p in self.procs.values():
                    if p.stages:
                        self._go(p, now)
                self.cold_start_ms = round((now - self.t_start) * 1000, 1)
                log.info("all processes ready", extra={"cold_start_ms": self.cold_start_ms,
                                                        "cold_cache": self.cold_cache})
                t_ready = time.monotonic()
                self.control.set_running()
                self.sd.ready(self)  # the pipeline flows and the operator's socket takes commands
                while not self.stop_signals:
                    if duration_s is not None and time.monotonic() - t_ready >= duration_s:
                        log.info("duration of %.1f s elapsed", duration_s)
                        break
                    if not self.check():
                        break
                    self.control.service()
                    self.refresh_view()
                    if self.status is not None:
                        self.status.tick(self)  # returns at once unless a frame is due (at most 2/s)
                    self.sd.tick(self)  # WATCHDOG=1 only from a pass that completed
                    self._wait(TICK_S)
                self.flow_s = round(time.monotonic() - t_ready, 3)
                self.stop_status()  # the shutdown's log lines and the summary follow the last frame
                if self.stop_signals:
                    log.info("stop requested by signal")
            self.control.set_stopping()
            self.sd.stopping(self)
            self.shutdown()
        except KeyboardInterrupt:
            forced = True
            log.error("second stop signal: killing every process now")
            self.exit_code = EXIT_FAIL
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.stop_status()
            self.stop_control()
            self.sd.close()
            if self.alerter is not None:
                self.alerter.close()
            self.kill_all()
            self.final = self.summary()
            self.stop_metrics()  # before the rings go: it reads their headers
            self.unlink_rings()
            for r in self.rings.values():
                r.close()
            if forced:
                self.final["forced"] = True
        return self.exit_code
