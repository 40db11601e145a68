"""processes/journal.py: the execution journal (SQLite, WAL) and client order id reservation.

What a user relies on: every intent, denial, send, ack, fill, cancel and
reject is journaled with its times; a duplicate or re-ordered report never
double-counts a fill nor moves an order back; a client order id is never
handed out twice, across restarts, concurrent reservers and a kill -9 in the
middle of writing; after that kill the journal opens cleanly with every
committed batch in it; the ring consumer journals what passes through the
rings and never holds their slots while it writes.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from core.fixedpoint import to_fixed
from core.pnl import COMM_BASE, PnlBook
from core.records import (
    EX_CANCELED,
    EX_NEW,
    EX_REJECTED,
    EX_TRADE,
    EXEC_REPORT,
    MD_EVENT,
    ORD_CANCEL,
    ORD_CANCEL_ALL,
    ORD_DENIED,
    ORD_NEW,
    ORDER_REQUEST,
    ORIGIN_KILL,
    ORIGIN_STOP,
    ORIGIN_STRATEGY,
    OS_CANCELED,
    OS_FILLED,
    OS_NEW,
    OS_PARTIALLY_FILLED,
    OS_REJECTED,
    OT_LIMIT,
    OT_MARKET,
    SIDE_BUY,
    SIDE_SELL,
    TIF_GTC,
    TIF_IOC,
    concat_records,
)
from core.risk_kernels import D_MAX_POSITION, D_SLIPPAGE
from processes.journal import (
    SCHEMA_VERSION,
    IdReserver,
    Journal,
    JournalError,
    JournalWriter,
    client_order_id_str,
    parse_client_order_id,
)
from ringbuffers.ring import Ring, segment_name

ROOT = Path(__file__).resolve().parents[2]
INST = "tj"
SYMBOLS = ["BTCUSDT", "ETHUSDT"]
F = to_fixed


# ---------------------------------------------------------------------------
# Crafted records
# ---------------------------------------------------------------------------
def order(cid, *, action=ORD_NEW, sym=0, side=SIDE_BUY, px="100", qty="1", ref="100", est=math.nan, pub_ns=1000,
          origin=ORIGIN_STRATEGY, reason=0, orig=0, otype=OT_LIMIT, tif=TIF_GTC, signal_id=7, recv_ns=900):
    r = np.zeros(1, ORDER_REQUEST)
    r["client_order_id"] = cid
    r["orig_client_order_id"] = orig
    r["action"] = action
    r["symbol"] = sym
    r["side"] = side
    r["price"] = F(px)
    r["qty"] = F(qty)
    r["ref_px"] = F(ref)
    r["est_slip_bps"] = est
    r["pub_ns"] = pub_ns
    r["recv_ns"] = recv_ns
    r["in_pub_ns"] = recv_ns + 50
    r["origin"] = origin
    r["reason"] = reason
    r["order_type"] = otype
    r["tif"] = tif
    r["signal_id"] = signal_id
    return r


def report(cid, et, status, *, sym=0, side=SIDE_BUY, px="0", qty="0", cum="0", cum_quote="0", trade_id=-1,
           pub_ns=2000, exch_ms=1_700_000_000_000, commission="0", asset=0, maker=0, order_id=555, reject=0):
    r = np.zeros(1, EXEC_REPORT)
    r["client_order_id"] = cid
    r["exec_type"] = et
    r["status"] = status
    r["symbol"] = sym
    r["side"] = side
    r["last_px"] = F(px)
    r["last_qty"] = F(qty)
    r["cum_qty"] = F(cum)
    r["cum_quote"] = F(cum_quote)
    r["trade_id"] = trade_id
    r["pub_ns"] = pub_ns
    r["exch_ms"] = exch_ms
    r["commission"] = F(commission)
    r["commission_asset"] = asset
    r["is_maker"] = maker
    r["order_id"] = order_id
    r["reject_code"] = reject
    return r


def orders(*rows):
    return concat_records(rows, ORDER_REQUEST)


def reports(*rows):
    return concat_records(rows, EXEC_REPORT)


def lifecycle(cid=1):
    """A buy of 1 at limit 100: ack, a partial fill of 0.4 at 100, the rest at 99.5."""
    return [
        report(cid, EX_NEW, OS_NEW, pub_ns=2000),
        report(cid, EX_TRADE, OS_PARTIALLY_FILLED, px="100", qty="0.4", cum="0.4", cum_quote="40", trade_id=11,
               pub_ns=3000, commission="0.04"),
        report(cid, EX_TRADE, OS_FILLED, px="99.5", qty="0.6", cum="1", cum_quote="99.7", trade_id=12, pub_ns=4000,
               commission="0.0597", maker=1),
    ]


@pytest.fixture
def jpath(tmp_path) -> Path:
    return tmp_path / "journal" / "orders.db"


@pytest.fixture
def journal(jpath):
    j = Journal(jpath, instance=INST, symbols=SYMBOLS)
    yield j
    j.close()


def order_row(j: Journal, cid: str) -> dict:
    cols = [r[1] for r in j.query("PRAGMA table_info(orders)")]
    rows = j.query("SELECT * FROM orders WHERE client_order_id = ?", (cid,))
    assert len(rows) == 1, f"{cid}: {len(rows)} rows"
    return dict(zip(cols, rows[0]))


def fill_rows(j: Journal) -> list[tuple]:
    return j.query("SELECT symbol, trade_id, client_order_id, px, qty, commission, is_maker FROM fills "
                   "ORDER BY symbol, trade_id")


# ---------------------------------------------------------------------------
# Schema and writes
# ---------------------------------------------------------------------------
def test_new_journal_is_versioned_wal_with_the_four_tables(journal, jpath):
    assert journal.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    assert journal.query("PRAGMA journal_mode")[0][0] == "wal"
    assert journal.query("PRAGMA synchronous")[0][0] == 1  # NORMAL for the journal's own writes
    tables = {r[0] for r in journal.query("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    assert {"orders", "fills", "events", "meta", "v_orders", "v_fills"} <= tables
    assert journal.integrity_check() == "ok"
    with IdReserver(journal, INST) as ids:
        assert ids._con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL for id reservations


def test_reopen_keeps_rows_and_symbols_and_refuses_a_newer_schema(jpath):
    with Journal(jpath, instance=INST, symbols=SYMBOLS) as j:
        j.record_orders(order(1, sym=1))
    with Journal(jpath, create=False) as j:  # a reader: names from meta
        assert j.symbols == {0: "BTCUSDT", 1: "ETHUSDT"}
        assert j.query("SELECT symbol FROM orders")[0][0] == "ETHUSDT"
    con = sqlite3.connect(jpath)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(JournalError, match="newer"):
        Journal(jpath, create=False)


def test_missing_garbage_and_foreign_databases_are_journal_errors(tmp_path):
    with pytest.raises(JournalError, match="no such file"):
        Journal(tmp_path / "none.db", create=False)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(JournalError, match="not a journal, or corrupt"):
        Journal(garbage, create=False)
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE t (x)")
    con.close()
    with pytest.raises(JournalError, match="not a ringtrader journal"):
        Journal(foreign, instance=INST)


def test_intents_cancels_and_denials_are_journaled_with_names_times_and_decimal_views(journal):
    n = journal.record_orders(orders(
        order(1, px="42999.8", qty="0.015", ref="43000", est=1.25, pub_ns=1000, recv_ns=900),
        order(2, action=ORD_CANCEL, orig=1, pub_ns=1100, origin=ORIGIN_STOP),
        order(3, action=ORD_CANCEL_ALL, sym=0xFFFF, side=0, pub_ns=1200, origin=ORIGIN_KILL),
        order(0, action=ORD_DENIED, side=SIDE_SELL, reason=D_SLIPPAGE, est=35.0, pub_ns=1300, signal_id=8),
        order(0, action=0, pub_ns=1400),  # a trace probe: not journaled
    ))
    assert n == 4
    o = order_row(journal, "tj-1")
    assert (o["action"], o["state"], o["symbol"], o["side"], o["type"], o["tif"], o["origin"]) == \
        ("NEW", "INTENT", "BTCUSDT", "BUY", "LIMIT", "GTC", "STRATEGY")
    assert (o["price"], o["qty"], o["ref_px"], o["est_slip_bps"]) == (F("42999.8"), F("0.015"), F("43000"), 1.25)
    assert (o["recv_ns"], o["signal_pub_ns"], o["decided_ns"], o["cid"], o["instance"]) == (900, 950, 1000, 1, INST)
    c = order_row(journal, "tj-2")
    assert (c["action"], c["orig_client_order_id"], c["origin"]) == ("CANCEL", "tj-1", "STOP")
    assert order_row(journal, "tj-3")["symbol"] == "*"
    d = journal.query("SELECT action, state, reason, reason_name, side, est_slip_bps, client_order_id FROM orders "
                      "WHERE action = 'DENIED'")
    assert d == [("DENIED", "DENIED", D_SLIPPAGE, "slippage", "SELL", 35.0, None)]
    assert journal.query("SELECT price, qty FROM v_orders WHERE client_order_id = 'tj-1'") == \
        [("42999.80000000", "0.01500000")]
    kinds = [(e["kind"], e["client_order_id"], e["raw"]["pub_ns"]) for e in journal.events()]
    assert kinds == [("intent", "tj-1", 1000), ("cancel", "tj-2", 1100), ("cancel_all", "tj-3", 1200),
                     ("denied", None, 1300)]


def test_record_orders_twice_changes_nothing(journal):
    batch = orders(order(1), order(2, pub_ns=1001), order(0, action=ORD_DENIED, reason=D_MAX_POSITION))
    assert journal.record_orders(batch) == 3
    assert journal.record_orders(batch) == 0
    assert journal.query("SELECT count(*) FROM orders")[0][0] == 3
    assert journal.query("SELECT count(*) FROM events")[0][0] == 3
    assert journal.duplicate_client_ids() == 0


def test_a_second_different_order_under_a_used_id_is_counted_as_a_duplicate(journal):
    journal.record_orders(order(5, px="100", pub_ns=1000))
    journal.record_orders(order(5, px="101", pub_ns=2000))
    assert journal.duplicate_client_ids() == 1
    assert order_row(journal, "tj-5")["price"] == F("100")  # the first one kept
    assert [e["note"] for e in journal.events("tj-5")] == [None, "duplicate_cid"]


def test_a_lifecycle_moves_the_order_and_journals_fills_times_and_slippage(journal):
    journal.record_orders(order(1, px="100", qty="1", ref="99.8", est=2.0, pub_ns=1000))
    journal.record_sent(1, 1500)
    assert order_row(journal, "tj-1")["state"] == "SENT"
    assert journal.record_reports(reports(*lifecycle())) == 3
    o = order_row(journal, "tj-1")
    assert (o["state"], o["cum_qty"], o["cum_quote"], o["order_id"]) == ("FILLED", F("1"), F("99.7"), 555)
    assert (o["sent_ns"], o["ack_ns"], o["final_ns"], o["reports"]) == (1500, 2000, 4000, 3)
    assert fill_rows(journal) == [("BTCUSDT", 11, "tj-1", F("100"), F("0.4"), F("0.04"), 0),
                                  ("BTCUSDT", 12, "tj-1", F("99.5"), F("0.6"), F("0.0597"), 1)]
    slips = [r[0] for r in journal.query("SELECT slip_bps FROM fills ORDER BY trade_id")]
    assert slips == pytest.approx([(100 - 99.8) / 99.8 * 1e4, (99.5 - 99.8) / 99.8 * 1e4])
    assert journal.query("SELECT quote FROM fills ORDER BY trade_id") == [(F("40"),), (F("59.7"),)]
    assert journal.last_trade_id("BTCUSDT") == 12 and journal.last_trade_id("ETHUSDT") is None
    assert journal.open_orders() == [] and journal.orders_sent_count() == 1
    assert [e["kind"] for e in journal.events("tj-1")] == ["intent", "send", "ack", "fill", "fill"]


def test_sell_slippage_is_positive_when_we_got_less_than_the_reference(journal):
    journal.record_orders(order(1, side=SIDE_SELL, ref="100", otype=OT_MARKET, tif=TIF_IOC))
    journal.record_reports(report(1, EX_TRADE, OS_FILLED, side=SIDE_SELL, px="99.9", qty="1", cum="1", trade_id=3))
    assert journal.query("SELECT slip_bps FROM fills")[0][0] == pytest.approx(10.0)


def _final_state(j: Journal):
    o = order_row(j, "tj-1")
    return (o["state"], o["cum_qty"], o["cum_quote"], o["ack_ns"], o["final_ns"], o["order_id"]), fill_rows(j)


def test_duplicate_and_reordered_reports_never_double_count(tmp_path):
    base = lifecycle()
    with Journal(tmp_path / "ref.db", instance=INST, symbols=SYMBOLS) as ref:
        ref.record_orders(order(1))
        ref.record_reports(reports(*base))
        want = _final_state(ref)
        want_pos = ref.positions("fifo")
    rng = random.Random(7)
    for k in range(12):
        seq = base + [rng.choice(base) for _ in range(3)]  # duplicates, as the venue may send them
        rng.shuffle(seq)
        with Journal(tmp_path / f"shuffled{k}.db", instance=INST, symbols=SYMBOLS) as j:
            cut = rng.randrange(len(seq) + 1)
            j.record_reports(reports(*seq[:cut]))  # reports first (the rings are read one after the other) ...
            j.record_orders(order(1))  # ... then the intent
            j.record_reports(reports(*seq[cut:]))
            j.record_reports(reports(*seq))  # and the whole lot once more
            assert _final_state(j) == want, seq
            assert j.positions("fifo") == want_pos
            notes = [e["note"] for e in j.events() if e["kind"] == "fill"]
            assert notes.count(None) == 2  # exactly two fills counted; every other trade report is a duplicate
            assert j.counters["fills"] == 2
            slips = [r[0] for r in j.query("SELECT slip_bps FROM fills")]
            assert all(s is not None for s in slips)  # backfilled when the intent arrived after its fills


def test_a_late_report_never_moves_an_order_back(journal):
    journal.record_orders(order(1))
    journal.record_reports(reports(report(1, EX_CANCELED, OS_CANCELED, pub_ns=5000, cum="0.4", cum_quote="40"),
                                   report(1, EX_NEW, OS_NEW, pub_ns=2000),
                                   report(1, EX_TRADE, OS_PARTIALLY_FILLED, px="100", qty="0.4", cum="0.4",
                                          cum_quote="40", trade_id=11, pub_ns=3000)))
    o = order_row(journal, "tj-1")
    assert (o["state"], o["cum_qty"], o["ack_ns"]) == ("CANCELED", F("0.4"), 2000)  # earliest answer is the ack
    assert journal.query("SELECT count(*) FROM fills")[0][0] == 1  # the late fill still counts once


def test_fills_are_unique_by_symbol_and_trade_id(journal):
    journal.record_orders(orders(order(1, sym=0), order(2, sym=1, pub_ns=1001)))
    journal.record_reports(reports(
        report(1, EX_TRADE, OS_PARTIALLY_FILLED, sym=0, px="100", qty="0.1", cum="0.1", trade_id=42),
        report(2, EX_TRADE, OS_PARTIALLY_FILLED, sym=1, px="10", qty="0.1", cum="0.1", trade_id=42),  # other symbol
        report(1, EX_TRADE, OS_PARTIALLY_FILLED, sym=0, px="100", qty="0.1", cum="0.1", trade_id=42),  # duplicate
    ))
    assert [(r[0], r[1]) for r in fill_rows(journal)] == [("BTCUSDT", 42), ("ETHUSDT", 42)]
    con = sqlite3.connect(journal.path)
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("INSERT INTO fills (symbol, trade_id, px, qty, quote, commission, commission_asset, is_maker) "
                    "VALUES ('BTCUSDT', 42, 1, 1, 1, 0, 'QUOTE', 0)")
    con.close()


def test_a_successful_cancel_request_cancels_its_order_and_a_reject_keeps_its_code(journal):
    journal.record_orders(orders(order(1), order(2, action=ORD_CANCEL, orig=1, pub_ns=1100), order(3, pub_ns=1200)))
    journal.record_reports(reports(report(1, EX_NEW, OS_NEW), report(2, EX_CANCELED, OS_CANCELED, pub_ns=2500),
                                   report(3, EX_REJECTED, OS_REJECTED, reject=-2010, order_id=-1, pub_ns=2600)))
    assert order_row(journal, "tj-1")["state"] == "CANCELED"
    assert order_row(journal, "tj-2")["state"] == "CANCELED"
    r = order_row(journal, "tj-3")
    assert (r["state"], r["reject_code"], r["order_id"]) == ("REJECTED", -2010, None)
    assert journal.open_orders() == []


def test_open_orders_lists_what_the_journal_believes_is_at_the_venue(journal):
    journal.record_orders(orders(order(1), order(2, pub_ns=1001), order(3, pub_ns=1002), order(4, pub_ns=1003)))
    journal.record_sent_many([(2, 1500), (3, 1501), (4, 1502)])
    journal.record_reports(reports(report(3, EX_NEW, OS_NEW),
                                   report(4, EX_TRADE, OS_FILLED, px="100", qty="1", cum="1", trade_id=1)))
    assert [(o["client_order_id"], o["state"]) for o in journal.open_orders()] == [("tj-1", "INTENT"),
                                                                                   ("tj-2", "SENT"),
                                                                                   ("tj-3", "NEW")]
    assert journal.orders_sent_count() == 3


def test_positions_are_core_pnl_over_the_journaled_fills(journal):
    journal.record_orders(orders(order(1), order(2, side=SIDE_SELL, pub_ns=1001), order(3, sym=1, pub_ns=1002)))
    journal.record_reports(reports(
        report(1, EX_TRADE, OS_PARTIALLY_FILLED, px="100", qty="1", cum="1", trade_id=1, exch_ms=1, commission="0.1"),
        report(1, EX_TRADE, OS_FILLED, px="110", qty="1", cum="2", trade_id=2, exch_ms=2, commission="0.11"),
        report(2, EX_TRADE, OS_FILLED, side=SIDE_SELL, px="120", qty="1.5", cum="1.5", trade_id=3, exch_ms=3,
               commission="0.18"),
        report(3, EX_TRADE, OS_FILLED, sym=1, px="10", qty="2", cum="2", trade_id=1, commission="0.002", asset=1),
    ))
    want = {"fifo": (20 + 5, 110), "lifo": (10 + 10, 100), "average": (Fraction(45, 2), 105)}
    for method, (gross, entry) in want.items():
        btc = journal.positions(method)["BTCUSDT"]
        assert btc["position"] == Decimal("0.5")
        assert btc["realized_gross"] == gross
        assert btc["avg_entry"] == entry
        assert btc["realized_net"] == gross - Fraction(39, 100)
    eth = journal.positions("fifo")["ETHUSDT"]
    book = PnlBook(1, lot_capacity=4)
    book.apply_fill(0, SIDE_BUY, "10", "2", "0.002", COMM_BASE)
    assert eth == book.snapshot(0, "fifo")
    assert eth["position"] == Decimal("1.998")


def test_records_of_another_dtype_are_refused_by_name(journal):
    with pytest.raises(ValueError, match="EXEC_REPORT"):
        journal.record_orders(np.zeros(1, EXEC_REPORT))
    with pytest.raises(ValueError, match="MD_EVENT"):
        journal.record_reports(np.zeros(1, MD_EVENT))


# ---------------------------------------------------------------------------
# Client order ids
# ---------------------------------------------------------------------------
def test_client_order_id_wire_format_round_trips_and_fits_binance():
    s = client_order_id_str("rt-prod_1", 123456789)
    assert s == "rt-prod_1-123456789"
    assert parse_client_order_id(s) == ("rt-prod_1", 123456789)
    with pytest.raises(ValueError, match="36"):
        client_order_id_str("a" * 30, 10**9)
    for bad in ("x", "-5", "web_abc", "a-b-", "a b-1", "x" * 37):
        with pytest.raises(ValueError):
            parse_client_order_id(bad)
    with pytest.raises(ValueError):
        client_order_id_str("p", -1)


def test_id_reserver_is_monotonic_across_restarts(jpath):
    seen = []
    for _restart in range(4):
        with Journal(jpath, instance=INST) as j, IdReserver(j, INST, block=3) as ids:
            got = [ids.next_id() for _ in range(4)]
            assert got == sorted(got) and len(set(got)) == 4
            assert not seen or got[0] > max(seen)
            seen += got
            assert j.id_high_water() >= max(got) + 1
    assert seen[0] == 1


def test_two_reservers_on_one_journal_never_hand_out_the_same_id(jpath):
    Journal(jpath, instance=INST).close()
    a, b = IdReserver(jpath, INST, block=5), IdReserver(jpath, INST, block=5)
    got_a, got_b = [], []
    for i in range(40):
        (got_a if i % 3 else got_b).append((a if i % 3 else b).next_id())
    a.close()
    b.close()
    assert not set(got_a) & set(got_b)
    assert got_a == sorted(got_a) and got_b == sorted(got_b)


def test_a_floor_starts_a_new_journal_above_it_and_instances_count_separately(jpath):
    with IdReserver(jpath, "p1", block=10, floor=10**12) as a, IdReserver(jpath, "p2", block=10) as b:
        assert a.next_id() == 10**12
        assert b.next_id() == 1
        assert a.next_client_order_id() == f"p1-{10**12 + 1}"


# ---------------------------------------------------------------------------
# kill -9 in the middle of writing
# ---------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from core.records import ORDER_REQUEST, EXEC_REPORT, ORD_NEW, EX_NEW, OS_NEW
    from processes.journal import IdReserver, Journal

    path, tag = sys.argv[1], int(sys.argv[2])
    j = Journal(path, instance="crash", symbols=["BTCUSDT"])
    ids = IdReserver(j, "crash", block=7)
    print("ready", flush=True)
    k = 0
    while True:
        o = np.zeros(20, ORDER_REQUEST)
        got = []
        for i in range(20):
            got.append(ids.next_id())
            print(f"id {got[-1]}", flush=True)
        o["client_order_id"] = got
        o["action"] = ORD_NEW
        o["side"] = 1
        o["qty"] = 10**8
        o["pub_ns"] = time.monotonic_ns()
        o["signal_id"] = tag * 10**6 + k
        r = np.zeros(20, EXEC_REPORT)
        r["client_order_id"] = got
        r["exec_type"] = EX_NEW
        r["status"] = OS_NEW
        r["pub_ns"] = time.monotonic_ns()
        j.record_batch(o, [(c, time.monotonic_ns()) for c in got], r)
        print("batch " + ",".join(map(str, got)), flush=True)
        k += 1
""")


