"""CSV loading: required columns, row validation counted by reason and line, canonical output."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.dataset import REQUIRED_COLUMNS, DatasetError, load_csv, select_window
from model.errors import FraudStreamError, UserInputError
from model.features import CANONICAL_COLUMNS

HEADER = [
    "transaction_id",
    "timestamp",
    "card_id",
    "merchant_id",
    "amount",
    "is_fraud",
    "currency",
    "merchant_category",
    "channel",
    "country",
]


def row(
    tid: str = "t",
    ts: str = "2026-01-01T10:00:00+00:00",
    card: str = "c1",
    merchant: str = "m1",
    amount: str = "12.50",
    fraud: str = "0",
    currency: str = "eur",
    category: str = "grocery",
    channel: str = "pos",
    country: str = "fr",
) -> list[str]:
    return [tid, ts, card, merchant, amount, fraud, currency, category, channel, country]


def write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.mark.parametrize("column", REQUIRED_COLUMNS)
def test_missing_required_column_is_named(tmp_path: Path, column: str) -> None:
    keep = [i for i, c in enumerate(HEADER) if c != column]
    path = write(tmp_path / "x.csv", [HEADER[i] for i in keep], [[row()[i] for i in keep]])
    with pytest.raises(DatasetError, match=rf"missing required column\(s\): {column}$"):
        load_csv(path)


def test_several_missing_columns_are_all_named(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", ["transaction_id", "timestamp", "card_id"], [["a", "b", "c"]])
    with pytest.raises(DatasetError) as exc:
        load_csv(path)
    for column in ("merchant_id", "amount", "is_fraud"):
        assert column in str(exc.value)


def test_unreadable_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        load_csv(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatasetError, match="cannot read"):
        load_csv(tmp_path / "empty.csv")


def test_an_unusable_file_is_the_users_error_in_the_projects_tree_not_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(UserInputError) as raised:
        load_csv(tmp_path / "nope.csv")
    # The CLI reports UserInputError in one line (status 2) and lets a plain ValueError, a bug, through.
    assert isinstance(raised.value, FraudStreamError) and not isinstance(raised.value, ValueError)
    assert raised.value.status_code == 400


INVALID = [
    # (row, reason) -- the file line of entry i is i + 3 (header is line 1, a valid row is line 2).
    (row(tid=""), "empty_transaction_id"),
    (row(tid="e1", card=""), "empty_card_id"),
    (row(tid="e2", merchant="  "), "empty_merchant_id"),
    (row(tid="b1", ts="yesterday"), "bad_timestamp"),
    (row(tid="b2", ts="2026-01-01T10:00:00"), "bad_timestamp"),  # no zone
    (row(tid="b3", ts="2026-02-30T10:00:00Z"), "bad_timestamp"),
    (row(tid="b4", ts=""), "bad_timestamp"),
    (row(tid="a1", amount="0"), "bad_amount"),
    (row(tid="a2", amount="-1"), "bad_amount"),
    (row(tid="a3", amount="nan"), "bad_amount"),
    (row(tid="a4", amount="inf"), "bad_amount"),
    (row(tid="a5", amount="abc"), "bad_amount"),
    (row(tid="a6", amount=""), "bad_amount"),
    (row(tid="a7", amount="-inf"), "bad_amount"),
    (row(tid="f1", fraud="maybe"), "bad_is_fraud"),
    (row(tid="f2", fraud="2"), "bad_is_fraud"),
    (row(tid="f3", fraud=""), "bad_is_fraud"),
    (row(tid="c1", channel="phone"), "bad_channel"),
    (row(tid="ok"), "duplicate_transaction_id"),  # same id as line 2
]


def test_invalid_rows_are_counted_by_reason_with_lines_and_excluded(tmp_path: Path) -> None:
    valid_last = row(tid="ok2", ts="2026-01-02T10:00:00Z", fraud="true", channel="ATM")
    rows = [row(tid="ok"), *(r for r, _ in INVALID), valid_last]
    ds = load_csv(write(tmp_path / "x.csv", HEADER, rows))

    expected_lines: dict[str, list[int]] = {}
    for i, (_, reason) in enumerate(INVALID):
        expected_lines.setdefault(reason, []).append(i + 3)
    assert ds.invalid.by_reason == {reason: len(lines) for reason, lines in expected_lines.items()}
    assert ds.invalid.examples == {reason: lines[:5] for reason, lines in expected_lines.items()}
    assert ds.invalid.total_rows == len(rows)
    assert ds.invalid.count == len(INVALID)
    assert ds.invalid.as_dict() == {
        "total_rows": len(rows),
        "invalid_rows": len(INVALID),
        "by_reason": ds.invalid.by_reason,
    }
    summary = ds.invalid.summary()
    assert "bad_amount: 7 (lines 10, 11, 12, 13, 14, ...)" in summary
    assert "duplicate_transaction_id: 1 (lines 21)" in summary

    assert ds.frame["transaction_id"].tolist() == ["ok", "ok2"]
    assert ds.labels.tolist() == [0, 1]
    assert ds.frame["channel"].tolist() == ["pos", "atm"]  # lower-cased
    assert ds.frame["currency"].tolist() == ["EUR", "EUR"]
    assert ds.frame["country"].tolist() == ["FR", "FR"]


def test_row_with_several_problems_counts_once(tmp_path: Path) -> None:
    rows = [row(tid="ok"), row(tid="", ts="bad", amount="-3", fraud="x", channel="fax")]
    ds = load_csv(write(tmp_path / "x.csv", HEADER, rows))
    assert ds.invalid.by_reason == {"empty_transaction_id": 1}
    assert ds.invalid.count == 1


def test_duplicate_of_an_invalid_row_is_kept(tmp_path: Path) -> None:
    # The first "x" is excluded for its amount, so the second is the only valid row with that id
    # (what the stream would do: dead-letter the first, score the second).
    rows = [row(tid="ok"), row(tid="x", amount="-1"), row(tid="x", amount="5"), row(tid="ok", amount="7")]
    ds = load_csv(write(tmp_path / "x.csv", HEADER, rows))
    assert ds.invalid.by_reason == {"bad_amount": 1, "duplicate_transaction_id": 1}
    assert ds.invalid.examples == {"bad_amount": [3], "duplicate_transaction_id": [5]}
    assert sorted(ds.frame["transaction_id"]) == ["ok", "x"]
    assert ds.frame.set_index("transaction_id").loc["x", "amount"] == 5.0


def test_strict_refuses_any_invalid_row(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", HEADER, [row(tid="ok"), row(tid="bad", amount="0")])
    assert load_csv(path).invalid.count == 1
    with pytest.raises(DatasetError, match="bad_amount: 1 \\(lines 3\\)"):
        load_csv(path, strict=True)
    clean = write(tmp_path / "clean.csv", HEADER, [row(tid="ok")])
    assert len(load_csv(clean, strict=True).frame) == 1


def test_no_valid_rows_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", HEADER, [row(tid="a", amount="0"), row(tid="b", ts="x")])
    with pytest.raises(DatasetError, match="no valid rows"):
        load_csv(path)


def test_extra_columns_ignored_and_header_whitespace_stripped(tmp_path: Path) -> None:
    header = [f" {c} " for c in HEADER] + ["fraud_type", "notes"]
    path = write(tmp_path / "x.csv", header, [[*row(tid="a"), "velocity_burst", "hello, world"]])
    ds = load_csv(path)
    assert ds.invalid.count == 0
    assert "fraud_type" not in ds.frame.columns and "notes" not in ds.frame.columns
    assert set(CANONICAL_COLUMNS) <= set(ds.frame.columns)


def test_optional_columns_may_be_missing(tmp_path: Path) -> None:
    header = list(REQUIRED_COLUMNS)
    rows = [["a", "2026-01-01T10:00:00+05:30", "c", "m", "3.5", "1"]]
    ds = load_csv(write(tmp_path / "x.csv", header, rows))
    assert ds.invalid.count == 0
    f = ds.frame
    assert pd.isna(f.loc[0, "channel"])
    assert pd.isna(f.loc[0, "merchant_category"])
    assert f.loc[0, "utc_offset_min"] == 330
    assert f.loc[0, "ts_ms"] == pd.Timestamp("2026-01-01T04:30:00Z").value // 1_000_000
    assert f.loc[0, "amount"] == 3.5 and ds.labels.tolist() == [1]


def test_labels_accept_documented_spellings(tmp_path: Path) -> None:
    spellings = {"0": 0, "1": 1, "true": 1, "FALSE": 0, "1.0": 1, "0.0": 0, " 1 ": 1}
    rows = [row(tid=f"t{i}", fraud=s) for i, s in enumerate(spellings)]
    ds = load_csv(write(tmp_path / "x.csv", HEADER, rows))
    assert ds.invalid.count == 0
    assert ds.labels.tolist() == list(spellings.values())


def test_output_sorted_by_instant_not_by_string(tmp_path: Path) -> None:
    rows = [
        row(tid="late", ts="2026-01-01T09:00:00-08:00"),  # 17:00 UTC
        row(tid="early", ts="2026-01-01T12:00:00+05:30"),  # 06:30 UTC
        row(tid="tie1", ts="2026-01-01T10:00:00Z"),
        row(tid="mid", ts="2026-01-01T16:00:00+00:00"),
        row(tid="tie2", ts="2026-01-01T15:30:00+05:30"),  # same instant as tie1
    ]
    ds = load_csv(write(tmp_path / "x.csv", HEADER, rows))
    assert ds.frame["transaction_id"].tolist() == ["early", "tie1", "tie2", "mid", "late"]
    assert np.all(np.diff(ds.frame["ts_ms"].to_numpy()) >= 0)
    assert ds.frame["utc_offset_min"].tolist() == [330, 0, 330, 0, -480]
    # The UTC timestamp column agrees with ts_ms after sorting.
    since_epoch = ds.frame["timestamp"] - pd.Timestamp(0, tz="UTC")
    assert (since_epoch // pd.Timedelta(milliseconds=1)).tolist() == ds.frame["ts_ms"].tolist()
    assert ds.frame.index.tolist() == list(range(5))


def test_sort_is_stable_among_many_equal_timestamps(tmp_path: Path) -> None:
    # Enough ties that an unstable sort would visibly reorder them: file order must survive.
    rows = []
    for i in range(120):
        ts = "2026-01-01T10:00:00Z" if i % 2 else "2026-01-01T15:30:00+05:30"  # the same instant
        rows.append(row(tid=f"t{119 - i:03d}", ts=ts))
    rows.append(row(tid="first", ts="2026-01-01T09:59:59.999Z"))
    ds = load_csv(write(tmp_path / "x.csv", HEADER, rows))
    assert ds.frame["transaction_id"].tolist() == ["first", *(f"t{119 - i:03d}" for i in range(120))]


def test_select_window_is_half_open(tmp_path: Path) -> None:
    rows = [row(tid=f"t{h}", ts=f"2026-01-01T{h:02d}:00:00Z") for h in range(6)]
    frame = load_csv(write(tmp_path / "x.csv", HEADER, rows)).frame
    mask = select_window(frame, pd.Timestamp("2026-01-01T01:00:00Z"), pd.Timestamp("2026-01-01T04:00:00+00:00"))
    assert frame.loc[mask, "transaction_id"].tolist() == ["t1", "t2", "t3"]
    assert select_window(frame, None, None).all()
    assert frame.loc[
        select_window(frame, None, pd.Timestamp("2026-01-01T06:30:00+05:30")), "transaction_id"
    ].tolist() == ["t0"]
