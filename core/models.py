"""Model files for the signal stage's ML strategy: load, check, compile to flat arrays, evaluate in numba.

``load_model(path, feature_names=..., feature_version=...)`` reads one model
file, checks it against the live feature contract, and returns a ``Model``
whose ``arrays`` (a ``ModelArrays`` of plain numpy arrays) the signal kernel
passes to ``model_raw`` / ``model_output``. Every kind shares ONE
``ModelArrays`` type (unused arrays have length 0), so one compiled kernel
signature serves all of them.

Formats (chosen by the file suffix; anything else is a ``ModelError``)
-----------------------------------------------------------------------

``.npz``  linear / logistic weights (write them with ``save_linear_npz``)::

    weights          float64[n_features]   finite
    bias             float64 scalar        finite
    kind             str scalar            "linear" | "logistic"
    feature_names    str[n_features]
    feature_version  int scalar

    raw    = bias + sum_i weights[i] * x[i]     (summed in feature order)
    output = raw (linear) | 1 / (1 + exp(-raw)) (logistic)

``.txt``  LightGBM's text model (``Booster.save_model``), parsed here with
plain Python (lightgbm is a training/test dependency only) and compiled
into the flat tree arrays below. Supported: ``num_class=1``, numerical
splits, objectives whose prediction is the raw score (``regression``,
``regression_l1``, ``huber``, ``fair``, ``quantile``, ``mape``; not with
``reg_sqrt``) and ``binary`` (output = ``1 / (1 + exp(-sigmoid * raw))``),
and random-forest mode (``average_output``). Rejected with a ``ModelError``:
multiclass, categorical splits, ``linear_tree``, other objectives (poisson,
gamma, tweedie, lambdarank, xentropy, custom), a truncated file (no
``end of trees``, fewer trees than ``tree_sizes``, short arrays) and a tree
whose child links are not a tree (the kernel could loop on them).

``.pkl`` / ``.pickle``  any object with ``predict(X)`` (sklearn-like, or a
lightgbm Booster), loaded ONLY with ``allow_pickle=True`` (config
``signal.allow_pickle: true``): unpickling runs arbitrary code from the
file. It runs in Python, never in the kernel; see "Pickle budget" below.

Sidecar and feature contract
----------------------------
Each model names the features it was trained on, in order, and their
``feature_version``. The sidecar is ``<model path with its suffix replaced
by .json>`` (``config/models/btc.txt`` -> ``config/models/btc.json``)::

    {"feature_names": ["f0", "f1", ...], "feature_version": 3, ...anything else}

* LightGBM: the sidecar is required (the text format has no version); the
  file's own ``feature_names=`` line must equal the sidecar's names.
* pickle: the sidecar is required.
* npz: names and version are embedded; a sidecar, if present, must agree.

Then ``load_model`` requires the model's names and version to equal the live
ones EXACTLY (same names, same order, same version); the ``ModelError``
names the first difference: a ``missing`` live feature, an ``extra`` model
feature, a ``reordered`` one, or ``feature_version model a vs live b``.
``ModelError`` is a ``ConfigError`` (the supervisor exits 2) whose key is
``signal.model`` unless the caller passes ``key=``.

LightGBM decision semantics (what the kernel reproduces, bit for bit)
---------------------------------------------------------------------
Followed from microsoft/LightGBM (checked at commit bae0b7ba, 2026-03):

* ``include/LightGBM/tree.h`` ``Tree::NumericalDecision``::

      missing_type = (decision_type >> 2) & 3          # 0 None, 1 Zero, 2 NaN
      if isnan(fval) and missing_type != NaN: fval = 0.0
      if (missing_type == Zero and IsZero(fval)) or (missing_type == NaN and isnan(fval)):
          go default_left (decision_type & 2) ? left : right
      else: fval <= threshold ? left : right

  with ``IsZero(f) = -kZeroThreshold <= f <= kZeroThreshold`` and
  ``kZeroThreshold = 1e-35f`` (a float32 literal widened to double,
  ``include/LightGBM/meta.h``); ``decision_type & 1`` marks a categorical
  split (rejected here).
* ``Tree::GetLeaf``: start at node 0, follow children until one is negative;
  a negative child ``c`` is leaf ``~c``. ``Tree::Predict``: a tree with
  ``num_leaves == 1`` is ``leaf_value[0]``.
* ``src/c_api.cpp`` ``RowPairFunctionFromDenseMatrix``: before a dense row
  reaches the trees, values with ``fabs(v) <= kZeroThreshold`` (and not NaN)
  are dropped from the sparse row, i.e. become exactly ``0.0``.
* ``src/boosting/gbdt_prediction.cpp`` ``GBDT::PredictRaw``: the raw score is
  ``0.0 + tree_0 + tree_1 + ...`` in file order (no averaging even for a
  random forest); ``GBDT::Predict`` divides by the number of iterations when
  ``average_output`` is set, then converts (``binary_objective.hpp``
  ``ConvertOutput``: ``1 / (1 + exp(-sigmoid * x))``).
* ``src/io/tree.cpp`` ``Tree::ToString``/``Tree(const char*)``: thresholds and
  leaf values are written with 17 significant digits, so ``float()`` gives the
  exact doubles back; ``inf`` thresholds occur (NaN-only splits). The binary
  objective line carries ``sigmoid:<coef>`` printed with 6 significant
  digits: a coefficient with more digits differs between the in-memory
  booster and any reload of its file (LightGBM's own included); the file's
  value is used.

Compiled form: the per-node decision above folds into precomputed route
bits, so each node needs one comparison and a shift, without branches::

    v = x[split_feature[n]]
    c = 2 if v is NaN else 1 if |v| <= kZeroThr else 0
    goes_right = ((missing_route[n] | (v > threshold[n])) >> c) & 1
    n = children[2n + goes_right]

    missing type   NaN goes right iff (bit 2)      zero/tiny goes right iff (bit 1)
    None (0)       not 0.0 <= threshold             not 0.0 <= threshold
    Zero (1)       not default_left                 not default_left
    NaN  (2)       not default_left                 not 0.0 <= threshold

(a tiny value is 0.0 after the c_api step, hence ``0.0 <= threshold`` where
the missing type does not claim zero; NaN under None/Zero is 0.0 first; for a
normal value ``v > threshold`` is exactly ``not v <= threshold``.) A row with
no NaN and no ``|v| <= kZeroThr`` in any feature (the usual live row) takes a
clean path where ``goes_right = v > threshold`` alone.

Flat tree arrays (all trees concatenated). Every leaf is a node too: node ids
``[0, first_leaf)`` are split nodes, ``[first_leaf, n_nodes)`` leaves, whose
children are themselves (a leaf is a fixed point of the step), so several
trees can be walked in lock-step until all of them sit on a leaf::

    tree_root     uint32[n_trees]      root node of each tree (a leaf for a single-leaf tree)
    split_feature uint32[n_nodes]      feature index read at the node (0 at leaves)
    threshold     float64[n_nodes]     (0.0 at leaves)
    missing_route uint8[n_nodes]       ROUTE_ZERO_RIGHT | ROUTE_NAN_RIGHT (0 at leaves)
    children      uint32[2 * n_nodes]  [2n] left, [2n + 1] right (n, n at leaves)
    node_value    float64[n_nodes]     leaf value at leaves (0.0 at split nodes)
    dims          int64[N_DIMS]        DIM_FEATURES: row length read; DIM_FIRST_LEAF

    raw = 0.0; for each tree in file order: walk from its root to a leaf; raw += node_value[leaf]

Indices are unsigned so that numba emits no negative-index wraparound on the
four dependent loads of a step. Eight consecutive trees are walked
interleaved (their dependency chains overlap in the CPU) and their leaf
values are added in tree order, so the sum is LightGBM's, bit for bit.
``params[P_SIGMOID]`` is the sigmoid coefficient (1 for logistic npz),
``params[P_DIVISOR]`` divides the raw score before the output transform
(the iteration count in random-forest mode, else 1.0, an exact no-op).
A row shorter than ``dims[DIM_FEATURES]`` scores NaN (no out-of-bounds read).

Kernels compile with ``_nrt=False`` and ``error_model="numpy"``: they
allocate nothing and raise nothing, and without NRT numba does not
reference-count the eleven arrays of ``ModelArrays`` on every call (measured
here: ``model_output`` of a 16-weight logistic model 126 ns -> 20 ns per call).

NaN rows: LightGBM routes NaN as above; the linear/logistic score of a row
with a NaN feature is NaN. The caller treats a NaN score as "no signal".

Pickle budget
-------------
``PickleModel.score(x_row) -> (value, elapsed_ns)`` calls ``predict`` on one
row and measures it with ``time.perf_counter_ns`` (monotonic, ns; the clock
is injectable). A Python call cannot be preempted: a slow ``predict`` runs to
its end and the stage is late by that much. The budget is enforced after the
fact: when ``elapsed_ns > budget_ns`` the value is discarded (returned as
NaN), ``last_over_budget`` is set and ``overruns`` counts it; the caller
emits no signal for that row. A ``predict`` that raises is counted in
``errors`` (message in ``last_error``) and also scores NaN: it never raises
into the stage loop. Pickle models have no kernel form: their ``arrays`` are
a dummy with kind ``MODEL_PICKLE`` that ``model_raw`` scores as NaN.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numba as nb
import numpy as np

from core.errors import ConfigError

__all__ = [
    "MODEL_LGBM_BINARY", "MODEL_LGBM_REGRESSION", "MODEL_LINEAR", "MODEL_LOGISTIC", "MODEL_NONE", "MODEL_PICKLE",
    "Model", "ModelArrays", "ModelError", "PickleModel", "empty_model_arrays", "feature_difference", "load_model",
    "model_output", "model_output_batch", "model_raw", "model_raw_batch", "save_linear_npz", "sidecar_path",
    "warm_kernels",
]

# Model kinds (ModelArrays.kind[0]); integer constants because the kernels branch on them.
MODEL_NONE = 0  # empty_model_arrays(): a strategy without a model; scores NaN
MODEL_LINEAR = 1
MODEL_LOGISTIC = 2
MODEL_LGBM_REGRESSION = 3
MODEL_LGBM_BINARY = 4
MODEL_PICKLE = 5  # evaluated in Python (PickleModel.score); the kernels score it NaN

# ModelArrays.params slots.
P_SIGMOID = 0  # output = 1 / (1 + exp(-params[P_SIGMOID] * raw / params[P_DIVISOR])) for logistic/binary
P_DIVISOR = 1  # raw / params[P_DIVISOR] before the transform: iterations for a LightGBM random forest, else 1.0
N_PARAMS = 2

# missing_route bits of a compiled tree node: bit c says "goes right" for value class c (1 zero/tiny, 2 NaN).
ROUTE_ZERO_RIGHT = 2
ROUTE_NAN_RIGHT = 4

# ModelArrays.dims slots.
DIM_FEATURES = 0  # row length the model reads (a shorter row scores NaN)
DIM_FIRST_LEAF = 1  # node ids >= this are leaves (trees only)
N_DIMS = 2

# Trees walked in lock-step by the kernel (8 node ids fit the x86-64 registers beside the array bases).
_LANES = 8

# LightGBM's kZeroThreshold: the float32 literal 1e-35f widened to double (include/LightGBM/meta.h).
K_ZERO_THRESHOLD = float(np.float32(1e-35))

# LightGBM decision_type bits (include/LightGBM/tree.h).
_DT_CATEGORICAL = 1
_DT_DEFAULT_LEFT = 2
_MISSING_NONE, _MISSING_ZERO, _MISSING_NAN = 0, 1, 2

# Objectives whose LightGBM prediction is the raw score (no ConvertOutput beyond RegressionL2loss's
# optional sqrt, which is rejected): src/objective/regression_objective.hpp.
_IDENTITY_OBJECTIVES = frozenset({"regression", "regression_l1", "huber", "fair", "quantile", "mape"})

_SUFFIX_NPZ = (".npz",)
_SUFFIX_LGBM = (".txt",)
_SUFFIX_PICKLE = (".pkl", ".pickle")

DEFAULT_KEY = "signal.model"


class ModelError(ConfigError):
    """A model file that cannot be used: missing, unreadable, unsupported, or not matching the live features."""


class ModelArrays(NamedTuple):
    """Everything the kernels read, as numpy arrays: one type for every kind (unused arrays are length 0)."""

    kind: np.ndarray  # int64[1]: MODEL_*
    dims: np.ndarray  # int64[N_DIMS]: DIM_FEATURES, DIM_FIRST_LEAF
    weights: np.ndarray  # float64[n_features] linear/logistic, else [0]
    bias: np.ndarray  # float64[1] linear/logistic bias, else 0.0
    params: np.ndarray  # float64[N_PARAMS]: P_SIGMOID, P_DIVISOR
    tree_root: np.ndarray  # uint32[n_trees]: root node id
    split_feature: np.ndarray  # uint32[n_nodes]
    threshold: np.ndarray  # float64[n_nodes]
    missing_route: np.ndarray  # uint8[n_nodes]: ROUTE_ZERO_RIGHT | ROUTE_NAN_RIGHT
    children: np.ndarray  # uint32[2 * n_nodes]: [2n] left, [2n + 1] right; a leaf's are itself
    node_value: np.ndarray  # float64[n_nodes]: the leaf value at leaves


def _arrays(kind: int, n_features: int, *, weights=None, bias: float = 0.0, sigmoid: float = 1.0,
            divisor: float = 1.0, first_leaf: int = 0, tree_root=None, split_feature=None, threshold=None,
            missing_route=None, children=None, node_value=None) -> ModelArrays:
    """Build a ModelArrays with exact dtypes, C-contiguous and writable (a readonly array is another numba type)."""

    def arr(a, dtype):
        return np.array(() if a is None else a, dtype=dtype, copy=True, order="C").reshape(-1)

    params = np.zeros(N_PARAMS, np.float64)
    params[P_SIGMOID] = sigmoid
    params[P_DIVISOR] = divisor
    dims = np.zeros(N_DIMS, np.int64)
    dims[DIM_FEATURES] = n_features
    dims[DIM_FIRST_LEAF] = first_leaf
    return ModelArrays(
        kind=np.array([kind], np.int64), dims=dims, weights=arr(weights, np.float64),
        bias=np.array([bias], np.float64), params=params, tree_root=arr(tree_root, np.uint32),
        split_feature=arr(split_feature, np.uint32), threshold=arr(threshold, np.float64),
        missing_route=arr(missing_route, np.uint8), children=arr(children, np.uint32),
        node_value=arr(node_value, np.float64))


def empty_model_arrays() -> ModelArrays:
    """Arrays of kind MODEL_NONE (a strategy without a model): every score is NaN."""
    return _arrays(MODEL_NONE, 0)


# ---------------------------------------------------------------------------------------------------------------
# Kernels (hot path): pure functions over the arrays; no allocation, no Python objects.
# ---------------------------------------------------------------------------------------------------------------

@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False, inline="always")
def _linear_raw(m, x):
    w = m.weights
    s = m.bias[0]
    for i in range(w.shape[0]):
        s += w[i] * x[i]
    return s


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False, inline="always")
def _step(n, m, x, clean):
    """One node of a walk: the child ``x`` leads to (a leaf steps to itself)."""
    v = x[m.split_feature[n]]
    if clean:  # no NaN/tiny value in the row
        right = np.uint32(v > m.threshold[n])
    else:
        c = np.uint32(-K_ZERO_THRESHOLD <= v <= K_ZERO_THRESHOLD) + np.uint32(2) * np.uint32(v != v)
        right = ((np.uint32(m.missing_route[n]) | np.uint32(v > m.threshold[n])) >> c) & np.uint32(1)
    return m.children[np.uint32(2) * n + right]


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False, inline="always")
def _trees_raw(m, x):
    first_leaf = np.uint32(m.dims[DIM_FIRST_LEAF])
    clean = True
    for i in range(m.dims[DIM_FEATURES]):
        v = x[i]
        if v != v or -K_ZERO_THRESHOLD <= v <= K_ZERO_THRESHOLD:
            clean = False
    roots = m.tree_root
    val = m.node_value
    n_trees = roots.shape[0]
    total = 0.0
    t = 0
    while t + _LANES <= n_trees:  # _LANES trees in lock-step until all sit on a leaf
        n0 = roots[t]
        n1 = roots[t + 1]
        n2 = roots[t + 2]
        n3 = roots[t + 3]
        n4 = roots[t + 4]
        n5 = roots[t + 5]
        n6 = roots[t + 6]
        n7 = roots[t + 7]
        while min(min(min(n0, n1), min(n2, n3)), min(min(n4, n5), min(n6, n7))) < first_leaf:
            n0 = _step(n0, m, x, clean)
            n1 = _step(n1, m, x, clean)
            n2 = _step(n2, m, x, clean)
            n3 = _step(n3, m, x, clean)
            n4 = _step(n4, m, x, clean)
            n5 = _step(n5, m, x, clean)
            n6 = _step(n6, m, x, clean)
            n7 = _step(n7, m, x, clean)
        total += val[n0]  # in tree order: the same additions as LightGBM's PredictRaw
        total += val[n1]
        total += val[n2]
        total += val[n3]
        total += val[n4]
        total += val[n5]
        total += val[n6]
        total += val[n7]
        t += _LANES
    while t < n_trees:
        n = roots[t]
        while n < first_leaf:
            n = _step(n, m, x, clean)
        total += val[n]
        t += 1
    return total


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False, inline="always")
def _raw(m, x):
    kind = m.kind[0]
    if x.shape[0] < m.dims[DIM_FEATURES]:
        return np.nan
    if kind == MODEL_LINEAR or kind == MODEL_LOGISTIC:
        return _linear_raw(m, x)
    if kind == MODEL_LGBM_REGRESSION or kind == MODEL_LGBM_BINARY:
        return _trees_raw(m, x)
    return np.nan


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def model_raw(m, x):
    """Raw score of one row ``x`` (float64[>= n_features]); NaN for MODEL_NONE/MODEL_PICKLE or a short row."""
    return _raw(m, x)


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def model_output(m, x):
    """Probability for logistic/binary, the (RF-averaged) raw score for linear/regression; NaN as model_raw."""
    kind = m.kind[0]
    r = _raw(m, x) / m.params[P_DIVISOR]
    if kind == MODEL_LOGISTIC or kind == MODEL_LGBM_BINARY:
        return 1.0 / (1.0 + math.exp(-m.params[P_SIGMOID] * r))
    return r


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def model_raw_batch(m, X, out):
    """``out[i] = model_raw(m, X[i])`` for each row of the 2-D ``X``; returns the row count."""
    for i in range(X.shape[0]):
        out[i] = model_raw(m, X[i])
    return X.shape[0]


@nb.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def model_output_batch(m, X, out):
    """``out[i] = model_output(m, X[i])`` for each row of the 2-D ``X``; returns the row count."""
    for i in range(X.shape[0]):
        out[i] = model_output(m, X[i])
    return X.shape[0]


def warm_kernels() -> None:
    """Compile (or load from the numba cache) the kernels for the one ModelArrays signature."""
    m = empty_model_arrays()
    x = np.zeros(1, np.float64)
    X = np.zeros((1, 1), np.float64)
    out = np.zeros(1, np.float64)
    model_raw(m, x)
    model_output(m, x)
    model_raw_batch(m, X, out)
    model_output_batch(m, X, out)


# ---------------------------------------------------------------------------------------------------------------
# Python side: models, loading, checking.
# ---------------------------------------------------------------------------------------------------------------

_KIND_NAMES = {MODEL_NONE: "none", MODEL_LINEAR: "linear", MODEL_LOGISTIC: "logistic",
               MODEL_LGBM_REGRESSION: "lightgbm-regression", MODEL_LGBM_BINARY: "lightgbm-binary",
               MODEL_PICKLE: "pickle"}


class Model:
    """A loaded, checked model. ``arrays`` go to the kernels; ``raw``/``output`` are batch conveniences."""

    def __init__(self, *, kind: int, model_id: int, path: str, feature_names: Sequence[str], feature_version: int,
                 arrays: ModelArrays, sidecar: dict | None = None):
        self.kind = kind  # MODEL_*
        self.model_id = model_id  # crc32 of the model file's bytes (stable 32-bit id, goes into records/logs)
        self.path = path  # the model file as given
        self.feature_names = tuple(feature_names)  # the trained feature order (== the live one once loaded)
        self.feature_version = feature_version
        self.arrays = arrays
        self.sidecar = dict(sidecar or {})  # the sidecar JSON as read ({} for an npz without one)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def kind_name(self) -> str:
        return _KIND_NAMES.get(self.kind, str(self.kind))

    def _rows(self, X) -> np.ndarray:
        X = np.ascontiguousarray(np.atleast_2d(np.asarray(X, dtype=np.float64)))
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"rows must have {self.n_features} features, got shape {X.shape}")
        return X

    def raw(self, X) -> np.ndarray:
        """Raw scores of the rows of ``X`` (n_rows x n_features), through the kernel."""
        X = self._rows(X)
        out = np.empty(X.shape[0], np.float64)
        model_raw_batch(self.arrays, X, out)
        return out

    def output(self, X) -> np.ndarray:
        """Outputs (probabilities for logistic/binary) of the rows of ``X``, through the kernel."""
        X = self._rows(X)
        out = np.empty(X.shape[0], np.float64)
        model_output_batch(self.arrays, X, out)
        return out

    def __repr__(self) -> str:
        return (f"Model({self.kind_name}, id={self.model_id:#010x}, path={self.path!r}, "
                f"features={self.n_features}, feature_version={self.feature_version})")


class PickleModel(Model):
    """A pickled object with ``predict(X)``, evaluated in Python under a time budget (see the module docstring)."""

    def __init__(self, obj: Any, *, budget_ns: int, clock_ns: Callable[[], int] = time.perf_counter_ns, **kw):
        super().__init__(kind=MODEL_PICKLE, arrays=_arrays(MODEL_PICKLE, len(kw["feature_names"])), **kw)
        self.obj = obj
        self.budget_ns = budget_ns  # a score slower than this is discarded and counted
        self.clock_ns = clock_ns  # monotonic clock, ns
        self.overruns = 0  # scores discarded for taking longer than budget_ns
        self.errors = 0  # predict calls that raised or returned no finite-typed number
        self.last_over_budget = False  # whether the latest score() ran over budget
        self.last_error = ""  # repr of the latest predict failure

    def score(self, x_row: np.ndarray) -> tuple[float, int]:
        """``(value, elapsed_ns)`` for one row; value is NaN when over budget (counted in ``overruns``) or failed."""
        row = np.asarray(x_row, dtype=np.float64).reshape(1, -1)
        t0 = self.clock_ns()
        try:
            value = float(np.asarray(self.obj.predict(row), dtype=np.float64).reshape(-1)[0])
        except Exception as exc:  # third-party code: counted, never raised into the stage loop
            self.errors += 1
            self.last_error = repr(exc)
            value = math.nan
        elapsed = self.clock_ns() - t0
        self.last_over_budget = elapsed > self.budget_ns
        if self.last_over_budget:
            self.overruns += 1
            value = math.nan
        return value, elapsed

    def raw(self, X) -> np.ndarray:
        """``predict(X)`` as float64 (no budget: for offline checks, not the hot path)."""
        X = self._rows(X)
        return np.asarray(self.obj.predict(X), dtype=np.float64).reshape(-1)

    output = raw


def _fail(key: str, path: Path | str, problem: str, cause: BaseException | None = None) -> ModelError:
    err = ModelError(key, f"{path}: {problem}")
    err.__cause__ = cause
    return err


def feature_difference(model_names: Sequence[str], model_version: int, live_names: Sequence[str],
                       live_version: int) -> str | None:
    """None when names (in order) and version are equal, else a sentence naming the first difference."""
    if model_version != live_version:
        return f"feature_version differs: model {model_version} vs live {live_version}"
    model_names, live_names = list(model_names), list(live_names)
    for i in range(max(len(model_names), len(live_names))):
        m = model_names[i] if i < len(model_names) else None
        lv = live_names[i] if i < len(live_names) else None
        if m == lv:
            continue
        if lv is not None and lv not in model_names:
            return f"live feature {lv!r} (position {i}) is missing from the model"
        if m is not None and m not in live_names:
            return f"model feature {m!r} (position {i}) is extra: not a live feature"
        return (f"features reordered: position {i} is {m!r} in the model but {lv!r} live "
                f"(model order {model_names}, live order {live_names})")
    return None


def _check_names(names: Sequence[Any], what: str) -> tuple[str, ...]:
    if not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{what} must be non-empty strings, got {list(names)!r}")
    seen = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{what} has a duplicate name {n!r}")
        seen.add(n)
    return tuple(names)


def sidecar_path(path: Path | str) -> Path:
    """``config/models/btc.txt`` -> ``config/models/btc.json``."""
    return Path(path).with_suffix(".json")


def _read_sidecar(path: Path, key: str, required: bool) -> dict | None:
    side = sidecar_path(path)
    if not side.exists():
        if required:
            raise _fail(key, path, f"sidecar {side} not found: it must hold "
                                   '{"feature_names": [...], "feature_version": int}')
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(key, side, f"unreadable sidecar: {exc}", exc) from exc
    if not isinstance(data, dict):
        raise _fail(key, side, f"sidecar must be a JSON object, got {type(data).__name__}")
    names = data.get("feature_names")
    version = data.get("feature_version")
    if not isinstance(names, list):
        raise _fail(key, side, f"sidecar feature_names must be a list of strings, got {names!r}")
    try:
        _check_names(names, "sidecar feature_names")
    except ValueError as exc:
        raise _fail(key, side, str(exc), exc) from exc
    if not isinstance(version, int) or isinstance(version, bool):
        raise _fail(key, side, f"sidecar feature_version must be an integer, got {version!r}")
    return data


def load_model(path: str | os.PathLike, *, feature_names: Sequence[str], feature_version: int,
               allow_pickle: bool = False, budget_us: float = 200.0, key: str = DEFAULT_KEY) -> Model:
    """Load the model at ``path`` and check it against the live features; every problem is a ``ModelError``."""
    p = Path(path)
    live_names = tuple(feature_names)
    suffix = p.suffix.lower()
    if suffix not in _SUFFIX_NPZ + _SUFFIX_LGBM + _SUFFIX_PICKLE:
        raise _fail(key, p, f"unknown model suffix {p.suffix!r}: expected .npz (linear/logistic weights), "
                            ".txt (LightGBM text model) or .pkl/.pickle (with signal.allow_pickle: true)")
    if suffix in _SUFFIX_PICKLE and not allow_pickle:
        raise _fail(key, p, "pickle models are disabled: unpickling runs arbitrary code from the file; "
                            "set signal.allow_pickle: true to load it (only for files you trust)")
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise _fail(key, p, "model file not found", exc) from exc
    except OSError as exc:
        raise _fail(key, p, f"cannot read model file: {exc}", exc) from exc
    model_id = zlib.crc32(data) & 0xFFFFFFFF

    if suffix in _SUFFIX_NPZ:
        model = _load_npz(p, data, model_id, key)
    elif suffix in _SUFFIX_LGBM:
        model = _load_lightgbm(p, data, model_id, key)
    else:
        model = _load_pickle(p, data, model_id, key, budget_us)

    diff = feature_difference(model.feature_names, model.feature_version, live_names, feature_version)
    if diff is not None:
        raise _fail(key, p, f"model does not match the live features: {diff}")
    return model


# --- npz ----------------------------------------------------------------------------------------------------------

def save_linear_npz(path: str | os.PathLike, weights, bias: float, kind: str, feature_names: Sequence[str],
                    feature_version: int) -> None:
    """Write a linear/logistic model in the ``.npz`` format ``load_model`` reads (atomically: tmp + rename)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError(f"weights must be 1-D, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or not math.isfinite(float(bias)):
        raise ValueError("weights and bias must be finite")
    if kind not in ("linear", "logistic"):
        raise ValueError(f"kind must be 'linear' or 'logistic', got {kind!r}")
    names = _check_names(list(feature_names), "feature_names")
    if len(names) != w.shape[0]:
        raise ValueError(f"{len(names)} feature_names for {w.shape[0]} weights")
    if isinstance(feature_version, bool) or not isinstance(feature_version, (int, np.integer)):
        raise ValueError(f"feature_version must be an integer, got {feature_version!r}")
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, weights=w, bias=np.float64(bias), kind=np.str_(kind), feature_names=np.array(names, dtype=str),
                 feature_version=np.int64(feature_version))
    os.replace(tmp, p)


