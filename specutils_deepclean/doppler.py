"""Doppler shifts of spectra: arrays on one grid (`shift_flux`) and Spectrum objects
(`doppler_shift`), flux-conserving (:mod:`specutils_deepclean.resample`)."""

from __future__ import annotations

import astropy.units as u
import numpy as np
from astropy.constants import c as _speed_of_light
from specutils import Spectrum

from .resample import _ROUNDING, _as_batch, _cumulative, _resample, bin_edges
from .spectra import (
    _axis_edges,
    _check_spectrum,
    _from_last,
    _input_arrays,
    _output_uncertainty,
    spectrum_like,
)

__all__ = ["doppler_shift", "shift_flux"]

_C_KMS = _speed_of_light.to_value(u.km / u.s)


# --------------------------------------------------------------------------------------
# Doppler shifts
# --------------------------------------------------------------------------------------


def _doppler_factor(velocity_kms) -> np.ndarray:
    """``1 - v/c``, checking ``|v| < c``."""
    velocity_kms = np.asarray(velocity_kms, dtype=float)
    if not np.all(np.abs(velocity_kms) < _C_KMS):
        raise ValueError("velocities must be finite and smaller than the speed of light")
    return 1.0 - velocity_kms / _C_KMS


def shift_flux(
    flux: np.ndarray,
    wave_aa: np.ndarray,
    velocity_kms,
    *,
    missing: np.ndarray | None = None,
    min_coverage: float = 1.0,
):
    """Doppler-shift a batch of spectra on one grid, each by its own velocity.

    The shifted spectrum is ``s'(lambda) = s(lambda (1 - v/c))`` (Sedaghat et al.
    2023, Eqs. 3 and 7): a feature at ``lambda_0`` moves to
    ``lambda_0 / (1 - v/c)``, i.e. by ``lambda_0 v / c`` to first order; positive
    ``v`` moves it to the red.  The flux density is transported unchanged and
    resampled onto the same grid with the flux-conserving scheme of
    `~specutils_deepclean.resample.rebin`.

    Parameters
    ----------
    flux : ndarray, shape (..., n)
        Spectra on the grid ``wave_aa`` (last axis spectral).
    wave_aa : ndarray, shape (n,)
        Strictly increasing pixel centres (any wavelength unit, used as numbers).
    velocity_kms : float or ndarray, shape (...)
        Velocity of each spectrum in km/s (broadcast over the batch).
    missing : ndarray of bool, shape (..., n), optional
        Missing input pixels (non-finite flux is missing too).
    min_coverage : float
        Smallest valid fraction of an output bin for it to be valid (default: the
        whole bin).

    Returns
    -------
    shifted : ndarray, shape (..., n)
        The shifted spectra; NaN where missing.
    missing_out : ndarray of bool, shape (..., n)
        Pixels without enough valid input, e.g. shifted in from outside the grid.

    Examples
    --------
    >>> wave = np.arange(5000.0, 5010.0)
    >>> out, miss = shift_flux(wave - 5000.0, wave, 29.9792458)  # v/c = 1e-4
    >>> out[:4]  # doctest: +FLOAT_CMP
    array([   nan, 0.4999, 1.4998, 2.4997])
    >>> miss[:2]  # the first pixel is shifted in from outside the grid
    array([ True, False])
    """
    flux = np.asarray(flux, dtype=float)
    shape = flux.shape
    flat = flux.reshape(-1, shape[-1])
    factor = np.broadcast_to(_doppler_factor(velocity_kms), shape[:-1]).reshape(-1, 1)
    good = np.isfinite(flat)
    if missing is not None:
        good &= ~_as_batch(missing, shape, bool)
    flat = np.where(good, flat, 0.0)
    edges = bin_edges(wave_aa)
    # Cumulative integrals of s' at the edges are those of s at edges * (1 - v/c),
    # divided by (1 - v/c); the factor cancels in the ratio below.
    cum_f, cum_g = _cumulative(flat, good, edges, edges[None, :] * factor)
    norm = np.diff(cum_g, axis=1)
    missing_out = norm < min_coverage * np.diff(edges) * factor * _ROUNDING
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(missing_out, np.nan, np.diff(cum_f, axis=1) / norm)
    return out.reshape(shape), missing_out.reshape(shape)


