r"""Telluric bands: line transmission, the region the atmosphere can absorb, and the
transmission estimate of ``remove_tellurics(mode="divide")``.

The ESO transmission model (:func:`~specutils_deepclean.datasets.load_transmission`)
includes smooth continuum absorption (Rayleigh scattering, the ozone Chappuis band)
as well as the molecular bands (O\ :sub:`2`, H\ :sub:`2`\ O).  A median-normalised
spectrum cannot tell the smooth part from the star's continuum, and no method removes
it, so, like Sedaghat et al. (2023, Sect. 5.2), everything here works with the *line*
transmission: the transmission divided by its own smooth upper envelope.

``remove_tellurics(mode="divide")`` bounds its transmission by the atmosphere's own
shape: the model's reference line transmission raised to a column fitted per spectrum
and molecule (`column_bounds`), so ``T`` can only be deep where the atmosphere has
lines, and is exactly 1 in a band whose expected absorption is below the noise.

All functions work on arrays on one wavelength grid (last axis spectral) and never
see a `~specutils.Spectrum`.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.ndimage import binary_dilation, percentile_filter, uniform_filter1d

from ._deprecated import moved
from .metrics import _row_median as _sorted_row_median

__all__ = [
    "split_transmission",
    "telluric_region",
    "estimate_transmission",
    "band_segments",
    "fit_columns",
    "column_bounds",
    "BAND_GAP_AA",
    "MIN_BAND_SIGNAL",
    "MIN_NOISE",
]

#: Runs of the telluric region closer than this (Angstrom) form one band.
BAND_GAP_AA = 30.0
#: A band whose expected absorption (sum over its pixels of ``(ln T / noise)**2`` at
#: the fitted column) is below this keeps ``T = 1``: it cannot be told from noise.
MIN_BAND_SIGNAL = 1.0
#: Smallest relative noise assumed (noiseless or perfectly reconstructed spectra).
MIN_NOISE = 1e-3


def _window_pixels(wave_aa: np.ndarray, window_aa: float) -> int:
    step = float(np.median(np.diff(wave_aa)))
    return max(3, int(round(window_aa / step)) | 1)


def split_transmission(
    transmission: np.ndarray,
    wave_aa: np.ndarray,
    *,
    window_aa: float = 55.0,
    percentile: float = 95.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split a transmission into its smooth continuum and its line part.

    The continuum is the running ``percentile`` of the transmission over
    ``window_aa``, smoothed by a running mean of the same width, and never below the
    transmission itself; the line part is ``transmission / continuum`` (at most 1).

    Parameters
    ----------
    transmission : ndarray, shape (..., n_pix)
        Transmission on the grid (0 to 1).
    wave_aa : ndarray, shape (n_pix,)
        Grid wavelengths (Angstrom), increasing.
    window_aa : float
        Width of the running filters; wider than a molecular band head, narrower
        than the Chappuis band.
    percentile : float
        Percentile of the running filter (an upper envelope).

    Returns
    -------
    continuum, lines : ndarray
        ``continuum * lines == transmission``.

    Examples
    --------
    >>> wave = np.linspace(6800.0, 7000.0, 401)
    >>> band = 1 - 0.5 * np.exp(-0.5 * ((wave - 6900.0) / 2.0) ** 2)
    >>> continuum, lines = split_transmission(0.9 * band, wave)
    >>> bool(np.allclose(continuum, 0.9)), round(float(lines.min()), 2)
    (True, 0.5)
    """
    transmission = np.asarray(transmission, dtype=float)
    wave_aa = np.asarray(wave_aa, dtype=float)
    if transmission.shape[-1] != wave_aa.size:
        raise ValueError(
            f"transmission has {transmission.shape[-1]} pixels, the grid {wave_aa.size}"
        )
    return _split(transmission, _window_pixels(wave_aa, window_aa), percentile)


def _split(transmission: np.ndarray, size: int, percentile: float = 95.0):
    """`split_transmission` with its window given in pixels."""
    footprint = [1] * (transmission.ndim - 1) + [size]
    envelope = percentile_filter(transmission, percentile, size=footprint, mode="nearest")
    continuum = uniform_filter1d(envelope, size, axis=-1, mode="nearest")
    continuum = np.maximum(continuum, transmission)
    with np.errstate(divide="ignore", invalid="ignore"):
        lines = np.where(continuum > 0, transmission / continuum, 1.0)
    return continuum, lines


