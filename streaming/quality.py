"""Live model quality: decisions joined to the labels that arrive later, by transaction_id.

``QualityTracker`` is the pure-Python join the worker runs on its event loop: it keeps the
latest decision per transaction (bounded), joins each label event to it (labels that come
first wait, bounded the same way), and keeps running counts of labelled decisions per
``(model_version, decision, is_fraud)``. Precision and recall at each threshold follow from
those counts:

- ``review`` threshold: a decision is flagged when it is ``review`` or ``block``;
- ``block`` threshold: flagged when it is ``block``.

Precision = flagged labelled fraud / flagged labelled (None when nothing flagged is labelled);
recall = flagged labelled fraud / labelled fraud (None when no labelled decision is fraud).
Only labelled decisions count: the precision and recall are those of the labelled sample,
which is biased towards whatever gets investigated (flagged transactions, chargebacks).

``read_quality`` computes the same from the topics over an event-time range (``fraud
quality``); ``format_quality`` renders its report as a table.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import KafkaException, Message

from model.features import epoch_ms
from streaming.kafka import clients as kafka
from streaming.scoring.validation import Rejected, label_of_record
from streaming.settings import KafkaSettings

log = logging.getLogger(__name__)

OUTCOMES: tuple[str, ...] = ("allow", "review", "block")
_OUTCOME = {o: o for o in OUTCOMES}
#: Threshold name -> the decisions that are flagged at it.
THRESHOLDS: dict[str, tuple[str, ...]] = {"review": ("review", "block"), "block": ("block",)}

#: Key of the running counts: (model_version, decision, is_fraud).
CountKey = tuple[str, str, bool]


#: A retained decision: (model_version, decision, score, event_ms, label), the label being the
#: latest one joined to it (None: not labelled yet). A plain tuple of atomic values, which the
#: garbage collector stops tracking: with objects (even slotted ones) every full collection walked
#: all retained decisions, a pause that grew with their number.
_Entry = tuple[str, str, float, int, bool | None]


class QualityTracker:
    """Join of decisions and labels by transaction_id, with running counts per model version.

    - ``add_decision`` keeps the latest decision per transaction id (a redelivered or re-scored
      decision replaces the earlier one, and moves its label's count if it was labelled).
      At most ``max_decisions`` are retained (``None``: unbounded); the oldest are evicted
      first and counted in ``evicted_decisions``.
    - ``add_label`` joins a label to its retained decision. A transaction counts once: a later
      label for it replaces the earlier one and the counts move accordingly. A label whose
      decision is not retained waits in a pending set (latest label per transaction, bounded
      by ``max_pending``, default ``max_decisions``; ``evicted_labels`` counts what fell out)
      and is joined when the decision arrives.
    - Counts are cumulative over the tracker's life: evicting a labelled decision keeps its
      count. A label for an evicted decision cannot be joined any more (it waits as pending),
      so a relabel arriving after eviction does not move the counts, and a decision
      redelivered after eviction is a new decision.

    Every method is O(1) per event except ``summary``, ``counts`` and ``labelled`` (O(model
    versions)). A retained decision costs about 300 bytes with its id (~60 MB at the default
    bound). Not thread-safe: call it from one thread (the worker's event loop).
    """

    def __init__(self, max_decisions: int | None = 200_000, max_pending: int | None = -1) -> None:
        if max_decisions is not None and max_decisions < 1:
            raise ValueError("max_decisions must be >= 1 (or None for unbounded)")
        self.max_decisions = max_decisions
        #: -1 (default): the same bound as decisions.
        self.max_pending = max_decisions if max_pending == -1 else max_pending
        if self.max_pending is not None and self.max_pending < 0:
            raise ValueError("max_pending must be >= 0 (or None for unbounded)")
        self._decisions: OrderedDict[str, _Entry] = OrderedDict()
        self._pending: OrderedDict[str, bool] = OrderedDict()
        self._counts: dict[CountKey, int] = {}
        self._decided: dict[str, int] = {}  # decisions seen per model version
        self._changed: set[CountKey] = set()
        self._interned: dict[str, str] = {}  # one string object per model version
        self.evicted_decisions = 0
        self.evicted_labels = 0
        self.late_joins = 0  # labels that waited for their decision

    # --- events --------------------------------------------------------------------------------

    def add_decision(self, transaction_id: str, model_version: str, decision: str, score: float, event_ms: int) -> None:
        canonical = _OUTCOME.get(decision)
        if canonical is None:
            raise ValueError(f"decision must be one of {OUTCOMES}, got {decision!r}")
        decision = canonical  # one string object per outcome, not one per retained decision
        model_version = self._interned.setdefault(model_version, model_version)
        old = self._decisions.pop(transaction_id, None)
        label = None
        if old is not None:
            old_version, old_decision, _, _, label = old
            self._decided[old_version] -= 1
            if label is not None:
                self._bump(old_version, old_decision, label, -1)
        pending = self._pending.pop(transaction_id, None)
        if pending is not None:
            label = pending
            self.late_joins += 1
        self._decisions[transaction_id] = (model_version, decision, score, event_ms, label)
        self._decided[model_version] = self._decided.get(model_version, 0) + 1
        if label is not None:
            self._bump(model_version, decision, label, +1)
        if self.max_decisions is not None:
            while len(self._decisions) > self.max_decisions:
                self._decisions.popitem(last=False)
                self.evicted_decisions += 1

    def add_label(self, transaction_id: str, is_fraud: bool) -> bool:
        """Join a label; True when it joined a retained decision, False when it waits for one."""
        is_fraud = bool(is_fraud)
        entry = self._decisions.get(transaction_id)
        if entry is None:
            if self.max_pending == 0:
                self.evicted_labels += 1
                return False
            self._pending[transaction_id] = is_fraud
            self._pending.move_to_end(transaction_id)
            if self.max_pending is not None:
                while len(self._pending) > self.max_pending:
                    self._pending.popitem(last=False)
                    self.evicted_labels += 1
            return False
        version, decision, score, event_ms, label = entry
        if label is not is_fraud:
            if label is not None:
                self._bump(version, decision, label, -1)
            # Replacing the value keeps the key's place in the eviction order.
            self._decisions[transaction_id] = (version, decision, score, event_ms, is_fraud)
            self._bump(version, decision, is_fraud, +1)
        return True

    def _bump(self, model_version: str, decision: str, is_fraud: bool, delta: int) -> None:
        key = (model_version, decision, is_fraud)
        self._counts[key] = self._counts.get(key, 0) + delta
        self._changed.add(key)

    # --- reading -------------------------------------------------------------------------------

    @property
    def retained_decisions(self) -> int:
        return len(self._decisions)

    @property
    def pending_labels(self) -> int:
        return len(self._pending)

    @property
    def labelled(self) -> int:
        """Labelled decisions (each transaction once), all model versions."""
        return sum(self._counts.values())

    def counts(self) -> dict[CountKey, int]:
        """Current labelled-decision counts per (model_version, decision, is_fraud).

        Values can go down (a relabel moves a transaction from one key to another), so export
        them as gauges, not counters.
        """
        return dict(self._counts)

    def changed_counts(self) -> dict[CountKey, int]:
        """Current values of the counts that changed since the previous call (and forget them):
        what an exporter sets on its gauges after each label, without walking every key."""
        out = {key: self._counts[key] for key in self._changed}
        self._changed.clear()
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per model version: decisions, labelled, labelled_fraud and, per threshold, the
        labelled flagged decisions, true positives, precision and recall."""
        versions = {**dict.fromkeys(self._decided), **dict.fromkeys(mv for mv, _, _ in self._counts)}
        out: dict[str, dict[str, Any]] = {}
        for mv in sorted(versions):

            def n(decision: str, is_fraud: bool, mv: str = mv) -> int:
                return self._counts.get((mv, decision, is_fraud), 0)

            fraud = sum(n(d, True) for d in OUTCOMES)
            labelled = fraud + sum(n(d, False) for d in OUTCOMES)
            thresholds = {}
            for name, flagged_as in THRESHOLDS.items():
                tp = sum(n(d, True) for d in flagged_as)
                flagged = tp + sum(n(d, False) for d in flagged_as)
                thresholds[name] = {
                    "flagged_labelled": flagged,
                    "true_positives": tp,
                    "precision": tp / flagged if flagged else None,
                    "recall": tp / fraud if fraud else None,
                }
            out[mv] = {
                "decisions": self._decided.get(mv, 0),
                "labelled": labelled,
                "labelled_fraud": fraud,
                "thresholds": thresholds,
            }
        return out


# --- reading the topics ------------------------------------------------------------------------


def parse_decision(raw: bytes | None) -> tuple[str, str, str, float, int] | None:
    """(transaction_id, model_version, decision, score, event_ms) of a decision record, or None
    when it is not a usable decision. Only the fields the join needs are checked."""
    if raw is None:
        return None
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return decision_key_fields(d)


def decision_key_fields(d: object) -> tuple[str, str, str, float, int] | None:
    """:func:`parse_decision` of a record already decoded from JSON."""
    if not isinstance(d, dict):
        return None
    tx, mv, decision, score, ts = (
        d.get("transaction_id"),
        d.get("model_version"),
        d.get("decision"),
        d.get("score"),
        d.get("event_timestamp"),
    )
    if not (isinstance(tx, str) and tx and isinstance(mv, str) and mv and decision in OUTCOMES):
        return None
    if isinstance(score, bool) or not isinstance(score, int | float) or not isinstance(ts, str):
        return None
    try:
        when = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return tx, mv, str(decision), float(score), epoch_ms(when)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def read_quality(
    settings: KafkaSettings,
    start_ms: int | None,
    end_ms: int | None,
    timeout_s: float = 30.0,
    idle_s: float = 2.0,
    shadow: bool = True,
) -> dict[str, Any]:
    """Model quality from the decisions and labels topics, for decisions whose
    ``event_timestamp`` is in ``[start_ms, end_ms)`` (epoch ms; None: open).

    Both topics are read from the beginning up to their high watermarks queried at the call
    (an assigned consumer, no group membership, nothing committed). Labels are not filtered by
    time: a label for a decision in range counts whenever it arrived before the call.
    Malformed records are skipped and counted: decisions without a usable transaction_id,
    model_version, decision, score or zoned event_timestamp; labels the worker would
    dead-letter (``parse_label`` / ``check_label_record``, key must be the card_id).

    The embedded broker (tansu 0.6.0) reports a partition's high watermark as its last record
    batch's base offset + 1, so the watermark can sit short of the real end when the producer
    batched records. Once every partition reached its watermark, reading therefore goes on until
    no record came for ``idle_s`` seconds; past the watermark, a partition stops at the first
    record whose Kafka timestamp (the producer's clock, with CreateTime) is later than the call
    (written after it: excluded), so live traffic neither extends the read nor enters the
    report. On Apache Kafka the watermarks are exact and this costs at most ``idle_s``.

    With ``shadow`` and a shadow decisions topic (a challenger was scored), the report's
    ``shadow`` compares champion and challenger on the same labelled transactions: those in range
    that both decided.

    Raises ``UpstreamUnavailableError`` when the watermarks are not reached in ``timeout_s``
    (a partial report would be wrong), ``TopicNotFoundError`` when a topic does not exist.
    """
    tracker = QualityTracker(max_decisions=None, max_pending=None)
    records = {"decisions": 0, "labels": 0}
    skipped = {"decisions": 0, "labels": 0}
    shadow_counts = {"records": 0, "skipped": 0}
    in_range_count = 0
    # Per role, each transaction's latest decision in range; and each transaction's latest label.
    decided: dict[str, dict[str, tuple[str, str, float, int]]] = {"champion": {}, "challenger": {}}
    verdicts: dict[str, bool] = {}

    def in_range(parsed: tuple[str, str, str, float, int]) -> bool:
        event_ms = parsed[4]
        return (start_ms is None or event_ms >= start_ms) and (end_ms is None or event_ms < end_ms)

    def on_decision(msg: Message) -> None:
        nonlocal in_range_count
        records["decisions"] += 1
        parsed = parse_decision(msg.value())
        if parsed is None:
            skipped["decisions"] += 1
            return
        if not in_range(parsed):
            return
        in_range_count += 1
        tx, mv, decision, score, event_ms = parsed
        tracker.add_decision(tx, mv, decision, score, event_ms)
        decided["champion"][tx] = (mv, decision, score, event_ms)

    def on_shadow(msg: Message) -> None:
        shadow_counts["records"] += 1
        parsed = parse_decision(msg.value())
        if parsed is None:
            shadow_counts["skipped"] += 1
        elif in_range(parsed):
            decided["challenger"][parsed[0]] = parsed[1:]

    def on_label(msg: Message) -> None:
        records["labels"] += 1
        label = label_of_record(msg.value(), msg.key())
        if isinstance(label, Rejected):
            skipped["labels"] += 1
            return
        tracker.add_label(label.transaction_id, label.is_fraud)
        verdicts[label.transaction_id] = label.is_fraud

    handlers: dict[str, Callable[[Message], None]] = {
        settings.decisions_topic: on_decision,
        settings.labels_topic: on_label,
    }
    with_shadow = shadow and _exists(settings, settings.shadow_decisions_topic)
    if with_shadow:
        handlers[settings.shadow_decisions_topic] = on_shadow
    beyond = kafka.read_to_end(settings, handlers, timeout_s=timeout_s, idle_s=idle_s)
    summary = tracker.summary()
    return {
        "range": {"from": _iso(start_ms), "to": _iso(end_ms), "from_ms": start_ms, "to_ms": end_ms},
        "topics": {"decisions": settings.decisions_topic, "labels": settings.labels_topic},
        "decisions": tracker.retained_decisions,
        "decision_records_in_range": in_range_count,
        "labels": records["labels"] - skipped["labels"],
        "joined": tracker.labelled,
        "records": records,
        "skipped": skipped,
        "records_beyond_watermark": beyond,
        "by_model_version": summary,
        "shadow": {**_compared(decided, verdicts, settings.shadow_decisions_topic), **shadow_counts}
        if with_shadow
        else None,
    }


def _exists(settings: KafkaSettings, topic: str) -> bool:
    try:
        return kafka.partition_count(settings, topic, timeout=10) > 0
    except (KeyError, KafkaException):
        return False


def _compared(
    decided: dict[str, dict[str, tuple[str, str, float, int]]], verdicts: dict[str, bool], topic: str
) -> dict[str, Any]:
    """Champion and challenger on the transactions both decided, with the same labels."""
    both = decided["challenger"].keys() & decided["champion"].keys()
    out: dict[str, Any] = {"topic": topic, "transactions": len(both)}
    for role in ("champion", "challenger"):
        tracker = QualityTracker(max_decisions=None, max_pending=None)
        for tx in both:
            tracker.add_decision(tx, *decided[role][tx])
            if tx in verdicts:
                tracker.add_label(tx, verdicts[tx])
        out["labelled"] = tracker.labelled
        out[role] = tracker.summary()
    return out


# --- report ------------------------------------------------------------------------------------


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _table(by_version: dict[str, dict[str, Any]]) -> list[str]:
    header = ("model version", "threshold", "decisions", "labelled", "fraud", "flagged", "TP", "precision", "recall")
    rows = []
    for mv, s in by_version.items():
        for name, t in s["thresholds"].items():
            rows.append(
                (
                    mv,
                    name,
                    str(s["decisions"]),
                    str(s["labelled"]),
                    str(s["labelled_fraud"]),
                    str(t["flagged_labelled"]),
                    str(t["true_positives"]),
                    _ratio(t["precision"]),
                    _ratio(t["recall"]),
                )
            )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)]


def format_quality(report: dict[str, Any]) -> str:
    """The report as text: a header of what was read, then one row per model version and threshold."""
    rng = report.get("range", {})
    lines = [
        f"decisions with event time in [{rng.get('from') or '-inf'}, {rng.get('to') or '+inf'})",
        f"decisions: {report['decisions']}  labels: {report['labels']}  joined: {report['joined']}"
        f"  skipped: {report['skipped']['decisions']} decision(s), {report['skipped']['labels']} label(s)",
    ]
    by_version = report["by_model_version"]
    if not by_version:
        lines.append("no decisions in range")
        return "\n".join(lines)
    lines += ["", *_table(by_version)]
    compared = report.get("shadow")
    if compared and compared["transactions"]:
        lines += [
            "",
            f"champion and challenger (shadow, {compared['topic']}) on the same {compared['transactions']} "
            f"transactions, {compared['labelled']} labelled:",
            *_table({f"{role} {mv}": s for role in ("champion", "challenger") for mv, s in compared[role].items()}),
        ]
    lines.append(
        "flagged = labelled decisions at or above the threshold (review: review+block, block: block); "
        "TP = flagged and fraud; precision and recall are over labelled decisions only"
    )
    return "\n".join(lines)
