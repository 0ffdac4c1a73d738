"""``python -m benchmarks http``: the HTTP load driver of ``fraud bench``, in its own process.

Closed-loop users post transaction bodies to each target at each concurrency in turn and
report throughput, latency percentiles and what the client itself cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np

Post = Callable[[bytes], Awaitable[tuple[int, bytes]]]


@contextlib.asynccontextmanager
async def _client(kind: str, url: str, concurrency: int) -> AsyncIterator[Post]:
    """A keep-alive connection pool of ``concurrency`` connections posting JSON to ``url``.

    httpx costs the client 1-2 ms of CPU per request (more at c=16 than at
    c=1), so on two cores it cannot push a fast server past ~600 req/s; aiohttp (installed with
    Faust) costs 0.15-0.25 ms and agreed with wrk within ~10% at c=16 on the no-op route. The
    ``client_busy`` figures in the report say when the client, not the server, was the limit.
    """
    headers = {"content-type": "application/json"}
    if kind == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:

            async def post_aiohttp(body: bytes) -> tuple[int, bytes]:
                async with session.post(url, data=body) as resp:
                    return resp.status, await resp.read()

            yield post_aiohttp
        return
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10.0, headers=headers) as client:

        async def post_httpx(body: bytes) -> tuple[int, bytes]:
            resp = await client.post(url, content=body)
            return resp.status_code, resp.content

        yield post_httpx


async def _drive(
    kind: str, url: str, bodies: list[bytes], concurrency: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """``concurrency`` closed-loop users posting for ``warmup`` + ``seconds``; only requests
    started after the warm-up count."""
    latencies: list[float] = []
    errors = unavailable = issued = 0
    counter = iter(range(1 << 62))
    cpu0 = time.process_time()
    record_from = time.perf_counter() + warmup
    end = record_from + seconds
    last_done = record_from
    async with _client(kind, url, concurrency) as post:

        async def user() -> None:
            nonlocal errors, unavailable, issued, last_done
            while (t0 := time.perf_counter()) < end:
                issued += 1
                try:
                    status, content = await post(bodies[next(counter) % len(bodies)])
                except Exception:  # connection errors and timeouts of either client: counted below
                    errors += t0 >= record_from
                    continue
                t1 = time.perf_counter()
                if t0 < record_from:
                    continue
                if status != 200:
                    errors += 1
                    continue
                latencies.append(t1 - t0)
                last_done = max(last_done, t1)
                # /predict answers statelessly when the worker's state view is too slow.
                unavailable += b'"card_state":"unavailable"' in content

        await asyncio.gather(*(user() for _ in range(concurrency)))
    lat_ms = np.array(latencies) * 1000
    return {
        "rps": len(latencies) / max(last_done - record_from, 1e-9),
        "p50_ms": float(np.percentile(lat_ms, 50)) if len(lat_ms) else math.nan,
        "p99_ms": float(np.percentile(lat_ms, 99)) if len(lat_ms) else math.nan,
        "requests": len(latencies),
        "errors": errors,
        "state_unavailable": unavailable,
        # The client shares the machine with the servers: its own cost bounds what it can measure.
        "client_cpu_us_per_req": (time.process_time() - cpu0) / max(issued, 1) * 1e6,
    }


def role_http(args: argparse.Namespace) -> dict[str, Any]:
    """Each target at each concurrency in turn, for a fixed duration after a warm-up."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    bodies = args.bodies.read_bytes().splitlines()
    results: dict[str, Any] = {}
    for concurrency in args.concurrency:
        for target in args.target:
            name, url = target.split("=", 1)
            run = _drive(args.client, url, bodies, concurrency, args.seconds, args.warmup)
            results[f"{name}_c{concurrency}"] = asyncio.run(run)
    return results
