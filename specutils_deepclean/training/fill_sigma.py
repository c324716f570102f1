r"""Choose the factor on the uncertainty of pixels without data on MILES ``val``.

`calibrate_fill_sigma` sets ``extra["fill_sigma_scale"]``
(`~specutils_deepclean.models.fill_sigma`).  Every good ``val`` star, divided by its
whole-grid median, is observed at S/N 10 with each gap of the benchmark protocol
(`GAP_SHARES` of the grid's pixels at each place of
`~specutils_deepclean.simulate.GAP_PLACES`), and without a gap, and denoised once
without the factor.
For a number of bins ``n`` (equal stretches of the grid) the factor is, per bin, the
`~specutils_deepclean.metrics.GAUSSIAN_COVERAGE` quantile of :math:`|s - \hat s| /
\sigma` over the filled pixels in it, interpolated linearly between the bins'
centres (constant beyond the outer ones).  ``n`` is the one of `BIN_GRID` whose
factor, fitted on the even-numbered stars and applied to the odd ones and the other
way round, brings the worst gap's coverage closest to 0.683.  Then
``extra["fill_sigma_ood_scale"]`` is the `~specutils_deepclean.metrics.GAUSSIAN_COVERAGE`
quantile of :math:`|s - \hat s| / (r \sigma)` over the filled pixels of the stars
flagged out of distribution, all gaps pooled.  The ``test`` split is never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..benchmarking.degrade import MAP_OPTIONS
from ..datasets import Library
from ..inference import denoise_arrays
from ..metrics import GAUSSIAN_COVERAGE
from ..simulate import GAP_PLACES, GAP_WIDTHS, Simulator, prepare_truth
from ..spectra import median_normalise

__all__ = [
    "BIN_GRID",
    "GAP_SHARES",
    "SNR",
    "FilledErrors",
    "bins",
    "calibrate_fill_sigma",
    "filled_errors",
    "per_bin",
]

#: Candidate numbers of bins over the grid (1: one factor for every pixel).
BIN_GRID = (1, 5, 10, 20, 40)
#: The protocol's gap widths (pixels) and 40 % of the grid (a share below 1).
GAP_SHARES = (*GAP_WIDTHS, 0.4)
#: The S/N of the observations (that of ``bench_gaps.py``).
SNR = 10.0
#: The model's extra arrays that `calibrate_fill_sigma` chooses.
_FILL_KEYS = ("fill_sigma_scale", "fill_sigma_ood_scale")


def bins(n_pix: int, n_bins: int) -> np.ndarray:
    """The (start, stop) pixels of ``n_bins`` equal bins over ``n_pix``, shape (n_bins, 2)."""
    edges = np.linspace(0, n_pix, n_bins + 1).round().astype(int)
    return np.stack([edges[:-1], edges[1:]], 1)


def per_bin(hits: np.ndarray, use: np.ndarray, n_bins: int) -> list:
    """The share of ``hits`` among ``use`` (both bool, (B, P)) in each of ``n_bins`` bins,
    rounded to 4 digits."""
    return [
        round(float(hits[:, a:b].sum() / use[:, a:b].sum()), 4)
        for a, b in bins(hits.shape[1], n_bins)
    ]


@dataclass
class FilledErrors:
    """The errors of denoised observations over their filled pixels, per protocol gap.

    Attributes
    ----------
    no_gap : ndarray of bool, shape (B, P)
        Observed without a gap: the valid pixels whose error is within the 1-sigma band
        (the model's ``obs_sigma_scale`` applied when it states one).
    ratio : dict of ndarray, shape (B, P)
        Per gap (keyed as ``bench_gaps.py``'s JSON: ``"400_blue"``, ``"0.4_red"``):
        :math:`|s - \\hat s| / \\sigma` at its filled pixels, :math:`\\sigma` without
        either fill factor (meaningless elsewhere).
    pixels : dict of ndarray of bool, shape (B, P)
        Per gap: the filled pixels with a valid truth and a finite :math:`\\sigma`.
    flagged : dict of ndarray of bool, shape (B, P)
        Per gap: those of ``pixels`` that belong to stars flagged out of distribution.
    """

    no_gap: np.ndarray
    ratio: dict
    pixels: dict
    flagged: dict

    def coverage(
        self,
        scale: np.ndarray | float = 1.0,
        ood: float = 1.0,
        *,
        rows: np.ndarray | None = None,
        flagged: bool | None = None,
    ) -> dict:
        """Per gap, the share of its filled pixels within :math:`r\\sigma` (times ``ood``
        for a flagged star's).

        Parameters
        ----------
        scale : ndarray, shape (P,), or float
            The factor :math:`r` (``fill_sigma_scale``).
        ood : float
            The further factor on a flagged star's (``fill_sigma_ood_scale``).
        rows : ndarray of bool, shape (B,), optional
            Only these stars (None: all).
        flagged : bool, optional
            Only the stars flagged out of distribution (True), only the others (False),
            or all (None).

        Returns
        -------
        dict
            Gap key to share; a gap without any such pixel is left out.
        """
        out = {}
        for key, ratio in self.ratio.items():
            use = self.pixels[key] if rows is None else self.pixels[key] & rows[:, None]
            if flagged is not None:
                use = use & (self.flagged[key] == flagged)
            if use.any():
                limit = np.where(self.flagged[key], ood, 1.0) * scale
                out[key] = float(np.mean((ratio < limit)[use]))
        return out


def filled_errors(
    model, truth: np.ndarray, valid: np.ndarray, snr: float, seed: int
) -> FilledErrors:
    """Observe ``truth`` at ``snr`` without a gap and with each protocol gap (the same
    noise draw, seed ``seed``) and denoise it at rest with
    `~specutils_deepclean.benchmarking.degrade.MAP_OPTIONS`, by ``model`` without its
    ``fill_sigma_scale`` and ``fill_sigma_ood_scale`` (removed for the run, then put back).

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        The denoiser.
    truth, valid : ndarray, shape (B, P)
        Clean stars on the model's grid (whole-grid median 1, as in ``bench_gaps.py``)
        and their valid pixels.
    snr : float
        The observations' S/N.
    seed : int
        Seed of the noise and of the MAP's starts.

    Returns
    -------
    FilledErrors
    """
    n_pix = truth.shape[1]
    saved = {k: model.extra.pop(k) for k in _FILL_KEYS if k in model.extra}
    sim = Simulator(model.wavelength.to_value("Angstrom"), model.medium)
    ratio, pixels, flagged = {}, {}, {}
    gaps = [(None, None)] + [(share, place) for share in GAP_SHARES for place in GAP_PLACES]
    try:
        for share, place in gaps:
            width = int(round(share * n_pix)) if share is not None and share < 1 else share
            gap = None if share is None else (int(width), place)
            obs = sim.observe(np.where(valid, truth, np.nan), snr, seed=seed, gap=gap)
            out = denoise_arrays(
                model, obs.flux, obs.sigma, obs.mask, velocity=0.0,
                generator=torch.Generator().manual_seed(seed), **MAP_OPTIONS,
            )  # fmt: skip
            use = valid & np.isfinite(out.flux_sigma)
            if share is None:  # no gap: the observed pixels' coverage
                no_gap = (np.abs(out.flux - truth) < out.flux_sigma) & use
                continue
            key = f"{share:g}_{place}"
            pixels[key] = use & out.map.filled
            ratio[key] = np.abs(out.flux - truth) / np.where(pixels[key], out.flux_sigma, 1.0)
            flagged[key] = pixels[key] & out.map.ood_flag[:, None]
    finally:
        model.extra.update(saved)
    return FilledErrors(no_gap=no_gap, ratio=ratio, pixels=pixels, flagged=flagged)


def calibrate_fill_sigma(model, library: Library, *, seed: int = 0) -> dict:
    """Choose ``extra["fill_sigma_scale"]`` of ``model`` on MILES ``val``.

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        Changed in place (its ``extra``).
    library : `~specutils_deepclean.datasets.Library`
        The library of the model's training, in the MILES layout.
    seed : int
        Seed of the observations (the same noise draw for every gap).

    Returns
    -------
    dict
        ``n_bins``, ``n_stars``, the factor at each bin's centre, the coverage of the
        observed pixels without a gap in each bin and pooled, per gap the pooled
        coverage of its filled pixels ``before`` and ``after`` (in sample, both factors) and
        ``held_out`` (factor fitted on the other half of the stars), per candidate
        number of bins the held-out coverage of every gap, ``ood_scale`` (the factor on
        a flagged star's), the number of flagged stars per gap and the coverage of
        their filled pixels before and after it.
    """
    wave = model.wavelength.to_value("Angstrom")
    truth, valid = prepare_truth(library.select(split="val", good=True), wave, model.medium)
    _, whole = median_normalise(truth, ~valid)
    truth = truth / whole[:, None]  # whole-grid median 1, as in bench_gaps.py
    for key in _FILL_KEYS:
        model.extra.pop(key, None)
    n_star, n_pix = truth.shape
    errors = filled_errors(model, truth, valid, SNR, seed)
    ratio, pixels, flagged = errors.ratio, errors.pixels, errors.flagged
    halves = (np.arange(n_star) % 2 == 0, np.arange(n_star) % 2 == 1)

    def fit(rows: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
        quantiles = [
            np.quantile(
                np.concatenate([ratio[k][rows, a:b][pixels[k][rows, a:b]] for k in ratio]),
                GAUSSIAN_COVERAGE,
            )
            for a, b in bins(n_pix, n_bins)
        ]
        centres = (bins(n_pix, n_bins).sum(1) - 1) / 2
        return np.interp(np.arange(n_pix), centres, quantiles), np.asarray(quantiles)

    def held_out(n_bins: int) -> dict:
        inside = {k: 0 for k in ratio}
        for fit_rows, use_rows in (halves, halves[::-1]):
            scale = fit(fit_rows, n_bins)[0]
            for k in ratio:
                inside[k] += int(np.sum((ratio[k][use_rows] < scale)[pixels[k][use_rows]]))
        return {k: inside[k] / int(pixels[k].sum()) for k in ratio}

    candidates = {n: held_out(n) for n in BIN_GRID}
    n_bins = min(
        BIN_GRID,
        key=lambda n: max(abs(c - GAUSSIAN_COVERAGE) for c in candidates[n].values()),
    )
    scale, at_centres = fit(np.ones(n_star, bool), n_bins)
    model.extra["fill_sigma_scale"] = scale
    ood_ratio = np.concatenate([(ratio[k] / scale)[flagged[k]] for k in ratio])
    ood = float(np.quantile(ood_ratio, GAUSSIAN_COVERAGE)) if ood_ratio.size else 1.0
    model.extra["fill_sigma_ood_scale"] = np.array([ood])
    return {
        "n_bins": n_bins,
        "n_stars": int(n_star),
        "snr": SNR,
        "gap_widths": list(GAP_SHARES),
        "scale_at_bin_centres": at_centres.round(4).tolist(),
        "no_gap_coverage_per_bin": per_bin(errors.no_gap, valid, n_bins),
        "no_gap_coverage": float(errors.no_gap.sum() / valid.sum()),
        "before": errors.coverage(),
        "after": errors.coverage(scale, ood),
        "held_out": candidates[n_bins],
        "held_out_per_bins": {str(n): candidates[n] for n in BIN_GRID},
        "ood_scale": round(ood, 4),
        "n_flagged": {k: int(flagged[k].any(1).sum()) for k in ratio},
        "ood_coverage_before": errors.coverage(scale, flagged=True),
        "ood_coverage_after": errors.coverage(scale, ood, flagged=True),
    }
