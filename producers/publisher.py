"""Publishing to Kafka: paced synthetic traffic and timestamp-ordered CSV replay, optionally with
the label events that become known along the way, each at its own event time.

A replay with labels reproduces what a live system sees: transactions in ``timestamp`` order and
labels in ``labelled_at`` order, merged into one event-time sequence, so a label is published
after every transaction that happened before it became known and before every later one.
"""

from __future__ import annotations

import heapq
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import orjson
import pandas as pd
from confluent_kafka import Producer
from pydantic import ValidationError

from model.schemas import Label, label_value, wire_value
from streaming.kafka import clients as kafka
from streaming.metrics import ProducerMetrics
from streaming.settings import ProducerSettings

log = logging.getLogger(__name__)

#: Label columns of the synthetic data; never published on the transactions topic.
LABEL_FIELDS = ("is_fraud", "fraud_type")
#: Label delay assumed for a fraud row of a replayed CSV that does not say when its label came.
DEFAULT_LABEL_DELAY_DAYS = 7.0


@dataclass
class PublishStats:
    """Counts of one run. ``sent``/``acked``/``failed``/``fraud`` are transactions; ``labels*``
    are label events on the labels topic."""

    sent: int = 0
    acked: int = 0
    failed: int = 0
    fraud: int = 0
    labels: int = 0
    labels_acked: int = 0
    labels_failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


class Progress:
    """A status line: redrawn in place a few times a second on a terminal, else a new line
    every few seconds (logs, CI)."""

    def __init__(self, total: int | None, stream: TextIO = sys.stderr, enabled: bool = True) -> None:
        self.total, self.stream = total, stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self._interval = 0.25 if self.tty else 5.0
        self._last = 0.0
        self._start = time.monotonic()

    def update(self, done: int, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self._interval):
            return
        self._last = now
        rate = done / max(now - self._start, 1e-9)
        if self.total:
            width = 30
            filled = int(width * min(done / self.total, 1.0))
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}"
        else:
            bar = f"{done}"
        line = f"{bar}  {rate:,.0f}/s {extra}"
        self.stream.write(f"\r{line}\033[K" if self.tty else f"{line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _iso(ts_ms: int, offset_min: int) -> str:
    """An instant (ms since the epoch) as ISO-8601 in the given UTC offset, to the millisecond."""
    tz = timezone(timedelta(minutes=offset_min))
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).astimezone(tz).isoformat(timespec="milliseconds")


