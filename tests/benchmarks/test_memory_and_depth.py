"""The bench's depth helpers and the memory measurement, on small generated inputs."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from benchmarks.measure import first_after, history_depth
from benchmarks.memory import build_cards, build_risk, measure_one
from streaming.scoring.state import CardStateCopy


def _rows(cards: int, days: int) -> list[dict[str, object]]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    # One transaction per card per day, in time order, stamped in another time zone than UTC.
    return [
        {
            "card_id": f"c{c}",
            "timestamp": (start + timedelta(days=d, minutes=c))
            .astimezone(datetime.now().astimezone().tzinfo)
            .isoformat(),
        }
        for d in range(days)
        for c in range(cards)
    ]


def test_first_after_finds_the_first_row_that_many_days_in() -> None:
    rows = _rows(cards=3, days=40)
    at = first_after(rows, 30.0)
    assert at == 3 * 30  # day 30's first row: exactly 30 days after the first one
    assert first_after(rows, 0.0) == 0
    assert first_after(rows, 100.0) == len(rows)


def test_history_depth_counts_the_cards_window() -> None:
    rows = _rows(cards=3, days=40)
    cards, mean, days = history_depth(rows, 3 * 35, span_days=30.0)
    assert cards == 3
    assert mean == 30  # days 5-34: the 30 days before day 35's first row, one a day each
    assert days == 35


def test_risk_entries_are_merchants_days_and_partitions() -> None:
    risk, entries = build_risk(5 * 33 * 4, days=33, partitions=4)
    assert entries == 5 * 33 * 4
    assert risk.size() == (entries, 0)


def test_card_copy_holds_month_states_by_card() -> None:
    copy, entries = build_cards(50, history=20.0, worker=False)
    assert isinstance(copy, CardStateCopy)
    assert len(copy) == entries == 50
    # Poisson(20) entries per card: mean over 50 cards well within 15-25.
    lengths = [len(copy.get(card)["ts"]) for card in list(copy._values)]  # noqa: SLF001 - the test reads what was built
    assert 15 < sum(lengths) / len(lengths) < 25
    assert all(states == sorted(states) for states in (copy.get(card)["ts"] for card in list(copy._values)))  # noqa: SLF001


def test_measure_one_reports_bytes_per_entry() -> None:
    args = argparse.Namespace(days=33, partitions=8, history=10.0)
    heap = measure_one("risk", 2 * 33 * 8, "heap", args)
    assert heap["entries"] == 2 * 33 * 8
    # A dict slot, a tuple key and an int at the very least; far less than a kilobyte.
    assert 50 < heap["bytes_per_entry"] < 1000
    copy, _ = build_cards(20, history=10.0, worker=False)
    assert isinstance(copy, CardStateCopy)
    api = measure_one("cards", 20, "heap", args)
    # The same seed builds the same states: their value bytes are part of what is counted.
    assert api["entries"] == 20
    assert api["bytes_per_entry"] > copy.stored_bytes / len(copy)
    assert measure_one("cards-worker", 20, "heap", args)["bytes_per_entry"] > copy.stored_bytes / len(copy)
