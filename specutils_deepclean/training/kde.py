"""Fitting the per-class Gaussian KDE prior of latent vectors: bandwidth rules, merges.

`train_kde` builds a `~specutils_deepclean.models.prior.KDEPrior` (torch) from
NumPy latents and labels; evaluating and sampling are the prior's own methods.
See :doc:`/kde` for the rules.
"""

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from astropy.utils.exceptions import AstropyUserWarning
from scipy.special import logsumexp

__all__ = [
    "CV_GRID",
    "train_kde",
    "held_out_log_likelihood",
    "scott_factor",
    "silverman_factor",
]

#: Bandwidth factors tried by ``bandwidth="cv"``, as multiples of Scott's factor.
CV_GRID = np.geomspace(0.2, 5.0, 41)

_RULES = ("scott", "silverman", "cv")


def scott_factor(n: int, n_dim: int) -> float:
    r"""Scott's rule bandwidth factor, :math:`n^{-1/(L+4)}`.

    Examples
    --------
    >>> from specutils_deepclean.training.kde import scott_factor
    >>> scott_factor(100, 3)  # doctest: +FLOAT_CMP
    0.5179474679231211
    """
    return float(n) ** (-1.0 / (n_dim + 4))


def silverman_factor(n: int, n_dim: int) -> float:
    r"""Silverman's rule bandwidth factor, :math:`(n (L + 2) / 4)^{-1/(L+4)}`.

    Examples
    --------
    >>> from specutils_deepclean.training.kde import silverman_factor
    >>> silverman_factor(100, 3)  # doctest: +FLOAT_CMP
    0.5016969106227039
    """
    return (n * (n_dim + 2) / 4.0) ** (-1.0 / (n_dim + 4))


