"""The textbook baseline: a random forest over the 15 standard features of the card-fraud handbook.

Le Borgne et al., *Reproducible Machine Learning for Credit Card Fraud Detection* (chapter 3):
the amount; whether the transaction is at night or on a weekend; the card's transaction count and
mean amount over 1, 7 and 30 days; the terminal's (merchant's) transaction count and fraud rate
over 1, 7 and 30 days, ending a label delay D before the transaction. It is computed here from
the CSV, point in time, independently of ``model.features``: its purpose is to show when the
project's model falls below a textbook one on the same split.

* Card windows are ``(t - n, t]`` and include the transaction itself, in file order among equal
  timestamps (as the handbook's rolling windows do).
* Terminal windows are ``[t - D - n, t - D)``: the frauds among them are assumed known after D
  (the handbook's assumption; ``labelled_at`` is not read).
* Night is a local hour <= 6, weekend a local Saturday or Sunday.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier

from model.features import DAY_MS, HOUR_MS

_WINDOWS_DAYS = (1, 7, 30)
BASELINE_FEATURES: tuple[str, ...] = (
    "amount",
    "is_weekend",
    "is_night",
    *(f"card_{kind}_{n}d" for n in _WINDOWS_DAYS for kind in ("tx_count", "amount_mean")),
    *(f"terminal_{kind}_{n}d" for n in _WINDOWS_DAYS for kind in ("tx_count", "fraud_rate")),
)
#: Rows each tree of the forest is grown on, at most: keeps a million-row fit within seconds
#: per tree on two cores (the handbook's week of data is ~60,000 rows, well below it).
MAX_SAMPLES_PER_TREE = 100_000


def _group_codes(values: np.ndarray) -> np.ndarray:
    codes, _ = pd.factorize(values, sort=False)
    return codes.astype(np.int64)


def _sorted_by_group(groups: np.ndarray, ts: np.ndarray, reach_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable order by (group, time) and the packed sorted keys; a key minus up to ``reach_ms``
    stays inside its group's block."""
    origin = int(ts.min()) - reach_ms - 1
    keys = groups * (int(ts.max()) - origin + 1) + (ts - origin)
    order = np.argsort(keys, kind="stable")
    return order, keys[order]


def _card_features(cards: np.ndarray, ts: np.ndarray, amount: np.ndarray) -> np.ndarray:
    order, keys = _sorted_by_group(cards, ts, max(_WINDOWS_DAYS) * DAY_MS)
    csum = np.concatenate(([0.0], np.cumsum(amount[order])))
    position = np.arange(len(order))
    out = np.empty((len(ts), 2 * len(_WINDOWS_DAYS)))
    for j, n in enumerate(_WINDOWS_DAYS):
        lo = np.searchsorted(keys, keys - n * DAY_MS, side="right")  # (t - n, t]
        hi = position + 1  # up to and including the row itself
        count = hi - lo
        out[order, 2 * j] = count
        out[order, 2 * j + 1] = (csum[hi] - csum[lo]) / count
    return out


def _terminal_features(terminals: np.ndarray, ts: np.ndarray, fraud: np.ndarray, delay_days: float) -> np.ndarray:
    delay_ms = round(delay_days * DAY_MS)
    order, keys = _sorted_by_group(terminals, ts, delay_ms + max(_WINDOWS_DAYS) * DAY_MS)
    fsum = np.concatenate(([0], np.cumsum(fraud[order])))
    end = keys - delay_ms
    hi = np.searchsorted(keys, end, side="left")  # [.., t - D)
    out = np.empty((len(ts), 2 * len(_WINDOWS_DAYS)))
    for j, n in enumerate(_WINDOWS_DAYS):
        lo = np.searchsorted(keys, end - n * DAY_MS, side="left")  # [t - D - n, ..
        count = hi - lo
        frauds = fsum[hi] - fsum[lo]
        out[order, 2 * j] = count
        out[order, 2 * j + 1] = np.divide(frauds, count, out=np.zeros(len(ts)), where=count > 0)
    return out


def baseline_features(frame: pd.DataFrame, delay_days: float = 7.0) -> np.ndarray:
    """The 15 features (:data:`BASELINE_FEATURES`) of every row of a canonical frame (with
    ``is_fraud``), each from the rows before it in time only (and, for its card, itself)."""
    ts = frame["ts_ms"].to_numpy(dtype=np.int64)
    amount = frame["amount"].to_numpy(dtype=np.float64)
    local = ts + frame["utc_offset_min"].to_numpy(dtype=np.int64) * 60_000
    hour = (local // HOUR_MS) % 24
    weekday = (local // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday
    cards = _group_codes(frame["card_id"].to_numpy())
    terminals = _group_codes(frame["merchant_id"].to_numpy())
    fraud = frame["is_fraud"].to_numpy(dtype=np.int64)
    return np.column_stack(
        [
            amount,
            weekday >= 5,
            hour <= 6,
            _card_features(cards, ts, amount),
            _terminal_features(terminals, ts, fraud, delay_days),
        ]
    ).astype(np.float64)


def build_baseline(n_rows: int, seed: int = 0) -> RandomForestClassifier:
    """The handbook's forest (100 unpruned trees, scikit-learn defaults), each tree grown on at
    most :data:`MAX_SAMPLES_PER_TREE` rows."""
    return RandomForestClassifier(
        n_estimators=100,
        max_samples=min(1.0, MAX_SAMPLES_PER_TREE / max(n_rows, 1)),
        n_jobs=-1,
        random_state=seed,
    )


def baseline_scores(
    features: np.ndarray, y: np.ndarray, fit: np.ndarray, score: np.ndarray, seed: int = 0
) -> np.ndarray:
    """Fit the baseline on the ``fit`` rows and score the ``score`` rows (boolean masks)."""
    model = build_baseline(int(fit.sum()), seed).fit(features[fit], y[fit])
    proba = model.predict_proba(features[score])
    # A fit set of one class only has one column: every score is that class's.
    return proba[:, 1] if proba.shape[1] == 2 else np.full(int(score.sum()), float(model.classes_[0]))
