"""Strategy decisions on crafted series, suppressions by reason, and the settings' errors (exit 2 at start)."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from core.config import parse_config
from core.errors import ConfigError
from core.features import FEATURE_NAMES, FEATURE_VERSION
from core.models import save_linear_npz
from core.records import (
    BK_BAR,
    BK_DEPTH,
    BK_TOP,
    BK_TRADE,
    BOOK_EVENT,
    BOOK_INVALID,
    BOOK_VALID,
    FIXED_SCALE,
    SIDE_BUY,
    SIDE_CLOSE,
    SIDE_FLAT,
    SIDE_SELL,
    TRIGGER_BAR,
    TRIGGER_TOP,
)
from core.strategies import (
    R_EVERY_N_BUY,
    R_EVERY_N_EXIT,
    R_ML_LONG,
    R_RULE_EXIT,
    R_RULE_LONG,
    R_RULE_SHORT,
    R_TRACE_PROBE,
    SUP_BOOK_INVALID,
    SUP_STALE,
    SUP_WARMUP,
    SignalSettings,
    counter_names,
    new_strategy_state,
    replay_signals,
)

ROOT = Path(__file__).resolve().parents[2]
BASE = json.loads((ROOT / "config" / "system.json").read_text())


def settings(strategies, features=None, **signal) -> SignalSettings:
    d = copy.deepcopy(BASE)
    d["signal"]["strategies"] = strategies
    if features is not None:
        d["signal"]["features"] = features
    d["signal"].update(signal)
    cfg = parse_config(d, host_cpus=None)
    object.__setattr__(cfg, "source_path", str(ROOT / "config" / "system.json"))
    return SignalSettings.build(cfg)


def events(closes, *, top_every_bar=True, invalid_from=None, recv_step=1_000_000_000, stale_top_at=None):
    """One symbol: before each 1 s bar, a valid top around the previous close (unless stated otherwise)."""
    out = []
    recv = 10_000_000_000
    prev = closes[0]
    for i, c in enumerate(closes):
        recv += recv_step
        if top_every_bar and (stale_top_at is None or i < stale_top_at):
            t = np.zeros(1, BOOK_EVENT)
            t["kind"] = BK_TOP
            t["state"] = BOOK_INVALID if invalid_from is not None and i >= invalid_from else BOOK_VALID
            t["top_bid_px"] = round((prev - 0.01) * FIXED_SCALE)
            t["top_ask_px"] = round((prev + 0.01) * FIXED_SCALE)
            t["top_bid_qty"] = t["top_ask_qty"] = FIXED_SCALE
            t["recv_ns"] = recv - 1000
            t["pub_ns"] = recv - 500
            t["exch_ms"] = 1_700_000_000_000 + i * 1000
            out.append(t)
            d = np.zeros(2, BOOK_EVENT)  # a depth snapshot and a trade: every book feature is defined
            d["kind"] = (BK_DEPTH, BK_TRADE)
            d["state"] = BOOK_VALID
            d["d_bid_qty"][0, :2] = d["d_ask_qty"][0, :2] = FIXED_SCALE
            d["tr_qty"][1] = FIXED_SCALE
            d["tr_px"][1] = round(prev * FIXED_SCALE)
            d["tr_time_ms"][1] = 1_700_000_000_000 + i * 1000
            d["recv_ns"] = recv - 800
            d["pub_ns"] = recv - 400
            out.append(d)
        b = np.zeros(1, BOOK_EVENT)
        b["kind"] = BK_BAR
        b["state"] = BOOK_VALID
        b["bar_interval_ms"] = 1000
        b["bar_close"] = round(c * FIXED_SCALE)
        b["bar_high"] = round(max(c, prev) * 1.0005 * FIXED_SCALE)
        b["bar_low"] = round(min(c, prev) * 0.9995 * FIXED_SCALE)
        b["bar_volume"] = FIXED_SCALE
        b["bar_quote_volume"] = round(c * FIXED_SCALE)
        b["recv_ns"] = recv
        b["pub_ns"] = recv + 500
        b["exch_ms"] = b["bar_close_ms"] = 1_700_000_000_999 + i * 1000
        out.append(b)
        prev = c
    return np.concatenate(out).astype(BOOK_EVENT)


def v_shape(n_flat=60, n_down=15, n_up=30):
    """Flat, a sharp fall (RSI deep oversold, price under the lower band), then a recovery."""
    flat = 100 + 0.05 * np.sin(np.arange(n_flat))
    down = flat[-1] * np.cumprod(np.full(n_down, 0.994))
    up = down[-1] * np.cumprod(np.full(n_up, 1.004))
    return np.concatenate([flat, down, up])


RULE = {"name": "mr", "type": "rsi_macd_bb", "on": ["bar"], "qty": "0.001"}


def test_rule_buys_the_oversold_turn_once_and_closes_when_rsi_recovers():
    s = settings([{**RULE, "params": {"allow_short": False}}])  # the rally would later sell short
    closes = v_shape()
    sig = replay_signals(s, events(closes))
    assert sig["side"].tolist() == [SIDE_BUY, SIDE_CLOSE]
    buy, close = sig
    assert buy["reason"] == R_RULE_LONG and close["reason"] == R_RULE_EXIT
    assert buy["trigger"] == TRIGGER_BAR and buy["strategy"] == 1 and buy["target_qty"] == 100_000
    assert 0 < buy["strength"] <= 1 and 0 <= buy["confidence"] <= 1
    # the buy came on the bar where the MACD histogram first rose while RSI < 30: check with talib
    import talib
    i_buy = int((buy["exch_ms"] - 1_700_000_000_999) // 1000)
    rsi = talib.RSI(closes, 14)
    hist = talib.MACD(closes, 12, 26, 9)[2]
    up, _mid, lo = talib.BBANDS(closes, 20, 2.0, 2.0, 0)
    pctb = (closes - lo) / (up - lo)
    ok = (rsi < 30) & (np.r_[np.nan, np.diff(hist)] > 0) & (pctb <= 0.2)
    assert i_buy == int(np.flatnonzero(ok)[0])
    i_close = int((close["exch_ms"] - 1_700_000_000_999) // 1000)
    assert i_close == i_buy + 1 + int(np.flatnonzero(rsi[i_buy + 1:] >= 50)[0])
    # ref price: the mid of the top before the bar
    assert buy["ref_px"] == round(closes[i_buy - 1] * FIXED_SCALE)


def test_rule_sells_the_overbought_turn_only_when_shorts_are_allowed():
    closes = 200 - (v_shape() - 100)  # the mirror image: a spike up, then a fall
    s = settings([RULE])
    sig = replay_signals(s, events(closes))
    assert sig["side"].tolist()[:2] == [SIDE_SELL, SIDE_CLOSE] and sig["reason"][0] == R_RULE_SHORT
    assert sig["strength"][0] < 0
    no_short = settings([{**RULE, "params": {"allow_short": False}}])
    assert np.all(replay_signals(no_short, events(closes))["side"] == SIDE_BUY)  # only the later oversold buy


def test_each_confirmation_moves_or_vetoes_the_entry():
    import talib

    closes = v_shape()
    rsi = talib.RSI(closes, 14)
    hist_up = np.r_[np.nan, np.diff(talib.MACD(closes, 12, 26, 9)[2])] > 0
    up, _mid, lo = talib.BBANDS(closes, 20, 2.0, 2.0, 0)
    pctb = (closes - lo) / (up - lo)

    def first_buy(**params):
        sig = replay_signals(settings([{**RULE, "params": {"allow_short": False, **params}}]), events(closes))
        buys = sig[sig["side"] == SIDE_BUY]
        return int((buys["exch_ms"][0] - 1_700_000_000_999) // 1000) if len(buys) else None

    warm = np.arange(len(closes)) >= 33  # every bar feature defined (MACD's lookback)
    assert first_buy(use_macd=False, use_bb=False) == int(np.flatnonzero(warm & (rsi < 30))[0])
    assert first_buy(use_bb=False) == int(np.flatnonzero(warm & (rsi < 30) & hist_up)[0])
    assert first_buy(use_macd=False) == int(np.flatnonzero(warm & (rsi < 30) & (pctb <= 0.2))[0])
    assert first_buy(use_bb=False) != first_buy(use_macd=False, use_bb=False)  # the MACD filter did move it
    assert first_buy(bb_buy_max=-5.0) is None  # price never 5 band widths under the lower band


def test_no_signal_from_an_invalid_book_and_the_suppression_is_counted():
    s = settings([RULE])
    ev = events(v_shape(), invalid_from=40)
    st_sig = replay_signals(s, ev)
    assert len(st_sig) == 0
    # count through the kernel's state: replay once more with access to the counters
    from core.features import new_feature_state
    from core.strategies import model_arrays, sig_process
    from core.records import SIGNAL

    fs, st = new_feature_state(s.features, s.n_symbols), new_strategy_state(s)
    out = np.zeros(1024, SIGNAL)
    k = sig_process(st, fs, model_arrays(s), ev, len(ev), np.int64(0), out, np.int64(0), np.int64(1023), np.int64(0))
    assert k == 0
    assert st.sup[0, SUP_WARMUP] == 33  # bars 0..32 while MACD warms up (lookback 33): all valid tops then
    assert st.sup[0, SUP_BOOK_INVALID] == len(v_shape()) - 40
    names = counter_names(s)
    assert names["suppressed.mr.book_invalid"] == ("sup", 0, SUP_BOOK_INVALID)


def test_a_top_older_than_max_staleness_suppresses():
    s = settings([RULE], max_staleness_ms=1500)
    # tops stop at bar 50: every later bar sees a top more than 1.5 s old
    from core.features import new_feature_state
    from core.strategies import model_arrays, sig_process
    from core.records import SIGNAL

    ev = events(v_shape(), stale_top_at=50)
    fs, st = new_feature_state(s.features, s.n_symbols), new_strategy_state(s)
    out = np.zeros(1024, SIGNAL)
    k = sig_process(st, fs, model_arrays(s), ev, len(ev), np.int64(0), out, np.int64(0), np.int64(1023), np.int64(0))
    assert k == 0 and st.sup[0, SUP_STALE] == len(v_shape()) - 51


def test_the_pipeline_delay_counts_as_stale_live():
    s = settings([RULE], max_staleness_ms=1000)
    from core.features import new_feature_state
    from core.strategies import model_arrays, sig_process
    from core.records import SIGNAL

    ev = events(v_shape())
    fs, st = new_feature_state(s.features, s.n_symbols), new_strategy_state(s)
    out = np.zeros(1024, SIGNAL)
    late = np.int64(ev["recv_ns"].max() + 2_000_000_000)  # every record waited > 1 s before the decision
    assert sig_process(st, fs, model_arrays(s), ev, len(ev), late, out, np.int64(0), np.int64(1023), np.int64(0)) == 0
    assert st.sup[0, SUP_STALE] == st.sup[0].sum() - st.sup[0, SUP_WARMUP] > 0


def linear_model(tmp_path, weights=None, kind="logistic", bias=0.0, name="m.npz"):
    w = np.zeros(len(FEATURE_NAMES)) if weights is None else weights
    p = tmp_path / name
    save_linear_npz(p, w, bias, kind, FEATURE_NAMES, FEATURE_VERSION)
    return p


def test_ml_strategy_thresholds_top_throttle_and_model_id(tmp_path):
    w = np.zeros(len(FEATURE_NAMES))
    w[FEATURE_NAMES.index("ret_1")] = -2000.0  # buy after falls: p = sigmoid(-2000 * ret)
    path = linear_model(tmp_path, w)
    s = settings([{"name": "ml", "type": "ml", "on": ["bar", "top"], "qty": "0.002", "model": str(path),
                   "params": {"buy_above": 0.8, "sell_below": 0.2, "exit_long_below": 0.5}}],
                 update_interval_ms=1500)
    sig = replay_signals(s, events(v_shape()))
    assert len(sig) >= 2 and sig["side"][0] == SIDE_BUY and sig["reason"][0] == R_ML_LONG
    assert set(sig["model_id"]) == {s.model.model_id} and s.model.model_id != 0
    p = 1 / (1 + np.exp(-(-2000.0) * np.log(v_shape()[1:] / v_shape()[:-1])))
    assert np.isclose(sig["strength"][0], 2 * p[p >= 0.8][0] - 1) or sig["trigger"][0] == TRIGGER_TOP
    # top triggers are throttled: with tops every 1 s and a 1.5 s interval, at most every other top decides
    tops = sig[sig["trigger"] == TRIGGER_TOP]
    if len(tops) > 1:
        assert np.diff(tops["recv_ns"]).min() >= 1_500_000_000


class SlowModel:
    def __init__(self, delay_s):
        self.delay_s = delay_s

    def predict(self, X):
        import time
        time.sleep(self.delay_s)
        return np.full(len(X), 0.9)


def test_pickle_model_needs_the_opt_in_and_is_scored_within_its_budget(tmp_path):
    p = tmp_path / "slow.pkl"
    p.write_bytes(pickle.dumps(SlowModel(0.0)))
    (tmp_path / "slow.json").write_text(json.dumps({"feature_names": list(FEATURE_NAMES),
                                                    "feature_version": FEATURE_VERSION}))
    strat = [{"name": "pk", "type": "ml", "qty": "0.001", "model": str(p)}]
    with pytest.raises(ConfigError) as e:
        settings(strat)
    assert "allow_pickle" in str(e.value)
    fast = settings(strat, allow_pickle=True, model_budget_us=1_000_000)
    sig = replay_signals(fast, events(v_shape()))
    assert sig["side"].tolist() == [SIDE_BUY] and sig["reason"][0] == R_ML_LONG  # p = 0.9: long, never exits
    p.write_bytes(pickle.dumps(SlowModel(0.002)))
    slow = settings(strat, allow_pickle=True, model_budget_us=100)
    assert len(replay_signals(slow, events(v_shape()))) == 0 and slow.model.overruns > 0


def test_trace_probe_emits_one_flat_probe_per_record():
    s = settings([{"name": "probe", "type": "trace_probe"}])
    ev = events(v_shape(n_flat=5, n_down=3, n_up=3))
    sig = replay_signals(s, ev)
    assert len(sig) == len(ev) and np.all(sig["side"] == SIDE_FLAT) and np.all(sig["reason"] == R_TRACE_PROBE)
    assert sig["signal_id"].tolist() == list(range(1, len(ev) + 1))
    assert np.array_equal(sig["recv_ns"], ev["recv_ns"]) and np.array_equal(sig["in_pub_ns"], ev["pub_ns"])


def test_every_n_buys_then_closes_on_every_nth_top_change_and_needs_a_valid_book():
    s = settings([{"name": "tick", "type": "every_n", "qty": "0.5", "params": {"every": 3}}])
    ev = events([100.0] * 12)  # one top per bar: tops 1..12
    sig = replay_signals(s, ev)
    tops = np.flatnonzero(ev["kind"] == BK_TOP)
    assert len(sig) == 4  # the 3rd, 6th, 9th, 12th top
    assert sig["side"].tolist() == [SIDE_BUY, SIDE_CLOSE, SIDE_BUY, SIDE_CLOSE]
    assert sig["reason"].tolist() == [R_EVERY_N_BUY, R_EVERY_N_EXIT] * 2
    assert sig["recv_ns"].tolist() == ev["recv_ns"][tops[[2, 5, 8, 11]]].tolist()
    assert sig["target_qty"][0] == 50_000_000 and np.all(sig["ref_px"] == 100 * FIXED_SCALE)
    none = replay_signals(s, events([100.0] * 12, invalid_from=0))  # an invalid book: counted, no signal
    assert len(none) == 0


@pytest.mark.parametrize("strategies, key, words", [
    ([{"name": "x", "type": "every_n", "qty": "1", "params": {"every": 0}}], "signal.strategies[0].params.every",
     "integer >= 1"),
    ([{"name": "x", "type": "every_n", "qty": "1", "params": {"every": 2.5}}], "signal.strategies[0].params.every",
     "integer >= 1"),
    ([{"name": "x", "type": "magic", "qty": "1"}], "signal.strategies[0].type", "must be one of"),
    ([{"name": "x", "type": "rsi_macd_bb"}], "signal.strategies[0].qty", "decimal"),
    ([{"name": "x", "type": "rsi_macd_bb", "qty": "-1"}], "signal.strategies[0].qty", "> 0"),
    ([{"name": "x", "type": "rsi_macd_bb", "qty": "1", "on": ["tick"]}], "signal.strategies[0].on", "array"),
    ([{"name": "x", "type": "rsi_macd_bb", "qty": "1", "symbols": ["DOGEUSDT"]}], "signal.strategies[0].symbols",
     "unknown instrument"),
    ([{"name": "x", "type": "rsi_macd_bb", "qty": "1", "params": {"oversold": 80}}], "signal.strategies[0].params",
     "oversold < exit_rsi"),
    ([{"name": "x", "type": "rsi_macd_bb", "qty": "1", "params": {"bogus": 1}}],
     "signal.strategies[0].params.bogus", "not a known parameter"),
    ([{"name": "x", "type": "ml", "qty": "1"}], "signal.strategies[0].model", "needs a model"),
    ([{"name": "x", "type": "ml", "qty": "1", "model": "/nonexistent/m.txt"}], "signal.strategies[0].model",
     "m.txt"),
    ([{"name": "x", "type": "rsi_macd_bb", "qty": "1"}, {"name": "x", "type": "trace_probe"}],
     "signal.strategies[1].name", "duplicate"),
    ([{"name": "x", "type": "rsi_macd_bb", "qty": "1", "extra": 1}], "signal.strategies[0].extra", "not a known"),
])
def test_bad_strategy_config_is_a_config_error_naming_the_key(strategies, key, words):
    with pytest.raises(ConfigError) as e:
        settings(strategies)
    assert e.value.path == key and words in str(e.value)


def test_a_model_trained_on_other_features_is_refused(tmp_path):
    names = list(FEATURE_NAMES)
    names[0], names[1] = names[1], names[0]
    p = tmp_path / "swapped.npz"
    save_linear_npz(p, np.zeros(len(names)), 0.0, "logistic", names, FEATURE_VERSION)
    with pytest.raises(ConfigError, match="close|ret_1"):
        settings([{"name": "m", "type": "ml", "qty": "1", "model": str(p)}])
    p2 = tmp_path / "old.npz"
    save_linear_npz(p2, np.zeros(len(FEATURE_NAMES)), 0.0, "logistic", FEATURE_NAMES, FEATURE_VERSION + 1)
    with pytest.raises(ConfigError, match="version"):
        settings([{"name": "m", "type": "ml", "qty": "1", "model": str(p2)}])
    # trained with other feature parameters (the sidecar says so): refused, naming the parameter
    p3 = linear_model(tmp_path, name="params.npz")
    (tmp_path / "params.json").write_text(json.dumps({"feature_names": list(FEATURE_NAMES),
                                                      "feature_version": FEATURE_VERSION,
                                                      "feature_params": {**settings([]).features.as_dict(),
                                                                         "rsi_period": 21}}))
    with pytest.raises(ConfigError, match="rsi_period=21"):
        settings([{"name": "m", "type": "ml", "qty": "1", "model": str(p3)}])


def test_the_bar_interval_must_be_one_the_book_builds():
    with pytest.raises(ConfigError) as e:
        settings([RULE], features={"bar_interval_ms": 5000})
    assert e.value.path == "signal.features.bar_interval_ms"
