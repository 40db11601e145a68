"""Strategies: decisions on closed bars and top-of-book changes, from the feature vector.

A strategy is a row of a ``StrategyState`` (its type, triggers, parameters and
per-symbol intent) and one branch of ``decide``. The signal stage runs
``sig_process`` over each batch of ``book`` records; research code runs the
same kernel through ``replay_signals`` (``core.features.FeatureComputer``
feeds the same feature kernel), so a replay emits the very signals the live
stage emits.

Configuration (``signal.strategies``, an array; strategy id = position + 1)::

    {"name": "mean_reversion", "type": "rsi_macd_bb", "on": ["bar"], "qty": "0.001",
     "symbols": ["BTCUSDT"], "params": {"oversold": 30, "overbought": 70, ...}}
    {"name": "lgbm", "type": "ml", "on": ["bar", "top"], "qty": "0.001",
     "model": "config/models/example.txt", "params": {"buy_above": 0.55, "sell_below": 0.45}}
    (a relative model path is taken from the project root, else the working directory)
    {"name": "probe", "type": "trace_probe"}        # latency profiling only: one probe per book record

Types
-----
``rsi_macd_bb`` (rule): RSI mean reversion confirmed by MACD and filtered by Bollinger:

* flat -> BUY when RSI < ``oversold``, the MACD histogram rose since the
  previous bar (``use_macd``) and %b <= ``bb_buy_max`` (``use_bb``);
* flat -> SELL when RSI > ``overbought``, the histogram fell and %b >=
  ``bb_sell_min`` (only with ``allow_short``; on Spot a SELL needs inventory,
  which risk decides);
* long -> CLOSE when RSI >= ``exit_rsi``; short -> CLOSE when RSI <= ``exit_rsi``.

  strength = depth past the threshold: (oversold - RSI) / oversold for a BUY,
  -(RSI - overbought) / (100 - overbought) for a SELL, clipped to [-1, 1];
  0 for CLOSE. confidence = |2 %b - 1| clipped to [0, 1] (how far from the
  middle band, in half band widths; 0 when %b is NaN); 1 for CLOSE.

``ml``: one model (``core.models``: ``.npz`` linear/logistic, LightGBM text,
or an opt-in pickle) scores the whole feature vector. Its output o (a
probability for logistic/binary models, the raw score otherwise):

* flat -> BUY when o >= ``buy_above``; flat -> SELL when o <= ``sell_below``
  (``allow_short``);
* long -> CLOSE when o < ``exit_long_below``; short -> CLOSE when o > ``exit_short_above``.

  strength = 2o - 1 for probabilities, tanh(o / ``score_scale``) for raw
  scores; confidence = |strength|. A pickle model is evaluated in Python
  after the kernel, within ``signal.model_budget_us``; over budget, no signal
  and ``model_budget`` is counted.

``every_n`` (params ``every``, default 100): on every Nth top-of-book change
of a symbol, BUY when flat and CLOSE when long (reasons ``every_n_buy`` /
``every_n_exit``). A load and latency-measurement strategy that trades on a
clock of ticks (``scripts/latency_profile.py``'s tick-to-order, fault
campaigns), not a view of the market; no warm-up, but a valid, fresh top.

``trace_probe``: one SIDE_FLAT signal per book record with reason
``R_TRACE_PROBE`` (the latency profiler's end-to-end trace); never a decision.

Intent
------
Each (strategy, symbol) keeps the direction it last entered (flat, long,
short) so a condition that holds for many bars gives one entry and one exit,
not a signal per bar. It is the strategy's view only: risk owns the position.

Suppressions (counted per strategy and reason, never a signal)
--------------------------------------------------------------
``book_invalid``: the latest top is invalid or there is none yet;
``stale``: the latest top was received more than ``signal.max_staleness_ms``
before the triggering record, or the record waited longer than that in the
pipeline (live only: ``now_ns - recv_ns``); ``warmup``: an indicator is not
warm yet; ``model_budget``: a pickle evaluation overran; ``bad_score``: the
model returned NaN/inf. Top triggers are first throttled to one decision per
``signal.update_interval_ms`` of receive time per strategy and symbol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numba as nb
import numpy as np

from core.errors import ConfigError
from core.features import (
    F_ATR,
    F_BB_PCTB,
    F_CLOSE,
    F_MACD_HIST,
    F_RSI,
    FEATURE_NAMES,
    FEATURE_VERSION,
    N_FEATURES,
    TOP_ASK_PX,
    TOP_BID_PX,
    TOP_RECV_NS,
    TOP_VALID,
    TRIG_BAR,
    TRIG_TOP,
    FeatureConfig,
    bar_features_ready,
    feat_on_event,
    new_feature_state,
)
from core.fixedpoint import to_fixed
from core.models import MODEL_LOGISTIC, MODEL_LGBM_BINARY, MODEL_PICKLE, empty_model_arrays, load_model, model_output
from core.records import (
    FIXED_SCALE,
    SIDE_BUY,
    SIDE_CLOSE,
    SIDE_FLAT,
    SIDE_SELL,
    SIGNAL,
    TRIGGER_BAR,
    TRIGGER_EVENT,
    TRIGGER_TOP,
    concat_records,
)

TYPE_RULE = 1
TYPE_ML = 2
TYPE_PROBE = 3
TYPE_EVERY_N = 4
TYPES = {"rsi_macd_bb": TYPE_RULE, "ml": TYPE_ML, "trace_probe": TYPE_PROBE, "every_n": TYPE_EVERY_N}

ON_BAR = 1
ON_TOP = 2
ON_NAMES = {"bar": ON_BAR, "top": ON_TOP}

# reason codes (SIGNAL.reason)
R_RULE_LONG = 1  # RSI oversold (and, by config, the MACD histogram rising, at/below the lower band)
R_RULE_SHORT = 2  # RSI overbought, histogram falling, at/above the upper band
R_RULE_EXIT = 3  # RSI back through exit_rsi
R_ML_LONG = 4  # model output >= buy_above
R_ML_SHORT = 5  # model output <= sell_below
R_ML_EXIT = 6  # model output back inside the exit band
R_EVERY_N_BUY = 7  # the Nth top change of a flat symbol
R_EVERY_N_EXIT = 8  # the Nth top change of a long symbol
R_TRACE_PROBE = 0xFFFF  # trace probe: not a decision
REASON_NAMES = {R_RULE_LONG: "rsi_oversold", R_RULE_SHORT: "rsi_overbought",
                R_RULE_EXIT: "rsi_exit", R_ML_LONG: "model_long", R_ML_SHORT: "model_short", R_ML_EXIT: "model_exit",
                R_EVERY_N_BUY: "every_n_buy", R_EVERY_N_EXIT: "every_n_exit", R_TRACE_PROBE: "trace_probe"}
PROBE_SLOT = 9
N_REASON_SLOTS = 10  # counters: slot = reason (1..8), 9 = trace probe


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def reason_slot(reason):
    return PROBE_SLOT if reason == R_TRACE_PROBE else reason


# suppressions
SUP_BOOK_INVALID = 0
SUP_STALE = 1
SUP_WARMUP = 2
SUP_MODEL_BUDGET = 3
SUP_BAD_SCORE = 4
N_SUP = 5
SUP_NAMES = ("book_invalid", "stale", "warmup", "model_budget", "bad_score")

# params[s, *] of a rule strategy
RP_OVERSOLD, RP_OVERBOUGHT, RP_EXIT, RP_BB_BUY_MAX, RP_BB_SELL_MIN, RP_USE_BB, RP_USE_MACD, RP_ALLOW_SHORT = range(8)
# params[s, *] of an ml strategy
(MP_BUY_ABOVE, MP_SELL_BELOW, MP_EXIT_LONG_BELOW, MP_EXIT_SHORT_ABOVE, MP_ALLOW_SHORT, MP_SCORE_SCALE,
 MP_PROBABILITY) = range(7)
N_PARAMS = 8

RULE_DEFAULTS = {"oversold": 30.0, "overbought": 70.0, "exit_rsi": 50.0, "bb_buy_max": 0.2, "bb_sell_min": 0.8,
                 "use_bb": True, "use_macd": True, "allow_short": True}
ML_DEFAULTS = {"buy_above": 0.55, "sell_below": 0.45, "exit_long_below": 0.5, "exit_short_above": 0.5,
               "allow_short": True, "score_scale": 1.0}
# params[s, *] of an every_n strategy
EP_EVERY = 0
EVERY_N_DEFAULTS = {"every": 100.0}


# ---------------------------------------------------------------------------
# Configuration (Python)
# ---------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class StrategySpec:
    """One validated entry of ``signal.strategies``."""

    id: int  # position + 1 (SIGNAL.strategy)
    name: str
    type: int  # TYPE_*
    on: int  # ON_* bits
    qty: int  # target quantity, fixed point
    symbols: tuple[int, ...]  # instrument ids it trades
    params: np.ndarray  # float64[N_PARAMS]
    model_path: str | None = None


@dataclass(frozen=True, kw_only=True)
class SignalSettings:
    """Everything the signal kernels need, validated: ``build`` raises ConfigError (exit 2) on any problem."""

    features: FeatureConfig
    strategies: tuple[StrategySpec, ...]
    n_symbols: int
    update_interval_ms: int
    max_staleness_ms: int
    model: object = None  # core.models.Model of the ml strategy, or None

    @classmethod
    def build(cls, cfg) -> "SignalSettings":
        """From a loaded ``core.config.Config``: parse the strategies, load and check the model."""
        sc = cfg.signal
        fc = FeatureConfig.from_dict(sc.features)
        book_ivs = tuple(getattr(cfg.book, "bar_intervals_ms", ()))
        if book_ivs and fc.bar_interval_ms not in book_ivs:
            raise ConfigError("signal.features.bar_interval_ms",
                              f"{fc.bar_interval_ms} is not one of book.bar_intervals_ms {list(book_ivs)}")
        symbols = {i.symbol: i.id for i in cfg.instruments}
        root = Path(__file__).resolve().parents[1]  # relative model paths: the project root (then the cwd)
        specs, model, names = [], None, set()
        for i, raw in enumerate(sc.strategies):
            spec, m = _parse_strategy(i, raw, symbols, sc, fc, root)
            if spec.name in names:
                raise ConfigError(f"signal.strategies[{i}].name", f"duplicate strategy name {spec.name!r}")
            names.add(spec.name)
            if m is not None:
                if model is not None:
                    raise ConfigError(f"signal.strategies[{i}]", "at most one ml strategy (one model) per signal stage")
                model = m
            specs.append(spec)
        return cls(features=fc, strategies=tuple(specs), n_symbols=len(cfg.instruments),
                   update_interval_ms=sc.update_interval_ms, max_staleness_ms=sc.max_staleness_ms, model=model)


def _parse_strategy(i: int, raw: dict, symbols: dict, sc, fc: FeatureConfig, root: Path):
    key = f"signal.strategies[{i}]"
    raw = {k: v for k, v in raw.items() if not k.startswith("_comment")}
    known = {"name", "type", "on", "qty", "symbols", "params", "model"}
    for k in raw:
        if k not in known:
            raise ConfigError(f"{key}.{k}", f"is not a known key (known here: {', '.join(sorted(known))})")
    name = raw.get("name")
    if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
        raise ConfigError(f"{key}.name", f"must be a non-empty name of letters, digits and _, got {name!r}")
    typ = raw.get("type")
    if typ not in TYPES:
        raise ConfigError(f"{key}.type", f"must be one of {', '.join(TYPES)}, got {typ!r}")
    t = TYPES[typ]
    on_raw = raw.get("on", ["bar"])
    if not isinstance(on_raw, list) or not on_raw or any(o not in ON_NAMES for o in on_raw):
        raise ConfigError(f"{key}.on", f"must be a non-empty array of {', '.join(ON_NAMES)}, got {on_raw!r}")
    on = 0
    for o in on_raw:
        on |= ON_NAMES[o]
    qty = 0
    if t != TYPE_PROBE:
        q = raw.get("qty")
        if isinstance(q, bool) or not isinstance(q, (str, int, float)):
            raise ConfigError(f"{key}.qty", f"must be a decimal string, got {q!r}")
        try:
            qty = to_fixed(repr(q) if isinstance(q, float) else str(q), allow_negative=True)
        except ValueError as exc:
            raise ConfigError(f"{key}.qty", f"is not an exact decimal: {q!r}") from exc
        if qty <= 0:
            raise ConfigError(f"{key}.qty", f"must be > 0, got {q!r}")
    sym_raw = raw.get("symbols")
    if sym_raw is None:
        sym_ids = tuple(sorted(symbols.values()))
    else:
        if not isinstance(sym_raw, list) or not sym_raw:
            raise ConfigError(f"{key}.symbols", f"must be a non-empty array of instrument symbols, got {sym_raw!r}")
        unknown = [s for s in sym_raw if s not in symbols]
        if unknown:
            raise ConfigError(f"{key}.symbols", f"unknown instrument(s) {unknown} (configured: {', '.join(symbols)})")
        sym_ids = tuple(symbols[s] for s in sym_raw)
    params_raw = raw.get("params", {})
    if not isinstance(params_raw, dict):
        raise ConfigError(f"{key}.params", f"must be an object, got {params_raw!r}")
    p = np.zeros(N_PARAMS)
    model = None
    if t == TYPE_RULE:
        v = _params(f"{key}.params", params_raw, RULE_DEFAULTS)
        if not 0 < v["oversold"] < v["exit_rsi"] < v["overbought"] < 100:
            raise ConfigError(f"{key}.params", "need 0 < oversold < exit_rsi < overbought < 100, got "
                                               f"{v['oversold']}, {v['exit_rsi']}, {v['overbought']}")
        p[[RP_OVERSOLD, RP_OVERBOUGHT, RP_EXIT, RP_BB_BUY_MAX, RP_BB_SELL_MIN]] = (
            v["oversold"], v["overbought"], v["exit_rsi"], v["bb_buy_max"], v["bb_sell_min"])
        p[[RP_USE_BB, RP_USE_MACD, RP_ALLOW_SHORT]] = (v["use_bb"], v["use_macd"], v["allow_short"])
        if "model" in raw:
            raise ConfigError(f"{key}.model", "only an ml strategy takes a model")
    elif t == TYPE_ML:
        mpath = raw.get("model")
        if not isinstance(mpath, str) or not mpath:
            raise ConfigError(f"{key}.model", "an ml strategy needs a model file path")
        path = Path(mpath)
        if not path.is_absolute():
            path = (root / path) if (root / path).exists() or not path.exists() else path.resolve()
        # (a path that exists nowhere stays relative to the project root: the error names it)
        model = load_model(path, feature_names=FEATURE_NAMES, feature_version=FEATURE_VERSION,
                           allow_pickle=sc.allow_pickle, budget_us=sc.model_budget_us, key=f"{key}.model")
        trained = (model.sidecar or {}).get("feature_params")
        if trained is not None and trained != fc.as_dict():
            diff = [k for k in sorted(set(trained) | set(fc.as_dict())) if trained.get(k) != fc.as_dict().get(k)]
            raise ConfigError(f"{key}.model", f"{path} was trained with other feature parameters: "
                                              + ", ".join(f"{k}={trained.get(k)!r} (live {fc.as_dict().get(k)!r})"
                                                          for k in diff))
        v = _params(f"{key}.params", params_raw, ML_DEFAULTS)
        if not v["sell_below"] < v["buy_above"]:
            raise ConfigError(f"{key}.params", f"need sell_below < buy_above, got {v['sell_below']} >= {v['buy_above']}")
        if not v["score_scale"] > 0:
            raise ConfigError(f"{key}.params.score_scale", f"must be > 0, got {v['score_scale']}")
        p[[MP_BUY_ABOVE, MP_SELL_BELOW, MP_EXIT_LONG_BELOW, MP_EXIT_SHORT_ABOVE, MP_ALLOW_SHORT, MP_SCORE_SCALE]] = (
            v["buy_above"], v["sell_below"], v["exit_long_below"], v["exit_short_above"], v["allow_short"],
            v["score_scale"])
        p[MP_PROBABILITY] = 1.0 if model.kind in (MODEL_LOGISTIC, MODEL_LGBM_BINARY) else 0.0
        if model.kind == MODEL_PICKLE:
            p[MP_PROBABILITY] = 1.0 if v.get("probability", True) else 0.0
    elif t == TYPE_EVERY_N:
        if "model" in raw:
            raise ConfigError(f"{key}.model", "only an ml strategy takes a model")
        v = _params(f"{key}.params", params_raw, EVERY_N_DEFAULTS)
        if not (v["every"] >= 1 and float(v["every"]).is_integer()):
            raise ConfigError(f"{key}.params.every", f"must be an integer >= 1, got {v['every']!r}")
        p[EP_EVERY] = v["every"]
        on = ON_TOP
    else:
        if params_raw or "model" in raw:
            raise ConfigError(key, "a trace_probe strategy takes no params or model")
        on = ON_BAR | ON_TOP
    spec = StrategySpec(id=i + 1, name=name, type=t, on=on, qty=qty, symbols=sym_ids, params=p,
                        model_path=str(model.path) if model is not None else None)
    return spec, model


def _params(key: str, raw: dict, defaults: dict) -> dict:
    out = dict(defaults)
    for k, v in raw.items():
        if k.startswith("_comment"):
            continue
        if k not in defaults:
            raise ConfigError(f"{key}.{k}", f"is not a known parameter (known: {', '.join(defaults)})")
        want_bool = isinstance(defaults[k], bool)
        if want_bool != isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ConfigError(f"{key}.{k}", f"must be {'true or false' if want_bool else 'a finite number'}, got {v!r}")
        out[k] = v if want_bool else float(v)
    return out


# ---------------------------------------------------------------------------
# Kernel state
# ---------------------------------------------------------------------------
class StrategyState(NamedTuple):
    types: np.ndarray  # int64[ns]: TYPE_*
    on: np.ndarray  # int64[ns]: ON_* bits
    qty: np.ndarray  # int64[ns]: target quantity, fixed point
    model_id: np.ndarray  # int64[ns]: SIGNAL.model_id (0: no model)
    sym_ok: np.ndarray  # uint8[ns, n_sym]
    params: np.ndarray  # float64[ns, N_PARAMS]
    intent: np.ndarray  # int64[ns, n_sym]: 0 flat, 1 long, -1 short
    last_ns: np.ndarray  # int64[ns, n_sym]: recv_ns of the last top-trigger decision (throttle); every_n: tops seen
    limits: np.ndarray  # int64[2]: (throttle ns, staleness ns)
    sup: np.ndarray  # int64[ns, N_SUP]: suppressions
    sig: np.ndarray  # int64[ns, N_REASON_SLOTS]: signals by reason
    next_id: np.ndarray  # int64[1]: the next signal_id
    pend: np.ndarray  # SIGNAL[cap]: pickle decisions waiting for their score (filled except side/strength)
    pend_x: np.ndarray  # float64[cap, N_FEATURES]: their feature vectors
    pend_n: np.ndarray  # int64[1]


def new_strategy_state(settings: SignalSettings, pend_capacity: int = 256) -> StrategyState:
    specs = settings.strategies
    ns, nsym = max(1, len(specs)), settings.n_symbols
    st = StrategyState(types=np.zeros(ns, np.int64), on=np.zeros(ns, np.int64), qty=np.zeros(ns, np.int64),
                       model_id=np.zeros(ns, np.int64), sym_ok=np.zeros((ns, nsym), np.uint8),
                       params=np.zeros((ns, N_PARAMS)), intent=np.zeros((ns, nsym), np.int64),
                       last_ns=np.full((ns, nsym), -(1 << 62), np.int64),
                       limits=np.array([settings.update_interval_ms * 1_000_000,
                                        settings.max_staleness_ms * 1_000_000], np.int64),
                       sup=np.zeros((ns, N_SUP), np.int64), sig=np.zeros((ns, N_REASON_SLOTS), np.int64),
                       next_id=np.ones(1, np.int64), pend=np.zeros(pend_capacity, SIGNAL),
                       pend_x=np.zeros((pend_capacity, N_FEATURES)), pend_n=np.zeros(1, np.int64))
    for j, s in enumerate(specs):
        st.types[j] = s.type
        st.on[j] = s.on
        st.qty[j] = s.qty
        st.params[j] = s.params
        st.sym_ok[j, list(s.symbols)] = 1
        if s.type == TYPE_EVERY_N:
            st.last_ns[j] = 0  # every_n: a count of top changes, not a time
        if s.type == TYPE_ML and settings.model is not None:
            st.model_id[j] = settings.model.model_id
    return st


def model_arrays(settings: SignalSettings):
    """The ModelArrays the kernel evaluates (an empty model when no ml strategy is configured)."""
    m = settings.model
    return m.arrays if m is not None else empty_model_arrays()


def counter_names(settings: SignalSettings) -> dict[str, tuple[str, int, int]]:
    """``"signals.<strategy>.<reason>"`` and ``"suppressed.<strategy>.<why>"`` -> (array, row, column)."""
    out = {}
    for j, s in enumerate(settings.strategies):
        reasons = {TYPE_RULE: (R_RULE_LONG, R_RULE_SHORT, R_RULE_EXIT), TYPE_ML: (R_ML_LONG, R_ML_SHORT, R_ML_EXIT),
                   TYPE_PROBE: (R_TRACE_PROBE,), TYPE_EVERY_N: (R_EVERY_N_BUY, R_EVERY_N_EXIT)}[s.type]
        for r in reasons:
            out[f"signals.{s.name}.{REASON_NAMES[r]}"] = ("sig", j, PROBE_SLOT if r == R_TRACE_PROBE else r)
        if s.type == TYPE_EVERY_N:
            for k, why in enumerate(SUP_NAMES):
                if why in ("book_invalid", "stale"):
                    out[f"suppressed.{s.name}.{why}"] = ("sup", j, k)
        elif s.type != TYPE_PROBE:
            for k, why in enumerate(SUP_NAMES):
                if why == "model_budget" and not (settings.model is not None and settings.model.kind == MODEL_PICKLE):
                    continue
                if s.type == TYPE_RULE and why in ("model_budget", "bad_score"):
                    continue
                out[f"suppressed.{s.name}.{why}"] = ("sup", j, k)
    return out


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True, _nrt=False)
def _fill(d, st, fs, s, ev, side, strength, confidence, reason, trigger, book_seq):
    """Write one SIGNAL (pub_ns is stamped at publish)."""
    sym = ev.symbol
    t = fs.top[sym]
    d.recv_ns = ev.recv_ns
    d.pub_ns = 0
    d.in_pub_ns = ev.pub_ns
    d.exch_ms = ev.exch_ms
    d.signal_id = st.next_id[0]
    st.next_id[0] += 1
    if t[TOP_VALID] != 0:
        d.ref_px = (t[TOP_BID_PX] + t[TOP_ASK_PX]) // 2
    else:
        c = fs.feat[sym, F_CLOSE]
        d.ref_px = np.int64(round(c * FIXED_SCALE)) if c == c else 0
    d.target_qty = st.qty[s]
    d.limit_px = 0
    d.strength = strength
    d.symbol = sym
    d.side = side
    d.strategy = s + 1
    d.reason = reason
    d.confidence = confidence
    d.model_id = st.model_id[s]
    d.trigger = trigger
    d.atr = fs.feat[sym, F_ATR]
    d.book_seq = book_seq
    st.sig[s, reason_slot(reason)] += 1


@nb.njit(cache=True, nogil=True, _nrt=False)
def _clip(x, lo, hi):
    return lo if x < lo else (hi if x > hi else x)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _rule(st, fs, s, sym):
    """(side, strength, confidence, reason) of the rule strategy, side SIDE_FLAT = no signal."""
    p = st.params[s]
    f = fs.feat[sym]
    rsi = f[F_RSI]
    hist = f[F_MACD_HIST]
    prev_hist = fs.prev[sym, F_MACD_HIST]
    pctb = f[F_BB_PCTB]
    intent = st.intent[s, sym]
    use_macd = p[RP_USE_MACD] != 0.0
    use_bb = p[RP_USE_BB] != 0.0
    conf = _clip(abs(2.0 * pctb - 1.0), 0.0, 1.0) if pctb == pctb else 0.0
    if intent == 0:
        if rsi < p[RP_OVERSOLD] and (not use_macd or hist > prev_hist) and (not use_bb or pctb <= p[RP_BB_BUY_MAX]):
            st.intent[s, sym] = 1
            return SIDE_BUY, _clip((p[RP_OVERSOLD] - rsi) / p[RP_OVERSOLD], 0.0, 1.0), conf, R_RULE_LONG
        if p[RP_ALLOW_SHORT] != 0.0 and rsi > p[RP_OVERBOUGHT] and (not use_macd or hist < prev_hist) \
                and (not use_bb or pctb >= p[RP_BB_SELL_MIN]):
            st.intent[s, sym] = -1
            return SIDE_SELL, -_clip((rsi - p[RP_OVERBOUGHT]) / (100.0 - p[RP_OVERBOUGHT]), 0.0, 1.0), conf, \
                R_RULE_SHORT
    elif (intent == 1 and rsi >= p[RP_EXIT]) or (intent == -1 and rsi <= p[RP_EXIT]):
        st.intent[s, sym] = 0
        return SIDE_CLOSE, 0.0, 1.0, R_RULE_EXIT
    return SIDE_FLAT, 0.0, 0.0, 0


@nb.njit(cache=True, nogil=True, _nrt=False)
def ml_decide(st, s, sym, o):
    """(side, strength, confidence, reason) for model output ``o``; SIDE_FLAT = no signal. Updates the intent."""
    p = st.params[s]
    strength = (2.0 * o - 1.0) if p[MP_PROBABILITY] != 0.0 else math.tanh(o / p[MP_SCORE_SCALE])
    strength = _clip(strength, -1.0, 1.0)
    conf = abs(strength)
    intent = st.intent[s, sym]
    if intent == 0:
        if o >= p[MP_BUY_ABOVE]:
            st.intent[s, sym] = 1
            return SIDE_BUY, strength, conf, R_ML_LONG
        if p[MP_ALLOW_SHORT] != 0.0 and o <= p[MP_SELL_BELOW]:
            st.intent[s, sym] = -1
            return SIDE_SELL, strength, conf, R_ML_SHORT
    elif (intent == 1 and o < p[MP_EXIT_LONG_BELOW]) or (intent == -1 and o > p[MP_EXIT_SHORT_ABOVE]):
        st.intent[s, sym] = 0
        return SIDE_CLOSE, strength, conf, R_ML_EXIT
    return SIDE_FLAT, 0.0, 0.0, 0


@nb.njit(cache=True, nogil=True, _nrt=False)
def _top_usable(st, fs, s, ev, now_ns):
    """The symbol's latest top is valid and fresh for this record (``signal.max_staleness_ms``; live, the
    record's own wait too); otherwise the suppression is counted for strategy ``s``."""
    t = fs.top[ev.symbol]
    if t[TOP_VALID] == 0:
        st.sup[s, SUP_BOOK_INVALID] += 1
        return False
    stale = st.limits[1]
    if ev.recv_ns - t[TOP_RECV_NS] > stale or (now_ns > 0 and now_ns - ev.recv_ns > stale):
        st.sup[s, SUP_STALE] += 1
        return False
    return True


