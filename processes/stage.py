"""Stages: the pipeline's agents, and the ring ends they share.

A stage (feed, book, signal, risk, execution) is an *agent* in the sense of
Agrona's ``Agent``: built by its module's ``make_stage(config, ctx)``, it
does its work in non-blocking steps and never waits on its own:

- ``on_start()``: once, after the supervisor's go (every ring has its consumers);
- ``do_work() -> int``: poll the inputs in a fixed priority, run a kernel over
  a batch with the stage's state, publish; returns the work done (0 = idle);
  never blocks, except a ``RingWriter`` waiting out a full ``block`` ring,
  which keeps heartbeating and honours a stop;
- ``housekeeping(now_ns)``: timers and slow chores, called every duty cycle
  after ``do_work`` (cheap when nothing is due);
- ``on_command(cmd) -> bool``: a command routed to this stage;
- ``counters() -> dict``: the numbers its heartbeat reports;
- ``on_close()``: once, at the end.

A process hosts one or more stages and runs them in pipeline order in one
duty cycle with one idle strategy (``processes.runtime.run_stages``, the
``AgentRunner`` + ``CompositeAgent`` of Agrona; the ``placement`` config is
Aeron's threading mode). Rings stay between every pair of stages, even inside
one process, so records, traces, metrics and behaviour do not depend on the
placement.

Kernels: a stage's kernel takes ``(state, inputs, outputs)``, where the state
is one ``NamedTuple`` of preallocated arrays built by the stage (per-symbol
rows are structured dtypes with named fields). No jitclass or structref:
with ``cache=True`` they miss numba's disk cache on every start (numba
issues 6522 and 9659), and the warm spare depends on that cache.

A module also provides ``warm(config)``: load its kernels (from the disk
cache) on private scratch data, touching no ring.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ringbuffers.ring import FULL, POLICY_BLOCK, Poll, Ring


class Stage:
    """Base class of the pipeline's agents (see the module docstring)."""

    name = "stage"

    def on_start(self) -> None:
        pass

    def do_work(self) -> int:
        raise NotImplementedError

    def housekeeping(self, now_ns: int) -> None:
        pass

    def on_command(self, cmd: dict) -> bool:
        """Handle a command addressed to this stage; False if it is not one of ours."""
        return False

    def counters(self) -> dict:
        return {}

    def on_close(self) -> None:
        pass


class KernelStage(Stage):
    """A stage whose whole duty cycle is one kernel call (the relay stages' shape).

    ``step()`` runs the kernel and returns the work done, or ``FULL`` when its
    output ring (``self.writer``, a ``block`` ring) had no room: the stage then
    waits one idle step (heartbeating, honouring a stop) and its inputs stay
    unread, so nothing is dropped. ``COUNTERS`` maps counter names to indices
    of ``self.state.counters``.
    """

    COUNTERS: dict = {}
    writer: "RingWriter"
    state: tuple

    def step(self) -> int:
        raise NotImplementedError

    def do_work(self) -> int:
        n = self.step()
        if n == FULL:
            self.writer.wait()
            return 0
        return n

    def counters(self) -> dict:
        c = self.state.counters
        return {name: int(c[i]) for name, i in self.COUNTERS.items()}


class StageContext:
    """What ``make_stage(config, ctx)`` receives: the stage's ring ends and its share of the process.

    ``inputs``/``outputs``: ring name -> ``Ring`` (consumer / producer end).
    ``latency``: the process's ``LatencySet`` (hop names are distinct per
    stage). ``event(type, **fields)``: an event to the supervisor, tagged
    with the stage. ``should_stop()``, ``heartbeat()``, ``idle``: the
    process's, for a ``RingWriter`` that must wait.
    """

    def __init__(self, name: str, proc):
        self.name = name
        self.proc = proc
        self.config = proc.config
        self.incarnation = proc.incarnation
        self.process = proc.process
        self.inputs: dict[str, Ring] = {}
        self.outputs: dict[str, Ring] = {}
        self.latency = proc.latency
        self.log = logging.getLogger(f"ringtrader.{name}")
        self.stats: dict = {}  # counters an event-loop stage keeps itself (``heartbeat(**stats)``)

    @property
    def idle(self):
        return self.proc.idle

    def event(self, type: str, **fields) -> bool:  # noqa: A002 - the wire field is called "type"
        fields["stage"] = self.name
        return self.proc.event(type, **fields)

    def should_stop(self) -> bool:
        return self.proc.should_stop()

    def heartbeat(self, **stats) -> None:
        if stats:
            self.stats.update(stats)
        self.proc.heartbeat()

    # -- for a stage that drives its own event loop (alone in its process) -------------------------

    def ready(self) -> None:
        """Already done by the duty cycle before ``drive()``: kept so loop code reads as before."""

    def commands(self) -> list[dict]:
        """Commands for this process (an event-loop stage is alone in it)."""
        return self.proc.commands()


