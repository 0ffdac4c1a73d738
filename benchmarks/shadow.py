"""What shadow scoring costs the worker: its batch pipeline with and without a challenger.

``python -m benchmarks.shadow [--transactions N] [--batch B ...] [--repeats R] [--train-cards C]
[--model hgb|logreg] [--json PATH]``

The worker's own objects (:class:`streaming.worker.pipeline.Pipeline`, its scoring thread, the
scoring service) process generated traffic in batches, first without then with a challenger
(another model of the same data, gradient-boosted trees unless ``--model logreg``), alternating
``repeats`` times; the outputs go to a producer that acknowledges at once, so what is measured is
the worker's CPU per transaction (validation, card state, features, the model calls, encoding,
publishing, the live-quality join), not the broker. Reported per batch size: the median CPU µs
per transaction of the process (its threads together: what the worker's core pays, and steadier
than wall time on a machine shared with other work), the wall-clock µs per transaction of the
pass and of the scoring step, the transactions per second a core allows, and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from model.scoring import ModelHolder, scoring_executor
from model.train import ModelType, TrainOptions, train
from producers.publisher import wire_value
from producers.synthetic import SimConfig, generate
from streaming.kafka.outputs import OutputBatch
from streaming.metrics import WorkerMetrics
from streaming.scoring.merchant_risk import MerchantRisk
from streaming.scoring.service import ScoringService
from streaming.settings import WorkerSettings
from streaming.worker.pipeline import BatchScorer, Pipeline


class _AckingProducer:
    """Takes records like librdkafka's producer and reports each delivery at once."""

    def __init__(self) -> None:
        self.records = 0

    def produce(self, topic: str, key: Any, value: Any, headers: Any, partition: int, on_delivery: Callable) -> None:
        self.records += 1
        on_delivery(None, None)


class _Outputs:
    def __init__(self) -> None:
        self.producer = _AckingProducer()

    def batch(self) -> OutputBatch:
        return OutputBatch(self.producer, asyncio.get_running_loop())


@dataclass
class _Message:
    topic: str
    partition: int
    offset: int
    timestamp: float
    key: bytes | None
    value: bytes | None


def _models(workdir: Path, cards: int, model_type: ModelType) -> tuple[Path, Path]:
    frame = generate(
        SimConfig(seed=21, n_cards=cards, n_merchants=300, days=20, start=datetime(2026, 1, 1, tzinfo=UTC))
    )
    frame.to_csv(workdir / "train.csv", index=False)
    train(workdir / "train.csv", workdir / "champion", TrainOptions(model_type=model_type))
    # A day less of training data: another model even where the seed changes nothing (a logistic
    # regression), so the pipeline does not take it for the champion (same version).
    later = pd.Timestamp("2026-01-02", tz="UTC")
    train(workdir / "train.csv", workdir / "challenger", TrainOptions(model_type=model_type, seed=8, train_from=later))
    return workdir / "champion", workdir / "challenger"


def _messages(n: int, topic: str) -> list[_Message]:
    # About ten transactions per card over the ten days: enough to be sliced to n.
    cards = max(100, n // 8)
    frame = generate(
        SimConfig(seed=22, n_cards=cards, n_merchants=300, days=10, start=datetime(2026, 2, 1, tzinfo=UTC))
    )
    rows = frame.iloc[:n].to_dict("records")
    now = time.time()
    return [_Message(topic, i % 4, i // 4, now, str(r["card_id"]).encode(), wire_value(r)) for i, r in enumerate(rows)]


def _run(champion: Path, challenger: Path | None, messages: Sequence[_Message], batch: int) -> dict[str, float]:
    """One pass over ``messages`` by a fresh pipeline; µs per transaction, total and scoring."""
    holder = ModelHolder(champion)
    holder.load()
    shadow = None
    if challenger is not None:
        shadow = ModelHolder(challenger, optional=True)
        shadow.load()
    settings = WorkerSettings()
    metrics = WorkerMetrics()
    scorer = BatchScorer(ScoringService(holder, MerchantRisk(), challenger=shadow), metrics, grace_ms=3_600_000)
    outputs = _Outputs()
    executor = scoring_executor()
    pipeline = Pipeline(settings, scorer, metrics, outputs, {}, "changelog", executor, lambda _m: None)  # type: ignore[arg-type]  # duck-typed outputs
    pipeline.risk_sync_needed = False
    executor.submit(scorer.service.warm_up).result()

    async def drive() -> float:
        start = time.perf_counter()
        acked = None
        for i in range(0, len(messages), batch):
            acked = await pipeline.process(messages[i : i + batch], acked)
        if acked is not None:
            await acked
        return time.perf_counter() - start

    cpu = time.process_time()
    seconds = asyncio.run(drive())
    cpu = time.process_time() - cpu
    executor.shutdown()
    scoring_s = _sample(metrics, "fraud_scoring_batch_duration_seconds_sum")
    expected = len(messages) * (2 if challenger is not None else 1)
    decisions = _sample(metrics, "fraud_model_decisions_total")
    if decisions != expected:
        raise RuntimeError(f"{decisions} decisions, expected {expected}")
    n = len(messages)
    return {
        "cpu_us_per_tx": cpu / n * 1e6,
        "wall_us_per_tx": seconds / n * 1e6,
        "scoring_us_per_tx": scoring_s / n * 1e6,
    }


def _sample(metrics: WorkerMetrics, name: str) -> float:
    """The sum of a metric's samples of that name, over every label set."""
    return sum(s.value for family in metrics.registry.collect() for s in family.samples if s.name == name)


def measure(
    transactions: int,
    batches: Sequence[int],
    repeats: int,
    workdir: Path,
    train_cards: int = 1500,
    model_type: ModelType = "hgb",
) -> dict[str, Any]:
    champion, challenger = _models(workdir, train_cards, model_type)
    messages = _messages(transactions, WorkerSettings().transactions_topic)
    out: dict[str, Any] = {"transactions": len(messages), "repeats": repeats, "model": model_type, "batches": {}}
    for batch in batches:
        runs: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
        for _ in range(repeats):
            runs["without"].append(_run(champion, None, messages, batch))
            runs["with"].append(_run(champion, challenger, messages, batch))
        row: dict[str, Any] = {}
        for name, results in runs.items():
            row[name] = {key: round(statistics.median(r[key] for r in results), 1) for key in results[0]}
            row[name]["tx_per_s"] = round(1e6 / row[name]["cpu_us_per_tx"])
        row["shadow_cpu_us_per_tx"] = round(row["with"]["cpu_us_per_tx"] - row["without"]["cpu_us_per_tx"], 1)
        row["throughput_change"] = round(row["with"]["tx_per_s"] / row["without"]["tx_per_s"] - 1, 3)
        out["batches"][str(batch)] = row
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shadow", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=20_000, help="transactions per pass (default %(default)s)")
    parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable; default 50 and 500)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per configuration (default %(default)s)")
    parser.add_argument(
        "--train-cards", type=int, default=1500, help="cards of the training data (default %(default)s)"
    )
    parser.add_argument(
        "--model", choices=("hgb", "logreg"), default="hgb", help="both models' estimator (default hgb)"
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fraud-shadow-bench-") as tmp:
        report = measure(
            args.transactions, args.batch or [50, 500], args.repeats, Path(tmp), args.train_cards, args.model
        )
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
