"""The detection-quality table end to end on a small generated data set: every model scored on
the same test window under the delay protocol, the ablated model really trained without its group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.quality_table import main
from model.artifact import load_artifact
from model.train import FEATURE_GROUPS


def test_the_table_scores_every_model_on_one_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--days", "20", "--cards", "300", "--merchants", "60", "--test-days", "5", "--seed", "3"]
    work = tmp_path / "work"
    assert main([*argv, "--groups", "card-labels", "--json", str(tmp_path / "q.json"), "--workdir", str(work)]) == 0
    result = json.loads((tmp_path / "q.json").read_text())
    names = [r["model"] for r in result["rows"]]
    assert names == ["default (hgb)", "textbook random forest (--baseline)", "default --without card-labels"]
    span = result["range"]
    assert (span["from"], span["to"]) == ("2026-01-16T00:00:00+00:00", "2026-01-21T00:00:00+00:00")
    assert span["actual_gap_days"] == 7 and span["train_end"] == "2026-01-09T00:00:00+00:00"
    assert 0 < result["test"]["fraud"] < result["test"]["rows"]
    for row in result["rows"]:
        assert 0 <= row["auc_roc"] <= 1 and 0 <= row["average_precision"] <= 1
        assert row["training_seconds"] >= 0
    without = load_artifact(work / "without-card-labels").metadata
    assert without["disabled_groups"] == ["card-labels"]
    assert without["disabled_features"] == list(FEATURE_GROUPS["card-labels"])
    assert load_artifact(work / "default").metadata["disabled_features"] == []
    table = capsys.readouterr().out
    assert "| model | AUC ROC | average precision | card precision@100 | training seconds |" in table
    assert "| default --without card-labels | " in table


def test_a_test_window_that_leaves_no_training_is_refused() -> None:
    with pytest.raises(SystemExit, match="need --days > --test-days"):
        main(["--days", "20", "--test-days", "13"])
