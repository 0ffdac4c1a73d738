"""Properties of the wire contract (hypothesis): what it accepts survives the wire unchanged,
what breaks a rule is refused as input (never an exception of another kind), whatever the bytes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.schemas import CHANNELS, ID_PATTERN, Label, Transaction, wire_value
from streaming.scoring.validation import DLQ_REASONS, Rejected, parse_label, parse_transaction

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=128)
zones = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
times = st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=zones)
amounts = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, exclude_min=True)
upper = st.characters(min_codepoint=ord("A"), max_codepoint=ord("Z"))


@st.composite
def transactions(draw: st.DrawFn) -> dict[str, Any]:
    tx: dict[str, Any] = {
        "transaction_id": draw(ids),
        "timestamp": draw(times).isoformat(),
        "card_id": draw(ids),
        "merchant_id": draw(ids),
        "amount": draw(amounts),
        "currency": draw(st.text(upper, min_size=3, max_size=3)),
    }
    if draw(st.booleans()):
        tx["country"] = draw(st.text(upper, min_size=2, max_size=2))
    if draw(st.booleans()):
        tx["channel"] = draw(st.sampled_from(CHANNELS))
    if draw(st.booleans()):
        tx["schema_version"] = 1
    return tx


def parsed(raw: bytes) -> Transaction:
    result = parse_transaction(raw)
    assert isinstance(result, Transaction), result
    return result


@SETTINGS
@given(transactions())
def test_what_the_contract_accepts_survives_the_wire(tx: dict[str, Any]) -> None:
    first = parsed(orjson.dumps(tx))
    again = parsed(wire_value(first.model_dump(mode="json")))
    assert again == first
    assert first.amount == tx["amount"] and first.currency == tx["currency"]
    assert re.fullmatch(ID_PATTERN, first.card_id)


@SETTINGS
@given(transactions(), st.integers().filter(lambda v: v != 1) | st.sampled_from([2**70, -(2**70), 10**100]))
def test_any_schema_version_but_1_is_refused(tx: dict[str, Any], version: int) -> None:
    raw = orjson.dumps(tx)[:-1] + b',"schema_version":' + str(version).encode() + b"}"
    result = parse_transaction(raw)
    assert isinstance(result, Rejected) and result.reason == "invalid_field"
    assert result.detail.startswith("schema_version:")


@SETTINGS
@given(transactions(), st.sampled_from([True, 1.0, "1", None, [1]]))
def test_schema_version_is_the_json_integer_1_and_nothing_like_it(tx: dict[str, Any], version: object) -> None:
    result = parse_transaction(orjson.dumps({**tx, "schema_version": version}))
    assert isinstance(result, Rejected) and result.detail.startswith("schema_version:")


@SETTINGS
@given(transactions(), st.text(max_size=6))
def test_currency_is_exactly_three_uppercase_letters(tx: dict[str, Any], currency: str) -> None:
    result = parse_transaction(orjson.dumps({**tx, "currency": currency}))
    if re.fullmatch(r"[A-Z]{3}", currency.strip()):
        assert isinstance(result, Transaction) and result.currency == currency.strip()
    else:
        assert isinstance(result, Rejected) and result.detail.startswith("currency:")


@SETTINGS
@given(transactions(), st.text(max_size=4))
def test_country_is_exactly_two_uppercase_letters(tx: dict[str, Any], country: str) -> None:
    result = parse_transaction(orjson.dumps({**tx, "country": country}))
    if re.fullmatch(r"[A-Z]{2}", country.strip()):
        assert isinstance(result, Transaction) and result.country == country.strip()
    else:
        assert isinstance(result, Rejected) and result.detail.startswith("country:")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(st.binary(max_size=300) | json_values.map(orjson.dumps))
def test_any_bytes_give_a_transaction_or_a_known_reason(raw: bytes) -> None:
    for result in (parse_transaction(raw), parse_label(raw)):
        assert isinstance(result, Transaction | Label) or result.reason in DLQ_REASONS


@SETTINGS
@given(transactions(), st.dictionaries(st.sampled_from(list(Transaction.model_fields)), json_values, min_size=1))
def test_broken_fields_are_refused_naming_a_field_never_raising(tx: dict[str, Any], broken: dict[str, Any]) -> None:
    result = parse_transaction(orjson.dumps({**tx, **broken}))
    if isinstance(result, Rejected):
        assert result.reason == "invalid_field"
        assert result.detail.split(":", 1)[0] in Transaction.model_fields


@SETTINGS
@given(times, st.timedeltas(timedelta(0), timedelta(days=400)), st.integers().filter(lambda v: v != 1))
def test_labels_take_schema_version_1_only(at: datetime, delay: timedelta, version: int) -> None:
    label = {
        "transaction_id": "t-1",
        "card_id": "c-1",
        "merchant_id": "m-1",
        "is_fraud": True,
        "timestamp": at.isoformat(),
        "labelled_at": (at + delay).astimezone(UTC).isoformat(),
        "source": "chargeback",
    }
    assert isinstance(parse_label(orjson.dumps(label)), Label)
    assert isinstance(parse_label(orjson.dumps({**label, "schema_version": 1})), Label)
    with pytest.raises(pydantic.ValidationError, match="schema_version"):
        Label.model_validate_json(orjson.dumps(label)[:-1] + f',"schema_version":{version}}}'.encode())
