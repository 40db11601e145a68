"""Watching the processes: their events, exit codes and heartbeats; restarts with backoff.

A process that exits, raises or stops heartbeating is restarted (every stage
it hosts restarts with it and resumes from its ring cursors) after a backoff
that doubles per recent restart; more than ``max_restarts`` within
``restart_window_s`` ends the run (exit 1). Heartbeats count only once the
pipeline has started: a process that is ready early waits for the others'
cold compile without being judged hung. A restarted process that is not
ready within ``ready_timeout_s`` is killed and counts as a crash.

Events from a stage whose type is in ``core.config.EVENT_ROUTES`` (the
book's ``resync``...) are forwarded as commands to the process hosting the
stage that acts on them (``core.topology.event_route``).
"""

from __future__ import annotations

import logging
import multiprocessing.connection as mp_connection
import time

from core.config import EVENT_ROUTES
from core.topology import event_route
from processes.runtime import iso_now
from processes.supervisor.logsink import process_log_line
from processes.supervisor.state import Proc, fold

log = logging.getLogger("ringtrader.supervisor")
TICK_S = 0.01  # supervisor loop period: events, exit codes, heartbeats


class WatchMixin:
    """The supervisor's watch loop (``Supervisor`` mixes it in)."""

    # -- events -------------------------------------------------------------------

    def pump(self, p: Proc) -> None:
        if p.evt_q is None:
            return
        while True:
            msgs = p.evt_q.get_many(timeout=0, max_messages=500)
            if not msgs:
                return
            for m in msgs:
                self.handle(p, m)

    def handle(self, p: Proc, m: dict) -> None:
        kind = m.get("type")
        now = time.monotonic()
        if kind == "log":
            self.sink.write(process_log_line(p.name, m))
        elif kind == "ready":
            self._on_ready(p, m, now)
        elif kind in ("heartbeat", "final"):
            p.last_hb = now
            p.stats = dict(m.get("stats") or {})
            p.stage_stats = dict(m.get("stages") or {})
            p.idle_ns = int(m.get("idle_ns") or 0)
            p.idle_info = dict(m.get("idle") or {})
            if p.go_at:
                p.flow_ns = int((now - p.go_at) * 1e9)
            if "latency" in m:
                p.lat_wire = m["latency"]
        else:
            if kind == "resync":  # the book asks the feed for a snapshot: the status table shows it resyncing
                self.resync_seen[m.get("symbol")] = now
            target = event_route(self.cfg, kind)
            if target is not None:
                dest = self.procs.get(target)
                cmd = {k: v for k, v in m.items() if k not in ("mono_ns", "stage")}
                cmd["stage"] = EVENT_ROUTES[kind]  # the stage that acts on it, inside that process
                m["forwarded"] = bool(dest is not None and dest.cmd_q is not None and dest.cmd_q.put_nowait(cmd))
                m["to"] = target
            ev = {"ts": iso_now(), "mono_ns": m.pop("mono_ns", None), "proc": p.name, "level": "INFO",
                  "msg": f"event {kind}"}
            ev.update(m)
            self.sink.write(ev)
            if kind == "alert" and getattr(self, "alerter", None) is not None:
                self.alerter.post(ev)  # queued; a thread posts it (never blocks this loop)

    def _on_ready(self, p: Proc, m: dict, now: float) -> None:
        p.state = "running"
        p.ready_at = now
        p.last_hb = now
        p.start_info = {k: v for k, v in m.items() if k not in ("type", "mono_ns")}
        extra = {"worker": p.name, "stages": list(p.stages), "pid": m.get("pid"), "incarnation": p.incarnation,
                 "ready_ms": round((now - p.started_at) * 1000, 1), "via": "spare" if "spare" in m else "spawn"}
        if p.down_since:
            rec = round((now - p.down_since) * 1000, 1)
            c2r = round((now - p.crash_at) * 1000, 1)
            p.recovery_ms.append(rec)
            p.crash_to_ready_ms.append(c2r)
            extra["recovery_ms"] = rec
            extra["crash_to_ready_ms"] = c2r
            p.down_since = p.crash_at = 0.0
        log.info("%s ready", p.name, extra=extra)
        standing = getattr(self, "operator_state", None)
        if standing and "risk" in p.stages and p.incarnation > 1:
            # a halt or reduce-only the operator gave stands across a restart of the risk process
            p.cmd_q.put(dict(standing))
            log.warning("re-sent the operator's %s to the restarted %s", standing["type"], p.name,
                        extra={"worker": p.name, "command": standing["type"]})
        if self.started or not p.stages:
            # a replacement joins the running pipeline at once; the exchange serves before the feed starts
            self._go(p, now)
        mlock = str(m.get("mlock", ""))
        if mlock.startswith("failed"):
            self._warn_once("mlock", f"mlockall not applied ({mlock.split(':', 1)[1].strip()}); process memory "
                                     "may be paged out. Raise RLIMIT_MEMLOCK or grant CAP_IPC_LOCK.")

    def _go(self, p: Proc, now: float) -> None:
        """Tell a ready process to start; its heartbeat clock starts now, not when it said ready."""
        p.cmd_q.put({"type": "start"})
        p.go_at = now
        p.last_hb = now

    def _retire(self, p: Proc) -> None:
        """Fold a finished incarnation's counters and histograms into the totals."""
        from core.latency import LatencySet

        self.pump(p)
        p.lat_done.merge(LatencySet.from_wire(p.lat_wire))
        fold(p.stats_done, p.stats)
        for st, c in p.stage_stats.items():
            fold(p.stage_done.setdefault(st, {}), c)
        p.stats, p.stage_stats, p.lat_wire = {}, {}, {}
        if p.proc is not None:
            p.exits.append(p.proc.exitcode)
            p.proc.join(timeout=0.1)
        for q in (p.cmd_q, p.evt_q):
            if q is not None:
                q.close()
        p.cmd_q = p.evt_q = None

    # -- watching -------------------------------------------------------------------

    def check(self) -> bool:
        """One watch pass. Returns False when the run must end (too many restarts)."""
        sv = self.cfg.supervisor
        now = time.monotonic()
        for p in self.procs.values():
            self.pump(p)
            if p.state in ("starting", "running"):
                code = p.proc.exitcode
                if code is not None:
                    self.pump(p)
                    why = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
                    if not self._crashed(p, why, now, now):
                        return False
                elif p.state == "running" and p.go_at and now - p.last_hb > sv.heartbeat_timeout_s:
                    log.error("%s hung: no heartbeat for %.1f s; killing it", p.name, now - p.last_hb,
                              extra={"worker": p.name})
                    p.proc.kill()
                    p.proc.join(timeout=2)
                    if not self._crashed(p, "hung", now, p.last_hb):
                        return False
                elif p.state == "starting" and p.incarnation > 1 and now - p.started_at > sv.ready_timeout_s:
                    log.error("restarted %s not ready within %.1f s; killing it", p.name, sv.ready_timeout_s,
                              extra={"worker": p.name})
                    p.proc.kill()
                    p.proc.join(timeout=2)
                    if not self._crashed(p, "never ready", now, now):
                        return False
            elif p.state == "backoff" and now >= p.next_start:
                self.restart(p)
        self._tend_spare()
        return True

    def _crashed(self, p: Proc, why: str, now: float, crash_at: float) -> bool:
        """``now``: when the supervisor detected it; ``crash_at``: when it went down (see ``Proc``)."""
        sv = self.cfg.supervisor
        self._retire(p)
        if not p.down_since:  # a replacement that fails too keeps the first crash's times
            p.down_since = now
            p.crash_at = crash_at
        recent = [t for t in p.restarts if now - t <= sv.restart_window_s] + [now]
        if len(recent) > sv.max_restarts:
            log.error("%s %s; another restart (%d within %.0f s) exceeds max_restarts=%d: shutting down", p.name,
                      why, len(recent), sv.restart_window_s, sv.max_restarts, extra={"worker": p.name})
            p.state = "stopped"
            self.exit_code = 1
            return False
        p.restarts.append(now)
        delay_ms = min(sv.backoff_initial_ms * (2 ** (len(recent) - 1)), sv.backoff_max_ms)
        p.state = "backoff"
        p.next_start = now + delay_ms / 1000.0
        p.go_at = 0.0
        log.warning("%s %s; restarting in %d ms", p.name, why, delay_ms,
                    extra={"worker": p.name, "stages": list(p.stages), "restart": len(p.restarts),
                           "delay_ms": delay_ms})
        return True

    def wait_ready(self, names, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            pending = []
            for n in names:
                p = self.procs[n]
                self.pump(p)
                if p.state == "running":
                    continue
                if p.proc.exitcode is not None:
                    self.pump(p)
                    log.error("%s exited with code %s before it was ready", n, p.proc.exitcode,
                              extra={"worker": n})
                    return False
                pending.append(n)
            if not pending:
                return True
            if time.monotonic() > deadline:
                log.error("process(es) not ready within %.1f s: %s", timeout_s, ", ".join(pending),
                          extra={"not_ready": pending})
                return False
            if self.stop_signals:
                return False
            time.sleep(TICK_S)

    def _wait(self, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``, waking at once when a process exits (its sentinel: ``crash_at`` is exact)."""
        sentinels = [p.proc.sentinel for p in self.procs.values()
                     if p.state in ("starting", "running") and p.proc is not None]
        if sentinels:
            mp_connection.wait(sentinels, timeout_s)
        else:
            time.sleep(timeout_s)

