"""confluent-kafka clients configured from settings, and topic creation."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streaming.settings import KafkaSettings

log = logging.getLogger(__name__)


def producer(settings: KafkaSettings, **overrides: Any) -> Producer:
    conf = {
        **settings.confluent_config(),
        # Same partitioner as the Java client and Faust (murmur2), so a card's transactions land
        # on the partition whose table shard holds that card's state.
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "enable.idempotence": True,
        "compression.type": "lz4",
        **overrides,
    }
    return Producer(conf)


def consumer(settings: KafkaSettings, group_id: str, **overrides: Any) -> Consumer:
    conf = {
        **settings.confluent_config(),
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        **overrides,
    }
    return Consumer(conf)


class Partition(NamedTuple):
    topic: str
    partition: int


def read_ends(
    settings: KafkaSettings, marks: Mapping[Any, int], settle: float = 0.3, timeout: float = 10.0
) -> dict[Any, int]:
    """``marks`` (high watermarks by ``(topic, partition)``) raised to one past the last record
    actually there, read from ``mark - 1``.

    The embedded broker (tansu 0.6.0) reports a partition's high watermark as its last record
    batch's base offset + 1, so a reader that stops at the mark misses the rest of that batch. A
    fetch from ``mark - 1`` returns the whole batch; on Apache Kafka it returns the last record
    and changes nothing. Reads until every partition answered and ``settle`` seconds passed
    without a new record, or ``timeout``.
    """
    ends = dict(marks)
    probe = {Partition(tp[0], tp[1]): tp for tp, mark in marks.items() if mark > 0}
    if not probe:
        return ends
    reader = consumer(settings, "fraudstream-read-ends", **{"enable.partition.eof": True})
    try:
        reader.assign([TopicPartition(p.topic, p.partition, marks[tp] - 1) for p, tp in probe.items()])
        waiting = set(probe)
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and (waiting or time.monotonic() - quiet_since < settle):
            for msg in reader.consume(1000, 0.05):
                where = Partition(str(msg.topic()), int(msg.partition() or 0))
                offset = msg.offset()
                if msg.error() is None and offset is not None:
                    tp = probe[where]
                    ends[tp] = max(ends[tp], offset + 1)
                    quiet_since = time.monotonic()
                waiting.discard(where)  # a record or the partition's end: it answered
    finally:
        reader.close()
    return ends


def ensure_topics(
    settings: KafkaSettings,
    names: Iterable[str],
    timeout: float = 30.0,
    partitions: int | None = None,
    config: dict[str, str] | None = None,
) -> list[str]:
    """Create missing topics (the configured partitions unless given); returns the names created."""
    admin = AdminClient(settings.confluent_config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [n for n in dict.fromkeys(names) if n not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [
            NewTopic(n, partitions or settings.topic_partitions, settings.topic_replication_factor, config=config or {})
            for n in wanted
        ],
        operation_timeout=timeout,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout)
            created.append(name)
            log.info("created topic %s (%d partitions)", name, partitions or settings.topic_partitions)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created


def partition_count(settings: KafkaSettings, topic: str, timeout: float = 30.0) -> int:
    meta = AdminClient(settings.confluent_config()).list_topics(topic, timeout=timeout)
    return len(meta.topics[topic].partitions)


def project_topics(settings: KafkaSettings) -> list[str]:
    return [
        settings.transactions_topic,
        settings.decisions_topic,
        settings.dlq_topic,
        settings.labels_topic,
        settings.labels_dlq_topic,
    ]
