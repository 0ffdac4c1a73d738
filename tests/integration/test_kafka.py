"""``read_ends`` on a real broker: a reader that stops at the reported high watermark must still
get every record (the embedded broker reports the last batch's base offset + 1)."""

from __future__ import annotations

import uuid

from confluent_kafka import TopicPartition

from streaming.kafka import clients as kafka
from streaming.settings import KafkaSettings


def reported_end(settings: KafkaSettings, topic: str, partition: int) -> int:
    reader = kafka.consumer(settings, "read-ends-test")
    try:
        return int(reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1])
    finally:
        reader.close()


def test_read_ends_reaches_the_last_record_of_the_last_batch(bootstrap_servers: str) -> None:
    settings = KafkaSettings(kafka_bootstrap_servers=bootstrap_servers)
    topic = f"read-ends-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics(settings, [topic], partitions=2)
    producer = kafka.producer(settings, **{"linger.ms": 200})  # one batch of 7, then one of 1
    for i in range(7):
        producer.produce(topic, value=b"%d" % i, partition=0)
    producer.flush(10)
    producer.produce(topic, value=b"x", partition=0)
    producer.flush(10)

    marks = {(topic, 0): reported_end(settings, topic, 0), (topic, 1): 0}
    assert kafka.read_ends(settings, marks) == {(topic, 0): 8, (topic, 1): 0}

    # A batch that ends the partition: the reported mark (base + 1 on the embedded broker) is
    # raised to its last record.
    for i in range(5):
        producer.produce(topic, value=b"%d" % i, partition=1)
    producer.flush(10)
    assert kafka.read_ends(settings, {(topic, 1): reported_end(settings, topic, 1)}) == {(topic, 1): 5}
