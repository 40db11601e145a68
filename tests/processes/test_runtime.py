"""Stage plumbing, in-process: the ring writer, the priority reader, a relay stage, commands, the duty cycle."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from core.config import load_config
from core.latency import LatencySet
from core.records import BOOK_EVENT, EXEC_REPORT, SIDE_FLAT, SIGNAL
from core.strategies import R_TRACE_PROBE
from processes import signal as signal_stage
from processes.runtime import ProcessContext, run_stages
from processes.stage import PriorityReader, RingWriter, Stage, StageContext
from ringbuffers.control import ControlQueue
from ringbuffers.idle import make_idle
from ringbuffers.ring import Ring, segment_name

ROOT = Path(__file__).resolve().parents[2]


class FakeProc:
    """The process side a StageContext leans on; ``stop`` is flipped by the test."""

    def __init__(self, batch: int = 256, env: dict | None = None):
        self.config = load_config(ROOT / "config" / "system.json", env=env or {}, host_cpus=None)
        self.incarnation = 1
        self.process = SimpleNamespace(batch=batch)
        self.latency = LatencySet()
        self.idle = make_idle("backoff", spins=5, yields=1, min_sleep_ns=20_000, max_sleep_ns=200_000)
        self.stop = False
        self.heartbeats = 0
        self.events: list = []

    def should_stop(self) -> bool:
        return self.stop

    def heartbeat(self) -> None:
        self.heartbeats += 1

    def event(self, type, **fields):  # noqa: A002
        self.events.append((type, fields))
        return True


def book_records(n: int, start: int = 1) -> np.ndarray:
    recs = np.zeros(n, BOOK_EVENT)
    recs["recv_ns"] = np.arange(start, start + n) * 10
    recs["in_pub_ns"] = recs["recv_ns"] + 2
    recs["pub_ns"] = recs["recv_ns"] + 5
    recs["symbol"] = 1
    return recs


def test_ring_writer_waits_out_a_full_block_ring_and_loses_nothing(instance):
    ring = Ring.create(segment_name(instance, "signals"), SIGNAL, 16, 1)
    reader = Ring.attach(ring.name, SIGNAL, 0)
    got = []
    done = threading.Event()

    def drain():
        time.sleep(0.3)  # the writer finds the ring full and has to wait
        while not done.is_set() or reader.lag():
            p = reader.poll(5)
            got.append(p.records.copy())
            reader.release()
            time.sleep(0.001)

    proc = FakeProc()
    w = RingWriter(ring, StageContext("signal", proc), scratch=8)
    recs = np.zeros(200, SIGNAL)
    recs["signal_id"] = np.arange(200)
    t = threading.Thread(target=drain, daemon=True)
    try:
        t.start()
        assert w.publish(recs) == 200
        done.set()
        t.join(5)
        out = np.concatenate(got)
        assert out["signal_id"].tolist() == list(range(200))  # whole and in order, across many wraps
        assert w.full_waits > 0 and proc.heartbeats > 0  # it waited, heartbeating
        assert np.all(np.diff(out["pub_ns"]) >= 0) and np.all(out["pub_ns"] > 0)
        assert np.array_equal(recs["pub_ns"], out["pub_ns"])  # the stamps are copied back to the caller
    finally:
        done.set()
        reader.close()
        ring.close()
        ring.unlink()


def test_ring_writer_uses_its_scratch_at_the_wrap_point_and_gives_up_when_stopping(instance):
    ring = Ring.create(segment_name(instance, "signals"), SIGNAL, 8, 1)
    reader = Ring.attach(ring.name, SIGNAL, 0)
    proc = FakeProc()
    w = RingWriter(ring, StageContext("signal", proc), scratch=8)
    try:
        dst, direct = w.claim(6, 1)
        assert direct and len(dst) == 6
        dst["signal_id"] = np.arange(6)
        assert w.commit(dst, True, 6) == 6
        reader.poll(6)
        reader.release()
        # 2 contiguous slots before the wrap, 8 free in all: a claim that needs 4 goes through the scratch
        dst, direct = w.claim(8, 4)
        assert not direct and len(dst) >= 4
        dst["signal_id"][:5] = np.arange(6, 11)
        assert w.commit(dst, False, 5) == 5
        p = reader.poll(8)
        assert p.records["signal_id"].tolist() == [6, 7]  # the part before the wrap...
        reader.release()
        p = reader.poll(8)
        assert p.records["signal_id"].tolist() == [8, 9, 10]  # ...and after it
        reader.release()
        # full and stopping: claim gives up instead of waiting forever, nothing is half-published
        assert w.publish(np.zeros(8, SIGNAL)) == 8
        proc.stop = True
        dst, direct = w.claim(1, 1)
        assert dst is None and w.stopping
        assert w.publish(np.zeros(3, SIGNAL)) == 0 and ring.published == 19
    finally:
        reader.close()
        ring.close()
        ring.unlink()


def test_signal_stage_trace_probe_relays_with_the_trace_and_records_its_hop(instance):
    book = Ring.create(segment_name(instance, "book"), BOOK_EVENT, 64, 1)
    sig = Ring.create(segment_name(instance, "signals"), SIGNAL, 64, 1)
    # the latency profiler's configuration: one trace probe per book record, no decision
    proc = FakeProc(batch=16, env={"RINGTRADER__SIGNAL__STRATEGIES": '[{"name": "probe", "type": "trace_probe"}]'})
    ctx = StageContext("signal", proc)
    ctx.inputs["book"] = Ring.attach(book.name, BOOK_EVENT, 0)
    ctx.outputs["signals"] = Ring.attach(sig.name, SIGNAL, "producer")
    out_reader = Ring.attach(sig.name, SIGNAL, 0)
    try:
        signal_stage.warm(proc.config)
        stage = signal_stage.make_stage(proc.config, ctx)
        recs = book_records(20)
        assert book.publish_batch(recs) == 20
        assert stage.do_work() == 16 and stage.do_work() == 4 and stage.do_work() == 0  # a batch per cycle
        got = out_reader.poll(64).records.copy()
        out_reader.release()
        assert np.array_equal(got["recv_ns"], recs["recv_ns"])
        assert np.array_equal(got["in_pub_ns"], recs["pub_ns"])
        assert np.all(got["pub_ns"] >= got["in_pub_ns"])
        assert got["signal_id"].tolist() == list(range(1, 21))
        assert np.all(got["reason"] == R_TRACE_PROBE) and np.all(got["side"] == SIDE_FLAT)
        assert proc.latency.hop("book->signal").count == 20
        c = stage.counters()
        assert (c["signals"], c["read"], c["signals.probe.trace_probe"]) == (20, 20, 20)
        assert (c["trace_violations"], c["book_lost"], c["signals_full"]) == (0, 0, 0)
        bad = book_records(1, start=100)
        bad["in_pub_ns"] = 50  # before recv_ns: a broken trace is counted, the record still flows
        book.publish_batch(bad)
        assert stage.do_work() == 1 and stage.counters()["trace_violations"] == 1
        # the signals ring (64) is full: the stage waits (idle + heartbeat) and leaves the book records unread
        assert out_reader.lag() == 1
        book.publish_batch(book_records(63, start=200))
        while stage.do_work():
            pass
        assert sig.published == 84 and out_reader.lag() == 64
        book.publish_batch(book_records(5, start=300))
        hb = proc.heartbeats
        assert stage.do_work() == 0 and proc.heartbeats > hb and ctx.inputs["book"].lag() == 5
        assert stage.counters()["signals_full"] == 1
        out_reader.poll(64)
        out_reader.release()
        assert stage.do_work() == 5 and sig.published == 89  # room again: nothing was dropped
    finally:
        for r in list(ctx.inputs.values()) + list(ctx.outputs.values()) + [out_reader]:
            r.close()
        for r in (book, sig):
            r.close()
            r.unlink()


def test_priority_reader_always_empties_the_higher_priority_ring_first(instance):
    rep = Ring.create(segment_name(instance, "reports"), EXEC_REPORT, 64, 1)
    book = Ring.create(segment_name(instance, "book"), BOOK_EVENT, 64, 1)
    r_rep, r_book = Ring.attach(rep.name, EXEC_REPORT, 0), Ring.attach(book.name, BOOK_EVENT, 0)
    try:
        reader = PriorityReader([("reports", r_rep), ("book", r_book)])
        assert reader.poll(10) == (None, None)
        book.publish_batch(book_records(3))
        rep.publish_batch(np.zeros(12, EXEC_REPORT))
        order = []
        while True:
            name, p = reader.poll(5)
            if name is None:
                break
            order.append((name, len(p.records)))
            reader.release()
            if name == "reports" and len(order) == 1:
                rep.publish_batch(np.zeros(2, EXEC_REPORT))  # arrives meanwhile: still ahead of the book
        assert order == [("reports", 5), ("reports", 5), ("reports", 4), ("book", 3)]
    finally:
        for r in (r_rep, r_book, rep, book):
            r.close()
        rep.unlink()
        book.unlink()


def test_duty_cycle_runs_stages_in_order_dispatches_commands_and_drains_inside_the_process(instance):
    cfg = load_config(ROOT / "config" / "system.json", env={}, host_cpus=None)
    cmd, evt = ControlQueue(1 << 14), ControlQueue(1 << 20)
    ctx = ProcessContext("engine", cfg, cmd, evt)
    ring = Ring.create(segment_name(instance, "signals"), SIGNAL, 1024, 1)
    prod, cons = Ring.attach(ring.name, SIGNAL, "producer"), Ring.attach(ring.name, SIGNAL, 0)
    log = []

    class Producer(Stage):
        name = "book"

        def __init__(self):
            self.sent = 0

        def do_work(self):
            if self.sent >= 500:
                return 0
            recs = np.zeros(50, SIGNAL)
            recs["signal_id"] = np.arange(self.sent, self.sent + 50)
            self.sent += prod.publish_batch(recs)
            log.append("book")
            return 50

        def on_command(self, c):
            log.append(("cmd", c["type"]))
            return c["type"] == "resync"

    class Consumer(Stage):
        name = "signal"

        def __init__(self):
            self.ids = []

        def do_work(self):
            p = cons.poll(7)  # slower than the producer: records pile up in the ring
            self.ids.extend(p.records["signal_id"].tolist())
            cons.release()
            if len(p.records):
                log.append("signal")
            return len(p.records)

        def counters(self):
            return {"read": len(self.ids)}

    p, c = Producer(), Consumer()
    try:
        cmd.put({"type": "start"})
        cmd.put({"type": "resync", "symbol": 0, "stage": "book"})
        t = threading.Thread(target=run_stages, args=(ctx, [p, c]), daemon=True)
        t.start()
        deadline = time.monotonic() + 10
        while p.sent < 500 and time.monotonic() < deadline:
            time.sleep(0.01)
        cmd.put({"type": "shutdown"})
        t.join(10)
        assert not t.is_alive()
        assert c.ids == list(range(500))  # the stop drained the ring between the two stages
        assert log[0] == "book" and log[1] == "signal"  # pipeline order within one cycle
        assert ("cmd", "resync") in log
        msgs = []
        while True:
            m = evt.get_many(timeout=0.1)
            if not m:
                break
            msgs.extend(m)
        kinds = [m["type"] for m in msgs]
        assert kinds[0] == "ready" and msgs[0]["stages"] == ["book", "signal", "risk", "execution"]
        hb = [m for m in msgs if m["type"] == "heartbeat"]
        assert hb and hb[0]["stages"]["signal"]["read"] >= 0 and "book" in hb[0]["stages"]
    finally:
        for r in (prod, cons, ring):
            r.close()
        ring.unlink()
        cmd.close()
        evt.close()


def test_commands_are_split_into_shutdown_and_the_rest(instance):
    cfg = load_config(ROOT / "config" / "system.json", env={}, host_cpus=None)
    cmd, evt = ControlQueue(1 << 14), ControlQueue(1 << 16)
    ctx = ProcessContext("feed", cfg, cmd, evt)
    try:
        cmd.put({"type": "resync", "symbol": 1})
        assert ctx.commands() == [{"type": "resync", "symbol": 1}]
        assert not ctx.should_stop()
        cmd.put({"type": "shutdown"})
        ctx._next_cmd = 0  # the check is rate-limited; force this one
        assert ctx.should_stop()
        ctx.heartbeat(published=3)
        ev = evt.get(timeout=1)
        assert ev["type"] == "heartbeat" and ev["stats"] == {"published": 3}
    finally:
        cmd.close()
        evt.close()
