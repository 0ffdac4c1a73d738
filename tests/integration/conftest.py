"""Real parts for the integration tests: a Kafka-protocol broker, a trained model, worker and API
processes started through the `fraud` CLI exactly as a user would.

Broker choice: ``KAFKA_BOOTSTRAP_SERVERS`` when set; testcontainers' Kafka when
``FRAUD_TEST_TESTCONTAINERS=1`` and a Docker engine answers; otherwise the embedded broker.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import TopicPartition

from model.train import TrainOptions, train
from producers.synthetic import SimConfig, generate
from streaming import children
from streaming.children import Child, Children, free_port, python_module, wait_http
from streaming.kafka import clients as kafka
from streaming.kafka.broker import EmbeddedBroker
from streaming.settings import KafkaSettings

pytestmark = pytest.mark.integration


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def bootstrap_servers() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    if os.environ.get("FRAUD_TEST_TESTCONTAINERS") == "1" and _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def train_frame():
    """Thirty days of synthetic traffic for training (seed 1): after the 7-day label-delay gap the
    validation stretch holds enough frauds (58) for thresholds that separate review from block."""
    return generate(SimConfig(seed=1, n_cards=1000, n_merchants=80, days=30, start=datetime(2026, 1, 1, tzinfo=UTC)))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, train_frame) -> Path:
    root = tmp_path_factory.mktemp("model")
    data = root / "train.csv"
    train_frame.to_csv(data, index=False)
    train(data, root / "artifact", TrainOptions())
    return root / "artifact"


@pytest.fixture(scope="session")
def traffic_frame():
    """Traffic the tests stream: other cards' behaviour, later event time (seed 2)."""
    return generate(SimConfig(seed=2, n_cards=150, n_merchants=60, days=10, start=datetime(2026, 2, 1, tzinfo=UTC)))


@dataclass
class Topics:
    settings: KafkaSettings
    app_id: str

    @property
    def transactions(self) -> str:
        return self.settings.transactions_topic

    @property
    def decisions(self) -> str:
        return self.settings.decisions_topic

    @property
    def dlq(self) -> str:
        return self.settings.dlq_topic


def make_topics(bootstrap: str, partitions: int = 2) -> Topics:
    suffix = uuid.uuid4().hex[:10]
    settings = KafkaSettings(
        kafka_bootstrap_servers=bootstrap,
        transactions_topic=f"tx-{suffix}",
        decisions_topic=f"decisions-{suffix}",
        dlq_topic=f"tx-{suffix}.dlq",
        labels_topic=f"labels-{suffix}",
        labels_dlq_topic=f"labels-{suffix}.dlq",
        merchant_risk_topic=f"risk-{suffix}",
        shadow_decisions_topic=f"decisions-{suffix}.shadow",
        rules_topic=f"rules-{suffix}",
        review_topic=f"review-{suffix}",
        topic_partitions=partitions,
    )
    kafka.ensure_topics(settings, kafka.project_topics(settings))
    kafka.ensure_topics(settings, [settings.merchant_risk_topic], config={"cleanup.policy": "compact"})
    return Topics(settings=settings, app_id=f"fraud-test-{suffix}")


@dataclass
class Service:
    """A `fraud` subcommand started on its own (outside :class:`Stack`'s start), with the
    interface fault tests use; a :class:`streaming.children.Child` underneath."""

    name: str
    env: dict[str, str]
    log_path: Path
    child: Child | None = None

    def start(self) -> Service:
        argv = python_module("streaming.cli", self.name)
        self.child = children.start(self.name, argv, self.log_path, self.env)
        return self

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.child.proc if self.child is not None else None

    def log(self) -> str:
        return self.child.log_tail() if self.child is not None else ""

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        assert self.child is not None, f"{self.name} was not started"
        wait_http(url, self.child, timeout=timeout)

    def stop(self, sig: int | None = None, timeout: float | None = None) -> int:
        assert self.child is not None, f"{self.name} was not started"
        return self.child.stop(sig, timeout)


