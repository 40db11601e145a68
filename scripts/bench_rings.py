#!/usr/bin/env python
"""One-hop latency and throughput of the shared-memory ring against its baselines.

    .venv/bin/python scripts/bench_rings.py [--quick] [--json]

What it measures, all in one run on one host, producer and consumer in two
spawned processes pinned to two different CPUs (the first two this process
may use, when there are two):

* latency: the producer publishes one 64-byte ``BENCH`` record every
  ``--period-us`` (paced), stamping ``pub_ns`` just before the publish; the
  consumer takes the time as soon as it sees the record; latency = receive
  time - ``pub_ns``, same clock (CLOCK_MONOTONIC), same host. Percentiles
  over ``n_latency`` records after ``n_warmup`` discarded ones.
* throughput: the producer sends ``n_throughput`` records unpaced; records/s
  = count / (consumer's time of the last record - producer's start).

Transports (rows):

``ring-numba/busy_spin``, ``ring-numba/backoff``
    ``ringbuffers.Ring``, both ends ``@njit`` loops over the ring's own
    kernels (``nb_publish_begin/end``, ``nb_spin_for_data``,
    ``nb_poll_view/end``); time from ``ringbuffers.clock`` (calibrated TSC by
    default, ``--clock monotonic`` for clock_gettime). Backoff: the kernel
    spins ``Backoff().spins`` polls, then returns so that the Python
    ``Backoff`` strategy yields and later sleeps, as a shared-core worker would.
``ring-python/busy_spin``, ``ring-python/backoff``
    Plain Python: ``publish`` of one record per message (paced) and
    ``claim``/``commit`` of ``--batch`` records (throughput); the consumer
    ``poll``/``release`` with ``BusySpin`` / ``Backoff``.
``faster-fifo``, ``zmq-ipc``, ``mp-queue``
    ``faster_fifo.Queue`` (``put_many``/``get_many`` for throughput), pyzmq
    PUSH/PULL over ``ipc://`` (the transport of the system this replaces),
    ``multiprocessing.Queue``; 64-byte messages of the same fields, blocking
    receives (their natural mode).

Pacing: the producer spins until each send time, except for the two
transports whose producer side runs a helper thread on the producer's pinned
CPU (the ``multiprocessing.Queue`` feeder thread, which needs the GIL, and
zmq's I/O thread): spinning would starve that thread, so their producer sleeps
to the send time instead (the ``interval`` column shows the pace achieved).

Reading the numbers: a consumer that needs longer per message than the pace
builds a queue, and its percentiles then grow with the run length (compare
its throughput with 1 / period). Spinning loops share their CPU badly: when
something else runs on the two CPUs, the ``preempt`` column (involuntary
context switches of the two processes) rises and the table warns; such a
run measures that load, not the transport.

The targets of ringtrader issue 2 (numba hop p50 <= 0.3 us, p99 <= 2 us;
p50 >= 50x below faster-fifo and >= 100x below pyzmq; >= 30 M rec/s from
numba, >= 5 M rec/s through the Python batch API) are measured and reported,
never asserted. The machine is described in the output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import struct
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from multiprocessing import connection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without an install
    sys.path.insert(0, str(ROOT))

from core.numba_cache import configure  # noqa: E402

configure()  # before numba is imported (here and in the spawned ends, which inherit the dir)

import multiprocessing as mp  # noqa: E402

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402

from core.records import BENCH  # noqa: E402
from ringbuffers.atomics import cpu_pause  # noqa: E402
from ringbuffers.clock import (  # noqa: E402
    calibrate_tsc,
    nb_monotonic_ns,
    nb_rdtsc,
    nb_tsc_to_ns,
    tsc_is_invariant,
)
from ringbuffers.idle import Backoff, BusySpin, set_timer_slack  # noqa: E402
from _machine import machine  # noqa: E402  (scripts/ is sys.path[0])
from ringbuffers.ring import (  # noqa: E402
    FULL,
    H_CAPACITY,
    Ring,
    nb_poll_end,
    nb_poll_view,
    nb_publish_begin,
    nb_publish_end,
    nb_spin_for_data,
)

# --------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------

T_RING_NUMBA = "ring_numba"
T_RING_PYTHON = "ring_python"
T_FASTER_FIFO = "faster_fifo"
T_ZMQ = "zmq_ipc"
T_MP_QUEUE = "mp_queue"


@dataclass(frozen=True)
class Variant:
    name: str  # row label, also the --variants key
    transport: str  # one of the T_* constants
    mode: str  # consumer idle: busy_spin | backoff | blocking (the transport's own wait)
    pacer: str  # how the paced producer waits: spin | sleep


VARIANTS = (
    Variant("ring-numba/busy_spin", T_RING_NUMBA, "busy_spin", "spin"),
    Variant("ring-numba/backoff", T_RING_NUMBA, "backoff", "spin"),
    Variant("ring-python/busy_spin", T_RING_PYTHON, "busy_spin", "spin"),
    Variant("ring-python/backoff", T_RING_PYTHON, "backoff", "spin"),
    Variant("faster-fifo", T_FASTER_FIFO, "blocking", "spin"),
    Variant("zmq-ipc", T_ZMQ, "blocking", "sleep"),
    Variant("mp-queue", T_MP_QUEUE, "blocking", "sleep"),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)
REFERENCE = "ring-numba/busy_spin"
# Involuntary context switches above which a row is flagged as disturbed. A
# transport that blocks (zmq's I/O thread, mp.Queue's feeder) switches by
# design, so the warning only looks at the ring rows, whose pinned loops never block.
NOISY_PREEMPTIONS = 200


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    n_latency: int = 200_000  # paced records measured per variant
    n_warmup: int = 5_000  # paced records sent first and discarded (caches, JIT, connection setup)
    period_ns: int = 20_000  # pace of the latency run
    n_throughput_numba: int = 20_000_000  # unpaced records, ring from numba
    n_throughput_python: int = 4_000_000  # unpaced records, ring from plain Python
    n_throughput_baseline: int = 300_000  # unpaced records, faster-fifo / zmq / mp.Queue
    batch: int = 256  # records per claim/commit, poll, put_many/get_many
    capacity: int = 1 << 14  # ring slots (1 MiB of BENCH records)
    clock: str = "tsc"  # numba-side clock: tsc (calibrated RDTSC) | monotonic (clock_gettime)
    variants: tuple[str, ...] = VARIANT_NAMES
    timeout_s: float = 180.0  # per variant; children are killed after it
    wait_quiet_s: float = 0.0  # before each variant, wait up to this long for the CPUs to be >= 90% idle

    def __post_init__(self):
        for key in ("n_latency", "n_throughput_numba", "n_throughput_python", "n_throughput_baseline", "period_ns"):
            if getattr(self, key) <= 0:
                raise ValueError(f"bench.{key} must be > 0, got {getattr(self, key)}")
        if self.wait_quiet_s < 0:
            raise ValueError(f"bench.wait_quiet_s must be >= 0, got {self.wait_quiet_s}")
        if self.n_warmup < 0:
            raise ValueError(f"bench.n_warmup must be >= 0, got {self.n_warmup}")
        if not 1 <= self.batch <= self.capacity // 2:
            raise ValueError(f"bench.batch must be in 1..capacity/2 ({self.capacity // 2}), got {self.batch}")
        if self.clock not in ("tsc", "monotonic"):
            raise ValueError(f"bench.clock must be 'tsc' or 'monotonic', got {self.clock!r}")
        unknown = [v for v in self.variants if v not in VARIANT_NAMES]
        if unknown or not self.variants:
            raise ValueError(f"bench.variants: unknown {unknown} (choose from {list(VARIANT_NAMES)})")


QUICK = dict(
    n_latency=20_000,
    n_warmup=2_000,
    n_throughput_numba=4_000_000,
    n_throughput_python=500_000,
    n_throughput_baseline=40_000,
)


def n_throughput(cfg: BenchConfig, transport: str) -> int:
    if transport == T_RING_NUMBA:
        return cfg.n_throughput_numba
    if transport == T_RING_PYTHON:
        return cfg.n_throughput_python
    return cfg.n_throughput_baseline


# --------------------------------------------------------------------------
# The record's content (so that a consumer can tell a torn or misordered one)
# --------------------------------------------------------------------------

PAYLOAD_MULT = np.array([3, 5, 7, 11], dtype=np.int64)  # payload[k] = seq * PAYLOAD_MULT[k]
# Baseline message: the same 64 bytes as a BENCH record (recv_ns, pub_ns, seq, payload[4], checksum).
MSG = struct.Struct("<qqq4qq")
MSG_PUB_SEQ = struct.Struct("<8xqq")
assert MSG.size == BENCH.itemsize


def py_checksum(seq: int) -> int:
    return seq ^ (seq * 3) ^ (seq * 5) ^ (seq * 7) ^ (seq * 11)


# --------------------------------------------------------------------------
# numba kernels: both ends of the ring-numba variants
# --------------------------------------------------------------------------

CLK_MONOTONIC = 0
CLK_TSC = 1


@nb.njit(cache=True, inline="always")
def _now(clk, tsc0, ns0, ns_per_tick):
    # One clock for both processes: calibrated TSC (cheaper) or clock_gettime.
    if clk == CLK_TSC:
        return nb_tsc_to_ns(nb_rdtsc(), tsc0, ns0, ns_per_tick)
    return nb_monotonic_ns()


@nb.njit(cache=True, inline="always")
def _fill(r, seq):
    r.seq = seq
    r.payload[0] = seq * 3
    r.payload[1] = seq * 5
    r.payload[2] = seq * 7
    r.payload[3] = seq * 11
    r.checksum = seq ^ r.payload[0] ^ r.payload[1] ^ r.payload[2] ^ r.payload[3]


@nb.njit(cache=True)
def nb_produce_paced(ctrl, slots, seq0, n, period_ns, clk, tsc0, ns0, ns_per_tick):
    """Publish ``n`` records one at a time, one every ``period_ns``. Returns (full_waits, span_ns)."""
    mask = ctrl[H_CAPACITY] - 1
    full_waits = 0
    t = _now(clk, tsc0, ns0, ns_per_tick)
    first = t
    nxt = t
    for i in range(n):
        t = _now(clk, tsc0, ns0, ns_per_tick)
        while t < nxt:
            cpu_pause()
            t = _now(clk, tsc0, ns0, ns_per_tick)
        nxt += period_ns
        if nxt < t:  # we were descheduled: resume the pace, don't burst to catch up
            nxt = t
        seq = nb_publish_begin(ctrl, 1)
        while seq == FULL:
            full_waits += 1
            cpu_pause()
            seq = nb_publish_begin(ctrl, 1)
        r = slots[seq & mask]
        _fill(r, seq0 + i)
        r.recv_ns = t
        r.pub_ns = _now(clk, tsc0, ns0, ns_per_tick)
        nb_publish_end(ctrl, seq + 1)
    return full_waits, t - first


@nb.njit(cache=True)
def nb_produce_burst(ctrl, slots, seq0, n, batch, clk, tsc0, ns0, ns_per_tick):
    """Publish ``n`` records unpaced, ``batch`` per publish. Returns full_waits."""
    mask = ctrl[H_CAPACITY] - 1
    full_waits = 0
    done = 0
    while done < n:
        k = n - done
        if k > batch:
            k = batch
        seq = nb_publish_begin(ctrl, k)
        if seq == FULL:
            full_waits += 1
            cpu_pause()
            continue
        t = _now(clk, tsc0, ns0, ns_per_tick)
        for j in range(k):
            r = slots[(seq + j) & mask]
            _fill(r, seq0 + done + j)
            r.recv_ns = t
            r.pub_ns = t
        nb_publish_end(ctrl, seq + k)
        done += k
    return full_waits


@nb.njit(cache=True)
def nb_consume(ctrl, slots, ci, seq0, n_total, done, max_batch, spins, lat, keep_lat, clk, tsc0, ns0, ns_per_tick):
    """Read until ``n_total`` records are done or ``spins`` polls found nothing.

    Checks each record's seq and checksum in place (zero-copy view), writes
    ``receive time - pub_ns`` to ``lat`` when ``keep_lat``. Returns
    (done, errors).
    """
    mask = ctrl[H_CAPACITY] - 1
    errors = 0
    while done < n_total:
        if nb_spin_for_data(ctrl, ci, spins) == 0:
            break
        want = n_total - done
        if want > max_batch:
            want = max_batch
        cursor, k = nb_poll_view(ctrl, ci, want)
        t = _now(clk, tsc0, ns0, ns_per_tick)
        for j in range(k):
            r = slots[(cursor + j) & mask]
            s = r.seq
            if s != seq0 + done + j or r.checksum != (s ^ r.payload[0] ^ r.payload[1] ^ r.payload[2] ^ r.payload[3]):
                errors += 1
            if keep_lat:
                lat[done + j] = t - r.pub_ns
        nb_poll_end(ctrl, ci, cursor + k)
        done += k
    return done, errors


# --------------------------------------------------------------------------
# Children
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """Everything one child needs; picklable for the spawn context."""

    variant: Variant
    cfg: BenchConfig
    role: str  # producer | consumer
    cpu: int | None
    ring_name: str | None = None
    zmq_addr: str | None = None
    tsc: tuple[int, int, float] = (0, 0, 1.0)  # (tsc0, ns0, ns_per_tick) shared by both ends


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _make_idle(mode: str):
    return Backoff() if mode == "backoff" else BusySpin()


def _pace_spin(deadline: int) -> int:
    mono = time.monotonic_ns
    t = mono()
    while t < deadline:
        t = mono()
    return t


def _pace_sleep(deadline: int) -> int:
    t = time.monotonic_ns()
    if t < deadline:
        time.sleep((deadline - t) / 1e9)
        t = time.monotonic_ns()
    return t


def _clock_args(job: Job):
    clk = CLK_TSC if job.cfg.clock == "tsc" else CLK_MONOTONIC
    tsc0, ns0, npt = job.tsc
    return clk, np.int64(tsc0), np.int64(ns0), float(npt)


# -- ring, numba ------------------------------------------------------------


def _ring_numba_producer(job: Job, ring: Ring, barrier) -> dict:
    cfg = job.cfg
    clock = _clock_args(job)
    nb_produce_paced(ring.ctrl, ring.slots, 0, 0, cfg.period_ns, *clock)  # compile / load from cache
    nb_produce_burst(ring.ctrl, ring.slots, 0, 0, cfg.batch, *clock)
    n_paced = cfg.n_warmup + cfg.n_latency
    barrier.wait()
    full_waits, span = nb_produce_paced(ring.ctrl, ring.slots, 0, n_paced, cfg.period_ns, *clock)
    barrier.wait()
    t0 = time.monotonic_ns()
    full_waits += nb_produce_burst(ring.ctrl, ring.slots, n_paced, n_throughput(cfg, T_RING_NUMBA), cfg.batch, *clock)
    return {"t0": t0, "interval_ns": span / max(n_paced - 1, 1), "full_waits": int(full_waits)}


def _numba_idle(mode: str):
    """(kernel spins per call, Python idle strategy) of a numba consumer.

    busy_spin: stay inside the kernel; it returns to Python only after ~1M
    empty polls. backoff: the kernel does the spin stage (``Backoff().spins``
    polls with PAUSE, no per-poll dispatch), then returns so that a
    ``Backoff(spins=0)`` yields and later sleeps, as a worker on a shared
    core would; each of those steps is followed by another short spin.
    """
    if mode == "busy_spin":
        return 1 << 20, BusySpin()
    return Backoff().spins, Backoff(spins=0)


def _ring_numba_consume(job, ring, idle, spins, seq0, n, lat, keep):
    cfg = job.cfg
    clock = _clock_args(job)
    done = errors = 0
    while done < n:
        before = done
        done, e = nb_consume(ring.ctrl, ring.slots, 0, seq0, n, done, cfg.batch, spins, lat, keep, *clock)
        errors += e
        idle.idle(done - before)
    return errors


def _ring_numba_consumer(job: Job, ring: Ring, barrier) -> dict:
    cfg = job.cfg
    clock = _clock_args(job)
    spins, idle = _numba_idle(job.variant.mode)
    n_paced = cfg.n_warmup + cfg.n_latency
    lat = np.zeros(n_paced, np.int64)
    nb_consume(ring.ctrl, ring.slots, 0, 0, 0, 0, cfg.batch, 1, lat, True, *clock)  # compile / load from cache
    barrier.wait()
    errors = _ring_numba_consume(job, ring, idle, spins, 0, n_paced, lat, True)
    barrier.wait()
    n_tp = n_throughput(cfg, T_RING_NUMBA)
    errors += _ring_numba_consume(job, ring, idle, spins, n_paced, n_tp, lat, False)
    t1 = time.monotonic_ns()
    return {"lat_ns": lat[cfg.n_warmup:], "t1": t1, "errors": errors, "received": n_paced + n_tp}


# -- ring, plain Python -----------------------------------------------------


def _ring_python_producer(job: Job, ring: Ring, barrier) -> dict:
    cfg = job.cfg
    idle = _make_idle(job.variant.mode)
    mono = time.monotonic_ns
    n_paced = cfg.n_warmup + cfg.n_latency
    barrier.wait()
    full_waits = 0
    first = nxt = mono()
    t = first
    for s in range(n_paced):
        t = _pace_spin(nxt)
        nxt += cfg.period_ns
        if nxt < t:
            nxt = t
        payload = (s * 3, s * 5, s * 7, s * 11)
        checksum = py_checksum(s)
        # A tuple in field order (recv_ns, pub_ns, seq, payload, checksum) is
        # the cheapest record to hand to publish(); pub_ns is taken last but one.
        while ring.publish((t, mono(), s, payload, checksum)) == FULL:
            full_waits += 1
            idle.idle(0)
    span = t - first
    barrier.wait()
    ar = np.arange(cfg.batch, dtype=np.int64)
    n_tp = n_throughput(cfg, T_RING_PYTHON)
    t0 = mono()
    done = 0
    while done < n_tp:
        view = ring.claim(min(cfg.batch, n_tp - done))
        if view is None:
            full_waits += 1
            idle.idle(0)
            continue
        k = len(view)
        seqs = ar[:k] + (n_paced + done)
        payload = seqs[:, None] * PAYLOAD_MULT
        view["seq"] = seqs
        view["payload"] = payload
        view["checksum"] = seqs ^ np.bitwise_xor.reduce(payload, axis=1)
        now = mono()
        view["recv_ns"] = now
        view["pub_ns"] = now
        ring.commit()
        done += k
        idle.idle(k)
    return {"t0": t0, "interval_ns": span / max(n_paced - 1, 1), "full_waits": full_waits}


def _ring_python_consume(ring, idle, seq0, n, batch, lat) -> int:
    mono = time.monotonic_ns
    done = errors = 0
    while done < n:
        p = ring.poll(min(batch, n - done))
        recs = p.records
        k = len(recs)
        if not k:
            idle.idle(0)
            continue
        t = mono()
        if lat is not None:
            if k == 1:
                lat[done] = t - int(recs["pub_ns"][0])
            else:
                lat[done:done + k] = t - recs["pub_ns"]
        seqs = recs["seq"]
        if seqs[0] != seq0 + done or seqs[k - 1] != seq0 + done + k - 1:
            errors += 1
        ring.release()
        done += k
        idle.idle(k)
    return errors


def _ring_python_consumer(job: Job, ring: Ring, barrier) -> dict:
    cfg = job.cfg
    idle = _make_idle(job.variant.mode)
    n_paced = cfg.n_warmup + cfg.n_latency
    lat = np.zeros(n_paced, np.int64)
    barrier.wait()
    errors = _ring_python_consume(ring, idle, 0, n_paced, cfg.batch, lat)
    barrier.wait()
    n_tp = n_throughput(cfg, T_RING_PYTHON)
    errors += _ring_python_consume(ring, idle, n_paced, n_tp, cfg.batch, None)
    t1 = time.monotonic_ns()
    return {"lat_ns": lat[cfg.n_warmup:], "t1": t1, "errors": errors, "received": n_paced + n_tp}


# -- baselines --------------------------------------------------------------


class _Sender:
    """Producer side of a baseline: ``send(msg)`` and ``send_many(msgs)``."""

    def __init__(self, job: Job, channel):
        self.transport = job.variant.transport
        self.q = channel
        self._zctx = self._sock = None
        if self.transport == T_ZMQ:
            import zmq

            self._zctx = zmq.Context()  # created after pinning: its I/O thread shares our CPU
            self._sock = self._zctx.socket(zmq.PUSH)
            self._sock.setsockopt(zmq.LINGER, 5000)
            self._sock.connect(job.zmq_addr)

    def send(self, msg: bytes) -> None:
        if self.transport == T_ZMQ:
            self._sock.send(msg)
        elif self.transport == T_FASTER_FIFO:
            self.q.put(msg, timeout=30.0)
        else:
            self.q.put(msg)

    def send_many(self, msgs: list) -> None:
        if self.transport == T_FASTER_FIFO:
            self.q.put_many(msgs, timeout=30.0)
        else:
            for m in msgs:
                self.send(m)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._zctx.term()
        elif self.transport == T_MP_QUEUE:
            self.q.close()
            self.q.join_thread()  # flush the feeder thread before the process exits


class _Receiver:
    """Consumer side of a baseline: ``recv()`` one message, ``recv_many(n)`` a list."""

    def __init__(self, job: Job, channel, timeout_s: float = 60.0):
        self.transport = job.variant.transport
        self.q = channel
        self.timeout = timeout_s
        self._zctx = self._sock = None
        if self.transport == T_ZMQ:
            import zmq

            self._zctx = zmq.Context()
            self._sock = self._zctx.socket(zmq.PULL)
            self._sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.bind(job.zmq_addr)

    def recv(self) -> bytes:
        if self.transport == T_ZMQ:
            return self._sock.recv()
        return self.q.get(timeout=self.timeout)

    def recv_many(self, n: int) -> list:
        if self.transport == T_FASTER_FIFO:
            return self.q.get_many(timeout=self.timeout, max_messages_to_get=n)
        return [self.recv()]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._zctx.term()


def _baseline_producer(job: Job, channel, barrier) -> dict:
    cfg = job.cfg
    sender = _Sender(job, channel)
    pace = _pace_sleep if job.variant.pacer == "sleep" else _pace_spin
    mono = time.monotonic_ns
    pack = MSG.pack
    n_paced = cfg.n_warmup + cfg.n_latency
    try:
        barrier.wait()
        first = nxt = mono()
        t = first
        for s in range(n_paced):
            t = pace(nxt)
            nxt += cfg.period_ns
            if nxt < t:
                nxt = t
            sender.send(pack(t, mono(), s, s * 3, s * 5, s * 7, s * 11, py_checksum(s)))
        span = t - first
        barrier.wait()
        n_tp = n_throughput(cfg, job.variant.transport)
        t0 = mono()
        done = 0
        while done < n_tp:
            k = min(cfg.batch, n_tp - done)
            now = mono()
            sender.send_many([pack(now, now, s, s * 3, s * 5, s * 7, s * 11, py_checksum(s))
                              for s in range(n_paced + done, n_paced + done + k)])
            done += k
        # Close only after the consumer has everything: closing a zmq socket
        # drops what its linger period did not deliver, and a slow consumer
        # (a loaded host) can take longer than any linger.
        barrier.wait()
    finally:
        sender.close()
    return {"t0": t0, "interval_ns": span / max(n_paced - 1, 1), "full_waits": 0}


def _baseline_consumer(job: Job, channel, barrier) -> dict:
    cfg = job.cfg
    receiver = _Receiver(job, channel)
    mono = time.monotonic_ns
    unpack = MSG_PUB_SEQ.unpack_from
    n_paced = cfg.n_warmup + cfg.n_latency
    lat = np.zeros(n_paced, np.int64)
    errors = 0
    try:
        barrier.wait()
        for i in range(n_paced):
            m = receiver.recv()
            t = mono()
            pub, seq = unpack(m)
            lat[i] = t - pub
            if seq != i:
                errors += 1
        barrier.wait()
        n_tp = n_throughput(cfg, job.variant.transport)
        done = 0
        while done < n_tp:
            msgs = receiver.recv_many(min(cfg.batch, n_tp - done))
            if unpack(msgs[0])[1] != n_paced + done or unpack(msgs[-1])[1] != n_paced + done + len(msgs) - 1:
                errors += 1
            done += len(msgs)
        t1 = mono()
        barrier.wait()
    finally:
        receiver.close()
    return {"lat_ns": lat[cfg.n_warmup:], "t1": t1, "errors": errors, "received": n_paced + done}


# -- child entry --------------------------------------------------------------


def _child_main(job: Job, channel, barrier, conn) -> None:
    """Spawned process: pin, attach, run both phases, send a result dict (or an error)."""
    try:
        _pin(job.cpu)
        set_timer_slack(1)
        # involuntary context switches: how often something else took our CPU (setup included)
        switches0 = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
        t = job.variant.transport
        if t in (T_RING_NUMBA, T_RING_PYTHON):
            ring = Ring.attach(job.ring_name, BENCH, "producer" if job.role == "producer" else 0)
            try:
                fn = {
                    (T_RING_NUMBA, "producer"): _ring_numba_producer,
                    (T_RING_NUMBA, "consumer"): _ring_numba_consumer,
                    (T_RING_PYTHON, "producer"): _ring_python_producer,
                    (T_RING_PYTHON, "consumer"): _ring_python_consumer,
                }[(t, job.role)]
                result = fn(job, ring, barrier)
            finally:
                ring.close()
        else:
            fn = _baseline_producer if job.role == "producer" else _baseline_consumer
            result = fn(job, channel, barrier)
        result["nivcsw"] = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - switches0
        conn.send(result)
    except BaseException as exc:  # report anything to the parent rather than die silently
        barrier.abort()
        conn.send({"error": f"{job.variant.name} {job.role}: {exc!r}\n{traceback.format_exc()}"})
    finally:
        conn.close()


# --------------------------------------------------------------------------
# Parent: one variant
# --------------------------------------------------------------------------


class BenchError(RuntimeError):
    pass


@dataclass
class Row:
    name: str
    transport: str
    mode: str
    pacer: str
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float
    min_us: float
    mean_us: float
    throughput_per_s: float
    latency_records: int
    throughput_records: int
    interval_us: float  # achieved mean interval of the paced run
    errors: int  # records out of sequence or failing their checksum (must be 0)
    negative: int  # latencies below zero (would mean the clock is not coherent across CPUs)
    preemptions: int  # involuntary context switches of producer + consumer: CPU taken by something else
    cpu_idle_before: float | None = None  # share of all CPUs idle just before this variant started
    p50_ratio: float | None = None  # this row's p50 / the reference ring's p50
    throughput_ratio: float | None = None  # the reference ring's throughput / this row's


def bench_cpus() -> tuple[int | None, int | None]:
    """(producer CPU, consumer CPU): the first two allowed CPUs, or no pinning with one."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) >= 2:
        return allowed[0], allowed[1]
    return None, None