@nb.njit(cache=True, nogil=True, _nrt=False)
def _every_n(st, fs, s, ev, trig, now_ns, out, seq, mask, k, book_seq):
    """``every_n``: on every Nth top-of-book change of a symbol, BUY when flat, CLOSE when long (a load and
    latency-measurement strategy: it trades on a clock of ticks, not on a view). No warm-up; a valid, fresh
    top is still required. ``last_ns[s, sym]`` counts the top changes."""
    if trig != TRIG_TOP:
        return k
    sym = ev.symbol
    st.last_ns[s, sym] += 1
    if st.last_ns[s, sym] % np.int64(st.params[s, EP_EVERY]) != 0:
        return k
    if not _top_usable(st, fs, s, ev, now_ns):
        return k
    if st.intent[s, sym] == 0:
        st.intent[s, sym] = 1
        _fill(out[(seq + k) & mask], st, fs, s, ev, SIDE_BUY, 1.0, 1.0, R_EVERY_N_BUY, TRIGGER_TOP, book_seq)
    else:
        st.intent[s, sym] = 0
        _fill(out[(seq + k) & mask], st, fs, s, ev, SIDE_CLOSE, 0.0, 1.0, R_EVERY_N_EXIT, TRIGGER_TOP, book_seq)
    return k + 1


