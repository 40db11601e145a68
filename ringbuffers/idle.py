"""Idle strategies: what a polling loop does when a poll found no work.

``strategy.idle(work_count)`` is called once per loop iteration with the
amount of work the iteration did. Work resets the strategy; no work advances
it. Both strategies account the wall time spent idle (``idle_ns``), measured
from the first empty poll to the next productive one, so a worker can report
its utilisation.

- ``BusySpin``: never gives up the CPU; each empty poll executes the x86
  ``PAUSE`` hint. For a worker that owns an isolated core.
- ``Backoff``: ``spins`` empty polls with ``PAUSE``, then ``yields``
  ``sched_yield()`` calls, then sleeps starting at ``min_sleep_ns`` and
  doubling to ``max_sleep_ns``. For workers that share cores (the default on
  small hosts: two spinning loops on one core cost milliseconds each).
  Sleeping costs 15-50 us per wake-up on a VM, so the first two stages keep
  a briefly idle worker responsive. Timer slack is set to 1 ns
  (``PR_SET_TIMERSLACK``) so short sleeps are not stretched to 50 us.
- ``Futex``: ``spins`` and ``yields`` as Backoff, then sleeps in the kernel
  (``FUTEX_WAIT``) on the publish cursor of the one ring it consumes from
  another process, until the producer publishes or ``max_sleep_ns`` passes
  (so heartbeats and control commands are still serviced that often). A
  wake-up then costs one cross-process wake (~50 us on a 2-vCPU VM, like any
  other) instead of up to ``max_sleep_ns`` of sleeping through the data.
  It needs the ring's consumer handle (``Futex(rings=[ring])``) and a
  producer that notifies (every Python producer method does; a numba
  publisher calls ``nb_notify``/``Ring.notify``). A process can sleep on one
  word only: with several rings it behaves exactly like ``Backoff`` (sleeps
  from ``min_sleep_ns`` doubling to ``max_sleep_ns``); with none it sleeps
  ``max_sleep_ns`` at a time.
"""

from __future__ import annotations

import ctypes
import os
import time

from ringbuffers.ring import nb_pause, warm_notify_kernels

_PR_SET_TIMERSLACK = 29


def set_timer_slack(ns: int = 1) -> bool:
    """Ask the kernel to wake sleeps within ``ns`` of their deadline. Returns success."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class _IdleClock:
    __slots__ = ("idle_ns", "idle_calls", "_since")

    def __init__(self):
        self.idle_ns = 0
        self.idle_calls = 0
        self._since = 0

    def _enter(self):
        if not self._since:
            self._since = time.monotonic_ns()

    def _leave(self):
        if self._since:
            self.idle_ns += time.monotonic_ns() - self._since
            self._since = 0


class BusySpin(_IdleClock):
    """Spin with the CPU pause hint; never sleeps."""

    name = "busy_spin"

    def __init__(self):
        super().__init__()
        nb_pause()  # load/compile the kernel now, not at the first empty poll of a live loop

    def idle(self, work_count: int) -> None:
        if work_count > 0:
            self._leave()
            return
        self._enter()
        self.idle_calls += 1
        nb_pause()

    def reset(self) -> None:
        self._leave()


class Backoff(_IdleClock):
    """spin -> yield -> sleep (exponential, capped), reset by work."""

    name = "backoff"

    def __init__(self, spins: int = 100, yields: int = 50, min_sleep_ns: int = 20_000, max_sleep_ns: int = 1_000_000):
        super().__init__()
        if spins < 0 or yields < 0 or min_sleep_ns <= 0 or max_sleep_ns < min_sleep_ns:
            raise ValueError(
                f"{type(self).__name__}: need spins >= 0, yields >= 0, 0 < min_sleep_ns <= max_sleep_ns; got "
                f"spins={spins} yields={yields} min_sleep_ns={min_sleep_ns} max_sleep_ns={max_sleep_ns}"
            )
        self.spins = spins
        self.yields = yields
        self.min_sleep_ns = min_sleep_ns
        self.max_sleep_ns = max_sleep_ns
        self._count = 0
        self._sleep_ns = self._first_sleep_ns()
        self.sleeps = 0
        set_timer_slack(1)
        nb_pause()  # load/compile the kernel now, not at the first empty poll of a live loop

    def _first_sleep_ns(self) -> int:
        return self.min_sleep_ns

    def idle(self, work_count: int) -> None:
        if work_count > 0:
            self._leave()
            self._count = 0
            self._sleep_ns = self._first_sleep_ns()
            return
        self._enter()
        self.idle_calls += 1
        c = self._count
        self._count = c + 1
        if c < self.spins:
            nb_pause()
        elif c < self.spins + self.yields:
            os.sched_yield()
        else:
            self._rest()

    def _rest(self) -> None:
        """The last stage, once spinning and yielding found nothing: sleep, doubling up to the cap."""
        self.sleeps += 1
        time.sleep(self._sleep_ns / 1e9)
        self._sleep_ns = min(self._sleep_ns * 2, self.max_sleep_ns)

    def reset(self) -> None:
        self._leave()
        self._count = 0
        self._sleep_ns = self._first_sleep_ns()


class Futex(Backoff):
    """spin -> yield -> FUTEX_WAIT on the input ring's publish cursor (capped at ``max_sleep_ns``), reset by work.

    ``mode`` says what the last stage does: ``"futex"`` (one ring),
    ``"backoff"`` (several rings: sleeps doubling from ``min_sleep_ns`` to
    ``max_sleep_ns``, exactly as ``Backoff``) or ``"sleep"`` (no ring: sleeps
    ``max_sleep_ns``). Counters: ``waits`` (futex waits entered),
    ``timeouts`` (of those, the ones that returned with nothing to read),
    ``sleeps`` (plain sleeps in the other modes).
    """

    name = "futex"

    def __init__(self, rings=(), spins: int = 20, yields: int = 2, max_sleep_ns: int = 5_000_000,
                 min_sleep_ns: int = 20_000):
        rings = list(rings)
        for r in rings:
            if getattr(r, "consumer_index", -1) < 0:
                raise ValueError(f"Futex: rings must be consumer handles (Ring.attach(name, dtype, i)), got {r!r}")
        self.rings = tuple(rings)
        self.ring = rings[0] if len(rings) == 1 else None
        self.mode = "futex" if len(rings) == 1 else ("backoff" if rings else "sleep")
        self.waits = 0
        self.timeouts = 0
        super().__init__(spins, yields, min_sleep_ns, max_sleep_ns)
        warm_notify_kernels()

    def _first_sleep_ns(self) -> int:
        return self.min_sleep_ns if self.mode == "backoff" else self.max_sleep_ns

    def _rest(self) -> None:
        if self.ring is None:
            super()._rest()
            return
        self.waits += 1
        if self.ring.wait(self.max_sleep_ns) <= 0:
            self.timeouts += 1


IDLE_KINDS = ("busy_spin", "backoff", "futex")


def make_idle(kind: str, **params) -> BusySpin | Backoff | Futex:
    """Build an idle strategy by config name: ``busy_spin``, ``backoff`` or ``futex`` (pass ``rings=[...]``)."""
    if kind == "busy_spin":
        return BusySpin()
    if kind == "backoff":
        return Backoff(**params)
    if kind == "futex":
        return Futex(**params)
    raise ValueError(f"unknown idle strategy {kind!r} ({' | '.join(IDLE_KINDS)})")
