"""What rules cost the scoring service: batches scored with 0, 10 and 100 active rules.

``python -m benchmarks.rules_cost [--rows N] [--batch B]`` trains a small model on generated data,
then scores the same traffic in batches through :class:`streaming.scoring.service.ScoringService`
(the worker's and the API's scoring path) with a rule book of each size, alternating the sizes
round by round, and prints microseconds per transaction and transactions a second (median of
the rounds). The rules are of the kind teams write: thresholds on amount and velocity, list
membership, a regular expression; every one is enabled and active.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from model.features import epoch_ms
from model.schemas import Transaction
from model.scoring import ModelHolder
from model.train import TrainOptions, train
from producers.synthetic import SimConfig, generate
from streaming.scoring.merchant_risk import MerchantRisk
from streaming.scoring.rules import Action, Rule, RuleBook, rule_record
from streaming.scoring.service import ScoringService
from streaming.scoring.state import merge

TEMPLATES = (
    'amount > {n} and channel == "ecommerce"',
    "card_tx_count_1h >= {k} and amount > {n}",
    'merchant_category in ["jewelry", "electronics"] and amount_to_card_mean_30d > {k}',
    'country != "US" and card_merchant_count_30d == 0 and amount > {n}',
    'currency =~ "^(EUR|GBP)$" and amount > {n}',
)


def rule_book(count: int) -> RuleBook:
    book = RuleBook()
    for i in range(count):
        text = TEMPLATES[i % len(TEMPLATES)].format(n=1000 + 37 * i, k=2 + i % 5)
        action: Action = ("block", "review", "review", "allow", "block")[i % 5]
        book.apply(*rule_record(Rule(id=f"r{i}", expression=text, action=action)))
    return book


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rules_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="transactions scored per round")
    parser.add_argument("--batch", type=int, default=500, help="transactions per scoring call")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = datetime(2026, 1, 1, tzinfo=UTC)
        frame = generate(SimConfig(seed=7, n_cards=2000, n_merchants=200, days=20, start=start))
        frame.to_csv(root / "d.csv", index=False)
        train(root / "d.csv", root / "m", TrainOptions())
        holder = ModelHolder(root / "m")
        holder.load()
        rows = frame.tail(args.rows).to_dict("records")
        txs = [Transaction.model_validate(r) for r in rows]
        past = frame.iloc[: -args.rows]
        states = {}
        for card, group in past.groupby("card_id"):
            states[card] = merge(
                None,
                [(t, epoch_ms(datetime.fromisoformat(ts)), a, m) for t, ts, a, m in group[
                    ["transaction_id", "timestamp", "amount", "merchant_id"]].itertuples(index=False)],
                3_600_000,
            )  # fmt: skip
        sizes = (0, 10, 100)
        services = {n: ScoringService(holder, MerchantRisk(), rules=rule_book(n)) for n in sizes}
        timings: dict[int, list[float]] = {n: [] for n in sizes}
        for _ in range(args.rounds):
            for n in sizes:
                began = time.perf_counter()
                for i in range(0, len(txs), args.batch):
                    batch = txs[i : i + args.batch]
                    services[n].score(batch, {tx.card_id: states.get(tx.card_id) for tx in batch})
                timings[n].append((time.perf_counter() - began) / len(txs) * 1e6)
    result = {
        f"rules_{n}": {"us_per_tx": round(statistics.median(t), 2), "tx_per_s": round(1e6 / statistics.median(t))}
        for n, t in timings.items()
    }
    print(json.dumps({**result, "batch": args.batch}))
    for n in sizes:
        row = result[f"rules_{n}"]
        print(
            f"{n:>3} active rules: {row['us_per_tx']:8.2f} µs/tx, {row['tx_per_s']:>8,} tx/s (batches of {args.batch})"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({**result, "batch": args.batch}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
