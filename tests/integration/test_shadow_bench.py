"""benchmarks/shadow.py: the worker's pipeline with and without a challenger, on tiny sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.shadow import measure

pytestmark = pytest.mark.integration


def test_the_shadow_cost_is_measured_on_both_configurations(tmp_path: Path) -> None:
    report = measure(600, [100], repeats=1, workdir=tmp_path, train_cards=200, model_type="logreg")
    assert (report["transactions"], report["model"]) == (600, "logreg")
    row = report["batches"]["100"]
    for name in ("without", "with"):
        assert row[name]["wall_us_per_tx"] > row[name]["scoring_us_per_tx"] > 0 and row[name]["cpu_us_per_tx"] > 0
        assert row[name]["tx_per_s"] == round(1e6 / row[name]["cpu_us_per_tx"])
    assert row["shadow_cpu_us_per_tx"] == round(row["with"]["cpu_us_per_tx"] - row["without"]["cpu_us_per_tx"], 1)
