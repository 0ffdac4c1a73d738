"""Raw message bytes -> Transaction or Label, or a bounded dead-letter reason with a useful detail."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest

from model.schemas import MAX_MESSAGE_BYTES, Label, Transaction, label_value
from streaming.scoring.validation import (
    DLQ_REASONS,
    Rejected,
    check_label_record,
    check_record,
    label_of_record,
    parse_label,
    parse_transaction,
)

VALID: dict[str, Any] = {
    "transaction_id": "tx-1",
    "timestamp": "2026-01-01T10:00:00+05:30",
    "card_id": "card-1",
    "merchant_id": "m-1",
    "amount": 12.5,
    "currency": "EUR",
    "merchant_category": "grocery",
    "channel": "pos",
    "country": "FR",
}


def encode(**changes: Any) -> bytes:
    """VALID with fields changed; a value of ``...`` removes the field."""
    data = {**VALID, **changes}
    return orjson.dumps({k: v for k, v in data.items() if v is not ...})


def rejected(raw: bytes | None) -> Rejected:
    result = parse_transaction(raw)
    assert isinstance(result, Rejected), f"accepted: {result!r}"
    assert result.reason in DLQ_REASONS
    return result


def test_valid_message_is_parsed() -> None:
    tx = parse_transaction(encode())
    assert isinstance(tx, Transaction)
    assert tx.transaction_id == "tx-1" and tx.amount == 12.5
    assert tx.currency == "EUR" and tx.country == "FR"
    assert tx.timestamp.utcoffset() == timedelta(hours=5, minutes=30)


def test_optional_fields_may_be_absent() -> None:
    tx = parse_transaction(encode(merchant_category=..., channel=..., country=...))
    assert isinstance(tx, Transaction)
    assert tx.channel is None and tx.merchant_category is None and tx.country is None


def test_unknown_fields_are_ignored() -> None:
    tx = parse_transaction(encode(is_fraud=1, fraud_type="velocity_burst", nested={"a": [1, 2]}))
    assert isinstance(tx, Transaction)
    assert not hasattr(tx, "is_fraud")
    assert tx == parse_transaction(encode())


def test_oversized_is_checked_before_parsing() -> None:
    base = encode(padding="")
    at_limit = encode(padding="x" * (MAX_MESSAGE_BYTES - len(base)))
    assert len(at_limit) == MAX_MESSAGE_BYTES
    assert isinstance(parse_transaction(at_limit), Transaction)
    over = encode(padding="x" * (MAX_MESSAGE_BYTES - len(base) + 1))
    r = rejected(over)
    assert r.reason == "oversized"
    assert str(MAX_MESSAGE_BYTES + 1) in r.detail
    assert rejected(b"x" * (MAX_MESSAGE_BYTES + 1)).reason == "oversized"  # not even JSON


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"not json",
        b'{"transaction_id": "tx-1",',
        b"\xff\xfe",
        b'{"amount": NaN}',  # NaN is not valid JSON
        b'{"amount": Infinity}',
        encode().replace(b"12.5", b"1e999"),  # overflows to infinity: refused by the parser
    ],
)
def test_not_json(raw: bytes | None) -> None:
    assert rejected(raw).reason == "not_json"


@pytest.mark.parametrize(("raw", "kind"), [(b"[1, 2]", "list"), (b'"tx"', "str"), (b"42", "int"), (b"null", "None")])
def test_not_an_object(raw: bytes, kind: str) -> None:
    r = rejected(raw)
    assert r.reason == "not_an_object"
    assert kind in r.detail


@pytest.mark.parametrize("field", ["transaction_id", "timestamp", "card_id", "merchant_id", "amount", "currency"])
def test_missing_required_field(field: str) -> None:
    r = rejected(encode(**{field: ...}))
    assert r.reason == "missing_field"
    assert r.detail.startswith(f"{field}:")


def test_several_missing_fields_are_all_named() -> None:
    r = rejected(encode(card_id=..., amount=...))
    assert r.reason == "missing_field"
    assert "card_id" in r.detail and "amount" in r.detail
    assert rejected(b"{}").reason == "missing_field"


def test_missing_and_invalid_together_is_invalid_field() -> None:
    r = rejected(encode(card_id=..., amount=-1))
    assert r.reason == "invalid_field"
    assert "card_id" in r.detail and "amount" in r.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", -1),
        ("amount", -0.01),
        ("amount", "abc"),
        ("amount", None),
        ("amount", "inf"),  # a string that parses to infinity
        ("amount", "NaN"),
        ("amount", [1]),
        ("timestamp", "2026-01-01T10:00:00"),  # no zone
        ("timestamp", "yesterday"),
        ("timestamp", "2026-02-30T10:00:00Z"),
        ("channel", "phone"),
        ("channel", "kiosk"),
        ("transaction_id", ""),
        ("transaction_id", "   "),
        ("transaction_id", " tx-1"),  # surrounding whitespace is refused, not trimmed
        ("card_id", "card-1 "),
        ("merchant_id", "\tm-1"),
        ("merchant_id", "m\u00a01"),  # a no-break space is not an inner space
        ("merchant_id", "m\x001"),
        ("transaction_id", "x" * 129),
        ("card_id", 5),
        ("merchant_id", None),
        ("currency", "EU"),
        ("currency", "eur"),
        ("currency", "E1R"),
        ("country", "FRA"),
        ("country", "fr"),
        ("schema_version", 2),
        ("schema_version", True),
        ("merchant_category", "x" * 65),
    ],
)
def test_invalid_field_names_the_field(field: str, value: Any) -> None:
    r = rejected(encode(**{field: value}))
    assert r.reason == "invalid_field"
    assert r.detail.startswith(f"{field}:"), r.detail
    assert len(r.detail) <= 500


def test_zero_amount_and_ids_with_inner_spaces_are_valid() -> None:
    # A 0.00 card verification is real traffic; merchant ids are often names.
    tx = parse_transaction(encode(amount=0, merchant_id="Joe's Pizza & Grill", card_id="card 1", transaction_id="tx 1"))
    assert isinstance(tx, Transaction)
    assert tx.amount == 0.0 and tx.merchant_id == "Joe's Pizza & Grill"
    assert tx.card_id == "card 1" and tx.transaction_id == "tx 1"
    unicode = parse_transaction(encode(merchant_id="Café Zoë", amount=0.0))
    assert isinstance(unicode, Transaction) and unicode.merchant_id == "Café Zoë"
    label = parse_label(encode_label(merchant_id="Joe's Pizza & Grill", card_id="card 1"))
    assert isinstance(label, Label) and label.merchant_id == "Joe's Pizza & Grill"
    # Other strings are still trimmed as before.
    trimmed = parse_transaction(encode(currency=" EUR ", country=" FR"))
    assert isinstance(trimmed, Transaction) and trimmed.currency == "EUR" and trimmed.country == "FR"


def test_detail_is_bounded_for_huge_inputs() -> None:
    r = rejected(b"[" + b"1," * 5000 + b"1")
    assert r.reason == "not_json" and len(r.detail) <= 200
    many = {f"f{i}": 1 for i in range(10)}
    r = rejected(orjson.dumps({**many, "amount": "x" * 2000}))
    assert len(r.detail) <= 500


def test_wire_types_are_strict_where_the_contract_is() -> None:
    base = {
        "transaction_id": "t",
        "timestamp": "2026-01-01T00:00:00Z",
        "card_id": "c",
        "merchant_id": "m",
        "currency": "USD",
    }
    for amount in (True, "12.5"):
        rejected = parse_transaction(orjson.dumps({**base, "amount": amount}))
        assert isinstance(rejected, Rejected) and rejected.reason == "invalid_field"
        assert "amount" in rejected.detail
    epoch = parse_transaction(orjson.dumps({**base, "amount": 1, "timestamp": 1767225600}))
    assert isinstance(epoch, Rejected) and "timestamp" in epoch.detail
    # Channel case is not meaningful: the CSV path lower-cases it too.
    tx = parse_transaction(orjson.dumps({**base, "amount": 1, "channel": "POS"}))
    assert not isinstance(tx, Rejected) and tx.channel == "pos"


# --- labels (the labels topic) -------------------------------------------------------------

LABEL: dict[str, Any] = {
    "transaction_id": "tx-1",
    "card_id": "card-1",
    "merchant_id": "m-1",
    "is_fraud": True,
    "timestamp": "2026-01-01T10:00:00+05:30",
    "labelled_at": "2026-01-08T09:00:00Z",
    "source": "chargeback",
    "schema_version": 1,
}


def encode_label(**changes: Any) -> bytes:
    """LABEL with fields changed; a value of ``...`` removes the field."""
    data = {**LABEL, **changes}
    return orjson.dumps({k: v for k, v in data.items() if v is not ...})


def label_rejected(raw: bytes | None) -> Rejected:
    result = parse_label(raw)
    assert isinstance(result, Rejected), f"accepted: {result!r}"
    assert result.reason in DLQ_REASONS
    return result


def test_valid_label_is_parsed() -> None:
    label = parse_label(encode_label())
    assert isinstance(label, Label)
    assert label.is_fraud is True and label.source == "chargeback"
    assert label.timestamp.utcoffset() == timedelta(hours=5, minutes=30)
    assert label.labelled_at.utcoffset() == timedelta(0)
    assert (label.labelled_at - label.timestamp) == timedelta(days=7, hours=4, minutes=30)
    # A genuine verdict, unknown fields and an absent schema_version (defaults to 1) are fine.
    genuine = parse_label(encode_label(is_fraud=False, source="investigation", schema_version=..., note="ok"))
    assert isinstance(genuine, Label) and genuine.is_fraud is False and genuine.schema_version == 1


def test_label_at_the_transaction_time_is_accepted() -> None:
    same = parse_label(encode_label(labelled_at="2026-01-01T04:30:00Z"))  # the same instant
    assert isinstance(same, Label)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "not_json"),
        (b"", "not_json"),
        (b"{'transaction_id': 'tx-1'}", "not_json"),
        (b"[1, 2]", "not_an_object"),
        (b"null", "not_an_object"),
    ],
)
def test_label_that_is_not_a_json_object(raw: bytes | None, reason: str) -> None:
    assert label_rejected(raw).reason == reason


def test_oversized_label() -> None:
    base = encode_label(padding="")
    assert isinstance(parse_label(encode_label(padding="x" * (MAX_MESSAGE_BYTES - len(base)))), Label)
    r = label_rejected(encode_label(padding="x" * (MAX_MESSAGE_BYTES - len(base) + 1)))
    assert r.reason == "oversized" and str(MAX_MESSAGE_BYTES + 1) in r.detail


@pytest.mark.parametrize(
    "field", ["transaction_id", "card_id", "merchant_id", "is_fraud", "timestamp", "labelled_at", "source"]
)
def test_label_missing_field(field: str) -> None:
    r = label_rejected(encode_label(**{field: ...}))
    assert r.reason == "missing_field"
    assert r.detail.startswith(f"{field}:"), r.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("is_fraud", 1),  # strict: a JSON boolean, not 0/1
        ("is_fraud", "true"),
        ("is_fraud", None),
        ("source", "rumour"),
        ("source", ""),
        ("timestamp", "2026-01-01T10:00:00"),  # no zone
        ("labelled_at", "2026-01-08T09:00:00"),
        ("labelled_at", 1767862800),  # epoch numbers are not the contract
        ("labelled_at", "next week"),
        ("transaction_id", " has space"),
        ("card_id", "card-1\n"),
        ("card_id", ""),
        ("merchant_id", "x" * 129),
        ("labelled_by", "x" * 201),
    ],
)
def test_label_invalid_field_names_the_field(field: str, value: Any) -> None:
    r = label_rejected(encode_label(**{field: value}))
    assert r.reason == "invalid_field"
    assert r.detail.startswith(f"{field}:"), r.detail


def test_who_labelled_travels_only_when_known() -> None:
    label = parse_label(encode_label(source="manual", labelled_by="analyst-7"))
    assert isinstance(label, Label) and label.labelled_by == "analyst-7"
    assert orjson.loads(label_value(label))["labelled_by"] == "analyst-7"
    anonymous = parse_label(encode_label())
    assert isinstance(anonymous, Label) and anonymous.labelled_by is None
    # Without it the wire form is what it was before the field existed: no null for old consumers.
    assert orjson.loads(label_value(anonymous)) == {**LABEL, "is_fraud": True}
    assert b"labelled_by" not in label_value(anonymous)


def test_label_known_before_its_transaction_happened_is_invalid() -> None:
    # One second before the transaction's instant (10:00 at +05:30 is 04:30 UTC).
    r = label_rejected(encode_label(labelled_at="2026-01-01T04:29:59Z"))
    assert r.reason == "invalid_field"
    assert "labelled_at is before" in r.detail


def test_label_record_key_must_be_the_card_id() -> None:
    label = parse_label(encode_label())
    assert isinstance(label, Label)
    assert check_label_record(label, b"card-1") is None
    for key in (b"card-2", b"tx-1", None, b""):
        r = check_label_record(label, key)
        assert r is not None and r.reason == "key_mismatch", key
        assert "card-1" in r.detail


def test_transaction_record_checks_share_the_key_rule() -> None:
    tx = parse_transaction(encode())
    assert isinstance(tx, Transaction)
    record_ms = 1767241800000  # 2026-01-01T04:30:00Z, the transaction's own instant
    assert check_record(tx, b"card-1", record_ms) is None
    r = check_record(tx, b"card-2", record_ms)
    assert r is not None and r.reason == "key_mismatch" and "card-1" in r.detail
    late = check_record(tx, b"card-1", record_ms - 24 * 3600 * 1000 - 1)
    assert late is not None and late.reason == "implausible_timestamp"


def test_a_label_read_back_is_parsed_and_checked_against_its_key() -> None:
    raw = encode_label()
    card = LABEL["card_id"].encode()
    assert isinstance(label_of_record(raw, card), Label)
    wrong_key = label_of_record(raw, b"another-card")
    assert isinstance(wrong_key, Rejected) and wrong_key.reason == "key_mismatch"
    broken = label_of_record(b"{not json", card)
    assert isinstance(broken, Rejected) and broken.reason == "not_json"