def telluric_region(lines: np.ndarray, *, threshold: float = 0.995, dilate: int = 2) -> np.ndarray:
    """Pixels where the atmosphere absorbs: line transmission below ``threshold``.

    Parameters
    ----------
    lines : ndarray, shape (n_pix,)
        Line transmission (`split_transmission`), best at the largest airmass of
        interest so the region holds every line that can appear.
    threshold : float
        Line transmission below which a pixel belongs to the region.
    dilate : int
        Pixels added on each side of every run (line wings, small velocity offsets).

    Returns
    -------
    ndarray of bool, shape (n_pix,)

    Examples
    --------
    >>> telluric_region(np.array([1, 1, 1, 0.9, 1, 1, 1]), dilate=1).astype(int)
    array([0, 0, 1, 1, 1, 0, 0])
    """
    lines = np.asarray(lines, dtype=float)
    if lines.ndim != 1:
        raise ValueError("lines must be 1-D (one transmission for the grid)")
    region = lines < threshold
    if dilate > 0 and region.any():
        region = binary_dilation(region, iterations=int(dilate))
    return region


def _smooth_valid(values: np.ndarray, valid: np.ndarray, sigma_pix: float) -> np.ndarray:
    """Gaussian smoothing that uses valid pixels only (normalised convolution)."""
    if sigma_pix <= 0:
        return np.where(valid, values, np.nan)
    from scipy.ndimage import gaussian_filter1d

    weight = valid.astype(float)
    num = gaussian_filter1d(np.where(valid, values, 0.0), sigma_pix, axis=-1, mode="nearest")
    den = gaussian_filter1d(weight, sigma_pix, axis=-1, mode="nearest")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 1e-3, num / den, np.nan)