def _run_and_kill(path: Path, tag: int, batches: int) -> tuple[list[int], list[list[int]]]:
    """Start a child that reserves ids and journals batches; SIGKILL it after ``batches`` committed batches.
    Returns (every id it printed as handed out, the ids of every batch it printed as committed)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(tag)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    handed, committed = [], []
    try:
        deadline = time.monotonic() + 60
        while len(committed) < batches:
            line = p.stdout.readline()
            assert line, f"child ended early: {p.stderr.read()}"
            assert time.monotonic() < deadline, "child too slow"
            if line.startswith("id "):
                handed.append(int(line.split()[1]))
            elif line.startswith("batch "):
                committed.append([int(x) for x in line.split()[1].split(",")])
        time.sleep(random.Random(tag).uniform(0, 0.02))  # land anywhere in the write loop
        p.send_signal(signal.SIGKILL)
        rest = p.stdout.read()  # what it printed before it died
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        p.stdout.close()
        p.stderr.close()
    assert p.returncode == -signal.SIGKILL
    for line in rest.splitlines():
        if line.startswith("id "):
            handed.append(int(line.split()[1]))
        elif line.startswith("batch "):
            committed.append([int(x) for x in line.split()[1].split(",")])
    return handed, committed


def test_kill_9_mid_stream_loses_no_committed_batch_and_never_reuses_an_id(jpath):
    handed, committed = [], []
    for tag, batches in ((1, 30), (2, 50)):  # crash, restart on the same file, crash again
        h, c = _run_and_kill(jpath, tag, batches)
        assert not handed or min(h) > max(handed), "a restarted process reused an id"
        handed += h
        committed += c
    with Journal(jpath, instance="crash") as j:
        assert j.integrity_check() == "ok"
        assert j.duplicate_client_ids() == 0
        journaled = {r[0] for r in j.query("SELECT cid FROM orders WHERE decided_ns IS NOT NULL")}
        for batch in committed:
            assert set(batch) <= journaled, f"committed batch {batch} missing"
            for cid in batch:
                kinds = [e["kind"] for e in j.events(f"crash-{cid}")]
                assert kinds == ["intent", "send", "ack"]
        acked = {r[0] for r in j.query("SELECT cid FROM orders WHERE state = 'NEW' AND sent_ns IS NOT NULL")}
        assert journaled == acked  # batches are atomic: no order without its send and ack
        assert j.unreserved_ids() == 0
        with IdReserver(j, "crash", block=7) as ids:
            nxt = ids.next_id()
        assert nxt > max(handed) and nxt > max(journaled)


# ---------------------------------------------------------------------------
# The ring consumer
# ---------------------------------------------------------------------------
class Rings:
    def __init__(self, instance: str, capacity: int = 64):
        self.orders = Ring.create(segment_name(instance, "orders"), ORDER_REQUEST, capacity, 2)
        self.reports = Ring.create(segment_name(instance, "reports"), EXEC_REPORT, capacity, 2)

    def close(self):
        for r in (self.orders, self.reports):
            r.close()
            r.unlink()


def _publish_all(ring: Ring, recs: np.ndarray) -> None:
    done = 0
    deadline = time.monotonic() + 30
    while done < len(recs):
        done += ring.publish_batch(recs[done:done + 16])
        assert time.monotonic() < deadline, f"producer stuck at {done}/{len(recs)}: the consumer never released"


def test_writer_journals_everything_that_passes_a_small_ring_and_drains_on_stop(tmp_path, instance):
    rings = Rings(instance, capacity=64)
    j = Journal(tmp_path / "w.db", instance=INST, symbols=SYMBOLS)
    w = JournalWriter.attach(j, instance, orders_consumer=1, reports_consumer=1, batch=256, idle_s=0.001)
    risk_o = Ring.attach(segment_name(instance, "orders"), ORDER_REQUEST, 0)  # the other consumers: keep up
    risk_r = Ring.attach(segment_name(instance, "reports"), EXEC_REPORT, 0)
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    try:
        n = 3000  # ~50 laps of a 64-slot ring
        o = np.zeros(n, ORDER_REQUEST)
        o["client_order_id"] = np.arange(1, n + 1)
        o["action"] = ORD_NEW
        o["side"] = SIDE_BUY
        o["pub_ns"] = np.arange(n) + 10
        r = np.zeros(n, EXEC_REPORT)
        r["client_order_id"] = np.arange(1, n + 1)
        r["exec_type"] = EX_TRADE
        r["status"] = OS_FILLED
        r["trade_id"] = np.arange(n)
        r["last_px"] = F("100")
        r["last_qty"] = r["cum_qty"] = F("0.01")
        r["side"] = SIDE_BUY

        def drain_other():
            while not stop.is_set():
                for ring in (risk_o, risk_r):
                    ring.poll(64)
                    ring.release()
                time.sleep(0.0005)

        other = threading.Thread(target=drain_other)
        other.start()
        for k in range(0, n, 100):
            _publish_all(rings.orders, o[k:k + 100])
            _publish_all(rings.reports, r[k:k + 100])
            for c in range(k + 1, k + 101):
                w.note_sent(c, 5)
        stop.set()
        t.join(30)
        other.join(5)
        assert not t.is_alive()
        assert w.orders.lag() == 0 and w.reports.lag() == 0
        assert j.query("SELECT count(*), min(cid), max(cid) FROM orders WHERE state = 'FILLED' AND sent_ns = 5") == \
            [(n, 1, n)]
        assert j.query("SELECT count(*) FROM fills")[0][0] == n
        c = w.counters()
        assert (c["orders"], c["reports"], c["sent"], c["lost"], c["write_errors"], c["backlog"]) == (n, n, n, 0, 0, 0)
    finally:
        stop.set()
        t.join(5)
        w.close()
        risk_o.close()
        risk_r.close()
        j.close()
        rings.close()


def test_a_failing_disk_never_holds_the_rings_and_the_batch_is_retried(tmp_path, instance, monkeypatch):
    rings = Rings(instance, capacity=16)
    j = Journal(tmp_path / "f.db", instance=INST, symbols=SYMBOLS)
    w = JournalWriter.attach(j, instance, orders_consumer=1, reports_consumer=1, batch=8)
    others = [Ring.attach(segment_name(instance, name), dt, 0) for name, dt in (("orders", ORDER_REQUEST),
                                                                               ("reports", EXEC_REPORT))]
    real = j.record_batch
    failures = itertools.count()

    def flaky(*a, **k):
        if next(failures) < 5:
            raise JournalError("disk I/O error (simulated)")
        return real(*a, **k)

    monkeypatch.setattr(j, "record_batch", flaky)
    try:
        for k in range(5):  # while every write fails, the writer still frees the slots it read
            recs = orders(*[order(k * 8 + i + 1, pub_ns=k * 8 + i + 1) for i in range(8)])
            assert rings.orders.publish_batch(recs) == 8
            for o_ring in others:
                o_ring.poll(64)
                o_ring.release()
            w.step()
            assert w.orders.lag() == 0
        assert w.counters()["write_errors"] == 5 and w.counters()["backlog"] == 40
        w.step()  # the disk is back: the backlog goes in, in order
        assert w.counters()["backlog"] == 0
        assert [r[0] for r in j.query("SELECT cid FROM orders ORDER BY id")] == list(range(1, 41))
    finally:
        w.close()
        for r in others:
            r.close()
        j.close()
        rings.close()


def test_a_failing_disk_is_logged_once_per_period_not_once_per_retry(tmp_path, instance, monkeypatch, caplog):
    """Every step retries the failed batch (the writer steps every few ms): a full disk logged each attempt
    (scripts/chaos.py disk_full: ~150 error lines a second). Now: one line per ERROR_LOG_EVERY_S with the
    number of attempts, and one when writes succeed again."""
    import logging

    from processes import journal as jmod

    rings = Rings(instance, capacity=64)
    j = Journal(tmp_path / "g.db", instance=INST, symbols=SYMBOLS)
    w = JournalWriter.attach(j, instance, orders_consumer=1, reports_consumer=1, batch=8)
    real = j.record_batch
    disk = {"full": True}

    def full(*a, **k):
        if disk["full"]:
            raise JournalError("database or disk is full (simulated)")
        return real(*a, **k)

    monkeypatch.setattr(j, "record_batch", full)
    now = [1000.0]
    monkeypatch.setattr(jmod, "_clock", lambda: now[0])
    try:
        with caplog.at_level(logging.WARNING, logger=jmod.log.name):
            rings.orders.publish_batch(orders(order(1, pub_ns=1)))
            for _ in range(200):  # 200 retries within one period
                w.step()
                now[0] += 0.001
            now[0] += jmod.ERROR_LOG_EVERY_S
            w.step()  # the next period: one more line
            disk["full"] = False
            w.step()
        msgs = [r.getMessage() for r in caplog.records if r.name == jmod.log.name]
        assert len(msgs) == 3, msgs
        assert msgs[0].startswith("journal write failed") and "1 failed attempts" in msgs[0]
        assert "202 failed attempts" in msgs[1] or "201 failed attempts" in msgs[1]
        assert msgs[2].startswith("journal writes again")
        assert w.counters()["backlog"] == 0 and [r[0] for r in j.query("SELECT cid FROM orders")] == [1]
    finally:
        w.close()
        j.close()
        rings.close()


def test_a_batch_that_can_never_be_written_is_dropped_and_counted_and_journaling_goes_on(tmp_path, instance,
                                                                                      monkeypatch):
    rings = Rings(instance, capacity=16)
    j = Journal(tmp_path / "p.db", instance=INST, symbols=SYMBOLS)
    w = JournalWriter.attach(j, instance, orders_consumer=1, reports_consumer=1, batch=8)
    real = j.record_batch
    calls = itertools.count()

    def buggy(*a, **k):
        if next(calls) == 0:
            raise ValueError("a bug")
        return real(*a, **k)

    monkeypatch.setattr(j, "record_batch", buggy)
    try:
        for k in range(2):
            rings.orders.publish_batch(orders(*[order(k * 4 + i + 1, pub_ns=k * 4 + i + 1) for i in range(4)]))
            w.step()
        c = w.counters()
        assert (c["write_errors"], c["dropped"], c["batches"], c["backlog"]) == (1, 4, 1, 0)
        assert [r[0] for r in j.query("SELECT cid FROM orders ORDER BY id")] == [5, 6, 7, 8]
    finally:
        w.close()
        j.close()
        rings.close()


def test_records_are_released_only_once_committed_and_the_marks_say_how_far(tmp_path, instance):
    """A writer killed between its copy and its commit (here: a write that never happens) leaves the records in
    the ring for the next one; the committed seq is recorded with the batch, for the segment it came from."""
    rings = Rings(instance, capacity=16)
    j = Journal(tmp_path / "m.db", instance=INST, symbols=SYMBOLS)
    w = JournalWriter.attach(j, instance, orders_consumer=1, reports_consumer=1, batch=8)
    try:
        rings.orders.publish_batch(orders(*[order(i + 1, pub_ns=i + 1) for i in range(5)]))
        peeked, end = w.orders.peek(8)  # what a writer copies before its commit
        assert len(peeked) == 5 and end == 5 and w.orders.cursor == 0  # nothing released yet
        assert j.ring_mark("orders", rings.orders.token) is None
        w.step()
        assert w.orders.cursor == 5
        assert j.ring_mark("orders", rings.orders.token) == 5
        assert j.ring_mark("orders", "another-segment") is None  # a recreated ring is another segment
        assert j.ring_mark("reports", rings.reports.token) is None  # nothing committed from it yet
        snap = j.recovery({"orders": rings.orders.token, "reports": rings.reports.token}, cids=[1, 2, 99])
        assert snap["marks"] == {"orders": 5, "reports": None}
        assert set(snap["states"]) == {1, 2} and snap["states"][1] == (0, 0)
        assert [o["cid"] for o in snap["open_orders"]] == [1, 2, 3, 4, 5]
    finally:
        w.close()
        j.close()
        rings.close()


def test_epochs_scope_positions_open_orders_and_trade_ids_and_keep_one_baseline(tmp_path):
    j = Journal(tmp_path / "e.db", instance=INST, symbols=SYMBOLS)
    try:
        assert j.epoch()["n"] == 0 and j.epoch()["baseline"] is None
        j.record_orders(orders(order(1), order(2)))
        j.record_reports(reports(report(1, EX_TRADE, OS_FILLED, px="100", qty="1", cum="1", trade_id=7)))
        assert j.last_trade_id("BTCUSDT") == 7 and len(j.open_orders()) == 1
        assert j.set_baseline({"BTC": F("1")}) is True and j.set_baseline({"BTC": F("2")}) is False
        ep = j.new_epoch("a fresh simulator account")
        assert ep["n"] == 1 and ep["baseline"] is None
        # the new account: nothing of the old one is open, positioned, or a trade id to resume from
        assert j.open_orders() == [] and j.last_trade_id("BTCUSDT") is None
        assert j.positions(epoch=True) == {} and j.positions()["BTCUSDT"]["position"] == Decimal(1)
        assert len(j.open_orders(epoch=False)) == 1
        j.record_orders(orders(order(3, side=SIDE_SELL)))
        j.record_reports(reports(report(3, EX_TRADE, OS_FILLED, side=SIDE_SELL, px="101", qty="0.5", cum="0.5",
                                        trade_id=9)))
        assert j.positions(epoch=True)["BTCUSDT"]["position"] == Decimal("-0.5")
        assert j.last_trade_id("BTCUSDT") == 9
        assert j.set_baseline({"BTC": F("3")}) is True and j.epoch()["baseline"] == {"BTC": F("3")}
        snap = j.recovery({})
        assert [f["trade_id"] for f in snap["fills"]] == [9]
    finally:
        j.close()
