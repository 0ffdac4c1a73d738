"""Publishing transactions to Kafka: paced synthetic traffic and timestamp-ordered CSV replay."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TextIO

import orjson
import pandas as pd

from model.schemas import WIRE_FIELDS
from streaming import kafka
from streaming.metrics import ProducerMetrics
from streaming.settings import ProducerSettings

#: Label columns of the synthetic data; never published on the transactions topic.
LABEL_FIELDS = ("is_fraud", "fraud_type")


@dataclass
class PublishStats:
    sent: int = 0
    acked: int = 0
    failed: int = 0
    fraud: int = 0
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


def wire_value(row: dict[str, Any]) -> bytes:
    """The JSON a transaction travels as: wire fields only, labels stripped, None left out."""
    return orjson.dumps({k: row[k] for k in WIRE_FIELDS if k in row and row[k] is not None and row[k] == row[k]})


def rows_from_frame(frame: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """Rows of a validated dataset frame (``model.dataset``) as wire dicts plus ``is_fraud``."""
    for rec in frame.itertuples(index=False):
        tz = timezone(timedelta(minutes=int(rec.utc_offset_min)))
        ts = datetime.fromtimestamp(int(rec.ts_ms) / 1000, tz=UTC).astimezone(tz)
        row = {
            "transaction_id": rec.transaction_id,
            "timestamp": ts.isoformat(timespec="milliseconds"),
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


class Publisher:
    """Sends transactions keyed by ``card_id``; counts broker acknowledgements, not attempts."""

    def __init__(self, settings: ProducerSettings, metrics: ProducerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or ProducerMetrics()
        self.producer = kafka.producer(settings)
        self.stats = PublishStats()

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

    def send(self, row: dict[str, Any]) -> None:
        value = wire_value(row)
        while True:
            try:
                self.producer.produce(
                    self.settings.transactions_topic,
                    key=str(row["card_id"]).encode(),
                    value=value,
                    on_delivery=self._delivered,
                )
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self.producer.poll(0.05)
        self.stats.sent += 1
        if row.get("is_fraud"):
            self.stats.fraud += 1
            self.metrics.fraud.inc()
        self.producer.poll(0)

    def _idle(self, seconds: float) -> None:
        """Wait while serving delivery callbacks."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.producer.poll(min(left, 0.1))

    def publish(
        self,
        rows: Iterable[dict[str, Any]],
        *,
        rate: float | None = None,
        count: int | None = None,
        duration: float | None = None,
        speedup: float | None = None,
        progress: Progress | None = None,
    ) -> PublishStats:
        """Send ``rows`` paced by ``rate`` (msg/s) or by event time / ``speedup``; as fast as possible
        when both are None. Stops after ``count`` rows or ``duration`` seconds; flushes before returning."""
        start = time.monotonic()
        first_event: float | None = None
        for i, row in enumerate(rows):
            if count is not None and i >= count:
                break
            elapsed = time.monotonic() - start
            if duration is not None and elapsed >= duration:
                break
            if rate:
                wait = i / rate - elapsed
            elif speedup:
                event_s = datetime.fromisoformat(row["timestamp"]).timestamp()
                first_event = event_s if first_event is None else first_event
                wait = (event_s - first_event) / speedup - elapsed
            else:
                wait = 0.0
            if wait > 0:
                self._idle(wait)
            self.send(row)
            if progress:
                progress.update(self.stats.sent, f"acked {self.stats.acked}")
        remaining = self.producer.flush(60)
        if remaining:
            self.stats.failed += remaining
            self.stats.errors.append(f"{remaining} messages not delivered within 60 s")
        self.stats.seconds = time.monotonic() - start
        if progress:
            progress.update(self.stats.sent, f"acked {self.stats.acked}", force=True)
            progress.close()
        return self.stats
