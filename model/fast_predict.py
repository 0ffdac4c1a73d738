"""A fast path for the model call, equal to scikit-learn's to the last bit.

scikit-learn spends over a millisecond on one row of a 200-tree HistGradientBoosting model
(input checks, binning set-up, an OpenMP region per tree), whatever the batch size up to
dozens of rows: most of a ``/predict`` request, and of a small stream batch's model call. The
trees are flattened into one node table at load and walked by a compiled kernel
(:func:`model.kernels.tree_raw_scores`) that makes scikit-learn's comparisons (``x <= threshold``
goes left, NaN follows ``missing_go_to_left``, categorical splits test the same bitsets) and
adds the leaf values in its order (the baseline, then tree by tree), so the scores are
identical, not just close; ``tests/model/test_fast_predict.py`` checks that on every row.

Models this does not cover (multi-class, other estimators) keep the scikit-learn path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from model import kernels

#: Up to this many rows the numpy fast path (logistic regression) is used (model/scoring.py), and
#: ``/predict`` scores up to this many requests in one call. The compiled tree walk takes every
#: batch size: it is faster than scikit-learn's at 500 rows too (docs/performance.md).
FAST_MAX_ROWS = 128


class FastTrees:
    """A binary HistGradientBoostingClassifier's trees as one node table, walked by a compiled kernel."""

    #: Faster than scikit-learn at every batch size, not only small ones.
    any_size: bool = True

    def __init__(self, estimator: HistGradientBoostingClassifier) -> None:
        trees = [iteration[0] for iteration in estimator._predictors]  # noqa: SLF001  # the fitted trees; no public accessor
        sizes = np.array([len(t.nodes) for t in trees])
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        nodes = np.concatenate([t.nodes for t in trees])
        shift = np.repeat(offsets, sizes)
        self.roots = offsets
        self.is_leaf = nodes["is_leaf"].astype(bool)
        # The trees index the columns as scikit-learn's preprocessor reorders them (categorical
        # columns first); the kernel reads the columns as they come.
        columns = _input_columns(estimator)
        self.feature = columns[nodes["feature_idx"].astype(np.int64)]
        self.threshold = nodes["num_threshold"].astype(np.float64)
        self.missing_left = nodes["missing_go_to_left"].astype(bool)
        known, category_set = estimator._bin_mapper.make_known_categories_bitsets()  # noqa: SLF001  # the categories seen in training; no public accessor
        table = np.zeros((len(nodes), 8), dtype=np.int64)
        table[:, kernels.COLUMN] = np.where(self.is_leaf, 0, self.feature)
        table[:, kernels.LEFT] = nodes["left"].astype(np.int64) + shift
        table[:, kernels.RIGHT] = nodes["right"].astype(np.int64) + shift
        table[:, kernels.LEAF] = self.is_leaf
        table[:, kernels.MISSING_LEFT] = self.missing_left
        table[:, kernels.CATEGORICAL] = nodes["is_categorical"]
        # A tree's categorical splits number their sets from 0; the table numbers them overall.
        bitset_sizes = np.array([len(t.raw_left_cat_bitsets) for t in trees])
        bitset_offsets = np.repeat(np.concatenate(([0], np.cumsum(bitset_sizes)[:-1])), sizes)
        table[:, kernels.BITSET] = np.where(nodes["is_categorical"], nodes["bitset_idx"] + bitset_offsets, 0)
        table[:, kernels.CATEGORY_SET] = category_set[nodes["feature_idx"]]
        self.nodes = table
        self.node_values = np.ascontiguousarray(np.stack([self.threshold, nodes["value"].astype(np.float64)], axis=1))
        self.left_bitsets = np.concatenate([t.raw_left_cat_bitsets for t in trees] + [np.zeros((1, 8), np.uint32)])
        self.known_bitsets = np.concatenate([known, np.zeros((1, 8), np.uint32)])
        self.categories, self.category_starts = _categories(estimator)
        self.baseline = float(np.asarray(estimator._baseline_prediction).ravel()[0])  # noqa: SLF001  # the raw score before the trees; no public accessor
        self.predict(np.zeros((1, len(columns))))  # compiles (or loads) the kernel now, not on the first request

    @classmethod
    def supports(cls, estimator: Any) -> bool:
        if not isinstance(estimator, HistGradientBoostingClassifier) or estimator.n_trees_per_iteration_ != 1:
            return False
        try:  # categories are looked up as numbers: a model trained on strings keeps scikit-learn
            _categories(estimator)
        except (TypeError, ValueError):
            return False
        return True

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.empty(len(x), dtype=np.float64)
        kernels.tree_raw_scores(
            np.ascontiguousarray(x, dtype=np.float64), self.baseline, self.roots, self.nodes, self.node_values,
            self.left_bitsets, self.known_bitsets, self.categories, self.category_starts, out,
        )  # fmt: skip
        # scikit-learn's binomial link is scipy's expit too.
        return np.asarray(expit(out), dtype=np.float64)


def _input_columns(estimator: HistGradientBoostingClassifier) -> np.ndarray:
    """For each column the trees index, the input column it comes from."""
    categorical = estimator.is_categorical_
    if categorical is None:
        return np.arange(estimator.n_features_in_, dtype=np.int64)
    return np.concatenate((np.flatnonzero(categorical), np.flatnonzero(~categorical))).astype(np.int64)


def _categories(estimator: HistGradientBoostingClassifier) -> tuple[np.ndarray, np.ndarray]:
    """Each categorical column's categories as the OrdinalEncoder sorted them, concatenated, and
    where each column's start (one more for the end)."""
    if estimator.is_categorical_ is None:
        return np.zeros(0), np.zeros(2, dtype=np.int64)
    encoder = estimator._preprocessor.named_transformers_["encoder"]  # noqa: SLF001  # scikit-learn's own encoding of the categories
    found = [np.asarray(c, dtype=np.float64) for c in encoder.categories_]
    starts = np.concatenate(([0], np.cumsum([len(c) for c in found]))).astype(np.int64)
    return np.concatenate(found), starts


class FastLogistic:
    """A StandardScaler + binary LogisticRegression pipeline, without the per-call checks."""

    #: Small batches only, as before the compiled walk (large ones not measured against scikit-learn).
    any_size: bool = False

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
