"""``python -m benchmarks ROLE``: the child processes of ``fraud bench`` (see :mod:`benchmarks.roles`
and :mod:`benchmarks.load`); each prints its result as JSON or, for the long-running ones, serves
until stopped."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _role_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="fraud bench's child processes")
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("limit", "naive"):
        p = sub.add_parser(role)
        p.add_argument("--bootstrap", required=True)
        p.add_argument("--topic", required=True)
        p.add_argument("--out-topic", required=True)
        p.add_argument("--model-dir", type=Path, required=True)
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--timeout", type=float, default=600.0)
    naive = sub.choices["naive"]
    naive.add_argument("--partitions", type=int, required=True)
    naive.add_argument("--result", type=Path, required=True)
    naive.add_argument("--datadir", type=Path, required=True)
    p = sub.add_parser("noop")
    p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("http")
    p.add_argument("--bodies", type=Path, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, nargs="+", required=True)
    p.add_argument("--target", action="append", required=True, help="name=url")
    p.add_argument("--client", choices=("httpx", "aiohttp"), default="httpx")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _role_parser().parse_args(argv)
    if args.role == "http":
        from benchmarks.load import role_http

        print(json.dumps(role_http(args)))
        return 0
    from benchmarks import roles

    if args.role == "limit":
        print(json.dumps(roles.role_limit(args)))
    elif args.role == "naive":
        roles.role_naive(args)
    else:
        roles.role_noop(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
