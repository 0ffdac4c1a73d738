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
transaction counts and the fraud labels known so far. A merchant window of W days is made of
whole UTC days and ends :data:`MERCHANT_DELAY_DAYS` days before the scored transaction's day
(with D that delay, a transaction on day d sees days d-D-W .. d-D-1): the other partitions'
counts then have a day to arrive, and the model gets no half-finished day. A label counts only
from the UTC day after it became known. Training builds the context from the
whole CSV (each fraud label available at its ``labelled_at``, else at the transaction time plus
an assumed reporting delay); the stream keeps the same counts and labels in its state.
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

#: Merchant windows end this many whole UTC days before the scored transaction's day.
MERCHANT_DELAY_DAYS = 1
#: Merchant windows, in whole UTC days.
MERCHANT_WINDOWS_DAYS: dict[str, int] = {"1d": 1, "7d": 7, "30d": 30}
#: Whole days before its own day a transaction's merchant windows reach (the stream keeps these).
MERCHANT_SPAN_DAYS = MERCHANT_DELAY_DAYS + max(MERCHANT_WINDOWS_DAYS.values())
#: Columns of a risk context's frames.
ACTIVITY_COLUMNS = ("merchant_id", "day", "count")
FRAUD_LABEL_COLUMNS = ("transaction_id", "card_id", "merchant_id", "tx_day", "available_ms")

CATEGORY_LEVELS = (*MERCHANT_CATEGORIES, "other")

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
    *(f"merchant_fraud_rate_{w}" for w in MERCHANT_WINDOWS_DAYS),
    "card_known_fraud",
)
#: The features that need labels or other cards' transactions (dropped by ``--without-merchant-risk``).
MERCHANT_RISK_FEATURES: tuple[str, ...] = tuple(f for f in FEATURE_NAMES if f.startswith(("merchant_", "card_known_")))

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
_MERCHANT_WINDOWS = np.array(list(MERCHANT_WINDOWS_DAYS.values()), dtype=np.int64)
_MERCHANT_COUNT_COLUMNS = [COLUMN[f"merchant_tx_count_{w}"] for w in MERCHANT_WINDOWS_DAYS]

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
    "merchant_activity_unusual": tuple(f"merchant_tx_count_{w}" for w in MERCHANT_WINDOWS_DAYS),
    "merchant_recent_fraud_rate_high": tuple(f"merchant_fraud_rate_{w}" for w in MERCHANT_WINDOWS_DAYS),
    "card_known_compromised": ("card_known_fraud",),
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

    ``activity``: transactions per merchant and UTC day (:data:`ACTIVITY_COLUMNS`, one row per
    merchant and day). ``fraud_labels``: one row per transaction confirmed as fraud
    (:data:`FRAUD_LABEL_COLUMNS`; ``tx_day`` is the transaction's UTC day, ``available_ms`` when
    the label became known).
    """

    activity: Columns
    fraud_labels: Columns
    #: The queried cards' own fraud labels, for ``card_known_fraud`` (same columns). None: take
    #: them from ``fraud_labels`` (training, where that frame holds every label). Serving keeps
    #: them apart so that one card's labels never reach another transaction's merchant rates.
    card_labels: Columns | None = None

    @classmethod
    def empty(cls) -> RiskContext:
        return cls(
            activity={"merchant_id": strings([]), "day": np.zeros(0, np.int64), "count": np.zeros(0, np.int64)},
            fraud_labels={
                "transaction_id": strings([]),
                "card_id": strings([]),
                "merchant_id": strings([]),
                "tx_day": np.zeros(0, np.int64),
                "available_ms": np.zeros(0, np.int64),
            },
        )


def risk_context_from_frame(frame: pd.DataFrame, assumed_delay_ms: int) -> RiskContext:
    """The context of a labelled canonical frame (training, evaluation): every row counts as
    merchant activity; fraud rows are labels, known at ``labelled_ms`` when the frame has it
    (>= 0), else ``assumed_delay_ms`` after the transaction."""
    day = frame["ts_ms"].to_numpy(dtype=np.int64) // DAY_MS
    activity = (
        pd.DataFrame({"merchant_id": frame["merchant_id"].to_numpy(), "day": day})
        .groupby(["merchant_id", "day"], sort=False)
        .size()
        .rename("count")
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
    return RiskContext(activity=activity, fraud_labels=labels)


def compute_features(queries: Columns, history: Columns, risk: RiskContext | None = None) -> np.ndarray:
    """Feature matrix (rows of ``queries``, columns :data:`FEATURE_NAMES`) as float64.

    ``queries`` is a canonical frame; ``history`` has :data:`HISTORY_COLUMNS`. History rows must
    not repeat a transaction id; rows at or after a query's timestamp are ignored for it.
    Without ``risk`` the merchant and label features are those of a merchant and card with no
    known history (zero).
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
    if risk is not None:
        _risk_features(queries, risk, ts, out)
    return out


