"""The worker's batch pipeline without a broker: outputs, state, acknowledgement and the error
policy (an internal failure never acknowledges its batch and ends the process uncommitted)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import KafkaError
from prometheus_client import generate_latest

from model.schemas import Transaction
from model.scoring import ModelHolder
from model.train import TrainOptions, train
from producers.synthetic import SimConfig, generate
from streaming.fatal import EXIT_INTERNAL_ERROR
from streaming.kafka.outputs import OutputBatch
from streaming.metrics import WorkerMetrics
from streaming.scoring.merchant_risk import MerchantRisk
from streaming.scoring.review import ReviewCase
from streaming.scoring.rules import Rule, RuleBook, rule_record
from streaming.scoring.service import ScoringService
from streaming.scoring.state import changelog_key, decode_state
from streaming.settings import WorkerSettings
from streaming.worker.pipeline import BatchScorer, Pipeline
from tests.conftest import Exited, exit_raises

SETTINGS = WorkerSettings()
CHANGELOG = "fraudstream-cards-changelog"


@pytest.fixture(scope="module")
def holder(small_model_dir: Path) -> ModelHolder:
    holder = ModelHolder(small_model_dir)
    assert holder.load()
    return holder


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    timestamp: float
    key: bytes | None
    value: bytes | None


class FakeProducer:
    """Takes records like librdkafka's producer; reports each delivery (or ``error``) at once."""

    def __init__(self, error: KafkaError | None = None) -> None:
        self.records: list[dict[str, Any]] = []
        self.error = error

    def produce(self, topic: str, key: Any, value: Any, headers: Any, partition: int, on_delivery: Callable) -> None:
        self.records.append({"topic": topic, "key": key, "value": value, "headers": headers, "partition": partition})
        on_delivery(self.error, None)

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["topic"] == topic]


class FakeOutputs:
    def __init__(self, producer: FakeProducer) -> None:
        self.producer = producer

    def batch(self) -> OutputBatch:
        return OutputBatch(self.producer, asyncio.get_running_loop())


class FailingCards(dict):
    def __setitem__(self, key: str, value: bytes) -> None:
        raise OSError("state store unavailable")


def make_pipeline(
    holder: ModelHolder,
    producer: FakeProducer | None = None,
    cards: dict | None = None,
    challenger: ModelHolder | None = None,
    rules: RuleBook | None = None,
) -> tuple[Pipeline, FakeProducer, list[Sequence[Any]]]:
    producer = producer or FakeProducer()
    acked: list[Sequence[Any]] = []
    metrics = WorkerMetrics()
    service = ScoringService(holder, MerchantRisk(), challenger=challenger, rules=rules, metrics=metrics)
    scorer = BatchScorer(service, metrics, grace_ms=3_600_000)
    pipeline = Pipeline(
        SETTINGS,
        scorer,
        scorer.metrics,
        FakeOutputs(producer),  # type: ignore[arg-type]  # duck-typed: only batch() is used
        {} if cards is None else cards,
        CHANGELOG,
        ThreadPoolExecutor(max_workers=1),
        acked.append,
        exit=exit_raises,
    )
    pipeline.risk_sync_needed = False  # no replica in these tests
    return pipeline, producer, acked


def tx_message(offset: int, card: str = "card-1", partition: int = 0, **fields: Any) -> Msg:
    body = {
        "transaction_id": f"tx-{offset}",
        "timestamp": "2026-01-12T10:00:00+00:00",
        "card_id": card,
        "merchant_id": "m-1",
        "amount": 12.5,
        "currency": "USD",
        **fields,
    }
    ts = datetime(2026, 1, 12, 10, tzinfo=UTC).timestamp()
    return Msg(SETTINGS.transactions_topic, partition, offset, ts, card.encode(), orjson.dumps(body))


async def run_batch(pipeline: Pipeline, messages: Sequence[Msg]) -> None:
    acked = await pipeline.process(messages, None)
    await acked


