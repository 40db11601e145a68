"""Sleeping consumers: FUTEX_WAIT on the publish cursor, woken by every producer path.

A lost wake-up shows as a wait that lasts its whole (long) time-out, so the
tests give every wait 5 s and require each to end well before that: a
condition on which event ended the wait, not a latency measurement.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import numba as nb
import numpy as np
import pytest

from core.records import BENCH
from ringbuffers.idle import Backoff, Futex, make_idle
from ringbuffers.ring import (
    W_WAITING,
    C_WAITS,
    Ring,
    consumer_word,
    nb_notify,
    nb_publish_copy,
    segment_name,
    warm_notify_kernels,
)

LONG_NS = 5_000_000_000  # a lost wake-up would sleep this long
WELL_BEFORE_S = 2.5


def _record(seq: int) -> np.ndarray:
    r = np.zeros(1, BENCH)
    r["seq"] = seq
    return r


@nb.njit(cache=True)
def _kernel_publish_and_notify(ctrl, slots, records):
    """A worker-style kernel: publish, then notify from inside numba."""
    n = nb_publish_copy(ctrl, slots, records)
    nb_notify(ctrl)
    return n


def _sleeper(name, rounds, out):
    """Consumer process: ``rounds`` times, wait (5 s cap) for a record, report (avail, seconds), read it."""
    ring = Ring.attach(name, BENCH, 0)
    warm_notify_kernels()  # load the kernels before the first timed wait
    try:
        for _ in range(rounds):
            t0 = time.monotonic()
            avail = ring.wait(LONG_NS)
            out.put((avail, time.monotonic() - t0))
            ring.poll(16)
            ring.release()
    finally:
        ring.close()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_until_asleep(ring: Ring, pid: int, waits: int, deadline_s: float = 60.0) -> None:
    """Until consumer 0 (process ``pid``) has entered its ``waits``-th futex wait and sleeps in the kernel."""
    end = time.monotonic() + deadline_s
    while ring.ctrl[consumer_word(0, C_WAITS)] < waits or _state(pid) != "S":
        assert time.monotonic() < end, "the consumer process never went to sleep"
        time.sleep(0.005)


def _publish_one(ring: Ring, seq: int) -> None:
    ring.publish(_record(seq)[0])


def _publish_batch(ring: Ring, seq: int) -> None:
    assert ring.publish_batch(_record(seq)) == 1


def _claim_commit(ring: Ring, seq: int) -> None:
    slots = ring.claim(1)
    slots["seq"] = seq
    ring.commit()


def _publish_wait(ring: Ring, seq: int) -> None:
    ring.publish_wait(_record(seq)[0], Backoff(), timeout_s=5)


def _numba_then_notify(ring: Ring, seq: int) -> None:
    nb_publish_copy(ring.ctrl, ring.slots, _record(seq))  # a kernel that does not notify ...
    ring.notify()  # ... so its Python wrapper does


def _numba_nb_notify(ring: Ring, seq: int) -> None:
    _kernel_publish_and_notify(ring.ctrl, ring.slots, _record(seq))


PRODUCER_PATHS = [_publish_one, _publish_batch, _claim_commit, _publish_wait, _numba_then_notify, _numba_nb_notify]


def test_every_producer_path_wakes_a_consumer_asleep_in_another_process(instance):
    name = segment_name(instance, "wake")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with Ring.create(name, BENCH, 64, 1) as prod:
        child = ctx.Process(target=_sleeper, args=(name, len(PRODUCER_PATHS), out))
        child.start()
        try:
            for i, path in enumerate(PRODUCER_PATHS):
                _wait_until_asleep(prod, child.pid, i + 1)
                assert prod.ctrl[W_WAITING] == 1
                path(prod, i)
                avail, waited_s = out.get(timeout=30)
                assert avail >= 1, f"{path.__name__}: the wait returned without data"
                assert waited_s < WELL_BEFORE_S, f"{path.__name__}: woken by the time-out, not the publish"
            assert prod.wakes == len(PRODUCER_PATHS)  # one FUTEX_WAKE per sleep, not per record
        finally:
            child.join(30)
            if child.is_alive():
                child.kill()
    assert child.exitcode == 0


def _ponger(ping_name, pong_name, n, out):
    ping = Ring.attach(ping_name, BENCH, 0)
    pong = Ring.attach(pong_name, BENCH, "producer")
    idle = Futex(rings=[ping], spins=0, yields=0, max_sleep_ns=LONG_NS)  # sleep at every empty poll
    worst = 0.0
    got = 0
    t0 = time.monotonic()
    while got < n:
        p = ping.poll(16)
        k = len(p.records)
        if k:
            seq = int(p.records[k - 1]["seq"])
            ping.release()
            got += k
            pong.publish(_record(seq)[0])
            now = time.monotonic()
            worst = max(worst, now - t0)
            t0 = now
        else:
            ping.release()
        idle.idle(k)
    out.put((got, worst, idle.waits))
    ping.close()
    pong.close()


def test_ping_pong_of_10k_messages_between_sleeping_processes_loses_no_wake_up(instance):
    n = 10_000
    ping_name, pong_name = segment_name(instance, "ping"), segment_name(instance, "pong")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with Ring.create(ping_name, BENCH, 64, 1) as ping, Ring.create(pong_name, BENCH, 64, 1):
        pong = Ring.attach(pong_name, BENCH, 0)
        child = ctx.Process(target=_ponger, args=(ping_name, pong_name, n, out))
        child.start()
        try:
            idle = Futex(rings=[pong], spins=0, yields=0, max_sleep_ns=LONG_NS)
            worst = 0.0
            for seq in range(n):
                t0 = time.monotonic()
                ping.publish(_record(seq)[0])
                while True:
                    p = pong.poll(16)
                    k = len(p.records)
                    seen = int(p.records[k - 1]["seq"]) if k else -1
                    pong.release()
                    idle.idle(k)
                    if k:
                        break
                assert seen == seq
                worst = max(worst, time.monotonic() - t0)
            got, child_worst, child_waits = out.get(timeout=60)
        finally:
            child.join(30)
            if child.is_alive():
                child.kill()
            pong.close()
        assert got == n
        # Each side slept on most messages, and no round trip waited for a time-out.
        assert idle.waits > n // 2 and child_waits > n // 2
        assert worst < WELL_BEFORE_S and child_worst < WELL_BEFORE_S
        assert idle.timeouts == 0
    assert child.exitcode == 0


def test_publishing_with_no_consumer_asleep_makes_no_wake_syscall(instance, monkeypatch):
    import ringbuffers.ring as ring_mod

    calls = []
    real = ring_mod.nb_notify
    monkeypatch.setattr(ring_mod, "nb_notify", lambda ctrl: calls.append(1) or real(ctrl))
    with Ring.create(segment_name(instance, "quiet"), BENCH, 1024, 1) as prod:
        cons = Ring.attach(prod.name, BENCH, 0)
        for seq in range(300):
            _publish_one(prod, seq)
            _publish_batch(prod, seq)
            _claim_commit(prod, seq)
            assert prod.notify() is False
            assert cons.wait(LONG_NS) > 0  # data is there: returns without announcing or sleeping
            cons.poll(16)
            cons.release()
        assert _kernel_publish_and_notify(prod.ctrl, prod.slots, _record(1)) == 1
        assert calls == [] and prod.wakes == 0 and cons.waits == 0 and prod.ctrl[W_WAITING] == 0
        cons.close()


def test_notify_clears_the_announcement_and_wakes_once(instance):
    with Ring.create(segment_name(instance, "flag"), BENCH, 16, 1) as prod:
        prod.ctrl[W_WAITING] = 1  # as a consumer going to sleep leaves it
        assert prod.notify() is True
        assert prod.ctrl[W_WAITING] == 0 and prod.wakes == 1
        _publish_one(prod, 0)  # nobody announced since: no second syscall
        assert prod.wakes == 1


def test_wait_times_out_with_nothing_published(instance):
    with Ring.create(segment_name(instance, "idle"), BENCH, 16, 1) as prod:
        cons = Ring.attach(prod.name, BENCH, 0)
        t0 = time.monotonic()
        assert cons.wait(30_000_000) == 0
        assert time.monotonic() - t0 >= 0.015  # it slept rather than returning at once
        assert cons.waits == 1 and prod.ctrl[W_WAITING] == 1  # the producer clears it at its next publish
        _publish_one(prod, 0)
        assert prod.ctrl[W_WAITING] == 0 and cons.wait(30_000_000) == 1
        cons.close()


def test_futex_idle_spins_yields_then_waits_and_counts_time_outs(instance):
    with Ring.create(segment_name(instance, "fi"), BENCH, 16, 1) as prod:
        cons = Ring.attach(prod.name, BENCH, 0)
        idle = make_idle("futex", rings=[cons], spins=2, yields=1, max_sleep_ns=1_000_000)
        assert isinstance(idle, Futex) and idle.mode == "futex"
        for _ in range(3):
            idle.idle(0)
        assert idle.waits == 0
        idle.idle(0)
        assert idle.waits == 1 and idle.timeouts == 1 and cons.waits == 1
        _publish_one(prod, 0)
        idle.idle(0)  # data is there: the wait returns at once
        assert idle.waits == 2 and idle.timeouts == 1
        idle.idle(1)
        assert idle._count == 0 and idle.idle_ns > 0
        cons.close()


def test_futex_idle_without_one_ring_falls_back_to_sleeping(instance):
    with Ring.create(segment_name(instance, "fa"), BENCH, 16, 1) as a, Ring.create(segment_name(instance, "fb"), BENCH, 16, 1) as b:
        ca, cb = Ring.attach(a.name, BENCH, 0), Ring.attach(b.name, BENCH, 0)
        two = Futex(rings=[ca, cb], spins=0, yields=0, min_sleep_ns=10_000, max_sleep_ns=40_000)
        assert two.mode == "backoff"
        for _ in range(4):
            two.idle(0)
        assert two.sleeps == 4 and two.waits == 0 and two._sleep_ns == 40_000  # doubled, capped
        none = Futex(rings=[], spins=0, yields=0, max_sleep_ns=40_000)
        none.idle(0)
        assert none.mode == "sleep" and none.sleeps == 1 and none._sleep_ns == 40_000
        with pytest.raises(ValueError, match="consumer handles"):
            Futex(rings=[a])  # the producer handle: nothing to wait for
        ca.close()
        cb.close()
