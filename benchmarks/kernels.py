"""The compiled tree walk against what it replaced, and what one ``/predict`` row costs.

``python -m benchmarks.kernels`` trains the default model (200 trees) on generated data and, in
one run, prints: microseconds per model call for 1, 17, 64 and 500 rows with the compiled
kernel (``model.fast_predict.FastTrees``), the numpy walker it replaced (kept below as the
reference) and scikit-learn on one thread; one row through the whole scoring service (features,
model, decision) and through the ``/predict`` micro-batcher with either walker; the kernel's
start-up cost in a fresh process with a cold, a warm and an unwritable numba cache; and the
resident memory of a process with the model loaded, with and without numba. The machine may be
shared: compare the ratios within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from model.features import epoch_ms
from model.schemas import Transaction
from model.scoring import ModelHolder, scoring_executor
from model.train import TrainOptions, train
from producers.synthetic import SimConfig, generate
from streaming.api.micro_batch import MicroBatcher
from streaming.scoring.merchant_risk import MerchantRisk
from streaming.scoring.service import ScoringService
from streaming.scoring.state import CardState, merge

SIZES = (1, 17, 64, 500)


class NumpyTrees:
    """The numpy walker the compiled kernel replaced (all trees at once, finished walkers dropped
    every third step); here only to measure against."""

    def __init__(self, estimator: HistGradientBoostingClassifier) -> None:
        trees = [iteration[0] for iteration in estimator._predictors]  # noqa: SLF001  # the fitted trees; no public accessor
        sizes = np.array([len(t.nodes) for t in trees])
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        nodes = np.concatenate([t.nodes for t in trees])
        shift = np.repeat(offsets, sizes)
        self.roots = offsets.astype(np.int64)
        self.feature = nodes["feature_idx"].astype(np.int64)
        self.threshold = nodes["num_threshold"].astype(np.float64)
        self.missing_left = nodes["missing_go_to_left"].astype(bool)
        self.is_leaf = nodes["is_leaf"].astype(bool)
        self.feature[self.is_leaf] = 0
        index = np.arange(len(nodes), dtype=np.int64)
        left = np.where(self.is_leaf, index, nodes["left"].astype(np.int64) + shift)
        right = np.where(self.is_leaf, index, nodes["right"].astype(np.int64) + shift)
        self.child = np.stack([right, left], axis=1).ravel()
        self.value = nodes["value"].astype(np.float64)
        self.depth = int(nodes["depth"].max())
        self.baseline = float(np.asarray(estimator._baseline_prediction).ravel()[0])  # noqa: SLF001  # the raw score before the trees; no public accessor

    def predict(self, x: np.ndarray) -> np.ndarray:
        n, n_features = x.shape
        n_trees = len(self.roots)
        node = np.tile(self.roots, n)
        walking = np.arange(n * n_trees)
        current = node
        at = np.repeat(np.arange(n, dtype=np.int64) * n_features, n_trees)
        values = np.ascontiguousarray(x, dtype=np.float64).ravel()
        has_nan = bool(np.isnan(values).any())
        for step in range(1, self.depth + 1):
            value = values[at + self.feature[current]]
            left = value <= self.threshold[current]
            if has_nan:
                left = np.where(np.isnan(value), self.missing_left[current], left)
            current = self.child[2 * current + left]
            if step % 3 == 0:
                node[walking] = current
                inner = ~self.is_leaf[current]
                walking, current, at = walking[inner], current[inner], at[inner]
                if not len(walking):
                    break
        node[walking] = current
        terms = np.concatenate((np.full((n, 1), self.baseline), self.value[node].reshape(n, n_trees)), axis=1)
        return np.asarray(expit(np.cumsum(terms, axis=1)[:, -1]), dtype=np.float64)


def median_us(call: Callable[[], Any], seconds: float) -> float:
    """Median microseconds of ``call`` over about ``seconds`` of repeats (at least 5)."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < deadline:
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e6


def card_states(frame: Any) -> dict[str, CardState]:
    states = {}
    for card, group in frame.groupby("card_id"):
        rows = group[["transaction_id", "timestamp", "amount", "merchant_id"]].itertuples(index=False)
        states[card] = merge(None, [(t, epoch_ms(datetime.fromisoformat(ts)), a, m) for t, ts, a, m in rows], 3_600_000)
    return states


def model_calls(holder: ModelHolder, rows: np.ndarray, seconds: float) -> dict[str, dict[int, float]]:
    scorer = holder.scorer
    estimator = scorer.artifact.estimator
    compiled, walker = scorer._fast, NumpyTrees(estimator)  # noqa: SLF001  # the serving fast path itself
    if compiled is None:
        raise SystemExit("the model has no compiled path")
    out: dict[str, dict[int, float]] = {"compiled": {}, "numpy": {}, "sklearn": {}}
    with threadpool_limits(1):  # as on the scoring thread
        for n in SIZES:
            x = rows[:n]
            want = estimator.predict_proba(x)[:, 1]
            if not (np.array_equal(compiled.predict(x), want) and np.array_equal(walker.predict(x), want)):
                raise SystemExit(f"scores differ from scikit-learn at {n} rows")
            out["compiled"][n] = median_us(partial(compiled.predict, x), seconds)
            out["numpy"][n] = median_us(partial(walker.predict, x), seconds)
            out["sklearn"][n] = median_us(partial(estimator.predict_proba, x), seconds)
    return out


