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

Faust internals. All of the above overrides private methods of Faust's consumer and reads private
attributes of Faust and aiokafka; :data:`INTERNALS` lists every one (with what the worker reads),
and :func:`install` refuses to run on a Faust or aiokafka that lacks any of them. The pins in
pyproject.toml are the versions the tests cover. ``_Consumer._drain_messages`` is faust-streaming
0.15.3's ``Consumer._drain_messages`` (the loop is the same in 0.13.2) with these changes: it takes
the records from ``_wait_next_records`` itself instead of through ``getmany``, so getmany's checks
(active or buffered partition, same generation, flow active or else seek back) are inlined; a
fetch's records go partition by partition instead of round-robin (a batch topic's fetch is queued
whole anyway); and it does not commit every ``broker_commit_every`` acknowledgements, so offsets
are committed by Faust's commit timer (``broker_commit_interval``) and on rebalance only.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import aiokafka
import faust
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.consumer import CONSUMER_FETCHING, Fetcher
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from model.errors import DependencyMismatchError
from streaming.fatal import stop_uncommitted

log = logging.getLogger("fraudstream.transport")

#: The versions the tests cover: the pins in pyproject.toml (a test keeps them equal).
TESTED_FAUST = "0.15.3"
TESTED_AIOKAFKA = "0.14"


class Internal(NamedTuple):
    """A private (or undeclared) member of a Faust or aiokafka class that this code relies on."""

    owner: type
    name: str
    #: Methods whose code must assign or read it: an instance attribute (set up in ``__init__``)
    #: that ``hasattr`` on the class cannot see. Empty: an attribute of the class (a method).
    used_in: tuple[str, ...] = ()
    why: str = ""


_FaustConsumer = faust_aiokafka.Consumer
INTERNALS: tuple[Internal, ...] = (
    Internal(faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer", why="overridden: fetch wait"),
    Internal(aiokafka.AIOKafkaConsumer, "_fetch_max_wait_ms", ("__init__", "start"), "set before start()"),
    Internal(_FaustConsumer, "_new_consumer_thread", why="overridden: our consumer thread"),
    Internal(_FaustConsumer, "_getmany", why="overridden: fetch from a snapshot"),
    Internal(_FaustConsumer, "_drain_messages", why="overridden: the fetch loop"),
    Internal(_FaustConsumer, "perform_seek", why="overridden: ends the hold"),
    Internal(_FaustConsumer, "resume_partitions", why="overridden: holds stream partitions"),
    Internal(_FaustConsumer, "on_partitions_assigned", why="overridden: starts the hold"),
    Internal(_FaustConsumer, "highwaters", why="overridden: recovery's read ends"),
    Internal(_FaustConsumer, "_is_changelog_tp", why="which partitions to hold"),
    Internal(_FaustConsumer, "_wait_next_records", why="the fetch loop"),
    Internal(_FaustConsumer, "_add_gap", why="the fetch loop"),
    Internal(_FaustConsumer, "_to_message", why="the fetch loop"),
    Internal(_FaustConsumer, "_stopped", ("__init__",), "the fetch loop"),
    Internal(_FaustConsumer, "_read_offset", ("__init__",), "the fetch loop"),
    Internal(_FaustConsumer, "_buffered_partitions", ("__init__",), "the fetch loop"),
    Internal(_FaustConsumer, "_unacked_messages", ("__init__",), "batches tracked until acked"),
    Internal(_FaustConsumer, "_committed_offset", ("__init__",), "the worker's committed-offset metric"),
    Internal(Fetcher, "_stopped", ("__init__",), "the fetch loop"),
    Internal(TableManager, "recovery", why="not in TableManagerT; the seek and the worker's readiness"),
    Internal(Recovery, "signal_recovery_start", why="a cancelled seek: rebalance or timeout"),
    Internal(Recovery, "completed", ("__init__",), "the worker's readiness"),
    Internal(faust.App, "rebalancing", why="the worker's readiness"),
)


def _present(internal: Internal) -> bool:
    if not internal.used_in:
        return hasattr(internal.owner, internal.name)
    # An instance attribute exists only on instances: look for it in the code that uses it.
    return all(_mentioned(internal.owner, method, internal.name) for method in internal.used_in)


def _mentioned(owner: type, method: str, attribute: str) -> bool:
    """Whether a ``method`` of ``owner`` or of a class it derives from assigns or reads ``attribute``."""
    for klass in owner.__mro__:
        code = getattr(vars(klass).get(method), "__code__", None)
        if code is not None and attribute in code.co_names:
            return True
    return False


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"


def check_internals(internals: Iterable[Internal] = INTERNALS) -> None:
    """Raise :class:`DependencyMismatchError` naming the first of ``internals`` the installed
    Faust or aiokafka lacks: fail at start-up instead of misbehaving mid-stream."""
    for internal in internals:
        if not _present(internal):
            where = f"{internal.owner.__module__}.{internal.owner.__qualname__}.{internal.name}"
            raise DependencyMismatchError(
                f"{where} ({internal.why}) is missing from the installed faust-streaming "
                f"{_version('faust-streaming')} / aiokafka {_version('aiokafka')}; "
                f"streaming.kafka.faust_transport is tested with faust-streaming {TESTED_FAUST} "
                f"and aiokafka {TESTED_AIOKAFKA}.x"
            )


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: ClassVar[int] = 10

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka hands this to its Fetcher in start(), which has not run yet.
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms  # noqa: SLF001  # no public setter; see INTERNALS
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
                stop_uncommitted("stream partitions cannot be resumed: the seek to committed offsets timed out")
            raise
        except Exception as exc:  # the same: partitions held forever otherwise
            stop_uncommitted(f"stream partitions cannot be resumed: the seek failed: {exc!r}", exc_info=True)
        # Faust also seeks when a fetch returns while flow is stopped, which can come between
        # the assignment and recovery's resume: that seek must not end the hold.
        if self._held:
            self._seek_pending = False
            held, self._held = self._held, set()
            super().resume_partitions(held & set(self.assignment()))

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust 0.15.3's fetch loop (``Consumer._drain_messages``), with records of the batch topics
        queued one list per fetch instead of one callback per record (the module docstring lists
        what else differs; the private members of Faust it uses are in :data:`INTERNALS`)."""
        if not self.batch_topics:
            return await super()._drain_messages(fetcher)
        callback = self.callback
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        batch_topics = self.batch_topics
        try:
            while not (self._stopped.is_set() or fetcher._stopped.is_set()):  # noqa: SLF001  # as Faust's loop
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
    run in a thread) corrects the high watermarks state recovery reads up to. Raises
    :class:`DependencyMismatchError` when Faust or aiokafka lacks an internal this relies on."""
    check_internals()
    _ConsumerThread.fetch_max_wait_ms = fetch_max_wait_ms
    transport = Transport(app.conf.broker_consumer, app)
    transport.batch_topics = frozenset(batch_topics)
    transport.read_ends = read_ends
    app.transport = transport
