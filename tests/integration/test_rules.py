"""Rules and lists through the real stack: written with the CLI and the admin API, replicated to
the worker and the API processes, applied alike by the stream and /predict."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pandas as pd
import pytest

from model.schemas import wire_value
from streaming.api.security import key_line, new_key
from streaming.scoring.backtest import backtest
from tests.integration.conftest import Stack, consume, decisions_by_id, produce

pytestmark = pytest.mark.integration


def fraud(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "streaming.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**stack.env(), "FRAUD_METRICS_PORT": "0"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def versions(stack: Stack) -> tuple[str, str]:
    worker = httpx.get(f"http://127.0.0.1:{stack.web_port}/health").json()["rules_version"]
    api = httpx.get(f"http://127.0.0.1:{stack.api_port}/ready").json()["rules_version"]
    return worker, api


def test_a_rule_and_a_list_decide_alike_in_the_stream_and_predict(stack: Stack, traffic_frame: pd.DataFrame) -> None:
    rows = traffic_frame.iloc[:60].to_dict("records")
    key = new_key()
    stack.api_keys = key_line("analyst-1", key, ["predict", "admin"])
    stack.start_worker()
    stack.start_api()
    api = f"http://127.0.0.1:{stack.api_port}"
    auth = {"Authorization": f"Bearer {key}"}
    json_auth = {**auth, "content-type": "application/json"}

    out = fraud(stack, "rules", "add", "big-ecom", "--expr", "amount >= 0 and card_tx_count_1h >= 0", "--action",
                "block", "--description", "everything, for the test")  # fmt: skip
    assert "rule big-ecom saved" in out
    until("the rule in both processes", lambda: versions(stack)[0] == versions(stack)[1] != "none")
    assert "big-ecom: block when" in fraud(stack, "rules", "list")

    allowed = rows[0]["card_id"]
    resp = httpx.put(f"{api}/admin/lists/allow/card/{allowed}", json={"note": "known good"}, headers=auth)
    assert resp.status_code == 200 and resp.json()["updated_by"] == "analyst-1"
    until("the list entry in both processes", lambda: len(set(versions(stack))) == 1)

    produce(stack.topics.settings, [(str(r["card_id"]).encode(), wire_value(r)) for r in rows])
    got = decisions_by_id(consume(stack.topics.settings, stack.topics.decisions, until=len(rows)))
    assert len(got) == len(rows)
    for row in rows:
        streamed = got[row["transaction_id"]]
        expected = ("allow", "allow_list:card") if row["card_id"] == allowed else ("block", "rule:big-ecom")
        assert (streamed["decision"], streamed["decided_by"]) == expected
        assert streamed["reasons"][0] == expected[1]
    for row in rows[:5] + [r for r in rows if r["card_id"] == allowed][:2]:
        answer = httpx.post(f"{api}/predict", content=wire_value(row), headers=json_auth)
        streamed = got[row["transaction_id"]]
        assert (answer.json()["decision"], answer.json()["decided_by"]) == (
            streamed["decision"],
            streamed["decided_by"],
        )

    metrics = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics").text
    assert 'fraud_rule_hits_total{action="block",mode="active",rule="big-ecom"}' in metrics
    assert 'fraud_rule_decisions_total{decision="allow",source="allow_list"}' in metrics

    # A rule naming an unknown field is refused, naming it, and nothing is written.
    bad = httpx.put(f"{api}/admin/rules/oops", json={"expression": "amuont > 3", "action": "block"}, headers=auth)
    assert bad.status_code == 422 and "amuont" in bad.json()["detail"]
    assert httpx.get(f"{api}/admin/rules", headers=auth).json()["rules"][0]["id"] == "big-ecom"
    assert httpx.get(f"{api}/admin/rules").status_code == 401

    # Deleted: the model decides again, in both processes.
    fraud(stack, "rules", "delete", "big-ecom")
    assert httpx.delete(f"{api}/admin/lists/allow/card/{allowed}", headers=auth).status_code == 204
    until("the deletion in both processes", lambda: versions(stack) == ("none", "none"))
    answer = httpx.post(f"{api}/predict", content=wire_value(rows[1]), headers=json_auth)
    assert answer.json()["decided_by"] == "model"
    assert httpx.delete(f"{api}/admin/rules/big-ecom", headers=auth).status_code == 404


def test_backtest_counts_match_a_hand_count(model_dir: Path, train_frame: pd.DataFrame, tmp_path: Path) -> None:
    data = tmp_path / "history.csv"
    train_frame.to_csv(data, index=False)
    report = backtest(data, 'amount > 200 and channel == "ecommerce"', model_dir)
    hit = (train_frame["amount"] > 200) & (train_frame["channel"] == "ecommerce")
    fraud = train_frame["is_fraud"].astype(bool)
    assert report["rows"] == len(train_frame)
    assert report["hits"] == int(hit.sum()) > 0
    assert report["frauds_caught"] == int((hit & fraud).sum())
    assert report["precision"] == pytest.approx((hit & fraud).sum() / hit.sum())
    assert report["recall"] == pytest.approx((hit & fraud).sum() / fraud.sum())
    assert report["genuine_hit"] == int((hit & ~fraud).sum())
    assert 0 <= report["frauds_caught_model_missed"] <= report["frauds_caught"]
    assert report["genuine_hit_model_allowed"] <= report["genuine_hit"]
    # The CLI prints the same numbers.
    env = {**os.environ, "FRAUD_METRICS_PORT": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "streaming.cli", "rules", "test", "--data", str(data), "--model", str(model_dir),
         "--rule", 'amount > 200 and channel == "ecommerce"', "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert orjson.loads((tmp_path / "r.json").read_bytes())["hits"] == report["hits"]
    assert f"hits                     {report['hits']}" in done.stdout
