"""confluent-kafka clients configured from settings, topic creation, and reading topics to their end."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from model.errors import TopicNotFoundError, UpstreamUnavailableError
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
        settings.shadow_decisions_topic,
    ]


def end_offsets(settings: KafkaSettings, topic: str) -> dict[int, int]:
    """The topic's current end offset per partition."""
    reader = consumer(settings, f"{topic}-ends", logger=log, log_level=2)
    try:
        meta = reader.list_topics(topic, timeout=10)
        return {
            p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.topics[topic].partitions
        }
    finally:
        reader.close()


def read_to_end(
    settings: KafkaSettings,
    handlers: dict[str, Callable[[Message], None]],
    timeout_s: float,
    idle_s: float,
) -> int:
    """Feed every record of the topics, from the beginning up to their ends at call time, to the
    topic's handler (an assigned consumer: no group membership, nothing committed). Returns how
    many records were read past the reported high watermarks.

    The embedded broker (tansu 0.6.0) reports a partition's high watermark as its last record
    batch's base offset + 1, so the watermark can sit short of the real end. Once every partition
    reached its watermark, reading goes on until no record came for ``idle_s`` seconds; past the
    watermark, a partition stops at the first record whose Kafka timestamp is later than the call
    (written after it: excluded), so live traffic neither extends the read nor reaches a handler.
    On Apache Kafka the watermarks are exact and this costs at most ``idle_s``.

    Raises ``UpstreamUnavailableError`` when the watermarks are not reached in ``timeout_s``,
    ``TopicNotFoundError`` when a topic does not exist.
    """
    cutoff_ms = int(time.time() * 1000)
    deadline = time.monotonic() + timeout_s
    reader = consumer(settings, f"fraudstream-read-{uuid.uuid4().hex[:12]}", **{"enable.auto.offset.store": False})
    try:
        highs: dict[tuple[str, int], int] = {}
        assignment = []
        for topic in handlers:
            try:
                meta = reader.list_topics(topic, timeout=max(1.0, deadline - time.monotonic()))
            except Exception as exc:
                raise UpstreamUnavailableError(f"cannot read metadata of {topic}: {exc}") from exc
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None or not tmeta.partitions:
                raise TopicNotFoundError(f"topic {topic!r} does not exist (or has no partitions)")
            for p in sorted(tmeta.partitions):
                low, high = reader.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=max(1.0, deadline - time.monotonic()), cached=False
                )
                if high > low:  # an empty partition has nothing to read at call time
                    highs[(topic, p)] = high
                    assignment.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        if not assignment:
            return 0
        reader.assign(assignment)
        below = set(highs)  # partitions not yet read up to their watermark
        tails = set(highs)  # partitions that may still hold records written before the call
        beyond = 0
        last_record = time.monotonic()
        while tails:
            now = time.monotonic()
            if below and now > deadline:
                raise UpstreamUnavailableError(
                    f"{len(below)} partition(s) not read up to their end in {timeout_s} s: "
                    + ", ".join(f"{t}[{p}]" for t, p in sorted(below))
                )
            if not below and (now - last_record >= idle_s or now > deadline):
                break
            for msg in reader.consume(500, 0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001  # librdkafka's local error codes start with an underscore
                        continue
                    raise UpstreamUnavailableError(f"reading {msg.topic()}[{msg.partition()}]: {err}")
                name, partition, offset = msg.topic(), msg.partition(), msg.offset()
                if name is None or partition is None or offset is None:
                    continue  # only error events lack them
                key = (name, partition)
                if key not in tails:
                    continue  # paused after its end, fetched before the pause
                if offset >= highs[key]:
                    ts_type, ts = msg.timestamp()
                    if ts_type != TIMESTAMP_NOT_AVAILABLE and ts > cutoff_ms:
                        # Written after the call: this partition is done.
                        tails.discard(key)
                        reader.pause([TopicPartition(name, partition)])
                        continue
                    beyond += 1
                handlers[name](msg)
                last_record = time.monotonic()
                if offset + 1 >= highs[key]:
                    below.discard(key)
        if beyond:
            log.info("read %d record(s) past the reported high watermarks (broker reports them short)", beyond)
        return beyond
    finally:
        reader.close()


def produce_and_wait(
    settings: KafkaSettings, topic: str, records: Iterable[tuple[bytes, bytes | None]], timeout: float = 10.0
) -> None:
    """Write ``records`` (key, value; None: a tombstone) and return once the broker acknowledged
    every one; raises ``UpstreamUnavailableError`` naming the first failure otherwise. Blocking:
    for commands and off-loop calls."""
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err.str())

    client = producer(settings, **{"linger.ms": 0, "message.timeout.ms": max(1, round(timeout * 1000))})
    for key, value in records:
        client.produce(topic, key=key, value=value, on_delivery=delivered)
    left = client.flush(timeout + 1.0)
    if errors or left:
        why = errors[0] if errors else f"{left} record(s) not acknowledged within {timeout:g} s"
        raise UpstreamUnavailableError(f"cannot write to {topic}: {why}")
