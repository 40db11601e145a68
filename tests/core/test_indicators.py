"""core.indicators against the installed TA-Lib (bit for bit), streaming against batch, and argument checks.

Equality everywhere below is *bit-identical*: the same NaN positions and,
elsewhere, the same IEEE bit patterns (so even 0.0 vs -0.0 would fail). No
tolerance is used: the module reproduces TA-Lib 0.8.1's operation order,
seeds and fused multiply-adds, and the streaming kernel shares its step
helpers with the batch loops.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from core import indicators as ind
from core.indicators import (
    N_OUT,
    OUT_ATR,
    OUT_BB_LOWER,
    OUT_BB_MIDDLE,
    OUT_BB_UPPER,
    OUT_MACD,
    OUT_MACD_HIST,
    OUT_MACD_SIGNAL,
    OUT_RET,
    OUT_RSI,
    OUT_VOL,
    StreamParams,
    make_stream_params,
    new_stream_state,
    stream_feed,
    stream_reset,
    stream_series,
    stream_update,
)

NAN = np.nan
PROPERTY = settings(max_examples=100, deadline=None)


def _cpu_has_fma() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " fma " in f" {line.split(':', 1)[1]} " for line in f)
    except OSError:
        return True


# talib picks its FMA build at load time only on CPUs with FMA (see core/indicators.py); elsewhere its EMA, MACD,
# ATR and unequal-width BBANDS are unfused and these comparisons cannot hold bit for bit.
FMA_TALIB = pytest.mark.skipif(not _cpu_has_fma(), reason="CPU without FMA: talib runs its unfused build")


@pytest.fixture(autouse=True, scope="module")
def talib_defaults():
    """TA-Lib's unstable periods are process-global: make sure they are 0 (what we reproduce)."""
    talib.set_unstable_period("ALL", 0)
    yield


def bits_equal(ours, theirs) -> bool:
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(theirs, dtype=np.float64)
    if a.shape != b.shape:
        return False
    na, nb_ = np.isnan(a), np.isnan(b)
    return bool((na == nb_).all() and (a[~na].view(np.int64) == b[~nb_].view(np.int64)).all())


def assert_bits(ours, theirs, what: str) -> None:
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(theirs, dtype=np.float64)
    if bits_equal(a, b):
        return
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    nan_diff = np.flatnonzero(np.isnan(a) != np.isnan(b))
    assert nan_diff.size == 0, f"{what}: NaN positions differ first at {nan_diff[:5]} ({a[nan_diff[:5]]} vs " \
                               f"{b[nan_diff[:5]]})"
    i = np.flatnonzero(a.view(np.int64) != b.view(np.int64))[0]
    rel = abs(a[i] - b[i]) / abs(b[i])
    raise AssertionError(f"{what}: first difference at {i}: {a[i]!r} vs {b[i]!r} (relative {rel:.3g})")


# ----------------------------------------------------------------------------------------------
# Series
# ----------------------------------------------------------------------------------------------

KINDS = ("walk", "flat_runs", "segments", "ticks", "constant")
SCALES = (1e-8, 1.0, 100.0, 50_000.0, 1e8)


def make_bars(seed: int, n: int, kind: str, scale: float, spread: float = 1e-3, lead: int = 0,
              mid_close: tuple = (), mid_high: tuple = (), lead_high_extra: int = 0):
    """(high, low, close) of n bars; NaN in the first ``lead`` bars, at ``mid_*`` fractions of the series."""
    rng = np.random.default_rng(seed)
    if kind == "walk":
        c = scale * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    elif kind == "flat_runs":  # most bars unchanged: zero changes, zero variance windows
        steps = rng.normal(0.0, 0.01, n) * (rng.random(n) < 0.15)
        c = scale * np.exp(np.cumsum(steps))
    elif kind == "segments":  # strictly rising, strictly falling, flat (RSI 100, 0-loss/0-gain, flat windows)
        k = n // 4
        d = np.concatenate([np.full(k, 0.002), np.full(k, -0.0015), np.zeros(k), rng.normal(0, 0.01, n - 3 * k)])
        c = scale * np.exp(np.cumsum(d))
    elif kind == "ticks":  # a price at `scale` moving by whole ticks of 1e-6 of it (BTC at 50000: 0.05)
        c = scale * (1.0 + 1e-6 * np.cumsum(rng.integers(-3, 4, n)))
    else:
        c = np.full(n, scale)
    half = np.abs(rng.normal(0.0, spread, n)) * c
    h = c + half
    lo = c - np.abs(rng.normal(0.0, spread, n)) * c
    c, h, lo = c.copy(), h.copy(), lo.copy()
    c[:lead] = NAN
    h[:lead] = NAN
    lo[:lead] = NAN
    h[lead:lead + lead_high_extra] = NAN  # ATR's leading-NaN rule: any of H/L/C
    for f in mid_close if n else ():
        c[int(f * (n - 1))] = NAN
    for f in mid_high if n else ():
        h[int(f * (n - 1))] = NAN
    return h, lo, c