def doppler_shift(spectrum: Spectrum, velocity: u.Quantity) -> Spectrum:
    """Doppler-shift a spectrum by a velocity, on the same spectral axis.

    Uses ``lambda -> lambda (1 - v/c)`` as in Sedaghat et al. (2023, Eqs. 3 and 7):
    the result is ``s'(lambda) = s(lambda (1 - v/c))``, so a line at ``lambda_0``
    moves to ``lambda_0 / (1 - v/c)`` (by ``lambda_0 v / c`` to first order; positive
    ``v`` is a redshift).  The flux density values are transported unchanged and
    resampled flux-conservingly onto the input's own axis (see
    `~specutils_deepclean.resample.rebin`); uncertainty
    is propagated in the input's class and mask pixels are missing data.

    Parameters
    ----------
    spectrum : `~specutils.Spectrum`
        1-D or N-D spectrum, any spectral unit convertible to wavelength.
    velocity : `~astropy.units.Quantity`
        Velocity, a scalar or one per spectrum of the batch (the flux shape without
        the spectral axis).

    Returns
    -------
    `~specutils.Spectrum`
        The shifted spectrum on the input's spectral axis; ``mask`` True where a
        pixel is not fully covered by valid shifted input (pixels shifted in from
        outside the axis, or next to masked ones); ``meta["deepclean"]`` records the
        velocity.

    Raises
    ------
    TypeError
        If ``spectrum`` is not a Spectrum.
    astropy.units.UnitsError
        If ``velocity`` is not a velocity or the axis does not convert to wavelength.
    ValueError
        If ``|v| >= c`` or the velocity shape does not fit the batch.

    References
    ----------
    Sedaghat N., et al., 2023, MNRAS 526, 1559, "Stellar Karaoke: deep blind
    separation of terrestrial atmospheric effects out of stellar spectra by velocity
    whitening", arXiv:2309.07654.

    Examples
    --------
    >>> import astropy.units as u
    >>> from specutils import Spectrum
    >>> spec = Spectrum(flux=np.arange(10.0) * u.Jy,
    ...                 spectral_axis=np.arange(5000.0, 5010.0) * u.AA)
    >>> shifted = doppler_shift(spec, 29.9792458 * u.km / u.s)  # v/c = 1e-4
    >>> shifted.flux[:4]  # doctest: +FLOAT_CMP
    <Quantity [   nan, 0.4999, 1.4998, 2.4997] Jy>
    >>> shifted.mask[:2]
    array([ True, False])
    """
    _check_spectrum(spectrum)
    velocity = u.Quantity(velocity)
    if not velocity.unit.is_equivalent(u.km / u.s):
        raise u.UnitsError(f"velocity must be a velocity, got unit {velocity.unit}")
    axis = spectrum.spectral_axis_index
    raw = _axis_edges(spectrum)
    descending = raw[-1] < raw[0]
    edges = raw[::-1] if descending else raw
    flux, missing, variance, unc_type = _input_arrays(spectrum, descending)
    batch_shape = np.moveaxis(np.empty(spectrum.shape), axis, -1).shape[:-1]
    try:
        v = np.broadcast_to(velocity.to_value(u.km / u.s), batch_shape).reshape(-1)
    except ValueError as err:
        raise ValueError(
            f"velocity of shape {velocity.shape} does not fit the batch shape {batch_shape}"
        ) from err
    factor = _doppler_factor(v)
    out = np.empty_like(flux)
    var_out = None if variance is None else np.empty_like(flux)
    uncovered = np.empty(flux.shape, dtype=bool)
    for value in np.unique(factor):
        rows = factor == value
        res = _resample(
            flux[rows],
            edges / value,
            edges,
            variance=None if variance is None else variance[rows],
            missing=missing[rows],
            min_coverage=1.0,
        )
        out[rows], uncovered[rows] = res[0], res[2]
        if var_out is not None:
            var_out[rows] = res[1]
    out = _from_last(out, axis, descending, spectrum.shape)
    mask = _from_last(uncovered, axis, descending, spectrum.shape) | ~np.isfinite(out)
    uncertainty = None
    if var_out is not None:
        var_out = _from_last(var_out, axis, descending, spectrum.shape)
        uncertainty = _output_uncertainty(var_out, unc_type, spectrum.flux.unit)
    extra = {"operation": "doppler_shift", "velocity": velocity.to(u.km / u.s)}
    return spectrum_like(spectrum, out * spectrum.flux.unit, uncertainty, mask, extra)