def one_row(
    holder: ModelHolder, txs: list[Transaction], states: dict[str, CardState], seconds: float
) -> dict[str, Any]:
    """One row through the scoring service (on this thread) and through the micro-batcher (the
    scoring thread), with the compiled walk and then with the numpy one."""
    scorer = holder.scorer
    compiled, walker = scorer._fast, NumpyTrees(scorer.artifact.estimator)  # noqa: SLF001  # swapped to compare
    service = ScoringService(holder, MerchantRisk())
    executor = scoring_executor()
    out: dict[str, Any] = {}
    ticks = itertools.count()
    for name, fast in (("compiled", compiled), ("numpy", walker)):
        scorer._fast = fast  # type: ignore[assignment]  # noqa: SLF001  # the replaced walker, swapped in to compare

        def service_call() -> None:
            tx = txs[next(ticks) % len(txs)]
            service.decisions(service.score([tx], {tx.card_id: states.get(tx.card_id)}, exclude_scored=True))

        async def batcher_calls() -> float:
            batcher = MicroBatcher(service, executor)
            times: list[float] = []
            deadline = time.perf_counter() + seconds
            k = 0
            while len(times) < 5 or time.perf_counter() < deadline:
                tx = txs[k % len(txs)]
                k += 1
                began = time.perf_counter()
                await batcher.score(tx, states.get(tx.card_id))
                times.append(time.perf_counter() - began)
            return statistics.median(times) * 1e6

        with threadpool_limits(1):
            out[f"service_us_{name}"] = median_us(service_call, seconds)
        out[f"predict_us_{name}"] = asyncio.run(batcher_calls())
    scorer._fast = compiled  # noqa: SLF001  # restored
    executor.shutdown()
    return out


_LOAD = """
import json, os, resource, sys, time
began = time.perf_counter()
from model.artifact import load_artifact
model = load_artifact(sys.argv[1])
loaded = time.perf_counter()
if sys.argv[2] == "compiled":
    from model.fast_predict import fast_path
    fast_path(model.estimator).predict(model.reference[None, :])
else:
    model.estimator.predict_proba(model.reference[None, :])
ready = time.perf_counter()
rss = int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) // 1024
print(json.dumps({"artifact_s": loaded - began, "fast_path_s": ready - loaded, "rss_mb": rss}))
"""


def start_up(model_dir: Path, cache_dir: Path, rounds: int = 3) -> dict[str, Any]:
    """A fresh process loading the model: with scikit-learn only (no numba imported), and with
    the compiled path against a cold, a warm and an unwritable cache. The fastest of ``rounds``
    (start-up on a busy machine only varies upwards)."""

    def run(kind: str, cache: Path) -> dict[str, float]:
        env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
        done = subprocess.run(  # noqa: S603  # our own interpreter and script
            [sys.executable, "-c", _LOAD, str(model_dir), kind], env=env, capture_output=True, text=True, check=True
        )
        return dict(json.loads(done.stdout))

    blocker = cache_dir / "file"
    blocker.write_text("")
    runs: dict[str, list[dict[str, float]]] = {}
    for i in range(rounds):
        cold = cache_dir / f"cold-{i}"
        for name, kind, cache in (
            ("sklearn_only", "sklearn", cache_dir / "unused"),
            ("compiled_cold_cache", "compiled", cold),
            ("compiled_warm_cache", "compiled", cold),
            ("compiled_no_cache", "compiled", blocker / "numba"),  # under a file: never writable
        ):
            runs.setdefault(name, []).append(run(kind, cache))
    return {name: {key: round(min(r[key] for r in rs), 3) for key in rs[0]} for name, rs in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time spent on each measurement")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frame = generate(
            SimConfig(seed=7, n_cards=1000, n_merchants=100, days=20, start=datetime(2026, 1, 1, tzinfo=UTC))
        )
        frame.to_csv(root / "d.csv", index=False)
        train(root / "d.csv", root / "m", TrainOptions())
        holder = ModelHolder(root / "m")
        holder.load()
        tail = 600
        txs = [Transaction.model_validate(r) for r in frame.tail(tail).to_dict("records")]
        states = card_states(frame.iloc[:-tail])
        scored = ScoringService(holder, MerchantRisk()).score(txs, states, exclude_scored=True)
        result: dict[str, Any] = {
            "load_average": os.getloadavg(),
            "model_call_us": model_calls(holder, scored.batch.features, args.seconds),
            "one_row": one_row(holder, txs, states, args.seconds),
            "start_up": start_up(root / "m", root),
        }
    print(json.dumps(result, indent=2))
    calls = result["model_call_us"]
    for n in SIZES:
        c, p, s = calls["compiled"][n], calls["numpy"][n], calls["sklearn"][n]
        print(
            f"{n:>4} rows: compiled {c:9.1f} µs, numpy {p:9.1f} µs ({p / c:5.1f}×), sklearn {s:9.1f} µs ({s / c:5.1f}×)"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
