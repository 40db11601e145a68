"""What the supervisor keeps per process and for the spare."""

from __future__ import annotations

from dataclasses import dataclass, field

# Heartbeat values that are a current state, not a count: across restarts the
# latest incarnation's value stands instead of the sum.
GAUGES = frozenset({"books_valid", "books", "clients", "connected", "rest_used_weight_1m",
                    "state", "trip",  # risk's trading state and breaker trip
                    "clock_offset_ms", "venue_connected", "reconciled", "positions_checked",
                    "position_mismatches"})  # execution's venue session
#: counters that are a state, not a count (risk's positions and P&L per instrument): the latest value wins
GAUGE_PREFIXES = ("position.", "realized.", "realized_net.", "unrealized.", "avg_entry.", "mark.", "pnl.",
                  "weight_used.", "weight_limit.", "orders_used.", "orders_limit.")


def is_gauge(key: str) -> bool:
    return key in GAUGES or key.startswith(GAUGE_PREFIXES)


def fold(totals: dict, stats: dict) -> dict:
    """Add an incarnation's numeric counters into ``totals`` (gauges: latest wins)."""
    for k, v in stats.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            totals[k] = v if is_gauge(k) else totals.get(k, 0) + v
    return totals


@dataclass
class Proc:
    """One process of the placement (hosting ``stages``, or the simulator) across its incarnations."""

    name: str
    stages: tuple = ()
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
    stats: dict = field(default_factory=dict)  # current incarnation's process-level counters
    stats_done: dict = field(default_factory=dict)  # summed counters of finished incarnations
    stage_stats: dict = field(default_factory=dict)  # current incarnation: stage -> counters
    stage_done: dict = field(default_factory=dict)  # finished incarnations: stage -> summed counters
    idle_ns: int = 0  # current incarnation's idle time (its idle strategy's account)
    idle_info: dict = field(default_factory=dict)  # its idle strategy: name, mode, futex waits/timeouts, sleeps
    flow_ns: int = 0  # ...and the time it has run since its go (for the idle fraction)
    lat_wire: dict = field(default_factory=dict)  # current incarnation's latency (cumulative)
    lat_done: object = None  # LatencySet merged over finished incarnations
    start_info: dict = field(default_factory=dict)
    go_at: float = 0.0  # monotonic s of the current incarnation's go

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.exitcode is None

    def counters(self) -> dict:
        return fold(dict(self.stats_done), self.stats)

    def stage_counters(self, stage: str) -> dict:
        return fold(dict(self.stage_done.get(stage, {})), self.stage_stats.get(stage, {}))


@dataclass
class Spare:
    """The pre-started process that becomes a crashed process's replacement (``runtime.spare_main``)."""

    seq: int
    proc: object
    cmd_q: object
    evt_q: object
    started_at: float
    ready_at: float = 0.0  # 0 while it is still importing and warming
    serves: tuple = ()  # processes it warmed and can become
