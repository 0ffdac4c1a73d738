"""Offline evaluation of an artifact on a labelled CSV, plain and under the delay protocol.

The delay protocol (Le Borgne et al., chapter 3): the test range starts a delay gap after the
training window ends (labels of the gap were not known when the model was trained), and each test
day leaves out the cards already known to be compromised: those with a fraud in the training
window, or a fraud whose label was known before that day (its ``labelled_at``, else the
transaction time plus the label delay). Card precision@k is then the handbook's: per day, the k
highest-scoring cards, the ones found compromised removed from later days.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model.artifact import load_artifact
from model.baseline import baseline_features, baseline_scores
from model.dataset import Dataset, DatasetError, load_csv, select_window
from model.features import DAY_MS, history_from_frame, risk_context_from_frame
from model.metrics import Thresholds, evaluation_report, protocol_report, ranking_report
from model.scoring import Scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateOptions:
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    #: Days between the end of training and the start of the test range; None: the model's label delay.
    gap_days: float | None = None
    k: int = 100
    #: Also fit and report the textbook random forest (model/baseline.py) on the model's training window.
    baseline: bool = False
    #: A second artifact reported on the same rows under ``compare``.
    compare_dir: Path | None = None
    report_path: Path | None = None
    scores_path: Path | None = None
    assume_timezone: tzinfo | None = None


def training_end_ms(metadata: dict[str, Any]) -> int:
    """Where the artifact's training window ended (exclusive), in ms since the epoch."""
    window = metadata["training_window"]
    for key in ("train_end", "requested_to"):
        if window.get(key):
            return int(pd.Timestamp(window[key]).value // 1_000_000)
    return int(pd.Timestamp(window["validation_to"]).value // 1_000_000) + 1


def training_start_ms(metadata: dict[str, Any]) -> int | None:
    start = metadata["training_window"].get("train_from")
    return None if start is None else int(pd.Timestamp(start).value // 1_000_000)


def known_compromised(frame: pd.DataFrame, rows: np.ndarray, train_end_ms: int, delay_ms: int) -> np.ndarray:
    """Which of the ``rows`` (a mask) belong to a card known to be compromised before the row's UTC
    day began: a fraud before ``train_end_ms`` (trained on, so known), or a later fraud whose label
    was known by then (``labelled_ms``, else the transaction time plus ``delay_ms``)."""
    ts = frame["ts_ms"].to_numpy(dtype=np.int64)
    fraud = frame["is_fraud"].to_numpy() == 1
    labelled = frame["labelled_ms"].to_numpy(dtype=np.int64) if "labelled_ms" in frame else np.full(len(ts), -1)
    known_at = np.where(labelled >= 0, labelled, ts + delay_ms)
    known_at = np.where(ts < train_end_ms, np.minimum(known_at, train_end_ms), known_at)
    cards, _ = pd.factorize(frame["card_id"].to_numpy())
    first = np.full(int(cards.max()) + 1 if len(cards) else 0, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, cards[fraud], known_at[fraud])
    day_start = ts // DAY_MS * DAY_MS
    return rows & (first[cards] < day_start)


def _ceil_day(ms: int) -> int:
    return -(-ms // DAY_MS) * DAY_MS


def _iso(ms: int | None) -> str | None:
    return None if ms is None else pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()


def _scored(frame: pd.DataFrame, mask: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    return (
        frame.loc[mask, ["transaction_id", "card_id", "timestamp", "is_fraud"]]
        .reset_index(drop=True)
        .assign(score=scores)
    )


def _both(
    frame: pd.DataFrame, window: np.ndarray, removed: np.ndarray, scores: np.ndarray, t: Thresholds | None, k: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Plain metrics over the range, and the protocol's over its rows of cards not known compromised."""
    scored = _scored(frame, window, scores)
    plain = evaluation_report(scored, t, k) if t is not None else ranking_report(scored, k)
    kept = ~removed[window]
    if not kept.any():
        raise DatasetError("every row of the range belongs to a card known to be compromised")
    return plain, protocol_report(scored.loc[kept].reset_index(drop=True), t, k)


def _artifact_scores(scorer: Scorer, frame: pd.DataFrame, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    queries = frame.loc[window].reset_index(drop=True)
    # Rows before the range are history only; rows after it cannot influence the windows.
    scored = scorer.score_frame(
        queries, history_from_frame(frame), risk_context_from_frame(frame, scorer.label_delay_ms)
    )
    return scored.scores, scored.decisions


def resolve_range(metadata: dict[str, Any], options: EvaluateOptions, delay_ms: int) -> dict[str, Any]:
    """The test range: ``--from`` or else the training end plus the gap (at the next UTC midnight)."""
    train_end = training_end_ms(metadata)
    gap_ms = delay_ms if options.gap_days is None else round(options.gap_days * DAY_MS)
    start = options.start.value // 1_000_000 if options.start is not None else _ceil_day(train_end + gap_ms)
    end = options.end.value // 1_000_000 if options.end is not None else None
    notes = []
    if start < train_end:
        notes.append("the range starts inside the training window: metrics are optimistic")
    elif start < train_end + gap_ms:
        notes.append(f"the range starts {(start - train_end) / DAY_MS:.2f} days after training, less than the gap")
    return {
        "from": _iso(start),
        "to": _iso(end),
        "train_from": _iso(training_start_ms(metadata)),
        "train_end": _iso(train_end),
        "gap_days": gap_ms / DAY_MS,
        "actual_gap_days": (start - train_end) / DAY_MS,
        "label_delay_days": delay_ms / DAY_MS,
        "notes": notes,
        "_ms": (start, end, train_end),
    }


def _baseline(
    dataset: Dataset, window: np.ndarray, removed: np.ndarray, metadata: dict[str, Any], delay_days: float, k: int
) -> dict[str, Any]:
    frame = dataset.frame
    start = training_start_ms(metadata)
    fit = select_window(
        frame,
        None if start is None else pd.Timestamp(start, unit="ms", tz="UTC"),
        pd.Timestamp(training_end_ms(metadata), unit="ms", tz="UTC"),
    )
    y = dataset.labels
    if not fit.any() or y[fit].min() == y[fit].max():
        raise DatasetError("the textbook baseline needs the model's training window in the CSV, with both classes")
    started = time.perf_counter()
    scores = baseline_scores(baseline_features(frame, delay_days), y, fit, window)
    seconds = time.perf_counter() - started
    plain, protocol = _both(frame, window, removed, scores, None, k)
    return {
        "model": "random_forest_textbook",
        "fit_rows": int(fit.sum()),
        "fit_fraud": int(y[fit].sum()),
        "seconds": round(seconds, 2),  # features, fit and scoring
        **plain,
        "protocol": protocol,
    }


def evaluate(model_dir: Path, data: Path, options: EvaluateOptions) -> dict[str, Any]:
    """Score the test range with every earlier row as history (and the labels known before each
    row), plainly and under the delay protocol; optionally beside the textbook baseline and a
    second artifact. Writes the report and the scores when asked."""
    scorer = Scorer(load_artifact(model_dir))
    metadata = scorer.artifact.metadata
    dataset = load_csv(data, assume_timezone=options.assume_timezone)
    frame = dataset.frame
    span = resolve_range(metadata, options, scorer.label_delay_ms)
    start, end, train_end = span.pop("_ms")
    window = select_window(
        frame, pd.Timestamp(start, unit="ms", tz="UTC"), None if end is None else pd.Timestamp(end, unit="ms", tz="UTC")
    )
    if not window.any():
        raise DatasetError(f"{data}: no valid rows between {span['from']} and {span['to']}")
    removed = known_compromised(frame, window, train_end, scorer.label_delay_ms)
    scores, decisions = _artifact_scores(scorer, frame, window)
    plain, protocol = _both(frame, window, removed, scores, scorer.thresholds, options.k)
    report: dict[str, Any] = {
        **plain,
        "model_version": scorer.version,
        "model_type": metadata.get("model_type"),
        "disabled_features": list(metadata.get("disabled_features", [])),
        "protocol": {
            **protocol,
            "removed_known_compromised": {
                "cards": int(frame.loc[removed, "card_id"].nunique()),
                "transactions": int(removed.sum()),
                "fraud": int(dataset.labels[removed].sum()),
            },
        },
        "range": span,
        "data": {"file": str(data), **dataset.invalid.as_dict(), "warning": dataset.invalid.loud_warning(data)},
    }
    if options.baseline:
        report["baseline"] = _baseline(dataset, window, removed, metadata, scorer.label_delay_ms / DAY_MS, options.k)
    if options.compare_dir is not None:
        other = Scorer(load_artifact(options.compare_dir))
        other_scores, _ = _artifact_scores(other, frame, window)
        other_plain, other_protocol = _both(frame, window, removed, other_scores, other.thresholds, options.k)
        report["compare"] = {
            **other_plain,
            "protocol": other_protocol,
            "model_version": other.version,
            "model_type": other.artifact.metadata.get("model_type"),
            "disabled_features": list(other.artifact.metadata.get("disabled_features", [])),
        }
    _write(report, options, frame.loc[window, "transaction_id"].to_numpy(), scores, decisions)
    return report


def _write(
    report: dict[str, Any], options: EvaluateOptions, ids: np.ndarray, scores: np.ndarray, decisions: np.ndarray
) -> None:
    if options.report_path is not None:
        options.report_path.parent.mkdir(parents=True, exist_ok=True)
        options.report_path.write_text(json.dumps(report, indent=2, sort_keys=True))
    if options.scores_path is not None:
        options.scores_path.parent.mkdir(parents=True, exist_ok=True)
        out = pd.DataFrame({"transaction_id": ids, "score": scores, "decision": decisions})
        out.to_csv(options.scores_path, index=False, float_format="%.6f")


def _cell(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(name: str, r: dict[str, Any], k: int) -> str:
    at = r.get("at_threshold", {})
    pr = [
        f"{_cell(at[n]['precision'], 3)}/{_cell(at[n]['recall'], 3)}" if n in at else "-" for n in ("review", "block")
    ]
    return (
        f"{name:<36}{r['n_transactions']:>10}{r['n_fraud']:>7}{_cell(r['auc_roc']):>8}{_cell(r['average_precision']):>8}"
        f"{_cell(r[f'card_precision_at_{k}'], 3):>8}{pr[0]:>14}{pr[1]:>14}"
    )


def format_report(report: dict[str, Any], k: int = 100) -> str:
    """The printed table: every model plainly and under the delay protocol, one row each."""
    span = report["range"]
    removed = report["protocol"]["removed_known_compromised"]
    lines = [
        f"test range [{span['from']}, {span['to'] or 'end of data'}); trained until {span['train_end']}, "
        f"gap {span['actual_gap_days']:.2f} days (protocol: {span['gap_days']:g})",
        *(f"note: {n}" for n in span["notes"]),
        f"protocol: {removed['cards']} cards known to be compromised left out ({removed['transactions']} transactions, "
        f"{removed['fraud']} fraud); card precision@{k} per day with detected cards removed, divided by {k}",
        f"{'':<36}{'rows':>10}{'fraud':>7}{'AUC':>8}{'AP':>8}{f'CP@{k}':>8}{'review P/R':>14}{'block P/R':>14}",
    ]
    entries = [("model", report)]
    if "baseline" in report:
        entries.append(("textbook random forest", report["baseline"]))
    if "compare" in report:
        entries.append((f"compare {report['compare']['model_version'][:12]}", report["compare"]))
    for name, r in entries:
        lines.append(_row(f"{name} (all rows)", r, k))
        lines.append(_row(f"{name} (protocol)", r["protocol"], k))
    return "\n".join(lines)
