"""Reading and changing the rules and lists in force: what ``fraud rules``, ``fraud lists``
and the API's admin routes call. Every change is one record on the rules topic, acknowledged by
the broker before the call returns; every process applies it within a fetch or two."""

from __future__ import annotations

from streaming.kafka import clients as kafka
from streaming.scoring.rules import (
    MAX_RULES,
    ListEntry,
    Rule,
    RuleBook,
    RuleError,
    entry_record,
    list_key,
    rule_key,
    rule_record,
    stamped,
)
from streaming.settings import KafkaSettings


def read_rulebook(settings: KafkaSettings, timeout: float = 30.0) -> RuleBook:
    """The rules and lists in force, read from the rules topic to its end."""
    book = RuleBook()
    kafka.ensure_topics(settings, [settings.rules_topic], partitions=1, config={"cleanup.policy": "compact"})
    kafka.read_to_end(
        settings, {settings.rules_topic: lambda msg: book.apply(msg.key() or b"", msg.value())}, timeout, idle_s=0.5
    )
    return book


class RuleAdmin:
    """Changes to the rules topic, checked first (a rule that does not compile is never written)."""

    def __init__(self, settings: KafkaSettings, book: RuleBook) -> None:
        self.settings, self.book = settings, book

    def put_rule(self, rule: Rule, by: str | None = None) -> Rule:
        known = {r.id for r in self.book.rules()}
        if rule.id not in known and len(known) >= MAX_RULES:
            raise RuleError(f"there are {MAX_RULES} rules already (rule ids are metric labels); delete one first")
        rule = stamped(rule, by)
        self._write(*rule_record(rule))
        return rule

    def set_enabled(self, rule_id: str, enabled: bool, by: str | None = None) -> Rule:
        return self.put_rule(self.rule(rule_id).model_copy(update={"enabled": enabled}), by)

    def delete_rule(self, rule_id: str) -> None:
        self.rule(rule_id)
        self._write(rule_key(rule_id).encode(), None)

    def rule(self, rule_id: str) -> Rule:
        for rule in self.book.rules():
            if rule.id == rule_id:
                return rule
        raise RuleNotFoundError(f"no rule {rule_id!r}")

    def put_entry(self, entry: ListEntry, by: str | None = None) -> ListEntry:
        entry = stamped(entry, by)
        self._write(*entry_record(entry))
        return entry

    def delete_entry(self, name: str, kind: str, value: str) -> None:
        key = list_key(name, kind, value)
        if key not in {e.key for e in self.book.entries()}:
            raise RuleNotFoundError(f"no {name}-list entry for {kind} {value!r}")
        self._write(key.encode(), None)

    def _write(self, key: bytes, value: bytes | None) -> None:
        kafka.produce_and_wait(self.settings, self.settings.rules_topic, [(key, value)])
        # Applied here at once too, so this process's next read sees its own change.
        self.book.apply(key, value)


class RuleNotFoundError(RuleError):
    status_code = 404
