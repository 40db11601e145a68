"""Feature kernels against a plain Python/numpy reference, and the research API's sources.

The reference below recomputes every feature from the event stream with
straightforward Python (talib for the bar indicators, numpy for the
rest), one event at a time, and is compared with the kernels' rows for
every bar and top trigger of a random stream of tops, depth snapshots,
trades and bars over two symbols.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
import talib

from core.errors import ConfigError
from core.features import (
    FEATURE_NAMES,
    FEATURE_ROW,
    TRIG_BAR,
    TRIG_TOP,
    FeatureComputer,
    FeatureConfig,
)
from core.records import (
    BK_BAR,
    BK_DEPTH,
    BK_TOP,
    BK_TRADE,
    BOOK_EVENT,
    BOOK_INVALID,
    BOOK_VALID,
    DEPTH_LEVELS,
    FIXED_SCALE,
    FLAG_BUYER_MAKER,
)

CFG = FeatureConfig(bar_interval_ms=1000, rsi_period=5, macd_fast=3, macd_slow=6, macd_signal=3, bb_period=5,
                    atr_period=4, vol_period=4, vwap_bars=3, flow_halflife_ms=800.0, depth_levels=4)
N_SYM = 2


def _fx(x: float) -> int:
    return int(round(x * FIXED_SCALE))


def random_stream(seed: int, n: int = 4000) -> np.ndarray:
    """Tops (some invalid), depth, trades and bars (1 s, plus 60 s ones the features ignore) for 2 symbols."""
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, BOOK_EVENT)
    mid = np.array([100.0, 2000.0])
    t_ms = np.array([1_700_000_000_000, 1_700_000_000_000], np.int64)
    bar_no = np.zeros(2, np.int64)
    recv = 1_000_000_000
    for i in range(n):
        s = int(rng.integers(0, N_SYM))
        e = ev[i]
        recv += int(rng.integers(1, 5_000_000))
        e["recv_ns"] = recv
        e["pub_ns"] = recv + 10
        e["in_pub_ns"] = recv + 5
        e["symbol"] = s
        t_ms[s] += int(rng.integers(0, 300))
        e["exch_ms"] = t_ms[s]
        u = rng.random()
        if u < 0.45:
            mid[s] *= math.exp(rng.normal(0, 5e-4))
            spread = mid[s] * rng.uniform(1e-5, 1e-3)
            e["kind"] = BK_TOP
            e["state"] = BOOK_INVALID if rng.random() < 0.05 else BOOK_VALID
            e["top_bid_px"] = _fx(mid[s] - spread / 2)
            e["top_ask_px"] = _fx(mid[s] + spread / 2)
            e["top_bid_qty"] = _fx(rng.uniform(0.001, 5))
            e["top_ask_qty"] = _fx(rng.uniform(0.001, 5))
        elif u < 0.6:
            e["kind"] = BK_DEPTH
            e["state"] = BOOK_VALID if rng.random() < 0.95 else BOOK_INVALID
            e["d_bid_qty"] = [_fx(q) for q in rng.uniform(0, 3, DEPTH_LEVELS)]
            e["d_ask_qty"] = [_fx(q) for q in rng.uniform(0, 3, DEPTH_LEVELS)]
        elif u < 0.9:
            e["kind"] = BK_TRADE
            e["tr_px"] = _fx(mid[s])
            e["tr_qty"] = _fx(rng.uniform(0.0001, 2))
            e["tr_time_ms"] = t_ms[s]
            e["flags"] = FLAG_BUYER_MAKER if rng.random() < 0.5 else 0
        else:
            e["kind"] = BK_BAR
            iv = 60_000 if rng.random() < 0.1 else 1000
            e["bar_interval_ms"] = iv
            bar_no[s] += 1
            c = mid[s] * math.exp(rng.normal(0, 1e-3))
            hi = max(c, mid[s]) * (1 + rng.uniform(0, 1e-3))
            lo = min(c, mid[s]) * (1 - rng.uniform(0, 1e-3))
            e["bar_open"] = _fx(mid[s])
            e["bar_close"] = _fx(c)
            e["bar_high"] = _fx(hi)
            e["bar_low"] = _fx(lo)
            empty = rng.random() < 0.1
            v = 0.0 if empty else rng.uniform(0.01, 10)
            e["bar_volume"] = _fx(v)
            e["bar_quote_volume"] = _fx(v * c)
            e["bar_close_ms"] = t_ms[s]
    return ev


class Reference:
    """Every feature, recomputed from its definition in core/features.py's docstring."""

    def __init__(self, cfg: FeatureConfig):
        self.cfg = cfg
        self.top = [None] * N_SYM  # (bid, bq, ask, aq, valid)
        self.mid_prev = [math.nan] * N_SYM
        self.rv_acc = [0.0] * N_SYM
        self.flow = [[0.0, 0.0, math.nan] for _ in range(N_SYM)]
        self.bars = [([], [], []) for _ in range(N_SYM)]  # high, low, close
        self.vwap = [deque(maxlen=cfg.vwap_bars) for _ in range(N_SYM)]
        self.f = [dict.fromkeys(FEATURE_NAMES, math.nan) for _ in range(N_SYM)]

    def mid(self, s):
        t = self.top[s]
        if t is None or not t[4]:
            return math.nan
        return (t[0] + t[2]) * 0.5

    def vwap_dist(self, s):
        m = self.mid(s)
        if math.isnan(m):
            m = self.f[s]["close"]
        q = sum(x[0] for x in self.vwap[s])
        v = sum(x[1] for x in self.vwap[s])
        self.f[s]["vwap_dist_bps"] = (m - q / v) / (q / v) * 1e4 if v > 0 and not math.isnan(m) else math.nan

    def on(self, e) -> int:
        s = int(e["symbol"])
        f = self.f[s]
        k = int(e["kind"])
        if k == BK_TOP:
            b, a = e["top_bid_px"] / FIXED_SCALE, e["top_ask_px"] / FIXED_SCALE
            qb, qa = e["top_bid_qty"] / FIXED_SCALE, e["top_ask_qty"] / FIXED_SCALE
            valid = e["state"] == BOOK_VALID and b > 0 and a > 0 and qb > 0 and qa > 0
            self.top[s] = (b, qb, a, qa, valid)
            if not valid:
                self.mid_prev[s] = math.nan
                for n in ("spread_bps", "microprice_dev_bps", "obi_top"):
                    f[n] = math.nan
                return TRIG_TOP
            mid = (b + a) * 0.5
            f["spread_bps"] = (a - b) / mid * 1e4
            f["microprice_dev_bps"] = ((b * qa + a * qb) / (qb + qa) - mid) / mid * 1e4
            f["obi_top"] = (qb - qa) / (qb + qa)
            if not math.isnan(self.mid_prev[s]):
                self.rv_acc[s] += math.log(mid / self.mid_prev[s]) ** 2
            self.mid_prev[s] = mid
            self.vwap_dist(s)
            return TRIG_TOP
        if k == BK_DEPTH:
            n = self.cfg.depth_levels
            sb = sum(e["d_bid_qty"][:n] / FIXED_SCALE)
            sa = sum(e["d_ask_qty"][:n] / FIXED_SCALE)
            f["obi_depth"] = (sb - sa) / (sb + sa) if e["state"] == BOOK_VALID and sb + sa > 0 else math.nan
        elif k == BK_TRADE:
            fl = self.flow[s]
            t = float(e["tr_time_ms"])
            if not math.isnan(fl[2]) and t > fl[2]:
                d = 2.0 ** (-(t - fl[2]) / self.cfg.flow_halflife_ms)
                fl[0] *= d
                fl[1] *= d
            if math.isnan(fl[2]) or t > fl[2]:
                fl[2] = t
            q = e["tr_qty"] / FIXED_SCALE
            fl[1 if e["flags"] & FLAG_BUYER_MAKER else 0] += q
            f["tfi"] = (fl[0] - fl[1]) / (fl[0] + fl[1])
        elif k == BK_BAR and e["bar_interval_ms"] == self.cfg.bar_interval_ms:
            hs, ls, cs = self.bars[s]
            c = e["bar_close"] / FIXED_SCALE
            hs.append(e["bar_high"] / FIXED_SCALE)
            ls.append(e["bar_low"] / FIXED_SCALE)
            cs.append(c)
            h, lo, cl = np.array(hs), np.array(ls), np.array(cs)
            cfg = self.cfg
            f["close"] = c
            f["ret_1"] = math.log(c / cs[-2]) if len(cs) > 1 else math.nan
            r = np.log(cl[1:] / cl[:-1])
            f["vol"] = float(np.std(r[-cfg.vol_period:])) if len(r) >= cfg.vol_period else math.nan
            f["rsi"] = talib.RSI(cl, cfg.rsi_period)[-1]
            m, sg, hist = talib.MACD(cl, cfg.macd_fast, cfg.macd_slow, cfg.macd_signal)
            f["macd"], f["macd_signal"], f["macd_hist"] = m[-1], sg[-1], hist[-1]
            f["macd_hist_norm"] = hist[-1] / c
            up, mid, dn = talib.BBANDS(cl, cfg.bb_period, cfg.bb_up, cfg.bb_dn, 0)
            f["bb_upper"], f["bb_middle"], f["bb_lower"] = up[-1], mid[-1], dn[-1]
            f["bb_pctb"] = (c - dn[-1]) / (up[-1] - dn[-1]) if up[-1] > dn[-1] else math.nan
            f["bb_width"] = (up[-1] - dn[-1]) / mid[-1] if mid[-1] != 0 else math.nan
            a = talib.ATR(h, lo, cl, cfg.atr_period)[-1]
            f["atr"], f["atr_norm"] = a, a / c
            f["rv_bar"] = math.sqrt(self.rv_acc[s])
            self.rv_acc[s] = 0.0
            if e["bar_volume"] > 0:
                self.vwap[s].append((e["bar_quote_volume"] / FIXED_SCALE, e["bar_volume"] / FIXED_SCALE))
            self.vwap_dist(s)
            return TRIG_BAR
        return 0


