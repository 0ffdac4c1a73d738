"""Factories shared by the whole test tree: a small trained model, and an exit that raises."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import pandas as pd
import pytest

from model.train import TrainOptions, train
from producers.synthetic import SimConfig, generate


@pytest.fixture(scope="session")
def small_frame() -> pd.DataFrame:
    """Ten days of generated traffic over 60 cards (seed 4): enough to train a usable model."""
    return generate(SimConfig(seed=4, n_cards=60, n_merchants=20, days=10, start=datetime(2026, 1, 1, tzinfo=UTC)))


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory, small_frame: pd.DataFrame) -> Path:
    """A logistic-regression artifact trained on :func:`small_frame` (seconds, not minutes)."""
    root = tmp_path_factory.mktemp("small-model")
    small_frame.to_csv(root / "train.csv", index=False)
    train(root / "train.csv", root / "model", TrainOptions(model_type="logreg"))
    return root / "model"


class Exited(Exception):
    """What :func:`exit_raises` raises instead of ending the process."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def exit_raises(status: int) -> NoReturn:
    """An ``exit`` for :func:`streaming.fatal.stop_uncommitted` that tests can catch."""
    raise Exited(status)
