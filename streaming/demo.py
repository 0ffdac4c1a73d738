"""``fraud demo``: the whole system on one machine, with no Docker and no external services.

Starts the embedded broker, trains a model on fresh synthetic data if none exists, starts the
worker and the API as their own processes, streams synthetic traffic (with a few malformed
messages, to show the dead-letter path), follows the decisions live, and prints a summary whose
last line is JSON. Every process it started is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from confluent_kafka import TopicPartition

from model.features import epoch_ms
from producers.publisher import Progress, Publisher, label_events
from producers.synthetic import SimConfig, generate, iter_records, labels_for, with_label_columns
from streaming.api.security import SCOPES, key_line, new_key
from streaming.children import Children, free_port, python_module, wait_http
from streaming.kafka import clients as kafka
from streaming.kafka.broker import EmbeddedBroker
from streaming.settings import ProducerSettings

#: Every this many transactions the demo also sends one malformed message.
BAD_EVERY = 1000
BAD_MESSAGES = (
    b"{not json",
    b'{"transaction_id": "bad-amount", "timestamp": "2026-02-01T10:00:00Z", "card_id": "c", '
    b'"merchant_id": "m", "amount": -5, "currency": "USD"}',
    b'{"transaction_id": "no-card", "timestamp": "2026-02-01T10:00:00Z", "merchant_id": "m", '
    b'"amount": 5, "currency": "USD"}',
    b"[1, 2, 3]",
)
TRAIN_CONFIG = SimConfig(seed=7, days=45.0, start=datetime(2026, 1, 1, tzinfo=UTC))
# Labels in the demo come after a day rather than a week: its minutes of traffic cover a few days
# of event time, and the feedback loop should visibly close within them.
TRAFFIC_CONFIG = SimConfig(seed=11, days=30.0, start=datetime(2026, 2, 15, tzinfo=UTC), label_delay_days=1.0)


#: How long the demo waits for the worker and the API to be ready.
READY_SECONDS = 240.0


@dataclass
class DemoOptions:
    count: int = 10_000
    rate: float = 500.0
    model_dir: Path = Path("artifacts/model")
    workdir: Path = Path("artifacts/demo")


@dataclass
class Observed:
    """What the demo's consumer has seen on the output topics (updated from its thread)."""

    tx_ts: dict[str, int] = field(default_factory=dict)
    decision_ts: dict[str, int] = field(default_factory=dict)
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=lambda: {"allow": 0, "review": 0, "block": 0})
    dead_letters: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def latencies_ms(self) -> np.ndarray:
        with self.lock:
            pairs = [(self.decision_ts[t], self.tx_ts[t]) for t in self.decision_ts if t in self.tx_ts]
        return np.array([d - t for d, t in pairs], dtype=np.float64)


def _follow(settings: ProducerSettings, observed: Observed, stop: threading.Event) -> None:
    """Read transactions, decisions and dead letters from the beginning of the demo's topics."""
    consumer = kafka.consumer(settings, f"fraud-demo-{os.getpid()}")
    topics = [settings.transactions_topic, settings.decisions_topic, settings.dlq_topic]
    meta = consumer.list_topics(timeout=10)
    consumer.assign(
        [TopicPartition(t, p, 0) for t in topics for p in (meta.topics[t].partitions if t in meta.topics else [])]
    )
    try:
        while not stop.is_set():
            for msg in consumer.consume(1000, 0.2):
                if msg.error():
                    continue
                ts = msg.timestamp()[1]
                topic = msg.topic()
                with observed.lock:
                    if topic == settings.dlq_topic:
                        observed.dead_letters += 1
                        continue
                    try:
                        body = orjson.loads(msg.value() or b"")
                        tx_id = body["transaction_id"]
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        continue  # one of the demo's malformed transactions
                    if topic == settings.transactions_topic:
                        observed.tx_ts[tx_id] = ts
                    elif tx_id not in observed.decisions:  # redeliveries are idempotent by id
                        observed.decision_ts[tx_id] = ts
                        observed.decisions[tx_id] = body
                        observed.outcomes[body["decision"]] += 1
    finally:
        consumer.close()


