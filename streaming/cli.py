"""``fraud``: the one command-line entry point.

Connection and topic settings come from ``FRAUD_*`` environment variables (see the README);
flags cover what differs per invocation.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import signal
import sys
import time
from collections.abc import Sequence
from datetime import tzinfo
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pydantic
from pydantic_settings import BaseSettings

from model.errors import FraudStreamError, UserInputError
from streaming import cli_admin

log = logging.getLogger("fraudstream")

S = TypeVar("S", bound=BaseSettings)


def _timestamp(value: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date or ISO-8601 timestamp: {value!r}") from exc
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _finite(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not math.isfinite(f):
        raise argparse.ArgumentTypeError(f"not a finite number: {value!r}")
    return f


_DATE_ONLY = re.compile(r"^\s*\d{4}-\d{2}-\d{2}\s*$")


def _window_end(value: str) -> pd.Timestamp:
    """The exclusive end of a window: a bare date means its whole (UTC) day, so the end is the
    next midnight; a timestamp is taken as given (exclusive)."""
    ts = _timestamp(value)
    return ts + pd.Timedelta(days=1) if _DATE_ONLY.match(value) else ts


def _zone(value: str) -> tzinfo:
    from model.dataset import resolve_timezone

    try:
        return resolve_timezone(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _window_text(start: pd.Timestamp | None, end: pd.Timestamp | None) -> str:
    """The window a command resolved, as it applies it: start inclusive, end exclusive."""
    first = start.isoformat() if start is not None else "the first row"
    last = end.isoformat() if end is not None else "the last row (included)"
    return f"[{first}, {last})" if end is not None else f"[{first}, {last}]"


def _positive_float(value: str) -> float:
    f = _finite(value)
    if not f > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return f


def _non_negative_float(value: str) -> float:
    f = _finite(value)
    if not f >= 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return f


def _share(value: str) -> float:
    """A share of something that must leave some of it on either side: in (0, 1)."""
    f = _finite(value)
    if not 0 < f < 1:
        raise argparse.ArgumentTypeError("must be > 0 and < 1")
    return f


def _precision(value: str) -> float:
    f = _finite(value)
    if not 0 < f <= 1:
        raise argparse.ArgumentTypeError("must be > 0 and <= 1")
    return f


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def _settings(cls: type[S], **overrides: Any) -> S:
    """``cls`` read from the ``FRAUD_*`` environment; an invalid value is the user's to fix."""
    try:
        return cls(**overrides)
    except pydantic.ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "?"
            where = f"--{name}" if name in overrides else f"FRAUD_{name.upper()}"
            problems.append(f"{where}: {error['msg']}")
        raise UserInputError("invalid setting " + "; ".join(problems)) from None