@st.composite
def bars(draw, max_n: int = 3000):
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.one_of(st.integers(0, 60), st.integers(61, max_n)))
    kind = draw(st.sampled_from(KINDS))
    scale = draw(st.sampled_from(SCALES))
    spread = draw(st.sampled_from((1e-9, 1e-5, 1e-3, 2e-2)))
    lead = draw(st.sampled_from((0, 0, 1, 7, 40)))
    mids = draw(st.lists(st.floats(0.0, 1.0), max_size=2))
    mid_high = draw(st.lists(st.floats(0.0, 1.0), max_size=1))
    extra = draw(st.sampled_from((0, 0, 3)))
    return make_bars(seed, n, kind, scale, spread, lead, tuple(mids), tuple(mid_high), extra)


# ----------------------------------------------------------------------------------------------
# Batch == TA-Lib
# ----------------------------------------------------------------------------------------------

SMA_EMA_PERIODS = (30, 1, 2, 5, 9, 14, 50)  # 30 = TA-Lib's default, passed explicitly
RSI_PERIODS = (14, 2, 7, 21, 30)
MACD_PARAMS = ((12, 26, 9), (8, 17, 5), (5, 35, 5), (26, 12, 9), (3, 10, 1), (2, 2, 1), (12, 12, 3))
BBANDS_PARAMS = ((20, 2.0, 2.0), (5, 2.0, 2.0), (2, 1.0, 1.0), (10, 1.5, 2.5), (20, 2.5, 1.0), (50, 1.5, 1.0),
                 (20, 1.0, 3.0), (14, -1.0, 0.5))
ATR_PERIODS = (14, 1, 2, 5, 20)


@FMA_TALIB
@PROPERTY
@given(bars(), st.sampled_from(SMA_EMA_PERIODS))
def test_sma_and_ema_equal_talib_bit_for_bit(hlc, period):
    c = hlc[2]
    assert_bits(ind.sma(c, period), talib.SMA(c, timeperiod=period), f"sma({period})")
    assert_bits(ind.ema(c, period), talib.EMA(c, timeperiod=period), f"ema({period})")


@PROPERTY
@given(bars(), st.sampled_from(RSI_PERIODS))
def test_rsi_equals_talib_bit_for_bit(hlc, period):
    c = hlc[2]
    assert_bits(ind.rsi(c, period), talib.RSI(c, timeperiod=period), f"rsi({period})")


@FMA_TALIB
@PROPERTY
@given(bars(), st.sampled_from(MACD_PARAMS))
def test_macd_equals_talib_bit_for_bit(hlc, params):
    c = hlc[2]
    fast, slow, sig = params
    ours = ind.macd(c, fast, slow, sig)
    theirs = talib.MACD(c, fastperiod=fast, slowperiod=slow, signalperiod=sig)
    for name, a, b in zip(("macd", "signal", "hist"), ours, theirs):
        assert_bits(a, b, f"macd{params} {name}")


@FMA_TALIB
@PROPERTY
@given(bars(), st.sampled_from(BBANDS_PARAMS))
def test_bbands_equals_talib_bit_for_bit(hlc, params):
    c = hlc[2]
    n, up, dn = params
    ours = ind.bbands(c, n, up, dn)
    theirs = talib.BBANDS(c, timeperiod=n, nbdevup=up, nbdevdn=dn, matype=0)
    for name, a, b in zip(("upper", "middle", "lower"), ours, theirs):
        assert_bits(a, b, f"bbands{params} {name}")