def _ensure_model(options: DemoOptions) -> None:
    from model.artifact import load_artifact
    from model.errors import ModelLoadError
    from model.train import TrainOptions, train

    if (options.model_dir / "metadata.json").exists():
        try:
            load_artifact(options.model_dir)
            print(f"using model in {options.model_dir}")
            return
        except ModelLoadError as exc:  # say, written by an older version with other features
            print(f"retraining: the model in {options.model_dir} cannot be used: {exc}")
    data = options.workdir / "train.csv"
    print(f"no model in {options.model_dir}: generating {TRAIN_CONFIG.days:.0f} days of synthetic traffic ...")
    frame = generate(TRAIN_CONFIG)
    with_label_columns(frame, labels_for(frame, TRAIN_CONFIG)).to_csv(data, index=False)
    print(f"training on {len(frame)} transactions ({int(frame['is_fraud'].sum())} fraud) from {data} ...")
    meta = train(data, options.model_dir, TrainOptions())
    m = meta["validation_metrics"]
    print(f"model {meta['version']}: validation AUC {m['auc_roc']:.3f}, average precision {m['average_precision']:.3f}")


def _announce_model(model_dir: Path) -> None:
    """Which model serves and where its MLflow run is: the registered version of this artifact
    in the tracking store (``FRAUD_MLFLOW_TRACKING_URI``, by default the embedded SQLite one under
    ``artifacts/mlflow``), registered now if it is not yet (``none``: MLflow left out)."""
    from model.artifact import load_artifact
    from model.registry import TAG_SHA, Registry
    from streaming.settings import RegistrySettings

    metadata = load_artifact(model_dir).metadata
    settings = RegistrySettings()
    print(f"serving model {metadata['version']} ({metadata['model_type']}) from {model_dir}")
    if settings.mlflow_tracking_uri.lower() == "none":
        return
    registry = Registry(settings.mlflow_tracking_uri, settings.registered_model)
    known = [v for v in registry.versions() if v.tags.get(TAG_SHA) == metadata["model_sha256"]]
    if known:
        version, run_id = known[0].version, known[0].run_id
    else:
        run_id, version = registry.log_training(model_dir)
    print(f"  registered as {registry.name} version {version}; MLflow {registry.run_url(run_id)}")


