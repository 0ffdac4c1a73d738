"""A thread that reads a whole topic into memory, then follows it: the merchant-risk view of
every worker and API process, and the API's copy of the card table (its changelog)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, TopicPartition

from streaming.kafka import clients as kafka
from streaming.settings import KafkaSettings

log = logging.getLogger(__name__)

#: Applies one record: its key and its value (``None``: a tombstone).
Apply = Callable[[bytes, "bytes | None"], None]


class Replica(threading.Thread):
    """Reads every partition of ``topic`` from the beginning into ``apply``, then follows it.

    ``caught_up`` is set once everything that was in the topic at start has been applied (the
    view is restored). After an error (the broker went away, say) it resumes after the last
    record it applied: reading the topic from the beginning again would put older values back
    for a while, under a view that says it is restored. Records must be absolute values per key.
    """

    def __init__(self, settings: KafkaSettings, topic: str, apply: Apply, name: str, **consumer_conf: object) -> None:
        super().__init__(name=f"{name}-replica", daemon=True)
        self.settings, self.topic, self.apply, self.what = settings, topic, apply, name
        self.consumer_conf = consumer_conf
        self.caught_up = threading.Event()
        self._stop_event = threading.Event()
        #: Next offset to read per partition (what has been applied so far).
        self.positions: dict[int, int] = {}
        #: Why the view is not restored yet (the last error), for readiness probes.
        self.last_error: str | None = None

    def stop(self) -> None:
        self._stop_event.set()

    def wait_until(self, ends: dict[int, int], timeout: float) -> bool:
        """Block until everything up to ``ends`` has been applied; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.positions.get(p, 0) >= end for p, end in ends.items() if end > 0):
                return True
            self._stop_event.wait(0.05)
        return False

    def start_offset(self, low: int, high: int) -> int:
        """Where reading starts in a partition not read yet (its low and high watermarks): at the
        beginning, since records are absolute values per key."""
        return OFFSET_BEGINNING

    def receive(self, msg: Message) -> None:
        """One record, applied by key (a record without one is no value of anything)."""
        key = msg.key()
        if key is not None:
            self.apply(key, msg.value())

    def run(self) -> None:
        # A broker that is down or a topic not created yet is waited for, then followed from
        # where this replica got to.
        said, said_at = "", 0.0
        while not self._stop_event.is_set():
            try:
                self._follow()
            except Exception as exc:  # noqa: BLE001 - logged, retried; this thread must not die
                if self._stop_event.is_set():
                    return  # stopped while a broker call was failing: nothing to report
                self.last_error = str(exc)
                # A topic its writer has not created yet usually appears within seconds.
                delay = 1.0 if isinstance(exc, LookupError) else 5.0
                # The same error once a minute, not once per retry.
                new = str(exc) != said or time.monotonic() - said_at > 60
                if new:
                    said, said_at = str(exc), time.monotonic()
                log.log(
                    logging.WARNING if new else logging.DEBUG,
                    "%s replica: %s; retrying every %g s",
                    self.what,
                    exc,
                    delay,
                )
                self._stop_event.wait(delay)

    def _follow(self) -> None:
        # Assigned, never subscribed: the group id is only a label, nothing is committed.
        # A broker that is not up yet makes librdkafka log an error per reconnect attempt; this
        # thread says so itself (once a minute while it lasts), so only librdkafka's critical
        # lines are kept.
        consumer = kafka.consumer(self.settings, f"{self.topic}-replica", logger=log, log_level=2, **self.consumer_conf)
        try:
            meta = consumer.list_topics(self.topic, timeout=10)
            partitions = sorted(meta.topics[self.topic].partitions)
            if not partitions:
                raise LookupError(f"topic {self.topic} does not exist (yet)")
            # Where this replica got to. A position past a partition's end (the topic was
            # recreated with less in it) is out of range, and auto.offset.reset starts it over;
            # a topic recreated with as much or more is not told apart from the old one.
            marks = {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10) for p in partitions}
            start = {p: self.positions.get(p, self.start_offset(*marks[p])) for p in partitions}
            for partition, first in start.items():
                if first >= 0:  # an offset, not a logical one: resume from there after an error
                    self.positions.setdefault(partition, first)
            consumer.assign([TopicPartition(self.topic, p, start[p]) for p in partitions])
            ends = {p: high for p, (_, high) in marks.items()}
            # Restored once every partition was read up to its end as of now. (The embedded
            # broker under-reports an end by the rest of its last record batch, which comes in
            # the same fetch as the reported end, so this still reads everything.) Never on a
            # timeout: a view continued from a partial one would overwrite the real values.
            pending = {p for p, end in ends.items() if end > max(start[p], 0)}
            while not self._stop_event.is_set():
                if not pending and not self.caught_up.is_set():
                    self.last_error = None
                    self.caught_up.set()
                for msg in consumer.consume(1000, 0.2):
                    error = msg.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:  # noqa: SLF001  # librdkafka's local error codes start with an underscore
                            log.warning("%s replica: %s", self.what, error)
                        continue
                    self.receive(msg)
                    p, offset = msg.partition(), msg.offset()
                    if p is None or offset is None:
                        continue
                    self.positions[p] = offset + 1
                    if p in pending and offset + 1 >= ends[p]:
                        pending.discard(p)
        finally:
            consumer.close()