@FMA_TALIB
@PROPERTY
@given(bars(), st.sampled_from(ATR_PERIODS))
def test_atr_equals_talib_bit_for_bit(hlc, period):
    h, lo, c = hlc
    assert_bits(ind.atr(h, lo, c, period), talib.ATR(h, lo, c, timeperiod=period), f"atr({period})")


def _all_vs_talib(h, lo, c, what):
    for p in SMA_EMA_PERIODS:
        assert_bits(ind.sma(c, p), talib.SMA(c, p), f"{what} sma({p})")
        assert_bits(ind.ema(c, p), talib.EMA(c, p), f"{what} ema({p})")
    for p in RSI_PERIODS:
        assert_bits(ind.rsi(c, p), talib.RSI(c, p), f"{what} rsi({p})")
    for f, s, g in MACD_PARAMS:
        for a, b in zip(ind.macd(c, f, s, g), talib.MACD(c, f, s, g)):
            assert_bits(a, b, f"{what} macd({f},{s},{g})")
    for n, up, dn in BBANDS_PARAMS:
        for a, b in zip(ind.bbands(c, n, up, dn), talib.BBANDS(c, n, up, dn, 0)):
            assert_bits(a, b, f"{what} bbands({n},{up},{dn})")
    for p in ATR_PERIODS:
        assert_bits(ind.atr(h, lo, c, p), talib.ATR(h, lo, c, p), f"{what} atr({p})")


@FMA_TALIB
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_long_random_walks_equal_talib_for_every_parameter_set(seed):
    h, lo, c = make_bars(seed, 20_000, "walk", 100.0)
    _all_vs_talib(h, lo, c, f"walk seed {seed}")


@FMA_TALIB
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("kind", KINDS)
def test_crafted_series_equal_talib(kind, scale):
    """Flat runs, rising/falling/flat segments, whole ticks, constants; at 1e-8 .. 1e8 and BTC-like 50000."""
    h, lo, c = make_bars(11, 3000, kind, scale, spread=1e-7 if scale == 50_000.0 else 1e-3)
    _all_vs_talib(h, lo, c, f"{kind} x{scale:g}")


@FMA_TALIB
def test_leading_and_middle_nans_follow_talib():
    h, lo, c = make_bars(5, 2000, "walk", 100.0, lead=13, mid_close=(0.5,), mid_high=(0.25,), lead_high_extra=4)
    _all_vs_talib(h, lo, c, "NaNs")
    # The documented outcomes, not only "as talib": SMA/EMA/MACD/BBANDS NaN after a middle NaN, RSI 0.0.
    k = int(0.5 * 1999)
    assert np.isnan(ind.sma(c, 5)[k:]).all() and np.isfinite(ind.sma(c, 5)[k - 10:k]).all()
    assert np.isnan(ind.ema(c, 5)[k:]).all()
    assert np.isnan(ind.bbands(c, 5)[1][k:]).all()
    assert np.isnan(ind.macd(c)[0][k:]).all()
    assert (ind.rsi(c, 14)[k:] == 0.0).all()
    # First valid index = leading NaNs + lookback (ATR: bars with any NaN among H/L/C count as leading).
    assert np.flatnonzero(~np.isnan(ind.rsi(c, 14)))[0] == 13 + 14
    assert np.flatnonzero(~np.isnan(ind.atr(h, lo, c, 14)))[0] == 13 + 4 + 14
    assert np.flatnonzero(~np.isnan(ind.macd(c)[0]))[0] == 13 + 33


@FMA_TALIB
@pytest.mark.parametrize("which,value", [(2, np.inf), (2, -np.inf), (0, np.inf), (1, -np.inf), (2, 0.0), (2, -5.0)])
def test_infinite_and_non_positive_prices_follow_talib(which, value):
    """Not market data, but defined: as TA-Lib (RSI 0.0 once a sum is infinite), and stream == batch."""
    hlc = [a.copy() for a in make_bars(3, 500, "walk", 100.0)]
    hlc[which][250] = value
    _all_vs_talib(*hlc, f"{'HLC'[which]}[250] = {value}")
    assert_stream_equals_batch(StreamParams(), *hlc, stream_series(StreamParams(), *hlc))