def train_kde(
    latents,
    labels,
    *,
    bandwidth: str | float = "scott",
    min_class_size: int = 5,
    merge_map: Mapping[str, str] | None = None,
    classes: Sequence[str] | None = None,
    shrinkage: str | float = "auto",
    val_latents=None,
    val_labels=None,
    cv_grid=None,
):
    r"""Fit one Gaussian KDE per class to training latents.

    The bandwidth matrix of class :math:`C` is :math:`H_C = h_C^2 \Sigma_C`, with
    :math:`\Sigma_C` the class covariance (shrunk towards the pooled within-class
    covariance, see ``shrinkage``) and the factor :math:`h_C` set by ``bandwidth``.

    Classes with fewer than ``min_class_size`` training points are first merged into
    another class: the one named in ``merge_map``, else the nearest large class, the
    one whose mean is closest to the small class's mean in Mahalanobis distance
    under the pooled within-class covariance of the large classes.  Merges are
    followed to the end (with ``{"O": "B"}`` and B merged into A, O ends in A) and
    recorded in the prior's ``merges``.

    Parameters
    ----------
    latents : array_like, shape (N, L)
        Training latent vectors, finite.
    labels : array_like, shape (N,)
        Class name of each latent (converted to str).
    bandwidth : {"scott", "silverman", "cv"} or float
        ``"scott"``: :math:`h = n_C^{-1/(L+4)}` (`scott_factor`);
        ``"silverman"``: :math:`h = (n_C (L+2)/4)^{-1/(L+4)}` (`silverman_factor`);
        ``"cv"``: the factor in ``cv_grid`` times Scott's that maximises the mean
        log density of held-out latents of the class (`held_out_log_likelihood`):
        the class's validation latents when it has at least ``min_class_size`` of
        them, else its training latents, each left out in turn;
        a positive float: that factor for every class.
    min_class_size : int
        Smallest number of training points (at least 2) a class keeps its own KDE with.
    merge_map : mapping of str to str, optional
        Explicit merges, class -> class it joins (e.g. ``{"O": "B", "unknown": "K"}``),
        applied before the automatic ones; any class may be named, not only small ones.
    classes : sequence of str, optional
        The class names in order (default: the sorted distinct labels).  A class
        listed here without any training point must be given a target in ``merge_map``.
    shrinkage : "auto" or float
        Weight :math:`\lambda_C` in :math:`\Sigma_C = (1-\lambda_C) S_C + \lambda_C S_p`
        (:math:`S_C` class sample covariance, :math:`S_p` pooled within-class
        covariance).  ``"auto"``: :math:`\lambda_C = (L+1)/(n_C + L)`, a prior worth
        :math:`L+1` points, which keeps small classes in many dimensions
        non-singular and leaves large classes almost untouched; ``0`` gives the
        plain class covariance (as `scipy.stats.gaussian_kde`).
    val_latents, val_labels : array_like, optional
        Validation latents and labels, used only by ``bandwidth="cv"``; labels of
        merged classes count for their target class.
    cv_grid : array_like, optional
        Positive multiples of Scott's factor tried by ``"cv"`` (default ``CV_GRID``,
        0.2 to 5, 41 values, log-spaced).

    Returns
    -------
    `~specutils_deepclean.models.prior.KDEPrior`
        With ``factors`` (the :math:`h_C` chosen), ``merges`` and ``bandwidth_rule``.

    Raises
    ------
    ValueError
        If the inputs are malformed (shapes, NaN, lengths), the rule is unknown, a
        merge names an unknown class or forms a cycle, a class has no point left to
        fit, or no class has ``min_class_size`` points.

    Warns
    -----
    `~astropy.utils.exceptions.AstropyUserWarning`
        If ``"cv"`` chooses the smallest or largest factor of the grid.

    Examples
    --------
    >>> import numpy as np
    >>> from specutils_deepclean.training.kde import train_kde
    >>> rng = np.random.default_rng(0)
    >>> z = np.concatenate([rng.normal(0, 1, (50, 2)), rng.normal(5, 1, (2, 2))])
    >>> labels = ["B"] * 50 + ["O"] * 2
    >>> prior = train_kde(z, labels)
    >>> prior.class_names, prior.merges
    (('B',), {'O': 'B'})
    """
    latents, labels = _check_latents(latents, labels, "latents", "labels")
    n_dim = latents.shape[1]
    if (
        isinstance(min_class_size, bool)
        or not isinstance(min_class_size, int | np.integer)
        or min_class_size < 2
    ):
        raise ValueError(f"min_class_size must be an int >= 2, got {min_class_size!r}")
    _check_bandwidth(bandwidth)
    classes = _class_list(labels, classes)
    merges = _merges(latents, labels, classes, merge_map, min_class_size)
    kept = [c for c in classes if c not in merges]
    target = np.array([merges.get(label, label) for label in labels])
    groups = [latents[target == c] for c in kept]
    covariances = _covariances(groups, shrinkage)
    if bandwidth == "cv":
        held_out = _held_out_groups(val_latents, val_labels, kept, merges, min_class_size, n_dim)
        factors = _cv_factors(groups, covariances, held_out, kept, cv_grid)
    else:
        factors = np.array([_rule_factor(bandwidth, len(g), n_dim) for g in groups])
    from ..models.prior import KDEPrior

    return KDEPrior(
        np.concatenate(groups),
        [len(g) for g in groups],
        factors[:, None, None] ** 2 * covariances,
        kept,
        factors=factors,
        merges=merges,
        bandwidth_rule=bandwidth if isinstance(bandwidth, str) else f"factor={float(bandwidth)!r}",
    )


