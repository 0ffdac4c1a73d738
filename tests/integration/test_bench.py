"""`fraud bench --quick` end to end: every phase runs and reports sane numbers.

Never a speed threshold: the machine running the suite decides the speeds. What is checked is
that each measurement happened (positive, finite), that percentiles are ordered, that the
ratios are the quotients of the throughputs they name, and that nothing was left running.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.report import REQUIRED_KEYS
from benchmarks.roles import raw_features
from model.features import FEATURE_NAMES, compute_features, frame_from_transactions, history_from_frame
from model.schemas import Transaction
from producers.synthetic import SimConfig, iter_transactions

pytestmark = pytest.mark.integration

#: Every number the report must have measured (above zero); the p50 latency may round to 0 ms
#: and is checked for order below.
POSITIVE = (
    *(k for k in REQUIRED_KEYS if k not in ("latency_p50_ms", "latency_p50_ms_month", "python_version", "platform")),
    "limit_cpu_us_per_tx",
    "naive_cpu_us_per_tx",
    "noop_rps_c1",
    "noop_rps_c16",
    "predict_rps_c1",
    "predict_via_worker_rps_c1",
    "predict_via_worker_rps_c16",
    "worker_batch_mean_size",
    "worker_batch_mean_size_month",
    "month_cards",
    "month_warmup_transactions",
    "api_via_worker_rss_mb",
    "api_ready_seconds",
)


def _processes_using(path: Path) -> list[str]:
    """Command lines of live processes with a file open under ``path``. Every process the bench
    starts (the broker included) writes its log there, so this finds any it left running."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            targets = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to inspect
            continue
        if any(t.startswith(str(path)) for t in targets):
            found.append(cmdline)
    return found


def test_quick_bench_reports_every_number(tmp_path: Path) -> None:
    report_path = tmp_path / "bench.json"
    workdir = tmp_path / "work"  # kept, so that a failure leaves the logs of every process
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streaming.cli",
            "bench",
            "--quick",
            "--json",
            str(report_path),
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    report = json.loads(report_path.read_text())

    missing = [k for k in REQUIRED_KEYS if k not in report]
    assert not missing, missing
    for key in POSITIVE:
        value = report[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (key, value)
    assert report["quick"] is True
    assert report["train_rows"] >= report["options"]["train_rows"]
    assert isinstance(report["python_version"], str) and report["python_version"].count(".") == 2
    assert report["platform"]

    # Percentiles are ordered; event-to-decision latencies come from millisecond timestamps.
    for key in ("", "_month"):
        assert 0 <= report[f"latency_p50_ms{key}"] <= report[f"latency_p99_ms{key}"] <= report[f"latency_max_ms{key}"]
        assert report[f"latency_decided{key}"] == report[f"latency_transactions{key}"] > 0
    # The month-deep phases start after a month of traffic for the same cards (the generator's
    # cards make about two transactions a day; a few days in, they would have a handful).
    assert report["month_history_days"] >= 30
    assert report["month_history_mean"] > 20
    for name in ("noop", "predict"):
        assert report[f"{name}_p50_ms"] <= report[f"{name}_p99_ms"]
        assert report[f"{name}_p50_ms_c16"] <= report[f"{name}_p99_ms_c16"]
        assert report[f"{name}_errors"] == 0

    # The ratios are the quotients of the reported throughputs (up to their 4-digit rounding).
    assert report["worker_vs_limit"] == pytest.approx(report["worker_tx_per_s"] / report["limit_tx_per_s"], rel=2e-3)
    month_ratio = report["worker_tx_per_s_month"] / report["limit_tx_per_s"]
    assert report["worker_vs_limit_month"] == pytest.approx(month_ratio, rel=2e-3)
    assert report["worker_vs_naive"] == pytest.approx(report["worker_tx_per_s"] / report["naive_tx_per_s"], rel=2e-3)

    # The table went to stdout; every process the bench started is gone.
    assert "fraud worker, saturated" in proc.stdout and "POST /predict, c=16" in proc.stdout
    assert _processes_using(workdir) == []


def test_limit_features_are_the_projects_transaction_features() -> None:
    """The limit loop and the baseline score what the project computes from the raw fields
    (history features aside, which they leave at zero), so their model calls do the same work."""
    rows = [r for _, r in zip(range(300), iter_transactions(SimConfig(seed=3, n_cards=30, days=3)), strict=False)]
    wire = [{k: v for k, v in r.items() if k in Transaction.model_fields} for r in rows]
    queries = pd.DataFrame(frame_from_transactions([Transaction.model_validate(r) for r in wire]))
    expected = compute_features(queries, history_from_frame(queries.iloc[:0]))
    raw = [i for i, name in enumerate(FEATURE_NAMES) if not name.startswith(("card_", "amount_to", "seconds_since"))]
    got = raw_features(wire)
    assert raw and len(raw) < len(FEATURE_NAMES)
    assert (got[:, raw] == expected[:, raw]).all()
    others = [i for i in range(len(FEATURE_NAMES)) if i not in raw]
    assert (got[:, others] == 0).all()
