"""Prequential folds: fit, delay gap and validation shifted back in time; selection by mean AP."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from model.dataset import DatasetError
from model.selection import Fold, effective_gap_ms, make_folds, select, summarise

DAY = 86_400_000


def hourly(days: int) -> tuple[np.ndarray, np.ndarray]:
    ts = np.arange(days * 24, dtype=np.int64) * (DAY // 24)
    y = (np.arange(len(ts)) % 7 == 0).astype(np.int64)  # fraud in every stretch
    return ts, y


def test_folds_move_back_in_time_with_a_gap_before_each_validation() -> None:
    ts, y = hourly(40)
    window = np.ones(len(ts), dtype=bool)
    folds, gap = make_folds(ts, window, y, end_ms=40 * DAY, validation_fraction=0.1, gap_ms=7 * DAY, n_folds=3)
    assert gap == 7 * DAY
    assert [(f.validation_from_ms // DAY, f.validation_to_ms // DAY) for f in folds] == [(36, 40), (32, 36), (28, 32)]
    for f in folds:
        assert f.fit_end_ms == f.validation_from_ms - 7 * DAY
        assert ts[f.fit].max() < f.fit_end_ms <= ts[f.validation].min() - 7 * DAY
        assert not (f.fit & f.validation).any()
    assert folds[2].fit.sum() < folds[1].fit.sum() < folds[0].fit.sum()  # expanding fit windows


def test_gap_is_shortened_so_that_half_the_window_still_fits() -> None:
    assert effective_gap_ms(10 * DAY, 2 * DAY, 7 * DAY, 1) == 3 * DAY
    assert effective_gap_ms(30 * DAY, 6 * DAY, 7 * DAY, 1) == 7 * DAY
    assert effective_gap_ms(10 * DAY, 6 * DAY, 7 * DAY, 1) == 0


def test_a_fold_without_fraud_is_an_error_naming_it() -> None:
    ts, _ = hourly(20)
    y = np.zeros(len(ts), dtype=np.int64)
    y[-5:] = 1  # fraud only in the latest validation window
    with pytest.raises(DatasetError, match="fold 0: the fit part"):
        make_folds(ts, np.ones(len(ts), bool), y, end_ms=20 * DAY, validation_fraction=0.2, gap_ms=0)
    # Fraud only in the fit part: validation without fraud is allowed (thresholds say so later).
    y = np.zeros(len(ts), dtype=np.int64)
    y[:5] = 1
    folds, _ = make_folds(ts, np.ones(len(ts), bool), y, end_ms=20 * DAY, validation_fraction=0.2, gap_ms=0)
    assert y[folds[0].validation].sum() == 0
    with pytest.raises(DatasetError, match="too little"):
        make_folds(ts, np.ones(len(ts), bool), y, end_ms=20 * DAY, validation_fraction=0.2, gap_ms=0, n_folds=3)


def test_select_ranks_by_mean_average_precision() -> None:
    ts, y = hourly(30)
    folds, _ = make_folds(ts, np.ones(len(ts), bool), y, end_ms=30 * DAY, validation_fraction=0.1, gap_ms=0, n_folds=2)
    ap = {("a", 0): 0.5, ("a", 1): 0.7, ("b", 0): 0.9, ("b", 1): 0.2}

    def evaluate_fold(name: str, fold: Fold) -> dict[str, Any]:
        return {"average_precision": ap[(name, folds.index(fold))], "auc_roc": None}

    best, results = select(["a", "b"], folds, evaluate_fold, ["average_precision", "auc_roc"])
    assert best == "a"  # 0.60 beats 0.55
    assert results["b"]["average_precision"] == {
        "mean": pytest.approx(0.55),
        "std": pytest.approx(0.35),
        "folds": [0.9, 0.2],
    }
    assert results["a"]["auc_roc"]["mean"] is None
    assert summarise([{"x": 1.0}, {"x": 3.0}], ["x"])["x"]["std"] == pytest.approx(1.0)
