"""scripts/report.py: the execution journal in figures.

What a user relies on: on a crafted journal the orders by state and origin,
denials by reason, fills, P&L per method (equal to a hand computation of
core/pnl.py's rules), slippage and order-to-ack latency are the numbers
worked out here by hand; duplicate client ids are reported (exit 3); a
missing, foreign or corrupt journal is one message and exit 2, never a
traceback.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import report  # noqa: E402  (configures the numba cache before numba loads)

from core.fixedpoint import to_fixed  # noqa: E402
from core.records import (  # noqa: E402
    EX_NEW,
    EX_REJECTED,
    EX_TRADE,
    EXEC_REPORT,
    ORD_DENIED,
    ORD_NEW,
    ORDER_REQUEST,
    ORIGIN_STOP,
    ORIGIN_STRATEGY,
    OS_FILLED,
    OS_NEW,
    OS_REJECTED,
    SIDE_BUY,
    SIDE_SELL,
    concat_records,
)
from core.risk_kernels import D_MAX_POSITION, D_SLIPPAGE  # noqa: E402
from processes.journal import IdReserver, Journal  # noqa: E402

F = to_fixed
MS = 1_000_000  # ns


def order(cid, side, qty, ref, est, decided_ns, *, sym=0, action=ORD_NEW, reason=0, origin=ORIGIN_STRATEGY,
          signal_id=0):
    r = np.zeros(1, ORDER_REQUEST)
    r["client_order_id"] = cid
    r["action"] = action
    r["symbol"] = sym
    r["side"] = side
    r["qty"] = F(qty)
    r["price"] = F(ref)
    r["ref_px"] = F(ref)
    r["est_slip_bps"] = est
    r["pub_ns"] = decided_ns
    r["reason"] = reason
    r["origin"] = origin
    r["order_type"] = 1
    r["tif"] = 1
    r["signal_id"] = signal_id
    return r


def rep(cid, et, status, pub_ns, *, sym=0, side=SIDE_BUY, px="0", qty="0", trade_id=-1, commission="0", asset=0,
        reject=0, exch_ms=0):
    r = np.zeros(1, EXEC_REPORT)
    r["client_order_id"] = cid
    r["exec_type"] = et
    r["status"] = status
    r["pub_ns"] = pub_ns
    r["symbol"] = sym
    r["side"] = side
    r["last_px"] = F(px)
    r["last_qty"] = r["cum_qty"] = F(qty)
    r["trade_id"] = trade_id
    r["commission"] = F(commission)
    r["commission_asset"] = asset
    r["reject_code"] = reject
    r["exch_ms"] = exch_ms
    r["order_id"] = cid * 10
    return r


def craft(path: Path) -> None:
    """Seven orders (five filled, one rejected, one never answered), three denials, one duplicate trade report."""
    with Journal(path, instance="rp", symbols=["BTCUSDT", "ETHUSDT"]) as j, IdReserver(j, "rp", block=10) as ids:
        cids = [ids.next_id() for _ in range(7)]
        assert cids == list(range(1, 8))
        nan = math.nan
        j.record_orders(concat_records([
            order(1, SIDE_BUY, "1", "99", 50.0, 1 * MS),
            order(2, SIDE_BUY, "1", "110", nan, 10 * MS),
            order(3, SIDE_SELL, "1.5", "121", 80.0, 20 * MS, origin=ORIGIN_STOP),
            order(4, SIDE_BUY, "2", "10", 1.0, 30 * MS, sym=1),
            order(5, SIDE_SELL, "1", "12", 1.0, 40 * MS, sym=1),
            order(6, SIDE_BUY, "1", "100", nan, 50 * MS),
            order(7, SIDE_BUY, "1", "100", nan, 70 * MS),
            order(0, SIDE_BUY, "1", "100", nan, 80 * MS, action=ORD_DENIED, reason=D_MAX_POSITION, signal_id=1),
            order(0, SIDE_BUY, "1", "100", nan, 81 * MS, action=ORD_DENIED, reason=D_MAX_POSITION, signal_id=2),
            order(0, SIDE_BUY, "1", "100", 99.0, 82 * MS, action=ORD_DENIED, reason=D_SLIPPAGE, signal_id=3),
        ], ORDER_REQUEST))
        j.record_sent(1, 1 * MS + 200_000)
        j.record_reports(concat_records([
            rep(1, EX_NEW, OS_NEW, 2 * MS),
            rep(1, EX_TRADE, OS_FILLED, 2 * MS + 500_000, px="100", qty="1", trade_id=1, commission="0.1",
                exch_ms=1),
            rep(2, EX_TRADE, OS_FILLED, 12 * MS, px="110", qty="1", trade_id=2, commission="0.11", exch_ms=2),
            rep(3, EX_TRADE, OS_FILLED, 23 * MS, side=SIDE_SELL, px="120", qty="1.5", trade_id=3, commission="0.18",
                exch_ms=3),
            rep(3, EX_TRADE, OS_FILLED, 24 * MS, side=SIDE_SELL, px="120", qty="1.5", trade_id=3, commission="0.18",
                exch_ms=3),  # the venue sent it twice
            rep(4, EX_TRADE, OS_FILLED, 34 * MS, sym=1, px="10", qty="2", trade_id=1, commission="0.002", asset=1),
            rep(5, EX_TRADE, OS_FILLED, 45 * MS, sym=1, side=SIDE_SELL, px="12", qty="1", trade_id=2,
                commission="0.0001", asset=2),
            rep(6, EX_REJECTED, OS_REJECTED, 60 * MS, reject=-2010),
        ], EXEC_REPORT))


@pytest.fixture
def crafted(tmp_path) -> Path:
    p = tmp_path / "journal.db"
    craft(p)
    return p


def run_json(capsys, *argv) -> tuple[int, dict, str]:
    """(exit code, the JSON report, stderr)."""
    code = report.main([*map(str, argv), "--json"])
    cap = capsys.readouterr()
    return code, json.loads(cap.out), cap.err


def test_orders_fills_and_checks_of_a_crafted_journal(crafted, capsys):
    code, r, err = run_json(capsys, "--journal", crafted)
    assert code == 0
    assert r["journal"]["integrity"] == "ok"
    o = r["orders"]
    assert o["by_state"] == {"NEW": {"FILLED": 5, "REJECTED": 1, "INTENT": 1}, "DENIED": {"DENIED": 3}}
    assert o["by_origin"] == {"STOP": {"NEW": 1}, "STRATEGY": {"DENIED": 3, "NEW": 6}}
    assert o["denials"] == {"max_position": 2, "slippage": 1}
    assert (o["sent"], o["open"], o["rejects"]) == (6, 1, {"-2010": 1})
    f = r["fills"]
    assert (f["count"], f["duplicate_reports_ignored"]) == (5, 1)
    assert f["by_symbol"]["BTCUSDT"] == {"fills": 3, "bought": "2.00000000", "sold": "1.50000000", "maker": 0,
                                         "commission": {"QUOTE": "0.39000000"}}
    assert f["by_symbol"]["ETHUSDT"]["commission"] == {"BASE": "0.00200000", "OTHER": "0.00010000"}
    c = r["checks"]
    assert c["duplicate_client_ids"] == 0
    assert c["instances"] == {"rp": {"id_high_water": 11, "max_journaled_id": 7, "unreserved_ids": 0,
                                     "reserved_unjournaled": 3}}


@pytest.mark.parametrize("method, gross, net, entry", [
    ("fifo", "25.00000000", "24.61000000", "110.00000000"),  # closes 1 @100 then 0.5 @110
    ("lifo", "20.00000000", "19.61000000", "100.00000000"),  # closes 1 @110 then 0.5 @100
    ("average", "22.50000000", "22.11000000", "105.00000000"),  # 1.5 x (120 - 105)
])
def test_pnl_per_method_equals_the_hand_computation(crafted, capsys, method, gross, net, entry):
    code, r, err = run_json(capsys, "--journal", crafted, "--method", method)
    assert code == 0 and r["method"] == method
    btc = r["pnl"]["BTCUSDT"]
    assert (btc["position"], btc["realized_gross"], btc["fees_quote"], btc["realized_net"], btc["avg_entry"]) == \
        ("0.50000000", gross, "0.39000000", net, entry)
    eth = r["pnl"]["ETHUSDT"]
    # buy 2 @10 paying 0.002 ETH (position 1.998, fee 0.02 USDT), sell 1 @12 paying 0.0001 BNB-like (unpriced)
    assert (eth["position"], eth["realized_gross"], eth["fees_quote"], eth["realized_net"]) == \
        ("0.99800000", "2.00000000", "0.02000000", "1.98000000")
    assert eth["fees"] == {"ETH": "0.00200000", "OTHER": "0.00010000"} and eth["fees_unpriced"] == ["OTHER"]


def test_slippage_and_latency_statistics(crafted, capsys):
    _, r, err = run_json(capsys, "--journal", crafted)
    s = r["slippage_bps"]
    per_fill = [1e4 / 99, 0.0, 1e4 / 121, 0.0, 0.0]  # buy 100 vs 99; 110 vs 110; sell 120 vs 121; ETH at ref
    assert s["fills_vs_ref"]["n"] == 5
    assert s["fills_vs_ref"]["mean"] == pytest.approx(statistics.fmean(per_fill))
    assert s["fills_vs_ref"]["median"] == 0.0
    assert s["fills_vs_ref"]["p90"] == pytest.approx(1e4 / 99)
    vs_est = [1e4 / 99 - 50, 1e4 / 121 - 80, -1.0, -1.0]  # order 2 has no estimate (NaN)
    e = s["orders_vs_estimate"]
    assert e["n"] == 4
    assert e["mean"] == pytest.approx(statistics.fmean(vs_est))
    assert e["median"] == pytest.approx((-1.0 + 1e4 / 121 - 80) / 2)
    assert e["p90"] == pytest.approx(1e4 / 99 - 50)
    lat = r["latency"]["order_to_ack_ms"]  # acks 1, 2, 3, 4, 5 and (the reject) 10 ms after the decision
    assert lat == {"n": 6, "p50": 3.0, "p90": 10.0, "p99": 10.0}
    assert r["latency"]["send_to_ack_ms"] == {"n": 1, "p50": 0.8, "p90": 0.8, "p99": 0.8}


def test_text_report_has_every_section(crafted, capsys):
    assert report.main(["--journal", str(crafted), "--method", "lifo"]) == 0
    out = capsys.readouterr().out
    for needle in ("orders", "denials     max_position 2, slippage 1", "fills 5 (duplicate reports ignored 1",
                   "pnl (lifo)", "realized_gross 20.00000000 USDT", "order vs estimate", "order to ack",
                   "p50 3.000", "duplicate client ids  0"):
        assert needle in out, needle


def test_duplicate_client_ids_are_reported_and_exit_3(crafted, capsys):
    with Journal(crafted, instance="rp") as j:
        j.record_orders(order(1, SIDE_BUY, "9", "99", 1.0, 999 * MS))  # id 1 again, another order
    code, r, err = run_json(capsys, "--journal", crafted)
    assert code == 3 and r["checks"]["duplicate_client_ids"] == 1
    assert "duplicate client order id" in err


def _bad(capsys, path) -> str:
    assert report.main(["--journal", str(path)]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and "Traceback" not in cap.err
    return cap.err


def test_missing_foreign_and_garbage_files_exit_2(tmp_path, capsys):
    assert "no such file" in _bad(capsys, tmp_path / "nope.db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(16384))
    assert "not a journal, or corrupt" in _bad(capsys, garbage)
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE x (y)")
    con.close()
    assert "not a ringtrader journal" in _bad(capsys, foreign)
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert "not a journal" in _bad(capsys, empty)


def test_a_journal_with_damaged_pages_exits_2(crafted, capsys):
    with Journal(crafted, instance="rp") as j:  # enough rows for several pages
        for k in range(20):
            j.record_orders(concat_records([order(100 + k * 50 + i, SIDE_BUY, "1", "100", 1.0, (k * 50 + i) * MS)
                                            for i in range(50)], ORDER_REQUEST))
    assert not Path(str(crafted) + "-wal").exists() or Path(str(crafted) + "-wal").stat().st_size == 0
    size = crafted.stat().st_size
    with open(crafted, "r+b") as fh:  # keep the header page, scribble over the rest
        fh.seek(4096)
        fh.write(bytes((i * 37 + 11) % 256 for i in range(size - 4096)))
    err = _bad(capsys, crafted)
    assert "journal" in err and ("malformed" in err or "integrity" in err or "corrupt" in err)


def test_the_command_line_exits_2_on_a_corrupt_journal(tmp_path):
    garbage = tmp_path / "j.db"
    garbage.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    p = subprocess.run([sys.executable, str(SCRIPTS / "report.py"), "--journal", str(garbage)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("report: journal ") and "Traceback" not in p.stderr
