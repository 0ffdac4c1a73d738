"""A decision's card_state does not depend on batch boundaries or on redelivery: a transaction
decided again after a crash (its card state already holding it) reads as it did the first time."""

from __future__ import annotations

from model.schemas import Transaction
from streaming.scoring.service import _card_states
from streaming.scoring.state import merge


def tx(tid: str, card: str = "c1") -> Transaction:
    return Transaction.model_validate(
        {
            "transaction_id": tid,
            "timestamp": "2026-02-01T00:00:00+00:00",
            "card_id": card,
            "merchant_id": "m1",
            "amount": 5.0,
            "currency": "EUR",
        }
    )


def test_first_transactions_stay_empty_when_redelivered() -> None:
    t1, t2 = tx("t1"), tx("t2")
    ts = [1_000, 2_000]
    fresh = [("t1", "c1", "m1", 1_000, 5.0), ("t2", "c1", "m1", 2_000, 5.0)]
    # First time: no stored state, both in the batch; t2 sees t1 as a batch-mate.
    first = _card_states([t1, t2], ts, {}, fresh, ())
    assert first == ["empty", "used"]
    # Redelivered after a crash: both stored already, nothing new in the batch.
    stored = {"c1": merge(None, [("t1", 1_000, 5.0, "m1"), ("t2", 2_000, 5.0, "m1")], 0)}
    assert _card_states([t1, t2], ts, stored, [], ()) == first
    # ...or split differently: t1 alone, then t2 alone.
    assert _card_states([t1], ts[:1], stored, [], ()) == ["empty"]
    assert _card_states([t2], ts[1:], stored, [], ()) == ["used"]


def test_unavailable_and_other_cards() -> None:
    stored = {"c2": merge(None, [("x", 500, 1.0, "m1")], 0)}
    got = _card_states([tx("a", "c1"), tx("b", "c2"), tx("c", "c3")], [1_000] * 3, stored, [], ("c3",))
    assert got == ["empty", "used", "unavailable"]
