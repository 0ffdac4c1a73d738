"""Batch-observed histograms expose exactly what prometheus_client's own would."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streaming.metrics import LATENCY_BUCKETS, SCORE_BUCKETS, BatchHistogram


def test_batch_histogram_matches_prometheus_histogram() -> None:
    rng = np.random.default_rng(3)
    for buckets in (SCORE_BUCKETS, LATENCY_BUCKETS):
        ours, theirs = CollectorRegistry(), CollectorRegistry()
        batch = BatchHistogram("x_seconds", "doc", buckets=buckets, registry=ours)
        single = Histogram("x_seconds", "doc", buckets=buckets, registry=theirs)
        # Values on the bucket bounds too: "le" is inclusive.
        values = np.concatenate([rng.exponential(0.2, 500), np.asarray(buckets), [0.0, 1e9]])
        for chunk in np.array_split(values, 7):
            batch.observe_many(chunk)
            for v in chunk:
                single.observe(float(v))
        ours_text = generate_latest(ours).decode().splitlines()
        theirs_text = generate_latest(theirs).decode().splitlines()
        # Sums may differ in the last bits (added in another order).
        assert [line for line in ours_text if "_sum" not in line] == [
            line for line in theirs_text if "_sum" not in line
        ]
        ours_sum = next(float(line.split()[-1]) for line in ours_text if line.startswith("x_seconds_sum"))
        assert ours_sum == np.float64(values.sum())
