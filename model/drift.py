"""Drift: how far the live distributions of the score and key features have moved from training.

Training stores, per signal, decile bin edges and the share of reference rows in each bin
(``drift_reference`` in the artifact metadata). The worker keeps the last N scored values per
signal and reports the population stability index (PSI) of that window against the reference:
< 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift (the usual reading).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.features import FEATURE_NAMES

#: Features watched for drift, besides the score itself.
DRIFT_FEATURES = ("amount", "card_tx_count_1d", "amount_to_card_mean_30d", "seconds_since_prev_card_tx")
SIGNALS = ("score", *DRIFT_FEATURES)
_BINS = 10
_EPS = 1e-4


def _reference_for(values: np.ndarray) -> dict[str, list[float]]:
    edges = np.unique(np.quantile(values, np.linspace(0, 1, _BINS + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return {"edges": edges.tolist(), "proportions": (counts / max(len(values), 1)).tolist()}


def build_reference(features: np.ndarray, scores: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """Reference bins for every signal: the score on validation rows, features on training rows."""
    ref = {"score": _reference_for(scores)}
    for name in DRIFT_FEATURES:
        ref[name] = _reference_for(features[:, FEATURE_NAMES.index(name)])
    return ref


def psi(reference: dict[str, list[float]], values: np.ndarray) -> float:
    """Population stability index of ``values`` against one signal's reference bins."""
    edges = np.asarray(reference["edges"], dtype=np.float64)
    expected = np.asarray(reference["proportions"], dtype=np.float64)
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(expected))
    actual = counts / max(len(values), 1)
    a, e = np.maximum(actual, _EPS), np.maximum(expected, _EPS)
    return float(np.sum((a - e) * np.log(a / e)))


class DriftMonitor:
    """Ring buffers of the last ``window`` values per signal; not thread-safe (one scoring thread)."""

    def __init__(self, reference: dict[str, Any] | None, window: int = 10_000, version: str = "") -> None:
        self.version = version
        self.reference = {k: v for k, v in (reference or {}).items() if k in SIGNALS}
        self.window = window
        self._buffers = {name: np.empty(window) for name in self.reference}
        self._next = 0
        self._filled = 0

    @property
    def enabled(self) -> bool:
        return bool(self.reference)

    @property
    def size(self) -> int:
        return self._filled

    def observe(self, features: np.ndarray, scores: np.ndarray) -> None:
        if not self.enabled or len(scores) == 0:
            return
        columns = {"score": scores, **{n: features[:, FEATURE_NAMES.index(n)] for n in DRIFT_FEATURES}}
        take = min(len(scores), self.window)
        idx = (self._next + np.arange(take)) % self.window
        for name, buf in self._buffers.items():
            buf[idx] = columns[name][-take:]
        self._next = int((self._next + take) % self.window)
        self._filled = min(self.window, self._filled + take)

    def values(self) -> dict[str, float]:
        """PSI per signal over the current window (empty until it holds any value)."""
        if not self._filled:
            return {}
        return {name: psi(self.reference[name], buf[: self._filled]) for name, buf in self._buffers.items()}
