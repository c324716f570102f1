"""The stellar model of the physical telluric fit, moved to the star's velocity.

The Stellar Karaoke network (:mod:`specutils_deepclean.models.karaoke`) reconstructs
a star at close to its rest wavelengths whatever its radial velocity: on MILES
``val`` stars observed at a random velocity in +-150 km/s, the shift that matches
the reconstruction to the observation is 0.94 times the star's velocity.  Its lines
then sit beside the observed ones, and the physical fit
(:mod:`specutils_deepclean.telluric_fit`) takes the difference for absorption.
`align_stellar` measures that shift per spectrum, by cross-correlating the two
(logarithms on a uniform log-wavelength grid, the pixels the atmosphere absorbs
bridged linearly, high-passed by a Gaussian of `_HIGH_PASS_AA`), and moves the
reconstruction by it.
"""

from __future__ import annotations

import numpy as np
from scipy import fft

__all__ = ["MAX_SHIFT_KMS", "align_stellar"]

C_KMS = 299792.458
#: Largest shift (km/s) searched.
MAX_SHIFT_KMS = 500.0
#: Gaussian sigma (Angstrom) of the smooth part removed before the correlation.
_HIGH_PASS_AA = 16.0


def align_stellar(
    centres_aa: np.ndarray, flux: np.ndarray, stellar: np.ndarray, use: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Shift each row of ``stellar`` to the velocity where it best matches ``flux``.

    Parameters
    ----------
    centres_aa : ndarray, shape (n_pix,)
        Pixel centres, Angstrom, increasing.
    flux : ndarray, shape (n, n_pix)
        Observed flux (positive where usable).
    stellar : ndarray, shape (n, n_pix)
        Stellar model; NaN where there is none (rows without any are returned as
        they are).
    use : ndarray of bool, shape (n, n_pix) or (n_pix,)
        Pixels to correlate on (valid and clear of telluric absorption).

    Returns
    -------
    shifted : ndarray, shape (n, n_pix)
        ``stellar`` at the fitted velocity (NaN where it is not defined).
    velocity : ndarray, shape (n,)
        The shift applied, km/s (0 for rows without a stellar model or without a
        correlation peak inside +-`MAX_SHIFT_KMS`).
    """
    flux = np.atleast_2d(flux)
    stellar = np.atleast_2d(stellar)
    n, n_pix = flux.shape
    velocity = np.zeros(n)
    shifted = stellar.copy()
    use = np.broadcast_to(use, flux.shape) & np.isfinite(stellar) & (stellar > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        use = use & (flux > 0)
    rows = np.flatnonzero(use.sum(axis=1) > 50)
    if rows.size == 0:
        return shifted, velocity
    log_wave = np.log(centres_aa)
    step = float(np.median(np.diff(log_wave)))
    grid = np.arange(log_wave[0], log_wave[-1], step)
    lag_max = int(np.ceil(np.log1p(MAX_SHIFT_KMS / C_KMS) / step))
    size = 1 << int(np.ceil(np.log2(grid.size + lag_max + 1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        log_flux = np.log(flux[rows])
        log_star = np.log(stellar[rows])
    # On a uniform log-wavelength grid, the unused pixels bridged linearly (no lines
    # there), the smooth part removed by a Gaussian high-pass in Fourier space.
    spectra = [
        fft.rfft(
            np.array(
                [
                    np.interp(grid, log_wave[u], v[u])
                    for v, u in zip(values, use[rows], strict=True)
                ],
                dtype=np.float32,
            ),
            size,
        )
        for values in (log_flux, log_star)
    ]
    k = fft.rfftfreq(size)
    sigma = _HIGH_PASS_AA / float(np.median(centres_aa)) / step  # grid pixels
    high_pass = (1.0 - np.exp(-2.0 * (np.pi * k * sigma) ** 2)) ** 2
    corr = fft.irfft(spectra[0] * np.conj(spectra[1]) * high_pass.astype(np.float32), size)
    lags = np.arange(-lag_max, lag_max + 1)
    window = corr[:, lags % size]
    best = np.argmax(window, axis=1)
    inside = (best > 0) & (best < lags.size - 1)
    pick = np.arange(rows.size)
    lo, mid, hi = (window[pick, np.clip(best + d, 0, lags.size - 1)] for d in (-1, 0, 1))
    curvature = lo - 2.0 * mid + hi
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = np.where(curvature < 0, 0.5 * (lo - hi) / curvature, 0.0)
    shift = (lags[best] + offset) * step
    for j in np.flatnonzero(inside & (mid > 0)):
        row = rows[j]
        velocity[row] = C_KMS * np.expm1(shift[j])
        defined = np.isfinite(stellar[row])
        moved = np.interp(
            log_wave, log_wave[defined] + shift[j], stellar[row, defined], left=np.nan, right=np.nan
        )
        shifted[row] = np.where(defined, moved, np.nan)
    return shifted, velocity
