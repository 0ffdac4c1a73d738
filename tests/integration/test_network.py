"""The network surface: listeners bind to loopback by default, and the worker's card state
view answers only holders of the state token."""

from __future__ import annotations

import httpx
import pandas as pd
import pytest

from tests.integration.conftest import Service, Stack, consume, produce
from tests.integration.faults import extra_worker, listening_hosts, start_service
from tests.integration.test_pipeline import wire_messages

pytestmark = pytest.mark.integration


def test_worker_listens_on_loopback_and_guards_card_state(stack: Stack, traffic_frame: pd.DataFrame) -> None:
    rows = traffic_frame.iloc[:50]
    stack.start_worker()
    produce(stack.topics.settings, wire_messages(rows))
    consume(stack.topics.settings, stack.topics.decisions, until=len(rows))

    # Defaults: the Prometheus server (FRAUD_METRICS_BIND) and the web server on 127.0.0.1 only.
    assert listening_hosts(stack.metrics_port) == {"127.0.0.1"}
    assert listening_hosts(stack.web_port) == {"127.0.0.1"}

    url = f"http://127.0.0.1:{stack.web_port}/cards/history"
    card = {"card_id": str(rows.iloc[0]["card_id"])}
    assert httpx.get(url, params=card).status_code == 403
    wrong = httpx.get(url, params=card, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403 and "state token" in wrong.json()["error"]
    ok = httpx.get(url, params=card, headers={"Authorization": "Bearer test-state-token"})
    assert ok.status_code == 200 and ok.json()["history"]["ids"]
    # Faust's own table and router views are off: no way round the token.
    base = f"http://127.0.0.1:{stack.web_port}"
    for path in (f"/table/card-history/{card['card_id']}/", "/table/", "/router/", "/router/card-history/"):
        assert httpx.get(base + path).status_code == 404, path
    # Probes stay open.
    assert httpx.get(f"http://127.0.0.1:{stack.web_port}/health").status_code == 200


def test_worker_without_a_state_token_refuses_every_state_request(stack: Stack) -> None:
    worker, web_port = extra_worker(stack, "tokenless", FRAUD_STATE_TOKEN=None)
    start_service(stack, worker, web_port)
    url = f"http://127.0.0.1:{web_port}/cards/history"
    for headers in ({}, {"Authorization": "Bearer x"}, {"Authorization": "Bearer test-state-token"}):
        resp = httpx.get(url, params={"card_id": "c1"}, headers=headers)
        assert resp.status_code == 403
        assert "FRAUD_STATE_TOKEN" in resp.json()["error"]


def test_api_with_the_worker_source_refuses_to_start_without_a_state_token(stack: Stack) -> None:
    stack.card_state_source = "worker"
    env = {k: v for k, v in stack.env().items() if k != "FRAUD_STATE_TOKEN"}
    api = Service("api", env, stack.workdir / "api.log").start()
    assert api.proc is not None
    assert api.proc.wait(60) == 2
    assert "FRAUD_CARD_STATE_SOURCE=worker needs FRAUD_STATE_TOKEN" in api.log()
