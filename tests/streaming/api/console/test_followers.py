"""The console's in-memory views, fed record by record as their reader threads would (the threads
themselves run against the real broker in tests/integration/test_console.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest

from model.features import FEATURE_NAMES
from model.schemas import Label, Transaction, label_value
from streaming.api.console.followers import Followers, LiveFeed, ReviewQueue, read_case
from streaming.scoring.review import case_json
from streaming.settings import ApiSettings

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def tx(tx_id: str, card: str = "card-1") -> Transaction:
    return Transaction(
        transaction_id=tx_id, timestamp=T0, card_id=card, merchant_id="m-1", amount=120.0, currency="EUR"
    )


def case(tx_id: str, decided_min: float, score: float = 0.5, card: str = "card-1") -> tuple[bytes, bytes]:
    """A review-topic record of ``tx_id``, decided ``decided_min`` minutes after T0."""
    fields: dict[str, Any] = {
        "schema_version": 1,
        "transaction_id": tx_id,
        "card_id": card,
        "score": score,
        "decision": "review",
        "reasons": ["amount_high"],
        "model_version": "v1",
        "event_timestamp": T0,
        "scored_at": T0 + timedelta(minutes=decided_min),
        "card_state": "empty",
        "decided_by": "model",
    }
    value = case_json(fields, tx(tx_id, card), np.arange(len(FEATURE_NAMES), dtype=np.float64), None, 0)
    return tx_id.encode(), value


def label(tx_id: str, is_fraud: bool = True, by: str | None = "ana", card: str = "card-1") -> Label:
    return Label(
        transaction_id=tx_id,
        card_id=card,
        merchant_id="m-1",
        is_fraud=is_fraud,
        timestamp=T0,
        labelled_at=T0 + timedelta(days=1),
        source="manual",
        labelled_by=by,
    )


def ids(queue: ReviewQueue) -> list[str]:
    return [c.transaction_id for c in queue.oldest(100)]


def test_the_queue_is_oldest_first_whatever_order_the_cases_arrive_in() -> None:
    queue = ReviewQueue()
    for tx_id, minute in (("c", 3), ("a", 1), ("d", 4), ("b", 2)):
        queue.apply_case(*case(tx_id, minute))
    assert ids(queue) == ["a", "b", "c", "d"]
    assert queue.oldest(2)[0].amount == 120.0 and queue.oldest(2)[0].reasons == ("amount_high",)
    # A redelivered transaction's new case keeps the place of the first.
    queue.apply_case(*case("a", 10, score=0.6))
    assert ids(queue) == ["a", "b", "c", "d"] and queue.oldest(1)[0].score == 0.6
    _, decision, transaction = read_case(queue.case("a") or b"")
    assert decision.score == 0.6 and transaction.card_id == "card-1"


def test_labelled_cases_leave_the_queue_with_who_and_when() -> None:
    queue = ReviewQueue()
    for tx_id, minute in (("a", 1), ("b", 2), ("c", 3)):
        queue.apply_case(*case(tx_id, minute))
    queue.apply_label(label("b", is_fraud=False, by="ana"))
    assert ids(queue) == ["a", "c"] and len(queue) == 2
    assert queue.case("b") is None and queue.labelled("b")
    (done,) = queue.recent()
    assert (done.case.transaction_id, done.is_fraud, done.labelled_by, done.source) == ("b", False, "ana", "manual")
    assert done.labelled_at == T0 + timedelta(days=1)
    # The same label again (the console's own, read back from the topic) changes nothing.
    queue.apply_label(label("b", is_fraud=False))
    assert len(queue.recent()) == 1
    # A case that arrives after its label (a restart reads both topics) is never queued.
    queue.apply_label(label("z"))
    queue.apply_case(*case("z", 0))
    assert ids(queue) == ["a", "c"]


def test_the_queue_holds_the_oldest_cases_up_to_its_bound() -> None:
    queue = ReviewQueue(max_cases=3)
    for tx_id, minute in (("b", 2), ("d", 4), ("c", 3)):
        queue.apply_case(*case(tx_id, minute))
    queue.apply_case(*case("e", 5))  # newer than all held: not held
    assert ids(queue) == ["b", "c", "d"] and queue.not_held == 1
    queue.apply_case(*case("a", 1))  # older: pushes out the newest held
    assert ids(queue) == ["a", "b", "c"] and queue.not_held == 2
    queue.apply_label(label("a"))  # room again: the next case is held
    queue.apply_case(*case("f", 6))
    assert ids(queue) == ["b", "c", "f"]


def test_the_labelled_ids_are_bounded_oldest_forgotten_first() -> None:
    queue = ReviewQueue(max_labels=2)
    for tx_id in ("x", "y", "z"):
        queue.apply_label(label(tx_id))
    assert not queue.labelled("x") and queue.labelled("y") and queue.labelled("z")
    queue.apply_case(*case("x", 1))  # its label was forgotten: it is queued again
    queue.apply_case(*case("y", 2))
    assert ids(queue) == ["x"]


def test_tombstones_and_bad_records_are_handled_not_raised() -> None:
    queue = ReviewQueue()
    queue.apply_case(*case("a", 1))
    queue.apply_case(*case("b", 2))
    queue.apply_case(b"a", None)
    assert ids(queue) == ["b"]
    queue.apply_case(b"c", b"not json")
    queue.apply_case(b"d", orjson.dumps({"decision": {}, "transaction": {}, "features": {}, "card_history": []}))
    queue.apply_case(b"other", case("e", 3)[1])  # the key names another transaction
    assert ids(queue) == ["b"] and queue.invalid == 3


def decision(tx_id: str, outcome: str = "allow", version: str = "v1", by: str = "model") -> dict[str, Any]:
    return {
        "transaction_id": tx_id,
        "card_id": "card-1",
        "score": 0.9 if outcome == "block" else 0.1,
        "decision": outcome,
        "reasons": [by] if by != "model" else [],
        "model_version": version,
        "event_timestamp": "2026-03-01T12:00:00+00:00",
        "scored_at": "2026-03-01T12:00:01Z",
        "decided_by": by,
    }


def test_latency_joins_a_decision_to_its_transaction_whichever_is_read_first() -> None:
    feed = LiveFeed()
    feed.add_transaction("t1", 1_000)
    feed.add_decision(decision("t1"), 1_040)
    feed.add_decision(decision("t2"), 2_100)  # its transaction is read after it
    feed.add_transaction("t2", 2_000)
    feed.add_decision(decision("t3"), 3_000)  # never joined
    view = feed.view(now_ms=3_500)
    assert [d.transaction_id for d in view.latest] == ["t3", "t2", "t1"]
    assert [d.latency_ms for d in view.latest] == [None, 100, 40]
    assert view.latency_samples == 2 and view.latency_ms is not None
    assert view.latency_ms["p50"] == pytest.approx(70) and view.latency_ms["max"] == 100


def test_counts_are_over_the_most_recent_window() -> None:
    feed = LiveFeed(shown=2, window=3)
    now = 100_000
    for i, (outcome, by) in enumerate(
        [("block", "model"), ("allow", "model"), ("review", "rule:r1"), ("block", "rule:r2"), ("allow", "model")]
    ):
        feed.add_decision(decision(f"t{i}", outcome, by=by), now - 1000 * i)
    view = feed.view(now_ms=now + 1)
    assert view.window == 3 and len(view.latest) == 2
    assert [d.transaction_id for d in view.flagged] == ["t3", "t2", "t0"]
    assert view.counts == {"allow": 1, "review": 1, "block": 1}
    assert view.decided_by == {"model": 1, "rule": 2}
    assert view.per_second == pytest.approx(5 / 60)
    assert view.decisions_read == 5
    # Decisions older than a minute are not in the rate.
    assert feed.view(now_ms=now + 61_000).per_second == 0


def test_live_quality_per_model_version_joins_labels() -> None:
    feed = LiveFeed()
    feed.add_decision(decision("t1", "block", "v1"), 1)
    feed.add_decision(decision("t2", "allow", "v1"), 2)
    feed.add_decision(decision("t3", "review", "v2"), 3)
    feed.add_label("t1", True)
    feed.add_label("t2", True)
    feed.add_label("t3", False)
    feed.add_label("t9", True)  # no decision (yet): waits, not counted
    quality = feed.view().quality
    assert quality["v1"]["thresholds"]["block"]["precision"] == 1.0
    assert quality["v1"]["thresholds"]["block"]["recall"] == 0.5
    assert quality["v2"]["thresholds"]["review"]["precision"] == 0.0
    assert feed.view().labelled == 3


def test_a_decision_without_the_fields_the_view_needs_is_counted_not_shown() -> None:
    feed = LiveFeed()
    feed.add_decision({**decision("t1"), "decision": "maybe"}, 1)
    feed.add_decision({k: v for k, v in decision("t2").items() if k != "card_id"}, 1)
    assert feed.invalid == 2 and feed.view().latest == []


@dataclass
class Msg:
    _key: bytes | None
    _value: bytes | None
    _ts: int = 1_000

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return 1, self._ts


def test_followers_apply_only_labels_the_worker_would_accept() -> None:
    followers = Followers(ApiSettings())
    followers._case(Msg(*case("a", 1)))
    followers._case(Msg(*case("b", 2)))
    followers._label(Msg(b"another-card", label_value(label("a"))))  # not keyed by its card
    followers._label(Msg(b"card-1", b"{}"))
    assert followers.invalid_labels == 2 and len(followers.queue) == 2
    followers._label(Msg(b"card-1", label_value(label("a"))))
    assert ids(followers.queue) == ["b"]
    followers._decision(Msg(b"card-1", orjson.dumps(decision("a", "review")), 5_000))
    followers._transaction(Msg(b"card-1", orjson.dumps({"transaction_id": "a"}), 4_990))
    followers._transaction(Msg(b"card-1", b"not json"))
    view = followers.feed.view()
    assert view.latest[0].latency_ms == 10 and view.labelled == 1
