"""Merchant risk state, replicated to every worker and API process through one compacted topic.

Why not a repartition by merchant. Transactions are keyed by card, and a merchant's
transactions arrive on every partition. The merchant features only read whole UTC days that
ended at least ``MERCHANT_DELAY_DAYS`` days before the scored transaction (labels come late, so
the last days are left out on purpose), which makes them insensitive to where and when the
other partitions' counts arrive, as long as they arrive within days. So instead of routing each
transaction through a merchant-keyed topic and back (two more hops on the decision path, and a
card's transactions reordered across merchant partitions), each worker publishes what its own
partitions saw and every process keeps the sum:

* ``a <merchant> <day> <partition>`` -> transactions at the merchant that UTC day on that source
  partition (an absolute count; the partition's owner is its only writer, so no two workers
  ever race on a key, and a redelivered record rewrites the same value);
* ``n <merchant> <day> <partition>`` -> how many of them came from a card with no transaction at
  the merchant in the 30 days before (absolute, written with the ``a`` record when it changes).
  A key of its own, so that processes of an older version skip it (with a warning) instead of
  failing to parse it, and topics written before it existed still load (their days count no
  new cards);
* ``l <transaction_id>`` -> a fraud label (card, merchant, transaction day, when it became known).

The topic is compacted: its size is bounded by merchants x days kept x partitions plus the
labels. Keys of days too old for any window are deleted with tombstones by their writer.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson

from model.features import MERCHANT_SPAN_DAYS, NEW_CARD_SPAN_DAYS, Columns, RiskContext, strings

log = logging.getLogger(__name__)

# Ids may hold inner spaces (model.schemas.ID_PATTERN): a key is split on its first separator
# (the kind), and a daily count's day and partition are taken from the right.
_SEP = " "
_KINDS = ("a", "n")  # daily counts: all transactions, those from cards new at the merchant


def activity_key(merchant: str, day: int, partition: int, kind: str = "a") -> bytes:
    """``kind``: ``a`` for the day's count, ``n`` for its transactions from cards new there."""
    return f"{kind}{_SEP}{merchant}{_SEP}{day}{_SEP}{partition}".encode()


def label_key(transaction_id: str) -> bytes:
    return f"l{_SEP}{transaction_id}".encode()


def label_value(card: str, merchant: str, tx_day: int, available_ms: int, partition: int = -1) -> bytes:
    """``partition``: the labels partition it came from; its owner deletes it when it gets old."""
    return orjson.dumps(
        {"card": card, "merchant": merchant, "tx_day": tx_day, "available_ms": available_ms, "partition": partition}
    )


def _drop_empty(table: dict[str, Any]) -> None:
    for m in [m for m, entries in table.items() if not entries]:
        del table[m]