def rows_from_frame(frame: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """Rows of a validated dataset frame (``model.dataset``) as wire dicts plus ``is_fraud``."""
    for rec in frame.itertuples(index=False):
        row = {
            "transaction_id": rec.transaction_id,
            "timestamp": _iso(int(rec.ts_ms), int(rec.utc_offset_min)),
            "card_id": rec.card_id,
            "merchant_id": rec.merchant_id,
            "amount": float(rec.amount),
            "currency": rec.currency or "USD",
            "merchant_category": rec.merchant_category,
            "channel": rec.channel,
            "country": rec.country or None,
            "is_fraud": int(rec.is_fraud),
        }
        yield row


def label_events(labels: pd.DataFrame) -> list[Label]:
    """Label rows (as from :func:`producers.synthetic.labels_for`) as validated label events, in order."""
    return [Label.model_validate(row) for row in labels.to_dict("records")]


@dataclass
class CsvLabels:
    """The label events of a replayed CSV, in ``labelled_at`` order, and the rows that gave none."""

    labels: list[Label]
    #: Fraud rows without a ``labelled_at``: their label is published ``label_delay_days`` after them.
    defaulted: int = 0
    #: Rows whose label columns break the label contract, by reason (the transaction is still sent).
    invalid: dict[str, int] = field(default_factory=dict)
    #: A few transaction ids per invalid reason.
    examples: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"{len(self.labels)} labels ({self.defaulted} at the default delay)"
        if self.invalid:
            parts = [f"{r}: {n} (e.g. {', '.join(self.examples[r])})" for r, n in sorted(self.invalid.items())]
            text += "; label columns invalid, no label sent: " + "; ".join(parts)
        return text


def csv_labels(
    path: str | Path, frame: pd.DataFrame, *, label_delay_days: float = DEFAULT_LABEL_DELAY_DAYS
) -> CsvLabels:
    """The label events a replay of the CSV at ``path`` publishes, for the valid rows in ``frame``
    (``model.dataset.load_csv(path).frame``).

    A row gives a label when it is fraud (``is_fraud`` 1) or has a ``labelled_at``. The label is
    known at the row's ``labelled_at`` when the column is present and not empty, else
    ``label_delay_days`` after the transaction. Its source is the row's ``label_source`` when
    given, else ``chargeback`` for fraud and ``investigation`` for a genuine row. ``is_fraud`` is
    the row's. Rows whose label columns break the :class:`~model.schemas.Label` contract (no
    zone, before the transaction, unknown source) give no label and are counted by reason.
    """
    if not label_delay_days >= 0:
        raise ValueError("label_delay_days must be >= 0")
    wanted = {"transaction_id", "labelled_at", "label_source"}
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, usecols=lambda c: c.strip() in wanted)
    raw.columns = [c.strip() for c in raw.columns]
    for c in wanted - set(raw.columns):
        raw[c] = ""
    raw = raw.apply(lambda s: s.str.strip())
    # The loader keeps the first valid row of a duplicated id; its label columns are the first's.
    by_id = raw.drop_duplicates("transaction_id", keep="first").set_index("transaction_id")
    ids = frame["transaction_id"]
    given_at = ids.map(by_id["labelled_at"]).fillna("").to_numpy(dtype=object)
    given_source = ids.map(by_id["label_source"]).fillna("").to_numpy(dtype=object)
    fraud = frame["is_fraud"].to_numpy(dtype=np.int64) == 1
    candidate = np.flatnonzero(fraud | (given_at != ""))
    delay_ms = round(label_delay_days * 86_400_000)

    out = CsvLabels(labels=[])
    keyed: list[tuple[float, int, Label]] = []
    ts_ms = frame["ts_ms"].to_numpy(dtype=np.int64)
    offsets = frame["utc_offset_min"].to_numpy(dtype=np.int64)
    tx_ids, cards, merchants = (frame[c].to_numpy(dtype=object) for c in ("transaction_id", "card_id", "merchant_id"))
    for i in candidate:
        at = given_at[i]
        if not at:
            at = _iso(int(ts_ms[i]) + delay_ms, int(offsets[i]))
            out.defaulted += 1
        source = given_source[i] or ("chargeback" if fraud[i] else "investigation")
        try:
            label = Label.model_validate(
                {
                    "transaction_id": tx_ids[i],
                    "card_id": cards[i],
                    "merchant_id": merchants[i],
                    "is_fraud": bool(fraud[i]),
                    "timestamp": _iso(int(ts_ms[i]), int(offsets[i])),
                    "labelled_at": at,
                    "source": source,
                }
            )
        except ValidationError as exc:
            fields_ = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}) or ["labelled_at"]
            reason = f"bad_{'_'.join(fields_)}"
            out.invalid[reason] = out.invalid.get(reason, 0) + 1
            if len(examples := out.examples.setdefault(reason, [])) < 3:
                examples.append(str(tx_ids[i]))
            continue
        keyed.append((label.labelled_at.timestamp(), int(i), label))
    keyed.sort(key=lambda k: (k[0], k[1]))
    out.labels = [label for _, _, label in keyed]
    return out


Event = tuple[Literal["transaction", "label"], float, Any]


def event_order(rows: Iterable[dict[str, Any]], labels: Iterable[Label]) -> Iterator[Event]:
    """Transactions (in ``timestamp`` order) and labels (in ``labelled_at`` order) merged into one
    event-time order, as ``(kind, event time in epoch seconds, row or label)``; at equal times the
    transaction comes first (a label is never known before its transaction happened)."""
    txs: Iterator[Event] = (("transaction", datetime.fromisoformat(row["timestamp"]).timestamp(), row) for row in rows)
    lbs: Iterator[Event] = (("label", label.labelled_at.timestamp(), label) for label in labels)
    return heapq.merge(txs, lbs, key=lambda e: e[1])


@dataclass
class _IdempotenceState:
    """The idempotent producer's state from librdkafka's statistics callback. Its own object, not
    a method of the publisher: the producer keeps its callback, and a callback holding the
    publisher would make a cycle that kept the producer (and its connections) alive until a
    garbage collection, after the publisher was done."""

    state: str | None = None

    def __call__(self, stats_json: str) -> None:
        if self.state != "Assigned":  # parsed only until then: the stats keep coming
            self.state = orjson.loads(stats_json).get("eos", {}).get("idemp_state", "Assigned")


