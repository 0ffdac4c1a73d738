"""The one scoring path: features -> model -> decision, for the worker and the API alike."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from model.artifact import METADATA_FILE, MODEL_FILE, ModelArtifact, load_artifact
from model.errors import ModelLoadError, ModelNotReadyError
from model.fast_predict import FAST_MAX_ROWS, fast_path
from model.features import DAY_MS, FEATURE_NAMES, REASON_GROUPS, Columns, RiskContext, compute_features
from model.metrics import decide
from model.schemas import SCHEMA_VERSION, Decision, Transaction

log = logging.getLogger(__name__)

#: A reason is reported only if restoring its features to typical values lowers the score this much.
MIN_REASON_EFFECT = 0.005
MAX_REASONS = 3

_GROUP_COLUMNS = {code: np.array([FEATURE_NAMES.index(f) for f in feats]) for code, feats in REASON_GROUPS.items()}


@dataclass(frozen=True)
class ScoredBatch:
    features: np.ndarray
    scores: np.ndarray
    decisions: np.ndarray
    reasons: list[list[str]]


class Scorer:
    """A verified model with its thresholds; scores whole batches in one estimator call."""

    def __init__(self, artifact: ModelArtifact) -> None:
        self.artifact = artifact
        self.version = artifact.version
        self.thresholds = artifact.thresholds
        self._reference = artifact.reference
        self._fast = fast_path(artifact.estimator)
        # Features a baseline model was trained without: always zero for it, as in training.
        self._disabled = np.array(
            [FEATURE_NAMES.index(n) for n in artifact.metadata.get("disabled_features", [])], dtype=np.int64
        )
        #: The label delay D the model was trained with: where its merchant fraud rates end, and
        #: the reporting delay assumed for fraud rows of a CSV without ``labelled_at``.
        self.label_delay_ms = round(float(artifact.metadata.get("label_delay_days", 7.0)) * DAY_MS)

    def self_check(self) -> None:
        """Refuse a model that loads but cannot score (say, built by an incompatible scikit-learn)."""
        try:
            score = self.predict(self._reference[None, :])
        except Exception as exc:  # whatever the estimator raises, the model is unusable
            raise ModelLoadError(f"{self.artifact.path}: model fails to score: {exc}") from exc
        if score.shape != (1,) or not np.isfinite(score).all() or not 0.0 <= float(score[0]) <= 1.0:
            raise ModelLoadError(f"{self.artifact.path}: model scored the reference row as {score!r}")
        if self._fast is not None:
            rows = self._reference[None, :] * np.array([[1.0], [0.0], [2.0], [0.5]])
            # Trees match to the bit; a logistic regression's dot products may round differently.
            if not np.allclose(self._fast.predict(rows), self._predict_sklearn(rows), rtol=0, atol=1e-12):
                log.warning("%s: fast path disagrees with scikit-learn; using scikit-learn only", self.artifact.path)
                self._fast = None

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Fraud scores; trees (any batch) and a few rows of a logistic regression take the fast
        path (see model/fast_predict.py)."""
        if self._fast is not None and (self._fast.any_size or len(features) <= FAST_MAX_ROWS):
            return self._fast.predict(features)
        return self._predict_sklearn(features)

    def _predict_sklearn(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.artifact.estimator.predict_proba(features)[:, 1], dtype=np.float64)

    def reasons(self, features: np.ndarray, scores: np.ndarray) -> list[list[str]]:
        """Occlusion attribution: how far the score falls when a feature group is set to typical.

        One estimator call for all rows and groups; the codes come from :data:`REASON_GROUPS`.
        """
        n, g = len(features), len(_GROUP_COLUMNS)
        if n == 0:
            return []
        occluded = np.repeat(features, g, axis=0).reshape(n, g, -1)
        for j, cols in enumerate(_GROUP_COLUMNS.values()):
            occluded[:, j, cols] = self._reference[cols]
        effect = scores[:, None] - self.predict(occluded.reshape(n * g, -1)).reshape(n, g)
        codes = list(_GROUP_COLUMNS)
        out = []
        for row in effect:
            top = np.argsort(-row, kind="stable")[:MAX_REASONS]
            out.append([codes[j] for j in top if row[j] >= MIN_REASON_EFFECT])
        return out

    def score_frame(self, queries: Columns, history: Columns, risk: RiskContext | None = None) -> ScoredBatch:
        """Score canonical ``queries`` against ``history`` and ``risk``; reasons for review/block
        rows only. The merchant fraud rates read up to this model's label delay, whatever
        ``risk`` says."""
        if risk is not None:
            risk = replace(risk, label_delay_ms=self.label_delay_ms)
        return self.score_features(compute_features(queries, history, risk))

    def score_features(self, features: np.ndarray) -> ScoredBatch:
        """Score computed features (a challenger scores the champion's, copied if this model was
        trained with some features off)."""
        if len(self._disabled):
            features = features.copy()
            features[:, self._disabled] = 0.0
        scores = self.predict(features) if len(features) else np.zeros(0)
        decisions = decide(scores, self.thresholds)
        flagged = np.flatnonzero(decisions != "allow")
        reasons: list[list[str]] = [[] for _ in range(len(scores))]
        for i, r in zip(flagged, self.reasons(features[flagged], scores[flagged]), strict=True):
            reasons[i] = r
        return ScoredBatch(features=features, scores=scores, decisions=decisions, reasons=reasons)

    def decision_fields(
        self,
        txs: Sequence[Transaction],
        batch: ScoredBatch,
        card_states: Sequence[str],
        scored_at: datetime,
        include_features: bool = False,
    ) -> list[dict[str, Any]]:
        """Each decision as :class:`Decision`'s fields, in its field order: the stream encodes
        them directly (:func:`model.schemas.decision_json`), :meth:`decisions` validates them."""
        out = []
        for i, tx in enumerate(txs):
            fields: dict[str, Any] = {
                "schema_version": SCHEMA_VERSION,
                "transaction_id": tx.transaction_id,
                "card_id": tx.card_id,
                "score": min(1.0, max(0.0, float(batch.scores[i]))),
                "decision": str(batch.decisions[i]),
                "reasons": batch.reasons[i],
                "model_version": self.version,
                "event_timestamp": tx.timestamp,
                "scored_at": scored_at,
                "card_state": card_states[i],
                "decided_by": "model",
            }
            if include_features:
                fields["features"] = dict(zip(FEATURE_NAMES, batch.features[i].tolist(), strict=True))
            out.append(fields)
        return out

    def decisions(
        self,
        txs: Sequence[Transaction],
        batch: ScoredBatch,
        card_states: Sequence[str],
        scored_at: datetime,
        include_features: bool = False,
    ) -> list[Decision]:
        return [
            Decision(**fields) for fields in self.decision_fields(txs, batch, card_states, scored_at, include_features)
        ]


