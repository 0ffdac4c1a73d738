"""The Faust worker: transactions -> card state + features -> model -> decisions.

Per-message error policy (counted and logged with topic[partition]@offset):

* invalid input (not JSON, wrong types, missing fields, bad amounts, oversized): dead-letter it
  with the original bytes, the reason and its source coordinates in headers, and go on;
* an internal failure (model, state, producer): log it and stop the process *without*
  committing, so the batch is consumed again after restart (at-least-once; decisions are
  idempotent by ``transaction_id``).

Offsets: a batch is acknowledged only after the broker acknowledged every output of the batch
(decisions, dead letters, state changelog), so an offset is committed only once its decision or
dead letter is written. A stop request lets the batch in flight finish first.

Design notes: batches come a fetch at a time from ``streaming.kafka.faust_transport``, not through a
Faust agent; one batch is scored while the previous one's outputs are on their way (never
more), and scale-out is by partitions. Scoring runs in a worker thread so the event loop keeps
consuming and heartbeating while a batch is scored.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import faust
import numpy as np
import orjson
from prometheus_client import start_http_server

from model.drift import DriftMonitor
from model.features import (
    DAY_MS,
    MERCHANT_SPAN_DAYS,
    RiskContext,
    epoch_ms,
    first_at_merchant,
    frame_from_transactions,
)
from model.schemas import Label, Transaction, decision_json
from model.scoring import ModelHolder, scoring_executor, utcnow
from streaming.kafka import clients as kafka
from streaming.kafka import faust_transport
from streaming.kafka.outputs import OutputBatch, Outputs
from streaming.kafka.replica import Replica
from streaming.metrics import WorkerMetrics
from streaming.quality import QualityTracker
from streaming.scoring.merchant_risk import MerchantRisk, label_key
from streaming.scoring.state import (
    CARD_TABLE,
    CardState,
    changelog_key,
    decode_state,
    empty_state,
    history_frame,
    labels_frame,
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


@dataclass(frozen=True)
class Record:
    """The parts of a consumed Kafka record the processor needs."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None

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


