r"""Choose the factor on the uncertainty of pixels with data on MILES ``val``.

`calibrate_obs_sigma` sets ``extra["obs_sigma_scale"]``
(`~specutils_deepclean.models.fill_sigma`).  Every good ``val`` star on the model's
grid (median-normalised, as the denoise benchmark's truth) is observed without a gap
at each S/N of `SNR` (seed ``seed + i`` for the i-th) and denoised once without the
factor, at rest with the benchmark's MAP options.  For a pixel with data the output
variance is :math:`\sigma^2 = a + b`: :math:`a` the part the factor :math:`r`
multiplies (the calibrated Laplace, generator and linear-terms variance, times the
model-error scale), :math:`b` the additive model-error term
(`~specutils_deepclean.models.model_error`), so that with the factor
:math:`\sigma^2 = r^2 a + b`.  In each of `N_BINS` equal stretches of the grid
:math:`r` is the value (found by bisection) at which
:math:`|s - \hat s| < \sqrt{r^2 a + b}` holds for
`~specutils_deepclean.metrics.GAUSSIAN_COVERAGE` of its pixels, all S/N pooled;
:math:`r` is interpolated linearly between the bins' centres (constant beyond the
outer ones).  The ``test`` split is never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..benchmarking.degrade import MAP_OPTIONS
from ..datasets import Library
from ..inference import denoise_arrays
from ..metrics import GAUSSIAN_COVERAGE
from ..simulate import Simulator, prepare_truth
from .fill_sigma import bins, per_bin

__all__ = [
    "N_BINS",
    "SNR",
    "ObservedParts",
    "calibrate_obs_sigma",
    "fit_factor",
    "observed_parts",
    "per_bin_coverage",
]

#: The S/N levels pooled by the calibration.
SNR = (5.0, 10.0, 20.0)
#: Equal stretches of the grid, one factor each.
N_BINS = 20


@dataclass
class ObservedParts:
    """The errors and variance terms of denoised observations, per star and pixel.

    Attributes
    ----------
    error : ndarray, shape (B, P)
        :math:`|s - \\hat s|` (normalised units); NaN where the truth is not valid
        or the output not finite.
    scaled, added : ndarray, shape (B, P)
        :math:`a` and :math:`b` of the module docstring.
    latent, generator, model_error_scale : ndarray
        The parts of :math:`a` before the model-error scale: the calibrated Laplace
        variance (B, P) and the generator's error (P,), and the scale (B,).
    """

    error: np.ndarray
    scaled: np.ndarray
    added: np.ndarray
    latent: np.ndarray
    generator: np.ndarray
    model_error_scale: np.ndarray

    def covered(self, factor: np.ndarray | float = 1.0) -> np.ndarray:
        """Bool (B, P): the error within :math:`\\sqrt{r^2 a + b}` for the factor
        ``factor`` (per pixel or one number); False where the error is NaN."""
        return self.error < np.sqrt(np.square(factor) * self.scaled + self.added)

    @property
    def counted(self) -> np.ndarray:
        """Bool (B, P): the pixels with an error (truth valid, output finite)."""
        return np.isfinite(self.error)


def observed_parts(
    model, truth: np.ndarray, valid: np.ndarray, snr: float, seed: int
) -> ObservedParts:
    """Observe ``truth`` at ``snr`` without a gap (seed ``seed``), denoise it at rest with
    `~specutils_deepclean.benchmarking.degrade.MAP_OPTIONS`, and split its variance.

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        The denoiser (as it is: with the factor if it states one).
    truth, valid : ndarray, shape (B, P)
        Clean stars on the model's grid and their valid pixels.
    snr : float
        The observations' S/N.
    seed : int
        Seed of the noise and of the MAP's starts.

    Returns
    -------
    ObservedParts
    """
    sim = Simulator(model.wavelength.to_value("Angstrom"), model.medium)
    obs = sim.observe(np.where(valid, truth, np.nan), snr, seed=seed)
    out = denoise_arrays(
        model, obs.flux, obs.sigma, obs.mask, velocity=0.0,
        generator=torch.Generator().manual_seed(seed), **MAP_OPTIONS,
    )  # fmt: skip
    fit = out.map
    error = np.abs(fit.flux - truth / out.scale[:, None])
    error[~valid | ~np.isfinite(fit.flux_sigma) | fit.filled] = np.nan
    added = fit.model_sigma**2
    scales = np.asarray(model.extra.get("sigma_scales", (1.0, 1.0)), np.float64)
    floor = np.asarray(model.extra.get("generator_sigma", np.zeros(truth.shape[1])), np.float64)
    return ObservedParts(
        error=error,
        scaled=fit.flux_sigma**2 - added,
        added=added,
        latent=scales[0] ** 2 * fit.latent_sigma**2,
        generator=scales[1] ** 2 * floor**2,
        model_error_scale=np.asarray(fit.model_error_scale, np.float64),
    )


def per_bin_coverage(parts: list[ObservedParts], factor: np.ndarray | float = 1.0) -> list:
    """The share of covered pixels with data in each of `N_BINS` bins, ``parts`` pooled."""
    hits = np.concatenate([p.covered(factor) for p in parts])
    return per_bin(hits, np.concatenate([p.counted for p in parts]), N_BINS)


def fit_factor(parts: list[ObservedParts], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The factor per pixel (P,) and at the bins' centres, fitted on the stars ``rows``."""
    n_pix = parts[0].error.shape[1]
    at_centres = []
    for a, b in bins(n_pix, N_BINS):
        error, scaled, added = (
            np.concatenate([getattr(p, k)[rows, a:b].ravel() for p in parts])
            for k in ("error", "scaled", "added")
        )
        use = np.isfinite(error)
        error, scaled, added = error[use], scaled[use], added[use]
        low, high = 1e-3, 1e3  # coverage grows with r: bisection in log r
        for _ in range(60):
            mid = np.sqrt(low * high)
            inside = np.mean(error < np.sqrt(mid**2 * scaled + added))
            low, high = (mid, high) if inside < GAUSSIAN_COVERAGE else (low, mid)
        at_centres.append(np.sqrt(low * high))
    centres = (bins(n_pix, N_BINS).sum(1) - 1) / 2
    return np.interp(np.arange(n_pix), centres, at_centres), np.asarray(at_centres)


