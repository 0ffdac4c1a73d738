"""Who may call the API, how often, and with how much: API keys with scopes, a per-key rate
limit, a request body limit and a bound on requests in flight.

Keys are random tokens; the API holds only their SHA-256 (a key is high-entropy, so a fast hash
is enough, and a leaked configuration does not leak keys). A key list is one key per line,
``NAME SHA256 SCOPE[,SCOPE...]`` (``fraud keys create`` prints one), from ``FRAUD_API_KEYS`` or
the file ``FRAUD_API_KEYS_FILE`` (a mounted secret). Callers send ``Authorization: Bearer KEY``
or ``X-API-Key: KEY``. Without a key: 401; without the route's scope: 403. ``/health``,
``/ready`` and ``/metrics`` stay open (probes and scrapes; ``/metrics`` carries no data).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.errors import FraudStreamError, UserInputError

Scope_ = Literal["predict", "feedback", "admin", "console"]
SCOPES: tuple[Scope_, ...] = ("predict", "feedback", "admin", "console")
#: Every status the limits and authentication can answer, for the OpenAPI document.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid API key (send `Authorization: Bearer KEY` or `X-API-Key: KEY`)"},
    403: {"description": "The key lacks this route's scope"},
    413: {"description": "The request body is larger than FRAUD_MAX_BODY_BYTES"},
    429: {"description": "The key's rate limit is exceeded; retry after `Retry-After` seconds"},
    503: {"description": "Too many requests in flight (FRAUD_MAX_CONCURRENT_REQUESTS); retry shortly"},
}


class AuthError(FraudStreamError):
    status_code = 401
    headers: dict[str, str] = {"WWW-Authenticate": "Bearer"}


class ScopeError(FraudStreamError):
    status_code = 403


class RateLimitedError(FraudStreamError):
    status_code = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}


class KeyListError(UserInputError):
    """The configured key list cannot be used (the API does not start)."""


@dataclass(frozen=True)
class Identity:
    """The caller: the key's name (recorded as who made a change) and its scopes."""

    name: str
    scopes: frozenset[str]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh API key (256 bits, URL-safe)."""
    return "fsk_" + secrets.token_urlsafe(32)


def key_line(name: str, key: str, scopes: Iterable[str]) -> str:
    return f"{name} {hash_key(key)} {','.join(scopes)}"


def parse_keys(text: str) -> dict[str, Identity]:
    """Key hash -> identity, from a key list (blank lines and ``#`` comments ignored)."""
    keys: dict[str, Identity] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise KeyListError(f"key list line {number}: expected 'NAME SHA256 SCOPES', got {len(parts)} fields")
        name, digest, scopes = parts
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise KeyListError(f"key list line {number} ({name}): the second field must be a SHA-256 in hex")
        wanted = frozenset(scopes.split(","))
        unknown = wanted - set(SCOPES)
        if unknown:
            raise KeyListError(f"key list line {number} ({name}): unknown scope(s) {', '.join(sorted(unknown))}")
        keys[digest.lower()] = Identity(name, wanted)
    return keys


class KeyRing:
    """The accepted keys; looks a presented key up by its hash."""

    def __init__(self, keys: dict[str, Identity]) -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def identify(self, presented: str | None) -> Identity:
        if not presented:
            raise AuthError("an API key is required")
        digest = hash_key(presented)
        for known, identity in self._keys.items():
            if hmac.compare_digest(known, digest):
                return identity
        raise AuthError("unknown API key")


#: The console's session cookie: the key itself, HttpOnly and SameSite=Strict (so another site's
#: page cannot make the browser send it). Its path is the API's root: the console's pages write
#: through the API's own routes (``/admin`` for rules and lists), each checking the key's scopes.
CONSOLE_COOKIE = "fraudstream_console_key"


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("x-api-key") or request.cookies.get(CONSOLE_COOKIE)


class RateLimiter:
    """A token bucket per key: ``rate`` requests a second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str) -> None:
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.get(who, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            if tokens < 1.0:
                self._buckets[who] = (tokens, now)
                raise RateLimitedError(f"rate limit of {self.rate:g} requests/s exceeded", (1.0 - tokens) / self.rate)
            self._buckets[who] = (tokens - 1.0, now)


class Guard:
    """Authentication and rate limiting for a process: :meth:`require` makes a route's dependency."""

    #: The identity of every caller when authentication is disabled.
    ANONYMOUS = Identity("anonymous", frozenset(SCOPES))

    def __init__(self, keys: KeyRing | None, limiter: RateLimiter | None) -> None:
        #: None: authentication disabled (explicitly, FRAUD_AUTH_DISABLED=true).
        self.keys, self.limiter = keys, limiter

    def require(self, scope: Scope_) -> Callable[[Request], Coroutine[Any, Any, Identity]]:
        async def dependency(request: Request) -> Identity:
            identity = self.ANONYMOUS if self.keys is None else self.keys.identify(presented_key(request))
            if scope not in identity.scopes:
                raise ScopeError(f"this key may not use '{scope}' routes")
            if self.limiter is not None:
                self.limiter.take(identity.name)
            request.state.identity = identity  # who made a change (streaming.api.admin.actor)
            return identity

        dependency.__name__ = f"require_{scope}"
        return dependency


class Limits:
    """ASGI middleware: bodies over ``max_body_bytes`` get 413 (counted as they arrive, so a
    missing or false Content-Length does not get past it), and requests beyond
    ``max_concurrent`` in flight get 503 at once instead of queueing without bound. Probes are
    exempt from the concurrency bound."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_concurrent: int, exempt: Iterable[str] = ()) -> None:
        self.app, self.max_body_bytes, self.max_concurrent = app, max_body_bytes, max_concurrent
        self.exempt = frozenset(exempt)
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _reject(send, 413, f"request body over {self.max_body_bytes} bytes")
            return
        bounded = scope.get("path") not in self.exempt
        if bounded and self.in_flight >= self.max_concurrent:
            await _reject(send, 503, "too many requests in flight; retry shortly", {"Retry-After": "1"})
            return
        received = 0
        started = rejected = False

        async def counted_receive() -> Message:
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes and not rejected:
                    # Answer now and tell the app the client left: it stops reading, and whatever
                    # it answers to that is dropped below.
                    rejected = True
                    if not started:
                        await _reject(send, 413, f"request body over {self.max_body_bytes} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        if bounded:
            self.in_flight += 1
        try:
            await self.app(scope, counted_receive, tracked_send)
        finally:
            if bounded:
                self.in_flight -= 1


async def _reject(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = ('{"detail": "%s"}' % detail).encode()  # noqa: UP031 - detail is ours, no quotes in it
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


_LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>fraudstream console</title>
</head><body><main>
<h1>fraudstream console</h1><p>Sign in with an API key that has the <code>console</code> scope
(<code>fraud keys create NAME --scopes console,feedback,admin</code>).</p>
<form method="post" action="session"><label>API key <input name="key" type="password" autocomplete="off"
required></label> <button type="submit">Sign in</button></form></main></body></html>"""


def _cookie_path(request: Request) -> str:
    return request.scope.get("root_path", "") + "/"


class LoginBody(BaseModel):
    key: str = Field(min_length=1, max_length=200)


def console_login_router(guard: Guard) -> APIRouter:
    """``/console/login``, ``/console/session`` and ``/console/logout``: a key typed once becomes the
    console's cookie, until the analyst signs out."""
    router = APIRouter(prefix="/console", include_in_schema=False)

    @router.get("/login")
    async def login() -> HTMLResponse:
        return HTMLResponse(_LOGIN_PAGE, headers={"Content-Security-Policy": "default-src 'self'"})

    @router.post("/session")
    async def session(request: Request) -> Response:
        raw = await request.body()
        fields = dict(parse_qsl(raw.decode(errors="replace"))) if raw else {}
        body = LoginBody.model_validate(fields)
        if guard.keys is not None:
            identity = guard.keys.identify(body.key)
            if "console" not in identity.scopes:
                raise ScopeError("this key may not use the console")
        response = RedirectResponse("live", status_code=303)
        secure = request.url.scheme == "https"
        response.set_cookie(
            CONSOLE_COOKIE, body.key, httponly=True, samesite="strict", secure=secure, path=_cookie_path(request)
        )
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        response = RedirectResponse("login", status_code=303)
        response.delete_cookie(CONSOLE_COOKIE, path=_cookie_path(request), httponly=True, samesite="strict")
        return response

    return router