def test_a_batch_is_decided_stored_dead_lettered_then_acknowledged(holder: ModelHolder) -> None:
    pipeline, producer, acked = make_pipeline(holder)
    bad = Msg(SETTINGS.transactions_topic, 0, 2, 1.7e9, b"card-1", b"{not json")
    messages = [tx_message(0), tx_message(1, card="card-2", partition=1), bad]

    asyncio.run(run_batch(pipeline, messages))

    decisions = [orjson.loads(r["value"]) for r in producer.on(SETTINGS.decisions_topic)]
    assert [d["transaction_id"] for d in decisions] == ["tx-0", "tx-1"]
    assert {d["model_version"] for d in decisions} == {holder.scorer.version}
    (dead,) = producer.on(SETTINGS.dlq_topic)
    headers = dict(dead["headers"])
    assert headers["error.reason"] == b"not_json" and headers["source.offset"] == b"2"
    assert dead["value"] == b"{not json"
    # Each card's new state is kept and written to the changelog on its own partition.
    changelog = {r["key"]: r for r in producer.on(CHANGELOG)}
    assert changelog[changelog_key("card-2")]["partition"] == 1
    assert decode_state(pipeline.cards["card-1"])["ids"] == ["tx-0"]
    assert acked == [messages]
    assert pipeline.processed == {0: 3, 1: 2}


def test_a_redelivered_transaction_is_decided_again_but_stored_once(holder: ModelHolder) -> None:
    pipeline, producer, _ = make_pipeline(holder)
    asyncio.run(run_batch(pipeline, [tx_message(0)]))
    asyncio.run(run_batch(pipeline, [tx_message(0)]))
    first, second = (orjson.loads(r["value"]) for r in producer.on(SETTINGS.decisions_topic))
    assert first["score"] == second["score"]
    assert decode_state(pipeline.cards["card-1"])["ids"] == ["tx-0"]


def test_labels_are_applied_and_bad_ones_dead_lettered(holder: ModelHolder) -> None:
    pipeline, producer, acked = make_pipeline(holder)
    label = {
        "transaction_id": "tx-0",
        "card_id": "card-1",
        "merchant_id": "m-1",
        "timestamp": "2026-01-12T10:00:00+00:00",
        "labelled_at": "2026-01-13T10:00:00+00:00",
        "is_fraud": True,
        "source": "chargeback",
    }
    good = Msg(SETTINGS.labels_topic, 0, 0, 1.7e9, b"card-1", orjson.dumps(label))
    wrong_key = Msg(SETTINGS.labels_topic, 0, 1, 1.7e9, b"card-9", orjson.dumps(label))

    asyncio.run(run_batch(pipeline, [good, wrong_key]))

    assert decode_state(pipeline.cards["card-1"])["lab"][0][0] == "tx-0"
    (dead,) = producer.on(SETTINGS.labels_dlq_topic)
    assert dict(dead["headers"])["error.reason"] == b"key_mismatch"
    assert producer.on(SETTINGS.merchant_risk_topic)
    assert acked == [[good, wrong_key]]


