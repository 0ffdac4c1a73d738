"""compute_features against a slow, obviously-correct reference, and the train/serve parity property."""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.dataset import load_csv
from model.features import (
    CANONICAL_COLUMNS,
    DEFAULT_LABEL_DELAY_DAYS,
    FEATURE_NAMES,
    HISTORY_COLUMNS,
    HISTORY_SPAN_MS,
    KNOWN_FRAUD_WINDOWS_DAYS,
    LABELLED_WINDOWS_DAYS,
    MAX_LABEL_DELAY_DAYS,
    MERCHANT_RISK_FEATURES,
    MERCHANT_SPAN_DAYS,
    MERCHANT_WINDOWS_DAYS,
    SMALL_FACTORIZE,
    RiskContext,
    compute_features,
    factorize,
    frame_from_transactions,
    history_from_frame,
    label_horizon_days,
    risk_context_from_frame,
    strings,
)
from model.schemas import CHANNELS, MERCHANT_CATEGORIES, Transaction
from streaming.scoring.state import history_frame, merge

HOUR = 3_600_000
DAY = 24 * HOUR
WINDOWS = {"1h": HOUR, "1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
OFFSETS = (
    timezone(timedelta(hours=5, minutes=30)),
    timezone(timedelta(hours=-8)),
    UTC,
    timezone(timedelta(hours=1)),
)
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


@dataclass(frozen=True)
class Row:
    tid: str
    card: str
    merchant: str
    when: datetime  # aware, in the offset the transaction was written with
    amount: float
    channel: str | None
    category: str | None

    @property
    def ts_ms(self) -> int:
        return (self.when - EPOCH) // timedelta(milliseconds=1)

    @property
    def iso(self) -> str:
        return self.when.isoformat(timespec="milliseconds")

    def transaction(self) -> Transaction:
        return Transaction.model_validate(
            {
                "transaction_id": self.tid,
                "timestamp": self.iso,
                "card_id": self.card,
                "merchant_id": self.merchant,
                "amount": self.amount,
                "currency": "EUR",
                "merchant_category": self.category,
                "channel": self.channel,
            }
        )


# ------------------------------------------------------------------------------------------
# The reference: one loop per query over the whole history, no indexing tricks.


@dataclass(frozen=True)
class FraudLabel:
    tid: str
    card: str
    merchant: str
    tx_day: int
    available_ms: int


def reference_risk(
    q: Row, activity: list[Row], labels: list[FraudLabel] | None, delay_days: int = DEFAULT_LABEL_DELAY_DAYS
) -> dict[str, float]:
    """Merchant and label features of ``q``; ``labels=None``: no context (nothing known)."""
    f: dict[str, float] = {}
    day = q.ts_ms // DAY
    rows = activity if labels is not None else []
    at_merchant = [h for h in rows if h.merchant == q.merchant]

    def on_days(lo: int, hi: int) -> list[Row]:
        return [h for h in at_merchant if lo <= h.ts_ms // DAY < hi]

    def first_at_merchant(h: Row) -> bool:
        return not any(
            o.card == h.card and o.merchant == h.merchant and h.ts_ms - 30 * DAY <= o.ts_ms < h.ts_ms for o in rows
        )

    for w, width in MERCHANT_WINDOWS_DAYS.items():  # the day before yesterday is the last one read
        f[f"merchant_tx_count_{w}"] = len(on_days(day - 1 - width, day - 1))
    mean = f["merchant_tx_count_30d"] / 30
    for w in ("1d", "7d"):
        width = MERCHANT_WINDOWS_DAYS[w]
        f[f"merchant_activity_ratio_{w}"] = f[f"merchant_tx_count_{w}"] / width / mean if mean else 0.0
        window = on_days(day - 1 - width, day - 1)
        new = [h for h in window if first_at_merchant(h)]
        f[f"merchant_new_card_share_{w}"] = len(new) / len(window) if window else 0.0
    unique: dict[str, FraudLabel] = {}
    for lab in labels or []:
        unique.setdefault(lab.tid, lab)
    known = [lab for lab in unique.values() if lab.merchant == q.merchant and lab.available_ms // DAY < day]
    for w, width in LABELLED_WINDOWS_DAYS.items():
        lo, hi = day - delay_days - width, day - delay_days
        count = len(on_days(lo, hi))
        frauds = sum(1 for lab in known if lo <= lab.tx_day < hi)
        f[f"merchant_fraud_rate_{w}"] = min(frauds / count, 1.0) if count else 0.0
    for w, width in KNOWN_FRAUD_WINDOWS_DAYS.items():
        f[f"merchant_known_frauds_{w}"] = sum(1 for lab in known if day - width <= lab.tx_day < day)
    ages = [day - lab.tx_day for lab in known if day - MERCHANT_SPAN_DAYS <= lab.tx_day < day]
    f["merchant_days_since_known_fraud"] = min(ages, default=MERCHANT_SPAN_DAYS + 1)
    card = [lab.available_ms for lab in unique.values() if lab.card == q.card and lab.available_ms < q.ts_ms]
    f["card_known_frauds_7d"] = sum(1 for t in card if q.ts_ms - 7 * DAY <= t)
    f["card_days_since_known_fraud"] = min((q.ts_ms - max(card)) / DAY, 30.0) if card else 30.0
    return f


def reference_features(
    queries: list[Row],
    history: list[Row],
    labels: list[FraudLabel] | None = None,
    delay_days: int = DEFAULT_LABEL_DELAY_DAYS,
) -> np.ndarray:
    out = np.zeros((len(queries), len(FEATURE_NAMES)))
    for i, q in enumerate(queries):
        t = q.ts_ms
        f: dict[str, float] = {}
        f["amount"] = q.amount
        f["log_amount"] = math.log(1.0 + q.amount)
        f["hour"] = q.when.hour  # local wall clock of the timestamp's own offset
        f["is_night"] = float(q.when.hour < 6)
        f["is_weekend"] = float(q.when.weekday() >= 5)
        for c in CHANNELS:
            f[f"channel_{c}"] = float(q.channel == c)
        category = (q.category or "").lower()
        for c in MERCHANT_CATEGORIES:
            f[f"category_{c}"] = float(category == c)
        f["category_other"] = float(category not in MERCHANT_CATEGORIES)

        earlier = [h for h in history if h.card == q.card and h.ts_ms < t]
        for w, width in WINDOWS.items():
            inside = [h.amount for h in earlier if t - width <= h.ts_ms]
            f[f"card_tx_count_{w}"] = len(inside)
            if w == "1h":
                f["card_amount_sum_1h"] = sum(inside)
            else:
                f[f"card_amount_mean_{w}"] = sum(inside) / len(inside) if inside else 0.0
        mean_30d = f["card_amount_mean_30d"]
        f["amount_to_card_mean_30d"] = q.amount / mean_30d if mean_30d > 0 else 1.0
        if earlier:
            gap_ms = min(t - max(h.ts_ms for h in earlier), 30 * DAY)
        else:
            gap_ms = 30 * DAY
        f["seconds_since_prev_card_tx"] = gap_ms / 1000.0
        f["card_merchant_count_30d"] = sum(1 for h in earlier if h.merchant == q.merchant and t - 30 * DAY <= h.ts_ms)
        f.update(reference_risk(q, history, labels, delay_days))
        assert set(f) == set(FEATURE_NAMES)
        out[i] = [f[name] for name in FEATURE_NAMES]
    return out


def canonical(rows: list[Row]) -> pd.DataFrame:
    """Canonical frame built directly from the rows (independent of the loaders under test)."""
    return pd.DataFrame(
        {
            "transaction_id": [r.tid for r in rows],
            "card_id": [r.card for r in rows],
            "merchant_id": [r.merchant for r in rows],
            "ts_ms": np.array([r.ts_ms for r in rows], dtype=np.int64),
            "utc_offset_min": np.array(
                [int(r.when.utcoffset().total_seconds()) // 60 for r in rows],  # type: ignore[union-attr]
                dtype=np.int64,
            ),
            "amount": np.array([r.amount for r in rows]),
            "channel": [r.channel for r in rows],
            "merchant_category": [r.category for r in rows],
        },
        columns=list(CANONICAL_COLUMNS),
    )


def random_rows(seed: int, n: int = 300, n_cards: int = 6, n_merchants: int = 5, days: int = 70) -> list[Row]:
    """Rows in random order with clusters, exact timestamp ties and rows exactly W after another."""
    rng = random.Random(seed)
    cards = [f"card-{i}" for i in range(n_cards)]
    merchants = [f"m-{i}" for i in range(n_merchants)]
    categories = [*MERCHANT_CATEGORIES, "GROCERY", "pets", "", None]
    rows: list[Row] = []
    for i in range(n):
        card = rng.choice(cards)
        same_card = [r for r in rows if r.card == card]
        kind = rng.random()
        if same_card and kind < 0.15:
            instant = rng.choice(same_card).when  # exact tie with an earlier-generated row
        elif same_card and kind < 0.35:
            instant = rng.choice(same_card).when + timedelta(milliseconds=rng.choice(list(WINDOWS.values())))
        elif same_card and kind < 0.55:
            instant = rng.choice(same_card).when + timedelta(seconds=rng.randint(1, 5_000))
        else:
            instant = T0 + timedelta(milliseconds=rng.randrange(days * DAY))
        amount = max(0.01, round(rng.lognormvariate(3.0, 1.3), 2))
        rows.append(
            Row(
                tid=f"tx-{seed}-{i:04d}",
                card=card,
                merchant=rng.choice(merchants),
                when=instant.astimezone(rng.choice(OFFSETS)),
                amount=amount,
                channel=rng.choice([*CHANNELS, None]),
                category=rng.choice(categories),
            )
        )
    return rows


def assert_matches_reference(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    for j, name in enumerate(FEATURE_NAMES):
        np.testing.assert_allclose(got[:, j], want[:, j], rtol=1e-9, atol=0, err_msg=name)


# ------------------------------------------------------------------------------------------
# Against the reference


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_reference_on_random_rows(seed: int) -> None:
    rows = random_rows(seed)
    # The generator must actually produce the tricky cases, or this test proves little.
    by_card: dict[str, set[int]] = {}
    for r in rows:
        by_card.setdefault(r.card, set()).add(r.ts_ms)
    instants = [r.ts_ms for r in rows]
    assert len(set(zip([r.card for r in rows], instants, strict=True))) < len(rows), "no same-card timestamp ties"
    assert any(t - w in by_card[r.card] for r in rows for t in [r.ts_ms] for w in WINDOWS.values())
    assert {r.when.utcoffset() for r in rows} == {o.utcoffset(None) for o in OFFSETS}

    frame = canonical(rows)  # deliberately not sorted by time
    got = compute_features(frame, history_from_frame(frame))
    assert_matches_reference(got, reference_features(rows, rows))
    # Non-trivial: windows with history, ties and the 30-day cap all occur.
    assert (got[:, COL["card_tx_count_30d"]] > 0).any()
    assert (got[:, COL["seconds_since_prev_card_tx"]] == 30 * 86_400).any()
    assert (got[:, COL["card_merchant_count_30d"]] > 0).any()


def random_labels(rows: list[Row], seed: int, share: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """is_fraud and labelled_ms (-1: not given) for rows: delays from zero to three weeks."""
    rng = random.Random(seed)
    fraud = np.array([rng.random() < share for _ in rows], dtype=np.int64)
    labelled = np.array(
        [r.ts_ms + rng.randrange(0, 21 * DAY) if rng.random() < 0.7 else -1 for r in rows], dtype=np.int64
    )
    return fraud, labelled


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_merchant_risk_and_known_fraud_match_reference(seed: int) -> None:
    rows = random_rows(seed, n=400, n_merchants=4, days=80)
    frame = canonical(rows)
    fraud, labelled = random_labels(rows, seed)
    frame["is_fraud"], frame["labelled_ms"] = fraud, labelled
    delay = 5 * DAY
    risk = risk_context_from_frame(frame, delay)
    labels = [
        FraudLabel(r.tid, r.card, r.merchant, r.ts_ms // DAY, int(lab) if lab >= 0 else r.ts_ms + delay)
        for r, f, lab in zip(rows, fraud, labelled, strict=True)
        if f
    ]
    got = compute_features(frame, history_from_frame(frame), risk)
    assert_matches_reference(got, reference_features(rows, rows, labels, delay_days=5))
    for name in MERCHANT_RISK_FEATURES:  # every one of them is exercised
        assert len(np.unique(got[:, COL[name]])) > 1, name
    # Labels are not yet known for some rows whose merchant window holds them: availability matters.
    no_wait = compute_features(
        frame, history_from_frame(frame), risk_context_from_frame(frame.assign(labelled_ms=-1), 5 * DAY)
    )
    for name in ("merchant_fraud_rate_30d", "merchant_known_frauds_7d", "card_days_since_known_fraud"):
        assert not np.array_equal(no_wait[:, COL[name]], got[:, COL[name]]), name


def features_by_id(rows: list[Row], fraud: dict[str, int], delay_ms: int = 7 * DAY) -> dict[str, dict[str, float]]:
    """Features of every row, with the fraud labels ``{tid: labelled_ms}`` (training's path)."""
    frame = canonical(rows)
    frame["is_fraud"] = [int(r.tid in fraud) for r in rows]
    frame["labelled_ms"] = [fraud.get(r.tid, -1) for r in rows]
    x = compute_features(frame, history_from_frame(frame), risk_context_from_frame(frame, delay_ms))
    return {r.tid: dict(zip(FEATURE_NAMES, x[i], strict=True)) for i, r in enumerate(rows)}


def at_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def test_a_cards_label_counts_from_its_labelled_at_to_the_millisecond() -> None:
    known = datetime(2026, 3, 10, 12, tzinfo=UTC)
    k = (known - EPOCH) // timedelta(milliseconds=1)
    rows = [Row("f", "C", "M0", known - timedelta(hours=2), 10.0, "pos", None)]
    queries = {"at": k, "after": k + 1, "7d": k + 7 * DAY, "7d+1ms": k + 7 * DAY + 1, "late": k + 31 * DAY}
    rows += [Row(q, "C", "M1", at_ms(t), 10.0, "pos", None) for q, t in queries.items()]
    v = features_by_id(rows, {"f": k})
    assert (v["at"]["card_known_frauds_7d"], v["at"]["card_days_since_known_fraud"]) == (0, 30.0)
    assert (v["after"]["card_known_frauds_7d"], v["after"]["card_days_since_known_fraud"]) == (1, 1 / DAY)
    assert (v["7d"]["card_known_frauds_7d"], v["7d"]["card_days_since_known_fraud"]) == (1, 7.0)
    assert (v["7d+1ms"]["card_known_frauds_7d"], v["7d+1ms"]["card_days_since_known_fraud"]) == (0, 7 + 1 / DAY)
    assert v["late"]["card_days_since_known_fraud"] == 30.0  # capped: as if never compromised
    # Another card's label never counts for this one.
    other = features_by_id([*rows, Row("o", "D", "M1", at_ms(k + 1), 10.0, "pos", None)], {"f": k})
    assert (other["o"]["card_known_frauds_7d"], other["o"]["card_days_since_known_fraud"]) == (0, 30.0)


@pytest.mark.parametrize(("labelled", "known"), [(-1, True), (0, False)])
def test_a_merchants_label_counts_from_the_utc_day_after_its_labelled_at(labelled: int, known: bool) -> None:
    day = (datetime(2026, 3, 10, tzinfo=UTC) - EPOCH) // timedelta(days=1)
    rows = [
        Row("f", "X", "M", at_ms((day - 3) * DAY + 10 * HOUR), 10.0, "pos", None),
        Row("first", "Y", "M", at_ms(day * DAY), 10.0, "pos", None),
        Row("last", "Y", "M", at_ms((day + 1) * DAY - 1), 10.0, "pos", None),
    ]
    # The label became known one millisecond before the day, or at its very start.
    v = features_by_id(rows, {"f": day * DAY + labelled})
    for q in ("first", "last"):
        assert v[q]["merchant_known_frauds_7d"] == int(known)
        assert v[q]["merchant_days_since_known_fraud"] == (3 if known else MERCHANT_SPAN_DAYS + 1)
        assert v[q]["card_days_since_known_fraud"] == 30.0  # card Y's own history is clean


def test_fraud_rates_read_no_day_past_the_delay_horizon() -> None:
    day = (datetime(2026, 3, 20, tzinfo=UTC) - EPOCH) // timedelta(days=1)
    rows = [
        Row("inside", "A", "M", at_ms((day - 7) * DAY - 1), 10.0, "pos", None),  # day d-8, last ms
        Row("legit", "B", "M", at_ms((day - 8) * DAY + 5 * HOUR), 10.0, "pos", None),  # day d-8
        Row("past", "C", "M", at_ms((day - 7) * DAY), 10.0, "pos", None),  # day d-7, first ms
        Row("q", "D", "M", at_ms(day * DAY + 12 * HOUR), 10.0, "pos", None),
    ]
    fraud = {"inside": (day - 7) * DAY + HOUR, "past": (day - 7) * DAY + HOUR}
    v = features_by_id(rows, fraud, delay_ms=7 * DAY)["q"]
    # D = 7: the fraud-rate windows end with day d-8; day d-7 is past the horizon.
    assert v["merchant_fraud_rate_1d"] == 0.5 and v["merchant_fraud_rate_7d"] == 0.5
    # The known-fraud counts need no denominator and no horizon: both frauds are known.
    assert (v["merchant_known_frauds_7d"], v["merchant_known_frauds_30d"]) == (1, 2)
    assert v["merchant_days_since_known_fraud"] == 7
    # D is the label delay rounded up to whole days.
    assert features_by_id(rows, fraud, delay_ms=6 * DAY)["q"]["merchant_fraud_rate_1d"] == 1.0
    assert features_by_id(rows, fraud, delay_ms=6 * DAY + 1)["q"]["merchant_fraud_rate_1d"] == 0.5
    # A label not known before the day does not count, whatever the window.
    late = features_by_id(rows, {**fraud, "inside": day * DAY}, delay_ms=7 * DAY)["q"]
    assert late["merchant_fraud_rate_1d"] == 0.0 and late["merchant_known_frauds_30d"] == 1


@pytest.mark.parametrize(
    ("delay_ms", "days"),
    [(0, 1), (1, 1), (DAY, 1), (DAY + 1, 2), (7 * DAY, 7), (13 * DAY + 1, 14), (30 * DAY, MAX_LABEL_DELAY_DAYS)],
)
def test_label_horizon_is_the_delay_in_whole_days_rounded_up(delay_ms: int, days: int) -> None:
    assert label_horizon_days(delay_ms) == days


def test_activity_windows_skip_yesterday_and_count_cards_new_at_the_merchant() -> None:
    day = (datetime(2026, 3, 20, tzinfo=UTC) - EPOCH) // timedelta(days=1)
    seen = (day - 1) * DAY - 1  # day d-2, last ms
    rows = [
        Row("old", "X", "M", at_ms(seen - 30 * DAY), 10.0, "pos", None),  # exactly 30 days before
        Row("seen", "X", "M", at_ms(seen), 10.0, "pos", None),  # so X is not new at M here
        Row("new", "Z", "M", at_ms(seen - HOUR), 10.0, "pos", None),  # Z's first time at M
        Row("now", "Z", "N", at_ms(seen - 31 * DAY), 10.0, "pos", None),  # at another merchant
        Row("yesterday", "Y", "M", at_ms((day - 1) * DAY), 10.0, "pos", None),  # not read yet
        Row("q", "Q", "M", at_ms(day * DAY + HOUR), 10.0, "pos", None),
    ]
    v = features_by_id(rows, {})["q"]
    assert (v["merchant_tx_count_1d"], v["merchant_tx_count_7d"], v["merchant_tx_count_30d"]) == (2, 2, 2)
    assert v["merchant_new_card_share_1d"] == 0.5 and v["merchant_new_card_share_7d"] == 0.5
    assert v["merchant_activity_ratio_1d"] == 30.0
    assert v["merchant_activity_ratio_7d"] == pytest.approx(30 / 7)
    # One millisecond more than 30 days since X was there: X is new at M again.
    shifted = [Row("old", "X", "M", at_ms(seen - 30 * DAY - 1), 10.0, "pos", None), *rows[1:]]
    assert features_by_id(shifted, {})["q"]["merchant_new_card_share_1d"] == 1.0


def test_no_context_is_an_empty_context_and_reads_as_nothing_known() -> None:
    rows = random_rows(8, n=60)
    frame = canonical(rows)
    bare = compute_features(frame, history_from_frame(frame))
    empty = compute_features(frame, history_from_frame(frame), RiskContext.empty())
    assert np.array_equal(empty, bare)  # the worker's warm-up scores with an empty context
    assert_matches_reference(bare, reference_features(rows, rows))
    assert not bare[:, [COL[n] for n in MERCHANT_RISK_FEATURES if "days_since" not in n]].any()
    assert (bare[:, COL["merchant_days_since_known_fraud"]] == MERCHANT_SPAN_DAYS + 1).all()
    assert (bare[:, COL["card_days_since_known_fraud"]] == 30.0).all()


def test_queries_subset_of_history_and_row_order_do_not_matter() -> None:
    rows = random_rows(4)
    frame = canonical(rows)
    full = compute_features(frame, history_from_frame(frame))
    rng = np.random.default_rng(0)
    pick = rng.choice(len(rows), size=60, replace=False)
    shuffled_history = history_from_frame(frame).sample(frac=1.0, random_state=1).reset_index(drop=True)
    part = compute_features(frame.iloc[pick].reset_index(drop=True), shuffled_history)
    assert np.array_equal(part, full[pick])


def test_hand_checked_windows_ties_and_boundaries() -> None:
    t0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    rows = [
        Row("a", "A", "M", t0, 10.0, "pos", "grocery"),
        Row("b", "A", "M", t0 + timedelta(hours=1), 20.0, "pos", "grocery"),
        Row("c", "A", "N", t0 + timedelta(hours=1), 30.0, "pos", "grocery"),  # tie with b
        Row("d", "A", "M", t0 + timedelta(hours=2), 40.0, "pos", "grocery"),
        Row("e", "A", "M", t0 + timedelta(days=30, hours=1), 50.0, "pos", "grocery"),
        Row("f", "A", "M", t0 + timedelta(days=75), 60.0, "pos", "grocery"),
        Row("g", "B", "M", t0 + timedelta(hours=1), 70.0, "pos", "grocery"),  # other card, same time
    ]
    frame = canonical(rows)
    x = compute_features(frame, history_from_frame(frame))
    v = {r.tid: dict(zip(FEATURE_NAMES, x[i], strict=True)) for i, r in enumerate(rows)}

    # a: no history at all.
    assert v["a"]["card_tx_count_30d"] == 0
    assert v["a"]["amount_to_card_mean_30d"] == 1.0
    assert v["a"]["seconds_since_prev_card_tx"] == 30 * 86_400
    # b and c: a sits exactly at t - 1h (included); they do not see each other (same timestamp).
    for tid in ("b", "c"):
        assert v[tid]["card_tx_count_1h"] == 1
        assert v[tid]["card_amount_sum_1h"] == 10.0
        assert v[tid]["seconds_since_prev_card_tx"] == 3600
    assert v["b"]["card_merchant_count_30d"] == 1
    assert v["c"]["card_merchant_count_30d"] == 0
    assert v["b"]["amount_to_card_mean_30d"] == 2.0
    # d: [t0+1h, t0+2h) holds b and c but not a.
    assert v["d"]["card_tx_count_1h"] == 2
    assert v["d"]["card_amount_sum_1h"] == 50.0
    assert v["d"]["card_tx_count_1d"] == 3
    assert v["d"]["card_amount_mean_1d"] == 20.0
    assert v["d"]["card_merchant_count_30d"] == 2
    # e: exactly 30 days after b/c, which are included; a (30d + 1h earlier) is not.
    assert v["e"]["card_tx_count_30d"] == 3
    assert v["e"]["card_amount_mean_30d"] == 30.0
    assert v["e"]["card_tx_count_7d"] == 0
    assert v["e"]["seconds_since_prev_card_tx"] == 30 * 86_400 - 3600
    assert v["e"]["card_merchant_count_30d"] == 2  # b and d
    # f: 45 days of silence -> capped gap, empty windows.
    assert v["f"]["seconds_since_prev_card_tx"] == 30 * 86_400
    assert v["f"]["card_tx_count_30d"] == 0
    # g: card B sees nothing of card A.
    assert v["g"]["card_tx_count_30d"] == 0
    assert_matches_reference(x, reference_features(rows, rows))


def test_local_wall_clock_and_categories() -> None:
    rows = [
        # Saturday 23:30 in -08:00 is Sunday 07:30 UTC: hour 23, weekend, not night.
        Row("w", "A", "M", datetime(2026, 1, 3, 23, 30, tzinfo=timezone(timedelta(hours=-8))), 5.0, "atm", "GROCERY"),
        # Monday 02:00 in +05:30 is Sunday 20:30 UTC: hour 2, night, not weekend.
        Row(
            "n",
            "B",
            "M",
            datetime(2026, 1, 5, 2, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            5.0,
            None,
            "pets",
        ),
        Row("z", "C", "M", datetime(2026, 1, 5, 6, 0, tzinfo=UTC), 5.0, "ecommerce", None),
    ]
    x = compute_features(canonical(rows), history_from_frame(canonical(rows)))
    v = {r.tid: dict(zip(FEATURE_NAMES, x[i], strict=True)) for i, r in enumerate(rows)}
    assert (v["w"]["hour"], v["w"]["is_weekend"], v["w"]["is_night"]) == (23, 1, 0)
    assert (v["n"]["hour"], v["n"]["is_weekend"], v["n"]["is_night"]) == (2, 0, 1)
    assert (v["z"]["hour"], v["z"]["is_weekend"], v["z"]["is_night"]) == (6, 0, 0)
    assert v["w"]["category_grocery"] == 1 and v["w"]["category_other"] == 0
    assert v["n"]["category_other"] == 1 and v["z"]["category_other"] == 1
    assert v["w"]["channel_atm"] == 1 and v["z"]["channel_ecommerce"] == 1
    assert sum(v["n"][f"channel_{c}"] for c in CHANNELS) == 0
    for tid in v:  # exactly one category level is hot
        assert sum(v[tid][n] for n in FEATURE_NAMES if n.startswith("category_")) == 1


def test_channels_match_exactly_and_unknown_values_set_no_channel() -> None:
    when = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    rows = [
        Row(tid, "A", "M", when, 5.0, channel, "grocery")
        for tid, channel in [("a", "POS"), ("b", "wire"), ("c", "atm")]
    ]
    x = compute_features(canonical(rows), history_from_frame(canonical(rows)))
    channels = x[:, [COL[f"channel_{c}"] for c in CHANNELS]]
    assert channels.sum(axis=1).tolist() == [0, 0, 1]
    assert x[2, COL["channel_atm"]] == 1


@pytest.mark.parametrize("n", [0, 1, 7, SMALL_FACTORIZE, SMALL_FACTORIZE + 1, 2_000])
def test_factorize_gives_the_codes_of_pandas(n: int) -> None:
    # Small inputs take a dict, large ones pandas: both must give pandas' codes, in first-seen order.
    rng = np.random.default_rng(n)
    ids = [f"id-{i}" for i in rng.integers(0, max(1, n // 3), n)]
    cases = [
        strings(ids),
        rng.integers(-5, 5, n),
        rng.integers(0, 1 << 40, n).astype(np.int64),
        strings([None if i % 5 == 0 else v for i, v in enumerate(ids)]),  # missing values: -1
        strings([math.nan if i % 4 == 1 else v for i, v in enumerate(ids)]),
        strings([i % 3 if i % 2 else v for i, v in enumerate(ids)]),  # mixed types
    ]
    for values in cases:
        codes, uniques = factorize(values)
        want_codes, want_uniques = pd.factorize(values, sort=False)
        assert codes.tolist() == want_codes.tolist()
        assert uniques.tolist() == list(want_uniques)


def test_empty_history_and_empty_queries() -> None:
    rows = random_rows(5, n=20)
    frame = canonical(rows)
    empty_history = history_frame({})
    assert list(empty_history) == list(HISTORY_COLUMNS)
    got = compute_features(frame, empty_history)
    assert_matches_reference(got, reference_features(rows, []))
    none = compute_features(frame.iloc[:0], history_from_frame(frame))
    assert none.shape == (0, len(FEATURE_NAMES))


# ------------------------------------------------------------------------------------------
# Train/serve parity: the stream's batches + pruned card state give the batch matrix exactly.


def stream_features(rows: list[Row], batch_sizes: list[int], grace_ms: int) -> tuple[np.ndarray, dict]:
    """What the worker computes, batch by batch, with card state carried through ``merge``."""
    states: dict[str, dict] = {}
    parts = []
    start = 0
    for size in batch_sizes:
        batch = rows[start : start + size]
        start += size
        if not batch:
            break
        txs = [r.transaction() for r in batch]
        queries = pd.DataFrame(frame_from_transactions(txs))
        stored = pd.DataFrame(history_frame({tx.card_id: states.get(tx.card_id) for tx in txs}))
        fresh = queries.loc[~queries["transaction_id"].isin(stored["transaction_id"])]
        fresh = fresh.drop_duplicates("transaction_id")
        history = pd.concat([stored, fresh[list(HISTORY_COLUMNS)]], ignore_index=True)
        parts.append(compute_features(queries, history))
        per_card: dict[str, list[tuple[str, int, float, str]]] = {}
        for tx, ts in zip(txs, queries["ts_ms"].to_numpy(), strict=True):
            per_card.setdefault(tx.card_id, []).append((tx.transaction_id, int(ts), tx.amount, tx.merchant_id))
        for card, card_rows in per_card.items():
            states[card] = merge(states.get(card), card_rows, grace_ms)
    assert start >= len(rows)
    return np.vstack(parts), states


@pytest.mark.parametrize(("seed", "grace_ms"), [(11, 0), (12, 3_600_000), (13, 0)])
def test_stream_batches_with_pruned_state_equal_one_shot_batch(seed: int, grace_ms: int) -> None:
    rows = random_rows(seed, n=260, days=90)
    rows.sort(key=lambda r: r.ts_ms)  # replay in timestamp order (stable: ties keep their order)
    rng = random.Random(seed)
    sizes: list[int] = []
    while sum(sizes) < len(rows):
        sizes.append(rng.choice([1, 1, 2, 3, 7, 16, 40]))

    one_shot_frame = pd.DataFrame(frame_from_transactions([r.transaction() for r in rows]))
    one_shot = compute_features(one_shot_frame, history_from_frame(one_shot_frame))
    streamed, states = stream_features(rows, sizes, grace_ms)

    assert streamed.shape == one_shot.shape
    mismatch = np.argwhere(streamed != one_shot)
    assert mismatch.size == 0, [(rows[i].tid, FEATURE_NAMES[j]) for i, j in mismatch[:10]]
    # The state really was pruned, so the equality exercises the pruning horizon.
    kept = sum(len(s["ids"]) for s in states.values())
    assert kept < len(rows)
    for s in states.values():
        assert s["ts"] == sorted(s["ts"])
        assert s["ts"][-1] - s["ts"][0] <= HISTORY_SPAN_MS + grace_ms
    # And the one-shot matrix is itself the reference one.
    assert_matches_reference(one_shot, reference_features(rows, rows))


def test_redelivered_batch_is_not_counted_twice() -> None:
    rows = sorted(random_rows(21, n=80, days=5), key=lambda r: r.ts_ms)
    once, _ = stream_features(rows, [len(rows)], grace_ms=0)
    # The same transactions delivered again (e.g. after a rebalance) must score the same.
    _, states = stream_features(rows, [len(rows)], grace_ms=0)
    txs = [r.transaction() for r in rows]
    queries = pd.DataFrame(frame_from_transactions(txs))
    stored = pd.DataFrame(history_frame({tx.card_id: states[tx.card_id] for tx in txs}))
    fresh = queries.loc[~queries["transaction_id"].isin(stored["transaction_id"])]
    history = pd.concat([stored, fresh[list(HISTORY_COLUMNS)]], ignore_index=True)
    # Most rows come back from the stored state (only pruned ones are "fresh" again) ...
    assert len(fresh) < len(stored)
    # ... and none of them twice, so every feature is unchanged.
    assert not history["transaction_id"].duplicated().any()
    assert np.array_equal(compute_features(queries, history), once)


# ------------------------------------------------------------------------------------------
# The two ways of building a canonical frame agree.


def test_frame_from_transactions_equals_dataset_loader(tmp_path: Path) -> None:
    rows = random_rows(31, n=120)
    timestamps = {}
    for i, r in enumerate(rows):  # vary the spelling: microseconds, Z, offsets without colon
        if i % 4 == 0:
            timestamps[r.tid] = r.when.isoformat(timespec="microseconds")
        elif i % 4 == 1 and r.when.utcoffset() == timedelta(0):
            timestamps[r.tid] = r.when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        elif i % 4 == 2:
            timestamps[r.tid] = r.when.strftime("%Y-%m-%dT%H:%M:%S.%f%z")
        else:
            timestamps[r.tid] = r.iso
    # Sub-millisecond precision floors to the millisecond on both paths.
    rows[0] = Row(rows[0].tid, "A", "M", datetime(2026, 2, 1, 10, 0, 0, 999_999, tzinfo=OFFSETS[1]), 1.0, None, None)
    timestamps[rows[0].tid] = rows[0].when.isoformat(timespec="microseconds")

    path = tmp_path / "tx.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "transaction_id",
                "timestamp",
                "card_id",
                "merchant_id",
                "amount",
                "currency",
                "merchant_category",
                "channel",
                "country",
                "is_fraud",
            ]
        )
        for r in rows:
            w.writerow(
                [
                    r.tid,
                    timestamps[r.tid],
                    r.card,
                    r.merchant,
                    repr(r.amount),
                    "EUR",
                    r.category or "",
                    r.channel or "",
                    "FR",
                    0,
                ]
            )
    loaded = load_csv(path)
    assert loaded.invalid.count == 0

    txs = [
        Transaction.model_validate(
            {
                "transaction_id": r.tid,
                "timestamp": timestamps[r.tid],
                "card_id": r.card,
                "merchant_id": r.merchant,
                "amount": r.amount,
                "currency": "EUR",
                "merchant_category": r.category or None,
                "channel": r.channel,
                "country": "FR",
            }
        )
        for r in rows
    ]
    wire = pd.DataFrame(frame_from_transactions(txs)).sort_values("ts_ms", kind="stable").reset_index(drop=True)
    batch = loaded.frame.loc[:, list(CANONICAL_COLUMNS)]
    pd.testing.assert_frame_equal(wire, batch, check_dtype=False)
    assert batch["ts_ms"].dtype == wire["ts_ms"].dtype == np.int64
    assert batch["utc_offset_min"].dtype == wire["utc_offset_min"].dtype == np.int64
    assert set(batch["utc_offset_min"]) == {330, -480, 0, 60}
    first = batch.loc[batch["transaction_id"] == rows[0].tid].iloc[0]
    assert first["ts_ms"] % 1000 == 999 and first["utc_offset_min"] == -480
    # Hence identical features on both paths.
    assert np.array_equal(
        compute_features(wire, history_from_frame(wire)), compute_features(batch, history_from_frame(batch))
    )


def test_epoch_ms_floors_like_timedelta_division_on_both_sides_of_the_epoch() -> None:
    from model.features import epoch_ms

    rng = np.random.default_rng(5)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for micros, offset in zip(rng.integers(-(10**15), 10**15, 2000), rng.integers(-840, 840, 2000), strict=True):
        ts = (epoch + timedelta(microseconds=int(micros))).astimezone(timezone(timedelta(minutes=int(offset))))
        assert epoch_ms(ts) == (ts - epoch) // timedelta(milliseconds=1)
