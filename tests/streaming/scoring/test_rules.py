"""Rules and lists: the grammar, vectorised evaluation against rule-engine's own, precedence,
expiry and the rules topic's records."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
import rule_engine

from model.features import FEATURE_NAMES
from model.schemas import Transaction
from streaming.scoring.rules import (
    MAX_RULES,
    Inputs,
    ListEntry,
    Rule,
    RuleBook,
    RuleError,
    compile_expression,
    entry_record,
    rule_key,
    rule_record,
)

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def txs(n: int, seed: int = 0) -> list[Transaction]:
    rng = random.Random(seed)
    return [
        Transaction(
            transaction_id=f"t{i}",
            timestamp=NOW,
            card_id=f"c{rng.randint(0, 5)}",
            merchant_id=f"m{rng.randint(0, 5)}",
            amount=rng.choice([0.5, 1.0, 15.5, 250.0, 2500.0, 9000.0]),
            currency=rng.choice(["USD", "EUR"]),
            channel=rng.choice(["pos", "ecommerce", "atm"]),
            merchant_category=rng.choice(["grocery", "electronics", "travel"]),
            country=rng.choice(["US", "DE", None]),
        )
        for i in range(n)
    ]


def inputs_for(batch: list[Transaction], seed: int = 0) -> Inputs:
    rng = np.random.default_rng(seed)
    features = rng.integers(0, 6, size=(len(batch), len(FEATURE_NAMES))).astype(np.float64)
    queries = {"amount": np.array([tx.amount for tx in batch])}
    return Inputs.of_transactions(batch, queries, features)


@pytest.mark.parametrize(
    "expression",
    [
        'amount > 2000 and channel == "ecommerce" and card_tx_count_1h >= 3',
        "not (amount < 10) or card_tx_count_1d * 2 + 1 > 7",
        'channel in ["atm", "pos"] and amount >= 250',
        'country == null or country != "US"',
        'merchant_category =~ "elec.*" and amount % 2 == 0',
        'currency =~~ "U" and -amount < -100',
        "amount / (card_tx_count_7d + 1) > 100 ? true : card_tx_count_30d == 0",
    ],
)
def test_vectorised_rules_agree_with_rule_engine_row_by_row(expression: str) -> None:
    batch = txs(300)
    inputs = inputs_for(batch)
    got = compile_expression(expression)(inputs)
    reference = rule_engine.Rule(expression)
    for i, tx in enumerate(batch):
        row = {name: Decimal(str(inputs.features[i, j])) for j, name in enumerate(FEATURE_NAMES)}
        row.update(tx.model_dump(include={"card_id", "merchant_id", "channel", "merchant_category", "currency"}))
        row["country"] = tx.country
        row["amount"] = Decimal(str(tx.amount))
        assert bool(got[i]) == reference.matches(row), (expression, i, row)
    assert 0 < got.sum() < len(batch), "the case must split the batch"


@pytest.mark.parametrize(
    ("expression", "named"),
    [
        ("amuont > 3", "unknown field 'amuont'"),
        ('amount > "3"', "field amount"),
        ("channel > 2 and amount > 1", "field channel"),
        ("not card_id", "field card_id"),
        ("channel in [1, 2]", "field channel"),
        ("amount", "not a condition"),
        ("amount > ", "syntax error"),
        ('__import__("os")', "unknown field '__import__'"),
        ("card_id.length > 3", "not supported"),
    ],
)
def test_bad_rules_are_refused_naming_what_is_wrong(expression: str, named: str) -> None:
    with pytest.raises(RuleError, match=named.replace("(", r"\(")) as refused:
        compile_expression(expression)
    assert refused.value.status_code == 422


def book_with(*records: tuple[bytes, bytes | None]) -> RuleBook:
    book = RuleBook()
    for key, value in records:
        book.apply(key, value)
    return book


def decide(book: RuleBook, batch: list[Transaction]) -> tuple[list[str | None], list[str], dict]:
    verdicts = book.snapshot().apply(inputs_for(batch), NOW_MS)
    return verdicts.actions, verdicts.decided_by, verdicts.hits


def one(**fields: object) -> list[Transaction]:
    base = {
        "transaction_id": "t", "timestamp": NOW, "card_id": "c1", "merchant_id": "m1", "amount": 5000.0,
        "currency": "USD", "channel": "ecommerce", "country": "US",
    }  # fmt: skip
    return [Transaction(**{**base, **fields})]


def test_precedence_allow_then_block_then_review_then_model() -> None:
    review = Rule(id="big", expression="amount > 1000", action="review")
    block = Rule(id="ecom-big", expression='amount > 4000 and channel == "ecommerce"', action="block")
    allow_card = ListEntry(list="allow", kind="card", value="c1")
    book = book_with(rule_record(review), rule_record(block))

    assert decide(book, one())[:2] == (["block"], ["rule:ecom-big"])
    assert decide(book, one(amount=2000.0))[:2] == (["review"], ["rule:big"])
    assert decide(book, one(amount=20.0))[:2] == ([None], ["model"])
    book.apply(*entry_record(allow_card))
    assert decide(book, one())[:2] == (["allow"], ["allow_list:card"])
    # A block list entry comes after the allow list, before block rules.
    book.apply(*entry_record(ListEntry(list="block", kind="merchant", value="m2")))
    assert decide(book, one(card_id="c2", merchant_id="m2", amount=1.0))[:2] == (["block"], ["block_list:merchant"])


def test_log_only_rules_are_counted_and_decide_nothing() -> None:
    shadow = Rule(id="watch", expression="amount > 1000", action="block", mode="log_only")
    disabled = Rule(id="off", expression="amount > 1000", action="block", enabled=False)
    book = book_with(rule_record(shadow), rule_record(disabled))
    actions, decided_by, hits = decide(book, one())
    assert (actions, decided_by) == ([None], ["model"])
    assert hits == {("watch", "block", "log_only"): 1}


def test_list_entries_expire() -> None:
    entry = ListEntry(list="block", kind="country", value="US", expires_at=NOW + timedelta(seconds=1))
    book = book_with(entry_record(entry))
    assert decide(book, one())[0] == ["block"]
    expired = ListEntry(list="block", kind="country", value="US", expires_at=NOW - timedelta(seconds=1))
    book.apply(*entry_record(expired))
    assert decide(book, one())[0] == [None]


def test_tombstones_delete_and_bad_records_are_kept_out() -> None:
    rule = Rule(id="big", expression="amount > 1000", action="review")
    book = book_with(rule_record(rule))
    assert [r.id for r in book.rules()] == ["big"]
    book.apply(rule_key("big").encode(), None)
    assert book.rules() == [] and book.snapshot().empty
    book.apply(b"rule:bad", b'{"id": "bad", "expression": "nope > 1", "action": "block"}')
    book.apply(b"rule:other", b'{"id": "mismatch", "expression": "amount > 1", "action": "block"}')
    assert set(book.invalid) == {"rule:bad", "rule:other"}
    assert "unknown field 'nope'" in book.invalid["rule:bad"]
    assert book.snapshot().empty and book.snapshot().version == "none"
    book.apply(b"rule:bad", None)  # deleting it clears the error
    assert "rule:bad" not in book.invalid


def test_a_rule_that_does_not_compile_is_never_written() -> None:
    with pytest.raises(RuleError, match="unknown field 'nope'"):
        rule_record(Rule(id="x", expression="nope > 1", action="block"))


def test_rule_ids_are_bounded() -> None:
    book = book_with(
        *(rule_record(Rule(id=f"r{i}", expression="amount > 1", action="review")) for i in range(MAX_RULES))
    )
    book.apply(*rule_record(Rule(id="one-more", expression="amount > 1", action="review")))
    assert len(book.rules()) == MAX_RULES and "rule:one-more" in book.invalid


def test_the_version_is_a_fingerprint_of_what_is_in_force() -> None:
    big = rule_record(Rule(id="big", expression="amount > 1000", action="review"))
    entry = entry_record(ListEntry(list="block", kind="card", value="c9"))
    one_way, other_way = book_with(big, entry), book_with(entry, big, big)
    assert one_way.snapshot().version == other_way.snapshot().version != "none"
    other_way.apply(big[0], None)
    assert other_way.snapshot().version != one_way.snapshot().version
