"""Features: one fixed-layout vector per symbol, computed by numba kernels from the ``book`` ring.

The signal stage and research code share this module. The live stage feeds
every BOOK_EVENT to ``feat_on_event``; ``FeatureComputer.compute(source)``
replays a recording through the real decoder and book/bar kernels
(``core.book_replay``) and feeds the same kernel. A model therefore sees,
live, exactly the numbers it was trained on.

The vector (``FEATURE_NAMES``, ``FEATURE_VERSION``)
---------------------------------------------------
Index constants ``F_*`` name the columns. Bar features change when a bar of
``bar_interval_ms`` closes; book features change on every top, depth or
trade event. Prices are floats in quote units (fixed point / 1e8).

==================== ===========================================================
close                close of the last closed bar
ret_1                log(close / previous close)
vol                  population std of the last ``vol_period`` log returns
rsi                  RSI(rsi_period), TA-Lib semantics (0..100)
macd                 MACD line, MACD(fast, slow, signal), price units
macd_signal          MACD signal line
macd_hist            MACD histogram (line - signal)
macd_hist_norm       macd_hist / close
bb_upper             Bollinger upper band, BBANDS(bb_period, bb_up, bb_dn)
bb_middle            Bollinger middle band (SMA)
bb_lower             Bollinger lower band
bb_pctb              (close - lower) / (upper - lower); NaN when upper == lower
bb_width             (upper - lower) / middle
atr                  ATR(atr_period), price units
atr_norm             atr / close
spread_bps           (ask - bid) / mid * 1e4, latest valid top
microprice_dev_bps   (microprice - mid) / mid * 1e4, microprice = (bid*askq + ask*bidq) / (bidq + askq)
obi_top              (bidq - askq) / (bidq + askq) at the best level
obi_depth            same over the first ``depth_levels`` levels of the latest BK_DEPTH
tfi                  trade-flow imbalance: (taker buy - taker sell) / (buy + sell) volume,
                     each an exponentially decayed sum with half-life ``flow_halflife_ms``
                     (exchange trade time)
rv_bar               realized volatility of the mid inside the last closed bar:
                     sqrt(sum of squared log mid changes between consecutive valid tops)
vwap_dist_bps        (mid - vwap) / vwap * 1e4; vwap = sum(quote volume) / sum(volume) over the
                     last ``vwap_bars`` bars with volume; mid = latest valid top (the bar close
                     before any top)
==================== ===========================================================

A feature that cannot be computed yet is NaN (warm-up, no top yet, empty
window). ``FEATURE_VERSION`` changes whenever a name, an order or a definition
above changes; a model trained on another version is refused at start.

Triggers
--------
``feat_on_event`` returns ``TRIG_BAR`` after a bar of the configured interval
closed (bar features updated), ``TRIG_TOP`` after a top-of-book change, and
``TRIG_NONE`` otherwise; strategies decide on those triggers. Bars of other
intervals, depth and trade events only update book features.

Clocks: ``recv_ns`` (feed receive time, CLOCK_MONOTONIC) of the record that
changed the top is kept per symbol, so staleness can be judged from records
alone; ``tfi`` decays on exchange trade time. Nothing here reads a clock, so a
replay gives the same numbers as the live run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numba as nb
import numpy as np

from core.errors import ConfigError
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
    stream_reset,
    stream_update,
)
from core.records import BK_BAR, BK_DEPTH, BK_TOP, BK_TRADE, BOOK_VALID, DEPTH_LEVELS, FIXED_SCALE, FLAG_BUYER_MAKER

FEATURE_VERSION = 1
FEATURE_NAMES = (
    "close", "ret_1", "vol", "rsi", "macd", "macd_signal", "macd_hist", "macd_hist_norm",
    "bb_upper", "bb_middle", "bb_lower", "bb_pctb", "bb_width", "atr", "atr_norm",
    "spread_bps", "microprice_dev_bps", "obi_top", "obi_depth", "tfi", "rv_bar", "vwap_dist_bps",
)
(F_CLOSE, F_RET, F_VOL, F_RSI, F_MACD, F_MACD_SIGNAL, F_MACD_HIST, F_MACD_HIST_NORM,
 F_BB_UPPER, F_BB_MIDDLE, F_BB_LOWER, F_BB_PCTB, F_BB_WIDTH, F_ATR, F_ATR_NORM,
 F_SPREAD_BPS, F_MICRO_BPS, F_OBI_TOP, F_OBI_DEPTH, F_TFI, F_RV_BAR, F_VWAP_DIST_BPS) = range(len(FEATURE_NAMES))
N_FEATURES = len(FEATURE_NAMES)
#: the bar features (NaN while the indicators warm up); book features follow
BAR_FEATURES = FEATURE_NAMES[: F_SPREAD_BPS]

TRIG_NONE = 0
TRIG_BAR = 1
TRIG_TOP = 2

# top[sym, TOP_*]: the latest top of each symbol (int64)
TOP_BID_PX = 0
TOP_BID_QTY = 1
TOP_ASK_PX = 2
TOP_ASK_QTY = 3
TOP_RECV_NS = 4  # recv_ns of the record that set it
TOP_VALID = 5  # 1 when the book was valid at that top
TOP_SEEN = 6  # 1 once any top arrived
TOP_COLS = 7

# flow[sym, FL_*] (float64)
FL_BUY = 0  # decayed taker-buy volume
FL_SELL = 1  # decayed taker-sell volume
FL_T_MS = 2  # exchange time of the last trade, ms
FL_MID_PREV = 3  # last valid mid (rv), NaN after an invalid top
FL_RV_ACC = 4  # sum of squared log mid changes in the open bar
FL_COLS = 5

# params (float64[P_N])
P_INTERVAL_MS = 0
P_HALFLIFE_MS = 1
P_DEPTH_LEVELS = 2
P_VWAP_BARS = 3
P_N = 4

# counters (int64[C_N])
C_EVENTS = 0
C_BARS = 1  # bars of the configured interval fed to the indicators
C_BAD_BARS = 2  # bars skipped: a non-positive price (never from a real book; counted, not used)
C_BAD_SYMBOL = 3  # events whose symbol id is outside the table (dropped)
C_N = 4

FEATURE_ROW_HEADER = [
    ("exch_ms", "<i8"),  # exchange time of the triggering record (bar: close time of the bar)
    ("recv_ns", "<i8"),  # feed receive time of the triggering record
    ("symbol", "<u2"),  # instrument id
    ("trigger", "u1"),  # TRIG_BAR / TRIG_TOP
    ("book_valid", "u1"),  # 1 when the latest top was valid
]
#: one row of the research API's feature matrix: the header, then every feature as float64
FEATURE_ROW = np.dtype(FEATURE_ROW_HEADER + [(n, "<f8") for n in FEATURE_NAMES], align=True)


@dataclass(frozen=True, kw_only=True)
class FeatureConfig:
    """The ``signal.features`` section: what the feature kernels compute (part of a model's contract)."""

    bar_interval_ms: int = 1000  # bars of this interval (one of book.bar_intervals_ms) drive the indicators
    rsi_period: int = 14
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    bb_period: int = 20
    bb_up: float = 2.0
    bb_dn: float = 2.0
    atr_period: int = 14
    vol_period: int = 20  # bars in the rolling volatility of log returns
    vwap_bars: int = 20  # bars in the VWAP window of vwap_dist_bps
    flow_halflife_ms: float = 5000.0  # half-life of the trade-flow imbalance sums (exchange time)
    depth_levels: int = DEPTH_LEVELS  # levels of BK_DEPTH in obi_depth
    stream: StreamParams = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        def bad(key, problem):
            raise ConfigError(f"signal.features.{key}", problem)

        if self.bar_interval_ms < 1000 or self.bar_interval_ms % 1000:
            bad("bar_interval_ms", f"must be whole seconds >= 1000 ms, got {self.bar_interval_ms}")
        if not 1 <= self.vwap_bars <= 10_000:
            bad("vwap_bars", f"must be in 1..10000, got {self.vwap_bars}")
        if not (self.flow_halflife_ms > 0 and math.isfinite(self.flow_halflife_ms)):
            bad("flow_halflife_ms", f"must be a positive number of ms, got {self.flow_halflife_ms}")
        if not 1 <= self.depth_levels <= DEPTH_LEVELS:
            bad("depth_levels", f"must be in 1..{DEPTH_LEVELS}, got {self.depth_levels}")
        try:
            sp = make_stream_params(rsi_period=self.rsi_period, macd_fast=self.macd_fast, macd_slow=self.macd_slow,
                                    macd_signal=self.macd_signal, bb_period=self.bb_period, bb_up=self.bb_up,
                                    bb_dn=self.bb_dn, atr_period=self.atr_period, vol_period=self.vol_period)
        except ValueError as exc:
            raise ConfigError("signal.features", str(exc)) from exc
        object.__setattr__(self, "stream", sp)

    @classmethod
    def from_dict(cls, d: dict | None, key: str = "signal.features") -> "FeatureConfig":
        d = dict(d or {})
        d = {k: v for k, v in d.items() if not k.startswith("_comment")}
        known = {f for f in cls.__dataclass_fields__ if f != "stream"}
        for k in d:
            if k not in known:
                raise ConfigError(f"{key}.{k}", f"unknown key (known: {', '.join(sorted(known))})")
        types = {"bb_up": float, "bb_dn": float, "flow_halflife_ms": float}
        out = {}
        for k, v in d.items():
            want = types.get(k, int)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (want is int and not float(v).is_integer()):
                raise ConfigError(f"{key}.{k}", f"must be {'a number' if want is float else 'an integer'}, got {v!r}")
            out[k] = want(v)
        return cls(**out)

    def as_dict(self) -> dict:
        """The parameters as plain JSON values (a model's sidecar records them)."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "stream"}


class FeatureState(NamedTuple):
    ind: tuple  # core.indicators.StreamState: RSI, MACD, BBANDS, ATR, returns, volatility per symbol
    ind_out: np.ndarray  # float64[N_OUT]: scratch for one stream_update
    feat: np.ndarray  # float64[n_sym, N_FEATURES]: the current vector of each symbol
    prev: np.ndarray  # float64[n_sym, N_FEATURES]: the vector as of the previous bar
    top: np.ndarray  # int64[n_sym, TOP_COLS]
    flow: np.ndarray  # float64[n_sym, FL_COLS]
    vwap_q: np.ndarray  # float64[n_sym, vwap_bars]: quote volume of the last bars (ring)
    vwap_v: np.ndarray  # float64[n_sym, vwap_bars]: base volume of the last bars (ring)
    vwap_n: np.ndarray  # int64[n_sym, 2]: (bars pushed, next slot)
    params: np.ndarray  # float64[P_N]
    counters: np.ndarray  # int64[C_N]


def new_feature_state(cfg: FeatureConfig, n_symbols: int) -> FeatureState:
    p = np.zeros(P_N)
    p[P_INTERVAL_MS] = cfg.bar_interval_ms
    p[P_HALFLIFE_MS] = cfg.flow_halflife_ms
    p[P_DEPTH_LEVELS] = cfg.depth_levels
    p[P_VWAP_BARS] = cfg.vwap_bars
    fs = FeatureState(ind=new_stream_state(cfg.stream, n_symbols), ind_out=np.full(N_OUT, np.nan),
                      feat=np.full((n_symbols, N_FEATURES), np.nan), prev=np.full((n_symbols, N_FEATURES), np.nan),
                      top=np.zeros((n_symbols, TOP_COLS), np.int64), flow=np.zeros((n_symbols, FL_COLS)),
                      vwap_q=np.zeros((n_symbols, cfg.vwap_bars)), vwap_v=np.zeros((n_symbols, cfg.vwap_bars)),
                      vwap_n=np.zeros((n_symbols, 2), np.int64), params=p, counters=np.zeros(C_N, np.int64))
    for s in range(n_symbols):
        feat_reset(fs, s)
    return fs


@nb.njit(cache=True, nogil=True, _nrt=False)
def feat_reset(fs, sym):
    """Forget everything about ``sym`` (cold: indicators warm up again)."""
    stream_reset(fs.ind, sym)
    for j in range(fs.feat.shape[1]):
        fs.feat[sym, j] = np.nan
        fs.prev[sym, j] = np.nan
    for j in range(fs.top.shape[1]):
        fs.top[sym, j] = 0
    fs.flow[sym, FL_BUY] = 0.0
    fs.flow[sym, FL_SELL] = 0.0
    fs.flow[sym, FL_T_MS] = np.nan
    fs.flow[sym, FL_MID_PREV] = np.nan
    fs.flow[sym, FL_RV_ACC] = 0.0
    fs.vwap_n[sym, 0] = 0
    fs.vwap_n[sym, 1] = 0


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _px(fixed):
    return fixed / FIXED_SCALE


@nb.njit(cache=True, nogil=True, _nrt=False)
def _mid(fs, sym):
    t = fs.top[sym]
    if t[TOP_VALID] == 0 or t[TOP_BID_PX] <= 0 or t[TOP_ASK_PX] <= 0:
        return np.nan
    return (_px(t[TOP_BID_PX]) + _px(t[TOP_ASK_PX])) * 0.5


@nb.njit(cache=True, nogil=True, _nrt=False)
def _vwap_dist(fs, sym):
    f = fs.feat[sym]
    m = _mid(fs, sym)
    if not (m == m):
        m = f[F_CLOSE]
    q = 0.0
    v = 0.0
    cap = fs.vwap_q.shape[1]
    n = min(fs.vwap_n[sym, 0], cap)
    j = fs.vwap_n[sym, 1] if n == cap else 0  # the oldest bar
    for _ in range(n):  # re-summed oldest to newest each time: order-fixed, the window is small
        q += fs.vwap_q[sym, j]
        v += fs.vwap_v[sym, j]
        j = j + 1 if j + 1 < cap else 0
    if v > 0.0 and m == m:
        vw = q / v
        f[F_VWAP_DIST_BPS] = (m - vw) / vw * 1e4
    else:
        f[F_VWAP_DIST_BPS] = np.nan


@nb.njit(cache=True, nogil=True, _nrt=False)
def _on_top(fs, ev, sym):
    t = fs.top[sym]
    f = fs.feat[sym]
    t[TOP_SEEN] = 1
    t[TOP_RECV_NS] = ev.recv_ns
    bp, bq, ap, aq = ev.top_bid_px, ev.top_bid_qty, ev.top_ask_px, ev.top_ask_qty
    valid = ev.state == BOOK_VALID and bp > 0 and ap > 0 and bq > 0 and aq > 0
    t[TOP_VALID] = 1 if valid else 0
    t[TOP_BID_PX] = bp
    t[TOP_BID_QTY] = bq
    t[TOP_ASK_PX] = ap
    t[TOP_ASK_QTY] = aq
    if not valid:
        fs.flow[sym, FL_MID_PREV] = np.nan  # a resync's jump is not volatility
        f[F_SPREAD_BPS] = np.nan
        f[F_MICRO_BPS] = np.nan
        f[F_OBI_TOP] = np.nan
        return
    b, a = _px(bp), _px(ap)
    qb, qa = _px(bq), _px(aq)
    mid = (b + a) * 0.5
    f[F_SPREAD_BPS] = (a - b) / mid * 1e4
    micro = (b * qa + a * qb) / (qb + qa)
    f[F_MICRO_BPS] = (micro - mid) / mid * 1e4
    f[F_OBI_TOP] = (qb - qa) / (qb + qa)
    prev = fs.flow[sym, FL_MID_PREV]
    if prev == prev and prev > 0.0:
        r = math.log(mid / prev)
        fs.flow[sym, FL_RV_ACC] += r * r
    fs.flow[sym, FL_MID_PREV] = mid
    _vwap_dist(fs, sym)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _on_depth(fs, ev, sym):
    n = int(fs.params[P_DEPTH_LEVELS])
    sb = 0.0
    sa = 0.0
    for j in range(n):
        sb += _px(ev.d_bid_qty[j])
        sa += _px(ev.d_ask_qty[j])
    fs.feat[sym, F_OBI_DEPTH] = (sb - sa) / (sb + sa) if ev.state == BOOK_VALID and sb + sa > 0.0 else np.nan


@nb.njit(cache=True, nogil=True, _nrt=False)
def _on_trade(fs, ev, sym):
    fl = fs.flow[sym]
    t = float(ev.tr_time_ms)
    last = fl[FL_T_MS]
    if last == last and t > last:
        d = math.exp2(-(t - last) / fs.params[P_HALFLIFE_MS])
        fl[FL_BUY] *= d
        fl[FL_SELL] *= d
    if not (last == last) or t > last:
        fl[FL_T_MS] = t
    q = _px(ev.tr_qty)
    if ev.flags & FLAG_BUYER_MAKER:
        fl[FL_SELL] += q  # the buyer was the maker: the taker sold
    else:
        fl[FL_BUY] += q
    tot = fl[FL_BUY] + fl[FL_SELL]
    fs.feat[sym, F_TFI] = (fl[FL_BUY] - fl[FL_SELL]) / tot if tot > 0.0 else np.nan


@nb.njit(cache=True, nogil=True, _nrt=False)
def _on_bar(fs, ev, sym):
    if ev.bar_close <= 0 or ev.bar_high <= 0 or ev.bar_low <= 0:
        fs.counters[C_BAD_BARS] += 1
        return False
    f = fs.feat[sym]
    for j in range(f.shape[0]):
        fs.prev[sym, j] = f[j]
    o = fs.ind_out
    close = _px(ev.bar_close)
    stream_update(fs.ind, sym, _px(ev.bar_high), _px(ev.bar_low), close, o)
    f[F_CLOSE] = close
    f[F_RET] = o[OUT_RET]
    f[F_VOL] = o[OUT_VOL]
    f[F_RSI] = o[OUT_RSI]
    f[F_MACD] = o[OUT_MACD]
    f[F_MACD_SIGNAL] = o[OUT_MACD_SIGNAL]
    f[F_MACD_HIST] = o[OUT_MACD_HIST]
    f[F_MACD_HIST_NORM] = o[OUT_MACD_HIST] / close
    up, mid, lo = o[OUT_BB_UPPER], o[OUT_BB_MIDDLE], o[OUT_BB_LOWER]
    f[F_BB_UPPER] = up
    f[F_BB_MIDDLE] = mid
    f[F_BB_LOWER] = lo
    f[F_BB_PCTB] = (close - lo) / (up - lo) if up > lo else np.nan
    f[F_BB_WIDTH] = (up - lo) / mid if mid != 0.0 else np.nan
    f[F_ATR] = o[OUT_ATR]
    f[F_ATR_NORM] = o[OUT_ATR] / close
    fl = fs.flow[sym]
    f[F_RV_BAR] = math.sqrt(fl[FL_RV_ACC])
    fl[FL_RV_ACC] = 0.0
    if ev.bar_volume > 0:  # empty bars carry no volume: the VWAP window holds traded bars only
        k = fs.vwap_n[sym, 1]
        fs.vwap_q[sym, k] = _px(ev.bar_quote_volume)
        fs.vwap_v[sym, k] = _px(ev.bar_volume)
        fs.vwap_n[sym, 1] = (k + 1) % fs.vwap_q.shape[1]
        fs.vwap_n[sym, 0] += 1
    _vwap_dist(fs, sym)
    fs.counters[C_BARS] += 1
    return True


@nb.njit(cache=True, nogil=True, _nrt=False)
def feat_on_event(fs, ev):
    """Apply one BOOK_EVENT; returns TRIG_BAR, TRIG_TOP or TRIG_NONE (see the module docstring)."""
    sym = ev.symbol
    if sym >= fs.feat.shape[0]:
        fs.counters[C_BAD_SYMBOL] += 1
        return TRIG_NONE
    fs.counters[C_EVENTS] += 1
    kind = ev.kind
    if kind == BK_TOP:
        _on_top(fs, ev, sym)
        return TRIG_TOP
    if kind == BK_TRADE:
        _on_trade(fs, ev, sym)
    elif kind == BK_DEPTH:
        _on_depth(fs, ev, sym)
    elif kind == BK_BAR and ev.bar_interval_ms == fs.params[P_INTERVAL_MS]:
        if _on_bar(fs, ev, sym):
            return TRIG_BAR
    return TRIG_NONE


@nb.njit(cache=True, nogil=True, _nrt=False)
def bar_features_ready(feat_row):
    """True when every bar feature except the always-NaN-able band ratio is finite (indicators warm)."""
    for j in range(F_SPREAD_BPS):
        if j == F_BB_PCTB:
            continue  # NaN on a flat window even when warm
        x = feat_row[j]
        if not (x == x):
            return False
    return True


@nb.njit(cache=True, nogil=True, _nrt=False)
def feat_collect(fs, events, n, want_top, mat, hdr, k0):
    """Research path: feed ``events[:n]``; for each bar trigger (and each top trigger if ``want_top``) append
    the symbol's vector to ``mat`` (float64[rows, N_FEATURES]) and ``(exch_ms, recv_ns, symbol, trigger,
    book_valid)`` to ``hdr`` (int64[rows, 5]) from row ``k0``. Returns (events consumed, rows end); stops
    early when the arrays are full."""
    k = k0
    cap = mat.shape[0]
    for i in range(n):
        if k >= cap:
            return i, k
        ev = events[i]
        trig = feat_on_event(fs, ev)
        if trig == TRIG_BAR or (trig == TRIG_TOP and want_top):
            sym = ev.symbol
            hdr[k, 0] = ev.bar_close_ms if trig == TRIG_BAR else ev.exch_ms
            hdr[k, 1] = ev.recv_ns
            hdr[k, 2] = sym
            hdr[k, 3] = trig
            hdr[k, 4] = fs.top[sym, TOP_VALID]
            for j in range(mat.shape[1]):
                mat[k, j] = fs.feat[sym, j]
            k += 1
    return n, k


def rows_from(mat: np.ndarray, hdr: np.ndarray) -> np.ndarray:
    """FEATURE_ROW records from ``feat_collect``'s output arrays."""
    rows = np.zeros(len(mat), FEATURE_ROW)
    for j, name in enumerate(("exch_ms", "recv_ns", "symbol", "trigger", "book_valid")):
        rows[name] = hdr[:, j]
    for j, name in enumerate(FEATURE_NAMES):
        rows[name] = mat[:, j]
    return rows


