"""``/console``: the analyst console's pages, server-rendered (Jinja2) with a little JavaScript.

Pages read the followers' in-memory views (:mod:`.followers`), never a topic. Writes go through
the same code as the API: a label through the label publisher (answered once the broker has it),
rules and lists through ``/admin`` (the page's script calls it), scoring through ``/predict``'s
micro-batcher. Every route sits behind :data:`DEPENDENCIES` (the place an authentication
dependency goes) and every write takes its author from :func:`streaming.api.admin.actor`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field, ValidationError

from model.errors import FraudStreamError, ModelNotReadyError
from model.schemas import CHANNELS, ID_PATTERN, MERCHANT_CATEGORIES, Label, Transaction
from model.scoring import Scorer
from streaming.api.admin import ActorDep
from streaming.api.console.explain import explain, model_report, scrape_drift
from streaming.api.console.followers import Followers, read_case
from streaming.api.feedback import FeedbackAccepted
from streaming.api.security import Guard
from streaming.api.services import Services, ServicesDep
from streaming.scoring.rules import describe_fields

HERE = Path(__file__).parent
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
#: Pages and their scripts come from this process only: nothing is fetched from elsewhere.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
#: Cases the queue page lists (the queue may hold more).
QUEUE_PAGE = 200

T = TypeVar("T")


class ConsoleDisabledError(FraudStreamError):
    status_code = 404


async def console_followers(services: ServicesDep) -> Followers:
    if services.console is None:
        raise ConsoleDisabledError("the console is disabled on this API process (FRAUD_CONSOLE_ENABLED=false)")
    return services.console


ConsoleDep = Annotated[Followers, Depends(console_followers)]

#: Every console route's dependencies: an authentication dependency joins this list.
DEPENDENCIES: list[Any] = [Depends(console_followers)]

router = APIRouter(prefix="/console", include_in_schema=False, dependencies=DEPENDENCIES)
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["pct"] = lambda v: "-" if v is None else f"{100 * v:.1f}%"
templates.env.filters["num"] = lambda v, digits=3: "-" if v is None else f"{v:,.{digits}f}"
templates.env.filters["when"] = lambda v: "-" if v is None else _as_time(v).strftime("%Y-%m-%d %H:%M:%S")
templates.env.filters["ms_time"] = lambda v: datetime.fromtimestamp(v / 1000, UTC).strftime("%H:%M:%S")


def _as_time(value: datetime | str) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    """CPU work of a page (sorting, parsing, evaluating rules) on the default executor: never on
    the event loop, never on the scoring thread /predict waits for."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _scorer(services: Services) -> Scorer | None:
    try:
        return services.holder.scorer
    except ModelNotReadyError:
        return None


def page(request: Request, name: str, services: Services, status_code: int = 200, **context: Any) -> HTMLResponse:
    followers = services.console
    scorer = _scorer(services)
    identity = getattr(request.state, "identity", None)  # set by the console scope's guard
    common = {
        "who": identity.name if identity is not None else "anonymous",
        "signed_in": identity is not None and identity is not Guard.ANONYMOUS,
        "page": name.removesuffix(".html"),
        "base": request.scope.get("root_path", "") + router.prefix,
        "root": request.scope.get("root_path", ""),
        "model_version": scorer.version if scorer else None,
        "rules_version": services.rules.snapshot().version,
        "queued": len(followers.queue) if followers else 0,
        "restored": followers.restored() if followers else {},
    }
    response = templates.TemplateResponse(request, name, {**common, **context}, status_code=status_code)
    response.headers.update(HEADERS)
    return response


@router.get("", name="console")
async def index(request: Request) -> RedirectResponse:
    return RedirectResponse(request.scope.get("root_path", "") + router.prefix + "/live", status_code=303)


@router.get("/static/{name}", name="console_static")
async def static(name: str) -> Response:
    if name not in STATIC:
        return Response(status_code=404)
    return FileResponse(HERE / "static" / name, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


# --- live ---------------------------------------------------------------------------------------


@router.get("/live", name="console_live")
async def live(request: Request, services: ServicesDep, console: ConsoleDep, partial: bool = False) -> HTMLResponse:
    view = await _off_loop(console.feed.view)
    return page(request, "_live.html" if partial else "live.html", services, live=view)


# --- review queue -------------------------------------------------------------------------------


@router.get("/review", name="console_queue")
async def queue(request: Request, services: ServicesDep, console: ConsoleDep) -> HTMLResponse:
    q = console.queue
    return page(
        request,
        "queue.html",
        services,
        cases=q.oldest(QUEUE_PAGE),
        total=len(q),
        limit=QUEUE_PAGE,
        max_cases=q.max_cases,
        not_held=q.not_held,
        invalid=q.invalid,
        recent=q.recent(),
    )


#: Transaction ids travel in the query and the body: an id may hold any printable character, "/" too.
TxId = Annotated[str, Query(alias="id", min_length=1, max_length=128, pattern=ID_PATTERN)]


@router.get("/review/case", name="console_case")
async def case(request: Request, tx_id: TxId, services: ServicesDep, console: ConsoleDep) -> HTMLResponse:
    raw = console.queue.case(tx_id)
    if raw is None:
        done = next((r for r in console.queue.recent() if r.case.transaction_id == tx_id), None)
        labelled = done is not None or console.queue.labelled(tx_id)
        return page(
            request, "case_gone.html", services, 200 if labelled else 404, tx_id=tx_id, done=done, labelled=labelled
        )
    review, decision, tx = await _off_loop(read_case, raw)
    scorer = _scorer(services)
    explanation = await _off_loop(explain, review.features, tx, decision.reasons, services.rules, scorer)
    return page(
        request,
        "case.html",
        services,
        case=review,
        decision=decision,
        tx=tx,
        explanation=explanation,
        thresholds=scorer.thresholds if scorer else None,
    )


class LabelBody(BaseModel):
    transaction_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN)
    is_fraud: bool = Field(strict=True, description="true: fraud; false: genuine (a JSON boolean).")


