r"""Several exposures of one star: one flux level for all, and per-exposure values pooled.

The denoiser fits all the exposures of a star in one posterior.  Two things are
estimated per exposure before or beside that fit, and both must not add the noise of
one exposure to the result:

* the flux level.  The model works on median-normalised spectra, and the median of
  a noisy spectrum is biased by the noise (the noise is symmetric, a spectrum's
  distribution of fluxes is not: on MILES val the median of an S/N 5 spectrum is
  3 % off, of an S/N 10 one 1.4 %,
  ``benchmarks/results/normalisation_level_val.json``).
  Normalising each exposure by its own median gives every exposure the bias, and the
  scatter, of one exposure's S/N.  `exposure_scales` instead measures each
  exposure's throughput relative to the others with a linear (so unbiased) statistic,
  puts them on one level and takes the median of their co-add: the level a co-add
  would get.
* the throughputs and the radial velocities themselves: one per exposure, but where
  the exposures agree within their errors they are pooled (`random_effects`), so
  that one exposure's noise does not set the output's scale or frame.
"""

from __future__ import annotations

import numpy as np
from scipy.special import chdtri

from .metrics import der_snr_array

__all__ = ["SIGNIFICANCE", "exposure_scales", "pool_velocities", "random_effects"]

#: Pixels further than this many noise units from the co-add do not count in the
#: throughput ratios (cosmic-ray hits, sky residuals).
_CLIP = 5.0
#: Rounds of the throughput ratios (each against the co-add of the previous ones).
_ROUNDS = 3
#: Relative level differences between exposures that are not throughput (sky
#: subtraction residuals: the simulator's reach 0.5 % of the star's level), added in
#: quadrature to each ratio's error.
_LEVEL_FLOOR = 0.005
#: Smallest own variance of a velocity, km^2/s^2 (an error at the floor itself).
_OWN_MIN = 1e-6
#: Chance (without a real spread) that `random_effects` keeps estimates apart.
SIGNIFICANCE = 0.05


