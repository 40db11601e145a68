"""Technical indicators, bit-identical to TA-Lib 0.8.x: batch functions and O(1) streaming kernels.

Two faces of one arithmetic:

* **Batch** (``sma``, ``ema``, ``rsi``, ``macd``, ``bbands``, ``atr``, plus
  ``log_returns`` and ``rolling_vol``): TA-Lib's Python signatures and
  defaults, float64 in and out, same length as the input, NaN exactly where
  ``talib`` (wrapper 0.8.2, C library 0.8.1) puts NaN. Each is a dedicated
  numba loop.
* **Streaming** (``new_stream_state``, ``stream_update``, ``stream_reset``):
  one call per closed bar per symbol, O(1), no allocation; the state of N
  symbols lives in preallocated 2-D arrays (rows = symbols). After k bars
  the output row equals index k-1 of the batch functions on the same series,
  bit for bit (NaN where batch is NaN).

Both faces call the same ``inline="always"`` step helpers (``_ema_step``,
``_rsi_step``, ``_rsi_value``, ``_trange``, ``_atr_step``, ``_var_add``,
``_var_reseed``, ``_bands``), so every rounding happens in the same order in
both.

Semantics (those of TA-Lib 0.8.1; ../shared/notes/ta-lib-semantics.md has the
derivation, each rule was checked against the installed talib)
--------------------------------------------------------------------------
Lookback L = number of leading NaNs on a clean series:

    sma(n) n-1   ema(n) n-1   rsi(n) n   macd(f,s,g) s+g-2   bbands(n) n-1
    atr(n) n     log_returns 1           rolling_vol(n) n

* Leading NaN inputs are dropped, as the talib wrapper does: the first valid
  output index is (number of leading NaN bars) + L. For ``atr`` a bar counts
  as NaN when any of high/low/close is NaN.
* NaN in the middle: ``sma``, ``ema``, ``macd``, ``bbands`` and
  ``rolling_vol`` give NaN for every later bar (running sums and recursions
  carry it). ``rsi`` gives 0.0 for every later bar (its gain state becomes
  NaN, and a NaN RSI reads as 0.0). ``atr``: a NaN close only makes the next
  true range equal to high-low (NaN comparisons are false); a NaN high or low
  makes that true range NaN, which then propagates through the Wilder
  recursion as in TA-Lib.
* Unstable period: always 0 (TA-Lib's default; ``talib.set_unstable_period``
  is global state this module neither reads nor emulates). With u=0 EMA, RSI
  and ATR start at their lookback and MACD's signal is seeded right after the
  slow EMA's seed.
* Arithmetic: SMA = running total, never re-summed. EMA seeded with the SMA of
  the first n bars, then ``E = fma(x - E, k, E)`` with ``k = 2/(n+1)``;
  EMA(1) is a copy. RSI: Wilder sums seeded with ``sum * (1/n)``, then
  ``G = (G*(n-1) + gain) * (1/n)`` unfused; output ``100*(G/(G+L))``, or
  0.0 where that is NaN (0/0 on a flat window, NaN state, inf/inf). MACD:
  both EMAs seeded at bar slow-1 (fast seed = mean of bars
  slow-fast..slow-1), fast/slow swapped when slow < fast;
  signal = EMA of the MACD line seeded with the mean of its first ``signal``
  values (signal 1: a copy, hist 0). BBANDS: SMA middle band; population
  standard deviation by TA-Lib 0.8.1's shifted running sums with re-seeding
  (``_var_add``, ``_var_reseed``); bands ``mid +- sd*up`` when up == dn, else
  ``upper = fma(sd, up, mid)`` and ``lower = mid - sd*dn``. ATR: true range
  from bar 1, seed = mean of TR[1..n], then ``A = fma(wB, A, wA*TR)`` with
  ``wB = (n-1)/n``, ``wA = 1 - wB``. ATR(1) takes the same path (it equals
  the true range, except that a NaN true range propagates: 0*NaN is NaN).

Non-TA-Lib helpers (exact definitions):

* ``log_returns(x)``: ``r[0] = NaN``, ``r[i] = log(x[i] / x[i-1])`` (one
  division, then libm ``log``). NaN where either price is NaN; a non-positive
  price gives -inf/NaN/inf as IEEE says (no error).
* ``rolling_vol(x, n)``: population standard deviation (divide by n) of the
  last n log returns, computed with the same shifted-sum algorithm as the
  BBANDS deviation, i.e. equal to ``talib.STDDEV(log_returns(x), n, 1.0)``
  while the returns hold no NaN after their first valid one. Leading NaN
  returns are dropped (the first valid output index is the index of the
  first non-NaN return + n - 1, which is n on a clean series); after that any
  NaN return makes every later value NaN, as for SMA (TA-Lib's STDDEV would
  recover at its next re-seed; we do not).

Fused multiply-add
------------------
TA-Lib 0.8.1 ships two builds of each function and picks one when it is
loaded (a GNU ifunc on the CPU's FMA bit: ``TA_MACD.fma`` /
``TA_MACD.default`` in ``libta-lib``). The ``.fma`` build, which talib runs
on any x86-64 CPU with FMA3 (this host), contracts the EMA/MACD/ATR steps
and the upper band when up != dn into fused multiply-adds; a plain
``a*b+c`` is off by ~1 ulp per step, which grows to 1e-4 relative on a
near-zero MACD histogram. These kernels reproduce the ``.fma`` build on
every CPU: on a CPU without FMA talib would run its unfused ``.default``
build and differ from them by those ulps (SMA, RSI, equal-width BBANDS
excepted).

Python 3.11 has no ``math.fma`` and numba exposes none, so ``fma`` below is
an ``@intrinsic`` that emits LLVM's ``llvm.fma.f64``: by LLVM's definition
it is computed without intermediate rounding ("fused") on every target, a
``vfmadd`` instruction on CPUs with FMA3 and a call to libm's correctly
rounded ``fma`` otherwise. Being an intrinsic, it is inlined into the
caller's IR, so callers compile with ``cache=True``. Elsewhere numba never
contracts ``a*b+c`` by itself (no ``fastmath``), which is what the unfused
steps need.

Kernels use ``error_model="numpy"``: float division by zero gives inf/NaN as
in C instead of raising (``log_returns`` over a zero price), and loops carry
no zero-divisor checks.

Streaming contract
------------------
``StreamParams`` (validated by ``make_stream_params``) -> ``new_stream_state(
params, n_symbols)`` -> ``stream_update(st, sym, high, low, close, out)``
writes ``out[0:N_OUT]`` (columns ``OUT_*``) for one closed bar of ``sym``;
``stream_reset(st, sym)`` makes that symbol cold again. Only one thread may
update a given symbol at a time (no locking; the kernels release the GIL).
Close-based indicators (RSI, MACD, BBANDS) ignore bars until the first
non-NaN close, ATR until the first bar with high, low and close all non-NaN,
the volatility until the first non-NaN return, exactly like the batch
functions' leading-NaN rule.
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "N_OUT", "OUT_ATR", "OUT_BB_LOWER", "OUT_BB_MIDDLE", "OUT_BB_UPPER", "OUT_MACD", "OUT_MACD_HIST",
    "OUT_MACD_SIGNAL", "OUT_RET", "OUT_RSI", "OUT_VOL", "StreamParams", "StreamState", "atr", "bbands", "ema",
    "fma", "fma_f64", "log_returns", "macd", "make_stream_params", "new_stream_state", "rolling_vol", "rsi",
    "sma", "stream_feed", "stream_reset", "stream_series", "stream_update",
]

MAX_PERIOD = 100_000  # TA-Lib's upper bound for every period parameter
MAX_NBDEV = 3e37  # TA-Lib's TA_REAL_MAX: |nbdevup|, |nbdevdn| above it are TA_BAD_PARAM
RESEED_FACTOR = 32  # BBANDS/STDDEV variance: re-summed at least every 32*n bars (TA-Lib 0.8.1)

_NAN = np.nan


# --------------------------------------------------------------------------------------------------
# Fused multiply-add
# --------------------------------------------------------------------------------------------------

@intrinsic
def fma(typingctx, a, b, c):
    """``a*b + c`` with one rounding (LLVM ``llvm.fma.f64``), for float64 arguments in numba code."""
    if not all(isinstance(t, types.Float) and t.bitwidth == 64 for t in (a, b, c)):
        return None
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, sig, args):
        f64 = ir.DoubleType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f64, [f64, f64, f64]), "llvm.fma.f64")
        return builder.call(fn, args)

    return sig, codegen


@nb.njit(cache=True, nogil=True)
def fma_f64(a, b, c):
    """``fma`` callable from Python (tests); kernels call ``fma`` directly."""
    return fma(a, b, c)


# --------------------------------------------------------------------------------------------------
# Step helpers shared by the batch loops and the streaming kernel (one arithmetic for both)
# --------------------------------------------------------------------------------------------------

@nb.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _ema_step(e, x, k):
    return fma(x - e, k, e)


@nb.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _rsi_step(g, lo, d, nm1, inv):
    """Wilder update of the average gain ``g`` and loss ``lo`` by the change ``d`` (TA-Lib 0.8.1, unfused).

    TA-Lib: ``if d < 0: L -= d else: G += d`` after scaling by n-1. Adding
    0.0 to the other sum changes nothing (both are >= +0.0 or NaN), which
    lets LLVM use selects instead of an unpredictable branch.
    """
    neg = d < 0.0
    g = (g * nm1 + (0.0 if neg else d)) * inv
    lo = (lo * nm1 - (d if neg else 0.0)) * inv
    return g, lo


@nb.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _rsi_value(g, lo):
    """100*(G/(G+L)), or 0.0 where that is NaN, as TA-Lib.

    G, L >= 0, so NaN means 0/0 (flat window), a NaN state, or inf/inf
    (after an infinite price): exactly the cases "not 0 < G+L < inf" where
    TA-Lib gives 0.0 (with G+L = inf and G finite both give 0.0). Testing
    the quotient is the cheapest form (one compare, off the dependency chain).
    """
    v = 100.0 * (g / (g + lo))
    return v if v == v else 0.0


@nb.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _trange(h, lo, prev_close):
    """TA-Lib TRANGE: max(h-l, |c1-h|, |c1-l|) with strict ``>``, so a NaN ``prev_close`` leaves h-l."""
    tr = h - lo
    v = abs(prev_close - h)
    tr = v if v > tr else tr
    v = abs(prev_close - lo)
    return v if v > tr else tr


@nb.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _atr_step(a, tr, wb, wa):
    return fma(wb, a, wa * tr)


@nb.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _var_add(x, o, s, t1, t2, inv):
    """One bar of TA-Lib 0.8.1's population variance over an n-bar window (shifted running sums).

    Before the call ``t1``/``t2`` hold sum(v-s) and sum((v-s)^2) over the
    window's n-1 older bars; ``x`` is the new bar, ``o`` the oldest bar of
    the window (it leaves after this bar). Returns ``(var, t1, t2, q)``
    with ``o`` removed from the sums and ``q = (o-s)^2``; the caller then
    decides with ``_var_suspect`` whether to ``_var_reseed``.
    """
    e = x - s
    t1 += e
    t2 += e * e
    mean = t1 * inv
    var = t2 * inv - mean * mean
    e = o - s
    t1 -= e
    q = e * e
    t2 -= q
    return var, t1, t2, q


@nb.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _var_suspect(var, t2, q, r, inv):
    """Cancellation (var tiny against the shifted sums), a dominant leaver, or the periodic re-sum due."""
    return var < 1e-6 * (t2 * inv) or q > 1e6 * t2 or r <= 0


@nb.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _var_reseed(buf, row, base, first, o, n, inv):
    """Re-centre on the window mean and re-sum; returns ``(var, s, t1, t2)`` with ``o`` removed again.

    The window, oldest -> newest, is ``buf[row, base + (first + j) % n]``
    for j in 0..n-1: a ring of n slots at columns ``base..base+n-1`` whose
    oldest slot is ``first``. The batch loops pass a 1 x len view of the
    input, ``base`` = the window's start and ``first`` = 0. Runs every ~32n
    bars or on cancellation; inlined like everything in ``stream_update``.
    """
    tot = 0.0
    j = first
    for _ in range(n):
        tot += buf[row, base + j]
        j += 1
        if j == n:
            j = 0
    s = tot * inv
    t1 = 0.0
    t2 = 0.0
    j = first
    for _ in range(n):
        e = buf[row, base + j] - s
        t1 += e
        t2 += e * e
        j += 1
        if j == n:
            j = 0
    mean = t1 * inv
    var = t2 * inv - mean * mean
    if var < 1e-12 * (t2 * inv):
        var = 0.0
    e = o - s
    t1 -= e
    t2 -= e * e
    return var, s, t1, t2


@nb.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _sd(var):
    return math.sqrt(var) if var != 0.0 else 0.0


@nb.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _bands(mid, sd, up, dn, same):
    """(upper, lower) as TA-Lib 0.8.1: one product when up == dn, else fused upper and unfused lower."""
    if same:
        t = sd * up
        return mid + t, mid - t
    return fma(sd, up, mid), mid - sd * dn


# --------------------------------------------------------------------------------------------------
# Batch kernels (out is preallocated by the wrapper; every element is written)
# --------------------------------------------------------------------------------------------------

@nb.njit(cache=True, nogil=True, error_model="numpy")
def _first_valid(x):
    for i in range(len(x)):
        if x[i] == x[i]:
            return i
    return len(x)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _first_valid3(h, lo, c):
    for i in range(len(c)):
        if h[i] == h[i] and lo[i] == lo[i] and c[i] == c[i]:
            return i
    return len(c)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _fill_nan(out, stop):
    for i in range(min(stop, len(out))):
        out[i] = _NAN


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _sma_kernel(x, n, out):
    start = _first_valid(x)
    first = start + n - 1
    _fill_nan(out, first)
    if first >= len(x):
        return
    tot = 0.0
    for i in range(start, first):
        tot += x[i]
    for i in range(first, len(x)):
        tot += x[i]
        out[i] = tot / n
        tot -= x[i - n + 1]


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _ema_kernel(x, n, k, out):
    start = _first_valid(x)
    first = start + n - 1
    _fill_nan(out, first)
    if first >= len(x):
        return
    if n == 1:
        for i in range(first, len(x)):
            out[i] = x[i]
        return
    tot = 0.0
    for i in range(start, first + 1):
        tot += x[i]
    e = tot / n
    out[first] = e
    for i in range(first + 1, len(x)):
        e = _ema_step(e, x[i], k)
        out[i] = e


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _rsi_kernel(x, n, out):
    start = _first_valid(x)
    first = start + n
    _fill_nan(out, first)
    if first >= len(x):
        return
    inv = 1.0 / n
    nm1 = float(n - 1)
    g = 0.0
    lo = 0.0
    prev = x[start]
    for i in range(start + 1, first + 1):
        d = x[i] - prev
        prev = x[i]
        if d < 0.0:
            lo -= d
        else:
            g += d
    g *= inv
    lo *= inv
    out[first] = _rsi_value(g, lo)
    xs = x[first + 1:]  # slices: indices provably >= 0, so no negative-index wrap code in the loop
    os = out[first + 1:]
    for i in range(len(xs)):
        xi = xs[i]
        g, lo = _rsi_step(g, lo, xi - prev, nm1, inv)
        prev = xi
        os[i] = _rsi_value(g, lo)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _macd_kernel(x, fast, slow, sig, kf, ks, kg, out_m, out_s, out_h):
    start = _first_valid(x)
    seed = start + slow - 1  # both EMAs seeded here
    first = seed + sig - 1  # first output
    _fill_nan(out_m, first)
    _fill_nan(out_s, first)
    _fill_nan(out_h, first)
    if first >= len(x):
        return
    ts = 0.0
    tf = 0.0
    for i in range(start, seed + 1):
        ts += x[i]
    for i in range(seed + 1 - fast, seed + 1):
        tf += x[i]
    es = ts / slow
    ef = tf / fast
    # Signal seed: mean of the first `sig` MACD values (bars seed..first), summed from 0.0.
    tg = 0.0
    tg += ef - es
    for i in range(seed + 1, first + 1):
        xi = x[i]
        ef = _ema_step(ef, xi, kf)
        es = _ema_step(es, xi, ks)
        tg += ef - es
    m = ef - es
    g = tg / sig
    out_m[first] = m
    out_s[first] = g
    out_h[first] = m - g
    xs = x[first + 1:]  # slices: no negative-index wrap code in the loops
    om = out_m[first + 1:]
    og = out_s[first + 1:]
    oh = out_h[first + 1:]
    if sig == 1:
        for i in range(len(xs)):
            xi = xs[i]
            ef = _ema_step(ef, xi, kf)
            es = _ema_step(es, xi, ks)
            m = ef - es
            om[i] = m
            og[i] = m
            oh[i] = m - m
    else:
        for i in range(len(xs)):
            xi = xs[i]
            ef = _ema_step(ef, xi, kf)
            es = _ema_step(es, xi, ks)
            m = ef - es
            g = _ema_step(g, m, kg)
            om[i] = m
            og[i] = g
            oh[i] = m - g


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _bbands_kernel(x, n, up, dn, out_u, out_m, out_l):
    start = _first_valid(x)
    first = start + n - 1
    _fill_nan(out_u, first)
    _fill_nan(out_m, first)
    _fill_nan(out_l, first)
    if first >= len(x):
        return
    inv = 1.0 / n
    same = up == dn
    s = x[start]
    tot = 0.0
    t1 = 0.0
    t2 = 0.0
    for i in range(start, first):
        xi = x[i]
        tot += xi
        e = xi - s
        t1 += e
        t2 += e * e
    r = RESEED_FACTOR * n
    x2 = x.reshape((1, len(x)))
    xs = x[first:]  # slices: no negative-index wrap code in the loop
    xo = x[start:]  # xo[j] leaves the window when xs[j] enters
    ou = out_u[first:]
    om = out_m[first:]
    ol = out_l[first:]
    for j in range(len(xs)):
        xi = xs[j]
        tot += xi
        mid = tot / n
        o = xo[j]
        tot -= o
        var, t1, t2, q = _var_add(xi, o, s, t1, t2, inv)
        r -= 1
        if _var_suspect(var, t2, q, r, inv):
            r = RESEED_FACTOR * n
            var, s, t1, t2 = _var_reseed(x2, 0, start + j, 0, o, n, inv)
        u, lo = _bands(mid, _sd(var), up, dn, same)
        ou[j] = u
        om[j] = mid
        ol[j] = lo


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _atr_kernel(h, lo, c, n, out):
    start = _first_valid3(h, lo, c)
    first = start + n
    _fill_nan(out, first)
    if first >= len(c):
        return
    tot = 0.0
    for i in range(start + 1, first + 1):
        tot += _trange(h[i], lo[i], c[i - 1])
    a = tot / n
    out[first] = a
    wb = (n - 1) / n
    wa = 1.0 - wb
    hs = h[first + 1:]  # slices: no negative-index wrap code in the loop
    ls = lo[first + 1:]
    cs = c[first:len(c) - 1]
    os = out[first + 1:]
    for i in range(len(hs)):
        a = _atr_step(a, _trange(hs[i], ls[i], cs[i]), wb, wa)
        os[i] = a


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _log_returns_kernel(x, out):
    if len(x) == 0:
        return
    out[0] = _NAN
    for i in range(1, len(x)):
        out[i] = math.log(x[i] / x[i - 1])


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _rolling_sd_kernel(r, n, out):
    """Population sd of the last n values of ``r``, leading NaNs dropped, sticky NaN afterwards."""
    start = _first_valid(r)
    first = start + n - 1
    _fill_nan(out, first)
    if first >= len(r):
        return
    inv = 1.0 / n
    s = r[start]
    t1 = 0.0
    t2 = 0.0
    for i in range(start, first):
        ri = r[i]
        if ri != ri:
            _fill_nan(out, len(out))
            return
        e = ri - s
        t1 += e
        t2 += e * e
    rs = RESEED_FACTOR * n
    r2 = r.reshape((1, len(r)))
    for i in range(first, len(r)):
        ri = r[i]
        if ri != ri:
            for j in range(i, len(r)):
                out[j] = _NAN
            return
        o = r[i - n + 1]
        var, t1, t2, q = _var_add(ri, o, s, t1, t2, inv)
        rs -= 1
        if _var_suspect(var, t2, q, rs, inv):
            rs = RESEED_FACTOR * n
            var, s, t1, t2 = _var_reseed(r2, 0, i - n + 1, 0, o, n, inv)
        out[i] = _sd(var)


# --------------------------------------------------------------------------------------------------
# Batch API (validation and allocation in Python; numba loops above)
# --------------------------------------------------------------------------------------------------

def _series(name: str, x) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got ndim={a.ndim} (shape {a.shape})")
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{name} must have a real integer or float dtype (converted to float64), got {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float64)


def _period(name: str, value, lo: int, hi: int = MAX_PERIOD) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}] (TA-Lib's range), got {v}")
    return v


def _nbdev(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number in [-{MAX_NBDEV:g}, {MAX_NBDEV:g}], got {value!r}")
    v = float(value)
    if not -MAX_NBDEV <= v <= MAX_NBDEV:  # also rejects NaN
        raise ValueError(f"{name} must be in [-{MAX_NBDEV:g}, {MAX_NBDEV:g}] (TA-Lib's range), got {v!r}")
    return v


def _k(n: int) -> float:
    return 2.0 / (n + 1)  # TA-Lib PER_TO_K


def sma(x, period: int = 30) -> np.ndarray:
    """Simple moving average (talib.SMA): running total / period; lookback period-1. period in [1, 100000]."""
    x = _series("x", x)
    n = _period("period", period, 1)
    out = np.empty(len(x))
    _sma_kernel(x, n, out)
    return out


def ema(x, period: int = 30) -> np.ndarray:
    """Exponential moving average (talib.EMA): SMA seed, then fma(x-E, 2/(n+1), E); lookback period-1.

    period in [1, 100000]; period 1 returns the input (after leading NaNs).
    """
    x = _series("x", x)
    n = _period("period", period, 1)
    out = np.empty(len(x))
    _ema_kernel(x, n, _k(n), out)
    return out


def rsi(x, period: int = 14) -> np.ndarray:
    """Wilder RSI (talib.RSI, 0.8.1 arithmetic); lookback period. period in [2, 100000].

    0.0 where 100*G/(G+L) is NaN (flat window, after a NaN or an infinite price).
    """
    x = _series("x", x)
    n = _period("period", period, 2)
    out = np.empty(len(x))
    _rsi_kernel(x, n, out)
    return out


def macd(x, fast: int = 12, slow: int = 26, signal: int = 9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MACD (talib.MACD): (macd, signal, hist); lookback slow+signal-2 (33 for the defaults).

    fast, slow in [2, 100000] (swapped when slow < fast), signal in [1, 100000].
    """
    x = _series("x", x)
    f = _period("fast", fast, 2)
    s = _period("slow", slow, 2)
    g = _period("signal", signal, 1)
    if s < f:
        f, s = s, f
    m, sg, h = np.empty(len(x)), np.empty(len(x)), np.empty(len(x))
    _macd_kernel(x, f, s, g, _k(f), _k(s), _k(g), m, sg, h)
    return m, sg, h


