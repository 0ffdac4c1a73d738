"""``fraud bench``'s report: the machine it ran on, rounding, and the table for the terminal."""

from __future__ import annotations

import contextlib
import math
import os
import platform
from pathlib import Path
from typing import Any

#: Keys every JSON report carries (the test checks them); the report has more.
REQUIRED_KEYS = (
    "limit_tx_per_s",
    "naive_tx_per_s",
    "worker_tx_per_s",
    "worker_cpu_us_per_tx",
    "latency_p50_ms",
    "latency_p99_ms",
    "worker_tx_per_s_month",
    "worker_cpu_us_per_tx_month",
    "worker_vs_limit_month",
    "latency_p50_ms_month",
    "latency_p99_ms_month",
    "month_history_days",
    "month_history_mean",
    "worker_rss_mb",
    "api_rss_mb",
    "noop_p50_ms",
    "predict_p50_ms",
    "predict_rps_c16",
    "train_rows",
    "train_seconds",
    "train_peak_mb",
    "worker_vs_limit",
    "worker_vs_naive",
    "cpu_count",
    "python_version",
    "platform",
)


def machine() -> dict[str, Any]:
    import confluent_kafka
    import faust
    import numpy as np
    import sklearn

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count() or 0,
        "cpu_model": cpu_model,
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "versions": {
            "faust": faust.__version__,
            "confluent_kafka": confluent_kafka.__version__,
            "librdkafka": confluent_kafka.libversion()[0],
            "scikit_learn": sklearn.__version__,
            "numpy": np.__version__,
        },
    }


def rounded(value: Any) -> Any:
    """Four significant digits are more than the run-to-run noise; ratios are rounded from the
    unrounded values, so they may differ from the rounded ones' quotient in the last digit."""
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def format_table(r: dict[str, Any]) -> str:
    """The report as a fixed-width table for the terminal (and the README)."""

    def n(x: float | None) -> str:
        return "-" if x is None else f"{x:,.0f}"

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:,.2f} ms"

    def busy(name: str, c: str) -> str:
        share = r[f"{name}_client_busy_{c}"]
        return f"; client {share:.0%} of a core" + (" (CLIENT-BOUND)" if share > 0.8 else "")

    rate, linger = r["options"]["latency_rate"], r["options"]["producer_linger_ms"]

    def worker_rows(k: str, when: str) -> list[tuple[str, str, str]]:
        broker = r.get(f"worker_broker_cpu_us_per_tx{k}")
        return [
            (
                f"fraud worker, saturated, {when}",
                f"{n(r[f'worker_tx_per_s{k}'])} tx/s",
                f"{n(r[f'worker_cpu_us_per_tx{k}'])} µs CPU/tx"
                + (f" (+ broker {n(broker)})" if broker else "")
                + f"; {r[f'worker_vs_limit{k}']:.3f} x limit",
            ),
            (
                "  batches while saturated",
                f"{n(r[f'worker_batch_mean_size{k}'])} tx",
                f"{r[f'worker_batch_mean_ms{k}']:.1f} ms scoring per batch",
            ),
            (
                f"fraud worker, {n(rate)} tx/s offered, {when}",
                f"p50 {n(r[f'latency_p50_ms{k}'])} ms",
                f"p99 {n(r[f'latency_p99_ms{k}'])} ms, max {n(r[f'latency_max_ms{k}'])} ms; decided "
                f"{r[f'latency_decided{k}']:,}/{r[f'latency_transactions{k}']:,} "
                f"at {n(r[f'latency_decided_tx_per_s{k}'])} tx/s",
            ),
            (
                "  batches at that rate",
                f"{n(r[f'latency_batch_mean_size{k}'])} tx",
                f"{r[f'latency_batch_mean_ms{k}']:.1f} ms scoring per batch; producer linger {linger:g} ms",
            ),
        ]

    month = f"month ({r['month_history_days']:.0f} d, {r['month_history_mean']:.0f} tx/card)"
    rows = [
        ("limit: confluent-kafka + orjson + batched model", f"{n(r['limit_tx_per_s'])} tx/s",
         f"{r['limit_cpu_us_per_tx']:.1f} µs CPU/tx"),
        ("naive: Faust agent, 1 predict + 1 send per msg", f"{n(r['naive_tx_per_s'])} tx/s",
         f"{n(r['naive_cpu_us_per_tx'])} µs CPU/tx"),
        *worker_rows("_month", month),
        *worker_rows("", "first days"),
        ("  worker / naive, first days", f"{r['worker_vs_naive']:.2f}x", ""),
        ("resident memory, peak", f"{n(r['worker_rss_mb'])} MB worker",
         f"API {n(r['api_rss_mb'])} MB (card table copy), {n(r['api_via_worker_rss_mb'])} MB (state from the worker)"),
        (f"HTTP client: {r['options']['http_client']}", "", ""),
        ("POST /predict no-op, c=1", f"{n(r['noop_rps_c1'])} req/s",
         f"p50 {ms(r['noop_p50_ms'])}, p99 {ms(r['noop_p99_ms'])}{busy('noop', 'c1')}"),
        ("POST /predict no-op, c=16", f"{n(r['noop_rps_c16'])} req/s",
         f"p50 {ms(r['noop_p50_ms_c16'])}, p99 {ms(r['noop_p99_ms_c16'])}{busy('noop', 'c16')}"),
        ("POST /predict, c=1", f"{n(r['predict_rps_c1'])} req/s",
         f"p50 {ms(r['predict_p50_ms'])}, p99 {ms(r['predict_p99_ms'])}{busy('predict', 'c1')}"),
        ("POST /predict, c=16", f"{n(r['predict_rps_c16'])} req/s",
         f"p50 {ms(r['predict_p50_ms_c16'])}, p99 {ms(r['predict_p99_ms_c16'])}{busy('predict', 'c16')}"),
        ("  card state from the worker, c=1", f"{n(r['predict_via_worker_rps_c1'])} req/s",
         f"p50 {ms(r['predict_via_worker_p50_ms'])}, p99 {ms(r['predict_via_worker_p99_ms'])}"),
        ("  card state from the worker, c=16", f"{n(r['predict_via_worker_rps_c16'])} req/s",
         f"p50 {ms(r['predict_via_worker_p50_ms_c16'])}, p99 {ms(r['predict_via_worker_p99_ms_c16'])}"),
        (f"fraud train, {n(r['train_rows'])} rows", f"{r['train_seconds']:.1f} s",
         f"peak RSS {n(r['train_peak_mb'])} MB"),
    ]  # fmt: skip
    width = max(len(a) for a, _, _ in rows)
    head = (
        f"fraud bench{' --quick' if r['quick'] else ''}: {r['cpu_count']} CPUs ({r['cpu_model'] or '?'}), "
        f"{r['memory_gb']:.0f} GB, Python {r['python_version']}, {r['platform']}; "
        f"load {r['loadavg_start'][0]:.2f} -> {r['loadavg_end'][0]:.2f}; {r['bench_seconds']:.0f} s"
    )
    lines = [head, ""] + [f"{a:<{width}}  {b:>14}  {c}" for a, b, c in rows]
    return "\n".join(lines)
