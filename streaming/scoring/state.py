"""Per-card state as the worker stores it: the last 30 days (plus grace) of transactions, and
the card's confirmed fraud labels (those known in the last 30 days, plus grace, once it has
transactions).

A card's value in the table is a JSON object of parallel lists, sorted by time, plus ``lab``:
``[transaction_id, merchant_id, tx_day, available_ms]`` per fraud label. Merging is idempotent
by transaction id, so a transaction or label redelivered after a rebalance or a crash is never
counted twice.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from model.features import CARD_LABEL_SPAN_MS, FRAUD_LABEL_COLUMNS, HISTORY_COLUMNS, HISTORY_SPAN_MS, strings

log = logging.getLogger(__name__)

CardState = dict[str, list[Any]]
_FIELDS = ("ids", "ts", "amt", "mer")

#: The worker's Faust table of card states.
CARD_TABLE = "card-history"


def card_changelog_topic(app_id: str) -> str:
    """The card table's changelog topic, as Faust names it for application ``app_id``."""
    return f"{app_id}-{CARD_TABLE}-changelog"


def changelog_key(card_id: str) -> bytes:
    """A card's key in the table's changelog: Faust's changelog topics encode keys as JSON."""
    return orjson.dumps(card_id)


def encode_state(state: CardState) -> bytes:
    """A card's state as the table and its changelog hold it: JSON, in a bytes object of its own
    size (orjson returns the larger buffer it grew while writing, ~16 KB for a 2 KB state, and
    the table keeps every card's)."""
    return bytes(memoryview(orjson.dumps(state)))


def decode_state(value: bytes | None) -> CardState | None:
    """A card's state from its changelog value. The worker's table and the API's copy hold these
    JSON bytes rather than the decoded lists: a few times smaller, and not tracked by the garbage
    collector (with lists, every full collection walked every card's history, pausing the worker
    for longer as the state grew)."""
    if value is None:
        return None
    state: CardState = orjson.loads(value)
    return state


class CardStateCopy:
    """A read-only copy of the whole card table, fed from its changelog by a replica thread.

    Values are kept as the changelog's JSON bytes and decoded per read (~10 µs for a busy card):
    a few times smaller than the decoded lists, which matters since this holds every card.
    """

    def __init__(self) -> None:
        self._values: dict[str, bytes] = {}
        self.stored_bytes = 0

    def apply(self, key: bytes, value: bytes | None) -> None:
        """One changelog record (``None``: a tombstone)."""
        try:
            card = orjson.loads(key)
        except orjson.JSONDecodeError:
            card = None
        if not isinstance(card, str):
            log.warning("ignoring card changelog record with key %r", key[:80])
            return
        if value is None:
            old = self._values.pop(card, None)
        else:
            # Replaced in place, never removed first: a reader on another thread sees the old
            # state or the new one, not an empty card.
            old = self._values.get(card)
            self._values[card] = value
        self.stored_bytes += (len(value) if value is not None else 0) - (len(old) if old is not None else 0)

    def get(self, card_id: str) -> CardState:
        """The card's state as last written to the changelog (empty for a card never seen)."""
        return decode_state(self._values.get(card_id)) or empty_state()

    def __len__(self) -> int:
        return len(self._values)


def empty_state() -> CardState:
    return {**{f: [] for f in _FIELDS}, "lab": []}


def with_fraud_label(
    state: CardState | None, transaction_id: str, merchant_id: str, tx_day: int, available_ms: int
) -> CardState:
    """The state with this fraud label (an earlier availability wins for a repeated label)."""
    state = dict(state or empty_state())
    labels = {lab[0]: lab for lab in state.get("lab", [])}
    old = labels.get(transaction_id)
    if old is None or available_ms < old[3]:
        labels[transaction_id] = [transaction_id, merchant_id, int(tx_day), int(available_ms)]
    state["lab"] = sorted(labels.values(), key=lambda lab: (lab[3], lab[0]))
    return state


def without_fraud_label(state: CardState | None, transaction_id: str) -> CardState | None:
    """The state without this transaction's fraud label (it was reversed); None if it had none."""
    if not state or not any(lab[0] == transaction_id for lab in state.get("lab", [])):
        return None
    return {**state, "lab": [lab for lab in state["lab"] if lab[0] != transaction_id]}


def labels_frame(states: Mapping[str, CardState | None]) -> dict[str, np.ndarray]:
    """The cards' fraud labels as columns of ``model.features.FRAUD_LABEL_COLUMNS``."""
    rows = [(lab[0], card, lab[1], lab[2], lab[3]) for card, st in states.items() if st for lab in st.get("lab", [])]
    tids, cards, merchants, days, known = zip(*rows, strict=True) if rows else ((), (), (), (), ())
    values = (
        strings(tids),
        strings(cards),
        strings(merchants),
        np.asarray(days, np.int64),
        np.asarray(known, np.int64),
    )
    return dict(zip(FRAUD_LABEL_COLUMNS, values, strict=True))


