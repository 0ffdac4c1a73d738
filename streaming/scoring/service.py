"""The one scoring service: the worker's batches and the API's requests are both decided here.

A call takes valid transactions and their cards' stored states and returns each transaction's
decision fields: one feature pass over the batch (card history plus merchant risk), one model
call, thresholds and reasons. Whatever decides a transaction (the model today; rules, lists and a
challenger model later) plugs in here once, so the stream and ``/predict`` always decide alike.

CPU-bound: call it on the scoring thread (:func:`model.scoring.scoring_executor`), never on the
event loop. One call uses one model throughout, so a model swap happens between calls.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from model.drift import DriftMonitor
from model.features import Columns, RiskContext, compute_features, epoch_ms, frame_from_transactions
from model.schemas import Decision, Transaction, decision_json
from model.scoring import ModelHolder, ScoredBatch, Scorer, utcnow
from streaming.scoring.merchant_risk import MerchantRisk
from streaming.scoring.state import CardState, history_frame, labels_frame, merge

#: A history row not stored yet: ``(transaction_id, card_id, merchant_id, ts_ms, amount)``.
HistoryRow = tuple[str, str, str, int, float]


@dataclass(frozen=True)
class Scored:
    """What a call decided, in the order of its transactions."""

    #: The transactions as canonical columns (``model.features.CANONICAL_COLUMNS``).
    queries: Columns
    batch: ScoredBatch
    #: Each decision as :class:`model.schemas.Decision`'s fields, in its field order.
    fields: list[dict[str, Any]]
    #: The challenger's decisions of the same transactions (shadow: never acted on), or none.
    shadow: list[dict[str, Any]] = field(default_factory=list)


class ScoringService:
    """Scores with the holder's serving model against card state and merchant risk, and with the
    ``challenger`` holder's model in shadow when it has one."""

    def __init__(
        self,
        holder: ModelHolder,
        risk: MerchantRisk,
        include_features: bool = False,
        track_drift: bool = False,
        challenger: ModelHolder | None = None,
    ) -> None:
        self.holder, self.risk, self.include_features = holder, risk, include_features
        self.challenger = challenger
        #: PSI of the scored traffic against the model's training data (``track_drift``).
        self.drift: DriftMonitor | None = None
        self._track_drift = track_drift

    def score(
        self,
        txs: Sequence[Transaction],
        states: Mapping[str, CardState | None],
        new_rows: Sequence[HistoryRow] = (),
        unavailable: Collection[str] = (),
        exclude_scored: bool = False,
        scored_at: datetime | None = None,
        queries: Columns | None = None,
    ) -> Scored:
        """Decide ``txs`` against ``states`` (their cards' stored states; missing or None: none).

        ``new_rows``: history not stored yet (the worker's batch, so a card's second transaction in
        it sees its first; each row's own timestamp bounds what it sees, so no row sees itself).
        ``unavailable``: cards whose state could not be read (their decisions say so).
        ``exclude_scored``: leave the scored transactions out of the stored history, for a
        transaction the stream may have stored already (``/predict`` then answers what the stream
        answered instead of counting it twice). ``queries``: ``txs`` as canonical columns, when
        the caller built them already.
        """
        scorer = self.holder.scorer
        if queries is None:
            queries = frame_from_transactions(txs)
        history = history_frame(states, new_rows, with_ids=exclude_scored)
        if exclude_scored:
            keep = ~np.isin(history["transaction_id"], queries["transaction_id"])
            history = {name: values[keep] for name, values in history.items()}
        risk = self.risk.context(queries["merchant_id"], labels_frame(states))
        features = compute_features(queries, history, risk)
        batch = scorer.score_features(features)
        if self._track_drift:
            if self.drift is None or self.drift.version != scorer.version:
                self.drift = DriftMonitor(scorer.artifact.metadata.get("drift_reference"), version=scorer.version)
            self.drift.observe(batch.features, batch.scores)
        card_states = [_card_state(tx.card_id, states, unavailable) for tx in txs]
        scored_at = scored_at or utcnow()
        fields = scorer.decision_fields(txs, batch, card_states, scored_at, self.include_features)
        shadow = self._shadow(scorer, txs, features, card_states, scored_at)
        return Scored(queries=queries, batch=batch, fields=fields, shadow=shadow)

    def _shadow(
        self,
        champion: Scorer,
        txs: Sequence[Transaction],
        features: np.ndarray,
        card_states: list[str],
        scored_at: datetime,
    ) -> list[dict[str, Any]]:
        """The challenger's decisions on the same features (one more model call, plus one for
        the reasons of what it flags)."""
        challenger = self.challenger.current if self.challenger is not None else None
        if challenger is None or challenger.version == champion.version:
            return []
        batch = challenger.score_features(features)
        return challenger.decision_fields(txs, batch, card_states, scored_at, self.include_features)

    def decisions(self, scored: Scored) -> list[Decision]:
        """The decisions as validated models (the API's answers)."""
        return [Decision(**fields) for fields in scored.fields]

    def drift_values(self) -> dict[str, float]:
        """PSI per signal (call on the scoring thread, which owns the drift buffers)."""
        return self.drift.values() if self.drift else {}

    def warm_up(self) -> None:
        """Run the scoring path once on a made-up transaction, off the books (no metrics, no
        state, no drift): first calls into numpy and the model are several times slower, and
        without this the first real requests after a start pay for it."""
        tx = Transaction(
            transaction_id="warm-up",
            timestamp=utcnow(),
            card_id="warm-up",
            merchant_id="warm-up",
            amount=1.0,
            currency="USD",
        )
        scorer = self.holder.scorer
        queries = frame_from_transactions([tx])
        history = history_frame({tx.card_id: merge(None, [("w0", epoch_ms(tx.timestamp) - 1, 1.0, "m")], 0)})
        batch = scorer.score_frame(queries, history, RiskContext.empty())
        decision_json(scorer.decision_fields([tx], batch, ["used"], utcnow(), self.include_features)[0])


def _card_state(card_id: str, states: Mapping[str, CardState | None], unavailable: Collection[str]) -> str:
    if card_id in unavailable:
        return "unavailable"
    state = states.get(card_id)
    return "used" if state and state["ids"] else "empty"
