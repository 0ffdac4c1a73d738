"""Prometheus metrics of each process, each on its own registry (no ids as labels, base units)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from streaming.scoring.validation import DLQ_REASONS

# The *_created series double every counter's cardinality and no dashboard or alert uses them.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 20)) + (0.99,)
RETRAIN_OUTCOMES = ("promoted", "challenger", "failed")
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000)


class BatchHistogram(Collector):
    """A histogram observed a batch at a time: one numpy pass per batch instead of one
    ``Histogram.observe`` per value (a few µs each, two per decision: a visible share of the
    saturated worker's event loop). Exposed exactly like a ``prometheus_client.Histogram``, with
    ``labelnames`` when given (a series per label values, created at its first observation)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
        labelnames: Sequence[str] = (),
    ) -> None:
        self.name, self.documentation = name, documentation
        # As prometheus_client's metric objects name them (the deployment tests read them).
        self._name, self._labelnames = name, tuple(labelnames)
        self._bounds = np.asarray(sorted(buckets), dtype=np.float64)
        # Per label values: counts per bucket (the last one: above every bound) and the sum.
        self._series: dict[tuple[str, ...], tuple[np.ndarray, list[float]]] = {}
        if not self._labelnames:
            self._series[()] = (np.zeros(len(self._bounds) + 1, dtype=np.int64), [0.0])
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray | Sequence[float], labels: tuple[str, ...] = ()) -> None:
        if len(labels) != len(self._labelnames):
            raise ValueError(f"{self.name} takes labels {self._labelnames}, got {labels}")
        values = np.asarray(values, dtype=np.float64)
        # Bucket "le" is inclusive: a value equal to a bound counts in that bound's bucket.
        counts = np.bincount(np.searchsorted(self._bounds, values, side="left"), minlength=len(self._bounds) + 1)
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = (np.zeros(len(self._bounds) + 1, dtype=np.int64), [0.0])
            series[0][:] += counts
            series[1][0] += float(values.sum())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshot = [(labels, np.cumsum(c).tolist(), total[0]) for labels, (c, total) in self._series.items()]
        bounds = [*(floatToGoString(b) for b in self._bounds.tolist()), "+Inf"]
        family = HistogramMetricFamily(self.name, self.documentation, labels=self._labelnames)
        for labels, cumulative, total in snapshot:
            family.add_metric(list(labels), buckets=list(zip(bounds, cumulative, strict=True)), sum_value=total)
        yield family


