"""Stars unlike the training library: MILES spectra at another resolution with tilts.

The denoiser was trained on MILES spectra (2.5 A FWHM, flux-calibrated).
`degrade` makes clean spectra it has not seen the like of: each is convolved to a
coarser resolution (a Gaussian of the quadrature difference of the FWHMs) and
multiplied by a smooth flux-calibration error :math:`\\exp\\sum_{k=1}^{3} t_k
P_k(x)` (Legendre polynomials over the grid, :math:`t_k \\sim N(0, \\tau^2)` drawn
per star), then divided by its median again.  Used by
``benchmarks/benchmarks/bench_model_error.py`` and
``benchmarks/training/calibrate_model_error.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from ..inference import denoise_arrays
from ..simulate import Simulator
from ..spectra import median_normalise

__all__ = ["degrade", "denoise_both"]

#: MAP settings of the denoise benchmark (``specutils-deepclean benchmark denoise``).
MAP_OPTIONS = {"steps": 20, "n_starts": 2, "tol": 0.05, "class_margin": 10.0, "clip": 5.0}

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def degrade(
    truth: np.ndarray,
    valid: np.ndarray,
    wave: np.ndarray,
    *,
    fwhm: float = 3.4,
    library_fwhm: float = 2.5,
    tilt: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """Clean spectra at a coarser resolution and with a smooth tilt, median 1.

    Parameters
    ----------
    truth : ndarray, shape (n, P)
        Clean spectra on a uniformly spaced grid (any value where not ``valid``).
    valid : ndarray of bool, shape (n, P)
        Their valid pixels.
    wave : ndarray, shape (P,)
        The grid, Angstrom, uniformly spaced.
    fwhm, library_fwhm : float
        The resolution to reach and the spectra's own (FWHM, Angstrom);
        ``fwhm >= library_fwhm``.
    tilt : float
        :math:`\\tau`, the standard deviation of the tilt's Legendre coefficients.
    seed : int
        Seed of the tilts.

    Returns
    -------
    ndarray, shape (n, P)
        The degraded spectra, each divided by the median of its valid pixels; NaN
        where not valid.

    Raises
    ------
    ValueError
        If the grid is not uniform or ``fwhm < library_fwhm``.
    """
    step = np.diff(wave)
    if not np.allclose(step, step[0], rtol=1e-6):
        raise ValueError("degrade needs a uniformly spaced grid")
    if fwhm < library_fwhm:
        raise ValueError(f"fwhm ({fwhm}) must be at least the library's ({library_fwhm})")
    filled = np.where(valid, truth, 0.0)
    width = np.sqrt(fwhm**2 - library_fwhm**2) * _FWHM_TO_SIGMA / step[0]
    if width > 0:  # normalised convolution: invalid pixels carry no weight
        weight = gaussian_filter1d(valid.astype(float), width, axis=-1, mode="nearest")
        filled = gaussian_filter1d(filled, width, axis=-1, mode="nearest")
        filled = filled / np.where(weight > 0, weight, 1.0)
    x = np.linspace(-1.0, 1.0, wave.size)
    rows = np.polynomial.legendre.legvander(x, 3)[:, 1:].T  # (3, P)
    coefficients = np.random.default_rng(seed).normal(0.0, tilt, (truth.shape[0], 3))
    out = np.where(valid, filled * np.exp(coefficients @ rows), np.nan)
    return median_normalise(out, ~valid)[0]


def denoise_both(model, truth, valid, snrs, *, seed: int, tilt_seed: int):
    """Yield ``(snr, kind, truth, denoised)`` for each S/N and kind ("miles", "degraded").

    ``miles``: the spectra as given; ``degraded``: `degrade` of them (3.4 A FWHM,
    tilts of ``tilt_seed``).  Each is observed through the simulator at the S/N (seed
    ``seed + i`` for the i-th S/N, as the denoise benchmark) and denoised as there
    (``denoise_arrays`` at rest with `MAP_OPTIONS`).
    """
    wave = model.wavelength.to_value("Angstrom")
    sim = Simulator(wave, model.medium)
    kinds = {"miles": truth, "degraded": degrade(truth, valid, wave, seed=tilt_seed)}
    for i, snr in enumerate(snrs):
        for kind, clean in kinds.items():
            obs = sim.observe(np.where(valid, clean, np.nan), snr, seed=seed + i)
            out = denoise_arrays(
                model, obs.flux, obs.sigma, obs.mask, velocity=0.0,
                generator=torch.Generator().manual_seed(seed), **MAP_OPTIONS,
            )  # fmt: skip
            yield snr, kind, clean, out