@FMA_TALIB
def test_atr_nan_close_only_changes_the_next_true_range():
    h, lo, c = make_bars(8, 500, "walk", 100.0)
    c2 = c.copy()
    c2[200] = NAN
    a, b = ind.atr(h, lo, c, 14), ind.atr(h, lo, c2, 14)
    assert_bits(a, talib.ATR(h, lo, c, 14), "atr clean")
    assert_bits(b, talib.ATR(h, lo, c2, 14), "atr NaN close")
    assert np.isfinite(b[14:]).all()
    assert bits_equal(a[:201], b[:201]) and not bits_equal(a[201:], b[201:])


def test_flat_and_monotonic_rsi_values():
    flat = np.full(100, 42.0)
    assert (ind.rsi(flat, 14)[14:] == 0.0).all()
    rising = np.arange(1.0, 101.0)
    assert (ind.rsi(rising, 14)[14:] == 100.0).all()
    _, _, lo_band = ind.bbands(flat, 20, 2.0, 2.0)
    assert (lo_band[19:] == 42.0).all()


@FMA_TALIB
@pytest.mark.parametrize("n", [0, 1, 2, 13, 14, 15, 33, 34])
def test_short_series_all_nan_until_lookback(n):
    h, lo, c = make_bars(3, n, "walk", 100.0)
    _all_vs_talib(h, lo, c, f"n={n}")
    assert np.isnan(ind.rsi(c, 14)).all() == (n <= 14)


@FMA_TALIB
def test_all_nan_input_gives_all_nan():
    x = np.full(50, NAN)
    _all_vs_talib(x, x, x, "all NaN")
    assert np.isnan(ind.rolling_vol(x, 5)).all() and np.isnan(ind.log_returns(x)).all()


@FMA_TALIB
def test_integer_input_is_converted_to_float64():
    x = np.arange(1, 200, dtype=np.int32) % 17 + 100
    xf = x.astype(np.float64)
    assert_bits(ind.rsi(x, 14), talib.RSI(xf, 14), "rsi(int32)")
    assert_bits(ind.atr(x + 1, x - 1, x, 14), talib.ATR(xf + 1, xf - 1, xf, 14), "atr(int32)")
    assert ind.sma(list(xf), 5).dtype == np.float64


# ----------------------------------------------------------------------------------------------
# log_returns and rolling_vol
# ----------------------------------------------------------------------------------------------

def test_log_returns_definition():
    x = np.array([NAN, 100.0, 101.0, NAN, 99.0, 99.0, 0.0, 5.0])
    r = ind.log_returns(x)
    want = [NAN, NAN, np.log(101.0 / 100.0), NAN, NAN, 0.0, -np.inf, np.inf]
    assert_bits(r, want, "log_returns")
    assert ind.log_returns(np.array([])).shape == (0,)


@PROPERTY
@given(st.integers(0, 2**32 - 1), st.integers(0, 3000), st.sampled_from((20, 2, 5, 60)),
       st.sampled_from(SCALES), st.sampled_from((0, 1, 9)))
def test_rolling_vol_is_talib_stddev_of_log_returns(seed, n, period, scale, lead):
    """Population std of the last `period` returns, by TA-Lib's algorithm: equal to STDDEV(log returns, nbdev 1)."""
    _, _, c = make_bars(seed, n, "walk", scale, lead=lead)
    vol = ind.rolling_vol(c, period)
    assert_bits(vol, talib.STDDEV(ind.log_returns(c), timeperiod=period, nbdev=1.0), f"rolling_vol({period})")
    valid = np.flatnonzero(~np.isnan(vol))
    if valid.size:
        assert valid[0] == lead + period  # first valid index = period on a clean series
        r = ind.log_returns(c)[valid[-1] - period + 1:valid[-1] + 1]
        assert abs(vol[valid[-1]] - np.std(r)) <= 1e-9 * np.std(r) + 1e-300


def test_rolling_vol_nan_propagates_like_sma():
    _, _, c = make_bars(4, 400, "walk", 100.0)
    c[150] = NAN
    vol = ind.rolling_vol(c, 20)
    assert np.isfinite(vol[20:150]).all()
    assert np.isnan(vol[150:]).all()  # TA-Lib's STDDEV would come back at its next re-seed; ours stays NaN


