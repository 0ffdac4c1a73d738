"""``fraud bench``: the project's throughput, latency, HTTP and training numbers, measured in one run
next to the practical limit of Python scoring and a naive Faust baseline.

Every phase runs against the same broker and the same generated transactions (one
``producers.synthetic`` run; each phase takes a prefix of it), and every measured program runs
in its own process so that the numbers are those of one Python process each, as deployed:

1. **limit**: a minimal confluent-kafka + orjson loop (``python -m benchmarks.bench limit``):
   consume a pre-filled topic in batches, parse, score the batch with one call of the project's
   trained model on the raw-field features (history features left at zero), produce decisions.
   What Kafka, JSON and one batched model call cost: the ceiling for a Python scorer here.
2. **naive**: a plain Faust agent in its own tiny app (``python -m benchmarks.bench naive``): one
   ``predict_proba`` and one ``await topic.send()`` per message, the way the systems this project
   replaces work.
3. **worker**: ``fraud worker`` itself, with real features, card state and model: saturated
   throughput draining a pre-filled topic (tx/s, CPU µs per transaction), then the latency from
   a transaction's Kafka record timestamp to its decision's at a fixed offered rate, published
   by the project's :class:`~producers.publisher.Publisher`.
4. **predict**: ``fraud api`` as configured by default (card state from its own copy of the
   card table), the same with card state read from the running worker per request, and,
   beside them, a no-op route with the same body and response models in the same uvicorn setup
   (``python -m benchmarks.bench noop``), all driven by an async HTTP client (aiohttp; httpx
   with ``--http-client httpx``) in a separate process (``python -m benchmarks.bench http``)
   at concurrency 1 and 16.
5. **train**: ``fraud train`` on a generated CSV of at least ``--rows`` rows: wall time and the
   peak RSS of that process. Its model is the one every other phase scores with.

The numbers are only comparable within one run: the machine (often small and shared) moves
them between runs, which is why the limit and the baseline are re-measured every time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import orjson

from model.features import CATEGORY_COLUMN, CHANNEL_COLUMN, COLUMN, FEATURE_NAMES

# Module level: FastAPI resolves the no-op route's annotations from the module's globals.
from model.schemas import Decision, Transaction

if TYPE_CHECKING:
    from streaming.settings import ProducerSettings

#: Keys every JSON report carries (the test checks them); the report has more.
REQUIRED_KEYS = (
    "limit_tx_per_s",
    "naive_tx_per_s",
    "worker_tx_per_s",
    "worker_cpu_us_per_tx",
    "latency_p50_ms",
    "latency_p99_ms",
    "noop_p50_ms",
    "predict_p50_ms",
    "predict_rps_c16",
    "train_rows",
    "train_seconds",
    "train_peak_mb",
    "worker_vs_limit",
    "worker_vs_naive",
    "cpu_count",
    "python_version",
    "platform",
)

#: The worker's default batch size; the limit loop scores batches of the same size.
BATCH = 500


@dataclass
class BenchOptions:
    """Sizes of every phase. The defaults are the full run; :meth:`quick_profile` shrinks them all."""

    quick: bool = False
    train_rows: int = 1_000_000
    limit_count: int = 200_000
    naive_count: int = 3_000
    worker_count: int = 30_000
    latency_rate: float = 2_000.0
    latency_seconds: float = 20.0
    #: The latency phase's producer batches this long (librdkafka ``linger.ms``; counted in the
    #: latency, since records are stamped when sent). The embedded broker's cost per fetched
    #: batch grows with the partition's length: at 5 ms (~2 records a batch at 2,000/s over 4
    #: partitions) it took a whole core after ~30 s, starving the worker; at 20 ms it stays
    #: near a fifth of one.
    producer_linger_ms: float = 20.0
    http_seconds: float = 10.0
    http_warmup_seconds: float = 2.0
    http_client: str = "aiohttp"  # httpx saturated a core before the API did
    partitions: int = 4
    #: An external Kafka instead of the embedded broker.
    bootstrap_servers: str | None = None
    #: Extra FRAUD_* settings for the worker under test, to compare tuning without code changes.
    worker_env: dict[str, str] = field(default_factory=dict)
    #: Keep logs and data here instead of a temporary directory removed at the end.
    workdir: Path | None = None

    @classmethod
    def quick_profile(cls) -> BenchOptions:
        # Enough to exercise every phase end to end; the numbers are noisy at these sizes.
        return cls(
            quick=True,
            train_rows=20_000,
            limit_count=20_000,
            naive_count=500,
            # The worker drains ~10k tx/s: fewer would be over before CPU time (10 ms ticks)
            # can be read between its first and last decision.
            worker_count=15_000,
            latency_seconds=3.0,
            http_seconds=1.5,
            http_warmup_seconds=0.5,
        )


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


# --- role: http (load driver) ------------------------------------------------------------------


Post = Callable[[bytes], Awaitable[tuple[int, bytes]]]


@contextlib.asynccontextmanager
async def _client(kind: str, url: str, concurrency: int) -> AsyncIterator[Post]:
    """A keep-alive connection pool of ``concurrency`` connections posting JSON to ``url``.

    httpx costs the client 1-2 ms of CPU per request (more at c=16 than at
    c=1), so on two cores it cannot push a fast server past ~600 req/s; aiohttp (installed with
    Faust) costs 0.15-0.25 ms and agreed with wrk within ~10% at c=16 on the no-op route. The
    ``client_busy`` figures in the report say when the client, not the server, was the limit.
    """
    headers = {"content-type": "application/json"}
    if kind == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:

            async def post_aiohttp(body: bytes) -> tuple[int, bytes]:
                async with session.post(url, data=body) as resp:
                    return resp.status, await resp.read()

            yield post_aiohttp
        return
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10.0, headers=headers) as client:

        async def post_httpx(body: bytes) -> tuple[int, bytes]:
            resp = await client.post(url, content=body)
            return resp.status_code, resp.content

        yield post_httpx


async def _drive(
    kind: str, url: str, bodies: list[bytes], concurrency: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """``concurrency`` closed-loop users posting for ``warmup`` + ``seconds``; only requests
    started after the warm-up count."""
    latencies: list[float] = []
    errors = unavailable = issued = 0
    counter = iter(range(1 << 62))
    cpu0 = time.process_time()
    record_from = time.perf_counter() + warmup
    end = record_from + seconds
    last_done = record_from
    async with _client(kind, url, concurrency) as post:

        async def user() -> None:
            nonlocal errors, unavailable, issued, last_done
            while (t0 := time.perf_counter()) < end:
                issued += 1
                try:
                    status, content = await post(bodies[next(counter) % len(bodies)])
                except Exception:  # connection errors and timeouts of either client: counted below
                    errors += t0 >= record_from
                    continue
                t1 = time.perf_counter()
                if t0 < record_from:
                    continue
                if status != 200:
                    errors += 1
                    continue
                latencies.append(t1 - t0)
                last_done = max(last_done, t1)
                # /predict answers statelessly when the worker's state view is too slow.
                unavailable += b'"card_state":"unavailable"' in content

        await asyncio.gather(*(user() for _ in range(concurrency)))
    lat_ms = np.array(latencies) * 1000
    return {
        "rps": len(latencies) / max(last_done - record_from, 1e-9),
        "p50_ms": float(np.percentile(lat_ms, 50)) if len(lat_ms) else math.nan,
        "p99_ms": float(np.percentile(lat_ms, 99)) if len(lat_ms) else math.nan,
        "requests": len(latencies),
        "errors": errors,
        "state_unavailable": unavailable,
        # The client shares the machine with the servers: its own cost bounds what it can measure.
        "client_cpu_us_per_req": (time.process_time() - cpu0) / max(issued, 1) * 1e6,
    }


def role_http(args: argparse.Namespace) -> dict[str, Any]:
    """Each target at each concurrency in turn, for a fixed duration after a warm-up."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    bodies = args.bodies.read_bytes().splitlines()
    results: dict[str, Any] = {}
    for concurrency in args.concurrency:
        for target in args.target:
            name, url = target.split("=", 1)
            run = _drive(args.client, url, bodies, concurrency, args.seconds, args.warmup)
            results[f"{name}_c{concurrency}"] = asyncio.run(run)
    return results


