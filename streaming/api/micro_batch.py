"""Concurrent ``/predict`` requests scored together, on the one scoring thread.

Scoring one transaction costs much of what scoring dozens costs (most of it is per call, not per
row), and the scoring thread does one call at a time. So requests do not queue for the thread
one by one: those that arrive while a call runs wait together and go in the next call, up to
``max_rows`` (the model's fast-path size, where a row's score does not depend on its batch). At
low load a request is scored alone, at once; under load the calls grow and the throughput with
them. Each request gets the answer it would get alone: rows are scored against their own card's
state, a card appears at most once per call (a second request for it waits for the next call),
and the transactions being scored are never history for each other.

A request alone in the queue is scored on the event loop itself when a lone request's scoring
(features, model, decision) has recently cost under ``inline_budget``: the hop to the scoring
thread and back costs more than that (~0.2 ms). The cost is measured on every lone call, on the
thread or inline, so the batcher moves back to the thread when it grows (a model without the
compiled path, deeper card histories, a loaded machine). Batches always keep the thread.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass

from model.fast_predict import FAST_MAX_ROWS
from model.features import FEATURE_NAMES
from model.schemas import Decision, Transaction
from streaming.scoring.service import ScoringService
from streaming.scoring.state import CardState

#: A lone request may be scored on the event loop when that costs less than this (seconds): the
#: project's bound for CPU work on the loop.
INLINE_BUDGET_S = 50e-6
#: Weight of the latest lone call in the running cost estimate.
COST_WEIGHT = 0.2


@dataclass
class _Request:
    tx: Transaction
    #: The card's stored state; None when it could not be read (the score is then stateless).
    state: CardState | None
    future: asyncio.Future[Decision]
    #: Add the feature values to the decision (the console's score page).
    features: bool = False


class MicroBatcher:
    def __init__(
        self,
        service: ScoringService,
        executor: Executor,
        max_rows: int = FAST_MAX_ROWS,
        inline_budget: float = INLINE_BUDGET_S,
    ) -> None:
        self.service, self.executor, self.max_rows = service, executor, max_rows
        self.inline_budget = inline_budget
        self._pending: list[_Request] = []
        self._running: asyncio.Task[None] | None = None
        self.calls = 0
        #: Calls scored on the event loop.
        self.inline_calls = 0
        #: Recent seconds of one lone request's scoring (None until one was scored).
        self.lone_cost: float | None = None

    async def score(self, tx: Transaction, state: CardState | None, features: bool = False) -> Decision:
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(tx, state, future, features))
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch: list[_Request] = []
            later: list[_Request] = []
            cards: set[str] = set()
            for req in self._pending:
                if len(batch) < self.max_rows and req.tx.card_id not in cards:
                    batch.append(req)
                    cards.add(req.tx.card_id)
                else:
                    later.append(req)
            self._pending = later
            inline = (
                len(batch) == 1 and not later and self.lone_cost is not None and self.lone_cost < self.inline_budget
            )
            try:
                if inline:
                    decisions = self._score(batch)
                    self.inline_calls += 1
                else:
                    decisions = await loop.run_in_executor(self.executor, self._score, batch)
            except Exception as exc:  # handed to each waiting request (e.g. no model: 503)
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(exc)
                continue
            self.calls += 1
            for req, decision in zip(batch, decisions, strict=True):
                if not req.future.done():  # the client may have gone away
                    req.future.set_result(decision)

    def _score(self, batch: list[_Request]) -> list[Decision]:
        """One call to the scoring service for the whole batch (on the scoring thread, or inline
        for a lone request that is cheap enough); a lone request's cost updates the estimate."""
        began = time.perf_counter()
        decisions = self._score_batch(batch)
        if len(batch) == 1:
            cost = time.perf_counter() - began
            last = self.lone_cost
            self.lone_cost = cost if last is None else last + COST_WEIGHT * (cost - last)
        return decisions

    def _score_batch(self, batch: list[_Request]) -> list[Decision]:
        txs = [req.tx for req in batch]
        states = {req.tx.card_id: req.state for req in batch if req.state}
        unavailable = {req.tx.card_id for req in batch if req.state is None}
        scored = self.service.score(txs, states, unavailable=unavailable, exclude_scored=True)
        for req, fields, row in zip(batch, scored.fields, scored.batch.features, strict=True):
            if req.features:
                fields["features"] = dict(zip(FEATURE_NAMES, row.tolist(), strict=True))
        return self.service.decisions(scored)
