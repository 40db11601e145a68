"""The Binance sync state machine and the batch kernel, on crafted MD_EVENT sequences."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.book_sync import (
    COUNTER_NAMES,
    REASON_CROSSED,
    REASON_GAP,
    REASON_LAPPED,
    REASON_RECONNECT,
    REASON_SNAPSHOT_TOO_OLD,
    ST_AWAIT_BRIDGE,
    ST_NO_SNAPSHOT,
    ST_SYNCED,
    SYNC_ROW,
)
from core.book_worker_kernels import BookConfig, BookEngine, md_diff, md_snapshot, md_status, md_trade
from core.errors import ConfigError
from core.records import (
    BK_DEPTH,
    BK_TOP,
    BK_TRADE,
    BOOK_INVALID,
    BOOK_VALID,
    MD_EVENT,
    STATUS_RECONNECTED,
    STATUS_SNAPSHOT_FAILED,
)

S = 10**8
SNAP_BIDS = [(100 * S, 5 * S), (99 * S, 3 * S)]
SNAP_ASKS = [(101 * S, 2 * S), (102 * S, 4 * S)]


def engine(n=2, **kw):
    return BookEngine(BookConfig(n_symbols=n, **kw))


def cat(*parts):
    return np.concatenate(parts)


def tops(events):
    return events[events["kind"] == BK_TOP]


def test_no_snapshot_never_yields_a_valid_book():
    e = engine()
    md = cat(*[md_diff(0, 10 * i + 1, 10 * i + 10, [(100 * S, S)], [(101 * S, S)]) for i in range(50)])
    ev = e.process_all(md)
    assert not e.is_valid(0)
    assert e.state(0) == ST_NO_SNAPSHOT
    assert (ev["state"] == BOOK_VALID).sum() == 0
    assert e.counters(0)["buffered"] == 50
    assert e.counters(0)["applied"] == 0
    assert 0 in e.take_resync_requests()  # a fresh book asks for its first snapshot


def test_stale_diffs_dropped_and_first_diff_bridges():
    e = engine()
    md = cat(
        md_diff(0, 90, 95, [(100 * S, 9 * S)]),  # u <= L: dropped
        md_diff(0, 96, 100, [(99 * S, 0)]),  # u == L: dropped
        md_diff(0, 99, 103, [(100 * S, 7 * S)], recv_ns=11),  # U <= L+1 <= u: bridges
        md_snapshot(0, 100, SNAP_BIDS, SNAP_ASKS, recv_ns=12),
        md_diff(0, 104, 104, [], [(101 * S, 0)], recv_ns=13),
    )
    ev = e.process_all(md)
    assert e.is_valid(0)
    assert e.book_id(0) == 104
    assert e.top(0) == (100 * S, 7 * S, 102 * S, 4 * S)
    c = e.counters(0)
    assert (c["applied"], c["stale"], c["chain_breaks"], c["snapshots_applied"]) == (2, 2, 0, 1)
    t = tops(ev)
    # snapshot + replayed buffer become valid in one step, then the ask changes
    assert t["state"].tolist() == [BOOK_VALID, BOOK_VALID]
    assert t["top_bid_qty"].tolist() == [7 * S, 7 * S]
    assert t["top_ask_px"].tolist() == [101 * S, 102 * S]
    assert t["recv_ns"].tolist() == [12, 13]
    assert t["last_update_id"].tolist() == [103, 104]
    assert np.all(np.diff(ev["seq"]) == 1)


def test_diff_starting_exactly_at_L_plus_1_bridges_and_one_past_does_not():
    e = engine()
    e.process_all(cat(md_snapshot(0, 100, SNAP_BIDS, SNAP_ASKS), md_diff(0, 101, 101, [(100 * S, S)])))
    assert e.is_valid(0)
    e = engine()
    e.process_all(cat(md_snapshot(0, 100, SNAP_BIDS, SNAP_ASKS)))
    assert e.state(0) == ST_AWAIT_BRIDGE and not e.is_valid(0)  # snapshot alone is not enough
    e.take_resync_requests()
    ev = e.process_all(md_diff(0, 102, 103, [(100 * S, S)]))
    assert not e.is_valid(0)
    assert e.counters(0)["snapshots_too_old"] == 1
    assert e.take_resync_requests() == [0]
    # the book was already published INVALID after the snapshot: nothing turns VALID
    assert (ev["state"] == BOOK_VALID).sum() == 0


def test_snapshot_older_than_buffered_diffs_is_refetched_and_buffer_kept():
    e = engine()
    diffs = [md_diff(0, 201 + 2 * i, 202 + 2 * i, [(100 * S, (i + 1) * S)]) for i in range(5)]
    ev = e.process_all(cat(*diffs, md_snapshot(0, 150, SNAP_BIDS, SNAP_ASKS)))
    assert not e.is_valid(0)
    assert e.counters(0)["snapshots_too_old"] == 1
    assert e.take_resync_requests() == [0, 1]
    assert (ev["state"] == BOOK_VALID).sum() == 0
    # the refetched snapshot lands inside the buffered range: buffered diffs still bridge
    e.process_all(md_snapshot(0, 204, SNAP_BIDS, SNAP_ASKS))
    assert e.is_valid(0)
    assert e.book_id(0) == 210
    assert e.top(0)[:2] == (100 * S, 5 * S)


def test_gap_invalidates_requests_resync_and_recovers_from_a_bridging_snapshot():
    e = engine()
    e.process_all(cat(md_snapshot(0, 100, SNAP_BIDS, SNAP_ASKS), md_diff(0, 101, 102, [(100 * S, S)])))
    assert e.is_valid(0)
    e.take_resync_requests()
    ev = e.process_all(cat(md_diff(0, 105, 106, [(100 * S, 2 * S)], recv_ns=77),  # 103..104 missing
                           md_diff(0, 107, 108, [], [(101 * S, 9 * S)])))
    assert not e.is_valid(0)
    c = e.counters(0)
    assert (c["chain_breaks"], c["resyncs"], c["buffered"]) == (1, 1, 2)
    assert e.take_resync_requests() == [0]
    t = tops(ev)
    assert len(t) == 1 and t[0]["state"] == BOOK_INVALID and t[0]["flags"] == REASON_GAP << 8
    assert t[0]["recv_ns"] == 77
    # nothing from an invalid book is VALID afterwards
    assert (ev["state"] == BOOK_VALID).sum() == 0
    ev = e.process_all(md_snapshot(0, 106, SNAP_BIDS, SNAP_ASKS))
    assert e.is_valid(0)
    assert e.top(0) == (100 * S, 5 * S, 101 * S, 9 * S)  # snapshot + buffered diff 107..108
    assert tops(ev)["state"].tolist() == [BOOK_VALID]


def test_duplicate_and_old_diffs_are_ignored_while_synced():
    e = engine()
    d1 = md_diff(0, 101, 102, [(100 * S, S)])
    e.process_all(cat(md_snapshot(0, 100, SNAP_BIDS, SNAP_ASKS), d1))
    before = e.top(0)
    ev = e.process_all(cat(d1, md_diff(0, 95, 100, [(100 * S, 8 * S)])))
    assert e.is_valid(0) and e.top(0) == before and len(ev) == 0
    assert e.counters(0)["stale"] == 2 and e.counters(0)["chain_breaks"] == 0


def test_overlapping_diff_is_a_chain_break():
    e = engine()
    e.process_all(cat(md_snapshot(0, 100, SNAP_BIDS, SNAP_ASKS), md_diff(0, 101, 105, [(100 * S, S)])))
    e.process_all(md_diff(0, 104, 107, [(100 * S, 2 * S)]))
    assert not e.is_valid(0) and e.counters(0)["chain_breaks"] == 1


def test_crossed_book_is_invalid_and_resyncs():
    e = engine()
    e.process_all(md_snapshot(0, 100, SNAP_BIDS, SNAP_ASKS))
    e.take_resync_requests()
    ev = e.process_all(md_diff(0, 101, 101, [(101 * S, S)]))  # bid at the best ask
    assert not e.is_valid(0)
    assert e.counters(0)["crossed"] == 1
    assert e.take_resync_requests() == [0]
    t = tops(ev)
    assert t[-1]["state"] == BOOK_INVALID and t[-1]["flags"] == REASON_CROSSED << 8
    assert (ev["state"] == BOOK_VALID).sum() == 0


def test_book_crossed_only_in_the_middle_of_one_diff_is_fine():
    e = engine()
    e.process_all(md_snapshot(0, 100, SNAP_BIDS, SNAP_ASKS))
    # the ask moves up first, then the bid follows: never crossed after the whole diff
    e.process_all(md_diff(0, 101, 101, [(101 * S, S)], [(101 * S, 0), (103 * S, S)]))
    assert e.is_valid(0) and e.counters(0)["crossed"] == 0


@pytest.mark.parametrize("all_symbols", [False, True])
def test_reconnect_status_invalidates_and_recovers_after_snapshot(all_symbols):
    e = engine()
    e.process_all(cat(md_snapshot(0, 100, SNAP_BIDS, SNAP_ASKS), md_diff(0, 101, 101, [(100 * S, S)]),
                      md_snapshot(1, 500, SNAP_BIDS, SNAP_ASKS), md_diff(1, 501, 501, [(100 * S, S)])))
    assert e.is_valid(0) and e.is_valid(1)
    e.take_resync_requests()
    ev = e.process_all(md_status(0xFFFF if all_symbols else 0, STATUS_RECONNECTED, recv_ns=5))
    assert not e.is_valid(0)
    assert e.is_valid(1) != all_symbols
    assert e.take_resync_requests() == ([0, 1] if all_symbols else [0])
    assert set(tops(ev)["flags"].tolist()) == {REASON_RECONNECT << 8}
    # diffs after the reconnect: buffered, then bridged by the new snapshot
    e.process_all(cat(md_diff(0, 300, 305, [(100 * S, 4 * S)]), md_snapshot(0, 302, SNAP_BIDS, SNAP_ASKS)))
    assert e.is_valid(0) and e.top(0)[1] == 4 * S


def test_snapshot_failed_status_is_counted_and_keeps_waiting():
    e = engine()
    e.process_all(md_status(0, STATUS_SNAPSHOT_FAILED))
    assert e.counters(0)["snapshot_failures"] == 1 and not e.is_valid(0)


def test_lapped_ring_marks_every_book_invalid_until_snapshot():
    e = engine()
    e.process_all(cat(md_snapshot(0, 100, SNAP_BIDS, SNAP_ASKS), md_diff(0, 101, 101, [(100 * S, S)]),
                      md_snapshot(1, 100, SNAP_BIDS, SNAP_ASKS), md_diff(1, 101, 101, [(100 * S, S)])))
    e.take_resync_requests()
    ev = e.mark_all_invalid(REASON_LAPPED)
    assert len(ev) == 2 and set(ev["state"].tolist()) == {BOOK_INVALID}
    assert set(ev["flags"].tolist()) == {REASON_LAPPED << 8}
    assert not e.is_valid(0) and not e.is_valid(1)
    assert e.take_resync_requests() == [0, 1]
    assert e.counters(0)["lapped"] == 1
    # a diff that continues the old chain must not revive the book
    e.process_all(md_diff(0, 102, 102, [(100 * S, 2 * S)]))
    assert not e.is_valid(0)
    e.process_all(md_snapshot(0, 101, SNAP_BIDS, SNAP_ASKS))
    assert e.is_valid(0) and e.book_id(0) == 102


def test_fragment_of_a_diff_after_a_lap_is_ignored():
    e = engine()
    e.process_all(md_snapshot(0, 100, SNAP_BIDS, SNAP_ASKS))
    d = md_diff(0, 101, 101, [(100 * S, S), (99 * S, 0)])
    e.process_all(d[1:])  # the FLAG_BEGIN record was lost
    assert e.counters(0)["malformed"] == 1 and e.book_id(0) == 100


def test_snapshot_while_synced_is_ignored():
    e = engine()
    e.process_all(cat(md_snapshot(0, 100, SNAP_BIDS, SNAP_ASKS), md_diff(0, 101, 101, [(100 * S, S)])))
    e.process_all(md_snapshot(0, 90, [(1 * S, S)], [(2 * S, S)]))
    assert e.is_valid(0) and e.top(0)[0] == 100 * S and e.counters(0)["snapshots_ignored"] == 1


def test_trades_are_forwarded_with_trace_and_book_state():
    e = engine()
    md = md_trade(1, 42, 100 * S, S, 1_700_000_000_123, buyer_maker=True, recv_ns=999)
    md["pub_ns"] = 1234
    ev = e.process_all(md)
    tr = ev[ev["kind"] == BK_TRADE]
    assert len(tr) == 1
    assert (tr[0]["symbol"], tr[0]["tr_px"], tr[0]["tr_qty"], tr[0]["tr_first_id"], tr[0]["tr_time_ms"]) == \
        (1, 100 * S, S, 42, 1_700_000_000_123)
    assert tr[0]["recv_ns"] == 999 and tr[0]["in_pub_ns"] == 1234 and tr[0]["pub_ns"] == 0
    assert tr[0]["state"] == BOOK_INVALID and tr[0]["flags"] & 4


def test_depth_events_follow_the_throttle():
    e = engine(depth_throttle_ms=1.0)
    md = [md_snapshot(0, 100, SNAP_BIDS, SNAP_ASKS, recv_ns=0)]
    for i in range(10):  # one diff every 0.4 ms of receive time
        md.append(md_diff(0, 101 + i, 101 + i, [(90 * S, (i + 1) * S)], recv_ns=400_000 * (i + 1)))
    ev = e.process_all(cat(*md))
    d = ev[ev["kind"] == BK_DEPTH]
    # the first at the bridging diff (the book becomes valid), then >= 1 ms apart
    assert d["recv_ns"].tolist() == [400_000, 1_600_000, 2_800_000, 4_000_000]
    assert d[0]["d_bid_px"][:4].tolist() == [100 * S, 99 * S, 90 * S, 0]
    assert d[-1]["d_bid_px"][:3].tolist() == [100 * S, 99 * S, 90 * S]
    assert d[-1]["d_ask_qty"][:2].tolist() == [2 * S, 4 * S]


def test_unknown_symbol_is_counted_not_fatal():
    e = engine(n=1)
    ev = e.process_all(md_diff(7, 1, 2, [(S, S)]))
    assert len(ev) == 0 and e.global_counters()["bad_symbol"] == 1


def test_config_rejects_a_capacity_too_small_for_a_snapshot():
    with pytest.raises(ConfigError, match="book.levels_capacity"):
        BookConfig(n_symbols=1, levels_capacity=100)


def _random_session(rnd, n_diffs):
    """A chained diff stream from an evolving reference book, and the reference state per u."""
    ref = {0: {}, 1: {}}
    for i in range(20):
        ref[0][(1000 - i) * S] = rnd.randint(1, 50) * S
        ref[1][(1001 + i) * S] = rnd.randint(1, 50) * S
    states = []
    diffs = []
    u = 1000
    for _ in range(n_diffs):
        bids, asks = [], []
        for _ in range(rnd.randint(0, 6)):
            side = rnd.randint(0, 1)
            bb = max(ref[0]) if ref[0] else 990 * S
            ba = min(ref[1]) if ref[1] else 1010 * S
            if side == 0:
                px = rnd.randint(bb // S - 10, ba // S - 1) * S
            else:
                px = rnd.randint(bb // S + 1, ba // S + 10) * S
            q = 0 if (rnd.random() < 0.3 and px in ref[side]) else rnd.randint(1, 50) * S
            if q:
                ref[side][px] = q
            else:
                ref[side].pop(px, None)
            (bids if side == 0 else asks).append((px, q))
        n_ids = rnd.randint(1, 4)
        diffs.append(md_diff(0, u + 1, u + n_ids, bids, asks))
        u += n_ids
        states.append((u, {0: dict(ref[0]), 1: dict(ref[1])}))
    return diffs, states


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**9), st.integers(1, 60), st.data())
def test_any_snapshot_point_and_any_batch_split_gives_the_reference_book(seed, n_diffs, data):
    rnd = random.Random(seed)
    diffs, states = _random_session(rnd, n_diffs)
    snap_at = data.draw(st.integers(0, n_diffs - 1))  # snapshot taken after diff snap_at
    arrive_after = data.draw(st.integers(snap_at, n_diffs - 1))  # ... and delivered later
    u_snap, snap_book = states[snap_at]
    snap = md_snapshot(0, u_snap, sorted(snap_book[0].items(), reverse=True), sorted(snap_book[1].items()))
    stream = cat(*diffs[:arrive_after + 1], snap, *diffs[arrive_after + 1:])
    e = engine(n=1, depth_throttle_ms=-1)
    i = 0
    out = []
    while i < len(stream):  # random ring batches, splitting diffs anywhere
        j = min(len(stream), i + data.draw(st.integers(1, 40)))
        out.append(e.process_all(stream[i:j]))
        i = j
    ev = cat(*out)
    u_last, book = states[-1]
    if u_snap < u_last:
        assert e.is_valid(0)
    else:
        assert e.state(0) == ST_AWAIT_BRIDGE  # nothing after the snapshot yet: not valid
    assert e.book_id(0) == u_last
    bp, bq, ap, aq = e.top(0)
    assert (bp, bq) == max(book[0].items()) and (ap, aq) == min(book[1].items())
    dbp, dbq, dap, daq = e.depth(0, 50)
    assert list(zip(dbp.tolist(), dbq.tolist()))[:len(book[0])] == sorted(book[0].items(), reverse=True)[:50]
    assert e.counters(0)["chain_breaks"] == 0 and e.counters(0)["crossed"] == 0
    assert np.all(np.diff(ev["seq"]) == 1)
    # the last BK_TOP carries the final top
    t = tops(ev)
    if u_snap < u_last:
        assert (t[-1]["top_bid_px"], t[-1]["top_ask_px"], t[-1]["state"]) == (bp, ap, BOOK_VALID)


def test_small_output_buffer_yields_the_same_events_as_a_large_one():
    rnd = random.Random(3)
    diffs, states = _random_session(rnd, 200)
    u0, b0 = states[0]
    snap = md_snapshot(0, u0, sorted(b0[0].items(), reverse=True), sorted(b0[1].items()))
    trades = [md_trade(0, k, 1000 * S, S, 1_700_000_000_000 + 700 * k) for k in range(100)]
    stream = cat(*diffs[:5], snap, *[x for pair in zip(diffs[5:105], trades) for x in pair], *diffs[105:])
    big = engine(n=1, depth_throttle_ms=0).process_all(stream)
    small = BookEngine(BookConfig(n_symbols=1, depth_throttle_ms=0), out_capacity=3)
    got = small.process_all(stream)
    assert len(got) == len(big) > 300
    assert got.tobytes() == big.tobytes()


def test_buffer_overflow_forgets_the_buffer_and_a_newer_snapshot_still_syncs():
    e = engine(n=1, buffer_capacity=1024)
    md = cat(*[md_diff(0, 1 + 2 * i, 2 + 2 * i, [(100 * S, S)] * 1, [(101 * S, S)]) for i in range(600)])
    e.process_all(md)
    assert e.counters(0)["buffer_overflows"] >= 1
    e.process_all(md_snapshot(0, 5, SNAP_BIDS, SNAP_ASKS))  # older than what is still buffered
    assert not e.is_valid(0) and e.counters(0)["snapshots_too_old"] == 1
    e.process_all(md_snapshot(0, 1150, SNAP_BIDS, SNAP_ASKS))
    assert e.is_valid(0) and e.book_id(0) == 1200


def test_md_event_dtype_is_what_the_kernel_reads():
    assert md_diff(0, 1, 2).dtype == MD_EVENT


def test_sync_rows_are_named_fields_and_totals_sum_them():
    e = engine()
    e.process_all(cat(md_snapshot(0, 100, SNAP_BIDS, SNAP_ASKS), md_diff(0, 101, 101, [(100 * S, S)]),
                      md_diff(1, 5, 6, [(100 * S, S)]), md_trade(1, 1, 100 * S, S, 1_700_000_000_000)))
    assert e.sync.dtype == SYNC_ROW and e.sync.shape == (2,)
    row = e.sync[0]
    assert (row["state"], row["book_id"], row["applied"]) == (ST_SYNCED, 101, 1)
    assert (e.sync[1]["state"], e.sync[1]["buffered"], e.sync[1]["trades"]) == (ST_NO_SNAPSHOT, 1, 1)
    t = e.totals()
    assert set(t) == set(COUNTER_NAMES) | {"bad_symbol", "bad_kind"}
    assert (t["applied"], t["buffered"], t["trades"], t["snapshots_applied"]) == (1, 1, 1, 1)
    assert e.books_valid() == 1 and e.invalid_mask().tolist() == [False, True]
    assert e.reason_name(1) == "start"


_CACHE_CHILD = textwrap.dedent("""
    import json
    import numpy as np
    from numba.core.dispatcher import Dispatcher
    import core.bars, core.book, core.book_sync, core.book_worker_kernels
    from core.book_sync import REASON_LAPPED
    from core.book_worker_kernels import BookConfig, BookEngine, md_diff, md_snapshot, md_status, md_trade
    from core.records import BOOK_EVENT, STATUS_RECONNECTED

    S = 10**8
    e = BookEngine(BookConfig(n_symbols=2, depth_throttle_ms=0))
    t0 = 1_700_000_059_000
    md = np.concatenate([
        md_diff(0, 11, 11, bids=[(100 * S, S)]), md_snapshot(0, 10, bids=[(99 * S, S)], asks=[(101 * S, S)]),
        md_diff(0, 12, 12, bids=[(98 * S, S), (97 * S, S)], asks=[(102 * S, S)]),
        md_trade(0, 1, 100 * S, S, t0), md_trade(0, 2, 100 * S, S, t0 + 1500, last_id=3),
        md_status(0, STATUS_RECONNECTED),
    ])
    e.process_all(md)
    e.on_timer(t0 + 200_000)
    e.mark_all_invalid(REASON_LAPPED)
    dst = np.zeros(64, BOOK_EVENT)
    e.process_into(md, len(md), dst, 0)
    e.timer_into(t0 + 300_000, 1, dst, 0)
    e.invalidate_all_into(REASON_LAPPED, 1, dst, 0)
    e.top(0), e.depth(0), e.mid(0), e.microprice(0), e.imbalance(0, 2)
    stats = {}
    for mod in (core.bars, core.book, core.book_sync, core.book_worker_kernels):
        for name, f in vars(mod).items():
            if isinstance(f, Dispatcher) and f.py_func.__module__ == mod.__name__:
                stats[mod.__name__ + "." + name] = (sum(f.stats.cache_hits.values()),
                                                     sum(f.stats.cache_misses.values()))
    print(json.dumps(stats))
""")


def test_a_second_process_loads_every_book_kernel_from_the_disk_cache(tmp_path):
    """The state bundle (NamedTuple of arrays, record dtypes) caches: a restart compiles nothing."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba_cache"))

    def run():
        r = subprocess.run([sys.executable, "-c", _CACHE_CHILD], cwd=root, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    cold = run()
    assert sum(miss for _hit, miss in cold.values()) > 0  # the first process compiled into the empty cache
    warm = run()
    compiled = {name: miss for name, (_hit, miss) in warm.items() if miss}
    assert compiled == {}, f"recompiled in the second process: {compiled}"
    for name in ("core.book_worker_kernels.process_md_batch", "core.book_worker_kernels.on_timer",
                 "core.book_worker_kernels.mark_all_invalid", "core.book.book_top", "core.book.book_depth"):
        assert warm[name][0] > 0, f"{name} was not loaded from the cache"
