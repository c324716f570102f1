"""Grouping per-spectrum results of a benchmark: win rates and statistics per class, S/N...

`win_rates_by` and `grouped` split the spectra of a benchmark run by one or more
label arrays (class, S/N, gap) for its tables; the per-spectrum measures they group
(`~specutils_deepclean.metrics.win_rate`, `~specutils_deepclean.metrics.mse`) are in
:mod:`specutils_deepclean.metrics`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..metrics import _as_data, _as_same_shape, win_rate

__all__ = ["win_rates_by", "grouped"]


def _group_rows(n: int, groups: tuple[ArrayLike, ...]) -> dict[Hashable, NDArray[np.int_]]:
    """Row indices per group key, keys sorted; one label array gives bare labels."""
    if not groups:
        raise ValueError("at least one array of group labels is required")
    labels = [np.asarray(g) for g in groups]
    for i, label in enumerate(labels):
        if label.shape != (n,):
            raise ValueError(f"group labels {i} have shape {label.shape}, expected ({n},)")
    rows: dict[Hashable, list[int]] = defaultdict(list)
    for row, key in enumerate(zip(*(label.tolist() for label in labels), strict=True)):
        rows[key if len(key) > 1 else key[0]].append(row)
    return {key: np.array(rows[key]) for key in sorted(rows)}


def win_rates_by(mse_a: ArrayLike, mse_b: ArrayLike, *groups: ArrayLike) -> dict[Hashable, float]:
    """:func:`~specutils_deepclean.metrics.win_rate` of A over B within each group of spectra.

    Parameters
    ----------
    mse_a, mse_b : array-like, shape (n_spec,)
        Per-spectrum errors of methods A and B.
    *groups : array-like, shape (n_spec,)
        One or more arrays of labels (class, S/N, gap, ...).

    Returns
    -------
    dict
        Win rate per group, keys sorted: the label itself with one label array,
        a tuple of labels with several (for class x S/N tables).

    Examples
    --------
    >>> a = [0.1, 0.3, 0.1, 0.1]
    >>> b = [0.2, 0.2, 0.2, 0.1]
    >>> win_rates_by(a, b, ["G", "G", "K", "K"])  # G: (1 + 0) / 2, K: (1 + 0.5) / 2
    {'G': 0.5, 'K': 0.75}
    >>> win_rates_by(a, b, ["G", "G", "K", "K"], [5, 10, 5, 5])
    {('G', 5): 1.0, ('G', 10): 0.0, ('K', 5): 0.75}
    """
    a, b = _as_same_shape(mse_a=mse_a, mse_b=mse_b)
    if a.ndim != 1:
        raise ValueError(f"mse_a and mse_b must be 1-D (one error per spectrum), got {a.shape}")
    return {key: win_rate(a[rows], b[rows]) for key, rows in _group_rows(a.size, groups).items()}


def grouped(
    values: ArrayLike,
    *groups: ArrayLike,
    statistic: Callable[[NDArray[np.float64]], float] = np.median,
) -> dict[Hashable, float]:
    """A statistic of per-spectrum values within each group (median MSE per S/N, ...).

    Parameters
    ----------
    values : array-like, shape (n_spec,)
        One value per spectrum; NaN values are dropped.
    *groups : array-like, shape (n_spec,)
        One or more arrays of labels.
    statistic : callable, optional
        Reduces a 1-D array to a number (default `numpy.median`).

    Returns
    -------
    dict
        The statistic per group, keyed as in :func:`win_rates_by`; NaN for a group
        whose values are all NaN.

    Examples
    --------
    >>> grouped([1.0, 3.0, 2.0, np.nan], [5, 5, 10, 10])
    {5: 2.0, 10: 2.0}
    >>> grouped([1.0, 3.0, 2.0, 4.0], [5, 5, 10, 10], statistic=np.max)
    {5: 3.0, 10: 4.0}
    """
    values = _as_data("values", values)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D (one value per spectrum), got {values.shape}")
    out = {}
    for key, rows in _group_rows(values.size, groups).items():
        kept = values[rows][~np.isnan(values[rows])]
        out[key] = float(statistic(kept)) if kept.size else math.nan
    return out
