"""``POST /feedback``'s label publisher: a label goes to the labels topic, and the request is
answered once the broker acknowledged it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from pydantic import BaseModel

from model.errors import UpstreamUnavailableError
from model.schemas import Label, label_value
from streaming.kafka import clients as kafka
from streaming.settings import ApiSettings

log = logging.getLogger("fraudstream.api")


class FeedbackAccepted(BaseModel):
    """Where the broker stored an accepted label."""

    transaction_id: str
    topic: str
    partition: int
    offset: int


class LabelPublisher:
    """Publishes label events and awaits the broker's acknowledgement without blocking the event loop.

    The confluent-kafka producer is created on first use (a process that never receives feedback
    never connects for it). A daemon thread polls it; each delivery callback hands its result to
    the waiting request's future through ``loop.call_soon_threadsafe``. The producer gives up on a
    message after the feedback timeout, so a 503 means it will not be written later either
    (barring a broker that wrote it without its ack arriving: a retried label may then be stored
    twice, which the label consumers absorb since they key labels by transaction id).
    """

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.timeout = settings.feedback_timeout_seconds
        self._producer: Producer | None = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            self._stop = threading.Event()
            timeout_ms = max(1, round(self.timeout * 1000))
            self._producer = kafka.producer(self.settings, **{"message.timeout.ms": timeout_ms, "linger.ms": 0})
            self._poller = threading.Thread(target=self._poll, name="feedback-producer-poll", daemon=True)
            self._poller.start()
        return self._producer

    def _poll(self) -> None:
        producer = self._producer
        while producer is not None and not self._stop.is_set():
            producer.poll(0.1)

    async def publish(self, label: Label) -> FeedbackAccepted:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def resolve(err: Any, msg: Any) -> None:  # on the event loop
            if done.done():  # the request gave up (timeout) or went away
                return
            if err is None:
                done.set_result(msg)
            elif err.code() == KafkaError._MSG_TIMED_OUT:  # noqa: SLF001  # librdkafka's local error codes start with an underscore
                done.set_exception(UpstreamUnavailableError(self._late(f" ({err.str()})")))
            else:
                done.set_exception(UpstreamUnavailableError(f"the broker refused the label: {err.str()}"))

        def on_delivery(err: Any, msg: Any) -> None:  # on the poll thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(resolve, err, msg)

        topic = self.settings.labels_topic
        try:
            self._ensure_producer().produce(
                topic, key=label.card_id.encode(), value=label_value(label), on_delivery=on_delivery
            )
        except (BufferError, KafkaException) as exc:
            raise UpstreamUnavailableError(f"cannot queue the label for {topic}: {exc}") from exc
        try:
            # The producer reports its own timeout first; the margin only guards against a lost callback.
            msg = await asyncio.wait_for(done, self.timeout + 1.0)
        except TimeoutError as exc:
            raise UpstreamUnavailableError(self._late("")) from exc
        return FeedbackAccepted(
            transaction_id=label.transaction_id, topic=msg.topic(), partition=msg.partition(), offset=msg.offset()
        )

    def _late(self, why: str) -> str:
        return f"the broker did not acknowledge the label within {self.timeout:g} s{why}; retry later"

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout`` seconds), then stop polling."""
        if self._producer is None:
            return
        left = self._producer.flush(timeout)
        if left:
            log.warning("%d label(s) not delivered at shutdown", left)
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=2.0)
        self._producer = self._poller = None  # dropping the last reference destroys the client
