# ruff: noqa: S101
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from model.schemas import CHANNELS, MERCHANT_CATEGORIES, Transaction
from producers.synthetic import (
    COLUMNS,
    FRAUD_TYPES,
    WIRE_FIELDS,
    SimConfig,
    config_for_rows,
    generate,
    iter_transactions,
)

DEFAULT = SimConfig()
SMALL = SimConfig(seed=3, n_cards=300, n_merchants=80, days=10.0)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate(DEFAULT)


@pytest.fixture(scope="module")
def enriched(frame: pd.DataFrame) -> pd.DataFrame:
    """The default run plus per-row helpers: UTC time, local hour, amount vs the card's median."""
    out = frame.copy()
    out["ts"] = pd.to_datetime(out["timestamp"], utc=True, format="ISO8601")
    out["hour"] = out["timestamp"].str.slice(11, 13).astype(int)
    out["night"] = out["hour"] < 6
    legit = out[out["is_fraud"] == 0]
    out["rel_amount"] = out["amount"] / out["card_id"].map(legit.groupby("card_id")["amount"].median())
    out["home"] = out["card_id"].map(legit.groupby("card_id")["country"].agg(lambda s: s.mode().iloc[0]))
    return out


def test_same_seed_same_frame_and_other_seed_differs() -> None:
    a, b = generate(SMALL), generate(SMALL)
    pd.testing.assert_frame_equal(a, b)
    c = generate(SimConfig(seed=4, n_cards=300, n_merchants=80, days=10.0))
    assert not a.equals(c)
    assert a["amount"].head(100).tolist() != c["amount"].head(100).tolist()


