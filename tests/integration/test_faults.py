"""Faults on a real broker: the worker killed, cut off the broker, and flooded with
bad messages. Each test prints its figures (sent, decided, lost, duplicated) as a FAULT line."""

from __future__ import annotations

import random
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pandas as pd
import pytest

from model.schemas import MAX_MESSAGE_BYTES
from streaming.kafka.broker import EmbeddedBroker, free_port
from streaming.settings import WorkerSettings
from tests.integration.conftest import Service, Stack, consume, make_topics
from tests.integration.faults import (
    CuttableProxy,
    Feeder,
    Watcher,
    changed_fields,
    start_worker,
    tally,
    without_scored_at,
)
from tests.integration.test_pipeline import wire_messages

pytestmark = pytest.mark.integration

BATCH_SIZE = WorkerSettings().batch_size


def assert_duplicates_identical(by_id: dict[str, list[bytes]]) -> None:
    differing: dict[str, int] = {}
    for values in by_id.values():
        first = without_scored_at(values[0])
        for again in values[1:]:
            if without_scored_at(again) != first:
                for name in changed_fields(orjson.loads(values[0]), orjson.loads(again)):
                    differing[name] = differing.get(name, 0) + 1
    assert not differing, f"redelivered decisions differ from the first in: {differing}"


