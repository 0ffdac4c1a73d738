"""Evaluation plots written as PNG files (matplotlib, headless Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import matplotlib
import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from model.metrics import Thresholds, _check_xy, _confusion

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_confusion", "plot_pr_curve"]


def _prepare(path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def plot_pr_curve(
    y_true: Iterable[int] | np.ndarray,
    scores: Iterable[float] | np.ndarray,
    thresholds: Thresholds,
    path: str | os.PathLike[str],
) -> Path:
    """Precision-recall curve with the review and block operating points; AP in the title.

    With a single class the curve is undefined: the figure says so and AP shows as n/a.
    Returns the written path (parent directories are created).
    """
    y, s = _check_xy(y_true, scores)
    out = _prepare(path)
    n_pos = int(y.sum())
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    try:
        if 0 < n_pos < y.size:
            precision, recall, _ = precision_recall_curve(y, s)
            ap = float(average_precision_score(y, s))
            ax.plot(recall, precision, drawstyle="steps-post", color="tab:blue", label="PR curve")
            ax.axhline(n_pos / y.size, color="grey", linestyle=":", label=f"fraud rate {n_pos / y.size:.3g}")
            title = f"Precision-recall curve (AP = {ap:.3f})"
        else:
            ax.text(0.5, 0.5, "PR curve undefined:\nonly one class present", ha="center", va="center")
            title = "Precision-recall curve (AP = n/a)"

        for name, value, marker, color in (
            ("review", thresholds.review, "o", "tab:orange"),
            ("block", thresholds.block, "s", "tab:red"),
        ):
            cm = _confusion(y, s >= value)
            flagged, positives = cm["tp"] + cm["fp"], cm["tp"] + cm["fn"]
            if flagged and positives:
                p, r = cm["tp"] / flagged, cm["tp"] / positives
                ax.plot(
                    r,
                    p,
                    marker=marker,
                    markersize=9,
                    linestyle="none",
                    color=color,
                    label=f"{name} >= {value:.3g} (P={p:.2f}, R={r:.2f})",
                )

        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("Recall")
        ax.set_ylabel("Precision")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left", fontsize="small")
        fig.tight_layout()
        fig.savefig(out, dpi=100, format="png")
    finally:
        plt.close(fig)
    return out


def plot_confusion(
    y_true: Iterable[int] | np.ndarray,
    scores: Iterable[float] | np.ndarray,
    thresholds: Thresholds,
    path: str | os.PathLike[str],
) -> Path:
    """Two confusion matrices side by side: flagged (score >= review) and block (score >= block).

    Rows are the true class (legit, fraud), columns the prediction (passed, flagged/blocked).
    Returns the written path (parent directories are created).
    """
    y, s = _check_xy(y_true, scores)
    out = _prepare(path)
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.4))
    try:
        for ax, (label, value) in zip(
            axes,
            (("flagged", thresholds.review), ("blocked", thresholds.block)),
            strict=True,
        ):
            cm = _confusion(y, s >= value)
            matrix = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
            ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
            for (row, col), count in np.ndenumerate(matrix):
                dark = count > matrix.max() / 2
                ax.text(col, row, str(count), ha="center", va="center", color="white" if dark else "black")
            ax.set_xticks([0, 1], labels=["passed", label])
            ax.set_yticks([0, 1], labels=["legit", "fraud"])
            ax.set_xlabel("Prediction")
            ax.set_ylabel("Actual")
            ax.set_title(f"{label} (score >= {value:.3g})")
        fig.tight_layout()
        fig.savefig(out, dpi=100, format="png")
    finally:
        plt.close(fig)
    return out