# ----------------------------------------------------------------------------------------------
# fma
# ----------------------------------------------------------------------------------------------

def exact_fma(a: float, b: float, c: float) -> float:
    return float(Fraction(a) * Fraction(b) + Fraction(c))


def test_fma_is_fused():
    a = b = 1.0 + 2.0**-30
    c = -(1.0 + 2.0**-29)
    assert a * b + c == 0.0  # the product's 2**-60 is lost to rounding ...
    assert ind.fma_f64(a, b, c) == 2.0**-60  # ... and kept by a fused multiply-add


@settings(max_examples=300, deadline=None)
@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.floats(-1e12, 1e12))
def test_fma_is_correctly_rounded(a, b, c):
    assert ind.fma_f64(a, b, c) == exact_fma(a, b, c)


@FMA_TALIB
def test_ema_uses_the_fused_step():
    """One EMA step with values where fused and unfused differ: the kernel (cached) takes the fused one."""
    x = np.array([1.0, 1.1, 3.0])  # seed (n=2) = 1.05, k = 2/3
    e = (1.0 + 1.1) / 2
    k = 2.0 / 3.0
    fused = exact_fma(3.0 - e, k, e)
    assert fused != (3.0 - e) * k + e  # 2.35 vs 2.3499999999999996
    assert ind.ema(x, 2)[2] == fused == talib.EMA(x, 2)[2]


# ----------------------------------------------------------------------------------------------
# Streaming == batch
# ----------------------------------------------------------------------------------------------

STREAM_PARAMS = (
    StreamParams(),
    make_stream_params(rsi_period=2, macd_fast=26, macd_slow=12, macd_signal=1, bb_period=2, bb_up=1.5,
                       bb_dn=2.5, atr_period=1, vol_period=2),
    make_stream_params(rsi_period=30, macd_fast=5, macd_slow=35, macd_signal=5, bb_period=50, bb_up=2.5,
                       bb_dn=1.0, atr_period=20, vol_period=60),
)


def batch_outputs(p: StreamParams, h, lo, c) -> np.ndarray:
    out = np.empty((len(c), N_OUT))
    out[:, OUT_RSI] = ind.rsi(c, p.rsi_period)
    out[:, OUT_MACD], out[:, OUT_MACD_SIGNAL], out[:, OUT_MACD_HIST] = ind.macd(c, p.macd_fast, p.macd_slow,
                                                                               p.macd_signal)
    out[:, OUT_BB_UPPER], out[:, OUT_BB_MIDDLE], out[:, OUT_BB_LOWER] = ind.bbands(c, p.bb_period, p.bb_up, p.bb_dn)
    out[:, OUT_ATR] = ind.atr(h, lo, c, p.atr_period)
    out[:, OUT_RET] = ind.log_returns(c)
    out[:, OUT_VOL] = ind.rolling_vol(c, p.vol_period)
    return out


def assert_stream_equals_batch(p, h, lo, c, got) -> None:
    want = batch_outputs(p, h, lo, c)
    for col in range(N_OUT):
        assert_bits(got[:, col], want[:, col], f"stream column {col} with {p}")


@PROPERTY
@given(bars(max_n=2500), st.sampled_from(STREAM_PARAMS))
def test_stream_equals_batch(hlc, params):
    h, lo, c = hlc
    assert_stream_equals_batch(params, h, lo, c, stream_series(params, h, lo, c))


@pytest.mark.parametrize("params", STREAM_PARAMS)
def test_stream_equals_batch_with_leading_and_middle_nans(params):
    h, lo, c = make_bars(9, 3000, "walk", 50_000.0, spread=1e-5, lead=25, mid_close=(0.3, 0.8), mid_high=(0.6,),
                         lead_high_extra=6)
    assert_stream_equals_batch(params, h, lo, c, stream_series(params, h, lo, c))


def test_stream_equals_batch_over_many_reseeds():
    """Long enough for the variance re-seed (every 32*period bars and on cancellation) to run many times."""
    h, lo, c = make_bars(12, 40_000, "ticks", 50_000.0, spread=1e-6)
    p = StreamParams()
    assert_stream_equals_batch(p, h, lo, c, stream_series(p, h, lo, c))