# vol: np.std (two-pass) against the kernel's running algorithm; everything else is the same arithmetic
RTOL = {"vol": 1e-9}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_feature_rows_match_the_plain_reference_on_every_trigger(seed):
    ev = random_stream(seed)
    rows = FeatureComputer(CFG, symbols=["AAA", "BBB"]).compute(ev, on=("bar", "top"))
    ref = Reference(CFG)
    want = []
    for e in ev:
        trig = ref.on(e)
        if trig:
            want.append((int(e["symbol"]), trig, dict(ref.f[int(e["symbol"])])))
    assert len(rows) == len(want)
    assert rows.dtype == FEATURE_ROW
    assert np.count_nonzero(rows["trigger"] == TRIG_BAR) > 100 and np.isfinite(rows["rsi"]).sum() > 100
    for name in FEATURE_NAMES:
        got = rows[name]
        exp = np.array([w[2][name] for w in want])
        np.testing.assert_allclose(got, exp, rtol=RTOL.get(name, 1e-12), atol=0, equal_nan=True, err_msg=name)
        assert np.isfinite(got).any(), f"{name} never computed: the test would not see it"
    assert rows["symbol"].tolist() == [w[0] for w in want]


def test_bar_arrays_source_gives_talib_indicators():
    rng = np.random.default_rng(5)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 300)))
    high, low = close * 1.002, close * 0.998
    cfg = FeatureConfig()
    rows = FeatureComputer(cfg).compute({"high": high, "low": low, "close": close})
    assert len(rows) == 300
    # prices go through the records' 1e-8 fixed-point grid, as live bars do
    c8, h8, l8 = (np.round(a * FIXED_SCALE) / FIXED_SCALE for a in (close, high, low))
    np.testing.assert_array_equal(rows["rsi"], talib.RSI(c8, 14))
    np.testing.assert_array_equal(rows["atr"], talib.ATR(h8, l8, c8, 14))
    np.testing.assert_array_equal(rows["macd_hist"], talib.MACD(c8, 12, 26, 9)[2])
    np.testing.assert_array_equal(rows["bb_upper"], talib.BBANDS(c8, 20, 2.0, 2.0, 0)[0])
    assert np.isnan(rows["spread_bps"]).all()  # no book in a bar-only source