@nb.njit(cache=True, nogil=True, _nrt=False)
def _decide(st, fs, model, s, ev, trig, now_ns, out, seq, mask, k, book_seq):
    """Strategy ``s`` on one triggering record; returns the new output count ``k``."""
    sym = ev.symbol
    typ = st.types[s]
    if typ == TYPE_PROBE:
        _fill(out[(seq + k) & mask], st, fs, s, ev, SIDE_FLAT, 0.0, 0.0, R_TRACE_PROBE, TRIGGER_EVENT, book_seq)
        return k + 1
    if sym >= st.sym_ok.shape[1] or st.sym_ok[s, sym] == 0:
        return k
    if typ == TYPE_EVERY_N:
        return _every_n(st, fs, s, ev, trig, now_ns, out, seq, mask, k, book_seq)
    if trig == TRIG_BAR:
        if (st.on[s] & ON_BAR) == 0:
            return k
        trigger = TRIGGER_BAR
    elif trig == TRIG_TOP:
        if (st.on[s] & ON_TOP) == 0 or ev.recv_ns - st.last_ns[s, sym] < st.limits[0]:
            return k
        st.last_ns[s, sym] = ev.recv_ns
        trigger = TRIGGER_TOP
    else:
        return k
    if not _top_usable(st, fs, s, ev, now_ns):
        return k
    f = fs.feat[sym]
    if not bar_features_ready(f):
        st.sup[s, SUP_WARMUP] += 1
        return k
    if typ == TYPE_RULE:
        side, strength, conf, reason = _rule(st, fs, s, sym)
    else:
        if model.kind[0] == MODEL_PICKLE:  # scored in Python after this kernel (core.strategies.resolve_pending)
            j = st.pend_n[0]
            if j < st.pend.shape[0]:
                d = st.pend[j]
                _fill(d, st, fs, s, ev, SIDE_FLAT, 0.0, 0.0, 0, trigger, book_seq)
                st.sig[s, 0] -= 1  # counted when resolved
                for c in range(f.shape[0]):
                    st.pend_x[j, c] = f[c]
                st.pend_n[0] = j + 1
            return k
        o = model_output(model, f)
        if not (o == o) or o == np.inf or o == -np.inf:
            st.sup[s, SUP_BAD_SCORE] += 1
            return k
        side, strength, conf, reason = ml_decide(st, s, sym, o)
    if side == SIDE_FLAT:
        return k
    _fill(out[(seq + k) & mask], st, fs, s, ev, side, strength, conf, reason, trigger, book_seq)
    return k + 1


