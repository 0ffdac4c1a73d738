"""Offline evaluation of an artifact on a labelled CSV over a time range."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from model.artifact import load_artifact
from model.dataset import DatasetError, load_csv, select_window
from model.features import history_from_frame, risk_context_from_frame
from model.metrics import evaluation_report
from model.scoring import Scorer

log = logging.getLogger(__name__)


def evaluate(
    model_dir: Path,
    data: Path,
    start: pd.Timestamp | None,
    end: pd.Timestamp | None,
    report_path: Path | None = None,
    scores_path: Path | None = None,
    baseline_dir: Path | None = None,
) -> dict[str, Any]:
    """Score ``start <= timestamp < end`` with every earlier row as history (and the labels known
    before each row); write report and scores. With ``baseline_dir`` (say, a model trained with
    ``--without-merchant-risk``) the report adds its metrics on the same rows under ``baseline``."""
    scorer = Scorer(load_artifact(model_dir))
    baseline = Scorer(load_artifact(baseline_dir)) if baseline_dir is not None else None
    dataset = load_csv(data)
    frame = dataset.frame
    mask = select_window(frame, start, end)
    if not mask.any():
        raise DatasetError(f"{data}: no valid rows between {start} and {end}")
    # Rows before the range are history only; rows after it cannot influence the windows.
    queries = frame.loc[mask].reset_index(drop=True)
    history = history_from_frame(frame)
    scored = scorer.score_frame(queries, history, risk_context_from_frame(frame, scorer.label_delay_ms))
    window = frame.loc[mask, ["transaction_id", "card_id", "timestamp", "is_fraud"]].reset_index(drop=True)
    report = evaluation_report(window.assign(score=scored.scores), scorer.thresholds)
    report["model_version"] = scorer.version
    report["disabled_features"] = list(scorer.artifact.metadata.get("disabled_features", []))
    if baseline is not None:
        base = baseline.score_frame(queries, history, risk_context_from_frame(frame, baseline.label_delay_ms))
        report["baseline"] = {
            **evaluation_report(window.assign(score=base.scores), baseline.thresholds),
            "model_version": baseline.version,
            "disabled_features": list(baseline.artifact.metadata.get("disabled_features", [])),
        }
    window["score"] = scored.scores
    report["range"] = {
        "from": start.isoformat() if start is not None else None,
        "to": end.isoformat() if end is not None else None,
    }
    report["data"] = {"file": str(data), **dataset.invalid.as_dict()}
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2, sort_keys=True))
    if scores_path is not None:
        scores_path.parent.mkdir(parents=True, exist_ok=True)
        out = window[["transaction_id", "score"]].assign(decision=scored.decisions)
        out.to_csv(scores_path, index=False, float_format="%.6f")
    return report
