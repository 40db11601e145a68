"""The book, sync state machine and bars on real Binance recordings (../shared/data).

Figures the recordings are known to give are in ../shared/data/SOURCES.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.book_replay import check_session, load_session, raw_chain_breaks
from core.book_sync import REASON_LAPPED
from core.book_worker_kernels import BookConfig, BookEngine, md_snapshot, md_status
from core.records import (
    BK_TOP,
    BOOK_VALID,
    FLAG_BEGIN,
    MD_DEPTH_ASK,
    MD_DEPTH_BID,
    MD_DEPTH_NONE,
    STATUS_RECONNECTED,
)
from core.recordings import iter_recording_dir, iter_session


@pytest.fixture(scope="module")
def btc_2024(shared_data):
    hb = shared_data / "hftbacktest"
    return load_session(iter_session([hb / "btcusdt_20240808.gz", hb / "btcusdt_20240809.gz"]))


@pytest.fixture(scope="module")
def eth_2024(shared_data):
    hb = shared_data / "hftbacktest"
    return load_session(iter_session([hb / "ethusdt_20240808.gz", hb / "ethusdt_20240809.gz"]))


def assert_clean(fig):
    assert fig["chain_breaks"] == fig["raw_chain_breaks"] == 0
    assert fig["crossed"] == 0
    assert fig["resyncs"] == 0
    assert fig["valid_at_end"]


def test_btcusdt_2024_tops_agree_with_book_ticker(btc_2024):
    fig = check_session(btc_2024)["BTCUSDT"]
    assert_clean(fig)
    assert fig["applied"] == 6493  # 6495 diffs across the midnight split, 2 older than the snapshot
    assert fig["stale"] == 2
    assert fig["ticker_mismatch"] <= 2
    assert fig["ticker_match"] >= 6491
    for m in fig["mismatch_detail"]:
        # the ticker skipped an intermediate top: bid side only, ticker behind the diff
        assert m["book"][2:] == m["ticker"][2:]
        assert m["ticker_u"] < m["u"]


def test_ethusdt_2024_tops_agree_with_book_ticker(eth_2024):
    fig = check_session(eth_2024)["ETHUSDT"]
    assert_clean(fig)
    assert fig["applied"] == 6468
    assert fig["ticker_mismatch"] == 0
    assert fig["ticker_match"] >= 6467


def test_recording_without_snapshot_never_yields_a_valid_book(shared_data):
    s = load_session(iter_session([shared_data / "hftbacktest" / "btcusdt_20230405.dat.gz"]))
    fig = check_session(s)["BTCUSDT"]
    assert fig["applied"] == 0
    assert fig["valid_tops"] == 0 and not fig["valid_at_end"]
    assert fig["trades"] == 3144  # trades still flow


CRYPTOFEED = [
    ("2021-04-04_2997020", "BINANCE", 51),
    ("2021-04-05_7136ce8", "BINANCE", 0),
    ("2021-04-05_7136ce8", "BINANCE_US", 0),
    ("2021-04-17_be4e5c8", "BINANCE", 6),
    ("2021-04-17_be4e5c8", "BINANCE_US", 0),
    ("2021-08-14_cb63e8d", "BINANCE", 2),
    ("2021-08-14_cb63e8d", "BINANCE_US", 0),
    ("2021-10-12_ce58c2a", "BINANCE", 1),
    ("2021-10-12_ce58c2a", "BINANCE_US", 1),  # not in SOURCES.md (it checks Binance only); 0 mismatches
]


@pytest.mark.parametrize(("folder", "venue", "bars"), CRYPTOFEED)
def test_cryptofeed_recordings_books_and_bars(shared_data, folder, venue, bars):
    s = load_session(iter_recording_dir(shared_data / "cryptofeed" / folder, venue))
    assert not s.decode_errors
    res = check_session(s)
    assert len(res) >= 3
    for sym, fig in res.items():
        assert_clean(fig)
        assert fig["applied"] > 0, sym
        assert fig["ticker_mismatch"] == 0, (sym, fig["mismatch_detail"][:3])
        assert fig["bars_mismatch"] == 0, sym
    assert sum(f["bars_match"] for f in res.values()) == bars
    if folder != "2021-04-04_2997020":  # that one recorded no bookTicker
        assert sum(f["ticker_match"] for f in res.values()) > 0


def _diff_starts(md):
    depth = np.isin(md["kind"], (MD_DEPTH_BID, MD_DEPTH_ASK, MD_DEPTH_NONE))
    return np.flatnonzero(depth & ((md["flags"] & FLAG_BEGIN) != 0))


def test_a_missing_diff_is_caught_and_the_book_stays_invalid(eth_2024):
    md = eth_2024.md
    starts = _diff_starts(md)
    a, b = starts[3000], starts[3001]
    cut = np.concatenate([md[:a], md[b:]])
    assert raw_chain_breaks(cut, 0) == 1
    fig = check_session(eth_2024, cut)["ETHUSDT"]
    assert fig["chain_breaks"] == 1 and fig["resyncs"] == 1
    assert not fig["valid_at_end"]
    assert fig["ticker_mismatch"] == 0  # nothing applied to a book with a hole
    assert fig["applied"] < 3000
    eng = BookEngine(BookConfig(n_symbols=1, depth_throttle_ms=-1))
    ev = eng.process_all(cut)
    tops = ev[ev["kind"] == BK_TOP]
    gap_recv = md[b]["recv_ns"]
    assert (tops[tops["recv_ns"] >= gap_recv]["state"] == BOOK_VALID).sum() == 0
    assert eng.take_resync_requests() == [0]


def _snapshot_from(md_prefix):
    """A REST-like snapshot of the book after ``md_prefix`` (uninterrupted run)."""
    eng = BookEngine(BookConfig(n_symbols=1, depth_throttle_ms=-1))
    eng.process_all(md_prefix)
    n = int(eng.count[0].max())
    bp, bq, ap, aq = eng.depth(0, n)
    bids = [(p, q) for p, q in zip(bp.tolist(), bq.tolist()) if q]
    asks = [(p, q) for p, q in zip(ap.tolist(), aq.tolist()) if q]
    return md_snapshot(0, eng.book_id(0), bids, asks, recv_ns=int(md_prefix[-1]["recv_ns"])), eng


def test_reconnect_on_real_stream_invalidates_then_recovers_after_snapshot(eth_2024):
    md = eth_2024.md
    starts = _diff_starts(md)
    reconnect_at, snap_state_at, snap_arrives_at = starts[2000], starts[2010], starts[2020]
    snap, _ = _snapshot_from(md[:snap_state_at])
    status = md_status(0, STATUS_RECONNECTED, recv_ns=int(md[reconnect_at]["recv_ns"]))
    mod = np.concatenate([md[:reconnect_at], status, md[reconnect_at:snap_arrives_at], snap, md[snap_arrives_at:]])
    fig = check_session(eth_2024, mod)["ETHUSDT"]
    assert fig["resyncs"] == 1 and fig["chain_breaks"] == 0 and fig["crossed"] == 0
    assert fig["snapshots_applied"] == 2
    assert fig["valid_at_end"]
    assert fig["ticker_mismatch"] == 0
    base = check_session(eth_2024)["ETHUSDT"]
    # the 10 diffs the new snapshot covers are not applied again; every other one is
    assert fig["applied"] == base["applied"] - 10
    # the recovered book ends exactly where the uninterrupted one does
    full = BookEngine(BookConfig(n_symbols=1, depth_throttle_ms=-1))
    full.process_all(md)
    rec = BookEngine(BookConfig(n_symbols=1, depth_throttle_ms=-1))
    rec.process_all(mod)
    assert rec.top(0) == full.top(0)
    assert all(np.array_equal(x, y) for x, y in zip(rec.depth(0, 1000), full.depth(0, 1000)))


def test_lapped_ring_on_real_stream_invalidates_then_recovers_after_snapshot(eth_2024):
    md = eth_2024.md
    starts = _diff_starts(md)
    lap_at, resume_at, snap_arrives_at = starts[1500], starts[1530], starts[1540]
    eng = BookEngine(BookConfig(n_symbols=1, depth_throttle_ms=-1))
    eng.process_all(md[:lap_at])
    assert eng.is_valid(0)
    eng.take_resync_requests()
    ev = eng.mark_all_invalid(REASON_LAPPED)
    assert ev[0]["state"] != BOOK_VALID and not eng.is_valid(0)
    assert eng.take_resync_requests() == [0]
    # records lap_at..resume_at were overwritten before we read them
    snap, _ = _snapshot_from(md[:starts[1535]])
    ev = eng.process_all(md[resume_at:snap_arrives_at])
    assert not eng.is_valid(0)
    assert (ev[ev["kind"] == BK_TOP]["state"] == BOOK_VALID).sum() == 0
    eng.process_all(snap)
    eng.process_all(md[snap_arrives_at:])
    full = BookEngine(BookConfig(n_symbols=1, depth_throttle_ms=-1))
    full.process_all(md)
    assert eng.is_valid(0)
    assert eng.top(0) == full.top(0)
    assert eng.counters(0)["crossed"] == 0 and eng.counters(0)["chain_breaks"] == 0