def bbands(x, period: int = 20, nbdev_up: float = 2.0, nbdev_dn: float = 2.0
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bollinger bands with an SMA middle (talib.BBANDS matype=0): (upper, middle, lower); lookback period-1.

    period in [2, 100000]; nbdev_up/nbdev_dn in [-3e37, 3e37]. Population
    standard deviation by TA-Lib 0.8.1's shifted running sums (see module doc).
    """
    x = _series("x", x)
    n = _period("period", period, 2)
    up = _nbdev("nbdev_up", nbdev_up)
    dn = _nbdev("nbdev_dn", nbdev_dn)
    u, m, lo = np.empty(len(x)), np.empty(len(x)), np.empty(len(x))
    _bbands_kernel(x, n, up, dn, u, m, lo)
    return u, m, lo


def atr(high, low, close, period: int = 14) -> np.ndarray:
    """Average true range (talib.ATR, 0.8.1 fused Wilder step); lookback period. period in [1, 100000]."""
    h = _series("high", high)
    lo = _series("low", low)
    c = _series("close", close)
    if not len(h) == len(lo) == len(c):
        raise ValueError(f"high, low and close must have the same length, got {len(h)}, {len(lo)}, {len(c)}")
    n = _period("period", period, 1)
    out = np.empty(len(c))
    _atr_kernel(h, lo, c, n, out)
    return out


def log_returns(x) -> np.ndarray:
    """``r[0] = NaN``, ``r[i] = log(x[i] / x[i-1])`` (float64, same length)."""
    x = _series("x", x)
    out = np.empty(len(x))
    _log_returns_kernel(x, out)
    return out


def rolling_vol(x, period: int = 20) -> np.ndarray:
    """Population std (divide by period) of the last ``period`` log returns of ``x``; first valid index period.

    Equals ``talib.STDDEV(log_returns(x), period, 1.0)`` (same shifted-sum
    algorithm) except that, once the returns have started, a NaN return makes
    every later value NaN (as SMA does). period in [2, 100000].
    """
    x = _series("x", x)
    n = _period("period", period, 2)
    r = np.empty(len(x))
    _log_returns_kernel(x, r)
    out = np.empty(len(x))
    _rolling_sd_kernel(r, n, out)
    return out


# --------------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------------

# Columns of the per-bar output row (float64[N_OUT]); NaN until that indicator is warm.
OUT_RSI, OUT_MACD, OUT_MACD_SIGNAL, OUT_MACD_HIST, OUT_BB_UPPER, OUT_BB_MIDDLE, OUT_BB_LOWER, OUT_ATR, OUT_RET, \
    OUT_VOL = range(10)
N_OUT = 10

# State layout: two arrays, one row per symbol, so that one symbol's state is contiguous and a kernel
# taking the state handles two arrays (numba counts references per array, see stream_update).
#
#   si[sym] int64, 16 columns (2 cache lines)
#     0..7   parameters (copied into every row by new_stream_state; stream_reset keeps them)
#     8..15  counters and ring positions
#   sf[sym] float64, F_RING + bb_period + vol_period columns, rounded up to a cache line
#     0..11  derived float parameters (kept by stream_reset), 12..15 spare
#     16..33 running values, 34..39 spare
#     F_RING..F_RING+bb_period-1     ring of the last bb_period closes
#     si[I_VOL_RING]..+vol_period-1  ring of the last vol_period returns
I_RSI_N, I_FAST, I_SLOW, I_SIG, I_BB_N, I_ATR_N, I_VOL_N, I_VOL_RING = range(8)  # MACD: fast <= slow
N_I_PARAMS = 8
I_NC = 8  # bars since the first non-NaN close (RSI, MACD, BBANDS; 0 = cold)
I_NA = 9  # bars since the first bar with high, low, close all non-NaN (ATR)
I_NV = 10  # returns since the first non-NaN return (volatility)
I_VOL_DEAD = 11  # 1 once a NaN return followed: volatility NaN until reset
I_BB_POS = 12  # BBANDS ring slot the current close goes to
I_BB_R = 13  # BBANDS re-seed countdown
I_VOL_POS = 14  # volatility ring slot the current return goes to
I_VOL_R = 15  # volatility re-seed countdown
N_SI = 16

F_RSI_INV, F_RSI_NM1, F_KF, F_KS, F_KG, F_BB_UP, F_BB_DN, F_BB_SAME, F_BB_INV, F_ATR_WB, F_ATR_WA, \
    F_VOL_INV = range(12)  # computed exactly as TA-Lib computes them
N_F_PARAMS = 16
F_PREV = 16  # previous bar's close (NaN when cold): return, RSI change, true range
F_RSI_G, F_RSI_L = 17, 18  # gain/loss sums during warm-up, then Wilder averages
F_EF, F_ES, F_SUM_F, F_SUM_S, F_SG, F_SUM_G = 19, 20, 21, 22, 23, 24  # MACD EMAs, seed sums, signal
F_BB_TOT, F_BB_S, F_BB_T1, F_BB_T2 = 25, 26, 27, 28  # SMA total; variance shift and shifted sums
F_ATR, F_ATR_SUM = 29, 30  # ATR; sum of the first true ranges
F_VOL_S, F_VOL_T1, F_VOL_T2 = 31, 32, 33  # volatility shift and shifted sums
F_RING = 40  # first column of the BBANDS ring


class StreamParams(NamedTuple):
    """Indicator periods of the streaming kernels; build with ``make_stream_params`` (validates)."""

    rsi_period: int = 14  # RSI period, [2, 100000]
    macd_fast: int = 12  # MACD fast EMA period, [2, 100000]
    macd_slow: int = 26  # MACD slow EMA period, [2, 100000] (swapped with fast when smaller)
    macd_signal: int = 9  # MACD signal EMA period, [1, 100000]
    bb_period: int = 20  # Bollinger period, [2, 100000]
    bb_up: float = 2.0  # upper band width in standard deviations, [-3e37, 3e37]
    bb_dn: float = 2.0  # lower band width in standard deviations, [-3e37, 3e37]
    atr_period: int = 14  # ATR period, [1, 100000]
    vol_period: int = 20  # rolling volatility window in returns, [2, 100000]


def make_stream_params(**kw) -> StreamParams:
    """A validated ``StreamParams``; ValueError names the field and the value (unknown keys too)."""
    unknown = sorted(set(kw) - set(StreamParams._fields))
    if unknown:
        raise ValueError(f"unknown stream parameter(s) {unknown}; known: {list(StreamParams._fields)}")
    p = StreamParams(**kw)
    return StreamParams(
        rsi_period=_period("rsi_period", p.rsi_period, 2),
        macd_fast=_period("macd_fast", p.macd_fast, 2),
        macd_slow=_period("macd_slow", p.macd_slow, 2),
        macd_signal=_period("macd_signal", p.macd_signal, 1),
        bb_period=_period("bb_period", p.bb_period, 2),
        bb_up=_nbdev("bb_up", p.bb_up),
        bb_dn=_nbdev("bb_dn", p.bb_dn),
        atr_period=_period("atr_period", p.atr_period, 1),
        vol_period=_period("vol_period", p.vol_period, 2),
    )


class StreamState(NamedTuple):
    """Preallocated streaming state for n symbols: two arrays, rows are symbols (layout above)."""

    si: np.ndarray  # int64[n, N_SI]: I_* parameters, counters, ring positions
    sf: np.ndarray  # float64[n, >= F_RING + bb_period + vol_period]: F_* parameters, running values, rings


def new_stream_state(params: StreamParams, n_symbols: int) -> StreamState:
    """Cold state for ``n_symbols`` symbols (ids 0..n_symbols-1). ``params`` is re-validated."""
    p = make_stream_params(**params._asdict())
    if isinstance(n_symbols, (bool, np.bool_)) or not isinstance(n_symbols, (int, np.integer)) or n_symbols < 1:
        raise ValueError(f"n_symbols must be an integer >= 1, got {n_symbols!r}")
    n_sym = int(n_symbols)
    fast, slow = min(p.macd_fast, p.macd_slow), max(p.macd_fast, p.macd_slow)
    width = F_RING + p.bb_period + p.vol_period
    width += -width % 8  # rows a whole number of cache lines long
    si = np.zeros((n_sym, N_SI), dtype=np.int64)
    si[:, I_RSI_N], si[:, I_FAST], si[:, I_SLOW], si[:, I_SIG] = p.rsi_period, fast, slow, p.macd_signal
    si[:, I_BB_N], si[:, I_ATR_N], si[:, I_VOL_N] = p.bb_period, p.atr_period, p.vol_period
    si[:, I_VOL_RING] = F_RING + p.bb_period
    sf = np.zeros((n_sym, width), dtype=np.float64)
    sf[:, F_RSI_INV] = 1.0 / p.rsi_period
    sf[:, F_RSI_NM1] = float(p.rsi_period - 1)
    sf[:, F_KF], sf[:, F_KS], sf[:, F_KG] = _k(fast), _k(slow), _k(p.macd_signal)
    sf[:, F_BB_UP], sf[:, F_BB_DN] = p.bb_up, p.bb_dn
    sf[:, F_BB_SAME] = 1.0 if p.bb_up == p.bb_dn else 0.0
    sf[:, F_BB_INV] = 1.0 / p.bb_period
    wb = (p.atr_period - 1) / p.atr_period
    sf[:, F_ATR_WB], sf[:, F_ATR_WA] = wb, 1.0 - wb
    sf[:, F_VOL_INV] = 1.0 / p.vol_period
    sf[:, F_PREV] = np.nan  # as stream_reset leaves it
    return StreamState(si=si, sf=sf)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def stream_reset(st, sym) -> None:
    """Forget everything about ``sym`` (parameters stay): its next bar is treated as the first one."""
    si = st.si
    sf = st.sf
    for j in range(N_I_PARAMS, si.shape[1]):
        si[sym, j] = 0
    for j in range(N_F_PARAMS, sf.shape[1]):
        sf[sym, j] = 0.0
    sf[sym, F_PREV] = _NAN


@nb.njit(cache=True, nogil=True, inline="always")
def _touch(si, sf, out):
    """Does nothing; called last so that each array's last use is the single exit (see ``stream_update``)."""


@nb.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def stream_update(st, sym, high, low, close, out) -> None:
    """Feed one closed bar of symbol ``sym``; writes ``out[0:N_OUT]`` (the ``OUT_*`` columns).

    O(1) (a BBANDS/volatility re-seed re-sums its window at least every
    32*period bars), no allocation. ``st`` comes from ``new_stream_state``;
    ``0 <= sym < n_symbols`` is the caller's to ensure (not checked: no
    bounds checks in kernels). ~16-20 ns per call on this host, from numba code.

    Written for numba's reference counting: every array a numba function
    binds is counted up on entry and released after its last use, each an
    atomic operation in a call (~4-6 ns on this host). LLVM's refcount
    pruning removes a pair only when nothing between them can raise (any
    call to another numba function can) and the release is not on one of
    several exits. A first version with helper calls and early returns
    spent ~250 of its ~280 ns per bar on ~50 of them. Hence: one function
    (helpers are ``inline="always"`` or plain scalar code), no early return,
    and ``_touch`` as the last use of every array. ``stream_update`` is
    itself ``inline="always"``: a numba caller gets the body inlined, with
    no call that could raise between its own reference pairs, so they can
    be pruned too (a signal-stage-like caller kernel measured 101 ns per bar
    with a real call, 20 ns inlined). Called from Python it is an ordinary
    dispatcher. The state is two arrays to keep such tolls small anyway.
    """
    si = st.si
    sf = st.sf
    prev = sf[sym, F_PREV]
    sf[sym, F_PREV] = close

    # ---- log return and rolling volatility (leading NaN returns skipped; a later NaN kills it until reset)
    ret = math.log(close / prev)
    out[OUT_RET] = ret
    k = si[sym, I_NV]
    if ret != ret:
        if k > 0:
            si[sym, I_VOL_DEAD] = 1
        out[OUT_VOL] = _NAN
    elif si[sym, I_VOL_DEAD] != 0:
        out[OUT_VOL] = _NAN
    else:
        n = si[sym, I_VOL_N]
        base = si[sym, I_VOL_RING]
        pos = si[sym, I_VOL_POS]
        sf[sym, base + pos] = ret
        nxt = pos + 1
        if nxt == n:
            nxt = 0
        si[sym, I_VOL_POS] = nxt
        si[sym, I_NV] = k + 1
        if k == 0:
            sf[sym, F_VOL_S] = ret
            si[sym, I_VOL_R] = RESEED_FACTOR * n
        if k < n - 1:
            e = ret - sf[sym, F_VOL_S]
            sf[sym, F_VOL_T1] += e
            sf[sym, F_VOL_T2] += e * e
            out[OUT_VOL] = _NAN
        else:
            inv = sf[sym, F_VOL_INV]
            o = sf[sym, base + nxt]  # oldest return of the window: the slot after the newest
            var, t1, t2, q = _var_add(ret, o, sf[sym, F_VOL_S], sf[sym, F_VOL_T1], sf[sym, F_VOL_T2], inv)
            r = si[sym, I_VOL_R] - 1
            if _var_suspect(var, t2, q, r, inv):
                r = RESEED_FACTOR * n
                var, sv, t1, t2 = _var_reseed(sf, sym, base, nxt, o, n, inv)
                sf[sym, F_VOL_S] = sv
            si[sym, I_VOL_R] = r
            sf[sym, F_VOL_T1] = t1
            sf[sym, F_VOL_T2] = t2
            out[OUT_VOL] = _sd(var)

    # ---- ATR (from the first bar with high, low, close all non-NaN)
    k = si[sym, I_NA]
    if k == 0:
        if high == high and low == low and close == close:
            si[sym, I_NA] = 1
        out[OUT_ATR] = _NAN
    else:
        si[sym, I_NA] = k + 1
        n = si[sym, I_ATR_N]
        tr = _trange(high, low, prev)
        if k < n:
            sf[sym, F_ATR_SUM] += tr
            out[OUT_ATR] = _NAN
        else:
            if k == n:
                a = (sf[sym, F_ATR_SUM] + tr) / n
            else:
                a = _atr_step(sf[sym, F_ATR], tr, sf[sym, F_ATR_WB], sf[sym, F_ATR_WA])
            sf[sym, F_ATR] = a
            out[OUT_ATR] = a

    # ---- close-based indicators (from the first non-NaN close); t = index of this bar since then
    t = si[sym, I_NC]
    if t == 0 and close != close:
        for j in range(OUT_RSI, OUT_BB_LOWER + 1):
            out[j] = _NAN
    else:
        si[sym, I_NC] = t + 1

        # RSI
        n = si[sym, I_RSI_N]
        if t == 0:
            out[OUT_RSI] = _NAN
        elif t <= n:
            d = close - prev
            g = sf[sym, F_RSI_G]
            lo = sf[sym, F_RSI_L]
            if d < 0.0:
                lo -= d
            else:
                g += d
            if t == n:
                inv = sf[sym, F_RSI_INV]
                g *= inv
                lo *= inv
                out[OUT_RSI] = _rsi_value(g, lo)
            else:
                out[OUT_RSI] = _NAN
            sf[sym, F_RSI_G] = g
            sf[sym, F_RSI_L] = lo
        else:
            g, lo = _rsi_step(sf[sym, F_RSI_G], sf[sym, F_RSI_L], close - prev, sf[sym, F_RSI_NM1],
                              sf[sym, F_RSI_INV])
            sf[sym, F_RSI_G] = g
            sf[sym, F_RSI_L] = lo
            out[OUT_RSI] = _rsi_value(g, lo)

        # MACD: both EMAs seeded at t = slow-1 (fast seed over the last `fast` of those bars), then the signal
        fast = si[sym, I_FAST]
        slow = si[sym, I_SLOW]
        sig = si[sym, I_SIG]
        if t < slow - 1:
            sf[sym, F_SUM_S] += close
            if t >= slow - fast:
                sf[sym, F_SUM_F] += close
            out[OUT_MACD] = _NAN
            out[OUT_MACD_SIGNAL] = _NAN
            out[OUT_MACD_HIST] = _NAN
        else:
            if t == slow - 1:
                es = (sf[sym, F_SUM_S] + close) / slow
                ef = (sf[sym, F_SUM_F] + close) / fast
            else:
                ef = _ema_step(sf[sym, F_EF], close, sf[sym, F_KF])
                es = _ema_step(sf[sym, F_ES], close, sf[sym, F_KS])
            sf[sym, F_EF] = ef
            sf[sym, F_ES] = es
            m = ef - es
            j = t - (slow - 1)  # index of this MACD value
            if j < sig - 1:
                sf[sym, F_SUM_G] += m
                out[OUT_MACD] = _NAN
                out[OUT_MACD_SIGNAL] = _NAN
                out[OUT_MACD_HIST] = _NAN
            else:
                if j == sig - 1:
                    g = (sf[sym, F_SUM_G] + m) / sig
                elif sig == 1:
                    g = m
                else:
                    g = _ema_step(sf[sym, F_SG], m, sf[sym, F_KG])
                sf[sym, F_SG] = g
                out[OUT_MACD] = m
                out[OUT_MACD_SIGNAL] = g
                out[OUT_MACD_HIST] = m - g

        # BBANDS: SMA running total + shifted-sum variance over the ring of the last n closes
        n = si[sym, I_BB_N]
        pos = si[sym, I_BB_POS]
        sf[sym, F_RING + pos] = close
        nxt = pos + 1
        if nxt == n:
            nxt = 0
        si[sym, I_BB_POS] = nxt
        if t == 0:
            sf[sym, F_BB_S] = close
            si[sym, I_BB_R] = RESEED_FACTOR * n
        tot = sf[sym, F_BB_TOT] + close
        if t < n - 1:
            sf[sym, F_BB_TOT] = tot
            e = close - sf[sym, F_BB_S]
            sf[sym, F_BB_T1] += e
            sf[sym, F_BB_T2] += e * e
            out[OUT_BB_UPPER] = _NAN
            out[OUT_BB_MIDDLE] = _NAN
            out[OUT_BB_LOWER] = _NAN
        else:
            mid = tot / n
            o = sf[sym, F_RING + nxt]  # oldest close of the window: the slot after the newest
            sf[sym, F_BB_TOT] = tot - o
            inv = sf[sym, F_BB_INV]
            var, t1, t2, q = _var_add(close, o, sf[sym, F_BB_S], sf[sym, F_BB_T1], sf[sym, F_BB_T2], inv)
            r = si[sym, I_BB_R] - 1
            if _var_suspect(var, t2, q, r, inv):
                r = RESEED_FACTOR * n
                var, sb, t1, t2 = _var_reseed(sf, sym, F_RING, nxt, o, n, inv)
                sf[sym, F_BB_S] = sb
            si[sym, I_BB_R] = r
            sf[sym, F_BB_T1] = t1
            sf[sym, F_BB_T2] = t2
            u, lo = _bands(mid, _sd(var), sf[sym, F_BB_UP], sf[sym, F_BB_DN], sf[sym, F_BB_SAME] != 0.0)
            out[OUT_BB_UPPER] = u
            out[OUT_BB_MIDDLE] = mid
            out[OUT_BB_LOWER] = lo
    _touch(si, sf, out)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def stream_feed(st, syms, high, low, close, out) -> None:
    """``stream_update`` for bar i of symbol ``syms[i]`` into ``out[i]``, in order (tests, benchmarks)."""
    for i in range(len(close)):
        stream_update(st, syms[i], high[i], low[i], close[i], out[i])


def stream_series(params: StreamParams, high, low, close) -> np.ndarray:
    """Feed one symbol's bars one at a time through ``stream_update``; returns out[n, N_OUT]."""
    h = _series("high", high)
    lo = _series("low", low)
    c = _series("close", close)
    if not len(h) == len(lo) == len(c):
        raise ValueError(f"high, low and close must have the same length, got {len(h)}, {len(lo)}, {len(c)}")
    st = new_stream_state(params, 1)
    out = np.empty((len(c), N_OUT))
    stream_feed(st, np.zeros(len(c), dtype=np.int64), h, lo, c, out)
    return out
