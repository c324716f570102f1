"""Checks of the input to the cleaning functions, with messages that name the problem.

A flux in a logarithmic unit, why no pixel of an input is usable, the likely slip
behind a spectral axis far from the model's, and, on the model grid, the rows a
denoiser cannot fit (no run of valid pixels as long as its noise model's context) and
the pixels no star has (unmasked fill values), and uncertainties far below what the
model can use.  Used by
`~specutils_deepclean.spectra.to_model_grid`, `~specutils_deepclean.denoise` and
`~specutils_deepclean.remove_tellurics`; the page *Reliability and security* lists the
cases.
"""

from __future__ import annotations

import warnings

import astropy.units as u
import numpy as np
from astropy.utils.exceptions import AstropyUserWarning
from specutils import Spectrum

__all__ = [
    "check_linear_flux",
    "unusable_reason",
    "no_overlap_hint",
    "context_rows",
    "drop_fill_values",
    "floor_sigma",
]


def check_linear_flux(spectrum: Spectrum) -> None:
    """Refuse a flux in magnitudes, dex or decibels, or of complex numbers.

    The unit is read from ``spectrum.unit``: ``spectrum.flux`` itself raises for
    mag(AB), which astropy's Quantity does not take.  A complex flux (an FFT's output
    passed on by mistake) would otherwise lose its imaginary part with only numpy's
    warning.

    Parameters
    ----------
    spectrum : `~specutils.Spectrum`
        The spectrum to check.

    Raises
    ------
    astropy.units.UnitsError
        If the flux unit is logarithmic.
    TypeError
        If the flux is complex.
    """
    unit = spectrum.unit
    if unit is not None and (isinstance(unit, u.FunctionUnitBase) or unit.is_equivalent(u.mag)):
        raise u.UnitsError(
            f"the flux unit {unit} is logarithmic: convert the flux to a linear unit (e.g. "
            "Magnitude(values, u.ABmag).physical, or .to(u.Jy)) before building the Spectrum"
        )
    if np.iscomplexobj(spectrum.data):
        raise TypeError(
            f"the flux is complex ({spectrum.data.dtype}): a spectrum's flux is real; pass "
            "its real part (or its modulus) if that is what is meant"
        )


def unusable_reason(missing: np.ndarray, variance: np.ndarray | None, unc_type: type) -> str:
    """Why no pixel of an input is usable.

    Parameters
    ----------
    missing : bool ndarray
        The input's masked or non-finite flux pixels.
    variance : ndarray or None
        Its variance, NaN where the uncertainty is unusable (zero, negative, not
        finite); None without an uncertainty.
    unc_type : type
        The uncertainty's class, for the message.

    Returns
    -------
    str
        Every pixel masked or non-finite; else the uncertainty unusable at every
        unmasked pixel; else the flux's level or range.
    """
    valid = ~missing
    if not valid.any():
        return "every pixel is masked or its flux is not finite"
    if variance is not None and not np.any(valid & np.isfinite(variance)):
        return (
            f"the {unc_type.__name__} is zero, negative or not finite at every unmasked "
            "pixel: such pixels are missing data"
        )
    return "the median flux is not positive, or no valid pixel lies in the model's range"


def no_overlap_hint(lo: float, hi: float, model_edges: np.ndarray) -> str:
    """The likely slip behind a spectral axis that misses the model's range.

    Parameters
    ----------
    lo, hi : float
        The axis's range in Angstrom.
    model_edges : ndarray
        The model grid's bin edges in Angstrom, increasing.

    Returns
    -------
    str
        A clause naming a log10-wavelength axis, or a unit off by a power of ten
        (nm, micron and Angstrom taken for one another), that would overlap the
        model; '' if neither does.
    """

    def overlaps(a: float, b: float) -> bool:
        return a < model_edges[-1] and b > model_edges[0]

    if 2 < lo and hi < 6 and overlaps(10**lo, 10**hi):
        return ": is the axis the log10 of the wavelength in Angstrom?"
    for power in (1, 3, 4, -1, -3, -4):
        if overlaps(lo * 10**power, hi * 10**power):
            return (
                f": it would overlap if its values were 10^{power} times what they are: is "
                "the spectral axis's unit right?"
            )
    return ""