def _risk_features(queries: Columns, risk: RiskContext, ts: np.ndarray, out: np.ndarray) -> None:
    act, labels = risk.activity, risk.fraud_labels
    q_day = ts // DAY_MS
    a_day = column(act, "day", np.int64)
    # One integer code per merchant across queries, activity and labels.
    codes, _ = factorize(
        np.concatenate(
            [
                column(queries, "merchant_id", object),
                column(act, "merchant_id", object),
                column(labels, "merchant_id", object),
            ]
        )
    )
    n_q = len(ts)
    q_m, a_m, l_m = np.split(codes.astype(np.int64), [n_q, n_q + len(a_day)])
    l_day = column(labels, "tx_day", np.int64)
    lo_day = min([int(q_day.min()), *(int(d.min()) for d in (a_day, l_day) if len(d))])
    origin = lo_day - MERCHANT_SPAN_DAYS - 1
    span = max([int(q_day.max()), *(int(d.max()) for d in (a_day, l_day) if len(d))]) - origin + 1

    # Daily counts as running sums over (merchant, day) packed into one sorted int64 key.
    a_key = a_m * span + (a_day - origin)
    order = np.argsort(a_key, kind="stable")
    a_key = a_key[order]
    a_csum = np.concatenate(([0], np.cumsum(column(act, "count", np.int64)[order])))
    q_end = q_m * span + (q_day - MERCHANT_DELAY_DAYS - origin)  # exclusive: days before d - D

    hi = np.searchsorted(a_key, q_end, side="left")
    lo = np.searchsorted(a_key, q_end[None, :] - _MERCHANT_WINDOWS[:, None], side="left")
    window_counts = (a_csum[hi] - a_csum[lo]).astype(np.float64)  # a row per window
    out[:, _MERCHANT_COUNT_COLUMNS] = window_counts.T
    counts = dict(zip(MERCHANT_WINDOWS_DAYS, window_counts, strict=True))
    if len(l_day):  # else every rate is zero
        _merchant_fraud_rates(q_day, q_end, counts, labels, l_m * span + (l_day - origin), out)

    # The card's earliest fraud label known strictly before the transaction.
    own = risk.card_labels if risk.card_labels is not None else labels
    if n_rows(own) == 0:
        return  # card_known_fraud stays 0
    _, own_first = np.unique(column(own, "transaction_id").astype(str), return_index=True)
    q_card, l_card, n_cards = _codes(queries["card_id"], column(own, "card_id", object)[own_first])
    first_known = np.full(n_cards, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_known, l_card, column(own, "available_ms", np.int64)[own_first])
    out[:, COLUMN["card_known_fraud"]] = first_known[q_card] < ts


def _merchant_fraud_rates(
    q_day: np.ndarray,
    q_end: np.ndarray,
    counts: dict[str, np.ndarray],
    labels: Columns,
    l_keys: np.ndarray,
    out: np.ndarray,
) -> None:
    """Fraud rates per merchant window; ``l_keys``: each label's (merchant, day) key."""
    # Fraud labels (each transaction once) sorted by that key; a query's window is a contiguous
    # run of them, of which those known before the query's day count.
    _, first = np.unique(column(labels, "transaction_id").astype(str), return_index=True)
    l_key = l_keys[first]
    l_order = np.argsort(l_key, kind="stable")
    l_key = l_key[l_order]
    l_known_day = (column(labels, "available_ms", np.int64)[first] // DAY_MS)[l_order]
    n = len(q_day)
    for w, width in MERCHANT_WINDOWS_DAYS.items():
        hi = np.searchsorted(l_key, q_end, side="left")
        lo = np.searchsorted(l_key, q_end - width, side="left")
        run = hi - lo
        owner = np.repeat(np.arange(n), run)
        idx = np.repeat(lo - np.concatenate(([0], np.cumsum(run)[:-1])), run) + np.arange(int(run.sum()))
        known = l_known_day[idx] < q_day[owner]
        frauds = np.bincount(owner[known], minlength=n).astype(np.float64)
        # A label for a transaction the counts never saw (feedback on an unknown id) must not
        # push the rate past 1.
        out[:, COLUMN[f"merchant_fraud_rate_{w}"]] = np.minimum(
            np.divide(frauds, counts[w], out=np.zeros(n), where=counts[w] > 0), 1.0
        )


def _history_features(
    queries: Columns,
    history: Columns,
    ts: np.ndarray,
    amount: np.ndarray,
    out: np.ndarray,
) -> None:
    hist_ts = column(history, "ts_ms", np.int64)
    lo_all = min(int(ts.min()), int(hist_ts.min()) if len(hist_ts) else int(ts.min()))
    hi_all = max(int(ts.max()), int(hist_ts.max()) if len(hist_ts) else int(ts.max()))
    origin = lo_all - HISTORY_SPAN_MS - 1
    span = hi_all - origin + 1

    q_card, h_card, n_cards = _codes(queries["card_id"], history["card_id"])
    q_merchant, h_merchant, n_merchants = _codes(queries["merchant_id"], history["merchant_id"])
    # (card, merchant) pairs as one integer each, then re-coded densely.
    q_pair, h_pair, n_pairs = _codes(
        q_card.astype(np.int64) * n_merchants + q_merchant, h_card.astype(np.int64) * n_merchants + h_merchant
    )
    if max(n_cards, n_pairs) > np.iinfo(np.int64).max // span:
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

    pairs = _Index(h_pair, hist_ts, origin, span)
    lo, hi = pairs.bounds(pairs.key(q_pair, ts), _CARD_WINDOWS[_30D : _30D + 1])
    out[:, COLUMN["card_merchant_count_30d"]] = hi - lo[0]


def history_from_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The history columns of a canonical frame (what the stream stores per card)."""
    return frame.loc[:, list(HISTORY_COLUMNS)]
