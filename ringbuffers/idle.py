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
"""

from __future__ import annotations

import ctypes
import os
import time

from ringbuffers.ring import nb_pause

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
                f"Backoff: need spins >= 0, yields >= 0, 0 < min_sleep_ns <= max_sleep_ns; got "
                f"spins={spins} yields={yields} min_sleep_ns={min_sleep_ns} max_sleep_ns={max_sleep_ns}"
            )
        self.spins = spins
        self.yields = yields
        self.min_sleep_ns = min_sleep_ns
        self.max_sleep_ns = max_sleep_ns
        self._count = 0
        self._sleep_ns = min_sleep_ns
        self.sleeps = 0
        set_timer_slack(1)
        nb_pause()  # load/compile the kernel now, not at the first empty poll of a live loop

    def idle(self, work_count: int) -> None:
        if work_count > 0:
            self._leave()
            self._count = 0
            self._sleep_ns = self.min_sleep_ns
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
            self.sleeps += 1
            time.sleep(self._sleep_ns / 1e9)
            self._sleep_ns = min(self._sleep_ns * 2, self.max_sleep_ns)

    def reset(self) -> None:
        self._leave()
        self._count = 0
        self._sleep_ns = self.min_sleep_ns


def make_idle(kind: str, **params) -> BusySpin | Backoff:
    """Build an idle strategy by config name: ``busy_spin`` or ``backoff``."""
    if kind == "busy_spin":
        return BusySpin()
    if kind == "backoff":
        return Backoff(**params)
    raise ValueError(f"unknown idle strategy {kind!r} (busy_spin | backoff)")