class BatchProcessor:
    """Framework-free core of the worker: validate, then score against card state."""

    def __init__(
        self,
        holder: ModelHolder,
        metrics: WorkerMetrics,
        grace_ms: int,
        include_features: bool = False,
        max_history: int = 5000,
        risk: MerchantRisk | None = None,
    ) -> None:
        self.risk = risk or MerchantRisk()
        #: Newest transaction time scored (event time), for pruning merchant risk.
        self.newest_ms: int | None = None
        self.include_features = include_features
        self.holder = holder
        self.metrics = metrics
        self.grace_ms = grace_ms
        self.max_history = max_history
        self.drift: DriftMonitor | None = None

    def warm_up(self) -> None:
        """Run the scoring path once on a made-up transaction, off the books (no metrics, no
        state, no drift): first calls into pandas and the model are several times slower, and
        without this the first real batches after a start pay for it."""
        tx = Transaction(
            transaction_id="warm-up",
            timestamp=utcnow(),
            card_id="warm-up",
            merchant_id="warm-up",
            amount=1.0,
            currency="USD",
        )
        queries = frame_from_transactions([tx])
        history = history_frame({tx.card_id: merge(None, [("w0", epoch_ms(tx.timestamp) - 1, 1.0, "m")], 0)})
        batch = self.holder.scorer.score_frame(queries, history, RiskContext.empty())
        decision_json(self.holder.scorer.decision_fields([tx], batch, ["used"], utcnow(), self.include_features)[0])

    def drift_values(self) -> dict[str, float]:
        """PSI per signal (run on the scoring thread, which owns the drift buffers)."""
        return self.drift.values() if self.drift else {}

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
        """CPU-bound part, run off the event loop: one feature pass and one model call per batch.

        ``stored``: the batch's cards as the table holds them (changelog values, or None)."""
        scorer = self.holder.scorer
        with self.metrics.batch_duration.time():
            states = {card: decode_state(value) for card, value in stored.items()}
            queries = frame_from_transactions(txs)
            # Transactions new to their card's state: counted for their merchant, and history
            # for the rest of the batch (a card's second transaction in the batch sees its first;
            # each row's own timestamp bounds what it sees, so no row sees itself).
            seen: set[str] = set()
            fresh: list[tuple[str, str, str, int, float]] = []
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
            # own day, so counting the whole batch up front is what the batch path sees too.
            new = first_at_merchant(queries, history)
            risk_records = self.risk.increment([(m, day, p, bool(new[i])) for i, m, day, p in first_time])
            newest = int(queries["ts_ms"].max())
            self.newest_ms = newest if self.newest_ms is None else max(self.newest_ms, newest)
            risk = self.risk.context(queries["merchant_id"], labels_frame(states))
            batch = scorer.score_frame(queries, history, risk)
            if self.drift is None or self.drift.version != scorer.version:
                self.drift = DriftMonitor(scorer.artifact.metadata.get("drift_reference"), version=scorer.version)
            self.drift.observe(batch.features, batch.scores)
            card_states = ["used" if (states.get(tx.card_id) or {}).get("ids") else "empty" for tx in txs]
            decisions = scorer.decision_fields(txs, batch, card_states, utcnow(), self.include_features)
            new_states: dict[str, CardState] = {}
            rows: dict[str, list[tuple[str, int, float, str]]] = {}
            for tid, card, merchant, ts, amount in fresh:
                rows.setdefault(card, []).append((tid, ts, amount, merchant))
            for card, card_rows in rows.items():
                new_states[card] = merge(states.get(card), card_rows, self.grace_ms, self.max_history, fresh=True)
        self.metrics.batch_size.observe(len(txs))
        encoded = [decision_json(d) for d in decisions]
        return ScoredTransactions(
            decisions=decisions,
            encoded=encoded,
            states={card: orjson.dumps(state) for card, state in new_states.items()},
            event_ms=queries["ts_ms"].tolist(),
            risk_records=risk_records,
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


def card_table(app: faust.App) -> faust.types.TableT[str, bytes]:
    """The card states. Raw keys: the state-view routing hashes the same bytes as the producers
    (the changelog topic encodes its keys as JSON whatever the schema says; see changelog_key).
    Raw values (``value_type=bytes``, from which Faust picks the changelog's serializer):
    recovery restores the changelog's JSON bytes as they are, the form the table holds."""
    schema: faust.Schema = faust.Schema(key_type=str, key_serializer="raw", value_serializer="raw")
    return app.Table(CARD_TABLE, default=None, schema=schema, value_type=bytes)


def dlq_headers(rec: Record, rejected: Rejected) -> list[tuple[str, bytes]]:
    return [
        ("error.reason", rejected.reason.encode()),
        ("error.detail", rejected.detail.encode()),
        ("source.topic", rec.topic.encode()),
        ("source.partition", str(rec.partition).encode()),
        ("source.offset", str(rec.offset).encode()),
        ("source.timestamp_ms", str(rec.timestamp_ms).encode()),
    ]


def create_app(
    settings: WorkerSettings,
    holder: ModelHolder,
    metrics: WorkerMetrics,
    risk: MerchantRisk | None = None,
    replica: Replica | None = None,
) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=settings.faust_credentials(),
        store="memory://",
        datadir=str(settings.data_dir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_seconds / 3),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_max_poll_records=settings.batch_size,
        web_enabled=True,
        web_bind=settings.web_bind,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
    )

    # One stream of both inputs: labels and transactions of a card share a partition number (and
    # so a worker and its card state), and one task applies both in order, without locks. Their
    # records come in batches, without Faust's per-message agent machinery (faust_transport).
    faust_transport.install(
        app,
        settings.fetch_max_wait_ms,
        batch_topics=(settings.transactions_topic, settings.labels_topic),
        read_ends=functools.partial(kafka.read_ends, settings),
    )
    inputs = app.topic(
        settings.transactions_topic,
        settings.labels_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    app.topics.add(inputs)  # subscribed to as an agent's topic would be
    # Every output goes through librdkafka (streaming/outputs.py), the card table's changelog too.
    out = Outputs(settings)
    cards = card_table(app)
    changelog_topic = cards.changelog_topic.get_topic_name()

    executor = scoring_executor()
    processor = BatchProcessor(
        holder,
        metrics,
        settings.history_grace_seconds * 1000,
        settings.include_features,
        settings.max_history_per_card,
        risk,
    )

    executor.submit(processor.warm_up)
    # Decisions joined to the labels that come later (by transaction id) for live quality.
    quality = QualityTracker(max_decisions=settings.quality_max_decisions)

    # Which partition each stored card arrived on, to drop its state when the partition moves to
    # another worker (the memory store only tracks keys it restored from the changelog).
    card_partition: dict[str, int] = {}
    # Next offset to process per partition, for the lag gauge.
    processed: dict[int, int] = {}

    def store(batch: OutputBatch, card: str, partition: int, value: bytes) -> None:
        """Keep a card's new state (its JSON), and write it to the changelog (JSON key, as Faust's
        table would) on the partition the card's records arrive on, so that state recovery
        restores it to the worker that needs it."""
        batch.add(changelog_topic, changelog_key(card), value, partition=partition)
        cards.data[card] = value
        card_partition[card] = partition

    # Set on every assignment: partitions may come from another worker, whose last merchant
    # counts this process must have read before it continues them.
    risk_sync = [True]

    async def sync_merchant_risk() -> None:
        if replica is None:
            return
        loop = asyncio.get_running_loop()
        ends = await loop.run_in_executor(None, kafka.end_offsets, settings, settings.merchant_risk_topic)
        if not await loop.run_in_executor(None, replica.wait_until, ends, 120.0):
            log.critical("merchant-risk replica did not reach %s within 120 s; stopping uncommitted", ends)
            logging.shutdown()
            os._exit(70)

    async def handle(messages: Sequence[faust.types.Message]) -> Awaitable[None]:
        """Process a batch up to its outputs; returns what resolves once they are all written."""
        if risk_sync[0]:
            await sync_merchant_risk()
            risk_sync[0] = False
        records = [
            Record(
                topic=m.topic,
                partition=m.partition,
                offset=m.offset,
                timestamp_ms=int(m.timestamp * 1000),
                key=m.key,
                value=m.value,
            )
            for m in messages
        ]
        batch = out.batch()
        loop = asyncio.get_running_loop()
        label_records = [r for r in records if r.topic == settings.labels_topic]
        if label_records:
            await apply_labels(label_records, batch)
            records = [r for r in records if r.topic != settings.labels_topic]
            if not records:
                return written([], batch)
        metrics.consumed.inc(len(records))
        # Parsing and validating a batch is CPU work too (~10 µs a message): off the loop.
        valid, rejected = await loop.run_in_executor(executor, processor.split, records)
        for rec, rej in rejected:
            batch.add(settings.dlq_topic, rec.key, rec.value or b"", dlq_headers(rec, rej))
            metrics.dead_letters.labels(reason=rej.reason).inc()
        if valid:
            txs = [tx for _, tx in valid]
            stored = {tx.card_id: cards.data.get(tx.card_id) for tx in txs}
            partitions = [rec.partition for rec, _ in valid]
            result = await loop.run_in_executor(executor, processor.score, txs, partitions, stored)
            for key, value in result.risk_records:
                batch.add(settings.merchant_risk_topic, key, value)
            partition_of = {tx.card_id: rec.partition for rec, tx in valid}
            for card, value in result.states.items():
                store(batch, card, partition_of[card], value)
            outcomes: dict[str, int] = {}
            for decision, value, event_ms in zip(result.decisions, result.encoded, result.event_ms, strict=True):
                outcome = decision["decision"]
                batch.add(settings.decisions_topic, decision["card_id"].encode(), value)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                quality.add_decision(
                    decision["transaction_id"], decision["model_version"], outcome, decision["score"], event_ms
                )
            for outcome, n in outcomes.items():  # labels() costs ~15 µs: once per outcome, not per decision
                metrics.decisions.labels(decision=outcome).inc(n)
            metrics.score.observe_many([d["score"] for d in result.decisions])
            now_ms = utcnow().timestamp() * 1000
            record_ms = np.fromiter((rec.timestamp_ms for rec, _ in valid), np.float64, len(valid))
            metrics.latency.observe_many(np.maximum(0.0, (now_ms - record_ms) / 1000))
        return written(records, batch)

    async def written(transactions: list[Record], batch: OutputBatch) -> None:
        # Awaiting every delivery makes a failure raise here, so the batch is never acknowledged
        # (and its offsets never committed) without its outputs.
        await batch.wait()
        for rec in transactions:
            processed[rec.partition] = max(processed.get(rec.partition, 0), rec.offset + 1)
        if transactions:
            metrics.last_event.set(max(r.timestamp_ms for r in transactions) / 1000)

    async def apply_labels(records: list[Record], batch: OutputBatch) -> None:
        """Labels before the batch's transactions: a label counts only for transactions after it
        became known (features filter by time), so applying it early never changes a score."""
        valid, rejected = await asyncio.get_running_loop().run_in_executor(executor, processor.split_labels, records)
        for rec, rej in rejected:
            batch.add(settings.labels_dlq_topic, rec.key, rec.value or b"", dlq_headers(rec, rej))
            metrics.label_dead_letters.labels(reason=rej.reason).inc()
        for rec, label in valid:
            metrics.labels.labels(is_fraud=str(label.is_fraud).lower()).inc()
            quality.add_label(label.transaction_id, label.is_fraud)
            if not label.is_fraud:
                # A reversal (say, a chargeback withdrawn): the fraud label stops counting, in
                # the card's state and the merchants' rates, as it would in a retrained CSV.
                reverted = without_fraud_label(decode_state(cards.data.get(label.card_id)), label.transaction_id)
                if reverted is not None:
                    store(batch, label.card_id, rec.partition, orjson.dumps(reverted))
                    processor.risk.apply(label_key(label.transaction_id), None)
                    batch.add(settings.merchant_risk_topic, label_key(label.transaction_id), None)
                continue
            tx_day = epoch_ms(label.timestamp) // DAY_MS
            available = epoch_ms(label.labelled_at)
            state = with_fraud_label(
                decode_state(cards.data.get(label.card_id)), label.transaction_id, label.merchant_id, tx_day, available
            )
            store(batch, label.card_id, rec.partition, orjson.dumps(state))
            value = processor.risk.add_label(
                label.transaction_id, label.card_id, label.merchant_id, tx_day, available, rec.partition
            )
            batch.add(settings.merchant_risk_topic, label_key(label.transaction_id), value)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # receivers get signal= as a keyword
    async def _forget_revoked(app: faust.App, revoked: set[faust.types.TP], **_: Any) -> None:
        gone = {tp.partition for tp in revoked if tp.topic == settings.transactions_topic}
        for card in [c for c, p in card_partition.items() if p in gone]:
            cards.data.pop(card, None)
            del card_partition[card]
        for p in gone:
            processed.pop(p, None)
        processor.risk.release(gone)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # receivers get signal= as a keyword
    async def _sync_on_assignment(app: faust.App, assigned: set[faust.types.TP], **_: Any) -> None:
        risk_sync[0] = True

    @app.task
    async def score_transactions() -> None:
        """One batch scored while the previous one's outputs are still on their way to the broker
        (state is updated in memory, so the next batch sees it); each batch is acknowledged once
        its own outputs and the previous batch's acknowledgement are done."""
        acked: asyncio.Future[None] | None = None
        try:
            async for messages in faust_transport.take_batches(app, settings.batch_size):
                if acked is None:
                    # Everything loaded so far (libraries, model) lives as long as the process:
                    # out of the collector's full passes, which took up to ~170 ms at a time (a
                    # stall every few seconds at 2,000 tx/s). What lives long after this (card
                    # states, retained decisions) is kept in forms the collector does not track.
                    gc.freeze()
                step = asyncio.ensure_future(process(messages, acked))
                try:
                    acked = await asyncio.shield(step)
                except asyncio.CancelledError:
                    # Stopping (SIGTERM): finish the batch in flight, then acknowledge what is
                    # written (below), or exit before anything more is committed.
                    acked = await asyncio.wait_for(step, timeout=60)
                    raise
        finally:
            if acked is not None:
                await asyncio.wait_for(asyncio.shield(acked), timeout=60)

    async def process(
        messages: Sequence[faust.types.Message], previous: asyncio.Future[None] | None
    ) -> asyncio.Future[None]:
        try:
            outputs = await handle(messages)
        except Exception:
            crashed(messages)
        if previous is not None:
            await previous  # at most one batch's outputs in flight while the next is scored
        return asyncio.ensure_future(acknowledge(messages, outputs))

    async def acknowledge(messages: Sequence[faust.types.Message], outputs: Awaitable[None]) -> None:
        try:
            await outputs
        except Exception:
            crashed(messages)
        faust_transport.ack(app, messages)

    def crashed(messages: Sequence[faust.types.Message]) -> NoReturn:
        first = messages[0]
        log.critical(
            "internal error on batch from %s[%d]@%d; stopping without committing it",
            first.topic,
            first.partition,
            first.offset,
            exc_info=True,
        )
        metrics.processing_errors.inc()
        logging.shutdown()
        # Exit at once: nothing of this batch was acknowledged, so nothing of it is committed.
        os._exit(70)

    @app.page("/cards/history")
    @app.table_route(table=cards, query_param="card_id")
    async def card_history(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """A card's stored history, served by the worker that owns the card (others proxy)."""
        if not recovered():
            return web.json({"error": "state is being restored"}, status=503)
        card_id = request.query["card_id"]
        return web.json({"card_id": card_id, "history": decode_state(cards.data.get(card_id)) or empty_state()})

    def recovered() -> bool:
        # TableManager has .recovery; the TableManagerT protocol omits it.
        return bool(app.tables.recovery.completed.is_set()) and not app.rebalancing  # type: ignore[attr-defined]

    @app.page("/health")
    async def health(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.json({"status": "ok", "model_version": holder.scorer.version if holder.ready else None})

    @app.page("/ready")
    async def ready(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """200 once the model is loaded, partitions are assigned and state recovery is done."""
        assigned = bool(app.consumer.assignment()) if app.consumer is not None else False
        is_ready = holder.ready and assigned and recovered()
        body = {"ready": is_ready, "assigned_partitions": assigned, "rebalancing": bool(app.rebalancing)}
        return web.json(body, status=200 if is_ready else 503)

    @app.timer(interval=5.0)
    async def report_progress() -> None:
        try:
            await _report_progress()
        except Exception:  # metrics are best effort; an exception in a Faust timer stops the app
            log.warning("could not update progress metrics", exc_info=True)

    async def _report_progress() -> None:
        consumer = app.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic == settings.transactions_topic]
        metrics.assigned.set(len(tps))
        metrics.lag.clear()
        metrics.committed.clear()
        # Faust keeps the last committed offsets here; no public accessor in 0.15.
        committed: dict[Any, int | None] = getattr(consumer, "_committed_offset", {})
        for tp in tps:
            label = str(tp.partition)
            done = processed.get(tp.partition, committed.get(tp) or 0)
            highwater = consumer.highwater(tp)
            if highwater is not None:
                metrics.lag.labels(partition=label).set(max(0, highwater - done))
            offset = committed.get(tp)
            if offset is not None:
                metrics.committed.labels(partition=label).set(offset)
        for (version, outcome, is_fraud), n in quality.changed_counts().items():
            metrics.labelled_decisions.labels(
                model_version=version, decision=outcome, is_fraud=str(is_fraud).lower()
            ).set(n)
        for version, summary in quality.summary().items():
            for threshold, q in summary["thresholds"].items():
                if q["precision"] is not None:
                    metrics.live_precision.labels(model_version=version, threshold=threshold).set(q["precision"])
                if q["recall"] is not None:
                    metrics.live_recall.labels(model_version=version, threshold=threshold).set(q["recall"])
        drift = await asyncio.get_running_loop().run_in_executor(executor, processor.drift_values)
        for signal, value in drift.items():
            metrics.drift.labels(signal=signal).set(value)
        metrics.drift_window.set(processor.drift.size if processor.drift else 0)

    app.sensors.add(_MetricsSensor(metrics))

    @app.timer(interval=60.0)
    async def prune_merchant_risk() -> None:
        try:
            await _prune_merchant_risk()
        except Exception:  # best effort; an exception in a Faust timer stops the app
            log.warning("could not prune merchant risk", exc_info=True)

    async def _prune_merchant_risk() -> None:
        if processor.newest_ms is None:
            return
        # Days no window reaches any more, with a margin for late events (event time).
        before = processor.newest_ms // DAY_MS - MERCHANT_SPAN_DAYS - RISK_MARGIN_DAYS
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == settings.transactions_topic}
        keys = await asyncio.get_running_loop().run_in_executor(executor, processor.risk.prune, before, owned)
        if keys:
            batch = out.batch()
            for key in keys:
                batch.add(settings.merchant_risk_topic, key, None)
            await batch.wait()
            log.info("merchant risk: deleted %d records of days before %d", len(keys), before)

    @app.timer(interval=settings.model_reload_seconds)
    async def reload_model() -> None:
        # holder.load() logs and counts a bad artifact itself and never raises for one.
        if await asyncio.get_running_loop().run_in_executor(executor, holder.load):
            metrics.set_version(holder.scorer.version)
        metrics.reload_failures.inc(holder.reload_failures - metrics_reload_seen[0])
        metrics_reload_seen[0] = holder.reload_failures

    metrics_reload_seen = [holder.reload_failures]
    return app


class _MetricsSensor(faust.Sensor):
    """Commit and rebalance counts from Faust's sensor hooks."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        self.metrics.commits.inc()

    def on_rebalance_start(self, app: Any) -> dict[str, Any]:
        self.metrics.rebalances.inc()
        return {}


def run_worker(settings: WorkerSettings) -> None:
    """Blocking: start metrics, load the model, create topics, run until SIGTERM/SIGINT."""
    metrics = WorkerMetrics()
    holder = ModelHolder(settings.model_dir)
    holder.load()
    if not holder.ready:
        raise SystemExit(f"fraud worker: no usable model in {settings.model_dir}: {holder.last_error}")
    metrics.set_version(holder.scorer.version)
    kafka.ensure_topics(settings, kafka.project_topics(settings))
    kafka.ensure_topics(settings, [settings.merchant_risk_topic], config={"cleanup.policy": "compact"})
    for topic in (settings.transactions_topic, settings.labels_topic):
        found = kafka.partition_count(settings, topic)
        if found != settings.topic_partitions:
            # Faust's state tables are co-partitioned with the inputs (a card's labels and
            # transactions must meet on one worker); a mismatch would only surface at the first
            # state write, as a crash loop.
            raise SystemExit(
                f"fraud worker: topic {topic} has {found} partitions but "
                f"FRAUD_TOPIC_PARTITIONS is {settings.topic_partitions}; they must be equal"
            )
    risk = MerchantRisk()
    replica = Replica(settings, settings.merchant_risk_topic, risk.apply, "merchant-risk")
    replica.start()
    # Merchant counts are continued from the topic: restore them before writing new ones.
    if not replica.caught_up.wait(timeout=120):
        raise SystemExit(f"fraud worker: could not read {settings.merchant_risk_topic} within 120 s")
    log.info("merchant risk restored: %d daily counts, %d fraud labels", *risk.size())
    start_http_server(settings.metrics_port, registry=metrics.registry)
    app = create_app(settings, holder, metrics, risk, replica=replica)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    log.info("worker %s: model %s, metrics on :%d", settings.app_id, holder.scorer.version, settings.metrics_port)
    worker.execute_from_commandline()
