"""The compiled fast path gives exactly scikit-learn's scores: NaN routing, values on thresholds,
categorical splits, one row or thousands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from model import kernels
from model.fast_predict import FAST_MAX_ROWS, FastLogistic, FastTrees, fast_path


def data(seed: int, n: int = 4000, f: int = 12, nan_share: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)) * rng.uniform(0.1, 100, f)
    x[:, 3] = np.round(x[:, 3])  # ties at thresholds
    y = ((x[:, 0] > 0.5) ^ (x[:, 1] * x[:, 2] > 30) | (rng.random(n) < 0.02)).astype(int)
    x[rng.random(x.shape) < nan_share] = np.nan
    return x, y


@pytest.fixture(scope="module")
def trees() -> HistGradientBoostingClassifier:
    x, y = data(1)
    return HistGradientBoostingClassifier(max_iter=120, max_leaf_nodes=31, random_state=0).fit(x, y)


def test_trees_are_bit_identical_to_scikit_learn(trees: HistGradientBoostingClassifier) -> None:
    x, _ = data(2, n=3000)
    fast = fast_path(trees)
    assert isinstance(fast, FastTrees)
    want = trees.predict_proba(x)[:, 1]
    assert np.array_equal(fast.predict(x), want)  # thousands of rows in one call
    for size in (1, 3, FAST_MAX_ROWS):
        got = np.concatenate([fast.predict(x[i : i + size]) for i in range(0, len(x), size)])
        assert np.array_equal(got, want)
    # Rows that sit exactly on thresholds go left, as in scikit-learn.
    internal = np.flatnonzero(~fast.is_leaf)[:40]
    on_threshold = np.tile(np.nanmedian(x, axis=0), (len(internal), 1))
    on_threshold[np.arange(len(internal)), fast.feature[internal]] = fast.threshold[internal]
    assert np.array_equal(fast.predict(on_threshold), trees.predict_proba(on_threshold)[:, 1])
    # NaN follows each node's learned missing-value direction.
    assert np.isnan(x).any() and fast.missing_left.any() and (~fast.missing_left[~fast.is_leaf]).any()


@pytest.mark.parametrize(
    "params",
    [
        {
            "max_iter": 100,
            "learning_rate": 0.08,
            "max_leaf_nodes": 31,
            "min_samples_leaf": 40,
            "class_weight": "balanced",
        },
        {"max_iter": 30, "max_depth": 3, "l2_regularization": 1.0},
        {"max_iter": 30, "max_leaf_nodes": 63, "min_samples_leaf": 5, "max_bins": 31},
    ],
)
def test_other_tree_shapes_are_bit_identical(params: dict) -> None:
    x, y = data(5, n=2000, nan_share=0.1)
    model = HistGradientBoostingClassifier(random_state=1, **params).fit(x, y)
    fast = fast_path(model)
    assert isinstance(fast, FastTrees)
    rows, _ = data(6, n=2000, nan_share=0.1)
    rows[:20] = np.nan  # all missing: every split's missing direction
    want = model.predict_proba(rows)[:, 1]
    assert np.array_equal(fast.predict(rows), want)
    assert all(np.array_equal(fast.predict(rows[i : i + 1]), want[i : i + 1]) for i in range(0, 2000, 7))


def test_categorical_splits_are_bit_identical() -> None:
    rng = np.random.default_rng(7)
    x, _ = data(7, n=4000, f=6)
    x[:, 1] = rng.integers(0, 40, len(x))
    x[:, 4] = rng.integers(0, 5, len(x)) * 10.0  # categories that are not 0..n-1
    x[rng.random(len(x)) < 0.05, 1] = np.nan
    y = ((x[:, 1] % 3 == 0) ^ (x[:, 4] == 20) | (np.nan_to_num(x[:, 0]) > 50)).astype(int)
    model = HistGradientBoostingClassifier(max_iter=80, categorical_features=[1, 4], random_state=0).fit(x, y)
    fast = fast_path(model)
    assert isinstance(fast, FastTrees)
    assert fast.nodes[:, kernels.CATEGORICAL].any()
    rows, _ = data(8, n=3000, f=6)
    # Known categories, unknown ones (negative, too large, between two known), and missing ones.
    rows[:, 1] = rng.choice([*range(40), -1, 41, 45, 2.5], len(rows))
    rows[:, 4] = rng.choice([0, 10, 20, 30, 40, 15, 50, -10], len(rows))
    rows[rng.random(len(rows)) < 0.05, 4] = np.nan
    want = model.predict_proba(rows)[:, 1]
    assert np.array_equal(fast.predict(rows), want)
    assert all(np.array_equal(fast.predict(rows[i : i + 1]), want[i : i + 1]) for i in range(0, 3000, 11))


def test_string_categories_keep_scikit_learn() -> None:
    rng = np.random.default_rng(9)
    frame = pd.DataFrame({"a": rng.normal(size=300), "c": pd.Categorical(rng.choice(["x", "y", "z"], 300))})
    model = HistGradientBoostingClassifier(max_iter=5).fit(frame, (frame["c"] == "x").astype(int))
    assert fast_path(model) is None


def test_logistic_pipeline_matches_scikit_learn() -> None:
    x, y = data(3, nan_share=0.0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    fast = fast_path(model)
    assert isinstance(fast, FastLogistic)
    np.testing.assert_allclose(fast.predict(x[:50]), model.predict_proba(x[:50])[:, 1], rtol=0, atol=1e-15)


def test_other_estimators_keep_scikit_learn() -> None:
    x, y = data(4, n=300, nan_share=0.0)
    assert fast_path(RandomForestClassifier(n_estimators=3).fit(x, y)) is None
    assert fast_path(LogisticRegression().fit(x, y)) is None  # unscaled: not the pipeline we train


def _load_in_fresh_process(cache_dir: Path, trees_path: Path) -> subprocess.CompletedProcess[str]:
    script = (
        "import sys, joblib, numpy as np; from model.fast_predict import fast_path; "
        "m = joblib.load(sys.argv[1]); print(fast_path(m).predict(np.zeros((1, 12)))[0])"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    return subprocess.run(  # noqa: S603  # our own interpreter
        [sys.executable, "-c", script, str(trees_path)], env=env, capture_output=True, text=True, check=False
    )


def test_numba_cache_goes_to_numba_cache_dir_and_an_unwritable_one_is_no_error(
    trees: HistGradientBoostingClassifier, tmp_path: Path
) -> None:
    joblib.dump(trees, tmp_path / "trees.joblib")
    want = repr(float(trees.predict_proba(np.zeros((1, 12)))[0, 1]))
    cached = _load_in_fresh_process(tmp_path / "cache", tmp_path / "trees.joblib")
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout.strip() == want
    assert list((tmp_path / "cache").rglob("*tree_raw_scores*.nbc"))
    (tmp_path / "file").write_text("")  # a directory under a file can never be created, even by root
    uncached = _load_in_fresh_process(tmp_path / "file" / "cache", tmp_path / "trees.joblib")
    assert uncached.returncode == 0, uncached.stderr
    assert uncached.stdout.strip() == want
