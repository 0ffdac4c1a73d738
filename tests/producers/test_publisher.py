"""Publishing labels in event time: the merge order, CSV label columns and the publish loop.

The publish loop runs against an in-process stand-in for the Kafka producer that records what was
produced and answers deliveries on poll/flush like librdkafka does; tests/integration covers a
real broker.
"""

from __future__ import annotations

import gc
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

from model.dataset import load_csv
from model.schemas import Label
from producers.publisher import (
    CsvLabels,
    Publisher,
    csv_labels,
    event_order,
    label_events,
    label_value,
    rows_from_frame,
)
from producers.synthetic import SimConfig, generate, iter_records, labels_for, with_label_columns
from streaming.metrics import ProducerMetrics
from streaming.scoring.validation import parse_label
from streaming.settings import ProducerSettings

CONFIG = SimConfig(seed=5, n_cards=200, n_merchants=60, days=20.0, start=datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate(CONFIG)


@pytest.fixture(scope="module")
def labels(frame: pd.DataFrame) -> pd.DataFrame:
    return labels_for(frame, CONFIG)


def instant(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


# --- a stand-in for confluent_kafka.Producer ----------------------------------------------------


@dataclass
class _Message:
    _topic: str
    _key: bytes
    _value: bytes

    def value(self) -> bytes:
        return self._value


@dataclass
class RecordingProducer:
    """Keeps produced records in order; delivers (or fails, for ``fail_topics``) on poll/flush."""

    fail_topics: set[str] = field(default_factory=set)
    records: list[tuple[str, bytes, bytes, float]] = field(default_factory=list)
    pending: list[tuple[Any, _Message]] = field(default_factory=list)
    #: Records produced before the publisher asked for the topic's metadata (None: never asked).
    connected_before: int | None = None
    polls: int = 0

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
        self.records.append((topic, key, value, time.monotonic()))
        self.pending.append((on_delivery, _Message(topic, key, value)))

    def poll(self, timeout: float = 0.0) -> int:
        self.polls += 1
        if not self.pending and timeout > 0:
            time.sleep(int(timeout * 1000) / 1000)  # as librdkafka: whole milliseconds
        done, self.pending = self.pending, []
        for callback, msg in done:
            callback("broker said no" if msg._topic in self.fail_topics else None, msg)
        return len(done)

    def flush(self, timeout: float = 0.0) -> int:
        self.poll()
        return 0

    def list_topics(self, topic: str, timeout: float) -> None:
        self.connected_before = len(self.records)


def publisher(producer: RecordingProducer) -> Publisher:
    settings = ProducerSettings(transactions_topic="tx", labels_topic="labels", metrics_port=0)
    return Publisher(settings, ProducerMetrics(), producer=producer)  # type: ignore[arg-type]


def kinds_in_event_time(records: list[tuple[str, bytes, bytes, float]]) -> list[tuple[str, float]]:
    out = []
    for topic, _key, value, _ in records:
        data = orjson.loads(value)
        out.append((topic, instant(data["timestamp"] if topic == "tx" else data["labelled_at"])))
    return out


# --- event order --------------------------------------------------------------------------------


def _label(tx: str, ts: str, at: str, card: str = "c") -> Label:
    return Label.model_validate(
        {
            "transaction_id": tx,
            "card_id": card,
            "merchant_id": "m",
            "is_fraud": True,
            "timestamp": ts,
            "labelled_at": at,
            "source": "chargeback",
        }
    )


def test_event_order_merges_by_instant_with_transactions_first_on_ties() -> None:
    rows = [
        {"transaction_id": "a", "timestamp": "2026-01-01T10:00:00+01:00"},  # 09:00Z
        {"transaction_id": "b", "timestamp": "2026-01-01T05:00:00-05:00"},  # 10:00Z, lexically smaller
        {"transaction_id": "c", "timestamp": "2026-01-01T12:00:00Z"},
    ]
    lbs = [
        _label("a", "2026-01-01T09:00:00Z", "2026-01-01T09:30:00Z"),
        _label("a", "2026-01-01T09:00:00Z", "2026-01-01T15:00:00+05:00"),  # 10:00Z: ties with b
        _label("b", "2026-01-01T10:00:00Z", "2026-01-02T00:00:00Z"),  # after every transaction
    ]
    got = [(kind, item["transaction_id"] if kind == "transaction" else item.labelled_at.isoformat())
           for kind, _, item in event_order(rows, lbs)]  # fmt: skip
    assert got == [
        ("transaction", "a"),
        ("label", "2026-01-01T09:30:00+00:00"),
        ("transaction", "b"),
        ("label", "2026-01-01T15:00:00+05:00"),
        ("transaction", "c"),
        ("label", "2026-01-02T00:00:00+00:00"),
    ]
    assert [kind for kind, _, _ in event_order(rows, [])] == ["transaction"] * 3


def test_label_value_is_the_label_contract_and_parses_back() -> None:
    label = _label("tx-1", "2026-01-01T10:00:00+05:30", "2026-01-08T09:00:00Z", card="card-9")
    raw = label_value(label)
    data = orjson.loads(raw)
    # labelled_by is optional and left off when unknown (a label without it is what it was before).
    assert set(data) == set(Label.model_fields) - {"labelled_by"}
    assert data["is_fraud"] is True and data["schema_version"] == 1
    back = parse_label(raw)
    assert back == label


# --- labels of a replayed CSV -------------------------------------------------------------------


def test_csv_labels_are_the_csv_columns(frame: pd.DataFrame, labels: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "labelled.csv"
    with_label_columns(frame, labels).to_csv(path, index=False)
    got = csv_labels(path, load_csv(path).frame)
    assert isinstance(got, CsvLabels)
    assert got.defaulted == 0 and got.invalid == {}
    assert len(got.labels) == len(labels)
    assert [label.transaction_id for label in got.labels] == labels["transaction_id"].tolist()
    assert [label.source for label in got.labels] == labels["source"].tolist()
    assert [label.is_fraud for label in got.labels] == labels["is_fraud"].tolist()
    expected_at = [instant(s) for s in labels["labelled_at"]]
    assert [label.labelled_at.timestamp() for label in got.labels] == pytest.approx(expected_at, abs=1e-3)
    # The label's timestamp is the transaction's instant (the replay writes it to the millisecond).
    expected_ts = [instant(s) for s in labels["timestamp"]]
    assert [label.timestamp.timestamp() for label in got.labels] == pytest.approx(expected_ts, abs=1e-3)
    assert all(label.card_id.startswith("card-") for label in got.labels)


def test_csv_without_label_columns_labels_its_frauds_after_the_default_delay(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "plain.csv"
    frame.to_csv(path, index=False)
    data = load_csv(path).frame
    got = csv_labels(path, data, label_delay_days=3.5)
    fraud = frame.loc[frame["is_fraud"] == 1]
    assert got.defaulted == len(fraud) == len(got.labels)
    assert {label.transaction_id for label in got.labels} == set(fraud["transaction_id"])
    assert all(label.is_fraud and label.source == "chargeback" for label in got.labels)
    for label in got.labels:
        assert label.labelled_at - label.timestamp == timedelta(days=3.5)
        assert label.labelled_at.utcoffset() == label.timestamp.utcoffset()  # the card's local offset
    times = [label.labelled_at.timestamp() for label in got.labels]
    assert times == sorted(times)


def test_csv_label_columns_row_by_row(tmp_path: Path) -> None:
    header = "transaction_id,timestamp,card_id,merchant_id,amount,is_fraud,labelled_at,label_source\n"
    rows = [
        # fraud, no label columns: default delay (2 days), chargeback
        "t1,2026-01-01T10:00:00+01:00,c1,m1,10,1,,",
        # genuine with a verdict: an is_fraud=false label at its labelled_at
        "t2,2026-01-01T11:00:00Z,c2,m1,10,0,2026-01-03T08:00:00Z,investigation",
        # genuine without label columns: no label
        "t3,2026-01-01T12:00:00Z,c3,m1,10,0,,",
        # fraud with a source but no labelled_at: default delay, its own source
        "t4,2026-01-01T13:00:00Z,c4,m1,10,1,,customer_confirmed",
        # fraud with an unknown source: no label, counted
        "t5,2026-01-01T14:00:00Z,c5,m1,10,1,2026-01-02T00:00:00Z,rumour",
        # fraud labelled before it happened, and one without a zone: no label (counted, or the
        # loader already excluded the row)
        "t6,2026-01-01T15:00:00Z,c6,m1,10,1,2026-01-01T14:00:00Z,chargeback",
        "t7,2026-01-01T16:00:00Z,c7,m1,10,1,2026-01-05T00:00:00,chargeback",
        # a genuine row with only a source: no label (nothing says it was ever labelled)
        "t8,2026-01-01T17:00:00Z,c8,m1,10,0,,manual",
    ]
    path = tmp_path / "rows.csv"
    path.write_text(header + "\n".join(rows) + "\n")
    data = load_csv(path).frame
    got = csv_labels(path, data, label_delay_days=2)
    by_id = {label.transaction_id: label for label in got.labels}
    assert set(by_id) == {"t1", "t2", "t4"}
    assert [label.transaction_id for label in got.labels] == ["t2", "t1", "t4"]  # 08:00Z, 09:00Z, 13:00Z
    assert by_id["t1"].labelled_at == datetime.fromisoformat("2026-01-03T10:00:00+01:00")
    assert by_id["t1"].source == "chargeback" and by_id["t1"].is_fraud is True
    assert by_id["t2"].is_fraud is False and by_id["t2"].source == "investigation"
    assert by_id["t2"].labelled_at == datetime.fromisoformat("2026-01-03T08:00:00+00:00")
    assert by_id["t4"].source == "customer_confirmed"
    assert got.defaulted == 2
    assert got.invalid["bad_source"] == 1 and got.examples["bad_source"] == ["t5"]
    still_there = {"t6", "t7"} & set(data["transaction_id"])
    assert got.invalid.get("bad_labelled_at", 0) == len(still_there)
    assert "bad_source: 1 (e.g. t5)" in got.summary()


def test_negative_default_delay_is_refused(frame: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    frame.head(50).to_csv(path, index=False)
    with pytest.raises(ValueError, match="label_delay_days"):
        csv_labels(path, load_csv(path).frame, label_delay_days=-1)


# --- the publish loop ---------------------------------------------------------------------------


def test_publish_interleaves_labels_in_event_time(frame: pd.DataFrame, labels: pd.DataFrame) -> None:
    producer = RecordingProducer()
    pub = publisher(producer)
    events = label_events(labels)
    stats = pub.publish(iter_records(frame), labels=events)

    assert stats.sent == stats.acked == len(frame) and stats.failed == 0
    assert stats.labels == stats.labels_acked == len(labels) and stats.labels_failed == 0
    assert stats.fraud == int(frame["is_fraud"].sum())
    order = kinds_in_event_time(producer.records)
    times = [t for _, t in order]
    assert times == sorted(times)  # one event-time order across both topics
    # Labels really are interleaved, not all at the end: most come before the last transaction.
    last_tx = max(i for i, (topic, _) in enumerate(order) if topic == "tx")
    assert sum(1 for topic, _ in order[:last_tx] if topic == "labels") > len(labels) // 2
    # Each label after its own transaction; keyed by card id; a valid label event.
    position = {orjson.loads(v)["transaction_id"]: i for i, (t, _, v, _) in enumerate(producer.records) if t == "tx"}
    for i, (topic, key, value, _) in enumerate(producer.records):
        if topic == "labels":
            label = parse_label(value)
            assert isinstance(label, Label)
            assert key == label.card_id.encode()
            assert position[label.transaction_id] < i
        else:
            assert "is_fraud" not in orjson.loads(value)


def test_publish_without_labels_sends_transactions_only(frame: pd.DataFrame) -> None:
    producer = RecordingProducer()
    stats = publisher(producer).publish(iter_records(frame.head(300)))
    assert stats.sent == 300 and stats.labels == 0
    assert {topic for topic, *_ in producer.records} == {"tx"}


def test_count_stops_before_labels_known_after_the_last_transaction(frame: pd.DataFrame, labels: pd.DataFrame) -> None:
    producer = RecordingProducer()
    stats = publisher(producer).publish(iter_records(frame), labels=label_events(labels), count=5000)
    assert stats.sent == 5000
    last_tx_time = instant(frame["timestamp"].iloc[4999])
    sent_labels = [orjson.loads(v) for t, _, v, _ in producer.records if t == "labels"]
    expected = labels.loc[labels["labelled_at"].map(instant) <= last_tx_time]
    assert [lb["transaction_id"] for lb in sent_labels] == expected["transaction_id"].tolist()
    assert stats.labels == len(expected) > 0


def test_rate_paces_transactions_only(frame: pd.DataFrame) -> None:
    # 20 transactions at 100/s take ~0.19 s, with 10 labels due at each of them.
    rows = frame.head(20)
    many = [
        _label(r["transaction_id"], r["timestamp"], r["timestamp"], card=r["card_id"])
        for r in rows.to_dict("records")
        for _ in range(10)
    ]
    producer = RecordingProducer()
    start = time.monotonic()
    stats = publisher(producer).publish(iter_records(rows), labels=many, rate=100.0)
    took = time.monotonic() - start
    assert stats.sent == 20 and stats.labels == 200
    assert 0.17 < took < 1.0
    topics = [t for t, *_ in producer.records]
    assert topics == (["tx"] + ["labels"] * 10) * 20  # each label right after its transaction
    tx_times = [at for t, _, _, at in producer.records if t == "tx"]
    assert tx_times[-1] - tx_times[0] == pytest.approx(0.19, abs=0.05)
    assert producer.connected_before == 0  # connected before the pacing clock started


def test_fast_rates_wait_without_spinning_on_poll(frame: pd.DataFrame) -> None:
    # At 2,000/s the gaps are under a millisecond, which librdkafka's poll cannot wait: polling
    # through them spun a core (thousands of calls here) instead of sleeping.
    rows = frame.head(200)
    producer = RecordingProducer()
    start = time.monotonic()
    stats = publisher(producer).publish(iter_records(rows), rate=2000.0)
    assert stats.sent == 200
    assert time.monotonic() - start >= 0.099  # paced: 199 gaps of 0.5 ms
    assert producer.polls < 3 * len(rows)


def test_speedup_paces_labels_by_labelled_at() -> None:
    rows = [
        {"transaction_id": "a", "timestamp": "2026-01-01T00:00:00Z", "card_id": "c", "merchant_id": "m",
         "amount": 1.0, "currency": "USD"},
    ]  # fmt: skip
    late = _label("a", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z")  # one event hour later
    producer = RecordingProducer()
    stats = publisher(producer).publish(rows, labels=[late], speedup=3600 / 0.3)  # an hour in 0.3 s
    assert stats.sent == 1 and stats.labels == 1
    (_, _, _, t_tx), (_, _, _, t_label) = producer.records
    assert t_label - t_tx == pytest.approx(0.3, abs=0.1)


def test_failed_label_deliveries_are_counted_apart(frame: pd.DataFrame, labels: pd.DataFrame) -> None:
    producer = RecordingProducer(fail_topics={"labels"})
    pub = publisher(producer)
    stats = pub.publish(iter_records(frame.head(3000)), labels=label_events(labels), count=3000)
    assert stats.failed == 0 and stats.acked == 3000
    assert stats.labels > 0 and stats.labels_failed == stats.labels and stats.labels_acked == 0
    assert stats.errors and stats.errors[0].startswith("label: ")
    assert pub.metrics.failed._value.get() == stats.labels  # fraud_producer_errors_total
    assert pub.metrics.sent._value.get() == 3000  # transactions only


def test_csv_replay_rows_and_labels_together(frame: pd.DataFrame, labels: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "replay.csv"
    with_label_columns(frame, labels).to_csv(path, index=False)
    data = load_csv(path).frame
    producer = RecordingProducer()
    stats = publisher(producer).publish(rows_from_frame(data), labels=csv_labels(path, data).labels)
    assert stats.sent == len(frame) and stats.labels == len(labels)
    times = [t for _, t in kinds_in_event_time(producer.records)]
    assert times == sorted(times)


def test_a_publisher_and_its_producer_go_when_dropped_without_a_collection() -> None:
    # The statistics callback must not hold the publisher: that cycle kept the producer and its
    # broker connections alive until some later garbage collection.
    settings = ProducerSettings(kafka_bootstrap_servers="127.0.0.1:9", metrics_port=0)
    gc.disable()
    try:
        pub = Publisher(settings, ProducerMetrics())
        gone = weakref.ref(pub)
        del pub
        assert gone() is None
    finally:
        gc.enable()