@nb.njit(cache=True, nogil=True, _nrt=False)
def sig_process(st, fs, model, src, n, now_ns, out, seq, mask, book_seq0):
    """Feed ``src[:n]`` (BOOK_EVENT) through the features and every strategy.

    Signals go to ``out[(seq + k) & mask]``; the caller guarantees room for
    ``n * n_strategies`` of them. ``now_ns`` > 0 enables the pipeline-delay
    staleness check (live); 0 disables it (replay). ``book_seq0``: the book
    ring sequence of ``src[0]`` (SIGNAL.book_seq). Returns the signals written.
    """
    k = 0
    ns = st.types.shape[0]
    for i in range(n):
        ev = src[i]
        trig = feat_on_event(fs, ev)
        for s in range(ns):
            if st.types[s] == TYPE_PROBE or trig == TRIG_BAR or trig == TRIG_TOP:
                k = _decide(st, fs, model, s, ev, trig, now_ns, out, seq, mask, k, book_seq0 + i)
    return k


@nb.njit(cache=True, nogil=True, _nrt=False)
def resolve_one(st, j, o, over_budget):
    """Finish pending pickle decision ``j`` with model output ``o``; True when it became a signal (in st.pend[j])."""
    d = st.pend[j]
    s = d.strategy - 1
    sym = d.symbol
    if over_budget:
        st.sup[s, SUP_MODEL_BUDGET] += 1
        return False
    if not (o == o) or o == np.inf or o == -np.inf:
        st.sup[s, SUP_BAD_SCORE] += 1
        return False
    side, strength, conf, reason = ml_decide(st, s, sym, o)
    if side == SIDE_FLAT:
        return False
    d.side = side
    d.strength = strength
    d.confidence = conf
    d.reason = reason
    st.sig[s, reason_slot(reason)] += 1
    return True


