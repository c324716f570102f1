"""Spectra that are not stars the denoiser knows, for its out-of-distribution rule.

Four kinds, each returned as noise-free "truth" on the model grid (median 1, NaN
where undefined) to be observed through the simulator, with the S/N to observe it at:

* ``quasar``: a power law :math:`f_\\nu \\propto \\nu^{\\alpha}`, :math:`\\alpha` in
  [-1, 0], with broad emission lines (Ly alpha, C IV, C III], Mg II, H gamma, H beta,
  H alpha; FWHM 2000-6000 km/s, rest equivalent widths 0.5-2 times typical values)
  and narrow [O III], at redshift 0.3-2.5;
* ``galaxy``: the sum of 3-6 stars of a library split with random weights, broadened
  by a Gaussian of velocity dispersion 80-250 km/s, in half of them with narrow
  emission lines ([O II], H beta, [O III], H alpha, [N II], [S II]; equivalent
  widths 2-30 Angstrom), at redshift 0.02-0.12;
* ``noise``: sky only: a flat spectrum observed at S/N 0.2-1 per pixel (the sky
  residual and the sky's photon noise dominate);
* ``fast_star``: a star of the split moving at 2500-6000 km/s (either sign), beyond
  the default velocity range of the fit (+-2000 km/s).

Used by ``benchmarks/training/calibrate_ood.py`` (val stars) and
``benchmarks/benchmarks/bench_ood.py`` (train stars, other seeds): no test star is
ever used.  `reliability` is the calibration metric both report (and
``benchmarks/training/calibrate_class_posterior.py``), `ece_interval` its spread over
stars.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

C_KMS = 299792.458
KINDS = ("quasar", "galaxy", "noise", "fast_star")

#: (rest wavelength in Angstrom, typical rest equivalent width) of quasar broad lines.
QUASAR_LINES = (
    (1215.67, 80.0),
    (1549.06, 40.0),
    (1908.73, 20.0),
    (2798.75, 35.0),
    (4340.47, 15.0),
    (4861.33, 50.0),
    (6562.80, 250.0),
)
QUASAR_NARROW = ((4958.91, 8.0), (5006.84, 24.0))
GALAXY_LINES = (3727.42, 4861.33, 4958.91, 5006.84, 6548.05, 6562.80, 6583.45, 6716.44, 6730.82)


def _gaussian_lines(wave, centres, ews, sigma_kms):
    """Sum of Gaussian lines (flux in units of a unit continuum) of given EWs."""
    out = np.zeros_like(wave)
    for centre, ew in zip(centres, ews, strict=True):
        width = centre * sigma_kms / C_KMS
        out += ew / (np.sqrt(2 * np.pi) * width) * np.exp(-0.5 * ((wave - centre) / width) ** 2)
    return out


def quasar(wave, rng):
    z = rng.uniform(0.3, 2.5)
    rest = wave / (1 + z)
    alpha = rng.uniform(-1.0, 0.0)
    continuum = (rest / 3000.0) ** (-2.0 - alpha)
    fwhm = rng.uniform(2000.0, 6000.0)
    centres, ews = zip(*QUASAR_LINES, strict=True)
    ews = np.array(ews) * rng.uniform(0.5, 2.0, size=len(ews))
    lines = _gaussian_lines(rest, centres, ews, fwhm / 2.3548)
    centres_n, ews_n = zip(*QUASAR_NARROW, strict=True)
    lines += _gaussian_lines(rest, centres_n, np.array(ews_n) * rng.uniform(0.3, 2.0), 200.0)
    return continuum * (1 + lines), {"z": z}


def _broaden(wave, flux, sigma_kms):
    """Gaussian broadening in velocity (constant in log wavelength)."""
    log = np.linspace(np.log(wave[0]), np.log(wave[-1]), wave.size * 2)
    step_kms = (log[1] - log[0]) * C_KMS
    on_log = np.interp(log, np.log(wave), flux)
    smooth = gaussian_filter1d(on_log, sigma_kms / step_kms, mode="nearest")
    return np.interp(np.log(wave), log, smooth)


def galaxy(wave, rng, stars):
    count = int(rng.integers(3, 7))
    rows = rng.choice(stars.shape[0], size=count, replace=False)
    weights = rng.dirichlet(np.ones(count))
    parts = np.nan_to_num(stars[rows], nan=np.nan)
    mix = np.nansum(weights[:, None] * parts, axis=0)
    defined = np.all(np.isfinite(parts), axis=0)
    mix = np.where(defined, mix, np.interp(wave, wave[defined], mix[defined]))
    sigma = rng.uniform(80.0, 250.0)
    mix = _broaden(wave, mix, sigma)
    emission = bool(rng.random() < 0.5)
    if emission:
        level = np.median(mix)
        ews = rng.uniform(2.0, 30.0, size=len(GALAXY_LINES))
        mix = mix + level * _gaussian_lines(wave, GALAXY_LINES, ews, rng.uniform(50.0, 100.0))
    z = rng.uniform(0.02, 0.12)
    shifted = np.interp(wave / (1 + z), wave, mix, left=np.nan, right=np.nan)
    return shifted, {"z": z, "sigma_kms": sigma, "stars": count, "emission": emission}


def make(kind: str, n: int, wave, stars, seed: int):
    """``n`` truths of one kind, their S/N per pixel, and their parameters.

    ``stars``: rest-frame normalised stars on ``wave`` (the split to build from).
    Returns (truth (n, P), snr (n,), stellar_rv (n,), params list).  The S/N is
    5, 10 or 20 in turn except for ``noise`` (0.2-1).
    """
    rng = np.random.default_rng(seed)
    truth, snr, rv, params = [], [], np.zeros(n), []
    for i in range(n):
        if kind == "quasar":
            flux, info = quasar(wave, rng)
        elif kind == "galaxy":
            flux, info = galaxy(wave, rng, stars)
        elif kind == "noise":
            flux, info = np.ones_like(wave), {}
        elif kind == "fast_star":
            row = int(rng.integers(stars.shape[0]))
            rv[i] = rng.choice([-1, 1]) * rng.uniform(2500.0, 6000.0)
            flux, info = stars[row].copy(), {"star_row": row, "rv_kms": rv[i]}
        else:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        truth.append(flux / np.nanmedian(flux))
        snr.append(rng.uniform(0.2, 1.0) if kind == "noise" else (5.0, 10.0, 20.0)[i % 3])
        params.append(info)
    return np.array(truth), np.array(snr), rv, params


def reliability(posterior: np.ndarray, labels: np.ndarray, bins: int = 10) -> tuple[float, list]:
    """Expected calibration error of the top class, and the reliability diagram.

    Parameters
    ----------
    posterior : ndarray, shape (N, K)
        Class probabilities of N spectra.
    labels : ndarray of int, shape (N,)
        Their true class indices.
    bins : int
        Equal-width confidence bins over [0, 1].

    Returns
    -------
    ece : float
        Sum over the bins of ``|accuracy - confidence| n_b / N``.
    diagram : list of dict
        Per non-empty bin: its edges, count, mean confidence and accuracy (the share
        of its spectra whose top class is the true one; a tie for the top, such as a
        flagged spectrum's uniform posterior, counts 1 / (number tied) when the true
        class is among the tied ones, the accuracy of a random pick among them).
    """
    confidence = posterior.max(1)
    # a tie for the top (a flagged spectrum's uniform posterior) is a random pick
    # among the tied classes: it is right with probability 1 / (number tied)
    top = posterior == confidence[:, None]
    correct = top[np.arange(len(labels)), labels] / top.sum(1)
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    ece, diagram = 0.0, []
    for b in range(bins):
        sel = which == b
        if not sel.any():
            continue
        gap = abs(correct[sel].mean() - confidence[sel].mean())
        ece += gap * sel.mean()
        diagram.append(
            {
                "bin": [b / bins, (b + 1) / bins],
                "count": int(sel.sum()),
                "confidence": float(confidence[sel].mean()),
                "accuracy": float(correct[sel].mean()),
            }
        )
    return float(ece), diagram


def ece_interval(
    posterior: np.ndarray, labels: np.ndarray, *, draws: int = 1000, seed: int = 0
) -> list[float]:
    """The 5th and 95th percentiles of `reliability`'s ECE over stars drawn with replacement.

    Parameters
    ----------
    posterior : ndarray, shape (R, N, K)
        Class probabilities of R realisations (noise draws) of each of N stars.
    labels : ndarray of int, shape (N,)
        The stars' true class indices.
    draws : int
        Bootstrap samples; each draws N stars with replacement, with all their
        realisations.
    seed : int
        Seed of the draws.
    """
    posterior = np.asarray(posterior)
    if posterior.ndim != 3 or posterior.shape[1] != len(labels):
        raise ValueError(f"posterior must be (R, N={len(labels)}, K), got {posterior.shape}")
    rng = np.random.default_rng(seed)
    n_real, n_star, k = posterior.shape
    values = []
    for _ in range(draws):
        pick = rng.integers(0, n_star, n_star)
        chosen = posterior[:, pick].reshape(-1, k)
        values.append(reliability(chosen, np.tile(labels[pick], n_real))[0])
    return np.percentile(values, [5, 95]).tolist()
