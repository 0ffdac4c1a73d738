"""QualityTracker: decisions joined to later labels, precision and recall per model version."""

from __future__ import annotations

import orjson
import pytest

from streaming.quality import QualityTracker, format_quality, parse_decision


def block_stats(t: QualityTracker, mv: str = "v1", threshold: str = "block") -> dict:
    return t.summary()[mv]["thresholds"][threshold]


def test_label_after_decision_joins_and_counts() -> None:
    t = QualityTracker()
    t.add_decision("tx-1", "v1", "block", 0.97, 1_000)
    assert t.add_label("tx-1", True) is True
    s = t.summary()["v1"]
    assert (s["decisions"], s["labelled"], s["labelled_fraud"]) == (1, 1, 1)
    assert block_stats(t) == {"flagged_labelled": 1, "true_positives": 1, "precision": 1.0, "recall": 1.0}
    assert t.counts() == {("v1", "block", True): 1}


def test_label_before_decision_waits_and_joins_when_the_decision_comes() -> None:
    t = QualityTracker()
    assert t.add_label("tx-1", False) is False
    assert t.pending_labels == 1
    assert t.summary() == {}
    t.add_decision("tx-1", "v1", "review", 0.5, 1_000)
    assert t.pending_labels == 0
    assert t.late_joins == 1
    s = t.summary()["v1"]
    assert (s["labelled"], s["labelled_fraud"]) == (1, 0)
    review = s["thresholds"]["review"]
    assert review == {"flagged_labelled": 1, "true_positives": 0, "precision": 0.0, "recall": None}
    # A second label for it now joins directly.
    assert t.add_label("tx-1", True) is True
    assert t.summary()["v1"]["thresholds"]["review"]["true_positives"] == 1


def test_pending_label_latest_wins() -> None:
    t = QualityTracker()
    t.add_label("tx-1", True)
    t.add_label("tx-1", False)
    assert t.pending_labels == 1
    t.add_decision("tx-1", "v1", "block", 0.9, 1)
    assert t.counts() == {("v1", "block", False): 1}


def test_a_transaction_labelled_twice_counts_once_and_relabel_moves_the_counts() -> None:
    t = QualityTracker()
    t.add_decision("tx-1", "v1", "block", 0.95, 1)
    t.add_decision("tx-2", "v1", "allow", 0.01, 2)
    t.add_label("tx-1", True)
    t.add_label("tx-1", True)  # the same verdict again (a redelivered label)
    t.add_label("tx-2", True)
    s = t.summary()["v1"]
    assert (s["labelled"], s["labelled_fraud"]) == (2, 2)
    assert block_stats(t) == {"flagged_labelled": 1, "true_positives": 1, "precision": 1.0, "recall": 0.5}

    t.add_label("tx-1", False)  # investigation overturns the chargeback
    s = t.summary()["v1"]
    assert (s["labelled"], s["labelled_fraud"]) == (2, 1)
    assert block_stats(t) == {"flagged_labelled": 1, "true_positives": 0, "precision": 0.0, "recall": 0.0}
    assert t.counts() == {("v1", "block", True): 0, ("v1", "block", False): 1, ("v1", "allow", True): 1}