def test_interleaved_symbols_are_independent():
    p = STREAM_PARAMS[0]
    series = [make_bars(20 + s, 700 + 50 * s, kind, 100.0 * (s + 1), lead=3 * s, mid_close=(0.7,) if s == 1 else ())
              for s, kind in enumerate(("walk", "segments", "ticks"))]
    order = np.concatenate([np.full(len(c), s) for s, (_, _, c) in enumerate(series)])
    np.random.default_rng(0).shuffle(order)
    pos = [0, 0, 0]
    rows = []
    for s in order:
        rows.append((s, pos[s]))
        pos[s] += 1
    syms = np.array([s for s, _ in rows], dtype=np.int64)
    h = np.array([series[s][0][i] for s, i in rows])
    lo = np.array([series[s][1][i] for s, i in rows])
    c = np.array([series[s][2][i] for s, i in rows])
    st_ = new_stream_state(p, 3)
    out = np.empty((len(c), N_OUT))
    stream_feed(st_, syms, h, lo, c, out)
    for s, (hs, ls, cs) in enumerate(series):
        alone = stream_series(p, hs, ls, cs)
        assert_bits(out[syms == s], alone, f"symbol {s} interleaved vs alone")


def test_stream_reset_makes_a_symbol_cold_and_leaves_the_others():
    p = StreamParams()
    h, lo, c = make_bars(30, 400, "walk", 100.0)
    h2, lo2, c2 = make_bars(31, 300, "walk", 70.0, mid_close=(0.5,))
    st_ = new_stream_state(p, 2)
    row = np.empty(N_OUT)
    for i in range(300):  # symbol 0 gets a different history (with a NaN close) first
        stream_update(st_, 0, h2[i], lo2[i], c2[i], row)
    out1 = np.empty((200, N_OUT))
    stream_feed(st_, np.ones(200, dtype=np.int64), h[:200], lo[:200], c[:200], out1)
    stream_reset(st_, 0)
    out0 = np.empty((400, N_OUT))
    stream_feed(st_, np.zeros(400, dtype=np.int64), h, lo, c, out0)
    assert_bits(out0, stream_series(p, h, lo, c), "symbol 0 after reset")
    out1b = np.empty((200, N_OUT))
    stream_feed(st_, np.ones(200, dtype=np.int64), h[200:], lo[200:], c[200:], out1b)
    assert_bits(np.vstack([out1, out1b]), stream_series(p, h, lo, c), "symbol 1 across symbol 0's reset")


def test_stream_state_is_preallocated_and_sized_by_the_periods():
    p = make_stream_params(bb_period=50, vol_period=30)
    st_ = new_stream_state(p, 7)
    assert all(isinstance(a, np.ndarray) for a in st_)
    assert st_.si.shape == (7, ind.N_SI) and st_.sf.shape[0] == 7
    assert st_.sf.shape[1] >= ind.F_RING + 50 + 30 and st_.sf.shape[1] % 8 == 0


# ----------------------------------------------------------------------------------------------
# Argument checks (the ranges are TA-Lib's: each bound is checked against talib too)
# ----------------------------------------------------------------------------------------------

X = np.linspace(100.0, 110.0, 50)

PERIOD_BOUNDS = [  # (ours, talib, keyword, lowest accepted) ; the highest accepted is 100000 for all
    (lambda v: ind.sma(X, v), lambda v: talib.SMA(X, timeperiod=v), "period", 1),
    (lambda v: ind.ema(X, v), lambda v: talib.EMA(X, timeperiod=v), "period", 1),
    (lambda v: ind.rsi(X, v), lambda v: talib.RSI(X, timeperiod=v), "period", 2),
    (lambda v: ind.macd(X, fast=v), lambda v: talib.MACD(X, fastperiod=v), "fast", 2),
    (lambda v: ind.macd(X, slow=v), lambda v: talib.MACD(X, slowperiod=v), "slow", 2),
    (lambda v: ind.macd(X, signal=v), lambda v: talib.MACD(X, signalperiod=v), "signal", 1),
    (lambda v: ind.bbands(X, v), lambda v: talib.BBANDS(X, timeperiod=v), "period", 2),
    (lambda v: ind.atr(X, X, X, v), lambda v: talib.ATR(X, X, X, timeperiod=v), "period", 1),
]


