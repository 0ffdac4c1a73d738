"""The transport's fixes to Faust's consumer, on a real (unstarted) Faust consumer object: stream
partitions stay paused until they are seeked, fetches see a snapshot of the active set, batches
skip the per-message machinery; and the start-up check of the Faust internals all this relies on."""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import tomllib
from pathlib import Path
from typing import Any

import aiokafka
import faust
import faust.transport.consumer
import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from model.errors import DependencyMismatchError
from streaming.kafka import faust_transport


@pytest.fixture
def consumer(tmp_path: Any) -> Any:
    app = faust.App("transport-test", broker="kafka://127.0.0.1:1", store="memory://", datadir=str(tmp_path))
    faust_transport.install(app, fetch_max_wait_ms=10)
    app.Table("cards", default=None)  # gives the app a changelog topic
    consumer = app.consumer
    assert isinstance(consumer, faust_transport._Consumer)
    return consumer


STREAM = [TP("transactions", 0), TP("transactions", 1)]
CHANGELOG = TP("transport-test-cards-changelog", 0)


def test_stream_partitions_resumed_before_the_seek_wait_for_it(consumer: Any, monkeypatch: Any) -> None:
    assigned = {*STREAM, CHANGELOG}
    monkeypatch.setattr(consumer, "assignment", lambda: assigned)

    async def committed() -> dict[TP, int]:
        # The seek must happen while the stream partitions are still paused.
        assert not set(STREAM) & consumer._get_active_partitions()
        return {STREAM[0]: 158, STREAM[1]: 142}

    monkeypatch.setattr(consumer, "seek_to_committed", committed)
    consumer._seek_pending = True  # as on_partitions_assigned leaves it
    consumer.pause_partitions(assigned)

    consumer.resume_partitions({*STREAM, CHANGELOG})  # what Faust's recovery does first
    assert consumer._get_active_partitions() == {CHANGELOG}

    asyncio.run(consumer.perform_seek())
    assert consumer._get_active_partitions() == {*STREAM, CHANGELOG}
    assert consumer._read_offset[STREAM[0]] == 158

    consumer.pause_partitions(STREAM)
    consumer.resume_partitions(STREAM)  # no seek pending any more: resumes at once
    assert set(STREAM) <= consumer._get_active_partitions()


def test_held_partitions_revoked_before_the_seek_are_not_resumed(consumer: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(consumer, "assignment", lambda: {STREAM[0]})

    async def committed() -> dict[TP, int]:
        return {STREAM[0]: 1}

    monkeypatch.setattr(consumer, "seek_to_committed", committed)
    consumer._seek_pending = True
    consumer.resume_partitions(STREAM)
    asyncio.run(consumer.perform_seek())
    assert consumer._get_active_partitions() == {STREAM[0]}


def test_fetches_get_a_copy_of_the_active_set_and_none_when_it_is_empty(consumer: Any, monkeypatch: Any) -> None:
    seen: list[Any] = []

    async def fetch(active: Any, timeout: float) -> dict[str, str]:
        seen.append(active)
        return {"records": "yes"}

    monkeypatch.setattr(faust_transport.faust_aiokafka.Consumer, "_getmany", lambda self, a, t: fetch(a, t))
    live: set[TP] = set()
    assert asyncio.run(consumer._getmany(live, 1.0)) == {}
    assert seen == []  # aiokafka would read an empty set as "every partition"

    live.add(STREAM[0])
    assert asyncio.run(consumer._getmany(live, 1.0)) == {"records": "yes"}
    assert seen[-1] == {STREAM[0]} and seen[-1] is not live

    assert asyncio.run(consumer._getmany(None, 1.0)) == {"records": "yes"}
    assert seen[-1] is None


def test_every_assignment_starts_with_a_seek_pending(consumer: Any, monkeypatch: Any) -> None:
    calls: list[Any] = []

    async def assigned(self: Any, tps: Any, generation_id: int = 0) -> None:
        calls.append(tps)

    monkeypatch.setattr(faust_transport.faust_aiokafka.Consumer, "on_partitions_assigned", assigned)
    consumer._held = {STREAM[1]}
    asyncio.run(consumer.on_partitions_assigned({STREAM[0]}, 3))
    assert consumer._seek_pending and not consumer._held and calls == [{STREAM[0]}]


def test_a_seek_before_recovery_resumes_does_not_end_the_hold(consumer: Any, monkeypatch: Any) -> None:
    assigned = {*STREAM, CHANGELOG}
    monkeypatch.setattr(consumer, "assignment", lambda: assigned)

    async def committed() -> dict[TP, int]:
        return {STREAM[0]: 5, STREAM[1]: 6}

    monkeypatch.setattr(consumer, "seek_to_committed", committed)
    consumer._seek_pending = True
    consumer.pause_partitions(assigned)
    asyncio.run(consumer.perform_seek())  # Faust's own seek from getmany, before recovery resumed
    consumer.resume_partitions(STREAM)  # recovery resumes the streams: still held
    assert not set(STREAM) & consumer._get_active_partitions()
    asyncio.run(consumer.perform_seek())  # recovery's seek: now they go
    assert set(STREAM) <= consumer._get_active_partitions()


@pytest.fixture
def batch_app(tmp_path: Any) -> Any:
    app = faust.App("batch-test", broker="kafka://127.0.0.1:1", store="memory://", datadir=str(tmp_path))
    faust_transport.install(app, fetch_max_wait_ms=10, batch_topics=["transactions"])
    app.Table("cards", default=None)
    app.topics.add(app.topic("transactions"))
    app.loop.run_until_complete(app.topics._update_indices())  # as subscribing does: acks enabled
    app.flow_control.resume()  # as recovery does once the partitions are ready
    return app


def _record(tp: TP, offset: int) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, 1_000, 0, b"k", b"v%d" % offset, None, 1, 2, [])