def latency_stats(lat_ns: np.ndarray) -> dict:
    us = lat_ns.astype(np.float64) / 1000.0
    p50, p90, p99, p999 = np.percentile(us, [50, 90, 99, 99.9])
    return {
        "p50_us": float(p50),
        "p90_us": float(p90),
        "p99_us": float(p99),
        "p999_us": float(p999),
        "max_us": float(us.max()),
        "min_us": float(us.min()),
        "mean_us": float(us.mean()),
    }


def run_variant(variant: Variant, cfg: BenchConfig, tsc: tuple[int, int, float]) -> Row:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2, timeout=cfg.timeout_s)
    prod_cpu, cons_cpu = bench_cpus()
    ring = None
    tmpdir = None
    channel = None
    procs = []
    conns = []
    slug = variant.name.replace("/", "-")
    try:
        job_args = {}
        if variant.transport in (T_RING_NUMBA, T_RING_PYTHON):
            name = f"ringtrader.bench-{os.getpid()}.{slug}"
            ring = Ring.create(name, BENCH, cfg.capacity, consumers=1, policy="block")
            job_args["ring_name"] = name
        elif variant.transport == T_MP_QUEUE:
            channel = ctx.Queue()
        elif variant.transport == T_FASTER_FIFO:
            import faster_fifo
            import faster_fifo_reduction  # noqa: F401 - lets a faster_fifo.Queue travel to spawned children

            channel = faster_fifo.Queue(max_size_bytes=8 * 1024 * 1024)
        elif variant.transport == T_ZMQ:
            tmpdir = tempfile.mkdtemp(prefix="ringtrader-bench-")
            job_args["zmq_addr"] = f"ipc://{tmpdir}/push-pull"
        for role, cpu in (("consumer", cons_cpu), ("producer", prod_cpu)):
            job = Job(variant=variant, cfg=cfg, role=role, cpu=cpu, tsc=tsc, **job_args)
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child_main, args=(job, channel, barrier, w), name=f"bench-{slug}-{role}")
            p.start()
            w.close()
            procs.append(p)
            conns.append(r)
        results = {}
        deadline = time.monotonic() + cfg.timeout_s
        pending = dict(zip(conns, ("consumer", "producer")))
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{variant.name}: no result within {cfg.timeout_s:.0f} s from {sorted(pending.values())}")
            for c in connection.wait(list(pending), timeout=left):
                role = pending.pop(c)
                try:
                    results[role] = c.recv()
                except EOFError:
                    results[role] = {"error": f"{variant.name} {role}: exited without a result"}
        errs = [r["error"] for r in results.values() if "error" in r]
        if errs:
            raise BenchError("\n".join(errs))
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for c in conns:
            c.close()
        if ring is not None:
            ring.close()
            ring.unlink()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        if channel is not None and variant.transport == T_MP_QUEUE:
            channel.close()

    prod, cons = results["producer"], results["consumer"]
    lat = cons["lat_ns"]
    n_tp = n_throughput(cfg, variant.transport)
    return Row(
        name=variant.name,
        transport=variant.transport,
        mode=variant.mode,
        pacer=variant.pacer,
        **latency_stats(lat),
        throughput_per_s=n_tp / ((cons["t1"] - prod["t0"]) / 1e9),
        latency_records=int(len(lat)),
        throughput_records=n_tp,
        interval_us=prod["interval_ns"] / 1000.0,
        errors=int(cons["errors"]),
        negative=int((lat < 0).sum()),
        preemptions=int(prod["nivcsw"] + cons["nivcsw"]),
    )


