"""The `fraud` commands a user runs, as subprocesses, against real files and a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pandas as pd
import pytest

from model.artifact import load_artifact
from tests.integration.conftest import consume, make_topics

pytestmark = pytest.mark.integration


def fraud(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streaming.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def kafka_env(topics) -> dict[str, str]:  # type: ignore[no-untyped-def]
    s = topics.settings
    return {
        "FRAUD_KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "FRAUD_TRANSACTIONS_TOPIC": s.transactions_topic,
        "FRAUD_TOPIC_PARTITIONS": str(s.topic_partitions),
        "FRAUD_METRICS_PORT": "0",
    }


def test_help_lists_every_command() -> None:
    out = fraud("--help")
    assert out.returncode == 0
    for command in ("broker", "train", "evaluate", "quality", "worker", "api", "produce", "demo", "models", "retrain"):
        assert command in out.stdout
        assert fraud(command, "--help").returncode == 0


def test_produce_to_kafka_and_replay_a_csv_in_time_order(bootstrap_servers: str, tmp_path: Path) -> None:
    topics = make_topics(bootstrap_servers)
    out = fraud("produce", "--count", "300", "--cards", "50", "--quiet", env=kafka_env(topics))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["acked"] == 300
    synthetic = consume(topics.settings, topics.transactions, until=300)
    assert len(synthetic) == 300
    assert all("is_fraud" not in orjson.loads(v) for _, v, _ in synthetic)  # labels stay off the wire

    csv = tmp_path / "data.csv"
    assert fraud("produce", "--csv", str(csv), "--cards", "40", "--days", "3", "--seed", "5").returncode == 0
    frame = pd.read_csv(csv)
    # Shuffle the file: replay must still publish in timestamp order.
    frame.sample(frac=1.0, random_state=1).to_csv(csv, index=False)
    replay_topics = make_topics(bootstrap_servers, partitions=1)
    out = fraud("produce", "--from-csv", str(csv), "--quiet", env=kafka_env(replay_topics))
    assert out.returncode == 0, out.stderr
    replayed = consume(replay_topics.settings, replay_topics.transactions, until=len(frame))
    stamps = [pd.Timestamp(orjson.loads(v)["timestamp"]) for _, v, _ in replayed]
    assert len(replayed) == len(frame)
    assert stamps == sorted(stamps)
    assert {orjson.loads(v)["transaction_id"] for _, v, _ in replayed} == set(frame["transaction_id"])


def test_train_and_evaluate_commands(tmp_path: Path, train_frame: pd.DataFrame) -> None:
    csv = tmp_path / "train.csv"
    bad = train_frame.iloc[:3].assign(amount=-1.0, transaction_id=["bad-1", "bad-2", "bad-3"])
    # Ids with inner spaces and 0.00 verifications are valid rows.
    named = train_frame.iloc[3:6].assign(
        merchant_id="Joe's Pizza & Grill", amount=0.0, transaction_id=["named 1", "named 2", "named 3"]
    )
    pd.concat([train_frame, bad, named]).to_csv(csv, index=False)
    out = fraud(
        "train", "--data", str(csv), "--out", str(tmp_path / "m"), "--train-from", "2026-01-02",
        "--train-to", "2026-01-14",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "bad_amount" in out.stdout  # invalid rows are reported, not silently dropped
    assert "training window [2026-01-02T00:00:00+00:00, 2026-01-15T00:00:00+00:00)" in out.stdout
    assert "delay protocol" in out.stdout
    assert "EXCLUDED" not in out.stderr  # 3 bad rows of ~15,000: no loud warning
    meta = load_artifact(tmp_path / "m").metadata
    assert meta["training_window"]["fit_from"] >= "2026-01-02"
    assert meta["training_window"]["train_end"] == "2026-01-15T00:00:00+00:00"  # the whole 14th trained on
    assert meta["data_fingerprint"]["invalid_rows"]["invalid_rows"] == 3

    report, scores = tmp_path / "report.json", tmp_path / "scores.csv"
    out = fraud(
        "evaluate", "--model", str(tmp_path / "m"), "--data", str(csv), "--to", "2026-01-20", "--gap-days", "3",
        "--baseline",
        "--report", str(report), "--scores", str(scores),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    body = json.loads(report.read_text())
    assert {"auc_roc", "average_precision", "card_precision_at_100", "at_threshold", "protocol"} <= set(body)
    # No --from: the range starts the gap after training; --to 2026-01-20 includes that day.
    assert body["range"]["from"] == "2026-01-18T00:00:00+00:00"
    assert body["range"]["to"] == "2026-01-21T00:00:00+00:00"
    assert body["baseline"]["model"] == "random_forest_textbook"
    for line in ("model (all rows)", "model (protocol)", "textbook random forest (all rows)"):
        assert line in out.stdout
    table = pd.read_csv(scores)
    assert list(table.columns) == ["transaction_id", "score", "decision"]
    assert len(table) == body["n_transactions"] > 0

    # A second artifact without the merchant risk features, reported beside the model on the same rows.
    out = fraud("train", "--data", str(csv), "--out", str(tmp_path / "base"), "--without-merchant-risk")
    assert out.returncode == 0, out.stderr
    out = fraud(
        "evaluate", "--model", str(tmp_path / "m"), "--data", str(csv), "--from", "2026-01-15",
        "--compare", str(tmp_path / "base"), "--report", str(report),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    body = json.loads(report.read_text())
    assert body["disabled_features"] == []
    assert "merchant_fraud_rate_7d" in body["compare"]["disabled_features"]
    assert body["compare"]["n_transactions"] == body["n_transactions"]
    assert body["compare"]["model_version"] != body["model_version"]
    assert "less than the gap" in out.stdout  # --from right where training ended: the note says so

    missing = tmp_path / "missing.csv"
    train_frame.drop(columns=["amount"]).to_csv(missing, index=False)
    out = fraud("train", "--data", str(missing), "--out", str(tmp_path / "x"))
    assert out.returncode == 2 and "amount" in out.stderr


def test_a_bad_csv_is_a_user_error_in_one_line(tmp_path: Path) -> None:
    csv = tmp_path / "no-amount.csv"
    csv.write_text("transaction_id,timestamp,card_id,merchant_id,is_fraud\nt1,2026-01-01T10:00:00+00:00,c,m,0\n")
    out = fraud("train", "--data", str(csv), "--out", str(tmp_path / "m"))
    assert out.returncode == 2
    assert out.stderr == f"fraud train: {csv}: missing required column(s): amount\n"
    assert not (tmp_path / "m").exists()


# `fraud train` with model.train.train replaced by one that raises the given exception.
RAISING_TRAIN = """
import sys

