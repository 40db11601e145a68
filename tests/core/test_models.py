"""core.models: LightGBM text models score exactly as lightgbm does (NaN/zero routing included), npz weights
round-trip, pickle models need the opt-in and are scored under a budget, and every bad file is a ModelError."""

from __future__ import annotations

import json
import math
import pickle
import time
import zlib
from pathlib import Path

import lightgbm as lgb
import numba as nb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from core.models import (
    K_ZERO_THRESHOLD, MODEL_LGBM_BINARY, MODEL_LGBM_REGRESSION, MODEL_LINEAR, MODEL_LOGISTIC, MODEL_NONE,
    MODEL_PICKLE, ModelError, PickleModel, empty_model_arrays, load_model, model_output, model_raw,
    save_linear_npz,
)

N_FEATURES = 12
NAMES = [f"f{i}" for i in range(N_FEATURES)]
VERSION = 7
KZ = K_ZERO_THRESHOLD
SPECIALS = [math.nan, 0.0, -0.0, 1e-36, -1e-36, KZ, -KZ, float(np.nextafter(KZ, 1.0)), math.inf, -math.inf]


# --- helpers ----------------------------------------------------------------------------------------------------

def _data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows with NaNs in f0..f3 and many exact zeros in f4..f5; the label depends on both (so routing matters)."""
    X = rng.normal(size=(n, N_FEATURES))
    X[:, :4][rng.random((n, 4)) < 0.2] = np.nan
    X[:, 4:6][rng.random((n, 2)) < 0.3] = 0.0
    y = (np.nan_to_num(X[:, 0]) + 1.5 * np.isnan(X[:, 1]) - np.isnan(X[:, 2]) + (X[:, 4] == 0)
         - 0.5 * (X[:, 5] == 0) + X[:, 6] * X[:, 7] + 0.1 * rng.normal(size=n))
    return X, y


def _train(params: dict, X: np.ndarray, y: np.ndarray, rounds: int = 100, **ds) -> lgb.Booster:
    base = {"verbose": -1, "num_threads": 1, "seed": 3, "deterministic": True, "num_leaves": 31,
            "min_data_in_leaf": 5}
    return lgb.train({**base, **params}, lgb.Dataset(X, y, feature_name=NAMES, **ds), rounds)


def _sidecar(path: Path, names=NAMES, version=VERSION, **extra) -> None:
    path.with_suffix(".json").write_text(json.dumps({"feature_names": list(names), "feature_version": version,
                                                     **extra}))


def _save_lgbm(booster: lgb.Booster, path: Path) -> Path:
    booster.save_model(str(path))
    _sidecar(path, names=booster.feature_name())
    return path


def _probe_rows(model, rng: np.random.Generator, n_random: int = 2000) -> np.ndarray:
    """Random rows with NaN/zero/tiny/inf mixed in, plus rows sitting exactly on (and next to) every threshold."""
    X, _ = _data(rng, n_random)
    mask = rng.random(X.shape) < 0.08
    X[mask] = rng.choice(np.array(SPECIALS), size=int(mask.sum()))
    a = model.arrays
    first_leaf = int(a.dims[1])
    feats, thrs = a.split_feature[:first_leaf], a.threshold[:first_leaf]
    on = np.tile(rng.normal(size=N_FEATURES), (3 * first_leaf, 1))
    for k, (f, t) in enumerate(zip(feats, thrs)):
        on[3 * k:3 * k + 3, f] = (t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf))
    return np.vstack([X, on])


class _WeightsModel:
    """A picklable stand-in for an sklearn regressor: predict(X) = X @ w (optionally slow, or failing)."""

    def __init__(self, w, sleep_s: float = 0.0, fail: bool = False):
        self.w = np.asarray(w, dtype=np.float64)
        self.sleep_s = sleep_s
        self.fail = fail

    def predict(self, X):
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.fail:
            raise RuntimeError("model exploded")
        return np.asarray(X) @ self.w


def _save_pickle(obj, path: Path, names=NAMES, version=VERSION) -> Path:
    path.write_bytes(pickle.dumps(obj))
    _sidecar(path, names=names, version=version)
    return path


def _save_npz(path: Path, names=NAMES, version=VERSION, kind="linear", seed=0) -> tuple[Path, np.ndarray, float]:
    w = np.random.default_rng(seed).normal(size=len(names))
    save_linear_npz(path, w, 0.25, kind, names, version)
    return path, w, 0.25


def _load(path, names=NAMES, version=VERSION, **kw):
    return load_model(path, feature_names=names, feature_version=version, **kw)


# --- LightGBM: equality with lightgbm itself ----------------------------------------------------------------------

VARIANTS = {
    "regression": ({"objective": "regression"}, {}),
    "binary": ({"objective": "binary"}, {}),
    "regression-zero_as_missing": ({"objective": "regression", "zero_as_missing": True}, {}),
    "binary-zero_as_missing": ({"objective": "binary", "zero_as_missing": True}, {}),
    "regression-use_missing_false": ({"objective": "regression", "use_missing": False}, {}),
    "binary-use_missing_false": ({"objective": "binary", "use_missing": False}, {}),
    "binary-sigmoid-2": ({"objective": "binary", "sigmoid": 2.0}, {}),
    "huber": ({"objective": "huber"}, {}),
    "random-forest": ({"objective": "regression", "boosting": "rf", "bagging_fraction": 0.7, "bagging_freq": 1,
                       "feature_fraction": 0.8}, {}),
    "binary-random-forest": ({"objective": "binary", "boosting": "rf", "bagging_fraction": 0.7,
                              "bagging_freq": 1}, {}),
}


@pytest.fixture(scope="module")
def lgbm_models(tmp_path_factory) -> dict[str, tuple[lgb.Booster, object]]:
    """name -> (booster, loaded Model), each trained here on 400 rows x 12 features, 100 rounds, 31 leaves."""
    d = tmp_path_factory.mktemp("lgbm")
    out = {}
    for i, (name, (params, _)) in enumerate(VARIANTS.items()):
        X, y = _data(np.random.default_rng(100 + i), 400)
        if "binary" in name:
            y = (y > np.median(y)).astype(np.float64)
        booster = _train(params, X, y)
        out[name] = (booster, _load(_save_lgbm(booster, d / f"{name}.txt")))
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_lightgbm_raw_and_output_equal_lightgbm_predict(lgbm_models, name):
    booster, model = lgbm_models[name]
    X = _probe_rows(model, np.random.default_rng(7))
    raw, expected_raw = model.raw(X), booster.predict(X, raw_score=True)
    out, expected_out = model.output(X), booster.predict(X)
    assert np.array_equal(raw, expected_raw), f"max abs error {np.max(np.abs(raw - expected_raw))}"
    assert np.max(np.abs(out - expected_out)) <= 1e-12
    assert model.kind == (MODEL_LGBM_BINARY if "binary" in name else MODEL_LGBM_REGRESSION)


def test_lightgbm_variants_exercise_every_missing_route(lgbm_models):
    """The trained models contain NaN-type, Zero-type and None-type splits with both default directions."""
    routes = set()
    for _, model in lgbm_models.values():
        routes.update(int(r) for r in model.arrays.missing_route[:model.arrays.dims[1]])
    assert routes == {0, 2, 4, 6}


def test_lightgbm_model_carries_its_sidecar_and_id(lgbm_models, tmp_path):
    booster, _ = lgbm_models["regression"]
    path = tmp_path / "btc.txt"
    booster.save_model(str(path))
    _sidecar(path, trained_on="2024-01", horizon_s=5)
    model = _load(path)
    assert model.sidecar["horizon_s"] == 5
    assert model.feature_names == tuple(NAMES) and model.feature_version == VERSION
    assert model.model_id == zlib.crc32(path.read_bytes())
    assert _load(path).model_id == model.model_id


def test_single_leaf_trees_score_their_leaf(tmp_path):
    """A booster that cannot split (min_data_in_leaf > rows) is a stack of one-leaf trees."""
    X, y = _data(np.random.default_rng(1), 100)
    booster = _train({"objective": "regression", "min_data_in_leaf": 1000}, X, y, rounds=5)
    model = _load(_save_lgbm(booster, tmp_path / "flat.txt"))
    assert model.arrays.dims[1] == 0  # no split node at all
    X2 = _probe_rows(model, np.random.default_rng(2), 50)
    assert np.array_equal(model.raw(X2), booster.predict(X2, raw_score=True))


# Hand-written models: every decision type, thresholds at the zero band, single-leaf trees between others.

def _random_tree_text(draw, index: int) -> str:
    num_leaves = draw(st.integers(1, 7))
    thresholds = st.sampled_from([0.0, KZ, -KZ, float(np.nextafter(KZ, 0)), 1e-36, -0.5, 0.5, 1.5, math.inf])
    left, right, parent = [], [], [0] * num_leaves
    parent[0] = -1
    for k in range(1, num_leaves):  # src/io/tree.h Tree::Split: split leaf `leaf` into node k-1 -> (~leaf, ~k)
        leaf = draw(st.integers(0, k - 1))
        node = k - 1
        p = parent[leaf]
        if p >= 0:
            if left[p] == ~leaf:
                left[p] = node
            else:
                right[p] = node
        left.append(~leaf)
        right.append(~k)
        parent[leaf] = parent[k] = node
    n = num_leaves - 1
    feats = [draw(st.integers(0, 3)) for _ in range(n)]
    thr = [draw(thresholds) for _ in range(n)]
    dtypes = [draw(st.sampled_from([0, 2, 4, 6, 8, 10])) for _ in range(n)]
    leaves = [draw(st.floats(-4, 4, allow_nan=False)) for _ in range(num_leaves)]
    j = " ".join
    return (f"Tree={index}\nnum_leaves={num_leaves}\nnum_cat=0\nsplit_feature={j(map(str, feats))}\n"
            f"split_gain={j(['1'] * n)}\nthreshold={j(map(repr, thr))}\ndecision_type={j(map(str, dtypes))}\n"
            f"left_child={j(map(str, left))}\nright_child={j(map(str, right))}\n"
            f"leaf_value={j(map(repr, leaves))}\nleaf_weight={j(['1'] * num_leaves)}\n"
            f"leaf_count={j(['1'] * num_leaves)}\ninternal_value={j(['0'] * n)}\n"
            f"internal_weight={j(['0'] * n)}\ninternal_count={j(['2'] * n)}\nis_linear=0\nshrinkage=1\n\n\n")


@st.composite
def _model_texts(draw) -> str:
    objective = draw(st.sampled_from(["regression", "binary sigmoid:1", "binary sigmoid:0.5"]))
    trees = "".join(_random_tree_text(draw, i) for i in range(draw(st.integers(1, 11))))
    return ("tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx=3\n"
            f"objective={objective}\nfeature_names=a b c d\nfeature_infos=none none none none\n\n"
            f"{trees}end of trees\n")


_values = st.one_of(st.sampled_from(SPECIALS + [0.5, -0.5, 1.5, float(np.nextafter(0.5, 1))]),
                    st.floats(-3, 3, allow_nan=False))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_model_texts(), rows=st.lists(st.lists(_values, min_size=4, max_size=4), min_size=1, max_size=8))
def test_hand_written_trees_route_like_lightgbm(tmp_path, text, rows):
    """Random tree shapes, every missing type x default direction, thresholds at +-kZeroThreshold and inf:
    the kernel's raw score is bit-for-bit lightgbm's on rows full of NaN, +-0, tiny and infinite values."""
    path = tmp_path / "hand.txt"
    path.write_text(text)
    _sidecar(path, names=list("abcd"))
    model = _load(path, names=list("abcd"))
    booster = lgb.Booster(model_str=text)
    X = np.array(rows, dtype=np.float64)
    assert np.array_equal(model.raw(X), booster.predict(X, raw_score=True))
    assert np.max(np.abs(model.output(X) - booster.predict(X))) <= 1e-12


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_values, min_size=N_FEATURES, max_size=N_FEATURES), min_size=1, max_size=16),
       name=st.sampled_from(list(VARIANTS)))
def test_trained_models_equal_lightgbm_on_any_row(lgbm_models, rows, name):
    booster, model = lgbm_models[name]
    X = np.array(rows, dtype=np.float64)
    assert np.array_equal(model.raw(X), booster.predict(X, raw_score=True))
    assert np.max(np.abs(model.output(X) - booster.predict(X))) <= 1e-12


# --- the kernel contract ------------------------------------------------------------------------------------------

@nb.njit
def _score_rows(m, X, out):  # what the signal stage's kernel does: call the model kernels from numba
    for i in range(X.shape[0]):
        out[i] = model_output(m, X[i])
    return model_raw(m, X[0])


def test_every_kind_shares_one_numba_type_and_scores_inside_a_kernel(lgbm_models, tmp_path):
    path, w, bias = _save_npz(tmp_path / "lin.npz", kind="logistic")
    models = [_load(path), lgbm_models["regression"][1], lgbm_models["binary"][1],
              _load(_save_pickle(_WeightsModel(w), tmp_path / "m.pkl"), allow_pickle=True)]
    types = {nb.typeof(m.arrays) for m in models} | {nb.typeof(empty_model_arrays())}
    assert len(types) == 1
    X = _probe_rows(lgbm_models["binary"][1], np.random.default_rng(3), 100)
    for m in models[:3]:
        out = np.empty(X.shape[0])
        raw0 = _score_rows(m.arrays, X, out)
        assert np.array_equal(out, m.output(X), equal_nan=True)
        assert raw0 == m.raw(X[:1])[0] or (math.isnan(raw0) and math.isnan(m.raw(X[:1])[0]))


def test_no_model_pickle_arrays_and_short_rows_score_nan(lgbm_models, tmp_path):
    x = np.zeros(N_FEATURES)
    assert empty_model_arrays().kind[0] == MODEL_NONE
    assert math.isnan(model_raw(empty_model_arrays(), x)) and math.isnan(model_output(empty_model_arrays(), x))
    pm = _load(_save_pickle(_WeightsModel(np.ones(N_FEATURES)), tmp_path / "m.pkl"), allow_pickle=True)
    assert pm.arrays.kind[0] == MODEL_PICKLE and math.isnan(model_raw(pm.arrays, x))
    assert math.isnan(model_raw(lgbm_models["regression"][1].arrays, x[:-1]))


# --- npz ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "logistic"])
def test_npz_round_trip_scores_like_numpy(tmp_path, kind):
    path, w, bias = _save_npz(tmp_path / "w.npz", kind=kind)
    model = _load(path)
    assert model.kind == (MODEL_LINEAR if kind == "linear" else MODEL_LOGISTIC)
    assert model.feature_names == tuple(NAMES) and model.feature_version == VERSION and model.sidecar == {}
    X = np.random.default_rng(5).normal(size=(500, N_FEATURES))
    raw = bias + X @ w
    np.testing.assert_allclose(model.raw(X), raw, rtol=1e-12, atol=1e-12)
    expected = raw if kind == "linear" else 1.0 / (1.0 + np.exp(-raw))
    np.testing.assert_allclose(model.output(X), expected, rtol=1e-12, atol=1e-15)


def test_npz_row_with_nan_scores_nan(tmp_path):
    model = _load(_save_npz(tmp_path / "w.npz")[0])
    x = np.ones((1, N_FEATURES))
    x[0, 3] = np.nan
    assert math.isnan(model.raw(x)[0])


def test_npz_sidecar_must_agree_with_embedded_names(tmp_path):
    path = _save_npz(tmp_path / "w.npz")[0]
    _sidecar(path, extra_info=1)
    assert _load(path).sidecar["extra_info"] == 1
    _sidecar(path, version=VERSION + 1)
    with pytest.raises(ModelError, match="sidecar .* disagrees .*feature_version"):
        _load(path)


@pytest.mark.parametrize("bad", [
    dict(weights=np.ones((2, 2))), dict(bias=np.nan), dict(kind="svm"), dict(feature_names=["a", "a"] + NAMES[2:]),
    dict(feature_names=NAMES[:-1]), dict(feature_version=1.5),
])
def test_save_linear_npz_refuses_bad_input(tmp_path, bad):
    args = dict(weights=np.ones(N_FEATURES), bias=0.0, kind="linear", feature_names=NAMES, feature_version=1)
    with pytest.raises(ValueError):
        save_linear_npz(tmp_path / "w.npz", **{**args, **bad})
    assert not (tmp_path / "w.npz").exists()


# --- errors -------------------------------------------------------------------------------------------------------

def _raw_npz(path: Path, **override) -> Path:
    arrays = dict(weights=np.ones(N_FEATURES), bias=np.float64(0.0), kind=np.str_("linear"),
                  feature_names=np.array(NAMES), feature_version=np.int64(VERSION))
    arrays.update(override)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def test_missing_file_is_a_config_error_with_key_and_path(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(ConfigError) as err:
        _load(path)
    assert isinstance(err.value, ModelError) and err.value.path == "signal.model"
    assert str(path) in str(err.value) and "not found" in str(err.value)
    with pytest.raises(ModelError) as err:
        _load(path, key="strategies.btc.model")
    assert err.value.path == "strategies.btc.model"


def test_unknown_suffix_is_refused(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\0")
    with pytest.raises(ModelError, match="unknown model suffix '.onnx'"):
        _load(path)


def test_truncated_lightgbm_file_is_refused_at_any_cut(lgbm_models, tmp_path):
    booster, _ = lgbm_models["regression"]
    text = booster.model_to_string()
    end = text.index("end of trees")
    path = tmp_path / "cut.txt"
    _sidecar(path)
    for cut in np.linspace(0, end, 41).astype(int):
        path.write_text(text[:cut])
        with pytest.raises(ModelError) as err:
            _load(path)
        assert str(path) in str(err.value)
    path.write_text(text[:end // 2])
    with pytest.raises(ModelError, match="truncated"):
        _load(path)


def test_lightgbm_without_sidecar_is_refused(lgbm_models, tmp_path):
    path = tmp_path / "m.txt"
    lgbm_models["regression"][0].save_model(str(path))
    with pytest.raises(ModelError, match="sidecar .*m.json not found"):
        _load(path)


def test_lightgbm_feature_names_line_must_match_sidecar(lgbm_models, tmp_path):
    path = tmp_path / "m.txt"
    lgbm_models["regression"][0].save_model(str(path))
    _sidecar(path, names=NAMES[::-1])
    with pytest.raises(ModelError, match="feature_names= line disagrees with sidecar"):
        _load(path, names=NAMES[::-1])


def test_multiclass_is_refused(tmp_path):
    X, y = _data(np.random.default_rng(1), 300)
    booster = _train({"objective": "multiclass", "num_class": 3}, X, np.digitize(y, [0.0, 1.0]), rounds=3)
    with pytest.raises(ModelError, match="multiclass .*num_class=3"):
        _load(_save_lgbm(booster, tmp_path / "m.txt"))


def test_categorical_split_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    X, _ = _data(rng, 400)
    X[:, 0] = rng.integers(0, 8, size=400)
    y = np.isin(X[:, 0], [1, 4, 6]) * 3.0 + 0.1 * rng.normal(size=400)
    booster = _train({"objective": "regression", "min_data_per_group": 5, "cat_smooth": 1}, X, y, rounds=3,
                     categorical_feature=[0])
    assert "num_cat=0" not in booster.model_to_string().split("end of trees")[0].split("Tree=0")[1][:200]
    with pytest.raises(ModelError, match="categorical"):
        _load(_save_lgbm(booster, tmp_path / "m.txt"))


def test_linear_tree_is_refused(tmp_path):
    X, y = _data(np.random.default_rng(1), 300)
    booster = _train({"objective": "regression", "linear_tree": True}, np.nan_to_num(X), y, rounds=3)
    with pytest.raises(ModelError, match="linear"):
        _load(_save_lgbm(booster, tmp_path / "m.txt"))


@pytest.mark.parametrize("objective", ["poisson", "regression sqrt"])
def test_objectives_with_another_output_are_refused(lgbm_models, tmp_path, objective):
    text = lgbm_models["regression"][0].model_to_string().replace("objective=regression\n",
                                                                  f"objective={objective}\n")
    path = tmp_path / "m.txt"
    path.write_text(text)
    _sidecar(path)
    with pytest.raises(ModelError, match="not supported"):
        _load(path)


def test_tree_whose_links_loop_is_refused(lgbm_models, tmp_path):
    text = lgbm_models["regression"][0].model_to_string()
    head, rest = text.split("left_child=", 1)
    path = tmp_path / "m.txt"
    path.write_text(head + "left_child=0" + rest[rest.index(" "):])  # node 0's left child is node 0
    _sidecar(path)
    with pytest.raises(ModelError, match="invalid child"):
        _load(path)


@pytest.mark.parametrize("override, message", [
    (dict(weights=np.ones(N_FEATURES + 1)), "13 entries for 12 feature_names"),
    (dict(weights=np.ones((N_FEATURES, 1))), "1-D"),
    (dict(weights=np.r_[np.ones(N_FEATURES - 1), np.nan]), r"weights\[11\] = nan is not finite"),
    (dict(weights=np.r_[np.inf, np.ones(N_FEATURES - 1)]), "not finite"),
    (dict(bias=np.float64(np.inf)), "bias = inf is not finite"),
    (dict(kind=np.str_("svm")), "kind must be"),
])
def test_bad_npz_contents_are_refused(tmp_path, override, message):
    with pytest.raises(ModelError, match=message):
        _load(_raw_npz(tmp_path / "w.npz", **override))


def test_truncated_or_garbage_npz_is_refused(tmp_path):
    path = _save_npz(tmp_path / "w.npz")[0]
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ModelError, match="unreadable or truncated"):
        _load(path)
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ModelError, match="unreadable or truncated"):
        _load(path)


def _model_file(kind: str, tmp_path: Path) -> Path:
    if kind == "npz":
        return _save_npz(tmp_path / "m.npz")[0]
    if kind == "pickle":
        return _save_pickle(_WeightsModel(np.ones(N_FEATURES)), tmp_path / "m.pkl")
    X, y = _data(np.random.default_rng(1), 200)
    return _save_lgbm(_train({"objective": "regression"}, X, y, rounds=2), tmp_path / "m.txt")


@pytest.mark.parametrize("kind", ["npz", "lightgbm", "pickle"])
@pytest.mark.parametrize("live, message", [
    (NAMES + ["f_new"], "live feature 'f_new' \\(position 12\\) is missing from the model"),
    (NAMES[:5] + NAMES[6:], "model feature 'f5' \\(position 5\\) is extra"),
    (NAMES[:2] + [NAMES[3], NAMES[2]] + NAMES[4:], "features reordered: position 2 is 'f2' in the model but 'f3' live"),
    (NAMES[:4] + ["g4"] + NAMES[5:], "live feature 'g4' \\(position 4\\) is missing"),
])
def test_feature_name_mismatch_names_the_first_difference(tmp_path, kind, live, message):
    path = _model_file(kind, tmp_path)
    with pytest.raises(ModelError, match="does not match the live features: " + message):
        _load(path, names=live, allow_pickle=True)


@pytest.mark.parametrize("kind", ["npz", "lightgbm", "pickle"])
def test_feature_version_mismatch_is_refused(tmp_path, kind):
    path = _model_file(kind, tmp_path)
    with pytest.raises(ModelError, match=f"feature_version differs: model {VERSION} vs live {VERSION + 1}"):
        _load(path, version=VERSION + 1, allow_pickle=True)


# --- pickle -------------------------------------------------------------------------------------------------------

def test_pickle_without_opt_in_is_refused_and_says_how_and_why(tmp_path):
    path = _save_pickle(_WeightsModel(np.ones(N_FEATURES)), tmp_path / "m.pkl")
    with pytest.raises(ModelError) as err:
        _load(path)
    assert "signal.allow_pickle: true" in str(err.value) and "arbitrary code" in str(err.value)


def test_pickle_needs_a_sidecar_and_a_predict(tmp_path):
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(_WeightsModel(np.ones(N_FEATURES))))
    with pytest.raises(ModelError, match="sidecar"):
        _load(path, allow_pickle=True)
    _save_pickle({"not": "a model"}, path)
    with pytest.raises(ModelError, match="no predict"):
        _load(path, allow_pickle=True)
    path.write_bytes(b"\x80\x05garbage")
    with pytest.raises(ModelError, match="cannot unpickle"):
        _load(path, allow_pickle=True)


def test_pickle_scores_within_budget(tmp_path):
    w = np.random.default_rng(2).normal(size=N_FEATURES)
    model = _load(_save_pickle(_WeightsModel(w), tmp_path / "m.pkl"), allow_pickle=True, budget_us=1e6)
    assert isinstance(model, PickleModel) and model.kind == MODEL_PICKLE
    x = np.arange(N_FEATURES, dtype=np.float64)
    value, elapsed_ns = model.score(x)
    assert value == pytest.approx(float(x @ w)) and elapsed_ns > 0
    assert not model.last_over_budget and model.overruns == 0 and model.errors == 0
    np.testing.assert_allclose(model.raw(np.vstack([x, x])), [x @ w, x @ w])


def test_pickle_over_budget_is_discarded_and_counted(tmp_path):
    path = _save_pickle(_WeightsModel(np.ones(N_FEATURES), sleep_s=0.005), tmp_path / "slow.pkl")
    model = _load(path, allow_pickle=True, budget_us=200.0)
    x = np.ones(N_FEATURES)
    for i in range(1, 3):
        value, elapsed_ns = model.score(x)
        assert math.isnan(value) and elapsed_ns >= 5_000_000
        assert model.last_over_budget and model.overruns == i


def test_pickle_budget_uses_the_injected_clock(tmp_path):
    path = _save_pickle(_WeightsModel(np.ones(N_FEATURES)), tmp_path / "m.pkl")
    model = _load(path, allow_pickle=True, budget_us=10.0)
    ticks = iter([0, 9_000, 100_000, 110_001])
    model.clock_ns = lambda: next(ticks)
    assert model.score(np.ones(N_FEATURES)) == (float(N_FEATURES), 9_000) and model.overruns == 0
    value, elapsed = model.score(np.ones(N_FEATURES))
    assert math.isnan(value) and elapsed == 10_001 and model.overruns == 1


def test_pickle_predict_that_raises_is_counted_not_raised(tmp_path):
    path = _save_pickle(_WeightsModel(np.ones(N_FEATURES), fail=True), tmp_path / "m.pkl")
    model = _load(path, allow_pickle=True, budget_us=1e6)
    value, _ = model.score(np.ones(N_FEATURES))
    assert math.isnan(value) and model.errors == 1 and "model exploded" in model.last_error