def test_bad_symbol_ids_are_counted_and_change_nothing():
    ev = random_stream(7, 1500)
    clean = FeatureComputer(CFG, symbols=["AAA", "BBB"]).compute(ev, on=("bar", "top"))
    hostile = ev.copy()
    junk = np.zeros(50, BOOK_EVENT)
    junk["symbol"] = 999
    junk["kind"] = BK_BAR
    junk["bar_interval_ms"] = 1000
    junk["bar_close"] = junk["bar_high"] = junk["bar_low"] = 1
    mixed = np.concatenate([hostile[:700], junk, hostile[700:]]).astype(BOOK_EVENT)
    got = FeatureComputer(CFG, symbols=["AAA", "BBB"]).compute(mixed, on=("bar", "top"))
    for name in FEATURE_NAMES:
        np.testing.assert_array_equal(got[name], clean[name])


@pytest.mark.parametrize("raw, key", [
    ({"bar_interval_ms": 1500}, "signal.features.bar_interval_ms"),
    ({"rsi_period": 1}, "signal.features"),
    ({"vwap_bars": 0}, "signal.features.vwap_bars"),
    ({"depth_levels": 11}, "signal.features.depth_levels"),
    ({"flow_halflife_ms": -1}, "signal.features.flow_halflife_ms"),
    ({"rsi": 14}, "signal.features.rsi"),
    ({"rsi_period": "14"}, "signal.features.rsi_period"),
])
def test_bad_feature_config_names_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        FeatureConfig.from_dict(raw)
    assert e.value.path == key