# --------------------------------------------------------------------------
# Whole run
# --------------------------------------------------------------------------


def cpu_idle_fraction(seconds: float = 0.5) -> float | None:
    """Share of all CPUs idle over ``seconds`` (from /proc/stat): other load before we start."""

    def sample():
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        return vals[3] + vals[4], sum(vals[:8])  # idle + iowait, total without guest time

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_quiet(max_wait_s: float, threshold: float = 0.9, sample_s: float = 1.0) -> float | None:
    """Sample CPU idleness until it reaches ``threshold`` or ``max_wait_s`` passed; returns the last sample.

    On a shared host this lets one run measure every transport in the quiet
    moments between other work, instead of measuring that work.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        idle = cpu_idle_fraction(sample_s)
        if idle is None or idle >= threshold or time.monotonic() >= deadline:
            return idle


def machine_info() -> dict:
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            clocksource = f.read().strip()
    except OSError:
        clocksource = "unknown"

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    import zmq

    prod_cpu, cons_cpu = bench_cpus()
    return {
        **machine(),
        "producer_cpu": prod_cpu,
        "consumer_cpu": cons_cpu,
        "clocksource": clocksource,
        "tsc_invariant": tsc_is_invariant(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "faster_fifo": version("faster-fifo"),
        "cpu_idle_at_start": cpu_idle_fraction(),
    }


@dataclass
class Report:
    machine: dict
    config: dict
    rows: list[Row] = field(default_factory=list)
    clock: str = ""
    tsc_ghz: float | None = None

    def as_dict(self) -> dict:
        return {
            "machine": self.machine,
            "config": self.config,
            "clock": self.clock,
            "tsc_ghz": self.tsc_ghz,
            "reference": REFERENCE,
            "results": [dataclasses.asdict(r) for r in self.rows],
            "targets": targets(self.rows),
        }


def _by_name(rows: list[Row]) -> dict[str, Row]:
    return {r.name: r for r in rows}


def targets(rows: list[Row]) -> list[dict]:
    """The issue's targets against this run: measured, reported, never asserted."""
    by = _by_name(rows)
    out = []

    def add(what, value, limit, ok):
        out.append({"target": what, "measured": value, "limit": limit, "met": bool(ok)})

    ref = by.get(REFERENCE)
    if ref is not None:
        add("numba hop p50 <= 0.3 us", ref.p50_us, 0.3, ref.p50_us <= 0.3)
        add("numba hop p99 <= 2 us", ref.p99_us, 2.0, ref.p99_us <= 2.0)
        add("numba throughput >= 30 M/s", ref.throughput_per_s, 30e6, ref.throughput_per_s >= 30e6)
        for base, factor in (("faster-fifo", 50), ("zmq-ipc", 100)):
            if base in by:
                ratio = by[base].p50_us / ref.p50_us if ref.p50_us > 0 else float("inf")
                add(f"p50 >= {factor}x below {base}", ratio, factor, ratio >= factor)
    py = by.get("ring-python/busy_spin")
    if py is not None:
        add("Python batch API throughput >= 5 M/s", py.throughput_per_s, 5e6, py.throughput_per_s >= 5e6)
    return out


