"""scripts/pnl_report.py: a Binance myTrades history in, positions and P&L out.

What a user relies on: the figures equal a hand / ``Fraction`` computation of
the documented rules for FIFO, LIFO and average (commissions in base, quote
and BNB, zero crossings, several symbols, unsorted input); JSON lines and a
JSON array give the same report; a bad line is skipped and counted, named on
stderr, and changes no figure (hostile input of every class); with
``--strict`` it is one message naming the line (or the symbol) and exit 2,
never a traceback.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import pnl_report  # noqa: E402  (configures the numba cache before numba loads)
from core.hostile import CLASSES  # noqa: E402

E8 = Fraction(1, 10**8)


T0_MS = 1_700_000_000_000  # trade times are real ones (the report refuses times before Binance opened)


def trade(symbol, tid, price, qty, commission, asset, time_ms, is_buyer):
    return {"symbol": symbol, "id": tid, "orderId": tid * 10, "price": price, "qty": qty,
            "quoteQty": str(Decimal(price) * Decimal(qty)), "commission": commission, "commissionAsset": asset,
            "time": T0_MS + time_ms, "isBuyer": is_buyer, "isMaker": False, "isBestMatch": True}


def write_lines(path: Path, trades) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in trades))
    return path


def report(capsys, *argv) -> dict:
    assert pnl_report.main([*map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def bad(capsys, *argv) -> str:
    """--strict: the first bad line is exit 2 (by default it is skipped: see the hostile-input tests)."""
    assert pnl_report.main([*map(str, argv), "--strict"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and "Traceback" not in cap.err
    return cap.err


def r8(x: Fraction) -> str:
    """Round half-even to 8 decimals, as the report does."""
    return f"{Decimal(round(x * 10**8)).scaleb(-8):.8f}"


# ---------------------------------------------------------------------------
# An independent reference: signed lots in one list, the rules as the issue states them
# ---------------------------------------------------------------------------
def reference(trades, base, quote, method, mark=None, fee_prices=None):
    fee_prices = fee_prices or {}
    trades = sorted(trades, key=lambda t: (t["time"], t["id"]))
    lots: list[list[Fraction]] = []  # [entry px, signed qty], oldest first
    pos, avg, real, fees_q = Fraction(0), None, Fraction(0), Fraction(0)
    fees: dict[str, Fraction] = {}
    closing_fills = 0
    unpriced = set()
    for t in trades:
        px, q, c = Fraction(t["price"]), Fraction(t["qty"]), Fraction(t["commission"])
        a = t["commissionAsset"]
        delta = (q if t["isBuyer"] else -q) - (c if a == base else 0)
        if c:
            fees[a] = fees.get(a, Fraction(0)) + c
        if a == quote:
            fees_q += c
        elif a == base:
            fees_q += c * px
        elif a in fee_prices:
            fees_q += c * fee_prices[a]
        elif c:
            unpriced.add(a)
        if pos and delta and (pos > 0) != (delta > 0):
            closing_fills += 1
        if method == "average":
            if pos and delta and (pos > 0) != (delta > 0):
                close = min(abs(delta), abs(pos))
                real += (px - avg) * close * (1 if pos > 0 else -1)
                rest = abs(delta) - close
                pos += close if delta > 0 else -close
                if pos == 0:
                    avg = None
                if rest:
                    pos, avg = (rest if delta > 0 else -rest), px
            elif delta:
                avg = px if not pos else (avg * abs(pos) + px * abs(delta)) / (abs(pos) + abs(delta))
                pos += delta
            continue
        while delta and lots and (lots[0][1] > 0) != (delta > 0):
            i = 0 if method == "fifo" else -1
            lot = lots[i]
            sign = 1 if lot[1] > 0 else -1
            take = min(abs(delta), abs(lot[1]))
            real += (px - lot[0]) * take * sign
            lot[1] -= sign * take
            delta += sign * take
            if lot[1] == 0:
                lots.pop(i)
        if delta:
            lots.append([px, delta])
        pos = sum((q for _, q in lots), Fraction(0))
    if method == "average":
        cost = avg * abs(pos) if pos else Fraction(0)
    else:
        cost = sum((p * abs(q) for p, q in lots), Fraction(0))
    sign = -1 if pos < 0 else 1
    return {
        "position": pos, "avg_entry": cost / abs(pos) if pos else None, "realized_gross": real, "fees": fees,
        "fees_quote": fees_q, "realized_net": real - fees_q, "fees_unpriced": sorted(unpriced),
        "unrealized": None if mark is None else sign * (mark * abs(pos) - cost), "trades": len(trades),
        "closing_fills": closing_fills,
    }


def assert_matches(got: dict, want: dict, method: str):
    assert got["position"] == r8(want["position"])
    assert got["trades"] == want["trades"]
    assert got["fees"] == {a: r8(v) for a, v in want["fees"].items()}
    assert got["fees_quote"] == r8(want["fees_quote"])
    assert sorted(got["fees_unpriced"]) == want["fees_unpriced"]
    for k in ("avg_entry", "realized_gross", "realized_net", "unrealized"):
        if want[k] is None:
            assert got[k] is None, k
        elif method == "average":  # within 1e-8 per closing fill (in practice one ulp at most)
            tol = E8 * max(1, want["closing_fills"])
            assert abs(Fraction(got[k]) - want[k]) <= tol, (k, got[k], want[k])
            assert abs(Fraction(got[k]) - Fraction(r8(want[k]))) <= E8, (k, got[k], r8(want[k]))
        else:  # exact, then rounded once
            assert got[k] == r8(want[k]), (method, k)


# ---------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------
HAND = [
    trade("BTCUSDT", 1, "100", "1", "0.1", "USDT", 1000, True),
    trade("BTCUSDT", 2, "200", "1", "0.001", "BTC", 1001, True),  # base fee: opens 0.999, fee 0.2 USDT
    trade("BTCUSDT", 3, "150", "1.5", "0.15", "USDT", 1002, False),
]


@pytest.mark.parametrize("method, avg_entry, realized, unreal_at_160", [
    # FIFO: closes 1 @100 (+50) and 0.5 of the 200 lot (-25): +25; left 0.499 @200
    ("fifo", "200.00000000", "25.00000000", "-19.96000000"),
    # LIFO: closes 0.999 @200 (-49.95) and 0.501 @100 (+25.05): -24.9; left 0.499 @100
    ("lifo", "100.00000000", "-24.90000000", "29.94000000"),
    # average: avg = (100 + 199.8) / 1.999; realized = (150 - avg) * 1.5; unrealized (160 - avg) * 0.499
    ("average", r8(Fraction(2998, 1999) * 100), r8((150 - Fraction(299800, 1999)) * Fraction(3, 2)),
     r8((160 - Fraction(299800, 1999)) * Fraction(499, 1000))),
])
def test_hand_computed_figures(tmp_path, capsys, method, avg_entry, realized, unreal_at_160):
    f = write_lines(tmp_path / "t.jsonl", HAND)
    got = report(capsys, "--trades", f, "--method", method, "--mark", "BTCUSDT=160")["BTCUSDT"]
    assert got["position"] == "0.49900000"
    assert got["avg_entry"] == avg_entry
    assert got["realized_gross"] == realized
    assert got["fees"] == {"USDT": "0.25000000", "BTC": "0.00100000"}
    assert got["fees_quote"] == "0.45000000"  # 0.1 + 0.15 + 0.001 * 200
    assert got["realized_net"] == r8(Fraction(realized) - Fraction("0.45"))
    assert got["unrealized"] == unreal_at_160
    assert got["trades"] == 3
    assert (got["base"], got["quote"]) == ("BTC", "USDT")


def test_zero_crossing_and_bnb_fee_by_hand(tmp_path, capsys):
    trades = [
        trade("ETHBTC", 7, "0.05", "2", "0.001", "BNB", 5, True),
        trade("ETHBTC", 8, "0.06", "3", "0.002", "BNB", 6, False),  # closes 2 (+0.02), opens 1 short @0.06
        trade("ETHBTC", 9, "0.055", "0.5", "0", "BNB", 7, True),  # covers 0.5 short: +0.0025
    ]
    f = write_lines(tmp_path / "t.jsonl", trades)
    got = report(capsys, "--trades", f, "--method", "fifo", "--mark", "ETHBTC=0.04")["ETHBTC"]
    assert got["position"] == "-0.50000000" and got["avg_entry"] == "0.06000000"
    assert got["realized_gross"] == "0.02250000"
    assert got["fees"] == {"BNB": "0.00300000"}
    assert got["fees_quote"] == "0.00000000" and got["fees_unpriced"] == ["BNB"]
    assert got["realized_net"] == "0.02250000"
    assert got["unrealized"] == "0.01000000"  # (0.04 - 0.06) * -0.5
    got = report(capsys, "--trades", f, "--method", "fifo", "--fee-price", "BNB/BTC=0.01",
                 "--fee-price", "BNB=600")["ETHBTC"]  # the /BTC form wins for a BTC-quoted symbol
    assert got["fees_quote"] == "0.00003000" and got["fees_unpriced"] == []
    assert got["realized_net"] == "0.02247000"
    assert got["unrealized"] is None


def test_trades_are_sorted_by_time_then_id(tmp_path, capsys):
    ordered = [trade("XRPUSDT", 1, "1", "10", "0", "USDT", 100, True),
               trade("XRPUSDT", 2, "2", "10", "0", "USDT", 100, True),
               trade("XRPUSDT", 3, "3", "10", "0", "USDT", 200, False)]
    a = write_lines(tmp_path / "a.jsonl", ordered)
    b = write_lines(tmp_path / "b.jsonl", [ordered[2], ordered[1], ordered[0]])
    ra = report(capsys, "--trades", a, "--method", "fifo")
    assert ra == report(capsys, "--trades", b, "--method", "fifo")
    assert ra["XRPUSDT"]["realized_gross"] == "20.00000000"  # closes the @1 lot first


def test_text_report_names_every_figure(tmp_path, capsys):
    f = write_lines(tmp_path / "t.jsonl", HAND)
    assert pnl_report.main(["--trades", str(f), "--method", "lifo"]) == 0
    out = capsys.readouterr().out
    for word in ("BTCUSDT", "position", "avg_entry", "realized_gross", "fees", "fees_quote", "realized_net",
                 "unrealized", "trades", "0.49900000 BTC", "-24.90000000 USDT", "no --mark"):
        assert word in out, word


# ---------------------------------------------------------------------------
# A realistic multi-symbol history against the reference
# ---------------------------------------------------------------------------
ASSETS = {"BTCUSDT": ("BTC", "USDT"), "ETHBTC": ("ETH", "BTC"), "BNBUSDT": ("BNB", "USDT"),
          "SOLFDUSD": ("SOL", "FDUSD")}
START = {"BTCUSDT": Decimal("61234.56"), "ETHBTC": Decimal("0.05321"), "BNBUSDT": Decimal("580.1"),
         "SOLFDUSD": Decimal("145.37")}
TICK = {"BTCUSDT": Decimal("0.01"), "ETHBTC": Decimal("0.00001"), "BNBUSDT": Decimal("0.1"),
        "SOLFDUSD": Decimal("0.01")}
STEP = {"BTCUSDT": Decimal("0.00001"), "ETHBTC": Decimal("0.0001"), "BNBUSDT": Decimal("0.001"),
        "SOLFDUSD": Decimal("0.001")}
BNB_PX = {"USDT": Decimal("600"), "BTC": Decimal("0.0098"), "FDUSD": Decimal("600.5")}


def realistic_history(seed: int = 11, per_symbol: int = 80) -> list[dict]:
    """Several orders per symbol, each filled in 1-3 partial fills at the same or next price; sides flip
    often enough to cross zero; fees: 0.1 % of the received asset, or 0.075 % paid in BNB."""
    rng = random.Random(seed)
    out, tid = [], 1000
    for sym, (base, quote) in ASSETS.items():
        px, pos, t_ms = START[sym], Decimal(0), 0  # (trade() adds T0_MS)
        n = 0
        while n < per_symbol:
            buy = rng.random() < (0.5 if pos == 0 else (0.3 if pos > 0 else 0.7))
            size = STEP[sym] * rng.randint(1, 3000)
            px += TICK[sym] * rng.randint(-40, 40)
            t_ms += rng.randint(0, 3000)
            for part in range(rng.randint(1, 3)):
                q = size if part == 0 else STEP[sym] * rng.randint(1, 500)
                fpx = px + TICK[sym] * part * (1 if buy else -1)
                if rng.random() < 0.4:
                    asset = "BNB"
                    c = (fpx * q * Decimal("0.00075") / BNB_PX[quote]).quantize(Decimal("0.00000001"))
                elif buy:
                    asset, c = base, (q * Decimal("0.001")).quantize(Decimal("0.00000001"))
                else:
                    asset, c = quote, (fpx * q * Decimal("0.001")).quantize(Decimal("0.00000001"))
                tid += 1
                out.append(trade(sym, tid, f"{fpx:.8f}", f"{q:.8f}", f"{c:.8f}", asset, t_ms + part, buy))
                pos += q if buy else -q
                n += 1
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("method", ["fifo", "lifo", "average"])
def test_realistic_history_matches_the_reference(tmp_path, capsys, method):
    trades = realistic_history()
    crossings = 0
    for sym in ASSETS:  # the history is worth testing: it crosses zero and pays every kind of fee
        pos = Fraction(0)
        for t in sorted((t for t in trades if t["symbol"] == sym), key=lambda t: (t["time"], t["id"])):
            new = pos + (1 if t["isBuyer"] else -1) * Fraction(t["qty"])
            crossings += pos * new < 0
            pos = new
    assert crossings >= 8
    assert {t["commissionAsset"] for t in trades} >= {"BNB", "BTC", "USDT", "ETH", "FDUSD", "SOL"}
    arr = tmp_path / "trades.json"
    arr.write_text(json.dumps(trades, indent=2))  # a JSON array over many lines
    lines = write_lines(tmp_path / "trades.jsonl", trades)
    marks = {"BTCUSDT": "61000.5", "ETHBTC": "0.0541", "BNBUSDT": "575.3"}
    argv = ["--method", method, *(x for s, m in marks.items() for x in ("--mark", f"{s}={m}")),
            "--fee-price", "BNB=600", "--fee-price", "BNB/BTC=0.0098"]
    got = report(capsys, "--trades", arr, *argv)
    assert got == report(capsys, "--trades", lines, *argv)
    assert sorted(got) == sorted(ASSETS)
    for sym, (base, quote) in ASSETS.items():
        fee_px = {"BNB": Fraction("0.0098") if quote == "BTC" else Fraction(600)}
        mark = Fraction(marks[sym]) if sym in marks else None
        want = reference([t for t in trades if t["symbol"] == sym], base, quote, method, mark, fee_px)
        assert_matches(got[sym], want, method)


# ---------------------------------------------------------------------------
# Real Binance payloads from ../shared/data (read in place, never copied into the project)
# ---------------------------------------------------------------------------
def test_real_trades_and_exchange_info(shared_data, tmp_path, capsys):
    """The recorded public BTCUSDT trades (GET /api/v3/trades) taken as our fills (isBuyer = the buyer was
    the taker), 0.1 % fee in the received asset; base/quote from the recorded exchangeInfo."""
    resp = shared_data / "nautilus_trader" / "http_responses"
    public = json.loads((resp / "http_spot_market_trades.json").read_text())
    mine = []
    for p in public:
        buy = not p["isBuyerMaker"]
        q, px = Decimal(p["qty"]), Decimal(p["price"])
        c = (q if buy else q * px) * Decimal("0.001")
        mine.append(trade("BTCUSDT", p["id"], p["price"], p["qty"], f"{c.quantize(Decimal('0.00000001')):.8f}",
                          "BTC" if buy else "USDT", p["time"] - T0_MS, buy))
    f = write_lines(tmp_path / "real.jsonl", mine)
    for method in ("fifo", "lifo", "average"):
        got = report(capsys, "--trades", f, "--method", method, "--exchange-info",
                     resp / "http_spot_market_exchange_info.json", "--mark", "BTCUSDT=60650.005")
        want = reference(mine, "BTC", "USDT", method, Fraction("60650.005"))
        assert_matches(got["BTCUSDT"], want, method)
        assert (got["BTCUSDT"]["base"], got["BTCUSDT"]["quote"]) == ("BTC", "USDT")


# ---------------------------------------------------------------------------
# Bad input: exit 2, the line (or the symbol), no traceback
# ---------------------------------------------------------------------------
def _good_lines():
    return [json.dumps(t) for t in HAND]


def test_truncated_json_line_names_its_line(tmp_path, capsys):
    lines = _good_lines()
    lines[1] = lines[1][:40]
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(lines) + "\n")
    err = bad(capsys, "--trades", f, "--method", "fifo")
    assert "t.jsonl line 2:" in err and "not valid JSON" in err


@pytest.mark.parametrize("field", ["price", "qty", "commissionAsset", "isBuyer", "symbol"])
def test_missing_field_names_its_line_and_the_field(tmp_path, capsys, field):
    t = dict(HAND[2])
    del t[field]
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(_good_lines()[:2] + [json.dumps(t)]) + "\n")
    err = bad(capsys, "--trades", f, "--method", "lifo")
    assert "line 3:" in err and repr(field) in err


@pytest.mark.parametrize("key, value", [("price", "abc"), ("price", "-1"), ("price", "0"), ("qty", "1e5x"),
                                        ("commission", "0.000000001"), ("price", None), ("time", "12"),
                                        ("isBuyer", "true")])
def test_bad_field_value_names_its_line(tmp_path, capsys, key, value):
    t = dict(HAND[0])
    t[key] = value
    f = tmp_path / "t.jsonl"
    f.write_text("\n\n" + json.dumps(t) + "\n")  # blank lines still count
    err = bad(capsys, "--trades", f, "--method", "average")
    assert "line 3:" in err and repr(key) in err


def test_bad_element_of_a_json_array_names_its_line(tmp_path, capsys):
    t = [dict(x) for x in HAND]
    t[2]["price"] = "1,5"
    f = tmp_path / "t.json"
    f.write_text(json.dumps(t, indent=2))
    start = [i for i, ln in enumerate(f.read_text().splitlines(), 1) if ln == "  {"][2]  # the third element
    err = bad(capsys, "--trades", f, "--method", "fifo")
    assert f"line {start}:" in err and "'price'" in err
    f.write_text(json.dumps(HAND, indent=2)[:-10])
    err = bad(capsys, "--trades", f, "--method", "fifo")
    assert "t.json line" in err


def test_unknown_quote_suffix_names_the_symbol_unless_exchange_info_knows_it(tmp_path, capsys):
    f = write_lines(tmp_path / "t.jsonl", [trade("FOOQUX", 1, "1", "1", "0", "QUX", 1, True)])
    err = bad(capsys, "--trades", f, "--method", "fifo")
    assert "FOOQUX" in err and "--exchange-info" in err
    info = tmp_path / "info.json"
    info.write_text(json.dumps({"symbols": [{"symbol": "FOOQUX", "baseAsset": "FOO", "quoteAsset": "QUX"}]}))
    got = report(capsys, "--trades", f, "--method", "fifo", "--exchange-info", info)
    assert got["FOOQUX"]["fees"] == {} and (got["FOOQUX"]["base"], got["FOOQUX"]["quote"]) == ("FOO", "QUX")


def test_duplicate_trade_id_and_bad_options_exit_2(tmp_path, capsys):
    f = write_lines(tmp_path / "t.jsonl", HAND + [HAND[0]])
    assert "duplicate trade id 1" in bad(capsys, "--trades", f, "--method", "fifo")
    g = write_lines(tmp_path / "g.jsonl", HAND)
    assert "--mark" in bad(capsys, "--trades", g, "--method", "fifo", "--mark", "BTCUSDT")
    assert "--fee-price" in bad(capsys, "--trades", g, "--method", "fifo", "--fee-price", "BNB=x")
    assert "cannot read" in bad(capsys, "--trades", tmp_path / "missing.jsonl", "--method", "fifo")


def test_command_line_exit_2_without_traceback(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps(HAND[0]) + "\n{\"symbol\": \"BTCUSDT\", \"id\": \n")
    p = subprocess.run([sys.executable, str(SCRIPTS / "pnl_report.py"), "--trades", str(f), "--method", "fifo",
                        "--strict"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "t.jsonl line 2:" in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------------------
# Hostile lines (core.hostile, made from real rows): skipped, counted, named, and no figure changes
# ---------------------------------------------------------------------------
def _splice_rows(rows: list[dict], plan, seed: int) -> tuple[list[bytes], int]:
    from core.hostile import hostile_frame

    rng = random.Random(seed)
    lines = [json.dumps(r).encode() for r in rows]
    out = list(lines)
    for cls, pick, place in plan:
        _, bad = hostile_frame(rng, lines[pick % len(lines)], cls)
        out.insert(place % (len(out) + 1), bad)
    return out, len(plan)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.tuples(st.sampled_from(CLASSES), st.integers(0, 2**31), st.integers(0, 2**31)),
                     min_size=1, max_size=25),
       seed=st.integers(0, 2**32 - 1))
def test_hostile_lines_are_skipped_and_counted_and_change_no_figure(tmp_path, plan, seed):
    rows = realistic_history(per_symbol=30)
    clean = write_lines(tmp_path / "clean.jsonl", rows)
    want = pnl_report.run(clean, "fifo", skipped=pnl_report.Skipped())
    lines, inserted = _splice_rows(rows, plan, seed)
    f = tmp_path / "hostile.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    skipped = pnl_report.Skipped()
    assert pnl_report.run(f, "fifo", skipped=skipped) == want
    assert skipped.total == inserted, skipped.reasons
    assert all(m.startswith("hostile.jsonl line ") for m in skipped.messages)


def test_skipped_lines_are_named_on_stderr_and_the_report_is_written(tmp_path, capsys):
    from core.hostile import hostile_frame

    rows = [json.dumps(t).encode() for t in HAND]
    rng = random.Random(3)
    lines = [rows[0], hostile_frame(rng, rows[1], "absurd_price")[1], rows[1],
             hostile_frame(rng, rows[2], "non_utf8")[1], rows[2], hostile_frame(rng, rows[0], "unknown_symbol")[1],
             hostile_frame(rng, rows[0], "oversized")[1], b'{"symbol": "BTCUSDT", "id": 1']
    f = tmp_path / "t.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    assert pnl_report.main(["--trades", str(f), "--method", "fifo", "--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out) == report(capsys, "--trades", write_lines(tmp_path / "c.jsonl", HAND), "--method",
                                         "fifo")
    err = cap.err
    for line_no in (2, 4, 6, 7, 8):
        assert f"skipped t.jsonl line {line_no}:" in err
    assert "5 bad line(s) of t.jsonl skipped" in err and "Traceback" not in err
    assert "unknown_symbol=1" in err and "oversized=1" in err and "not_utf8=1" in err and "not_json=1" in err


def test_hostile_elements_of_a_json_array_are_skipped_too(tmp_path, capsys):
    from core.hostile import hostile_frame

    rng = random.Random(5)
    elements = []
    for t in HAND:
        for cls in ("absurd_qty", "wrong_types", "ts_far_future", "valid_json_not_binance"):
            elements.append(json.loads(hostile_frame(rng, json.dumps(t).encode(), cls)[1]))
        elements.append(t)
    f = tmp_path / "t.json"
    f.write_text(json.dumps(elements, indent=1))
    skipped = pnl_report.Skipped()
    assert pnl_report.run(f, "lifo", skipped=skipped) == pnl_report.run(write_lines(tmp_path / "c.jsonl", HAND),
                                                                        "lifo", skipped=pnl_report.Skipped())
    assert skipped.total == 4 * len(HAND)
