"""The FastAPI adapter: synchronous scoring on the same path as the stream, and label feedback.

``POST /predict`` reads the card's history, never changes it, and scores with the same features
and model as the stream. By default the history comes from this process's own copy of the card
table, which follows the workers' changelog topic (``FRAUD_CARD_STATE_SOURCE=replica``); with
``worker`` it is read per request from the worker that owns the card (the worker's state view
routes by key). Without the state (the copy not restored yet, or the worker not answering in
time) it answers with the stateless score and says so with ``card_state: "unavailable"``.

``POST /feedback`` takes a label event (what was learned about a transaction after the fact)
and publishes it to the labels topic, keyed by card id, answering 202 once the broker has
acknowledged it (503 if it does not within ``FRAUD_FEEDBACK_TIMEOUT_SECONDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.errors import FraudStreamError
from model.schemas import Decision, DecisionOnly, Label, Transaction
from streaming.api import admin
from streaming.api.console import routes as console
from streaming.api.feedback import FeedbackAccepted
from streaming.api.security import AUTH_RESPONSES, AuthError, Limits, console_login_router
from streaming.api.services import LabelPublisherDep, ScorerDep, Services, ServicesDep
from streaming.metrics import ApiMetrics
from streaming.settings import ApiSettings

log = logging.getLogger("fraudstream.api")

#: What a route taking a JSON body may answer besides its result (FastAPI documents the 422).
BODY_RESPONSES: dict[int | str, dict[str, Any]] = {400: {"description": "The body is not UTF-8 JSON"}}

#: Routes left out of request metrics: probes and scrapes would drown the real traffic.
UNMETERED = {"/health", "/ready", "/metrics"}


class MeterRequests:
    """Request counts and latency by route template, as plain ASGI middleware (Starlette's
    BaseHTTPMiddleware costs a task and a stream per request, a noticeable share of /predict)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception before the response started is a server error

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            if path not in UNMETERED:
                method = scope["method"]
                self.metrics.requests.labels(route=path, method=method, status=str(status)).inc()
                self.metrics.duration.labels(route=path, method=method).observe(time.perf_counter() - start)


# The dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool,
# a thread hop per dependency per request (most of /predict's overhead over a no-op route).
def create_api(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    services = Services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(services.executor, services.refresh_model)
        services.replica.start()
        services.rules_replica.start()
        if services.console is not None:
            services.console.start()
        if services.card_replica is not None:
            services.card_replica.start()
        else:
            services.http = aiohttp.ClientSession(
                base_url=settings.worker_url, timeout=aiohttp.ClientTimeout(total=settings.state_timeout_seconds)
            )

        async def reload_loop() -> None:
            while True:
                await asyncio.sleep(settings.model_reload_seconds)
                # Off the scoring thread: a registry may be slow to answer; the swap is atomic.
                await loop.run_in_executor(None, services.refresh_model)

        task = asyncio.create_task(reload_loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if services.http is not None:
                await services.http.close()
            await loop.run_in_executor(None, services.labels.close)
            services.replica.stop()
            services.rules_replica.stop()
            if services.console is not None:
                services.console.stop()
            if services.card_replica is not None:
                services.card_replica.stop()
            services.executor.shutdown(wait=False)

    app = FastAPI(
        title="fraudstream",
        version="1",
        summary="Real-time fraud scoring: the synchronous adapter onto the stream's scorer.",
        lifespan=lifespan,
    )
    app.state.services = services

    @app.exception_handler(FraudStreamError)
    async def _project_error(request: Request, exc: FraudStreamError) -> Response:
        if isinstance(exc, AuthError) and request.method == "GET" and request.url.path.startswith("/console"):
            return RedirectResponse(request.scope.get("root_path", "") + "/console/login", status_code=303)
        return JSONResponse(
            status_code=exc.status_code,
            content={"detail": str(exc), "error": type(exc).__name__},
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default body echoes the input, which fails to render for NaN or Infinity
        # (a 500 for a client error); name the field and say what is wrong, nothing more.
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    app.add_middleware(
        Limits,
        max_body_bytes=settings.max_body_bytes,
        max_concurrent=settings.max_concurrent_requests,
        exempt=UNMETERED,
    )
    app.add_middleware(MeterRequests, metrics=services.metrics)
    guard = services.guard
    app.include_router(admin.router, dependencies=[Depends(guard.require("admin"))], responses=AUTH_RESPONSES)
    app.include_router(console_login_router(guard))
    app.include_router(console.router, dependencies=[Depends(guard.require("console"))])

    @app.post(
        "/predict",
        response_model=Decision | DecisionOnly,
        summary="Score one transaction against its card's current state",
        responses={**BODY_RESPONSES, **AUTH_RESPONSES, 503: {"description": "No model loaded, or too busy"}},
        dependencies=[Depends(guard.require("predict"))],
    )
    async def predict(tx: Transaction, services: ServicesDep, scorer: ScorerDep) -> Any:
        state = await services.card_state(tx.card_id)
        decision = await services.batcher.score(tx, state)
        services.metrics.decisions.labels(decision=decision.decision, card_state=decision.card_state).inc()
        if settings.predict_decision_only:
            return DecisionOnly.of(decision)
        return decision

    @app.post(
        "/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        summary="Publish a label (chargeback, investigation verdict, ...) to the labels topic",
        responses={
            **BODY_RESPONSES,
            **AUTH_RESPONSES,
            503: {"description": "The broker did not acknowledge the label in time"},
        },
        dependencies=[Depends(guard.require("feedback"))],
    )
    async def feedback(label: Label, labels: LabelPublisherDep) -> FeedbackAccepted:
        return await labels.publish(label)

    @app.get("/health", summary="Liveness: the process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: a verified model is loaded and the card state copy restored")
    async def ready(services: ServicesDep) -> JSONResponse:
        holder = services.holder
        # Until its copy of the card table is restored, this process could only answer statelessly.
        is_ready = holder.ready and services.card_state_restored
        card_replica = services.card_replica
        body = {
            "ready": is_ready,
            "model_version": holder.scorer.version if holder.ready else None,
            "model_error": holder.last_error,
            "model_source": holder.source.where,
            "card_state_source": services.settings.card_state_source,
            "card_state_restored": services.card_state_restored,
            "card_state_error": None
            if card_replica is None or services.card_state_restored
            else card_replica.last_error,
            # Informational: without it /predict still answers, with merchant features of zero.
            "merchant_risk_restored": services.replica.caught_up.is_set(),
            # Informational too: until then /predict applies the rules and lists read so far.
            "rules_restored": services.rules_replica.caught_up.is_set(),
            "rules_version": services.rules.snapshot().version,
        }
        return JSONResponse(status_code=200 if is_ready else 503, content=body)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