class LabelPublished(BaseModel):
    label: Label
    published: FeedbackAccepted
    #: The next oldest case in the queue, if any.
    next_case: str | None


@router.post(
    "/review/label",
    status_code=202,
    response_model=LabelPublished,
    name="console_label",
    responses={409: {"description": "Not in the queue (labelled already)"}, 503: {"description": "Not acknowledged"}},
)
async def label_case(body: LabelBody, services: ServicesDep, console: ConsoleDep, by: ActorDep) -> Any:
    tx_id = body.transaction_id
    raw = console.queue.case(tx_id)
    if raw is None:
        raise CaseNotQueuedError(
            f"{tx_id} is labelled already" if console.queue.labelled(tx_id) else f"no case {tx_id} in the queue"
        )
    _, _, tx = await _off_loop(read_case, raw)
    now = datetime.now(UTC)
    label = Label(
        transaction_id=tx.transaction_id,
        card_id=tx.card_id,
        merchant_id=tx.merchant_id,
        is_fraud=body.is_fraud,
        timestamp=tx.timestamp,
        labelled_at=max(now, tx.timestamp),  # a transaction stamped ahead of this clock is labelled at its time
        source="manual",
        labelled_by=by,
    )
    published = await services.labels.publish(label)  # 503 when the broker does not acknowledge it
    # Out of the queue now; the labels reader sees the same label again, which changes nothing.
    console.queue.apply_label(label)
    console.feed.add_label(label.transaction_id, label.is_fraud)
    following = console.queue.oldest(1)
    return LabelPublished(
        label=label, published=published, next_case=following[0].transaction_id if following else None
    )


class CaseNotQueuedError(FraudStreamError):
    status_code = 409


# --- score --------------------------------------------------------------------------------------


@router.get("/score", name="console_score")
async def score(
    request: Request,
    services: ServicesDep,
    console: ConsoleDep,
    transaction_id: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    """The form, and with its fields in the query the decision on them (scoring changes nothing,
    so a GET: the result page can be linked and reloaded)."""
    form = dict(request.query_params)
    context: dict[str, Any] = {"channels": CHANNELS, "categories": MERCHANT_CATEGORIES}
    if transaction_id is None:
        latest = console.feed.latest(1)
        form = _example(latest[0].card_id if latest else "card-0000001")
        return page(request, "score.html", services, form=form, **context)
    try:
        # A form's fields are strings: the contract's version is the form's own, not the user's.
        fields = {k: v for k, v in form.items() if v != "" and k != "schema_version"}
        tx = Transaction.model_validate(fields | _amount(form))
    except ValidationError as exc:
        errors = {".".join(map(str, e["loc"])): e["msg"] for e in exc.errors(include_url=False, include_input=False)}
        return page(request, "score.html", services, 422, form=form, errors=errors, **context)
    state = await services.card_state(tx.card_id)
    decision = await services.batcher.score(tx, state, features=True)
    scorer = _scorer(services)
    explanation = await _off_loop(explain, decision.features or {}, tx, decision.reasons, services.rules, scorer)
    return page(
        request,
        "score.html",
        services,
        form=form,
        decision=decision,
        explanation=explanation,
        thresholds=scorer.thresholds if scorer else None,
        **context,
    )


def _amount(form: dict[str, str]) -> dict[str, Any]:
    """The form's amount as a number (the contract's amount is a JSON number, strictly)."""
    try:
        return {"amount": float(form["amount"])}
    except (KeyError, ValueError):
        return {}


def _example(card_id: str) -> dict[str, str]:
    return {
        "transaction_id": f"console-{secrets.token_hex(4)}",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "card_id": card_id,
        "merchant_id": "m-console",
        "amount": "250.00",
        "currency": "USD",
        "merchant_category": "electronics",
        "channel": "ecommerce",
        "country": "US",
    }


# --- model --------------------------------------------------------------------------------------


@router.get("/model", name="console_model")
async def model(request: Request, services: ServicesDep, console: ConsoleDep) -> HTMLResponse:
    scorer = _scorer(services)
    drift = await scrape_drift(services.settings.worker_metrics_url)
    view = await _off_loop(console.feed.view)
    return page(
        request,
        "model.html",
        services,
        503 if scorer is None else 200,
        report=model_report(scorer) if scorer else None,
        model_error=services.holder.last_error,
        drift=drift,
        live=view,
    )


@router.get("/model/{name}.png", name="console_plot")
async def plot(name: str, services: ServicesDep) -> Response:
    scorer = _scorer(services)
    if scorer is None or name not in ("pr_curve", "confusion_matrix"):
        return Response(status_code=404)
    path = scorer.artifact.path / f"{name}.png"
    if not path.is_file():
        return Response(status_code=404)
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache"})


# --- rules and lists ----------------------------------------------------------------------------


@router.get("/rules", name="console_rules")
async def rules(request: Request, services: ServicesDep) -> HTMLResponse:
    book = services.rules
    data = services.settings.backtest_data
    return page(
        request,
        "rules.html",
        services,
        rules=book.rules(),
        invalid=dict(book.invalid),
        entries=book.entries(),
        fields=describe_fields(),
        backtest_data=str(data) if data else None,
        rules_restored=services.rules_replica.caught_up.is_set(),
    )