@pytest.mark.parametrize("ours,theirs,name,lowest", PERIOD_BOUNDS)
def test_period_range_is_talibs(ours, theirs, name, lowest):
    for bad in (lowest - 1, 100_001):
        with pytest.raises(ValueError, match=rf"{name} must be in \[{lowest}, 100000\].*got {bad}"):
            ours(bad)
        with pytest.raises(Exception, match="TA_BAD_PARAM"):
            theirs(bad)
    for good in (lowest, 100_000):
        ours(good)
        theirs(good)


@pytest.mark.parametrize("bad", [14.0, 14.5, "14", None, True])
def test_non_integer_period_is_refused(bad):
    with pytest.raises(ValueError, match="period must be an integer"):
        ind.rsi(X, bad)


def test_nbdev_range_is_talibs():
    ind.bbands(X, 5, 3e37, -3e37)
    talib.BBANDS(X, 5, 3e37, -3e37)
    for bad in (3.0000001e37, -3.0000001e37, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="nbdev_up must be in"):
            ind.bbands(X, 5, bad, 2.0)
        with pytest.raises(Exception, match="TA_BAD_PARAM"):
            talib.BBANDS(X, 5, bad, 2.0)
    with pytest.raises(ValueError, match="nbdev_dn must be a real number"):
        ind.bbands(X, 5, 2.0, "2")


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 5)), r"x must be a 1-D array, got ndim=2"),
    (np.float64(3.0), r"x must be a 1-D array, got ndim=0"),
    (np.array([True, False]), r"dtype .*got bool"),
    (np.array([1 + 2j]), r"dtype .*got complex128"),
    (np.array([1.0, None], dtype=object), r"dtype .*got object"),
    (np.array(["1.0"]), r"dtype .*got <U3"),
])
def test_bad_arrays_are_refused_naming_what_was_given(bad, match):
    for fn in (ind.sma, ind.ema, ind.rsi, ind.macd, ind.bbands, ind.log_returns, ind.rolling_vol):
        with pytest.raises(ValueError, match=match):
            fn(bad)


def test_atr_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="same length, got 50, 50, 49"):
        ind.atr(X, X, X[:-1])
    with pytest.raises(ValueError, match="low must have a real"):
        ind.atr(X, X.astype(bool), X)


def test_rolling_vol_period_range():
    with pytest.raises(ValueError, match=r"period must be in \[2, 100000\].*got 1"):
        ind.rolling_vol(X, 1)
    with pytest.raises(Exception, match="TA_BAD_PARAM"):
        talib.STDDEV(X, 1)


@pytest.mark.parametrize("kw,match", [
    (dict(rsi_period=1), r"rsi_period must be in \[2, 100000\].*got 1"),
    (dict(macd_fast=1), r"macd_fast must be in"),
    (dict(macd_slow=100_001), r"macd_slow must be in"),
    (dict(macd_signal=0), r"macd_signal must be in \[1, 100000\]"),
    (dict(bb_period=1), r"bb_period must be in \[2, 100000\]"),
    (dict(bb_up=float("nan")), r"bb_up must be in"),
    (dict(bb_dn=4e37), r"bb_dn must be in"),
    (dict(atr_period=0), r"atr_period must be in \[1, 100000\]"),
    (dict(vol_period=1), r"vol_period must be in \[2, 100000\]"),
    (dict(vol_period=2.5), r"vol_period must be an integer"),
    (dict(rsi=14), r"unknown stream parameter\(s\) \['rsi'\]"),
])
def test_make_stream_params_refuses_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        make_stream_params(**kw)


def test_new_stream_state_refuses_bad_sizes_and_params():
    with pytest.raises(ValueError, match="n_symbols must be an integer >= 1, got 0"):
        new_stream_state(StreamParams(), 0)
    with pytest.raises(ValueError, match="rsi_period must be in"):
        new_stream_state(StreamParams(rsi_period=1), 1)  # a StreamParams built without make_stream_params


def test_installed_talib_is_the_version_these_semantics_pin():
    assert talib.__version__.startswith("0.8."), talib.__version__
    assert talib.__ta_version__.startswith(b"0.8."), talib.__ta_version__
