# ruff: noqa: S101
import json

import numpy as np
import pandas as pd
import pytest

from model.metrics import (
    Thresholds,
    card_precision_at_k,
    card_precision_top_k,
    decide,
    evaluation_report,
    pick_thresholds,
    protocol_report,
    threshold_report,
)

# Hand-checked curve (flagged = score >= t):
#   t    flagged labels      precision  recall
#   0.8  [1]                 1          1/4
#   0.7  [1,1]               1          2/4
#   0.6  [0,1,1]             2/3        2/4
#   0.5  [1,0,1,1]           3/4        3/4
#   0.4  [0,1,0,1,1]         3/5        3/4
#   0.3  [0,0,1,0,1,1]       1/2        3/4
#   0.2  [1,0,0,1,0,1,1]     4/7        1
#   0.1  all                 1/2        1
SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
LABELS = np.array([0, 1, 0, 0, 1, 0, 1, 1])


def test_pick_thresholds_lowest_threshold_reaching_precision():
    t = pick_thresholds(LABELS, SCORES, block_precision=0.8, review_precision=0.55)
    # block: 0.7 is the lowest with precision >= 0.8 (0.5 only has 0.75)
    assert t.block == 0.7
    # review: 0.2 (4/7) is lower than 0.3 (1/2) and still >= 0.55 -- not the first crossing from the top
    assert t.review == 0.2
    assert t.notes == ()


def test_pick_thresholds_precision_equal_to_target_counts():
    t = pick_thresholds(LABELS, SCORES, block_precision=0.75, review_precision=0.5)
    assert t.block == 0.5  # precision exactly 3/4
    assert t.review == 0.1  # precision exactly 1/2 over everything
    assert t.notes == ()


def test_pick_thresholds_input_order_does_not_matter():
    order = np.array([3, 7, 0, 5, 1, 6, 2, 4])
    t = pick_thresholds(list(LABELS[order]), list(SCORES[order]), block_precision=0.8, review_precision=0.55)
    assert (t.review, t.block) == (0.2, 0.7)


def test_pick_thresholds_min_review_recall_lowers_review():
    t = pick_thresholds(LABELS, SCORES, block_precision=0.8, review_precision=0.9, min_review_recall=0.75)
    # precision 0.9 alone -> review 0.7 (recall 1/2); recall floor 0.75 -> highest such threshold is 0.5
    assert t.review == 0.5
    assert t.block == 0.7
    assert any("min_review_recall" in n for n in t.notes)
    # a floor that is already met changes nothing
    t2 = pick_thresholds(LABELS, SCORES, block_precision=0.8, review_precision=0.9, min_review_recall=0.5)
    assert (t2.review, t2.block, t2.notes) == (0.7, 0.7, ())


def test_pick_thresholds_unreachable_targets_fall_back_with_notes():
    # t=0.4: P=0 R=0; t=0.3: P=1/2 R=1/2 (F1 .5); t=0.2: P=1/3 R=1/2 (F1 .4); t=0.1: P=1/2 R=1 (F1 2/3)
    t = pick_thresholds([1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4], block_precision=0.8, review_precision=0.6)
    assert t.block == 0.1
    assert t.review == 0.1
    assert len(t.notes) == 2
    assert "F1" in t.notes[0]
    assert "review_precision" in t.notes[1]


def test_pick_thresholds_review_never_above_block():
    t = pick_thresholds(LABELS, SCORES, block_precision=0.5, review_precision=0.9)
    assert t.block == 0.1
    assert t.review == 0.1
    assert any("capped" in n for n in t.notes)


def test_pick_thresholds_all_negative_flags_nothing():
    scores = [0.2, 0.9, 0.5]
    t = pick_thresholds([0, 0, 0], scores)
    assert t.review == t.block
    assert t.block > 0.9
    assert (decide(scores, t) == "allow").all()
    assert t.notes


def test_pick_thresholds_constant_scores_and_tiny_inputs():
    t = pick_thresholds([0, 1, 0, 0], [0.5, 0.5, 0.5, 0.5])
    assert (t.review, t.block) == (0.5, 0.5)
    assert any("equal" in n for n in t.notes)

    t1 = pick_thresholds([1], [0.3])
    assert (t1.review, t1.block, t1.notes) == (0.3, 0.3, ())

    t_all_pos = pick_thresholds([True, True], [0.2, 0.6])
    assert (t_all_pos.review, t_all_pos.block) == (0.2, 0.2)


