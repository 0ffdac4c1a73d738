"""The API's request handling, in process (the integration tests drive it over real HTTP)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from streaming.api.app import create_api
from streaming.children import free_port
from streaming.settings import ApiSettings

GOOD = {
    "transaction_id": "t-1",
    "timestamp": "2026-01-10T12:00:00+01:00",
    "card_id": "card-1",
    "merchant_id": "m-1",
    "amount": 42.5,
    "currency": "EUR",
    "channel": "pos",
}


@pytest.fixture(scope="module")
def model_dir(small_model_dir: Path) -> Path:
    return small_model_dir


@pytest.fixture
def client(model_dir: Path) -> TestClient:
    # No worker listens at this URL: every prediction is the stateless one.
    settings = ApiSettings(
        auth_disabled=True,
        model_dir=model_dir,
        card_state_source="worker",
        state_token="state-token",  # noqa: S106 - test value
        worker_url=f"http://127.0.0.1:{free_port()}",
        state_timeout_seconds=0.2,
    )
    with TestClient(create_api(settings)) as c:
        yield c  # type: ignore[misc]  # a generator fixture


def test_predict_without_worker_is_stateless_and_says_so(client: TestClient) -> None:
    resp = client.post("/predict", json=GOOD)
    assert resp.status_code == 200
    body = resp.json()
    assert body["card_state"] == "unavailable"
    assert 0.0 <= body["score"] <= 1.0 and body["decision"] in ("allow", "review", "block")
    metrics = client.get("/metrics").text
    assert 'fraud_api_decisions_total{card_state="unavailable"' in metrics
    assert 'route="/predict"' in metrics and 'route="/health"' not in metrics


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**GOOD, "amount": 0}, "amount"),
        ({**GOOD, "amount": "12"}, "amount"),
        ({**GOOD, "timestamp": "2026-01-10T12:00:00"}, "timestamp"),
        ({**GOOD, "card_id": "has space"}, "card_id"),
        ({k: v for k, v in GOOD.items() if k != "merchant_id"}, "merchant_id"),
        ({**GOOD, "channel": "kiosk"}, "channel"),
    ],
)
def test_invalid_requests_get_422_naming_the_field(client: TestClient, body: dict, field: str) -> None:
    resp = client.post("/predict", json=body)
    assert resp.status_code == 422
    assert field in {err["loc"][-1] for err in resp.json()["detail"]}


def test_non_finite_amounts_are_a_422_not_a_500(client: TestClient) -> None:
    for literal in ("NaN", "Infinity"):
        raw = json.dumps(GOOD).replace("42.5", literal)
        resp = client.post("/predict", content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 422, resp.text
        assert resp.json()["detail"][0]["loc"][-1] == "amount"


def test_probes(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["model_version"]
    assert ready.json()["card_state_source"] == "worker" and ready.json()["card_state_restored"] is True
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_not_ready_until_the_card_state_copy_is_restored(model_dir: Path) -> None:
    # The default source: a copy of the card table from its changelog, on a broker that is not there.
    settings = ApiSettings(auth_disabled=True, model_dir=model_dir, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    with TestClient(create_api(settings)) as c:
        ready = c.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["model_version"] and ready.json()["card_state_restored"] is False
        # /predict still answers, statelessly, and says so.
        resp = c.post("/predict", json=GOOD)
        assert resp.status_code == 200 and resp.json()["card_state"] == "unavailable"
        assert "fraud_api_card_state_restored 0.0" in c.get("/metrics").text


def test_not_ready_without_a_model(tmp_path: Path) -> None:
    settings = ApiSettings(auth_disabled=True, model_dir=tmp_path / "nothing", worker_url="http://127.0.0.1:9")
    with TestClient(create_api(settings)) as c:
        assert c.get("/ready").status_code == 503
        resp = c.post("/predict", json=GOOD)
        assert resp.status_code == 503 and resp.json()["error"] == "ModelNotReadyError"


LABEL = {
    "transaction_id": "t-1",
    "card_id": "card-1",
    "merchant_id": "m-1",
    "is_fraud": True,
    "timestamp": "2026-01-10T12:00:00+01:00",
    "labelled_at": "2026-01-17T09:30:00Z",
    "source": "chargeback",
}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**LABEL, "is_fraud": 1}, "is_fraud"),  # a JSON boolean, not 0/1
        ({**LABEL, "is_fraud": "yes"}, "is_fraud"),
        ({**LABEL, "source": "rumour"}, "source"),
        ({**LABEL, "labelled_at": "2026-01-17T09:30:00"}, "labelled_at"),  # no zone
        ({**LABEL, "timestamp": 1768042800}, "timestamp"),
        ({**LABEL, "card_id": "has space"}, "card_id"),
        ({k: v for k, v in LABEL.items() if k != "merchant_id"}, "merchant_id"),
    ],
)
def test_feedback_invalid_labels_get_422_naming_the_field(client: TestClient, body: dict, field: str) -> None:
    resp = client.post("/feedback", json=body)
    assert resp.status_code == 422, resp.text
    assert field in {err["loc"][-1] for err in resp.json()["detail"]}


def test_feedback_label_known_before_its_transaction_is_a_422(client: TestClient) -> None:
    resp = client.post("/feedback", json={**LABEL, "labelled_at": "2026-01-10T10:59:59Z"})  # 1 s before
    assert resp.status_code == 422
    assert "labelled_at is before" in resp.text
    metrics = client.get("/metrics").text
    assert 'fraud_api_requests_total{method="POST",route="/feedback",status="422"} 1.0' in metrics
    assert "/feedback" in client.get("/openapi.json").json()["paths"]


def test_feedback_without_a_broker_is_a_503_after_the_timeout(model_dir: Path) -> None:
    settings = ApiSettings(
        auth_disabled=True,
        model_dir=model_dir,
        card_state_source="worker",
        state_token="state-token",  # noqa: S106 - test value
        worker_url="http://127.0.0.1:9",
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",  # nothing listens there
        feedback_timeout_seconds=0.5,
    )
    start = time.monotonic()
    with TestClient(create_api(settings)) as c, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(c.post, "/feedback", json=LABEL)
        time.sleep(0.15)
        # The event loop keeps serving while the label waits for its ack.
        probe = time.monotonic()
        assert c.get("/health").status_code == 200
        assert time.monotonic() - probe < 0.2
        assert not pending.done()
        resp = pending.result(timeout=10)
        took = time.monotonic() - start
        assert resp.status_code == 503, resp.text
        body = resp.json()
        assert body["error"] == "UpstreamUnavailableError"
        assert body["detail"].startswith("the broker did not acknowledge the label within 0.5 s")
        assert 0.4 < took < 3.0
        metrics = c.get("/metrics").text
        assert 'fraud_api_requests_total{method="POST",route="/feedback",status="503"} 1.0' in metrics
    assert time.monotonic() - start < 10.0  # shutdown flushes and stops the producer promptly


def test_the_worker_source_needs_a_state_token(model_dir: Path) -> None:
    from model.errors import ConfigurationError

    settings = ApiSettings(auth_disabled=True, model_dir=model_dir, card_state_source="worker")
    with pytest.raises(ConfigurationError, match="needs FRAUD_STATE_TOKEN"):
        create_api(settings)


def test_the_state_token_travels_as_a_bearer_header(model_dir: Path) -> None:
    """A real HTTP server stands in for the worker's state view and checks the header."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from streaming.scoring.state import empty_state

    seen: list[str | None] = []

    class StateView(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.headers.get("Authorization"))
            ok = self.headers.get("Authorization") == "Bearer right-token"
            body = json.dumps({"history": empty_state()} if ok else {"error": "no"}).encode()
            self.send_response(200 if ok else 403)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), StateView)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for token, expected in (("right-token", "empty"), ("wrong-token", "unavailable")):
            settings = ApiSettings(
                auth_disabled=True,
                model_dir=model_dir,
                card_state_source="worker",
                state_token=token,
                worker_url=f"http://127.0.0.1:{server.server_port}",
                kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
            )
            with TestClient(create_api(settings)) as c:
                resp = c.post("/predict", json=GOOD)
            assert resp.status_code == 200 and resp.json()["card_state"] == expected
            assert seen[-1] == f"Bearer {token}"
    finally:
        server.shutdown()