def context_rows(gs_list: list, context: int, good: np.ndarray) -> np.ndarray:
    """Which stars have a run of ``context + 1`` valid pixels in some exposure.

    The denoiser's noise model counts a pixel in the likelihood when its ``context``
    predecessors are valid too: without such a run only the grid's first pixels would
    count (a mask with a hole every few pixels).

    Parameters
    ----------
    gs_list : list of `~specutils_deepclean.spectra.GridSpectra`
        The exposures on the model grid, one row per star.
    context : int
        The noise model's context.
    good : bool ndarray, shape (n_star,)
        The stars still in the run.

    Returns
    -------
    bool ndarray, shape (n_star,)
        ``good`` and such a run.

    Raises
    ------
    ValueError
        If no good star has such a run.

    Warns
    -----
    astropy.utils.exceptions.AstropyUserWarning
        Naming the good stars without one (returned fully masked).
    """
    length = context + 1
    found = np.zeros(good.shape, dtype=bool)
    for gs in gs_list:
        if gs.missing.shape[-1] >= length:
            windows = np.lib.stride_tricks.sliding_window_view(~gs.missing, length, axis=-1)
            found |= windows.all(axis=-1).any(axis=-1)
    lacking = np.flatnonzero(good & ~found)
    if lacking.size:
        message = (
            f"spectra {lacking.tolist()} have no run of {length} valid pixels on the model "
            f"grid: the denoiser's noise model needs each pixel's {context} predecessors "
            "(is a flag set on every few pixels in the mask, or the uncertainty zero there?)"
        )
        if not np.any(good & found):
            raise ValueError(message)
        warnings.warn(
            f"{message}: they are returned fully masked", AstropyUserWarning, stacklevel=3
        )
    return good & found


def drop_fill_values(gs, max_excess: float) -> None:
    """Make pixels far beyond a spectrum's flux missing data, in place.

    A pixel whose absolute flux exceeds ``max_excess`` times the 90th percentile of its
    spectrum's absolute flux on the model grid is no star's: an unmasked fill value
    (-9999, 1e30) that would throw the networks' float32 arithmetic into overflow.

    Parameters
    ----------
    gs : `~specutils_deepclean.spectra.GridSpectra`
        The spectra on the model grid (``flux``, ``missing`` and ``sigma`` change).
    max_excess : float
        The factor.

    Warns
    -----
    astropy.utils.exceptions.AstropyUserWarning
        Naming the spectra with such pixels and their count.
    """
    with warnings.catch_warnings():  # rows without a valid pixel: an all-NaN slice
        warnings.simplefilter("ignore", RuntimeWarning)
        level = np.nanpercentile(np.abs(gs.flux), 90, axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        wild = np.abs(gs.flux) > max_excess * level
    if not wild.any():
        return
    warnings.warn(
        f"spectra {np.flatnonzero(wild.any(axis=1)).tolist()}: {int(wild.sum())} pixels "
        f"on the model grid have a flux above {max_excess:g} times the 90th "
        "percentile of the spectrum's absolute flux (unmasked fill values such as -9999 "
        "or 1e30?); they are missing data (mask them in the input to silence this)",
        AstropyUserWarning,
        stacklevel=3,
    )
    gs.flux[wild] = np.nan
    gs.missing[wild] = True
    gs.sigma[wild] = np.nan


def floor_sigma(gs, min_sigma: float) -> None:
    """Raise uncertainties below ``min_sigma`` times the spectrum's median flux, in place.

    Beyond a signal-to-noise ratio of ``1 / min_sigma`` per pixel the model's own
    error is far larger than the noise, and a residual of the model's size, whitened
    by such a sigma, overflows the noise model's float32 arithmetic.

    Parameters
    ----------
    gs : `~specutils_deepclean.spectra.GridSpectra`
        The spectra on the model grid, normalised by their median (``sigma`` changes).
    min_sigma : float
        The floor, in those units.

    Warns
    -----
    astropy.utils.exceptions.AstropyUserWarning
        Naming the spectra with such pixels.
    """
    with np.errstate(invalid="ignore"):
        low = gs.sigma < min_sigma
    if not low.any():
        return
    warnings.warn(
        f"spectra {np.flatnonzero(low.any(axis=1)).tolist()}: {int(low.sum())} pixels on "
        f"the model grid have an uncertainty below {min_sigma:g} of the median flux (a "
        f"signal-to-noise ratio above {1 / min_sigma:g}); it is raised to that: the "
        "model's own error is far larger",
        AstropyUserWarning,
        stacklevel=3,
    )
    gs.sigma[low] = min_sigma