def test_columns_and_dtypes(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == list(COLUMNS)
    assert list(COLUMNS[:9]) == list(WIRE_FIELDS)
    assert isinstance(frame.index, pd.RangeIndex) and frame.index[0] == 0 and frame.index[-1] == len(frame) - 1
    for c in ("transaction_id", "timestamp", "card_id", "merchant_id", "currency", "merchant_category",
              "channel", "country", "fraud_type"):  # fmt: skip
        assert pd.api.types.is_string_dtype(frame[c]), c
        assert frame[c].map(type).eq(str).all(), c
    assert frame["amount"].dtype == np.float64
    assert pd.api.types.is_integer_dtype(frame["is_fraud"])
    assert set(frame["is_fraud"].unique()) == {0, 1}

    assert (frame["amount"] > 0).all()
    assert np.allclose(frame["amount"], frame["amount"].round(2))
    assert set(frame["merchant_category"]) <= set(MERCHANT_CATEGORIES)
    assert set(frame["channel"]) == set(CHANNELS)
    assert frame["currency"].str.fullmatch(r"[A-Z]{3}").all()
    assert frame["country"].str.fullmatch(r"[A-Z]{2}").all()
    assert frame["timestamp"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d").all()
    # Labels agree with each other.
    assert set(frame["fraud_type"]) <= {"", *FRAUD_TYPES}
    assert ((frame["fraud_type"] != "") == (frame["is_fraud"] == 1)).all()
    # Channel follows the merchant: cash is drawn at ATMs, and a merchant has one channel.
    assert (frame.loc[frame["channel"] == "atm", "merchant_category"] == "cash").all()
    assert (frame.groupby("merchant_id")["channel"].nunique() == 1).all()


def test_rows_validate_against_the_wire_contract(frame: pd.DataFrame) -> None:
    sample = frame.sample(3000, random_state=0)
    for row in sample.to_dict("records"):
        tx = Transaction.model_validate(row)
        assert tx.timestamp.utcoffset() is not None
        assert tx.timestamp.hour == int(row["timestamp"][11:13])


def test_sorted_by_time_inside_the_window(enriched: pd.DataFrame) -> None:
    ts = enriched["ts"]
    assert ts.is_monotonic_increasing
    start = pd.Timestamp(DEFAULT.start)
    assert ts.min() >= start
    assert ts.max() < start + pd.Timedelta(days=DEFAULT.days)
    # Each card keeps its home offset, so local hours are consistent per card.
    offsets = enriched["timestamp"].str.slice(-6)
    assert (offsets.groupby(enriched["card_id"]).nunique() == 1).all()


def test_transaction_ids_unique_and_in_order(frame: pd.DataFrame) -> None:
    assert frame["transaction_id"].is_unique
    assert frame["transaction_id"].iloc[0] == f"tx-{DEFAULT.seed}-000000000"
    assert frame["transaction_id"].is_monotonic_increasing


def test_fraud_rate_and_every_type_present(frame: pd.DataFrame) -> None:
    rate = frame["is_fraud"].mean()
    assert 0.001 < rate < 0.02
    counts = frame["fraud_type"].value_counts()
    for kind in FRAUD_TYPES:
        assert counts.get(kind, 0) >= 10, kind


def test_fraud_amounts_are_high_for_the_card(enriched: pd.DataFrame) -> None:
    rel = enriched["rel_amount"]
    fraud = enriched["is_fraud"] == 1
    assert rel[fraud].median() > 1.5 * rel[~fraud].median()
    by_type = rel.groupby(enriched["fraud_type"]).median()
    assert by_type["amount_outlier"] > 5
    assert by_type["compromised_card"] > 1.5


def test_compromised_card_fraud_happens_more_at_night(enriched: pd.DataFrame) -> None:
    night = enriched.groupby("fraud_type")["night"].mean()
    assert night["compromised_card"] > 3 * night[""]
    # Cardholders are daytime-heavy in their local time.
    legit_hours = enriched.loc[enriched["is_fraud"] == 0, "hour"]
    assert legit_hours.between(9, 20).mean() > 0.6


def test_legit_traffic_overlaps_fraud_patterns(enriched: pd.DataFrame) -> None:
    """The label is not trivially separable: legit rows show each 'fraud-looking' trait too."""
    legit = enriched[enriched["is_fraud"] == 0]
    assert legit["night"].mean() > 0.01
    assert (legit["rel_amount"] > 5).sum() > 50  # big-ticket purchases
    assert (legit["country"] != legit["home"]).mean() > 0.02  # travel and cross-border shopping
    gap = legit.groupby("card_id")["ts"].diff().dt.total_seconds()
    assert (gap < 300).sum() > 100  # several purchases within minutes
    # Cards differ in spending level by an order of magnitude.
    medians = legit.groupby("card_id")["amount"].median()
    assert medians.quantile(0.95) / medians.quantile(0.05) > 5
    # Cards mostly return to a small set of merchants.
    top = legit.groupby(["card_id", "merchant_id"]).size().groupby("card_id").max()
    assert (top / legit.groupby("card_id").size()).median() > 0.15


def test_iter_transactions_matches_generate() -> None:
    rows = list(iter_transactions(SMALL))
    expected = generate(SMALL).to_dict("records")
    assert rows == expected
    assert set(rows[0]) == set(WIRE_FIELDS) | {"is_fraud", "fraud_type"}
    assert type(rows[0]["amount"]) is float and type(rows[0]["is_fraud"]) is int


@pytest.mark.parametrize("n_rows", [20_000, 200_000])
def test_config_for_rows_hits_the_target(n_rows: int) -> None:
    n = len(generate(config_for_rows(n_rows, seed=11)))
    assert 0.75 * n_rows <= n <= 1.25 * n_rows


def test_config_for_rows_short_horizon() -> None:
    cfg = config_for_rows(20_000, days=3.0)
    assert cfg.days == 3.0
    frame = generate(cfg)
    assert 15_000 <= len(frame) <= 25_000
    ts = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    assert ts.max() - ts.min() < pd.Timedelta(days=3)


def test_start_in_another_zone_and_tiny_runs() -> None:
    start = datetime.fromisoformat("2026-03-05T13:30:00-07:00")
    frame = generate(SimConfig(n_cards=50, n_merchants=20, days=0.5, start=start))
    ts = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    assert ts.min() >= pd.Timestamp(start) and ts.max() < pd.Timestamp(start + timedelta(hours=12))
    empty = generate(SimConfig(n_cards=1, n_merchants=1, days=0.001))
    assert list(empty.columns) == list(COLUMNS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"days": 0},
        {"n_cards": 0},
        {"start": datetime(2026, 1, 1)},  # naive on purpose
        {"followup_prob": 1.5},
        {"min_daily_rate": 3.0, "max_daily_rate": 1.0},
    ],
)
def test_invalid_config_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SimConfig(**kwargs)
