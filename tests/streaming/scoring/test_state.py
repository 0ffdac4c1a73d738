"""Per-card state: idempotent merge, time order, pruning horizon, and the history frame."""

from __future__ import annotations

import copy
import random
from dataclasses import replace
from typing import Any

import numpy as np
import orjson

from model.features import (
    CARD_LABEL_SPAN_MS,
    FEATURE_NAMES,
    HISTORY_COLUMNS,
    HISTORY_SPAN_MS,
    RiskContext,
    compute_features,
    frame_from_transactions,
)
from model.schemas import Transaction
from streaming.scoring.state import (
    CardStateCopy,
    changelog_key,
    empty_state,
    history_frame,
    labels_frame,
    merge,
    with_fraud_label,
)

T = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
HOUR = 3_600_000


def test_merge_into_nothing_sorts_by_time_and_keeps_arrival_order_for_ties() -> None:
    rows = [("b", T + 5, 2.0, "m2"), ("a", T, 1.0, "m1"), ("c", T + 5, 3.0, "m3"), ("d", T + 1, 4.0, "m1")]
    state = merge(None, rows, grace_ms=0)
    assert state == {
        "ids": ["a", "d", "b", "c"],
        "ts": [T, T + 1, T + 5, T + 5],
        "amt": [1.0, 4.0, 2.0, 3.0],
        "mer": ["m1", "m1", "m2", "m3"],
        "lab": [],
    }


def test_merge_is_idempotent_by_transaction_id() -> None:
    rows = [("a", T, 1.0, "m1"), ("b", T + 10, 2.0, "m1")]
    once = merge(None, rows, grace_ms=0)
    twice = merge(once, rows, grace_ms=0)
    assert twice == once
    # A redelivered id keeps its first version, even if the copy differs, and within one call too.
    again = merge(once, [("a", T + 99, 9.0, "zz"), ("c", T + 20, 3.0, "m2"), ("c", T + 21, 4.0, "m3")], grace_ms=0)
    assert again["ids"] == ["a", "b", "c"]
    assert again["amt"] == [1.0, 2.0, 3.0]
    assert again["ts"] == [T, T + 10, T + 20]


def test_merge_does_not_mutate_its_input() -> None:
    state = merge(None, [("a", T, 1.0, "m1")], grace_ms=0)
    before = copy.deepcopy(state)
    merge(state, [("b", T + 1, 2.0, "m1")], grace_ms=0)
    assert state == before


def test_pruning_horizon_is_inclusive_and_counts_grace() -> None:
    newest = T + 40 * 24 * HOUR
    grace = HOUR
    horizon = newest - HISTORY_SPAN_MS - grace
    rows = [
        ("too-old", horizon - 1, 1.0, "m"),
        ("edge", horizon, 2.0, "m"),
        ("inside", horizon + 1, 3.0, "m"),
        ("newest", newest, 4.0, "m"),
    ]
    state = merge(None, rows, grace_ms=grace)
    assert state["ids"] == ["edge", "inside", "newest"]
    # Without grace the horizon moves forward by the grace.
    assert merge(None, rows, grace_ms=0)["ids"] == ["newest"]
    no_grace = merge(None, [*rows, ("w", newest - HISTORY_SPAN_MS, 5.0, "m")], grace_ms=0)
    assert no_grace["ids"] == ["w", "newest"]


def test_pruning_follows_the_newest_entry_across_merges() -> None:
    state = merge(None, [("a", T, 1.0, "m"), ("b", T + HOUR, 1.0, "m")], grace_ms=0)
    state = merge(state, [("c", T + HISTORY_SPAN_MS + HOUR, 1.0, "m")], grace_ms=0)
    assert state["ids"] == ["b", "c"]  # b is exactly 30 days before c
    # A late event older than the horizon is not kept; one inside it is slotted in by time.
    state = merge(state, [("late-old", T, 1.0, "m"), ("late-ok", T + 2 * HOUR, 1.0, "m")], grace_ms=0)
    assert state["ids"] == ["b", "late-ok", "c"]


def test_merge_with_no_rows() -> None:
    assert merge(None, [], grace_ms=0) == empty_state()
    assert merge(empty_state(), [], grace_ms=0) == empty_state()
    state = merge(None, [("a", T, 1.0, "m")], grace_ms=0)
    assert merge(state, [], grace_ms=0) == state


def test_state_is_json_round_trippable_with_plain_types() -> None:
    # numpy scalars (what a frame hands over) and ints must come out as plain JSON types.
    rows: list[Any] = [("a", np.int64(T), np.float64(1.5), "m"), ("b", T + 1, 2, "m")]
    state = merge(None, rows, grace_ms=0)
    assert all(type(t) is int for t in state["ts"])
    assert all(type(a) is float for a in state["amt"])
    assert orjson.loads(orjson.dumps(state)) == state


def test_history_frame_concatenates_cards_and_skips_empty_ones() -> None:
    s1 = merge(None, [("a", T, 1.5, "m1"), ("b", T + 1, 2.5, "m2")], grace_ms=0)
    s2 = merge(None, [("c", T + 2, 3.5, "m1")], grace_ms=0)
    frame = history_frame({"card-1": s1, "card-2": s2, "card-3": None, "card-4": empty_state()})
    assert list(frame) == list(HISTORY_COLUMNS)
    assert frame["transaction_id"].tolist() == ["a", "b", "c"]
    assert frame["card_id"].tolist() == ["card-1", "card-1", "card-2"]
    assert frame["merchant_id"].tolist() == ["m1", "m2", "m1"]
    assert frame["ts_ms"].tolist() == [T, T + 1, T + 2]
    assert frame["amount"].tolist() == [1.5, 2.5, 3.5]
    assert frame["ts_ms"].dtype == np.int64 and frame["amount"].dtype == np.float64


