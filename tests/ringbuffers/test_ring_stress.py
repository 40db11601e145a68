"""Multi-process stress: one producer, three consumers, each in its own process.

10 million BENCH records carry a sequence number, a payload derived from it
and a checksum. Under ``block`` every consumer must see every record exactly
once, in order, intact. Under ``overwrite`` a deliberately slowed consumer's
lost counts plus the records it saw must add up exactly to the records
published, with every record it saw intact and in increasing order.
Producer and consumers are numba loops over the ring's own kernels; when a
loop finds nothing to do it returns to Python, which yields the CPU (four
processes share two cores here).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numba as nb
import numpy as np
import pytest

from core.records import BENCH
from ringbuffers.ring import (
    FULL,
    H_CAPACITY,
    Ring,
    nb_poll_copy,
    nb_publish_begin,
    nb_publish_end,
    segment_name,
)

N_RECORDS = 10_000_000
GOLDEN = np.int64(-7046029254386353131)  # 0x9E3779B97F4A7C15 as int64


@nb.njit(cache=True)
def _fill(slots, seq, n, mask):
    for k in range(n):
        s = seq + k
        r = slots[(s) & mask]
        r.seq = s
        c = s
        for j in range(4):
            v = s * GOLDEN + j
            r.payload[j] = v
            c ^= v
        r.checksum = c


@nb.njit(cache=True)
def _produce(ctrl, slots, start, stop, batch):
    """Publish seq start..stop-1 in batches; returns the next seq (stops early when full)."""
    mask = ctrl[H_CAPACITY] - 1
    seq = start
    while seq < stop:
        n = min(batch, stop - seq)
        got = nb_publish_begin(ctrl, n)
        if got == FULL:
            return seq
        _fill(slots, got, n, mask)
        nb_publish_end(ctrl, got + n)
        seq = got + n
    return seq


@nb.njit(cache=True)
def _check(out, n, expect, last_seen):
    """Verify records; returns (bad_count, next_expected, last_seen)."""
    bad = 0
    for k in range(n):
        r = out[k]
        c = r.seq
        for j in range(4):
            if r.payload[j] != r.seq * GOLDEN + j:
                bad += 1
            c ^= r.payload[j]
        if c != r.checksum:
            bad += 1
        if expect >= 0 and r.seq != expect:
            bad += 1
        if r.seq <= last_seen:
            bad += 1
        last_seen = r.seq
        expect = r.seq + 1 if expect >= 0 else -1
    return bad, expect, last_seen


def producer_main(name, total, batch, done_flag):
    ring = Ring.attach(name, BENCH, "producer")
    seq = 0
    while seq < total:
        nxt = _produce(ring.ctrl, ring.slots, seq, total, batch)
        if nxt == seq:
            os.sched_yield()
        seq = nxt
    done_flag.value = 1
    ring.close()


def consumer_main(name, index, total, strict, delay_s, result_q):
    ring = Ring.attach(name, BENCH, index)
    out = np.zeros(4096 if not delay_s else 64, BENCH)
    expect = 0 if strict else -1
    last_seen = -1
    seen = lost = bad = 0
    while seen + lost < total:
        n, lapped = nb_poll_copy(ring.ctrl, ring.slots, index, out)
        lost += lapped
        if n == 0:
            os.sched_yield()
            continue
        b, expect, last_seen = _check(out, n, expect, last_seen)
        bad += b
        seen += n
        if delay_s:
            time.sleep(delay_s)
    stats = ring.stats()
    result_q.put({"index": index, "seen": seen, "lost": lost, "bad": bad, "last": int(last_seen),
                  "ring_lost": stats.lost[index], "lapped": stats.lapped[index]})
    ring.close()


def run_stress(instance, policy, total, delays, capacity=1 << 14, batch=256):
    ctx = mp.get_context("spawn")
    name = segment_name(instance, f"stress-{policy}")
    owner = Ring.create(name, BENCH, capacity, len(delays), policy)
    results = ctx.Queue()
    done = ctx.Value("i", 0)
    procs = [ctx.Process(target=consumer_main, args=(name, i, total, policy == "block", d, results))
             for i, d in enumerate(delays)]
    procs.append(ctx.Process(target=producer_main, args=(name, total, batch, done)))
    try:
        for p in procs:
            p.start()
        got = [results.get(timeout=240) for _ in delays]
        for p in procs:
            p.join(timeout=30)
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        assert owner.published == total
        return sorted(got, key=lambda r: r["index"]), owner.stats()
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        owner.close()
        owner.unlink()


@pytest.mark.slow
def test_block_every_consumer_sees_every_record_once_in_order_intact(instance):
    results, stats = run_stress(instance, "block", N_RECORDS, delays=[0, 0, 0])
    for r in results:
        assert r["bad"] == 0
        assert r["lost"] == 0 and r["ring_lost"] == 0
        assert r["seen"] == N_RECORDS
        assert r["last"] == N_RECORDS - 1
    assert stats.consumed == (N_RECORDS,) * 3


@pytest.mark.slow
def test_overwrite_slow_consumer_lost_plus_seen_equals_published(instance):
    total = 2_000_000
    results, stats = run_stress(instance, "overwrite", total, delays=[0, 0, 0.0005], capacity=1 << 12)
    slow = results[2]
    assert slow["lost"] > 0, "the slowed consumer was expected to be lapped"
    assert slow["lapped"] > 0
    for r in results:
        assert r["bad"] == 0, r
        assert r["seen"] + r["lost"] == total, r
        assert r["ring_lost"] == r["lost"]
