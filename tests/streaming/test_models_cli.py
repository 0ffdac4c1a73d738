"""`fraud models` in-process against a real SQLite registry: listing, moving the aliases, and a
clear error (exit 2) for what cannot be done."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from model.registry import CHALLENGER, CHAMPION, Registry
from model.train import TrainOptions, train
from producers.synthetic import SimConfig, generate
from streaming.cli import main


@pytest.fixture
def two_versions(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    frame = generate(SimConfig(seed=4, n_cards=60, n_merchants=20, days=10, start=datetime(2026, 1, 1, tzinfo=UTC)))
    frame.to_csv(tmp_path / "d.csv", index=False)
    for name, options in (("a", TrainOptions(model_type="logreg")), ("b", TrainOptions(model_type="logreg", seed=3))):
        train(tmp_path / "d.csv", tmp_path / name, options)
        registry.log_training(tmp_path / name)
    monkeypatch.setenv("FRAUD_MLFLOW_TRACKING_URI", registry.tracking_uri)
    monkeypatch.setenv("FRAUD_ACTOR", "tester")
    return registry


def test_models_commands_move_the_aliases_and_say_what_they_did(
    two_versions: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = two_versions
    assert main(["models", "promote", "1", "--reason", "first"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["action"], record["version"], record["actor"], record["reason"]) == (
        "promote",
        "1",
        "tester",
        "first",
    )
    assert main(["models", "challenger", "2", "--reason", "shadow it"]) == 0
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"fraudstream in {registry.tracking_uri}"
    assert lines[1].split()[:2] == ["2", CHALLENGER] and lines[2].split()[:2] == ["1", CHAMPION]
    assert main(["models", "promote", "2", "--reason", "better"]) == 0
    assert main(["models", "rollback", "--reason", "worse after all"]) == 0
    assert str(registry.alias(CHAMPION).version) == "1"
    assert main(["models", "challenger", "--clear", "--reason", "done"]) == 0
    assert registry.alias(CHALLENGER) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["models", "promote", "9", "--reason", "x"], "fraudstream has no version 9"),
        (["models", "rollback", "--reason", "x"], "has no champion to roll back"),
        (["models", "challenger", "--reason", "x"], "give a VERSION or --clear"),
    ],
)
def test_what_cannot_be_done_is_a_clear_error(
    two_versions: Registry, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