def history_frame(
    states: Mapping[str, CardState | None],
    extra: Sequence[tuple[str, str, str, int, float]] = (),
    with_ids: bool = True,
) -> dict[str, np.ndarray]:
    """One history (columns of ``model.features.HISTORY_COLUMNS``) for several cards, plus
    ``extra`` rows ``(transaction_id, card_id, merchant_id, ts_ms, amount)`` not stored yet.
    ``with_ids=False`` leaves out ``transaction_id``, which the features never read (building it
    is a good part of the cost for long histories)."""
    cards: list[str] = []
    lengths: list[int] = []
    ids: list[str] = []
    merchants: list[str] = []
    ts: list[int] = []
    amounts: list[float] = []
    for card, state in states.items():
        if not state or not state["ts"]:
            continue
        cards.append(card)
        lengths.append(len(state["ts"]))
        if with_ids:
            ids.extend(state["ids"])
        merchants.extend(state["mer"])
        ts.extend(state["ts"])
        amounts.extend(state["amt"])
    for tid, card, merchant, t, amount in extra:
        cards.append(card)
        lengths.append(1)
        if with_ids:
            ids.append(tid)
        merchants.append(merchant)
        ts.append(t)
        amounts.append(amount)
    frame = {
        "card_id": np.repeat(strings(cards), lengths),
        "merchant_id": strings(merchants),
        "ts_ms": np.asarray(ts, np.int64),
        "amount": np.asarray(amounts, np.float64),
    }
    if with_ids:
        frame["transaction_id"] = strings(ids)
    return {name: frame[name] for name in HISTORY_COLUMNS if name in frame}


def merge(
    state: CardState | None,
    rows: Iterable[tuple[str, int, float, str]],
    grace_ms: int,
    max_entries: int | None = None,
    fresh: bool = False,
) -> CardState:
    """Add ``(transaction_id, ts_ms, amount, merchant_id)`` rows; keep what features can still use.

    Entries older than the card's newest timestamp minus the longest window (and the grace for
    late events) are dropped: no in-order transaction can see them any more; so are fraud labels
    that became known longer ago than the card's label features reach. ``max_entries``
    keeps only the newest entries of a card busier than that (the whole state is one changelog
    record, which must stay well under the broker's message size limit). Rows whose id is
    stored already, or came earlier in ``rows``, are left out; ``fresh=True`` says the caller
    made sure there are none (for a busy card, that check costs more than the rest).
    """
    state = state or empty_state()
    labels = state.get("lab", [])
    ids, ts, amt, mer = state["ids"], state["ts"], state["amt"], state["mer"]
    new: list[tuple[str, int, float, str]] = []
    known = None if fresh else set(ids)
    for tid, t, amount, merchant in rows:
        if known is not None:
            if tid in known:
                continue
            known.add(tid)
        new.append((tid, int(t), float(amount), merchant))
    new_ts = [row[1] for row in new]
    # The stored lists are sorted by time; new rows go after any equal timestamp, which is where
    # a stable sort of (stored, then new in arrival order) would put them.
    if all(a <= b for a, b in zip(new_ts, new_ts[1:], strict=False)) and (not ts or not new or new_ts[0] >= ts[-1]):
        # In order, the usual case: appended, one copy of each list.
        ids = ids + [row[0] for row in new]
        ts = ts + new_ts
        amt = amt + [row[2] for row in new]
        mer = mer + [row[3] for row in new]
    else:
        ids, ts, amt, mer = list(ids), list(ts), list(amt), list(mer)
        for tid, t, amount, merchant in new:
            at = bisect_right(ts, t)
            ids.insert(at, tid)
            ts.insert(at, t)
            amt.insert(at, amount)
            mer.insert(at, merchant)
    if not ids:
        return {**empty_state(), "lab": list(labels)}
    # Labels known longer ago than any in-order transaction's label windows reach go too.
    label_horizon = ts[-1] - CARD_LABEL_SPAN_MS - grace_ms
    labels = [lab for lab in labels if lab[3] >= label_horizon]
    start = bisect_left(ts, ts[-1] - HISTORY_SPAN_MS - grace_ms)
    if max_entries is not None:
        start = max(start, len(ids) - max_entries)
    if start == 0:  # the lists are this call's own already (appended to or copied above)
        return {"ids": ids, "ts": ts, "amt": amt, "mer": mer, "lab": labels}
    return {"ids": ids[start:], "ts": ts[start:], "amt": amt[start:], "mer": mer[start:], "lab": labels}
