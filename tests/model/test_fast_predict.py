"""The single-row fast path gives exactly scikit-learn's scores, NaN routing included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

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
