"""The worker's batch pipeline: validate -> card state + merchant risk -> scoring service -> outputs.

Per-message error policy (counted and logged with topic[partition]@offset):

* invalid input (not JSON, wrong types, missing fields, bad amounts, oversized): dead-letter it
  with the original bytes, the reason and its source coordinates in headers, and go on;
* an internal failure (model, state, producer): log it and stop the process *without*
  committing (:func:`streaming.fatal.stop_uncommitted`), so the batch is consumed again after
  restart (at-least-once; decisions are idempotent by ``transaction_id``).

Offsets: a batch is acknowledged only after the broker acknowledged every output of the batch
(decisions, dead letters, state changelog, merchant risk), so an offset is committed only once its
decision or dead letter is written. A stop request lets the batch in flight finish first.

One batch is scored while the previous one's outputs are on their way (never more). CPU work
(validation, scoring) runs on the scoring thread so the event loop keeps consuming and
heartbeating. The pipeline knows Faust only through what :mod:`streaming.worker.app` hands it:
messages, the table's dict, an ``ack`` callable and the consumer for progress metrics.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, TypeVar

import numpy as np

from model.features import DAY_MS, MERCHANT_SPAN_DAYS, epoch_ms, first_at_merchant, frame_from_transactions
from model.registry import CHALLENGER, CHAMPION, ROLES, RegistrySource
from model.schemas import Label, Transaction, decision_json
from model.scoring import utcnow
from streaming.fatal import Exit, exit_now, stop_uncommitted
from streaming.kafka import clients as kafka
from streaming.kafka.outputs import OutputBatch, Outputs
from streaming.kafka.replica import Replica
from streaming.metrics import WorkerMetrics
from streaming.quality import QualityTracker
from streaming.scoring.merchant_risk import label_key
from streaming.scoring.review import case_json
from streaming.scoring.service import HistoryRow, ScoringService
from streaming.scoring.state import (
    CardState,
    changelog_key,
    decode_state,
    encode_state,
    history_frame,
    merge,
    with_fraud_label,
    without_fraud_label,
)
from streaming.scoring.validation import (
    Rejected,
    check_label_record,
    check_record,
    parse_label,
    parse_transaction,
)
from streaming.settings import WorkerSettings

log = logging.getLogger("fraudstream.worker")

T = TypeVar("T")

_NO_IDS: CardState = {"ids": []}

#: Days kept past the longest merchant window before merchant risk is pruned (late events).
RISK_MARGIN_DAYS = 2

#: How long a stop waits for the batch in flight, and a rebalance for the merchant-risk replica.
STOP_WAIT_SECONDS = 60.0
RISK_SYNC_SECONDS = 120.0


class Message(Protocol):
    """What the pipeline reads of a consumed message (Faust's ``Message`` has these)."""

    topic: str
    partition: int
    offset: int
    timestamp: float
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Record:
    """The parts of a consumed Kafka record the pipeline needs."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None

    @classmethod
    def of(cls, m: Message) -> Record:
        return cls(m.topic, m.partition, m.offset, int(m.timestamp * 1000), m.key, m.value)

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass
class ScoredTransactions:
    #: The decisions' fields (:meth:`model.scoring.Scorer.decision_fields`).
    decisions: list[dict[str, Any]]
    #: The decisions as their wire bytes (encoded on the scoring thread, off the event loop).
    encoded: list[bytes]
    #: The cards' new states as their changelog values (JSON), which is also how the table
    #: holds them (see :func:`decode_state`).
    states: dict[str, bytes]
    #: Each transaction's event time, ms since the epoch (for the quality tracker).
    event_ms: list[int]
    #: Merchant-risk records to publish (new absolute daily counts).
    risk_records: list[tuple[bytes, bytes]]
    #: Review cases of the batch's ``review`` decisions: (transaction id, case JSON).
    cases: list[tuple[bytes, bytes]]
    #: The challenger's shadow decisions of the same transactions (empty without a challenger).
    shadow: list[dict[str, Any]] = field(default_factory=list)
    shadow_encoded: list[bytes] = field(default_factory=list)


class BatchScorer:
    """The pipeline's CPU-bound steps, run on the scoring thread: validation, and scoring a batch
    against card state while keeping that state and the merchant counts up to date."""

    def __init__(self, service: ScoringService, metrics: WorkerMetrics, grace_ms: int, max_history: int = 5000) -> None:
        self.service, self.metrics = service, metrics
        self.risk = service.risk
        self.grace_ms, self.max_history = grace_ms, max_history
        #: Newest transaction time scored (event time), for pruning merchant risk.
        self.newest_ms: int | None = None

    def split(
        self, records: Sequence[Record]
    ) -> tuple[list[tuple[Record, Transaction]], list[tuple[Record, Rejected]]]:
        return _validated(
            records, parse_transaction, lambda tx, rec: check_record(tx, rec.key, rec.timestamp_ms), "transaction"
        )

    def split_labels(
        self, records: Sequence[Record]
    ) -> tuple[list[tuple[Record, Label]], list[tuple[Record, Rejected]]]:
        return _validated(records, parse_label, lambda label, rec: check_label_record(label, rec.key), "label")

    def score(
        self, txs: Sequence[Transaction], partitions: Sequence[int], stored: Mapping[str, bytes | None]
    ) -> ScoredTransactions:
        """One feature pass and one model call per batch. ``stored``: the batch's cards as the
        table holds them (changelog values, or None)."""
        with self.metrics.batch_duration.time():
            states = {card: decode_state(value) for card, value in stored.items()}
            queries = frame_from_transactions(txs)
            # Transactions new to their card's state: counted for their merchant, and history
            # for the rest of the batch.
            seen: set[str] = set()
            fresh: list[HistoryRow] = []
            first_time = []
            for i, (tx, p, ts) in enumerate(zip(txs, partitions, queries["ts_ms"].tolist(), strict=True)):
                tid = tx.transaction_id
                # A scan of the card's stored ids (in C) costs less than a set of them, for the
                # one or two transactions a card has in a batch.
                if tid not in seen and tid not in (states.get(tx.card_id) or _NO_IDS)["ids"]:
                    fresh.append((tid, tx.card_id, tx.merchant_id, ts, tx.amount))
                    first_time.append((i, tx.merchant_id, ts // DAY_MS, p))
                seen.add(tid)
            history = history_frame(states, fresh, with_ids=False)
            # Merchant activity first: the merchant windows end days before each transaction's
            # own day, so counting the whole batch up front is what the batch path sees too. A
            # transaction is flagged new at its merchant before it is counted.
            new = first_at_merchant(queries, history)
            risk_records = self.risk.increment([(m, day, p, bool(new[i])) for i, m, day, p in first_time])
            newest = int(queries["ts_ms"].max())
            self.newest_ms = newest if self.newest_ms is None else max(self.newest_ms, newest)
            scored = self.service.score(txs, states, new_rows=fresh, queries=queries, history=history)
            rows: dict[str, list[tuple[str, int, float, str]]] = {}
            for tid, card, merchant, ts, amount in fresh:
                rows.setdefault(card, []).append((tid, ts, amount, merchant))
            new_states = {
                card: merge(states.get(card), card_rows, self.grace_ms, self.max_history, fresh=True)
                for card, card_rows in rows.items()
            }
            cases = [
                (tx.transaction_id.encode(), case_json(fields, tx, features, states.get(tx.card_id), ts))
                for tx, fields, features, ts in zip(
                    txs, scored.fields, scored.batch.features, queries["ts_ms"].tolist(), strict=True
                )
                if fields["decision"] == "review"
            ]
        self.metrics.batch_size.observe(len(txs))
        return ScoredTransactions(
            decisions=scored.fields,
            encoded=[decision_json(d) for d in scored.fields],
            states={card: encode_state(state) for card, state in new_states.items()},
            event_ms=queries["ts_ms"].tolist(),
            risk_records=risk_records,
            cases=cases,
            shadow=scored.shadow,
            shadow_encoded=[decision_json(d) for d in scored.shadow],
        )


def _validated(
    records: Sequence[Record],
    parse: Callable[[bytes | None], T | Rejected],
    check: Callable[[T, Record], Rejected | None],
    what: str,
) -> tuple[list[tuple[Record, T]], list[tuple[Record, Rejected]]]:
    """Valid messages and rejected ones (logged with topic[partition]@offset), in order."""
    valid: list[tuple[Record, T]] = []
    rejected: list[tuple[Record, Rejected]] = []
    for rec in records:
        parsed = parse(rec.value)
        if not isinstance(parsed, Rejected):
            parsed = check(parsed, rec) or parsed
        if isinstance(parsed, Rejected):
            log.warning("dead-lettering %s %s: %s: %s", what, rec.where, parsed.reason, parsed.detail)
            rejected.append((rec, parsed))
        else:
            valid.append((rec, parsed))
    return valid, rejected


def dlq_headers(rec: Record, rejected: Rejected) -> list[tuple[str, bytes]]:
    return [
        ("error.reason", rejected.reason.encode()),
        ("error.detail", rejected.detail.encode()),
        ("source.topic", rec.topic.encode()),
        ("source.partition", str(rec.partition).encode()),
        ("source.offset", str(rec.offset).encode()),
        ("source.timestamp_ms", str(rec.timestamp_ms).encode()),
    ]


class Pipeline:
    """The worker's batch handling: one instance per worker process, driven by
    :mod:`streaming.worker.app` (batches, rebalances, timers)."""

    def __init__(
        self,
        settings: WorkerSettings,
        scorer: BatchScorer,
        metrics: WorkerMetrics,
        outputs: Outputs,
        cards: MutableMapping[str, bytes],
        changelog_topic: str,
        executor: Executor,
        ack: Callable[[Sequence[Any]], None],
        replica: Replica | None = None,
        exit: Exit | None = None,
    ) -> None:
        self.settings, self.scorer, self.metrics, self.outputs = settings, scorer, metrics, outputs
        self.cards, self.changelog_topic, self.executor, self.ack = cards, changelog_topic, executor, ack
        self.replica = replica
        #: Ends the process on an internal error (tests pass one that raises).
        self.exit: Exit = exit or exit_now
        #: Decisions joined to the labels that come later (by transaction id) for live quality:
        #: the champion's, and the challenger's shadow decisions of the same transactions.
        self.quality = {role: QualityTracker(max_decisions=settings.quality_max_decisions) for role in ROLES}
        #: Which partition each stored card arrived on, to drop its state when the partition
        #: moves to another worker (the memory store only tracks keys it restored).
        self.card_partition: dict[str, int] = {}
        #: Next offset to process per partition, for the lag gauge.
        self.processed: dict[int, int] = {}
        #: Set on every assignment: partitions may come from another worker, whose last merchant
        #: counts this process must have read before it continues them.
        self.risk_sync_needed = True
        holders = (scorer.service.holder, scorer.service.challenger)
        self._reload_failures_seen = sum(h.reload_failures for h in holders if h is not None)

    # --- batches --------------------------------------------------------------------------

    async def run(self, batches: AsyncIterator[Sequence[Message]]) -> None:
        """One batch scored while the previous one's outputs are still on their way to the broker
        (state is updated in memory, so the next batch sees it); each batch is acknowledged once
        its own outputs and the previous batch's acknowledgement are done."""
        acked: asyncio.Future[None] | None = None
        try:
            async for messages in batches:
                if acked is None:
                    # Everything loaded so far (libraries, model) lives as long as the process:
                    # out of the collector's full passes, which stalled batches for up to a few
                    # hundred ms. What lives long after this (card states, retained decisions)
                    # is kept in forms the collector does not track.
                    gc.freeze()
                step = asyncio.ensure_future(self.process(messages, acked))
                try:
                    acked = await asyncio.shield(step)
                except asyncio.CancelledError:
                    # Stopping (SIGTERM): finish the batch in flight, then acknowledge what is
                    # written (below), or exit before anything more is committed.
                    acked = await asyncio.wait_for(step, timeout=STOP_WAIT_SECONDS)
                    raise
        finally:
            if acked is not None:
                await asyncio.wait_for(asyncio.shield(acked), timeout=STOP_WAIT_SECONDS)

    async def process(self, messages: Sequence[Message], previous: asyncio.Future[None] | None) -> asyncio.Future[None]:
        try:
            outputs = await self.handle(messages)
        except Exception:
            self.crashed(messages)
        if previous is not None:
            await previous  # at most one batch's outputs in flight while the next is scored
        return asyncio.ensure_future(self.acknowledge(messages, outputs))

    async def acknowledge(self, messages: Sequence[Message], outputs: Awaitable[None]) -> None:
        try:
            await outputs
        except Exception:
            self.crashed(messages)
        self.ack(messages)

    def crashed(self, messages: Sequence[Message]) -> NoReturn:
        self.metrics.processing_errors.inc()
        first = messages[0]
        where = f"{first.topic}[{first.partition}]@{first.offset}"
        stop_uncommitted(f"internal error on batch from {where}", exc_info=True, exit=self.exit)

    async def handle(self, messages: Sequence[Message]) -> Awaitable[None]:
        """Process a batch up to its outputs; returns what resolves once they are all written."""
        if self.risk_sync_needed:
            await self.sync_merchant_risk()
            self.risk_sync_needed = False
        settings, metrics = self.settings, self.metrics
        records = [Record.of(m) for m in messages]
        batch = self.outputs.batch()
        loop = asyncio.get_running_loop()
        label_records = [r for r in records if r.topic == settings.labels_topic]
        if label_records:
            await self.apply_labels(label_records, batch)
            records = [r for r in records if r.topic != settings.labels_topic]
            if not records:
                return self.written([], batch)
        metrics.consumed.inc(len(records))
        # Parsing and validating a batch is CPU work too (~10 µs a message): off the loop.
        valid, rejected = await loop.run_in_executor(self.executor, self.scorer.split, records)
        for rec, rej in rejected:
            batch.add(settings.dlq_topic, rec.key, rec.value or b"", dlq_headers(rec, rej))
            metrics.dead_letters.labels(reason=rej.reason).inc()
        if valid:
            txs = [tx for _, tx in valid]
            stored = {tx.card_id: self.cards.get(tx.card_id) for tx in txs}
            partitions = [rec.partition for rec, _ in valid]
            result = await loop.run_in_executor(self.executor, self.scorer.score, txs, partitions, stored)
            self.publish(batch, valid, result)
        return self.written(records, batch)

    def publish(
        self, batch: OutputBatch, valid: Sequence[tuple[Record, Transaction]], result: ScoredTransactions
    ) -> None:
        """Queue a scored batch's outputs (state kept in memory at once) and count it."""
        settings, metrics = self.settings, self.metrics
        for key, value in result.risk_records:
            batch.add(settings.merchant_risk_topic, key, value)
        for key, value in result.cases:
            batch.add(settings.review_topic, key, value)
        partition_of = {tx.card_id: rec.partition for rec, tx in valid}
        for card, value in result.states.items():
            self.store(batch, card, partition_of[card], value)
        outcomes = self.decided(batch, settings.decisions_topic, CHAMPION, result.decisions, result.encoded, result)
        for outcome, n in outcomes.items():  # labels() costs ~15 µs: once per outcome, not per decision
            metrics.decisions.labels(decision=outcome).inc(n)
        metrics.score.observe_many([d["score"] for d in result.decisions])
        if result.shadow:
            # In the same output batch: acknowledged with the decisions, never without them.
            self.decided(
                batch, settings.shadow_decisions_topic, CHALLENGER, result.shadow, result.shadow_encoded, result
            )
        now_ms = utcnow().timestamp() * 1000
        record_ms = np.fromiter((rec.timestamp_ms for rec, _ in valid), np.float64, len(valid))
        metrics.latency.observe_many(np.maximum(0.0, (now_ms - record_ms) / 1000))

    def decided(
        self,
        batch: OutputBatch,
        topic: str,
        role: str,
        decisions: Sequence[dict[str, Any]],
        encoded: Sequence[bytes],
        result: ScoredTransactions,
    ) -> dict[str, int]:
        """Queue one model's decisions of a batch, remember them for the live quality, count them
        by version and role; returns the count per outcome. A batch has one version per role."""
        outcomes: dict[str, int] = {}
        quality = self.quality[role]
        for decision, value, event_ms in zip(decisions, encoded, result.event_ms, strict=True):
            outcome = decision["decision"]
            batch.add(topic, decision["card_id"].encode(), value)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            quality.add_decision(
                decision["transaction_id"], decision["model_version"], outcome, decision["score"], event_ms
            )
        version = decisions[0]["model_version"]
        for outcome, n in outcomes.items():
            self.metrics.model_decisions.labels(model_version=version, role=role, decision=outcome).inc(n)
        self.metrics.model_score.observe_many([d["score"] for d in decisions], (version, role))
        return outcomes

    async def written(self, transactions: Sequence[Record], batch: OutputBatch) -> None:
        # Awaiting every delivery makes a failure raise here, so the batch is never acknowledged
        # (and its offsets never committed) without its outputs.
        await batch.wait()
        for rec in transactions:
            self.processed[rec.partition] = max(self.processed.get(rec.partition, 0), rec.offset + 1)
        if transactions:
            self.metrics.last_event.set(max(r.timestamp_ms for r in transactions) / 1000)

    def store(self, batch: OutputBatch, card: str, partition: int, value: bytes) -> None:
        """Keep a card's new state (its JSON), and write it to the changelog (JSON key, as Faust's
        table would) on the partition the card's records arrive on, so that state recovery
        restores it to the worker that needs it."""
        batch.add(self.changelog_topic, changelog_key(card), value, partition=partition)
        self.cards[card] = value
        self.card_partition[card] = partition

    async def apply_labels(self, records: Sequence[Record], batch: OutputBatch) -> None:
        """Labels before the batch's transactions: a label counts only for transactions after it
        became known (features filter by time), so applying it early never changes a score."""
        settings, metrics, risk = self.settings, self.metrics, self.scorer.risk
        valid, rejected = await asyncio.get_running_loop().run_in_executor(
            self.executor, self.scorer.split_labels, records
        )
        for rec, rej in rejected:
            batch.add(settings.labels_dlq_topic, rec.key, rec.value or b"", dlq_headers(rec, rej))
            metrics.label_dead_letters.labels(reason=rej.reason).inc()
        for rec, label in valid:
            metrics.labels.labels(is_fraud=str(label.is_fraud).lower()).inc()
            for quality in self.quality.values():
                quality.add_label(label.transaction_id, label.is_fraud)
            if not label.is_fraud:
                # A reversal (say, a chargeback withdrawn): the fraud label stops counting, in
                # the card's state and the merchants' rates, as it would in a retrained CSV.
                reverted = without_fraud_label(decode_state(self.cards.get(label.card_id)), label.transaction_id)
                if reverted is not None:
                    self.store(batch, label.card_id, rec.partition, encode_state(reverted))
                    risk.apply(label_key(label.transaction_id), None)
                    batch.add(settings.merchant_risk_topic, label_key(label.transaction_id), None)
                continue
            tx_day = epoch_ms(label.timestamp) // DAY_MS
            available = epoch_ms(label.labelled_at)
            state = with_fraud_label(
                decode_state(self.cards.get(label.card_id)),
                label.transaction_id,
                label.merchant_id,
                tx_day,
                available,
            )
            self.store(batch, label.card_id, rec.partition, encode_state(state))
            value = risk.add_label(
                label.transaction_id, label.card_id, label.merchant_id, tx_day, available, rec.partition
            )
            batch.add(settings.merchant_risk_topic, label_key(label.transaction_id), value)

    async def sync_merchant_risk(self) -> None:
        """Wait until the merchant-risk replica has read everything written before now (the
        counts of partitions this worker just took over), or stop uncommitted."""
        if self.replica is None:
            return
        loop = asyncio.get_running_loop()
        topic = self.settings.merchant_risk_topic
        ends = await loop.run_in_executor(None, kafka.end_offsets, self.settings, topic)
        if not await loop.run_in_executor(None, self.replica.wait_until, ends, RISK_SYNC_SECONDS):
            stop_uncommitted(
                f"merchant-risk replica did not reach {ends} within {RISK_SYNC_SECONDS:g} s", exit=self.exit
            )

    # --- rebalances -----------------------------------------------------------------------

    def on_revoked(self, partitions: set[int]) -> None:
        """Forget the state of the transaction partitions that went to another worker."""
        for card in [c for c, p in self.card_partition.items() if p in partitions]:
            self.cards.pop(card, None)
            del self.card_partition[card]
        for p in partitions:
            self.processed.pop(p, None)
        self.scorer.risk.release(partitions)

    def on_assigned(self) -> None:
        self.risk_sync_needed = True

    # --- periodic -------------------------------------------------------------------------

    async def prune_merchant_risk(self, owned: set[int]) -> None:
        """Delete merchant counts no window reaches any more, with a margin for late events."""
        newest = self.scorer.newest_ms
        if newest is None:
            return
        before = newest // DAY_MS - MERCHANT_SPAN_DAYS - RISK_MARGIN_DAYS
        keys = await asyncio.get_running_loop().run_in_executor(self.executor, self.scorer.risk.prune, before, owned)
        if keys:
            batch = self.outputs.batch()
            for key in keys:
                batch.add(self.settings.merchant_risk_topic, key, None)
            await batch.wait()
            log.info("merchant risk: deleted %d records of days before %d", len(keys), before)

    async def report_progress(
        self, assigned: Sequence[Any], highwater: Callable[[Any], int | None], committed: dict[Any, int | None]
    ) -> None:
        """Lag, committed offsets, live quality and drift gauges. ``assigned``: the transaction
        topic's partitions (``TP``s); ``committed``: the consumer's last committed offsets."""
        metrics = self.metrics
        metrics.assigned.set(len(assigned))
        metrics.lag.clear()
        metrics.committed.clear()
        for tp in assigned:
            label = str(tp.partition)
            done = self.processed.get(tp.partition, committed.get(tp) or 0)
            mark = highwater(tp)
            if mark is not None:
                metrics.lag.labels(partition=label).set(max(0, mark - done))
            offset = committed.get(tp)
            if offset is not None:
                metrics.committed.labels(partition=label).set(offset)
        for role, quality in self.quality.items():
            for (version, outcome, is_fraud), n in quality.changed_counts().items():
                metrics.labelled_decisions.labels(
                    model_version=version, role=role, decision=outcome, is_fraud=str(is_fraud).lower()
                ).set(n)
            for version, summary in quality.summary().items():
                for threshold, q in summary["thresholds"].items():
                    series = {"model_version": version, "role": role, "threshold": threshold}
                    if q["precision"] is not None:
                        metrics.live_precision.labels(**series).set(q["precision"])
                    if q["recall"] is not None:
                        metrics.live_recall.labels(**series).set(q["recall"])
        service = self.scorer.service
        drift = await asyncio.get_running_loop().run_in_executor(self.executor, service.drift_values)
        for signal, value in drift.items():
            metrics.drift.labels(signal=signal).set(value)
        metrics.drift_window.set(service.drift.size if service.drift else 0)

    async def reload_model(self) -> None:
        """Swap in a new model (champion, and challenger when shadowing) if there is one, between
        batches: the scoring thread runs one call at a time, so no batch mixes versions. A bad
        model is refused, counted, and the old one keeps serving.

        Off the scoring thread: a registry may take seconds to answer (or time out), and scoring
        goes on meanwhile; a scoring call reads the serving model once, so the swap (one
        reference) still falls between batches."""
        service, loop = self.scorer.service, asyncio.get_running_loop()
        holder, challenger = service.holder, service.challenger
        if await loop.run_in_executor(None, holder.load):
            self.metrics.set_version(holder.scorer.version)
        failures = holder.reload_failures
        if challenger is not None:
            if await loop.run_in_executor(None, challenger.load):
                current = challenger.current
                self.metrics.set_challenger(current.version if current is not None else None)
            failures += challenger.reload_failures
        self.metrics.reload_failures.inc(failures - self._reload_failures_seen)
        self._reload_failures_seen = failures
        if isinstance(holder.source, RegistrySource):
            try:
                status = await loop.run_in_executor(None, holder.source.registry.retrain_status)
            except Exception as exc:  # best effort: the registry's answer about retraining is informational
                log.debug("retraining status unavailable: %s", exc)
            else:
                self.metrics.set_retrain(status)