@pytest.mark.parametrize(
    ("y", "s", "kwargs"),
    [
        ([], [], {}),
        ([0, 1], [0.1], {}),
        ([0, 2], [0.1, 0.2], {}),
        ([0, 1], [0.1, float("nan")], {}),
        ([0, 1], [0.1, 0.2], {"block_precision": 0.0}),
        ([0, 1], [0.1, 0.2], {"review_precision": 1.5}),
        ([0, 1], [0.1, 0.2], {"min_review_recall": -0.1}),
    ],
)
def test_pick_thresholds_rejects_bad_input(y, s, kwargs):
    with pytest.raises(ValueError):
        pick_thresholds(y, s, **kwargs)


def test_thresholds_validation_and_coercion():
    t = Thresholds(review=np.float64(0.25), block=np.float32(0.5), notes=["x"])
    assert type(t.review) is float and type(t.block) is float
    assert t.notes == ("x",)
    with pytest.raises(ValueError):
        Thresholds(review=0.6, block=0.5)
    with pytest.raises(ValueError):
        Thresholds(review=float("nan"), block=0.5)


def test_decide_boundaries_are_flagged():
    t = Thresholds(review=0.3, block=0.7)
    out = decide(np.array([0.0, 0.2999, 0.3, 0.5, 0.6999, 0.7, 1.0]), t)
    assert out.tolist() == ["allow", "allow", "review", "review", "review", "block", "block"]

    same = Thresholds(review=0.5, block=0.5)
    assert decide([0.4999, 0.5], same).tolist() == ["allow", "block"]

    with pytest.raises(ValueError):
        decide([0.1, float("nan")], t)


def _frame(rows):
    return pd.DataFrame(rows, columns=["card_id", "timestamp", "score", "is_fraud"])


# Day 1 (2024-01-01 UTC): per-card max score / any fraud
#   A: max 0.9 (that tx legit) but a fraud tx at 0.2 -> fraud card
#   B: 0.8 legit -- timestamp is 00:30 at +01:00, i.e. 23:30 UTC on day 1
#   C: 0.7 fraud, D: 0.1 fraud
#   top-2 = A (fraud), B (legit) -> 1/2
# Day 2: B 0.95 fraud, C 0.6 fraud, A 0.3 legit -> top-2 = B, C -> 2/2
# mean = (0.5 + 1.0) / 2 = 0.75
CARD_ROWS = [
    ("A", "2024-01-01T08:00:00Z", 0.9, 0),
    ("A", "2024-01-01T09:00:00Z", 0.2, 1),
    ("B", "2024-01-02T00:30:00+01:00", 0.8, 0),
    ("C", "2024-01-01T12:00:00+00:00", 0.7, 1),
    ("D", "2024-01-01T13:00:00Z", 0.1, 1),
    ("A", "2024-01-02T10:00:00Z", 0.3, 0),
    ("B", "2024-01-02T11:00:00Z", 0.95, 1),
    ("C", "2024-01-02T12:00:00Z", 0.6, 1),
    ("C", "2024-01-02T13:00:00Z", 0.05, 0),
]


def test_card_precision_at_k_hand_computed():
    frame = _frame(CARD_ROWS)
    assert card_precision_at_k(frame, k=2) == pytest.approx(0.75)
    # k=1: day1 A (fraud) -> 1, day2 B (fraud) -> 1
    assert card_precision_at_k(frame, k=1) == pytest.approx(1.0)
    # k=3: day1 A,B,C -> 2/3; day2 A,B,C -> 2/3
    assert card_precision_at_k(frame, k=3) == pytest.approx(2 / 3)


def test_card_precision_at_k_tz_aware_datetimes_match_strings():
    frame = _frame(CARD_ROWS)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601").dt.tz_convert("Europe/Berlin")
    assert card_precision_at_k(frame, k=2) == pytest.approx(0.75)


def test_card_precision_at_k_short_day_uses_its_cards():
    rows = [
        ("A", "2024-01-01T08:00:00Z", 0.9, 1),
        ("B", "2024-01-01T09:00:00Z", 0.8, 0),
        ("A", "2024-01-02T10:00:00Z", 0.4, 1),  # only card on day 2 -> 1/1, not 1/2
    ]
    assert card_precision_at_k(_frame(rows), k=2) == pytest.approx(0.75)


def test_card_precision_at_k_rejects_bad_input():
    with pytest.raises(ValueError):
        card_precision_at_k(_frame([]), k=2)
    with pytest.raises(ValueError):
        card_precision_at_k(_frame(CARD_ROWS), k=0)
    with pytest.raises(ValueError):
        card_precision_at_k(_frame(CARD_ROWS).drop(columns="score"), k=2)


