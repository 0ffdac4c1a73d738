"""The replica thread's reading and resuming, against a scripted consumer (the real broker is in
tests/integration: the API's card copy and the merchant-risk view run on it)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING

from streaming.kafka import replica as replica_module
from streaming.kafka.replica import Replica
from streaming.settings import KafkaSettings


@dataclass
class _Msg:
    _partition: int
    _offset: int
    _key: bytes
    _value: bytes

    def error(self) -> None:
        return None

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


@dataclass
class _Consumer:
    """Serves ``log`` from wherever it is assigned, two records per call; once ``fail_after``
    records were served, the next call raises."""

    log: dict[int, list[tuple[bytes, bytes]]]
    fail_after: int | None = None
    assigned_at_start: dict[int, int] | None = None
    next_offset: dict[int, int] = field(default_factory=dict)
    served: int = 0

    def list_topics(self, topic: str, timeout: float) -> Any:
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions={p: None for p in self.log})})

    def assign(self, partitions: list[Any]) -> None:
        self.assigned_at_start = {tp.partition: tp.offset for tp in partitions}
        self.next_offset = {p: 0 if o == OFFSET_BEGINNING else o for p, o in self.assigned_at_start.items()}

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        return 0, len(self.log[tp.partition])

    def consume(self, n: int, timeout: float) -> list[_Msg]:
        if self.fail_after is not None and self.served >= self.fail_after:
            raise ConnectionError("broker went away")
        out: list[_Msg] = []
        for p, records in self.log.items():
            while self.next_offset[p] < len(records) and len(out) < 2:
                offset = self.next_offset[p]
                out.append(_Msg(p, offset, *records[offset]))
                self.next_offset[p] = offset + 1
        self.served += len(out)
        if not out:
            time.sleep(0.01)
        return out

    def close(self) -> None:
        pass


def test_after_an_error_the_replica_resumes_where_it_got_to(monkeypatch: pytest.MonkeyPatch) -> None:
    log = {0: [(b"a", b"1"), (b"b", b"1"), (b"a", b"2")], 1: [(b"c", b"1"), (b"c", b"2")]}
    # The first connection fails after four records; the second must not start over.
    first, second = _Consumer(log, fail_after=4), _Consumer(log)
    made = iter([first, second])
    monkeypatch.setattr(replica_module.kafka, "consumer", lambda *a, **k: next(made))
    applied: list[tuple[bytes, bytes | None]] = []
    rep = Replica(KafkaSettings(), "topic", lambda k, v: applied.append((k, v)), "test")
    pause = rep._stop_event.wait
    monkeypatch.setattr(rep._stop_event, "wait", lambda delay: pause(min(delay, 0.01)))  # no 5 s back-off
    rep.start()
    assert rep.wait_until({0: 3, 1: 2}, timeout=5)
    assert rep.caught_up.wait(timeout=5)
    rep.stop()
    rep.join(timeout=5)
    assert not rep.is_alive()
    assert first.assigned_at_start == {0: OFFSET_BEGINNING, 1: OFFSET_BEGINNING}
    assert second.assigned_at_start == {0: 3, 1: 1}
    # Every record once, in order per partition: nothing older was applied again.
    assert applied == [(b"a", b"1"), (b"b", b"1"), (b"a", b"2"), (b"c", b"1"), (b"c", b"2")]
    assert rep.last_error is None


class _Tail(Replica):
    """The last two records of each partition, handed on whole."""

    def __init__(self, received: list[tuple[int, int]]) -> None:
        super().__init__(KafkaSettings(), "topic", lambda k, v: None, "tail")
        self.received = received

    def start_offset(self, low: int, high: int) -> int:
        return max(low, high - 2)

    def receive(self, msg: Any) -> None:
        self.received.append((msg.partition(), msg.offset()))


def test_a_subclass_chooses_where_reading_starts_and_gets_whole_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    log = {0: [(b"a", b"1"), (b"b", b"1"), (b"a", b"2")], 1: [(b"c", b"1"), (b"c", b"2")], 2: []}
    first, second = _Consumer(log, fail_after=1), _Consumer(log)
    made = iter([first, second])
    monkeypatch.setattr(replica_module.kafka, "consumer", lambda *a, **k: next(made))
    received: list[tuple[int, int]] = []
    rep = _Tail(received)
    pause = rep._stop_event.wait
    monkeypatch.setattr(rep._stop_event, "wait", lambda delay: pause(min(delay, 0.01)))
    rep.start()
    assert rep.caught_up.wait(timeout=5)
    rep.stop()
    rep.join(timeout=5)
    assert first.assigned_at_start == {0: 1, 1: 0, 2: 0}
    # The first connection failed after two records; the second resumes where it got to.
    assert second.assigned_at_start == {0: 3, 1: 0, 2: 0}
    assert sorted(received) == [(0, 1), (0, 2), (1, 0), (1, 1)]