def held_out_log_likelihood(points, covariance, factors, held_out=None) -> np.ndarray:
    r"""Mean log density of held-out points under a KDE, for several bandwidth factors.

    The KDE has kernels at ``points`` with covariance
    :math:`h^2 \Sigma` (:math:`\Sigma` = ``covariance``), one value per factor
    :math:`h`.  Without ``held_out``, each point is scored by the KDE of the
    others (leave-one-out), which needs at least two points.

    Parameters
    ----------
    points : array_like, shape (n, L)
    covariance : array_like, shape (L, L)
        Symmetric positive definite.
    factors : array_like, shape (G,)
        Positive bandwidth factors.
    held_out : array_like, shape (m, L), optional
        Points to score (default: leave-one-out on ``points``).

    Returns
    -------
    `~numpy.ndarray`, shape (G,)

    Examples
    --------
    >>> import numpy as np
    >>> from specutils_deepclean.training.kde import held_out_log_likelihood
    >>> x = np.random.default_rng(1).normal(size=(200, 1))
    >>> scores = held_out_log_likelihood(x, np.eye(1), [0.05, 0.4, 3.0])
    >>> int(np.argmax(scores))
    1
    """
    points = np.asarray(points, dtype=np.float64)
    factors = np.asarray(factors, dtype=np.float64)
    if np.any(~(factors > 0)):
        raise ValueError(f"bandwidth factors must be positive, got {factors}")
    chol = np.linalg.cholesky(np.asarray(covariance, dtype=np.float64))
    white = np.linalg.solve(chol, points.T).T
    if held_out is None:
        if len(points) < 2:
            raise ValueError("leave-one-out needs at least two points")
        sq = _pairwise_sq(white, white)
        np.fill_diagonal(sq, np.inf)
        n_kernels = len(points) - 1
    else:
        sq = _pairwise_sq(np.linalg.solve(chol, np.asarray(held_out, dtype=np.float64).T).T, white)
        n_kernels = len(points)
    n_dim = points.shape[1]
    const = -0.5 * n_dim * math.log(2 * math.pi) - np.log(np.diag(chol)).sum() - math.log(n_kernels)
    return np.array(
        [logsumexp(-0.5 * sq / h**2, axis=1).mean() - n_dim * math.log(h) + const for h in factors]
    )




def _check_latents(latents, labels, name, label_name):
    latents = np.array(latents, dtype=np.float64, copy=True)
    if latents.ndim != 2 or latents.shape[0] == 0 or latents.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (N, L), got shape {latents.shape}")
    if not np.all(np.isfinite(latents)):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(latents):
        raise ValueError(
            f"{label_name} must be 1-D with one label per latent: {len(latents)} latents, "
            f"{label_name} of shape {labels.shape}"
        )
    return latents, np.array([str(label) for label in labels], dtype=object)


def _check_bandwidth(bandwidth):
    if isinstance(bandwidth, str):
        if bandwidth not in _RULES:
            raise ValueError(
                f"unknown bandwidth rule {bandwidth!r}; use one of {_RULES} or a positive float"
            )
    elif (
        isinstance(bandwidth, bool)
        or not isinstance(bandwidth, int | float | np.number)
        or not bandwidth > 0
    ):
        raise ValueError(
            f"bandwidth must be one of {_RULES} or a positive float, got {bandwidth!r}"
        )
    elif not math.isfinite(bandwidth):
        raise ValueError(f"bandwidth factor must be finite, got {bandwidth!r}")


def _class_list(labels, classes) -> list:
    present = sorted(set(labels))
    if classes is None:
        return present
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"classes must be a sequence of str, got {classes!r}")
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must be unique, got {classes}")
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not in classes {classes}")
    return classes


def _merges(latents, labels, classes, merge_map, min_class_size) -> dict:
    """Final merges, each small or explicitly merged class -> the kept class it ends in."""
    explicit = _check_merge_map(merge_map, classes)
    ends = {c: _follow(c, explicit) for c in classes}
    kept = [c for c in classes if c not in explicit]
    members = {k: [c for c in classes if ends[c] == k] for k in kept}
    grouped = {k: latents[np.isin(labels, members[k])] for k in kept}
    large = [k for k in kept if len(grouped[k]) >= min_class_size]
    if not large:
        raise ValueError(f"no class has min_class_size={min_class_size} training points or more")
    auto = {}
    for k in kept:
        if k in large:
            continue
        if len(grouped[k]) == 0:
            raise ValueError(f"class {k!r} has no training points; name its target in merge_map")
        auto[k] = _nearest_class(grouped[k], {c: grouped[c] for c in large})
    return {c: auto.get(ends[c], ends[c]) for c in classes if c in explicit or c in auto}


def _check_merge_map(merge_map, classes) -> dict:
    if merge_map is None:
        return {}
    if not isinstance(merge_map, Mapping):
        raise ValueError(
            f"merge_map must be a mapping of class -> class, got {type(merge_map).__name__}"
        )
    for source, target in merge_map.items():
        if source not in classes or target not in classes:
            raise ValueError(f"merge_map {source!r} -> {target!r} names a class not in {classes}")
        if source == target:
            raise ValueError(f"merge_map merges class {source!r} into itself")
    return dict(merge_map)


