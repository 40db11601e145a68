"""scripts/chaos.py's audit: what it calls a duplicate, an order on an invalid book, a mismatch, a segment left.

Synthetic inputs whose right answer is worked out by hand: each audit must find the fault planted in
them (an audit that cannot fail proves nothing) and find nothing in the clean version.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import chaos  # noqa: E402  (configures the numba cache before numba loads)
from core import records as R  # noqa: E402

P = "cx1-"


def order(cid, qty="0.001", executed="0.001", oid=None):
    return {"clientOrderId": f"{P}{cid}", "orderId": oid if oid is not None else cid, "origQty": qty,
            "executedQty": executed, "symbol": "BTCUSDT"}


def trade(tid, oid, qty="0.001"):
    return {"id": tid, "orderId": oid, "qty": qty, "symbol": "BTCUSDT"}


INTENTS = {f"{P}{c}": Decimal("0.001") for c in (1, 2, 3)}


def test_clean_venue_records_have_no_duplicates():
    d = chaos.venue_duplicates([order(1), order(2), order(3)], [trade(10, 1), trade(11, 2), trade(12, 3)],
                               INTENTS, P)
    assert d["total"] == 0


def test_an_order_placed_twice_under_one_client_id_is_a_duplicate():
    d = chaos.venue_duplicates([order(1), order(2), order(2, oid=99)], [trade(10, 1), trade(11, 2)], INTENTS, P)
    assert d["client_ids_twice"] == 1
    assert d["beyond_intent"] == 1  # the second placement filled too: 0.002 traded for an intent of 0.001
    assert d["total"] == 2


def test_fills_beyond_an_orders_quantity_and_beyond_the_intent_are_found():
    over = chaos.venue_duplicates([order(1)], [trade(10, 1), trade(11, 1)], INTENTS, P)
    assert over["overfilled"] == 1 and over["beyond_intent"] == 1
    big = chaos.venue_duplicates([order(1, qty="0.002", executed="0.002")], [trade(10, 1, "0.002")], INTENTS, P)
    assert big["overfilled"] == 0 and big["beyond_intent"] == 1  # the venue filled what it got; we meant 0.001


def test_an_order_no_intent_explains_counts_and_other_instances_are_ignored():
    d = chaos.venue_duplicates([order(1), order(7)], [trade(10, 1)], INTENTS, P)
    assert d["unknown_ids"] == 1
    other = {"clientOrderId": "someone-1", "orderId": 50, "origQty": "1", "executedQty": "1", "symbol": "BTCUSDT"}
    assert chaos.venue_duplicates([order(1), other, other], [trade(10, 1)], INTENTS, P)["total"] == 0


def test_order_ids_are_per_symbol_one_orders_trades_never_count_for_another_symbols_order():
    eth = {**order(5, oid=1), "symbol": "ETHUSDT"}
    intents = {**INTENTS, f"{P}5": Decimal("0.001")}
    d = chaos.venue_duplicates([order(1), eth], [trade(10, 1), {**trade(10, 1), "symbol": "ETHUSDT"}], intents, P)
    assert d["total"] == 0


def test_a_trade_listed_twice_by_the_venue_is_counted():
    d = chaos.venue_duplicates([order(1, qty="0.002")], [trade(10, 1), trade(10, 1)], INTENTS, P)
    assert d["trades_twice"] == 1


# --- the md reference ---------------------------------------------------------------------------------------
def md(*rows):
    """md records from (kind, symbol, first, last, pub_ns[, aux]) tuples; diffs are whole messages."""
    a = np.zeros(len(rows), R.MD_EVENT)
    for i, r in enumerate(rows):
        kind, sym, first, last, pub = r[:5]
        a[i]["kind"], a[i]["symbol"], a[i]["first_id"], a[i]["last_id"], a[i]["pub_ns"] = kind, sym, first, last, pub
        a[i]["flags"] = R.FLAG_BEGIN | R.FLAG_END
        a[i]["aux"] = r[5] if len(r) > 5 else 0
    return a


def diff(sym, U, u, pub):
    return (R.MD_DEPTH_BID, sym, U, u, pub)


def snap(sym, L, pub):
    return (R.MD_SNAP_END, sym, L, L, pub)


def test_reference_is_valid_after_a_bridging_snapshot_and_invalid_from_a_gap_until_the_next_one():
    ref = chaos.SyncReference(2)
    ref.feed(md(diff(0, 100, 105, 10), diff(0, 106, 110, 20), snap(0, 103, 30), diff(0, 111, 115, 40),
                diff(0, 118, 120, 50), diff(0, 121, 125, 60), snap(0, 122, 70), diff(0, 126, 130, 80)))
    assert ref.state_at(0, 5) == chaos.INVALID  # before any snapshot
    assert ref.state_at(0, 30) == ref.state_at(0, 45) == chaos.VALID  # 100-105 bridges 103, chain to 115
    assert ref.state_at(0, 50) == chaos.INVALID and ref.gaps == 1  # 116-117 never came
    assert ref.state_at(0, 65) == chaos.INVALID  # diffs after a gap are buffered, not applied
    assert ref.state_at(0, 70) == ref.state_at(0, 80) == chaos.VALID  # 121-125 bridges 122
    assert ref.state_at(1, 80) == chaos.INVALID  # the other symbol never had a snapshot


def test_reference_waits_for_a_snapshot_the_buffer_bridges_and_skips_stale_and_duplicate_diffs():
    ref = chaos.SyncReference(1)
    ref.feed(md(diff(0, 200, 210, 10), snap(0, 150, 20)))  # buffered diffs start past L+1: no bridge
    assert ref.state_at(0, 20) == chaos.INVALID
    ref.feed(md(diff(0, 211, 215, 30), snap(0, 212, 40), diff(0, 216, 220, 50), diff(0, 216, 220, 60),
                diff(0, 200, 205, 70), diff(0, 221, 222, 80)))
    assert ref.state_at(0, 40) == ref.state_at(0, 80) == chaos.VALID  # duplicates and stale diffs change nothing
    assert ref.gaps == 0


def test_reference_goes_invalid_on_a_reconnect_and_unknown_when_the_monitor_lost_records():
    ref = chaos.SyncReference(1)
    ref.feed(md(snap(0, 10, 10), diff(0, 11, 12, 20), (R.MD_STATUS, 0, 0, 0, 30, R.STATUS_RECONNECTED)))
    assert ref.state_at(0, 20) == chaos.VALID and ref.state_at(0, 30) == chaos.INVALID
    ref.feed(md(snap(0, 40, 40)))
    assert ref.state_at(0, 45) == chaos.VALID
    ref.lost(50)
    ref.feed(md(diff(0, 60, 61, 60)))
    assert ref.state_at(0, 55) == chaos.UNKNOWN and ref.state_at(0, 60) == chaos.UNKNOWN
    ref.feed(md(snap(0, 60, 70)))
    assert ref.state_at(0, 70) == chaos.VALID


# --- orders traced to their book --------------------------------------------------------------------------
def tops(*rows):
    """book records from (symbol, state, pub_ns, in_pub_ns); all BK_TOP, seq = index."""
    a = np.zeros(len(rows), R.BOOK_EVENT)
    for i, (sym, state, pub, inpub) in enumerate(rows):
        a[i]["kind"], a[i]["symbol"], a[i]["state"] = R.BK_TOP, sym, state
        a[i]["pub_ns"], a[i]["in_pub_ns"] = pub, inpub
    return a


def setup_book():
    book = chaos.BookTimeline(2)
    V, X = R.BOOK_VALID, R.BOOK_INVALID
    book.add(0, tops((0, V, 100, 10), (0, X, 200, 20), (1, V, 210, 21), (0, V, 300, 30), (0, V, 400, 40)))
    ref = chaos.SyncReference(2)
    ref.feed(md(snap(0, 5, 10), snap(1, 5, 10), diff(0, 6, 6, 15), diff(0, 8, 8, 20),  # gap at 20
                snap(0, 8, 30), diff(0, 20, 21, 40)))  # a gap at 40 the book stage missed (it says VALID)
    signals = {1: {"book_seq": 0}, 2: {"book_seq": 1}, 3: {"book_seq": 2}, 4: {"book_seq": 3}, 5: {"book_seq": 4}}
    orders = {c: {"signal_id": c, "symbol": 1 if c == 3 else 0, "pub_ns": 0, "origin": 0} for c in range(1, 6)}
    return book, ref, signals, orders


def test_an_order_decided_on_a_top_the_book_said_invalid_is_counted():
    book, ref, signals, orders = setup_book()
    r = chaos.orders_on_invalid_book({1, 2, 3, 4}, orders, signals, book, ref)
    assert r["invalid"] == 1 and r["by_book"] == 1 and r["checked"] == 4
    assert r["examples"][0]["cid"] == 2


def test_an_order_on_a_book_the_reference_proves_invalid_is_counted_even_when_the_book_said_valid():
    book, ref, signals, orders = setup_book()
    r = chaos.orders_on_invalid_book({5}, orders, signals, book, ref)
    assert (r["invalid"], r["by_book"], r["by_reference"]) == (1, 0, 1)


def test_orders_the_monitor_cannot_trace_are_unverified_never_clean():
    book, ref, signals, orders = setup_book()
    del signals[4]
    r = chaos.orders_on_invalid_book({4, 99}, orders, signals, book, ref)
    assert r["unverified"] == 2 and r["checked"] == 0 and r["invalid"] == 0
    lapped = chaos.BookTimeline(1)
    lapped.add(0, tops((0, R.BOOK_VALID, 100, 10)))
    lapped.lost(1, 3)  # the monitor never saw seqs 1-2: the order's own top (seq 2) hides there
    r = chaos.orders_on_invalid_book({1}, {1: orders[1]}, {1: {"book_seq": 2}}, lapped, None)
    assert r["unverified"] == 1 and r["invalid"] == 0


def test_an_order_without_a_signal_is_judged_by_the_book_at_its_decision_time():
    book, ref, signals, orders = setup_book()
    orders[6] = {"signal_id": 0, "symbol": 0, "pub_ns": 250, "origin": 1}
    orders[7] = {"signal_id": 0, "symbol": 0, "pub_ns": 350, "origin": 1}
    r = chaos.orders_on_invalid_book({6, 7}, orders, signals, book, ref)
    assert r["invalid"] == 1 and r["examples"][0]["cid"] == 6


def test_book_recovery_is_measured_from_the_fault_to_every_symbol_valid_again():
    book, *_ = setup_book()
    assert chaos.book_recovery_ms(book, [150], window_ns=100) == [(300 - 150) / 1e6]
    assert chaos.book_recovery_ms(book, [320], window_ns=100) == []  # nothing went invalid after it


# --- journal against venue, segments ------------------------------------------------------------------------
def fill(tid, buy=True, qty="0.001", px="30000", fee="0.000001", base=True, sym="BTCUSDT"):
    return {"symbol": sym, "trade_id": tid, "buy": buy, "qty": Decimal(qty), "px": Decimal(px),
            "commission": Decimal(fee), "fee_in_base": base}


def test_the_journal_agreeing_with_the_venue_has_no_mismatch_and_each_kind_of_drift_is_found():
    venue = [fill(1), fill(2, buy=False, base=False, fee="0.03")]
    assert chaos.fill_mismatches(list(venue), venue)["total"] == 0
    missing = chaos.fill_mismatches(venue[:1], venue)
    assert missing["missing"] == 1 and "BTCUSDT" in missing["positions"]
    extra = chaos.fill_mismatches(venue + [fill(3)], venue)
    assert extra["extra"] == 1 and extra["positions"]["BTCUSDT"]["journal"] != extra["positions"]["BTCUSDT"]["venue"]
    wrong = chaos.fill_mismatches([fill(1, px="30001"), venue[1]], venue)
    assert wrong["different"] == 1 and wrong["positions"] == {}  # a price is not a position


def test_a_base_asset_commission_reduces_the_position():
    assert chaos.base_position([fill(1, qty="0.01", fee="0.00001")]) == Decimal("0.00999")
    assert chaos.base_position([fill(1, qty="0.01", fee="0.3", base=False)]) == Decimal("0.01")


def test_segments_left_lists_only_the_instances_own_entries(tmp_path):
    for n in ("ringtrader.cx1.md", "ringtrader.cx1.book", "ringtrader.cx10.md", "other.cx1.md"):
        (tmp_path / n).write_bytes(b"")
    assert chaos.segments_left("cx1", str(tmp_path)) == ["ringtrader.cx1.book", "ringtrader.cx1.md"]
    assert chaos.segments_left("cx2", str(tmp_path)) == []


def test_a_run_passes_only_when_it_traded_and_every_count_is_zero():
    ok = chaos.RunResult("x", orders=5)
    assert chaos.verdict(ok) == []
    assert chaos.verdict(chaos.RunResult("x")) == ["no order reached the venue"]
    for k in ("duplicates", "orders_on_invalid_book", "position_mismatches", "segments_left", "supervisor_crashes",
              "unexpected_restarts"):
        assert chaos.verdict(chaos.RunResult("x", orders=5, **{k: 1})) == [f"{k}=1"]
    assert chaos.verdict(chaos.RunResult("x", orders=5, recovery_ms=[float("inf")])) == ["never recovered"]
    # a fault that never happened proves nothing either
    assert chaos.verdict(chaos.RunResult("x", orders=5, evidence={"gaps": True, "book saw": False})) == \
        ["fault not seen: book saw"]
    d = chaos.scenario_dict("x", [ok])
    assert d["pass"] and all(k in d for k in chaos.REQUIRED_KEYS)


@pytest.mark.timeout(900)  # a cold numba cache (RINGTRADER_TEST_NO_WARM=1) is compiled by chaos.py first
def test_one_real_scenario_runs_end_to_end_and_reports_the_required_figures(tmp_path):
    """The shortest scenario through the real harness (a simulator, a supervisor trading against it, the ring
    monitor, the venue's records, the journal): it passes, it traded, the JSON has every required key."""
    import json
    import os
    import subprocess

    out = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGTRADER__")}
    p = subprocess.run([sys.executable, str(SCRIPTS / "chaos.py"), "--quick", "--scenario", "order_timeouts",
                        "--param", "order_timeouts.rounds=1", "--json", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=840)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (sc,) = json.loads(out.read_text())["scenarios"]
    assert sc["scenario"] == "order_timeouts" and sc["pass"] and sc["orders"] > 0
    assert all(k in sc for k in chaos.REQUIRED_KEYS)
    assert sc["detail"][0]["evidence"] == {"unknown outcomes": True}
