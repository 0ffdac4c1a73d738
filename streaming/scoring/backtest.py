"""A rule scored on labelled history before it goes live: ``fraud rules test`` and the console.

The history's features are the serving features computed point in time (each row sees only
earlier rows and the labels known before it, as in training), and the model's decisions come
from the artifact that serves, so "frauds the model missed" means missed at its thresholds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.artifact import load_artifact
from model.dataset import load_csv, select_window
from model.metrics import decide
from model.scoring import Scorer
from model.train import features_for
from streaming.scoring.rules import Inputs, compile_expression


def backtest(data: Path, expression: str, model_dir: Path, start: Any = None, end: Any = None) -> dict[str, Any]:
    """How ``expression`` would have done on the labelled CSV ``data`` (rows in ``[start, end)``
    when given, with every earlier row as history)."""
    matches = compile_expression(expression)  # a bad rule fails before the CSV is read
    scorer = Scorer(load_artifact(model_dir))
    frame = load_csv(data).frame
    features = features_for(frame, scorer.label_delay_ms / 86_400_000)
    window = select_window(frame, start, end) if start is not None or end is not None else np.ones(len(frame), bool)
    hit = matches(Inputs.of_frame(frame, features))[window]
    fraud = frame["is_fraud"].to_numpy(dtype=bool)[window]
    model_flags = decide(scorer.predict(features[window]), scorer.thresholds) != "allow"
    rows, hits, frauds = int(window.sum()), int(hit.sum()), int(fraud.sum())
    caught = int((hit & fraud).sum())
    return {
        "rule": expression,
        "data": str(data),
        "model_version": scorer.version,
        "rows": rows,
        "hits": hits,
        "share_of_traffic": hits / rows if rows else None,
        "frauds": frauds,
        "frauds_caught": caught,
        "precision": caught / hits if hits else None,
        "recall": caught / frauds if frauds else None,
        "frauds_caught_model_missed": int((hit & fraud & ~model_flags).sum()),
        "genuine_hit": int((hit & ~fraud).sum()),
        "genuine_hit_model_allowed": int((hit & ~fraud & ~model_flags).sum()),
    }


def format_backtest(report: dict[str, Any]) -> str:
    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    r = report
    return "\n".join(
        [
            f"rule: {r['rule']}",
            f"on {r['rows']} transactions of {r['data']} (model {r['model_version']})",
            f"  hits                     {r['hits']} ({ratio(r['share_of_traffic'])} of traffic)",
            f"  precision                {ratio(r['precision'])}",
            f"  recall                   {ratio(r['recall'])} ({r['frauds_caught']} of {r['frauds']} frauds)",
            f"  frauds the model missed  {r['frauds_caught_model_missed']}",
            f"  genuine transactions hit {r['genuine_hit']} ({r['genuine_hit_model_allowed']} the model allowed)",
        ]
    )