def run_demo(options: DemoOptions) -> int:
    options.workdir.mkdir(parents=True, exist_ok=True)
    _ensure_model(options)
    _announce_model(options.model_dir)
    # Each demo run's logs replace the previous run's.
    procs = Children(options.workdir, append=False)
    broker = EmbeddedBroker(log_file=options.workdir / "broker.log")
    stop = threading.Event()
    follower: threading.Thread | None = None
    publisher: Publisher | None = None
    observed = Observed()
    sent_valid, sent_bad = 0, 0
    sent: dict[str, dict[str, Any]] = {}  # valid transactions by id, labels included
    try:
        broker.start()
        print(f"embedded broker on {broker.bootstrap_servers}")
        settings = ProducerSettings(kafka_bootstrap_servers=broker.bootstrap_servers, metrics_port=0)
        kafka.ensure_topics(settings, kafka.project_topics(settings))
        web_port, api_port, metrics_port = free_port(), free_port(), free_port()
        api_key = new_key()
        env = {
            **os.environ,
            "FRAUD_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "FRAUD_MODEL_DIR": str(options.model_dir),
            # The model just checked or trained, never a registry alias from the caller's shell.
            "FRAUD_MODEL_URI": "",
            "FRAUD_WEB_PORT": str(web_port),
            "FRAUD_METRICS_PORT": str(metrics_port),
            "FRAUD_DATA_DIR": str(options.workdir / "worker-data"),
            "FRAUD_PORT": str(api_port),
            # The demo's own key, every scope; a deployment lists its callers' keys instead.
            "FRAUD_API_KEYS": key_line("demo", api_key, SCOPES),
        }
        # SIGTERM on the way out: the worker commits and leaves the group.
        worker = procs.start("worker", python_module("streaming.cli", "worker"), env)
        api = procs.start("api", python_module("streaming.cli", "api"), env)
        # Generous: a worker on a busy machine may take a minute to import and join its group.
        wait_http(f"http://127.0.0.1:{web_port}/ready", worker, timeout=READY_SECONDS)
        wait_http(f"http://127.0.0.1:{api_port}/ready", api, timeout=READY_SECONDS)
        print(f"worker (state view :{web_port}) and API (http://127.0.0.1:{api_port}/docs) are up")
        print(f"API key for this demo (all scopes): {api_key}")
        print(f"analyst console: http://127.0.0.1:{api_port}/console (sign in with the key above)")
        follower = threading.Thread(target=_follow, args=(settings, observed, stop), daemon=True)
        follower.start()

        publisher = Publisher(settings)
        count = options.count or None
        progress = Progress(count, enabled=True)
        print(f"streaming {count or 'unbounded'} transactions at {options.rate:.0f}/s (Ctrl-C to stop) ...")
        traffic = generate(TRAFFIC_CONFIG)
        # The feedback loop: each label goes out when it became known in event time (customer
        # confirmations within hours, investigations within days, chargebacks later).
        labels = label_events(labels_for(traffic, TRAFFIC_CONFIG))
        next_label = 0
        publisher.wait_ready()  # the first records would otherwise wait for the producer id
        start = time.monotonic()
        try:
            for i, row in enumerate(iter_records(traffic)):
                if count is not None and i >= count:
                    break
                wait = i / options.rate - (time.monotonic() - start)
                if wait > 0:
                    publisher.idle(wait)
                now = epoch_ms(datetime.fromisoformat(row["timestamp"]))
                while next_label < len(labels) and epoch_ms(labels[next_label].labelled_at) <= now:
                    publisher.send_label(labels[next_label])
                    next_label += 1
                publisher.send(row)
                sent[row["transaction_id"]] = row
                sent_valid += 1
                if (i + 1) % BAD_EVERY == 0:
                    publisher.producer.produce(
                        settings.transactions_topic, key=b"bad", value=BAD_MESSAGES[sent_bad % len(BAD_MESSAGES)]
                    )
                    sent_bad += 1
                with observed.lock:
                    decided, dlq = len(observed.decisions), observed.dead_letters
                progress.update(sent_valid, f"decided {decided}  dead letters {dlq}")
            publisher.producer.flush(30)
            # Drain: wait for every valid transaction's decision and every dead letter.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with observed.lock:
                    decided, dlq = len(observed.decisions), observed.dead_letters
                progress.update(sent_valid, f"decided {decided}  dead letters {dlq}")
                if decided >= sent_valid and dlq >= sent_bad:
                    break
                time.sleep(0.2)
        except KeyboardInterrupt:
            print("\ninterrupted: draining for 5 s ...", file=sys.stderr)
            publisher.producer.flush(5)
            time.sleep(5)
        progress.update(sent_valid, f"decided {len(observed.decisions)}", force=True)
        progress.close()
        parity = _predict_check(api_port, api_key, observed, sent)
        quality = _live_quality(metrics_port, next_label)
    finally:
        stop.set()
        if follower is not None:
            follower.join(timeout=5)
        # Dropped before the broker stops: its producer (the last reference) then disconnects
        # instead of logging failed reconnections to a broker that is gone.
        publisher = None
        procs.stop_all()
        broker.stop()
    return _summary(observed, sent_valid, sent_bad, sent, parity, quality)


