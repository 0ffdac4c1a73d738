"""The stream encodes decisions without building pydantic models (the bytes must be the ones the
model would give, for every kind of timestamp, score and optional field), and reason codes name
the feature group that raised a score."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from model.artifact import load_artifact, save_artifact
from model.features import FEATURE_NAMES, compute_features, history_from_frame, risk_context_from_frame
from model.schemas import Decision, Transaction, decision_json
from model.scoring import ScoredBatch, Scorer


class _Versioned(Scorer):
    """Only what ``decision_fields`` reads: the model version (no artifact needed)."""

    def __init__(self) -> None:  # skips Scorer.__init__ on purpose
        self.version = "20261125-abc"


def _transactions(rng: random.Random, n: int) -> list[Transaction]:
    txs = []
    for i in range(n):
        offset = rng.choice(["Z", "+00:00", "-05:00", "+05:30", "+14:00", "-12:00"])
        micros = rng.choice([0, 470000, 123456, 1000, 999999])
        fraction = f".{micros:06d}" if micros else rng.choice(["", ".0", ".000"])
        day = f"2026-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
        stamp = f"{day}T{rng.randint(10, 23)}:0{rng.randint(0, 9)}:{rng.randint(10, 59)}{fraction}{offset}"
        txs.append(
            Transaction.model_validate(
                {"transaction_id": f"t{i}", "timestamp": stamp, "card_id": f"c{i % 7}", "merchant_id": "m",
                 "amount": 1.0 + i, "currency": "USD"}
            )
        )  # fmt: skip
    return txs


def test_decision_json_is_byte_identical_to_the_pydantic_model() -> None:
    rng = random.Random(1)
    scorer = _Versioned()
    for include_features in (False, True):
        txs = _transactions(rng, 400)
        n = len(txs)
        scores = np.array([rng.choice([rng.random(), 0.0, 1.0, 1e-7, 0.30000000000000004, 1.0000001]) for _ in txs])
        batch = ScoredBatch(
            features=np.random.default_rng(2).normal(size=(n, len(FEATURE_NAMES))),
            scores=scores,
            decisions=np.array([rng.choice(["allow", "review", "block"]) for _ in txs]),
            reasons=[rng.choice([[], ["amount_high"], ["rapid_succession", "weekend"]]) for _ in txs],
        )
        states = [rng.choice(["used", "empty"]) for _ in txs]
        scored_at = datetime.now(UTC).replace(microsecond=rng.choice([0, 5, 123456]))
        fields = scorer.decision_fields(txs, batch, states, scored_at, include_features)
        models = scorer.decisions(txs, batch, states, scored_at, include_features)
        for f, model in zip(fields, models, strict=True):
            assert decision_json(f) == orjson.dumps(model.model_dump(mode="json", exclude_none=True))
            assert Decision.model_validate_json(decision_json(f)) == model
        assert max(m.score for m in models) <= 1.0  # clipped like the model's bound


# ------------------------------------------------------------------------------------------
# Reason codes: a transaction built to trip one feature group gets that group's code.

DAY = 86_400_000
D = 20_100  # the scored transactions' UTC day
STEADY = [f"s{i}" for i in range(10)]
#: Each condition the crafted model learns: (feature, values when off, values when on).
CONDITIONS = {
    "merchant_known_fraud_recent": ("merchant_known_frauds_7d", (0, 1), (2, 6)),
    "card_known_compromised": ("card_days_since_known_fraud", (2, 30), (0, 0.9)),
    "merchant_recent_fraud_rate_high": ("merchant_fraud_rate_7d", (0, 0.1), (0.2, 1)),
    "merchant_activity_unusual": ("merchant_activity_ratio_1d", (0.3, 2.5), (5, 30)),
    "merchant_new_cards_unusual": ("merchant_new_card_share_1d", (0, 0.4), (0.6, 1)),
}


def _world() -> tuple[pd.DataFrame, dict[str, str]]:
    """45 days of steady traffic at five merchants, one of them made to trip each condition on
    day D, and the transactions scored on day D (query id -> the reason it should get)."""
    rows: list[tuple[str, str, str, int, int, int]] = []  # id, card, merchant, ts, is_fraud, labelled

    def add(card: str, merchant: str, ts: int, labelled: int = -1) -> None:
        rows.append((f"t{len(rows)}", card, merchant, ts, int(labelled >= 0), labelled))

    merchants = ["m-plain", "m-known", "m-burst", "m-new", "m-rate"]
    for day in range(D - 45, D):
        for j, m in enumerate(merchants):
            for k in range(2):
                ts = day * DAY + (9 + 3 * k + j) * 3_600_000
                card = STEADY[(day + 2 * k + j) % len(STEADY)]
                if m == "m-new" and day == D - 2:
                    add(f"n{k}", m, ts)  # that day only cards never seen there
                elif m == "m-rate" and day in (D - 10, D - 9):
                    add(card, m, ts, labelled=(D - 6) * DAY)  # frauds, known days ago
                else:
                    add(card, m, ts)
    for k in range(3):  # three frauds at m-known two days ago, confirmed yesterday
        add(STEADY[k], "m-known", (D - 2) * DAY + (18 + k) * 3_600_000, labelled=(D - 1) * DAY + 3_600_000)
    for k in range(18):  # a burst at m-burst two days ago
        add(STEADY[k % len(STEADY)], "m-burst", (D - 2) * DAY + 20 * 3_600_000 + k * 60_000)
    noon = D * DAY + 12 * 3_600_000
    add("c-comp", "m-plain", noon - 26 * 3_600_000, labelled=noon - 3_600_000)  # confirmed an hour ago
    expected = {}
    for reason, card, merchant in [
        ("", "s3", "m-plain"),
        ("merchant_known_fraud_recent", "s3", "m-known"),
        ("merchant_activity_unusual", "s3", "m-burst"),
        ("merchant_new_cards_unusual", "s3", "m-new"),
        ("merchant_recent_fraud_rate_high", "s3", "m-rate"),
        ("card_known_compromised", "c-comp", "m-plain"),
    ]:
        add(card, merchant, noon)
        expected[rows[-1][0]] = reason
    frame = pd.DataFrame(rows, columns=["transaction_id", "card_id", "merchant_id", "ts_ms", "is_fraud", "labelled_ms"])
    frame = frame.assign(utc_offset_min=0, amount=25.0, channel="pos", merchant_category="grocery")
    return frame, expected


def _crafted_model(base: np.ndarray, path: Path) -> Scorer:
    """A model that flags exactly the rows where a condition is on, saved as an artifact."""
    rng = np.random.default_rng(3)
    x = base[rng.integers(0, len(base), 6000)]
    y = np.zeros(len(x), dtype=np.int64)
    for feature, off, on in CONDITIONS.values():
        hot = rng.random(len(x)) < 0.12
        x[:, FEATURE_NAMES.index(feature)] = np.where(hot, rng.uniform(*on, len(x)), rng.uniform(*off, len(x)))
        y |= hot
    # One thread: OpenMP threads spinning against a busy machine make the fit minutes long.
    with threadpool_limits(1):
        estimator = HistGradientBoostingClassifier(max_iter=60, random_state=1).fit(x, y)
    metadata = {
        "created_at": "2026-12-01T00:00:00+00:00",
        "thresholds": {"review": 0.5, "block": 0.9},
        "reference_features": np.median(x, axis=0).tolist(),
        "label_delay_days": 7.0,
    }
    save_artifact(path, estimator, metadata)
    scorer = Scorer(load_artifact(path))
    scorer.self_check()
    return scorer


def test_a_transaction_built_to_trip_a_feature_group_gets_its_reason_code(tmp_path: Path) -> None:
    frame, expected = _world()
    history = history_from_frame(frame)
    risk = risk_context_from_frame(frame, 7 * DAY)
    base = compute_features(frame, history, risk)[~frame["transaction_id"].isin(expected).to_numpy()]
    scorer = _crafted_model(base, tmp_path / "model")
    queries = frame.loc[frame["transaction_id"].isin(expected)].reset_index(drop=True)
    batch = scorer.score_frame(queries, history, risk)

    for i, tid in enumerate(queries["transaction_id"]):
        values = dict(zip(FEATURE_NAMES, batch.features[i].tolist(), strict=True))
        reason = expected[tid]
        # The world trips exactly the condition meant for this transaction, and no other.
        for code, (feature, off, on) in CONDITIONS.items():
            want = on if code == reason else off
            assert want[0] <= values[feature] <= want[1], (reason, feature, values[feature])
        if reason:
            assert batch.decisions[i] != "allow", reason
            assert batch.reasons[i][:1] == [reason], (reason, batch.reasons[i])
        else:
            assert batch.decisions[i] == "allow" and batch.reasons[i] == []


def test_a_large_batch_of_a_tree_model_takes_the_compiled_walk_bit_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = np.random.default_rng(5).normal(size=(3000, len(FEATURE_NAMES)))
    scorer = _crafted_model(base, tmp_path / "m")
    rows = base[:1000]
    expected = scorer._predict_sklearn(rows)  # noqa: SLF001 - the reference the fast path must equal

    def not_scikit_learn(features: np.ndarray) -> np.ndarray:
        raise AssertionError(f"{len(features)} rows went to scikit-learn")

    monkeypatch.setattr(scorer, "_predict_sklearn", not_scikit_learn)
    np.testing.assert_array_equal(scorer.predict(rows), expected)
