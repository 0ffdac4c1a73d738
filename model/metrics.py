"""Offline evaluation of fraud scores: operating thresholds, decisions and reports.

Everything here is a pure function over numpy arrays / pandas frames. Labels are binary
(1 = fraud); scores are finite floats where higher means more likely fraud. A transaction is
*flagged* at a threshold when ``score >= threshold`` (a score equal to the threshold is flagged).

All report values are plain Python ``int`` / ``float`` / ``None`` so that ``json.dumps`` works.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

__all__ = [
    "OUTCOMES",
    "Thresholds",
    "card_precision_at_k",
    "card_precision_top_k",
    "decide",
    "evaluation_report",
    "pick_thresholds",
    "protocol_report",
    "ranking_report",
    "threshold_report",
]

#: Decision outcomes in increasing order of severity (same literals as ``schemas.Outcome``).
OUTCOMES: tuple[str, ...] = ("allow", "review", "block")

#: Columns ``card_precision_at_k`` and ``evaluation_report`` need.
REQUIRED_COLUMNS: tuple[str, ...] = ("card_id", "timestamp", "is_fraud", "score")

# Tolerance for comparing a computed precision/recall against a target (4/5 vs 0.8 and the like).
_EPS = 1e-12


@dataclass(frozen=True)
class Thresholds:
    """Operating thresholds: ``score >= block`` -> block, else ``score >= review`` -> review, else allow.

    ``notes`` explains any fallback taken by :func:`pick_thresholds` (empty when every target was met).
    Values are coerced to ``float`` / ``tuple[str, ...]``; ``NaN`` or ``block < review`` raise ``ValueError``.
    """

    review: float
    block: float
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        review, block = float(self.review), float(self.block)
        if math.isnan(review) or math.isnan(block):
            raise ValueError(f"thresholds must not be NaN (review={review}, block={block})")
        if block < review:
            raise ValueError(f"block threshold {block} is below review threshold {review}")
        object.__setattr__(self, "review", review)
        object.__setattr__(self, "block", block)
        object.__setattr__(self, "notes", tuple(str(n) for n in self.notes))


# --------------------------------------------------------------------------------------------
# input checking helpers


def _check_labels(y_true: Any, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"{name} is empty")
    if y.dtype == bool:
        return y.astype(np.int64)
    try:
        yf = y.astype(float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must contain only 0/1 (or booleans)") from exc
    if not np.isin(yf, (0.0, 1.0)).all():
        raise ValueError(f"{name} must contain only 0/1 (or booleans)")
    return yf.astype(np.int64)


def _check_scores(scores: Any, name: str = "scores") -> np.ndarray:
    try:
        s = np.asarray(scores, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric") from exc
    if s.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {s.shape}")
    if s.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} must be finite (found NaN or infinity)")
    return s


def _check_xy(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _check_labels(y_true)
    s = _check_scores(scores)
    if y.shape != s.shape:
        raise ValueError(f"y_true and scores differ in length: {y.size} != {s.size}")
    return y, s


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return value


def _check_frame(frame: pd.DataFrame) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"frame is missing columns: {', '.join(missing)}")
    if frame.empty:
        raise ValueError("frame is empty")
    if frame["card_id"].isna().any():
        raise ValueError("card_id has missing values")


def _utc_timestamps(col: pd.Series) -> pd.Series:
    """Timestamps as tz-aware UTC. tz-aware values are converted; naive ones are taken as UTC."""
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        ts = col.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(col):
        ts = col.dt.tz_localize("UTC")
    else:
        ts = pd.to_datetime(col, utc=True, format="ISO8601")
    if ts.isna().any():
        raise ValueError("timestamp has missing values")
    return ts


def _confusion(y: np.ndarray, flagged: np.ndarray) -> dict[str, int]:
    pos = y == 1
    return {
        "tp": int(np.sum(flagged & pos)),
        "fp": int(np.sum(flagged & ~pos)),
        "fn": int(np.sum(~flagged & pos)),
        "tn": int(np.sum(~flagged & ~pos)),
    }


def _fmt(x: float) -> str:
    return f"{x:.6g}"


# --------------------------------------------------------------------------------------------
# thresholds and decisions


def pick_thresholds(
    y_true: Iterable[int] | np.ndarray,
    scores: Iterable[float] | np.ndarray,
    *,
    block_precision: float = 0.8,
    review_precision: float = 0.3,
    min_review_recall: float | None = None,
) -> Thresholds:
    """Choose review/block thresholds from the precision-recall curve of validation data.

    Candidate thresholds are the distinct observed scores (flagged = ``score >= threshold``).

    * ``block``: the lowest threshold whose precision >= ``block_precision`` -- i.e. the highest
      recall at that precision. If no threshold reaches it, the threshold maximising F1 (highest
      such threshold on ties).
    * ``review``: the lowest threshold whose precision >= ``review_precision``, capped at ``block``.
      If no threshold reaches it, ``review = block``.
    * ``min_review_recall`` (optional): a recall floor for ``review``. If the review threshold
      chosen above catches less than this share of the fraud, it is lowered to the highest threshold
      that does (the floor wins over ``review_precision``). Never raises ``review`` or moves ``block``.

    Degenerate data: with no positive labels both thresholds are set just above the highest score
    (nothing in this data would be flagged); with constant scores the only candidate is that score.
    Every fallback is explained in ``Thresholds.notes``.

    Raises ``ValueError`` for empty or mismatched inputs, non-binary labels, non-finite scores, or
    targets outside (0, 1] (``min_review_recall`` may be in [0, 1]).
    """
    y, s = _check_xy(y_true, scores)
    block_precision = _check_fraction("block_precision", block_precision)
    review_precision = _check_fraction("review_precision", review_precision)
    if min_review_recall is not None:
        min_review_recall = float(min_review_recall)
        if not 0.0 <= min_review_recall <= 1.0:
            raise ValueError(f"min_review_recall must be in [0, 1], got {min_review_recall}")

    notes: list[str] = []
    if y.sum() == 0:
        above = float(np.nextafter(s.max(), np.inf))
        notes.append(
            "no fraud labels in the data: precision targets cannot be evaluated; both thresholds set "
            f"just above the highest score ({_fmt(above)}), so nothing in this data is flagged"
        )
        return Thresholds(review=above, block=above, notes=tuple(notes))
    if y.min() == 0 and s.min() == s.max():
        notes.append(f"all scores are equal ({_fmt(s[0])}): thresholds cannot separate fraud from legit")

    precision, recall, thr = precision_recall_curve(y, s, drop_intermediate=False)
    # sklearn appends (precision=1, recall=0) without a threshold; thr is increasing.
    precision, recall = precision[:-1], recall[:-1]

    # block
    ok = np.flatnonzero(precision >= block_precision - _EPS)
    if ok.size:
        i_block = int(ok[0])
    else:
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
        i_block = int(np.flatnonzero(f1 >= f1.max() - _EPS)[-1])
        notes.append(
            f"block_precision {block_precision:g} not reached (best precision {precision.max():.4g}); "
            f"block set to the F1-maximising threshold {_fmt(thr[i_block])} "
            f"(precision {precision[i_block]:.4g}, recall {recall[i_block]:.4g})"
        )

    # review
    ok = np.flatnonzero(precision >= review_precision - _EPS)
    if ok.size:
        i_review = int(ok[0])
        if i_review > i_block:
            notes.append(
                f"lowest threshold reaching review_precision {review_precision:g} "
                f"({_fmt(thr[i_review])}) is above block; review capped at block"
            )
            i_review = i_block
    else:
        i_review = i_block
        notes.append(
            f"review_precision {review_precision:g} not reached (best precision {precision.max():.4g}); "
            "review set to block"
        )

    if min_review_recall is not None and recall[i_review] < min_review_recall - _EPS:
        i_floor = int(np.flatnonzero(recall >= min_review_recall - _EPS)[-1])
        notes.append(
            f"review threshold {_fmt(thr[i_review])} has recall {recall[i_review]:.4g} < "
            f"min_review_recall {min_review_recall:g}; review lowered to {_fmt(thr[i_floor])} "
            f"(precision {precision[i_floor]:.4g}, recall {recall[i_floor]:.4g})"
        )
        i_review = i_floor

    return Thresholds(review=float(thr[i_review]), block=float(thr[i_block]), notes=tuple(notes))


def decide(scores: Iterable[float] | np.ndarray, t: Thresholds) -> np.ndarray:
    """Map scores to ``"allow"`` / ``"review"`` / ``"block"`` (a ``<U6`` array of the same shape).

    ``score >= t.block`` -> block; else ``score >= t.review`` -> review; else allow.
    Raises ``ValueError`` on NaN scores (they would otherwise silently be allowed).
    """
    s = np.asarray(scores, dtype=float)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    out = np.full(s.shape, "allow", dtype="<U6")
    out[s >= t.review] = "review"
    out[s >= t.block] = "block"
    return out


# --------------------------------------------------------------------------------------------
# reports


def _card_days(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Checked inputs as one row per UTC day and card (its highest score, fraud if any
    transaction was), sorted by day and card."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    _check_frame(frame)
    y = _check_labels(frame["is_fraud"].to_numpy(), "is_fraud")
    s = _check_scores(frame["score"].to_numpy(), "score")
    ts = _utc_timestamps(frame["timestamp"])
    df = pd.DataFrame({"day": ts.dt.floor("D").to_numpy(), "card": frame["card_id"].to_numpy(), "score": s, "fraud": y})
    return df.groupby(["day", "card"], sort=True).agg(score=("score", "max"), fraud=("fraud", "max")).reset_index()


def card_precision_at_k(frame: pd.DataFrame, k: int = 100) -> float:
    """Daily card precision top-k, averaged over days (Le Borgne et al., "card precision top-k").

    ``frame`` has columns ``card_id``, ``timestamp`` (tz-aware datetime64, or ISO-8601 strings /
    datetimes with offsets; naive values are taken as UTC), ``is_fraud`` (0/1) and ``score``.
    For each UTC calendar day: each card's score is its maximum score that day and it counts as
    fraudulent if any of its transactions that day is fraud; the ``k`` highest-scoring cards are
    taken (ties broken by ``card_id``; days with fewer than ``k`` cards use all of them) and the
    day's value is the share of those cards that are fraudulent. Returns the unweighted mean over days.

    Unlike the handbook implementation, the divisor on a short day is its number of cards (not
    ``k``), and cards already found compromised on earlier days are not removed.
    """
    per_card = _card_days(frame, k).sort_values(
        ["day", "score", "card"], ascending=[True, False, True], kind="mergesort"
    )
    top = per_card.groupby("day", sort=True).head(int(k))
    daily = top.groupby("day", sort=True)["fraud"].mean()
    return float(daily.mean())


def threshold_report(
    y_true: Iterable[int] | np.ndarray, scores: Iterable[float] | np.ndarray, t: Thresholds
) -> dict[str, dict[str, Any]]:
    """Metrics at each threshold, keyed ``"review"`` and ``"block"``.

    Each entry: ``threshold``, ``flagged`` (count with ``score >= threshold``; for ``review`` that
    includes blocked ones), ``precision`` (``None`` if nothing flagged), ``recall`` (``None`` if no
    fraud), and ``tp``, ``fp``, ``fn``, ``tn``.
    """
    y, s = _check_xy(y_true, scores)
    report: dict[str, dict[str, Any]] = {}
    for name, value in (("review", t.review), ("block", t.block)):
        cm = _confusion(y, s >= value)
        flagged = cm["tp"] + cm["fp"]
        positives = cm["tp"] + cm["fn"]
        report[name] = {
            "threshold": float(value),
            "flagged": flagged,
            "precision": cm["tp"] / flagged if flagged else None,
            "recall": cm["tp"] / positives if positives else None,
            **cm,
        }
    return report


def card_precision_top_k(frame: pd.DataFrame, k: int = 100) -> dict[str, Any]:
    """The handbook's daily card precision top-k (Le Borgne et al., chapter 4), detected cards removed.

    ``frame`` as for :func:`card_precision_at_k`. UTC days are taken in order; a card found
    compromised on a day (among that day's ``k`` highest-scoring cards, and fraudulent) is removed
    from every later day, since investigators already know it. A day's value is the number of
    such cards divided by ``k`` (also on a day with fewer cards, as the handbook does). Returns
    ``{"k", "mean", "per_day": [{"day", "cards", "fraud_cards", "detected", "precision"}]}``.
    """
    per_card = _card_days(frame, k)
    detected: set[Any] = set()
    days = []
    for day, cards in per_card.groupby("day", sort=True):
        cards = cards.loc[~cards["card"].isin(detected)]
        top = cards.sort_values(["score", "card"], ascending=[False, True], kind="mergesort").head(int(k))
        found = top.loc[top["fraud"] == 1, "card"]
        detected.update(found)
        days.append(
            {
                "day": pd.Timestamp(day).date().isoformat(),
                "cards": len(cards),
                "fraud_cards": int(cards["fraud"].sum()),
                "detected": len(found),
                "precision": len(found) / int(k),
            }
        )
    return {"k": int(k), "mean": float(np.mean([d["precision"] for d in days])), "per_day": days}


def ranking_report(frame: pd.DataFrame, k: int = 100) -> dict[str, Any]:
    """Threshold-free metrics of scored transactions (columns as for :func:`card_precision_at_k`):
    ``n_transactions``, ``n_fraud``, ``fraud_rate``, ``n_cards``, ``auc_roc``, ``average_precision``
    (both ``None`` when only one class is present) and ``card_precision_at_{k}``."""
    _check_frame(frame)
    y = _check_labels(frame["is_fraud"].to_numpy(), "is_fraud")
    s = _check_scores(frame["score"].to_numpy(), "score")
    n_fraud = int(y.sum())
    both_classes = 0 < n_fraud < y.size
    return {
        "n_transactions": int(y.size),
        "n_fraud": n_fraud,
        "fraud_rate": n_fraud / y.size,
        "n_cards": int(frame["card_id"].nunique()),
        "auc_roc": float(roc_auc_score(y, s)) if both_classes else None,
        "average_precision": float(average_precision_score(y, s)) if both_classes else None,
        f"card_precision_at_{k}": card_precision_at_k(frame, k),
    }


def protocol_report(frame: pd.DataFrame, t: Thresholds | None = None, k: int = 100) -> dict[str, Any]:
    """Metrics under the delay protocol, on rows the caller already cleared of cards known to be
    compromised: :func:`ranking_report`, with ``card_precision_at_{k}`` the handbook's
    (:func:`card_precision_top_k`: detected cards removed from later days, divisor ``k``), its
    ``card_precision_per_day``, and with thresholds their ``at_threshold`` (:func:`threshold_report`)."""
    report = ranking_report(frame, k)
    daily = card_precision_top_k(frame, k)
    report[f"card_precision_at_{k}"] = daily["mean"]
    report["card_precision_per_day"] = daily["per_day"]
    if t is not None:
        report["at_threshold"] = threshold_report(frame["is_fraud"].to_numpy(), frame["score"].to_numpy(), t)
    return report


def evaluation_report(frame: pd.DataFrame, t: Thresholds, k: int = 100) -> dict[str, Any]:
    """JSON-ready evaluation of scored transactions (columns as for :func:`card_precision_at_k`).

    Keys: those of :func:`ranking_report` (``card_precision_at_{k}`` from :func:`card_precision_at_k`),
    ``thresholds`` {review, block}, ``threshold_notes`` (list of str), ``at_threshold``
    (:func:`threshold_report`), ``decision_counts`` {allow, review, block} and ``confusion``
    {``flagged``: score >= review (review or block), ``block``: score >= block}, each {tp, fp, fn, tn}.
    """
    report = ranking_report(frame, k)
    y = _check_labels(frame["is_fraud"].to_numpy(), "is_fraud")
    s = _check_scores(frame["score"].to_numpy(), "score")
    decisions = decide(s, t)
    return {
        **report,
        "thresholds": {"review": t.review, "block": t.block},
        "threshold_notes": list(t.notes),
        "at_threshold": threshold_report(y, s, t),
        "decision_counts": {name: int(np.sum(decisions == name)) for name in OUTCOMES},
        "confusion": {
            "flagged": _confusion(y, s >= t.review),
            "block": _confusion(y, s >= t.block),
        },
    }
