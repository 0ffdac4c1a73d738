"""Deterministic simulator of card transactions with labelled, realistic fraud.

Used to write the labelled training CSV (:func:`generate`) and to feed Kafka
(:func:`iter_transactions`). The same :class:`SimConfig` always yields the same rows: every random
draw comes from one ``numpy.random.Generator(PCG64(seed))`` in a fixed order, and the work is
vectorised over rows (loops only run over countries, hour profiles or a handful of compromised
merchants), so a million rows take a few seconds.

Time
    Every card has a home country with a fixed UTC offset (no daylight saving). Timestamps are
    written in the card's home offset, and the hour-of-day patterns below act on that local
    wall clock, so ``datetime.fromisoformat(ts).hour`` is the hour the simulator drew. Rows are
    sorted by the instant they denote (stable), which is not the lexical order of the strings
    when offsets differ; ``timestamp`` parses with ``pd.to_datetime(..., utc=True)``. Event
    instants fall in ``[start, start + days)``.

Money
    ``amount`` is in the card's billing currency (``currency``, the home country's), rounded to
    cents; cash withdrawals are multiples of 20. ``country`` is the merchant's country.

Legitimate behaviour
    * Cards: home country, a personal amount scale (lognormal, cards differ by ~10x), a daily
      rate (log-uniform in 0.3-5 tx/day), an hour profile (daytime-heavy; a minority of
      "night owls" shop late), an online affinity, and 5-15 preferred merchants used with
      Zipf-like frequencies, plus an exploration rate for occasional new merchants.
    * Merchants: a category, a country, a channel (``atm`` for cash, ``ecommerce`` for online
      merchants, ``pos`` otherwise) and a ticket-size factor; category sets the typical amount
      (jewelry/travel/electronics large, online services/restaurants/gas small).
    * Volume is ~18% higher per weekend day. Some purchases are followed by another within
      minutes (shopping trips); a few cards binge small in-app purchases in short sessions.
    * Overlap with fraud on purpose: rare legitimate big-ticket purchases at unfamiliar
      electronics/jewelry/travel merchants, night-owl cards, trips abroad (most card-present
      spending moves to the destination country for days), cross-border online shopping.

Fraud (``is_fraud`` = 1, ``fraud_type`` names the pattern; about 0.4-0.7% of rows by default,
    varying with the seed)
    ``compromised_merchant``
        A few physical merchants (skimmed terminals, colluding shops; gas stations and ATMs are
        favoured) are compromised for a window of days to weeks. During it, extra transactions
        from cloned cards (random cards, so an unfamiliar merchant for them) make up a share of
        the merchant's traffic, with larger tickets and more night-time activity. Cards that
        legitimately used the merchant during the window may be sold on: days later they get a
        card-not-present burst, labelled ``compromised_card``.
    ``compromised_card``
        At a random time (or after a skim) a card gets a burst of a few transactions over
        minutes to two days, starting mostly at night: higher amounts independent of the card's
        habits, unfamiliar merchants in risky categories, mostly e-commerce, sometimes ATM
        cash-outs or card-present use abroad, sometimes opened by a tiny test charge.
    ``amount_outlier``
        A single purchase far above the card's own scale (median 12x) at a big-ticket merchant;
        legit big-ticket purchases (median 7x) make this only partly separable.
    ``velocity_burst``
        Many e-commerce transactions within minutes to an hour: card testing (0.00 verifications
        and amounts of a few cents) or a spending spree at a few online merchants.
    ``one_off``
        A single card-not-present purchase on a long-lived card, at an ordinary hour and an
        amount in the card's range: only an unfamiliar merchant gives it away.

    Compromised merchants differ in length (a day to two months) and intensity (a trickle to a
    flood of fraud); legitimate e-commerce also has 0.00 verifications (a card put on file), so
    neither a zero amount nor a merchant's past fraud rate alone decides.

Delayed labels (:func:`labels_for`)
    Nobody knows at scoring time which transactions are fraud: the truth arrives later, as label
    events. Every fraudulent transaction gets an ``is_fraud=true`` label, from one of three
    sources: ``customer_confirmed`` (the cardholder reacts to an alert or a statement line: hours
    to two days), ``investigation`` (an analyst's verdict: one to five days) and ``chargeback``
    (the dispute comes back through the card network: a wide lognormal, weeks with a tail of
    months, up to the 120-day dispute window), with the chargeback delays set so that the median
    fraud label delay is ``label_delay_days``.
    A share ``legit_label_share`` of genuine transactions gets an ``is_fraud=false`` label from an
    ``investigation`` (one to five days); the others are never labelled, as in real life. Labels
    come from their own random stream derived from the seed, so they never change the
    transactions, and a row's label depends only on the seed and the row's position.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from statistics import NormalDist

import numpy as np
import pandas as pd

from model.features import parse_offsets_minutes
from model.schemas import CHANNELS, MERCHANT_CATEGORIES, WIRE_FIELDS

__all__ = [
    "COLUMNS",
    "CSV_LABEL_COLUMNS",
    "FRAUD_TYPES",
    "LABEL_COLUMNS",
    "WIRE_FIELDS",
    "SimConfig",
    "config_for_rows",
    "generate",
    "iter_records",
    "iter_transactions",
    "labels_for",
    "with_label_columns",
]

#: Fraud patterns, in code order (code 0 is legitimate and is written as "").
FRAUD_TYPES: tuple[str, ...] = (
    "compromised_merchant",
    "compromised_card",
    "amount_outlier",
    "velocity_burst",
    "one_off",
)
#: Columns of :func:`generate`, in order.
COLUMNS: tuple[str, ...] = (
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
    "fraud_type",
)
#: Columns of :func:`labels_for`, in order: the label contract's fields (``model.schemas.Label``).
LABEL_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "card_id",
    "merchant_id",
    "is_fraud",
    "timestamp",
    "labelled_at",
    "source",
)
#: Columns :func:`with_label_columns` adds to a CSV: when the row's label became known and its source
#: (both empty for a row that never gets a label).
CSV_LABEL_COLUMNS: tuple[str, ...] = ("labelled_at", "label_source")

_LEGIT, _CM, _CC, _AO, _VB, _OO = 0, 1, 2, 3, 4, 5
_DAY = 86_400.0
_HOUR = 3_600.0
_NIGHT_HOURS = 6  # local hours 0-5 count as night
_WEEKDAY_THIN = 0.15  # share of weekday draws dropped, making weekend days ~18% busier
_WEEKEND_BOOST = 7.0 / (2.0 + 5.0 * (1.0 - _WEEKDAY_THIN))  # keeps the mean daily rate unchanged


@dataclass(frozen=True)
class SimConfig:
    """Parameters of the simulation; rates are per card per day unless stated otherwise."""

    seed: int = 7
    n_cards: int = 2000
    n_merchants: int = 400
    days: float = 30.0
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)

    # --- legitimate behaviour -------------------------------------------------------------
    # Daily transaction rate of a card is log-uniform in [min_daily_rate, max_daily_rate].
    min_daily_rate: float = 0.3
    max_daily_rate: float = 5.0
    # Card amount scale (USD-like units, converted to the billing currency): lognormal median/sigma.
    # sigma 0.75 puts the 5th and 95th percentile cards ~10x apart.
    amount_scale_median: float = 35.0
    amount_scale_sigma: float = 0.75
    # Per-transaction lognormal noise around the card x category x merchant typical ticket.
    amount_noise_sigma: float = 0.55
    # Size of a card's set of preferred merchants (uniform integer in [min, max]).
    min_preferred_merchants: int = 5
    max_preferred_merchants: int = 15
    # Mean share of a card's purchases made at merchants outside its preferred set.
    new_merchant_share: float = 0.10
    # Mean share of a card's preferred merchants that are online (varies per card).
    online_affinity: float = 0.25
    # Share of cards with a late-evening/night-heavy hour profile.
    night_owl_share: float = 0.12
    # Probability that a purchase is followed by another one minutes later (shopping trip),
    # and the mean gap of that follow-up in minutes.
    followup_prob: float = 0.10
    followup_minutes: float = 20.0
    # Share of cards that binge small in-app purchases, their sessions per day and mean size.
    binge_card_share: float = 0.06
    binge_sessions_per_day: float = 0.06
    binge_session_mean_tx: float = 6.0
    # Probability that a legitimate purchase is a big-ticket one (at an electronics, jewelry,
    # travel or retail merchant, often new to the card) and the median multiple of the card scale.
    big_ticket_prob: float = 0.002
    big_ticket_multiple: float = 7.0
    # Trips abroad: chance per card per day that a trip starts, its length in days, and the
    # share of card-present purchases during the trip made in the destination country.
    travel_rate: float = 0.004
    travel_min_days: float = 2.0
    travel_max_days: float = 12.0
    travel_abroad_share: float = 0.8

    # --- fraud: compromised merchants -----------------------------------------------------
    # Share of merchants compromised at some point (at least one when > 0).
    compromised_merchant_share: float = 0.02
    # Compromise window length in days: lognormal around the median (sigma 0.9), clipped to
    # [min, max] and to the simulation. Hit-and-run breaches last a day or two, a skimmer nobody
    # notices runs for weeks.
    compromise_min_days: float = 1.0
    compromise_median_days: float = 10.0
    compromise_max_days: float = 60.0
    # Mean share of a compromised merchant's transactions in the window that are fraudulent; each
    # compromise draws its own share (a beta around the mean: from a trickle to a flood).
    compromised_merchant_fraud_share: float = 0.2
    # Most fraudulent transactions a compromised merchant sees per day on average (a fraud ring
    # only has so many cloned cards), which keeps one very busy merchant from dominating; each
    # compromise scales it by its own lognormal factor.
    compromised_merchant_max_daily: float = 3.0
    # Share of the cloned cards used there that belong to local cardholders (else any card),
    # share of those transactions at night (local 00-06), and their median ticket relative to
    # the merchant's typical one.
    cloned_card_local_share: float = 0.7
    compromised_merchant_night_share: float = 0.25
    compromised_merchant_ticket_multiple: float = 1.6
    # Probability that a card used legitimately at a compromised merchant during its window is
    # sold on and gets a card-not-present ``compromised_card`` burst, and the median delay (days).
    skim_to_cnp_prob: float = 0.08
    skim_delay_days: float = 4.0

    # --- fraud: compromised cards -----------------------------------------------------------
    # Rate of random card compromises (per card per day).
    card_compromise_rate: float = 0.0006
    # Mean transactions per burst and the median burst duration in hours (lognormal, <= 48 h).
    card_burst_mean_tx: float = 5.0
    card_burst_median_hours: float = 8.0
    # Share of burst start times at night (local 00-06), share of bursts spent abroad,
    # share of e-commerce and of ATM cash-outs among burst transactions (the rest is POS).
    card_burst_night_share: float = 0.35
    card_burst_foreign_share: float = 0.35
    card_burst_ecommerce_share: float = 0.65
    card_burst_atm_share: float = 0.10
    # Probability that a burst opens with a test charge: a 0.00 verification or a few cents.
    card_test_charge_prob: float = 0.3
    # Share of test charges (here and in card-testing bursts) that are 0.00 verifications.
    zero_test_share: float = 0.4
    # Median fraud ticket (USD-like units, independent of the card's scale).
    fraud_amount_median: float = 90.0

    # --- fraud: amount outliers -------------------------------------------------------------
    amount_outlier_rate: float = 0.001
    # Median multiple of the card's amount scale, night share and foreign share.
    amount_outlier_multiple: float = 12.0
    amount_outlier_night_share: float = 0.15
    amount_outlier_foreign_share: float = 0.15

    # --- fraud: velocity bursts -------------------------------------------------------------
    velocity_rate: float = 0.0003
    # Mean transactions per burst (at least 5) and median duration in minutes (<= 90).
    velocity_mean_tx: float = 10.0
    velocity_median_minutes: float = 20.0
    # Share of bursts that are card testing (0.00 and tiny amounts) rather than a spending spree.
    velocity_testing_share: float = 0.4
    velocity_night_share: float = 0.3

    # --- fraud: one-off --------------------------------------------------------------------------
    # A single fraudulent card-not-present purchase on a long-lived card (a leaked card number
    # used once), at an ordinary hour and an amount in the card's own range: nothing but the
    # merchant being new gives it away. Rate per card per day.
    one_off_rate: float = 0.0004

    # --- legitimate zero-amount verifications ------------------------------------------------
    # Share of legitimate e-commerce purchases preceded by a 0.00 card verification at the same
    # merchant (a card put on file), so that a zero amount alone is not fraud.
    verification_share: float = 0.03

    # --- delayed labels (:func:`labels_for`) -----------------------------------------------------
    # Median delay, in days, between a fraudulent transaction and its label becoming known.
    label_delay_days: float = 7.0
    # Share of genuine transactions that get an is_fraud=false label (source "investigation").
    legit_label_share: float = 0.05

    def __post_init__(self) -> None:
        if self.n_cards < 1 or self.n_merchants < 1:
            raise ValueError("n_cards and n_merchants must be >= 1")
        if not (self.days > 0 and math.isfinite(self.days)):
            raise ValueError("days must be a positive finite number")
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        if not 0 < self.min_daily_rate <= self.max_daily_rate:
            raise ValueError("need 0 < min_daily_rate <= max_daily_rate")
        if not 1 <= self.min_preferred_merchants <= self.max_preferred_merchants:
            raise ValueError("need 1 <= min_preferred_merchants <= max_preferred_merchants")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_share", "_prob")) and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be in [0, 1], got {value}")
            if isinstance(value, float) and (value < 0 or not math.isfinite(value)):
                raise ValueError(f"{f.name} must be finite and >= 0, got {value}")
        if not self.label_delay_days > 0:
            raise ValueError("label_delay_days must be > 0")
        if self.card_burst_ecommerce_share + self.card_burst_atm_share > 1.0:
            raise ValueError("card_burst_ecommerce_share + card_burst_atm_share must be <= 1")


# ------------------------------------------------------------------------------------------
# Static world description
# ------------------------------------------------------------------------------------------

# code, currency, UTC offset (hours), units per USD, cardholder weight, merchant weight, trip weight
_COUNTRIES: tuple[tuple[str, str, float, float, float, float, float], ...] = (
    ("US", "USD", -5.0, 1.00, 0.36, 0.28, 0.8),
    ("CA", "CAD", -5.0, 1.36, 0.06, 0.05, 0.6),
    ("GB", "GBP", 0.0, 0.79, 0.12, 0.10, 0.8),
    ("IE", "EUR", 0.0, 0.92, 0.02, 0.02, 0.3),
    ("FR", "EUR", 1.0, 0.92, 0.10, 0.08, 1.0),
    ("DE", "EUR", 1.0, 0.92, 0.11, 0.08, 0.6),
    ("ES", "EUR", 1.0, 0.92, 0.06, 0.06, 1.0),
    ("IT", "EUR", 1.0, 0.92, 0.06, 0.06, 1.0),
    ("NL", "EUR", 1.0, 0.92, 0.04, 0.04, 0.4),
    ("AU", "AUD", 10.0, 1.52, 0.07, 0.05, 0.3),
    ("MX", "MXN", -6.0, 17.0, 0.0, 0.04, 0.8),
    ("PT", "EUR", 0.0, 0.92, 0.0, 0.03, 0.6),
    ("GR", "EUR", 2.0, 0.92, 0.0, 0.02, 0.5),
    ("TR", "TRY", 3.0, 32.0, 0.0, 0.03, 0.4),
    ("TH", "THB", 7.0, 35.0, 0.0, 0.02, 0.4),
    ("JP", "JPY", 9.0, 150.0, 0.0, 0.02, 0.3),
    ("BR", "BRL", -3.0, 5.0, 0.0, 0.02, 0.2),
    ("AE", "AED", 4.0, 3.67, 0.0, 0.02, 0.2),
)
_CODES = np.array([c[0] for c in _COUNTRIES], dtype=object)
_CURRENCY = np.array([c[1] for c in _COUNTRIES], dtype=object)
_OFFSET_H = np.array([c[2] for c in _COUNTRIES])
_FX = np.array([c[3] for c in _COUNTRIES])
_HOME_W = np.array([c[4] for c in _COUNTRIES])
_MERCHANT_W = np.array([c[5] for c in _COUNTRIES])
_TRIP_W = np.array([c[6] for c in _COUNTRIES])

_CATS = MERCHANT_CATEGORIES
_CAT = {c: i for i, c in enumerate(_CATS)}
_CASH = _CAT["cash"]


def _per_category(values: dict[str, float], default: float = 0.0) -> np.ndarray:
    unknown = set(values) - set(_CATS)
    if unknown:  # pragma: no cover - guards the tables below against schema changes
        raise ValueError(f"unknown merchant categories {sorted(unknown)}")
    return np.array([values.get(c, default) for c in _CATS], dtype=np.float64)


# How many merchants of each category exist.
_CAT_SHARE = _per_category(
    {
        "grocery": 0.17, "gas": 0.08, "restaurant": 0.18, "retail": 0.14, "electronics": 0.05,
        "travel": 0.05, "entertainment": 0.06, "health": 0.06, "online_services": 0.08,
        "jewelry": 0.03, "cash": 0.10,
    }
)  # fmt: skip
# Probability that a merchant of the category is online-only (e-commerce).
_CAT_ONLINE = _per_category(
    {
        "grocery": 0.04, "restaurant": 0.04, "retail": 0.3, "electronics": 0.4, "travel": 0.6,
        "entertainment": 0.3, "health": 0.08, "online_services": 1.0, "jewelry": 0.15,
    }
)  # fmt: skip
# How often cardholders shop in the category (weights the everyday merchants they pick).
_CAT_HABIT = _per_category(
    {
        "grocery": 1.0, "gas": 0.5, "restaurant": 0.7, "retail": 0.4, "electronics": 0.06,
        "travel": 0.05, "entertainment": 0.25, "health": 0.2, "online_services": 0.5,
        "jewelry": 0.02, "cash": 0.3,
    }
)  # fmt: skip
# Typical ticket relative to the card's scale.
_CAT_TICKET = _per_category(
    {
        "grocery": 1.0, "gas": 0.9, "restaurant": 0.7, "retail": 1.3, "electronics": 3.5,
        "travel": 5.0, "entertainment": 0.8, "health": 1.1, "online_services": 0.35,
        "jewelry": 5.0, "cash": 2.5,
    }
)  # fmt: skip
# Where tourists spend.
_CAT_TRIP = _per_category(
    {
        "grocery": 0.3, "gas": 0.2, "restaurant": 1.0, "retail": 0.5, "electronics": 0.05,
        "travel": 0.6, "entertainment": 0.4, "health": 0.05, "jewelry": 0.05, "cash": 0.3,
    }
)  # fmt: skip
# Big-ticket purchases (legit) and amount-outlier fraud.
_CAT_BIG = _per_category({"retail": 0.5, "electronics": 1.0, "travel": 0.8, "jewelry": 0.4})
# What fraudsters buy, and the relative ticket size of fraud in each category.
_CAT_RISKY = _per_category(
    {
        "retail": 0.6, "electronics": 1.0, "travel": 0.5, "entertainment": 0.3, "online_services": 0.8,
        "jewelry": 0.5, "gas": 0.1, "grocery": 0.1, "restaurant": 0.1, "health": 0.05,
    }
)  # fmt: skip
_CAT_FRAUD_TICKET = _per_category(
    {"retail": 1.0, "electronics": 2.0, "travel": 2.0, "jewelry": 2.5, "online_services": 0.6}, default=0.8
)
# Which physical merchants get skimmers.
_CAT_SKIM = _per_category({"gas": 3.0, "cash": 3.0, "restaurant": 1.0, "retail": 1.0, "grocery": 1.0}, 0.4)

_HOUR_DAY = np.array(
    [0.5, 0.3, 0.2, 0.15, 0.15, 0.3, 0.8, 1.8, 3.2, 4.2, 4.8, 5.4,
     6.4, 5.8, 5.2, 5.2, 5.8, 6.4, 6.8, 6.2, 4.8, 3.4, 2.1, 1.1]
)  # fmt: skip
_HOUR_OWL = np.array(
    [2.8, 2.2, 1.6, 1.0, 0.6, 0.4, 0.4, 0.8, 1.5, 2.4, 3.2, 3.8,
     4.6, 4.4, 4.2, 4.4, 4.8, 5.4, 6.0, 6.2, 6.0, 5.4, 4.6, 3.6]
)  # fmt: skip


def _with_night_share(base: np.ndarray, share: float) -> np.ndarray:
    """``base`` rescaled so that hours 0-5 carry ``share`` of the mass."""
    night, day = base[:_NIGHT_HOURS], base[_NIGHT_HOURS:]
    return np.concatenate([night / night.sum() * share, day / day.sum() * (1.0 - share)])


def _hour_cdfs(cfg: SimConfig) -> np.ndarray:
    flat = np.sqrt(_HOUR_DAY)  # fraudsters keep flatter hours than cardholders
    profiles = [
        _HOUR_DAY,  # 0: ordinary cardholder
        _HOUR_OWL,  # 1: night owl
        _with_night_share(flat, cfg.card_burst_night_share),  # 2: compromised-card burst start
        _with_night_share(flat, cfg.velocity_night_share),  # 3: velocity burst start
        _with_night_share(flat, cfg.compromised_merchant_night_share),  # 4: fraud at a compromised merchant
        _with_night_share(_HOUR_DAY, cfg.amount_outlier_night_share),  # 5: amount outlier
    ]
    cdfs = np.cumsum(np.array(profiles), axis=1)
    return cdfs / cdfs[:, -1:]


_P_DAY, _P_OWL, _P_CARD, _P_VELOCITY, _P_MERCHANT, _P_OUTLIER = range(6)


@dataclass
class _World:
    cfg: SimConfig
    horizon: float  # seconds
    n_grid_days: int  # local calendar days that cover the horizon for every card
    hour_cdfs: np.ndarray
    # merchants
    m_cat: np.ndarray
    m_country: np.ndarray
    m_online: np.ndarray
    m_factor: np.ndarray
    m_pop: np.ndarray
    m_channel: np.ndarray  # index into CHANNELS
    # cards
    c_home: np.ndarray
    c_scale: np.ndarray
    c_rate: np.ndarray
    c_owl: np.ndarray
    c_explore: np.ndarray
    c_day0: np.ndarray  # seconds since local midnight at the start instant
    c_weekday0: np.ndarray  # local weekday (Mon=0) of the start instant
    c_pref: np.ndarray  # (n_cards, max_preferred) merchant indices
    c_pref_cdf: np.ndarray  # (n_cards, max_preferred) cumulative slot probabilities


class _Rows:
    """Columns of simulated rows, appended in a fixed order."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, t: np.ndarray, card: np.ndarray, merchant: np.ndarray, amount: np.ndarray, kind: int) -> None:
        kinds = np.full(len(t), kind, dtype=np.int8)
        self.parts.append((t.astype(np.float64), card.astype(np.int64), merchant.astype(np.int64), amount, kinds))

    def columns(self) -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate([p[i] for p in self.parts]) for i in range(5))


