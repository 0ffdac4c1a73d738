"""Fault machinery for the integration tests: a paced feeder, a decision watcher, a TCP proxy
that can cut one process off the broker, extra worker processes, and the figures each fault
test reports (sent, decided, lost, duplicated)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import TopicPartition

from streaming.kafka import clients as kafka
from streaming.kafka.broker import free_port
from streaming.settings import KafkaSettings
from tests.integration.conftest import Service, Stack

Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]

_SCORED_AT = re.compile(rb'"scored_at":"[^"]*"')


class Feeder:
    """Produces ``messages`` at about ``rate`` a second from a thread, so faults land mid-stream."""

    def __init__(self, settings: KafkaSettings, messages: Sequence[tuple[bytes | None, bytes]], rate: float) -> None:
        self.settings = settings
        self.messages = messages
        self.rate = rate
        self.sent = 0
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        # Delivery waits out a broker cut: librdkafka retries until message.timeout.ms.
        producer = kafka.producer(self.settings, **{"message.timeout.ms": 120_000})
        started = time.monotonic()
        for i, (key, value) in enumerate(self.messages):
            ahead = started + i / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            producer.produce(
                self.settings.transactions_topic,
                key=key,
                value=value,
                on_delivery=lambda err, _m: self.errors.append(str(err)) if err else None,
            )
            producer.poll(0)
            self.sent = i + 1
        remaining = producer.flush(150)
        if remaining:
            self.errors.append(f"{remaining} messages not delivered")

    def join(self, timeout: float = 180.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the feeder did not finish"
        assert not self.errors, self.errors[:5]


class Watcher:
    """Reads a topic from the beginning in a thread and keeps every record, for progress checks
    while a fault is under way and for the final count."""

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.records: list[Record] = []
        self.ids: set[str] = set()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{topic}", daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        consumer = kafka.consumer(self.settings, f"watch-{uuid.uuid4().hex[:8]}")
        try:
            meta = consumer.list_topics(self.topic, timeout=30)
            consumer.assign([TopicPartition(self.topic, p, 0) for p in meta.topics[self.topic].partitions])
            while not self._stop.is_set():
                for msg in consumer.consume(500, 0.3):
                    if msg.error() is not None:
                        self.errors.append(str(msg.error()))
                        continue
                    value = msg.value() or b""
                    with self._lock:
                        self.records.append((msg.key(), value, list(msg.headers() or [])))
                        with contextlib.suppress(orjson.JSONDecodeError):
                            self.ids.add(orjson.loads(value).get("transaction_id", ""))
        finally:
            consumer.close()

    def distinct(self) -> int:
        with self._lock:
            return len(self.ids)

    def wait_for(self, distinct: int, timeout: float, alive: Service | None = None) -> None:
        """Wait for ``distinct`` different transaction ids (or records, for dead letters)."""
        deadline = time.monotonic() + timeout
        while self.distinct() < distinct and time.monotonic() < deadline:
            if alive is not None:
                assert alive.proc is not None and alive.proc.poll() is None, f"{alive.name} died:\n{alive.log()}"
            time.sleep(0.2)
        assert self.distinct() >= distinct, f"{self.distinct()} of {distinct} on {self.topic} after {timeout:.0f} s"

    def wait_records(self, count: int, timeout: float, alive: Service | None = None) -> None:
        deadline = time.monotonic() + timeout
        while len(self.snapshot()) < count and time.monotonic() < deadline:
            if alive is not None:
                assert alive.proc is not None and alive.proc.poll() is None, f"{alive.name} died:\n{alive.log()}"
            time.sleep(0.2)
        assert len(self.snapshot()) >= count, (
            f"{len(self.snapshot())} of {count} records on {self.topic}; consumer errors: {self.errors[-3:]}"
        )

    def snapshot(self) -> list[Record]:
        with self._lock:
            return list(self.records)


@dataclass
class Figures:
    """What a fault test reports: every transaction sent, decided, lost or decided again."""

    name: str
    sent: int
    decided: int
    lost: int
    duplicated: int

    def line(self) -> str:
        return f"FAULT {self.name}: sent={self.sent} decided={self.decided} lost={self.lost} dup={self.duplicated}"


def tally(name: str, sent_ids: Iterable[str], decisions: Sequence[Record]) -> tuple[Figures, dict[str, list[bytes]]]:
    """Figures for ``decisions`` against the ids sent, and every decision's bytes by id."""
    by_id: dict[str, list[bytes]] = {}
    for _, value, _ in decisions:
        by_id.setdefault(orjson.loads(value)["transaction_id"], []).append(value)
    sent = set(sent_ids)
    figures = Figures(
        name=name,
        sent=len(sent),
        decided=len(sent & set(by_id)),
        lost=len(sent - set(by_id)),
        duplicated=sum(len(v) - 1 for v in by_id.values()),
    )
    print(figures.line())  # noqa: T201 - the figures are the test's report
    return figures, by_id


