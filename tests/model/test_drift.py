"""Drift PSI: about zero on the training distribution, large once a signal has moved."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pytest

from model.dataset import load_csv
from model.drift import DRIFT_FEATURES, SIGNALS, DriftMonitor, build_reference, psi
from model.features import FEATURE_NAMES
from model.train import features_for
from producers.synthetic import SimConfig, generate

STABLE, LARGE = 0.02, 0.25  # PSI: < 0.1 reads as stable, > 0.25 as a large shift


@pytest.fixture(scope="module")
def halves(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Real feature rows (and scores) split at random into a training half and a live half drawn
    from the same distribution: rows after the first week, when card windows are filled."""
    frame = generate(SimConfig(seed=3, n_cards=400, n_merchants=60, days=21, start=datetime(2026, 1, 1, tzinfo=UTC)))
    path = tmp_path_factory.mktemp("drift") / "data.csv"
    frame.to_csv(path, index=False)  # read back as training reads it
    canonical = load_csv(path).frame
    x = features_for(canonical)
    x = x[canonical["ts_ms"].to_numpy() >= canonical["ts_ms"].min() + 7 * 86_400_000]
    rng = np.random.default_rng(0)
    scores = rng.beta(0.5, 8.0, len(x))
    pick = rng.permutation(len(x))
    a, b = pick[: len(x) // 2], pick[len(x) // 2 :]
    return x[a], scores[a], x[b], scores[b]


def _col(name: str) -> int:
    return FEATURE_NAMES.index(name)


def test_psi_is_about_zero_on_the_training_distribution(halves: tuple[np.ndarray, ...]) -> None:
    x_ref, s_ref, x_live, s_live = halves
    reference = build_reference(x_ref, s_ref)
    assert set(reference) == set(SIGNALS)
    assert psi(reference["score"], s_live) < STABLE
    for name in DRIFT_FEATURES:
        assert len(reference[name]["edges"]) >= 1, name  # real bins, not one catch-all
        assert psi(reference[name], x_live[:, _col(name)]) < STABLE, name
        assert psi(reference[name], x_ref[:, _col(name)]) < 1e-9, name  # its own rows: exactly 0


@pytest.mark.parametrize(
    ("name", "shift"),
    [
        ("amount", lambda v: v * 3.0),  # a currency or units change
        ("card_tx_count_1d", lambda v: v + 3),  # duplicated traffic
        ("seconds_since_prev_card_tx", lambda v: v / 10.0),
        ("amount_to_card_mean_30d", lambda v: np.ones_like(v)),  # history lost: every ratio 1
    ],
)
def test_psi_is_large_on_a_shifted_distribution(
    halves: tuple[np.ndarray, ...], name: str, shift: Callable[[np.ndarray], np.ndarray]
) -> None:
    x_ref, s_ref, x_live, _ = halves
    reference = build_reference(x_ref, s_ref)
    assert psi(reference[name], shift(x_live[:, _col(name)])) > LARGE
    assert psi(reference["score"], np.minimum(s_ref * 4, 1.0)) > LARGE


def test_values_beyond_the_reference_range_count_as_a_large_shift(halves: tuple[np.ndarray, ...]) -> None:
    x_ref, s_ref, _, _ = halves
    reference = build_reference(x_ref, s_ref)
    above = np.full(500, x_ref[:, _col("amount")].max() * 10)
    assert psi(reference["amount"], above) > 5.0


def test_monitor_reports_the_shift_of_its_window_only(halves: tuple[np.ndarray, ...]) -> None:
    x_ref, s_ref, x_live, s_live = halves
    monitor = DriftMonitor(build_reference(x_ref, s_ref), window=2000, version="v1")
    assert monitor.enabled and monitor.values() == {}
    for start in range(0, 2000, 250):  # batches, as the worker observes them
        monitor.observe(x_live[start : start + 250], s_live[start : start + 250])
    stable = monitor.values()
    assert set(stable) == set(SIGNALS) and monitor.size == 2000
    assert max(stable.values()) < 0.05, stable
    shifted = x_live[:2500].copy()
    shifted[:, _col("amount")] *= 3.0
    monitor.observe(shifted, s_live[:2500])  # more than the window: only the newest rows stay
    moved = monitor.values()
    assert moved["amount"] > LARGE
    assert max(v for k, v in moved.items() if k != "amount") < 0.05, moved


def test_a_model_without_a_drift_reference_has_no_drift() -> None:
    monitor = DriftMonitor(None)
    monitor.observe(np.zeros((3, len(FEATURE_NAMES))), np.zeros(3))
    assert not monitor.enabled and monitor.values() == {}