import model.train
from model.errors import UserInputError
from streaming.cli import main


def train(*args, **kwargs):
    raise {exception}


model.train.train = train
sys.exit(main(sys.argv[1:]))
"""


def test_a_plain_value_error_is_a_bug_with_a_traceback_not_a_user_error(tmp_path: Path) -> None:
    def run(exception: str) -> subprocess.CompletedProcess[str]:
        args = ["train", "--data", str(tmp_path / "any.csv"), "--out", str(tmp_path / "m")]
        script = RAISING_TRAIN.format(exception=exception)
        return subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120, check=False
        )

    bug = run("ValueError('cannot convert float NaN to integer')")
    assert bug.returncode == 1
    assert "Traceback (most recent call last)" in bug.stderr
    assert bug.stderr.rstrip().endswith("ValueError: cannot convert float NaN to integer")

    user = run("UserInputError('the window is empty')")
    assert (user.returncode, user.stderr) == (2, "fraud train: the window is empty\n")


def test_invalid_options_and_settings_are_user_errors_before_any_work(tmp_path: Path) -> None:
    out = fraud("produce", "--csv", str(tmp_path / "x.csv"), "--cards", "0")
    assert out.returncode == 2 and "argument --cards: must be >= 1" in out.stderr
    assert not (tmp_path / "x.csv").exists()
    out = fraud("train", "--data", "x.csv", "--out", "m", "--block-precision", "1.5")
    assert out.returncode == 2 and "argument --block-precision: must be > 0 and <= 1" in out.stderr
    out = fraud("quality", env={"FRAUD_TOPIC_PARTITIONS": "0"})
    assert out.returncode == 2
    assert (
        out.stderr
        == "fraud quality: invalid setting FRAUD_TOPIC_PARTITIONS: Input should be greater than or equal to 1\n"
    )


def test_a_failure_raised_on_purpose_is_one_line_with_status_1(tmp_path: Path) -> None:
    out = fraud("evaluate", "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "x.csv"))
    assert out.returncode == 1
    assert out.stderr.startswith(f"fraud evaluate: {tmp_path / 'no-model'}") and out.stderr.count("\n") == 1


def test_zone_less_csv_needs_assume_timezone_and_exclusions_are_loud(tmp_path: Path, train_frame: pd.DataFrame) -> None:
    naive = train_frame.assign(timestamp=train_frame["timestamp"].str.slice(0, 26))  # the offset cut off
    csv = tmp_path / "naive.csv"
    naive.to_csv(csv, index=False)
    out = fraud("train", "--data", str(csv), "--out", str(tmp_path / "m"))
    assert out.returncode == 2 and "no valid rows" in out.stderr and "timestamp_without_zone" in out.stderr
    out = fraud("train", "--data", str(csv), "--out", str(tmp_path / "m"), "--assume-timezone", "Europe/Paris")
    assert out.returncode == 0, out.stderr
    # Two thirds of the rows with a padded merchant id: excluded, and said loudly.
    padded = train_frame.copy()
    padded.loc[padded.index % 3 != 0, "merchant_id"] = " " + padded["merchant_id"]
    padded.to_csv(csv, index=False)
    out = fraud("train", "--data", str(csv), "--out", str(tmp_path / "p"), "--gap-days", "0")
    assert out.returncode == 0, out.stderr
    assert (
        "WARNING: 66.7% of the rows" in out.stderr
        and "EXCLUDED" in out.stderr
        and "merchant_id_surrounding_whitespace" in out.stderr
    )
    out = fraud("train", "--data", str(csv), "--out", str(tmp_path / "q"), "--assume-timezone", "Mars/Olympus")
    assert out.returncode == 2 and "unknown time zone" in out.stderr


def test_demo_runs_end_to_end_and_cleans_up(model_dir: Path, tmp_path: Path) -> None:
    out = fraud(
        "demo", "--count", "1200", "--rate", "400", "--model-dir", str(model_dir), "--workdir", str(tmp_path),
        timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["transactions"] == 1201  # 1200 valid + one malformed per thousand
    assert summary["decisions"] == 1200
    assert summary["dead_letters"] == 1
    assert 0 <= summary["fraud_rate"] < 0.1
    assert 0 < summary["p50_latency_ms"] <= summary["p99_latency_ms"]
    assert "equal" in out.stdout  # /predict agreed with the stream
    assert "/console (sign in with the key above)" in out.stdout
    # Which model serves, and its MLflow run (the session's temporary store, see tests/conftest.py).
    assert "serving model " in out.stdout and "registered as fraudstream version " in out.stdout, out.stdout
    assert processes_writing_under(tmp_path) == [], "the demo left processes running"


def processes_writing_under(root: Path) -> list[int]:
    """PIDs with a file open under ``root`` (the demo's children all log into its workdir)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if any(str(fd.readlink()).startswith(str(root)) for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_window_ends_a_bare_date_includes_its_day_a_timestamp_is_exclusive() -> None:
    from streaming.cli import _window_end, build_parser

    assert _window_end("2026-02-24") == pd.Timestamp("2026-02-25T00:00:00Z")
    assert _window_end("2026-02-24T12:00:00+01:00") == pd.Timestamp("2026-02-24T11:00:00Z")
    assert _window_end("2026-02-24T00:00:00") == pd.Timestamp("2026-02-24T00:00:00Z")  # a timestamp, as given
    args = build_parser().parse_args(["quality", "--from", "2026-02-01", "--to", "2026-02-01"])
    assert (args.start, args.end) == (pd.Timestamp("2026-02-01T00:00:00Z"), pd.Timestamp("2026-02-02T00:00:00Z"))