def _drain_once(consumer: Any, monkeypatch: Any, fetched: dict[TP, list[ConsumerRecord]]) -> list[Any]:
    """Run the fetch loop over one fetch; returns what went through Faust's per-message callback."""

    class Fetcher:
        _stopped = asyncio.Event()

    called: list[Any] = []

    async def fetch(timeout: float) -> tuple[dict[TP, list[ConsumerRecord]], set[TP]]:
        Fetcher._stopped.set()
        return fetched, set(fetched)

    async def callback(message: Any) -> None:
        called.append(message)

    monkeypatch.setattr(consumer, "_wait_next_records", fetch)
    monkeypatch.setattr(consumer, "highwater", lambda tp: 100)
    consumer.callback = callback
    consumer.loop.run_until_complete(consumer._drain_messages(Fetcher()))  # Faust waits on its own loop
    return called


def test_a_fetch_of_batch_topics_is_queued_as_one_list_and_changelogs_go_one_by_one(
    batch_app: Any, monkeypatch: Any
) -> None:
    consumer = batch_app.consumer
    consumer._read_offset[STREAM[1]] = 7  # read up to 7 already: 5 and 6 are dropped, 7 is re-read
    fetched = {
        STREAM[0]: [_record(STREAM[0], o) for o in (0, 1, 2)],
        STREAM[1]: [_record(STREAM[1], o) for o in (5, 6, 7, 8)],
        CHANGELOG: [_record(CHANGELOG, 0)],
    }
    called = _drain_once(consumer, monkeypatch, fetched)

    assert [(m.tp, m.offset) for m in called] == [(CHANGELOG, 0)]
    batch = consumer.batches.get_nowait()
    assert consumer.batches.empty()
    assert [(m.tp, m.offset) for m in batch] == [
        *((STREAM[0], o) for o in (0, 1, 2)),
        *((STREAM[1], o) for o in (7, 8)),
    ]
    assert [m.value for m in batch[:1]] == [b"v0"]
    # Tracked as Faust's streams track them: a rebalance waits for them to be acknowledged.
    assert set(batch) <= set(consumer._unacked_messages)
    assert consumer._read_offset[STREAM[0]] == 2 and consumer._read_offset[STREAM[1]] == 8


def test_offsets_are_committable_only_up_to_acknowledged_batches(batch_app: Any, monkeypatch: Any) -> None:
    consumer = batch_app.consumer
    consumer._committed_offset[STREAM[0]] = None
    _drain_once(consumer, monkeypatch, {STREAM[0]: [_record(STREAM[0], o) for o in range(4)]})
    first = consumer.batches.get_nowait()
    assert consumer._new_offset(STREAM[0]) is None  # nothing acknowledged: nothing to commit

    faust_transport.ack(batch_app, first[:2])
    assert consumer._new_offset(STREAM[0]) == 2
    consumer._committed_offset[STREAM[0]] = 2  # what a commit records
    assert consumer._new_offset(STREAM[0]) is None
    faust_transport.ack(batch_app, first[2:])
    assert consumer._new_offset(STREAM[0]) == 4
    assert not set(first) & set(consumer._unacked_messages)


def test_take_batches_joins_fetches_and_drops_what_a_rebalance_outdated(batch_app: Any, monkeypatch: Any) -> None:
    consumer = batch_app.consumer
    monkeypatch.setattr(type(batch_app), "consumer_generation_id", 2, raising=False)
    _drain_once(consumer, monkeypatch, {STREAM[0]: [_record(STREAM[0], o) for o in range(3)]})
    old = consumer.batches.get_nowait()
    for m in old:
        m.generation_id = 1  # fetched before the last rebalance
    fresh = [consumer._to_message(STREAM[1], _record(STREAM[1], o)) for o in range(2)]
    more = [consumer._to_message(STREAM[1], _record(STREAM[1], o)) for o in range(2, 6)]

    async def take(max_messages: int) -> list[Any]:
        for fetch in (old, fresh, more):
            consumer.batches.put_nowait(fetch)
        batches = faust_transport.take_batches(batch_app, max_messages)
        return [await anext(batches), await anext(batches)]

    first, second = batch_app.loop.run_until_complete(take(max_messages=4))
    # The whole queue up to max_messages: old (3) + fresh (2); old is dropped, not processed.
    assert [(m.tp, m.offset) for m in first] == [(STREAM[1], 0), (STREAM[1], 1)]
    assert [m.offset for m in second] == [2, 3, 4, 5]  # a fetch is never split