def _follow(name, merge_map):
    seen = [name]
    while name in merge_map:
        name = merge_map[name]
        if name in seen:
            raise ValueError(f"merge_map has a cycle: {' -> '.join([*seen, name])}")
        seen.append(name)
    return name


def _nearest_class(points, large: dict) -> str:
    """The large class whose mean is nearest (Mahalanobis, pooled covariance) to mean(points)."""
    pooled = _pooled([g for g in large.values()])
    mean = points.mean(axis=0)
    precision = np.linalg.pinv(pooled)
    offsets = {c: mean - g.mean(axis=0) for c, g in large.items()}
    distance = {c: d @ precision @ d for c, d in offsets.items()}
    return min(distance, key=distance.get)


def _pooled(groups) -> np.ndarray:
    scatter = sum((len(g) - 1) * _sample_cov(g) for g in groups)
    return scatter / sum(len(g) - 1 for g in groups)


def _sample_cov(points) -> np.ndarray:
    return np.atleast_2d(np.cov(points, rowvar=False, ddof=1))


def _covariances(groups, shrinkage) -> np.ndarray:
    n_dim = groups[0].shape[1]
    if isinstance(shrinkage, str):
        if shrinkage != "auto":
            raise ValueError(f"shrinkage must be 'auto' or a float in [0, 1], got {shrinkage!r}")
        weights = [(n_dim + 1) / (len(g) + n_dim) for g in groups]
    elif (
        isinstance(shrinkage, bool)
        or not isinstance(shrinkage, int | float | np.number)
        or not 0 <= shrinkage <= 1
    ):
        raise ValueError(f"shrinkage must be 'auto' or a float in [0, 1], got {shrinkage!r}")
    else:
        weights = [float(shrinkage)] * len(groups)
    pooled = _pooled(groups)
    covariances = np.stack(
        [(1 - w) * _sample_cov(g) + w * pooled for g, w in zip(groups, weights, strict=True)]
    )
    return covariances


def _rule_factor(bandwidth, n, n_dim) -> float:
    if bandwidth == "scott":
        return scott_factor(n, n_dim)
    if bandwidth == "silverman":
        return silverman_factor(n, n_dim)
    return float(bandwidth)


def _held_out_groups(val_latents, val_labels, kept, merges, min_class_size, n_dim) -> list:
    """Validation latents of each kept class, or None where it has too few (leave-one-out)."""
    if val_latents is None and val_labels is None:
        return [None] * len(kept)
    if val_latents is None or val_labels is None:
        raise ValueError("give both val_latents and val_labels, or neither")
    val_latents, val_labels = _check_latents(val_latents, val_labels, "val_latents", "val_labels")
    if val_latents.shape[1] != n_dim:
        raise ValueError(
            f"val_latents have {val_latents.shape[1]} dimensions, latents have {n_dim}"
        )
    target = np.array([merges.get(label, label) for label in val_labels], dtype=object)
    unknown = sorted(set(target) - set(kept))
    if unknown:
        raise ValueError(f"val_labels {unknown} are not classes of the training labels")
    held = [val_latents[target == c] for c in kept]
    return [h if len(h) >= min_class_size else None for h in held]


def _cv_factors(groups, covariances, held_out, names, cv_grid) -> np.ndarray:
    grid = CV_GRID if cv_grid is None else np.asarray(cv_grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2 or np.any(~(grid > 0)) or not np.all(np.isfinite(grid)):
        raise ValueError(f"cv_grid must be a 1-D array of at least 2 positive factors, got {grid}")
    grid = np.sort(grid)
    factors = []
    for points, covariance, held, name in zip(groups, covariances, held_out, names, strict=True):
        trial = scott_factor(len(points), points.shape[1]) * grid
        scores = held_out_log_likelihood(points, covariance, trial, held)
        best = int(np.argmax(scores))
        if best in (0, grid.size - 1):
            warnings.warn(
                f"cross-validation chose the {'smallest' if best == 0 else 'largest'} "
                f"bandwidth factor of the grid ({trial[best]:.3g}) for class {name!r}; "
                "widen cv_grid",
                AstropyUserWarning,
                stacklevel=3,
            )
        factors.append(trial[best])
    return np.array(factors)


def _pairwise_sq(a, b) -> np.ndarray:
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
