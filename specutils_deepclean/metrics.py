r"""Evaluation metrics for denoising and telluric removal.

Every metric works on plain arrays in normalised units (flux divided by its
median, as the simulator and the models use).  Spectra lie along the **last**
axis; any leading axes are a batch, and per-spectrum metrics return one value per
spectrum (a float for a single 1-D spectrum).

Missing data follows the NDData convention: ``mask`` is a boolean array, True
for a pixel to *exclude*, broadcastable to the data shape.  Non-finite values
(NaN, inf) in any of the arrays a metric compares are excluded as well.  A
spectrum with no valid pixel gets NaN, never an error.

The telluric metrics :func:`q_t` and :func:`q_s` follow Sedaghat et al. (2023)
[1]_, Eqs. 12-15; DER_SNR is that of Stoehr et al. (2008) [2]_.  The telluric
mask :math:`M_t` is a separate boolean argument (True on telluric pixels, see
:func:`telluric_pixels`), not to be confused with ``mask``.

References
----------
.. [1] Sedaghat, N., Smart, B. M., Kalmbach, J. B., Howard, E. L. and
   Amindavar, H. (2023), "Stellar Karaoke: deep blind separation of terrestrial
   atmospheric effects out of stellar spectra by velocity whitening", MNRAS 526,
   doi:10.1093/mnras/stad2686, `arXiv:2301.00313 <https://arxiv.org/abs/2301.00313>`_.
.. [2] Stoehr, F. et al. (2008), "DER_SNR: A Simple & General Spectroscopic
   Signal-to-Noise Measurement Algorithm", ASP Conference Series 394, 505.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import astropy.units as u
import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._deprecated import moved

__all__ = [
    "GAUSSIAN_COVERAGE",
    "Calibration",
    "mse",
    "rms_in_mask",
    "der_snr",
    "der_snr_array",
    "telluric_pixels",
    "estimate_continuum",
    "n_t",
    "n_s",
    "q_t",
    "q_s",
    "win_rate",
    "calibration",
]

#: Share of a Gaussian within one standard deviation of its mean,
#: :math:`\operatorname{erf}(1/\sqrt{2}) \approx 0.6827`: the ideal value of
#: :func:`calibration`.
GAUSSIAN_COVERAGE: float = math.erf(1.0 / math.sqrt(2.0))

#: Constant of the DER_SNR noise estimate (Stoehr et al. 2008), as in
#: `specutils.analysis.snr_derived`.
_DER_SNR_CONSTANT = 0.6052697

#: Fewest valid pixels for which DER_SNR is defined.
_DER_SNR_MIN_PIXELS = 5


# --------------------------------------------------------------------------- input checks


def _as_data(name: str, values: ArrayLike) -> NDArray[np.float64]:
    """A float array of at least one dimension, or a clear error."""
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {array.dtype}")
    if array.ndim == 0:
        raise ValueError(f"{name} must have at least one (spectral) axis, got a scalar")
    return array.astype(float, copy=False)


def _as_same_shape(**arrays: ArrayLike) -> list[NDArray[np.float64]]:
    """Convert the named arrays with :func:`_as_data` and require one common shape."""
    converted = {name: _as_data(name, values) for name, values in arrays.items()}
    shapes = {name: array.shape for name, array in converted.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"arrays must have the same shape, got {listing}")
    return list(converted.values())


def _as_bool(name: str, values: ArrayLike | None, shape: tuple[int, ...]) -> NDArray[np.bool_]:
    """A boolean array broadcast to ``shape``; None gives all False."""
    if values is None:
        return np.zeros(shape, dtype=bool)
    array = np.asarray(values)
    if array.dtype != bool:
        raise TypeError(f"{name} must be a boolean array, got dtype {array.dtype}")
    try:
        return np.broadcast_to(array, shape)
    except ValueError:
        raise ValueError(
            f"{name} of shape {array.shape} does not broadcast to the data shape {shape}"
        ) from None


def _valid(mask: ArrayLike | None, *arrays: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Pixels not masked and finite in every one of ``arrays``."""
    valid = ~_as_bool("mask", mask, arrays[0].shape)
    for array in arrays:
        valid = valid & np.isfinite(array)
    return valid


def _scalar_if_0d(values: NDArray[np.float64]) -> float | NDArray[np.float64]:
    """One spectrum gives a float, a batch an array."""
    return float(values) if values.ndim == 0 else values


def _ratio(numerator: ArrayLike, denominator: ArrayLike) -> NDArray[np.float64]:
    """``numerator / denominator`` where the denominator is positive, NaN elsewhere."""
    numerator, denominator = np.broadcast_arrays(
        np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    )
    out = np.full(numerator.shape, np.nan)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def _masked_abs_sum(
    a: NDArray[np.float64], b: NDArray[np.float64], include: NDArray[np.bool_]
) -> NDArray[np.float64]:
    r""":math:`\sum |a - b|` over the pixels in ``include``, per spectrum."""
    diff = np.subtract(a, b, out=np.zeros(a.shape), where=include)
    return np.abs(diff).sum(axis=-1)


# --------------------------------------------------------------------------- denoising


def mse(pred: ArrayLike, truth: ArrayLike, *, mask: ArrayLike | None = None) -> float | NDArray:
    r"""Mean squared error over the valid pixels of each spectrum.

    .. math::

        \mathrm{MSE} = \frac{1}{|V|} \sum_{l \in V} (\hat s_l - s_l)^2,

    with :math:`V` the valid pixels: not masked, finite in both arrays.

    Parameters
    ----------
    pred, truth : array-like, shape (..., n_pix)
        Prediction and truth, same shape, spectra along the last axis.
    mask : array-like of bool, optional
        True for pixels to exclude; broadcast to the data shape.

    Returns
    -------
    float or ndarray, shape (...)
        One MSE per spectrum; NaN for a spectrum without valid pixels.

    Raises
    ------
    ValueError
        If the shapes differ or ``mask`` does not broadcast.
    TypeError
        If an array is not numeric or ``mask`` is not boolean.

    Examples
    --------
    >>> mse([1.0, 2.0, 3.0], [1.0, 2.5, 2.0])  # (0 + 0.25 + 1) / 3
    0.4166666666666667
    >>> mse([[1.0, 2.0, np.nan], [0.0, 0.0, 0.0]], [[1.0, 3.0, 0.0], [1.0, 1.0, 1.0]])
    array([0.5, 1. ])
    """
    pred, truth = _as_same_shape(pred=pred, truth=truth)
    valid = _valid(mask, pred, truth)
    diff = np.subtract(pred, truth, out=np.zeros(pred.shape), where=valid)
    return _scalar_if_0d(_ratio((diff**2).sum(axis=-1), valid.sum(axis=-1)))


def rms_in_mask(
    pred: ArrayLike, truth: ArrayLike, region: ArrayLike, *, mask: ArrayLike | None = None
) -> float | NDArray:
    r"""Root-mean-square residual inside a region of each spectrum.

    .. math::

        \mathrm{RMS} = \Big(\frac{1}{|R \cap V|}
                       \sum_{l \in R \cap V} (\hat s_l - s_l)^2\Big)^{1/2},

    the square root of :func:`mse` restricted to the region :math:`R` (for the
    telluric benchmark, the telluric mask :math:`M_t`).

    Parameters
    ----------
    pred, truth : array-like, shape (..., n_pix)
        Prediction and truth, same shape.
    region : array-like of bool
        True on the pixels to include (the region); broadcast to the data shape.
    mask : array-like of bool, optional
        True for pixels to exclude (bad data), as in :func:`mse`.

    Returns
    -------
    float or ndarray, shape (...)
        One RMS per spectrum; NaN where the region holds no valid pixel.

    Examples
    --------
    >>> rms_in_mask([1.0, 3.0, 5.0], [1.0, 1.0, 1.0], [False, True, True])  # sqrt((4+16)/2)
    3.1622776601683795
    """
    pred, truth = _as_same_shape(pred=pred, truth=truth)
    outside = ~_as_bool("region", region, pred.shape) | _as_bool("mask", mask, pred.shape)
    return _scalar_if_0d(np.sqrt(np.asarray(mse(pred, truth, mask=outside))))


def der_snr(flux: ArrayLike, *, mask: ArrayLike | None = None) -> float | NDArray:
    r"""DER_SNR of each spectrum, through `specutils.analysis.snr_derived`.

    Each spectrum becomes a `~specutils.Spectrum` on a pixel axis whose ``mask``
    holds the excluded pixels; `~specutils.analysis.snr_derived` then drops them
    and computes, on the remaining :math:`n` pixels in order,

    .. math::

        \mathrm{S/N} = \frac{\operatorname{median}(f)}
        {0.6052697\,\operatorname{median}_{2 \le l < n-2}
        |2 f_l - f_{l-2} - f_{l+2}|}.

    Parameters
    ----------
    flux : array-like, shape (..., n_pix)
        Flux, spectra along the last axis.
    mask : array-like of bool, optional
        True for pixels to exclude; non-finite flux is excluded too.

    Returns
    -------
    float or ndarray, shape (...)
        DER_SNR per spectrum.  NaN where fewer than 5 pixels are valid
        (`~specutils.analysis.snr_derived` itself returns 0 there); ``inf`` (or
        NaN for zero median flux) where the noise estimate is zero.

    See Also
    --------
    der_snr_array : the same numbers, vectorised.

    Examples
    --------
    Signal: median 1.  Second differences at pixels 2 and 3: 2*2 - 1 - 1 = 2
    and 2*1 - 1 - 1 = 0, median 1.  S/N = 1 / (0.6052697 * 1):

    >>> der_snr([1.0, 1.0, 2.0, 1.0, 1.0, 1.0])  # doctest: +FLOAT_CMP
    1.652156055425937
    """
    from specutils import Spectrum
    from specutils.analysis import snr_derived

    flux = _as_data("flux", flux)
    valid = _valid(mask, flux)
    pixels = np.arange(flux.shape[-1]) * u.pix
    out = np.full(flux.shape[:-1], np.nan)
    for index in np.ndindex(out.shape):
        if valid[index].sum() < _DER_SNR_MIN_PIXELS:
            continue
        spectrum = Spectrum(flux=flux[index] * u.one, spectral_axis=pixels, mask=~valid[index])
        with np.errstate(divide="ignore", invalid="ignore"):
            out[index] = snr_derived(spectrum).to_value(u.one)
    return _scalar_if_0d(out)


def _row_median(sorted_rows: NDArray[np.float64], counts: NDArray[np.int_]) -> NDArray:
    """Median of the first ``counts[i]`` entries of each ascending-sorted row."""
    rows = np.arange(sorted_rows.shape[0])
    low = sorted_rows[rows, (counts - 1) // 2]
    high = sorted_rows[rows, counts // 2]
    return (low + high) / 2


def der_snr_array(flux: ArrayLike, *, mask: ArrayLike | None = None) -> float | NDArray:
    """DER_SNR of each spectrum, vectorised; the same numbers as :func:`der_snr`.

    The valid pixels of each spectrum are packed to the front in their order,
    exactly as `~specutils.analysis.snr_derived` sees them after dropping masked
    pixels, and both medians are taken row by row, without a Python loop.

    Parameters
    ----------
    flux : array-like, shape (..., n_pix)
        Flux, spectra along the last axis.
    mask : array-like of bool, optional
        True for pixels to exclude; non-finite flux is excluded too.

    Returns
    -------
    float or ndarray, shape (...)
        As :func:`der_snr`.

    Examples
    --------
    >>> flux = np.array([[1.0, 1.0, 2.0, 1.0, 1.0, 1.0], [1.0, 3.0, 1.0, 3.0, 1.0, 3.0]])
    >>> der_snr_array(flux)  # the second row has zero second differences: no noise
    array([1.65215606,        inf])
    """
    flux = _as_data("flux", flux)
    valid = _valid(mask, flux)
    n_pix = flux.shape[-1]
    rows_flux = flux.reshape(-1, n_pix)
    rows_valid = valid.reshape(-1, n_pix)
    counts = rows_valid.sum(axis=-1)
    out = np.full(counts.shape, np.nan)
    usable = counts >= _DER_SNR_MIN_PIXELS
    if usable.any():
        order = np.argsort(~rows_valid[usable], axis=-1, kind="stable")
        packed = np.take_along_axis(rows_flux[usable], order, axis=-1)
        n = counts[usable]
        packed[np.arange(n_pix) >= n[:, None]] = np.nan  # sorts last, ignored below
        second = np.abs(2.0 * packed[:, 2:-2] - packed[:, :-4] - packed[:, 4:])
        signal = _row_median(np.sort(packed, axis=-1), n)
        noise = _DER_SNR_CONSTANT * _row_median(np.sort(second, axis=-1), n - 4)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[usable] = signal / noise
    return _scalar_if_0d(out.reshape(flux.shape[:-1]))


# --------------------------------------------------------------------------- tellurics


def telluric_pixels(transmission: ArrayLike, *, threshold: float = 0.99) -> NDArray[np.bool_]:
    """The telluric mask :math:`M_t`: pixels where the transmission is below ``threshold``.

    Parameters
    ----------
    transmission : array-like
        Atmospheric transmission on the spectrum's pixels (for the benchmark, the
        ESO transmission at the observation's airmass, convolved to the library
        resolution).  NaN transmission is not telluric.
    threshold : float, optional
        Pixels with transmission strictly below it are telluric (default 0.99,
        as in the benchmark protocol).

    Returns
    -------
    ndarray of bool
        True on telluric pixels, same shape as ``transmission``.

    Examples
    --------
    >>> telluric_pixels([1.0, 0.995, 0.98, 0.5])
    array([False, False,  True,  True])
    """
    transmission = _as_data("transmission", transmission)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return transmission < threshold


def estimate_continuum(
    flux: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    window: int = 100,
    percentile: float = 90.0,
) -> NDArray[np.float64]:
    r"""Continuum estimate :math:`\hat S` of clean spectra, for the normaliser :func:`n_s`.

    The paper takes :math:`\hat S` from a "continuum estimation" snippet of its
    code, not given in the text; this is our estimator.  Each spectrum is cut
    into consecutive blocks of ``window`` pixels; a block's continuum level is
    the ``percentile`` of its valid pixels, placed at the mean position of those
    pixels; the levels are linearly interpolated to every pixel (held constant
    beyond the first and last block).  On a noise-free star the upper
    percentile follows the line-free continuum and ignores absorption lines.

    Parameters
    ----------
    flux : array-like, shape (..., n_pix)
        Clean (truth) spectra.
    mask : array-like of bool, optional
        True for pixels to ignore; non-finite flux is ignored too.
    window : int, optional
        Block length in pixels (default 100).
    percentile : float, optional
        Percentile, in [0, 100], of each block taken as its continuum (default 90).

    Returns
    -------
    ndarray, shape (..., n_pix)
        The continuum; all NaN for a spectrum without valid pixels.

    Examples
    --------
    >>> flux = np.array([1.0, 0.5, 1.0, 1.0, 2.0, 1.5, 2.0, 2.0])  # two blocks of 4
    >>> estimate_continuum(flux, window=4, percentile=100)  # levels 1 and 2 at pixels 1.5, 5.5
    array([1.   , 1.   , 1.125, 1.375, 1.625, 1.875, 2.   , 2.   ])
    """
    flux = _as_data("flux", flux)
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    valid = _valid(mask, flux)
    n_pix = flux.shape[-1]
    n_blocks = -(-n_pix // window)
    padded = np.full((*flux.shape[:-1], n_blocks * window), np.nan)
    padded[..., :n_pix] = np.where(valid, flux, np.nan)
    blocks = padded.reshape(-1, n_blocks, window)
    counts = np.isfinite(blocks).sum(axis=-1)
    blocks[counts == 0] = 0.0  # keeps nanpercentile quiet; these blocks are dropped
    levels = np.nanpercentile(blocks, percentile, axis=-1)
    positions = np.arange(n_blocks * window, dtype=float).reshape(n_blocks, window)
    centres = _ratio((np.isfinite(blocks) * positions).sum(axis=-1), counts)
    out = np.full((blocks.shape[0], n_pix), np.nan)
    for row in range(blocks.shape[0]):
        good = counts[row] > 0
        if good.any():
            out[row] = np.interp(np.arange(n_pix), centres[row, good], levels[row, good])
    return out.reshape(flux.shape)


def _normalised(
    numerator: NDArray[np.float64], normaliser: NDArray[np.float64], clip: bool
) -> float | NDArray:
    """``numerator / normaliser``: NaN for 0/0, inf for x/0 (x > 0), optionally clipped."""
    with np.errstate(divide="ignore", invalid="ignore"):
        quality = numerator / normaliser
    if clip:
        quality = np.clip(quality, 0.0, 1.0)
    return _scalar_if_0d(np.asarray(quality, dtype=float))


def n_t(
    observed: ArrayLike,
    truth: ArrayLike,
    telluric_mask: ArrayLike,
    *,
    mask: ArrayLike | None = None,
) -> float | NDArray:
    r"""Normaliser :math:`N_t` of :func:`q_t` (Sedaghat et al. 2023, Eq. 14).

    .. math::

        N_t = \sum \big( M_t \, | S - \tilde S | \big),

    the telluric-pixel distance of the *input* (observed) spectrum :math:`S`
    from the truth :math:`\tilde S`: the distance left when nothing is done
    about the tellurics.

    Parameters
    ----------
    observed : array-like, shape (..., n_pix)
        The input spectrum :math:`S`, with tellurics.
    truth : array-like, shape (..., n_pix)
        The telluric-free truth :math:`\tilde S`.
    telluric_mask : array-like of bool
        :math:`M_t`: True on telluric pixels.
    mask : array-like of bool, optional
        True for pixels to exclude from the sum; non-finite values are excluded.

    Returns
    -------
    float or ndarray, shape (...)
        :math:`N_t` per spectrum (0 where no valid telluric pixel).

    Examples
    --------
    >>> n_t([0.5, 1.0, 0.8], [1.0, 1.0, 1.0], [True, False, True])  # 0.5 + 0.2
    0.7
    """
    observed, truth = _as_same_shape(observed=observed, truth=truth)
    include = _as_bool("telluric_mask", telluric_mask, truth.shape) & _valid(mask, observed, truth)
    return _scalar_if_0d(_masked_abs_sum(observed, truth, include))


def n_s(
    continuum: ArrayLike,
    truth: ArrayLike,
    telluric_mask: ArrayLike,
    *,
    mask: ArrayLike | None = None,
) -> float | NDArray:
    r"""Normaliser :math:`N_s` of :func:`q_s` (Sedaghat et al. 2023, Eq. 15).

    .. math::

        N_s = \sum \big( M_s \, | \hat S - \tilde S | \big), \qquad M_s = 1 - M_t,

    the distance, outside the telluric pixels, of the truth's continuum
    :math:`\hat S` from the truth :math:`\tilde S`: the worst case, in which every
    stellar line has been removed.

    Parameters
    ----------
    continuum : array-like, shape (..., n_pix)
        :math:`\hat S`, a continuum estimate of the truth (see
        :func:`estimate_continuum`).
    truth : array-like, shape (..., n_pix)
        The telluric-free truth :math:`\tilde S`.
    telluric_mask : array-like of bool
        :math:`M_t`: True on telluric pixels; the sum runs over the others.
    mask : array-like of bool, optional
        True for pixels to exclude from the sum; non-finite values are excluded.

    Returns
    -------
    float or ndarray, shape (...)
        :math:`N_s` per spectrum (0 where no valid non-telluric pixel).

    Examples
    --------
    >>> n_s([1.0, 1.0, 1.0], [0.6, 0.9, 0.5], [False, False, True])  # 0.4 + 0.1
    0.5
    """
    continuum, truth = _as_same_shape(continuum=continuum, truth=truth)
    not_telluric = ~_as_bool("telluric_mask", telluric_mask, truth.shape)
    include = not_telluric & _valid(mask, continuum, truth)
    return _scalar_if_0d(_masked_abs_sum(continuum, truth, include))


def q_t(
    pred: ArrayLike,
    observed: ArrayLike,
    truth: ArrayLike,
    telluric_mask: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    clip: bool = True,
) -> float | NDArray:
    r"""Telluric-rejection quality :math:`Q_t` (Sedaghat et al. 2023, Eqs. 12 and 14).

    .. math::

        Q_t = \frac{\sum \big( M_t \, | \bar S - \tilde S | \big)}{N_t},
        \qquad N_t = \sum \big( M_t \, | S - \tilde S | \big),

    clipped to :math:`[0, 1]`.  :math:`\bar S` is the reconstruction (the
    method's output, ``pred``), :math:`S` the input spectrum with tellurics
    (``observed``), :math:`\tilde S` the telluric-free truth (``truth``; in the
    paper a pseudo-truth, here the known clean star), and :math:`M_t` the
    telluric mask, 1 on telluric pixels.  Sums run over the pixels of one
    spectrum.

    **Lower is better**: 0 means the telluric pixels match the truth exactly,
    1 means no better than leaving the input untouched (worse is clipped to 1).

    Parameters
    ----------
    pred : array-like, shape (..., n_pix)
        The reconstruction :math:`\bar S`.
    observed : array-like, shape (..., n_pix)
        The input :math:`S`.
    truth : array-like, shape (..., n_pix)
        The truth :math:`\tilde S`.
    telluric_mask : array-like of bool
        :math:`M_t`, True on telluric pixels (see :func:`telluric_pixels`).
    mask : array-like of bool, optional
        True for pixels to exclude (bad data).
    clip : bool, optional
        Clip to [0, 1] as the paper does (default); False shows values above 1.

    Returns
    -------
    float or ndarray, shape (...)
        :math:`Q_t` per spectrum.  NaN where :math:`N_t = 0` and the numerator is
        0 too (no valid telluric pixel, or an input already equal to the truth);
        1 (``inf`` unclipped) where only :math:`N_t` is 0.

    Notes
    -----
    Reading of the paper: it tells the reconstruction and the input apart only
    by an accent on :math:`S` (written :math:`\bar S` and :math:`S` here); its
    text fixes the roles, :math:`N_t` being Eq. 12 "replacing the reconstructed
    signal with the input", the worst case of no correction at all.  The paper
    clips to [0, 1] because irregular cases can exceed 1.

    A pixel counts in a sum only if it is not masked and ``pred``, ``observed``
    and ``truth`` are all finite there; numerator and :math:`N_t` always use the
    same pixels.  Both are sums of absolute values, hence non-negative: the
    lower clip at 0 never acts, only the upper one.  All three spectra must be in
    the same normalisation (for instance each divided by its median).

    Examples
    --------
    >>> truth = [1.0, 1.0, 1.0, 1.0]
    >>> observed = [1.0, 0.6, 0.8, 1.0]          # telluric lines on pixels 1 and 2
    >>> pred = [1.0, 0.9, 1.0, 1.0]              # 0.1 / (0.4 + 0.2) = 1/6
    >>> q_t(pred, observed, truth, [False, True, True, False])  # doctest: +FLOAT_CMP
    0.16666666666666666
    """
    pred, observed, truth = _as_same_shape(pred=pred, observed=observed, truth=truth)
    include = _as_bool("telluric_mask", telluric_mask, truth.shape) & _valid(
        mask, pred, observed, truth
    )
    numerator = _masked_abs_sum(pred, truth, include)
    # N_t over the same pixels: those where the reconstruction is usable too
    normaliser = n_t(observed, truth, telluric_mask, mask=~_valid(mask, pred))
    return _normalised(numerator, np.asarray(normaliser, dtype=float), clip)


def q_s(
    pred: ArrayLike,
    truth: ArrayLike,
    telluric_mask: ArrayLike,
    *,
    continuum: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    clip: bool = True,
) -> float | NDArray:
    r"""Stellar-reconstruction quality :math:`Q_s` (Sedaghat et al. 2023, Eqs. 13 and 15).

    .. math::

        Q_s = \frac{\sum \big( M_s \, | \bar S - \tilde S | \big)}{N_s},
        \qquad N_s = \sum \big( M_s \, | \hat S - \tilde S | \big),
        \qquad M_s = 1 - M_t,

    clipped to :math:`[0, 1]`.  :math:`\bar S` is the reconstruction (``pred``),
    :math:`\tilde S` the telluric-free truth (``truth``), :math:`\hat S` a
    continuum estimate of :math:`\tilde S` (``continuum``), :math:`M_t` the
    telluric mask; the sums run over the *non*-telluric pixels of one spectrum.

    **Lower is better**: 0 means the stellar spectrum is reproduced exactly off
    the tellurics, 1 means no better than a bare continuum with every stellar
    line removed (worse is clipped to 1).

    Parameters
    ----------
    pred : array-like, shape (..., n_pix)
        The reconstruction :math:`\bar S`.
    truth : array-like, shape (..., n_pix)
        The truth :math:`\tilde S`.
    telluric_mask : array-like of bool
        :math:`M_t`, True on telluric pixels (excluded from the sums).
    continuum : array-like, shape (..., n_pix), optional
        :math:`\hat S`.  Default: :func:`estimate_continuum` of ``truth`` (with
        ``mask``) and its default settings.
    mask : array-like of bool, optional
        True for pixels to exclude (bad data).
    clip : bool, optional
        Clip to [0, 1] as the paper does (default); False shows values above 1.

    Returns
    -------
    float or ndarray, shape (...)
        :math:`Q_s` per spectrum; NaN where :math:`N_s = 0` and the numerator is 0
        too, 1 (``inf`` unclipped) where only :math:`N_s` is 0.

    Notes
    -----
    Reading of the paper: :math:`M_s = 1 - M_t` (the "dual" of the telluric
    mask), and :math:`\hat S` estimates the continuum of :math:`\tilde S`, the
    truth, not of the input or the reconstruction.  The paper computes it with
    a code snippet not given in the text; by default this function uses
    :func:`estimate_continuum`, pass ``continuum`` to use another estimate.

    A pixel counts only if it is not masked and ``pred``, ``truth`` and
    ``continuum`` are all finite there; numerator and :math:`N_s` use the same
    pixels.  Only the upper clip can act (both sums are non-negative).

    Examples
    --------
    >>> truth = [1.0, 0.5, 1.0, 0.7]             # stellar lines on pixels 1 and 3
    >>> pred = [1.0, 0.6, 1.0, 0.2]              # pixel 3 is telluric: ignored
    >>> q_s(pred, truth, [False, False, False, True], continuum=[1.0, 1.0, 1.0, 1.0])
    0.19999999999999996
    """
    pred, truth = _as_same_shape(pred=pred, truth=truth)
    if continuum is None:
        continuum = estimate_continuum(truth, mask=mask)
    continuum = _as_same_shape(truth=truth, continuum=continuum)[1]
    include = ~_as_bool("telluric_mask", telluric_mask, truth.shape) & _valid(
        mask, pred, truth, continuum
    )
    numerator = _masked_abs_sum(pred, truth, include)
    # N_s over the same pixels: those where the reconstruction is usable too
    normaliser = n_s(continuum, truth, telluric_mask, mask=~_valid(mask, pred))
    return _normalised(numerator, np.asarray(normaliser, dtype=float), clip)


# --------------------------------------------------------------------------- comparisons


def win_rate(mse_a: ArrayLike, mse_b: ArrayLike) -> float:
    r"""Share of spectra on which method A's error is lower than method B's.

    .. math::

        w = \frac{\#\{e_A < e_B\} + \tfrac12 \#\{e_A = e_B\}}{n},

    over the :math:`n` pairs in which neither error is NaN (a tie counts half a
    win for each method, so ``win_rate(a, b) + win_rate(b, a) == 1``).

    Parameters
    ----------
    mse_a, mse_b : array-like, same shape
        Per-spectrum errors of methods A and B (any error where lower is better).

    Returns
    -------
    float
        The win rate of A over B in [0, 1]; 0.5 means a draw; NaN without pairs.

    Examples
    --------
    >>> win_rate([0.1, 0.2, 0.3, np.nan], [0.2, 0.2, 0.1, 0.1])  # (1 + 0.5 + 0) / 3
    0.5
    """
    a, b = _as_same_shape(mse_a=mse_a, mse_b=mse_b)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if a.size == 0:
        return math.nan
    return float((np.sum(a < b) + 0.5 * np.sum(a == b)) / a.size)


# --------------------------------------------------------------------------- uncertainty


class Calibration(NamedTuple):
    """Result of :func:`calibration`."""

    #: Share of each spectrum's valid pixels inside one sigma (NaN without valid pixels).
    per_spectrum: float | NDArray[np.float64]
    #: Share over all valid pixels of all spectra together.
    pooled: float


def calibration(
    pred: ArrayLike, sigma: ArrayLike, truth: ArrayLike, *, mask: ArrayLike | None = None
) -> Calibration:
    r"""Share of valid pixels whose error is within the predicted uncertainty.

    .. math::

        c = \frac{\#\{ l \in V : |s_l - \hat s_l| < \sigma_l \}}{|V|},

    per spectrum and pooled over all spectra (all valid pixels together, not a
    mean of the per-spectrum shares).  For honest Gaussian uncertainties the
    ideal value is :data:`GAUSSIAN_COVERAGE` :math:`\approx 0.683`; less means
    the uncertainties are too small, more that they are too large.

    Parameters
    ----------
    pred, sigma, truth : array-like, shape (..., n_pix)
        Prediction, its 1-sigma uncertainty (non-negative), and the truth.
    mask : array-like of bool, optional
        True for pixels to exclude; non-finite values in any array are excluded.

    Returns
    -------
    Calibration
        ``per_spectrum`` (float or array of shape (...)) and ``pooled`` (float).
        A pixel with ``sigma == 0`` counts as outside (the inequality is strict).

    Raises
    ------
    ValueError
        If shapes differ or a valid pixel has negative ``sigma``.

    Examples
    --------
    >>> calibration([1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.1, 0.5], [1.2, 0.4, 1.2, 1.0])
    Calibration(per_spectrum=0.5, pooled=0.5)
    """
    pred, sigma, truth = _as_same_shape(pred=pred, sigma=sigma, truth=truth)
    valid = _valid(mask, pred, sigma, truth)
    if np.any(sigma[valid] < 0):
        raise ValueError("sigma must be non-negative on every valid pixel")
    error = np.subtract(truth, pred, out=np.full(pred.shape, np.inf), where=valid)
    inside = valid & (np.abs(error) < sigma)
    per_spectrum = _ratio(inside.sum(axis=-1), valid.sum(axis=-1))
    pooled = float(_ratio(inside.sum(), valid.sum()))
    return Calibration(_scalar_if_0d(per_spectrum), pooled)


__getattr__ = moved(
    __name__,
    {name: "specutils_deepclean.benchmarking.grouping" for name in ("win_rates_by", "grouped")},
)
