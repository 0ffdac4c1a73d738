"""Reading labelled transaction CSVs for training and evaluation.

Contract: required columns ``transaction_id, timestamp, card_id, merchant_id, amount, is_fraud``;
optional ``currency, merchant_category, channel, country`` and ``labelled_at`` (when the row's
label became known, ISO-8601 with a zone, not before ``timestamp``; empty if unknown); anything
else is ignored. Ids follow the wire contract (``model.schemas.ID_PATTERN``: printable, inner
spaces allowed, surrounding whitespace refused rather than trimmed); amounts are >= 0. Every row
that breaks the wire contract is excluded and counted by reason with its line numbers, so the
caller can report it (or refuse the file with ``strict``); nothing is dropped silently.

Timestamps without a zone are refused unless the caller names the zone they were written in
(``assume_timezone``): then each is read as that zone's wall-clock time (daylight saving
included), and a wall-clock time the zone skips or repeats is refused as ``ambiguous_local_time``.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, field
from datetime import timedelta, timezone, tzinfo
from pathlib import Path

import numpy as np
import pandas as pd

from model.errors import DatasetError
from model.features import CANONICAL_COLUMNS, parse_offsets_minutes
from model.schemas import CHANNELS, MAX_AMOUNT, MAX_ID_LENGTH

REQUIRED_COLUMNS = ("transaction_id", "timestamp", "card_id", "merchant_id", "amount", "is_fraud")
OPTIONAL_COLUMNS = ("currency", "merchant_category", "channel", "country", "labelled_at")
ID_COLUMNS = ("transaction_id", "card_id", "merchant_id")
#: Above this share of excluded rows, callers warn loudly: the data and the contract disagree.
LOUD_INVALID_SHARE = 0.01
_EXAMPLES_PER_REASON = 5
_EPOCH = pd.Timestamp(0, tz="UTC")
_ZONE_SUFFIX = r"(?:[Zz]|[+-]\d{2}:?\d{2})$"
_OFFSET = re.compile(r"^(?:UTC|GMT)?([+-])(\d{1,2}):?(\d{2})?$")


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

    @property
    def share(self) -> float:
        return self.count / self.total_rows if self.total_rows else 0.0

    def loud_warning(self, source: str | Path) -> str | None:
        """A warning to print prominently when more than :data:`LOUD_INVALID_SHARE` of the rows
        were excluded (None otherwise): the results then describe a different population."""
        if self.share <= LOUD_INVALID_SHARE:
            return None
        hint = (
            " Timestamps without a zone: give --assume-timezone ZONE."
            if "timestamp_without_zone" in self.by_reason
            else ""
        )
        return (
            f"WARNING: {self.share:.1%} of the rows of {source} were EXCLUDED ({self.count} of {self.total_rows}); "
            f"metrics and the model describe the rest only. {self.summary()}.{hint}"
        )


@dataclass
class Dataset:
    """Valid rows as a canonical frame (sorted by time) plus ``is_fraud``, ``timestamp`` (UTC)."""

    frame: pd.DataFrame
    invalid: InvalidRows

    @property
    def labels(self) -> np.ndarray:
        return self.frame["is_fraud"].to_numpy(dtype=np.int64)


def resolve_timezone(name: str) -> tzinfo:
    """A zone by IANA name (``Europe/Paris``, ``UTC``) or fixed offset (``+02:00``, ``-0530``)."""
    fixed = _OFFSET.match(name.strip())
    if fixed:
        sign, hours, minutes = fixed.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes or 0))
        if delta >= timedelta(hours=24):
            raise ValueError(f"UTC offset out of range: {name!r}")
        return timezone(-delta if sign == "-" else delta)
    try:
        return zoneinfo.ZoneInfo(name.strip())
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {name!r} (an IANA name such as Europe/Paris, or an offset such as +02:00)"
        ) from exc


def load_csv(path: str | Path, *, strict: bool = False, assume_timezone: tzinfo | None = None) -> Dataset:
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
    raw = raw.loc[:, [*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS]]
    # Ids are kept as written (surrounding whitespace is an error, not trimmed); the rest is trimmed.
    raw = raw.apply(lambda s: s if s.name in ID_COLUMNS else s.str.strip())
    dataset = validate_frame(raw, first_line=2, assume_timezone=assume_timezone)
    if strict and dataset.invalid.count:
        raise DatasetError(f"{path}: {dataset.invalid.summary()}")
    if dataset.frame.empty:
        raise DatasetError(f"{path}: no valid rows ({dataset.invalid.summary()})")
    return dataset


def _parse_times(col: pd.Series, zone: tzinfo | None) -> tuple[pd.Series, np.ndarray, np.ndarray, np.ndarray]:
    """UTC instants (NaT where unreadable), UTC offsets in minutes, and which rows have no zone
    and which of those the assumed zone skips or repeats (daylight saving)."""
    ts = pd.to_datetime(col, utc=True, errors="coerce", format="ISO8601")
    has_zone = col.str.contains(_ZONE_SUFFIX, regex=True).to_numpy()
    offsets = np.zeros(len(col), dtype=np.int64)
    zoned = has_zone & ts.notna().to_numpy()
    if zoned.any():
        offsets[zoned] = parse_offsets_minutes(col[zoned])
    naive = ~has_zone & ts.notna().to_numpy()
    ambiguous = np.zeros(len(col), dtype=bool)
    if zone is not None and naive.any():
        wall = pd.DatetimeIndex(pd.to_datetime(col[naive], format="ISO8601"))
        local = wall.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
        instants = local.tz_convert("UTC")
        ts = ts.copy()
        ts[naive] = instants
        offsets[naive] = ((wall - instants.tz_localize(None)) // pd.Timedelta(minutes=1)).fillna(0).to_numpy(np.int64)
        ambiguous[naive] = local.isna()
        naive[:] = False
    return ts, offsets, naive, ambiguous


def _bad_ids(col: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blank ids, ids with surrounding whitespace, and otherwise invalid ids (not printable, too
    long): ``model.schemas.ID_PATTERN`` in vectorised Python."""
    blank = (col.str.strip() == "").to_numpy()
    padded = ~blank & (col != col.str.strip()).to_numpy()
    printable = np.fromiter(map(str.isprintable, col), dtype=bool, count=len(col))
    printable &= (col.str.len() <= MAX_ID_LENGTH).to_numpy()
    return blank, padded, ~blank & ~padded & ~printable


