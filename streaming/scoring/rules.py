"""Rules and lists ahead of the model: what a fraud team decides without retraining.

Precedence (the first that applies decides; the model's score is always computed and kept):

1. allow lists (card, merchant, country), then active ``allow`` rules;
2. block lists, then active ``block`` rules;
3. active ``review`` rules;
4. the model's thresholds.

A rule is an expression over the transaction's fields and its features, in rule-engine's
language (``amount > 2000 and channel == "ecommerce" and card_tx_count_1h >= 3``): parsed by the
library, never ``eval``'d. Names and types are checked when a rule is written, and an unknown
field or a comparison of a number with a string is refused with an error naming the field. A
``log_only`` rule is evaluated and its hits counted, but the decision stays the model's.

Evaluation is vectorised: each rule compiles once to a tree of numpy operations over the batch's
columns, so a rule costs a few array operations per batch, not a Python call per transaction.

Rules and list entries live on a compacted topic (``fraud-rules``), one record per rule or entry
(a tombstone deletes it); every worker and API process follows it into a :class:`RuleBook`, so
they all apply the same set within seconds of a change, without a restart.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
import rule_engine
import rule_engine.ast as ast
import rule_engine.errors
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from model.errors import UserInputError
from model.features import COLUMN, FEATURE_NAMES
from model.schemas import Transaction

log = logging.getLogger(__name__)

Action = Literal["allow", "review", "block"]
Mode = Literal["active", "log_only"]
ListName = Literal["allow", "block"]
ListKind = Literal["card", "merchant", "country"]

#: Rule ids are metric labels: this many rules at most, so the label stays bounded.
MAX_RULES = 200
RULE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: Transaction fields a rule may name (strings), beside every feature (numbers).
STRING_FIELDS = ("card_id", "merchant_id", "channel", "merchant_category", "currency", "country")
NUMBER_FIELDS = tuple(dict.fromkeys(("amount", *FEATURE_NAMES)))
#: The order in which actions decide (see the module docstring).
PRECEDENCE: tuple[Action, ...] = ("allow", "block", "review")
_LIST_FIELD: dict[str, str] = {"card": "card_id", "merchant": "merchant_id", "country": "country"}


class RuleError(UserInputError):
    """A rule or list entry that cannot be accepted (bad syntax, unknown field, wrong type)."""

    status_code = 422


class Rule(BaseModel):
    """A rule as stored on the rules topic and shown by ``fraud rules list``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=RULE_ID_PATTERN, description="Stable id; appears in reasons and metrics.")
    expression: str = Field(min_length=1, max_length=2000)
    action: Action
    description: str = Field(default="", max_length=500)
    enabled: bool = True
    mode: Mode = "active"
    updated_at: AwareDatetime | None = None
    updated_by: str | None = Field(default=None, max_length=200)


