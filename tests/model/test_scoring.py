"""The stream encodes decisions without building pydantic models: the bytes must be the ones the
model would give, for every kind of timestamp, score and optional field."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
import orjson

from model.features import FEATURE_NAMES
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
