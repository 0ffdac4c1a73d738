"""Training: CSV -> point-in-time features -> time-split fit -> thresholds -> versioned artifact."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from model.artifact import save_artifact, sha256_file
from model.dataset import DatasetError, load_csv, select_window
from model.drift import build_reference
from model.features import (
    DAY_MS,
    FEATURE_NAMES,
    MERCHANT_RISK_FEATURES,
    compute_features,
    history_from_frame,
    risk_context_from_frame,
)
from model.metrics import evaluation_report, pick_thresholds
from model.plots import plot_confusion, plot_pr_curve

log = logging.getLogger(__name__)

ModelType = Literal["hgb", "logreg"]


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
    #: False trains without the merchant risk and known-fraud features (they are zeroed), the
    #: baseline that shows what those features add.
    merchant_risk: bool = True


def build_estimator(model_type: ModelType, seed: int) -> HistGradientBoostingClassifier | Pipeline:
    """The default is gradient-boosted trees; ``logreg`` is a scaled logistic regression.

    Both weight the classes inversely to their frequency (fraud is <2% of rows), so their scores
    rank well but are not calibrated probabilities. Early stopping is off: its internal split
    is random, and time-ordered data must be split by time.
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
    if model_type == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))
    raise ValueError(f"unknown model type {model_type!r} (choose hgb or logreg)")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def features_for(frame: pd.DataFrame, label_delay_days: float = 7.0) -> np.ndarray:
    """Point-in-time features for every row: each row's history is every earlier row, and only
    the fraud labels known before it count."""
    risk = risk_context_from_frame(frame, round(label_delay_days * DAY_MS))
    return compute_features(frame, history_from_frame(frame), risk)


def disabled_columns(names: list[str] | tuple[str, ...]) -> np.ndarray:
    return np.array([FEATURE_NAMES.index(n) for n in names], dtype=np.int64)


def train(data: Path, out: Path, options: TrainOptions) -> dict[str, Any]:
    """Train on ``data`` and write an artifact to ``out``; returns the metadata written."""
    dataset = load_csv(data, strict=options.strict)
    if dataset.invalid.count:
        log.warning("%s: %s", data, dataset.invalid.summary())
    frame = dataset.frame
    # Rows before --train-from still count as history for the windows; they are not trained on.
    features = features_for(frame, options.label_delay_days)
    disabled = [] if options.merchant_risk else list(MERCHANT_RISK_FEATURES)
    features[:, disabled_columns(disabled)] = 0.0
    ts = frame["ts_ms"].to_numpy()
    # Without --train-from every row trains, early ones with partial windows included: serving
    # sees such rows too (new cards, a worker whose state starts empty), and a model that never
    # saw them flags them far too often.
    train_from = options.train_from
    window = select_window(frame, train_from, options.train_to)
    if window.sum() < 100:
        raise DatasetError(f"only {int(window.sum())} rows in the training window; need at least 100")
    w_ts = ts[window]
    cut = int(np.quantile(w_ts, 1.0 - options.validation_fraction))
    fit_mask = window & (ts < cut)
    val_mask = window & (ts >= cut)
    y = dataset.labels
    for name, mask in (("training", fit_mask), ("validation", val_mask)):
        if y[mask].sum() == 0 or y[mask].sum() == mask.sum():
            raise DatasetError(f"the {name} split has only one class; widen the window or add data")

    estimator = build_estimator(options.model_type, options.seed)
    log.info("fitting %s on %d rows (%d fraud)", options.model_type, fit_mask.sum(), y[fit_mask].sum())
    estimator.fit(features[fit_mask], y[fit_mask])
    val_scores = estimator.predict_proba(features[val_mask])[:, 1]
    thresholds = pick_thresholds(
        y[val_mask],
        val_scores,
        block_precision=options.block_precision,
        review_precision=options.review_precision,
    )
    val_frame = frame.loc[val_mask, ["card_id", "timestamp", "is_fraud"]].assign(score=val_scores)
    report = evaluation_report(val_frame, thresholds)

    created = datetime.now(UTC)
    metadata = {
        "created_at": created.isoformat(),
        "model_type": options.model_type,
        "thresholds": {"review": thresholds.review, "block": thresholds.block},
        "threshold_targets": {
            "review_precision": options.review_precision,
            "block_precision": options.block_precision,
            "notes": list(thresholds.notes),
        },
        "training_window": {
            "requested_from": options.train_from.isoformat() if options.train_from is not None else None,
            "train_from": train_from.isoformat() if train_from is not None else None,
            "requested_to": options.train_to.isoformat() if options.train_to is not None else None,
            "fit_from": _iso(int(ts[fit_mask].min())),
            "fit_to": _iso(int(ts[fit_mask].max())),
            "validation_from": _iso(int(ts[val_mask].min())),
            "validation_to": _iso(int(ts[val_mask].max())),
            "fit_rows": int(fit_mask.sum()),
            "fit_fraud": int(y[fit_mask].sum()),
            "validation_rows": int(val_mask.sum()),
            "validation_fraud": int(y[val_mask].sum()),
            "history_only_rows": int((~window & (ts < w_ts.min())).sum()),
        },
        "validation_metrics": report,
        "data_fingerprint": {
            "file": str(data),
            "sha256": sha256_file(Path(data)),
            "rows": dataset.invalid.total_rows,
            "invalid_rows": dataset.invalid.as_dict(),
        },
        "reference_features": np.median(features[fit_mask], axis=0).tolist(),
        "drift_reference": build_reference(features[fit_mask], val_scores),
        "seed": options.seed,
        "label_delay_days": options.label_delay_days,
        "disabled_features": disabled,
    }
    meta = save_artifact(out, estimator, metadata)
    plot_pr_curve(y[val_mask], val_scores, thresholds, out / "pr_curve.png")
    plot_confusion(y[val_mask], val_scores, thresholds, out / "confusion_matrix.png")
    return meta