def test_a_failing_scoring_call_is_never_acknowledged(holder: ModelHolder, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, producer, acked = make_pipeline(holder)

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("model exploded")

    monkeypatch.setattr(pipeline.scorer.service, "score", broken)
    with pytest.raises(Exited) as exited:
        asyncio.run(run_batch(pipeline, [tx_message(0)]))
    assert exited.value.status == EXIT_INTERNAL_ERROR
    assert acked == []
    assert producer.on(SETTINGS.decisions_topic) == []
    assert pipeline.metrics.processing_errors._value.get() == 1  # noqa: SLF001  # prometheus_client has no public reader


def test_a_failing_state_write_is_never_acknowledged(holder: ModelHolder) -> None:
    pipeline, _, acked = make_pipeline(holder, cards=FailingCards())
    with pytest.raises(Exited):
        asyncio.run(run_batch(pipeline, [tx_message(0)]))
    assert acked == []


def test_a_failed_output_is_never_acknowledged(holder: ModelHolder) -> None:
    producer = FakeProducer(error=KafkaError(KafkaError._MSG_TIMED_OUT))
    pipeline, _, acked = make_pipeline(holder, producer=producer)
    with pytest.raises(Exited) as exited:
        asyncio.run(run_batch(pipeline, [tx_message(0)]))
    assert exited.value.status == EXIT_INTERNAL_ERROR
    assert acked == []


def test_a_revoked_partition_takes_its_cards_along(holder: ModelHolder) -> None:
    pipeline, _, _ = make_pipeline(holder)
    asyncio.run(run_batch(pipeline, [tx_message(0), tx_message(1, card="card-2", partition=1)]))
    pipeline.on_revoked({1})
    assert set(pipeline.cards) == {"card-1"}
    assert pipeline.processed == {0: 1}
    pipeline.on_assigned()
    assert pipeline.risk_sync_needed


def test_a_stalled_merchant_risk_replica_stops_the_worker(holder: ModelHolder, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, _, acked = make_pipeline(holder)

    class Stalled:
        def wait_until(self, ends: dict[int, int], timeout: float) -> bool:
            return False

    pipeline.replica = Stalled()  # type: ignore[assignment]  # only wait_until is used
    pipeline.risk_sync_needed = True
    monkeypatch.setattr("streaming.kafka.clients.end_offsets", lambda settings, topic: {0: 5})  # no broker here
    with pytest.raises(Exited):
        asyncio.run(run_batch(pipeline, [tx_message(0)]))
    assert acked == []


@pytest.fixture(scope="module")
def challenger(tmp_path_factory: pytest.TempPathFactory) -> ModelHolder:
    root = tmp_path_factory.mktemp("challenger")
    frame = generate(SimConfig(seed=4, n_cards=60, n_merchants=20, days=10, start=datetime(2026, 1, 1, tzinfo=UTC)))
    frame.to_csv(root / "d.csv", index=False)
    # Another model of the same data: without the merchant features (zeroed for it alone).
    train(root / "d.csv", root / "m", TrainOptions(model_type="logreg", merchant_risk=False))
    holder = ModelHolder(root / "m", optional=True)
    assert holder.load()
    return holder


def test_a_challenger_shadows_every_decision_in_the_same_output_batch(
    holder: ModelHolder, challenger: ModelHolder
) -> None:
    pipeline, producer, acked = make_pipeline(holder, challenger=challenger)
    messages = [tx_message(0), tx_message(1, card="card-2", partition=1), tx_message(2)]
    asyncio.run(run_batch(pipeline, messages))

    decisions = [orjson.loads(r["value"]) for r in producer.on(SETTINGS.decisions_topic)]
    shadow = producer.on(SETTINGS.shadow_decisions_topic)
    assert acked == [messages]
    # One shadow decision per decision, same keys and transactions, the challenger's version.
    assert [r["key"] for r in shadow] == [r["key"] for r in producer.on(SETTINGS.decisions_topic)]
    shadowed = [orjson.loads(r["value"]) for r in shadow]
    assert [d["transaction_id"] for d in shadowed] == [d["transaction_id"] for d in decisions]
    assert {d["model_version"] for d in shadowed} == {challenger.scorer.version} != {holder.scorer.version}
    assert set(shadowed[0]) == set(decisions[0])
    # The challenger scores the champion's features, with its own disabled features zeroed.
    txs = [Transaction.model_validate_json(m.value) for m in messages if m.value]
    scored = ScoringService(holder, MerchantRisk(), challenger=challenger).score(txs, {})
    expected = challenger.scorer.score_features(scored.batch.features).scores
    assert [d["score"] for d in scored.shadow] == pytest.approx(expected.tolist())
    # Its disabled features are zeroed on a copy: the champion's features stay as computed.
    features = np.tile(challenger.scorer._reference + 1.0, (2, 1))
    zeroed = challenger.scorer.score_features(features).features
    assert (features[:, challenger.scorer._disabled] != 0).all() and not zeroed[:, challenger.scorer._disabled].any()
    text = generate_latest(pipeline.metrics.registry).decode()
    for role, version in (("champion", holder.scorer.version), ("challenger", challenger.scorer.version)):
        series = f'fraud_model_score_count{{model_version="{version}",role="{role}"}} 3.0'
        assert series in text, text
    # Labels reach both sides: each role's live quality joins them.
    label = {
        "transaction_id": "tx-0", "card_id": "card-1", "merchant_id": "m-1", "is_fraud": True,
        "timestamp": "2026-01-12T10:00:00+00:00", "labelled_at": "2026-01-13T10:00:00+00:00", "source": "chargeback",
    }  # fmt: skip
    label_msg = Msg(SETTINGS.labels_topic, 0, 0, 1.7e9, b"card-1", orjson.dumps(label))
    asyncio.run(run_batch(pipeline, [label_msg]))
    assert pipeline.quality["champion"].labelled == pipeline.quality["challenger"].labelled == 1
    assert set(pipeline.quality["challenger"].summary()) == {challenger.scorer.version}


def test_no_shadow_without_a_challenger_or_when_it_is_the_champion(holder: ModelHolder) -> None:
    same = ModelHolder(holder.source, optional=True)
    assert same.load()
    for challenger in (None, same):
        pipeline, producer, _ = make_pipeline(holder, challenger=challenger)
        asyncio.run(run_batch(pipeline, [tx_message(0)]))
        assert len(producer.on(SETTINGS.decisions_topic)) == 1
        assert producer.on(SETTINGS.shadow_decisions_topic) == []


def test_shadow_decisions_go_through_the_same_rules_and_are_never_acted_on(
    holder: ModelHolder, challenger: ModelHolder
) -> None:
    rules = RuleBook()
    rules.apply(*rule_record(Rule(id="big", expression="amount > 100", action="block")))
    rules.apply(*rule_record(Rule(id="card-3", expression='card_id == "card-3"', action="review")))
    pipeline, producer, _ = make_pipeline(holder, challenger=challenger, rules=rules)
    messages = [tx_message(0, amount=500.0), tx_message(1, card="card-2"), tx_message(2, card="card-3")]
    asyncio.run(run_batch(pipeline, messages))

    live = {
        d["transaction_id"]: d for d in map(orjson.loads, (r["value"] for r in producer.on(SETTINGS.decisions_topic)))
    }
    shadow = {
        d["transaction_id"]: d
        for d in map(orjson.loads, (r["value"] for r in producer.on(SETTINGS.shadow_decisions_topic)))
    }
    assert {d["model_version"] for d in shadow.values()} == {challenger.scorer.version}
    # The same rule decides both: the shadow decision differs from the live one only by model.
    for tid, rule, action in (("tx-0", "rule:big", "block"), ("tx-2", "rule:card-3", "review")):
        for d in (live[tid], shadow[tid]):
            assert (d["decision"], d["decided_by"], d["reasons"][0]) == (action, rule, rule)
    assert live["tx-1"]["decided_by"] == shadow["tx-1"]["decided_by"] == "model"
    assert "rule:big" not in shadow["tx-1"]["reasons"]
    # Acted on once: one review case, rule decisions counted for the live decisions only.
    assert [r["key"] for r in producer.on(SETTINGS.review_topic)] == [b"tx-2"]
    text = generate_latest(pipeline.metrics.registry).decode()
    assert 'fraud_rule_decisions_total{decision="block",source="rule"} 1.0' in text, text
    assert 'fraud_rule_hits_total{action="review",mode="active",rule="card-3"} 1.0' in text, text


def test_review_decisions_leave_a_case_with_the_card_history(holder: ModelHolder) -> None:
    rules = RuleBook()
    rules.apply(*rule_record(Rule(id="all", expression="amount > 0", action="review")))
    pipeline, producer, _ = make_pipeline(holder, rules=rules)
    first, second = tx_message(0), tx_message(1)
    second.value = second.value.replace(b"10:00:00", b"10:05:00")  # type: ignore[union-attr]  # set above
    asyncio.run(run_batch(pipeline, [first]))
    asyncio.run(run_batch(pipeline, [second]))

    cases = {r["key"]: ReviewCase.model_validate_json(r["value"]) for r in producer.on(SETTINGS.review_topic)}
    assert set(cases) == {b"tx-0", b"tx-1"}
    case = cases[b"tx-1"]
    assert case.decision["decision"] == "review" and case.decision["decided_by"] == "rule:all"
    assert case.transaction["amount"] == 12.5
    assert [h.transaction_id for h in case.card_history] == ["tx-0"]
    assert cases[b"tx-0"].card_history == []
    assert set(case.features) >= {"amount", "card_tx_count_1h"} and case.features["card_tx_count_1h"] == 1.0
