"""What the console shows about a decision and the model: each reason with the feature values
behind it, the rules and lists the transaction matches, the serving model's report and the
workers' drift gauges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from model.features import FEATURE_NAMES, REASON_GROUPS
from model.schemas import Transaction
from model.scoring import Scorer
from streaming.scoring.rules import Inputs, Rule, RuleBook

#: How the usual PSI reading names a value (< 0.1 stable, up to 0.25 moderate, above large).
PSI_READINGS = ((0.1, "stable"), (0.25, "moderate shift"), (float("inf"), "large shift"))


@dataclass(frozen=True)
class FeatureValue:
    name: str
    value: float
    #: The serving model's typical training value (what the reasons are measured against).
    typical: float | None


@dataclass(frozen=True)
class Reason:
    code: str
    #: ``model`` (a feature group), ``rule``, ``list`` or ``other``.
    kind: str
    features: list[FeatureValue] = field(default_factory=list)
    rule: Rule | None = None


@dataclass(frozen=True)
class RuleHit:
    rule: Rule
    #: True when the rule is the one that decides the transaction now.
    decides: bool


@dataclass(frozen=True)
class Explanation:
    reasons: list[Reason]
    #: Rules in force that match the transaction now (log-only ones too).
    hits: list[RuleHit]
    #: What the rules and lists would decide now (``model``: none of them).
    decided_now: str
    rules_in_force: int
    #: Every feature value, for the full table.
    features: list[FeatureValue]


def explain(
    features: Mapping[str, float], tx: Transaction, reasons: Sequence[str], book: RuleBook, scorer: Scorer | None
) -> Explanation:
    """The decision's reasons with their feature values, and the rules it matches now.
    Evaluates every rule on one row: call it off the event loop."""
    typical = dict(zip(FEATURE_NAMES, scorer.artifact.reference.tolist(), strict=True)) if scorer else {}
    values = [FeatureValue(n, float(features.get(n, np.nan)), typical.get(n)) for n in FEATURE_NAMES]
    by_name = {v.name: v for v in values}
    rules = {r.id: r for r in book.rules()}
    shown = []
    for code in reasons:
        if code in REASON_GROUPS:
            shown.append(Reason(code, "model", [by_name[n] for n in REASON_GROUPS[code] if n in by_name]))
        elif code.startswith("rule:"):
            shown.append(Reason(code, "rule", rule=rules.get(code.removeprefix("rule:"))))
        elif "_list:" in code:
            shown.append(Reason(code, "list"))
        else:
            shown.append(Reason(code, "other"))
    ruleset = book.snapshot()
    row = np.array([[v.value for v in values]], dtype=np.float64)
    inputs = Inputs(1, np.array([tx.amount]), row, lambda name: np.array([getattr(tx, name, None)], dtype=object))
    verdicts = ruleset.apply(inputs, int(datetime.now(UTC).timestamp() * 1000))
    decided_now = verdicts.decided_by[0]
    hits = [RuleHit(rules[rid], decided_now == f"rule:{rid}") for rid, _, _ in verdicts.hits if rid in rules]
    return Explanation(shown, hits, decided_now, len(ruleset.rules), values)


def model_report(scorer: Scorer) -> dict[str, Any]:
    """The serving artifact's metadata as the model page shows it."""
    meta = scorer.artifact.metadata
    metrics = meta.get("validation_metrics") or {}
    return {
        "version": scorer.version,
        "path": str(scorer.artifact.path),
        "created_at": meta.get("created_at"),
        "model_type": meta.get("model_type"),
        "thresholds": {"review": scorer.thresholds.review, "block": scorer.thresholds.block},
        "targets": meta.get("threshold_targets") or {},
        "window": meta.get("training_window") or {},
        "metrics": metrics,
        "at_threshold": metrics.get("at_threshold") or {},
        "disabled_features": meta.get("disabled_features") or [],
        "plots": [
            name for name in ("pr_curve", "confusion_matrix") if (scorer.artifact.path / f"{name}.png").is_file()
        ],
    }


@dataclass(frozen=True)
class Drift:
    """The drift gauges of a worker, or why they are not shown."""

    url: str | None
    #: Signal -> (PSI, reading).
    psi: dict[str, tuple[float, str]] = field(default_factory=dict)
    window: float | None = None
    error: str | None = None


def psi_reading(value: float) -> str:
    return next(name for bound, name in PSI_READINGS if value < bound)


async def scrape_drift(url: str | None, timeout: float = 2.0) -> Drift:
    """``fraud_drift_psi`` and ``fraud_drift_window_transactions`` from a worker's /metrics."""
    if not url:
        return Drift(None, error="not configured: set FRAUD_WORKER_METRICS_URL to a worker's /metrics")
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            resp = await client.get(url)
            resp.raise_for_status()
    except httpx.HTTPError as exc:
        return Drift(url, error=f"cannot read {url}: {exc or type(exc).__name__}")
    psi: dict[str, tuple[float, str]] = {}
    window = None
    try:
        for family in text_string_to_metric_families(resp.text):
            for sample in family.samples:
                if sample.name == "fraud_drift_psi" and "signal" in sample.labels:
                    psi[sample.labels["signal"]] = (sample.value, psi_reading(sample.value))
                elif sample.name == "fraud_drift_window_transactions":
                    window = sample.value
    except ValueError as exc:
        return Drift(url, error=f"{url} is not Prometheus text: {exc}")
    if not psi:
        return Drift(url, window=window, error=f"{url} has no fraud_drift_psi gauges (is it a worker's /metrics?)")
    return Drift(url, dict(sorted(psi.items())), window)