# --- the orchestrator --------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc (psutil is not a
    dependency)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Children:
    """Every process the bench starts, each logging to a file in the work directory; all of them
    are stopped by :meth:`stop_all`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603 - our own argv
        self.procs.append((name, proc, log))
        return proc

    def log_tail(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: Faust and uvicorn stop gracefully
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for name, p, log in self.procs:
            if p is proc:
                log.close()
                self.procs.remove((name, p, log))
                break

    def stop_all(self) -> None:
        for _, proc, _ in reversed(list(self.procs)):
            if proc.poll() is None:
                proc.terminate()
        for _, proc, _ in reversed(list(self.procs)):
            self.stop(proc)


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # Inherited FRAUD_* settings would silently change what is measured: start from none.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    return {**env, "PYTHONUNBUFFERED": "1", **(extra or {})}


def _run_json(children: Children, name: str, argv: list[str], timeout: float) -> Any:
    """Run a child to completion and parse the JSON on the last line of its stdout."""
    out = children.workdir / f"{name}.out"
    with out.open("wb") as fh:
        log = (children.workdir / f"{name}.log").open("ab")
        try:
            proc = subprocess.Popen(argv, env=_child_env(), stdout=fh, stderr=log)  # noqa: S603 - our own argv
            try:
                code = proc.wait(timeout)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        finally:
            log.close()
    if code != 0:
        raise RuntimeError(f"{name} exited with code {code}:\n{children.log_tail(name)}")
    return json.loads(out.read_text().strip().splitlines()[-1])


def _wait_file(path: Path, proc: subprocess.Popen[bytes], what: str, children: Children, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}:\n{children.log_tail(what)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: no result after {timeout:.0f}s:\n{children.log_tail(what)}")
        time.sleep(0.1)
    return orjson.loads(path.read_bytes())


@dataclass
class Traffic:
    """The generated transactions every phase takes a prefix of: wire dicts and encoded records."""

    rows: list[dict[str, Any]]
    records: list[tuple[bytes, bytes]]

    @classmethod
    def generate(cls, n: int) -> Traffic:
        from producers.publisher import wire_value
        from producers.synthetic import config_for_rows, generate

        # Event times end a day before now: the worker dead-letters transactions stamped more
        # than a day after their Kafka record, and a fixed date would eventually be in the future.
        start = (datetime.now(UTC) - timedelta(days=31)).replace(hour=0, minute=0, second=0, microsecond=0)
        config = replace(config_for_rows(n, seed=11), start=start)
        frame = generate(config)
        while len(frame) < n:  # the row count is only expected; add cards until there is enough
            config = replace(config, n_cards=math.ceil(config.n_cards * 1.05 * n / len(frame)))
            frame = generate(config)
        rows = frame.iloc[:n].to_dict("records")
        return cls(rows=rows, records=[(str(r["card_id"]).encode(), wire_value(r)) for r in rows])


def _prefill(settings: Any, topic: str, records: Sequence[tuple[bytes, bytes]]) -> float:
    """Produce ``records`` to ``topic`` as fast as the client goes; returns msg/s."""
    from streaming.kafka import clients as kafka

    producer = kafka.producer(settings)
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    start = time.perf_counter()
    for i, (key, value) in enumerate(records):
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    elapsed = time.perf_counter() - start
    if left or errors:
        raise RuntimeError(f"pre-filling {topic}: {left} undelivered, errors {errors[:3]}")
    return len(records) / elapsed


class DecisionReader:
    """Reads a topic from the beginning; keeps the first record timestamp per transaction id."""

    def __init__(self, settings: Any, topic: str) -> None:
        from confluent_kafka import TopicPartition

        from streaming.kafka import clients as kafka

        self.consumer = kafka.consumer(settings, f"bench-reader-{uuid.uuid4().hex[:8]}")
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        self.timestamps: dict[str, int] = {}

    def poll(self, timeout: float = 0.2) -> int:
        for msg in self.consumer.consume(1000, timeout):
            if msg.error() is None:
                tx_id = orjson.loads(msg.value() or b"{}").get("transaction_id")
                if tx_id is not None:
                    self.timestamps.setdefault(tx_id, msg.timestamp()[1])
        return len(self.timestamps)

    def wait_for(self, ids: Sequence[str], stall: float, on_first: Any = None) -> int:
        """Read until every id in ``ids`` was seen, or nothing new came for ``stall`` seconds.
        ``on_first`` runs once, when the first of them is seen; returns how many were seen."""
        wanted = set(ids)
        seen = last_seen = 0
        last_progress = time.monotonic()
        while seen < len(wanted):
            self.poll()
            seen = len(wanted.intersection(self.timestamps))
            if seen > last_seen:
                if last_seen == 0 and on_first is not None:
                    on_first(seen)
                last_seen, last_progress = seen, time.monotonic()
            elif time.monotonic() - last_progress > stall:
                break
        return seen

    def close(self) -> None:
        self.consumer.close()


def _batch_totals(metrics_url: str) -> tuple[float, float, float]:
    """(batches, transactions, seconds scoring) so far, from the worker's own histograms."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=5).text):
        for sample in family.samples:
            totals[sample.name] = sample.value
    return (
        totals.get("fraud_scoring_batch_size_count", 0.0),
        totals.get("fraud_scoring_batch_size_sum", 0.0),
        totals.get("fraud_scoring_batch_duration_seconds_sum", 0.0),
    )


