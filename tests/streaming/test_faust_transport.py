"""The transport's two fixes to Faust's consumer, on a real (unstarted) Faust consumer object:
stream partitions stay paused until they are seeked, and fetches see a snapshot of the active set."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from faust.types import TP

from streaming import faust_transport


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