def validate_frame(raw: pd.DataFrame, *, first_line: int = 2, assume_timezone: tzinfo | None = None) -> Dataset:
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

    for c in ID_COLUMNS:
        blank, padded, bad_id = _bad_ids(raw[c])
        reject(f"empty_{c}", blank)
        reject(f"{c}_surrounding_whitespace", padded)
        reject(f"bad_{c}", bad_id)
    ts, offsets, naive, ambiguous = _parse_times(raw["timestamp"], assume_timezone)
    reject("timestamp_without_zone", naive)
    reject("ambiguous_local_time", ambiguous)
    reject("bad_timestamp", ts.isna().to_numpy())
    amount = pd.to_numeric(raw["amount"], errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        reject("bad_amount", ~np.isfinite(amount) | ~(amount >= 0) | (amount > MAX_AMOUNT))
    label = raw["is_fraud"].str.lower().map({"0": 0, "1": 1, "true": 1, "false": 0, "0.0": 0, "1.0": 1})
    reject("bad_is_fraud", label.isna().to_numpy())
    labelled, _, labelled_naive, _ = _parse_times(raw["labelled_at"], assume_timezone)
    given = (raw["labelled_at"] != "").to_numpy()
    with np.errstate(invalid="ignore"):
        reject(
            "bad_labelled_at",
            given & (labelled.isna().to_numpy() | labelled_naive | (labelled < ts).to_numpy(dtype=bool)),
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
            "utc_offset_min": offsets[ok],
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
