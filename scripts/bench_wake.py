"""One wake-up per idle strategy: a paced ping between two processes.

The producer (this process) publishes one BENCH record every ``--period-us``
into a ring, stamping ``pub_ns`` with CLOCK_MONOTONIC ns just before the
publish. The consumer (a spawned process) polls with the plain-Python Ring
API, as a worker does, idles with the strategy under test between records,
and records ``monotonic_ns() - pub_ns`` on receipt. At a period far longer
than any spin stage, every record finds the consumer idle, so the
distribution is that of one wake-up:

- ``busy_spin``: the consumer never sleeps (needs a CPU of its own);
- ``backoff``: spin -> yield -> sleep doubling up to ``max_sleep``: it sees a
  record only when its current sleep ends (up to ``max_sleep`` late);
- ``futex``: spin -> yield -> FUTEX_WAIT on the publish cursor, woken by the
  producer's publish (one cross-process wake-up).

Consumer CPU % is ``getrusage`` (user + system) over the consumer's
measurement window divided by its wall time (100 = one CPU busy).

    python3 scripts/bench_wake.py [--n 3000] [--period-us 1000] [--strategies busy_spin,backoff,futex] [--json]

``measure_wake(strategy, params, n, period_us, cpus)`` is importable (with
``scripts/`` on ``sys.path``) for other reports (``latency_profile.py``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time

import numpy as np

from _machine import machine
from core.records import BENCH
from ringbuffers.idle import make_idle
from ringbuffers.ring import Ring, segment_name

STRATEGIES = ("busy_spin", "backoff", "futex")
#: config/system.json's placement idle (backoff) and the futex proposal for the same hosts
DEFAULT_PARAMS = {
    "busy_spin": {},
    "backoff": {"spins": 20, "yields": 2, "min_sleep_us": 20, "max_sleep_us": 500},
    "futex": {"spins": 20, "yields": 2, "max_sleep_us": 5000},
}
WARMUP = 20  # records published and discarded before the measured ones (first-touch, kernel loading)
CAPACITY = 1024


def _idle_kwargs(params: dict) -> dict:
    """Config-style ``*_us`` keys -> the idle strategies' ``*_ns`` keyword arguments."""
    out = {}
    for key, value in params.items():
        if key.endswith("_us"):
            out[key[:-3] + "_ns"] = int(value * 1000)
        else:
            out[key] = value
    return out


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _consumer(name: str, strategy: str, params: dict, n: int, cpu: int | None, deadline_s: float, ready, out) -> None:
    """Spawned: receive WARMUP + n records, idling with ``strategy``; put the latencies and CPU use on ``out``."""
    _pin(cpu)
    ring = Ring.attach(name, BENCH, 0)
    kwargs = _idle_kwargs(params)
    if strategy == "futex":
        kwargs["rings"] = [ring]
    idle = make_idle(strategy, **kwargs)
    lat = np.empty(n, np.int64)
    got = 0
    total = WARMUP + n
    ready.set()
    end = time.monotonic() + deadline_s
    ru0 = wall0 = None
    while got < total:
        p = ring.poll(64)
        k = len(p.records)
        if k:
            now = time.monotonic_ns()
            for pub_ns in p.records["pub_ns"].tolist():
                if got >= WARMUP:
                    lat[got - WARMUP] = now - pub_ns
                got += 1
            if ru0 is None and got >= WARMUP:
                ru0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        ring.release()
        idle.idle(k)
        if not k and time.monotonic() > end:
            break
    wall = time.monotonic() - wall0 if wall0 is not None else 0.0
    cpu_s = 0.0
    if ru0 is not None:
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    out.put({
        "lat_ns": lat[: max(0, got - WARMUP)].tobytes(),
        "cpu_pct": 100.0 * cpu_s / wall if wall > 0 else 0.0,
        "waits": getattr(idle, "waits", 0),
        "timeouts": getattr(idle, "timeouts", 0),
        "sleeps": getattr(idle, "sleeps", 0),
    })
    ring.close()


def default_cpus() -> tuple[int, int] | None:
    """(producer CPU, consumer CPU): the first two allowed CPUs, or ``None`` (no pinning) with one."""
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else None


