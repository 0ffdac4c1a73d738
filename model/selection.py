"""Time splits for validation and model selection: fit, delay gap, validation, shifted back in time.

Fold 0 validates on the latest stretch of the training window, ``[E - V, E)``, with a model fitted
on ``[S, E - V - gap)``: the gap stands for the label delay (when a model is trained, the labels
of the last days are not known yet). Fold i moves validation i windows back, ``[E - (i+1)V,
E - iV)``, and fits on everything from ``S`` up to its own gap (prequential validation: every
fold is validated on data later than all it was fitted on). Selection compares estimators by
their mean over the folds, reported with its standard deviation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from model.dataset import DatasetError
from model.features import DAY_MS

#: A fold's fit range keeps at least this share of the window's span: a gap that would leave less
#: is shortened (and the report says so), so that short windows still train.
MIN_FIT_SHARE = 0.5
#: What selection ranks candidates by: the protocol's average precision, averaged over folds.
CRITERION = "average_precision"


def _iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()


@dataclass(frozen=True, eq=False)  # compared by identity: its masks are arrays
class Fold:
    fit: np.ndarray
    validation: np.ndarray
    fit_end_ms: int
    validation_from_ms: int
    validation_to_ms: int

    def describe(self) -> dict[str, Any]:
        """The fold's boundaries (fit up to ``fit_to``, validation ``[validation_from, validation_to)``)."""
        return {
            "fit_to": _iso(self.fit_end_ms),
            "validation_from": _iso(self.validation_from_ms),
            "validation_to": _iso(self.validation_to_ms),
            "fit_rows": int(self.fit.sum()),
            "validation_rows": int(self.validation.sum()),
        }


def effective_gap_ms(span_ms: int, validation_ms: int, gap_ms: int, n_folds: int) -> int:
    """The gap, shortened when the earliest fold would keep less than :data:`MIN_FIT_SHARE` of the span."""
    room = span_ms - n_folds * validation_ms - round(MIN_FIT_SHARE * span_ms)
    return max(0, min(gap_ms, room))


def make_folds(
    ts: np.ndarray,
    window: np.ndarray,
    y: np.ndarray,
    *,
    end_ms: int,
    validation_fraction: float,
    gap_ms: int,
    n_folds: int = 1,
) -> tuple[list[Fold], int]:
    """Folds over the rows of ``window`` (a mask; ``ts`` in ms, ``end_ms`` exclusive), latest first,
    and the gap used. Raises :class:`DatasetError` when a fold's fit or validation part lacks a class."""
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {validation_fraction}")
    start_ms = int(ts[window].min())
    span = end_ms - start_ms
    validation_ms = max(1, round(span * validation_fraction))
    if n_folds * validation_ms >= span * (1 - MIN_FIT_SHARE) + 1 and n_folds > 1:
        raise DatasetError(
            f"{n_folds} validation windows of {validation_ms / DAY_MS:.2f} days leave too little of the "
            f"{span / DAY_MS:.1f}-day window to fit on; use fewer folds or a smaller validation fraction"
        )
    gap = effective_gap_ms(span, validation_ms, gap_ms, n_folds)
    folds = []
    for i in range(n_folds):
        val_to = end_ms - i * validation_ms
        val_from = val_to - validation_ms
        fit_end = val_from - gap
        fold = Fold(
            fit=window & (ts < fit_end),
            validation=window & (ts >= val_from) & (ts < val_to),
            fit_end_ms=fit_end,
            validation_from_ms=val_from,
            validation_to_ms=val_to,
        )
        fit_labels = y[fold.fit]
        if fit_labels.size == 0 or fit_labels.min() == fit_labels.max():
            raise DatasetError(
                f"fold {i}: the fit part ({fold.describe()}) has only one class; widen the window or add data"
            )
        # A validation stretch without fraud still trains (the thresholds then flag nothing in it,
        # and the notes say so); an empty one does not.
        if not fold.validation.any():
            raise DatasetError(f"fold {i}: the validation part ({fold.describe()}) is empty; widen the window")
        folds.append(fold)
    return folds, gap


def summarise(per_fold: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Mean, standard deviation and per-fold values of each metric (``None`` values skipped)."""
    out = {}
    for key in keys:
        values = [f[key] for f in per_fold if f.get(key) is not None]
        out[key] = {
            "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values)) if values else None,
            "folds": [f.get(key) for f in per_fold],
        }
    return out


def select(
    candidates: Sequence[str],
    folds: Sequence[Fold],
    evaluate_fold: Callable[[str, Fold], dict[str, Any]],
    keys: Sequence[str],
) -> tuple[str, dict[str, dict[str, dict[str, Any]]]]:
    """Evaluate every candidate on every fold; the best by :data:`CRITERION`'s mean (ties: the
    earlier candidate), and the summaries of all."""
    results = {name: summarise([evaluate_fold(name, fold) for fold in folds], keys) for name in candidates}
    best = max(candidates, key=lambda n: (results[n][CRITERION]["mean"] or 0.0, -list(candidates).index(n)))
    return best, results