def _predict_check(api_port: int, api_key: str, observed: Observed, sent: dict[str, dict[str, Any]]) -> str:
    """Ask /predict about a transaction the stream already decided; the scores must agree."""
    from model.schemas import Transaction

    with observed.lock:
        flagged = [d for d in observed.decisions.values() if d["decision"] != "allow"]
        sample = (flagged or list(observed.decisions.values()))[:1]
    if not sample:
        return "no decision to compare"
    tx_id = sample[0]["transaction_id"]
    body = Transaction.model_validate(sent[tx_id]).model_dump(mode="json")
    headers = {"Authorization": f"Bearer {api_key}"}
    resp = httpx.post(f"http://127.0.0.1:{api_port}/predict", json=body, headers=headers, timeout=5)
    if resp.status_code != 200:
        return f"/predict on {tx_id}: HTTP {resp.status_code}: {resp.text[:200]}"
    api_score = float(resp.json()["score"])
    same = abs(api_score - sample[0]["score"]) < 1e-9
    return (
        f"/predict on {tx_id}: {api_score:.6f} vs stream {sample[0]['score']:.6f} ({'equal' if same else 'DIFFERENT'})"
    )


def _live_quality(metrics_port: int, labels_sent: int) -> dict[str, Any]:
    """The worker's own view of the labels: how many it applied and joined, live precision/recall."""
    deadline = time.monotonic() + 10  # the worker refreshes these gauges every 5 s
    out: dict[str, Any] = {"labels_sent": labels_sent}
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(("fraud_labels_total{", "fraud_labelled_decisions{", "fraud_live_")):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        out["labels_applied"] = int(sum(v for k, v in values.items() if k.startswith("fraud_labels_total")))
        out["labels_joined"] = int(sum(v for k, v in values.items() if k.startswith("fraud_labelled_decisions")))
        for k, v in values.items():
            if k.startswith("fraud_live_") and 'threshold="review"' in k:
                out["live_" + k.split("{")[0].removeprefix("fraud_live_") + "_review"] = round(v, 3)
        # Every label of the demo is for a transaction the worker decided before: all join.
        if out["labels_applied"] >= labels_sent and out["labels_joined"] >= out["labels_applied"]:
            break
        time.sleep(1)
    return out


def _summary(
    observed: Observed,
    sent_valid: int,
    sent_bad: int,
    sent: dict[str, dict[str, Any]],
    parity: str,
    quality: dict[str, Any],
) -> int:
    labels = {t: int(row.get("is_fraud", 0)) for t, row in sent.items()}
    lat = observed.latencies_ms()
    decided = len(observed.decisions)
    blocked = observed.outcomes["block"]
    flagged = [t for t, d in observed.decisions.items() if d["decision"] != "allow"]
    frauds = [t for t, y in labels.items() if y]
    caught = sum(1 for t in flagged if labels.get(t))
    print("\n=== fraudstream demo summary ===")
    print(f"transactions sent: {sent_valid} valid + {sent_bad} malformed")
    print(f"decisions: {decided}  {observed.outcomes}")
    print(f"dead letters: {observed.dead_letters}")
    print(
        f"labelled fraud in traffic: {len(frauds)}; flagged (review or block): {len(flagged)}, of which fraud: {caught}"
    )
    print(parity)
    print(
        f"labels sent while streaming: {quality['labels_sent']}; applied by the worker: "
        f"{quality.get('labels_applied')}; joined to its decisions: {quality.get('labels_joined')}; live "
        f"precision/recall at review: {quality.get('live_precision_review')} / {quality.get('live_recall_review')}"
    )
    summary = {
        "transactions": sent_valid + sent_bad,
        "decisions": decided,
        "dead_letters": observed.dead_letters,
        "fraud_rate": round(blocked / decided, 6) if decided else 0.0,
        "p50_latency_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "p99_latency_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
        "labels": quality["labels_sent"],
        "labels_joined": quality.get("labels_joined"),
    }
    print(json.dumps(summary), flush=True)
    return 0 if decided >= sent_valid and observed.dead_letters >= sent_bad else 1
