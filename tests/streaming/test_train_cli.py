"""`fraud train --without GROUP` in-process: the groups reach the artifact, a wrong name exits 2."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from model.train import FEATURE_GROUPS
from producers.synthetic import SimConfig, generate
from streaming.cli import main


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FRAUD_MLFLOW_TRACKING_URI", "none")
    frame = generate(SimConfig(seed=4, n_cards=60, n_merchants=20, days=10, start=datetime(2026, 1, 1, tzinfo=UTC)))
    frame.to_csv(tmp_path / "d.csv", index=False)
    return tmp_path / "d.csv"


def test_without_groups_are_recorded_in_the_artifact(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    argv = ["train", "--data", str(data), "--out", str(out), "--model", "logreg"]
    assert main([*argv, "--without", "merchant-activity", "--without-merchant-risk"]) == 0
    assert "without merchant-activity, merchant-risk: 15 features zeroed" in capsys.readouterr().out
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["disabled_groups"] == ["merchant-activity", "merchant-risk"]
    assert set(meta["disabled_features"]) == set(FEATURE_GROUPS["merchant-risk"])


def test_an_unknown_group_exits_2_naming_the_valid_ones(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    assert main(["train", "--data", str(data), "--out", str(out), "--without", "card-label"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fraud train: unknown feature group 'card-label': choose from ")
    assert all(g in err for g in FEATURE_GROUPS)
    assert not out.exists()


def test_the_help_lists_every_group(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines at hyphens
    assert all(g in text for g in FEATURE_GROUPS)
