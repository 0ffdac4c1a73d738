"""Compiled (numba) kernels for the hot numeric paths.

Compiled code is cached on disk when it can be, so a process that starts after another needs
no compilation: numba writes next to this file, or under ``NUMBA_CACHE_DIR`` when that is set.
Containers run with a read-only file system, so a cache that cannot be written is not an error:
the kernels are then compiled in memory at model load (~0.5 s, once per process).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

log = logging.getLogger(__name__)

#: Columns of the node table (int64).
COLUMN, LEFT, RIGHT, LEAF, MISSING_LEFT, CATEGORICAL, BITSET, CATEGORY_SET = range(8)
#: Columns of the node value table (float64).
THRESHOLD, VALUE = range(2)


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def cache_enabled() -> bool:
    """Whether numba can keep compiled kernels on disk here (``NUMBA_CACHE_DIR`` or beside this file)."""
    configured = os.environ.get("NUMBA_CACHE_DIR")
    return _writable(Path(configured) if configured else Path(__file__).parent / "__pycache__")


def _jit(func: Any) -> Any:
    cache = cache_enabled()
    try:
        return njit(nogil=True, cache=cache)(func)
    except RuntimeError as exc:  # numba found no cache locator after all: compile in memory
        log.warning("numba cannot cache %s (%s); compiling in memory", func.__name__, exc)
        return njit(nogil=True, cache=False)(func)


@_jit
def _category_code(value: float, categories: np.ndarray, start: int, end: int) -> int:
    """The category's ordinal code, as scikit-learn's OrdinalEncoder gives it; -1 when unknown
    or missing (the encoder gives NaN)."""
    if math.isnan(value):
        return -1
    lo, hi = start, end
    while lo < hi:  # the categories are sorted (np.unique); find the first >= value
        mid = (lo + hi) // 2
        if categories[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    if lo < end and categories[lo] == value:
        return lo - start
    return -1


@_jit
def _in_bitset(bitset: np.ndarray, code: int) -> bool:
    return (bitset[code // 32] >> np.uint32(code % 32)) & np.uint32(1) == 1


@_jit
def tree_raw_scores(
    x: np.ndarray,
    baseline: float,
    roots: np.ndarray,
    nodes: np.ndarray,
    node_values: np.ndarray,
    left_bitsets: np.ndarray,
    known_bitsets: np.ndarray,
    categories: np.ndarray,
    category_starts: np.ndarray,
    out: np.ndarray,
) -> None:
    """The raw (pre-link) score of each row of ``x`` into ``out``: the baseline plus each
    tree's leaf, added tree by tree as scikit-learn adds them, so the sums are the same bits.

    A node goes left when the value is ``<= threshold``; a missing value (NaN, or for a
    categorical split an unknown category) goes where the split sent missing values in
    training; a category goes left when it is in the split's set, right when it is a category
    known in training. This is scikit-learn's ``_predict_one_from_raw_data``, with its
    OrdinalEncoder folded in.
    """
    n = x.shape[0]
    for i in range(n):
        out[i] = baseline
    for t in range(roots.shape[0]):  # trees outside: a tree's nodes stay in cache for all rows
        for i in range(n):
            node = roots[t]
            while nodes[node, LEAF] == 0:
                value = x[i, nodes[node, COLUMN]]
                if nodes[node, CATEGORICAL] != 0:
                    which = nodes[node, CATEGORY_SET]
                    code = _category_code(value, categories, category_starts[which], category_starts[which + 1])
                    if code < 0:
                        go_left = nodes[node, MISSING_LEFT] != 0
                    elif _in_bitset(left_bitsets[nodes[node, BITSET]], code):
                        go_left = True
                    elif _in_bitset(known_bitsets[which], code):
                        go_left = False
                    else:  # a category unseen in training counts as missing
                        go_left = nodes[node, MISSING_LEFT] != 0
                elif math.isnan(value):
                    go_left = nodes[node, MISSING_LEFT] != 0
                else:
                    go_left = value <= node_values[node, THRESHOLD]
                node = nodes[node, LEFT] if go_left else nodes[node, RIGHT]
            out[i] += node_values[node, VALUE]