def _batch_stats(before: tuple[float, float, float], after: tuple[float, float, float]) -> tuple[float, float]:
    """Mean batch size and mean scoring time per batch (ms) between two scrapes."""
    batches = max(after[0] - before[0], 1.0)
    return (after[1] - before[1]) / batches, (after[2] - before[2]) / batches * 1000


def _percentiles(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99)), float(arr.max())


def _train(opts: BenchOptions, workdir: Path, children: Children) -> tuple[Path, dict[str, Any]]:
    """Generate at least ``train_rows`` rows, run ``fraud train`` on them, measure it."""
    from producers.synthetic import config_for_rows, generate

    config = config_for_rows(opts.train_rows)
    frame = generate(config)
    while len(frame) < opts.train_rows:  # config_for_rows aims at the count, it does not promise it
        config = replace(config, n_cards=math.ceil(config.n_cards * 1.02 * opts.train_rows / len(frame)))
        frame = generate(config)
    csv = workdir / "train.csv"
    frame.to_csv(csv, index=False)
    rows = len(frame)
    del frame
    model_dir = workdir / "model"
    _say(f"training on {rows:,} rows ({csv.stat().st_size / 1e6:.0f} MB CSV) ...")
    log = (workdir / "train.log").open("ab")
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and CLI
            _python("streaming.cli", "train", "--data", str(csv), "--out", str(model_dir)),
            env=_child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would be the max of all).
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
    finally:
        log.close()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"fraud train exited with {proc.returncode}:\n{children.log_tail('train')}")
    csv.unlink()  # up to ~100 MB; not needed any more
    return model_dir, {
        "train_rows": rows,
        "train_seconds": seconds,
        "train_peak_mb": usage.ru_maxrss / 1024,  # kilobytes on Linux
        "train_cpu_seconds": usage.ru_utime + usage.ru_stime,
    }