class MerchantRisk:
    """The summed view: daily counts per merchant and fraud labels per merchant. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # kind (``a``: transactions, ``n``: from cards new at the merchant) -> merchant ->
        # (day, partition) -> count
        self._activity: dict[str, dict[str, dict[tuple[int, int], int]]] = {k: defaultdict(dict) for k in _KINDS}
        # merchant -> transaction id -> (card, tx_day, available_ms, source partition)
        self._labels: dict[str, dict[str, tuple[str, int, int, int]]] = defaultdict(dict)
        self._label_merchant: dict[str, str] = {}
        # Counts this process wrote for the partitions it owns: newer than any of its own
        # records still on their way back through the topic, so they win over the replica.
        # ``_activity`` always holds the count in force (own counts are written to both), so
        # readers need only that one. Keyed (kind, merchant, day, partition).
        self._own: dict[tuple[str, str, int, int], int] = {}
        # kind -> merchant -> day -> the day's count over all partitions, kept with ``_activity``
        # (by ``_set``): what the features read, without summing partitions per batch.
        self._daily: dict[str, dict[str, dict[int, int]]] = {k: defaultdict(dict) for k in _KINDS}

    def _set(self, kind: str, merchant: str, slot: tuple[int, int], value: int | None) -> None:
        """One daily count in force (``None``: gone), and the merchant's day total with it."""
        slots = self._activity[kind][merchant]
        old = slots.pop(slot, 0) if value is None else slots.get(slot, 0)
        if value is not None:
            slots[slot] = value
        daily = self._daily[kind][merchant]
        total = daily.get(slot[0], 0) - old + (value or 0)
        if total:
            daily[slot[0]] = total
        else:
            daily.pop(slot[0], None)

    def apply(self, key: bytes, value: bytes | None) -> None:
        """One record of the topic (``None`` value: a tombstone)."""
        kind, _, rest = key.decode().partition(_SEP)
        parts = [kind, *(rest.rsplit(_SEP, 2) if kind in _KINDS else [rest])]
        with self._lock:
            if parts[0] in _KINDS and len(parts) == 4:
                kind, merchant, slot = parts[0], parts[1], (int(parts[2]), int(parts[3]))
                own = self._own.get((kind, merchant, *slot))
                if value is None:
                    self._set(kind, merchant, slot, None)
                    self._own.pop((kind, merchant, *slot), None)
                elif own is None:
                    self._set(kind, merchant, slot, int(value))
            elif parts[0] == "l" and parts[1]:
                tid = parts[1]
                old = self._label_merchant.pop(tid, None)
                if old is not None:
                    self._labels[old].pop(tid, None)
                if value is not None:
                    v = orjson.loads(value)
                    self._labels[v["merchant"]][tid] = (
                        v["card"],
                        int(v["tx_day"]),
                        int(v["available_ms"]),
                        int(v.get("partition", -1)),
                    )
                    self._label_merchant[tid] = v["merchant"]
            else:
                log.warning("ignoring merchant-risk record with key %r", key[:80])

    def count(self, merchant: str, day: int, partition: int, kind: str = "a") -> int:
        with self._lock:
            return self._activity[kind].get(merchant, {}).get((day, partition), 0)

    def increment(self, seen: Iterable[tuple[str, int, int, bool]]) -> list[tuple[bytes, bytes]]:
        """Count transactions ``(merchant, day, source partition, new)`` this process just saw for
        the first time (``new``: its card had no transaction at the merchant in the 30 days
        before, :func:`model.features.first_at_merchant`); returns the records to publish (the
        new absolute counts)."""
        added: dict[tuple[str, str, int, int], int] = defaultdict(int)
        for m, day, p, new in seen:
            added[("a", m, day, p)] += 1
            if new:
                added[("n", m, day, p)] += 1
        out = []
        with self._lock:
            for (kind, m, day, p), n in added.items():
                value = self._activity[kind][m].get((day, p), 0) + n
                self._set(kind, m, (day, p), value)
                self._own[(kind, m, day, p)] = value
                out.append((activity_key(m, day, p, kind), str(value).encode()))
        return out

    def add_label(
        self, transaction_id: str, card: str, merchant: str, tx_day: int, available_ms: int, partition: int = -1
    ) -> bytes:
        """A fraud label this process received; returns the value to publish under its key."""
        value = label_value(card, merchant, tx_day, available_ms, partition)
        self.apply(label_key(transaction_id), value)
        return value

    def release(self, partitions: Iterable[int]) -> None:
        """These partitions moved away: their counts are the new owner's to write now."""
        gone = set(partitions)
        with self._lock:
            for slot in [s for s in self._own if s[3] in gone]:
                del self._own[slot]

    def context(self, merchants: Iterable[str], card_labels: Columns | None = None) -> RiskContext:
        """The :class:`RiskContext` rows of these merchants; ``card_labels``: the fraud labels
        stored with the queried cards (for their own known-fraud flag only)."""
        m_act: list[str] = []
        days: list[int] = []
        counts: list[int] = []
        new: list[int] = []
        tids: list[str] = []
        cards: list[str] = []
        m_lab: list[str] = []
        tx_days: list[int] = []
        known: list[int] = []
        with self._lock:
            for m in set(merchants):
                daily = self._daily["a"].get(m)
                if daily:
                    daily_new = self._daily["n"].get(m, {})
                    m_act.extend([m] * len(daily))
                    days.extend(daily)
                    counts.extend(daily.values())
                    new.extend([daily_new.get(day, 0) for day in daily])
                for tid, (card, tx_day, available, _) in self._labels.get(m, {}).items():
                    tids.append(tid)
                    cards.append(card)
                    m_lab.append(m)
                    tx_days.append(tx_day)
                    known.append(available)
        activity = {
            "merchant_id": strings(m_act),
            "day": np.asarray(days, np.int64),
            "count": np.asarray(counts, np.int64),
            "new": np.asarray(new, np.int64),
        }
        labels = {
            "transaction_id": strings(tids),
            "card_id": strings(cards),
            "merchant_id": strings(m_lab),
            "tx_day": np.asarray(tx_days, np.int64),
            "available_ms": np.asarray(known, np.int64),
        }
        return RiskContext(activity=activity, fraud_labels=labels, card_labels=card_labels)

    def prune(self, before_day: int, owned: Iterable[int]) -> list[bytes]:
        """Forget daily counts and labels of days before ``before_day`` (no window reaches them
        any more; new-card counts, read over the last days only, go
        ``MERCHANT_SPAN_DAYS - NEW_CARD_SPAN_DAYS`` days earlier); returns the keys this process
        wrote for its ``owned`` partitions, for the tombstones that let compaction delete them
        from the topic."""
        mine = set(owned)
        tombstones: list[bytes] = []
        horizon = {"a": before_day, "n": before_day + MERCHANT_SPAN_DAYS - NEW_CARD_SPAN_DAYS}
        with self._lock:
            for kind, by_merchant in self._activity.items():
                for m, slots in by_merchant.items():
                    for day, p in [slot for slot in slots if slot[0] < horizon[kind]]:
                        self._set(kind, m, (day, p), None)
                        self._own.pop((kind, m, day, p), None)
                        if p in mine:
                            tombstones.append(activity_key(m, day, p, kind))
            for labels in self._labels.values():
                for tid in [t for t, v in labels.items() if v[1] < before_day]:
                    if labels.pop(tid)[3] in mine:
                        tombstones.append(label_key(tid))
                    self._label_merchant.pop(tid, None)
            tables: list[dict[str, Any]] = [*self._activity.values(), *self._daily.values(), self._labels]
            for table in tables:
                _drop_empty(table)
        return tombstones

    def size(self) -> tuple[int, int]:
        with self._lock:
            return sum(len(s) for s in self._activity["a"].values()), len(self._label_merchant)
