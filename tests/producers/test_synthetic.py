# ruff: noqa: S101
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.dataset import load_csv
from model.schemas import CHANNELS, MERCHANT_CATEGORIES, Label, Transaction
from producers.synthetic import (
    COLUMNS,
    CSV_LABEL_COLUMNS,
    FRAUD_TYPES,
    LABEL_COLUMNS,
    WIRE_FIELDS,
    SimConfig,
    config_for_rows,
    generate,
    iter_transactions,
    labels_for,
    with_label_columns,
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

    assert (frame["amount"] >= 0).all()
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


def test_zero_and_tiny_amounts_are_card_testing_and_verifications(enriched: pd.DataFrame) -> None:
    zero = enriched["amount"] == 0
    # 0.00 appears in fraud (card testing) and in genuine e-commerce (a card put on file), so a
    # zero amount alone does not decide.
    assert zero[enriched["is_fraud"] == 1].sum() >= 20
    assert zero[enriched["is_fraud"] == 0].sum() >= 200
    assert set(enriched.loc[zero & (enriched["is_fraud"] == 1), "fraud_type"]) <= {"velocity_burst", "compromised_card"}
    assert (enriched.loc[zero & (enriched["is_fraud"] == 0), "channel"] == "ecommerce").all()
    # A genuine verification precedes a purchase by the same card at the same merchant within minutes.
    legit = enriched[enriched["is_fraud"] == 0].sort_values("ts", kind="stable")
    nxt = legit.groupby(["card_id", "merchant_id"])[["ts", "amount"]].shift(-1)
    verified = legit.loc[legit["amount"] == 0]
    gap = (nxt.loc[verified.index, "ts"] - verified["ts"]).dt.total_seconds()
    assert (gap.dropna() <= 300).mean() > 0.8
    testing = enriched[(enriched["fraud_type"] == "velocity_burst") & (enriched["amount"] < 2.01)]
    assert (testing["amount"] == 0).mean() > 0.2 and (testing["amount"].between(0.01, 0.99)).sum() > 20


def test_one_off_frauds_look_ordinary_but_for_the_merchant(enriched: pd.DataFrame) -> None:
    one = enriched[enriched["fraud_type"] == "one_off"]
    assert len(one) >= 10
    assert (one["channel"] == "ecommerce").all()
    assert one["night"].mean() < 0.2  # the cardholder's own hours
    assert 0.5 < one["rel_amount"].median() < 5  # within the card's range, not an outlier
    # One transaction per event: a card's one-off frauds are days apart, and the card lives on.
    last_legit = enriched[enriched["is_fraud"] == 0].groupby("card_id")["ts"].max()
    assert (last_legit.loc[one["card_id"]].to_numpy() > one["ts"].to_numpy()).mean() > 0.5


def test_merchant_compromises_vary_in_length_and_intensity(frame: pd.DataFrame) -> None:
    big = generate(replace(DEFAULT, n_merchants=2000, n_cards=4000, days=60.0, seed=9))
    cm = big[big["fraud_type"] == "compromised_merchant"]
    ts = pd.to_datetime(cm["timestamp"], utc=True, format="ISO8601")
    span = ts.groupby(cm["merchant_id"]).agg(lambda s: (s.max() - s.min()).total_seconds() / 86_400)
    assert span.min() < 3 and span.max() > 25  # hit-and-run and long-running
    all_ts = pd.to_datetime(big["timestamp"], utc=True, format="ISO8601")
    share = []
    for m, s in ts.groupby(cm["merchant_id"]):
        at = (big["merchant_id"] == m) & all_ts.between(s.min(), s.max())
        share.append(big.loc[at, "is_fraud"].mean())
    assert min(share) < 0.1 and max(share) > 0.3


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


# --- delayed labels ------------------------------------------------------------------------


def _delay_days(labels: pd.DataFrame) -> pd.Series:
    ts = pd.to_datetime(labels["timestamp"], utc=True, format="ISO8601")
    known = pd.to_datetime(labels["labelled_at"], utc=True, format="ISO8601")
    return (known - ts).dt.total_seconds() / 86_400


@pytest.fixture(scope="module")
def labels(frame: pd.DataFrame) -> pd.DataFrame:
    return labels_for(frame, DEFAULT)


def test_label_settings_never_change_the_transactions() -> None:
    other = replace(SMALL, label_delay_days=2.0, legit_label_share=0.5)
    a = generate(SMALL)
    labels_for(a, SMALL)
    pd.testing.assert_frame_equal(a, generate(other))
    pd.testing.assert_frame_equal(a, generate(SMALL))


def test_every_fraud_is_labelled_and_some_genuine_rows_are(frame: pd.DataFrame, labels: pd.DataFrame) -> None:
    assert list(labels.columns) == list(LABEL_COLUMNS)
    assert labels["transaction_id"].is_unique
    fraud_ids = set(frame.loc[frame["is_fraud"] == 1, "transaction_id"])
    assert set(labels.loc[labels["is_fraud"], "transaction_id"]) == fraud_ids
    genuine = labels.loc[~labels["is_fraud"]]
    assert set(genuine["source"]) == {"investigation"}
    assert not set(genuine["transaction_id"]) & fraud_ids
    n_genuine = int((frame["is_fraud"] == 0).sum())
    share = len(genuine) / n_genuine
    sd = (DEFAULT.legit_label_share * (1 - DEFAULT.legit_label_share) / n_genuine) ** 0.5
    assert abs(share - DEFAULT.legit_label_share) < 5 * sd
    # Each label names its transaction's own card, merchant and timestamp.
    joined = labels.merge(frame, on="transaction_id", suffixes=("", "_tx"))
    assert len(joined) == len(labels)
    for c in ("card_id", "merchant_id", "timestamp"):
        assert (joined[c] == joined[f"{c}_tx"]).all(), c
    assert (joined["is_fraud"] == (joined["is_fraud_tx"] == 1)).all()


def test_labels_follow_the_contract_and_come_in_labelled_at_order(labels: pd.DataFrame) -> None:
    known = pd.to_datetime(labels["labelled_at"], utc=True, format="ISO8601")
    assert known.is_monotonic_increasing
    assert (_delay_days(labels) >= 0).all()
    # labelled_at is written in the transaction's own offset.
    assert (labels["labelled_at"].str.slice(-6) == labels["timestamp"].str.slice(-6)).all()
    for row in labels.sample(500, random_state=1).to_dict("records"):
        label = Label.model_validate(row)
        assert label.labelled_at >= label.timestamp
        assert type(row["is_fraud"]) is bool


def test_label_delays_are_realistic_per_source(labels: pd.DataFrame) -> None:
    delay = _delay_days(labels)
    fraud = labels["is_fraud"]
    sources = labels.loc[fraud, "source"].value_counts(normalize=True)
    assert set(sources.index) == {"customer_confirmed", "investigation", "chargeback"}
    assert sources["chargeback"] > 0.4 and sources["customer_confirmed"] > 0.1 and sources["investigation"] > 0.1
    by_source = delay.groupby([fraud, labels["source"]])
    confirmed, investigated = (
        by_source.get_group((True, "customer_confirmed")),
        delay[labels["source"] == "investigation"],
    )
    assert confirmed.min() >= 1 / 24 - 1e-6 and confirmed.max() <= 2 + 1e-6
    assert confirmed.median() < 1  # hours, not days
    assert investigated.min() >= 1 - 1e-6 and investigated.max() <= 5 + 1e-6
    chargeback = by_source.get_group((True, "chargeback"))
    assert chargeback.median() > 2 * DEFAULT.label_delay_days  # weeks
    assert chargeback.quantile(0.9) > 40 and chargeback.max() <= 120  # a tail of months, within the dispute window
    # The median fraud label arrives about label_delay_days after the transaction.
    assert abs(delay[fraud].median() - DEFAULT.label_delay_days) < 1.5


@pytest.mark.parametrize("days", [0.5, 2.0, 7.0, 20.0])
def test_median_fraud_label_delay_is_label_delay_days(frame: pd.DataFrame, days: float) -> None:
    # Every row labelled fraud: over 100k delays, the sample median is tight.
    all_fraud = frame.assign(is_fraud=1)
    delay = _delay_days(labels_for(all_fraud, replace(DEFAULT, label_delay_days=days)))
    assert len(delay) == len(frame)
    assert delay.median() == pytest.approx(days, rel=0.03)


def test_labels_are_deterministic_and_prefix_stable(frame: pd.DataFrame, labels: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(labels_for(frame, DEFAULT), labels)
    # A row's label depends on the seed and its position only: a prefix gets the prefix's labels.
    head = frame.iloc[:20_000]
    expected = labels.loc[labels["transaction_id"].isin(head["transaction_id"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(labels_for(head, DEFAULT), expected)
    other = labels_for(frame, replace(DEFAULT, seed=8))
    assert not other["labelled_at"].equals(labels["labelled_at"])


def test_csv_label_columns_round_trip_through_the_loader(
    frame: pd.DataFrame, labels: pd.DataFrame, tmp_path: Path
) -> None:
    out = with_label_columns(frame, labels)
    assert list(out.columns) == [*COLUMNS, *CSV_LABEL_COLUMNS]
    pd.testing.assert_frame_equal(out[list(COLUMNS)], frame)
    has = out["labelled_at"] != ""
    assert has.sum() == len(labels)
    assert (out.loc[has, "label_source"] != "").all() and (out.loc[~has, "label_source"] == "").all()
    assert (out.loc[out["is_fraud"] == 1, "labelled_at"] != "").all()
    by_id = labels.set_index("transaction_id")
    sample = out.loc[has].sample(200, random_state=2)
    assert (sample["labelled_at"].to_numpy() == by_id.loc[sample["transaction_id"], "labelled_at"].to_numpy()).all()
    assert (sample["label_source"].to_numpy() == by_id.loc[sample["transaction_id"], "source"].to_numpy()).all()
    # The training loader reads such a file without excluding any row.
    path = tmp_path / "labelled.csv"
    out.to_csv(path, index=False)
    back = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert back["labelled_at"].tolist() == out["labelled_at"].tolist()
    dataset = load_csv(path, strict=True)
    assert len(dataset.frame) == len(frame)


def test_tiny_and_empty_frames_get_labels() -> None:
    empty = generate(SimConfig(n_cards=1, n_merchants=1, days=0.001))
    assert list(labels_for(empty, DEFAULT).columns) == list(LABEL_COLUMNS)
    assert labels_for(empty.iloc[:0], DEFAULT).empty


@pytest.mark.parametrize("kwargs", [{"label_delay_days": 0.0}, {"label_delay_days": -1.0}, {"legit_label_share": 1.5}])
def test_invalid_label_settings_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SimConfig(**kwargs)