def resolve_pending(st: StrategyState, model) -> np.ndarray:
    """Score the pending pickle decisions in Python within the model's budget; returns the signals made."""
    n = int(st.pend_n[0])
    keep = []
    for j in range(n):
        value, _elapsed_ns = model.score(st.pend_x[j])
        if resolve_one(st, j, value, model.last_over_budget):
            keep.append(j)
    st.pend_n[0] = 0
    return st.pend[keep].copy() if keep else st.pend[:0].copy()


# ---------------------------------------------------------------------------
# Research: the live kernels over a recorded or given book stream
# ---------------------------------------------------------------------------
def replay_signals(settings: SignalSettings, events: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Every SIGNAL the live stage would emit for ``events`` (BOOK_EVENT, in ring order), pub_ns = 0."""
    fs = new_feature_state(settings.features, settings.n_symbols)
    st = new_strategy_state(settings, pend_capacity=batch)
    model = model_arrays(settings)
    ns = max(1, len(settings.strategies))
    cap = 1 << max(4, int(batch * ns - 1).bit_length())
    out = np.zeros(cap, SIGNAL)
    parts = []
    for i in range(0, len(events), batch):
        chunk = events[i:i + batch]
        k = sig_process(st, fs, model, chunk, len(chunk), np.int64(0), out, np.int64(0), np.int64(cap - 1),
                        np.int64(i))
        parts.append(out[:k].copy())
        if st.pend_n[0]:
            parts.append(resolve_pending(st, settings.model))
    return concat_records(parts, SIGNAL)