LABEL = {
    "transaction_id": "t-1",
    "card_id": "card-1",
    "merchant_id": "m-1",
    "is_fraud": True,
    "timestamp": "2026-01-10T12:00:00+01:00",
    "labelled_at": "2026-01-11T12:00:00+01:00",
    "source": "chargeback",
}


@pytest.mark.parametrize("route,body", [("/predict", GOOD), ("/feedback", LABEL)])
@pytest.mark.parametrize("version", ["1180591620717411303424", "-1180591620717411303424", "2", "true", "1.0", '"1"'])
def test_schema_version_other_than_1_is_a_422_never_a_500(
    client: TestClient, route: str, body: dict, version: str
) -> None:
    raw = json.dumps(body)[:-1] + f', "schema_version": {version}}}'
    resp = client.post(route, content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"][-1] == "schema_version"


@pytest.mark.parametrize("field,value", [("currency", "eur"), ("currency", "EU1"), ("country", "fr"), ("country", "F")])
def test_codes_are_uppercase_letters(client: TestClient, field: str, value: str) -> None:
    resp = client.post("/predict", json={**GOOD, field: value})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"][-1] == field
    assert client.post("/predict", json={**GOOD, "schema_version": 1, "country": "FR"}).status_code == 200


def test_a_list_value_breaking_the_entry_rules_is_a_422(client: TestClient) -> None:
    """Found by the OpenAPI fuzzing run: the path's value was validated only inside the handler."""
    resp = client.put("/admin/lists/allow/merchant/%F0%9D%95%8B%20x", json={"note": "n"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["path", "value"]