def _load_npz(p: Path, data: bytes, model_id: int, key: str) -> Model:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            fields = {name: z[name] for name in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise _fail(key, p, f"unreadable or truncated .npz: {exc}", exc) from exc
    missing = [f for f in ("weights", "bias", "kind", "feature_names", "feature_version") if f not in fields]
    if missing:
        raise _fail(key, p, f".npz lacks arrays {missing} (has {sorted(fields)})")
    w, bias, kind, names, version = (fields[f] for f in ("weights", "bias", "kind", "feature_names",
                                                          "feature_version"))
    if w.ndim != 1 or w.dtype.kind not in "fiu":
        raise _fail(key, p, f"weights must be a 1-D number array, got {w.dtype} shape {w.shape}")
    if bias.size != 1 or bias.dtype.kind not in "fiu":
        raise _fail(key, p, f"bias must be one number, got {bias.dtype} shape {bias.shape}")
    if names.ndim != 1 or names.dtype.kind != "U":
        raise _fail(key, p, f"feature_names must be a 1-D string array, got {names.dtype} shape {names.shape}")
    if names.shape[0] != w.shape[0]:
        raise _fail(key, p, f"weights have {w.shape[0]} entries for {names.shape[0]} feature_names")
    w = w.astype(np.float64)
    bias_v = float(bias.reshape(-1)[0])
    bad = np.flatnonzero(~np.isfinite(w))
    if bad.size:
        raise _fail(key, p, f"weights[{bad[0]}] = {w[bad[0]]} is not finite ({bad.size} non-finite weights)")
    if not math.isfinite(bias_v):
        raise _fail(key, p, f"bias = {bias_v} is not finite")
    kind_s = str(kind.reshape(-1)[0]) if kind.size == 1 and kind.dtype.kind == "U" else repr(kind)
    if kind_s not in ("linear", "logistic"):
        raise _fail(key, p, f"kind must be 'linear' or 'logistic', got {kind_s}")
    if version.size != 1 or version.dtype.kind not in "iu":
        raise _fail(key, p, f"feature_version must be one integer, got {version.dtype} shape {version.shape}")
    version_v = int(version.reshape(-1)[0])
    try:
        names_t = _check_names([str(n) for n in names], "feature_names")
    except ValueError as exc:
        raise _fail(key, p, str(exc), exc) from exc
    sidecar = _read_sidecar(p, key, required=False)
    if sidecar is not None:
        diff = feature_difference(sidecar["feature_names"], sidecar["feature_version"], names_t, version_v)
        if diff is not None:
            raise _fail(key, p, f"sidecar {sidecar_path(p)} disagrees with the embedded features "
                                f"(sidecar as 'model', npz as 'live'): {diff}")
    model_kind = MODEL_LINEAR if kind_s == "linear" else MODEL_LOGISTIC
    arrays = _arrays(model_kind, len(names_t), weights=w, bias=bias_v)
    return Model(kind=model_kind, model_id=model_id, path=str(p), feature_names=names_t,
                 feature_version=version_v, arrays=arrays, sidecar=sidecar)


# --- LightGBM text ------------------------------------------------------------------------------------------------

class _LgbmFormatError(ValueError):
    """A LightGBM text model that is malformed or unsupported (becomes a ModelError with the path)."""


def _ints(text: str, n: int, field: str, tree: int) -> list[int]:
    try:
        vals = [int(t) for t in text.split()]
    except ValueError as exc:
        raise _LgbmFormatError(f"Tree={tree} {field}: not integers ({exc})") from exc
    if len(vals) != n:
        raise _LgbmFormatError(f"Tree={tree} {field} has {len(vals)} values, expected {n} (truncated?)")
    return vals


def _floats(text: str, n: int, field: str, tree: int) -> list[float]:
    try:
        vals = [float(t) for t in text.split()]
    except ValueError as exc:
        raise _LgbmFormatError(f"Tree={tree} {field}: not numbers ({exc})") from exc
    if len(vals) != n:
        raise _LgbmFormatError(f"Tree={tree} {field} has {len(vals)} values, expected {n} (truncated?)")
    return vals


class _Tree(NamedTuple):
    num_leaves: int
    split_feature: list[int]
    threshold: list[float]
    decision_type: list[int]
    left_child: list[int]
    right_child: list[int]
    leaf_value: list[float]


def _parse_tree(index: int, kv: dict[str, str], n_features: int) -> _Tree:
    """One ``Tree=`` block, checked as src/io/tree.cpp ``Tree(const char*)`` reads it, plus structure checks."""
    for field in ("num_leaves", "num_cat", "leaf_value"):
        if field not in kv:
            raise _LgbmFormatError(f"Tree={index} lacks {field} (truncated?)")
    (num_leaves,) = _ints(kv["num_leaves"], 1, "num_leaves", index)
    (num_cat,) = _ints(kv["num_cat"], 1, "num_cat", index)
    if num_leaves < 1:
        raise _LgbmFormatError(f"Tree={index} num_leaves={num_leaves}")
    if num_cat != 0:
        raise _LgbmFormatError(f"Tree={index} has categorical splits (num_cat={num_cat}): categorical features "
                               "are not supported; train with them as numerical features or leave them out")
    if kv.get("is_linear", "0").strip() not in ("0", ""):
        raise _LgbmFormatError(f"Tree={index} is a linear tree (is_linear={kv['is_linear']}): linear_tree "
                               "models are not supported")
    leaf_value = _floats(kv["leaf_value"], num_leaves, "leaf_value", index)
    bad = [v for v in leaf_value if not math.isfinite(v)]
    if bad:
        raise _LgbmFormatError(f"Tree={index} has a non-finite leaf_value {bad[0]}")
    n_nodes = num_leaves - 1
    if n_nodes == 0:
        return _Tree(1, [], [], [], [], [], leaf_value)
    for field in ("split_feature", "threshold", "left_child", "right_child"):
        if field not in kv:
            raise _LgbmFormatError(f"Tree={index} lacks {field} (truncated?)")
    split_feature = _ints(kv["split_feature"], n_nodes, "split_feature", index)
    threshold = _floats(kv["threshold"], n_nodes, "threshold", index)
    # tree.cpp: decision_type defaults to 0 (numerical, missing None, default right) when absent.
    decision_type = (_ints(kv["decision_type"], n_nodes, "decision_type", index) if "decision_type" in kv
                     else [0] * n_nodes)
    left = _ints(kv["left_child"], n_nodes, "left_child", index)
    right = _ints(kv["right_child"], n_nodes, "right_child", index)
    for n in range(n_nodes):
        f, dt, t = split_feature[n], decision_type[n], threshold[n]
        if not 0 <= f < n_features:
            raise _LgbmFormatError(f"Tree={index} node {n} splits on feature {f}, outside 0..{n_features - 1}")
        if not 0 <= dt <= 127:
            raise _LgbmFormatError(f"Tree={index} node {n} decision_type {dt} out of range")
        if dt & _DT_CATEGORICAL:
            raise _LgbmFormatError(f"Tree={index} node {n} is a categorical split: categorical features are "
                                   "not supported")
        if (dt >> 2) & 3 not in (_MISSING_NONE, _MISSING_ZERO, _MISSING_NAN):
            raise _LgbmFormatError(f"Tree={index} node {n} has unknown missing type {(dt >> 2) & 3}")
        if math.isnan(t):
            raise _LgbmFormatError(f"Tree={index} node {n} has a NaN threshold")
    # Structure: from node 0 every node and every leaf is reached exactly once (so the kernel's walk ends).
    seen_nodes = [False] * n_nodes
    seen_leaves = [False] * num_leaves
    stack = [0]
    seen_nodes[0] = True
    while stack:
        n = stack.pop()
        for c in (left[n], right[n]):
            if c >= 0:
                if c >= n_nodes or seen_nodes[c]:
                    raise _LgbmFormatError(f"Tree={index} node {n} has an invalid child {c}")
                seen_nodes[c] = True
                stack.append(c)
            else:
                leaf = ~c
                if leaf >= num_leaves or seen_leaves[leaf]:
                    raise _LgbmFormatError(f"Tree={index} node {n} has an invalid leaf child {c}")
                seen_leaves[leaf] = True
    if not all(seen_nodes) or not all(seen_leaves):
        raise _LgbmFormatError(f"Tree={index} has nodes or leaves unreachable from the root")
    return _Tree(num_leaves, split_feature, threshold, decision_type, left, right, leaf_value)


class _LgbmModel(NamedTuple):
    feature_names: tuple[str, ...]
    objective: str
    sigmoid: float
    average_output: bool
    trees: list[_Tree]


def _parse_lightgbm_text(text: str) -> _LgbmModel:
    """Parse a LightGBM text model (src/boosting/gbdt_model_text.cpp ``LoadModelFromString``); raises ValueError."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "tree":
        raise _LgbmFormatError("not a LightGBM text model (first line is not 'tree')")
    header: dict[str, str] = {}
    i = 1
    while i < len(lines) and not lines[i].startswith("Tree="):
        line = lines[i]
        if line.strip() == "end of trees":
            break
        if line:
            k, _, v = line.partition("=")
            header[k] = v
        i += 1
    for field in ("num_class", "max_feature_idx", "feature_names"):
        if field not in header:
            raise _LgbmFormatError(f"header lacks {field} (truncated?)")
    try:
        num_class = int(header["num_class"])
        per_iter = int(header.get("num_tree_per_iteration", num_class))
        max_feature_idx = int(header["max_feature_idx"])
    except ValueError as exc:
        raise _LgbmFormatError(f"bad header number: {exc}") from exc
    if num_class != 1 or per_iter != 1:
        raise _LgbmFormatError(f"multiclass models are not supported (num_class={num_class}, "
                               f"num_tree_per_iteration={per_iter}); only num_class=1")
    names = tuple(header["feature_names"].split())
    if len(names) != max_feature_idx + 1:
        raise _LgbmFormatError(f"feature_names has {len(names)} names for max_feature_idx={max_feature_idx}")
    objective, sigmoid = _parse_objective(header.get("objective"))
    average_output = "average_output" in header

    trees: list[_Tree] = []
    while i < len(lines) and lines[i].startswith("Tree="):
        try:
            index = int(lines[i][5:])
        except ValueError as exc:
            raise _LgbmFormatError(f"bad tree header {lines[i]!r}") from exc
        if index != len(trees):
            raise _LgbmFormatError(f"expected Tree={len(trees)}, found {lines[i]!r}")
        i += 1
        kv: dict[str, str] = {}
        while i < len(lines) and lines[i] and not lines[i].startswith("Tree="):
            k, sep, v = lines[i].partition("=")
            if not sep:
                raise _LgbmFormatError(f"Tree={index}: line {i + 1} is not key=value: {lines[i][:80]!r}")
            kv[k] = v
            i += 1
        trees.append(_parse_tree(index, kv, len(names)))
        while i < len(lines) and not lines[i]:
            i += 1
    if i >= len(lines) or lines[i].strip() != "end of trees":
        raise _LgbmFormatError(f"no 'end of trees' after {len(trees)} trees (truncated file?)")
    if "tree_sizes" in header and len(header["tree_sizes"].split()) != len(trees):
        raise _LgbmFormatError(f"tree_sizes lists {len(header['tree_sizes'].split())} trees, file has "
                               f"{len(trees)} (truncated?)")
    if not trees:
        raise _LgbmFormatError("model has no trees")
    for line in lines[i:]:
        if line.startswith("[linear_tree: ") and line[14:15] not in ("0", ""):
            raise _LgbmFormatError("linear_tree models are not supported")
    return _LgbmModel(names, objective, sigmoid, average_output, trees)


def _parse_objective(line: str | None) -> tuple[str, float]:
    if not line:
        raise _LgbmFormatError("no objective line (custom objective?): only regression* and binary are supported")
    toks = line.split()
    name = toks[0]
    if name == "binary":
        sig = [t for t in toks[1:] if t.startswith("sigmoid:")]
        if len(sig) != 1 or len(toks) != 2:
            raise _LgbmFormatError(f"binary objective without one sigmoid:<coef>: {line!r}")
        try:
            coef = float(sig[0][8:])
        except ValueError as exc:
            raise _LgbmFormatError(f"bad sigmoid coefficient in {line!r}") from exc
        if not (math.isfinite(coef) and coef > 0):
            raise _LgbmFormatError(f"sigmoid coefficient must be finite and > 0 in {line!r}")
        return name, coef
    if name in _IDENTITY_OBJECTIVES:
        if len(toks) > 1:
            raise _LgbmFormatError(f"objective {line!r} is not supported (reg_sqrt transforms the output)"
                                   if "sqrt" in toks else f"objective {line!r}: unexpected options {toks[1:]}")
        return name, 1.0
    raise _LgbmFormatError(f"objective {name!r} is not supported: only regression* "
                           f"({', '.join(sorted(_IDENTITY_OBJECTIVES))}) and binary, num_class=1")


def _compile_trees(trees: Sequence[_Tree]) -> dict[str, Any]:
    """Concatenate the trees into ModelArrays' flat arrays: split nodes first, then leaves as self-loop nodes."""
    n_split = sum(t.num_leaves - 1 for t in trees)
    n_nodes = n_split + sum(t.num_leaves for t in trees)
    if 2 * n_nodes >= 2**32:
        raise _LgbmFormatError(f"model too large: {n_nodes} nodes")
    roots = np.empty(len(trees), np.uint32)
    feat = np.zeros(n_nodes, np.uint32)
    thr = np.zeros(n_nodes, np.float64)
    route = np.zeros(n_nodes, np.uint8)
    children = np.empty(2 * n_nodes, np.uint32)
    value = np.zeros(n_nodes, np.float64)
    node0, leaf0 = 0, n_split  # ids of this tree's first split node and first leaf

    def node_id(c: int) -> int:  # LightGBM child link -> global node id (a negative c is leaf ~c)
        return node0 + c if c >= 0 else leaf0 + ~c

    for ti, t in enumerate(trees):
        roots[ti] = node0 if t.num_leaves > 1 else leaf0
        for j in range(t.num_leaves - 1):
            g = node0 + j
            dt, th = t.decision_type[j], t.threshold[j]
            missing = (dt >> 2) & 3
            default_right = not dt & _DT_DEFAULT_LEFT
            zero_right = not 0.0 <= th  # where LightGBM compares 0.0 (NaN under None, tiny under None/NaN)
            nan_right = zero_right if missing == _MISSING_NONE else default_right
            if missing == _MISSING_ZERO:
                zero_right = default_right
            feat[g] = t.split_feature[j]
            thr[g] = th
            route[g] = (ROUTE_ZERO_RIGHT if zero_right else 0) | (ROUTE_NAN_RIGHT if nan_right else 0)
            children[2 * g] = node_id(t.left_child[j])
            children[2 * g + 1] = node_id(t.right_child[j])
        for j, v in enumerate(t.leaf_value):
            g = leaf0 + j
            children[2 * g] = children[2 * g + 1] = g
            value[g] = v
        node0 += t.num_leaves - 1
        leaf0 += t.num_leaves
    return dict(first_leaf=n_split, tree_root=roots, split_feature=feat, threshold=thr, missing_route=route,
                children=children, node_value=value)


def _load_lightgbm(p: Path, data: bytes, model_id: int, key: str) -> Model:
    try:
        text = data.decode("utf-8")
        parsed = _parse_lightgbm_text(text)
        flat = _compile_trees(parsed.trees)
    except UnicodeDecodeError as exc:
        raise _fail(key, p, f"not a text file: {exc}", exc) from exc
    except _LgbmFormatError as exc:
        raise _fail(key, p, f"LightGBM model: {exc}", exc) from exc
    sidecar = _read_sidecar(p, key, required=True)
    diff = feature_difference(parsed.feature_names, sidecar["feature_version"], sidecar["feature_names"],
                              sidecar["feature_version"])
    if diff is not None:
        raise _fail(key, p, f"the model's feature_names= line disagrees with sidecar {sidecar_path(p)} "
                            f"(sidecar as 'live'): {diff}")
    kind = MODEL_LGBM_BINARY if parsed.objective == "binary" else MODEL_LGBM_REGRESSION
    divisor = float(len(parsed.trees)) if parsed.average_output else 1.0
    arrays = _arrays(kind, len(parsed.feature_names), sigmoid=parsed.sigmoid, divisor=divisor, **flat)
    return Model(kind=kind, model_id=model_id, path=str(p), feature_names=parsed.feature_names,
                 feature_version=sidecar["feature_version"], arrays=arrays, sidecar=sidecar)


# --- pickle -------------------------------------------------------------------------------------------------------

def _load_pickle(p: Path, data: bytes, model_id: int, key: str, budget_us: float) -> PickleModel:
    if not (math.isfinite(budget_us) and budget_us > 0):
        raise _fail(key, p, f"pickle budget_us must be > 0, got {budget_us}")
    sidecar = _read_sidecar(p, key, required=True)
    try:
        obj = pickle.loads(data)  # allow_pickle=True was given: the caller trusts this file
    except Exception as exc:  # unpickling can raise anything (ImportError, AttributeError, EOFError, ...)
        raise _fail(key, p, f"cannot unpickle: {type(exc).__name__}: {exc}", exc) from exc
    if not callable(getattr(obj, "predict", None)):
        raise _fail(key, p, f"the pickled {type(obj).__name__} has no predict(X) method")
    names = tuple(sidecar["feature_names"])
    own = getattr(obj, "feature_names_in_", None)  # sklearn's record of the columns it was fitted on
    if own is not None and tuple(str(n) for n in own) != names:
        raise _fail(key, p, f"the pickled model's feature_names_in_ {list(own)} disagree with sidecar "
                            f"{sidecar_path(p)} {list(names)}")
    return PickleModel(obj, budget_ns=int(budget_us * 1000), model_id=model_id, path=str(p), feature_names=names,
                       feature_version=sidecar["feature_version"], sidecar=sidecar)
