"""Turning raw Kafka bytes into a valid transaction, or a dead-letter reason."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from model.schemas import MAX_MESSAGE_BYTES, Transaction

#: Bounded set of dead-letter reasons (the metric label); details travel in the message headers.
DLQ_REASONS = ("oversized", "not_json", "not_an_object", "missing_field", "invalid_field")


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str


def parse_transaction(raw: bytes | None) -> Transaction | Rejected:
    """Validate one message value; never raises for bad input."""
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
    try:
        return Transaction.model_validate(data)
    except ValidationError as exc:
        return rejection_from(exc)


def rejection_from(exc: ValidationError) -> Rejected:
    errors = exc.errors(include_url=False, include_input=False)
    reason = "missing_field" if all(e["type"] == "missing" for e in errors) else "invalid_field"
    detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in errors)
    return Rejected(reason, detail[:500])
