"""A real Prometheus against the live stack: the dashboards' queries and the alert rules work.

The worker, the API and a synthetic producer run as processes (as in the other integration
tests), the worker and the API serving the champion of an MLflow registry with a challenger in
shadow and a retraining recorded (the lifecycle panels need them); a ``prometheus`` process
(Debian package ``prometheus``; required when ``CI`` is set)
scrapes them every second with the project's own prometheus.yml, its targets rewritten to the
loopback ports, and loads the project's alerts.yml. Then:

- every query of every panel of every dashboard returns data (one pass in which all of them
  answer non-empty), with Grafana's variables substituted. The live-quality panels need labels
  joined to decisions, among them a flagged one: the test also publishes transactions of cards
  with days of history (the producer's cold-start traffic is hardly ever flagged) and label
  events for them;
- every alert rule evaluates without error (health "ok" after at least two evaluations) and none
  fires on a healthy stack;
- each process's /metrics text passes ``promtool check metrics``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
import pytest
import yaml
from confluent_kafka import TopicPartition

from model.registry import CHALLENGER, CHAMPION, Registry
from producers.publisher import wire_value
from streaming.children import Child, Children, free_port, python_module, wait_http
from streaming.kafka import clients as kafka
from streaming.settings import KafkaSettings
from tests.integration.conftest import Stack, produce
from tests.test_deploy import (
    ALERTS,
    PROMETHEUS_CONFIG,
    dashboard_panels,
    load_dashboards,
    substitute_variables,
)

pytestmark = pytest.mark.integration

#: Grafana's $__rate_interval for a 1 s scrape interval is 4 scrapes at least; 15 s leaves margin.
RATE_INTERVAL = "15s"
INTERVAL = "5s"
#: What the producer sends: enough for every rate window and for the drift window to fill.
PRODUCER_ARGS = ["--rate", "100", "--duration", "40", "--quiet"]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not on PATH; CI must install it (Debian package: prometheus)")
        pytest.skip(f"{name} is not on PATH (apt-get install prometheus)")
    return path


def prometheus_config(targets: dict[str, str], path: Path) -> Path:
    """deploy/prometheus/prometheus.yml with 1 s intervals, loopback targets and alerts.yml by path."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str((PROMETHEUS_CONFIG.parent / f).resolve()) for f in config["rule_files"]]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert targets.keys() <= jobs, f"prometheus.yml has jobs {sorted(jobs)}, not all of {sorted(targets)}"
    # Every fraudstream process is a fraud-* job and must run here; third-party exporters of the
    # compose stack (kafka-exporter) are not part of this test and are left out.
    unknown = {j for j in jobs - targets.keys() if j.startswith("fraud-")}
    assert not unknown, f"prometheus.yml scrapes {sorted(unknown)}, which this test does not start"
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] in targets]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


