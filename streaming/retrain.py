"""``fraud retrain``: a training set from the topics (or a CSV), a candidate, the gate, the registry.

From the topics: every valid transaction (as the worker would accept it: ``check_record``, key
and timestamp included) and the label events, the latest label of a transaction by its
``labelled_at`` winning (a chargeback withdrawn reverts a fraud label). A label counts only when
it became known by the newest transaction's time, the data's "now"; a transaction without one is
taken as genuine. The set is written as a labelled CSV (the contract of ``model/dataset.py``), the
same input as ``fraud train``, and kept in the work directory with the candidate.

Then (model/retrain.py): the candidate, trained on the recent window, and the champion are scored
on the latest matured window; the candidate is registered (run kind ``retrain``, with the gate's
numbers and verdict) and set as the challenger, and promoted only when the gate says so. A failure
is recorded as a failed ``retrain`` run, which the worker's retraining metrics count.
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from confluent_kafka import Message

from model.artifact import load_artifact
from model.dataset import DatasetError, load_csv
from model.features import epoch_ms
from model.registry import CHAMPION, Registry
from model.retrain import PROMOTE, RetrainOptions, compare, train_candidate, windows
from model.schemas import WIRE_FIELDS, Label, Transaction
from model.scoring import Scorer
from streaming.kafka import clients as kafka
from streaming.scoring.validation import Rejected, check_record, label_of_record, parse_transaction
from streaming.settings import KafkaSettings

log = logging.getLogger(__name__)

#: The training set's CSV: the wire fields, then the label columns the CSV loader reads.
COLUMNS = (*WIRE_FIELDS, "is_fraud", "labelled_at")


def csv_from_topics(settings: KafkaSettings, out: Path, timeout_s: float = 120.0) -> dict[str, int]:
    """Write the topics' transactions with their labels as a labelled CSV; returns counts."""
    txs: dict[str, Transaction] = {}
    labels: dict[str, Label] = {}
    skipped = {"transactions": 0, "labels": 0}

    def on_transaction(msg: Message) -> None:
        tx = parse_transaction(msg.value())
        if not isinstance(tx, Rejected):
            tx = check_record(tx, msg.key(), msg.timestamp()[1]) or tx
        if isinstance(tx, Rejected) or tx.transaction_id in txs:
            skipped["transactions"] += 1
            return
        txs[tx.transaction_id] = tx

    def on_label(msg: Message) -> None:
        label = label_of_record(msg.value(), msg.key())
        if isinstance(label, Rejected):
            skipped["labels"] += 1
            return
        known = labels.get(label.transaction_id)
        if known is None or label.labelled_at >= known.labelled_at:
            labels[label.transaction_id] = label

    kafka.read_to_end(
        settings,
        {settings.transactions_topic: on_transaction, settings.labels_topic: on_label},
        timeout_s=timeout_s,
        idle_s=2.0,
    )
    if not txs:
        raise DatasetError(f"no valid transactions on {settings.transactions_topic}")
    now = max(epoch_ms(tx.timestamp) for tx in txs.values())
    used = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for tx in sorted(txs.values(), key=lambda t: epoch_ms(t.timestamp)):
            label = labels.get(tx.transaction_id)
            if label is not None and epoch_ms(label.labelled_at) > now:
                label = None  # not known yet at the data's "now"
            used += label is not None
            writer.writerow(
                [
                    tx.transaction_id,
                    tx.timestamp.isoformat(),
                    tx.card_id,
                    tx.merchant_id,
                    repr(tx.amount),
                    tx.currency,
                    tx.merchant_category or "",
                    tx.channel or "",
                    tx.country or "",
                    int(label.is_fraud) if label is not None else 0,
                    label.labelled_at.isoformat() if label is not None else "",
                ]
            )
    fraud = sum(1 for t, lab in labels.items() if t in txs and lab.is_fraud and epoch_ms(lab.labelled_at) <= now)
    return {"transactions": len(txs), "labels": len(labels), "labels_used": used, "fraud": fraud, **{
        f"skipped_{k}": v for k, v in skipped.items()
    }}  # fmt: skip


def retrain(registry: Registry, data: Path, workdir: Path, options: RetrainOptions) -> dict[str, Any]:
    """Candidate, gate, registration; the report (also recorded in the candidate's run)."""
    frame = load_csv(data).frame
    w = windows(frame, options)
    candidate_dir = workdir / "candidate"
    train_candidate(data, candidate_dir, w, options)
    candidate = Scorer(load_artifact(candidate_dir))
    candidate.self_check()
    champion_mv = registry.alias(CHAMPION)
    champion = Scorer(registry.load(champion_mv)) if champion_mv is not None else None
    report = compare(data, candidate, champion, w, options)
    report["champion_registry_version"] = str(champion_mv.version) if champion_mv is not None else None
    gate_metrics = {
        f"gate.{role}.{key}": float(value)
        for role in ("candidate", "champion")
        for key, value in report.get(role, {}).items()
        if isinstance(value, int | float)
    }
    params = {f"retrain.{k}": v for k, v in vars(options).items()} | {"retrain.data": str(data)}
    run_id, version = registry.log_training(
        candidate_dir, kind="retrain", extra_params=params, extra_metrics=gate_metrics
    )
    registry.client.set_tag(run_id, "fraud.gate.verdict", report["verdict"])
    registry.client.log_text(run_id, json.dumps(report, indent=2), "gate.json")
    summary = "; ".join(report["reasons"])
    registry.set_challenger(version, f"retrain candidate ({summary})", who="fraud retrain")
    if report["verdict"] == PROMOTE:
        registry.promote(version, f"retrain gate passed: {summary}", who="fraud retrain")
    return {**report, "candidate_registry_version": version, "run_id": run_id, "run": registry.run_url(run_id)}


def run(
    registry: Registry, settings: KafkaSettings, data: Path | None, workdir: Path | None, options: RetrainOptions
) -> dict[str, Any]:
    """``fraud retrain``: the training set (topics unless ``data``), then :func:`retrain`; a
    failure is recorded in the registry before it is raised."""
    with tempfile.TemporaryDirectory(prefix="fraud-retrain-") as tmp:
        work = workdir or Path(tmp)
        try:
            counts: dict[str, int] = {}
            if data is None:
                data = work / "training.csv"
                counts = csv_from_topics(settings, data)
                log.info("training set from the topics: %s", counts)
            report = retrain(registry, data, work, options)
        except Exception as exc:
            registry.record_failure("retrain", f"{type(exc).__name__}: {exc}")
            raise
    return {**report, "training_set": counts}
