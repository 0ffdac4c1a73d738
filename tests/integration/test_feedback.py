"""POST /feedback on a real API process and broker: the label is on the labels topic, keyed by
card id, where the API said it put it."""

from __future__ import annotations

import httpx
import orjson
import pytest
from confluent_kafka import TopicPartition

from model.schemas import Label
from streaming.kafka import clients as kafka
from streaming.scoring.validation import parse_label
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def test_feedback_is_published_to_the_labels_topic(stack: Stack) -> None:
    # No worker here, so no card table to copy: card state from the (absent) worker instead.
    stack.card_state_source = "worker"
    stack.start_api()
    settings = stack.topics.settings
    url = f"http://127.0.0.1:{stack.api_port}/feedback"
    sent = {
        "transaction_id": "tx-feedback-1",
        "card_id": "card-0000042",
        "merchant_id": "m-000007",
        "is_fraud": True,
        "timestamp": "2026-02-03T21:15:00.250-05:00",
        "labelled_at": "2026-02-10T09:00:00Z",
        "source": "customer_confirmed",
    }
    accepted = []
    for body in (sent, {**sent, "transaction_id": "tx-feedback-2", "is_fraud": False, "source": "investigation"}):
        resp = httpx.post(url, json=body, timeout=30)
        assert resp.status_code == 202, resp.text
        accepted.append(resp.json())
    assert [a["transaction_id"] for a in accepted] == ["tx-feedback-1", "tx-feedback-2"]
    assert {a["topic"] for a in accepted} == {settings.labels_topic}
    # Same card, same partition, one after the other.
    assert accepted[0]["partition"] == accepted[1]["partition"]
    assert accepted[1]["offset"] > accepted[0]["offset"] >= 0

    # Read each label back at the partition and offset the API reported.
    consumer = kafka.consumer(settings, "feedback-reader")
    try:
        got = []
        for a in accepted:
            consumer.assign([TopicPartition(a["topic"], a["partition"], a["offset"])])
            msg = None
            for _ in range(40):
                msg = consumer.poll(0.5)
                if msg is not None and msg.error() is None:
                    break
            assert msg is not None and msg.error() is None, msg and msg.error()
            assert msg.offset() == a["offset"]
            got.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    for (key, value), a in zip(got, accepted, strict=True):
        assert key == b"card-0000042"
        label = parse_label(value)
        assert isinstance(label, Label)
        assert label.transaction_id == a["transaction_id"]
        assert label == Label.model_validate(
            {**sent, **({} if a["transaction_id"] == "tx-feedback-1" else {
                "transaction_id": "tx-feedback-2", "is_fraud": False, "source": "investigation"})}
        )  # fmt: skip
    assert orjson.loads(got[0][1])["labelled_at"] == "2026-02-10T09:00:00Z"
    # The partition is the one the card's transactions use (murmur2 on the card id), which
    # the worker's labels consumer relies on.
    assert accepted[0]["partition"] == _murmur2_partition(b"card-0000042", settings.topic_partitions)

    bad = httpx.post(url, json={**sent, "is_fraud": 1}, timeout=30)
    assert bad.status_code == 422
    assert any(err["loc"][-1] == "is_fraud" for err in bad.json()["detail"])
    metrics = httpx.get(f"http://127.0.0.1:{stack.api_port}/metrics").text
    assert 'fraud_api_requests_total{method="POST",route="/feedback",status="202"} 2.0' in metrics
    assert 'fraud_api_requests_total{method="POST",route="/feedback",status="422"} 1.0' in metrics


def _murmur2_partition(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner (murmur2, positive, modulo the partition count)."""
    m, r = 0x5BD1E995, 24
    length = len(key)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(key[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = length % 4
    tail = key[length - rest :]
    if rest >= 3:
        h ^= tail[2] << 16
    if rest >= 2:
        h ^= tail[1] << 8
    if rest >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions
