r"""Telluric bands: line transmission, the region the atmosphere can absorb, and the
transmission estimate of ``remove_tellurics(mode="divide")``.

The ESO transmission model (:func:`~specutils_deepclean.datasets.load_transmission`)
includes smooth continuum absorption (Rayleigh scattering, the ozone Chappuis band)
as well as the molecular bands (O\ :sub:`2`, H\ :sub:`2`\ O).  A median-normalised
spectrum cannot tell the smooth part from the star's continuum, and no method removes
it, so, like Sedaghat et al. (2023, Sect. 5.2), everything here works with the *line*
transmission: the transmission divided by its own smooth upper envelope.

All functions work on arrays on one wavelength grid (last axis spectral) and never
see a `~specutils.Spectrum`.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation, percentile_filter, uniform_filter1d

from ._deprecated import moved

__all__ = ["split_transmission", "telluric_region", "estimate_transmission"]


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
    size = _window_pixels(wave_aa, window_aa)
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
) -> tuple[np.ndarray, np.ndarray]:
    """Transmission ``T = observed / reconstruction`` inside the telluric region.

    Inside ``region`` the ratio is smoothed with a Gaussian of ``smooth_pixels``
    (valid pixels only) and clipped to at most 1, and to at least ``lower`` (the
    deepest the atmosphere can absorb there) where given; outside it ``T`` is
    exactly 1.
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
    lower : ndarray, shape (n_pix,), optional
        Lower bound of ``T`` per pixel: a reconstruction whose stellar line is
        deeper or shallower than the observed one cannot make ``T`` deeper than the
        atmosphere's lines.

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
    if lower is not None:
        lower = np.asarray(lower, dtype=float)
        if lower.shape != region.shape:
            raise ValueError(f"lower has shape {lower.shape}, region ({region.size},)")
        smooth = np.maximum(smooth, lower)  # NaN (unknown) stays NaN
    transmission = np.where(inside, np.minimum(smooth, 1.0), 1.0)
    unusable = inside & ~(transmission >= floor)
    transmission = np.where(inside & (transmission < floor), floor, transmission)
    return transmission, unusable


__getattr__ = moved(__name__, {"reference_lines": "specutils_deepclean.training.karaoke"})