def _write_report(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {path}")


def _setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per HTTP request from the demo's health polls drowns what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)


# --- subcommands -----------------------------------------------------------------------------


def cmd_broker(args: argparse.Namespace) -> int:
    from streaming.kafka.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port, host=args.host).start()
    print(f"embedded broker on {broker.bootstrap_servers}")
    print(f"export FRAUD_KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}")
    print("Ctrl-C to stop (storage is in memory and is lost on exit)", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while broker.running():
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


def _print_data_warning(warning: str | None) -> None:
    if warning:
        print(f"\n{'!' * 100}\n{warning}\n{'!' * 100}\n", file=sys.stderr)


def _metrics_line(m: dict[str, Any]) -> str:
    def f(v: float | None, d: int = 4) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    return (
        f"AUC {f(m['auc_roc'])}  AP {f(m['average_precision'])}  card precision@100 {f(m['card_precision_at_100'], 3)}"
    )


def cmd_train(args: argparse.Namespace) -> int:
    from model.train import TrainOptions, train

    options = TrainOptions(
        model_type=args.model,
        train_from=args.train_from,
        train_to=args.train_to,
        validation_fraction=args.validation_fraction,
        block_precision=args.block_precision,
        review_precision=args.review_precision,
        seed=args.seed,
        strict=args.strict,
        label_delay_days=args.label_delay_days,
        gap_days=args.gap_days,
        merchant_risk=not args.without_merchant_risk,
        without=tuple(args.without),
        select=args.select,
        candidates=tuple(args.candidates) if args.candidates else TrainOptions.candidates,
        folds=args.folds,
        refit=args.refit,
        baseline=args.baseline,
        assume_timezone=args.assume_timezone,
    )
    print(f"training window {_window_text(args.train_from, args.train_to)}", flush=True)
    meta = train(args.data, args.out, options)
    w, m = meta["training_window"], meta["validation_metrics"]
    _print_data_warning(meta["data_fingerprint"]["warning"])
    print(f"model {meta['version']} ({meta['model_type']}) written to {args.out} in {meta['train_seconds']:.1f} s")
    print(f"data: {meta['data_fingerprint']['invalid_rows']}")
    if meta["disabled_groups"]:
        print(f"without {', '.join(meta['disabled_groups'])}: {len(meta['disabled_features'])} features zeroed")
    print(
        f"fit [{w['fit_from']}, {w['fit_to']}] ({w['fit_rows']} rows), gap {w['gap_days']:.2f} days, "
        f"validation [{w['validation_from']}, {w['validation_to']}] ({w['validation_rows']} rows); "
        f"the model was fitted on {w['model_fitted_on_rows']} rows"
    )
    print(f"validation, all rows:       {_metrics_line(m)}")
    print(f"validation, delay protocol: {_metrics_line(m['protocol'])}")
    if meta.get("baseline"):
        print(f"textbook random forest, all rows:       {_metrics_line(meta['baseline'])}")
        print(f"textbook random forest, delay protocol: {_metrics_line(meta['baseline']['protocol'])}")
    if meta.get("selection"):
        sel = meta["selection"]
        print(f"selection ({len(sel['folds'])} folds, gap {sel['gap_days']:.2f} days; {sel['criterion']}):")
        for name, r in sel["candidates"].items():
            cells = "  ".join(f"{k} {v['mean']:.4f} ± {v['std']:.4f}" for k, v in r.items() if v["mean"] is not None)
            print(f"  {'*' if name == sel['chosen'] else ' '} {name:<7} {cells}")
    print(f"thresholds: review >= {meta['thresholds']['review']:.4f}, block >= {meta['thresholds']['block']:.4f}")
    for note in meta["threshold_targets"]["notes"]:
        print(f"note: {note}")
    _record_training(args.out)
    return 0


def _record_training(artifact_dir: Path) -> None:
    """Log the run in MLflow and register the model (FRAUD_MLFLOW_TRACKING_URI; ``none``: don't)."""
    from model.registry import Registry
    from streaming.settings import RegistrySettings

    settings = RegistrySettings()
    if settings.mlflow_tracking_uri.lower() == "none":
        return
    registry = Registry(settings.mlflow_tracking_uri, settings.registered_model)
    run_id, version = registry.log_training(artifact_dir)
    print(f"registered {registry.name} version {version}; MLflow {registry.run_url(run_id)}")
    print(f"serve it: fraud models promote {version} --reason '...'")


def cmd_models(args: argparse.Namespace) -> int:
    from model.registry import Registry
    from streaming.settings import RegistrySettings

    settings = RegistrySettings()
    registry = Registry(settings.mlflow_tracking_uri, settings.registered_model)
    if args.action == "list":
        versions = registry.versions()
        print(f"{registry.name} in {registry.tracking_uri}")
        if not versions:
            print("no versions yet: `fraud train` registers one")
        for v in versions:
            aliases = ",".join(v.aliases) or "-"
            kind = v.tags.get("fraud.kind", "-")
            print(f"  {v.version:>4}  {aliases:<20} {v.artifact_version:<24} {kind:<8} {v.created_at}  run {v.run_id}")
        return 0
    if args.action == "promote":
        record = registry.promote(args.version, args.reason)
    elif args.action == "rollback":
        record = registry.rollback(args.reason)
    elif args.clear:
        record = registry.set_challenger(None, args.reason)
    else:
        if args.version is None:
            raise UserInputError("give a VERSION or --clear")
        record = registry.set_challenger(args.version, args.reason)
    print(json.dumps(record))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from model.registry import Registry
    from model.retrain import RetrainOptions
    from streaming.retrain import run
    from streaming.settings import KafkaSettings, RegistrySettings

    settings = RegistrySettings()
    registry = Registry(settings.mlflow_tracking_uri, settings.registered_model)
    options = RetrainOptions(
        label_delay_days=args.label_delay_days,
        eval_days=args.eval_days,
        train_days=args.train_days,
        margin=args.margin,
        model_type=args.model,
        seed=args.seed,
    )
    report = run(registry, KafkaSettings(), args.data, args.workdir, options)
    version = report["candidate_registry_version"]
    print(f"candidate {report['candidate']['model_version']}: registered as version {version}")
    for reason in report["reasons"]:
        print(f"  {reason}")
    promoted = report["verdict"] == "promote"
    print(f"verdict: {'promoted to champion' if promoted else 'kept as challenger (shadow)'}; MLflow {report['run']}")
    _write_report(args.json, report)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model.evaluate import EvaluateOptions, evaluate, format_report

    options = EvaluateOptions(
        start=args.start,
        end=args.end,
        gap_days=args.gap_days,
        k=args.k,
        baseline=args.baseline,
        compare_dir=args.compare,
        report_path=args.report,
        scores_path=args.scores,
        assume_timezone=args.assume_timezone,
    )
    report = evaluate(args.model, args.data, options)
    _print_data_warning(report["data"]["warning"])
    print(f"model {report['model_version']} ({report['model_type']})")
    print(format_report(report, args.k))
    if args.report is not None:
        print(f"report written to {args.report}")
    return 0


def cmd_quality(args: argparse.Namespace) -> int:
    from streaming.quality import format_quality, read_quality
    from streaming.settings import KafkaSettings

    print(f"decisions with event time in {_window_text(args.start, args.end)}", flush=True)
    start_ms = None if args.start is None else args.start.value // 1_000_000
    end_ms = None if args.end is None else args.end.value // 1_000_000
    report = read_quality(_settings(KafkaSettings), start_ms, end_ms, timeout_s=args.timeout)
    print(format_quality(report))
    _write_report(args.json, report)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from streaming.settings import WorkerSettings
    from streaming.worker.app import run_worker

    settings = _settings(WorkerSettings)
    _setup_logging(settings.log_level)
    run_worker(settings)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from streaming.api.app import create_api
    from streaming.settings import ApiSettings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = _settings(ApiSettings, **overrides)
    _setup_logging(settings.log_level)
    uvicorn.run(
        create_api(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
    )
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from producers.synthetic import (
        SimConfig,
        generate,
        iter_records,
        iter_transactions,
        labels_for,
        with_label_columns,
    )

    base = dict(seed=args.seed, n_cards=args.cards, n_merchants=args.merchants, days=args.days)
    if args.start is not None:
        base["start"] = args.start.to_pydatetime()
    config = SimConfig(**base, label_delay_days=args.label_delay_days)
    if args.csv is not None:
        frame = generate(config)
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with_label_columns(frame, labels_for(frame, config)).to_csv(args.csv, index=False)
        print(f"wrote {len(frame)} transactions ({int(frame['is_fraud'].sum())} fraud) to {args.csv}")
        return 0

    from prometheus_client import start_http_server

    from model.dataset import load_csv
    from producers.publisher import Progress, Publisher, csv_labels, label_events, rows_from_frame
    from streaming.kafka import clients as kafka
    from streaming.settings import ProducerSettings

    settings = _settings(ProducerSettings)
    labels = None
    kafka.ensure_topics(settings, [settings.transactions_topic, *([settings.labels_topic] if args.labels else [])])
    publisher = Publisher(settings)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_bind, registry=publisher.metrics.registry)
    if args.from_csv is not None:
        dataset = load_csv(args.from_csv)
        if dataset.invalid.count:
            print(f"{args.from_csv}: {dataset.invalid.summary()}", file=sys.stderr)
        rows = rows_from_frame(dataset.frame)
        total = len(dataset.frame) if args.count is None else min(args.count, len(dataset.frame))
        if args.labels:
            found = csv_labels(args.from_csv, dataset.frame, label_delay_days=args.label_delay_days)
            print(f"{args.from_csv}: {found.summary()}", file=sys.stderr)
            labels = found.labels
    elif args.labels:
        frame = generate(config)
        rows = iter_records(frame)
        labels = label_events(labels_for(frame, config))
        total = args.count
    else:
        rows = iter_transactions(config)
        total = args.count
    progress = Progress(total, enabled=not args.quiet)
    try:
        stats = publisher.publish(
            rows,
            labels=labels,
            rate=args.rate,
            count=args.count,
            duration=args.duration,
            speedup=args.speedup,
            progress=progress,
        )
    except KeyboardInterrupt:
        publisher.producer.flush(30)
        stats = publisher.stats
    print(
        json.dumps(
            {
                "topic": settings.transactions_topic,
                "sent": stats.sent,
                "acked": stats.acked,
                "failed": stats.failed,
                "fraud": stats.fraud,
                "labels": stats.labels,
                "labels_acked": stats.labels_acked,
                "labels_failed": stats.labels_failed,
                "seconds": round(stats.seconds, 3),
                "rate_per_s": round(stats.acked / stats.seconds, 1) if stats.seconds else None,
            }
        )
    )
    for err in stats.errors:
        print(f"delivery error: {err}", file=sys.stderr)
    return 1 if stats.failed or stats.labels_failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streaming.demo import DemoOptions, run_demo

    # SIGTERM (docker stop, a supervisor) ends the demo like Ctrl-C: summary, then cleanup.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return run_demo(DemoOptions(count=args.count, rate=args.rate, model_dir=args.model_dir, workdir=args.workdir))
    except KeyboardInterrupt:
        print("interrupted before streaming started; every process stopped", file=sys.stderr)
        return 130


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.report import format_table
    from benchmarks.run import BenchOptions, run_bench

    opts = BenchOptions.quick_profile() if args.quick else BenchOptions()
    overrides = {
        "train_rows": args.rows,
        "limit_count": args.limit_count,
        "naive_count": args.naive_count,
        "worker_count": args.worker_count,
        "latency_rate": args.rate,
        "latency_seconds": args.latency_seconds,
        "producer_linger_ms": args.producer_linger_ms,
        "http_seconds": args.http_seconds,
        "http_client": args.http_client,
        "partitions": args.partitions,
        "bootstrap_servers": args.bootstrap_servers,
        "workdir": args.workdir,
    }
    for name, value in overrides.items():
        if value is not None:
            setattr(opts, name, value)
    for item in args.worker_env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("FRAUD_"):
            raise UserInputError(f"--worker-env wants FRAUD_NAME=VALUE, got {item!r}")
        opts.worker_env[key] = value
    # SIGTERM ends the bench like Ctrl-C: every process it started is stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        report = run_bench(opts)
    except KeyboardInterrupt:
        print("fraud bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError) as exc:  # a phase failed; the message carries its log tail
        print(f"fraud bench: {exc}", file=sys.stderr)
        return 1
    print(format_table(report))
    _write_report(args.json, report)
    return 0


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraud",
        description="fraudstream: real-time fraud scoring of card transactions on Kafka.",
        epilog="Kafka and topic settings come from FRAUD_* environment variables; see README.md. "
        "Exit status: 0 done, 1 failed, 2 bad input (a file, an option or a setting), 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (in memory) for local use")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=9092, help="port to listen on (default %(default)s)")
    p.set_defaults(func=cmd_broker)

    window_dates = (
        "A bare date (2026-02-24) means that whole UTC day: as an end it is included; a timestamp "
        "(2026-02-24T12:00:00+01:00) is taken as given, start inclusive, end exclusive."
    )
    p = sub.add_parser(
        "train",
        help="train a model from a labelled CSV and write a versioned artifact",
        description="Fit on the start of the training window, leave a delay gap, validate (and set thresholds) on "
        "its latest stretch. " + window_dates,
    )
    p.add_argument("--data", type=Path, required=True, help="labelled CSV (see the CSV contract in the README)")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    p.add_argument("--train-from", type=_timestamp, help="first day trained on; earlier rows are history only")
    p.add_argument("--train-to", type=_window_end, help="last day trained on (a date is included whole)")
    p.add_argument(
        "--model",
        choices=("hgb", "rf", "et", "logreg"),
        default="hgb",
        help="gradient-boosted trees (default), random forest, extra trees or logistic regression",
    )
    p.add_argument(
        "--select",
        action="store_true",
        help="choose the estimator by prequential validation (--folds windows shifted back in time, each after a "
        "delay gap; mean ± std), then refit it on the whole window; several fits per candidate, so much slower",
    )
    p.add_argument(
        "--candidates",
        nargs="+",
        choices=("hgb", "rf", "et", "logreg"),
        help="estimators --select compares (default: all four)",
    )
    p.add_argument(
        "--folds", type=_positive_int, default=3, help="validation windows of --select (default %(default)s)"
    )
    p.add_argument(
        "--refit",
        action="store_true",
        help="after validation, refit on the whole window (thresholds stay the validation's; --select always "
        "does): the model then learns the latest days too, at the cost of a second fit",
    )
    p.add_argument(
        "--validation-fraction",
        type=_share,
        default=0.2,
        help="length of a validation window, as a share of the training window's span (default %(default)s)",
    )
    p.add_argument(
        "--gap-days",
        type=_non_negative_float,
        help="days left out between fitting and validation (default: --label-delay-days; shortened on a window too "
        "short to keep half of it for fitting)",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also fit the textbook random forest (15 standard features) on the same split and report it",
    )
    p.add_argument(
        "--block-precision",
        type=_precision,
        default=0.8,
        help="precision the block threshold must reach on validation (default %(default)s)",
    )
    p.add_argument(
        "--review-precision",
        type=_precision,
        default=0.3,
        help="precision the review threshold must reach on validation (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=7, help="random seed of the estimator (default %(default)s)")
    p.add_argument("--strict", action="store_true", help="refuse the CSV if any row is invalid")
    p.add_argument(
        "--assume-timezone",
        type=_zone,
        metavar="ZONE",
        help="read CSV timestamps without a zone as wall-clock time in ZONE (Europe/Paris, UTC, +02:00)",
    )
    p.add_argument(
        "--label-delay-days",
        type=_non_negative_float,
        default=7.0,
        help="when a fraud row without labelled_at became known, in days after it (default %(default)s)",
    )
    p.add_argument(
        "--without-merchant-risk",
        action="store_true",
        help="train without the merchant risk and known-fraud features (a model to pass to `evaluate --compare`); "
        "the same as --without merchant-risk",
    )
    p.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="GROUP",
        help="train without a feature group, zeroed in training and serving (repeatable): merchant-activity "
        "(label-free merchant counts, activity against its baseline, new-card share), merchant-fraud-rates, "
        "merchant-known-frauds, card-labels (the card's known frauds), or merchant-risk (all four)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="score a labelled CSV over a time range: plain metrics and the delay protocol",
        description="Scores the range with every earlier row as history. Beside the plain metrics, the delay "
        "protocol: the range starts a gap after training, each day leaves out cards already known to be "
        "compromised (fraud in training, or labelled before that day), and card precision@k is counted per day "
        "with the cards found on earlier days removed. " + window_dates,
    )
    p.add_argument("--model", type=Path, required=True, help="artifact directory written by `fraud train`")
    p.add_argument("--data", type=Path, required=True, help="labelled CSV")
    p.add_argument(
        "--from",
        dest="start",
        type=_timestamp,
        help="first day evaluated (default: the end of training plus the gap, at the next UTC midnight)",
    )
    p.add_argument("--to", dest="end", type=_window_end, help="last day evaluated (a date is included whole)")
    p.add_argument(
        "--gap-days",
        type=_non_negative_float,
        help="delay gap between training and test (default: the model's label delay); sets the default --from",
    )
    p.add_argument(
        "--k", type=_positive_int, default=100, help="cards investigated per day for card precision@k (default 100)"
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also fit the textbook random forest (15 standard features) on the model's training window and "
        "report it on the same rows",
    )
    p.add_argument(
        "--compare",
        type=Path,
        metavar="DIR",
        help="a second artifact (e.g. trained --without-merchant-risk) reported on the same rows under 'compare'",
    )
    p.add_argument("--report", type=Path, help="write the metrics JSON here")
    p.add_argument("--scores", type=Path, help="write transaction_id,score,decision CSV here")
    p.add_argument(
        "--assume-timezone",
        type=_zone,
        metavar="ZONE",
        help="read CSV timestamps without a zone as wall-clock time in ZONE (Europe/Paris, UTC, +02:00)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "quality",
        help="precision/recall per model version and threshold: decisions joined to labels from the topics "
        "(and champion against challenger on the same transactions, from the shadow decisions topic)",
        description=window_dates,
    )
    p.add_argument("--from", dest="start", type=_timestamp, help="first decision event time included (inclusive)")
    p.add_argument("--to", dest="end", type=_window_end, help="last day of decisions (a date is included whole)")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.add_argument(
        "--timeout", type=_positive_float, default=30.0, help="seconds to reach the topics' ends (default %(default)s)"
    )
    p.set_defaults(func=cmd_quality)

    from streaming.settings import ApiSettings, ProducerSettings, RegistrySettings, WorkerSettings, env_help

    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "models",
        help="the registered models: list, promote, rollback, challenger (MLflow; FRAUD_MLFLOW_TRACKING_URI)",
        description="Versions of the registered model and its aliases: `champion` serves, `challenger` is "
        "scored in shadow. Every change is recorded in MLflow with who (FRAUD_ACTOR or the login), when and why.",
        epilog=env_help(RegistrySettings),
        formatter_class=raw,
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("list", help="every version, newest first, with its aliases")
    a = actions.add_parser("promote", help="make VERSION the champion (the one it replaces is kept for rollback)")
    a.add_argument("version", help="registered version number")
    a.add_argument("--reason", required=True, help="why (recorded in MLflow)")
    a = actions.add_parser("rollback", help="champion back to the version the current champion replaced")
    a.add_argument("--reason", required=True, help="why (recorded in MLflow)")
    a = actions.add_parser("challenger", help="score VERSION in shadow beside the champion (--clear: stop)")
    a.add_argument("version", nargs="?", help="registered version number")
    a.add_argument("--clear", action="store_true", help="remove the challenger alias")
    a.add_argument("--reason", required=True, help="why (recorded in MLflow)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "retrain",
        help="train a candidate from the topics (or a CSV), gate it against the champion, register it",
        description="Builds the training set from the transactions and labels topics (or --data), trains a "
        "candidate on a recent window, scores candidate and champion on the latest window whose labels have "
        "matured, registers the candidate as challenger and promotes it only when it beats the champion's "
        "average precision by --margin without losing recall at the block precision target.",
        epilog=env_help(RegistrySettings),
        formatter_class=raw,
    )
    p.add_argument("--data", type=Path, help="a labelled CSV instead of the topics")
    p.add_argument(
        "--label-delay-days",
        type=_positive_float,
        default=7.0,
        help="labels older than this have matured: the evaluation window ends this long before the newest "
        "transaction (default %(default)s)",
    )
    p.add_argument("--eval-days", type=_positive_float, default=7.0, help="evaluation window (default %(default)s)")
    p.add_argument(
        "--train-days", type=_positive_float, default=21.0, help="training window before it (default %(default)s)"
    )
    p.add_argument(
        "--margin",
        type=float,
        default=0.01,
        help="average precision the candidate must gain over the champion to be promoted (default %(default)s)",
    )
    p.add_argument("--model", choices=("hgb", "logreg"), default="hgb", help="candidate estimator (default hgb)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the estimator (default %(default)s)")
    p.add_argument("--workdir", type=Path, help="keep the training set and the candidate here")
    p.add_argument("--json", type=Path, help="also write the gate's report as JSON here")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser(
        "worker",
        help="run the stream worker (settings from FRAUD_* variables)",
        description="Consume transactions, keep card state, score in batches, publish decisions.",
        epilog=env_help(WorkerSettings),
        formatter_class=raw,
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "api",
        help="run the HTTP API: POST /predict, /health, /ready, /metrics, /docs",
        epilog=env_help(ApiSettings),
        formatter_class=raw,
    )
    p.add_argument("--host", help="interface (default FRAUD_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default FRAUD_PORT or 8000)")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser(
        "produce",
        help="generate synthetic transactions to Kafka or CSV, or replay a CSV",
        epilog=env_help(ProducerSettings),
        formatter_class=raw,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--csv", type=Path, help="write a labelled CSV (with is_fraud) instead of publishing")
    src.add_argument("--from-csv", type=Path, help="replay this CSV onto the topic in timestamp order")
    p.add_argument("--rate", type=_positive_float, help="messages per second (default: as fast as possible)")
    p.add_argument(
        "--speedup", type=_positive_float, help="with --from-csv: replay at event-time speed times this factor"
    )
    p.add_argument("--count", type=int, help="stop after this many messages")
    p.add_argument("--duration", type=_positive_float, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=7, help="simulation seed (default %(default)s)")
    p.add_argument("--cards", type=_positive_int, default=2000, help="simulated cards (default %(default)s)")
    p.add_argument("--merchants", type=_positive_int, default=400, help="simulated merchants (default %(default)s)")
    p.add_argument(
        "--days", type=_positive_float, default=30.0, help="simulated days of event time (default %(default)s)"
    )
    p.add_argument("--start", type=_timestamp, help="event time of the simulation start (default 2026-01-01)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--labels",
        action="store_true",
        help="also publish label events to the labels topic, each when it became known among the transactions "
        "(synthetic: simulated chargebacks/investigations; --from-csv: the CSV's labelled_at and label_source)",
    )
    p.add_argument(
        "--label-delay-days",
        type=_positive_float,
        default=7.0,
        help="median delay of simulated fraud labels, and the delay of a replayed fraud row's label when its "
        "labelled_at is empty (default %(default)s)",
    )
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("demo", help="embedded broker + model + worker + API + traffic, then a summary")
    p.add_argument(
        "--count", type=int, default=10_000, help="transactions to stream; 0 = until Ctrl-C (default %(default)s)"
    )
    p.add_argument("--rate", type=_positive_float, default=500.0, help="transactions per second (default %(default)s)")
    p.add_argument(
        "--model-dir",
        type=Path,
        default=Path("artifacts/model"),
        help="model artifact; trained on fresh synthetic data if missing (default %(default)s)",
    )
    p.add_argument(
        "--workdir", type=Path, default=Path("artifacts/demo"), help="logs and generated data (default %(default)s)"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "bench",
        help="measure throughput, latency, /predict and training against a Python limit and a naive baseline",
        description="Embedded broker, the same generated transactions for every phase; prints a table. "
        "Defaults are the full run (several minutes); --quick shrinks every phase.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes and short phases (well under 2 minutes)")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.add_argument("--rows", type=int, help="training rows, at least (default 1,000,000; quick 20,000)")
    p.add_argument("--limit-count", type=int, help="transactions for the limit loop (default 200,000)")
    p.add_argument("--naive-count", type=int, help="transactions for the naive Faust agent (default 3,000)")
    p.add_argument("--worker-count", type=int, help="pre-filled transactions the worker drains (default 30,000)")
    p.add_argument("--rate", type=_positive_float, help="offered rate of the latency phase, tx/s (default 2000)")
    p.add_argument("--latency-seconds", type=_positive_float, help="length of the latency phase (default 20)")
    p.add_argument(
        "--producer-linger-ms",
        type=_non_negative_float,
        help="linger.ms of the latency phase's producer, counted in the latency (default 20)",
    )
    p.add_argument("--http-seconds", type=_positive_float, help="seconds per /predict measurement (default 10)")
    p.add_argument(
        "--http-client",
        choices=("httpx", "aiohttp"),
        help="async client driving /predict (default aiohttp; httpx saturates a core at ~500 req/s)",
    )
    p.add_argument("--partitions", type=int, help="partitions of every bench topic (default 4)")
    p.add_argument("--bootstrap-servers", help="use this Kafka instead of starting the embedded broker")
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="FRAUD_NAME=VALUE",
        help="extra setting for the worker under test (repeatable)",
    )
    p.add_argument("--workdir", type=Path, help="keep logs and data here (default: a temporary directory, removed)")
    p.set_defaults(func=cmd_bench)

    cli_admin.add_parsers(sub, _timestamp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in ("worker", "api"):
        _setup_logging("info" if args.command in ("train", "demo") else "warning")
    try:
        return int(args.func(args))
    except UserInputError as exc:  # a bad file, option or setting: the user can fix it
        print(f"fraud {args.command}: {exc}", file=sys.stderr)
        return 2
    except FraudStreamError as exc:  # raised on purpose with a message for a person: not a bug
        print(f"fraud {args.command}: {exc}", file=sys.stderr)
        return 1
    # Anything else is a bug: Python prints its traceback and exits with status 1.


if __name__ == "__main__":
    sys.exit(main())
