"""Configuration: one settings class per process, every field from ``FRAUD_*`` environment variables.

``KafkaSettings`` holds what every process shares (bootstrap servers, security, topic names);
``WorkerSettings``, ``ApiSettings`` and ``ProducerSettings`` add their own fields. Security
options are passed through to both Kafka clients (confluent-kafka and Faust's aiokafka).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FRAUD_", extra="ignore", use_attribute_docstrings=True)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list of Kafka brokers."""
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How clients talk to the brokers."""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    """SASL mechanism when the protocol is SASL_*."""
    kafka_sasl_username: str | None = None
    """SASL user name."""
    kafka_sasl_password: SecretStr | None = None
    """SASL password; never logged."""
    kafka_ssl_cafile: Path | None = None
    """CA bundle to verify the brokers' certificates (SSL / SASL_SSL)."""
    kafka_ssl_certfile: Path | None = None
    """Client certificate for mutual TLS."""
    kafka_ssl_keyfile: Path | None = None
    """Private key of the client certificate."""
    transactions_topic: str = "transactions"
    """Topic the transactions arrive on, keyed by card_id."""
    decisions_topic: str = "fraud-decisions"
    """Topic the decisions are published to, keyed by card_id."""
    dlq_topic: str = "transactions.dlq"
    """Dead-letter topic for transactions that fail validation."""
    labels_topic: str = "fraud-labels"
    """Topic of label events (chargebacks, investigator verdicts), keyed by card_id."""
    labels_dlq_topic: str = "fraud-labels.dlq"
    """Dead-letter topic for label events that fail validation."""
    merchant_risk_topic: str = "fraud-merchant-risk"
    """Internal compacted topic: merchant daily counts and fraud labels, read by every worker and API."""
    rules_topic: str = "fraud-rules"
    """Compacted topic of rules and allow/block lists, followed by every worker and API process."""
    review_topic: str = "fraud-review"
    """Review cases (decision, transaction, features, card history) of every ``review`` decision,
    keyed by transaction id; the console's review queue reads it."""

    topic_partitions: int = Field(default=4, ge=1)
    """Partitions for topics this project creates; the worker's table shards match it."""
    topic_replication_factor: int = Field(default=1, ge=1)
    """Replication factor for topics this project creates."""
    shadow_decisions_topic: str = "fraud-decisions.shadow"
    """Topic of the challenger's shadow decisions (same schema and keys as the decisions; never acted on)."""

    def confluent_config(self) -> dict[str, Any]:
        """librdkafka settings for confluent-kafka clients."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username or ""
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else ""
        if self.kafka_security_protocol.endswith("SSL"):
            for key, value in (
                ("ssl.ca.location", self.kafka_ssl_cafile),
                ("ssl.certificate.location", self.kafka_ssl_certfile),
                ("ssl.key.location", self.kafka_ssl_keyfile),
            ):
                if value is not None:
                    conf[key] = str(value)
        return conf

    def faust_credentials(self) -> Any:
        """Faust (aiokafka) credentials object, or None for PLAINTEXT."""
        import faust  # local: only the worker process needs Faust

        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return None
        context = None
        if protocol.endswith("SSL"):
            context = ssl.create_default_context(cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None)
            if self.kafka_ssl_certfile:
                context.load_cert_chain(
                    str(self.kafka_ssl_certfile), str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None
                )
        if protocol == "SSL":
            return faust.SSLCredentials(context)
        password = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else ""
        return faust.SASLCredentials(
            username=self.kafka_sasl_username or "",
            password=password,
            mechanism=self.kafka_sasl_mechanism,
            ssl_context=context,
        )


class WorkerSettings(KafkaSettings):
    """``fraud worker``: the Faust stream processor."""

    model_dir: Path = Path("artifacts/model")
    """Directory written by ``fraud train --out``."""
    app_id: str = "fraudstream"
    """Faust application id: consumer group and prefix of the state changelog topics."""
    batch_size: int = Field(default=500, ge=1)
    """Most records handed over in one fetch, and about the most scored in one model call. A
    batch is whatever was fetched (never waits to fill), so it grows with load."""
    session_timeout_seconds: float = Field(default=10.0, ge=6.0)
    """Consumer group session timeout; short timeouts make joins and failover fast."""
    fetch_max_wait_ms: int = Field(default=10, ge=1)
    """Longest the broker may hold a fetch when no data is waiting (Faust's own value is 1500)."""
    web_bind: str = "127.0.0.1"
    """Interface the worker's web server (state view, /health, /ready) listens on."""
    web_host: str = "127.0.0.1"
    """Host name other workers and the API reach this worker at; state look-ups are routed to
    the worker that owns the card by it, so it must not be 0.0.0.0."""
    web_port: int = 6066
    """Port of the worker's state view."""
    metrics_port: int = 9101
    """Port of the worker's Prometheus /metrics."""
    metrics_bind: str = "127.0.0.1"
    """Interface the worker's Prometheus /metrics listens on (containers: 0.0.0.0)."""
    state_token: SecretStr | None = None
    """Bearer token guarding the worker's card state view (``/cards/history``), shared by the
    workers and an API with ``card_state_source=worker``; without it the view answers 403. Never logged."""
    data_dir: Path = Path(".fraudstream")
    """Local data directory of the Faust app."""
    model_reload_seconds: float = Field(default=10.0, gt=0)
    """How often the model directory is checked for a new artifact."""
    history_grace_seconds: int = Field(default=3600, ge=0)
    """Card history kept beyond the 30-day window, for late transactions."""
    quality_max_decisions: int = Field(default=200_000, ge=1)
    """Recent decisions kept to join with labels for the live precision/recall (memory ~200 B each)."""
    max_history_per_card: int = Field(default=5000, ge=10)
    """Most transactions kept per card (the newest); a card busier than this over 30 days gets
    capped counts. Each card's state is one changelog record of about 60 bytes per entry."""
    include_features: bool = False
    """Add the feature values to each decision (bigger messages; for audits and parity checks)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the worker."""
    model_uri: str = ""
    """``models:/NAME@ALIAS`` to serve a registry alias (MLflow, see FRAUD_MLFLOW_TRACKING_URI) instead
    of FRAUD_MODEL_DIR, e.g. ``models:/fraudstream@champion``; empty: serve FRAUD_MODEL_DIR."""
    mlflow_tracking_uri: str = "sqlite:///artifacts/mlflow/mlflow.db"
    """MLflow tracking and registry URI: the embedded SQLite store (default) or a server's http(s) URL."""
    shadow: bool = True
    """With FRAUD_MODEL_URI, also score every batch with the same model's ``challenger`` alias when it
    is set, and publish its decisions to the shadow topic (never acted on)."""


class ApiSettings(KafkaSettings):
    """``fraud api``: the synchronous scoring adapter."""

    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = 8000
    """Port to listen on."""
    model_dir: Path = Path("artifacts/model")
    """Directory written by ``fraud train --out``."""
    card_state_source: Literal["replica", "worker"] = "replica"
    """Where /predict reads card state. ``replica``: this process's own copy of the card table,
    followed from the workers' changelog topic (no hop per request; memory for every card's
    history, see ``fraud_api_card_state_bytes``). ``worker``: an HTTP call to the worker owning
    the card (``FRAUD_WORKER_URL``), for tables too large to copy into each API process."""
    app_id: str = "fraudstream"
    """The workers' ``FRAUD_APP_ID``: names the card changelog topic the replica follows."""
    worker_url: str = "http://127.0.0.1:6066"
    """Base URL of a worker's state view (``worker`` source); requests are routed to the worker
    owning the card."""
    state_token: SecretStr | None = None
    """Bearer token guarding the worker's card state view (``/cards/history``), shared by the
    workers and an API with ``card_state_source=worker``; with that source the API refuses to
    start without it. Never logged."""
    state_timeout_seconds: float = Field(default=0.5, gt=0)
    """How long /predict waits for card state from the worker (``worker`` source) before
    answering with the stateless score."""
    feedback_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long POST /feedback waits for the broker to acknowledge a label before answering 503
    (the producer gives up on the message at the same time)."""
    model_reload_seconds: float = Field(default=10.0, gt=0)
    """How often the model directory is checked for a new artifact."""
    auth_disabled: bool = False
    """Serve without API keys. Off by default: the API refuses to start without keys unless this
    is set explicitly (for a laptop or a test, never on a network)."""
    api_keys: SecretStr | None = None
    """Accepted API keys, one per line: ``NAME SHA256 SCOPE[,SCOPE...]`` (scopes: predict, feedback,
    admin, console); ``fraud keys create`` prints a key and its line. Never logged."""
    api_keys_file: Path | None = None
    """A file with the key list (a mounted secret), read at start; adds to ``FRAUD_API_KEYS``."""
    rate_limit_per_second: float = Field(default=200.0, gt=0)
    """Requests a second each key may make on average (429 with Retry-After past it)."""
    rate_limit_burst: int = Field(default=400, ge=1)
    """Requests a key may make at once above its rate."""
    max_body_bytes: int = Field(default=65_536, ge=1024)
    """Largest request body accepted (413 past it); a transaction is at most 16 KiB."""
    max_concurrent_requests: int = Field(default=256, ge=1)
    """Requests in flight at once (probes excepted); more get 503 at once instead of queueing."""
    predict_decision_only: bool = False
    """Answer /predict with the decision alone (allow/review/block and ids), no score or reasons:
    for callers who must not learn how close to a threshold a transaction was."""
    backtest_data: Path | None = None
    """Labelled CSV the console and ``POST /admin/rules/backtest`` test rules on (none: disabled)."""
    console_enabled: bool = True
    """Serve the analyst console at /console, with its four topic readers (review cases, labels,
    decisions, transactions); false on API processes that only serve /predict."""
    console_max_cases: int = Field(default=10_000, ge=1)
    """Unlabelled review cases the console's queue holds (the oldest, ~3 KB each); newer ones
    stay on the review topic, are counted, and are read again at the API's next start."""
    console_max_labels: int = Field(default=200_000, ge=1)
    """Labelled transaction ids the console remembers (~100 B each), to keep their cases out of
    the queue; past it the oldest are forgotten, and their cases could return after a restart."""
    console_decisions: int = Field(default=20_000, ge=1)
    """Recent decisions the console's live view and live precision/recall keep (~300 B each);
    at start it reads back this many from the end of the decisions topic."""
    worker_metrics_url: str | None = None
    """A worker's Prometheus /metrics URL (``http://worker:9101/metrics``): the console's model
    page shows its drift gauges from it (none: drift is not shown)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the API."""
    model_uri: str = ""
    """``models:/NAME@ALIAS`` to serve a registry alias (MLflow, see FRAUD_MLFLOW_TRACKING_URI) instead
    of FRAUD_MODEL_DIR, e.g. ``models:/fraudstream@champion``; empty: serve FRAUD_MODEL_DIR."""
    mlflow_tracking_uri: str = "sqlite:///artifacts/mlflow/mlflow.db"
    """MLflow tracking and registry URI: the embedded SQLite store (default) or a server's http(s) URL."""


class RegistrySettings(BaseSettings):
    """``fraud train``, ``fraud models`` and ``fraud retrain``: where runs and versions are recorded."""

    model_config = SettingsConfigDict(env_prefix="FRAUD_", extra="ignore", use_attribute_docstrings=True)

    mlflow_tracking_uri: str = "sqlite:///artifacts/mlflow/mlflow.db"
    """MLflow tracking and registry URI: the embedded SQLite store (default) or a server's http(s) URL;
    ``none`` leaves ``fraud train`` runs unrecorded."""
    registered_model: str = "fraudstream"
    """Name of the registered model that training runs become versions of."""


class ProducerSettings(KafkaSettings):
    """``fraud produce``: the synthetic producer and CSV replay."""

    metrics_port: int = 9102
    """Port of the producer's Prometheus /metrics (0 disables it)."""
    metrics_bind: str = "127.0.0.1"
    """Interface the producer's Prometheus /metrics listens on (containers: 0.0.0.0)."""
    linger_ms: float = Field(default=5.0, ge=0)
    """How long the producer gathers records into one batch per partition (librdkafka's
    ``linger.ms``). Records are stamped when sent, so this much counts towards their measured
    latency; longer batches cost the broker less per record (see docs/performance.md)."""


def env_help(settings_class: type[BaseSettings]) -> str:
    """The environment variables a settings class reads, for ``--help``."""
    lines = ["environment (FRAUD_*):"]
    for name, field in settings_class.model_fields.items():
        default = field.default if field.default is not None else "-"
        if isinstance(default, SecretStr):
            default = "***"
        lines.append(f"  FRAUD_{name.upper()} (default {default}): {field.description or ''}")
    return "\n".join(lines)
