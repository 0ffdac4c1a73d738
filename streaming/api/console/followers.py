"""What the console shows, kept in memory by threads that follow the topics (a page view never
reads a topic).

- :class:`ReviewQueue`: the review cases the workers write (the review topic) minus the
  transactions that have a label (the labels topic), oldest first, bounded.
- :class:`LiveFeed`: the latest decisions (read back from the end of the decisions topic, then
  followed), outcome counts, event-to-decision latency (a decision's record timestamp minus its
  transaction's, joined by transaction id) and live precision/recall per model version
  (:class:`streaming.quality.QualityTracker`, joined with the labels).
- :class:`Followers`: the four reader threads, started and stopped with the API.

Both views are fed from reader threads and read from request handlers: each holds a lock.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Message

from model.schemas import Decision, Label, Transaction
from streaming.kafka.replica import Replica
from streaming.quality import OUTCOMES, QualityTracker, decision_key_fields
from streaming.scoring.review import ReviewCase
from streaming.scoring.validation import Rejected, label_of_record
from streaming.settings import ApiSettings

log = logging.getLogger("fraudstream.api.console")


# --- the review queue ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseSummary:
    """A queued case as the queue page lists it."""

    transaction_id: str
    #: When the decision was made: the queue is oldest first by it.
    waiting_since: datetime
    card_id: str
    merchant_id: str
    amount: float
    currency: str
    score: float
    decided_by: str
    reasons: tuple[str, ...]
    model_version: str

    @property
    def order(self) -> tuple[int, str]:
        return int(self.waiting_since.timestamp() * 1000), self.transaction_id


@dataclass(frozen=True, slots=True)
class LabelledCase:
    """A label that took a case out of the queue."""

    case: CaseSummary
    is_fraud: bool
    source: str
    labelled_by: str | None
    labelled_at: datetime


def read_case(raw: bytes) -> tuple[ReviewCase, Decision, Transaction]:
    """A review-topic record as the case, its decision and its transaction; raises ``ValueError``
    (``ValidationError`` is one) when it is not a usable case."""
    case = ReviewCase.model_validate_json(raw)
    return case, Decision.model_validate(case.decision), Transaction.model_validate(case.transaction)


def summarise(decision: Decision, tx: Transaction) -> CaseSummary:
    return CaseSummary(
        transaction_id=decision.transaction_id,
        waiting_since=decision.scored_at,
        card_id=tx.card_id,
        merchant_id=tx.merchant_id,
        amount=tx.amount,
        currency=tx.currency,
        score=decision.score,
        decided_by=decision.decided_by,
        reasons=tuple(decision.reasons),
        model_version=decision.model_version,
    )


class ReviewQueue:
    """Unlabelled review cases, oldest first (by when they were decided).

    At most ``max_cases`` are held: the oldest. Past that a newer case is not held and an older
    one pushes out the newest held; both count in ``not_held`` (records, so a redelivered case
    counts again). Cases not held stay on the review topic and are read at the next start. A
    case whose transaction has a label is never queued; the labelled ids are remembered, the
    newest ``max_labels`` of them. Each held case keeps its record bytes (~3 KB), parsed again
    when its page is viewed.
    """

    def __init__(self, max_cases: int = 10_000, max_labels: int = 200_000, recent: int = 50) -> None:
        if max_cases < 1 or max_labels < 1:
            raise ValueError("max_cases and max_labels must be >= 1")
        self.max_cases, self.max_labels = max_cases, max_labels
        self._lock = threading.Lock()
        self._cases: dict[str, tuple[CaseSummary, bytes]] = {}
        self._order: list[tuple[int, str]] = []  # sorted: oldest first
        self._labelled: OrderedDict[str, None] = OrderedDict()
        self._recent: deque[LabelledCase] = deque(maxlen=recent)
        self.not_held = 0
        self.invalid = 0

    def apply_case(self, key: bytes, value: bytes | None) -> None:
        """One review-topic record (``None``: a tombstone, the case is gone)."""
        tx_id = key.decode(errors="replace")
        if value is None:
            with self._lock:
                self._drop(tx_id)
            return
        try:
            _, decision, tx = read_case(value)
        except ValueError as exc:
            self.invalid += 1
            log.warning("review topic: ignoring the case of %s: %s", tx_id, str(exc)[:300])
            return
        summary = summarise(decision, tx)
        if summary.transaction_id != tx_id:
            self.invalid += 1
            log.warning("review topic: record key %r holds the case of %r", tx_id, summary.transaction_id)
            return
        with self._lock:
            self._add(summary, value)

    def _add(self, summary: CaseSummary, value: bytes) -> None:
        tx_id = summary.transaction_id
        if tx_id in self._labelled:
            return
        held = self._cases.get(tx_id)
        if held is not None:  # a redelivered transaction: its new case, its old place in the queue
            self._cases[tx_id] = (replace(summary, waiting_since=held[0].waiting_since), value)
            return
        position = summary.order
        if len(self._cases) >= self.max_cases:
            self.not_held += 1
            if position > self._order[-1]:
                return
            _, newest = self._order.pop()
            del self._cases[newest]
        bisect.insort(self._order, position)
        self._cases[tx_id] = (summary, value)

    def _drop(self, tx_id: str) -> CaseSummary | None:
        held = self._cases.pop(tx_id, None)
        if held is None:
            return None
        summary = held[0]
        i = bisect.bisect_left(self._order, summary.order)
        del self._order[i]
        return summary

    def apply_label(self, label: Label) -> None:
        """A label: its transaction's case leaves the queue, and stays out if it comes later."""
        tx_id = label.transaction_id
        with self._lock:
            self._labelled[tx_id] = None
            self._labelled.move_to_end(tx_id)
            while len(self._labelled) > self.max_labels:
                self._labelled.popitem(last=False)
            summary = self._drop(tx_id)
            if summary is not None:
                self._recent.appendleft(
                    LabelledCase(summary, label.is_fraud, label.source, label.labelled_by, label.labelled_at)
                )

    def __len__(self) -> int:
        return len(self._cases)

    def oldest(self, limit: int) -> list[CaseSummary]:
        with self._lock:
            return [self._cases[tx_id][0] for _, tx_id in self._order[:limit]]

    def case(self, tx_id: str) -> bytes | None:
        """The held case's record bytes (None: not in the queue)."""
        with self._lock:
            held = self._cases.get(tx_id)
        return None if held is None else held[1]

    def labelled(self, tx_id: str) -> bool:
        with self._lock:
            return tx_id in self._labelled

    def recent(self) -> list[LabelledCase]:
        """The latest labels that took a case out of the queue, newest first."""
        with self._lock:
            return list(self._recent)


