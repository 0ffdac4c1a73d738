"""Training writes a verified, time-split artifact; loading refuses tampering; evaluate scores a range."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from model.artifact import load_artifact
from model.dataset import load_csv
from model.errors import ModelLoadError, ModelNotReadyError, UserInputError
from model.evaluate import EvaluateOptions, evaluate, format_report, known_compromised
from model.features import FEATURE_NAMES, MERCHANT_RISK_FEATURES
from model.scoring import ModelHolder, Scorer
from model.train import (
    FEATURE_GROUPS,
    TrainOptions,
    build_estimator,
    disabled_features,
    disabled_groups,
    features_for,
    train,
)
from producers.synthetic import SimConfig, generate

TRAIN_FROM = pd.Timestamp("2026-01-03T00:00:00Z")
LOGREG_FROM = pd.Timestamp("2026-01-04T12:00:00+05:30")
LOGREG_TO = pd.Timestamp("2026-01-19T00:00:00Z")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPORT_KEYS = {
    "n_transactions",
    "n_fraud",
    "fraud_rate",
    "n_cards",
    "auc_roc",
    "average_precision",
    "card_precision_at_100",
    "thresholds",
    "threshold_notes",
    "at_threshold",
    "decision_counts",
    "confusion",
    "model_version",
    "range",
    "data",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ms(iso: str) -> int:
    return pd.Timestamp(iso).value // 1_000_000


@pytest.fixture(scope="session")
def data_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "transactions.csv"
    frame = generate(SimConfig(seed=1, n_cards=200, n_merchants=40, days=20))
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def hgb(tmp_path_factory: pytest.TempPathFactory, data_csv: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("artifacts") / "hgb"
    # One OpenMP thread: on a small, shared CI box spinning threads make the fit slower and erratic.
    with threadpool_limits(limits=1):
        return out, train(data_csv, out, TrainOptions(train_from=TRAIN_FROM))


@pytest.fixture(scope="session")
def logreg(tmp_path_factory: pytest.TempPathFactory, data_csv: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("artifacts") / "logreg"
    return out, train(data_csv, out, TrainOptions(model_type="logreg", train_from=LOGREG_FROM, train_to=LOGREG_TO))


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------


def test_artifact_files_and_metadata(hgb: tuple[Path, dict[str, Any]], data_csv: Path) -> None:
    out, meta = hgb
    for name in ("model.joblib", "metadata.json", "pr_curve.png", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    for name in ("pr_curve.png", "confusion_matrix.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert not (out / "metadata.json.tmp").exists()

    on_disk = json.loads((out / "metadata.json").read_text())
    assert on_disk == json.loads(json.dumps(meta, default=str))
    assert isinstance(on_disk["version"], str) and on_disk["version"]
    assert on_disk["model_type"] == "hgb"
    assert on_disk["feature_names"] == list(FEATURE_NAMES)
    assert len(on_disk["reference_features"]) == len(FEATURE_NAMES)
    assert on_disk["model_sha256"] == sha256(out / "model.joblib")
    assert on_disk["data_fingerprint"]["sha256"] == sha256(data_csv)
    assert on_disk["data_fingerprint"]["rows"] == len(pd.read_csv(data_csv))

    t = on_disk["thresholds"]
    assert 0.0 <= t["review"] <= t["block"] <= 1.0

    window = on_disk["training_window"]
    for key in ("fit_from", "fit_to", "validation_from", "validation_to", "fit_rows", "validation_rows"):
        assert key in window
    metrics = on_disk["validation_metrics"]
    assert metrics["n_transactions"] == window["validation_rows"]
    assert metrics["n_fraud"] == window["validation_fraud"] > 0
    assert metrics["auc_roc"] > 0.7  # well above chance on ~40 validation frauds

    loaded = load_artifact(out)
    assert loaded.version == on_disk["version"]
    assert loaded.thresholds.review == t["review"] and loaded.thresholds.block == t["block"]


def test_time_split_and_train_from(hgb: tuple[Path, dict[str, Any]], data_csv: Path) -> None:
    _, meta = hgb
    w = meta["training_window"]
    # Validation is strictly later than everything fitted.
    assert ms(w["fit_from"]) <= ms(w["fit_to"]) < ms(w["validation_from"]) <= ms(w["validation_to"])
    # Rows before --train-from are history only.
    assert ms(w["fit_from"]) >= TRAIN_FROM.value // 1_000_000
    assert pd.Timestamp(w["requested_from"]) == TRAIN_FROM
    ts = load_csv(data_csv).frame["ts_ms"].to_numpy()
    start = TRAIN_FROM.value // 1_000_000
    assert w["history_only_rows"] == int((ts < start).sum()) > 0
    assert w["fit_rows"] + w["gap_rows"] + w["validation_rows"] == int((ts >= start).sum())
    assert w["fit_rows"] == int(((ts >= start) & (ts <= ms(w["fit_to"]))).sum())
    # A delay gap between fitting and validation: 17 days of window keep 8.5 for fitting, so the
    # 7-day label delay is shortened to what is left after the 3.4-day validation window.
    assert 4.5 < w["gap_days"] < 5.5
    assert ms(w["validation_from"]) - ms(w["fit_to"]) >= w["gap_days"] * 86_400_000
    assert any("gap shortened" in n for n in meta["threshold_targets"]["notes"])
    assert 0.15 < w["validation_rows"] / (w["fit_rows"] + w["gap_rows"] + w["validation_rows"]) < 0.25
    assert w["model_fitted_on_rows"] == w["fit_rows"]
    assert pd.Timestamp(w["train_end"]) > pd.Timestamp(w["validation_to"])


def test_logreg_is_fitted_on_exactly_the_window_rows(logreg: tuple[Path, dict[str, Any]], data_csv: Path) -> None:
    out, meta = logreg
    assert meta["model_type"] == "logreg"
    assert meta["validation_metrics"]["auc_roc"] > 0.8
    artifact = load_artifact(out)
    w = meta["training_window"]
    assert ms(w["fit_from"]) >= LOGREG_FROM.value // 1_000_000
    assert ms(w["validation_to"]) < LOGREG_TO.value // 1_000_000
    assert ms(w["fit_to"]) < ms(w["validation_from"])

    # Refit independently on [train_from, validation_from): identical coefficients prove that
    # rows outside the window were not trained on (yet did serve as history for the features).
    ds = load_csv(data_csv)
    ts = ds.frame["ts_ms"].to_numpy()
    fit = (ts >= LOGREG_FROM.value // 1_000_000) & (ts <= ms(w["fit_to"]))
    assert int(fit.sum()) == w["fit_rows"]
    expected = build_estimator("logreg", meta["seed"]).fit(features_for(ds.frame)[fit], ds.labels[fit])
    got = artifact.estimator
    np.testing.assert_allclose(got[-1].coef_, expected[-1].coef_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got[0].mean_, expected[0].mean_, rtol=1e-9)


def test_split_never_puts_one_instant_on_both_sides(tmp_path: Path) -> None:
    # 31 instants with 12 rows each: the 80% quantile (sorted position 296.8) falls inside a shared instant.
    rng = np.random.default_rng(3)
    n = 372
    instants = pd.Timestamp("2026-01-01T00:00:00Z") + pd.to_timedelta(np.repeat(np.arange(31), 12), unit="h")
    fraud = (np.arange(n) % 12 == 0).astype(int)
    frame = pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "timestamp": [t.isoformat() for t in instants],
            "card_id": [f"c{i % 17}" for i in range(n)],
            "merchant_id": [f"m{i % 5}" for i in range(n)],
            "amount": np.round(np.where(fraud == 1, 500.0, 20.0) * rng.uniform(0.5, 1.5, n), 2),
            "is_fraud": fraud,
        }
    )
    frame.to_csv(tmp_path / "ties.csv", index=False)
    meta = train(tmp_path / "ties.csv", tmp_path / "model", TrainOptions(model_type="logreg", gap_days=0))
    w = meta["training_window"]
    assert ms(w["fit_to"]) < ms(w["validation_from"])
    assert w["fit_rows"] + w["validation_rows"] == n and w["gap_rows"] == 0
    assert w["model_fitted_on_rows"] == w["fit_rows"]
    refit = train(tmp_path / "ties.csv", tmp_path / "refit", TrainOptions(model_type="logreg", gap_days=0, refit=True))
    assert refit["training_window"]["model_fitted_on_rows"] == n
    assert refit["thresholds"] == meta["thresholds"]  # set on the same validation scores
    assert w["validation_rows"] % 12 == 0  # whole instants only


def test_tampered_model_is_refused(hgb: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = hgb
    copy = shutil.copytree(out, tmp_path / "copy")
    assert load_artifact(copy).version  # the untouched copy loads
    flip_byte(copy / "model.joblib")
    with pytest.raises(ModelLoadError, match="SHA-256"):
        load_artifact(copy)


def test_other_broken_artifacts_are_refused(hgb: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = hgb
    with pytest.raises(ModelLoadError, match="not found"):
        load_artifact(tmp_path / "missing")
    wrong = shutil.copytree(out, tmp_path / "features")
    meta = json.loads((wrong / "metadata.json").read_text())
    meta["feature_names"] = meta["feature_names"][:-1]
    (wrong / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="feature list"):
        load_artifact(wrong)
    garbled = shutil.copytree(out, tmp_path / "garbled")
    (garbled / "metadata.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable"):
        load_artifact(garbled)


def _replace_dir(live: Path, new: Path, stamp: float) -> None:
    """Swap ``new`` in as ``live`` with a metadata mtime the holder has not seen."""
    os.utime(new / "metadata.json", (stamp, stamp))
    shutil.rmtree(live)
    new.rename(live)


def test_holder_keeps_serving_when_new_artifact_is_corrupt(
    hgb: tuple[Path, dict[str, Any]], logreg: tuple[Path, dict[str, Any]], data_csv: Path, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    holder = ModelHolder(live)
    assert holder.load() is False
    assert not holder.ready and holder.reload_failures == 1
    with pytest.raises(ModelNotReadyError):
        _ = holder.scorer

    shutil.copytree(hgb[0], live)
    os.utime(live / "metadata.json", (1_000_000, 1_000_000))
    assert holder.load() is True
    v1 = holder.scorer.version
    assert v1 == hgb[1]["version"] and holder.last_error is None
    assert holder.load() is False  # unchanged directory: no reload

    frame = load_csv(data_csv).frame.iloc[-50:].reset_index(drop=True)
    before = holder.scorer.score_frame(frame, frame).scores

    corrupt = shutil.copytree(logreg[0], tmp_path / "corrupt")
    flip_byte(corrupt / "model.joblib")
    _replace_dir(live, corrupt, 2_000_000)
    assert holder.load() is False
    assert holder.ready and holder.scorer.version == v1
    assert holder.reload_failures == 2
    assert holder.last_error is not None and "SHA-256" in holder.last_error
    assert np.array_equal(holder.scorer.score_frame(frame, frame).scores, before)
    assert holder.load() is False and holder.reload_failures == 2  # the same bad artifact is not retried

    good = shutil.copytree(logreg[0], tmp_path / "good")
    _replace_dir(live, good, 3_000_000)
    assert holder.load() is True
    assert holder.scorer.version == logreg[1]["version"] != v1
    assert holder.last_error is None


def test_evaluate_writes_report_and_scores_for_the_range(
    hgb: tuple[Path, dict[str, Any]], data_csv: Path, tmp_path: Path
) -> None:
    out, meta = hgb
    raw = pd.read_csv(data_csv, dtype={"transaction_id": str})
    instants = pd.to_datetime(raw["timestamp"], utc=True, format="ISO8601")
    ordered = instants.sort_values().reset_index(drop=True)
    start, end = ordered.iloc[int(len(ordered) * 0.7)], ordered.iloc[int(len(ordered) * 0.9)]
    in_range = (instants >= start) & (instants < end)
    assert (instants == start).any() and (instants == end).any()  # both bounds sit on real rows

    report_path, scores_path = tmp_path / "out" / "report.json", tmp_path / "out" / "scores.csv"
    returned = evaluate(
        out, data_csv, EvaluateOptions(start=start, end=end, report_path=report_path, scores_path=scores_path)
    )
    report = json.loads(report_path.read_text())
    assert report == json.loads(json.dumps(returned))
    assert REPORT_KEYS <= set(report)
    assert report["model_version"] == meta["version"]
    assert pd.Timestamp(report["range"]["from"]) == start and pd.Timestamp(report["range"]["to"]) == end
    assert report["n_transactions"] == int(in_range.sum())
    assert report["n_fraud"] == int(raw.loc[in_range, "is_fraud"].sum())
    assert report["data"]["total_rows"] == len(raw)

    scores = pd.read_csv(scores_path, dtype={"transaction_id": str})
    assert list(scores.columns) == ["transaction_id", "score", "decision"]
    assert not scores["transaction_id"].duplicated().any()
    assert set(scores["transaction_id"]) == set(raw.loc[in_range, "transaction_id"])
    assert scores["decision"].value_counts().to_dict() == {k: v for k, v in report["decision_counts"].items() if v}
    t = meta["thresholds"]
    s = scores["score"].to_numpy()
    clear = (np.abs(s - t["review"]) > 1e-6) & (np.abs(s - t["block"]) > 1e-6)
    expected = np.where(s >= t["block"], "block", np.where(s >= t["review"], "review", "allow"))
    assert (scores["decision"].to_numpy()[clear] == expected[clear]).all()

    # Rows before the range are history: the scores equal the training-path features' scores.
    ds = load_csv(data_csv)
    artifact = load_artifact(out)
    full = pd.Series(artifact.estimator.predict_proba(features_for(ds.frame))[:, 1], index=ds.frame["transaction_id"])
    np.testing.assert_allclose(s, full.loc[scores["transaction_id"]].to_numpy(), atol=1e-6)


def test_forests_train_and_serve_single_threaded(data_csv: Path, tmp_path: Path) -> None:
    for kind in ("rf", "et"):
        meta = train(data_csv, tmp_path / kind, TrainOptions(model_type=kind, train_from=TRAIN_FROM))
        assert meta["model_type"] == kind
        assert meta["validation_metrics"]["auc_roc"] > 0.8
        holder = ModelHolder(tmp_path / kind)
        assert holder.load()
        assert holder.scorer.artifact.estimator.n_jobs is None  # no worker pool per scoring call
        frame = load_csv(data_csv).frame.iloc[-20:].reset_index(drop=True)
        scores = holder.scorer.score_frame(frame, frame).scores
        assert scores.shape == (20,) and np.isfinite(scores).all()


def test_select_compares_estimators_over_folds_and_refits_the_best(data_csv: Path, tmp_path: Path) -> None:
    options = TrainOptions(select=True, candidates=("logreg", "hgb"), folds=2, gap_days=1, baseline=True)
    with threadpool_limits(limits=1):
        meta = train(data_csv, tmp_path / "sel", options)
    sel = meta["selection"]
    assert set(sel["candidates"]) == {"logreg", "hgb"} and len(sel["folds"]) == 2
    assert sel["gap_days"] == 1
    for result in sel["candidates"].values():
        ap = result["average_precision"]
        assert len(ap["folds"]) == 2 and ap["mean"] == pytest.approx(np.mean(ap["folds"]))
        assert ap["std"] == pytest.approx(np.std(ap["folds"]))
    best = max(sel["candidates"], key=lambda n: sel["candidates"][n]["average_precision"]["mean"])
    assert sel["chosen"] == best == meta["model_type"]
    # Folds move back in time, each validated after its own gap.
    folds = sel["folds"]
    assert folds[1]["validation_to"] == folds[0]["validation_from"]
    for f in folds:
        assert ms(f["validation_from"]) - ms(f["fit_to"]) == 86_400_000
    # The chosen model is refitted on the whole window; the thresholds come from the latest fold.
    w = meta["training_window"]
    assert w["model_fitted_on_rows"] == len(load_csv(data_csv).frame)
    assert w["validation_from"] >= folds[0]["validation_from"]
    # The textbook forest is reported on the same split.
    base = meta["baseline"]
    assert base["model"] == "random_forest_textbook"
    assert base["n_transactions"] == w["validation_rows"] == meta["validation_metrics"]["n_transactions"]
    assert 0 < base["protocol"]["n_transactions"] <= base["n_transactions"]


def test_validation_reports_the_delay_protocol(hgb: tuple[Path, dict[str, Any]]) -> None:
    _, meta = hgb
    plain, protocol = meta["validation_metrics"], meta["validation_metrics"]["protocol"]
    assert protocol["n_transactions"] <= plain["n_transactions"]
    assert len(protocol["card_precision_per_day"]) >= 3
    assert protocol["card_precision_at_100"] == pytest.approx(
        np.mean([d["precision"] for d in protocol["card_precision_per_day"]])
    )


def test_known_compromised_cards_leave_the_later_days() -> None:
    day = 86_400_000
    t0 = 20_000 * day  # a UTC midnight
    rows = [
        # card, ts, fraud, labelled_ms
        ("a", t0 - 2 * day, 1, -1),  # a fraud in training: known from the start
        ("a", t0 + 1 * day, 0, -1),
        ("b", t0 + 0 * day + 5, 1, t0 + 2 * day + 1),  # labelled on day 2 (after midnight)
        ("b", t0 + 2 * day + 10, 0, -1),  # day 2: the label came after midnight -> kept
        ("b", t0 + 3 * day, 0, -1),  # day 3: known -> left out
        ("c", t0 + 1 * day, 1, -1),  # no labelled_at: known at ts + delay (4 days) -> day 5 on
        ("c", t0 + 5 * day, 0, -1),  # 1d + 4d = 5d exactly: not before the day began -> kept
        ("c", t0 + 6 * day, 0, -1),  # left out
    ]
    frame = pd.DataFrame(rows, columns=["card_id", "ts_ms", "is_fraud", "labelled_ms"])
    everything = np.ones(len(frame), dtype=bool)
    removed = known_compromised(frame, everything, train_end_ms=t0, delay_ms=4 * day)
    assert removed.tolist() == [False, True, False, False, True, False, False, True]
    # Only rows of the mask are ever marked.
    assert not known_compromised(frame, ~everything, t0, 4 * day).any()


def test_evaluate_defaults_to_the_delay_protocol_with_the_textbook_baseline(data_csv: Path, tmp_path: Path) -> None:
    train_to = pd.Timestamp("2026-01-12T00:00:00Z")
    meta = train(data_csv, tmp_path / "m", TrainOptions(model_type="logreg", train_to=train_to))
    assert meta["training_window"]["train_end"] == train_to.isoformat()
    report = evaluate(tmp_path / "m", data_csv, EvaluateOptions(baseline=True, compare_dir=tmp_path / "m"))
    span = report["range"]
    # No --from: the test range starts a label delay (7 days) after the training end.
    assert pd.Timestamp(span["from"]) == train_to + pd.Timedelta(days=7)
    assert span["actual_gap_days"] == span["gap_days"] == 7 and span["notes"] == []
    protocol = report["protocol"]
    removed = protocol["removed_known_compromised"]
    assert removed["transactions"] > 0 and removed["cards"] > 0
    assert protocol["n_transactions"] == report["n_transactions"] - removed["transactions"]
    assert protocol["n_fraud"] == report["n_fraud"] - removed["fraud"]
    assert {d["day"] for d in protocol["card_precision_per_day"]} == {f"2026-01-{d}" for d in range(19, 21)}
    base = report["baseline"]
    assert base["n_transactions"] == report["n_transactions"]
    assert base["protocol"]["n_transactions"] == protocol["n_transactions"]
    assert base["fit_rows"] == int((load_csv(data_csv).frame["ts_ms"] < train_to.value // 1_000_000).sum())
    # The same artifact compared with itself scores the same.
    assert report["compare"]["average_precision"] == report["average_precision"]
    table = format_report(report)
    assert "textbook random forest (protocol)" in table and "model (all rows)" in table
    assert f"{removed['cards']} cards known to be compromised left out" in table

    early = evaluate(tmp_path / "m", data_csv, EvaluateOptions(start=pd.Timestamp("2026-01-10T00:00:00Z")))
    assert early["range"]["notes"] == ["the range starts inside the training window: metrics are optimistic"]


def test_training_without_groups_zeroes_them_in_training_and_serving(
    data_csv: Path, hgb: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = TrainOptions(model_type="logreg", train_from=TRAIN_FROM, without=("card-labels", "merchant-fraud-rates"))
    meta = train(data_csv, tmp_path / "m", options)
    off = {*FEATURE_GROUPS["card-labels"], *FEATURE_GROUPS["merchant-fraud-rates"]}
    assert meta["disabled_groups"] == ["card-labels", "merchant-fraud-rates"]
    assert set(meta["disabled_features"]) == off and len(off) == 5
    # Trained on zeros: the medians of the fitted rows say so (a card with no known fraud reads
    # the 30-day cap, so the default model's median is not zero).
    reference = dict(zip(FEATURE_NAMES, meta["reference_features"], strict=True))
    assert dict(zip(FEATURE_NAMES, hgb[1]["reference_features"], strict=True))["card_days_since_known_fraud"] > 0
    assert all(reference[f] == 0 for f in off)

    scorer = Scorer(load_artifact(tmp_path / "m"))
    seen: list[np.ndarray] = []
    monkeypatch.setattr(scorer, "predict", lambda x: seen.append(x.copy()) or np.zeros(len(x)))
    features = np.ones((3, len(FEATURE_NAMES)))
    scorer.score_features(features)
    zeroed = [name for i, name in enumerate(FEATURE_NAMES) if (seen[0][:, i] == 0).all()]
    assert set(zeroed) == off
    assert (features == 1).all()  # the caller's matrix (the champion's, for a challenger) is untouched


def test_feature_groups_and_the_merchant_risk_alias() -> None:
    assert disabled_groups(TrainOptions(merchant_risk=False)) == ["merchant-risk"]
    assert disabled_groups(TrainOptions(merchant_risk=False, without=("card-labels", "card-labels"))) == [
        "card-labels",
        "merchant-risk",
    ]
    assert disabled_features(["merchant-risk"]) == list(MERCHANT_RISK_FEATURES)
    # The four groups split the merchant risk features, none shared, in the matrix's order.
    parts = [g for g in FEATURE_GROUPS if g != "merchant-risk"]
    assert disabled_features(parts) == list(MERCHANT_RISK_FEATURES)
    assert sum(len(FEATURE_GROUPS[g]) for g in parts) == len(MERCHANT_RISK_FEATURES)
    assert disabled_features([]) == []


def test_an_unknown_group_is_refused_before_the_data_is_read(tmp_path: Path) -> None:
    with pytest.raises(UserInputError) as caught:
        train(tmp_path / "missing.csv", tmp_path / "m", TrainOptions(without=("card-labels", "merchant-rates")))
    message = str(caught.value)
    assert "'merchant-rates'" in message and "'card-labels'" not in message
    assert all(g in message for g in FEATURE_GROUPS)
    assert not (tmp_path / "m").exists()
