"""A CSV replay with its labels, on a real broker: labels on the labels topic, keyed and
partitioned like their card's transactions, each after the transaction it is about."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import TopicPartition

from model.dataset import load_csv
from model.schemas import Label
from producers.publisher import Publisher, csv_labels, rows_from_frame
from producers.synthetic import SimConfig, generate, labels_for, with_label_columns
from streaming.kafka import clients as kafka
from streaming.scoring.validation import parse_label
from streaming.settings import ProducerSettings

pytestmark = pytest.mark.integration


def test_csv_replay_publishes_labels_in_event_time(bootstrap_servers: str, tmp_path: Path) -> None:
    config = SimConfig(seed=9, n_cards=60, n_merchants=30, days=6, start=datetime(2026, 3, 1, tzinfo=UTC))
    frame = generate(config)
    labels = labels_for(frame, config)
    path = tmp_path / "replay.csv"
    with_label_columns(frame, labels).to_csv(path, index=False)
    data = load_csv(path).frame
    events = csv_labels(path, data)
    assert len(events.labels) == len(labels) > 20

    suffix = uuid.uuid4().hex[:10]
    settings = ProducerSettings(
        kafka_bootstrap_servers=bootstrap_servers,
        transactions_topic=f"tx-{suffix}",
        labels_topic=f"labels-{suffix}",
        topic_partitions=3,
        metrics_port=0,
    )
    kafka.ensure_topics(settings, [settings.transactions_topic, settings.labels_topic])
    publisher = Publisher(settings)
    # Ready means the idempotent producer got its id from the broker (librdkafka's statistics).
    assert publisher.wait_ready() and publisher._idempotence.state == "Assigned"
    stats = publisher.publish(rows_from_frame(data), labels=events.labels)
    assert stats.failed == stats.labels_failed == 0, stats.errors
    assert stats.acked == len(frame) and stats.labels_acked == len(labels)

    def read(topic: str, n: int) -> list[tuple[int, bytes, bytes, int]]:
        consumer = kafka.consumer(settings, f"reader-{uuid.uuid4().hex[:8]}")
        try:
            consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
            out: list[tuple[int, bytes, bytes, int]] = []
            for _ in range(200):
                for msg in consumer.consume(500, 0.5):
                    if msg.error() is None:
                        out.append((msg.partition(), msg.key(), msg.value(), msg.timestamp()[1]))
                if len(out) >= n:
                    break
            return out
        finally:
            consumer.close()

    txs = read(settings.transactions_topic, len(frame))
    lbs = read(settings.labels_topic, len(labels))
    assert len(txs) == len(frame) and len(lbs) == len(labels)

    tx_at = {orjson.loads(v)["transaction_id"]: (p, k, ts) for p, k, v, ts in txs}
    partition_of_card = {k: p for p, k, _ in tx_at.values()}
    for partition, key, value, record_ts in lbs:
        label = parse_label(value)
        assert isinstance(label, Label)
        assert key == label.card_id.encode()
        # Co-partitioned with the card's transactions (same key, same murmur2 partitioner).
        assert partition == partition_of_card[key]
        # Published after the transaction it is about.
        assert record_ts >= tx_at[label.transaction_id][2]
    # Labels reached the broker in labelled_at order within each partition.
    for p in range(settings.topic_partitions):
        times = [parse_label(v).labelled_at for q, _, v, _ in lbs if q == p]  # type: ignore[union-attr]
        assert times == sorted(times)
