"""``python -m benchmarks.memory``: bytes per entry of the structures every process holds whole,
built from generated keys with the project's own classes (no broker, no traffic).

* ``risk``: the merchant-risk view (:class:`~streaming.scoring.merchant_risk.MerchantRisk`), one
  entry per merchant, UTC day and source partition, applied as the replica applies its records;
* ``risk-daily``: the same with one partition, i.e. one entry per merchant and day: what a
  process would hold if the counts were summed per merchant and day before being replicated;
* ``cards``: the API's copy of the card table (:class:`~streaming.scoring.state.CardStateCopy`),
  one card's changelog value per card, each a month of history built by
  :func:`~streaming.scoring.state.merge`, its bytes sized exactly as the Kafka client hands
  them over;
* ``cards-worker``: the worker's Faust table (``memory://`` store: a dict) of the same states,
  with the values as the pipeline stores them (:func:`~streaming.scoring.state.encode_state`).

Each case runs in its own process and reports the Python heap it allocated (tracemalloc) and its
resident memory growth (RSS), both divided by the entries built.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from benchmarks.measure import rss_mb

if TYPE_CHECKING:
    from streaming.scoring.merchant_risk import MerchantRisk
    from streaming.scoring.state import CardStateCopy

CASES = ("risk", "risk-daily", "cards", "cards-worker")
DAY_MS = 86_400_000
#: Epoch day of the generated entries (any recent day: only its digit count matters).
FIRST_DAY = 20_400


def build_risk(entries: int, days: int, partitions: int) -> tuple[MerchantRisk, int]:
    """A merchant-risk view of ``entries`` daily counts: merchants x ``days`` x ``partitions``."""
    from streaming.scoring.merchant_risk import MerchantRisk, activity_key

    risk = MerchantRisk()
    merchants = max(1, entries // (days * partitions))
    width = len(str(merchants * 10))  # ids as wide as at ten times the count: never flattering
    for m in range(merchants):
        merchant = f"m-{m:0{width}d}"
        for day in range(FIRST_DAY, FIRST_DAY + days):
            for p in range(partitions):
                risk.apply(activity_key(merchant, day, p), b"17")
    return risk, merchants * days * partitions


def build_cards(
    entries: int, history: float, worker: bool, seed: int = 5
) -> tuple[CardStateCopy | dict[str, bytes], int]:
    """``entries`` cards, each with a Poisson(``history``) month of history: the API's card table
    copy, or (``worker``) the worker's table as the pipeline fills it."""
    from streaming.scoring.state import CardStateCopy, changelog_key, encode_state, merge

    rng = np.random.default_rng(seed)
    copy = CardStateCopy()
    table: dict[str, bytes] = {}
    width = len(str(entries * 10))
    lengths = rng.poisson(history, entries)
    start_ms = FIRST_DAY * DAY_MS
    tx = 0
    for card, n in enumerate(lengths):
        ts = np.sort(rng.integers(start_ms, start_ms + 30 * DAY_MS, n))
        amounts = np.round(rng.lognormal(3.5, 1.0, n), 2)
        merchants = rng.integers(0, entries // 5 + 1, n)
        rows = [
            (f"tx-{tx + i:012d}", int(t), float(a), f"m-{m:0{width}d}")
            for i, (t, a, m) in enumerate(zip(ts, amounts, merchants, strict=True))
        ]
        tx += int(n)
        state = merge(None, rows, grace_ms=3_600_000, fresh=True)
        if worker:
            table[f"card-{card:0{width}d}"] = encode_state(state)
        else:  # a record value from the client is a bytes object of exactly its length
            copy.apply(changelog_key(f"card-{card:0{width}d}"), bytes(memoryview(orjson.dumps(state))))
    return (table if worker else copy), entries


def _rss_bytes() -> int:
    return round(rss_mb(os.getpid())[0] * 1024 * 1024)


def measure_one(case: str, entries: int, method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build one case in this process; ``method``: ``heap`` (tracemalloc: what Python allocated)
    or ``rss`` (resident growth: what the process costs the machine, allocator slack included)."""
    builders: dict[str, Callable[[], tuple[object, int]]] = {
        "risk": lambda: build_risk(entries, args.days, args.partitions),
        "risk-daily": lambda: build_risk(entries, args.days, 1),
        "cards": lambda: build_cards(entries, args.history, worker=False),
        "cards-worker": lambda: build_cards(entries, args.history, worker=True),
    }
    build = builders[case]
    gc.collect()
    if method == "heap":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        held, built = build()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    else:
        before = _rss_bytes()
        held, built = build()
        gc.collect()
        grown = _rss_bytes() - before
    del held
    return {"case": case, "method": method, "entries": built, "bytes_per_entry": grown / built}


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every case at every size, each build in a fresh process (so RSS growth is its own)."""
    results = []
    for case in args.cases:
        sizes = args.card_sizes if case.startswith("cards") else args.sizes
        for entries in sizes:
            row: dict[str, Any] = {"case": case}
            for method in ("heap", "rss"):
                argv = [sys.executable, "-m", "benchmarks.memory", "--one", case, str(entries), method]
                argv += ["--days", str(args.days), "--partitions", str(args.partitions), "--history", str(args.history)]
                out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout  # noqa: S603 - our own argv
                one = json.loads(out.strip().splitlines()[-1])
                row.update(entries=one["entries"], **{f"{method}_bytes_per_entry": one["bytes_per_entry"]})
            results.append(row)
            print(
                f"{case:<11} {row['entries']:>10,} entries: {row['heap_bytes_per_entry']:>8,.0f} B/entry heap, "
                f"{row['rss_bytes_per_entry']:>8,.0f} B/entry RSS",
                file=sys.stderr,
                flush=True,
            )
    return results


def _parser() -> argparse.ArgumentParser:
    from producers.synthetic import SimConfig, expected_rows_per_card_day

    month = round(30 * expected_rows_per_card_day(SimConfig()), 1)
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="merchant-risk entries")
    p.add_argument("--card-sizes", type=int, nargs="+", default=[10_000, 100_000], help="cards (default %(default)s)")
    p.add_argument("--days", type=int, default=33, help="days per merchant (default %(default)s)")
    p.add_argument("--partitions", type=int, default=64, help="source partitions (default %(default)s)")
    p.add_argument(
        "--history",
        type=float,
        default=month,
        help="mean transactions per card (default: the generator's month, %(default)s)",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--one", nargs=3, metavar=("CASE", "ENTRIES", "METHOD"), help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.one:
        case, entries, method = args.one
        print(json.dumps(measure_one(case, int(entries), method, args)))
        return 0
    results = run_all(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
