"""Idle strategies report idle time and back off in stages; control queues carry JSON across processes."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from ringbuffers.control import ControlQueue
from ringbuffers.idle import Backoff, BusySpin, make_idle


def test_backoff_goes_spin_then_yield_then_sleep_and_resets_on_work():
    b = Backoff(spins=3, yields=2, min_sleep_ns=50_000, max_sleep_ns=200_000)
    for _ in range(5):
        b.idle(0)
    assert b.sleeps == 0
    b.idle(0)
    assert b.sleeps == 1
    b.idle(0)
    b.idle(0)
    assert b._sleep_ns == 200_000  # doubled, capped
    b.idle(1)
    assert b._count == 0 and b._sleep_ns == 50_000


def test_idle_time_is_accounted_from_first_empty_poll_to_next_work():
    for s in (BusySpin(), Backoff(spins=0, yields=0, min_sleep_ns=1_000_000, max_sleep_ns=1_000_000)):
        s.idle(0)
        time.sleep(0.02)
        s.idle(0)
        s.idle(5)
        assert 0.02e9 <= s.idle_ns < 1e9
        busy = s.idle_ns
        s.idle(3)  # work without idling in between adds nothing
        assert s.idle_ns == busy


def test_make_idle_rejects_unknown_and_bad_thresholds():
    with pytest.raises(ValueError, match="unknown idle strategy 'nap'"):
        make_idle("nap")
    with pytest.raises(ValueError, match="min_sleep_ns"):
        make_idle("backoff", spins=1, yields=1, min_sleep_ns=10, max_sleep_ns=5)


def _echo(inbox: ControlQueue, outbox: ControlQueue):
    while True:
        msg = inbox.get(timeout=5)
        if msg is None or msg["type"] == "shutdown":
            outbox.put({"type": "bye"})
            return
        outbox.put({"type": "echo", "got": msg})


def test_control_queue_round_trips_json_between_spawned_processes():
    ctx = mp.get_context("spawn")
    inbox, outbox = ControlQueue(), ControlQueue()
    p = ctx.Process(target=_echo, args=(inbox, outbox))
    p.start()
    try:
        inbox.put({"type": "resync", "symbol": "BTCUSDT", "n": 3, "x": 1.5})
        inbox.put({"type": "shutdown"})
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 2 and time.monotonic() < deadline:
            got += outbox.get_many(timeout=0.5)
        assert got == [{"type": "echo", "got": {"type": "resync", "symbol": "BTCUSDT", "n": 3, "x": 1.5}},
                       {"type": "bye"}]
    finally:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()


def test_full_control_queue_returns_false_instead_of_raising():
    q = ControlQueue(max_size_bytes=256)
    results = [q.put_nowait({"type": "log", "msg": "x" * 50}) for _ in range(20)]
    assert results[0] is True and results[-1] is False


def _rss_shmem_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssShmem:"):
                return int(line.split()[1])
    return 0


def _send_a_lap(q: ControlQueue, out: ControlQueue, total_bytes: int) -> None:
    before = _rss_shmem_kb()
    msg = {"type": "heartbeat", "stats": {"pad": "x" * 400}}
    sent = 0
    while sent < total_bytes:
        if q.put_nowait(msg):
            sent += 420
        else:
            time.sleep(0.001)
    out.put({"type": "rss", "before_kb": before, "after_kb": _rss_shmem_kb()})


def test_a_spawned_sender_maps_the_whole_queue_up_front_so_its_rss_stays_flat():
    # A receiving process maps the shared buffer at unpickling (ControlQueue.prefault), not
    # page by page as its messages advance through it: otherwise a worker's RSS climbs by
    # every byte it sends until the 4 MB event queue has wrapped, which a soak reads as a leak.
    size = 2 << 20
    q, out = ControlQueue(max_size_bytes=size), ControlQueue()
    assert q.prefault() >= size // 4096
    p = mp.get_context("spawn").Process(target=_send_a_lap, args=(q, out, 2 * size))
    p.start()
    try:
        report, deadline = None, time.monotonic() + 60
        while report is None and time.monotonic() < deadline:
            q.get_many(timeout=0.01, max_messages=10_000)
            report = out.get(timeout=0)
        assert report is not None, "sender never reported"
        assert report["before_kb"] >= size // 1024, report  # the whole buffer is resident at start
        assert report["after_kb"] - report["before_kb"] < 256, report  # and nothing is added by a full lap
    finally:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