class ListEntry(BaseModel):
    """An allow- or block-list entry: a card id, merchant id or country, until ``expires_at``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    list: ListName
    kind: ListKind
    value: str = Field(min_length=1, max_length=128, pattern=r"^[!-~](.*[!-~])?$")
    expires_at: AwareDatetime | None = None
    note: str = Field(default="", max_length=500)
    updated_at: AwareDatetime | None = None
    updated_by: str | None = Field(default=None, max_length=200)

    @property
    def key(self) -> str:
        return list_key(self.list, self.kind, self.value)


def rule_key(rule_id: str) -> str:
    return f"rule:{rule_id}"


def list_key(name: str, kind: str, value: str) -> str:
    return f"list:{name}:{kind}:{value}"


# --- compiling a rule to numpy -----------------------------------------------------------------

Kind = Literal["number", "string", "bool", "null"]
Value = Any  # a numpy array (one value per transaction) or a scalar literal


class Inputs:
    """A batch's columns as rules read them: numbers from the feature matrix (and ``amount``),
    strings from the transactions; each column built on first use."""

    def __init__(self, n: int, amount: np.ndarray, features: np.ndarray, strings: Callable[[str], np.ndarray]) -> None:
        self.n, self.features, self._strings = n, features, strings
        self._cache: dict[str, np.ndarray] = {"amount": np.asarray(amount, dtype=np.float64)}

    @classmethod
    def of_transactions(
        cls, txs: Sequence[Transaction], queries: Mapping[str, np.ndarray], features: np.ndarray
    ) -> Inputs:
        return cls(
            len(txs),
            queries["amount"],
            features,
            lambda name: np.array([getattr(tx, name) for tx in txs], dtype=object),
        )

    @classmethod
    def of_frame(cls, frame: pd.DataFrame, features: np.ndarray) -> Inputs:
        """A validated dataset frame (``model.dataset``); empty optional fields read as null."""

        def strings(name: str) -> np.ndarray:
            if name not in frame:
                return np.full(len(frame), None, dtype=object)
            values = frame[name].to_numpy(dtype=object)
            values[pd.isna(values) | (values == "")] = None
            return values

        return cls(len(frame), frame["amount"].to_numpy(), features, strings)

    def get(self, name: str) -> np.ndarray:
        found = self._cache.get(name)
        if found is None:
            found = self.features[:, COLUMN[name]] if name in COLUMN else self._strings(name)
            self._cache[name] = found
        return found


Compiled = Callable[[Inputs], Value]


@dataclass(frozen=True)
class _Node:
    kind: Kind
    run: Compiled
    #: The fields this node reads, to name them in an error.
    fields: tuple[str, ...] = ()
    #: A list of literals (``kind`` is its items' kind), the right side of ``in``.
    is_list: bool = False


def _field_kind(name: str) -> Kind:
    return "string" if name in STRING_FIELDS else "number"


def _resolve(name: str) -> Any:
    if name not in STRING_FIELDS and name not in NUMBER_FIELDS:
        raise rule_engine.errors.SymbolResolutionError(name)
    return rule_engine.DataType.UNDEFINED  # types are checked by _compile, which names the field


_CONTEXT = rule_engine.Context(type_resolver=_resolve)

_ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "tdiv": np.true_divide,
    "fdiv": np.floor_divide,
    "mod": np.mod,
    "pow": np.power,
}
_ORDER: dict[str, Callable[[Any, Any], Any]] = {
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
}


def compile_expression(text: str) -> Compiled:
    """The expression as a function of a batch's :class:`Inputs` returning a bool per row;
    raises :class:`RuleError` naming what is wrong."""
    try:
        parsed = rule_engine.Rule(text, context=_CONTEXT)
    except rule_engine.errors.SymbolResolutionError as exc:
        raise RuleError(f"unknown field {exc.symbol_name!r} in {text!r}") from exc
    except rule_engine.errors.RuleSyntaxError as exc:
        where = f" at {exc.token.value!r}" if getattr(exc, "token", None) is not None else " (incomplete)"
        raise RuleError(f"syntax error{where} in {text!r}") from exc
    except rule_engine.errors.EngineError as exc:
        raise RuleError(f"{exc.message} in {text!r}") from exc
    node = _compile(parsed.statement.expression, text)
    if node.kind != "bool":
        raise RuleError(f"{text!r} is a {node.kind}, not a condition (compare it with something)")
    run = node.run

    def matches(inputs: Inputs) -> np.ndarray:
        return np.broadcast_to(np.asarray(run(inputs), dtype=bool), (inputs.n,))

    return matches


def _mismatch(op: str, left: _Node, right: _Node, text: str) -> RuleError:
    named = ", ".join(dict.fromkeys((*left.fields, *right.fields))) or "a literal"
    return RuleError(f"type mismatch in {text!r}: {op} of a {left.kind} and a {right.kind} (field {named})")


def _compile(node: Any, text: str) -> _Node:  # one branch per node type of the grammar
    if isinstance(node, ast.SymbolExpression):
        name = node.name
        return _Node(_field_kind(name), lambda inputs: inputs.get(name), (name,))
    if isinstance(node, ast.FloatExpression):
        number = float(node.value)
        return _Node("number", lambda _: number)
    if isinstance(node, ast.StringExpression):
        string = node.value
        return _Node("string", lambda _: string)
    if isinstance(node, ast.BooleanExpression):
        flag = bool(node.value)
        return _Node("bool", lambda _: flag)
    if isinstance(node, ast.NullExpression):
        return _Node("null", lambda _: None)
    if isinstance(node, ast.ArrayExpression):
        items = [_compile(item, text) for item in node.value]
        kinds = {i.kind for i in items}
        if not items or any(i.fields or i.is_list for i in items) or len(kinds) > 1:
            raise RuleError(f"a list in {text!r} must hold literals of one type")
        values = [i.run(None) for i in items]  # type: ignore[arg-type]  # literals ignore their input
        return _Node(kinds.pop(), lambda _: values, is_list=True)
    if isinstance(node, ast.UnaryExpression):
        right = _compile(node.right, text)
        if node.type == "not":
            if right.kind != "bool":
                raise RuleError(f"'not' of a {right.kind} in {text!r} (field {', '.join(right.fields) or '-'})")
            return _Node("bool", lambda inputs: np.logical_not(right.run(inputs)), right.fields)
        if right.kind != "number":
            raise RuleError(f"minus of a {right.kind} in {text!r} (field {', '.join(right.fields) or '-'})")
        return _Node("number", lambda inputs: np.negative(right.run(inputs)), right.fields)
    if isinstance(node, ast.LogicExpression):
        left, right = _compile(node.left, text), _compile(node.right, text)
        if left.kind != "bool" or right.kind != "bool":
            raise _mismatch(f"'{node.type}'", left, right, text)
        combine = np.logical_and if node.type == "and" else np.logical_or
        return _Node("bool", lambda inputs: combine(left.run(inputs), right.run(inputs)), left.fields + right.fields)
    if isinstance(node, ast.ArithmeticComparisonExpression):
        left, right = _compile(node.left, text), _compile(node.right, text)
        if left.kind != "number" or right.kind != "number":
            raise _mismatch(f"'{node.type}'", left, right, text)
        compare = _ORDER[node.type]
        return _Node("bool", lambda inputs: compare(left.run(inputs), right.run(inputs)), left.fields + right.fields)
    if isinstance(node, ast.AddExpression | ast.SubtractExpression | ast.ArithmeticExpression):
        left, right = _compile(node.left, text), _compile(node.right, text)
        if left.kind != "number" or right.kind != "number":
            raise _mismatch(f"'{node.type}'", left, right, text)
        operate = _ARITHMETIC[node.type]

        def arithmetic(inputs: Inputs) -> Value:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                return operate(left.run(inputs), right.run(inputs))

        return _Node("number", arithmetic, left.fields + right.fields)
    if isinstance(node, ast.ContainsExpression):
        member, container = _compile(node.member, text), _compile(node.container, text)
        if not container.is_list or member.is_list or member.kind != container.kind:
            raise RuleError(
                f"'in' needs a field and a list of literals of its type in {text!r} "
                f"(field {', '.join(member.fields) or '-'})"
            )
        return _Node("bool", lambda inputs: np.isin(member.run(inputs), container.run(inputs)), member.fields)
    if isinstance(node, ast.FuzzyComparisonExpression):
        left, right = _compile(node.left, text), _compile(node.right, text)
        if left.kind != "string" or right.kind != "string" or right.fields:
            raise RuleError(f"a regular expression compares a string field with a literal in {text!r}")
        pattern = re.compile(right.run(None))  # type: ignore[arg-type]  # literals ignore their input
        find = pattern.match if node.type.endswith("fzm") else pattern.search
        negate = node.type.startswith("ne")

        def fuzzy(inputs: Inputs) -> np.ndarray:
            found = np.fromiter((v is not None and find(v) is not None for v in left.run(inputs)), bool, inputs.n)
            return ~found if negate else found

        return _Node("bool", fuzzy, left.fields)
    if isinstance(node, ast.ComparisonExpression):  # after its subclasses (ordering, regular expressions)
        return _equality(node, text)
    if isinstance(node, ast.TernaryExpression):
        condition = _compile(node.condition, text)
        yes, no = _compile(node.case_true, text), _compile(node.case_false, text)
        if condition.kind != "bool" or yes.kind != no.kind:
            raise _mismatch("'? :'", yes, no, text)
        return _Node(
            yes.kind,
            lambda inputs: np.where(condition.run(inputs), yes.run(inputs), no.run(inputs)),
            condition.fields + yes.fields + no.fields,
        )
    raise RuleError(f"{type(node).__name__.removesuffix('Expression').lower()} is not supported in rules: {text!r}")


def _equality(node: Any, text: str) -> _Node:
    left, right = _compile(node.left, text), _compile(node.right, text)
    negate = node.type == "ne"
    if "null" in (left.kind, right.kind):
        value = right if left.kind == "null" else left

        def is_null(inputs: Inputs) -> Value:
            values = value.run(inputs)
            found = np.fromiter((v is None for v in values), bool) if isinstance(values, np.ndarray) else values is None
            return ~found if negate else found

        return _Node("bool", is_null, value.fields)
    if left.kind != right.kind:
        raise _mismatch(f"'{node.type}'", left, right, text)
    compare = np.not_equal if negate else np.equal
    return _Node("bool", lambda inputs: compare(left.run(inputs), right.run(inputs)), left.fields + right.fields)


# --- a set of rules and lists, applied to a batch ------------------------------------------------


@dataclass(frozen=True)
class CompiledRule:
    rule: Rule
    matches: Compiled


def compile_rule(rule: Rule) -> CompiledRule:
    return CompiledRule(rule, compile_expression(rule.expression))


@dataclass(frozen=True)
class Verdicts:
    """What rules and lists decided for a batch."""

    #: The action per transaction, or None where the model decides.
    actions: list[str | None]
    #: Who decided each transaction: ``model``, ``rule:<id>``, ``allow_list:<kind>``, ``block_list:<kind>``.
    decided_by: list[str]
    #: Matches per (rule id, action, mode), log-only rules included.
    hits: dict[tuple[str, str, str], int]


@dataclass(frozen=True)
class Ruleset:
    """An immutable snapshot of the rules and lists in force (safe to use from any thread)."""

    rules: tuple[CompiledRule, ...] = ()
    #: list name -> kind -> value -> expiry (ms since the epoch) or None.
    lists: Mapping[str, Mapping[str, Mapping[str, int | None]]] = field(default_factory=dict)
    #: A fingerprint of the rules and entries in force: equal in every process that applies the same.
    version: str = "none"

    @property
    def empty(self) -> bool:
        return not self.rules and not any(kinds for kinds in self.lists.values())

    def apply(self, inputs: Inputs, now_ms: int) -> Verdicts:
        n = inputs.n
        actions: list[str | None] = [None] * n
        decided_by = ["model"] * n
        undecided = np.ones(n, dtype=bool)
        hits: dict[tuple[str, str, str], int] = {}

        def decide(mask: np.ndarray, action: str, by: str) -> None:
            chosen = np.flatnonzero(mask & undecided)
            for i in chosen.tolist():
                actions[i], decided_by[i] = action, by
            undecided[chosen] = False

        by_action: dict[str, list[tuple[CompiledRule, np.ndarray]]] = {a: [] for a in PRECEDENCE}
        for compiled in self.rules:
            rule = compiled.rule
            mask = compiled.matches(inputs)
            count = int(mask.sum())
            if count:
                hits[(rule.id, rule.action, rule.mode)] = count
            if rule.mode == "active":
                by_action[rule.action].append((compiled, mask))
        for action in PRECEDENCE:
            if action in self.lists:
                for kind, entries in self.lists[action].items():
                    live = [v for v, until in entries.items() if until is None or until > now_ms]
                    if live:
                        decide(np.isin(inputs.get(_LIST_FIELD[kind]), live), action, f"{action}_list:{kind}")
            for compiled, mask in by_action[action]:
                decide(mask, action, f"rule:{compiled.rule.id}")
        return Verdicts(actions, decided_by, hits)


class RuleBook:
    """The rules and lists in force, kept from the rules topic's records (:meth:`apply`, on a
    replica thread); :meth:`snapshot` hands the scoring thread an immutable :class:`Ruleset`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: dict[str, Rule] = {}
        self._compiled: dict[str, CompiledRule] = {}
        self._entries: dict[str, ListEntry] = {}
        #: Records that could not be used, by key (shown by ``fraud rules list``).
        self.invalid: dict[str, str] = {}
        #: The record value of every rule and entry in force, by key (for the fingerprint).
        self._records: dict[str, bytes] = {}
        self._snapshot = Ruleset()

    def apply(self, key: bytes, value: bytes | None) -> None:
        """One record of the rules topic; a bad record is logged and kept out, never raised."""
        name = key.decode(errors="replace")
        with self._lock:
            self.invalid.pop(name, None)
            self._records.pop(name, None)
            try:
                self._apply(name, value)
                if value is not None:
                    self._records[name] = value
            except (RuleError, ValidationError, ValueError) as exc:
                self.invalid[name] = str(exc)
                log.warning("rules topic: ignoring %s: %s", name, exc)
            self._snapshot = self._build()

    def _apply(self, name: str, value: bytes | None) -> None:
        kind, _, rest = name.partition(":")
        if kind == "rule":
            self._rules.pop(rest, None)
            self._compiled.pop(rest, None)
            if value is not None:
                rule = Rule.model_validate_json(value)
                if rule.id != rest:
                    raise ValueError(f"record key names rule {rest!r} but holds {rule.id!r}")
                compiled = compile_rule(rule)  # raises before anything is replaced
                if len(self._rules) >= MAX_RULES:
                    raise RuleError(f"more than {MAX_RULES} rules (rule ids are metric labels)")
                self._rules[rest], self._compiled[rest] = rule, compiled
        elif kind == "list":
            self._entries.pop(name, None)
            if value is not None:
                entry = ListEntry.model_validate_json(value)
                if entry.key != name:
                    raise ValueError(f"record key {name!r} does not match its entry {entry.key!r}")
                self._entries[name] = entry
        else:
            raise ValueError(f"unknown record kind {kind!r}")

    def _build(self) -> Ruleset:
        enabled = [c for c in self._compiled.values() if c.rule.enabled]
        enabled.sort(key=lambda c: (PRECEDENCE.index(c.rule.action), c.rule.id))
        lists: dict[str, dict[str, dict[str, int | None]]] = {}
        for entry in self._entries.values():
            until = None if entry.expires_at is None else int(entry.expires_at.timestamp() * 1000)
            lists.setdefault(entry.list, {}).setdefault(entry.kind, {})[entry.value] = until
        digest = hashlib.sha256()
        for key in sorted(self._records):
            digest.update(key.encode() + b"\0" + self._records[key] + b"\0")
        return Ruleset(tuple(enabled), lists, digest.hexdigest()[:12] if self._records else "none")

    def snapshot(self) -> Ruleset:
        return self._snapshot

    def rules(self) -> list[Rule]:
        with self._lock:
            return sorted(self._rules.values(), key=lambda r: r.id)

    def entries(self) -> list[ListEntry]:
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: e.key)


def rule_record(rule: Rule) -> tuple[bytes, bytes]:
    """The rules-topic record of a rule, checked first: a rule that does not compile is refused."""
    compile_rule(rule)
    return rule_key(rule.id).encode(), rule.model_dump_json(exclude_none=True).encode()


def entry_record(entry: ListEntry) -> tuple[bytes, bytes]:
    return entry.key.encode(), entry.model_dump_json(exclude_none=True).encode()


def stamped(model: Rule | ListEntry, by: str | None) -> Any:
    """A copy with ``updated_at`` now and ``updated_by``."""
    return model.model_copy(update={"updated_at": datetime.now(UTC), "updated_by": by})


def describe_fields() -> dict[str, list[str]]:
    """The fields a rule may name, by type (for ``--help`` and the console)."""
    return {"string": list(STRING_FIELDS), "number": list(NUMBER_FIELDS)}