def test_card_precision_top_k_removes_detected_cards_and_divides_by_k():
    # Day 1, k=2: top cards A (fraud), B (legit) -> 1/2; A is now known.
    # Day 2 without A: B (0.95, fraud), C (0.6, fraud) -> 2/2.
    # Day 3: A's fraud again (removed: detected on day 1), D 0.5 fraud alone -> 1/2 (divisor k, not 1).
    rows = [
        *CARD_ROWS,
        ("A", "2024-01-03T10:00:00Z", 0.99, 1),
        ("D", "2024-01-03T11:00:00Z", 0.5, 1),
    ]
    daily = card_precision_top_k(_frame(rows), k=2)
    assert [d["precision"] for d in daily["per_day"]] == [0.5, 1.0, 0.5]
    assert daily["mean"] == pytest.approx(2 / 3)
    assert [d["day"] for d in daily["per_day"]] == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert [d["cards"] for d in daily["per_day"]] == [4, 2, 1]  # A left out once found
    assert [d["fraud_cards"] for d in daily["per_day"]] == [3, 2, 1]
    assert [d["detected"] for d in daily["per_day"]] == [1, 2, 1]
    # A card found on day 1 that is legit the next day is still left out; B (legit, not found) is not.
    assert card_precision_top_k(_frame(CARD_ROWS), k=1)["per_day"][1]["cards"] == 2
    with pytest.raises(ValueError):
        card_precision_top_k(_frame(CARD_ROWS), k=0)


def test_protocol_report_uses_the_handbook_card_precision():
    frame = _frame(CARD_ROWS)
    t = Thresholds(review=0.5, block=0.9)
    report = protocol_report(frame, t, k=2)
    assert report["card_precision_at_2"] == card_precision_top_k(frame, 2)["mean"]
    assert len(report["card_precision_per_day"]) == 2
    assert report["at_threshold"]["block"]["flagged"] == 2
    assert report["n_transactions"] == len(CARD_ROWS)
    assert "at_threshold" not in protocol_report(frame, None, k=2)
    json.dumps(report)


def test_threshold_report_counts():
    t = Thresholds(review=0.2, block=0.7)
    rep = threshold_report(LABELS, SCORES, t)
    assert rep["review"] == {
        "threshold": 0.2,
        "flagged": 7,
        "precision": pytest.approx(4 / 7),
        "recall": 1.0,
        "tp": 4,
        "fp": 3,
        "fn": 0,
        "tn": 1,
    }
    assert rep["block"] == {
        "threshold": 0.7,
        "flagged": 2,
        "precision": 1.0,
        "recall": 0.5,
        "tp": 2,
        "fp": 0,
        "fn": 2,
        "tn": 4,
    }
    nothing = threshold_report([0, 0], [0.1, 0.2], Thresholds(review=0.5, block=0.9))
    assert nothing["block"]["precision"] is None
    assert nothing["block"]["recall"] is None


def _plain(obj):
    """True when obj is built only from dict/list/str/int/float/bool/None (no numpy scalars)."""
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_plain(v) for v in obj)
    return obj is None or type(obj) in (str, int, float, bool)


def test_evaluation_report_keys_values_and_json():
    frame = _frame(CARD_ROWS)
    t = Thresholds(review=0.5, block=0.85)
    rep = evaluation_report(frame, t, k=2)
    assert set(rep) == {
        "n_transactions",
        "n_fraud",
        "fraud_rate",
        "n_cards",
        "auc_roc",
        "average_precision",
        "card_precision_at_2",
        "thresholds",
        "threshold_notes",
        "at_threshold",
        "decision_counts",
        "confusion",
    }
    assert _plain(rep)
    assert json.loads(json.dumps(rep)) == rep
    assert rep["n_transactions"] == 9
    assert rep["n_fraud"] == 5
    assert rep["n_cards"] == 4
    assert rep["card_precision_at_2"] == pytest.approx(0.75)
    assert rep["thresholds"] == {"review": 0.5, "block": 0.85}
    # scores >= 0.85: 0.9, 0.95; 0.5 <= s < 0.85: 0.8, 0.7, 0.6
    assert rep["decision_counts"] == {"allow": 4, "review": 3, "block": 2}
    assert rep["confusion"]["flagged"] == {"tp": 3, "fp": 2, "fn": 2, "tn": 2}
    assert rep["confusion"]["block"] == {"tp": 1, "fp": 1, "fn": 4, "tn": 3}
    assert 0.0 <= rep["auc_roc"] <= 1.0
    assert rep["at_threshold"]["block"]["flagged"] == 2


def test_evaluation_report_default_k_key_and_single_class():
    frame = _frame(CARD_ROWS)
    frame["is_fraud"] = 0
    rep = evaluation_report(frame, Thresholds(review=0.5, block=0.85))
    assert rep["auc_roc"] is None
    assert rep["average_precision"] is None
    assert rep["card_precision_at_100"] == 0.0
    assert rep["fraud_rate"] == 0.0
    json.dumps(rep)