class Prometheus:
    """A ``prometheus`` process scraping ``config``; its HTTP API."""

    def __init__(self, children: Children, binary: str, config: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={children.logdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        self.child = children.start("prometheus", argv, stop_timeout=15)

    def log(self) -> str:
        return self.child.log_tail()

    def api(self, path: str, **params: Any) -> Any:
        resp = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5.0)
        body = resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_http(f"{self.url}/-/ready", self.child, timeout)


@pytest.fixture
def prometheus_binary() -> str:
    return _tool("prometheus")


@pytest.fixture
def promtool() -> str:
    return _tool("promtool")


def start_producer(stack: Stack, children: Children, port: int) -> Child:
    env = {**stack.env(), "FRAUD_METRICS_PORT": str(port)}
    argv = python_module("streaming.cli", "produce", *PRODUCER_ARGS)
    # SIGINT: the producer flushes and exits on Ctrl-C.
    return children.start("producer", argv, env, stop_signal=signal.SIGINT, stop_timeout=15)


def drive_predict(api_port: int, frame: pd.DataFrame, count: int = 20) -> None:
    url = f"http://127.0.0.1:{api_port}/predict"
    headers = {"content-type": "application/json"}
    for row in frame.iloc[:count].to_dict("records"):
        resp = httpx.post(url, content=wire_value(row), headers=headers, timeout=10.0)
        assert resp.status_code == 200, resp.text
    bad = httpx.post(url, content=b'{"transaction_id": "no-fields"}', headers=headers, timeout=10.0)
    assert bad.status_code == 422, bad.text


#: Prefix of the card and merchant ids of the traffic published for live quality, so that its
#: cards and merchants share no history with the producer's.
QUALITY_PREFIX = "lq-"


def publish_quality_traffic(stack: Stack, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s transactions (days of traffic of a few cards) under their own card and merchant ids.

    The producer's traffic starts from empty card histories and is almost never flagged in the
    seconds the test runs; these cards have days of history, and some of their transactions go to
    review or block, which live precision needs. Returns the rows as published.
    """
    rows = frame.assign(
        card_id=QUALITY_PREFIX + frame["card_id"].astype(str),
        merchant_id=QUALITY_PREFIX + frame["merchant_id"].astype(str),
    )
    records = rows.to_dict("records")
    produce(stack.topics.settings, [(str(r["card_id"]).encode(), wire_value(r)) for r in records])
    return rows


def read_decisions(settings: KafkaSettings, ids: set[str], timeout: float) -> dict[str, str]:
    """transaction id -> decision outcome, read from the decisions topic until every id of ``ids``
    has one or ``timeout`` seconds."""
    consumer = kafka.consumer(settings, f"reader-{uuid.uuid4().hex[:8]}")
    topic = settings.decisions_topic
    meta = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
    out: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    try:
        while not ids <= out.keys() and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None:
                    d = orjson.loads(msg.value() or b"{}")
                    if d.get("transaction_id") in ids:
                        out.setdefault(d["transaction_id"], d["decision"])
    finally:
        consumer.close()
    return out


def publish_labels(stack: Stack, rows: pd.DataFrame, timeout: float = 60.0) -> None:
    """Label events, with the simulation's verdict, for ``rows`` (published by
    :func:`publish_quality_traffic`) as a label feed would send them: every fraud, every
    transaction that went to review or block, and a few genuine allowed ones.

    Keyed by card id, with the transaction's own timestamp and a ``labelled_at`` a day later.
    The worker joins them to its retained decisions, which gives fraud_labelled_decisions, live
    recall (a fraud is labelled) and live precision (a flagged decision is labelled).
    """
    settings = stack.topics.settings
    decided = read_decisions(settings, set(rows["transaction_id"]), timeout)
    assert len(decided) == len(rows), f"{len(rows) - len(decided)} transactions without a decision in {timeout}s"
    flagged = {tx for tx, outcome in decided.items() if outcome in ("review", "block")}
    assert flagged, f"none of {len(rows)} transactions with card history went to review or block"
    allowed_genuine = rows.loc[~rows["is_fraud"].astype(bool) & ~rows["transaction_id"].isin(flagged)]
    chosen = rows.loc[
        rows["is_fraud"].astype(bool)
        | rows["transaction_id"].isin(flagged)
        | rows["transaction_id"].isin(allowed_genuine["transaction_id"].iloc[:5])
    ]
    messages: list[tuple[bytes | None, bytes]] = []
    for tx in chosen.to_dict("records"):
        label = {
            "transaction_id": tx["transaction_id"],
            "card_id": tx["card_id"],
            "merchant_id": tx["merchant_id"],
            "is_fraud": bool(tx["is_fraud"]),
            "timestamp": tx["timestamp"],
            "labelled_at": (datetime.fromisoformat(tx["timestamp"]) + timedelta(days=1)).isoformat(),
            "source": "chargeback",
        }
        messages.append((str(tx["card_id"]).encode(), orjson.dumps(label)))
    produce(settings, messages, topic=settings.labels_topic)


def wait_targets_up(prom: Prometheus, jobs: set[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    health: dict[str, str] = {}
    while time.monotonic() < deadline:
        targets = prom.api("targets", state="active")["activeTargets"]
        health = {t["labels"]["job"]: f"{t['health']} {t.get('lastError', '')}".strip() for t in targets}
        if set(health) == jobs and all(h == "up" for h in health.values()):
            return
        time.sleep(0.5)
    raise AssertionError(f"targets not up: {health}\n{prom.log()}")


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, expr as sent, original expr) for every panel query of every dashboard."""
    out = []
    for uid, dashboard in load_dashboards().items():
        for panel in dashboard_panels(dashboard):
            for target in panel["targets"]:
                expr = substitute_variables(target["expr"], dashboard, rate_interval=RATE_INTERVAL, interval=INTERVAL)
                out.append((f"{uid} / {panel['title']} / {target['refId']}", expr, target["expr"]))
    return out


def label_value_queries() -> list[tuple[str, str, str]]:
    """(where, metric, label) of every label_values() template variable."""
    out = []
    for uid, dashboard in load_dashboards().items():
        for var in dashboard["templating"]["list"]:
            if var["type"] == "query":
                metric, label = var["definition"].removeprefix("label_values(").rstrip(")").split(",")
                out.append((f"{uid} / ${var['name']}", metric.strip(), label.strip()))
    return out


def first_pass_with_data(prom: Prometheus, queries: list[tuple[str, str, str]], until: float) -> dict[str, str]:
    """Query everything once a second until one pass answers all non-empty; the misses of the last pass."""
    missing: dict[str, str] = {}
    while True:
        missing = {}
        for where, expr, _ in queries:
            try:
                if not prom.api("query", query=expr)["result"]:
                    missing[where] = f"empty: {expr}"
            except AssertionError as exc:
                missing[where] = f"error: {exc}"
        if not missing or time.monotonic() >= until:
            return missing
        time.sleep(1.0)


def rules_after(prom: Prometheus, since: float) -> list[dict[str, Any]]:
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    return [r for r in rules if _rfc3339(r.get("lastEvaluation", "")) >= since]


def _rfc3339(value: str) -> float:
    if not value or value.startswith("0001"):
        return 0.0
    return pd.Timestamp(value).timestamp()


@pytest.fixture
def processes(stack: Stack) -> Iterator[Children]:
    """Processes this test starts beside the stack's, stopped at the end whatever happens."""
    with Children(stack.workdir) as children:
        yield children


def serve_from_a_registry(stack: Stack, registry: Registry, model_dir: Path, train_frame: pd.DataFrame) -> None:
    """The worker and the API on the registry's champion, with a challenger in shadow and a
    retraining recorded: what the lifecycle panels show (a real retraining on the training data,
    windows scaled to its 20 days; a champion that saw every label usually keeps its place)."""
    from model.retrain import RetrainOptions
    from streaming.retrain import retrain

    _, champion = registry.log_training(model_dir)
    registry.promote(champion, "live stack")
    csv = stack.workdir / "train.csv"
    train_frame.to_csv(csv, index=False)
    retrain(registry, csv, stack.workdir / "retrain", RetrainOptions(label_delay_days=3, eval_days=4, train_days=10))
    if registry.alias(CHALLENGER) is None:  # the candidate was promoted: shadow the one it replaced
        registry.set_challenger(champion, "compare with the previous champion")
    stack.model_uri, stack.tracking_uri = f"models:/{registry.name}@{CHAMPION}", registry.tracking_uri


def test_dashboards_and_alert_rules_work_on_a_live_stack(
    stack: Stack,
    traffic_frame: pd.DataFrame,
    prometheus_binary: str,
    promtool: str,
    processes: Children,
    registry: Registry,
    model_dir: Path,
    train_frame: pd.DataFrame,
) -> None:
    serve_from_a_registry(stack, registry, model_dir, train_frame)
    stack.start_worker()
    # Cards with history, published now so that the worker has decided them by the time the
    # labels are sent (see publish_labels).
    quality_rows = publish_quality_traffic(stack, traffic_frame)
    stack.start_api()
    producer_port, prom_port = free_port(), free_port()

    # Prometheus first, so that it sees the traffic from its start.
    targets = {
        "fraud-worker": f"127.0.0.1:{stack.metrics_port}",
        "fraud-api": f"127.0.0.1:{stack.api_port}",
        "fraud-producer": f"127.0.0.1:{producer_port}",
        "prometheus": f"127.0.0.1:{prom_port}",
    }
    config = prometheus_config(targets, stack.workdir / "prometheus.yml")
    prom = Prometheus(processes, prometheus_binary, config, prom_port)
    prom.wait_ready()

    start_producer(stack, processes, producer_port)
    producer_deadline = time.monotonic() + 40.0
    drive_predict(stack.api_port, traffic_frame)
    wait_targets_up(prom, set(targets))
    up_since = time.time()

    # Each process's exposition passes promtool's linter.
    for name, url in (
        ("worker", f"http://127.0.0.1:{stack.metrics_port}/metrics"),
        ("api", f"http://127.0.0.1:{stack.api_port}/metrics"),
        ("producer", f"http://127.0.0.1:{producer_port}/metrics"),
    ):
        text = httpx.get(url, timeout=5.0).text
        result = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, f"promtool check metrics on the {name}: {result.stdout}{result.stderr}"

    # Labels for decided transactions: the worker joins them to its retained decisions and exports
    # fraud_labelled_decisions and live precision/recall (on its 5 s timer), which the live-quality
    # panels need. fraud_labels_total and fraud_label_dead_letters_total exist from the start.
    publish_labels(stack, quality_rows)

    # Every panel query answers, in one pass, while the producer still sends.
    # (The producer's series go stale when it exits: a pass that answers all of them ran while it sent.)
    missing = first_pass_with_data(prom, dashboard_queries(), until=producer_deadline - 5.0)
    for where, metric, label in label_value_queries():
        if not prom.api(f"label/{label}/values", **{"match[]": metric}):
            missing[where] = f"no values of label {label} on {metric}"
    assert not missing, "dashboard queries without data:\n" + "\n".join(f"{k}: {v}" for k, v in missing.items())

    # Every rule of alerts.yml evaluates cleanly (two evaluations at least after the targets are up)
    # and no alert fires on a healthy stack.
    groups = yaml.safe_load(ALERTS.read_text("utf-8"))["groups"]
    expected = {r.get("alert") or r["record"] for g in groups for r in g["rules"]}
    deadline = time.monotonic() + 15.0
    evaluated: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        evaluated = rules_after(prom, up_since + 2.0)
        if {r["name"] for r in evaluated} >= expected:
            break
        time.sleep(0.5)
    rules = {r["name"]: r for r in evaluated}
    assert rules.keys() >= expected, f"rules not evaluated twice: {sorted(expected - rules.keys())}\n{prom.log()}"
    bad = {n: f"{r['health']}: {r.get('lastError', '')}" for n, r in rules.items() if r["health"] != "ok"}
    assert not bad, f"alert rules failing to evaluate: {bad}"
    firing = {n for n, r in rules.items() if r.get("state") == "firing"}
    assert not firing, f"alerts firing on a healthy stack: {sorted(firing)}"
