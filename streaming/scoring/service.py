"""The one scoring service: the worker's batches and the API's requests are both decided here.

A call takes valid transactions and their cards' stored states and returns each transaction's
decision fields: one feature pass over the batch (card history plus merchant risk), one model
call, thresholds and reasons, then the rules and lists that come before the model
(:mod:`streaming.scoring.rules`). With a challenger, its shadow decisions come from the same
features and the same rules verdict: only the model differs. Whatever decides a transaction
plugs in here once, so the stream and ``/predict`` always decide alike.

CPU-bound: call it on the scoring thread (:func:`model.scoring.scoring_executor`), never on the
event loop. One call uses one model throughout, so a model swap happens between calls.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np

from model.drift import DriftMonitor
from model.features import Columns, RiskContext, compute_features, epoch_ms, frame_from_transactions
from model.schemas import Decision, Transaction, decision_json
from model.scoring import ModelHolder, ScoredBatch, Scorer, utcnow
from streaming.metrics import ModelMetrics
from streaming.scoring.merchant_risk import MerchantRisk
from streaming.scoring.rules import Inputs, RuleBook, Verdicts
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
        rules: RuleBook | None = None,
        metrics: ModelMetrics | None = None,
    ) -> None:
        self.holder, self.risk, self.include_features = holder, risk, include_features
        self.challenger = challenger
        #: Rules and lists ahead of the model (None: the model alone decides).
        self.rules = rules
        self.metrics = metrics
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
        history: Columns | None = None,
    ) -> Scored:
        """Decide ``txs`` against ``states`` (their cards' stored states; missing or None: none).

        ``new_rows``: history not stored yet (the worker's batch, so a card's second transaction in
        it sees its first; each row's own timestamp bounds what it sees, so no row sees itself).
        ``unavailable``: cards whose state could not be read (their decisions say so).
        ``exclude_scored``: leave the scored transactions out of the stored history, for a
        transaction the stream may have stored already (``/predict`` then answers what the stream
        answered instead of counting it twice). ``queries``: ``txs`` as canonical columns, when
        the caller built them already; ``history``: ``history_frame(states, new_rows)``, likewise
        (with its ids if ``exclude_scored``).
        """
        scorer = self.holder.scorer
        if queries is None:
            queries = frame_from_transactions(txs)
        if history is None:
            history = history_frame(states, new_rows, with_ids=exclude_scored)
        if exclude_scored:
            keep = ~np.isin(history["transaction_id"], queries["transaction_id"])
            history = {name: values[keep] for name, values in history.items()}
        risk = self.risk.context(queries["merchant_id"], labels_frame(states))

        def features_at(label_delay_ms: int) -> np.ndarray:
            # Merchant fraud rates read up to the model's own label delay, as it was trained.
            return compute_features(queries, history, replace(risk, label_delay_ms=label_delay_ms))

        features = features_at(scorer.label_delay_ms)
        batch = scorer.score_features(features)
        if self._track_drift:
            if self.drift is None or self.drift.version != scorer.version:
                self.drift = DriftMonitor(scorer.artifact.metadata.get("drift_reference"), version=scorer.version)
            self.drift.observe(batch.features, batch.scores)
        card_states = _card_states(txs, queries["ts_ms"].tolist(), states, new_rows, unavailable)
        scored_at = scored_at or utcnow()
        fields = scorer.decision_fields(txs, batch, card_states, scored_at, self.include_features)
        shadow = self._shadow(scorer, txs, features, card_states, scored_at, features_at)
        ruleset = self.rules.snapshot() if self.rules is not None else None
        if ruleset is not None and not ruleset.empty:
            # Rules read the transaction and its features, never the score: one verdict serves
            # both models, so a shadow decision differs from the live one only where the models do.
            inputs = Inputs.of_transactions(txs, queries, batch.features)
            verdicts = ruleset.apply(inputs, int(scored_at.timestamp() * 1000))
            self._count(verdicts, _overrule(fields, verdicts))
            _overrule(shadow, verdicts)
        return Scored(queries=queries, batch=batch, fields=fields, shadow=shadow)

    def _shadow(
        self,
        champion: Scorer,
        txs: Sequence[Transaction],
        features: np.ndarray,
        card_states: list[str],
        scored_at: datetime,
        features_at: Callable[[int], np.ndarray],
    ) -> list[dict[str, Any]]:
        """The challenger's decisions on the same features (one more model call, plus one for
        the reasons of what it flags), before rules. A challenger trained with another label
        delay gets its own features (``features_at(its delay)``): its merchant fraud rates differ."""
        challenger = self.challenger.current if self.challenger is not None else None
        if challenger is None or challenger.version == champion.version:
            return []
        if challenger.label_delay_ms != champion.label_delay_ms:
            features = features_at(challenger.label_delay_ms)
        batch = challenger.score_features(features)
        return challenger.decision_fields(txs, batch, card_states, scored_at, self.include_features)

    def _count(self, verdicts: Verdicts, decided: dict[tuple[str, str], int]) -> None:
        """Rule hits and rule decisions, the live ones only (a shadow decision is never acted on)."""
        if self.metrics is None:
            return
        for (rule, action, mode), n in verdicts.hits.items():
            self.metrics.rule_hits.labels(rule=rule, action=action, mode=mode).inc(n)
        for (source, action), n in decided.items():
            self.metrics.rule_decisions.labels(source=source, decision=action).inc(n)

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


def _overrule(fields: list[dict[str, Any]], verdicts: Verdicts) -> dict[tuple[str, str], int]:
    """Overrule the model where a rule or list decides (precedence: streaming/scoring/rules.py);
    returns how many each source decided, per action. No fields (no challenger): nothing."""
    decided: dict[tuple[str, str], int] = {}
    if not fields:
        return decided
    for row, action, by in zip(fields, verdicts.actions, verdicts.decided_by, strict=True):
        if action is None:
            continue
        row["decision"], row["decided_by"] = action, by
        row["reasons"] = [by, *row["reasons"]]
        key = (by.partition(":")[0], action)
        decided[key] = decided.get(key, 0) + 1
    return decided


def _card_states(
    txs: Sequence[Transaction],
    ts_ms: Sequence[int],
    states: Mapping[str, CardState | None],
    new_rows: Sequence[HistoryRow],
    unavailable: Collection[str],
) -> list[str]:
    """``used`` when the card has another transaction no later than this one, stored or earlier in
    the batch; else ``empty``. Not "the stored state is non-empty": after a crash the state
    holds the redelivered transactions themselves, and their decisions must read as before."""
    batch: dict[str, list[tuple[int, str]]] = {}
    for tid, card, _merchant, ts, _amount in new_rows:
        batch.setdefault(card, []).append((ts, tid))
    out = []
    for tx, ts in zip(txs, ts_ms, strict=True):
        if tx.card_id in unavailable:
            out.append("unavailable")
            continue
        tid = tx.transaction_id
        earlier = _stored_earlier(states.get(tx.card_id), tid, ts) or any(
            t <= ts and other != tid for t, other in batch.get(tx.card_id, ())
        )
        out.append("used" if earlier else "empty")
    return out


def _stored_earlier(state: CardState | None, tid: str, ts: int) -> bool:
    # The stored lists are sorted by time: the oldest entry that is not this transaction decides.
    if not state:
        return False
    for other, t in zip(state["ids"][:2], state["ts"][:2], strict=True):
        if other != tid:
            return bool(t <= ts)
    return False
