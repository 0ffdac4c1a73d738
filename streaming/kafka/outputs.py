"""The worker's output records (decisions, dead letters, merchant risk, the card table's
changelog) through confluent-kafka.

Faust's producer costs ~60 µs of Python per record, keeps one request in flight, and the worker
writes two to three records per transaction; librdkafka takes a record in a few microseconds and
batches and pipelines them in C. The changelog records are the ones Faust would write for the
table (JSON key and value), so Faust's recovery restores them as its own.

The guarantee stays the same: a batch's offsets are acknowledged only after every output of the
batch is on the broker. :meth:`OutputBatch.wait` resolves when librdkafka reported the last
delivery of the batch and raises if any failed, so the caller never acknowledges a batch whose
outputs were not all written.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from streaming.kafka import clients as kafka
from streaming.settings import KafkaSettings

#: librdkafka's RD_KAFKA_PARTITION_UA, what ``produce`` assumes without a partition: the
#: configured partitioner picks one from the key.
PARTITION_BY_KEY = -1

log = logging.getLogger(__name__)

#: librdkafka's queue holds this many records; a batch is far smaller (it never fills up unless
#: the broker stops taking records, and then produce() raises and the worker stops uncommitted).
QUEUE_MAX_MESSAGES = 1_000_000


class Outputs:
    """One idempotent producer per worker, polled by a daemon thread for delivery reports."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.producer = kafka.producer(
            settings, **{"acks": "all", "linger.ms": 2, "queue.buffering.max.messages": QUEUE_MAX_MESSAGES}
        )
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="outputs-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.producer.poll(0.05)
            except Exception:  # a callback's error: keep serving deliveries, or every wait() hangs
                log.exception("delivery report handling failed")

    def batch(self) -> OutputBatch:
        return OutputBatch(self.producer, asyncio.get_running_loop())

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is queued; returns how many records were left undelivered."""
        left = self.producer.flush(timeout)
        self._stop.set()
        self._poller.join(timeout=2.0)
        return int(left)


class OutputBatch:
    """The outputs of one input batch: ``add`` them, then ``await wait()`` before acknowledging."""

    def __init__(self, producer: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._producer, self._loop = producer, loop
        self._lock = threading.Lock()
        self._future: asyncio.Future[None] = loop.create_future()
        self._sent = self._acked = 0
        self._closed = False
        self._error: KafkaError | None = None

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one record (``value`` None: a tombstone; ``partition`` None: by key)."""
        # Unlocked: only this thread writes _sent, and the poll thread only compares it once the
        # batch is closed, after the last add.
        self._sent += 1
        self._producer.produce(
            topic,
            key=key,
            value=value,
            headers=headers,
            partition=PARTITION_BY_KEY if partition is None else partition,
            on_delivery=self._delivered,
        )

    def _delivered(self, err: KafkaError | None, _msg: Any) -> None:  # on the poll thread
        with self._lock:
            self._acked += 1
            if err is not None and self._error is None:
                self._error = err
            done = self._closed and self._acked == self._sent
        if done:
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> None:
        """Return once the broker acknowledged every record added; raise if one failed."""
        with self._lock:
            self._closed = True
            done = self._acked == self._sent
        if done:
            self._resolve()
        await self._future
        if self._error is not None:
            raise KafkaException(self._error)
