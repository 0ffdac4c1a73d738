"""API keys, scopes, limits and the documented statuses, on the real app (no broker needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from streaming.api.app import create_api
from streaming.api.security import KeyListError, Limits, RateLimitedError, RateLimiter, key_line, new_key, parse_keys
from streaming.children import free_port
from streaming.settings import ApiSettings

GOOD = {
    "transaction_id": "t-1",
    "timestamp": "2026-02-01T10:00:00+00:00",
    "card_id": "card-1",
    "merchant_id": "m-1",
    "amount": 42.5,
    "currency": "USD",
}
PREDICTOR, ADMIN = new_key(), new_key()
KEYS = "\n".join(["# callers", key_line("shop", PREDICTOR, ["predict"]), key_line("ops", ADMIN, ["admin", "feedback"])])


@pytest.fixture(scope="module")
def model_dir(small_model_dir: Path) -> Path:
    return small_model_dir


def settings_for(model_dir: Path, **extra: object) -> ApiSettings:
    base: dict[str, object] = {
        "model_dir": model_dir,
        "card_state_source": "worker",
        "worker_url": "http://127.0.0.1:9",
        "state_token": "state-token",
        "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",
        "api_keys": KEYS,
    }
    return ApiSettings(**{**base, **extra})


@pytest.fixture
def client(model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_api(settings_for(model_dir))) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_and_scopes(client: TestClient) -> None:
    assert client.post("/predict", json=GOOD).status_code == 401
    assert client.post("/predict", json=GOOD).headers["www-authenticate"] == "Bearer"
    assert client.post("/predict", json=GOOD, headers=bearer("fsk_not-a-key")).status_code == 401
    assert client.post("/predict", json=GOOD, headers=bearer(PREDICTOR)).status_code == 200
    assert client.post("/predict", json=GOOD, headers={"X-API-Key": PREDICTOR}).status_code == 200
    # The scoring key may not administer, the admin key may not score.
    assert client.get("/admin/rules", headers=bearer(PREDICTOR)).status_code == 403
    assert client.post("/predict", json=GOOD, headers=bearer(ADMIN)).status_code == 403
    assert client.get("/admin/rules", headers=bearer(ADMIN)).status_code == 200
    # Probes and scrapes stay open.
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code in (200, 503)
    assert client.get("/metrics").status_code == 200


def test_the_api_refuses_to_start_without_keys(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyListError, match="FRAUD_AUTH_DISABLED"):
        create_api(settings_for(model_dir, api_keys=None))
    secret = tmp_path / "keys"
    secret.write_text(key_line("from-file", PREDICTOR, ["predict"]) + "\n")
    with TestClient(create_api(settings_for(model_dir, api_keys=None, api_keys_file=secret))) as c:
        assert c.post("/predict", json=GOOD, headers=bearer(PREDICTOR)).status_code == 200
    with TestClient(create_api(settings_for(model_dir, api_keys=None, auth_disabled=True))) as c:
        assert c.post("/predict", json=GOOD).status_code == 200


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("ops abc predict", "SHA-256"),
        (f"ops {'a' * 64} predict,root", "unknown scope(s) root"),
        ("ops predict", "expected 'NAME SHA256 SCOPES'"),
    ],
)
def test_bad_key_lists_are_refused_saying_where(text: str, says: str) -> None:
    with pytest.raises(KeyListError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_keys(text)


def test_rate_limit_per_key_with_retry_after(model_dir: Path) -> None:
    settings = settings_for(model_dir, rate_limit_per_second=0.5, rate_limit_burst=2)
    with TestClient(create_api(settings)) as c:
        codes = [c.post("/predict", json=GOOD, headers=bearer(PREDICTOR)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        limited = c.post("/predict", json=GOOD, headers=bearer(PREDICTOR))
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        # Another key has its own bucket.
        assert c.get("/admin/rules", headers=bearer(ADMIN)).status_code == 200


def test_the_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=1, clock=lambda: now[0])
    limiter.take("k")
    with pytest.raises(RateLimitedError) as limited:
        limiter.take("k")
    assert limited.value.headers["Retry-After"] == "1"
    now[0] = 0.5
    limiter.take("k")


def test_bodies_over_the_limit_get_413_before_they_are_parsed(client: TestClient) -> None:
    huge = b'{"transaction_id": "' + b"x" * 100_000 + b'"}'
    resp = client.post("/predict", content=huge, headers={**bearer(PREDICTOR), "content-type": "application/json"})
    assert resp.status_code == 413


def test_a_body_without_content_length_is_counted_as_it_arrives(model_dir: Path) -> None:
    app = create_api(settings_for(model_dir))

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"transaction_id": "'
        for _ in range(20):
            yield b"x" * 10_000

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post("/predict", content=chunks(), headers=bearer(PREDICTOR))

    assert asyncio.run(send()).status_code == 413


def test_requests_beyond_the_concurrency_bound_get_503() -> None:
    release = asyncio.Event()

    async def slow(scope: dict, receive: object, send: object) -> None:
        await release.wait()

    limits = Limits(slow, max_body_bytes=1024, max_concurrent=1)  # type: ignore[arg-type]  # a bare ASGI callable
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> None:
        scope = {"type": "http", "path": "/predict", "headers": []}
        first = asyncio.create_task(limits(scope, None, send))  # type: ignore[arg-type]  # unused by slow
        await asyncio.sleep(0)
        await limits(scope, None, send)  # type: ignore[arg-type]  # rejected before receive
        release.set()
        await first

    asyncio.run(run())
    assert sent[0]["status"] == 503 and (b"retry-after", b"1") in sent[0]["headers"]
    assert limits.in_flight == 0


def test_decision_only_answers(model_dir: Path) -> None:
    with TestClient(create_api(settings_for(model_dir, predict_decision_only=True))) as c:
        body = c.post("/predict", json=GOOD, headers=bearer(PREDICTOR)).json()
    assert body["decision"] in ("allow", "review", "block")
    assert "score" not in body and "reasons" not in body


def test_every_status_is_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, method in (("/predict", "post"), ("/feedback", "post"), ("/admin/rules", "get")):
        documented = set(paths[path][method]["responses"])
        assert {"401", "403", "413", "429", "503"} <= documented, (path, documented)
    assert {"400", "422"} <= set(paths["/predict"]["post"]["responses"])


def test_the_console_needs_a_console_key_kept_in_a_cookie(model_dir: Path) -> None:
    viewer = new_key()
    keys = KEYS + "\n" + key_line("analyst", viewer, ["console"])
    with TestClient(create_api(settings_for(model_dir, api_keys=keys))) as c:
        page = c.get("/console/live", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].endswith("/console/login")
        assert c.post("/console/session", data={"key": PREDICTOR}).status_code == 403
        signed_in = c.post("/console/session", data={"key": viewer}, follow_redirects=False)
        assert signed_in.status_code == 303
        cookie = signed_in.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/;" in cookie
        live = c.get("/console/live")
        assert live.status_code == 200 and '<b id="analyst">analyst</b>' in live.text
        # The cookie reaches the API's own routes, which check the key's scopes: no admin scope here.
        assert c.get("/admin/rules").status_code == 403
        signed_out = c.post("/console/logout", follow_redirects=False)
        assert signed_out.status_code == 303 and signed_out.headers["location"] == "login"
        assert c.get("/console/live", follow_redirects=False).status_code == 303


def test_a_console_key_with_the_admin_scope_reaches_the_admin_routes_and_no_others(model_dir: Path) -> None:
    lead = new_key()
    keys = KEYS + "\n" + key_line("ana.lyst", lead, ["console", "admin"])
    with TestClient(create_api(settings_for(model_dir, api_keys=keys))) as c:
        assert c.post("/console/session", data={"key": lead}, follow_redirects=False).status_code == 303
        assert c.get("/admin/rules").status_code == 200
        assert c.post("/predict", json={}).status_code == 403  # the cookie carries no predict scope
