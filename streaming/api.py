"""The FastAPI adapter: synchronous scoring on the same path as the stream.

``POST /predict`` reads the card's history from the worker that owns it (the worker's state
view routes by key), never changes it, and scores with the same features and model as the
stream. If the state cannot be reached in time, it answers with the stateless score and says
so with ``card_state: "unavailable"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated

import httpx
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model.errors import FraudStreamError
from model.features import frame_from_transactions
from model.schemas import Decision, Transaction
from model.scoring import ModelHolder, Scorer, scoring_executor, utcnow
from streaming.metrics import ApiMetrics
from streaming.settings import ApiSettings
from streaming.state import CardState, history_frame

log = logging.getLogger("fraudstream.api")

#: Routes left out of request metrics: probes and scrapes would drown the real traffic.
UNMETERED = {"/health", "/ready", "/metrics"}


class Services:
    """Process-wide objects the routes depend on."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.holder = ModelHolder(settings.model_dir)
        self.metrics = ApiMetrics()
        self.executor = scoring_executor()
        self.http = httpx.AsyncClient(base_url=settings.worker_url, timeout=settings.state_timeout_seconds)

    def refresh_model(self) -> None:
        before = self.holder.reload_failures
        if self.holder.load():
            self.metrics.set_version(self.holder.scorer.version)
        self.metrics.reload_failures.inc(self.holder.reload_failures - before)

    async def card_state(self, card_id: str) -> CardState | None:
        """The card's stored history, or None when the worker cannot be reached in time."""
        try:
            resp = await self.http.get("/cards/history", params={"card_id": card_id})
            resp.raise_for_status()
            state: CardState = resp.json()["history"]
            return state
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log.warning("card state unavailable for predict: %s", exc)
            return None


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_scorer(services: ServicesDep) -> Scorer:
    return services.holder.scorer  # raises ModelNotReadyError (503) when no model is loaded


ScorerDep = Annotated[Scorer, Depends(get_scorer)]


def create_api(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    services = Services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(services.executor, services.refresh_model)

        async def reload_loop() -> None:
            while True:
                await asyncio.sleep(settings.model_reload_seconds)
                await loop.run_in_executor(services.executor, services.refresh_model)

        task = asyncio.create_task(reload_loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await services.http.aclose()
            services.executor.shutdown(wait=False)

    app = FastAPI(
        title="fraudstream",
        version="1",
        summary="Real-time fraud scoring: the synchronous adapter onto the stream's scorer.",
        lifespan=lifespan,
    )
    app.state.services = services

    @app.exception_handler(FraudStreamError)
    async def _project_error(request: Request, exc: FraudStreamError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": str(exc), "error": type(exc).__name__})

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default body echoes the input, which fails to render for NaN or Infinity
        # (a 500 for a client error); name the field and say what is wrong, nothing more.
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.middleware("http")
    async def _meter(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        if path not in UNMETERED:
            services.metrics.requests.labels(route=path, method=request.method, status=str(response.status_code)).inc()
            services.metrics.duration.labels(route=path, method=request.method).observe(time.perf_counter() - start)
        return response

    @app.post("/predict", response_model=Decision, summary="Score one transaction against its card's current state")
    async def predict(tx: Transaction, services: ServicesDep, scorer: ScorerDep) -> Decision:
        state = await services.card_state(tx.card_id)
        states = {tx.card_id: state} if state else {}
        card_state = "unavailable" if state is None else ("used" if state["ids"] else "empty")
        queries = frame_from_transactions([tx])
        history = history_frame(states)
        # The transaction itself may already be in the state (the stream scored it): drop it so
        # the answer is the score the stream gave, not one that counts the transaction twice.
        history = history.loc[history["transaction_id"] != tx.transaction_id]
        batch = await asyncio.get_running_loop().run_in_executor(
            services.executor, scorer.score_frame, queries, history
        )
        decision = scorer.decisions([tx], batch, [card_state], utcnow())[0]
        services.metrics.decisions.labels(decision=decision.decision, card_state=card_state).inc()
        return decision

    @app.get("/health", summary="Liveness: the process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: a verified model is loaded")
    async def ready(services: ServicesDep) -> JSONResponse:
        holder = services.holder
        body = {
            "ready": holder.ready,
            "model_version": holder.scorer.version if holder.ready else None,
            "model_error": holder.last_error,
        }
        return JSONResponse(status_code=200 if holder.ready else 503, content=body)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
