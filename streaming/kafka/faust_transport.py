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

Batches without per-message tasks. Faust hands every record to its agents one at a time: the
fetch loop awaits ``wait_first(callback(message), ...)`` per record (two tasks and an
``asyncio.wait``), the Conductor decodes it into an event and queues it, and the stream wraps it in
sensors, context variables and an ack. That costs ~300 µs of event-loop time per record, more
than the worker's scoring. Records of the topics given to :func:`install` skip all of that: each
fetch is tracked and queued as one list of messages (:func:`take_batches` reads them), and the
reader acknowledges them with :func:`ack` once their outputs are written. Faust's own bookkeeping
stays: offsets are committed only up to acknowledged messages (gaps in between are never
committed), a rebalance clears the queue and waits for the batch in flight to be acknowledged
(``wait_empty``), and messages of an earlier consumer generation are dropped, not processed.
Changelog records still go through Faust's Conductor, one by one, to the tables.

Recovery to the last record. Faust's table recovery reads each changelog partition up to the
high watermark the broker reports. The embedded broker reports the last record batch's base
offset + 1, so recovery stopped inside the last batch and the cards written after its first
record came back empty. With ``read_ends`` given to :func:`install`, the watermarks recovery
asks for are raised to the last record actually there (``streaming.kafka.clients.read_ends``), and the
changelog can be written in ordinary batches.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

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
        #: Topics whose records are queued in batches (given to :func:`install`).
        self.batch_topics: frozenset[str] = getattr(self.transport, "batch_topics", frozenset())
        self._seek_pending = False
        self._held: set[TP] = set()
        # Fetches of batch topics, one list each. Cleared on rebalance by the app's flow control;
        # a few fetches of room keeps the fetcher one step ahead of the scorer.
        self.batches: Any = self.app.FlowControlQueue(maxsize=4, clear_on_resume=True)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        """The reported high watermarks (recovery reads changelogs up to them), corrected to the
        last record when the transport was given ``read_ends``."""
        marks = await super().highwaters(*partitions)
        read_ends = getattr(self.transport, "read_ends", None)
        if read_ends is None:
            return marks
        try:
            return await asyncio.get_running_loop().run_in_executor(None, read_ends, dict(marks))
        except Exception:  # the reported marks are what Faust would have used: no worse than that
            log.warning("could not read past the reported high watermarks; recovering up to them", exc_info=True)
            return marks

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

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop (``Consumer._drain_messages``), with records of the batch topics
        queued one list per fetch instead of one callback per record."""
        if not self.batch_topics:
            return await super()._drain_messages(fetcher)
        callback = self.callback
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        batch_topics = self.batch_topics
        try:
            while not (self._stopped.is_set() or fetcher._stopped.is_set()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(timeout=1.0)
                await self.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    # As Faust's getmany: records fetched while stopped are dropped, and the
                    # partitions seeked back to their committed offsets.
                    await self.perform_seek()
                    continue
                batch: list[Message] = []
                generation = self.app.consumer_generation_id
                for tp, tp_records in records.items():
                    if not self.flow_active or self.app.consumer_generation_id != generation:
                        break  # a rebalance started while changelog records were handed over
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    in_batch = tp.topic in batch_topics
                    for record in tp_records:
                        offset = record.offset
                        r_offset = read_offset[tp]
                        if r_offset is not None and offset < r_offset:
                            continue  # already read (Faust drops these the same way)
                        if r_offset and offset - r_offset > 1 and acks_enabled_for(tp.topic):
                            # Offsets with no record (compaction, transaction markers).
                            await self._add_gap(tp, r_offset + 1, offset)
                        message = self._to_message(tp, record)
                        if in_batch:
                            message.tracked = True
                            self._unacked_messages.add(message)
                            batch.append(message)
                        else:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        read_offset[tp] = offset
                if batch:
                    if self.batches.full():
                        await self.wait_first(self.batches.put(batch), self.suspend_flow.wait())
                    else:
                        self.batches.put_nowait(batch)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


async def take_batches(app: faust.App, max_messages: int) -> AsyncIterator[list[Message]]:
    """Messages of the batch topics, whole fetches joined up to about ``max_messages``; never
    waits for more once something is there. Acknowledge each batch with :func:`ack`."""
    consumer = app.consumer
    queue = consumer.batches  # type: ignore[attr-defined]  # our _Consumer (install() put it there)
    while True:
        messages: list[Message] = list(await queue.get())
        while len(messages) < max_messages and not queue.empty():
            messages.extend(queue.get_nowait())
        # Fetched before a rebalance: not ours to process any more (never acknowledged, so the
        # partition's next owner reads them from the committed offset).
        if not app.flow_control.is_active():
            continue
        generation = app.consumer_generation_id
        current = [m for m in messages if m.generation_id == generation]
        if current:
            yield current


def ack(app: faust.App, messages: Sequence[Message]) -> None:
    """Mark the messages processed: their offsets may now be committed."""
    consumer_ack = app.consumer.ack
    for message in messages:
        consumer_ack(message)


def _give_up(why: str) -> None:
    """Exit without committing anything more: the restart resumes from the committed offsets."""
    log.critical("stream partitions cannot be resumed safely: %s; exiting", why)
    logging.shutdown()
    os._exit(70)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer
    batch_topics: frozenset[str] = frozenset()
    read_ends: Callable[[dict[TP, int]], Mapping[TP, int]] | None = None


def install(
    app: faust.App,
    fetch_max_wait_ms: int,
    batch_topics: Iterable[str] = (),
    read_ends: Callable[[dict[TP, int]], Mapping[TP, int]] | None = None,
) -> None:
    """Use this transport for ``app``; call before the app declares topics or tables. Records of
    ``batch_topics`` are read with :func:`take_batches` instead of agents; ``read_ends`` (blocking,
    run in a thread) corrects the high watermarks state recovery reads up to."""
    _ConsumerThread.fetch_max_wait_ms = fetch_max_wait_ms
    transport = Transport(app.conf.broker_consumer, app)
    transport.batch_topics = frozenset(batch_topics)
    transport.read_ends = read_ends
    app.transport = transport
