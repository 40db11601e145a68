#!/usr/bin/env python3
"""Train a small LightGBM model on recorded sessions with the live feature kernels; write it and its sidecar.

    .venv/bin/python scripts/train_model.py \\
        --recording ../shared/data/hftbacktest/btcusdt_20240808.gz ../shared/data/hftbacktest/btcusdt_20240809.gz \\
        --recording ../shared/data/hftbacktest/ethusdt_20240808.gz ../shared/data/hftbacktest/ethusdt_20240809.gz \\
        --out config/models/example.txt [--config config/system.json] [--horizon-bars 10] \\
        [--objective binary|regression] [--test-fraction 0.3] [--seed 7] [--num-boost-round 40] [--json]

Rows
----
Each ``--recording`` is ONE session: the files listed after it form one
continuous recording, in the order given. A session is replayed through the
real decoder, book and bar kernels and the feature kernel the signal stage
runs (``core.features.FeatureComputer(config).compute(paths)``), for the
config's instruments and its ``signal.features``; every closed bar of
``bar_interval_ms`` is one row (all of ``FEATURE_NAMES``, in order).

A row is used when
* its bar features are warm (``core.features.bar_features_ready``: every bar
  indicator up to ``spread_bps`` is finite, ``bb_pctb`` excepted). Book
  features may be NaN: LightGBM routes NaN, and so does the live kernel;
* its label is defined: the bar of the same symbol ``horizon`` bars later
  exists in the session (not past its end, not across a gap in the bars).

Label
-----
``fwd = log(close[t + horizon bars] / close[t])``, the forward log return of
the bar close of the same symbol (bar closes are last trade prices).

* ``regression``: the label is ``fwd`` itself (a log return, not scaled).
* ``binary``: the label is ``fwd > 0`` (1 = up). An exactly zero ``fwd``
  (no net move, ~1-2 % of rows at 10 x 1 s bars here) is handled by
  ``--zero-returns``: ``drop`` (default) leaves those rows out of training AND
  of the test metrics, so the model learns up-vs-down and is scored on rows
  that moved; ``negative`` keeps them as label 0 (not up). The count dropped
  is reported.

Split (out of sample by time, no shuffling)
-------------------------------------------
Per session, usable rows in time order: the first ``1 - test_fraction`` of
them train; the next ``horizon`` bars are left out (a train label's return
window ``(t, t + horizon]`` must not overlap a test row's); the rest test.
Train rows of all sessions are pooled, and so are the test rows. So every
test row is later, by more than ``horizon`` bars, than every train row of its
session.

Model
-----
LightGBM, deterministic (``deterministic=True``, ``force_col_wise``,
``num_threads=1``, ``seed``; same data and arguments -> the same file), small
and regularised for ~1300 rows: ``num_leaves`` 7, depth 3, at least 50 rows a
leaf, L2 10, learning rate 0.05, 40 rounds, row and column subsampling. The
parameters were fixed before looking at any test metric; nothing is tuned on
the test rows and there is no early stopping on them.

Price-level features (``--exclude-features``, default ``close``, ``macd``,
``macd_signal``, ``macd_hist``, ``bb_upper``, ``bb_middle``, ``bb_lower``,
``atr``) stay in the model's feature list (the live contract is all of
``FEATURE_NAMES``, in order) but are all-NaN in the training matrix, so no
tree can split on them: in an 11-minute window a price level mostly says
which symbol and which minute a row is from, which does not carry to another
day. Their normalised forms (``macd_hist_norm``, ``bb_pctb``, ``bb_width``,
``atr_norm``, ``ret_1``, ``vol``...) are used. ``--exclude-features`` with no
name uses every feature. The script checks that no split uses an excluded one.

Report (on the test rows only)
------------------------------
binary: AUC (with a rough standard error), log loss, accuracy and hit rate
of the model's direction, against the no-skill baselines: always the TRAIN
set's majority class (accuracy, hit rate), the TRAIN base rate as the
probability (log loss), AUC 0.5. regression: RMSE against predicting zero
and predicting the train mean, and the correlation (IC) of prediction and
return. Rows, class balance, and a verdict. Consecutive rows share 9 of 10
bars of their label window, so the rows are far from independent: the
standard errors use ``n / horizon`` as the effective count, a rough
correction. With ~11 minutes of data expect no-skill numbers; the output
says so. ``--json`` prints the same figures as JSON.

Files
-----
``--out NAME.txt`` (``Booster.save_model``) and the sidecar ``NAME.json``:
``feature_names``, ``feature_version``, ``feature_params``
(``FeatureConfig.as_dict()``, checked by the ml strategy), ``objective``,
``horizon_bars``, ``label``, ``excluded_features``, ``training_data`` (each
session's files with sha256 and size), ``data_hash`` (sha256 over the
training matrix as trained, float64 C order, then the labels as float64),
``split``, ``lightgbm_params``, ``num_boost_round``, ``metrics``,
``command``, ``created_utc``, ``lightgbm_version``. Then the model is loaded
back with ``core.models.load_model`` and its raw scores (the numba kernel
the signal stage runs) are compared, exactly, with
``Booster.predict(raw_score=True)`` on the test rows (and the train rows).

The model and sidecar are written under temporary names, checked, and only
then moved to ``--out``: a model that fails the check is never left there.

Exit status: 0 written and checked; 1 the model failed the check (scores
differ, ``load_model`` refused it, or a tree splits on an excluded feature;
nothing written); 2 bad input (missing or unreadable recording, too few
usable rows (< 100 train or < 20 test), bad arguments or config).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.numba_cache import configure  # noqa: E402

configure()  # before numba is imported: the keyed cache dir

import numpy as np  # noqa: E402

from core.errors import ConfigError, RingtraderError  # noqa: E402
from core.features import (  # noqa: E402
    FEATURE_NAMES,
    FEATURE_VERSION,
    TRIG_BAR,
    FeatureComputer,
    bar_features_ready,
)
from core.models import ModelError, load_model, sidecar_path  # noqa: E402

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2

MIN_TRAIN_ROWS = 100  # fewer cannot fill two leaves of min_data_in_leaf rows
MIN_TEST_ROWS = 20
DEFAULT_CONFIG = ROOT / "config" / "system.json"
#: features in price units: their level identifies symbol and minute more than it predicts (see the docstring)
PRICE_LEVEL_FEATURES = ("close", "macd", "macd_signal", "macd_hist", "bb_upper", "bb_middle", "bb_lower", "atr")

DEFAULTS = dict(horizon_bars=10, objective="binary", test_fraction=0.3, seed=7, num_boost_round=40,
                num_leaves=7, learning_rate=0.05, zero_returns="drop")


class CheckFailed(RingtraderError):
    """The trained model is not what the signal stage would run (exit 1)."""


def lightgbm_params(objective: str, *, seed: int, num_leaves: int, learning_rate: float) -> dict:
    """The booster parameters: deterministic, single-threaded, small and regularised for ~1e3 rows."""
    return {
        "objective": objective,
        "learning_rate": learning_rate,
        "num_leaves": num_leaves,
        "max_depth": 3,
        "min_data_in_leaf": 50,  # ~4 % of the rows: a leaf must describe a real group, not a few bars
        "lambda_l2": 10.0,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "max_bin": 63,
        "deterministic": True,
        "force_col_wise": True,  # LightGBM's advice for reproducible results with deterministic=True
        "num_threads": 1,
        "seed": seed,
        "verbose": -1,
    }


# ---------------------------------------------------------------------------------------------------------------
# Rows and labels
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class SessionData:
    """One ``--recording`` session: its bar rows, labels and split (indices into ``rows``)."""

    index: int
    paths: list[str]
    rows: np.ndarray  # FEATURE_ROW, bar triggers, in event order
    fwd: np.ndarray  # float64 forward log return per row (NaN: undefined)
    usable: np.ndarray  # bool: warm, label defined (and not a dropped zero return)
    n_warm: int = 0
    n_labelled: int = 0
    n_zero_dropped: int = 0
    train: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    test: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def feature_matrix(rows: np.ndarray) -> np.ndarray:
    """float64[rows, N_FEATURES], columns in FEATURE_NAMES order, C-contiguous."""
    return np.ascontiguousarray(np.column_stack([rows[n] for n in FEATURE_NAMES]), dtype=np.float64)


def forward_log_return(rows: np.ndarray, horizon: int, interval_ms: int) -> np.ndarray:
    """``log(close[t + horizon * interval] / close[t])`` per row, same symbol; NaN when that bar is absent."""
    out = np.full(len(rows), np.nan)
    close = rows["close"]
    for sym in np.unique(rows["symbol"]):
        idx = np.flatnonzero(rows["symbol"] == sym)
        t = rows["exch_ms"][idx]
        order = np.argsort(t, kind="stable")
        idx, t = idx[order], t[order]
        want = t + horizon * interval_ms
        j = np.minimum(np.searchsorted(t, want), len(t) - 1)
        hit = t[j] == want  # the exact bar: a gap in the bars (resync, empty bars off) leaves no label
        out[idx[hit]] = np.log(close[idx[j[hit]]] / close[idx[hit]])
    return out


def warm_rows(rows: np.ndarray) -> np.ndarray:
    """bool per row: the live kernel's ``bar_features_ready`` (indicators warm)."""
    mat = feature_matrix(rows)
    return np.fromiter((bar_features_ready(mat[i]) for i in range(len(mat))), bool, len(mat))


