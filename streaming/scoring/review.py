"""Review cases: what an analyst needs to decide a ``review`` decision, on the review topic.

The worker writes one case per ``review`` decision it publishes (keyed by transaction id, so a
redelivered transaction replaces its case): the decision, the transaction, the feature values
behind the score and the card's recent history as the worker saw it. The console's review queue
is these cases minus the transactions that have a label.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel

from model.features import FEATURE_NAMES
from model.schemas import Transaction
from streaming.scoring.state import CardState

#: The card's most recent transactions a case shows.
CASE_HISTORY = 20


class HistoryEntry(BaseModel):
    transaction_id: str
    timestamp: datetime
    amount: float
    merchant_id: str


class ReviewCase(BaseModel):
    """A review case as the review topic carries it."""

    decision: dict[str, Any]
    transaction: dict[str, Any]
    features: dict[str, float]
    card_history: list[HistoryEntry]


def case_json(
    fields: dict[str, Any], tx: Transaction, features: np.ndarray, state: CardState | None, before_ms: int
) -> bytes:
    """A review case's wire bytes (built on the scoring thread): ``state`` is the card's stored
    state the decision was made against; its entries before ``before_ms`` are the history."""
    history: list[dict[str, Any]] = []
    if state and state.get("ts"):
        ts = state["ts"]
        end = int(np.searchsorted(ts, before_ms, side="left"))
        for i in range(max(0, end - CASE_HISTORY), end):
            history.append(
                {
                    "transaction_id": state["ids"][i],
                    "timestamp": datetime.fromtimestamp(ts[i] / 1000, UTC),
                    "amount": state["amt"][i],
                    "merchant_id": state["mer"][i],
                }
            )
    history.reverse()  # newest first
    case = {
        "decision": {k: v for k, v in fields.items() if k != "features"},
        "transaction": tx.model_dump(mode="json", exclude_none=True),
        "features": dict(zip(FEATURE_NAMES, features.tolist(), strict=True)),
        "card_history": history,
    }
    return orjson.dumps(case, option=orjson.OPT_UTC_Z)
