"""Fixtures every test folder shares: MLflow stores of their own.

``fraud train`` records every run in MLflow (the embedded store under ``artifacts/`` by default):
the whole session points ``FRAUD_MLFLOW_TRACKING_URI`` at a store in a temporary directory, so no
test writes into the working tree. Tests that look at a registry take ``registry``: a fresh store,
copied from one created once per session (creating and migrating the SQLite schema takes seconds).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.registry import Registry


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