class ModelMetrics:
    """What every scoring process says about its model and the rules ahead of it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.info = Gauge(
            "fraud_model_info", "Model currently serving (value 1) by version", ["version"], registry=registry
        )
        self.loaded = Gauge("fraud_model_loaded", "1 when a verified model is serving", registry=registry)
        self.reload_failures = Counter(
            "fraud_model_reload_failures_total",
            "Model artifacts refused at load (bad hash, unreadable, wrong features)",
            registry=registry,
        )
        # Rule ids are bounded labels: at most streaming.scoring.rules.MAX_RULES of them.
        self.rule_hits = Counter(
            "fraud_rule_hits_total",
            "Transactions a rule matched, by rule, action and mode (log_only rules included)",
            ["rule", "action", "mode"],
            registry=registry,
        )
        self.rule_decisions = Counter(
            "fraud_rule_decisions_total",
            "Decisions made ahead of the model, by source (rule, allow_list, block_list) and outcome",
            ["source", "decision"],
            registry=registry,
        )

    def set_version(self, version: str) -> None:
        self.info.clear()
        self.info.labels(version=version).set(1)
        self.loaded.set(1)


class WorkerMetrics(ModelMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        super().__init__(self.registry)
        r = self.registry
        self.consumed = Counter(
            "fraud_transactions_consumed_total", "Messages read from the transactions topic", registry=r
        )
        self.decisions = Counter("fraud_decisions_total", "Decisions published, by outcome", ["decision"], registry=r)
        self.dead_letters = Counter(
            "fraud_dead_letters_total", "Messages sent to the dead-letter topic, by reason", ["reason"], registry=r
        )
        self.batch_duration = Histogram(
            "fraud_scoring_batch_duration_seconds",
            "Time to compute features and score one batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "fraud_scoring_batch_size", "Transactions per scored batch", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.latency = BatchHistogram(
            "fraud_end_to_end_latency_seconds",
            "From the transaction's Kafka record timestamp to its decision being handed to the producer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.score = BatchHistogram("fraud_score", "Scores of published decisions", buckets=SCORE_BUCKETS, registry=r)
        self.last_event = Gauge(
            "fraud_last_event_timestamp_seconds", "Record timestamp of the newest processed transaction", registry=r
        )
        self.processing_errors = Counter(
            "fraud_processing_errors_total", "Batches that failed for an internal reason (the worker stops)", registry=r
        )
        self.lag = Gauge(
            "fraud_consumer_lag",
            "Messages between the last processed offset and the high watermark, per assigned partition",
            ["partition"],
            registry=r,
        )
        self.committed = Gauge(
            "fraud_consumer_committed_offset", "Last committed offset per assigned partition", ["partition"], registry=r
        )
        self.commits = Counter("fraud_consumer_commits_total", "Offset commits completed", registry=r)
        self.rebalances = Counter("fraud_rebalances_total", "Consumer group rebalances started", registry=r)
        self.assigned = Gauge(
            "fraud_assigned_partitions", "Transactions partitions assigned to this worker", registry=r
        )
        self.drift = Gauge(
            "fraud_drift_psi",
            "Population stability index of the recent window against the training reference",
            ["signal"],
            registry=r,
        )
        self.drift_window = Gauge(
            "fraud_drift_window_transactions", "Transactions in the window the drift is computed over", registry=r
        )
        self.labels = Counter("fraud_labels_total", "Valid label events applied, by verdict", ["is_fraud"], registry=r)
        self.label_dead_letters = Counter(
            "fraud_label_dead_letters_total",
            "Label events sent to the labels dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.labelled_decisions = Gauge(
            "fraud_labelled_decisions",
            "Decisions of this worker joined to a label, by model version, role, decision and verdict "
            "(a relabelled transaction moves between series)",
            ["model_version", "role", "decision", "is_fraud"],
            registry=r,
        )
        self.live_precision = Gauge(
            "fraud_live_precision",
            "Labelled fraud among labelled decisions flagged at the threshold (review: review or block), "
            "by model version and role (champion, challenger)",
            ["model_version", "role", "threshold"],
            registry=r,
        )
        self.live_recall = Gauge(
            "fraud_live_recall",
            "Labelled fraud flagged at the threshold among all labelled fraud, by model version and role",
            ["model_version", "role", "threshold"],
            registry=r,
        )
        # Per model version and role (champion: acted on; challenger: scored in shadow).
        self.model_decisions = Counter(
            "fraud_model_decisions_total",
            "Decisions by model version, role (champion, challenger) and outcome; the challenger's are shadow",
            ["model_version", "role", "decision"],
            registry=r,
        )
        self.model_score = BatchHistogram(
            "fraud_model_score",
            "Scores by model version and role (champion, challenger)",
            buckets=SCORE_BUCKETS,
            registry=r,
            labelnames=("model_version", "role"),
        )
        self.challenger_info = Gauge(
            "fraud_model_challenger_info",
            "Model scored in shadow (value 1) by version; no series when no challenger is set",
            ["version"],
            registry=r,
        )
        # Retraining, as the registry records it (only while following a registry alias).
        self.retrain_last_success = Gauge(
            "fraud_retrain_last_success_timestamp_seconds",
            "End of the newest successful `fraud retrain` run in the registry (0: none yet)",
            registry=r,
        )
        self.retrain_last_run = Gauge(
            "fraud_retrain_last_run_timestamp_seconds",
            "End of the newest `fraud retrain` run in the registry, successful or not",
            registry=r,
        )
        self.retrain_outcome = Gauge(
            "fraud_retrain_last_outcome",
            "1 for the outcome of the newest `fraud retrain` run (promoted, challenger, failed), 0 for the others",
            ["outcome"],
            registry=r,
        )
        self.retrain_average_precision = Gauge(
            "fraud_retrain_average_precision",
            "Average precision of the candidate and the champion on the newest successful retraining's matured window",
            ["role"],
            registry=r,
        )
        for reason in DLQ_REASONS:
            self.dead_letters.labels(reason=reason)
            self.label_dead_letters.labels(reason=reason)
        for verdict in ("true", "false"):
            self.labels.labels(is_fraud=verdict)
        for outcome in ("allow", "review", "block"):
            self.decisions.labels(decision=outcome)

    def set_retrain(self, status: dict[str, Any]) -> None:
        """From :meth:`model.registry.Registry.retrain_status`."""
        self.retrain_last_success.set(status["last_success_ms"] / 1000)
        self.retrain_last_run.set(status["last_run_ms"] / 1000)
        outcome = {"promote": "promoted", "challenger": "challenger", "failed": "failed"}.get(status["outcome"] or "")
        for name in RETRAIN_OUTCOMES:
            self.retrain_outcome.labels(outcome=name).set(1 if name == outcome else 0)
        for role, value in status["average_precision"].items():
            self.retrain_average_precision.labels(role=role).set(value)

    def set_challenger(self, version: str | None) -> None:
        self.challenger_info.clear()
        if version is not None:
            self.challenger_info.labels(version=version).set(1)


class ApiMetrics(ModelMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        super().__init__(self.registry)
        r = self.registry
        self.requests = Counter(
            "fraud_api_requests_total",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "fraud_api_request_duration_seconds",
            "HTTP request latency by route",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "fraud_api_decisions_total",
            "Decisions returned by /predict, by outcome and card state source",
            ["decision", "card_state"],
            registry=r,
        )
        self.card_states = Gauge("fraud_api_card_states", "Cards in this process's copy of the card table", registry=r)
        self.card_state_bytes = Gauge(
            "fraud_api_card_state_bytes", "Bytes of card state (changelog values) held by the copy", registry=r
        )
        self.card_state_restored = Gauge(
            "fraud_api_card_state_restored",
            "1 once the card state copy has read its changelog to the end (always 1 with the worker source)",
            registry=r,
        )

    def watch_card_states(
        self, cards: Callable[[], float], stored_bytes: Callable[[], float], restored: Callable[[], bool]
    ) -> None:
        self.card_states.set_function(cards)
        self.card_state_bytes.set_function(stored_bytes)
        self.card_state_restored.set_function(lambda: float(restored()))


class ProducerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sent = Counter("fraud_producer_messages_total", "Messages acknowledged by the broker", registry=r)
        self.failed = Counter("fraud_producer_errors_total", "Messages the broker did not acknowledge", registry=r)
        self.fraud = Counter("fraud_producer_fraud_messages_total", "Sent messages labelled fraud", registry=r)
        self.labels = Counter("fraud_producer_labels_total", "Label events acknowledged by the broker", registry=r)
        self.bytes = Counter("fraud_producer_bytes_total", "Value bytes acknowledged", registry=r)
