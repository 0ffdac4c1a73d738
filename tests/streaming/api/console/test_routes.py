"""The console's pages in process, without a broker: cases are put into the queue as its reader
would (the browser tests in tests/integration/test_console.py run everything for real)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model.features import FEATURE_NAMES
from model.train import TrainOptions, train
from producers.synthetic import SimConfig, generate
from streaming.api.app import create_api
from streaming.api.services import Services
from streaming.kafka.broker import free_port
from streaming.settings import ApiSettings
from tests.streaming.api.console.test_followers import case, tx


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("console-model")
    frame = generate(SimConfig(seed=3, n_cards=120, n_merchants=30, days=12, start=datetime(2026, 1, 1, tzinfo=UTC)))
    frame.to_csv(root / "train.csv", index=False)
    train(root / "train.csv", root / "model", TrainOptions(model_type="logreg"))
    return root / "model"


def settings(model_dir: Path, **more: object) -> ApiSettings:
    # Nothing listens at the broker's or the worker's address: readers retry, labels time out.
    return ApiSettings(
        auth_disabled=True,  # the console's key and cookie: tests/streaming/api/test_security.py
        model_dir=model_dir,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        card_state_source="worker",
        worker_url=f"http://127.0.0.1:{free_port()}",
        state_token="test-token",  # noqa: S106 - a test value
        state_timeout_seconds=0.2,
        feedback_timeout_seconds=0.5,
        **more,
    )


@pytest.fixture
def client(model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_api(settings(model_dir))) as c:
        yield c


def services(client: TestClient) -> Services:
    found: Services = client.app.state.services  # type: ignore[attr-defined]  # the app is a FastAPI
    return found


def test_every_page_renders_with_its_security_headers(client: TestClient) -> None:
    assert client.get("/console", follow_redirects=False).headers["location"] == "/console/live"
    for page in ("live", "live?partial=1", "review", "score", "model", "rules"):
        resp = client.get(f"/console/{page}")
        assert resp.status_code == 200, (page, resp.text[:500])
        assert "default-src 'self'" in resp.headers["content-security-policy"]
        assert "http://" not in resp.text and "https://" not in resp.text  # nothing from elsewhere
    assert client.get("/console/static/console.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/console/static/../routes.py").status_code == 404
    assert client.get("/console/model/pr_curve.png").content.startswith(b"\x89PNG")
    assert client.get("/console/model/metadata.png").status_code == 404
    assert "FRAUD_BACKTEST_DATA" in client.get("/console/rules").text
    assert "not configured" in client.get("/console/model").text  # no worker metrics URL


def test_a_case_is_shown_escaped_with_its_reasons_and_features(client: TestClient) -> None:
    key, value = case("tx-<b>1</b>", 1)
    queue = services(client).console.queue  # type: ignore[union-attr]  # enabled by default
    queue.apply_case(key, value)
    listing = client.get("/console/review").text
    assert "tx-&lt;b&gt;1&lt;/b&gt;" in listing and "<b>1</b>" not in listing
    assert "/console/review/case?id=tx-%3Cb%3E1%3C/b%3E" in listing
    page = client.get("/console/review/case", params={"id": "tx-<b>1</b>"})
    assert page.status_code == 200
    assert "amount_high" in page.text and "log_amount" in page.text  # the reason and its features
    assert 'data-label="true"' in page.text
    assert client.get("/console/review/case", params={"id": "nope"}).status_code == 404


def test_a_label_the_broker_does_not_acknowledge_keeps_the_case(client: TestClient) -> None:
    queue = services(client).console.queue  # type: ignore[union-attr]
    queue.apply_case(*case("tx-2", 1))
    resp = client.post("/console/review/label", json={"transaction_id": "tx-2", "is_fraud": True})
    assert resp.status_code == 503 and "did not acknowledge" in resp.json()["detail"]
    assert [c.transaction_id for c in queue.oldest(5)] == ["tx-2"]
    assert client.post("/console/review/label", json={"transaction_id": "tx-9", "is_fraud": True}).status_code == 409
    bad = client.post("/console/review/label", json={"transaction_id": "tx-2", "is_fraud": "yes"})
    assert bad.status_code == 422


def test_the_score_page_scores_and_names_bad_fields(client: TestClient) -> None:
    t = tx("console-1")
    query = {**t.model_dump(mode="json", exclude_none=True), "amount": "120", "channel": "pos", "country": ""}
    page = client.get("/console/score", params=query)
    assert page.status_code == 200
    assert f"All {len(FEATURE_NAMES)} feature values" in page.text
    assert 'class="badge ' in page.text and "Decided by" in page.text
    bad = client.get("/console/score", params={**query, "amount": "-3", "timestamp": "yesterday"})
    assert bad.status_code == 422
    assert "greater than 0" in bad.text and "valid datetime" in bad.text


def test_the_console_can_be_switched_off(model_dir: Path) -> None:
    with TestClient(create_api(settings(model_dir, console_enabled=False))) as c:
        assert services(c).console is None
        assert c.get("/console/live").status_code == 404
        assert c.get("/health").status_code == 200
