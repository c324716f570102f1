"""Classical denoising baselines: Gaussian and median smoothing, wavelet shrinkage.

Array-level functions for the denoising benchmark: each takes a
batch of median-normalised spectra ``flux`` of shape ``(n, n_pix)`` and a
boolean ``missing`` mask of the same shape, and returns the denoised batch,
``(n, n_pix)``, with every pixel (missing ones included) filled.

Missing pixels (``missing`` True, or a non-finite flux) are never zero-filled:
before any filtering they are replaced by linear interpolation between the
nearest valid pixels of the same spectrum (the nearest valid value beyond the
first or last valid pixel), so their stored values never reach the output.
Each spectrum is then extended at both ends by mirror reflection (numpy's
``"symmetric"`` padding) before filtering, because specutils' smoothing pads with
zeros, which would pull the ends of a spectrum normalised to 1 towards 0.

Gaussian and median smoothing call `specutils.manipulation.gaussian_smooth` and
`specutils.manipulation.median_smooth`; wavelet shrinkage uses PyWavelets
(optional dependency, imported when called).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import astropy.units as u
import numpy as np
from astropy.convolution import Gaussian1DKernel

__all__ = ["gaussian_smooth_baseline", "median_smooth_baseline", "wavelet_denoise"]

#: Median absolute deviation of a standard normal variable.
_MAD_TO_SIGMA = 0.6744897501960817


def gaussian_smooth_baseline(flux, missing, width: float) -> np.ndarray:
    """Smooth spectra with a Gaussian kernel (`specutils.manipulation.gaussian_smooth`).

    Parameters
    ----------
    flux : array_like, shape ``(n, n_pix)``
        Median-normalised spectra; non-finite values count as missing.
    missing : array_like of bool, shape ``(n, n_pix)``, or None
        True where a pixel is missing.
    width : float
        Standard deviation of the Gaussian kernel in pixels (> 0), as specutils'
        ``stddev``; the kernel spans ``8 * width`` pixels.

    Returns
    -------
    ndarray, shape ``(n, n_pix)``
        The smoothed spectra, missing pixels filled.

    Raises
    ------
    ValueError
        If ``width`` is not a positive finite number, or the arrays are bad
        (shape, a spectrum without valid pixel).
    TypeError
        If ``missing`` is not boolean.

    Notes
    -----
    Missing pixels are interpolated from their valid neighbours and each
    spectrum is mirrored at its ends before smoothing (see the module notes).

    Examples
    --------
    >>> import numpy as np
    >>> flux = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    >>> missing = np.array([[False, False, False, True, False, False]])
    >>> gaussian_smooth_baseline(flux, missing, 1.0)  # doctest: +FLOAT_CMP
    array([[0.42704095, 1.06795587, 2.00469952, 2.99530048, 3.93204413, 4.57295905]])
    """
    from specutils import Spectrum
    from specutils.manipulation import gaussian_smooth

    width = _positive_real(width, "width")
    filled = _filled(flux, missing)
    pad = Gaussian1DKernel(width).array.size // 2
    padded = np.pad(filled, ((0, 0), (pad, pad)), mode="symmetric")
    smoothed = gaussian_smooth(
        Spectrum(flux=padded * u.dimensionless_unscaled, spectral_axis_index=1), width
    )
    return np.asarray(smoothed.flux.value)[:, pad : pad + filled.shape[1]]


def median_smooth_baseline(flux, missing, width: int) -> np.ndarray:
    """Smooth spectra with a running median (`specutils.manipulation.median_smooth`).

    Parameters
    ----------
    flux : array_like, shape ``(n, n_pix)``
        Median-normalised spectra; non-finite values count as missing.
    missing : array_like of bool, shape ``(n, n_pix)``, or None
        True where a pixel is missing.
    width : int
        Window of the median filter in pixels: a positive odd integer (1 returns
        the gap-filled input).

    Returns
    -------
    ndarray, shape ``(n, n_pix)``
        The smoothed spectra, missing pixels filled.

    Raises
    ------
    ValueError
        If ``width`` is not a positive odd integer, or the arrays are bad.
    TypeError
        If ``missing`` is not boolean.

    Notes
    -----
    Missing pixels are interpolated from their valid neighbours and each
    spectrum is mirrored at its ends before smoothing (see the module notes).
    The spectra are filtered one at a time: specutils applies `scipy.signal.medfilt`
    to the whole flux array, which for a 2-D flux would take the median across
    spectra too.

    Examples
    --------
    >>> import numpy as np
    >>> flux = np.array([[1.0, 1.0, 9.0, 1.0, np.nan, 3.0]])
    >>> median_smooth_baseline(flux, None, 3)  # the spike goes, the gap is filled
    array([[1., 1., 1., 2., 2., 3.]])
    """
    from specutils import Spectrum
    from specutils.manipulation import median_smooth

    if isinstance(width, bool) or not isinstance(width, Integral) or width < 1 or width % 2 == 0:
        raise ValueError(f"width must be a positive odd integer, got {width!r}")
    width = int(width)
    filled = _filled(flux, missing)
    pad = width // 2
    padded = np.pad(filled, ((0, 0), (pad, pad)), mode="symmetric")
    out = np.empty_like(filled)
    for row, values in enumerate(padded):
        smoothed = median_smooth(Spectrum(flux=values * u.dimensionless_unscaled), width)
        out[row] = smoothed.flux.value[pad : pad + filled.shape[1]]
    return out


def wavelet_denoise(
    flux,
    missing,
    *,
    wavelet: str = "sym8",
    level: int | None = None,
    threshold_scale: float = 1.0,
    mode: str = "soft",
) -> np.ndarray:
    r"""Wavelet shrinkage with the universal threshold (VisuShrink), per spectrum.

    Each gap-filled spectrum is decomposed with a discrete wavelet transform
    (`pywt.wavedec`, symmetric extension), every detail coefficient is
    thresholded with

    .. math::

        t = s \, \hat\sigma \sqrt{2 \ln P}, \qquad
        \hat\sigma = \operatorname{median}(|d_1|) / 0.6745,

    :math:`P` the number of pixels, :math:`d_1` the finest detail coefficients
    of that spectrum and :math:`s` = ``threshold_scale``, and the spectrum is
    rebuilt (`pywt.waverec`). The approximation coefficients are kept.

    Parameters
    ----------
    flux : array_like, shape ``(n, n_pix)``
        Median-normalised spectra; non-finite values count as missing.
    missing : array_like of bool, shape ``(n, n_pix)``, or None
        True where a pixel is missing.
    wavelet : str or `pywt.Wavelet`, optional
        A discrete wavelet (`pywt.wavelist` with ``kind="discrete"``).
    level : int, optional
        Decomposition levels, from 1 to `pywt.dwt_max_level` for ``n_pix``
        (the default, None, is that maximum).
    threshold_scale : float, optional
        :math:`s`, the multiple of the universal threshold (>= 0; 0 returns the
        gap-filled input).
    mode : {"soft", "hard"}, optional
        Soft thresholding shrinks every coefficient towards 0 by :math:`t`, hard
        thresholding zeroes those with :math:`|d| \le t` and keeps the others.

    Returns
    -------
    ndarray, shape ``(n, n_pix)``
        The denoised spectra, missing pixels filled.

    Raises
    ------
    ImportError
        If PyWavelets is not installed.
    ValueError
        If a setting or the arrays are bad.
    TypeError
        If ``missing`` is not boolean.

    Notes
    -----
    Missing pixels are interpolated from their valid neighbours first (see the
    module notes).

    References
    ----------
    Donoho, D. L., Johnstone, I. M. 1994, Biometrika 81, 425, "Ideal spatial
    adaptation by wavelet shrinkage".

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> clean = 1 + 0.3 * np.sin(np.linspace(0, 6, 512))[None, :]
    >>> noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    >>> denoised = wavelet_denoise(noisy, None)
    >>> bool(np.mean((denoised - clean) ** 2) < 0.1 * np.mean((noisy - clean) ** 2))
    True
    >>> np.allclose(wavelet_denoise(noisy, None, threshold_scale=0.0), noisy)
    True
    """
    try:
        import pywt
    except ImportError as exc:
        raise ImportError(
            "wavelet_denoise needs the PyWavelets package (pip install PyWavelets)"
        ) from exc

    scale = _non_negative_real(threshold_scale, "threshold_scale")
    if mode not in ("soft", "hard"):
        raise ValueError(f"mode must be 'soft' or 'hard', got {mode!r}")
    try:
        wavelet = pywt.Wavelet(wavelet) if isinstance(wavelet, str) else wavelet
    except ValueError as exc:
        raise ValueError(f"unknown wavelet {wavelet!r}: {exc}") from exc
    if not isinstance(wavelet, pywt.Wavelet):
        raise ValueError(f"wavelet must be a discrete wavelet name or Wavelet, got {wavelet!r}")
    filled = _filled(flux, missing)
    n_pix = filled.shape[1]
    level = _wavelet_level(level, pywt.dwt_max_level(n_pix, wavelet.dec_len), n_pix)
    coeffs = pywt.wavedec(filled, wavelet, mode="symmetric", level=level, axis=-1)
    sigma = np.median(np.abs(coeffs[-1]), axis=-1, keepdims=True) / _MAD_TO_SIGMA
    threshold = scale * sigma * math.sqrt(2.0 * math.log(n_pix))
    shrunk = [coeffs[0]] + [_threshold(detail, threshold, mode) for detail in coeffs[1:]]
    return pywt.waverec(shrunk, wavelet, mode="symmetric", axis=-1)[:, :n_pix]


def _threshold(values: np.ndarray, threshold: np.ndarray, mode: str) -> np.ndarray:
    """Soft or hard thresholding (NumPy; ``pywt.threshold`` warns at a zero threshold)."""
    if mode == "soft":
        return np.sign(values) * np.maximum(np.abs(values) - threshold, 0.0)
    return np.where(np.abs(values) > threshold, values, 0.0)


def _wavelet_level(level, max_level: int, n_pix: int) -> int:
    if max_level < 1:
        raise ValueError(f"spectra of {n_pix} pixels are too short for this wavelet")
    if level is None:
        return max_level
    if isinstance(level, bool) or not isinstance(level, Integral) or not 1 <= level <= max_level:
        raise ValueError(
            f"level must be an integer from 1 to {max_level} for {n_pix} pixels, got {level!r}"
        )
    return int(level)


def _positive_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _non_negative_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


def _filled(flux, missing) -> np.ndarray:
    """Float copy of ``flux`` with missing pixels linearly interpolated from valid ones."""
    flux = np.array(flux, dtype=np.float64)
    if flux.ndim != 2 or flux.shape[1] < 2:
        raise ValueError(f"flux must have shape (n, n_pix) with n_pix >= 2, got {flux.shape}")
    gone = ~np.isfinite(flux)
    if missing is not None:
        missing = np.asarray(missing)
        if missing.dtype != bool:
            raise TypeError(f"missing must be a boolean array, got dtype {missing.dtype}")
        if missing.shape != flux.shape:
            raise ValueError(f"missing has shape {missing.shape}, flux {flux.shape}")
        gone |= missing
    empty = np.flatnonzero(gone.all(axis=1))
    if empty.size:
        raise ValueError(f"spectra {empty.tolist()} have no valid pixel")
    pixels = np.arange(flux.shape[1])
    for row in np.flatnonzero(gone.any(axis=1)):
        ok = ~gone[row]
        flux[row, ~ok] = np.interp(pixels[~ok], pixels[ok], flux[row, ok])
    return flux
