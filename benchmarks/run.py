"""``fraud bench``'s orchestrator: broker, model, traffic and every phase, each measured program
in its own process (see :mod:`benchmarks`)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import (
    DecisionReader,
    Traffic,
    batch_stats,
    batch_totals,
    first_after,
    history_depth,
    percentiles,
    prefill,
    proc_cpu_seconds,
    record_timestamps,
    rss_mb,
)
from benchmarks.report import machine, rounded
from streaming.children import Child, Children, free_port, python_module, wait_for, wait_http
from streaming.kafka import clients as kafka
from streaming.kafka.broker import EmbeddedBroker
from streaming.settings import ProducerSettings

#: The token between the bench's worker and its API with the ``worker`` card state source.
BENCH_STATE_TOKEN = "bench-" + uuid.uuid4().hex

#: Days of card history the month-deep phases start at: the features' longest window.
HISTORY_DAYS = 30.0

#: Suffix of the report keys measured with a month of card history (the headline numbers).
MONTH = "_month"


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


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # Inherited FRAUD_* settings would silently change what is measured: start from none.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    return {**env, "PYTHONUNBUFFERED": "1", **(extra or {})}


def _run_json(children: Children, name: str, argv: list[str], timeout: float) -> Any:
    """Run a child to completion and parse the JSON on the last line of its stdout."""
    out = children.logdir / f"{name}.out"
    child = children.start(name, argv, _child_env(), stdout=out)
    code = child.wait(timeout)
    if code != 0:
        raise RuntimeError(f"{name} exited with code {code}{child.explain()}")
    return json.loads(out.read_text().strip().splitlines()[-1])


def _wait_json(path: Path, child: Child, timeout: float) -> Any:
    """The JSON ``child`` writes to ``path`` (it keeps running)."""
    wait_for(child, path.exists, f"result in {path}", timeout, interval=0.1)
    return json.loads(path.read_bytes())


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
    start = time.perf_counter()
    child = children.start(
        "train", python_module("streaming.cli", "train", "--data", str(csv), "--out", str(model_dir)), _child_env()
    )
    try:
        # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would be the max of all).
        _, status, usage = os.wait4(child.pid, 0)
        child.proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if child.returncode is None:
            child.stop()
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"fraud train exited with {child.returncode}{child.explain()}")
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
        base = ProducerSettings(
            kafka_bootstrap_servers=self.bootstrap, topic_partitions=self.opts.partitions, metrics_port=0
        )
        return base.model_copy(update=topics or {})

    def topic(self, name: str) -> str:
        full = f"bench-{self.suffix}-{name}"
        kafka.ensure_topics(self.settings(), [full])
        return full

    def run(self) -> dict[str, Any]:
        opts = self.opts
        model_dir, train = _train(opts, self.workdir, self.children)
        self.results.update(train)
        self.model_dir = model_dir
        _say(f"trained in {train['train_seconds']:.1f} s, peak {train['train_peak_mb']:.0f} MB")

        self.traffic = self.generate_traffic()

        broker: EmbeddedBroker | None = None
        try:
            if opts.bootstrap_servers:
                self.bootstrap = opts.bootstrap_servers
            else:
                broker = EmbeddedBroker(log_file=self.workdir / "broker.log").start()
                self.bootstrap = broker.bootstrap_servers
                self.broker_pid = broker.pid
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

    @property
    def measured_count(self) -> int:
        """Transactions one pass of the worker's phases takes: the saturated drain, then the latency."""
        return self.opts.worker_count + self.latency_count

    def generate_traffic(self) -> Traffic:
        """Cards' first days (the limit, naive and shallow worker phases take prefixes), then more
        days at the same rate: the month-deep phases take ``measured_count`` transactions from
        the first one ``HISTORY_DAYS`` in."""
        opts = self.opts
        # A tenth more than needed, here and below: the generator's row count is only expected
        # (and when it falls short, more cards make the days denser, so the rows cover fewer days).
        per_day = max(opts.limit_count, opts.naive_count, 1.1 * self.measured_count) / HISTORY_DAYS
        days = (HISTORY_DAYS + self.measured_count / per_day) * 1.1
        needed = math.ceil(per_day * days)
        _say(f"generating {needed:,} transactions over {days:.1f} days ...")
        traffic = Traffic.generate(needed, days=days)
        self.month_start = first_after(traffic.rows, HISTORY_DAYS)
        if self.month_start < self.measured_count or len(traffic.rows) - self.month_start < self.measured_count:
            raise RuntimeError(f"generated traffic too short for the month-deep phases ({len(traffic.rows):,} rows)")
        cards, mean, history_days = history_depth(traffic.rows, self.month_start, HISTORY_DAYS)
        self.results.update(month_cards=cards, month_history_mean=mean, month_history_days=history_days)
        _say(f"month-deep phases start {history_days:.1f} days in: {cards:,} cards, {mean:.1f} transactions each")
        return traffic

    def phase_limit(self) -> None:
        n = self.opts.limit_count
        source, sink = self.topic("limit-in"), self.topic("limit-out")
        rate = prefill(self.settings(), source, self.traffic.records[:n])
        self.results["produce_tx_per_s"] = rate
        _say(f"limit loop: {n:,} transactions (pre-filled at {rate:,.0f} msg/s) ...")
        argv = python_module(
            "benchmarks", "limit", "--bootstrap", self.bootstrap, "--topic", source,
            "--out-topic", sink, "--model-dir", str(self.model_dir), "--count", str(n),
        )  # fmt: skip
        out = _run_json(self.children, "limit", argv, timeout=600)
        self.results["limit_tx_per_s"] = out["tx_per_s"]
        self.results["limit_cpu_us_per_tx"] = out["cpu_us_per_tx"]
        _say(f"limit: {out['tx_per_s']:,.0f} tx/s")

    def phase_naive(self) -> None:
        n = self.opts.naive_count
        source, sink = self.topic("naive-in"), self.topic("naive-out")
        prefill(self.settings(), source, self.traffic.records[:n])
        _say(f"naive Faust agent: {n:,} transactions ...")
        result = self.workdir / "naive.json"
        argv = python_module(
            "benchmarks", "naive", "--bootstrap", self.bootstrap, "--topic", source,
            "--out-topic", sink, "--model-dir", str(self.model_dir), "--count", str(n),
            "--partitions", str(self.opts.partitions), "--result", str(result),
            "--datadir", str(self.workdir / "naive-data"),
        )  # fmt: skip
        naive = self.children.start("naive", argv, _child_env())
        try:
            out = _wait_json(result, naive, timeout=120 + n / 20)
        finally:
            naive.stop()
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
            # The worker's state view answers only with the token the API holds.
            "FRAUD_STATE_TOKEN": BENCH_STATE_TOKEN,
        }
        return {**env, **self.opts.worker_env}

    def phase_worker_and_predict(self) -> None:
        opts = self.opts
        topics = {
            "transactions_topic": f"bench-{self.suffix}-tx",
            "decisions_topic": f"bench-{self.suffix}-decisions",
            "dlq_topic": f"bench-{self.suffix}-tx.dlq",
        }
        settings = self.settings(topics)
        kafka.ensure_topics(settings, kafka.project_topics(settings))
        saturated = self.traffic.records[: opts.worker_count]
        prefill(settings, settings.transactions_topic, saturated)
        web_port, self.worker_metrics_port = free_port(), free_port()
        _say(f"fraud worker: draining {opts.worker_count:,} pre-filled transactions ...")
        worker = self.children.start(
            "worker", python_module("streaming.cli", "worker"), _child_env(self.worker_env(topics, web_port))
        )
        reader = DecisionReader(settings, settings.decisions_topic)
        try:
            # Cards' first days (short histories), then the same after a month of traffic.
            self.measure_saturated(reader, worker, 0, "", before=(0.0, 0.0, 0.0))
            self.measure_latency(reader, settings, worker, opts.worker_count, "")
            self.warm_up(reader, settings)
            before = batch_totals(self.metrics_url)
            self.prefill_paused(settings, worker)
            self.measure_saturated(reader, worker, self.month_start, MONTH, before)
            self.measure_latency(reader, settings, worker, self.month_start + opts.worker_count, MONTH)
            self.measure_predict(web_port, worker)
        finally:
            reader.close()

    def warm_up(self, reader: DecisionReader, settings: ProducerSettings) -> None:
        """The rest of the month, untimed: every card gets the history it has in steady state."""
        rows = self.traffic.rows[self.measured_count : self.month_start]
        records = self.traffic.records[self.measured_count : self.month_start]
        _say(f"warm-up (not measured): {len(rows):,} transactions for a month of card history ...")
        start = time.perf_counter()
        prefill(settings, settings.transactions_topic, records)
        ids = [str(r["transaction_id"]) for r in rows]
        seen = reader.wait_for(ids, stall=60)
        if seen < len(ids):
            raise RuntimeError(f"warm-up: the worker decided {seen} of {len(ids)}")
        self.results.update(month_warmup_transactions=len(ids), month_warmup_seconds=time.perf_counter() - start)

    def prefill_paused(self, settings: ProducerSettings, worker: Child) -> None:
        """Pre-fill the month-deep saturated phase's transactions with the worker stopped
        (SIGSTOP, well under its session timeout), so that it drains a backlog as in the first
        phase rather than racing the producer for the cores."""
        records = self.traffic.records[self.month_start : self.month_start + self.opts.worker_count]
        _say(f"fraud worker, month of history: draining {len(records):,} pre-filled transactions ...")
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            prefill(settings, settings.transactions_topic, records)
        finally:
            os.kill(worker.pid, signal.SIGCONT)

    def measure_saturated(
        self, reader: DecisionReader, worker: Child, start: int, key: str, before: tuple[float, float, float]
    ) -> None:
        """The worker draining pre-filled ``rows[start:start + worker_count]``; report keys end in ``key``."""
        rows = self.traffic.rows[start : start + self.opts.worker_count]
        ids = [str(r["transaction_id"]) for r in rows]
        marks: dict[str, float] = {}

        def first(seen: int) -> None:
            # CPU from the first decision on: startup (imports, model load, group join) excluded.
            marks["seen0"], marks["cpu0"] = seen, proc_cpu_seconds(worker.pid)
            if self.broker_pid:
                marks["broker0"] = proc_cpu_seconds(self.broker_pid)

        # Allow for the worker's startup before the first decision, then fail on a stall.
        wait_for(worker, lambda: reader.poll(0.2) > 0, "decision", timeout=180, interval=0)
        seen = reader.wait_for(ids, stall=60, on_first=first)
        if seen < len(ids) or "cpu0" not in marks:
            raise RuntimeError(f"worker decided {seen} of {len(ids)}:\n{worker.log_tail()}")
        cpu = proc_cpu_seconds(worker.pid) - marks["cpu0"]
        size, ms = batch_stats(before, batch_totals(self.metrics_url))
        stamps = np.array([reader.timestamps[i] for i in ids], dtype=np.int64)
        span_s = max(int(stamps.max() - stamps.min()), 1) / 1000
        found = {
            "worker_batch_mean_size": size,
            "worker_batch_mean_ms": ms,
            # Rate from the decisions' own record timestamps, first to last: start-up excluded.
            "worker_tx_per_s": (len(ids) - 1) / span_s,
            "worker_cpu_us_per_tx": cpu / (len(ids) - marks["seen0"]) * 1e6,
        }
        if self.broker_pid and "broker0" in marks:
            broker_cpu = proc_cpu_seconds(self.broker_pid) - marks["broker0"]
            found["worker_broker_cpu_us_per_tx"] = broker_cpu / (len(ids) - marks["seen0"]) * 1e6
        self.results.update({name + key: value for name, value in found.items()})
        _say(
            f"worker{key}: {found['worker_tx_per_s']:,.0f} tx/s, "
            f"{found['worker_cpu_us_per_tx']:,.0f} µs CPU per transaction"
        )

    def measure_latency(
        self, reader: DecisionReader, settings: ProducerSettings, worker: Child, start: int, key: str
    ) -> None:
        """``rows[start:start + latency_count]`` published at the offered rate; keys end in ``key``."""
        from producers.publisher import Publisher

        opts = self.opts
        rows = self.traffic.rows[start : start + self.latency_count]
        ids = [str(r["transaction_id"]) for r in rows]
        _say(f"latency: {len(rows):,} transactions at {opts.latency_rate:,.0f}/s ...")
        before = batch_totals(self.metrics_url)
        publisher = Publisher(settings.model_copy(update={"linger_ms": opts.producer_linger_ms}))
        stats = publisher.publish(rows, rate=opts.latency_rate)
        if stats.failed:
            raise RuntimeError(f"publishing for the latency phase: {stats.errors[:3]}")
        seen = reader.wait_for(ids, stall=60)
        size, ms = batch_stats(before, batch_totals(self.metrics_url))
        # Transactions' record timestamps (set by the producer at send time) from the topic itself.
        sent = record_timestamps(settings, settings.transactions_topic)
        lat = [reader.timestamps[i] - sent[i] for i in ids if i in reader.timestamps and i in sent]
        if not lat:
            raise RuntimeError(f"no decision for the latency phase:\n{worker.log_tail()}")
        p50, p99, worst = percentiles(lat)
        # Below the offered rate, the worker fell behind and the latency is mostly queueing.
        first_sent = min(sent[i] for i in ids if i in sent)
        last_decided = max(reader.timestamps[i] for i in ids if i in reader.timestamps)
        found = {
            "latency_batch_mean_size": size,
            "latency_batch_mean_ms": ms,
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
            "latency_max_ms": worst,
            "latency_offered_tx_per_s": stats.acked / stats.seconds,
            "latency_decided_tx_per_s": seen / max((last_decided - first_sent) / 1000, 1e-3),
            "latency_transactions": len(ids),
            "latency_decided": seen,
        }
        self.results.update({name + key: value for name, value in found.items()})
        _say(f"latency{key}: p50 {p50:.0f} ms, p99 {p99:.0f} ms ({seen:,} of {len(ids):,} decided)")

    def measure_predict(self, web_port: int, worker: Child) -> None:
        """``/predict`` after the month-deep phases: the API's card table copy holds a month."""
        opts = self.opts
        api_port, api_worker_port, noop_port = free_port(), free_port(), free_port()
        api_env = {
            "FRAUD_HOST": "127.0.0.1",
            # The driver sends no key: measured without the key check (a hash and a look-up).
            "FRAUD_AUTH_DISABLED": "true",
            # The per-key rate limit (200/s by default) would answer the load with 429s.
            "FRAUD_RATE_LIMIT_PER_SECOND": "1e9",
            "FRAUD_RATE_LIMIT_BURST": "1000000000",
            "FRAUD_STATE_TOKEN": BENCH_STATE_TOKEN,
            "FRAUD_MODEL_DIR": str(self.model_dir),
            "FRAUD_APP_ID": f"bench-{self.suffix}",
            "FRAUD_WORKER_URL": f"http://127.0.0.1:{web_port}",
            "FRAUD_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
        }
        # The default card state source (the API's own copy of the card table) and the other
        # one (a request to the worker that owns the card), side by side.
        started = time.perf_counter()
        api = self.children.start(
            "api", python_module("streaming.cli", "api"), _child_env({**api_env, "FRAUD_PORT": str(api_port)})
        )
        api_worker = self.children.start(
            "api-worker",
            python_module("streaming.cli", "api"),
            _child_env({**api_env, "FRAUD_PORT": str(api_worker_port), "FRAUD_CARD_STATE_SOURCE": "worker"}),
        )
        noop = self.children.start("noop", python_module("benchmarks", "noop", "--port", str(noop_port)), _child_env())
        # Ready once it restored its copy of the card table: a month of changelog, in a full run
        # some hundreds of MB from the broker.
        wait_http(f"http://127.0.0.1:{api_port}/ready", api, timeout=600)
        # Start-up included (imports, model), as an operator would wait for it.
        self.results["api_ready_seconds"] = time.perf_counter() - started
        wait_http(f"http://127.0.0.1:{api_worker_port}/ready", api_worker, timeout=120)
        wait_http(f"http://127.0.0.1:{noop_port}/health", noop, timeout=120)
        # Transactions the stream has decided: their cards have a month of state, which /predict reads.
        bodies = self.workdir / "bodies.jsonl"
        decided = self.traffic.records[self.month_start : self.month_start + min(1000, opts.worker_count)]
        bodies.write_bytes(b"\n".join(value for _, value in decided))
        _say(f"/predict and no-op, c=1 and c=16, {opts.http_seconds:g} s each ...")
        argv = python_module(
            "benchmarks", "http", "--bodies", str(bodies), "--seconds", str(opts.http_seconds),
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
        # Peaks so far (VmHWM): the worker after every phase, the API after restoring a month-deep
        # card table copy and serving the load.
        self.results["worker_rss_mb"] = rss_mb(worker.pid)[1]
        self.results["api_rss_mb"] = rss_mb(api.pid)[1]
        self.results["api_via_worker_rss_mb"] = rss_mb(api_worker.pid)[1]
        self.results["predict_state_unavailable"] = sum(
            out[f"{name}_{c}"]["state_unavailable"] for name in ("predict", "predict_via_worker") for c in ("c1", "c16")
        )
        _say(
            f"/predict p50 {self.results['predict_p50_ms']:.2f} ms (no-op {self.results['noop_p50_ms']:.2f} ms), "
            f"{self.results['predict_rps_c16']:,.0f} req/s at c=16"
        )


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
    """Run every phase and return the report (a flat dict; see :data:`benchmarks.report.REQUIRED_KEYS`)."""
    started = time.perf_counter()
    report: dict[str, Any] = {"quick": opts.quick, **machine(), "loadavg_start": list(os.getloadavg())}
    with _workdir(opts.workdir) as workdir:
        bench = Bench(opts, workdir)
        report.update(bench.run())
    report["worker_vs_limit"] = report["worker_tx_per_s"] / report["limit_tx_per_s"]
    report["worker_vs_limit" + MONTH] = report["worker_tx_per_s" + MONTH] / report["limit_tx_per_s"]
    report["worker_vs_naive"] = report["worker_tx_per_s"] / report["naive_tx_per_s"]
    report["loadavg_end"] = list(os.getloadavg())
    report["bench_seconds"] = time.perf_counter() - started
    sizes = asdict(opts)
    sizes.pop("workdir")
    report["options"] = sizes
    return rounded(report)