class RingWriter:
    """The producer side of one ring for a stage: claim slots for a kernel, stamp ``pub_ns``, commit.

    ``claim(want, need)`` returns ``(dst, direct)``: a slice of the ring's own
    slots (``direct``) when at least ``need`` contiguous slots are free, else
    the writer's scratch array (at the wrap point, or a ``block`` ring with
    only a few free slots), which ``commit`` copies across with
    ``publish_batch``. A full ``block`` ring is waited out with the process's
    idle strategy, heartbeating, until there is room or a stop is requested
    (then ``claim`` returns ``None``): nothing is dropped while running.
    ``commit(dst, direct, k)`` stamps ``pub_ns`` on the first ``k`` records
    just before they become visible and returns how many were published
    (fewer than ``k`` only when a stop cut a wait short).

    This is the one copy of publish-and-wait-when-full: the feed, the book
    and every relay stage use it.
    """

    def __init__(self, ring: Ring, ctx: StageContext, scratch: int = 4096):
        self.ring = ring
        self.ctx = ctx
        self.block = ring.policy == POLICY_BLOCK
        self.scratch = np.zeros(scratch, ring.dtype)
        self.full_waits = 0  # waits on a full block ring
        self.stopping = False

    def claim(self, want: int, need: int = 1):
        want = max(min(want, self.ring.capacity), need)
        while True:
            dst = self.ring.claim(want)
            if dst is not None:
                if len(dst) >= need:
                    return dst, True
                self.ring.commit(0)  # too short to make progress: the scratch path copies across the wrap
                return self.scratch[:max(need, min(want, len(self.scratch)))], False
            if not self.wait():  # block policy, ring full: wait for the slowest consumer, never drop
                return None, False

    def wait(self) -> bool:
        """One idle step while the ring is full (a kernel found no room); False once a stop was requested."""
        self.full_waits += 1
        return not self._wait_or_stop()

    def _wait_or_stop(self) -> bool:
        if self.ctx.should_stop():
            self.stopping = True
            return True
        self.ctx.idle.idle(0)
        self.ctx.heartbeat()
        return False

    def commit(self, dst: np.ndarray, direct: bool, k: int) -> int:
        if direct:
            if k:
                dst["pub_ns"][:k] = time.monotonic_ns()
            self.ring.commit(k)  # the ring wakes a futex-waiting consumer itself
            return k
        done = 0
        ev = dst[:k]
        while done < k:
            ev["pub_ns"][done:] = time.monotonic_ns()
            done += self.ring.publish_batch(ev[done:])
            if done == k:
                break
            if not self.wait():
                break  # shutting down (consumers may be gone): the rest is never published
        return done

    def publish(self, recs: np.ndarray) -> int:
        """Copy ``recs`` in, waiting while a block ring is full; ``pub_ns`` is stamped on the published
        slots and copied back into ``recs``. Returns the records published (fewer only when stopping)."""
        n = len(recs)
        done = 0
        while done < n:
            dst, direct = self.claim(n - done, 1)
            if dst is None:
                break
            k = min(len(dst), n - done)
            dst[:k] = recs[done:done + k]
            k = self.commit(dst, direct, k)
            recs["pub_ns"][done:done + k] = dst["pub_ns"][:k]
            done += k
        return done



def ring_in(ring: Ring) -> tuple:
    """A consumer end for a stage kernel: ``(ctrl, slots, consumer index)`` (``processes.stage_kernels``)."""
    return ring.ctrl, ring.slots, np.int64(ring.consumer_index)


def ring_out(ring: Ring) -> tuple:
    """A producer end for a stage kernel: ``(ctrl, slots)``."""
    return ring.ctrl, ring.slots


class PriorityReader:
    """Several input rings read in a fixed priority.

    ``poll(max_n)`` returns ``(ring name, Poll)`` for the first ring in
    priority order that has records (or reports records lost), else
    ``(None, None)``. The caller processes the records and calls
    ``release(n)``. Because a higher-priority ring is always emptied first,
    risk applies every execution report it can see before it approves a new
    signal.
    """

    def __init__(self, rings: list[tuple[str, Ring]]):
        self.rings = rings
        self.lost = {name: 0 for name, _ in rings}
        self._current: Ring | None = None

    def poll(self, max_n: int) -> tuple[str | None, Poll | None]:
        for name, ring in self.rings:
            p = ring.poll(max_n)
            if p.lost:
                self.lost[name] += p.lost
            if len(p.records):
                self._current = ring
                return name, p
            ring.release(0)
        return None, None

    def release(self, n: int | None = None) -> None:
        if self._current is not None:
            self._current.release(n)
            self._current = None