def test_precision_and_recall_by_hand_per_model_version() -> None:
    t = QualityTracker()
    # v1: block F, block G, review F, review G, review G, allow F, allow G  (F = fraud, G = genuine)
    rows = [
        ("a", "block", True),
        ("b", "block", False),
        ("c", "review", True),
        ("d", "review", False),
        ("e", "review", False),
        ("f", "allow", True),
        ("g", "allow", False),
    ]
    for i, (tx, decision, fraud) in enumerate(rows):
        t.add_decision(tx, "v1", decision, 0.5, i)
        t.add_label(tx, fraud)
    t.add_decision("unlabelled", "v1", "block", 0.99, 99)
    # v2: one labelled review (genuine), nothing fraud.
    t.add_decision("h", "v2", "review", 0.4, 1)
    t.add_label("h", False)

    s = t.summary()
    v1 = s["v1"]
    assert (v1["decisions"], v1["labelled"], v1["labelled_fraud"]) == (8, 7, 3)
    # review threshold: flagged labelled = a, b, c, d, e (5); TP = a, c (2); fraud = a, c, f (3)
    assert v1["thresholds"]["review"]["flagged_labelled"] == 5
    assert v1["thresholds"]["review"]["true_positives"] == 2
    assert v1["thresholds"]["review"]["precision"] == pytest.approx(2 / 5)
    assert v1["thresholds"]["review"]["recall"] == pytest.approx(2 / 3)
    # block threshold: flagged labelled = a, b (2); TP = a (1)
    assert v1["thresholds"]["block"]["flagged_labelled"] == 2
    assert v1["thresholds"]["block"]["precision"] == pytest.approx(1 / 2)
    assert v1["thresholds"]["block"]["recall"] == pytest.approx(1 / 3)

    v2 = s["v2"]
    assert (v2["decisions"], v2["labelled"], v2["labelled_fraud"]) == (1, 1, 0)
    assert v2["thresholds"]["review"]["precision"] == 0.0
    assert v2["thresholds"]["review"]["recall"] is None  # no labelled fraud
    assert v2["thresholds"]["block"] == {
        "flagged_labelled": 0,
        "true_positives": 0,
        "precision": None,  # nothing flagged at block was labelled
        "recall": None,
    }


def test_a_version_with_decisions_but_no_labels_is_reported_with_none() -> None:
    t = QualityTracker()
    t.add_decision("tx-1", "v1", "block", 0.9, 1)
    s = t.summary()["v1"]
    assert (s["decisions"], s["labelled"], s["labelled_fraud"]) == (1, 0, 0)
    for threshold in ("review", "block"):
        assert s["thresholds"][threshold]["precision"] is None
        assert s["thresholds"][threshold]["recall"] is None


def test_redelivered_decision_replaces_the_earlier_one_and_moves_its_label() -> None:
    t = QualityTracker()
    t.add_decision("tx-1", "v1", "review", 0.6, 1)
    t.add_label("tx-1", True)
    # Rescored after a model reload (redelivery): the latest decision counts, once.
    t.add_decision("tx-1", "v2", "block", 0.9, 1)
    assert t.retained_decisions == 1
    s = t.summary()
    assert s["v1"]["decisions"] == 0 and s["v1"]["labelled"] == 0
    assert s["v2"]["decisions"] == 1 and s["v2"]["labelled"] == 1
    assert s["v2"]["thresholds"]["block"]["true_positives"] == 1


def test_decisions_are_bounded_oldest_evicted_first() -> None:
    t = QualityTracker(max_decisions=3)
    for i in range(5):
        t.add_decision(f"tx-{i}", "v1", "block", 0.9, i)
    t.add_decision("tx-2", "v1", "block", 0.9, 2)  # refreshed: now the newest
    t.add_decision("tx-5", "v1", "block", 0.9, 5)  # evicts tx-3, the oldest left
    assert t.retained_decisions == 3
    assert t.evicted_decisions == 3  # tx-0, tx-1, tx-3
    assert t.add_label("tx-3", True) is False  # its decision is gone: the label waits
    assert t.add_label("tx-2", True) is True
    assert t.add_label("tx-4", False) is True


def test_eviction_keeps_the_counts_of_labelled_decisions() -> None:
    t = QualityTracker(max_decisions=1)
    t.add_decision("tx-1", "v1", "block", 0.9, 1)
    t.add_label("tx-1", True)
    t.add_decision("tx-2", "v1", "allow", 0.1, 2)  # evicts tx-1
    assert t.evicted_decisions == 1
    assert t.summary()["v1"]["labelled_fraud"] == 1
    assert t.summary()["v1"]["thresholds"]["block"]["true_positives"] == 1


def test_pending_labels_are_bounded_too() -> None:
    t = QualityTracker(max_decisions=10, max_pending=2)
    for i in range(3):
        t.add_label(f"tx-{i}", True)
    assert t.pending_labels == 2
    assert t.evicted_labels == 1
    t.add_decision("tx-0", "v1", "block", 0.9, 0)  # its label fell out
    t.add_decision("tx-2", "v1", "block", 0.9, 2)
    assert t.counts() == {("v1", "block", True): 1}
    assert QualityTracker(max_decisions=5).max_pending == 5  # default: the decisions' bound


