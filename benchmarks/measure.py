"""What ``fraud bench``'s orchestrator measures with: the generated traffic, pre-filled topics,
decisions read as they arrive, the worker's own histograms and a process's CPU time."""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from confluent_kafka import TopicPartition

from streaming.kafka import clients as kafka

if TYPE_CHECKING:
    from confluent_kafka import Message

    from streaming.settings import KafkaSettings


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc (psutil is not a
    dependency)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Traffic:
    """The generated transactions every phase takes a prefix of: wire dicts and encoded records."""

    rows: list[dict[str, Any]]
    records: list[tuple[bytes, bytes]]

    @classmethod
    def generate(cls, n: int, days: float = 30.0) -> Traffic:
        """At least ``n`` transactions spread over ``days`` (ordered by time)."""
        from producers.publisher import wire_value
        from producers.synthetic import config_for_rows, generate

        # Event times end a day before now: the worker dead-letters transactions stamped more
        # than a day after their Kafka record, and a fixed date would eventually be in the future.
        start = (datetime.now(UTC) - timedelta(days=days + 1)).replace(hour=0, minute=0, second=0, microsecond=0)
        config = replace(config_for_rows(n, seed=11, days=days), start=start)
        frame = generate(config)
        while len(frame) < n:  # the row count is only expected; add cards until there is enough
            config = replace(config, n_cards=math.ceil(config.n_cards * 1.05 * n / len(frame)))
            frame = generate(config)
        rows = frame.iloc[:n].to_dict("records")
        return cls(rows=rows, records=[(str(r["card_id"]).encode(), wire_value(r)) for r in rows])


def prefill(settings: KafkaSettings, topic: str, records: Sequence[tuple[bytes, bytes]]) -> float:
    """Produce ``records`` to ``topic`` as fast as the client goes; returns msg/s."""
    producer = kafka.producer(settings)
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    start = time.perf_counter()
    for i, (key, value) in enumerate(records):
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    elapsed = time.perf_counter() - start
    if left or errors:
        raise RuntimeError(f"pre-filling {topic}: {left} undelivered, errors {errors[:3]}")
    return len(records) / elapsed


def _keep_first_timestamp(stamps: dict[str, int], msg: Message) -> None:
    tx_id = orjson.loads(msg.value() or b"{}").get("transaction_id")
    if tx_id is not None:
        stamps.setdefault(tx_id, msg.timestamp()[1])


def record_timestamps(settings: KafkaSettings, topic: str) -> dict[str, int]:
    """The first record timestamp of each transaction id on ``topic``, read up to its end."""
    stamps: dict[str, int] = {}
    kafka.read_to_end(settings, {topic: partial(_keep_first_timestamp, stamps)}, timeout_s=60, idle_s=1.0)
    return stamps


class DecisionReader:
    """Follows a topic from the beginning as it is written (the worker's decisions, while it
    decides them); keeps the first record timestamp per transaction id."""

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        self.consumer = kafka.consumer(settings, f"bench-reader-{uuid.uuid4().hex[:8]}")
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        self.timestamps: dict[str, int] = {}

    def poll(self, timeout: float = 0.2) -> int:
        for msg in self.consumer.consume(1000, timeout):
            if msg.error() is None:
                _keep_first_timestamp(self.timestamps, msg)
        return len(self.timestamps)

    def wait_for(self, ids: Sequence[str], stall: float, on_first: Any = None) -> int:
        """Read until every id in ``ids`` was seen, or nothing new came for ``stall`` seconds.
        ``on_first`` runs once, when the first of them is seen; returns how many were seen."""
        wanted = set(ids)
        seen = last_seen = 0
        last_progress = time.monotonic()
        while seen < len(wanted):
            self.poll()
            seen = len(wanted.intersection(self.timestamps))
            if seen > last_seen:
                if last_seen == 0 and on_first is not None:
                    on_first(seen)
                last_seen, last_progress = seen, time.monotonic()
            elif time.monotonic() - last_progress > stall:
                break
        return seen

    def close(self) -> None:
        self.consumer.close()


def batch_totals(metrics_url: str) -> tuple[float, float, float]:
    """(batches, transactions, seconds scoring) so far, from the worker's own histograms."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=5).text):
        for sample in family.samples:
            totals[sample.name] = sample.value
    return (
        totals.get("fraud_scoring_batch_size_count", 0.0),
        totals.get("fraud_scoring_batch_size_sum", 0.0),
        totals.get("fraud_scoring_batch_duration_seconds_sum", 0.0),
    )


def batch_stats(before: tuple[float, float, float], after: tuple[float, float, float]) -> tuple[float, float]:
    """Mean batch size and mean scoring time per batch (ms) between two scrapes."""
    batches = max(after[0] - before[0], 1.0)
    return (after[1] - before[1]) / batches, (after[2] - before[2]) / batches * 1000


def rss_mb(pid: int) -> tuple[float, float]:
    """A live process's resident memory now and its peak so far (VmRSS, VmHWM), in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _seconds(row: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(row["timestamp"])).timestamp()


def first_after(rows: Sequence[dict[str, Any]], days: float) -> int:
    """Index of the first of the time-ordered ``rows`` at least ``days`` after the first one."""
    since = _seconds(rows[0]) + days * 86_400
    lo, hi = 0, len(rows)
    while lo < hi:
        mid = (lo + hi) // 2
        if _seconds(rows[mid]) < since:
            lo = mid + 1
        else:
            hi = mid
    return lo


def history_depth(rows: Sequence[dict[str, Any]], at: int, span_days: float = 30.0) -> tuple[int, float, float]:
    """The cards of ``rows[:at]`` seen in the ``span_days`` before ``rows[at]``: how many, their
    mean entries in that span, and how many days of traffic precede ``rows[at]``."""
    if at <= 0 or at >= len(rows):
        return 0, 0.0, 0.0
    now = _seconds(rows[at])
    since = now - span_days * 86_400
    cards: dict[str, int] = {}
    for row in rows[:at]:
        if _seconds(row) >= since:
            cards[row["card_id"]] = cards.get(row["card_id"], 0) + 1
    mean = sum(cards.values()) / max(len(cards), 1)
    return len(cards), mean, (now - _seconds(rows[0])) / 86_400


def percentiles(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99)), float(arr.max())
