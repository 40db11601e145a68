"""Risk: each pre-trade check, sizing on real filter values, positions from fills, stops, the breaker, commands.

The kernels are driven with crafted records (tops, depth, signals and the
execution reports the execution stage will send), as the risk issue asks
until execution lands; ``test_risk_step_*`` run the stage's duty-cycle
kernel over real rings.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numba as nb
import numpy as np
import pytest

from core.config import parse_config
from core.pnl import pnl_position
from core.records import (
    BK_DEPTH,
    BK_TOP,
    BOOK_EVENT,
    BOOK_INVALID,
    BOOK_VALID,
    EX_NEW,
    EX_REJECTED,
    EX_TRADE,
    EXEC_REPORT,
    FIXED_SCALE,
    ORD_CANCEL_ALL,
    ORD_DENIED,
    ORD_NEW,
    ORDER_REQUEST,
    ORIGIN_STOP,
    OS_FILLED,
    OS_NEW,
    OS_REJECTED,
    OT_LIMIT,
    OT_MARKET,
    SIDE_BUY,
    SIDE_CLOSE,
    SIDE_FLAT,
    SIDE_SELL,
    SIGNAL,
)
from core.risk_kernels import (
    B_DAILY_LOSS,
    B_REJECTS,
    D_BELOW_MIN,
    D_BOOK_INVALID,
    D_BOOK_STALE,
    D_CLOCK,
    D_EXIT_WORKING,
    D_GROSS_NOTIONAL,
    D_HALTED,
    D_MAX_POSITION,
    D_NO_INVENTORY,
    D_NOTHING_TO_CLOSE,
    D_OK,
    D_OPEN_ORDERS,
    D_OPEN_POSITIONS,
    D_PRICE_BAND,
    D_RATE_1S,
    D_RATE_10S,
    D_REDUCE_ONLY,
    D_SLIPPAGE,
    D_SYMBOL_NOTIONAL,
    H_CLOCK_MS,
    H_STATE,
    H_TRIP,
    HALTED,
    REDUCE_ONLY,
    breaker_check,
    emit_exit,
    risk_on_book,
    risk_on_report,
    risk_on_signal,
    trip,
)
from processes.risk import new_state

ROOT = Path(__file__).resolve().parents[2]
BASE = json.loads((ROOT / "config" / "system.json").read_text())
X = FIXED_SCALE
NOW = 10_000_000_000_000  # a monotonic "now" (ns)


def config(**risk):
    d = copy.deepcopy(BASE)
    r = d["risk"]
    r.update({"max_position_size": "0.01", "max_order_qty": "0.005", "max_order_notional": "1000",
              "max_open_orders": 4, "max_orders_per_s": 5, "max_daily_loss": "50", "price_band_pct": 2.0,
              "max_open_positions": 2, "max_symbol_notional": "1000", "max_gross_notional": "2000"})
    for k, v in risk.items():
        if isinstance(v, dict):
            r.setdefault(k, {}).update(v)
        else:
            r[k] = v
    return parse_config(d, host_cpus=None)


def fresh(**risk):
    return new_state(config(**risk), 16).risk


@nb.njit(cache=True)
def _book(st, evs, now):
    """BOOK_EVENT is a union (overlapping fields): numba takes it as an array element, not a Python scalar."""
    return risk_on_book(st, evs[0], now)


def top(st, sym=0, bid=60000.0, ask=60000.2, valid=True, recv_ns=NOW, bq=1.0, aq=1.0):
    a = np.zeros(1, BOOK_EVENT)
    e = a[0]
    e["kind"] = BK_TOP
    e["symbol"] = sym
    e["state"] = BOOK_VALID if valid else BOOK_INVALID
    e["top_bid_px"], e["top_ask_px"] = round(bid * X), round(ask * X)
    e["top_bid_qty"], e["top_ask_qty"] = round(bq * X), round(aq * X)
    e["recv_ns"] = recv_ns
    return _book(st, a, np.int64(recv_ns))


def depth(st, sym=0, mid=60000.1, asks=((60000.2, 0.01), (60001.0, 0.02)), bids=((60000.0, 0.01),)):
    a = np.zeros(1, BOOK_EVENT)
    e = a[0]
    e["kind"] = BK_DEPTH
    e["symbol"] = sym
    e["state"] = BOOK_VALID
    for j, (p, q) in enumerate(asks):
        e["d_ask_px"][j], e["d_ask_qty"][j] = round(p * X), round(q * X)
    for j, (p, q) in enumerate(bids):
        e["d_bid_px"][j], e["d_bid_qty"][j] = round(p * X), round(q * X)
    e["recv_ns"] = NOW
    _book(st, a, np.int64(NOW))


def signal(side, sym=0, qty=0.0, atr=float("nan"), recv_ns=NOW):
    s = np.zeros(1, SIGNAL)[0]
    s["side"], s["symbol"] = side, sym
    s["target_qty"] = round(qty * X)
    s["atr"] = atr
    s["recv_ns"] = recv_ns
    s["pub_ns"] = recv_ns + 1
    s["strategy"] = 1
    s["signal_id"] = 7
    return s


def decide(st, side, now=NOW, **kw):
    d = np.zeros(1, ORDER_REQUEST)
    reason = risk_on_signal(st, signal(side, **kw), d[0], np.int64(now))
    return reason, d[0]


def fill(st, order, px, qty=None, status=OS_FILLED, commission=0, asset=0):
    r = np.zeros(1, EXEC_REPORT)[0]
    r["client_order_id"] = order["client_order_id"]
    r["symbol"] = order["symbol"]
    r["side"] = order["side"]
    r["exec_type"] = EX_TRADE
    r["status"] = status
    r["last_px"] = round(px * X)
    r["last_qty"] = order["qty"] if qty is None else round(qty * X)
    r["commission"] = commission
    r["commission_asset"] = asset
    return risk_on_report(st, r)


def report(st, cid, exec_type, status, sym=0):
    r = np.zeros(1, EXEC_REPORT)[0]
    r["client_order_id"], r["exec_type"], r["status"], r["symbol"] = cid, exec_type, status, sym
    return risk_on_report(st, r)


def test_a_buy_signal_becomes_a_market_order_sized_and_rounded_to_the_real_lot():
    st = fresh()
    top(st)
    reason, o = decide(st, SIDE_BUY, qty=0.0012345678)  # the strategy's qty: rounded DOWN to BTCUSDT's 0.00001
    assert reason == D_OK and o["action"] == ORD_NEW and o["order_type"] == OT_MARKET
    assert o["qty"] == 123_000 and o["side"] == SIDE_BUY and o["client_order_id"] > 0
    assert o["ref_px"] == round(60000.1 * X) and o["strategy"] == 1 and o["signal_id"] == 7
    assert o["reduce_only"] == 0 and o["in_pub_ns"] == NOW + 1 and o["recv_ns"] == NOW


def test_sizing_modes_fixed_notional_and_volatility():
    st = fresh(sizing={"mode": "fixed_notional", "notional": "100"})
    top(st)
    _r, o = decide(st, SIDE_BUY)
    assert o["qty"] == (100 * X * X // round(60000.1 * X)) // 1000 * 1000  # 100 USDT at the mid, floor to the lot
    st = fresh(sizing={"mode": "volatility", "risk_per_trade": "5", "atr_mult": 2.0})
    top(st)
    _r, o = decide(st, SIDE_BUY, atr=500.0)  # 5 / (2 * 500) = 0.005 BTC
    assert o["action"] == ORD_NEW and o["qty"] == 500_000
    reason, o = decide(st, SIDE_BUY, atr=float("nan"))
    assert o["action"] == ORD_DENIED and o["reason"] == reason != D_OK  # no ATR yet: cannot size


def test_limit_orders_are_priced_passively_on_the_tick_and_the_band_denies_a_fat_finger():
    st = fresh(order_type="limit_ioc", limit_offset_bps=5.0)
    top(st)
    reason, o = decide(st, SIDE_BUY, qty=0.001)
    assert reason == D_OK and o["order_type"] == OT_LIMIT and o["price"] % 10**6 == 0  # on BTCUSDT's 0.01 tick
    assert o["price"] <= round(60000.1 * 1.0005 * X)
    st = fresh(order_type="limit_ioc", limit_offset_bps=300.0, price_band_pct=2.0)  # 3% away: fat finger
    top(st)
    reason, o = decide(st, SIDE_BUY, qty=0.001)
    assert reason == D_PRICE_BAND and o["action"] == ORD_DENIED and o["client_order_id"] == 0


@pytest.mark.parametrize("setup, side, qty, expect", [
    (lambda st: None, SIDE_SELL, 0.001, D_NO_INVENTORY),  # Spot: nothing to sell
    (lambda st: None, SIDE_CLOSE, 0.0, D_NOTHING_TO_CLOSE),
    (lambda st: st.hdr.__setitem__(H_STATE, HALTED), SIDE_BUY, 0.001, D_HALTED),
    (lambda st: st.hdr.__setitem__(H_STATE, REDUCE_ONLY), SIDE_BUY, 0.001, D_REDUCE_ONLY),
    (lambda st: st.hdr.__setitem__(H_CLOCK_MS, 5000), SIDE_BUY, 0.001, D_CLOCK),
    (lambda st: top(st, valid=False), SIDE_BUY, 0.001, D_BOOK_INVALID),
    (lambda st: top(st, recv_ns=NOW - 3_000_000_000), SIDE_BUY, 0.001, D_BOOK_STALE),
    (lambda st: None, SIDE_BUY, 0.0000001, D_BELOW_MIN),  # below one lot: rounds to 0
    (lambda st: depth(st, asks=((60000.2, 0.0001), (61000.0, 0.0001))), SIDE_BUY, 0.004, D_SLIPPAGE),
])
def test_each_check_denies_with_its_reason_and_a_record(setup, side, qty, expect):
    st = fresh()
    top(st)
    setup(st)
    reason, o = decide(st, side, qty=qty)
    assert reason == expect and o["action"] == ORD_DENIED and o["reason"] == expect
    assert st.deny[expect] == 1 and st.cnt[2] == 1  # C_DENIED


def test_position_and_notional_limits_count_open_orders_and_fills():
    st = fresh(max_position_size="0.006", max_order_qty="0.005")
    top(st)
    r1, o1 = decide(st, SIDE_BUY, qty=0.005)
    assert r1 == D_OK
    r2, _ = decide(st, SIDE_BUY, qty=0.002)  # 0.005 open + 0.002 > 0.006
    assert r2 == D_MAX_POSITION
    fill(st, o1, 60000.0)
    assert pnl_position(st.pnl, 0) == 500_000 and st.sy[0, 8] == 0  # S_OPEN_BUY back to 0
    r3, _ = decide(st, SIDE_BUY, qty=0.002)
    assert r3 == D_MAX_POSITION
    st = fresh(max_symbol_notional="200", max_gross_notional="250", max_order_qty="1", max_position_size="1")
    top(st)
    assert decide(st, SIDE_BUY, qty=0.004)[0] == D_SYMBOL_NOTIONAL  # 0.004 * 60000 = 240 > 200
    top(st, sym=1, bid=3000.0, ask=3000.1)
    assert decide(st, SIDE_BUY, qty=0.003)[0] == D_OK  # 180
    assert decide(st, SIDE_BUY, sym=1, qty=0.03)[0] == D_GROSS_NOTIONAL  # 180 + 90 > 250


def test_open_positions_open_orders_and_the_rate_windows():
    st = fresh(max_open_positions=1)
    top(st)
    top(st, sym=1, bid=3000.0, ask=3000.1)
    _r, o = decide(st, SIDE_BUY, qty=0.001)
    fill(st, o, 60000.0)
    assert decide(st, SIDE_BUY, sym=1, qty=0.01)[0] == D_OPEN_POSITIONS
    st = fresh(max_open_orders=2)
    top(st)
    assert [decide(st, SIDE_BUY, qty=0.001)[0] for _ in range(3)] == [D_OK, D_OK, D_OPEN_ORDERS]
    st = fresh(max_orders_per_s=2, max_orders_per_10s=3, max_open_orders=10, max_position_size="1")
    top(st)
    got = [decide(st, SIDE_BUY, qty=0.001, now=NOW + i * 100_000_000)[0] for i in range(3)]
    assert got == [D_OK, D_OK, D_RATE_1S]
    later = NOW + 2_000_000_000
    top(st, recv_ns=later)
    assert decide(st, SIDE_BUY, qty=0.001, now=later)[0] == D_OK  # the 1 s window moved on
    assert decide(st, SIDE_BUY, qty=0.001, now=later + 1)[0] == D_RATE_10S  # 3 in 10 s


def test_fills_make_positions_and_pnl_and_close_sends_the_whole_position_reduce_only():
    st = fresh()
    top(st)
    _r, o = decide(st, SIDE_BUY, qty=0.003)
    fill(st, o, 60000.0, qty=0.001, status=2)  # partial
    fill(st, o, 60010.0, qty=0.002)
    assert pnl_position(st.pnl, 0) == 300_000
    reason, c = decide(st, SIDE_CLOSE)
    assert reason == D_OK and c["side"] == SIDE_SELL and c["qty"] == 300_000 and c["reduce_only"] == 1
    assert decide(st, SIDE_CLOSE)[0] == D_EXIT_WORKING  # never a second exit while one works
    fill(st, c, 60100.0)
    assert pnl_position(st.pnl, 0) == 0
    from core.pnl import pnl_realized
    # FIFO: (60100-60000)*0.001 + (60100-60010)*0.002 = 0.1 + 0.18 = 0.28 USDT
    assert pnl_realized(st.pnl, 0, 0) == 28_000_000
    # a SELL signal with inventory sells only what is held (Spot)
    _r, o = decide(st, SIDE_BUY, qty=0.002)
    fill(st, o, 60000.0)
    reason, s = decide(st, SIDE_SELL, qty=0.005)
    assert reason == D_OK and s["qty"] == 200_000 and s["reduce_only"] == 1


def test_a_stop_loss_triggers_exactly_one_exit():
    st = fresh(stops={"stop_loss_pct": 1.0})
    top(st)
    _r, o = decide(st, SIDE_BUY, qty=0.002)
    fill(st, o, 60000.0)
    assert not top(st, bid=59700.0, ask=59700.2)  # -0.5%: nothing
    assert top(st, bid=59300.0, ask=59300.2)  # -1.2%: the stop wants out
    d = np.zeros(2, ORDER_REQUEST)
    assert emit_exit(st, d[0], 0, np.int64(NOW), np.int64(NOW), np.int64(NOW), np.int64(0), ORIGIN_STOP)
    assert d[0]["side"] == SIDE_SELL and d[0]["qty"] == 200_000 and d[0]["origin"] == ORIGIN_STOP
    assert d[0]["reduce_only"] == 1 and d[0]["order_type"] == OT_MARKET
    assert not top(st, bid=59000.0, ask=59000.2)  # an exit is working: no second trigger
    assert not emit_exit(st, d[1], 0, np.int64(NOW), np.int64(NOW), np.int64(NOW), np.int64(0), ORIGIN_STOP)
    fill(st, d[0], 59000.0)
    assert pnl_position(st.pnl, 0) == 0 and st.sy[0, 10] == 0  # S_EXIT_CID freed by the final report


def test_trailing_stop_follows_the_best_mid():
    st = fresh(stops={"trailing_stop_pct": 0.5})
    top(st)
    _r, o = decide(st, SIDE_BUY, qty=0.001)
    fill(st, o, 60000.0)
    assert not top(st, bid=61000.0, ask=61000.2)  # new best
    assert not top(st, bid=60800.0, ask=60800.2)  # 0.33% back from the best
    assert top(st, bid=60650.0, ask=60650.2)  # 0.57% back: out (still in profit)


def test_breaker_trips_on_consecutive_rejects_halts_and_only_resume_resets():
    st = fresh(breaker={"max_consecutive_rejects": 3})
    top(st)
    orders = [decide(st, SIDE_BUY, qty=0.001)[1] for _ in range(3)]
    why = [report(st, o["client_order_id"], EX_REJECTED, OS_REJECTED) for o in orders]
    assert why[:2] == [0, 0] and why[2] == B_REJECTS
    assert trip(st, why[2]) and st.hdr[H_STATE] == HALTED and st.hdr[H_TRIP] == B_REJECTS
    assert not trip(st, B_DAILY_LOSS)  # the first trip stays the reason
    assert decide(st, SIDE_BUY, qty=0.001)[0] == D_HALTED
    assert report(st, 0, EX_NEW, OS_NEW) == 0


def test_breaker_trips_on_the_daily_loss():
    st = fresh(max_daily_loss="5")
    top(st)
    _r, o = decide(st, SIDE_BUY, qty=0.005)
    fill(st, o, 60000.0)
    assert breaker_check(st, np.int64(NOW), np.int64(1_700_000_000_000)) == 0
    top(st, bid=58900.0, ask=58900.2)  # unrealized -5.5 USDT
    assert breaker_check(st, np.int64(NOW), np.int64(1_700_000_000_000)) == B_DAILY_LOSS


# ---------------------------------------------------------------------------
# the stage's duty cycle over real rings
# ---------------------------------------------------------------------------
class FakeCtx:
    def __init__(self, cfg, rings):
        from types import SimpleNamespace

        from core.latency import LatencySet

        self.process = SimpleNamespace(batch=16, incarnation=1)
        self.latency = LatencySet()
        self.inputs = {k: v for k, v in rings.items() if k != "orders"}
        self.outputs = {"orders": rings["orders"]}
        self.events = []

    def event(self, type, **fields):  # noqa: A002
        self.events.append((type, fields))
        return True

    def should_stop(self):
        return False

    def heartbeat(self, **kw):
        pass

    idle = None


def test_risk_stage_cycle_reports_first_denials_as_records_and_the_breaker_alert(instance):
    from ringbuffers.ring import Ring, segment_name
    from processes.risk import RiskStage

    # a first call may compile the kernel for seconds: the top must not go stale meanwhile
    cfg = config(breaker={"max_consecutive_rejects": 2}, max_staleness_ms=600_000)
    made = {r: Ring.create(segment_name(instance, r), dt, 64, 1) for r, dt in
            (("reports", EXEC_REPORT), ("book", BOOK_EVENT), ("signals", SIGNAL), ("orders", ORDER_REQUEST))}
    ends = {r: Ring.attach(made[r].name, made[r].dtype, "producer" if r == "orders" else 0) for r in made}
    reader = Ring.attach(made["orders"].name, ORDER_REQUEST, 0)
    try:
        stage = RiskStage(cfg, FakeCtx(cfg, ends))
        import time

        t = np.zeros(1, BOOK_EVENT)
        t["kind"], t["state"] = BK_TOP, BOOK_VALID
        t["top_bid_px"], t["top_ask_px"] = 60000 * X, 60001 * X
        t["top_bid_qty"] = t["top_ask_qty"] = X
        t["recv_ns"] = time.monotonic_ns()
        t["pub_ns"] = t["in_pub_ns"] = t["recv_ns"]
        made["book"].publish_batch(t)
        sigs = np.zeros(3, SIGNAL)
        sigs["side"] = (SIDE_BUY, SIDE_SELL, SIDE_FLAT)  # approved; no inventory; a trace probe
        sigs["target_qty"] = 100_000
        sigs["recv_ns"] = sigs["pub_ns"] = time.monotonic_ns()
        made["signals"].publish_batch(sigs)
        assert stage.do_work() > 0
        got = reader.poll(16).records.copy()
        reader.release()
        assert got["action"].tolist() == [ORD_NEW, ORD_DENIED, 0], got["reason"]
        assert got["reason"][1] == D_NO_INVENTORY
        c = stage.counters()
        assert (c["approved"], c["denied"], c["denied.no_inventory"], c["probes"]) == (1, 1, 1, 1)
        # two venue rejects in a row: HALTED, one cancel-all, an alert event
        reps = np.zeros(2, EXEC_REPORT)
        reps["exec_type"], reps["status"] = EX_REJECTED, OS_REJECTED
        reps["client_order_id"] = (got["client_order_id"][0], 999)
        reps["recv_ns"] = reps["pub_ns"] = reps["in_pub_ns"] = time.monotonic_ns()
        made["reports"].publish_batch(reps)
        stage.do_work()
        out = reader.poll(16).records.copy()
        reader.release()
        assert out["action"].tolist() == [ORD_CANCEL_ALL]
        assert stage.counters()["state"] == HALTED and stage.ctx.events[0][0] == "alert"
        assert stage.ctx.events[0][1]["reason"] == "consecutive_rejects"
        assert stage.on_command({"type": "resume"}) and stage.counters()["state"] == 0
        assert stage.on_command({"type": "flatten"}) and stage.counters()["state"] == REDUCE_ONLY
    finally:
        for r in list(ends.values()) + [reader]:
            r.close()
        for r in made.values():
            r.close()
            r.unlink()


def test_math_sanity():
    assert math.isclose(0.28, 28_000_000 / X)