def _quota(weights: np.ndarray, n: int, minimum: int) -> np.ndarray:
    """Integer counts summing to ``n``, proportional to ``weights`` (largest remainder)."""
    w = weights / weights.sum()
    floor_min = minimum if n >= minimum * int((weights > 0).sum()) else 0
    counts = np.where(weights > 0, floor_min, 0)
    rest = n - int(counts.sum())
    exact = w * rest
    counts = counts + np.floor(exact).astype(np.int64)
    short = n - int(counts.sum())
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    counts[order[:short]] += 1
    return counts


def _draw(rng: np.random.Generator, w: _World, weights: np.ndarray, country: np.ndarray) -> np.ndarray:
    """One merchant per request, with probability proportional to ``weights``.

    ``country`` restricts each request to merchants of that country (-1: anywhere); a country
    without any eligible merchant falls back to anywhere, and an all-zero ``weights`` to uniform.
    """
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    n = len(country)
    u = rng.random(n)
    out = np.empty(n, dtype=np.int64)
    for c in np.unique(country):
        sel = country == c
        wc = weights if c < 0 else np.where(w.m_country == c, weights, 0.0)
        if wc.sum() <= 0:
            wc = weights
        cdf = np.cumsum(wc)
        out[sel] = np.minimum(np.searchsorted(cdf, u[sel] * cdf[-1], side="right"), len(cdf) - 1)
    return out


