"""Fixtures the whole test tree shares: MLflow stores of their own, a small trained model, and an
exit that raises.

``fraud train`` records every run in MLflow (the embedded store under ``artifacts/`` by default):
the whole session points ``FRAUD_MLFLOW_TRACKING_URI`` at a store in a temporary directory, so no
test writes into the working tree. Tests that look at a registry take ``registry``: a fresh store,
copied from one created once per session (creating and migrating the SQLite schema takes seconds).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import pandas as pd
import pytest

from model.registry import Registry
from model.train import TrainOptions, train
from producers.synthetic import SimConfig, generate


@pytest.fixture(scope="session", autouse=True)
def session_tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow-session') / 'mlflow.db'}"
    before = os.environ.get("FRAUD_MLFLOW_TRACKING_URI")
    os.environ["FRAUD_MLFLOW_TRACKING_URI"] = uri
    yield uri
    if before is None:
        os.environ.pop("FRAUD_MLFLOW_TRACKING_URI", None)
    else:
        os.environ["FRAUD_MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with its schema created."""
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    Registry(f"sqlite:///{db}").client.search_experiments()
    return db


@pytest.fixture
def registry(tmp_path: Path, mlflow_template: Path) -> Registry:
    """A fresh embedded store (SQLite and artifact folder under tmp_path/mlflow)."""
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(mlflow_template, db)
    return Registry(f"sqlite:///{db}", "fraudstream")


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
