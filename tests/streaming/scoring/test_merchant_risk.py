"""Merchant risk state (own counts vs the replica) and the worker's batch path against training."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from model.dataset import load_csv
from model.features import (
    DAY_MS,
    FEATURE_NAMES,
    MERCHANT_RISK_FEATURES,
    MERCHANT_SPAN_DAYS,
    NEW_CARD_SPAN_DAYS,
    compute_features,
    frame_from_transactions,
    history_from_frame,
    risk_context_from_frame,
)
from model.schemas import Transaction
from model.scoring import ModelHolder, Scorer
from model.train import TrainOptions, train
from producers.synthetic import SimConfig, generate
from streaming.metrics import WorkerMetrics
from streaming.scoring.merchant_risk import MerchantRisk, activity_key, label_key, label_value
from streaming.scoring.service import ScoringService
from streaming.scoring.state import (
    decode_state,
    history_frame,
    labels_frame,
    merge,
    with_fraud_label,
    without_fraud_label,
)
from streaming.worker.pipeline import RISK_MARGIN_DAYS, BatchScorer

DELAY_DAYS = 4.0


def test_own_counts_win_over_older_records_of_the_replica() -> None:
    risk = MerchantRisk()
    risk.apply(activity_key("m1", 100, 0), b"7")  # written by a previous owner of partition 0
    out = risk.increment([("m1", 100, 0, False), ("m1", 100, 0, True), ("m2", 101, 1, False)])
    assert dict(out) == {
        activity_key("m1", 100, 0): b"9",
        activity_key("m1", 100, 0, "n"): b"1",  # one of them from a card new at m1
        activity_key("m2", 101, 1): b"1",
    }
    # Our own earlier record comes back through the topic after we counted further: ignored.
    risk.apply(activity_key("m1", 100, 0), b"8")
    risk.apply(activity_key("m1", 100, 0, "n"), b"0")
    assert (risk.count("m1", 100, 0), risk.count("m1", 100, 0, "n")) == (9, 1)
    # Another partition's writer is summed, not overwritten.
    risk.apply(activity_key("m1", 100, 3), b"5")
    ctx = risk.context(["m1"])
    assert ctx.activity["count"].sum() == 14 and ctx.activity["new"].sum() == 1
    # Once partition 0 moves away, the topic's value is the truth again.
    risk.release([0])
    risk.apply(activity_key("m1", 100, 0), b"12")
    assert risk.count("m1", 100, 0) == 12


def test_labels_are_keyed_by_transaction_and_tombstones_remove_them() -> None:
    risk = MerchantRisk()
    risk.apply(label_key("t1"), label_value("c1", "m1", 100, 123))
    risk.apply(label_key("t1"), label_value("c1", "m1", 100, 99))  # a relabel replaces
    ctx = risk.context(["m1", "m9"])
    assert pd.DataFrame(ctx.fraud_labels)[["transaction_id", "available_ms"]].values.tolist() == [["t1", 99]]
    risk.apply(label_key("t1"), None)
    assert len(risk.context(["m1"]).fraud_labels["transaction_id"]) == 0
    risk.apply(b"garbage", b"1")  # logged and ignored, never raises
    assert risk.size() == (0, 0)


def test_ids_with_inner_spaces_survive_the_topic_keys() -> None:
    risk = MerchantRisk()
    merchant = "Joe's Pizza & Grill 2"  # ends in a digit, like a day or a partition would
    risk.apply(activity_key(merchant, 100, 3), b"5")
    risk.apply(label_key("tx 1"), label_value("card 1", merchant, 100, 123))
    assert risk.count(merchant, 100, 3) == 5
    ctx = risk.context([merchant])
    assert ctx.activity["count"].sum() == 5
    assert list(ctx.fraud_labels["transaction_id"]) == ["tx 1"]
    risk.apply(label_key("tx 1"), None)
    assert risk.size() == (1, 0)


def test_card_state_keeps_its_fraud_labels_through_merges() -> None:
    state = with_fraud_label(None, "t1", "m1", 100, 101 * DAY_MS)
    state = with_fraud_label(state, "t1", "m1", 100, 102 * DAY_MS)  # a later copy of the same label
    state = merge(state, [("t2", 120 * DAY_MS, 10.0, "m2")], grace_ms=0)
    assert state["lab"] == [["t1", "m1", 100, 101 * DAY_MS]]
    assert state["ids"] == ["t2"]
    # A reversal removes the label; reversing an unknown label changes nothing.
    reverted = without_fraud_label(state, "t1")
    assert reverted is not None and reverted["lab"] == [] and reverted["ids"] == ["t2"]
    assert without_fraud_label(reverted, "t1") is None and without_fraud_label(None, "t1") is None


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("risk-parity")
    frame = generate(
        SimConfig(
            seed=5,
            n_cards=150,
            n_merchants=25,
            days=30,
            start=datetime(2026, 2, 1, tzinfo=UTC),
            compromised_merchant_share=0.1,
        )
    )
    frame.to_csv(root / "data.csv", index=False)
    train(root / "data.csv", root / "model", TrainOptions(model_type="logreg", label_delay_days=DELAY_DAYS))
    return root / "data.csv", root / "model"


def test_worker_batches_with_labels_give_the_training_features_and_scores(labelled: tuple[Path, Path]) -> None:
    """The worker's path (card state, merchant counts, labels received up front) over batches of
    uneven sizes and two partitions computes exactly what training computes over the CSV."""
    data, model_dir = labelled
    frame = load_csv(data).frame
    holder = ModelHolder(model_dir)
    assert holder.load()
    processor = BatchScorer(
        ScoringService(holder, MerchantRisk(), include_features=True), WorkerMetrics(), grace_ms=3_600_000
    )

    states: dict[str, bytes | None] = {}  # as the worker's table holds them
    # Every label is delivered before the transactions (a label counts only from when it was
    # known, so receiving it early must not change any feature).
    for row in frame.loc[frame["is_fraud"] == 1].itertuples():
        available = row.ts_ms + round(DELAY_DAYS * DAY_MS)
        state = with_fraud_label(
            decode_state(states.get(row.card_id)), row.transaction_id, row.merchant_id, row.ts_ms // DAY_MS, available
        )
        states[row.card_id] = orjson.dumps(state)
        processor.risk.add_label(row.transaction_id, row.card_id, row.merchant_id, row.ts_ms // DAY_MS, available)

    raw = pd.read_csv(data, dtype=str, keep_default_na=False)
    by_id = raw.set_index("transaction_id")
    order = frame["transaction_id"].tolist()
    features, scores = [], []
    rng = np.random.default_rng(1)
    start = 0
    while start < len(order):
        size = int(rng.choice([1, 7, 60, 400]))
        ids = order[start : start + size]
        start += size
        txs = [
            Transaction.model_validate(
                {**by_id.loc[i].to_dict(), "transaction_id": i, "amount": float(by_id.loc[i, "amount"])}
            )
            for i in ids
        ]
        partitions = [hash(tx.card_id) % 2 for tx in txs]
        result = processor.score(txs, partitions, {tx.card_id: states.get(tx.card_id) for tx in txs})
        states.update(result.states)
        # Forget what no window reaches any more, as the worker does every minute.
        assert processor.newest_ms is not None
        processor.risk.prune(processor.newest_ms // DAY_MS - MERCHANT_SPAN_DAYS - RISK_MARGIN_DAYS, owned=[0, 1])
        for d in result.decisions:
            features.append([d["features"][f] for f in FEATURE_NAMES])
            scores.append(d["score"])

    scorer = Scorer(holder.scorer.artifact)
    batch = scorer.score_frame(frame, history_from_frame(frame), risk_context_from_frame(frame, scorer.label_delay_ms))
    np.testing.assert_allclose(np.array(features), batch.features, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.array(scores), batch.scores, rtol=0, atol=1e-12)
    for name in MERCHANT_RISK_FEATURES:  # the data must exercise every risk feature
        assert len(np.unique(batch.features[:, FEATURE_NAMES.index(name)])) > 1, name


def test_prune_forgets_old_days_and_tombstones_only_what_this_worker_wrote() -> None:
    risk = MerchantRisk()
    new_horizon = 40 + MERCHANT_SPAN_DAYS - NEW_CARD_SPAN_DAYS  # new-card counts are read less far back
    risk.increment([("m1", 10, 0, True), ("m1", 50, 0, False), ("m2", 11, 1, False)])
    risk.increment([("m1", new_horizon - 1, 0, True), ("m1", new_horizon, 0, True)])
    risk.apply(activity_key("m1", 9, 3), b"4")  # another worker's partition
    risk.add_label("t-old", "c1", "m1", 10, 11 * DAY_MS, partition=0)
    risk.add_label("t-new", "c2", "m1", 49, 50 * DAY_MS, partition=0)
    risk.add_label("t-theirs", "c3", "m2", 8, 9 * DAY_MS, partition=3)
    gone = risk.prune(before_day=40, owned=[0, 1])
    assert sorted(gone) == sorted(
        [
            activity_key("m1", 10, 0),
            activity_key("m1", 10, 0, "n"),
            activity_key("m1", new_horizon - 1, 0, "n"),
            activity_key("m2", 11, 1),
            label_key("t-old"),
        ]
    )
    ctx = risk.context(["m1", "m2"])
    act = pd.DataFrame(ctx.activity).sort_values("day")
    assert act[["merchant_id", "day", "count", "new"]].values.tolist() == [
        ["m1", 50, 1, 0],
        ["m1", new_horizon - 1, 1, 0],
        ["m1", new_horizon, 1, 1],
    ]
    assert ctx.fraud_labels["transaction_id"].tolist() == ["t-new"]
    assert risk.size() == (3, 1)
    # A tombstone from the topic for a key already pruned is harmless.
    risk.apply(activity_key("m1", 10, 0), None)
    assert risk.count("m1", 50, 0) == 1


def test_a_cards_stored_labels_set_its_own_flag_and_never_other_merchants_rates() -> None:
    day = 20_000
    risk = MerchantRisk()
    risk.increment([("m1", day - 5, 0, False)] * 4)
    txs = [
        Transaction(
            transaction_id=f"q{i}",
            timestamp=datetime.fromtimestamp(day * 86_400 + 3600, UTC),
            card_id=card,
            merchant_id="m1",
            amount=10.0,
            currency="USD",
        )  # fmt: skip
        for i, card in enumerate(("cA", "cB"))
    ]
    # Card B's label (at m1, five days ago) is in its state but not yet in this replica.
    states = {"cB": with_fraud_label(None, "old", "m1", day - 5, (day - 4) * DAY_MS)}
    x = compute_features(
        frame_from_transactions(txs), history_frame(states), risk.context(["m1"], labels_frame(states))
    )
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    assert x[:, col["card_known_frauds_7d"]].tolist() == [0.0, 1.0]
    assert x[:, col["card_days_since_known_fraud"]].tolist() == [30.0, 4 + 1 / 24]
    assert x[:, col["merchant_tx_count_7d"]].tolist() == [4.0, 4.0]
    assert x[:, col["merchant_known_frauds_7d"]].tolist() == [0.0, 0.0]  # from the replica only


def test_a_new_owner_waits_until_the_replica_has_read_to_the_ends() -> None:
    from streaming.kafka.replica import Replica
    from streaming.settings import KafkaSettings

    replica = Replica(
        KafkaSettings(), "risk", MerchantRisk().apply, "merchant-risk"
    )  # not started: positions set by hand
    replica.positions = {0: 10, 1: 3}
    assert replica.wait_until({0: 10, 1: 3, 2: 0}, timeout=0.2)  # empty partitions need nothing
    assert not replica.wait_until({0: 11, 1: 3}, timeout=0.2)


def test_day_totals_follow_every_change_of_the_counts() -> None:
    # The per-day totals the features read are kept up as counts change; check them against a
    # plain model of "the count in force" (own counts win over the topic until released)
    # through a random mix of every kind of change, for both kinds of count.
    rng = random.Random(7)
    risk = MerchantRisk()
    in_force: dict[tuple[str, str, int, int], int] = {}
    own: set[tuple[str, str, int, int]] = set()
    merchants = ["m1", "m2", "m3"]
    for step in range(3000):
        m, day, p = rng.choice(merchants), rng.randint(100, 105), rng.randint(0, 3)
        slot = (rng.choice("an"), m, day, p)
        op = rng.random()
        if op < 0.35:
            k, j = rng.randint(1, 3), rng.randint(0, 1)
            risk.increment([(m, day, p, False)] * (k - j) + [(m, day, p, True)] * j)
            for kind, added in (("a", k), ("n", j)):
                if added:
                    in_force[(kind, m, day, p)] = in_force.get((kind, m, day, p), 0) + added
                    own.add((kind, m, day, p))
        elif op < 0.7:
            value = rng.randint(1, 50)
            risk.apply(activity_key(m, day, p, slot[0]), str(value).encode())
            if slot not in own:
                in_force[slot] = value
        elif op < 0.8:
            risk.apply(activity_key(m, day, p, slot[0]), None)
            in_force.pop(slot, None)
            own.discard(slot)
        elif op < 0.9:
            risk.release([p])
            own = {s for s in own if s[3] != p}
        else:
            before = rng.randint(100, 106) - rng.choice([0, MERCHANT_SPAN_DAYS - NEW_CARD_SPAN_DAYS])
            risk.prune(before, owned=[0, 1])
            horizon = {"a": before, "n": before + MERCHANT_SPAN_DAYS - NEW_CARD_SPAN_DAYS}
            in_force = {s: c for s, c in in_force.items() if s[2] >= horizon[s[0]]}
            own = {s for s in own if s[2] >= horizon[s[0]]}
        if step % 50 == 0 or step == 2999:
            ctx = risk.context(merchants)
            act = ctx.activity
            got = {
                (m, int(d)): (int(c), int(n))
                for m, d, c, n in zip(act["merchant_id"], act["day"], act["count"], act["new"], strict=True)
            }
            want: dict[str, dict[tuple[str, int], int]] = {"a": {}, "n": {}}
            for (kind, m, d, _), c in in_force.items():
                want[kind][(m, d)] = want[kind].get((m, d), 0) + c
            assert got == {k: (c, want["n"].get(k, 0)) for k, c in want["a"].items() if c}
            assert all(risk.count(m, d, p, kind) == c for (kind, m, d, p), c in in_force.items())


def test_a_topic_written_before_new_card_counts_still_loads() -> None:
    # Records of an older version: counts only, no "n" keys. They load, with no new cards.
    risk = MerchantRisk()
    risk.apply(activity_key("m1", 100, 0), b"7")
    risk.apply(activity_key("m1", 101, 2), b"3")
    risk.apply(label_key("t1"), orjson.dumps({"card": "c1", "merchant": "m1", "tx_day": 99, "available_ms": 5}))
    ctx = risk.context(["m1"])
    act = ctx.activity
    rows = zip(act["day"].tolist(), act["count"].tolist(), act["new"].tolist(), strict=True)
    assert sorted(rows) == [(100, 7, 0), (101, 3, 0)]
    assert ctx.fraud_labels["transaction_id"].tolist() == ["t1"]
    # The new count of a day arrives under its own key and joins the day's total.
    risk.apply(activity_key("m1", 100, 0, "n"), b"2")
    assert risk.context(["m1"]).activity["new"].tolist()[ctx.activity["day"].tolist().index(100)] == 2


@pytest.mark.parametrize("early_ms", [1, 0])
def test_the_streams_labels_count_only_from_their_labelled_at(early_ms: int) -> None:
    """The worker's inputs (card state, replica) with a label known one millisecond before the
    transaction or exactly at it: the card's own label counts to the millisecond, the merchant's
    from the UTC day after it became known."""
    day = 20_000
    q_ts = day * DAY_MS  # the first millisecond of day d
    tx = Transaction(
        transaction_id="q",
        timestamp=datetime.fromtimestamp(q_ts / 1000, UTC),
        card_id="cA",
        merchant_id="m1",
        amount=10.0,
        currency="USD",
    )
    known = q_ts - early_ms
    states = {"cA": with_fraud_label(None, "f", "m0", day - 2, known)}
    risk = MerchantRisk()
    risk.add_label("g", "cB", "m1", day - 3, known)
    x = compute_features(
        frame_from_transactions([tx]), history_frame(states), risk.context(["m1"], labels_frame(states))
    )
    v = dict(zip(FEATURE_NAMES, x[0].tolist(), strict=True))
    counted = early_ms > 0
    assert v["card_known_frauds_7d"] == int(counted)
    assert v["card_days_since_known_fraud"] == (early_ms / DAY_MS if counted else 30.0)
    assert v["merchant_known_frauds_7d"] == int(counted)
    assert v["merchant_days_since_known_fraud"] == (3 if counted else MERCHANT_SPAN_DAYS + 1)