def test_unbounded_tracker() -> None:
    t = QualityTracker(max_decisions=None)
    for i in range(1000):
        t.add_decision(f"tx-{i}", "v1", "allow", 0.1, i)
    assert t.retained_decisions == 1000 and t.evicted_decisions == 0


def test_changed_counts_reports_only_what_changed_since_the_last_call() -> None:
    t = QualityTracker()
    t.add_decision("tx-1", "v1", "block", 0.9, 1)
    t.add_decision("tx-2", "v1", "allow", 0.1, 2)
    assert t.changed_counts() == {}
    t.add_label("tx-1", True)
    assert t.changed_counts() == {("v1", "block", True): 1}
    assert t.changed_counts() == {}
    t.add_label("tx-1", False)
    t.add_label("tx-2", False)
    assert t.changed_counts() == {("v1", "block", True): 0, ("v1", "block", False): 1, ("v1", "allow", False): 1}


def test_an_unknown_decision_is_refused() -> None:
    with pytest.raises(ValueError, match="decision"):
        QualityTracker().add_decision("tx-1", "v1", "deny", 0.5, 1)


def decision_bytes(**changes: object) -> bytes:
    d: dict[str, object] = {
        "schema_version": 1,
        "transaction_id": "tx-1",
        "card_id": "card-1",
        "score": 0.9,
        "decision": "block",
        "reasons": [],
        "model_version": "v1",
        "event_timestamp": "2026-02-14T20:01:01.470000-05:00",
        "scored_at": "2026-11-24T22:43:15.507595Z",
    }
    d.update(changes)
    return orjson.dumps({k: v for k, v in d.items() if v is not ...})


def test_parse_decision() -> None:
    # 2026-02-15T01:01:01.470Z
    assert parse_decision(decision_bytes()) == ("tx-1", "v1", "block", 0.9, 1_771_117_261_470)
    assert parse_decision(decision_bytes(score=1)) is not None
    for bad in (
        None,
        b"not json",
        b"[1]",
        decision_bytes(transaction_id=...),
        decision_bytes(model_version=""),
        decision_bytes(decision="deny"),
        decision_bytes(score="0.9"),
        decision_bytes(score=True),
        decision_bytes(event_timestamp="2026-02-14T20:01:01"),  # no zone
        decision_bytes(event_timestamp="yesterday"),
    ):
        assert parse_decision(bad) is None, bad


def test_format_quality_table() -> None:
    t = QualityTracker()
    t.add_decision("a", "v1", "block", 0.9, 1)
    t.add_decision("b", "v1", "review", 0.5, 2)
    t.add_label("a", True)
    t.add_label("b", False)
    report = {
        "range": {"from": "2026-01-01T00:00:00+00:00", "to": None},
        "decisions": 2,
        "labels": 2,
        "joined": 2,
        "skipped": {"decisions": 1, "labels": 0},
        "by_model_version": t.summary(),
    }
    text = format_quality(report)
    lines = text.splitlines()
    assert "[2026-01-01T00:00:00+00:00, +inf)" in lines[0]
    assert "skipped: 1 decision(s)" in lines[1]
    review = next(line for line in lines if line.startswith("v1") and " review " in line).split()
    block = next(line for line in lines if line.startswith("v1") and " block " in line).split()
    # model version, threshold, decisions, labelled, fraud, flagged, TP, precision, recall
    assert review == ["v1", "review", "2", "2", "1", "2", "1", "0.500", "1.000"]
    assert block == ["v1", "block", "2", "2", "1", "1", "1", "1.000", "1.000"]

    t2 = QualityTracker()
    t2.add_decision("a", "v1", "allow", 0.1, 1)
    none_row = format_quality({**report, "by_model_version": t2.summary()}).splitlines()
    assert next(line for line in none_row if " block " in line).split()[-2:] == ["-", "-"]
    assert "no decisions in range" in format_quality({**report, "by_model_version": {}})
