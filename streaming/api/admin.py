"""``/admin``: rules and allow/block lists over HTTP (what ``fraud rules`` and ``fraud lists`` do).

Every change is written to the rules topic and acknowledged by the broker before the answer;
every worker and API process applies it within seconds. The routes take their caller's identity
from :func:`actor` (recorded as ``updated_by``), the one place authentication plugs in.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BaseModel, Field, ValidationError

from model.errors import FraudStreamError
from streaming.api.services import RuleAdminDep, ServicesDep
from streaming.scoring.rules import RULE_ID_PATTERN, Action, ListEntry, ListKind, ListName, Mode, Rule

router = APIRouter(prefix="/admin", tags=["admin"])


async def actor(request: Request) -> str:
    """Who makes a change: the name of the caller's API key (``anonymous`` without authentication)."""
    identity = getattr(request.state, "identity", None)
    return identity.name if identity is not None else "anonymous"


ActorDep = Annotated[str, Depends(actor)]


class RuleBody(BaseModel):
    expression: str = Field(min_length=1, max_length=2000, examples=['amount > 2000 and channel == "ecommerce"'])
    action: Action
    description: str = Field(default="", max_length=500)
    enabled: bool = True
    mode: Mode = "active"


class RulesView(BaseModel):
    rules: list[Rule]
    #: Records on the topic that could not be used, with why.
    invalid: dict[str, str]


class EntryBody(BaseModel):
    expires_at: AwareDatetime | None = None
    note: str = Field(default="", max_length=500)


class BacktestBody(BaseModel):
    expression: str = Field(min_length=1, max_length=2000)
    start: datetime | None = Field(default=None, description="First transaction time tested (default: all)")
    end: datetime | None = Field(default=None, description="End of the tested range, exclusive")


class BacktestUnavailableError(FraudStreamError):
    status_code = 409


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such rule or entry"}}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"description": "The rule does not compile (unknown field, wrong type, syntax): the detail names it"},
    503: {"description": "The broker did not acknowledge the change"},
}


@router.get("/rules", response_model=RulesView, summary="The rules in force")
async def list_rules(admin: RuleAdminDep) -> RulesView:
    return RulesView(rules=admin.book.rules(), invalid=dict(admin.book.invalid))


@router.put("/rules/{rule_id}", response_model=Rule, responses=WRITE_ERRORS, summary="Add or replace a rule")
async def put_rule(
    rule_id: Annotated[str, PathParam(pattern=RULE_ID_PATTERN)], body: RuleBody, admin: RuleAdminDep, by: ActorDep
) -> Rule:
    rule = Rule(id=rule_id, **body.model_dump())
    return await asyncio.get_running_loop().run_in_executor(None, admin.put_rule, rule, by)


@router.delete("/rules/{rule_id}", status_code=204, responses={**NOT_FOUND, 503: WRITE_ERRORS[503]})
async def delete_rule(rule_id: str, admin: RuleAdminDep) -> Response:
    await asyncio.get_running_loop().run_in_executor(None, admin.delete_rule, rule_id)
    return Response(status_code=204)


@router.get("/lists", response_model=list[ListEntry], summary="The allow- and block-list entries")
async def list_entries(admin: RuleAdminDep) -> list[ListEntry]:
    return admin.book.entries()


@router.put("/lists/{name}/{kind}/{value}", response_model=ListEntry, responses=WRITE_ERRORS)
async def put_entry(
    name: ListName, kind: ListKind, value: str, body: EntryBody, admin: RuleAdminDep, by: ActorDep
) -> ListEntry:
    try:
        entry = ListEntry(list=name, kind=kind, value=value, **body.model_dump())
    except ValidationError as exc:  # the path's value breaks the entry's rules: a 422, not a 500
        raise RequestValidationError(
            [{**e, "loc": ("path", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from exc
    return await asyncio.get_running_loop().run_in_executor(None, admin.put_entry, entry, by)


@router.delete("/lists/{name}/{kind}/{value}", status_code=204, responses={**NOT_FOUND, 503: WRITE_ERRORS[503]})
async def delete_entry(name: ListName, kind: ListKind, value: str, admin: RuleAdminDep) -> Response:
    await asyncio.get_running_loop().run_in_executor(None, admin.delete_entry, name, kind, value)
    return Response(status_code=204)


@router.post(
    "/rules/backtest",
    summary="Backtest an expression on the labelled history in FRAUD_BACKTEST_DATA",
    responses={409: {"description": "No history configured (FRAUD_BACKTEST_DATA)"}, 422: WRITE_ERRORS[422]},
)
async def backtest_rule(body: BacktestBody, services: ServicesDep) -> dict[str, Any]:
    from streaming.scoring.backtest import backtest

    data: Path | None = services.settings.backtest_data
    if data is None:
        raise BacktestUnavailableError("no labelled history to backtest on: set FRAUD_BACKTEST_DATA to a CSV")
    start, end = (None if t is None else pd.Timestamp(t) for t in (body.start, body.end))
    # Not on the scoring thread: a backtest takes seconds, /predict must not wait behind it.
    return await asyncio.get_running_loop().run_in_executor(
        None, backtest, data, body.expression, services.settings.model_dir, start, end
    )
