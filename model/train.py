"""Training: CSV -> point-in-time features -> time-split fit -> thresholds -> versioned artifact.

The training window ``[train_from, train_to)`` is split by time (model/selection.py): the model
is fitted on its start, a delay gap is left out, and the latest stretch validates it and sets the
thresholds. ``select`` compares estimators by prequential validation over several such folds,
then refits the best on the whole window.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from model.artifact import save_artifact, sha256_file
from model.baseline import baseline_features, baseline_scores
from model.dataset import Dataset, DatasetError, load_csv, select_window
from model.drift import build_reference
from model.errors import UserInputError
from model.evaluate import known_compromised
from model.features import (
    DAY_MS,
    FEATURE_NAMES,
    MERCHANT_RISK_FEATURES,
    REASON_GROUPS,
    compute_features,
    history_from_frame,
    risk_context_from_frame,
)
from model.metrics import evaluation_report, pick_thresholds, protocol_report, ranking_report
from model.plots import plot_confusion, plot_pr_curve
from model.selection import CRITERION, Fold, make_folds, select

log = logging.getLogger(__name__)

ModelType = Literal["hgb", "rf", "et", "logreg"]
MODEL_TYPES: tuple[str, ...] = get_args(ModelType)
#: Rows each tree of a forest is grown on, at most (bounds a forest's fit time on big windows).
FOREST_MAX_SAMPLES = 200_000
#: Metrics compared across folds.
FOLD_METRICS = ("auc_roc", "average_precision", "card_precision_at_100")
#: Feature groups a model can be trained without (``fraud train --without GROUP``): zeroed in
#: training and, through the artifact's ``disabled_features``, in serving.
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    # Label-free: merchant counts against the merchant's own baseline, and its share of new cards.
    "merchant-activity": REASON_GROUPS["merchant_activity_unusual"] + REASON_GROUPS["merchant_new_cards_unusual"],
    "merchant-fraud-rates": REASON_GROUPS["merchant_recent_fraud_rate_high"],
    "merchant-known-frauds": REASON_GROUPS["merchant_known_fraud_recent"],
    "card-labels": REASON_GROUPS["card_known_compromised"],
    # All of the above: what ``--without-merchant-risk`` turns off.
    "merchant-risk": MERCHANT_RISK_FEATURES,
}


def disabled_features(groups: tuple[str, ...] | list[str]) -> list[str]:
    """The features of the named groups, in matrix order; an unknown name is the user's error."""
    unknown = [g for g in groups if g not in FEATURE_GROUPS]
    if unknown:
        raise UserInputError(
            f"unknown feature group {', '.join(map(repr, unknown))}: choose from {', '.join(FEATURE_GROUPS)}"
        )
    off = {f for g in groups for f in FEATURE_GROUPS[g]}
    return [f for f in FEATURE_NAMES if f in off]


@dataclass(frozen=True)
class TrainOptions:
    model_type: ModelType = "hgb"
    train_from: pd.Timestamp | None = None
    train_to: pd.Timestamp | None = None
    validation_fraction: float = 0.2
    block_precision: float = 0.8
    review_precision: float = 0.3
    seed: int = 7
    strict: bool = False
    #: Reporting delay assumed for fraud rows whose CSV has no ``labelled_at``.
    label_delay_days: float = 7.0
    #: Days left out between fitting and validation; None: ``label_delay_days``. Shortened on
    #: windows too short for it (model/selection.py), and the metadata says so.
    gap_days: float | None = None
    #: False trains without the merchant risk and known-fraud features (they are zeroed), the
    #: baseline that shows what those features add: the same as ``without=("merchant-risk",)``.
    merchant_risk: bool = True
    #: Feature groups (:data:`FEATURE_GROUPS`) trained without: their features are zeroed.
    without: tuple[str, ...] = ()
    #: Prequential selection among ``candidates`` over ``folds`` folds, then a refit on the whole
    #: window; ``model_type`` is then ignored.
    select: bool = False
    candidates: tuple[str, ...] = MODEL_TYPES
    folds: int = 3
    #: Refit the model on the whole window after validation (thresholds stay the validation's);
    #: always with ``select``. Off by default: a second fit on all rows, and training time counts.
    refit: bool = False
    #: Also fit the textbook random forest (model/baseline.py) on the same split and report it.
    baseline: bool = False
    assume_timezone: tzinfo | None = None


