"""The API process's long-lived objects (:class:`Services`) and the typed dependencies the
routes declare (``Annotated[..., Depends()]``)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import aiohttp
import orjson
from fastapi import Depends, Request

from model.errors import ConfigurationError
from model.registry import model_holders
from model.scoring import Scorer, scoring_executor
from streaming.api.console.followers import Followers
from streaming.api.feedback import LabelPublisher
from streaming.api.micro_batch import MicroBatcher
from streaming.api.security import Guard, KeyListError, KeyRing, RateLimiter, parse_keys
from streaming.kafka.replica import Replica
from streaming.metrics import ApiMetrics
from streaming.scoring.merchant_risk import MerchantRisk
from streaming.scoring.rule_admin import RuleAdmin
from streaming.scoring.rules import RuleBook
from streaming.scoring.service import ScoringService
from streaming.scoring.state import CardState, CardStateCopy, card_changelog_topic
from streaming.settings import ApiSettings

log = logging.getLogger("fraudstream.api")


class Services:
    """Process-wide objects the routes depend on."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.holder, _ = model_holders(settings.model_dir, settings.model_uri, settings.mlflow_tracking_uri)
        self.metrics = ApiMetrics()
        self.executor = scoring_executor()
        # aiohttp rather than httpx for the per-request state look-up: ~0.5 ms less per call.
        self.http: aiohttp.ClientSession | None = None
        self.labels = LabelPublisher(settings)
        # Merchant risk (daily counts, fraud labels) from the workers' compacted topic.
        self.risk = MerchantRisk()
        self.replica = Replica(settings, settings.merchant_risk_topic, self.risk.apply, "merchant-risk")
        # Rules and lists, as every worker applies them.
        self.rules = RuleBook()
        self.rules_replica = Replica(settings, settings.rules_topic, self.rules.apply, "rules")
        self.rule_admin = RuleAdmin(settings, self.rules)
        self.guard = Guard(
            None if settings.auth_disabled else KeyRing(load_keys(settings)),
            RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
        )
        # The card table from its changelog: the worker writes it with the decisions, so the copy
        # trails them by one fetch. A short fetch wait keeps that small on brokers that answer
        # a fetch only when the wait is over (the embedded one); Kafka answers as data arrives.
        self.cards = CardStateCopy()
        self.card_replica = (
            Replica(
                settings,
                card_changelog_topic(settings.app_id),
                self.cards.apply,
                "card-state",
                **{"fetch.wait.max.ms": 20},
            )
            if settings.card_state_source == "replica"
            else None
        )
        self.state_headers = state_headers(settings)
        self.metrics.watch_card_states(
            lambda: len(self.cards),
            lambda: self.cards.stored_bytes,
            lambda: self.card_state_restored,
        )
        # The console's views of the review, labels, decisions and transactions topics.
        self.console = Followers(settings) if settings.console_enabled else None
        self.service = ScoringService(self.holder, self.risk, rules=self.rules, metrics=self.metrics)
        self.batcher = MicroBatcher(self.service, self.executor)

    @property
    def card_state_restored(self) -> bool:
        """The card state copy has read its topic to the end (always true with the ``worker`` source)."""
        return self.card_replica is None or self.card_replica.caught_up.is_set()

    def refresh_model(self) -> None:
        before = self.holder.reload_failures
        if self.holder.load():
            self.metrics.set_version(self.holder.scorer.version)
        self.metrics.reload_failures.inc(self.holder.reload_failures - before)

    async def card_state(self, card_id: str) -> CardState | None:
        """The card's stored history, or None when the copy is not restored yet or the worker
        cannot be reached in time."""
        if self.card_replica is not None:
            return self.cards.get(card_id) if self.card_replica.caught_up.is_set() else None
        try:
            if self.http is None:
                raise RuntimeError("the API is not started")
            async with self.http.get("/cards/history", params={"card_id": card_id}, headers=self.state_headers) as resp:
                resp.raise_for_status()
                state: CardState = (await resp.json(loads=orjson.loads))["history"]
            return state
        except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError, KeyError) as exc:
            log.warning("card state unavailable for predict: %s", exc)
            return None


def state_headers(settings: ApiSettings) -> dict[str, str]:
    """The header that opens the workers' card state view; the ``worker`` source needs a token."""
    if settings.card_state_source != "worker":
        return {}
    if settings.state_token is None:
        raise ConfigurationError(
            "FRAUD_CARD_STATE_SOURCE=worker needs FRAUD_STATE_TOKEN "
            "(the workers' state view refuses requests without it)"
        )
    return {"Authorization": f"Bearer {settings.state_token.get_secret_value()}"}


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_scorer(services: ServicesDep) -> Scorer:
    return services.holder.scorer  # raises ModelNotReadyError (503) when no model is loaded


ScorerDep = Annotated[Scorer, Depends(get_scorer)]


async def get_label_publisher(services: ServicesDep) -> LabelPublisher:
    return services.labels


LabelPublisherDep = Annotated[LabelPublisher, Depends(get_label_publisher)]


async def get_rule_admin(services: ServicesDep) -> RuleAdmin:
    return services.rule_admin


RuleAdminDep = Annotated[RuleAdmin, Depends(get_rule_admin)]


def load_keys(settings: ApiSettings) -> dict[str, Any]:
    """The key list from FRAUD_API_KEYS and FRAUD_API_KEYS_FILE; refuses to run without one."""
    text = settings.api_keys.get_secret_value() if settings.api_keys is not None else ""
    if settings.api_keys_file is not None:
        try:
            text += "\n" + settings.api_keys_file.read_text()
        except OSError as exc:
            raise KeyListError(f"cannot read FRAUD_API_KEYS_FILE {settings.api_keys_file}: {exc}") from exc
    keys = parse_keys(text)
    if not keys:
        raise KeyListError(
            "no API keys: set FRAUD_API_KEYS or FRAUD_API_KEYS_FILE (`fraud keys create` makes one), "
            "or FRAUD_AUTH_DISABLED=true to serve without authentication"
        )
    return keys