def random_effects(
    values, variances, significance: float = SIGNIFICANCE
) -> tuple[np.ndarray, np.ndarray]:
    r"""Pool per-exposure estimates that agree within their errors (random effects).

    Each star's E estimates :math:`x_j` (variances :math:`v_j`) are taken as
    :math:`x_j \sim N(\theta_j, v_j)`, :math:`\theta_j \sim N(\mu, \tau^2)`, with
    :math:`\tau^2 = \max(0, (Q - q) / (S_1 - S_2 / S_1))`, :math:`Q = \sum_j
    (x_j - \bar x)^2 / v_j`, :math:`\bar x` the precision-weighted mean,
    :math:`S_k = \sum_j v_j^{-k}`: the DerSimonian-Laird estimate with :math:`q`, the
    :math:`1 - \alpha` quantile of :math:`\chi^2_{E-1}` (the distribution of
    :math:`Q` when the :math:`\theta_j` are equal), in place of its mean
    :math:`E - 1`.  So estimates that agree within their errors are kept apart by
    chance only with probability :math:`\alpha` (the plain estimate, :math:`q = E -
    1`, does so with probability 0.32 for two exposures, 0.39 for four: the output,
    in the first exposure's units and frame, then carries that exposure's own error),
    while estimates far apart (:math:`Q \gg q`) keep theirs as before.  The result is
    the posterior mean of each :math:`\theta_j`, :math:`\hat\mu + \tau^2 / (\tau^2 +
    v_j) (x_j - \hat\mu)` (:math:`\hat\mu` weighted by :math:`1 / (\tau^2 + v_j)`),
    and its variance, :math:`\tau^2 v_j / (\tau^2 + v_j) + (v_j / (\tau^2 +
    v_j))^2 \operatorname{Var} \hat\mu`.  Estimates that agree (:math:`\tau^2 = 0`) all
    become the weighted mean, with its variance; estimates far apart keep their values
    and variances.

    Parameters
    ----------
    values : array_like, shape (B, E)
        The estimates; NaN for an exposure left out (kept as NaN).
    variances : array_like, shape (B, E)
        Their variances (> 0; inf for an estimate without information, kept as is).
    significance : float, optional
        :math:`\alpha`, in (0, 1): the chance that agreeing estimates are kept apart
        (default `SIGNIFICANCE`, 0.05, chosen on MILES ``val`` against 0.32, the plain
        estimate's, and 0.01: see the denoising docs, *Several exposures*).

    Returns
    -------
    pooled, variance : ndarray, shape (B, E)

    Raises
    ------
    ValueError
        If the shapes differ or are not 2-D, a variance is not positive, or
        ``significance`` is not in (0, 1).

    Examples
    --------
    >>> pooled, var = random_effects([[1.0, 1.2], [0.0, 10.0]], [[0.04, 0.04], [0.04, 0.04]])
    >>> pooled.round(3).tolist(), var.round(3).tolist()
    ([[1.1, 1.1], [0.004, 9.996]], [[0.02, 0.02], [0.04, 0.04]])
    """
    if not 0 < significance < 1:
        raise ValueError(f"significance must be in (0, 1), got {significance!r}")
    x = np.asarray(values, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    if x.ndim != 2 or v.shape != x.shape:
        raise ValueError(f"values and variances must be 2-D of one shape, got {x.shape}, {v.shape}")
    used = np.isfinite(x) & np.isfinite(v)
    if np.any(used & ~(v > 0)):
        raise ValueError("variances must be positive")
    p = np.where(used, 1 / np.where(used, v, 1.0), 0.0)
    s1, s2 = p.sum(1), np.square(p).sum(1)
    safe1 = np.where(s1 > 0, s1, 1.0)
    mean = (p * np.where(used, x, 0.0)).sum(1) / safe1
    q = (p * np.square(np.where(used, x - mean[:, None], 0.0))).sum(1)
    dof = used.sum(1) - 1
    quantile = chdtri(np.maximum(dof, 1), significance)  # one estimate: spread 0 below
    spread = np.where(s1 > 0, s1 - s2 / safe1, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau2 = np.where(spread > 0, np.maximum(0.0, (q - quantile) / spread), 0.0)[:, None]
    vv = np.where(used, v, 1.0)
    w = np.where(used, 1 / (tau2 + vv), 0.0)
    mu = (w * np.where(used, x, 0.0)).sum(1, keepdims=True) / np.where(
        w.sum(1, keepdims=True) > 0, w.sum(1, keepdims=True), 1.0
    )
    mu_var = 1 / np.where(w.sum(1, keepdims=True) > 0, w.sum(1, keepdims=True), np.inf)
    share = tau2 / (tau2 + vv)
    pooled = np.where(used, mu + share * (x - mu), x)
    variance = np.where(used, tau2 * vv / (tau2 + vv) + np.square(1 - share) * mu_var, v)
    return pooled, variance


def pool_velocities(velocity, error, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    r"""The exposures' velocities pooled where they agree (`random_effects`), and their errors.

    Each error is :math:`\sqrt{e_j^2 + f^2}`: the exposure's own (statistical) error
    :math:`e_j` and a floor :math:`f` that stands for what all the exposures of one
    star share (the mismatch between the star and the model's spectrum, the same in
    every exposure).  The velocities are pooled with the whole errors (exposures that
    agree within them share one velocity: on MILES ``val``, pooling with the own
    errors alone kept more exposures apart and raised the denoiser's MSE with four
    exposures at S/N 10 by 6 %); the pooled error is that of the own errors pooled,
    with the floor added back, so that it does not shrink with the number of
    exposures.

    Parameters
    ----------
    velocity, error : array_like, shape (B, E)
        Each exposure's fitted velocity and its calibrated error (km/s,
        `~specutils_deepclean.models.velocity.velocity_error`).
    floor : float, optional
        :math:`f`, km/s (the model's ``extra["velocity_error"][1]``), at most the
        smallest finite error; default 0.

    Returns
    -------
    velocity, error : ndarray, shape (B, E)
        The pooled velocities and their standard deviations.

    Raises
    ------
    ValueError
        If ``floor`` is negative or not finite.

    Examples
    --------
    >>> v, e = pool_velocities([[10.0, 12.0]], [[5.0, 5.0]], floor=4.0)
    >>> v.round(3).tolist(), e.round(3).tolist()
    ([[11.0, 11.0]], [[4.528, 4.528]])
    """
    if not (np.isfinite(floor) and floor >= 0):
        raise ValueError(f"floor must be a finite number >= 0 km/s, got {floor!r}")
    total = np.square(np.asarray(error, dtype=np.float64))
    with np.errstate(invalid="ignore"):  # inf - f^2 stays inf
        own = np.where(np.isfinite(total), np.maximum(total - floor**2, _OWN_MIN), total)
    pooled, _ = random_effects(velocity, total)
    return pooled, np.sqrt(random_effects(velocity, own)[1] + floor**2)


def exposure_scales(flux, sigma=None, missing=None, scale=None) -> np.ndarray:
    r"""Factors that put the exposures of each star on one level, that of their co-add.

    ``flux / factor[..., None]`` (and ``sigma`` likewise) has the same level in every
    exposure of a star, and the median of the exposures' inverse-variance co-add is 1.
    Each exposure's throughput relative to the co-add is
    :math:`r_j = \sum_p w_{jp} y_{jp} / \sum_p w_{jp} c_p`, a ratio of weighted sums
    (linear in the data, so the noise does not bias it as it biases a median), over
    the pixels within 5 noise units of the co-add :math:`c` (three rounds, each with
    the co-add of the exposures divided by the previous ratios); the ratios are pooled
    where they agree within their errors (`random_effects`: exposures of one night
    keep one level, an exposure through clouds keeps its own).

    Parameters
    ----------
    flux : array_like, shape (B, E, P)
        The exposures of B stars, each roughly normalised (divided by its own median,
        say).
    sigma : array_like, shape (B, E, P), optional
        Their noise; without it, each exposure's DER_SNR noise level (a constant).
    missing : array_like of bool, shape (B, E, P), optional
        True where a pixel is missing; non-finite flux or sigma is missing too.
    scale : array_like, shape (B, E), optional
        The factors ``flux`` was divided by (each exposure's median, say): the
        throughputs are pooled in the input's units, these times the ratios.

    Returns
    -------
    ndarray, shape (B, E)
        Positive factors; 1 for an exposure without a valid pixel, and for a star
        whose co-add has no positive median.

    Raises
    ------
    ValueError
        If the shapes do not fit.
    """
    y = np.asarray(flux, dtype=np.float64)
    if y.ndim != 3:
        raise ValueError(f"flux must be 3-D (stars, exposures, pixels), got shape {y.shape}")
    bad = ~np.isfinite(y)
    if missing is not None:
        bad |= np.broadcast_to(np.asarray(missing, dtype=bool), y.shape)
    if sigma is not None:
        s = np.asarray(sigma, dtype=np.float64)
        if s.shape != y.shape:
            raise ValueError(f"sigma has shape {s.shape}, flux {y.shape}")
        bad |= ~(np.isfinite(s) & (s > 0))
    else:
        level = np.nanmedian(np.where(bad, np.nan, y), axis=-1) / der_snr_array(y, mask=bad)
        level = np.where(np.isfinite(level) & (level > 0), level, 1.0)
        s = np.broadcast_to(level[..., None], y.shape)
    y = np.where(bad, 0.0, y)
    w = np.where(bad, 0.0, 1 / np.square(np.where(bad, 1.0, s)))
    ratio = np.ones(y.shape[:2])
    keep = ~bad
    for _ in range(_ROUNDS):
        coadd, _ = _coadd(y, w, ratio)
        coadd = np.broadcast_to(coadd[:, None], y.shape)
        resid = np.abs(y - ratio[..., None] * coadd) * np.sqrt(w)
        keep = ~bad & np.isfinite(coadd) & (resid < _CLIP)
        coadd = np.where(keep, coadd, 0.0)
        top = (w * y * keep).sum(-1)
        below = (w * coadd * keep).sum(-1)
        ok = (below > 0) & (top > 0)
        ratio = np.where(ok, top / np.where(ok, below, 1.0), 1.0)
    # the variance of each ratio: that of its numerator (the co-add's noise neglected)
    below = (w * coadd).sum(-1)
    safe = np.where(below > 0, below, 1.0)
    variance = np.where(below > 0, (w * keep).sum(-1) / np.square(safe), np.inf)
    # pool the throughputs in the input's units: the scales divided out, times the ratios
    given = np.ones(ratio.shape) if scale is None else np.asarray(scale, dtype=np.float64)
    if given.shape != ratio.shape or not np.all(np.isfinite(given) & (given > 0)):
        raise ValueError(f"scale must hold {ratio.shape} positive numbers, got {given.shape}")
    log_total = np.log(given * ratio)
    pooled, _ = random_effects(log_total, variance / np.square(ratio) + _LEVEL_FLOOR**2)
    ratio = np.exp(pooled) / given
    coadd, counted = _coadd(y, w, ratio)
    level = np.nanmedian(np.where(counted, coadd, np.nan), axis=-1)
    level = np.where(np.isfinite(level) & (level > 0), level, 1.0)
    return ratio * level[:, None]


def _coadd(y: np.ndarray, w: np.ndarray, ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance co-add (B, P) of exposures ``y / ratio``, and where it has data."""
    r = ratio[..., None]
    weight = w * np.square(r)
    total = weight.sum(1)
    counted = total > 0
    mean = (weight * y / r).sum(1) / np.where(counted, total, 1.0)
    return np.where(counted, mean, np.nan), counted
