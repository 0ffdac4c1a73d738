"""The MLflow registry on a real SQLite store: training runs, versions, aliases, and the holders
that follow an alias (swaps, a tampered version refused, the challenger dropped when cleared)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from model.artifact import METADATA_FILE, MODEL_FILE, sha256_file
from model.errors import ConfigurationError
from model.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_REPLACED,
    Registry,
    RegistryError,
    RegistrySource,
    model_holders,
    parse_model_uri,
)
from model.scoring import ModelHolder
from model.train import TrainOptions, train
from producers.synthetic import SimConfig, generate


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two different models of the same data."""
    root = tmp_path_factory.mktemp("registry-models")
    # Long enough for fraud in the validation stretch after the 7-day label-delay gap.
    frame = generate(SimConfig(seed=4, n_cards=150, n_merchants=30, days=30, start=datetime(2026, 1, 1, tzinfo=UTC)))
    frame.to_csv(root / "d.csv", index=False)
    train(root / "d.csv", root / "a", TrainOptions(model_type="logreg"))
    train(root / "d.csv", root / "b", TrainOptions(model_type="logreg", merchant_risk=False))
    return root / "a", root / "b"


def run_of(registry: Registry, run_id: str):  # type: ignore[no-untyped-def]
    return registry.client.get_run(run_id)


def test_a_training_run_is_logged_and_registered(registry: Registry, artifacts: tuple[Path, Path]) -> None:
    a, _ = artifacts
    run_id, version = registry.log_training(a)
    assert version == "1"
    run = run_of(registry, run_id)
    meta = json.loads((a / METADATA_FILE).read_text())
    params = run.data.params
    assert params["model_type"] == "logreg" and params["estimator"] == "Pipeline"
    assert params["label_delay_days"] == "7.0"
    assert params["data.sha256"] == meta["data_fingerprint"]["sha256"]
    assert params["window.fit_from"] == meta["training_window"]["fit_from"]
    assert params["estimator.logisticregression__class_weight"] == "balanced"
    metrics = run.data.metrics
    assert metrics["validation.average_precision"] == pytest.approx(meta["validation_metrics"]["average_precision"])
    assert metrics["validation.at_threshold.block.recall"] >= 0
    assert metrics["window.fit_rows"] == meta["training_window"]["fit_rows"]
    listed = {f.path for f in registry.client.list_artifacts(run_id, "model")}
    assert {
        f"model/{MODEL_FILE}",
        f"model/{METADATA_FILE}",
        "model/pr_curve.png",
        "model/confusion_matrix.png",
    } <= listed
    assert json.loads(registry.client.download_artifacts(run_id, "features.json", str(a.parent)) and
                      (a.parent / "features.json").read_text()) == meta["feature_names"]  # fmt: skip
    (info,) = registry.versions()
    assert (info.version, info.artifact_version, info.run_id, info.aliases) == ("1", meta["version"], run_id, ())
    assert info.tags["fraud.model_sha256"] == sha256_file(a / MODEL_FILE)


def test_promote_and_rollback_are_recorded(registry: Registry, artifacts: tuple[Path, Path]) -> None:
    a, b = artifacts
    _, v1 = registry.log_training(a)
    _, v2 = registry.log_training(b)
    with pytest.raises(RegistryError, match="no champion"):
        registry.rollback("nothing yet")
    first = registry.promote(v1, "first model", who="alice")
    assert (first["version"], first["previous"]) == (v1, None)
    registry.set_challenger(v2, "try b", who="bob")
    assert {v.version: v.aliases for v in registry.versions()} == {v1: (CHAMPION,), v2: (CHALLENGER,)}
    second = registry.promote(v2, "b is better", who="carol")
    assert (second["version"], second["previous"]) == (v2, v1)
    # Promoting the challenger clears the alias: it is the champion now.
    assert registry.alias(CHALLENGER) is None
    assert registry.alias(CHAMPION).tags[TAG_REPLACED] == v1
    with pytest.raises(RegistryError, match="already the champion"):
        registry.promote(v2, "again")
    back = registry.rollback("b misbehaves", who="dave")
    assert (back["version"], back["previous"], back["actor"]) == (v1, v2, "dave")
    assert str(registry.alias(CHAMPION).version) == v1
    with pytest.raises(RegistryError, match="replaced no earlier version"):
        registry.rollback("no further")
    with pytest.raises(RegistryError, match="no version 9"):
        registry.promote("9", "missing")
    # Each alias change is a run of its own: who, why, from which version to which.
    run = run_of(registry, back["run_id"])
    assert run.data.tags["fraud.kind"] == "rollback"
    assert (run.data.tags["fraud.actor"], run.data.tags["fraud.reason"]) == ("dave", "b misbehaves")
    assert (run.data.params["version"], run.data.params["previous"]) == (v1, v2)
    promoted = registry.client.get_model_version("fraudstream", v2)
    assert promoted.tags["fraud.promoted_by"] == "carol"


