"""`fraud retrain` end to end: the training set from the topics (transactions and label events), a
candidate, the gate against the champion on the matured window, the registry and MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.dataset import load_csv
from model.registry import CHALLENGER, CHAMPION, Registry
from model.schemas import label_value
from model.train import TrainOptions, train
from producers.publisher import label_events, wire_value
from producers.synthetic import SimConfig, generate, labels_for, with_label_columns
from tests.integration.conftest import make_topics, produce

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 1, tzinfo=UTC)
CONFIG = SimConfig(seed=3, n_cards=300, n_merchants=100, days=24, start=START)
#: Windows scaled to the 24 simulated days: evaluation on days 14-19 (labels matured by day 24),
#: the candidate trained on days 2-14. Logistic-regression candidates: the gradient-boosted trees
#: took about a minute of CPU each to train on these 14k rows, and the gate does not depend on
#: the estimator.
GATE_ARGS = ["--label-delay-days", "5", "--eval-days", "5", "--train-days", "12", "--model", "logreg"]


def fraud(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streaming.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **env},
        check=False,
    )


def register_champion(registry: Registry, csv: Path, out: Path, options: TrainOptions) -> str:
    train(csv, out, options)
    _, version = registry.log_training(out)
    registry.promote(version, f"test champion {out.name}")
    return version


@pytest.mark.timeout(1800)  # four models trained, two retraining runs: minutes on a busy machine
def test_retraining_from_the_topics_promotes_a_better_candidate_and_keeps_a_worse_one(
    bootstrap_servers: str, registry: Registry, tmp_path: Path
) -> None:
    frame = generate(CONFIG)
    labels = labels_for(frame, CONFIG)
    topics = make_topics(bootstrap_servers)
    settings = topics.settings
    produce(settings, [(str(r["card_id"]).encode(), wire_value(r)) for r in frame.to_dict("records")])
    events = label_events(labels)
    # One fraud label withdrawn a day later: the latest label of a transaction wins.
    reverted = next(e for e in events if e.is_fraud)
    withdrawn = reverted.model_copy(update={"is_fraud": False, "labelled_at": reverted.labelled_at + timedelta(days=1)})
    produce(settings, [(e.card_id.encode(), label_value(e)) for e in [*events, withdrawn]], topic=settings.labels_topic)

    csv = tmp_path / "all.csv"
    with_label_columns(frame, labels).to_csv(csv, index=False)
    # A broken champion (trained on shuffled labels), then one that has seen the evaluation
    # window's labels: the candidate beats the first and cannot beat the second.
    shuffled = tmp_path / "shuffled.csv"
    rng = np.random.default_rng(0)
    pd.read_csv(csv).assign(is_fraud=lambda f: rng.permutation(f["is_fraud"].to_numpy())).to_csv(shuffled, index=False)
    broken = register_champion(registry, shuffled, tmp_path / "broken", TrainOptions(model_type="logreg"))

    env = {
        "FRAUD_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "FRAUD_TRANSACTIONS_TOPIC": settings.transactions_topic,
        "FRAUD_LABELS_TOPIC": settings.labels_topic,
        "FRAUD_MLFLOW_TRACKING_URI": registry.tracking_uri,
        "FRAUD_ACTOR": "scheduler",
    }
    work = tmp_path / "work"
    out = fraud("retrain", *GATE_ARGS, "--workdir", str(work), "--json", str(tmp_path / "gate.json"), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "verdict: promoted to champion" in out.stdout, out.stdout
    report = json.loads((tmp_path / "gate.json").read_text())
    candidate = report["candidate_registry_version"]
    assert report["verdict"] == "promote" and report["champion_registry_version"] == broken
    assert report["candidate"]["average_precision"] >= report["champion"]["average_precision"] + 0.01
    assert report["eval_fraud"] > 0 and report["windows"]["eval_to"] < report["windows"]["now"]
    assert str(registry.alias(CHAMPION).version) == candidate and registry.alias(CHALLENGER) is None

    # The training set: every transaction, the fraud labels known by the newest transaction,
    # the withdrawn one genuine.
    data = load_csv(work / "training.csv").frame
    now = frame["timestamp"].map(pd.Timestamp).max()
    known = labels.loc[labels["labelled_at"].map(pd.Timestamp) <= now]
    assert len(data) == len(frame)
    fraud_ids = set(known.loc[known["is_fraud"], "transaction_id"]) - {reverted.transaction_id}
    assert set(data.loc[data["is_fraud"] == 1, "transaction_id"]) == fraud_ids

    # The comparison and the verdict are in the candidate's run.
    run = registry.client.get_run(report["run_id"])
    assert run.data.tags["fraud.kind"] == "retrain" and run.data.tags["fraud.gate.verdict"] == "promote"
    assert run.data.metrics["gate.candidate.average_precision"] == pytest.approx(
        report["candidate"]["average_precision"]
    )
    assert run.data.params["retrain.margin"] == "0.01"
    promotion = registry.client.get_model_version(registry.name, candidate).tags
    assert promotion["fraud.promoted_by"] == "fraud retrain"

    # Refit on the whole window: fitted on the evaluation window's labels too (plain training
    # holds out a gap and a validation stretch).
    leaked = register_champion(registry, csv, tmp_path / "leaked", TrainOptions(refit=True))
    out = fraud("retrain", *GATE_ARGS, "--json", str(tmp_path / "gate2.json"), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "verdict: kept as challenger (shadow)" in out.stdout, out.stdout
    report = json.loads((tmp_path / "gate2.json").read_text())
    assert report["verdict"] == "challenger" and report["champion_registry_version"] == leaked
    assert report["candidate"]["average_precision"] < report["champion"]["average_precision"]
    assert str(registry.alias(CHAMPION).version) == leaked
    assert str(registry.alias(CHALLENGER).version) == report["candidate_registry_version"]
    status = registry.retrain_status()
    assert status["outcome"] == "challenger" and status["last_success_ms"] > 0

    # A retraining that cannot run is recorded as failed (the worker's retraining metrics say so).
    out = fraud("retrain", "--data", str(tmp_path / "missing.csv"), env=env)
    assert out.returncode == 2 and "missing.csv" in out.stderr
    assert registry.retrain_status()["outcome"] == "failed"
