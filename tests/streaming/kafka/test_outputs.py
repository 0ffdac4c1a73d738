"""OutputBatch: wait() resolves only after the last delivery report, and raises on a failure."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streaming.kafka.outputs import OutputBatch


class FakeProducer:
    """Stands in for librdkafka: keeps the delivery callbacks, fires them when told."""

    def __init__(self, full_once: bool = False) -> None:
        self.callbacks: list[Any] = []
        self.full_once = full_once
        self.polls = 0

    def produce(
        self, topic: str, key: bytes | None, value: bytes, headers: Any, partition: int, on_delivery: Any
    ) -> None:
        if self.full_once:
            self.full_once = False
            raise BufferError("queue full")
        self.callbacks.append(on_delivery)

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0


def test_wait_resolves_after_the_last_delivery() -> None:
    async def run() -> list[str]:
        producer = FakeProducer()
        batch = OutputBatch(producer, asyncio.get_running_loop())
        for i in range(3):
            batch.add("t", b"k", str(i).encode())
        assert len(producer.callbacks) == 3
        events: list[str] = []
        waiter = asyncio.create_task(batch.wait())
        for cb in producer.callbacks[:2]:
            cb(None, None)
        await asyncio.sleep(0.01)
        events.append("done" if waiter.done() else "waiting")
        producer.callbacks[2](None, None)
        await asyncio.wait_for(waiter, 1)
        events.append("done")
        return events

    assert asyncio.run(run()) == ["waiting", "done"]


def test_a_failed_delivery_raises() -> None:
    async def run() -> None:
        producer = FakeProducer()
        batch = OutputBatch(producer, asyncio.get_running_loop())
        batch.add("t", None, b"v")
        batch.add("t", None, b"w")
        producer.callbacks[0](KafkaError(KafkaError._MSG_TIMED_OUT), None)
        producer.callbacks[1](None, None)
        await batch.wait()

    with pytest.raises(KafkaException):
        asyncio.run(run())


def test_a_full_queue_is_an_error_not_a_wait_on_the_event_loop() -> None:
    async def run() -> None:
        OutputBatch(FakeProducer(full_once=True), asyncio.get_running_loop()).add("t", None, b"v")

    with pytest.raises(BufferError):
        asyncio.run(run())


def test_an_empty_batch_does_not_wait() -> None:
    async def run() -> None:
        await asyncio.wait_for(OutputBatch(FakeProducer(), asyncio.get_running_loop()).wait(), 1)

    asyncio.run(run())