# --- the live feed -------------------------------------------------------------------------------


@dataclass(slots=True)
class LiveDecision:
    """A decision as the live page lists it."""

    transaction_id: str
    card_id: str
    decision: str
    decided_by: str
    score: float
    reasons: list[str]
    model_version: str
    #: The decision record's timestamp (ms since the epoch).
    record_ms: int
    #: Transaction record to decision record, once both were read.
    latency_ms: int | None = None


@dataclass(frozen=True)
class LiveView:
    """A snapshot of the live feed for one page view."""

    latest: list[LiveDecision]
    #: The latest ``review`` and ``block`` decisions, newest first.
    flagged: list[LiveDecision]
    #: Decisions the counts and latency are over (the most recent ones).
    window: int
    counts: dict[str, int]
    decided_by: dict[str, int]
    per_second: float
    latency_ms: dict[str, float] | None
    latency_samples: int
    quality: dict[str, dict[str, Any]]
    labelled: int
    decisions_read: int
    invalid: int


class LiveFeed:
    """The decisions topic's recent past, with latency and live quality.

    ``window`` recent decisions are counted by outcome and by what decided them; the latency of
    the last ``window`` joined pairs gives the percentiles. A decision whose transaction record
    was not read yet waits for it (and vice versa), at most ``max_waiting`` of each. The
    quality tracker keeps ``max_decisions`` decisions to join labels to.
    """

    def __init__(self, shown: int = 30, window: int = 10_000, max_decisions: int = 20_000) -> None:
        self._lock = threading.Lock()
        self._latest: deque[LiveDecision] = deque(maxlen=shown)
        self._flagged: deque[LiveDecision] = deque(maxlen=10)
        self._window: deque[tuple[str, str]] = deque(maxlen=window)
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._sources: dict[str, int] = {}
        self._latencies: deque[int] = deque(maxlen=window)
        self._per_second: dict[int, int] = {}
        self.max_waiting = max(window, 1000)
        self._tx_ms: OrderedDict[str, int] = OrderedDict()
        self._waiting: OrderedDict[str, LiveDecision] = OrderedDict()
        self.quality = QualityTracker(max_decisions=max_decisions)
        self.decisions_read = 0
        self.invalid = 0

    def add_transaction(self, tx_id: str, record_ms: int) -> None:
        with self._lock:
            waiting = self._waiting.pop(tx_id, None)
            if waiting is not None:
                self._joined(waiting, record_ms)
                return
            self._tx_ms[tx_id] = record_ms
            if len(self._tx_ms) > self.max_waiting:
                self._tx_ms.popitem(last=False)

    def add_decision(self, d: dict[str, Any], record_ms: int) -> None:
        """A decoded decision record; one without the fields the view needs is counted invalid."""
        key = decision_key_fields(d)
        if key is None or not isinstance(d.get("card_id"), str):
            self.invalid += 1
            return
        tx_id, version, outcome, score, event_ms = key
        reasons = d.get("reasons")
        item = LiveDecision(
            transaction_id=tx_id,
            card_id=d["card_id"],
            decision=outcome,
            decided_by=str(d.get("decided_by", "model")),
            score=score,
            reasons=[str(r) for r in reasons] if isinstance(reasons, list) else [],
            model_version=version,
            record_ms=record_ms,
        )
        source = item.decided_by.partition(":")[0]
        with self._lock:
            self.decisions_read += 1
            self.quality.add_decision(tx_id, version, outcome, score, event_ms)
            self._latest.append(item)
            if outcome != "allow":
                self._flagged.append(item)
            if len(self._window) == self._window.maxlen:
                old_outcome, old_source = self._window[0]
                self._counts[old_outcome] -= 1
                self._sources[old_source] -= 1
            self._window.append((outcome, source))
            self._counts[outcome] += 1
            self._sources[source] = self._sources.get(source, 0) + 1
            second = record_ms // 1000
            self._per_second[second] = self._per_second.get(second, 0) + 1
            if len(self._per_second) > 120:
                for s in sorted(self._per_second)[:-120]:
                    del self._per_second[s]
            tx_ms = self._tx_ms.pop(tx_id, None)
            if tx_ms is not None:
                self._joined(item, tx_ms)
            else:
                self._waiting[tx_id] = item
                if len(self._waiting) > self.max_waiting:
                    self._waiting.popitem(last=False)

    def _joined(self, item: LiveDecision, tx_ms: int) -> None:
        item.latency_ms = max(0, item.record_ms - tx_ms)
        self._latencies.append(item.latency_ms)

    def add_label(self, tx_id: str, is_fraud: bool) -> None:
        with self._lock:
            self.quality.add_label(tx_id, is_fraud)

    def latest(self, n: int) -> list[LiveDecision]:
        """The ``n`` latest decisions, newest first."""
        with self._lock:
            return [replace(item) for item in list(reversed(self._latest))[:n]]

    def view(self, now_ms: int | None = None) -> LiveView:
        """The current snapshot (sorts the latencies: call it off the event loop)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        with self._lock:
            latencies = np.fromiter(self._latencies, dtype=np.float64, count=len(self._latencies))
            last_minute = sum(n for s, n in self._per_second.items() if now_ms - 60_000 <= s * 1000 < now_ms)
            view = LiveView(
                latest=[replace(item) for item in reversed(self._latest)],
                flagged=[replace(item) for item in reversed(self._flagged)],
                window=len(self._window),
                counts=dict(self._counts),
                decided_by={k: v for k, v in sorted(self._sources.items()) if v},
                per_second=last_minute / 60.0,
                latency_ms=None,
                latency_samples=len(latencies),
                quality=self.quality.summary(),
                labelled=self.quality.labelled,
                decisions_read=self.decisions_read,
                invalid=self.invalid,
            )
        if len(latencies):
            p50, p95, p99 = np.percentile(latencies, [50, 95, 99]).tolist()
            view = replace(view, latency_ms={"p50": p50, "p95": p95, "p99": p99, "max": float(latencies.max())})
        return view


# --- the reader threads --------------------------------------------------------------------------


class Follower(Replica):
    """A topic reader handing on whole messages (their timestamps too): from the last ``tail``
    records of each partition (None: from the beginning), once ``after`` is set (None: at once)."""

    def __init__(
        self,
        settings: ApiSettings,
        topic: str,
        name: str,
        on_message: Callable[[Message], None],
        tail: int | None = None,
        after: threading.Event | None = None,
    ) -> None:
        super().__init__(settings, topic, _by_message, name)
        self.on_message, self.tail, self.after = on_message, tail, after

    def start_offset(self, low: int, high: int) -> int:
        return OFFSET_BEGINNING if self.tail is None else max(low, high - self.tail)

    def receive(self, msg: Message) -> None:
        self.on_message(msg)

    def run(self) -> None:
        while self.after is not None and not self.after.wait(0.2):
            if self._stop_event.is_set():
                return
        super().run()


def _by_message(key: bytes, value: bytes | None) -> None:  # Follower overrides receive
    raise AssertionError("a Follower hands on whole messages")


def _record_ms(msg: Message) -> int:
    kind, ts = msg.timestamp()
    return int(ts) if kind and ts > 0 else int(time.time() * 1000)


class Followers:
    """The console's readers: labels first (so that, at start, a labelled case is never queued),
    then review cases; the decisions and transactions from their last records."""

    def __init__(self, settings: ApiSettings) -> None:
        self.queue = ReviewQueue(settings.console_max_cases, settings.console_max_labels)
        self.feed = LiveFeed(window=min(10_000, settings.console_decisions), max_decisions=settings.console_decisions)
        self.invalid_labels = 0
        tail = max(1, settings.console_decisions // settings.topic_partitions)
        self.labels = Follower(settings, settings.labels_topic, "console-labels", self._label)
        self.review = Follower(
            settings, settings.review_topic, "console-review", self._case, after=self.labels.caught_up
        )
        self.decisions = Follower(settings, settings.decisions_topic, "console-decisions", self._decision, tail=tail)
        self.transactions = Follower(
            settings, settings.transactions_topic, "console-transactions", self._transaction, tail=tail
        )
        self.threads = (self.labels, self.review, self.decisions, self.transactions)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        for thread in self.threads:
            thread.stop()

    def restored(self) -> dict[str, bool]:
        """Per reader: it has read what its topic held at start."""
        return {t.what.removeprefix("console-"): t.caught_up.is_set() for t in self.threads}

    def _label(self, msg: Message) -> None:
        label = label_of_record(msg.value(), msg.key())
        if isinstance(label, Rejected):
            self.invalid_labels += 1
            return
        self.queue.apply_label(label)
        self.feed.add_label(label.transaction_id, label.is_fraud)

    def _case(self, msg: Message) -> None:
        key = msg.key()
        if key is not None:
            self.queue.apply_case(key, msg.value())

    def _decision(self, msg: Message) -> None:
        try:
            decoded = orjson.loads(msg.value() or b"")
        except orjson.JSONDecodeError:
            self.feed.invalid += 1
            return
        self.feed.add_decision(decoded if isinstance(decoded, dict) else {}, _record_ms(msg))

    def _transaction(self, msg: Message) -> None:
        # Only the id: a malformed transaction has no decision to join (the worker dead-letters it).
        try:
            tx_id = orjson.loads(msg.value() or b"").get("transaction_id")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if isinstance(tx_id, str):
            self.feed.add_transaction(tx_id, _record_ms(msg))