def _foreign_country(rng: np.random.Generator, home: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A country other than ``home`` for each request, drawn with ``weights``."""
    cdf = np.cumsum(weights) / weights.sum()
    dest = np.minimum(np.searchsorted(cdf, rng.random(len(home)), side="right"), len(cdf) - 1)
    clash = dest == home
    if clash.any():  # re-draw among the other countries, uniformly
        shift = rng.integers(1, len(weights), int(clash.sum()))
        dest[clash] = (home[clash] + shift) % len(weights)
    return dest


def _hours(rng: np.random.Generator, w: _World, profile: np.ndarray) -> np.ndarray:
    u = rng.random(len(profile))
    hour = np.zeros(len(profile), dtype=np.int64)
    for p in np.unique(profile):
        sel = profile == p
        hour[sel] = np.searchsorted(w.hour_cdfs[p], u[sel], side="right")
    return np.minimum(hour, 23)


def _local_times(
    rng: np.random.Generator, w: _World, card: np.ndarray, day: np.ndarray, profile: np.ndarray
) -> np.ndarray:
    """Seconds after ``start`` of a time on the card's local ``day`` at an hour from ``profile``."""
    hour = _hours(rng, w, profile)
    return day * _DAY + hour * _HOUR + rng.random(len(card)) * _HOUR - w.c_day0[card]


def _local_day(w: _World, card: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.floor((t + w.c_day0[card]) / _DAY).astype(np.int64)


def _bursts(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Burst index and position within the burst of each row of bursts of the given sizes."""
    burst = np.repeat(np.arange(len(sizes)), sizes)
    first = np.cumsum(sizes) - sizes
    return burst, np.arange(int(sizes.sum())) - np.repeat(first, sizes)


def _events(rng: np.random.Generator, w: _World, rate: float) -> np.ndarray:
    """Card index of each event of a per-card-per-day Poisson process over the simulation."""
    counts = rng.poisson(rate * w.cfg.days, w.cfg.n_cards)
    return np.repeat(np.arange(w.cfg.n_cards), counts)


def _random_local_day(rng: np.random.Generator, w: _World, n: int) -> np.ndarray:
    return rng.integers(0, w.n_grid_days, n)


# ------------------------------------------------------------------------------------------
# World
# ------------------------------------------------------------------------------------------


def _build_world(cfg: SimConfig, rng: np.random.Generator) -> _World:
    n_m, n_c, n_k = cfg.n_merchants, cfg.n_cards, len(_COUNTRIES)

    # Merchants: countries by quota (every country gets a few), categories by share with at
    # least one of each when there is room.
    m_country = np.repeat(np.arange(n_k), _quota(_MERCHANT_W, n_m, 3))
    m_country = m_country[rng.permutation(n_m)]
    cat_cdf = np.cumsum(_CAT_SHARE) / _CAT_SHARE.sum()
    m_cat = np.minimum(np.searchsorted(cat_cdf, rng.random(n_m), side="right"), len(_CATS) - 1)
    if n_m >= len(_CATS):
        m_cat[rng.choice(n_m, len(_CATS), replace=False)] = np.arange(len(_CATS))
    m_online = rng.random(n_m) < _CAT_ONLINE[m_cat]
    m_online[m_cat == _CAT["online_services"]] = True
    m_online[m_cat == _CASH] = False
    m_channel = np.where(m_cat == _CASH, CHANNELS.index("atm"), CHANNELS.index("pos"))
    m_channel = np.where(m_online, CHANNELS.index("ecommerce"), m_channel)
    m_factor = rng.lognormal(0.0, 0.35, n_m)
    m_pop = rng.lognormal(0.0, 1.0, n_m)

    # Cards.
    home_cdf = np.cumsum(_HOME_W) / _HOME_W.sum()
    c_home = np.minimum(np.searchsorted(home_cdf, rng.random(n_c), side="right"), n_k - 1)
    c_scale = cfg.amount_scale_median * rng.lognormal(0.0, cfg.amount_scale_sigma, n_c)
    lo, hi = math.log(cfg.min_daily_rate), math.log(cfg.max_daily_rate)
    c_rate = np.exp(rng.uniform(lo, hi, n_c))
    c_owl = rng.random(n_c) < cfg.night_owl_share
    share = min(max(cfg.new_merchant_share, 1e-6), 1 - 1e-6)
    c_explore = rng.beta(4.0 * share / (1 - share), 4.0, n_c) if cfg.new_merchant_share > 0 else np.zeros(n_c)
    aff = min(max(cfg.online_affinity, 1e-6), 1 - 1e-6)
    c_online_aff = rng.beta(2.0 * aff / (1 - aff), 2.0, n_c) if cfg.online_affinity > 0 else np.zeros(n_c)

    start_s = cfg.start.timestamp()
    local = start_s + _OFFSET_H[c_home] * _HOUR
    c_day0 = np.mod(local, _DAY)
    c_weekday0 = (np.floor(local / _DAY).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    horizon = cfg.days * _DAY
    n_grid_days = int(math.ceil(horizon / _DAY)) + 1

    world = _World(
        cfg=cfg, horizon=horizon, n_grid_days=n_grid_days, hour_cdfs=_hour_cdfs(cfg),
        m_cat=m_cat, m_country=m_country, m_online=m_online, m_factor=m_factor, m_pop=m_pop,
        m_channel=m_channel, c_home=c_home, c_scale=c_scale, c_rate=c_rate, c_owl=c_owl,
        c_explore=c_explore, c_day0=c_day0, c_weekday0=c_weekday0,
        c_pref=np.zeros((n_c, cfg.max_preferred_merchants), dtype=np.int64),
        c_pref_cdf=np.ones((n_c, cfg.max_preferred_merchants)),
    )  # fmt: skip

    # Preferred merchants: each slot is online with the card's affinity (online merchants at
    # home 60% of the time, else anywhere), otherwise a physical merchant in the home country.
    k_max = cfg.max_preferred_merchants
    k = rng.integers(cfg.min_preferred_merchants, k_max + 1, n_c)
    slot_online = rng.random((n_c, k_max)) < c_online_aff[:, None]
    slot_country = np.where(rng.random((n_c, k_max)) < 0.6, c_home[:, None], -1)
    habit = m_pop * _CAT_HABIT[m_cat]
    pref_phys = _draw(rng, world, np.where(m_online, 0.0, habit), np.repeat(c_home, k_max))
    pref_online = _draw(rng, world, np.where(m_online, habit, 0.0), slot_country.ravel())
    world.c_pref = np.where(slot_online.ravel(), pref_online, pref_phys).reshape(n_c, k_max)
    slot_w = (np.arange(k_max) + 1.0) ** -0.9 * rng.lognormal(0.0, 0.3, (n_c, k_max))
    slot_w = np.where(np.arange(k_max)[None, :] < k[:, None], slot_w, 0.0)
    cdf = np.cumsum(slot_w, axis=1)
    world.c_pref_cdf = cdf / cdf[:, -1:]
    return world


# ------------------------------------------------------------------------------------------
# Legitimate activity
# ------------------------------------------------------------------------------------------


def _legit(rng: np.random.Generator, w: _World, rows: _Rows) -> None:
    cfg = w.cfg
    counts = rng.poisson(w.c_rate * w.n_grid_days * _WEEKEND_BOOST)
    card = np.repeat(np.arange(cfg.n_cards), counts)
    day = _random_local_day(rng, w, len(card))
    weekday = (w.c_weekday0[card] + day) % 7
    keep = (weekday >= 5) | (rng.random(len(card)) >= _WEEKDAY_THIN)
    card, day = card[keep], day[keep]
    t = _local_times(rng, w, card, day, np.where(w.c_owl[card], _P_OWL, _P_DAY))

    follow = rng.random(len(t)) < cfg.followup_prob
    gap = 60.0 + rng.exponential(cfg.followup_minutes * 60.0, int(follow.sum()))
    t = np.concatenate([t, t[follow] + gap])
    card = np.concatenate([card, card[follow]])
    inside = (t >= 0) & (t < w.horizon)
    t, card = t[inside], card[inside]
    n = len(t)

    # Habitual merchants, with occasional new ones.
    slot = (rng.random(n)[:, None] > w.c_pref_cdf[card]).sum(axis=1)
    merchant = w.c_pref[card, np.minimum(slot, w.c_pref.shape[1] - 1)]
    explore = rng.random(n) < w.c_explore[card]
    habit = w.m_pop * _CAT_HABIT[w.m_cat]
    explore_online = rng.random(n) < 0.25
    home = w.c_home[card]
    phys = explore & ~explore_online
    onl = explore & explore_online
    merchant[phys] = _draw(rng, w, np.where(w.m_online, 0.0, habit), home[phys])
    online_country = np.where(rng.random(int(onl.sum())) < 0.6, home[onl], -1)
    merchant[onl] = _draw(rng, w, np.where(w.m_online, habit, 0.0), online_country)

    # Trips abroad: card-present spending moves to the destination.
    nc = cfg.n_cards
    p_trip = 1.0 - math.exp(-cfg.travel_rate * cfg.days)
    has_trip = rng.random(nc) < p_trip
    trip_len = rng.uniform(cfg.travel_min_days, max(cfg.travel_min_days, cfg.travel_max_days), nc) * _DAY
    trip_start = rng.uniform(-0.3, 1.0, nc) * w.horizon
    trip_dest = _foreign_country(rng, w.c_home, _TRIP_W)
    abroad = (
        has_trip[card]
        & (t >= trip_start[card])
        & (t < trip_start[card] + trip_len[card])
        & ~w.m_online[merchant]
        & (rng.random(n) < cfg.travel_abroad_share)
    )
    merchant[abroad] = _draw(rng, w, np.where(w.m_online, 0.0, w.m_pop * _CAT_TRIP[w.m_cat]), trip_dest[card[abroad]])

    amount = (
        w.c_scale[card]
        * _CAT_TICKET[w.m_cat[merchant]]
        * w.m_factor[merchant]
        * rng.lognormal(0.0, cfg.amount_noise_sigma, n)
    )
    amount[abroad] *= 1.25

    # Legitimate big-ticket purchases, often at a merchant new to the card.
    big = rng.random(n) < cfg.big_ticket_prob
    big_country = np.where(rng.random(int(big.sum())) < 0.7, home[big], -1)
    merchant[big] = _draw(rng, w, w.m_pop * _CAT_BIG[w.m_cat], big_country)
    amount[big] = w.c_scale[card[big]] * rng.lognormal(math.log(cfg.big_ticket_multiple), 0.6, int(big.sum()))
    rows.add(t, card, merchant, amount, _LEGIT)

    # 0.00 verifications a few seconds to minutes before some e-commerce purchases (card on file).
    verify = w.m_online[merchant] & (rng.random(n) < cfg.verification_share)
    lead = rng.uniform(5.0, 300.0, int(verify.sum()))
    rows.add(t[verify] - lead, card[verify], merchant[verify], np.zeros(int(verify.sum())), _LEGIT)

    # Binge sessions of small in-app purchases.
    bingers = rng.random(nc) < cfg.binge_card_share
    sess_card = np.repeat(np.arange(nc), rng.poisson(cfg.binge_sessions_per_day * cfg.days, nc) * bingers)
    ns = len(sess_card)
    sess_t = _local_times(rng, w, sess_card, _random_local_day(rng, w, ns), np.full(ns, _P_OWL))
    online_services = np.where(w.m_online & (w.m_cat == _CAT["online_services"]), w.m_pop, 0.0)
    sess_country = np.where(rng.random(ns) < 0.6, w.c_home[sess_card], -1)
    sess_merchant = _draw(rng, w, online_services, sess_country)
    sess_len = rng.uniform(5.0, 45.0, ns) * 60.0
    sizes = 2 + rng.poisson(max(cfg.binge_session_mean_tx - 2.0, 0.0), ns)
    b, _ = _bursts(sizes)
    bt = sess_t[b] + rng.random(len(b)) * sess_len[b]
    prices = np.array([0.99, 1.99, 2.99, 4.99, 9.99, 19.99])
    amount = prices[rng.choice(len(prices), len(b), p=[0.3, 0.25, 0.15, 0.15, 0.1, 0.05])]
    rows.add(bt, sess_card[b], sess_merchant[b], amount / _FX[w.c_home[sess_card[b]]], _LEGIT)


# ------------------------------------------------------------------------------------------
# Fraud
# ------------------------------------------------------------------------------------------


def _card_bursts(
    rng: np.random.Generator, w: _World, rows: _Rows, card: np.ndarray, anchor: np.ndarray, ecommerce: float
) -> None:
    """Compromised-card bursts starting at ``anchor`` (seconds) on ``card``."""
    cfg = w.cfg
    nb = len(card)
    sizes = 1 + rng.poisson(max(cfg.card_burst_mean_tx - 1.0, 0.0), nb)
    dur = np.clip(rng.lognormal(math.log(max(cfg.card_burst_median_hours, 1e-3) * _HOUR), 1.0, nb), 600, 48 * _HOUR)
    foreign = rng.random(nb) < cfg.card_burst_foreign_share
    target = np.where(foreign, _foreign_country(rng, w.c_home[card], _MERCHANT_W), w.c_home[card])
    test = rng.random(nb) < cfg.card_test_charge_prob
    b, pos = _bursts(sizes)
    n = len(b)
    t = anchor[b] + np.where(pos == 0, 0.0, rng.random(n) * dur[b])
    u = rng.random(n)
    atm_share = cfg.card_burst_atm_share * (1.0 - ecommerce) / max(1.0 - cfg.card_burst_ecommerce_share, 1e-9)
    is_ecom = u < ecommerce
    is_atm = ~is_ecom & (u < ecommerce + atm_share)
    is_pos = ~is_ecom & ~is_atm
    risky = w.m_pop * _CAT_RISKY[w.m_cat]
    merchant = np.empty(n, dtype=np.int64)
    # Online fraud: abroad for foreign bursts, else at home or anywhere.
    ecom_country = np.where(foreign[b] | (rng.random(n) < 0.5), target[b], -1)
    merchant[is_ecom] = _draw(rng, w, np.where(w.m_online, risky, 0.0), ecom_country[is_ecom])
    merchant[is_pos] = _draw(rng, w, np.where(w.m_online, 0.0, risky), target[b][is_pos])
    merchant[is_atm] = _draw(rng, w, np.where(w.m_cat == _CASH, w.m_pop, 0.0), target[b][is_atm])
    amount = cfg.fraud_amount_median * _CAT_FRAUD_TICKET[w.m_cat[merchant]] * rng.lognormal(0.0, 1.0, n)
    cash = w.m_cat[merchant] == _CASH
    amount[cash] = rng.uniform(150.0, 500.0, int(cash.sum()))
    first_test = (pos == 0) & test[b]
    online_services = np.where(w.m_online & (w.m_cat == _CAT["online_services"]), w.m_pop, 0.0)
    merchant[first_test] = _draw(rng, w, online_services, np.full(int(first_test.sum()), -1))
    amount[first_test] = _test_amounts(rng, cfg, int(first_test.sum()))
    rows.add(t, card[b], merchant, amount, _CC)


def _compromised_cards(rng: np.random.Generator, w: _World, rows: _Rows) -> None:
    card = _events(rng, w, w.cfg.card_compromise_rate)
    anchor = _local_times(rng, w, card, _random_local_day(rng, w, len(card)), np.full(len(card), _P_CARD))
    _card_bursts(rng, w, rows, card, anchor, w.cfg.card_burst_ecommerce_share)


def _compromised_merchants(
    rng: np.random.Generator,
    w: _World,
    rows: _Rows,
    legit_t: np.ndarray,
    legit_card: np.ndarray,
    legit_m: np.ndarray,
) -> None:
    cfg = w.cfg
    if cfg.compromised_merchant_share <= 0:
        return
    skim_w = np.where(w.m_online, 0.0, np.sqrt(w.m_pop) * _CAT_SKIM[w.m_cat])
    eligible = int((skim_w > 0).sum())
    n_cm = min(eligible, max(1, round(cfg.compromised_merchant_share * cfg.n_merchants)))
    if n_cm == 0:
        return
    chosen = rng.choice(cfg.n_merchants, n_cm, replace=False, p=skim_w / skim_w.sum())
    lo = min(cfg.compromise_min_days, cfg.compromise_max_days)
    median = min(max(cfg.compromise_median_days, lo), max(lo, cfg.compromise_max_days))
    days = np.clip(rng.lognormal(math.log(max(median, 1e-3)), 0.9, n_cm), lo, max(lo, cfg.compromise_max_days))
    length = np.minimum(days * _DAY, w.horizon)
    begin = rng.random(n_cm) * (w.horizon - length)
    mean_share = min(max(cfg.compromised_merchant_fraud_share, 1e-6), 1 - 1e-6)
    share = (
        rng.beta(4.0 * mean_share, 4.0 * (1 - mean_share), n_cm)
        if cfg.compromised_merchant_fraud_share > 0
        else np.zeros(n_cm)
    )
    ratio = share / np.maximum(1.0 - share, 1e-6)
    cap = cfg.compromised_merchant_max_daily * rng.lognormal(0.0, 0.7, n_cm)
    skim_cards, skim_t = [], []
    for m, t0, span, r, c in zip(chosen, begin, length, ratio, cap, strict=True):
        in_window = (legit_m == m) & (legit_t >= t0) & (legit_t < t0 + span)
        expected = min(in_window.sum() * r, c * span / _DAY)
        n_f = int(rng.poisson(expected))
        # Cloned cards: mostly of local cardholders, some from anywhere.
        locals_ = np.flatnonzero(w.c_home == w.m_country[m])
        card = rng.integers(0, cfg.n_cards, n_f)
        local = rng.random(n_f) < cfg.cloned_card_local_share
        if len(locals_):
            card[local] = locals_[rng.integers(0, len(locals_), int(local.sum()))]
        # A day in the window, an hour from the fraud profile (a time that falls outside the
        # window at its edges keeps the uniform draw).
        t = t0 + rng.random(n_f) * span
        moved = _local_times(rng, w, card, _local_day(w, card, t), np.full(n_f, _P_MERCHANT))
        t = np.where((moved >= t0) & (moved < t0 + span), moved, t)
        if w.m_cat[m] == _CASH:
            amount = rng.uniform(100.0, 400.0, n_f)
        else:
            base = cfg.amount_scale_median * _CAT_TICKET[w.m_cat[m]] * w.m_factor[m]
            amount = base * rng.lognormal(math.log(cfg.compromised_merchant_ticket_multiple), 0.5, n_f)
        rows.add(t, card, np.full(n_f, m), amount, _CM)
        # Cards skimmed during the window: first visit per card.
        visit_card, first = np.unique(legit_card[in_window], return_index=True)
        skim_cards.append(visit_card)
        skim_t.append(legit_t[in_window][first])
    card = np.concatenate(skim_cards)
    visit = np.concatenate(skim_t)
    sold = rng.random(len(card)) < cfg.skim_to_cnp_prob
    card, visit = card[sold], visit[sold]
    delay = rng.lognormal(math.log(max(cfg.skim_delay_days, 1e-3) * _DAY), 0.6, len(card))
    anchor = _local_times(rng, w, card, _local_day(w, card, visit + delay), np.full(len(card), _P_CARD))
    anchor = np.where(anchor < visit + _HOUR, anchor + _DAY, anchor)
    _card_bursts(rng, w, rows, card, anchor, max(cfg.card_burst_ecommerce_share, 0.85))


def _amount_outliers(rng: np.random.Generator, w: _World, rows: _Rows) -> None:
    cfg = w.cfg
    card = _events(rng, w, cfg.amount_outlier_rate)
    n = len(card)
    t = _local_times(rng, w, card, _random_local_day(rng, w, n), np.full(n, _P_OUTLIER))
    foreign = rng.random(n) < cfg.amount_outlier_foreign_share
    home = w.c_home[card]
    country = np.where(foreign, _foreign_country(rng, home, _MERCHANT_W), np.where(rng.random(n) < 0.6, home, -1))
    merchant = _draw(rng, w, w.m_pop * _CAT_BIG[w.m_cat], country)
    amount = w.c_scale[card] * rng.lognormal(math.log(cfg.amount_outlier_multiple), 0.5, n)
    rows.add(t, card, merchant, amount, _AO)


def _velocity(rng: np.random.Generator, w: _World, rows: _Rows) -> None:
    cfg = w.cfg
    card = _events(rng, w, cfg.velocity_rate)
    nb = len(card)
    anchor = _local_times(rng, w, card, _random_local_day(rng, w, nb), np.full(nb, _P_VELOCITY))
    sizes = 5 + rng.poisson(max(cfg.velocity_mean_tx - 5.0, 0.0), nb)
    dur = np.clip(rng.lognormal(math.log(max(cfg.velocity_median_minutes, 0.1) * 60.0), 0.6, nb), 120.0, 5400.0)
    testing = rng.random(nb) < cfg.velocity_testing_share
    risky_online = np.where(w.m_online, w.m_pop * _CAT_RISKY[w.m_cat], 0.0)
    primary = _draw(rng, w, risky_online, np.where(rng.random(nb) < 0.5, w.c_home[card], -1))
    b, pos = _bursts(sizes)
    n = len(b)
    t = anchor[b] + np.where(pos == 0, 0.0, rng.random(n) * dur[b])
    merchant = primary[b]
    other = rng.random(n) < 0.4
    merchant[other] = _draw(rng, w, risky_online, np.full(int(other.sum()), -1))
    spree = cfg.fraud_amount_median * 0.6 * _CAT_FRAUD_TICKET[w.m_cat[merchant]] * rng.lognormal(0.0, 0.6, n)
    amount = np.where(testing[b], _test_amounts(rng, cfg, n), spree)
    rows.add(t, card[b], merchant, amount, _VB)


def _test_amounts(rng: np.random.Generator, cfg: SimConfig, n: int) -> np.ndarray:
    """Card-testing amounts: 0.00 verifications, else a few cents to two units."""
    return np.where(rng.random(n) < cfg.zero_test_share, 0.0, np.round(rng.uniform(0.01, 2.0, n), 2))


def _one_off(rng: np.random.Generator, w: _World, rows: _Rows) -> None:
    cfg = w.cfg
    card = _events(rng, w, cfg.one_off_rate)
    n = len(card)
    t = _local_times(rng, w, card, _random_local_day(rng, w, n), np.where(w.c_owl[card], _P_OWL, _P_DAY))
    online = np.where(w.m_online, w.m_pop * _CAT_HABIT[w.m_cat], 0.0)
    merchant = _draw(rng, w, online, np.where(rng.random(n) < 0.5, w.c_home[card], -1))
    amount = w.c_scale[card] * _CAT_TICKET[w.m_cat[merchant]] * rng.lognormal(0.3, 0.6, n)
    rows.add(t, card, merchant, amount, _OO)


# ------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------


def generate(config: SimConfig) -> pd.DataFrame:
    """All transactions of the simulation, sorted by timestamp (stable), index 0..n-1.

    Columns are :data:`COLUMNS`: the wire-contract fields plus ``is_fraud`` (0/1) and
    ``fraud_type`` ("" for legitimate rows, else one of :data:`FRAUD_TYPES`).
    """
    rng = np.random.Generator(np.random.PCG64(config.seed))
    w = _build_world(config, rng)
    rows = _Rows()
    _legit(rng, w, rows)
    legit_t, legit_card, legit_m, _, _ = rows.columns()
    _compromised_merchants(rng, w, rows, legit_t, legit_card, legit_m)
    _compromised_cards(rng, w, rows)
    _amount_outliers(rng, w, rows)
    _velocity(rng, w, rows)
    _one_off(rng, w, rows)

    t, card, merchant, amount, kind = rows.columns()
    t_ms = np.floor(t * 1000.0).astype(np.int64)
    inside = (t_ms >= 0) & (t_ms < int(w.horizon * 1000.0))
    order = np.argsort(t_ms[inside], kind="stable")
    t_ms, card, merchant, amount, kind = (a[inside][order] for a in (t_ms, card, merchant, amount, kind))

    home = w.c_home[card]
    cat = w.m_cat[merchant]
    zero = amount == 0.0  # verifications stay 0.00 in any currency; anything else is at least a cent
    amount = np.minimum(amount * _FX[home], 50_000.0)
    amount = np.where(cat == _CASH, np.maximum(20.0, np.round(amount / 20.0) * 20.0), np.maximum(amount, 0.01))
    amount = np.where(zero, 0.0, np.round(amount, 2))

    n = len(t_ms)
    start_ms = round(config.start.timestamp() * 1000)
    offset_ms = np.rint(_OFFSET_H * 3_600_000).astype(np.int64)
    local = (start_ms + t_ms + offset_ms[home]).astype("datetime64[ms]")
    offset_str = np.array([_format_offset(h) for h in _OFFSET_H])
    timestamp = np.char.add(np.datetime_as_string(local, unit="us"), offset_str[home])
    ids = _names(f"tx-{config.seed}-", n, 9)
    card_names = _names("card-", config.n_cards, 7)
    merchant_names = _names("m-", config.n_merchants, 6)
    fraud_names = np.array(("", *FRAUD_TYPES), dtype=object)
    frame = pd.DataFrame(
        {
            "transaction_id": ids,
            "timestamp": timestamp.astype(object),
            "card_id": card_names[card],
            "merchant_id": merchant_names[merchant],
            "amount": amount.astype(np.float64),
            "currency": _CURRENCY[home],
            "merchant_category": np.array(_CATS, dtype=object)[cat],
            "channel": np.array(CHANNELS, dtype=object)[w.m_channel[merchant]],
            "country": _CODES[w.m_country[merchant]],
            "is_fraud": (kind != _LEGIT).astype(np.int64),
            "fraud_type": fraud_names[kind],
        },
        columns=list(COLUMNS),
    )
    return frame


# Label sources of fraud and their shares. Customer confirmations: lognormal around 12 hours
# within [1 h, 2 days]; investigations: uniform in 1-5 days; chargebacks: lognormal with sigma
# _CHARGEBACK_SIGMA (median solved from label_delay_days), at most _CHARGEBACK_MAX_DAYS.
_FRAUD_SOURCES: tuple[str, ...] = ("customer_confirmed", "investigation", "chargeback")
_FRAUD_SOURCE_SHARES = np.array([0.2, 0.2, 0.6])
_CONFIRM_MEDIAN_S, _CONFIRM_SIGMA, _CONFIRM_MIN_S, _CONFIRM_MAX_S = 12 * _HOUR, 0.8, _HOUR, 2 * _DAY
_INVESTIGATION_MIN_S, _INVESTIGATION_MAX_S = 1 * _DAY, 5 * _DAY
_CHARGEBACK_SIGMA = 0.9
_CHARGEBACK_MAX_DAYS = 120.0  # the usual card-network dispute window
#: Mixed into the seed for the labels' random stream (the transactions use the seed alone).
_LABEL_STREAM = 0x1ABE1


def _chargeback_median_s(label_delay_days: float) -> float:
    """The chargeback delay median (seconds) that makes the median fraud label delay ``label_delay_days``.

    The fraud delay distribution is the mixture of the three sources; solving
    ``P(delay <= D) = 1/2`` for the chargeback lognormal's median is closed-form, and always
    possible because the other sources hold less than half the mass.
    """
    normal = NormalDist()
    d = label_delay_days * _DAY
    if d < _CONFIRM_MIN_S:
        confirm = 0.0
    elif d >= _CONFIRM_MAX_S:
        confirm = 1.0
    else:
        confirm = normal.cdf(math.log(d / _CONFIRM_MEDIAN_S) / _CONFIRM_SIGMA)
    span = _INVESTIGATION_MAX_S - _INVESTIGATION_MIN_S
    investigation = min(max((d - _INVESTIGATION_MIN_S) / span, 0.0), 1.0)
    a, b, c = _FRAUD_SOURCE_SHARES
    needed = (0.5 - a * confirm - b * investigation) / c  # in (0, 1): a + b < 1/2
    return d * math.exp(-_CHARGEBACK_SIGMA * normal.inv_cdf(needed))


def labels_for(frame: pd.DataFrame, config: SimConfig) -> pd.DataFrame:
    """The label events a live system would receive for ``frame``'s transactions, by ``labelled_at``.

    ``frame`` has at least ``transaction_id, timestamp, card_id, merchant_id, is_fraud`` (as from
    :func:`generate`). Every fraud row gets an ``is_fraud=True`` label; about ``legit_label_share``
    of the genuine rows get an ``is_fraud=False`` one (see the module docstring for sources and
    delays). Columns are :data:`LABEL_COLUMNS`: ``timestamp`` is the transaction's own string and
    ``labelled_at`` is written in the same UTC offset. Sorted by the instant ``labelled_at``
    denotes (stable: ties keep row order); labels falling after the simulated window are kept.
    Deterministic: a row's label depends only on ``config.seed``, the row's position and the
    label settings, never on the other rows, so a prefix of ``frame`` gets a prefix of the labels.
    """
    n = len(frame)
    # One row of uniforms per transaction: the i-th row of the matrix does not depend on n.
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([config.seed, _LABEL_STREAM])))
    u = rng.random((n, 4))
    fraud = frame["is_fraud"].to_numpy().astype(bool)
    labelled = fraud | (u[:, 0] < config.legit_label_share)
    source = np.searchsorted(np.cumsum(_FRAUD_SOURCE_SHARES), u[:, 1] * _FRAUD_SOURCE_SHARES.sum(), side="right")
    source = np.where(fraud, np.minimum(source, len(_FRAUD_SOURCES) - 1), _FRAUD_SOURCES.index("investigation"))
    # A standard normal per row (Box-Muller on two of the row's uniforms).
    z = np.sqrt(-2.0 * np.log1p(-u[:, 2])) * np.cos(2.0 * math.pi * u[:, 3])
    confirm = np.clip(_CONFIRM_MEDIAN_S * np.exp(_CONFIRM_SIGMA * z), _CONFIRM_MIN_S, _CONFIRM_MAX_S)
    investigation = _INVESTIGATION_MIN_S + u[:, 2] * (_INVESTIGATION_MAX_S - _INVESTIGATION_MIN_S)
    chargeback = np.minimum(
        _chargeback_median_s(config.label_delay_days) * np.exp(_CHARGEBACK_SIGMA * z), _CHARGEBACK_MAX_DAYS * _DAY
    )
    delay_s = np.choose(source, [confirm, investigation, chargeback])

    rows = frame.loc[labelled]
    ts = pd.to_datetime(rows["timestamp"], utc=True, format="ISO8601")
    ts_ms = ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).to_numpy(dtype=np.int64)
    labelled_ms = ts_ms + np.rint(delay_s[labelled] * 1000.0).astype(np.int64)
    offset_min = parse_offsets_minutes(rows["timestamp"]) if len(rows) else np.zeros(0, np.int64)
    local = (labelled_ms + offset_min * 60_000).astype("datetime64[ms]")
    zone = np.array([_format_offset(m / 60.0) for m in offset_min], dtype=object)
    labelled_at = np.char.add(np.datetime_as_string(local, unit="us"), zone.astype(str)) if len(rows) else zone
    out = pd.DataFrame(
        {
            "transaction_id": rows["transaction_id"].to_numpy(dtype=object),
            "card_id": rows["card_id"].to_numpy(dtype=object),
            "merchant_id": rows["merchant_id"].to_numpy(dtype=object),
            "is_fraud": fraud[labelled],
            "timestamp": rows["timestamp"].to_numpy(dtype=object),
            "labelled_at": np.asarray(labelled_at).astype(object),
            "source": np.array(_FRAUD_SOURCES, dtype=object)[source[labelled]],
        },
        columns=list(LABEL_COLUMNS),
    )
    order = np.argsort(labelled_ms, kind="stable")
    return out.iloc[order].reset_index(drop=True)


def with_label_columns(frame: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """``frame`` plus :data:`CSV_LABEL_COLUMNS`: each row's ``labelled_at`` and ``label_source`` from
    ``labels`` (as from :func:`labels_for`), empty strings for rows without a label."""
    out = frame.copy()
    by_id = labels.set_index("transaction_id")
    out["labelled_at"] = out["transaction_id"].map(by_id["labelled_at"]).fillna("").astype(object)
    out["label_source"] = out["transaction_id"].map(by_id["source"]).fillna("").astype(object)
    return out


def _names(prefix: str, n: int, width: int) -> np.ndarray:
    """``prefix`` + zero-padded 0..n-1, as an object array."""
    if n == 0:
        return np.empty(0, dtype=object)
    return np.char.add(prefix, np.char.zfill(np.arange(n).astype(np.str_), width)).astype(object)


def _format_offset(hours: float) -> str:
    minutes = round(hours * 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def iter_transactions(config: SimConfig) -> Iterator[dict]:
    """Same rows as :func:`generate`, in timestamp order, as wire-contract dicts.

    Each dict carries the :data:`WIRE_FIELDS` plus the labels ``is_fraud`` and ``fraud_type``
    (a producer strips them; the scorer ignores unknown fields). Values are plain Python types.
    The whole simulation runs up front (rows must be sorted), then rows are yielded in chunks.
    """
    yield from iter_records(generate(config))


def iter_records(frame: pd.DataFrame, chunk: int = 10_000) -> Iterator[dict]:
    """``frame``'s rows as dicts of plain Python values, converted a chunk at a time."""
    for begin in range(0, len(frame), chunk):
        yield from frame.iloc[begin : begin + chunk].to_dict("records")


def expected_rows_per_card_day(config: SimConfig) -> float:
    """Expected transactions per card per day (legitimate and fraudulent) under ``config``."""
    lo, hi = config.min_daily_rate, config.max_daily_rate
    mean_rate = lo if hi == lo else (hi - lo) / math.log(hi / lo)
    legit = mean_rate * (1.0 + config.followup_prob) * (1.0 + config.online_affinity * config.verification_share)
    binge = config.binge_card_share * config.binge_sessions_per_day * max(config.binge_session_mean_tx, 2.0)
    fraud = (
        config.card_compromise_rate * max(config.card_burst_mean_tx, 1.0)
        + config.amount_outlier_rate
        + config.velocity_rate * max(config.velocity_mean_tx, 5.0)
        + config.one_off_rate
    )
    merchant_fraud = legit * config.compromised_merchant_share * 0.5 * config.compromised_merchant_fraud_share
    return legit + binge + fraud + merchant_fraud


def config_for_rows(n_rows: int, seed: int = 7, days: float = 30.0) -> SimConfig:
    """A default config whose expected row count is about ``n_rows``.

    Picks ``n_cards``; ``n_merchants`` keeps the default 5 cards per merchant (at least 100).
    """
    if n_rows < 1:
        raise ValueError("n_rows must be >= 1")
    base = SimConfig(seed=seed, days=days)
    n_cards = max(1, round(n_rows / (days * expected_rows_per_card_day(base))))
    return replace(base, n_cards=n_cards, n_merchants=max(100, round(n_cards / 5)))