def run_benchmarks(cfg: BenchConfig, log=None) -> Report:
    """Run every configured variant in turn; ratios are against ``REFERENCE`` when it ran."""
    log = log or (lambda msg: None)
    clock = cfg.clock
    tsc = (0, 0, 1.0)
    ghz = None
    if clock == "tsc" and not tsc_is_invariant():
        log("TSC is not invariant on this CPU: numba variants use clock_gettime(CLOCK_MONOTONIC)")
        clock = "monotonic"
        cfg = dataclasses.replace(cfg, clock=clock)
    if clock == "tsc":
        cal = calibrate_tsc(0.2)
        tsc = (cal.tsc0, cal.ns0, cal.ns_per_tick)
        ghz = cal.ghz
    report = Report(machine=machine_info(), config=dataclasses.asdict(cfg), clock=clock, tsc_ghz=ghz)
    for v in VARIANTS:
        if v.name not in cfg.variants:
            continue
        idle = wait_for_quiet(cfg.wait_quiet_s) if cfg.wait_quiet_s > 0 else cpu_idle_fraction(0.2)
        log(f"running {v.name} (CPUs {idle:.0%} idle before) ..." if idle is not None else f"running {v.name} ...")
        t = time.monotonic()
        row = run_variant(v, cfg, tsc)
        row.cpu_idle_before = idle
        log(f"  {v.name}: p50 {row.p50_us:.2f} us, {row.throughput_per_s / 1e6:.2f} M/s ({time.monotonic() - t:.1f} s)")
        report.rows.append(row)
    ref = _by_name(report.rows).get(REFERENCE)
    if ref is not None:
        for r in report.rows:
            r.p50_ratio = r.p50_us / ref.p50_us if ref.p50_us > 0 else None
            r.throughput_ratio = ref.throughput_per_s / r.throughput_per_s if r.throughput_per_s > 0 else None
    return report


