"""Faust's Kafka transport with the fetch wait made configurable.

Faust 0.15 builds its aiokafka consumer with a hard-coded ``fetch_max_wait_ms=1500``. A broker
that holds a fetch for the whole wait instead of answering when data arrives (the embedded
tansu broker does) then adds up to 1.5 s to every decision at low rates. On Apache Kafka a
fetch returns as soon as data is there, so a short wait only costs a few idle requests.
"""

from __future__ import annotations

from typing import Any, ClassVar

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: ClassVar[int] = 10

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka hands this to its Fetcher in start(), which has not run yet.
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


def install(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Use this transport for ``app``; call before the app declares topics or tables."""
    _ConsumerThread.fetch_max_wait_ms = fetch_max_wait_ms
    app.transport = Transport(app.conf.broker_consumer, app)
