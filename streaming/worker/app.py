"""The worker process: Faust wired to the batch pipeline (:mod:`streaming.worker.pipeline`).

Faust brings the consumer group, partition assignment, the card table's recovery from its
changelog and the web server; the batches come a fetch at a time from
:mod:`streaming.kafka.faust_transport`, not through a Faust agent. Everything done with a batch
(and the error policy) is the pipeline's; this module only connects Faust's hooks to it.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import faust
from prometheus_client import start_http_server
from pydantic import SecretStr

from model.registry import model_holders
from model.scoring import ModelHolder, scoring_executor
from streaming.fatal import Exit
from streaming.kafka import clients as kafka
from streaming.kafka import faust_transport
from streaming.kafka.outputs import Outputs
from streaming.kafka.replica import Replica
from streaming.metrics import WorkerMetrics
from streaming.scoring.merchant_risk import MerchantRisk
from streaming.scoring.rules import RuleBook
from streaming.scoring.service import ScoringService
from streaming.scoring.state import CARD_TABLE, decode_state, empty_state
from streaming.settings import WorkerSettings
from streaming.worker.pipeline import BatchScorer, Pipeline

log = logging.getLogger("fraudstream.worker")

#: How long review cases stay on their topic (an unreviewed case older than this is dropped).
REVIEW_RETENTION_MS = 30 * 24 * 3600 * 1000


def card_table(app: faust.App) -> faust.types.TableT[str, bytes]:
    """The card states. Raw keys: the state-view routing hashes the same bytes as the producers
    (the changelog topic encodes its keys as JSON whatever the schema says; see changelog_key).
    Raw values (``value_type=bytes``, from which Faust picks the changelog's serializer):
    recovery restores the changelog's JSON bytes as they are, the form the table holds."""
    schema: faust.Schema = faust.Schema(key_type=str, key_serializer="raw", value_serializer="raw")
    return app.Table(CARD_TABLE, default=None, schema=schema, value_type=bytes)


def create_app(
    settings: WorkerSettings,
    holder: ModelHolder,
    metrics: WorkerMetrics,
    risk: MerchantRisk | None = None,
    replica: Replica | None = None,
    exit: Exit | None = None,
    challenger: ModelHolder | None = None,
    rules: RuleBook | None = None,
) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=settings.faust_credentials(),
        store="memory://",
        datadir=str(settings.data_dir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_seconds / 3),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_max_poll_records=settings.batch_size,
        web_enabled=True,
        web_bind=settings.web_bind,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        # Faust's own views would serve any table key (/table/...) and the cluster's partition
        # map (/router/) to anyone: card state goes only through the token-guarded view below.
        web_tables_enabled=False,
        web_router_enabled=False,
    )

    # One stream of both inputs: labels and transactions of a card share a partition number (and
    # so a worker and its card state), and one task applies both in order, without locks. Their
    # records come in batches, without Faust's per-message agent machinery (faust_transport).
    faust_transport.install(
        app,
        settings.fetch_max_wait_ms,
        batch_topics=(settings.transactions_topic, settings.labels_topic),
        read_ends=functools.partial(kafka.read_ends, settings),
    )
    inputs = app.topic(
        settings.transactions_topic,
        settings.labels_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    app.topics.add(inputs)  # subscribed to as an agent's topic would be
    cards = card_table(app)
    executor = scoring_executor()
    service = ScoringService(
        holder,
        risk or MerchantRisk(),
        settings.include_features,
        track_drift=True,
        challenger=challenger,
        rules=rules,
        metrics=metrics,
    )
    executor.submit(service.warm_up)
    pipeline = Pipeline(
        settings,
        BatchScorer(service, metrics, settings.history_grace_seconds * 1000, settings.max_history_per_card),
        metrics,
        # Every output goes through librdkafka (streaming/kafka/outputs.py), the changelog too.
        Outputs(settings),
        cards.data,
        cards.changelog_topic.get_topic_name(),
        executor,
        faust_transport.Acknowledger(app),
        replica,
        exit,
    )
    app.pipeline = pipeline  # type: ignore[attr-defined]  # for tests and debugging

    def owned() -> list[faust.types.TP]:
        return [tp for tp in app.consumer.assignment() if tp.topic == settings.transactions_topic]

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # receivers get signal= as a keyword
    async def _forget_revoked(app: faust.App, revoked: set[faust.types.TP], **_: Any) -> None:
        pipeline.on_revoked({tp.partition for tp in revoked if tp.topic == settings.transactions_topic})

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # receivers get signal= as a keyword
    async def _sync_on_assignment(app: faust.App, assigned: set[faust.types.TP], **_: Any) -> None:
        pipeline.on_assigned()

    @app.task
    async def score_transactions() -> None:
        await pipeline.run(faust_transport.take_batches(app, settings.batch_size))

    @app.page("/cards/history")
    @state_guard(settings.state_token)
    @app.table_route(table=cards, query_param="card_id")
    async def card_history(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """A card's stored history, served by the worker that owns the card (others proxy)."""
        if not recovered():
            return web.json({"error": "state is being restored"}, status=503)
        card_id = request.query["card_id"]
        return web.json({"card_id": card_id, "history": decode_state(cards.data.get(card_id)) or empty_state()})

    def recovered() -> bool:
        # TableManager has .recovery; the TableManagerT protocol omits it.
        return bool(app.tables.recovery.completed.is_set()) and not app.rebalancing  # type: ignore[attr-defined]

    @app.page("/health")
    async def health(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        shadow = challenger.current if challenger is not None else None
        return web.json(
            {
                "status": "ok",
                "model_version": holder.scorer.version if holder.ready else None,
                "model_source": holder.source.where,
                "challenger_version": shadow.version if shadow is not None else None,
                "rules_version": rules.snapshot().version if rules is not None else None,
            }
        )

    @app.page("/ready")
    async def ready(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """200 once the model is loaded, partitions are assigned and state recovery is done."""
        assigned = bool(app.consumer.assignment()) if app.consumer is not None else False
        is_ready = holder.ready and assigned and recovered()
        body = {"ready": is_ready, "assigned_partitions": assigned, "rebalancing": bool(app.rebalancing)}
        return web.json(body, status=200 if is_ready else 503)

    @app.timer(interval=5.0)
    async def report_progress() -> None:
        consumer = app.consumer
        try:
            # Faust keeps the last committed offsets here; no public accessor in 0.15 (checked at
            # start-up with the transport's other internals: faust_transport.INTERNALS).
            committed: dict[Any, int | None] = consumer._committed_offset  # type: ignore[attr-defined]  # noqa: SLF001  # ConsumerT omits it
            await pipeline.report_progress(owned(), consumer.highwater, committed)
        except Exception:  # metrics are best effort; an exception in a Faust timer stops the app
            log.warning("could not update progress metrics", exc_info=True)

    app.sensors.add(_MetricsSensor(metrics))

    @app.timer(interval=60.0)
    async def prune_merchant_risk() -> None:
        try:
            await pipeline.prune_merchant_risk({tp.partition for tp in owned()})
        except Exception:  # best effort; an exception in a Faust timer stops the app
            log.warning("could not prune merchant risk", exc_info=True)

    @app.timer(interval=settings.model_reload_seconds)
    async def reload_model() -> None:
        # holder.load() logs and counts a bad artifact itself and never raises for one.
        await pipeline.reload_model()

    return app


def state_view_refusal(token: SecretStr | None, authorization: str | None) -> str | None:
    """Why a request for card state is refused (403), or None to serve it. Card histories are
    personal data and the view proxies to other workers: only holders of the shared token."""
    if token is None:
        return "the card state view is disabled: set FRAUD_STATE_TOKEN on the workers and the API"
    expected = f"Bearer {token.get_secret_value()}".encode()
    if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
        return "a valid state token is required (Authorization: Bearer <FRAUD_STATE_TOKEN>)"
    return None


ViewFn = TypeVar("ViewFn", bound=Callable[..., Awaitable[Any]])


def state_guard(token: SecretStr | None) -> Callable[[ViewFn], ViewFn]:
    """Refuse (403) before a request is routed to the worker owning the card."""

    def wrap(fn: ViewFn) -> ViewFn:
        @functools.wraps(fn)
        async def guarded(web: faust.web.View, request: faust.web.Request, *args: Any, **kwargs: Any) -> Any:
            refusal = state_view_refusal(token, request.headers.get("Authorization"))
            if refusal is not None:
                return web.json({"error": refusal}, status=403)
            return await fn(web, request, *args, **kwargs)

        return guarded  # type: ignore[return-value]  # same call signature as fn

    return wrap


class _MetricsSensor(faust.Sensor):
    """Commit and rebalance counts from Faust's sensor hooks."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        self.metrics.commits.inc()

    def on_rebalance_start(self, app: Any) -> dict[str, Any]:
        self.metrics.rebalances.inc()
        return {}


def run_worker(settings: WorkerSettings) -> None:
    """Blocking: start metrics, load the model, create topics, run until SIGTERM/SIGINT."""
    metrics = WorkerMetrics()
    holder, challenger = model_holders(
        settings.model_dir, settings.model_uri, settings.mlflow_tracking_uri, shadow=settings.shadow
    )
    holder.load()
    if not holder.ready:
        raise SystemExit(f"fraud worker: no usable model in {holder.source.where}: {holder.last_error}")
    metrics.set_version(holder.scorer.version)
    if challenger is not None and challenger.load():
        metrics.set_challenger(challenger.scorer.version)
    kafka.ensure_topics(settings, kafka.project_topics(settings))
    kafka.ensure_topics(settings, [settings.merchant_risk_topic], config={"cleanup.policy": "compact"})
    kafka.ensure_topics(settings, [settings.rules_topic], partitions=1, config={"cleanup.policy": "compact"})
    # One case per review decision, kept for REVIEW_RETENTION_MS (compacted: a redelivery replaces it).
    kafka.ensure_topics(
        settings,
        [settings.review_topic],
        config={"cleanup.policy": "compact,delete", "retention.ms": str(REVIEW_RETENTION_MS)},
    )
    for topic in (settings.transactions_topic, settings.labels_topic):
        found = kafka.partition_count(settings, topic)
        if found != settings.topic_partitions:
            # Faust's state tables are co-partitioned with the inputs (a card's labels and
            # transactions must meet on one worker); a mismatch would only surface at the first
            # state write, as a crash loop.
            raise SystemExit(
                f"fraud worker: topic {topic} has {found} partitions but "
                f"FRAUD_TOPIC_PARTITIONS is {settings.topic_partitions}; they must be equal"
            )
    risk = MerchantRisk()
    replica = Replica(settings, settings.merchant_risk_topic, risk.apply, "merchant-risk")
    replica.start()
    # Merchant counts are continued from the topic: restore them before writing new ones.
    if not replica.caught_up.wait(timeout=120):
        raise SystemExit(f"fraud worker: could not read {settings.merchant_risk_topic} within 120 s")
    log.info("merchant risk restored: %d daily counts, %d fraud labels", *risk.size())
    rules = RuleBook()
    rules_replica = Replica(settings, settings.rules_topic, rules.apply, "rules")
    rules_replica.start()
    # The first batch is decided with the rules and lists in force, not the model alone.
    if not rules_replica.caught_up.wait(timeout=120):
        raise SystemExit(f"fraud worker: could not read {settings.rules_topic} within 120 s")
    log.info("rules restored: %d rules, %d list entries", len(rules.rules()), len(rules.entries()))
    start_http_server(settings.metrics_port, addr=settings.metrics_bind, registry=metrics.registry)
    app = create_app(settings, holder, metrics, risk, replica=replica, challenger=challenger, rules=rules)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    log.info(
        "worker %s: model %s, metrics on %s:%d",
        settings.app_id,
        holder.scorer.version,
        settings.metrics_bind,
        settings.metrics_port,
    )
    worker.execute_from_commandline()
