"""A simulated topocentric survey of library stars: the training data of the telluric model.

Every star of a split is observed ``copies`` times through the observation simulator
(``specutils_deepclean.simulate``): a random stellar radial velocity, an airmass
uniform in [1, 2.5], a S/N log-uniform in [20, 200], sky residuals, cosmic rays and
pixel-correlated noise, tellurics at fixed (topocentric) wavelengths, and optionally
a gap of the benchmark protocol in a share of the spectra.  Shared by
`~specutils_deepclean.training.karaoke.train_karaoke`'s recipe
(``benchmarks/training/train_tellurics.py``) and the telluric benchmark
(``specutils-deepclean benchmark tellurics``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specutils_deepclean.simulate import GAP_PLACES, GAP_WIDTHS, Simulator, gap_slice, prepare_truth
from specutils_deepclean.tellurics import split_transmission

AIRMASS_RANGE = (1.0, 2.5)
SNR_RANGE = (20.0, 200.0)


@dataclass
class Survey:
    """Observed spectra, the truth, and the telluric line transmission of each."""

    flux: np.ndarray  # (n, n_pix) normalised observed flux, NaN = missing
    sigma: np.ndarray
    truth: np.ndarray  # star x continuum transmission: the ideal telluric-free spectrum
    lines: np.ndarray  # line transmission applied to each spectrum
    star_rows: np.ndarray  # library row of each spectrum
    airmass: np.ndarray
    snr: np.ndarray
    stellar_rv: np.ndarray


def observe_split(
    library, wave_aa, medium, *, copies, seed, snr=None, airmass=None, gap_fraction=0.0
) -> Survey:
    """Simulate ``copies`` observations of every star in ``library`` (one split).

    ``snr`` and ``airmass`` default to random draws from `SNR_RANGE` (log-uniform)
    and `AIRMASS_RANGE` (uniform); a number fixes them for every spectrum.  A random
    share ``gap_fraction`` of the spectra lose one gap of the benchmark protocol (a
    width from `~specutils_deepclean.simulate.GAP_WIDTHS` at a place from
    `~specutils_deepclean.simulate.GAP_PLACES`, drawn per spectrum): NaN flux there.
    """
    if not 0.0 <= gap_fraction <= 1.0:
        raise ValueError(f"gap_fraction must be in [0, 1], got {gap_fraction!r}")
    truth, valid = prepare_truth(library, wave_aa, medium)
    truth = np.where(valid, truth, np.nan)
    sim = Simulator(wave_aa, medium, fwhm=library.fwhm if library.fwhm is not None else 2.5)
    rng = np.random.default_rng(seed)
    rows = np.tile(np.arange(len(library)), copies)
    n = rows.size
    if snr is None:
        snr = np.exp(rng.uniform(*np.log(SNR_RANGE), size=n))
    if airmass is None:
        # Quantised to 0.05 so the transmission is computed once per value.
        airmass = np.round(rng.uniform(*AIRMASS_RANGE, size=n) / 0.05) * 0.05
    snr = np.broadcast_to(np.asarray(snr, dtype=float), (n,)).copy()
    airmass = np.broadcast_to(np.asarray(airmass, dtype=float), (n,)).copy()
    obs = sim.observe(truth[rows], snr, seed=int(rng.integers(2**31)), airmass=airmass)
    continuum, lines = split_transmission(obs.transmission, wave_aa)
    missing = obs.mask.copy()
    for row in np.flatnonzero(rng.uniform(size=n) < gap_fraction):
        missing[row, gap_slice(rng.choice(GAP_WIDTHS), rng.choice(GAP_PLACES), wave_aa.size)] = True
    return Survey(
        flux=np.where(missing, np.nan, obs.flux),
        sigma=obs.sigma,
        truth=obs.truth * continuum,
        lines=lines,
        star_rows=rows,
        airmass=airmass,
        snr=snr,
        stellar_rv=obs.stellar_rv,
    )
