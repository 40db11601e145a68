"""scripts/train_model.py on a real recording, and the shipped example model.

What a user relies on: the model file and its sidecar load in the signal
stage (``core.models.load_model``, the ml strategy's feature_params check)
and score exactly as LightGBM does; the evaluation is out of sample by time
with a gap of ``horizon`` bars; labels are forward log returns of the bar
close; cold-indicator rows never reach the model; bad input is a message
and exit 2. One short session (the BTCUSDT 0808 file, ~6 minutes) keeps it
fast.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import train_model  # noqa: E402  (configures the numba cache before numba loads)

from core.config import parse_config  # noqa: E402
from core.features import FEATURE_NAMES, FEATURE_VERSION, FeatureConfig, bar_features_ready  # noqa: E402
from core.models import DIM_FIRST_LEAF, MODEL_LGBM_BINARY, load_model  # noqa: E402
from core.strategies import SignalSettings  # noqa: E402

lgb = pytest.importorskip("lightgbm")

HORIZON = 10
ROUNDS = 5
SIDECAR_FIELDS = ("feature_names", "feature_version", "feature_params", "objective", "horizon_bars",
                  "training_data", "data_hash", "lightgbm_params", "num_boost_round", "metrics", "created_utc",
                  "lightgbm_version", "command", "split", "excluded_features")
EXAMPLE = ROOT / "config" / "models" / "example.txt"
SYSTEM_JSON = ROOT / "config" / "system.json"


@pytest.fixture(scope="module")
def btc0808(shared_data) -> Path:
    return shared_data / "hftbacktest" / "btcusdt_20240808.gz"


def _argv(recording: Path, out: Path, *extra: str) -> list[str]:
    return ["--recording", str(recording), "--out", str(out), "--num-boost-round", str(ROUNDS),
            "--horizon-bars", str(HORIZON), *extra]


@pytest.fixture(scope="module")
def trained(btc0808, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "btc.txt"
    return train_model.run(train_model.parse_args(_argv(btc0808, out)))


def test_writes_model_and_sidecar_with_every_field(trained, btc0808):
    side = json.loads(trained.out.with_suffix(".json").read_text())
    assert trained.out.is_file() and trained.out.stat().st_size > 0
    missing = [k for k in SIDECAR_FIELDS if k not in side]
    assert not missing, f"sidecar lacks {missing}"
    assert side["feature_names"] == list(FEATURE_NAMES) and side["feature_version"] == FEATURE_VERSION
    live = FeatureConfig.from_dict(json.loads(SYSTEM_JSON.read_text())["signal"]["features"]).as_dict()
    assert side["feature_params"] == live
    assert side["objective"] == "binary" and side["horizon_bars"] == HORIZON and side["num_boost_round"] == ROUNDS
    (session,) = side["training_data"]
    (f,) = session["files"]
    assert f["sha256"] == hashlib.sha256(btc0808.read_bytes()).hexdigest()
    assert side["lightgbm_params"]["deterministic"] is True and side["lightgbm_params"]["num_threads"] == 1
    m = side["metrics"]
    for key in ("auc", "log_loss", "accuracy", "hit_rate"):
        assert key in m["model"] and key in m["baseline"]
    assert m["rows"]["train"] > 100 and m["rows"]["test"] > 30
    assert "skill" in m["verdict"]  # the report says whether there is evidence of skill, either way
    assert len(side["data_hash"]) == 64


def test_written_model_loads_and_scores_exactly_as_lightgbm(trained):
    model = load_model(trained.out, feature_names=FEATURE_NAMES, feature_version=FEATURE_VERSION)
    assert model.kind == MODEL_LGBM_BINARY
    ours = model.raw(trained.X_test)
    from_file = lgb.Booster(model_file=str(trained.out)).predict(trained.X_test, raw_score=True)
    in_memory = trained.booster.predict(trained.X_test, raw_score=True)
    assert np.array_equal(ours, from_file) and np.array_equal(ours, in_memory)
    assert sorted(p.name for p in trained.out.parent.iterdir()) == ["btc.json", "btc.txt"]  # no temp files left
    # the excluded price-level features are never split on: the model is blind to them
    assert not set(trained.sidecar["excluded_features"]) & set(trained.metrics["features_used"])


def test_split_is_by_time_with_a_gap_of_horizon_bars(trained):
    iv = trained.sidecar["label"]["bar_interval_ms"]
    for s in trained.sessions:
        t_train = s.rows["exch_ms"][s.train]
        t_test = s.rows["exch_ms"][s.test]
        assert len(t_train) and len(t_test) and not set(s.train) & set(s.test)
        assert t_test.min() > t_train.max()
        assert (t_test.min() - t_train.max()) // iv - 1 >= HORIZON  # whole bars strictly between
        usable = int(s.usable.sum())
        assert len(s.train) == pytest.approx(0.7 * usable, abs=2)  # default test fraction 0.3
    for part in trained.sidecar["split"]:
        assert part["gap_bars"] >= HORIZON and part["test_first_ms"] > part["train_last_ms"]


def test_labels_are_forward_log_returns_and_rows_are_warm(trained):
    (s,) = trained.sessions
    close, t = s.rows["close"], s.rows["exch_ms"]
    iv = trained.sidecar["label"]["bar_interval_ms"]
    assert np.all(np.diff(t) == iv)  # one symbol, empty bars emitted: row i + HORIZON is HORIZON bars later
    np.testing.assert_array_equal(s.fwd[:-HORIZON], np.log(close[HORIZON:] / close[:-HORIZON]))
    assert np.all(np.isnan(s.fwd[-HORIZON:]))  # past the end of the session: no label, never used
    used = np.concatenate([s.train, s.test])
    assert np.all(np.isfinite(s.fwd[used])) and np.all(s.fwd[used] != 0.0)  # zero returns dropped (default)
    mat = train_model.feature_matrix(s.rows)
    assert all(bar_features_ready(mat[i]) for i in used)
    cold = [i for i in range(len(mat)) if not bar_features_ready(mat[i])]
    assert cold and not set(cold) & set(used)  # the indicators' warm-up bars exist and are left out


def test_cli_json_reports_metrics_and_training_is_deterministic(trained, btc0808, tmp_path, capsys):
    out = tmp_path / "again.txt"
    rc = train_model.main(_argv(btc0808, out, "--json"))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["check"].startswith("core.models raw scores == ")
    assert doc["metrics"]["baseline"]["train_majority_class"] in (0, 1) and "verdict" in doc["metrics"]
    assert out.read_bytes() == trained.out.read_bytes()  # same data and seed: the same model file
    assert json.loads(out.with_suffix(".json").read_text())["data_hash"] == trained.sidecar["data_hash"]


def test_model_that_scores_differently_exits_1_and_writes_nothing(btc0808, tmp_path, capsys, monkeypatch):
    def off_by_a_hair(path, **kw):  # what a compiler bug in core.models would look like
        model = load_model(path, **kw)
        model.arrays.node_value[model.arrays.dims[DIM_FIRST_LEAF]] += 1e-9  # the first leaf
        return model

    monkeypatch.setattr(train_model, "load_model", off_by_a_hair)
    rc = train_model.main(_argv(btc0808, tmp_path / "m.txt"))
    err = capsys.readouterr().err
    assert rc == 1 and "CHECK FAILED" in err and "score differently" in err
    assert list(tmp_path.iterdir()) == []  # neither the model nor its sidecar, nor temp files


def test_auc_counts_pairs_with_ties_as_half():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200).astype(float)
    score = np.round(rng.normal(size=200) + 0.5 * y, 1)  # rounded: many ties
    pos, neg = score[y == 1], score[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert train_model.auc(y, score) == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)


def test_time_split_keeps_symbols_sharing_a_bar_time_on_one_side():
    times = np.repeat(np.arange(100) * 1000, 2)  # two symbols, same bar times
    train, test = train_model.time_split(times, np.ones(200, bool), 0.3, 5, 1000)
    assert times[train].max() < times[test].min() - 5 * 1000
    assert len(set(times[train]) & set(times[test])) == 0 and len(train) % 2 == 0 and len(test) % 2 == 0


def test_missing_recording_exits_2_with_a_message(tmp_path, capsys):
    missing = tmp_path / "nope_20240808.gz"
    rc = train_model.main(_argv(missing, tmp_path / "m.txt"))
    err = capsys.readouterr().err
    assert rc == 2
    assert str(missing) in err and "no such file" in err and "Traceback" not in err
    assert not (tmp_path / "m.txt").exists()


def test_recording_without_rows_exits_2_with_a_message(tmp_path, capsys):
    empty = tmp_path / "empty.gz"
    with gzip.open(empty, "wb"):
        pass
    rc = train_model.main(_argv(empty, tmp_path / "m.txt"))
    err = capsys.readouterr().err
    assert rc == 2 and "no closed" in err and "Traceback" not in err
    assert not (tmp_path / "m.txt").exists()


def test_shipped_example_model_matches_the_live_features_and_the_ml_strategy_takes_it(shared_data):
    model = load_model(EXAMPLE, feature_names=FEATURE_NAMES, feature_version=FEATURE_VERSION)
    side = model.sidecar
    live = FeatureConfig.from_dict(json.loads(SYSTEM_JSON.read_text())["signal"]["features"]).as_dict()
    assert side["feature_params"] == live
    assert side["metrics"]["trees"] <= 50 and side["lightgbm_params"]["num_leaves"] <= 15
    assert side["command"].startswith("scripts/train_model.py ")
    for session in side["training_data"]:  # it was trained on exactly the recorded data beside the project
        for f in session["files"]:
            path = ROOT / f["path"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == f["sha256"], f["path"]
    # the ml strategy loads it from the live config (its feature_params check included)
    d = copy.deepcopy(json.loads(SYSTEM_JSON.read_text()))
    d["signal"]["strategies"] = [{"name": "ml", "type": "ml", "qty": "0.001", "model": "config/models/example.txt"}]
    cfg = parse_config(d, host_cpus=None)
    object.__setattr__(cfg, "source_path", str(SYSTEM_JSON))
    settings = SignalSettings.build(cfg)
    assert settings.model is not None and settings.model.model_id == model.model_id
