"""Real parts for the integration tests: a Kafka-protocol broker, a trained model, worker and API
processes started through the `fraud` CLI exactly as a user would.

Broker choice: ``KAFKA_BOOTSTRAP_SERVERS`` when set; testcontainers' Kafka when
``FRAUD_TEST_TESTCONTAINERS=1`` and a Docker engine answers; otherwise the embedded broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import TopicPartition

from model.train import TrainOptions, train
from producers.synthetic import SimConfig, generate
from streaming.kafka import clients as kafka
from streaming.kafka.broker import EmbeddedBroker, free_port
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
    """Twenty days of synthetic traffic for training (seed 1)."""
    return generate(SimConfig(seed=1, n_cards=400, n_merchants=80, days=20, start=datetime(2026, 1, 1, tzinfo=UTC)))


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
        topic_partitions=partitions,
    )
    kafka.ensure_topics(settings, kafka.project_topics(settings))
    kafka.ensure_topics(settings, [settings.merchant_risk_topic], config={"cleanup.policy": "compact"})
    return Topics(settings=settings, app_id=f"fraud-test-{suffix}")


@dataclass
class Service:
    """A `fraud` subcommand in its own process, with its log kept for failure messages."""

    name: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streaming.cli", self.name], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"{self.name} died:\n{self.log()}"
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready at {url}:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


@dataclass
class Stack:
    topics: Topics
    model_dir: Path
    workdir: Path
    web_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    card_state_source: str = "replica"
    services: list[Service] = field(default_factory=list)
    #: Serve a registry alias (``models:/NAME@ALIAS``) of ``tracking_uri`` instead of ``model_dir``.
    model_uri: str = ""
    tracking_uri: str = ""
    model_reload_seconds: float = 10.0

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
            "FRAUD_SHADOW_DECISIONS_TOPIC": s.shadow_decisions_topic,
            "FRAUD_MODEL_URI": self.model_uri,
            "FRAUD_MODEL_RELOAD_SECONDS": str(self.model_reload_seconds),
            **({"FRAUD_MLFLOW_TRACKING_URI": self.tracking_uri} if self.tracking_uri else {}),
        }

    @property
    def start_timeout(self) -> float:
        # A process serving from a registry imports MLflow first: seconds, more on a busy machine.
        return 240.0 if self.model_uri else 60.0

    def start_worker(self) -> Service:
        worker = Service("worker", self.env(), self.workdir / "worker.log").start()
        self.services.append(worker)
        worker.wait_http(f"http://127.0.0.1:{self.web_port}/ready", timeout=self.start_timeout)
        return worker

    def start_api(self) -> Service:
        api = Service("api", self.env(), self.workdir / "api.log").start()
        self.services.append(api)
        api.wait_http(f"http://127.0.0.1:{self.api_port}/ready", timeout=self.start_timeout)
        return api

    def stop_all(self) -> None:
        for svc in reversed(self.services):
            svc.stop()


@pytest.fixture
def stack(bootstrap_servers: str, model_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(topics=make_topics(bootstrap_servers), model_dir=model_dir, workdir=tmp_path)
    try:
        yield s
    finally:
        s.stop_all()


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