# ---------------------------------------------------------------------------
# Research API
# ---------------------------------------------------------------------------
class FeatureComputer:
    """The live feature kernels, callable from research code.

    ``config``: a loaded ``core.config.Config`` (its instruments, book
    settings and ``signal.features``), a config file path, or a
    ``FeatureConfig`` (then ``symbols`` names the instruments, in id order).

    ``compute(source)`` returns a FEATURE_ROW array, one row per closed bar
    of ``bar_interval_ms`` (and per top-of-book change with
    ``on=("bar", "top")``), where ``source`` is

    * a recording: a path, or a list of paths forming one session (any format
      ``core.recordings`` reads). It goes through the real decoder and
      book/bar kernels (``core.book_replay``), then the feature kernel the
      signal stage runs;
    * BOOK_EVENT records (what the ``book`` ring carries);
    * bars: a dict or structured array with ``high``, ``low``, ``close``
      (float prices) and optionally ``volume``, ``quote_volume``,
      ``close_ms`` and ``symbol``. Book features are then NaN (no book).
    """

    def __init__(self, config, symbols: list[str] | None = None):
        book_kw = {}
        if isinstance(config, (str, bytes)) or hasattr(config, "__fspath__"):
            from core.config import load_config

            config = load_config(config, host_cpus=None)
        if isinstance(config, FeatureConfig):
            self.features = config
            self.symbols = list(symbols or ["BTCUSDT"])
        else:
            self.features = FeatureConfig.from_dict(config.signal.features)
            self.symbols = [i.symbol for i in config.instruments] if symbols is None else list(symbols)
            b = config.book
            book_kw = dict(levels_capacity=b.levels_capacity, buffer_capacity=b.buffer_capacity,
                           bar_intervals_ms=tuple(b.bar_intervals_ms), emit_empty_bars=b.emit_empty_bars,
                           depth_throttle_ms=b.depth_throttle_ms)
        if self.features.bar_interval_ms not in book_kw.get("bar_intervals_ms", (self.features.bar_interval_ms,)):
            book_kw["bar_intervals_ms"] = tuple(book_kw["bar_intervals_ms"]) + (self.features.bar_interval_ms,)
        book_kw.setdefault("bar_intervals_ms", (self.features.bar_interval_ms,))
        self._book_kw = book_kw

    def book_events(self, paths) -> np.ndarray:
        """The BOOK_EVENT records the book stage publishes for a recorded session (bars close on trades)."""
        from core.book_replay import load_session
        from core.book_worker_kernels import BookConfig, BookEngine
        from core.recordings import iter_session

        if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__"):
            paths = [paths]
        session = load_session(iter_session(list(paths)), self.symbols)
        engine = BookEngine(BookConfig(n_symbols=len(self.symbols), **self._book_kw))
        return engine.process_all(session.md)

    def compute(self, source, on: tuple[str, ...] = ("bar",)) -> np.ndarray:
        from core.records import BOOK_EVENT

        bad = set(on) - {"bar", "top"}
        if bad or not on:
            raise ValueError(f"on must name 'bar' and/or 'top', got {on!r}")
        if isinstance(source, np.ndarray) and source.dtype == BOOK_EVENT:
            events = source
        elif isinstance(source, dict) or (isinstance(source, np.ndarray) and source.dtype.names
                                          and "close" in source.dtype.names):
            events = self._bar_events(source)
        else:
            events = self.book_events(source)
        return self.from_events(events, want_top="top" in on, want_bar="bar" in on)

    def from_events(self, events: np.ndarray, want_top: bool = False, want_bar: bool = True) -> np.ndarray:
        fs = new_feature_state(self.features, len(self.symbols))
        cap = max(1024, len(events) if want_top else len(events) // 2 + 1024)
        mat = np.empty((cap, N_FEATURES))
        hdr = np.empty((cap, 5), np.int64)
        i, k = 0, 0
        while i < len(events):
            used, k = feat_collect(fs, events[i:], len(events) - i, want_top, mat, hdr, k)
            i += used
            if i < len(events):  # full: grow
                mat = np.concatenate([mat, np.empty_like(mat)])
                hdr = np.concatenate([hdr, np.empty_like(hdr)])
        rows = rows_from(mat[:k], hdr[:k])
        if not want_bar:
            rows = rows[rows["trigger"] != TRIG_BAR]
        return rows

    def _bar_events(self, bars) -> np.ndarray:
        from core.records import BOOK_EVENT

        def col(name, default=None):
            if isinstance(bars, dict):
                v = bars.get(name, default)
            else:
                v = bars[name] if name in bars.dtype.names else default
            return None if v is None else np.asarray(v)

        close = col("close")
        high = col("high", close)
        low = col("low", close)
        if close is None or close.ndim != 1:
            raise ValueError("bars need a 1-D 'close' array")
        n = len(close)
        for name, a in (("high", high), ("low", low)):
            if a.shape != close.shape:
                raise ValueError(f"bars: {name} has shape {a.shape}, close has {close.shape}")
        vol = col("volume", np.zeros(n))
        qv = col("quote_volume", vol * close)
        iv = self.features.bar_interval_ms
        close_ms = col("close_ms", np.arange(1, n + 1, dtype=np.int64) * iv - 1)
        sym = col("symbol", np.zeros(n, np.int64))
        ev = np.zeros(n, BOOK_EVENT)
        ev["kind"] = BK_BAR
        ev["symbol"] = sym
        ev["bar_interval_ms"] = iv
        ev["bar_close_ms"] = close_ms
        ev["bar_open_ms"] = close_ms - iv + 1
        ev["exch_ms"] = close_ms
        for field_name, a in (("bar_close", close), ("bar_high", high), ("bar_low", low), ("bar_open", close),
                              ("bar_volume", vol), ("bar_quote_volume", qv)):
            ev[field_name] = np.round(np.asarray(a, np.float64) * FIXED_SCALE).astype(np.int64)
        return ev
