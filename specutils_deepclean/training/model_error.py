r"""Choose the denoiser's model-error term on MILES ``val`` (`calibrate_model_error`).

The term (`~specutils_deepclean.models.model_error`) makes the uncertainty's
variance :math:`\operatorname{clip}(S, L, 1)\, \sigma_0^2 + k \max(0, S - 1 - c)\,
u^2`.  Every good ``val`` star is observed at S/N 2, 5, 10, 20 and 50 as it is and
degraded (`~specutils_deepclean.benchmarking.degrade.degrade`: 3.4 A FWHM and
smooth tilts) and denoised once without the term; the coverage of the uncertainty
for any :math:`(k, c, L)` follows from that run (``flux_sigma`` is
:math:`\sigma_0`, ``fit_structure`` :math:`S`, ``noise_sigma`` :math:`u`) without
another MAP.  :math:`k` is one of `K_GRID`, :math:`c` of `C_GRID`, :math:`L` of
`L_GRID`.  Among those that move the MILES coverage by at most `MAX_SHIFT` at every
S/N, the one whose degraded coverage is closest to 0.683 at its worst S/N wins.
The ``test`` split is never read.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..benchmarking.degrade import denoise_both
from ..datasets import Library
from ..metrics import GAUSSIAN_COVERAGE
from ..simulate import SNR_LEVELS, prepare_truth

__all__ = ["C_GRID", "K_GRID", "L_GRID", "MAX_SHIFT", "calibrate_model_error"]

#: Candidate k.
K_GRID = (0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3)
#: Candidate c.
C_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4)
#: Candidate L.
L_GRID = (0.6, 0.7, 0.8, 0.9, 1.0)
#: Largest change of the MILES val coverage allowed at any S/N.
MAX_SHIFT = 0.015


def calibrate_model_error(model, library: Library, *, seed: int = 0) -> dict:
    """Choose ``extra["model_error_terms"]`` = (k, c, L) of ``model`` on MILES ``val``.

    Earlier versions' ``extra["model_error"]`` is removed.

    Parameters
    ----------
    model : `~specutils_deepclean.models.denoiser.Denoiser`
        Changed in place (its ``extra``).
    library : `~specutils_deepclean.datasets.Library`
        The library of the model's training, in the MILES layout.
    seed : int
        Seed of the observations (S/N i: ``seed + i``) and of the tilts (``seed + 7``).

    Returns
    -------
    dict
        ``model_error`` [k, c, L], ``n_stars``, the grids, and per S/N and kind the
        pooled coverage ``before`` (no term) and ``after``.
    """
    wave = model.wavelength.to_value("Angstrom")
    truth, valid = prepare_truth(library.select(split="val", good=True), wave, model.medium)
    model.extra.pop("model_error", None)
    model.extra.pop("model_error_terms", None)
    runs = {}
    for snr, kind, clean, out in denoise_both(
        model, truth, valid, SNR_LEVELS, seed=seed, tilt_seed=seed + 7
    ):
        use = valid & np.isfinite(out.flux_sigma)
        runs[f"{snr}_{kind}"] = {
            "error2": np.square(out.flux - clean)[use],
            "sigma2": np.square(out.flux_sigma)[use],
            "noise2": np.nan_to_num(np.square(out.map.noise_sigma))[use],
            "data": np.isfinite(out.map.noise_sigma)[use],
            "structure": np.broadcast_to(out.map.fit_structure[:, None], use.shape)[use],
        }

    def coverage(run, k, c, low) -> float:
        s = run["structure"]
        scale = np.where(run["data"], np.clip(s, low, 1.0), 1.0)
        var = scale * run["sigma2"] + k * np.clip(s - 1 - c, 0, None) * run["noise2"]
        return float(np.mean(run["error2"] < var))

    before = {key: coverage(run, 0.0, 0.0, 1.0) for key, run in runs.items()}
    best, best_worst = (0.0, 0.0, 1.0), np.inf
    for k, c, low in itertools.product(K_GRID, C_GRID, L_GRID):
        after = {key: coverage(run, k, c, low) for key, run in runs.items()}
        if any(abs(after[key] - before[key]) > MAX_SHIFT for key in runs if "miles" in key):
            continue
        worst = max(abs(after[key] - GAUSSIAN_COVERAGE) for key in runs if "degraded" in key)
        if worst < best_worst - 1e-9:
            best, best_worst = (float(k), float(c), float(low)), worst
    model.extra["model_error_terms"] = np.array(best)
    return {
        "model_error_terms": list(best),
        "n_stars": int(len(truth)),
        "k_grid": list(K_GRID),
        "c_grid": list(C_GRID),
        "l_grid": list(L_GRID),
        "max_miles_shift": MAX_SHIFT,
        "before": before,
        "after": {key: coverage(run, *best) for key, run in runs.items()},
    }