def without_scored_at(value: bytes) -> bytes:
    """A decision's bytes with ``scored_at`` blanked: a redelivered decision must equal the first."""
    blanked, n = _SCORED_AT.subn(b'"scored_at":""', value)
    assert n == 1, value[:200]
    return blanked


def changed_fields(first: dict, again: dict, prefix: str = "") -> list[str]:
    """Names of the fields (``features.x`` for nested ones) two decisions differ in, scored_at aside."""
    out: list[str] = []
    for name in sorted(set(first) | set(again)):
        a, b = first.get(name), again.get(name)
        if name == "scored_at" or a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_fields(a, b, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def extra_worker(stack: Stack, name: str, **env: str | None) -> tuple[Service, int]:
    """Another worker process in the stack's group: its own ports and data dir, ``env`` on top
    (None: unset). Returns the service (not yet started) and its web port."""
    web_port = free_port()
    full = {
        **stack.env(),
        "FRAUD_WEB_PORT": str(web_port),
        "FRAUD_METRICS_PORT": str(free_port()),
        "FRAUD_DATA_DIR": str(stack.workdir / f"{name}-data"),
        **env,
    }
    return Service("worker", {k: v for k, v in full.items() if v is not None}, stack.workdir / f"{name}.log"), web_port


#: A worker's start (model load, group join, state recovery) takes 10-20 s alone, longer when the
#: CPU is shared; failover after a kill -9 waits out the session timeout as well.
START_TIMEOUT = 150.0


def start_service(stack: Stack, service: Service, web_port: int) -> Service:
    service.start()
    stack.services.append(service.child)  # type: ignore[arg-type]  # started just above
    service.wait_http(f"http://127.0.0.1:{web_port}/ready", timeout=START_TIMEOUT)
    return service


def start_worker(stack: Stack) -> Service:
    """The stack's own worker (its ports), given longer to start than conftest's default."""
    return start_service(stack, Service("worker", stack.env(), stack.workdir / "worker.log"), stack.web_port)


# --- a TCP proxy that can cut one process's connections ------------------------------------


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir() if fd_dir.exists() else ():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def local_ports(pid: int) -> set[int]:
    """Local TCP ports of the sockets process ``pid`` holds (from /proc: Linux only)."""
    inodes = _socket_inodes(pid)
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh)
            for line in fh:
                cols = line.split()
                if cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


class CuttableProxy:
    """Forwards loopback connections on ``port`` to ``target``; :meth:`cut` drops a process's
    connections (open ones closed, new ones refused) until :meth:`restore`, as a network
    partition between that process and the broker would, while other clients go on."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.cut_pid: int | None = None
        self.refused = 0
        self._conns: list[tuple[int, asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="proxy", daemon=True)

    def __enter__(self) -> CuttableProxy:
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    def _is_cut(self, peer_port: int) -> bool:
        return self.cut_pid is not None and peer_port in local_ports(self.cut_pid)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_port = int(writer.get_extra_info("peername")[1])
        if self._is_cut(peer_port):
            self.refused += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        entry = (peer_port, writer, up_writer)
        self._conns.append(entry)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            self._conns.remove(entry)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def cut(self, pid: int) -> int:
        """Cut process ``pid`` off; returns how many of its open connections were closed."""
        done = threading.Event()
        closed = [0]

        def _cut() -> None:
            self.cut_pid = pid
            ports = local_ports(pid)
            for peer_port, client, upstream in list(self._conns):
                if peer_port in ports:
                    client.transport.abort()
                    upstream.transport.abort()
                    closed[0] += 1
            done.set()

        self._loop.call_soon_threadsafe(_cut)
        assert done.wait(10)
        return closed[0]

    def restore(self) -> None:
        self._loop.call_soon_threadsafe(lambda: setattr(self, "cut_pid", None))


def listening_hosts(port: int) -> set[str]:
    """Addresses a TCP listener on ``port`` is bound to (from /proc/net/tcp; IPv4 only)."""
    hosts: set[str] = set()
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            cols = line.split()
            addr, hex_port = cols[1].split(":")
            if int(hex_port, 16) == port and cols[3] == "0A":  # 0A: LISTEN
                hosts.add(".".join(str(b) for b in reversed(bytes.fromhex(addr))))
    return hosts