def test_take_batches_drops_everything_while_flow_is_stopped(batch_app: Any) -> None:
    consumer = batch_app.consumer
    batch_app.flow_control.suspend()  # a rebalance is under way
    stale = [consumer._to_message(STREAM[0], _record(STREAM[0], 0))]

    async def take() -> Any:
        consumer.batches.put_nowait(stale)
        batches = faust_transport.take_batches(batch_app, 10)
        return await asyncio.wait_for(anext(batches), timeout=0.2)

    with pytest.raises(TimeoutError):
        batch_app.loop.run_until_complete(take())


def test_every_internal_the_transport_relies_on_is_there_in_the_installed_faust() -> None:
    faust_transport.check_internals()
    names = {(i.owner.__name__, i.name) for i in faust_transport.INTERNALS}
    assert {("Consumer", "_drain_messages"), ("AIOKafkaConsumer", "_fetch_max_wait_ms")} <= names


def test_a_missing_method_stops_install_naming_it_and_the_versions(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.delattr(faust.transport.consumer.Consumer, "_drain_messages")
    app = faust.App("check-test", broker="kafka://127.0.0.1:1", store="memory://", datadir=str(tmp_path))
    with pytest.raises(DependencyMismatchError) as raised:
        faust_transport.install(app, fetch_max_wait_ms=10)
    message = str(raised.value)
    assert message.startswith("faust.transport.drivers.aiokafka.Consumer._drain_messages (overridden: the fetch loop)")
    assert f"installed faust-streaming {importlib.metadata.version('faust-streaming')} / aiokafka " in message
    assert message.endswith("tested with faust-streaming 0.15.3 and aiokafka 0.14.x")
    assert app._transport is None  # nothing installed


def test_an_instance_attribute_no_longer_set_up_is_missing(monkeypatch: Any) -> None:
    def init(self: Any, *topics: str, **config: Any) -> None:  # an aiokafka that renamed the attribute
        self._fetch_max_wait = config.get("fetch_max_wait_ms", 500)

    monkeypatch.setattr(aiokafka.AIOKafkaConsumer, "__init__", init)
    with pytest.raises(
        DependencyMismatchError, match=r"^aiokafka\.consumer\.consumer\.AIOKafkaConsumer\._fetch_max_wait_ms "
    ):
        faust_transport.check_internals()


def test_the_tested_versions_named_in_the_error_are_the_pins() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    pins = {re.split(r"[=<>~!]", d, maxsplit=1)[0]: d for d in pyproject["project"]["dependencies"]}
    assert pins["faust-streaming"] == f"faust-streaming=={faust_transport.TESTED_FAUST}"
    assert pins["aiokafka"].startswith(f"aiokafka>={faust_transport.TESTED_AIOKAFKA},")
    assert importlib.metadata.version("faust-streaming") == faust_transport.TESTED_FAUST


class Stopped(Exception):
    pass


def _stop(why: str, exc_info: bool = False) -> None:
    raise Stopped(why)


def test_a_failed_seek_stops_the_process_uncommitted(consumer: Any, monkeypatch: Any) -> None:
    async def committed() -> dict[TP, int]:
        raise RuntimeError("coordinator gone")

    monkeypatch.setattr(consumer, "seek_to_committed", committed)
    monkeypatch.setattr(faust_transport, "stop_uncommitted", _stop)
    consumer._seek_pending = True
    consumer.resume_partitions(STREAM)
    with pytest.raises(Stopped, match="the seek failed: RuntimeError"):
        asyncio.run(consumer.perform_seek())


def test_a_seek_cancelled_outside_a_rebalance_stops_one_cancelled_by_a_rebalance_does_not(
    consumer: Any, monkeypatch: Any
) -> None:
    async def committed() -> dict[TP, int]:
        raise asyncio.CancelledError

    monkeypatch.setattr(consumer, "seek_to_committed", committed)
    monkeypatch.setattr(faust_transport, "stop_uncommitted", _stop)
    with pytest.raises(Stopped, match="timed out"):
        asyncio.run(consumer.perform_seek())

    consumer.app.tables.recovery.signal_recovery_start.set()  # a new rebalance started
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(consumer.perform_seek())