def estimate_transmission(
    observed: np.ndarray,
    reconstruction: np.ndarray,
    region: np.ndarray,
    *,
    missing: np.ndarray | None = None,
    smooth_pixels: float = 1.0,
    floor: float = 0.05,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Transmission ``T = observed / reconstruction`` inside the telluric region.

    Inside ``region`` the ratio is smoothed with a Gaussian of ``smooth_pixels``
    (valid pixels only) and clipped to at most 1, to at least ``lower`` (the
    deepest the atmosphere can absorb there) and to at most ``upper`` (the
    shallowest) where given; outside it ``T`` is exactly 1.
    Pixels where ``T`` falls below ``floor`` (saturated lines: no stellar flux
    reaches the telescope) cannot be corrected and are flagged.

    Parameters
    ----------
    observed, reconstruction : ndarray, shape (n, n_pix)
        The normalised observation and the model's telluric-free reconstruction.
    region : ndarray of bool, shape (n_pix,)
        Where the atmosphere can absorb (`telluric_region`).
    missing : ndarray of bool, shape (n, n_pix), optional
        Missing observed pixels (they get no T of their own; the smoothing fills
        them from their neighbours where it can).
    smooth_pixels : float
        Gaussian sigma (grid pixels) of the smoothing; 0 for none.
    floor : float
        Smallest usable transmission.
    lower : ndarray, shape (n_pix,) or (n, n_pix), optional
        Lower bound of ``T`` per pixel: a reconstruction whose stellar line is
        deeper or shallower than the observed one cannot make ``T`` deeper than the
        atmosphere's lines.
    upper : ndarray, shape (n_pix,) or (n, n_pix), optional
        Upper bound of ``T`` per pixel (`column_bounds`); where it is below
        ``lower``, ``lower`` wins.  A pixel with ``lower == upper == 1`` keeps
        ``T = 1`` whatever the ratio.

    Returns
    -------
    transmission : ndarray, shape (n, n_pix)
        In ``[floor, 1]`` inside the region where defined, 1 outside; NaN where it
        could not be estimated.
    unusable : ndarray of bool, shape (n, n_pix)
        True where the transmission is below ``floor`` or unknown.

    Examples
    --------
    >>> obs = np.array([[1.0, 0.5, 1.02, 1.0]])
    >>> rec = np.ones((1, 4))
    >>> t, bad = estimate_transmission(obs, rec, np.array([False, True, True, False]),
    ...                                smooth_pixels=0)
    >>> t
    array([[1. , 0.5, 1. , 1. ]])
    >>> estimate_transmission(obs, rec, np.array([False, True, True, False]),
    ...                       smooth_pixels=0, lower=np.full(4, 0.8))[0]
    array([[1. , 0.8, 1. , 1. ]])
    >>> estimate_transmission(obs, rec, np.array([False, True, True, False]),
    ...                       smooth_pixels=0, upper=np.full(4, 0.9))[0]
    array([[1. , 0.5, 0.9, 1. ]])
    """
    observed = np.atleast_2d(np.asarray(observed, dtype=float))
    reconstruction = np.atleast_2d(np.asarray(reconstruction, dtype=float))
    region = np.asarray(region, dtype=bool)
    if observed.shape != reconstruction.shape or observed.shape[-1] != region.size:
        raise ValueError(
            f"observed {observed.shape}, reconstruction {reconstruction.shape} and region "
            f"({region.size},) do not match"
        )
    if not 0 < floor < 1:
        raise ValueError(f"floor must be in (0, 1), got {floor}")
    valid = np.isfinite(observed) & np.isfinite(reconstruction) & (reconstruction > 0)
    if missing is not None:
        valid &= ~np.asarray(missing, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = observed / reconstruction
    smooth = _smooth_valid(ratio, valid, smooth_pixels)
    inside = np.broadcast_to(region, observed.shape)
    bounds = {}
    for name, bound in (("lower", lower), ("upper", upper)):
        if bound is not None:
            bound = np.asarray(bound, dtype=float)
            if bound.shape not in (region.shape, observed.shape):
                raise ValueError(
                    f"{name} has shape {bound.shape}, expected ({region.size},) or "
                    f"{observed.shape}"
                )
            bounds[name] = bound
    if "upper" in bounds:
        smooth = np.minimum(smooth, bounds["upper"])  # NaN (unknown) stays NaN
    if "lower" in bounds:
        smooth = np.maximum(smooth, bounds["lower"])
    transmission = np.where(inside, np.minimum(smooth, 1.0), 1.0)
    unusable = inside & ~(transmission >= floor)
    transmission = np.where(inside & (transmission < floor), floor, transmission)
    return transmission, unusable


def band_segments(region: np.ndarray, wave_aa: np.ndarray, *, gap_aa: float = BAND_GAP_AA) -> list:
    """The telluric region cut into bands: runs closer than ``gap_aa`` join.

    Parameters
    ----------
    region : ndarray of bool, shape (n_pix,)
        The telluric region (`telluric_region`).
    wave_aa : ndarray, shape (n_pix,)
        Grid wavelengths (Angstrom), increasing.
    gap_aa : float
        Largest gap inside one band.

    Returns
    -------
    list of ndarray of bool, shape (n_pix,)
        One mask per band, each a subset of ``region``, in increasing wavelength.

    Examples
    --------
    >>> wave = np.arange(10.0) * 10
    >>> region = np.array([1, 1, 0, 1, 0, 0, 0, 0, 1, 1], bool)
    >>> [m.nonzero()[0].tolist() for m in band_segments(region, wave, gap_aa=25)]
    [[0, 1, 3], [8, 9]]
    """
    region = np.asarray(region, dtype=bool)
    wave_aa = np.asarray(wave_aa, dtype=float)
    where = np.flatnonzero(region)
    if where.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(wave_aa[where]) > gap_aa) + 1
    masks = []
    for run in np.split(where, cuts):
        mask = np.zeros(region.shape, dtype=bool)
        mask[run] = True
        masks.append(mask)
    return masks


def _row_median(values: np.ndarray) -> np.ndarray:
    """Median of each row over its finite values (0 for a row without any); a sort,
    much faster than `numpy.nanmedian` along an axis."""
    finite = np.isfinite(values)
    count = finite.sum(axis=1)
    ordered = np.sort(np.where(finite, values, np.inf), axis=1)
    return np.where(count > 0, _sorted_row_median(ordered, np.maximum(count, 1)), 0.0)


def fit_columns(
    observed: np.ndarray,
    reconstruction: np.ndarray,
    lines: np.ndarray,
    groups: list,
    *,
    noise: np.ndarray,
    bands: list | None = None,
    clip: float = 3.0,
    iterations: int = 3,
) -> np.ndarray:
    r"""Column of each group of pixels relative to a reference:
    ``observed = reconstruction * lines**p``.

    Per spectrum and group, :math:`p` is the weighted least-squares solution of
    :math:`\ln(y / \bar S) = c_b + p \ln T_0` over the group's valid pixels where
    :math:`T_0 < 1` (weights ``1 / noise**2``), with one free offset :math:`c_b` per
    band :math:`b` of ``bands`` (the reconstruction's level error across a band is
    not taken for absorption: only the contrast of the lines against their
    band counts), refitted ``iterations`` times without the pixels whose residual
    exceeds ``clip`` times their noise (stellar lines the reconstruction misses; a
    row left without pixels keeps its previous fit); at least 0.

    Parameters
    ----------
    observed, reconstruction : ndarray, shape (n, n_pix)
        Normalised observation and telluric-free model (NaN where missing).
    lines : ndarray, shape (n_pix,)
        Reference line transmission :math:`T_0`.
    groups : list of ndarray of bool, shape (n_pix,)
        The pixels of each group (a molecule's lines).
    noise : ndarray, shape (n, n_pix)
        Standard deviation of :math:`\ln y` (relative noise); pixels where it is not
        positive and finite are left out.
    bands : list of ndarray of bool, shape (n_pix,), optional
        The bands, each with its own offset; default one band of all pixels.  A
        band with fewer than 3 of a group's pixels is left out of that group's fit.
    clip : float
        Rejection threshold, in units of ``noise``.
    iterations : int
        Fits (the first with every pixel).

    Returns
    -------
    ndarray, shape (n, len(groups))
        0 where a group has no usable pixel.

    Examples
    --------
    >>> ref = np.array([1.0, 0.9, 0.5, 0.8])
    >>> star = np.ones((1, 4))
    >>> obs = 1.02 * star * ref**0.6  # the reconstruction 2 % low
    >>> fit_columns(obs, star, ref, [np.ones(4, bool)], noise=np.full((1, 4), 0.01)).round(6)
    array([[0.6]])
    """
    observed = np.atleast_2d(np.asarray(observed, dtype=float))
    reconstruction = np.atleast_2d(np.asarray(reconstruction, dtype=float))
    log_ref = np.log(np.clip(np.asarray(lines, dtype=float), 1e-6, 1.0))
    noise = np.atleast_2d(np.asarray(noise, dtype=float))
    if bands is None:
        bands = [np.ones(log_ref.size, dtype=bool)]
    with np.errstate(divide="ignore", invalid="ignore"):
        valid = (observed > 0) & (reconstruction > 0) & (noise > 0) & np.isfinite(noise)
        log_ratio = np.log(np.where(valid, observed / reconstruction, 1.0))
    noise = np.where(valid, noise, 1.0)
    inverse = noise**-2
    columns = np.zeros((observed.shape[0], len(groups)))
    for j, group in enumerate(groups):
        member = np.asarray(group, dtype=bool) & (log_ref < 0)
        parts = [np.flatnonzero(member & np.asarray(band, dtype=bool)) for band in bands]
        parts = [cols for cols in parts if cols.size >= 3]
        use = [valid[:, cols] for cols in parts]
        p = np.zeros(observed.shape[0])
        for _ in range(iterations):
            num, den, means = 0.0, 0.0, []
            for cols, ok in zip(parts, use, strict=True):
                weight = np.where(ok, inverse[:, cols], 0.0)
                total = weight.sum(axis=1, keepdims=True)
                total = np.where(total > 0, total, 1.0)
                g_mean = weight @ log_ref[cols] / total[:, 0]
                y_mean = (weight * log_ratio[:, cols]).sum(axis=1) / total[:, 0]
                g = log_ref[cols] - g_mean[:, None]
                num = num + (weight * g * (log_ratio[:, cols] - y_mean[:, None])).sum(axis=1)
                den = den + (weight * g * g).sum(axis=1)
                means.append((g_mean, y_mean))
            den = np.asarray(den, dtype=float) + np.zeros(observed.shape[0])
            # a row whose every pixel was rejected keeps its previous fit
            p = np.where(den > 0, num / np.where(den > 0, den, 1.0), p)
            residuals = [
                log_ratio[:, cols] - (y_mean - p * g_mean)[:, None] - p[:, None] * log_ref[cols]
                for cols, (g_mean, y_mean) in zip(parts, means, strict=True)
            ]
            # the threshold: the noise, or the residuals' robust scatter where larger
            # (a reconstruction error above the noise is not rejected wholesale)
            spread = np.concatenate(
                [np.where(ok, np.abs(r), np.nan) for ok, r in zip(use, residuals, strict=True)],
                axis=1
            ) if parts else np.zeros((observed.shape[0], 1))
            scale = 1.4826 * _row_median(spread)
            for k, (cols, residual) in enumerate(zip(parts, residuals, strict=True)):
                limit = clip * np.maximum(noise[:, cols], scale[:, None])
                use[k] = use[k] & (np.abs(residual) < limit)
        columns[:, j] = np.maximum(p, 0.0)
    return columns


def column_bounds(
    observed: np.ndarray,
    reconstruction: np.ndarray,
    lines: np.ndarray,
    region: np.ndarray,
    molecules: np.ndarray,
    *,
    wave_aa: np.ndarray,
    sigma: np.ndarray | None = None,
    factor: float = 1.1,
    max_column: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Bounds on the transmission from the reference atmosphere at a fitted column.

    For each spectrum and molecule :math:`s` a column :math:`p_s` of the reference
    line transmission :math:`T_0` (the model's, at airmass 2.5) is fitted over the
    region's pixels that molecule dominates (`fit_columns`,
    :func:`~specutils_deepclean.telluric_template.molecule_labels`);
    each pixel's transmission is then held between :math:`T_0^{p_s \kappa}` and
    :math:`T_0^{p_s / \kappa}` (:math:`\kappa` = ``factor``): only as deep as the
    atmosphere can be there, and exactly 1 where it has no lines.  A band
    (`band_segments`) whose expected absorption at those columns is below its noise
    (`MIN_BAND_SIGNAL`) is held at 1.

    Parameters
    ----------
    observed, reconstruction : ndarray, shape (n, n_pix)
        Normalised observation and (aligned) telluric-free reconstruction.
    lines : ndarray, shape (n_pix,)
        Reference line transmission :math:`T_0`.
    region : ndarray of bool, shape (n_pix,)
        The telluric region.
    molecules : ndarray of int, shape (n_pix,)
        The dominant molecule of each pixel
        (:func:`~specutils_deepclean.telluric_template.molecule_labels`).
    wave_aa : ndarray, shape (n_pix,)
        Grid wavelengths (Angstrom), for the bands.
    sigma : ndarray, shape (n, n_pix), optional
        Uncertainty of ``observed``; where it is missing or not finite, each
        spectrum's robust scatter of :math:`\ln(y / \bar S)` outside the region;
        never below `MIN_NOISE`.
    factor : float
        :math:`\kappa \ge 1`.
    max_column : float, optional
        Largest column fitted.

    Returns
    -------
    lower, upper : ndarray, shape (n, n_pix)
        The bounds (1 outside the region).
    columns : ndarray, shape (n, n_molecule)
        The fitted :math:`p_s`, per molecule index.
    """
    if not factor >= 1:
        raise ValueError(f"factor must be at least 1, got {factor}")
    observed = np.atleast_2d(np.asarray(observed, dtype=float))
    reconstruction = np.atleast_2d(np.asarray(reconstruction, dtype=float))
    region = np.asarray(region, dtype=bool)
    molecules = np.asarray(molecules)
    # Everything is done on the region's pixels only (a fifth of a MILES grid).
    cols = np.flatnonzero(region)
    obs, rec = observed[:, cols], reconstruction[:, cols]
    log_ref = np.log(np.clip(np.asarray(lines, dtype=float)[cols], 1e-6, 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log(obs / rec)
        noise = np.full(obs.shape, np.nan) if sigma is None else np.asarray(sigma)[:, cols] / obs
    lack = ~((noise > 0) & np.isfinite(noise)) & np.isfinite(log_ratio)
    rows = np.flatnonzero(lack.any(axis=1))
    if rows.size:
        outside = ~region
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.log(observed[np.ix_(rows, outside)] / reconstruction[np.ix_(rows, outside)])
        ratio[~np.isfinite(ratio)] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # rows without a valid pixel
            centre = np.nanmedian(ratio, axis=1, keepdims=True)
            scatter = 1.4826 * np.nanmedian(np.abs(ratio - centre), axis=1, keepdims=True)
        noise[rows] = np.where(lack[rows], scatter, noise[rows])
    noise = np.maximum(noise, MIN_NOISE)  # NaN (no estimate) stays NaN
    labels = molecules[cols]
    n_molecule = int(molecules.max()) + 1 if molecules.size else 1
    groups = [labels == m for m in range(n_molecule)]
    segments = [band[cols] for band in band_segments(region, wave_aa)]
    columns = fit_columns(obs, rec, np.exp(log_ref), groups, noise=noise, bands=segments)
    if max_column is not None:
        columns = np.minimum(columns, max_column)
    power = columns[:, labels] * log_ref
    inner = np.exp(power * factor), np.exp(power / factor)
    valid = np.isfinite(log_ratio) & (noise > 0) & np.isfinite(noise)
    expected = np.where(valid, power / np.where(valid, noise, 1.0), 0.0) ** 2
    for band in segments:
        pixels = np.flatnonzero(band)
        quiet = np.flatnonzero(expected[:, pixels].sum(axis=1) < MIN_BAND_SIGNAL)
        for bound in inner:
            bound[np.ix_(quiet, pixels)] = 1.0
    lower, upper = np.ones(observed.shape), np.ones(observed.shape)
    lower[:, cols], upper[:, cols] = inner
    return lower, upper, columns


__getattr__ = moved(__name__, {"reference_lines": "specutils_deepclean.training.karaoke"})
