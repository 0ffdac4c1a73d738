"""A fast path for the model call on a few rows, equal to scikit-learn's to the last bit.

scikit-learn spends over a millisecond on one row of a 200-tree HistGradientBoosting model
(input checks, binning set-up, an OpenMP region per tree), whatever the batch size up to
dozens of rows: most of a ``/predict`` request, and of a small stream batch's model call. For a
few rows, walking all trees at once with numpy takes a fraction of that. The walk makes the
same comparisons (``x <= threshold`` goes left, NaN follows ``missing_go_to_left``) and adds
the leaf values in the same order (the baseline, then tree by tree), so the scores are
identical, not just close; ``tests/model/test_fast_predict.py`` checks that on every row.

Large batches keep scikit-learn's compiled loop, which is faster there. Models this does not
cover (categorical splits, multi-class, other estimators) simply keep the scikit-learn path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

#: Up to this many rows the fast path is used; from a little above it, scikit-learn's compiled loop
#: (on the one thread the scoring thread allows it) is faster for a 200-tree model. The cost of both
#: grows with the trees; measurements in docs/performance.md.
FAST_MAX_ROWS = 128
#: Walkers that reached a leaf are dropped from the walk every this many steps.
COMPACT_EVERY = 3


class FastTrees:
    """All trees of a binary HistGradientBoostingClassifier as flat arrays, walked together."""

    def __init__(self, estimator: HistGradientBoostingClassifier) -> None:
        trees = [iteration[0] for iteration in estimator._predictors]  # noqa: SLF001  # the fitted trees; no public accessor
        sizes = np.array([len(t.nodes) for t in trees])
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        nodes = np.concatenate([t.nodes for t in trees])
        shift = np.repeat(offsets, sizes)
        self.roots = offsets.astype(np.int64)
        self.feature = nodes["feature_idx"].astype(np.int64)
        self.threshold = nodes["num_threshold"].astype(np.float64)
        self.missing_left = nodes["missing_go_to_left"].astype(bool)
        self.is_leaf = nodes["is_leaf"].astype(bool)
        self.feature[self.is_leaf] = 0  # any valid column: a leaf's test leads back to itself
        # A leaf is its own child both ways, so a walker that reached one stays there until the
        # walkers are next compacted, without a check per step.
        index = np.arange(len(nodes), dtype=np.int64)
        left = np.where(self.is_leaf, index, nodes["left"].astype(np.int64) + shift)
        right = np.where(self.is_leaf, index, nodes["right"].astype(np.int64) + shift)
        #: Children interleaved, ``[2 * node + went_left]``: one look-up per step for both ways.
        self.child = np.stack([right, left], axis=1).ravel()
        self.value = nodes["value"].astype(np.float64)
        #: Steps from a root to the deepest leaf.
        self.depth = int(nodes["depth"].max())
        self.baseline = float(np.asarray(estimator._baseline_prediction).ravel()[0])  # noqa: SLF001  # the raw score before the trees; no public accessor

    @classmethod
    def supports(cls, estimator: Any) -> bool:
        return (
            isinstance(estimator, HistGradientBoostingClassifier)
            and getattr(estimator, "n_trees_per_iteration_", 0) == 1
            and getattr(estimator, "is_categorical_", None) is None
            and all(not iteration[0].nodes["is_categorical"].any() for iteration in estimator._predictors)  # noqa: SLF001  # the fitted trees; no public accessor
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        n, n_features = x.shape
        n_trees = len(self.roots)
        # One walker per (row, tree), flattened. Walkers at a leaf stay there (leaves are their
        # own children); every COMPACT_EVERY steps they are dropped from the arrays the steps
        # work on (most trees end well above the deepest one). Compacting every step costs more
        # than it saves (docs/performance.md).
        node = np.tile(self.roots, n)
        walking = np.arange(n * n_trees)
        current = node
        at = np.repeat(np.arange(n, dtype=np.int64) * n_features, n_trees)
        values = np.ascontiguousarray(x, dtype=np.float64).ravel()
        has_nan = bool(np.isnan(values).any())
        for step in range(1, self.depth + 1):
            value = values[at + self.feature[current]]
            left = value <= self.threshold[current]  # NaN compares False ...
            if has_nan:  # ... and goes where the split sent missing values in training
                left = np.where(np.isnan(value), self.missing_left[current], left)
            current = self.child[2 * current + left]
            if step % COMPACT_EVERY == 0:
                node[walking] = current
                inner = ~self.is_leaf[current]
                walking, current, at = walking[inner], current[inner], at[inner]
                if not len(walking):
                    break
        node[walking] = current
        # scikit-learn starts from the baseline and adds one tree at a time; cumsum adds in that
        # same sequence (no pairwise summation), so the sums are bit-identical.
        terms = np.concatenate((np.full((n, 1), self.baseline), self.value[node].reshape(n, n_trees)), axis=1)
        return np.asarray(expit(np.cumsum(terms, axis=1)[:, -1]), dtype=np.float64)


class FastLogistic:
    """A StandardScaler + binary LogisticRegression pipeline, without the per-call checks."""

    def __init__(self, estimator: Pipeline) -> None:
        scaler, model = estimator.steps[0][1], estimator.steps[-1][1]
        self.mean = scaler.mean_
        self.scale = scaler.scale_
        self.coef = model.coef_.ravel()
        self.intercept = float(model.intercept_[0])

    @classmethod
    def supports(cls, estimator: Any) -> bool:
        return (
            isinstance(estimator, Pipeline)
            and len(estimator.steps) == 2
            and isinstance(estimator.steps[0][1], StandardScaler)
            and getattr(estimator.steps[0][1], "with_mean", False)
            and getattr(estimator.steps[0][1], "with_std", False)
            and isinstance(estimator.steps[-1][1], LogisticRegression)
            and estimator.steps[-1][1].coef_.shape[0] == 1
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.scale
        # One dot product per row: a row's sum then does not depend on how many rows come with
        # it (a matrix product's blocking would), so a request scores the same alone or batched.
        dots = np.array([np.dot(row, self.coef) for row in z], dtype=np.float64)
        return np.asarray(expit(dots + self.intercept), dtype=np.float64)


def fast_path(estimator: Any) -> FastTrees | FastLogistic | None:
    """The fast predictor for this estimator, or None when only scikit-learn's will do."""
    if FastTrees.supports(estimator):
        return FastTrees(estimator)
    if FastLogistic.supports(estimator):
        return FastLogistic(estimator)
    return None
