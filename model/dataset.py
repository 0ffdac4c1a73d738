"""Reading labelled transaction CSVs for training and evaluation.

Contract: required columns ``transaction_id, timestamp, card_id, merchant_id, amount, is_fraud``;
optional ``currency, merchant_category, channel, country`` and ``labelled_at`` (when the row's
label became known, ISO-8601 with a zone, not before ``timestamp``; empty if unknown); anything
else is ignored. Every row
that breaks the wire contract is excluded and counted by reason with its line numbers, so the
caller can report it (or refuse the file with ``strict``); nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from model.errors import DatasetError
from model.features import CANONICAL_COLUMNS, parse_offsets_minutes
from model.schemas import CHANNELS, ID_PATTERN, MAX_AMOUNT

REQUIRED_COLUMNS = ("transaction_id", "timestamp", "card_id", "merchant_id", "amount", "is_fraud")
OPTIONAL_COLUMNS = ("currency", "merchant_category", "channel", "country", "labelled_at")
_EXAMPLES_PER_REASON = 5
_EPOCH = pd.Timestamp(0, tz="UTC")


@dataclass
class InvalidRows:
    """Rows excluded from a dataset, by reason, with a few 1-based CSV line numbers each."""

    total_rows: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(self.by_reason.values())

    def add(self, reason: str, mask: np.ndarray, lines: np.ndarray) -> None:
        n = int(mask.sum())
        if n:
            self.by_reason[reason] = self.by_reason.get(reason, 0) + n
            self.examples.setdefault(reason, []).extend(lines[mask][:_EXAMPLES_PER_REASON].tolist())

    def summary(self) -> str:
        if not self.count:
            return f"{self.total_rows} rows, all valid"
        parts = [
            f"{reason}: {n} (lines {', '.join(map(str, self.examples[reason]))}{', ...' if n > 5 else ''})"
            for reason, n in sorted(self.by_reason.items(), key=lambda kv: -kv[1])
        ]
        return f"{self.total_rows} rows, {self.count} invalid and excluded: " + "; ".join(parts)

    def as_dict(self) -> dict[str, object]:
        return {"total_rows": self.total_rows, "invalid_rows": self.count, "by_reason": dict(self.by_reason)}


@dataclass
class Dataset:
    """Valid rows as a canonical frame (sorted by time) plus ``is_fraud``, ``timestamp`` (UTC)."""

    frame: pd.DataFrame
    invalid: InvalidRows

    @property
    def labels(self) -> np.ndarray:
        return self.frame["is_fraud"].to_numpy(dtype=np.int64)


def load_csv(path: str | Path, *, strict: bool = False) -> Dataset:
    """Read and validate a labelled CSV; see the module docstring for the contract."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{path}: cannot read CSV: {exc}") from exc
    raw.columns = [c.strip() for c in raw.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise DatasetError(f"{path}: missing required column(s): {', '.join(missing)}")
    for c in OPTIONAL_COLUMNS:
        if c not in raw.columns:
            raw[c] = ""
    raw = raw.loc[:, [*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS]].apply(lambda s: s.str.strip())
    dataset = validate_frame(raw, first_line=2)
    if strict and dataset.invalid.count:
        raise DatasetError(f"{path}: {dataset.invalid.summary()}")
    if dataset.frame.empty:
        raise DatasetError(f"{path}: no valid rows ({dataset.invalid.summary()})")
    return dataset


def validate_frame(raw: pd.DataFrame, *, first_line: int = 2) -> Dataset:
    """Validate string columns row by row (vectorised) and build the canonical frame."""
    n = len(raw)
    invalid = InvalidRows(total_rows=n)
    lines = np.arange(first_line, first_line + n)
    bad = np.zeros(n, dtype=bool)

    def reject(reason: str, mask: np.ndarray) -> None:
        nonlocal bad
        new = mask & ~bad
        invalid.add(reason, new, lines)
        bad |= new

    for c in ("transaction_id", "card_id", "merchant_id"):
        reject(f"empty_{c}", (raw[c] == "").to_numpy())
        reject(f"bad_{c}", ~raw[c].str.fullmatch(ID_PATTERN[1:-1]).to_numpy(dtype=bool))
    ts = pd.to_datetime(raw["timestamp"], utc=True, errors="coerce", format="ISO8601")
    has_zone = raw["timestamp"].str.contains(r"(?:[Zz]|[+-]\d{2}:?\d{2})$", regex=True).to_numpy()
    reject("bad_timestamp", ts.isna().to_numpy() | ~has_zone)
    amount = pd.to_numeric(raw["amount"], errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        reject("bad_amount", ~np.isfinite(amount) | ~(amount > 0) | (amount > MAX_AMOUNT))
    label = raw["is_fraud"].str.lower().map({"0": 0, "1": 1, "true": 1, "false": 0, "0.0": 0, "1.0": 1})
    reject("bad_is_fraud", label.isna().to_numpy())
    labelled = pd.to_datetime(raw["labelled_at"].replace("", None), utc=True, errors="coerce", format="ISO8601")
    given = (raw["labelled_at"] != "").to_numpy()
    labelled_zone = raw["labelled_at"].str.contains(r"(?:[Zz]|[+-]\d{2}:?\d{2})$", regex=True).to_numpy()
    with np.errstate(invalid="ignore"):
        reject(
            "bad_labelled_at",
            given & (labelled.isna().to_numpy() | ~labelled_zone | (labelled < ts).to_numpy(dtype=bool)),
        )
    channel = raw["channel"].str.lower()
    reject("bad_channel", ~(channel.isin(CHANNELS) | (channel == "")).to_numpy())
    # Duplicates are judged among the rows still valid: a row whose only earlier twin was itself
    # rejected (the stream would dead-letter that one and score this one) must be kept, not
    # excluded as a "duplicate" of a row that is not in the dataset.
    dup = np.zeros(n, dtype=bool)
    dup[~bad] = raw["transaction_id"].loc[~bad].duplicated(keep="first").to_numpy()
    reject("duplicate_transaction_id", dup)

    ok = ~bad
    good = raw.loc[ok]
    frame = pd.DataFrame(
        {
            "transaction_id": good["transaction_id"].to_numpy(),
            "card_id": good["card_id"].to_numpy(),
            "merchant_id": good["merchant_id"].to_numpy(),
            "ts_ms": ((ts[ok] - _EPOCH) // pd.Timedelta(milliseconds=1)).to_numpy(dtype=np.int64),
            "utc_offset_min": parse_offsets_minutes(good["timestamp"]) if len(good) else np.zeros(0, np.int64),
            "amount": amount[ok],
            "channel": channel[ok].replace("", None).to_numpy(),
            "merchant_category": good["merchant_category"].replace("", None).to_numpy(),
            "currency": good["currency"].str.upper().to_numpy(),
            "country": good["country"].str.upper().to_numpy(),
            "timestamp": ts[ok].reset_index(drop=True),
            "is_fraud": label[ok].astype(np.int64).to_numpy(),
            # When the label became known (ms since the epoch), -1 when the CSV does not say.
            "labelled_ms": ((labelled[ok] - _EPOCH) // pd.Timedelta(milliseconds=1))
            .fillna(-1)
            .to_numpy(dtype=np.int64),
        }
    )
    # Stable sort keeps file order among equal timestamps, the order a replay would publish.
    frame = frame.sort_values("ts_ms", kind="stable").reset_index(drop=True)
    assert set(CANONICAL_COLUMNS) <= set(frame.columns)  # noqa: S101 - internal invariant
    return Dataset(frame=frame, invalid=invalid)


def select_window(frame: pd.DataFrame, start: pd.Timestamp | None, end: pd.Timestamp | None) -> np.ndarray:
    """Boolean mask of rows with ``start <= timestamp < end`` (either bound optional)."""
    mask = np.ones(len(frame), dtype=bool)
    ts = frame["ts_ms"].to_numpy()
    if start is not None:
        mask &= ts >= start.value // 1_000_000
    if end is not None:
        mask &= ts < end.value // 1_000_000
    return mask
