"""``python -m benchmarks.quality_table``: the README's detection-quality table.

One labelled data set from the project's generator (``producers/synthetic.py``), split by time:
a training window, a gap as long as the label delay, and a test window. On it: the default model,
the default model without each feature group (``fraud train --without GROUP``), and the
textbook random forest (``fraud evaluate --baseline``), each trained with :func:`model.train.train`
and scored with :func:`model.evaluate.evaluate` on the same test window under the delay protocol
(cards already known to be compromised left out, card precision@100 per day).

Training seconds are wall-clock on whatever else the machine is running (the load average is
recorded); the baseline's are the extra time ``evaluate --baseline`` takes (its features, fit and
scoring), the models' the whole ``train`` call (reading the CSV, features, fit, validation).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from threadpoolctl import threadpool_limits

from model.evaluate import EvaluateOptions, evaluate
from model.train import FEATURE_GROUPS, TrainOptions, train
from producers.synthetic import SimConfig, generate, labels_for, with_label_columns

#: The groups ablated by default: each on its own, then all of them at once (``merchant-risk``).
GROUPS = tuple(FEATURE_GROUPS)
START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    model: str
    auc_roc: float | None
    average_precision: float | None
    card_precision_at_100: float | None
    training_seconds: float


def _row(name: str, report: dict[str, Any], seconds: float) -> Row:
    p = report["protocol"]
    return Row(name, p["auc_roc"], p["average_precision"], p["card_precision_at_100"], round(seconds, 1))


def _write_data(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    config = SimConfig(
        seed=args.seed,
        n_cards=args.cards,
        n_merchants=args.merchants,
        days=args.days,
        start=START,
        label_delay_days=args.label_delay_days,
    )
    frame = generate(config)
    with_label_columns(frame, labels_for(frame, config)).to_csv(path, index=False)
    return {
        "rows": len(frame),
        "fraud": int(frame["is_fraud"].sum()),
        "config": {
            "seed": args.seed,
            "cards": args.cards,
            "merchants": args.merchants,
            "days": args.days,
            "label_delay_days": args.label_delay_days,
        },
    }


def _ablations(
    args: argparse.Namespace, data: Path, workdir: Path, base: TrainOptions, test: EvaluateOptions
) -> list[Row]:
    variants: list[tuple[str, str, TrainOptions]] = []
    if args.refit:
        variants.append(("default --refit", "refit", replace(base, refit=True)))
    variants += [(f"default --without {g}", f"without-{g}", replace(base, without=(g,))) for g in args.groups]
    rows = []
    for name, directory, options in variants:
        meta = train(data, workdir / directory, options)
        rows.append(_row(name, evaluate(workdir / directory, data, test), meta["train_seconds"]))
    return rows


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Generate, train and score every model; the result as written to ``--json``."""
    data = workdir / "data.csv"
    load_before = os.getloadavg()
    dataset = _write_data(args, data)
    train_to = pd.Timestamp(START + timedelta(days=args.days - args.test_days - args.label_delay_days))
    test = EvaluateOptions(
        start=train_to + pd.Timedelta(days=args.label_delay_days), end=pd.Timestamp(START + timedelta(days=args.days))
    )
    base = TrainOptions(train_to=train_to, label_delay_days=args.label_delay_days, seed=args.seed)

    meta = train(data, workdir / "default", base)
    report = evaluate(workdir / "default", data, test)
    # The baseline is fitted inside evaluate --baseline, which times its features, fit and scoring.
    baseline = evaluate(workdir / "default", data, replace(test, baseline=True))["baseline"]
    rows = [
        _row("default (hgb)", report, meta["train_seconds"]),
        _row("textbook random forest (--baseline)", baseline, baseline["seconds"]),
        *_ablations(args, data, workdir, base, test),
    ]
    protocol = report["protocol"]
    return {
        "created_at": datetime.now(UTC).isoformat(),
        "data": dataset,
        "range": report["range"],
        "test": {
            "rows": protocol["n_transactions"],
            "fraud": protocol["n_fraud"],
            "cards_left_out": protocol["removed_known_compromised"]["cards"],
        },
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "cpu_count": os.cpu_count(),
        "rows": [asdict(r) for r in rows],
    }


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(result: dict[str, Any]) -> str:
    """The table as the README shows it, with the window and the load it was measured under."""
    d, t, span = result["data"], result["test"], result["range"]
    load = result["load_average_1m"]
    lines = [
        f"{d['rows']:,} transactions ({d['fraud']:,} fraud); trained until {span['train_end']}, "
        f"test [{span['from']}, {span['to']}) after a {span['actual_gap_days']:g}-day gap: {t['rows']:,} "
        f"transactions, {t['fraud']:,} fraud, after {t['cards_left_out']:,} known-compromised cards left out. "
        f"Load average {load['before']:g} before, {load['after']:g} after, on {result['cpu_count']} CPUs.",
        "",
        "| model | AUC ROC | average precision | card precision@100 | training seconds |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {_cell(r['auc_roc'])} | {_cell(r['average_precision'])} | "
            f"{_cell(r['card_precision_at_100'])} | {r['training_seconds']:.1f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality_table",
        description="Detection quality on the project's generator under the delay protocol: the default model, the "
        "default without each feature group, and the textbook random forest, on one time split.",
    )
    parser.add_argument("--days", type=int, default=60, help="days simulated (default %(default)s)")
    parser.add_argument("--cards", type=int, default=4000, help="cards simulated (default %(default)s)")
    parser.add_argument("--merchants", type=int, default=800, help="merchants simulated (default %(default)s)")
    parser.add_argument("--seed", type=int, default=11, help="generator and estimator seed (default %(default)s)")
    parser.add_argument(
        "--test-days", type=int, default=14, help="days of the test window, the last ones (default %(default)s)"
    )
    parser.add_argument(
        "--label-delay-days",
        type=int,
        default=7,
        help="median fraud label delay of the generator, the models' label delay, and the gap between training and "
        "test (default %(default)s)",
    )
    parser.add_argument(
        "--groups",
        nargs="*",
        choices=tuple(FEATURE_GROUPS),
        default=list(GROUPS),
        help="feature groups to train without, one model each (default: every group, merchant-risk last)",
    )
    parser.add_argument("--refit", action="store_true", help="add a row: the default model with --refit")
    parser.add_argument(
        "--threads",
        type=int,
        help="OpenMP/BLAS threads of the estimators (default: all cores; 1 keeps a fit on a busy machine from "
        "stalling on its spinning threads)",
    )
    parser.add_argument("--json", type=Path, help="write the result here too")
    parser.add_argument(
        "--workdir", type=Path, help="keep the data and artifacts here (default: a temporary directory)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.test_days < 1 or args.days <= args.test_days + args.label_delay_days:
        raise SystemExit("need --days > --test-days + --label-delay-days, and --test-days >= 1")
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with threadpool_limits(limits=args.threads):
            result = run(args, workdir)
        result["threads"] = args.threads
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
