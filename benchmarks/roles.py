"""The measured programs of ``fraud bench``, each run in its own process as
``python -m benchmarks ROLE``: ``limit`` (the practical limit of Python scoring), ``naive`` (a
plain Faust agent, the baseline) and ``noop`` (a FastAPI route that does no work). The HTTP load
driver is :mod:`benchmarks.load`.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from model.features import CATEGORY_COLUMN, CHANNEL_COLUMN, COLUMN, FEATURE_NAMES, MERCHANT_LABEL_AGE_CAP_DAYS

# Module level: FastAPI resolves the no-op route's annotations from the module's globals.
from model.schemas import Decision, Transaction

#: The worker's default batch size; the limit loop scores batches of the same size.
BATCH = 500

# --- shared by the limit loop and the naive agent -----------------------------------------------


def raw_features(txs: Sequence[dict[str, Any]]) -> np.ndarray:
    """The transaction-only features of ``model.features`` from parsed wire dicts, history
    features left at zero: what scoring costs without state, for the limit and the baseline.

    The local hour and weekday come straight from the ISO string (its wall clock is the local
    time), which is what a hand-written scorer would do; no validation, no pandas.
    """
    n = len(txs)
    out = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float64)
    if n == 0:
        return out
    amount = np.fromiter((float(t["amount"]) for t in txs), dtype=np.float64, count=n)
    stamps = [str(t["timestamp"]) for t in txs]
    hour = np.fromiter((int(s[11:13]) for s in stamps), dtype=np.int64, count=n)
    days = np.array([s[:10] for s in stamps], dtype="datetime64[D]").astype(np.int64)
    # No known fraud at the merchant reads as the longest age the feature tracks, not zero days.
    out[:, COLUMN["merchant_days_since_known_fraud"]] = MERCHANT_LABEL_AGE_CAP_DAYS
    out[:, COLUMN["amount"]] = amount
    out[:, COLUMN["log_amount"]] = np.log1p(amount)
    out[:, COLUMN["hour"]] = hour
    out[:, COLUMN["is_night"]] = hour < 6
    out[:, COLUMN["is_weekend"]] = (days + 3) % 7 >= 5  # 1970-01-01 was a Thursday
    other = COLUMN["category_other"]
    for i, t in enumerate(txs):
        channel = CHANNEL_COLUMN.get(str(t.get("channel") or "").lower())
        if channel is not None:
            out[i, channel] = 1.0
        out[i, CATEGORY_COLUMN.get(str(t.get("merchant_category") or "").lower(), other)] = 1.0
    return out


def _decision_bytes(tx: dict[str, Any], score: float, outcome: str, version: str) -> bytes:
    return orjson.dumps(
        {
            "schema_version": 1,
            "transaction_id": tx["transaction_id"],
            "card_id": tx["card_id"],
            "score": score,
            "decision": outcome,
            "model_version": version,
        }
    )


def _load_model(model_dir: Path) -> tuple[Any, Any, str]:
    """The estimator, its thresholds and version, with native thread pools capped at one thread.

    The worker scores on one thread (``model.scoring.scoring_executor``), so the limit and the
    baseline do too: on two cores, OpenMP threads would fight the event loop and the broker.
    """
    from threadpoolctl import threadpool_limits

    from model.artifact import load_artifact

    threadpool_limits(1)
    artifact = load_artifact(model_dir)
    return artifact.estimator, artifact.thresholds, artifact.version


# --- role: limit ---------------------------------------------------------------------------------


def role_limit(args: argparse.Namespace) -> dict[str, Any]:
    """Consume ``count`` records, score them in batches of :data:`BATCH`, produce decisions."""
    from confluent_kafka import TopicPartition

    from model.metrics import decide
    from streaming.kafka import clients as kafka
    from streaming.settings import KafkaSettings

    estimator, thresholds, version = _load_model(args.model_dir)
    settings = KafkaSettings(kafka_bootstrap_servers=args.bootstrap)
    consumer = kafka.consumer(settings, f"bench-limit-{uuid.uuid4().hex[:8]}")
    producer = kafka.producer(settings)
    # Assigned, not subscribed: a group join takes seconds here and is not what is measured.
    partitions = consumer.list_topics(args.topic, timeout=10).topics[args.topic].partitions
    consumer.assign([TopicPartition(args.topic, p, 0) for p in partitions])
    estimator.predict_proba(np.zeros((1, len(FEATURE_NAMES))))  # first-call setup is not throughput
    done, started, cpu0 = 0, 0.0, 0.0
    deadline = time.monotonic() + args.timeout
    try:
        while done < args.count and time.monotonic() < deadline:
            msgs = [m for m in consumer.consume(BATCH, 1.0) if m.error() is None]
            if not msgs:
                continue
            if not started:  # the clock starts with the first batch in hand
                started, cpu0 = time.perf_counter(), time.process_time()
            txs = [orjson.loads(m.value() or b"{}") for m in msgs]
            scores = estimator.predict_proba(raw_features(txs))[:, 1]
            outcomes = decide(scores, thresholds)
            for msg, tx, score, outcome in zip(msgs, txs, scores.tolist(), outcomes.tolist(), strict=True):
                value = _decision_bytes(tx, score, outcome, version)
                while True:
                    try:
                        producer.produce(args.out_topic, key=msg.key(), value=value)
                        break
                    except BufferError:
                        producer.poll(0.01)
            producer.poll(0)
            done += len(msgs)
        left = producer.flush(60)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    finally:
        consumer.close()
    if done < args.count or left:
        raise SystemExit(f"limit loop: {done} of {args.count} consumed, {left} decisions undelivered")
    return {"tx_per_s": done / elapsed, "cpu_us_per_tx": cpu / done * 1e6, "seconds": elapsed, "count": done}


# --- role: naive -------------------------------------------------------------------------------


def role_naive(args: argparse.Namespace) -> None:
    """A plain Faust app: one model call and one awaited send per message. Writes its result to
    ``--result`` after ``count`` messages and keeps running until the parent stops it."""
    import faust

    from model.metrics import decide
    from streaming.kafka import faust_transport

    estimator, thresholds, version = _load_model(args.model_dir)
    app = faust.App(
        f"bench-naive-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        datadir=str(args.datadir),
        web_enabled=False,
        topic_partitions=args.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6,
        broker_heartbeat_interval=2,
    )
    # Only the fetch wait, so the embedded broker's held fetches are not charged to Faust.
    faust_transport.install(app, 10)
    source = app.topic(args.topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    out = app.topic(args.out_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    progress = {"done": 0, "started": 0.0, "cpu0": 0.0}

    @app.agent(source)
    async def score(stream: faust.StreamT[bytes]) -> None:
        async for key, value in stream.items():
            if not progress["started"]:
                progress["started"], progress["cpu0"] = time.perf_counter(), time.process_time()
            tx = orjson.loads(value)
            s = float(estimator.predict_proba(raw_features([tx]))[0, 1])
            outcome = str(decide([s], thresholds)[0])
            await out.send(key=key, value=_decision_bytes(tx, s, outcome, version))
            progress["done"] += 1
            if progress["done"] == args.count:
                await app.producer.flush()
                elapsed = time.perf_counter() - progress["started"]
                cpu = time.process_time() - progress["cpu0"]
                result = {"tx_per_s": args.count / elapsed, "cpu_us_per_tx": cpu / args.count * 1e6}
                tmp = args.result.with_suffix(".tmp")
                tmp.write_bytes(orjson.dumps(result))
                tmp.replace(args.result)

    # The project worker's own invocation: INFO (``warn`` turned Faust's root logger to DEBUG).
    faust.Worker(app, loglevel="INFO", quiet=True).execute_from_commandline()


# --- role: noop (HTTP) ---------------------------------------------------------------------------


def role_noop(args: argparse.Namespace) -> None:
    """A FastAPI app whose /predict parses the same body and returns a constant Decision.

    Same response model as the real route, so the difference between the two is the scoring
    and the state look-up, not serialisation; same uvicorn settings as ``fraud api``.
    """
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    constant = Decision(
        transaction_id="noop",
        card_id="noop",
        score=0.0,
        decision="allow",
        reasons=[],
        model_version="noop",
        event_timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        scored_at=datetime(2026, 1, 1, tzinfo=UTC),
    )

    @app.post("/predict", response_model=Decision)
    async def predict(tx: Transaction) -> Decision:
        return constant

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, lifespan="on")
