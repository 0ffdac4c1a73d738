"""read_quality against a real broker: decisions and labels produced to their topics, read back
up to their ends, joined by transaction_id, filtered by the decisions' event time."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from confluent_kafka import TopicPartition

from model.errors import TopicNotFoundError
from streaming.kafka import clients as kafka
from streaming.quality import format_quality, read_quality
from streaming.settings import KafkaSettings
from tests.integration.conftest import make_topics

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, tzinfo=UTC)
EST = timezone(timedelta(hours=-5))


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def decision(tx: str, card: str, outcome: str, model_version: str, at: datetime) -> tuple[bytes, bytes]:
    return card.encode(), orjson.dumps(
        {
            "schema_version": 1,
            "transaction_id": tx,
            "card_id": card,
            "score": {"allow": 0.05, "review": 0.5, "block": 0.95}[outcome],
            "decision": outcome,
            "reasons": [],
            "model_version": model_version,
            # Another zone than UTC: the range compares instants.
            "event_timestamp": at.astimezone(EST).isoformat(),
            "scored_at": "2026-03-20T00:00:00Z",
            "card_state": "used",
        }
    )


def label(tx: str, card: str, is_fraud: bool, at: datetime, key: str | None = None) -> tuple[bytes, bytes]:
    return (key or card).encode(), orjson.dumps(
        {
            "schema_version": 1,
            "transaction_id": tx,
            "card_id": card,
            "merchant_id": "m-1",
            "is_fraud": is_fraud,
            "timestamp": at.isoformat(),
            "labelled_at": (at + timedelta(days=3)).isoformat(),
            "source": "chargeback",
        }
    )


def send(
    settings: KafkaSettings, topic: str, messages: list[tuple[bytes, bytes]], timestamp_ms: int | None = None
) -> None:
    # The project's producer settings (linger 5 ms): records are batched, which is what makes the
    # embedded broker report short high watermarks.
    producer = kafka.producer(settings)
    errors: list[str] = []
    for key, value in messages:
        producer.produce(
            topic,
            key=key,
            value=value,
            timestamp=timestamp_ms or 0,  # 0: now
            on_delivery=lambda err, _m: errors.append(str(err)) if err else None,
        )
    assert producer.flush(30) == 0
    assert not errors, errors


@pytest.fixture
def settings(bootstrap_servers: str) -> KafkaSettings:
    topics = make_topics(bootstrap_servers)
    suffix = uuid.uuid4().hex[:10]
    # A labels topic of its own, whatever make_topics names it (the committed one leaves the default).
    s = topics.settings.model_copy(
        update={"labels_topic": f"labels-{suffix}", "labels_dlq_topic": f"labels-{suffix}.dlq"}
    )
    kafka.ensure_topics(s, [s.labels_topic])
    return s


def test_read_quality_joins_labels_to_decisions_in_range(settings: KafkaSettings) -> None:
    day = timedelta(days=1)
    inside = T0 + 2 * day
    decisions = [
        # model v1, in range
        decision("tx-a", "card-1", "block", "v1", inside),  # fraud -> TP at block and review
        decision("tx-b", "card-2", "block", "v1", inside),  # genuine
        decision("tx-c", "card-3", "review", "v1", inside),  # fraud, then relabelled genuine
        decision("tx-d", "card-4", "review", "v1", inside),  # fraud
        decision("tx-e", "card-5", "allow", "v1", inside),  # fraud (missed)
        decision("tx-f", "card-6", "allow", "v1", inside),  # no label
        decision("tx-a", "card-1", "block", "v1", inside),  # redelivered: counts once
        # model v2, in range: one flagged genuine
        decision("tx-g", "card-7", "review", "v2", inside),
        # outside the range: before it and at its exclusive end
        decision("tx-h", "card-8", "block", "v1", T0 - timedelta(milliseconds=1)),
        decision("tx-i", "card-9", "block", "v1", T0 + 7 * day),
        (b"card-x", b"not json"),
        (b"card-y", orjson.dumps({"transaction_id": "tx-z", "decision": "block"})),
    ]
    labels = [
        label("tx-a", "card-1", True, inside),
        label("tx-b", "card-2", False, inside),
        label("tx-c", "card-3", True, inside),
        label("tx-d", "card-4", True, inside),
        label("tx-e", "card-5", True, inside),
        label("tx-g", "card-7", False, inside),
        label("tx-h", "card-8", True, inside),  # its decision is out of range: not joined
        label("tx-c", "card-3", False, inside),  # later verdict: genuine after all
        label("tx-d", "card-4", True, inside, key="card-other"),  # wrong key: the worker dead-letters it
        (b"card-1", b"{}"),
    ]
    # Labels first: the reader must not depend on which topic was written first.
    send(settings, settings.labels_topic, labels)
    send(settings, settings.decisions_topic, decisions)

    report = read_quality(settings, ms(T0), ms(T0 + 7 * day), timeout_s=60)

    assert report["records"] == {"decisions": len(decisions), "labels": len(labels)}  # nothing stopped short
    assert report["skipped"] == {"decisions": 2, "labels": 2}
    assert report["decisions"] == 7  # tx-a..tx-g, tx-a once
    assert report["labels"] == 8
    assert report["joined"] == 6  # a, b, c, d, e, g
    v1 = report["by_model_version"]["v1"]
    assert (v1["decisions"], v1["labelled"], v1["labelled_fraud"]) == (6, 5, 3)  # fraud: a, d, e
    # review: flagged labelled a, b, c, d; TP a, d
    assert v1["thresholds"]["review"] == {
        "flagged_labelled": 4,
        "true_positives": 2,
        "precision": pytest.approx(0.5),
        "recall": pytest.approx(2 / 3),
    }
    # block: flagged labelled a, b; TP a
    assert v1["thresholds"]["block"] == {
        "flagged_labelled": 2,
        "true_positives": 1,
        "precision": pytest.approx(0.5),
        "recall": pytest.approx(1 / 3),
    }
    v2 = report["by_model_version"]["v2"]
    assert (v2["labelled"], v2["labelled_fraud"]) == (1, 0)
    assert v2["thresholds"]["review"]["precision"] == 0.0
    assert v2["thresholds"]["review"]["recall"] is None
    assert v2["thresholds"]["block"]["precision"] is None

    # The whole history (no range) takes in tx-h (its label joins) and tx-i.
    everything = read_quality(settings, None, None, timeout_s=60)
    assert everything["decisions"] == 9
    assert everything["joined"] == 7
    assert everything["by_model_version"]["v1"]["thresholds"]["block"]["true_positives"] == 2

    text = format_quality(report)
    assert "v1" in text and "v2" in text and "0.500" in text


def test_read_quality_on_a_missing_topic_says_so(settings: KafkaSettings) -> None:
    missing = settings.model_copy(update={"labels_topic": f"missing-{uuid.uuid4().hex[:8]}"})
    with pytest.raises(TopicNotFoundError, match="does not exist"):
        read_quality(missing, None, None, timeout_s=10)


def test_records_written_after_the_call_are_left_out(bootstrap_servers: str) -> None:
    """Past the reported high watermark a partition ends at the first record stamped after the
    call: records stamped an hour ahead stand in for traffic written while the reader runs."""
    suffix = uuid.uuid4().hex[:10]
    settings = make_topics(bootstrap_servers, partitions=1).settings.model_copy(
        update={"labels_topic": f"labels-{suffix}"}
    )
    kafka.ensure_topics(settings, [settings.labels_topic])
    later = int(time.time() * 1000) + 3_600_000
    send(
        settings,
        settings.decisions_topic,
        [decision(f"tx-{i}", "card-1", "block", "v1", T0) for i in range(5)],
        timestamp_ms=later,
    )
    consumer = kafka.consumer(settings, f"probe-{suffix}")
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(settings.decisions_topic, 0), timeout=10)
    finally:
        consumer.close()
    assert (low, high) != (0, 0)

    started = time.monotonic()
    report = read_quality(settings, None, None, timeout_s=60, idle_s=10)
    # Everything below the watermark was there at the call; what lies past it (the embedded
    # broker's short watermark hides the batch's tail) is stamped later and left out, without
    # waiting for the idle timeout.
    assert report["records"]["decisions"] == high - low
    assert report["decisions"] == high - low
    assert report["records_beyond_watermark"] == 0
    if high - low < 5:  # a short watermark: the first later record closed the partition at once
        assert time.monotonic() - started < 10


def test_read_quality_compares_champion_and_challenger_on_the_same_transactions(settings: KafkaSettings) -> None:
    at = T0 + timedelta(days=2)
    send(
        settings,
        settings.decisions_topic,
        [
            decision("tx-a", "card-1", "block", "v1", at),
            decision("tx-b", "card-2", "allow", "v1", at),
            decision("tx-c", "card-3", "block", "v1", at),  # decided before the challenger was set
        ],
    )
    send(
        settings,
        settings.shadow_decisions_topic,
        [decision("tx-a", "card-1", "review", "v2", at), decision("tx-b", "card-2", "block", "v2", at)],
    )
    send(
        settings,
        settings.labels_topic,
        [label("tx-a", "card-1", True, at), label("tx-b", "card-2", True, at), label("tx-c", "card-3", False, at)],
    )
    report = read_quality(settings, None, None, timeout_s=60)
    # The champion's own numbers cover all its decisions ...
    assert report["by_model_version"]["v1"]["labelled"] == 3
    # ... the comparison only the two both decided, with the same labels.
    shadow = report["shadow"]
    assert (shadow["transactions"], shadow["labelled"]) == (2, 2)
    champion, challenger = shadow["champion"]["v1"], shadow["challenger"]["v2"]
    assert champion["decisions"] == challenger["decisions"] == 2
    assert champion["thresholds"]["block"] == {
        "flagged_labelled": 1, "true_positives": 1, "precision": 1.0, "recall": 0.5
    }  # fmt: skip
    assert challenger["thresholds"]["block"]["recall"] == 0.5
    assert challenger["thresholds"]["review"]["recall"] == 1.0
    text = format_quality(report)
    assert "on the same 2 transactions, 2 labelled" in text
    assert any(line.startswith("challenger v2") and " review " in line for line in text.splitlines())
    # Without the shadow topic (or asked not to read it), no comparison.
    assert read_quality(settings, None, None, timeout_s=60, shadow=False)["shadow"] is None
