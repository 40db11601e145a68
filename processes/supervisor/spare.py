"""The warm spare: one process started after the pipeline is ready, already warmed for every process.

A crashed process is replaced by assigning the spare (it only has to pin
itself, attach the rings, build its stages from kernels already loaded, and
say ready: well under a second), else by a fresh spawn. The next spare starts
once no process is (re)starting, so its warm-up never competes with a
replacement for the CPUs. Three consecutive spares that die before they are
ready disable it for the rest of the run.
"""

from __future__ import annotations

import logging
import time

from processes.supervisor.logsink import process_log_line
from processes.supervisor.state import Proc, Spare

log = logging.getLogger("ringtrader.supervisor")
MAX_SPARE_FAILURES = 3


class SpareMixin:
    """The supervisor's spare handling (``Supervisor`` mixes it in)."""

    def start_spare(self) -> None:
        from processes.runtime import spare_main
        from ringbuffers.control import ControlQueue

        seq = self.spare_stats["started"] + 1
        cmd_q = ControlQueue(max_size_bytes=1 << 16)
        evt_q = ControlQueue(max_size_bytes=4 << 20)  # becomes the process's event queue once assigned
        # Not pinned here: it inherits the supervisor's CPUs, so its warm-up stays off cores dedicated to
        # stages; it is pinned to a process's CPUs when it becomes that process.
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
                    self.sink.write(process_log_line("spare", m))

    def _drop_spare(self, sp: Spare) -> None:
        sp.proc.join(timeout=0.1)
        for q in (sp.cmd_q, sp.evt_q):
            q.close()
        self.spare = None

    def _tend_spare(self) -> None:
        """Keep one spare: watch the current one, or start the next once no process is (re)starting."""
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
                if self._spare_failures >= MAX_SPARE_FAILURES:
                    self._spare_off = True
                    log.warning("spare disabled after %d consecutive failures: restarts spawn fresh processes",
                                MAX_SPARE_FAILURES)
            return
        if self.started and not any(p.state in ("starting", "backoff") for p in self.procs.values()):
            self.start_spare()

    def _spare_for(self, p: Proc) -> Spare | None:
        sp = self.spare
        if sp is not None and sp.ready_at and p.name in sp.serves and sp.proc.exitcode is None:
            return sp
        if not self._spare_off and p.stages:
            why = "none started" if sp is None else ("still warming" if not sp.ready_at else
                                                     f"it cannot serve {p.name}" if p.name not in sp.serves
                                                     else "it exited")
            log.info("no spare ready for %s (%s): spawning a fresh process", p.name, why, extra={"worker": p.name})
        return None

    def _assign(self, p: Proc, sp: Spare) -> None:
        self._pump_spare(sp)  # its own events (warm-up logs) before the process's
        p.incarnation += 1
        p.proc, p.cmd_q, p.evt_q = sp.proc, sp.cmd_q, sp.evt_q
        p.cmd_q.put({"type": "assign", "worker": p.name, "incarnation": p.incarnation})
        self._begin_incarnation(p)
        p.via_spare += 1
        self.spare = None
        self.spare_stats["used"] += 1
        self._place(p)
        log.info("assigned spare %d to %s", sp.seq, p.name,
                 extra={"worker": p.name, "pid": p.proc.pid, "incarnation": p.incarnation, "spare": sp.seq,
                        "cpus": list(self.cfg.placement[p.name].cpus)})

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