def test_history_frame_of_nothing_has_the_columns() -> None:
    frame = history_frame({"card-1": None})
    assert all(len(values) == 0 for values in frame.values())
    assert list(frame) == list(HISTORY_COLUMNS)
    assert frame["ts_ms"].dtype == np.int64


def test_state_copy_follows_the_changelog_last_write_wins_and_tombstones() -> None:
    copy = CardStateCopy()
    first = merge(None, [("t1", 1_000, 5.0, "m")], 0)
    second = merge(first, [("t2", 2_000, 7.5, "m")], 0)
    copy.apply(changelog_key("c1"), orjson.dumps(first))
    copy.apply(changelog_key("c1"), orjson.dumps(second))
    copy.apply(changelog_key("c2"), orjson.dumps(first))
    assert copy.get("c1") == second
    assert copy.get("unknown") == empty_state()
    assert len(copy) == 2
    assert copy.stored_bytes == len(orjson.dumps(second)) + len(orjson.dumps(first))
    copy.apply(changelog_key("c2"), None)
    assert copy.get("c2") == empty_state()
    assert copy.stored_bytes == len(orjson.dumps(second))
    copy.apply(b"not json", b"{}")  # logged and skipped, nothing else changes
    copy.apply(b"[1]", b"{}")
    assert len(copy) == 1


def test_merge_equals_a_stable_sort_of_stored_then_new_rows() -> None:
    # Against the definition, for rows in order (appended) and out of order (slotted in), with
    # ties, duplicates, pruning by time (with grace) and by count; ``fresh=True`` (the caller
    # vouches for unseen ids) gives the same state whenever that holds.
    rng = random.Random(3)
    for _ in range(300):
        stored = merge(None, [(f"s{i}", T + rng.randint(0, 900) * HOUR, 1.0, "m") for i in range(rng.randint(0, 6))], 0)
        base = stored["ts"][-1] if stored["ts"] else T
        rows = [(f"n{i}", base + rng.randint(-3, 3) * HOUR, float(i), f"m{i}") for i in range(rng.randint(0, 4))]
        if rows and rng.random() < 0.3:
            rows.sort(key=lambda r: r[1])
        dupes = [
            *rows,
            *rows[:1],
            *[(tid, t, 9.0, "x") for tid, t in zip(stored["ids"][:1], stored["ts"][:1], strict=True)],
        ]
        entries = list(zip(stored["ids"], stored["ts"], stored["amt"], stored["mer"], strict=True))
        entries += [(tid, t, a, m) for tid, t, a, m in rows]
        entries.sort(key=lambda e: e[1])  # stable: stored first, then new in arrival order
        newest = entries[-1][1] if entries else 0
        grace = rng.choice([0, HOUR, 24 * HOUR])
        cap = rng.choice([None, 1, 3, 100])
        kept = [e for e in entries if e[1] >= newest - HISTORY_SPAN_MS - grace]
        kept = kept[-cap:] if cap is not None else kept
        want = {
            "ids": [e[0] for e in kept],
            "ts": [e[1] for e in kept],
            "amt": [e[2] for e in kept],
            "mer": [e[3] for e in kept],
            "lab": [],
        }
        assert merge(stored, dupes, grace_ms=grace, max_entries=cap) == want
        assert merge(stored, rows, grace_ms=grace, max_entries=cap, fresh=True) == want


def test_labels_older_than_the_card_label_features_reach_are_forgotten_and_change_nothing() -> None:
    newest = T + 40 * 24 * HOUR
    grace = HOUR
    horizon = newest - CARD_LABEL_SPAN_MS - grace
    state = None
    for tid, known in [
        ("too-old", horizon - 1),
        ("edge", horizon),
        ("recent", newest - HOUR),
        ("early", newest + HOUR),
    ]:
        state = with_fraud_label(state, tid, "m", known // (24 * HOUR), known)
    kept = merge(state, [("t", newest, 5.0, "m")], grace_ms=grace)
    assert [lab[0] for lab in kept["lab"]] == ["edge", "recent", "early"]  # sorted by availability
    assert state is not None and len(state["lab"]) == 4  # the input is left alone

    # Any transaction the stream still scores in order (up to the grace before the newest) gets
    # the same features from the pruned labels as from all of them.
    for at in (newest - grace, newest, newest + 2 * HOUR, newest + 5 * 24 * HOUR):
        tx = Transaction.model_validate(
            {"transaction_id": "q", "timestamp": f"{np.datetime64(at, 'ms')}Z", "card_id": "c",
             "merchant_id": "m", "amount": 9.0, "currency": "EUR"}
        )  # fmt: skip
        features = [
            compute_features(
                frame_from_transactions([tx]),
                history_frame({"c": s}),
                replace(RiskContext.empty(), card_labels=labels_frame({"c": s})),
            )
            for s in (kept, {**kept, "lab": state["lab"]})
        ]
        assert np.array_equal(*features), at
    col = FEATURE_NAMES.index("card_days_since_known_fraud")
    assert features[0][0, col] < 30.0  # the recent label still counts


def test_an_encoded_state_takes_its_own_size_in_memory() -> None:
    import tracemalloc

    from streaming.scoring.state import decode_state, encode_state

    state = {"ids": [f"tx-{i:09d}" for i in range(56)], "ts": list(range(56)), "amt": [1.5] * 56, "mer": ["m-1"] * 56}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        values = [encode_state(state) for _ in range(200)]
        held = (tracemalloc.get_traced_memory()[0] - before) / len(values)
    finally:
        tracemalloc.stop()
    assert decode_state(values[0]) == state
    assert held < 1.2 * len(values[0]) + 100, (held, len(values[0]))  # orjson alone: ~8x
