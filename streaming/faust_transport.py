"""Faust's Kafka transport: a configurable fetch wait, and stream partitions held until seeked.

Fetch wait. Faust 0.15 builds its aiokafka consumer with a hard-coded ``fetch_max_wait_ms=1500``. A broker
that holds a fetch for the whole wait instead of answering when data arrives (the embedded
tansu broker does) then adds up to 1.5 s to every decision at low rates. On Apache Kafka a
fetch returns as soon as data is there, so a short wait only costs a few idle requests.

Seek before resume (faust-streaming/faust#596, open). After a rebalance Faust's recovery resumes
the stream partitions and only then seeks them to their committed offsets. The fetcher can hand
records to the agents in between; the seek then resets the read offsets under them, records in
flight push them forward again, and the re-fetched records below are dropped as already read.
Transactions were lost that way (never scored, offsets committed past them) in about one restart
in five. Here the stream partitions that recovery resumes are held back until the seek is done.

Fetch from a snapshot. Faust hands its live set of active partitions to aiokafka's fetcher in the
consumer thread, and aiokafka treats an empty set as "every partition". When recovery pauses the
changelogs while the stream partitions are still held, a fetch in flight sees an empty set, gets
the stream records, and Faust discards them as inactive after aiokafka has moved its position past
them (a seek to that same committed position does not bring them back). Each fetch here gets a
copy taken on the event loop, so records of paused partitions stay in aiokafka's buffer.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from typing import Any, ClassVar

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger("fraudstream.transport")


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: ClassVar[int] = 10

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka hands this to its Fetcher in start(), which has not run yet.
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seek_pending = False
        self._held: set[TP] = set()

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self._seek_pending = True
        self._held.clear()
        await super().on_partitions_assigned(assigned, generation_id)

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        resume = set(tps)
        if self._seek_pending:
            streams = {tp for tp in resume if not self._is_changelog_tp(tp)}
            self._held |= streams
            resume -= streams
        super().resume_partitions(resume)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        if active_partitions is None:  # client-only apps: every partition
            return await super()._getmany(None, timeout)
        snapshot = set(active_partitions)
        if not snapshot:
            return {}
        return await super()._getmany(snapshot, timeout)

    async def perform_seek(self) -> None:
        try:
            await super().perform_seek()
        except asyncio.CancelledError:
            # Recovery cancels the seek when a new rebalance starts (the next assignment resets
            # the hold) or when it times out: then the held partitions would never resume, and a
            # worker that consumes nothing while looking alive is worse than a restart.
            if not self.app.tables.recovery.signal_recovery_start.is_set():  # type: ignore[attr-defined]  # TableManager has .recovery
                _give_up("the seek to committed offsets timed out")
            raise
        except Exception as exc:  # the same: partitions held forever otherwise
            _give_up(f"the seek to committed offsets failed: {exc!r}")
        # Faust also seeks when a fetch returns while flow is stopped, which can come between
        # the assignment and recovery's resume: that seek must not end the hold.
        if self._held:
            self._seek_pending = False
            held, self._held = self._held, set()
            super().resume_partitions(held & set(self.assignment()))


def _give_up(why: str) -> None:
    """Exit without committing anything more: the restart resumes from the committed offsets."""
    log.critical("stream partitions cannot be resumed safely: %s; exiting", why)
    logging.shutdown()
    os._exit(70)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


def install(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Use this transport for ``app``; call before the app declares topics or tables."""
    _ConsumerThread.fetch_max_wait_ms = fetch_max_wait_ms
    app.transport = Transport(app.conf.broker_consumer, app)
