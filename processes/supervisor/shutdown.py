"""Orderly shutdown, derived from the topology: producers stop before their consumers.

``core.topology.shutdown_plan``: for each process in pipeline order, the
rings it reads from other processes are drained first (every live consumer
has read everything published), then it is told to stop; it drains the
rings between its own stages in its last duty cycles. The simulator (the
venue) goes last. A second stop signal kills what is left at once.
"""

from __future__ import annotations

import logging
import time

from core.config import RINGS
from core.topology import shutdown_plan
from processes.supervisor.state import Proc
from processes.supervisor.watch import TICK_S

log = logging.getLogger("ringtrader.supervisor")


class ShutdownMixin:
    """The supervisor's stop path (``Supervisor`` mixes it in)."""

    def drain(self, ring_names, timeout_s: float) -> None:
        """Wait until every live consumer of these rings has read everything published.

        A consumer whose process is not running (crashed, or failed to start)
        is not waited for: nobody would read for it.
        """
        if not ring_names:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            lagging = {}
            for r in ring_names:
                st = self.rings[r].stats()
                for i, stage in enumerate(RINGS[r][2]):
                    p = self.procs[self.cfg.process_of(stage).name]
                    lag = st.published - st.consumed[i]
                    if lag > 0 and p.alive and p.state in ("running", "stopping"):
                        lagging[f"{r}/{stage}"] = lag
            if not lagging:
                return
            if time.monotonic() > deadline:
                log.warning("rings not drained within %.1f s", timeout_s, extra={"lag": lagging})
                return
            for p in self.procs.values():
                self.pump(p)
            time.sleep(TICK_S / 5)

    def stop_proc(self, p: Proc) -> None:
        sv = self.cfg.supervisor
        if not p.alive:
            if p.proc is not None and p.state != "stopped":
                self._retire(p)
            p.state = "stopped"
            return
        if p.state != "running":
            # never became ready (start-up failure, or restarting): nothing to hand over, no drain
            p.proc.kill()
            p.proc.join(timeout=2)
            self._retire(p)
            p.state = "stopped"
            log.info("%s killed before it was ready", p.name, extra={"worker": p.name})
            return
        p.state = "stopping"
        p.cmd_q.put({"type": "shutdown"})
        # a process hosting several stages first drains the rings between them (bounded by drain_timeout_s)
        limit = sv.stop_timeout_s + (sv.drain_timeout_s if len(p.stages) > 1 else 0)
        deadline = time.monotonic() + limit
        while p.proc.exitcode is None and time.monotonic() < deadline:
            self.pump(p)
            time.sleep(TICK_S / 5)
        if p.proc.exitcode is None:
            log.error("%s did not stop within %.1f s; killing it", p.name, limit, extra={"worker": p.name})
            p.proc.kill()
            p.proc.join(timeout=2)
        self._retire(p)
        p.state = "stopped"
        log.info("%s stopped", p.name, extra={"worker": p.name, "stages": list(p.stages),
                                               "exitcode": p.exits[-1]})

    def shutdown(self) -> None:
        """Orderly: see the module docstring."""
        dt = self.cfg.supervisor.drain_timeout_s
        log.info("shutting down in pipeline order")
        self.stop_spare()  # idle, holds no ring: first, so it cannot be assigned or outlive the run
        for name, drain_first in shutdown_plan(self.cfg):
            p = self.procs.get(name)
            if p is None:
                continue
            self.drain(drain_first, dt)
            self.stop_proc(p)

    def kill_all(self) -> None:
        if self.spare is not None:
            self.spare.proc.kill()
            self.spare.proc.join(timeout=2)
            self._drop_spare(self.spare)
        for p in self.procs.values():
            if p.alive:
                p.proc.kill()
        for p in self.procs.values():
            if p.proc is not None:
                p.proc.join(timeout=2)
                if p.state != "stopped":
                    self._retire(p)
                    p.state = "stopped"