def build_estimator(model_type: str, seed: int, n_rows: int = 0) -> Any:
    """An unfitted estimator: gradient-boosted trees (``hgb``, the default), a random forest
    (``rf``), extra trees (``et``) or a scaled logistic regression (``logreg``).

    All weight the classes inversely to their frequency (fraud is <2% of rows), so their scores
    rank well but are not calibrated probabilities. Early stopping is off: its internal split is
    random, and time-ordered data must be split by time. Forests grow each tree on at most
    :data:`FOREST_MAX_SAMPLES` rows (``n_rows``: the fit size).
    """
    if model_type == "hgb":
        return HistGradientBoostingClassifier(
            max_iter=200,
            learning_rate=0.08,
            max_leaf_nodes=31,
            min_samples_leaf=40,
            l2_regularization=1.0,
            class_weight="balanced",
            early_stopping=False,
            random_state=seed,
        )
    if model_type in ("rf", "et"):
        forest = RandomForestClassifier if model_type == "rf" else ExtraTreesClassifier
        return forest(
            n_estimators=100,
            min_samples_leaf=20,
            max_features="sqrt",
            bootstrap=True,
            max_samples=min(1.0, FOREST_MAX_SAMPLES / max(n_rows, 1)),
            class_weight="balanced_subsample",
            n_jobs=-1,
            random_state=seed,
        )
    if model_type == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))
    raise ValueError(f"unknown model type {model_type!r} (choose one of {', '.join(MODEL_TYPES)})")


def fit_estimator(
    model_type: str, seed: int, x: np.ndarray, y: np.ndarray
) -> HistGradientBoostingClassifier | Pipeline:
    estimator = build_estimator(model_type, seed, len(y)).fit(x, y)
    if isinstance(estimator, RandomForestClassifier | ExtraTreesClassifier):
        # Serving scores a batch on the one scoring thread: no worker pool per call.
        estimator.set_params(n_jobs=None)
    return estimator


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def features_for(frame: pd.DataFrame, label_delay_days: float = 7.0) -> np.ndarray:
    """Point-in-time features for every row: each row's history is every earlier row, and only
    the fraud labels known before it count."""
    risk = risk_context_from_frame(frame, round(label_delay_days * DAY_MS))
    return compute_features(frame, history_from_frame(frame), risk)


def disabled_columns(names: list[str] | tuple[str, ...]) -> np.ndarray:
    return np.array([FEATURE_NAMES.index(n) for n in names], dtype=np.int64)