def test_a_holder_follows_the_alias_and_refuses_a_tampered_version(
    registry: Registry, artifacts: tuple[Path, Path]
) -> None:
    a, b = artifacts
    _, v1 = registry.log_training(a)
    _, v2 = registry.log_training(b)
    holder = ModelHolder(RegistrySource(registry, CHAMPION))
    assert not holder.load() and not holder.ready and "alias not set" in str(holder.last_error)
    registry.promote(v1, "first")
    assert holder.load() and holder.stamp == v1
    first = holder.scorer.version
    assert not holder.load()  # unchanged alias: no download
    registry.promote(v2, "second")
    assert holder.load() and holder.stamp == v2 and holder.scorer.version != first

    # Version 3: model b again, its model file then changed in the store.
    run_id, v3 = registry.log_training(b)
    store_model = _store_file(registry, run_id, MODEL_FILE)
    store_model.write_bytes(store_model.read_bytes() + b"tampered")
    registry.promote(v3, "tampered")
    assert not holder.load()
    assert holder.stamp == v2 and holder.reload_failures == 2  # the unset alias at first, and this
    assert f"version {v3}: " in str(holder.last_error) and "does not match metadata" in str(holder.last_error)

    # Version 4: model and metadata changed together, so the files agree with each other: the
    # SHA-256 recorded at registration still refuses them.
    run_id, v4 = registry.log_training(b)
    store_model, store_meta = _store_file(registry, run_id, MODEL_FILE), _store_file(registry, run_id, METADATA_FILE)
    shutil.copy(a / MODEL_FILE, store_model)
    meta = json.loads(store_meta.read_text())
    store_meta.write_text(json.dumps({**meta, "model_sha256": sha256_file(store_model)}))
    registry.promote(v4, "tampered consistently")
    assert not holder.load()
    assert holder.stamp == v2 and "registered as" in str(holder.last_error)


def _store_file(registry: Registry, run_id: str, name: str) -> Path:
    uri = registry.client.get_run(run_id).info.artifact_uri
    assert uri.startswith("file://")
    return Path(uri.removeprefix("file://")) / "model" / name


def test_the_challenger_holder_drops_its_model_when_the_alias_is_cleared(
    registry: Registry, artifacts: tuple[Path, Path]
) -> None:
    a, b = artifacts
    _, v1 = registry.log_training(a)
    _, v2 = registry.log_training(b)
    registry.promote(v1, "first")
    champion, challenger = model_holders("unused", "models:/fraudstream@champion", registry.tracking_uri, shadow=True)
    assert challenger is not None and challenger.optional
    assert champion.load() and not challenger.load() and challenger.current is None
    registry.set_challenger(v2, "shadow b")
    assert challenger.load() and challenger.stamp == v2
    registry.set_challenger(None, "enough")
    assert challenger.load() and challenger.current is None
    # The champion's alias removed: the last champion keeps serving.
    registry.client.delete_registered_model_alias("fraudstream", CHAMPION)
    assert not champion.load() and champion.stamp == v1 and champion.ready


def test_model_uris_and_the_plain_directory(artifacts: tuple[Path, Path]) -> None:
    assert parse_model_uri("models:/fraudstream@champion") == ("fraudstream", "champion")
    for bad in ("fraudstream", "models:/fraudstream", "models:/@champion", "models:/a/b@c"):
        with pytest.raises(ConfigurationError, match="models:/NAME@ALIAS"):
            parse_model_uri(bad)
    holder, challenger = model_holders(artifacts[0], "", "sqlite:///unused.db", shadow=True)
    assert challenger is None and holder.model_dir == artifacts[0] and holder.load()
