"""Concurrent ``/predict`` requests scored together, on the one scoring thread.

Scoring one transaction costs much of what scoring dozens costs (most of it is per call, not per
row), and the scoring thread does one call at a time. So requests do not queue for the thread
one by one: those that arrive while a call runs wait together and go in the next call, up to
``max_rows`` (the model's fast-path size, where a row's score does not depend on its batch). At
low load a request is scored alone, at once; under load the calls grow and the throughput with
them. Each request gets the answer it would get alone: rows are scored against their own card's
state, a card appears at most once per call (a second request for it waits for the next call),
and the transactions being scored are never history for each other.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from model.fast_predict import FAST_MAX_ROWS
from model.features import frame_from_transactions
from model.schemas import Decision, Transaction
from model.scoring import ModelHolder, utcnow
from streaming.scoring.merchant_risk import MerchantRisk
from streaming.scoring.state import CardState, history_frame, labels_frame


@dataclass
class _Request:
    tx: Transaction
    #: The card's stored state; None when it could not be read (the score is then stateless).
    state: CardState | None
    future: asyncio.Future[Decision]


class MicroBatcher:
    def __init__(
        self, holder: ModelHolder, risk: MerchantRisk, executor: Executor, max_rows: int = FAST_MAX_ROWS
    ) -> None:
        self.holder, self.risk, self.executor, self.max_rows = holder, risk, executor, max_rows
        self._pending: list[_Request] = []
        self._running: asyncio.Task[None] | None = None
        self.calls = 0

    async def score(self, tx: Transaction, state: CardState | None) -> Decision:
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(tx, state, future))
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
            try:
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
        """On the scoring thread: one feature pass and one model call for the whole batch."""
        scorer = self.holder.scorer
        txs = [req.tx for req in batch]
        states = {req.tx.card_id: req.state for req in batch if req.state}
        queries = frame_from_transactions(txs)
        history = history_frame(states)
        # A transaction may already be in its card's state (the stream scored it): leave it out,
        # so the answer is the score the stream gave, not one that counts it twice.
        keep = ~np.isin(history["transaction_id"], queries["transaction_id"])
        history = {name: values[keep] for name, values in history.items()}
        risk = self.risk.context(queries["merchant_id"], labels_frame(states))
        scored = scorer.score_frame(queries, history, risk)
        card_states = [
            "unavailable" if req.state is None else ("used" if req.state["ids"] else "empty") for req in batch
        ]
        return scorer.decisions(txs, scored, card_states, utcnow())