@pytest.fixture
def one_partition_stack(bootstrap_servers: str, model_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    """One partition: merchant counts then come from this partition alone, so a redelivered
    decision sees the counts its first decision saw. (With several, the merchant windows read
    other partitions' counts as of when the decision is made; this test's event time runs a day
    every ten seconds, so a replay seconds later can see a fuller previous day.)"""
    stack = Stack(topics=make_topics(bootstrap_servers, partitions=1), model_dir=model_dir, workdir=tmp_path)
    try:
        yield stack
    finally:
        stack.stop_all()


def test_worker_killed_twice_mid_stream(one_partition_stack: Stack, traffic_frame: pd.DataFrame) -> None:
    stack = one_partition_stack
    rows = traffic_frame
    settings = stack.topics.settings
    worker = start_worker(stack)
    with Watcher(settings, stack.topics.decisions) as decisions:
        feeder = Feeder(settings, wire_messages(rows), rate=30).start()
        for kill in (1, 2):
            # Mid-stream: some decided since the last (re)start, more still coming.
            decisions.wait_for(decisions.distinct() + 150, timeout=60, alive=worker)
            worker.stop(signal.SIGKILL)
            assert worker.proc is not None and worker.proc.returncode == -signal.SIGKILL
            assert feeder.sent < len(rows), f"kill {kill} came after the feeder finished"
            worker = start_worker(stack)
        feeder.join()
        decisions.wait_for(len(rows), timeout=120, alive=worker)
        time.sleep(2)  # redeliveries written just after the last first decision are counted too
        figures, by_id = tally("kill -9 x2", rows["transaction_id"], decisions.snapshot())

    assert figures.lost == 0
    # At-least-once: what was decided but not yet committed at a kill is decided again, each time
    # the same decision (scored_at aside). Not one batch at most: acknowledged offsets wait for
    # Faust's commit interval (2.8 s), so a worker catching up a backlog when killed repeats every
    # batch acknowledged since the last commit and the one in flight (measured: 984 and 1,215
    # over two kills). Bounded here by three batches a kill.
    assert figures.duplicated <= 2 * 3 * BATCH_SIZE
    assert_duplicates_identical(by_id)


@pytest.fixture
def proxied_stack(model_dir: Path, tmp_path: Path) -> Iterator[tuple[Stack, CuttableProxy]]:
    """A broker of its own that advertises a proxy in front of it: every client, the worker's
    included, reaches it through the proxy (clients connect to the advertised address)."""
    broker_port = free_port()
    with CuttableProxy(broker_port) as proxy, EmbeddedBroker(broker_port, advertised_port=proxy.port):
        stack = Stack(topics=make_topics(f"127.0.0.1:{proxy.port}"), model_dir=model_dir, workdir=tmp_path)
        try:
            yield stack, proxy
        finally:
            stack.stop_all()


def test_worker_cut_off_the_broker_for_20_seconds(
    proxied_stack: tuple[Stack, CuttableProxy], traffic_frame: pd.DataFrame
) -> None:
    stack, proxy = proxied_stack
    rows = traffic_frame
    settings = stack.topics.settings
    worker = start_worker(stack)
    assert worker.proc is not None
    with Watcher(settings, stack.topics.decisions) as decisions:
        feeder = Feeder(settings, wire_messages(rows), rate=50).start()
        decisions.wait_for(300, timeout=60, alive=worker)
        closed = proxy.cut(worker.proc.pid)
        at_cut = decisions.distinct()
        time.sleep(20)
        during = decisions.distinct() - at_cut
        sent_during = feeder.sent
        proxy.restore()
        assert worker.proc.poll() is None, f"the worker died while cut off:\n{worker.log()}"
        feeder.join()
        decisions.wait_for(len(rows), timeout=120, alive=worker)
        time.sleep(2)
        figures, by_id = tally("broker cut 20 s", rows["transaction_id"], decisions.snapshot())
        print(f"  cut closed {closed} connections, refused {proxy.refused} reconnects; {during} decided while cut")  # noqa: T201

    assert closed > 0 and proxy.refused > 0  # the worker really was cut off, and tried again
    assert during <= BATCH_SIZE  # nothing but what was in flight got through the cut
    assert sent_during > at_cut + 500  # the stream went on meanwhile: there was a backlog to catch up
    assert figures.lost == 0
    assert worker.proc.poll() is None
    assert_duplicates_identical(by_id)


def fuzzed_bad_messages(base: dict, count: int, seed: int = 7) -> list[tuple[bytes | None, bytes, str | None]]:
    """``count`` invalid transactions, each unique, with the dead-letter reason each must get
    (None: a mix whose reason depends on which check fails first)."""
    rng = random.Random(seed)  # noqa: S311 - test data
    card = base["card_id"].encode()
    out: list[tuple[bytes | None, bytes, str | None]] = []
    invalid_values: list[tuple[str, object]] = [
        ("amount", -1.5),
        ("amount", 0),
        ("amount", "12.00"),
        ("amount", 1e12),
        ("amount", None),
        ("timestamp", 1767225600),
        ("timestamp", "2026-02-01T00:00:00"),
        ("timestamp", "yesterday"),
        ("channel", "carrier-pigeon"),
        ("currency", "EURO"),
        ("country", "FRA"),
        ("card_id", ""),
        ("merchant_id", "m" * 200),
        ("merchant_category", ["grocery"]),
    ]
    for n in range(count):
        tid = f"fuzz-{n}"
        kind = n % 8
        if kind == 0:
            value, reason = b"\xff" + rng.randbytes(rng.randint(0, 64)) + str(n).encode(), "not_json"
        elif kind == 1:
            whole = orjson.dumps({**base, "transaction_id": tid})
            value, reason = whole[: rng.randint(1, len(whole) - 1)] + b"\x00" + str(n).encode(), "not_json"
        elif kind == 2:
            value, reason = orjson.dumps(rng.choice([[n], n, f"s{n}", [tid, None]])), "not_an_object"
        elif kind == 3:
            dropped = rng.sample(["transaction_id", "timestamp", "card_id", "merchant_id", "amount", "currency"], 2)
            value = orjson.dumps({**{k: v for k, v in base.items() if k not in dropped}, "fuzz": n})
            reason = "missing_field"
        elif kind == 4:
            name, bad = invalid_values[n // 8 % len(invalid_values)]
            value, reason = orjson.dumps({**base, "transaction_id": tid, name: bad}), "invalid_field"
        elif kind == 5:
            pad = "x" * (MAX_MESSAGE_BYTES + rng.randint(1, 100))
            value, reason = orjson.dumps({**base, "transaction_id": tid, "pad": pad}), "oversized"
        elif kind == 6:
            out.append((f"other-{n}".encode(), orjson.dumps({**base, "transaction_id": tid}), "key_mismatch"))
            continue
        else:
            future = {**base, "transaction_id": tid, "timestamp": "2099-01-01T00:00:00+00:00"}
            value, reason = orjson.dumps(future), "implausible_timestamp"
        out.append((card, value, reason))
    return out


def wait_deciding(worker: Service, timeout: float = 90.0) -> None:
    """Until ``worker`` has published decisions of its own (its fraud_decisions_total)."""
    url = f"http://127.0.0.1:{worker.env['FRAUD_METRICS_PORT']}/metrics"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(url, timeout=5).text
        if any(line.startswith("fraud_decisions_total{") and float(line.split()[-1]) > 0 for line in text.splitlines()):
            return
        time.sleep(0.3)
    raise AssertionError(f"{worker.name} decided nothing in {timeout:.0f} s:\n{worker.log()}")


def dead_letter_counts(stack: Stack) -> Counter[str]:
    text = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5).text
    found = re.findall(r'^fraud_dead_letters_total\{reason="([a-z_]+)"\} ([0-9.e+]+)$', text, re.MULTILINE)
    return Counter({reason: int(float(n)) for reason, n in found if float(n) > 0})


def test_ten_thousand_fuzzed_bad_messages_among_good_ones(stack: Stack, traffic_frame: pd.DataFrame) -> None:
    good = wire_messages(traffic_frame.iloc[:2000])
    bad = fuzzed_bad_messages(orjson.loads(good[0][1]), 10_000)
    assert len({v for _, v, _ in bad}) == len(bad)
    rng = random.Random(11)  # noqa: S311 - test data
    mixed: list[tuple[bytes | None, bytes]] = [(k, v) for k, v, _ in bad]
    # Good ones spread among the bad, each in its own card's order.
    slots = sorted(rng.sample(range(len(mixed) + len(good)), len(good)))
    for slot, message in zip(slots, good, strict=True):
        mixed.insert(slot, message)
    settings = stack.topics.settings
    worker = start_worker(stack)
    expected = Counter(reason for _, _, reason in bad)
    with Watcher(settings, stack.topics.decisions) as decisions:
        Feeder(settings, mixed, rate=5000).start().join()
        # The worker's own count of what it dead-lettered, by reason: every bad one, once.
        deadline = time.monotonic() + 180
        while dead_letter_counts(stack) != expected and time.monotonic() < deadline:
            assert worker.proc is not None and worker.proc.poll() is None, f"worker died:\n{worker.log()}"
            time.sleep(0.5)
        assert dead_letter_counts(stack) == expected
        decisions.wait_for(len(good), timeout=120, alive=worker)
        time.sleep(2)
        figures, by_id = tally("10k fuzzed", [orjson.loads(v)["transaction_id"] for _, v in good], decisions.snapshot())
    dead_letters = consume(settings, stack.topics.dlq, until=len(bad), timeout=180)
    print(f"  dead-lettered {len(dead_letters)} of {len(bad)} bad messages: {dict(expected)}")  # noqa: T201

    assert worker.proc is not None and worker.proc.poll() is None
    assert figures.lost == 0 and figures.duplicated == 0
    assert set(by_id) == {orjson.loads(v)["transaction_id"] for _, v in good}  # no bad one decided
    assert len(dead_letters) == len(bad)
    reasons = {value: dict(headers)["error.reason"].decode() for _, value, headers in dead_letters}
    assert set(reasons) == {v for _, v, _ in bad}  # each bad message, byte for byte, once
    for _, value, reason in bad:
        assert reasons[value] == reason, (value[:120], reasons[value])
