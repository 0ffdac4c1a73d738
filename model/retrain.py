"""Retraining behind a promotion gate: a candidate trained on a recent window, compared with the
champion on the latest window whose labels have matured, on the same rows.

Time is the data's own: "now" is the newest transaction in it. Labels take up to the label delay
to arrive, so the evaluation window ends ``label_delay_days`` before now (``[now - delay -
eval_days, now - delay)``): its labels have matured, and a fraud counts only when its label was
known by now (``labelled_at`` <= now; rows without one are taken as labelled ``label_delay_days``
after the transaction, as in training). The candidate is trained on the ``train_days`` before the
evaluation window (every earlier row is history), so it never sees the rows it is judged on.

The gate: the candidate wins when its average precision beats the champion's by ``margin`` and its
recall at the champion's block precision target (the best recall either model reaches at that
precision on the window) is not lower than the champion's. Without a champion the candidate wins;
without labelled fraud in the window nothing can be judged and it does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve

from model.dataset import DatasetError, load_csv
from model.features import DAY_MS, history_from_frame, risk_context_from_frame
from model.metrics import threshold_report
from model.scoring import Scorer
from model.train import ModelType, TrainOptions, train

PROMOTE, KEEP = "promote", "challenger"


@dataclass(frozen=True)
class RetrainOptions:
    label_delay_days: float = 7.0
    eval_days: float = 7.0
    train_days: float = 21.0
    #: Average precision the candidate must gain over the champion.
    margin: float = 0.01
    model_type: ModelType = "hgb"
    seed: int = 7


@dataclass(frozen=True)
class Windows:
    now_ms: int
    train_from_ms: int
    eval_from_ms: int
    eval_to_ms: int

    def as_dict(self) -> dict[str, str]:
        return {k.removesuffix("_ms"): _iso(v) for k, v in asdict(self).items()}


def windows(frame: pd.DataFrame, options: RetrainOptions) -> Windows:
    now = int(frame["ts_ms"].max())
    eval_to = now - round(options.label_delay_days * DAY_MS)
    eval_from = eval_to - round(options.eval_days * DAY_MS)
    train_from = eval_from - round(options.train_days * DAY_MS)
    if eval_from <= int(frame["ts_ms"].min()):
        span = (now - int(frame["ts_ms"].min())) / DAY_MS
        raise DatasetError(
            f"the data spans {span:.1f} days: too short for a {options.eval_days:g}-day evaluation window "
            f"after a {options.label_delay_days:g}-day label delay, with training days before it"
        )
    return Windows(now, train_from, eval_from, eval_to)


def train_candidate(data: Path, out: Path, w: Windows, options: RetrainOptions) -> dict[str, Any]:
    """Train the candidate on ``[train_from, eval_from)``; returns its metadata."""
    return train(
        data,
        out,
        TrainOptions(
            model_type=options.model_type,
            train_from=pd.Timestamp(w.train_from_ms, unit="ms", tz="UTC"),
            train_to=pd.Timestamp(w.eval_from_ms, unit="ms", tz="UTC"),
            seed=options.seed,
            label_delay_days=options.label_delay_days,
        ),
    )


def recall_at_precision(y: np.ndarray, scores: np.ndarray, precision: float) -> float:
    """The highest recall at any threshold whose precision reaches ``precision``."""
    p, r, _ = precision_recall_curve(y, scores)
    ok = p >= precision - 1e-12
    return float(r[ok].max()) if ok.any() else 0.0


def matured_labels(frame: pd.DataFrame, w: Windows, options: RetrainOptions) -> np.ndarray:
    """Fraud as known at ``now``: a label that arrived later does not count yet."""
    labelled = frame["labelled_ms"].to_numpy()
    assumed = frame["ts_ms"].to_numpy() + round(options.label_delay_days * DAY_MS)
    known_at = np.where(labelled >= 0, labelled, assumed)
    return (frame["is_fraud"].to_numpy() == 1) & (known_at <= w.now_ms)


def score_window(scorer: Scorer, frame: pd.DataFrame, mask: np.ndarray) -> np.ndarray:
    """Scores of the window's rows, every earlier row as history (as ``fraud evaluate``)."""
    queries = frame.loc[mask].reset_index(drop=True)
    risk = risk_context_from_frame(frame, scorer.label_delay_ms)
    return scorer.score_frame(queries, history_from_frame(frame), risk).scores


def compare(
    data: Path, candidate: Scorer, champion: Scorer | None, w: Windows, options: RetrainOptions
) -> dict[str, Any]:
    """The gate: both models on the evaluation window's rows, and the verdict with its reasons."""
    frame = load_csv(data).frame
    mask = (frame["ts_ms"].to_numpy() >= w.eval_from_ms) & (frame["ts_ms"].to_numpy() < w.eval_to_ms)
    y = matured_labels(frame, w, options)[mask].astype(np.int64)
    report: dict[str, Any] = {
        "windows": w.as_dict(),
        "eval_rows": int(mask.sum()),
        "eval_fraud": int(y.sum()),
        "margin": options.margin,
    }
    target = float((champion or candidate).artifact.metadata.get("threshold_targets", {}).get("block_precision", 0.8))
    report["block_precision_target"] = target
    for role, scorer in (("candidate", candidate), ("champion", champion)):
        if scorer is None or not 0 < y.sum() < len(y):
            continue
        scores = score_window(scorer, frame, mask)
        block = threshold_report(y, scores, scorer.thresholds)["block"]
        report[role] = {
            "model_version": scorer.version,
            "average_precision": float(average_precision_score(y, scores)),
            "recall_at_block_precision": recall_at_precision(y, scores, target),
            "block_threshold_precision": block["precision"],
            "block_threshold_recall": block["recall"],
        }
    report["verdict"], report["reasons"] = verdict(report, champion is not None, options.margin)
    return report


def verdict(report: dict[str, Any], has_champion: bool, margin: float) -> tuple[str, list[str]]:
    if not 0 < report["eval_fraud"] < report["eval_rows"]:
        return KEEP, [f"the matured window has {report['eval_fraud']} labelled fraud in {report['eval_rows']} rows"]
    if not has_champion:
        return PROMOTE, ["no champion yet"]
    cand, champ = report["candidate"], report["champion"]
    reasons = []
    gain = cand["average_precision"] - champ["average_precision"]
    ap_ok = gain >= margin
    reasons.append(
        f"average precision {cand['average_precision']:.4f} vs {champ['average_precision']:.4f} "
        f"({gain:+.4f}, needs {margin:+.4f})"
    )
    recall_ok = cand["recall_at_block_precision"] >= champ["recall_at_block_precision"]
    reasons.append(
        f"recall at precision {report['block_precision_target']:g}: "
        f"{cand['recall_at_block_precision']:.4f} vs {champ['recall_at_block_precision']:.4f}"
    )
    return (PROMOTE if ap_ok and recall_ok else KEEP), reasons


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()