class Publisher:
    """Sends transactions keyed by ``card_id``; counts broker acknowledgements, not attempts."""

    def __init__(
        self, settings: ProducerSettings, metrics: ProducerMetrics | None = None, producer: Producer | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics or ProducerMetrics()
        #: The idempotent producer's state, until it has its producer id.
        self._idempotence = _IdempotenceState("Assigned" if producer is not None else None)
        self.producer = (
            producer
            if producer is not None
            else kafka.producer(
                settings,
                **{"linger.ms": settings.linger_ms, "statistics.interval.ms": 100, "stats_cb": self._idempotence},
            )
        )
        self.stats = PublishStats()

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Block until the producer can send: connected, and (idempotent) holding its producer id.

        librdkafka keeps records while it waits for the id (~0.5 s after start on a busy
        broker), then sends them in a burst; their timestamps, taken at ``produce()``, would
        count that wait as latency. False if not ready within ``timeout``.
        """
        self.producer.list_topics(self.settings.transactions_topic, timeout=timeout)
        deadline = time.monotonic() + timeout
        while self._idempotence.state != "Assigned" and time.monotonic() < deadline:
            self.producer.poll(0.05)
        return self._idempotence.state == "Assigned"

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.stats.failed += 1
            self.metrics.failed.inc()
            if len(self.stats.errors) < 10:
                self.stats.errors.append(str(err))
        else:
            self.stats.acked += 1
            self.metrics.sent.inc()
            self.metrics.bytes.inc(len(msg.value() or b""))

    def _label_delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.stats.labels_failed += 1
            self.metrics.failed.inc()
            if len(self.stats.errors) < 10:
                self.stats.errors.append(f"label: {err}")
        else:
            self.stats.labels_acked += 1
            # A label counter on ProducerMetrics, when it has one (streaming/metrics.py).
            counter = getattr(self.metrics, "labels", None)
            if counter is not None:
                counter.inc()

    def send_label(self, label: Label) -> None:
        """Send one label event to the labels topic, keyed by its card id."""
        self._produce(self.settings.labels_topic, label.card_id.encode(), label_value(label), self._label_delivered)
        self.stats.labels += 1
        self.producer.poll(0)

    def _produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self.producer.poll(0.05)

    def send(self, row: dict[str, Any]) -> None:
        self._produce(self.settings.transactions_topic, str(row["card_id"]).encode(), wire_value(row), self._delivered)
        self.stats.sent += 1
        if row.get("is_fraud"):
            self.stats.fraud += 1
            self.metrics.fraud.inc()
        self.producer.poll(0)

    def idle(self, seconds: float) -> None:
        """Wait while serving delivery callbacks.

        librdkafka's poll waits whole milliseconds (a shorter timeout returns at once), so the
        last fraction of a millisecond is slept instead: polling it away spun a core at the
        sub-millisecond gaps of a few thousand transactions a second.
        """
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) >= 0.001:
            self.producer.poll(min(left, 0.1))
        if left > 0:
            time.sleep(left)

    def publish(
        self,
        rows: Iterable[dict[str, Any]],
        *,
        labels: Iterable[Label] | None = None,
        rate: float | None = None,
        count: int | None = None,
        duration: float | None = None,
        speedup: float | None = None,
        progress: Progress | None = None,
    ) -> PublishStats:
        """Send ``rows`` paced by ``rate`` (transactions/s) or by event time / ``speedup``; as fast as
        possible when both are None. Stops after ``count`` rows or ``duration`` seconds; flushes
        before returning.

        With ``labels`` (sorted by ``labelled_at``), each label is sent to the labels topic in event
        time order among the transactions (see :func:`event_order`). ``rate`` paces transactions
        only (labels go out between them as they fall due); ``speedup`` paces both by event time.
        When ``count`` or ``duration`` stops the run, labels known after the last transaction
        sent are not sent; when the rows run out, the remaining labels are sent after them.
        """
        if not self.wait_ready():  # before the clock starts
            log.warning("producer not ready after 10 s (no producer id yet); sending anyway")
        start = time.monotonic()
        first_event: float | None = None
        events = event_order(rows, labels if labels is not None else ())
        i = 0  # transactions sent
        last_tx_s = -math.inf  # event time of the last transaction sent
        for kind, event_s, item in events:
            if count is not None and i >= count and (kind == "transaction" or event_s > last_tx_s):
                break
            elapsed = time.monotonic() - start
            if duration is not None and elapsed >= duration:
                break
            if rate:
                wait = i / rate - elapsed if kind == "transaction" else 0.0
            elif speedup:
                first_event = event_s if first_event is None else first_event
                wait = (event_s - first_event) / speedup - elapsed
            else:
                wait = 0.0
            if wait > 0:
                self.idle(wait)
            if kind == "transaction":
                self.send(item)
                i += 1
                last_tx_s = event_s
            else:
                self.send_label(item)
            if progress:
                progress.update(self.stats.sent, self._progress_text())
        self.producer.flush(60)
        # What the broker has not answered by now counts as failed, split by kind.
        late_tx = self.stats.sent - self.stats.acked - self.stats.failed
        late_labels = self.stats.labels - self.stats.labels_acked - self.stats.labels_failed
        if late_tx or late_labels:
            self.stats.failed += late_tx
            self.stats.labels_failed += late_labels
            self.stats.errors.append(f"{late_tx + late_labels} messages not delivered within 60 s")
        self.stats.seconds = time.monotonic() - start
        if progress:
            progress.update(self.stats.sent, self._progress_text(), force=True)
            progress.close()
        return self.stats

    def _progress_text(self) -> str:
        text = f"acked {self.stats.acked}"
        return f"{text}, labels {self.stats.labels_acked}" if self.stats.labels else text
