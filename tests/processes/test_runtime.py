"""Worker runtime plumbing, in-process: relay keeps what does not fit, stamps the trace, measures the hop."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.config import load_config
from core.records import BOOK_EVENT, SIGNAL
from processes.runtime import WorkerContext, relay, trace_violations
from processes.signal import _Converter
from ringbuffers.control import ControlQueue
from ringbuffers.ring import Ring, segment_name

ROOT = Path(__file__).resolve().parents[2]


def test_relay_moves_what_fits_leaves_the_rest_and_stamps_a_monotonic_trace(instance):
    cfg = load_config(ROOT / "config" / "system.json", env={})
    cmd, evt = ControlQueue(1 << 14), ControlQueue(1 << 16)
    ctx = WorkerContext("signal", cfg, cmd, evt)
    book = Ring.create(segment_name(instance, "book"), BOOK_EVENT, 64, 1)
    sig = Ring.create(segment_name(instance, "signals"), SIGNAL, 8, 1)
    try:
        inp = Ring.attach(book.name, BOOK_EVENT, 0)
        out_reader = Ring.attach(sig.name, SIGNAL, 0)
        recs = np.zeros(20, BOOK_EVENT)
        recs["recv_ns"] = np.arange(1, 21) * 10
        recs["in_pub_ns"] = recs["recv_ns"] + 2
        recs["pub_ns"] = recs["recv_ns"] + 5
        recs["symbol"] = 1
        assert book.publish_batch(recs) == 20
        hop = ctx.latency.hop("book->signal")
        moved = relay(ctx, inp, sig, _Converter(), hop, 256)
        assert moved == 8  # the signals ring holds 8: the other 12 stay unread in book, nothing dropped
        assert inp.lag() == 12 and ctx.stats["out_full"] == 1
        got = out_reader.poll(8).records.copy()
        out_reader.release()
        assert np.array_equal(got["recv_ns"], recs["recv_ns"][:8])
        assert np.array_equal(got["in_pub_ns"], recs["pub_ns"][:8])
        assert np.all(got["pub_ns"] >= got["in_pub_ns"]) and trace_violations(got, int(got["pub_ns"].max())) == 0
        assert list(got["signal_id"]) == list(range(1, 9))
        assert hop.count == 8 and "trace_violations" not in ctx.stats
        assert relay(ctx, inp, sig, _Converter(), hop, 256) == 8 and inp.lag() == 4
        bad = np.zeros(1, BOOK_EVENT)
        bad["recv_ns"], bad["in_pub_ns"], bad["pub_ns"] = 100, 50, 120  # in_pub before recv: a broken trace
        assert trace_violations(bad, 200) == 1
        inp.close()
        out_reader.close()
    finally:
        for r in (book, sig):
            r.unlink()
            r.close()
        cmd.close()
        evt.close()


def test_commands_are_split_into_shutdown_and_the_rest(instance):
    cfg = load_config(ROOT / "config" / "system.json", env={})
    cmd, evt = ControlQueue(1 << 14), ControlQueue(1 << 16)
    ctx = WorkerContext("feed", cfg, cmd, evt)
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