def time_split(times: np.ndarray, usable: np.ndarray, test_fraction: float, horizon: int,
               interval_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: the first ``1 - test_fraction`` usable rows by time, a gap, the rest.

    Rows closer than ``horizon`` bars after the last train bar are in neither: their return windows would
    overlap the last train label's.
    """
    idx = np.flatnonzero(usable)
    idx = idx[np.argsort(times[idx], kind="stable")]
    n_train = int(math.floor((1.0 - test_fraction) * len(idx)))
    if n_train < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cutoff = times[idx[n_train - 1]]
    train = idx[times[idx] <= cutoff]  # a bar time shared by several symbols stays on one side
    test = idx[times[idx] > cutoff + horizon * interval_ms]
    return train, test


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_session(fc: FeatureComputer, index: int, paths: list[str], args) -> SessionData:
    """Replay one session and label its rows; ConfigError (exit 2) when it cannot be read or gives no rows."""
    where = f"--recording #{index + 1} ({' '.join(paths)})"
    try:
        rows = fc.compute(paths, on=("bar",))
    except (OSError, EOFError, zlib.error, ValueError, RingtraderError) as exc:  # unreadable, corrupt, unknown
        raise ConfigError("", f"{where}: cannot replay it: {exc}") from exc
    rows = rows[rows["trigger"] == TRIG_BAR]
    if len(rows) == 0:
        raise ConfigError("", f"{where}: no closed {fc.features.bar_interval_ms} ms bars of the configured "
                              f"instruments {fc.symbols}: wrong symbol, or no trades in it?")
    iv = fc.features.bar_interval_ms
    fwd = forward_log_return(rows, args.horizon_bars, iv)
    warm = warm_rows(rows)
    labelled = warm & np.isfinite(fwd)
    usable = labelled.copy()
    n_zero = 0
    if args.objective == "binary" and args.zero_returns == "drop":
        zero = labelled & (fwd == 0.0)
        n_zero = int(zero.sum())
        usable &= ~zero
    s = SessionData(index=index, paths=list(paths), rows=rows, fwd=fwd, usable=usable, n_warm=int(warm.sum()),
                    n_labelled=int(labelled.sum()), n_zero_dropped=n_zero)
    s.train, s.test = time_split(rows["exch_ms"], usable, args.test_fraction, args.horizon_bars, iv)
    if len(s.train) == 0 or len(s.test) == 0:
        raise ConfigError("", f"{where}: {len(rows)} bars, {s.n_warm} warm, {int(usable.sum())} usable: too few for "
                              f"a train and a test part (horizon {args.horizon_bars} bars, test fraction "
                              f"{args.test_fraction})")
    return s


def labels(fwd: np.ndarray, objective: str) -> np.ndarray:
    return (fwd > 0.0).astype(np.float64) if objective == "binary" else fwd.astype(np.float64)


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------

def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN with one class."""
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(score, kind="stable")
    s = score[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):  # mid-ranks over runs of equal scores
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2.0 + 1.0
        i = j + 1
    r = np.empty(len(s))
    r[order] = ranks
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc_se(a: float, n_pos: float, n_neg: float) -> float:
    """Hanley & McNeil (1982) standard error of an AUC from n_pos positives and n_neg negatives."""
    if not (n_pos > 1 and n_neg > 1) or not math.isfinite(a):
        return math.nan
    q1 = a / (2.0 - a)
    q2 = 2.0 * a * a / (1.0 + a)
    return math.sqrt((a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def binary_metrics(y_train, y_test, p_test, fwd_test, horizon: int) -> dict:
    base_rate = float(y_train.mean())
    majority = 1.0 if base_rate > 0.5 else 0.0  # a tie goes to 0 (not up), fixed before seeing the test set
    pred = (p_test > 0.5).astype(np.float64)
    moved = fwd_test != 0.0
    up = fwd_test > 0.0
    a = auc(y_test, p_test)
    n_eff = len(y_test) / horizon
    pos_frac = float(y_test.mean())
    se = auc_se(a, pos_frac * n_eff, (1 - pos_frac) * n_eff)
    model = {
        "auc": a,
        "auc_se_rough": se,
        "log_loss": log_loss(y_test, p_test),
        "accuracy": float((pred == y_test).mean()),
        "hit_rate": float(((p_test > 0.5) == up)[moved].mean()) if moved.any() else math.nan,
        "mean_probability": float(p_test.mean()),
    }
    baseline = {
        "auc": 0.5,
        "log_loss": log_loss(y_test, np.full(len(y_test), base_rate)),
        "accuracy": float((y_test == majority).mean()),
        "hit_rate": float((up == bool(majority))[moved].mean()) if moved.any() else math.nan,
        "train_majority_class": int(majority),
        "train_base_rate": base_rate,
    }
    skill = (math.isfinite(a) and math.isfinite(se) and a - 2 * se > 0.5
             and model["log_loss"] < baseline["log_loss"])
    return {"model": model, "baseline": baseline, "skill": bool(skill),
            "class_balance": {"train_up": base_rate, "test_up": pos_frac}}


def regression_metrics(y_train, y_test, pred, horizon: int) -> dict:
    def rmse(e):
        return float(np.sqrt(np.mean(e * e)))

    mean = float(y_train.mean())
    ic = float(np.corrcoef(pred, y_test)[0, 1]) if np.std(pred) > 0 and np.std(y_test) > 0 else math.nan
    n_eff = len(y_test) / horizon
    ic_se = 1.0 / math.sqrt(n_eff - 3) if n_eff > 3 else math.nan
    model = {"rmse": rmse(pred - y_test), "ic": ic, "ic_se_rough": ic_se,
             "hit_rate": float((np.sign(pred) == np.sign(y_test))[y_test != 0].mean())}
    baseline = {"rmse_zero": rmse(y_test), "rmse_train_mean": rmse(mean - y_test), "train_mean": mean}
    skill = (model["rmse"] < min(baseline["rmse_zero"], baseline["rmse_train_mean"])
             and math.isfinite(ic) and ic - 2 * ic_se > 0)
    return {"model": model, "baseline": baseline, "skill": bool(skill),
            "label_stats": {"train_mean": mean, "train_std": float(y_train.std()), "test_mean": float(y_test.mean()),
                            "test_std": float(y_test.std())}}


def _jsonable(x):
    """Plain JSON values: NaN/inf become null (strict JSON), numpy scalars become Python ones."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    out: Path
    sidecar: dict
    metrics: dict
    sessions: list[SessionData]
    booster: object  # lightgbm.Booster
    X_test: np.ndarray  # the test rows with their real feature values (checked: core.models == LightGBM)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recording", action="append", nargs="+", required=True, metavar="PATH",
                    help="the files of ONE session, in order; repeat --recording for more sessions")
    ap.add_argument("--out", required=True, help="model file to write, NAME.txt (the sidecar is NAME.json)")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="system config (instruments, signal.features)")
    ap.add_argument("--horizon-bars", type=int, default=DEFAULTS["horizon_bars"])
    ap.add_argument("--objective", choices=("binary", "regression"), default=DEFAULTS["objective"])
    ap.add_argument("--zero-returns", choices=("drop", "negative"), default=DEFAULTS["zero_returns"],
                    help="binary: drop rows whose forward return is exactly 0, or label them 0 (not up)")
    ap.add_argument("--test-fraction", type=float, default=DEFAULTS["test_fraction"])
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--num-boost-round", type=int, default=DEFAULTS["num_boost_round"])
    ap.add_argument("--num-leaves", type=int, default=DEFAULTS["num_leaves"])
    ap.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"])
    ap.add_argument("--exclude-features", nargs="*", default=list(PRICE_LEVEL_FEATURES), metavar="NAME",
                    help="features no tree may split on (default: the price-level ones); give none to use all")
    ap.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def check_args(args) -> None:
    """Raise ConfigError naming the bad argument."""
    if args.horizon_bars < 1:
        raise ConfigError("--horizon-bars", f"must be >= 1, got {args.horizon_bars}")
    if not 0.0 < args.test_fraction < 1.0:
        raise ConfigError("--test-fraction", f"must be in (0, 1), got {args.test_fraction}")
    if args.num_boost_round < 1:
        raise ConfigError("--num-boost-round", f"must be >= 1, got {args.num_boost_round}")
    if not 2 <= args.num_leaves <= 131072:
        raise ConfigError("--num-leaves", f"must be in 2..131072, got {args.num_leaves}")
    if not args.learning_rate > 0:
        raise ConfigError("--learning-rate", f"must be > 0, got {args.learning_rate}")
    if Path(args.out).suffix != ".txt":
        raise ConfigError("--out", f"must name a .txt file (LightGBM text model), got {args.out}")
    unknown = [n for n in args.exclude_features if n not in FEATURE_NAMES]
    if unknown:
        raise ConfigError("--exclude-features", f"unknown feature(s) {unknown} (known: {', '.join(FEATURE_NAMES)})")
    if len(set(args.exclude_features)) >= len(FEATURE_NAMES):
        raise ConfigError("--exclude-features", "leaves no feature to train on")
    for i, paths in enumerate(args.recording):
        for p in paths:
            if not Path(p).is_file():
                raise ConfigError("--recording", f"#{i + 1}: {p}: no such file")
    if not Path(args.config).is_file():
        raise ConfigError("--config", f"{args.config}: no such file")


@dataclass
class Pooled:
    """The train and test rows of every session, pooled (sessions in order, rows in time order within each)."""

    X_train: np.ndarray  # real feature values
    X_test: np.ndarray
    fwd_train: np.ndarray
    fwd_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


def pool(sessions: list[SessionData], objective: str) -> Pooled:
    def cat(f):
        return np.concatenate([f(s) for s in sessions])

    fwd_train, fwd_test = cat(lambda s: s.fwd[s.train]), cat(lambda s: s.fwd[s.test])
    p = Pooled(X_train=cat(lambda s: feature_matrix(s.rows[s.train])),
               X_test=cat(lambda s: feature_matrix(s.rows[s.test])), fwd_train=fwd_train, fwd_test=fwd_test,
               y_train=labels(fwd_train, objective), y_test=labels(fwd_test, objective))
    if len(p.y_train) < MIN_TRAIN_ROWS or len(p.y_test) < MIN_TEST_ROWS:
        raise ConfigError("", f"the recordings give {len(p.y_train)} train and {len(p.y_test)} test rows: need "
                              f"at least {MIN_TRAIN_ROWS} and {MIN_TEST_ROWS} (a longer recording?)")
    if objective == "binary" and len(np.unique(p.y_train)) < 2:
        raise ConfigError("", f"the train rows hold one class only ({int(p.y_train[0])}): nothing to learn")
    return p


def train_booster(lgb, X_train_real: np.ndarray, y_train: np.ndarray, excluded: list[str], params: dict,
                  rounds: int):
    """(booster, data_hash). Excluded columns are all-NaN: one bin, so no tree can split on them."""
    X = X_train_real.copy()
    X[:, [FEATURE_NAMES.index(n) for n in excluded]] = np.nan
    data_hash = hashlib.sha256(np.ascontiguousarray(X).tobytes()
                               + np.ascontiguousarray(y_train, dtype="<f8").tobytes()).hexdigest()
    dataset = lgb.Dataset(X, label=y_train, feature_name=list(FEATURE_NAMES), params=params, free_raw_data=False)
    booster = lgb.train(params, dataset, num_boost_round=rounds)
    used = booster.feature_importance("split")
    leaked = [n for n, k in zip(FEATURE_NAMES, used) if n in excluded and k > 0]
    if leaked:  # never ship a model that reads what it was meant to ignore
        raise CheckFailed(f"LightGBM split on excluded feature(s) {leaked}")
    return booster, data_hash


def split_summary(sessions: list[SessionData], symbols: list[str], interval_ms: int) -> list[dict]:
    out = []
    for s in sessions:
        tr, te = s.rows["exch_ms"][s.train], s.rows["exch_ms"][s.test]
        out.append({"session": s.index + 1, "symbols": sorted({symbols[k] for k in np.unique(s.rows["symbol"])}),
                    "bars": int(len(s.rows)), "warm": s.n_warm, "labelled": s.n_labelled,
                    "zero_returns_dropped": s.n_zero_dropped, "train_rows": int(len(tr)), "test_rows": int(len(te)),
                    "train_first_ms": int(tr.min()), "train_last_ms": int(tr.max()),
                    "test_first_ms": int(te.min()), "test_last_ms": int(te.max()),
                    "gap_bars": int((te.min() - tr.max()) // interval_ms - 1)})  # whole bars strictly between
    return out


def check_written(path: Path, booster, matrices: tuple[np.ndarray, ...]) -> None:
    """Load ``path`` as the signal stage does and require its raw scores to equal LightGBM's, exactly."""
    try:
        model = load_model(path, feature_names=FEATURE_NAMES, feature_version=FEATURE_VERSION)
    except ModelError as exc:
        raise CheckFailed(f"core.models.load_model refused the written model: {exc}") from exc
    bad = 0
    for X in matrices:
        bad += int(np.count_nonzero(model.raw(X) != booster.predict(X, raw_score=True)))
    if bad:
        raise CheckFailed(f"{bad} rows score differently through core.models than through "
                          "Booster.predict(raw_score=True)")


def run(args) -> TrainResult:
    """Replay, label, split, train, evaluate, write and check. Bad input raises ConfigError (exit 2), a model
    that fails the check CheckFailed (exit 1; nothing is left at ``--out``)."""
    check_args(args)
    try:
        import lightgbm as lgb
    except ImportError as exc:
        raise ConfigError("", "lightgbm is not installed: scripts/test.sh installs the test extra with it") from exc
    from core.config import load_config

    cfg = load_config(args.config, host_cpus=None)
    fc = FeatureComputer(cfg)
    iv = fc.features.bar_interval_ms
    sessions = []
    for i, paths in enumerate(args.recording):
        print(f"session {i + 1}/{len(args.recording)}: replaying {' '.join(paths)}", file=sys.stderr, flush=True)
        sessions.append(load_session(fc, i, paths, args))
    d = pool(sessions, args.objective)

    excluded = [n for n in FEATURE_NAMES if n in set(args.exclude_features)]
    params = lightgbm_params(args.objective, seed=args.seed, num_leaves=args.num_leaves,
                             learning_rate=args.learning_rate)
    booster, data_hash = train_booster(lgb, d.X_train, d.y_train, excluded, params, args.num_boost_round)

    pred = booster.predict(d.X_test)
    if args.objective == "binary":
        metrics = binary_metrics(d.y_train, d.y_test, pred, d.fwd_test, args.horizon_bars)
    else:
        metrics = regression_metrics(d.y_train, d.y_test, pred, args.horizon_bars)
    metrics["rows"] = {"train": int(len(d.y_train)), "test": int(len(d.y_test)),
                       "zero_returns_dropped": int(sum(s.n_zero_dropped for s in sessions))}
    metrics["trees"] = int(booster.num_trees())
    metrics["features_used"] = {n: int(k) for n, k in zip(FEATURE_NAMES, booster.feature_importance("split"))
                                if k > 0}
    metrics["verdict"] = verdict(args.objective, metrics)

    sidecar = _jsonable({
        "feature_names": list(FEATURE_NAMES),
        "feature_version": FEATURE_VERSION,
        "feature_params": fc.features.as_dict(),
        "objective": args.objective,
        "horizon_bars": args.horizon_bars,
        "label": {"kind": "forward log return of the bar close, same symbol",
                  "definition": "log(close[t + horizon_bars * bar_interval_ms] / close[t])",
                  "binary": "1 when the forward return > 0",
                  "zero_returns": args.zero_returns if args.objective == "binary" else "kept",
                  "bar_interval_ms": iv},
        "excluded_features": excluded,
        "symbols": list(fc.symbols),
        "training_data": [{"session": s.index + 1,
                           "files": [{"path": p, "sha256": file_sha256(p), "bytes": os.path.getsize(p)}
                                     for p in s.paths]} for s in sessions],
        "data_hash": data_hash,
        "split": split_summary(sessions, fc.symbols, iv),
        "test_fraction": args.test_fraction,
        "lightgbm_params": params,
        "num_boost_round": args.num_boost_round,
        "metrics": metrics,
        "command": "scripts/train_model.py " + shlex.join(args.argv),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "lightgbm_version": lgb.__version__,
    })

    # Written under temporary names (model + its sidecar beside it), checked as the signal stage would load
    # them, then moved into place: a model that fails the check never sits at --out.
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.txt")
    try:
        booster.save_model(str(tmp))
        sidecar_path(tmp).write_text(json.dumps(sidecar, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        check_written(tmp, booster, (d.X_test, d.X_train))
        os.replace(sidecar_path(tmp), sidecar_path(out))
        os.replace(tmp, out)
    finally:
        for t in (tmp, sidecar_path(tmp)):
            t.unlink(missing_ok=True)
    return TrainResult(out=out, sidecar=sidecar, metrics=sidecar["metrics"], sessions=sessions, booster=booster,
                       X_test=d.X_test)


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------

def _f(x, nd=4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def report_text(r: TrainResult) -> str:
    sc, m = r.sidecar, r.metrics
    iv = sc["label"]["bar_interval_ms"]
    lines = [f"objective {sc['objective']}, label: forward log return over {sc['horizon_bars']} bars of {iv} ms"
             + (f", zero returns {sc['label']['zero_returns']}" if sc["objective"] == "binary" else "")]
    for s in sc["split"]:
        lines.append(f"  session {s['session']} {','.join(s['symbols'])}: {s['bars']} bars, {s['warm']} warm, "
                     f"{s['labelled']} labelled, {s['zero_returns_dropped']} zero returns dropped -> "
                     f"train {s['train_rows']}, gap {s['gap_bars']} bars, test {s['test_rows']}")
    lines.append(f"rows: train {m['rows']['train']}, test {m['rows']['test']}; {m['trees']} trees; "
                 f"excluded (never split on): {', '.join(sc['excluded_features']) or 'none'}")
    mo, ba = m["model"], m["baseline"]
    if sc["objective"] == "binary":
        cb = m["class_balance"]
        lines.append(f"class balance (up): train {_f(cb['train_up'], 3)}, test {_f(cb['test_up'], 3)}")
        lines.append(f"{'test set':<12}{'model':>10}{'no-skill':>10}   baseline")
        rows = [("AUC", mo["auc"], ba["auc"], "0.5"),
                ("log loss", mo["log_loss"], ba["log_loss"], f"train base rate p={_f(ba['train_base_rate'], 3)}"),
                ("accuracy", mo["accuracy"], ba["accuracy"], f"always class {ba['train_majority_class']} "
                                                             "(train majority)"),
                ("hit rate", mo["hit_rate"], ba["hit_rate"], "direction vs sign of the return, moved rows")]
        for name, a, b, note in rows:
            lines.append(f"{name:<12}{_f(a):>10}{_f(b):>10}   {note}")
        lines.append(f"AUC standard error (rough, n/horizon effective rows): {_f(mo['auc_se_rough'])}")
    else:
        ls = m["label_stats"]
        lines.append(f"label: train mean {ls['train_mean']:.3e} std {ls['train_std']:.3e}; "
                     f"test mean {ls['test_mean']:.3e} std {ls['test_std']:.3e}")
        lines.append(f"{'test set':<12}{'model':>12}{'baseline':>12}")
        lines.append(f"{'RMSE':<12}{mo['rmse']:>12.3e}{ba['rmse_zero']:>12.3e}   predict 0")
        lines.append(f"{'':<12}{'':>12}{ba['rmse_train_mean']:>12.3e}   predict the train mean")
        lines.append(f"{'IC':<12}{_f(mo['ic']):>12}{'0':>12}   correlation; rough SE {_f(mo['ic_se_rough'])}")
        lines.append(f"{'hit rate':<12}{_f(mo['hit_rate']):>12}")
    lines.append("verdict: " + m["verdict"])
    lines.append(f"wrote {r.out} and {sidecar_path(r.out)}")
    return "\n".join(lines)


def verdict(objective: str, m: dict) -> str:
    """One honest sentence on the test metrics against the no-skill baselines."""
    mo, ba = m["model"], m["baseline"]
    if objective == "binary":
        ll = "better" if mo["log_loss"] < ba["log_loss"] else "not better"
        facts = (f"AUC {_f(mo['auc'], 3)} +- {_f(mo['auc_se_rough'], 3)} (rough SE) vs 0.5; log loss "
                 f"{_f(mo['log_loss'], 3)} vs {_f(ba['log_loss'], 3)} for the train base rate ({ll})")
    else:
        rm = "better" if mo["rmse"] < min(ba["rmse_zero"], ba["rmse_train_mean"]) else "not better"
        facts = (f"RMSE {mo['rmse']:.3e} vs {min(ba['rmse_zero'], ba['rmse_train_mean']):.3e} for the best "
                 f"constant ({rm}); IC {_f(mo['ic'], 3)} +- {_f(mo['ic_se_rough'], 3)} (rough SE)")
    if m["skill"]:
        return (f"better than no-skill beyond ~2 rough standard errors on this test set: {facts}. Still minutes "
                "of one day: not evidence of a tradeable edge.")
    return (f"NO evidence of skill: {facts}. Minutes of data cannot show an edge; treat this model as a "
            "pipeline example, not a strategy.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except ConfigError as exc:
        print(f"train_model: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CheckFailed as exc:
        print(f"train_model: CHECK FAILED, nothing written to {args.out}: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    check = (f"core.models raw scores == Booster.predict(raw_score=True) on all {len(result.X_test)} test rows "
             "(and the train rows)")
    if args.json:
        doc = {"out": str(result.out), "sidecar": str(sidecar_path(result.out)), "metrics": result.metrics,
               "check": check}
        print(json.dumps(doc, indent=1, allow_nan=False))
    else:
        print(report_text(result))
        print(f"check: {check}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