def calibrate_obs_sigma(model, library: Library, *, seed: int = 0) -> dict:
    """Choose ``extra["obs_sigma_scale"]`` of ``model`` on MILES ``val``.

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        Changed in place (its ``extra``).
    library : `~specutils_deepclean.datasets.Library`
        The library of the model's training, in the MILES layout.
    seed : int
        Seed of the observations (``seed + i`` at the i-th S/N of `SNR`).

    Returns
    -------
    dict
        ``n_bins``, ``n_stars``, ``snr``, the factor at each bin's centre, and the
        coverage per bin and pooled, ``before`` and ``after`` (in sample) and
        ``held_out`` (the factor fitted on the even-numbered stars applied to the odd
        ones and the other way round), for each S/N and all pooled.
    """
    wave = model.wavelength.to_value("Angstrom")
    truth, valid = prepare_truth(library.select(split="val", good=True), wave, model.medium)
    model.extra.pop("obs_sigma_scale", None)
    parts = {
        f"{snr:g}": observed_parts(model, truth, valid, snr, seed + i)
        for i, snr in enumerate(SNR)
    }
    n_star, n_pix = truth.shape
    everyone = np.ones(n_star, bool)
    scale, at_centres = fit_factor(list(parts.values()), everyone)
    halves = (np.arange(n_star) % 2 == 0, np.arange(n_star) % 2 == 1)
    crossed = np.zeros((n_star, n_pix))  # each star's factor fitted on the other half
    for fit_rows, use_rows in (halves, halves[::-1]):
        crossed[use_rows] = fit_factor(list(parts.values()), fit_rows)[0]
    model.extra["obs_sigma_scale"] = scale
    groups = {**{k: [v] for k, v in parts.items()}, "pooled": list(parts.values())}

    def summary(factor) -> dict:
        out = {}
        for key, group in groups.items():
            hits = sum(int(p.covered(factor).sum()) for p in group)
            count = sum(int(p.counted.sum()) for p in group)
            out[key] = {"pooled": hits / count, "per_bin": per_bin_coverage(group, factor)}
        return out

    return {
        "n_bins": N_BINS,
        "n_stars": int(n_star),
        "snr": list(SNR),
        "scale_at_bin_centres": at_centres.round(4).tolist(),
        "before": summary(1.0),
        "after": summary(scale),
        "held_out": summary(crossed),
    }
