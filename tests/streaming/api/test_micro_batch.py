"""Concurrent /predict requests share scoring calls and still get their own, alone-equal answers."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from model.errors import ModelNotReadyError
from model.features import FEATURE_NAMES, epoch_ms
from model.schemas import Transaction
from model.scoring import ModelHolder
from streaming.api.micro_batch import MicroBatcher
from streaming.scoring.merchant_risk import MerchantRisk
from streaming.scoring.service import ScoringService
from streaming.scoring.state import merge


@pytest.fixture(scope="module")
def setup(small_frame: pd.DataFrame, small_model_dir: Path) -> tuple[ModelHolder, list[Transaction], dict]:
    frame = small_frame
    holder = ModelHolder(small_model_dir)
    assert holder.load()
    txs = [Transaction.model_validate(r) for r in frame.iloc[-40:].to_dict("records")]
    past = frame.iloc[:-40]
    states = {
        card: merge(None, [(t, epoch_ms(datetime.fromisoformat(ts)), a, m) for t, ts, a, m in rows], 3_600_000)
        for card, rows in past.groupby("card_id")[["transaction_id", "timestamp", "amount", "merchant_id"]]
        .apply(lambda g: list(g.itertuples(index=False)))
        .items()
    }
    return holder, txs, states


def test_concurrent_requests_share_calls_and_equal_lone_answers(setup: tuple) -> None:
    holder, txs, states = setup
    executor = ThreadPoolExecutor(max_workers=1)
    risk = MerchantRisk()

    async def alone() -> list:
        batcher = MicroBatcher(ScoringService(holder, risk), executor)
        return [await batcher.score(tx, states.get(tx.card_id)) for tx in txs]

    async def together() -> tuple[list, int]:
        batcher = MicroBatcher(ScoringService(holder, risk), executor, max_rows=16)
        got = await asyncio.gather(*(batcher.score(tx, states.get(tx.card_id)) for tx in txs))
        return list(got), batcher.calls

    single = asyncio.run(alone())
    shared, calls = asyncio.run(together())
    assert len({tx.card_id for tx in txs}) < len(txs), "the traffic must repeat a card"
    assert calls < len(txs) / 3  # batched, and split where a card repeats or the cap is reached
    assert [d.score for d in shared] == [d.score for d in single]
    assert [d.card_state for d in shared] == [d.card_state for d in single]
    assert {d.card_state for d in shared} >= {"used"}


def test_a_failure_reaches_every_waiting_request(tmp_path: Path) -> None:
    holder = ModelHolder(tmp_path)  # nothing loaded: every call fails with 503's error
    batcher = MicroBatcher(ScoringService(holder, MerchantRisk()), ThreadPoolExecutor(max_workers=1))
    tx = Transaction(
        transaction_id="t", timestamp=datetime(2026, 1, 1, tzinfo=UTC), card_id="c", merchant_id="m", amount=1.0,
        currency="USD",
    )  # fmt: skip

    async def run() -> list:
        return await asyncio.gather(batcher.score(tx, None), batcher.score(tx, None), return_exceptions=True)

    assert all(isinstance(r, ModelNotReadyError) for r in asyncio.run(run()))


def test_a_request_may_ask_for_the_feature_values_alone(setup: tuple) -> None:
    holder, txs, states = setup
    batcher = MicroBatcher(ScoringService(holder, MerchantRisk()), ThreadPoolExecutor(max_workers=1))

    async def run() -> list:
        return await asyncio.gather(
            *(batcher.score(tx, states.get(tx.card_id), features=i == 1) for i, tx in enumerate(txs[:3]))
        )

    plain, explained, other = asyncio.run(run())
    assert batcher.calls == 1
    assert plain.features is None and other.features is None
    assert explained.features is not None and list(explained.features) == list(FEATURE_NAMES)
    assert explained.features["amount"] == txs[1].amount