def format_table(report: Report) -> str:
    m = report.machine
    lines = [
        f"machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs (allowed {m['allowed_cpus']}), "
        f"kernel {m['kernel']}, clocksource {m['clocksource']}",
        f"         Python {m['python']}, numba {m['numba']}, numpy {m['numpy']}, pyzmq {m['pyzmq']} "
        f"(libzmq {m['libzmq']}), faster-fifo {m['faster_fifo']}",
        f"         load avg at start {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}; CPUs idle at start: "
        + (f"{m['cpu_idle_at_start']:.0%}" if m["cpu_idle_at_start"] is not None else "unknown"),
        f"pinning: producer CPU {m['producer_cpu']}, consumer CPU {m['consumer_cpu']}; numba clock: {report.clock}"
        + (f" ({report.tsc_ghz:.3f} GHz)" if report.tsc_ghz else ""),
        f"latency: 1 record every {report.config['period_ns'] / 1000:g} us, {report.config['n_latency']} records "
        f"after {report.config['n_warmup']} warm-up; throughput: unpaced, batch {report.config['batch']}",
        "",
    ]
    hdr = (f"{'transport':<22} {'mode':<9} {'pace':<5} {'p50_us':>8} {'p90_us':>8} {'p99_us':>8} {'p99.9_us':>9} "
           f"{'max_us':>9} {'M rec/s':>8} {'p50 x ring':>10} {'tput ring x':>11} {'interval':>8} {'err':>4} {'preempt':>7} "
           f"{'idle0':>5}")
    lines += [hdr, "-" * len(hdr)]
    for r in report.rows:
        p50r = f"{r.p50_ratio:.1f}x" if r.p50_ratio is not None else "-"
        tpr = f"{r.throughput_ratio:.1f}x" if r.throughput_ratio is not None else "-"
        lines.append(
            f"{r.name:<22} {r.mode:<9} {r.pacer:<5} {r.p50_us:>8.2f} {r.p90_us:>8.2f} {r.p99_us:>8.2f} "
            f"{r.p999_us:>9.1f} {r.max_us:>9.1f} {r.throughput_per_s / 1e6:>8.2f} {p50r:>10} {tpr:>11} "
            f"{r.interval_us:>6.1f}us {r.errors + r.negative:>4} {r.preemptions:>7} "
            + (f"{r.cpu_idle_before:>5.0%}" if r.cpu_idle_before is not None else f"{'-':>5}")
        )
    lines += [
        "",
        f"p50 x ring: this row's p50 / {REFERENCE}'s; tput ring x: {REFERENCE}'s throughput / this row's.",
        "pace: how the paced producer waits (sleep where its transport has a helper thread on the producer CPU);",
        "interval: achieved mean send interval; err: out-of-sequence/torn records + negative latencies (expect 0);",
        "preempt: involuntary context switches of the two processes (other load on their CPUs; high = noisy run);",
        "idle0: share of all CPUs idle just before the row started (--wait-quiet waits for >= 90%).",
    ]
    disturbed = [r.name for r in report.rows
                 if r.transport in (T_RING_NUMBA, T_RING_PYTHON) and r.preemptions > NOISY_PREEMPTIONS]
    if disturbed:
        lines.append(
            f"WARNING: other load took the benchmark CPUs during {', '.join(disturbed)} (preempt > "
            f"{NOISY_PREEMPTIONS}); their percentiles measure that load, not the transport. Rerun on a quiet host."
        )
    lines += ["", "targets (measured, not asserted):"]
    for t in targets(report.rows):
        lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: measured {t['measured']:.4g}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shortened run (under a minute)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    ap.add_argument("--period-us", type=float, default=20.0, help="pace of the latency run (default 20)")
    ap.add_argument("--n-latency", type=int, help="paced records measured per transport")
    ap.add_argument("--clock", choices=("tsc", "monotonic"), default="tsc", help="clock of the numba variants")
    ap.add_argument("--batch", type=int, default=256, help="records per batch in throughput runs")
    ap.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANT_NAMES)}")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each transport, wait up to S seconds for the CPUs to be >= 90%% idle (shared hosts)")
    return ap.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    kw = dict(QUICK) if args.quick else {}
    kw["period_ns"] = int(args.period_us * 1000)
    kw["clock"] = args.clock
    kw["batch"] = args.batch
    kw["wait_quiet_s"] = args.wait_quiet
    if args.n_latency:
        kw["n_latency"] = args.n_latency
    if args.variants:
        kw["variants"] = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    return BenchConfig(**kw)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"bench_rings: {exc}", file=sys.stderr)
        return 2
    t = time.monotonic()
    try:
        report = run_benchmarks(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except BenchError as exc:
        print(f"bench_rings: failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_table(report))
    print(f"(bench_rings finished in {time.monotonic() - t:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
