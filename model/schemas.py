"""Wire contract: the transaction and decision messages, version 1.

Both travel as JSON objects. Transactions are keyed by ``card_id`` on the transactions topic;
decisions are keyed by ``card_id`` on the decisions topic. Unknown transaction fields are
ignored so that producers can add fields without breaking the scorer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION: Literal[1] = 1

#: Channels a transaction can arrive through; anything else is a validation error.
CHANNELS: tuple[str, ...] = ("pos", "ecommerce", "atm")

#: Merchant categories the model knows by name; any other value is scored as "other".
MERCHANT_CATEGORIES: tuple[str, ...] = (
    "grocery",
    "gas",
    "restaurant",
    "retail",
    "electronics",
    "travel",
    "entertainment",
    "health",
    "online_services",
    "jewelry",
    "cash",
)

#: Largest amount accepted (major units); larger values are input errors, and would overflow the
#: exact integer-cent sums the history features use.
MAX_AMOUNT = 1e9
#: Ids are printable ASCII without spaces: they travel in URLs, headers and Kafka keys.
ID_PATTERN = r"^[!-~]+$"

#: Largest encoded message the worker accepts; bigger ones are dead-lettered as ``oversized``.
MAX_MESSAGE_BYTES = 16 * 1024

Outcome = Literal["allow", "review", "block"]


def _exactly_version_1(v: object) -> object:
    # JSON 1 only: not true, 1.0 or "1", and never a huge integer (which would not fit the
    # 64-bit integers the JSON encoder writes: a server error instead of a 422).
    if type(v) is not int or v != SCHEMA_VERSION:
        raise ValueError(f"schema_version must be the integer {SCHEMA_VERSION}")
    return v


class Transaction(BaseModel):
    """A card or payment transaction to score."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Contract version; optional, 1.")

    transaction_id: str = Field(
        min_length=1, max_length=128, pattern=ID_PATTERN, description="Unique id; decisions are idempotent by it."
    )
    timestamp: AwareDatetime = Field(description="When the transaction happened, ISO-8601 with a zone offset.")
    card_id: str = Field(
        min_length=1, max_length=128, pattern=ID_PATTERN, description="Card (or account) the transaction is charged to."
    )
    merchant_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN, description="Merchant or terminal id.")
    amount: float = Field(
        gt=0,
        le=MAX_AMOUNT,
        strict=True,
        description="Amount in the currency's major unit, a JSON number; > 0 and at most 1e9.",
    )
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO-4217 code: three uppercase letters.")
    merchant_category: str | None = Field(default=None, max_length=64)
    channel: Literal["pos", "ecommerce", "atm"] | None = None
    country: str | None = Field(
        default=None, pattern=r"^[A-Z]{2}$", description="ISO-3166 alpha-2 code: two uppercase letters."
    )

    _version = field_validator("schema_version", mode="before")(_exactly_version_1)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _iso_string(cls, v: object) -> object:
        # Epoch numbers would be read as UTC silently; the contract is an ISO-8601 string.
        if not isinstance(v, str | datetime):
            raise ValueError("timestamp must be an ISO-8601 string with a zone offset")
        return v

    @field_validator("channel", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("amount")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("amount must be finite")
        return v


class Decision(BaseModel):
    """The scorer's verdict on one transaction."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    transaction_id: str
    card_id: str
    score: float = Field(
        ge=0.0, le=1.0, description="Risk score: higher is riskier; ranks well, not a calibrated probability."
    )
    decision: Outcome
    reasons: list[str] = Field(description="Stable codes of the features that raised the score most.")
    model_version: str
    event_timestamp: datetime = Field(description="The transaction's own timestamp.")
    scored_at: datetime = Field(description="When the scorer produced this decision (UTC).")
    card_state: Literal["used", "empty", "unavailable"] = Field(
        default="used",
        description=(
            "'used': the card's history was read; 'empty': the card has no history yet; "
            "'unavailable': the history could not be reached and the score is stateless."
        ),
    )
    decided_by: str = Field(
        default="model",
        description="What decided: 'model' (the thresholds), 'rule:<id>', 'allow_list:<kind>' or "
        "'block_list:<kind>' (rules and lists come before the model; the score is the model's either way).",
    )
    features: dict[str, float] | None = Field(
        default=None,
        description="Feature values the score was computed from; only when the worker runs with "
        "FRAUD_INCLUDE_FEATURES=true (audit and parity checks).",
    )


class DecisionOnly(BaseModel):
    """``/predict``'s answer with ``FRAUD_PREDICT_DECISION_ONLY``: the verdict without the score or
    reasons a caller could use to learn the thresholds."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    transaction_id: str
    card_id: str
    decision: Outcome
    model_version: str
    scored_at: datetime

    @classmethod
    def of(cls, decision: Decision) -> DecisionOnly:
        return cls(**decision.model_dump(include=set(cls.model_fields)))


def decision_json(fields: Mapping[str, Any]) -> bytes:
    """A decision's wire bytes from its fields (:class:`Decision`'s, in its field order, ``None``
    left out), without building the model: what ``Decision(**fields).model_dump(mode="json",
    exclude_none=True)`` encodes, byte for byte (``tests/model/test_scoring.py`` checks it), at
    a fraction of the cost per decision. Only for fields the scorer itself made
    (:meth:`model.scoring.Scorer.decision_fields`): nothing is validated here."""
    return orjson.dumps(fields, option=orjson.OPT_UTC_Z)


LabelSource = Literal["chargeback", "investigation", "customer_confirmed", "manual"]


class Label(BaseModel):
    """What was learned about a transaction after the fact, on the labels topic (keyed by card_id).

    ``labelled_at`` is when the label became known; features count a label only for transactions
    scored at or after that moment.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Contract version; optional, 1.")
    transaction_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN)
    card_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN)
    merchant_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN)
    is_fraud: bool = Field(strict=True, description="true: confirmed fraud; false: confirmed genuine.")
    timestamp: AwareDatetime = Field(description="The labelled transaction's own timestamp.")
    labelled_at: AwareDatetime = Field(description="When the label became known; not before `timestamp`.")
    source: LabelSource = Field(description="Where the label came from.")
    labelled_by: str | None = Field(
        default=None, max_length=200, description="Who labelled it (the analyst, for `manual` labels); optional."
    )

    _version = field_validator("schema_version", mode="before")(_exactly_version_1)

    @field_validator("timestamp", "labelled_at", mode="before")
    @classmethod
    def _iso_string(cls, v: object) -> object:
        if not isinstance(v, str | datetime):
            raise ValueError("must be an ISO-8601 string with a zone offset")
        return v

    @model_validator(mode="after")
    def _labelled_after_the_fact(self) -> Label:
        if self.labelled_at < self.timestamp:
            raise ValueError("labelled_at is before the transaction's timestamp")
        return self


#: Fields of a transaction on the wire, in contract order; anything else (labels) stays off it.
#: ``schema_version`` is optional and left out: version 1 is what an absent one means.
WIRE_FIELDS: tuple[str, ...] = tuple(f for f in Transaction.model_fields if f != "schema_version")


def wire_value(row: Mapping[str, Any]) -> bytes:
    """The JSON a transaction travels as: wire fields only, labels stripped, None and NaN left out."""
    return orjson.dumps({k: row[k] for k in WIRE_FIELDS if k in row and row[k] is not None and row[k] == row[k]})


def label_value(label: Label) -> bytes:
    """The JSON a label event travels as: the :class:`Label` contract's fields (``labelled_by``
    only when known, so a label without it is byte for byte what it was before the field)."""
    return orjson.dumps(label.model_dump(mode="json", exclude_none=True))