class Bench:
    """One run: broker, data, phases, cleanup."""

    def __init__(self, opts: BenchOptions, workdir: Path) -> None:
        self.opts = opts
        self.workdir = workdir
        self.children = Children(workdir)
        self.suffix = uuid.uuid4().hex[:8]
        self.results: dict[str, Any] = {}
        self.bootstrap = ""
        self.broker_pid: int | None = None
        self.worker_metrics_port = 0

    def settings(self, topics: dict[str, str] | None = None) -> ProducerSettings:
        from streaming.settings import ProducerSettings

        base = ProducerSettings(
            kafka_bootstrap_servers=self.bootstrap, topic_partitions=self.opts.partitions, metrics_port=0
        )
        return base.model_copy(update=topics or {})

    def topic(self, name: str) -> str:
        from streaming.kafka import clients as kafka

        full = f"bench-{self.suffix}-{name}"
        kafka.ensure_topics(self.settings(), [full])
        return full

    def run(self) -> dict[str, Any]:
        from streaming.kafka.broker import EmbeddedBroker

        opts = self.opts
        model_dir, train = _train(opts, self.workdir, self.children)
        self.results.update(train)
        self.model_dir = model_dir
        _say(f"trained in {train['train_seconds']:.1f} s, peak {train['train_peak_mb']:.0f} MB")

        needed = max(opts.limit_count, opts.naive_count, opts.worker_count + self.latency_count)
        _say(f"generating {needed:,} transactions ...")
        self.traffic = Traffic.generate(needed)

        broker: EmbeddedBroker | None = None
        try:
            if opts.bootstrap_servers:
                self.bootstrap = opts.bootstrap_servers
            else:
                broker = EmbeddedBroker(log_file=self.workdir / "broker.log").start()
                self.bootstrap = broker.bootstrap_servers
                self.broker_pid = broker.process.pid if broker.process else None
            self.phase_limit()
            self.phase_naive()
            self.phase_worker_and_predict()
        finally:
            self.children.stop_all()
            if broker is not None:
                broker.stop()
        return self.results

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.worker_metrics_port}/metrics"

    @property
    def latency_count(self) -> int:
        return max(1, round(self.opts.latency_rate * self.opts.latency_seconds))

    def phase_limit(self) -> None:
        n = self.opts.limit_count
        source, sink = self.topic("limit-in"), self.topic("limit-out")
        rate = _prefill(self.settings(), source, self.traffic.records[:n])
        self.results["produce_tx_per_s"] = rate
        _say(f"limit loop: {n:,} transactions (pre-filled at {rate:,.0f} msg/s) ...")
        argv = _python(
            "benchmarks.bench", "limit", "--bootstrap", self.bootstrap, "--topic", source,
            "--out-topic", sink, "--model-dir", str(self.model_dir), "--count", str(n),
        )  # fmt: skip
        out = _run_json(self.children, "limit", argv, timeout=600)
        self.results["limit_tx_per_s"] = out["tx_per_s"]
        self.results["limit_cpu_us_per_tx"] = out["cpu_us_per_tx"]
        _say(f"limit: {out['tx_per_s']:,.0f} tx/s")

    def phase_naive(self) -> None:
        n = self.opts.naive_count
        source, sink = self.topic("naive-in"), self.topic("naive-out")
        _prefill(self.settings(), source, self.traffic.records[:n])
        _say(f"naive Faust agent: {n:,} transactions ...")
        result = self.workdir / "naive.json"
        argv = _python(
            "benchmarks.bench", "naive", "--bootstrap", self.bootstrap, "--topic", source,
            "--out-topic", sink, "--model-dir", str(self.model_dir), "--count", str(n),
            "--partitions", str(self.opts.partitions), "--result", str(result),
            "--datadir", str(self.workdir / "naive-data"),
        )  # fmt: skip
        proc = self.children.start("naive", argv, _child_env())
        try:
            out = _wait_file(result, proc, "naive", self.children, timeout=120 + n / 20)
        finally:
            self.children.stop(proc)
        self.results["naive_tx_per_s"] = out["tx_per_s"]
        self.results["naive_cpu_us_per_tx"] = out["cpu_us_per_tx"]
        _say(f"naive: {out['tx_per_s']:,.0f} tx/s")

    def worker_env(self, topics: dict[str, str], web_port: int) -> dict[str, str]:
        env = {
            "FRAUD_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "FRAUD_TRANSACTIONS_TOPIC": topics["transactions_topic"],
            "FRAUD_DECISIONS_TOPIC": topics["decisions_topic"],
            "FRAUD_DLQ_TOPIC": topics["dlq_topic"],
            "FRAUD_TOPIC_PARTITIONS": str(self.opts.partitions),
            "FRAUD_APP_ID": f"bench-{self.suffix}",
            "FRAUD_MODEL_DIR": str(self.model_dir),
            "FRAUD_WEB_PORT": str(web_port),
            "FRAUD_METRICS_PORT": str(self.worker_metrics_port),
            "FRAUD_DATA_DIR": str(self.workdir / "worker-data"),
            "FRAUD_SESSION_TIMEOUT_SECONDS": "6",
        }
        return {**env, **self.opts.worker_env}

    def phase_worker_and_predict(self) -> None:
        from streaming.kafka import clients as kafka
        from streaming.kafka.broker import free_port

        opts = self.opts
        topics = {
            "transactions_topic": f"bench-{self.suffix}-tx",
            "decisions_topic": f"bench-{self.suffix}-decisions",
            "dlq_topic": f"bench-{self.suffix}-tx.dlq",
        }
        settings = self.settings(topics)
        kafka.ensure_topics(settings, kafka.project_topics(settings))
        saturated = self.traffic.records[: opts.worker_count]
        _prefill(settings, settings.transactions_topic, saturated)
        web_port, self.worker_metrics_port = free_port(), free_port()
        _say(f"fraud worker: draining {opts.worker_count:,} pre-filled transactions ...")
        worker = self.children.start(
            "worker", _python("streaming.cli", "worker"), _child_env(self.worker_env(topics, web_port))
        )
        reader = DecisionReader(settings, settings.decisions_topic)
        try:
            self.measure_saturated(reader, worker)
            self.measure_latency(reader, settings)
            self.measure_predict(web_port, worker)
        finally:
            reader.close()

    def measure_saturated(self, reader: DecisionReader, worker: subprocess.Popen[bytes]) -> None:
        ids = [str(r["transaction_id"]) for r in self.traffic.rows[: self.opts.worker_count]]
        marks: dict[str, float] = {}

        def first(seen: int) -> None:
            # CPU from the first decision on: startup (imports, model load, group join) excluded.
            marks["seen0"], marks["cpu0"] = seen, _proc_cpu_seconds(worker.pid)
            if self.broker_pid:
                marks["broker0"] = _proc_cpu_seconds(self.broker_pid)

        # Allow for the worker's startup before the first decision, then fail on a stall.
        deadline = time.monotonic() + 180
        while not reader.timestamps and time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with code {worker.returncode}:\n{self.children.log_tail('worker')}")
            reader.poll(0.2)
        seen = reader.wait_for(ids, stall=60, on_first=first)
        if seen < len(ids) or "cpu0" not in marks:
            raise RuntimeError(f"worker decided {seen} of {len(ids)}:\n{self.children.log_tail('worker')}")
        cpu = _proc_cpu_seconds(worker.pid) - marks["cpu0"]
        size, ms = _batch_stats((0.0, 0.0, 0.0), _batch_totals(self.metrics_url))
        self.results.update(worker_batch_mean_size=size, worker_batch_mean_ms=ms)
        stamps = np.array([reader.timestamps[i] for i in ids], dtype=np.int64)
        span_s = max(int(stamps.max() - stamps.min()), 1) / 1000
        # Rate from the decisions' own record timestamps, first to last: start-up excluded.
        self.results["worker_tx_per_s"] = (len(ids) - 1) / span_s
        self.results["worker_cpu_us_per_tx"] = cpu / (len(ids) - marks["seen0"]) * 1e6
        if self.broker_pid and "broker0" in marks:
            broker_cpu = _proc_cpu_seconds(self.broker_pid) - marks["broker0"]
            self.results["worker_broker_cpu_us_per_tx"] = broker_cpu / (len(ids) - marks["seen0"]) * 1e6
        _say(
            f"worker: {self.results['worker_tx_per_s']:,.0f} tx/s, "
            f"{self.results['worker_cpu_us_per_tx']:,.0f} µs CPU per transaction"
        )

    def measure_latency(self, reader: DecisionReader, settings: Any) -> None:
        from producers.publisher import Publisher

        opts = self.opts
        rows = self.traffic.rows[opts.worker_count : opts.worker_count + self.latency_count]
        ids = [str(r["transaction_id"]) for r in rows]
        _say(f"latency: {len(rows):,} transactions at {opts.latency_rate:,.0f}/s ...")
        before = _batch_totals(self.metrics_url)
        publisher = Publisher(settings.model_copy(update={"linger_ms": opts.producer_linger_ms}))
        stats = publisher.publish(rows, rate=opts.latency_rate)
        if stats.failed:
            raise RuntimeError(f"publishing for the latency phase: {stats.errors[:3]}")
        seen = reader.wait_for(ids, stall=60)
        size, ms = _batch_stats(before, _batch_totals(self.metrics_url))
        self.results.update(latency_batch_mean_size=size, latency_batch_mean_ms=ms)
        # Transactions' record timestamps (set by the producer at send time) from the topic itself.
        sent = DecisionReader(settings, settings.transactions_topic)
        try:
            sent.wait_for(ids, stall=10)
        finally:
            sent.close()
        lat = [
            reader.timestamps[i] - sent.timestamps[i] for i in ids if i in reader.timestamps and i in sent.timestamps
        ]
        if not lat:
            raise RuntimeError(f"no decision for the latency phase:\n{self.children.log_tail('worker')}")
        p50, p99, worst = _percentiles(lat)
        # Below the offered rate, the worker fell behind and the latency is mostly queueing.
        first_sent = min(sent.timestamps[i] for i in ids if i in sent.timestamps)
        last_decided = max(reader.timestamps[i] for i in ids if i in reader.timestamps)
        self.results.update(
            latency_p50_ms=p50,
            latency_p99_ms=p99,
            latency_max_ms=worst,
            latency_offered_tx_per_s=stats.acked / stats.seconds,
            latency_decided_tx_per_s=seen / max((last_decided - first_sent) / 1000, 1e-3),
            latency_transactions=len(ids),
            latency_decided=seen,
        )
        _say(f"latency: p50 {p50:.0f} ms, p99 {p99:.0f} ms ({seen:,} of {len(ids):,} decided)")

    def measure_predict(self, web_port: int, worker: subprocess.Popen[bytes]) -> None:
        from streaming.kafka.broker import free_port, wait_http

        opts = self.opts
        api_port, api_worker_port, noop_port = free_port(), free_port(), free_port()
        api_env = {
            "FRAUD_HOST": "127.0.0.1",
            # The driver sends no key: measured without the key check (a hash and a look-up).
            "FRAUD_AUTH_DISABLED": "true",
            "FRAUD_MODEL_DIR": str(self.model_dir),
            "FRAUD_APP_ID": f"bench-{self.suffix}",
            "FRAUD_WORKER_URL": f"http://127.0.0.1:{web_port}",
            "FRAUD_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
        }
        # The default card state source (the API's own copy of the card table) and the other
        # one (a request to the worker that owns the card), side by side.
        api = self.children.start(
            "api", _python("streaming.cli", "api"), _child_env({**api_env, "FRAUD_PORT": str(api_port)})
        )
        api_worker = self.children.start(
            "api-worker",
            _python("streaming.cli", "api"),
            _child_env({**api_env, "FRAUD_PORT": str(api_worker_port), "FRAUD_CARD_STATE_SOURCE": "worker"}),
        )
        noop = self.children.start("noop", _python("benchmarks.bench", "noop", "--port", str(noop_port)), _child_env())
        for url, proc, what in (
            (f"http://127.0.0.1:{api_port}/ready", api, "api"),
            (f"http://127.0.0.1:{api_worker_port}/ready", api_worker, "api-worker"),
            (f"http://127.0.0.1:{noop_port}/health", noop, "noop"),
        ):
            wait_http(url, proc, what, partial(self.children.log_tail, what), timeout=120)
        # Transactions the stream has decided: their cards have state, so /predict reads it.
        bodies = self.workdir / "bodies.jsonl"
        bodies.write_bytes(b"\n".join(value for _, value in self.traffic.records[: min(1000, opts.worker_count)]))
        _say(f"/predict and no-op, c=1 and c=16, {opts.http_seconds:g} s each ...")
        argv = _python(
            "benchmarks.bench", "http", "--bodies", str(bodies), "--seconds", str(opts.http_seconds),
            "--warmup", str(opts.http_warmup_seconds), "--concurrency", "1", "16",
            "--target", f"noop=http://127.0.0.1:{noop_port}/predict",
            "--target", f"predict=http://127.0.0.1:{api_port}/predict",
            "--target", f"predict_via_worker=http://127.0.0.1:{api_worker_port}/predict", "--client", opts.http_client,
        )  # fmt: skip
        out = _run_json(self.children, "http", argv, timeout=120 + 10 * (opts.http_seconds + opts.http_warmup_seconds))
        for name in ("noop", "predict", "predict_via_worker"):
            c1, c16 = out[f"{name}_c1"], out[f"{name}_c16"]
            self.results.update(
                {
                    f"{name}_rps_c1": c1["rps"],
                    f"{name}_p50_ms": c1["p50_ms"],
                    f"{name}_p99_ms": c1["p99_ms"],
                    f"{name}_rps_c16": c16["rps"],
                    f"{name}_p50_ms_c16": c16["p50_ms"],
                    f"{name}_p99_ms_c16": c16["p99_ms"],
                    f"{name}_errors": c1["errors"] + c16["errors"],
                    # Share of one core the load generator itself used: near 1, it measured itself.
                    f"{name}_client_busy_c1": c1["client_cpu_us_per_req"] * c1["rps"] / 1e6,
                    f"{name}_client_busy_c16": c16["client_cpu_us_per_req"] * c16["rps"] / 1e6,
                }
            )
        self.results["predict_state_unavailable"] = sum(
            out[f"{name}_{c}"]["state_unavailable"] for name in ("predict", "predict_via_worker") for c in ("c1", "c16")
        )
        _say(
            f"/predict p50 {self.results['predict_p50_ms']:.2f} ms (no-op {self.results['noop_p50_ms']:.2f} ms), "
            f"{self.results['predict_rps_c16']:,.0f} req/s at c=16"
        )


