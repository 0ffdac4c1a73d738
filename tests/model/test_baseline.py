"""The textbook baseline's 15 features, point in time, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from model.baseline import BASELINE_FEATURES, baseline_features, baseline_scores
from model.features import HOUR_MS

T0 = pd.Timestamp("2026-01-05T12:00:00Z").value // 1_000_000  # a Monday


def frame(rows: list[tuple[str, str, float, float, int]], offset_min: int = 0) -> pd.DataFrame:
    """rows: (card, terminal, hours after T0, amount, is_fraud), in time order."""
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(len(rows))],
            "card_id": [r[0] for r in rows],
            "merchant_id": [r[1] for r in rows],
            "ts_ms": [T0 + round(r[2] * HOUR_MS) for r in rows],
            "utc_offset_min": offset_min,
            "amount": [r[3] for r in rows],
            "is_fraud": [r[4] for r in rows],
        }
    )


def col(x: np.ndarray, name: str) -> np.ndarray:
    return x[:, BASELINE_FEATURES.index(name)]


def test_fifteen_named_features() -> None:
    assert len(BASELINE_FEATURES) == 15
    assert BASELINE_FEATURES[:3] == ("amount", "is_weekend", "is_night")


def test_card_windows_include_the_transaction_itself() -> None:
    f = frame(
        [
            ("c1", "m1", 0.0, 10.0, 0),
            ("c2", "m1", 1.0, 99.0, 0),  # another card: never counted for c1
            ("c1", "m1", 23.0, 20.0, 0),  # 23 h later: same 1-day window
            ("c1", "m1", 24.0, 30.0, 0),  # exactly a day after the first: (t - 1d, t] leaves it out
            ("c1", "m1", 24.0 * 8, 40.0, 0),  # 8 days on: only the 30-day window reaches back
        ]
    )
    x = baseline_features(f)
    assert col(x, "card_tx_count_1d").tolist() == [1, 1, 2, 2, 1]
    assert col(x, "card_amount_mean_1d").tolist() == [10, 99, 15, 25, 40]
    assert col(x, "card_tx_count_7d").tolist() == [1, 1, 2, 3, 1]
    assert col(x, "card_tx_count_30d").tolist() == [1, 1, 2, 3, 4]
    assert col(x, "card_amount_mean_30d")[-1] == pytest.approx(25.0)


def test_terminal_rates_end_a_delay_before_the_transaction() -> None:
    day = 24.0
    f = frame(
        [
            ("c1", "m1", 0.0, 10.0, 1),
            ("c2", "m1", 0.5 * day, 10.0, 0),
            ("c3", "m2", 1.0 * day, 10.0, 1),  # another terminal
            ("c6", "m1", 6.9 * day, 10.0, 0),  # [-1.1d, -0.1d): nothing known yet
            ("c4", "m1", 7.25 * day, 10.0, 0),  # [-0.75d, 0.25d): the fraud
            ("c5", "m1", 8.0 * day, 10.0, 0),  # [0, 1d): the fraud (start included) and the sale
            ("c7", "m1", 8.2 * day, 10.0, 0),  # [0.2d, 1.2d): the sale only
            ("c8", "m1", 7.0 * day, 10.0, 0),  # [-1d, 0): the fraud at 0 is the excluded end
        ]
    )
    f = f.sort_values("ts_ms", kind="stable").reset_index(drop=True)
    x = baseline_features(f, delay_days=7)
    row = dict(zip(f["card_id"], range(len(f)), strict=True))

    def at(card: str, name: str) -> float:
        return float(col(x, name)[row[card]])

    assert (at("c4", "terminal_tx_count_1d"), at("c4", "terminal_fraud_rate_1d")) == (1, 1.0)
    assert (at("c5", "terminal_tx_count_1d"), at("c5", "terminal_fraud_rate_1d")) == (2, 0.5)
    assert (at("c7", "terminal_tx_count_1d"), at("c7", "terminal_fraud_rate_1d")) == (1, 0.0)
    assert (at("c8", "terminal_tx_count_1d"), at("c8", "terminal_tx_count_7d")) == (0, 0)
    assert at("c7", "terminal_tx_count_7d") == 2 and at("c7", "terminal_fraud_rate_7d") == 0.5
    assert at("c6", "terminal_tx_count_30d") == 0 and at("c6", "terminal_fraud_rate_30d") == 0.0
    # A fraud's label never reaches its own row, nor another terminal's.
    assert at("c1", "terminal_fraud_rate_30d") == 0.0
    assert at("c3", "terminal_tx_count_30d") == 0


def test_night_and_weekend_in_local_time() -> None:
    hours = [0.0, 17.0, 108.0, 132.0]  # Mon 12:00, Tue 05:00, Sat 00:00, Sun 00:00 (UTC)
    x = baseline_features(frame([("c1", "m1", h, 1.0, 0) for h in hours]))
    assert col(x, "is_night").tolist() == [0, 1, 1, 1]
    assert col(x, "is_weekend").tolist() == [0, 0, 1, 1]
    # At UTC-13:00 the same instants are Sun 23:00, Mon 16:00, Fri 11:00 and Sat 11:00.
    west = baseline_features(frame([("c1", "m1", h, 1.0, 0) for h in hours], offset_min=-13 * 60))
    assert col(west, "is_weekend").tolist() == [1, 0, 0, 1]
    assert col(west, "is_night").tolist() == [0, 0, 0, 0]


def test_baseline_learns_a_planted_pattern() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    amount = rng.lognormal(3, 0.5, n)
    fraud = (rng.random(n) < 0.05).astype(int)
    amount[fraud == 1] *= 8  # frauds are large
    f = frame(
        [(f"c{i % 300}", f"m{i % 40}", i * 0.5, a, y) for i, (a, y) in enumerate(zip(amount, fraud, strict=True))]
    )
    x = baseline_features(f)
    fit = np.arange(n) < 3000
    scores = baseline_scores(x, f["is_fraud"].to_numpy(), fit, ~fit)
    assert scores.shape == (1000,)
    test_y = fraud[~fit]
    assert scores[test_y == 1].mean() > 3 * scores[test_y == 0].mean()
    assert (x[:, BASELINE_FEATURES.index("card_tx_count_30d")] >= 1).all()
    assert np.isfinite(x).all()
