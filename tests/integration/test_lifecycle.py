"""The model lifecycle on a real broker and a real MLflow store: the worker and the API follow the
registry's champion alias under live traffic, the challenger is scored in shadow, a tampered
version is refused while the champion keeps serving."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import orjson
import pandas as pd
import pytest

from model.artifact import MODEL_FILE
from model.registry import CHALLENGER, CHAMPION, Registry
from model.train import TrainOptions, train
from producers.publisher import wire_value
from streaming.kafka import clients as kafka
from tests.integration.conftest import Stack, consume, make_topics

pytestmark = pytest.mark.integration

#: Registry look-ups, model swaps: this often in the processes under test.
RELOAD_SECONDS = 0.5


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory: pytest.TempPathFactory, train_frame: pd.DataFrame) -> Path:
    root = tmp_path_factory.mktemp("second-model")
    train_frame.to_csv(root / "train.csv", index=False)
    train(root / "train.csv", root / "artifact", TrainOptions(model_type="logreg"))
    return root / "artifact"


class Traffic:
    """Transactions streamed at a steady rate from a thread until stopped."""

    def __init__(self, stack: Stack, frame: pd.DataFrame, rate: float = 150.0) -> None:
        self.stack, self.frame, self.rate = stack, frame, rate
        self.sent: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        producer = kafka.producer(self.stack.topics.settings)
        topic = self.stack.topics.transactions
        for row in self.frame.to_dict("records"):
            if self._stop.is_set():
                break
            producer.produce(topic, key=str(row["card_id"]).encode(), value=wire_value(row))
            producer.poll(0)
            self.sent.append(str(row["transaction_id"]))
            time.sleep(1.0 / self.rate)
        assert producer.flush(30) == 0

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def wait_for(what: str, check, timeout: float = 90.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def registry_stack(bootstrap_servers: str, model_dir: Path, tmp_path: Path, registry: Registry) -> Iterator[Stack]:
    s = Stack(
        topics=make_topics(bootstrap_servers),
        model_dir=tmp_path / "no-model-here",  # the registry alone serves
        workdir=tmp_path,
        model_uri=f"models:/{registry.name}@{CHAMPION}",
        tracking_uri=registry.tracking_uri,
        model_reload_seconds=RELOAD_SECONDS,
    )
    try:
        yield s
    finally:
        s.stop_all()


def test_promotion_and_rollback_under_live_traffic(
    registry_stack: Stack,
    registry: Registry,
    model_dir: Path,
    second_model_dir: Path,
    train_frame: pd.DataFrame,
) -> None:
    # Any realistic stream serves here (long enough for every phase at this rate).
    traffic_frame = train_frame
    stack = registry_stack
    _, v1 = registry.log_training(model_dir)
    _, v2 = registry.log_training(second_model_dir)
    # Version 3: the second model again, its model file changed in the store after registration.
    run3, v3 = registry.log_training(second_model_dir)
    stored = Path(registry.client.get_run(run3).info.artifact_uri.removeprefix("file://")) / "model" / MODEL_FILE
    stored.write_bytes(stored.read_bytes() + b"\0")
    registry.promote(v1, "first")
    registry.set_challenger(v2, "shadow the logistic regression")
    art = {v: registry.client.get_model_version(registry.name, v).tags["fraud.artifact_version"] for v in (v1, v2)}
    assert art[v1] != art[v2]

    worker_url = f"http://127.0.0.1:{stack.web_port}"
    stack.start_worker()
    stack.start_api()
    health = httpx.get(f"{worker_url}/health").json()
    assert (health["model_version"], health["challenger_version"]) == (art[v1], art[v2])
    probe = traffic_frame.iloc[0].to_dict()

    def serving(version: str) -> bool:
        worker = httpx.get(f"{worker_url}/health").json()["model_version"]
        resp = httpx.post(
            f"http://127.0.0.1:{stack.api_port}/predict",
            content=wire_value(probe),
            headers={"content-type": "application/json"},
        )
        return worker == version and resp.json()["model_version"] == version

    def decided() -> int:
        text = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics").text
        return sum(
            int(float(line.split()[-1])) for line in text.splitlines() if line.startswith("fraud_decisions_total{")
        )

    with Traffic(stack, traffic_frame) as traffic:
        wait_for("decisions by the first champion", lambda: decided() >= 200)
        registry.promote(v2, "the challenger does better")
        wait_for("the worker and /predict on version 2", lambda: serving(art[v2]))
        marks = decided()
        wait_for("decisions by version 2", lambda: decided() >= marks + 200)
        registry.rollback("back to the first")
        wait_for("the worker and /predict on version 1 again", lambda: serving(art[v1]))
        marks = decided()
        registry.promote(v3, "a tampered version")
        wait_for("more decisions after the tampered promotion", lambda: decided() >= marks + 200)
        assert serving(art[v1])  # refused: the champion keeps serving
    sent = traffic.sent
    metrics = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics").text
    assert "fraud_model_reload_failures_total 0.0" not in metrics
    api_ready = httpx.get(f"http://127.0.0.1:{stack.api_port}/ready").json()
    assert api_ready["model_version"] == art[v1] and f"version {v3}" in api_ready["model_error"]

    settings = stack.topics.settings
    records = consume(settings, settings.decisions_topic, until=len(sent), distinct=True)
    decisions = [orjson.loads(value) for _, value, _ in records]
    # Every transaction decided exactly once.
    ids = [d["transaction_id"] for d in decisions]
    assert sorted(ids) == sorted(sent) and len(set(ids)) == len(ids)
    # A batch's decisions share their scored_at: no batch mixes versions, and the versions
    # follow the promotions batch by batch: first, second, first again.
    batches: dict[datetime, set[str]] = {}
    for d in decisions:
        d["scored_at"] = datetime.fromisoformat(d["scored_at"])
        batches.setdefault(d["scored_at"], set()).add(d["model_version"])
    assert all(len(versions) == 1 for versions in batches.values())
    in_order = [next(iter(batches[at])) for at in sorted(batches)]
    segments = [v for i, v in enumerate(in_order) if i == 0 or v != in_order[i - 1]]
    assert segments == [art[v1], art[v2], art[v1]]

    # Shadow: one decision of the challenger per decision of the champion while it was set (until
    # its promotion), same key and transaction, the challenger's version; none after.
    first_v2 = min(at for at in batches if art[v2] in batches[at])
    shadowed = [d for d in decisions if d["scored_at"] < first_v2]
    shadow = consume(settings, settings.shadow_decisions_topic, until=len(shadowed), timeout=30)
    got = [orjson.loads(value) for _, value, _ in shadow]
    assert len(got) == len(shadowed)
    assert {d["transaction_id"] for d in got} == {d["transaction_id"] for d in shadowed}
    assert {d["model_version"] for d in got} == {art[v2]}
    by_id = {d["transaction_id"]: d for d in shadowed}
    for key, value, _ in shadow:
        d = orjson.loads(value)
        at = datetime.fromisoformat(d["scored_at"])
        assert key == d["card_id"].encode() and at == by_id[d["transaction_id"]]["scored_at"]
    roles = ("champion", "challenger")
    for role, version in zip(roles, (art[v1], art[v2]), strict=True):
        assert f'fraud_model_score_count{{model_version="{version}",role="{role}"}}' in metrics

    # The registry recorded who moved the champion, when and why.
    kinds = [r.data.tags["fraud.kind"] for r in registry.client.search_runs([registry.experiment_id()])]
    assert kinds.count("promote") == 3 and kinds.count("rollback") == 1 and "challenge" in kinds
    assert registry.alias(CHALLENGER) is None