def measure_wake(strategy: str, params: dict, n: int, period_us: int, cpus=None) -> dict:
    """One paced ping run: ``n`` records, one per ``period_us``, consumer idling with ``strategy``.

    ``params``: the strategy's keyword arguments, config-style (``spins``,
    ``yields``, ``min_sleep_us``, ``max_sleep_us``; ``*_ns`` also accepted).
    ``cpus``: ``(producer, consumer)`` CPUs to pin to, or ``None`` for no
    pinning (the caller's affinity is restored afterwards). Returns
    ``p50_us``, ``p90_us``, ``p99_us``, ``max_us``, ``cpu_pct`` (consumer),
    ``received`` and the idle counters (``waits``, ``timeouts``, ``sleeps``).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"measure_wake: unknown strategy {strategy!r} ({' | '.join(STRATEGIES)})")
    if n <= 0 or period_us <= 0:
        raise ValueError(f"measure_wake: need n > 0 and period_us > 0, got n={n} period_us={period_us}")
    prod_cpu, cons_cpu = cpus if cpus is not None else (None, None)
    period_ns = period_us * 1000
    deadline_s = 60.0 + 3 * (WARMUP + n) * period_ns / 1e9
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    name = segment_name(f"bench-wake-{os.getpid()}", strategy)
    saved_affinity = os.sched_getaffinity(0)
    rec = np.zeros(1, BENCH)[0]
    with Ring.create(name, BENCH, CAPACITY, 1) as ring:
        child = ctx.Process(target=_consumer, args=(name, strategy, dict(params), n, cons_cpu, deadline_s, ready, out))
        child.start()
        try:
            if not ready.wait(60):
                raise RuntimeError(f"measure_wake({strategy}): the consumer process did not start")
            time.sleep(0.05)  # let it reach its idle stage before the first record
            _pin(prod_cpu)
            deadline = time.monotonic_ns()
            for seq in range(WARMUP + n):
                deadline += period_ns
                wait = deadline - time.monotonic_ns()
                if wait > 0:
                    time.sleep(wait / 1e9)
                rec["seq"] = seq
                rec["pub_ns"] = time.monotonic_ns()
                ring.publish(rec)  # never FULL: the consumer keeps up at this pace (CAPACITY of slack)
            res = out.get(timeout=deadline_s)
        finally:
            os.sched_setaffinity(0, saved_affinity)
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join()
    lat_us = np.frombuffer(res["lat_ns"], np.int64).astype(np.float64) / 1000.0
    if len(lat_us) == 0:
        raise RuntimeError(f"measure_wake({strategy}): the consumer received nothing")
    p50, p90, p99 = np.percentile(lat_us, [50, 90, 99])
    return {
        "strategy": strategy,
        "params": dict(params),
        "n": n,
        "period_us": period_us,
        "received": int(len(lat_us)),
        "p50_us": float(p50),
        "p90_us": float(p90),
        "p99_us": float(p99),
        "max_us": float(lat_us.max()),
        "cpu_pct": float(res["cpu_pct"]),
        "waits": int(res["waits"]),
        "timeouts": int(res["timeouts"]),
        "sleeps": int(res["sleeps"]),
    }


def _table(rows: list[dict]) -> str:
    lines = [
        "| strategy | params | p50 us | p90 us | p99 us | max us | consumer CPU % |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        params = " ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        lines.append(f"| {r['strategy']} | {params} | {r['p50_us']:.1f} | {r['p90_us']:.1f} | {r['p99_us']:.1f} "
                     f"| {r['max_us']:.0f} | {r['cpu_pct']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="measured records per strategy")
    ap.add_argument("--period-us", type=int, default=1000, help="one record per this many us")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated, of " + ", ".join(STRATEGIES))
    ap.add_argument("--spins", type=int, help="backoff and futex: empty polls with PAUSE before yielding")
    ap.add_argument("--yields", type=int, help="backoff and futex: sched_yield calls before sleeping")
    ap.add_argument("--min-sleep-us", type=int, help="backoff: first sleep")
    ap.add_argument("--max-sleep-us", type=int, help="backoff: longest sleep")
    ap.add_argument("--futex-max-sleep-us", type=int, help="futex: longest wait")
    ap.add_argument("--no-pin", action="store_true", help="do not pin producer and consumer to two CPUs")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    strategies = [s for s in args.strategies.split(",") if s]
    for s in strategies:
        if s not in STRATEGIES:
            ap.error(f"unknown strategy {s!r} ({', '.join(STRATEGIES)})")
    params = {k: dict(v) for k, v in DEFAULT_PARAMS.items()}
    for key in ("spins", "yields"):
        if getattr(args, key) is not None:
            params["backoff"][key] = params["futex"][key] = getattr(args, key)
    if args.min_sleep_us is not None:
        params["backoff"]["min_sleep_us"] = args.min_sleep_us
    if args.max_sleep_us is not None:
        params["backoff"]["max_sleep_us"] = args.max_sleep_us
    if args.futex_max_sleep_us is not None:
        params["futex"]["max_sleep_us"] = args.futex_max_sleep_us
    cpus = None if args.no_pin else default_cpus()
    rows = [measure_wake(s, params[s], args.n, args.period_us, cpus) for s in strategies]
    if args.json:
        print(json.dumps({"machine": machine(), "cpus": list(cpus) if cpus else None, "rows": rows}, indent=2))
    else:
        where = f"producer CPU {cpus[0]}, consumer CPU {cpus[1]}" if cpus else "not pinned"
        print(f"paced ping, 1 record / {args.period_us} us, n={args.n} per strategy, {where}")
        print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
