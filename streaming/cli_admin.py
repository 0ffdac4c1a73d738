"""``fraud rules``, ``fraud lists`` and ``fraud keys``: the decision layer and API keys from the
command line.

Rule and list changes are written to the rules topic (``FRAUD_RULES_TOPIC``) and take effect in every worker
and API process within seconds, without a restart.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

RULE_FIELDS_HELP = (
    "A rule is an expression over the transaction's fields (strings: card_id, merchant_id, channel, "
    "merchant_category, currency, country) and its features (numbers: amount, card_tx_count_1h, ...; "
    '`fraud rules fields` lists them), e.g. \'amount > 2000 and channel == "ecommerce" and '
    "card_tx_count_1h >= 3'. Operators: and or not, == != < <= > >=, + - * / // % **, in [...], "
    "=~ (regex match), =~~ (regex search), == null. Order: allow lists and allow rules, then block, "
    "then review, then the model's thresholds."
)


def _duration(value: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return timedelta(seconds=float(value[:-1]) * units[value[-1]])
    except (KeyError, ValueError, IndexError) as exc:
        raise argparse.ArgumentTypeError(f"not a duration like 30m, 12h or 7d: {value!r}") from exc


def _user(args: argparse.Namespace) -> str:
    return args.by or getpass.getuser()


def add_parsers(sub: Any, timestamp: Callable[[str], pd.Timestamp]) -> None:
    """The ``rules`` and ``lists`` subcommands (``timestamp``: the CLI's date/time parser)."""
    rules = sub.add_parser(
        "rules", help="list, add, enable/disable, delete and backtest rules", description=RULE_FIELDS_HELP
    )
    rsub = rules.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = rsub.add_parser("list", help="the rules in force (and records that could not be used)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_rules_list)

    p = rsub.add_parser("fields", help="the fields a rule may name, by type")
    p.set_defaults(func=cmd_rules_fields)

    p = rsub.add_parser("add", help="add a rule, or replace the rule with that id", description=RULE_FIELDS_HELP)
    p.add_argument("id", help="stable id (letters, digits, . _ -; at most 64)")
    p.add_argument("--expr", required=True, help="the condition")
    p.add_argument("--action", required=True, choices=("allow", "review", "block"))
    p.add_argument("--description", default="", help="what it is for")
    p.add_argument("--log-only", action="store_true", help="count its hits but leave the decision to the model")
    p.add_argument("--disabled", action="store_true", help="store it disabled")
    p.add_argument("--by", help="who made the change (default: the OS user)")
    p.set_defaults(func=cmd_rules_add)

    for name, helptext in (("enable", "enable a rule"), ("disable", "disable a rule"), ("delete", "delete a rule")):
        p = rsub.add_parser(name, help=helptext)
        p.add_argument("id")
        p.add_argument("--by", help="who made the change (default: the OS user)")
        p.set_defaults(func=cmd_rules_change, change=name)

    p = rsub.add_parser("test", help="backtest a rule on labelled history (point-in-time serving features)")
    p.add_argument("--data", type=Path, required=True, help="labelled CSV (the training CSV contract)")
    p.add_argument("--rule", required=True, help="the condition to test")
    p.add_argument("--model", type=Path, default=Path("artifacts/model"), help="model artifact (default %(default)s)")
    p.add_argument("--from", dest="start", type=timestamp, help="first transaction time tested")
    p.add_argument("--to", dest="end", type=timestamp, help="end of the tested range (exclusive)")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.set_defaults(func=cmd_rules_test)

    lists = sub.add_parser("lists", help="allow and block lists of card ids, merchant ids and countries")
    lsub = lists.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = lsub.add_parser("list", help="the entries in force")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_lists_list)
    p = lsub.add_parser("add", help="add an entry (or replace it)")
    p.add_argument("list", choices=("allow", "block"))
    p.add_argument("kind", choices=("card", "merchant", "country"))
    p.add_argument("value")
    expiry = p.add_mutually_exclusive_group()
    expiry.add_argument("--expires", type=timestamp, help="when the entry stops applying")
    expiry.add_argument("--for", dest="duration", type=_duration, help="how long it applies (30m, 12h, 7d)")
    p.add_argument("--note", default="", help="why")
    p.add_argument("--by", help="who made the change (default: the OS user)")
    p.set_defaults(func=cmd_lists_add)
    p = lsub.add_parser("remove", help="remove an entry")
    p.add_argument("list", choices=("allow", "block"))
    p.add_argument("kind", choices=("card", "merchant", "country"))
    p.add_argument("value")
    p.set_defaults(func=cmd_lists_remove)

    keys = sub.add_parser("keys", help="API keys for `fraud api`")
    ksub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = ksub.add_parser(
        "create",
        help="make a new API key: prints the key (give it to the caller) and its line for FRAUD_API_KEYS",
    )
    p.add_argument("name", help="who the key is for (recorded as who made a change)")
    p.add_argument(
        "--scopes",
        default="predict",
        help="comma-separated: predict, feedback, admin, console (default %(default)s)",
    )
    p.set_defaults(func=cmd_keys_create)


def _admin() -> Any:
    from streaming.scoring.rule_admin import RuleAdmin, read_rulebook
    from streaming.settings import KafkaSettings

    settings = KafkaSettings()
    return RuleAdmin(settings, read_rulebook(settings))


def cmd_rules_list(args: argparse.Namespace) -> int:
    admin = _admin()
    rules = admin.book.rules()
    if args.json:
        print(json.dumps([r.model_dump(mode="json", exclude_none=True) for r in rules], indent=2))
        return 0
    if not rules:
        print("no rules")
    for r in rules:
        state = ("enabled" if r.enabled else "disabled") + (", log-only" if r.mode == "log_only" else "")
        print(f"{r.id}: {r.action} when {r.expression}  [{state}]  {r.description}".rstrip())
    for key, why in admin.book.invalid.items():
        print(f"not applied: {key}: {why}")
    return 0


def cmd_rules_fields(args: argparse.Namespace) -> int:
    from streaming.scoring.rules import describe_fields

    for kind, names in describe_fields().items():
        print(f"{kind}: {', '.join(names)}")
    return 0


def cmd_rules_add(args: argparse.Namespace) -> int:
    from streaming.scoring.rules import Rule

    rule = Rule(
        id=args.id,
        expression=args.expr,
        action=args.action,
        description=args.description,
        enabled=not args.disabled,
        mode="log_only" if args.log_only else "active",
    )
    saved = _admin().put_rule(rule, _user(args))
    print(f"rule {saved.id} saved: {saved.action} when {saved.expression}")
    return 0


def cmd_rules_change(args: argparse.Namespace) -> int:
    admin = _admin()
    if args.change == "delete":
        admin.delete_rule(args.id)
        print(f"rule {args.id} deleted")
    else:
        rule = admin.set_enabled(args.id, args.change == "enable", _user(args))
        print(f"rule {rule.id} {'enabled' if rule.enabled else 'disabled'}")
    return 0


def cmd_rules_test(args: argparse.Namespace) -> int:
    from streaming.scoring.backtest import backtest, format_backtest

    report = backtest(args.data, args.rule, args.model, args.start, args.end)
    print(format_backtest(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def cmd_lists_list(args: argparse.Namespace) -> int:
    entries = _admin().book.entries()
    if args.json:
        print(json.dumps([e.model_dump(mode="json", exclude_none=True) for e in entries], indent=2))
        return 0
    if not entries:
        print("no list entries")
    now = datetime.now(UTC)
    for e in entries:
        until = "" if e.expires_at is None else f" until {e.expires_at.isoformat()}"
        expired = " (expired)" if e.expires_at is not None and e.expires_at <= now else ""
        print(f"{e.list} {e.kind} {e.value}{until}{expired}  {e.note}".rstrip())
    return 0


def cmd_lists_add(args: argparse.Namespace) -> int:
    from streaming.scoring.rules import ListEntry

    expires = args.expires.to_pydatetime() if args.expires is not None else None
    if args.duration is not None:
        expires = datetime.now(UTC) + args.duration
    entry = ListEntry(list=args.list, kind=args.kind, value=args.value, expires_at=expires, note=args.note)
    saved = _admin().put_entry(entry, _user(args))
    until = "" if saved.expires_at is None else f" until {saved.expires_at.isoformat()}"
    print(f"{saved.list}-listed {saved.kind} {saved.value}{until}")
    return 0


def cmd_lists_remove(args: argparse.Namespace) -> int:
    _admin().delete_entry(args.list, args.kind, args.value)
    print(f"removed {args.kind} {args.value} from the {args.list} list")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from streaming.api.security import SCOPES, KeyListError, key_line, new_key

    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes or any(c.isspace() for c in args.name):
        raise KeyListError(f"scopes must be among {', '.join(SCOPES)}, and the name one word")
    key = new_key()
    print(f"key (give it to {args.name}; it is not stored anywhere): {key}")
    print(f"line for FRAUD_API_KEYS / FRAUD_API_KEYS_FILE: {key_line(args.name, key, scopes)}")
    return 0