def _single_threaded() -> None:
    threadpool_limits(1)


def scoring_executor() -> ThreadPoolExecutor:
    """The thread that runs model calls off the event loop, with native thread pools capped at 1.

    OpenMP's thread count is per calling thread, so the cap must be set inside this thread:
    with two cores, HistGradientBoosting's OpenMP threads spinning against the event loop made
    batch scoring about ten times slower than running single-threaded.
    """
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring", initializer=_single_threaded)


def utcnow() -> datetime:
    return datetime.now(UTC)


class ModelSource(Protocol):
    """Where a holder finds its model: a directory, or a registry alias (model/registry.py)."""

    @property
    def where(self) -> str: ...

    def stamp(self) -> str | None:
        """Changes whenever the model does; None when there is no model there. May raise
        :class:`ModelLoadError` when the source cannot be asked."""
        ...

    def load(self) -> ModelArtifact:
        """The model for the last stamp, verified; raises :class:`ModelLoadError`."""
        ...


class DirectorySource:
    """A directory written by ``fraud train --out``."""

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = Path(model_dir)

    @property
    def where(self) -> str:
        return str(self.model_dir)

    def stamp(self) -> str | None:
        # Metadata by content (copies that keep timestamps, cp -p or rsync -a, still count) and
        # the model file by size and mtime (a model overwritten under unchanged metadata too).
        try:
            meta = hashlib.sha256((self.model_dir / METADATA_FILE).read_bytes()).hexdigest()
            model = (self.model_dir / MODEL_FILE).stat()
        except OSError:
            return None
        return f"{meta}:{model.st_size}:{model.st_mtime_ns}"

    def load(self) -> ModelArtifact:
        return load_artifact(self.model_dir)


class ModelHolder:
    """Holds the serving scorer and swaps in a new model when its source changes.

    A new model that fails verification is refused and the current one keeps serving. With
    ``optional`` (a challenger), a source that no longer has a model drops the current one;
    otherwise the last good model keeps serving whatever happens to the source.
    """

    def __init__(self, source: str | Path | ModelSource, optional: bool = False) -> None:
        self.source: ModelSource = DirectorySource(source) if isinstance(source, str | Path) else source
        self.optional = optional
        self._scorer: Scorer | None = None
        self._stamp: str | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.reload_failures = 0
        #: The source's stamp of the serving model (a registry alias: its registry version).
        self.stamp: str | None = None

    @property
    def model_dir(self) -> Path | None:
        return self.source.model_dir if isinstance(self.source, DirectorySource) else None

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            raise ModelNotReadyError(f"no model loaded from {self.source.where}: {self.last_error or 'not loaded yet'}")
        return self._scorer

    @property
    def current(self) -> Scorer | None:
        """The serving scorer, or None (read it once per call: a swap may happen between reads)."""
        return self._scorer

    @property
    def ready(self) -> bool:
        return self._scorer is not None

    def load(self) -> bool:
        """Load if the source changed since the last attempt; True when the serving model changed
        (a new one went live or, ``optional``, the model was dropped)."""
        with self._lock:
            try:
                stamp = self.source.stamp()
            except ModelLoadError as exc:
                if self.last_error != str(exc):
                    log.warning("cannot reach %s, serving on: %s", self.source.where, exc)
                self.last_error = str(exc)
                return False
            if stamp is not None and stamp == self._stamp:
                return False
            self._stamp = stamp
            if stamp is None and self.optional:
                dropped, self._scorer, self.stamp, self.last_error = self._scorer, None, None, None
                if dropped is not None:
                    log.info("%s is not set any more: %s dropped", self.source.where, dropped.version)
                return dropped is not None
            try:
                scorer = Scorer(self.source.load())
                scorer.self_check()
            except ModelLoadError as exc:
                self.last_error = str(exc)
                self.reload_failures += 1
                if self._scorer is None:
                    log.error("cannot load model: %s", exc)
                else:
                    log.error("refusing new model, still serving %s: %s", self._scorer.version, exc)
                return False
            old = self._scorer.version if self._scorer else None
            self._scorer, self.stamp, self.last_error = scorer, stamp, None
            log.info("model %s loaded from %s (was %s)", scorer.version, self.source.where, old)
            return True
