"""Turning raw Kafka bytes into a valid transaction or label, or a dead-letter reason."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from model.features import epoch_ms
from model.schemas import MAX_MESSAGE_BYTES, Label, Transaction

#: Bounded set of dead-letter reasons (the metric label); details travel in the message headers.
DLQ_REASONS = (
    "oversized",
    "not_json",
    "not_an_object",
    "missing_field",
    "invalid_field",
    "key_mismatch",
    "implausible_timestamp",
)
#: How far a transaction's own timestamp may run ahead of its Kafka record timestamp.
MAX_CLOCK_SKEW_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str


def parse_transaction(raw: bytes | None) -> Transaction | Rejected:
    """Validate one message value; never raises for bad input."""
    data = _json_object(raw)
    if isinstance(data, Rejected):
        return data
    try:
        return Transaction.model_validate(data)
    except ValidationError as exc:
        return rejection_from(exc)


def parse_label(raw: bytes | None) -> Label | Rejected:
    """Validate one label event (labels topic); same reasons as :func:`parse_transaction`."""
    data = _json_object(raw)
    if isinstance(data, Rejected):
        return data
    try:
        return Label.model_validate(data)
    except ValidationError as exc:
        return rejection_from(exc)


def _json_object(raw: bytes | None) -> dict[str, object] | Rejected:
    """The message value as a JSON object, or why it is not one (size is checked before parsing)."""
    if raw is None:
        return Rejected("not_json", "empty message value")
    if len(raw) > MAX_MESSAGE_BYTES:
        return Rejected("oversized", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejected("not_json", str(exc)[:200])
    if not isinstance(data, dict):
        return Rejected("not_an_object", f"JSON {type(data).__name__}, expected an object")
    return data


def rejection_from(exc: ValidationError) -> Rejected:
    errors = exc.errors(include_url=False, include_input=False)
    reason = "missing_field" if all(e["type"] == "missing" for e in errors) else "invalid_field"
    detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in errors)
    return Rejected(reason, detail[:500])


def check_record(tx: Transaction, key: bytes | None, record_timestamp_ms: int) -> Rejected | None:
    """Checks that need the Kafka record as well as the value.

    The key must be the card id: state is partitioned by it, and a transaction on another
    partition would split the card's history between workers. A timestamp far ahead of the
    record's would prune the card's real history and poison its windows for that long.
    """
    mismatch = _key_mismatch(key, tx.card_id)
    if mismatch is not None:
        return mismatch
    if epoch_ms(tx.timestamp) > record_timestamp_ms + MAX_CLOCK_SKEW_MS:
        return Rejected(
            "implausible_timestamp",
            f"timestamp {tx.timestamp.isoformat()} is more than a day after the record's own timestamp",
        )
    return None


def check_label_record(label: Label, key: bytes | None) -> Rejected | None:
    """Labels travel keyed by card id, like transactions, so that a label reaches the worker
    holding the card's state; a label under another key is dead-lettered as ``key_mismatch``."""
    return _key_mismatch(key, label.card_id)


def label_of_record(value: bytes | None, key: bytes | None) -> Label | Rejected:
    """A label record read back from the labels topic: parsed, and keyed by its card."""
    label = parse_label(value)
    if isinstance(label, Rejected):
        return label
    return check_label_record(label, key) or label


def _key_mismatch(key: bytes | None, card_id: str) -> Rejected | None:
    if key == card_id.encode():
        return None
    shown = key.decode(errors="replace")[:64] if key is not None else None
    return Rejected("key_mismatch", f"record key {shown!r} is not card_id {card_id!r}")
