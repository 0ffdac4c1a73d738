"""The one feature implementation, shared by training (whole CSV) and the stream (one batch).

Both paths call :func:`compute_features` with a frame of transactions to score ("queries") and a
frame of card history. Training passes the whole CSV as both; the worker passes its batch as the
queries and, as history, the card state read from its table plus the batch itself. The windows
are half-open, ``[t - W, t)``: a transaction never sees itself, nor anything stamped at or after
its own timestamp, so features use only what was known at the moment of the transaction, and
replaying transactions in timestamp order through the worker gives the same values as the
batch path.

History aggregates are computed on integer cents so that sums are exact and independent of the
order in which the two paths happened to add them up.

Merchant risk and known-fraud features come from a :class:`RiskContext`: per-merchant daily
transaction counts (and how many came from cards new at the merchant) and the fraud labels known
so far. Merchant windows are whole UTC days, by the transaction's day d:

* activity (no labels needed): counts over the W days that end :data:`MERCHANT_DELAY_DAYS` day
  before d (days d-1-W .. d-2); for the 1- and 7-day windows, their daily mean against the
  30-day window's, and the share of their transactions from cards with no transaction at the
  merchant in the 30 days before. Every partition's counts of a day have a whole day to reach
  every process, so the stream sums the same counts;
* fraud rates: frauds among the transactions of days d-D-W .. d-D-1, where D is the label delay
  (the model's ``label_delay_days``, in whole days, :func:`label_horizon_days`): days whose
  labels are complete, not days whose labels are still on their way, which would dilute them;
* known frauds: frauds among the merchant's transactions of the last W days, and the days since
  the latest, counting only labels known before day d. A label counts from the UTC day after
  it became known (another partition's labels, too, then have time to arrive);
* the card's own labels (stored with the card, so exact to the millisecond): how many became
  known in the last 7 days, and the days since the latest did (a card is usually reissued after
  a confirmed fraud; the model learns which way that points).

Training builds the context from the whole CSV (each fraud label available at its
``labelled_at``, else at the transaction time plus the label delay); the stream keeps the same
counts and labels in its state (``streaming/scoring``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from model.schemas import CHANNELS, MERCHANT_CATEGORIES, Transaction

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
#: Count/amount windows over the card's own history.
WINDOWS_MS: dict[str, int] = {"1h": HOUR_MS, "1d": DAY_MS, "7d": 7 * DAY_MS, "30d": 30 * DAY_MS}
#: Windows of the card's mean amount (and 1h of its amount sum).
_MEAN_WINDOWS = ("1d", "7d", "30d")
#: The longest look-back any feature needs; the stream keeps this much history per card.
HISTORY_SPAN_MS = max(WINDOWS_MS.values())
#: Columns a history frame carries (what the worker stores per card).
HISTORY_COLUMNS = ("transaction_id", "card_id", "merchant_id", "ts_ms", "amount")

#: Activity windows (label-free merchant counts) end this many whole UTC days before the scored
#: transaction's day: every partition's counts of a day have a whole day to reach every process.
MERCHANT_DELAY_DAYS = 1
#: Merchant activity windows, in whole UTC days.
MERCHANT_WINDOWS_DAYS: dict[str, int] = {"1d": 1, "7d": 7, "30d": 30}
#: The label delay D assumed when nothing says otherwise (the model's ``label_delay_days``).
DEFAULT_LABEL_DELAY_DAYS = 7
#: Fraud-rate windows end D whole days before the transaction's day, where labels are complete;
#: a longer delay is cut to this many days (the stream keeps only so many days per merchant).
MAX_LABEL_DELAY_DAYS = 14
#: Merchant fraud-rate windows (ending at the delay horizon), in whole UTC days.
LABELLED_WINDOWS_DAYS: dict[str, int] = {"1d": 1, "7d": 7, "30d": 30}
#: Windows of known frauds at a merchant, over its transactions of the last days up to today.
KNOWN_FRAUD_WINDOWS_DAYS: dict[str, int] = {"7d": 7, "30d": 30}
#: Whole days before its own day a transaction's merchant features reach (the stream keeps these):
#: nothing older counts, not even for the days since a merchant's last known fraud.
MERCHANT_SPAN_DAYS = MAX_LABEL_DELAY_DAYS + max(LABELLED_WINDOWS_DAYS.values())
#: A card's known frauds: its fraud labels that became known in this window before the transaction.
CARD_LABEL_WINDOWS_MS: dict[str, int] = {"7d": 7 * DAY_MS}
#: Days since a card's or merchant's last known fraud read this when there is none (or older).
CARD_LABEL_AGE_CAP_DAYS = 30.0
MERCHANT_LABEL_AGE_CAP_DAYS = float(MERCHANT_SPAN_DAYS + 1)
#: A card's labels that became known longer ago than this before a transaction change nothing
#: for it (the stream forgets them).
CARD_LABEL_SPAN_MS = max(round(CARD_LABEL_AGE_CAP_DAYS * DAY_MS), *CARD_LABEL_WINDOWS_MS.values())
#: Columns of a risk context's frames. ``new``: how many of a merchant's transactions that day
#: came from a card without an earlier transaction there in the 30 days before.
ACTIVITY_COLUMNS = ("merchant_id", "day", "count", "new")
FRAUD_LABEL_COLUMNS = ("transaction_id", "card_id", "merchant_id", "tx_day", "available_ms")

CATEGORY_LEVELS = (*MERCHANT_CATEGORIES, "other")
#: Activity windows compared with the merchant's 30-day daily mean.
_RATIO_WINDOWS = ("1d", "7d")
#: Whole days before its own day a transaction's new-card shares reach (the stream keeps these).
NEW_CARD_SPAN_DAYS = MERCHANT_DELAY_DAYS + max(MERCHANT_WINDOWS_DAYS[w] for w in _RATIO_WINDOWS)

FEATURE_NAMES: tuple[str, ...] = (
    "amount",
    "log_amount",
    "hour",
    "is_night",
    "is_weekend",
    *(f"channel_{c}" for c in CHANNELS),
    *(f"category_{c}" for c in CATEGORY_LEVELS),
    *(f"card_tx_count_{w}" for w in WINDOWS_MS),
    "card_amount_sum_1h",
    *(f"card_amount_mean_{w}" for w in _MEAN_WINDOWS),
    "amount_to_card_mean_30d",
    "seconds_since_prev_card_tx",
    "card_merchant_count_30d",
    *(f"merchant_tx_count_{w}" for w in MERCHANT_WINDOWS_DAYS),
    *(f"merchant_activity_ratio_{w}" for w in _RATIO_WINDOWS),
    *(f"merchant_new_card_share_{w}" for w in _RATIO_WINDOWS),
    *(f"merchant_fraud_rate_{w}" for w in LABELLED_WINDOWS_DAYS),
    *(f"merchant_known_frauds_{w}" for w in KNOWN_FRAUD_WINDOWS_DAYS),
    "merchant_days_since_known_fraud",
    *(f"card_known_frauds_{w}" for w in CARD_LABEL_WINDOWS_MS),
    "card_days_since_known_fraud",
)
#: The features that need labels or other cards' transactions (dropped by ``--without-merchant-risk``).
MERCHANT_RISK_FEATURES: tuple[str, ...] = tuple(
    f for f in FEATURE_NAMES if f.startswith("merchant_") or "known_fraud" in f
)

#: Each feature's column in the matrix, and the one-hot column of each channel and category.
COLUMN = {name: i for i, name in enumerate(FEATURE_NAMES)}
CHANNEL_COLUMN = {c: COLUMN[f"channel_{c}"] for c in CHANNELS}
CATEGORY_COLUMN = {c: COLUMN[f"category_{c}"] for c in MERCHANT_CATEGORIES}

_CARD_WINDOWS = np.array(list(WINDOWS_MS.values()), dtype=np.int64)
_CARD_COUNT_COLUMNS = [COLUMN[f"card_tx_count_{w}"] for w in WINDOWS_MS]
_SUM_1H = list(WINDOWS_MS).index("1h")
_MEAN_ROWS = [list(WINDOWS_MS).index(w) for w in _MEAN_WINDOWS]
_CARD_MEAN_COLUMNS = [COLUMN[f"card_amount_mean_{w}"] for w in _MEAN_WINDOWS]
_30D = list(WINDOWS_MS).index("30d")
#: The merchant features, in the order :func:`_merchant_features` computes them.
_MERCHANT_COLUMNS = [COLUMN[f] for f in FEATURE_NAMES if f.startswith("merchant_")]
_MERCHANT_WINDOWS = list(MERCHANT_WINDOWS_DAYS.values())
_RATIO_ROWS = [list(MERCHANT_WINDOWS_DAYS).index(w) for w in _RATIO_WINDOWS]
_LABELLED_WINDOWS = list(LABELLED_WINDOWS_DAYS.values())
_KNOWN_FRAUD_WINDOWS = list(KNOWN_FRAUD_WINDOWS_DAYS.values())
_CARD_LABEL_WINDOWS = np.array(list(CARD_LABEL_WINDOWS_MS.values()), dtype=np.int64)
_CARD_LABEL_COUNT_COLUMNS = [COLUMN[f"card_known_frauds_{w}"] for w in CARD_LABEL_WINDOWS_MS]

#: Stable reason codes, one per feature group; a decision's reasons are drawn from these.
REASON_GROUPS: dict[str, tuple[str, ...]] = {
    "amount_high": ("amount", "log_amount"),
    "unusual_hour": ("hour", "is_night"),
    "weekend": ("is_weekend",),
    "channel_risk": tuple(f"channel_{c}" for c in CHANNELS),
    "merchant_category_risk": tuple(f"category_{c}" for c in CATEGORY_LEVELS),
    "card_velocity_1h_high": ("card_tx_count_1h", "card_amount_sum_1h"),
    "card_velocity_1d_high": ("card_tx_count_1d",),
    "card_activity_unusual": ("card_tx_count_7d", "card_tx_count_30d"),
    "card_spend_level": ("card_amount_mean_1d", "card_amount_mean_7d", "card_amount_mean_30d"),
    "amount_unusual_for_card": ("amount_to_card_mean_30d",),
    "rapid_succession": ("seconds_since_prev_card_tx",),
    "new_merchant_for_card": ("card_merchant_count_30d",),
    "merchant_activity_unusual": (
        *(f"merchant_tx_count_{w}" for w in MERCHANT_WINDOWS_DAYS),
        *(f"merchant_activity_ratio_{w}" for w in _RATIO_WINDOWS),
    ),
    "merchant_new_cards_unusual": tuple(f"merchant_new_card_share_{w}" for w in _RATIO_WINDOWS),
    "merchant_recent_fraud_rate_high": tuple(f"merchant_fraud_rate_{w}" for w in LABELLED_WINDOWS_DAYS),
    "merchant_known_fraud_recent": (
        *(f"merchant_known_frauds_{w}" for w in KNOWN_FRAUD_WINDOWS_DAYS),
        "merchant_days_since_known_fraud",
    ),
    "card_known_compromised": (
        *(f"card_known_frauds_{w}" for w in CARD_LABEL_WINDOWS_MS),
        "card_days_since_known_fraud",
    ),
}

#: Columns of a canonical transaction frame, the input of :func:`compute_features`.
CANONICAL_COLUMNS = (
    "transaction_id",
    "card_id",
    "merchant_id",
    "ts_ms",
    "utc_offset_min",
    "amount",
    "channel",
    "merchant_category",
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: A frame as the features read it: a pandas DataFrame (training, whole CSVs) or a mapping of
#: column name to a numpy array (the stream and the API: building DataFrames for a batch of
#: tens of rows cost more than computing its features).
Columns: TypeAlias = pd.DataFrame | Mapping[str, np.ndarray]


def column(frame: Columns, name: str, dtype: Any = None) -> np.ndarray:
    """One column of ``frame`` as a numpy array."""
    return np.asarray(frame[name], dtype=dtype)


def n_rows(frame: Columns) -> int:
    return len(frame[next(iter(frame))])  # a DataFrame iterates over its column names too


def parse_offsets_minutes(timestamps: pd.Series) -> np.ndarray:
    """UTC offset in minutes written in each ISO-8601 string (``Z`` is 0); NaN-free or raises."""
    parts = timestamps.str.extract(r"(?:[Zz]|(?P<sign>[+-])(?P<h>\d{2}):?(?P<m>\d{2}))$")
    has_zone = timestamps.str.contains(r"(?:[Zz]|[+-]\d{2}:?\d{2})$", regex=True)
    if not bool(has_zone.all()):
        raise ValueError("timestamp without a zone offset")
    sign = np.where(parts["sign"].fillna("+") == "-", -1, 1)
    minutes = parts["h"].fillna("0").astype(int) * 60 + parts["m"].fillna("0").astype(int)
    return (sign * minutes.to_numpy()).astype(np.int64)


def epoch_ms(ts: datetime) -> int:
    """Milliseconds since the epoch, floored, the same rounding the batch path uses."""
    # Integer parts of the timedelta: exact, and half the cost of dividing by a timedelta.
    d = ts - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000


def strings(values: Sequence[Any]) -> np.ndarray:
    """An object array (what pandas holds strings in), also for an empty sequence."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def frame_from_transactions(txs: Sequence[Transaction]) -> dict[str, np.ndarray]:
    """Canonical columns for validated wire transactions (the stream and API path)."""
    return {
        "transaction_id": strings([t.transaction_id for t in txs]),
        "card_id": strings([t.card_id for t in txs]),
        "merchant_id": strings([t.merchant_id for t in txs]),
        "ts_ms": np.array([epoch_ms(t.timestamp) for t in txs], dtype=np.int64),
        "utc_offset_min": np.array(
            [int(t.timestamp.utcoffset().total_seconds() // 60) for t in txs],  # type: ignore[union-attr]  # AwareDatetime always has an offset
            dtype=np.int64,
        ),
        "amount": np.array([t.amount for t in txs], dtype=np.float64),
        "channel": strings([t.channel for t in txs]),
        "merchant_category": strings([t.merchant_category for t in txs]),
    }


def _cents(amount: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(amount, dtype=np.float64) * 100.0).astype(np.int64)


class _Index:
    """History sorted by (group, time) and packed into one int64 key for vectorised look-ups.

    A window query for group g at time t is two ``searchsorted`` calls on ``g * span + t``; the
    time origin is shifted by the longest window so that ``t - W`` never crosses into the
    previous group's block.
    """

    def __init__(self, hist_groups: np.ndarray, hist_ts: np.ndarray, origin: int, span: int) -> None:
        self.origin, self.span = origin, span
        keys = hist_groups.astype(np.int64) * span + (hist_ts - origin)
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]

    def key(self, groups: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return groups.astype(np.int64) * self.span + (ts - self.origin)

    def bounds(self, qkeys: np.ndarray, windows_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index ranges of history rows inside ``[t - W, t)``: ``lo`` has a row per window,
        ``hi`` (where ``[.., t)`` ends, the same for every window) one per query. Two
        ``searchsorted`` calls for all windows: for one query, the calls are most of the cost."""
        hi = np.searchsorted(self.keys, qkeys, side="left")
        lo = np.searchsorted(self.keys, qkeys[None, :] - windows_ms[:, None], side="left")
        return lo, hi


#: Up to this many values a dict factorises faster than pandas (docs/performance.md); one-row
#: ``/predict`` features factorise six times.
SMALL_FACTORIZE = 64


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes in order of first appearance, and the distinct values; missing values
    (None, NaN) get code -1. The same codes as ``pd.factorize(values, sort=False)``."""
    if len(values) <= SMALL_FACTORIZE:
        items = values.tolist()
        integers = values.dtype.kind in "iu"
        if integers or all(type(v) is str for v in items):  # nothing missing: a dict does it
            seen: dict[Any, int] = {}
            codes = np.array([seen.setdefault(v, len(seen)) for v in items], dtype=np.intp)
            return codes, np.array(list(seen), dtype=values.dtype) if integers else strings(list(seen))
    codes, uniques = pd.factorize(values, sort=False)
    return codes, np.asarray(uniques)


def _codes(queries: pd.Series | np.ndarray, history: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes for values shared by both columns (one factorisation), and how many."""
    joined = np.concatenate([np.asarray(queries), np.asarray(history)])
    codes, uniques = factorize(joined)
    return codes[: len(queries)], codes[len(queries) :], len(uniques)


@dataclass(frozen=True)
class RiskContext:
    """What the merchant and label features read.

    ``activity``: transactions per merchant and UTC day, and how many of them came from cards new
    at the merchant (:data:`ACTIVITY_COLUMNS`, one row per merchant and day). ``fraud_labels``:
    one row per transaction confirmed as fraud (:data:`FRAUD_LABEL_COLUMNS`; ``tx_day`` is the
    transaction's UTC day, ``available_ms`` when the label became known).
    """

    activity: Columns
    fraud_labels: Columns
    #: The queried cards' own fraud labels, for the card's known-fraud features (same columns).
    #: None: take them from ``fraud_labels`` (training, where that frame holds every label).
    #: Serving keeps them apart so that one card's labels never reach another transaction's
    #: merchant features before the replica has them.
    card_labels: Columns | None = None
    #: The label delay D: fraud rates are read over merchant days that ended D whole days before
    #: the transaction's day (see :func:`label_horizon_days`). A model's scorer sets its own.
    label_delay_ms: int = DEFAULT_LABEL_DELAY_DAYS * DAY_MS

    @classmethod
    def empty(cls) -> RiskContext:
        return cls(
            activity={
                "merchant_id": strings([]),
                "day": np.zeros(0, np.int64),
                "count": np.zeros(0, np.int64),
                "new": np.zeros(0, np.int64),
            },
            fraud_labels={
                "transaction_id": strings([]),
                "card_id": strings([]),
                "merchant_id": strings([]),
                "tx_day": np.zeros(0, np.int64),
                "available_ms": np.zeros(0, np.int64),
            },
        )


def label_horizon_days(label_delay_ms: int) -> int:
    """Whole days D between a transaction's day and the last merchant day its fraud rates read:
    the label delay rounded up, at least 1 (yesterday's counts may still be arriving from other
    partitions) and at most :data:`MAX_LABEL_DELAY_DAYS`."""
    return int(min(max(1, -(-int(label_delay_ms) // DAY_MS)), MAX_LABEL_DELAY_DAYS))


def first_at_merchant(frame: Columns, history: Columns) -> np.ndarray:
    """For each row of ``frame``: True when its card has no transaction at its merchant in
    ``history`` over the 30 days before it (what ``card_merchant_count_30d`` counts)."""
    ts = column(frame, "ts_ms", np.int64)
    if len(ts) == 0:
        return np.zeros(0, dtype=bool)
    q_card, h_card, _ = _codes(column(frame, "card_id"), column(history, "card_id"))
    origin, span = _time_span(ts, column(history, "ts_ms", np.int64))
    return np.asarray(_at_merchant_30d(frame, history, q_card, h_card, origin, span) == 0)


def risk_context_from_frame(frame: pd.DataFrame, assumed_delay_ms: int) -> RiskContext:
    """The context of a labelled canonical frame (training, evaluation): every row counts as
    merchant activity; fraud rows are labels, known at ``labelled_ms`` when the frame has it
    (>= 0), else ``assumed_delay_ms`` after the transaction, which is also the label delay D."""
    day = frame["ts_ms"].to_numpy(dtype=np.int64) // DAY_MS
    activity = (
        pd.DataFrame(
            {
                "merchant_id": frame["merchant_id"].to_numpy(),
                "day": day,
                "count": np.ones(len(day), dtype=np.int64),
                "new": first_at_merchant(frame, frame).astype(np.int64),
            }
        )
        .groupby(["merchant_id", "day"], sort=False)
        .sum()
        .reset_index()
    )
    fraud = frame["is_fraud"].to_numpy() == 1
    ts = frame["ts_ms"].to_numpy(dtype=np.int64)[fraud]
    known = (
        frame["labelled_ms"].to_numpy(dtype=np.int64)[fraud]
        if "labelled_ms" in frame
        else np.full(len(ts), -1, dtype=np.int64)
    )
    labels = pd.DataFrame(
        {
            "transaction_id": frame["transaction_id"].to_numpy()[fraud],
            "card_id": frame["card_id"].to_numpy()[fraud],
            "merchant_id": frame["merchant_id"].to_numpy()[fraud],
            "tx_day": day[fraud],
            "available_ms": np.where(known >= 0, known, ts + assumed_delay_ms),
        }
    )
    return RiskContext(activity=activity, fraud_labels=labels, label_delay_ms=int(assumed_delay_ms))


def compute_features(queries: Columns, history: Columns, risk: RiskContext | None = None) -> np.ndarray:
    """Feature matrix (rows of ``queries``, columns :data:`FEATURE_NAMES`) as float64.

    ``queries`` is a canonical frame; ``history`` has :data:`HISTORY_COLUMNS`. History rows must
    not repeat a transaction id; rows at or after a query's timestamp are ignored for it.
    Without ``risk`` the merchant and label features are those of a merchant and card with no
    known history (an empty context).
    """
    n = n_rows(queries)
    out = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float64)
    if n == 0:
        return out

    amount = column(queries, "amount", np.float64)
    ts = column(queries, "ts_ms", np.int64)
    local_ms = ts + column(queries, "utc_offset_min", np.int64) * 60_000
    hour = (local_ms // HOUR_MS) % 24
    weekday = (local_ms // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
    out[:, COLUMN["amount"]] = amount
    out[:, COLUMN["log_amount"]] = np.log1p(amount)
    out[:, COLUMN["hour"]] = hour
    out[:, COLUMN["is_night"]] = hour < 6
    out[:, COLUMN["is_weekend"]] = weekday >= 5

    # One-hot columns: each distinct value's column is looked up once, then one assignment sets
    # them all (fast for one row and for millions). A channel outside CHANNELS or missing sets
    # none; a category is matched lower-cased, and missing or unknown is "other".
    rows = np.arange(n)
    codes, levels = factorize(column(queries, "channel", object))
    hot = np.array([CHANNEL_COLUMN.get(v, -1) for v in levels.tolist()] + [-1], dtype=np.intp)[codes]
    out[rows[hot >= 0], hot[hot >= 0]] = 1.0
    codes, levels = factorize(column(queries, "merchant_category", object))
    other = COLUMN["category_other"]
    hot = np.array([CATEGORY_COLUMN.get(str(v).lower(), other) for v in levels.tolist()] + [other], dtype=np.intp)
    out[rows, hot[codes]] = 1.0

    _history_features(queries, history, ts, amount, out)
    _risk_features(queries, risk if risk is not None else RiskContext.empty(), ts, out)
    return out


def _risk_features(queries: Columns, risk: RiskContext, ts: np.ndarray, out: np.ndarray) -> None:
    _merchant_features(column(queries, "merchant_id", object), ts // DAY_MS, risk, out)
    own = risk.card_labels if risk.card_labels is not None else risk.fraud_labels
    _card_label_features(column(queries, "card_id", object), ts, own, out)


def _merchant_features(q_merchant: np.ndarray, q_day: np.ndarray, risk: RiskContext, out: np.ndarray) -> None:
    """Every merchant feature depends on the merchant and the UTC day only: computed once per
    distinct (merchant, day) of the queries, then copied to their rows."""
    act, labels = risk.activity, risk.fraud_labels
    q_m, merchants = factorize(q_merchant)
    # (merchant, day) packed into one int64 key, a window of days being a range of keys. Only
    # the queried merchants' days that some window reaches are kept.
    origin = int(q_day.min()) - MERCHANT_SPAN_DAYS - 1
    span = int(q_day.max()) - origin + 1
    keys, inverse = np.unique(q_m.astype(np.int64) * span + (q_day - origin), return_inverse=True)
    a_keys, a_rows = _merchant_day_keys(merchants, act, "day", origin, span)
    l_keys, l_rows = _merchant_day_keys(merchants, labels, "tx_day", origin, span)

    horizon = label_horizon_days(risk.label_delay_ms)
    # Activity windows (ending the day before yesterday) and fraud-rate windows (ending at the
    # horizon): one pair of searches for all of them.
    ends = [(MERCHANT_DELAY_DAYS, w) for w in _MERCHANT_WINDOWS] + [(horizon, w) for w in _LABELLED_WINDOWS]
    order = np.argsort(a_keys, kind="stable")
    sorted_keys = a_keys[order]
    end = np.concatenate([keys - delay for delay, _ in ends])
    hi = np.searchsorted(sorted_keys, end, side="left")
    lo = np.searchsorted(sorted_keys, end - np.repeat([w for _, w in ends], len(keys)), side="left")
    totals = {}
    for name in ("count", "new"):
        csum = np.concatenate(([0], np.cumsum(column(act, name, np.int64)[a_rows][order])))
        totals[name] = (csum[hi] - csum[lo]).astype(np.float64).reshape(len(ends), len(keys))
    n_act = len(_MERCHANT_WINDOWS)
    counts, labelled = totals["count"][:n_act], totals["count"][n_act:]
    daily_mean = counts[-1] / _MERCHANT_WINDOWS[-1]
    ratio = [_ratio(counts[i] / _MERCHANT_WINDOWS[i], daily_mean) for i in _RATIO_ROWS]
    share = [_ratio(totals["new"][i], counts[i]) for i in _RATIO_ROWS]
    frauds, known, days_since = _merchant_labels(keys, origin, span, l_keys, labels, l_rows, horizon)
    # A label for a transaction the counts never saw (feedback on an unknown id) must not push
    # a rate past 1.
    rates = np.minimum(_ratio(frauds, labelled), 1.0)
    values = np.vstack([counts, *ratio, *share, rates, known, days_since]).T
    out[:, _MERCHANT_COLUMNS] = values[inverse]


def _merchant_day_keys(
    merchants: np.ndarray, frame: Columns, day_column: str, origin: int, span: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (merchant, day) keys of ``frame``'s rows of these ``merchants`` inside the span, and
    which rows those are."""
    codes = _lookup(merchants, column(frame, "merchant_id", object))
    offset = column(frame, day_column, np.int64) - origin
    rows = np.flatnonzero((codes >= 0) & (offset >= 0) & (offset < span))
    return codes[rows] * span + offset[rows], rows


def _lookup(values: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Each item's position in ``values`` (distinct), -1 if absent."""
    if len(values) <= SMALL_FACTORIZE and len(items) <= 16 * SMALL_FACTORIZE:
        index = {v: i for i, v in enumerate(values.tolist())}
        return np.fromiter((index.get(v, -1) for v in items.tolist()), dtype=np.int64, count=len(items))
    return np.asarray(pd.Index(values).get_indexer(items), dtype=np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, 0 where ``den`` is 0."""
    num = np.asarray(num, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(num.shape), where=den > 0)


def _distinct(ids: np.ndarray) -> np.ndarray:
    """Positions of the first row of each distinct id (a transaction labelled twice counts once)."""
    if len(ids) <= 16 * SMALL_FACTORIZE and len(set(ids.tolist())) == len(ids):
        return np.arange(len(ids))
    return np.sort(np.unique(ids.astype(str), return_index=True)[1])


def _merchant_labels(
    keys: np.ndarray, origin: int, span: int, l_keys: np.ndarray, labels: Columns, rows: np.ndarray, horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (merchant, day) key, over the fraud labels known before that day: the frauds in each
    fraud-rate window (transaction days ``[d - D - W, d - D)``), the known frauds of the last
    days (``[d - W, d)``), and the days since the latest transaction among them. ``l_keys``:
    the (merchant, transaction day) keys of the labels' ``rows``."""
    n = len(keys)
    frauds = np.zeros((len(_LABELLED_WINDOWS), n))
    recent = np.zeros((len(_KNOWN_FRAUD_WINDOWS), n))
    days_since = np.full(n, MERCHANT_LABEL_AGE_CAP_DAYS)
    if len(rows) == 0:
        return frauds, recent, days_since
    first = _distinct(column(labels, "transaction_id", object)[rows])
    l_order = first[np.argsort(l_keys[first], kind="stable")]
    l_key = l_keys[l_order]
    # The span a key reaches is a contiguous run of labels, of which those known before its day count.
    hi = np.searchsorted(l_key, keys, side="left")
    lo = np.searchsorted(l_key, keys - MERCHANT_SPAN_DAYS, side="left")
    run = hi - lo
    owner = np.repeat(np.arange(n), run)
    idx = np.repeat(lo - np.concatenate(([0], np.cumsum(run)[:-1])), run) + np.arange(int(run.sum()))
    known_day = column(labels, "available_ms", np.int64)[rows][l_order][idx] // DAY_MS
    known = known_day < keys[owner] % span + origin
    owner, age = owner[known], (keys[owner] - l_key[idx])[known]  # whole days before the key's day
    for i, width in enumerate(_LABELLED_WINDOWS):
        frauds[i] = np.bincount(owner[(age > horizon) & (age <= horizon + width)], minlength=n)
    for i, width in enumerate(_KNOWN_FRAUD_WINDOWS):
        recent[i] = np.bincount(owner[age <= width], minlength=n)
    np.minimum.at(days_since, owner, age.astype(np.float64))
    return frauds, recent, days_since


def _card_label_features(q_card_ids: np.ndarray, ts: np.ndarray, own: Columns, out: np.ndarray) -> None:
    """The card's fraud labels known strictly before the transaction (by ``available_ms``, to the
    millisecond: a card's labels live with its state): how many became known in the last days,
    and how long ago the latest did."""
    since = np.full(len(ts), CARD_LABEL_AGE_CAP_DAYS)
    if n_rows(own) == 0:
        out[:, COLUMN["card_days_since_known_fraud"]] = since
        return
    first = _distinct(column(own, "transaction_id", object))
    q_card, l_card, _ = _codes(q_card_ids, column(own, "card_id", object)[first])
    # Labels known after every query, or before the age cap of all, change nothing: clipping
    # them bounds the packed keys' span by the queries' time range.
    origin = int(ts.min()) - CARD_LABEL_SPAN_MS - 1
    known = np.clip(column(own, "available_ms", np.int64)[first], origin + 1, int(ts.max()) + 1)
    labels = _Index(l_card, known, origin, int(ts.max()) + 2 - origin)
    lo, hi = labels.bounds(labels.key(q_card, ts), _CARD_LABEL_WINDOWS)
    out[:, _CARD_LABEL_COUNT_COLUMNS] = (hi - lo).T
    prev = np.maximum(hi - 1, 0)
    card_start = q_card.astype(np.int64) * labels.span
    has = (hi > 0) & (labels.keys[prev] >= card_start)
    last = labels.keys[prev] - card_start + origin
    since = np.where(has, np.minimum((ts - last) / DAY_MS, CARD_LABEL_AGE_CAP_DAYS), since)
    out[:, COLUMN["card_days_since_known_fraud"]] = since


def _history_features(
    queries: Columns,
    history: Columns,
    ts: np.ndarray,
    amount: np.ndarray,
    out: np.ndarray,
) -> None:
    hist_ts = column(history, "ts_ms", np.int64)
    origin, span = _time_span(ts, hist_ts)
    q_card, h_card, n_cards = _codes(queries["card_id"], history["card_id"])
    if n_cards > np.iinfo(np.int64).max // span:
        raise ValueError("history spans too many cards over too long a time to index")

    cards = _Index(h_card, hist_ts, origin, span)
    cents = _cents(column(history, "amount"))[cards.order]
    csum = np.concatenate(([0], np.cumsum(cents)))
    qkey = cards.key(q_card, ts)
    lo, hi = cards.bounds(qkey, _CARD_WINDOWS)
    counts = hi - lo  # a row per window of WINDOWS_MS
    sums = (csum[hi] - csum[lo]) / 100.0
    out[:, _CARD_COUNT_COLUMNS] = counts.T
    out[:, COLUMN["card_amount_sum_1h"]] = sums[_SUM_1H]
    mean = np.divide(sums, counts, out=np.zeros(sums.shape), where=counts > 0)  # 0 without history
    out[:, _CARD_MEAN_COLUMNS] = mean[_MEAN_ROWS].T
    mean_30d = mean[_30D]
    out[:, COLUMN["amount_to_card_mean_30d"]] = np.divide(amount, mean_30d, out=np.ones(len(ts)), where=mean_30d > 0)

    # Previous transaction of the card: the last history key strictly before the query's.
    gap = np.full(len(ts), HISTORY_SPAN_MS, dtype=np.int64)
    if len(cards.keys):
        prev = hi - 1
        card_start = q_card.astype(np.int64) * span
        prev_key = cards.keys[np.maximum(prev, 0)]
        has_prev = (prev >= 0) & (prev_key >= card_start)
        gap = np.where(has_prev, np.minimum(ts - (prev_key - card_start + origin), HISTORY_SPAN_MS), gap)
    out[:, COLUMN["seconds_since_prev_card_tx"]] = gap / 1000.0

    out[:, COLUMN["card_merchant_count_30d"]] = _at_merchant_30d(queries, history, q_card, h_card, origin, span)


def _time_span(ts: np.ndarray, hist_ts: np.ndarray) -> tuple[int, int]:
    """Origin and span of packed (group, time) keys over queries and history: the origin lies a
    longest window before both, so that ``t - W`` never reaches into the previous group."""
    lo_all = min(int(ts.min()), int(hist_ts.min()) if len(hist_ts) else int(ts.min()))
    hi_all = max(int(ts.max()), int(hist_ts.max()) if len(hist_ts) else int(ts.max()))
    origin = lo_all - HISTORY_SPAN_MS - 1
    return origin, hi_all - origin + 1


def _at_merchant_30d(
    queries: Columns, history: Columns, q_card: np.ndarray, h_card: np.ndarray, origin: int, span: int
) -> np.ndarray:
    """Per query: its card's transactions at its merchant in ``history`` over the 30 days before
    it (``q_card``, ``h_card``: the cards' shared codes)."""
    q_merchant, h_merchant, n_merchants = _codes(column(queries, "merchant_id"), column(history, "merchant_id"))
    # (card, merchant) pairs as one integer each, then re-coded densely.
    q_pair, h_pair, n_pairs = _codes(
        q_card.astype(np.int64) * n_merchants + q_merchant, h_card.astype(np.int64) * n_merchants + h_merchant
    )
    if n_pairs > np.iinfo(np.int64).max // span:
        raise ValueError("history spans too many card-merchant pairs over too long a time to index")
    pairs = _Index(h_pair, column(history, "ts_ms", np.int64), origin, span)
    lo, hi = pairs.bounds(pairs.key(q_pair, column(queries, "ts_ms", np.int64)), _CARD_WINDOWS[_30D : _30D + 1])
    return hi - lo[0]


def history_from_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The history columns of a canonical frame (what the stream stores per card)."""
    return frame.loc[:, list(HISTORY_COLUMNS)]