@dataclass
class Stack:
    topics: Topics
    model_dir: Path
    workdir: Path
    web_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    card_state_source: str = "replica"
    #: The API's key list (FRAUD_API_KEYS); None: the API runs without authentication.
    api_keys: str | None = None
    #: Serve a registry alias (``models:/NAME@ALIAS``) of ``tracking_uri`` instead of ``model_dir``.
    model_uri: str = ""
    tracking_uri: str = ""
    model_reload_seconds: float = 10.0
    children: Children = field(init=False)

    def __post_init__(self) -> None:
        self.children = Children(self.workdir)

    @property
    def services(self) -> list[Child]:
        """The `fraud` processes started, in order."""
        return self.children.started

    def env(self) -> dict[str, str]:
        s = self.topics.settings
        return {
            **os.environ,
            "FRAUD_KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
            "FRAUD_TRANSACTIONS_TOPIC": s.transactions_topic,
            "FRAUD_DECISIONS_TOPIC": s.decisions_topic,
            "FRAUD_DLQ_TOPIC": s.dlq_topic,
            "FRAUD_LABELS_TOPIC": s.labels_topic,
            "FRAUD_LABELS_DLQ_TOPIC": s.labels_dlq_topic,
            "FRAUD_MERCHANT_RISK_TOPIC": s.merchant_risk_topic,
            "FRAUD_RULES_TOPIC": s.rules_topic,
            "FRAUD_REVIEW_TOPIC": s.review_topic,
            "FRAUD_TOPIC_PARTITIONS": str(s.topic_partitions),
            "FRAUD_APP_ID": self.topics.app_id,
            "FRAUD_MODEL_DIR": str(self.model_dir),
            "FRAUD_WEB_PORT": str(self.web_port),
            "FRAUD_METRICS_PORT": str(self.metrics_port),
            "FRAUD_DATA_DIR": str(self.workdir / "worker-data"),
            "FRAUD_SESSION_TIMEOUT_SECONDS": "6",
            "FRAUD_INCLUDE_FEATURES": "true",
            "FRAUD_PORT": str(self.api_port),
            "FRAUD_CARD_STATE_SOURCE": self.card_state_source,
            "FRAUD_WORKER_URL": f"http://127.0.0.1:{self.web_port}",
            "FRAUD_STATE_TIMEOUT_SECONDS": "2",
            "FRAUD_STATE_TOKEN": "test-state-token",
            **({"FRAUD_API_KEYS": self.api_keys} if self.api_keys else {"FRAUD_AUTH_DISABLED": "true"}),
            "FRAUD_SHADOW_DECISIONS_TOPIC": s.shadow_decisions_topic,
            "FRAUD_MODEL_URI": self.model_uri,
            "FRAUD_MODEL_RELOAD_SECONDS": str(self.model_reload_seconds),
            **({"FRAUD_MLFLOW_TRACKING_URI": self.tracking_uri} if self.tracking_uri else {}),
        }

    @property
    def start_timeout(self) -> float:
        # A process serving from a registry imports MLflow first: seconds, more on a busy machine.
        return 240.0 if self.model_uri else 60.0

    def start(self, command: str, ready_url: str) -> Child:
        """`fraud COMMAND` in its own process, once ``ready_url`` answers."""
        child = self.children.start(command, python_module("streaming.cli", command), self.env())
        wait_http(ready_url, child, timeout=self.start_timeout)
        return child

    def stop_all(self) -> None:
        self.children.stop_all()

    def start_worker(self) -> Child:
        return self.start("worker", f"http://127.0.0.1:{self.web_port}/ready")

    def start_api(self) -> Child:
        return self.start("api", f"http://127.0.0.1:{self.api_port}/ready")


@pytest.fixture
def stack(bootstrap_servers: str, model_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(topics=make_topics(bootstrap_servers), model_dir=model_dir, workdir=tmp_path)
    try:
        yield s
    finally:
        s.children.stop_all()


def produce(settings: KafkaSettings, messages: list[tuple[bytes | None, bytes]], topic: str | None = None) -> None:
    producer = kafka.producer(settings)
    errors: list[str] = []
    for key, value in messages:
        producer.produce(
            topic or settings.transactions_topic,
            key=key,
            value=value,
            on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
        )
    assert producer.flush(30) == 0
    assert not errors, errors


def consume(
    settings: KafkaSettings, topic: str, until: int, timeout: float = 120.0, distinct: bool = False
) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """Read ``topic`` from the beginning until ``until`` messages (with ``distinct``: decisions for
    ``until`` different transactions) or ``timeout`` seconds."""
    consumer = kafka.consumer(settings, f"reader-{uuid.uuid4().hex[:8]}")
    meta = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
    out: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
    deadline = time.monotonic() + timeout
    try:
        seen: set[str] = set()
        while (len(seen) if distinct else len(out)) < until and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None:
                    out.append((msg.key(), msg.value() or b"", list(msg.headers() or [])))
                    if distinct:
                        seen.add(orjson.loads(msg.value() or b"{}").get("transaction_id", ""))
    finally:
        consumer.close()
    return out


def decisions_by_id(messages: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for _, value, _ in messages:
        d = orjson.loads(value)
        out.setdefault(d["transaction_id"], d)
    return out