def _scored(frame: pd.DataFrame, mask: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    return frame.loc[mask, ["card_id", "timestamp", "is_fraud"]].reset_index(drop=True).assign(score=scores)


def _protocol(frame: pd.DataFrame, fold: Fold, scores: np.ndarray, delay_ms: int, t: Any = None) -> dict[str, Any]:
    """A fold's validation metrics under the delay protocol (cards known compromised left out)."""
    removed = known_compromised(frame, fold.validation, fold.fit_end_ms, delay_ms)[fold.validation]
    return protocol_report(_scored(frame, fold.validation, scores).loc[~removed].reset_index(drop=True), t)


def _window(dataset: Dataset, options: TrainOptions) -> tuple[np.ndarray, int]:
    frame = dataset.frame
    window = select_window(frame, options.train_from, options.train_to)
    if window.sum() < 100:
        raise DatasetError(f"only {int(window.sum())} rows in the training window; need at least 100")
    ts = frame["ts_ms"].to_numpy()
    end = options.train_to.value // 1_000_000 if options.train_to is not None else int(ts[window].max()) + 1
    return window, end


def _selection(
    features: np.ndarray, dataset: Dataset, options: TrainOptions, folds: list[Fold], gap: int
) -> tuple[str, np.ndarray, dict[str, Any]]:
    """The best candidate, its scores on the latest validation window, and the selection report."""
    frame, y = dataset.frame, dataset.labels
    delay_ms = round(options.label_delay_days * DAY_MS)
    latest: dict[str, np.ndarray] = {}

    def evaluate_fold(name: str, fold: Fold) -> dict[str, Any]:
        started = time.perf_counter()
        model = fit_estimator(name, options.seed, features[fold.fit], y[fold.fit])
        scores = model.predict_proba(features[fold.validation])[:, 1]
        if fold is folds[0]:
            latest[name] = scores
        metrics = _protocol(frame, fold, scores, delay_ms)
        log.info(
            "validation to %s, %s: AP %.4f (%.1f s)",
            _iso(fold.validation_to_ms),
            name,
            metrics[CRITERION],
            time.perf_counter() - started,
        )
        return metrics

    best, results = select(options.candidates, folds, evaluate_fold, FOLD_METRICS)
    return (
        best,
        latest[best],
        {
            "criterion": f"{CRITERION} under the delay protocol, mean over folds",
            "gap_days": gap / DAY_MS,
            "folds": [f.describe() for f in folds],
            "candidates": results,
            "chosen": best,
        },
    )


def disabled_groups(options: TrainOptions) -> list[str]:
    groups = list(dict.fromkeys(options.without))
    if not options.merchant_risk and "merchant-risk" not in groups:
        groups.append("merchant-risk")
    return groups


def train(data: Path, out: Path, options: TrainOptions) -> dict[str, Any]:
    """Train on ``data`` and write an artifact to ``out``; returns the metadata written."""
    started = time.perf_counter()
    groups = disabled_groups(options)
    disabled = disabled_features(groups)  # before the CSV is read: a typo fails at once
    dataset = load_csv(data, strict=options.strict, assume_timezone=options.assume_timezone)
    if dataset.invalid.count:
        log.warning("%s: %s", data, dataset.invalid.summary())
    frame, y = dataset.frame, dataset.labels
    # Rows before --train-from still count as history for the windows; they are not trained on.
    features = features_for(frame, options.label_delay_days)
    features[:, disabled_columns(disabled)] = 0.0
    ts = frame["ts_ms"].to_numpy()
    # Without --train-from every row trains, early ones with partial windows included: serving
    # sees such rows too (new cards, a worker whose state starts empty), and a model that never
    # saw them flags them far too often.
    window, end = _window(dataset, options)
    delay_ms = round(options.label_delay_days * DAY_MS)
    gap_ms = delay_ms if options.gap_days is None else round(options.gap_days * DAY_MS)

    folds, gap = make_folds(
        ts,
        window,
        y,
        end_ms=end,
        validation_fraction=options.validation_fraction,
        gap_ms=gap_ms,
        n_folds=options.folds if options.select else 1,
    )
    fold = folds[0]
    selection = None
    if options.select:
        model_type, val_scores, selection = _selection(features, dataset, options, folds, gap)
    else:
        model_type = options.model_type
        log.info("fitting %s on %d rows (%d fraud)", model_type, fold.fit.sum(), y[fold.fit].sum())
        estimator = fit_estimator(model_type, options.seed, features[fold.fit], y[fold.fit])
        val_scores = estimator.predict_proba(features[fold.validation])[:, 1]
    fitted_on = fold.fit
    if options.select or options.refit:
        # The model learns from the whole window; its thresholds come from the latest validation
        # window (the refit has no held-out data left to set them on).
        log.info("refitting %s on the whole window: %d rows (%d fraud)", model_type, window.sum(), y[window].sum())
        estimator = fit_estimator(model_type, options.seed, features[window], y[window])
        fitted_on = window
    thresholds = pick_thresholds(
        y[fold.validation],
        val_scores,
        block_precision=options.block_precision,
        review_precision=options.review_precision,
    )
    report = evaluation_report(_scored(frame, fold.validation, val_scores), thresholds)
    report["protocol"] = _protocol(frame, fold, val_scores, delay_ms, thresholds)
    baseline = None
    if options.baseline:
        b_scores = baseline_scores(baseline_features(frame, options.label_delay_days), y, fold.fit, fold.validation)
        baseline = {
            "model": "random_forest_textbook",
            **ranking_report(_scored(frame, fold.validation, b_scores)),
            "protocol": _protocol(frame, fold, b_scores, delay_ms),
        }

    notes = list(thresholds.notes)
    if gap < gap_ms:
        notes.append(
            f"validation gap shortened from {gap_ms / DAY_MS:g} to {gap / DAY_MS:.2f} days: the window is too "
            "short to fit on half of it otherwise"
        )
    w_ts = ts[window]
    metadata = {
        "created_at": datetime.now(UTC).isoformat(),
        "model_type": model_type,
        "thresholds": {"review": thresholds.review, "block": thresholds.block},
        "threshold_targets": {
            "review_precision": options.review_precision,
            "block_precision": options.block_precision,
            "notes": notes,
        },
        "training_window": {
            "requested_from": options.train_from.isoformat() if options.train_from is not None else None,
            "train_from": options.train_from.isoformat() if options.train_from is not None else None,
            "requested_to": options.train_to.isoformat() if options.train_to is not None else None,
            "train_end": _iso(end),
            "gap_days": gap / DAY_MS,
            "fit_from": _iso(int(ts[fold.fit].min())),
            "fit_to": _iso(int(ts[fold.fit].max())),
            "validation_from": _iso(int(ts[fold.validation].min())),
            "validation_to": _iso(int(ts[fold.validation].max())),
            "fit_rows": int(fold.fit.sum()),
            "fit_fraud": int(y[fold.fit].sum()),
            "gap_rows": int((window & ~fold.fit & ~fold.validation).sum()),
            "validation_rows": int(fold.validation.sum()),
            "validation_fraud": int(y[fold.validation].sum()),
            "history_only_rows": int((~window & (ts < w_ts.min())).sum()),
            "model_fitted_on_rows": int(fitted_on.sum()),
        },
        "validation_metrics": report,
        "selection": selection,
        "baseline": baseline,
        "data_fingerprint": {
            "file": str(data),
            "sha256": sha256_file(Path(data)),
            "rows": dataset.invalid.total_rows,
            "invalid_rows": dataset.invalid.as_dict(),
            "warning": dataset.invalid.loud_warning(data),
        },
        "reference_features": np.median(features[fitted_on], axis=0).tolist(),
        "drift_reference": build_reference(features[fitted_on], val_scores),
        "seed": options.seed,
        "label_delay_days": options.label_delay_days,
        "disabled_groups": groups,
        "disabled_features": disabled,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    meta = save_artifact(out, estimator, metadata)
    plot_pr_curve(y[fold.validation], val_scores, thresholds, out / "pr_curve.png")
    plot_confusion(y[fold.validation], val_scores, thresholds, out / "confusion_matrix.png")
    return meta
