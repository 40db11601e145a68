"""The real book worker in its own process: valid tops, resync on reconnect / gap / lap, bars on time.

Each test creates the ``md`` and ``book`` rings itself, spawns
``processes.runtime.worker_main("book", ...)`` exactly as the supervisor does
(spawn start method, control queues), plays the feed by publishing MD_EVENT
records, and reads the ``book`` ring as its first consumer.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from core.book_sync import REASON_GAP, REASON_LAPPED, REASON_RECONNECT
from core.book_worker_kernels import md_diff, md_snapshot, md_status, md_trade
from core.config import parse_config
from core.fixedpoint import to_fixed
from core.records import (
    BK_BAR,
    BK_DEPTH,
    BK_TOP,
    BK_TRADE,
    BOOK_EVENT,
    BOOK_INVALID,
    BOOK_VALID,
    MD_EVENT,
    STATUS_RECONNECTED,
)
from processes.runtime import worker_main
from ringbuffers.control import ControlQueue
from ringbuffers.ring import Ring, segment_name

ROOT = Path(__file__).resolve().parents[2]
F = to_fixed


def _config(instance: str, md_capacity: int, md_policy: str):
    d = json.loads((ROOT / "config" / "system.json").read_text())
    d["instance"] = instance
    proto = {k: v for k, v in d["placement"]["engine"].items() if k != "stages"}
    # the book stage alone in its process: the test is its feed and its consumer
    d["placement"] = {st: {**proto, "stages": [st]} for st in ("feed", "book", "signal", "risk", "execution")}
    d["placement"]["simulator"] = {"cpus": proto["cpus"], "enabled": False}
    d["rings"]["md"].update(capacity=md_capacity, policy=md_policy)
    d["rings"]["book"]["capacity"] = 4096
    d["book"] = {"bar_watermark_ms": 100, "depth_throttle_ms": 0}
    d["supervisor"]["heartbeat_interval_ms"] = 50
    return parse_config(d, host_cpus=None)


class BookProc:
    """A spawned book worker with its rings; the test is its feed and its first book consumer."""

    def __init__(self, instance: str, md_capacity: int = 4096, md_policy: str = "block"):
        self.cfg = _config(instance, md_capacity, md_policy)
        self.md = Ring.create(segment_name(instance, "md"), MD_EVENT, md_capacity, 1, md_policy)
        self.book = Ring.create(segment_name(instance, "book"), BOOK_EVENT, 4096, 3, "block")
        self.reader = Ring.attach(self.book.name, BOOK_EVENT, 0)
        self.cmd, self.evt = ControlQueue(1 << 16), ControlQueue(4 << 20)
        self.proc = mp.get_context("spawn").Process(target=worker_main,
                                                    args=("book", self.cfg, self.cmd, self.evt, 1))
        self.got = np.zeros(0, BOOK_EVENT)
        self.events: list[dict] = []
        self.proc.start()
        self.wait_event(lambda m: m["type"] == "ready", 60)
        self.cmd.put({"type": "start"})

    # -- the feed side --------------------------------------------------------

    def publish(self, recs: np.ndarray) -> np.ndarray:
        recs = recs.copy()
        now = time.monotonic_ns()
        recs["recv_ns"] = now
        recs["pub_ns"] = now + 1
        assert self.md.publish_batch(recs) == len(recs)
        return recs

    # -- what the worker says ---------------------------------------------------

    def read_book(self) -> None:
        while True:
            p = self.reader.poll(1024)
            if not len(p.records):
                self.reader.release()
                return
            self.got = np.concatenate([self.got, p.records.copy()])
            self.reader.release()

    def wait_book(self, pred, timeout: float = 10.0) -> np.ndarray:
        """Wait until ``pred(all book events so far)`` is true; returns those events."""
        deadline = time.monotonic() + timeout
        while True:
            self.read_book()
            if pred(self.got):
                return self.got
            last = [(int(e["symbol"]), int(e["kind"]), int(e["state"])) for e in self.got[-8:]]
            assert time.monotonic() < deadline, f"book events never matched; last (symbol, kind, state): {last}"
            time.sleep(0.01)

    def pump(self) -> None:
        self.events.extend(self.evt.get_many(timeout=0))

    def wait_event(self, pred, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            self.pump()
            for m in self.events[seen:]:
                if m.get("type") == "log" and m.get("level") == "ERROR":
                    raise AssertionError(f"book worker error: {m.get('msg')}\n{m.get('exc', '')}")
                if pred(m):
                    return m
            seen = len(self.events)
            assert time.monotonic() < deadline, f"event not seen; last: {self.events[-5:]}"
            time.sleep(0.01)

    def resyncs(self) -> list[dict]:
        self.pump()
        return [m for m in self.events if m["type"] == "resync"]

    def stop(self) -> dict:
        """Orderly shutdown; returns the final counters/latency report."""
        self.cmd.put({"type": "shutdown"})
        final = self.wait_event(lambda m: m["type"] == "final", 15)
        self.proc.join(10)
        assert self.proc.exitcode == 0
        final["stats"] = final["stages"]["book"]  # the book stage's counters
        return final

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.reader.close()
        for r in (self.md, self.book):
            r.unlink()
            r.close()
        self.cmd.close()
        self.evt.close()


@pytest.fixture
def worker(instance):
    procs = []

    def start(**kw) -> BookProc:
        procs.append(BookProc(instance, **kw))
        return procs[-1]

    yield start
    for p in procs:
        p.close()


def tops(ev, sym):
    return ev[(ev["kind"] == BK_TOP) & (ev["symbol"] == sym)]


def reason(top) -> int:
    return int(top["flags"]) >> 8


def test_snapshot_gives_valid_tops_reconnect_and_gap_invalidate_and_ask_the_feed_for_a_resync(worker):
    w = worker()
    # A diff that arrives before the snapshot is buffered, then bridges it (U=101 <= L+1=104 <= u=105).
    sent = w.publish(np.concatenate([
        md_diff(0, 101, 105, bids=[(F("100.00"), F("1"))]),
        md_snapshot(0, 103, bids=[(F("99.99"), F("2")), (F("99.98"), F("1"))],
                    asks=[(F("100.01"), F("1.5")), (F("100.02"), F("3"))]),
        md_diff(0, 106, 106, asks=[(F("100.01"), 0)]),
        md_snapshot(1, 7, bids=[(F("5.00"), F("1"))], asks=[(F("5.01"), F("1"))]),  # symbol 1 stays untouched
        md_diff(1, 8, 8, bids=[(F("5.00"), F("2"))]),
    ]))
    ev = w.wait_book(lambda e: len(tops(e, 0)) and tops(e, 0)[-1]["top_ask_px"] == F("100.02"))
    top = tops(ev, 0)[-1]
    assert top["state"] == BOOK_VALID
    assert (top["top_bid_px"], top["top_bid_qty"], top["top_ask_px"], top["top_ask_qty"]) == (
        F("100.00"), F("1"), F("100.02"), F("3"))
    assert np.all(tops(ev, 0)["state"] == BOOK_VALID)  # nothing was ever published as valid before the bridge
    depth = ev[(ev["kind"] == BK_DEPTH) & (ev["symbol"] == 0)][-1]
    assert list(depth["d_bid_px"][:3]) == [F("100.00"), F("99.99"), F("99.98")]
    assert list(depth["d_ask_px"][:2]) == [F("100.02"), 0] and depth["state"] == BOOK_VALID
    # trace: the md record's stamps travel; the book's pub_ns is stamped at publish
    assert top["recv_ns"] == sent[-1]["recv_ns"] and top["in_pub_ns"] == sent[-1]["pub_ns"]
    assert top["pub_ns"] >= top["in_pub_ns"]
    assert not w.resyncs()  # the first snapshot comes from the feed by itself

    # the feed reconnected: the book is INVALID at once and a resync goes out
    w.publish(md_status(0, STATUS_RECONNECTED))
    ev = w.wait_book(lambda e: tops(e, 0)[-1]["state"] == BOOK_INVALID)
    assert reason(tops(ev, 0)[-1]) == REASON_RECONNECT
    req = w.wait_event(lambda m: m["type"] == "resync")
    assert (req["symbol"], req["reason"]) == (0, "reconnect")

    # diffs before the new snapshot stay invalid; the snapshot + bridging diff make it VALID again
    n_before = len(w.got)
    w.publish(md_diff(0, 200, 201, bids=[(F("100.05"), F("1"))]))
    time.sleep(0.2)
    w.read_book()
    assert not np.any(tops(w.got[n_before:], 0)["state"] == BOOK_VALID)
    w.publish(md_snapshot(0, 200, bids=[(F("100.03"), F("1"))], asks=[(F("100.06"), F("2"))]))
    ev = w.wait_book(lambda e: tops(e, 0)[-1]["state"] == BOOK_VALID)
    top = tops(ev, 0)[-1]
    assert (top["top_bid_px"], top["top_bid_qty"], top["top_ask_px"], top["top_ask_qty"]) == (
        F("100.05"), F("1"), F("100.06"), F("2"))
    assert top["last_update_id"] == 201

    # a sequence gap (U=210 after u=201): INVALID, and a second resync request
    w.publish(md_diff(0, 210, 210, asks=[(F("100.07"), F("1"))]))
    ev = w.wait_book(lambda e: tops(e, 0)[-1]["state"] == BOOK_INVALID)
    assert reason(tops(ev, 0)[-1]) == REASON_GAP
    req = w.wait_event(lambda m: m["type"] == "resync" and m["reason"] == "gap")
    assert req["symbol"] == 0 and len(w.resyncs()) == 2

    final = w.stop()
    w.read_book()
    s = final["stats"]
    assert (s["reconnects"], s["chain_breaks"], s["snapshots_applied"], s["resyncs_requested"]) == (1, 1, 3, 2)
    assert s["books_valid"] == 1 and tops(w.got, 1)[-1]["state"] == BOOK_VALID  # the gap invalidated symbol 0 only
    assert s["tops"] == len(w.got[w.got["kind"] == BK_TOP]) and s["depth_snapshots"] >= 3
    hop = final["latency"]["md->book"]  # one sample per book event, all of them caused by an md record here
    assert hop["n"] == len(w.got) and hop["lo"] >= 0


def test_trades_across_a_minute_close_bars_with_exact_ohlcv_and_the_timer_closes_the_last_one(worker):
    w = worker()
    m = 1_700_000_040_000  # a minute boundary (exchange ms)
    w.publish(np.concatenate([
        md_trade(1, 1, F("100"), F("1"), m - 1500),
        md_trade(1, 2, F("103"), F("2"), m - 800, buyer_maker=True),
        md_trade(1, 3, F("99"), F("1.5"), m - 300),
        md_trade(1, 4, F("101"), F("1"), m + 200),  # opens the next minute: the first one closes now
    ]))

    def bars(e, iv):
        return e[(e["kind"] == BK_BAR) & (e["symbol"] == 1) & (e["bar_interval_ms"] == iv)]

    ev = w.wait_book(lambda e: len(bars(e, 60_000)) == 1)
    b = bars(ev, 60_000)[0]
    assert (b["bar_open_ms"], b["bar_close_ms"]) == (m - 60_000, m - 1)
    assert (b["bar_open"], b["bar_high"], b["bar_low"], b["bar_close"]) == (F("100"), F("103"), F("99"), F("99"))
    assert (b["bar_volume"], b["bar_quote_volume"], b["bar_trades"]) == (F("4.5"), F("454.5"), 3)
    assert (b["bar_taker_buy_base"], b["bar_first_trade_id"], b["bar_last_trade_id"]) == (F("2.5"), 1, 3)
    trades = ev[ev["kind"] == BK_TRADE]
    assert list(trades["tr_first_id"]) == [1, 2, 3, 4] and list(trades["tr_px"]) == [F(x) for x in
                                                                                    ("100", "103", "99", "101")]
    # the minute bar is published before the trade that closed it
    i_bar = np.flatnonzero((ev["kind"] == BK_BAR) & (ev["bar_interval_ms"] == 60_000))[0]
    i_trade = np.flatnonzero((ev["kind"] == BK_TRADE) & (ev["tr_first_id"] == 4))[0]
    assert i_bar < i_trade
    one_s = bars(ev, 1_000)
    assert [(x["bar_open_ms"], x["bar_trades"]) for x in one_s] == [(m - 2000, 1), (m - 1000, 2)]

    # No trade follows m + 200: the 1 s bar [m, m+999] still closes, by estimated exchange time + watermark.
    ev = w.wait_book(lambda e: len(bars(e, 1_000)) >= 3, timeout=5)
    last = bars(ev, 1_000)[2]
    assert (last["bar_open_ms"], last["bar_close_ms"], last["bar_trades"]) == (m, m + 999, 1)
    assert (last["bar_open"], last["bar_close"], last["bar_volume"]) == (F("101"), F("101"), F("1"))
    assert last["in_pub_ns"] == 0  # closed by the timer, not by an md record
    s = w.stop()["stats"]
    assert s["bars_closed"] == len(w.got[w.got["kind"] == BK_BAR]) >= 4 and s["trades"] == 4


def test_lapped_md_ring_invalidates_every_book_asks_for_resyncs_and_recovers_after_snapshots(worker):
    w = worker(md_capacity=64, md_policy="overwrite")
    w.publish(np.concatenate([
        md_snapshot(0, 100, bids=[(F("10.00"), F("1"))], asks=[(F("10.01"), F("1"))]),
        md_diff(0, 101, 101, bids=[(F("10.00"), F("2"))]),
        md_snapshot(1, 50, bids=[(F("20.00"), F("1"))], asks=[(F("20.01"), F("1"))]),
        md_diff(1, 51, 51, asks=[(F("20.01"), F("3"))]),
    ]))
    w.wait_book(lambda e: len(tops(e, 0)) and len(tops(e, 1)) and tops(e, 0)[-1]["state"] == BOOK_VALID
                and tops(e, 1)[-1]["state"] == BOOK_VALID)

    deadline = time.monotonic() + 5
    while w.md.stats().consumed[0] != w.md.published:  # the worker released everything it read
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # The worker is descheduled while the feed runs 200 records (> 64 slots) ahead of it.
    os.kill(w.proc.pid, signal.SIGSTOP)
    try:
        w.publish(np.concatenate([md_diff(0, u, u, bids=[(F("10.00"), F("3"))]) for u in range(102, 302)]))
    finally:
        os.kill(w.proc.pid, signal.SIGCONT)
    ev = w.wait_book(lambda e: tops(e, 0)[-1]["state"] == BOOK_INVALID and tops(e, 1)[-1]["state"] == BOOK_INVALID)
    assert reason(tops(ev, 0)[-1]) == REASON_LAPPED and reason(tops(ev, 1)[-1]) == REASON_LAPPED
    w.wait_event(lambda m: m["type"] == "resync" and m["symbol"] == 1)
    assert sorted((m["symbol"], m["reason"]) for m in w.resyncs()) == [(0, "lapped"), (1, "lapped")]

    # fresh snapshots (newer than what survived in the ring) and bridging diffs: VALID again
    w.publish(np.concatenate([
        md_snapshot(0, 301, bids=[(F("10.02"), F("1"))], asks=[(F("10.03"), F("1"))]),
        md_diff(0, 302, 302, bids=[(F("10.02"), F("4"))]),
        md_snapshot(1, 60, bids=[(F("20.05"), F("1"))], asks=[(F("20.06"), F("1"))]),
        md_diff(1, 61, 61, asks=[(F("20.06"), F("2"))]),
    ]))
    ev = w.wait_book(lambda e: tops(e, 0)[-1]["state"] == BOOK_VALID and tops(e, 1)[-1]["state"] == BOOK_VALID)
    assert (tops(ev, 0)[-1]["top_bid_px"], tops(ev, 0)[-1]["top_bid_qty"]) == (F("10.02"), F("4"))
    assert (tops(ev, 1)[-1]["top_ask_px"], tops(ev, 1)[-1]["top_ask_qty"]) == (F("20.06"), F("2"))
    s = w.stop()["stats"]
    assert (s["lapped"], s["md_lost"], s["books_valid"]) == (1, 200 - 64, 2)


def test_warm_loads_every_kernel_signature_the_stage_then_calls_on_ring_slots(instance):
    """A restarted stage must not compile on its first record: warm() covers the types of real ring slots."""
    from core.book_worker_kernels import mark_all_invalid, on_timer, process_md_batch
    from processes import book
    from processes.runtime import ProcessContext
    from processes.stage import StageContext

    cfg = _config(instance, 64, "overwrite")
    book.warm(cfg)
    kernels = (process_md_batch, on_timer, mark_all_invalid, book.tally_events)
    before = [len(k.signatures) for k in kernels]
    md = Ring.create(segment_name(instance, "md"), MD_EVENT, 64, 1, "overwrite")
    out = Ring.create(segment_name(instance, "book"), BOOK_EVENT, 64, 1, "block")
    cmd, evt = ControlQueue(1 << 14), ControlQueue(1 << 20)
    try:
        ctx = StageContext("book", ProcessContext("book", cfg, cmd, evt, incarnation=1))
        ctx.inputs["md"] = Ring.attach(md.name, MD_EVENT, 0)
        ctx.outputs["book"] = out
        w = book.make_stage(cfg, ctx)
        md.publish_batch(np.concatenate([md_snapshot(0, 5, bids=[(F("1"), F("1"))], asks=[(F("2"), F("1"))]),
                                         md_diff(0, 6, 6, bids=[(F("1"), F("2"))]), md_trade(0, 1, F("1"), 1, 10)]))
        assert w.do_work() == 6
        w.timer(time.monotonic_ns() + 10**10)
        md.publish_batch(np.concatenate([md_diff(0, u, u) for u in range(7, 107)]))  # laps the 64-slot ring
        w.do_work()
        assert [len(k.signatures) for k in kernels] == before
        reader = Ring.attach(out.name, BOOK_EVENT, 0)
        got = reader.poll(64).records.copy()
        reader.release()
        reader.close()
        kinds = list(got["kind"])
        assert kinds.count(BK_BAR) >= 2 and kinds[-1] == BK_TOP and got[-1]["state"] == BOOK_INVALID
        assert reason(got[-1]) == REASON_LAPPED and w.counters()["md_lost"] == 100 - 64
        ctx.inputs["md"].close()
    finally:
        for r in (md, out):
            r.unlink()
            r.close()
        cmd.close()
        evt.close()