def _machine() -> dict[str, Any]:
    import confluent_kafka
    import faust
    import sklearn

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count() or 0,
        "cpu_model": cpu_model,
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "versions": {
            "faust": faust.__version__,
            "confluent_kafka": confluent_kafka.__version__,
            "librdkafka": confluent_kafka.libversion()[0],
            "scikit_learn": sklearn.__version__,
            "numpy": np.__version__,
        },
    }


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="fraud-bench-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Run every phase and return the report (a flat dict; see :data:`REQUIRED_KEYS`)."""
    started = time.perf_counter()
    report: dict[str, Any] = {"quick": opts.quick, **_machine(), "loadavg_start": list(os.getloadavg())}
    with _workdir(opts.workdir) as workdir:
        bench = Bench(opts, workdir)
        report.update(bench.run())
    report["worker_vs_limit"] = report["worker_tx_per_s"] / report["limit_tx_per_s"]
    report["worker_vs_naive"] = report["worker_tx_per_s"] / report["naive_tx_per_s"]
    report["loadavg_end"] = list(os.getloadavg())
    report["bench_seconds"] = time.perf_counter() - started
    sizes = asdict(opts)
    sizes.pop("workdir")
    report["options"] = sizes
    return _rounded(report)


def _rounded(value: Any) -> Any:
    """Four significant digits are more than the run-to-run noise; ratios are rounded from the
    unrounded values, so they may differ from the rounded ones' quotient in the last digit."""
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def format_table(r: dict[str, Any]) -> str:
    """The report as a fixed-width table for the terminal (and the README)."""

    def n(x: float | None) -> str:
        return "-" if x is None else f"{x:,.0f}"

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:,.2f} ms"

    def busy(name: str, c: str) -> str:
        share = r[f"{name}_client_busy_{c}"]
        return f"; client {share:.0%} of a core" + (" (CLIENT-BOUND)" if share > 0.8 else "")

    broker = r.get("worker_broker_cpu_us_per_tx")
    rate, linger = r["options"]["latency_rate"], r["options"]["producer_linger_ms"]
    rows = [
        ("limit: confluent-kafka + orjson + batched model", f"{n(r['limit_tx_per_s'])} tx/s",
         f"{r['limit_cpu_us_per_tx']:.1f} µs CPU/tx"),
        ("naive: Faust agent, 1 predict + 1 send per msg", f"{n(r['naive_tx_per_s'])} tx/s",
         f"{n(r['naive_cpu_us_per_tx'])} µs CPU/tx"),
        ("fraud worker, saturated", f"{n(r['worker_tx_per_s'])} tx/s",
         f"{n(r['worker_cpu_us_per_tx'])} µs CPU/tx" + (f" (+ broker {n(broker)})" if broker else "")),
        ("  batches while saturated", f"{n(r['worker_batch_mean_size'])} tx",
         f"{r['worker_batch_mean_ms']:.1f} ms scoring per batch"),
        ("  worker / limit, worker / naive", f"{r['worker_vs_limit']:.3f}", f"{r['worker_vs_naive']:.2f}x"),
        (f"fraud worker, {n(rate)} tx/s offered", f"p50 {n(r['latency_p50_ms'])} ms",
         f"p99 {n(r['latency_p99_ms'])} ms, max {n(r['latency_max_ms'])} ms; "
         f"decided {r['latency_decided']:,}/{r['latency_transactions']:,} at {n(r['latency_decided_tx_per_s'])} tx/s"),
        ("  batches at that rate", f"{n(r['latency_batch_mean_size'])} tx",
         f"{r['latency_batch_mean_ms']:.1f} ms scoring per batch; producer linger {linger:g} ms"),
        (f"HTTP client: {r['options']['http_client']}", "", ""),
        ("POST /predict no-op, c=1", f"{n(r['noop_rps_c1'])} req/s",
         f"p50 {ms(r['noop_p50_ms'])}, p99 {ms(r['noop_p99_ms'])}{busy('noop', 'c1')}"),
        ("POST /predict no-op, c=16", f"{n(r['noop_rps_c16'])} req/s",
         f"p50 {ms(r['noop_p50_ms_c16'])}, p99 {ms(r['noop_p99_ms_c16'])}{busy('noop', 'c16')}"),
        ("POST /predict, c=1", f"{n(r['predict_rps_c1'])} req/s",
         f"p50 {ms(r['predict_p50_ms'])}, p99 {ms(r['predict_p99_ms'])}{busy('predict', 'c1')}"),
        ("POST /predict, c=16", f"{n(r['predict_rps_c16'])} req/s",
         f"p50 {ms(r['predict_p50_ms_c16'])}, p99 {ms(r['predict_p99_ms_c16'])}{busy('predict', 'c16')}"),
        ("  card state from the worker, c=1", f"{n(r['predict_via_worker_rps_c1'])} req/s",
         f"p50 {ms(r['predict_via_worker_p50_ms'])}, p99 {ms(r['predict_via_worker_p99_ms'])}"),
        ("  card state from the worker, c=16", f"{n(r['predict_via_worker_rps_c16'])} req/s",
         f"p50 {ms(r['predict_via_worker_p50_ms_c16'])}, p99 {ms(r['predict_via_worker_p99_ms_c16'])}"),
        (f"fraud train, {n(r['train_rows'])} rows", f"{r['train_seconds']:.1f} s",
         f"peak RSS {n(r['train_peak_mb'])} MB"),
    ]  # fmt: skip
    width = max(len(a) for a, _, _ in rows)
    head = (
        f"fraud bench{' --quick' if r['quick'] else ''}: {r['cpu_count']} CPUs ({r['cpu_model'] or '?'}), "
        f"{r['memory_gb']:.0f} GB, Python {r['python_version']}, {r['platform']}; "
        f"load {r['loadavg_start'][0]:.2f} -> {r['loadavg_end'][0]:.2f}; {r['bench_seconds']:.0f} s"
    )
    lines = [head, ""] + [f"{a:<{width}}  {b:>14}  {c}" for a, b, c in rows]
    return "\n".join(lines)


# --- entry point for the roles ----------------------------------------------------------------


def _role_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description="fraud bench's child processes")
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
    if args.role == "limit":
        print(json.dumps(role_limit(args)))
    elif args.role == "naive":
        role_naive(args)
    elif args.role == "noop":
        role_noop(args)
    else:
        print(json.dumps(role_http(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
